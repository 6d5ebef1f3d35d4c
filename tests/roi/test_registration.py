"""Tests of oncomri.roi.registration: geometry conversions, resampling, registration, quality.

The phantom: an anatomy-like image of smooth-edged ellipsoids (body, organ,
tumour, a bright structure) defined analytically in world coordinates (RAS+
mm), sampled on a 48×48×24 grid of 0.5×0.5×1 mm voxels (the fixed, baseline
image) and, through a KNOWN transform, on a second grid whose axes are
permuted and flipped (the moving, later image), with mild Gaussian noise.
Because both images sample the same analytic anatomy, the truth is exact.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("SimpleITK")
import SimpleITK as sitk  # noqa: E402

from oncomri.core.errors import GeometryError, ValidationError  # noqa: E402
from oncomri.roi.registration import (  # noqa: E402
    Registration,
    affine_to_sitk_geometry,
    apply_to_image,
    apply_to_mask,
    array_to_sitk,
    dice,
    normalized_mutual_information,
    propagate_mask,
    ras_lps_transform,
    register,
    registration_quality,
    sitk_geometry_to_affine,
    sitk_to_array,
)

# --------------------------------------------------------------------------
# Phantom
# --------------------------------------------------------------------------

FIXED_SHAPE = (48, 48, 24)
FIXED_VOXEL_MM = (0.5, 0.5, 1.0)
# Moving grid: array axis i runs along -x (0.5 mm), j along +z (1 mm), k along +y (0.5 mm).
MOVING_SHAPE = (48, 24, 48)
MOVING_AFFINE = np.array([
    [-0.5, 0.0, 0.0, 11.5],
    [0.0, 0.0, 0.5, -12.0],
    [0.0, 1.0, 0.0, -11.0],
    [0.0, 0.0, 0.0, 1.0],
])
NOISE_SD = 2.0
# (centre mm, radii mm, intensity added) — nested inside the body.
BODY = ((0.0, 0.0, 0.0), (10.5, 9.0, 9.5), 100.0)
ORGAN = ((-4.0, 1.5, 1.0), (4.0, 3.0, 5.0), 60.0)
TUMOUR = ((4.5, -2.5, -1.0), (5.0, 4.5, 5.0), -45.0)
BRIGHT = ((0.0, 5.0, -3.0), (2.0, 2.5, 3.0), 120.0)


def fixed_affine() -> np.ndarray:
    """0.5×0.5×1 mm voxels, grid centred on the world origin."""
    a = np.diag(FIXED_VOXEL_MM + (1.0,))
    a[:3, 3] = -(np.array(FIXED_SHAPE) - 1) / 2 * np.array(FIXED_VOXEL_MM)
    return a


def world(shape, affine) -> np.ndarray:
    """World RAS+ coordinates (mm) of every voxel centre, shape shape + (3,)."""
    idx = np.indices(shape).reshape(3, -1).astype(float)
    return (affine[:3, :3] @ idx + affine[:3, 3:]).T.reshape(tuple(shape) + (3,))


def ellipsoid(x, centre, radii, edge_mm=0.4) -> np.ndarray:
    """Smooth indicator of an ellipsoid: 1 inside, 0 outside, a tanh edge ~edge_mm wide."""
    rn = np.sqrt((((x - np.array(centre)) / np.array(radii)) ** 2).sum(-1))
    return 0.5 * (1.0 - np.tanh((rn - 1.0) * np.mean(radii) / edge_mm))


def anatomy(x) -> np.ndarray:
    return sum(v * ellipsoid(x, c, r) for c, r, v in (BODY, ORGAN, TUMOUR, BRIGHT))


def rotation(axis, degrees) -> np.ndarray:
    """Rodrigues' formula: rotation by ``degrees`` about ``axis``."""
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = math.radians(degrees)
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * k @ k


def transform_points(matrix, x) -> np.ndarray:
    return x @ matrix[:3, :3].T + matrix[:3, 3]


def rotation_error_deg(estimated, true) -> float:
    """Angle of R_est R_true^T (rotation parts via the polar decomposition)."""
    def polar(m):
        u, _, vt = np.linalg.svd(m[:3, :3])
        return u @ vt
    r = polar(estimated) @ polar(true).T
    return math.degrees(math.acos(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0)))


