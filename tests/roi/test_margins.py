"""Ablative margin: hand-computed tiny masks and synthetic spheres with known margins."""

import json

import numpy as np
import pytest

from oncomri.core.errors import GeometryError, ValidationError
from oncomri.roi.margins import AM_CRITERION_MM, ablative_margin


def _ball(shape, centre, radius_mm, voxel_size_mm):
    grid = np.indices(shape, dtype=float)
    d2 = sum(((grid[i] - centre[i]) * voxel_size_mm[i]) ** 2 for i in range(3))
    return d2 <= radius_mm ** 2


def _bar_case():
    """A 3-voxel tumour bar x = 3..5 at (y, z) = (4, 4) in a 9^3 grid; zone: cube 1..7."""
    tumour = np.zeros((9, 9, 9), bool)
    tumour[3:6, 4, 4] = True
    zone = np.zeros_like(tumour)
    zone[1:8, 1:8, 1:8] = True
    return tumour, zone


def test_hand_computed_bar_isotropic():
    tumour, zone = _bar_case()
    r = ablative_margin(tumour, voxel_size_mm=1.0, ablation_mask=zone, criterion_mm=2.0)
    # voxel (3,4,4): nearest voxel outside the zone is (0,4,4), 3 mm centre to centre, minus
    # one voxel = 2 mm (rim voxels x = 1, 2: two voxels thick). Same for (5,4,4) -> (8,4,4).
    # voxel (4,4,4): nearest outside is 4 mm away along y or z -> 3 mm.
    assert r.min_margin_mm == pytest.approx(2.0)
    assert r.margin_class == "AM(+)"
    assert r.coverage_fraction == pytest.approx(1.0)
    assert r.n_surface_voxels == 3
    assert r.thinnest_tumour_voxel in ((3, 4, 4), (5, 4, 4))
    assert r.thinnest_boundary_voxel in ((0, 4, 4), (8, 4, 4))
    assert r.tumour_volume_mm3 == 3.0 and r.ablation_volume_mm3 == 343.0
    assert r.protruding_volume_mm3 == 0.0
    m = r.surface_margin_mm
    assert m[4, 4, 4] == pytest.approx(3.0) and np.isnan(m[0, 0, 0])
    # criterion 2.5: only the middle voxel passes. Exposed faces: end voxels 5 each,
    # middle voxel 4 (all 1 mm^2) -> coverage 4 / 14
    r = ablative_margin(tumour, voxel_size_mm=1.0, ablation_mask=zone, criterion_mm=2.5)
    assert r.margin_class == "AM(0)"
    assert r.coverage_fraction == pytest.approx(4 / 14)
    d = r.as_dict()
    json.dumps(d, allow_nan=False)
    assert d["margin_class"] == "AM(0)" and "surface_margin_mm" not in d


def test_hand_computed_bar_anisotropic():
    tumour, zone = _bar_case()
    vs = (1.0, 0.5, 2.0)
    r = ablative_margin(tumour, voxel_size_mm=vs, ablation_mask=zone, criterion_mm=1.0)
    # middle voxel (4,4,4): along y 4 voxels * 0.5 = 2 mm minus 0.5 = 1.5 mm (rim 3 * 0.5)
    # end voxels: along x 3 mm - 1 = 2 mm; along y 2 - 0.5 = 1.5 mm -> 1.5 mm
    assert r.min_margin_mm == pytest.approx(1.5)
    assert r.margin_class == "AM(+)"
    assert r.surface_margin_mm[4, 4, 4] == pytest.approx(1.5)
    # criterion 1.6: nothing passes -> coverage 0, AM(0)
    r = ablative_margin(tumour, voxel_size_mm=vs, ablation_mask=zone, criterion_mm=1.6)
    assert r.margin_class == "AM(0)" and r.coverage_fraction == 0.0


