"""Tests of DICOM PS3.15 Annex E de-identification (oncomri.io.deid).

Real DICOM files shipped with pydicom, plus datasets filled with every
attribute of Table E.1-1 that has a settable VR, are de-identified; the tests
walk every element of the output (sequences, file meta and private tags
included) and prove that no PHI value of the input survives, that UIDs,
references and date intervals stay consistent, and that the output still
writes, reads back and validates with dciodvfy without new errors.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset, Sequence
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.uid import UID

from oncomri.core.errors import ValidationError
from oncomri.io.deid import BASIC_PROFILE, DUMMY, EXTRA_ACTIONS, Deidentifier

SECRET = "oncomri-test-secret-0123456789abcdef"
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
DCIODVFY = shutil.which("dciodvfy") or ("/usr/bin/dciodvfy" if Path("/usr/bin/dciodvfy").exists()
                                        else None)

# Values every PHI string of the filled dataset starts with (case-insensitive):
# nothing that de-identification writes contains "phi" (pseudonyms are hex).
MARK = "PHI"
PHI_DATE_1 = "20200315"
PHI_DATE_2 = "20200316"
PHI_DATETIME = "20200315101112.000000"
PHI_TIME = "101112"  # times are kept (whole-day shifts); not PHI here


def _file(name: str) -> Path:
    path = TEST_FILES / name
    if not path.exists():
        pytest.skip(f"pydicom test file {name} is not installed")
    return path


def _read(name: str) -> Dataset:
    return pydicom.dcmread(_file(name), force=True)


@pytest.fixture(scope="module")
def deid() -> Deidentifier:
    return Deidentifier(SECRET)


# ----------------------------------------------------------------------------- walking


def _walk(ds: Dataset, path=()):
    """(path, element) for every element of ``ds``, recursively, file meta included."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and not path:
        for elem in meta:
            yield ("file_meta",), elem
    for elem in ds:
        yield path, elem
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or ()):
                yield from _walk(item, path + (f"{elem.keyword or elem.tag}[{i}]",))


def _strings(elem) -> list[str]:
    """Every value of ``elem`` as text (bytes decoded as latin-1), pixel data excluded."""
    if elem.VR == "SQ" or int(elem.tag) == 0x7FE00010:
        return []
    values = elem.value if isinstance(elem.value, (list, tuple)) else [elem.value]
    out = []
    for v in values:
        if v is None:
            continue
        if isinstance(v, (bytes, bytearray)):
            out.append(bytes(v).decode("latin-1"))
        else:
            out.append(str(v))
    return out


def _all_text(ds: Dataset) -> list[tuple[str, str]]:
    return [("/".join(p) + f"/{e.keyword or e.tag}", s) for p, e in _walk(ds) for s in _strings(e)]


def _assert_absent(ds: Dataset, needles) -> None:
    """No value anywhere in ``ds`` contains any of ``needles`` (case-insensitive)."""
    texts = _all_text(ds)
    leaks = []
    for needle in needles:
        low = needle.lower()
        leaks += [(where, text, needle) for where, text in texts if low in text.lower()]
    assert not leaks, f"PHI survived de-identification: {leaks[:10]}"


def _tags(ds: Dataset) -> set[int]:
    return {int(e.tag) for _, e in _walk(ds)}


def _uids(ds: Dataset) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for _, e in _walk(ds):
        if e.VR == "UI" and e.value:
            values = e.value if isinstance(e.value, (list, tuple)) else [e.value]
            out.setdefault(e.keyword, []).extend(str(v) for v in values)
    return out


# ------------------------------------------------------------------- a dataset full of PHI


def _marker(tag: int) -> str:
    return f"{MARK}{tag:08X}"


def _phi_uid(tag: int) -> str:
    return f"1.2.826.0.1.3680043.10.543.{tag}"


def _phi_item(tag: int, action: str) -> Dataset:
    """One sequence item holding PHI of every kind."""
    item = Dataset()
    if action == "X/Z/U*":  # an image reference, as in Source Image Sequence
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        item.ReferencedSOPInstanceUID = _phi_uid(tag) + ".1"
    else:
        item.CodeValue = _marker(tag)
        item.CodingSchemeDesignator = "99PHIX"
        item.CodeMeaning = f"{_marker(tag)} meaning"
    item.TextValue = f"{_marker(tag)} nested free text"
    item.PersonName = f"{_marker(tag)}^Nested"
    item.UID = _phi_uid(tag) + ".2"
    item.Date = PHI_DATE_2
    return item


