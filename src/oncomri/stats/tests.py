"""Group comparisons, correlations and a repeated-measures mixed model.

Pure functions on numbers: every function takes 1-D sequences (or, for the
mixed model, a tidy long table) and returns :class:`~oncomri.stats.results.TestResult`
objects (test name, n per group, estimate with confidence interval,
statistic, degrees of freedom, p-value). Typical use: R2* (1/s) of a tumour
ROI at baseline and 24 h after labelled-cell injection within one arm
(paired tests), or between two arms (two-sample tests), or across several
arms (one-way tests with pairwise comparisons).

Conventions
-----------
* Two-sample and paired functions report ``x - y`` (as scipy and R do): pass
  the follow-up / treated sample as ``x`` and the baseline / control as ``y``.
* In pairwise comparisons after a one-way test, the pair ``(a, b)`` (group
  order as given) reports ``b - a`` (as R's ``TukeyHSD``).
* NaN handling is explicit: paired functions drop every *pair* with a NaN in
  either member, the others drop NaN values per group; how many were dropped
  is written in ``notes`` and in ``extra["n_dropped"]``. Infinite values are
  an error.

The computations are scipy.stats / statsmodels; this module only validates,
adds the confidence intervals and tidies the output. References are in the
docstring of each function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats as _st

from ..core.errors import ValidationError
from .results import TestResult

__all__ = [
    "GroupComparison",
    "paired_t_test",
    "wilcoxon_signed_rank",
    "welch_t_test",
    "mann_whitney",
    "one_way_anova",
    "kruskal_wallis",
    "pearson_correlation",
    "spearman_correlation",
    "mixed_model_repeated",
]

_ALTERNATIVES = ("two-sided", "less", "greater")


# --------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------

def _vector(values: Any, name: str) -> np.ndarray:
    """1-D float64 array; NaN allowed (handled by the caller), Inf not."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValidationError(f"{name} must be a 1-D sequence of numbers") from None
    if arr.ndim != 1:
        raise ValidationError(f"{name} must be 1-D, got shape {arr.shape}; flatten it first")
    if np.isinf(arr).any():
        raise ValidationError(f"{name} contains Inf; remove or replace infinite values")
    return arr


def _check_level(ci_level: float) -> float:
    level = float(ci_level)
    if not 0.0 < level < 1.0:
        raise ValidationError(f"ci_level must lie strictly between 0 and 1, got {ci_level}")
    return level


def _check_alternative(alternative: str) -> str:
    if alternative not in _ALTERNATIVES:
        raise ValidationError(f"alternative must be one of {_ALTERNATIVES}, got {alternative!r}")
    return alternative


def _need(n: int, minimum: int, what: str) -> None:
    if n < minimum:
        raise ValidationError(f"{what} needs at least {minimum} non-NaN values, got {n}")


def _paired(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray, int]:
    a, b = _vector(x, "x"), _vector(y, "y")
    if a.shape != b.shape:
        raise ValidationError(
            f"x and y must have the same length for a paired test, got {a.size} and {b.size}"
        )
    keep = ~(np.isnan(a) | np.isnan(b))
    return a[keep], b[keep], int(a.size - keep.sum())


def _drop_nan(values: np.ndarray) -> tuple[np.ndarray, int]:
    keep = ~np.isnan(values)
    return values[keep], int(values.size - keep.sum())


def _dropped_note(n_dropped: int, unit: str) -> str:
    return f"dropped {n_dropped} {unit} with NaN" if n_dropped else "no NaN dropped"


def _groups(groups: Any, minimum: int) -> tuple[list[str], list[np.ndarray], dict[str, int]]:
    if isinstance(groups, Mapping):
        items = [(str(k), v) for k, v in groups.items()]
    else:
        try:
            items = [(str(i), v) for i, v in enumerate(groups)]
        except TypeError:
            raise ValidationError("groups must be a mapping name -> values or a sequence of sequences") from None
    if len(items) < 2:
        raise ValidationError(f"groups needs at least 2 groups, got {len(items)}")
    names, arrays, dropped = [], [], {}
    for name, values in items:
        arr, nd = _drop_nan(_vector(values, f"groups[{name!r}]"))
        _need(arr.size, minimum, f"group {name!r}")
        names.append(name)
        arrays.append(arr)
        dropped[name] = nd
    return names, arrays, dropped


# --------------------------------------------------------------------------
# Exact / approximate rank distributions for Hodges–Lehmann intervals
# --------------------------------------------------------------------------

