"""A linear-Gaussian latent variable model whose marginal, posterior, ELBO and
KL have closed forms: the reference the Monte-Carlo estimators are tested on.

P(z) = N(0, I), p(x|z) = N(W z + b, s^2 I), q(z|x) = N(A x + c, diag(t^2)).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mimlib.distributions import diagonal_gaussian, standard_normal


class LinearGaussian(nn.Module):
    def __init__(self, dx: int = 3, dz: int = 2, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        f64 = dict(dtype=torch.float64)
        self.W = nn.Parameter(torch.randn(dx, dz, generator=g, **f64))
        self.b = nn.Parameter(0.3 * torch.randn(dx, generator=g, **f64))
        self.log_s = nn.Parameter(torch.tensor(math.log(0.7), **f64))
        self.A = nn.Parameter(0.4 * torch.randn(dz, dx, generator=g, **f64))
        self.c = nn.Parameter(0.1 * torch.randn(dz, generator=g, **f64))
        self.log_t = nn.Parameter(torch.log(0.3 + torch.rand(dz, generator=g, **f64)))
        self.dx, self.dz = dx, dz

    def encoder(self, x):
        mean = x @ self.A.T + self.c
        return diagonal_gaussian(mean, self.log_t.exp().expand_as(mean))

    def decoder(self, z):
        mean = z @ self.W.T + self.b
        return diagonal_gaussian(mean, self.log_s.exp().expand_as(mean))

    def prior(self):
        return standard_normal(self.dz, dtype=torch.float64)

    anchor = prior

    # ---- closed forms -------------------------------------------------------
    def marginal(self):
        """q(x) = N(b, W W^T + s^2 I)."""
        cov = self.W @ self.W.T + self.log_s.exp() ** 2 * torch.eye(self.dx, dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.b, cov)

    def _expected_log_normal(self, mean_r, cov_r, var):
        """E[log N(r; 0, diag(var))] for r ~ N(mean_r, cov_r), per point."""
        d = var.shape[-1]
        quad = (torch.diagonal(cov_r) / var).sum() + ((mean_r ** 2) / var).sum(-1)
        return -0.5 * (d * math.log(2 * math.pi) + torch.log(var).sum() + quad)

    def expected_log_px_given_z(self, x):
        """E_{q(z|x)}[log p(x|z)]: residual r = x - W z - b with z ~ q(z|x)."""
        q = self.encoder(x)
        mean_r = x - q.mean @ self.W.T - self.b
        cov_r = self.W @ torch.diag(self.log_t.exp() ** 2) @ self.W.T
        var = (self.log_s.exp() ** 2).expand(self.dx)
        return self._expected_log_normal(mean_r, cov_r, var)

    def expected_log_pz(self, x):
        """E_{q(z|x)}[log N(z; 0, I)]."""
        q = self.encoder(x)
        return self._expected_log_normal(q.mean, torch.diag(self.log_t.exp() ** 2),
                                         torch.ones(self.dz, dtype=torch.float64))

    def encoder_entropy(self):
        return 0.5 * (self.dz * (1 + math.log(2 * math.pi)) + 2 * self.log_t.sum())

    def elbo(self, x):
        return self.expected_log_px_given_z(x) + self.expected_log_pz(x) + self.encoder_entropy()

    def kl_to_prior(self, x):
        q = self.encoder(x)
        var = self.log_t.exp() ** 2
        return 0.5 * (var.sum() + (q.mean ** 2).sum(-1) - self.dz - torch.log(var).sum())

    def expected_mim_decoder_term(self):
        """E_{z~P(z), x~p(x|z)}[-1/2 (log q(z|x) + 2 log p(x|z) + log P(z))] (Algorithm 1, line 11)."""
        s2 = self.log_s.exp() ** 2
        e_log_pxz = -0.5 * self.dx * (math.log(2 * math.pi) + torch.log(s2) + 1)
        e_log_pz = -0.5 * self.dz * (math.log(2 * math.pi) + 1)
        # residual r = z - A x - c, x = W z + b + s eps
        eye = torch.eye(self.dz, dtype=torch.float64)
        m = eye - self.A @ self.W
        mean_r = -(self.A @ self.b) - self.c
        cov_r = m @ m.T + s2 * self.A @ self.A.T
        e_log_qzx = self._expected_log_normal(mean_r, cov_r, self.log_t.exp() ** 2)
        return -0.5 * (e_log_qzx + 2 * e_log_pxz + e_log_pz)