def _value_for(tag: int, vr: str, action: str):
    m = _marker(tag)
    return {
        "PN": f"{m}^Person", "LO": f"{m} long string", "SH": m, "CS": m, "AE": m,
        "LT": f"{m} long text", "ST": f"{m} short text", "UT": f"{m} unlimited text",
        "UC": f"{m} unlimited characters", "UR": f"http://hospital.example/{m}",
        "DA": PHI_DATE_1, "DT": PHI_DATETIME, "TM": PHI_TIME, "UI": _phi_uid(tag),
        "AS": "045Y", "IS": "7", "DS": "70.5", "OB": f"{m} bytes".encode(),
        "SQ": Sequence([_phi_item(tag, action)]) if vr == "SQ" else None,
    }.get(vr)


@pytest.fixture()
def phi_ds() -> Dataset:
    """MR_small.dcm with every settable Table E.1-1 attribute filled with PHI."""
    ds = _read("MR_small.dcm")
    for tag, action in BASIC_PROFILE.items():
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            continue
        value = _value_for(tag, vr, action)
        if value is not None:
            ds.add_new(tag, vr, value)
    ds.PatientName = "Doe^Jane^Q"
    ds.PatientID = "MRN7654321"
    ds.PatientBirthDate = "19700101"
    ds.OtherPatientIDs = ["PHIOTHERID1", "PHIOTHERID2"]
    ds.MagneticFieldStrength = "1.5"
    # the patient's own identifiers in text that the table does not list
    ds.ContentDescription = "Segmentation for Doe MRN7654321"
    ds.add_new(0x00142006, "PN", "PHIEVALUATOR^Unlisted")  # EvaluatorName: not in the table
    ds.add_new(0x00640003, "UI", _phi_uid(0x640003))  # SourceFrameOfReferenceUID: unlisted
    ds.add_new(0x00181200, "DA", PHI_DATE_1)  # DateOfLastCalibration: not in the table
    ds.add_new(0x00081190, "UR", "http://pacs.hospital.example/PHIWADO")  # RetrieveURL
    # private block, curve and overlay
    block = ds.private_block(0x0029, "ACME PHI", create=True)
    block.add_new(0x10, "LO", "PHI private name")
    block.add_new(0x11, "SQ", Sequence([Dataset()]))
    block[0x11].value[0].PatientName = "PHI^Private^Nested"
    ds.add_new(0x50003000, "OB", b"PHI curve")
    ds.add_new(0x60000010, "US", 4)
    ds.add_new(0x60000011, "US", 4)
    ds.add_new(0x60003000, "OW", b"\x00\x01" * 8)
    ds.add_new(0x60004000, "LT", "PHI overlay comment")
    ds.add_new(0x00110010, "LO", "PHI CREATOR")  # a lone private creator
    return ds


def _phi_needles(ds: Dataset) -> list[str]:
    """PHI values of ``ds`` that must not appear anywhere in its de-identified copy."""
    needles = {MARK, "Doe", "Jane", "MRN7654321", "PHIOTHERID1", "19700101",
               PHI_DATE_1, PHI_DATE_2, "2020-03-15", "CompressedSamples", "4MR1"}
    for _, e in _walk(ds):
        if e.VR == "UI" and e.value:
            for v in (e.value if isinstance(e.value, (list, tuple)) else [e.value]):
                v = str(v)
                if not v.startswith("1.2.840.10008.") and e.keyword not in (
                        "ImplementationClassUID", "TransferSyntaxUID"):
                    needles.add(v)
        if e.VR == "DA" and e.value:
            needles.add(str(e.value))
    return sorted(needles)


# ------------------------------------------------------------------------------ datasets


def test_no_phi_survives_anywhere(phi_ds, deid):
    needles = _phi_needles(phi_ds)
    out = deid.deidentify_dataset(phi_ds)
    _assert_absent(out, needles)


def test_removed_attributes_are_absent_everywhere(phi_ds, deid):
    out = deid.deidentify_dataset(phi_ds)
    tags = _tags(out)
    must_go = {t for t, a in BASIC_PROFILE.items() if a == "X"}
    # dates and times are kept (dates shifted) by the Retain Longitudinal Temporal
    # Information with Modified Dates Option, and so is the Timezone Offset.
    must_go = {t for t in must_go
               if dictionary_VR(t) not in ("DA", "DT", "TM") and t != 0x00080201}
    must_go |= {t for t, a in EXTRA_ACTIONS.items() if a == "X"}
    present = sorted(keyword_for_tag(t) for t in tags & must_go)
    assert not present, f"attributes with action X still present: {present}"
    assert not [t for t in tags if (t >> 16) & 1], "private attributes survived"
    assert not [t for t in tags if 0x5000 <= t >> 16 <= 0x501E], "curve data survived"
    assert not [t for t in tags if 0x6000 <= t >> 16 <= 0x601E], "overlay attributes survived"


