"""Run the analyses of a study spec on the tidy measurement table.

:func:`run_analyses` takes the spec's ``analyses`` list (the pydantic models
of :mod:`oncomri.study.spec`, or any objects with the same attribute names),
the tidy measurement table (one row per session and biomarker: ``subject,
arm, timepoint, time_s, biomarker, value, unit, roi, map, statistic, method,
software_version``) and the :class:`~oncomri.study.design.StudyDesign`, and
returns one :class:`AnalysisResult` per analysis. The statistics themselves
are :mod:`oncomri.stats` (whose docstrings carry the references); this module
only selects the values, computes changes from baseline, groups by arm and
tidies the results. :func:`results_table` flattens the results into one row
per test for the report and the CSV export.

Analysis types
--------------
``paired``
    Per arm, the biomarker at ``to`` against ``from`` in the same subjects:
    paired t-test (Student 1908) or Wilcoxon signed-rank test (Wilcoxon 1945)
    of ``to - from``.
``between_arms``
    One value per subject at ``timepoint`` (optionally the change from
    baseline), compared across arms with one-way ANOVA and Tukey HSD or
    Kruskal–Wallis with Holm-adjusted Mann–Whitney tests.
``correlation``
    ``x`` against ``y`` per subject (each a biomarker at a timepoint, with a
    change), Pearson or Spearman, with R² and the ordinary least-squares line
    ``y = slope * x + intercept`` for the plot.
``mixed_model``
    ``value ~ arm * time + (1 | subject)`` (Laird & Ware, Biometrics
    1982;38:963) with time as a categorical factor whose reference level is
    the earliest timepoint and arm reference the first arm of the spec.
``response``
    RECIST 1.1 (Eisenhauer et al., Eur J Cancer 2009;45:228), mRECIST
    (Lencioni & Llovet, Semin Liver Dis 2010;30:52) or volumetric response
    per subject over its timepoints (baseline first), then ORR and DCR with
    Clopper–Pearson intervals (Biometrika 1934;26:404) per arm and overall,
    and a waterfall table.
``survival``
    Kaplan–Meier curves (Kaplan & Meier, J Am Stat Assoc 1958;53:457) per
    group and the log-rank test (Mantel, Cancer Chemother Rep 1966;50:163),
    from the subjects' covariates. ``group`` is ``arm``, a covariate, or
    ``{biomarker, timepoint, cuts, labels}``: each subject's value of the
    biomarker at the timepoint binned by the cut points (biomarker unit) into
    ``[-inf, c0), [c0, c1), ..., [ck, inf)`` named by ``labels`` (e.g. the
    ablative-margin class AM(−)/AM(0)/AM(+) from ``measure: ablative_margin``);
    subjects without that value are left out and counted in the notes.

Changes from baseline (``change``): ``none`` is the value at the timepoint,
``absolute`` is ``value - baseline value`` of the same subject (unit of the
biomarker), ``percent`` is ``100 (value - baseline) / baseline`` (%).
Subjects lacking either session are dropped and counted in the notes.

Nothing here reads or writes files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import stats
from ..core.errors import OncomriError, ValidationError
from ..stats import TestResult
from .design import StudyDesign

__all__ = [
    "AnalysisResult",
    "CHANGES",
    "RESULTS_TABLE_COLUMNS",
    "biomarker_label",
    "run_analyses",
    "run_analysis",
    "results_table",
]

#: The accepted values of ``change``.
CHANGES = ("none", "absolute", "percent")

#: Columns of :func:`results_table`, in order.
RESULTS_TABLE_COLUMNS = (
    "analysis", "type", "label", "test", "n", "estimate", "estimate_name",
    "ci_low", "ci_high", "ci_level", "statistic", "statistic_name", "df",
    "p_value", "unit", "notes",
)

_TABLE_COLUMNS = ("subject", "arm", "timepoint", "biomarker", "value", "unit")


# --------------------------------------------------------------------------
# Result type
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class AnalysisResult:
    """The outcome of one analysis of the spec.

    Attributes
    ----------
    name : str
        The analysis name (from the spec, or generated ``"<index>_<type>"``).
    type : str
        ``paired``, ``between_arms``, ``correlation``, ``mixed_model``,
        ``response`` or ``survival``.
    title : str
        A readable sentence, e.g. ``"Tumour R2* from baseline to 24h, within
        each arm (paired t-test)"``.
    biomarker : str
        The biomarker analysed (``"x vs y"`` for correlations, ``""`` for
        survival).
    unit : str
        Unit of the values in ``data`` (``"%"`` for percent change; the time
        unit for survival).
    tests : list of (str, TestResult)
        Each test with its label: the arm (paired), ``"all arms"`` and
        ``"ia_nk vs control"`` (between arms; pair ``b vs a`` estimates
        ``b - a``), the coefficient (mixed model), ``"<arm> ORR"`` (response),
        ``"log-rank"`` (survival).
    data : pandas.DataFrame
        The per-subject values used, tidy, for plots; columns per type:
        paired ``subject, arm, value_from, value_to, change``;
        between_arms ``subject, arm, timepoint, value``;
        correlation ``subject, arm, x, y``;
        mixed_model ``subject, arm, timepoint, time_s, value``;
        response ``subject, arm, timepoint, time_s, value,
        percent_change_from_baseline, response``;
        survival ``subject, arm, group, time, event``.
    extra : dict
        Type-specific objects: correlation ``line`` (slope, intercept),
        ``x_label``, ``y_label``, ``x_unit``, ``y_unit``, ``r_squared``;
        response ``assessments`` (subject -> ResponseAssessment), ``best``
        (DataFrame), ``rates`` (DataFrame of ORR/DCR rows), ``waterfall``
        (DataFrame); survival ``km`` (group -> KaplanMeierResult),
        ``time_unit``; mixed_model ``time_as``.
    notes : list of str
        What was dropped and why, choices made.
    error : str or None
        One-line reason when the analysis could not be run (then ``tests``
        is empty).
    """

    name: str
    type: str
    title: str
    biomarker: str = ""
    unit: str = ""
    tests: list[tuple[str, TestResult]] = field(default_factory=list)
    data: pd.DataFrame = field(default_factory=pd.DataFrame)
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the analysis ran (``error`` is None)."""
        return self.error is None


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------

