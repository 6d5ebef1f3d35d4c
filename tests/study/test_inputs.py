"""Tests of oncomri.study.inputs: resolving the files of every session before a run."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from oncomri.core.errors import ReadError
from oncomri.study.inputs import (
    ResolvedRoi,
    ResolvedScan,
    content_hash,
    natural_key,
    resolve_sessions,
)
from oncomri.study.spec import SpecError, load_spec

SHAPE = (8, 8, 4)
AFFINE = np.diag([0.5, 0.5, 1.0, 1.0])
AFFINE[:3, 3] = [-2.0, -2.0, 0.0]
ECHOES = (1, 2, 10)   # echo-10 must come after echo-2

SPEC = """\
oncomri: 1
name: inputs test
arms:
  control: {description: saline}
  treated: {description: NK cells}
timepoints:
  baseline: {time: -1 h}
  24h: {time: 24 h}
subjects:
  rat01: {arm: control}
  rat02:
    arm: treated
    sessions:
      24h:
        scans: {megre: "other/rat02_{timepoint}_echo-*.nii.gz"}
scans:
  megre:
    path: "sub-{subject}/ses-{timepoint}/anat/sub-{subject}_ses-{timepoint}_echo-*_MEGRE.nii.gz"
    echo_times: "4,8,12ms"
  t2w:
    path: "sub-{subject}/ses-{timepoint}/anat/sub-{subject}_ses-{timepoint}_T2w.nii.gz"
rois:
  tumour:
    on: t2w
    mask: "sub-{subject}/ses-{timepoint}/anat/sub-{subject}_ses-{timepoint}_label-tumour_mask.nii.gz"
    label: 1
  liver:
    on: t2w
    seed: [0.0, 0.0, 1.0]
  muscle:
    on: megre
    propagate: {from: baseline}
biomarkers:
  tumour_volume: {roi: tumour, measure: volume}
