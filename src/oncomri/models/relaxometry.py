"""Relaxometry: T2*/R2* from multi-echo gradient echo, T2/R2 from multi-echo spin echo.

Both are mono-exponential decays ``S(TE) = S0 exp(-R TE)`` fitted voxelwise by
one of these methods (``R2StarModel.methods``):

``loglin``
    log-linear least squares (closed form). Fast, but biased where the signal
    reaches the noise floor (it overestimates short T2*).
``wloglin``
    log-linear least squares weighted by S^2 (closed form).
``arlo``
    Auto-Regression on Linear Operations (Pei et al., MRM 2015;73:843), for
    evenly spaced echoes, with the Simpson-rule ratio inverted exactly
    (see :func:`oncomri.fitting.exponential_arlo`).
``nlls``
    nonlinear least squares of ``S0 exp(-R TE)`` (bounded Levenberg–Marquardt).
``nlls_offset``
    nonlinear least squares of ``S0 exp(-R TE) + C``: the constant absorbs the
    noise floor and slowly decaying components (used for iron-overloaded
    liver, e.g. Wood et al., Blood 2005;106:1460).
``ncexp``
    the noise-corrected exponential: least squares of the *expected* magnitude
    under Rician noise, ``E[M] = sigma sqrt(pi/2) L_1/2(-A^2 / 2 sigma^2)`` with
    ``A = S0 exp(-R TE)`` (the NCEXP model of Raya et al., MRM 2010;63:181,
    applied to liver R2* by Feng et al., MRM 2013;70:1765). With sigma known
    or estimated from the background it stays unbiased where the signal
    decays into the noise floor: short T2*, exactly where iron-labelled cells
    are. This is the default.

The status of each voxel says whether its fit converged, hit a bound, was
masked out, or had invalid samples (NaN, Inf, negative), see
:class:`oncomri.fitting.Status`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from ..core.errors import ProtocolError, ValidationError
from ..core.protocols import MultiEchoProtocol
from ..fitting import (
    DEFAULT_CHUNK_SIZE,
    STATUS_DESCRIPTIONS,
    Status,
    exponential_arlo,
    exponential_loglinear,
    fit_voxelwise,
    levenberg_marquardt,
)
from ..fitting.special import rician_mean, rician_mean_and_grad
from .base import Fit, Model, result_dtype
from .noise import resolve_noise_sigma

__all__ = [
    "mono_exponential",
    "rician_mono_exponential",
    "R2StarModel",
    "T2StarFit",
    "T2Model",
    "T2Fit",
]


# --------------------------------------------------------------------------
# Pure signal equations (numpy)
# --------------------------------------------------------------------------

def mono_exponential(echo_times, s0, rate, offset=0.0) -> np.ndarray:
    """``S(TE) = S0 exp(-R TE) + offset`` for maps ``s0``, ``rate`` (s^-1).

    Returns an array of shape ``s0.shape + (n_echoes,)``.
    """
    te = np.asarray(echo_times, dtype=np.float64)
    s0 = np.asarray(s0, dtype=np.float64)[..., None]
    rate = np.asarray(rate, dtype=np.float64)[..., None]
    return s0 * np.exp(-rate * te) + np.asarray(offset, dtype=np.float64)[..., None]


def rician_mono_exponential(echo_times, s0, rate, sigma) -> np.ndarray:
    """Expected magnitude of a mono-exponential decay under Rician noise ``sigma``.

    ``E[M(TE)]`` for ``A = S0 exp(-R TE)`` (Gudbjartsson & Patz, MRM 1995;34:910;
    Raya et al., MRM 2010;63:181). Shape ``s0.shape + (n_echoes,)``.
    """
    amp = mono_exponential(echo_times, s0, rate)
    return rician_mean(amp, np.asarray(sigma, dtype=np.float64)[..., None])


# --------------------------------------------------------------------------
# Model kernels for the batched LM: model(p, x, c, f, J)
# --------------------------------------------------------------------------

@numba.njit(cache=True)
def _kernel_exp(p, x, c, f, J):
    s0 = p[0]
    r = p[1]
    te = x[0]
    for j in range(te.shape[0]):
        e = math.exp(-r * te[j])
        f[j] = s0 * e
        J[j, 0] = e
        J[j, 1] = -s0 * te[j] * e


@numba.njit(cache=True)
def _kernel_exp_offset(p, x, c, f, J):
    s0 = p[0]
    r = p[1]
    te = x[0]
    for j in range(te.shape[0]):
        e = math.exp(-r * te[j])
        f[j] = s0 * e + p[2]
        J[j, 0] = e
        J[j, 1] = -s0 * te[j] * e
        J[j, 2] = 1.0


@numba.njit(cache=True)
def _kernel_exp_rician(p, x, c, f, J):
    s0 = p[0]
    r = p[1]
    sigma = c[0]
    te = x[0]
    for j in range(te.shape[0]):
        e = math.exp(-r * te[j])
        a = s0 * e
        mean, da = rician_mean_and_grad(a, sigma)
        f[j] = mean
        J[j, 0] = da * e
        J[j, 1] = -da * a * te[j]


@numba.njit(parallel=True, cache=True)
def _decay_rss(rows, te, s0, rate, offset, sigma, out):
    """Residual sum of squares of S0 exp(-R TE) + offset (or its Rician mean if sigma > 0)."""
    n, m = rows.shape
    for i in numba.prange(n):
        total = 0.0
        for j in range(m):
            a = s0[i] * math.exp(-rate[i] * te[j])
            if sigma[i] > 0.0:
                f = rician_mean_and_grad(a, sigma[i])[0]
            else:
                f = a + offset[i]
            r = rows[i, j] - f
            total += r * r
        out[i] = total


@numba.njit(parallel=True, cache=True)
def _centred_sum_of_squares(rows, out):
    n, m = rows.shape
    for i in numba.prange(n):
        mean = 0.0
        for j in range(m):
            mean += rows[i, j]
        mean /= m
        total = 0.0
        for j in range(m):
            d = rows[i, j] - mean
            total += d * d
        out[i] = total


def _rss(rows, te, s0, rate, offset=None, sigma=None):
    n = rows.shape[0]
    out = np.empty(n)
    zeros = np.zeros(n)
    _decay_rss(rows, te, np.nan_to_num(s0), np.nan_to_num(rate),
               zeros if offset is None else offset, zeros if sigma is None else sigma, out)
    return out


# --------------------------------------------------------------------------
# Methods: (rows, echo_times, context) -> dict(s0, rate, [offset], status, rss)
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class FitContext:
    """What a method needs besides the data rows (all SI)."""

    rate_bounds: tuple
    max_iter: int
    sigma: np.ndarray | None = None  # (n_rows,) noise sigma, for noise-aware methods


def _start_values(rows, te, ctx, amplitude, rate):
    """Fill undetermined starting values and clip them into the bounds."""
    lo, hi = ctx.rate_bounds
    bad = ~(np.isfinite(amplitude) & np.isfinite(rate) & (amplitude > 0))
    amplitude = np.where(bad, rows.max(axis=1).astype(np.float64), amplitude)
    rate = np.where(bad, 1.0 / float(np.mean(te)), rate)
    return amplitude, np.clip(rate, lo, hi)


def _closed_form_result(amplitude, rate, rows, te, ctx):
    """Apply the rate bounds to a closed-form fit and set the status."""
    lo, hi = ctx.rate_bounds
    failed = np.isnan(rate)
    clipped = np.clip(rate, lo, hi)
    at_bound = (clipped != rate) & ~failed
    status = np.full(rows.shape[0], Status.OK, dtype=np.uint8)
    status[at_bound] = Status.AT_BOUND
    status[failed] = Status.FAILED
    amplitude = np.where(failed, np.nan, amplitude)
    if np.any(at_bound):  # least-squares amplitude for the clipped rate
        e = np.exp(-np.outer(clipped[at_bound], te))
        amplitude[at_bound] = (np.einsum("ij,ij->i", rows[at_bound], e)
                               / np.einsum("ij,ij->i", e, e))
    return {"s0": amplitude, "rate": clipped, "status": status,
            "rss": _rss(rows, te, amplitude, clipped)}


def _method_loglin(rows, te, ctx):
    a, r = exponential_loglinear(rows, te, weighted=False)
    return _closed_form_result(a, r, rows, te, ctx)


def _method_wloglin(rows, te, ctx):
    a, r = exponential_loglinear(rows, te, weighted=True)
    return _closed_form_result(a, r, rows, te, ctx)


def _method_arlo(rows, te, ctx):
    a, r = exponential_arlo(rows, te)
    return _closed_form_result(a, r, rows, te, ctx)


def _lm_result(params, status, rss):
    out = {"s0": params[:, 0], "rate": params[:, 1], "status": status, "rss": rss}
    if params.shape[1] > 2:
        out["offset"] = params[:, 2]
    return out


def _method_nlls(rows, te, ctx):
    a, r = _start_values(rows, te, ctx, *exponential_loglinear(rows, te, weighted=True))
    lo, hi = ctx.rate_bounds
    p, rss, st, _ = levenberg_marquardt(
        _kernel_exp, rows, np.column_stack([a, r]), x=te[None, :],
        lower=[0.0, lo], upper=[np.inf, hi], max_iter=ctx.max_iter)
    return _lm_result(p, st, rss)


def _method_nlls_offset(rows, te, ctx):
    a, r = _start_values(rows, te, ctx, *exponential_loglinear(rows, te, weighted=True))
    c0 = 0.5 * rows.min(axis=1).astype(np.float64)
    lo, hi = ctx.rate_bounds
    p, rss, st, _ = levenberg_marquardt(
        _kernel_exp_offset, rows, np.column_stack([a, r, c0]), x=te[None, :],
        lower=[0.0, lo, 0.0], upper=[np.inf, hi, np.inf], max_iter=ctx.max_iter)
    return _lm_result(p, st, rss)


def _method_ncexp(rows, te, ctx):
    sigma = ctx.sigma
    if sigma is None:
        raise ValidationError("method 'ncexp' needs the noise sigma (given, or 'auto')")
    # start from the weighted log-linear fit of the noise-floor-corrected
    # signal sqrt(max(M^2 - 2 sigma^2, 0)) (second-moment correction)
    corrected = np.sqrt(np.maximum(np.square(rows, dtype=np.float64)
                                   - 2.0 * (sigma * sigma)[:, None], 0.0))
    a, r = _start_values(rows, te, ctx, *exponential_loglinear(corrected, te, weighted=True))
    lo, hi = ctx.rate_bounds
    p, rss, st, _ = levenberg_marquardt(
        _kernel_exp_rician, rows, np.column_stack([a, r]), x=te[None, :],
        consts=sigma[:, None], lower=[0.0, lo], upper=[np.inf, hi], max_iter=ctx.max_iter)
    return _lm_result(p, st, rss)


_METHODS = {
    "loglin": _method_loglin,
    "wloglin": _method_wloglin,
    "arlo": _method_arlo,
    "nlls": _method_nlls,
    "nlls_offset": _method_nlls_offset,
    "ncexp": _method_ncexp,
}

#: Methods whose signal model includes the noise sigma.
NOISE_AWARE_METHODS = frozenset({"ncexp"})


# --------------------------------------------------------------------------
# Models and fits
# --------------------------------------------------------------------------

def _as_protocol(protocol) -> MultiEchoProtocol:
    if isinstance(protocol, MultiEchoProtocol):
        return protocol
    return MultiEchoProtocol(protocol)


class _DecayModel(Model):
    methods = _METHODS
    default_method = "ncexp"
    _fit_class: type = None

    def __init__(self, protocol, *, method=None, rate_bounds=(0.0, None),
                 max_iter: int = 100, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 first_echo: int = 0):
        super().__init__(_as_protocol(protocol), method=method)
        if not 0 <= first_echo <= self.protocol.n_echoes - 2:
            raise ValidationError(
                f"first_echo={first_echo} leaves fewer than two of the "
                f"{self.protocol.n_echoes} echoes to fit"
            )
        self.first_echo = int(first_echo)
        self.fit_protocol = self.protocol.drop_echoes(self.first_echo)
        if self.method == "arlo":
            if self.fit_protocol.n_echoes < 3 or not self.fit_protocol.evenly_spaced:
                raise ProtocolError(
                    f"{self.protocol.source}: method 'arlo' needs at least three evenly "
                    f"spaced echoes, got {self.fit_protocol.echo_times.tolist()} s; "
                    "choose another method (e.g. nlls)"
                )
        lo, hi = rate_bounds
        te = self.fit_protocol.echo_times
        if hi is None:
            # Beyond R*TE1 = 10 the signal at the first echo is < 5e-5 of S0:
            # faster decays cannot be told apart from the noise floor.
            first = te[0] if te[0] > 0 else te[1] - te[0]
            hi = 10.0 / first
        if not (0 <= lo < hi):
            raise ValidationError(f"rate_bounds must satisfy 0 <= low < high, got {(lo, hi)}")
        self.rate_bounds = (float(lo), float(hi))
        self.max_iter = int(max_iter)
        self.chunk_size = int(chunk_size)

    @property
    def noise_aware(self) -> bool:
        """True if the chosen method models the noise floor (needs sigma)."""
        return self.method in NOISE_AWARE_METHODS

    def fit(self, data, *, mask=None, noise_sigma="auto", noise_background=None,
            progress=None):
        """Fit every voxel of ``data``.

        Parameters
        ----------
        data : ndarray (..., n_echoes)
            Magnitude images, echoes on the last axis, any real dtype. Not modified.
        mask : bool ndarray of data.shape[:-1], optional
            Voxels to fit; the others get status MASKED and NaN maps.
        noise_sigma : float, ndarray of data.shape[:-1], or "auto"
            Noise standard deviation of the real/imaginary channels, in signal
            units, used by noise-aware methods (``ncexp``). ``"auto"``
            estimates it from ``noise_background`` if given, else from the
            image's background (:func:`estimate_noise_sigma`).
        noise_background : bool ndarray, optional
            Air voxels for the sigma estimate.
        progress : callable, optional
            ``progress(n_done, n_total)`` after each chunk.
        """
        data = np.asanyarray(data)
        if data.ndim < 2 or data.shape[-1] != self.protocol.n_echoes:
            raise ValidationError(
                f"data has shape {data.shape} but the protocol has "
                f"{self.protocol.n_echoes} echoes; put the echoes on the last axis"
            )
        if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
            raise ValidationError(
                f"data must be real magnitude values, got dtype {data.dtype}; "
                "pass np.abs(complex_data)"
            )
        sigma_value = None
        aux = {}
        if self.noise_aware:
            sigma_value = self._resolve_sigma(data, noise_sigma, noise_background)
            if np.ndim(sigma_value) > 0:
                aux["sigma"] = sigma_value
        te = self.fit_protocol.echo_times
        dtype = result_dtype(data)
        scalar_sigma = None if np.ndim(sigma_value) > 0 or sigma_value is None else float(sigma_value)

        def fit_rows(rows, aux_rows):
            sig = aux_rows.get("sigma")
            if sig is None and scalar_sigma is not None:
                sig = np.full(rows.shape[0], scalar_sigma)
            ctx = FitContext(self.rate_bounds, self.max_iter, sig)
            res = self._method(rows, te, ctx)
            rss = res.pop("rss")
            tss = np.empty(rows.shape[0])
            _centred_sum_of_squares(rows, tss)
            with np.errstate(divide="ignore", invalid="ignore"):
                res["rsquared"] = np.where(tss > 0, 1.0 - rss / tss, np.nan)
            res["rmse"] = np.sqrt(rss / rows.shape[1])
            bad = res["status"] == Status.FAILED
            for key in ("s0", "rate", "offset", "rsquared", "rmse"):
                if key in res:
                    res[key] = np.where(bad, np.nan, res[key])
            return res

        outputs = {"s0": dtype, "rate": dtype, "rsquared": dtype, "rmse": dtype,
                   "status": np.uint8}
        if self.method == "nlls_offset":
            outputs["offset"] = dtype
        measurements = slice(self.first_echo, None) if self.first_echo else None
        maps = fit_voxelwise(data, fit_rows, outputs=outputs, mask=mask, aux=aux,
                             measurements=measurements, chunk_size=self.chunk_size,
                             progress=progress)
        return self._fit_class(self, maps, noise_sigma=sigma_value)

    def _resolve_sigma(self, data, noise_sigma, noise_background):
        return resolve_noise_sigma(data, noise_sigma, background=noise_background)


class _DecayFit(Fit):
    """Shared implementation of T2StarFit and T2Fit."""

    _rate_name = "rate"
    _time_name = "time"
    _rate_suffix = "Rmap"
    _time_suffix = "Tmap"
    _label = "decay"

    def __init__(self, model, maps, *, noise_sigma=None):
        self.model = model
        self._maps = maps
        self.noise_sigma = noise_sigma
        self.status = maps["status"]

    @property
    def s0(self) -> np.ndarray:
        """Signal at TE = 0 (scanner units)."""
        return self._maps["s0"]

    @property
    def rate(self) -> np.ndarray:
        """Relaxation rate in s^-1."""
        return self._maps["rate"]

    @property
    def time(self) -> np.ndarray:
        """Relaxation time in s (1 / rate; NaN where the rate is not positive)."""
        r = self._maps["rate"]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(r > 0, 1.0 / r, np.nan).astype(r.dtype)

    @property
    def offset(self) -> np.ndarray | None:
        """Fitted constant (``nlls_offset`` only), scanner units; else None."""
        return self._maps.get("offset")

    @property
    def rsquared(self) -> np.ndarray:
        """Coefficient of determination of the fit, per voxel."""
        return self._maps["rsquared"]

    @property
    def rmse(self) -> np.ndarray:
        """Root-mean-square residual, scanner units."""
        return self._maps["rmse"]

    def predict(self, echo_times=None) -> np.ndarray:
        """The fitted signal at ``echo_times`` (default: the protocol's, all echoes).

        For ``ncexp`` this is the expected Rician magnitude, the quantity fitted.
        """
        te = self.model.protocol.echo_times if echo_times is None else np.asarray(echo_times)
        s0 = np.nan_to_num(self.s0)
        rate = np.nan_to_num(self.rate)
        if self.model.noise_aware:
            pred = rician_mono_exponential(te, s0, rate, self.noise_sigma)
        else:
            off = 0.0 if self.offset is None else np.nan_to_num(self.offset)
            pred = mono_exponential(te, s0, rate, off)
        return pred.astype(self.s0.dtype)

    def output_maps(self) -> dict:
        """BIDS-derivative suffix -> (map, sidecar): the maps a user gets on disk."""
        fit = f"desc-{self._label}fit"
        out = {
            self._rate_suffix: (self.rate, {"Units": "1/s", "Description": f"{self._rate_name.upper()} relaxation rate"}),
            self._time_suffix: (self.time, {"Units": "s", "Description": f"{self._time_name.upper()} relaxation time"}),
            "S0map": (self.s0, {"Units": "a.u.", "Description": "signal extrapolated to TE = 0"}),
            f"{fit}_rsquared": (self.rsquared, {"Units": "1", "Description": "coefficient of determination of the fit"}),
            f"{fit}_rmse": (self.rmse, {"Units": "a.u.", "Description": "root-mean-square residual of the fit"}),
            f"{fit}_status": (self.status, {"Units": "1", "Description": "per-voxel fit status code",
                                            "Levels": {str(k): v for k, v in STATUS_DESCRIPTIONS.items()}}),
        }
        if self.offset is not None:
            out[f"{fit}_offset"] = (self.offset, {"Units": "a.u.", "Description": "fitted constant offset"})
        return out



class T2StarFit(_DecayFit):
    """Result of :class:`R2StarModel`: ``r2star`` (s^-1), ``t2star`` (s), ``s0`` ..."""

    _rate_name = "r2*"
    _time_name = "t2*"
    _rate_suffix = "R2starmap"
    _time_suffix = "T2starmap"
    _label = "r2star"

    @property
    def r2star(self) -> np.ndarray:
        """R2* in s^-1."""
        return self.rate

    @property
    def t2star(self) -> np.ndarray:
        """T2* in s."""
        return self.time


class T2Fit(_DecayFit):
    """Result of :class:`T2Model`: ``r2`` (s^-1), ``t2`` (s), ``s0`` ..."""

    _rate_name = "r2"
    _time_name = "t2"
    _rate_suffix = "R2map"
    _time_suffix = "T2map"
    _label = "t2"

    @property
    def r2(self) -> np.ndarray:
        """R2 in s^-1."""
        return self.rate

    @property
    def t2(self) -> np.ndarray:
        """T2 in s."""
        return self.time


class R2StarModel(_DecayModel):
    """Mono-exponential R2*/T2* model of a multi-echo gradient-echo series.

    Parameters
    ----------
    protocol : MultiEchoProtocol or array_like
        The acquisition, or the echo times in seconds.
    method : str or callable
        One of :attr:`methods` (default ``'ncexp'``, noise-floor aware), or a
        callable ``method(rows, echo_times, ctx) -> dict`` like the built-ins.
    rate_bounds : (float, float or None)
        Bounds on R2* in s^-1; the default upper bound is ``10 / TE1``.
    max_iter : int
        Iteration limit of the nonlinear methods.
    chunk_size : int
        Voxels per chunk (memory bound).
    first_echo : int
        Index of the first echo used in the fit (0 uses all).

    Examples
    --------
    >>> model = R2StarModel(MultiEchoProtocol(echo_times=te_s), method="nlls")  # doctest: +SKIP
    >>> fit = model.fit(data, mask=mask)                                        # doctest: +SKIP
    >>> fit.r2star, fit.t2star, fit.s0, fit.status                              # doctest: +SKIP
    """

    _fit_class = T2StarFit


class T2Model(_DecayModel):
    """Mono-exponential T2 model of a multi-echo spin-echo (CPMG/MSME) series.

    Same methods and options as :class:`R2StarModel`. In multi-echo spin echo
    the first echo is free of stimulated-echo contributions while the later
    ones carry them when refocusing is imperfect, so the even/odd echoes
    oscillate and the first echo lies off the decay; ``drop_first_echo=True``
    fits from the second echo on (Milford et al., MRM 2015;73:1852 discuss
    the effect; Lebel & Wilman, MRM 2010;64:1005 model it fully with
    stimulated-echo compensation, which is not implemented here).

    Parameters
    ----------
    protocol : MultiEchoProtocol or array_like
    method : str or callable
    drop_first_echo : bool
        Fit echoes 2..n only; ``predict()`` still returns every echo.
    rate_bounds, max_iter, chunk_size : see :class:`R2StarModel`.
    """

    _fit_class = T2Fit

    def __init__(self, protocol, *, method=None, drop_first_echo: bool = False, **kwargs):
        super().__init__(protocol, method=method, first_echo=1 if drop_first_echo else 0, **kwargs)
        self.drop_first_echo = bool(drop_first_echo)