def _s(value: Any, default: str | None = None) -> str | None:
    """A spec value as a plain string (Enum members give their value)."""
    if value is None:
        return default
    value = getattr(value, "value", value)
    return str(value)


def biomarker_label(name: str, *, capital: bool = True) -> str:
    """A readable label of a biomarker name: ``tumour_R2star`` -> ``Tumour R2*``."""
    text = str(name).replace("_", " ")
    for a, b in (("R2star", "R2*"), ("T2star", "T2*"), ("r2star", "R2*"), ("t2star", "T2*")):
        text = text.replace(a, b)
    if capital and text[:1].islower():
        text = text[0].upper() + text[1:]
    elif not capital and text[:1].isupper() and not text[1:2].isupper() and not text[1:2].isdigit():
        text = text[0].lower() + text[1:]
    return text


def _change_phrase(biomarker: str, change: str, timepoint: str, baseline: str, *, capital: bool = True) -> str:
    label = biomarker_label(biomarker, capital=False)
    if change == "absolute":
        text = f"change of {label} from {baseline} to {timepoint}"
    elif change == "percent":
        text = f"percent change of {label} from {baseline} to {timepoint}"
    else:
        text = f"{label} at {timepoint}"
    return text[0].upper() + text[1:] if capital else text


def _check_table(table: pd.DataFrame) -> None:
    if not isinstance(table, pd.DataFrame):
        raise ValidationError("table must be the tidy measurement DataFrame (columns subject, arm, timepoint, biomarker, value, unit, ...)")
    missing = [c for c in _TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise ValidationError(f"measurement table lacks the column(s) {missing}; it must follow the tidy table contract")


def _biomarker_rows(table: pd.DataFrame, biomarker: str) -> pd.DataFrame:
    rows = table[table["biomarker"] == biomarker]
    if rows.empty:
        present = ", ".join(sorted(map(str, table["biomarker"].unique()))) or "none"
        raise ValidationError(
            f"biomarker {biomarker!r} has no rows in the measurement table (biomarkers present: {present}); "
            "check the analysis' biomarker name or why its sessions failed"
        )
    return rows


def _unit_of(table: pd.DataFrame, biomarker: str) -> str:
    units = [str(u) for u in _biomarker_rows(table, biomarker)["unit"].dropna().unique() if str(u)]
    return units[0] if units else ""


def _wide(table: pd.DataFrame, biomarker: str, design: StudyDesign) -> tuple[pd.DataFrame, list[str]]:
    """Subjects (design order) x timepoints (time order) of one biomarker's values (NaN where absent)."""
    rows = _biomarker_rows(table, biomarker)
    notes = []
    known = {s.id for s in design.subjects}
    unknown = sorted(set(map(str, rows["subject"])) - known)
    if unknown:
        notes.append(f"{len(unknown)} subject(s) in the table but not in the design ignored: {', '.join(unknown)}")
    rows = rows[rows["subject"].astype(str).isin(known)]
    dup = rows.duplicated(["subject", "timepoint"], keep=False)
    if dup.any():
        first = rows[dup].iloc[0]
        raise ValidationError(
            f"biomarker {biomarker!r} has several rows for subject {first['subject']!r} at {first['timepoint']!r}; "
            "the measurement table must hold one row per session and biomarker"
        )
    values = pd.to_numeric(rows["value"], errors="coerce")
    wide = (
        pd.DataFrame({"subject": rows["subject"].astype(str), "timepoint": rows["timepoint"].astype(str),
                      "value": values.to_numpy(dtype=float)})
        .pivot(index="subject", columns="timepoint", values="value")
    )
    wide = wide.reindex(index=[s.id for s in design.subjects], columns=list(design.timepoint_names))
    return wide.astype(float), notes


def _arms(arms: Any, design: StudyDesign, where: str) -> list[str]:
    if arms is None:
        return list(design.arm_names)
    names = [str(_s(a)) for a in arms]
    bad = [a for a in names if a not in design.arm_names]
    if bad:
        raise ValidationError(
            f"{where}: arm(s) {bad} are not arms of this study (arms: {', '.join(design.arm_names)})"
        )
    if not names:
        raise ValidationError(f"{where}: arms is empty; list at least one arm or leave it out")
    return names


def _timepoint(tp: Any, design: StudyDesign, where: str) -> str:
    name = _s(tp)
    if name not in design.timepoint_names:
        raise ValidationError(
            f"{where}: {name!r} is not a timepoint of this study (timepoints: {', '.join(design.timepoint_names)})"
        )
    return name


def _change(value: Any) -> str:
    change = _s(value, "none")
    if change not in CHANGES:
        raise ValidationError(f"change must be one of {', '.join(CHANGES)}, got {change!r}")
    return change


def _subject_values(
    table: pd.DataFrame,
    design: StudyDesign,
    *,
    biomarker: str,
    timepoint: str,
    change: str,
    subjects: Sequence[str],
) -> tuple[pd.Series, str, list[str]]:
    """One value per subject (``subjects`` order) at ``timepoint`` with ``change``; unit; notes.

    Subjects lacking the timepoint (or the baseline, for a change) are left
    out and counted in the notes.
    """
    wide, notes = _wide(table, biomarker, design)
    unit = _unit_of(table, biomarker)
    wide = wide.reindex(index=list(subjects))
    value = wide[timepoint]
    if change == "none":
        out = value
        lacking = int(value.isna().sum())
        if lacking:
            notes.append(f"{biomarker} at {timepoint}: {lacking} subject(s) without a value dropped")
    else:
        base = wide[design.baseline]
        both = value.notna() & base.notna()
        lacking = int((~both).sum())
        if lacking:
            notes.append(
                f"{biomarker} change {design.baseline} -> {timepoint}: {lacking} subject(s) "
                f"lacking the {design.baseline} or {timepoint} value dropped"
            )
        if change == "absolute":
            out = value - base
        else:
            zero = both & (base == 0)
            if zero.any():
                notes.append(f"{biomarker}: {int(zero.sum())} subject(s) with a baseline of 0 dropped (percent change undefined)")
            with np.errstate(divide="ignore", invalid="ignore"):
                out = 100.0 * (value - base) / base.where(base != 0)
            unit = "%"
        out = out.where(both)
    return out.dropna(), unit, notes


def _subjects_in(design: StudyDesign, arms: Iterable[str]) -> list[str]:
    arms = set(arms)
    return [s.id for s in design.subjects if s.arm in arms]


def _name(analysis: Any, index: int, kind: str) -> str:
    name = _s(getattr(analysis, "name", None))
    return name if name else f"{index + 1}_{kind}"


# --------------------------------------------------------------------------
# One function per analysis type: (analysis, table, design) -> fields
# --------------------------------------------------------------------------

_PAIRED_TESTS: dict[str, tuple[Callable[..., TestResult], str]] = {
    "t": (stats.paired_t_test, "paired t-test"),
    "wilcoxon": (stats.wilcoxon_signed_rank, "Wilcoxon signed-rank test"),
}


def _paired(a: Any, table: pd.DataFrame, design: StudyDesign) -> dict[str, Any]:
    biomarker = str(_s(a.biomarker))
    t_from = _timepoint(getattr(a, "from_", None), design, "paired.from")
    t_to = _timepoint(getattr(a, "to", None), design, "paired.to")
    test = _s(getattr(a, "test", None), "t")
    if test not in _PAIRED_TESTS:
        raise ValidationError(f"paired.test must be 't' or 'wilcoxon', got {test!r}")
    func, test_name = _PAIRED_TESTS[test]
    arms = _arms(getattr(a, "arms", None), design, "paired.arms")
    title = (f"{biomarker_label(biomarker)} from {t_from} to {t_to}, "
             f"{'within each arm' if len(arms) > 1 else 'in ' + arms[0]} ({test_name})")
    wide, notes = _wide(table, biomarker, design)
    unit = _unit_of(table, biomarker)
    tests, rows = [], []
    for arm in arms:
        subj = _subjects_in(design, [arm])
        w = wide.reindex(index=subj)
        both = w[t_from].notna() & w[t_to].notna()
        lacking = int((~both).sum())
        if lacking:
            notes.append(f"{arm}: {lacking} of {len(subj)} subject(s) lacking {t_from} or {t_to} dropped")
        w = w[both]
        for sid in w.index:
            vf, vt = float(w.at[sid, t_from]), float(w.at[sid, t_to])
            rows.append({"subject": sid, "arm": arm, "value_from": vf, "value_to": vt, "change": vt - vf})
        try:
            res = func(w[t_to].to_numpy(), w[t_from].to_numpy())
            tests.append((arm, replace(res, estimate_name=res.estimate_name.replace("x - y", f"{t_to} - {t_from}"))))
        except OncomriError as exc:
            notes.append(f"{arm}: no test ({exc})")
    if not tests:
        raise ValidationError(f"no arm had enough paired subjects for a {test_name} ({'; '.join(notes) or 'no data'})")
    data = pd.DataFrame(rows, columns=["subject", "arm", "value_from", "value_to", "change"])
    return dict(title=title, biomarker=biomarker, unit=unit, tests=tests, data=data,
                extra={"from": t_from, "to": t_to}, notes=notes)


def _between_arms(a: Any, table: pd.DataFrame, design: StudyDesign) -> dict[str, Any]:
    biomarker = str(_s(a.biomarker))
    tp = _timepoint(getattr(a, "timepoint", None), design, "between_arms.timepoint")
    change = _change(getattr(a, "change", None))
    test = _s(getattr(a, "test", None), "anova")
    if test not in ("anova", "kruskal"):
        raise ValidationError(f"between_arms.test must be 'anova' or 'kruskal', got {test!r}")
    correction = _s(getattr(a, "correction", None), "tukey" if test == "anova" else "holm")
    if test == "kruskal" and correction != "holm":
        raise ValidationError(f"between_arms.correction {correction!r} does not go with kruskal; use holm")
    if correction not in ("tukey", "holm"):
        raise ValidationError(f"between_arms.correction must be 'tukey' or 'holm', got {correction!r}")
    arms = _arms(getattr(a, "arms", None), design, "between_arms.arms")
    values, unit, notes = _subject_values(table, design, biomarker=biomarker, timepoint=tp, change=change,
                                          subjects=_subjects_in(design, arms))
    groups: dict[str, np.ndarray] = {}
    for arm in arms:
        v = values.reindex([s for s in _subjects_in(design, [arm]) if s in values.index]).to_numpy(dtype=float)
        if v.size < 2:
            notes.append(f"arm {arm} left out: {v.size} subject(s) with a value (2 needed)")
            continue
        groups[arm] = v
    if len(groups) < 2:
        raise ValidationError(f"between-arm comparison needs at least 2 arms with >= 2 subjects each, got {len(groups)}")
    if test == "anova":
        comp = stats.one_way_anova(groups, posthoc=correction)
        test_name = f"one-way ANOVA, {'Tukey HSD' if correction == 'tukey' else 'Holm-adjusted Welch t-tests'}"
    else:
        comp = stats.kruskal_wallis(groups, posthoc="holm")
        test_name = "Kruskal-Wallis, Holm-adjusted Mann-Whitney tests"
    names = list(groups)
    tests = [("all arms" if len(names) == len(arms) else ", ".join(names), comp.omnibus)]
    pairs = [(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))]
    for (ga, gb), res in zip(pairs, comp.pairwise):
        tests.append((f"{gb} vs {ga}", res))
    data = pd.DataFrame(
        [{"subject": s, "arm": design.arm_of(s), "timepoint": tp, "value": float(values[s])}
         for s in values.index if design.arm_of(s) in groups],
        columns=["subject", "arm", "timepoint", "value"],
    )
    title = f"{_change_phrase(biomarker, change, tp, design.baseline)}, between arms ({test_name})"
    return dict(title=title, biomarker=biomarker, unit=unit, tests=tests, data=data,
                extra={"timepoint": tp, "change": change}, notes=notes)


