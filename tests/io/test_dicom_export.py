"""DICOM export: Parametric Map, SEG and TID 1500 SR written, validated, read back.

Every object written here is checked with dciodvfy (dicom3tools, a declared
system dependency) and read back with highdicom, and compared voxel for
voxel / value for value with what went in.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

import highdicom as hd
from oncomri.core.errors import GeometryError, OncomriError, ReadError, ValidationError
from oncomri.core.volume import Volume
from oncomri.io.dicom_export import (
    SegmentLabel,
    write_measurement_report,
    write_parametric_map,
    write_segmentation,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_sources import PATIENT_ID, PATIENT_NAME, grid_affine, write_mr_series  # noqa: E402

DCIODVFY = "/usr/bin/dciodvfy"
SHAPE = (16, 12, 4)  # columns, rows, slices
PM_CLASS = "1.2.840.10008.5.1.4.1.1.30"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


# --------------------------------------------------------------------------- helpers


def dciodvfy(path) -> list[str]:
    """Run dciodvfy on ``path``; fail on any 'Error' line, print and return the warnings."""
    exe = DCIODVFY if os.path.exists(DCIODVFY) else shutil.which("dciodvfy")
    if exe is None:
        pytest.fail("dciodvfy (dicom3tools) is not installed; it is a declared system "
                    "dependency — run `make` or `apt-get install dicom3tools`")
    run = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    lines = [ln for ln in (run.stdout + run.stderr).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln]
    warnings_ = [ln for ln in lines if "Warning" in ln]
    print(f"dciodvfy {Path(path).name}:", *lines, sep="\n  ")
    assert not errors, f"dciodvfy reports errors for {path}:\n" + "\n".join(errors)
    return warnings_


def sorted_sources(paths):
    """Source datasets and the sorted slice positions (along the normal), test-side."""
    dss = [pydicom.dcmread(p) for p in paths]
    iop = np.asarray(dss[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    positions = sorted({tuple(round(float(v), 4) for v in d.ImagePositionPatient) for d in dss},
                       key=lambda p: float(np.asarray(p) @ normal))
    return dss, [np.asarray(p) for p in positions]


def slice_index(position, positions) -> int:
    d = [np.abs(np.asarray(position, float) - p).max() for p in positions]
    k = int(np.argmin(d))
    assert d[k] < 1e-3, f"frame position {position} is not a source slice position"
    return k


def frame_position_sets(ds, positions):
    """{slice index: set of source SOP UIDs its frame derives from}."""
    refs = {}
    for item in ds.PerFrameFunctionalGroupsSequence:
        k = slice_index(item.PlanePositionSequence[0].ImagePositionPatient, positions)
        uids = {str(src.ReferencedSOPInstanceUID)
                for der in item.DerivationImageSequence
                for src in der.SourceImageSequence}
        refs.setdefault(k, set()).update(uids)
    return refs


def hd_volume_on_grid(vol, affine_xyz) -> np.ndarray:
    """A highdicom Volume's array in our (X, Y, Z) order, found from the two affines alone."""
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    t = np.linalg.solve(affine_xyz, lps_to_ras @ vol.affine)  # hd index -> our index
    rot = np.round(t[:3, :3]).astype(int)
    np.testing.assert_allclose(t[:3, :3], rot, atol=1e-4)
    perm = [int(np.flatnonzero(rot[a])[0]) for a in range(3)]
    out = np.transpose(np.asarray(vol.array), perm + list(range(3, np.ndim(vol.array))))
    for a in range(3):
        if rot[a, perm[a]] < 0:
            assert round(t[a, 3]) == out.shape[a] - 1
            out = np.flip(out, axis=a)
        else:
            assert round(t[a, 3]) == 0
    assert out.shape[:3] == SHAPE
    return out


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp"))