def make_case(true_fixed_to_moving, seed):
    """Fixed and moving images of the same anatomy; x_moving = T x_fixed."""
    rng = np.random.default_rng(seed)
    fa = fixed_affine()
    xf = world(FIXED_SHAPE, fa)
    # A moving voxel at y shows the anatomy found at T^-1 y in the fixed frame.
    xm_in_fixed = transform_points(np.linalg.inv(true_fixed_to_moving), world(MOVING_SHAPE, MOVING_AFFINE))
    fixed = (anatomy(xf) + rng.normal(0, NOISE_SD, FIXED_SHAPE)).astype(np.float32)
    moving = (anatomy(xm_in_fixed) + rng.normal(0, NOISE_SD, MOVING_SHAPE)).astype(np.float32)
    return {
        "T": true_fixed_to_moving, "fa": fa, "xf": xf, "fixed": fixed, "moving": moving,
        "body": ellipsoid(xf, *BODY[:2]) > 0.5,
        "tumour_fixed": ellipsoid(xf, *TUMOUR[:2]) > 0.5,
        "tumour_moving": ellipsoid(xm_in_fixed, *TUMOUR[:2]) > 0.5,
    }


def max_displacement_mm(estimated, true, points) -> float:
    return float(np.linalg.norm(transform_points(estimated, points) - transform_points(true, points),
                                axis=1).max())


# 0.5 voxel of the finest axis (0.5 mm) and 0.5 degree: the required accuracy.
TOL_MM = 0.5 * min(FIXED_VOXEL_MM)
TOL_DEG = 0.5


@pytest.fixture(scope="module")
def rigid_case():
    t = np.eye(4)
    t[:3, :3] = rotation((1.0, 2.0, 2.0), 4.0)  # 4 degrees about an oblique axis
    t[:3, 3] = (1.5, -1.0, 1.2)  # mm
    case = make_case(t, seed=0)
    case["reg"] = register(case["fixed"], case["moving"], fixed_affine=case["fa"],
                           moving_affine=MOVING_AFFINE)  # the defaults: rigid, Mattes, 4/2/1
    return case


@pytest.fixture(scope="module")
def affine_case():
    t = np.eye(4)
    t[:3, :3] = rotation((2.0, -1.0, 1.0), 3.0) @ np.diag([1.04, 0.97, 1.02])
    t[:3, 3] = (-1.0, 0.8, -0.6)
    case = make_case(t, seed=1)
    case["reg"] = register(case["fixed"], case["moving"], fixed_affine=case["fa"],
                           moving_affine=MOVING_AFFINE, transform="affine",
                           shrink_factors=(2, 1), smoothing_sigmas_vox=(1.0, 0.0))
    return case


# --------------------------------------------------------------------------
# RAS+ <-> LPS geometry
# --------------------------------------------------------------------------

def test_axis_aligned_affine_to_sitk_geometry_by_hand():
    # x_ras = diag(0.5, 0.5, 1) (i, j, k) + (10, -20, 5); LPS negates x and y:
    # origin (-10, 20, 5), spacing (0.5, 0.5, 1), direction diag(-1, -1, 1).
    a = np.array([[0.5, 0, 0, 10.0], [0, 0.5, 0, -20.0], [0, 0, 1.0, 5.0], [0, 0, 0, 1]])
    origin, spacing, direction = affine_to_sitk_geometry(a)
    assert origin == (-10.0, 20.0, 5.0)
    assert spacing == (0.5, 0.5, 1.0)
    assert direction == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


PERMUTED = np.array([
    [0.0, 0.0, 2.0, -3.0],   # k runs along +x, 2 mm
    [-1.5, 0.0, 0.0, 4.0],   # i runs along -y, 1.5 mm
    [0.0, 1.0, 0.0, 7.0],    # j runs along +z, 1 mm
    [0.0, 0.0, 0.0, 1.0],
])


