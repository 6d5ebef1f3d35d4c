"""T1 mapping: variable flip angle (spoiled gradient echo) and inversion recovery.

:class:`VFAModel` fits the steady-state spoiled gradient-echo signal

    S(a) = M0 sin(k a) (1 - E) / (1 - E cos(k a)),   E = exp(-TR R1)

over several flip angles ``a`` (Fram et al., Magn Reson Imaging 1987;5:201;
Deoni, Rutt & Peters, MRM 2003;49:515 "DESPOT1"), where ``k`` is the relative
transmit field (B1 map; 1 = nominal) of each voxel. Methods:

``linear``
    DESPOT1: ``S/sin(a) = E S/tan(a) + M0 (1 - E)`` is a straight line, fitted
    by ordinary least squares (closed form): ``R1 = -ln(slope)/TR``,
    ``M0 = intercept / (1 - slope)``. Fast; noise enters both axes, so it is
    slightly biased at low SNR.
``nonlinear``
    least squares of the signal equation itself over (M0, R1), by the
    batched bounded Levenberg–Marquardt solver with an analytic Jacobian,
    started from the linear fit. This is the default.

:class:`IRModel` fits inversion-recovery series, measurements at inversion
times TI:

``two_parameter``
    ``S(TI) = M0 (1 - 2 exp(-TI R1))``: ideal inversion and full recovery
    (TR >> T1).
``three_parameter``
    ``S(TI) = A - B exp(-TI R1)``: ``B/A`` absorbs imperfect inversion
    (inversion efficiency, 2 for a perfect 180°) and incomplete recovery;
    ``M0 = A``. This is the default.
``look_locker``
    the three-parameter fit gives the apparent ``T1* = 1/R1*`` of a
    Look-Locker (or MOLLI-type) readout; the Look-Locker correction
    ``T1 = T1* (B/A - 1)`` (Deichmann & Haase, J Magn Reson 1992;96:608)
    gives T1, and ``M0 = B - A``. Voxels with ``B <= A`` (no correction
    possible) are FAILED.

Magnitude data (the default, ``signal='magnitude'``) lose the sign of the
longitudinal magnetisation before the null. They are fitted with polarity
restoration as in the RD-NLS-PR algorithm of Barral et al. (MRM
2010;64:1057): with the inversion times sorted, the null lies next to the
sample of smallest magnitude, so the two candidate sign patterns (samples
before that minimum inverted, or up to and including it) are both fitted
and the one with the lower residual is kept. Starting values come from a
grid search over R1 with the linear parameters solved in closed form (the
"reduced-dimension" search of the same paper), refined by Levenberg–Marquardt.
Signed (phase-corrected real) data, ``signal='real'``, are fitted directly
and must be positive at long TI.

All citations in this module were written from memory and not checked
against the papers (volume/page numbers may need checking).

Maps are in SI units: ``t1`` (s), ``r1`` (1/s), ``m0`` (signal units), the
fit quality (``rsquared``, ``rmse``) and a per-voxel ``status``
(:class:`oncomri.fitting.Status`). :class:`T1Fit` is the result of both models.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ..core.errors import ProtocolError, ValidationError
from ..core.protocols import InversionRecoveryProtocol, VariableFlipAngleProtocol
from ..fitting import (
    DEFAULT_CHUNK_SIZE,
    STATUS_DESCRIPTIONS,
    Status,
    as_mask,
    fit_voxelwise,
    levenberg_marquardt,
)
from .base import Fit, Model, result_dtype

__all__ = [
    "spgr_signal",
    "inversion_recovery_signal",
    "look_locker_t1",
    "despot1_linear",
    "VFAModel",
    "IRModel",
    "T1Fit",
    "fit_t1_volume",
    "parse_flip_angles",
    "check_degrees",
    "parse_times",
    "T1_VOLUME_OPTIONS",
]

#: Default bounds on R1 (and on R1* for Look-Locker) in 1/s: T1 from 1 ms to 100 s.
DEFAULT_R1_BOUNDS = (0.01, 1000.0)


# --------------------------------------------------------------------------
# Pure signal equations (numpy)
# --------------------------------------------------------------------------

def spgr_signal(flip_angles, m0, r1, repetition_time, b1=1.0) -> np.ndarray:
    """Steady-state spoiled gradient-echo signal (Fram et al. 1987; Deoni et al. 2003).

    ``S = M0 sin(k a) (1 - E) / (1 - E cos(k a))`` with ``E = exp(-TR R1)``.

    Parameters
    ----------
    flip_angles : array_like (n,)
        Nominal flip angles in radians.
    m0, r1 : array_like
        Equilibrium signal (signal units) and R1 (1/s), broadcastable.
    repetition_time : float
        TR in s.
    b1 : array_like
        Relative transmit field ``k`` (1 = nominal), broadcastable with ``m0``.

    Returns
    -------
    ndarray of shape ``broadcast(m0, r1, b1).shape + (n,)``
    """
    fa = np.asarray(flip_angles, dtype=np.float64)
    m0, r1, b1 = (np.asarray(v, dtype=np.float64)[..., None] for v in (m0, r1, b1))
    a = b1 * fa
    e = np.exp(-float(repetition_time) * r1)
    return m0 * np.sin(a) * (1.0 - e) / (1.0 - e * np.cos(a))


def inversion_recovery_signal(inversion_times, a, b, r1, *, magnitude=False) -> np.ndarray:
    """Inversion-recovery signal ``A - B exp(-TI R1)`` (or its magnitude).

    The two-parameter model is ``A = M0``, ``B = 2 M0``. Shape
    ``broadcast(a, b, r1).shape + (n,)``; ``inversion_times`` in s, ``r1`` in 1/s.
    """
    ti = np.asarray(inversion_times, dtype=np.float64)
    a, b, r1 = (np.asarray(v, dtype=np.float64)[..., None] for v in (a, b, r1))
    s = a - b * np.exp(-r1 * ti)
    return np.abs(s) if magnitude else s


def look_locker_t1(t1_star, a, b) -> np.ndarray:
    """Look-Locker correction ``T1 = T1* (B/A - 1)`` (Deichmann & Haase, JMR 1992;96:608).

    ``t1_star`` (s) is the apparent recovery time of ``A - B exp(-t/T1*)``.
    NaN where ``B <= A`` or ``A <= 0``.
    """
    t1_star, a, b = (np.asarray(v, dtype=np.float64) for v in (t1_star, a, b))
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = t1_star * (b / a - 1.0)
    return np.where((a > 0) & (b > a) & np.isfinite(t1), t1, np.nan)


def despot1_linear(rows, flip_angles, repetition_time, b1=None):
    """DESPOT1 linear fit of every row (Deoni et al., MRM 2003;49:515).

    Regresses ``y = S/sin(ka)`` on ``x = S/tan(ka)`` by ordinary least squares;
    slope ``E = exp(-TR R1)``, intercept ``M0 (1 - E)``.

    Parameters
    ----------
    rows : ndarray (n, m)
        Signals at the ``m`` flip angles.
    flip_angles : array_like (m,)
        Nominal flip angles in radians.
    repetition_time : float
        TR in s.
    b1 : ndarray (n,), optional
        Relative transmit field per row.

    Returns
    -------
    m0, r1 : ndarray (n,)
        NaN where the slope is not in (0, 1) (no physical T1) or the
        regression is degenerate.
    slope, intercept : ndarray (n,)
    """
    rows = np.asarray(rows, dtype=np.float64)
    a = np.asarray(flip_angles, dtype=np.float64)[None, :]
    if b1 is not None:
        a = a * np.asarray(b1, dtype=np.float64)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        y = rows / np.sin(a)
        x = rows / np.tan(a)
        xm = x.mean(axis=1, keepdims=True)
        ym = y.mean(axis=1, keepdims=True)
        dx = x - xm
        sxx = np.einsum("ij,ij->i", dx, dx)
        slope = np.einsum("ij,ij->i", dx, y - ym) / sxx
        intercept = ym[:, 0] - slope * xm[:, 0]
        good = np.isfinite(slope) & (slope > 0) & (slope < 1) & (sxx > 0)
        r1 = np.where(good, -np.log(np.where(good, slope, 0.5)) / repetition_time, np.nan)
        m0 = np.where(good, intercept / (1.0 - slope), np.nan)
    return m0, r1, slope, intercept


# --------------------------------------------------------------------------
# Model kernels for the batched LM: model(p, x, c, f, J)
# --------------------------------------------------------------------------

@numba.njit(cache=True)
def _kernel_spgr(p, x, c, f, J):
    """p = (M0, R1); x[0] = flip angles (rad), x[1, 0] = TR (s); c[0] = B1 factor."""
    m0 = p[0]
    tr = x[1, 0]
    e = math.exp(-tr * p[1])
    k = c[0]
    for j in range(x.shape[1]):
        b = k * x[0, j]
        sb = math.sin(b)
        cb = math.cos(b)
        den = 1.0 - e * cb
        g = sb * (1.0 - e) / den
        f[j] = m0 * g
        J[j, 0] = g
        # dS/dE = M0 sin(b) (cos(b) - 1) / den^2, dE/dR1 = -TR E
        J[j, 1] = m0 * sb * (1.0 - cb) * tr * e / (den * den)


@numba.njit(cache=True)
def _kernel_ir(p, x, c, f, J):
    """x[0] = inversion times (s). Three parameters p = (A, B, R1): A - B exp(-TI R1);
    two parameters p = (M0, R1): M0 (1 - 2 exp(-TI R1)). One kernel, one compilation."""
    if p.shape[0] == 2:
        for j in range(x.shape[1]):
            e = math.exp(-p[1] * x[0, j])
            f[j] = p[0] * (1.0 - 2.0 * e)
            J[j, 0] = 1.0 - 2.0 * e
            J[j, 1] = 2.0 * p[0] * x[0, j] * e
    else:
        for j in range(x.shape[1]):
            e = math.exp(-p[2] * x[0, j])
            f[j] = p[0] - p[1] * e
            J[j, 0] = 1.0
            J[j, 1] = -e
            J[j, 2] = p[1] * x[0, j] * e


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def _quality(rows, pred):
    """(rsquared, rmse) per row."""
    res = rows - pred
    rss = np.einsum("ij,ij->i", res, res)
    dev = rows - rows.mean(axis=1, keepdims=True)
    tss = np.einsum("ij,ij->i", dev, dev)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(tss > 0, 1.0 - rss / tss, np.nan)
    return r2, np.sqrt(rss / rows.shape[1])


def _check_r1_bounds(r1_bounds):
    lo, hi = (float(v) for v in r1_bounds)
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo < hi):
        raise ValidationError(f"r1_bounds must satisfy 0 < low < high (1/s), got {tuple(r1_bounds)}")
    return lo, hi


def _check_data(data, n, what):
    data = np.asanyarray(data)
    if data.ndim < 1 or data.shape[-1] != n:
        raise ValidationError(
            f"data has shape {data.shape} but the protocol lists {n} {what}; "
            f"put the {what} on the last axis")
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise ValidationError(
            f"data must be real values, got dtype {data.dtype}; pass np.abs(complex_data)")
    return data


# --------------------------------------------------------------------------
# Variable flip angle
# --------------------------------------------------------------------------

def _vfa_closed_form(rows, fa, tr, kappa, bounds):
    """Linear DESPOT1 with the R1 bounds applied: dict(m0, r1, status)."""
    lo, hi = bounds
    m0, r1, slope, _ = despot1_linear(rows, fa, tr, kappa)
    n = rows.shape[0]
    status = np.full(n, Status.OK, dtype=np.uint8)
    degenerate = ~np.isfinite(slope)
    # slope >= 1: R1 <= 0 (below any bound); slope <= 0: R1 infinite
    r1 = np.where(np.isfinite(r1), r1, np.where(slope >= 1, lo, hi))
    clipped = np.clip(r1, lo, hi)
    at_bound = ((clipped != r1) | ~np.isfinite(m0)) & ~degenerate
    if np.any(at_bound):  # least-squares M0 for the clipped R1
        g = spgr_signal(fa, 1.0, clipped[at_bound], tr, kappa[at_bound])
        m0[at_bound] = np.einsum("ij,ij->i", rows[at_bound], g) / np.einsum("ij,ij->i", g, g)
    status[at_bound] = Status.AT_BOUND
    status[degenerate] = Status.FAILED
    return {"m0": m0, "r1": clipped, "status": status}


def _vfa_linear(rows, fa, tr, kappa, ctx):
    return _vfa_closed_form(rows, fa, tr, kappa, ctx["r1_bounds"])


def _vfa_nonlinear(rows, fa, tr, kappa, ctx):
    lo, hi = ctx["r1_bounds"]
    start = _vfa_closed_form(rows, fa, tr, kappa, (lo, hi))
    m0 = start["m0"]
    r1 = start["r1"]
    bad = ~(np.isfinite(m0) & (m0 > 0) & np.isfinite(r1))
    if np.any(bad):
        r1 = np.where(bad, np.clip(1.0, lo, hi), r1)
        g = spgr_signal(fa, 1.0, r1[bad], tr, kappa[bad])
        m0 = m0.copy()
        m0[bad] = rows[bad].max(axis=1) / np.maximum(g.max(axis=1), 1e-12)
    x = np.vstack([fa, np.full(fa.size, tr)])
    p, _, st, _ = levenberg_marquardt(
        _kernel_spgr, rows, np.column_stack([m0, r1]), x=x, consts=kappa[:, None],
        lower=[0.0, lo], upper=[np.inf, hi], max_iter=ctx["max_iter"])
    return {"m0": p[:, 0], "r1": p[:, 1], "status": st}


class VFAModel(Model):
    """T1 by variable flip angle (spoiled gradient echo), linear or nonlinear.

    Parameters
    ----------
    protocol : VariableFlipAngleProtocol
        Flip angles (radians) and TR (s).
    method : {'nonlinear', 'linear'} or callable
        ``'linear'``: DESPOT1 (Deoni et al., MRM 2003;49:515), closed form.
        ``'nonlinear'`` (default): least squares of the signal equation by
        bounded Levenberg–Marquardt started from the linear fit. A callable
        ``method(rows, flip_angles, tr, b1_rows, ctx) -> dict(m0, r1, status)``
        is also accepted.
    r1_bounds : (float, float)
        Bounds on R1 in 1/s (default 0.01–1000).
    max_iter : int
        Iteration limit of the nonlinear fit.
    chunk_size : int
        Voxels per chunk (memory bound).

    Examples
    --------
    >>> proto = VariableFlipAngleProtocol(np.deg2rad([2, 5, 10, 15]), 0.005)  # doctest: +SKIP
    >>> fit = VFAModel(proto).fit(data, mask=mask, b1=b1_map)                  # doctest: +SKIP
    >>> fit.t1, fit.r1, fit.m0, fit.status                                     # doctest: +SKIP
    """

    methods = {"nonlinear": _vfa_nonlinear, "linear": _vfa_linear}
    default_method = "nonlinear"

    def __init__(self, protocol, *, method=None, r1_bounds=DEFAULT_R1_BOUNDS,
                 max_iter: int = 100, chunk_size: int = DEFAULT_CHUNK_SIZE):
        if not isinstance(protocol, VariableFlipAngleProtocol):
            raise ProtocolError(
                f"VFAModel needs a VariableFlipAngleProtocol (flip angles in radians, TR in s), "
                f"got {type(protocol).__name__}")
        super().__init__(protocol, method=method)
        self.r1_bounds = _check_r1_bounds(r1_bounds)
        self.max_iter = int(max_iter)
        self.chunk_size = int(chunk_size)

    @classmethod
    def fit_volume(cls, volume, *, mask=None, method=None, names=None, progress=None,
                   **options):
        """Fit a loaded T1 series from plain options: see :func:`fit_t1_volume`."""
        return fit_t1_volume(volume, "vfa", mask=mask, method=method, names=names,
                             progress=progress, **options)

    def fit(self, data, *, mask=None, b1=None, progress=None) -> "T1Fit":
        """Fit every voxel of ``data``.

        Parameters
        ----------
        data : ndarray (..., n_flip_angles)
            Signals, flip angles on the last axis in the protocol's order. Not modified.
        mask : bool ndarray of data.shape[:-1], optional
        b1 : float or ndarray of data.shape[:-1], optional
            Relative transmit field (actual / nominal flip angle; 1 = nominal),
            a per-voxel constant of the fit. Voxels with a non-finite or
            non-positive B1 get status INVALID_DATA.
        progress : callable, optional
            ``progress(n_done, n_total)`` after each chunk.
        """
        data = _check_data(data, self.protocol.n_measurements, "flip angles")
        spatial = data.shape[:-1]
        aux = {}
        b1_map = None
        if b1 is not None:
            b1_arr = np.asarray(b1, dtype=np.float64)
            if b1_arr.ndim and b1_arr.shape != spatial:
                raise ValidationError(
                    f"b1 map has shape {b1_arr.shape}; it must match the spatial shape {spatial}")
            finite = b1_arr[np.isfinite(b1_arr)]
            if finite.size and np.median(finite) > 3.0:
                raise ValidationError(
                    f"b1 values around {np.median(finite):g} look like percent; give the relative "
                    "flip-angle scale (1 = nominal), e.g. divide by 100")
            b1_map = np.broadcast_to(b1_arr, spatial)
            aux["b1"] = b1_map
        fa = self.protocol.flip_angles
        tr = float(self.protocol.repetition_time)
        ctx = {"r1_bounds": self.r1_bounds, "max_iter": self.max_iter}
        dtype = result_dtype(data)

        def fit_rows(rows, aux_rows):
            rows = np.asarray(rows, dtype=np.float64)  # one compiled solver for every dtype
            n = rows.shape[0]
            kappa = aux_rows.get("b1", np.ones(n))
            bad_b1 = ~(np.isfinite(kappa) & (kappa > 0))
            kappa = np.where(bad_b1, 1.0, kappa)
            res = self._method(rows, fa, tr, kappa, ctx)
            m0 = np.asarray(res["m0"], dtype=np.float64)
            r1 = np.asarray(res["r1"], dtype=np.float64)
            status = np.asarray(res["status"], dtype=np.uint8).copy()
            pred = spgr_signal(fa, np.nan_to_num(m0), np.nan_to_num(r1), tr, kappa)
            r2, rmse = _quality(rows, pred)
            status[bad_b1] = Status.INVALID_DATA
            drop = (status == Status.FAILED) | bad_b1
            out = {"m0": m0, "r1": r1, "rsquared": r2, "rmse": rmse}
            out = {k: np.where(drop, np.nan, v) for k, v in out.items()}
            out["status"] = status
            return out

        outputs = {"m0": dtype, "r1": dtype, "rsquared": dtype, "rmse": dtype, "status": np.uint8}
        maps = fit_voxelwise(data, fit_rows, outputs=outputs, mask=mask, aux=aux,
                             chunk_size=self.chunk_size, progress=progress)
        return T1Fit(self, maps, b1=b1_map)

    def _predict(self, fit):
        b1 = 1.0 if fit.b1 is None else np.nan_to_num(fit.b1, nan=1.0)
        return spgr_signal(self.protocol.flip_angles, np.nan_to_num(fit.m0),
                           np.nan_to_num(fit.r1), self.protocol.repetition_time, b1)

    def _sidecar(self):
        return {"FlipAngle": np.rad2deg(self.protocol.flip_angles).tolist(),
                "RepetitionTime": float(self.protocol.repetition_time),
                "FitMethod": f"VFA {self.method}"}


# --------------------------------------------------------------------------
# Inversion recovery
# --------------------------------------------------------------------------

_GRID_SIZE = 64


def _r1_grid(ti, bounds):
    lo, hi = bounds
    positive = ti[ti > 0]
    tmin = positive.min() if positive.size else 1e-3
    g_lo = max(lo, 0.05 / ti.max())
    g_hi = min(hi, 20.0 / tmin)
    if not g_lo < g_hi:
        g_lo, g_hi = lo, hi
    return np.geomspace(g_lo, g_hi, _GRID_SIZE)


def _grid_start(rows, ti, bounds, n_params):
    """Reduced-dimension grid search (Barral et al. 2010): best R1 on a grid with
    the linear parameters in closed form. Returns (params (n, k), cost (n,))."""
    grid = _r1_grid(ti, bounds)
    e = np.exp(-np.outer(grid, ti))  # (G, m)
    if n_params == 2:
        v = 1.0 - 2.0 * e
        norms = np.einsum("gm,gm->g", v, v)
        proj = rows @ v.T  # (n, G)
        energy = proj * proj / norms
        best = np.argmax(energy, axis=1)
        m0 = proj[np.arange(rows.shape[0]), best] / norms[best]
        params = np.column_stack([m0, grid[best]])
        cost = np.einsum("ij,ij->i", rows, rows) - energy[np.arange(rows.shape[0]), best]
        return params, cost
    # basis [1, -e] per grid value, orthonormalised: Q (G, m, 2), R (G, 2, 2)
    basis = np.stack([np.ones_like(e), -e], axis=-1)
    q, r = np.linalg.qr(basis)
    m = ti.size
    coef = (rows @ q.transpose(1, 0, 2).reshape(m, -1)).reshape(rows.shape[0], -1, 2)  # (n, G, 2)
    energy = coef[..., 0] ** 2 + coef[..., 1] ** 2
    best = np.argmax(energy, axis=1)
    idx = np.arange(rows.shape[0])
    c = coef[idx, best]
    rb = r[best]  # upper triangular: back substitution
    with np.errstate(divide="ignore", invalid="ignore"):
        b = c[:, 1] / rb[:, 1, 1]
        a = (c[:, 0] - rb[:, 0, 1] * b) / rb[:, 0, 0]
    params = np.column_stack([a, b, grid[best]])
    cost = np.einsum("ij,ij->i", rows, rows) - energy[idx, best]
    return params, cost


def _ir_fit_signed(rows, ti, bounds, n_params, max_iter):
    lo, hi = bounds
    p0, _ = _grid_start(rows, ti, bounds, n_params)
    p0[:, :-1] = np.maximum(p0[:, :-1], 0.0)
    if n_params == 2:
        lower, upper = [0.0, lo], [np.inf, hi]
    else:
        lower, upper = [0.0, 0.0, lo], [np.inf, np.inf, hi]
    p, cost, st, _ = levenberg_marquardt(_kernel_ir, rows, p0, x=ti[None, :], lower=lower,
                                         upper=upper, max_iter=max_iter)
    return p, cost, st


def _ir_fit(rows, ti, ctx, n_params):
    """Fit signed rows directly, or magnitude rows with polarity restoration."""
    bounds, max_iter = ctx["r1_bounds"], ctx["max_iter"]
    if not ctx["magnitude"]:
        p, _, st = _ir_fit_signed(rows, ti, bounds, n_params, max_iter)
        return p, st
    n, m = rows.shape
    imin = np.argmin(rows, axis=1)
    j = np.arange(m)[None, :]
    best_p = best_cost = best_st = None
    for include_min in (False, True):
        flip = (j < imin[:, None]) | ((j == imin[:, None]) & include_min)
        signed = np.where(flip, -rows, rows)
        p, cost, st = _ir_fit_signed(signed, ti, bounds, n_params, max_iter)
        if best_p is None:
            best_p, best_cost, best_st = p, cost, st
        else:
            better = cost < best_cost
            best_p = np.where(better[:, None], p, best_p)
            best_cost = np.where(better, cost, best_cost)
            best_st = np.where(better, st, best_st)
    return best_p, best_st


def _ir_two(rows, ti, ctx):
    p, st = _ir_fit(rows, ti, ctx, 2)
    return {"m0": p[:, 0], "r1": p[:, 1], "a": p[:, 0], "b": 2.0 * p[:, 0], "status": st}


def _ir_three(rows, ti, ctx):
    p, st = _ir_fit(rows, ti, ctx, 3)
    return {"m0": p[:, 0], "r1": p[:, 2], "a": p[:, 0], "b": p[:, 1], "status": st}


def _ir_look_locker(rows, ti, ctx):
    p, st = _ir_fit(rows, ti, ctx, 3)
    a, b, r1star = p[:, 0], p[:, 1], p[:, 2]
    t1 = look_locker_t1(1.0 / r1star, a, b)
    st = st.copy()
    st[~np.isfinite(t1)] = Status.FAILED
    with np.errstate(divide="ignore", invalid="ignore"):
        r1 = 1.0 / t1
    return {"m0": b - a, "r1": r1, "a": a, "b": b, "r1star": r1star, "status": st}


class IRModel(Model):
    """T1 by inversion recovery: two- or three-parameter fit, or Look-Locker.

    Parameters
    ----------
    protocol : InversionRecoveryProtocol
        Inversion times in s (for ``look_locker``: the effective sample times
        after the inversion).
    method : {'three_parameter', 'two_parameter', 'look_locker'} or callable
        See the module docstring. A callable
        ``method(rows, inversion_times, ctx) -> dict(m0, r1, a, b, status)`` is
        also accepted.
    signal : {'magnitude', 'real'}
        ``'magnitude'`` (default): magnitude images, fitted with polarity
        restoration (Barral et al., MRM 2010;64:1057). ``'real'``:
        phase-corrected signed data, positive at long TI.
    r1_bounds : (float, float)
        Bounds on the fitted rate (R1, or R1* for Look-Locker), 1/s.
    max_iter, chunk_size : see :class:`VFAModel`.
    """

    methods = {"three_parameter": _ir_three, "two_parameter": _ir_two,
               "look_locker": _ir_look_locker}
    default_method = "three_parameter"

    def __init__(self, protocol, *, method=None, signal: str = "magnitude",
                 r1_bounds=DEFAULT_R1_BOUNDS, max_iter: int = 100,
                 chunk_size: int = DEFAULT_CHUNK_SIZE):
        if not isinstance(protocol, InversionRecoveryProtocol):
            raise ProtocolError(
                f"IRModel needs an InversionRecoveryProtocol (inversion times in s), "
                f"got {type(protocol).__name__}")
        super().__init__(protocol, method=method)
        if signal not in ("magnitude", "real"):
            raise ValidationError(f"signal must be 'magnitude' or 'real', got {signal!r}")
        n_min = 3 if self.method in ("three_parameter", "look_locker") else 2
        if protocol.n_measurements < n_min:
            raise ProtocolError(
                f"{protocol.source}: method {self.method!r} needs at least {n_min} inversion "
                f"times, got {protocol.n_measurements}")
        self.signal = signal
        self.r1_bounds = _check_r1_bounds(r1_bounds)
        self.max_iter = int(max_iter)
        self.chunk_size = int(chunk_size)

    @classmethod
    def fit_volume(cls, volume, *, mask=None, method=None, names=None, progress=None,
                   **options):
        """Fit a loaded T1 series from plain options: see :func:`fit_t1_volume`."""
        return fit_t1_volume(volume, "ir", mask=mask, method=method, names=names,
                             progress=progress, **options)

    def fit(self, data, *, mask=None, progress=None) -> "T1Fit":
        """Fit every voxel of ``data`` (inversion times on the last axis; not modified).

        Magnitude data with negative samples get status INVALID_DATA; signed
        data may be negative.
        """
        data = _check_data(data, self.protocol.n_measurements, "inversion times")
        ti = self.protocol.inversion_times
        ctx = {"r1_bounds": self.r1_bounds, "max_iter": self.max_iter,
               "magnitude": self.signal == "magnitude"}
        dtype = result_dtype(data)
        extra = ("r1star",) if self.method == "look_locker" else ()

        def fit_rows(rows, aux_rows):
            rows = np.asarray(rows, dtype=np.float64)
            res = self._method(rows, ti, ctx)
            status = np.asarray(res["status"], dtype=np.uint8).copy()
            a = np.asarray(res["a"], np.float64)
            b = np.asarray(res["b"], np.float64)
            rate = res.get("r1star", res["r1"])
            pred = inversion_recovery_signal(ti, np.nan_to_num(a), np.nan_to_num(b),
                                             np.nan_to_num(rate), magnitude=ctx["magnitude"])
            r2, rmse = _quality(rows, pred)
            drop = status == Status.FAILED
            out = {"m0": res["m0"], "r1": res["r1"], "a": a, "b": b, "rsquared": r2,
                   "rmse": rmse}
            out.update({k: res[k] for k in extra})
            out = {k: np.where(drop, np.nan, np.asarray(v, np.float64)) for k, v in out.items()}
            # A and B define predict(); keep them even where T1 is not physical
            out["a"], out["b"] = a, b
            if extra:
                out["r1star"] = np.asarray(res["r1star"], np.float64)
            out["status"] = status
            return out

        outputs = {k: dtype for k in ("m0", "r1", "a", "b", "rsquared", "rmse") + extra}
        outputs["status"] = np.uint8
        if ctx["magnitude"]:
            maps = fit_voxelwise(data, fit_rows, outputs=outputs, mask=mask,
                                 chunk_size=self.chunk_size, progress=progress)
        else:
            maps = _fit_signed_voxelwise(data, fit_rows, outputs, mask, self.chunk_size, progress)
        return T1Fit(self, maps)

    def _predict(self, fit):
        rate = fit._maps["r1star"] if self.method == "look_locker" else fit.r1
        return inversion_recovery_signal(
            self.protocol.inversion_times, np.nan_to_num(fit._maps["a"]),
            np.nan_to_num(fit._maps["b"]), np.nan_to_num(rate),
            magnitude=self.signal == "magnitude")

    def _sidecar(self):
        return {"InversionTime": self.protocol.inversion_times.tolist(),
                "FitMethod": f"IR {self.method} ({self.signal} data)"}


def _fit_signed_voxelwise(data, func, outputs, mask, chunk_size, progress):
    """fit_voxelwise for signed data: only NaN/Inf samples and all-zero rows are screened out."""
    spatial = data.shape[:-1]
    m = data.shape[-1]
    mask = as_mask(mask, spatial)
    flat = data.reshape(-1, m)
    n_vox = flat.shape[0]
    maps = {k: (np.full(n_vox, Status.MASKED, np.uint8) if k == "status"
                else np.full(n_vox, np.nan, dt)) for k, dt in outputs.items()}
    index = np.arange(n_vox) if mask is None else np.flatnonzero(mask.reshape(-1))
    chunk_size = max(1, int(chunk_size))
    for start in range(0, index.size, chunk_size):
        where = index[start:start + chunk_size]
        rows = np.asarray(flat[where], dtype=np.float64)
        finite = np.all(np.isfinite(rows), axis=1)
        nonzero = np.any(rows != 0, axis=1)
        code = np.where(finite, np.where(nonzero, Status.OK, Status.FAILED),
                        Status.INVALID_DATA).astype(np.uint8)
        maps["status"][where] = code
        keep = code == Status.OK
        if np.any(keep):
            result = func(rows[keep], {})
            for k, v in result.items():
                if k in maps:
                    maps[k][where[keep]] = v
        if progress is not None:
            progress(min(index.size, start + chunk_size), index.size)
    return {k: v.reshape(spatial) for k, v in maps.items()}


# --------------------------------------------------------------------------
# Fit
# --------------------------------------------------------------------------

class T1Fit(Fit):
    """Result of :class:`VFAModel` and :class:`IRModel`.

    Attributes
    ----------
    t1 : ndarray
        T1 in s (1 / r1).
    r1 : ndarray
        R1 in 1/s.
    m0 : ndarray
        Equilibrium signal (signal units).
    rsquared, rmse : ndarray
        Fit quality: coefficient of determination, root-mean-square residual.
    status : ndarray (uint8)
        :class:`oncomri.fitting.Status` codes.
    b1 : ndarray or None
        The relative B1 map used (VFA only).
    """

    def __init__(self, model, maps, *, b1=None):
        self.model = model
        self._maps = maps
        self.status = maps["status"]
        self.b1 = b1

    @property
    def r1(self) -> np.ndarray:
        """R1 in 1/s."""
        return self._maps["r1"]

    @property
    def t1(self) -> np.ndarray:
        """T1 in s (NaN where R1 is not positive)."""
        r = self._maps["r1"]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(r > 0, 1.0 / r, np.nan).astype(r.dtype)

    @property
    def m0(self) -> np.ndarray:
        """Equilibrium signal M0 (signal units)."""
        return self._maps["m0"]

    @property
    def rsquared(self) -> np.ndarray:
        return self._maps["rsquared"]

    @property
    def rmse(self) -> np.ndarray:
        return self._maps["rmse"]

    @property
    def inversion_efficiency(self) -> np.ndarray | None:
        """B/A of the IR fit (2 = perfect inversion); None for VFA."""
        if "a" not in self._maps:
            return None
        a, b = self._maps["a"], self._maps["b"]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(np.isnan(self.r1), np.nan, b / a).astype(a.dtype)

    @property
    def t1star(self) -> np.ndarray | None:
        """Apparent T1* in s of a Look-Locker fit (before correction); else None."""
        r = self._maps.get("r1star")
        if r is None:
            return None
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(r > 0, 1.0 / r, np.nan).astype(r.dtype)

    def predict(self) -> np.ndarray:
        """The fitted signal at the protocol's flip angles / inversion times (shape of data)."""
        return self.model._predict(self).astype(self.m0.dtype)

    def output_maps(self) -> dict:
        """BIDS-derivative suffix -> (map, sidecar with Units and Description)."""
        desc = "desc-t1fit"
        method = self.model._sidecar()
        out = {
            "T1map": (self.t1, {"Units": "s", "Description": "longitudinal relaxation time T1",
                                **method}),
            "R1map": (self.r1, {"Units": "1/s", "Description": "longitudinal relaxation rate R1",
                                **method}),
            "M0map": (self.m0, {"Units": "a.u.", "Description": "equilibrium signal M0", **method}),
            f"{desc}_rsquared": (self.rsquared, {"Units": "1", "Description":
                                                 "coefficient of determination of the fit"}),
            f"{desc}_rmse": (self.rmse, {"Units": "a.u.", "Description":
                                         "root-mean-square residual of the fit"}),
            f"{desc}_status": (self.status, {
                "Units": "1", "Description": "per-voxel fit status code",
                "Levels": {str(k): v for k, v in STATUS_DESCRIPTIONS.items()}}),
        }
        eff = self.inversion_efficiency
        if eff is not None and self.model.method != "two_parameter":
            out[f"{desc}_inveff"] = (eff, {"Units": "1", "Description":
                                           "B/A of the fit A - B exp(-TI/T1) (2 = perfect inversion)"})
        if self.t1star is not None:
            out["desc-lookLocker_T1map"] = (self.t1star, {
                "Units": "s", "Description": "apparent T1* before the Look-Locker correction"})
        return out



