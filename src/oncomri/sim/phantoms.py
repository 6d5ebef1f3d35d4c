"""Digital phantoms with known maps for multi-echo relaxometry.

Signals are mono-exponential, ``S(TE) = S0 exp(-TE / T)``, and noise is added
to the real and imaginary channels before taking the magnitude, so the
magnitude is Rician (Gudbjartsson & Patz, MRM 1995;34:910). SNR is defined at
TE = 0: ``sigma = S0 / snr``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.errors import ValidationError
from ..core.protocols import MultiEchoProtocol

__all__ = [
    "add_rician_noise",
    "decay_series",
    "RelaxometryPhantom",
    "relaxometry_phantom",
    "DEFAULT_T2STAR_VALUES_S",
]

#: T2* values of the default phantom, in s: from iron-laden deposits (2 ms)
#: to fluid-like tissue (100 ms).
DEFAULT_T2STAR_VALUES_S = (0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1)


def add_rician_noise(signal, sigma, *, rng=None, dtype=np.float32) -> np.ndarray:
    """Magnitude of ``signal + N(0, sigma) + i N(0, sigma)`` (Rician magnitude)."""
    rng = np.random.default_rng(rng)
    signal = np.asarray(signal, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    real = signal + sigma * rng.standard_normal(signal.shape)
    imag = sigma * rng.standard_normal(signal.shape)
    return np.hypot(real, imag).astype(dtype)


def decay_series(echo_times, s0, relaxation_time, *, sigma=0.0, rng=None,
                 dtype=np.float32) -> np.ndarray:
    """A mono-exponential multi-echo series for maps of S0 and T (s).

    Returns ``s0.shape + (n_echoes,)``; Rician noise when ``sigma > 0``,
    otherwise the noiseless decay.
    """
    te = np.asarray(echo_times, dtype=np.float64)
    s0 = np.asarray(s0, dtype=np.float64)[..., None]
    t = np.asarray(relaxation_time, dtype=np.float64)[..., None]
    with np.errstate(divide="ignore"):
        clean = s0 * np.exp(-te / t)
    if np.any(np.asarray(sigma) > 0):
        return add_rician_noise(clean, np.asarray(sigma, np.float64)[..., None]
                                if np.ndim(sigma) else sigma, rng=rng, dtype=dtype)
    return clean.astype(dtype)


@dataclass
class RelaxometryPhantom:
    """A multi-echo phantom and its truth.

    Attributes
    ----------
    data : ndarray (X, Y, Z, n_echoes), float32 magnitude
    protocol : MultiEchoProtocol
    relaxation_time : ndarray (X, Y, Z), s (NaN in the background)
    s0 : ndarray (X, Y, Z)
    mask : bool ndarray (X, Y, Z), True in the object
    sigma : float, noise sigma (S0 / snr)
    labels : ndarray (X, Y, Z) int, index into ``values`` (-1 background)
    values : tuple of the T values (s) of the compartments
    """

    data: np.ndarray
    protocol: MultiEchoProtocol
    relaxation_time: np.ndarray
    s0: np.ndarray
    mask: np.ndarray
    sigma: float
    labels: np.ndarray
    values: tuple = field(default_factory=tuple)
    affine: np.ndarray = field(default_factory=lambda: np.diag([1.0, 1.0, 1.0, 1.0]))


def relaxometry_phantom(*, shape=(64, 64, 16), echo_times=None, values=DEFAULT_T2STAR_VALUES_S,
                        s0: float = 1000.0, snr: float = 50.0, background_fraction: float = 0.25,
                        voxel_size_mm=(1.0, 1.0, 1.0), rng=0) -> RelaxometryPhantom:
    """A block phantom: bands of known T (T2* or T2) surrounded by air.

    The object fills the central ``1 - background_fraction`` of the first
    axis; along the second axis it is split into equal bands, one per value
    in ``values`` (in seconds), so every value gets the same number of voxels.
    The air rows carry pure noise, so the noise sigma can be estimated from
    the background as on a real scan.

    Parameters
    ----------
    shape : tuple of 3 ints
    echo_times : array_like, s (default: 12 echoes evenly spaced 1–24 ms)
    values : sequence of float, s
    s0 : float, signal at TE = 0
    snr : float, S0 / sigma (inf for noiseless)
    background_fraction : float, share of the first axis left as air
    voxel_size_mm : 3 floats
    rng : seed or Generator
    """
    if len(shape) != 3 or min(shape) < 1:
        raise ValidationError(f"shape must be 3 positive ints, got {shape}")
    if echo_times is None:
        echo_times = np.linspace(0.001, 0.024, 12)
    protocol = MultiEchoProtocol(echo_times)
    values = tuple(float(v) for v in values)
    nx, ny, nz = shape
    if ny < len(values):
        raise ValidationError(f"shape[1]={ny} is smaller than the {len(values)} values")
    margin = int(round(nx * background_fraction / 2))
    labels = np.full(shape, -1, dtype=np.int16)
    band = np.minimum(np.arange(ny) * len(values) // ny, len(values) - 1)
    labels[margin:nx - margin, :, :] = band[None, :, None]
    mask = labels >= 0
    t = np.where(mask, np.asarray(values)[np.maximum(labels, 0)], np.nan)
    s0_map = np.where(mask, s0, 0.0)
    sigma = s0 / snr if np.isfinite(snr) and snr > 0 else 0.0
    with np.errstate(invalid="ignore"):
        data = decay_series(protocol.echo_times, s0_map, np.where(mask, t, 1.0),
                            sigma=sigma, rng=rng)
    affine = np.diag(list(voxel_size_mm) + [1.0])
    return RelaxometryPhantom(data=data, protocol=protocol, relaxation_time=t, s0=s0_map,
                              mask=mask, sigma=float(sigma), labels=labels, values=values,
                              affine=affine)
