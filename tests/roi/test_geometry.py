"""tumour_volume and longest_axial_diameter on hand-made shapes of known size."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from oncomri.core import GeometryError, ValidationError
from oncomri.roi.geometry import axial_axis, longest_axial_diameter, tumour_volume


def _ellipse_mask(shape_xy, voxel_mm, a_mm, b_mm, angle_deg=0.0, centre_mm=None, n_slices=3):
    """Voxels whose centre lies in the ellipse (semi-axes a, b mm, long axis at angle)."""
    nx, ny = shape_xy
    x = np.arange(nx) * voxel_mm[0]
    y = np.arange(ny) * voxel_mm[1]
    if centre_mm is None:
        centre_mm = (x[-1] / 2 + 0.013, y[-1] / 2 - 0.021)  # off the voxel grid
    X, Y = np.meshgrid(x - centre_mm[0], y - centre_mm[1], indexing="ij")
    t = math.radians(angle_deg)
    u = X * math.cos(t) + Y * math.sin(t)
    v = -X * math.sin(t) + Y * math.cos(t)
    plane = (u / a_mm) ** 2 + (v / b_mm) ** 2 <= 1.0
    return np.repeat(plane[:, :, None], n_slices, axis=2)


def _affine(voxel_mm):
    return np.diag([*voxel_mm, 1.0])


# ----------------------------------------------------------------------------- volume


def test_tumour_volume_by_hand():
    mask = np.zeros((5, 5, 5), bool)
    mask[1:3, 1:4, 0:4] = True  # 2 x 3 x 4 = 24 voxels
    # voxel 0.5 x 0.5 x 2 mm = 0.5 mm3 -> 12 mm3
    assert tumour_volume(mask, voxel_size_mm=(0.5, 0.5, 2.0)) == pytest.approx(12.0)
    labels = mask.astype(np.uint8) * 2
    labels[4, 4, 4] = 1
    assert tumour_volume(labels, voxel_size_mm=(1, 1, 1), label=1) == pytest.approx(1.0)
    assert tumour_volume(labels, voxel_size_mm=(1, 1, 1)) == pytest.approx(25.0)


def test_tumour_volume_of_a_sphere_is_close_to_4_3_pi_r3():
    n, r = 41, 15.0
    x, y, z = np.indices((n, n, n)) - 20
    sphere = x ** 2 + y ** 2 + z ** 2 <= r ** 2
    vol = tumour_volume(sphere, voxel_size_mm=(0.4, 0.4, 0.4))
    assert vol == pytest.approx(4 / 3 * math.pi * (r * 0.4) ** 3, rel=0.01)


def test_empty_mask_volume_needs_allow_empty():
    with pytest.raises(ValidationError, match="allow_empty=True"):
        tumour_volume(np.zeros((3, 3, 3), bool), voxel_size_mm=(1, 1, 1))
    assert tumour_volume(np.zeros((3, 3, 3), bool), voxel_size_mm=(1, 1, 1),
                         allow_empty=True) == 0.0
    with pytest.raises(ValidationError, match="voxel_size_mm"):
        tumour_volume(np.ones((3, 3, 3), bool), voxel_size_mm=(1, -1, 1))


# ----------------------------------------------------------------------------- diameters


def test_single_voxel_by_hand_with_anisotropic_pixels():
    # Outline points are the centres of the pixel's 4 sides: (+-0.25, 0) and
    # (0, +-0.4) mm for a 0.5 x 0.8 mm pixel; longest distance 0.8 mm (along y),
    # longest chord perpendicular to it is the x width through the centre, 0.5 mm.
    mask = np.zeros((3, 3, 3), bool)
    mask[1, 1, 1] = True
    d = longest_axial_diameter(mask, _affine((0.5, 0.8, 4.0)))
    assert d.long_axis_mm == pytest.approx(0.8)
    assert d.short_axis_mm == pytest.approx(0.5)
    assert d.slice_index == 1 and d.axial_axis == 2 and d.n_slices == 1


def test_row_of_three_voxels_by_hand():
    # pixels 0, 1, 2 along x (1 mm): outline points (-0.5, 0), (2.5, 0), (i, +-0.5):
    # long axis 3 mm along x; perpendicular chords are 1 mm (between y = -0.5 and 0.5)
    mask = np.zeros((5, 3, 1), bool)
    mask[1:4, 1, 0] = True
    d = longest_axial_diameter(mask, _affine((1, 1, 1)))
    assert d.long_axis_mm == pytest.approx(3.0)
    assert d.short_axis_mm == pytest.approx(1.0)
    np.testing.assert_allclose(sorted(p[0] for p in d.long_axis_endpoints_mm), [0.5, 3.5])


def test_disc_diameter_within_one_voxel():
    r_mm, vox = 10.0, 0.5
    mask = _ellipse_mask((50, 50), (vox, vox), r_mm, r_mm)
    d = longest_axial_diameter(mask, _affine((vox, vox, 2.0)))
    assert abs(d.long_axis_mm - 2 * r_mm) <= vox
    assert abs(d.short_axis_mm - 2 * r_mm) <= vox
    assert d.short_axis_mm <= d.long_axis_mm


@pytest.mark.parametrize("angle", [0.0, 30.0, 90.0, 135.0])
def test_ellipse_with_anisotropic_voxels_within_one_voxel(angle):
    vox = (0.5, 0.8, 3.0)
    a, b = 12.0, 5.0  # semi-axes in mm -> diameters 24 and 10 mm
    mask = _ellipse_mask((70, 45), vox[:2], a, b, angle_deg=angle)
    d = longest_axial_diameter(mask, _affine(vox))
    assert abs(d.long_axis_mm - 2 * a) <= max(vox[:2])
    assert abs(d.short_axis_mm - 2 * b) <= max(vox[:2])
    # the long axis points along the ellipse's major axis; the digital ellipse
    # ends in a flat run of pixels, so the diameter may join opposite corners
    # of the runs (a few degrees off)
    p, q = (np.asarray(e) for e in d.long_axis_endpoints_mm)
    direction = math.degrees(math.atan2(q[1] - p[1], q[0] - p[0])) % 180
    assert min(abs(direction - angle % 180), 180 - abs(direction - angle % 180)) < 8
    # the short axis is perpendicular to it
    s, t = (np.asarray(e) for e in d.short_axis_endpoints_mm)
    assert abs(np.dot(q - p, t - s)) < 1e-6 * d.long_axis_mm * d.short_axis_mm


def test_longest_slice_is_chosen_and_short_axis_maximum_is_reported():
    vox = (1.0, 1.0, 5.0)
    mask = np.zeros((40, 40, 3), bool)
    mask[:, :, 0] = _ellipse_mask((40, 40), vox[:2], 6, 6, n_slices=1)[:, :, 0]  # 12 x 12
    mask[:, :, 1] = _ellipse_mask((40, 40), vox[:2], 15, 4, n_slices=1)[:, :, 0]  # 30 x 8
    mask[:, :, 2] = _ellipse_mask((40, 40), vox[:2], 3, 3, n_slices=1)[:, :, 0]
    d = longest_axial_diameter(mask, _affine(vox))
    assert d.slice_index == 1 and d.n_slices == 3
    assert abs(d.long_axis_mm - 30) <= 1 and abs(d.short_axis_mm - 8) <= 1
    assert d.max_short_axis_slice == 0 and abs(d.max_short_axis_mm - 12) <= 1


def test_axial_axis_follows_the_affine_not_the_array_order():
    vox = (0.5, 0.8, 3.0)
    axial = _ellipse_mask((70, 45), vox[:2], 12, 5, angle_deg=30)
    ref = longest_axial_diameter(axial, _affine(vox))
    # store the same object with the S axis as voxel axis 0: array (z, x, y)
    stored = np.transpose(axial, (2, 0, 1))
    aff = np.zeros((4, 4))
    aff[0, 1] = vox[0]  # voxel axis 1 -> R
    aff[1, 2] = vox[1]  # voxel axis 2 -> A
    aff[2, 0] = vox[2]  # voxel axis 0 -> S
    aff[3, 3] = 1
    d = longest_axial_diameter(stored, aff)
    assert d.axial_axis == 0
    assert d.long_axis_mm == pytest.approx(ref.long_axis_mm)
    assert d.short_axis_mm == pytest.approx(ref.short_axis_mm)


def test_obliquity_of_a_tilted_acquisition():
    t = math.radians(20)
    rot = np.array([[1, 0, 0], [0, math.cos(t), -math.sin(t)], [0, math.sin(t), math.cos(t)]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([1.0, 1.0, 2.0])
    axis, obliquity = axial_axis(aff)
    assert axis == 2 and obliquity == pytest.approx(20.0)
    # distances within the tilted slice plane are unchanged by the rotation
    mask = _ellipse_mask((40, 40), (1, 1), 10, 4, angle_deg=0, n_slices=2)
    tilted = longest_axial_diameter(mask, aff)
    straight = longest_axial_diameter(mask, np.diag([1.0, 1.0, 2.0, 1.0]))
    assert tilted.long_axis_mm == pytest.approx(straight.long_axis_mm)
    assert tilted.short_axis_mm == pytest.approx(straight.short_axis_mm)
    assert tilted.obliquity_deg == pytest.approx(20.0)


def test_empty_mask_and_bad_affine():
    with pytest.raises(ValidationError, match="allow_empty=True"):
        longest_axial_diameter(np.zeros((4, 4, 4), bool), np.eye(4))
    d = longest_axial_diameter(np.zeros((4, 4, 4), bool), np.eye(4), allow_empty=True)
    assert d.long_axis_mm == 0 and d.short_axis_mm == 0 and d.n_slices == 0
    with pytest.raises(GeometryError, match="singular"):
        longest_axial_diameter(np.ones((2, 2, 2), bool), np.zeros((4, 4)))
    with pytest.raises(ValidationError, match="label"):
        longest_axial_diameter(np.ones((2, 2, 2), np.uint8), np.eye(4), label=0)


def test_as_dict_is_json():
    mask = _ellipse_mask((30, 30), (1, 1), 8, 4)
    d = longest_axial_diameter(mask.astype(np.uint8) * 3, np.eye(4), label=3).as_dict()
    out = json.loads(json.dumps(d, allow_nan=False))
    assert set(out) >= {"long_axis_mm", "short_axis_mm", "slice_index", "method"}
    assert len(out["long_axis_endpoints_mm"]) == 2 and len(out["long_axis_endpoints_mm"][0]) == 3
