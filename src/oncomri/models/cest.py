"""CEST: Z-spectra, B0 correction, MTRasym and multi-pool Lorentzian fitting.

A CEST series holds one image per saturation offset Δω (ppm from water) plus
one or more unsaturated M0 images (:class:`~oncomri.core.CESTProtocol`). Per
voxel this module computes:

Z-spectrum
    ``Z(Δω) = S(Δω) / M0`` (M0 the mean of the M0 measurements); repeated
    offsets are averaged, offsets sorted.

B0 shift ``δ`` (ppm; the measured spectrum is the true one shifted,
``Z_meas(Δω) = Z_true(Δω - δ)``), chosen by ``b0_correction``:

``minimum`` (default)
    the centre of a Lorentzian ``c - A (Γ²/4) / (Γ²/4 + (Δω - δ)²)`` fitted
    (bounded LM) to the Z-spectrum points within ``window_ppm`` of its
    cubic-spline minimum, the usual "direct-saturation minimum" estimate
    (e.g. Zaiss & Bachert, Phys Med Biol 2013;58:R221, review; cited from
    memory, not checked against the paper). Falls back to ``spline`` where
    fewer than 5 points lie in the window.
``spline``
    the minimum of the not-a-knot cubic spline through the Z-spectrum (found
    exactly on the spline, by the roots of its derivative).
``wassr``
    WASSR (Kim, Gillen, Landman, Zhou, van Zijl, MRM 2009;61:1441): a separate
    low-power, short saturation series whose line is pure direct water
    saturation, symmetric about δ. δ maximises the symmetry of the line:
    ``δ = argmin Σ_k [W(δ + s_k) - W(δ - s_k)]²`` over 63 evenly spaced
    ``s_k`` in (0, R], the maximum-symmetry centre of Kim et al., with ``W``
    the cubic spline through the WASSR spectrum, minimised by bounded LM
    from the spline minimum. δ is searched within ``wassr_max_shift_ppm``
    (default: half the half-span of the WASSR offsets) of the span's centre
    and ``R`` = half-span minus that, so every point stays inside the data.
``map``
    a given B0 map, in ppm or Hz (Hz needs the field strength:
    ``δ_ppm = ΔB0_Hz / (42.577478518 MHz/T × B0 × 10⁻⁶)``).
``none``
    δ = 0.

MTRasym at each offset of interest Δω > 0 (e.g. 0.4 ppm lactate, 2 ppm
creatine/amine, 3.5 ppm amide; Zhou et al., Nat Med 2003;9:1085)
    ``MTRasym(Δω) = Z_corr(-Δω) - Z_corr(+Δω)`` with the B0-corrected
    spectrum ``Z_corr(Δω) = Z_meas(Δω + δ)`` evaluated on the not-a-knot cubic
    spline through the measured (sorted, repeat-averaged) Z-spectrum. A
    fraction of M0 (multiply by 100 for percent); NaN where ``±Δω + δ``
    falls outside the sampled offsets.

Multi-pool Lorentzian fit (``method='lorentzian'``)
    ``Z(Δω) = c - Σ_i A_i (Γ_i²/4) / (Γ_i²/4 + (Δω - δ_i)²)`` with the water
    pool at ``δ_w`` (its fitted B0 shift) and every other pool at
    ``δ_i = δ_w + d_i``, ``d_i`` its chemical shift from water; amplitudes
    ``A_i`` (fraction of M0), widths ``Γ_i`` (FWHM, ppm) and shifts ``d_i``
    fitted within bounds (:data:`POOL_LIBRARY`), bounded Levenberg–Marquardt
    with the analytic Jacobian. After Zaiss et al., J Magn Reson
    2011;211:149, Jones et al., MRM 2012;67:1579, and the five-pool fit of
    Windschuh et al., NMR Biomed 2015;28:529 (water, amide 3.5 ppm, amine
    2 ppm, NOE -3.5 ppm, MT -2.5 ppm); references, pool positions, starts
    and bounds cited from memory, not checked against the papers: they suit
    3–9.4 T at B1 ≈ 0.5–2 µT; pass your own :class:`LorentzianPool` list
    otherwise. The broad MT pool is only identifiable with offsets well
    beyond ±10 ppm; without them drop it (``pools=('water', 'amide', ...)``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numba
import numpy as np

from ..core.errors import ProtocolError, ValidationError
from ..core.protocols import PROTON_HZ_PER_PPM_PER_T, CESTProtocol
from ..fitting import (
    DEFAULT_CHUNK_SIZE,
    STATUS_DESCRIPTIONS,
    Status,
    fit_voxelwise,
    levenberg_marquardt,
)
from .base import Fit, Model, result_dtype

__all__ = [
    "LorentzianPool",
    "POOL_LIBRARY",
    "DEFAULT_POOLS",
    "B0_CORRECTIONS",
    "lorentzian",
    "lorentzian_z_spectrum",
    "mtrasym",
    "ppm_to_hz",
    "hz_to_ppm",
    "offset_label",
    "CESTModel",
    "CESTFit",
    "fit_cest_volume",
    "parse_offsets",
    "sidecar_offsets",
    "CEST_VOLUME_OPTIONS",
]


# --------------------------------------------------------------------------
# Pools
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class LorentzianPool:
    """One pool of the multi-pool Lorentzian Z-spectrum model.

    Parameters
    ----------
    name : str
        Letters and digits (used in output names), e.g. ``'amide'``.
    shift : float
        Start of the chemical shift from water in ppm (water: the start of
        the B0 shift, 0).
    shift_bounds : (float, float)
        Bounds of the shift in ppm (water: bounds of the B0 shift δ_w).
    amplitude : (start, low, high)
        Lorentzian depth as a fraction of M0.
    width : (start, low, high)
        Full width at half maximum in ppm.
    """

    name: str
    shift: float
    shift_bounds: tuple
    amplitude: tuple
    width: tuple

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", str(self.name)):
            raise ValidationError(f"pool name {self.name!r} must be letters and digits (it names output maps)")
        for label, (start, lo, hi) in (("amplitude", self.amplitude), ("width", self.width)):
            if not (lo <= start <= hi and np.isfinite([start, lo, hi]).all()):
                raise ValidationError(f"pool {self.name}: {label} start {start} outside its bounds ({lo}, {hi})")
        if self.width[1] <= 0:
            raise ValidationError(f"pool {self.name}: width bounds must be positive ppm")
        lo, hi = self.shift_bounds
        if not lo <= self.shift <= hi:
            raise ValidationError(f"pool {self.name}: shift {self.shift} ppm outside its bounds ({lo}, {hi})")


#: Pools by name. Starts and bounds chosen for 3–9.4 T, B1 ≈ 0.5–2 µT (after
#: Windschuh et al. 2015 and Zaiss et al. 2011; from memory, not checked).
#: Water's shift bounds are those of the B0 shift (ppm).
POOL_LIBRARY = {
    "water": LorentzianPool("water", 0.0, (-1.5, 1.5), (0.9, 0.02, 1.0), (1.4, 0.1, 10.0)),
    "amide": LorentzianPool("amide", 3.5, (3.2, 3.8), (0.025, 0.0, 0.3), (1.5, 0.3, 5.0)),
    "amine": LorentzianPool("amine", 2.0, (1.6, 2.4), (0.01, 0.0, 0.3), (1.5, 0.3, 5.0)),
    "noe": LorentzianPool("noe", -3.5, (-4.2, -2.8), (0.02, 0.0, 0.3), (3.0, 0.5, 8.0)),
    "mt": LorentzianPool("mt", -2.5, (-4.0, -1.0), (0.1, 0.0, 1.0), (25.0, 5.0, 200.0)),
    "lactate": LorentzianPool("lactate", 0.4, (0.2, 0.6), (0.01, 0.0, 0.3), (0.5, 0.1, 2.0)),
}

#: The five-pool model: water, amide, amine, NOE, MT.
DEFAULT_POOLS = ("water", "amide", "amine", "noe", "mt")

#: Start, lower and upper bound of the Lorentzian baseline ``c`` (fraction of M0).
BASELINE = (1.0, 0.2, 1.5)

#: B0 correction methods (see the module docstring).
B0_CORRECTIONS = ("minimum", "spline", "wassr", "map", "none")

#: Fewest Z-spectrum points in the window for the Lorentzian-minimum B0 fit.
MIN_WINDOW_POINTS = 5


def _resolve_pools(pools) -> tuple:
    out = []
    for p in pools:
        if isinstance(p, LorentzianPool):
            out.append(p)
        elif isinstance(p, str) and p.lower() in POOL_LIBRARY:
            out.append(POOL_LIBRARY[p.lower()])
        else:
            raise ValidationError(
                f"pool {p!r} is not known; use one of {', '.join(POOL_LIBRARY)} or a LorentzianPool")
    if not out or out[0].name != "water":
        raise ValidationError("the first pool must be 'water' (its centre is the B0 shift)")
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise ValidationError(f"pool names must be unique, got {names}")
    return tuple(out)


# --------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------

def lorentzian(offsets, amplitude, width, position) -> np.ndarray:
    """``A (Γ²/4) / (Γ²/4 + (Δω - position)²)``; maps broadcast to ``(..., n_offsets)``.

    ``offsets``, ``width`` (FWHM) and ``position`` in ppm; ``amplitude`` unitless.
    """
    x = np.asarray(offsets, dtype=np.float64)
    a = np.asarray(amplitude, dtype=np.float64)[..., None]
    g = (np.asarray(width, dtype=np.float64)[..., None] / 2.0) ** 2
    d = x - np.asarray(position, dtype=np.float64)[..., None]
    return a * g / (g + d * d)


def lorentzian_z_spectrum(offsets, baseline, pools) -> np.ndarray:
    """Multi-pool Lorentzian Z-spectrum ``c - Σ_i L_i(Δω)``.

    Parameters
    ----------
    offsets : array_like (n,)
        Offsets in ppm.
    baseline : float or ndarray
        ``c``.
    pools : sequence of (amplitude, width, position)
        Per pool, maps (or scalars) of amplitude, FWHM (ppm) and absolute
        position (ppm, B0 shift included).

    Returns
    -------
    ndarray of shape ``baseline.shape + (n,)``
    """
    z = np.asarray(baseline, dtype=np.float64)[..., None] + 0.0 * np.asarray(offsets, dtype=np.float64)
    for a, w, pos in pools:
        z = z - lorentzian(offsets, a, w, pos)
    return z


def mtrasym(z_negative, z_positive):
    """Magnetisation transfer ratio asymmetry ``Z(-Δω) - Z(+Δω)`` (Zhou et al., Nat Med 2003;9:1085)."""
    return np.asarray(z_negative) - np.asarray(z_positive)


def ppm_to_hz(ppm, magnetic_field_strength):
    """Frequency shift in Hz of ``ppm`` at ``magnetic_field_strength`` tesla (1H)."""
    return np.asarray(ppm) * (PROTON_HZ_PER_PPM_PER_T * float(magnetic_field_strength))


def hz_to_ppm(hz, magnetic_field_strength):
    """Frequency shift in ppm of ``hz`` at ``magnetic_field_strength`` tesla (1H)."""
    return np.asarray(hz) / (PROTON_HZ_PER_PPM_PER_T * float(magnetic_field_strength))


def offset_label(offset_ppm: float) -> str:
    """BIDS-safe label of an offset: 3.5 -> ``'3p5ppm'``, 0.4 -> ``'0p4ppm'``, -3.5 -> ``'m3p5ppm'``."""
    text = f"{abs(float(offset_ppm)):.4f}".rstrip("0").rstrip(".")
    return ("m" if offset_ppm < 0 else "") + text.replace(".", "p") + "ppm"


# --------------------------------------------------------------------------
# Z-spectrum and cubic splines, vectorised over voxels
# --------------------------------------------------------------------------

def _z_design(offsets, m0_indices, saturated):
    """Sorted unique saturated offsets ``u``, the (m, n_u) averaging matrix and M0 weights (m,)."""
    m = offsets.size
    u, inverse = np.unique(offsets[saturated], return_inverse=True)
    avg = np.zeros((m, u.size))
    avg[saturated, inverse] = 1.0
    avg /= avg.sum(axis=0, keepdims=True)
    w0 = np.zeros(m)
    w0[list(m0_indices)] = 1.0 / len(m0_indices)
    return u, avg, w0


def _spline_coefficients(u, z):
    """Not-a-knot cubic spline of every row of ``z`` on knots ``u``: (n, n_u - 1, 4), highest power first."""
    from scipy.interpolate import CubicSpline

    if u.size < 4:  # not-a-knot needs 4 knots; 3 make a parabola
        bc = "natural" if u.size == 3 else "not-a-knot"
        spl = CubicSpline(u, z, axis=1, bc_type=bc)
    else:
        spl = CubicSpline(u, z, axis=1)
    return np.ascontiguousarray(np.transpose(spl.c, (2, 1, 0)))


def _spline_eval(u, coefs, t):
    """Evaluate row i's spline at ``t[i, ...]``; NaN outside ``[u[0], u[-1]]``."""
    t = np.asarray(t, dtype=np.float64)
    n = coefs.shape[0]
    shape = t.shape
    t2 = t.reshape(n, -1)
    k = np.clip(np.searchsorted(u, t2, side="right") - 1, 0, u.size - 2)
    dx = t2 - u[k]
    rows = np.arange(n)[:, None]
    c = coefs[rows, k]  # (n, q, 4)
    val = ((c[..., 0] * dx + c[..., 1]) * dx + c[..., 2]) * dx + c[..., 3]
    tol = 1e-9 * max(1.0, float(np.abs(u).max()))
    val[(t2 < u[0] - tol) | (t2 > u[-1] + tol) | ~np.isfinite(t2)] = np.nan
    return val.reshape(shape)


