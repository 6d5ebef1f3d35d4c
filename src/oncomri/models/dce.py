"""DCE-MRI: signal to concentration, tracer-kinetic models and model-free measures.

Units (SI inside, as everywhere in oncomri): times and delays in s,
concentrations in mmol/L (mM), Ktrans, PS, Fp and kep in 1/s (multiply by 60
for 1/min; Fp and PS in mL/mL/s, multiply by 6000 for mL/100 mL/min), ve and vp
dimensionless volume fractions, relaxivity in 1/(mM s).

Signal to concentration
-----------------------
:func:`signal_to_concentration` inverts the steady-state spoiled gradient
echo ``S = M0 sin(a) (1 - E) / (1 - cos(a) E)``, ``E = exp(-TR R1)`` (Ernst &
Anderson, Rev Sci Instrum 1966;37:93): M0 from the mean of the first
``baseline_frames`` frames and the baseline T1, then ``R1(t)`` frame by frame
and ``C = (R1 - R10) / r1`` (fast water exchange). The relaxivity comes from
:data:`RELAXIVITY_R1` (:func:`relaxivity`) or is given.

Models (``DCEModel.methods``)
-----------------------------
``tofts``            ``C = Ktrans e^(-kep t) * cp``, kep = Ktrans/ve
                     (Tofts et al., JMRI 1999;10:223).
``extended_tofts``   ``C = vp cp + Ktrans e^(-kep t) * cp`` (same reference).
``patlak``           ``C = vp cp + Ktrans int cp`` (Patlak et al., J Cereb
                     Blood Flow Metab 1983;3:1).
``2cxm``             two-compartment exchange (Fp, PS, ve, vp): bi-exponential
                     impulse response (Brix et al., MRM 2004;52:420; Sourbron
                     & Buckley, NMR Biomed 2013;26:1004).
``2cum``             two-compartment uptake (Fp, PS, vp): the 2CXM without
                     back-flux (Sourbron & Buckley 2013).

Discretisation: exact convolution of a piecewise-linear input
--------------------------------------------------------------
All models are sums of ``cp * exp(-k t)`` (and ``int cp``) convolutions. The
arterial input ``cp`` is taken as the piecewise-linear function through its
samples (zero before its first knot, constant after its last), and the
convolution of that function with the exponential is computed *exactly* by
the recursion over the union of AIF knots and tissue sample times
(a segment of length D with start value c and slope m adds
``c (1 - e^(-kD))/k + m (D - (1 - e^(-kD))/k)/k`` to ``e^(-kD) F``; series
expansions for ``kD < 0.01``). The same recursion gives ``dF/dk`` for the
analytic Jacobians, and a bolus-arrival delay ``d`` simply moves the knots
(``dF/dd = -(cp(t - d) - k F)``), so a delay can be a free parameter of the
least-squares fit without resampling the AIF.

Why it matters: the usual rectangle or trapezoid sums on the frame grid
(``dt * sum cp(t_i) h(t - t_i)``) are biased by O(k dt) and depend on the
temporal resolution; with 2-5 s frames and a first-pass peak a few seconds
wide, Ktrans and especially vp and Fp shift by several percent. With the exact
recursion the only approximation is the piecewise-linear AIF itself, which is
exact for measured (sampled) AIFs as sampled and converges quadratically for
analytic population AIFs sampled more finely (:func:`~oncomri.models.aif.population_aif`
``oversample``).

Fitting
-------
Every model is fitted by the batched bounded Levenberg-Marquardt of
:mod:`oncomri.fitting.lm` with analytic Jacobians. Starting values come from
the linearised (integral) form of the Tofts models (Murase, MRM
2004;51:858), solved in closed form per voxel. Delay: when ``fit_delay`` is
on, a grid of delays (``delay_step``, within ``delay_bounds``) is scanned with
that linear fit, the best delay starts the nonlinear fit, and the delay is then
a free parameter of the LM with its analytic derivative. The 2CXM and 2CUM fits
are run from several starting flows and the lowest residual is kept.

Model-free measures
-------------------
:func:`model_free_measures`: initial area under the concentration curve over
the first T seconds after the onset (IAUC_T, Evelhoch, JMRI 1999;10:254 -
citation from memory, not checked against the paper), peak concentration,
time to peak and wash-in slope.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from ..core.errors import ProtocolError, ValidationError
from ..core.protocols import DCEProtocol, DynamicProtocol
from ..fitting import DEFAULT_CHUNK_SIZE, STATUS_DESCRIPTIONS, Status, levenberg_marquardt
from ..fitting.voxelwise import as_mask
from .aif import ArterialInputFunction
from .base import Fit, Model, result_dtype

__all__ = [
    "RELAXIVITY_R1",
    "relaxivity",
    "spgr_signal",
    "signal_to_concentration",
    "relative_enhancement",
    "convolve_exponential",
    "tofts",
    "extended_tofts",
    "patlak",
    "two_compartment_exchange",
    "two_compartment_uptake",
    "model_free_measures",
    "model_free_output_maps",
    "fit_dce_volume",
    "DCE_VOLUME_OPTIONS",
    "DCEModel",
    "DCEFit",
    "DCE_METHODS",
]

# --------------------------------------------------------------------------
# Relaxivities
# --------------------------------------------------------------------------

#: r1 in plasma at 37 C, 1/(mM s), by agent and field (T).
#: Gadolinium: Szomolanyi et al., Invest Radiol 2019;54:559 (gadobutrol,
#: gadoteridol, gadoterate at 1.5, 3 and 7 T). Ferumoxytol: Knobloch et al.,
#: Invest Radiol 2018 (plasma, 1.5 and 3 T). Numbers as listed in the shared
#: data MANIFEST of this project.
RELAXIVITY_R1 = {
    "gadobutrol": {1.5: 4.78, 3.0: 4.97, 7.0: 3.83},
    "gadoteridol": {1.5: 3.80, 3.0: 3.28, 7.0: 3.21},
    "gadoterate": {1.5: 3.32, 3.0: 3.00, 7.0: 2.84},
    "ferumoxytol": {1.5: 19.0, 3.0: 9.5},
}

_AGENT_ALIASES = {
    "gadovist": "gadobutrol", "gd-bt-do3a": "gadobutrol",
    "prohance": "gadoteridol", "gd-hp-do3a": "gadoteridol",
    "dotarem": "gadoterate", "gd-dota": "gadoterate", "clariscan": "gadoterate",
    "gadoterate meglumine": "gadoterate",
    "feraheme": "ferumoxytol",
}


def relaxivity(agent: str, field_strength: float) -> float:
    """r1 of ``agent`` in plasma at ``field_strength`` tesla, in 1/(mM s).

    Raises
    ------
    ProtocolError
        Unknown agent, or no tabulated value within 0.05 T of the field (the
        message lists the fields there are; pass the relaxivity explicitly).
    """
    name = str(agent).strip().lower()
    name = _AGENT_ALIASES.get(name, name)
    if name not in RELAXIVITY_R1:
        raise ProtocolError(f"agent {agent!r} is not in the relaxivity table "
                            f"({', '.join(RELAXIVITY_R1)}); give the relaxivity r1 in 1/(mM s)")
    if field_strength is None:
        raise ProtocolError(f"the r1 of {name} depends on the field; give the field strength "
                            "in T (or the relaxivity)")
    table = RELAXIVITY_R1[name]
    for b0, r1 in table.items():
        if abs(b0 - float(field_strength)) <= 0.05:
            return r1
    raise ProtocolError(f"no tabulated r1 of {name} at {float(field_strength):g} T (table: "
                        f"{', '.join(f'{b:g} T' for b in table)}); give the relaxivity r1 in 1/(mM s)")


# --------------------------------------------------------------------------
# Signal <-> concentration
# --------------------------------------------------------------------------

def spgr_signal(r1, *, flip_angle, repetition_time, m0=1.0) -> np.ndarray:
    """Steady-state spoiled gradient-echo signal for R1 in 1/s (flip angle in rad, TR in s)."""
    e = np.exp(-float(repetition_time) * np.asarray(r1, dtype=np.float64))
    a = float(flip_angle)
    return np.asarray(m0, np.float64) * math.sin(a) * (1.0 - e) / (1.0 - math.cos(a) * e)


def _baseline(signal, n, start=0):
    return np.mean(signal[..., start:n], axis=-1, dtype=np.float64)


def signal_to_concentration(signal, protocol: DCEProtocol, *, t1_baseline, relaxivity: float,
                            baseline_frames: int | None = None, baseline_start: int = 0) -> np.ndarray:
    """Concentration (mM) from a spoiled gradient-echo dynamic series.

    Parameters
    ----------
    signal : ndarray (..., n_frames)
        Magnitude signal, frames on the last axis. Not modified.
    protocol : DCEProtocol
        Flip angle (rad), TR (s) and the number of baseline frames.
    t1_baseline : float or ndarray of signal.shape[:-1]
        Pre-contrast T1 in s.
    relaxivity : float
        r1 in 1/(mM s) (:func:`relaxivity`).
    baseline_frames : int, optional
        Overrides ``protocol.baseline_frames``.
    baseline_start : int
        First frame of the baseline average (frames ``baseline_start`` to
        ``baseline_frames - 1``); 1 skips a first frame acquired before the
        steady state (as the OSIPI reference conversion does).

    Returns
    -------
    ndarray of signal.shape, float32 for float32 input, else float64.
    NaN where the signal cannot be inverted (above the fully relaxed signal,
    non-positive, or a non-positive baseline).

    Notes
    -----
    ``M0 = S_pre (1 - cos a E0) / (sin a (1 - E0))`` with ``S_pre`` the mean of
    the baseline frames and ``E0 = exp(-TR / T1_0)``; then with
    ``y = S / (M0 sin a)``: ``E = (1 - y) / (1 - y cos a)``,
    ``R1 = -ln(E) / TR`` and ``C = (R1 - 1/T1_0) / r1``.
    """
    if not isinstance(protocol, DCEProtocol):
        raise ValidationError("protocol must be a DCEProtocol (flip angle, TR, baseline frames)")
    s = np.asanyarray(signal)
    if s.ndim < 1 or s.shape[-1] != protocol.n_measurements:
        raise ValidationError(f"signal has {s.shape[-1] if s.ndim else 0} frames on its last axis "
                              f"but the protocol lists {protocol.n_measurements} frame times")
    r1 = float(relaxivity)
    if not (np.isfinite(r1) and r1 > 0):
        raise ValidationError(f"relaxivity {relaxivity!r} must be a positive number in 1/(mM s)")
    nb = protocol.baseline_frames if baseline_frames is None else int(baseline_frames)
    if not 1 <= nb < s.shape[-1]:
        raise ValidationError(f"baseline_frames={nb} must be between 1 and {s.shape[-1] - 1}")
    if not 0 <= int(baseline_start) < nb:
        raise ValidationError(f"baseline_start={baseline_start} must be below baseline_frames={nb}")
    t1 = np.asarray(t1_baseline, dtype=np.float64)
    if t1.ndim and t1.shape != s.shape[:-1]:
        raise ValidationError(f"the T1 baseline map has shape {t1.shape} but the series' spatial "
                              f"shape is {s.shape[:-1]}; resample it onto the series grid")
    if np.nanmax(t1) > 20.0:
        raise ProtocolError(f"baseline T1 up to {np.nanmax(t1):g} s looks like milliseconds; give seconds")
    out_dtype = result_dtype(s)
    a, tr = protocol.flip_angle, protocol.repetition_time
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        r10 = 1.0 / t1
        e0 = np.exp(-tr * r10)
        pre = _baseline(s, nb, int(baseline_start))
        m0 = pre * (1.0 - math.cos(a) * e0) / (math.sin(a) * (1.0 - e0))
        y = np.asarray(s, dtype=np.float64) / (m0 * math.sin(a))[..., None]
        e = (1.0 - y) / (1.0 - y * math.cos(a))
        bad = ~((e > 0) & (e < 1)) | ~(m0 > 0)[..., None] | ~(np.asarray(r10) > 0)[..., None]
        r1t = -np.log(np.where(bad, 0.5, e)) / tr
        conc = (r1t - np.asarray(r10)[..., None]) / r1
    conc[bad] = np.nan
    return conc.astype(out_dtype, copy=False)


def relative_enhancement(signal, baseline_frames: int) -> np.ndarray:
    """``(S - S_pre) / S_pre`` with ``S_pre`` the mean of the first frames (NaN if S_pre <= 0)."""
    s = np.asanyarray(signal)
    pre = _baseline(s, int(baseline_frames))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (np.asarray(s, np.float64) - pre[..., None]) / pre[..., None]
    out[~(pre > 0)] = np.nan
    return out.astype(result_dtype(s), copy=False)


# --------------------------------------------------------------------------
# Exact convolution of a piecewise-linear input with exp(-k t)
# --------------------------------------------------------------------------

@numba.njit(cache=True)
def _coeffs(k, dt):
    """E, A, B, dA/dk, dB/dk for one segment of length dt (see module docstring)."""
    x = k * dt
    e = math.exp(-x)
    if x < 1e-2:
        a = dt * (1.0 - x * (0.5 - x * (1.0 / 6.0 - x * (1.0 / 24.0 - x * (1.0 / 120.0 - x / 720.0)))))
        b = dt * dt * (0.5 - x * (1.0 / 6.0 - x * (1.0 / 24.0 - x * (1.0 / 120.0 - x * (1.0 / 720.0 - x / 5040.0)))))
        da = dt * dt * (-0.5 + x * (1.0 / 3.0 - x * (0.125 - x * (1.0 / 30.0 - x / 144.0))))
        db = dt * dt * dt * (-1.0 / 6.0 + x * (1.0 / 12.0 - x * (1.0 / 40.0 - x * (1.0 / 180.0 - x / 1008.0))))
    else:
        a = -math.expm1(-x) / k
        b = (dt - a) / k
        da = (dt * e - a) / k
        db = -(da + b) / k
    return e, a, b, da, db


@numba.njit(cache=True)
def _walk(t, ta, ca, shift, k, F, dF, V, S, want_dk, want_vs):
    """F[j] = int cin(u) exp(-k (t_j - u)) du for the piecewise-linear input
    through (ta + shift, ca) (zero before, constant after); dF = dF/dk;
    V, S = input value and slope at t_j. t must increase."""
    n = t.shape[0]
    na = ta.shape[0]
    first = ta[0] + shift
    i = 0
    s = first
    v = ca[0]
    m = (ca[1] - ca[0]) / (ta[1] - ta[0])
    f = 0.0
    df = 0.0
    last = -1.0
    e = 0.0
    a = 0.0
    b = 0.0
    da = 0.0
    db = 0.0
    for j in range(n):
        tj = t[j]
        if tj < first:
            F[j] = 0.0
            if want_dk:
                dF[j] = 0.0
            if want_vs:
                V[j] = 0.0
                S[j] = 0.0
            continue
        while i < na - 1 and ta[i + 1] + shift <= tj:
            dt = ta[i + 1] + shift - s
            if dt > 0.0:
                if dt != last:
                    e, a, b, da, db = _coeffs(k, dt)
                    last = dt
                if want_dk:
                    df = e * df - dt * e * f + v * da + m * db
                f = e * f + v * a + m * b
            i += 1
            s = ta[i] + shift
            v = ca[i]
            if i < na - 1:
                m = (ca[i + 1] - ca[i]) / (ta[i + 1] - ta[i])
            else:
                m = 0.0
        dt = tj - s
        if dt > 0.0:
            if dt != last:
                e, a, b, da, db = _coeffs(k, dt)
                last = dt
            if want_dk:
                df = e * df - dt * e * f + v * da + m * db
            f = e * f + v * a + m * b
            v = v + m * dt
            s = tj
        F[j] = f
        if want_dk:
            dF[j] = df
        if want_vs:
            V[j] = v
            S[j] = m


@numba.njit(cache=True)
def _unpack(xp):
    n = int(xp[0])
    na = int(xp[1])
    o = 3
    t = xp[o:o + n]
    ta = xp[o + n:o + n + na]
    ca = xp[o + n + na:o + n + 2 * na]
    vt = xp[o + n + 2 * na:o + 2 * n + 2 * na]
    it = xp[o + 2 * n + 2 * na:o + 3 * n + 2 * na]
    return t, ta, ca, xp[2], vt, it


def _pack(times, aif: ArterialInputFunction, shift: float = 0.0) -> np.ndarray:
    """The model's shared inputs as one row: sizes, shift, t, AIF knots and values, cp(t), int cp."""
    t = np.ascontiguousarray(times, np.float64)
    ta, ca = aif.times, aif.concentration
    vt, it, s_ = (np.empty(t.size) for _ in range(3))
    _walk(t, ta, ca, float(shift), 0.0, it, s_, vt, s_, False, True)
    return np.concatenate([[t.size, ta.size, float(shift)], t, ta, ca, vt, it])[None, :]