def _signed_rank_pmf(n: int) -> np.ndarray:
    """Null distribution of the Wilcoxon signed-rank statistic W+ (no ties), 0..n(n+1)/2."""
    pmf = np.ones(1)
    for i in range(1, n + 1):
        new = np.zeros(pmf.size + i)
        new[: pmf.size] += pmf
        new[i:] += pmf
        pmf = new / 2.0
    return pmf


def _rank_sum_pmf(m: int, n: int) -> np.ndarray:
    """Null distribution of the Mann–Whitney U (no ties), 0..m*n.

    Recursion P_{i,j}(u) = i/(i+j) P_{i-1,j}(u-j) + j/(i+j) P_{i,j-1}(u)
    (Mann & Whitney, Ann Math Stat 1947;18:50).
    """
    table = [[np.ones(1) for _ in range(n + 1)] for _ in range(m + 1)]
    for i in range(1, m + 1):
        for j in range(1, n + 1):
            new = np.zeros(i * j + 1)
            a = table[i - 1][j]
            new[j : j + a.size] += i / (i + j) * a
            b = table[i][j - 1]
            new[: b.size] += j / (i + j) * b
            table[i][j] = new
    return table[m][n]


def _quantile(pmf: np.ndarray | None, p: float, total: int, sd: float) -> int:
    """Smallest q with P(stat <= q) >= p (exact), or its normal approximation."""
    if pmf is not None:
        return int(np.searchsorted(np.cumsum(pmf), p - 1e-12))
    return int(math.ceil(total / 2.0 + _st.norm.ppf(p) * sd - 0.5))


def _order_stat_ci(
    sorted_vals: np.ndarray, pmf: np.ndarray | None, sd: float, level: float, alternative: str
) -> tuple[float, float]:
    """Distribution-free CI from order statistics of Walsh averages / pairwise differences.

    The interval of Hollander & Wolfe (Nonparametric Statistical Methods,
    Wiley 1999, sections 3.2 and 4.3), with the indexing of R's
    ``wilcox.test``: ``[D_(q), D_(M + 1 - q)]`` where ``q`` is the
    ``alpha/2`` quantile of the null distribution (``alpha`` for one-sided).
    """
    total = sorted_vals.size
    alpha = 1.0 - level
    a = alpha / 2.0 if alternative == "two-sided" else alpha
    q = max(1, _quantile(pmf, a, total, sd))
    q = min(q, total)
    low, high = float(sorted_vals[q - 1]), float(sorted_vals[total - q])
    if alternative == "greater":
        return low, math.inf
    if alternative == "less":
        return -math.inf, high
    return low, high


# --------------------------------------------------------------------------
# Paired tests
# --------------------------------------------------------------------------

def paired_t_test(
    x: Sequence[float],
    y: Sequence[float],
    *,
    alternative: str = "two-sided",
    ci_level: float = 0.95,
) -> TestResult:
    """Paired Student t-test of the mean difference ``x - y``.

    E.g. ``x`` = R2* (1/s) at 24 h, ``y`` = R2* at baseline, one value per
    animal. Pairs with a NaN in either member are dropped.

    Student. The probable error of a mean. Biometrika 1908;6:1-25.
    Computed with :func:`scipy.stats.ttest_rel`.

    Parameters
    ----------
    x, y : sequence of float
        Paired measurements, same length, same unit (the estimate is in it).
    alternative : {"two-sided", "less", "greater"}
        Alternative hypothesis on the mean of ``x - y``.
    ci_level : float
        Confidence level of the interval (one-sided for one-sided tests).

    Returns
    -------
    TestResult
        ``estimate`` = mean of ``x - y``, ``statistic`` = t, ``df`` = n - 1.
    """
    alternative, level = _check_alternative(alternative), _check_level(ci_level)
    a, b, nd = _paired(x, y)
    _need(a.size, 2, "paired_t_test (pairs)")
    d = a - b
    if np.ptp(d) == 0.0:
        raise ValidationError("paired_t_test: all differences x - y are identical (zero variance); the t statistic is undefined")
    res = _st.ttest_rel(a, b, alternative=alternative)
    ci = res.confidence_interval(confidence_level=level)
    return TestResult(
        test="paired t-test",
        n={"pairs": int(a.size)},
        estimate=float(d.mean()),
        estimate_name="mean difference (x - y)",
        ci_low=float(ci.low),
        ci_high=float(ci.high),
        ci_level=level,
        statistic=float(res.statistic),
        statistic_name="t",
        df=float(res.df),
        p_value=float(res.pvalue),
        alternative=alternative,
        notes=f"t-distribution CI of the mean difference; {_dropped_note(nd, 'pairs')}",
        extra={"n_dropped": nd, "sd_difference": float(d.std(ddof=1))},
    )