def _correlation(a: Any, table: pd.DataFrame, design: StudyDesign) -> dict[str, Any]:
    method = _s(getattr(a, "method", None), "pearson")
    if method not in ("pearson", "spearman"):
        raise ValidationError(f"correlation.method must be 'pearson' or 'spearman', got {method!r}")
    arms_given = getattr(a, "arms", None)
    arms = _arms(arms_given, design, "correlation.arms")
    subjects = _subjects_in(design, arms)
    sides = {}
    notes: list[str] = []
    for key in ("x", "y"):
        spec = getattr(a, key)
        bm = str(_s(spec.biomarker))
        tp = _timepoint(getattr(spec, "timepoint", None), design, f"correlation.{key}.timepoint")
        ch = _change(getattr(spec, "change", None))
        vals, unit, n = _subject_values(table, design, biomarker=bm, timepoint=tp, change=ch, subjects=subjects)
        notes += n
        sides[key] = (bm, tp, ch, vals, unit, _change_phrase(bm, ch, tp, design.baseline))
    xs, ys = sides["x"][3], sides["y"][3]
    common = [s for s in subjects if s in xs.index and s in ys.index]
    dropped = len(set(xs.index) ^ set(ys.index))
    if dropped:
        notes.append(f"{dropped} subject(s) with only one of x and y dropped")
    x = xs.reindex(common).to_numpy(dtype=float)
    y = ys.reindex(common).to_numpy(dtype=float)
    func = stats.pearson_correlation if method == "pearson" else stats.spearman_correlation
    res = func(x, y)
    slope, intercept = (float(v) for v in np.polyfit(x, y, 1))
    where = "all subjects pooled" if arms_given is None else f"within {', '.join(arms)}"
    label = f"{sides['x'][0]} vs {sides['y'][0]}"
    title = (f"{sides['y'][5]} against {sides['x'][5][0].lower() + sides['x'][5][1:]}, {where} "
             f"({'Pearson' if method == 'pearson' else 'Spearman'} correlation)")
    data = pd.DataFrame({"subject": common, "arm": [design.arm_of(s) for s in common], "x": x, "y": y})
    extra = {
        "line": {"slope": slope, "intercept": intercept, "method": "ordinary least squares of y on x"},
        "x_label": sides["x"][5], "y_label": sides["y"][5],
        "x_unit": sides["x"][4], "y_unit": sides["y"][4],
        "r_squared": float(res.extra.get("r_squared", res.estimate ** 2)),
        "method": method,
    }
    return dict(title=title, biomarker=label, unit="", tests=[(where, res)], data=data, extra=extra, notes=notes)


