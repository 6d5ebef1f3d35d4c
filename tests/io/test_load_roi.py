"""load_roi: masks from NIfTI, NRRD (LPS -> RAS+) and DICOM SEG, written here with real tools."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from oncomri.core import GeometryError, ReadError, ValidationError, Volume
from oncomri.io.dicom_export import write_segmentation
from oncomri.io.masks import load_roi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_sources import grid_affine, write_mr_series  # noqa: E402


def _world(affine, ijk):
    return (np.asarray(affine) @ np.r_[np.asarray(ijk, float), 1.0])[:3]


def _save_nifti(path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


AFF = np.array([[0.8, 0, 0, -10.0],
                [0, 0.8, 0, 5.0],
                [0, 0, 2.5, 30.0],
                [0, 0, 0, 1]])


# ----------------------------------------------------------------------------- NIfTI


def test_nifti_binary_uint8_becomes_bool_with_its_affine(tmp_path):
    data = np.zeros((6, 5, 4), np.uint8)
    data[2, 3, 1] = 1
    mask, affine = load_roi(_save_nifti(tmp_path / "m.nii.gz", data, AFF))
    assert mask.dtype == np.bool_
    assert mask.shape == (6, 5, 4)
    assert np.argwhere(mask).tolist() == [[2, 3, 1]]
    np.testing.assert_allclose(affine, AFF)


def test_nifti_label_image_keeps_labels_and_dtype(tmp_path):
    data = np.zeros((6, 5, 4), np.int16)
    data[1, 1, 1] = 2
    data[4, 2, 3] = 5
    mask, _ = load_roi(_save_nifti(tmp_path / "lab.nii", data, AFF))
    assert mask.dtype == np.int16
    assert sorted(np.unique(mask).tolist()) == [0, 2, 5]
    assert mask[4, 2, 3] == 5


def test_nifti_float_labels_become_int32_and_nan_is_background(tmp_path):
    data = np.zeros((4, 4, 3), np.float32)
    data[0, 0, 0] = 3.0
    data[1, 1, 1] = np.nan
    mask, _ = load_roi(_save_nifti(tmp_path / "f.nii.gz", data, AFF))
    assert mask.dtype == np.int32
    assert mask[0, 0, 0] == 3 and mask[1, 1, 1] == 0
    data[0, 0, 0] = 1.0  # only 0/1 (and NaN) -> bool
    mask, _ = load_roi(_save_nifti(tmp_path / "g.nii.gz", data, AFF))
    assert mask.dtype == np.bool_ and mask.sum() == 1


def test_nifti_4d_with_one_volume_is_3d_and_several_volumes_fail(tmp_path):
    data = np.zeros((4, 4, 3, 1), np.uint8)
    data[1, 2, 0, 0] = 1
    mask, _ = load_roi(_save_nifti(tmp_path / "one.nii.gz", data, AFF))
    assert mask.shape == (4, 4, 3)
    with pytest.raises(ValidationError, match="several volumes"):
        load_roi(_save_nifti(tmp_path / "two.nii.gz", np.zeros((4, 4, 3, 2), np.uint8), AFF))


@pytest.mark.parametrize("value, match", [(0.5, "non-integer"), (-1.0, "negative")])
def test_nifti_probabilistic_or_negative_values_fail(tmp_path, value, match):
    data = np.zeros((4, 4, 3), np.float32)
    data[1, 1, 1] = value
    with pytest.raises(ValidationError, match=match):
        load_roi(_save_nifti(tmp_path / "p.nii.gz", data, AFF))


def test_unreadable_missing_and_unknown_files_raise_read_error(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti file at all")
    with pytest.raises(ReadError, match="broken.nii.gz"):
        load_roi(bad)
    with pytest.raises(ReadError, match="not found"):
        load_roi(tmp_path / "missing.nii.gz")
    other = tmp_path / "mask.txt"
    other.write_text("1 0 1")
    with pytest.raises(ReadError, match="unknown mask format"):
        load_roi(other)
    bad_nrrd = tmp_path / "broken.nrrd"
    bad_nrrd.write_bytes(b"NRRD0004\ntype: garbage\n\n")
    with pytest.raises(ReadError, match="broken.nrrd"):
        load_roi(bad_nrrd)


# ----------------------------------------------------------------------------- NRRD


def test_nrrd_slicer_lps_label_map_gets_the_ras_affine(tmp_path):
    # 3D Slicer writes label maps as NRRD in LPS space. Axial slices of a
    # RAS-oriented volume have space directions (-sx,0,0) (0,-sy,0) (0,0,sz).
    arr_zyx = np.zeros((4, 5, 6), np.uint8)  # SimpleITK array order [z, y, x]
    arr_zyx[1, 2, 3] = 7  # voxel (i, j, k) = (3, 2, 1)
    arr_zyx[2, 2, 3] = 1
    img = sitk.GetImageFromArray(arr_zyx)
    img.SetSpacing((0.5, 0.6, 2.0))
    img.SetOrigin((10.0, 20.0, -5.0))  # LPS mm
    img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    path = tmp_path / "tumour-label.nrrd"
    sitk.WriteImage(img, str(path))
    assert b"left-posterior-superior" in path.read_bytes()[:400]

    mask, affine = load_roi(path)
    assert mask.shape == (6, 5, 4)  # (x, y, z)
    assert mask.dtype == np.uint8 and mask[3, 2, 1] == 7 and mask[3, 2, 2] == 1
    # LPS of voxel (3, 2, 1): origin + D diag(s) ijk = (10 - 1.5, 20 - 1.2, -5 + 2)
    # = (8.5, 18.8, -3); RAS negates x and y: (-8.5, -18.8, -3).
    np.testing.assert_allclose(_world(affine, (3, 2, 1)), [-8.5, -18.8, -3.0], atol=1e-9)
    # so the affine is diag(0.5, 0.6, 2) with origin (-10, -20, -5) in RAS
    np.testing.assert_allclose(affine, [[0.5, 0, 0, -10], [0, 0.6, 0, -20],
                                        [0, 0, 2, -5], [0, 0, 0, 1]], atol=1e-12)


def test_nrrd_oblique_direction_matches_simpleitk_physical_points(tmp_path):
    c, s = np.cos(np.radians(25)), np.sin(np.radians(25))
    direction = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.diag([1, 1, 1.0])
    arr = np.zeros((3, 4, 5), np.uint8)
    arr[2, 1, 4] = 1
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 0.9, 3.0))
    img.SetOrigin((-4.0, 6.0, 12.0))
    img.SetDirection(tuple(direction.ravel()))
    path = tmp_path / "oblique.nrrd"
    sitk.WriteImage(img, str(path))
    mask, affine = load_roi(path)
    lps = np.asarray(img.TransformIndexToPhysicalPoint((4, 1, 2)))
    assert mask[4, 1, 2]
    np.testing.assert_allclose(_world(affine, (4, 1, 2)), lps * [-1, -1, 1], atol=1e-9)


def test_nrrd_written_in_ras_space_is_read_correctly(tmp_path):
    # A header naming right-anterior-superior space: ITK converts it to LPS and
    # we back to RAS, so the affine is the header's directions and origin.
    header = (b"NRRD0004\ntype: unsigned char\ndimension: 3\n"
              b"space: right-anterior-superior\nsizes: 3 2 2\n"
              b"space directions: (0.5,0,0) (0,0.75,0) (0,0,2)\n"
              b"kinds: domain domain domain\nencoding: raw\nspace origin: (1,2,3)\n\n")
    data = np.zeros((2, 2, 3), np.uint8)  # file order: x fastest
    data[1, 1, 2] = 1  # voxel (2, 1, 1)
    path = tmp_path / "ras.nrrd"
    path.write_bytes(header + data.tobytes())
    mask, affine = load_roi(path)
    assert np.argwhere(mask).tolist() == [[2, 1, 1]]
    np.testing.assert_allclose(affine, [[0.5, 0, 0, 1], [0, 0.75, 0, 2], [0, 0, 2, 3],
                                        [0, 0, 0, 1]], atol=1e-12)


def test_nrrd_in_lps_orientation_lands_exactly_on_the_nifti_grid_with_like(tmp_path):
    rng = np.random.default_rng(3)
    labels = (rng.random((6, 5, 4)) > 0.7).astype(np.uint8) * 3
    _save_nifti(tmp_path / "ref.nii.gz", labels, AFF)
    # the same grid stored LPS-style: x and y reversed in the array
    lps_aff = np.diag([-1.0, -1.0, 1.0, 1.0]) @ AFF @ np.array(
        [[-1, 0, 0, 5], [0, -1, 0, 4], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    flipped = labels[::-1, ::-1, :]
    img = sitk.GetImageFromArray(np.ascontiguousarray(flipped.transpose(2, 1, 0)))
    img.SetSpacing(tuple(np.sqrt((lps_aff[:3, :3] ** 2).sum(0))))
    img.SetDirection(tuple((lps_aff[:3, :3] / np.sqrt((lps_aff[:3, :3] ** 2).sum(0))).ravel()))
    img.SetOrigin(tuple(lps_aff[:3, 3]))
    sitk.WriteImage(img, str(tmp_path / "lps.nrrd"))

    like = Volume(np.zeros((6, 5, 4), np.float32), AFF)
    raw, raw_aff = load_roi(tmp_path / "lps.nrrd")
    assert np.array_equal(raw, flipped)  # without like: the file's own grid
    mask, affine = load_roi(tmp_path / "lps.nrrd", like=like)
    assert np.array_equal(mask, labels)
    np.testing.assert_allclose(affine, AFF)
    ref, _ = load_roi(tmp_path / "ref.nii.gz", like=like)
    assert np.array_equal(mask, ref)


def test_multi_layer_segmentation_nrrd_raises_read_error(tmp_path):
    header = (b"NRRD0004\ntype: unsigned char\ndimension: 4\n"
              b"space: left-posterior-superior\nsizes: 2 3 2 2\n"
              b"space directions: none (1,0,0) (0,1,0) (0,0,1)\n"
              b"kinds: list domain domain domain\nencoding: raw\nspace origin: (0,0,0)\n\n")
    path = tmp_path / "layers.seg.nrrd"
    path.write_bytes(header + np.zeros(24, np.uint8).tobytes())
    with pytest.raises(ReadError, match="2 values per voxel"):
        load_roi(path)


# ----------------------------------------------------------------------------- like


def test_like_on_another_grid_returns_the_mask_unchanged(tmp_path):
    data = np.zeros((6, 5, 4), np.uint8)
    data[2, 2, 2] = 1
    path = _save_nifti(tmp_path / "m.nii.gz", data, AFF)
    coarse = Volume(np.zeros((3, 3, 2)), np.diag([1.6, 1.6, 5.0, 1.0]))
    mask, affine = load_roi(path, like=coarse)
    assert mask.shape == (6, 5, 4)
    np.testing.assert_allclose(affine, AFF)
    shifted = AFF.copy()
    shifted[0, 3] += 0.4  # half a voxel: not an exact re-gridding
    mask, affine = load_roi(path, like=Volume(np.zeros((6, 5, 4)), shifted))
    np.testing.assert_allclose(affine, AFF)


def test_like_that_would_crop_mask_voxels_returns_the_mask_unchanged(tmp_path):
    data = np.zeros((6, 5, 4), np.uint8)
    data[5, 4, 3] = 1  # last voxel
    path = _save_nifti(tmp_path / "m.nii.gz", data, AFF)
    smaller = Volume(np.zeros((5, 5, 4)), AFF)  # same grid, one column less
    mask, affine = load_roi(path, like=smaller)
    assert mask.shape == (6, 5, 4)
    data[5, 4, 3] = 0
    data[1, 1, 1] = 1
    path = _save_nifti(tmp_path / "n.nii.gz", data, AFF)
    mask, affine = load_roi(path, like=smaller)  # nothing lost: cropped onto like
    assert mask.shape == (5, 5, 4) and mask[1, 1, 1]


def test_like_must_be_a_volume(tmp_path):
    path = _save_nifti(tmp_path / "m.nii.gz", np.ones((2, 2, 2), np.uint8), AFF)
    with pytest.raises(ValidationError, match="like must be a Volume"):
        load_roi(path, like=np.zeros((2, 2, 2)))


# ----------------------------------------------------------------------------- DICOM SEG


@pytest.fixture(scope="module")
def mr_series(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mr")
    paths = write_mr_series(folder, columns=16, rows=12, slices=4)
    datasets = [pydicom.dcmread(p) for p in paths]
    return datasets, grid_affine(datasets)


def test_dicom_seg_becomes_a_label_image_in_ras(tmp_path, mr_series):
    datasets, src_aff = mr_series
    labels = np.zeros((16, 12, 4), np.uint8)
    labels[3:6, 4:7, 1:3] = 1
    labels[10:12, 2:4, 2] = 2
    path = write_segmentation(tmp_path / "seg.dcm", labels, source_datasets=datasets,
                              labels=["tumour", "necrosis"])
    mask, affine = load_roi(path)
    # the SEG only holds frames for slices 1 and 2
    assert mask.shape == (16, 12, 2)
    assert sorted(np.unique(mask).tolist()) == [0, 1, 2]
    assert mask.sum() == labels.sum()
    # every voxel sits at the world position of the source voxel with the same label
    idx = np.argwhere(mask)
    world = (affine @ np.c_[idx, np.ones(len(idx))].T)[:3]
    src_idx = np.linalg.solve(src_aff, np.r_[world, np.ones((1, len(idx)))])[:3].T
    np.testing.assert_allclose(src_idx, np.round(src_idx), atol=1e-4)
    src_idx = np.round(src_idx).astype(int)
    assert np.array_equal(labels[tuple(src_idx.T)], mask[tuple(idx.T)])


def test_dicom_seg_with_like_is_back_on_the_source_grid(tmp_path, mr_series):
    datasets, src_aff = mr_series
    labels = np.zeros((16, 12, 4), np.uint8)
    labels[3:6, 4:7, 1:3] = 1
    labels[10:12, 2:4, 2] = 2
    path = write_segmentation(tmp_path / "seg.dcm", labels, source_datasets=datasets,
                              labels=["tumour", "necrosis"])
    like = Volume(np.zeros((16, 12, 4), np.float32), src_aff)
    mask, affine = load_roi(path, like=like)
    assert np.array_equal(mask, labels)
    np.testing.assert_allclose(affine, src_aff)


def test_dicom_seg_with_one_segment_is_bool(tmp_path, mr_series):
    datasets, src_aff = mr_series
    tumour = np.zeros((16, 12, 4), bool)
    tumour[5:9, 3:8, 0:4] = True
    path = write_segmentation(tmp_path / "one.dcm", tumour, source_datasets=datasets,
                              labels=["tumour"])
    mask, affine = load_roi(path, like=Volume(np.zeros((16, 12, 4)), src_aff))
    assert mask.dtype == np.bool_
    assert np.array_equal(mask, tumour)


@pytest.mark.parametrize("slices", [(2,), (0, 3)], ids=["one slice", "slices with a gap"])
def test_dicom_seg_of_one_slice_or_with_gaps_goes_back_onto_the_series(tmp_path, mr_series,
                                                                        slices):
    datasets, src_aff = mr_series
    tumour = np.zeros((16, 12, 4), bool)
    for k in slices:
        tumour[3:6, 4:7, k] = True
    path = write_segmentation(tmp_path / "part.dcm", tumour, source_datasets=datasets,
                              labels=["tumour"])
    own, own_aff = load_roi(path)
    assert own.shape == (16, 12, max(slices) - min(slices) + 1)
    mask, affine = load_roi(path, like=Volume(np.zeros((16, 12, 4)), src_aff))
    assert np.array_equal(mask, tumour)
    np.testing.assert_allclose(affine, src_aff)


def test_dicom_seg_with_overlapping_segments_raises_read_error(tmp_path, mr_series):
    datasets, _ = mr_series
    stack = np.zeros((16, 12, 4, 2), bool)
    stack[3:6, 4:7, 1, 0] = True
    stack[4:8, 4:7, 1, 1] = True  # overlaps segment 1
    path = write_segmentation(tmp_path / "overlap.dcm", stack, source_datasets=datasets,
                              labels=["tumour", "necrosis"])
    with pytest.raises(ReadError, match="overlap"):
        load_roi(path)


def test_dicom_image_that_is_not_a_seg_raises_read_error(tmp_path, mr_series):
    datasets, _ = mr_series
    path = tmp_path / "IM0001"  # no suffix: recognised by the DICM preamble
    datasets[0].save_as(path, enforce_file_format=True)
    with pytest.raises(ReadError, match="not a DICOM Segmentation"):
        load_roi(path)


def test_geometry_error_is_never_raised_for_a_grid_mismatch(tmp_path):
    data = np.zeros((6, 5, 4), np.uint8)
    data[1, 1, 1] = 1
    path = _save_nifti(tmp_path / "m.nii.gz", data, AFF)
    far = Volume(np.zeros((6, 5, 4)), np.diag([3.0, 3.0, 3.0, 1.0]) @ np.eye(4))
    try:
        load_roi(path, like=far)
    except GeometryError:  # pragma: no cover - the failure this test guards against
        pytest.fail("load_roi must return a mask on another grid as is")
