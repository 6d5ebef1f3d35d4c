"""Study power: Cohen's tables, the normal approximation by hand, statsmodels, Monte Carlo."""

import json

import numpy as np
import pytest
from scipy import stats

from oncomri.core import ValidationError
from oncomri.sim.power import (
    power_paired,
    power_two_sample,
    sample_size_paired,
    sample_size_two_sample,
)

statsmodels_power = pytest.importorskip("statsmodels.stats.power")

# z_{0.975} = 1.959964, z_{0.80} = 0.841621; (1.959964 + 0.841621)^2 = 2.801585^2 = 7.848879
Z2 = 7.848879


@pytest.mark.parametrize("d, n_cohen", [(0.5, 64), (0.8, 26)])
def test_cohen_table(d, n_cohen):
    """Cohen, Psychol Bull 1992;112:155, Table 2: two-sample t, alpha 0.05 two-sided, power 0.80."""
    res = sample_size_two_sample(effect=d, sd=1.0)
    assert res.n_per_arm == n_cohen and res.n_other_arm == n_cohen and res.n_total == 2 * n_cohen
    assert res.achieved_power >= 0.80
    assert power_two_sample(effect=d, sd=1.0, n_per_arm=n_cohen - 1).power < 0.80


def test_cohen_small_effect():
    """Table 2 lists 393 for d = 0.2; the exact noncentral t needs 393.41, i.e. 394 whole subjects."""
    res = sample_size_two_sample(effect=0.2, sd=1.0)
    assert abs(res.n_per_arm_exact - 393) < 1
    assert res.n_per_arm == 394


def test_normal_approximation_by_hand():
    # two-sample: n = 2 * 7.848879 / 0.5^2 = 62.79103; paired: n = 7.848879 / 0.5^2 = 31.39552
    assert sample_size_two_sample(effect=0.5, sd=1.0).n_per_arm_normal_approx == pytest.approx(
        2 * Z2 / 0.25, rel=1e-6)
    assert sample_size_paired(effect=0.5, sd_difference=1.0).n_per_arm_normal_approx == \
        pytest.approx(Z2 / 0.25, rel=1e-6)
    # the effect in the biomarker's unit: 10 1/s with SD 20 1/s is d = 0.5
    r = sample_size_two_sample(effect=10.0, sd=20.0, unit="1/s")
    assert r.effect_size_d == 0.5 and r.n_per_arm == 64 and r.unit == "1/s"
    # power at n = 64, d = 0.5: delta = 0.5 sqrt(64 * 64 / 128) = 2.828427;
    # Phi(2.828427 - 1.959964) + Phi(-2.828427 - 1.959964) = Phi(0.868463) + 8e-7 = 0.807431
    p = power_two_sample(effect=0.5, sd=1.0, n_per_arm=64)
    assert p.noncentrality == pytest.approx(2.828427, rel=1e-6)
    assert p.power_normal_approx == pytest.approx(0.807431, abs=2e-6)
    assert p.df == 126
    # the t test has slightly less power than the z test
    assert 0.80 < p.power < p.power_normal_approx


def test_against_statsmodels_solve_power():
    ind, one = statsmodels_power.TTestIndPower(), statsmodels_power.TTestPower()
    for d in (0.3, 0.7, 1.2):
        assert sample_size_two_sample(effect=d, sd=1.0, power=0.9, alpha=0.01).n_per_arm_exact == \
            pytest.approx(ind.solve_power(effect_size=d, alpha=0.01, power=0.9), rel=1e-5)
        assert sample_size_paired(effect=d, sd_difference=1.0).n_per_arm_exact == pytest.approx(
            one.solve_power(effect_size=d, alpha=0.05, power=0.8), rel=1e-5)
    assert power_two_sample(effect=0.5, sd=1.0, n_per_arm=30, ratio=2.0).power == pytest.approx(
        ind.power(0.5, 30, 0.05, ratio=2.0))


def test_paired_by_hand_and_statsmodels():
    res = sample_size_paired(effect=0.5, sd_difference=1.0)
    assert res.n_per_arm == 34 and res.n_total == 34 and res.n_other_arm is None
    p = power_paired(effect=0.5, sd_difference=1.0, n_pairs=34)
    # delta = 0.5 sqrt(34) = 2.915476, df = 33
    assert p.noncentrality == pytest.approx(2.915476, rel=1e-6) and p.df == 33
    assert p.power == pytest.approx(res.achieved_power)
    json.dumps(p.as_dict())
    json.dumps(res.as_dict())


