"""The CLI on scanner formats: map straight from a DICOM folder, convert with
de-identification, and one clear line for each kind of bad scanner input."""

import gzip
import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from oncomri.cli.main import main
from oncomri.sim import accuracy_by_value, relaxometry_phantom

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
from dicom_factory import truncate_file, write_classic_series, write_text_sr  # noqa: E402

VALUES = (0.003, 0.01, 0.03, 0.08)
PHI = ("PAT-12345-SECRET", "Synthetic^Phantom", "20200101", "ACC0001", "20250312")


@pytest.fixture(scope="module")
def phantom():
    return relaxometry_phantom(shape=(16, 24, 3), values=VALUES, snr=80, rng=5,
                               voxel_size_mm=(0.5, 0.5, 1.0))


def _series(folder, ph, **kw):
    return write_classic_series(folder, ph.data, ph.affine, echo_times=ph.protocol.echo_times,
                                rescale_slope=0.05, patient_id="PAT-12345-SECRET", **kw)


def _one_error_line(capsys):
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("oncomri: error:"), err
    return err[0]


def test_map_r2star_directly_on_a_dicom_folder(tmp_path, phantom, capsys):
    _series(tmp_path / "dicom", phantom)
    out = tmp_path / "out"
    assert main(["map", "r2star", str(tmp_path / "dicom"), "--out", str(out),
                 "--noise-sigma", str(phantom.sigma), "--quiet"]) == 0
    t2s = list(out.glob("*_T2starmap.nii.gz"))
    assert len(t2s) == 1 and t2s[0].name.startswith("acq-syntheticMr_run-1_")
    img = nib.load(t2s[0])
    np.testing.assert_allclose(img.affine, phantom.affine, atol=1e-4)
    for row in accuracy_by_value(img.get_fdata(), phantom.relaxation_time, values=VALUES):
        assert abs(row.median_bias) < 0.03, row


def test_two_series_need_a_choice(tmp_path, phantom, capsys):
    folder = tmp_path / "study"
    _series(folder, phantom, series_number=3, series_description="mge", prefix="A")
    write_classic_series(folder, phantom.data[..., 0], phantom.affine, series_number=4,
                         series_description="t2w", prefix="B")
    out = tmp_path / "out"
    assert main(["map", "r2star", str(folder), "--out", str(out), "--noise-sigma", "10"]) == 2
    line = _one_error_line(capsys)
    assert "2 series" in line and "--series" in line and "3 (mge)" in line
    assert not out.exists()
    assert main(["map", "r2star", str(folder), "--out", str(out), "--series", "3",
                 "--noise-sigma", "10", "--quiet"]) == 0
    assert main(["map", "r2star", str(folder), "--out", str(out), "--series", "4",
                 "--noise-sigma", "10"]) == 2
    assert "not a multi-echo series" in _one_error_line(capsys)


def test_convert_deidentify_leaves_no_phi(tmp_path, phantom, capsys):
    _series(tmp_path / "dicom", phantom)
    secret = tmp_path / "secret"
    secret.write_text("a-long-enough-project-secret-0123456789\n")
    out = tmp_path / "bids"
    assert main(["convert", str(tmp_path / "dicom"), "--out", str(out), "--deidentify",
                 "--deid-secret", str(secret), "--session", "baseline"]) == 0
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len([p for p in files if p.name.endswith(".nii.gz")]) == len(phantom.protocol.echo_times)
    subjects = [p.name for p in out.iterdir()]
    assert len(subjects) == 1 and subjects[0].startswith("sub-") and "PAT" not in subjects[0]
    for path in files:
        raw = path.read_bytes()
        text = gzip.decompress(raw) if path.name.endswith(".gz") else raw
        for value in PHI:
            assert value.encode() not in text and value not in str(path), (path, value)
    # the same secret gives the same pseudonym on a second run (longitudinal studies)
    assert main(["convert", str(tmp_path / "dicom"), "--out", str(tmp_path / "bids2"),
                 "--deidentify", "--deid-secret", str(secret)]) == 0
    assert [p.name for p in (tmp_path / "bids2").iterdir()] == subjects


def test_convert_a_real_bruker_study(tmp_path, shared_data, capsys):
    out = tmp_path / "bids"
    assert main(["convert", str(shared_data / "bruker_pv51_epi"), "--out", str(out),
                 "--subject", "rat1"]) == 0
    assert "for 3 series" in capsys.readouterr().out
    assert len(list(out.rglob("*.nii.gz"))) == 3


