"""The demo study on disk (oncomri.study.demo) and the DICOM writer (oncomri.io.dicom_write)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import yaml

from oncomri.core.errors import GeometryError, ValidationError
from oncomri.io import load, load_mask, load_multi_echo, load_nifti
from oncomri.io.dicom_write import write_mr_series
from oncomri.sim.study import TRUTH_COLUMNS
from oncomri.study.demo import write_demo_study

OPTIONS = {"n_subjects": 6, "seed": 1, "shape": (32, 32, 8)}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_study(tmp_path_factory.mktemp("demo") / "study", **OPTIONS)


def _spec(demo) -> dict:
    return yaml.safe_load(demo.spec_path.read_text())


def _fill(pattern: str, subject: str, timepoint: str) -> str:
    return pattern.replace("{subject}", subject).replace("{timepoint}", timepoint)


def _resolve(root: Path, pattern: str) -> list[Path]:
    return sorted(root.glob(pattern)) if any(c in pattern for c in "*?[") else (
        [root / pattern] if (root / pattern).exists() else [])


# --------------------------------------------------------------------------- the spec


def test_spec_follows_the_format(demo):
    spec = _spec(demo)
    study = demo.study
    assert spec["oncomri"] == 1 and spec["name"] == study.design.name
    assert list(spec["arms"]) == ["control", "iv_nk", "ia_nk"]
    assert list(spec["timepoints"]) == ["baseline", "24h", "48h", "8d"]
    assert spec["timepoints"]["baseline"]["time"] == "-1 h"
    assert spec["timepoints"]["8d"]["time"] == "8 d"
    assert spec["baseline"] == "baseline"
    assert {k: v["arm"] for k, v in spec["subjects"].items()} == {
        s.id: s.arm for s in study.design.subjects}
    assert spec["maps"] == {"r2star": {"model": "r2star", "scan": "megre", "method": "ncexp",
                                       "noise_sigma": "auto", "min_snr": 3}}
    assert spec["biomarkers"]["tumour_R2star"] == {"map": "r2star.R2starmap", "roi": "tumour",
                                                   "statistic": "median"}
    assert spec["biomarkers"]["tumour_T2star"]["map"] == "r2star.T2starmap"
    assert spec["biomarkers"]["tumour_volume"] == {"roi": "tumour", "measure": "volume"}
    assert spec["biomarkers"]["tumour_diameter"]["measure"] == "longest_diameter"
    kinds = {a["type"]: a for a in spec["analyses"]}
    assert set(kinds) == {"paired", "between_arms", "correlation", "mixed_model", "response"}
    assert kinds["paired"]["from"] == "baseline" and kinds["paired"]["to"] == "24h"
    assert kinds["between_arms"]["change"] == "percent"
    assert kinds["between_arms"]["correction"] == "tukey"
    assert kinds["correlation"]["arms"] == ["ia_nk"]
    assert kinds["correlation"]["x"] == {"biomarker": "tumour_R2star", "timepoint": "24h",
                                         "change": "absolute"}
    assert kinds["response"]["criteria"] == "volumetric"
    assert "#" in demo.spec_path.read_text()  # commented


def test_every_path_the_spec_names_exists(demo):
    spec = _spec(demo)
    root = demo.spec_path.parent
    n_dicom = 0
    for subject, entry in spec["subjects"].items():
        for timepoint in spec["timepoints"]:
            overrides = (entry.get("sessions") or {}).get(timepoint, {}).get("scans", {})
            for role, scan in spec["scans"].items():
                pattern = overrides.get(role, scan["path"])
                found = _resolve(root, _fill(pattern, subject, timepoint))
                assert found, f"{subject} {timepoint} {role}: nothing at {pattern}"
                if role == "megre":
                    if role in overrides:
                        n_dicom += 1
                        assert found[0].is_dir() and len(list(found[0].glob("*.dcm"))) == 96
                    else:
                        assert len(found) == 12
            for roi in spec["rois"].values():
                assert _resolve(root, _fill(roi["mask"], subject, timepoint))
    assert n_dicom == 4 and demo.dicom_subject in spec["subjects"]
    assert spec["subjects"][demo.dicom_subject]["arm"] == "ia_nk"


def test_spec_loads_with_load_spec(demo):
    if importlib.util.find_spec("oncomri.study.spec") is None:
        pytest.skip("oncomri.study.spec is not written yet")
    from oncomri.study.spec import load_spec

    design = load_spec(demo.spec_path).design()
    ours = demo.study.design
    assert design.arm_names == ours.arm_names
    assert [(t.name, t.time_s) for t in design.timepoints] == [
        (t.name, t.time_s) for t in ours.timepoints]
    assert [(s.id, s.arm) for s in design.subjects] == [(s.id, s.arm) for s in ours.subjects]
    assert design.sessions == ours.sessions


# --------------------------------------------------------------------------- the files


def test_files_read_back_as_simulated(demo):
    root = demo.spec_path.parent
    for (sub, tp), ses in demo.study.sessions.items():
        anat = root / f"sub-{sub}" / f"ses-{tp}" / "anat"
        stem = f"sub-{sub}_ses-{tp}"
        if sub == demo.dicom_subject:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                vol = load(root / "sourcedata" / "dicom" / f"sub-{sub}" / f"ses-{tp}")
            slope = float(pydicom.dcmread(vol.sources[0], stop_before_pixels=True).RescaleSlope)
            np.testing.assert_allclose(vol.data, ses.megre, rtol=0,
                                       atol=0.5 * slope + 1e-6 * ses.megre.max())
            assert not list(anat.glob("*MEGRE*"))
        else:
            vol = load_multi_echo(sorted(anat.glob(f"{stem}_echo-*_MEGRE.nii.gz")))
            np.testing.assert_array_equal(vol.data, ses.megre)
            sidecar = json.loads((anat / f"{stem}_echo-3_MEGRE.json").read_text())
            assert sidecar["EchoTime"] == pytest.approx(ses.echo_times_s[2])
            assert sidecar["MagneticFieldStrength"] == 7.0
        np.testing.assert_allclose(vol.affine, ses.megre_affine, atol=1e-4)
        np.testing.assert_allclose(vol.protocol.echo_times, ses.echo_times_s, atol=1e-9)
        t2w = load_nifti(anat / f"{stem}_T2w.nii.gz")
        np.testing.assert_array_equal(t2w.data, ses.t2w)
        np.testing.assert_allclose(t2w.affine, ses.t2w_affine, atol=1e-5)
        mask = load_mask(anat / f"{stem}_label-tumour_mask.nii.gz", like=t2w)
        np.testing.assert_array_equal(mask, ses.tumour_mask)


def test_truth_csv(demo):
    truth = pd.read_csv(demo.truth_path, keep_default_na=False, na_values=[""])
    assert tuple(truth.columns) == TRUTH_COLUMNS
    ours = demo.study.truth
    assert len(truth) == len(ours)
    np.testing.assert_allclose(truth.value.to_numpy(), ours.value.to_numpy(), rtol=1e-9)
    assert list(truth.biomarker) == list(ours.biomarker)
    per_session = truth[truth.timepoint.notna()]
    assert set(per_session.timepoint) == {"baseline", "24h", "48h", "8d"}
    r2 = per_session[per_session.biomarker == "tumour_R2star"]
    assert len(r2) == 24 and set(r2.unit) == {"1/s"}


def _digest(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_writes_are_deterministic(demo, tmp_path):
    again = write_demo_study(tmp_path / "again", **OPTIONS)
    assert _digest(again.spec_path.parent) == _digest(demo.spec_path.parent)


def test_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "x.txt").write_text("keep me")
    with pytest.raises(ValidationError, match="not empty"):
        write_demo_study(tmp_path, n_subjects=6, shape=(24, 24, 6))
    with pytest.raises(ValidationError, match="dicom_subject"):
        write_demo_study(tmp_path / "new", n_subjects=6, shape=(24, 24, 6),
                         dicom_subject="rat99")


# --------------------------------------------------------------------------- the DICOM writer


def _oblique_affine(voxel=(0.8, 1.1, 2.5), origin=(12.0, -40.0, 7.5)) -> np.ndarray:
    a, b = np.deg2rad(25.0), np.deg2rad(-10.0)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ rx @ np.diag([-1.0, -1.0, 1.0]) @ np.diag(voxel)
    aff[:3, 3] = origin
    return aff


@pytest.fixture(scope="module")
def series():
    rng = np.random.default_rng(5)
    te = np.array([0.002, 0.0045, 0.007, 0.0095])
    data = (rng.uniform(0, 900, (20, 14, 6, 1)) * np.exp(-te * 40.0)).astype(np.float32)
    return data, _oblique_affine(), te


def test_dicom_round_trip(tmp_path, series):
    data, affine, te = series
    paths = write_mr_series(tmp_path / "mge", data, affine, echo_times_s=te, series_number=7,
                            series_description="mge_test", uid_seed="t")
    assert len(paths) == 6 * 4
    vol = load(tmp_path / "mge")
    first = pydicom.dcmread(paths[0])
    assert first.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
    assert float(first.EchoTime) == pytest.approx(2.0)            # ms
    assert first.PixelRepresentation == 0 and first.BitsAllocated == 16
    slope = float(first.RescaleSlope)
    assert slope == pytest.approx(data.max() / 65535, rel=1e-3)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-4)
    np.testing.assert_allclose(vol.protocol.echo_times, te, atol=1e-9)
    assert vol.data.shape == data.shape
    # within half a quantisation step (plus float32 rounding of the values read back)
    np.testing.assert_allclose(vol.data, data, rtol=0, atol=0.5 * slope + 1e-6 * data.max())
    assert vol.meta["SeriesNumber"] == 7


def test_dicom_signed_and_3d(tmp_path):
    rng = np.random.default_rng(2)
    data = rng.normal(0, 100, (9, 7, 3))
    affine = _oblique_affine((1.0, 1.0, 1.5))
    paths = write_mr_series(tmp_path / "s", data, affine, echo_time_s=0.01)
    ds = pydicom.dcmread(paths[0])
    assert ds.PixelRepresentation == 1 and float(ds.RescaleIntercept) == 0.0
    vol = load(tmp_path / "s")
    np.testing.assert_allclose(vol.data, data, rtol=0,
                               atol=0.5 * float(ds.RescaleSlope) + 1e-6 * np.abs(data).max())
    np.testing.assert_allclose(vol.affine, affine, atol=1e-4)
    ints = np.arange(4 * 5 * 2).reshape(4, 5, 2) * 3
    paths = write_mr_series(tmp_path / "i", ints, np.eye(4), echo_time_s=0.01)
    assert float(pydicom.dcmread(paths[0]).RescaleSlope) == 1.0
    np.testing.assert_array_equal(load(tmp_path / "i").data, ints)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"echo_times_s": None}, ValidationError, "echo_times_s"),
    ({"echo_times_s": [0.002, 0.004]}, ValidationError, "2 values for 3"),
    ({"echo_times_s": [2.0, 4.0, 6.0]}, ValidationError, "not ms"),
    ({"echo_times_s": [0.004, 0.002, 0.006]}, ValidationError, "increasing"),
    ({"affine": np.array([[1, 0, 0.5, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])},
     GeometryError, "perpendicular"),
    ({"data": np.zeros((4, 4))}, ValidationError, "3D"),
])
def test_dicom_writer_rejects_bad_input(tmp_path, kwargs, error, match):
    args = {"data": np.ones((4, 4, 2, 3)), "affine": np.eye(4),
            "echo_times_s": [0.002, 0.004, 0.006], **kwargs}
    with pytest.raises(error, match=match):
        write_mr_series(tmp_path / "x", args.pop("data"), args.pop("affine"), **args)


def test_dicom_matches_dcm2niix(tmp_path, series):
    found = shutil.which("dcm2niix")
    if found is None:
        pytest.skip("dcm2niix is not on PATH")
    data, affine, te = series
    write_mr_series(tmp_path / "in", data, affine, echo_times_s=te, uid_seed="d")
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([found, "-b", "y", "-z", "n", "-f", "%s_%e", "-o", str(out),
                           str(tmp_path / "in")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    images = sorted(out.glob("*.nii"),
                    key=lambda p: json.loads(p.with_suffix(".json").read_text())["EchoTime"])
    assert len(images) == 4
    ours = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    for m, path in enumerate(images):
        theirs = nib.as_closest_canonical(nib.load(path))
        np.testing.assert_allclose(theirs.affine, ours.affine, atol=1e-3)
        assert theirs.shape[:3] == ours.shape[:3]
        sidecar = json.loads(path.with_suffix(".json").read_text())
        assert sidecar["EchoTime"] == pytest.approx(te[m], abs=1e-6)
        assert sidecar["MagneticFieldStrength"] == pytest.approx(7.0)
        tdata = np.asarray(theirs.dataobj, dtype=np.float64).reshape(ours.shape[:3])
        slope = float(data.max() / 65535)
        np.testing.assert_allclose(tdata, np.asarray(ours.dataobj)[..., m], atol=0.6 * slope
                                   + 1e-3)
