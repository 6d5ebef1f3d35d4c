"""Cell-tracking biomarkers: hand-computed values on tiny arrays and phantoms with known truth."""

import json

import numpy as np
import pytest

from oncomri.core.errors import GeometryError, ValidationError
from oncomri.roi.celltracking import (
    RCBV_THRESHOLD_FERUMOXYTOL,
    classify_rcbv,
    delta_r2star,
    delta_r2star_roi,
    detect_spots,
    hypointense_fraction,
    signal_loss_percent,
    tumour_to_normal_ratio,
)

NAN = np.nan


def _ball(shape, centre, radius_mm, voxel_size_mm):
    grid = np.indices(shape, dtype=float)
    d2 = sum(((grid[i] - centre[i]) * voxel_size_mm[i]) ** 2 for i in range(3))
    return d2 <= radius_mm ** 2


# --------------------------------------------------------------------------
# delta_r2star
# --------------------------------------------------------------------------

def test_delta_r2star_hand_computed():
    post = np.array([[30.0, 50.0], [NAN, 20.0]])
    pre = np.array([[20.0, 40.0], [10.0, 0.0]])
    # 30-20 = 10, 50-40 = 10, NaN post -> NaN, 20-0 = 20
    np.testing.assert_array_equal(delta_r2star(post, pre), [[10.0, 10.0], [NAN, 20.0]])
    # 100*10/20 = 50 %, 100*10/40 = 25 %, NaN, pre = 0 -> NaN
    np.testing.assert_array_equal(delta_r2star(post, pre, relative=True),
                                  [[50.0, 25.0], [NAN, NAN]])
    mask = np.array([[True, False], [True, True]])
    np.testing.assert_array_equal(delta_r2star(post, pre, mask=mask), [[10.0, NAN], [NAN, 20.0]])


def test_delta_r2star_infinite_is_nan_and_float32_kept():
    post = np.array([np.inf, 40.0], dtype=np.float32)
    pre = np.array([10.0, 30.0], dtype=np.float32)
    out = delta_r2star(post, pre)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [NAN, 10.0])
    assert delta_r2star(post.astype(np.float64), pre).dtype == np.float64


def test_delta_r2star_errors():
    with pytest.raises(GeometryError, match="pre has shape"):
        delta_r2star(np.ones((2, 2)), np.ones((2, 3)))
    with pytest.raises(ValidationError, match="negative"):
        delta_r2star(np.array([-1.0, 2.0]), np.array([1.0, 1.0]))
    with pytest.raises(ValidationError, match="empty"):
        delta_r2star(np.ones(3), np.ones(3), mask=np.zeros(3, bool))
    with pytest.raises(GeometryError, match="mask has shape"):
        delta_r2star(np.ones(3), np.ones(3), mask=np.ones(4, bool))
    with pytest.raises(ValidationError, match="other than 0 and 1"):
        delta_r2star(np.ones(3), np.ones(3), mask=np.array([0, 2, 1]))
    # a negative value outside the mask is not looked at
    out = delta_r2star(np.array([-1.0, 2.0]), np.array([1.0, 1.0]), mask=np.array([False, True]))
    np.testing.assert_array_equal(out, [NAN, 1.0])


def test_delta_r2star_roi_paired_hand_computed():
    post = np.array([30.0, 50.0, 70.0, NAN, 99.0])
    pre = np.array([20.0, 40.0, 60.0, 10.0, 1.0])
    mask = np.array([1, 1, 1, 1, 0])
    r = delta_r2star_roi(post, pre, mask)
    # paired finite voxels: 0, 1, 2 -> mean post 50, mean pre 40, delta 10, 100*10/40 = 25 %
    assert r.paired and r.n_pre == r.n_post == 3 and r.n_excluded_nonfinite == 1
    assert r.mean_post_r2star_per_s == pytest.approx(50.0)
    assert r.mean_pre_r2star_per_s == pytest.approx(40.0)
    assert r.delta_r2star_per_s == pytest.approx(10.0)
    assert r.delta_r2star_percent == pytest.approx(25.0)
    assert r.sd_delta_r2star_per_s == pytest.approx(0.0)  # differences 10, 10, 10
    assert r.sd_post_r2star_per_s == pytest.approx(20.0)  # 30, 50, 70: sample SD 20
    d = r.as_dict()
    json.dumps(d, allow_nan=False)
    assert d["delta_r2star_per_s"] == pytest.approx(10.0)
    with pytest.raises(ValidationError, match="non-finite"):
        delta_r2star_roi(post, pre, mask, nan_policy="raise")
    with pytest.raises(ValidationError, match="nan_policy"):
        delta_r2star_roi(post, pre, mask, nan_policy="drop")