def test_permuted_affine_to_sitk_geometry_by_hand():
    # Columns of F A with F = diag(-1, -1, 1): (0, 1.5, 0), (0, 0, 1), (-2, 0, 0);
    # spacing = column norms (1.5, 1, 2); direction columns (0,1,0), (0,0,1), (-1,0,0)
    # i.e. row-major (0, 0, -1, 1, 0, 0, 0, 1, 0); origin F (-3, 4, 7) = (3, -4, 7).
    origin, spacing, direction = affine_to_sitk_geometry(PERMUTED)
    assert origin == (3.0, -4.0, 7.0)
    assert spacing == (1.5, 1.0, 2.0)
    assert direction == (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    np.testing.assert_array_equal(sitk_geometry_to_affine(origin, spacing, direction), PERMUTED)


def test_geometry_round_trips_for_an_oblique_affine():
    a = np.eye(4)
    a[:3, :3] = rotation((0.3, -1.0, 0.7), 23.0) @ np.diag([0.3, 0.45, 2.0])
    a[:3, 3] = (-31.2, 17.5, 4.25)
    back = sitk_geometry_to_affine(*affine_to_sitk_geometry(a))
    np.testing.assert_allclose(back, a, rtol=0, atol=1e-12)
    # A left-handed (flipped) grid round-trips as well.
    flipped = a @ np.diag([1.0, -1.0, 1.0, 1.0])
    np.testing.assert_allclose(sitk_geometry_to_affine(*affine_to_sitk_geometry(flipped)),
                               flipped, rtol=0, atol=1e-12)


def test_array_to_sitk_keeps_index_order_and_world_position():
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    image = array_to_sitk(data, PERMUTED)
    assert image.GetSize() == (2, 3, 4)
    assert image.GetPixel((1, 2, 3)) == data[1, 2, 3] == 23.0
    # RAS of voxel (1, 2, 3): (0,-1.5,0)*1 + (0,0,1)*2 + (2,0,0)*3 + (-3,4,7) = (3, 2.5, 9);
    # ITK reports LPS (-3, -2.5, 9).
    np.testing.assert_allclose(image.TransformIndexToPhysicalPoint((1, 2, 3)), (-3.0, -2.5, 9.0))
    back, affine = sitk_to_array(image)
    np.testing.assert_array_equal(back, data)
    np.testing.assert_array_equal(affine, PERMUTED)


def test_bool_array_becomes_uint8_image():
    image = array_to_sitk(np.ones((4, 4, 4), bool), np.eye(4))
    assert image.GetPixelID() == sitk.sitkUInt8


def test_ras_lps_transform_by_hand():
    # +1 mm towards Right (RAS x) is -1 mm along LPS x (Left).
    shift = np.eye(4)
    shift[0, 3] = 1.0
    expected = np.eye(4)
    expected[0, 3] = -1.0
    np.testing.assert_array_equal(ras_lps_transform(shift), expected)
    # 90 degrees about the R axis: in LPS the y-z block changes sign off the diagonal
    # (F R F keeps entry (r, c) times f_r f_c, f = (-1, -1, 1)).
    rx = np.eye(4)
    rx[1:3, 1:3] = [[0.0, -1.0], [1.0, 0.0]]
    expected = np.eye(4)
    expected[1:3, 1:3] = [[0.0, 1.0], [-1.0, 0.0]]
    np.testing.assert_array_equal(ras_lps_transform(rx), expected)
    # Rotations about S (z) are the same in both conventions; the map is an involution.
    rz = np.eye(4)
    rz[:2, :2] = [[0.0, -1.0], [1.0, 0.0]]
    np.testing.assert_array_equal(ras_lps_transform(rz), rz)
    m = np.arange(16.0).reshape(4, 4)
    m[3] = (0, 0, 0, 1)
    np.testing.assert_array_equal(ras_lps_transform(ras_lps_transform(m)), m)


@pytest.mark.parametrize("bad, message", [
    (np.eye(3), "4x4"),
    (np.diag([1.0, 1.0, 0.0, 1.0]), "singular"),
    (np.array([[1.0, 0.5, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1]]), "shear"),
    (np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 1, 1]]), "last row"),
    (np.full((4, 4), np.nan), "finite"),
])
def test_bad_affines_raise_geometry_error(bad, message):
    with pytest.raises(GeometryError, match=message):
        affine_to_sitk_geometry(bad)


# --------------------------------------------------------------------------
# Resampling by hand
# --------------------------------------------------------------------------

