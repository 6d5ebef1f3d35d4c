"""Kaplan–Meier survival curves and log-rank tests.

Pure functions on numbers, e.g. time to local tumour recurrence after
ablation (durations in any stated unit, e.g. months) with an event flag
(1 = recurrence observed, 0 = censored at last follow-up) and a group
label (e.g. ablation margin class ``"<5 mm"`` / ``">=5 mm"``).

The estimation is :mod:`lifelines` (Davidson-Pilon C. lifelines: survival
analysis in Python. J Open Source Softw 2019;4:1317); this module validates
the input, handles NaN explicitly and returns frozen dataclasses with
``as_dict()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..core.errors import MissingDependencyError, ValidationError
from .results import TestResult, _json_float

__all__ = ["KaplanMeierResult", "kaplan_meier", "kaplan_meier_by_group", "log_rank_test"]


def _lifelines():
    try:
        import lifelines
    except ImportError:  # pragma: no cover - dependency declared in pyproject
        raise MissingDependencyError("oncomri.stats.survival needs lifelines; pip install 'lifelines>=0.27'") from None
    return lifelines


def _survival_inputs(durations: Any, events: Any, groups: Any = None):
    """Validated (durations, events[, groups]) with rows containing NaN dropped."""
    try:
        t = np.asarray(durations, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValidationError("durations must be a 1-D sequence of numbers") from None
    if t.ndim != 1:
        raise ValidationError(f"durations must be 1-D, got shape {t.shape}")
    if events is None:
        e = np.ones_like(t)
    else:
        try:
            e = np.asarray(events, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValidationError("events must be a 1-D sequence of 0/1 (or bool)") from None
        if e.shape != t.shape:
            raise ValidationError(f"events must have the length of durations ({t.size}), got {e.size}")
    g = None
    if groups is not None:
        g = np.asarray(groups, dtype=object)
        if g.shape != t.shape:
            raise ValidationError(f"groups must have the length of durations ({t.size}), got {g.size}")
    bad_g = np.zeros(t.shape, bool) if g is None else np.array(
        [v is None or (isinstance(v, float) and math.isnan(v)) for v in g], dtype=bool)
    keep = ~(np.isnan(t) | np.isnan(e) | bad_g)
    n_dropped = int(t.size - keep.sum())
    t, e = t[keep], e[keep]
    if g is not None:
        g = np.array([str(v) for v in g[keep]], dtype=object)
    if t.size == 0:
        raise ValidationError("durations has no non-NaN values")
    if np.isinf(t).any() or (t < 0).any():
        raise ValidationError("durations must be finite and >= 0 (time from treatment to event or censoring)")
    if not np.isin(e, (0.0, 1.0)).all():
        raise ValidationError("events must be 0 (censored) or 1 (event observed)")
    return t, e.astype(bool), g, n_dropped


@dataclass(frozen=True)
class KaplanMeierResult:
    """A Kaplan–Meier survival curve.

    Attributes
    ----------
    label : str
        Group name.
    times : tuple of float
        Step times: 0 and every distinct observed time (event or censoring),
        in the unit of the input durations.
    survival : tuple of float
        S(t) just after each time.
    ci_low, ci_high : tuple of float
        Pointwise confidence band of S(t) (Greenwood variance on the
        log(-log) scale, as lifelines computes it).
    ci_level : float
    n_at_risk, n_events, n_censored : tuple of int
        At each time: number at risk just before it, events and censorings at it.
    n, n_events_total : int
        Subjects and events in the group.
    median : float
        Median survival time (Inf if S(t) never falls to 0.5).
    median_ci_low, median_ci_high : float
        CI of the median: the first times at which the lower / upper
        pointwise band falls to 0.5 or below (lifelines
        ``median_survival_times``; the band-inversion idea of Brookmeyer R,
        Crowley J. Biometrics 1982;38:29-41, here with the log(-log) band);
        Inf where the band never reaches 0.5.
    at_times : tuple of float
        Requested report times (e.g. for a numbers-at-risk table).
    survival_at, n_at_risk_at : tuple
        S(t) and number at risk (durations >= t) at ``at_times``.
    n_dropped : int
        Rows dropped because of NaN.
    """

    label: str
    times: tuple[float, ...]
    survival: tuple[float, ...]
    ci_low: tuple[float, ...]
    ci_high: tuple[float, ...]
    ci_level: float
    n_at_risk: tuple[int, ...]
    n_events: tuple[int, ...]
    n_censored: tuple[int, ...]
    n: int
    n_events_total: int
    median: float
    median_ci_low: float
    median_ci_high: float
    at_times: tuple[float, ...] = ()
    survival_at: tuple[float, ...] = ()
    n_at_risk_at: tuple[int, ...] = ()
    n_dropped: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (Inf/NaN become ``None``: median not reached)."""
        f = lambda seq: [_json_float(v) for v in seq]  # noqa: E731
        return {
            "label": self.label,
            "times": f(self.times),
            "survival": f(self.survival),
            "ci_low": f(self.ci_low),
            "ci_high": f(self.ci_high),
            "ci_level": self.ci_level,
            "n_at_risk": list(self.n_at_risk),
            "n_events": list(self.n_events),
            "n_censored": list(self.n_censored),
            "n": self.n,
            "n_events_total": self.n_events_total,
            "median": _json_float(self.median),
            "median_ci_low": _json_float(self.median_ci_low),
            "median_ci_high": _json_float(self.median_ci_high),
            "at_times": f(self.at_times),
            "survival_at": f(self.survival_at),
            "n_at_risk_at": list(self.n_at_risk_at),
            "n_dropped": self.n_dropped,
        }