def test_delta_r2star_roi_unpaired_hand_computed():
    post = np.array([30.0, 50.0, 0.0, 0.0])
    pre = np.array([0.0, 0.0, 20.0, 30.0])
    r = delta_r2star_roi(post, pre, np.array([1, 1, 0, 0]), pre_mask=np.array([0, 0, 1, 1]))
    # post mean (30+50)/2 = 40, pre mean (20+30)/2 = 25, delta 15, 100*15/25 = 60 %
    assert not r.paired
    assert r.delta_r2star_per_s == pytest.approx(15.0)
    assert r.delta_r2star_percent == pytest.approx(60.0)
    assert np.isnan(r.sd_delta_r2star_per_s)
    assert r.as_dict()["sd_delta_r2star_per_s"] is None


def test_delta_r2star_roi_errors():
    with pytest.raises(ValidationError, match="empty"):
        delta_r2star_roi(np.ones(3), np.ones(3), np.zeros(3))
    with pytest.raises(ValidationError, match="finite in both"):
        delta_r2star_roi(np.array([NAN, 1.0]), np.array([1.0, NAN]), np.ones(2))
    with pytest.raises(ValidationError, match="negative"):
        delta_r2star_roi(np.array([1.0, 1.0]), np.array([-1.0, 1.0]), np.ones(2))


def test_delta_r2star_liver_phantom():
    """Normal liver R2* 28.7 s^-1 at 1.5 T (Obrzut et al., Sci Rep 2020;10:17887) and
    ferumoxytol ΔR2* 216.3 s^-1 24 h after 4 mg/kg (Stirrat et al., JCMR 2016;18:46)."""
    rng = np.random.default_rng(4)
    shape = (24, 24, 6)
    liver = np.zeros(shape, bool)
    liver[4:20, 4:20, 1:5] = True
    pre = rng.normal(28.7, 2.7, shape).clip(0)
    post = pre + 216.3 + rng.normal(0, 5.0, shape)
    pre[~liver] = NAN  # fits outside the organ failed
    r = delta_r2star_roi(post, pre, liver)
    assert r.delta_r2star_per_s == pytest.approx(216.3, abs=1.0)
    assert r.delta_r2star_percent == pytest.approx(100 * 216.3 / 28.7, rel=0.03)
    vox = delta_r2star(post, pre, mask=liver)
    assert np.all(np.isnan(vox[~liver]))
    assert np.nanmean(vox) == pytest.approx(216.3, abs=1.0)


# --------------------------------------------------------------------------
# hypointense_fraction
# --------------------------------------------------------------------------

# voxels 0-4: the ROI; voxels 5-6: reference tissue with mean (90+110)/2 = 100
POST = np.array([10.0, 40.0, 60.0, 90.0, 100.0, 90.0, 110.0])
ROI = np.array([1, 1, 1, 1, 1, 0, 0], bool)
REF = np.array([0, 0, 0, 0, 0, 1, 1], bool)


