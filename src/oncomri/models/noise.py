"""Noise in magnitude images: the Rician mean and the estimation of sigma.

In a magnitude image reconstructed from one complex channel (or combined so
that the noise stays Gaussian in the real and imaginary parts), a voxel with
true amplitude ``A`` and noise standard deviation ``sigma`` per channel is
Rician distributed (Gudbjartsson & Patz, MRM 1995;34:910). Where ``A = 0``
(air) it is Rayleigh distributed, with ``E[M^2] = 2 sigma^2``.
"""

from __future__ import annotations

import math

import numpy as np

from ..core.errors import GeometryError, NoiseEstimateError, ValidationError
from ..fitting.special import rician_mean

__all__ = ["rician_mean", "estimate_noise_sigma", "resolve_noise_sigma"]

#: Fewest background samples we trust for a sigma estimate.
MIN_BACKGROUND_SAMPLES = 200


def _truncated_rayleigh_factor(k: float) -> float:
    """``E[M^2 | M < k sigma] / (2 sigma^2)`` for a Rayleigh variable."""
    e = math.exp(-0.5 * k * k)
    return 1.0 - 0.5 * k * k * e / (1.0 - e)


def estimate_noise_sigma(data, *, background=None, cutoff: float = 2.5,
                         max_iter: int = 500) -> float:
    """Estimate the Gaussian noise sigma of a magnitude series.

    Two ways, both maximum-likelihood for Rayleigh-distributed background:

    - ``background`` given (a boolean mask of air voxels, data.shape[:-1] or
      data.shape): ``sigma = sqrt(mean(M^2) / 2)`` over those samples of all
      measurements (Sijbers et al., Magn Reson Imaging 1998;16:87).
    - automatically, from the first measurement (the strongest, so tissue
      and air separate best): the samples that are below
      ``cutoff * sigma`` are treated as a Rayleigh distribution truncated at
      that point, whose second moment is
      ``E[M^2 | M < k sigma] = 2 sigma^2 (1 - (k^2/2) e^(-k^2/2) / (1 - e^(-k^2/2)))``;
      sigma is the *lowest* fixed point of that relation. The iteration starts
      far below any plausible sigma (where only the 200 smallest non-zero
      samples lie below the cutoff); from below, each step multiplies the estimate by about
      ``k / (2 sqrt(f(k)))`` (1.35 for k = 2.5) until it settles on the
      background's sigma, before tissue values enter the window. Starting
      higher can end on a spurious fixed point inside tissue when the field
      of view holds little air. (The idea of fitting only the low part of
      the histogram follows Sijbers et al., Phys Med Biol 2007;52:1335.)
      This needs some air in the field of view (a few hundred voxels), and
      the result is checked for the shape of a truncated Rayleigh
      distribution; exact zeros (masked or zero-filled background) are ignored.

    Parameters
    ----------
    data : ndarray (..., n_meas)
        Magnitude series, any float or integer dtype.
    background : bool ndarray, optional
    cutoff : float
        Truncation point in units of sigma (automatic mode).
    max_iter : int

    Returns
    -------
    float
        sigma in the units of the signal.

    Raises
    ------
    NoiseEstimateError
        Too few background samples; pass the noise sigma explicitly.
    """
    data = np.asanyarray(data)
    if background is not None:
        bg = np.asarray(background, dtype=bool)
        if bg.shape == data.shape[:-1]:
            samples = data[bg]
        elif bg.shape == data.shape:
            samples = data[bg]
        else:
            raise GeometryError(
                f"noise background mask has shape {bg.shape}; it must match the "
                f"image's spatial shape {data.shape[:-1]}"
            )
        samples = np.asarray(samples, dtype=np.float64).ravel()
        samples = samples[np.isfinite(samples)]
        if samples.size < MIN_BACKGROUND_SAMPLES:
            raise NoiseEstimateError(
                f"noise background mask holds {samples.size} samples, fewer than "
                f"{MIN_BACKGROUND_SAMPLES}; draw a larger air region or give the noise sigma"
            )
        return float(np.sqrt(np.mean(samples * samples) / 2.0))

    # Subsample very large series: 2 million samples pin sigma to < 0.1 %.
    flat = data[..., 0].reshape(-1) if data.ndim > 1 else data.reshape(-1)
    step = max(1, flat.size // 2_000_000)
    samples = np.asarray(flat[::step], dtype=np.float64)
    samples = samples[np.isfinite(samples) & (samples > 0)]
    if samples.size < MIN_BACKGROUND_SAMPLES:
        raise NoiseEstimateError(
            "cannot estimate the noise sigma: too few non-zero samples; give it explicitly"
        )
    if np.all(samples == np.round(samples)):
        # Integer-valued images (e.g. int16 DICOM magnitude) quantise the
        # Rayleigh background to a few levels when sigma is a few units; spread
        # each sample uniformly over its quantisation bin (fixed seed, so the
        # estimate is reproducible) so the low tail is continuous again.
        rng = np.random.default_rng(0)
        samples = np.abs(samples + rng.uniform(-0.5, 0.5, samples.size))
    factor = _truncated_rayleigh_factor(cutoff)
    # start where the window below the cutoff holds MIN_BACKGROUND_SAMPLES samples
    lowest = np.partition(samples, MIN_BACKGROUND_SAMPLES - 1)[MIN_BACKGROUND_SAMPLES - 1]
    sigma = float(lowest) / cutoff
    n_below = 0
    for _ in range(max_iter):
        below = samples[samples <= cutoff * sigma]
        n_below = below.size
        if n_below < MIN_BACKGROUND_SAMPLES:
            break
        new = math.sqrt(np.mean(below * below) / (2.0 * factor))
        if abs(new - sigma) <= 1e-6 * sigma:
            sigma = new
            break
        sigma = new
    if n_below < MIN_BACKGROUND_SAMPLES or not np.isfinite(sigma) or sigma <= 0:
        raise NoiseEstimateError(
            "cannot estimate the noise sigma: the image has too little background "
            "(air); give the noise sigma explicitly or a background mask"
        )
    # Shape check: a truncated Rayleigh puts (1 - e^-1/2) / (1 - e^-k^2/2) of its
    # window below sigma (41 % for k = 2.5); a window of tissue values does not.
    expected = (1.0 - math.exp(-0.5)) / (1.0 - math.exp(-0.5 * cutoff * cutoff))
    observed = np.count_nonzero(below <= sigma) / n_below
    if not 0.6 * expected <= observed <= 1.4 * expected:
        raise NoiseEstimateError(
            "cannot estimate the noise sigma: the darkest voxels do not look like "
            f"background noise ({100 * observed:.0f} % of them below sigma, "
            f"{100 * expected:.0f} % expected); give the noise sigma or a background mask"
        )
    return sigma


def resolve_noise_sigma(data, noise_sigma, *, background=None, measurement: int = 0):
    """The noise sigma a noise-aware fit uses: given, or estimated.

    ``noise_sigma`` is a number, a map of ``data.shape[:-1]`` (signal units),
    or ``"auto"``: estimated by :func:`estimate_noise_sigma` from the
    ``background`` air mask if given, else from the background of measurement
    ``measurement`` (the first echo, the lowest b-value ...), where the signal
    is strongest and air is easiest to tell from tissue.
    """
    data = np.asanyarray(data)
    if isinstance(noise_sigma, str):
        if noise_sigma != "auto":
            raise ValidationError(
                f"noise_sigma must be a number, a map or 'auto', got {noise_sigma!r}")
        if background is not None:
            return estimate_noise_sigma(data, background=background)
        return estimate_noise_sigma(data[..., measurement:measurement + 1])
    sigma = np.asarray(noise_sigma, dtype=np.float64)
    if sigma.ndim and sigma.shape != data.shape[:-1]:
        raise ValidationError(
            f"noise_sigma map has shape {sigma.shape}; it must match the spatial shape "
            f"{data.shape[:-1]}")
    if not np.all(np.isfinite(sigma)) or np.any(sigma < 0):
        raise ValidationError("noise_sigma must be finite and non-negative")
    return float(sigma) if sigma.ndim == 0 else sigma
