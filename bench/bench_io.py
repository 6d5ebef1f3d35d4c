"""DICOM loading benchmark: ``oncomri.io.load`` against dcm2niix, side by side.

Series: 256 x 256 x 64 slices x 12 echoes, classic MR Image Storage, one
int16 file per slice and echo (768 files, ~100 MB), written by
``tests/io/dicom_factory.py`` into a temporary folder (TE 2-24 ms, oblique).

Timed, alternately in the same run, best of 3 with a warm file cache (every
file is read once before timing):

- ``oncomri.io.load(folder)``: headers, sorting, geometry, pixels, rescale,
  a float32 (256, 256, 64, 12) array in memory;
- ``dcm2niix -z n -b y -f %s_%e -o TMP folder``: the same parsing and
  sorting in C, then 12 uncompressed NIfTI files + JSON written to a
  temporary folder (fresh for each run).

Prints seconds, the ratio oncomri / dcm2niix (target <= 3) and throughput in
MB/s of DICOM read. Usage: python bench/bench_io.py [--keep FOLDER]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "io"))

import oncomri.io  # noqa: E402
from dicom_factory import example_affine, write_classic_series  # noqa: E402

SHAPE = (256, 256, 64)
ECHO_TIMES = np.linspace(0.002, 0.024, 12)
TARGET_RATIO = 3.0


def _write_series(folder: Path) -> None:
    rng = np.random.default_rng(0)
    s0 = 800.0 + 400.0 * rng.random(SHAPE, dtype=np.float32)
    r2s = 20.0 + 80.0 * rng.random(SHAPE, dtype=np.float32)
    data = np.empty(SHAPE + (ECHO_TIMES.size,), dtype=np.float32)
    for m, te in enumerate(ECHO_TIMES):
        data[..., m] = s0 * np.exp(-r2s * te) + 5.0 * rng.standard_normal(SHAPE,
                                                                          dtype=np.float32)
    write_classic_series(folder, data, example_affine((0.9, 0.9, 2.0), oblique=True),
                         echo_times=ECHO_TIMES, dtype="int16", series_description="mge_bench")


def _warm(folder: Path) -> int:
    total = 0
    for f in folder.iterdir():
        total += len(f.read_bytes())
    return total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="write (or reuse) the series in this folder")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    dcm2niix = shutil.which("dcm2niix") or "/usr/bin/dcm2niix"
    if not Path(dcm2niix).is_file():
        print("dcm2niix not found; install it (apt-get install dcm2niix)", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="oncomri-bench-io-") as tmp:
        folder = args.keep or Path(tmp) / "series"
        if not folder.is_dir() or len(list(folder.glob("*.dcm"))) != 768:
            t0 = time.perf_counter()
            _write_series(folder)
            print(f"wrote 768 files in {time.perf_counter() - t0:.1f} s: {folder}")
        n_bytes = _warm(folder)
        mb = n_bytes / 1e6

        ours, theirs = [], []
        vol = None
        for i in range(args.repeats):
            t0 = time.perf_counter()
            vol = oncomri.io.load(folder)
            ours.append(time.perf_counter() - t0)
            out = Path(tmp) / f"dcm2niix_{i}"
            out.mkdir()
            t0 = time.perf_counter()
            proc = subprocess.run([dcm2niix, "-z", "n", "-b", "y", "-f", "%s_%e", "-o",
                                   str(out), str(folder)], capture_output=True, text=True)
            theirs.append(time.perf_counter() - t0)
            if proc.returncode != 0:
                print(proc.stdout, proc.stderr, file=sys.stderr)
                return 1
            shutil.rmtree(out)
        assert vol is not None and vol.data.shape == SHAPE + (12,), vol.data.shape
        t_ours, t_theirs = min(ours), min(theirs)
        ratio = t_ours / t_theirs
        print(f"series: {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} x 12 echoes, 768 int16 files, "
              f"{mb:.1f} MB (best of {args.repeats}, warm cache)")
        print(f"  oncomri.io.load : {t_ours:7.3f} s  {mb / t_ours:7.1f} MB/s  "
              f"(runs: {', '.join(f'{t:.3f}' for t in ours)})")
        print(f"  dcm2niix -z n   : {t_theirs:7.3f} s  {mb / t_theirs:7.1f} MB/s  "
              f"(runs: {', '.join(f'{t:.3f}' for t in theirs)})")
        print(f"  ratio oncomri / dcm2niix = {ratio:.2f}  (target <= {TARGET_RATIO:g}: "
              f"{'met' if ratio <= TARGET_RATIO else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