def wilcoxon_signed_rank(
    x: Sequence[float],
    y: Sequence[float],
    *,
    alternative: str = "two-sided",
    ci_level: float = 0.95,
    zero_method: str = "wilcox",
    correction: bool = True,
) -> TestResult:
    """Wilcoxon signed-rank test of the paired differences ``x - y``.

    Wilcoxon F. Individual comparisons by ranking methods. Biometrics Bull
    1945;1:80-83. The p-value is :func:`scipy.stats.wilcoxon` (exact for
    n < 50 without ties or zeros, else the tie-corrected normal
    approximation, with continuity correction if ``correction``; R's rule). The estimate is the
    Hodges–Lehmann pseudo-median (median of the Walsh averages of the
    non-zero differences; Hodges & Lehmann, Ann Math Stat 1963;34:598) with
    the distribution-free interval of Hollander & Wolfe (Nonparametric
    Statistical Methods, 2nd ed., Wiley 1999, section 3.2): exact quantiles
    when the p-value is exact, normal-approximation quantiles (without tie
    correction, approximate coverage) otherwise.

    Parameters
    ----------
    x, y : sequence of float
        Paired measurements, same length. Pairs with NaN are dropped.
    alternative : {"two-sided", "less", "greater"}
    ci_level : float
    zero_method : {"wilcox", "pratt"}
        ``"wilcox"`` discards zero differences (R's convention), ``"pratt"``
        ranks them and then drops their ranks.
    correction : bool
        Continuity correction in the normal approximation.

    Returns
    -------
    TestResult
        ``statistic`` = W+ (sum of the ranks of the positive differences,
        R's ``V``).
    """
    alternative, level = _check_alternative(alternative), _check_level(ci_level)
    if zero_method not in ("wilcox", "pratt"):
        raise ValidationError(f"zero_method must be 'wilcox' or 'pratt', got {zero_method!r}")
    a, b, nd = _paired(x, y)
    d = a - b
    nonzero = d[d != 0.0]
    _need(nonzero.size, 2, "wilcoxon_signed_rank (non-zero differences)")
    n = nonzero.size
    ties = np.unique(np.abs(nonzero)).size < n
    has_zero = nonzero.size < d.size
    exact = n < 50 and not ties and not has_zero  # R's wilcox.test rule
    res = _st.wilcoxon(a, b, zero_method=zero_method, correction=correction,
                       alternative=alternative, method="exact" if exact else "approx")
    ranked = d if zero_method == "pratt" else nonzero
    ranks = _st.rankdata(np.abs(ranked))
    w_plus = float(ranks[ranked > 0].sum())
    i, j = np.triu_indices(n)
    walsh = np.sort((nonzero[i] + nonzero[j]) / 2.0)
    pmf = _signed_rank_pmf(n) if exact else None
    sd = math.sqrt(n * (n + 1) * (2 * n + 1) / 24.0)
    lo, hi = _order_stat_ci(walsh, pmf, sd, level, alternative)
    method = "exact" if exact else "normal approximation" + (" with continuity correction" if correction else "")
    return TestResult(
        test="Wilcoxon signed-rank test",
        n={"pairs": int(a.size), "non_zero_pairs": int(n)},
        estimate=float(np.median(walsh)),
        estimate_name="Hodges-Lehmann pseudo-median of x - y",
        ci_low=lo,
        ci_high=hi,
        ci_level=level,
        statistic=w_plus,
        statistic_name="W+",
        df=None,
        p_value=float(res.pvalue),
        alternative=alternative,
        notes=(f"p-value {method}; CI {'exact' if exact else 'approximate (normal quantiles)'} "
               f"from Walsh averages; zero_method={zero_method}; {_dropped_note(nd, 'pairs')}"),
        extra={"n_dropped": nd, "n_zero_differences": int(d.size - n), "exact": bool(exact)},
    )


# --------------------------------------------------------------------------
# Two independent samples
# --------------------------------------------------------------------------