def test_face_area_weighted_coverage_fraction():
    """End voxels fail, the middle passes: coverage = middle's exposed area / total area."""
    tumour, zone = _bar_case()
    vs = (1.0, 1.0, 3.0)
    r = ablative_margin(tumour, voxel_size_mm=vs, ablation_mask=zone, criterion_mm=2.5)
    # end voxels: x margin 3 - 1 = 2 mm (fail); middle: y 4 - 1 = 3 mm, z 12 - 3 = 9 -> 3 (pass)
    # face areas: x faces 1*3 = 3, y faces 1*3 = 3, z faces 1*1 = 1 (mm^2)
    # end voxel: one x face + 2 y + 2 z = 3 + 6 + 2 = 11; middle: 2 y + 2 z = 8
    assert r.surface_margin_mm[4, 4, 4] == pytest.approx(3.0)
    assert r.coverage_fraction == pytest.approx(8 / 30)


def test_hand_computed_touching_and_crossing():
    tumour, zone = _bar_case()
    zone[1:3] = False  # zone x = 3..7: tumour voxel (3,4,4) touches the outside voxel (2,4,4)
    r = ablative_margin(tumour, voxel_size_mm=1.0, ablation_mask=zone)
    assert r.margin_class == "AM(0)"
    assert r.min_margin_mm == pytest.approx(0.0)  # 1 mm centre to centre minus 1 voxel
    assert r.thinnest_tumour_voxel == (3, 4, 4) and r.thinnest_boundary_voxel == (2, 4, 4)
    zone[3] = False  # zone x = 4..7: tumour voxel (3,4,4) lies outside -> protrudes 1 mm
    r = ablative_margin(tumour, voxel_size_mm=1.0, ablation_mask=zone)
    assert r.margin_class == "AM(-)"
    assert r.min_margin_mm == pytest.approx(-1.0)
    assert r.protruding_volume_mm3 == 1.0
    assert r.thinnest_tumour_voxel == (3, 4, 4) and r.thinnest_boundary_voxel == (4, 4, 4)


def test_image_border_counts_as_outside():
    tumour = np.zeros((5, 5, 5), bool)
    tumour[2, 2, 2] = True
    zone = np.ones_like(tumour)  # the zone fills the image: the border is 3 voxels away
    r = ablative_margin(tumour, voxel_size_mm=1.0, ablation_mask=zone)
    assert r.min_margin_mm == pytest.approx(2.0)  # to padding voxel -1 or 5: 3 mm - 1 voxel
    assert -1 in r.thinnest_boundary_voxel or 5 in r.thinnest_boundary_voxel


def test_holes_in_the_ablation_mask_are_filled():
    tumour, zone = _bar_case()
    shell = zone.copy()
    shell[2:7, 2:7, 2:7] = False  # only the outer one-voxel shell of the zone
    r = ablative_margin(tumour, voxel_size_mm=1.0, ablation_mask=shell)
    assert r.margin_class == "AM(+)" and r.min_margin_mm == pytest.approx(2.0)
    assert r.ablation_volume_mm3 == 343.0


def test_world_coordinates_of_thinnest_point():
    tumour, zone = _bar_case()
    zone[1:3] = False
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (10.0, 20.0, 30.0)
    r = ablative_margin(tumour, voxel_size_mm=1.0, ablation_mask=zone, affine=affine)
    assert r.thinnest_tumour_world_mm == pytest.approx((13.0, 24.0, 34.0))
    assert r.thinnest_boundary_world_mm == pytest.approx((12.0, 24.0, 34.0))


VOXELS = [(1.0, 1.0, 1.0), (0.5, 0.5, 2.0), (0.7, 0.7, 1.5)]


def _spheres(vox, shift_mm, r_tumour=5.0, r_zone=9.0, extent_mm=32.0):
    shape = tuple(int(round(extent_mm / v)) for v in vox)
    c = np.array(shape) / 2.0 - 0.3  # off the voxel grid
    tumour = _ball(shape, c, r_tumour, vox)
    zone = _ball(shape, c + np.array([shift_mm / vox[0], 0.0, 0.0]), r_zone, vox)
    return tumour, zone


