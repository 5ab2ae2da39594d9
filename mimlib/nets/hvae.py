r"""The two-level convolutional hierarchical VAE (convHVAE, L = 2) of the image experiments.

Architecture of Tomczak & Welling (2018, "VAE with a VampPrior"), used by the
MIM paper (section 5, appendix D.2); sizes as in ``shared/reference/anchor-facts.md``.
Latents z1, z2 are 40-D each; the model's latent is the concatenation
``z = [z1, z2]`` (80-D, z1 first), the vector the k-NN evaluation uses.

* q(z2|x): five gated convs 1->32 (7x7), 32->32 (3x3, stride 2), 32->64 (5x5),
  64->64 (3x3, stride 2), 64->6 (3x3) -> 6x7x7 = 294 features -> linear heads;
* q(z1|x, z2): the same conv stack with 3x3 kernels (294 features) and a gated
  dense 40->294 of z2, concatenated, gated dense 588->300 -> linear heads;
* p(z1|z2): gated dense 40->300->300 -> linear heads;
* p(x|z1, z2): gated dense 40->300 of each latent, concatenated, gated dense
  600->784, reshaped to 1x28x28, four gated 3x3 convs with 64 channels, a 1x1
  conv to one channel: the *logits* of a Bernoulli (the reference applies a
  sigmoid and takes logs of the means; logits are the numerically stable form
  of the same model).

Every Gaussian head gives a mean and a log-variance clipped to [-6, 2] with a
hardtanh, as in the reference. A gated layer is ``h(x) * sigmoid(g(x))`` with
no other activation; it is computed as ONE linear map / convolution with 2C
outputs split in two, which has exactly the parameters of the reference's two
separate layers (h and g) and is faster.

Priors on z2: ``"standard"`` N(0, I), or ``"vampprior"``
p(z2) = 1/K sum_k q(z2|u_k) with K = 500 learned pseudo-inputs
u_k = hardtanh_[0,1](w_k), w_k in R^784.

Speed (:meth:`ConvHVAE.set_compute`; off by default, so the defaults are
plain float32; ``precision="auto"`` picks bf16 only on hardware that is fast at
it, :mod:`mimlib.precision`). ``precision="bf16"`` runs every convolution and dense layer
under ``torch.autocast`` in bfloat16 (on CPUs with AMX / AVX512-BF16 oneDNN
runs them several times faster) while parameters, Adam state, the Gaussian
head outputs, the decoder logits and every log-density stay float32: each
network block casts its output back to float32 before a distribution is built.
``channels_last=True`` stores the conv weights and feeds the conv activations
in NHWC layout, which oneDNN uses without reordering. Neither changes the
parameters or the model; both change the rounding of the forward pass.

Data convention: images are float tensors of shape (..., 1, 28, 28) with
values in {0, 1} (flattened (..., 784) is accepted too); the decoder p(x|z)
is a Bernoulli with event shape (1, 28, 28) (``event_dims = 3``), so its
``log_prob`` takes batches exactly as :mod:`mimlib.images` yields them.

Interface (:mod:`mimlib.objectives`):

* ``encoder(x)`` -> q(z|x) = q(z2|x) q(z1|x, z2), a :class:`TwoLevelLatent`
  (ancestral ``rsample``: z2 first, then z1 given z2);
* ``decoder(z)`` -> p(x|z1, z2), Bernoulli over 1x28x28;
* ``prior()``    -> p(z) = p(z2) p(z1|z2), a :class:`TwoLevelLatent`;
* ``anchor()``   -> P(z) = N(0, I_80) over the whole latent. The anchor is the
  distribution the decoder-sampled half of MIM draws z from; the paper fixes
  it to a standard normal (its section 2) whatever the learned model prior is.
  (The reference code instead draws the decoder-sampled z from the model prior
  p(z2) p(z1|z2); with ``prior="standard"`` the two differ only in z1, which
  the reference draws from p(z1|z2).)
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import distributions as td
from torch import nn

from ..distributions import bernoulli, diagonal_gaussian, standard_normal
from ..precision import PRECISIONS, REQUESTS, resolve_precision

__all__ = ["GatedLinear", "GatedConv2d", "GaussianHead", "TwoLevelLatent",
           "ConvHVAE", "LOGVAR_MIN", "LOGVAR_MAX", "IMAGE_SHAPE", "PRECISIONS"]

LOGVAR_MIN, LOGVAR_MAX = -6.0, 2.0
IMAGE_SHAPE = (1, 28, 28)
_N_PIXELS = 784
_CONV_FEATURES = 6 * 7 * 7  # 294



# ----------------------------------------------------------------------------- layers


def _he_init(linear: nn.Linear) -> None:
    """The reference's initialisation of every dense weight: N(0, 2 / fan_in)."""
    nn.init.normal_(linear.weight, 0.0, math.sqrt(2.0 / linear.in_features))


