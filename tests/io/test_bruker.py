"""Tests of the Bruker ParaVision reader on a real PV5.1 study and on synthetic PV6/PV360 scans.

The real study (../shared/data/bruker_pv51_epi, see MANIFEST.md) is a spin-echo
EPI, 5 slices of 80 x 64, int16, slope in visu_pars; its expected geometry is
worked out by hand below from the numbers in its visu_pars. Multi-echo and the
other frame groups are tested on folders written by ``bruker_factory``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from bruker_factory import (
    ScanSpec,
    Str,
    frame_slope,
    raw_value,
    write_jcamp,
    write_scan,
    write_study,
)

from oncomri.core import (
    DiffusionProtocol,
    DynamicProtocol,
    GeometryError,
    MultiEchoProtocol,
    ReadError,
    ValidationError,
    Volume,
)
from oncomri.io import find_reader, load, load_all
from oncomri.io.bruker import parse_jcamp, read_jcamp, read_series

# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def pv51(request) -> Path:
    shared = request.getfixturevalue("shared_data")
    study = shared / "bruker_pv51_epi"
    if not (study / "1" / "pdata" / "1" / "2dseq").is_file():
        pytest.skip(f"real ParaVision 5.1 study {study} is absent")
    return study


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


def expected_phantom(shape, slope, offset=0.0):
    """The factory's documented values: raw_value * frame_slope + offset on (X, Y, Z, M)."""
    x, y, z, m = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return raw_value(x, y, z, m) * frame_slope(z, m, slope) + offset


def read_one(path, **options) -> Volume:
    vols = read_series(path, **options)
    assert len(vols) == 1
    return vols[0]


# ----------------------------------------------------------------------------- JCAMP-DX


