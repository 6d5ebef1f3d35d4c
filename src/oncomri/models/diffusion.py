"""Diffusion: ADC, IVIM and mean-signal kurtosis (DKI) from diffusion-weighted series.

Units
-----
b-values are in s/mm² and every diffusivity (ADC, D, D*) in **mm²/s**, the
unit of scanners, of the clinical literature and of the OSIPI/QIBA profiles
(1 mm²/s = 10⁻⁶ m²/s; free water at 37 °C is about 3.0 × 10⁻³ mm²/s). The
perfusion fraction f and the kurtosis K are dimensionless; S0 is in signal
units.

Directions and repeated b-values
--------------------------------
These are scalar (rotation-invariant) models. Measurements whose b-values
agree within ``max(5 s/mm², 2 %)`` form one *shell* (its b is the mean of
theirs); each shell is reduced to one signal before fitting, so gradient
directions (``b_vectors``) are not used:

- by the **geometric mean** (the trace-weighted image) for the Gaussian-noise
  methods: for Gaussian diffusion along orthogonal (or uniformly spread)
  directions ``(prod_i S0 e^(-b D_i))^(1/n) = S0 e^(-b mean(D_i))``, so the
  fitted ADC is the mean diffusivity, independent of tissue anisotropy
  (Basser & Pierpaoli, J Magn Reson B 1996;111:209 — cited from memory, not
  checked against the paper);
- by the **arithmetic mean** for the noise-floor method ``ncexp``: its model
  is the *expected* Rician magnitude, which the arithmetic mean of repeated
  magnitudes keeps and the geometric mean does not (the log of a Rician
  variable is biased low at low SNR). For anisotropic tissue the arithmetic
  mean is the mean directional signal, which decays slightly slower than the
  trace-weighted one; state ``direction_average='geometric'`` to override.

Models and methods
------------------
:class:`ADCModel`, ``S(b) = S0 exp(-b ADC)`` (Le Bihan et al., Radiology
1986;161:401):

``loglin`` (default, what scanners compute), ``wloglin`` (weighted by S²),
``nlls`` (bounded Levenberg–Marquardt), ``ncexp`` (least squares of the
Rician mean ``E[M] = sigma sqrt(pi/2) L_1/2(-A²/2 sigma²)`` of
``A = S0 exp(-b ADC)``, with sigma given or estimated from the background;
Gudbjartsson & Patz, MRM 1995;34:910. The noise floor flattens high-b decays
and biases ADC low, Jones & Basser, MRM 2004;52:979 — cited from memory).

:class:`IVIMModel`, ``S(b) = S0 [f exp(-b D*) + (1 - f) exp(-b D)]``
(Le Bihan et al., Radiology 1988;168:497; review Federau, NMR Biomed
2017;30:e3780 — both cited from memory, not checked against the papers):

``segmented`` (default): D and the intercept from a weighted log-linear fit
of the shells with ``b >= b_threshold`` (default 200 s/mm², where the
pseudo-diffusion term has decayed for D* > ~0.02 mm²/s), then S0, f and D*
with D fixed: a grid over D* with S0 f and S0 (1 - f) solved linearly for each
candidate, refined by bounded Levenberg–Marquardt. ``full``: all four
parameters by bounded Levenberg–Marquardt from the segmented result.
The fit is parameterised with ``D* = D + dD``, ``dD >= 0``, so D* >= D always
(no swapping of the components), and f is bounded to [0, 1].

:class:`DKIModel`, the mean-signal (powder/trace) kurtosis representation
``S(b) = S0 exp(-b D + b² D² K / 6)`` (Jensen et al., MRM 2005;53:1432;
valid up to about b = 2000–3000 s/mm² in brain; cited from memory):

``loglin`` and ``wloglin`` (closed form: ``ln S`` is a quadratic in b),
``nlls`` (bounded LM) and ``ncexp`` (its Rician mean, as for ADC).
K is bounded to [0, 3] (the constraint K >= 0 of Tabesh et al., MRM
2011;65:823, cited from memory); a signal is monotonic only for
``K < 3 / (b_max D)``, which is not enforced.

Every voxel gets a :class:`oncomri.fitting.Status`: converged, not converged,
at a bound (values kept), masked out, invalid samples or failed (NaN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from ..core.errors import ProtocolError, ValidationError
from ..core.protocols import DiffusionProtocol
from ..fitting import (
    DEFAULT_CHUNK_SIZE,
    STATUS_DESCRIPTIONS,
    Status,
    exponential_loglinear,
    fit_voxelwise,
    levenberg_marquardt,
)
from ..fitting.special import rician_mean, rician_mean_and_grad
from .base import Fit, Model, result_dtype
from .noise import resolve_noise_sigma
from .relaxometry import _kernel_exp, _kernel_exp_rician

__all__ = [
    "adc_signal",
    "ivim_signal",
    "dki_signal",
    "group_shells",
    "average_shells",
    "ADCModel",
    "ADCFit",
    "IVIMModel",
    "IVIMFit",
    "DKIModel",
    "DKIFit",
    "METHOD_REFERENCES",
    "fit_diffusion_volume",
    "DIFFUSION_VOLUME_OPTIONS",
]

#: Default bounds, mm²/s: ADC/D in [0, 0.01] (well above free water at 37 °C).
D_BOUNDS = (0.0, 0.01)
#: Default upper bound of D* in mm²/s (pseudo-diffusion is typically 0.01-0.1).
DSTAR_MAX = 0.5
#: Default bounds of the kurtosis K (dimensionless).
K_BOUNDS = (0.0, 3.0)
#: IVIM: default b-value (s/mm²) from which the pseudo-diffusion term is neglected.
B_THRESHOLD = 200.0

#: Method -> what it is and its reference (for sidecars).
METHOD_REFERENCES = {
    "loglin": "log-linear least squares (closed form)",
    "wloglin": "log-linear least squares weighted by S^2 (closed form)",
    "nlls": "nonlinear least squares, bounded Levenberg-Marquardt",
    "ncexp": "least squares of the Rician mean of the model signal (noise floor), "
             "Gudbjartsson & Patz, MRM 1995;34:910",
    "segmented": "IVIM segmented: D from b >= b_threshold, then S0, f, D* with D fixed; "
                 "Le Bihan et al., Radiology 1988;168:497; Federau, NMR Biomed 2017;30:e3780",
    "full": "IVIM full bounded nonlinear least squares of S0, f, D, D*; "
            "Le Bihan et al., Radiology 1988;168:497",
}


# --------------------------------------------------------------------------
# Pure signal equations (numpy); b in s/mm², diffusivities in mm²/s
# --------------------------------------------------------------------------

def _col(v):
    return np.asarray(v, dtype=np.float64)[..., None]


def adc_signal(b_values, s0, adc) -> np.ndarray:
    """``S(b) = S0 exp(-b ADC)``; shape ``s0.shape + (n_b,)``."""
    b = np.asarray(b_values, dtype=np.float64)
    return _col(s0) * np.exp(-_col(adc) * b)


def ivim_signal(b_values, s0, f, d, dstar) -> np.ndarray:
    """``S(b) = S0 [f exp(-b D*) + (1 - f) exp(-b D)]`` (Le Bihan et al., Radiology 1988;168:497)."""
    b = np.asarray(b_values, dtype=np.float64)
    f = _col(f)
    return _col(s0) * (f * np.exp(-_col(dstar) * b) + (1.0 - f) * np.exp(-_col(d) * b))


def dki_signal(b_values, s0, d, k) -> np.ndarray:
    """``S(b) = S0 exp(-b D + b² D² K / 6)`` (Jensen et al., MRM 2005;53:1432)."""
    b = np.asarray(b_values, dtype=np.float64)
    d = _col(d)
    return _col(s0) * np.exp(-b * d + b * b * d * d * _col(k) / 6.0)


def group_shells(b_values, *, atol: float = 5.0, rtol: float = 0.02):
    """Group b-values (s/mm²) into shells.

    Sorted b-values start a new shell when they exceed the shell's first
    value by more than ``max(atol, rtol * b)``.

    Returns
    -------
    shell_b : ndarray (n_shells,)
        Mean b-value of each shell, increasing.
    labels : ndarray (n_measurements,) int
        The shell of each measurement.
    """
    b = np.asarray(b_values, dtype=np.float64).reshape(-1)
    order = np.argsort(b, kind="stable")
    labels = np.empty(b.size, dtype=np.intp)
    shell = -1
    start = -np.inf
    for i in order:
        if b[i] - start > max(atol, rtol * b[i]):
            shell += 1
            start = b[i]
        labels[i] = shell
    counts = np.bincount(labels)
    shell_b = np.bincount(labels, weights=b) / counts
    return shell_b, labels


def average_shells(rows, labels, n_shells: int, *, kind: str = "geometric") -> np.ndarray:
    """Average the measurements of each shell: ``rows`` (n, n_meas) -> (n, n_shells), float64.

    ``kind='geometric'``: ``exp(mean(log S))`` (a zero sample gives 0);
    ``'arithmetic'``: ``mean(S)``.
    """
    rows = np.asarray(rows)
    out = np.empty((rows.shape[0], n_shells))
    for s in range(n_shells):
        idx = np.flatnonzero(labels == s)
        block = rows[:, idx].astype(np.float64, copy=False)
        if idx.size == 1:
            out[:, s] = block[:, 0]
        elif kind == "geometric":
            with np.errstate(divide="ignore"):
                out[:, s] = np.exp(np.log(block).mean(axis=1))
        else:
            out[:, s] = block.mean(axis=1)
    return out


# --------------------------------------------------------------------------
# Model kernels for the batched LM: model(p, x, c, f, J); x[0] = b (s/mm²)
# --------------------------------------------------------------------------

# ADC: S0 exp(-ADC b) is the relaxometry decay S0 exp(-R TE) with x = b, so the
# same kernels (plain and Rician mean) serve, and their compiled solvers are shared.
_kernel_adc = _kernel_exp
_kernel_adc_rician = _kernel_exp_rician


@numba.njit(cache=True)
def _kernel_ivim_fixed_d(p, x, c, f, J):
    """p = (S0, f, dD), c = (D,); D* = D + dD."""
    b = x[0]
    s0 = p[0]
    fr = p[1]
    d = c[0]
    ds = d + p[2]
    for j in range(b.shape[0]):
        es = math.exp(-ds * b[j])
        ed = math.exp(-d * b[j])
        f[j] = s0 * (fr * es + (1.0 - fr) * ed)
        J[j, 0] = fr * es + (1.0 - fr) * ed
        J[j, 1] = s0 * (es - ed)
        J[j, 2] = -s0 * fr * b[j] * es


@numba.njit(cache=True)
def _kernel_ivim(p, x, c, f, J):
    """p = (S0, f, D, dD); D* = D + dD."""
    b = x[0]
    s0 = p[0]
    fr = p[1]
    d = p[2]
    ds = d + p[3]
    for j in range(b.shape[0]):
        es = math.exp(-ds * b[j])
        ed = math.exp(-d * b[j])
        f[j] = s0 * (fr * es + (1.0 - fr) * ed)
        J[j, 0] = fr * es + (1.0 - fr) * ed
        J[j, 1] = s0 * (es - ed)
        J[j, 2] = -s0 * b[j] * (fr * es + (1.0 - fr) * ed)
        J[j, 3] = -s0 * fr * b[j] * es


@numba.njit(cache=True)
def _kernel_dki(p, x, c, f, J):
    """p = (S0, D, K)."""
    b = x[0]
    s0 = p[0]
    d = p[1]
    k = p[2]
    for j in range(b.shape[0]):
        bj = b[j]
        e = math.exp(-bj * d + bj * bj * d * d * k / 6.0)
        f[j] = s0 * e
        J[j, 0] = e
        J[j, 1] = s0 * e * (-bj + bj * bj * d * k / 3.0)
        J[j, 2] = s0 * e * bj * bj * d * d / 6.0


@numba.njit(cache=True)
def _kernel_dki_rician(p, x, c, f, J):
    b = x[0]
    s0 = p[0]
    d = p[1]
    k = p[2]
    sigma = c[0]
    for j in range(b.shape[0]):
        bj = b[j]
        e = math.exp(-bj * d + bj * bj * d * d * k / 6.0)
        a = s0 * e
        mean, da = rician_mean_and_grad(a, sigma)
        f[j] = mean
        J[j, 0] = da * e
        J[j, 1] = da * a * (-bj + bj * bj * d * k / 3.0)
        J[j, 2] = da * a * bj * bj * d * d / 6.0


# --------------------------------------------------------------------------
# Fit context and helpers
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class FitContext:
    """What a method needs besides the shell-averaged rows (b in s/mm², D in mm²/s)."""

    d_bounds: tuple
    max_iter: int
    sigma: np.ndarray | None = None
    dstar_max: float = DSTAR_MAX
    k_bounds: tuple = K_BOUNDS
    b_threshold: float = B_THRESHOLD


def _clip_status(values_bounds, n):
    """Clip each (values, (lo, hi)) and return clipped values and a status (AT_BOUND if any clipped)."""
    status = np.full(n, Status.OK, dtype=np.uint8)
    failed = np.zeros(n, bool)
    out = []
    for v, (lo, hi) in values_bounds:
        bad = ~np.isfinite(v)
        failed |= bad
        c = np.clip(v, lo, hi)
        status[(c != v) & ~bad] = Status.AT_BOUND
        out.append(c)
    status[failed] = Status.FAILED
    return out, status


def _corrected(rows, sigma):
    """Second-moment noise-floor correction ``sqrt(max(M² - 2 sigma², 0))`` (start values only)."""
    return np.sqrt(np.maximum(np.square(rows) - 2.0 * (sigma * sigma)[:, None], 0.0))


def _need_sigma(ctx, name):
    if ctx.sigma is None:
        raise ValidationError(f"method {name!r} needs the noise sigma (a number, a map, or 'auto')")
    return ctx.sigma


def _adc_start(rows, b, ctx):
    s0, d = exponential_loglinear(rows, b, weighted=True)
    lo, hi = ctx.d_bounds
    bad = ~(np.isfinite(s0) & np.isfinite(d) & (s0 > 0))
    s0 = np.where(bad, rows.max(axis=1), s0)
    d = np.where(bad, 1e-3, d)
    return s0, np.clip(d, lo, hi)


# ---- ADC methods: (rows, b, ctx) -> dict(s0, adc, status[, rss]) ----------

def _adc_closed(rows, b, ctx, weighted):
    s0, d = exponential_loglinear(rows, b, weighted=weighted)
    (d,), status = _clip_status([(d, ctx.d_bounds)], rows.shape[0])
    clipped = status == Status.AT_BOUND
    if np.any(clipped):  # least-squares S0 for the clipped ADC
        e = np.exp(-np.outer(d[clipped], b))
        s0[clipped] = np.einsum("ij,ij->i", rows[clipped], e) / np.einsum("ij,ij->i", e, e)
    s0 = np.where(status == Status.FAILED, np.nan, s0)
    return {"s0": s0, "adc": d, "status": status}


def _adc_loglin(rows, b, ctx):
    return _adc_closed(rows, b, ctx, False)


def _adc_wloglin(rows, b, ctx):
    return _adc_closed(rows, b, ctx, True)


def _adc_nlls(rows, b, ctx):
    s0, d = _adc_start(rows, b, ctx)
    p, rss, st, _ = levenberg_marquardt(
        _kernel_adc, rows, np.column_stack([s0, d]), x=b[None, :],
        lower=[0.0, ctx.d_bounds[0]], upper=[np.inf, ctx.d_bounds[1]], max_iter=ctx.max_iter)
    return {"s0": p[:, 0], "adc": p[:, 1], "status": st, "rss": rss}


def _adc_ncexp(rows, b, ctx):
    sigma = _need_sigma(ctx, "ncexp")
    s0, d = _adc_start(_corrected(rows, sigma), b, ctx)
    p, rss, st, _ = levenberg_marquardt(
        _kernel_adc_rician, rows, np.column_stack([s0, d]), x=b[None, :], consts=sigma[:, None],
        lower=[0.0, ctx.d_bounds[0]], upper=[np.inf, ctx.d_bounds[1]], max_iter=ctx.max_iter)
    return {"s0": p[:, 0], "adc": p[:, 1], "status": st, "rss": rss}


# ---- IVIM methods: (rows, b, ctx) -> dict(s0, f, d, dstar, status[, rss]) ---

def _ivim_segmented(rows, b, ctx):
    n = rows.shape[0]
    lo, hi = ctx.d_bounds
    high = b >= ctx.b_threshold
    s_int, d = exponential_loglinear(rows[:, high], b[high], weighted=True)
    bad = ~(np.isfinite(d) & np.isfinite(s_int))
    d = np.clip(np.where(bad, 1e-3, d), lo, hi)
    # S0 f and S0 (1 - f) by linear least squares for each D* on a grid; keep the best
    ed = np.exp(-np.outer(d, b))
    best = np.full(n, np.inf)
    start = np.zeros((n, 3))
    for dd in np.geomspace(1e-3, ctx.dstar_max, 16):
        es = np.exp(-np.outer(d + dd, b))
        a11 = np.einsum("ij,ij->i", es, es)
        a12 = np.einsum("ij,ij->i", es, ed)
        a22 = np.einsum("ij,ij->i", ed, ed)
        g1 = np.einsum("ij,ij->i", es, rows)
        g2 = np.einsum("ij,ij->i", ed, rows)
        det = a11 * a22 - a12 * a12
        with np.errstate(divide="ignore", invalid="ignore"):
            u = (a22 * g1 - a12 * g2) / det
            v = (a11 * g2 - a12 * g1) / det
        u = np.where(np.isfinite(u), np.maximum(u, 0.0), 0.0)
        v = np.where(np.isfinite(v), np.maximum(v, 0.0), 0.0)
        resid = rows - u[:, None] * es - v[:, None] * ed
        rss = np.einsum("ij,ij->i", resid, resid)
        take = rss < best
        best[take] = rss[take]
        s0 = u + v
        with np.errstate(divide="ignore", invalid="ignore"):
            fr = np.where(s0 > 0, u / s0, 0.0)
        start[take] = np.column_stack([s0, fr, np.full(n, dd)])[take]
    start[:, 0] = np.where(start[:, 0] > 0, start[:, 0], rows.max(axis=1))
    p, rss, st, _ = levenberg_marquardt(
        _kernel_ivim_fixed_d, rows, start, x=b[None, :], consts=d[:, None],
        lower=[0.0, 0.0, 0.0], upper=[np.inf, 1.0, ctx.dstar_max], max_iter=ctx.max_iter)
    st = st.copy()
    st[bad & (st == Status.OK)] = Status.FAILED
    st[((d <= lo) | (d >= hi)) & (st == Status.OK)] = Status.AT_BOUND
    return {"s0": p[:, 0], "f": p[:, 1], "d": d, "dstar": d + p[:, 2], "status": st, "rss": rss}


def _ivim_full(rows, b, ctx):
    seg = _ivim_segmented(rows, b, ctx)
    start = np.column_stack([seg["s0"], seg["f"], seg["d"], seg["dstar"] - seg["d"]])
    p, rss, st, _ = levenberg_marquardt(
        _kernel_ivim, rows, start, x=b[None, :],
        lower=[0.0, 0.0, ctx.d_bounds[0], 0.0],
        upper=[np.inf, 1.0, ctx.d_bounds[1], ctx.dstar_max], max_iter=ctx.max_iter)
    return {"s0": p[:, 0], "f": p[:, 1], "d": p[:, 2], "dstar": p[:, 2] + p[:, 3],
            "status": st, "rss": rss}


# ---- DKI methods: (rows, b, ctx) -> dict(s0, d, k, status[, rss]) ----------

def _dki_quadratic(rows, b, weighted):
    """``ln S = c0 - c1 b + c2 b²/6`` by (weighted) linear least squares; (S0, D, K)."""
    scale = np.array([1.0, b.max(), b.max() ** 2 / 6.0])
    x = np.column_stack([np.ones_like(b), -b, b * b / 6.0]) / scale
    pos = rows > 0
    with np.errstate(divide="ignore"):
        logy = np.where(pos, np.log(np.where(pos, rows, 1.0)), 0.0)
    w = np.where(pos, rows * rows if weighted else 1.0, 0.0)
    a = np.einsum("nm,mi,mj->nij", w, x, x)
    g = np.einsum("nm,mi,nm->ni", w, x, logy)
    det = np.linalg.det(a)
    ok = np.abs(det) > 1e-12 * np.einsum("nii->n", a) ** 3
    a[~ok] = np.eye(3)
    c = np.linalg.solve(a, g[..., None])[..., 0] / scale
    c[~ok] = np.nan
    s0 = np.exp(c[:, 0])
    d = c[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        k = c[:, 2] / (d * d)
    return s0, d, k


def _dki_closed(rows, b, ctx, weighted):
    s0, d, k = _dki_quadratic(rows, b, weighted)
    (d, k), status = _clip_status([(d, ctx.d_bounds), (k, ctx.k_bounds)], rows.shape[0])
    s0 = np.where(status == Status.FAILED, np.nan, s0)
    return {"s0": s0, "d": d, "k": k, "status": status}


def _dki_loglin(rows, b, ctx):
    return _dki_closed(rows, b, ctx, False)


def _dki_wloglin(rows, b, ctx):
    return _dki_closed(rows, b, ctx, True)


def _dki_start(rows, b, ctx):
    s0, d, k = _dki_quadratic(rows, b, True)
    bad = ~(np.isfinite(s0) & np.isfinite(d) & np.isfinite(k) & (s0 > 0))
    s0 = np.where(bad, rows.max(axis=1), s0)
    d = np.clip(np.where(bad, 1e-3, d), *ctx.d_bounds)
    k = np.clip(np.where(bad, 0.5, k), *ctx.k_bounds)
    return np.column_stack([s0, d, k])


def _dki_lm(kernel, rows, fit_rows, b, ctx, consts=None):
    p, rss, st, _ = levenberg_marquardt(
        kernel, fit_rows, _dki_start(rows, b, ctx), x=b[None, :], consts=consts,
        lower=[0.0, ctx.d_bounds[0], ctx.k_bounds[0]],
        upper=[np.inf, ctx.d_bounds[1], ctx.k_bounds[1]], max_iter=ctx.max_iter)
    return {"s0": p[:, 0], "d": p[:, 1], "k": p[:, 2], "status": st, "rss": rss}


def _dki_nlls(rows, b, ctx):
    return _dki_lm(_kernel_dki, rows, rows, b, ctx)


def _dki_ncexp(rows, b, ctx):
    sigma = _need_sigma(ctx, "ncexp")
    return _dki_lm(_kernel_dki_rician, _corrected(rows, sigma), rows, b, ctx, sigma[:, None])


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------

def _as_protocol(protocol) -> DiffusionProtocol:
    if isinstance(protocol, DiffusionProtocol):
        return protocol
    return DiffusionProtocol(protocol)


class _DiffusionModel(Model):
    """Shared machinery: shells, b-range, sigma, chunked fitting."""

    _params: tuple = ()           # map names fitted, in order
    _fit_class: type = None
    _min_shells: int = 2
    _label: str = ""

    def __init__(self, protocol, *, method=None, d_bounds=D_BOUNDS, b_range=(None, None),
                 direction_average: str | None = None, max_iter: int = 100,
                 chunk_size: int = DEFAULT_CHUNK_SIZE):
        super().__init__(_as_protocol(protocol), method=method)
        lo, hi = d_bounds
        if not (np.isfinite(lo) and np.isfinite(hi) and 0 <= lo < hi):
            raise ValidationError(f"d_bounds must satisfy 0 <= low < high (mm²/s), got {tuple(d_bounds)}")
        if hi > 1.0:
            raise ValidationError(
                f"d_bounds upper value {hi:g} looks like µm²/ms or 10⁻³ mm²/s; give mm²/s (e.g. 0.01)")
        self.d_bounds = (float(lo), float(hi))
        if direction_average is None:
            direction_average = "arithmetic" if self.noise_aware else "geometric"
        if direction_average not in ("geometric", "arithmetic"):
            raise ValidationError(
                f"direction_average must be 'geometric' or 'arithmetic', got {direction_average!r}")
        self.direction_average = direction_average
        self.max_iter = int(max_iter)
        self.chunk_size = int(chunk_size)
        b = self.protocol.b_values
        shell_b, labels = group_shells(b)
        b_lo = -np.inf if b_range[0] is None else float(b_range[0])
        b_hi = np.inf if b_range[1] is None else float(b_range[1])
        use = (shell_b >= b_lo - 1e-9) & (shell_b <= b_hi + 1e-9)
        if np.count_nonzero(use) < self._min_shells:
            raise ProtocolError(
                f"{self.protocol.source}: {type(self).__name__} needs at least {self._min_shells} "
                f"distinct b-values in the fitted range, got shells {np.round(shell_b[use], 1).tolist()} "
                f"s/mm² (of {np.round(shell_b, 1).tolist()}); acquire more b-values or widen b_range")
        self.b_range = (None if b_range[0] is None else b_lo, None if b_range[1] is None else b_hi)
        keep_meas = use[labels]
        self._measurements = np.flatnonzero(keep_meas)
        kept_labels = labels[keep_meas]
        remap = np.cumsum(use) - 1
        self._labels = remap[kept_labels]
        self.shell_b_values = shell_b[use]
        self.n_shells = int(self.shell_b_values.size)

    @property
    def noise_aware(self) -> bool:
        """True if the chosen method models the noise floor (needs sigma)."""
        return self.method == "ncexp"

    @classmethod
    def fit_volume(cls, volume, *, mask=None, method=None, names=None, progress=None,
                   **options):
        """Fit a loaded diffusion series from plain options: see :func:`fit_diffusion_volume`."""
        return fit_diffusion_volume(volume, cls._label, mask=mask, method=method, names=names,
                                    progress=progress, **options)

    def _context(self, sigma) -> FitContext:
        return FitContext(self.d_bounds, self.max_iter, sigma)

    def fit(self, data, *, mask=None, noise_sigma="auto", noise_background=None, progress=None):
        """Fit every voxel of ``data``.

        Parameters
        ----------
        data : ndarray (..., n_measurements)
            Magnitude diffusion-weighted images, one per b-value of the
            protocol, on the last axis, any real dtype. Not modified.
        mask : bool ndarray of data.shape[:-1], optional
            Voxels to fit; the others get status MASKED and NaN maps.
        noise_sigma : float, ndarray of data.shape[:-1], or "auto"
            Noise standard deviation of the real/imaginary channels (signal
            units), used by ``ncexp`` only. ``"auto"`` estimates it from
            ``noise_background`` if given, else from the background of the
            lowest-b image (:func:`oncomri.models.estimate_noise_sigma`).
        noise_background : bool ndarray, optional
            Air voxels for the sigma estimate.
        progress : callable, optional
            ``progress(n_done, n_total)`` after each chunk.
        """
        data = np.asanyarray(data)
        n = self.protocol.n_measurements
        if data.ndim < 2 or data.shape[-1] != n:
            raise ValidationError(
                f"data has shape {data.shape} but the protocol has {n} b-values; "
                "put the diffusion-weighted images on the last axis, one per b-value")
        if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
            raise ValidationError(
                f"data must be real magnitude values, got dtype {data.dtype}; pass np.abs(complex_data)")
        sigma_value = None
        aux = {}
        if self.noise_aware:
            sigma_value = self._resolve_sigma(data, noise_sigma, noise_background)
            if np.ndim(sigma_value) > 0:
                aux["sigma"] = sigma_value
        scalar_sigma = None if sigma_value is None or np.ndim(sigma_value) else float(sigma_value)
        dtype = result_dtype(data)
        b = self.shell_b_values
        labels, n_shells, kind = self._labels, self.n_shells, self.direction_average

        def fit_rows(rows, aux_rows):
            rows = average_shells(rows, labels, n_shells, kind=kind)
            sig = aux_rows.get("sigma")
            if sig is None and scalar_sigma is not None:
                sig = np.full(rows.shape[0], scalar_sigma)
            res = self._method(rows, b, self._context(sig))
            res.pop("rss", None)
            pred = self._signal(b, res, sig)
            resid = rows - pred
            rss = np.einsum("ij,ij->i", resid, resid)
            dev = rows - rows.mean(axis=1, keepdims=True)
            tss = np.einsum("ij,ij->i", dev, dev)
            with np.errstate(divide="ignore", invalid="ignore"):
                res["rsquared"] = np.where(tss > 0, 1.0 - rss / tss, np.nan)
            res["rmse"] = np.sqrt(rss / rows.shape[1])
            bad = res["status"] == Status.FAILED
            for key in self._params + ("rsquared", "rmse"):
                res[key] = np.where(bad, np.nan, res[key])
            return res

        outputs = {name: dtype for name in self._params + ("rsquared", "rmse")}
        outputs["status"] = np.uint8
        measurements = None if self._measurements.size == n else self._measurements
        maps = fit_voxelwise(data, fit_rows, outputs=outputs, mask=mask, aux=aux,
                             measurements=measurements, chunk_size=self.chunk_size,
                             progress=progress)
        return self._fit_class(self, maps, noise_sigma=sigma_value)

    def _signal(self, b, params, sigma=None):
        """Model signal (n, n_b) at ``b`` for parameter arrays ``params`` (Rician mean if noise-aware)."""
        amp = self._amplitude(b, {k: np.nan_to_num(np.asarray(params[k], np.float64))
                                  for k in self._params})
        if self.noise_aware and sigma is not None:
            return rician_mean(amp, np.asarray(sigma, np.float64)[..., None])
        return amp

    def _amplitude(self, b, p):  # pragma: no cover - abstract
        raise NotImplementedError

    def _resolve_sigma(self, data, noise_sigma, noise_background):
        return resolve_noise_sigma(data, noise_sigma, background=noise_background,
                                   measurement=int(np.argmin(self.protocol.b_values)))


class _DiffusionFit(Fit):
    """Maps of a diffusion fit; see the subclasses for the names."""

    def __init__(self, model, maps, *, noise_sigma=None):
        self.model = model
        self._maps = maps
        self.noise_sigma = noise_sigma
        self.status = maps["status"]

    @property
    def s0(self) -> np.ndarray:
        """Signal extrapolated to b = 0 (signal units)."""
        return self._maps["s0"]

    @property
    def rsquared(self) -> np.ndarray:
        """Coefficient of determination on the shell-averaged signal."""
        return self._maps["rsquared"]

    @property
    def rmse(self) -> np.ndarray:
        """Root-mean-square residual on the shell-averaged signal (signal units)."""
        return self._maps["rmse"]

    def predict(self, b_values=None) -> np.ndarray:
        """The fitted signal at ``b_values`` (s/mm²; default: every measurement of the protocol).

        For ``ncexp`` this is the expected Rician magnitude, the quantity fitted.
        """
        b = self.model.protocol.b_values if b_values is None else np.asarray(b_values, np.float64)
        dtype = self.s0.dtype
        flat = {k: self._maps[k].reshape(-1) for k in self.model._params}
        sigma = None
        if self.model.noise_aware and self.noise_sigma is not None:
            sigma = np.broadcast_to(np.asarray(self.noise_sigma, np.float64), self.s0.shape).reshape(-1)
        pred = self.model._signal(b, flat, sigma)
        return pred.reshape(self.s0.shape + (b.size,)).astype(dtype)

    def _common_maps(self, s0_name: str) -> dict:
        label = f"desc-{self.model._label}fit"
        return {
            s0_name: (self.s0, {"Units": "a.u.", "Description": "signal extrapolated to b = 0"}),
            f"{label}_rsquared": (self.rsquared, {"Units": "1",
                                                  "Description": "coefficient of determination of the fit"}),
            f"{label}_rmse": (self.rmse, {"Units": "a.u.",
                                          "Description": "root-mean-square residual of the fit"}),
            f"{label}_status": (self.status, {
                "Units": "1", "Description": "per-voxel fit status code",
                "Levels": {str(k): v for k, v in STATUS_DESCRIPTIONS.items()}}),
        }



class ADCFit(_DiffusionFit):
    """Result of :class:`ADCModel`: ``adc`` (mm²/s), ``s0``, ``status`` ..."""

    @property
    def adc(self) -> np.ndarray:
        """Apparent diffusion coefficient in mm²/s."""
        return self._maps["adc"]

    def output_maps(self) -> dict:
        """BIDS suffix -> (map, sidecar): ADCmap (mm^2/s), S0map, fit quality and status."""
        out = {"ADCmap": (self.adc, {"Units": "mm^2/s", "Description": "apparent diffusion coefficient"})}
        out.update(self._common_maps("S0map"))
        return out


class IVIMFit(_DiffusionFit):
    """Result of :class:`IVIMModel`: ``d``, ``dstar`` (mm²/s), ``f`` (fraction), ``s0`` ..."""

    @property
    def d(self) -> np.ndarray:
        """Tissue (true) diffusion coefficient D in mm²/s."""
        return self._maps["d"]

    @property
    def dstar(self) -> np.ndarray:
        """Pseudo-diffusion coefficient D* in mm²/s (>= D)."""
        return self._maps["dstar"]

    @property
    def f(self) -> np.ndarray:
        """Perfusion fraction f in [0, 1]."""
        return self._maps["f"]

    def output_maps(self) -> dict:
        """BIDS suffix -> (map, sidecar): Dmap, Dstarmap (mm^2/s), fmap (1), desc-ivim_S0map, quality, status."""
        out = {
            "Dmap": (self.d, {"Units": "mm^2/s", "Description": "IVIM tissue diffusion coefficient D"}),
            "Dstarmap": (self.dstar, {"Units": "mm^2/s",
                                      "Description": "IVIM pseudo-diffusion coefficient D*"}),
            "fmap": (self.f, {"Units": "1", "Description": "IVIM perfusion fraction f (0 to 1)"}),
        }
        out.update(self._common_maps("desc-ivim_S0map"))
        return out


class DKIFit(_DiffusionFit):
    """Result of :class:`DKIModel`: ``d`` (mm²/s), ``k`` (dimensionless), ``s0`` ..."""

    @property
    def d(self) -> np.ndarray:
        """Kurtosis-corrected mean diffusivity D in mm²/s."""
        return self._maps["d"]

    @property
    def k(self) -> np.ndarray:
        """Mean (apparent) kurtosis K, dimensionless."""
        return self._maps["k"]

    def output_maps(self) -> dict:
        """BIDS suffix -> (map, sidecar): Kmap (1), desc-dki_Dmap (mm^2/s), desc-dki_S0map, quality, status."""
        out = {
            "Kmap": (self.k, {"Units": "1", "Description": "mean apparent diffusional kurtosis K"}),
            "desc-dki_Dmap": (self.d, {"Units": "mm^2/s",
                                       "Description": "DKI diffusion coefficient D (kurtosis-corrected)"}),
        }
        out.update(self._common_maps("desc-dki_S0map"))
        return out


class ADCModel(_DiffusionModel):
    """Mono-exponential ADC model ``S(b) = S0 exp(-b ADC)``, ADC in mm²/s.

    Parameters
    ----------
    protocol : DiffusionProtocol or array_like
        The acquisition, or the b-values in s/mm² (one per measurement;
        repeated b-values and several directions are averaged per shell, see
        the module docstring).
    method : str or callable
        ``'loglin'`` (default), ``'wloglin'``, ``'nlls'`` or ``'ncexp'``
        (noise floor; needs ``noise_sigma``), or a callable
        ``method(rows, shell_b_values, ctx) -> dict`` like the built-ins.
    d_bounds : (float, float)
        Bounds on ADC in mm²/s, default (0, 0.01).
    b_range : (float or None, float or None)
        Fit only the shells with b in this range (s/mm²), e.g. ``(200, None)``
        to suppress perfusion; ``predict()`` still covers every measurement.
    direction_average : {'geometric', 'arithmetic'}, optional
        How measurements of one shell are combined (default: geometric,
        arithmetic for ``ncexp``).
    max_iter, chunk_size : int
        Iteration limit of the nonlinear methods; voxels per chunk.

    Examples
    --------
    >>> fit = ADCModel([0, 500, 1000], method="nlls").fit(data)  # doctest: +SKIP
    >>> fit.adc  # mm²/s                                          # doctest: +SKIP
    """

    methods = {"loglin": _adc_loglin, "wloglin": _adc_wloglin, "nlls": _adc_nlls,
               "ncexp": _adc_ncexp}
    default_method = "loglin"
    _params = ("s0", "adc")
    _fit_class = ADCFit
    _label = "adc"

    def _amplitude(self, b, p):
        return adc_signal(b, p["s0"], p["adc"])


class IVIMModel(_DiffusionModel):
    """Bi-exponential intravoxel incoherent motion model (Le Bihan et al., Radiology 1988;168:497).

    ``S(b) = S0 [f exp(-b D*) + (1 - f) exp(-b D)]``, D and D* in mm²/s,
    f in [0, 1], D* >= D by construction.

    Parameters
    ----------
    protocol : DiffusionProtocol or array_like
        b-values in s/mm²; at least 4 shells, 2 of them at or above
        ``b_threshold`` and one below it.
    method : str or callable
        ``'segmented'`` (default) or ``'full'`` (see the module docstring).
    b_threshold : float
        s/mm²; shells at or above it give D in the segmented step (and the
        start of the full fit). Default 200.
    d_bounds : (float, float)
        Bounds on D in mm²/s, default (0, 0.01).
    dstar_max : float
        Upper bound on D* - D in mm²/s, default 0.5.
    b_range, direction_average, max_iter, chunk_size : see :class:`ADCModel`.
    """

    methods = {"segmented": _ivim_segmented, "full": _ivim_full}
    default_method = "segmented"
    _params = ("s0", "f", "d", "dstar")
    _fit_class = IVIMFit
    _min_shells = 4
    _label = "ivim"

    def __init__(self, protocol, *, method=None, b_threshold: float = B_THRESHOLD,
                 dstar_max: float = DSTAR_MAX, **kwargs):
        super().__init__(protocol, method=method, **kwargs)
        b = self.shell_b_values
        n_high = int(np.count_nonzero(b >= b_threshold))
        n_low = int(np.count_nonzero(b < b_threshold))
        if n_high < 2 or n_low < 1:
            raise ProtocolError(
                f"{self.protocol.source}: IVIM with b_threshold={b_threshold:g} s/mm² needs at "
                f"least 2 b-values at or above it and 1 below, got {np.round(b, 1).tolist()} s/mm²; "
                "change b_threshold or acquire more b-values")
        if not (np.isfinite(dstar_max) and 0 < dstar_max <= 10):
            raise ValidationError(f"dstar_max must be in (0, 10] mm²/s, got {dstar_max!r}")
        self.b_threshold = float(b_threshold)
        self.dstar_max = float(dstar_max)

    def _context(self, sigma) -> FitContext:
        return FitContext(self.d_bounds, self.max_iter, sigma, dstar_max=self.dstar_max,
                          b_threshold=self.b_threshold)

    def _amplitude(self, b, p):
        return ivim_signal(b, p["s0"], p["f"], p["d"], p["dstar"])


class DKIModel(_DiffusionModel):
    """Mean-signal diffusional kurtosis ``S(b) = S0 exp(-b D + b² D² K / 6)`` (Jensen et al., MRM 2005;53:1432).

    Meant for b up to about 2000-3000 s/mm² (the second-order expansion fails
    beyond); needs at least 3 shells, the highest at ~1000 s/mm² or more for K
    to be determined.

    Parameters
    ----------
    protocol : DiffusionProtocol or array_like
        b-values in s/mm².
    method : str or callable
        ``'wloglin'`` (default), ``'loglin'``, ``'nlls'`` or ``'ncexp'``.
    k_bounds : (float, float)
        Bounds on K, default (0, 3).
    d_bounds, b_range, direction_average, max_iter, chunk_size : see :class:`ADCModel`.
    """

    methods = {"loglin": _dki_loglin, "wloglin": _dki_wloglin, "nlls": _dki_nlls,
               "ncexp": _dki_ncexp}
    default_method = "wloglin"
    _params = ("s0", "d", "k")
    _fit_class = DKIFit
    _min_shells = 3
    _label = "dki"

    def __init__(self, protocol, *, method=None, k_bounds=K_BOUNDS, **kwargs):
        super().__init__(protocol, method=method, **kwargs)
        lo, hi = k_bounds
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ValidationError(f"k_bounds must satisfy low < high, got {tuple(k_bounds)}")
        self.k_bounds = (float(lo), float(hi))

    def _context(self, sigma) -> FitContext:
        return FitContext(self.d_bounds, self.max_iter, sigma, k_bounds=self.k_bounds)

    def _amplitude(self, b, p):
        return dki_signal(b, p["s0"], p["d"], p["k"])


# ---------------------------------------------------------------------------- from a Volume

#: Options of :func:`fit_diffusion_volume` and their defaults (the ``oncomri map adc`` flags;
#: ``b_threshold`` for ivim only, ``b_range`` for adc and dki).
DIFFUSION_VOLUME_OPTIONS = {
    "b_values": None, "b_range": None, "b_threshold": None, "noise_sigma": "auto",
    "noise_background": None, "method": None,
}


def _b_range_option(value, name):
    if value is None:
        return (None, None)
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = []
    try:
        if len(parts) != 2:
            raise ValueError
        lo, hi = (None if p is None or p == "" else float(p) for p in parts)
    except (TypeError, ValueError):
        raise ValidationError(f"{name} {value!r}: give LOW,HIGH in s/mm² (either may be empty, "
                              "e.g. '200,' or [200, null])") from None
    return lo, hi


def fit_diffusion_volume(volume, kind: str = "adc", *, mask=None, method=None, names=None,
                         progress=None, **options):
    """Fit ``kind`` (``'adc'``, ``'ivim'`` or ``'dki'``) to a loaded diffusion series.

    The b-values (s/mm², one per volume) come from ``b_values`` or the
    volume's :class:`~oncomri.core.protocols.DiffusionProtocol` (set by the
    readers, or from a ``.bval`` file by the caller).

    Parameters
    ----------
    volume : Volume
        4D series, diffusion-weighted volumes on the last axis.
    kind : {'adc', 'ivim', 'dki'}
    mask : bool ndarray, optional
    method : str, optional
        A method of the kind's model (:class:`ADCModel`, :class:`IVIMModel`,
        :class:`DKIModel`).
    names : None, str or callable
        How messages name the options (:class:`oncomri.models.volume_fit.Options`).
    **options
        ``b_values`` (list, s/mm²), ``b_range`` (adc, dki: ``(low, high)``
        in s/mm², either None, or text ``'200,'``), ``b_threshold`` (ivim,
        s/mm², default 200), ``noise_sigma`` (``'auto'`` or signal units, for
        ``ncexp``), ``noise_background`` (bool array: air for the sigma
        estimate).

    Returns
    -------
    VolumeFit
    """
    import time

    from .. import __version__
    from .volume_fit import Options, VolumeFit

    classes = {"adc": ADCModel, "ivim": IVIMModel, "dki": DKIModel}
    if kind not in classes:
        raise ValidationError(f"kind must be one of {', '.join(classes)}, got {kind!r}")
    cls = classes[kind]
    opts = Options({**options, "method": method}, DIFFUSION_VOLUME_OPTIONS, model=kind,
                   names=names, cli={"noise_background": "--noise-mask", "b_values": "--bval"})
    if kind == "ivim" and opts.given("b_range"):
        raise ValidationError(f"{opts.name('b_range')} applies to adc and dki; ivim uses "
                              f"{opts.name('b_threshold')}")
    if kind != "ivim" and opts.given("b_threshold"):
        raise ValidationError(f"{opts.name('b_threshold')} applies to ivim only")
    data = volume.data
    src = str(volume.sources[0]) if volume.sources else "input"
    n_volumes = data.shape[-1] if data.ndim == 4 else 1
    if opts.given("b_values"):
        try:
            b = np.asarray(opts["b_values"], dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise ProtocolError(f"{opts.name('b_values')}: give numbers in s/mm², one per "
                                "volume") from None
        source = opts.name("b_values")
        if b.size != n_volumes:
            raise ProtocolError(f"{source} lists {b.size} b-values but {src} has {n_volumes} "
                                f"volume{'s' if n_volumes != 1 else ''}; give one b-value per volume")
        protocol = DiffusionProtocol(b, source=source)
    elif isinstance(volume.protocol, DiffusionProtocol):
        protocol = volume.protocol
    else:
        what = type(volume.protocol).__name__ if volume.protocol is not None else "no b-values"
        raise ProtocolError(f"{src} is not a diffusion series ({what}); give the b-values "
                            f"({opts.name('b_values')}, s/mm², one per volume)")
    model_opts = {}
    if kind == "ivim":
        if opts.given("b_threshold"):
            model_opts["b_threshold"] = opts.number("b_threshold", minimum=0)
    else:
        model_opts["b_range"] = _b_range_option(opts["b_range"], opts.name("b_range"))
    if method is not None and not callable(method) and method not in cls.methods:
        raise ValidationError(f"{opts.name('method')} {method!r}: not a method of {kind}; choose "
                              f"one of {', '.join(cls.methods)}")
    model = cls(protocol, method=method, **model_opts)
    sigma = opts["noise_sigma"]
    if isinstance(sigma, np.ndarray) and sigma.ndim:
        sigma = opts.array("noise_sigma", volume.spatial_shape, what="noise sigma map")
    elif not (isinstance(sigma, str) and sigma == "auto"):
        sigma = opts.number("noise_sigma", minimum=0)
    background = opts.mask("noise_background", volume.spatial_shape)
    start = time.perf_counter()
    fit = model.fit(data, mask=mask, noise_sigma=sigma, noise_background=background,
                    progress=progress)
    seconds = time.perf_counter() - start
    sigma_source = None
    if model.noise_aware:
        sigma_source = ("given" if not isinstance(sigma, str) else
                        f"estimated from {opts.name('noise_background')}" if background is not None
                        else "estimated from the image background (lowest b-value)")
    scalar_sigma = fit.noise_sigma is not None and np.ndim(fit.noise_sigma) == 0
    common = {
        "Software": "oncomri",
        "SoftwareVersion": __version__,
        "Model": kind,
        "Method": model.method,
        "MethodDescription": METHOD_REFERENCES.get(model.method, "user-supplied"),
        "BValues": protocol.b_values.tolist(),
        "BValueUnits": "s/mm^2",
        "ShellBValuesFitted": model.shell_b_values.tolist(),
        "DirectionAverage": f"{model.direction_average} mean per b-value",
        "DiffusivityBounds": list(model.d_bounds),
        "DiffusivityUnits": "mm^2/s",
        "NoiseSigma": float(fit.noise_sigma) if scalar_sigma else None,
        "NoiseSigmaSource": sigma_source,
        "Notes": list(volume.meta.get("notes", [])),
    }
    if kind == "ivim":
        common["BThreshold"] = model.b_threshold
    counts = fit.summary()
    fitted = sum(v for k, v in counts.items() if k in ("ok", "not_converged", "at_bound"))
    failures = counts.get("failed", 0) + counts.get("invalid_data", 0)
    sigma_text = f", noise sigma {common['NoiseSigma']:.4g} ({sigma_source})" if scalar_sigma else ""
    summary = (f"{kind} ({model.method}): {fitted:,} voxels fitted "
               f"({counts.get('not_converged', 0):,} not converged, {counts.get('at_bound', 0):,} at a "
               f"bound), {failures:,} failures, {counts.get('masked', 0):,} masked out, "
               f"{seconds:.2f} s{sigma_text}")
    return VolumeFit(fit=fit, model=model, maps=fit.output_maps(), provenance=common,
                     summary=summary)