@pytest.mark.parametrize("vox", VOXELS)
def test_concentric_spheres_am_plus(vox):
    tumour, zone = _spheres(vox, 0.0)
    truth = 9.0 - 5.0
    r = ablative_margin(tumour, voxel_size_mm=vox, ablation_mask=zone, criterion_mm=2.0)
    assert r.margin_class == "AM(+)"
    assert abs(r.min_margin_mm - truth) <= max(vox)  # within one voxel
    assert r.min_margin_mm <= truth + 0.25 * min(vox)  # and on the safe side
    assert r.coverage_fraction == 1.0
    # the same from the rim alone (the zone minus the tumour)
    r2 = ablative_margin(tumour, voxel_size_mm=vox, rim_mask=zone & ~tumour)
    assert r2.margin_class == "AM(+)" and r2.min_margin_mm == pytest.approx(r.min_margin_mm)
    # and with both masks
    r3 = ablative_margin(tumour, voxel_size_mm=vox, ablation_mask=zone,
                         rim_mask=zone & ~tumour)
    assert r3.ablation_source == "ablation_mask+rim_mask"
    assert r3.min_margin_mm == pytest.approx(r.min_margin_mm)


def test_isotropic_margin_within_one_voxel():
    tumour, zone = _spheres((1.0, 1.0, 1.0), 0.0, r_tumour=6.0, r_zone=9.5)
    r = ablative_margin(tumour, voxel_size_mm=1.0, ablation_mask=zone)
    assert 3.5 - 1.0 <= r.min_margin_mm <= 3.5


@pytest.mark.parametrize("vox", VOXELS)
def test_off_centre_zone_touching_am_zero(vox):
    # zone shifted 3.6 mm: the thinnest margin is 9 - 3.6 - 5 = 0.4 mm, and every tumour
    # voxel centre is within 5 + 3.6 = 8.6 < 9 mm of the zone centre: not crossed
    tumour, zone = _spheres(vox, 3.6)
    r = ablative_margin(tumour, voxel_size_mm=vox, ablation_mask=zone)
    assert r.margin_class == "AM(0)"
    assert 0.0 <= r.min_margin_mm <= 1.0
    assert 0.0 < r.coverage_fraction < 1.0
    assert r.protruding_volume_mm3 == 0.0
    # the thinnest point is on the side away from the shift (-x)
    assert r.thinnest_tumour_voxel[0] < np.argwhere(tumour)[:, 0].mean()


@pytest.mark.parametrize("vox", VOXELS)
def test_tumour_crossing_boundary_am_minus(vox):
    # zone shifted 6 mm: the tumour sticks out 5 + 6 - 9 = 2 mm on the -x side
    tumour, zone = _spheres(vox, 6.0)
    r = ablative_margin(tumour, voxel_size_mm=vox, ablation_mask=zone)
    assert r.margin_class == "AM(-)"
    assert abs(r.min_margin_mm - (-2.0)) <= max(vox)
    assert r.protruding_volume_mm3 > 0
    # from the rim alone the protrusion is still found (beyond the rim's convex hull)
    r2 = ablative_margin(tumour, voxel_size_mm=vox, rim_mask=zone & ~tumour)
    assert r2.margin_class == "AM(-)"


def test_rim_gap_without_and_with_protrusion():
    vox = (1.0, 1.0, 1.0)
    shape = (32, 32, 32)
    c = np.array([15.7, 15.7, 15.7])
    tumour = _ball(shape, c, 5.0, vox)
    rim = _ball(shape, c, 9.0, vox) & ~tumour
    x, y, z = np.indices(shape)
    tube = (x > c[0] + 3) & (np.abs(y - c[1]) < 2) & (np.abs(z - c[2]) < 2)
    rim_gap = rim & ~tube
    # a gap in the rim next to the tumour, nothing sticks out: AM(0), margin 0 at the gap
    r = ablative_margin(tumour, voxel_size_mm=vox, rim_mask=rim_gap)
    assert r.margin_class == "AM(0)"
    assert r.min_margin_mm == pytest.approx(0.0)
    assert r.thinnest_tumour_voxel[0] > c[0] + 4
    # the tumour grows out through the gap to 10.5 mm, beyond the rim (9 mm): AM(-)
    bud = tube & (x < c[0] + 10.5)
    r = ablative_margin(tumour | bud, voxel_size_mm=vox, rim_mask=rim_gap)
    assert r.margin_class == "AM(-)" and r.min_margin_mm < 0
    # the same tumour inside a larger ablation zone (12 mm): no protrusion; the bud tip voxel
    # (26, 14, 14) is 2 mm from the first voxel outside, (28, 14, 14): margin 2 - 1 = 1 mm
    r = ablative_margin(tumour | bud, voxel_size_mm=vox, ablation_mask=_ball(shape, c, 12.0, vox))
    assert r.margin_class == "AM(0)" and r.protruding_volume_mm3 == 0.0
    assert r.min_margin_mm == pytest.approx(1.0)
    assert r.thinnest_tumour_voxel == (26, 14, 14) and r.thinnest_boundary_voxel == (28, 14, 14)