def convolve_exponential(times, aif: ArterialInputFunction, rate: float, *, delay: float = 0.0):
    """``int_0^t cp(u - delay) exp(-rate (t - u)) du`` at ``times`` (s), exact for the piecewise-linear AIF.

    ``rate`` in 1/s (0 gives the running integral of the AIF).
    """
    t = np.ascontiguousarray(times, np.float64)
    out = np.empty(t.size)
    _walk(t, aif.times, aif.concentration, float(delay), float(rate), out, out, out, out, False, False)
    return out


# --------------------------------------------------------------------------
# Model kernels for the batched LM: model(p, x, c, f, J)
# Parameters (SI): tofts (Ktrans, ve), extended_tofts (Ktrans, ve, vp),
# patlak (Ktrans, vp), 2cxm (Fp, PS, ve, vp), 2cum (Fp, PS, vp); a trailing
# extra parameter is the delay (s) when it is fitted.
# --------------------------------------------------------------------------

@numba.njit(cache=True)
def _k_tofts(p, x, c, f, J):
    t, ta, ca, shift, vt, it = _unpack(x[0])
    ktrans = p[0]
    k = ktrans / p[1]
    if p.shape[0] > 2:
        _walk(t, ta, ca, shift + p[2], k, f, J[:, 1], J[:, 2], J[:, 0], True, True)
        for j in range(t.shape[0]):
            F = f[j]
            dF = J[j, 1]
            V = J[j, 2]
            f[j] = ktrans * F
            J[j, 0] = F + k * dF
            J[j, 1] = -k * k * dF
            J[j, 2] = -ktrans * (V - k * F)
    else:
        _walk(t, ta, ca, shift, k, f, J[:, 1], f, f, True, False)
        for j in range(t.shape[0]):
            F = f[j]
            dF = J[j, 1]
            f[j] = ktrans * F
            J[j, 0] = F + k * dF
            J[j, 1] = -k * k * dF