"""

SUBJECTS = ("rat01", "rat02")
TIMEPOINTS = ("baseline", "24h")


def save(path: Path, data, affine=AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), path)
    return path


def line_with(text: str, marker: str) -> int:
    return next(i + 1 for i, line in enumerate(text.splitlines()) if marker in line)


def make_study(root: Path, spec_text: str = SPEC) -> Path:
    """A tiny study: 2 rats x 2 timepoints, 3-echo MEGRE, T2w and a tumour mask."""
    rng = np.random.default_rng(0)
    for sub in SUBJECTS:
        for ses in TIMEPOINTS:
            anat = root / f"sub-{sub}" / f"ses-{ses}" / "anat"
            stem = f"sub-{sub}_ses-{ses}"
            for e in ECHOES:
                save(anat / f"{stem}_echo-{e}_MEGRE.nii.gz", rng.random(SHAPE).astype(np.float32))
            save(anat / f"{stem}_T2w.nii.gz", rng.random(SHAPE).astype(np.float32))
            mask = np.zeros(SHAPE, np.uint8)
            mask[2:5, 2:5, 1:3] = 1
            save(anat / f"{stem}_label-tumour_mask.nii.gz", mask)
    for e in ECHOES:
        save(root / "other" / f"rat02_24h_echo-{e}.nii.gz", rng.random(SHAPE).astype(np.float32))
    spec = root / "study.yaml"
    spec.write_text(spec_text)
    return spec


def resolve_error(spec_path: Path, **kw) -> SpecError:
    spec = load_spec(spec_path)
    with pytest.raises(SpecError) as info:
        resolve_sessions(spec, **kw)
    return info.value


def test_resolves_every_session_in_design_order(tmp_path):
    spec = load_spec(make_study(tmp_path, with_muscle_seeds()))
    sessions = resolve_sessions(spec)
    assert [(s.subject, s.timepoint) for s in sessions] == list(spec.design().sessions)
    assert [(s.subject, s.timepoint) for s in sessions] == [
        ("rat01", "baseline"), ("rat01", "24h"), ("rat02", "baseline"), ("rat02", "24h")]
    first = sessions[0]
    assert first.arm == "control" and first.time_s == -3600.0
    megre = first.scans["megre"]
    assert isinstance(megre, ResolvedScan)
    assert megre.echo_times == "4,8,12ms" and megre.series is None
    assert [p.name for p in megre.paths] == [
        f"sub-rat01_ses-baseline_echo-{e}_MEGRE.nii.gz" for e in ECHOES]
    assert all(p.is_absolute() and p.is_file() for p in megre.paths)
    assert first.scans["t2w"].paths == (
        tmp_path / "sub-rat01/ses-baseline/anat/sub-rat01_ses-baseline_T2w.nii.gz",)

    tumour = first.rois["tumour"]
    assert isinstance(tumour, ResolvedRoi)
    assert (tumour.kind, tumour.on, tumour.label) == ("mask", "t2w", 1)
    assert tumour.mask_path.name == "sub-rat01_ses-baseline_label-tumour_mask.nii.gz"
    liver = first.rois["liver"]
    assert (liver.kind, liver.seed_mm, liver.method, liver.mask_path) == (
        "seed", (0.0, 0.0, 1.0), "region_growing", None)


def test_per_session_override_replaces_the_pattern(tmp_path):
    spec = load_spec(make_study(tmp_path, with_muscle_seeds()))
    sessions = {(s.subject, s.timepoint): s for s in resolve_sessions(spec)}
    megre = sessions[("rat02", "24h")].scans["megre"]
    assert [p.name for p in megre.paths] == [f"rat02_24h_echo-{e}.nii.gz" for e in ECHOES]
    assert megre.echo_times == "4,8,12ms"          # inherited from the study pattern
    assert megre.field == ("subjects", "rat02", "sessions", "24h", "scans", "megre")
    assert sessions[("rat02", "baseline")].scans["megre"].field == ("scans", "megre", "path")


def test_propagated_roi_needs_a_source_roi_of_its_own(tmp_path):
    # at baseline the muscle ROI would be propagated from itself
    spec_path = make_study(tmp_path)
    err = resolve_error(spec_path)
    assert err.line == line_with(SPEC, "propagate: {from: baseline}")
    assert err.field == "rois.muscle.propagate.from"
    assert "itself propagated" in str(err)
    assert "subjects.rat01.sessions.baseline.rois.muscle" in str(err)


def with_muscle_seeds(text: str = SPEC) -> str:
    text = text.replace("  rat01: {arm: control}",
                        "  rat01:\n    arm: control\n    sessions:\n      baseline:\n"
                        "        rois: {muscle: {seed: [1.0, 1.0, 1.0]}}")
    return text.replace("    sessions:\n      24h:\n",
                        "    sessions:\n      baseline:\n"
                        "        rois: {muscle: {seed: [1, 1, 1]}}\n      24h:\n")


def test_propagation_from_a_session_with_its_own_roi(tmp_path):
    spec = load_spec(make_study(tmp_path, with_muscle_seeds()))
    sessions = {(s.subject, s.timepoint): s for s in resolve_sessions(spec)}
    base = sessions[("rat01", "baseline")].rois["muscle"]
    later = sessions[("rat01", "24h")].rois["muscle"]
    assert (base.kind, base.on, base.seed_mm) == ("seed", "megre", (1.0, 1.0, 1.0))
    assert (later.kind, later.propagate_from) == ("propagate", "baseline")


def test_propagation_from_a_missing_session(tmp_path):
    text = with_muscle_seeds().replace("    arm: control\n",
                                       "    arm: control\n    missing: {baseline: no scan}\n")
    own_seed = "    sessions:\n      baseline:\n        rois: {muscle: {seed: [1.0, 1.0, 1.0]}}\n"
    assert own_seed in text
    text = text.replace(own_seed, "", 1)
    err = resolve_error(make_study(tmp_path, text))
    assert err.line == line_with(text, "propagate: {from: baseline}")
    assert "rat01 has no session at baseline" in str(err)


def test_no_file_matches(tmp_path):
    spec_path = make_study(tmp_path, with_muscle_seeds())
    (tmp_path / "sub-rat01/ses-24h/anat/sub-rat01_ses-24h_T2w.nii.gz").unlink()
    err = resolve_error(spec_path)
    text = spec_path.read_text()
    assert err.line == line_with(text, "_T2w.nii.gz")
    assert err.field == "scans.t2w.path"
    assert "sub-rat01/ses-24h/anat/sub-rat01_ses-24h_T2w.nii.gz" in str(err)
    assert "subjects.rat01.missing" in str(err)
    assert str(err).startswith(f"{spec_path}:{err.line}: scans.t2w.path: no file matches")


def test_no_file_matches_an_override(tmp_path):
    spec_path = make_study(tmp_path, with_muscle_seeds())
    for f in (tmp_path / "other").iterdir():
        f.unlink()
    err = resolve_error(spec_path)
    text = spec_path.read_text()
    assert err.line == line_with(text, "other/rat02_{timepoint}")
    assert err.field == "subjects.rat02.sessions.24h.scans.megre"
    assert "other/rat02_24h_echo-*.nii.gz" in str(err)


def test_missing_roi_mask(tmp_path):
    spec_path = make_study(tmp_path, with_muscle_seeds())
    anat = tmp_path / "sub-rat02/ses-baseline/anat"
    (anat / "sub-rat02_ses-baseline_label-tumour_mask.nii.gz").unlink()
    err = resolve_error(spec_path)
    assert err.line == line_with(spec_path.read_text(), "_label-tumour_mask")
    assert err.field == "rois.tumour.mask"
    assert "ROI tumour: no mask file matches" in str(err)
    assert "sub-rat02_ses-baseline_label-tumour_mask.nii.gz" in str(err)


def test_roi_mask_on_another_grid(tmp_path):
    spec_path = make_study(tmp_path, with_muscle_seeds())
    bad = tmp_path / "sub-rat02/ses-24h/anat/sub-rat02_ses-24h_label-tumour_mask.nii.gz"
    save(bad, np.ones((10, 10, 4), np.uint8))     # voxels outside the T2w image
    err = resolve_error(spec_path)
    assert err.line == line_with(spec_path.read_text(), "_label-tumour_mask")
    assert err.field == "rois.tumour.mask"
    message = str(err)
    assert "shape (10, 10, 4)" in message and "shape (8, 8, 4)" in message
    assert "sub-rat02_ses-24h_T2w.nii.gz" in message
    # the geometry check can be switched off
    sessions = resolve_sessions(load_spec(spec_path), check_geometry=False)
    assert len(sessions) == 4


def test_roi_mask_with_shifted_origin_is_refused(tmp_path):
    spec_path = make_study(tmp_path, with_muscle_seeds())
    bad = tmp_path / "sub-rat01/ses-baseline/anat/sub-rat01_ses-baseline_label-tumour_mask.nii.gz"
    shifted = AFFINE.copy()
    shifted[0, 3] += 0.2            # 0.4 voxel: not the same grid, no exact re-gridding
    save(bad, np.ones(SHAPE, np.uint8), shifted)
    err = resolve_error(spec_path)
    assert err.field == "rois.tumour.mask" and "differs from the grid" in str(err)


def test_roi_mask_flipped_onto_the_same_grid_is_accepted(tmp_path):
    """A mask stored with a flipped axis is the same grid (load_roi puts it back exactly)."""
    spec_path = make_study(tmp_path, with_muscle_seeds())
    f = tmp_path / "sub-rat01/ses-baseline/anat/sub-rat01_ses-baseline_label-tumour_mask.nii.gz"
    mask = np.asarray(nib.load(f).dataobj)
    flip = AFFINE.copy()
    flip[:, 0] = -AFFINE[:, 0]
    flip[:3, 3] = AFFINE[:3, :3] @ [SHAPE[0] - 1, 0, 0] + AFFINE[:3, 3]
    save(f, mask[::-1].copy(), flip)
    assert len(resolve_sessions(load_spec(spec_path))) == 4


def test_scan_pattern_matching_several_folders(tmp_path):
    text = with_muscle_seeds().replace(
        'scans: {megre: "other/rat02_{timepoint}_echo-*.nii.gz"}', 'scans: {megre: "dicom/*"}')
    spec_path = make_study(tmp_path, text)
    (tmp_path / "dicom/s1").mkdir(parents=True)
    (tmp_path / "dicom/s2").mkdir()
    err = resolve_error(spec_path, check_geometry=False)
    assert err.field == "subjects.rat02.sessions.24h.scans.megre"
    assert "2 folder(s)" in str(err)


def test_natural_key_orders_numbers_by_value():
    names = ["echo-10.nii", "echo-2.nii", "echo-1.nii"]
    assert sorted(names, key=natural_key) == ["echo-1.nii", "echo-2.nii", "echo-10.nii"]


# --------------------------------------------------------------------------- content_hash


def test_content_hash_depends_on_content_not_location(tmp_path):
    a = tmp_path / "a" / "series"
    b = tmp_path / "b" / "series"
    for root in (a, b):
        (root / "sub").mkdir(parents=True)
        (root / "one.dcm").write_bytes(b"\x00" * 10 + b"one")
        (root / "sub" / "two.dcm").write_bytes(bytes(range(256)) * 5000)   # > 1 MiB
    (b / ".DS_Store").write_bytes(b"junk")                                   # hidden: skipped
    (b / ".git").mkdir()
    (b / ".git" / "x").write_bytes(b"junk")
    assert content_hash(a) == content_hash(b)
    assert len(content_hash(a)) == 64

    (b / "sub" / "two.dcm").write_bytes(bytes(range(256)) * 4999 + bytes(255) + b"\x01")
    assert content_hash(a) != content_hash(b)


def test_content_hash_of_files_is_order_independent(tmp_path):
    f1 = tmp_path / "echo-1.nii"
    f2 = tmp_path / "echo-2.nii"
    f1.write_bytes(b"first")
    f2.write_bytes(b"second")
    assert content_hash([f1, f2]) == content_hash([f2, f1])
    assert content_hash([f1, f2]) != content_hash([f1])
    # names count: the same bytes under other names are other inputs
    f3 = tmp_path / "echo-3.nii"
    f3.write_bytes(b"first")
    assert content_hash([f1]) != content_hash([f3])
    with pytest.raises(ReadError):
        content_hash([tmp_path / "absent.nii"])


def test_resolved_sessions_hash_their_inputs(tmp_path):
    spec = load_spec(make_study(tmp_path, with_muscle_seeds()))
    sessions = resolve_sessions(spec)
    hashes = {content_hash(s.scans["megre"].paths) for s in sessions}
    assert len(hashes) == 4          # random data differs between sessions
    json.dumps(sorted(hashes))
