"""Liver iron concentration (LIC) from R2*, with published biopsy calibrations.

Each calibration maps liver R2* (s⁻¹) to LIC in mg Fe per g dry liver
weight and is valid only at the field strength it was measured at, because
R2* grows with field strength. The table holds 1.5 T calibrations only:

``wood2005``
    ``LIC = 0.0254 · R2* + 0.202`` (Wood et al., Blood 2005;106:1460), 1.5 T.
``garbowski2014``
    ``LIC = 0.0290 · R2*^1.014`` (Garbowski et al., J Cardiovasc Magn Reson
    2014;16:40), 1.5 T.
``hernando2022``
    ``LIC = −0.16 + 2.603×10⁻² · R2*`` (Hernando et al., Radiology 2022,
    doi 10.1148/radiol.213256), 1.5 T. That study also reports a 3 T
    calibration, which is not in this table yet (it is not among the project's
    reference numbers in shared/data/MANIFEST.md).

R2* measured at another field is refused, not converted: no 3 T → 1.5 T R2*
conversion is in the project's reference numbers, and a conversion adds its
own error. Measure at 1.5 T, or pass R2* already converted to 1.5 T with a
published conversion you cite (and ``field_strength_t=1.5``).

The normal liver R2* at 1.5 T, 28.7 ± 2.7 s⁻¹ (mean ± SD; Obrzut et al., Sci
Rep 2020;10:17887), is given as a reference flag alongside the LIC.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from ..core.errors import ValidationError
from .iron import FIELD_STRENGTH_TOLERANCE_T, _roi

__all__ = [
    "LiverIronCalibration",
    "LIVER_IRON_CALIBRATIONS",
    "NORMAL_LIVER_R2STAR_1P5T_PER_S",
    "NORMAL_LIVER_R2STAR_1P5T_SD_PER_S",
    "liver_iron_concentration",
    "LiverIron",
    "liver_iron",
]


@dataclass(frozen=True)
class LiverIronCalibration:
    """``LIC = intercept + coefficient · R2*^exponent`` (LIC in mg Fe/g dry weight, R2* in s⁻¹).

    Attributes
    ----------
    name : str
    intercept_mg_per_g : float
    coefficient : float
        mg/g per (s⁻¹)^exponent.
    exponent : float
    field_strength_t : float
        The field the calibration was measured at, tesla.
    source : str
        Citation.
    """

    name: str
    intercept_mg_per_g: float
    coefficient: float
    exponent: float
    field_strength_t: float
    source: str

    def __call__(self, r2star_per_s):
        """LIC (mg Fe/g dry weight) for R2* in s⁻¹ measured at this calibration's field."""
        r = np.asarray(r2star_per_s, dtype=np.float64)
        return self.intercept_mg_per_g + self.coefficient * r ** self.exponent

    @property
    def formula(self) -> str:
        """The calibration as text, for reports."""
        power = "" if self.exponent == 1.0 else f"^{self.exponent:g}"
        text = f"LIC = {self.coefficient:g}*R2*{power}"
        if self.intercept_mg_per_g:
            sign = "+" if self.intercept_mg_per_g > 0 else "-"
            text += f" {sign} {abs(self.intercept_mg_per_g):g}"
        return text


#: Published liver R2* → LIC calibrations (values as in shared/data/MANIFEST.md), read-only.
LIVER_IRON_CALIBRATIONS = MappingProxyType({
    # Wood et al., Blood 2005;106:1460: LIC = 0.0254 R2* + 0.202, 1.5 T
    "wood2005": LiverIronCalibration(
        "wood2005", 0.202, 0.0254, 1.0, 1.5, "Wood et al., Blood 2005;106:1460"),
    # Garbowski et al., JCMR 2014;16:40: LIC = 0.0290 R2*^1.014, 1.5 T
    "garbowski2014": LiverIronCalibration(
        "garbowski2014", 0.0, 0.0290, 1.014, 1.5,
        "Garbowski et al., J Cardiovasc Magn Reson 2014;16:40"),
    # Hernando et al., Radiology 2022 (doi 10.1148/radiol.213256): LIC = -0.16 + 2.603e-2 R2*, 1.5 T
    "hernando2022": LiverIronCalibration(
        "hernando2022", -0.16, 2.603e-2, 1.0, 1.5,
        "Hernando et al., Radiology 2022, doi:10.1148/radiol.213256"),
})