# ---------------------------------------------------------------------------- from a Volume

VFA_METHODS = ("nonlinear", "linear")
IR_METHODS = ("three_parameter", "two_parameter", "look_locker")
_TIME_UNITS = {"s": 1.0, "ms": 1e-3}
#: Longest plausible spoiled-gradient-echo TR in s: a longer value is milliseconds.
MAX_VFA_TR_S = 1.0
#: Longest plausible inversion time in s.
MAX_TI_S = 30.0

#: Options of :func:`fit_t1_volume` and their defaults (the ``oncomri map t1`` flags).
T1_VOLUME_OPTIONS = {"flip_angles": None, "tr": None, "b1": None, "inversion_times": None,
                     "signal": "magnitude", "method": None}


def _split_value_unit(text, name: str):
    import re

    m = re.fullmatch(r"\s*([-+0-9.eE,\s]+?)\s*([A-Za-z°µ]*)\s*", text or "")
    if not m:
        raise ProtocolError(f"{name} {text!r}: not a comma-separated list of numbers with a unit")
    try:
        values = [float(v) for v in re.split(r"[,\s]+", m.group(1).strip()) if v]
    except ValueError:
        raise ProtocolError(f"{name} {text!r}: not a comma-separated list of numbers") from None
    if not values:
        raise ProtocolError(f"{name} {text!r}: no value given")
    return values, m.group(2)


