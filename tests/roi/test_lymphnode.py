"""Lymph-node classification: hand-computed tiny nodes and synthetic ellipsoidal nodes."""

import json
import math

import numpy as np
import pytest

from oncomri.core.errors import GeometryError, ValidationError
from oncomri.roi.lymphnode import classify_lymph_node, feret_diameter_mm


def _ellipsoid(shape, centre, semi_axes_mm, voxel_size_mm):
    grid = np.indices(shape, dtype=float)
    q = sum((((grid[i] - centre[i]) * voxel_size_mm[i]) / semi_axes_mm[i]) ** 2 for i in range(3))
    return q <= 1.0


def _tiny():
    """A 3x3 node (one slice) at intensity 10 with one bright voxel (100) at (2, 2, 0)."""
    img = np.full((5, 5, 1), 80.0)
    node = np.zeros(img.shape, bool)
    node[1:4, 1:4, 0] = True
    img[node] = 10.0
    img[2, 2, 0] = 100.0
    return img, node


def test_tiny_node_absolute_threshold_hand_computed():
    img, node = _tiny()
    r = classify_lymph_node(img, node_mask=node, voxel_size_mm=1.0, threshold=50.0,
                            min_focal_volume_mm3=1.0)
    # 1 of 9 node voxels >= 50 -> fraction 1/9; the focus is one 1 mm^3 voxel
    assert r.classification == "suspicious"
    assert r.high_signal_fraction == pytest.approx(1 / 9)
    assert r.n_node_voxels == 9 and r.node_volume_mm3 == 9.0
    assert r.n_focal_areas == 1
    assert r.largest_focal_volume_mm3 == pytest.approx(1.0)
    assert r.largest_focal_diameter_mm == pytest.approx(math.sqrt(3))  # cube diagonal
    assert r.largest_focal_equivalent_diameter_mm == pytest.approx((6 / math.pi) ** (1 / 3))
    assert r.largest_focal_centroid_voxel == (2.0, 2.0, 0.0)
    assert r.threshold_rule == "absolute" and r.threshold == 50.0
    assert r.focal_labels[2, 2, 0] == 1 and r.focal_labels.sum() == 1
    # a focus must reach min_focal_volume_mm3: 1 mm^3 < 2 mm^3 -> benign
    r = classify_lymph_node(img, node_mask=node, voxel_size_mm=1.0, threshold=50.0,
                            min_focal_volume_mm3=2.0)
    assert r.classification == "benign" and r.n_focal_areas == 0
    assert r.largest_focal_volume_mm3 == pytest.approx(1.0)  # still reported
    d = r.as_dict()
    json.dumps(d, allow_nan=False)
    assert "focal_labels" not in d and d["classification"] == "benign"


def test_tiny_node_anisotropic_voxels():
    img, node = _tiny()
    r = classify_lymph_node(img, node_mask=node, voxel_size_mm=(0.5, 0.5, 2.0), threshold=50.0,
                            min_focal_volume_mm3=0.5)
    # one voxel of 0.5 * 0.5 * 2 = 0.5 mm^3; its diagonal sqrt(0.25 + 0.25 + 4) = 2.1213 mm
    assert r.classification == "suspicious"
    assert r.largest_focal_volume_mm3 == pytest.approx(0.5)
    assert r.largest_focal_diameter_mm == pytest.approx(math.sqrt(4.5))
    assert r.node_volume_mm3 == pytest.approx(9 * 0.5)


def test_reference_threshold_hand_computed():
    img, node = _tiny()
    ref = np.zeros(img.shape, bool)
    ref[0, :, 0] = True  # intensity 80 -> threshold 0.5 * 80 = 40
    r = classify_lymph_node(img, node_mask=node, reference_mask=ref, voxel_size_mm=1.0,
                            min_focal_volume_mm3=1.0)
    assert r.threshold_rule == "reference"
    assert r.reference_mean == pytest.approx(80.0) and r.threshold == pytest.approx(40.0)
    assert r.classification == "suspicious"
    # fraction 0.1 -> threshold 8: every node voxel (10) is high-signal: no iron uptake at all
    r = classify_lymph_node(img, node_mask=node, reference_mask=ref, reference_fraction=0.1,
                            voxel_size_mm=1.0, min_focal_volume_mm3=1.0)
    assert r.high_signal_fraction == 1.0 and r.classification == "suspicious"
    assert r.largest_focal_volume_mm3 == 9.0
    # the Feret diameter of a 3x3x1 block of 1 mm voxels: sqrt(3^2 + 3^2 + 1^2)
    assert r.largest_focal_diameter_mm == pytest.approx(math.sqrt(19))


