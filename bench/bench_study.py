"""Benchmark: the demo study (20 rats x 4 sessions) end to end through ``run_study``.

Prints the wall time of each phase (writing the synthetic study, the first
run with the default local process scheduler, the same run in one process
(``synchronous``) for comparison, and a rerun with nothing changed, which
must only hash and skip), the time per session, and the worker time by
stage (load, roi, map, measure) summed over sessions.

There is no peer tool that runs a study from scanner files to a report, so
the ratios printed are against our own baselines: processes vs one process,
and a full run vs the no-change rerun.

Run: ``.venv/bin/python bench/bench_study.py [--subjects 20] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def _phase(label: str, seconds: float, n_sessions: int | None = None) -> None:
    per = f"  ({1000 * seconds / n_sessions:7.1f} ms/session)" if n_sessions else ""
    print(f"{label:<44} {seconds:8.2f} s{per}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=20)
    parser.add_argument("--keep", type=Path, help="keep the study in this folder")
    args = parser.parse_args()

    from oncomri.study.demo import write_demo_study
    from oncomri.study.pipeline import run_study

    root = args.keep or Path(tempfile.mkdtemp(prefix="oncomri-bench-study-"))
    try:
        print(f"oncomri study benchmark: {args.subjects} subjects x 4 sessions, "
              f"{os.cpu_count()} cores, folder {root}")
        t0 = time.perf_counter()
        demo = write_demo_study(root / "study", n_subjects=args.subjects, seed=2026)
        _phase("write synthetic study (NIfTI + 1 DICOM rat)", time.perf_counter() - t0)

        # warm the numba kernel cache so compilation is not counted below
        run_study(demo.spec_path, database=str(root / "warm.sqlite"), scheduler="synchronous",
                  progress=False, report=False)
        shutil.rmtree(root / "study" / "derivatives", ignore_errors=True)

        results = {}
        for scheduler in ("processes", "synchronous"):
            db = str(root / f"{scheduler}.sqlite")
            t0 = time.perf_counter()
            summary = run_study(demo.spec_path, database=db, scheduler=scheduler,
                                progress=False, force=True)
            wall = time.perf_counter() - t0
            results[scheduler] = (wall, summary)
            n = summary.n_sessions
            _phase(f"run, scheduler={scheduler}", wall, n)
            for stage, seconds in sorted(summary.stage_s.items(), key=lambda kv: -kv[1]):
                _phase(f"    worker time in {stage}", seconds, n)
            if summary.n_failed:
                print(f"    {summary.n_failed} sessions FAILED: {summary.failures[:3]}")

        t0 = time.perf_counter()
        again = run_study(demo.spec_path, database=str(root / "processes.sqlite"),
                          scheduler="processes", progress=False)
        rerun = time.perf_counter() - t0
        _phase("rerun, nothing changed (hash, skip, report)", rerun, again.n_sessions)
        print(f"    sessions skipped: {again.n_skipped} of {again.n_sessions}")

        wall_p = results["processes"][0]
        wall_s = results["synchronous"][0]
        print(f"\nratios: processes vs one process {wall_s / wall_p:.2f}x faster; "
              f"no-change rerun {wall_p / rerun:.1f}x faster than a full run")
        print(f"time per session (processes): {1000 * wall_p / results['processes'][1].n_sessions:.0f} ms;"
              f" report: {results['processes'][1].report}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