def welch_t_test(
    x: Sequence[float],
    y: Sequence[float],
    *,
    alternative: str = "two-sided",
    ci_level: float = 0.95,
    labels: tuple[str, str] = ("x", "y"),
) -> TestResult:
    """Welch's unequal-variance t-test of ``mean(x) - mean(y)``.

    Welch BL. The generalization of "Student's" problem when several
    different population variances are involved. Biometrika 1947;34:28-35;
    Satterthwaite degrees of freedom (Biometrics Bull 1946;2:110-114).
    Computed with :func:`scipy.stats.ttest_ind` (``equal_var=False``).
    NaN values are dropped per group.

    Parameters
    ----------
    x, y : sequence of float
        The two independent samples (e.g. treated arm, control arm).
    alternative, ci_level
        As in :func:`paired_t_test`.
    labels : (str, str)
        Names used for the groups in ``n``.
    """
    alternative, level = _check_alternative(alternative), _check_level(ci_level)
    a, nda = _drop_nan(_vector(x, "x"))
    b, ndb = _drop_nan(_vector(y, "y"))
    _need(a.size, 2, f"welch_t_test group {labels[0]!r}")
    _need(b.size, 2, f"welch_t_test group {labels[1]!r}")
    if np.ptp(a) == 0.0 and np.ptp(b) == 0.0:
        raise ValidationError("welch_t_test: both groups have zero variance; the t statistic is undefined")
    res = _st.ttest_ind(a, b, equal_var=False, alternative=alternative)
    ci = res.confidence_interval(confidence_level=level)
    nd = nda + ndb
    return TestResult(
        test="Welch t-test",
        n={labels[0]: int(a.size), labels[1]: int(b.size)},
        estimate=float(a.mean() - b.mean()),
        estimate_name=f"mean difference ({labels[0]} - {labels[1]})",
        ci_low=float(ci.low),
        ci_high=float(ci.high),
        ci_level=level,
        statistic=float(res.statistic),
        statistic_name="t",
        df=float(res.df),
        p_value=float(res.pvalue),
        alternative=alternative,
        notes=f"Welch-Satterthwaite df; {_dropped_note(nd, 'values')}",
        extra={"n_dropped": nd, f"mean_{labels[0]}": float(a.mean()), f"mean_{labels[1]}": float(b.mean())},
    )


def mann_whitney(
    x: Sequence[float],
    y: Sequence[float],
    *,
    alternative: str = "two-sided",
    ci_level: float = 0.95,
    labels: tuple[str, str] = ("x", "y"),
    use_continuity: bool = True,
) -> TestResult:
    """Mann–Whitney U (Wilcoxon rank-sum) test of a shift between ``x`` and ``y``.

    Mann HB, Whitney DR. Ann Math Stat 1947;18:50-60. The statistic is U of
    ``x`` (number of pairs with x > y, ties counted 1/2; R's ``W``) and the
    p-value :func:`scipy.stats.mannwhitneyu` (exact for small samples without
    ties with both samples < 50, else the normal approximation with tie
    correction; R's rule). The estimate is the Hodges–Lehmann
    shift, the median of all differences ``x_i - y_j`` (Hodges & Lehmann,
    Ann Math Stat 1963;34:598), with the distribution-free interval of
    Hollander & Wolfe (1999, section 4.3): exact quantiles when both samples
    have < 50 values and there are no ties, else normal-approximation
    quantiles (approximate coverage). NaN values are dropped per group.
    """
    alternative, level = _check_alternative(alternative), _check_level(ci_level)
    a, nda = _drop_nan(_vector(x, "x"))
    b, ndb = _drop_nan(_vector(y, "y"))
    _need(a.size, 2, f"mann_whitney group {labels[0]!r}")
    _need(b.size, 2, f"mann_whitney group {labels[1]!r}")
    m, n = a.size, b.size
    ties = np.unique(np.concatenate([a, b])).size < m + n
    exact = m < 50 and n < 50 and not ties  # R's wilcox.test rule
    res = _st.mannwhitneyu(a, b, alternative=alternative, use_continuity=use_continuity,
                           method="exact" if exact else "asymptotic")
    diffs = np.sort((a[:, None] - b[None, :]).ravel())
    pmf = _rank_sum_pmf(m, n) if exact else None
    sd = math.sqrt(m * n * (m + n + 1) / 12.0)
    lo, hi = _order_stat_ci(diffs, pmf, sd, level, alternative)
    nd = nda + ndb
    return TestResult(
        test="Mann-Whitney U test",
        n={labels[0]: int(m), labels[1]: int(n)},
        estimate=float(np.median(diffs)),
        estimate_name=f"Hodges-Lehmann shift ({labels[0]} - {labels[1]})",
        ci_low=lo,
        ci_high=hi,
        ci_level=level,
        statistic=float(res.statistic),
        statistic_name=f"U ({labels[0]})",
        df=None,
        p_value=float(res.pvalue),
        alternative=alternative,
        notes=(f"CI {'exact' if exact else 'approximate (normal quantiles)'} from pairwise differences; "
               f"{'ties present; ' if ties else ''}{_dropped_note(nd, 'values')}"),
        extra={"n_dropped": nd, "exact": bool(exact),
               "common_language_effect": float(res.statistic) / (m * n)},
    )