def _bad_dicom_truncated(tmp, ph):
    files = _series(tmp / "in", ph)
    truncate_file(files[5])
    return tmp / "in", "IM"


def _bad_dicom_missing_slice(tmp, ph):
    five = relaxometry_phantom(shape=(8, 8, 5), values=(0.01, 0.02), snr=80, rng=1)
    _series(tmp / "in", five, drop=(2,))  # one of five slices lost on the way to the core lab
    return tmp / "in", "slice"


def _bad_non_image_only(tmp, ph):
    files = _series(tmp / "src", ph)
    import pydicom

    write_text_sr(tmp / "in" / "report.dcm", [pydicom.dcmread(files[0])])
    return tmp / "in", "no image"


def _bad_bruker_without_visu_pars(tmp, ph):
    import os

    root = Path(os.environ.get("ONCOMRI_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
    src = root / "bruker_pv51_epi" / "1"
    if not src.is_dir():
        pytest.skip(f"{src} is absent")
    shutil.copytree(src, tmp / "in")
    (tmp / "in" / "pdata" / "1" / "visu_pars").unlink()
    return tmp / "in", "visu_pars"


def _bad_par_without_rec(tmp, ph):
    par = Path(nib.__file__).parent / "tests" / "data" / "phantom_EPI_asc_CLEAR_2_1.PAR"
    (tmp / "in").mkdir()
    shutil.copy(par, tmp / "in" / par.name)
    return tmp / "in" / par.name, "REC"


def _bad_unknown_type(tmp, ph):
    (tmp / "in").mkdir()
    path = tmp / "in" / "scan.xyz"
    path.write_text("not an image")
    return path, "unknown file type"


@pytest.mark.parametrize("command", ["convert", "map"])
@pytest.mark.parametrize("make", [_bad_dicom_truncated, _bad_dicom_missing_slice, _bad_non_image_only,
                                  _bad_bruker_without_visu_pars, _bad_par_without_rec,
                                  _bad_unknown_type])
def test_bad_scanner_input_gives_one_line_and_writes_nothing(tmp_path, phantom, capsys, command, make):
    path, words = make(tmp_path, phantom)
    out = tmp_path / "out"
    argv = (["convert", str(path), "--out", str(out)] if command == "convert"
            else ["map", "r2star", str(path), "--out", str(out), "--noise-sigma", "5"])
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert words.lower() in line.lower(), line
    assert not out.exists() or not any(out.rglob("*"))


def test_map_writes_dicom_parametric_maps_that_validate(tmp_path, phantom, capsys):
    import subprocess

    import highdicom as hd
    import pydicom

    files = _series(tmp_path / "dicom", phantom)
    out = tmp_path / "out"
    assert main(["map", "r2star", str(tmp_path / "dicom"), "--out", str(out), "--dicom",
                 "--noise-sigma", str(phantom.sigma), "--quiet"]) == 0
    pm_path = out / "dicom" / "acq-syntheticMr_run-1_R2starmap.dcm"
    report = subprocess.run(["dciodvfy", str(pm_path)], capture_output=True, text=True)
    assert "Error" not in report.stdout + report.stderr
    pm = hd.pm.ParametricMap.from_dataset(pydicom.dcmread(pm_path))
    source_uids = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    referenced = {item.ReferencedSOPInstanceUID
                  for frame in pm.PerFrameFunctionalGroupsSequence
                  for derivation in frame.DerivationImageSequence
                  for item in derivation.SourceImageSequence}
    assert referenced <= source_uids and referenced
    nifti = nib.load(out / "acq-syntheticMr_run-1_R2starmap.nii.gz").get_fdata()
    assert np.nanmedian(nifti) > 0 and pm.NumberOfFrames == phantom.data.shape[2]


def test_map_dicom_output_needs_dicom_input(tmp_path, capsys):
    ph = relaxometry_phantom(shape=(8, 11, 1), snr=50)
    img = tmp_path / "me.nii.gz"
    nib.save(nib.Nifti1Image(ph.data, ph.affine), img)
    img.with_name("me.json").write_text(json.dumps({"EchoTime": ph.protocol.echo_times.tolist()}))
    assert main(["map", "r2star", str(img), "--out", str(tmp_path / "o"), "--dicom"]) == 2
    assert "--dicom needs a classic DICOM series" in _one_error_line(capsys)