def _coef_label(name: str) -> str:
    """``C(arm)[T.ia_nk]:C(time)[T.24h]`` -> ``arm=ia_nk x time=24h``."""
    if name == "Intercept":
        return "intercept"
    parts = []
    for term in name.split(":"):
        if term.startswith("C(") and ")[T." in term:
            var, level = term[2:].split(")[T.", 1)
            parts.append(f"{var}={level.rstrip(']')}")
        else:
            parts.append(term)
    return " x ".join(parts)


def _mixed_model(a: Any, table: pd.DataFrame, design: StudyDesign) -> dict[str, Any]:
    biomarker = str(_s(a.biomarker))
    tps = getattr(a, "timepoints", None)
    tps = list(design.timepoint_names) if tps is None else [
        _timepoint(t, design, "mixed_model.timepoints") for t in tps]
    tps = [t for t in design.timepoint_names if t in tps]  # time order
    wide, notes = _wide(table, biomarker, design)
    unit = _unit_of(table, biomarker)
    long = wide[tps].stack().rename("value").reset_index()
    long.columns = ["subject", "timepoint", "value"]
    long = long.dropna(subset=["value"])
    long["arm"] = [design.arm_of(s) for s in long["subject"]]
    long["time_s"] = [design.time_of(t) for t in long["timepoint"]]
    arms = [a_ for a_ in design.arm_names if a_ in set(long["arm"])]
    times = [t for t in tps if t in set(long["timepoint"])]
    model_df = pd.DataFrame({
        "value": long["value"].to_numpy(dtype=float),
        # Categorical levels in spec order: reference arm = first arm, reference time = earliest.
        "arm": pd.Categorical(long["arm"], categories=arms),
        "time": pd.Categorical(long["timepoint"], categories=times),
        "subject": long["subject"].to_numpy(),
    })
    res = stats.mixed_model_repeated(model_df, time_as="categorical")
    tests = [(_coef_label(r.estimate_name), r) for r in res]
    if not res[0].extra.get("converged", True):
        notes.append("the mixed model fit did not converge; interpret with care")
    notes.append(f"time as a categorical factor (reference {times[0]}), arm reference {arms[0]}; Wald z-tests")
    data = long[["subject", "arm", "timepoint", "time_s", "value"]].reset_index(drop=True)
    title = f"{biomarker_label(biomarker)} over time by arm (linear mixed model, time categorical)"
    return dict(title=title, biomarker=biomarker, unit=unit, tests=tests, data=data,
                extra={"time_as": "categorical", "reference_arm": arms[0], "reference_time": times[0]},
                notes=notes)