@numba.njit(cache=True)
def _k_etofts(p, x, c, f, J):
    t, ta, ca, shift, vt, it = _unpack(x[0])
    ktrans = p[0]
    k = ktrans / p[1]
    vp = p[2]
    if p.shape[0] > 3:
        _walk(t, ta, ca, shift + p[3], k, f, J[:, 1], J[:, 2], J[:, 3], True, True)
        for j in range(t.shape[0]):
            F = f[j]
            dF = J[j, 1]
            V = J[j, 2]
            S = J[j, 3]
            f[j] = vp * V + ktrans * F
            J[j, 0] = F + k * dF
            J[j, 1] = -k * k * dF
            J[j, 2] = V
            J[j, 3] = -ktrans * (V - k * F) - vp * S
    else:
        _walk(t, ta, ca, shift, k, f, J[:, 1], f, f, True, False)
        for j in range(t.shape[0]):
            F = f[j]
            dF = J[j, 1]
            f[j] = vp * vt[j] + ktrans * F
            J[j, 0] = F + k * dF
            J[j, 1] = -k * k * dF
            J[j, 2] = vt[j]


@numba.njit(cache=True)
def _k_patlak(p, x, c, f, J):
    t, ta, ca, shift, vt, it = _unpack(x[0])
    ktrans = p[0]
    vp = p[1]
    if p.shape[0] > 2:
        _walk(t, ta, ca, shift + p[2], 0.0, f, f, J[:, 1], J[:, 2], False, True)
        for j in range(t.shape[0]):
            I = f[j]
            V = J[j, 1]
            S = J[j, 2]
            f[j] = ktrans * I + vp * V
            J[j, 0] = I
            J[j, 1] = V
            J[j, 2] = -(ktrans * V + vp * S)
    else:
        for j in range(t.shape[0]):
            f[j] = ktrans * it[j] + vp * vt[j]
            J[j, 0] = it[j]
            J[j, 1] = vt[j]


@numba.njit(cache=True)
def _k_2cum(p, x, c, f, J):
    t, ta, ca, shift, vt, it = _unpack(x[0])
    fp = p[0]
    ps = p[1]
    vp = p[2]
    tot = fp + ps
    k = tot / vp
    a = fp * fp / tot
    cc = fp * ps / tot
    da_fp = fp * (fp + 2.0 * ps) / (tot * tot)
    da_ps = -fp * fp / (tot * tot)
    dc_fp = ps * ps / (tot * tot)
    dc_ps = fp * fp / (tot * tot)
    if p.shape[0] > 3:
        _walk(t, ta, ca, shift + p[3], k, f, J[:, 0], J[:, 1], J[:, 2], True, True)
        _walk(t, ta, ca, shift + p[3], 0.0, J[:, 3], J[:, 2], J[:, 2], J[:, 2], False, False)
        for j in range(t.shape[0]):
            F = f[j]
            dF = J[j, 0]
            V = J[j, 1]
            I = J[j, 3]
            f[j] = a * F + cc * I
            J[j, 0] = da_fp * F + a * dF / vp + dc_fp * I
            J[j, 1] = da_ps * F + a * dF / vp + dc_ps * I
            J[j, 2] = -a * dF * k / vp
            J[j, 3] = -(a * (V - k * F) + cc * V)
    else:
        _walk(t, ta, ca, shift, k, f, J[:, 0], f, f, True, False)
        for j in range(t.shape[0]):
            F = f[j]
            dF = J[j, 0]
            I = it[j]
            f[j] = a * F + cc * I
            J[j, 0] = da_fp * F + a * dF / vp + dc_fp * I
            J[j, 1] = da_ps * F + a * dF / vp + dc_ps * I
            J[j, 2] = -a * dF * k / vp


@numba.njit(cache=True)
def _k_2cxm(p, x, c, f, J):
    t, ta, ca, shift, vt, it = _unpack(x[0])
    fp = p[0]
    ps = p[1]
    ve = p[2]
    vp = p[3]
    # eigen-rates alpha >= beta >= 0 of the exchange system and amplitudes a + b = Fp:
    # h(t) = a exp(-alpha t) + b exp(-beta t), a/alpha + b/beta = ve + vp
    s = (fp + ps) / vp + ps / ve
    q = fp * ps / (vp * ve)
    r = math.sqrt(max(s * s - 4.0 * q, 0.0))
    al = 0.5 * (s + r)
    be = q / al  # = (s - r)/2 without cancellation
    vol = vp + ve
    a = al * (fp - vol * be) / r
    b = fp - a
    dal = np.empty(4)
    dbe = np.empty(4)
    da = np.empty(4)
    db = np.empty(4)
    for i in range(4):
        if i == 0:
            dsi, dqi, dfi, dvi = 1.0 / vp, ps / (vp * ve), 1.0, 0.0
        elif i == 1:
            dsi, dqi, dfi, dvi = 1.0 / vp + 1.0 / ve, fp / (vp * ve), 0.0, 0.0
        elif i == 2:
            dsi, dqi, dfi, dvi = -ps / (ve * ve), -q / ve, 0.0, 1.0
        else:
            dsi, dqi, dfi, dvi = -(fp + ps) / (vp * vp), -q / vp, 0.0, 1.0
        dr = (s * dsi - 2.0 * dqi) / r
        dal[i] = 0.5 * (dsi + dr)
        dbe[i] = (dqi - be * dal[i]) / al
        da[i] = (dal[i] * (fp - vol * be) + al * (dfi - dvi * be - vol * dbe[i]) - a * dr) / r
        db[i] = dfi - da[i]
    delay = p.shape[0] > 4
    sh = shift + p[4] if delay else shift
    # scratch: F_alpha -> f, dF_alpha -> J0, F_beta -> J1, dF_beta -> J2, cp(t-d) -> J3, slope -> J4
    if delay:
        _walk(t, ta, ca, sh, al, f, J[:, 0], J[:, 3], J[:, 4], True, True)
    else:
        _walk(t, ta, ca, sh, al, f, J[:, 0], f, f, True, False)
    _walk(t, ta, ca, sh, be, J[:, 1], J[:, 2], f, f, True, False)
    for j in range(t.shape[0]):
        Fa = f[j]
        dFa = J[j, 0]
        Fb = J[j, 1]
        dFb = J[j, 2]
        V = J[j, 3] if delay else 0.0
        f[j] = a * Fa + b * Fb
        for i in range(4):
            J[j, i] = da[i] * Fa + a * dFa * dal[i] + db[i] * Fb + b * dFb * dbe[i]
        if delay:
            J[j, 4] = -(fp * V - a * al * Fa - b * be * Fb)


@numba.njit(cache=True)
def _to_signal(f, J, c):
    """Concentration model and Jacobian -> spoiled gradient-echo signal, in place.
    c = (M0 sin a, R10 [1/s], TR [s], r1 [1/(mM s)], cos a)."""
    m0s = c[0]
    r10 = c[1]
    tr = c[2]
    r1 = c[3]
    cosa = c[4]
    for j in range(f.shape[0]):
        e = math.exp(-tr * (r10 + r1 * f[j]))
        den = 1.0 - cosa * e
        f[j] = m0s * (1.0 - e) / den
        g = m0s * (1.0 - cosa) * tr * r1 * e / (den * den)
        for q in range(J.shape[1]):
            J[j, q] *= g


@numba.njit(cache=True)
def _ks_tofts(p, x, c, f, J):
    _k_tofts(p, x, c, f, J)
    _to_signal(f, J, c)


@numba.njit(cache=True)
def _ks_etofts(p, x, c, f, J):
    _k_etofts(p, x, c, f, J)
    _to_signal(f, J, c)


@numba.njit(cache=True)
def _ks_patlak(p, x, c, f, J):
    _k_patlak(p, x, c, f, J)
    _to_signal(f, J, c)


@numba.njit(cache=True)
def _ks_2cxm(p, x, c, f, J):
    _k_2cxm(p, x, c, f, J)
    _to_signal(f, J, c)


@numba.njit(cache=True)
def _ks_2cum(p, x, c, f, J):
    _k_2cum(p, x, c, f, J)
    _to_signal(f, J, c)


# --------------------------------------------------------------------------
# Model table
# --------------------------------------------------------------------------

_MIN = 1.0 / 60.0  # 1/min in 1/s


@dataclass(frozen=True)
class _Spec:
    """A tracer-kinetic model: its kernel, parameter names and default bounds (SI)."""

    name: str
    kernel: object
    params: tuple
    lower: tuple
    upper: tuple
    description: str
    signal_kernel: object = None