def _check_level(ci_level: float) -> float:
    level = float(ci_level)
    if not 0.0 < level < 1.0:
        raise ValidationError(f"ci_level must lie strictly between 0 and 1, got {ci_level}")
    return level


def _km(t: np.ndarray, e: np.ndarray, label: str, level: float, at_times, n_dropped: int) -> KaplanMeierResult:
    ll = _lifelines()
    from lifelines.utils import median_survival_times

    kmf = ll.KaplanMeierFitter(alpha=1.0 - level)
    kmf.fit(t, event_observed=e, label="S")
    sf = kmf.survival_function_["S"]
    ci = kmf.confidence_interval_
    table = kmf.event_table
    med_ci = median_survival_times(ci)
    at = tuple(float(v) for v in (at_times or ()))
    if any(not math.isfinite(v) or v < 0 for v in at):
        raise ValidationError("at_times must be finite and >= 0")
    surv_at = tuple(float(v) for v in kmf.survival_function_at_times(list(at)).to_numpy()) if at else ()
    risk_at = tuple(int((t >= v).sum()) for v in at)
    return KaplanMeierResult(
        label=label,
        times=tuple(float(v) for v in sf.index),
        survival=tuple(float(v) for v in sf.to_numpy()),
        ci_low=tuple(float(v) for v in ci.iloc[:, 0].to_numpy()),
        ci_high=tuple(float(v) for v in ci.iloc[:, 1].to_numpy()),
        ci_level=level,
        n_at_risk=tuple(int(v) for v in table["at_risk"].to_numpy()),
        n_events=tuple(int(v) for v in table["observed"].to_numpy()),
        n_censored=tuple(int(v) for v in table["censored"].to_numpy()),
        n=int(t.size),
        n_events_total=int(e.sum()),
        median=float(kmf.median_survival_time_),
        median_ci_low=float(med_ci.iloc[0, 0]),
        median_ci_high=float(med_ci.iloc[0, 1]),
        at_times=at,
        survival_at=surv_at,
        n_at_risk_at=risk_at,
        n_dropped=n_dropped,
    )