_CRITERIA = {
    "recist": (stats.recist_response, "RECIST 1.1", ("longest_diameter", "short_axis")),
    "mrecist": (stats.mrecist_response, "mRECIST", ("longest_diameter", "short_axis")),
    "volumetric": (stats.volumetric_response, "Volumetric", ("volume",)),
}


def _rate_result(rate: Any, label: str) -> TestResult:
    return TestResult(
        test=f"{rate.name} ({rate.method})",
        n={label: int(rate.n_total)},
        estimate=float(rate.proportion),
        estimate_name=f"{rate.name}: {'+'.join(rate.included)} / all ({rate.n_responders}/{rate.n_total})",
        ci_low=float(rate.ci_low), ci_high=float(rate.ci_high), ci_level=float(rate.confidence_level),
        statistic=math.nan, statistic_name="", df=None, p_value=math.nan,
        notes="Clopper-Pearson exact CI (Biometrika 1934;26:404); NE in the denominator",
        extra={"counts": dict(rate.counts), "n_responders": int(rate.n_responders)},
    )


def _response(a: Any, table: pd.DataFrame, design: StudyDesign) -> dict[str, Any]:
    criteria = _s(getattr(a, "criteria", None))
    if criteria not in _CRITERIA:
        raise ValidationError(f"response.criteria must be recist, mrecist or volumetric, got {criteria!r}")
    func, crit_name, measures = _CRITERIA[criteria]
    biomarker = str(_s(a.biomarker))
    arms = _arms(getattr(a, "arms", None), design, "response.arms")
    wide, notes = _wide(table, biomarker, design)
    unit = _unit_of(table, biomarker)
    rows = _biomarker_rows(table, biomarker)
    if "statistic" in rows.columns:
        kinds = {str(v) for v in rows["statistic"].dropna().unique()}
        if kinds and not kinds & set(measures):
            notes.append(f"{crit_name} expects a {' or '.join(measures)} biomarker; {biomarker} is {', '.join(sorted(kinds))}")
    base_t = design.time_of(design.baseline)
    tps = [design.baseline] + [t.name for t in design.timepoints if t.time_s > base_t]
    if len(tps) < 2:
        raise ValidationError(f"response needs at least one timepoint after the baseline {design.baseline!r}")
    if criteria != "volumetric":
        notes.append(f"{biomarker} taken as the sum of longest diameters of a single target lesion")
    assessments, per_tp, best = {}, [], []
    for sid in _subjects_in(design, arms):
        series = wide.loc[sid, tps].to_numpy(dtype=float)
        if not np.isfinite(series[0]) or series[0] <= 0:
            notes.append(f"{sid}: no measurable {biomarker} at {design.baseline}; not assessed")
            continue
        if not np.isfinite(series[1:]).any():
            notes.append(f"{sid}: no {biomarker} after {design.baseline}; best response NE")
        ra = func(series, baseline_index=0)
        assessments[sid] = ra
        arm = design.arm_of(sid)
        for i, tp in enumerate(tps):
            per_tp.append({"subject": sid, "arm": arm, "timepoint": tp, "time_s": design.time_of(tp),
                           "value": series[i], "percent_change_from_baseline": ra.percent_change_from_baseline[i],
                           "response": ra.responses[i]})
        best.append({"subject": sid, "arm": arm, "best_overall_response": ra.best_overall_response,
                     "best_percent_change": ra.best_percent_change})
    if not assessments:
        raise ValidationError(f"no subject has a measurable {biomarker} at {design.baseline}; nothing to assess")
    best_df = pd.DataFrame(best)
    rate_rows, tests = [], []
    groups = [(arm, best_df[best_df["arm"] == arm]) for arm in arms] + [("all", best_df)]
    for label, sub in groups:
        if sub.empty:
            notes.append(f"{label}: no assessed subject; no ORR/DCR")
            continue
        for rate in (stats.objective_response_rate(list(sub["best_overall_response"])),
                     stats.disease_control_rate(list(sub["best_overall_response"]))):
            row = {"group": label, "rate": rate.name, "n_responders": rate.n_responders, "n_total": rate.n_total,
                   "proportion": rate.proportion, "ci_low": rate.ci_low, "ci_high": rate.ci_high,
                   "ci_level": rate.confidence_level, "method": rate.method}
            row.update({c: int(rate.counts[c]) for c in stats.RESPONSE_CATEGORIES})
            rate_rows.append(row)
            tests.append((f"{label} {rate.name}", _rate_result(rate, label)))
    wf = stats.waterfall_table({sid: ra for sid, ra in assessments.items()})
    waterfall = pd.DataFrame({
        "subject": list(wf.subjects),
        "arm": [design.arm_of(s) for s in wf.subjects],
        "best_percent_change": list(wf.best_percent_change),
        "best_overall_response": list(wf.best_overall_response),
    })
    if wf.not_evaluable:
        notes.append(f"not in the waterfall (no evaluable follow-up): {', '.join(wf.not_evaluable)}")
    data = pd.DataFrame(per_tp, columns=["subject", "arm", "timepoint", "time_s", "value",
                                         "percent_change_from_baseline", "response"])
    title = (f"{crit_name} response of {biomarker_label(biomarker, capital=False)}, per arm "
             "(ORR and DCR with Clopper-Pearson CIs)")
    extra = {"criteria": criteria, "criteria_name": crit_name, "assessments": assessments, "best": best_df,
             "rates": pd.DataFrame(rate_rows), "waterfall": waterfall, "timepoints": tps}
    return dict(title=title, biomarker=biomarker, unit=unit, tests=tests, data=data, extra=extra, notes=notes)