class GatedLinear(nn.Module):
    """Gated dense layer ``h(x) * sigmoid(g(x))``, one ``Linear(in, 2 out)`` split in two."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, 2 * out_features)
        _he_init(self.linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, g = self.linear(x).chunk(2, dim=-1)
        return h * torch.sigmoid(g)


class GatedConv2d(nn.Module):
    """Gated convolution ``h(x) * sigmoid(g(x))``, one ``Conv2d(in, 2 out)`` split in two.

    PyTorch's default initialisation depends only on the fan-in, so it is the
    same distribution as for the reference's two separate convolutions.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 2 * out_channels, kernel_size, stride, padding)
        self.channels_last = False   # feed the convolution NHWC activations (set by ConvHVAE.set_compute)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        h, g = self.conv(x).chunk(2, dim=1)
        return h * torch.sigmoid(g)


class GaussianHead(nn.Module):
    """Mean and log-variance (hardtanh-clipped to [-6, 2]) of a diagonal Gaussian.

    One ``Linear(in, 2 out)``: the parameters of the reference's two linear heads.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, 2 * out_features)
        _he_init(self.linear)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.linear(h).float().chunk(2, dim=-1)   # float32 even under autocast
        return mean, F.hardtanh(logvar, LOGVAR_MIN, LOGVAR_MAX)


def _gaussian(mean: torch.Tensor, logvar: torch.Tensor) -> td.Independent:
    return diagonal_gaussian(mean, torch.exp(0.5 * logvar))


def _conv_stack(kernels: tuple[int, ...]) -> nn.Sequential:
    """Five gated convs 1->32->32->64->64->6 with the given kernel sizes; 28x28 -> 6x7x7."""
    channels = (1, 32, 32, 64, 64, 6)
    strides = (1, 2, 1, 2, 1)
    return nn.Sequential(*[GatedConv2d(channels[i], channels[i + 1], k, strides[i], k // 2)
                           for i, k in enumerate(kernels)])


# ----------------------------------------------------------------------------- distributions


def _rsample_top(top: td.Distribution, sample_shape: torch.Size) -> torch.Tensor:
    """Pathwise sample of the top latent where one exists.

    A uniform mixture (the VampPrior) has fixed weights: draw the component k,
    then reparameterise inside it, mean_k + std_k * eps. The gradient flows into
    the component parameters (pseudo-inputs, q(z2|.) network) and is unbiased
    because the weights are not learned.
    """
    if top.has_rsample:
        return top.rsample(sample_shape)
    if isinstance(top, td.MixtureSameFamily) and top.component_distribution.has_rsample:
        k = top.mixture_distribution.sample(sample_shape)           # S + B
        every = top.component_distribution.rsample(sample_shape)    # S + B + (K, d)
        index = k[..., None, None].expand(*k.shape, 1, every.shape[-1])
        return every.gather(-2, index).squeeze(-2)
    return top.sample(sample_shape)


class TwoLevelLatent(td.Distribution):
    r"""A density over z = [z1, z2] factorised top-down: r(z) = r(z2) r(z1 | z2).

    ``top`` is r(z2) (any distribution over a vector); ``conditional(z2)``
    returns r(z1 | z2) as a distribution over z1 whose batch shape broadcasts
    with z2's leading dimensions. It is

    * the encoder q(z|x) = q(z2|x) q(z1|x, z2) (``top`` = q(z2|x), the
      conditional closes over the conv features of x), and
    * the model prior p(z) = p(z2) p(z1|z2) (``top`` = N(0, I) or the VampPrior).

    ``log_prob(z) = log r(z2) + log r(z1|z2)``; ``rsample`` is ancestral
    (z2 first, then z1 given that z2) and pathwise in both levels.
    """

    arg_constraints: dict = {}
    support = td.constraints.independent(td.constraints.real, 1)
    has_rsample = True

    def __init__(self, top: td.Distribution, conditional: Callable[[torch.Tensor], td.Distribution],
                 z1_dim: int):
        if len(top.event_shape) != 1:
            raise ValueError(f"top must be over vectors, got event shape {tuple(top.event_shape)}")
        self.top = top
        self.conditional = conditional
        self.z1_dim = int(z1_dim)
        self.z2_dim = int(top.event_shape[0])
        super().__init__(top.batch_shape, torch.Size([self.z1_dim + self.z2_dim]), validate_args=False)

    def split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z = [z1, z2] -> (z1, z2)."""
        if z.shape[-1] != self.event_shape[0]:
            raise ValueError(f"expected z with last dimension {self.event_shape[0]}, got {tuple(z.shape)}")
        return z[..., :self.z1_dim], z[..., self.z1_dim:]

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        z1, z2 = self.split(z)
        return self.top.log_prob(z2) + self.conditional(z2).log_prob(z1)

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = torch.Size()) -> torch.Tensor:
        z2 = _rsample_top(self.top, torch.Size(sample_shape))
        z1 = self.conditional(z2).rsample()
        shape = torch.broadcast_shapes(z1.shape[:-1], z2.shape[:-1])
        return torch.cat([z1.expand(*shape, -1), z2.expand(*shape, -1)], dim=-1)

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def expand(self, batch_shape: torch.Size | tuple[int, ...], _instance=None) -> "TwoLevelLatent":
        return type(self)(self.top.expand(torch.Size(batch_shape)), self.conditional, self.z1_dim)


