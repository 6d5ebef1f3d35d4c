"""MPI: linear calibration, limits of detection, range check, cell number."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from oncomri.core.errors import ValidationError
from oncomri.quant.mpi import MPICalibration, mpi_calibration, mpi_iron


def test_calibration_hand_computed():
    # signal = 2 * iron + 1 exactly at iron 0, 1, 2, 3 -> slope 2, intercept 1, R^2 1, residual 0
    cal = mpi_calibration([0.0, 1.0, 2.0, 3.0], [1.0, 3.0, 5.0, 7.0])
    assert cal.slope_signal_per_ug == pytest.approx(2.0)
    assert cal.intercept_signal == pytest.approx(1.0)
    assert cal.r_squared == pytest.approx(1.0)
    assert cal.residual_sd_signal == pytest.approx(0.0, abs=1e-12)
    assert (cal.iron_min_ug, cal.iron_max_ug) == (0.0, 3.0)


def test_calibration_residuals_and_lod_hand_computed():
    # x = 0, 1, 2, y = 0, 1, 4: slope = sum((x-1)(y-5/3)) / sum((x-1)^2) = (5/3 + 7/3) / 2 = 2,
    # intercept = 5/3 - 2 = -1/3; residuals 1/3, -2/3, 1/3 -> SSR = 2/3, SD = sqrt(2/3 / 1) = 0.8165
    cal = mpi_calibration([0.0, 1.0, 2.0], [0.0, 1.0, 4.0])
    assert cal.slope_signal_per_ug == pytest.approx(2.0)
    assert cal.intercept_signal == pytest.approx(-1 / 3)
    assert cal.residual_sd_signal == pytest.approx(math.sqrt(2 / 3))
    # no blanks: sigma = residual SD; LOD = 3.3 * 0.8165 / 2 = 1.3472, LOQ = 10 * 0.8165 / 2 = 4.0825
    assert cal.noise_source == "residual" and cal.n_blanks == 0
    assert cal.lod_iron_ug == pytest.approx(3.3 * math.sqrt(2 / 3) / 2)
    assert cal.loq_iron_ug == pytest.approx(10 * math.sqrt(2 / 3) / 2)
    # R^2 = 1 - SSR/SST = 1 - (2/3) / (sum((y - 5/3)^2) = 25/9 + 4/9 + 49/9 = 78/9) = 1 - 6/78
    assert cal.r_squared == pytest.approx(1 - 6 / 78)


def test_lod_from_blanks_hand_computed():
    # blanks 9, 10, 11 -> SD (ddof 1) = 1; slope 100 -> LOD = 3.3 / 100 = 0.033 ug, LOQ = 0.1 ug
    cal = mpi_calibration([0.1, 1.0, 10.0], [20.0, 110.0, 1010.0], blank_signal=[9.0, 10.0, 11.0])
    assert cal.slope_signal_per_ug == pytest.approx(100.0)
    assert cal.noise_source == "blank" and cal.n_blanks == 3
    assert cal.noise_sd_signal == pytest.approx(1.0)
    assert cal.lod_iron_ug == pytest.approx(0.033)
    assert cal.loq_iron_ug == pytest.approx(0.1)


def _four_decade_calibration(seed=1):
    """Standards 1 ng to 10 ug (four decades), signal = 500/ug * iron + 2, 1 % noise + SD 0.3."""
    rng = np.random.default_rng(seed)
    iron = np.logspace(-3, 1, 13)  # 0.001 ... 10 ug
    signal = 500.0 * iron + 2.0
    signal = signal * (1 + 0.01 * rng.standard_normal(iron.size)) + 0.3 * rng.standard_normal(iron.size)
    blanks = 2.0 + 0.3 * rng.standard_normal(8)
    return mpi_calibration(iron, signal, blank_signal=blanks)


def test_synthetic_four_decades_recovers_slope_and_sample():
    cal = _four_decade_calibration()
    assert abs(cal.slope_signal_per_ug / 500.0 - 1.0) < 0.01
    assert cal.r_squared > 0.999
    # a sample of 2 ug (signal 1002) is recovered within 1 %, inside the range, detected
    q = mpi_iron(500.0 * 2.0 + 2.0, calibration=cal)
    assert abs(q.iron_ug / 2.0 - 1.0) < 0.01
    assert not q.extrapolated and q.detected and q.quantifiable
    # pmol: 2 ug / 55.845 g/mol = 35814 pmol
    assert q.iron_pmol == pytest.approx(q.iron_ug * 1e6 / 55.845)


def test_extrapolation_flagged_or_refused():
    cal = _four_decade_calibration()
    high = mpi_iron(500.0 * 50.0 + 2.0, calibration=cal)  # 50 ug > 10 ug top standard
    assert high.extrapolated
    assert high.as_dict()["extrapolated"] is True
    with pytest.raises(ValidationError, match="calibrated range"):
        mpi_iron(500.0 * 50.0 + 2.0, calibration=cal, extrapolation="error")
    low = mpi_iron(2.0 + 500.0 * 1e-4, calibration=cal)  # 0.1 ng < 1 ng lowest standard
    assert low.extrapolated and not low.detected


def test_cells_and_manifest_250_cells():
    """250 cells at 0.555 pmol Fe/cell = 138.75 pmol = 7.748 ng Fe (MANIFEST: detectable)."""
    cal = _four_decade_calibration()
    iron_250_cells_ug = 250 * 0.555e-12 * 55.845 * 1e6  # mol -> g -> ug = 0.0077485 ug
    assert iron_250_cells_ug == pytest.approx(0.00774849, rel=1e-5)
    q = mpi_iron(cal.intercept_signal + cal.slope_signal_per_ug * iron_250_cells_ug,
                 calibration=cal, iron_per_cell_pmol=0.555)
    assert q.iron_per_cell_pg == pytest.approx(0.555 * 55.845)  # 30.99 pg/cell
    assert q.cells == pytest.approx(250.0, rel=1e-9)
    # with blank SD 0.3 and slope ~500/ug, LOD ~ 3.3 * 0.3 / 500 = 2 ng ~ 64 cells: detected
    assert q.detected and not q.extrapolated
    assert q.lod_cells == pytest.approx(cal.lod_iron_ug * 1e6 / q.iron_per_cell_pg)
    assert q.lod_cells < 250
    # the same via pg per cell
    q2 = mpi_iron(q.signal, calibration=cal, iron_per_cell_pg=0.555 * 55.845)
    assert q2.cells == pytest.approx(q.cells)
    d = q.as_dict()
    assert d["cells"] == q.cells and d["calibration_lod_iron_ug"] == cal.lod_iron_ug
    json.dumps(d)


def test_below_lod_not_detected():
    # slope 100, blank SD 1 -> LOD 0.033 ug; a sample at 0.02 ug is not detected
    cal = mpi_calibration([0.0, 0.01, 1.0, 10.0], [10.0, 11.0, 110.0, 1010.0],
                          blank_signal=[9.0, 10.0, 11.0])
    q = mpi_iron(10.0 + 100.0 * 0.02, calibration=cal)
    assert q.iron_ug == pytest.approx(0.02) and not q.detected and not q.quantifiable
    assert not q.extrapolated


def test_validation():
    with pytest.raises(ValidationError, match="at least 3"):
        mpi_calibration([1.0, 2.0], [1.0, 2.0])
    with pytest.raises(ValidationError, match="one signal per standard"):
        mpi_calibration([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValidationError, match="negative"):
        mpi_calibration([-1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValidationError, match="slope"):
        mpi_calibration([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])
    with pytest.raises(ValidationError, match="distinct"):
        mpi_calibration([1.0, 1.0, 1.0], [3.0, 2.0, 1.0])
    with pytest.raises(ValidationError, match="non-finite"):
        mpi_calibration([1.0, 2.0, np.nan], [1.0, 2.0, 3.0])
    with pytest.raises(ValidationError, match="2 replicate"):
        mpi_calibration([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], blank_signal=[0.1])
    cal = mpi_calibration([0.0, 1.0, 2.0], [0.0, 1.0, 4.0])
    with pytest.raises(ValidationError, match="not both"):
        mpi_iron(1.0, calibration=cal, iron_per_cell_pg=1.0, iron_per_cell_pmol=1.0)
    with pytest.raises(ValidationError, match="extrapolation"):
        mpi_iron(1.0, calibration=cal, extrapolation="clip")
    with pytest.raises(ValidationError, match="MPICalibration"):
        mpi_iron(1.0, calibration={"slope": 1})
    with pytest.raises(ValidationError, match="signal"):
        mpi_iron([1.0, 2.0], calibration=cal)
    assert isinstance(cal, MPICalibration)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cal.slope_signal_per_ug = 1.0
    json.dumps(cal.as_dict())