def test_single_slice_is_analysed_in_2d():
    tumour = np.zeros((11, 11, 1), bool)
    tumour[4:7, 4:7, 0] = True
    zone = np.zeros_like(tumour)
    zone[1:10, 1:10, 0] = True
    # in-plane rim 3 voxels: tumour edge x = 4, first outside voxel x = 0 -> 4 mm - 1 = 3 mm
    for kwargs in (dict(ablation_mask=zone), dict(rim_mask=zone & ~tumour)):
        r = ablative_margin(tumour, voxel_size_mm=(1.0, 1.0, 5.0), **kwargs)
        assert r.margin_class == "AM(+)" and r.min_margin_mm == pytest.approx(3.0)
        assert r.coverage_fraction == 1.0
        assert r.thinnest_tumour_voxel[2] == 0
    # edges: 12 unit edges of the 3x3 square, the 4 corner voxels expose 2 edges each (8),
    # the 4 edge-middle voxels 1 each (4); corners have margin 3, edge-middles 3 too
    r = ablative_margin(tumour, voxel_size_mm=(1.0, 1.0, 5.0), ablation_mask=zone,
                        criterion_mm=3.5)
    assert r.margin_class == "AM(0)" and r.coverage_fraction == 0.0


def test_default_criterion_is_2mm():
    assert AM_CRITERION_MM == 2.0
    tumour, zone = _bar_case()
    assert ablative_margin(tumour, voxel_size_mm=1.0, ablation_mask=zone).criterion_mm == 2.0


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(ablation_mask=None), ValidationError, "give ablation_mask"),
    (dict(criterion_mm=-1.0), ValidationError, "criterion_mm must be >= 0"),
    (dict(voxel_size_mm=(1.0, 0.0, 1.0)), ValidationError, "voxel_size_mm"),
    (dict(ablation_mask=np.zeros((9, 9, 9), bool)), ValidationError, "ablation_mask is empty"),
    (dict(ablation_mask=np.ones((9, 9, 8), bool)), GeometryError, "ablation_mask has shape"),
    (dict(rim_mask=np.ones((9, 9, 8), bool)), GeometryError, "rim_mask has shape"),
    (dict(affine=np.eye(4) * 2), GeometryError, "disagrees"),
])
def test_errors(kwargs, err, match):
    tumour, zone = _bar_case()
    args = dict(voxel_size_mm=1.0, ablation_mask=zone)
    args.update(kwargs)
    with pytest.raises(err, match=match):
        ablative_margin(tumour, **args)


def test_tumour_errors():
    _, zone = _bar_case()
    with pytest.raises(ValidationError, match="tumour_mask is empty"):
        ablative_margin(np.zeros_like(zone), voxel_size_mm=1.0, ablation_mask=zone)
    with pytest.raises(ValidationError, match="3-D"):
        ablative_margin(np.ones((3, 3), bool), voxel_size_mm=1.0, ablation_mask=np.ones((3, 3)))


def test_degenerate_rim_does_not_crash():
    tumour = np.zeros((9, 9, 9), bool)
    tumour[4, 4, 4] = True
    rim = np.zeros_like(tumour)
    rim[3, 3, 3] = rim[5, 5, 5] = True  # two voxels on a diagonal: no hull
    r = ablative_margin(tumour, voxel_size_mm=1.0, rim_mask=rim)
    assert r.margin_class == "AM(-)"  # the rim encloses nothing: the tumour is outside
    rim[3, 3, 4] = True  # three points in a tilted plane: joggled flat hull
    r = ablative_margin(tumour, voxel_size_mm=1.0, rim_mask=rim)
    assert r.margin_class in ("AM(-)", "AM(0)")
