"""roi_statistics: pyradiomics first-order definitions, checked against hand arithmetic."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from oncomri.core import GeometryError, ValidationError
from oncomri.roi.stats import RoiStatistics, roi_statistics


def _column(values):
    """A (n, 1, 1) map and a full mask holding ``values``."""
    v = np.asarray(values, dtype=np.float64).reshape(-1, 1, 1)
    return v, np.ones(v.shape, bool)


def test_hand_computed_features_of_1_2_3_4_10():
    values, mask = _column([1, 2, 3, 4, 10])
    (s,) = roi_statistics(values, mask, voxel_size_mm=(1.0, 1.0, 2.0), bin_width=2)
    assert isinstance(s, RoiStatistics) and s.label == 1
    # N = 5, mean = 20 / 5 = 4; deviations -3 -2 -1 0 6
    assert s.n_voxels == 5 and s.n_nan == 0
    assert s.volume_mm3 == pytest.approx(5 * 2.0)
    assert s.mean == pytest.approx(4.0)
    # squares 9 4 1 0 36 -> sum 50, biased variance 50 / 5 = 10, SD sqrt(10)
    assert s.variance == pytest.approx(10.0)
    assert s.sd == pytest.approx(math.sqrt(10))
    # cubes -27 -8 -1 0 216 -> 180 / 5 = 36; skewness 36 / 10^1.5
    assert s.skewness == pytest.approx(36 / 10 ** 1.5)
    # fourth powers 81 16 1 0 1296 -> 1394 / 5 = 278.8; kurtosis 278.8 / 10^2 (not excess)
    assert s.kurtosis == pytest.approx(2.788)
    assert s.median == 3.0 and s.minimum == 1.0 and s.maximum == 10.0 and s.range == 9.0
    # linear interpolation between order statistics: P10 at rank 0.4 -> 1 + 0.4 * 1;
    # P25 at rank 1 -> 2; P75 at rank 3 -> 4; P90 at rank 3.6 -> 4 + 0.6 * 6
    assert dict(s.percentiles) == pytest.approx({10: 1.4, 25: 2.0, 50: 3.0, 75: 4.0, 90: 7.6})
    assert s.iqr == pytest.approx(2.0)
    # MAD = (3 + 2 + 1 + 0 + 6) / 5
    assert s.mad == pytest.approx(2.4)
    # robust MAD: values in [1.4, 7.6] are 2 3 4, mean 3, |dev| 1 0 1 -> 2 / 3
    assert s.robust_mad == pytest.approx(2 / 3)
    # energy 1 + 4 + 9 + 16 + 100 = 130; total energy x 2 mm3; RMS sqrt(130 / 5)
    assert s.energy == pytest.approx(130.0)
    assert s.total_energy == pytest.approx(260.0)
    assert s.rms == pytest.approx(math.sqrt(26))
    # bin width 2: lowest edge 1 - (1 mod 2) = 0, edges 0 2 ... 12 (< 10 + 2 * 2);
    # [0,2): 1 | [2,4): 2 3 | [4,6): 4 | ... | [10,12): 10 -> counts 1 2 1 0 0 1
    assert s.histogram_edges == pytest.approx((0, 2, 4, 6, 8, 10, 12))
    assert s.histogram_counts == (1, 2, 1, 0, 0, 1)
    # p = .2 .4 .2 .2: entropy = -(3 * .2 log2 .2 + .4 log2 .4); uniformity 3 * .04 + .16
    entropy = -(3 * 0.2 * math.log2(0.2) + 0.4 * math.log2(0.4))
    assert s.entropy == pytest.approx(entropy, abs=1e-12)
    assert s.entropy == pytest.approx(1.9219280948873623, abs=1e-12)
    assert s.uniformity == pytest.approx(0.28)
    assert s.bin_width == 2.0


def test_default_bin_width_25_and_a_bin_count():
    values, mask = _column([1, 2, 3, 4, 10])
    (s,) = roi_statistics(values, mask, voxel_size_mm=(1, 1, 1))
    # edges 0 25 50 (< 10 + 50): every value in the first bin -> entropy 0, uniformity 1
    assert s.histogram_edges == (0.0, 25.0, 50.0)
    assert s.histogram_counts == (5, 0)
    assert s.entropy == pytest.approx(0.0, abs=1e-12) and s.uniformity == pytest.approx(1.0)
    (c,) = roi_statistics(values, mask, voxel_size_mm=(1, 1, 1), bins=3)
    # 3 bins from 1 to 10: edges 1 4 7 10 -> [1,4): 1 2 3 | [4,7): 4 | [7,10]: 10
    assert c.histogram_edges == pytest.approx((1, 4, 7, 10))
    assert c.histogram_counts == (3, 1, 1)
    assert c.entropy == pytest.approx(-(0.6 * math.log2(0.6) + 2 * 0.2 * math.log2(0.2)))
    assert c.uniformity == pytest.approx(0.36 + 0.04 + 0.04)
    assert c.bin_width is None


def test_bin_edges_for_negative_values_start_at_a_multiple_of_the_width():
    values, mask = _column([-7, -1, 3])
    (s,) = roi_statistics(values, mask, voxel_size_mm=(1, 1, 1), bin_width=5)
    # -7 - (-7 mod 5) = -7 - 3 = -10; edges -10 -5 0 5 10 (< 3 + 10)
    assert s.histogram_edges == (-10.0, -5.0, 0.0, 5.0, 10.0)
    assert s.histogram_counts == (1, 1, 1, 0)


def test_flat_roi_has_zero_spread_skewness_and_kurtosis():
    values, mask = _column([50, 50, 50])
    (s,) = roi_statistics(values, mask, voxel_size_mm=(1, 1, 1))
    assert s.sd == 0 and s.skewness == 0 and s.kurtosis == 0 and s.iqr == 0
    # 50 is a multiple of 25: edges 50 75 (< 50 + 50), one bin holding all
    assert s.histogram_edges == (50.0, 75.0) and s.histogram_counts == (3,)
    assert s.entropy == pytest.approx(0, abs=1e-12) and s.uniformity == pytest.approx(1.0)


def test_normal_phantom_kurtosis_is_3_not_0_and_matches_scipy_biased_moments():
    rng = np.random.default_rng(42)
    values = rng.normal(100.0, 15.0, size=(40, 40, 40))
    mask = np.ones(values.shape, bool)
    (s,) = roi_statistics(values, mask, voxel_size_mm=(0.5, 0.5, 1.0), bin_width=5)
    x = values.ravel()
    assert s.kurtosis == pytest.approx(sps.kurtosis(x, fisher=False, bias=True), rel=1e-10)
    assert s.skewness == pytest.approx(sps.skew(x, bias=True), rel=1e-8)
    assert s.sd == pytest.approx(np.std(x, ddof=0), rel=1e-12)
    assert s.kurtosis == pytest.approx(3.0, abs=0.05)  # normal: 3 (IBSI's excess would be 0)
    assert s.mean == pytest.approx(100.0, abs=0.2) and s.sd == pytest.approx(15.0, rel=0.01)
    assert s.volume_mm3 == pytest.approx(40 ** 3 * 0.25)
    # normal: IQR = 2 * 0.6745 sigma, MAD = sigma sqrt(2 / pi)
    assert s.iqr == pytest.approx(2 * 0.6744898 * 15.0, rel=0.02)
    assert s.mad == pytest.approx(15.0 * math.sqrt(2 / math.pi), rel=0.02)


def test_label_image_gives_one_result_per_label_in_order():
    values = np.arange(24, dtype=np.float32).reshape(4, 3, 2)
    labels = np.zeros((4, 3, 2), np.int16)
    labels[0] = 3  # values 0..5
    labels[3] = 1  # values 18..23
    out = roi_statistics(values, labels, voxel_size_mm=(1, 1, 1))
    assert [s.label for s in out] == [1, 3]
    assert out[0].mean == pytest.approx(20.5) and out[1].mean == pytest.approx(2.5)
    only = roi_statistics(values, labels, voxel_size_mm=(1, 1, 1), labels=[3])
    assert len(only) == 1 and only[0].n_voxels == 6


def test_nan_voxels_are_excluded_and_counted():
    values = np.array([1.0, np.nan, 3.0, np.inf, 5.0]).reshape(5, 1, 1)
    mask = np.ones((5, 1, 1), bool)
    (s,) = roi_statistics(values, mask, voxel_size_mm=(2, 2, 2))
    assert s.n_voxels == 3 and s.n_nan == 2
    assert s.mean == pytest.approx(3.0)
    assert s.volume_mm3 == pytest.approx(5 * 8.0)  # the ROI's volume counts all its voxels


def test_as_dict_is_strict_json_with_units():
    values, mask = _column([1, 2, 3, 4, 10])
    (s,) = roi_statistics(values, mask, voxel_size_mm=(1, 1, 2), value_unit="1/s",
                          percentiles=(5, 50, 97.5))
    d = json.loads(json.dumps(s.as_dict(), allow_nan=False))
    assert d["volume_mm3"] == 10.0 and d["mean"] == 4.0
    assert d["units"]["volume_mm3"] == "mm3"
    assert d["units"]["mean"] == "1/s" and d["units"]["variance"] == "(1/s)^2"
    assert d["units"]["kurtosis"] == "1" and d["units"]["entropy"] == "bit"
    assert {"p5", "p50", "p97_5"} <= set(d)
    assert d["p50"] == 3.0
    assert s.percentile(97.5) == pytest.approx(np.percentile([1, 2, 3, 4, 10], 97.5))
    with pytest.raises(ValidationError, match="percentile 25 was not computed"):
        s.percentile(25)


def test_empty_roi_raises_validation_error():
    values = np.ones((3, 3, 3))
    with pytest.raises(ValidationError, match="empty"):
        roi_statistics(values, np.zeros((3, 3, 3), bool), voxel_size_mm=(1, 1, 1))
    labels = np.zeros((3, 3, 3), np.uint8)
    labels[0, 0, 0] = 1
    with pytest.raises(ValidationError, match="label 2 holds no voxel"):
        roi_statistics(values, labels, voxel_size_mm=(1, 1, 1), labels=[1, 2])
    values[0, 0, 0] = np.nan
    with pytest.raises(ValidationError, match="NaN or inf"):
        roi_statistics(values, labels, voxel_size_mm=(1, 1, 1))


@pytest.mark.parametrize("kwargs, match", [
    (dict(voxel_size_mm=(1, 1)), "voxel_size_mm"),
    (dict(voxel_size_mm=(1, 0, 1)), "voxel_size_mm"),
    (dict(bins=3, bin_width=2), "either bins or bin_width"),
    (dict(bin_width=-1), "bin_width"),
    (dict(bins=0), "bins"),
    (dict(bin_width=1e-9), "larger bin_width"),
    (dict(percentiles=(10, 120)), "0..100"),
    (dict(labels=[0]), "positive integers"),
])
def test_bad_options(kwargs, match):
    values, mask = _column([1, 2, 3, 4, 10])
    args = dict(voxel_size_mm=(1, 1, 1))
    args.update(kwargs)
    with pytest.raises(ValidationError, match=match):
        roi_statistics(values, mask, **args)


def test_shape_mismatch_and_float_mask():
    with pytest.raises(GeometryError, match="resample the mask"):
        roi_statistics(np.ones((3, 3, 3)), np.ones((3, 3, 2), bool), voxel_size_mm=(1, 1, 1))
    with pytest.raises(ValidationError, match="bool mask or an integer label"):
        roi_statistics(np.ones((3, 3, 3)), np.ones((3, 3, 3)), voxel_size_mm=(1, 1, 1))
