import numpy as np
import pytest
import scipy.special as sp

from oncomri.fitting import bessel_i0e, bessel_i1e, rician_mean
from oncomri.fitting.special import rician_mean_and_grad

Z = np.concatenate([[0.0], np.logspace(-8, 3.5, 400), np.linspace(19.0, 21.0, 41)])


def test_scaled_bessel_functions_match_scipy():
    i0 = np.array([bessel_i0e(z) for z in Z])
    i1 = np.array([bessel_i1e(z) for z in Z])
    np.testing.assert_allclose(i0, sp.i0e(Z), rtol=1e-13)
    np.testing.assert_allclose(i1, sp.i1e(Z), rtol=1e-13, atol=1e-300)


def test_rician_mean_matches_closed_form_and_limits():
    sigma = 3.0
    a = np.linspace(0.0, 200.0, 2001)
    z = a * a / (4 * sigma * sigma)
    ref = sigma * np.sqrt(np.pi / 2) * ((1 + 2 * z) * sp.i0e(z) + 2 * z * sp.i1e(z))
    np.testing.assert_allclose(rician_mean(a, sigma), ref, rtol=1e-12)
    # Rayleigh mean at zero amplitude, -> sqrt(a^2 + sigma^2) at high SNR
    assert rician_mean(0.0, sigma) == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=1e-14)
    assert rician_mean(200.0, sigma) == pytest.approx(np.sqrt(200.0**2 + sigma**2), rel=1e-6)
    np.testing.assert_array_equal(rician_mean(a, 0.0), a)


def test_rician_mean_agrees_with_monte_carlo():
    rng = np.random.default_rng(1)
    sigma, a = 10.0, 15.0
    m = np.hypot(a + sigma * rng.standard_normal(2_000_000), sigma * rng.standard_normal(2_000_000))
    assert rician_mean(a, sigma) == pytest.approx(m.mean(), rel=2e-3)


@pytest.mark.parametrize("a", [0.3, 4.0, 25.0, 90.0, 400.0])
def test_rician_mean_derivative_matches_finite_difference(a):
    sigma, h = 5.0, 1e-5 * max(a, 1.0)
    _, grad = rician_mean_and_grad(a, sigma)
    fd = (rician_mean(a + h, sigma) - rician_mean(a - h, sigma)) / (2 * h)
    assert grad == pytest.approx(fd, rel=1e-6)
