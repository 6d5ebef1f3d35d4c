"""Tests of the DICOM reader on real pydicom test files and on series written by dicom_factory."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

import oncomri.io
from dicom_factory import (
    dicom_geometry,
    example_affine,
    truncate_file,
    write_classic_series,
    write_enhanced_series,
    write_text_sr,
)
from oncomri.core import (
    DiffusionProtocol,
    DynamicProtocol,
    GeometryError,
    InversionRecoveryProtocol,
    MultiEchoProtocol,
    ProtocolError,
    ReadError,
    ValidationError,
    VariableFlipAngleProtocol,
)
from oncomri.io.dicom import read_series, read_source_datasets
from oncomri.sim import relaxometry_phantom

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
MR_SMALL_VARIANTS = [
    "MR_small_RLE.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_implicit.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_padded.dcm",
]
TE = np.array([0.002, 0.0055, 0.009, 0.0125, 0.016])


@pytest.fixture(autouse=True)
def _quiet_pydicom():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


@pytest.fixture(scope="module")
def phantom():
    """A small multi-echo phantom: (16, 12, 5, 5), three T2* compartments, noisy."""
    return relaxometry_phantom(shape=(16, 12, 5), echo_times=TE, values=(0.004, 0.02, 0.05),
                               snr=40.0, rng=3)


def _hand_affine(ds, slice_step=None) -> np.ndarray:
    """voxel (column, row, slice) -> RAS+ from the Image Plane Module values of ``ds``."""
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    dr, dc = (float(v) for v in ds.PixelSpacing)
    normal = np.cross(iop[:3], iop[3:])
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * dc
    lps[:3, 1] = iop[3:] * dr
    lps[:3, 2] = normal * float(ds.SliceThickness) if slice_step is None else slice_step
    lps[:3, 3] = ipp
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


# ------------------------------------------------------------------ real pydicom files


def test_mr_small_geometry_values_and_meta_from_the_header():
    path = TEST_FILES / "MR_small.dcm"
    ds = pydicom.dcmread(path)
    (vol,) = read_series(path)
    assert vol.data.shape == (64, 64, 1) and vol.data.dtype == np.float32
    np.testing.assert_array_equal(vol.data[:, :, 0], ds.pixel_array.T.astype(np.float32))
    np.testing.assert_allclose(vol.affine, _hand_affine(ds), atol=1e-6)
    # the same numbers written out: LPS (-83.9063, -91.2, 6.6406) is RAS (83.9063, 91.2, 6.6406)
    np.testing.assert_allclose(vol.affine[:3, 3], [83.9063, 91.2, 6.6406], atol=1e-6)
    np.testing.assert_allclose(np.diag(vol.affine)[:3], [-0.3125, -0.3125, 0.8], atol=1e-9)
    assert vol.protocol is None
    assert vol.meta["EchoTime"] == pytest.approx(0.24)
    assert vol.meta["RepetitionTime"] == pytest.approx(4.0)
    assert vol.meta["FlipAngle"] == 90.0
    assert vol.meta["Manufacturer"] == "TOSHIBA_MEC"
    assert vol.meta["SeriesNumber"] == 1
    assert vol.meta["SOPInstanceUIDs"] == [ds.SOPInstanceUID]
    assert vol.meta["StudyInstanceUID"] == ds.StudyInstanceUID
    assert vol.meta["PatientID"] == "4MR1"
    assert any("SliceThickness" in n for n in vol.meta["notes"])
    assert vol.sources == (str(path),)


@pytest.mark.parametrize("name", MR_SMALL_VARIANTS)
@pytest.mark.parametrize("fast", [True, False])
def test_mr_small_encodings_decode_to_the_uncompressed_values(name, fast):
    (ref,) = read_series(TEST_FILES / "MR_small.dcm")
    (vol,) = read_series(TEST_FILES / name, fast=fast)
    np.testing.assert_array_equal(vol.data, ref.data)
    np.testing.assert_array_equal(vol.affine, ref.affine)
    expected = pydicom.dcmread(TEST_FILES / "MR_small.dcm").pixel_array.T
    assert float(np.abs(vol.data[:, :, 0] - expected).max()) == 0.0


def test_truncated_real_file_names_the_file():
    with pytest.raises(ReadError, match=r"MR_truncated\.dcm.*truncated"):
        read_series(TEST_FILES / "MR_truncated.dcm")


@pytest.mark.parametrize("name", ["reportsi.dcm", "rtplan.dcm", "test-SR.dcm"])
def test_real_non_image_objects_alone_are_a_read_error(tmp_path, name):
    shutil.copy(TEST_FILES / name, tmp_path / name)
    with pytest.raises(ReadError, match="no images"):
        read_series(tmp_path)


def test_tri_plane_localiser_is_split_into_one_volume_per_orientation(tmp_path):
    folder = TEST_FILES / "dicomdirtests" / "98892003" / "MR2"
    uid = "1.3.6.1.4.1.5962.1.1.0.0.0.1196533885.18148.0.136"
    for f in folder.iterdir():
        if pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID == uid:
            shutil.copy(f, tmp_path / f.name)
    vols = read_series(tmp_path)
    assert len(vols) == 3
    normals = {tuple(np.round(np.cross(v.meta["ImageOrientationPatientDICOM"][:3],
                                        v.meta["ImageOrientationPatientDICOM"][3:]), 3))
               for v in vols}
    assert len(normals) == 3
    assert all(any("3 image stacks" in n for n in v.meta["notes"]) for v in vols)


# ------------------------------------------------------------------ classic multi-echo


def test_classic_multi_echo_round_trip(tmp_path, phantom):
    affine = example_affine((1.1, 0.9, 2.5), oblique=True)
    paths = write_classic_series(tmp_path, phantom.data, affine, echo_times=TE,
                                 rescale_slope=0.25, rescale_intercept=-20.0,
                                 magnetic_field_strength=3.0, series_number=7,
                                 series_description="mge_r2s")
    (vol,) = read_series(tmp_path)
    assert isinstance(vol.protocol, MultiEchoProtocol)
    np.testing.assert_allclose(vol.protocol.echo_times, TE, rtol=0, atol=1e-12)
    assert vol.protocol.magnetic_field_strength == 3.0
    np.testing.assert_allclose(vol.affine, affine, rtol=0, atol=1e-4)
    assert vol.data.shape == phantom.data.shape and vol.data.dtype == np.float32
    assert vol.data.flags.c_contiguous
    assert float(np.abs(vol.data - phantom.data).max()) <= 0.25 / 2 + 1e-4
    assert vol.meta["EchoTime"] == pytest.approx(TE.tolist())
    assert vol.meta["RepetitionTime"] == pytest.approx(0.1)
    assert vol.meta["MagneticFieldStrength"] == 3.0
    assert vol.meta["SeriesNumber"] == 7 and vol.meta["SeriesDescription"] == "mge_r2s"
    assert vol.meta["SpacingBetweenSlices"] == pytest.approx(2.5)
    assert any("RescaleSlope 0.25" in n for n in vol.meta["notes"])
    uids = vol.meta["SOPInstanceUIDs"]
    assert len(uids) == 5 and all(len(row) == 5 for row in uids)
    assert len({u for row in uids for u in row}) == 25
    # sources in slice then echo order, and their datasets match the UIDs in that order
    datasets = read_source_datasets(vol)
    assert len(datasets) == len(paths) == len(vol.sources)
    flat = [u for row in uids for u in row]
    assert [d.SOPInstanceUID for d in datasets] == flat
    assert all(float(d.EchoTime) == pytest.approx(TE[i % 5] * 1e3)
               for i, d in enumerate(datasets))


def test_fast_and_pydicom_paths_agree(tmp_path, phantom):
    affine = example_affine(oblique=True)
    write_classic_series(tmp_path, phantom.data, affine, echo_times=TE, rescale_slope=0.5)
    (a,) = read_series(tmp_path, fast=True)
    (b,) = read_series(tmp_path, fast=False)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.affine, b.affine)
    np.testing.assert_array_equal(a.protocol.echo_times, b.protocol.echo_times)
    assert a.meta == b.meta
    assert a.sources == b.sources


def test_oblique_orientation_matches_the_image_plane_values(tmp_path, phantom):
    affine = example_affine((0.8, 0.7, 3.0), oblique=True, origin=(12.5, -40.0, 33.0))
    geo = dicom_geometry(affine, phantom.data.shape[2])
    write_classic_series(tmp_path, phantom.data[..., :2], affine, echo_times=TE[:2])
    (vol,) = read_series(tmp_path)
    ds = pydicom.dcmread(sorted(tmp_path.iterdir())[0])
    np.testing.assert_allclose([float(v) for v in ds.ImageOrientationPatient],
                               geo["orientation"], atol=1e-9)
    step = geo["positions"][1] - geo["positions"][0]
    np.testing.assert_allclose(vol.affine, _hand_affine(ds, slice_step=step), atol=1e-4)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-4)
    # oblique: every rotation column has components on all three axes
    assert np.count_nonzero(np.abs(vol.affine[:3, :3]) > 1e-3) >= 7


def test_slice_order_reversed_in_files_gives_the_same_volume(tmp_path, phantom):
    affine = example_affine(oblique=True)
    write_classic_series(tmp_path / "a", phantom.data, affine, echo_times=TE)
    write_classic_series(tmp_path / "b", phantom.data, affine, echo_times=TE,
                         reverse_files=True)
    first = pydicom.dcmread(tmp_path / "b" / "IM00001.dcm")
    assert int(first.InstanceNumber) == 1
    (a,) = read_series(tmp_path / "a")
    (b,) = read_series(tmp_path / "b")
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-9)


def test_negative_slice_direction_is_sorted_along_the_normal(tmp_path, phantom):
    affine = example_affine()
    flipped = affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 4], [0, 0, 0, 1.0]])
    write_classic_series(tmp_path, phantom.data[..., ::-1, :], flipped, echo_times=TE)
    (vol,) = read_series(tmp_path)
    # the reader sorts slices along +normal: it returns the unflipped grid
    np.testing.assert_allclose(vol.affine, affine, atol=1e-4)
    assert float(np.abs(vol.data - phantom.data).max()) <= 0.5 + 1e-4


def test_rescale_slope_and_intercept_are_applied(tmp_path):
    data = np.arange(6 * 4 * 3, dtype=np.float32).reshape(6, 4, 3) * 3.0 - 50.0
    paths = write_classic_series(tmp_path, data, example_affine(), rescale_slope=3.0,
                                 rescale_intercept=-50.0)
    ds = pydicom.dcmread(paths[0])
    assert float(ds.RescaleSlope) == 3.0 and float(ds.RescaleIntercept) == -50.0
    stored = ds.pixel_array
    (vol,) = read_series(tmp_path)
    np.testing.assert_array_equal(vol.data[:, :, 0], (stored.T * 3.0 - 50.0).astype(np.float32))
    np.testing.assert_array_equal(vol.data, data)


# ------------------------------------------------------------------ enhanced multi-frame


@pytest.mark.parametrize("order", ["measurement", "slice", "random"])
def test_enhanced_multi_echo_round_trip(tmp_path, phantom, order):
    affine = example_affine((1.2, 1.0, 2.0), oblique=True)
    slopes = [0.5, 0.25, 0.25, 0.125, 0.125]
    path = write_enhanced_series(tmp_path / "emr.dcm", phantom.data, affine, echo_times=TE,
                                 rescale_slope=slopes, frame_order=order, series_number=12)
    (vol,) = read_series(path)
    assert isinstance(vol.protocol, MultiEchoProtocol)
    np.testing.assert_allclose(vol.protocol.echo_times, TE, atol=1e-12)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-4)
    err = np.abs(vol.data - phantom.data).max(axis=(0, 1, 2))
    assert np.all(err <= np.array(slopes) / 2 + 1e-4)
    assert vol.meta["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.4.1"
    frames = np.array(vol.meta["ReferencedFrameNumbers"])
    assert frames.shape == (5, 5) and sorted(frames.ravel().tolist()) == list(range(1, 26))
    assert vol.sources == (str(path),)
    (ds,) = read_source_datasets(vol)
    # frame (slice k, echo m) really is at slice k with echo m
    for k in range(5):
        for m in range(5):
            item = ds.PerFrameFunctionalGroupsSequence[frames[k, m] - 1]
            assert float(item.MREchoSequence[0].EffectiveEchoTime) == pytest.approx(TE[m] * 1e3)
            assert int(item.FrameContentSequence[0].InStackPositionNumber) == k + 1


def test_enhanced_frame_missing_is_an_unequal_count_error(tmp_path, phantom):
    path = write_enhanced_series(tmp_path / "emr.dcm", phantom.data, example_affine(),
                                 echo_times=TE, drop_frames=[(2, 3)])
    with pytest.raises(ProtocolError, match=r"unequal frame counts.*echo time 12\.5 ms has 4"):
        read_series(path)


def test_enhanced_inversion_recovery(tmp_path, phantom):
    ti = [0.05, 0.3, 1.2]
    write_enhanced_series(tmp_path / "ir.dcm", phantom.data[..., :3], example_affine(),
                          inversion_times=ti, repetition_time=5.0, frame_order="random")
    (vol,) = read_series(tmp_path)
    assert isinstance(vol.protocol, InversionRecoveryProtocol)
    np.testing.assert_allclose(vol.protocol.inversion_times, ti)
    assert vol.protocol.repetition_time == pytest.approx(5.0)
    assert vol.meta["InversionTime"] == pytest.approx(ti)


# ------------------------------------------------------------------ other measurement axes


@pytest.mark.parametrize("private", [False, True])
@pytest.mark.parametrize("vendor", ["SIEMENS", "GE MEDICAL SYSTEMS", "Philips Medical Systems"])
def test_diffusion_b_values_standard_and_vendor_tags(tmp_path, phantom, vendor, private):
    b = [0.0, 500.0, 1000.0, 1000.0]
    g = [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]
    write_classic_series(tmp_path, phantom.data[..., :4], example_affine(), b_values=b,
                         b_vectors=g, manufacturer=vendor, standard_b_value=not private)
    (vol,) = read_series(tmp_path)
    assert isinstance(vol.protocol, DiffusionProtocol)
    np.testing.assert_array_equal(vol.protocol.b_values, b)
    if private:
        assert vol.protocol.b_vectors is None
    else:  # LPS directions in the file, RAS+ in the protocol
        np.testing.assert_allclose(vol.protocol.b_vectors,
                                   [[0, 0, 0], [-1, 0, 0], [0, -1, 0], [0, 0, 1]])
    np.testing.assert_allclose(vol.data, phantom.data[..., :4], atol=0.5 + 1e-4)


def test_variable_flip_angles_in_radians(tmp_path, phantom):
    fa = [3.0, 10.0, 25.0]
    write_classic_series(tmp_path, phantom.data[..., [2, 0, 1]], example_affine(),
                         flip_angles=[fa[2], fa[0], fa[1]], repetition_time=0.015)
    (vol,) = read_series(tmp_path)
    assert isinstance(vol.protocol, VariableFlipAngleProtocol)
    np.testing.assert_allclose(vol.protocol.flip_angles, np.deg2rad(fa))
    assert vol.protocol.repetition_time == pytest.approx(0.015)
    assert vol.meta["FlipAngle"] == fa
    # ordered by flip angle: 3 deg was written as the second measurement
    np.testing.assert_allclose(vol.data, phantom.data[..., :3], atol=0.5 + 1e-4)


def test_dynamic_series_times_from_acquisition_time(tmp_path, phantom):
    times = [0.0, 4.5, 9.0, 13.5]
    write_classic_series(tmp_path, phantom.data[..., :4], example_affine(), frame_times=times)
    (vol,) = read_series(tmp_path)
    assert isinstance(vol.protocol, DynamicProtocol)
    np.testing.assert_allclose(vol.protocol.times, times, atol=1e-6)
    assert vol.meta["FrameTimesStart"] == pytest.approx(times)


def test_two_parameters_varying_at_once_is_a_protocol_error(tmp_path, phantom):
    write_classic_series(tmp_path, phantom.data[..., :2], example_affine(), echo_times=TE[:2],
                         series_uid="1.2.3.4.5.6.7")
    write_classic_series(tmp_path, phantom.data[..., :2], example_affine(), flip_angles=[5, 30],
                         series_uid="1.2.3.4.5.6.7", prefix="FA")
    with pytest.raises(ProtocolError, match="differ in echo time and flip angle"):
        read_series(tmp_path)


# ------------------------------------------------------------------ Philips scaling


def test_philips_float_scaling_by_default_and_display_on_request(tmp_path, phantom):
    rs, ri, ss = 2.0, 10.0, 0.25
    write_classic_series(tmp_path, phantom.data, example_affine(), echo_times=TE,
                         rescale_slope=rs, rescale_intercept=ri,
                         manufacturer="Philips Medical Systems", philips_scale_slope=ss)
    (fp,) = read_series(tmp_path)
    (dv,) = read_series(tmp_path, philips_scaling="display")
    np.testing.assert_allclose(dv.data, phantom.data, atol=rs / 2 + 1e-3)
    np.testing.assert_allclose(fp.data, dv.data / (rs * ss), rtol=1e-6, atol=1e-5)
    assert fp.meta["PhilipsScaleSlope"] == pytest.approx(ss)
    assert any("dcm2niix -p y" in n for n in fp.meta["notes"])
    with pytest.raises(ValidationError, match="philips_scaling"):
        read_series(tmp_path, philips_scaling="raw")


# ------------------------------------------------------------------ folders, errors


def test_missing_slice_is_a_geometry_error(tmp_path, phantom):
    write_classic_series(tmp_path, phantom.data, example_affine(), echo_times=TE, drop=[2])
    with pytest.raises(GeometryError, match=r"1 slice\(s\) missing.*gap of 5 mm"):
        read_series(tmp_path)


def test_inconsistent_spacing_is_a_geometry_error(tmp_path, phantom):
    write_classic_series(tmp_path, phantom.data, example_affine(), echo_times=TE,
                         shift_slices={3: 0.8})
    with pytest.raises(GeometryError, match="inconsistent slice spacing"):
        read_series(tmp_path)


def test_one_missing_image_is_an_unequal_frame_count_error(tmp_path, phantom):
    write_classic_series(tmp_path, phantom.data, example_affine(), echo_times=TE, drop=[(1, 4)])
    with pytest.raises(ProtocolError, match=r"echo time 16 ms has 4 images, the others 5"):
        read_series(tmp_path)


def test_near_parallel_orientations_are_a_geometry_error(tmp_path, phantom):
    write_classic_series(tmp_path, phantom.data[..., 0], example_affine(), series_uid="1.2.3.9")
    tilted = example_affine()
    a = np.deg2rad(0.3)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    tilted[:3, :3] = rot @ tilted[:3, :3]
    write_classic_series(tmp_path, phantom.data[..., 0], tilted, series_uid="1.2.3.9",
                         prefix="T")
    with pytest.raises(GeometryError, match="mixed orientations"):
        read_series(tmp_path)


def test_mixed_series_folder_gives_two_volumes_and_load_asks_for_one(tmp_path, phantom):
    write_classic_series(tmp_path, phantom.data, example_affine(), echo_times=TE,
                         series_number=3, series_description="mge", prefix="A")
    write_classic_series(tmp_path, phantom.data[..., 0], example_affine(oblique=True),
                         series_number=5, series_description="t2w", prefix="B")
    vols = read_series(tmp_path)
    assert [v.meta["SeriesNumber"] for v in vols] == [3, 5]
    assert vols[0].data.ndim == 4 and vols[1].data.ndim == 3
    with pytest.raises(ValidationError, match=r"holds 2 series \(3 \(mge\), 5 \(t2w\)\)"):
        oncomri.io.load(tmp_path)
    vol = oncomri.io.load(tmp_path, series=5)
    assert vol.meta["SeriesDescription"] == "t2w"


def test_magnitude_and_phase_in_one_series_are_two_volumes(tmp_path, phantom):
    uid = "1.2.3.4.77"
    write_classic_series(tmp_path, phantom.data, example_affine(), echo_times=TE,
                         series_uid=uid, image_type=("ORIGINAL", "PRIMARY", "M", "ND"))
    write_classic_series(tmp_path, phantom.data * 0.1, example_affine(), echo_times=TE,
                         series_uid=uid, image_type=("ORIGINAL", "PRIMARY", "P", "ND"),
                         prefix="PH")
    vols = read_series(tmp_path)
    assert len(vols) == 2
    assert sorted(v.meta["ImageType"][2] for v in vols) == ["M", "P"]
    assert all(any("2 image stacks" in n for n in v.meta["notes"]) for v in vols)


def test_non_image_objects_are_skipped_with_a_note(tmp_path, phantom):
    paths = write_classic_series(tmp_path, phantom.data, example_affine(), echo_times=TE)
    write_text_sr(tmp_path / "report" / "sr.dcm", [pydicom.dcmread(paths[0])])
    shutil.copy(TEST_FILES / "rtplan.dcm", tmp_path / "rtplan.dcm")
    (tmp_path / "notes.json").write_text("{}")
    (vol,) = read_series(tmp_path)
    notes = " ".join(vol.meta["notes"])
    assert "Comprehensive SR Storage: 1" in notes and "RT Plan Storage: 1" in notes
    assert "not DICOM (notes.json)" in notes
    assert vol.data.shape == phantom.data.shape


def test_folder_of_non_image_objects_only_is_a_read_error(tmp_path, phantom):
    src = write_classic_series(tmp_path / "img", phantom.data[..., 0], example_affine())
    write_text_sr(tmp_path / "sr" / "sr.dcm", [pydicom.dcmread(src[0])])
    with pytest.raises(ReadError, match=r"holds 1 DICOM object\(s\) but no images.*SR"):
        read_series(tmp_path / "sr")


@pytest.mark.parametrize("keep", [0.05, 0.4, 0.97])
def test_truncated_file_is_a_read_error_naming_it(tmp_path, phantom, keep):
    paths = write_classic_series(tmp_path, phantom.data, example_affine(), echo_times=TE)
    bad = truncate_file(paths[7], keep=keep)
    with pytest.raises(ReadError, match=bad.name):
        read_series(tmp_path)
    with pytest.raises(ReadError, match=bad.name):
        read_series(tmp_path, fast=False)


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(ReadError, match="no such file"):
        read_series(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReadError, match="empty"):
        read_series(tmp_path / "empty")


def test_duplicate_copies_are_ignored_with_a_note(tmp_path, phantom):
    paths = write_classic_series(tmp_path / "s", phantom.data, example_affine(), echo_times=TE)
    (tmp_path / "s" / "copy").mkdir()
    shutil.copy(paths[3], tmp_path / "s" / "copy" / "again.dcm")
    (vol,) = read_series(tmp_path / "s")
    assert any("duplicate" in n for n in vol.meta["notes"])
    assert float(np.abs(vol.data - phantom.data).max()) <= 0.5 + 1e-4


def test_errors_skip_leaves_out_the_broken_series(tmp_path, phantom):
    write_classic_series(tmp_path, phantom.data, example_affine(), echo_times=TE,
                         series_number=2, prefix="A")
    write_classic_series(tmp_path, phantom.data, example_affine(), echo_times=TE,
                         series_number=4, prefix="B", drop=[1])
    with pytest.raises(GeometryError):
        read_series(tmp_path)
    (vol,) = read_series(tmp_path, errors="skip")
    assert vol.meta["SeriesNumber"] == 2
    assert any(n.startswith("not read: series 4") for n in vol.meta["notes"])


def test_compressed_classic_series_reads_like_the_uncompressed_one(tmp_path, phantom):
    affine = example_affine(oblique=True)
    write_classic_series(tmp_path / "raw", phantom.data[..., :2], affine, echo_times=TE[:2])
    write_classic_series(tmp_path / "rle", phantom.data[..., :2], affine, echo_times=TE[:2],
                         transfer_syntax=RLELossless)
    (a,) = read_series(tmp_path / "raw")
    (b,) = read_series(tmp_path / "rle")
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.affine, b.affine)


def test_registry_loads_a_dicom_folder(tmp_path, phantom):
    write_classic_series(tmp_path, phantom.data, example_affine(), echo_times=TE)
    assert oncomri.io.find_reader(tmp_path).name == "dicom"
    vol = oncomri.io.load(tmp_path)
    np.testing.assert_allclose(vol.protocol.echo_times, TE)


def test_read_source_datasets_detects_changed_files(tmp_path, phantom):
    paths = write_classic_series(tmp_path / "a", phantom.data[..., 0], example_affine())
    (vol,) = read_series(tmp_path / "a")
    assert len(read_source_datasets(vol, pixels=True)[0].PixelData) > 0
    write_classic_series(tmp_path / "a", phantom.data[..., 0], example_affine())  # new UIDs
    with pytest.raises(ReadError, match="changed"):
        read_source_datasets(vol)
    paths[0].unlink()
    with pytest.raises(ReadError, match="no longer exists"):
        read_source_datasets(vol)


@pytest.mark.parametrize("implicit", [False, True])
def test_fast_scanner_walks_nested_and_private_sequences(tmp_path, phantom, implicit):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ImplicitVRLittleEndian

    paths = write_classic_series(tmp_path, phantom.data[..., :2], example_affine(),
                                 echo_times=TE[:2], rescale_slope=0.5)
    for i, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        inner = Dataset()
        inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "1", "99X", "x"
        ref = Dataset()
        ref.ReferencedSOPClassUID = ds.SOPClassUID
        ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        ref.PurposeOfReferenceCodeSequence = Sequence([inner])
        ds.ReferencedImageSequence = Sequence([ref, ref])
        ds["ReferencedImageSequence"].is_undefined_length = True
        ds.ProcedureCodeSequence = Sequence([inner])  # defined length
        block = ds.private_block(0x0029, "SYNTHETIC PRIVATE", create=True)
        block.add_new(0x01, "SQ", Sequence([inner]))
        block.add_new(0x02, "OB", bytes(range(256)) * (40 + i))  # a long private value
        if implicit:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(p, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    # white box: the element scanner itself reads these headers (no pydicom fallback)
    from oncomri.io.dicom import _scan
    assert all(_scan(p) is not None for p in paths)
    assert b"\xff\xff\xff\xff" in paths[0].read_bytes()  # an undefined length is there
    (fast,) = read_series(tmp_path)
    (slow,) = read_series(tmp_path, fast=False)
    np.testing.assert_array_equal(fast.data, slow.data)
    assert fast.meta == slow.meta
    np.testing.assert_allclose(fast.data, phantom.data[..., :2], atol=0.25 + 1e-4)


def test_siemens_mosaic_is_refused_with_a_hint(tmp_path, phantom):
    write_classic_series(tmp_path, phantom.data[..., 0], example_affine(),
                         image_type=("ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"))
    with pytest.raises(ProtocolError, match="MOSAIC.*dcm2niix"):
        read_series(tmp_path)


def test_enhanced_pixels_by_offset_equal_pydicom_decoding(tmp_path, phantom):
    write_enhanced_series(tmp_path / "emr.dcm", phantom.data, example_affine(oblique=True),
                          echo_times=TE, frame_order="random", rescale_slope=[1, 2, 2, 4, 4])
    (fast,) = read_series(tmp_path)
    (slow,) = read_series(tmp_path, fast=False)
    np.testing.assert_array_equal(fast.data, slow.data)
    assert fast.meta == slow.meta


def test_slice_spacing_comes_from_positions_not_slice_thickness(tmp_path, phantom):
    affine = example_affine((1.0, 1.0, 3.5))
    write_classic_series(tmp_path, phantom.data[..., :2], affine, echo_times=TE[:2],
                         slice_thickness=2.0)
    assert float(pydicom.dcmread(sorted(tmp_path.iterdir())[0]).SliceThickness) == 2.0
    (vol,) = read_series(tmp_path)
    np.testing.assert_allclose(vol.voxel_size, [1.0, 1.0, 3.5], atol=1e-6)
    assert vol.meta["SliceThickness"] == 2.0
    assert vol.meta["SpacingBetweenSlices"] == pytest.approx(3.5)


def test_classic_inversion_recovery(tmp_path, phantom):
    ti = [0.1, 0.4, 1.6]
    write_classic_series(tmp_path, phantom.data[..., :3], example_affine(),
                         inversion_times=ti, repetition_time=6.0, reverse_files=True)
    (vol,) = read_series(tmp_path)
    assert isinstance(vol.protocol, InversionRecoveryProtocol)
    np.testing.assert_allclose(vol.protocol.inversion_times, ti)
    assert vol.protocol.repetition_time == pytest.approx(6.0)
    np.testing.assert_allclose(vol.data, phantom.data[..., :3], atol=0.5 + 1e-4)


def test_legacy_converted_enhanced_mr_from_highdicom_reads_like_its_source(tmp_path, phantom):
    import highdicom as hd
    from pydicom.uid import generate_uid

    paths = write_classic_series(tmp_path / "classic", phantom.data[..., :3],
                                 example_affine(oblique=True), echo_times=TE[:3],
                                 rescale_slope=0.5, reverse_files=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lce = hd.legacy.LegacyConvertedEnhancedMRImage(
            legacy_datasets=[pydicom.dcmread(p) for p in paths],
            series_instance_uid=generate_uid(), series_number=9,
            sop_instance_uid=generate_uid(), instance_number=1)
    (tmp_path / "lce").mkdir()
    lce.save_as(tmp_path / "lce" / "lce.dcm")
    (a,) = read_series(tmp_path / "classic")
    (b,) = read_series(tmp_path / "lce")
    assert b.meta["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.4.4"
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-6)
    np.testing.assert_allclose(b.protocol.echo_times, TE[:3])


# ------------------------------------------------------------------ the factory itself


@pytest.mark.parametrize("kind", ["classic", "echo", "b", "flip", "inversion", "time", "sr"])
def test_factory_objects_pass_dciodvfy(tmp_path, phantom, kind):
    """The synthetic objects are valid IODs (dicom3tools' dciodvfy reports no error)."""
    import subprocess

    dciodvfy = shutil.which("dciodvfy") or "/usr/bin/dciodvfy"
    if not Path(dciodvfy).is_file():
        pytest.fail("dciodvfy (dicom3tools) is not installed; it is a declared system "
                    "dependency of oncomri's tests: apt-get install dicom3tools")
    data, affine = phantom.data[..., :3], example_affine(oblique=True)
    params = {"echo": {"echo_times": TE[:3]}, "b": {"b_values": [0, 500, 1000],
                                                    "b_vectors": [[0, 0, 0], [1, 0, 0],
                                                                  [0, 1, 0]]},
              "flip": {"flip_angles": [3, 10, 20]}, "inversion": {"inversion_times": [0.1, 0.5, 1]},
              "time": {"frame_times": [0, 5, 10]}}
    if kind == "classic":
        path = write_classic_series(tmp_path, data, affine, echo_times=TE[:3])[0]
    elif kind == "sr":
        src = write_classic_series(tmp_path / "img", data[..., 0], affine)
        path = write_text_sr(tmp_path / "sr.dcm", [pydicom.dcmread(src[0])])
    else:
        path = write_enhanced_series(tmp_path / "e.dcm", data, affine, **params[kind])
    proc = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
    errors = [line for line in (proc.stdout + proc.stderr).splitlines()
              if line.startswith("Error")]
    assert not errors, "\n".join(errors[:10])