def _spline_minimum(u, coefs, z, lo, hi):
    """Exact minimum of each row's spline within [lo, hi] near its sampled minimum.

    Returns (position, value). The candidates are the sampled minimum and the
    stationary points of the two spline pieces beside it.
    """
    n = z.shape[0]
    inside = (u >= lo) & (u <= hi)
    if not inside.any():
        return np.full(n, np.nan), np.full(n, np.nan)
    zz = np.where(inside[None, :], z, np.inf)
    j = np.argmin(zz, axis=1)
    best_x = u[j].astype(np.float64)
    best_v = z[np.arange(n), j].astype(np.float64)
    rows = np.arange(n)
    for k in (j - 1, j):
        ok = (k >= 0) & (k <= u.size - 2)
        kk = np.clip(k, 0, u.size - 2)
        a, b, c, d = (coefs[rows, kk, q] for q in range(4))
        h = u[kk + 1] - u[kk]
        # roots of 3a s^2 + 2b s + c = 0
        with np.errstate(divide="ignore", invalid="ignore"):
            disc = np.sqrt(np.maximum(b * b - 3.0 * a * c, 0.0))
            lin = np.abs(a) < 1e-14 * (np.abs(b) + np.abs(c) + 1e-300)
            r1 = np.where(lin, -c / (2.0 * b), (-b + disc) / (3.0 * a))
            r2 = np.where(lin, np.nan, (-b - disc) / (3.0 * a))
        for s in (r1, r2):
            x = u[kk] + s
            good = ok & np.isfinite(s) & (s >= 0) & (s <= h) & (x >= lo) & (x <= hi)
            v = ((a * s + b) * s + c) * s + d
            better = good & (v < best_v)
            best_x = np.where(better, x, best_x)
            best_v = np.where(better, v, best_v)
    return best_x, best_v