def _as_event(value: Any) -> float:
    if value is None:
        return math.nan
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("true", "yes", "1", "event"):
            return 1.0
        if v in ("false", "no", "0", "censored"):
            return 0.0
        raise ValidationError(f"event covariate value {value!r} is not a boolean; use true (event) or false (censored)")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValidationError(f"event covariate value {value!r} is not a boolean") from None
    return f


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)


def _biomarker_groups(spec: Any, table: pd.DataFrame, design: StudyDesign,
                      notes: list[str]) -> tuple[dict[str, str], dict[str, float], list[str], str, str]:
    """Group of each subject from a biomarker value binned by cut points.

    Returns ``(subject -> label, subject -> value, labels, unit, description)``;
    intervals ``[-inf, c0), [c0, c1), ..., [ck, inf)``.
    """
    biomarker = str(_s(_get(spec, "biomarker"), ""))
    timepoint = _timepoint(_get(spec, "timepoint"), design, "survival.group.timepoint")
    try:
        cuts = [float(c) for c in (_get(spec, "cuts") or [])]
    except (TypeError, ValueError):
        raise ValidationError(f"survival.group.cuts must be numbers, got {_get(spec, 'cuts')!r}") from None
    labels = [str(x) for x in (_get(spec, "labels") or [])]
    if not biomarker:
        raise ValidationError("survival.group needs a biomarker; add group.biomarker")
    if not cuts or not all(math.isfinite(c) for c in cuts) or any(b <= a for a, b in zip(cuts, cuts[1:])):
        raise ValidationError(f"survival.group.cuts {cuts} must be finite and strictly increasing; fix them")
    if len(labels) != len(cuts) + 1 or len(set(labels)) != len(labels):
        raise ValidationError(f"survival.group.labels: give {len(cuts) + 1} distinct labels for {len(cuts)} cut(s), "
                              f"got {labels}")
    values, unit, vnotes = _subject_values(table, design, biomarker=biomarker, timepoint=timepoint,
                                           change="none", subjects=[s.id for s in design.subjects])
    notes.extend(vnotes)
    index = np.searchsorted(np.asarray(cuts), values.to_numpy(float), side="right")
    groups = {str(sid): labels[int(i)] for sid, i in zip(values.index, index)}
    u = f" {unit}" if unit else ""
    c = [f"{x:g}" for x in cuts]
    parts = [f"{labels[0]}: < {c[0]}{u}"]
    parts += [f"{labels[i]}: {c[i - 1]} to < {c[i]}{u}" for i in range(1, len(cuts))]
    parts.append(f"{labels[-1]}: >= {c[-1]}{u}")
    notes.append(f"groups from {biomarker} at {timepoint}: " + "; ".join(parts))
    return groups, {str(k): float(v) for k, v in values.items()}, labels, unit, f"{biomarker} at {timepoint}"


