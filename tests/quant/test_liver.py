"""Liver iron concentration from R2* (1.5 T calibrations) and the normal-R2* flag."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from oncomri.core.errors import GeometryError, ValidationError
from oncomri.quant.liver import (
    LIVER_IRON_CALIBRATIONS,
    NORMAL_LIVER_R2STAR_1P5T_PER_S,
    NORMAL_LIVER_R2STAR_1P5T_SD_PER_S,
    liver_iron,
    liver_iron_concentration,
)


def test_wood_hand_computed():
    # Wood 2005: 0.0254 * 100 + 0.202 = 2.742; 0.0254 * 500 + 0.202 = 12.902 mg/g
    lic = liver_iron_concentration([100.0, 500.0], calibration="wood2005", field_strength_t=1.5)
    np.testing.assert_allclose(lic, [2.742, 12.902], rtol=1e-14)


def test_garbowski_hand_computed():
    # Garbowski 2014: 0.0290 * 1^1.014 = 0.029; 0.0290 * 100^1.014 = 0.029 * 10^2.028
    #   10^2.028 = 106.6596...; * 0.029 = 3.09313 mg/g
    lic = liver_iron_concentration([1.0, 100.0], calibration="garbowski2014", field_strength_t=1.5)
    np.testing.assert_allclose(lic, [0.029, 0.029 * 10 ** 2.028], rtol=1e-14)
    assert lic[1] == pytest.approx(3.0931, abs=1e-4)


def test_hernando_hand_computed():
    # Hernando 2022 (1.5 T): -0.16 + 0.02603 * 100 = 2.443; * 200 = 5.046 mg/g
    lic = liver_iron_concentration(np.array([[100.0, 200.0]]), calibration="hernando2022",
                                   field_strength_t=1.5)
    assert lic.shape == (1, 2)
    np.testing.assert_allclose(lic, [[2.443, 5.046]], rtol=1e-14)
    # below R2* = 0.16 / 0.02603 = 6.147 s^-1 the formula is negative: clipped to 0
    assert liver_iron_concentration(5.0, calibration="hernando2022", field_strength_t=1.5) == 0.0


def test_calibration_table_is_read_only():
    assert set(LIVER_IRON_CALIBRATIONS) == {"wood2005", "garbowski2014", "hernando2022"}
    assert all(c.field_strength_t == 1.5 for c in LIVER_IRON_CALIBRATIONS.values())
    with pytest.raises(TypeError):
        LIVER_IRON_CALIBRATIONS["mine"] = None
    with pytest.raises(dataclasses.FrozenInstanceError):
        LIVER_IRON_CALIBRATIONS["wood2005"].coefficient = 1.0
    assert LIVER_IRON_CALIBRATIONS["wood2005"].formula == "LIC = 0.0254*R2* + 0.202"
    assert LIVER_IRON_CALIBRATIONS["hernando2022"].formula == "LIC = 0.02603*R2* - 0.16"


@pytest.mark.parametrize("name", ["wood2005", "garbowski2014", "hernando2022"])
def test_refuses_3t(name):
    with pytest.raises(ValidationError, match="valid at 1.5 T"):
        liver_iron_concentration(100.0, calibration=name, field_strength_t=3.0)
    with pytest.raises(ValidationError, match="valid at 1.5 T"):
        liver_iron(np.full(5, 100.0), calibration=name, field_strength_t=3.0)


def test_field_tolerance_and_bad_inputs():
    assert liver_iron_concentration(100.0, calibration="wood2005", field_strength_t=1.494) == \
        pytest.approx(2.742)
    with pytest.raises(ValidationError, match="calibration"):
        liver_iron_concentration(100.0, calibration="st_pierre", field_strength_t=1.5)
    with pytest.raises(ValidationError, match="negative"):
        liver_iron_concentration(-1.0, calibration="wood2005", field_strength_t=1.5)
    with pytest.raises(ValidationError, match="infinite"):
        liver_iron_concentration(np.inf, calibration="wood2005", field_strength_t=1.5)
    with pytest.raises(ValidationError, match="field_strength_t"):
        liver_iron_concentration(1.0, calibration="wood2005", field_strength_t="high")
    assert np.isnan(liver_iron_concentration(np.nan, calibration="wood2005", field_strength_t=1.5))


def test_liver_iron_roi_and_flag():
    r2s = np.array([[30.0, 40.0], [50.0, 1000.0]])
    mask = np.array([[True, True], [True, False]])
    res = liver_iron(r2s, calibration="wood2005", field_strength_t=1.5, mask=mask)
    # mean R2* = (30 + 40 + 50) / 3 = 40; LIC = 0.0254 * 40 + 0.202 = 1.218
    assert res.r2star_per_s == pytest.approx(40.0)
    assert res.lic_mg_per_g == pytest.approx(1.218)
    assert res.n_voxels == 3
    # z = (40 - 28.7) / 2.7 = 4.185...; ULN = 28.7 + 2 * 2.7 = 34.1 -> above normal
    assert res.r2star_z_score == pytest.approx(11.3 / 2.7)
    assert res.upper_limit_normal_per_s == pytest.approx(34.1)
    assert res.above_normal
    d = res.as_dict()
    assert d["lic_mg_fe_per_g_dry_weight"] == res.lic_mg_per_g
    assert "Obrzut" in d["normal_r2star_source"] and "Wood" in d["calibration_source"]
    json.dumps(d)


def test_liver_iron_median_and_normal_liver():
    # a normal liver: median of [27, 28.7, 29, 90] is (28.7 + 29) / 2 = 28.85 <= 34.1
    r2s = np.array([27.0, 28.7, 29.0, 90.0])
    res = liver_iron(r2s, calibration="hernando2022", field_strength_t=1.5, statistic="median")
    assert res.r2star_per_s == pytest.approx(28.85)
    assert res.lic_mg_per_g == pytest.approx(-0.16 + 0.02603 * 28.85)
    assert not res.above_normal
    assert NORMAL_LIVER_R2STAR_1P5T_PER_S == 28.7 and NORMAL_LIVER_R2STAR_1P5T_SD_PER_S == 2.7
    # n_sd = 0: anything above the normal mean is flagged
    assert liver_iron(r2s, calibration="wood2005", field_strength_t=1.5, statistic="median",
                      n_sd=0.0).above_normal


def test_liver_iron_validation():
    r2s = np.array([30.0, np.nan])
    with pytest.raises(ValidationError, match="non-finite"):
        liver_iron(r2s, calibration="wood2005", field_strength_t=1.5)
    assert liver_iron(r2s, calibration="wood2005", field_strength_t=1.5,
                      mask=[True, False]).r2star_per_s == 30.0
    with pytest.raises(ValidationError, match="empty"):
        liver_iron(r2s, calibration="wood2005", field_strength_t=1.5, mask=[False, False])
    with pytest.raises(GeometryError):
        liver_iron(r2s, calibration="wood2005", field_strength_t=1.5, mask=[True])
    with pytest.raises(ValidationError, match="statistic"):
        liver_iron(r2s, calibration="wood2005", field_strength_t=1.5, statistic="mode")
    with pytest.raises(ValidationError, match="n_sd"):
        liver_iron([30.0], calibration="wood2005", field_strength_t=1.5, n_sd=-1)
