"""Tumour response criteria and response rates (pure functions).

* :func:`recist_response` — RECIST 1.1 target-lesion response from the sum of
  diameters per timepoint (Eisenhauer et al., Eur J Cancer 2009;45:228).
* :func:`mrecist_response` — mRECIST for hepatocellular carcinoma: the same
  rules applied to the sum of diameters of *viable* (arterially enhancing)
  tumour (Lencioni & Llovet, Semin Liver Dis 2010;30:52).
* :func:`volumetric_response` — categories from the % change of tumour volume,
  with the thresholds of a sphere whose diameter changes by -30 % / +20 %.
* :func:`delta_volume` — the change of tumour volume from baseline to a given
  day (the day-8 Δvolume of preclinical studies).
* :func:`response_rate`, :func:`objective_response_rate`,
  :func:`disease_control_rate` — ORR (CR + PR) and DCR (CR + PR + SD) with exact
  Clopper–Pearson confidence intervals (Clopper & Pearson, Biometrika
  1934;26:404).
* :func:`waterfall_table` — best % change per subject, sorted, ready to plot.

Response categories are the strings ``"CR"``, ``"PR"``, ``"SD"``, ``"PD"`` and
``"NE"`` (not evaluable). In per-timepoint tables the baseline is ``"BL"`` and
timepoints before the baseline are ``"NA"``. Nothing here reads or writes files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats as _sps

from ..core.errors import ValidationError

__all__ = [
    "RESPONSE_CATEGORIES",
    "RECIST_PR_DECREASE_PERCENT",
    "RECIST_PD_INCREASE_PERCENT",
    "RECIST_PD_MIN_INCREASE_MM",
    "RECIST_NODE_NORMAL_SHORT_AXIS_MM",
    "RECIST_CONFIRMATION_INTERVAL_DAYS",
    "VOLUMETRIC_PR_PERCENT",
    "VOLUMETRIC_PD_PERCENT",
    "ResponseAssessment",
    "DeltaVolume",
    "ResponseRate",
    "WaterfallTable",
    "recist_response",
    "mrecist_response",
    "volumetric_response",
    "delta_volume",
    "response_rate",
    "objective_response_rate",
    "disease_control_rate",
    "waterfall_table",
]

#: Response categories, best first.
RESPONSE_CATEGORIES = ("CR", "PR", "SD", "PD", "NE")
_RANK = {c: i for i, c in enumerate(RESPONSE_CATEGORIES)}

# RECIST 1.1 thresholds (Eisenhauer et al., Eur J Cancer 2009;45:228, section 4.3.1)
#: PR: at least a 30 % decrease of the sum of diameters from baseline.
RECIST_PR_DECREASE_PERCENT = 30.0
#: PD: at least a 20 % increase of the sum of diameters from the nadir ...
RECIST_PD_INCREASE_PERCENT = 20.0
#: ... and an absolute increase of at least 5 mm.
RECIST_PD_MIN_INCREASE_MM = 5.0
#: CR: every pathological lymph node has a short axis below 10 mm.
RECIST_NODE_NORMAL_SHORT_AXIS_MM = 10.0
#: Confirmation of CR/PR: repeat assessment no less than 4 weeks later (section 4.4.1).
RECIST_CONFIRMATION_INTERVAL_DAYS = 28.0

# Volumetric equivalents of the RECIST diameter thresholds for a sphere
# (V proportional to d^3): (1 - 0.30)^3 - 1 = -0.657 and (1 + 0.20)^3 - 1 = +0.728.
#: PR: volume change <= -65.7 % (a sphere whose diameter shrinks by 30 %).
VOLUMETRIC_PR_PERCENT = ((1.0 - RECIST_PR_DECREASE_PERCENT / 100.0) ** 3 - 1.0) * 100.0
#: PD: volume change >= +72.8 % from the nadir (a sphere whose diameter grows by 20 %).
VOLUMETRIC_PD_PERCENT = ((1.0 + RECIST_PD_INCREASE_PERCENT / 100.0) ** 3 - 1.0) * 100.0

# Boundaries ("at least 30 %") are inclusive; a relative slack absorbs float
# round-off such as 0.3 * 100 = 30.000000000000004.
_REL_TOL = 1e-9


def _ge(a: float, b: float) -> bool:
    """``a >= b`` up to float round-off."""
    return a >= b - _REL_TOL * max(1.0, abs(a), abs(b))


def _le(a: float, b: float) -> bool:
    return _ge(b, a)


def _json(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# --------------------------------------------------------------------------
# Result types
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class ResponseAssessment:
    """Per-timepoint response and best overall response of one subject.

    Attributes
    ----------
    criteria : str
        ``"RECIST 1.1"``, ``"mRECIST"`` or ``"volumetric"``.
    measure : str
        What ``values`` hold, with the unit (e.g. ``"sum of diameters (mm)"``).
    values : tuple of float
        The measure per timepoint (NaN where not assessed).
    baseline_index : int
        Index of the baseline timepoint.
    percent_change_from_baseline, percent_change_from_nadir : tuple of float
        Per timepoint, in %; the nadir is the smallest value from baseline up
        to the previous timepoint. NaN at and before baseline and where not
        assessed.
    responses : tuple of str
        Per timepoint: ``CR/PR/SD/PD/NE``; ``"BL"`` at baseline, ``"NA"`` before.
    best_overall_response : str
        Best response from baseline until (and including) the first PD.
    best_percent_change : float
        Most negative % change from baseline over the same timepoints (NaN if
        none was evaluable): the bar of a waterfall plot.
    progression_index : int or None
        Index of the first PD timepoint.
    confirmation : bool
        Whether CR/PR had to be confirmed for the best overall response.
    """

    criteria: str
    measure: str
    values: tuple[float, ...]
    baseline_index: int
    percent_change_from_baseline: tuple[float, ...]
    percent_change_from_nadir: tuple[float, ...]
    responses: tuple[str, ...]
    best_overall_response: str
    best_percent_change: float
    progression_index: int | None
    confirmation: bool
    thresholds: Mapping[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (NaN becomes None)."""
        return {
            "criteria": self.criteria,
            "measure": self.measure,
            "values": [_json(v) for v in self.values],
            "baseline_index": self.baseline_index,
            "percent_change_from_baseline": [_json(v) for v in self.percent_change_from_baseline],
            "percent_change_from_nadir": [_json(v) for v in self.percent_change_from_nadir],
            "responses": list(self.responses),
            "best_overall_response": self.best_overall_response,
            "best_percent_change": _json(self.best_percent_change),
            "progression_index": self.progression_index,
            "confirmation": self.confirmation,
            "thresholds": {k: float(v) for k, v in self.thresholds.items()},
        }