# ----------------------------------------------------------------------------- the model


class ConvHVAE(nn.Module):
    """convHVAE (L = 2) with a Bernoulli decoder; see the module docstring.

    Parameters
    ----------
    prior:
        ``"standard"`` (p(z2) = N(0, I)) or ``"vampprior"``.
    n_pseudo:
        K, the number of VampPrior pseudo-inputs (500 in the paper).
    pseudo_init:
        ``"normal"``: pseudo-input weights from N(0.05, 0.01^2) (the K
        components then start almost identical); or a tensor of K training
        images (values in [0, 1]) to which N(0, 0.01^2) noise is added
        (:meth:`init_pseudo_inputs`), as the reference code's commands for the
        paper's image runs do (``--use_training_data_init``).
    z1_dim, z2_dim:
        latent sizes (40 each in the paper).
    precision, channels_last:
        speed settings, see :meth:`set_compute` (defaults: plain float32, NCHW).
    """

    def __init__(self, prior: str = "standard", *, n_pseudo: int = 500,
                 pseudo_init: str | torch.Tensor = "normal", z1_dim: int = 40, z2_dim: int = 40,
                 precision: str = "fp32", channels_last: bool = False):
        super().__init__()
        self.precision, self.channels_last = "fp32", False
        if prior not in ("standard", "vampprior"):
            raise ValueError(f"prior must be 'standard' or 'vampprior', got {prior!r}")
        self.prior_name = prior
        self.z1_dim, self.z2_dim = int(z1_dim), int(z2_dim)
        self.latent_dim = self.z1_dim + self.z2_dim

        # q(z2 | x)
        self.q_z2_convs = _conv_stack((7, 3, 5, 3, 3))
        self.q_z2_head = GaussianHead(_CONV_FEATURES, z2_dim)
        # q(z1 | x, z2)
        self.q_z1_convs = _conv_stack((3, 3, 3, 3, 3))
        self.q_z1_z2 = GatedLinear(z2_dim, _CONV_FEATURES)
        self.q_z1_joint = GatedLinear(2 * _CONV_FEATURES, 300)
        self.q_z1_head = GaussianHead(300, z1_dim)
        # p(z1 | z2)
        self.p_z1_layers = nn.Sequential(GatedLinear(z2_dim, 300), GatedLinear(300, 300))
        self.p_z1_head = GaussianHead(300, z1_dim)
        # p(x | z1, z2)
        self.p_x_z1 = GatedLinear(z1_dim, 300)
        self.p_x_z2 = GatedLinear(z2_dim, 300)
        self.p_x_joint = GatedLinear(600, _N_PIXELS)
        self.p_x_convs = nn.Sequential(GatedConv2d(1, 64, 3, 1, 1), GatedConv2d(64, 64, 3, 1, 1),
                                       GatedConv2d(64, 64, 3, 1, 1), GatedConv2d(64, 64, 3, 1, 1))
        self.p_x_logits = nn.Conv2d(64, 1, 1)

        self._vamp_cache: tuple | None = None
        if prior == "vampprior":
            if n_pseudo < 1:
                raise ValueError(f"n_pseudo must be >= 1, got {n_pseudo}")
            self.n_pseudo = int(n_pseudo)
            self.pseudo_weights = nn.Parameter(torch.empty(self.n_pseudo, _N_PIXELS))
            if isinstance(pseudo_init, torch.Tensor):
                self.init_pseudo_inputs(pseudo_init)
            elif pseudo_init == "normal":
                with torch.no_grad():
                    self.pseudo_weights.normal_(0.05, 0.01)
            else:
                raise ValueError(f"pseudo_init must be 'normal' or a tensor of images, got {pseudo_init!r}")
        else:
            self.n_pseudo = 0
            self.pseudo_weights = None
        self.set_compute(precision, channels_last)

    # -- speed -----------------------------------------------------------------

    def set_compute(self, precision: str = "fp32", channels_last: bool = False) -> "ConvHVAE":
        """Choose how the networks are computed (module docstring); returns ``self``.

        ``precision``: ``"fp32"``, ``"bf16"`` (autocast of convolutions and
        dense layers; parameters, outputs of every block and log-densities stay
        float32) or ``"auto"`` (:func:`mimlib.precision.resolve_precision` on the
        model's device: bf16 only where that device computes it natively and
        faster); :attr:`precision` holds the resolved name. ``channels_last``:
        NHWC conv weights and activations. The parameters and their values are
        unchanged, so a model trained one way can be evaluated another way.
        """
        if precision not in REQUESTS:
            raise ValueError(f"precision must be one of {list(REQUESTS)}, got {precision!r}")
        precision = resolve_precision(precision, next(self.parameters()).device)
        self.precision, self.channels_last = precision, bool(channels_last)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        for m in self.modules():
            if isinstance(m, GatedConv2d):
                m.channels_last = self.channels_last
            if isinstance(m, nn.Conv2d):
                m.to(memory_format=fmt)
        self.clear_prior_cache()
        return self

    def _compute(self):
        """The autocast context of :attr:`precision` (a no-op for fp32)."""
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=next(self.parameters()).device.type, dtype=dtype)

    # -- helpers -------------------------------------------------------------

    @staticmethod
    def _images(x: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
        """(..., 1, 28, 28) or (..., 784) -> ((N, 1, 28, 28), leading shape)."""
        if x.shape[-3:] == IMAGE_SHAPE:
            lead = x.shape[:-3]
        elif x.shape[-1] == _N_PIXELS:
            lead = x.shape[:-1]
        else:
            raise ValueError(f"expected images of shape (..., 1, 28, 28) or (..., 784), got {tuple(x.shape)}")
        return x.reshape(-1, *IMAGE_SHAPE), lead

    def q_z2_params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clipped log-variance of q(z2|x); x: (N, 1, 28, 28)."""
        with self._compute():
            return self.q_z2_head(self.q_z2_convs(x).flatten(1))

    def q_z1_features(self, x: torch.Tensor) -> torch.Tensor:
        """The 294 conv features of x used by q(z1|x, z2); x: (N, 1, 28, 28)."""
        with self._compute():
            return self.q_z1_convs(x).flatten(1)

    def q_z1_params(self, hx: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clipped log-variance of q(z1|x, z2) from x's features ``hx`` (..., 294)."""
        with self._compute():
            hz = self.q_z1_z2(z2)
            shape = torch.broadcast_shapes(hx.shape[:-1], hz.shape[:-1])
            h = torch.cat([hx.expand(*shape, -1), hz.to(hx.dtype).expand(*shape, -1)], dim=-1)
            return self.q_z1_head(self.q_z1_joint(h))

    def p_z1_params(self, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clipped log-variance of p(z1|z2)."""
        with self._compute():
            return self.p_z1_head(self.p_z1_layers(z2))

    def decoder_logits(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits of p(x|z1, z2), shape (..., 1, 28, 28), float32."""
        shape = torch.broadcast_shapes(z1.shape[:-1], z2.shape[:-1])
        with self._compute():
            h = torch.cat([self.p_x_z1(z1).expand(*shape, -1), self.p_x_z2(z2).expand(*shape, -1)], dim=-1)
            h = self.p_x_joint(h).reshape(-1, *IMAGE_SHAPE)
            logits = self.p_x_logits(self.p_x_convs(h)).float()
        return logits.reshape(*shape, *IMAGE_SHAPE)

    def pseudo_inputs(self) -> torch.Tensor:
        """The K pseudo-inputs u_k = hardtanh_[0,1](w_k), shape (K, 1, 28, 28)."""
        if self.pseudo_weights is None:
            raise RuntimeError("pseudo-inputs exist only with prior='vampprior'")
        return F.hardtanh(self.pseudo_weights, 0.0, 1.0).reshape(-1, *IMAGE_SHAPE)

    @torch.no_grad()
    def init_pseudo_inputs(self, images: torch.Tensor, noise_std: float = 0.01,
                           generator: torch.Generator | None = None) -> None:
        """Set the pseudo-input weights to K images (values in [0, 1]) plus N(0, noise_std^2)."""
        if self.pseudo_weights is None:
            raise RuntimeError("pseudo-inputs exist only with prior='vampprior'")
        images = images.reshape(-1, _N_PIXELS).to(self.pseudo_weights)
        if images.shape[0] != self.n_pseudo:
            raise ValueError(f"need {self.n_pseudo} images, got {images.shape[0]}")
        noise = torch.randn(images.shape, generator=generator, dtype=images.dtype).to(images.device)
        self.pseudo_weights.copy_(images + noise_std * noise)
        self.clear_prior_cache()

    # -- the VampPrior components, computed once per step -----------------------

    def clear_prior_cache(self) -> None:
        """Forget the cached encodings of the pseudo-inputs."""
        self._vamp_cache = None

    def _vamp_key(self) -> tuple:
        params = [self.pseudo_weights, *self.q_z2_convs.parameters(), *self.q_z2_head.parameters()]
        return (torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
                tuple((p.data_ptr(), p._version, p.requires_grad) for p in params))

    def vamp_components(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std (K, z2_dim) of the VampPrior components q(z2|u_k).

        The K encodings are computed once per training step and shared by every
        ``prior()`` of that step (MIM asks for it twice). The cache is dropped
        as soon as a backward pass runs through it (a tensor hook), and is
        keyed on grad mode and on the version counters of the parameters it
        depends on, so an optimiser step or ``load_state_dict`` also refreshes
        it; under ``torch.no_grad()`` successive evaluation batches share it.
        """
        key = self._vamp_key()
        if self._vamp_cache is not None and self._vamp_cache[0] == key:
            return self._vamp_cache[1]
        mean, logvar = self.q_z2_params(self.pseudo_inputs())
        std = torch.exp(0.5 * logvar)
        for t in (mean, std):
            if t.requires_grad:
                t.register_hook(self._drop_cache_hook)
        self._vamp_cache = (key, (mean, std))
        return mean, std

    def _drop_cache_hook(self, grad: torch.Tensor) -> None:
        self._vamp_cache = None

    def __getstate__(self) -> dict:
        # the cache holds non-leaf tensors: never copy or pickle it (deepcopy, torch.save)
        state = self.__dict__.copy()
        state["_vamp_cache"] = None
        return state

    # -- the interface of mimlib.objectives --------------------------------------

    def encoder(self, x: torch.Tensor) -> TwoLevelLatent:
        """q(z|x) = q(z2|x) q(z1|x, z2) over z = [z1, z2]; batch shape = x's leading shape."""
        x4, lead = self._images(x)
        mean2, logvar2 = self.q_z2_params(x4)
        hx = self.q_z1_features(x4).reshape(*lead, _CONV_FEATURES)
        top = _gaussian(mean2.reshape(*lead, self.z2_dim), logvar2.reshape(*lead, self.z2_dim))

        def q_z1(z2: torch.Tensor) -> td.Independent:
            return _gaussian(*self.q_z1_params(hx, z2))

        return TwoLevelLatent(top, q_z1, self.z1_dim)

    def decoder(self, z: torch.Tensor) -> td.Independent:
        """p(x|z), z = [z1, z2] (..., 80): Bernoulli(logits) over (1, 28, 28), event_dims = 3."""
        if z.shape[-1] != self.latent_dim:
            raise ValueError(f"expected z with last dimension {self.latent_dim}, got {tuple(z.shape)}")
        return bernoulli(self.decoder_logits(z[..., :self.z1_dim], z[..., self.z1_dim:]), event_dims=3)

    def p_z2(self) -> td.Distribution:
        """The prior on z2: N(0, I), or the uniform mixture 1/K sum_k q(z2|u_k)."""
        p = next(self.parameters())
        if self.pseudo_weights is None:
            return standard_normal(self.z2_dim, device=p.device, dtype=p.dtype)
        mean, std = self.vamp_components()
        mix = td.Categorical(logits=torch.zeros(self.n_pseudo, device=p.device, dtype=p.dtype))
        return td.MixtureSameFamily(mix, diagonal_gaussian(mean, std))

    def prior(self) -> TwoLevelLatent:
        """p(z) = p(z2) p(z1|z2) over z = [z1, z2]; batch shape ()."""
        def p_z1(z2: torch.Tensor) -> td.Independent:
            return _gaussian(*self.p_z1_params(z2))

        return TwoLevelLatent(self.p_z2(), p_z1, self.z1_dim)

    def anchor(self) -> td.Independent:
        """P(z) = N(0, I_80) over the whole latent [z1, z2] (module docstring)."""
        p = next(self.parameters())
        return standard_normal(self.latent_dim, device=p.device, dtype=p.dtype)

    def extra_repr(self) -> str:
        return (f"prior={self.prior_name!r}, z1_dim={self.z1_dim}, z2_dim={self.z2_dim}, n_pseudo={self.n_pseudo}, "
                f"precision={self.precision!r}, channels_last={self.channels_last}")