# --------------------------------------------------------------------------
# More than two groups
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class GroupComparison:
    """An omnibus test across groups and its pairwise comparisons.

    Attributes
    ----------
    omnibus : TestResult
        The one-way ANOVA or Kruskal–Wallis test.
    pairwise : tuple of TestResult
        One result per pair ``(a, b)`` in the given group order, estimate
        ``b - a``, p-values adjusted as stated in their ``notes``.
    """

    omnibus: TestResult
    pairwise: tuple[TestResult, ...]

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return {"omnibus": self.omnibus.as_dict(), "pairwise": [r.as_dict() for r in self.pairwise]}


def _holm_pairwise(names, arrays, pair_test, level, label) -> tuple[TestResult, ...]:
    from statsmodels.stats.multitest import multipletests

    raw = []
    for i, j in combinations(range(len(names)), 2):
        # pair (a, b) reports b - a: b is passed as x.
        raw.append(pair_test(arrays[j], arrays[i], ci_level=level, labels=(names[j], names[i])))
    adjusted = multipletests([r.p_value for r in raw], method="holm")[1]
    out = []
    for r, p in zip(raw, adjusted):
        d = r.as_dict()
        out.append(TestResult(
            test=f"{r.test} ({label})",
            n=dict(r.n), estimate=r.estimate, estimate_name=r.estimate_name,
            ci_low=r.ci_low, ci_high=r.ci_high, ci_level=r.ci_level,
            statistic=r.statistic, statistic_name=r.statistic_name, df=r.df,
            p_value=float(min(1.0, p)), alternative="two-sided",
            notes=(f"p adjusted by Holm (Scand J Stat 1979;6:65-70) over {len(raw)} pairs; "
                   "CI not adjusted for multiplicity"),
            extra={"p_unadjusted": d["p_value"]},
        ))
    return tuple(out)


def one_way_anova(
    groups: Mapping[str, Sequence[float]] | Sequence[Sequence[float]],
    *,
    posthoc: str | None = "tukey",
    ci_level: float = 0.95,
) -> GroupComparison:
    """One-way ANOVA across groups, with Tukey HSD or Holm pairwise comparisons.

    F-test: :func:`scipy.stats.f_oneway` (Fisher RA, Statistical Methods for
    Research Workers, 1925). Effect size: eta squared = SS_between / SS_total.
    Pairwise comparisons:

    ``"tukey"``
        Tukey–Kramer honestly significant difference (Tukey JW, 1953;
        Kramer CY, Biometrics 1956;12:307-310) with simultaneous intervals,
        :func:`scipy.stats.tukey_hsd`; the statistic is the studentized
        range q with df ``(k, N - k)``.
    ``"holm"``
        Welch t-tests per pair with Holm-adjusted p-values
        (Holm S, Scand J Stat 1979;6:65-70), unadjusted intervals.
    ``None``
        No pairwise comparisons.

    Parameters
    ----------
    groups : mapping name -> values, or sequence of sequences
        At least 2 groups of at least 2 non-NaN values each (NaN dropped).
    posthoc : {"tukey", "holm", None}
    ci_level : float
    """
    level = _check_level(ci_level)
    if posthoc not in ("tukey", "holm", None):
        raise ValidationError(f"posthoc must be 'tukey', 'holm' or None, got {posthoc!r}")
    names, arrays, dropped = _groups(groups, 2)
    k = len(arrays)
    n_total = sum(a.size for a in arrays)
    pooled = np.concatenate(arrays)
    ss_total = float(((pooled - pooled.mean()) ** 2).sum())
    ss_within = float(sum(((a - a.mean()) ** 2).sum() for a in arrays))
    if ss_within == 0.0:
        raise ValidationError("one_way_anova: every group has zero variance; the F statistic is undefined")
    res = _st.f_oneway(*arrays)
    nd = sum(dropped.values())
    omnibus = TestResult(
        test="one-way ANOVA",
        n={name: int(a.size) for name, a in zip(names, arrays)},
        estimate=(ss_total - ss_within) / ss_total if ss_total > 0 else 0.0,
        estimate_name="eta squared (SS_between / SS_total)",
        ci_low=math.nan, ci_high=math.nan, ci_level=level,
        statistic=float(res.statistic), statistic_name="F",
        df=(float(k - 1), float(n_total - k)),
        p_value=float(res.pvalue),
        notes=_dropped_note(nd, "values"),
        extra={"n_dropped": nd, "ss_within": ss_within, "ss_between": ss_total - ss_within},
    )
    if posthoc is None:
        return GroupComparison(omnibus, ())
    if posthoc == "holm":
        return GroupComparison(omnibus, _holm_pairwise(names, arrays, welch_t_test, level, "Holm"))
    tk = _st.tukey_hsd(*arrays)
    ci = tk.confidence_interval(confidence_level=level)
    mse = ss_within / (n_total - k)
    pairs = []
    for i, j in combinations(range(k), 2):
        diff = float(tk.statistic[j, i])
        se = math.sqrt(mse / 2.0 * (1.0 / arrays[i].size + 1.0 / arrays[j].size))
        pairs.append(TestResult(
            test="Tukey HSD",
            n={names[i]: int(arrays[i].size), names[j]: int(arrays[j].size)},
            estimate=diff,
            estimate_name=f"mean difference ({names[j]} - {names[i]})",
            ci_low=float(ci.low[j, i]), ci_high=float(ci.high[j, i]), ci_level=level,
            statistic=abs(diff) / se, statistic_name="q (studentized range)",
            df=(float(k), float(n_total - k)),
            p_value=float(tk.pvalue[j, i]),
            notes="Tukey-Kramer simultaneous CI and family-wise p over all pairs",
        ))
    return GroupComparison(omnibus, tuple(pairs))


