"""Batched Levenberg–Marquardt least squares with analytic Jacobians and box bounds.

Every nonlinear voxelwise model in oncomri (relaxometry now; DCE, diffusion,
CEST later) fits through :func:`levenberg_marquardt`. A model is a numba
function with the signature ``model(p, x, c, f, J)``:

- ``p`` (n_params,) the parameters;
- ``x`` (n_x, n_meas) independent variables shared by all voxels (echo times,
  b-values, sample times and the arterial input ...);
- ``c`` (n_consts,) per-voxel constants (e.g. the noise sigma);
- ``f`` (n_meas,) and ``J`` (n_meas, n_params) are filled with the model and
  its Jacobian ``df/dp``.

The solver minimises ``sum_j w_j (y_j - f_j(p))^2`` for every voxel
independently, with Marquardt's scaled damping ``(J^T W J + lambda diag(J^T W J))``
(Levenberg, Q Appl Math 1944;2:164; Marquardt, SIAM J Appl Math 1963;11:431;
Nocedal & Wright, *Numerical Optimization*, 2nd ed., §10.3), and box bounds by
projecting each trial step onto the box (a projected LM; steps that would
leave the box are clipped, and a trial is accepted only if it lowers the
cost). Voxels run in parallel (numba ``prange``) in blocks that share one
workspace, so nothing is allocated per voxel.

Status codes per voxel are those of :mod:`oncomri.fitting.status`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import math
import os
import sys
from pathlib import Path

import numba
import numpy as np

from .status import Status

__all__ = ["levenberg_marquardt", "compile_solver"]

_OK = int(Status.OK)
_NOT_CONVERGED = int(Status.NOT_CONVERGED)
_AT_BOUND = int(Status.AT_BOUND)
_FAILED = int(Status.FAILED)
_BLOCK = 64
#: Largest parameter vector (a 5-pool CEST Lorentzian fit has 16); the solve is
#: dense k x k per iteration, so cost grows as k^3.
_MAX_PARAMS = 16


@numba.njit(cache=True)
def _cost(y, w, f):
    s = 0.0
    for j in range(y.shape[0]):
        r = y[j] - f[j]
        s += w[j] * r * r
    return s


# The solver is written once, below, as plain Python over a global name
# ``model``. numba cannot cache a function that receives another compiled
# function as an argument or closure variable, so for each model we write a
# tiny module that imports that model under the name ``model`` and holds this
# source, and let numba compile and cache it there (see compile_solver).
_SOLVER_SOURCE = '''
def solve(y, w, x, c, p0, lb, ub, max_iter, ftol, xtol,
          out_p, out_cost, out_status, out_iter):
    n, m = y.shape
    k = p0.shape[1]
    n_blocks = (n + _BLOCK - 1) // _BLOCK
    for b in numba.prange(n_blocks):
        f = np.empty(m)
        J = np.empty((m, k))
        f_t = np.empty(m)
        J_t = np.empty((m, k))
        A = np.empty((k, k))
        L = np.empty((k, k))
        g = np.empty(k)
        d = np.empty(k)
        p = np.empty(k)
        p_t = np.empty(k)
        for i in range(b * _BLOCK, min(n, (b + 1) * _BLOCK)):
            yi = y[i]
            ci = c[i]
            for q in range(k):
                p[q] = min(max(p0[i, q], lb[q]), ub[q])
            model(p, x, ci, f, J)
            cost = _cost(yi, w, f)
            status = _NOT_CONVERGED
            lam = 1e-3
            it = 0
            if not math.isfinite(cost):
                status = _FAILED
                it = max_iter
            while it < max_iter:
                it += 1
                # normal equations A = J^T W J, g = J^T W r
                for q in range(k):
                    s = 0.0
                    for j in range(m):
                        s += w[j] * J[j, q] * (yi[j] - f[j])
                    g[q] = s
                    for r_ in range(q + 1):
                        s = 0.0
                        for j in range(m):
                            s += w[j] * J[j, q] * J[j, r_]
                        A[q, r_] = s
                        A[r_, q] = s
                accepted = False
                while lam < 1e16:
                    # Cholesky of A + lam diag(A)
                    ok = True
                    for q in range(k):
                        for r_ in range(q + 1):
                            s = A[q, r_]
                            if q == r_:
                                s += lam * A[q, q] + 1e-30
                            for t in range(r_):
                                s -= L[q, t] * L[r_, t]
                            if q == r_:
                                if s <= 0.0:
                                    ok = False
                                    break
                                L[q, q] = math.sqrt(s)
                            else:
                                L[q, r_] = s / L[r_, r_]
                        if not ok:
                            break
                    if not ok:
                        lam *= 10.0
                        continue
                    for q in range(k):  # forward substitution
                        s = g[q]
                        for t in range(q):
                            s -= L[q, t] * d[t]
                        d[q] = s / L[q, q]
                    for q in range(k - 1, -1, -1):  # back substitution
                        s = d[q]
                        for t in range(q + 1, k):
                            s -= L[t, q] * d[t]
                        d[q] = s / L[q, q]
                    for q in range(k):
                        p_t[q] = min(max(p[q] + d[q], lb[q]), ub[q])
                    model(p_t, x, ci, f_t, J_t)
                    cost_t = _cost(yi, w, f_t)
                    if math.isfinite(cost_t) and cost_t <= cost:
                        accepted = True
                        break
                    lam *= 10.0
                if not accepted:
                    # no step lowers the cost: a (bounded) local minimum
                    status = _OK
                    break
                small_step = True
                for q in range(k):
                    if abs(p_t[q] - p[q]) > xtol * (abs(p[q]) + xtol):
                        small_step = False
                decrease = cost - cost_t
                for q in range(k):
                    p[q] = p_t[q]
                for j in range(m):
                    f[j] = f_t[j]
                    for q in range(k):
                        J[j, q] = J_t[j, q]
                cost = cost_t
                lam = max(lam * 0.1, 1e-12)
                if small_step or decrease <= ftol * cost:
                    status = _OK
                    break
            if status == _OK:
                for q in range(k):
                    if (p[q] <= lb[q] and lb[q] > -np.inf) or (p[q] >= ub[q] and ub[q] < np.inf):
                        status = _AT_BOUND
            for q in range(k):
                out_p[i, q] = p[q]
            out_cost[i] = cost
            out_status[i] = status
            out_iter[i] = it

'''

_MODULE_TEMPLATE = '''"""Generated by oncomri.fitting.lm for {module}.{name}; do not edit."""
import math

import numba
import numpy as np

from oncomri.fitting.lm import _AT_BOUND, _BLOCK, _FAILED, _NOT_CONVERGED, _OK, _cost
from {module} import {name} as model
'''


def _cache_dir() -> Path | None:
    root = os.environ.get("ONCOMRI_CACHE_DIR")
    if root is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "oncomri")
    path = Path(root) / "kernels"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return path if os.access(path, os.W_OK) else None


@functools.lru_cache(maxsize=None)
def _package_fingerprint() -> str:
    """Hash of the sources that hold numba code (``fitting`` and ``models``): a changed
    kernel or model function there invalidates the cache; edits elsewhere (I/O, the
    study engine) do not force every process to recompile."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256(numba.__version__.encode())
    for path in sorted(p for sub in ("fitting", "models") for p in (root / sub).rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _model_fingerprint(model) -> str:
    """Hash of the file that defines ``model`` (numba does not track callees' files)."""
    try:
        source = Path(sys.modules[model.__module__].__file__).read_bytes()
    except (AttributeError, KeyError, OSError, TypeError):
        source = b""
    return hashlib.sha256(source).hexdigest()


def _importable(model) -> bool:
    module = getattr(model, "__module__", None)
    name = getattr(model, "__name__", "")
    return (module not in (None, "__main__") and module in sys.modules
            and getattr(sys.modules[module], name, None) is model)


@functools.lru_cache(maxsize=None)
def compile_solver(model):
    """The parallel LM kernel for a numba ``model``, compiled once and cached on disk.

    For a model importable as ``module.name`` the kernel lives in a generated
    module under ``$ONCOMRI_CACHE_DIR/kernels`` (default ``~/.cache/oncomri``),
    where numba caches its machine code, so later processes load it in well
    under a second instead of compiling for several seconds. The module's
    name and text carry a hash of oncomri's numerical sources (``fitting``,
    ``models``) and of the model's file,
    so an edited or upgraded kernel is never served from a stale cache. Other models
    (closures, ``__main__``) are compiled in memory for this process only.
    """
    folder = _cache_dir() if _importable(model) else None
    source = _SOLVER_SOURCE
    if folder is not None:
        text = (_MODULE_TEMPLATE.format(module=model.__module__, name=model.__name__)
                + source + "\n\nsolve = numba.njit(parallel=True, cache=True)(solve)\n")
        # The key covers this solver, oncomri's sources and the model's file,
        # and is written into the module, so any change makes numba recompile.
        key = hashlib.sha256((text + _package_fingerprint() + _model_fingerprint(model))
                             .encode()).hexdigest()[:16]
        text = f"# cache key {key}\n" + text
        path = folder / f"lm_{model.__name__.strip('_')}_{key}.py"
        if not path.exists():
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(text)
            os.replace(tmp, path)
        name = f"_oncomri_kernel_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # numba's cache looks the module up by name
        spec.loader.exec_module(module)
        return module.solve
    namespace = {"math": math, "numba": numba, "np": np, "model": model, "_cost": _cost,
                 "_OK": _OK, "_NOT_CONVERGED": _NOT_CONVERGED, "_AT_BOUND": _AT_BOUND,
                 "_FAILED": _FAILED, "_BLOCK": _BLOCK}
    exec(compile(source, "<oncomri.fitting.lm solver>", "exec"), namespace)
    return numba.njit(parallel=True, cache=False)(namespace["solve"])


def levenberg_marquardt(model, y, p0, *, x, consts=None, weights=None, lower=None,
                        upper=None, max_iter=100, ftol=1e-10, xtol=1e-8):
    """Fit ``model`` to every row of ``y`` by bounded Levenberg–Marquardt.

    Parameters
    ----------
    model : numba function ``model(p, x, c, f, J)``
        The model and its analytic Jacobian (see the module docstring).
    y : ndarray, shape (n_voxels, n_meas)
        Measurements, one voxel per row; float32 is used as is (the
        arithmetic is float64 either way), other dtypes become float64.
    p0 : ndarray, shape (n_voxels, n_params)
        Starting values (clipped into the bounds).
    x : ndarray, shape (n_x, n_meas)
        Independent variables shared by every voxel.
    consts : ndarray, shape (n_voxels, n_consts), optional
        Per-voxel constants passed to the model.
    weights : ndarray, shape (n_meas,), optional
        Least-squares weight of each measurement (default 1).
    lower, upper : array_like, shape (n_params,), optional
        Box bounds (default unbounded).
    max_iter : int
        Maximum number of accepted LM steps per voxel.
    ftol, xtol : float
        Stop when the relative cost decrease is below ``ftol`` or every
        parameter moved less than ``xtol`` relative to its size.

    Returns
    -------
    params : ndarray (n_voxels, n_params)
    cost : ndarray (n_voxels,) weighted residual sum of squares
    status : ndarray (n_voxels,) uint8 :class:`Status` codes
    n_iter : ndarray (n_voxels,) int32
    """
    y = np.asarray(y)
    y = np.ascontiguousarray(y, dtype=y.dtype if y.dtype in (np.float32, np.float64) else np.float64)
    n, m = y.shape
    p0 = np.ascontiguousarray(p0, dtype=np.float64)
    k = p0.shape[1]
    if k > _MAX_PARAMS:
        raise ValueError(f"at most {_MAX_PARAMS} parameters are supported, got {k}")
    x = np.ascontiguousarray(np.atleast_2d(x), dtype=np.float64)
    c = (np.zeros((n, 0)) if consts is None
         else np.ascontiguousarray(consts, dtype=np.float64).reshape(n, -1))
    w = np.ones(m) if weights is None else np.ascontiguousarray(weights, dtype=np.float64)
    lb = np.full(k, -np.inf) if lower is None else np.asarray(lower, np.float64)
    ub = np.full(k, np.inf) if upper is None else np.asarray(upper, np.float64)
    out_p = np.empty((n, k))
    out_cost = np.empty(n)
    out_status = np.empty(n, np.uint8)
    out_iter = np.empty(n, np.int32)
    if n:
        compile_solver(model)(y, w, x, c, p0, lb, ub, int(max_iter), float(ftol),
                              float(xtol), out_p, out_cost, out_status, out_iter)
    return out_p, out_cost, out_status, out_iter
