"""Codes and draws of a trained image model (paper section 5, Fig. 2; appendix E.2, Figs. 4-5).

* :func:`embed`: the 80-D codes [z1, z2] of images, sampled z ~ q(z|x) (the paper's k-NN input)
  and at the top-down means;
* :func:`posterior_means`: E_q[z|x] per image, the statistic of the active units (Burda et al. 2016);
* :func:`reconstructions` and :func:`samples`: sampled reconstructions (z ~ q(z|x), then
  x' ~ p(x|z)) and samples of the model (z ~ p(z), then x ~ p(x|z)); the decoder is sampled, pixel
  by pixel for the PixelHVAE;
* :func:`figure_arrays`: the small arrays of one run's figures that its record stores (a t-SNE of
  test codes, test images, their reconstructions, samples).

The noise of every draw comes from a private seed, so the global random state is untouched and a
call is reproducible. Nothing here uses the decoder's mean image (a PixelCNN decoder has none).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch

from . import images as I
from .image_config import ImageStudyConfig
from .nets.hvae import ConvHVAE

__all__ = ["embed", "posterior_means", "reconstructions", "samples", "figure_arrays"]


def _batches(x: torch.Tensor, size: int, device: torch.device) -> Iterator[torch.Tensor]:
    """``x`` in consecutive batches of ``size`` on ``device`` (here and in :mod:`mimlib.image_study`'s
    validation and evaluation passes)."""
    for i in range(0, len(x), size):
        yield x[i:i + size].to(device)


@torch.inference_mode()
def embed(model: ConvHVAE, x: torch.Tensor, batch: int = 500, generator_seed: int = 0
          ) -> tuple[np.ndarray, np.ndarray]:
    """Sampled and mean 80-D embeddings [z1, z2] of images ``x`` (N, 1, 28, 28).

    Sampled: z ~ q(z|x) (ancestral: z2 ~ q(z2|x), z1 ~ q(z1|x, z2)), the paper's
    k-NN input. Mean: the means taken top-down, z2 = E[z2|x] and z1 = mean of
    q(z1|x, z2 = E[z2|x]). The sampling noise comes from a private seed, so the
    global random state is untouched.
    """
    device = next(model.parameters()).device
    zs, zm = [], []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(generator_seed)
        for xb in _batches(x, batch, device):
            q = model.encoder(xb)
            zs.append(q.sample().float().cpu())
            z2 = q.top.mean
            z1 = q.conditional(z2).mean
            zm.append(torch.cat([z1, z2], -1).float().cpu())
    return torch.cat(zs).numpy(), torch.cat(zm).numpy()


@torch.inference_mode()
def posterior_means(model: ConvHVAE, x: torch.Tensor, n_samples: int = 10, batch: int = 500,
                    generator_seed: int = 0) -> np.ndarray:
    """E_q[z|x] per image, (N, 80): exact for z2; for z1, E_{z2 ~ q(z2|x)}[mean of q(z1|x, z2)]
    averaged over ``n_samples`` draws of z2 (z1's mean depends on z2)."""
    device = next(model.parameters()).device
    out = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(generator_seed)
        for xb in _batches(x, batch, device):
            q = model.encoder(xb)
            z2 = q.top.sample((n_samples,))
            z1 = q.conditional(z2).mean.mean(0)
            out.append(torch.cat([z1, q.top.mean], -1).float().cpu())
    return torch.cat(out).numpy()


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Every module in eval mode for the block, each module's own mode restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, t in modes:
            m.training = t


@torch.inference_mode()
def reconstructions(model: ConvHVAE, x: torch.Tensor, batch: int = 100, generator_seed: int = 0
                    ) -> torch.Tensor:
    """Sampled reconstructions of images ``x`` (N, 1, 28, 28): z ~ q(z|x), then x' ~ p(x|z).

    Both steps are draws, as in the paper's Figs. 4-5: z is sampled ancestrally
    from the encoder (z2 ~ q(z2|x), z1 ~ q(z1|x, z2)) and x' is a binary sample
    of the decoder, for the PixelHVAE drawn pixel by pixel in raster order
    (each pixel given z and the pixels drawn before it; the autoregressive
    sampler of :mod:`mimlib.nets.pixelhvae`), for the convHVAE an independent
    Bernoulli per pixel. The model runs in eval mode (batch-norm running
    statistics) and its modes are restored afterwards; the noise comes from
    a private seed, so the global random state is untouched and a call is
    reproducible. Returns a float tensor of 0s and 1s, (N, 1, 28, 28), on the CPU.
    """
    device = next(model.parameters()).device
    out = []
    with _eval_mode(model), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(generator_seed)
        for xb in _batches(x, batch, device):
            z = model.encoder(xb).sample()
            out.append(model.decoder(z).sample().float().cpu())
    return torch.cat(out) if out else torch.zeros(0, *x.shape[1:])


@torch.inference_mode()
def samples(model: ConvHVAE, n: int, batch: int = 100, generator_seed: int = 0) -> torch.Tensor:
    """``n`` samples of the model: z ~ p(z) (the model prior, p(z2) p(z1|z2): the VampPrior
    mixture or N(0, I) on z2), then x ~ p(x|z) (autoregressive for the PixelHVAE).

    Eval mode, a private seed and binary float images (n, 1, 28, 28) on the CPU, as
    :func:`reconstructions`. (The model prior, not the anchor N(0, I_80) that the
    decoder-sampled half of MIM draws from: these are the images the model generates.)
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    device = next(model.parameters()).device
    out = []
    with _eval_mode(model), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(generator_seed)
        for start in range(0, n, batch):
            z = model.prior().sample((min(batch, n - start),))
            out.append(model.decoder(z).sample().float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 1, 28, 28)


@torch.no_grad()
def figure_arrays(model: ConvHVAE, data: I.BinarizedImages, cfg: ImageStudyConfig, n_tsne: int = 2_000,
                  n_images: int = 16) -> dict[str, np.ndarray]:
    """The small arrays the image chapters' figures need of one trained run (stored in its record):

    * ``tsne`` (n_tsne, 2) and ``tsne_labels``: t-SNE (scikit-learn, PCA init, seed 0) of the sampled
      codes z ~ q(z|x) of the first ``n_tsne`` test images (Fig. 2);
    * ``images``, ``reconstructions`` (n_images, 28, 28; uint8 0/1): the first test images and their
      sampled reconstructions; ``samples``: ``n_images`` samples of the model (Figs. 4-5).
    """
    from sklearn.manifold import TSNE

    n = min(n_tsne, len(data.test))
    zs, _ = embed(model, data.test[:n], cfg.eval_batch, generator_seed=cfg.eval_seed + 6)
    tsne = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca", learning_rate="auto",
                random_state=0).fit_transform(zs)
    x = data.test[:n_images]
    as_u8 = lambda t: t.reshape(-1, 28, 28).to(torch.uint8).numpy()  # noqa: E731
    return {"tsne": tsne.astype(np.float32), "tsne_labels": data.test_labels[:n].numpy(),
            "images": as_u8(x), "reconstructions": as_u8(reconstructions(model, x, generator_seed=cfg.eval_seed)),
            "samples": as_u8(samples(model, n_images, generator_seed=cfg.eval_seed))}