def kruskal_wallis(
    groups: Mapping[str, Sequence[float]] | Sequence[Sequence[float]],
    *,
    posthoc: str | None = "holm",
    ci_level: float = 0.95,
) -> GroupComparison:
    """Kruskal–Wallis H test across groups, with Holm-adjusted pairwise Mann–Whitney tests.

    Kruskal WH, Wallis WA. J Am Stat Assoc 1952;47:583-621;
    :func:`scipy.stats.kruskal` (chi-square approximation, tie-corrected).
    Effect size: epsilon squared ``H / (n - 1)`` (Tomczak M, Tomczak E.
    Trends Sport Sci 2014;21:19-25). Pairwise: :func:`mann_whitney` per pair
    (Hodges–Lehmann shift ``b - a``) with Holm-adjusted p-values
    (``posthoc="holm"``) or none (``None``). Dunn's test is not offered.
    """
    level = _check_level(ci_level)
    if posthoc not in ("holm", None):
        raise ValidationError(f"posthoc for kruskal_wallis must be 'holm' or None, got {posthoc!r}")
    names, arrays, dropped = _groups(groups, 2)
    pooled = np.concatenate(arrays)
    if np.ptp(pooled) == 0.0:
        raise ValidationError("kruskal_wallis: all values are identical; the H statistic is undefined")
    res = _st.kruskal(*arrays)
    n_total, k = pooled.size, len(arrays)
    nd = sum(dropped.values())
    omnibus = TestResult(
        test="Kruskal-Wallis H test",
        n={name: int(a.size) for name, a in zip(names, arrays)},
        estimate=float(res.statistic) / (n_total - 1),
        estimate_name="epsilon squared (H / (n - 1))",
        ci_low=math.nan, ci_high=math.nan, ci_level=level,
        statistic=float(res.statistic), statistic_name="H",
        df=float(k - 1),
        p_value=float(res.pvalue),
        notes=f"chi-square approximation with tie correction; {_dropped_note(nd, 'values')}",
        extra={"n_dropped": nd},
    )
    if posthoc is None:
        return GroupComparison(omnibus, ())
    return GroupComparison(omnibus, _holm_pairwise(names, arrays, mann_whitney, level, "Holm"))


# --------------------------------------------------------------------------
# Correlation
# --------------------------------------------------------------------------

def _fisher_ci(r: float, se: float, level: float, alternative: str) -> tuple[float, float]:
    """CI of a correlation by the Fisher z transform ``atanh(r) +- z * se``."""
    with np.errstate(divide="ignore"):
        z = float(np.arctanh(np.clip(r, -1.0, 1.0)))
    if alternative == "two-sided":
        c = _st.norm.ppf(0.5 + level / 2.0)
        return float(np.tanh(z - c * se)), float(np.tanh(z + c * se))
    c = _st.norm.ppf(level)
    if alternative == "greater":
        return float(np.tanh(z - c * se)), 1.0
    return -1.0, float(np.tanh(z + c * se))


