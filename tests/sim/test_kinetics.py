"""Label kinetics: conservation, closed forms, detection day, validation."""

import json
import math

import numpy as np
import pytest

from oncomri.core import ValidationError
from oncomri.sim.kinetics import (
    IRON_MOLAR_MASS_G_PER_MOL,
    LabelKineticsResult,
    detection_day,
    fluorine_atoms_to_concentration_mmol_l,
    iron_mass_to_concentration_mmol_l,
    simulate_label_kinetics,
)

BASE = dict(cells_delivered=1e6, label_per_cell=10.0, doubling_time_days=None,
            exocytosis_rate_per_day=0.0, degradation_rate_per_day=0.0, death_rate_per_day=0.0,
            phagocyte_clearance_rate_per_day=0.0, days=20.0, region_volume_mm3=100.0,
            relaxivity_r2star_l_per_mmol_s=60.0)


def run(**kw):
    return simulate_label_kinetics(**{**BASE, **kw})


def test_unit_conversions_by_hand():
    # 1e7 pg = 1e-5 g; / 55.845 g/mol = 1.790670e-7 mol = 1.790670e-4 mmol; / 1e-4 L (100 mm3)
    assert iron_mass_to_concentration_mmol_l(1e7, 100.0) == pytest.approx(1.790670e-4 / 1e-4, rel=1e-6)
    # 1e17 F atoms / 6.02214076e23 /mol = 1.660539e-7 mol = 1.660539e-4 mmol; / 1e-5 L (10 mm3)
    assert fluorine_atoms_to_concentration_mmol_l(1e17, 10.0) == pytest.approx(16.60539, rel=1e-6)
    assert IRON_MOLAR_MASS_G_PER_MOL == 55.845


def test_division_conserves_label_and_halves_label_per_cell():
    """No losses, T_d = 3 days: at t = 2 T_d = 6 days N = 4 N0, q = q0 / 4, L = L0."""
    r = run(doubling_time_days=3.0, days=[0.0, 3.0, 6.0])
    np.testing.assert_allclose(r.live_cells, [1e6, 2e6, 4e6], rtol=1e-12)
    np.testing.assert_allclose(r.label_per_cell, [10.0, 5.0, 2.5], rtol=1e-12)
    np.testing.assert_allclose(r.label_in_live_cells, [1e7] * 3, rtol=1e-12)
    np.testing.assert_allclose(r.total_label, [1e7] * 3, rtol=1e-12)
    assert np.all(r.label_in_phagocytes == 0)
    # ΔR2* = 60 L/(mmol s) * 1.790670 mmol/L = 107.4402 1/s, constant
    np.testing.assert_allclose(r.signal_total, [107.4402] * 3, rtol=1e-6)
    assert r.signal_unit == "1/s" and r.label_unit == "pg Fe"


def test_ode_agrees_with_division_conservation():
    r = run(doubling_time_days=3.0, days=[0.0, 3.0, 6.0], method="ode")
    np.testing.assert_allclose(r.label_per_cell, [10.0, 5.0, 2.5], rtol=1e-8)
    np.testing.assert_allclose(r.total_label, [1e7] * 3, rtol=1e-8)


@pytest.mark.parametrize("name", ["exocytosis_rate_per_day", "degradation_rate_per_day"])
def test_single_loss_rate_is_exponential(name):
    """k = 0.1/day, t = 10 days: L = L0 e^-1 = 0.3678794 L0; cells unchanged; nothing to phagocytes."""
    r = run(**{name: 0.1}, days=[0.0, 10.0])
    assert r.label_in_live_cells[-1] == pytest.approx(1e7 * 0.3678794, rel=1e-6)
    assert r.label_per_cell[-1] == pytest.approx(10.0 * 0.3678794, rel=1e-6)
    assert r.live_cells[-1] == pytest.approx(1e6)
    assert r.label_in_phagocytes[-1] == 0.0