def parse_flip_angles(text, *, name: str = "--flip-angles") -> np.ndarray:
    """``'2,5,10,15deg'`` -> flip angles in degrees (the unit ``deg`` is required in text;
    a list of numbers is taken as degrees)."""
    if isinstance(text, (list, tuple, np.ndarray)):
        try:
            return check_degrees(np.asarray(text, dtype=np.float64), source=name)
        except (TypeError, ValueError):
            raise ProtocolError(f"{name} {text!r}: give numbers in degrees") from None
    if not isinstance(text, str):
        raise ProtocolError(f"{name} {text!r}: give the flip angles in degrees, e.g. '2,5,10,15deg'")
    values, unit = _split_value_unit(text, name)
    if unit not in ("deg", "°"):
        raise ProtocolError(f"{name} {text!r}: give the flip angles in degrees with the unit, "
                            "e.g. '2,5,10,15deg'")
    return check_degrees(values, source=name)


def check_degrees(values, *, source: str) -> np.ndarray:
    """Flip angles expected in degrees; a set that looks like radians is an error.

    Every variable-flip-angle protocol reaches well above pi degrees (the
    largest angle sits past the Ernst angle, >= ~10 deg), while flip angles
    in radians never exceed pi; so a set whose largest value is <= pi was
    given in radians.
    """
    fa = np.asarray(values, dtype=np.float64).reshape(-1)
    if fa.size == 0 or not np.all(np.isfinite(fa)) or np.any(fa <= 0):
        raise ProtocolError(f"{source}: flip angles must be positive numbers in degrees, "
                            f"got {fa.tolist()}")
    if fa.max() <= math.pi:
        raise ProtocolError(
            f"{source}: flip angles {[round(v, 4) for v in fa.tolist()]} look like radians "
            "(all <= pi); give them in degrees, e.g. '2,5,10,15deg'")
    if fa.max() > 180:
        raise ProtocolError(f"{source}: flip angles up to {fa.max():g} deg exceed 180 deg")
    return fa