def _correlation_inputs(x, y, what):
    a, b, nd = _paired(x, y)
    _need(a.size, 3, f"{what} (pairs)")
    if np.ptp(a) == 0.0 or np.ptp(b) == 0.0:
        raise ValidationError(f"{what}: x or y is constant; the correlation is undefined")
    return a, b, nd


def pearson_correlation(
    x: Sequence[float],
    y: Sequence[float],
    *,
    alternative: str = "two-sided",
    ci_level: float = 0.95,
) -> TestResult:
    """Pearson correlation with R², t-test p-value and Fisher z interval.

    Pearson K. Proc R Soc Lond 1895;58:240-242. p from
    :func:`scipy.stats.pearsonr` (exact t-distribution under bivariate
    normality, t = r sqrt((n-2)/(1-r²)), df = n - 2). CI: Fisher z transform
    with SE ``1/sqrt(n - 3)`` (Fisher RA. Metron 1921;1:3-32); NaN for n = 3.
    Pairs with NaN are dropped.
    """
    alternative, level = _check_alternative(alternative), _check_level(ci_level)
    a, b, nd = _correlation_inputs(x, y, "pearson_correlation")
    res = _st.pearsonr(a, b, alternative=alternative)
    r, n = float(res.statistic), a.size
    lo, hi = _fisher_ci(r, 1.0 / math.sqrt(n - 3), level, alternative) if n > 3 else (math.nan, math.nan)
    t = r * math.sqrt((n - 2) / (1.0 - r * r)) if abs(r) < 1 else math.copysign(math.inf, r)
    return TestResult(
        test="Pearson correlation",
        n={"pairs": int(n)},
        estimate=r, estimate_name="Pearson r",
        ci_low=lo, ci_high=hi, ci_level=level,
        statistic=t, statistic_name="t", df=float(n - 2),
        p_value=float(res.pvalue), alternative=alternative,
        notes=f"CI by Fisher z, SE 1/sqrt(n-3); {_dropped_note(nd, 'pairs')}",
        extra={"n_dropped": nd, "r_squared": r * r},
    )


def spearman_correlation(
    x: Sequence[float],
    y: Sequence[float],
    *,
    alternative: str = "two-sided",
    ci_level: float = 0.95,
) -> TestResult:
    """Spearman rank correlation with R² (of the ranks), p-value and Fisher z interval.

    Spearman C. Am J Psychol 1904;15:72-101. rho and p from
    :func:`scipy.stats.spearmanr` (t approximation, df = n - 2; ties get mid-ranks).
    CI: Fisher z transform of rho with the standard error of Bonett & Wright,
    ``sqrt((1 + rho²/2) / (n - 3))`` (Bonett DG, Wright TA. Sufficient sample
    sizes for correlation analyses. Psychometrika 2000;65:23-28); NaN for n = 3.
    Pairs with NaN are dropped.
    """
    alternative, level = _check_alternative(alternative), _check_level(ci_level)
    a, b, nd = _correlation_inputs(x, y, "spearman_correlation")
    res = _st.spearmanr(a, b, alternative=alternative)
    rho, n = float(res.statistic), a.size
    se = math.sqrt((1.0 + rho * rho / 2.0) / (n - 3)) if n > 3 else math.nan
    lo, hi = _fisher_ci(rho, se, level, alternative) if n > 3 else (math.nan, math.nan)
    t = rho * math.sqrt((n - 2) / (1.0 - rho * rho)) if abs(rho) < 1 else math.copysign(math.inf, rho)
    return TestResult(
        test="Spearman correlation",
        n={"pairs": int(n)},
        estimate=rho, estimate_name="Spearman rho",
        ci_low=lo, ci_high=hi, ci_level=level,
        statistic=t, statistic_name="t", df=float(n - 2),
        p_value=float(res.pvalue), alternative=alternative,
        notes=("CI by Fisher z with the Bonett-Wright SE sqrt((1 + rho^2/2)/(n-3)); "
               f"p by t approximation; {_dropped_note(nd, 'pairs')}"),
        extra={"n_dropped": nd, "r_squared": rho * rho},
    )


# --------------------------------------------------------------------------
# Linear mixed model for repeated measures
# --------------------------------------------------------------------------

