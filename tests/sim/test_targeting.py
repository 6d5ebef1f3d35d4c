"""Magnetic resonance targeting: force, Stokes drift, units, validation."""

import json
import math

import pytest

from oncomri.core import ValidationError
from oncomri.sim.targeting import (
    BLOOD_DENSITY_KG_M3,
    BLOOD_VISCOSITY_PA_S,
    MAGNETITE_MS_BULK_AM2_PER_KG,
    OXIDE_IRON_MASS_RATIO,
    magnetic_drift,
)

CELL = dict(iron_per_cell_pg=10.0, gradient_t_per_m=0.04,
            saturation_magnetisation_am2_per_kg=MAGNETITE_MS_BULK_AM2_PER_KG,
            magnetisation_basis="magnetite", cell_radius_um=5.0, duration_s=3600.0,
            field_strength_t=3.0)


def test_constants():
    assert MAGNETITE_MS_BULK_AM2_PER_KG == 92.0
    assert BLOOD_VISCOSITY_PA_S == 3.5e-3
    assert BLOOD_DENSITY_KG_M3 == 1060.0
    # Fe3O4 / 3 Fe = (3*55.845 + 4*15.999) / (3*55.845) = 231.531 / 167.535
    assert OXIDE_IRON_MASS_RATIO["magnetite"] == pytest.approx(1.3819859, rel=1e-7)
    # Fe2O3 / 2 Fe = 159.687 / 111.690
    assert OXIDE_IRON_MASS_RATIO["maghemite"] == pytest.approx(1.4297341, rel=1e-7)


def test_ten_pg_cell_at_40_mt_per_m_by_hand():
    """10 pg Fe as magnetite: 13.819859 pg Fe3O4 = 1.3819859e-14 kg; m = 92 * that
    = 1.271427e-12 A m2; F = m * 0.04 T/m = 5.085708e-14 N (0.0509 pN);
    drag 6 pi 3.5e-3 Pa s * 5e-6 m = 3.298672e-7 N s/m; v = F / drag = 1.541744e-7 m/s
    (0.154 um/s); in 1 h 5.550278e-4 m = 0.555 mm; Re = 1060 * v * 1e-5 m / 3.5e-3
    = 4.669282e-7; tau = 2 * 1060 * (5e-6)^2 / (9 * 3.5e-3) = 1.682540e-6 s."""
    d = magnetic_drift(**CELL)
    assert d.oxide_mass_per_cell_pg == pytest.approx(13.819859, rel=1e-7)
    assert d.magnetic_moment_am2 == pytest.approx(1.271427e-12, rel=1e-6)
    assert d.force_n == pytest.approx(5.085708e-14, rel=1e-6)
    assert d.force_pn == pytest.approx(0.05085708, rel=1e-6)
    assert d.drag_coefficient_n_s_per_m == pytest.approx(3.298672e-7, rel=1e-6)
    assert d.velocity_m_per_s == pytest.approx(1.541744e-7, rel=1e-6)
    assert d.velocity_um_per_s == pytest.approx(0.1541744, rel=1e-6)
    assert d.distance_m == pytest.approx(5.550278e-4, rel=1e-6)
    assert d.distance_mm == pytest.approx(0.5550278, rel=1e-6)
    assert d.reynolds_number == pytest.approx(4.669282e-7, rel=1e-6)
    assert d.velocity_relaxation_time_s == pytest.approx(1.682540e-6, rel=1e-6)
    assert d.stokes_drag_valid and d.saturation_assumption_valid
    out = d.as_dict()
    json.dumps(out)
    assert out["force_pn"] == pytest.approx(0.05085708, rel=1e-6)


def test_units_and_scaling():
    base = magnetic_drift(**CELL)
    # F = m G: linear in gradient and iron; 400 mT/m -> 10x the force and velocity
    steer = magnetic_drift(**{**CELL, "gradient_t_per_m": 0.4})
    assert steer.force_n == pytest.approx(10 * base.force_n)
    assert steer.velocity_m_per_s == pytest.approx(10 * base.velocity_m_per_s)
    assert magnetic_drift(**{**CELL, "iron_per_cell_pg": 20.0}).force_n == pytest.approx(2 * base.force_n)
    # Stokes: v ~ 1/(eta r); plasma (1.2 mPa s) is faster than blood
    assert magnetic_drift(**{**CELL, "cell_radius_um": 10.0}).velocity_m_per_s == pytest.approx(
        base.velocity_m_per_s / 2)
    plasma = magnetic_drift(**{**CELL, "viscosity_pa_s": 1.2e-3})
    assert plasma.velocity_m_per_s == pytest.approx(base.velocity_m_per_s * 3.5 / 1.2)
    # the same moment expressed per kg of iron: Ms_Fe = 92 * 1.3819859 = 127.14270 A m2/kg Fe
    per_iron = magnetic_drift(**{**CELL, "magnetisation_basis": "iron",
                                 "saturation_magnetisation_am2_per_kg": 127.14270})
    assert per_iron.magnetic_moment_am2 == pytest.approx(base.magnetic_moment_am2, rel=1e-6)
    assert per_iron.oxide_mass_per_cell_pg == 10.0
    # distance is v t; zero time, zero distance
    assert magnetic_drift(**{**CELL, "duration_s": 0.0}).distance_m == 0.0


def test_validity_flags():
    assert not magnetic_drift(**{**CELL, "field_strength_t": 0.5}).saturation_assumption_valid
    assert magnetic_drift(**{**CELL, "field_strength_t": 1.5}).saturation_assumption_valid
    # 1e5 pg Fe in a 100 T/m gradient: v ~ 3.9 m/s, Re ~ 1e1 -> Stokes does not hold
    fast = magnetic_drift(**{**CELL, "iron_per_cell_pg": 1e5, "gradient_t_per_m": 100.0})
    assert fast.reynolds_number > 0.1 and not fast.stokes_drag_valid


@pytest.mark.parametrize("kw", [
    dict(iron_per_cell_pg=0.0),
    dict(iron_per_cell_pg=-10.0),
    dict(gradient_t_per_m=-0.04),
    dict(gradient_t_per_m=float("inf")),
    dict(saturation_magnetisation_am2_per_kg=0.0),
    dict(saturation_magnetisation_am2_per_kg=92000.0),   # A m2/g by mistake
    dict(magnetisation_basis="hematite"),
    dict(cell_radius_um=0.0),
    dict(duration_s=-1.0),
    dict(field_strength_t=0.0),
    dict(viscosity_pa_s=3.5),                            # mPa s given as Pa s
    dict(viscosity_pa_s=-1e-3),
    dict(fluid_density_kg_m3=0.0),
    dict(cell_radius_um="big"),
])
def test_validation(kw):
    with pytest.raises(ValidationError):
        magnetic_drift(**{**CELL, **kw})


def test_hand_force_formula_matches_definition():
    d = magnetic_drift(**CELL)
    assert d.force_n == pytest.approx(d.magnetic_moment_am2 * d.gradient_t_per_m)
    assert d.velocity_m_per_s == pytest.approx(
        d.force_n / (6 * math.pi * d.viscosity_pa_s * d.cell_radius_um * 1e-6))