DCE_METHODS = {
    "tofts": _Spec("tofts", _k_tofts, ("ktrans", "ve"), (0.0, 1e-3), (5 * _MIN, 1.0),
                   "standard Tofts model (Tofts et al. JMRI 1999;10:223)", _ks_tofts),
    "extended_tofts": _Spec("extended_tofts", _k_etofts, ("ktrans", "ve", "vp"),
                            (0.0, 1e-3, 0.0), (5 * _MIN, 1.0, 1.0),
                            "extended Tofts model (Tofts et al. JMRI 1999;10:223)", _ks_etofts),
    "patlak": _Spec("patlak", _k_patlak, ("ktrans", "vp"), (0.0, 0.0), (5 * _MIN, 1.0),
                    "Patlak model (Patlak et al. J Cereb Blood Flow Metab 1983;3:1)", _ks_patlak),
    "2cxm": _Spec("2cxm", _k_2cxm, ("fp", "ps", "ve", "vp"), (1e-3 * _MIN, 0.0, 1e-3, 1e-3),
                  (5 * _MIN, 5 * _MIN, 1.0, 1.0),
                  "two-compartment exchange model (Brix et al. MRM 2004;52:420; "
                  "Sourbron & Buckley NMR Biomed 2013;26:1004)", _ks_2cxm),
    "2cum": _Spec("2cum", _k_2cum, ("fp", "ps", "vp"), (1e-3 * _MIN, 0.0, 1e-3),
                  (5 * _MIN, 5 * _MIN, 1.0),
                  "two-compartment uptake model (Sourbron & Buckley NMR Biomed 2013;26:1004)",
                  _ks_2cum),
}


@numba.njit(parallel=True, cache=True)
def _predict_rows(which, P, x, out):
    n, m = out.shape
    k = P.shape[1]
    for i in numba.prange(n):
        ok = True
        for q in range(k):
            if not math.isfinite(P[i, q]):
                ok = False
        if not ok:
            for j in range(m):
                out[i, j] = np.nan
            continue
        J = np.empty((m, k))
        f = np.empty(m)
        c = np.empty(0)
        if which == 0:
            _k_tofts(P[i], x, c, f, J)
        elif which == 1:
            _k_etofts(P[i], x, c, f, J)
        elif which == 2:
            _k_patlak(P[i], x, c, f, J)
        elif which == 3:
            _k_2cxm(P[i], x, c, f, J)
        else:
            _k_2cum(P[i], x, c, f, J)
        for j in range(m):
            out[i, j] = f[j]


_WHICH = {"tofts": 0, "extended_tofts": 1, "patlak": 2, "2cxm": 3, "2cum": 4}


def _curves(method, times, aif, params, delay=None):
    """Model curves for broadcast parameter arrays -> shape params.shape + (n_times,)."""
    if not isinstance(aif, ArterialInputFunction):
        raise ValidationError("aif must be an ArterialInputFunction (oncomri.models.aif)")
    t = np.ascontiguousarray(times, np.float64).reshape(-1)
    if t.size < 2 or np.any(np.diff(t) <= 0):
        raise ProtocolError("times must increase strictly (seconds)")
    arrays = [np.asarray(v, np.float64) for v in params]
    if delay is not None:
        arrays.append(np.asarray(delay, np.float64))
    arrays = np.broadcast_arrays(*arrays)
    shape = arrays[0].shape
    P = np.ascontiguousarray(np.stack([a.reshape(-1) for a in arrays], axis=1))
    out = np.empty((P.shape[0], t.size))
    _predict_rows(_WHICH[method], P, _pack(t, aif), out)
    return out.reshape(shape + (t.size,))


def tofts(times, aif, ktrans, ve, *, delay=None) -> np.ndarray:
    """Tofts model ``C(t) = Ktrans int cp(u - d) exp(-Ktrans/ve (t - u)) du`` (mM).

    ``times`` in s, ``ktrans`` in 1/s, ``ve`` fraction, ``delay`` in s;
    parameters broadcast, the result has shape ``broadcast + (n_times,)``.
    """
    return _curves("tofts", times, aif, (ktrans, ve), delay)


def extended_tofts(times, aif, ktrans, ve, vp, *, delay=None) -> np.ndarray:
    """Extended Tofts model ``vp cp(t - d) + Ktrans exp(-kep t) * cp`` (mM); see :func:`tofts`."""
    return _curves("extended_tofts", times, aif, (ktrans, ve, vp), delay)


def patlak(times, aif, ktrans, vp, *, delay=None) -> np.ndarray:
    """Patlak model ``vp cp(t - d) + Ktrans int_0^t cp(u - d) du`` (mM); see :func:`tofts`."""
    return _curves("patlak", times, aif, (ktrans, vp), delay)


def two_compartment_exchange(times, aif, fp, ps, ve, vp, *, delay=None) -> np.ndarray:
    """2CXM tissue concentration (mM) for Fp, PS in 1/s (mL/mL/s), ve, vp fractions."""
    return _curves("2cxm", times, aif, (fp, ps, ve, vp), delay)


def two_compartment_uptake(times, aif, fp, ps, vp, *, delay=None) -> np.ndarray:
    """2CUM tissue concentration (mM) for Fp, PS in 1/s, vp fraction."""
    return _curves("2cum", times, aif, (fp, ps, vp), delay)


# --------------------------------------------------------------------------
# Starting values: linearised Tofts (Murase, MRM 2004;51:858), delay grid
# --------------------------------------------------------------------------

def _cumtrapz(rows, t):
    d = np.diff(t)
    q = np.zeros(rows.shape, np.float64)
    np.cumsum(0.5 * (rows[:, 1:] + rows[:, :-1]) * d, axis=1, out=q[:, 1:])
    return q


@numba.njit(parallel=True, cache=True)
def _linear_kernel(y, t, it, vt, kind, out, best_g):
    """Per voxel and candidate delay g, the closed-form least squares of
    kind 0 (extended Tofts): C = b0 int cp - b1 int C + b2 cp,
    kind 1 (Tofts):          C = b0 int cp - b1 int C,
    kind 2 (Patlak):         C = b0 int cp + b1 cp;
    keeps the delay with the smallest residual; out = (Ktrans, ve, vp)."""
    n, m = y.shape
    nd = it.shape[0]
    k = 2 if kind != 0 else 3
    for i in numba.prange(n):
        q = np.zeros(m)
        for j in range(1, m):
            q[j] = q[j - 1] + 0.5 * (y[i, j] + y[i, j - 1]) * (t[j] - t[j - 1])
        yy = 0.0
        for j in range(m):
            yy += y[i, j] * y[i, j]
        A = np.empty((3, 3))
        L = np.empty((3, 3))
        r = np.empty(3)
        z = np.empty(3)
        best = np.inf
        bsol = np.full(3, np.nan)
        gbest = 0
        for g in range(nd):
            A[:, :] = 0.0
            r[:] = 0.0
            for j in range(m):
                c0 = it[g, j]
                if kind == 2:
                    c1 = vt[g, j]
                else:
                    c1 = -q[j]
                c2 = vt[g, j]
                yj = y[i, j]
                A[0, 0] += c0 * c0
                A[0, 1] += c0 * c1
                A[1, 1] += c1 * c1
                r[0] += c0 * yj
                r[1] += c1 * yj
                if k == 3:
                    A[0, 2] += c0 * c2
                    A[1, 2] += c1 * c2
                    A[2, 2] += c2 * c2
                    r[2] += c2 * yj
            for p_ in range(k):
                for q_ in range(p_):
                    A[p_, q_] = A[q_, p_]
            # scaled Cholesky with a tiny ridge
            ok = True
            for p_ in range(k):
                for q_ in range(p_ + 1):
                    sc = math.sqrt(A[p_, p_] * A[q_, q_]) + 1e-300
                    v = A[p_, q_] / sc
                    if p_ == q_:
                        v += 1e-10
                    for u in range(q_):
                        v -= L[p_, u] * L[q_, u]
                    if p_ == q_:
                        if v <= 0.0:
                            ok = False
                            break
                        L[p_, p_] = math.sqrt(v)
                    else:
                        L[p_, q_] = v / L[q_, q_]
                if not ok:
                    break
            if not ok:
                continue
            for p_ in range(k):
                v = r[p_] / (math.sqrt(A[p_, p_]) + 1e-300)
                for u in range(p_):
                    v -= L[p_, u] * z[u]
                z[p_] = v / L[p_, p_]
            for p_ in range(k - 1, -1, -1):
                v = z[p_]
                for u in range(p_ + 1, k):
                    v -= L[u, p_] * z[u]
                z[p_] = v / L[p_, p_]
            sse = yy
            for p_ in range(k):
                z[p_] = z[p_] / (math.sqrt(A[p_, p_]) + 1e-300)
                sse -= z[p_] * r[p_]
            if sse < best:
                best = sse
                gbest = g
                for p_ in range(k):
                    bsol[p_] = z[p_]
        best_g[i] = gbest
        if kind == 2:
            out[i, 0] = bsol[0]
            out[i, 1] = np.nan
            out[i, 2] = bsol[1]
        else:
            kep = bsol[1]
            vp = bsol[2] if kind == 0 else 0.0
            ktrans = bsol[0] - kep * vp
            out[i, 0] = ktrans
            out[i, 1] = ktrans / kep if kep != 0.0 else np.nan
            out[i, 2] = vp