def test_hypointense_reference_mode_hand_computed():
    r = hypointense_fraction(POST, mask=ROI, reference=REF)
    # threshold 0.5 * 100 = 50: voxels 10 and 40 are below -> 2 of 5
    assert r.mode == "reference"
    assert r.threshold == pytest.approx(50.0)
    assert r.reference_mean == pytest.approx(100.0)
    assert (r.n_voxels, r.n_hypointense, r.n_counted) == (5, 2, 2)
    assert r.fraction == pytest.approx(0.4) and r.percent == pytest.approx(40.0)
    np.testing.assert_array_equal(r.mask, [1, 1, 0, 0, 0, 0, 0])
    # fraction 0.7 -> threshold 70: 10, 40, 60 -> 3 of 5
    assert hypointense_fraction(POST, mask=ROI, reference=REF, fraction=0.7).n_counted == 3
    # "below" is strict: a voxel exactly at 50 is not hypointense
    at = POST.copy()
    at[1] = 50.0
    assert hypointense_fraction(at, mask=ROI, reference=REF).n_counted == 1


def test_hypointense_reference_mode_with_baseline_hand_computed():
    # baseline reference mean (180+220)/2 = 200 (gain doubled) -> baseline threshold 100;
    # baseline dark: voxel 0 (20) and voxel 2 (80) -> only voxel 1 is newly dark
    base = np.array([20.0, 160.0, 80.0, 180.0, 200.0, 180.0, 220.0])
    r = hypointense_fraction(POST, mask=ROI, reference=REF, baseline=base, voxel_size_mm=0.5)
    assert r.baseline_threshold == pytest.approx(100.0)
    assert r.baseline_reference_mean == pytest.approx(200.0)
    assert (r.n_hypointense, r.n_baseline_hypointense, r.n_counted) == (2, 2, 1)
    assert r.fraction == pytest.approx(1 / 5)
    np.testing.assert_array_equal(r.mask, [0, 1, 0, 0, 0, 0, 0])
    assert r.volume_mm3 == pytest.approx(0.5 ** 1)  # 1-D array: one voxel of 0.5 mm
    d = r.as_dict()
    json.dumps(d, allow_nan=False)
    assert "mask" not in d and d["n_counted"] == 1


def test_hypointense_percentile_mode_hand_computed():
    post = np.arange(1.0, 21.0)  # 1, 2, ..., 20
    roi = np.ones(20, bool)
    r = hypointense_fraction(post, mask=roi, percentile=10)
    # numpy linear percentile: 1 + 0.10 * (20 - 1) = 2.9 -> values 1 and 2 -> 2 of 20
    assert r.threshold == pytest.approx(2.9)
    assert r.n_counted == 2 and r.fraction == pytest.approx(0.10)
    # baseline dark in other voxels (reversed order): its darkest 10 % are voxels 18, 19
    r = hypointense_fraction(post, mask=roi, percentile=10, baseline=post[::-1].copy())
    assert r.baseline_threshold == pytest.approx(2.9)
    assert (r.n_baseline_hypointense, r.n_counted) == (2, 2)
    # baseline dark in the same voxels (2, 4, ..., 40: P10 = 2 + 0.1 * 19 * 2 = 5.8 -> voxels 0, 1)
    r = hypointense_fraction(post, mask=roi, percentile=10, baseline=2 * post)
    assert r.baseline_threshold == pytest.approx(5.8)
    assert r.n_counted == 0 and r.fraction == 0.0


def test_hypointense_nonfinite_voxels():
    post = POST.copy()
    post[4] = NAN
    r = hypointense_fraction(post, mask=ROI, reference=REF)
    assert r.n_voxels == 4 and r.n_excluded_nonfinite == 1 and r.fraction == pytest.approx(0.5)
    with pytest.raises(ValidationError, match="non-finite"):
        hypointense_fraction(post, mask=ROI, reference=REF, nan_policy="raise")


@pytest.mark.parametrize("kwargs, match", [
    (dict(), "either reference"),
    (dict(reference=REF, percentile=10), "either reference"),
    (dict(reference=REF, fraction=0.0), "fraction must be > 0"),
    (dict(reference=REF, fraction=-0.5), "fraction must be > 0"),
    (dict(percentile=100), r"percentile must be in \(0, 100\)"),
    (dict(percentile=0), r"percentile must be in \(0, 100\)"),
    (dict(reference=np.zeros(7, bool)), "reference is empty"),
    (dict(reference=ROI), "overlaps"),
])
def test_hypointense_errors(kwargs, match):
    with pytest.raises(ValidationError, match=match):
        hypointense_fraction(POST, mask=ROI, **kwargs)


