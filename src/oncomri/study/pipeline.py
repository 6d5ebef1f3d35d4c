"""Run a study: spec → per-session tasks on Dask → database → analyses → report.

:func:`run_study` is what ``oncomri run study.yaml`` does:

1. **Preflight** (nothing written yet): load and validate the spec
   (:func:`~oncomri.study.spec.load_spec`), resolve every session's files and
   check ROI geometry (:func:`~oncomri.study.inputs.resolve_sessions`). Bad
   input stops here with one line naming the spec line and field; the
   database is not opened, so it is left exactly as it was.
2. **Plan**: hash the content of every input (scans, ROI files, the ROI's
   source session for propagated ROIs) together with the parts of the spec a
   session depends on (its maps and biomarkers) and the software version,
   giving one ``task_key`` per session. Sessions whose recorded key equals
   the new one (and whose derivative files still exist) are skipped; the
   others are recomputed.
3. **Execute** on Dask: a local cluster of worker processes by default
   (``threads`` for one process, ``synchronous`` for debugging and
   profiling), or an existing cluster at ``tcp://HOST:PORT`` (its workers
   must see the study's files at the same paths and have oncomri
   installed). Workers only compute and write derivative files; the driver
   records each finished session in the database in one transaction as it
   arrives, so a run killed at any moment keeps every session recorded
   before the kill and a rerun does only the rest. A session that fails is
   recorded with its stage and reason and the others go on.
4. **Analyse and report**: the tidy measurement table of every current
   session (from this run or earlier ones), the spec's analyses, the CSV and
   Parquet exports and the HTML report.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .. import __version__
from ..core.errors import ValidationError

__all__ = ["RunSummary", "run_study", "plan_study", "default_database", "SCHEDULERS"]

#: Local schedulers; anything else must be a Dask scheduler address (tcp://, tls://, ...).
SCHEDULERS = ("processes", "threads", "synchronous")


@dataclass
class RunSummary:
    """What a run did and where its results are."""

    spec_path: Path
    database: str
    scheduler: str
    n_sessions: int
    n_done: int
    n_skipped: int
    n_failed: int
    failures: list = field(default_factory=list)  # (subject, timepoint, stage, reason)
    wall_s: float = 0.0
    stage_s: dict = field(default_factory=dict)  # stage -> summed worker seconds (this run)
    report: Path | None = None
    tables: list = field(default_factory=list)
    analyses: list = field(default_factory=list)
    run_id: int | None = None


def default_database(spec) -> str:
    """The database a spec uses when none is given on the command line."""
    if spec.database:
        db = str(spec.database)
        if "://" in db:
            return db
        path = Path(db)
        return str(path if path.is_absolute() else spec.root / path)
    return str(spec.output / "study.sqlite")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))


def plan_study(spec, sessions) -> list:
    """One :class:`~oncomri.study.tasks.SessionTask` per session, with its ``task_key``.

    The key is the SHA-256 of: the software version, the session's identity,
    the content hash of each scan (and its series / echo-time options), each
    ROI's definition with the content hash of its mask file (for propagated
    ROIs, recursively the source session's ROI and ``on`` scan), and the
    spec's ``maps`` and ``biomarkers``. Paths are not part of it: moving a
    study folder does not recompute it; changing one byte of an input does.
    """
    from .inputs import content_hash
    from .tasks import SessionTask

    hashes: dict = {}

    def hash_of(paths) -> str:
        key = tuple(str(p) for p in paths)
        if key not in hashes:
            hashes[key] = content_hash(_with_sidecars(paths))
        return hashes[key]

    maps = {name: _plain(m) for name, m in spec.maps.items()}
    biomarkers = {name: _plain(b) for name, b in spec.biomarkers.items()}
    by_subject: dict = {}
    for s in sessions:
        by_subject.setdefault(s.subject, {})[s.timepoint] = s
    common = {"software": __version__, "maps": maps, "biomarkers": biomarkers}

    def scan_part(session, role):
        scan = session.scans[role]
        return {"hash": hash_of(scan.paths), "series": scan.series, "echo_times": scan.echo_times}

    def roi_part(session, name, depth=0):
        roi = session.rois[name]
        part = {"name": name, "on": roi.on, "kind": roi.kind, "label": roi.label,
                "seed_mm": roi.seed_mm, "method": roi.method,
                "on_scan": scan_part(session, roi.on)}
        if roi.kind == "mask":
            part["hash"] = hash_of([roi.mask_path])
        elif roi.kind == "propagate" and depth < 4:
            source = by_subject[session.subject][roi.propagate_from]
            part["from"] = roi_part(source, name, depth + 1)
        return part

    tasks = []
    for s in sessions:
        others = {}
        input_hashes = {}
        for role, scan in s.scans.items():
            input_hashes[(s.timepoint, role)] = hash_of(scan.paths)
        for name, roi in s.rois.items():
            if roi.kind == "mask":
                input_hashes[(s.timepoint, "roi:" + name)] = hash_of([roi.mask_path])
            source_tp = roi.propagate_from
            while source_tp is not None and source_tp not in others:
                source = by_subject[s.subject][source_tp]
                others[source_tp] = source
                source_tp = source.rois[name].propagate_from if name in source.rois else None
        key_data = {**common, "subject": s.subject, "timepoint": s.timepoint,
                    "scans": {r: scan_part(s, r) for r in sorted(s.scans)},
                    "rois": {n: roi_part(s, n) for n in sorted(s.rois)}}
        task_key = hashlib.sha256(_canonical(key_data).encode()).hexdigest()
        tasks.append(SessionTask(subject=s.subject, timepoint=s.timepoint, task_key=task_key,
                                 session=s, others=others, maps=maps, biomarkers=biomarkers,
                                 out_dir=str(spec.output), input_hashes=input_hashes))
    return tasks


def _with_sidecars(paths) -> list:
    """NIfTI files with the files that carry their acquisition (``.json`` sidecar with
    EchoTime/FlipAngle..., ``.bval``/``.bvec``): changing one of those changes the input."""
    out = []
    for p in map(Path, paths):
        out.append(p)
        name = p.name
        for ending in (".nii.gz", ".nii"):
            if name.endswith(ending):
                stem = p.with_name(name[: -len(ending)])
                out += [q for q in (stem.with_suffix(".json"), stem.with_suffix(".bval"),
                                    stem.with_suffix(".bvec")) if q.is_file()]
                break
    return out


def _plain(model) -> dict:
    """A spec model as a plain dict with Python attribute names."""
    if hasattr(model, "model_dump"):
        return model.model_dump()
    return dict(model)


# --------------------------------------------------------------------------- execution


class _Synchronous:
    """In-process execution in submission order (debugging, profiling)."""

    def run(self, fn: Callable, items: list) -> Iterator:
        for item in items:
            yield item, fn(item)

    def close(self):
        pass


class _Dask:
    def __init__(self, client, cluster=None):
        self.client, self.cluster = client, cluster

    def run(self, fn: Callable, items: list) -> Iterator:
        from dask.distributed import as_completed

        keys = [f"oncomri-session-{t.subject}-{t.timepoint}-{t.task_key[:12]}" for t in items]
        futures = self.client.map(fn, items, key=keys, pure=False)
        item_of = {f.key: t for f, t in zip(futures, items)}
        for future in as_completed(futures):
            task = item_of[future.key]
            try:
                yield task, future.result()
            except Exception as exc:  # the worker died or the task could not run at all
                yield task, exc
            future.release()

    def close(self):
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


@contextmanager
def _executor(scheduler: str, workers: int | None, n_tasks: int):
    if scheduler == "synchronous" or n_tasks == 0:
        yield _Synchronous()
        return
    logging.getLogger("distributed").setLevel(logging.ERROR)
    from dask.distributed import Client, LocalCluster

    if scheduler in ("processes", "threads"):
        cores = os.cpu_count() or 1
        n = max(1, min(workers or cores, n_tasks))
        if scheduler == "processes":
            numba_threads = str(max(1, cores // n))
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=logging.ERROR,
                                   env={"NUMBA_NUM_THREADS": numba_threads})
        else:
            _require_threadsafe_numba()
            cluster = LocalCluster(n_workers=1, threads_per_worker=n, processes=False,
                                   dashboard_address=None, silence_logs=logging.ERROR)
        executor = _Dask(Client(cluster), cluster)
    else:
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as exc:
            raise ValidationError(
                f"--scheduler {scheduler}: cannot reach the Dask scheduler ({exc}); start it "
                "(dask scheduler / dask worker) or use --scheduler processes") from None
        executor = _Dask(client)
    try:
        yield executor
    finally:
        executor.close()


def _require_threadsafe_numba() -> None:
    """Sessions fitted in threads launch numba's parallel kernels concurrently, which only
    the OpenMP and TBB threading layers allow (numba's own workqueue layer is not
    thread-safe); refuse `threads` where neither can be loaded."""
    import importlib

    import numba

    for layer in ("omppool", "tbbpool"):
        try:
            importlib.import_module(f"numba.np.ufunc.{layer}")
        except ImportError:
            continue
        numba.config.THREADING_LAYER = "threadsafe"
        return
    raise ValidationError(
        "--scheduler threads: numba has no thread-safe threading layer here (install libgomp1 "
        "or the tbb package); use --scheduler processes")


def _check_scheduler(scheduler: str) -> str:
    if scheduler in SCHEDULERS or "://" in scheduler:
        return scheduler
    raise ValidationError(
        f"--scheduler {scheduler!r}: use one of {', '.join(SCHEDULERS)} or a Dask scheduler "
        "address such as tcp://HOST:8786")


def _outputs_exist(db, completed: dict) -> set:
    """Sessions whose recorded derivative files are all still on disk."""
    maps = db.maps()
    missing = set()
    for row in maps.itertuples():
        if not Path(row.path).exists():
            missing.add((row.subject, row.timepoint))
    return {k for k in completed if k not in missing}


def run_study(spec_path, *, database: str | None = None, scheduler: str = "processes",
              workers: int | None = None, force: bool = False, progress: bool = True,
              report: bool = True, log: Callable[[str], None] | None = None) -> RunSummary:
    """Run (or resume) the study described by ``spec_path``; see the module docstring.

    Parameters
    ----------
    spec_path : path-like
        The study spec (YAML).
    database : str, optional
        SQLite path or ``postgresql://`` URL; default from the spec
        (``<output>/study.sqlite``).
    scheduler : str
        ``processes`` (default), ``threads``, ``synchronous`` or the address
        of a running Dask scheduler (``tcp://HOST:PORT``).
    workers : int, optional
        Local workers (default: one per core, at most one per session).
    force : bool
        Recompute every session even when its inputs are unchanged.
    progress : bool
        Show a progress bar (on a terminal).
    report : bool
        Write the analyses, tables and HTML report after processing.
    log : callable, optional
        Receives one-line messages (default: none).
    """
    from .db import StudyDatabase
    from .inputs import resolve_sessions
    from .spec import load_spec

    say = log or (lambda message: None)
    t0 = time.perf_counter()
    scheduler = _check_scheduler(scheduler)
    spec = load_spec(spec_path)
    sessions = resolve_sessions(spec)
    tasks = plan_study(spec, sessions)
    design = spec.design()
    url = database or default_database(spec)

    with StudyDatabase.open(url) as db:
        db.sync_design(design)
        completed = db.completed()
        still_there = _outputs_exist(db, completed)
        todo = [t for t in tasks
                if force or completed.get((t.subject, t.timepoint)) != t.task_key
                or (t.subject, t.timepoint) not in still_there]
        summary = RunSummary(spec_path=Path(spec.path), database=db.url, scheduler=scheduler,
                             n_sessions=len(tasks), n_done=0,
                             n_skipped=len(tasks) - len(todo), n_failed=0)
        say(f"{spec.name}: {len(tasks)} sessions, {summary.n_skipped} unchanged, "
            f"{len(todo)} to process ({scheduler}); database {db.url}")
        run_id = db.begin_run(spec_hash=spec.text_hash, software_version=__version__,
                              n_sessions=len(tasks), scheduler=scheduler)
        summary.run_id = run_id
        status = "interrupted"
        try:
            _execute(db, run_id, todo, summary, scheduler, workers, progress)
            status = "ok" if summary.n_failed == 0 else "failed sessions"
        finally:
            db.finish_run(run_id, n_done=summary.n_done, n_skipped=summary.n_skipped,
                          n_failed=summary.n_failed, status=status)
        summary.failures = [(r.subject, r.timepoint, r.stage, r.reason)
                            for r in db.failures().itertuples()]
        summary.n_failed = len(summary.failures)
        if report:
            summary.report = _analyse_and_report(spec, design, db, summary, t0)
    summary.wall_s = time.perf_counter() - t0
    return summary


def _execute(db, run_id, todo, summary, scheduler, workers, show_progress):
    from .tasks import run_session

    bar = None
    if show_progress and todo:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        console = Console(stderr=True)
        if console.is_terminal:
            bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                           MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                           console=console, transient=False)
    progress_id = None
    if bar is not None:
        bar.start()
        progress_id = bar.add_task("sessions", total=len(todo))
    try:
        with _executor(scheduler, workers, len(todo)) as executor:
            for task, outcome in executor.run(run_session, todo):
                if isinstance(outcome, BaseException):
                    db.record_failure(run_id, subject=task.subject, timepoint=task.timepoint,
                                      task_key=task.task_key, stage="worker",
                                      reason=f"{type(outcome).__name__}: {outcome}")
                    summary.n_failed += 1
                elif outcome.ok:
                    db.record_session(run_id, outcome.record)
                    summary.n_done += 1
                else:
                    db.record_failure(run_id, subject=task.subject, timepoint=task.timepoint,
                                      task_key=task.task_key, stage=outcome.stage,
                                      reason=outcome.reason)
                    summary.n_failed += 1
                if not isinstance(outcome, BaseException):
                    for stage, seconds in outcome.timings.items():
                        summary.stage_s[stage] = summary.stage_s.get(stage, 0.0) + seconds
                if bar is not None:
                    bar.update(progress_id, advance=1,
                               description=f"sessions ({summary.n_failed} failed)"
                               if summary.n_failed else "sessions")
    finally:
        if bar is not None:
            bar.stop()


def _analyse_and_report(spec, design, db, summary, t0):
    """Analyses on every current session, the database export and the HTML report."""
    from ..report import MethodsInfo, choose_representatives, write_report
    from .analysis import run_analyses

    table = db.measurements(design)
    results = run_analyses(spec.analyses, table, design=design)
    summary.analyses = results
    out = Path(spec.output)
    summary.tables = db.export(out / "tables", design=design)

    images = []
    warnings = []
    for name, b in spec.biomarkers.items():
        if not b.map or b.statistic is None:
            continue
        parameter = b.map.split(".", 1)[1]
        anatomy = spec.rois[b.roi].on if b.roi in spec.rois else None
        try:
            images = choose_representatives(table, db.maps(), db.rois(), db.scans(),
                                            design=design, biomarker=name, parameter=parameter,
                                            anatomy_role=anatomy)
        except Exception as exc:  # the report still shows everything else
            warnings.append(f"representative maps: {exc}")
        break
    methods = MethodsInfo(
        maps=[{"name": n, "model": m.model, "method": m.method or "default", "scan": m.scan,
               "noise_sigma": m.noise_sigma} for n, m in spec.maps.items()],
        rois=[{"name": n, "kind": r.kind, "on": r.on}
              for n, r in spec.rois.items()],
        biomarkers=[{"name": n, **{k: v for k, v in _plain(b).items() if v is not None}}
                    for n, b in spec.biomarkers.items()],
        n_sessions=summary.n_sessions, n_failed=summary.n_failed,
        wall_time_s=time.perf_counter() - t0)
    failures = db.failures()
    for w in warnings:
        failures.loc[len(failures)] = {"subject": "", "timepoint": "", "stage": "report",
                                       "reason": w}
    return write_report(out / "report", design=design, table=table, analyses=results,
                        images=images, methods=methods, failures=failures,
                        spec_text=Path(spec.path).read_text(), title=spec.name)