TWO_MM = np.diag([2.0, 2.0, 2.0, 1.0])


def _translation(x_mm=0.0, y_mm=0.0, z_mm=0.0):
    t = np.eye(4)
    t[:3, 3] = (x_mm, y_mm, z_mm)
    return t


def test_apply_to_image_translation_by_hand():
    moving = np.broadcast_to(np.arange(4.0)[:, None, None], (4, 2, 2)).copy()
    # Fixed voxel i sits at x = 2i mm; T moves it to 2i + 2 mm = moving voxel i + 1.
    out = apply_to_image(_translation(2.0), moving, moving_affine=TWO_MM,
                         target_shape=(4, 2, 2), target_affine=TWO_MM)
    np.testing.assert_array_equal(out[:, 0, 0], [1.0, 2.0, 3.0, np.nan])
    # 1 mm is half a voxel: linear interpolation gives the midpoints.
    out = apply_to_image(_translation(1.0), moving, moving_affine=TWO_MM,
                         target_shape=(4, 2, 2), target_affine=TWO_MM)
    np.testing.assert_allclose(out[:, 1, 1], [0.5, 1.5, 2.5, np.nan])
    # nearest neighbour, a fill value of 0, float32 kept, measurements on the last axis
    series = np.stack([moving, 10 * moving], axis=-1).astype(np.float32)
    out = apply_to_image(_translation(2.0), series, moving_affine=TWO_MM, target_shape=(4, 2, 2),
                         target_affine=TWO_MM, interpolation="nearest", fill_value=0.0)
    assert out.shape == (4, 2, 2, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 0, 0, 1], [10.0, 20.0, 30.0, 0.0])


def test_apply_to_image_onto_a_finer_target_grid():
    # Identity transform, moving at 2 mm, target at 1 mm sharing voxel 0: values
    # interpolate half-way between moving voxels.
    moving = np.broadcast_to(np.arange(3.0)[:, None, None], (3, 2, 2)).copy()
    target = np.diag([1.0, 2.0, 2.0, 1.0])
    out = apply_to_image(np.eye(4), moving, moving_affine=TWO_MM, target_shape=(5, 2, 2),
                         target_affine=target)
    np.testing.assert_allclose(out[:, 0, 0], [0.0, 0.5, 1.0, 1.5, 2.0])


def test_propagate_mask_goes_the_other_way_by_hand():
    mask = np.zeros((4, 3, 3), bool)
    mask[1] = True
    # apply_to_mask pulls moving data at T x: fixed voxel i shows moving voxel i + 1.
    pulled = apply_to_mask(_translation(2.0), mask, moving_affine=TWO_MM, target_shape=(4, 3, 3),
                           target_affine=TWO_MM)
    assert pulled.dtype == bool
    np.testing.assert_array_equal(np.flatnonzero(pulled[:, 1, 1]), [0])
    # propagate_mask pulls fixed data at T^-1 x: moving voxel i shows fixed voxel i - 1.
    for method in ("nearest", "linear", "distance"):
        carried = propagate_mask(mask, from_affine=TWO_MM, to_shape=(4, 3, 3), to_affine=TWO_MM,
                                 registration=_translation(2.0), method=method)
        assert carried.dtype == bool
        np.testing.assert_array_equal(np.flatnonzero(carried.any(axis=(1, 2))), [2], err_msg=method)


@pytest.mark.parametrize("method", ["nearest", "linear", "distance"])
def test_identity_resampling_reproduces_labels(method):
    labels = np.zeros((10, 9, 8), np.int16)
    labels[2:6, 2:7, 1:5] = 3
    labels[6:9, 1:4, 4:7] = 7
    out = apply_to_mask(np.eye(4), labels, moving_affine=TWO_MM, target_shape=labels.shape,
                        target_affine=TWO_MM, method=method)
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out, labels)