def test_welch_equals_student_for_equal_sds_and_arms():
    s = power_two_sample(effect=0.6, sd=1.0, n_per_arm=20)
    w = power_two_sample(effect=0.6, sd=1.0, sd_other=1.0, n_per_arm=20)
    assert w.test == "welch" and s.test == "student"
    assert w.df == pytest.approx(38.0) and w.power == pytest.approx(s.power, rel=1e-12)


def test_welch_power_against_monte_carlo():
    """Welch t, arms of 24 with SDs 8 and 15, difference 10: simulated rejection rate
    (20000 studies) within 0.015 of the predicted power."""
    pred = power_two_sample(effect=10.0, sd=8.0, sd_other=15.0, n_per_arm=24)
    rng = np.random.default_rng(11)
    a = rng.normal(10.0, 8.0, size=(20000, 24))
    b = rng.normal(0.0, 15.0, size=(20000, 24))
    rate = np.mean(stats.ttest_ind(a, b, axis=1, equal_var=False).pvalue < 0.05)
    assert rate == pytest.approx(pred.power, abs=0.015)
    # Welch df by hand: v1 = 64/24 = 2.666667, v2 = 225/24 = 9.375;
    # (v1 + v2)^2 = 12.041667^2 = 145.00174; v1^2/23 + v2^2/23 = (7.111111 + 87.890625)/23
    # = 4.130510; df = 145.00174 / 4.130510 = 35.10504
    assert pred.df == pytest.approx(35.10504, rel=1e-6)


def test_sample_size_with_unequal_arms():
    r = sample_size_two_sample(effect=0.5, sd=1.0, ratio=2.0)
    assert r.n_other_arm == 2 * r.n_per_arm and r.achieved_power >= 0.8
    # normal approx: (1 + 1/2) * 7.848879 / 0.25 = 47.09327
    assert r.n_per_arm_normal_approx == pytest.approx(1.5 * Z2 / 0.25, rel=1e-6)


def test_power_grows_with_n():
    powers = [power_two_sample(effect=0.5, sd=1.0, n_per_arm=n).power for n in (5, 10, 20, 40)]
    assert all(np.diff(powers) > 0)


def test_large_effect_needs_the_minimum():
    r = sample_size_two_sample(effect=5.0, sd=1.0)
    assert r.n_per_arm == 3     # exact n 2.12: two per arm are not enough
    assert power_two_sample(effect=5.0, sd=1.0, n_per_arm=2).power < 0.8


@pytest.mark.parametrize("call", [
    lambda: power_two_sample(effect=0.0, sd=1.0, n_per_arm=10),
    lambda: power_two_sample(effect=1.0, sd=-1.0, n_per_arm=10),
    lambda: power_two_sample(effect=1.0, sd=1.0, n_per_arm=1),
    lambda: power_two_sample(effect=1.0, sd=1.0, n_per_arm=10.5),
    lambda: power_two_sample(effect=1.0, sd=1.0, n_per_arm=10, alpha=1.0),
    lambda: power_two_sample(effect=1.0, sd=1.0, n_per_arm=10, ratio=0.0),
    lambda: power_two_sample(effect=1.0, sd=1.0, n_per_arm=10, ratio=0.1),
    lambda: power_two_sample(effect=1.0, sd=1.0, n_per_arm=10, sd_other=0.0),
    lambda: sample_size_two_sample(effect=1.0, sd=1.0, power=0.01),
    lambda: sample_size_two_sample(effect=1.0, sd=1.0, power=1.0),
    lambda: sample_size_two_sample(effect=1e-6, sd=1.0),
    lambda: power_paired(effect=1.0, sd_difference=0.0, n_pairs=10),
    lambda: power_paired(effect=float("nan"), sd_difference=1.0, n_pairs=10),
    lambda: sample_size_paired(effect=1.0, sd_difference=1.0, alpha=0.0),
])
def test_validation(call):
    with pytest.raises(ValidationError):
        call()