# --------------------------------------------------------------------------
# LM kernels: model(p, x, c, f, J)
# --------------------------------------------------------------------------

@numba.njit(cache=True)
def _kernel_multipool(p, x, c, f, J):
    """Multi-pool Lorentzian: p = [c, A_w, Γ_w, δ_w, (A_i, Γ_i, d_i)...], position_i = δ_w + d_i.

    Only offsets with ``|Δω - c[0]| <= c[1]`` count: outside that window the
    model and its Jacobian are zero (the caller zeroes the data there too),
    so one kernel serves both the full fit (``c[1] = inf``) and the water
    fit around the Z-spectrum minimum.
    """
    n_pools = 1 + (p.shape[0] - 4) // 3
    u = x[0]
    for j in range(u.shape[0]):
        for q in range(p.shape[0]):
            J[j, q] = 0.0
        if abs(u[j] - c[0]) > c[1]:
            f[j] = 0.0
        else:
            f[j] = p[0]
            J[j, 0] = 1.0
    for i in range(n_pools):
        if i == 0:
            ia = 1
            pos = p[3]
        else:
            ia = 4 + 3 * (i - 1)
            pos = p[3] + p[ia + 2]
        a = p[ia]
        w = p[ia + 1]
        g = 0.25 * w * w
        for j in range(u.shape[0]):
            if abs(u[j] - c[0]) > c[1]:
                continue
            d = u[j] - pos
            q = 1.0 / (g + d * d)
            lor = g * q
            f[j] -= a * lor
            J[j, ia] = -lor
            J[j, ia + 1] = -a * 0.5 * w * d * d * q * q
            dpos = -a * g * 2.0 * d * q * q
            J[j, 3] += dpos
            if i > 0:
                J[j, ia + 2] = dpos


@numba.njit(cache=True)
def _spline_at(c, n_u, t):
    """Value and derivative at ``t`` of the spline packed in ``c`` = [n_u, u..., coefs...]."""
    lo = 0
    hi = n_u - 2
    # binary search for the piece k with u[k] <= t (clamped to the end pieces)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if c[1 + mid] <= t:
            lo = mid
        else:
            hi = mid - 1
    k = lo
    s = t - c[1 + k]
    b = 1 + n_u + 4 * k
    a3, a2, a1, a0 = c[b], c[b + 1], c[b + 2], c[b + 3]
    return ((a3 * s + a2) * s + a1) * s + a0, (3.0 * a3 * s + 2.0 * a2) * s + a1


@numba.njit(cache=True)
def _kernel_symmetry(p, x, c, f, J):
    """WASSR maximum symmetry: f_k = W(δ + s_k) - W(δ - s_k), fitted to zero."""
    n_u = int(c[0])
    s = x[0]
    for j in range(s.shape[0]):
        vp, dp = _spline_at(c, n_u, p[0] + s[j])
        vm, dm = _spline_at(c, n_u, p[0] - s[j])
        f[j] = vp - vm
        J[j, 0] = dp - dm


def _pack_splines(u, coefs):
    n = coefs.shape[0]
    head = np.empty((n, 1 + u.size))
    head[:, 0] = u.size
    head[:, 1:] = u
    return np.ascontiguousarray(np.concatenate([head, coefs.reshape(n, -1)], axis=1))


# --------------------------------------------------------------------------
# B0 estimates on rows (n, n_u) of a Z-spectrum
# --------------------------------------------------------------------------

def _b0_spline(u, coefs, z, max_shift):
    x, _ = _spline_minimum(u, coefs, z, -max_shift, max_shift)
    status = np.full(x.shape, Status.OK, np.uint8)
    status[np.isfinite(x) & (np.abs(x) >= max_shift * (1 - 1e-9))] = Status.AT_BOUND
    status[~np.isfinite(x)] = Status.FAILED
    return x, status


def _b0_lorentzian_window(u, coefs, z, max_shift, window, max_iter):
    x0, status = _b0_spline(u, coefs, z, max_shift)
    centre = np.nan_to_num(x0)
    inside = np.abs(u[None, :] - centre[:, None]) <= window
    enough = inside.sum(axis=1) >= MIN_WINDOW_POINTS
    use = enough & (status != Status.FAILED)
    if not np.any(use):
        return x0, status
    zi = np.where(inside, z, 0.0)[use]
    zmin = np.where(inside[use], z[use], np.inf).min(axis=1)
    depth = np.clip(1.0 - zmin, 0.05, 2.0)
    p0 = np.column_stack([np.ones(zi.shape[0]), depth, np.full(zi.shape[0], window),
                          centre[use]])
    consts = np.column_stack([centre[use], np.full(zi.shape[0], window)])
    p, _, st, _ = levenberg_marquardt(_kernel_multipool, zi, p0, x=u[None, :], consts=consts,
                      lower=[0.0, 0.0, 0.02, -max_shift], upper=[2.0, 2.0, 20.0, max_shift],
                      max_iter=max_iter)
    pos = p[:, 3]
    # keep only fits whose centre stayed inside the window
    good = (np.abs(pos - centre[use]) <= window) & (st != Status.FAILED)
    x = x0.copy()
    idx = np.flatnonzero(use)
    x[idx[good]] = pos[good]
    status = status.copy()
    status[idx[good]] = np.where(np.abs(pos[good]) >= max_shift * (1 - 1e-9), Status.AT_BOUND,
                                 np.where(st[good] == Status.NOT_CONVERGED, Status.NOT_CONVERGED,
                                          Status.OK))
    return x, status


# --------------------------------------------------------------------------
# Methods on Z rows: (z, u, b0_ppm, ctx) -> dict
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class _Context:
    pools: tuple
    max_iter: int


def _method_mtrasym(z, u, b0, ctx):
    """Nothing beyond the Z-spectrum, B0 and MTRasym (computed for every method)."""
    return {}


