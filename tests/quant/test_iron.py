"""Iron from ΔR2*: relaxivity table, concentration, mass, cell number."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from oncomri.core.errors import GeometryError, ValidationError
from oncomri.quant.iron import (
    FE_MOLAR_MASS_G_PER_MOL,
    RELAXIVITY_TABLE,
    CellNumber,
    IronMass,
    cell_number,
    iron_concentration,
    iron_mass,
    labelled_cells,
    relaxivity,
)


# ---------------------------------------------------------------- relaxivity table

@pytest.mark.parametrize(
    "field, medium, kind, expected",
    [
        # Knobloch et al., Invest Radiol 2018 (shared/data/MANIFEST.md)
        (1.5, "saline", "r1", 19.9), (1.5, "saline", "r2", 60.8), (1.5, "saline", "r2star", 60.4),
        (1.5, "plasma", "r1", 19.0), (1.5, "plasma", "r2", 64.9), (1.5, "plasma", "r2star", 64.4),
        (3.0, "saline", "r1", 10.0), (3.0, "saline", "r2", 62.3), (3.0, "saline", "r2star", 57.0),
        (3.0, "plasma", "r1", 9.5), (3.0, "plasma", "r2", 65.2), (3.0, "plasma", "r2star", 55.7),
    ],
)
def test_relaxivity_table_values(field, medium, kind, expected):
    assert relaxivity("ferumoxytol", field_strength_t=field, medium=medium, kind=kind) == expected


def test_relaxivity_defaults_and_tolerance():
    assert relaxivity(field_strength_t=3.0) == 55.7  # plasma, r2star by default
    # Siemens 3 T runs at 2.89 T; 1.45 T is within tolerance of 1.5 T
    assert relaxivity("Ferumoxytol", field_strength_t=2.89, medium="Saline") == 57.0
    assert relaxivity(field_strength_t=1.45) == 64.4


def test_relaxivity_table_is_frozen():
    assert isinstance(RELAXIVITY_TABLE, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        RELAXIVITY_TABLE[0].r2star = 1.0


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(agent="feraheme-x", field_strength_t=3.0), "relaxivity= explicitly"),
        (dict(agent="ferumoxytol", field_strength_t=7.0), "relaxivity= explicitly"),
        (dict(agent="ferumoxytol", field_strength_t=2.7), "relaxivity= explicitly"),
        (dict(agent="ferumoxytol", field_strength_t=3.0, medium="blood"), "relaxivity= explicitly"),
        (dict(agent="ferumoxytol", field_strength_t=3.0, kind="r3"), "kind"),
        (dict(agent="ferumoxytol", field_strength_t=-1.0), "field_strength_t"),
    ],
)
def test_relaxivity_refuses_unknown(kwargs, words):
    with pytest.raises(ValidationError, match=words):
        relaxivity(**kwargs)


# ---------------------------------------------------------------- concentration

def test_concentration_hand_computed():
    # 57.0 s^-1 / 57.0 s^-1 mM^-1 (3 T saline) = 1.0 mM exactly
    c = iron_concentration(57.0, agent="ferumoxytol", field_strength_t=3.0, medium="saline")
    assert c == 1.0
    # 1.5 T plasma: 128.8 / 64.4 = 2 mM; 32.2 / 64.4 = 0.5 mM
    c = iron_concentration([128.8, 32.2, 0.0], agent="ferumoxytol", field_strength_t=1.5)
    np.testing.assert_allclose(c, [2.0, 0.5, 0.0], rtol=1e-15)
    # user relaxivity: 30 / 20 = 1.5 mM
    assert iron_concentration(30.0, relaxivity=20.0) == 1.5


def test_concentration_nan_passes_through():
    c = iron_concentration(np.array([np.nan, 10.0]), relaxivity=10.0)
    assert np.isnan(c[0]) and c[1] == 1.0


def test_concentration_negative_error_or_clip():
    d = np.array([[-5.0, 20.0], [40.0, 0.0]])
    with pytest.raises(ValidationError, match="negative='clip'"):
        iron_concentration(d, relaxivity=20.0)
    c = iron_concentration(d, relaxivity=20.0, negative="clip")
    np.testing.assert_array_equal(c, [[0.0, 1.0], [2.0, 0.0]])
    with pytest.raises(ValidationError, match="negative"):
        iron_concentration(d, relaxivity=20.0, negative="abs")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),  # neither relaxivity nor agent
        dict(agent="ferumoxytol"),  # no field
        dict(relaxivity=50.0, agent="ferumoxytol", field_strength_t=3.0),  # both
        dict(relaxivity=0.0),
        dict(relaxivity=-3.0),
        dict(relaxivity=float("nan")),
    ],
)
def test_concentration_relaxivity_arguments(kwargs):
    with pytest.raises(ValidationError):
        iron_concentration(10.0, **kwargs)


def test_concentration_rejects_inf():
    with pytest.raises(ValidationError, match="infinite"):
        iron_concentration([np.inf], relaxivity=10.0)


def test_phantom_recovers_concentration():
    """Known iron map → ΔR2* with the table r2* → recovered map (exact, then 2 % with noise)."""
    rng = np.random.default_rng(7)
    truth = np.zeros((16, 16, 4))
    truth[2:6, 2:6] = 0.25
    truth[8:12, 2:6] = 1.0
    truth[2:6, 8:12] = 2.5
    truth[8:14, 8:14] = 4.0
    r2s = 55.7  # 3 T plasma
    delta = r2s * truth
    est = iron_concentration(delta, agent="ferumoxytol", field_strength_t=3.0, medium="plasma")
    np.testing.assert_allclose(est, truth, rtol=1e-14, atol=0)
    # noise of 1 % of each voxel's ΔR2*: per-region means within 2 %
    noisy = delta * (1.0 + 0.01 * rng.standard_normal(delta.shape))
    est = iron_concentration(noisy, agent="ferumoxytol", field_strength_t=3.0)
    for value in (0.25, 1.0, 2.5, 4.0):
        region = truth == value
        assert abs(est[region].mean() / value - 1.0) < 0.02
    # total iron of the phantom: sum(c) * V * 1e-9 mol * 55.845 g/mol
    m = iron_mass(est, voxel_volume_mm3=0.125)
    exact = truth.sum() * 0.125 * 1e-9 * FE_MOLAR_MASS_G_PER_MOL * 1e6
    assert abs(m.iron_ug / exact - 1.0) < 0.02


# ---------------------------------------------------------------- mass

def test_iron_mass_one_mm_in_one_mm3():
    # 1 mM in 1 mm^3 = 1e-3 mol/L * 1e-6 L = 1e-9 mol = 55.845 ng = 0.055845 ug
    m = iron_mass(np.array([1.0]), voxel_volume_mm3=1.0)
    assert m.iron_mol == pytest.approx(1e-9, rel=1e-15)
    assert m.iron_ug == pytest.approx(0.055845, rel=1e-15)
    assert m.n_voxels == 1 and m.roi_volume_mm3 == 1.0 and m.mean_concentration_mM == 1.0


def test_iron_mass_with_mask_hand_computed():
    c = np.array([[2.0, 1.0], [0.5, 100.0]])
    mask = np.array([[True, True], [True, False]])
    # (2 + 1 + 0.5) mM * 0.5 mm^3 * 1e-9 = 1.75e-9 mol; * 55.845 g/mol = 97.72875 ng
    m = iron_mass(c, voxel_volume_mm3=0.5, mask=mask)
    assert m.iron_mol == pytest.approx(1.75e-9, rel=1e-14)
    assert m.iron_ug == pytest.approx(0.09772875, rel=1e-14)
    assert m.n_voxels == 3 and m.roi_volume_mm3 == 1.5
    assert m.mean_concentration_mM == pytest.approx(3.5 / 3)
    # 0/1 integer mask works the same
    assert iron_mass(c, voxel_volume_mm3=0.5, mask=mask.astype(int)).iron_mol == m.iron_mol
    d = m.as_dict()
    assert d["iron_ug"] == m.iron_ug and "mean_iron_concentration_mM" in d
    json.dumps(d)


def test_iron_mass_validation():
    c = np.ones((2, 2))
    with pytest.raises(GeometryError):
        iron_mass(c, voxel_volume_mm3=1.0, mask=np.ones((3, 2), bool))
    with pytest.raises(ValidationError, match="empty"):
        iron_mass(c, voxel_volume_mm3=1.0, mask=np.zeros((2, 2), bool))
    with pytest.raises(ValidationError, match="voxel_volume_mm3"):
        iron_mass(c, voxel_volume_mm3=0.0)
    with pytest.raises(ValidationError, match="negative"):
        iron_mass(-c, voxel_volume_mm3=1.0)
    with pytest.raises(ValidationError, match="non-finite"):
        iron_mass(np.array([1.0, np.nan]), voxel_volume_mm3=1.0)
    with pytest.raises(ValidationError, match="boolean"):
        iron_mass(c, voxel_volume_mm3=1.0, mask=np.full((2, 2), 3))
    # NaN outside the mask is fine
    m = iron_mass(np.array([1.0, np.nan]), voxel_volume_mm3=1.0, mask=[True, False])
    assert m.n_voxels == 1


# ---------------------------------------------------------------- cells

def test_cell_number_hand_computed():
    # 1 ug = 1e6 pg; 1e6 pg / 20 pg per cell = 5e4 cells
    n = cell_number(1.0, iron_per_cell_pg=20.0)
    assert isinstance(n, CellNumber)
    assert n.cells == pytest.approx(5e4, rel=1e-15)
    assert n.as_dict() == {"iron_ug": 1.0, "iron_per_cell_pg": 20.0, "cells": n.cells}
    with pytest.raises(ValidationError):
        cell_number(1.0, iron_per_cell_pg=0.0)
    with pytest.raises(ValidationError):
        cell_number(-1.0, iron_per_cell_pg=10.0)
    with pytest.raises(ValidationError):
        cell_number("lots", iron_per_cell_pg=10.0)


def test_cell_number_from_iron_mass():
    m = iron_mass(np.full(4, 1.0), voxel_volume_mm3=1.0)  # 4 * 55.845 ng = 0.22338 ug
    n = cell_number(m, iron_per_cell_pg=10.0)
    # 0.22338 ug = 223380 pg / 10 pg = 22338 cells
    assert n.cells == pytest.approx(22338.0, rel=1e-12)
    assert n.iron is m


def test_labelled_cells_chain():
    """ΔR2* 57.0 s^-1 (3 T saline) → 1 mM; 8 voxels of 0.5 mm^3 → 4e-9 mol → 0.22338 ug → cells."""
    d = np.zeros((4, 4))
    d[:2, :] = 57.0
    d[3, 3] = np.nan  # outside the ROI: ignored
    mask = np.zeros((4, 4), bool)
    mask[:2, :] = True
    res = labelled_cells(d, iron_per_cell_pg=5.0, voxel_volume_mm3=0.5, mask=mask,
                         agent="ferumoxytol", field_strength_t=3.0, medium="saline")
    # 8 voxels * 1 mM * 0.5 mm^3 * 1e-9 = 4e-9 mol; * 55.845 g/mol = 223.38 ng = 0.22338 ug
    # 223380 pg / 5 pg per cell = 44676 cells
    assert res.iron.iron_mol == pytest.approx(4e-9, rel=1e-14)
    assert res.iron_ug == pytest.approx(0.22338, rel=1e-14)
    assert res.cells == pytest.approx(44676.0, rel=1e-12)
    chain = res.as_dict()
    assert list(chain)[:3] == ["mean_delta_r2star_per_s", "relaxivity_per_mM_per_s", "relaxivity_source"]
    assert chain["mean_delta_r2star_per_s"] == pytest.approx(57.0)
    assert chain["relaxivity_per_mM_per_s"] == 57.0
    assert "Knobloch" in chain["relaxivity_source"]
    assert chain["mean_iron_concentration_mM"] == pytest.approx(1.0)
    assert chain["cells"] == res.cells
    json.dumps(chain)


def test_labelled_cells_negative_handling():
    d = np.array([-10.0, 30.0, 30.0])
    with pytest.raises(ValidationError, match="negative"):
        labelled_cells(d, iron_per_cell_pg=1.0, voxel_volume_mm3=1.0, relaxivity=30.0)
    # negatives outside the mask do not matter
    res = labelled_cells(d, iron_per_cell_pg=1.0, voxel_volume_mm3=1.0, relaxivity=30.0,
                         mask=[False, True, True])
    assert res.iron.mean_concentration_mM == 1.0
    # clipping: (0 + 1 + 1) mM -> mean 2/3 mM, mean ΔR2* after clipping 20 s^-1
    res = labelled_cells(d, iron_per_cell_pg=1.0, voxel_volume_mm3=1.0, relaxivity=30.0,
                         negative="clip")
    assert res.iron.mean_concentration_mM == pytest.approx(2 / 3)
    assert res.as_dict()["relaxivity_source"] == "user-supplied"


def test_results_are_frozen():
    m = iron_mass(np.ones(2), voxel_volume_mm3=1.0)
    assert isinstance(m, IronMass)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.iron_ug = 0.0