@dataclass(frozen=True)
class DeltaVolume:
    """Change of tumour volume from baseline to a given day.

    Attributes
    ----------
    day : float
        Days after the baseline timepoint.
    baseline_volume_mm3, volume_mm3 : float
        Volumes at baseline and at ``day`` (mm³).
    delta_volume_mm3 : float
        ``volume_mm3 - baseline_volume_mm3`` (mm³).
    percent_change : float
        ``100 * delta / baseline`` (%).
    interpolated : bool
        Whether ``volume_mm3`` was linearly interpolated between two scans.
    """

    day: float
    baseline_volume_mm3: float
    volume_mm3: float
    delta_volume_mm3: float
    percent_change: float
    interpolated: bool

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able values."""
        return {
            "day": float(self.day),
            "baseline_volume_mm3": float(self.baseline_volume_mm3),
            "volume_mm3": float(self.volume_mm3),
            "delta_volume_mm3": float(self.delta_volume_mm3),
            "percent_change": float(self.percent_change),
            "interpolated": bool(self.interpolated),
        }


@dataclass(frozen=True)
class ResponseRate:
    """A response proportion with its exact confidence interval.

    Attributes
    ----------
    name : str
        ``"ORR"``, ``"DCR"`` or a user label.
    counts : Mapping[str, int]
        Number of subjects per category (``CR, PR, SD, PD, NE``).
    included : tuple of str
        Categories counted as responders.
    n_responders, n_total : int
        Numerator and denominator (every subject, NE included).
    proportion : float
        ``n_responders / n_total`` (fraction, 0..1).
    ci_low, ci_high : float
        Confidence interval of the proportion (fraction, 0..1).
    confidence_level : float
        E.g. 0.95.
    method : str
        ``"Clopper-Pearson exact"``.
    """

    name: str
    counts: Mapping[str, int]
    included: tuple[str, ...]
    n_responders: int
    n_total: int
    proportion: float
    ci_low: float
    ci_high: float
    confidence_level: float
    method: str

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able values; proportions as fractions and in %."""
        return {
            "name": self.name,
            "counts": {k: int(v) for k, v in self.counts.items()},
            "included": list(self.included),
            "n_responders": int(self.n_responders),
            "n_total": int(self.n_total),
            "proportion": float(self.proportion),
            "proportion_percent": 100.0 * float(self.proportion),
            "ci_low": float(self.ci_low),
            "ci_high": float(self.ci_high),
            "ci_low_percent": 100.0 * float(self.ci_low),
            "ci_high_percent": 100.0 * float(self.ci_high),
            "confidence_level": float(self.confidence_level),
            "method": self.method,
        }


