"""The study pipeline end to end, on a small synthetic study written to disk.

Real files (NIfTI, one rat as DICOM), the real database (SQLite and a real
PostgreSQL server from conftest), real Dask (a LocalCluster with 2 worker
processes) and a real SIGKILL. Expected values come from the simulation's
truth table (what the images were made from), never from the pipeline.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from oncomri.study.db import StudyDatabase
from oncomri.study.demo import write_demo_study
from oncomri.study.pipeline import run_study

N_SUBJECTS = 6
BIOMARKERS = ("tumour_R2star", "tumour_T2star", "tumour_volume", "tumour_diameter")

#: Tolerances against the truth, per session. R2*: median over the tumour of a
#: noisy 12-echo fit (SNR 40) vs the noiseless median; volume: the mask as
#: drawn vs the continuous shape.
R2STAR_TOLERANCE = 0.05
VOLUME_TOLERANCE = 0.10


@pytest.fixture(scope="module")
def demo_template(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-template")
    return write_demo_study(root / "study", n_subjects=N_SUBJECTS, seed=11)


@pytest.fixture
def study(demo_template, tmp_path):
    """A private copy of the demo study (its own derivatives folder)."""
    folder = tmp_path / "study"
    shutil.copytree(demo_template.spec_path.parent, folder)
    return folder / "study.yaml"


def _truth(spec: Path) -> pd.DataFrame:
    return pd.read_csv(spec.parent / "truth.csv")


def _measurements(url: str) -> pd.DataFrame:
    with StudyDatabase.open(url, create=False) as db:
        return db.measurements()


def _row_counts(url: str) -> pd.DataFrame:
    """Rows per (session, biomarker) in the measurements table itself (not the tidy view)."""
    with StudyDatabase.open(url, create=False) as db:
        engine = db._engine  # noqa: SLF001 - the raw table is what duplication would show in
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT session_id, biomarker, COUNT(*) AS n FROM measurements "
                "GROUP BY session_id, biomarker")).fetchall()
    return pd.DataFrame(rows, columns=["session_id", "biomarker", "n"])


# --------------------------------------------------------------------------- the main run


def test_pipeline_recovers_the_simulated_truth(study, db_url):
    summary = run_study(study, database=db_url, scheduler="synchronous", progress=False)

    n_sessions = N_SUBJECTS * 4
    assert summary.n_sessions == n_sessions
    assert (summary.n_done, summary.n_failed, summary.n_skipped) == (n_sessions, 0, 0)

    measured = _measurements(db_url)
    assert len(measured) == n_sessions * len(BIOMARKERS)
    assert set(measured.biomarker) == set(BIOMARKERS)
    units = dict(zip(measured.biomarker, measured.unit))
    assert units == {"tumour_R2star": "1/s", "tumour_T2star": "s", "tumour_volume": "mm^3",
                     "tumour_diameter": "mm"}

    truth = _truth(study)
    for biomarker, tolerance in (("tumour_R2star", R2STAR_TOLERANCE),
                                 ("tumour_volume", VOLUME_TOLERANCE)):
        t = truth[truth.biomarker == biomarker][["subject", "timepoint", "value"]]
        m = measured[measured.biomarker == biomarker][["subject", "timepoint", "value"]]
        both = m.merge(t, on=["subject", "timepoint"], suffixes=("", "_true"))
        assert len(both) == n_sessions, biomarker
        rel = np.abs(both.value - both.value_true) / both.value_true
        assert rel.max() < tolerance, (biomarker, both.assign(rel=rel).sort_values("rel").tail(3))

    # the DICOM rat's four MGE series went through the DICOM reader
    with StudyDatabase.open(db_url, create=False) as db:
        scans = db.scans()
    dicom = scans[scans.format == "dicom"]
    assert len(dicom) == 4 and set(dicom.role) == {"megre"} and dicom.subject.nunique() == 1

    # the statistics: structure and the direction of the simulated effects
    stats = pd.read_csv(summary.report.parent / "statistics.csv")
    assert {"analysis", "label", "test", "estimate", "ci_low", "ci_high", "p_value",
            "unit"} <= set(stats.columns)
    paired = stats[stats.type == "paired"].set_index("label")
    assert set(paired.index) == {"control", "iv_nk", "ia_nk"}
    assert paired.loc["ia_nk", "estimate"] > 10  # 1/s: labelled cells reach the tumour
    assert abs(paired.loc["control", "estimate"]) < paired.loc["ia_nk", "estimate"] / 3
    between = stats[(stats.type == "between_arms")].set_index("label")
    assert between.loc["ia_nk vs control", "estimate"] < 0  # IA NK tumours shrink vs control
    mixed = stats[stats.type == "mixed_model"]
    assert len(mixed) > 0 and mixed.p_value.notna().all()

    html = summary.report.read_text()
    assert "data:image/png;base64," in html and "http://" not in html.replace("http://www.w3.org", "")
    exported = pd.read_parquet(study.parent / "derivatives" / "tables" / "measurements.parquet")
    assert len(exported) == len(measured)


def test_rerun_recomputes_only_what_changed(study, db_url):
    first = run_study(study, database=db_url, scheduler="synchronous", progress=False,
                      report=False)
    before = _measurements(db_url)

    again = run_study(study, database=db_url, scheduler="synchronous", progress=False,
                      report=False)
    assert (again.n_done, again.n_skipped) == (0, first.n_sessions)

    # change one session's tumour mask: drop one slice of it
    import nibabel as nib

    mask_path = next(study.parent.glob("sub-*/ses-8d/anat/*_label-tumour_mask.nii.gz"))
    subject = mask_path.name.split("_")[0][4:]
    img = nib.load(mask_path)
    data = np.asarray(img.dataobj).copy()
    z = np.nonzero(data.any(axis=(0, 1)))[0]
    data[..., z[0]] = 0
    nib.save(nib.Nifti1Image(data, img.affine, img.header), mask_path)

    third = run_study(study, database=db_url, scheduler="synchronous", progress=False,
                      report=False)
    assert (third.n_done, third.n_skipped) == (1, first.n_sessions - 1)
    after = _measurements(db_url)
    key = ["subject", "timepoint", "biomarker"]
    merged = before.merge(after, on=key, suffixes=("_before", "_after"))
    changed = merged[merged.value_before != merged.value_after]
    assert set(zip(changed.subject, changed.timepoint)) == {(subject, "8d")}
    assert (_row_counts(db_url).n == 1).all()

    # an edited sidecar (where echo times live) is an edited input too
    sidecar = next(study.parent.glob("sub-*/ses-24h/anat/*_echo-2_MEGRE.json"))
    fields = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**fields, "Comment": "re-exported"}, indent=2))
    fourth = run_study(study, database=db_url, scheduler="synchronous", progress=False,
                       report=False)
    assert (fourth.n_done, fourth.n_skipped) == (1, first.n_sessions - 1)


def test_a_failing_scan_is_recorded_and_the_rest_go_on(study, db_url):
    echo = next(study.parent.glob("sub-*/ses-48h/anat/*_echo-3_MEGRE.nii.gz"))
    subject = echo.name.split("_")[0][4:]
    payload = echo.read_bytes()
    echo.write_bytes(payload[: len(payload) // 3])  # an interrupted copy

    summary = run_study(study, database=db_url, scheduler="synchronous", progress=False)

    assert summary.n_failed == 1 and summary.n_done == summary.n_sessions - 1
    (failed_subject, timepoint, stage, reason), = summary.failures
    assert (failed_subject, timepoint, stage) == (subject, "48h", "load")
    assert echo.name in reason
    measured = _measurements(db_url)
    assert not ((measured.subject == subject) & (measured.timepoint == "48h")).any()
    assert len(measured) == (summary.n_sessions - 1) * len(BIOMARKERS)
    assert "48h" in summary.report.read_text()  # the failures section names it

    echo.write_bytes(payload)  # repaired: only that session runs again
    fixed = run_study(study, database=db_url, scheduler="synchronous", progress=False,
                      report=False)
    assert (fixed.n_done, fixed.n_failed) == (1, 0)


# --------------------------------------------------------------------------- Dask


def test_a_dask_cluster_gives_identical_results(study, tmp_path):
    from dask.distributed import LocalCluster

    local = str(tmp_path / "local.sqlite")
    run_study(study, database=local, scheduler="synchronous", progress=False, report=False)
    shutil.rmtree(study.parent / "derivatives")

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        remote = str(tmp_path / "cluster.sqlite")
        summary = run_study(study, database=remote, scheduler=cluster.scheduler_address,
                            progress=False, report=False)
    assert summary.scheduler.startswith("tcp://")
    assert summary.n_done == summary.n_sessions and summary.n_failed == 0

    key = ["subject", "timepoint", "biomarker"]
    a = _measurements(local).sort_values(key).reset_index(drop=True)
    b = _measurements(remote).sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a.drop(columns=["software_version"]),
                                  b.drop(columns=["software_version"]))


# --------------------------------------------------------------------------- kill -9


def test_a_run_killed_with_sigkill_resumes_without_loss_or_duplicates(study, db_url, tmp_path):
    reference = str(tmp_path / "reference.sqlite")
    run_study(study, database=reference, scheduler="synchronous", progress=False, report=False)
    shutil.rmtree(study.parent / "derivatives")

    command = [sys.executable, "-m", "oncomri.cli.main", "run", str(study), "--db", db_url,
               "--scheduler", "synchronous", "--quiet"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    n_recorded = 0
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            try:
                with StudyDatabase.open(db_url, create=False) as db:
                    n_recorded = len(db.completed())
            except Exception:  # not created yet
                continue
            if n_recorded >= 5:
                break
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert 5 <= n_recorded < N_SUBJECTS * 4

    resumed = run_study(study, database=db_url, scheduler="synchronous", progress=False,
                        report=False)
    assert resumed.n_skipped >= n_recorded
    assert resumed.n_done + resumed.n_skipped == resumed.n_sessions
    assert resumed.n_failed == 0

    with StudyDatabase.open(db_url, create=False) as db:
        statuses = dict(zip(db.runs().run_id, db.runs().status))
    assert statuses[resumed.run_id] == "ok"
    assert "interrupted" in statuses.values()  # the killed run, marked when the next began

    counts = _row_counts(db_url)
    assert len(counts) == resumed.n_sessions * len(BIOMARKERS)
    assert (counts.n == 1).all()
    key = ["subject", "timepoint", "biomarker"]
    a = _measurements(reference).sort_values(key).reset_index(drop=True)
    b = _measurements(db_url).sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[key + ["value", "unit"]], b[key + ["value", "unit"]])