def _method_lorentzian(z, u, b0, ctx):
    """Multi-pool Lorentzian fit of the Z-spectrum (bounded LM, analytic Jacobian)."""
    pools = ctx.pools
    n = z.shape[0]
    starts = [BASELINE[0]]
    lower = [BASELINE[1]]
    upper = [BASELINE[2]]
    for i, pool in enumerate(pools):
        starts += [pool.amplitude[0], pool.width[0]]
        lower += [pool.amplitude[1], pool.width[1]]
        upper += [pool.amplitude[2], pool.width[2]]
        if i == 0:
            starts.append(0.0)
        else:
            starts.append(pool.shift)
        lower.append(pool.shift_bounds[0])
        upper.append(pool.shift_bounds[1])
    p0 = np.tile(np.asarray(starts, np.float64), (n, 1))
    water = pools[0]
    p0[:, 3] = np.clip(np.nan_to_num(b0), water.shift_bounds[0], water.shift_bounds[1])
    # water depth from the data: 1 - min Z
    p0[:, 1] = np.clip(1.0 - np.min(z, axis=1), water.amplitude[1], water.amplitude[2])
    consts = np.tile([0.0, np.inf], (n, 1))
    p, cost, st, _ = levenberg_marquardt(_kernel_multipool, z, p0, x=u[None, :], consts=consts, lower=lower,
                         upper=upper, max_iter=ctx.max_iter, ftol=1e-9)
    out = {"baseline": p[:, 0], "status": st, "rmse": np.sqrt(cost / z.shape[1])}
    for i, pool in enumerate(pools):
        ia = 1 if i == 0 else 4 + 3 * (i - 1)
        out[f"{pool.name}Amplitude"] = p[:, ia]
        out[f"{pool.name}Width"] = p[:, ia + 1]
        out[f"{pool.name}Offset"] = p[:, 3] if i == 0 else p[:, ia + 2]
    return out


_METHODS = {"mtrasym": _method_mtrasym, "lorentzian": _method_lorentzian}

#: What each method is, with its reference (for sidecars).
METHOD_REFERENCES = {
    "mtrasym": "Z-spectrum / M0, B0-corrected MTRasym on a cubic spline (Zhou et al., Nat Med 2003;9:1085)",
    "lorentzian": "multi-pool Lorentzian fit, bounded Levenberg-Marquardt (Zaiss et al., JMR 2011;211:149; "
                  "Windschuh et al., NMR Biomed 2015;28:529)",
}
B0_REFERENCES = {
    "minimum": "Lorentzian fit of the water line around the Z-spectrum minimum",
    "spline": "minimum of the cubic spline through the Z-spectrum",
    "wassr": "WASSR maximum symmetry (Kim et al., MRM 2009;61:1441) on a cubic spline",
    "map": "given B0 map",
    "none": "no B0 correction",
}


# --------------------------------------------------------------------------
# WASSR
# --------------------------------------------------------------------------

def _wassr_offsets(wassr_protocol):
    """The saturated WASSR offsets (ppm) and their indices; M0s (if any) are not needed."""
    if wassr_protocol is None:
        return None
    if isinstance(wassr_protocol, CESTProtocol):
        return wassr_protocol.offsets, wassr_protocol.saturated_indices
    off = np.array(wassr_protocol, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(off)):
        raise ProtocolError(f"wassr offsets must be finite numbers in ppm, got {off.tolist()}")
    sat = np.flatnonzero(np.abs(off) < 100.0)
    if np.unique(off[sat]).size < 4:
        raise ProtocolError(
            f"wassr offsets {off.tolist()} ppm: need at least four distinct offsets within "
            "±100 ppm (in ppm, not Hz)")
    return off, sat


def _wassr_rows(rows, u, avg, max_shift, max_iter):
    """Maximum-symmetry centre (ppm) of each WASSR row."""
    scale = rows.max(axis=1)
    z = (rows @ avg) / scale[:, None]
    coefs = _spline_coefficients(u, z)
    centre = 0.5 * (u[0] + u[-1])
    half = 0.5 * (u[-1] - u[0])
    reach = half - max_shift
    x0, _ = _spline_minimum(u, coefs, z, centre - max_shift, centre + max_shift)
    x0 = np.clip(np.nan_to_num(x0, nan=centre), centre - max_shift, centre + max_shift)
    s = np.linspace(0.0, reach, 64)[1:]
    p, _, st, _ = levenberg_marquardt(_kernel_symmetry, np.zeros((z.shape[0], s.size)), x0[:, None],
                      x=s[None, :], consts=_pack_splines(u, coefs),
                      lower=[centre - max_shift], upper=[centre + max_shift], max_iter=max_iter)
    return p[:, 0], st


# --------------------------------------------------------------------------
# Model and Fit
# --------------------------------------------------------------------------

def _as_protocol(protocol) -> CESTProtocol:
    if isinstance(protocol, CESTProtocol):
        return protocol
    return CESTProtocol(protocol)


