"""Tests of oncomri.stats.tests against hand arithmetic, independent formulas and published examples."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats as st

from oncomri.core.errors import ValidationError
from oncomri.stats.results import TestResult
from oncomri.stats.tests import (
    kruskal_wallis,
    mann_whitney,
    mixed_model_repeated,
    one_way_anova,
    paired_t_test,
    pearson_correlation,
    spearman_correlation,
    welch_t_test,
    wilcoxon_signed_rank,
)

# Student's sleep data (Cushny AR, Peebles AR. J Physiol 1905;32:501-510, as
# analysed by Student. Biometrika 1908;6:1-25; R dataset `sleep`): extra hours
# of sleep with two hypnotics in the same 10 patients.
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]

# Hollander M, Wolfe DA. Nonparametric Statistical Methods. Wiley 1973, p. 29
# (Hamilton depression scale, first and second visit; also R ?wilcox.test).
HW_X = [1.83, 0.50, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.30]
HW_Y = [0.878, 0.647, 0.598, 2.05, 1.06, 1.29, 1.06, 3.14, 1.29]

# Hollander & Wolfe 1973, p. 69: permeability constants of the chorioamnion at
# term (x) and at 12-26 weeks (y) (also R ?wilcox.test).
HW_TERM = [0.80, 0.83, 1.89, 1.04, 1.45, 1.38, 1.91, 1.64, 0.73, 1.46]
HW_EARLY = [1.15, 0.88, 0.90, 0.74, 1.21]

# Dobson AJ. An Introduction to Statistical Modelling. Chapman & Hall 1983
# (R dataset `PlantGrowth`): dried plant weight, control and two treatments.
PG_CTRL = [4.17, 5.58, 5.18, 6.11, 4.50, 4.61, 5.17, 4.53, 5.33, 5.14]
PG_TRT1 = [4.81, 4.17, 4.41, 3.59, 5.87, 3.83, 6.03, 4.89, 4.32, 4.69]
PG_TRT2 = [6.31, 5.12, 5.54, 5.50, 5.37, 5.29, 4.92, 6.15, 5.80, 5.26]

# Anscombe FJ. Graphs in statistical analysis. Am Stat 1973;27:17-21, data set I.
ANS_X = [10, 8, 13, 9, 11, 14, 6, 4, 12, 7, 5]
ANS_Y = [8.04, 6.95, 7.58, 8.81, 8.33, 9.96, 7.24, 4.26, 10.84, 4.82, 5.68]


# --------------------------------------------------------------------------- paired

def test_paired_t_published_sleep():
    # Student 1908 / R t.test(extra ~ group, paired): mean diff 1.58, t = 4.0621, df 9,
    # p = 0.002833, 95% CI 0.7001 to 2.4599.
    r = paired_t_test(SLEEP_2, SLEEP_1)
    assert r.estimate == pytest.approx(1.58, abs=1e-12)
    assert r.statistic == pytest.approx(4.0621, abs=1e-4)
    assert r.df == 9
    assert r.p_value == pytest.approx(0.002833, abs=1e-6)
    assert (r.ci_low, r.ci_high) == pytest.approx((0.7001, 2.4599), abs=1e-4)
    assert r.n == {"pairs": 10}
    assert r.test == "paired t-test"


def test_paired_t_hand_formula_and_nan_pairs_dropped():
    # d = x - y = [1, 2, 3, 6] after dropping the NaN pair: mean 3, sd sqrt(14/3),
    # t = 3 / (sqrt(14/3)/2) = 2.7775.
    x = [2.0, 4.0, np.nan, 6.0, 10.0, 7.0]
    y = [1.0, 2.0, 5.0, 3.0, 4.0, np.nan]
    r = paired_t_test(x, y)
    sd = math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + 0 + (6 - 3) ** 2) / 3)
    t = 3 / (sd / 2)
    assert r.estimate == pytest.approx(3.0)
    assert r.statistic == pytest.approx(t)
    half = st.t.ppf(0.975, 3) * sd / 2
    assert (r.ci_low, r.ci_high) == pytest.approx((3 - half, 3 + half))
    assert r.n == {"pairs": 4}
    assert r.extra["n_dropped"] == 2 and "dropped 2 pairs" in r.notes


def test_paired_one_sided_greater_halves_p():
    two = paired_t_test(SLEEP_2, SLEEP_1)
    one = paired_t_test(SLEEP_2, SLEEP_1, alternative="greater")
    assert one.p_value == pytest.approx(two.p_value / 2)
    assert one.ci_high == math.inf and one.ci_low > two.ci_low


def test_wilcoxon_published_hollander_wolfe():
    # H&W 1973 p. 29 / R: V = 40, one-sided p = 0.01953 (= 10/512, exact).
    r = wilcoxon_signed_rank(HW_X, HW_Y, alternative="greater")
    assert r.statistic == 40
    assert r.p_value == pytest.approx(10 / 512)
    assert r.extra["exact"] is True


def test_wilcoxon_sleep_ties_and_zero_normal_approx():
    # Differences 1.2 2.4 1.3 1.3 0 1.0 1.8 0.8 4.6 1.4: one zero (dropped), one tie.
    # R wilcox.test(paired): V = 45, p = 0.009091. By hand: n = 9, mean 22.5,
    # var = 9*10*19/24 - (2^3 - 2)/48 = 71.125, z = (45 - 22.5 - 0.5)/sqrt(71.125).
    r = wilcoxon_signed_rank(SLEEP_2, SLEEP_1)
    z = (45 - 22.5 - 0.5) / math.sqrt(71.125)
    assert r.statistic == 45
    assert r.p_value == pytest.approx(2 * st.norm.sf(z), rel=1e-9)
    assert r.p_value == pytest.approx(0.009091, abs=1e-6)
    assert r.n == {"pairs": 10, "non_zero_pairs": 9}
    assert r.extra["n_zero_differences"] == 1 and r.extra["exact"] is False


def test_wilcoxon_exact_hodges_lehmann_interval_by_enumeration():
    # CI = [W_(q), W_(M+1-q)] of the 45 sorted Walsh averages, q the 2.5% quantile
    # of W+ for n = 9. Subsets of {1..9} with sum s: s=0..6 -> 1,1,1,2,2,3,4,
    # cumulative 1,2,3,5,7,10,14 of 512: P(W<=5)=10/512 < 0.025 <= P(W<=6)=14/512, q = 6.
    d = np.array(HW_X) - np.array(HW_Y)
    counts = np.zeros(46)
    for signs in itertools.product((0, 1), repeat=9):
        counts[sum(i + 1 for i, s in enumerate(signs) if s)] += 1
    cdf = np.cumsum(counts) / 512
    q = int(np.argmax(cdf >= 0.025))
    assert q == 6
    walsh = np.sort([(d[i] + d[j]) / 2 for i in range(9) for j in range(i, 9)])
    r = wilcoxon_signed_rank(HW_X, HW_Y)
    assert (r.ci_low, r.ci_high) == pytest.approx((walsh[q - 1], walsh[45 - q]))
    assert r.estimate == pytest.approx(np.median(walsh))
    assert r.p_value == pytest.approx(20 / 512)  # two-sided exact


# --------------------------------------------------------------------------- two samples

def test_welch_published_sleep():
    # R t.test(extra ~ group, data = sleep): t = -1.8608, df = 17.776, p = 0.07939,
    # 95% CI -3.3655 to 0.2055.
    r = welch_t_test(SLEEP_1, SLEEP_2, labels=("drug1", "drug2"))
    assert r.statistic == pytest.approx(-1.8608, abs=1e-4)
    assert r.df == pytest.approx(17.776, abs=1e-3)
    assert r.p_value == pytest.approx(0.07939, abs=1e-5)
    assert (r.ci_low, r.ci_high) == pytest.approx((-3.3655, 0.2055), abs=1e-4)
    assert r.n == {"drug1": 10, "drug2": 10}
    assert r.estimate_name == "mean difference (drug1 - drug2)"


def test_welch_by_formula_with_nan():
    x = [1.0, 2.0, 3.0, np.nan]            # mean 2, var 1
    y = [2.0, 6.0, 4.0, 8.0, 10.0]         # mean 6, var 10
    r = welch_t_test(x, y)
    se2 = 1 / 3 + 10 / 5                   # 7/3
    t = (2 - 6) / math.sqrt(se2)
    df = se2 ** 2 / ((1 / 3) ** 2 / 2 + (10 / 5) ** 2 / 4)
    assert r.statistic == pytest.approx(t)
    assert r.df == pytest.approx(df)
    assert r.p_value == pytest.approx(2 * st.t.sf(abs(t), df))
    half = st.t.ppf(0.975, df) * math.sqrt(se2)
    assert (r.ci_low, r.ci_high) == pytest.approx((-4 - half, -4 + half))
    assert r.n == {"x": 3, "y": 5} and r.extra["n_dropped"] == 1


def test_mann_whitney_published_hollander_wolfe():
    # H&W 1973 p. 69 / R wilcox.test(x, y, alternative = "greater"): W = 35, p = 0.1272.
    r = mann_whitney(HW_TERM, HW_EARLY, alternative="greater")
    assert r.statistic == 35
    assert r.p_value == pytest.approx(0.1272, abs=1e-4)
    assert r.ci_high == math.inf


def test_mann_whitney_u_by_counting_and_exact_interval_by_enumeration():
    x, y = np.array(HW_TERM), np.array(HW_EARLY)
    assert (x[:, None] > y[None, :]).sum() == 35  # U = pairs with x > y
    # Exact null distribution of U for m=10, n=5 by enumerating the C(15,5)=3003 splits.
    counts = np.zeros(51)
    for pos in itertools.combinations(range(15), 5):       # ranks of y
        ranks_y = np.array(pos) + 1
        u_y = ranks_y.sum() - 15                            # U of y = R_y - n(n+1)/2
        counts[50 - u_y] += 1                               # U of x = mn - U_y
    assert counts.sum() == 3003
    q = int(np.argmax(np.cumsum(counts) / 3003 >= 0.025))
    diffs = np.sort((x[:, None] - y[None, :]).ravel())
    r = mann_whitney(x, y)
    assert (r.ci_low, r.ci_high) == pytest.approx((diffs[q - 1], diffs[50 - q]))
    assert r.estimate == pytest.approx(np.median(diffs))
    assert r.p_value == pytest.approx(2 * counts[35:].sum() / 3003)


def test_mann_whitney_ties_use_normal_approximation():
    r = mann_whitney([1, 2, 2, 3, 4], [2, 3, 5, 6, 6, 7])
    ref = st.mannwhitneyu([1, 2, 2, 3, 4], [2, 3, 5, 6, 6, 7], method="asymptotic")
    assert r.p_value == pytest.approx(ref.pvalue)
    assert r.extra["exact"] is False and "ties" in r.notes


# --------------------------------------------------------------------------- k groups

def test_anova_hand_arithmetic_and_tukey_q():
    # Means 2, 5, 8, grand mean 5: SSB = 3*(9+0+9) = 54, SSW = 3*2 = 6,
    # F = (54/2)/(6/6) = 27, eta^2 = 54/60 = 0.9. Tukey: MSE = 1,
    # q = 3 / sqrt(1/2 * (1/3 + 1/3)) = 3*sqrt(3).
    res = one_way_anova({"a": [1, 2, 3], "b": [4, 5, 6], "c": [7, 8, 9]})
    om = res.omnibus
    assert om.statistic == pytest.approx(27.0)
    assert om.df == (2.0, 6.0)
    assert om.estimate == pytest.approx(0.9)
    assert om.p_value == pytest.approx(st.f.sf(27, 2, 6))
    ab = res.pairwise[0]
    assert ab.estimate == pytest.approx(3.0) and ab.estimate_name == "mean difference (b - a)"
    assert ab.statistic == pytest.approx(3 * math.sqrt(3))
    assert ab.p_value == pytest.approx(st.studentized_range.sf(3 * math.sqrt(3), 3, 6), rel=1e-4)


def test_anova_tukey_published_plantgrowth_and_statsmodels():
    # Dobson 1983 / R: F = 4.846, df 2, 27, p = 0.01591. TukeyHSD: trt1-ctrl -0.371
    # (-1.0622, 0.3202) p 0.3909; trt2-ctrl 0.494 (-0.1972, 1.1852) p 0.1980;
    # trt2-trt1 0.865 (0.1738, 1.5562) p 0.0120.
    from statsmodels.stats.multicomp import pairwise_tukeyhsd

    res = one_way_anova({"ctrl": PG_CTRL, "trt1": PG_TRT1, "trt2": PG_TRT2})
    assert res.omnibus.statistic == pytest.approx(4.846, abs=1e-3)
    assert res.omnibus.p_value == pytest.approx(0.01591, abs=1e-5)
    published = [(-0.371, -1.0622, 0.3202, 0.3909), (0.494, -0.1972, 1.1852, 0.1980),
                 (0.865, 0.1738, 1.5562, 0.0120)]
    for r, (est, lo, hi, p) in zip(res.pairwise, published):
        assert (r.estimate, r.ci_low, r.ci_high, r.p_value) == pytest.approx((est, lo, hi, p), abs=1e-4)
    values = np.concatenate([PG_CTRL, PG_TRT1, PG_TRT2])
    labels = np.repeat(["ctrl", "trt1", "trt2"], 10)
    sm = pairwise_tukeyhsd(values, labels)
    assert [r.estimate for r in res.pairwise] == pytest.approx(list(sm.meandiffs))
    assert [r.ci_low for r in res.pairwise] == pytest.approx(list(sm.confint[:, 0]), abs=1e-6)
    assert [r.p_value for r in res.pairwise] == pytest.approx(list(sm.pvalues), abs=1e-3)


def test_anova_holm_pairwise_by_hand():
    groups = {"ctrl": PG_CTRL, "trt1": PG_TRT1, "trt2": PG_TRT2}
    res = one_way_anova(groups, posthoc="holm")
    raw = [st.ttest_ind(b, a, equal_var=False).pvalue
           for a, b in [(PG_CTRL, PG_TRT1), (PG_CTRL, PG_TRT2), (PG_TRT1, PG_TRT2)]]
    order = np.argsort(raw)
    adj = np.empty(3)
    running = 0.0
    for rank, i in enumerate(order):                 # Holm step-down: (m - rank) * p, monotone
        running = max(running, min(1.0, (3 - rank) * raw[i]))
        adj[i] = running
    assert [r.p_value for r in res.pairwise] == pytest.approx(list(adj))
    assert [r.extra["p_unadjusted"] for r in res.pairwise] == pytest.approx(raw)
    assert all("Holm" in r.notes for r in res.pairwise)


def test_kruskal_published_and_hand():
    # Hollander & Wolfe 1973 p. 116 / R ?kruskal.test: chi-squared = 0.77143, df = 2, p = 0.68.
    res = kruskal_wallis({"normal": [2.9, 3.0, 2.5, 2.6, 3.2], "oad": [3.8, 2.7, 4.0, 2.4],
                          "asbestosis": [2.8, 3.4, 3.7, 2.2, 2.0]})
    assert res.omnibus.statistic == pytest.approx(0.77143, abs=1e-5)
    assert res.omnibus.df == 2
    assert res.omnibus.p_value == pytest.approx(0.68, abs=5e-3)
    assert len(res.pairwise) == 3
    # Ranks 1..9 in three blocks: H = 12/(9*10) * (6^2+15^2+24^2)/3 - 3*10 = 37.2 - 30 = 7.2.
    hand = kruskal_wallis([[1, 2, 3], [4, 5, 6], [7, 8, 9]], posthoc=None)
    assert hand.omnibus.statistic == pytest.approx(7.2)
    assert hand.omnibus.estimate == pytest.approx(7.2 / 8)
    assert hand.pairwise == ()


def test_kruskal_rejects_tukey():
    with pytest.raises(ValidationError, match="posthoc"):
        kruskal_wallis([[1, 2], [3, 4]], posthoc="tukey")


# --------------------------------------------------------------------------- correlation

def test_pearson_published_anscombe_and_fisher_ci():
    # Anscombe 1973, set I: r = 0.816, R^2 = 0.667.
    r = pearson_correlation(ANS_X, ANS_Y)
    assert r.estimate == pytest.approx(0.816, abs=5e-4)
    assert r.extra["r_squared"] == pytest.approx(0.667, abs=5e-4)
    z, se, c = math.atanh(r.estimate), 1 / math.sqrt(11 - 3), st.norm.ppf(0.975)
    assert (r.ci_low, r.ci_high) == pytest.approx((math.tanh(z - c * se), math.tanh(z + c * se)))
    ci_scipy = st.pearsonr(ANS_X, ANS_Y).confidence_interval(0.95)
    assert (r.ci_low, r.ci_high) == pytest.approx((ci_scipy.low, ci_scipy.high))
    t = r.estimate * math.sqrt(9 / (1 - r.estimate ** 2))
    assert r.statistic == pytest.approx(t) and r.df == 9
    assert r.p_value == pytest.approx(2 * st.t.sf(t, 9))


def test_spearman_hand_and_bonett_wright_ci():
    # Ranks of y = 2,1,4,3,5 against 1..5: sum d^2 = 4, rho = 1 - 6*4/(5*24) = 0.8.
    # Bonett-Wright SE = sqrt((1 + 0.8^2/2)/(5 - 3)) = sqrt(0.66).
    r = spearman_correlation([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])
    assert r.estimate == pytest.approx(0.8)
    se, c = math.sqrt(0.66), st.norm.ppf(0.975)
    assert (r.ci_low, r.ci_high) == pytest.approx(
        (math.tanh(math.atanh(0.8) - c * se), math.tanh(math.atanh(0.8) + c * se)))
    assert r.extra["r_squared"] == pytest.approx(0.64)
    assert "Bonett" in r.notes


def test_correlation_nan_pairs_and_small_n():
    r = pearson_correlation([1, 2, np.nan, 4, 5], [2, 4, 6, np.nan, 9])
    assert r.n == {"pairs": 3} and r.extra["n_dropped"] == 2
    assert math.isnan(r.ci_low)  # Fisher z needs n > 3
    assert r.estimate == pytest.approx(np.corrcoef([1, 2, 5], [2, 4, 9])[0, 1])


# --------------------------------------------------------------------------- mixed model

def _balanced_rows(seed=1):
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(16):
        arm = "ctrl" if s < 8 else "nk"
        u = rng.normal(0, 3.0)
        for t in (0, 24, 48):
            effect = 0.15 * t if arm == "nk" else 0.0      # R2* rise (1/s) in the NK arm
            rows.append({"subject": f"m{s}", "arm": arm, "hours": t,
                         "r2s": 40 + u + effect + rng.normal(0, 1.0)})
    return rows


def test_mixed_model_balanced_equals_cell_means():
    # Balanced random-intercept design: the GLS fixed effects equal the OLS
    # cell-mean contrasts, computed here directly from the data.
    import pandas as pd

    rows = _balanced_rows()
    df = pd.DataFrame(rows)
    m = df.groupby(["arm", "hours"])["r2s"].mean()
    res = mixed_model_repeated(rows, value="r2s", time="hours")
    est = {r.estimate_name: r.estimate for r in res}
    assert est["Intercept"] == pytest.approx(m["ctrl", 0], abs=1e-4)
    assert est["C(arm)[T.nk]"] == pytest.approx(m["nk", 0] - m["ctrl", 0], abs=1e-4)
    assert est["C(time)[T.48]"] == pytest.approx(m["ctrl", 48] - m["ctrl", 0], abs=1e-4)
    inter = (m["nk", 48] - m["nk", 0]) - (m["ctrl", 48] - m["ctrl", 0])
    assert est["C(arm)[T.nk]:C(time)[T.48]"] == pytest.approx(inter, abs=1e-4)
    r = {x.estimate_name: x for x in res}["C(arm)[T.nk]:C(time)[T.48]"]
    assert r.ci_low < 7.2 < r.ci_high and r.p_value < 1e-6     # truth 0.15/h * 48 h = 7.2
    assert r.n == {"subjects": 16, "observations": 48}
    assert r.extra["random_intercept_variance"] > 1.0


def test_mixed_model_dataframe_numeric_time_and_nan():
    import pandas as pd

    rows = _balanced_rows()
    rows[0]["r2s"] = float("nan")
    res = mixed_model_repeated(pd.DataFrame(rows), value="r2s", time="hours", time_as="numeric")
    slope = {r.estimate_name: r for r in res}["C(arm)[T.nk]:time"]
    assert slope.ci_low < 0.15 < slope.ci_high
    assert slope.n["observations"] == 47 and slope.extra["n_dropped"] == 1


def test_mixed_model_validation():
    with pytest.raises(ValidationError, match="lacks the column"):
        mixed_model_repeated([{"value": 1.0, "arm": "a", "time": 0}])
    with pytest.raises(ValidationError, match="time_as"):
        mixed_model_repeated(_balanced_rows(), time_as="spline")


# --------------------------------------------------------------------------- validation, result type

@pytest.mark.parametrize("call, match", [
    (lambda: paired_t_test([1, 2, 3], [1, 2]), "same length"),
    (lambda: paired_t_test([1.0], [2.0]), "at least 2"),
    (lambda: paired_t_test([1, 2, 3], [0, 1, 2]), "zero variance"),
    (lambda: welch_t_test([1, np.nan], [1, 2, 3]), "at least 2"),
    (lambda: welch_t_test([1, np.inf], [1, 2, 3]), "Inf"),
    (lambda: welch_t_test([[1, 2]], [1, 2]), "1-D"),
    (lambda: mann_whitney([1, 2], [3, 4], alternative="two"), "alternative"),
    (lambda: wilcoxon_signed_rank([1, 2], [1, 2]), "non-zero"),
    (lambda: one_way_anova([[1, 2, 3]]), "at least 2 groups"),
    (lambda: one_way_anova([[1, 2], [3]]), "at least 2"),
    (lambda: one_way_anova([[1, 2], [3, 4]], posthoc="scheffe"), "posthoc"),
    (lambda: pearson_correlation([1, 2, 3], [1, 1, 1]), "constant"),
    (lambda: spearman_correlation([1, 2], [1, 2]), "at least 3"),
    (lambda: pearson_correlation([1, 2, 3, 4], [1, 2, 4, 3], ci_level=95), "ci_level"),
])
def test_validation_one_line(call, match):
    with pytest.raises(ValidationError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_as_dict_json_roundtrip():
    res = one_way_anova({"a": [1, 2, 3], "b": [4, 5, 7]})
    d = json.loads(json.dumps(res.as_dict(), allow_nan=False))
    assert d["omnibus"]["ci_low"] is None and d["omnibus"]["df"] == [1.0, 4.0]
    r = wilcoxon_signed_rank(HW_X, HW_Y, alternative="less")
    d = json.loads(json.dumps(r.as_dict(), allow_nan=False))
    assert d["ci_low"] is None and d["statistic"] == 40
    assert isinstance(r, TestResult)
    with pytest.raises(AttributeError):
        r.p_value = 0.0  # frozen
