"""resample_mask: nearest-neighbour labels and partial-volume fractions, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from oncomri.core import GeometryError, ValidationError
from oncomri.roi.masks import resample_mask, world_bounding_box


def _grid(voxel_mm, origin_mm=(0.0, 0.0, 0.0)):
    aff = np.diag([*voxel_mm, 1.0])
    aff[:3, 3] = origin_mm
    return aff


def test_world_bounding_box_by_hand():
    # 4 x 2 x 1 voxels of 2 x 3 x 5 mm, first centre at (10, 20, 30):
    # x from 10 - 1 to 10 + 3*2 + 1 = 17; y 20 - 1.5 .. 20 + 3 + 1.5; z 30 -+ 2.5
    box = world_bounding_box((4, 2, 1), _grid((2, 3, 5), (10, 20, 30)))
    np.testing.assert_allclose(box, [[9, 18.5, 27.5], [17, 24.5, 32.5]])


def test_same_grid_returns_an_equal_copy():
    labels = np.zeros((5, 4, 3), np.int16)
    labels[1, 2, 0] = 4
    aff = _grid((1.0, 1.0, 2.0))
    out = resample_mask(labels, aff, target_shape=(5, 4, 3), target_affine=aff)
    assert out.dtype == np.int16 and np.array_equal(out, labels)
    assert out is not labels


def test_nearest_on_a_flipped_grid_is_the_flipped_array():
    rng = np.random.default_rng(0)
    mask = rng.random((6, 5, 4)) > 0.5
    src = _grid((1.0, 1.0, 1.0))
    # same voxels, x reversed: voxel i of the target is voxel 5 - i of the source
    tgt = src @ np.array([[-1, 0, 0, 5], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    out = resample_mask(mask, src, target_shape=(6, 5, 4), target_affine=tgt)
    assert out.dtype == np.bool_
    assert np.array_equal(out, mask[::-1])


def test_nearest_downsampling_keeps_labels_by_hand():
    # 1 mm source (centres 0, 1, 2, 3 mm), 2 mm target with centres at 0.6,
    # 2.6 mm: the nearest source centres are 1 and 3, so target voxel t reads
    # source voxel 2t + 1 on every axis.
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[1, 1, 1] = 7
    labels[3, 1, 1] = 9
    labels[0, 0, 0] = 5  # never sampled
    tgt = _grid((2, 2, 2), (0.6, 0.6, 0.6))
    out = resample_mask(labels, _grid((1, 1, 1)), target_shape=(2, 2, 2), target_affine=tgt)
    expected = np.zeros((2, 2, 2), np.uint8)
    expected[0, 0, 0] = 7
    expected[1, 0, 0] = 9
    assert out.dtype == np.uint8 and np.array_equal(out, expected)


def test_nearest_upsampling_repeats_each_voxel_by_hand():
    # 2 mm source voxels centred at 0 and 2 mm cover [-1, 1) and [1, 3);
    # 1 mm target centres at -0.5, 0.5, 1.5, 2.5 fall 2 + 2 into them.
    coarse = np.array([[[1]], [[2]]], np.uint8)  # shape (2, 1, 1)
    tgt = _grid((1, 2, 2), (-0.5, 0, 0))
    out = resample_mask(coarse, _grid((2, 2, 2)), target_shape=(4, 1, 1), target_affine=tgt)
    assert out[:, 0, 0].tolist() == [1, 1, 2, 2]


def test_fraction_on_an_aligned_3mm_grid_is_exact_by_hand():
    # A 1 mm mask of 4 x 3 x 3 voxels at the corner; the 3 mm target voxel 0
    # covers source voxels 0..2 on each axis (centre 1 mm), voxel 1 covers 3..5.
    mask = np.zeros((9, 9, 9), bool)
    mask[0:4, 0:3, 0:3] = True
    tgt = _grid((3, 3, 3), (1, 1, 1))
    frac = resample_mask(mask, _grid((1, 1, 1)), target_shape=(3, 3, 3), target_affine=tgt,
                         method="fraction")
    assert frac.dtype == np.float32
    expected = np.zeros((3, 3, 3))
    expected[0, 0, 0] = 27 / 27  # all 3 x 3 x 3 inside
    expected[1, 0, 0] = 9 / 27  # x = 3 only: 1 x 3 x 3
    np.testing.assert_allclose(frac, expected, atol=1e-7)
    # nearest: the target centre at x = 4 mm is outside the mask
    near = resample_mask(mask, _grid((1, 1, 1)), target_shape=(3, 3, 3), target_affine=tgt)
    assert near.sum() == 1 and near[0, 0, 0]


def test_fraction_conserves_the_volume_of_a_sphere_on_an_aligned_grid():
    n = 30
    x, y, z = np.indices((n, n, n))
    sphere = (x - 14.2) ** 2 + (y - 15.1) ** 2 + (z - 13.7) ** 2 <= 9.3 ** 2
    src = _grid((0.5, 0.5, 0.5))
    tgt = _grid((1.5, 1.5, 1.5), (0.5, 0.5, 0.5))  # each target voxel = 3x3x3 source voxels
    frac = resample_mask(sphere, src, target_shape=(10, 10, 10), target_affine=tgt,
                         method="fraction")
    assert frac.min() >= 0 and frac.max() <= 1
    assert np.isclose(frac.sum() * 1.5 ** 3, sphere.sum() * 0.5 ** 3, rtol=1e-6)
    assert 0 < np.count_nonzero((frac > 0) & (frac < 1))  # a partial-volume boundary


def test_fraction_of_one_label_in_a_label_image():
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[0:3, 0:3, 0:3] = 1
    labels[3:6, 0:3, 0:3] = 2
    tgt = _grid((6, 6, 6), (2.5, 2.5, 2.5))  # one voxel over the whole source
    src = _grid((1, 1, 1))
    both = resample_mask(labels, src, target_shape=(1, 1, 1), target_affine=tgt,
                         method="fraction", supersampling=6)
    two = resample_mask(labels, src, target_shape=(1, 1, 1), target_affine=tgt,
                        method="fraction", label=2, supersampling=6)
    # 27 + 27 of 216 voxels; 27 of 216
    assert both[0, 0, 0] == pytest.approx(54 / 216)
    assert two[0, 0, 0] == pytest.approx(27 / 216)


def test_object_smaller_than_a_target_voxel_needs_fraction():
    mask = np.zeros((10, 10, 10), bool)
    mask[0, 0, 0] = True  # a 1 mm voxel at the corner of a 5 mm target voxel
    tgt = _grid((5, 5, 5), (2, 2, 2))
    with pytest.raises(GeometryError, match="use method='fraction'"):
        resample_mask(mask, _grid((1, 1, 1)), target_shape=(2, 2, 2), target_affine=tgt)
    frac = resample_mask(mask, _grid((1, 1, 1)), target_shape=(2, 2, 2), target_affine=tgt,
                         method="fraction", supersampling=5)
    assert frac[0, 0, 0] == pytest.approx(1 / 125)
    assert frac.sum() == pytest.approx(1 / 125)


def test_disjoint_grids_raise_geometry_error_naming_both_extents():
    mask = np.ones((4, 4, 4), bool)
    src = _grid((1, 1, 1), (-100, -100, 0))
    tgt = _grid((1, 1, 1), (100, 100, 0))  # the LPS/RAS mix-up: x and y negated
    with pytest.raises(GeometryError, match="do not overlap.*LPS"):
        resample_mask(mask, src, target_shape=(4, 4, 4), target_affine=tgt)


def test_mask_outside_the_overlap_raises_geometry_error():
    mask = np.zeros((10, 4, 4), bool)
    mask[9, 0, 0] = True  # only the far end, which the target does not reach
    tgt = _grid((1, 1, 1))
    with pytest.raises(GeometryError, match="no mask voxel"):
        resample_mask(mask, _grid((1, 1, 1)), target_shape=(5, 4, 4), target_affine=tgt)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(method="linear"), ValidationError, "method 'linear'"),
    (dict(target_shape=(4, 4, 4, 3)), ValidationError, "spatial shape"),
    (dict(target_affine=np.zeros((4, 4))), GeometryError, "singular"),
    (dict(target_affine=np.eye(3)), GeometryError, "4x4"),
    (dict(supersampling=0), ValidationError, "supersampling"),
    (dict(label=1), ValidationError, "label applies"),
])
def test_bad_arguments(kwargs, error, match):
    args = dict(target_shape=(4, 4, 4), target_affine=np.eye(4))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        resample_mask(np.ones((4, 4, 4), bool), np.eye(4), **args)


def test_empty_float_or_2d_masks_are_rejected():
    with pytest.raises(ValidationError, match="holds no voxel"):
        resample_mask(np.zeros((3, 3, 3), bool), np.eye(4), target_shape=(3, 3, 3),
                      target_affine=np.eye(4))
    with pytest.raises(ValidationError, match="dtype float"):
        resample_mask(np.ones((3, 3, 3)), np.eye(4), target_shape=(3, 3, 3),
                      target_affine=np.eye(4))
    with pytest.raises(ValidationError, match="3D"):
        resample_mask(np.ones((3, 3), bool), np.eye(4), target_shape=(3, 3, 3),
                      target_affine=np.eye(4))
