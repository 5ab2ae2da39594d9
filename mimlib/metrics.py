"""Evaluation: KSG mutual information, k-NN accuracy, NLL, reconstruction and active units.

Every function takes a model with the interface of :mod:`mimlib.objectives`
(for the batched 2-D models, tensors carry a leading model dimension and the
results are per model).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.special import digamma
from sklearn.neighbors import NearestNeighbors

from .distributions import draw

__all__ = ["ksg_mi", "knn_accuracy", "knn_accuracies", "nll_importance", "nll_single_sample",
           "reconstruction_error", "gaussian_mi", "active_units"]


def ksg_mi(x: np.ndarray, z: np.ndarray, k: int = 5) -> float:
    r"""Kraskov-Stoegbauer-Grassberger estimator 1 of I(x; z) in nats (Kraskov et al. 2004, Eq. 8).

    I = psi(k) + psi(N) - < psi(n_x + 1) + psi(n_z + 1) >, where for each point
    eps_i is the max-norm distance to its k-th neighbour in the joint space and
    n_x (n_z) counts the other points strictly closer than eps_i in the x (z)
    marginal. Neighbour searches run on scipy's KD-tree.
    """
    x = np.asarray(x, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if z.ndim == 1:
        z = z[:, None]
    n = x.shape[0]
    if z.shape[0] != n:
        raise ValueError(f"x and z hold different numbers of points: {n} and {z.shape[0]}")
    if not 1 <= k < n:
        raise ValueError(f"need 1 <= k < number of points, got k={k}, n={n}")
    if not (np.isfinite(x).all() and np.isfinite(z).all()):
        raise ValueError("x and z must be finite")
    joint = np.hstack([x, z])
    # k + 1 because each point is its own nearest neighbour.
    eps = cKDTree(joint).query(joint, k=k + 1, p=np.inf)[0][:, -1]
    # Strictly closer than eps: shrink the radius by one ulp (counts include the point itself).
    radius = np.nextafter(eps, 0)
    n_x = cKDTree(x).query_ball_point(x, radius, p=np.inf, return_length=True) - 1
    n_z = cKDTree(z).query_ball_point(z, radius, p=np.inf, return_length=True) - 1
    return float(digamma(k) + digamma(n) - np.mean(digamma(n_x + 1) + digamma(n_z + 1)))


def gaussian_mi(cov: np.ndarray, dx: int) -> float:
    """Closed-form I(x; z) of a jointly Gaussian (x, z) with covariance ``cov``, x the first ``dx`` coordinates:
    1/2 log(det S_xx det S_zz / det S)."""
    cov = np.asarray(cov, dtype=np.float64)
    _, ld = np.linalg.slogdet(cov)
    _, ldx = np.linalg.slogdet(cov[:dx, :dx])
    _, ldz = np.linalg.slogdet(cov[dx:, dx:])
    return 0.5 * (ldx + ldz - ld)


def knn_accuracy(z_train: np.ndarray, y_train: np.ndarray, z_test: np.ndarray,
                 y_test: np.ndarray, k: int = 5) -> float:
    """Test accuracy of a k-NN classifier (Euclidean, uniform votes) fit on (z_train, y_train):
    :func:`knn_accuracies` for one k."""
    return knn_accuracies(z_train, y_train, z_test, y_test, (k,))[k]


def knn_accuracies(z_train: np.ndarray, y_train: np.ndarray, z_test: np.ndarray, y_test: np.ndarray,
                   ks: tuple[int, ...] = (1, 3, 5, 10)) -> dict[int, float]:
    """Test accuracy of k-NN classifiers (Euclidean, uniform votes) for every k, from one neighbour search.

    The classifier of scikit-learn's ``KNeighborsClassifier`` (uniform weights; a tied vote goes to the
    smallest label), computed once for the largest k: the k nearest training points of each test
    point (scikit-learn's ``NearestNeighbors``, in float32) vote for its label.
    """
    z_train, z_test = np.asarray(z_train, dtype=np.float32), np.asarray(z_test, dtype=np.float32)
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    classes, y_idx = np.unique(y_train, return_inverse=True)
    kmax = max(ks)
    if kmax > len(z_train):
        raise ValueError(f"k = {kmax} exceeds the {len(z_train)} training points")
    nn = NearestNeighbors(n_neighbors=kmax).fit(z_train)
    idx = nn.kneighbors(z_test, return_distance=False)       # (n_test, kmax), nearest first
    labels = y_idx[idx]
    out = {}
    for k in ks:
        votes = np.zeros((len(z_test), len(classes)), dtype=np.int64)
        np.add.at(votes, (np.arange(len(z_test))[:, None], labels[:, :k]), 1)
        pred = classes[votes.argmax(1)]
        out[k] = float((pred == y_test).mean())
    return out


def active_units(means: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """Burda et al. (2016): unit d is active if Cov_x(E_q[z_d|x]) > threshold.

    ``means``: (N, D) posterior means over N data points. Returns a boolean (D,) mask.
    """
    means = np.asarray(means, dtype=np.float64)
    if means.ndim != 2 or len(means) < 2:
        raise ValueError(f"need an (N >= 2, D) array of posterior means, got shape {means.shape}")
    return means.var(axis=0, ddof=1) > threshold


@torch.no_grad()
def nll_importance(model, x: torch.Tensor, n_samples: int = 100, chunk: int = 10) -> torch.Tensor:
    r"""Importance-sampled estimate of -log q(x) per point, q(x) = E_{P(z)}[p(x|z)] (Eqs. 14-15).

    -log (1/S sum_s p(x|z_s) p(z_s) / q(z_s|x)), z_s ~ q(z|x) (Burda et al. 2016);
    it is an upper bound on -log q(x) in expectation and tightens as S grows.
    Returns a tensor of the batch shape of q(z|x).
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    q_zx = model.encoder(x)
    xb = _match(x, q_zx)
    log_w = []
    for start in range(0, n_samples, chunk):
        s = min(chunk, n_samples - start)
        z = q_zx.sample((s,))
        xs = xb.expand((s,) + tuple(xb.shape))
        log_w.append(model.decoder(z).log_prob(xs) + model.prior().log_prob(z) - q_zx.log_prob(z))
    log_w = torch.cat(log_w)
    return -(torch.logsumexp(log_w, 0) - math.log(n_samples))


@torch.no_grad()
def nll_single_sample(model, x: torch.Tensor) -> torch.Tensor:
    """The one-sample figure the reference code reports as "NLL": the negative ELBO with one z ~ q(z|x)."""
    q_zx = model.encoder(x)
    z = q_zx.sample()
    return -(model.decoder(z).log_prob(_match(x, q_zx)) + model.prior().log_prob(z) - q_zx.log_prob(z))


def _match(x: torch.Tensor, q_zx) -> torch.Tensor:
    """Broadcast an unbatched (batch, d) input against a batched model's (models, batch) shape."""
    bs = tuple(q_zx.batch_shape)
    return x if tuple(x.shape[:len(bs)]) == bs else x.expand(bs + tuple(x.shape[-1:]))


@torch.no_grad()
def reconstruction_error(model, x: torch.Tensor, use_mean: bool = True) -> torch.Tensor:
    """Euclidean distance ||x - x'|| per point, z ~ q(z|x), and x' the decoder mean
    (``use_mean=True``) or a decoder sample x' ~ p(x|z) (what the reference code
    calls "reconstruction RMSE")."""
    z = model.encoder(x).sample()
    p_xz = model.decoder(z)
    x_rec = p_xz.mean if use_mean else draw(p_xz)
    return (x_rec - x).flatten(start_dim=x_rec.dim() - 1).norm(dim=-1)