def test_hypointense_shape_and_sign_errors():
    with pytest.raises(GeometryError, match="baseline has shape"):
        hypointense_fraction(POST, mask=ROI, reference=REF, baseline=np.ones(3))
    with pytest.raises(ValidationError, match="negative"):
        hypointense_fraction(-POST, mask=ROI, percentile=10)
    with pytest.raises(ValidationError, match="mean > 0"):
        hypointense_fraction(np.where(REF, 0.0, POST), mask=ROI, reference=REF)
    with pytest.raises(ValidationError, match="mask is empty"):
        hypointense_fraction(POST, mask=np.zeros(7, bool), percentile=10)


def test_hypointense_phantom_counts_only_new_dark_voxels():
    """Tumour at 100 with noise; muscle reference at 100; a haemorrhage dark before and
    after; labelled-cell clusters dark only after. Only the clusters may count."""
    rng = np.random.default_rng(7)
    shape = (40, 40, 12)
    vox = (0.2, 0.2, 0.5)
    tumour = _ball(shape, (20, 20, 6), 3.0, vox)
    muscle = np.zeros(shape, bool)
    muscle[:, 37:, :] = True
    haem = _ball(shape, (14, 20, 6), 0.8, vox)
    cells = _ball(shape, (25, 22, 6), 0.6, vox) | _ball(shape, (20, 14, 5), 0.5, vox)
    assert np.all((haem | cells)[tumour == False] == False)  # noqa: E712
    base = rng.normal(100, 2, shape)
    base[haem] = 20
    post = rng.normal(100, 2, shape)
    post[haem | cells] = 20
    r = hypointense_fraction(post, mask=tumour, reference=muscle, baseline=base,
                             voxel_size_mm=vox)
    assert r.n_hypointense == int((haem | cells).sum())
    assert r.n_baseline_hypointense == int(haem.sum())
    assert r.n_counted == int(cells.sum())
    np.testing.assert_array_equal(r.mask, cells)
    assert r.fraction == pytest.approx(cells.sum() / tumour.sum())
    assert r.volume_mm3 == pytest.approx(cells.sum() * 0.2 * 0.2 * 0.5)
    # without the baseline the haemorrhage is counted too
    assert hypointense_fraction(post, mask=tumour, reference=muscle).n_counted == \
        int((haem | cells).sum())


# --------------------------------------------------------------------------
# detect_spots
# --------------------------------------------------------------------------

def _spot_image():
    img = np.full((6, 6, 1), 100.0)
    img[1, 1, 0] = 10.0  # spot A: one voxel
    img[3, 3, 0], img[3, 4, 0] = 20.0, 30.0  # spot B: two voxels sharing a face
    img[0, 5, 0], img[1, 4, 0] = 40.0, 45.0  # two voxels touching at a corner only
    return img