def _linear_fit(rows, t, aif, delays, kind):
    """Linearised fit (Murase, MRM 2004;51:858) per voxel over candidate delays.

    Returns (params (n, 3) as (Ktrans, ve, vp), best delay (n,)); NaN where
    the linear system is singular.
    """
    delays = np.asarray(delays, np.float64).reshape(-1)
    nd = delays.size
    vt = np.empty((nd, t.size))
    it = np.empty((nd, t.size))
    scratch = np.empty(t.size)
    for g, d in enumerate(delays):
        _walk(t, aif.times, aif.concentration, float(d), 0.0, it[g], scratch, vt[g], scratch, False, True)
    y = np.ascontiguousarray(rows, dtype=np.float64)
    out = np.empty((y.shape[0], 3))
    best = np.empty(y.shape[0], np.int64)
    _linear_kernel(y, np.ascontiguousarray(t, np.float64), it, vt,
                   {"etofts": 0, "tofts": 1, "patlak": 2}[kind], out, best)
    return out, delays[best]


def _clean_start(values, default, lo, hi):
    v = np.where(np.isfinite(values), values, default)
    span = hi - lo
    inner_lo = lo + 1e-3 * span if np.isfinite(span) else lo
    inner_hi = hi - 1e-3 * span if np.isfinite(span) else hi
    return np.clip(v, inner_lo, inner_hi)


# --------------------------------------------------------------------------
# Model and fit
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class _Context:
    times: np.ndarray
    aif: ArterialInputFunction
    spec: _Spec
    lower: np.ndarray
    upper: np.ndarray
    fit_delay: bool
    delays: np.ndarray  # candidate delays for the start (just [delay] when fixed)
    delay: float  # the fixed delay when not fitted
    max_iter: int
    signal: tuple | None = None  # (flip angle rad, TR s, r1, baseline frames) for signal fits


def _signal_consts(rows, t1, ctx):
    """Per-voxel constants of the signal model and the concentration for the start."""
    fa, tr, r1, nb = ctx.signal
    with np.errstate(all="ignore"):
        r10 = 1.0 / t1
        e0 = np.exp(-tr * r10)
        m0s = rows[:, :nb].mean(axis=1) * (1.0 - math.cos(fa) * e0) / (1.0 - e0)
        y = rows / m0s[:, None]
        e = (1.0 - y) / (1.0 - y * math.cos(fa))
        conc = (-np.log(np.where((e > 0) & (e < 1), e, 1.0)) / tr - r10[:, None]) / r1
    conc = np.where(np.isfinite(conc), conc, 0.0)
    ok = np.isfinite(m0s) & (m0s > 0) & np.isfinite(r10) & (r10 > 0)
    n = rows.shape[0]
    consts = np.column_stack([m0s, r10, np.full(n, tr), np.full(n, r1), np.full(n, math.cos(fa))])
    return conc, consts, ok


def _run_spec(rows, ctx: _Context, aux=None) -> dict:
    """Fit one chunk of curves (n, n_times): concentration, or signal if ctx.signal."""
    spec = ctx.spec
    t = ctx.times
    n = rows.shape[0]
    consts = None
    ok = np.ones(n, bool)
    kernel = spec.kernel
    conc = rows
    if ctx.signal is not None:
        conc, consts, ok = _signal_consts(rows, aux["t1"], ctx)
        consts[~ok] = (1.0, 1.0, 1e-3, 1.0, 0.5)
        kernel = spec.signal_kernel
    lin_kind = {"tofts": "tofts", "patlak": "patlak"}.get(spec.name, "etofts")
    grid = ctx.delays if ctx.fit_delay else np.array([ctx.delay])
    lin, d0 = _linear_fit(conc, t, ctx.aif, grid, lin_kind)
    k_lin = _clean_start(lin[:, 0], 0.1 * _MIN, 0.0, 5 * _MIN)
    ve_lin = _clean_start(lin[:, 1], 0.2, 1e-3, 1.0)
    vp_lin = _clean_start(lin[:, 2], 0.02, 0.0, 1.0)
    names = spec.params
    if spec.name in ("tofts", "extended_tofts", "patlak"):
        table = {"ktrans": k_lin, "ve": ve_lin, "vp": vp_lin}
        starts = [np.column_stack([table[p] for p in names])]
    else:
        starts = []
        for fp0 in (0.1 * _MIN, 0.3 * _MIN, 1.0 * _MIN):
            table = {"fp": np.full(n, fp0), "ps": np.minimum(k_lin, 0.5 * fp0),
                     "ve": np.maximum(ve_lin, 0.05), "vp": np.maximum(vp_lin, 0.01)}
            starts.append(np.column_stack([table[p] for p in names]))
    lower, upper = ctx.lower, ctx.upper
    if ctx.fit_delay:
        x = _pack(t, ctx.aif, 0.0)
        starts = [np.column_stack([s, d0]) for s in starts]
    else:
        x = _pack(t, ctx.aif, ctx.delay)
    best = None
    for p0 in starts:
        p0 = np.clip(p0, lower, upper)
        p, cost, status, _ = levenberg_marquardt(kernel, rows, p0, x=x, consts=consts, lower=lower,
                                                 upper=upper, max_iter=ctx.max_iter)
        if best is None:
            best = [p, cost, status]
        else:
            better = cost < best[1]
            best[0][better] = p[better]
            best[1][better] = cost[better]
            best[2][better] = status[better]
    p, cost, status = best
    out = {name: p[:, i] for i, name in enumerate(names)}
    out["delay"] = p[:, -1] if ctx.fit_delay else np.full(n, ctx.delay)
    out["rss"] = cost
    status = status.copy()
    status[~ok] = Status.FAILED
    out["status"] = status
    if consts is not None:
        out["m0s"] = consts[:, 0]
        out["r10"] = consts[:, 1]
    return out


def _chunked_fit(data, mask, func, names, chunk_size, dtype, progress=None, aux=None):
    """Voxel chunks of ``data`` (..., n) -> maps. Unlike fit_voxelwise, negative
    values are valid (concentration curves are noisy around zero); rows with
    NaN or Inf are INVALID_DATA."""
    spatial = data.shape[:-1]
    m = data.shape[-1]
    flat = data.reshape(-1, m)
    maps = {k: np.full(flat.shape[0], np.nan, dtype) for k in names}
    status = np.full(flat.shape[0], Status.MASKED, np.uint8)
    index = np.arange(flat.shape[0]) if mask is None else np.flatnonzero(mask.reshape(-1))
    aux_flat = {k: np.broadcast_to(np.asarray(v, np.float64), spatial).reshape(-1)
                for k, v in (aux or {}).items()}
    for start in range(0, index.size, max(1, int(chunk_size))):
        where = index[start:start + chunk_size]
        rows = np.asarray(flat[where], dtype=np.float64)
        good = np.all(np.isfinite(rows), axis=1)
        status[where[~good]] = Status.INVALID_DATA
        if np.any(good):
            res = func(rows[good], {k: v[where[good]] for k, v in aux_flat.items()})
            target = where[good]
            st = res["status"]
            status[target] = st
            failed = st == Status.FAILED
            for k in names:
                maps[k][target] = np.where(failed, np.nan, res[k])
        if progress is not None:
            progress(min(start + chunk_size, index.size), index.size)
    out = {k: v.reshape(spatial) for k, v in maps.items()}
    out["status"] = status.reshape(spatial)
    return out


def _as_times(protocol):
    if isinstance(protocol, (DCEProtocol, DynamicProtocol)):
        return protocol.times
    return DynamicProtocol(protocol, source="DCE frame times").times