def _survival(a: Any, table: pd.DataFrame, design: StudyDesign) -> dict[str, Any]:
    time_key = str(_s(a.time))
    event_key = str(_s(a.event))
    group_spec = getattr(a, "group", None)
    time_unit = _s(getattr(a, "time_unit", None), "")
    notes: list[str] = []
    by_value = isinstance(group_spec, Mapping) or hasattr(group_spec, "cuts")
    binned: dict[str, str] = {}
    extra_group: dict[str, Any] = {}
    if by_value:
        binned, values, labels, unit, group_key = _biomarker_groups(group_spec, table, design, notes)
        extra_group = {"group_biomarker": str(_get(group_spec, "biomarker")),
                       "group_timepoint": str(_get(group_spec, "timepoint")),
                       "group_cuts": [float(c) for c in _get(group_spec, "cuts")],
                       "group_labels": labels, "group_unit": unit, "group_values": values}
    else:
        group_key = _s(group_spec, "arm")
    rows = []
    for s in design.subjects:
        cov = dict(s.covariates or {})
        if by_value:
            group = binned.get(s.id)
        else:
            group = s.arm if group_key == "arm" else cov.get(group_key)
        t = cov.get(time_key)
        e = cov.get(event_key)
        if t is None or e is None or group is None:
            lacking = [k for k, v in ((time_key, t), (event_key, e), (group_key, group)) if v is None]
            notes.append(f"{s.id}: no {', '.join(lacking)}; left out")
            continue
        try:
            t = float(t)
        except (TypeError, ValueError):
            raise ValidationError(f"subjects.{s.id}.covariates.{time_key} must be a number, got {t!r}") from None
        rows.append({"subject": s.id, "arm": s.arm, "group": str(group), "time": t, "event": bool(_as_event(e))})
    if not rows:
        raise ValidationError(f"no subject has the covariates {time_key!r} and {event_key!r}; add them under subjects.<id>.covariates")
    data = pd.DataFrame(rows, columns=["subject", "arm", "group", "time", "event"])
    km = stats.kaplan_meier_by_group(data["time"].to_numpy(), data["event"].to_numpy(dtype=float),
                                     data["group"].to_numpy())
    if by_value:  # label order (low to high values)
        km = {g: km[g] for g in extra_group["group_labels"] if g in km}
    elif group_key == "arm":  # spec order of arms
        km = {a_: km[a_] for a_ in design.arm_names if a_ in km}
    tests = []
    if data["group"].nunique() >= 2:
        tests.append(("log-rank", stats.log_rank_test(data["time"].to_numpy(), data["event"].to_numpy(dtype=float),
                                                      data["group"].to_numpy())))
    else:
        notes.append("one group only: Kaplan-Meier curve without a log-rank test")
    if by_value:
        group_label = (f"{biomarker_label(extra_group['group_biomarker'], capital=False)} class at "
                       f"{extra_group['group_timepoint']}")
    else:
        group_label = "arm" if group_key == "arm" else biomarker_label(group_key, capital=False)
    title = f"{biomarker_label(time_key)} by {group_label} (Kaplan-Meier, log-rank test)"
    return dict(title=title, biomarker="", unit=time_unit, tests=tests, data=data,
                extra={"km": km, "time_unit": time_unit, "time": time_key, "event": event_key, "group": group_key,
                       **extra_group},
                notes=notes)


_RUNNERS: dict[str, Callable[[Any, pd.DataFrame, StudyDesign], dict[str, Any]]] = {
    "paired": _paired,
    "between_arms": _between_arms,
    "correlation": _correlation,
    "mixed_model": _mixed_model,
    "response": _response,
    "survival": _survival,
}


