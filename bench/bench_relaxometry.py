"""Relaxometry benchmark: oncomri against its peers, side by side, in one process.

Series (the issue's definition): 64 x 64 x 16 voxels x 12 echoes, TE 1-24 ms
evenly spaced, T2* 2-100 ms (11 bands of oncomri.sim.relaxometry_phantom),
Rician noise at SNR 50 at TE = 0.

Peers, on the same data:
- ukat 0.7.3 ``ukat.mapping.t2star.T2Star`` with its ``loglin`` and ``2p_exp``
  methods, loaded by ``bench/_ukat_peer.py`` (its unmodified fitting files
  with ``import ukat``'s TensorFlow chain stubbed; see that module);
- ``scipy.optimize.curve_fit`` per voxel, as a user would write it.
The peers are slow (hundreds of voxels/s), so they fit a random stratified
subset of the phantom's voxels (the same subset for all of them); their rate
is voxels fitted / seconds. oncomri fits every voxel of the series. Every
oncomri kernel is compiled before timing; each timing is the best of 3.

Memory: a 256 x 256 x 64 x 16 float32 series (268 MB) is fitted in a child
process; peak memory = peak resident set during the fit (VmHWM, reset just
before it) minus the resident set before the data existed; the ratio to the
data size is printed (the data itself counts).

Usage: python bench/bench_relaxometry.py [--quick] [--no-peers] [--no-memory]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from oncomri.models import R2StarModel  # noqa: E402
from oncomri.sim import accuracy_by_value, relaxometry_phantom  # noqa: E402

SHAPE = (64, 64, 16)
PEER_SUBSET_PER_BAND = 100


def _best_of(n, func):
    best = np.inf
    out = None
    for _ in range(n):
        t0 = time.perf_counter()
        out = func()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _stratified_subset(ph, per_band, rng):
    idx = []
    for k in range(len(ph.values)):
        where = np.flatnonzero((ph.labels == k).ravel())
        idx.append(rng.choice(where, size=min(per_band, where.size), replace=False))
    return np.sort(np.concatenate(idx))


def run_oncomri(ph, repeats):
    results = {}
    n = int(ph.mask.sum())
    for method in R2StarModel.methods:
        model = R2StarModel(ph.protocol, method=method)
        model.fit(ph.data[:2, :2, :1], noise_sigma=ph.sigma)  # compile
        seconds, fit = _best_of(repeats, lambda: model.fit(ph.data, mask=ph.mask,
                                                          noise_sigma=ph.sigma))
        results[f"oncomri {method}"] = (n / seconds, fit.t2star[ph.mask], ph.relaxation_time[ph.mask])
    return results


def run_peers(ph, rng):
    from _ukat_peer import run_ukat_t2star
    from scipy.optimize import curve_fit

    subset = _stratified_subset(ph, PEER_SUBSET_PER_BAND, rng)
    rows = ph.data.reshape(-1, ph.protocol.n_echoes)[subset]
    truth = ph.relaxation_time.reshape(-1)[subset]
    te = ph.protocol.echo_times
    results = {}
    for method in ("loglin", "2p_exp"):
        run_ukat_t2star(rows[:20, None, None, :], te, method)  # warm the pool
        res = run_ukat_t2star(rows[:, None, None, :], te, method)
        t2 = res["t2star_s"].reshape(-1).astype(float)
        t2[t2 <= 0] = np.nan  # ukat writes 0 for failed voxels
        results[f"ukat {method}"] = (rows.shape[0] / res["seconds"], t2, truth)

    def model(t, s0, t2):
        with np.errstate(over="ignore", divide="ignore"):
            return s0 * np.exp(-t / t2)

    t2 = np.full(rows.shape[0], np.nan)
    t0 = time.perf_counter()
    for i, y in enumerate(rows):
        try:
            p, _ = curve_fit(model, te, y, p0=(float(y[0]) * 1.5, 0.02), maxfev=2000)
            t2[i] = p[1]
        except RuntimeError:
            pass
    results["scipy curve_fit"] = (rows.shape[0] / (time.perf_counter() - t0), t2, truth)
    return results


def print_tables(results, values):
    ukat_ll = results.get("ukat loglin", (np.nan,))[0]
    ukat_exp = results.get("ukat 2p_exp", (np.nan,))[0]
    print(f"\n{'method':<22}{'voxels/s':>14}{'x ukat loglin':>15}{'x ukat 2p_exp':>15}")
    for name, (rate, *_rest) in results.items():
        print(f"{name:<22}{rate:>14,.0f}{rate / ukat_ll:>15,.1f}{rate / ukat_exp:>15,.1f}")
    print("\nT2* median bias % (robust precision %), per true T2*")
    print(f"{'method':<22}" + "".join(f"{v * 1e3:>12.3g}ms" for v in values))
    for name, (_, est, truth) in results.items():
        rows = accuracy_by_value(est, truth, values=values)
        cells = "".join(f"{100 * r.median_bias:>+7.1f}({100 * r.precision:>4.1f})" for r in rows)
        print(f"{name:<22}{cells}")


# ---------------------------------------------------------------- memory child

def _rss_kib(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def memory_child(method):
    """Runs in a child process: fit a 256x256x64x16 float32 series, print the peak."""
    te = np.linspace(0.001, 0.024, 16)
    model = R2StarModel(te, method=method)
    warm = relaxometry_phantom(shape=(8, 11, 1), echo_times=te, snr=50)
    model.fit(warm.data, noise_sigma=warm.sigma)  # compile before measuring
    base = _rss_kib("VmRSS")
    shape = (256, 256, 64, 16)
    data = np.empty(shape, np.float32)
    for z in range(shape[2]):  # slice by slice: no full-size temporaries
        sl = relaxometry_phantom(shape=(256, 256, 1), echo_times=te, snr=50, rng=z)
        data[:, :, z, :] = sl.data[:, :, 0, :]
    sigma = sl.sigma
    with open("/proc/self/clear_refs", "w") as fh:  # reset VmHWM to the current RSS
        fh.write("5")
    t0 = time.perf_counter()
    fit = model.fit(data, noise_sigma=sigma)
    seconds = time.perf_counter() - t0
    peak = _rss_kib("VmHWM")
    n = int(np.prod(shape[:3]))
    print(f"MEMORY {method} {data.nbytes} {(peak - base) * 1024} {seconds} {n} "
          f"{int((fit.status == 0).sum())}")


def run_memory(methods):
    print("\nPeak memory fitting a 256x256x64x16 float32 series (268 MB), child process:")
    for method in methods:
        out = subprocess.run([sys.executable, __file__, "--memory-child", method],
                             capture_output=True, text=True, check=True).stdout
        line = next(line for line in out.splitlines() if line.startswith("MEMORY"))
        _, m, size, peak, seconds, n, ok = line.split()
        size, peak = int(size), int(peak)
        print(f"  {m:<12} peak {peak / 2**20:7.0f} MiB = {peak / size:4.2f} x the series "
              f"(target <= 3), {int(n) / float(seconds):,.0f} voxels/s on {int(n):,} voxels")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 repeat instead of 3")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--memory-child", metavar="METHOD", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child)
        return
    import numba

    print(f"oncomri relaxometry bench: {os.cpu_count()} CPUs, numba threads "
          f"{numba.get_num_threads()}, series {SHAPE} x 12 echoes, TE 1-24 ms, SNR 50")
    ph = relaxometry_phantom(shape=SHAPE, snr=50.0, rng=2026)
    results = run_oncomri(ph, 1 if args.quick else 3)
    if not args.no_peers:
        peers = run_peers(ph, np.random.default_rng(0))
        results = {**peers, **results}
    print_tables(results, ph.values)
    if not args.no_memory:
        run_memory(["ncexp", "nlls", "loglin"])


if __name__ == "__main__":
    main()