class DCEModel(Model):
    """Tracer-kinetic model of DCE-MRI concentration curves.

    Parameters
    ----------
    protocol : DCEProtocol, DynamicProtocol or array_like
        The frame times in s (a DCEProtocol also carries flip angle, TR and
        baseline frames for :func:`signal_to_concentration`).
    aif : ArterialInputFunction
        Plasma input (:mod:`oncomri.models.aif`).
    method : str
        ``'tofts'``, ``'extended_tofts'`` (default), ``'patlak'``, ``'2cxm'``
        or ``'2cum'`` (:data:`DCE_METHODS`).
    fit_delay : bool
        Fit the bolus-arrival delay per voxel (grid start + LM parameter).
    delay : float
        Fixed delay of the AIF in s when ``fit_delay`` is off.
    delay_bounds : (float, float)
        Bounds of the fitted delay in s (default -10 to 10, as OSIPI).
    delay_step : float, optional
        Spacing of the delay grid for the start, s (default: half the median
        frame interval, at least 0.25 s).
    bounds : dict, optional
        ``{parameter: (low, high)}`` in SI to replace the defaults
        (Ktrans and PS 0-5/min, Fp up to 5 mL/mL/min, ve 0.001-1, vp 0-1).
    max_iter : int
        LM iteration limit.
    chunk_size : int
        Voxels per chunk.

    Examples
    --------
    >>> aif = population_aif("parker", times, onset=30.0)          # doctest: +SKIP
    >>> fit = DCEModel(times, aif, method="extended_tofts").fit(conc)  # doctest: +SKIP
    >>> fit.ktrans * 60  # 1/min                                    # doctest: +SKIP
    """

    methods = DCE_METHODS
    default_method = "extended_tofts"

    def __init__(self, protocol, aif: ArterialInputFunction, *, method=None, fit_delay: bool = False,
                 delay: float = 0.0, delay_bounds=(-10.0, 10.0), delay_step: float | None = None,
                 bounds: dict | None = None, max_iter: int = 100,
                 chunk_size: int = DEFAULT_CHUNK_SIZE):
        super().__init__(protocol, method=method)
        if not isinstance(self._method, _Spec):
            raise ValidationError("DCEModel methods are chosen by name: "
                                  f"{', '.join(DCE_METHODS)}")
        self.times = _as_times(protocol)
        if not isinstance(aif, ArterialInputFunction):
            raise ValidationError("aif must be an ArterialInputFunction (see oncomri.models.aif: "
                                  "population_aif, measured_aif)")
        self.aif = aif
        spec = self._method
        lower, upper = list(spec.lower), list(spec.upper)
        for name, (lo, hi) in (bounds or {}).items():
            if name not in spec.params:
                raise ValidationError(f"bounds: {name!r} is not a parameter of {spec.name} "
                                      f"({', '.join(spec.params)})")
            if not lo < hi:
                raise ValidationError(f"bounds[{name!r}] = {(lo, hi)} must have low < high")
            i = spec.params.index(name)
            lower[i], upper[i] = float(lo), float(hi)
        self.fit_delay = bool(fit_delay)
        self.delay = float(delay)
        lo_d, hi_d = (float(v) for v in delay_bounds)
        if not lo_d < hi_d:
            raise ValidationError(f"delay_bounds {delay_bounds} must have low < high (s)")
        self.delay_bounds = (lo_d, hi_d)
        if self.fit_delay:
            lower.append(lo_d)
            upper.append(hi_d)
        self.lower = np.array(lower)
        self.upper = np.array(upper)
        if delay_step is None:
            delay_step = max(0.5 * float(np.median(np.diff(self.times))), 0.25)
        n_grid = int(np.floor((hi_d - lo_d) / float(delay_step))) + 1
        self.delay_grid = lo_d + float(delay_step) * np.arange(min(n_grid, 401))
        self.max_iter = int(max_iter)
        self.chunk_size = int(chunk_size)

    @property
    def parameter_names(self) -> tuple:
        return self._method.params

    @classmethod
    def fit_volume(cls, volume, *, mask=None, method=None, names=None, progress=None,
                   **options):
        """Fit a loaded DCE series from plain options: see :func:`fit_dce_volume`."""
        return fit_dce_volume(volume, mask=mask, method=method, names=names, progress=progress,
                              **options)

    def fit(self, data, *, mask=None, t1_baseline=None, relaxivity=None,
            progress=None) -> "DCEFit":
        """Fit every voxel's concentration curve, or its signal curve.

        Parameters
        ----------
        data : ndarray (..., n_frames)
            Tissue concentration in mM (e.g. from :func:`signal_to_concentration`),
            frames on the last axis; or, with ``t1_baseline``, the spoiled
            gradient-echo signal. Not modified; negative noise is fine.
        mask : bool ndarray of data.shape[:-1], optional
        t1_baseline : float or ndarray of data.shape[:-1], optional
            Pre-contrast T1 in s. Given, ``data`` is the signal and the model
            is fitted in the signal domain: the concentration model goes
            through the SPGR equation (M0 fixed from the baseline frames of
            the DCEProtocol, fast water exchange) with the chain-rule
            Jacobian. With Gaussian noise on the signal this is the
            maximum-likelihood fit; fitting converted concentrations weights
            late, high-concentration frames too much (their noise is
            amplified by the inversion).
        relaxivity : float, optional
            r1 in 1/(mM s), needed with ``t1_baseline``.
        progress : callable, optional
            ``progress(n_done, n_total)`` after each chunk.
        """
        data = np.asanyarray(data)
        if data.ndim < 1 or data.shape[-1] != self.times.size:
            raise ValidationError(f"data has shape {data.shape} but the protocol has "
                                  f"{self.times.size} frames; put the frames on the last axis")
        if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
            raise ValidationError(f"data must be real concentrations (mM), got dtype {data.dtype}")
        mask = as_mask(mask, data.shape[:-1])
        signal = None
        aux = None
        names = self._method.params + ("delay", "rss")
        if t1_baseline is not None:
            if not isinstance(self.protocol, DCEProtocol):
                raise ValidationError("a signal-domain fit (t1_baseline given) needs a DCEProtocol "
                                      "with flip angle, TR and baseline frames")
            r1 = float(relaxivity) if relaxivity is not None else float("nan")
            if not (np.isfinite(r1) and r1 > 0):
                raise ValidationError("a signal-domain fit needs the relaxivity r1 in 1/(mM s)")
            t1 = np.asarray(t1_baseline, np.float64)
            if t1.ndim and t1.shape != data.shape[:-1]:
                raise ValidationError(f"the T1 baseline map has shape {t1.shape} but the data's "
                                      f"spatial shape is {data.shape[:-1]}; resample it first")
            if np.nanmax(t1) > 20.0:
                raise ProtocolError(f"baseline T1 up to {np.nanmax(t1):g} s looks like "
                                    "milliseconds; give seconds")
            pr = self.protocol
            signal = (pr.flip_angle, pr.repetition_time, r1, pr.baseline_frames)
            aux = {"t1": t1}
            names = names + ("m0s", "r10")
        ctx = _Context(self.times, self.aif, self._method, self.lower, self.upper, self.fit_delay,
                       self.delay_grid, self.delay, self.max_iter, signal)
        maps = _chunked_fit(data, mask, lambda rows, a: _run_spec(rows, ctx, a), names,
                            self.chunk_size, result_dtype(data), progress, aux)
        return DCEFit(self, maps, data.shape, signal)


class DCEFit(Fit):
    """Result of :class:`DCEModel`: parameter maps in SI units, status, predict().

    Attributes (NaN where not fitted; ``None`` if the model lacks them):
    ``ktrans`` (1/s; for 2CXM/2CUM the derived ``Fp PS / (Fp + PS)``),
    ``ve``, ``vp`` (fractions), ``fp``, ``ps`` (1/s = mL/mL/s), ``kep`` (1/s),
    ``delay`` (s), ``rss`` (mM^2), ``status`` (uint8).
    """

    def __init__(self, model: DCEModel, maps: dict, shape, signal=None):
        self.model = model
        self.signal = signal
        self.status = maps["status"]
        self.maps = maps
        self.shape = tuple(shape)
        with np.errstate(all="ignore"):
            if "ktrans" in maps:
                self.ktrans = maps["ktrans"]
            else:
                fp, ps = maps["fp"], maps["ps"]
                self.ktrans = (fp * ps / (fp + ps)).astype(fp.dtype)
            self.ve = maps.get("ve")
            self.vp = maps.get("vp")
            self.fp = maps.get("fp")
            self.ps = maps.get("ps")
            self.kep = (self.ktrans / self.ve).astype(self.ktrans.dtype) if self.ve is not None else None
        self.delay = maps["delay"]
        self.rss = maps["rss"]

    def predict(self) -> np.ndarray:
        """Model concentration curves (mM), shape of the fitted data."""
        spec = self.model._method
        params = [self.maps[p] for p in spec.params]
        out = _curves(spec.name, self.model.times, self.model.aif, params, self.delay)
        if self.signal is not None:  # back to the signal the model was fitted to
            fa, tr, r1, _ = self.signal
            r10 = self.maps["r10"].astype(np.float64)[..., None]
            e = np.exp(-tr * (r10 + r1 * out))
            out = self.maps["m0s"].astype(np.float64)[..., None] * (1 - e) / (1 - math.cos(fa) * e)
        return out.astype(self.maps["rss"].dtype, copy=False)

    def output_maps(self) -> dict:
        """BIDS suffix -> (map, sidecar) with units."""
        m = self.model
        per_min = "multiply by 60 for 1/min"
        common = {"Model": m.method, "ModelDescription": m._method.description,
                  "DelayFitted": m.fit_delay, **m.aif.sidecar()}
        out = {"Ktransmap": (self.ktrans, {**common, "Units": "1/s",
                                           "Description": f"volume transfer constant Ktrans ({per_min})"})}
        if self.ve is not None:
            out["vemap"] = (self.ve, {**common, "Units": "1", "Description": "extravascular extracellular volume fraction ve"})
            out["kepmap"] = (self.kep, {**common, "Units": "1/s", "Description": f"rate constant kep = Ktrans/ve ({per_min})"})
        if self.vp is not None:
            out["vpmap"] = (self.vp, {**common, "Units": "1", "Description": "plasma volume fraction vp"})
        if self.fp is not None:
            out["Fpmap"] = (self.fp, {**common, "Units": "1/s", "Description":
                                      "plasma flow Fp in mL/mL/s (multiply by 6000 for mL/100 mL/min)"})
        if self.ps is not None:
            out["PSmap"] = (self.ps, {**common, "Units": "1/s", "Description":
                                      "permeability-surface area product PS in mL/mL/s (multiply by 6000 for mL/100 mL/min)"})
        if m.fit_delay:
            out["delaymap"] = (self.delay, {**common, "Units": "s", "Description": "fitted bolus-arrival delay of the AIF"})
        with np.errstate(all="ignore"):
            rmse = np.sqrt(self.rss / len(m.times)).astype(self.rss.dtype)
        out["desc-dcefit_rmse"] = (rmse, {**common, "Units": "mM", "Description": "root-mean-square residual of the fit"})
        out["desc-dcefit_status"] = (self.status, {**common, "Units": "1", "Description": "per-voxel fit status code",
                                                   "Levels": {str(k): v for k, v in STATUS_DESCRIPTIONS.items()}})
        return out