def test_zero_dummy_and_uid_actions(phi_ds, deid):
    out = deid.deidentify_dataset(phi_ds)
    pseudo = deid.pseudonym("MRN7654321")
    assert out.PatientName == pseudo and out.PatientID == pseudo
    assert re.fullmatch(r"sub-[0-9a-f]{8}", pseudo)
    for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                    "ReferringPhysicianName"):
        assert keyword not in out or out[keyword].value in (None, ""), keyword
    assert out.ClinicalTrialSubjectID == pseudo
    # inside a sequence whose action is D, every text becomes a dummy
    observer = out.VerifyingObserverSequence[0]
    assert (str(observer.PersonName), observer.TextValue, observer.CodeValue) == (DUMMY,) * 3
    # the code of an identifying code sequence is replaced by a dummy code
    assert out.PersonIdentificationCodeSequence[0].CodeValue == DUMMY
    # a date that the table replaces with a dummy is shifted instead (option)
    shift = deid.date_shift("MRN7654321")
    assert out.SourceStartDateTime == (dt.datetime(2020, 3, 15) + shift).strftime("%Y%m%d") \
        + "101112.000000"
    # every U attribute got the keyed UID of its original value
    for tag, action in BASIC_PROFILE.items():
        if action == "U" and tag in phi_ds and tag != 0x00020003:
            assert out[tag].value == deid.uid(str(phi_ds[tag].value)), keyword_for_tag(tag)


def test_every_uid_valid_and_sop_instance_matches_file_meta(phi_ds, deid):
    out = deid.deidentify_dataset(phi_ds)
    for keyword, values in _uids(out).items():
        for v in values:
            assert UID(v).is_valid and len(v) <= 64, (keyword, v)
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.SOPInstanceUID.startswith("2.25.")
    assert out.SOPClassUID == phi_ds.SOPClassUID  # class UIDs are kept


def test_quantitative_attributes_are_kept(phi_ds, deid):
    out = deid.deidentify_dataset(phi_ds)
    for keyword in ("EchoTime", "RepetitionTime", "FlipAngle", "PixelSpacing",
                    "SliceThickness", "ImageOrientationPatient", "ImagePositionPatient",
                    "MagneticFieldStrength", "Manufacturer", "ManufacturerModelName",
                    "SoftwareVersions", "Rows", "Columns", "BitsStored", "Modality",
                    "PatientPosition", "ScanningSequence", "ImagingFrequency"):
        assert keyword in out, keyword
        assert out[keyword].value == phi_ds[keyword].value, keyword
    assert out.PixelData == phi_ds.PixelData
    np.testing.assert_array_equal(out.pixel_array, phi_ds.pixel_array)


def test_identification_and_method_attributes(phi_ds, deid):
    out = deid.deidentify_dataset(phi_ds)
    assert out.PatientIdentityRemoved == "YES"
    codes = {(c.CodeValue, c.CodingSchemeDesignator) for c in out.DeidentificationMethodCodeSequence}
    assert codes == {("113100", "DCM"), ("113107", "DCM")}
    assert any("Basic Application Confidentiality Profile" in m
               for m in out.DeidentificationMethod)
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"


def test_unlisted_identifiers_are_caught_by_the_safety_net(phi_ds, deid):
    out = deid.deidentify_dataset(phi_ds)
    # the patient's name and ID are cleaned out of kept free text
    assert out.ContentDescription == "Segmentation for"
    assert 0x00142006 not in out  # unlisted PN, Type 3 -> removed
    assert out[0x00640003].value == deid.uid(_phi_uid(0x640003))  # unlisted instance UID
    shift = deid.date_shift("MRN7654321")
    assert out.DateOfLastCalibration == (dt.date(2020, 3, 15) + shift).strftime("%Y%m%d")
    assert "RetrieveURL" not in out


def test_input_dataset_is_not_modified(phi_ds, deid):
    before = copy.deepcopy(phi_ds)
    meta_before = copy.deepcopy(phi_ds.file_meta)
    deid.deidentify_dataset(phi_ds)
    assert phi_ds == before
    assert phi_ds.file_meta == meta_before
    assert phi_ds.PatientName == "Doe^Jane^Q"
    assert phi_ds[0x00291010].value == "PHI private name"


@pytest.mark.parametrize("name", ["MR_small.dcm", "CT_small.dcm", "MR_small_implicit.dcm",
                                  "MR_small_bigendian.dcm", "JPEG2000.dcm"])