def test_detect_spots_hand_computed():
    img = _spot_image()
    mask = np.ones(img.shape, bool)
    r = detect_spots(img, mask=mask, threshold=50, voxel_size_mm=(0.5, 0.5, 2.0))
    # face connectivity: A, the two corner voxels separately, and B -> 4 spots
    assert r.count == 4
    by_size = sorted(s.n_voxels for s in r.spots)
    assert by_size == [1, 1, 1, 2]
    b = next(s for s in r.spots if s.n_voxels == 2)
    assert b.volume_mm3 == pytest.approx(2 * 0.5 * 0.5 * 2.0)  # 1 mm^3
    assert b.centroid_voxel == pytest.approx((3.0, 3.5, 0.0))
    assert b.min_intensity == 20.0 and b.mean_intensity == pytest.approx(25.0)
    assert b.min_position_voxel == (3, 3, 0)
    assert b.centroid_world_mm is None
    assert r.total_volume_mm3 == pytest.approx(5 * 0.5)
    # label image: spots numbered 1..count
    assert set(np.unique(r.labels)) == {0, 1, 2, 3, 4}
    # 8-connectivity in plane (2): the corner pair joins -> 3 spots
    assert detect_spots(img, mask=mask, threshold=50, voxel_size_mm=0.5, connectivity=2).count == 3
    # threshold 25: only A (10) and B's first voxel (20) -> 2 spots
    assert detect_spots(img, mask=mask, threshold=25, voxel_size_mm=0.5).count == 2
    # the mask limits the search
    m2 = mask.copy()
    m2[3, :, :] = False
    assert detect_spots(img, mask=m2, threshold=50, voxel_size_mm=0.5).count == 3


def test_detect_spots_size_limits():
    img = _spot_image()
    mask = np.ones(img.shape, bool)
    r = detect_spots(img, mask=mask, threshold=50, voxel_size_mm=1.0, min_size_voxels=2)
    assert r.count == 1 and r.n_rejected_small == 3 and r.spots[0].n_voxels == 2
    r = detect_spots(img, mask=mask, threshold=50, voxel_size_mm=1.0, max_size_voxels=1)
    assert r.count == 3 and r.n_rejected_large == 1
    json.dumps(r.as_dict(), allow_nan=False)


def test_detect_spots_world_centroid():
    img = _spot_image()
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    affine[:3, 3] = (-10.0, 5.0, 1.0)
    r = detect_spots(img, mask=np.ones(img.shape, bool), threshold=15,
                     voxel_size_mm=(0.5, 0.5, 2.0), affine=affine)
    # spot A at voxel (1, 1, 0): world (-10 + 0.5, 5 + 0.5, 1)
    assert r.count == 1
    assert r.spots[0].centroid_world_mm == pytest.approx((-9.5, 5.5, 1.0))
    with pytest.raises(GeometryError, match="disagrees"):
        detect_spots(img, mask=np.ones(img.shape, bool), threshold=15, voxel_size_mm=1.0,
                     affine=affine)


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(threshold=-1), ValidationError, "threshold must be >= 0"),
    (dict(threshold=0), ValidationError, "threshold must be > 0"),
    (dict(threshold=NAN), ValidationError, "threshold must be finite"),
    (dict(min_size_voxels=0), ValidationError, "min_size_voxels"),
    (dict(min_size_voxels=3, max_size_voxels=2), ValidationError, "smaller than"),
    (dict(connectivity=4), ValidationError, "connectivity"),
    (dict(voxel_size_mm=(1, 1)), ValidationError, "voxel_size_mm"),
    (dict(voxel_size_mm=-1), ValidationError, "voxel_size_mm"),
    (dict(mask=np.zeros((6, 6, 1), bool)), ValidationError, "mask is empty"),
    (dict(mask=np.ones((6, 6, 2), bool)), GeometryError, "mask has shape"),
])
def test_detect_spots_errors(kwargs, err, match):
    args = dict(mask=np.ones((6, 6, 1), bool), threshold=50, voxel_size_mm=1.0)
    args.update(kwargs)
    with pytest.raises(err, match=match):
        detect_spots(_spot_image(), **args)


def test_detect_spots_2d_image_is_refused():
    with pytest.raises(ValidationError, match=r"\(X, Y, 1\)"):
        detect_spots(np.ones((4, 4)), mask=np.ones((4, 4), bool), threshold=1, voxel_size_mm=1)