#: Normal liver R2* at 1.5 T, mean and SD in s⁻¹ (Obrzut et al., Sci Rep 2020;10:17887).
NORMAL_LIVER_R2STAR_1P5T_PER_S = 28.7
NORMAL_LIVER_R2STAR_1P5T_SD_PER_S = 2.7


def _calibration(calibration) -> LiverIronCalibration:
    if isinstance(calibration, LiverIronCalibration):
        return calibration
    key = str(calibration).strip().lower()
    try:
        return LIVER_IRON_CALIBRATIONS[key]
    except KeyError:
        raise ValidationError(
            f"calibration {calibration!r} is unknown; use one of "
            f"{', '.join(LIVER_IRON_CALIBRATIONS)}"
        ) from None


def _check_field(cal: LiverIronCalibration, field_strength_t) -> float:
    try:
        field = float(field_strength_t)
    except (TypeError, ValueError):
        raise ValidationError(f"field_strength_t must be a number in tesla, got {field_strength_t!r}") from None
    if not math.isfinite(field) or field <= 0:
        raise ValidationError(f"field_strength_t must be positive (tesla), got {field_strength_t!r}")
    if abs(field - cal.field_strength_t) > FIELD_STRENGTH_TOLERANCE_T:
        raise ValidationError(
            f"calibration {cal.name!r} is valid at {cal.field_strength_t:g} T, not {field:g} T; "
            f"R2* depends on field strength and oncomri does not convert it: measure at "
            f"{cal.field_strength_t:g} T or give R2* converted with a published conversion"
        )
    return field