# --------------------------------------------------------------------------
# Model-free measures
# --------------------------------------------------------------------------

def _integral_to(rows, t, q, x):
    """Exact integral of the piecewise-linear curves from t[0] to x (scalar, t[0] <= x <= t[-1])."""
    i = int(np.clip(np.searchsorted(t, x, side="right") - 1, 0, t.size - 2))
    dx = x - t[i]
    slope = (rows[:, i + 1] - rows[:, i]) / (t[i + 1] - t[i])
    return q[:, i] + rows[:, i] * dx + 0.5 * slope * dx * dx


def model_free_measures(concentration, times, *, onset: float, iauc_times=(60.0, 90.0),
                        mask=None, chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict:
    """Initial area under the curve, peak, time to peak and wash-in slope.

    Parameters
    ----------
    concentration : ndarray (..., n_frames)
        Concentration curves in mM (or relative enhancement, unitless).
    times : array_like
        Frame times in s.
    onset : float
        Contrast arrival in s (e.g. the time of the last baseline frame).
    iauc_times : sequence of float
        Integration windows T in s: ``IAUC_T = int_onset^(onset+T) C dt``
        (mM s), exact for the piecewise-linear curve; NaN where the series
        ends before ``onset + T``.

    Returns
    -------
    dict of ndarray of concentration.shape[:-1]: ``IAUC<T>`` (mM s),
    ``peak`` (mM, the maximum after the onset), ``ttp`` (s from the onset),
    ``washin`` (mM/s, ``(C_peak - C(onset)) / ttp``).
    """
    c = np.asanyarray(concentration)
    t = np.asarray(times, np.float64).reshape(-1)
    if c.shape[-1] != t.size:
        raise ValidationError(f"concentration has {c.shape[-1]} frames but {t.size} times")
    if np.any(np.diff(t) <= 0):
        raise ProtocolError("frame times must increase strictly (s)")
    onset = float(onset)
    if not t[0] <= onset < t[-1]:
        raise ValidationError(f"onset {onset:g} s lies outside the series ({t[0]:g} to {t[-1]:g} s)")
    spatial = c.shape[:-1]
    mask = as_mask(mask, spatial)
    dtype = result_dtype(c)
    names = [f"IAUC{float(T):g}" for T in iauc_times] + ["peak", "ttp", "washin"]
    out = {k: np.full(int(np.prod(spatial)), np.nan, dtype) for k in names}
    flat = c.reshape(-1, t.size)
    index = np.arange(flat.shape[0]) if mask is None else np.flatnonzero(mask.reshape(-1))
    after = t >= onset
    for start in range(0, index.size, chunk_size):
        where = index[start:start + chunk_size]
        rows = np.asarray(flat[where], np.float64)
        q = _cumtrapz(rows, t)
        at_onset = _integral_to(rows, t, q, onset)
        i0 = int(np.clip(np.searchsorted(t, onset, side="right") - 1, 0, t.size - 2))
        c_onset = rows[:, i0] + (onset - t[i0]) * (rows[:, i0 + 1] - rows[:, i0]) / (t[i0 + 1] - t[i0])
        for T, name in zip(iauc_times, names):
            end = onset + float(T)
            if end <= t[-1]:
                out[name][where] = _integral_to(rows, t, q, end) - at_onset
        seg = rows[:, after]
        ipk = np.argmax(seg, axis=1)
        peak = seg[np.arange(seg.shape[0]), ipk]
        ttp = t[after][ipk] - onset
        out["peak"][where] = peak
        out["ttp"][where] = ttp
        with np.errstate(all="ignore"):
            out["washin"][where] = np.where(ttp > 0, (peak - c_onset) / ttp, np.nan)
        bad = ~np.all(np.isfinite(rows), axis=1)
        for k in names:
            out[k][where[bad]] = np.nan
    return {k: v.reshape(spatial) for k, v in out.items()}


_MODEL_FREE_UNITS = {"peak": ("mM", "peak concentration after the onset"),
                     "ttp": ("s", "time to peak from the onset"),
                     "washin": ("mM/s", "wash-in slope (C_peak - C_onset) / time to peak")}


def model_free_output_maps(measures: dict, *, onset: float, units: str = "mM") -> dict:
    """BIDS suffix -> (map, sidecar) for :func:`model_free_measures` results.

    ``units`` is the unit of the curves (``'mM'`` for concentration, ``'1'``
    for relative enhancement).
    """
    out = {}
    for name, arr in measures.items():
        if name.startswith("IAUC"):
            desc = (f"initial area under the curve over {name[4:]} s after the onset at {onset:g} s "
                    "(exact integral of the piecewise-linear curve)")
            out[f"{name}map"] = (arr, {"Units": f"{units}*s", "Description": desc})
        else:
            unit, desc = _MODEL_FREE_UNITS[name]
            unit = unit.replace("mM", units)
            out[f"{name.upper() if name == 'ttp' else name}map"] = (arr, {"Units": unit, "Description": desc,
                                                                          "Onset_s": onset})
    return out


# ---------------------------------------------------------------------------- from a Volume

#: Options of :func:`fit_dce_volume` and their defaults (the ``oncomri map dce`` flags).
DCE_VOLUME_OPTIONS = {
    "times": None, "temporal_resolution": None, "flip_angle": None, "tr": None, "field": None,
    "baseline_frames": 5, "input_kind": "signal", "t1": None, "agent": None, "relaxivity": None,
    "aif": "parker", "aif_mask": None, "aif_auto": False, "aif_voxels": 10, "t1_blood": None,
    "hematocrit": 0.42, "aif_onset": None, "aif_oversample": 4, "fit_delay": False,
    "fit_domain": None, "iauc": "60,90", "method": None,
}
_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "min": 60.0}


def _dce_frame_times(volume, opts) -> np.ndarray:
    from .volume_fit import quantity
    from .dsc import dynamic_protocol

    n = volume.data.shape[-1]
    label = volume.sources[0] if volume.sources else "input"
    if opts.given("times"):
        t = np.asarray(quantity(opts["times"], name=opts.name("times"), units=_TIME_UNITS))
        src = opts.name("times")
    elif opts.given("temporal_resolution"):
        dt = quantity(opts["temporal_resolution"], name=opts.name("temporal_resolution"),
                      units=_TIME_UNITS)[0]
        if not dt > 0:
            raise ProtocolError(f"{opts.name('temporal_resolution')} must be positive")
        t = np.arange(n) * dt
        src = opts.name("temporal_resolution")
    elif getattr(volume.protocol, "times", None) is not None:
        t = np.asarray(volume.protocol.times, float)
        src = f"{label}: the series' acquisition times"
    elif isinstance(volume.meta.get("FrameTimesStart"), list):
        t = np.asarray(volume.meta["FrameTimesStart"], float)
        src = f"{label}: sidecar FrameTimesStart"
    else:
        raise ProtocolError(f"{label}: no frame times (no FrameTimesStart in the sidecar); "
                            f"give {opts.name('times')} or {opts.name('temporal_resolution')}")
    if t.size != n:
        raise ProtocolError(f"{src} lists {t.size} frame times but the series has {n} frames")
    # one line naming the source and the first frame out of order
    return np.asarray(dynamic_protocol(t, source=src).times, float)


def _dce_protocol(volume, opts, times) -> DCEProtocol:
    from .volume_fit import quantity

    meta = volume.meta
    label = volume.sources[0] if volume.sources else "input"
    given = opts.given("flip_angle")
    fa = opts["flip_angle"] if given else meta.get("FlipAngle")
    fa_src = opts.name("flip_angle") if given else f"{label}: FlipAngle"
    if fa is None:
        raise ProtocolError(f"{label}: no FlipAngle in the sidecar/headers; give "
                            f"{opts.name('flip_angle')} in degrees")
    try:
        if isinstance(fa, bool):
            raise TypeError
        fa = float(fa)
    except (TypeError, ValueError):
        raise ProtocolError(f"{fa_src} {fa!r}: give one flip angle in degrees (e.g. 15)") from None
    if fa < 1.0:
        raise ProtocolError(f"{fa_src} {fa:g} looks like radians; give it in degrees (e.g. 15)")
    if opts.given("tr"):
        tr = quantity(opts["tr"], name=opts.name("tr"), units=_TIME_UNITS)[0]
    else:
        tr = meta.get("RepetitionTime")
    if tr is None:
        raise ProtocolError(f"no repetition time in the sidecar/headers; give {opts.name('tr')} "
                            "(e.g. '5ms')")
    field = opts.number("field", positive=True) if opts.given("field") else \
        meta.get("MagneticFieldStrength")
    nb = opts.number("baseline_frames", integer=True, minimum=1)
    return DCEProtocol(times, np.deg2rad(fa), float(tr), nb,
                       None if field is None else float(field), source="oncomri map dce")