def test_threshold_is_inclusive():
    img, node = _tiny()
    r = classify_lymph_node(img, node_mask=node, voxel_size_mm=1.0, threshold=100.0,
                            min_focal_volume_mm3=1.0)
    assert r.classification == "suspicious"  # 100 >= 100: high-signal (not darker)


def test_connectivity_of_focal_areas():
    img, node = _tiny()
    img[1, 1, 0] = 100.0  # touches (2, 2, 0) at a corner only
    kw = dict(node_mask=node, voxel_size_mm=1.0, threshold=50.0, min_focal_volume_mm3=2.0)
    assert classify_lymph_node(img, **kw).classification == "benign"  # two 1-voxel areas
    r = classify_lymph_node(img, connectivity=2, **kw)  # edges connect in-plane diagonals
    assert r.classification == "suspicious" and r.largest_focal_volume_mm3 == 2.0


def test_nonfinite_voxels_are_left_out():
    img, node = _tiny()
    img[1, 1, 0] = np.nan
    r = classify_lymph_node(img, node_mask=node, voxel_size_mm=1.0, threshold=50.0,
                            min_focal_volume_mm3=1.0)
    assert r.n_excluded_nonfinite == 1 and r.n_node_voxels == 8
    assert r.high_signal_fraction == pytest.approx(1 / 8)


def test_feret_diameter_hand_computed():
    m = np.zeros((4, 4, 4), bool)
    m[0, 0, 0] = m[2, 0, 0] = True  # two voxels 2 apart: corners span 3 x 1 x 1
    assert feret_diameter_mm(m, voxel_size_mm=1.0) == pytest.approx(math.sqrt(11))
    assert feret_diameter_mm(m, voxel_size_mm=(2.0, 1.0, 1.0)) == pytest.approx(math.sqrt(38))


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(threshold=None), ValidationError, "either threshold"),
    (dict(reference_mask=np.ones((5, 5, 1), bool)), ValidationError, "either threshold"),
    (dict(threshold=-5.0), ValidationError, "threshold must be >= 0"),
    (dict(threshold=0.0), ValidationError, "threshold must be > 0"),
    (dict(min_focal_volume_mm3=-1.0), ValidationError, "min_focal_volume_mm3 must be >= 0"),
    (dict(exclude_boundary_mm=-1.0), ValidationError, "exclude_boundary_mm must be >= 0"),
    (dict(exclude_boundary_mm=5.0), ValidationError, "no node voxel is left"),
    (dict(node_mask=np.zeros((5, 5, 1), bool)), ValidationError, "node_mask is empty"),
    (dict(node_mask=np.ones((5, 5, 2), bool)), GeometryError, "node_mask has shape"),
    (dict(voxel_size_mm=(1.0, 1.0)), ValidationError, "voxel_size_mm"),
    (dict(connectivity=0), ValidationError, "connectivity"),
])
def test_errors(kwargs, err, match):
    img, node = _tiny()
    args = dict(node_mask=node, voxel_size_mm=1.0, threshold=50.0, min_focal_volume_mm3=1.0)
    args.update(kwargs)
    with pytest.raises(err, match=match):
        classify_lymph_node(img, **args)


def test_reference_errors():
    img, node = _tiny()
    with pytest.raises(ValidationError, match="overlaps"):
        classify_lymph_node(img, node_mask=node, reference_mask=node, voxel_size_mm=1.0,
                            min_focal_volume_mm3=1.0)
    ref = np.zeros(img.shape, bool)
    ref[0, 0, 0] = True
    with pytest.raises(ValidationError, match="reference_fraction must be > 0"):
        classify_lymph_node(img, node_mask=node, reference_mask=ref, reference_fraction=0,
                            voxel_size_mm=1.0, min_focal_volume_mm3=1.0)
    with pytest.raises(ValidationError, match="negative"):
        classify_lymph_node(-img, node_mask=node, threshold=1.0, voxel_size_mm=1.0,
                            min_focal_volume_mm3=1.0)


