"""Tests of oncomri.stats.survival: Kaplan–Meier and log-rank against hand arithmetic and the 6-MP trial."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as st

from oncomri.core.errors import ValidationError
from oncomri.stats.survival import kaplan_meier, kaplan_meier_by_group, log_rank_test

# Freireich EJ et al. The effect of 6-mercaptopurine on the duration of
# steroid-induced remissions in acute leukemia. Blood 1963;21:699-716:
# remission duration (weeks), 1 = relapse, 0 = censored. Worked through in
# Kleinbaum DG, Klein M. Survival Analysis: A Self-Learning Text (Springer,
# chapters 2-3): log-rank chi-square 16.79 (df 1), expected relapses 19.25
# (6-MP) and 10.75 (placebo); KM medians 23 weeks (6-MP) and 8 weeks (placebo).
T_6MP = [6, 6, 6, 6, 7, 9, 10, 10, 11, 13, 16, 17, 19, 20, 22, 23, 25, 32, 32, 34, 35]
E_6MP = [1, 1, 1, 0, 1, 0, 1, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0]
T_PLA = [1, 1, 2, 2, 3, 4, 4, 5, 5, 8, 8, 8, 8, 11, 11, 12, 12, 15, 17, 22, 23]
E_PLA = [1] * 21


def test_km_6mp_product_limit_by_hand():
    km = kaplan_meier(T_6MP, E_6MP, label="6-MP")
    s = dict(zip(km.times, km.survival))
    # S(6) = 18/21; S(7) = S(6)*16/17; S(10) = *14/15; S(13) = *11/12; S(16) = *10/11;
    # S(22) = *6/7; S(23) = *5/6.
    expected = {}
    acc = 1.0
    for t, n_risk, d in [(6, 21, 3), (7, 17, 1), (10, 15, 1), (13, 12, 1), (16, 11, 1), (22, 7, 1), (23, 6, 1)]:
        acc *= (n_risk - d) / n_risk
        expected[t] = acc
    for t, v in expected.items():
        assert s[t] == pytest.approx(v)
    assert s[6] == pytest.approx(0.857, abs=5e-4) and s[23] == pytest.approx(0.448, abs=5e-4)
    assert km.median == 23.0
    assert km.n == 21 and km.n_events_total == 9
    idx = km.times.index(10.0)
    assert (km.n_at_risk[idx], km.n_events[idx], km.n_censored[idx]) == (15, 1, 1)


def test_km_placebo_median_published():
    km = kaplan_meier(T_PLA, E_PLA)
    assert km.median == 8.0
    assert km.survival[-1] == 0.0


def test_km_greenwood_loglog_ci_by_hand():
    km = kaplan_meier(T_6MP, E_6MP)
    # At t = 6: S = 18/21, Greenwood sum d/(n(n-d)) = 3/(21*18);
    # log(-log) band: S^exp(+-z*sqrt(V)/|log S|).
    s = 18 / 21
    c = st.norm.ppf(0.975) * math.sqrt(3 / (21 * 18)) / abs(math.log(s))
    i = km.times.index(6.0)
    assert km.ci_low[i] == pytest.approx(s ** math.exp(c))
    assert km.ci_high[i] == pytest.approx(s ** math.exp(-c))
    # Median CI: first times where the lower / upper band falls to 0.5 or below.
    assert km.median_ci_low == min(t for t, lo in zip(km.times, km.ci_low) if lo <= 0.5) == 13.0
    assert min(km.ci_high) > 0.5 and math.isinf(km.median_ci_high)  # upper band never reaches 0.5


def test_km_at_times_numbers_at_risk_and_nan():
    t = [2.0, 3.0, np.nan, 5.0, 8.0, 8.0, 12.0]
    e = [1, 0, 1, 1, 1, 0, np.nan]
    km = kaplan_meier(t, e, at_times=[0, 4, 8, 10])
    # Kept: (2,1) (3,0) (5,1) (8,1) (8,0). S(4) = 4/5; S(8) = 4/5 * 2/3 * 1/2.
    assert km.n == 5 and km.n_dropped == 2
    assert km.n_at_risk_at == (5, 3, 2, 0)
    assert km.survival_at == pytest.approx((1.0, 0.8, 0.8 * 2 / 3 * 0.5, 0.8 * 2 / 3 * 0.5))


def test_logrank_published_6mp_and_hand_expected():
    t = T_6MP + T_PLA
    e = E_6MP + E_PLA
    g = ["6-MP"] * 21 + ["placebo"] * 21
    r = log_rank_test(t, e, g)
    assert r.statistic == pytest.approx(16.79, abs=5e-3)
    assert r.df == 1
    assert r.p_value == pytest.approx(4.17e-5, rel=1e-2)
    assert r.extra["expected_events"]["6-MP"] == pytest.approx(19.25, abs=5e-3)
    assert r.extra["expected_events"]["placebo"] == pytest.approx(10.75, abs=5e-3)
    assert r.extra["observed_events"] == {"6-MP": 9, "placebo": 21}
    assert r.n == {"6-MP": 21, "placebo": 21}
    assert math.isnan(r.estimate)


def _logrank_by_hand(t, e, g):
    """(O - E)' V^-1 (O - E) over the first k-1 groups, hypergeometric variance."""
    t, e, g = np.asarray(t, float), np.asarray(e, bool), np.asarray(g)
    names = sorted(set(g))
    k = len(names)
    u = np.zeros(k)
    v = np.zeros((k, k))
    for time in np.unique(t[e]):
        risk = t >= time
        n = risk.sum()
        d = (e & (t == time)).sum()
        ng = np.array([(risk & (g == nm)).sum() for nm in names], float)
        dg = np.array([(e & (t == time) & (g == nm)).sum() for nm in names], float)
        u += dg - d * ng / n
        if n > 1:
            f = d * (n - d) / (n * n * (n - 1))
            v += f * (n * np.diag(ng) - np.outer(ng, ng))
    return float(u[:-1] @ np.linalg.solve(v[:-1, :-1], u[:-1]))


