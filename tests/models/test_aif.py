"""Arterial input functions: population curves, piecewise-linear AIF, measured AIF, selection."""

from __future__ import annotations

import numpy as np
import pytest

from oncomri.core import ValidationError
from oncomri.models.aif import (
    ArterialInputFunction,
    blood_to_plasma,
    measured_aif,
    parker_aif,
    population_aif,
    preclinical_aif,
    select_arterial_voxels,
)


def test_parker_closed_form_values():
    # eq. 1 of Parker 2006 at t = T1 (first Gaussian centre, 0.17046 min), by hand
    t = 0.17046
    g1 = 0.809 / (0.0563 * np.sqrt(2 * np.pi))
    g2 = 0.330 / (0.132 * np.sqrt(2 * np.pi)) * np.exp(-((t - 0.365) ** 2) / (2 * 0.132**2))
    sig = 1.050 * np.exp(-0.1685 * t) / (1 + np.exp(-38.078 * (t - 0.483)))
    assert parker_aif([t * 60.0])[0] == pytest.approx(g1 + g2 + sig, rel=1e-12)
    shifted = parker_aif([5.0, 10.0 + t * 60.0], delay=10.0)
    assert shifted[0] == 0.0 and shifted[1] == pytest.approx(g1 + g2 + sig, rel=1e-12)


def test_preclinical_shape():
    c = preclinical_aif([0.0, 3.5, 7.0, 107.0, -1.0])
    assert c[0] == 0.0 and c[4] == 0.0
    assert c[1] == pytest.approx(5.21 / 2)
    assert c[2] == pytest.approx(5.21)
    assert c[3] == pytest.approx(3.4 * np.exp(-4.5) + 1.81 * np.exp(-0.15))


def test_piecewise_linear_aif_and_shift():
    aif = ArterialInputFunction([0.0, 10.0, 20.0], [0.0, 4.0, 2.0])
    np.testing.assert_allclose(aif.at([-1, 5, 15, 30]), [0, 2, 3, 2])
    np.testing.assert_allclose(aif.shifted(5.0).at([10.0, 20.0]), [2.0, 3.0])
    with pytest.raises(ValidationError, match="one concentration per time"):
        ArterialInputFunction([0, 1, 2], [0, 1])


def test_population_aif_oversampling_and_hematocrit():
    t = np.arange(0, 60.0, 5.0)
    aif = population_aif("parker", t, onset=10.0, hematocrit=0.4, oversample=5)
    assert aif.times.size == (t.size - 1) * 5 + 1
    np.testing.assert_allclose(aif.at(t), parker_aif(t, delay=10.0) / 0.6)
    assert blood_to_plasma(1.2, 0.4) == pytest.approx(2.0)
    with pytest.raises(ValidationError):
        population_aif("human", t)


def test_automatic_arterial_selection_and_measured_aif():
    rng = np.random.default_rng(0)
    t = np.arange(0, 120.0, 2.0)
    art = preclinical_aif(t, delay=10.0)  # early, high
    tissue = 0.3 * preclinical_aif(t, delay=20.0)  # late, low
    vein = 0.9 * preclinical_aif(t, delay=30.0)  # high but late
    data = np.empty((10, 10, 1, t.size))
    data[:] = tissue
    truth = np.zeros((10, 10, 1), bool)
    truth[2:4, 2:4] = True
    data[truth] = art
    data[6:8, 6:8] = vein
    data += rng.normal(0, 0.01, data.shape)
    sel = select_arterial_voxels(data, t, n_voxels=4)
    np.testing.assert_array_equal(sel, truth)
    aif = measured_aif(data, t, np.ones((10, 10, 1), bool), hematocrit=0.45, auto_select=True,
                       n_voxels=4)
    np.testing.assert_allclose(aif.concentration, art / 0.55, atol=0.05)
    assert aif.kind == "measured"
    with pytest.raises(ValidationError, match="shape"):
        measured_aif(data, t, np.ones((3, 3, 1), bool))