def parse_times(text, *, name: str):
    """``'5ms'`` or ``'50,100,200ms'`` -> list of seconds (unit s or ms required in text;
    numbers are seconds)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return [float(text)]
    if isinstance(text, (list, tuple, np.ndarray)):
        try:
            return [float(v) for v in np.asarray(text, dtype=np.float64).reshape(-1)]
        except (TypeError, ValueError):
            raise ProtocolError(f"{name} {text!r}: give numbers in s") from None
    values, unit = _split_value_unit(text if isinstance(text, str) else "", name)
    if unit not in _TIME_UNITS:
        raise ProtocolError(f"{name} {text!r}: give a unit, s or ms (e.g. '5ms')")
    return [v * _TIME_UNITS[unit] for v in values]


def _sidecar_list(meta: dict, key: str, n: int, source: str):
    """A per-volume list from a sidecar (a list, or a scalar for one volume)."""
    value = meta.get(key)
    if value is None:
        return None
    values = np.atleast_1d(np.asarray(value, dtype=np.float64)).reshape(-1)
    if values.size not in (1, n):
        raise ProtocolError(f"{source}: {key} lists {values.size} value(s) for {n} volumes; "
                            "give one per volume")
    return values


def _scalar_sidecar(meta: dict, key: str):
    value = meta.get(key)
    if value is None:
        return None
    return float(np.atleast_1d(np.asarray(value, dtype=np.float64)).reshape(-1)[0])


def _sorted(values, data):
    order = np.argsort(values, kind="stable")
    if np.all(order == np.arange(order.size)):
        return np.asarray(values), data
    return np.asarray(values)[order], data[..., order]


def _vfa_inputs(volume, opts, label, n):
    proto = volume.protocol if isinstance(volume.protocol, VariableFlipAngleProtocol) else None
    if opts.given("flip_angles"):
        source = opts.name("flip_angles")
        fa_deg = parse_flip_angles(opts["flip_angles"], name=source)
    elif proto is not None:
        fa_deg = np.rad2deg(proto.flip_angles)
        source = f"{label}: FlipAngle"
    else:
        fa_deg = _sidecar_list(volume.meta, "FlipAngle", n, f"{label} sidecar")
        if fa_deg is None or (fa_deg.size == 1 and n > 1):
            raise ProtocolError(f"{label}: no flip angle per volume in the sidecar; give "
                                f"{opts.name('flip_angles')} with a unit, e.g. '2,5,10,15deg'")
        source = f"{label} sidecar FlipAngle"
        fa_deg = check_degrees(fa_deg, source=source)
    if fa_deg.size != n:
        raise ProtocolError(f"{source}: {fa_deg.size} flip angles for {n} volumes; give one per "
                            "volume")
    if opts.given("tr"):
        tr_source = opts.name("tr")
        tr = parse_times(opts["tr"], name=tr_source)
        if len(tr) != 1:
            raise ProtocolError(f"{tr_source} {opts['tr']!r}: give one repetition time")
        tr = tr[0]
    elif proto is not None:
        tr, tr_source = float(proto.repetition_time), f"{label}: RepetitionTime"
    else:
        tr = _scalar_sidecar(volume.meta, "RepetitionTime")
        tr_source = f"{label} sidecar RepetitionTime"
        if tr is None:
            raise ProtocolError(f"{label}: no RepetitionTime in the sidecar; give "
                                f"{opts.name('tr')}, e.g. '5ms'")
    if not (np.isfinite(tr) and tr > 0):
        raise ProtocolError(f"{tr_source}: repetition time {tr!r} s must be positive")
    if tr > MAX_VFA_TR_S:
        raise ProtocolError(f"{tr_source}: repetition time {tr:g} s is implausible for a spoiled "
                            "gradient echo; it looks like milliseconds (BIDS wants seconds)")
    fa_deg, data = _sorted(fa_deg, volume.data)
    return VariableFlipAngleProtocol(np.deg2rad(fa_deg), float(tr), source=source), data


def _ir_inputs(volume, opts, label, n):
    proto = volume.protocol if isinstance(volume.protocol, InversionRecoveryProtocol) else None
    if opts.given("inversion_times"):
        source = opts.name("inversion_times")
        ti = np.asarray(parse_times(opts["inversion_times"], name=source), float)
    elif proto is not None:
        ti, source = np.asarray(proto.inversion_times), f"{label}: InversionTime"
    else:
        ti = _sidecar_list(volume.meta, "InversionTime", n, f"{label} sidecar")
        source = f"{label} sidecar InversionTime"
        if ti is None or (ti.size == 1 and n > 1):
            raise ProtocolError(f"{label}: no inversion time per volume in the sidecar; give "
                                f"{opts.name('inversion_times')} with a unit, e.g. "
                                "'50,100,200,400,800ms'")
    ti = np.atleast_1d(ti)
    if ti.size != n:
        raise ProtocolError(f"{source}: {ti.size} inversion times for {n} volumes; give one "
                            "per volume")
    if ti.max() > MAX_TI_S:
        raise ProtocolError(f"{source}: inversion times up to {ti.max():g} s look like "
                            "milliseconds; give seconds (or a unit on the command line)")
    ti, data = _sorted(ti, volume.data)
    return InversionRecoveryProtocol(ti, source=source), data


def fit_t1_volume(volume, kind: str | None = None, *, mask=None, method=None, names=None,
                  progress=None, label: str | None = None, **options):
    """Fit T1 to a loaded series: variable flip angle or inversion recovery.

    Parameters
    ----------
    volume : Volume
        4D series, one volume per flip angle or inversion time (any order:
        they are sorted). Acquisition values come from the options, else the
        volume's protocol, else its sidecar ``meta`` (``FlipAngle`` in
        degrees, one per volume; ``RepetitionTime`` and ``InversionTime`` in s).
    kind : {'vfa', 'ir'} or None
        None decides like ``oncomri map t1``: inversion recovery with
        ``inversion_times``, an IR method, an IR protocol, or inversion times
        (and no flip angle per volume) in the sidecar; else VFA.
    mask : bool ndarray, optional
    method : str, optional
        VFA: ``'nonlinear'`` (default) or ``'linear'``; IR:
        ``'three_parameter'`` (default), ``'two_parameter'`` or ``'look_locker'``.
    names : None, str or callable
        How messages name the options (:class:`oncomri.models.volume_fit.Options`).
    label : str, optional
        What messages call the series (default: its first source).
    **options
        ``flip_angles`` (degrees: a list, or text ``'2,5,10,15deg'``), ``tr``
        (s or ``'5ms'``), ``b1`` (relative B1, 1 = nominal: a number or a map
        on the grid; VFA only), ``inversion_times`` (list of s or
        ``'50,100,200ms'``), ``signal`` (IR: ``'magnitude'`` or ``'real'``).

    Returns
    -------
    VolumeFit
        ``data`` holds the series sorted by flip angle / inversion time.
    """
    from .. import __version__
    from .volume_fit import Options, VolumeFit

    model_name = {"vfa": "t1", "ir": "t1_ir"}.get(kind, "t1")
    opts = Options({**options, "method": method}, T1_VOLUME_OPTIONS, model=model_name, names=names)
    label = label or (str(volume.sources[0]) if volume.sources else "input")
    allowed = VFA_METHODS if kind == "vfa" else IR_METHODS if kind == "ir" else VFA_METHODS + IR_METHODS
    if method is not None and method not in allowed:
        raise ValidationError(f"{opts.name('method')} {method!r} is not a T1 method; choose one of "
                              f"{', '.join(allowed)}")
    if opts.given("flip_angles") and opts.given("inversion_times"):
        raise ProtocolError(f"{opts.name('flip_angles')} and {opts.name('inversion_times')} "
                            "exclude each other: a series is either variable flip angle or "
                            "inversion recovery")
    data = volume.data
    if data.ndim != 4 or data.shape[-1] < 2:
        raise ValidationError(f"{label}: has shape {data.shape}; a T1 series needs several volumes "
                              "(flip angles or inversion times) on the 4th axis")
    n = data.shape[-1]
    if kind == "vfa":
        if opts.given("inversion_times"):
            raise ValidationError(f"{opts.name('inversion_times')}: model t1 is variable flip "
                                  "angle; map inversion recovery with model t1_ir")
        is_ir = False
    elif kind == "ir":
        for key in ("flip_angles", "b1", "tr"):
            if opts.given(key):
                raise ValidationError(f"{opts.name(key)} applies to variable flip angle series "
                                      "only (model t1)")
        is_ir = True
    else:
        is_ir = (opts.given("inversion_times") or method in IR_METHODS
                 or isinstance(volume.protocol, InversionRecoveryProtocol))
        if not (is_ir or opts.given("flip_angles")
                or isinstance(volume.protocol, VariableFlipAngleProtocol)):
            ti = _sidecar_list(volume.meta, "InversionTime", n, f"{label} sidecar")
            fa = _sidecar_list(volume.meta, "FlipAngle", n, f"{label} sidecar")
            is_ir = ti is not None and ti.size == n and (fa is None or fa.size != n)
        if is_ir and method in VFA_METHODS:
            raise ValidationError(f"{opts.name('method')} {method} is a VFA method but the series "
                                  f"is inversion recovery; choose one of {', '.join(IR_METHODS)}")
        if is_ir and opts.given("b1"):
            raise ValidationError(f"{opts.name('b1')} applies to variable flip angle series only")
    if mask is not None:
        mask = np.asarray(mask, bool)
    if is_ir:
        protocol, data = _ir_inputs(volume, opts, label, n)
        model = IRModel(protocol, method=method,
                        signal=opts.choice("signal", ("magnitude", "real")))
        fit = model.fit(data, mask=mask, progress=progress)
        what = "inversion recovery"
        acquisition = {"InversionTime": protocol.inversion_times.tolist(),
                       "InversionTimeUnits": "s"}
    else:
        protocol, data = _vfa_inputs(volume, opts, label, n)
        b1 = opts.array("b1", volume.spatial_shape, what="B1 map")
        model = VFAModel(protocol, method=method)
        fit = model.fit(data, mask=mask, b1=b1, progress=progress)
        what = "variable flip angle"
        acquisition = {"FlipAngle": np.rad2deg(protocol.flip_angles).tolist(),
                       "FlipAngleUnits": "deg", "RepetitionTime": protocol.repetition_time,
                       "RepetitionTimeUnits": "s"}
    common = {"Software": f"oncomri {__version__}", "Model": f"T1 {what}",
              "Method": model.method, **acquisition}
    counts = fit.summary()
    fitted = sum(v for k, v in counts.items() if k in ("ok", "not_converged", "at_bound"))
    summary = (f"t1 ({what}, {model.method}): {fitted:,} voxels fitted "
               f"({counts.get('at_bound', 0):,} at a bound, {counts.get('not_converged', 0):,} not "
               f"converged), {counts.get('failed', 0) + counts.get('invalid_data', 0):,} "
               "not fittable")
    return VolumeFit(fit=fit, model=model, maps=fit.output_maps(), provenance=common,
                     summary=summary, data=data)
