"""19F cell quantification against a reference of known fluorine content.

Cells labelled with a perfluorocarbon carry ``F_c`` fluorine atoms each
(measured on the labelled cells, e.g. by 19F NMR of a cell pellet). A
reference of known fluorine content imaged in the same acquisition turns
19F signal into fluorine atoms, and those into cells (Ahrens et al., Nat
Biotechnol 2005;23:983; Srinivas et al., Magn Reson Med 2007;58:725)::

    cells per voxel = A / A_ref · F_ref / F_c

with ``A`` the noise-corrected 19F amplitude of a voxel, ``A_ref`` that of a
reference voxel and ``F_ref`` the fluorine atoms in one reference voxel. This
assumes the signal is proportional to the number of 19F spins with the same
proportionality in the reference and in the labelled cells: same
acquisition and voxel size, uniform coil sensitivity, and relaxation effects
that are the same or negligible (long TR, short TE). The result is an
estimate of labelled cells, not living cells (label in macrophages that
engulfed dead cells counts too).

Magnitude images are biased upward by noise at low SNR, where most 19F
voxels are: a voxel with no fluorine shows a Rayleigh-distributed magnitude
of mean ``σ√(π/2)`` (Gudbjartsson & Patz, Magn Reson Med 1995;34:910). The
amplitude is therefore corrected before quantification
(:func:`noise_floor_correct`), and voxels whose corrected SNR ``A/σ`` is below
``snr_threshold`` are reported as below detection and left out of the ROI
total.

For scale (project reference numbers, shared/data/MANIFEST.md): preclinical
19F cell tracking reaches a minimum detectable 10³–10⁵ cells per voxel, while
clinical dendritic-cell tracking needs more than ~1×10⁶ cells to detect them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from ..core.errors import ValidationError
from .iron import _jsonable, _positive_finite, _roi

__all__ = [
    "AVOGADRO_PER_MOL",
    "DEFAULT_SNR_THRESHOLD",
    "NOISE_CORRECTIONS",
    "fluorine_atoms",
    "noise_floor_correct",
    "FluorineCells",
    "fluorine_cells",
]

#: Avogadro constant, mol⁻¹ (exact by definition of the SI since 2019; BIPM,
#: The International System of Units, 9th ed., 2019).
AVOGADRO_PER_MOL = 6.02214076e23

#: Default detection threshold on the noise-corrected SNR ``A/σ``. With the
#: default second-moment correction a voxel with no fluorine passes it only
#: when ``M² ≥ (3.5² + 2) σ²``, with probability ``exp(-7.125) = 8.0e-4`` per
#: voxel (Rayleigh tail of the background magnitude; Gudbjartsson & Patz,
#: Magn Reson Med 1995;34:910), i.e. about one false voxel per 1250 noise
#: voxels. Each result reports the exact false-positive probability of the
#: threshold and correction used; choose the threshold for your ROI size.
DEFAULT_SNR_THRESHOLD = 3.5

#: Names of the noise-floor corrections of :func:`noise_floor_correct`.
NOISE_CORRECTIONS = ("second_moment", "rician_mean", "none")

#: 1 mmol/L in 1 mm³ is 1e-9 mol.
_MOL_PER_MM_MM3 = 1e-9


def fluorine_atoms(concentration_mM, *, volume_mm3, fluorine_per_molecule) -> float:
    """Fluorine atoms in a volume of a reference solution.

    ``N_F = c · V · 1e-9 · N_A · n_F`` with c in mmol/L, V in mm³ (1 mM in
    1 mm³ is 1e-9 mol) and ``n_F`` fluorine atoms per molecule (e.g. 3 for
    trifluoroacetic acid, 20 for perfluoro-15-crown-5 ether).

    Parameters
    ----------
    concentration_mM : float
        Molar concentration of the fluorinated compound, mmol/L.
    volume_mm3 : float
        Volume, mm³ (one voxel's volume for fluorine atoms per voxel).
    fluorine_per_molecule : int
        19F atoms per molecule.

    Returns
    -------
    float
        Number of fluorine atoms.
    """
    c = _positive_finite(concentration_mM, "concentration_mM")
    v = _positive_finite(volume_mm3, "volume_mm3")
    n_f = _positive_finite(fluorine_per_molecule, "fluorine_per_molecule")
    return c * v * _MOL_PER_MM_MM3 * AVOGADRO_PER_MOL * n_f


def _check_sigma(noise_sigma) -> float:
    try:
        sigma = float(noise_sigma)
    except (TypeError, ValueError):
        raise ValidationError(f"noise_sigma must be a number >= 0, got {noise_sigma!r}") from None
    if not math.isfinite(sigma) or sigma < 0:
        raise ValidationError(f"noise_sigma must be a finite number >= 0, got {noise_sigma!r}")
    return sigma


def _check_channels(n_channels, method) -> int:
    try:
        ok = (not isinstance(n_channels, bool) and int(n_channels) == n_channels
              and n_channels >= 1)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValidationError(f"n_channels must be a positive integer, got {n_channels!r}")
    if method == "rician_mean" and n_channels != 1:
        raise ValidationError(
            "noise_correction='rician_mean' is for single-channel (Rician) magnitude; "
            "use 'second_moment' with n_channels for a sum-of-squares coil combination"
        )
    return int(n_channels)


def _invert_rician_mean(m: np.ndarray, sigma: float) -> np.ndarray:
    """Amplitude A with E[M | A, σ] = m (0 where m ≤ σ√(π/2)), by bisection on [0, m]."""
    # Imported here: only this correction needs the numba Rician mean.
    from ..fitting.special import rician_mean

    m = np.asarray(m, dtype=np.float64)
    if sigma == 0:
        return m.copy()
    lo = np.zeros_like(m)
    hi = m.copy()  # E[M|A] >= A, so the root lies in [0, m]
    sig = np.full_like(m, sigma)
    for _ in range(60):  # halves the bracket 60 times: below 1e-18 of m
        mid = 0.5 * (lo + hi)
        above = rician_mean(mid, sig) > m
        hi = np.where(above, mid, hi)
        lo = np.where(above, lo, mid)
    return np.where(m <= sigma * math.sqrt(math.pi / 2.0), 0.0, 0.5 * (lo + hi))


def noise_floor_correct(magnitude, *, noise_sigma, method: str = "second_moment",
                        n_channels: int = 1) -> np.ndarray:
    """Remove the noise floor from magnitude values: the underlying amplitude A.

    Three methods:

    ``second_moment`` (default)
        ``A = sqrt(max(M² − 2Lσ², 0))``, from ``E[M²] = A² + 2Lσ²``
        (Gudbjartsson & Patz, Magn Reson Med 1995;34:910, for one channel;
        Constantinides et al., Magn Reson Med 1997;38:852, for a
        sum-of-squares combination of L channels). Unbiased for A², simple,
        and what the detection threshold is defined on.
    ``rician_mean``
        The exact inversion of the Rician first moment: the A whose expected
        magnitude ``E[M | A, σ]`` (:func:`oncomri.fitting.special.rician_mean`)
        equals M; 0 where M ≤ σ√(π/2), the mean of pure noise. Single channel
        only.
    ``none``
        ``A = M``.

    Parameters
    ----------
    magnitude : array_like
        Magnitude values (a.u.), >= 0.
    noise_sigma : float
        Standard deviation σ of the Gaussian noise in the real and imaginary
        channels (same units as the signal), not the SD of the background
        magnitude (which is 0.655 σ for one channel). Estimate it from air with
        :func:`oncomri.models.noise.estimate_noise_sigma`.
    method : str
        One of :data:`NOISE_CORRECTIONS`.
    n_channels : int
        Receive channels in a sum-of-squares combination (1 for Rician data).

    Returns
    -------
    ndarray of float64
        Corrected amplitude, same shape as ``magnitude``.
    """
    if method not in NOISE_CORRECTIONS:
        raise ValidationError(
            f"noise correction must be one of {', '.join(NOISE_CORRECTIONS)}, got {method!r}"
        )
    sigma = _check_sigma(noise_sigma)
    n_ch = _check_channels(n_channels, method)
    try:
        m = np.asarray(magnitude, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValidationError("magnitude must be numeric") from None
    if not np.all(np.isfinite(m)):
        raise ValidationError("magnitude has non-finite values; mask them out")
    if np.any(m < 0):
        raise ValidationError("magnitude has negative values; give magnitude (not real or phase) images")
    if method == "none":
        return m.copy()
    if method == "second_moment":
        return np.sqrt(np.maximum(m * m - 2.0 * n_ch * sigma * sigma, 0.0))
    return _invert_rician_mean(m, sigma)


def _magnitude_at_threshold(k: float, sigma: float, method: str, n_ch: int) -> float:
    """The measured magnitude at which the corrected amplitude equals k·σ."""
    if method == "none":
        return k * sigma
    if method == "second_moment":
        return math.sqrt(k * k + 2.0 * n_ch) * sigma
    from ..fitting.special import rician_mean

    return float(rician_mean(k * sigma, sigma))


def _false_positive_probability(k: float, sigma: float, method: str, n_ch: int) -> float:
    """P(noise-only voxel passes the threshold): M²/σ² ~ χ² with 2L degrees of freedom."""
    if sigma == 0:
        return 0.0
    m = _magnitude_at_threshold(k, sigma, method, n_ch)
    return float(stats.chi2.sf((m / sigma) ** 2, 2 * n_ch))


@dataclass(frozen=True, eq=False)
class FluorineCells:
    """19F cell quantification of an ROI.

    Attributes
    ----------
    cells_per_voxel : ndarray
        Cells in each voxel from its corrected amplitude (NaN outside the
        ROI); computed for every ROI voxel, detected or not.
    detected : ndarray of bool
        ROI voxels at or above the SNR threshold.
    total_cells : float
        Sum of ``cells_per_voxel`` over detected ROI voxels.
    fluorine_atoms_detected : float
        Fluorine atoms in detected ROI voxels.
    n_voxels, n_detected : int
        ROI voxels, detected ROI voxels.
    fluorine_atoms_per_signal : float
        ``F_ref / A_ref``: fluorine atoms per unit of corrected signal.
    reference_amplitude : float
        Noise-corrected mean reference signal, a.u.
    min_detectable_fluorine_atoms_per_voxel, min_detectable_cells_per_voxel : float
        ``snr_threshold · σ`` converted to atoms and cells.
    fluorine_per_cell, noise_sigma, snr_threshold : float
    false_positive_probability : float
        Chance that a voxel without fluorine is counted as detected.
    noise_correction : str
    n_channels : int
    voxel_volume_mm3 : float or None
        When given, ``as_dict`` also has the ROI and detected volumes.
    """

    cells_per_voxel: np.ndarray
    detected: np.ndarray
    total_cells: float
    fluorine_atoms_detected: float
    n_voxels: int
    n_detected: int
    fluorine_atoms_per_signal: float
    reference_amplitude: float
    min_detectable_fluorine_atoms_per_voxel: float
    min_detectable_cells_per_voxel: float
    fluorine_per_cell: float
    noise_sigma: float
    snr_threshold: float
    false_positive_probability: float
    noise_correction: str
    n_channels: int
    voxel_volume_mm3: float | None = None

    def as_dict(self) -> dict:
        """Summary as plain JSON-able values (no maps); units in the key names."""
        out = {
            "total_cells": self.total_cells,
            "fluorine_atoms_detected": self.fluorine_atoms_detected,
            "n_voxels": self.n_voxels,
            "n_voxels_detected": self.n_detected,
            "fluorine_per_cell": self.fluorine_per_cell,
            "fluorine_atoms_per_signal_au": self.fluorine_atoms_per_signal,
            "reference_amplitude_au": self.reference_amplitude,
            "noise_sigma_au": self.noise_sigma,
            "snr_threshold": self.snr_threshold,
            "false_positive_probability_per_voxel": self.false_positive_probability,
            "min_detectable_fluorine_atoms_per_voxel": self.min_detectable_fluorine_atoms_per_voxel,
            "min_detectable_cells_per_voxel": self.min_detectable_cells_per_voxel,
            "noise_correction": self.noise_correction,
            "n_channels": self.n_channels,
        }
        if self.voxel_volume_mm3 is not None:
            out["voxel_volume_mm3"] = self.voxel_volume_mm3
            out["roi_volume_mm3"] = self.n_voxels * self.voxel_volume_mm3
            out["detected_volume_mm3"] = self.n_detected * self.voxel_volume_mm3
        return {k: _jsonable(v) for k, v in out.items()}


def fluorine_cells(signal, *, reference_signal, reference_fluorine_atoms, fluorine_per_cell,
                   noise_sigma, snr_threshold: float = DEFAULT_SNR_THRESHOLD, mask=None,
                   noise_correction: str = "second_moment", n_channels: int = 1,
                   voxel_volume_mm3=None) -> FluorineCells:
    """Labelled cells per voxel and per ROI from a 19F magnitude image.

    ``cells = A / A_ref · F_ref / F_c`` per voxel (Ahrens et al., Nat
    Biotechnol 2005;23:983; Srinivas et al., Magn Reson Med 2007;58:725),
    with A and A_ref the noise-floor-corrected amplitudes
    (:func:`noise_floor_correct`). A voxel is detected when ``A ≥
    snr_threshold · σ`` (and A > 0); the ROI total sums detected voxels only.
    The minimum detectable cells per voxel is ``snr_threshold · σ · F_ref /
    (A_ref · F_c)``.

    Example (hand arithmetic): a reference of 1e18 F atoms per voxel with
    signal 100 gives 1e16 atoms per signal unit; a voxel of signal 50
    (σ = 0) holds 5e17 atoms, i.e. 5e4 cells at 1e13 F per cell.

    Parameters
    ----------
    signal : array_like
        19F magnitude image (a.u.), >= 0.
    reference_signal : float or array_like
        Magnitude of the reference in the same acquisition: one value (the
        mean over reference voxels) or the reference voxels themselves; each
        is noise-corrected, then averaged.
    reference_fluorine_atoms : float
        Fluorine atoms in one reference voxel (see :func:`fluorine_atoms`:
        concentration × voxel volume × atoms per molecule × N_A).
    fluorine_per_cell : float
        Mean 19F atoms per labelled cell (from the labelling assay).
    noise_sigma : float
        Gaussian noise σ per channel, signal units (0 for noiseless data).
    snr_threshold : float
        Detection threshold on ``A/σ``; default 3.5, see
        :data:`DEFAULT_SNR_THRESHOLD`.
    mask : bool array_like, optional
        ROI; all voxels when omitted.
    noise_correction : str
        ``'second_moment'`` (default), ``'rician_mean'`` or ``'none'``.
    n_channels : int
        Channels of a sum-of-squares coil combination (1: Rician).
    voxel_volume_mm3 : float, optional
        Voxel volume, to report ROI and detected volumes.

    Returns
    -------
    FluorineCells
    """
    try:
        k = float(snr_threshold)
    except (TypeError, ValueError):
        k = math.nan
    if not math.isfinite(k) or k <= 0:
        raise ValidationError(f"snr_threshold must be a positive number, got {snr_threshold!r}")
    f_ref = _positive_finite(reference_fluorine_atoms, "reference_fluorine_atoms")
    f_cell = _positive_finite(fluorine_per_cell, "fluorine_per_cell")
    sigma = _check_sigma(noise_sigma)
    vox = None if voxel_volume_mm3 is None else _positive_finite(voxel_volume_mm3, "voxel_volume_mm3")
    if noise_correction not in NOISE_CORRECTIONS:
        raise ValidationError(
            f"noise_correction must be one of {', '.join(NOISE_CORRECTIONS)}, got {noise_correction!r}"
        )
    n_ch = _check_channels(n_channels, noise_correction)

    try:
        s = np.asarray(signal, dtype=np.float64)
        ref = np.asarray(reference_signal, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValidationError("signal and reference_signal must be numeric") from None
    if ref.size == 0:
        raise ValidationError("reference_signal is empty; give the reference's mean signal")
    roi = _roi(s, mask, "signal")
    corr = dict(noise_sigma=sigma, method=noise_correction, n_channels=n_ch)
    a_ref = float(np.mean(noise_floor_correct(ref, **corr)))
    if a_ref <= 0 or (sigma > 0 and a_ref < k * sigma):
        raise ValidationError(
            f"reference_signal (corrected {a_ref:g}) is below {k:g} sigma; the reference must be "
            "clearly above noise: check noise_sigma or image a stronger reference"
        )
    amp = noise_floor_correct(s[roi], **corr)

    atoms_per_signal = f_ref / a_ref
    cells_roi = amp * atoms_per_signal / f_cell
    detected_roi = (amp > 0) & (amp >= k * sigma)
    cells_map = np.full(s.shape, np.nan)
    cells_map[roi] = cells_roi
    detected = np.zeros(s.shape, dtype=bool)
    detected[roi] = detected_roi

    min_atoms = k * sigma * atoms_per_signal
    return FluorineCells(
        cells_per_voxel=cells_map,
        detected=detected,
        total_cells=float(cells_roi[detected_roi].sum()),
        fluorine_atoms_detected=float(amp[detected_roi].sum() * atoms_per_signal),
        n_voxels=int(roi.sum()),
        n_detected=int(detected_roi.sum()),
        fluorine_atoms_per_signal=atoms_per_signal,
        reference_amplitude=a_ref,
        min_detectable_fluorine_atoms_per_voxel=min_atoms,
        min_detectable_cells_per_voxel=min_atoms / f_cell,
        fluorine_per_cell=f_cell,
        noise_sigma=sigma,
        snr_threshold=k,
        false_positive_probability=_false_positive_probability(k, sigma, noise_correction, n_ch),
        noise_correction=noise_correction,
        n_channels=n_ch,
        voxel_volume_mm3=vox,
    )