def _fallback_title(a: Any, kind: str) -> str:
    bm = getattr(a, "biomarker", None)
    return f"{kind.replace('_', ' ')} analysis" + (f" of {biomarker_label(str(_s(bm)), capital=False)}" if bm else "")


def run_analysis(analysis: Any, table: pd.DataFrame, *, design: StudyDesign, index: int = 0) -> AnalysisResult:
    """Run one analysis; failures become an :class:`AnalysisResult` with ``error`` set.

    Parameters
    ----------
    analysis : spec analysis model
        An object with ``type`` and the attributes of its type (see the module docstring).
    table : pandas.DataFrame
        The tidy measurement table.
    design : StudyDesign
    index : int
        Position in the spec (for the generated name).
    """
    kind = str(_s(getattr(analysis, "type", None), ""))
    name = _name(analysis, index, kind or "analysis")
    try:
        runner = _RUNNERS.get(kind)
        if runner is None:
            raise ValidationError(f"unknown analysis type {kind!r}; use one of {', '.join(_RUNNERS)}")
        _check_table(table)
        fields = runner(analysis, table, design)
    except Exception as exc:  # an analysis never takes the others down with it
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not isinstance(exc, (OncomriError, KeyError, ValueError)):
            msg = f"{type(exc).__name__}: {msg}"
        bm = getattr(analysis, "biomarker", None)
        return AnalysisResult(name=name, type=kind, title=_fallback_title(analysis, kind),
                              biomarker=str(_s(bm, "")), error=msg)
    return AnalysisResult(name=name, type=kind, **fields)


def run_analyses(analyses: Sequence[Any] | None, table: pd.DataFrame, *, design: StudyDesign) -> list[AnalysisResult]:
    """Run every analysis of the spec on the measurement table.

    Parameters
    ----------
    analyses : sequence of spec analysis models, or None
        The spec's ``analyses`` list (objects with ``type``, ``name`` and the
        attributes of their type; ``from`` is ``from_``).
    table : pandas.DataFrame
        The tidy measurement table.
    design : StudyDesign
        Arms, timepoints, baseline and subjects (with covariates).

    Returns
    -------
    list of AnalysisResult
        One per analysis, in order. An analysis that cannot be run (too few
        subjects, unknown biomarker, ...) gives a result with ``error`` set
        instead of raising, so the others go on.
    """
    return [run_analysis(a, table, design=design, index=i) for i, a in enumerate(analyses or ())]


# --------------------------------------------------------------------------
# Tidy table of every test
# --------------------------------------------------------------------------

def _estimate_unit(result: AnalysisResult, tr: TestResult) -> str:
    name = tr.estimate_name.lower()
    if result.type == "response":
        return "fraction"
    if result.type in ("correlation", "survival") or "squared" in name:
        return ""
    return result.unit


def _n_text(n: Mapping[str, int]) -> str:
    return "; ".join(f"{k}={int(v)}" for k, v in n.items())


def _df_value(df: Any) -> Any:
    if df is None:
        return math.nan
    if isinstance(df, (tuple, list)):
        return ", ".join(f"{float(d):g}" for d in df)
    return float(df)


def results_table(results: Sequence[AnalysisResult]) -> pd.DataFrame:
    """One tidy row per test of every result (and one row per failed analysis).

    Columns (:data:`RESULTS_TABLE_COLUMNS`): ``analysis, type, label, test,
    n`` (text ``"group=count; ..."``), ``estimate, estimate_name, ci_low,
    ci_high, ci_level, statistic, statistic_name, df`` (a number, or
    ``"k-1, N-k"`` text for F and q), ``p_value, unit`` (of the estimate:
    the biomarker unit, ``%``, ``fraction`` for response rates, ``""`` for
    unitless estimates), ``notes``. A failed analysis gives a row whose
    ``test`` is empty and whose ``notes`` start with ``error:``.
    """
    rows = []
    for r in results:
        if r.error is not None:
            rows.append({"analysis": r.name, "type": r.type, "label": "", "test": "", "n": "",
                         "estimate": math.nan, "estimate_name": "", "ci_low": math.nan, "ci_high": math.nan,
                         "ci_level": math.nan, "statistic": math.nan, "statistic_name": "", "df": math.nan,
                         "p_value": math.nan, "unit": r.unit, "notes": f"error: {r.error}"})
            continue
        for label, tr in r.tests:
            rows.append({
                "analysis": r.name, "type": r.type, "label": label, "test": tr.test, "n": _n_text(tr.n),
                "estimate": float(tr.estimate), "estimate_name": tr.estimate_name,
                "ci_low": float(tr.ci_low), "ci_high": float(tr.ci_high), "ci_level": float(tr.ci_level),
                "statistic": float(tr.statistic), "statistic_name": tr.statistic_name, "df": _df_value(tr.df),
                "p_value": float(tr.p_value), "unit": _estimate_unit(r, tr), "notes": tr.notes,
            })
    return pd.DataFrame(rows, columns=list(RESULTS_TABLE_COLUMNS))