@dataclass(frozen=True)
class WaterfallTable:
    """Best % change per subject, sorted for a waterfall plot.

    Attributes
    ----------
    subjects : tuple of str
        Subject identifiers in plotting order (left to right).
    best_percent_change : tuple of float
        Bar heights (%), same order.
    best_overall_response : tuple of str
        Category per bar (``""`` when unknown), for colouring.
    not_evaluable : tuple of str
        Subjects without any evaluable post-baseline value (left out).
    """

    subjects: tuple[str, ...]
    best_percent_change: tuple[float, ...]
    best_overall_response: tuple[str, ...]
    not_evaluable: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able values."""
        return {
            "subjects": list(self.subjects),
            "best_percent_change": [float(v) for v in self.best_percent_change],
            "best_overall_response": list(self.best_overall_response),
            "not_evaluable": list(self.not_evaluable),
        }


# --------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------

def _series(values, name: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValidationError(f"{name} must be a 1-D sequence of numbers") from None
    if arr.ndim != 1:
        raise ValidationError(f"{name} must be 1-D (one value per timepoint), got shape {arr.shape}")
    if arr.size == 0:
        raise ValidationError(f"{name} is empty; give one value per timepoint, baseline first")
    if np.any(np.isinf(arr)):
        raise ValidationError(f"{name} contains infinite values; use NaN for a timepoint not assessed")
    if np.any(arr[~np.isnan(arr)] < 0):
        raise ValidationError(f"{name} contains negative values; sizes must be >= 0")
    return arr


def _baseline(baseline_index: int, n: int, values: np.ndarray, name: str) -> int:
    if isinstance(baseline_index, bool) or not isinstance(baseline_index, (int, np.integer)):
        raise ValidationError(f"baseline_index must be an integer, got {baseline_index!r}")
    b = int(baseline_index)
    if not 0 <= b < n:
        raise ValidationError(f"baseline_index={b} is outside 0..{n - 1}; pass the index of the baseline scan")
    if not np.isfinite(values[b]) or values[b] <= 0:
        raise ValidationError(
            f"{name}[{b}] (baseline) must be > 0; response needs measurable disease at baseline"
        )
    return b


def _flags(new_lesions, n: int, b: int) -> np.ndarray:
    if new_lesions is None:
        return np.zeros(n, dtype=bool)
    arr = np.asarray(new_lesions)
    if arr.shape != (n,):
        raise ValidationError(f"new_lesions must have one flag per timepoint ({n}), got shape {arr.shape}")
    if arr.dtype != bool:
        if not np.all(np.isin(arr, (0, 1))):
            raise ValidationError("new_lesions must hold booleans (True where a new lesion appeared)")
        arr = arr.astype(bool)
    if np.any(arr[: b + 1]):
        raise ValidationError("new_lesions is True at or before baseline; new lesions are judged after baseline only")
    return arr


def _times(times_days, n: int) -> np.ndarray | None:
    if times_days is None:
        return None
    try:
        t = np.asarray(times_days, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValidationError("times_days must be a 1-D sequence of numbers (days)") from None
    if t.shape != (n,):
        raise ValidationError(f"times_days must have one value per timepoint ({n}), got shape {t.shape}")
    if not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0):
        raise ValidationError("times_days must be finite and strictly increasing")
    return t


def _positive(x, name: str, *, allow_zero: bool = False) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValidationError(f"{name} must be a number, got {x!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValidationError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {x!r}")
    return v


# --------------------------------------------------------------------------
# Core engine shared by RECIST 1.1, mRECIST and volumetric response
# --------------------------------------------------------------------------

def _assess(
    values: np.ndarray,
    *,
    criteria: str,
    measure: str,
    baseline_index: int,
    new_lesions: np.ndarray,
    is_complete: np.ndarray,
    pr_limit,            # callable(change_from_baseline_fraction, value, baseline) -> bool
    pd_limit,            # callable(value, nadir) -> bool
    confirmation: bool,
    times_days: np.ndarray | None,
    confirmation_interval_days: float,
    min_sd_duration_days: float | None,
    thresholds: Mapping[str, float],
) -> ResponseAssessment:
    n = values.size
    b = baseline_index
    base = float(values[b])
    pct_base = np.full(n, np.nan)
    pct_nadir = np.full(n, np.nan)
    responses = ["NA"] * n
    responses[b] = "BL"
    nadir = base
    for i in range(b + 1, n):          # loop over a handful of timepoints, not voxels
        v = float(values[i])
        if np.isnan(v):
            responses[i] = "PD" if new_lesions[i] else "NE"
            continue
        pct_base[i] = 100.0 * (v - base) / base
        if nadir > 0:
            pct_nadir[i] = 100.0 * (v - nadir) / nadir
        if new_lesions[i] or pd_limit(v, nadir):
            responses[i] = "PD"
        elif is_complete[i]:
            responses[i] = "CR"
        elif pr_limit(v, base):
            responses[i] = "PR"
        else:
            responses[i] = "SD"
        nadir = min(nadir, v)

    post = list(range(b + 1, n))
    prog = next((i for i in post if responses[i] == "PD"), None)
    window = [i for i in post if prog is None or i <= prog]

    changes = [pct_base[i] for i in window if np.isfinite(pct_base[i])]
    best_change = float(min(changes)) if changes else float("nan")

    bor = _best_overall(
        responses, window, b,
        confirmation=confirmation, times_days=times_days,
        confirmation_interval_days=confirmation_interval_days,
        min_sd_duration_days=min_sd_duration_days,
    )
    return ResponseAssessment(
        criteria=criteria,
        measure=measure,
        values=tuple(float(v) for v in values),
        baseline_index=b,
        percent_change_from_baseline=tuple(float(v) for v in pct_base),
        percent_change_from_nadir=tuple(float(v) for v in pct_nadir),
        responses=tuple(responses),
        best_overall_response=bor,
        best_percent_change=best_change,
        progression_index=prog,
        confirmation=bool(confirmation),
        thresholds=dict(thresholds),
    )


def _best_overall(
    responses: list[str],
    window: list[int],
    b: int,
    *,
    confirmation: bool,
    times_days: np.ndarray | None,
    confirmation_interval_days: float,
    min_sd_duration_days: float | None,
) -> str:
    """Best overall response (RECIST 1.1 section 4.4.1 and its table 3)."""

    def sd_ok(i: int) -> bool:
        if min_sd_duration_days is None:
            return True
        return _ge(float(times_days[i] - times_days[b]), min_sd_duration_days)

    def confirmer(i: int) -> str | None:
        for j in window:
            if j <= i or responses[j] == "NE":
                continue
            if times_days is None or _ge(float(times_days[j] - times_days[i]), confirmation_interval_days):
                return responses[j]
        return None

    candidates: list[str] = []
    for i in window:
        r = responses[i]
        if r in ("CR", "PR") and confirmation:
            c = confirmer(i)
            if r == "CR" and c == "CR":
                candidates.append("CR")
                continue
            if c in ("CR", "PR"):          # PR then CR, CR then PR, PR then PR -> PR
                candidates.append("PR")
                continue
            r = "SD"                        # unconfirmed CR/PR counts as SD at best
        if r in ("CR", "PR", "PD", "NE"):
            candidates.append(r)
        elif r == "SD" and sd_ok(i):
            candidates.append("SD")
    if not candidates:
        return "NE"
    return min(candidates, key=_RANK.__getitem__)


def _common_options(
    n, b, new_lesions, confirmation, times_days, confirmation_interval_days, min_sd_duration_days
):
    flags = _flags(new_lesions, n, b)
    t = _times(times_days, n)
    ci = _positive(confirmation_interval_days, "confirmation_interval_days", allow_zero=True)
    if min_sd_duration_days is not None:
        min_sd_duration_days = _positive(min_sd_duration_days, "min_sd_duration_days", allow_zero=True)
        if t is None:
            raise ValidationError("min_sd_duration_days needs times_days (days of each scan)")
    if not isinstance(confirmation, (bool, np.bool_)):
        raise ValidationError(f"confirmation must be True or False, got {confirmation!r}")
    return flags, t, ci, min_sd_duration_days


def _prepare(values, name, baseline_index, new_lesions, confirmation, times_days,
             confirmation_interval_days, min_sd_duration_days):
    """The validated series and the keyword arguments of :func:`_assess` every criterion shares."""
    series = _series(values, name)
    b = _baseline(baseline_index, series.size, series, name)
    flags, t, ci, min_sd = _common_options(
        series.size, b, new_lesions, confirmation, times_days, confirmation_interval_days,
        min_sd_duration_days)
    return series, {"baseline_index": b, "new_lesions": flags, "confirmation": bool(confirmation),
                    "times_days": t, "confirmation_interval_days": ci,
                    "min_sd_duration_days": min_sd}


def _diameter_rules(pr_decrease_percent, pd_increase_percent, pd_min_increase_mm):
    pr = _positive(pr_decrease_percent, "pr_decrease_percent")
    pd = _positive(pd_increase_percent, "pd_increase_percent")
    pd_mm = _positive(pd_min_increase_mm, "pd_min_increase_mm", allow_zero=True)
    if pr >= 100:
        raise ValidationError(f"pr_decrease_percent must be below 100, got {pr}")

    def pr_limit(v, base):
        return _le(v, base * (1.0 - pr / 100.0))

    def pd_limit(v, nadir):
        inc = v - nadir
        return inc > 0 and _ge(inc, nadir * pd / 100.0) and _ge(inc, pd_mm)

    thresholds = {
        "pr_decrease_percent": pr,
        "pd_increase_percent": pd,
        "pd_min_increase_mm": pd_mm,
    }
    return pr_limit, pd_limit, thresholds


# --------------------------------------------------------------------------
# RECIST 1.1 and mRECIST
# --------------------------------------------------------------------------

def recist_response(
    sld_mm_by_time,
    *,
    baseline_index: int = 0,
    new_lesions=None,
    node_short_axes_mm=None,
    times_days=None,
    confirmation: bool = False,
    confirmation_interval_days: float = RECIST_CONFIRMATION_INTERVAL_DAYS,
    min_sd_duration_days: float | None = None,
    pr_decrease_percent: float = RECIST_PR_DECREASE_PERCENT,
    pd_increase_percent: float = RECIST_PD_INCREASE_PERCENT,
    pd_min_increase_mm: float = RECIST_PD_MIN_INCREASE_MM,
    node_normal_short_axis_mm: float = RECIST_NODE_NORMAL_SHORT_AXIS_MM,
) -> ResponseAssessment:
    """RECIST 1.1 target-lesion response per timepoint and best overall response.

    Rules (Eisenhauer et al., Eur J Cancer 2009;45:228, section 4.3.1), applied
    at each timepoint after baseline in this order:

    * **PD** — a new lesion, or the sum of diameters increased by at least
      20 % over the nadir (the smallest sum on study, baseline included, up to
      the previous timepoint) *and* by at least 5 mm.
    * **CR** — all target lesions disappeared: the non-nodal part of the sum is
      0 mm and every target lymph node has a short axis < 10 mm.
    * **PR** — the sum decreased by at least 30 % from baseline.
    * **SD** — otherwise. ``NaN`` in the sum means "not assessed" → ``NE``
      (or ``PD`` if a new lesion was seen).

    The best overall response is the best category recorded from baseline
    until the first PD (section 4.4.1). With ``confirmation=True`` (required by
    RECIST 1.1 for non-randomised trials with response as primary endpoint,
    not for randomised trials) a CR or PR counts only when the next evaluable
    assessment at least ``confirmation_interval_days`` later (or simply the
    next evaluable one when ``times_days`` is not given) shows CR (for CR) or
    CR/PR (for PR; CR then PR gives PR). An unconfirmed CR/PR counts as SD, as
    in table 3 of the paper. With ``min_sd_duration_days`` an SD (confirmed or
    not) counts only when measured at least that long after baseline; the
    paper leaves that interval to the protocol (typically 6–8 weeks), so it
    has no default. Non-target lesions are not assessed here: pass their
    unequivocal progression as ``new_lesions``-style PD, or combine yourself.

    Parameters
    ----------
    sld_mm_by_time : sequence of float, shape (n_timepoints,)
        Sum of longest diameters of the target lesions (mm), lymph nodes by
        their short axis, one per scan; NaN where not assessed.
    baseline_index : int, optional
        Index of the baseline scan; earlier scans are labelled ``"NA"``.
    new_lesions : sequence of bool, optional
        True at timepoints where an unequivocal new lesion appeared.
    node_short_axes_mm : array_like, shape (n_timepoints, n_nodes), optional
        Short axes (mm) of the target lymph nodes, already included in
        ``sld_mm_by_time``. Without it, CR means a sum of 0 mm.
    times_days : sequence of float, optional
        Days of each scan (strictly increasing), for confirmation intervals
        and the SD minimum duration.
    confirmation : bool, optional
        Require confirmation of CR/PR for the best overall response.
    confirmation_interval_days : float, optional
        Minimum interval of the confirming scan (days); RECIST 1.1: 4 weeks.
    min_sd_duration_days : float, optional
        Minimum time after baseline for SD to count (days); needs ``times_days``.
    pr_decrease_percent, pd_increase_percent, pd_min_increase_mm, node_normal_short_axis_mm : float, optional
        The RECIST 1.1 thresholds: 30 %, 20 %, 5 mm, 10 mm.

    Returns
    -------
    ResponseAssessment

    Raises
    ------
    ValidationError
        Empty or non 1-D series, negative diameters, a baseline sum of 0 (no
        measurable disease), mismatched lengths.
    """
    sld, common = _prepare(sld_mm_by_time, "sld_mm_by_time", baseline_index, new_lesions, confirmation,
                          times_days, confirmation_interval_days, min_sd_duration_days)
    n = sld.size
    pr_limit, pd_limit, thr = _diameter_rules(pr_decrease_percent, pd_increase_percent, pd_min_increase_mm)
    node_limit = _positive(node_normal_short_axis_mm, "node_normal_short_axis_mm")
    thr["node_normal_short_axis_mm"] = node_limit

    if node_short_axes_mm is None:
        complete = sld == 0
    else:
        nodes = np.asarray(node_short_axes_mm, dtype=np.float64)
        if nodes.ndim == 1:
            nodes = nodes[:, None]
        if nodes.ndim != 2 or nodes.shape[0] != n:
            raise ValidationError(
                f"node_short_axes_mm must have shape (n_timepoints={n}, n_nodes), got {np.shape(node_short_axes_mm)}"
            )
        if np.any(nodes < 0) or np.any(np.isinf(nodes)):
            raise ValidationError("node_short_axes_mm contains negative or infinite values; short axes must be >= 0 mm")
        node_sum = nodes.sum(axis=1)
        ok = ~np.isnan(sld) & ~np.isnan(node_sum)
        if np.any(node_sum[ok] > sld[ok] * (1 + _REL_TOL) + _REL_TOL):
            raise ValidationError("node_short_axes_mm sum exceeds sld_mm_by_time; the sum must include the nodes")
        non_nodal = np.where(ok, sld - node_sum, np.nan)
        with np.errstate(invalid="ignore"):
            complete = ok & (np.abs(non_nodal) <= _REL_TOL * np.maximum(1.0, sld)) & np.all(
                nodes < node_limit, axis=1
            )

    return _assess(
        sld,
        criteria="RECIST 1.1",
        measure="sum of diameters (mm)",
        is_complete=complete,
        pr_limit=pr_limit,
        pd_limit=pd_limit,
        thresholds=thr,
        **common,
    )


def mrecist_response(
    viable_sld_mm_by_time,
    *,
    baseline_index: int = 0,
    new_lesions=None,
    times_days=None,
    confirmation: bool = False,
    confirmation_interval_days: float = RECIST_CONFIRMATION_INTERVAL_DAYS,
    min_sd_duration_days: float | None = None,
    pr_decrease_percent: float = RECIST_PR_DECREASE_PERCENT,
    pd_increase_percent: float = RECIST_PD_INCREASE_PERCENT,
    pd_min_increase_mm: float = RECIST_PD_MIN_INCREASE_MM,
) -> ResponseAssessment:
    """mRECIST response of hepatocellular carcinoma (viable tumour).

    Lencioni & Llovet, Semin Liver Dis 2010;30:52: the RECIST thresholds applied
    to the sum of the longest diameters of the *viable* (arterially enhancing)
    part of the target lesions. CR is the disappearance of intratumoural
    arterial enhancement in all target lesions (viable sum 0 mm); PR a
    decrease of at least 30 % of the viable sum from baseline; PD an increase
    of at least 20 % over the nadir of the viable sum, or a new lesion; SD
    otherwise. The 2010 paper states the 20 % relative rule; the additional
    5 mm absolute floor is RECIST 1.1's and is applied here for consistency
    with :func:`recist_response` — pass ``pd_min_increase_mm=0`` to drop it.
    Which new liver nodules count as new lesions (≥ 1 cm with the typical
    HCC enhancement pattern, per the paper) is the reader's call, passed as
    ``new_lesions``. Best overall response and confirmation as in
    :func:`recist_response`.

    Parameters
    ----------
    viable_sld_mm_by_time : sequence of float, shape (n_timepoints,)
        Sum of the longest diameters of viable (enhancing) tumour (mm) per scan;
        NaN where not assessed.
    baseline_index, new_lesions, times_days, confirmation, confirmation_interval_days, min_sd_duration_days
        As in :func:`recist_response`.
    pr_decrease_percent, pd_increase_percent, pd_min_increase_mm : float, optional
        30 %, 20 %, 5 mm.

    Returns
    -------
    ResponseAssessment
    """
    sld, common = _prepare(viable_sld_mm_by_time, "viable_sld_mm_by_time", baseline_index, new_lesions, confirmation,
                          times_days, confirmation_interval_days, min_sd_duration_days)
    pr_limit, pd_limit, thr = _diameter_rules(pr_decrease_percent, pd_increase_percent, pd_min_increase_mm)
    return _assess(
        sld,
        criteria="mRECIST",
        measure="sum of viable tumour diameters (mm)",
        is_complete=sld == 0,
        pr_limit=pr_limit,
        pd_limit=pd_limit,
        thresholds=thr,
        **common,
    )


# --------------------------------------------------------------------------
# Volumetric response
# --------------------------------------------------------------------------

def volumetric_response(
    volume_mm3_by_time,
    *,
    baseline_index: int = 0,
    new_lesions=None,
    times_days=None,
    confirmation: bool = False,
    confirmation_interval_days: float = RECIST_CONFIRMATION_INTERVAL_DAYS,
    min_sd_duration_days: float | None = None,
    pr_percent: float = VOLUMETRIC_PR_PERCENT,
    pd_percent: float = VOLUMETRIC_PD_PERCENT,
    pd_min_increase_mm3: float = 0.0,
) -> ResponseAssessment:
    """Response categories from the % change of total tumour volume.

    The default thresholds are the volumes of a sphere whose diameter changes
    by the RECIST 1.1 amounts (V ∝ d³): PR at (1 − 0.30)³ − 1 = −65.7 % from
    baseline, PD at (1 + 0.20)³ − 1 = +72.8 % from the nadir (both inclusive).
    The rounded −65 % / +73 % often quoted are obtained with
    ``pr_percent=-65, pd_percent=73``. CR is a volume of 0 mm³; a new lesion is
    PD. There is no absolute PD floor unless ``pd_min_increase_mm3`` is set
    (no published volumetric counterpart of RECIST's 5 mm exists, so it is
    the user's choice). Best overall response and confirmation as in
    :func:`recist_response`.

    Parameters
    ----------
    volume_mm3_by_time : sequence of float, shape (n_timepoints,)
        Total target tumour volume (mm³) per scan; NaN where not assessed.
    baseline_index, new_lesions, times_days, confirmation, confirmation_interval_days, min_sd_duration_days
        As in :func:`recist_response`.
    pr_percent : float, optional
        Volume change from baseline (%, negative) at or below which PR is called.
    pd_percent : float, optional
        Volume change from the nadir (%, positive) at or above which PD is called.
    pd_min_increase_mm3 : float, optional
        Minimum absolute increase over the nadir for PD (mm³).

    Returns
    -------
    ResponseAssessment
    """
    vol, common = _prepare(volume_mm3_by_time, "volume_mm3_by_time", baseline_index, new_lesions, confirmation,
                          times_days, confirmation_interval_days, min_sd_duration_days)
    try:
        pr = float(pr_percent)
        pd = float(pd_percent)
    except (TypeError, ValueError):
        raise ValidationError("pr_percent and pd_percent must be numbers") from None
    if not (-100.0 < pr < 0.0):
        raise ValidationError(f"pr_percent must be between -100 and 0 (e.g. -65.7), got {pr_percent!r}")
    if not (pd > 0.0 and math.isfinite(pd)):
        raise ValidationError(f"pd_percent must be > 0 (e.g. 72.8), got {pd_percent!r}")
    pd_abs = _positive(pd_min_increase_mm3, "pd_min_increase_mm3", allow_zero=True)

    def pr_limit(v, base):
        return _le(v, base * (1.0 + pr / 100.0))

    def pd_limit(v, nadir):
        inc = v - nadir
        return inc > 0 and _ge(inc, nadir * pd / 100.0) and _ge(inc, pd_abs)

    return _assess(
        vol,
        criteria="volumetric",
        measure="tumour volume (mm3)",
        is_complete=vol == 0,
        pr_limit=pr_limit,
        pd_limit=pd_limit,
        thresholds={"pr_percent": pr, "pd_percent": pd, "pd_min_increase_mm3": pd_abs},
        **common,
    )


def delta_volume(
    volume_mm3_by_time,
    times_days,
    *,
    day: float = 8.0,
    baseline_index: int = 0,
    interpolate: bool = False,
) -> DeltaVolume:
    """Change of tumour volume from baseline to ``day`` days after baseline.

    ``ΔV = V(t_baseline + day) − V(t_baseline)`` (mm³) and ``100 ΔV / V_baseline``
    (%). The default ``day=8`` is the day-8 Δvolume endpoint of the team's
    preclinical protocols (a study choice, not a literature constant: set
    ``day`` to your protocol's). Without ``interpolate`` a scan must lie
    exactly at that day; with it, the volume is interpolated linearly between
    the two scans bracketing it (never extrapolated).

    Parameters
    ----------
    volume_mm3_by_time : sequence of float
        Tumour volume per scan (mm³).
    times_days : sequence of float
        Day of each scan (strictly increasing).
    day : float, optional
        Days after the baseline scan.
    baseline_index : int, optional
        Index of the baseline scan.
    interpolate : bool, optional
        Allow linear interpolation between scans.

    Returns
    -------
    DeltaVolume
    """
    vol = _series(volume_mm3_by_time, "volume_mm3_by_time")
    n = vol.size
    b = _baseline(baseline_index, n, vol, "volume_mm3_by_time")
    t = _times(times_days, n)
    d = _positive(day, "day")
    target = float(t[b]) + d
    rel = t - target
    exact = np.flatnonzero(np.abs(rel) <= 1e-9 * max(1.0, abs(target)))
    if exact.size:
        v = float(vol[exact[0]])
        interpolated = False
    elif interpolate and t[b] < target < t[-1]:
        j = int(np.searchsorted(t, target))
        i = j - 1
        if np.isnan(vol[i]) or np.isnan(vol[j]):
            raise ValidationError(f"volume_mm3_by_time is NaN next to day {d:g}; cannot interpolate")
        v = float(vol[i] + (vol[j] - vol[i]) * (target - t[i]) / (t[j] - t[i]))
        interpolated = True
    else:
        raise ValidationError(
            f"no scan at day {d:g} after baseline; add one or pass interpolate=True (scans bracketing it needed)"
        )
    if np.isnan(v):
        raise ValidationError(f"volume_mm3_by_time is NaN at day {d:g} after baseline")
    base = float(vol[b])
    return DeltaVolume(
        day=d,
        baseline_volume_mm3=base,
        volume_mm3=v,
        delta_volume_mm3=v - base,
        percent_change=100.0 * (v - base) / base,
        interpolated=interpolated,
    )


# --------------------------------------------------------------------------
# Response rates
# --------------------------------------------------------------------------

def _counts(responses) -> dict[str, int]:
    if isinstance(responses, Mapping):
        counts = {c: 0 for c in RESPONSE_CATEGORIES}
        for k, v in responses.items():
            key = str(k).upper()
            if key not in counts:
                raise ValidationError(f"responses has unknown category {k!r}; use {', '.join(RESPONSE_CATEGORIES)}")
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValidationError(f"responses[{k!r}] must be a count (integer >= 0), got {v!r}")
            counts[key] += int(v)
        return counts
    if isinstance(responses, str):
        raise ValidationError("responses must be a sequence of categories or a mapping of counts, not one string")
    counts = {c: 0 for c in RESPONSE_CATEGORIES}
    for r in responses:
        if isinstance(r, ResponseAssessment):
            r = r.best_overall_response
        key = str(r).upper()
        if key not in counts:
            raise ValidationError(f"responses has unknown category {r!r}; use {', '.join(RESPONSE_CATEGORIES)}")
        counts[key] += 1
    return counts


def response_rate(
    responses,
    *,
    include: Sequence[str] = ("CR", "PR"),
    confidence_level: float = 0.95,
    name: str = "ORR",
) -> ResponseRate:
    """Proportion of subjects whose best overall response is in ``include``.

    The exact (Clopper–Pearson) interval inverts two one-sided binomial tests
    (Clopper & Pearson, Biometrika 1934;26:404); computed with
    ``scipy.stats.binomtest(k, n).proportion_ci(method="exact")``. Every
    subject is in the denominator, NE included (RECIST 1.1, Eisenhauer et al.
    2009, section 4.4: non-evaluable patients count as non-responders).

    Parameters
    ----------
    responses : sequence of str or ResponseAssessment, or mapping str -> int
        Best overall response per subject, or counts per category
        (``{"CR": 11, "PR": 3, "SD": 1}``).
    include : sequence of str, optional
        Categories counted as responders.
    confidence_level : float, optional
        Between 0 and 1 (default 0.95).
    name : str, optional
        Label of the rate.

    Returns
    -------
    ResponseRate
    """
    counts = _counts(responses)
    inc = tuple(str(c).upper() for c in include)
    bad = [c for c in inc if c not in _RANK]
    if not inc or bad:
        raise ValidationError(f"include must list categories from {', '.join(RESPONSE_CATEGORIES)}, got {include!r}")
    try:
        cl = float(confidence_level)
    except (TypeError, ValueError):
        raise ValidationError(f"confidence_level must be a number in (0, 1), got {confidence_level!r}") from None
    if not 0.0 < cl < 1.0:
        raise ValidationError(f"confidence_level must be in (0, 1) (e.g. 0.95), got {confidence_level!r}")
    n = sum(counts.values())
    if n == 0:
        raise ValidationError("responses is empty; give at least one subject's best overall response")
    k = sum(counts[c] for c in set(inc))
    ci = _sps.binomtest(k, n).proportion_ci(confidence_level=cl, method="exact")
    return ResponseRate(
        name=str(name),
        counts=counts,
        included=inc,
        n_responders=k,
        n_total=n,
        proportion=k / n,
        ci_low=float(ci.low),
        ci_high=float(ci.high),
        confidence_level=cl,
        method="Clopper-Pearson exact",
    )


def objective_response_rate(responses, *, confidence_level: float = 0.95) -> ResponseRate:
    """Objective response rate, CR + PR, with an exact Clopper–Pearson CI.

    See :func:`response_rate`.
    """
    return response_rate(responses, include=("CR", "PR"), confidence_level=confidence_level, name="ORR")


def disease_control_rate(responses, *, confidence_level: float = 0.95) -> ResponseRate:
    """Disease control rate, CR + PR + SD, with an exact Clopper–Pearson CI.

    See :func:`response_rate`.
    """
    return response_rate(responses, include=("CR", "PR", "SD"), confidence_level=confidence_level, name="DCR")


# --------------------------------------------------------------------------
# Waterfall table
# --------------------------------------------------------------------------

def waterfall_table(
    best_percent_change_by_subject: Mapping[str, Any],
    *,
    responses: Mapping[str, str] | None = None,
    descending: bool = True,
) -> WaterfallTable:
    """Best % change per subject, sorted for a waterfall plot (data only).

    Parameters
    ----------
    best_percent_change_by_subject : mapping subject -> float or ResponseAssessment
        Best (most negative) % change from baseline per subject; a
        :class:`ResponseAssessment` gives its ``best_percent_change`` and
        ``best_overall_response``. NaN/None marks a subject without evaluable
        follow-up: listed in ``not_evaluable``, not plotted.
    responses : mapping subject -> str, optional
        Category per subject for colouring (overrides an assessment's).
    descending : bool, optional
        Largest increase first (the usual left-to-right order); ties are broken
        by subject identifier.

    Returns
    -------
    WaterfallTable
    """
    if not isinstance(best_percent_change_by_subject, Mapping):
        raise ValidationError("best_percent_change_by_subject must be a mapping subject -> % change")
    if len(best_percent_change_by_subject) == 0:
        raise ValidationError("best_percent_change_by_subject is empty; give at least one subject")
    rows = []
    missing = []
    for subject, value in best_percent_change_by_subject.items():
        cat = ""
        if isinstance(value, ResponseAssessment):
            cat = value.best_overall_response
            value = value.best_percent_change
        if responses is not None and subject in responses:
            cat = str(responses[subject]).upper()
            if cat not in _RANK:
                raise ValidationError(f"responses[{subject!r}] = {responses[subject]!r} is not one of {RESPONSE_CATEGORIES}")
        if value is None:
            missing.append(str(subject))
            continue
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise ValidationError(f"best % change of {subject!r} must be a number, got {value!r}") from None
        if math.isnan(x):
            missing.append(str(subject))
            continue
        if not math.isfinite(x) or x < -100.0:
            raise ValidationError(f"best % change of {subject!r} must be finite and >= -100 %, got {value!r}")
        rows.append((x, str(subject), cat))
    sign = -1.0 if descending else 1.0
    rows.sort(key=lambda r: (sign * r[0], r[1]))
    return WaterfallTable(
        subjects=tuple(r[1] for r in rows),
        best_percent_change=tuple(r[0] for r in rows),
        best_overall_response=tuple(r[2] for r in rows),
        not_evaluable=tuple(sorted(missing)),
    )