def test_logrank_three_groups_against_hand_formula():
    rng = np.random.default_rng(3)
    t = np.round(rng.exponential(12.0, 45), 1) + np.repeat([0.0, 3.0, 8.0], 15)
    e = rng.random(45) < 0.7
    g = np.repeat(["<5 mm", "5-10 mm", ">10 mm"], 15)
    r = log_rank_test(t, e, g)
    chi2 = _logrank_by_hand(t, e, g)
    assert r.statistic == pytest.approx(chi2, rel=1e-8)
    assert r.df == 2
    assert r.p_value == pytest.approx(st.chi2.sf(chi2, 2), rel=1e-8)


def test_km_by_group_and_json():
    res = kaplan_meier_by_group(T_6MP + T_PLA, E_6MP + E_PLA, ["6-MP"] * 21 + ["placebo"] * 21)
    assert list(res) == ["6-MP", "placebo"]
    assert res["6-MP"].median == 23 and res["placebo"].median == 8
    d = json.loads(json.dumps(res["6-MP"].as_dict(), allow_nan=False))
    assert d["median_ci_high"] is None and d["times"][0] == 0.0
    with pytest.raises(AttributeError):
        res["6-MP"].median = 1.0  # frozen


@pytest.mark.parametrize("call, match", [
    (lambda: kaplan_meier([1, -2, 3], [1, 1, 1]), ">= 0"),
    (lambda: kaplan_meier([1, 2, 3], [1, 2, 0]), "0 \\(censored\\) or 1"),
    (lambda: kaplan_meier([1, 2, 3], [1, 0]), "length"),
    (lambda: kaplan_meier([np.nan], [1]), "no non-NaN"),
    (lambda: kaplan_meier([1, 2], [1, 1], ci_level=1.5), "ci_level"),
    (lambda: log_rank_test([1, 2, 3], [1, 1, 0], ["a", "a", "a"]), "at least 2 distinct"),
    (lambda: log_rank_test([1, 2, 3], [0, 0, 0], ["a", "b", "a"]), "at least one observed event"),
    (lambda: log_rank_test([1, 2, 3], [1, 1, 0], ["a", "b"]), "groups must have the length"),
])
def test_survival_validation_one_line(call, match):
    with pytest.raises(ValidationError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