def test_detect_spots_phantom():
    """Eight signal voids of known radius in a noisy tumour; count, volume, centroids."""
    rng = np.random.default_rng(11)
    shape = (48, 48, 16)
    vox = (0.25, 0.25, 0.5)
    img = rng.normal(100, 3, shape)
    centres = [(8, 8, 4), (8, 24, 8), (8, 40, 12), (24, 8, 12), (24, 40, 4), (40, 8, 8),
               (40, 24, 4), (40, 40, 12)]
    truth = np.zeros(shape, bool)
    for c in centres:
        b = _ball(shape, c, 0.75, vox)
        truth |= b
        img[b] = 15
    img[20:28, 20:28, 2:14] = 10  # a large dark region (necrosis), rejected by size
    r = detect_spots(img, mask=np.ones(shape, bool), threshold=50, voxel_size_mm=vox,
                     max_size_voxels=200)
    assert r.count == len(centres) and r.n_rejected_large == 1
    got = sorted(s.centroid_voxel for s in r.spots)
    np.testing.assert_allclose(got, sorted(map(tuple, np.array(centres, float))), atol=1e-9)
    assert r.total_volume_mm3 == pytest.approx(truth.sum() * np.prod(vox))
    one = 4 / 3 * np.pi * 0.75 ** 3
    for s in r.spots:
        assert s.volume_mm3 == pytest.approx(one, rel=0.35)


# --------------------------------------------------------------------------
# signal loss, TNR, rCBV
# --------------------------------------------------------------------------

def test_signal_loss_hand_computed():
    pre = np.array([100.0, 200.0, 100.0])
    post = np.array([50.0, 150.0, 80.0])
    roi = np.array([1, 1, 0], bool)
    r = signal_loss_percent(post, pre, mask=roi)
    # means 150 -> 100: loss 100 * (1 - 100/150) = 33.33 %
    assert r.loss_percent == pytest.approx(100 / 3)
    assert (r.mean_pre, r.mean_post, r.n_voxels) == (150.0, 100.0, 2)
    # normalised to the reference voxel: pre 150/100 = 1.5, post 100/80 = 1.25
    # loss 100 * (1 - 1.25/1.5) = 16.67 %
    r = signal_loss_percent(post, pre, mask=roi, reference=~roi)
    assert r.normalised_pre == pytest.approx(1.5) and r.normalised_post == pytest.approx(1.25)
    assert r.loss_percent == pytest.approx(100 / 6)
    json.dumps(r.as_dict(), allow_nan=False)


def test_signal_loss_liver_phantom():
    """T2*-weighted signal S0 exp(-TE R2*) at TE 5 ms: liver R2* 28.7 s^-1 before (Obrzut et
    al. 2020), + 216.3 s^-1 after ferumoxytol (Stirrat et al. 2016); muscle unchanged; the
    post session has 1.3x the receiver gain. Expected loss 100 (1 - exp(-0.005 * 216.3))."""
    rng = np.random.default_rng(5)
    te = 0.005
    shape = (30, 30, 4)
    liver = np.zeros(shape, bool)
    liver[3:18, 3:27, :] = True
    muscle = np.zeros(shape, bool)
    muscle[21:28, 3:27, :] = True
    r2_pre = np.where(liver, 28.7, 35.0)
    r2_post = np.where(liver, 28.7 + 216.3, 35.0)
    pre = 1000 * np.exp(-te * r2_pre) + rng.normal(0, 2, shape)
    post = 1.3 * 1000 * np.exp(-te * r2_post) + rng.normal(0, 2, shape)
    expected = 100 * (1 - np.exp(-te * 216.3))  # 66.1 %
    r = signal_loss_percent(post, pre, mask=liver, reference=muscle)
    assert r.loss_percent == pytest.approx(expected, abs=0.5)
    # without the reference the gain change biases the loss: 100 (1 - 1.3 * 0.339) = 55.9 %
    r = signal_loss_percent(post, pre, mask=liver)
    assert r.loss_percent == pytest.approx(100 * (1 - 1.3 * np.exp(-te * 216.3)), abs=0.5)