def test_death_moves_label_to_phagocytes():
    """k_death = 0.2/day, no clearance, uptake 1: L = L0 e^-kt, P = L0 (1 - e^-kt), total constant."""
    r = run(death_rate_per_day=0.2, days=[0.0, 5.0])
    # t = 5: e^-1 = 0.3678794
    assert r.live_cells[-1] == pytest.approx(1e6 * 0.3678794, rel=1e-6)
    assert r.label_per_cell[-1] == pytest.approx(10.0)       # death does not dilute
    assert r.label_in_live_cells[-1] == pytest.approx(1e7 * 0.3678794, rel=1e-6)
    assert r.label_in_phagocytes[-1] == pytest.approx(1e7 * 0.6321206, rel=1e-6)
    assert r.total_label[-1] == pytest.approx(1e7, rel=1e-12)
    assert r.false_positive_fraction[-1] == pytest.approx(0.6321206, rel=1e-6)


def test_phagocyte_clearance_closed_form():
    """k_death = 0.2, k_clear = 0.1, t = 5: P/L0 = 0.2 (e^-1 - e^-0.5) / (0.1 - 0.2)
    = 0.2 * (0.3678794 - 0.6065307) / -0.1 = 0.4773025; uptake 0.5 halves it."""
    r = run(death_rate_per_day=0.2, phagocyte_clearance_rate_per_day=0.1, days=[0.0, 5.0])
    assert r.label_in_phagocytes[-1] == pytest.approx(1e7 * 0.4773025, rel=1e-6)
    half = run(death_rate_per_day=0.2, phagocyte_clearance_rate_per_day=0.1, days=[0.0, 5.0],
               phagocyte_uptake_fraction=0.5)
    assert half.label_in_phagocytes[-1] == pytest.approx(1e7 * 0.4773025 / 2, rel=1e-6)


def test_phagocyte_pool_when_clearance_equals_live_loss():
    """Degenerate case a = k_clear = 0.2, t = 5: P/L0 = k_death t e^-at = 0.2 * 5 * e^-1 = 0.3678794."""
    r = run(death_rate_per_day=0.2, phagocyte_clearance_rate_per_day=0.2, days=[0.0, 5.0])
    assert r.label_in_phagocytes[-1] == pytest.approx(1e7 * 0.2 * 5.0 * math.exp(-1.0), rel=1e-12)
    near = run(death_rate_per_day=0.2, phagocyte_clearance_rate_per_day=0.2 + 1e-9, days=[0.0, 5.0])
    assert near.label_in_phagocytes[-1] == pytest.approx(1e7 * 0.3678794, rel=1e-6)


def test_ode_matches_closed_form_with_every_process():
    kw = dict(doubling_time_days=2.5, exocytosis_rate_per_day=0.05, degradation_rate_per_day=0.03,
              death_rate_per_day=0.15, phagocyte_clearance_rate_per_day=0.04,
              phagocyte_uptake_fraction=0.7, days=40.0, time_step_days=0.5)
    exact, ode = run(**kw), run(**kw, method="ode")
    for name in ("live_cells", "label_per_cell", "label_in_live_cells", "label_in_phagocytes",
                 "total_label", "signal_total"):
        np.testing.assert_allclose(getattr(ode, name), getattr(exact, name), rtol=1e-6,
                                   err_msg=name)
    # signals only decrease: the phagocyte pool is fed by the live-cell label
    assert np.all(np.diff(exact.signal_live) < 0)
    assert np.all(np.diff(exact.signal_total) <= 1e-12)
    np.testing.assert_allclose(exact.signal_at(exact.days, basis="total"), exact.signal_total,
                               rtol=1e-12)