def fit_dce_volume(volume, *, mask=None, method=None, names=None, progress=None, **options):
    """Convert, fit and measure a loaded DCE series (``oncomri map dce``, study ``maps``).

    The frame times come from ``times`` / ``temporal_resolution``, else the
    volume's protocol or its sidecar ``FrameTimesStart``; the flip angle
    (degrees), TR and field from the options, else the sidecar. The signal
    is converted to concentration (:func:`signal_to_concentration`, baseline
    from the first ``baseline_frames``), fitted with the tracer-kinetic
    ``method`` (:data:`DCE_METHODS`, default ``'extended_tofts'``; ``'none'``
    for model-free maps only), by default in the signal domain, and the
    model-free measures (:func:`model_free_measures`) are added.

    Parameters
    ----------
    volume : Volume
        4D series, frames on the last axis.
    mask : bool ndarray of the spatial shape, optional
    method : str, optional
        Kinetic model (``tofts``, ``extended_tofts``, ``patlak``, ``2cxm``,
        ``2cum`` or ``none``).
    names : None, str or callable
        How messages name the options (:class:`oncomri.models.volume_fit.Options`).
    **options
        ``times`` (list of s, or text with unit ``'0,5,10s'``),
        ``temporal_resolution`` (s or ``'4.2s'``), ``flip_angle`` (degrees),
        ``tr`` (s or ``'5ms'``), ``field`` (T), ``baseline_frames`` (int,
        default 5), ``input_kind`` (``'signal'`` or ``'concentration'`` in mM),
        ``t1`` (pre-contrast T1: s, ``'1.4s'`` or a map in s on the grid),
        ``agent`` (name for :func:`relaxivity`) or ``relaxivity`` (1/(mM s)),
        ``aif`` (``'parker'`` default, ``'preclinical'`` or ``'measured'``),
        ``aif_mask`` (bool array: arterial voxels or, with ``aif_auto``, the
        search region), ``aif_auto`` (bool), ``aif_voxels`` (int, default 10),
        ``t1_blood`` (s or ``'1.6s'``, measured AIF), ``hematocrit`` (0.42),
        ``aif_onset`` (s; default the first frame after the baseline),
        ``aif_oversample`` (4), ``fit_delay`` (bool), ``fit_domain``
        (``'signal'`` or ``'concentration'``), ``iauc`` (windows in s: a
        list or ``'60,90'``; empty for none).

    Returns
    -------
    VolumeFit
    """
    from .. import __version__
    from .aif import measured_aif, population_aif
    from .volume_fit import Options, VolumeFit, quantity

    opts = Options({**options, "method": method}, DCE_VOLUME_OPTIONS, model="dce", names=names,
                   cli={"method": "--model"})
    kinetic = opts["method"] or "extended_tofts"
    if kinetic != "none" and kinetic not in DCE_METHODS:
        raise ValidationError(f"{opts.name('method')} {kinetic!r}: choose one of "
                              f"{', '.join(DCE_METHODS)} or none")
    data = volume.data
    if data.ndim != 4 or data.shape[-1] < 3:
        where = volume.sources[0] if volume.sources else "input"
        raise ValidationError(f"{where}: a DCE series needs a 4th (dynamic) axis with at least "
                              f"3 frames; got shape {data.shape}")
    times = _dce_frame_times(volume, opts)
    if mask is not None:
        mask = np.asarray(mask, bool)
    input_kind = opts.choice("input_kind", ("signal", "concentration"))
    is_signal = input_kind == "signal"
    protocol = None
    t1 = t1_label = r1 = None
    nb = opts.number("baseline_frames", integer=True, minimum=1)
    if is_signal:
        protocol = _dce_protocol(volume, opts, times)
        value = opts["t1"]
        if value is None:
            extra = " or --t1-map FILE" if names is None else ""
            raise ProtocolError(f"give the pre-contrast T1: {opts.name('t1')} VALUE "
                                f"(e.g. '1.4s'){extra}")
        if isinstance(value, np.ndarray) and value.ndim > 0:
            t1 = opts.array("t1", volume.spatial_shape, what="T1 map")
            t1_label = "map"
        else:
            t1 = quantity(value, name=opts.name("t1"), units=_TIME_UNITS)[0]
            t1_label = value if isinstance(value, str) else f"{t1:g} s"
        if opts.given("relaxivity"):
            r1 = opts.number("relaxivity")
            if not r1 > 0:
                raise ValidationError(f"{opts.name('relaxivity')} must be positive, in 1/(mM s)")
        elif opts.given("agent"):
            r1 = relaxivity(str(opts["agent"]), protocol.magnetic_field_strength)
        else:
            raise ProtocolError(f"give {opts.name('agent')} NAME (with the field) or "
                                f"{opts.name('relaxivity')} R1 in 1/(mM s)")
        conc = signal_to_concentration(data, protocol, t1_baseline=t1, relaxivity=r1)
    else:
        if nb >= times.size:
            raise ProtocolError(f"{opts.name('baseline_frames')} {nb} leaves no dynamic frames")
        conc = np.asarray(data)

    # arterial input
    aif_kind = opts.choice("aif", ("parker", "preclinical", "measured"))
    hematocrit = opts.number("hematocrit", positive=True)
    aif_auto = opts.flag("aif_auto")
    if aif_kind == "measured":
        if not opts.given("aif_mask"):
            file = " FILE" if names is None else ""
            raise ValidationError(f"{opts.name('aif')} measured needs {opts.name('aif_mask')}{file} "
                                  f"(arterial voxels or a search region with {opts.name('aif_auto')})")
        aif_mask = opts.mask("aif_mask", volume.spatial_shape)
        if not aif_mask.any():
            raise ValidationError(f"{opts.name('aif_mask')} holds no voxel")
        if is_signal:
            if not opts.given("t1_blood"):
                raise ProtocolError(f"{opts.name('aif')} measured needs the blood T1: "
                                    f"{opts.name('t1_blood')} VALUE (e.g. '1.6s')")
            t1b = quantity(opts["t1_blood"], name=opts.name("t1_blood"), units=_TIME_UNITS)[0]
            sub = data[aif_mask]
            blood = signal_to_concentration(sub, protocol, t1_baseline=t1b, relaxivity=r1)
        else:
            blood = np.asarray(conc)[aif_mask]
        aif = measured_aif(blood[:, None, None, :], times, np.ones(blood.shape[:1] + (1, 1), bool),
                           hematocrit=hematocrit, auto_select=aif_auto,
                           n_voxels=opts.number("aif_voxels", integer=True, minimum=1))
    else:
        if opts.given("aif_mask") or aif_auto:
            raise ValidationError(f"{opts.name('aif_mask')}/{opts.name('aif_auto')} apply to "
                                  f"{opts.name('aif')} measured only")
        onset = (quantity(opts["aif_onset"], name=opts.name("aif_onset"), units=_TIME_UNITS)[0]
                 if opts.given("aif_onset") else float(times[nb]))
        aif = population_aif(aif_kind, times, onset=onset, hematocrit=hematocrit,
                             oversample=opts.number("aif_oversample", integer=True, minimum=1))

    common = {"Software": f"oncomri {__version__}", "FrameTimes_s": [float(v) for v in times],
              "BaselineFrames": nb}
    if is_signal:
        common.update({"FlipAngle_deg": float(np.rad2deg(protocol.flip_angle)),
                       "RepetitionTime_s": protocol.repetition_time,
                       "MagneticFieldStrength_T": protocol.magnetic_field_strength,
                       "Relaxivity_per_mM_s": r1, "T1Baseline": t1_label,
                       "ContrastAgent": opts["agent"]})
    maps = {}
    summary = ""
    fit = model = None
    if kinetic != "none":
        model = DCEModel(times if protocol is None else protocol, aif, method=kinetic,
                         fit_delay=opts.flag("fit_delay"))
        domain = opts.choice("fit_domain", ("signal", "concentration")) or \
            ("signal" if is_signal else "concentration")
        if domain == "signal" and not is_signal:
            raise ValidationError(f"{opts.name('fit_domain')} signal needs "
                                  f"{opts.name('input_kind')} signal")
        if domain == "signal":
            fit = model.fit(data, mask=mask, t1_baseline=t1, relaxivity=r1, progress=progress)
        else:
            fit = model.fit(conc, mask=mask, progress=progress)
        for key, (arr, side) in fit.output_maps().items():
            maps[key] = (arr, {**side, "FitDomain": domain})
        counts = fit.summary()
        n_fitted = counts.get('ok', 0) + counts.get('at_bound', 0)
        summary = (f"{kinetic}: {n_fitted:,} voxels fitted "
                   f"({counts.get('at_bound', 0):,} at a bound, {counts.get('not_converged', 0):,} "
                   f"not converged), {counts.get('failed', 0) + counts.get('invalid_data', 0):,} "
                   f"failures, {counts.get('masked', 0):,} masked out")
    iauc = opts["iauc"]
    if isinstance(iauc, str):
        windows = quantity(iauc, name=opts.name("iauc"), units=_TIME_UNITS,
                           default_unit="s") if iauc.strip() else []
    else:
        windows = quantity(iauc, name=opts.name("iauc"), units=_TIME_UNITS) \
            if np.size(iauc) else []
    onset_mf = float(times[nb - 1])
    measures = model_free_measures(conc, times, onset=onset_mf, iauc_times=windows, mask=mask)
    maps.update(model_free_output_maps(measures, onset=onset_mf))
    common["AIF"] = aif.description
    return VolumeFit(fit=fit, model=model, maps=maps, provenance=common, summary=summary)