@pytest.mark.parametrize("method", ["nearest", "linear", "distance"])
def test_rotated_label_map_keeps_only_its_labels(method):
    labels = np.zeros((20, 20, 6), np.uint8)
    labels[3:10, 4:15, 1:5] = 3
    labels[10:17, 4:15, 1:5] = 7
    t = np.eye(4)
    t[:3, :3] = rotation((0, 0, 1), 30.0)
    centre = TWO_MM[:3, :3] @ (np.array(labels.shape) - 1) / 2
    t[:3, 3] = centre - t[:3, :3] @ centre  # rotate about the grid centre
    out = apply_to_mask(t, labels, moving_affine=TWO_MM, target_shape=labels.shape,
                        target_affine=TWO_MM, method=method)
    assert set(np.unique(out)) == {0, 3, 7}
    # a rotation about the centre keeps each label's volume within a few per cent
    for lab in (3, 7):
        assert abs((out == lab).sum() / (labels == lab).sum() - 1) < 0.1


def test_label_mask_validation():
    with pytest.raises(ValidationError, match="integer labels"):
        apply_to_mask(np.eye(4), np.full((4, 4, 4), 0.5), moving_affine=np.eye(4),
                      target_shape=(4, 4, 4), target_affine=np.eye(4))
    with pytest.raises(ValidationError, match="method"):
        propagate_mask(np.ones((4, 4, 4), bool), from_affine=np.eye(4), to_shape=(4, 4, 4),
                       to_affine=np.eye(4), registration=np.eye(4), method="cubic")
    with pytest.raises(ValidationError, match="registration"):
        apply_to_image(np.eye(3), np.ones((4, 4, 4)), moving_affine=np.eye(4),
                       target_shape=(4, 4, 4), target_affine=np.eye(4))
    with pytest.raises(ValidationError, match="target_shape"):
        apply_to_image(np.eye(4), np.ones((4, 4, 4)), moving_affine=np.eye(4),
                       target_shape=(4, 4), target_affine=np.eye(4))
    with pytest.raises(GeometryError, match="to_affine"):
        propagate_mask(np.ones((4, 4, 4), bool), from_affine=np.eye(4), to_shape=(4, 4, 4),
                       to_affine=np.zeros((4, 4)), registration=np.eye(4))


# --------------------------------------------------------------------------
# Dice and normalised mutual information by hand
# --------------------------------------------------------------------------

def test_dice_by_hand():
    a = np.array([1, 1, 0, 0])
    b = np.array([0, 1, 1, 0])
    assert dice(a, b) == 2 * 1 / (2 + 2)  # 0.5
    assert dice(a, a) == 1.0
    assert dice(a, np.zeros(4)) == 0.0
    labels_a = np.array([2, 2, 5, 0])
    labels_b = np.array([2, 5, 5, 5])
    assert dice(labels_a, labels_b, label=5) == 2 * 1 / (1 + 3)  # 0.5
    assert dice(labels_a, labels_b) == 2 * 3 / (3 + 4)  # nonzero = inside: 6/7


def test_dice_errors():
    with pytest.raises(ValidationError, match="both masks are empty"):
        dice(np.zeros(3), np.zeros(3))
    with pytest.raises(GeometryError, match="shapes"):
        dice(np.ones(3), np.ones(4))


def test_normalized_mutual_information_by_hand():
    a = np.array([0.0, 0.0, 1.0, 1.0])
    # identical two-level images: H(A) = H(B) = H(A,B) = ln 2 -> NMI = 2
    assert normalized_mutual_information(a, a, bins=2) == pytest.approx(2.0)
    # independent: H(A,B) = ln 4 = 2 ln 2 -> NMI = 1
    assert normalized_mutual_information(a, np.array([0.0, 1.0, 0.0, 1.0]), bins=2) == pytest.approx(1.0)
    # a = (0,0,0,1), b = (0,0,1,1): joint p = (1/2, 1/4, 1/4) -> H(A,B) = 1.5 ln 2;
    # H(A) = -(3/4 ln 3/4 + 1/4 ln 1/4), H(B) = ln 2.
    h_a = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    expected = (h_a + math.log(2)) / (1.5 * math.log(2))
    got = normalized_mutual_information(np.array([0.0, 0, 0, 1]), np.array([0.0, 0, 1, 1]), bins=2)
    assert got == pytest.approx(expected, rel=1e-12)
    # NaN voxels and the mask are left out
    got = normalized_mutual_information(np.array([0.0, 0, 1, 1, np.nan, 5]), np.array([0.0, 0, 1, 1, 3, 7]),
                                        bins=2, mask=np.array([1, 1, 1, 1, 1, 0], bool))
    assert got == pytest.approx(2.0)