def test_real_files_write_and_read_back(name, deid, tmp_path):
    ds = _read(name)
    needles = [str(ds.PatientName).split("^")[0], str(ds.PatientID), str(ds.StudyInstanceUID),
               str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), str(ds.StudyDate)]
    out = deid.deidentify_dataset(ds)
    path = tmp_path / "deid.dcm"
    pydicom.dcmwrite(path, out, enforce_file_format=True)
    back = pydicom.dcmread(path)
    _assert_absent(back, [n for n in needles if len(n) >= 4])
    assert back.SOPInstanceUID == out.SOPInstanceUID == deid.uid(str(ds.SOPInstanceUID))
    assert back.PatientIdentityRemoved == "YES"
    assert back.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    np.testing.assert_array_equal(back.pixel_array, ds.pixel_array)


# --------------------------------------------------------------------------- dciodvfy


def _dciodvfy_errors(path: Path) -> set[str]:
    run = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    errors = set()
    for line in (run.stdout + run.stderr).splitlines():
        if line.startswith("Error"):
            line = re.sub(r"(UID\s+)\S+", r"\1<uid>", line)  # values differ by design
            line = re.sub(r"\b\d+(\.\d+)+\b", "<uid>", line)
            errors.add(re.sub(r'"[^"]*"', '""', line))
    return errors


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) is not installed")
@pytest.mark.parametrize("name, options", [
    ("MR_small.dcm", {}),
    ("CT_small.dcm", {}),
    ("examples_overlay.dcm", {}),  # overlay plane removed as a whole
    ("liver_1frame.dcm", {}),  # a Segmentation (multi-frame, functional groups)
    ("test-SR.dcm", {}),  # Comprehensive SR: content text replaced by dummies
    ("test-SR.dcm", {"clean_structured_content": True}),
    ("rtstruct.dcm", {}),
])
def test_dciodvfy_reports_no_new_errors(name, options, tmp_path):
    ds = _read(name)
    before, after = tmp_path / "in.dcm", tmp_path / "out.dcm"
    pydicom.dcmwrite(before, ds)
    out = Deidentifier(SECRET, **options).deidentify_dataset(ds)
    pydicom.dcmwrite(after, out, enforce_file_format=True)
    new = _dciodvfy_errors(after) - _dciodvfy_errors(before)
    assert not new, f"{name}: de-identification introduced dciodvfy errors: {sorted(new)}"


# ------------------------------------------------------------------- consistency


def _series(deid_source: Dataset, n: int) -> list[Dataset]:
    """``n`` instances of one series of MR_small, the last deriving from the first."""
    out = []
    for i in range(n):
        ds = copy.deepcopy(deid_source)
        ds.SOPInstanceUID = f"{deid_source.SOPInstanceUID}.{i + 1}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        out.append(ds)
    ref = Dataset()
    ref.ReferencedSOPClassUID = out[0].SOPClassUID
    ref.ReferencedSOPInstanceUID = out[0].SOPInstanceUID
    out[-1].SourceImageSequence = Sequence([ref])
    out[-1].ReferencedImageSequence = Sequence([copy.deepcopy(ref)])
    series = Dataset()
    series.SeriesInstanceUID = out[0].SeriesInstanceUID
    series.ReferencedInstanceSequence = Sequence([copy.deepcopy(ref)])
    out[-1].ReferencedSeriesSequence = Sequence([series])
    return out


def test_uids_and_references_consistent_across_datasets_and_instances(deid):
    first, second = _series(_read("MR_small.dcm"), 2)
    a = deid.deidentify_dataset(first)
    b = Deidentifier(SECRET).deidentify_dataset(second)  # another instance, same secret
    assert a.StudyInstanceUID == b.StudyInstanceUID
    assert a.SeriesInstanceUID == b.SeriesInstanceUID
    assert a.FrameOfReferenceUID == b.FrameOfReferenceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert a.PatientID == b.PatientID
    # references from the derived instance resolve to the de-identified source
    assert b.SourceImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    assert b.ReferencedImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    series = b.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == a.SeriesInstanceUID
    assert series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    assert b.SourceImageSequence[0].ReferencedSOPClassUID == first.SOPClassUID


def test_mapping_is_the_same_in_another_process(deid):
    code = (
        "from oncomri.io.deid import Deidentifier;"
        f"d = Deidentifier({SECRET!r});"
        "print(d.pseudonym('MRN7654321'), d.uid('1.2.3.4.5'), d.date_shift('MRN7654321').days)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert run.stdout.split() == [deid.pseudonym("MRN7654321"), deid.uid("1.2.3.4.5"),
                                  str(deid.date_shift("MRN7654321").days)]