def test_fluorine_signal():
    # 1e5 cells x 1e12 F atoms = 1e17 F atoms in 10 mm3 = 16.60539 mmol/L 19F
    r = simulate_label_kinetics(
        cells_delivered=1e5, label_per_cell=1e12, doubling_time_days=None,
        exocytosis_rate_per_day=0.0, degradation_rate_per_day=0.0, death_rate_per_day=0.0,
        phagocyte_clearance_rate_per_day=0.0, days=3.0, region_volume_mm3=10.0, label="fluorine")
    np.testing.assert_allclose(r.signal_total, 16.60539, rtol=1e-6)
    assert r.label_unit == "F atoms" and r.signal_unit == "mmol/L 19F"
    assert r.parameters["relaxivity_r2star_l_per_mmol_s"] is None


def test_time_grid_and_as_dict():
    r = run(days=2.5)
    np.testing.assert_allclose(r.days, [0.0, 1.0, 2.0, 2.5])
    d = r.as_dict()
    json.dumps(d)
    assert d["units"]["delta_r2star"] == "1/s"
    assert len(d["delta_r2star_total"]) == 4
    assert isinstance(r, LabelKineticsResult)


def test_detection_day_by_hand_for_exocytosis():
    """Exocytosis half-life 5 days: S(t) = S0 2^(-t/5); threshold S0/3 is reached at
    t = 5 log2(3) = 7.924813 days, so day 8 is the first sampled day below it."""
    r = run(exocytosis_rate_per_day=math.log(2) / 5.0)
    s0 = r.signal_live[0]
    dd = detection_day(r, threshold=s0 / 3.0)
    assert dd.basis == "live"
    assert dd.day == 8.0
    assert dd.crossing_day == pytest.approx(7.924813, abs=1e-6)
    assert dd.detectable_at_start
    assert dd.false_positive_fraction_at_crossing == 0.0
    json.dumps(dd.as_dict())


def test_detection_day_live_versus_total():
    """Death 0.1/day, phagocytes keep everything: live signal halves at ln2/0.1 = 6.931472 days
    (first sampled day 7), when half the total is false positive; total never falls."""
    r = run(death_rate_per_day=0.1)
    thr = r.signal_live[0] / 2.0
    live = detection_day(r, threshold=thr, basis="live")
    total = detection_day(r, threshold=thr, basis="total")
    assert live.day == 7.0
    assert live.crossing_day == pytest.approx(6.931472, abs=1e-6)
    assert live.false_positive_fraction_at_crossing == pytest.approx(0.5, abs=1e-9)
    assert total.basis == "total" and total.day is None and total.crossing_day is None


def test_detection_day_when_never_detectable():
    r = run()
    dd = detection_day(r, threshold=2 * r.signal_live[0])
    assert dd.day == 0.0 and dd.crossing_day == 0.0 and not dd.detectable_at_start


@pytest.mark.parametrize("kw", [
    dict(doubling_time_days=-2.0),
    dict(doubling_time_days=0.0),
    dict(doubling_time_days=float("nan")),
    dict(doubling_time_days="fast"),
    dict(exocytosis_rate_per_day=-0.1),
    dict(degradation_rate_per_day=float("inf")),
    dict(death_rate_per_day=-1.0),
    dict(phagocyte_clearance_rate_per_day=-0.01),
    dict(phagocyte_uptake_fraction=1.5),
    dict(cells_delivered=0.0),
    dict(label_per_cell=-10.0),
    dict(region_volume_mm3=0.0),
    dict(relaxivity_r2star_l_per_mmol_s=None),
    dict(relaxivity_r2star_l_per_mmol_s=-60.0),
    dict(days=[0.0, 5.0, 3.0]),
    dict(days=[-1.0, 2.0]),
    dict(days=0.0),
    dict(label="gadolinium"),
    dict(method="euler"),
    dict(doubling_time_days=0.001, days=100.0),   # e^69315 cells
])
def test_invalid_parameters_raise(kw):
    with pytest.raises(ValidationError):
        run(**kw)


def test_detection_day_validation():
    r = run()
    with pytest.raises(ValidationError):
        detection_day(r, threshold=-1.0)
    with pytest.raises(ValidationError):
        detection_day(r, threshold=1.0, basis="phagocytes")
    with pytest.raises(ValidationError):
        detection_day({"days": [0]}, threshold=1.0)