class CESTModel(Model):
    """CEST: Z-spectrum, per-voxel B0 correction, MTRasym, multi-pool Lorentzian fit.

    See the module docstring for every formula and its reference.

    Parameters
    ----------
    protocol : CESTProtocol or array_like
        The acquisition, or the offsets in ppm (M0 detected as
        ``|offset| >= 100 ppm``). Offsets without an M0 raise
        :class:`~oncomri.core.ProtocolError`.
    method : {'mtrasym', 'lorentzian'} or callable
        ``'mtrasym'`` (default): Z-spectrum, B0 and MTRasym.
        ``'lorentzian'``: those plus the multi-pool Lorentzian fit.
    b0_correction : {'minimum', 'spline', 'wassr', 'map', 'none'}
        How δ is found (module docstring). ``'wassr'`` needs
        ``wassr_protocol`` here and ``wassr=`` in :meth:`fit`; ``'map'``
        needs ``b0_map=`` in :meth:`fit`.
    offsets_of_interest : sequence of float
        Positive offsets in ppm for MTRasym (default 0.4, 2.0, 3.5).
    pools : sequence of str or LorentzianPool
        Pools of the Lorentzian fit, water first (default
        :data:`DEFAULT_POOLS`; names from :data:`POOL_LIBRARY`).
    wassr_protocol : CESTProtocol or array_like, optional
        The WASSR series' offsets in ppm (M0 measurements are ignored).
    window_ppm : float
        Half-width of the window around the minimum for ``'minimum'`` (1 ppm).
    max_b0_shift_ppm : float
        Largest |δ| searched by ``'minimum'``/``'spline'`` (1.5 ppm).
    wassr_max_shift_ppm : float, optional
        Largest |δ - centre of the WASSR span| searched by ``'wassr'``
        (default half the half-span of the WASSR offsets).
    max_iter : int
        Iteration limit of the nonlinear fits.
    chunk_size : int
        Voxels per chunk (memory bound).
    """

    methods = _METHODS
    default_method = "mtrasym"

    def __init__(self, protocol, *, method=None, b0_correction: str = "minimum",
                 offsets_of_interest=(0.4, 2.0, 3.5), pools=DEFAULT_POOLS, wassr_protocol=None,
                 window_ppm: float = 1.0, max_b0_shift_ppm: float = 1.5,
                 wassr_max_shift_ppm: float | None = None, max_iter: int = 200,
                 chunk_size: int = DEFAULT_CHUNK_SIZE):
        super().__init__(_as_protocol(protocol), method=method)
        if b0_correction not in B0_CORRECTIONS:
            raise ValidationError(
                f"b0_correction {b0_correction!r} is not known; choose one of {', '.join(B0_CORRECTIONS)}")
        self.b0_correction = b0_correction
        ooi = np.atleast_1d(np.asarray(offsets_of_interest, dtype=np.float64))
        if ooi.size and (not np.all(np.isfinite(ooi)) or np.any(ooi <= 0)):
            raise ValidationError(
                f"offsets_of_interest must be positive ppm values (MTRasym is Z(-Δω) - Z(+Δω)), "
                f"got {ooi.tolist()}")
        self.offsets_of_interest = tuple(float(v) for v in ooi)
        self.pools = _resolve_pools(pools)
        self.window_ppm = float(window_ppm)
        self.max_b0_shift_ppm = float(max_b0_shift_ppm)
        if not (self.window_ppm > 0 and self.max_b0_shift_ppm > 0):
            raise ValidationError("window_ppm and max_b0_shift_ppm must be positive")
        self.wassr_protocol = wassr_protocol
        self._wassr = _wassr_offsets(wassr_protocol)
        if b0_correction == "wassr" and self._wassr is None:
            raise ValidationError("b0_correction='wassr' needs wassr_protocol (the WASSR offsets in ppm)")
        self.wassr_max_shift_ppm = wassr_max_shift_ppm
        self.max_iter = int(max_iter)
        self.chunk_size = int(chunk_size)
        p = self.protocol
        self.z_offsets, self._avg, self._w0 = _z_design(p.offsets, p.m0_indices, p.saturated_indices)
        if self.method == "lorentzian":
            n_par = 1 + 3 * len(self.pools)
            if self.z_offsets.size < n_par:
                raise ProtocolError(
                    f"{p.source}: {self.z_offsets.size} distinct offsets cannot fit {n_par} "
                    f"Lorentzian parameters ({len(self.pools)} pools); acquire more offsets or "
                    "use fewer pools")

    @classmethod
    def fit_volume(cls, volume, *, mask=None, method=None, names=None, progress=None,
                   **options):
        """Fit a loaded CEST series from plain options: see :func:`fit_cest_volume`."""
        return fit_cest_volume(volume, mask=mask, method=method, names=names, progress=progress,
                               **options)

    # -- B0 inputs ---------------------------------------------------------

    def _b0_from_map(self, b0_map, b0_unit, spatial):
        b0 = np.asarray(b0_map, dtype=np.float64)
        if b0.shape != tuple(spatial) and b0.ndim != 0:
            raise ValidationError(
                f"b0_map has shape {b0.shape}; it must match the spatial shape {tuple(spatial)}")
        if b0_unit == "ppm":
            return b0
        if b0_unit == "Hz":
            if self.protocol.hz_per_ppm is None:
                raise ProtocolError(
                    "a B0 map in Hz needs the field strength to convert to ppm; give "
                    "magnetic_field_strength in the CESTProtocol (CLI --field 3T)")
            return b0 / self.protocol.hz_per_ppm
        raise ValidationError(f"b0_unit must be 'ppm' or 'Hz', got {b0_unit!r}")

    def _b0_from_wassr(self, wassr, mask, spatial, progress):
        wassr = np.asanyarray(wassr)
        off, sat = self._wassr
        if wassr.shape[:-1] != tuple(spatial) or wassr.shape[-1] != off.size:
            raise ValidationError(
                f"wassr has shape {wassr.shape}; it must be {tuple(spatial) + (off.size,)} "
                "(the CEST grid, one volume per WASSR offset on the last axis)")
        u, inverse = np.unique(off[sat], return_inverse=True)
        avg = np.zeros((off.size, u.size))
        avg[sat, inverse] = 1.0
        avg /= avg.sum(axis=0, keepdims=True)
        half = 0.5 * (u[-1] - u[0])
        max_shift = 0.5 * half if self.wassr_max_shift_ppm is None else float(self.wassr_max_shift_ppm)
        if not 0 < max_shift < half:
            raise ValidationError(
                f"wassr_max_shift_ppm must lie in (0, {half:g}) for WASSR offsets spanning "
                f"{u[0]:g}..{u[-1]:g} ppm")

        def rows_fn(rows, aux):
            d, st = _wassr_rows(np.asarray(rows, np.float64), u, avg, max_shift, self.max_iter)
            return {"b0": d, "status": st}

        maps = fit_voxelwise(wassr, rows_fn, outputs={"b0": np.float64, "status": np.uint8},
                             mask=mask, chunk_size=self.chunk_size, progress=progress)
        return maps["b0"], maps["status"]

    # -- fitting -------------------------------------------------------------

    def fit(self, data, *, mask=None, b0_map=None, b0_unit: str = "ppm", wassr=None,
            progress=None) -> "CESTFit":
        """Fit every voxel of ``data``.

        Parameters
        ----------
        data : ndarray (..., n_measurements)
            Magnitude images, one per protocol offset (M0 included) on the
            last axis. Not modified.
        mask : bool ndarray of data.shape[:-1], optional
        b0_map : ndarray of data.shape[:-1], optional
            B0 shift map for ``b0_correction='map'`` (water resonance offset
            from the nominal frequency).
        b0_unit : {'ppm', 'Hz'}
            Unit of ``b0_map``.
        wassr : ndarray (..., n_wassr), optional
            The WASSR series on the same grid, for ``b0_correction='wassr'``.
        progress : callable, optional
            ``progress(n_done, n_total)`` after each chunk.
        """
        data = np.asanyarray(data)
        p = self.protocol
        if data.ndim < 2 or data.shape[-1] != p.n_measurements:
            raise ValidationError(
                f"data has shape {data.shape} but the CEST protocol has {p.n_measurements} "
                "offsets (M0 included); put the offsets on the last axis")
        if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
            raise ValidationError(f"data must be real magnitude values, got dtype {data.dtype}")
        spatial = data.shape[:-1]
        aux = {}
        wassr_status = None
        if self.b0_correction == "map":
            if b0_map is None:
                raise ValidationError("b0_correction='map' needs b0_map= (a B0 map in ppm or Hz)")
            aux["b0"] = self._b0_from_map(b0_map, b0_unit, spatial)
        elif b0_map is not None:
            raise ValidationError(f"b0_map was given but b0_correction is {self.b0_correction!r}; "
                                  "use b0_correction='map'")
        if self.b0_correction == "wassr":
            if wassr is None:
                raise ValidationError("b0_correction='wassr' needs wassr= (the WASSR series)")
            aux["b0"], wassr_status = self._b0_from_wassr(wassr, mask, spatial, None)
        elif wassr is not None:
            raise ValidationError(f"wassr was given but b0_correction is {self.b0_correction!r}; "
                                  "use b0_correction='wassr'")
        dtype = result_dtype(data)
        u, avg, w0 = self.z_offsets, self._avg, self._w0
        ctx = _Context(self.pools, self.max_iter)
        names = self._pool_output_names()

        def fit_rows(rows, aux_rows):
            rows = np.asarray(rows, dtype=np.float64)
            n = rows.shape[0]
            m0 = rows @ w0
            good = m0 > 0
            out = {"m0": np.where(good, m0, np.nan), "status": np.full(n, Status.OK, np.uint8)}
            out["status"][~good] = Status.FAILED
            with np.errstate(divide="ignore", invalid="ignore"):
                z = (rows @ avg) / m0[:, None]
            z[~good] = np.nan
            for k in range(u.size):
                out[f"z{k}"] = z[:, k]
            if not np.any(good):
                return out
            zg = z[good]
            coefs = _spline_coefficients(u, zg)
            if "b0" in aux_rows:
                b0 = aux_rows["b0"][good]
                st_b0 = np.where(np.isfinite(b0), Status.OK, Status.FAILED).astype(np.uint8)
            elif self.b0_correction == "none":
                b0 = np.zeros(zg.shape[0])
                st_b0 = np.zeros(zg.shape[0], np.uint8)
            elif self.b0_correction == "spline":
                b0, st_b0 = _b0_spline(u, coefs, zg, self.max_b0_shift_ppm)
            else:
                b0, st_b0 = _b0_lorentzian_window(u, coefs, zg, self.max_b0_shift_ppm,
                                                  self.window_ppm, self.max_iter)
            b0 = np.where(st_b0 == Status.FAILED, np.nan, b0)
            status = st_b0.copy()
            full_b0 = np.full(n, np.nan)
            full_b0[good] = b0
            out["b0"] = full_b0
            for dw in self.offsets_of_interest:
                t = np.column_stack([b0 - dw, b0 + dw])
                zz = _spline_eval(u, coefs, t)
                val = np.full(n, np.nan)
                val[good] = mtrasym(zz[:, 0], zz[:, 1])
                out[f"mtr_{offset_label(dw)}"] = val
            res = self._method(zg, u, b0, ctx)
            if res:
                # the fit's own status (the B0 estimate only started it)
                status = res.pop("status").astype(np.uint8)
                for key, val in res.items():
                    full = np.full(n, np.nan)
                    full[good] = val
                    out[key] = full
            status[~np.isfinite(b0)] = Status.FAILED
            out["status"][good] = status
            return out

        outputs = {"m0": dtype, "b0": dtype, "status": np.uint8}
        outputs.update({f"z{k}": dtype for k in range(u.size)})
        outputs.update({f"mtr_{offset_label(dw)}": dtype for dw in self.offsets_of_interest})
        outputs.update({key: dtype for key in names})
        maps = fit_voxelwise(data, fit_rows, outputs=outputs, mask=mask, aux=aux,
                             chunk_size=self.chunk_size, progress=progress)
        if wassr_status is not None:
            # voxels whose WASSR fit failed are failed here too
            bad = (wassr_status == Status.FAILED) & (maps["status"] != Status.MASKED)
            maps["status"][bad] = Status.FAILED
        return CESTFit(self, maps)

    def _pool_output_names(self):
        if self.method != "lorentzian":
            return []
        names = ["baseline", "rmse"]
        for pool in self.pools:
            names += [f"{pool.name}Amplitude", f"{pool.name}Width", f"{pool.name}Offset"]
        return names