# --------------------------------------------------------------------------
# Registration on the phantom
# --------------------------------------------------------------------------

def test_rigid_registration_recovers_the_known_transform(rigid_case):
    c = rigid_case
    reg = c["reg"]
    points = c["xf"][c["body"]]
    # Starting point: the untransformed grids are far apart (test can fail).
    assert max_displacement_mm(np.eye(4), c["T"], points) > 2.0
    assert max_displacement_mm(reg.fixed_to_moving_ras, c["T"], points) < TOL_MM
    assert rotation_error_deg(reg.fixed_to_moving_ras, c["T"]) < TOL_DEG
    # the estimate is a rotation (no scaling): singular values 1
    np.testing.assert_allclose(np.linalg.svd(reg.fixed_to_moving_ras[:3, :3])[1], 1.0, atol=1e-9)
    assert reg.rotation_deg == pytest.approx(4.0, abs=TOL_DEG)


def test_registration_result_is_consistent_and_serialisable(rigid_case):
    reg = rigid_case["reg"]
    assert isinstance(reg, Registration)
    # The SimpleITK transform (LPS) is the same map as the RAS+ matrix.
    f = np.diag([-1.0, -1.0, 1.0])
    for p in ([0.0, 0.0, 0.0], [5.0, -3.0, 2.0], [-7.5, 4.0, -6.0]):
        via_sitk = f @ np.asarray(reg.transform.TransformPoint(tuple(f @ p)))
        np.testing.assert_allclose(via_sitk, transform_points(reg.fixed_to_moving_ras, np.array(p)),
                                   atol=1e-9)
    np.testing.assert_allclose(reg.moving_to_fixed_ras @ reg.fixed_to_moving_ras, np.eye(4), atol=1e-12)
    assert not reg.fixed_to_moving_ras.flags.writeable
    assert len(reg.iterations_per_level) == 3 and reg.iterations == sum(reg.iterations_per_level) > 0
    assert reg.metric_value < 0  # SimpleITK minimises the negative mutual information
    d = json.loads(json.dumps(reg.as_dict()))
    np.testing.assert_array_equal(np.array(d["fixed_to_moving_ras_mm"]), reg.fixed_to_moving_ras)
    assert d["transform_type"] == "rigid" and d["metric"] == "mattes"
    assert "fixed_to_moving_ras_mm" in d["units"]


def test_registration_rebuilt_from_its_saved_matrix(rigid_case):
    saved = json.loads(json.dumps(rigid_case["reg"].as_dict()))
    rebuilt = Registration.from_matrix(saved["fixed_to_moving_ras_mm"], transform_type="rigid")
    np.testing.assert_array_equal(rebuilt.fixed_to_moving_ras, rigid_case["reg"].fixed_to_moving_ras)
    p = (3.0, -2.0, 5.0)  # LPS
    np.testing.assert_allclose(rebuilt.transform.TransformPoint(p),
                               rigid_case["reg"].transform.TransformPoint(p), atol=1e-9)
    assert rebuilt.as_dict()["final_metric_value"] is None
    # a hand-made translation: +2 mm along R is -2 mm along ITK's L axis
    shift = Registration.from_matrix(_translation(2.0, 0.0, 1.0))
    np.testing.assert_allclose(shift.transform.TransformPoint((0.0, 0.0, 0.0)), (-2.0, 0.0, 1.0))
    with pytest.raises(ValidationError, match="registration"):
        Registration.from_matrix(np.zeros((4, 4)))


def test_propagated_tumour_mask_matches_truth(rigid_case):
    c = rigid_case
    carried = propagate_mask(c["tumour_fixed"], from_affine=c["fa"], to_shape=MOVING_SHAPE,
                             to_affine=MOVING_AFFINE, registration=c["reg"])
    assert carried.dtype == bool
    assert dice(carried, c["tumour_moving"]) >= 0.95
    # without registration the baseline ROI misses much of the tumour
    assert dice(propagate_mask(c["tumour_fixed"], from_affine=c["fa"], to_shape=MOVING_SHAPE,
                               to_affine=MOVING_AFFINE, registration=np.eye(4)),
                c["tumour_moving"]) < 0.8
    # the opposite direction: a tumour drawn on the later image onto the baseline grid
    back = apply_to_mask(c["reg"], c["tumour_moving"], moving_affine=MOVING_AFFINE,
                         target_shape=FIXED_SHAPE, target_affine=c["fa"], method="distance")
    assert dice(back, c["tumour_fixed"]) >= 0.95