def liver_iron_concentration(r2star, *, calibration, field_strength_t) -> np.ndarray:
    """Liver iron concentration (mg Fe/g dry weight) from liver R2* (s⁻¹).

    Applies one of :data:`LIVER_IRON_CALIBRATIONS` (Wood et al., Blood
    2005;106:1460; Garbowski et al., J Cardiovasc Magn Reson 2014;16:40;
    Hernando et al., Radiology 2022, doi 10.1148/radiol.213256), all
    measured at 1.5 T.

    Parameters
    ----------
    r2star : array_like
        Liver R2* in s⁻¹, a scalar or a map. NaN (failed fits) stays NaN.
    calibration : str or LiverIronCalibration
        ``'wood2005'``, ``'garbowski2014'`` or ``'hernando2022'``. Required:
        the calibrations give different LIC for the same R2* (at 100 s⁻¹:
        2.74, 3.09 and 2.44 mg/g), so a study must name the one it uses.
    field_strength_t : float
        Field the R2* was measured at, tesla. Must match the calibration's
        field within ±0.12 T, else ValidationError (no conversion is made).

    Returns
    -------
    ndarray of float64
        LIC in mg Fe/g dry weight. ``hernando2022`` has a negative intercept
        and gives LIC < 0 below R2* ≈ 6.1 s⁻¹, far below any normal liver;
        such values are set to 0.

    Raises
    ------
    ValidationError
        Unknown calibration, field mismatch, negative or infinite R2*.
    """
    cal = _calibration(calibration)
    _check_field(cal, field_strength_t)
    try:
        r = np.asarray(r2star, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValidationError("r2star must be numeric (s^-1)") from None
    if np.any(np.isinf(r)):
        raise ValidationError("r2star contains infinite values; mask them out or set them to NaN")
    if np.any(r < 0):
        raise ValidationError(
            f"r2star has negative values (min {np.nanmin(r):g} s^-1); R2* cannot be negative, "
            "mask those voxels out"
        )
    return np.maximum(cal(r), 0.0)


@dataclass(frozen=True)
class LiverIron:
    """LIC of a liver ROI with the normal-R2* reference flag.

    Attributes
    ----------
    r2star_per_s : float
        ROI summary R2* (mean or median), s⁻¹.
    lic_mg_per_g : float
        LIC from that R2*, mg Fe/g dry weight.
    calibration, calibration_source, calibration_formula : str
    field_strength_t : float
    statistic : str
        ``'mean'`` or ``'median'``.
    n_voxels : int
    normal_r2star_per_s, normal_r2star_sd_per_s : float
        Normal liver R2* at 1.5 T (Obrzut et al., Sci Rep 2020;10:17887).
    r2star_z_score : float
        ``(R2* − 28.7) / 2.7``.
    upper_limit_normal_per_s : float
        ``28.7 + n_sd · 2.7``.
    above_normal : bool
        R2* above that upper limit.
    """

    r2star_per_s: float
    lic_mg_per_g: float
    calibration: str
    calibration_source: str
    calibration_formula: str
    field_strength_t: float
    statistic: str
    n_voxels: int
    normal_r2star_per_s: float
    normal_r2star_sd_per_s: float
    r2star_z_score: float
    upper_limit_normal_per_s: float
    above_normal: bool

    def as_dict(self) -> dict:
        """Plain JSON-able values; units in the key names."""
        return {
            "r2star_per_s": self.r2star_per_s,
            "lic_mg_fe_per_g_dry_weight": self.lic_mg_per_g,
            "calibration": self.calibration,
            "calibration_source": self.calibration_source,
            "calibration_formula": self.calibration_formula,
            "field_strength_t": self.field_strength_t,
            "statistic": self.statistic,
            "n_voxels": self.n_voxels,
            "normal_r2star_per_s": self.normal_r2star_per_s,
            "normal_r2star_sd_per_s": self.normal_r2star_sd_per_s,
            "normal_r2star_source": "Obrzut et al., Sci Rep 2020;10:17887",
            "r2star_z_score": self.r2star_z_score,
            "upper_limit_normal_r2star_per_s": self.upper_limit_normal_per_s,
            "above_normal": self.above_normal,
        }


def liver_iron(r2star, *, calibration, field_strength_t, mask=None, statistic: str = "mean",
               n_sd: float = 2.0) -> LiverIron:
    """LIC of a liver ROI, and whether its R2* is above the normal range.

    The ROI's R2* is summarised first (mean by default; the calibrations
    relate an ROI-average R2* to a biopsy LIC) and then calibrated with
    :func:`liver_iron_concentration`. The reference flag compares that R2*
    with the normal liver R2* at 1.5 T, 28.7 ± 2.7 s⁻¹ (Obrzut et al., Sci Rep
    2020;10:17887): ``above_normal`` when R2* > 28.7 + n_sd · 2.7 s⁻¹
    (34.1 s⁻¹ for the default n_sd = 2, the upper bound of a two-sided ~95 %
    normal range).

    Parameters
    ----------
    r2star : array_like
        R2* map (or values) in s⁻¹.
    calibration : str or LiverIronCalibration
        See :data:`LIVER_IRON_CALIBRATIONS`.
    field_strength_t : float
        Field of the R2* measurement, tesla (must be 1.5 ± 0.12 T).
    mask : bool array_like, optional
        Liver ROI (avoid vessels); all values when omitted.
    statistic : {'mean', 'median'}
    n_sd : float
        SDs above the normal mean for ``above_normal``.

    Returns
    -------
    LiverIron

    Raises
    ------
    ValidationError
        As :func:`liver_iron_concentration`; also empty ROI or non-finite R2*
        inside it.
    GeometryError
        Mask shape differs from the map.
    """
    cal = _calibration(calibration)
    field = _check_field(cal, field_strength_t)
    if statistic not in ("mean", "median"):
        raise ValidationError(f"statistic must be 'mean' or 'median', got {statistic!r}")
    n_sd = float(n_sd)
    if not math.isfinite(n_sd) or n_sd < 0:
        raise ValidationError(f"n_sd must be a finite number >= 0, got {n_sd!r}")
    try:
        r = np.asarray(r2star, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValidationError("r2star must be numeric (s^-1)") from None
    values = r[_roi(r, mask, "r2star")]
    bad = ~np.isfinite(values)
    if bad.any():
        raise ValidationError(
            f"r2star has {int(bad.sum())} non-finite value(s) inside the ROI; "
            "remove them from the mask (e.g. failed fits)"
        )
    summary = float(np.mean(values) if statistic == "mean" else np.median(values))
    lic = float(liver_iron_concentration(summary, calibration=cal, field_strength_t=field))
    ref, sd = NORMAL_LIVER_R2STAR_1P5T_PER_S, NORMAL_LIVER_R2STAR_1P5T_SD_PER_S
    uln = ref + n_sd * sd
    return LiverIron(
        r2star_per_s=summary,
        lic_mg_per_g=lic,
        calibration=cal.name,
        calibration_source=cal.source,
        calibration_formula=cal.formula,
        field_strength_t=field,
        statistic=statistic,
        n_voxels=int(values.size),
        normal_r2star_per_s=ref,
        normal_r2star_sd_per_s=sd,
        r2star_z_score=(summary - ref) / sd,
        upper_limit_normal_per_s=uln,
        above_normal=bool(summary > uln),
    )