class CESTFit(Fit):
    """Result of :class:`CESTModel`.

    Attributes
    ----------
    m0 : ndarray
        Mean of the M0 measurements (a.u.).
    z : ndarray (..., n_u)
        Z-spectrum ``S / M0`` at :attr:`z_offsets` (sorted unique saturated
        offsets, ppm), not B0-corrected.
    b0_ppm, b0_hz : ndarray
        B0 shift δ in ppm, and in Hz (None without a field strength).
    mtrasym : dict
        Offset (ppm) -> MTRasym map (fraction of M0).
    pools : dict
        Pool name -> {'amplitude', 'width', 'offset'} maps (``'lorentzian'`` only).
    status : uint8 ndarray
    """

    def __init__(self, model: CESTModel, maps: dict):
        self.model = model
        self._maps = maps
        self.status = maps["status"]
        u = model.z_offsets
        self.z_offsets = u
        self.m0 = maps["m0"]
        self.z = np.stack([maps[f"z{k}"] for k in range(u.size)], axis=-1)
        self.b0_ppm = maps["b0"]
        hz = model.protocol.hz_per_ppm
        self.b0_hz = None if hz is None else (self.b0_ppm * hz).astype(self.b0_ppm.dtype)
        self.mtrasym = {dw: maps[f"mtr_{offset_label(dw)}"] for dw in model.offsets_of_interest}
        self.pools = {}
        self.baseline = maps.get("baseline")
        self.rmse = maps.get("rmse")
        if model.method == "lorentzian":
            for pool in model.pools:
                self.pools[pool.name] = {
                    "amplitude": maps[f"{pool.name}Amplitude"],
                    "width": maps[f"{pool.name}Width"],
                    "offset": maps[f"{pool.name}Offset"],
                }

    def _valid(self):
        return np.isfinite(self.m0) & (self.m0 > 0) & np.all(np.isfinite(self.z), axis=-1)

    def corrected_z(self, offsets) -> np.ndarray:
        """The B0-corrected Z-spectrum ``Z_meas(Δω + δ)`` at ``offsets`` (ppm), on the cubic spline.

        Shape ``spatial + (len(offsets),)``; NaN outside the sampled range
        and in unfitted voxels.
        """
        offsets = np.atleast_1d(np.asarray(offsets, dtype=np.float64))
        out = np.full(self.m0.shape + (offsets.size,), np.nan, dtype=self.m0.dtype)
        valid = self._valid() & np.isfinite(self.b0_ppm)
        if np.any(valid):
            zv = self.z[valid].astype(np.float64)
            coefs = _spline_coefficients(self.z_offsets, zv)
            t = self.b0_ppm[valid].astype(np.float64)[:, None] + offsets[None, :]
            out[valid] = _spline_eval(self.z_offsets, coefs, t)
        return out

    def predict(self) -> np.ndarray:
        """The model signal at every measurement of the protocol (M0 ones = M0).

        ``'lorentzian'``: ``M0 × Z_model(Δω)``. ``'mtrasym'``: ``M0 × Z`` on
        the cubic spline through the measured Z-spectrum (equals the data,
        with repeated offsets averaged).
        """
        proto = self.model.protocol
        off = proto.offsets
        sat = proto.saturated_indices
        m0 = self.m0.astype(np.float64)
        out = np.full(m0.shape + (off.size,), np.nan)
        out[..., list(proto.m0_indices)] = m0[..., None]
        valid = self._valid()
        if self.model.method == "lorentzian":
            pools = []
            for i, pool in enumerate(self.model.pools):
                d = self.pools[pool.name]
                pos = self.b0_ppm_fit if i == 0 else self.b0_ppm_fit + d["offset"]
                pools.append((d["amplitude"], d["width"], pos))
            z = lorentzian_z_spectrum(off[sat], self.baseline, pools)
            out[..., sat] = m0[..., None] * z
        elif np.any(valid):
            coefs = _spline_coefficients(self.z_offsets, self.z[valid].astype(np.float64))
            zs = _spline_eval(self.z_offsets, coefs,
                              np.broadcast_to(off[sat], (coefs.shape[0], sat.size)))
            tmp = out[valid]
            tmp[:, sat] = m0[valid][:, None] * zs
            out[valid] = tmp
        return out.astype(self.m0.dtype)

    @property
    def b0_ppm_fit(self) -> np.ndarray | None:
        """Water-pool centre of the Lorentzian fit in ppm (``'lorentzian'`` only)."""
        water = self.pools.get(self.model.pools[0].name) if self.pools else None
        return None if water is None else water["offset"]

    def output_maps(self) -> dict:
        """BIDS-derivative name -> (map, sidecar).

        ``M0map``; ``desc-ppm_B0map`` (ppm) and ``desc-Hz_B0map`` (Hz, with a
        field strength); ``desc-MTRasym<Δω>_CESTmap`` per offset of interest
        (``3p5ppm`` for 3.5 ppm; fraction of M0); ``desc-Zspectrum_CESTmap``
        (4D, offsets in the sidecar); for ``'lorentzian'``
        ``desc-<pool>Amplitude_CESTmap`` (fraction of M0),
        ``desc-<pool>Width_CESTmap`` (FWHM, ppm), ``desc-<pool>Offset_CESTmap``
        (ppm from water; water: its fitted B0 shift), ``desc-lorentzBaseline_CESTmap``
        and ``desc-cestfit_rmse``; always ``desc-cestfit_status``.
        """
        model = self.model
        b0_how = B0_REFERENCES[model.b0_correction]
        out = {
            "M0map": (self.m0, {"Units": "a.u.", "Description": "mean of the unsaturated M0 images"}),
            "desc-ppm_B0map": (self.b0_ppm, {
                "Units": "ppm", "Description": "B0 shift of the water resonance", "B0Correction": b0_how}),
        }
        if self.b0_hz is not None:
            out["desc-Hz_B0map"] = (self.b0_hz, {
                "Units": "Hz", "Description": "B0 shift of the water resonance", "B0Correction": b0_how,
                "MagneticFieldStrength": model.protocol.magnetic_field_strength})
        for dw, arr in self.mtrasym.items():
            out[f"desc-MTRasym{offset_label(dw)}_CESTmap"] = (arr, {
                "Units": "1", "SaturationOffset": dw, "SaturationOffsetUnits": "ppm",
                "Description": f"MTRasym at {dw:g} ppm, Z(-{dw:g} ppm) - Z(+{dw:g} ppm) after B0 "
                               "correction, fraction of M0 (x100 for percent)",
                "Interpolation": "not-a-knot cubic spline through the Z-spectrum",
                "B0Correction": b0_how})
        out["desc-Zspectrum_CESTmap"] = (self.z, {
            "Units": "1", "Description": "Z-spectrum S/M0 (not B0-corrected), repeated offsets averaged",
            "SaturationOffsets": self.z_offsets.tolist(), "SaturationOffsetUnits": "ppm"})
        if model.method == "lorentzian":
            for pool in model.pools:
                d = self.pools[pool.name]
                out[f"desc-{pool.name}Amplitude_CESTmap"] = (d["amplitude"], {
                    "Units": "1", "Description": f"{pool.name} Lorentzian amplitude, fraction of M0"})
                out[f"desc-{pool.name}Width_CESTmap"] = (d["width"], {
                    "Units": "ppm", "Description": f"{pool.name} Lorentzian full width at half maximum"})
                out[f"desc-{pool.name}Offset_CESTmap"] = (d["offset"], {
                    "Units": "ppm", "Description": (
                        "water Lorentzian centre (fitted B0 shift)" if pool.name == "water"
                        else f"{pool.name} Lorentzian shift from the water centre")})
            out["desc-lorentzBaseline_CESTmap"] = (self.baseline, {
                "Units": "1", "Description": "baseline c of the Lorentzian Z-spectrum model"})
            out["desc-cestfit_rmse"] = (self.rmse, {
                "Units": "1", "Description": "root-mean-square residual of the Lorentzian fit (Z units)"})
        out["desc-cestfit_status"] = (self.status, {
            "Units": "1", "Description": "per-voxel fit status code",
            "Levels": {str(k): v for k, v in STATUS_DESCRIPTIONS.items()}})
        return out



