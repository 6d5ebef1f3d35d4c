"""Detection limit of iron-labelled cells by R2* mapping.

How many labelled cells must a voxel hold for the iron to raise R2* by ``k``
noise standard deviations? The chain, every link returned with its unit:

1. ``σ(R2*)`` (1/s): the Cramér–Rao lower bound (CRLB) of a mono-exponential
   fit ``S(TE) = S0 exp(-R2* TE)`` at the given echo times and SNR
   (:func:`r2star_crlb`).
2. ``ΔR2*_min = k σ(R2*)`` for a measurement compared with a known baseline,
   or ``k √2 σ(R2*)`` for a pre/post difference of two independent
   measurements with the same precision (1/s).
3. ``[Fe]_min = ΔR2*_min / r2*`` (mmol/L), the linear relaxivity model.
4. Iron mass per voxel ``[Fe]_min · V`` (pg) and cells per voxel
   ``= mass / iron per cell``.

Fisher information. With independent Gaussian noise of SD ``σ`` on every
echo, ``e_i = exp(-R2* TE_i)`` and ``SNR = S0 / σ``, the information about
``θ = (S0, R2*)`` is ``I = Σ_i g_i g_iᵀ / σ²`` with
``g_i = ∂S_i/∂θ = (e_i, -S0 TE_i e_i)``::

    I = 1/σ² [[ Σ e_i²,           -S0 Σ TE_i e_i²   ],
              [ -S0 Σ TE_i e_i²,   S0² Σ TE_i² e_i² ]]

and the bound on the variance of any unbiased R2* estimate is
``(I⁻¹)₂₂``::

    σ²(R2*) >= Σ e_i² / (SNR² D),   D = Σ e_i² Σ TE_i² e_i² - (Σ TE_i e_i²)²

For two echoes ``D = e_1² e_2² (TE_2 - TE_1)²`` and the bound reduces to
``σ(R2*) = sqrt(1/e_1² + 1/e_2²) / (SNR (TE_2 - TE_1))``, the error
propagation of ``R2* = ln(S_1/S_2) / ΔTE``. The CRLB for relaxometry is
derived by Jones et al. (J Magn Reson B 1996;113:25) for T2 sampling design;
the general theory is in Kay, Fundamentals of Statistical Signal Processing:
Estimation Theory (Prentice Hall 1993, ch. 3) and, for MR quantitation,
Cavassila et al. (NMR Biomed 2001;14:278). Nonlinear least squares attains
the bound at high SNR; magnitude (Rician) data are close to Gaussian where
every echo has SNR above ~3 (Gudbjartsson & Patz, MRM 1995;34:910) and the
bound is optimistic below that.

Assumptions and limits. ΔR2* is taken as linear in the mean iron
concentration of the voxel, which holds when the label is spread over many
cells per voxel; a few heavily labelled cells act as discrete dipoles
(single-cell detection works by blooming, not by a mean ΔR2*). The r2* of
cell-internalised iron oxide differs from that of free particles (Kuhlpeter
et al., Radiology 2007;245:449): pass the value for labelled cells where
known. SNR is the SNR at TE = 0 of the voxel size given; at a fixed
acquisition it scales with voxel volume, so keep the two consistent.
The detection criterion ``k`` defaults to 5, the Rose criterion for
detecting an object against noise (Rose, J Opt Soc Am 1948;38:196).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize

from ..core.checks import positive_float as _positive
from ..core.errors import ValidationError
from ..core.protocols import MultiEchoProtocol
from .kinetics import IRON_MOLAR_MASS_G_PER_MOL

__all__ = [
    "ROSE_CRITERION",
    "mono_exponential_fisher_information",
    "r2star_crlb",
    "DetectionLimit",
    "detection_limit",
]

#: Rose criterion: an object is detectable at a contrast of ~5 noise SDs
#: (Rose, J Opt Soc Am 1948;38:196). The default ``k_sd``.
ROSE_CRITERION = 5.0

_DESIGNS = ("single", "difference", "difference_exact")


def _echo_times(echo_times_s) -> np.ndarray:
    return MultiEchoProtocol(echo_times_s, source="echo_times_s").echo_times


def mono_exponential_fisher_information(echo_times_s, *, s0, r2star_per_s, sigma) -> np.ndarray:
    """Fisher information of ``(S0, R2*)`` for ``S = S0 exp(-R2* TE)`` with Gaussian noise.

    ``I = 1/σ² Σ_i g_i g_iᵀ``, ``g_i = (e_i, -S0 TE_i e_i)``, ``e_i = exp(-R2* TE_i)``
    (see :mod:`oncomri.sim.detection`; Kay 1993, ch. 3).

    Parameters
    ----------
    echo_times_s : array_like, s (at least two, increasing)
    s0 : float, signal at TE = 0 (signal units)
    r2star_per_s : float, 1/s (>= 0)
    sigma : float, noise SD per echo (signal units, > 0)

    Returns
    -------
    ndarray (2, 2)
        Index 0 is S0, index 1 is R2*: ``I[0, 0]`` in 1/signal²,
        ``I[0, 1]`` in s/signal, ``I[1, 1]`` in s².
    """
    te = _echo_times(echo_times_s)
    s0 = _positive("s0", s0, "(signal units)")
    sigma = _positive("sigma", sigma, "(signal units)")
    r = float(r2star_per_s)
    if not (math.isfinite(r) and r >= 0):
        raise ValidationError(f"r2star_per_s must be finite and >= 0 1/s, got {r:g}")
    e = np.exp(-r * te)
    g = np.stack([e, -s0 * te * e])          # (2, n_echoes)
    return g @ g.T / sigma**2


def r2star_crlb(echo_times_s, *, r2star_per_s, snr):
    """Cramér–Rao lower bound on the SD of R2* (1/s) from a mono-exponential fit.

    ``σ(R2*) = (1/SNR) sqrt(Σ e_i² / D)`` with
    ``D = Σ e_i² Σ TE_i² e_i² - (Σ TE_i e_i²)²`` and ``e_i = exp(-R2* TE_i)``
    (derivation in :mod:`oncomri.sim.detection`; Jones et al., J Magn Reson B
    1996;113:25; Cavassila et al., NMR Biomed 2001;14:278). S0 is estimated
    jointly (it is a nuisance parameter); the bound does not depend on S0
    itself, only on ``SNR = S0 / σ``.

    Parameters
    ----------
    echo_times_s : array_like
        Echo times in s (at least two, increasing).
    r2star_per_s : float or ndarray
        True R2* in 1/s (>= 0); arrays broadcast with ``snr``.
    snr : float or ndarray
        SNR at TE = 0, ``S0 / σ`` with σ the noise SD of each echo (> 0).

    Returns
    -------
    float or ndarray, 1/s
    """
    te = _echo_times(echo_times_s)
    r = np.asarray(r2star_per_s, dtype=np.float64)
    snr_a = np.asarray(snr, dtype=np.float64)
    if not np.all(np.isfinite(r)) or np.any(r < 0):
        raise ValidationError("r2star_per_s must be finite and >= 0 (1/s)")
    if not np.all(np.isfinite(snr_a)) or np.any(snr_a <= 0):
        raise ValidationError("snr must be finite and > 0 (S0 / noise SD at TE = 0)")
    # scale by exp(+R TE1) inside the sums to keep them representable at high R
    e2 = np.exp(-2.0 * r[..., None] * (te - te[0]))
    s_e = e2.sum(-1)
    s_te = (te * e2).sum(-1)
    s_tte = (te * te * e2).sum(-1)
    d = s_e * s_tte - s_te * s_te
    with np.errstate(divide="ignore", over="ignore"):
        # d = 0 once all but one echo have decayed away: no information, σ = inf
        out = np.exp(r * te[0]) * np.sqrt(s_e / d) / snr_a
    return float(out) if out.ndim == 0 else out


@dataclass(frozen=True)
class DetectionLimit:
    """The chain from noise to the number of labelled cells per voxel (units in the names).

    Attributes
    ----------
    voxel_size_mm : tuple of 3 floats
    voxel_volume_mm3 : float
    echo_times_s : tuple of floats
    snr : float, at TE = 0
    baseline_r2star_per_s : float, 1 / baseline T2*
    sigma_r2star_per_s : float, CRLB SD of R2* at the baseline
    sigma_r2star_post_per_s : float, CRLB SD of R2* at baseline + ΔR2*_min
    k_sd : float, the detection criterion in noise SDs
    design : str, 'single', 'difference' or 'difference_exact'
    delta_r2star_min_per_s : float, smallest detectable ΔR2*
    relaxivity_r2star_l_per_mmol_s : float
    iron_concentration_min_mmol_l : float
    iron_mass_per_voxel_pg : float
    iron_per_cell_pg : float
    cells_per_voxel : float
    cells_per_mm3 : float
    """

    voxel_size_mm: tuple
    voxel_volume_mm3: float
    echo_times_s: tuple
    snr: float
    baseline_r2star_per_s: float
    sigma_r2star_per_s: float
    sigma_r2star_post_per_s: float
    k_sd: float
    design: str
    delta_r2star_min_per_s: float
    relaxivity_r2star_l_per_mmol_s: float
    iron_concentration_min_mmol_l: float
    iron_mass_per_voxel_pg: float
    iron_per_cell_pg: float
    cells_per_voxel: float
    cells_per_mm3: float

    def as_dict(self) -> dict:
        """Plain JSON-able values (units in the key names)."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["voxel_size_mm"] = list(self.voxel_size_mm)
        out["echo_times_s"] = list(self.echo_times_s)
        return out