def kaplan_meier(
    durations: Sequence[float],
    events: Sequence[int] | None = None,
    *,
    ci_level: float = 0.95,
    label: str = "all",
    at_times: Sequence[float] | None = None,
) -> KaplanMeierResult:
    """Kaplan–Meier estimate of the survival function with confidence band and median.

    Kaplan EL, Meier P. Nonparametric estimation from incomplete
    observations. J Am Stat Assoc 1958;53:457-481. Pointwise CI from
    Greenwood's variance (Greenwood M. Reports on Public Health and Medical
    Subjects 1926;33) on the log(-log S) scale; median CI where that band
    crosses 0.5 (after Brookmeyer & Crowley, Biometrics 1982;38:29-41). Fitted with
    :class:`lifelines.KaplanMeierFitter`.

    Parameters
    ----------
    durations : sequence of float
        Time from treatment to event or censoring (>= 0, unit of your
        choice, e.g. months). Rows with NaN (in durations or events) are dropped.
    events : sequence of 0/1 or bool, optional
        1 = event observed (e.g. local recurrence), 0 = censored. Default: all events.
    ci_level : float
    label : str
    at_times : sequence of float, optional
        Times at which to report S(t) and the number at risk.
    """
    level = _check_level(ci_level)
    t, e, _, nd = _survival_inputs(durations, events)
    return _km(t, e, str(label), level, at_times, nd)


def kaplan_meier_by_group(
    durations: Sequence[float],
    events: Sequence[int] | None,
    groups: Sequence[Any],
    *,
    ci_level: float = 0.95,
    at_times: Sequence[float] | None = None,
) -> dict[str, KaplanMeierResult]:
    """One Kaplan–Meier curve per group (see :func:`kaplan_meier`), keyed by group name (sorted)."""
    level = _check_level(ci_level)
    t, e, g, nd = _survival_inputs(durations, events, groups)
    out = {}
    for name in sorted(set(g)):
        m = g == name
        out[name] = _km(t[m], e[m], name, level, at_times, 0)
    if nd:
        out = {k: KaplanMeierResult(**{**v.__dict__, "n_dropped": nd}) for k, v in out.items()}
    return out


def log_rank_test(
    durations: Sequence[float],
    events: Sequence[int] | None,
    groups: Sequence[Any],
) -> TestResult:
    """Log-rank test of equal survival across two or more groups.

    Mantel N. Evaluation of survival data and two new rank order statistics
    arising in its consideration. Cancer Chemother Rep 1966;50:163-170;
    Peto R, Peto J. J R Stat Soc A 1972;135:185-207. Computed with
    :func:`lifelines.statistics.multivariate_logrank_test` (chi-square with
    k - 1 df; identical to :func:`lifelines.statistics.logrank_test` for two
    groups). Observed and expected events per group are in ``extra``.

    Parameters
    ----------
    durations, events
        As in :func:`kaplan_meier`.
    groups : sequence
        Group label per subject (at least 2 distinct groups, each with at
        least 1 subject; at least 1 event overall).

    Returns
    -------
    TestResult
        ``statistic`` = chi-square, ``df`` = k - 1; there is no effect
        estimate (``estimate`` NaN).
    """
    _lifelines()
    from lifelines.statistics import multivariate_logrank_test

    t, e, g, nd = _survival_inputs(durations, events, groups)
    names = sorted(set(g))
    if len(names) < 2:
        raise ValidationError(f"groups needs at least 2 distinct groups, got {len(names)}")
    if not e.any():
        raise ValidationError("log_rank_test needs at least one observed event (all subjects are censored)")
    res = multivariate_logrank_test(t, g, e)
    # Observed and expected events per group (expected = sum over event times of d * n_g / n).
    event_times = np.unique(t[e])
    at_risk = (t[None, :] >= event_times[:, None])          # (times, subjects)
    died = (t[None, :] == event_times[:, None]) & e[None, :]
    n_all, d_all = at_risk.sum(1), died.sum(1)
    observed, expected = {}, {}
    for name in names:
        m = g == name
        observed[name] = int(e[m].sum())
        expected[name] = float((d_all * at_risk[:, m].sum(1) / n_all).sum())
    return TestResult(
        test="log-rank test",
        n={name: int((g == name).sum()) for name in names},
        estimate=math.nan,
        estimate_name="none (see extra: observed and expected events per group)",
        ci_low=math.nan, ci_high=math.nan, ci_level=0.95,
        statistic=float(res.test_statistic), statistic_name="chi-square",
        df=float(res.degrees_of_freedom),
        p_value=float(res.p_value),
        notes=f"lifelines multivariate_logrank_test; {('dropped %d rows with NaN' % nd) if nd else 'no NaN dropped'}",
        extra={"n_dropped": nd, "observed_events": observed, "expected_events": expected},
    )