# --------------------------------------------------------------------------
# From a Volume (shared by `oncomri map cest` and the study pipeline)
# --------------------------------------------------------------------------

#: Options of :func:`fit_cest_volume` and their defaults (the ``oncomri map cest`` flags).
CEST_VOLUME_OPTIONS = {
    "offsets": None, "m0_index": None, "field": None, "b0_correction": None, "b0_map": None,
    "b0_unit": None, "wassr": None, "wassr_offsets": None,
    "offsets_of_interest": "0.4,2,3.5ppm", "pools": "water,amide,amine,noe,mt", "method": None,
}


def parse_offsets(text, *, name: str, field: float | None = None,
                  field_name: str = "--field") -> list[float]:
    """Offsets in ppm from ``'-300,-3.5,0,3.5ppm'`` (or ``...Hz`` with a field in T).

    A list of numbers is taken as ppm. ``name`` and ``field_name`` name the
    option and the field strength in messages.
    """
    if isinstance(text, (list, tuple, np.ndarray)):
        try:
            return [float(v) for v in np.asarray(text, dtype=np.float64).reshape(-1)]
        except (TypeError, ValueError):
            raise ProtocolError(f"{name} {text!r}: give numbers in ppm") from None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return [float(text)]
    m = re.fullmatch(r"\s*([-+0-9.eE,\s]+?)\s*(ppm|Hz|hz)?\s*", text if isinstance(text, str) else "")
    if not m:
        raise ProtocolError(f"{name} {text!r}: not a comma-separated list of numbers with a unit "
                            "(e.g. '-300,-3.5,0,3.5ppm')")
    unit = m.group(2)
    if unit is None:
        raise ProtocolError(f"{name} {text!r}: give the unit, ppm or Hz (e.g. '0.4,2,3.5ppm')")
    try:
        values = [float(v) for v in re.split(r"[,\s]+", m.group(1).strip()) if v]
    except ValueError:
        raise ProtocolError(f"{name} {text!r}: not a comma-separated list of numbers") from None
    if not values:
        raise ProtocolError(f"{name} {text!r}: no value given")
    if unit.lower() == "hz":
        if field is None:
            raise ProtocolError(f"{name} in Hz need the field strength to convert to ppm; give "
                                f"{field_name}")
        values = [v / (PROTON_HZ_PER_PPM_PER_T * field) for v in values]
    return values


def sidecar_offsets(meta, field, where, *, field_name: str = "--field"):
    """Offsets in ppm from a BIDS sidecar (``SaturationOffsets`` in ppm or
    ``SaturationOffsetsHz``), or None when it has neither."""
    if "SaturationOffsets" in meta:
        values = meta["SaturationOffsets"]
        unit = "ppm"
    elif "SaturationOffsetsHz" in meta:
        values = meta["SaturationOffsetsHz"]
        unit = "Hz"
    else:
        return None
    try:
        values = [float(v) for v in np.atleast_1d(values)]
    except (TypeError, ValueError):
        raise ProtocolError(f"{where}: sidecar SaturationOffsets must be a list of numbers") from None
    if unit == "Hz":
        if field is None:
            raise ProtocolError(f"{where}: SaturationOffsetsHz need the field strength; give "
                                f"{field_name}")
        values = [v / (PROTON_HZ_PER_PPM_PER_T * field) for v in values]
    return values


def _m0_index_option(value, name):
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return [int(value)]
    try:
        if isinstance(value, (list, tuple)):
            return [int(v) for v in value]
        return [int(v) for v in re.split(r"[,\s]+", str(value).strip()) if v]
    except (TypeError, ValueError):
        raise ProtocolError(f"{name} {value!r}: give 0-based volume indices, e.g. 0 or 0,61") from None


