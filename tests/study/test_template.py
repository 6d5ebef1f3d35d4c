"""Tests of oncomri.study.template: a spec written from a folder loads as written."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from oncomri.core.errors import ValidationError
from oncomri.study.inputs import resolve_sessions
from oncomri.study.spec import load_spec
from oncomri.study.template import write_template

SHAPE = (8, 8, 4)
AFFINE = np.diag([0.5, 0.5, 1.0, 1.0])
OTHER_AFFINE = np.diag([0.25, 0.25, 1.0, 1.0])   # the MEGRE grid differs from the T2w grid


def save(path: Path, data, affine=AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), path)


def make_bids(root: Path, sessions: dict, *, masks=True, sidecars=True) -> Path:
    """sub-*/ses-*/anat with a 3-echo MEGRE (own grid), a T2w and a tumour mask on the T2w."""
    rng = np.random.default_rng(2)
    for sub, labels in sessions.items():
        for ses in labels:
            anat = root / f"sub-{sub}" / f"ses-{ses}" / "anat"
            stem = f"sub-{sub}_ses-{ses}"
            for e in (1, 2, 3):
                save(anat / f"{stem}_echo-{e}_MEGRE.nii.gz",
                     rng.random(SHAPE).astype(np.float32), OTHER_AFFINE)
                if sidecars:
                    (anat / f"{stem}_echo-{e}_MEGRE.json").write_text(
                        json.dumps({"EchoTime": 0.004 * e}))
            save(anat / f"{stem}_T2w.nii.gz", rng.random(SHAPE).astype(np.float32))
            if masks:
                mask = np.zeros(SHAPE, np.uint8)
                mask[2:5, 2:5, 1:3] = 1
                save(anat / f"{stem}_label-tumour_mask.nii.gz", mask)
    return root


SESSIONS = {"rat01": ("baseline", "24h", "8d"), "rat02": ("baseline", "24h"),
            "rat10": ("baseline", "24h", "8d")}


def test_round_trip_loads_and_resolves(tmp_path):
    root = make_bids(tmp_path / "bids", SESSIONS)
    out = write_template(root, root / "study.yaml")
    assert out == root / "study.yaml"
    spec = load_spec(out)
    design = spec.design()

    assert [s.id for s in design.subjects] == ["rat01", "rat02", "rat10"]
    assert [(t.name, t.time_s) for t in design.timepoints] == [
        ("baseline", 0.0), ("24h", 24 * 3600.0), ("8d", 8 * 86400.0)]
    assert design.baseline == "baseline"
    assert design.arm_names == ("control",)
    expected = [(s, t) for s in SESSIONS for t in ("baseline", "24h", "8d") if t in SESSIONS[s]]
    assert list(design.sessions) == expected
    assert "8d" in spec.subjects["rat02"].missing

    assert set(spec.scans) == {"megre", "t2w"}
    assert "echo-*" in spec.scans["megre"].path
    assert spec.scans["megre"].echo_times is None          # sidecars carry them
    assert spec.rois["tumour"].on == "t2w"                 # the scan with the mask's grid
    assert spec.maps["r2star"].model == "r2star" and spec.maps["r2star"].scan == "megre"
    assert {b.map for b in spec.biomarkers.values()} >= {"r2star.R2starmap", "r2star.T2starmap"}
    assert any(b.measure == "volume" for b in spec.biomarkers.values())
    assert spec.analyses, "example analyses are written"

    sessions = resolve_sessions(spec)
    assert len(sessions) == len(expected)
    first = sessions[0]
    assert [p.name for p in first.scans["megre"].paths] == [
        f"sub-rat01_ses-baseline_echo-{e}_MEGRE.nii.gz" for e in (1, 2, 3)]
    assert first.rois["tumour"].mask_path.name == "sub-rat01_ses-baseline_label-tumour_mask.nii.gz"


def test_every_section_is_commented(tmp_path):
    root = make_bids(tmp_path / "bids", SESSIONS)
    text = write_template(root, root / "study.yaml").read_text()
    top = [line for line in text.splitlines() if line and not line.startswith((" ", "#"))]
    keys = [line.split(":")[0] for line in top]
    assert keys[:2] == ["oncomri", "name"]
    for key in ("arms", "timepoints", "subjects", "scans", "rois", "maps", "biomarkers",
                "analyses"):
        assert key in keys
    assert all("#" in line for line in top), [line for line in top if "#" not in line]
    assert "define the real arms" in text
    assert text.count("TODO") >= 3


def test_spec_outside_the_folder_uses_relative_paths(tmp_path):
    root = make_bids(tmp_path / "data" / "bids", {"m1": ("pre", "d7"), "m2": ("pre", "d7")})
    out = write_template(root, tmp_path / "specs" / "study.yaml")
    spec = load_spec(out)
    assert spec.scans["t2w"].path.startswith("../data/bids/sub-{subject}/")
    assert [(t.name, t.time_s) for t in spec.design().timepoints] == [("pre", 0.0),
                                                                      ("d7", 7 * 86400.0)]
    assert len(resolve_sessions(spec)) == 4


def test_without_masks_a_seed_roi_and_without_sidecars_echo_times_todo(tmp_path):
    root = make_bids(tmp_path / "bids", {"r1": ("01", "02")}, masks=False, sidecars=False)
    out = write_template(root, root / "study.yaml")
    text = out.read_text()
    spec = load_spec(out)
    roi = next(iter(spec.rois.values()))
    assert roi.seed is not None and roi.on == "t2w"
    # the seed is the centre of the T2w image, in world mm
    centre = (AFFINE @ np.append((np.array(SHAPE) - 1) / 2.0, 1.0))[:3]
    assert np.allclose(roi.seed, centre)
    assert "echo_times: null" in text and "EchoTime" in text
    # labels without a time: ordered, marked TODO
    assert spec.design().timepoint_names == ("01", "02")
    assert "only the order was guessed" in text
    assert len(resolve_sessions(spec)) == 2


def test_scanner_folders_become_scans(tmp_path):
    root = make_bids(tmp_path / "bids", {"r1": ("1d", "2d"), "r2": ("1d", "2d")})
    for sub in ("r1", "r2"):
        for ses in ("1d", "2d"):
            series = root / f"sub-{sub}" / f"ses-{ses}" / "dicom_dwi"
            series.mkdir(parents=True)
            (series / "IM0001.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    out = write_template(root, root / "study.yaml")
    spec = load_spec(out)
    assert spec.scans["dicom_dwi"].path == "sub-{subject}/ses-{timepoint}/dicom_dwi"
    assert "series: null" in out.read_text()
    sessions = resolve_sessions(spec)
    assert sessions[0].scans["dicom_dwi"].paths == (root / "sub-r1/ses-1d/dicom_dwi",)


def test_scans_missing_in_some_sessions_are_commented_out(tmp_path):
    root = make_bids(tmp_path / "bids", {"r1": ("1d", "2d"), "r2": ("1d", "2d")})
    save(root / "sub-r1/ses-1d/anat/sub-r1_ses-1d_FLAIR.nii.gz", np.zeros(SHAPE, np.float32))
    out = write_template(root, root / "study.yaml")
    spec = load_spec(out)
    assert "flair" not in spec.scans
    assert "# flair:" in out.read_text()
    assert len(resolve_sessions(spec)) == 4


def test_refuses_to_overwrite_without_force(tmp_path):
    root = make_bids(tmp_path / "bids", {"r1": ("1d", "2d")})
    out = root / "study.yaml"
    out.write_text("my spec")
    with pytest.raises(ValidationError) as info:
        write_template(root, out)
    assert str(out) in str(info.value) and "--force" in str(info.value)
    assert out.read_text() == "my spec"
    write_template(root, out, force=True)
    assert load_spec(out).name == "bids"


def test_folder_without_sessions(tmp_path):
    (tmp_path / "empty" / "sub-1").mkdir(parents=True)
    with pytest.raises(ValidationError, match="no sessions with scans"):
        write_template(tmp_path / "empty", tmp_path / "study.yaml")
    assert not (tmp_path / "study.yaml").exists()