def test_moving_image_resampled_onto_the_fixed_grid(rigid_case):
    c = rigid_case
    out = apply_to_image(c["reg"], c["moving"], moving_affine=MOVING_AFFINE,
                         target_shape=FIXED_SHAPE, target_affine=c["fa"])
    assert out.shape == FIXED_SHAPE and out.dtype == np.float32
    body = c["body"] & np.isfinite(out)
    assert body.sum() > 0.95 * c["body"].sum()

    def rms_difference(matrix):
        res = apply_to_image(matrix, c["moving"], moving_affine=MOVING_AFFINE,
                             target_shape=FIXED_SHAPE, target_affine=c["fa"])
        ok = c["body"] & np.isfinite(res)
        return float(np.sqrt(np.mean((res[ok] - c["fixed"][ok]) ** 2)))

    # With the estimate the residual is as small as with the true transform
    # (noise plus interpolation at the edges), and far below the unaligned one.
    truth = rms_difference(c["T"])
    assert rms_difference(c["reg"]) < 1.05 * truth
    assert rms_difference(np.eye(4)) > 3 * truth
    # voxels that map outside the moving field of view are NaN
    assert np.isnan(out).any()


def test_registration_quality(rigid_case):
    c = rigid_case
    kw = dict(fixed_affine=c["fa"], moving_affine=MOVING_AFFINE)
    good = registration_quality(c["reg"], c["fixed"], c["moving"], fixed_mask=c["tumour_fixed"],
                                moving_mask=c["tumour_moving"], **kw)
    bad = registration_quality(np.eye(4), c["fixed"], c["moving"], fixed_mask=c["tumour_fixed"],
                               moving_mask=c["tumour_moving"], **kw)
    assert 1.0 < bad.normalized_mutual_information < good.normalized_mutual_information <= 2.0
    assert good.mutual_information_nats > bad.mutual_information_nats > 0
    carried = propagate_mask(c["tumour_fixed"], from_affine=c["fa"], to_shape=MOVING_SHAPE,
                             to_affine=MOVING_AFFINE, registration=c["reg"])
    assert good.dice == dice(carried, c["tumour_moving"])
    assert good.dice >= 0.95 > bad.dice
    assert 0.5 < good.overlap_fraction <= 1.0
    assert registration_quality(c["reg"], c["fixed"], c["moving"], **kw).dice is None
    d = json.loads(json.dumps(good.as_dict()))
    assert d["units"]["mutual_information_nats"] == "nat"


def test_affine_registration_recovers_small_scaling(affine_case):
    c = affine_case
    reg = c["reg"]
    points = c["xf"][c["body"]]
    assert max_displacement_mm(np.eye(4), c["T"], points) > 1.5
    assert max_displacement_mm(reg.fixed_to_moving_ras, c["T"], points) < TOL_MM
    assert rotation_error_deg(reg.fixed_to_moving_ras, c["T"]) < TOL_DEG
    scales = np.linalg.svd(reg.fixed_to_moving_ras[:3, :3])[1]
    np.testing.assert_allclose(np.sort(scales), [0.97, 1.02, 1.04], atol=0.01)
    # rigid stage then affine stage, two pyramid levels each
    assert reg.transform_type == "affine" and len(reg.iterations_per_level) == 4


def test_registration_is_deterministic_with_correlation_moments_and_mask(rigid_case):
    c = rigid_case
    kw = dict(fixed_affine=c["fa"], moving_affine=MOVING_AFFINE, metric="correlation",
              initialization="moments", fixed_mask=c["body"], shrink_factors=(2, 1),
              smoothing_sigmas_vox=(1.0, 0.0))
    first = register(c["fixed"], c["moving"], **kw)
    second = register(c["fixed"], c["moving"], **kw)
    np.testing.assert_array_equal(first.fixed_to_moving_ras, second.fixed_to_moving_ras)
    assert first.metric_value == second.metric_value
    assert max_displacement_mm(first.fixed_to_moving_ras, c["T"], c["xf"][c["body"]]) < TOL_MM
    assert first.metric_value < -0.9  # negative squared normalised correlation, near -1