def test_signal_loss_errors():
    roi = np.array([1, 1, 0], bool)
    with pytest.raises(ValidationError, match="pre-injection ROI mean is 0"):
        signal_loss_percent(np.ones(3), np.zeros(3), mask=roi)
    with pytest.raises(ValidationError, match="negative"):
        signal_loss_percent(-np.ones(3), np.ones(3), mask=roi)
    with pytest.raises(ValidationError, match="overlaps"):
        signal_loss_percent(np.ones(3), np.ones(3), mask=roi, reference=np.ones(3, bool))
    with pytest.raises(GeometryError):
        signal_loss_percent(np.ones(3), np.ones(4), mask=roi)


def test_tumour_to_normal_ratio_hand_computed():
    img = np.array([30.0, 50.0, 100.0])
    tum = np.array([1, 1, 0], bool)
    nor = ~tum
    r = tumour_to_normal_ratio(img, tumour_mask=tum, normal_mask=nor)
    # (30+50)/2 = 40; 40/100 = 0.4 < 0.5
    assert r.ratio == pytest.approx(0.4) and r.label == "strong"
    for value, label in [(50.0, "moderate"), (60.0, "moderate"), (70.0, "moderate"),
                         (71.0, "weak"), (49.9, "strong")]:
        img2 = np.array([value, value, 100.0])
        assert tumour_to_normal_ratio(img2, tumour_mask=tum, normal_mask=nor).label == label
    # configurable boundaries: 0.4 is "moderate" with (0.3, 0.6)
    r = tumour_to_normal_ratio(img, tumour_mask=tum, normal_mask=nor, boundaries=(0.3, 0.6))
    assert r.label == "moderate" and r.boundaries == (0.3, 0.6)
    json.dumps(r.as_dict(), allow_nan=False)


@pytest.mark.parametrize("kwargs, match", [
    (dict(boundaries=(0.7, 0.5)), "0 < lower < upper"),
    (dict(boundaries=(-0.1, 0.5)), "0 < lower < upper"),
    (dict(boundaries=0.5), "two numbers"),
    (dict(normal_mask=np.array([1, 0, 1], bool)), "overlaps"),
    (dict(normal_mask=np.zeros(3, bool)), "normal_mask is empty"),
])
def test_tumour_to_normal_ratio_errors(kwargs, match):
    args = dict(tumour_mask=np.array([1, 1, 0], bool), normal_mask=np.array([0, 0, 1], bool))
    args.update(kwargs)
    with pytest.raises(ValidationError, match=match):
        tumour_to_normal_ratio(np.array([30.0, 50.0, 100.0]), **args)


def test_tumour_to_normal_ratio_phantom():
    rng = np.random.default_rng(3)
    img = rng.normal(200.0, 4.0, (20, 20, 4))
    tum = np.zeros(img.shape, bool)
    tum[5:10, 5:10, :] = True
    img[tum] = rng.normal(90.0, 4.0, tum.sum())  # 90/200 = 0.45
    r = tumour_to_normal_ratio(img, tumour_mask=tum, normal_mask=~tum)
    assert r.ratio == pytest.approx(0.45, abs=0.01) and r.label == "strong"


def test_classify_rcbv():
    assert RCBV_THRESHOLD_FERUMOXYTOL == 1.75
    r = classify_rcbv(1.76)
    assert r.label == "progression" and r.suggests_progression
    # rCBV <= 1.75 is pseudoprogression (Gahramanov et al. 2013)
    assert classify_rcbv(1.75).label == "pseudoprogression"
    assert classify_rcbv(0.9).label == "pseudoprogression"
    assert classify_rcbv(1.5, threshold=1.2).label == "progression"
    assert classify_rcbv(np.float32(2.0)).as_dict() == {
        "rcbv": 2.0, "threshold": 1.75, "label": "progression", "suggests_progression": True}
    with pytest.raises(ValidationError, match="rcbv must be >= 0"):
        classify_rcbv(-0.1)
    with pytest.raises(ValidationError, match="rcbv must be finite"):
        classify_rcbv(NAN)
    with pytest.raises(ValidationError, match="single number"):
        classify_rcbv([1.0, 2.0])
    with pytest.raises(ValidationError, match="threshold must be > 0"):
        classify_rcbv(1.0, threshold=0)
