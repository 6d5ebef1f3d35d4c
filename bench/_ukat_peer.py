"""Run the peer tool ukat 0.7.3 (``ukat.mapping.t2star.T2Star``) in *our* process.

Why not ``pip install ukat``?
    ukat 0.7.3 pins ``scipy<1.12`` and ``scikit-learn~=1.2.1`` (both incompatible
    with our numpy 2.x / scipy 1.17 venv) and ``import ukat`` runs
    ``ukat/__init__.py``, which imports every sub-package (segmentation ->
    renalsegmentor -> TensorFlow, dipy, ...).  None of that is needed to fit T2*.

What is loaded
    ``load_ukat_t2star()`` keeps everything under ``bench/.cache/ukat-0.7.3/``
    (must be git-ignored)::

        ukat-0.7.3-py3-none-any.whl   wheel from PyPI (sha256 checked)
        src/ukat/...                  the unpacked, unmodified ukat sources
        deps/                         ukat's *pure fitting* runtime deps, see below

    The wheel is fetched with ``python -m pip download --no-deps ukat==0.7.3``
    (an sdist would be unpacked the same way).  Then exactly these ukat files
    are executed, unmodified, through ``importlib``:

        ukat/mapping/fitting/__init__.py    (only does ``from .relaxation import ...``)
        ukat/mapping/fitting/relaxation.py  (Model, fit_image, fit_signal -> curve_fit)
        ukat/mapping/t2star.py              (T2Star, T2StarExpModel, loglin fit)

    The third-party modules those files import at the top and actually call
    while fitting are the real ones, installed with ``pip install --no-deps
    --target deps/`` (never into the venv) at versions that work with numpy 2:
    ``scikit-learn==1.4.2`` (+ joblib, threadpoolctl) for ``r2_score`` -- called
    once per voxel by both methods, so it is part of ukat's real cost -- and
    ``pathos`` (+ dill, multiprocess, ppft, pox) for ukat's ``multithread=True``
    pool.  ``deps/`` is *appended* to ``sys.path``, so packages already in the
    venv keep priority (the versions actually used are returned in
    ``result["versions"]``).  ukat pins ``scikit-learn~=1.2.1``, which has no
    numpy-2 build; 1.4.2 is the oldest release that supports numpy 2.

What is stubbed (and why the fitting code path is unchanged)
    * ``ukat`` and ``ukat.mapping`` are empty package objects put in
      ``sys.modules`` (``__path__ = []``) so that their ``__init__.py`` files,
      which import TensorFlow/dipy/every mapping module, never run.  They
      contain no code used by T2Star.  They stay registered after loading:
      ukat's multithread mode pickles ``fit_signal`` / ``T2Star`` by module
      name and the forked worker processes must resolve those names.
    * ``tqdm``: a placeholder module is put in ``sys.modules`` only while the
      ukat files execute (then the previous state is restored), and the name
      ``tqdm`` inside the loaded ``relaxation`` and ``t2star`` modules is
      replaced by a pass-through ``lambda it, **kw: it``.  In ukat, tqdm only
      wraps the single-process ``map`` iterator to draw a progress bar; the
      pass-through yields the same items in the same order, silences the bars,
      and removes tqdm's small per-item overhead (negligible next to
      ``curve_fit``/``r2_score``).
    * ``nibabel`` (only used by ``T2Star.to_nifti``) is the real package if it
      is installed (it is in our venv); otherwise a placeholder is used during
      loading.  ``to_nifti`` is never called here.

numpy 2 / scipy 1.17 compatibility
    No shim is needed: the three loaded files use no alias removed in numpy 2
    (np.float, np.NaN, ...) nor any removed scipy API (checked by reading them;
    the ``__main__`` smoke test exercises both methods).

Units and conventions
    ukat expects echo times in **milliseconds** and returns T2* in **ms** (its
    docstrings say so and its bounds/initial guess, T2* in [0, 700] ms with
    p0 = 20 ms, only make sense in ms).  ``run_ukat_t2star`` takes echo times
    in **seconds**, passes ``1000 * TE`` to ukat and returns T2* in **seconds**
    (``t2star_s = t2star_ms / 1000``).  S0 is in the input signal units (ukat
    divides the data by its global ``nanmax`` before fitting and multiplies
    M0 back).

Methods (exact names in 0.7.3): ``'loglin'`` and ``'2p_exp'``
    * ``'loglin'``: weighted linear fit of log(signal) vs TE, a pure-Python
      loop per voxel; no error estimates (NaN).
    * ``'2p_exp'``: ``scipy.optimize.curve_fit`` of S = M0 exp(-TE/T2*) with
      ``bounds=([0, 0], [700 ms, 100])`` (M0 bound is on the max-normalised
      data, i.e. 100 x global max), p0 = [20 ms, 1] -> method 'trf'.

Bounds / failures (ukat's own behaviour, kept as-is)
    ukat never returns NaN for a fitted voxel: it writes **0** for T2* and M0
    (and r2) when
      - the voxel is outside the mask or has a NaN sample,
      - 'loglin': the slope gives T2* < 0, T2* > 700 ms or NaN, or the
        weighted design is degenerate,
      - '2p_exp': ``curve_fit`` raises RuntimeError/ValueError (r2 = -1e6
        before the final filter),
      - both: the result is within 0.1 % of the upper bound
        (T2* > 699.3 ms or M0 > 99.9 x max), i.e. T2* is effectively capped
        at ~0.7 s and values at the cap are zeroed.
    ``run_ukat_t2star`` keeps those zeros in ``t2star_s`` / ``s0`` and adds
    ``failed`` (inside the mask and T2* == 0) so callers can exclude them.
    'loglin' also emits a warning when > 30 % of voxels have T2* < 20 ms; warnings
    are captured into ``result["warnings"]`` instead of being printed.

Single-process vs multithreaded
    ``T2Star`` is always called with an explicit ``multithread`` bool (never
    ukat's 'auto') and the value used is returned in ``result["multithread"]``.
    Default here: ``False`` for 'loglin' (same as ukat's 'auto') and ``True``
    for '2p_exp' (pathos ProcessPool over all cores; same as 'auto' for > 20
    voxels).  On this 2-core machine that was the faster choice for each
    method when the second core was idle (500-2000 voxels: '2p_exp' ~370-450
    vs ~200-280 voxels/s; 'loglin' ~1.7-1.9k multithreaded vs ~1.6-2.9k
    single-process voxels/s).  When another process keeps one core busy,
    multithreading gives '2p_exp' no gain or a small loss.  Run
    ``python bench/_ukat_peer.py --both-modes`` to re-check.
    pathos keeps its worker pool alive between calls, so the *first*
    multithreaded call also pays for forking the workers -- do a warm-up call
    before timing.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import types
import warnings
import zipfile
from pathlib import Path

import numpy as np

UKAT_VERSION = "0.7.3"
UKAT_WHEEL = f"ukat-{UKAT_VERSION}-py3-none-any.whl"
UKAT_WHEEL_SHA256 = "f66e0cf5b314cf4b2947a1533acb5792b3a5f4d34a4699d58763c022fc339b47"

# Runtime deps of the loaded ukat files, installed with --no-deps into deps/.
PEER_DEPS = (
    "scikit-learn==1.4.2",  # r2_score; oldest release with numpy-2 support
    "joblib==1.4.2",  # imported by sklearn
    "threadpoolctl==3.5.0",  # imported by sklearn
    "pathos==0.3.5",  # ProcessPool for multithread=True
    "dill==0.4.1",
    "multiprocess==0.70.19",
    "ppft==1.7.8",
    "pox==0.3.7",
)

CACHE_DIR = Path(__file__).resolve().parent / ".cache" / f"ukat-{UKAT_VERSION}"

METHODS = ("loglin", "2p_exp")
DEFAULT_MULTITHREAD = {"loglin": False, "2p_exp": True}

_loaded: dict = {}


# ----------------------------------------------------------------------------
# cache: download + unpack
# ----------------------------------------------------------------------------
def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}"
        )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _unpack(archive: Path, dest: Path) -> None:
    """Unpack a wheel (zip) or sdist (tar.gz / zip) and leave the package at dest/ukat."""
    raw = dest.parent / "_raw"
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(raw)
    else:
        with tarfile.open(archive) as tf:
            if hasattr(tarfile, "data_filter"):
                tf.extractall(raw, filter="data")
            else:  # pragma: no cover - old Python
                tf.extractall(raw)
    hits = sorted(raw.glob("**/ukat/mapping/t2star.py"), key=lambda p: len(p.parts))
    if not hits:
        raise RuntimeError(f"ukat/mapping/t2star.py not found in {archive.name}")
    dest.mkdir(parents=True)
    shutil.move(str(hits[0].parents[1]), dest / "ukat")
    shutil.rmtree(raw)


def _ensure_cache() -> Path:
    """Make sure CACHE_DIR holds the ukat sources and deps; return CACHE_DIR."""
    if (CACHE_DIR / ".complete").is_file():
        return CACHE_DIR
    CACHE_DIR.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR.parent, prefix=".tmp-ukat-") as tmp:
        tmp = Path(tmp)
        dl = tmp / "download"
        _pip("download", "--no-deps", f"ukat=={UKAT_VERSION}", "-d", str(dl))
        (archive,) = list(dl.iterdir())
        if archive.name == UKAT_WHEEL and _sha256(archive) != UKAT_WHEEL_SHA256:
            raise RuntimeError(f"sha256 mismatch for {archive.name}")
        staged = tmp / "staged"
        _unpack(archive, staged / "src")
        shutil.copy2(archive, staged / archive.name)
        _pip("install", "--no-deps", "--no-compile", "--target", str(staged / "deps"),
             *PEER_DEPS)
        (staged / ".complete").write_text(
            f"{archive.name} sha256={_sha256(archive)}\n" + "\n".join(PEER_DEPS) + "\n"
        )
        if CACHE_DIR.exists():  # leftover of an interrupted run
            shutil.rmtree(CACHE_DIR)
        os.replace(staged, CACHE_DIR)
    return CACHE_DIR


# ----------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------
def _no_progress(iterable, *args, **kwargs):
    """Stand-in for tqdm.tqdm: returns the iterable unchanged (no progress bar)."""
    return iterable


def _empty_package(name: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__path__ = []  # a package, but nothing is found on disk through it
    mod.__oncomri_stub__ = True
    sys.modules[name] = mod
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, mod)
    return mod


def _exec_file(name: str, path: Path, is_package: bool = False) -> types.ModuleType:
    locations = [str(path.parent)] if is_package else None
    spec = importlib.util.spec_from_file_location(
        name, path, submodule_search_locations=locations
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[name]
        raise
    parent, _, child = name.rpartition(".")
    setattr(sys.modules[parent], child, mod)
    return mod


@contextlib.contextmanager
def _temporary_modules(stubs: dict):
    """Put placeholder modules in sys.modules, restore the previous state after."""
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


def load_ukat_t2star() -> type:
    """Return ukat 0.7.3's ``T2Star`` class, loaded without ``import ukat``.

    Downloads/unpacks into ``bench/.cache/ukat-0.7.3/`` on first use (needs
    PyPI); later calls reuse the cache and the already loaded module.
    """
    if "T2Star" in _loaded:
        return _loaded["T2Star"]
    existing = sys.modules.get("ukat")
    if existing is not None and not getattr(existing, "__oncomri_stub__", False):
        raise RuntimeError("a real 'ukat' package is already imported in this process")

    root = _ensure_cache()
    pkg = root / "src" / "ukat"
    deps = str(root / "deps")
    if deps not in sys.path:
        sys.path.append(deps)  # appended: the venv's own packages win

    stubs = {"tqdm": types.ModuleType("tqdm")}
    stubs["tqdm"].tqdm = _no_progress
    if importlib.util.find_spec("nibabel") is None:
        stubs["nibabel"] = types.ModuleType("nibabel")  # only used by to_nifti

    _empty_package("ukat")
    _empty_package("ukat.mapping")
    with _temporary_modules(stubs):
        fitting = _exec_file(
            "ukat.mapping.fitting", pkg / "mapping" / "fitting" / "__init__.py",
            is_package=True,
        )
        t2star = _exec_file("ukat.mapping.t2star", pkg / "mapping" / "t2star.py")
    relaxation = sys.modules["ukat.mapping.fitting.relaxation"]
    relaxation.tqdm = _no_progress
    t2star.tqdm = _no_progress

    _loaded.update(module=t2star, relaxation=relaxation, fitting=fitting,
                   T2Star=t2star.T2Star)
    return t2star.T2Star


def _versions() -> dict:
    out = {"ukat": UKAT_VERSION}
    for dist in ("scikit-learn", "pathos", "numpy", "scipy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover
            out[dist] = None
    return out


# ----------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------
def run_ukat_t2star(data, echo_times_s, method, mask=None, multithread=None) -> dict:
    """Fit T2* with ukat 0.7.3.

    Parameters
    ----------
    data : array (..., n_echoes), magnitude signal.
    echo_times_s : (n_echoes,) echo times in seconds (converted to ms for ukat).
    method : 'loglin' or '2p_exp' (ukat's names).
    mask : optional boolean array of shape data.shape[:-1].
    multithread : bool or None; None -> DEFAULT_MULTITHREAD[method].

    Returns
    -------
    dict with
        t2star_s     T2* in seconds, shape data.shape[:-1]; 0 where ukat failed,
                     hit its bounds or the voxel was masked out (see ``failed``)
        s0           M0 in input signal units (0 where T2* is 0)
        t2star_err_s, s0_err  curve_fit standard errors ('2p_exp'; NaN for 'loglin')
        r2           ukat's per-voxel R^2
        failed       bool, inside mask and t2star_s == 0
        seconds      wall time of the ``T2Star(...)`` call alone
        method, multithread, warnings (list of str), versions
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if multithread is None:
        multithread = DEFAULT_MULTITHREAD[method]
    multithread = bool(multithread)

    T2Star = load_ukat_t2star()
    data = np.array(data, dtype=np.float64)  # copy: ukat must not alias our data
    te_ms = np.asarray(echo_times_s, dtype=np.float64).reshape(-1) * 1000.0
    if data.shape[-1] != te_ms.size:
        raise ValueError("last axis of data must match the number of echo times")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != data.shape[:-1]:
            raise ValueError("mask must have shape data.shape[:-1]")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        fit = T2Star(data, te_ms, np.eye(4), mask=mask, method=method,
                     multithread=multithread)
        seconds = time.perf_counter() - t0

    t2star_s = np.asarray(fit.t2star_map, dtype=np.float64) / 1000.0
    inside = fit.mask
    return {
        "t2star_s": t2star_s,
        "s0": np.asarray(fit.m0_map, dtype=np.float64),
        "t2star_err_s": np.asarray(fit.t2star_err, dtype=np.float64) / 1000.0,
        "s0_err": np.asarray(fit.m0_err, dtype=np.float64),
        "r2": np.asarray(fit.r2, dtype=np.float64),
        "failed": inside & (t2star_s == 0),
        "seconds": seconds,
        "method": method,
        "multithread": multithread,
        "warnings": [str(w.message) for w in caught],
        "versions": _versions(),
    }


# ----------------------------------------------------------------------------
# smoke test
# ----------------------------------------------------------------------------
def _simulate(n_vox=500, seed=0):
    rng = np.random.default_rng(seed)
    te_s = np.linspace(1e-3, 24e-3, 12)
    t2_true = rng.uniform(2e-3, 100e-3, n_vox)
    clean = 1000.0 * np.exp(-te_s[None, :] / t2_true[:, None])
    sigma = 20.0
    noisy = np.hypot(clean + rng.normal(0, sigma, clean.shape),
                     rng.normal(0, sigma, clean.shape))  # Rician magnitude
    return noisy, te_s, t2_true


def _main(argv):
    both_modes = "--both-modes" in argv
    data, te_s, t2_true = _simulate()
    t0 = time.perf_counter()
    load_ukat_t2star()
    print(f"loaded ukat {UKAT_VERSION} T2Star in {time.perf_counter() - t0:.2f} s "
          f"(from {CACHE_DIR})")
    print(f"{data.shape[0]} voxels, {te_s.size} echoes, TE {te_s[0]*1e3:g}-"
          f"{te_s[-1]*1e3:g} ms, T2* U(2,100) ms, S0 1000, Rician sigma 20")
    for method in METHODS:
        modes = (False, True) if both_modes else (DEFAULT_MULTITHREAD[method],)
        for mt in modes:
            if mt:
                run_ukat_t2star(data[:8], te_s, method, multithread=True)  # fork pool
            res = run_ukat_t2star(data, te_s, method, multithread=mt)
            ok = ~res["failed"]
            rel = (res["t2star_s"][ok] - t2_true[ok]) / t2_true[ok]
            print(f"  {method:7s} multithread={str(mt):5s}: "
                  f"{data.shape[0] / res['seconds']:9.0f} voxels/s "
                  f"({res['seconds']:.3f} s), failed {int(res['failed'].sum())}, "
                  f"median rel. T2* bias {np.median(rel):+.2%} "
                  f"(median |rel err| {np.median(np.abs(rel)):.2%})"
                  + (f", {len(res['warnings'])} warning(s)" if res["warnings"] else ""))
    print("versions:", _versions())


if __name__ == "__main__":
    _main(sys.argv[1:])
