"""``oncomri run`` / ``init`` / ``export`` from the command line, and bad study input.

Every bad spec must give exit status 2 and one line naming the spec file, the
line and the field, with the database left exactly as it was.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from oncomri.cli.main import main
from oncomri.study.demo import write_demo_study


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    """A small demo study, run once (its database exists and is complete)."""
    root = tmp_path_factory.mktemp("run-cli")
    demo = write_demo_study(root / "study", n_subjects=6, seed=5)
    assert main(["run", str(demo.spec_path), "--scheduler", "synchronous", "--quiet"]) == 0
    return demo.spec_path


@pytest.fixture
def study(finished_study, tmp_path):
    folder = tmp_path / "study"
    shutil.copytree(finished_study.parent, folder)
    return folder / "study.yaml"


def _database(spec: Path) -> Path:
    return spec.parent / "derivatives" / "study.sqlite"


def _fingerprint(spec: Path) -> str:
    """Hash of every file of the database (main file, WAL and shared memory if present)."""
    digest = hashlib.sha256()
    for path in sorted(_database(spec).parent.glob("study.sqlite*")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _line_of(spec: Path, pattern: str) -> int:
    for number, line in enumerate(spec.read_text().splitlines(), start=1):
        if re.search(pattern, line):
            return number
    raise AssertionError(f"{pattern!r} not in {spec}")


def _run_bad(spec: Path, capsys) -> str:
    before = _fingerprint(spec)
    capsys.readouterr()
    status = main(["run", str(spec), "--scheduler", "synchronous", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert _fingerprint(spec) == before, "the database changed"
    return err


def test_unknown_key(study, capsys):
    text = study.read_text().replace("  tumour_volume:   {roi: tumour, measure: volume}",
                                     "  tumour_volume:   {roi: tumour, mesure: volume}")
    study.write_text(text)
    err = _run_bad(study, capsys)
    line = _line_of(study, "mesure: volume")
    assert f"study.yaml:{line}:" in err and "biomarkers.tumour_volume" in err
    assert "mesure" in err and "measure" in err  # the fix: did you mean 'measure'


def test_missing_file(study, capsys):
    t2w = next(study.parent.glob("sub-*/ses-48h/anat/*_T2w.nii.gz"))
    t2w.unlink()
    err = _run_bad(study, capsys)
    line = _line_of(study, r"_T2w\.nii\.gz")
    assert f"study.yaml:{line}:" in err and "scans.t2w" in err
    assert "48h" in err and "missing" in err  # names the session and the way out


def test_timepoint_without_scans(study, capsys):
    text = study.read_text().replace("  8d: {time: 8 d}", "  8d: {time: 8 d}\n  28d: {time: 28 d}")
    study.write_text(text)
    err = _run_bad(study, capsys)
    assert "28d" in err and re.search(r"study\.yaml:\d+:", err)


def test_roi_of_the_wrong_geometry(study, capsys):
    mask_path = next(study.parent.glob("sub-*/ses-24h/anat/*_label-tumour_mask.nii.gz"))
    img = nib.load(mask_path)
    data = np.asarray(img.dataobj)[::2, ::2, :]  # drawn on a coarser grid
    affine = img.affine.copy()
    affine[:3, :2] *= 2
    nib.save(nib.Nifti1Image(data, affine), mask_path)
    err = _run_bad(study, capsys)
    line = _line_of(study, r"label-tumour_mask")
    assert f"study.yaml:{line}:" in err and "rois.tumour" in err
    assert mask_path.name in err and "grid" in err


def test_subject_in_no_arm(study, capsys):
    text = study.read_text()
    subject, arm = re.search(r"^  (rat0[2-6]): \{arm: (\w+)\}", text, re.M).groups()
    text = text.replace(f"  {subject}: {{arm: {arm}}}", f"  {subject}: {{}}")
    study.write_text(text)
    err = _run_bad(study, capsys)
    line = _line_of(study, rf"^  {subject}: \{{\}}")
    assert f"study.yaml:{line}:" in err and f"subjects.{subject}" in err
    assert "arm" in err and "control" in err  # lists the arms to choose from


def test_run_prints_the_summary_and_export_writes_both_formats(study, capsys, tmp_path):
    capsys.readouterr()
    assert main(["run", str(study), "--scheduler", "synchronous", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "0 processed, 24 unchanged, 0 failed, of 24" in out
    assert "report:" in out and "ia_nk" in out

    assert main(["export", str(study), "--out", str(tmp_path / "x"), "--format", "csv,parquet"]) == 0
    csv = pd.read_csv(tmp_path / "x" / "measurements.csv")
    parquet = pd.read_parquet(tmp_path / "x" / "measurements.parquet")
    assert len(csv) == len(parquet) == 24 * 4
    assert list(csv.columns) == ["subject", "arm", "timepoint", "time_s", "biomarker", "value",
                                 "unit", "roi", "map", "statistic", "method", "software_version"]

    assert main(["export", str(study), "--format", "xls"]) == 2


def test_init_writes_a_spec_that_runs_after_naming_the_arms(tmp_path, capsys):
    demo = write_demo_study(tmp_path / "study", n_subjects=6, seed=3, dicom_subject=False)
    spec = tmp_path / "study" / "init.yaml"
    assert main(["init", str(tmp_path / "study"), "--out", str(spec)]) == 0
    assert main(["init", str(tmp_path / "study"), "--out", str(spec)]) == 2  # no overwrite
    assert "already exists" in capsys.readouterr().err or spec.exists()
    from oncomri.study.spec import load_spec

    loaded = load_spec(spec)
    assert set(loaded.subjects) == {s.id for s in demo.study.design.subjects}
    assert {t.name for t in loaded.design().timepoints} == {"baseline", "24h", "48h", "8d"}