def known_map() -> np.ndarray:
    """An R2* map (1/s) whose every voxel is distinct: orientation slips change values."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    r2 = (20.0 + 1.5 * x + 7.25 * y + 100.0 * z).astype(np.float32)
    r2[0, 0, 0] = np.nan  # a failed fit
    r2[3, 2, 1] = np.inf  # 1/0 somewhere upstream
    return r2


def label_image() -> np.ndarray:
    lab = np.zeros(SHAPE, dtype=np.uint8)
    lab[2:7, 3:8, 1:3] = 1  # tumour, slices 1-2
    lab[9:13, 1:4, 0:4] = 2  # lymph node, all slices
    lab[3, 4, 1] = 1
    return lab


class FailingDeidentifier:
    """A de-identifier whose output cannot be encoded: the write fails half-way."""

    def deidentify_dataset(self, ds):
        import warnings

        from pydicom.dataelem import DataElement

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pydicom warns about the bad value
            ds.add(DataElement(0x00280010, "US", "not a number"))  # Rows, after patient data
        return ds


class PlainDeidentifier:
    """The smallest de-identifier that keeps the deidentify_dataset(ds) -> ds contract."""

    def deidentify_dataset(self, ds):
        ds.PatientName = "Anonymous^"
        ds.PatientID = "SUBJ-01"
        ds.PatientBirthDate = ""
        return ds


class RaisingDeidentifier:
    def deidentify_dataset(self, ds):
        raise RuntimeError("de-identification service unavailable")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """A two-echo oblique classic MR series (the R2* source): paths, datasets, positions."""
    folder = tmp_path_factory.mktemp("mge")
    paths = write_mr_series(folder, columns=SHAPE[0], rows=SHAPE[1], slices=SHAPE[2],
                            echo_times_ms=(4.0, 9.0))
    dss, positions = sorted_sources(paths)
    return {"folder": folder, "paths": paths, "datasets": dss, "positions": positions}


@pytest.fixture(scope="module")
def single_echo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t2w")
    paths = write_mr_series(folder, columns=SHAPE[0], rows=SHAPE[1], slices=SHAPE[2])
    dss, positions = sorted_sources(paths)
    return {"folder": folder, "paths": paths, "datasets": dss, "positions": positions}


@pytest.fixture(scope="module")
def written(series, tmp_path_factory):
    """PM, SEG and SR of the two-echo series written once, with the inputs they came from."""
    out = tmp_path_factory.mktemp("export")
    r2 = known_map()
    lab = label_image()
    pm_path = write_parametric_map(out / "r2star_pm.dcm", r2, source_datasets=series["paths"],
                                   quantity="R2*", unit="/s")
    seg_path = write_segmentation(out / "roi_seg.dcm", lab, source_datasets=series["datasets"],
                                  labels=["tumour", SegmentLabel("node 1", "lymph node")])
    voxel_mm3 = 0.8 * 0.6 * 1.5
    measurements = {}
    for name, value in (("tumour", 1), ("node 1", 2)):
        inside = r2[(lab == value) & np.isfinite(r2)].astype(np.float64)
        measurements[name] = {
            "mean": float(inside.mean()), "median": float(np.median(inside)),
            "sd": float(inside.std(ddof=1)), "min": float(inside.min()),
            "max": float(inside.max()),
            "volume_mm3": float((lab == value).sum() * voxel_mm3),
            "voxel_count": int((lab == value).sum()),
        }
    sr_path = write_measurement_report(out / "roi_sr.dcm", measurements,
                                       source_datasets=series["datasets"],
                                       segmentation=seg_path, parametric_map=pm_path)
    return {"pm": pm_path, "seg": seg_path, "sr": sr_path, "r2": r2, "labels": lab,
            "measurements": measurements, "out": out}


# --------------------------------------------------------------------------- Parametric Map


def check_pm_against(path, values, src, *, nan_value=0.0):
    ds = pydicom.dcmread(path)
    pm = hd.pm.ParametricMap.from_dataset(ds)
    assert ds.SOPClassUID == PM_CLASS
    assert ds.Rows == SHAPE[1] and ds.Columns == SHAPE[0] and ds.NumberOfFrames == SHAPE[2]
    assert ds.BitsAllocated == 32 and "FloatPixelData" in ds
    rwvm = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    unit = rwvm.MeasurementUnitsCodeSequence[0]
    assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("/s", "UCUM")
    qdef = rwvm.QuantityDefinitionSequence[0].ConceptCodeSequence[0]
    assert (qdef.CodeValue, qdef.CodingSchemeDesignator, qdef.CodeMeaning) == (
        "126395", "DCM", "R2*")
    # Pixel values after the real-world value mapping, back in (X, Y, Z)
    # (get_frames: highdicom 0.28's get_frame needs PixelRepresentation, absent for floats)
    frames = pm.get_frames(list(range(1, ds.NumberOfFrames + 1)),
                           apply_real_world_transform=True)
    got = np.full(SHAPE, np.nan)
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        k = slice_index(item.PlanePositionSequence[0].ImagePositionPatient, src["positions"])
        got[:, :, k] = frames[i].T
    finite = np.isfinite(values)
    np.testing.assert_array_equal(got[finite], values[finite].astype(np.float32))
    np.testing.assert_array_equal(got[~finite], nan_value)
    assert ds.FloatPixelPaddingValue == nan_value
    assert "NaN/inf stored as" in ds.ContentDescription
    # highdicom's own volume, put on our grid through its affine, holds the same map
    src_for_grid = [d for d in src["datasets"] if int(d.get("EchoNumbers", 1)) == 1]
    vol = hd_volume_on_grid(pm.get_volume(), grid_affine(src_for_grid))
    np.testing.assert_array_equal(vol[finite], values[finite].astype(np.float32))
    # References: the source series, every source image, per frame the images at its position
    series_uid = src["datasets"][0].SeriesInstanceUID
    assert [str(s.SeriesInstanceUID) for s in ds.ReferencedSeriesSequence] == [series_uid]
    referenced = {str(i.ReferencedSOPInstanceUID)
                  for s in ds.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence}
    assert referenced == {str(d.SOPInstanceUID) for d in src["datasets"]}
    by_slice = frame_position_sets(ds, src["positions"])
    for k, uids in by_slice.items():
        at_k = {str(d.SOPInstanceUID) for d in src["datasets"]
                if slice_index(d.ImagePositionPatient, src["positions"]) == k}
        assert uids == at_k
    assert ds.FrameOfReferenceUID == src["datasets"][0].FrameOfReferenceUID
    assert ds.StudyInstanceUID == src["datasets"][0].StudyInstanceUID
    return ds


def test_parametric_map_multi_echo_source_valid_and_round_trips(written, series):
    dciodvfy(written["pm"])
    ds = check_pm_against(written["pm"], written["r2"], series)
    assert ds.ContentLabel == "R2STAR"
    assert ds.PatientID == PATIENT_ID  # no de-identifier: patient module copied
    assert ds.SeriesNumber == 1005
    assert not leftovers(written["out"])


def test_parametric_map_single_echo_source_from_folder(single_echo, tmp_path):
    r2 = known_map()
    path = write_parametric_map(tmp_path / "pm.dcm", r2, source_datasets=single_echo["folder"],
                                quantity="R2star", unit="1/s", nan_value=-1.0)
    dciodvfy(path)
    check_pm_against(path, r2, single_echo, nan_value=-1.0)


def test_parametric_map_reorients_a_flipped_grid_with_its_affine(single_echo, tmp_path):
    r2 = known_map()
    affine = grid_affine(single_echo["datasets"])
    # A dcm2niix-like layout: rows flipped and the slice axis reversed
    flip = np.diag([1.0, -1.0, -1.0, 1.0])
    flip[1, 3], flip[2, 3] = SHAPE[1] - 1, SHAPE[2] - 1
    flipped = r2[:, ::-1, ::-1]
    vol = Volume(flipped, affine @ flip)
    path = write_parametric_map(tmp_path / "pm.dcm", vol, source_datasets=single_echo["paths"],
                                quantity="R2*", unit="/s")
    check_pm_against(path, r2, single_echo)
    # Permuted axes (rows first) with an explicit affine
    swap = np.eye(4)[[1, 0, 2, 3]]
    path2 = write_parametric_map(tmp_path / "pm2.dcm", np.transpose(r2, (1, 0, 2)),
                                 affine=affine @ swap, source_datasets=single_echo["paths"],
                                 quantity="R2*", unit="/s")
    check_pm_against(path2, r2, single_echo)
    # A shifted grid is another grid: refused, nothing written
    shifted = affine.copy()
    shifted[:3, 3] += affine[:3, 0] * 2
    with pytest.raises(GeometryError, match="source series"):
        write_parametric_map(tmp_path / "pm3.dcm", r2, affine=shifted,
                             source_datasets=single_echo["paths"], quantity="R2*", unit="/s")
    assert not (tmp_path / "pm3.dcm").exists()


def test_a_map_read_with_the_dicom_reader_lands_on_its_source_pixels(series, tmp_path):
    """oncomri.io.dicom reads a series; its first echo written as a PM equals the source pixels."""
    dicom_reader = pytest.importorskip("oncomri.io.dicom", reason="DICOM reader not present")
    (vol,) = dicom_reader.read_series(series["folder"])
    first_echo = Volume(vol.data[..., 0], vol.affine)
    path = write_parametric_map(tmp_path / "s.dcm", first_echo, source_datasets=series["paths"],
                                quantity="S0", unit="a.u.")
    ds = pydicom.dcmread(path)
    frames = hd.pm.ParametricMap.from_dataset(ds).get_frames(
        list(range(1, ds.NumberOfFrames + 1)), apply_real_world_transform=True)
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        position = item.PlanePositionSequence[0].ImagePositionPatient
        (source,) = [d for d in series["datasets"] if int(d.EchoNumbers) == 1
                     and np.allclose(d.ImagePositionPatient, position, atol=1e-3)]
        np.testing.assert_array_equal(frames[i], source.pixel_array.astype(np.float32))


@pytest.mark.parametrize("quantity, unit, code", [
    ("T2*", "ms", ("113064", "DCM", "ms")),
    ("ADC", "mm2/s", ("113041", "DCM", "mm2/s")),
    ("Ktrans", "/min", ("126312", "DCM", "/min")),
    ("S0", "a.u.", ("S0", "99ONCOMRI", "[arb'U]")),
])
def test_parametric_map_quantities_and_units(single_echo, tmp_path, quantity, unit, code):
    values = np.random.default_rng(3).uniform(0.5, 2.0, SHAPE)
    path = write_parametric_map(tmp_path / "pm.dcm", values, source_datasets=single_echo["paths"],
                                quantity=quantity, unit=unit)
    dciodvfy(path)
    ds = pydicom.dcmread(path)
    rwvm = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    q = rwvm.QuantityDefinitionSequence[0].ConceptCodeSequence[0]
    assert (q.CodeValue, q.CodingSchemeDesignator, rwvm.MeasurementUnitsCodeSequence[0].CodeValue) \
        == code
    assert "FloatPixelPaddingValue" not in ds  # no NaN, no padding declared
    if code[1] == "99ONCOMRI":
        assert ds.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99ONCOMRI"


# --------------------------------------------------------------------------- Segmentation


def test_segmentation_valid_and_round_trips(written, series):
    dciodvfy(written["seg"])
    ds = pydicom.dcmread(written["seg"])
    seg = hd.seg.segread(written["seg"])
    assert ds.SOPClassUID == SEG_CLASS and ds.SegmentationType == "BINARY"
    descs = {int(s.SegmentNumber): s for s in ds.SegmentSequence}
    assert descs[1].SegmentLabel == "tumour" and descs[2].SegmentLabel == "node 1"
    t1 = descs[1].SegmentedPropertyTypeCodeSequence[0]
    c1 = descs[1].SegmentedPropertyCategoryCodeSequence[0]
    assert (t1.CodeValue, t1.CodingSchemeDesignator) == ("108369006", "SCT")
    assert (c1.CodeValue, c1.CodingSchemeDesignator) == ("49755003", "SCT")
    assert descs[2].SegmentedPropertyTypeCodeSequence[0].CodeValue == "59441001"
    assert descs[2].SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    assert all(s.SegmentAlgorithmType == "MANUAL" for s in ds.SegmentSequence)
    # Masks back in (X, Y, Z), frame by frame via each frame's position
    lab = written["labels"]
    got = np.zeros(SHAPE + (2,), dtype=bool)
    frames = seg.get_stored_frames() if hasattr(seg, "get_stored_frames") else seg.pixel_array
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        k = slice_index(item.PlanePositionSequence[0].ImagePositionPatient, series["positions"])
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        got[:, :, k, number - 1] |= np.asarray(frames[i]).T.astype(bool)
    np.testing.assert_array_equal(got[..., 0], lab == 1)
    np.testing.assert_array_equal(got[..., 1], lab == 2)
    # highdicom's own volume, put on our grid through its affine, holds the same masks
    single = [d for d in series["datasets"] if int(d.get("EchoNumbers", 1)) == 1]
    vol = hd_volume_on_grid(seg.get_volume(combine_segments=False), grid_affine(single))
    np.testing.assert_array_equal(vol[..., 0].astype(bool), lab == 1)
    np.testing.assert_array_equal(vol[..., 1].astype(bool), lab == 2)
    # References
    src = series["datasets"]
    assert [str(s.SeriesInstanceUID) for s in ds.ReferencedSeriesSequence] == [
        src[0].SeriesInstanceUID]
    for k, uids in frame_position_sets(ds, series["positions"]).items():
        at_k = {str(d.SOPInstanceUID) for d in src
                if slice_index(d.ImagePositionPatient, series["positions"]) == k}
        assert uids == at_k
    assert ds.FrameOfReferenceUID == src[0].FrameOfReferenceUID


def test_segmentation_reorients_a_flipped_label_volume(single_echo, tmp_path):
    lab = label_image()
    flip = np.diag([-1.0, 1.0, -1.0, 1.0])
    flip[0, 3], flip[2, 3] = SHAPE[0] - 1, SHAPE[2] - 1
    vol = Volume(lab[::-1, :, ::-1], grid_affine(single_echo["datasets"]) @ flip)
    path = write_segmentation(tmp_path / "seg.dcm", vol, source_datasets=single_echo["paths"],
                              labels=["tumour", "lymph node"])
    seg = hd.seg.segread(path)
    got = hd_volume_on_grid(seg.get_volume(combine_segments=True),
                            grid_affine(single_echo["datasets"]))
    np.testing.assert_array_equal(got, lab)


def test_segmentation_from_overlapping_mask_list(single_echo, tmp_path):
    a = np.zeros(SHAPE, bool)
    a[4:10, 4:9, :] = True
    b = np.zeros(SHAPE, bool)
    b[6:12, 2:6, 2:] = True  # overlaps a
    path = write_segmentation(tmp_path / "seg.dcm", [a, b], source_datasets=single_echo["paths"],
                              labels=[{"label": "whole tumour", "type": "tumour"},
                                      "necrosis"])
    dciodvfy(path)
    seg = hd.seg.segread(path)
    ds = pydicom.dcmread(path)
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["whole tumour", "necrosis"]
    assert ds.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "6574001"
    got = np.zeros(SHAPE + (2,), dtype=bool)
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        k = slice_index(item.PlanePositionSequence[0].ImagePositionPatient,
                        single_echo["positions"])
        n = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        got[:, :, k, n - 1] |= np.asarray(seg.get_stored_frame(i + 1)).T.astype(bool)
    np.testing.assert_array_equal(got[..., 0], a)
    np.testing.assert_array_equal(got[..., 1], b)


# --------------------------------------------------------------------------- SR TID 1500


def test_measurement_report_valid_and_round_trips(written, series):
    dciodvfy(written["sr"])
    sr = hd.sr.srread(written["sr"])
    pm = pydicom.dcmread(written["pm"])
    seg = pydicom.dcmread(written["seg"])
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert sorted(str(g.tracking_identifier) for g in groups) == ["node 1", "tumour"]
    seg_numbers = {str(s.SegmentLabel): int(s.SegmentNumber) for s in seg.SegmentSequence}
    seg_tracking = {str(s.SegmentLabel): str(s.TrackingUID) for s in seg.SegmentSequence}
    stat_codes = {"373098007": "mean", "373099004": "median", "386136009": "sd",
                  "255605001": "min", "56851009": "max"}
    for g in groups:
        label = str(g.tracking_identifier)
        expected = written["measurements"][label]
        assert str(g.tracking_uid) == seg_tracking[label]
        ref = g.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert ref.referenced_segment_numbers == [seg_numbers[label]]
        found = {}
        for m in g.get_measurements():
            if m.name.value == "126395":
                assert (m.unit.value, m.unit.scheme_designator) == ("/s", "UCUM")
                stat = stat_codes[m.derivation.value]
                sources = [str(r.referenced_sop_instance_uid) for r in m.referenced_images]
                assert sources == [pm.SOPInstanceUID]  # the PM is the source of measurement
            elif m.name.value == "118565006":
                assert m.unit.value == "mm3"
                assert m.method.value == "126030"
                stat = "volume_mm3"
            elif m.name.value == "NVOXELS":
                assert m.name.scheme_designator == "99ONCOMRI"
                assert m.unit.value == "{voxels}"
                stat = "voxel_count"
            else:
                raise AssertionError(f"unexpected measurement {m.name}")
            found[stat] = m.value
        assert set(found) == set(expected)
        for stat, value in expected.items():
            assert found[stat] == pytest.approx(value, rel=1e-9), stat
    # Evidence: the source series, the SEG and the PM, all in the study
    evidence = {str(s.SeriesInstanceUID): {str(i.ReferencedSOPInstanceUID)
                                            for i in s.ReferencedSOPSequence}
                for st in sr.CurrentRequestedProcedureEvidenceSequence
                for s in st.ReferencedSeriesSequence}
    src = series["datasets"]
    assert evidence[src[0].SeriesInstanceUID] == {str(d.SOPInstanceUID) for d in src}
    assert evidence[seg.SeriesInstanceUID] == {seg.SOPInstanceUID}
    assert evidence[pm.SeriesInstanceUID] == {pm.SOPInstanceUID}
    assert sr.StudyInstanceUID == src[0].StudyInstanceUID
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99ONCOMRI"


def test_measurement_report_by_segment_number_and_datasets(written, series, tmp_path):
    seg = pydicom.dcmread(written["seg"])
    path = write_measurement_report(tmp_path / "sr.dcm", {2: {"volume_mm3": 12.0}},
                                    source_datasets=series["paths"], segmentation=seg,
                                    parametric_map=None, observer_name="Doe^Jane")
    dciodvfy(path)
    sr = hd.sr.srread(path)
    (group,) = sr.content.get_volumetric_roi_measurement_groups()
    assert str(group.tracking_identifier) == "node 1"
    (m,) = group.get_measurements()
    assert m.value == 12.0 and m.unit.value == "mm3"


# --------------------------------------------------------------------------- validation


def test_parametric_map_validation_errors(series, tmp_path):
    src = series["datasets"]
    target = tmp_path / "pm.dcm"
    r2 = known_map()
    cases = [
        (dict(values=r2[:, :, :3]), ValidationError, r"shape \(16, 12, 3\).*\(16, 12, 4\)"),
        (dict(values=np.transpose(r2, (1, 0, 2))), ValidationError, "rows and columns swapped"),
        (dict(values=np.full(SHAPE, np.nan)), ValidationError, "no finite value"),
        (dict(unit="furlong/s"), ValidationError, "unit 'furlong/s' is unknown"),
        (dict(unit="s"), ValidationError, "is a time but R2\\* is a rate"),
        (dict(quantity="R9"), ValidationError, "quantity 'R9' is unknown"),
        (dict(values=r2 > 30), ValidationError, "write_segmentation"),
        (dict(nan_value=float("nan")), ValidationError, "nan_value"),
        (dict(deidentifier=object()), ValidationError, "deidentify_dataset"),
        (dict(source_datasets=[]), ValidationError, "source_datasets is empty"),
        (dict(source_datasets=[tmp_path / "missing.dcm"]), ReadError, "file not found"),
    ]
    for change, error, pattern in cases:
        kwargs = dict(values=r2, source_datasets=src, quantity="R2*", unit="/s")
        kwargs.update(change)
        values = kwargs.pop("values")
        with pytest.raises(error, match=pattern) as info:
            write_parametric_map(target, values, **kwargs)
        assert "\n" not in str(info.value)
        assert not target.exists() and not leftovers(tmp_path)


def test_sources_from_two_series_are_refused(series, single_echo, tmp_path):
    mixed = series["datasets"][:4] + single_echo["datasets"][:4]
    with pytest.raises(ValidationError, match="one series only"):
        write_parametric_map(tmp_path / "pm.dcm", known_map(), source_datasets=mixed,
                             quantity="R2*", unit="/s")
    assert not list(tmp_path.iterdir())


def test_segmentation_validation_errors(series, tmp_path):
    src = series["datasets"]
    target = tmp_path / "seg.dcm"
    lab = label_image()
    empty = lab.copy()
    empty[empty == 2] = 0
    cases = [
        (dict(masks=empty), "'node' hold no voxel|\\['node'\\] hold no voxel"),
        (dict(masks=lab[:, :, :2]), r"shape \(16, 12, 2\)"),
        (dict(labels=["tumour"]), "values 0..2 but labels names 1"),
        (dict(labels=["tumour", "tumour"]), "appear twice"),
        (dict(labels=["tumour", SegmentLabel("x", "gizzard")]), "segment type 'gizzard'"),
        (dict(masks=np.stack([lab == 1], axis=-1)), "holds 1 masks .* labels names 2"),
        (dict(algorithm_type="automatic"), "needs algorithm_name"),
    ]
    for change, pattern in cases:
        kwargs = dict(masks=lab, source_datasets=src, labels=["tumour", "node"])
        kwargs.update(change)
        masks = kwargs.pop("masks")
        with pytest.raises(ValidationError, match=pattern) as info:
            write_segmentation(target, masks, **kwargs)
        assert "\n" not in str(info.value)
        assert not target.exists() and not leftovers(tmp_path)


def test_measurement_report_validation_errors(written, series, tmp_path):
    target = tmp_path / "sr.dcm"
    ok = {"tumour": {"mean": 1.0}}
    cases = [
        (dict(measurements={"liver": {"mean": 1.0}}), ValidationError, "no segment labelled"),
        (dict(measurements={"tumour": {"mode": 1.0}}), ValidationError, "statistic 'mode'"),
        (dict(measurements={"tumour": {"mean": float("nan")}}), ValidationError,
         "not a finite number"),
        (dict(measurements={7: {"mean": 1.0}}), ValidationError, "no segment number 7"),
        (dict(parametric_map=None), ValidationError, "parametric_map is None"),
        (dict(segmentation=written["pm"]), ValidationError, f"expected {SEG_CLASS}"),
        (dict(parametric_map=written["seg"]), ValidationError, f"expected {PM_CLASS}"),
        (dict(segmentation=tmp_path / "nope.dcm"), ReadError, "file not found"),
    ]
    for change, error, pattern in cases:
        kwargs = dict(measurements=ok, source_datasets=series["datasets"],
                      segmentation=written["seg"], parametric_map=written["pm"])
        kwargs.update(change)
        measurements = kwargs.pop("measurements")
        with pytest.raises(error, match=pattern) as info:
            write_measurement_report(target, measurements, **kwargs)
        assert "\n" not in str(info.value)
        assert not target.exists() and not leftovers(tmp_path)


def test_report_refuses_objects_of_another_series(written, single_echo, tmp_path):
    with pytest.raises(ValidationError, match="belongs to study|does not reference"):
        write_measurement_report(tmp_path / "sr.dcm", {"tumour": {"mean": 1.0}},
                                 source_datasets=single_echo["datasets"],
                                 segmentation=written["seg"], parametric_map=written["pm"])
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("deidentifier, error, pattern", [
    (FailingDeidentifier(), ValidationError, "r2star_pm.dcm: the DICOM dataset cannot be encoded"),
    (RaisingDeidentifier(), RuntimeError, "unavailable"),
])
def test_failed_write_leaves_the_old_file_and_no_debris(series, tmp_path, deidentifier, error,
                                                       pattern):
    target = tmp_path / "r2star_pm.dcm"
    target.write_bytes(b"previous export")
    with pytest.raises(error, match=pattern):
        write_parametric_map(target, known_map(), source_datasets=series["datasets"],
                             quantity="R2*", unit="/s", deidentifier=deidentifier)
    assert target.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r2star_pm.dcm"]


@pytest.mark.parametrize("writer", ["pm", "seg", "sr"])
def test_deidentifier_is_applied_to_every_object(written, series, tmp_path, writer):
    common = dict(source_datasets=series["datasets"], deidentifier=PlainDeidentifier())
    if writer == "pm":
        path = write_parametric_map(tmp_path / "x.dcm", written["r2"], quantity="R2*",
                                    unit="/s", **common)
    elif writer == "seg":
        path = write_segmentation(tmp_path / "x.dcm", written["labels"],
                                  labels=["tumour", "node"], **common)
    else:
        path = write_measurement_report(tmp_path / "x.dcm", {"tumour": {"mean": 1.0}},
                                        segmentation=written["seg"],
                                        parametric_map=written["pm"], **common)
    dciodvfy(path)
    ds = pydicom.dcmread(path)
    assert (str(ds.PatientName), ds.PatientID) == ("Anonymous^", "SUBJ-01")
    # the caller's source datasets are left as they were
    assert {(str(d.PatientName), d.PatientID) for d in series["datasets"]} == {
        (PATIENT_NAME, PATIENT_ID)}
    raw = path.read_bytes()
    assert PATIENT_ID.encode() not in raw and PATIENT_NAME.encode() not in raw


SECRET = "oncomri-test-secret-0123456789abcdef"


# deid's pseudonym 'sub-xxxxxxxx' is a one-component person name, which highdicom flags
@pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent the intended person")
def test_deidentified_export_with_oncomri_deidentifier(written, series, tmp_path):
    """PM, SEG and SR written with one Deidentifier: no PHI, references still consistent."""
    from oncomri.io.deid import Deidentifier

    deid = Deidentifier(SECRET, clean_structured_content=True)
    src = series["datasets"]
    pm_path = write_parametric_map(tmp_path / "pm.dcm", written["r2"], source_datasets=src,
                                   quantity="R2*", unit="/s", deidentifier=deid)
    seg_path = write_segmentation(tmp_path / "seg.dcm", written["labels"], source_datasets=src,
                                  labels=["tumour", "node 1"], deidentifier=deid)
    # The de-identified SEG and PM with the original sources: the writer pairs them up
    sr_path = write_measurement_report(tmp_path / "sr.dcm", written["measurements"],
                                       source_datasets=src, segmentation=seg_path,
                                       parametric_map=pm_path, deidentifier=deid)
    pm, seg = pydicom.dcmread(pm_path), pydicom.dcmread(seg_path)
    sr = hd.sr.srread(sr_path)
    clean_source = deid.deidentify_dataset(src[0])
    for path in (pm_path, seg_path, sr_path):
        dciodvfy(path)
        ds = pydicom.dcmread(path)
        assert ds.PatientIdentityRemoved == "YES"
        assert str(ds.PatientName) != PATIENT_NAME and ds.PatientID != PATIENT_ID
        raw = path.read_bytes()
        assert PATIENT_ID.encode() not in raw and PATIENT_NAME.encode() not in raw
        assert src[0].StudyInstanceUID.encode() not in raw
        assert src[0].SeriesInstanceUID.encode() not in raw
        assert ds.StudyInstanceUID == clean_source.StudyInstanceUID
    for ds in (pm, seg):
        assert [s.SeriesInstanceUID for s in ds.ReferencedSeriesSequence] == [
            clean_source.SeriesInstanceUID]
    assert {(str(d.PatientName), d.PatientID) for d in src} == {(PATIENT_NAME, PATIENT_ID)}
    # The report still points at the de-identified SEG segments and PM, values intact
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert sorted(str(g.tracking_identifier) for g in groups) == ["node 1", "tumour"]
    for g in groups:
        assert g.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        means = [m for m in g.get_measurements() if m.derivation is not None
                 and m.derivation.value == "373098007"]
        assert means[0].value == pytest.approx(
            written["measurements"][str(g.tracking_identifier)]["mean"], rel=1e-9)
        assert [str(r.referenced_sop_instance_uid) for r in means[0].referenced_images] == [
            pm.SOPInstanceUID]


def test_deidentifier_that_drops_report_content_is_refused(written, series, tmp_path):
    from oncomri.io.deid import Deidentifier

    target = tmp_path / "sr.dcm"
    with pytest.raises(ValidationError, match="clean_structured_content=True"):
        write_measurement_report(target, written["measurements"],
                                 source_datasets=series["datasets"],
                                 segmentation=written["seg"], parametric_map=written["pm"],
                                 deidentifier=Deidentifier(SECRET))
    assert not list(tmp_path.iterdir())
    # A de-identified SEG with identified sources and no de-identifier: refused too
    seg = write_segmentation(tmp_path / "seg.dcm", written["labels"],
                             source_datasets=series["datasets"], labels=["tumour", "node 1"],
                             deidentifier=Deidentifier(SECRET))
    with pytest.raises(ValidationError, match="pass the deidentifier it was written with"):
        write_measurement_report(target, {"tumour": {"volume_mm3": 1.0}},
                                 source_datasets=series["datasets"], segmentation=seg,
                                 parametric_map=None)
    assert not target.exists()


def test_a_successful_write_replaces_the_old_file(series, tmp_path):
    target = tmp_path / "seg.dcm"
    target.write_bytes(b"previous export")
    write_segmentation(target, label_image(), source_datasets=series["datasets"],
                       labels=["tumour", "node"])
    assert pydicom.dcmread(target).SOPClassUID == SEG_CLASS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.dcm"]


def test_errors_are_oncomri_errors(series, tmp_path):
    with pytest.raises(OncomriError):
        write_parametric_map(tmp_path, known_map(), source_datasets=series["datasets"],
                             quantity="R2*", unit="/s")