# --------------------------------------------------------------------------
# Input errors
# --------------------------------------------------------------------------

def _small_pair():
    x = world((12, 12, 8), np.eye(4))
    img = ellipsoid(x, (6.0, 5.0, 4.0), (4.0, 3.0, 3.0)).astype(np.float32)
    return img, img.copy()


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(fixed_mask=np.ones((12, 12, 7))), GeometryError, "fixed_mask has shape"),
    (dict(moving_mask=np.zeros((12, 12, 8))), ValidationError, "moving_mask is empty"),
    (dict(fixed_affine=np.eye(3)), GeometryError, "fixed_affine"),
    (dict(moving_affine=np.diag([1.0, 1.0, 0.0, 1.0])), GeometryError, "moving_affine is singular"),
    (dict(transform="bspline"), ValidationError, "transform must be one of"),
    (dict(metric="mse"), ValidationError, "metric must be one of"),
    (dict(shrink_factors=(2, 1), smoothing_sigmas_vox=(1.0,)), ValidationError, "same length"),
    (dict(seed=0), ValidationError, "seed"),
    (dict(sampling_percentage=0.0), ValidationError, "sampling_percentage"),
])
def test_register_rejects_bad_options(kwargs, error, message):
    fixed, moving = _small_pair()
    base = dict(fixed_affine=np.eye(4), moving_affine=np.eye(4))
    base.update(kwargs)
    with pytest.raises(error, match=message):
        register(fixed, moving, **base)


@pytest.mark.parametrize("which, data, message", [
    ("fixed", np.zeros((12, 12, 8), np.float32), "fixed is constant"),
    ("moving", np.zeros((0, 12, 8), np.float32), "moving is empty"),
    ("fixed", np.ones((12, 12)), "3D"),
    ("moving", np.full((12, 12, 8), np.nan), "NaN"),
    ("fixed", np.arange(2 * 12 * 8.0).reshape(2, 12, 8), "at least 4 voxels"),
])
def test_register_rejects_bad_images(which, data, message):
    fixed, moving = _small_pair()
    images = {"fixed": fixed, "moving": moving, which: data}
    with pytest.raises(ValidationError, match=message):
        register(images["fixed"], images["moving"], fixed_affine=np.eye(4), moving_affine=np.eye(4))


def test_register_without_overlap_says_so():
    fixed, moving = _small_pair()
    far = np.eye(4)
    far[:3, 3] = 1000.0  # 1 m away and no centring: no sample lands in the moving image
    with pytest.raises(ValidationError, match="overlap"):
        register(fixed, moving, fixed_affine=np.eye(4), moving_affine=far, initialization="identity")


def test_quality_rejects_mismatched_mask():
    fixed, moving = _small_pair()
    with pytest.raises(GeometryError, match="moving_mask has shape"):
        registration_quality(np.eye(4), fixed, moving, fixed_affine=np.eye(4), moving_affine=np.eye(4),
                             fixed_mask=fixed > 0.5, moving_mask=np.ones((3, 3, 3), bool))


def test_sampling_fraction_per_level_by_hand():
    from oncomri.roi.registration import _level_percentages

    # 48x48x24 shrunk by 4, 2, 1: 12*12*6 = 864, 24*24*12 = 6912, 55296 voxels.
    # 25 % of each, capped at 5000 samples: 5000 / 55296 = 0.0904 at full resolution.
    got = _level_percentages((48, 48, 24), (4, 2, 1), 0.25, 5000, 1.0)
    np.testing.assert_allclose(got, [0.25, 0.25, 5000 / 55296])
    # With a mask covering half the image the cap counts voxels inside it: 5000 / 27648.
    got = _level_percentages((48, 48, 24), (4, 2, 1), 0.25, 5000, 0.5)
    np.testing.assert_allclose(got, [0.25, 0.25, 5000 / 27648])
    assert _level_percentages((48, 48, 24), (4, 2, 1), 0.25, None, 1.0) == [0.25, 0.25, 0.25]