def test_date_intervals_between_sessions_preserved(deid):
    base = _read("MR_small.dcm")
    sessions = []
    for date, time in (("20200315", "081500"), ("20200601", "143000"), ("20210110", "235959")):
        ds = copy.deepcopy(base)
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
        ds.AcquisitionTime = time
        ds.AcquisitionDateTime = f"{date}{time}.250000+0100"
        ds.StudyInstanceUID = f"{base.StudyInstanceUID}.{date}"
        sessions.append((ds, deid.deidentify_dataset(ds)))
    shift = deid.date_shift(str(base.PatientID))
    assert -365 <= shift.days <= -1
    day = lambda s: dt.datetime.strptime(str(s)[:8], "%Y%m%d").date()  # noqa: E731
    for ds, out in sessions:
        for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
            assert day(out[keyword].value) == day(ds[keyword].value) + shift, keyword
        assert out.AcquisitionTime == ds.AcquisitionTime  # times kept
        assert day(out.AcquisitionDateTime) == day(ds.AcquisitionDateTime) + shift
        assert str(out.AcquisitionDateTime)[8:] == str(ds.AcquisitionDateTime)[8:]
    intervals_in = [day(b.StudyDate) - day(a.StudyDate) for (a, _), (b, _) in
                    zip(sessions, sessions[1:])]
    intervals_out = [day(b.StudyDate) - day(a.StudyDate) for (_, a), (_, b) in
                     zip(sessions, sessions[1:])]
    assert intervals_in == intervals_out
    assert len({o.StudyInstanceUID for _, o in sessions}) == 3
    assert len({o.PatientID for _, o in sessions}) == 1


def test_date_shift_function_and_full_dates():
    d30 = Deidentifier(SECRET, date_shift_days=lambda pid: -30)
    out = d30.deidentify_dataset(_read("MR_small.dcm"))
    assert out.StudyDate == "20040727"  # 2004-08-26 - 30 days
    full = Deidentifier(SECRET, date_shift_days=lambda pid: 0).deidentify_dataset(
        _read("MR_small.dcm"))
    assert full.StudyDate == "20040826"
    assert full.LongitudinalTemporalInformationModified == "UNMODIFIED"
    codes = {c.CodeValue for c in full.DeidentificationMethodCodeSequence}
    assert codes == {"113100", "113106"}
    with pytest.raises(ValidationError, match="date_shift_days"):
        Deidentifier(SECRET, date_shift_days=lambda pid: 1.5).date_shift("x")
    with pytest.raises(ValidationError, match="date_shift_days"):
        Deidentifier(SECRET, date_shift_days=lambda pid: "soon").date_shift("x")
    with pytest.raises(ValidationError, match="date_shift_days"):
        Deidentifier(SECRET, date_shift_days=30)


def test_secrets_change_every_mapping(deid):
    other = Deidentifier(SECRET + "-other")
    ids = [f"MRN{i:07d}" for i in range(20)]
    assert all(deid.pseudonym(i) != other.pseudonym(i) for i in ids)
    assert deid.uid("1.2.3.4") != other.uid("1.2.3.4")
    assert [deid.date_shift(i) for i in ids] != [other.date_shift(i) for i in ids]
    # and within one secret, different subjects get different pseudonyms
    assert len({deid.pseudonym(i) for i in ids}) == len(ids)
    assert len({deid.date_shift(i) for i in ids}) > 1


def test_primitives_are_deterministic_and_well_formed(deid):
    assert deid.pseudonym("4MR1") == deid.pseudonym(" 4MR1 ") == deid.pseudonym("4MR1")
    assert re.fullmatch(r"sub-[0-9a-f]{8}", deid.pseudonym("4MR1"))
    u = deid.uid("1.3.6.1.4.1.5962.1.2.4.20040826185059.5457")
    assert u == deid.uid("1.3.6.1.4.1.5962.1.2.4.20040826185059.5457\x00")
    assert UID(u).is_valid and len(u) <= 64 and u.startswith("2.25.")
    assert int(u[5:]) >> 76 & 0xF == 8  # a version-8 UUID
    assert isinstance(deid.date_shift("4MR1"), dt.timedelta)
    assert deid.date_shift("4MR1") == deid.date_shift("4MR1")
    assert "secret" not in repr(deid).replace("secret=<hidden>", "")


