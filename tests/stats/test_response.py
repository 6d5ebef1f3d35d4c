"""Tests of oncomri.stats.response: RECIST 1.1, mRECIST, volumetric response, ORR/DCR."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from oncomri.core.errors import ValidationError
from oncomri.stats.response import (
    VOLUMETRIC_PD_PERCENT,
    VOLUMETRIC_PR_PERCENT,
    delta_volume,
    disease_control_rate,
    mrecist_response,
    objective_response_rate,
    recist_response,
    response_rate,
    volumetric_response,
    waterfall_table,
)


# --------------------------------------------------------------------------
# RECIST 1.1 rule boundaries
# --------------------------------------------------------------------------

def test_exactly_minus_30_percent_is_pr():
    # (70 - 100) / 100 = -30 % -> PR (the boundary is inclusive)
    r = recist_response([100.0, 70.0])
    assert r.responses == ("BL", "PR")
    assert r.percent_change_from_baseline[1] == pytest.approx(-30.0)
    assert r.best_overall_response == "PR"


def test_minus_29_9_percent_is_sd():
    # (70.1 - 100) / 100 = -29.9 % -> SD
    assert recist_response([100.0, 70.1]).responses[1] == "SD"


def test_plus_20_percent_but_only_4_mm_is_not_pd():
    # nadir 20 mm, now 24 mm: +20 % but only +4 mm < 5 mm -> SD
    r = recist_response([20.0, 24.0])
    assert r.responses[1] == "SD"
    assert r.percent_change_from_nadir[1] == pytest.approx(20.0)


def test_plus_20_percent_and_5_mm_is_pd():
    # nadir 25 mm, now 30 mm: +20 % and +5 mm -> PD (both inclusive)
    r = recist_response([25.0, 30.0])
    assert r.responses[1] == "PD"
    assert r.progression_index == 1
    assert r.best_overall_response == "PD"


def test_plus_5_mm_but_only_19_percent_is_not_pd():
    # nadir 100 mm, now 119 mm: +19 mm but +19 % < 20 % -> SD
    assert recist_response([100.0, 119.0]).responses[1] == "SD"


def test_nadir_based_pd_after_earlier_pr():
    # baseline 100, PR at 60 (-40 %), then 75: +25 % and +15 mm over nadir 60 -> PD,
    # although 75 is still -25 % from baseline.
    r = recist_response([100.0, 60.0, 75.0])
    assert r.responses == ("BL", "PR", "PD")
    assert r.percent_change_from_nadir[2] == pytest.approx(25.0)
    assert r.percent_change_from_baseline[2] == pytest.approx(-25.0)
    # best overall response is the best until progression: PR
    assert r.best_overall_response == "PR"
    assert r.best_percent_change == pytest.approx(-40.0)
    assert r.progression_index == 2


def test_nadir_is_running_minimum_not_last_value():
    # 100 -> 60 (PR) -> 68 (SD? +13.3 % from 60, -32 % from 100 -> PR) -> 73
    # at 73: nadir is still 60 -> +21.7 % and +13 mm -> PD
    r = recist_response([100.0, 60.0, 68.0, 73.0])
    assert r.responses == ("BL", "PR", "PR", "PD")


def test_new_lesion_is_pd_even_when_shrinking():
    r = recist_response([100.0, 50.0, 40.0], new_lesions=[False, False, True])
    assert r.responses == ("BL", "PR", "PD")
    assert r.best_overall_response == "PR"


def test_new_lesion_at_first_scan_gives_bor_pd():
    r = recist_response([100.0, 90.0, 50.0], new_lesions=[False, True, False])
    assert r.responses[1] == "PD"
    # responses after progression do not count for the best overall response
    assert r.best_overall_response == "PD"
    assert r.best_percent_change == pytest.approx(-10.0)


def test_complete_disappearance_is_cr():
    r = recist_response([42.0, 0.0])
    assert r.responses[1] == "CR"
    assert r.best_overall_response == "CR"


def test_nodes_below_10_mm_count_as_cr():
    # baseline: lesion 30 mm + node 15 mm short axis = 45 mm;
    # follow-up: lesion gone, node 9 mm -> sum 9 mm, non-nodal part 0 -> CR
    nodes = [[15.0], [9.0]]
    r = recist_response([45.0, 9.0], node_short_axes_mm=nodes)
    assert r.responses[1] == "CR"
    # without the node information a 9 mm sum is only PR: (9-45)/45 = -80 %
    assert recist_response([45.0, 9.0]).responses[1] == "PR"


def test_node_of_exactly_10_mm_is_not_cr():
    # node 10 mm is not < 10 mm -> (10-45)/45 = -77.8 % -> PR
    r = recist_response([45.0, 10.0], node_short_axes_mm=[[15.0], [10.0]])
    assert r.responses[1] == "PR"


def test_node_cr_needs_non_nodal_lesions_gone():
    # lesion 5 mm + node 8 mm = 13 mm: lesion still there -> PR, not CR
    r = recist_response([45.0, 13.0], node_short_axes_mm=[[15.0], [8.0]])
    assert r.responses[1] == "PR"


def test_reappearance_after_cr_is_pd():
    # nadir 0 mm: 20 % of 0 is 0, so an increase of >= 5 mm is PD
    r = recist_response([30.0, 0.0, 5.0])
    assert r.responses == ("BL", "CR", "PD")
    assert r.best_overall_response == "CR"
    assert math.isnan(r.percent_change_from_nadir[2])


def test_nan_is_not_evaluable_and_skipped_for_nadir():
    r = recist_response([100.0, float("nan"), 65.0])
    assert r.responses == ("BL", "NE", "PR")
    assert r.best_overall_response == "PR"
    assert recist_response([100.0, float("nan")]).best_overall_response == "NE"


def test_baseline_index_marks_earlier_scans():
    r = recist_response([80.0, 100.0, 70.0], baseline_index=1)
    assert r.responses == ("NA", "BL", "PR")


# --------------------------------------------------------------------------
# Best overall response with confirmation (RECIST 1.1 section 4.4.1, table 3)
# --------------------------------------------------------------------------

def test_unconfirmed_pr_becomes_sd_with_confirmation():
    # 65: -35 % -> PR; 76: +16.9 % over nadir 65 -> not PD, -24 % from baseline -> SD
    sld = [100.0, 65.0, 76.0]
    r0 = recist_response(sld)
    assert r0.responses == ("BL", "PR", "SD")
    assert r0.best_overall_response == "PR"
    r1 = recist_response(sld, confirmation=True)
    assert r1.best_overall_response == "SD"


def test_confirmed_pr_and_cr():
    assert recist_response([100.0, 60.0, 55.0], confirmation=True).best_overall_response == "PR"
    assert recist_response([100.0, 0.0, 0.0], confirmation=True).best_overall_response == "CR"
    # CR then PR... -> PR; PR then CR -> PR (the CR at the end is unconfirmed)
    assert recist_response([100.0, 60.0, 0.0], confirmation=True).best_overall_response == "PR"


def test_confirmation_interval_uses_days():
    # PR at day 28, PR at day 42 (only 14 days later), PR at day 70 (42 days later)
    sld = [100.0, 60.0, 60.0, 60.0]
    days = [0.0, 28.0, 42.0, 70.0]
    r = recist_response(sld, times_days=days, confirmation=True)
    assert r.best_overall_response == "PR"  # day 28 confirmed by day 70 (>= 28 days)
    # only two PR scans 14 days apart: the day-28 PR has no confirming scan >= 28 days later
    r2 = recist_response(sld[:3], times_days=days[:3], confirmation=True)
    assert r2.best_overall_response == "SD"


def test_unconfirmed_pr_then_pd_depends_on_sd_duration():
    # PR at day 21, PD at day 42 (60 -> 80: +33 %, +20 mm)
    sld = [100.0, 60.0, 80.0]
    days = [0.0, 21.0, 42.0]
    r = recist_response(sld, times_days=days, confirmation=True, min_sd_duration_days=42.0)
    assert r.best_overall_response == "PD"   # SD at day 21 < 42 days -> does not count
    r = recist_response(sld, times_days=days, confirmation=True, min_sd_duration_days=14.0)
    assert r.best_overall_response == "SD"


# --------------------------------------------------------------------------
# mRECIST
# --------------------------------------------------------------------------

def test_mrecist_viable_tumour():
    # viable diameters: 40 -> 0 (no arterial enhancement) -> CR
    assert mrecist_response([40.0, 0.0]).responses[1] == "CR"
    # 40 -> 28: -30 % -> PR; 28 -> 34: +21 %, +6 mm over nadir 28 -> PD
    r = mrecist_response([40.0, 28.0, 34.0])
    assert r.responses == ("BL", "PR", "PD")
    assert r.criteria == "mRECIST"
    # 28 -> 33: +17.9 % (+5 mm) over the nadir -> not PD; (33 - 40) / 40 = -17.5 % -> SD
    assert mrecist_response([40.0, 28.0, 33.0]).responses[2] == "SD"


def test_mrecist_without_5mm_floor():
    # 20 -> 24 mm: +20 % but +4 mm: SD with the RECIST 1.1 floor, PD without it
    assert mrecist_response([20.0, 24.0]).responses[1] == "SD"
    assert mrecist_response([20.0, 24.0], pd_min_increase_mm=0.0).responses[1] == "PD"


# --------------------------------------------------------------------------
# Volumetric response
# --------------------------------------------------------------------------

def test_volumetric_thresholds_are_sphere_equivalents():
    # (1 - 0.3)^3 - 1 = 0.343 - 1 = -0.657; (1 + 0.2)^3 - 1 = 1.728 - 1 = +0.728
    assert VOLUMETRIC_PR_PERCENT == pytest.approx(-65.7)
    assert VOLUMETRIC_PD_PERCENT == pytest.approx(72.8)


def test_volumetric_boundaries():
    # baseline 1000 mm3: 343 mm3 = -65.7 % -> PR; 344 -> SD
    assert volumetric_response([1000.0, 343.0]).responses[1] == "PR"
    assert volumetric_response([1000.0, 344.0]).responses[1] == "SD"
    # 1728 mm3 = +72.8 % -> PD; 1727 -> SD
    assert volumetric_response([1000.0, 1728.0]).responses[1] == "PD"
    assert volumetric_response([1000.0, 1727.0]).responses[1] == "SD"
    assert volumetric_response([1000.0, 0.0]).responses[1] == "CR"


def test_volumetric_sphere_phantom_matches_recist():
    # a sphere of diameter d has V = pi d^3 / 6; diameters 50 -> 35 (-30 %) -> 42 mm
    # (+20 % and +7 mm over the nadir); volumes -65.7 % then +72.8 % over the nadir
    d = np.array([50.0, 35.0, 42.0])
    v = np.pi * d**3 / 6
    rv = volumetric_response(v)
    rd = recist_response(d)
    assert rv.responses == rd.responses == ("BL", "PR", "PD")


def test_volumetric_rounded_thresholds_option():
    # -65 % with the rounded thresholds: 350 mm3 of 1000 -> PR; default -65.7 % -> SD
    assert volumetric_response([1000.0, 350.0], pr_percent=-65.0, pd_percent=73.0).responses[1] == "PR"
    assert volumetric_response([1000.0, 350.0]).responses[1] == "SD"


def test_delta_volume_day_8():
    # 200 mm3 at day 0, 150 at day 8 -> dV = -50 mm3 = -25 %
    dv = delta_volume([200.0, 180.0, 150.0], [0.0, 4.0, 8.0])
    assert dv.delta_volume_mm3 == pytest.approx(-50.0)
    assert dv.percent_change == pytest.approx(-25.0)
    assert not dv.interpolated
    # interpolated: scans at day 6 (160) and 10 (120) -> day 8: 140 -> -30 %
    dv = delta_volume([200.0, 160.0, 120.0], [0.0, 6.0, 10.0], interpolate=True)
    assert dv.volume_mm3 == pytest.approx(140.0)
    assert dv.percent_change == pytest.approx(-30.0)
    assert dv.interpolated
    with pytest.raises(ValidationError, match="interpolate=True"):
        delta_volume([200.0, 160.0, 120.0], [0.0, 6.0, 10.0])


# --------------------------------------------------------------------------
# ORR / DCR with Clopper-Pearson intervals
# --------------------------------------------------------------------------

def test_orr_acceptance_example():
    # 11 CR + 3 PR + 1 SD among 15 patients: ORR 14/15 = 93.3 %, exact 95 % CI 68.1-99.8 %
    bor = ["CR"] * 11 + ["PR"] * 3 + ["SD"]
    orr = objective_response_rate(bor)
    assert orr.n_responders == 14 and orr.n_total == 15
    assert orr.proportion == pytest.approx(14 / 15)
    assert round(100 * orr.proportion, 1) == 93.3
    assert round(100 * orr.ci_low, 1) == 68.1
    assert round(100 * orr.ci_high, 1) == 99.8
    assert orr.method == "Clopper-Pearson exact"
    assert orr.counts == {"CR": 11, "PR": 3, "SD": 1, "PD": 0, "NE": 0}
    d = orr.as_dict()
    json.dumps(d)
    assert d["proportion_percent"] == pytest.approx(93.333, abs=1e-3)


def test_orr_ci_equals_beta_quantiles():
    # Clopper-Pearson: lower = Beta(k, n-k+1).ppf(a/2), upper = Beta(k+1, n-k).ppf(1-a/2)
    from scipy.stats import beta

    orr = objective_response_rate({"CR": 2, "PR": 3, "SD": 4, "PD": 6})  # k = 5, n = 15
    assert orr.ci_low == pytest.approx(beta.ppf(0.025, 5, 11))
    assert orr.ci_high == pytest.approx(beta.ppf(0.975, 6, 10))


def test_dcr_and_edge_counts():
    dcr = disease_control_rate({"CR": 1, "PR": 2, "SD": 3, "PD": 3, "NE": 1})
    assert (dcr.n_responders, dcr.n_total) == (6, 10)  # NE stays in the denominator
    none = objective_response_rate(["PD", "SD", "NE"])
    assert none.proportion == 0.0 and none.ci_low == 0.0
    # k = 0, n = 3: upper = 1 - 0.025^(1/3) = 0.7076
    assert none.ci_high == pytest.approx(1 - 0.025 ** (1 / 3))


def test_orr_accepts_assessments():
    subjects = [recist_response([100.0, 50.0]), recist_response([100.0, 130.0])]
    assert objective_response_rate(subjects).n_responders == 1


# --------------------------------------------------------------------------
# Waterfall table
# --------------------------------------------------------------------------

def test_waterfall_sorted_descending():
    t = waterfall_table(
        {"s1": -40.0, "s2": 25.0, "s3": -100.0, "s4": float("nan"), "s5": 25.0},
        responses={"s1": "PR", "s2": "PD", "s3": "CR", "s5": "SD"},
    )
    assert t.subjects == ("s2", "s5", "s1", "s3")
    assert t.best_percent_change == (25.0, 25.0, -40.0, -100.0)
    assert t.best_overall_response == ("PD", "SD", "PR", "CR")
    assert t.not_evaluable == ("s4",)
    json.dumps(t.as_dict())


def test_waterfall_from_assessments():
    t = waterfall_table({"a": recist_response([100.0, 60.0, 90.0]), "b": recist_response([50.0, 55.0])})
    # a: best change -40 % (PR, then PD at 90); b: +10 % (SD)
    assert t.subjects == ("b", "a")
    assert t.best_percent_change == pytest.approx((10.0, -40.0))
    assert t.best_overall_response == ("SD", "PR")


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------

@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: recist_response([]), "sld_mm_by_time is empty"),
        (lambda: recist_response([30.0, -1.0]), "negative"),
        (lambda: recist_response([0.0, 10.0]), "baseline"),
        (lambda: recist_response([[1.0, 2.0]]), "1-D"),
        (lambda: recist_response([30.0, 20.0], baseline_index=2), "baseline_index"),
        (lambda: recist_response([30.0, 20.0], new_lesions=[True, False]), "new_lesions"),
        (lambda: recist_response([30.0, 20.0], new_lesions=[False]), "new_lesions"),
        (lambda: recist_response([30.0, 20.0], node_short_axes_mm=[[40.0], [5.0]]), "node_short_axes_mm"),
        (lambda: recist_response([30.0, 20.0], min_sd_duration_days=42), "times_days"),
        (lambda: recist_response([30.0, 20.0], times_days=[5.0, 1.0]), "times_days"),
        (lambda: mrecist_response([30.0, -2.0]), "viable_sld_mm_by_time"),
        (lambda: volumetric_response([100.0, 50.0], pr_percent=10.0), "pr_percent"),
        (lambda: objective_response_rate([]), "responses is empty"),
        (lambda: objective_response_rate(["CR", "XX"]), "unknown category"),
        (lambda: response_rate(["CR"], confidence_level=95), "confidence_level"),
        (lambda: waterfall_table({}), "empty"),
    ],
)
def test_validation_errors_are_one_line(call, match):
    with pytest.raises(ValidationError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
