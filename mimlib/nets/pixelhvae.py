r"""PixelHVAE: the two-level convHVAE with a PixelCNN decoder (paper appendix E.2).

The paper's appendix E.2 trains "the most expressive model, PixelHVAE (VP)"
(Figs. 4-5) and notes that sampling its *autoregressive* decoder is what makes
the decoder-sampled half of MIM expensive; it therefore trains it with A-MIM,
the encoder-sampled term only (:func:`mimlib.objectives.amim`). The
architecture is that of Tomczak & Welling (2018, ``PixelHVAE_2level``), with the
sizes of ``shared/reference/anchor-facts.md`` ("Image experiments"):

* encoders q(z2|x), q(z1|x, z2), the conditional prior p(z1|z2) and the priors
  on z2 (``"standard"`` N(0, I) or ``"vampprior"``) are exactly those of
  :class:`mimlib.nets.hvae.ConvHVAE`; :class:`PixelHVAE` subclasses it and
  replaces only the decoder (every ``p_x_*`` module of the convHVAE decoder is
  removed, so no unused parameter is left);
* decoder p(x|z1, z2) = prod_i p(x_i | x_<i, z1, z2), a PixelCNN
  (van den Oord et al. 2016) conditioned on the latents
  (:class:`PixelCNNDecoder`):

  - each latent through a gated dense layer 40 -> 784, reshaped to a 28x28 map;
  - the maps concatenated with x: 3 input channels, in the order (x, z1-map, z2-map);
  - a masked 3x3 convolution of type A (3 -> 64), then 7 masked 3x3
    convolutions of type B (64 -> 64); every masked convolution (A included)
    is followed by batch norm and a ReLU, and has no bias (the batch norm
    that follows has one) -- both as in the reference code;
  - a 1x1 convolution 64 -> 1: the Bernoulli *logits* (the reference applies a
    sigmoid to get the means; logits are the stable form of the same model).

Masks (:class:`MaskedConv2d`), raster order (row by row, left to right), one
image channel so no colour masking. For a k x k kernel with centre (c, c),
type A keeps the rows above the centre and the pixels left of the centre in
its row; type B keeps the centre as well. The mask applies to *all* input
channels of a layer, the latent maps included (as in the reference): the
output at pixel i never sees the latent maps at pixels >= i. That costs a
little conditioning (the map value at the last pixel is never used) but no
correctness; the latent maps do not depend on x.

The decoder distribution (:class:`PixelCNNBernoulli`) depends on x:

* ``log_prob(x)`` runs the masked network on x (teacher forcing) and sums the
  784 Bernoulli log-probabilities;
* ``sample()`` is ancestral: pixel by pixel in raster order, the whole batch
  at once. It does not rerun the whole network per pixel: masked convolutions
  never look below the current row nor right of the current pixel in it, so
  every layer's activation at a finished pixel is final. The sampler keeps
  the activations of all layers; at the start of each row it computes, for
  every layer, the contribution of the kernel rows above the centre for the
  whole row (one convolution per layer), then for each new pixel evaluates
  every layer at that one pixel only, adding its centre-row taps (a small
  matrix product per layer): in all, one network pass worth of arithmetic for
  the whole image (about 0.1-0.2 s for 16 images, 0.4-0.6 s for 100 on one CPU thread,
  against ~35-50 s for 16 by 784 full passes). ``sample(..., method="full")`` is
  the plain method, one network pass over rows 0..r per pixel (for checks);
* no ``rsample`` (``has_rsample`` is False): the samples are binary. MIM's
  decoder-sampled half then uses the score-function term of
  :mod:`mimlib.objectives`, and needs 784 sequential network steps per batch,
  which is why the paper trains this model with A-MIM.
* ``mean`` is not defined (the marginal means of an autoregressive decoder are
  intractable) and raises ``NotImplementedError``; ``probs_given(x)`` gives
  the per-pixel means p(x_i = 1 | x_<i, z) for a given image x, and
  ``logits_given(x)`` their logits.

Batch norm. In train mode the network normalises with the statistics of the
batch, in eval mode with running statistics. Train-mode statistics are
computed over every pixel of the batch, so a train-mode ``log_prob`` is not
exactly autoregressive (pixel i's normalisation sees later pixels, weakly);
in eval mode the decoder is an exact autoregressive distribution (sums to one
over all images). **Sampling always uses the eval-mode network** (running
statistics) whatever the module's mode: the sampler folds the running
statistics into the weights itself, so it neither changes the module's mode
nor updates the running statistics, and a sample drawn in train mode equals
the one drawn in eval mode with the same random numbers. (During symmetric
MIM training the sampled x thus come from the eval-mode decoder while their
log-density is evaluated by the train-mode one.)

Latent and data conventions as in :mod:`mimlib.nets.hvae`: z = [z1, z2]
(80-D, z1 first); images (..., 1, 28, 28) with values in {0, 1} (flattened
(..., 784) also accepted by ``log_prob``).
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import distributions as td
from torch import nn

from .hvae import IMAGE_SHAPE, ConvHVAE, GatedLinear

__all__ = ["MaskedConv2d", "PixelCNNDecoder", "PixelCNNBernoulli", "PixelHVAE", "SAMPLING_METHODS"]

#: ``"incremental"`` (cached activations, one pixel per layer per step) or ``"full"``
#: (one network pass over rows 0..r per pixel).
SAMPLING_METHODS = ("incremental", "full")


# ----------------------------------------------------------------------------- masked convolution


class MaskedConv2d(nn.Conv2d):
    """A PixelCNN masked convolution (van den Oord et al. 2016), odd square kernel, stride 1.

    ``mask_type="A"``: the output at a pixel sees the input strictly before it
    in raster order within the kernel window (rows above the centre, pixels
    left of the centre in its row); ``"B"``: the centre pixel too. The mask is
    a registered buffer of the weight's shape, applied in every forward pass
    (``weight * mask``; the masked weights get zero gradient) and also to the
    initial weights, so the stored masked entries are zero. Padding is
    ``k // 2`` (same size output).
    """

    def __init__(self, mask_type: str, in_channels: int, out_channels: int, kernel_size: int = 3,
                 bias: bool = False):
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, 1, kernel_size // 2, bias=bias)
        self.mask_type = mask_type
        c = kernel_size // 2
        mask = torch.ones_like(self.weight)
        mask[:, :, c, c + (mask_type == "B"):] = 0   # the centre (type A) and right of it
        mask[:, :, c + 1:, :] = 0                     # the rows below the centre
        self.register_buffer("mask", mask)
        with torch.no_grad():
            self.weight.mul_(self.mask)

    def masked_weight(self) -> torch.Tensor:
        return self.weight * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.masked_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"mask_type={self.mask_type!r}, " + super().extra_repr()


# ----------------------------------------------------------------------------- the PixelCNN decoder network


class PixelCNNDecoder(nn.Module):
    """The conditional PixelCNN of PixelHVAE (appendix E.2), network only.

    Parameters (defaults: the paper's)
    ----------
    z1_dim, z2_dim: latent sizes (40, 40).
    image_size: (H, W) = (28, 28); smaller sizes serve the exact-enumeration tests.
    channels: width of the masked convolutions (64).
    n_type_b: number of type-B masked convolutions after the type-A one (7).
    kernel_size: of every masked convolution (3).

    ``cond_maps(z1, z2)`` -> (..., 2, H, W): the gated dense maps of the latents;
    ``logits(x, maps)``   -> (N, 1, H, W): teacher-forced Bernoulli logits,
    x (N, 1, H, W), maps (N, 2, H, W); ``sample(maps, u)``: autoregressive
    sampling with given uniforms (see :class:`PixelCNNBernoulli`).
    """

    def __init__(self, z1_dim: int = 40, z2_dim: int = 40, image_size: tuple[int, int] = (28, 28),
                 channels: int = 64, n_type_b: int = 7, kernel_size: int = 3):
        super().__init__()
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.n_pixels = self.image_size[0] * self.image_size[1]
        self.kernel_size = int(kernel_size)
        self.z1_map = GatedLinear(z1_dim, self.n_pixels)
        self.z2_map = GatedLinear(z2_dim, self.n_pixels)
        layers: list[nn.Module] = []
        for i in range(1 + n_type_b):
            conv = MaskedConv2d("A" if i == 0 else "B", 3 if i == 0 else channels, channels, kernel_size)
            layers += [conv, nn.BatchNorm2d(channels), nn.ReLU()]
        self.masked = nn.Sequential(*layers)
        self.out = nn.Conv2d(channels, 1, 1)

    # -- teacher forcing ---------------------------------------------------------

    def cond_maps(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """Gated dense maps of z1 and z2, stacked: (..., 2, H, W) over the broadcast leading shape."""
        shape = torch.broadcast_shapes(z1.shape[:-1], z2.shape[:-1])
        m1 = self.z1_map(z1).expand(*shape, -1)
        m2 = self.z2_map(z2).expand(*shape, -1)
        return torch.stack([m1, m2], dim=-2).reshape(*shape, 2, *self.image_size)

    def logits(self, x: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """Logits of p(x_i = 1 | x_<i, z) for every pixel i; x (N, 1, H, W), maps (N, 2, H, W)."""
        h = torch.cat([x.to(maps.dtype), maps], dim=1)
        return self.out(self.masked(h))

    # -- autoregressive sampling ---------------------------------------------------

    def _blocks(self) -> list[tuple[MaskedConv2d, nn.BatchNorm2d]]:
        mods = list(self.masked)
        return [(mods[i], mods[i + 1]) for i in range(0, len(mods), 3)]

    def _folded(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Every masked conv with its eval-mode batch norm folded in, split for the sampler:
        (w_above (C_out, C_in, k//2, k): the kernel rows above the centre, as a conv weight;
        w_row ((k//2 + 1) * C_in, C_out): the centre row's taps at columns -k//2..0, as a matrix
        on a channels-last patch; bias (C_out,))."""
        p = self.kernel_size // 2
        out = []
        for conv, bn in self._blocks():
            if bn.running_mean is None:
                raise RuntimeError("sampling needs batch-norm running statistics (track_running_stats=True)")
            b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight
            shift = -bn.running_mean * scale + (bn.bias if bn.bias is not None else 0.0)
            w = conv.masked_weight() * scale[:, None, None, None]
            w_row = w[:, :, p, :p + 1].permute(2, 1, 0).reshape(-1, w.shape[0]).contiguous()
            out.append((w[:, :, :p, :].contiguous(), w_row, b * scale + shift))
        return out

    @torch.no_grad()
    def sample(self, maps: torch.Tensor, u: torch.Tensor, method: str = "incremental"
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ancestral sample with the eval-mode network; returns (x, logits), both (N, 1, H, W).

        ``maps`` (N, 2, H, W); ``u`` (N, H, W) uniforms in [0, 1): pixel i is
        ``u_i < sigmoid(logit_i)``, logit_i computed from the pixels sampled
        before it. ``logits`` are those used for each pixel; by causality they
        equal the teacher-forced eval-mode logits of the returned x.
        """
        if method not in SAMPLING_METHODS:
            raise ValueError(f"method must be one of {SAMPLING_METHODS}, got {method!r}")
        H, W = self.image_size
        N = maps.shape[0]
        if maps.shape != (N, 2, H, W) or u.shape != (N, H, W):
            raise ValueError(f"expected maps (N, 2, {H}, {W}) and u (N, {H}, {W}), "
                             f"got {tuple(maps.shape)} and {tuple(u.shape)}")
        if method == "full":
            return self._sample_full(maps, u)
        return self._sample_incremental(maps, u)

    def _sample_full(self, maps: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One eval-mode network pass over rows 0..r for each pixel (r, c): exact, because no
        masked convolution looks below the current row."""
        H, W = self.image_size
        x = torch.zeros(maps.shape[0], 1, H, W, dtype=maps.dtype, device=maps.device)
        logits = torch.zeros_like(x)
        was_training = [m.training for m in self.modules()]
        self.eval()
        try:
            for r in range(H):
                for c in range(W):
                    lg = self.logits(x[:, :, :r + 1], maps[:, :, :r + 1])[:, 0, r, c]
                    logits[:, 0, r, c] = lg
                    x[:, 0, r, c] = (u[:, r, c] < torch.sigmoid(lg)).to(x.dtype)
        finally:
            for m, t in zip(self.modules(), was_training):
                m.training = t
        return x, logits

    def _sample_incremental(self, maps: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached activations. At the start of row r the rows above it are final in every layer,
        so each layer's contribution from its kernel rows above the centre is computed for the
        whole row r at once (one convolution per layer and row); then, pixel by pixel, each
        layer adds only its centre-row taps (left of the centre, and the centre for type B)."""
        H, W = self.image_size
        k = self.kernel_size
        p = k // 2
        N = maps.shape[0]
        folded = self._folded()
        w_out = self.out.weight.reshape(1, -1).t()          # (C, 1)
        b_out = self.out.bias
        # channels-last activations of every layer (input first), with p zero rows on top and p
        # zero columns left and right (the convolutions' zero padding; no layer reads below)
        widths = [3] + [b.shape[0] for _, _, b in folded]
        bufs = [torch.zeros(N, H + p, W + 2 * p, c, dtype=maps.dtype, device=maps.device) for c in widths]
        bufs[0][:, p:, p:p + W, 1:] = maps.permute(0, 2, 3, 1)
        x = torch.zeros(N, H, W, dtype=maps.dtype, device=maps.device)
        logits = torch.zeros_like(x)
        for r in range(H):
            # contributions of image rows r-p..r-1 to row r, every layer, every column: (N, W, C_out)
            above = []
            for i, (w_above, _, b) in enumerate(folded):
                rows = bufs[i][:, r:r + p].permute(0, 3, 1, 2)             # (N, C_in, p, W + 2p)
                above.append((F.conv2d(rows, w_above)[:, :, 0].transpose(1, 2) + b).contiguous())
            for c in range(W):
                h = None
                for i, (_, w_row, _) in enumerate(folded):
                    patch = bufs[i][:, r + p, c:c + p + 1].reshape(N, -1)    # columns c-p..c of row r
                    h = torch.addmm(above[i][:, c], patch, w_row).relu_()
                    bufs[i + 1][:, r + p, c + p] = h
                lg = torch.addmm(b_out, h, w_out)[:, 0]
                logits[:, r, c] = lg
                xi = (u[:, r, c] < torch.sigmoid(lg)).to(x.dtype)
                x[:, r, c] = xi
                bufs[0][:, r + p, c + p, 0] = xi
        return x[:, None], logits[:, None]


# ----------------------------------------------------------------------------- the decoder distribution


class PixelCNNBernoulli(td.Distribution):
    r"""p(x|z) = prod_i Bernoulli(x_i; sigmoid(f_i(x_<i, z))), over images (1, H, W).

    Built by :meth:`PixelHVAE.decoder` from the latent maps ``maps``
    (batch shape + (2, H, W)) and the network ``net``. See the module
    docstring for teacher forcing, sampling, batch norm. ``compute`` is the
    model's autocast context for the teacher-forced pass (the sampler always
    runs in the parameters' dtype).
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, net: PixelCNNDecoder, maps: torch.Tensor,
                 compute: Callable[[], contextlib.AbstractContextManager] | None = None):
        H, W = net.image_size
        if maps.shape[-3:] != (2, H, W):
            raise ValueError(f"expected maps of shape (..., 2, {H}, {W}), got {tuple(maps.shape)}")
        self.net, self.maps = net, maps
        self._compute = compute if compute is not None else contextlib.nullcontext
        super().__init__(maps.shape[:-3], torch.Size((1, H, W)), validate_args=False)

    @property
    def support(self):
        return td.constraints.independent(td.constraints.boolean, 3)

    def _match(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Size]:
        """x (..., 1, H, W) or (..., H*W) and the maps broadcast to one leading shape, flattened."""
        H, W = self.net.image_size
        if x.shape[-3:] == (1, H, W):
            lead = x.shape[:-3]
        elif x.shape[-1] == H * W:
            lead = x.shape[:-1]
            x = x.reshape(*lead, 1, H, W)
        else:
            raise ValueError(f"expected images of shape (..., 1, {H}, {W}) or (..., {H * W}), got {tuple(x.shape)}")
        shape = torch.broadcast_shapes(lead, self.batch_shape)
        x = x.expand(*shape, 1, H, W).reshape(-1, 1, H, W)
        maps = self.maps.expand(*shape, 2, H, W).reshape(-1, 2, H, W)
        return x, maps, shape

    def logits_given(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits of p(x_i = 1 | x_<i, z), shape (broadcast lead, 1, H, W)."""
        x, maps, shape = self._match(x)
        with self._compute():
            logits = self.net.logits(x, maps)
        return logits.to(maps.dtype).reshape(*shape, *self.event_shape)

    def probs_given(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel means p(x_i = 1 | x_<i, z) given the image x (teacher forcing)."""
        return torch.sigmoid(self.logits_given(x))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x|z) = sum_i log Bernoulli(x_i; sigmoid(f_i(x_<i, z))), shape: broadcast lead."""
        xs, maps, shape = self._match(x)
        with self._compute():
            logits = self.net.logits(xs, maps)
        logits = logits.to(maps.dtype)
        nll = F.binary_cross_entropy_with_logits(logits, xs.to(logits.dtype), reduction="none")
        return -nll.sum((-3, -2, -1)).reshape(shape)

    @property
    def mean(self) -> torch.Tensor:
        raise NotImplementedError(
            "the mean of an autoregressive PixelCNN decoder is intractable (each pixel's "
            "probability depends on the pixels before it); use probs_given(x) for the "
            "per-pixel means p(x_i = 1 | x_<i, z) given an image x, or sample()")

    @property
    def mode(self) -> torch.Tensor:
        raise NotImplementedError("the mode of an autoregressive PixelCNN decoder is intractable")

    @property
    def variance(self) -> torch.Tensor:
        raise NotImplementedError("the variance of an autoregressive PixelCNN decoder is intractable")

    def sample_with_logits(self, sample_shape: torch.Size | tuple[int, ...] = torch.Size(),
                           generator: torch.Generator | None = None, method: str = "incremental"
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, logits used per pixel), shape sample_shape + batch_shape + (1, H, W).

        The uniforms are drawn up front as one tensor ``torch.rand(N, H, W)``
        (N = number of images, in the order of the flattened output) from
        ``generator`` (default: the global generator), so a run is reproducible
        and checkable.
        """
        H, W = self.net.image_size
        shape = torch.Size(sample_shape) + self.batch_shape
        with torch.no_grad():
            maps = self.maps.detach().expand(*shape, 2, H, W).reshape(-1, 2, H, W)
            wdtype = self.net.out.weight.dtype
            u = torch.rand(maps.shape[0], H, W, generator=generator, dtype=wdtype, device=maps.device)
            x, logits = self.net.sample(maps.to(wdtype), u, method)
        x = x.to(self.maps.dtype).reshape(*shape, *self.event_shape)
        return x, logits.to(self.maps.dtype).reshape(*shape, *self.event_shape)

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = torch.Size(),
               generator: torch.Generator | None = None, method: str = "incremental") -> torch.Tensor:
        """Autoregressive sample (eval-mode network, module mode untouched), values in {0, 1}."""
        return self.sample_with_logits(sample_shape, generator, method)[0]

    def expand(self, batch_shape: torch.Size | tuple[int, ...], _instance=None) -> "PixelCNNBernoulli":
        H, W = self.net.image_size
        return type(self)(self.net, self.maps.expand(*batch_shape, 2, H, W), self._compute)


# ----------------------------------------------------------------------------- the model


class PixelHVAE(ConvHVAE):
    """PixelHVAE (appendix E.2): the convHVAE encoders, p(z1|z2) and priors with a PixelCNN decoder.

    Same constructor arguments and interface as :class:`~mimlib.nets.hvae.ConvHVAE`
    (``encoder``, ``decoder``, ``prior``, ``anchor``; ``prior="standard"`` or
    ``"vampprior"``), plus the PixelCNN sizes (defaults: the paper's). The
    decoder network is ``self.pixelcnn`` (:class:`PixelCNNDecoder`);
    ``decoder(z)`` returns a :class:`PixelCNNBernoulli`.
    """

    def __init__(self, prior: str = "standard", *, channels: int = 64, n_type_b: int = 7, **kwargs):
        super().__init__(prior, **kwargs)
        # drop the convHVAE decoder: every p_x_* submodule (p(z1|z2) is p_z1_*, kept)
        for name in [n for n, _ in self.named_children() if n.startswith("p_x_")]:
            delattr(self, name)
        self.pixelcnn = PixelCNNDecoder(self.z1_dim, self.z2_dim, IMAGE_SHAPE[1:], channels, n_type_b)
        for m in self.pixelcnn.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / m.in_features))   # the reference's he_init
        self.set_compute(self.precision, self.channels_last)

    def decoder_maps(self, z: torch.Tensor) -> torch.Tensor:
        """The latent maps (..., 2, 28, 28) of z = [z1, z2]."""
        if z.shape[-1] != self.latent_dim:
            raise ValueError(f"expected z with last dimension {self.latent_dim}, got {tuple(z.shape)}")
        with self._compute():
            maps = self.pixelcnn.cond_maps(z[..., :self.z1_dim], z[..., self.z1_dim:])
        return maps.to(z.dtype)

    def decoder(self, z: torch.Tensor) -> PixelCNNBernoulli:
        """p(x|z) = prod_i p(x_i | x_<i, z1, z2), z = [z1, z2] (..., 80); event shape (1, 28, 28)."""
        return PixelCNNBernoulli(self.pixelcnn, self.decoder_maps(z), self._compute)

    def decoder_logits(self, z1: torch.Tensor, z2: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits of p(x_i = 1 | x_<i, z1, z2) for the image x (required: the decoder
        is autoregressive)."""
        if x is None:
            raise NotImplementedError("the PixelCNN decoder's logits depend on x: pass the image x "
                                      "(teacher forcing), or use decoder(z).sample()")
        return self.decoder(torch.cat([z1, z2], -1)).logits_given(x)