def test_bad_input_is_refused(deid):
    with pytest.raises(ValidationError, match="secret"):
        Deidentifier("short")
    with pytest.raises(ValidationError, match="secret"):
        Deidentifier(12345678901234567890)
    with pytest.raises(ValidationError, match="patient_id"):
        deid.pseudonym("  ")
    with pytest.raises(ValidationError, match="original_uid"):
        deid.uid("")
    with pytest.raises(ValidationError, match="pydicom Dataset"):
        deid.deidentify_dataset({"PatientID": "x"})
    with pytest.raises(ValidationError, match="meta"):
        deid.deidentify_metadata(["PatientID"])
    anonymous = _read("nested_priv_SQ.dcm")
    with pytest.raises(ValidationError, match="subject_id"):
        deid.deidentify_dataset(anonymous)
    out = deid.deidentify_dataset(anonymous, subject_id="PHANTOM-01")
    assert not [e for _, e in _walk(out) if e.tag.is_private]
    assert out.PatientIdentityRemoved == "YES"


def test_burned_in_annotation_is_refused_unless_allowed(deid):
    ds = _read("MR_small.dcm")
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(ValidationError, match="Burned In Annotation"):
        deid.deidentify_dataset(ds)
    out = Deidentifier(SECRET, allow_burned_in_annotation=True).deidentify_dataset(ds)
    assert out.BurnedInAnnotation == "YES"


def test_overlays_curves_and_private_sequences_removed(deid):
    ds = _read("examples_overlay.dcm")
    assert any(0x6000 <= t >> 16 <= 0x601E for t in _tags(ds))
    out = deid.deidentify_dataset(ds)
    assert not any(0x6000 <= t >> 16 <= 0x601E for t in _tags(out))
    _assert_absent(out, [str(ds.PatientName), str(ds.StudyInstanceUID)])
    ds = _read("nested_priv_SQ.dcm")
    out = deid.deidentify_dataset(ds, subject_id="PHANTOM-01")
    assert not [t for t in _tags(out) if (t >> 16) & 1]


def test_structured_report_content(deid):
    ds = _read("test-SR.dcm")
    texts = [str(e.value) for _, e in _walk(ds) if e.keyword == "TextValue"]
    observers = [str(e.value) for _, e in _walk(ds) if e.keyword == "VerifyingObserverName"]
    assert texts and observers
    plain = deid.deidentify_dataset(ds)
    # without the Clean Structured Content Option all content text is a dummy
    assert {str(e.value) for _, e in _walk(plain) if e.keyword == "TextValue"} == {DUMMY}
    cleaned = Deidentifier(SECRET, clean_structured_content=True).deidentify_dataset(ds)
    kept = [str(e.value) for _, e in _walk(cleaned) if e.keyword == "TextValue"]
    assert kept == texts  # no identifiers in this report's text: kept as is
    concepts = lambda d: [e.value for _, e in _walk(d) if e.keyword == "CodeValue"]  # noqa: E731
    assert concepts(cleaned)[-5:] == concepts(ds)[-5:]
    assert "113104" in {c.CodeValue for c in cleaned.DeidentificationMethodCodeSequence}
    for out in (plain, cleaned):
        _assert_absent(out, [o.split("^")[0] for o in observers] + ["OFFIS e.V."])
        assert all(str(e.value) in (DUMMY, out.PatientName) for _, e in _walk(out)
                   if e.VR == "PN" and e.value)


def test_options_keep_what_they_name():
    ds = _read("MR_small.dcm")
    ds.SeriesDescription = "T2 map CompressedSamples"
    ds.ProtocolName = "R2star_kidney"
    ds.PatientAge = "045Y"
    out = Deidentifier(SECRET, keep_descriptors=True, keep_patient_characteristics=True,
                       keep_device_identity=True,
                       keep_institution_identity=True).deidentify_dataset(ds)
    assert out.SeriesDescription == "T2 map"  # cleaned of the patient's name
    assert out.ProtocolName == "R2star_kidney"
    assert (out.PatientSex, out.PatientWeight, out.PatientAge) == ("F", ds.PatientWeight, "045Y")
    assert out.StationName == ds.StationName and out.DeviceSerialNumber == ds.DeviceSerialNumber
    assert out.InstitutionName == ds.InstitutionName
    assert "ImageComments" not in out  # patient-level free text still goes
    codes = {c.CodeValue for c in out.DeidentificationMethodCodeSequence}
    assert codes == {"113100", "113107", "113105", "113108", "113109", "113112"}
    plain = Deidentifier(SECRET).deidentify_dataset(ds)
    for keyword in ("SeriesDescription", "ProtocolName", "PatientAge", "PatientWeight",
                    "StationName", "DeviceSerialNumber", "InstitutionName"):
        assert keyword not in plain, keyword