def fit_cest_volume(volume, *, mask=None, method=None, names=None, progress=None, **options):
    """Fit a loaded CEST series (``oncomri map cest``, study ``maps``).

    Offsets come from ``offsets`` or the sidecar (``SaturationOffsets`` in
    ppm or ``SaturationOffsetsHz``); the field from ``field`` or the sidecar
    ``MagneticFieldStrength``. The model and its references: :class:`CESTModel`.

    Parameters
    ----------
    volume : Volume
        4D series, one volume per saturation offset (M0 included).
    mask : bool ndarray, optional
    method : {'mtrasym', 'lorentzian'}, optional
    names : None, str or callable
        How messages name the options (:class:`oncomri.models.volume_fit.Options`).
    **options
        ``offsets`` (list in ppm, or ``'-300,...,6ppm'`` / ``'...Hz'``),
        ``m0_index`` (0-based index or list; default every |offset| >= 100
        ppm), ``field`` (T, or ``'3T'``), ``b0_correction`` (one of
        :data:`B0_CORRECTIONS`; default ``map`` with ``b0_map``, ``wassr``
        with ``wassr``, else ``minimum``), ``b0_map`` (array on the grid) and
        ``b0_unit`` (``'Hz'`` or ``'ppm'``), ``wassr`` (4D array on the grid)
        and ``wassr_offsets`` (ppm list or text), ``offsets_of_interest``
        (ppm, default ``'0.4,2,3.5ppm'``), ``pools`` (names, water first).

    Returns
    -------
    VolumeFit
    """
    import time

    from .. import __version__
    from .volume_fit import Options, VolumeFit

    opts = Options({**options, "method": method}, CEST_VOLUME_OPTIONS, model="cest", names=names)
    data = volume.data
    where = str(volume.sources[0]) if volume.sources else "input"
    if data.ndim != 4 or data.shape[3] < 4:
        raise ValidationError(f"{where}: a CEST series needs one volume per offset on the 4th "
                              f"axis, got shape {data.shape}")
    meta = volume.meta
    field_name = opts.name("field")
    if opts.given("field"):
        value = opts["field"]
        m = re.fullmatch(r"\s*([0-9.eE+]+)\s*(T)?\s*", value) if isinstance(value, str) else None
        try:
            field = float(m.group(1)) if m else float(value) if not isinstance(value, str) else float("nan")
        except (TypeError, ValueError):
            field = float("nan")
        if not (np.isfinite(field) and field > 0):
            raise ProtocolError(f"{field_name} {value!r}: give the field strength in tesla, e.g. 3T")
    else:
        field = meta.get("MagneticFieldStrength")
        if field is not None and not (np.isfinite(float(field)) and float(field) > 0):
            raise ProtocolError(f"{where}: MagneticFieldStrength {field!r}: give the field "
                                f"strength in tesla with {field_name}, e.g. 3T")
        field = None if field is None else float(field)
    if opts.given("offsets"):
        offsets = parse_offsets(opts["offsets"], name=opts.name("offsets"), field=field,
                                field_name=field_name)
        offsets_source = opts.name("offsets")
    else:
        offsets = sidecar_offsets(meta, field, where, field_name=field_name)
        if offsets is None:
            raise ProtocolError(
                f"{where}: no saturation offsets; give {opts.name('offsets')} (e.g. "
                "'-300,-6,...,6ppm'), or SaturationOffsets (ppm) in the sidecar")
        offsets_source = f"{where} sidecar"
    n = data.shape[3]
    if len(offsets) != n:
        raise ProtocolError(
            f"{offsets_source}: {len(offsets)} offsets for {n} volumes of {where}; "
            "give one offset per volume, M0 included")
    protocol = CESTProtocol(offsets, m0_index=_m0_index_option(opts["m0_index"], opts.name("m0_index")),
                            magnetic_field_strength=field,
                            saturation_b1=meta.get("SaturationB1"),
                            saturation_duration=meta.get("SaturationDuration"),
                            source=offsets_source)
    b0_correction = opts.choice("b0_correction", B0_CORRECTIONS) or (
        "map" if opts.given("b0_map") else "wassr" if opts.given("wassr") else "minimum")
    fit_kwargs = {}
    wassr_offsets = None
    if b0_correction == "map":
        if not opts.given("b0_map"):
            raise ValidationError(f"{opts.name('b0_correction')} map needs {opts.name('b0_map')}"
                                  + (" FILE" if names is None else ""))
        unit = opts["b0_unit"]
        if unit not in ("Hz", "ppm"):
            raise ProtocolError(f"{opts.name('b0_map')}: its unit is unknown; give "
                                f"{opts.name('b0_unit')} Hz or ppm")
        b0 = np.asarray(opts["b0_map"])
        fit_kwargs.update(b0_map=b0[..., 0] if b0.ndim == 4 else b0, b0_unit=unit)
    elif opts.given("b0_map"):
        raise ValidationError(f"{opts.name('b0_map')} given with {opts.name('b0_correction')} "
                              f"{b0_correction}; drop one")
    if b0_correction == "wassr":
        if not opts.given("wassr"):
            raise ValidationError(f"{opts.name('b0_correction')} wassr needs {opts.name('wassr')}"
                                  + (" FILE" if names is None else ""))
        if not opts.given("wassr_offsets"):
            raise ProtocolError(f"{opts.name('wassr')}: no offsets; give "
                                f"{opts.name('wassr_offsets')} (e.g. '-1,-0.9,...,1ppm')")
        wassr_offsets = parse_offsets(opts["wassr_offsets"], name=opts.name("wassr_offsets"),
                                      field=field, field_name=field_name)
        wassr = np.asarray(opts["wassr"])
        if wassr.ndim != 4 or wassr.shape[3] != len(wassr_offsets):
            raise ProtocolError(f"{opts.name('wassr')}: {len(wassr_offsets)} WASSR offsets for "
                                f"data of shape {wassr.shape}; give one offset per volume")
        fit_kwargs["wassr"] = wassr
    elif opts.given("wassr"):
        raise ValidationError(f"{opts.name('wassr')} given with {opts.name('b0_correction')} "
                              f"{b0_correction}; drop one")
    ooi = parse_offsets(opts["offsets_of_interest"], name=opts.name("offsets_of_interest"),
                        field=field, field_name=field_name)
    pools = opts["pools"]
    if isinstance(pools, str):
        pools = [p.strip() for p in pools.split(",") if p.strip()]
    model = CESTModel(protocol, method=opts.choice("method", tuple(_METHODS)),
                      b0_correction=b0_correction, offsets_of_interest=ooi, pools=pools,
                      wassr_protocol=wassr_offsets)
    start = time.perf_counter()
    fit = model.fit(data, mask=mask, progress=progress, **fit_kwargs)
    seconds = time.perf_counter() - start
    common = {
        "Software": f"oncomri {__version__}",
        "Model": "cest",
        "Method": model.method,
        "MethodReference": METHOD_REFERENCES[model.method],
        "B0Correction": B0_REFERENCES[b0_correction],
        "SaturationOffsets": protocol.offsets.tolist(),
        "SaturationOffsetUnits": "ppm",
        "M0Index": list(protocol.m0_indices),
        "MagneticFieldStrength": protocol.magnetic_field_strength,
        "SaturationB1": protocol.saturation_b1,
        "SaturationDuration": protocol.saturation_duration,
    }
    if model.method == "lorentzian":
        common["Pools"] = [p.name for p in model.pools]
    counts = fit.summary()
    fitted = sum(v for k, v in counts.items() if k in ("ok", "not_converged", "at_bound"))
    summary = (f"cest ({model.method}, B0 {b0_correction}): {fitted:,} voxels fitted, "
               f"{counts.get('failed', 0) + counts.get('invalid_data', 0):,} failures, "
               f"{counts.get('masked', 0):,} masked out, {seconds:.2f} s")
    return VolumeFit(fit=fit, model=model, maps=fit.output_maps(), provenance=common,
                     summary=summary)
