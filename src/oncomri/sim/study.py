"""A synthetic longitudinal cell-therapy MRI study whose truth is known.

The reference design (oncomri issue 5): rats with liver tumours in three
arms (intra-arterial saline, intravenous NK cells, intra-arterial NK cells),
the NK cells labelled with ferumoxytol-based iron nanocomplexes, MRI at
baseline, 24 h, 48 h and 8 days: a 12-echo multi-gradient-echo (MGE) series
for R2* and a T2-weighted series for tumour volume.
:func:`simulate_study` builds every session's images in memory (no file I/O;
:func:`oncomri.study.demo.write_demo_study` writes them) together with the
true values of the biomarkers a study pipeline measures.

The chain from treatment to images, per subject:

1. **Delivery.** ``cells_injected`` labelled NK cells (``label_per_cell_pg``
   pg Fe each) are given; a subject-specific fraction reaches the tumour
   (log-normal around the arm's median: intra-arterial >> intravenous >
   control = 0, saline). Intra-arterial delivery puts cells into the
   tumour's feeding artery, so far more reach it than after intravenous
   injection, where most cells are trapped in the lungs first (the premise
   of transcatheter NK-cell delivery; typical values, not fitted to a study).
2. **Label kinetics.** :func:`oncomri.sim.simulate_label_kinetics` gives the
   iron left in the tumour (in live labelled cells plus host phagocytes)
   over time; the MRI sees all of it. NK cells are taken as non-dividing
   (``doubling_time_days=None``) with death 0.35/day, exocytosis 0.05/day,
   degradation 0.1/day, phagocyte uptake 0.5 and phagocyte clearance
   0.3/day (typical values; see :mod:`oncomri.sim.kinetics` for the model
   and its literature). Delivery and label kinetics start at treatment
   (t = 0); intravenous homing time is neglected.
3. **Iron → R2*.** The mean iron concentration in the tumour is the iron
   mass over the drawn tumour volume
   (:func:`oncomri.sim.iron_mass_to_concentration_mmol_l`), distributed
   with mild rim enhancement (``w = 0.75 + 0.5 r̂²``, ``r̂`` the normalised
   radius, rescaled to mean 1 over the tumour), and
   ``ΔR2* = r2* [Fe]`` (linear relaxivity model). r2* is ferumoxytol's in
   plasma at 37 °C from :data:`oncomri.quant.iron.RELAXIVITY_TABLE`
   (Knobloch et al., Invest Radiol 2018;53:257): the table stops at 3 T, and
   the 3 T value (55.7 s⁻¹mM⁻¹) is used at 7 T because superparamagnetic iron
   oxide is magnetically saturated above ~1 T, where r2* hardly depends on
   the field (60.4 at 1.5 T vs 57.0 at 3 T in saline in the same paper;
   static-dephasing regime, Yablonskiy & Haacke, MRM 1994;32:749). ΔR2 for
   the T2-weighted image uses the tabulated r2 (65.2 s⁻¹mM⁻¹) the same way.
4. **Tumour volume.** ``V(t) = V0 exp(g t - K ρ0/(ρ0 + ρ50) E(t))`` (t in
   days): the subject's exponential growth rate ``g`` and a saturating
   (Emax) kill term driven by the effector density ``ρ0 = N0 / V0``
   (labelled cells per mm³ of tumour at t = 0, the in-vivo effector:target
   ratio; ``ρ50`` = 7500 cells/mm³) and the live-effector exposure
   ``E(t) = ∫_0^{t-lag} N(s)/N0 ds`` (days; ``N`` from the kinetics model),
   which starts after a ``lag`` of 2 days (killed tumour takes days to be
   cleared). Because ``ρ0`` also sets the 24 h ΔR2*, the shrinkage at
   day 8 correlates with the 24 h ΔR2* within a treated arm. ``K``
   (median 1.04/day, log SD 0.15 between subjects) is calibrated so that
   the typical intra-arterial tumour shrinks by 40-60 % by day 8 while
   controls grow 2-2.5-fold (``g`` = 0.10 ± 0.015/day, a doubling time of
   ~7 days, typical of rat hepatoma models; ``V0`` log-normal around
   200 mm³, log SD 0.2). A phenomenological model, not fitted to a study.
5. **Images.** Tissues on the T2-weighted grid: air, body wall (muscle-like),
   liver and the tumour (an irregular ellipsoid: low-order spherical
   harmonics modulate its radius; its continuous volume is ``V(t)``
   exactly). MGE signals ``S0 exp(-TE R2*)`` per GRE voxel (see
   :class:`SyntheticSession`), T2-weighted ``PD exp(-TE_eff R2)``, a random
   receiver gain per session, and Rician noise
   (:func:`oncomri.sim.add_rician_noise`; Gudbjartsson & Patz, MRM
   1995;34:910).

Tissue values at 7 T (typical; marked so because they are representative
round numbers, not taken from one publication): liver R2* 70 s⁻¹ (T2* ≈
14 ms; subject mean SD 5 s⁻¹, plus a ±3 s⁻¹ gradient across the liver),
tumour R2* 45 s⁻¹ (subject SD 4 s⁻¹, session SD 1 s⁻¹, and a smooth spatial
texture of SD 4 s⁻¹: a sum of 8 random plane waves of 3-6 mm wavelength;
hepatomas have a lower R2* than liver), body wall 35 s⁻¹; T2 liver 25 ms,
tumour 45 ms, body wall 30 ms (the tumour is T2-hyperintense to liver, as
hepatomas are). The texture also keeps the median of the tumour's R2*
values off a tie of many equal values, where noise would bias it.

The MGE protocol: 12 echoes, TE1 = 1.5 ms, echo spacing 1.5 ms (last echo
18 ms), TR 100 ms, flip 20°, 7 T; typical of rodent liver MGE R2* mapping
at 7 T (short first echo and spacing to sample the fast liver decay), not
copied from one publication. The T2-weighted series: RARE-like, effective
TE 33 ms, TR 2.5 s.

Grids. The default GRE grid is 40 × 40 × 10 voxels over a 60 × 60 × 20 mm
field of view (1.5 × 1.5 × 2 mm); the T2-weighted grid has twice the
in-plane resolution (80 × 80 × 10, 0.75 × 0.75 × 2 mm) over the same field
of view. Coarser than a real 7 T protocol, on purpose: the voxel-wise
noise-aware R2* fit dominates a study run, and at 16 000 voxels × 12 echoes
per session the whole 80-session study writes and maps in well under a
minute on two cores, while a baseline tumour (~7 mm across) still covers
~50 GRE voxels. The field of view leaves air around the body, so the noise
can be estimated from the background. Orientation: axial; the array axes
run to the patient's left (-R), posterior (-A) and superior (+S), as in a
DICOM axial stack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Mapping

import numpy as np
import pandas as pd

from ..core.checks import positive_float
from ..core.errors import ValidationError
from ..quant.iron import relaxivity as _table_relaxivity
from .kinetics import iron_mass_to_concentration_mmol_l, simulate_label_kinetics
from .phantoms import add_rician_noise

if TYPE_CHECKING:  # the design types live in oncomri.study; imported lazily (no cycle)
    from ..study.design import StudyDesign

__all__ = [
    "ARMS",
    "ARM_ALLOCATION",
    "TIMEPOINTS",
    "DEFAULT_ECHO_TIMES_S",
    "DEFAULT_SHAPE",
    "DEFAULT_FOV_MM",
    "SMALL_STUDY_OPTIONS",
    "TRUTH_COLUMNS",
    "SyntheticSession",
    "SyntheticStudy",
    "simulate_study",
    "allocate_arms",
]

#: Arms (name, description), in study order.
ARMS: tuple[tuple[str, str], ...] = (
    ("control", "intra-arterial saline (no cells)"),
    ("iv_nk", "intravenous ferumoxytol-labelled NK cells"),
    ("ia_nk", "intra-arterial (hepatic artery) ferumoxytol-labelled NK cells"),
)

#: Relative arm sizes: 7/7/6 for 20 subjects.
ARM_ALLOCATION = (7, 7, 6)

#: Timepoints (name, seconds after treatment). Baseline is 1 h before treatment
#: (same day, before the catheter procedure); no label is present then.
TIMEPOINTS: tuple[tuple[str, float], ...] = (
    ("baseline", -3600.0),
    ("24h", 24 * 3600.0),
    ("48h", 48 * 3600.0),
    ("8d", 8 * 86400.0),
)

#: 12 echoes, TE1 1.5 ms, spacing 1.5 ms (s): typical rodent-liver MGE at 7 T.
DEFAULT_ECHO_TIMES_S = tuple(round(1.5e-3 * (k + 1), 6) for k in range(12))

#: GRE grid (X, Y, Z) and field of view (mm) of the full study; see the module docstring.
DEFAULT_SHAPE = (40, 40, 10)
DEFAULT_FOV_MM = (60.0, 60.0, 20.0)

#: Options for a small, quick study for tests: 6 subjects (2 per arm), a coarse grid.
SMALL_STUDY_OPTIONS = MappingProxyType({"n_subjects": 6, "shape": (32, 32, 8)})

#: Columns of the truth table (the tidy measurement table of the study engine).
TRUTH_COLUMNS = ("subject", "arm", "timepoint", "time_s", "biomarker", "value", "unit", "roi",
                 "map", "statistic", "method", "software_version")

_DAY_S = 86400.0
_FIELD_T = 7.0

# Tissue labels and their GRE S0, T2w proton density and T2 (s); R2* below (1/s).
_AIR, _BODY, _LIVER, _TUMOUR = 0, 1, 2, 3
_S0 = {_BODY: 800.0, _LIVER: 1000.0, _TUMOUR: 1050.0}
_PD = {_BODY: 700.0, _LIVER: 750.0, _TUMOUR: 850.0}
_T2_S = {_BODY: 0.030, _LIVER: 0.025, _TUMOUR: 0.045}
_BODY_R2STAR = 35.0
_LIVER_R2STAR = (70.0, 5.0)          # mean, between-subject SD (1/s)
_LIVER_GRADIENT = 3.0                # +- 1/s across the liver
_TUMOUR_R2STAR = (45.0, 4.0)         # mean, between-subject SD (1/s)
_TUMOUR_R2STAR_SESSION_SD = 1.0      # 1/s
_TUMOUR_TEXTURE = (4.0, 8, (3.0, 6.0))  # SD (1/s), number of plane waves, wavelengths (mm)
_T2W_TE_S = 0.033
_T2W_TR_S = 2.5
_MGE_TR_S = 0.100
_MGE_FLIP_DEG = 20.0

# Anatomy, mm in the field-of-view frame (u, v, w along the array axes, 0 at the centre).
_BODY_AXES = (27.0, 20.0)            # body semi-axes (a rat abdomen ~54 x 40 mm)
_LIVER_CENTRE = (-5.0, -3.0)
_LIVER_AXES = (19.0, 14.0)
_TUMOUR_JITTER_MM = (1.5, 1.5, 0.8)

# Biology (typical values; see the module docstring).
_V0 = (200.0, 0.20)                  # median tumour volume at t=0 (mm^3), log SD
_GROWTH = (0.10, 0.015)              # 1/day: mean, SD
_DELIVERY = {"control": 0.0, "iv_nk": 0.03, "ia_nk": 0.15}   # median fraction reaching the tumour
_DELIVERY_LOG_SD = 0.30
_KILL = (1.04, 0.15)                 # K_max, 1/day: median, log SD
_KILL_HALF_DENSITY = 7500.0          # rho_50, cells/mm^3
_KILL_LAG_D = 2.0
_KINETICS = {"doubling_time_days": None, "exocytosis_rate_per_day": 0.05,
             "degradation_rate_per_day": 0.10, "death_rate_per_day": 0.35,
             "phagocyte_clearance_rate_per_day": 0.30, "phagocyte_uptake_fraction": 0.5}
_GAIN = (0.8, 1.25)                  # receiver gain range per session


@dataclass(frozen=True, eq=False)
class SyntheticSession:
    """The images of one session and their noiseless truth.

    Attributes
    ----------
    subject, timepoint : str
    megre : ndarray (X, Y, Z, n_echoes), float32
        Multi-echo GRE magnitude, Rician noise, echoes last.
    megre_affine : ndarray (4, 4)
        GRE voxel -> RAS+ mm.
    echo_times_s : ndarray (n_echoes,)
        Echo times, s.
    t2w : ndarray (2X, 2Y, Z), float32
        T2-weighted magnitude (Rician noise) on the finer grid.
    t2w_affine : ndarray (4, 4)
        T2w voxel -> RAS+ mm; the same field of view as the GRE grid.
    tumour_mask : ndarray (2X, 2Y, Z), bool
        The true tumour, drawn on the T2w grid (voxel centres inside the shape).
    noise_sigma : float
        Noise SD of the GRE real/imaginary channels (signal units).
    t2w_noise_sigma : float
        Same for the T2w image.
    r2star : ndarray (X, Y, Z), float32
        The noiseless R2* map (1/s) the GRE signal was made from; NaN in air.
        Each GRE voxel's R2* is the S0-weighted mean of the R2* of its 2 × 2
        T2w sub-voxels (tissue R2* plus r2* × iron), and its noiseless signal
        is exactly ``s0 exp(-TE r2star)``: partial volume enters through
        R2*, so the decay stays mono-exponential and the map is well defined.
    s0 : ndarray (X, Y, Z), float32
        The noiseless GRE signal at TE = 0 (mean S0 of the sub-voxels, gain applied).
    tumour_fraction : ndarray (X, Y, Z), float32
        Fraction of each GRE voxel's T2w sub-voxels that are tumour (0-1).
    """

    subject: str
    timepoint: str
    megre: np.ndarray
    megre_affine: np.ndarray
    echo_times_s: np.ndarray
    t2w: np.ndarray
    t2w_affine: np.ndarray
    tumour_mask: np.ndarray
    noise_sigma: float
    t2w_noise_sigma: float
    r2star: np.ndarray
    s0: np.ndarray
    tumour_fraction: np.ndarray


@dataclass(frozen=True, eq=False)
class SyntheticStudy:
    """A simulated study: its design, every session's images and the truth.

    Attributes
    ----------
    design : StudyDesign
    sessions : dict {(subject, timepoint): SyntheticSession}
        In design order.
    truth : pandas.DataFrame
        The true values in the tidy table's columns (:data:`TRUTH_COLUMNS`).
        Per session (``timepoint`` set): ``tumour_R2star`` (1/s, the median of
        the noiseless R2* map over the GRE voxels at least half of whose T2w
        sub-voxels are tumour, i.e. ``tumour_fraction >= 0.5``),
        ``tumour_T2star`` (s, the median of 1/R2* over the same voxels),
        ``tumour_volume`` (mm³ of the drawn mask: voxel count × voxel
        volume), ``tumour_volume_model`` (mm³, the continuous shape),
        ``tumour_diameter`` (mm, longest axial diameter of the drawn mask:
        in each slice, the largest distance between the mid-points of the
        pixel edges that separate tumour from background, RECIST 1.1 style),
        ``tumour_iron_concentration`` (mmol/L, iron mass / drawn volume),
        ``tumour_delta_R2star`` (1/s, r2* × that concentration),
        ``tumour_iron_mass`` (µg), ``tumour_labelled_cells`` (live labelled
        cells) and ``noise_sigma`` (GRE, signal units). Per subject
        (``timepoint`` empty, ``time_s`` NaN, ``statistic`` "parameter"):
        ``tumour_volume_t0`` (mm³), ``growth_rate`` (1/d),
        ``delivery_fraction`` (1), ``cells_in_tumour_t0`` (cells),
        ``effector_density_t0`` (cells/mm³), ``kill_coefficient``
        (``K_max``, 1/d), ``tumour_R2star_intrinsic`` and ``liver_R2star``
        (1/s).
    parameters : pandas.DataFrame
        The per-subject parameters, one row per subject (wide).
    options : dict
        The simulation options (JSON-able), incl. the relaxivities and their source.
    """

    design: StudyDesign
    sessions: dict
    truth: pd.DataFrame
    parameters: pd.DataFrame
    options: dict = field(default_factory=dict)

    @classmethod
    def small(cls, *, seed: int = 0, **options) -> "SyntheticStudy":
        """A small study for tests: 6 subjects (2 per arm) on a 32 × 32 × 8 GRE grid.

        Keyword options override :data:`SMALL_STUDY_OPTIONS` and go to
        :func:`simulate_study`.
        """
        return simulate_study(seed=seed, **{**SMALL_STUDY_OPTIONS, **options})

    @property
    def echo_times_s(self) -> np.ndarray:
        """The MGE echo times, s."""
        return np.asarray(self.options["echo_times_s"], dtype=np.float64)

    def truth_value(self, subject: str, timepoint: str, biomarker: str) -> float:
        """One true value (KeyError if absent); ``timepoint=''`` for subject parameters."""
        t = self.truth
        rows = t[(t.subject == subject) & (t.timepoint == timepoint) & (t.biomarker == biomarker)]
        if len(rows) != 1:
            raise KeyError((subject, timepoint, biomarker))
        return float(rows.value.iloc[0])


# --------------------------------------------------------------------------
# Helpers (pure)
# --------------------------------------------------------------------------

def allocate_arms(n_subjects: int) -> tuple[int, ...]:
    """Subjects per arm, proportional to :data:`ARM_ALLOCATION` (7/7/6), at least 2 each.

    Largest-remainder rounding of ``n · w / sum(w)``; ties go to the earlier arm.
    """
    if isinstance(n_subjects, bool) or not isinstance(n_subjects, (int, np.integer)):
        raise ValidationError(f"n_subjects must be an integer, got {n_subjects!r}")
    n = int(n_subjects)
    if n < 2 * len(ARMS):
        raise ValidationError(
            f"n_subjects={n} is too few; give at least {2 * len(ARMS)} (2 per arm)")
    w = np.asarray(ARM_ALLOCATION, dtype=np.float64)
    quota = n * w / w.sum()
    counts = np.floor(quota).astype(int)
    order = sorted(range(len(w)), key=lambda i: (-(quota[i] - counts[i]), i))
    for i in order[: n - int(counts.sum())]:
        counts[i] += 1
    while counts.min() < 2:  # take from the largest arm
        counts[int(np.argmax(counts))] -= 1
        counts[int(np.argmin(counts))] += 1
    return tuple(int(c) for c in counts)


def _fibonacci_sphere(n: int = 4000) -> np.ndarray:
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    phi = k * math.pi * (3.0 - math.sqrt(5.0))
    r = np.sqrt(1.0 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


_SPHERE = _fibonacci_sphere()


@dataclass(frozen=True)
class _Shape:
    """An irregular ellipsoid: radius ``s (1 + f(n))`` in the frame ``A`` (mm)."""

    centre: np.ndarray       # (3,) mm, FOV frame
    frame: np.ndarray        # (3, 3): unit-ball direction -> mm (rotation @ diag(axis ratios))
    quad: np.ndarray         # (3, 3) traceless symmetric
    tri: float               # amplitude of the 3-fold harmonic
    tri_phase: float

    def modulation(self, n: np.ndarray) -> np.ndarray:
        """1 + f(n) for unit vectors n (..., 3), kept >= 0.5."""
        q = np.einsum("...i,ij,...j->...", n, self.quad, n)
        c = n[..., 0] + 1j * n[..., 1]
        tri = self.tri * np.real(np.exp(-3j * self.tri_phase) * c ** 3)
        return np.maximum(1.0 + q + tri, 0.5)

    def scale_for_volume(self, volume_mm3: float) -> float:
        """The scale ``s`` whose shape has ``volume_mm3`` (mm³)."""
        mean_cube = float(np.mean(self.modulation(_SPHERE) ** 3))
        unit = abs(np.linalg.det(self.frame)) * 4.0 / 3.0 * math.pi * mean_cube
        return (volume_mm3 / unit) ** (1.0 / 3.0)

    def radial(self, points: np.ndarray, scale: float) -> np.ndarray:
        """Normalised radius r̂ of ``points`` (..., 3) mm: <= 1 inside."""
        m = (points - self.centre) @ np.linalg.inv(self.frame).T
        rho = np.linalg.norm(m, axis=-1)
        n = m / np.where(rho > 0, rho, 1.0)[..., None]
        return rho / (scale * self.modulation(n))


def _draw_shape(rng: np.random.Generator) -> _Shape:
    jitter = np.asarray(_TUMOUR_JITTER_MM) * rng.standard_normal(3)
    centre = np.array([_LIVER_CENTRE[0], _LIVER_CENTRE[1], 0.0]) + np.clip(
        jitter, -2 * np.asarray(_TUMOUR_JITTER_MM), 2 * np.asarray(_TUMOUR_JITTER_MM))
    ratios = np.array([1.0, rng.uniform(0.8, 0.95), rng.uniform(0.75, 0.9)])
    a = rng.uniform(0.0, math.pi)
    rot = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0],
                    [0.0, 0.0, 1.0]])
    q = rng.normal(0.0, 0.06, (3, 3))
    q = 0.5 * (q + q.T)
    q -= np.eye(3) * np.trace(q) / 3.0
    return _Shape(centre=centre, frame=rot @ np.diag(ratios), quad=q,
                  tri=float(rng.normal(0.0, 0.05)), tri_phase=float(rng.uniform(0, 2 * math.pi)))


def _draw_texture(rng: np.random.Generator):
    """Wave vectors (rad/mm), phases and amplitude of a smooth random texture (1/s)."""
    sd, k, (lo, hi) = _TUMOUR_TEXTURE
    directions = rng.standard_normal((k, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    wavelength = rng.uniform(lo, hi, k)
    phases = rng.uniform(0.0, 2 * math.pi, k)
    return (directions * (2 * math.pi / wavelength)[:, None], phases, sd * math.sqrt(2.0 / k))


def _texture(texture, points: np.ndarray) -> np.ndarray:
    """The texture at ``points`` (n, 3) mm: a sum of plane waves with SD ``_TUMOUR_TEXTURE[0]``."""
    waves, phases, amplitude = texture
    return amplitude * np.cos(points @ waves.T + phases).sum(axis=-1)


def _axis_centres(n: int, fov: float) -> np.ndarray:
    d = fov / n
    return (np.arange(n) + 0.5) * d - fov / 2.0


def _affine(shape, fov, offset) -> np.ndarray:
    """Voxel -> RAS+ mm: axes along -R, -A, +S (DICOM-like axial), FOV centred at ``offset``."""
    d = np.asarray(fov, float) / np.asarray(shape, float)
    flip = np.array([-1.0, -1.0, 1.0])
    aff = np.eye(4)
    aff[:3, :3] = np.diag(flip * d)
    first = np.array([_axis_centres(n, f)[0] for n, f in zip(shape, fov)])
    aff[:3, 3] = flip * first + np.asarray(offset, float)
    return aff


def _block_mean(a: np.ndarray) -> np.ndarray:
    """Mean over 2 x 2 in-plane blocks: (2X, 2Y, Z) -> (X, Y, Z)."""
    x2, y2, z = a.shape
    return a.reshape(x2 // 2, 2, y2 // 2, 2, z).mean(axis=(1, 3))


def _longest_axial_diameter(mask: np.ndarray, voxel_mm) -> float:
    """Largest in-slice caliper of the mask (mm), between mid-points of outline pixel edges."""
    from scipy.spatial import ConvexHull, QhullError
    from scipy.spatial.distance import pdist

    best = 0.0
    dx, dy = float(voxel_mm[0]), float(voxel_mm[1])
    for k in range(mask.shape[2]):
        plane = mask[:, :, k]
        if not plane.any():
            continue
        padded = np.pad(plane, 1)
        pts = []
        for axis in (0, 1):
            for step in (-1, 1):
                outside = ~np.roll(padded, -step, axis=axis)[1:-1, 1:-1]
                idx = np.argwhere(plane & outside).astype(np.float64)
                idx[:, axis] += 0.5 * step
                pts.append(idx)
        p = np.concatenate(pts) * np.array([dx, dy])
        try:
            p = p[ConvexHull(p).vertices]
        except QhullError:
            pass
        if len(p) >= 2:
            best = max(best, float(pdist(p).max()))
    return best


def _check_options(shape, fov_mm, echo_times_s, snr, t2w_snr):
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 4:
        raise ValidationError(f"shape must be 3 ints >= 4 (the GRE grid X, Y, Z), got {shape}")
    fov = tuple(positive_float("fov_mm", f, "mm") for f in fov_mm)
    if len(fov) != 3:
        raise ValidationError(f"fov_mm must be 3 lengths in mm, got {fov_mm!r}")
    if min(fov[0], fov[1]) < 2 * _BODY_AXES[0] + 4:
        raise ValidationError(
            f"fov_mm={fov} does not hold the body ({2 * _BODY_AXES[0]:g} mm wide) and the "
            "air around it; give at least 60 mm in-plane")
    te = np.asarray(echo_times_s, dtype=np.float64).reshape(-1)
    if te.size < 3 or not np.all(np.isfinite(te)) or te[0] <= 0 or np.any(np.diff(te) <= 0):
        raise ValidationError("echo_times_s must be >= 3 increasing times > 0 in seconds")
    if te[-1] > 0.2:
        raise ValidationError(
            f"echo_times_s ends at {te[-1]:g}; give seconds (e.g. 0.0015), not milliseconds")
    return (shape, fov, te, positive_float("snr", snr), positive_float("t2w_snr", t2w_snr))


# --------------------------------------------------------------------------
# The simulation
# --------------------------------------------------------------------------

def simulate_study(*, n_subjects: int = 20, seed: int = 0, shape=DEFAULT_SHAPE,
                   fov_mm=DEFAULT_FOV_MM, echo_times_s=DEFAULT_ECHO_TIMES_S,
                   snr: float = 40.0, t2w_snr: float = 20.0, cells_injected: float = 1e7,
                   label_per_cell_pg: float = 4.0,
                   delivery_fraction: Mapping[str, float] | None = None,
                   name: str = "NK-cell delivery to rat liver tumours (synthetic)",
                   ) -> SyntheticStudy:
    """Simulate the NK-cell study: design, images of every session, and the truth.

    The biology, physics and their sources are in the module docstring
    (:mod:`oncomri.sim.study`). Subject parameters are drawn from ``seed``
    independently of ``shape``, so the same seed gives the same biology on
    any grid; the image noise is drawn per session.

    Parameters
    ----------
    n_subjects : int
        Number of rats (>= 6), ``rat01``, ``rat02``, ...; arms control /
        iv_nk / ia_nk in proportion 7/7/6 (:func:`allocate_arms`), assigned
        in a seeded random order.
    seed : int
        Seed of everything random. The same seed gives identical output.
    shape : 3 ints
        GRE grid (X, Y, Z); the T2-weighted grid is (2X, 2Y, Z).
    fov_mm : 3 floats
        Field of view, mm (in-plane >= 60 mm so that the body fits with air around it).
    echo_times_s : array_like
        MGE echo times, s (default :data:`DEFAULT_ECHO_TIMES_S`).
    snr : float
        GRE SNR: liver S0 at TE = 0 over the noise sigma (at unit receiver gain).
    t2w_snr : float
        T2-weighted SNR of liver.
    cells_injected : float
        Labelled NK cells given per treated rat.
    label_per_cell_pg : float
        Iron per labelled cell at injection, pg Fe (ferumoxytol-based
        nanocomplex labelling typically loads a few pg per cell).
    delivery_fraction : mapping arm -> float, optional
        Median fraction of the injected cells that reach the tumour, per arm
        (default control 0, iv_nk 0.03, ia_nk 0.15); subjects vary
        log-normally around it (log SD 0.3).
    name : str
        Study name.

    Returns
    -------
    SyntheticStudy

    Raises
    ------
    ValidationError
        Too few subjects, a bad grid, field of view, echo times, SNR or
        delivery fraction.
    """
    from .. import __version__ as version
    from ..study.design import Arm, StudyDesign, Subject, Timepoint

    shape, fov, te, snr, t2w_snr = _check_options(shape, fov_mm, echo_times_s, snr, t2w_snr)
    counts = allocate_arms(n_subjects)
    cells_injected = positive_float("cells_injected", cells_injected, "cells")
    label_pg = positive_float("label_per_cell_pg", label_per_cell_pg, "pg Fe")
    delivery = dict(_DELIVERY)
    if delivery_fraction is not None:
        unknown = set(delivery_fraction) - set(delivery)
        if unknown:
            raise ValidationError(
                f"delivery_fraction names unknown arm(s) {sorted(unknown)}; arms: "
                f"{', '.join(delivery)}")
        for arm, f in delivery_fraction.items():
            f = float(f)
            if not 0.0 <= f <= 1.0:
                raise ValidationError(f"delivery_fraction[{arm!r}] must lie in 0-1, got {f:g}")
            delivery[arm] = f
    r2star_fe = _table_relaxivity("ferumoxytol", field_strength_t=3.0, medium="plasma",
                                  kind="r2star")
    r2_fe = _table_relaxivity("ferumoxytol", field_strength_t=3.0, medium="plasma", kind="r2")

    root = np.random.SeedSequence(int(seed))
    param_seq, noise_seq = root.spawn(2)
    prng = np.random.default_rng(param_seq)

    # ---- design ------------------------------------------------------------------------
    n = int(n_subjects)
    width = max(2, len(str(n)))
    ids = [f"rat{i + 1:0{width}d}" for i in range(n)]
    arm_of = np.repeat(np.arange(len(ARMS)), counts)
    arm_of = arm_of[prng.permutation(n)]
    arms = tuple(Arm(a, d) for a, d in ARMS)
    tps = tuple(Timepoint(t, s) for t, s in TIMEPOINTS)
    subjects = tuple(Subject(ids[i], ARMS[arm_of[i]][0], {}) for i in range(n))
    sessions_list = tuple((s.id, t.name) for s in subjects for t in tps)
    design = StudyDesign(name=name, arms=arms, timepoints=tps, baseline="baseline",
                         subjects=subjects, sessions=sessions_list,
                         description="Synthetic study simulated by oncomri.sim.study "
                                     f"(seed {int(seed)}); the truth is known.")

    # ---- per-subject parameters (shape-independent draws, fixed order) ----------------
    times_d = np.array([t.time_s for t in tps]) / _DAY_S
    params, draws = [], []
    for i, subj in enumerate(subjects):
        v0 = _V0[0] * math.exp(_V0[1] * prng.standard_normal())
        g = _GROWTH[0] + _GROWTH[1] * prng.standard_normal()
        frac = delivery[subj.arm] * math.exp(_DELIVERY_LOG_SD * prng.standard_normal())
        frac = min(frac, 1.0)
        kappa = _KILL[0] * math.exp(_KILL[1] * prng.standard_normal())
        r2s_t = _TUMOUR_R2STAR[0] + _TUMOUR_R2STAR[1] * prng.standard_normal()
        r2s_l = _LIVER_R2STAR[0] + _LIVER_R2STAR[1] * prng.standard_normal()
        grad_dir = prng.uniform(0.0, 2 * math.pi)
        offset = prng.uniform(-2.0, 2.0, 3)
        shape_i = _draw_shape(prng)
        texture = _draw_texture(prng)
        jitter = _TUMOUR_R2STAR_SESSION_SD * prng.standard_normal(len(tps))
        gains = prng.uniform(*_GAIN, size=(len(tps), 2))
        n0 = cells_injected * frac
        params.append({"subject": subj.id, "arm": subj.arm, "tumour_volume_t0": v0,
                       "growth_rate": g, "delivery_fraction": frac, "cells_in_tumour_t0": n0,
                       "effector_density_t0": n0 / v0, "kill_coefficient": kappa,
                       "tumour_R2star_intrinsic": r2s_t, "liver_R2star": r2s_l})
        draws.append((grad_dir, offset, shape_i, jitter, gains, texture))

    # ---- kinetics, volumes --------------------------------------------------------------
    post = times_d[times_d >= 0]
    kin_days = np.concatenate([[0.0], post]) if post[0] > 0 else post
    exposure_days = np.maximum(times_d - _KILL_LAG_D, 0.0)
    for p in params:
        if p["cells_in_tumour_t0"] > 0:
            kin = simulate_label_kinetics(
                cells_delivered=p["cells_in_tumour_t0"], label_per_cell=label_pg,
                days=kin_days, region_volume_mm3=p["tumour_volume_t0"], label="iron",
                relaxivity_r2star_l_per_mmol_s=r2star_fe, **_KINETICS)
            iron = np.zeros(len(times_d))
            cells = np.zeros(len(times_d))
            for j, t in enumerate(times_d):
                if t >= 0:
                    k = int(np.flatnonzero(np.isclose(kin.days, t))[0])
                    iron[j] = kin.total_label[k]
                    cells[j] = kin.live_cells[k]
            net = kin.parameters["division_rate_per_day"] - kin.parameters["death_rate_per_day"]
            exposure = (np.expm1(net * exposure_days) / net if net != 0 else exposure_days)
        else:
            iron = np.zeros(len(times_d))
            cells = np.zeros(len(times_d))
            exposure = np.zeros(len(times_d))
        rho = p["effector_density_t0"]
        kill = p["kill_coefficient"] * rho / (rho + _KILL_HALF_DENSITY) * exposure
        p["_volume"] = p["tumour_volume_t0"] * np.exp(p["growth_rate"] * times_d - kill)
        p["_iron_pg"] = iron
        p["_cells"] = cells

    # ---- images -------------------------------------------------------------------------
    gre_shape = shape
    fine_shape = (2 * shape[0], 2 * shape[1], shape[2])
    fine_vox = np.asarray(fov) / np.asarray(fine_shape)
    voxel_volume = float(np.prod(fine_vox))
    u = _axis_centres(fine_shape[0], fov[0])[:, None, None]
    v = _axis_centres(fine_shape[1], fov[1])[None, :, None]
    w = _axis_centres(fine_shape[2], fov[2])[None, None, :]
    pts = np.stack(np.broadcast_arrays(u, v, w), axis=-1)
    centres = (u[:, 0, 0], v[0, :, 0], w[0, 0, :])
    body = ((u / _BODY_AXES[0]) ** 2 + (v / _BODY_AXES[1]) ** 2 <= 1.0) & np.ones_like(w, bool)
    liver = body & (((u - _LIVER_CENTRE[0]) / _LIVER_AXES[0]) ** 2
                    + ((v - _LIVER_CENTRE[1]) / _LIVER_AXES[1]) ** 2 <= 1.0)
    base_labels = np.where(liver, _LIVER, np.where(body, _BODY, _AIR)).astype(np.int8)
    noise_seqs = iter(noise_seq.spawn(len(sessions_list)))

    sessions, rows = {}, []
    for i, (subj, p) in enumerate(zip(subjects, params)):
        grad_dir, offset, shp, jitter, gains, texture = draws[i]
        gre_aff = _affine(gre_shape, fov, offset)
        fine_aff = gre_aff @ np.array([[0.5, 0, 0, -0.25], [0, 0.5, 0, -0.25],
                                       [0, 0, 1, 0], [0, 0, 0, 1.0]])
        liver_r2s = p["liver_R2star"] + _LIVER_GRADIENT * (
            (u * math.cos(grad_dir) + v * math.sin(grad_dir)) / _LIVER_AXES[0])
        for j, tp in enumerate(tps):
            volume = float(p["_volume"][j])
            scale = shp.scale_for_volume(volume)
            # Evaluate the shape only in its bounding box (frame axes have length <= 1).
            reach = scale * (1.0 + np.linalg.norm(shp.quad, 2) + abs(shp.tri)) + fine_vox.max()
            box = tuple(slice(int(np.searchsorted(c, shp.centre[a] - reach)),
                              int(np.searchsorted(c, shp.centre[a] + reach, side="right")))
                        for a, c in enumerate(centres))
            rhat = np.full(fine_shape, np.inf)
            rhat[box] = shp.radial(pts[box], scale)
            tumour = (rhat <= 1.0) & body
            tumour_frac = _block_mean(tumour.astype(np.float64))
            core = tumour_frac >= 0.5
            if not core.any():
                raise ValidationError(
                    f"shape={gre_shape} is too coarse: the tumour of {subj.id} at {tp.name} "
                    f"({volume:.0f} mm3) fills no GRE voxel by half; use a finer shape "
                    "(e.g. 32 x 32 x 8 or more)")
            labels = np.where(tumour, _TUMOUR, base_labels)
            n_vox = int(tumour.sum())
            drawn = n_vox * voxel_volume
            conc_mean = float(iron_mass_to_concentration_mmol_l(p["_iron_pg"][j], drawn))
            weight = np.where(tumour, 0.75 + 0.5 * np.minimum(rhat, 1.0) ** 2, 0.0)
            conc = weight * (conc_mean / weight[tumour].mean()) if conc_mean > 0 else \
                np.zeros(fine_shape)
            # GRE tissue maps on the fine grid, then 2x2 in-plane blocks.
            s0_f = np.zeros(fine_shape)
            r2s_f = np.zeros(fine_shape)
            pd_f = np.zeros(fine_shape)
            r2_f = np.zeros(fine_shape)
            for lab in (_BODY, _LIVER, _TUMOUR):
                sel = labels == lab
                s0_f[sel] = _S0[lab]
                pd_f[sel] = _PD[lab]
                r2_f[sel] = 1.0 / _T2_S[lab]
            r2s_f[labels == _BODY] = _BODY_R2STAR
            r2s_f[labels == _LIVER] = np.broadcast_to(liver_r2s, fine_shape)[labels == _LIVER]
            r2s_f[tumour] = p["tumour_R2star_intrinsic"] + jitter[j] + _texture(
                texture, pts[tumour])
            r2s_f += r2star_fe * conc
            r2_f += r2_fe * conc
            gain_gre, gain_t2w = (float(x) for x in gains[j])
            s0_sum = _block_mean(s0_f)
            with np.errstate(invalid="ignore", divide="ignore"):
                r2s_g = np.where(s0_sum > 0, _block_mean(s0_f * r2s_f) / s0_sum, np.nan)
            s0_g = gain_gre * s0_sum
            clean = np.where(s0_g[..., None] > 0,
                             s0_g[..., None] * np.exp(-te * np.nan_to_num(r2s_g)[..., None]), 0.0)
            sigma = gain_gre * _S0[_LIVER] / snr
            rng = np.random.default_rng(next(noise_seqs))
            megre = add_rician_noise(clean, sigma, rng=rng)
            t2w_clean = gain_t2w * pd_f * np.exp(-_T2W_TE_S * r2_f)
            t2w_sigma = gain_t2w * _PD[_LIVER] * math.exp(-_T2W_TE_S / _T2_S[_LIVER]) / t2w_snr
            t2w = add_rician_noise(t2w_clean, t2w_sigma, rng=rng)
            sessions[(subj.id, tp.name)] = SyntheticSession(
                subject=subj.id, timepoint=tp.name, megre=megre, megre_affine=gre_aff,
                echo_times_s=te.copy(), t2w=t2w, t2w_affine=fine_aff, tumour_mask=tumour,
                noise_sigma=float(sigma), t2w_noise_sigma=float(t2w_sigma),
                r2star=r2s_g.astype(np.float32), s0=s0_g.astype(np.float32),
                tumour_fraction=tumour_frac.astype(np.float32))
            r2_in = r2s_g[core]
            values = [
                ("tumour_R2star", float(np.median(r2_in)), "1/s", "tumour", "r2star.R2starmap",
                 "median"),
                ("tumour_T2star", float(np.median(1.0 / r2_in)), "s", "tumour",
                 "r2star.T2starmap", "median"),
                ("tumour_volume", drawn, "mm^3", "tumour", "", "volume"),
                ("tumour_volume_model", volume, "mm^3", "tumour", "", "volume"),
                ("tumour_diameter", _longest_axial_diameter(tumour, fine_vox), "mm", "tumour",
                 "", "longest_diameter"),
                ("tumour_iron_concentration", conc_mean, "mmol/L", "tumour", "", "mean"),
                ("tumour_delta_R2star", r2star_fe * conc_mean, "1/s", "tumour", "", "mean"),
                ("tumour_iron_mass", float(p["_iron_pg"][j]) * 1e-6, "ug", "tumour", "", "sum"),
                ("tumour_labelled_cells", float(p["_cells"][j]), "cells", "tumour", "", "sum"),
                ("noise_sigma", float(sigma), "a.u.", "", "", "sd"),
            ]
            for bm, val, unit, roi, mp, stat in values:
                rows.append((subj.id, subj.arm, tp.name, tp.time_s, bm, val, unit, roi, mp,
                             stat, "truth", version))
    param_units = {"tumour_volume_t0": "mm^3", "growth_rate": "1/d", "delivery_fraction": "1",
                   "cells_in_tumour_t0": "cells", "effector_density_t0": "cells/mm^3",
                   "kill_coefficient": "1/d", "tumour_R2star_intrinsic": "1/s",
                   "liver_R2star": "1/s"}
    for p in params:
        for key, unit in param_units.items():
            rows.append((p["subject"], p["arm"], "", float("nan"), key, float(p[key]), unit,
                         "", "", "parameter", "truth", version))
    truth = pd.DataFrame(rows, columns=list(TRUTH_COLUMNS))
    parameters = pd.DataFrame([{k: v for k, v in p.items() if not k.startswith("_")}
                               for p in params])
    options = {
        "n_subjects": n, "seed": int(seed), "shape": list(gre_shape),
        "t2w_shape": list(fine_shape), "fov_mm": list(fov),
        "echo_times_s": [float(t) for t in te], "snr": snr, "t2w_snr": t2w_snr,
        "cells_injected": cells_injected, "label_per_cell_pg": label_pg,
        "delivery_fraction": delivery, "magnetic_field_strength_t": _FIELD_T,
        "relaxivity_r2star_per_mM_s": r2star_fe, "relaxivity_r2_per_mM_s": r2_fe,
        "relaxivity_source": "Knobloch et al., Invest Radiol 2018;53:257 (ferumoxytol, plasma, "
                             "37 C, 3 T; used at 7 T, see oncomri.sim.study)",
        "mge_repetition_time_s": _MGE_TR_S, "mge_flip_angle_deg": _MGE_FLIP_DEG,
        "t2w_echo_time_s": _T2W_TE_S, "t2w_repetition_time_s": _T2W_TR_S,
    }
    return SyntheticStudy(design=design, sessions=sessions, truth=truth,
                          parameters=parameters, options=options)