# --------------------------------------------------------------------------
# Phantoms: ellipsoidal nodes, 0.25 mm voxels (a preclinical node)
# --------------------------------------------------------------------------

VOX = (0.25, 0.25, 0.25)
SHAPE = (64, 48, 40)
CENTRE = np.array([32.0, 24.0, 20.0])


def _node_phantom(seed):
    rng = np.random.default_rng(seed)
    node = _ellipsoid(SHAPE, CENTRE, (6.0, 4.0, 3.0), VOX)
    muscle = np.zeros(SHAPE, bool)
    muscle[:, :4, :] = True
    img = rng.normal(100.0, 3.0, SHAPE)  # muscle and surroundings
    img[node] = rng.normal(20.0, 3.0, node.sum())  # iron-laden node: homogeneously dark
    return img, node, muscle


def test_homogeneous_dark_node_is_benign():
    img, node, muscle = _node_phantom(1)
    r = classify_lymph_node(img, node_mask=node, reference_mask=muscle, voxel_size_mm=VOX,
                            min_focal_volume_mm3=1.0)
    assert r.threshold == pytest.approx(50.0, abs=0.5)
    assert r.classification == "benign"
    assert r.high_signal_fraction == 0.0 and r.n_focal_areas == 0
    assert r.largest_focal_centroid_voxel is None


def test_dark_node_with_bright_3mm_focus_is_suspicious():
    img, node, muscle = _node_phantom(2)
    focus_centre = CENTRE + np.array([8.0, 3.0, -2.0])  # inside the node
    focus = _ellipsoid(SHAPE, focus_centre, (1.5, 1.5, 1.5), VOX)  # 3 mm diameter
    assert np.all(node[focus])
    img[focus] = 150.0 + np.random.default_rng(3).normal(0, 3.0, focus.sum())
    affine = np.diag(VOX + (1.0,))
    r = classify_lymph_node(img, node_mask=node, reference_mask=muscle, voxel_size_mm=VOX,
                            min_focal_volume_mm3=1.0, affine=affine)
    assert r.classification == "suspicious" and r.n_focal_areas == 1
    # the focus volume within one voxel layer of the true ball (4/3 pi 1.5^3 = 14.14 mm^3)
    inner = 4 / 3 * math.pi * (1.5 - VOX[0]) ** 3
    outer = 4 / 3 * math.pi * (1.5 + VOX[0]) ** 3
    assert inner <= r.largest_focal_volume_mm3 <= outer
    assert r.largest_focal_volume_mm3 == pytest.approx(focus.sum() * VOX[0] ** 3)
    assert abs(r.largest_focal_diameter_mm - 3.0) <= math.sqrt(3) * VOX[0]
    assert r.largest_focal_equivalent_diameter_mm == pytest.approx(3.0, abs=VOX[0])
    np.testing.assert_allclose(r.largest_focal_centroid_voxel, focus_centre, atol=1e-9)
    np.testing.assert_allclose(r.largest_focal_centroid_world_mm, focus_centre * 0.25, atol=1e-9)
    assert r.high_signal_fraction == pytest.approx(focus.sum() / node.sum())
    np.testing.assert_array_equal(r.focal_labels > 0, focus)


def test_bright_boundary_layer_excluded():
    """Partial volume with fat: the node's outer voxel layer is bright."""
    img, node, muscle = _node_phantom(4)
    from scipy import ndimage as ndi
    layer = node & ~ndi.binary_erosion(node)
    img[layer] = 90.0
    kw = dict(node_mask=node, reference_mask=muscle, voxel_size_mm=VOX, min_focal_volume_mm3=1.0)
    assert classify_lymph_node(img, **kw).classification == "suspicious"
    r = classify_lymph_node(img, exclude_boundary_mm=VOX[0], **kw)
    assert r.classification == "benign"
    assert r.n_excluded_boundary == int(layer.sum())
