"""The study database on SQLite and on a real PostgreSQL server (fixture ``db_url``).

Expected values come from ``expected_value`` (a hash of the session and
biomarker names), never from the database; row counts are checked with
plain SQL, independently of the read methods under test.

This file is also the worker script of the concurrency and crash tests:
``python test_db.py record URL ORDER START_FILE`` records the sessions of
``make_design()`` (ORDER: ``fwd`` or ``rev``), printing ``done N`` after each.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from oncomri.study.db import (
    MEASUREMENT_COLUMNS, MIGRATIONS, SCHEMA_VERSION, DatabaseError, MapRecord,
    MeasurementRecord, Migration, RoiRecord, ScanRecord, SessionRecord, StudyDatabase,
    schema_operations,
)
from oncomri.study.design import Arm, StudyDesign, Subject, Timepoint

ARMS = ("control", "treated")
TIMEPOINTS = (("baseline", -3600.0), ("24h", 86400.0))
#: biomarker, unit, roi, map, statistic, method
BIOMARKERS = (
    ("tumour_R2star", "s^-1", "tumour", "r2star.R2starmap", "median", "ncexp"),
    ("tumour_volume", "mm^3", "tumour", "", "volume", "voxel_count"),
    ("liver_R2star", "s^-1", "liver", "r2star.R2starmap", "mean", "ncexp"),
)
N_SUBJECTS = 20                      # x 2 timepoints = 40 sessions


def make_design(n_subjects: int = N_SUBJECTS, *, reverse: bool = False) -> StudyDesign:
    subjects = tuple(Subject(f"rat{i:02d}", ARMS[i % 2],
                             {"weight_g": 300 + i, "recurred": i % 3 == 0})
                     for i in range(n_subjects))
    if reverse:
        subjects = subjects[::-1]
    return StudyDesign(
        name="db test", arms=tuple(Arm(a, f"the {a} arm") for a in ARMS),
        timepoints=tuple(Timepoint(n, t) for n, t in TIMEPOINTS), baseline="baseline",
        subjects=subjects,
        sessions=tuple((s.id, t) for s in subjects for t, _ in TIMEPOINTS))


def expected_value(subject: str, timepoint: str, biomarker: str, version: int = 0) -> float:
    digest = hashlib.sha256(f"{subject}/{timepoint}/{biomarker}/{version}".encode()).digest()
    return int.from_bytes(digest[:7], "big") / 2 ** 56 * 100.0


def task_key(subject: str, timepoint: str, version: int = 0) -> str:
    return f"key-{subject}-{timepoint}-v{version}"


def make_record(subject: str, timepoint: str, version: int = 0,
                biomarkers=BIOMARKERS) -> SessionRecord:
    ses = f"sub-{subject}_ses-{timepoint}"
    return SessionRecord(
        subject=subject, timepoint=timepoint, task_key=task_key(subject, timepoint, version),
        scans=[ScanRecord("megre", f"{ses}_MEGRE.nii.gz", f"h-megre-{version}", "nifti"),
               ScanRecord("t2w", f"{ses}_T2w.nii.gz", f"h-t2w-{version}", "nifti")],
        maps=[MapRecord("r2star", p, f"{ses}_{p}.nii.gz", f"h-{p}-{version}", u,
                        {"method": "ncexp", "noise_sigma": 12.5}, "0.1.0")
              for p, u in (("R2starmap", "s^-1"), ("T2starmap", "s"))],
        rois=[RoiRecord("tumour", "mask", f"{ses}_tumour.nii.gz", "h-roi-t", 120 + version,
                        120.0 * 0.125),
              RoiRecord("liver", "seed", f"{ses}_liver.nii.gz", "h-roi-l", 800, 100.0)],
        measurements=[MeasurementRecord(b, expected_value(subject, timepoint, b, version), u,
                                        roi, m, stat, meth, {"n_voxels": 120, "version": version})
                      for b, u, roi, m, stat, meth in biomarkers],
        timings={"load": 0.5, "fit": 2.0 + version},
    )


def _engine(url: str) -> sa.Engine:
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))


def _sql(url: str, query: str):
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(query)).all()
    finally:
        engine.dispose()


def _count(url: str, table: str) -> int:
    return _sql(url, f"SELECT count(*) FROM {table}")[0][0]


@pytest.fixture
def db(db_url):
    with StudyDatabase.open(db_url) as database:
        yield database


# --------------------------------------------------------------------------- opening


def test_open_creates_current_schema(db_url):
    with StudyDatabase.open(db_url) as db:
        assert db.schema_version() == SCHEMA_VERSION == 1
    rows = _sql(db_url, "SELECT version FROM schema_info")
    assert [r[0] for r in rows] == [1]
    with StudyDatabase.open(db_url, create=False) as db:      # reopening changes nothing
        assert db.schema_version() == 1
    assert _count(db_url, "schema_info") == 1


def test_plain_path_is_sqlite_and_folder_is_created(tmp_path):
    path = tmp_path / "a" / "b" / "study.sqlite"
    with pytest.raises(DatabaseError, match="no study database"):
        StudyDatabase.open(path, create=False)
    with StudyDatabase.open(path) as db:
        assert str(path) in db.url
    assert path.is_file()
    assert _sql(f"sqlite:///{path}", "PRAGMA journal_mode")[0][0] == "wal"


def test_postgres_url_password_is_redacted_and_bad_server_is_one_line(postgres_url):
    url = postgres_url.replace("oncomri@", "oncomri:s3cret@")    # trust auth ignores it
    with StudyDatabase.open(url) as db:
        assert "s3cret" not in db.url and "s3cret" not in repr(db)
        assert db.schema_version() == SCHEMA_VERSION
    port = postgres_url.rsplit(":", 1)[1].split("/")[0]
    dead = url.replace(f":{port}/", ":1/")
    with pytest.raises(DatabaseError) as info:
        StudyDatabase.open(dead)
    message = str(info.value)
    assert "cannot connect" in message and "s3cret" not in message and "\n" not in message


def test_foreign_database_is_refused(db_url):
    engine = _engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE measurements (x INTEGER)"))
    engine.dispose()
    with pytest.raises(DatabaseError, match="not an oncomri study database"):
        StudyDatabase.open(db_url)


# --------------------------------------------------------------------------- design


def test_sync_design_is_idempotent(db, db_url):
    design = make_design(4)
    db.sync_design(design)
    db.sync_design(design)
    assert _count(db_url, "arms") == 2
    assert _count(db_url, "timepoints") == 2
    assert _count(db_url, "subjects") == 4
    assert _count(db_url, "sessions") == 8
    assert db.completed() == {}
    # a changed design updates in place (arm, covariates) and adds what is new
    moved = Subject("rat00", "treated", {"weight_g": 999})
    changed = StudyDesign(design.name, design.arms, design.timepoints, design.baseline,
                          (moved, *design.subjects[1:], Subject("rat99", "control")),
                          design.sessions + (("rat99", "baseline"),))
    db.sync_design(changed)
    assert _count(db_url, "subjects") == 5
    assert _count(db_url, "sessions") == 9
    rows = _sql(db_url, "SELECT a.name FROM subjects s JOIN arms a ON a.id = s.arm_id "
                        "WHERE s.name = 'rat00'")
    assert rows == [("treated",)]
    db.record_session(db.begin_run(spec_hash="x", software_version="0.1.0", n_sessions=1,
                                   scheduler="local"), make_record("rat00", "baseline"))
    assert set(db.measurements()["arm"]) == {"treated"}


# --------------------------------------------------------------------------- sessions


def test_record_session_replaces_all_rows(db, db_url):
    db.sync_design(make_design(2))
    run = db.begin_run(spec_hash="abc", software_version="0.1.0", n_sessions=1,
                       scheduler="local")
    db.record_session(run, make_record("rat00", "24h", version=0))
    db.record_session(run, make_record("rat00", "24h", version=1, biomarkers=BIOMARKERS[:2]))
    for table, n in (("measurements", 2), ("scans", 2), ("maps", 2), ("rois", 2),
                     ("session_timings", 2)):
        assert _count(db_url, table) == n, table
    got = db.measurements()
    assert list(got["biomarker"]) == [b[0] for b in BIOMARKERS[:2]]
    for b, value in zip(got["biomarker"], got["value"]):
        assert value == expected_value("rat00", "24h", b, version=1)
    assert db.completed() == {("rat00", "24h"): task_key("rat00", "24h", 1)}
    assert set(db.scans()["content_hash"]) == {"h-megre-1", "h-t2w-1"}
    rois = db.rois().set_index("name")
    assert rois.loc["tumour", "n_voxels"] == 121 and rois.loc["liver", "source"] == "seed"
    assert set(db.maps()["unit"]) == {"s^-1", "s"}
    timings = db.session_timings()
    assert dict(zip(timings["stage"], timings["seconds"])) == {"load": 0.5, "fit": 3.0}


def test_json_columns_hold_strict_json(db, db_url):
    design = make_design(1)
    db.sync_design(StudyDesign(design.name, design.arms, design.timepoints, design.baseline,
                               (Subject("rat00", "control",
                                        {"weight_g": np.float32(312.5), "dose": np.int64(3)}),),
                               design.sessions))
    run = db.begin_run(spec_hash="a", software_version="0.1.0", n_sessions=1, scheduler="local")
    record = make_record("rat00", "24h")
    record.measurements[0].provenance = {"sigma": np.float64(2.5), "bad": float("nan"),
                                         "echoes": np.array([1, 2])}
    db.record_session(run, record)

    def loaded(value):
        return json.loads(value) if isinstance(value, str) else value

    rows = _sql(db_url, "SELECT provenance FROM measurements WHERE biomarker = 'tumour_R2star'")
    assert loaded(rows[0][0]) == {"sigma": 2.5, "bad": None, "echoes": [1, 2]}
    rows = _sql(db_url, "SELECT covariates FROM subjects")
    assert loaded(rows[0][0]) == {"weight_g": 312.5, "dose": 3}


def test_record_session_rejects_duplicates_and_unknown_sessions(db, db_url):
    db.sync_design(make_design(2))
    run = db.begin_run(spec_hash="abc", software_version="0.1.0", n_sessions=1,
                       scheduler="local")
    record = make_record("rat00", "24h")
    record.measurements.append(record.measurements[0])
    with pytest.raises(ValueError, match="appears twice"):
        db.record_session(run, record)
    with pytest.raises(DatabaseError, match="sync_design"):
        db.record_session(run, make_record("rat77", "24h"))
    with pytest.raises(DatabaseError, match="begin_run"):
        db.record_session(run + 100, make_record("rat00", "24h"))
    assert _count(db_url, "measurements") == 0


def test_completed_keys(db):
    db.sync_design(make_design(3))
    run = db.begin_run(spec_hash="abc", software_version="0.1.0", n_sessions=6,
                       scheduler="local")
    done = [("rat00", "baseline"), ("rat02", "24h"), ("rat01", "baseline")]
    for subject, timepoint in done:
        db.record_session(run, make_record(subject, timepoint, version=2))
    db.record_failure(run, subject="rat01", timepoint="24h", task_key="k", stage="fit",
                      reason="no echoes")
    db.finish_run(run, n_done=3, n_skipped=0, n_failed=1, status="partial")
    assert db.completed() == {s: task_key(*s, 2) for s in done}
    runs = db.runs()
    assert runs.loc[0, "status"] == "partial" and runs.loc[0, "n_failed"] == 1
    assert runs.loc[0, "finished_at"] >= runs.loc[0, "started_at"]
    assert str(runs["started_at"].dt.tz) == "UTC"


def test_failure_replaces_results_and_success_clears_it(db, db_url):
    db.sync_design(make_design(2))
    run1 = db.begin_run(spec_hash="a", software_version="0.1.0", n_sessions=2, scheduler="local")
    db.record_session(run1, make_record("rat01", "baseline"))
    db.record_session(run1, make_record("rat00", "baseline"))
    run2 = db.begin_run(spec_hash="b", software_version="0.1.0", n_sessions=1, scheduler="local")
    db.record_failure(run2, subject="rat01", timepoint="baseline", task_key="new-key",
                      stage="load", reason="file truncated")
    assert db.completed() == {("rat00", "baseline"): task_key("rat00", "baseline")}
    assert set(db.measurements()["subject"]) == {"rat00"}
    rows = _sql(db_url, "SELECT count(*) FROM measurements m JOIN sessions s "
                        "ON s.id = m.session_id JOIN subjects j ON j.id = s.subject_id "
                        "WHERE j.name = 'rat01'")
    assert rows[0][0] == 0
    assert _count(db_url, "scans") == 2 and _count(db_url, "rois") == 2
    failures = db.failures()
    assert list(failures.columns) == ["subject", "timepoint", "stage", "reason", "run_id", "at"]
    assert failures.loc[0, ["subject", "timepoint", "stage", "reason", "run_id"]].tolist() == \
        ["rat01", "baseline", "load", "file truncated", run2]
    db.record_session(run2, make_record("rat01", "baseline", version=1))
    assert db.failures().empty
    assert db.completed()[("rat01", "baseline")] == task_key("rat01", "baseline", 1)


# --------------------------------------------------------------------------- tables


def test_measurements_tidy_columns_and_design_order(db):
    design = make_design(4, reverse=True)              # rat03 first
    db.sync_design(make_design(4))                      # stored in forward order
    run = db.begin_run(spec_hash="a", software_version="9.9.9", n_sessions=8, scheduler="local")
    for subject, timepoint in reversed(make_design(4).sessions):   # 24h recorded first
        record = make_record(subject, timepoint)
        if (subject, timepoint) == ("rat02", "24h"):
            record.measurements[1].value = float("nan")
        db.record_session(run, record)
    got = db.measurements(design)
    assert tuple(got.columns) == MEASUREMENT_COLUMNS
    assert len(got) == 8 * len(BIOMARKERS)
    expected_rows = [(s, t, b[0]) for s, t in design.sessions for b in BIOMARKERS]
    assert list(zip(got["subject"], got["timepoint"], got["biomarker"])) == expected_rows
    assert got["value"].dtype == float and got["time_s"].dtype == float
    times = dict(TIMEPOINTS)
    for row in got.itertuples(index=False):
        assert row.arm == design.arm_of(row.subject)
        assert row.time_s == times[row.timepoint]
        assert row.software_version == "9.9.9"
        spec = {b[0]: b for b in BIOMARKERS}[row.biomarker]
        assert (row.unit, row.roi, row.map, row.statistic, row.method) == spec[1:]
        if (row.subject, row.timepoint, row.biomarker) == ("rat02", "24h", "tumour_volume"):
            assert math.isnan(row.value)
        else:
            assert row.value == expected_value(row.subject, row.timepoint, row.biomarker)
    # a design with fewer sessions keeps only its sessions
    small = make_design(2)
    assert set(db.measurements(small)["subject"]) == {"rat00", "rat01"}
    # without a design: every recorded session, in the stored (forward) order
    assert list(db.measurements()["subject"].unique()) == ["rat00", "rat01", "rat02", "rat03"]


def test_empty_tables_have_their_columns(db):
    assert tuple(db.measurements().columns) == MEASUREMENT_COLUMNS
    assert list(db.maps().columns) == ["subject", "arm", "timepoint", "name", "parameter",
                                       "path", "content_hash", "unit", "software_version"]
    assert list(db.rois().columns) == ["subject", "arm", "timepoint", "name", "source", "path",
                                       "content_hash", "n_voxels", "volume_mm3"]
    assert list(db.session_timings().columns) == ["subject", "timepoint", "stage", "seconds"]
    assert db.failures().empty and db.runs().empty


def test_export_csv_and_parquet_read_back_equal(db, tmp_path):
    design = make_design(3)
    db.sync_design(design)
    run = db.begin_run(spec_hash="a", software_version="0.1.0", n_sessions=6, scheduler="local")
    for i, (subject, timepoint) in enumerate(design.sessions):
        record = make_record(subject, timepoint)
        if i == 1:
            record.measurements[0].value = float("nan")
        db.record_session(run, record)
    db.record_failure(run, subject="rat02", timepoint="24h", task_key="k", stage="fit",
                      reason="all voxels masked, check the mask")
    out = tmp_path / "export"
    paths = db.export(out, design=design)
    names = sorted(p.name for p in paths)
    assert names == ["failures.csv", "maps.csv", "measurements.csv", "measurements.parquet",
                     "rois.csv"]
    assert sorted(p.name for p in out.iterdir()) == names           # no temp files left
    want = db.measurements(design)
    assert len(want) == 5 * len(BIOMARKERS)
    text_cols = [c for c in MEASUREMENT_COLUMNS if c not in ("time_s", "value")]
    from_csv = pd.read_csv(out / "measurements.csv", dtype={c: str for c in text_cols},
                           keep_default_na=False, na_values={"value": [""]},
                           float_precision="round_trip")
    from_parquet = pd.read_parquet(out / "measurements.parquet")
    for got in (from_csv, from_parquet):
        assert tuple(got.columns) == MEASUREMENT_COLUMNS
        pd.testing.assert_frame_equal(got.astype({c: object for c in text_cols}), want,
                                      check_exact=True)
    failures = pd.read_csv(out / "failures.csv")
    assert failures["reason"].tolist() == ["all voxels masked, check the mask"]
    assert len(pd.read_csv(out / "maps.csv")) == 5 * 2
    with pytest.raises(ValueError, match="export format"):
        db.export(out, formats=("xlsx",))


def test_lock_held_too_long_is_a_one_line_database_error(db_url):
    with StudyDatabase.open(db_url, lock_timeout_s=0.1) as db:
        db.sync_design(make_design(1))
        run = db.begin_run(spec_hash="a", software_version="0.1.0", n_sessions=1,
                           scheduler="local")
        engine = _engine(db_url)
        with engine.connect() as other:                 # another process's open transaction
            other.exec_driver_sql("BEGIN IMMEDIATE" if db_url.startswith("sqlite") else "BEGIN")
            other.exec_driver_sql("UPDATE sessions SET status = status")
            with pytest.raises(DatabaseError) as info:
                db.record_session(run, make_record("rat00", "24h"))
            other.rollback()
        engine.dispose()
        message = str(info.value)
        assert "locked by another process" in message and "\n" not in message
        db.record_session(run, make_record("rat00", "24h"))     # lock gone: works
        assert db.completed() == {("rat00", "24h"): task_key("rat00", "24h")}


# --------------------------------------------------------------------------- migrations


def test_migration_runner_applies_each_step_once_and_refuses_newer(db_url):
    applied = []

    def add_note(conn):
        applied.append(1)
        schema_operations(conn).add_column("measurements", sa.Column("note", sa.Text))

    steps = (*MIGRATIONS, Migration(2, "add measurements.note", add_note))
    with StudyDatabase.open(db_url) as db:                      # version 1
        assert db.schema_version() == 1
    with StudyDatabase.open(db_url, migrations=steps) as db:    # 1 -> 2
        assert db.schema_version() == 2
    with StudyDatabase.open(db_url, migrations=steps) as db:    # nothing to do
        assert db.schema_version() == 2
    assert applied == [1]
    assert [r[0] for r in _sql(db_url, "SELECT version FROM schema_info ORDER BY version")] == \
        [1, 2]
    assert _sql(db_url, "SELECT count(note) FROM measurements") == [(0,)]
    with pytest.raises(DatabaseError, match="schema version 2 .*knows versions up to 1"):
        StudyDatabase.open(db_url)


def test_fresh_database_gets_every_step_and_failed_step_rolls_back(db_url):
    def broken(conn):
        schema_operations(conn).add_column("measurements", sa.Column("note", sa.Text))
        raise RuntimeError("step failed on purpose")

    with pytest.raises(RuntimeError, match="on purpose"):
        StudyDatabase.open(db_url, migrations=(*MIGRATIONS, Migration(2, "broken", broken)))
    with StudyDatabase.open(db_url) as db:       # version 1 committed, step 2 rolled back
        assert db.schema_version() == 1
    columns = {c["name"] for c in sa.inspect(_engine(db_url)).get_columns("measurements")}
    assert "note" not in columns


def test_database_from_the_future_is_refused(db_url):
    StudyDatabase.open(db_url).close()
    engine = _engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO schema_info (version, description, applied_at) "
                             "VALUES (99, 'future', CURRENT_TIMESTAMP)"))
    engine.dispose()
    with pytest.raises(DatabaseError) as info:
        StudyDatabase.open(db_url)
    message = str(info.value)
    assert "99" in message and "upgrade oncomri" in message and "\n" not in message


# --------------------------------------------------------------------------- processes


def _worker(url: str, order: str, start_file: str | None, *, subjects=N_SUBJECTS):
    return subprocess.Popen(
        [sys.executable, __file__, "record", url, order, start_file or "-"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _check_consistent(url: str) -> set[tuple[str, str]]:
    """Every session either complete with the expected rows or without any row."""
    with StudyDatabase.open(url, create=False) as db:
        done = db.completed()
        meas = db.measurements()
    per_session = {}
    for row in meas.itertuples(index=False):
        per_session.setdefault((row.subject, row.timepoint), {})[row.biomarker] = row.value
    assert set(per_session) == set(done)
    for (subject, timepoint), values in per_session.items():
        assert done[(subject, timepoint)] == task_key(subject, timepoint)
        assert values == {b[0]: expected_value(subject, timepoint, b[0]) for b in BIOMARKERS}
    n = len(done)
    for table, per in (("measurements", 3), ("scans", 2), ("maps", 2), ("rois", 2),
                       ("session_timings", 2)):
        assert _count(url, table) == n * per, table
    return set(done)


def test_two_processes_record_the_same_sessions_at_once(db_url, tmp_path):
    start = tmp_path / "go"
    workers = [_worker(db_url, order, str(start)) for order in ("fwd", "rev")]
    try:
        for w in workers:                               # both imported and opened the db
            line = w.stdout.readline()
            assert line.startswith("ready"), line + w.stderr.read()
        start.touch()
        results = [w.communicate(timeout=45) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    for w, (out, err) in zip(workers, results):
        assert w.returncode == 0, err
        assert out.splitlines()[-1] == f"done {2 * N_SUBJECTS}"
    assert len(_check_consistent(db_url)) == 2 * N_SUBJECTS
    assert _count(db_url, "sessions") == 2 * N_SUBJECTS
    assert _count(db_url, "subjects") == N_SUBJECTS
    with StudyDatabase.open(db_url) as db:
        runs = db.runs()
    assert runs["status"].tolist() == ["ok", "ok"]


def test_killed_run_resumes_without_loss_or_duplicates(db_url):
    worker = _worker(db_url, "fwd", None)
    try:
        n_done = 0
        while n_done < 6:
            line = worker.stdout.readline()
            assert line, worker.stderr.read()
            if line.startswith("done"):
                n_done = int(line.split()[1])
        os.kill(worker.pid, signal.SIGKILL)           # somewhere inside the next sessions
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == -signal.SIGKILL
    done = _check_consistent(db_url)
    assert len(done) >= 6
    design = make_design()
    with StudyDatabase.open(db_url) as db:
        db.sync_design(design)
        run = db.begin_run(spec_hash="s", software_version="0.1.0",
                           n_sessions=len(design.sessions), scheduler="local")
        todo = [s for s in design.sessions if s not in db.completed()]
        assert len(todo) == len(design.sessions) - len(done)
        for subject, timepoint in todo:
            db.record_session(run, make_record(subject, timepoint))
        db.finish_run(run, n_done=len(todo), n_skipped=len(done), n_failed=0, status="ok")
    assert len(_check_consistent(db_url)) == len(design.sessions)


def _record_main(url: str, order: str, start_file: str) -> None:
    design = make_design()
    with StudyDatabase.open(url) as db:
        print("ready", flush=True)
        if start_file != "-":
            deadline = time.monotonic() + 30
            while not os.path.exists(start_file) and time.monotonic() < deadline:
                time.sleep(0.005)
        db.sync_design(design)
        run = db.begin_run(spec_hash="s", software_version="0.1.0",
                           n_sessions=len(design.sessions), scheduler="local")
        todo = list(design.sessions)
        if order == "rev":
            todo.reverse()
        for i, (subject, timepoint) in enumerate(todo, 1):
            db.record_session(run, make_record(subject, timepoint))
            print(f"done {i}", flush=True)
        db.finish_run(run, n_done=len(todo), n_skipped=0, n_failed=0, status="ok")


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "record":
    _record_main(*sys.argv[2:])