def test_jcamp_scalars_arrays_strings_and_structs():
    text = "\n".join([
        "##TITLE=Parameter List, ParaVision 360 V3.5",
        "##JCAMPDX=4.24",
        "$$ a comment ##$NotARecord=1",
        "##$Int=42",
        "##$Float=-1.5e-3",
        "##$Enum=Head_Prone",
        "##$Text=( 65 )",
        "<a (bracketed), comma text>",
        "##$Wrapped=( 2048 )",
        "<a string that ParaVision wrap",
        "ped inside a word>",
        "##$Matrix=( 2, 3 )",
        "1 2 3 ",
        "4 5 6",
        "##$Runs=( 7 )",
        "1 @4*(0) -1 2.5",
        "##$SameLine=( 3 ) 7 8 9",
        "##$Enums=( 2 )",
        "spatial spatial",
        "##$Units=( 2, 65 )",
        "<mm> <mm>",
        "##$StructScalar=(0, 1)",
        "##$StructArray=( 2 )",
        "(5, <FG_SLICE>, <>, 0, 2) (8, <FG_ECHO>, <T2 fit: y=A*exp(-t/T2)>, 2, 1)",
        "##$Nested=(1.5, (2, <x>), 3 3 3, <a> <b>)",
        "##END=",
    ])
    p = parse_jcamp(text)
    assert p["TITLE"] == "Parameter List, ParaVision 360 V3.5"
    assert "NotARecord" not in p
    assert p["Int"] == 42 and isinstance(p["Int"], int)
    assert p["Float"] == pytest.approx(-1.5e-3)
    assert p["Enum"] == "Head_Prone"
    assert p["Text"] == "a (bracketed), comma text"
    assert p["Wrapped"] == "a string that ParaVision wrapped inside a word"
    np.testing.assert_array_equal(p["Matrix"], [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(p["Runs"], [1, 0, 0, 0, 0, -1, 2.5])
    np.testing.assert_array_equal(p["SameLine"], [7, 8, 9])
    assert p["Enums"] == ["spatial", "spatial"]
    assert p["Units"] == ["mm", "mm"]
    assert p["StructScalar"] == (0, 1)
    assert p["StructArray"] == [(5, "FG_SLICE", "", 0, 2),
                                (8, "FG_ECHO", "T2 fit: y=A*exp(-t/T2)", 2, 1)]
    assert p["Nested"] == (1.5, (2, "x"), [3, 3, 3], ["a", "b"])


def test_jcamp_round_trip_of_the_factory_writer(tmp_path):
    path = write_jcamp(tmp_path / "visu_pars", {
        "VisuCoreSize": [6, 4],
        "VisuCoreDataOffs": np.zeros(12),
        "VisuFGOrderDesc": [(4, Str("FG_ECHO"), Str(""), 0, 1)],
        "VisuSubjectPosition": "Head_Prone",
        "VisuAcquisitionProtocol": Str("MGE (3D)"),
    }, compress=True)
    p = read_jcamp(path)
    np.testing.assert_array_equal(p["VisuCoreSize"], [6, 4])
    np.testing.assert_array_equal(p["VisuCoreDataOffs"], np.zeros(12))
    assert p["VisuFGOrderDesc"] == [(4, "FG_ECHO", "", 0, 1)]
    assert p["VisuSubjectPosition"] == "Head_Prone"
    assert p["VisuAcquisitionProtocol"] == "MGE (3D)"


def test_jcamp_errors_name_the_file(tmp_path):
    bad = tmp_path / "visu_pars"
    bad.write_text("this is not a parameter file\n")
    with pytest.raises(ReadError, match="not a JCAMP-DX parameter file") as exc:
        read_jcamp(bad)
    assert str(bad) in one_line(exc)
    broken = tmp_path / "method"
    broken.write_text("##$A=( 2 )\n(1, <unterminated\n##END=\n")
    with pytest.raises(ReadError, match="record A cannot be parsed"):
        read_jcamp(broken)
    with pytest.raises(ReadError, match="not found"):
        read_jcamp(tmp_path / "missing")


# ----------------------------------------------------------------------------- real PV5.1 study


def test_real_study_reads_three_series(pv51):
    vols = read_series(pv51)
    assert [v.meta["SeriesNumber"] for v in vols] == [1, 2, 3]
    assert all(v.meta["SeriesDescription"] == "EPI-SE-FOVsat" for v in vols)
    assert find_reader(pv51).name == "bruker"


def test_real_scan_geometry_by_hand(pv51):
    vol = read_one(pv51 / "1")
    # visu_pars: VisuCoreSize 80 64, VisuCoreExtent 44 44 (mm), 5 frames (FG_SLICE).
    assert vol.data.shape == (80, 64, 5)
    assert vol.data.dtype == np.float32
    dx, dy = 44 / 80, 44 / 64                       # 0.55, 0.6875 mm
    # VisuCorePosition: (-22, -21.2, -4), (-22, -21.2, -2) ... (-22, -21.2, 4):
    # consecutive slices 2 mm apart along +z (VisuCoreFrameThickness 1.5 + 0.5 gap).
    dz = -2 - (-4)
    # VisuCoreOrientation = identity: X along the patient's left (+x of the Visu/DICOM
    # LPS frame), Y along posterior, slices towards the head. RAS+ negates x and y.
    x0, y0, z0 = -22.0, -21.2, -4.0                 # first voxel centre, LPS mm
    expected = np.array([
        [-dx, 0.0, 0.0, -x0],
        [0.0, -dy, 0.0, -y0],
        [0.0, 0.0, dz, z0],
        [0.0, 0.0, 0.0, 1.0],
    ])
    np.testing.assert_allclose(vol.affine, expected, atol=1e-9)
    np.testing.assert_allclose(vol.voxel_size, [0.55, 0.6875, 2.0])
    # The voxel at the centre of the read FOV (index 40 of 80) is at the isocentre in x.
    centre = vol.affine @ np.array([40, 32, 2, 1.0])
    np.testing.assert_allclose(centre[:3], [0.0, -0.8, 0.0], atol=1e-9)
    assert vol.meta["SliceThickness"] == pytest.approx(1.5)
    assert vol.meta["SpacingBetweenSlices"] == pytest.approx(2.0)
    assert not any("slice normal" in n for n in vol.meta["notes"])   # consistent geometry


def test_real_scan_slope_is_applied(pv51):
    vol = read_one(pv51 / "1")
    raw = np.fromfile(pv51 / "1" / "pdata" / "1" / "2dseq", dtype="<i2").reshape(5, 64, 80)
    slope = 11.0270188718677                        # VisuCoreDataSlope, offset 0
    for x, y, z in [(40, 32, 2), (0, 0, 0), (79, 63, 4), (13, 50, 1)]:
        assert vol.data[x, y, z] == pytest.approx(raw[z, y, x] * slope, rel=1e-6)
    np.testing.assert_allclose(vol.data, raw.transpose(2, 1, 0) * slope, rtol=1e-6)
    assert raw[2, 32, 40] != 0


def test_real_scan_parameters_and_provenance(pv51):
    vol = read_one(pv51 / "1")
    meta = vol.meta
    assert vol.protocol is None                     # one echo, no measurement axis
    assert meta["EchoTime"] == pytest.approx(16.5e-3)      # VisuAcqEchoTime 16.5 ms
    assert meta["RepetitionTime"] == pytest.approx(2.0)    # VisuAcqRepetitionTime 2000 ms
    assert meta["FlipAngle"] == pytest.approx(90.0)
    assert meta["MagneticFieldStrength"] == pytest.approx(300.339556916373 / 42.577, abs=0.01)
    assert meta["ParaVisionVersion"] == "5.1"
    assert meta["SoftwareVersions"] == "ParaVision 5.1"
    assert meta["ParaVisionScan"] == 1 and meta["ParaVisionReco"] == 1
    assert meta["PatientPosition"] == "HFS"
    assert meta["ParaVisionFrameGroups"] == ["FG_SLICE(5)"]
    assert meta["AcquisitionDateTime"] == "2011-11-30T12:20:46"
    assert meta["Manufacturer"] == "Bruker"
    assert any("VisuCoreDataSlope" in n for n in meta["notes"])
    assert str(pv51 / "1" / "pdata" / "1" / "2dseq") in vol.sources
    assert str(pv51 / "1" / "acqp") in vol.sources


def test_real_scan_reads_the_same_from_pdata_and_from_2dseq(pv51):
    a = read_one(pv51 / "1")
    b = read_one(pv51 / "1" / "pdata" / "1")
    c = read_one(pv51 / "1" / "pdata" / "1" / "2dseq")
    for other in (b, c):
        np.testing.assert_array_equal(a.data, other.data)
        np.testing.assert_array_equal(a.affine, other.affine)
        assert other.meta["SeriesNumber"] == 1


def test_real_scans_with_edited_orientation(pv51):
    # Scans 2 and 3 are scan 1 with only VisuCoreOrientation changed (sagittal, coronal
    # rows) while VisuCorePosition still steps (0, 0, 2): the normal of the orientation
    # is used, with the 2 mm spacing, and a note says so.
    sag = read_one(pv51 / "2")
    rows = np.array([[0, 1, 0], [0, 0, -1], [-1, 0, 0]], float)   # visu_pars of scan 2
    lps = np.column_stack([rows[0] * 0.55, rows[1] * 0.6875, rows[2] * 2.0])
    expected = np.eye(4)
    expected[:3, :3] = np.diag([-1, -1, 1]) @ lps
    expected[:3, 3] = [22.0, 21.2, -4.0]
    np.testing.assert_allclose(sag.affine, expected, atol=1e-9)
    assert any("not along the slice normal" in n for n in sag.meta["notes"])
    cor = read_one(pv51 / "3")
    np.testing.assert_allclose(cor.affine[:3, 2], [0.0, -2.0, 0.0], atol=1e-9)
    np.testing.assert_array_equal(sag.data, cor.data)


def test_registry_load_of_real_study_and_scan(pv51):
    with pytest.raises(ValidationError, match="holds 3 series") as exc:
        load(pv51)
    msg = one_line(exc)
    assert "1 (EPI-SE-FOVsat)" in msg and "3 (EPI-SE-FOVsat)" in msg
    vol = load(pv51 / "1")
    assert isinstance(vol, Volume) and vol.meta["SeriesNumber"] == 1
    assert load(pv51, series=2).meta["SeriesNumber"] == 2
    assert len(load_all(pv51)) == 3


# ----------------------------------------------------------------------------- multi-echo


def test_pv6_mge_axial_prone_is_one_series(tmp_path):
    spec = ScanSpec()                     # PV6 MGE, (FG_ECHO, FG_SLICE): echoes vary fastest
    write_scan(tmp_path, 5, spec)
    vol = read_one(tmp_path / "5")
    assert vol.data.shape == (6, 4, 3, 4)
    assert isinstance(vol.protocol, MultiEchoProtocol)
    np.testing.assert_allclose(vol.protocol.echo_times, [0.003, 0.0065, 0.010, 0.0135])
    assert vol.meta["EchoTime"] == pytest.approx([0.003, 0.0065, 0.010, 0.0135])
    np.testing.assert_allclose(vol.data, expected_phantom((6, 4, 3, 4), 0.5), rtol=1e-6)
    # By hand: 12 mm / 6 = 2 mm, 10 mm / 4 = 2.5 mm; axial rows; first voxel at
    # (-6, -5, -1.5) LPS; slices 1.2 mm apart towards the head.
    expected = np.array([[-2.0, 0, 0, 6.0], [0, -2.5, 0, 5.0], [0, 0, 1.2, -1.5], [0, 0, 0, 1]])
    np.testing.assert_allclose(vol.affine, expected, atol=1e-9)
    assert vol.protocol.magnetic_field_strength == pytest.approx(300.3 / 42.577, abs=0.01)
    assert vol.meta["PatientPosition"] == "HFP"
    assert vol.meta["ParaVisionVersion"] == "6.0.1"
    assert vol.meta["SeriesNumber"] == 5 and vol.meta["ParaVisionReco"] == 1
    assert vol.meta["FlipAngle"] == 30.0 and vol.meta["RepetitionTime"] == pytest.approx(0.8)
    assert vol.meta["AcquisitionDateTime"] == "2024-03-05T10:00:00"


def test_pv360_msme_coronal_supine_slice_fastest(tmp_path):
    spec = ScanSpec(version="360", method="MSME", protocol="MSME_T2",
                    frame_order=("FG_SLICE", "FG_ECHO"), orientation="coronal",
                    slice_step_mm=-1.0, subject_position="Head_Supine",
                    echo_times_ms=(10.0, 20.0, 30.0, 40.0))
    write_scan(tmp_path, 3, spec)
    vol = read_one(tmp_path / "3")
    assert vol.data.shape == (6, 4, 3, 4)
    np.testing.assert_allclose(vol.protocol.echo_times, [0.01, 0.02, 0.03, 0.04])
    np.testing.assert_allclose(vol.data, expected_phantom((6, 4, 3, 4), 0.5), rtol=1e-6)
    # Coronal rows: X = (1,0,0), Y = (0,0,-1) (towards the feet), normal (0,1,0);
    # slices step 1 mm against the normal, i.e. (0,-1,0) LPS = 1 mm anterior.
    expected = np.array([[-2.0, 0, 0, 6.0], [0, 0, 1.0, 5.0], [0, -2.5, 0, -1.5], [0, 0, 0, 1]])
    np.testing.assert_allclose(vol.affine, expected, atol=1e-9)
    assert vol.meta["ParaVisionVersion"] == "360.3.5"
    assert vol.meta["ParaVisionSubjectType"] == "Quadruped"
    assert vol.meta["PatientPosition"] == "HFS"
    assert any("Quadruped" in n for n in vol.meta["notes"])


def test_msme_echo_times_from_method_when_visu_has_none(tmp_path):
    spec = ScanSpec(method="MSME", visu_echo_times=False, echo_times_ms=(8.0, 16.0, 24.0))
    write_scan(tmp_path, 1, spec)
    vol = read_one(tmp_path / "1")
    np.testing.assert_allclose(vol.protocol.echo_times, [0.008, 0.016, 0.024])
    assert vol.protocol.source.endswith("method: EffectiveTE")
    np.testing.assert_allclose(vol.data, expected_phantom((6, 4, 3, 3), 0.5), rtol=1e-6)


def test_echo_times_out_of_order_are_sorted_with_the_data(tmp_path):
    write_scan(tmp_path, 1, ScanSpec(echo_times_ms=(9.0, 3.0, 6.0)))
    vol = read_one(tmp_path / "1")
    np.testing.assert_allclose(vol.protocol.echo_times, [0.003, 0.006, 0.009])
    phantom = expected_phantom((6, 4, 3, 3), 0.5)
    np.testing.assert_allclose(vol.data, phantom[..., [1, 2, 0]], rtol=1e-6)
    assert any("reordered" in n for n in vol.meta["notes"])


# ----------------------------------------------------------------------------- orientation


def test_subject_position_is_already_in_the_visu_geometry(tmp_path):
    write_scan(tmp_path, 1, ScanSpec(subject_position="Head_Prone"))
    write_scan(tmp_path, 2, ScanSpec(subject_position="Head_Supine"))
    prone, supine = read_series(tmp_path)
    # Same VisuCoreOrientation/VisuCorePosition: same anatomy, same affine.
    np.testing.assert_array_equal(prone.affine, supine.affine)
    assert (prone.meta["PatientPosition"], supine.meta["PatientPosition"]) == ("HFP", "HFS")


def test_subject_position_override_for_a_misregistered_animal(tmp_path):
    write_scan(tmp_path, 1, ScanSpec(subject_position="Head_Supine"))
    vol = read_one(tmp_path / "1", subject_position="Head_Prone")
    # Registered supine, lay prone: the subject is turned 180 degrees about the bore,
    # so its left/right and anterior/posterior are swapped relative to ParaVision's.
    expected = np.array([[2.0, 0, 0, -6.0], [0, 2.5, 0, -5.0], [0, 0, 1.2, -1.5], [0, 0, 0, 1]])
    np.testing.assert_allclose(vol.affine, expected, atol=1e-9)
    assert vol.meta["PatientPosition"] == "HFP"
    assert any("corrected from Head_Supine" in n for n in vol.meta["notes"])
    feet = read_one(tmp_path / "1", subject_position="Foot_Supine")
    np.testing.assert_allclose(np.diag(feet.affine)[:3], [2.0, -2.5, -1.2])


def test_sagittal_pv51_with_reversed_disk_order(tmp_path):
    spec = ScanSpec(version="5.1", orientation="sagittal", disk_reverse=True)
    write_scan(tmp_path, 7, spec)
    vol = read_one(tmp_path / "7")
    np.testing.assert_allclose(vol.data, expected_phantom((6, 4, 3, 4), 0.5), rtol=1e-6)
    # Sagittal rows: X = (0,1,0) posterior, Y = (0,0,-1) feet, normal (-1,0,0) right.
    expected = np.array([[0, 0, 1.2, 6.0], [-2.0, 0, 0, 5.0], [0, -2.5, 0, -1.5], [0, 0, 0, 1]])
    np.testing.assert_allclose(vol.affine, expected, atol=1e-9)
    assert vol.meta["ParaVisionVersion"] == "5.1"
    assert vol.meta["SeriesNumber"] == 7
    assert any("disk_reverse_slice_order" in n for n in vol.meta["notes"])
    # A reconstruction folder copied on its own: scan number from VisuSeriesNumber
    # (PV5.1: EXPNO * 2**16 + PROCNO), field strength from VisuAcqImagingFrequency.
    alone = tmp_path / "export"
    shutil.copytree(tmp_path / "7" / "pdata" / "1", alone)
    copy = read_one(alone)
    assert copy.meta["SeriesNumber"] == 7 and copy.meta["ParaVisionReco"] == 1
    assert copy.meta["MagneticFieldStrength"] == pytest.approx(300.3 / 42.577, abs=0.01)
    assert copy.sources == (str(alone / "2dseq"), str(alone / "visu_pars"))
    np.testing.assert_array_equal(copy.data, vol.data)
    np.testing.assert_array_equal(copy.affine, vol.affine)


def test_slice_packages_in_several_orientations_become_several_series(tmp_path):
    rows = np.array([[1, 0, 0, 0, 1, 0, 0, 0, 1],       # axial
                     [1, 0, 0, 0, 0, -1, 0, 1, 0],      # coronal
                     [0, 1, 0, 0, 0, -1, -1, 0, 0]],    # sagittal
                    float)
    pos = np.array([[-6, -5, 0], [-6, 0, 5], [0, -6, 5]], float)
    spec = ScanSpec(protocol="TriPilot", echo_times_ms=(3.0,), frame_order=("FG_SLICE",),
                    extra_visu={"VisuCoreOrientation": rows, "VisuCorePosition": pos})
    write_scan(tmp_path, 1, spec)
    vols = read_series(tmp_path / "1")
    assert len(vols) == 3
    assert [v.meta["SeriesDescription"] for v in vols] == [
        f"TriPilot (slice package {k} of 3)" for k in (1, 2, 3)]
    for k, vol in enumerate(vols):
        assert vol.data.shape == (6, 4, 1)
        r = rows[k].reshape(3, 3)
        # One slice: the third axis is the normal times VisuCoreFrameThickness (0.8 mm).
        lps = np.column_stack([r[0] * 2.0, r[1] * 2.5, r[2] * 0.8])
        np.testing.assert_allclose(vol.affine[:3, :3], np.diag([-1, -1, 1]) @ lps, atol=1e-9)
        np.testing.assert_allclose(vol.affine[:3, 3], pos[k] * [-1, -1, 1], atol=1e-9)
        phantom = expected_phantom((6, 4, 3, 1), 0.5)
        np.testing.assert_allclose(vol.data[..., 0], phantom[:, :, k, 0], rtol=1e-6)


def test_3d_frame(tmp_path):
    pdata = tmp_path / "9" / "pdata" / "1"
    pdata.mkdir(parents=True)
    raw = np.arange(4 * 3 * 5, dtype="<i4")         # C order (z, y, x): x fastest
    raw.tofile(pdata / "2dseq")
    write_jcamp(pdata / "visu_pars", {
        "VisuVersion": 3, "VisuCoreFrameCount": 1, "VisuCoreDim": 3,
        "VisuCoreSize": [4, 3, 5], "VisuCoreDimDesc": ["spatial"] * 3,
        "VisuCoreExtent": [8.0, 6.0, 10.0], "VisuCoreUnits": [Str("mm")] * 3,
        "VisuCoreOrientation": np.array([[1, 0, 0, 0, 1, 0, 0, 0, 1]], float),
        "VisuCorePosition": np.array([[-3.0, -2.0, -4.0]]),
        "VisuCoreDataSlope": [2.0], "VisuCoreDataOffs": [1.0],
        "VisuCoreWordType": "_32BIT_SGN_INT", "VisuCoreByteOrder": "littleEndian",
        "VisuSubjectPosition": "Head_Prone",
    })
    vol = read_one(pdata)
    assert vol.data.shape == (4, 3, 5)
    np.testing.assert_allclose(vol.data, raw.reshape(5, 3, 4).transpose(2, 1, 0) * 2.0 + 1.0)
    expected = np.array([[-2.0, 0, 0, 3.0], [0, -2.0, 0, 2.0], [0, 0, 2.0, -4.0], [0, 0, 0, 1]])
    np.testing.assert_allclose(vol.affine, expected)
    assert vol.meta["ParaVisionScan"] == 9      # the scan folder (it has a pdata folder)


# ----------------------------------------------------------------------------- other groups


def test_diffusion_frame_group(tmp_path):
    bmats = np.zeros((4, 9))
    bmats[1, 0] = 500.0                                # along x (LPS)
    bmats[2, 4] = 1000.0                               # along y
    bmats[3, 8] = 1000.0                               # along z
    spec = ScanSpec(method="DtiEpi", visu_echo_times=False, echo_times_ms=(30.0,) * 4,
                    extra_visu={
                        "VisuFGOrderDesc": [(4, Str("FG_DIFFUSION"), Str(""), 0, 1),
                                            (3, Str("FG_SLICE"), Str(""), 1, 2)],
                        "VisuGroupDepVals": [(Str("VisuAcqDiffusionBMatrix"), 0),
                                             (Str("VisuCoreOrientation"), 0),
                                             (Str("VisuCorePosition"), 0)],
                        "VisuAcqDiffusionBMatrix": bmats,
                        "VisuAcqEchoTime": [30.0]})
    write_scan(tmp_path, 1, spec)
    vol = read_one(tmp_path / "1")
    assert isinstance(vol.protocol, DiffusionProtocol)
    np.testing.assert_allclose(vol.protocol.b_values, [0, 500, 1000, 1000])
    np.testing.assert_allclose(np.abs(vol.protocol.b_vectors),
                               [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], atol=1e-9)
    np.testing.assert_allclose(vol.data, expected_phantom((6, 4, 3, 4), 0.5), rtol=1e-6)
    assert vol.meta["EchoTime"] == pytest.approx(0.030)


def test_repetition_frame_group_gives_frame_times(tmp_path):
    spec = ScanSpec(method="FLASH", visu_echo_times=False, echo_times_ms=(2.0,) * 5,
                    frame_order=("FG_SLICE", "FG_ECHO"),
                    extra_visu={"VisuFGOrderDesc": [(3, Str("FG_SLICE"), Str(""), 0, 2),
                                                    (5, Str("FG_CYCLE"), Str(""), 2, 0)],
                                "VisuAcqScanTime": 50000.0, "VisuAcqEchoTime": [2.0]})
    write_scan(tmp_path, 1, spec)
    vol = read_one(tmp_path / "1")
    assert isinstance(vol.protocol, DynamicProtocol)
    np.testing.assert_allclose(vol.protocol.times, [0, 10, 20, 30, 40])
    assert any("estimated" in n for n in vol.meta["notes"])


def test_inversion_frame_group(tmp_path):
    spec = ScanSpec(method="RARE", visu_echo_times=False, echo_times_ms=(10.0,) * 3,
                    extra_visu={"VisuFGOrderDesc": [(3, Str("FG_IRMODE"), Str(""), 0, 1),
                                                    (3, Str("FG_SLICE"), Str(""), 1, 2)],
                                "VisuGroupDepVals": [(Str("VisuAcqInversionTime"), 0),
                                                     (Str("VisuCoreOrientation"), 0),
                                                     (Str("VisuCorePosition"), 0)],
                                "VisuAcqInversionTime": [1200.0, 100.0, 500.0],
                                "VisuAcqEchoTime": [10.0]})
    write_scan(tmp_path, 1, spec)
    vol = read_one(tmp_path / "1")
    np.testing.assert_allclose(vol.protocol.inversion_times, [0.1, 0.5, 1.2])
    assert vol.protocol.repetition_time == pytest.approx(0.8)
    np.testing.assert_allclose(vol.data, expected_phantom((6, 4, 3, 3), 0.5)[..., [1, 2, 0]],
                               rtol=1e-6)


def test_several_measurement_groups_are_flattened(tmp_path):
    # 4 "echoes" written by the factory relabelled as FG_ECHO(2) x FG_CYCLE(2): frame
    # e + 2 c + 4 s, so the flattened measurement index e + 2 c is the factory's echo index.
    spec = ScanSpec(visu_echo_times=False,
                    extra_visu={"VisuFGOrderDescDim": 3,
                                "VisuFGOrderDesc": [(2, Str("FG_ECHO"), Str(""), 0, 0),
                                                    (2, Str("FG_CYCLE"), Str(""), 0, 0),
                                                    (3, Str("FG_SLICE"), Str(""), 0, 2)]})
    write_scan(tmp_path, 1, spec)
    vol = read_one(tmp_path / "1")
    assert vol.protocol is None
    np.testing.assert_allclose(vol.data, expected_phantom((6, 4, 3, 4), 0.5), rtol=1e-6)
    assert any("flattened" in n for n in vol.meta["notes"])


def test_complex_frames_give_the_magnitude(tmp_path):
    # FG_COMPLEX group (real, imaginary) relabelled from a 2-echo scan.
    spec = ScanSpec(echo_times_ms=(3.0, 6.0), visu_echo_times=False,
                    extra_visu={"VisuFGOrderDesc": [(2, Str("FG_COMPLEX"), Str(""), 0, 0),
                                                    (3, Str("FG_SLICE"), Str(""), 0, 2)]})
    write_scan(tmp_path, 1, spec)
    vol = read_one(tmp_path / "1")
    parts = expected_phantom((6, 4, 3, 2), 0.5)
    np.testing.assert_allclose(vol.data, np.hypot(parts[..., 0], parts[..., 1]), rtol=1e-6)
    # COMPLEX_IMAGE written as all real frames then all imaginary frames (twice the size).
    write_scan(tmp_path, 2, ScanSpec(extra_visu={"VisuCoreFrameType": "COMPLEX_IMAGE"}))
    seq = tmp_path / "2" / "pdata" / "1" / "2dseq"
    seq.write_bytes(seq.read_bytes() * 2)
    vol = read_one(tmp_path / "2")
    np.testing.assert_allclose(vol.data, np.sqrt(2) * expected_phantom((6, 4, 3, 4), 0.5),
                               rtol=1e-6)
    assert any("magnitude" in n for n in vol.meta["notes"])


@pytest.mark.parametrize("word, order", [("_32BIT_SGN_INT", "bigEndian"),
                                         ("_32BIT_FLOAT", "littleEndian"),
                                         ("_8BIT_UNSGN_INT", "littleEndian")])
def test_word_types_and_byte_orders(tmp_path, word, order):
    spec = ScanSpec(word_type=word, byte_order=order, matrix=(3, 2), extent_mm=(6.0, 5.0),
                    n_slices=2, echo_times_ms=(3.0, 6.0), offset=-1.0)
    if word == "_8BIT_UNSGN_INT":   # raw values must fit in a byte: keep them small
        spec = ScanSpec(word_type=word, byte_order=order, matrix=(3, 2), extent_mm=(6.0, 5.0),
                        n_slices=1, echo_times_ms=(3.0,), frame_order=("FG_SLICE",))
    write_scan(tmp_path, 1, spec)
    vol = read_one(tmp_path / "1")
    shape = (3, 2, spec.n_slices, spec.n_echoes)
    expected = expected_phantom(shape, spec.slope, spec.offset)
    if word == "_8BIT_UNSGN_INT":
        expected = (raw_value(*np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")) % 256
                    * spec.slope)
    np.testing.assert_allclose(vol.data.reshape(shape), expected, rtol=1e-6)


# ----------------------------------------------------------------------------- folders


def test_study_skips_scans_without_reconstruction(tmp_path):
    write_study(tmp_path, {1: ScanSpec(protocol="MGE_pre"), 2: ScanSpec(protocol="MGE_24h")},
                without_pdata=(3,))
    vols = read_series(tmp_path)
    assert [v.meta["SeriesNumber"] for v in vols] == [1, 2]
    assert all(any("scan 3 skipped" in n for n in v.meta["notes"]) for v in vols)
    with pytest.raises(ValidationError, match=r"holds 2 series \(1 \(MGE_pre\), 2 \(MGE_24h\)\)"):
        load(tmp_path)
    assert load(tmp_path, series="MGE_24h").meta["SeriesNumber"] == 2
    with pytest.raises(ReadError, match="no reconstruction") as exc:
        read_series(tmp_path / "3")
    assert str(tmp_path / "3") in one_line(exc)


def test_study_skips_spectroscopy_but_a_direct_read_refuses_it(tmp_path):
    write_scan(tmp_path, 1, ScanSpec())
    write_scan(tmp_path, 2, ScanSpec(extra_visu={"VisuCoreDim": 1,
                                                 "VisuCoreDimDesc": ["spectroscopic"]}))
    vols = read_series(tmp_path)
    assert len(vols) == 1 and any("scan 2 skipped" in n for n in vols[0].meta["notes"])
    with pytest.raises(ValidationError, match="not images") as exc:
        read_series(tmp_path / "2")
    one_line(exc)


def test_reco_option(tmp_path):
    write_scan(tmp_path, 1, ScanSpec(slope=0.5))
    write_scan(tmp_path, 1, ScanSpec(slope=2.0), reco_number=2)
    first = read_one(tmp_path / "1")
    assert first.meta["ParaVisionReco"] == 1
    assert any("2 reconstructions" in n for n in first.meta["notes"])
    second = read_one(tmp_path / "1", reco=2)
    assert second.meta["ParaVisionReco"] == 2
    np.testing.assert_allclose(second.data, expected_phantom((6, 4, 3, 4), 2.0), rtol=1e-6)
    with pytest.raises(ReadError, match=r"has no pdata/3 \(it has pdata/1, pdata/2\)") as exc:
        read_series(tmp_path / "1", reco=3)
    one_line(exc)
    with pytest.raises(ValidationError, match="reco=0"):
        read_series(tmp_path / "1", reco=0)
    with pytest.raises(ValidationError, match="subject_position='Head_Up'"):
        read_series(tmp_path / "1", subject_position="Head_Up")


# ----------------------------------------------------------------------------- errors


def test_folder_without_visu_pars(tmp_path):
    write_scan(tmp_path, 1, ScanSpec())
    (tmp_path / "1" / "pdata" / "1" / "visu_pars").unlink()
    for path in (tmp_path / "1", tmp_path / "1" / "pdata" / "1"):
        with pytest.raises(ReadError, match="no visu_pars") as exc:
            read_series(path)
        msg = one_line(exc)
        assert str(tmp_path / "1" / "pdata" / "1") in msg
        assert "not reconstructed" in msg and "older ParaVision" in msg


def test_truncated_2dseq(tmp_path):
    write_scan(tmp_path, 1, ScanSpec())
    seq = tmp_path / "1" / "pdata" / "1" / "2dseq"
    size = seq.stat().st_size
    with open(seq, "r+b") as fh:
        fh.truncate(size - 10)
    with pytest.raises(ReadError, match="truncated") as exc:
        read_series(tmp_path / "1")
    msg = one_line(exc)
    assert str(seq) in msg and f"needs {size}" in msg
    with open(seq, "ab") as fh:
        fh.write(b"\0" * 30)
    with pytest.raises(ReadError, match="does not belong to this 2dseq"):
        read_series(tmp_path / "1")


def test_unknown_word_type(tmp_path):
    write_scan(tmp_path, 1, ScanSpec(extra_visu={"VisuCoreWordType": "_64BIT_FLOAT"}))
    with pytest.raises(ReadError, match="VisuCoreWordType '_64BIT_FLOAT'") as exc:
        read_series(tmp_path / "1")
    assert "visu_pars" in one_line(exc)


def test_frame_groups_that_do_not_match_the_frame_count(tmp_path):
    write_scan(tmp_path, 1, ScanSpec(extra_visu={"VisuCoreFrameCount": 11}))
    with pytest.raises(ReadError, match="do not match VisuCoreFrameCount 11") as exc:
        read_series(tmp_path / "1")
    one_line(exc)


def test_missing_2dseq_and_bad_geometry(tmp_path):
    write_scan(tmp_path, 1, ScanSpec())
    (tmp_path / "1" / "pdata" / "1" / "2dseq").unlink()
    with pytest.raises(ReadError, match="no 2dseq"):
        read_series(tmp_path / "1")
    write_scan(tmp_path, 2, ScanSpec(extra_visu={"VisuCoreOrientation": np.ones((3, 9))}))
    with pytest.raises(GeometryError, match="not a rotation") as exc:
        read_series(tmp_path / "2")
    one_line(exc)
    write_scan(tmp_path, 3, ScanSpec(extra_visu={"VisuCorePosition": np.zeros((2, 3))}))
    with pytest.raises(GeometryError, match="one position per slice"):
        read_series(tmp_path / "3")


def test_not_a_paravision_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReadError, match="no ParaVision scan folders"):
        read_series(tmp_path / "empty")
    with pytest.raises(ReadError, match="no such file"):
        read_series(tmp_path / "nothing")
    other = tmp_path / "notes.txt"
    other.write_text("x")
    with pytest.raises(ReadError, match="not a ParaVision folder"):
        read_series(other)


def test_fast_enough_on_a_realistic_size(tmp_path):
    # 128 x 128 x 20 slices x 12 echoes int16 (7.5 MB raw): a typical mouse MGE.
    spec = ScanSpec(matrix=(128, 128), extent_mm=(25.6, 25.6), n_slices=20,
                    echo_times_ms=tuple(2.5 * (k + 1) for k in range(12)), slope=0.01)
    write_scan(tmp_path, 1, spec)
    vol = read_one(tmp_path / "1")
    assert vol.data.shape == (128, 128, 20, 12) and vol.data.flags["C_CONTIGUOUS"]
    assert os.path.getsize(tmp_path / "1" / "pdata" / "1" / "2dseq") == 128 * 128 * 20 * 12 * 2
    assert vol.data[127, 127, 19, 11] == pytest.approx(
        float(raw_value(127, 127, 19, 11) * frame_slope(19, 11, 0.01)), rel=1e-6)