def test_type_decides_between_remove_empty_and_dummy(deid):
    # Device Serial Number is X/Z/D: Type 3 in an MR Image -> removed; Type 1 in
    # the Enhanced General Equipment module of a Segmentation -> dummy.
    mr = deid.deidentify_dataset(_read("MR_small.dcm"))
    assert "DeviceSerialNumber" not in mr
    seg = _read("liver_1frame.dcm")
    seg.DeviceSerialNumber = "SN-PHI-123"
    out = deid.deidentify_dataset(seg)
    assert out.DeviceSerialNumber == DUMMY
    # Content Date is Z/D but a date: kept and shifted (Modified Dates Option)
    assert out.ContentDate != seg.ContentDate and len(out.ContentDate) == 8


# ------------------------------------------------------------------------------ metadata


def _sidecar() -> dict:
    return {
        "Modality": "MR", "MagneticFieldStrength": 3, "Manufacturer": "GE",
        "ManufacturersModelName": "DISCOVERY_MR750", "InstitutionName": "PHI_Hospital",
        "InstitutionAddress": "PHI Road 1, Cambridge", "InstitutionalDepartmentName": "PHIRAD",
        "DeviceSerialNumber": "PHI000TXMR", "StationName": "PHISTATION",
        "ReferringPhysicianName": "PHIDOC^House", "PatientName": "Doe^Jane",
        "PatientID": "MRN7654321", "PatientBirthDate": "1970-01-01", "PatientSex": "F",
        "PatientWeight": 70.5, "AccessionNumber": "PHIACC42",
        "StudyInstanceUID": "1.2.826.0.1.3680043.10.543.1",
        "SeriesInstanceUID": "1.2.826.0.1.3680043.10.543.2", "StudyID": "PHISTUDY",
        "SeriesDescription": "T2star Doe", "ProtocolName": "PHI protocol",
        "ProcedureStepDescription": "PHI procedure", "ImageComments": "PHI comment",
        "BodyPartExamined": "KIDNEY", "PatientPosition": "FFS",
        "AcquisitionDateTime": "2020-03-15T10:11:12.500000", "AcquisitionTime": "10:11:12.500000",
        "AcquisitionDate": "20200315", "StudyDate": "2020-03-15", "ContentDate": "20200315",
        "EchoTime": 0.0046, "RepetitionTime": 0.125, "FlipAngle": 25,
        "ImageOrientationPatientDICOM": [1, 0, 0, 0, 0, -1],
        "ImageType": ["ORIGINAL", "PRIMARY"], "SeriesNumber": 16,
        "notes": ["read /data/Doe_Jane/MRN7654321/IM_0001"],
        "bruker": {"SUBJECT_name_string": "PHI mouse 12", "SUBJECT_id": "PHIMOUSE12",
                   "SUBJECT_position": "SUBJ_POS_Prone", "VisuAcqDate": "<2020-03-15T10:11:12,468+0100>",
                   "VisuStudyUid": "1.2.826.0.1.3680043.10.543.3", "PVM_EchoTime": 4.6,
                   "SUBJECT_date": "15 Mar 2020", "OWNER": "PHIuser",
                   "VisuSubjectBirthDate": "<1970-01-01>"},
        "par": {"Patient name": "Doe^Jane", "Examination date/time": "2020.03.15 / 10:11:12",
                "Repetition time [ms]": 125.0},
        "SOPInstanceUIDs": ["1.2.826.0.1.3680043.10.543.4", "1.2.826.0.1.3680043.10.543.5"],
        "array": np.arange(3.0),
    }


def _json_text(meta) -> str:
    return json.dumps(meta, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o))