def _delta_exact(te, r0, sigma0, snr, k):
    """Smallest d > 0 with d = k sqrt(σ(R0)² + σ(R0 + d)²) (σ from the CRLB)."""
    def g(d):
        return d - k * math.hypot(sigma0, r2star_crlb(te, r2star_per_s=r0 + d, snr=snr))
    lo = 0.0
    hi = k * math.sqrt(2.0) * sigma0
    # σ grows without bound once the decay is gone by the first echo, so the
    # equation may have no root: stop when R TE1 exceeds 50.
    limit = 50.0 / te[0] if te[0] > 0 else 50.0 / (te[1] - te[0])
    while g(hi) < 0:
        lo, hi = hi, 2.0 * hi
        if r0 + hi > limit:
            raise ValidationError(
                f"no ΔR2* is detectable at k_sd={k:g} with snr={snr:g}: the post-label decay "
                "vanishes before the first echo; raise snr or shorten the echo times")
    return optimize.brentq(g, lo, hi, xtol=1e-12, rtol=1e-12)


def detection_limit(*, voxel_size_mm, echo_times_s, snr, iron_per_cell_pg,
                    relaxivity_r2star_l_per_mmol_s, baseline_t2star_s,
                    k_sd: float = ROSE_CRITERION, design: str = "difference") -> DetectionLimit:
    """Labelled cells per voxel needed for a ΔR2* of ``k_sd`` noise SDs.

    ``σ(R2*)`` from the Cramér–Rao bound (:func:`r2star_crlb`; Jones et al.,
    J Magn Reson B 1996;113:25) → ``ΔR2*_min`` → ``[Fe]_min = ΔR2*_min / r2*``
    → iron mass per voxel → cells per voxel. Derivation, assumptions and
    references in :mod:`oncomri.sim.detection`.

    Parameters
    ----------
    voxel_size_mm : float or 3 floats
        Voxel edge lengths in mm (one number: isotropic).
    echo_times_s : array_like
        Echo times in s (at least two, increasing).
    snr : float
        SNR at TE = 0 of a voxel of this size, ``S0 / σ`` (σ: noise SD per echo).
    iron_per_cell_pg : float
        Iron per labelled cell in pg Fe (e.g. the manifest's MPI reference
        loading of 0.555 pmol Fe/cell is 31 pg).
    relaxivity_r2star_l_per_mmol_s : float
        r2* in L·mmol⁻¹·s⁻¹ (s⁻¹·mM⁻¹ Fe) of the label as it sits in the
        tissue; free ferumoxytol in plasma at 37 °C: 64.4 (1.5 T), 55.7 (3 T)
        (Knobloch et al., Invest Radiol 2018).
    baseline_t2star_s : float
        T2* of the tissue without label, in s (e.g. normal liver at 1.5 T,
        R2* 28.7 s⁻¹: 0.035 s; Obrzut et al., Sci Rep 2020;10:17887).
    k_sd : float
        Detection criterion in noise SDs (default 5, the Rose criterion).
    design : {'difference', 'single', 'difference_exact'}
        ``'difference'`` (default): pre/post scans of the same voxel, two
        independent measurements with the baseline precision, so
        ``ΔR2*_min = k √2 σ(R0)``. ``'single'``: one scan against a baseline
        known without error, ``ΔR2*_min = k σ(R0)``. ``'difference_exact'``:
        as ``'difference'`` but with the post scan's own (larger) CRLB,
        ``ΔR2*_min = k sqrt(σ(R0)² + σ(R0 + ΔR2*_min)²)``, solved for ΔR2*_min.

    Returns
    -------
    DetectionLimit
        Every intermediate number with its unit.

    Notes
    -----
    At a fixed SNR the cells per voxel grow in proportion to the voxel
    volume (the same ``[Fe]_min`` fills a bigger voxel). When the SNR is
    itself proportional to the voxel volume (same scan, larger voxels),
    ``σ(R2*)`` and ``[Fe]_min`` fall as 1/volume and the cells per voxel
    stay the same, while the detectable cell *density* (cells/mm³) falls as
    1/volume.
    """
    if design not in _DESIGNS:
        raise ValidationError(f"design must be one of {', '.join(_DESIGNS)}, got {design!r}")
    try:
        vox = np.asarray(voxel_size_mm, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        vox = np.array([np.nan])
    if vox.size == 1:
        vox = np.repeat(vox, 3)
    if vox.size != 3 or not np.all(np.isfinite(vox)) or np.any(vox <= 0):
        raise ValidationError(
            f"voxel_size_mm must be one or three finite numbers > 0 mm, got {voxel_size_mm!r}")
    te = _echo_times(echo_times_s)
    snr = _positive("snr", snr, "(S0 / noise SD at TE = 0)")
    q = _positive("iron_per_cell_pg", iron_per_cell_pg, "pg Fe")
    r2s = _positive("relaxivity_r2star_l_per_mmol_s", relaxivity_r2star_l_per_mmol_s, "L/(mmol s)")
    t2s = _positive("baseline_t2star_s", baseline_t2star_s, "s")
    if t2s > 10.0:
        raise ValidationError(
            f"baseline_t2star_s={t2s:g} s is implausible for tissue; give T2* in seconds, not ms")
    k = _positive("k_sd", k_sd, "noise SDs")
    r0 = 1.0 / t2s
    sigma0 = r2star_crlb(te, r2star_per_s=r0, snr=snr)
    if design == "single":
        delta = k * sigma0
    elif design == "difference":
        delta = k * math.sqrt(2.0) * sigma0
    else:
        delta = _delta_exact(te, r0, sigma0, snr, k)
    sigma_post = r2star_crlb(te, r2star_per_s=r0 + delta, snr=snr)
    volume = float(np.prod(vox))
    conc = delta / r2s
    # m [pg] = c [mmol/L] · V·1e-6 [L] · 1e-3 [mol/mmol] · 55.845 [g/mol] · 1e12 [pg/g]
    mass = conc * volume * IRON_MOLAR_MASS_G_PER_MOL * 1e3
    cells = mass / q
    return DetectionLimit(
        voxel_size_mm=tuple(float(v) for v in vox), voxel_volume_mm3=volume,
        echo_times_s=tuple(float(t) for t in te), snr=snr, baseline_r2star_per_s=r0,
        sigma_r2star_per_s=float(sigma0), sigma_r2star_post_per_s=float(sigma_post),
        k_sd=k, design=design, delta_r2star_min_per_s=float(delta),
        relaxivity_r2star_l_per_mmol_s=r2s, iron_concentration_min_mmol_l=float(conc),
        iron_mass_per_voxel_pg=float(mass), iron_per_cell_pg=q, cells_per_voxel=float(cells),
        cells_per_mm3=float(cells / volume))
