"""KSG against closed-form Gaussian mutual information; k-NN; reconstruction names."""

import numpy as np
import pytest
import torch

from mimlib import metrics


def _correlated(rng, cov, n):
    return rng.multivariate_normal(np.zeros(len(cov)), cov, size=n)


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_ksg_2d_matches_closed_form(rho):
    rng = np.random.default_rng(0)
    cov = np.array([[1.0, rho], [rho, 1.0]])
    xz = _correlated(rng, cov, 5000)
    exact = -0.5 * np.log(1 - rho ** 2)
    assert metrics.gaussian_mi(cov, 1) == pytest.approx(exact)
    assert abs(metrics.ksg_mi(xz[:, :1], xz[:, 1:]) - exact) < 0.03


def test_ksg_4d_matches_closed_form():
    """x, z in R^2 with two correlated pairs: I = -1/2 log(1 - r1^2) - 1/2 log(1 - r2^2)."""
    rng = np.random.default_rng(1)
    r1, r2 = 0.8, 0.6
    cov = np.eye(4)
    cov[0, 2] = cov[2, 0] = r1
    cov[1, 3] = cov[3, 1] = r2
    xz = _correlated(rng, cov, 5000)
    exact = metrics.gaussian_mi(cov, 2)
    assert exact == pytest.approx(-0.5 * np.log(1 - r1 ** 2) - 0.5 * np.log(1 - r2 ** 2))
    assert abs(metrics.ksg_mi(xz[:, :2], xz[:, 2:]) - exact) < 0.05


def test_ksg_is_symmetric_and_order_free():
    rng = np.random.default_rng(2)
    xz = _correlated(rng, np.array([[1.0, 0.7], [0.7, 1.0]]), 2000)
    a = metrics.ksg_mi(xz[:, :1], xz[:, 1:])
    assert metrics.ksg_mi(xz[:, 1:], xz[:, :1]) == pytest.approx(a, abs=1e-12)
    perm = rng.permutation(2000)
    assert metrics.ksg_mi(xz[perm, :1], xz[perm, 1:]) == pytest.approx(a, abs=1e-12)


def test_ksg_independent_is_near_zero_and_deterministic_is_large():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 2))
    assert abs(metrics.ksg_mi(x, rng.normal(size=(3000, 2)))) < 0.03
    assert metrics.ksg_mi(x, x + 1e-6 * rng.normal(size=(3000, 2))) > 5.0


def test_ksg_bad_input():
    with pytest.raises(ValueError, match="different numbers"):
        metrics.ksg_mi(np.zeros((5, 1)), np.zeros((4, 1)))
    with pytest.raises(ValueError, match="k"):
        metrics.ksg_mi(np.zeros((5, 1)), np.zeros((5, 1)), k=5)
    with pytest.raises(ValueError, match="finite"):
        metrics.ksg_mi(np.full((10, 1), np.nan), np.zeros((10, 1)))


def test_knn_accuracy_perfect_and_chance():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 2000)
    centers = 10.0 * np.eye(5)[:, :2] + np.arange(5)[:, None] * 10
    z = centers[y] + rng.normal(size=(2000, 2)) * 0.1
    assert metrics.knn_accuracy(z[:1000], y[:1000], z[1000:], y[1000:]) == 1.0
    noise = rng.normal(size=(2000, 2))
    acc = metrics.knn_accuracy(noise[:1000], y[:1000], noise[1000:], y[1000:])
    assert 0.12 < acc < 0.28


def test_reconstruction_mean_vs_sample():
    from linear_gaussian import LinearGaussian
    lg = LinearGaussian(dx=3, dz=2, seed=0)
    x = lg.marginal().sample((100_000,))
    with torch.no_grad():
        sq_mean = (metrics.reconstruction_error(lg, x, use_mean=True) ** 2).mean().item()
        sq_sample = (metrics.reconstruction_error(lg, x, use_mean=False) ** 2).mean().item()
    # A decoder sample adds independent noise of variance s^2 = 0.49 in each of 3 dimensions.
    assert sq_sample - sq_mean == pytest.approx(3 * 0.49, abs=0.1)
