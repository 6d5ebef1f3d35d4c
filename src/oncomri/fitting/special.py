"""Special functions for the numba kernels: scaled Bessel functions and the
Rician mean.

numba cannot call ``scipy.special`` from compiled code, so the two functions
the Rician noise model needs are evaluated here from their textbook
definitions (Abramowitz & Stegun, *Handbook of Mathematical Functions*, 1964):

- the ascending power series 9.6.10, ``I_nu(z) = sum_k (z/2)^(2k+nu) / (k! (k+nu)!)``,
  for ``z <= 20``, where it converges to double precision in < 60 terms;
- the asymptotic expansion 9.7.1,
  ``I_nu(z) ~ e^z / sqrt(2 pi z) * sum_k (-1)^k a_k(nu) / z^k`` with
  ``a_k(nu) = prod_{j=1..k} (4 nu^2 - (2j-1)^2) / (k! 8^k)``, for ``z > 20``,
  where its smallest term is below 1e-17.

Both return the exponentially scaled ``I_nu(z) e^-z`` (like ``scipy.special.i0e``)
so that large arguments never overflow. The tests compare them with scipy.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["bessel_i01e", "bessel_i0e", "bessel_i1e", "rician_mean_scalar", "rician_mean_and_grad", "rician_mean"]

_SERIES_LIMIT = 20.0
_SQRT_HALF_PI = math.sqrt(math.pi / 2.0)


@numba.njit(cache=True, inline="always")
def bessel_i01e(z):
    """``(I0(z) e^-z, I1(z) e^-z)`` for ``z >= 0``, evaluated together."""
    if z <= _SERIES_LIMIT:
        half = 0.5 * z
        q = half * half
        t0 = 1.0
        t1 = half
        s0 = t0
        s1 = t1
        k = 0
        while True:
            k += 1
            t0 *= q / (k * k)
            t1 *= q / (k * (k + 1))
            s0 += t0
            s1 += t1
            if t0 <= 1e-17 * s0:
                break
        e = math.exp(-z)
        return s0 * e, s1 * e
    inv8z = 1.0 / (8.0 * z)
    t0 = 1.0
    t1 = 1.0
    s0 = 1.0
    s1 = 1.0
    for k in range(1, 30):
        odd = (2.0 * k - 1.0) ** 2
        t0 *= -(0.0 - odd) * inv8z / k
        t1 *= -(4.0 - odd) * inv8z / k
        s0 += t0
        s1 += t1
        if abs(t0) < 1e-17 * s0 and abs(t1) < 1e-17 * abs(s1):
            break
    c = 1.0 / math.sqrt(2.0 * math.pi * z)
    return s0 * c, s1 * c


@numba.njit(cache=True)
def bessel_i0e(z):
    """Exponentially scaled modified Bessel function of order 0, ``I0(z) e^-|z|``."""
    return bessel_i01e(abs(z))[0]


@numba.njit(cache=True)
def bessel_i1e(z):
    """Exponentially scaled modified Bessel function of order 1, ``I1(z) e^-z`` (z >= 0)."""
    return bessel_i01e(z)[1]


@numba.njit(cache=True, inline="always")
def rician_mean_scalar(a, sigma):
    """Mean of a Rician magnitude with underlying amplitude ``a`` and noise ``sigma``.

    ``E[M] = sigma sqrt(pi/2) [(1 + 2z) I0e(z) + 2z I1e(z)]`` with
    ``z = a^2 / (4 sigma^2)``: the first moment of the Rice distribution
    (Rice, Bell Syst Tech J 1944;23:282; Gudbjartsson & Patz, MRM 1995;34:910),
    written with scaled Bessel functions. Returns ``|a|`` when ``sigma == 0``.
    """
    return rician_mean_and_grad(a, sigma)[0]


@numba.njit(cache=True, inline="always")
def rician_mean_and_grad(a, sigma):
    """Rician mean (see :func:`rician_mean_scalar`) and its derivative in ``a``.

    With ``f(z) = (1 + 2z) I0e(z) + 2z I1e(z)`` one finds ``f'(z) = I0e(z) + I1e(z)``
    (from ``I0' = I1`` and ``I1' = I0 - I1/z``), hence
    ``dE[M]/da = sqrt(pi/2) a / (2 sigma) [I0e(z) + I1e(z)]``.
    """
    if sigma <= 0.0:
        return abs(a), (1.0 if a >= 0.0 else -1.0)
    z = a * a / (4.0 * sigma * sigma)
    i0, i1 = bessel_i01e(z)
    mean = sigma * _SQRT_HALF_PI * ((1.0 + 2.0 * z) * i0 + 2.0 * z * i1)
    grad = _SQRT_HALF_PI * a / (2.0 * sigma) * (i0 + i1)
    return mean, grad


@numba.vectorize(["float64(float64, float64)"], cache=True)
def _rician_mean_ufunc(a, sigma):
    return rician_mean_scalar(a, sigma)


def rician_mean(amplitude, sigma) -> np.ndarray:
    """Vectorised Rician mean (see :func:`rician_mean_scalar`), float64 arrays."""
    return _rician_mean_ufunc(np.asarray(amplitude, np.float64), np.asarray(sigma, np.float64))