def mixed_model_repeated(
    data: Any,
    *,
    value: str = "value",
    arm: str = "arm",
    time: str = "time",
    subject: str = "subject",
    time_as: str = "categorical",
    ci_level: float = 0.95,
    reml: bool = True,
) -> tuple[TestResult, ...]:
    """Linear mixed model ``value ~ arm * time + (1 | subject)`` for repeated measures.

    Random intercept per subject (Laird NM, Ware JH. Biometrics
    1982;38:963-974), fitted by (RE)ML with :class:`statsmodels.regression.mixed_linear_model.MixedLM`
    from the formula ``value ~ C(arm) * C(time)`` (or ``C(arm) * time`` with
    ``time_as="numeric"``). Treatment coding: the first arm / time level (in
    sorted order) is the reference. Wald z-tests and intervals of the fixed
    effects (normal approximation, which is anti-conservative for few
    subjects).

    Parameters
    ----------
    data : pandas.DataFrame or sequence of dict
        Tidy long table, one row per measurement, with the columns named by
        ``value`` (numeric, e.g. R2* in 1/s), ``arm``, ``time`` and ``subject``.
        Rows with a missing value in any of these columns are dropped.
    time_as : {"categorical", "numeric"}
        Time as a factor (one coefficient per level) or a numeric slope (per
        unit of the time column, e.g. per hour).

    Returns
    -------
    tuple of TestResult
        One per fixed-effect coefficient (intercept first), ``estimate_name``
        the coefficient name, ``statistic`` = z; ``extra`` carries the random
        intercept variance and the residual variance.
    """
    import pandas as pd
    import statsmodels.formula.api as smf

    level = _check_level(ci_level)
    if time_as not in ("categorical", "numeric"):
        raise ValidationError(f"time_as must be 'categorical' or 'numeric', got {time_as!r}")
    try:
        df = data.copy() if isinstance(data, pd.DataFrame) else pd.DataFrame(list(data))
    except (TypeError, ValueError):
        raise ValidationError("data must be a pandas DataFrame or a sequence of dicts (one per row)") from None
    cols = [value, arm, time, subject]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValidationError(f"data lacks the column(s) {missing}; name them with value=, arm=, time=, subject=")
    df = df[cols].rename(columns={value: "y", arm: "arm", time: "time", subject: "subject"})
    try:
        df["y"] = pd.to_numeric(df["y"], errors="raise").astype(float)
        if time_as == "numeric":
            df["time"] = pd.to_numeric(df["time"], errors="raise").astype(float)
    except (TypeError, ValueError):
        raise ValidationError(f"column {value!r} (and {time!r} when time_as='numeric') must be numeric") from None
    if np.isinf(df["y"]).any():
        raise ValidationError(f"column {value!r} contains Inf; remove or replace infinite values")
    n_rows = len(df)
    df = df.dropna()
    nd = n_rows - len(df)
    n_subj = df["subject"].nunique()
    if n_subj < 3:
        raise ValidationError(f"mixed_model_repeated needs at least 3 subjects with data, got {n_subj}")
    if df["arm"].nunique() < 2:
        raise ValidationError(f"column {arm!r} needs at least 2 arms")
    if df["time"].nunique() < 2:
        raise ValidationError(f"column {time!r} needs at least 2 time points")
    rhs = "C(arm) * C(time)" if time_as == "categorical" else "C(arm) * time"
    model = smf.mixedlm(f"y ~ {rhs}", df, groups=df["subject"])
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = model.fit(reml=reml)
    ci = fit.conf_int(alpha=1.0 - level)
    names = list(fit.fe_params.index)
    out = []
    n = {"subjects": int(n_subj), "observations": int(len(df))}
    extra_common = {"n_dropped": int(nd), "random_intercept_variance": float(fit.cov_re.iloc[0, 0]),
                    "residual_variance": float(fit.scale), "converged": bool(fit.converged)}
    for name in names:
        out.append(TestResult(
            test="linear mixed model (random intercept per subject)",
            n=n,
            estimate=float(fit.fe_params[name]),
            estimate_name=name,
            ci_low=float(ci.loc[name, 0]), ci_high=float(ci.loc[name, 1]), ci_level=level,
            statistic=float(fit.tvalues[name]), statistic_name="z",
            df=None,
            p_value=float(fit.pvalues[name]),
            notes=(f"y ~ {rhs} + (1 | subject), {'REML' if reml else 'ML'}; Wald z; "
                   f"{_dropped_note(int(nd), 'rows')}"),
            extra=extra_common,
        ))
    return tuple(out)
