"""19F cell quantification: reference scaling, noise-floor correction, detection threshold."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from oncomri.core.errors import GeometryError, ValidationError
from oncomri.fitting.special import rician_mean
from oncomri.quant.fluorine import (
    AVOGADRO_PER_MOL,
    fluorine_atoms,
    fluorine_cells,
    noise_floor_correct,
)


def test_fluorine_atoms_hand_computed():
    # 1 mM * 1 mm^3 = 1e-9 mol; * 6.02214076e23 = 6.02214076e14 molecules; * 3 F (TFA)
    assert fluorine_atoms(1.0, volume_mm3=1.0, fluorine_per_molecule=3) == \
        pytest.approx(3 * 6.02214076e14, rel=1e-15)
    # 10 mM PFCE (20 F) in 0.25 mm^3: 10 * 0.25e-9 mol * 20 * N_A = 5e-8 * N_A
    assert fluorine_atoms(10.0, volume_mm3=0.25, fluorine_per_molecule=20) == \
        pytest.approx(5e-8 * AVOGADRO_PER_MOL, rel=1e-15)
    with pytest.raises(ValidationError):
        fluorine_atoms(0.0, volume_mm3=1.0, fluorine_per_molecule=3)


def test_cells_hand_computed_noiseless():
    # reference: 1e18 F atoms per voxel gives signal 100 -> 1e16 atoms per signal unit
    # sample signal 50, sigma 0 -> 5e17 atoms -> / 1e13 F per cell = 5e4 cells
    res = fluorine_cells(np.array([50.0, 0.0, 100.0]), reference_signal=100.0,
                         reference_fluorine_atoms=1e18, fluorine_per_cell=1e13, noise_sigma=0.0)
    np.testing.assert_allclose(res.cells_per_voxel, [5e4, 0.0, 1e5], rtol=1e-15)
    np.testing.assert_array_equal(res.detected, [True, False, True])
    assert res.total_cells == pytest.approx(1.5e5, rel=1e-15)
    assert res.fluorine_atoms_detected == pytest.approx(1.5e18, rel=1e-15)
    assert res.fluorine_atoms_per_signal == pytest.approx(1e16)
    assert res.min_detectable_cells_per_voxel == 0.0
    assert res.false_positive_probability == 0.0
    assert res.n_voxels == 3 and res.n_detected == 2


def test_second_moment_correction_hand_computed():
    # A = sqrt(M^2 - 2 sigma^2): M = 5, sigma = 2 -> sqrt(25 - 8) = sqrt(17); M = 2 -> 0 (floor)
    a = noise_floor_correct([5.0, 2.0, 0.0], noise_sigma=2.0)
    np.testing.assert_allclose(a, [math.sqrt(17.0), 0.0, 0.0], rtol=1e-15)
    # 4 channels, sum of squares: A = sqrt(M^2 - 8 sigma^2): M = 10, sigma = 1 -> sqrt(92)
    assert noise_floor_correct(10.0, noise_sigma=1.0, n_channels=4) == pytest.approx(math.sqrt(92))
    assert noise_floor_correct(3.0, noise_sigma=1.0, method="none") == 3.0


def test_rician_mean_inversion_round_trip():
    sigma = 2.0
    amps = np.array([0.5, 1.0, 2.0, 5.0, 10.0, 40.0])
    means = rician_mean(amps, np.full(amps.shape, sigma))
    back = noise_floor_correct(means, noise_sigma=sigma, method="rician_mean")
    np.testing.assert_allclose(back, amps, rtol=1e-9)
    # at or below the mean of pure noise, sigma sqrt(pi/2) = 2.5066, the amplitude is 0
    below = noise_floor_correct([2.0, sigma * math.sqrt(math.pi / 2)], noise_sigma=sigma,
                                method="rician_mean")
    np.testing.assert_array_equal(below, [0.0, 0.0])
    with pytest.raises(ValidationError, match="single-channel"):
        noise_floor_correct(3.0, noise_sigma=1.0, method="rician_mean", n_channels=2)


def test_noise_floor_correction_removes_floor():
    """Pure noise (A = 0): the raw mean is the floor sigma sqrt(pi/2); corrected, it is ~0."""
    floor = math.sqrt(math.pi / 2)  # 1.2533: mean magnitude of pure noise, sigma = 1
    # a voxel at the floor level is corrected to exactly 0 by both corrections
    # (second moment: 1.2533^2 = 1.5708 < 2 sigma^2; Rician mean: M <= sigma sqrt(pi/2))
    assert noise_floor_correct(floor, noise_sigma=1.0) == 0.0
    assert noise_floor_correct(floor, noise_sigma=1.0, method="rician_mean") == 0.0
    assert noise_floor_correct(math.sqrt(2.0), noise_sigma=1.0) == pytest.approx(0.0, abs=1e-7)
    rng = np.random.default_rng(3)
    m = np.hypot(rng.normal(0, 1, 200_000), rng.normal(0, 1, 200_000))
    assert m.mean() == pytest.approx(floor, rel=0.01)
    # corrected mean over pure noise: M^2 ~ Exp(mean 2), so P(M^2 > 2) = e^-1 and
    # E[sqrt(M^2 - 2) | M^2 > 2] = Gamma(3/2) sqrt(2) = 1.2533 -> mean 1.2533 / e = 0.4611
    a = noise_floor_correct(m, noise_sigma=1.0)
    assert a.mean() == pytest.approx(floor / math.e, rel=0.01)
    # ... and none of those voxels reaches the 3.5 sigma detection threshold often:
    # P(A >= 3.5) = exp(-(3.5^2 + 2) / 2) = 8.0e-4
    assert np.mean(a >= 3.5) == pytest.approx(math.exp(-7.125), rel=0.25)
    # at high SNR the second-moment estimate recovers A = 10 sigma
    m = np.hypot(10.0 + rng.normal(0, 1, 200_000), rng.normal(0, 1, 200_000))
    assert np.sqrt(np.mean(noise_floor_correct(m, noise_sigma=1.0) ** 2)) == pytest.approx(10.0, abs=0.02)


def test_threshold_and_detection_limit():
    sigma = 2.0
    # threshold 3.5 sigma = 7 on the corrected amplitude: M = sqrt(49 + 8) = 7.5498 is the edge
    edge = math.sqrt(49.0 + 2 * sigma ** 2)
    res = fluorine_cells(np.array([edge + 1e-9, edge - 1e-6, 20.0, 1.0]), reference_signal=200.0,
                         reference_fluorine_atoms=1e18, fluorine_per_cell=1e12, noise_sigma=sigma)
    np.testing.assert_array_equal(res.detected, [True, False, True, False])
    # reference corrected: sqrt(200^2 - 8) = 199.97999...; atoms per signal = 1e18 / that
    a_ref = math.sqrt(200.0 ** 2 - 8.0)
    assert res.reference_amplitude == pytest.approx(a_ref, rel=1e-14)
    # minimum detectable: 3.5 * 2 = 7 signal units -> 7e18 / a_ref atoms -> / 1e12 cells
    assert res.min_detectable_fluorine_atoms_per_voxel == pytest.approx(7e18 / a_ref, rel=1e-14)
    assert res.min_detectable_cells_per_voxel == pytest.approx(7e6 / a_ref, rel=1e-14)
    # total counts only detected voxels: A = 7 (edge) and sqrt(400 - 8) = sqrt(392)
    expected = (7.0 + math.sqrt(392.0)) * 1e18 / a_ref / 1e12
    assert res.total_cells == pytest.approx(expected, rel=1e-6)
    # the sub-threshold voxels still carry their value in the map
    assert res.cells_per_voxel[1] > 0
    # false-positive rate of a noise voxel: P(M^2 >= (3.5^2 + 2) sigma^2) = exp(-7.125)
    assert res.false_positive_probability == pytest.approx(math.exp(-7.125), rel=1e-12)
    # a stricter threshold detects fewer
    strict = fluorine_cells(np.array([edge + 1e-9, 20.0]), reference_signal=200.0,
                            reference_fluorine_atoms=1e18, fluorine_per_cell=1e12,
                            noise_sigma=sigma, snr_threshold=5.0)
    np.testing.assert_array_equal(strict.detected, [False, True])


def test_false_positive_probability_matches_simulation():
    rng = np.random.default_rng(11)
    sigma = 1.0
    noise = np.hypot(rng.normal(0, sigma, 400_000), rng.normal(0, sigma, 400_000))
    res = fluorine_cells(noise, reference_signal=100.0, reference_fluorine_atoms=1e18,
                         fluorine_per_cell=1e12, noise_sigma=sigma, snr_threshold=2.5)
    # exact: exp(-(2.5^2 + 2)/2) = exp(-4.125) = 0.01616
    assert res.false_positive_probability == pytest.approx(math.exp(-4.125))
    observed = res.n_detected / noise.size
    assert abs(observed - res.false_positive_probability) < 5 * math.sqrt(0.0162 / noise.size)
    # the same check for the rician_mean correction and for no correction
    for method in ("rician_mean", "none"):
        r = fluorine_cells(noise[:50_000], reference_signal=100.0, reference_fluorine_atoms=1e18,
                           fluorine_per_cell=1e12, noise_sigma=sigma, snr_threshold=2.5,
                           noise_correction=method)
        assert abs(r.n_detected / 50_000 - r.false_positive_probability) < 0.004
    assert math.isclose(
        fluorine_cells([1.0], reference_signal=100.0, reference_fluorine_atoms=1e18,
                       fluorine_per_cell=1e12, noise_sigma=1.0, snr_threshold=2.5,
                       noise_correction="none").false_positive_probability,
        math.exp(-2.5 ** 2 / 2))


def test_phantom_noisy_roi_total():
    """Labelled-cell blob in noise: the ROI total recovers the true cells within 3 %."""
    rng = np.random.default_rng(5)
    sigma = 1.0
    atoms_per_signal = 1e18 / 100.0
    f_cell = 1e12
    truth_cells = np.zeros((40, 40))
    truth_cells[10:30, 10:30] = 2e5  # 2e5 cells/voxel -> A = 2e17 / 1e16 = 20 = 20 sigma
    amp = truth_cells * f_cell / atoms_per_signal
    m = np.hypot(amp + rng.normal(0, sigma, amp.shape), rng.normal(0, sigma, amp.shape))
    ref = np.hypot(100.0 + rng.normal(0, sigma, 500), rng.normal(0, sigma, 500))
    res = fluorine_cells(m, reference_signal=ref, reference_fluorine_atoms=1e18,
                         fluorine_per_cell=f_cell, noise_sigma=sigma, voxel_volume_mm3=0.1)
    assert res.n_detected >= 400  # every blob voxel; a handful of noise voxels may pass
    assert abs(res.total_cells / truth_cells.sum() - 1.0) < 0.03
    d = res.as_dict()
    assert d["roi_volume_mm3"] == pytest.approx(160.0)
    json.dumps(d)


def test_manifest_preclinical_range_sanity():
    """Illustrative inputs (not from a paper): reference 1e17 F per voxel at signal 100, sigma 5
    (reference SNR 20) and 1e12 F per cell give 3.5 * 5 / 100 * 1e17 / 1e12 ~ 1.75e4 cells per
    voxel: inside the preclinical 1e3-1e5 cells/voxel of shared/data/MANIFEST.md."""
    res = fluorine_cells(np.zeros(3), reference_signal=100.0, reference_fluorine_atoms=1e17,
                         fluorine_per_cell=1e12, noise_sigma=5.0)
    a_ref = math.sqrt(100.0 ** 2 - 50.0)
    assert res.min_detectable_cells_per_voxel == pytest.approx(17.5 * 1e17 / a_ref / 1e12)
    assert 1e3 <= res.min_detectable_cells_per_voxel <= 1e5
    assert res.n_detected == 0 and res.total_cells == 0.0


def test_validation():
    kw = dict(reference_signal=100.0, reference_fluorine_atoms=1e18, fluorine_per_cell=1e12,
              noise_sigma=1.0)
    with pytest.raises(ValidationError, match="negative"):
        fluorine_cells(np.array([-1.0]), **kw)
    with pytest.raises(ValidationError, match="non-finite"):
        fluorine_cells(np.array([np.nan]), **kw)
    with pytest.raises(GeometryError):
        fluorine_cells(np.ones(3), mask=np.ones(2, bool), **kw)
    with pytest.raises(ValidationError, match="empty"):
        fluorine_cells(np.ones(3), mask=np.zeros(3, bool), **kw)
    with pytest.raises(ValidationError, match="reference_signal"):
        fluorine_cells(np.ones(3), **{**kw, "reference_signal": 2.0})
    with pytest.raises(ValidationError, match="noise_sigma"):
        fluorine_cells(np.ones(3), **{**kw, "noise_sigma": -1.0})
    with pytest.raises(ValidationError, match="snr_threshold"):
        fluorine_cells(np.ones(3), snr_threshold=0.0, **kw)
    with pytest.raises(ValidationError, match="noise_correction"):
        fluorine_cells(np.ones(3), noise_correction="nlm", **kw)
    with pytest.raises(ValidationError, match="n_channels"):
        fluorine_cells(np.ones(3), n_channels=0, **kw)
    with pytest.raises(ValidationError, match="fluorine_per_cell"):
        fluorine_cells(np.ones(3), **{**kw, "fluorine_per_cell": 0.0})
    # NaN outside the mask is fine; the map is NaN outside the ROI
    res = fluorine_cells(np.array([np.nan, 50.0]), mask=[False, True], **kw)
    assert np.isnan(res.cells_per_voxel[0]) and res.n_voxels == 1