def test_metadata_loses_phi_and_keeps_quantification(deid):
    meta = _sidecar()
    before = copy.deepcopy(meta)
    out = deid.deidentify_metadata(meta)
    text = _json_text(out)
    for needle in (MARK, "Doe", "Jane", "MRN7654321", "2020-03-15", "20200315", "2020.03.15",
                   "1970", "1.2.826.0.1.3680043.10.543", "House"):
        assert needle.lower() not in text.lower(), needle
    for key in ("InstitutionName", "InstitutionAddress", "DeviceSerialNumber", "StationName",
                "ReferringPhysicianName", "PatientBirthDate", "PatientSex", "PatientWeight",
                "AccessionNumber", "StudyID", "SeriesDescription", "ProtocolName",
                "ProcedureStepDescription", "ImageComments"):
        assert key not in out, key
    for key in ("Modality", "MagneticFieldStrength", "Manufacturer", "ManufacturersModelName",
                "BodyPartExamined", "PatientPosition", "EchoTime", "RepetitionTime", "FlipAngle",
                "ImageOrientationPatientDICOM", "ImageType", "SeriesNumber", "AcquisitionTime"):
        assert out[key] == meta[key], key
    pseudo = deid.pseudonym("MRN7654321")
    assert out["PatientID"] == out["PatientName"] == pseudo
    assert out["StudyInstanceUID"] == deid.uid("1.2.826.0.1.3680043.10.543.1")
    assert out["SOPInstanceUIDs"] == [deid.uid("1.2.826.0.1.3680043.10.543.4"),
                                      deid.uid("1.2.826.0.1.3680043.10.543.5")]
    assert out["bruker"]["SUBJECT_position"] == "SUBJ_POS_Prone"
    assert out["bruker"]["PVM_EchoTime"] == 4.6
    assert set(out["bruker"]) == {"SUBJECT_position", "VisuAcqDate", "VisuStudyUid",
                                  "PVM_EchoTime"}
    assert out["par"] == {"Examination date/time": out["par"]["Examination date/time"],
                          "Repetition time [ms]": 125.0}
    np.testing.assert_array_equal(out["array"], meta["array"])
    assert out["PatientIdentityRemoved"] == "YES"
    assert "Basic Application Confidentiality Profile" in out["DeidentificationMethod"]
    assert meta == {k: v for k, v in before.items() if k != "array"} | {"array": meta["array"]}
    assert meta["PatientName"] == "Doe^Jane" and meta["bruker"]["SUBJECT_id"] == "PHIMOUSE12"


def test_metadata_dates_shift_like_the_dataset_of_the_same_subject(deid):
    shift = deid.date_shift("MRN7654321")
    moved = dt.date(2020, 3, 15) + shift
    out = deid.deidentify_metadata(_sidecar())
    assert out["AcquisitionDateTime"] == moved.isoformat() + "T10:11:12.500000"
    assert out["AcquisitionDate"] == out["ContentDate"] == moved.strftime("%Y%m%d")
    assert out["StudyDate"] == moved.isoformat()
    assert out["bruker"]["VisuAcqDate"] == f"<{moved.isoformat()}T10:11:12,468+0100>"
    assert out["par"]["Examination date/time"] == moved.strftime("%Y.%m.%d") + " / 10:11:12"
    ds = _read("MR_small.dcm")
    ds.PatientID = "MRN7654321"
    ds.StudyDate = "20200315"
    assert deid.deidentify_dataset(ds).StudyDate == out["AcquisitionDate"]
    # subject_id names the subject when the sidecar does not (dcm2niix default)
    bare = {k: v for k, v in _sidecar().items() if k not in ("PatientID", "PatientName")}
    assert deid.deidentify_metadata(bare, subject_id="MRN7654321")["StudyDate"] == \
        moved.isoformat()


def test_metadata_without_subject_drops_dates(deid):
    bare = {k: v for k, v in _sidecar().items() if k not in ("PatientID", "PatientName")}
    out = deid.deidentify_metadata(bare)
    for key in ("AcquisitionDateTime", "AcquisitionDate", "StudyDate", "ContentDate"):
        assert key not in out, key
    assert out["AcquisitionTime"] == "10:11:12.500000"
    assert "PatientID" not in out and "PatientName" not in out


def test_metadata_with_datasets_inside(deid):
    ds = _read("MR_small.dcm")
    out = deid.deidentify_metadata({"PatientID": str(ds.PatientID), "source_datasets": [ds]})
    clean = out["source_datasets"][0]
    assert clean.PatientID == deid.pseudonym(str(ds.PatientID))
    assert clean.SOPInstanceUID == deid.uid(str(ds.SOPInstanceUID))
    assert ds.PatientName == "CompressedSamples^MR1"


def test_real_ge_sidecars(deid, shared_data):
    files = sorted((shared_data / "mgre_kidney_3T" / "ge").glob("*.json"))
    if not files:
        pytest.skip(f"no GE sidecars in {shared_data / 'mgre_kidney_3T' / 'ge'}")
    for path in files:
        meta = json.loads(path.read_text())
        out = deid.deidentify_metadata(meta, subject_id="ukrin-volunteer-1")
        text = json.dumps(out)
        for key in ("InstitutionName", "DeviceSerialNumber", "StationName",
                    "ProcedureStepDescription", "SeriesDescription", "ProtocolName"):
            if key in meta:
                assert key not in out, key
                assert str(meta[key]) not in text, (path.name, key)
        for key in ("EchoTime", "RepetitionTime", "FlipAngle", "MagneticFieldStrength",
                    "Manufacturer", "ManufacturersModelName", "ImageOrientationPatientDICOM",
                    "AcquisitionTime", "SliceThickness", "PixelBandwidth"):
            if key in meta:
                assert out[key] == meta[key], (path.name, key)
        assert out["PatientIdentityRemoved"] == "YES"
