"""Dynamic susceptibility contrast (DSC) perfusion: ΔR2*(t), CBV, CBF, MTT.

A DSC series is a train of T2*-weighted gradient-echo (or spin-echo) images
acquired while a bolus of a paramagnetic agent (gadolinium chelate, or
ferumoxytol) passes through the tissue. This module turns it into maps:

``ΔR2*(t)``
    :func:`delta_r2star_curves`: ``ΔR2*(t) = -ln(S(t) / S0) / TE`` (s⁻¹), with
    ``S0`` the mean of the pre-bolus (baseline) frames.
``CBV``
    area under the (leakage-corrected) ΔR2* curve by the trapezoid rule over
    the **whole series** (default) or a given time window
    (:func:`trapezoid_area`); with an arterial input function (AIF) it is
    divided by the area of the AIF and becomes a blood volume fraction
    (mL blood per mL tissue), else it stays a relative area (s⁻¹·s).
``leakage correction``
    Boxerman–Schmainda–Weisskoff (BSW): each voxel's ΔR2* is fitted by linear
    least squares as ``ΔR2*(t) = K1 ΔR2*_ref(t) - K2 ∫₀ᵗ ΔR2*_ref(τ) dτ``,
    with ``ΔR2*_ref`` the average over non-enhancing voxels, and the corrected
    curve is ``ΔR2*(t) + K2 ∫₀ᵗ ΔR2*_ref(τ) dτ`` (:func:`bsw_leakage_fit`).
    Boxerman JL, Schmainda KM, Weisskoff RM. Relative cerebral blood volume
    maps corrected for contrast agent extravasation significantly correlate
    with glioma tumor grade, whereas uncorrected maps do not. AJNR Am J
    Neuroradiol 2006;27:859-867. K2 > 0: T1-dominant leakage (the signal
    rises, ΔR2* is underestimated); K2 < 0: T2*-dominant leakage. BSW
    assumes each voxel's intravascular curve has the shape of the reference
    curve: a voxel whose MTT differs gets a spurious K2 (in the tests a
    leak-free voxel with MTT 3 s against a 4 s reference gains +9 % CBV).
    With ferumoxytol, which stays intravascular, K2 should be ~0 and the
    correction can be switched off.
``CBF, MTT``
    deconvolution of the tissue curve by the AIF: ``c(t) = CBF (c_a ⊗ R)(t)``
    solved by truncated singular value decomposition. Methods
    (:attr:`DSCModel.methods`):

    - ``osvd`` (default): block-circulant deconvolution (the AIF and the
      tissue curve zero-padded to 2N, which makes the result insensitive to
      a delay of the tissue bolus relative to the AIF) with the truncation
      threshold chosen per voxel as the smallest one whose residue has an
      oscillation index ``O = (1/L) (1/max f) Σ_{k=2}^{L-1} |f_k - 2 f_{k-1} + f_{k-2}|``
      below ``oscillation_index`` (0.095 in the paper). Wu O, Østergaard L,
      Weisskoff RM, Benner T, Rosen BR, Sorensen AG. Tracer arrival
      timing-insensitive technique for estimating flow in MR perfusion-weighted
      imaging using singular value decomposition with a block-circulant
      deconvolution matrix. Magn Reson Med 2003;50:164-174. (The form of O and
      the value 0.095 are written from memory, not checked against the paper.)
    - ``csvd``: block-circulant with a fixed threshold (``svd_threshold``,
      default 0.2 of the largest singular value).
    - ``ssvd``: the standard (lower-triangular Toeplitz) matrix with a fixed
      threshold, Østergaard L, Weisskoff RM, Chesler DA, Gyldensted C, Rosen
      BR. High resolution measurement of cerebral blood flow using
      intravascular tracer bolus passages. Part I. Magn Reson Med
      1996;36:715-725.

    The convolution matrix uses the rectangle rule, ``A[i, j] = Δt c_a(t_{i-j})``
    (evenly spaced frames are required). ``CBF = k_H max_t R(t)`` in s⁻¹
    (mL blood / mL tissue / s; multiply by 6000 for mL/100 mL/min) and
    ``MTT = CBV / CBF`` in s (central volume theorem). Truncated SVD
    underestimates CBF even on noiseless data, the more so the shorter the
    MTT relative to the frame interval: on a continuous-time gamma-variate
    bolus sampled every 1 s, noiseless oSVD gives 75, 81, 88 and 92 % of the
    true CBF for MTT 3, 4, 6 and 8 s (the rectangle rule, not the
    truncation: the threshold chosen there is ~0.3 % of the largest singular
    value); on data built with the rectangle rule itself it is exact.
``rCBV``
    CBV divided by the mean CBV in a normal-appearing reference region
    (:func:`normalise_to_reference`); the value compared with the
    ferumoxytol rCBV cut-off 1.75 by :func:`oncomri.roi.classify_rcbv`.
``steady-state blood volume``
    :func:`steady_state_blood_volume`: with a blood-pool agent at steady
    state (ferumoxytol), BV = ΔR2*_tissue / ΔR2*_blood from R2* maps before and
    after injection.

Only ΔR2* is used as the concentration surrogate, assumed proportional to
the agent concentration with the same constant in arteries and tissue; the
quadratic ΔR2*-concentration relation of whole blood and the haematocrit
difference between large and small vessels are not modelled (the latter can
be given as ``hematocrit_factor`` = (1 - Hct_large) / (1 - Hct_small)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from ..core.errors import ProtocolError, ValidationError
from ..core.protocols import DynamicProtocol
from ..fitting import DEFAULT_CHUNK_SIZE, STATUS_DESCRIPTIONS, Status, as_mask, fit_voxelwise
from .base import Fit, Model, result_dtype

__all__ = [
    "DSCModel",
    "DSCFit",
    "delta_r2star_curves",
    "trapezoid_area",
    "cumulative_trapezoid",
    "bsw_leakage_fit",
    "oscillation_index",
    "deconvolve_svd",
    "normalise_to_reference",
    "steady_state_blood_volume",
    "dynamic_protocol",
    "DEFAULT_OSCILLATION_INDEX",
    "fit_dsc_volume",
    "DSC_VOLUME_OPTIONS",
]

#: Oscillation-index threshold of oSVD (Wu et al., MRM 2003;50:164; value from
#: memory, not checked against the paper).
DEFAULT_OSCILLATION_INDEX = 0.095

#: Fixed truncation threshold of cSVD/sSVD, as a fraction of the largest
#: singular value (0.2 as used by Østergaard et al., MRM 1996;36:715 for their
#: SNR; from memory).
DEFAULT_SVD_THRESHOLD = 0.2

#: Deconvolution methods (module docstring).
_METHODS = {"osvd": "osvd", "csvd": "csvd", "ssvd": "ssvd"}

#: Frame spacing tolerance for deconvolution (relative to the mean interval).
_EVEN_RTOL = 0.02


# --------------------------------------------------------------------------
# Protocol helpers
# --------------------------------------------------------------------------

def dynamic_protocol(times, *, source: str = "frame times") -> DynamicProtocol:
    """A :class:`DynamicProtocol` from frame times in s, with a short message if they
    do not increase (names the first offending frame)."""
    if isinstance(times, DynamicProtocol):
        return times
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    if t.size >= 2 and np.all(np.isfinite(t)):
        d = np.diff(t)
        bad = np.flatnonzero(d <= 0)
        if bad.size:
            i = int(bad[0]) + 1
            raise ProtocolError(
                f"{source}: frame times must increase, but frame {i} ({t[i]:g} s) is not "
                f"after frame {i - 1} ({t[i - 1]:g} s); fix the times or the order of the dynamics")
    return DynamicProtocol(t, source=source)


def _echo_time(te) -> float:
    try:
        te = float(te)
    except (TypeError, ValueError):
        raise ProtocolError(f"echo_time must be one number in s, got {te!r}") from None
    if not math.isfinite(te) or te <= 0:
        raise ProtocolError(f"echo_time must be a positive number in s, got {te!r}")
    if te > 1.0:
        raise ProtocolError(f"echo_time {te:g} s looks like milliseconds; give it in s (e.g. 0.03)")
    if te < 1e-3:
        raise ProtocolError(
            f"echo_time {te:g} s is shorter than 1 ms, implausible for DSC; give it in s "
            "(e.g. 0.03) or, on the command line, with its unit (30ms)")
    return te


# --------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------

def delta_r2star_curves(signal, echo_time, *, baseline_frames) -> np.ndarray:
    """``ΔR2*(t) = -ln(S(t) / S0) / TE`` in s⁻¹, S0 = mean of the baseline frames.

    Parameters
    ----------
    signal : ndarray (..., n_frames)
        Magnitude signal, frames on the last axis, positive.
    echo_time : float
        TE in s.
    baseline_frames : int or sequence of int
        The first ``n`` frames, or the indices of the pre-bolus frames.

    Returns
    -------
    ndarray (..., n_frames), float64. Non-positive samples give NaN.
    """
    s = np.asarray(signal, dtype=np.float64)
    te = _echo_time(echo_time)
    idx = _baseline_index(baseline_frames, s.shape[-1])
    s0 = s[..., idx].mean(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = -np.log(s / s0) / te
    out[~np.isfinite(out)] = np.nan
    return out


def _baseline_index(baseline_frames, n_frames: int) -> np.ndarray:
    if isinstance(baseline_frames, (int, np.integer)):
        n = int(baseline_frames)
        if not 1 <= n < n_frames:
            raise ValidationError(
                f"baseline_frames={n}: need between 1 and {n_frames - 1} pre-bolus frames")
        return np.arange(n)
    idx = np.asarray(baseline_frames).reshape(-1)
    if idx.size == 0 or idx.dtype.kind not in "iu":
        raise ValidationError(
            f"baseline_frames must be a number of frames or a list of frame indices, got {baseline_frames!r}")
    if idx.min() < 0 or idx.max() >= n_frames or np.unique(idx).size != idx.size:
        raise ValidationError(
            f"baseline_frames {idx.tolist()} must be distinct frame indices in 0..{n_frames - 1}")
    return np.sort(idx)


def trapezoid_area(curves, times, *, window=None) -> np.ndarray:
    """Area under ``curves`` (..., n) by the trapezoid rule, over the frames whose time
    lies in ``window`` = (start, stop) in s (default: the whole series)."""
    t = np.asarray(times, dtype=np.float64)
    y = np.asarray(curves, dtype=np.float64)
    if window is not None:
        sel = (t >= window[0]) & (t <= window[1])
        t, y = t[sel], y[..., sel]
    dt = np.diff(t)
    return 0.5 * ((y[..., 1:] + y[..., :-1]) * dt).sum(axis=-1)


def cumulative_trapezoid(curve, times) -> np.ndarray:
    """``∫₀ᵗ curve`` at each frame by the trapezoid rule (0 at the first frame)."""
    t = np.asarray(times, dtype=np.float64)
    y = np.asarray(curve, dtype=np.float64)
    inc = 0.5 * (y[..., 1:] + y[..., :-1]) * np.diff(t)
    out = np.zeros_like(y)
    out[..., 1:] = np.cumsum(inc, axis=-1)
    return out


def bsw_leakage_fit(curves, reference_curve, times):
    """Boxerman–Schmainda–Weisskoff leakage fit, vectorised over voxels.

    Solves ``ΔR2*(t) ≈ K1 ΔR2*_ref(t) - K2 ∫₀ᵗ ΔR2*_ref`` by linear least squares
    over all frames for every row of ``curves`` (Boxerman et al., AJNR
    2006;27:859), the integral by the trapezoid rule.

    Parameters
    ----------
    curves : ndarray (n, n_frames)
        ΔR2* in s⁻¹.
    reference_curve : ndarray (n_frames,)
        Average ΔR2* of non-enhancing tissue, s⁻¹.
    times : ndarray (n_frames,)
        Frame times in s.

    Returns
    -------
    k1 : ndarray (n,), dimensionless
    k2 : ndarray (n,), s⁻¹
    corrected : ndarray (n, n_frames)
        ``curves + K2 ∫₀ᵗ ΔR2*_ref``, s⁻¹.
    """
    y = np.asarray(curves, dtype=np.float64)
    ref = np.asarray(reference_curve, dtype=np.float64)
    cum = cumulative_trapezoid(ref, times)
    design = np.column_stack([ref, -cum])
    if np.linalg.matrix_rank(design) < 2:
        raise ValidationError(
            "the reference ΔR2* curve shows no bolus (it is flat or its integral is "
            "proportional to it); check the baseline frames and the leakage reference voxels")
    pinv = np.linalg.pinv(design)  # (2, n_frames)
    coef = y @ pinv.T
    k1, k2 = coef[:, 0], coef[:, 1]
    return k1, k2, y + k2[:, None] * cum


@numba.njit(cache=True)
def _oscillation(f, L):
    fmax = -np.inf
    for k in range(L):
        if f[k] > fmax:
            fmax = f[k]
    if not fmax > 0.0:
        return np.inf, fmax
    s = 0.0
    for k in range(2, L):
        s += abs(f[k] - 2.0 * f[k - 1] + f[k - 2])
    return s / (L * fmax), fmax


def oscillation_index(residue) -> np.ndarray:
    """Oscillation index of residue functions (..., L) (Wu et al., MRM 2003;50:164):
    ``(1/L) (1/max f) Σ_{k=2}^{L-1} |f_k - 2 f_{k-1} + f_{k-2}|`` (inf where max f <= 0)."""
    f = np.asarray(residue, dtype=np.float64)
    L = f.shape[-1]
    fmax = f.max(axis=-1)
    s = np.abs(f[..., 2:] - 2 * f[..., 1:-1] + f[..., :-2]).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(fmax > 0, s / (L * fmax), np.inf)


@numba.njit(parallel=True, cache=True)
def _osvd_kernel(V, coef, full, cuts, oi, out_max, out_cut, out_ok):
    """oSVD search. ``V`` (n_components, L), sorted by singular value: the residue
    keeping the first m components is ``coef[i, :m] @ V[:m]``; ``full[i]`` is it
    with all of them. Per voxel: the largest allowed m (``cuts``, descending)
    whose residue has an oscillation index <= oi, and the residue maximum there."""
    n = coef.shape[0]
    ncol, L = V.shape
    ncut = cuts.shape[0]
    for i in numba.prange(n):
        f = full[i].copy()
        kept = ncol
        found = False
        fmax = -np.inf
        for ci in range(ncut):
            target = cuts[ci]
            for j in range(target, kept):
                c = coef[i, j]
                if c != 0.0:
                    for k in range(L):
                        f[k] -= V[j, k] * c
            kept = target
            o, fmax = _oscillation(f, L)
            if o <= oi:
                found = True
                break
        out_max[i] = fmax
        out_cut[i] = kept
        out_ok[i] = found


def _convolution_matrix(aif, dt) -> np.ndarray:
    """Lower-triangular Toeplitz matrix ``A[i, j] = dt aif[i - j]`` (rectangle rule)."""
    a = np.asarray(aif, dtype=np.float64)
    i = np.arange(a.size)
    lag = i[:, None] - i[None, :]
    return dt * np.where(lag >= 0, a[np.clip(lag, 0, None)], 0.0)


class _Deconvolver:
    """Truncated-SVD deconvolution by one AIF, set up once and applied to chunks.

    The block-circulant matrix (AIF zero-padded to L = 2N) is diagonalised
    by the DFT: its singular values are ``|λ_k|`` with ``λ = dt FFT(aif_padded)``
    and its truncated pseudo-inverse is a Fourier filter keeping the
    frequencies with ``|λ_k| >= P max|λ|``. The residue is therefore built
    from a real Fourier basis (a cosine and a sine per frequency, both with
    the singular value of that frequency), which gives exactly the SVD
    solution of Wu et al. without an SVD per fit.
    """

    def __init__(self, aif, dt, *, method, oscillation_index, svd_threshold):
        a = np.asarray(aif, dtype=np.float64).reshape(-1)
        self.n = a.size
        self.method = method
        self.oi = float(oscillation_index)
        self.p = float(svd_threshold)
        if method == "ssvd":
            U, s, Vt = np.linalg.svd(_convolution_matrix(a, dt))
            if not s[0] > 0:
                raise ValidationError("the arterial input function is zero; check the AIF mask or curve")
            keep = s >= self.p * s[0]
            self.threshold = float((s[keep] / s[0]).min())
            self.pinv = (Vt[keep].T / s[keep]) @ U[:, keep].T  # (N, N)
            return
        L = 2 * self.n
        lam = dt * np.fft.rfft(a, n=L)  # bins 0..L/2
        mag = np.abs(lam)
        if not mag.max() > 0:
            raise ValidationError("the arterial input function is zero; check the AIF mask or curve")
        rel = mag / mag.max()
        usable = rel > 1e-12
        self.L = L
        self.inv_lam = np.where(usable, 1.0 / np.where(usable, lam, 1.0), 0.0)
        order = np.argsort(-rel, kind="stable")
        order = order[usable[order]]
        self.order = order
        self.rel_sorted = rel[order]
        nn = np.arange(L)
        basis = []
        for k in order:  # real basis: irfft of a unit at bin k (real and imaginary part)
            w = (1.0 if k == 0 or k == L // 2 else 2.0) / L
            ang = 2 * np.pi * k * nn / L
            basis.append(w * np.cos(ang))
            basis.append(-w * np.sin(ang))
        self.basis = np.ascontiguousarray(np.array(basis))  # (2 * n_bins, L)
        # allowed cuts: numbers of kept bins between distinct singular values
        r = self.rel_sorted
        nb = r.size
        ks = [k for k in range(1, nb + 1) if k == nb or r[k - 1] > r[k] * (1 + 1e-9)]
        self.cuts_bins = np.array(sorted(ks, reverse=True), dtype=np.int64)
        if method == "csvd":
            self.kept_fixed = int(np.count_nonzero(r >= self.p))

    def __call__(self, curves):
        c = np.asarray(curves, dtype=np.float64)
        n = c.shape[0]
        status = np.full(n, Status.OK, np.uint8)
        if self.method == "ssvd":
            fmax = (c @ self.pinv.T).max(axis=1)
            threshold = np.full(n, self.threshold)
        else:
            X = np.fft.rfft(c, n=self.L, axis=1) * self.inv_lam  # (n, bins)
            Xs = X[:, self.order]
            coef = np.empty((n, 2 * Xs.shape[1]))
            coef[:, 0::2] = Xs.real
            coef[:, 1::2] = Xs.imag
            if self.method == "osvd":
                fmax = np.empty(n)
                kept = np.empty(n, np.int64)
                ok = np.empty(n, np.bool_)
                full = np.fft.irfft(X, n=self.L, axis=1)
                _osvd_kernel(self.basis, np.ascontiguousarray(coef), full, 2 * self.cuts_bins,
                             self.oi, fmax, kept, ok)
                status[~ok] = Status.AT_BOUND
                threshold = self.rel_sorted[kept // 2 - 1]
            else:
                k = 2 * self.kept_fixed
                fmax = (coef[:, :k] @ self.basis[:k]).max(axis=1)
                threshold = np.full(n, self.rel_sorted[self.kept_fixed - 1])
        bad = ~(fmax > 0)
        status[bad] = Status.FAILED
        return np.where(bad, np.nan, fmax), threshold, status


def deconvolve_svd(curves, aif, dt, *, method: str = "osvd",
                   oscillation_index: float = DEFAULT_OSCILLATION_INDEX,
                   svd_threshold: float = DEFAULT_SVD_THRESHOLD):
    """Scaled residue maximum ``CBF = max_t R(t)`` of ``curves = (aif ⊗ R)`` by truncated SVD.

    Parameters
    ----------
    curves : ndarray (n, n_frames)
        Tissue ΔR2* (s⁻¹), evenly spaced frames.
    aif : ndarray (n_frames,)
        Arterial ΔR2* (s⁻¹), same frames.
    dt : float
        Frame interval in s.
    method : {'osvd', 'csvd', 'ssvd'}
        See the module docstring (Wu et al. 2003; Østergaard et al. 1996).
    oscillation_index : float
        oSVD's threshold on the oscillation index of the residue.
    svd_threshold : float
        cSVD/sSVD's fixed threshold, fraction of the largest singular value.

    Returns
    -------
    cbf : ndarray (n,), s⁻¹ (NaN where the residue has no positive value)
    threshold : ndarray (n,)
        The truncation threshold used (fraction of the largest singular value).
    status : ndarray (n,), uint8
        OK; AT_BOUND where oSVD found no threshold meeting the oscillation
        index (the strongest truncation is used); FAILED where max R <= 0.
    """
    if method not in _METHODS:
        raise ValidationError(f"method {method!r} is not known; choose one of: {', '.join(_METHODS)}")
    deconv = _Deconvolver(aif, float(dt), method=method, oscillation_index=oscillation_index,
                          svd_threshold=svd_threshold)
    return deconv(np.atleast_2d(curves))


def normalise_to_reference(values, reference_mask, *, name: str = "CBV") -> tuple[np.ndarray, float]:
    """``values / mean(values in reference_mask)`` (e.g. rCBV from CBV), ignoring non-finite
    voxels of the reference; returns the normalised map and the reference mean."""
    v = np.asarray(values)
    ref = as_mask(reference_mask, v.shape, name="reference_mask")
    sel = v[ref]
    sel = sel[np.isfinite(sel)]
    if sel.size == 0:
        raise ValidationError(
            f"reference_mask holds no voxel with a fitted {name}; draw it inside the fitted mask "
            "on normal-appearing tissue")
    mean = float(sel.mean(dtype=np.float64))
    if not mean > 0:
        raise ValidationError(
            f"mean {name} in reference_mask is {mean:g}, not positive; choose normal-appearing tissue "
            "that the bolus passes through")
    return (v / mean).astype(v.dtype if v.dtype.kind == "f" else np.float64), mean


def steady_state_blood_volume(r2star_pre, r2star_post, *, blood_delta_r2star=None,
                              blood_mask=None) -> np.ndarray:
    """Steady-state blood volume fraction from R2* before and after a blood-pool agent.

    ``BV = ΔR2*_tissue / ΔR2*_blood`` with ``ΔR2* = R2*_post - R2*_pre`` (s⁻¹),
    the blood value given or averaged over ``blood_mask`` (e.g. the sagittal
    sinus). Used with ferumoxytol at steady state, e.g. Christen T, Ni W, Qiu
    D, et al. High-resolution cerebral blood volume imaging in humans using
    the blood pool contrast agent ferumoxytol. Magn Reson Med 2013;70:705-710
    (cited from memory, not checked against the paper). It assumes ΔR2* is
    proportional to the agent concentration with the same constant in blood
    and tissue, which static-dephasing theory (Yablonskiy & Haacke, MRM
    1994;32:749) only approximates: read the result as a blood-volume index.

    Parameters
    ----------
    r2star_pre, r2star_post : ndarray
        R2* maps in s⁻¹ on the same grid.
    blood_delta_r2star : float, optional
        ΔR2* of blood in s⁻¹.
    blood_mask : bool ndarray, optional
        Blood voxels; used if ``blood_delta_r2star`` is not given.

    Returns
    -------
    ndarray, dimensionless fraction (mL blood / mL tissue)
    """
    pre = np.asarray(r2star_pre, dtype=np.float64)
    post = np.asarray(r2star_post, dtype=np.float64)
    if pre.shape != post.shape:
        raise ValidationError(
            f"r2star_pre {pre.shape} and r2star_post {post.shape} differ; register them onto one grid")
    delta = post - pre
    if (blood_delta_r2star is None) == (blood_mask is None):
        raise ValidationError("give exactly one of blood_delta_r2star (s⁻¹) and blood_mask")
    if blood_mask is not None:
        m = as_mask(blood_mask, pre.shape, name="blood_mask")
        vals = delta[m]
        vals = vals[np.isfinite(vals)]
        if vals.size == 0:
            raise ValidationError("blood_mask holds no voxel with finite R2* before and after")
        blood = float(vals.mean())
    else:
        blood = float(blood_delta_r2star)
    if not (math.isfinite(blood) and blood > 0):
        raise ValidationError(
            f"blood ΔR2* is {blood:g} s⁻¹; it must be positive (is the post-contrast map second?)")
    return delta / blood


# --------------------------------------------------------------------------
# Model and fit
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class _Curves:
    """Curves shared by every voxel of one fit (s⁻¹)."""

    reference: np.ndarray
    reference_integral: np.ndarray
    aif: np.ndarray | None


class DSCModel(Model):
    """DSC perfusion: CBV with BSW leakage correction, CBF/MTT by SVD deconvolution.

    Parameters
    ----------
    protocol : DynamicProtocol or array_like
        Frame times in s (strictly increasing).
    echo_time : float
        TE in s.
    method : {'osvd', 'csvd', 'ssvd'}
        Deconvolution method (module docstring); used only when an AIF is given.
    baseline_frames : int, sequence of int, or None
        Pre-bolus frames for S0: the first ``n``, or their indices. None: the
        frames before bolus arrival on the mask-averaged signal, arrival
        being the first frame whose mean signal is below the level of the
        first frames by more than 10 % of the bolus dip; the frame just
        before arrival is left out.
    leakage_correction : bool
        Apply the BSW correction to CBV, CBF and MTT (K1, K2 are always fitted).
    integration_window : (float, float) or None
        Start and stop time in s of the CBV integral; None integrates the
        whole series (what we use with leakage correction).
    oscillation_index : float
        oSVD threshold (default 0.095, Wu et al. 2003).
    svd_threshold : float
        cSVD/sSVD threshold (default 0.2).
    hematocrit_factor : float
        k_H multiplying CBV and CBF (default 1: no haematocrit correction).
    tail_frames : int
        Frames at the end of the series used to find enhancing voxels.
    chunk_size : int
        Voxels per chunk.
    """

    methods = _METHODS
    default_method = "osvd"

    def __init__(self, protocol, *, echo_time, method=None, baseline_frames=None,
                 leakage_correction: bool = True, integration_window=None,
                 oscillation_index: float = DEFAULT_OSCILLATION_INDEX,
                 svd_threshold: float = DEFAULT_SVD_THRESHOLD, hematocrit_factor: float = 1.0,
                 tail_frames: int = 10, chunk_size: int = DEFAULT_CHUNK_SIZE):
        if callable(method):
            raise ValidationError("DSCModel takes a method name: one of " + ", ".join(_METHODS))
        super().__init__(dynamic_protocol(protocol), method=method)
        n = self.protocol.n_measurements
        if n < 4:
            raise ProtocolError(f"{self.protocol.source}: a DSC series needs at least 4 frames, got {n}")
        self.echo_time = _echo_time(echo_time)
        self.baseline_frames = (None if baseline_frames is None
                                else _baseline_index(baseline_frames, n))
        self.leakage_correction = bool(leakage_correction)
        if integration_window is not None:
            w0, w1 = (float(v) for v in integration_window)
            t = self.protocol.times
            if not (w0 < w1) or np.count_nonzero((t >= w0) & (t <= w1)) < 2:
                raise ValidationError(
                    f"integration_window {(w0, w1)} s must contain at least two frames "
                    f"(frames at {t[0]:g}..{t[-1]:g} s)")
            integration_window = (w0, w1)
        self.integration_window = integration_window
        if not (0 < oscillation_index < 1):
            raise ValidationError(f"oscillation_index must be in (0, 1), got {oscillation_index!r}")
        if not (0 < svd_threshold < 1):
            raise ValidationError(f"svd_threshold must be in (0, 1), got {svd_threshold!r}")
        if not (math.isfinite(hematocrit_factor) and hematocrit_factor > 0):
            raise ValidationError(f"hematocrit_factor must be positive, got {hematocrit_factor!r}")
        self.oscillation_index = float(oscillation_index)
        self.svd_threshold = float(svd_threshold)
        self.hematocrit_factor = float(hematocrit_factor)
        self.tail_frames = max(1, min(int(tail_frames), n // 4))
        self.chunk_size = int(chunk_size)

    @classmethod
    def fit_volume(cls, volume, *, mask=None, method=None, names=None, progress=None,
                   **options):
        """Fit a loaded DSC series from plain options: see :func:`fit_dsc_volume`."""
        return fit_dsc_volume(volume, mask=mask, method=method, names=names, progress=progress,
                              **options)

    # ---------------------------------------------------------------- helpers

    @property
    def frame_interval(self) -> float | None:
        """The frame interval in s if the frames are evenly spaced (2 %), else None."""
        d = np.diff(self.protocol.times)
        return float(d.mean()) if np.allclose(d, d.mean(), rtol=_EVEN_RTOL, atol=0) else None

    def _delta(self, rows, baseline):
        s0 = rows[:, baseline].mean(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            d = -np.log(rows / s0[:, None]) / self.echo_time
        good = np.all(np.isfinite(d), axis=1) & (s0 > 0)
        return d, s0, good

    def _auto_baseline(self, data, mask):
        total = np.zeros(data.shape[-1])
        count = [0]

        def acc(rows, aux):
            total[:] += rows.sum(axis=0)
            count[0] += rows.shape[0]
            return {"status": np.zeros(rows.shape[0], np.uint8)}

        fit_voxelwise(data, acc, outputs={"status": np.uint8}, mask=mask,
                      chunk_size=self.chunk_size)
        if count[0] == 0:
            raise ValidationError("no voxel with valid signal inside the mask")
        m = total / count[0]
        p = int(np.argmin(m))
        if p < 3:
            raise ValidationError(
                f"the bolus dip of the mean signal is at frame {p}; too early to find pre-bolus "
                "frames, give baseline_frames (CLI: --baseline-frames)")
        level = float(np.median(m[:max(2, p // 2)]))
        below = np.flatnonzero(m[:p + 1] < level - 0.1 * (level - m[p]))
        arrival = int(below[0]) if below.size else p
        n = arrival - 1
        if n < 2:
            raise ValidationError(
                f"bolus arrives at frame {arrival}; fewer than two pre-bolus frames, "
                "give baseline_frames (CLI: --baseline-frames)")
        return np.arange(n)

    def _mean_delta(self, data, region, baseline, name):
        total = np.zeros(data.shape[-1])
        count = [0]

        def acc(rows, aux):
            d, _, good = self._delta(rows, baseline)
            total[:] += d[good].sum(axis=0)
            count[0] += int(good.sum())
            return {"status": np.zeros(rows.shape[0], np.uint8)}

        fit_voxelwise(data, acc, outputs={"status": np.uint8}, mask=region,
                      chunk_size=self.chunk_size)
        if count[0] == 0:
            raise ValidationError(f"{name} holds no voxel with valid (positive, finite) signal")
        return total / count[0], count[0]

    # ---------------------------------------------------------------- fit

    def fit(self, data, *, mask=None, aif=None, aif_mask=None, reference_mask=None,
            leakage_reference_mask=None, progress=None) -> "DSCFit":
        """Map CBV (and rCBV, CBF, MTT, K1, K2) for every voxel of ``data``.

        Parameters
        ----------
        data : ndarray (..., n_frames)
            Magnitude signal, frames on the last axis. Not modified.
        mask : bool ndarray of data.shape[:-1], optional
            Voxels to fit (the others are MASKED); also the "whole brain" whose
            non-enhancing voxels give the BSW reference curve.
        aif : array_like (n_frames,), optional
            Arterial ΔR2* in s⁻¹. Needed (or ``aif_mask``) for absolute CBV, CBF, MTT.
        aif_mask : bool ndarray, optional
            Arterial voxels: the AIF is the mean of their ΔR2* curves.
        reference_mask : bool ndarray, optional
            Normal-appearing tissue: rCBV = CBV / mean CBV there.
        leakage_reference_mask : bool ndarray, optional
            Non-enhancing voxels for the BSW reference curve. Default: the
            voxels of ``mask`` whose mean ΔR2* over the last ``tail_frames``
            frames lies within one standard deviation of the mean over all of
            them (our reading of BSW 2006's exclusion of enhancing voxels,
            not checked against the paper).
        progress : callable, optional
            ``progress(n_done, n_total)`` after each chunk of the final pass.
        """
        data = np.asanyarray(data)
        n = self.protocol.n_measurements
        if data.ndim < 2 or data.shape[-1] != n:
            raise ValidationError(
                f"data has shape {data.shape} but the protocol has {n} frames; "
                "put the dynamics on the last axis")
        if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
            raise ValidationError(f"data must be real magnitude values, got dtype {data.dtype}")
        spatial = data.shape[:-1]
        mask = as_mask(mask, spatial)
        if aif is not None and aif_mask is not None:
            raise ValidationError("give either aif (a ΔR2* curve) or aif_mask, not both")
        times = self.protocol.times
        baseline = self.baseline_frames
        if baseline is None:
            baseline = self._auto_baseline(data, mask)

        # the arterial input function
        aif_curve = None
        aif_voxels = 0
        if aif_mask is not None:
            am = as_mask(aif_mask, spatial, name="aif_mask")
            if not am.any():
                raise ValidationError("aif_mask is empty; mark arterial voxels")
            aif_curve, aif_voxels = self._mean_delta(data, am, baseline, "aif_mask")
        elif aif is not None:
            aif_curve = np.asarray(aif, dtype=np.float64).reshape(-1)
            if aif_curve.size != n or not np.all(np.isfinite(aif_curve)):
                raise ValidationError(
                    f"aif must hold {n} finite ΔR2* values (s⁻¹), one per frame; got {aif_curve.size}")
        if aif_curve is not None:
            if self.frame_interval is None:
                raise ProtocolError(
                    f"{self.protocol.source}: SVD deconvolution needs evenly spaced frames "
                    "(within 2 %); resample the series or fit without an AIF")
            area_aif = float(trapezoid_area(aif_curve, times, window=self.integration_window))
            if not area_aif > 0:
                raise ValidationError(
                    f"the AIF has area {area_aif:g} s⁻¹·s, not positive; check the AIF mask "
                    "(arterial voxels darken during the bolus) and the baseline frames")

        # the BSW reference curve: average ΔR2* of non-enhancing voxels
        if leakage_reference_mask is not None:
            lm = as_mask(leakage_reference_mask, spatial, name="leakage_reference_mask")
            if not lm.any():
                raise ValidationError("leakage_reference_mask is empty")
            ref_curve, n_ref = self._mean_delta(data, lm, baseline, "leakage_reference_mask")
        else:
            tail = slice(n - self.tail_frames, n)

            def tail_mean(rows, aux):
                d, _, good = self._delta(rows, baseline)
                return {"tail": np.where(good, d[:, tail].mean(axis=1), np.nan),
                        "status": np.zeros(rows.shape[0], np.uint8)}

            tm = fit_voxelwise(data, tail_mean, outputs={"tail": np.float64, "status": np.uint8},
                               mask=mask, chunk_size=self.chunk_size)["tail"]
            vals = tm[np.isfinite(tm)]
            if vals.size == 0:
                raise ValidationError("no voxel with valid (positive, finite) signal inside the mask")
            mu, sd = vals.mean(), vals.std()
            lm = np.isfinite(tm) & (np.abs(tm - mu) <= sd)
            ref_curve, n_ref = self._mean_delta(data, lm, baseline, "the non-enhancing voxels")
        curves = _Curves(ref_curve, cumulative_trapezoid(ref_curve, times), aif_curve)

        dtype = result_dtype(data)
        kh = self.hematocrit_factor
        deconv = None
        if aif_curve is not None:
            deconv = _Deconvolver(aif_curve, self.frame_interval, method=self.method,
                                  oscillation_index=self.oscillation_index,
                                  svd_threshold=self.svd_threshold)

        def fit_rows(rows, aux):
            d, s0, good = self._delta(rows, baseline)
            out = {"status": np.where(good, Status.OK, Status.FAILED).astype(np.uint8)}
            d = np.where(good[:, None], d, 0.0)
            k1, k2, corrected = bsw_leakage_fit(d, curves.reference, times)
            area_unc = trapezoid_area(d, times, window=self.integration_window)
            area_cor = trapezoid_area(corrected, times, window=self.integration_window)
            use = corrected if self.leakage_correction else d
            area = area_cor if self.leakage_correction else area_unc
            out.update(s0=s0, k1=k1, k2=k2)
            if aif_curve is not None:
                out["cbv"] = kh * area / area_aif
                out["cbv_uncorrected"] = kh * area_unc / area_aif
                out["cbv_corrected"] = kh * area_cor / area_aif
                cbf, thr, st = deconv(use)
                cbf = kh * cbf
                out["cbf"] = cbf
                out["svd_threshold"] = thr
                with np.errstate(divide="ignore", invalid="ignore"):
                    out["mtt"] = np.where(cbf > 0, out["cbv"] / cbf, np.nan)
                # a failed deconvolution (FAILED) keeps CBV; only CBF and MTT are NaN
                out["status"] = np.maximum(out["status"], st).astype(np.uint8)
            else:
                out["cbv"] = area
                out["cbv_uncorrected"] = area_unc
                out["cbv_corrected"] = area_cor
            for key, val in out.items():
                if key != "status":
                    out[key] = np.where(good, val, np.nan)
            return out

        names = ["s0", "k1", "k2", "cbv", "cbv_uncorrected", "cbv_corrected"]
        if aif_curve is not None:
            names += ["cbf", "mtt", "svd_threshold"]
        outputs = {k: dtype for k in names}
        outputs["status"] = np.uint8
        maps = fit_voxelwise(data, fit_rows, outputs=outputs, mask=mask,
                             chunk_size=self.chunk_size, progress=progress)
        # rows holding a zero sample pass fit_voxelwise's screen; the log
        # cannot take them, so fit_rows marks them FAILED.
        rcbv = ref_mean = None
        if reference_mask is not None:
            rcbv, ref_mean = normalise_to_reference(maps["cbv"], reference_mask)
        return DSCFit(self, maps, curves=curves, baseline_frames=baseline,
                      n_leakage_reference=n_ref, n_aif_voxels=aif_voxels,
                      rcbv=rcbv, reference_cbv=ref_mean)


class DSCFit(Fit):
    """Result of :class:`DSCModel`.

    Maps (shape ``data.shape[:-1]``): ``cbv`` (mL/mL with an AIF, else the
    ΔR2* area in s⁻¹·s), ``rcbv`` (dimensionless, with a reference mask),
    ``cbf`` (s⁻¹), ``mtt`` (s), ``k1`` (dimensionless), ``k2`` (s⁻¹), ``s0``
    (a.u.), ``status``; curves: ``reference_curve``, ``aif`` (s⁻¹).
    """

    def __init__(self, model, maps, *, curves, baseline_frames, n_leakage_reference,
                 n_aif_voxels, rcbv, reference_cbv):
        self.model = model
        self._maps = maps
        self.status = maps["status"]
        self._curves = curves
        self.baseline_frames = baseline_frames
        self.n_leakage_reference = int(n_leakage_reference)
        self.n_aif_voxels = int(n_aif_voxels)
        self.rcbv = rcbv
        self.reference_cbv = reference_cbv

    @property
    def has_aif(self) -> bool:
        return self._curves.aif is not None

    @property
    def cbv(self) -> np.ndarray:
        """CBV: fraction (mL/mL) with an AIF, else ΔR2* area (s⁻¹·s); corrected if the model says so."""
        return self._maps["cbv"]

    @property
    def cbv_uncorrected(self) -> np.ndarray:
        """CBV without leakage correction (same unit as :attr:`cbv`)."""
        return self._maps["cbv_uncorrected"]

    @property
    def cbv_corrected(self) -> np.ndarray:
        """CBV with BSW leakage correction (same unit as :attr:`cbv`)."""
        return self._maps["cbv_corrected"]

    @property
    def cbf(self) -> np.ndarray | None:
        """CBF in s⁻¹ (mL/mL/s), None without an AIF."""
        return self._maps.get("cbf")

    @property
    def mtt(self) -> np.ndarray | None:
        """MTT = CBV / CBF in s, None without an AIF."""
        return self._maps.get("mtt")

    @property
    def k1(self) -> np.ndarray:
        return self._maps["k1"]

    @property
    def k2(self) -> np.ndarray:
        """BSW leakage coefficient K2 in s⁻¹ (> 0: T1-dominant leakage)."""
        return self._maps["k2"]

    @property
    def s0(self) -> np.ndarray:
        return self._maps["s0"]

    @property
    def reference_curve(self) -> np.ndarray:
        """Average ΔR2* (s⁻¹) of the non-enhancing voxels (BSW reference)."""
        return self._curves.reference

    @property
    def aif(self) -> np.ndarray | None:
        """Arterial ΔR2* (s⁻¹), None if none was given."""
        return self._curves.aif

    def predict(self) -> np.ndarray:
        """The BSW model signal ``S0 exp(-TE (K1 ΔR2*_ref - K2 ∫ΔR2*_ref))``, shape of the data."""
        te = self.model.echo_time
        fitted = (np.nan_to_num(self.k1)[..., None] * self._curves.reference
                  - np.nan_to_num(self.k2)[..., None] * self._curves.reference_integral)
        return (np.nan_to_num(self.s0)[..., None] * np.exp(-te * fitted)).astype(self.s0.dtype)

    def output_maps(self) -> dict:
        """BIDS-derivative suffix -> (map, sidecar with Units and Description)."""
        m = self.model
        corr = "with" if m.leakage_correction else "without"
        window = ("whole series" if m.integration_window is None
                  else f"{m.integration_window[0]:g}-{m.integration_window[1]:g} s")
        common = {"LeakageCorrection": "BSW (Boxerman et al. AJNR 2006;27:859)"
                  if m.leakage_correction else "none",
                  "IntegrationWindow": window, "EchoTime": m.echo_time,
                  "BaselineFrames": [int(i) for i in self.baseline_frames]}
        out = {}
        if self.rcbv is not None:
            out["rCBVmap"] = (self.rcbv, {
                "Units": "1", **common,
                "Description": f"relative CBV {corr} leakage correction: CBV over the mean CBV "
                               f"({self.reference_cbv:.6g}) of the reference region"})
        if self.has_aif:
            out["CBVmap"] = (self.cbv, {
                "Units": "mL/mL", **common, "HematocritFactor": m.hematocrit_factor,
                "Description": f"cerebral blood volume fraction {corr} leakage correction: "
                               "area of tissue ΔR2* over area of the AIF ΔR2* (trapezoid)"})
            out["CBFmap"] = (self.cbf, {
                "Units": "1/s", **common, "DeconvolutionMethod": m.method,
                "OscillationIndex": m.oscillation_index if m.method == "osvd" else None,
                "Description": "blood flow in mL blood per mL tissue per s (x6000 for mL/100 mL/min): "
                               "maximum of the residue by truncated-SVD deconvolution"})
            out["MTTmap"] = (self.mtt, {"Units": "s", **common,
                                        "Description": "mean transit time CBV/CBF"})
            out["desc-dscfit_svdthreshold"] = (self._maps["svd_threshold"], {
                "Units": "1", "Description": "SVD truncation threshold used, fraction of the largest "
                                             "singular value"})
        else:
            out["CBVmap"] = (self.cbv, {
                "Units": "1", **common,
                "Description": f"area under ΔR2*(t) (s⁻¹·s) {corr} leakage correction; "
                               "proportional to CBV (no AIF given)"})
        out["K2map"] = (self.k2, {"Units": "1/s", "Description":
                                  "BSW leakage coefficient K2 (> 0: T1-dominant leakage)"})
        out["K1map"] = (self.k1, {"Units": "1", "Description":
                                  "BSW scaling K1 of the non-enhancing reference ΔR2* curve"})
        out["S0map"] = (self.s0, {"Units": "a.u.", "Description": "mean signal of the baseline frames"})
        out["desc-dscfit_status"] = (self.status, {
            "Units": "1", "Description": "per-voxel fit status code",
            "Levels": {str(k): v for k, v in STATUS_DESCRIPTIONS.items()}})
        return out



# --------------------------------------------------------------------------
# From a Volume (shared by `oncomri map dsc` and the study pipeline)
# --------------------------------------------------------------------------

#: Options of :func:`fit_dsc_volume` and their defaults (the ``oncomri map dsc`` flags).
DSC_VOLUME_OPTIONS = {
    "te": None, "frame_times": None, "tr": None, "baseline_frames": None, "aif_mask": None,
    "reference_mask": None, "leakage_reference_mask": None, "leakage_correction": True,
    "oscillation_index": None, "integration_window": None, "hematocrit_factor": 1.0,
    "method": None,
}
_TIME_UNITS = {"s": 1.0, "ms": 1e-3}


def _baseline_option(value, name):
    """``10`` (first 10 frames), ``'2-11'`` (frames 2..11), ``[2, 3, 4]`` or ``'2,3,4'``."""
    import re

    if value is None or isinstance(value, (list, tuple, np.ndarray)):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    t = str(value).strip()
    try:
        if re.fullmatch(r"\d+", t):
            return int(t)
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", t)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            if b < a:
                raise ValueError
            return list(range(a, b + 1))
        return [int(v) for v in t.split(",") if v.strip()]
    except ValueError:
        raise ValidationError(f"{name} {value!r}: give a number of frames (10), a range (2-11) or "
                              "0-based indices (2,3,4)") from None


def _dsc_frame_protocol(volume, opts) -> DynamicProtocol:
    from .volume_fit import quantity

    n = volume.data.shape[-1]
    src = str(volume.sources[0]) if volume.sources else "input"
    if opts.given("frame_times") and opts.given("tr"):
        raise ValidationError(f"give {opts.name('frame_times')} or {opts.name('tr')}, not both")
    if opts.given("frame_times"):
        times = quantity(opts["frame_times"], name=opts.name("frame_times"), units=_TIME_UNITS,
                         default_unit="s")
        where = opts.name("frame_times")
    elif opts.given("tr"):
        tr = quantity(opts["tr"], name=opts.name("tr"), units=_TIME_UNITS, default_unit="s")
        if len(tr) != 1 or not tr[0] > 0:
            raise ProtocolError(f"{opts.name('tr')} {opts['tr']!r}: give one positive frame "
                                "interval, e.g. 1.5s")
        times = np.arange(n) * tr[0]
        where = opts.name("tr")
    elif isinstance(volume.protocol, DynamicProtocol):
        times = volume.protocol.times
        where = f"{src} acquisition times"
    elif volume.meta.get("FrameTimesStart") is not None:
        times = volume.meta["FrameTimesStart"]
        where = f"{src} sidecar FrameTimesStart"
    elif src.endswith((".nii", ".nii.gz")) and volume.meta.get("RepetitionTime"):
        times = np.arange(n) * float(volume.meta["RepetitionTime"])
        where = f"{src} sidecar RepetitionTime"
    else:
        raise ProtocolError(
            f"{src}: no increasing frame times in the input; give {opts.name('frame_times')} "
            f"or {opts.name('tr')}")
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    if times.size != n:
        raise ProtocolError(f"{where} lists {times.size} frame times but the series has {n} frames")
    return dynamic_protocol(times, source=where)


def _dsc_echo_time(volume, opts) -> float:
    from .volume_fit import quantity

    if opts.given("te"):
        te = quantity(opts["te"], name=opts.name("te"), units=_TIME_UNITS, default_unit="ms")
        if len(te) != 1:
            raise ProtocolError(f"{opts.name('te')} {opts['te']!r}: give one echo time")
        return te[0]
    te = volume.meta.get("EchoTime")
    if isinstance(te, (list, tuple)) and len(set(te)) == 1:
        te = te[0]
    if te is None or isinstance(te, (list, tuple)):
        src = volume.sources[0] if volume.sources else "input"
        raise ProtocolError(f"{src}: no single EchoTime in the input; give {opts.name('te')} "
                            "(e.g. 30ms)")
    return float(te)


def fit_dsc_volume(volume, *, mask=None, method=None, names=None, progress=None, **options):
    """Fit a loaded DSC series (``oncomri map dsc``, study ``maps``).

    Frame times from ``frame_times`` / ``tr``, else the volume's protocol,
    its sidecar ``FrameTimesStart`` or (NIfTI) ``RepetitionTime``; the echo
    time from ``te``, else the sidecar ``EchoTime``. The model and its
    references: :class:`DSCModel`.

    Parameters
    ----------
    volume : Volume
        4D series, frames on the last axis (at least 4).
    mask : bool ndarray, optional
        Voxels to fit (e.g. the brain).
    method : {'osvd', 'csvd', 'ssvd'}, optional
        Deconvolution for CBF/MTT (with an AIF).
    names : None, str or callable
        How messages name the options (:class:`oncomri.models.volume_fit.Options`).
    **options
        ``te`` (s, or text with unit ``'30ms'``; text without unit is ms),
        ``frame_times`` (list of s or ``'0,1.5,3s'``), ``tr`` (frame interval,
        s or ``'1.5s'``), ``baseline_frames`` (count, ``'2-11'`` or indices),
        ``aif_mask``, ``reference_mask``, ``leakage_reference_mask`` (bool
        arrays on the grid), ``leakage_correction`` (bool or ``'on'``/``'off'``,
        default on), ``oscillation_index`` (oSVD threshold),
        ``integration_window`` ((start, stop) in s or ``'20,80s'``),
        ``hematocrit_factor`` (default 1).

    Returns
    -------
    VolumeFit
    """
    from .. import __version__
    from .volume_fit import Options, VolumeFit, quantity

    opts = Options({**options, "method": method}, DSC_VOLUME_OPTIONS, model="dsc", names=names)
    data = volume.data
    if data.ndim != 4 or data.shape[-1] < 4:
        src = volume.sources[0] if volume.sources else "input"
        raise ValidationError(
            f"{src}: a DSC series is 4D with at least 4 frames, got shape {data.shape}")
    protocol = _dsc_frame_protocol(volume, opts)
    te = _dsc_echo_time(volume, opts)
    window = None
    if opts.given("integration_window"):
        window = quantity(opts["integration_window"], name=opts.name("integration_window"),
                          units=_TIME_UNITS, default_unit="s")
        if len(window) != 2:
            raise ProtocolError(f"{opts.name('integration_window')} {opts['integration_window']!r}: "
                                "give start,stop")
    extra = {}
    if opts.given("oscillation_index"):
        extra["oscillation_index"] = opts.number("oscillation_index")
    leakage = opts.flag("leakage_correction")
    method = opts.choice("method", tuple(_METHODS))
    model = DSCModel(protocol, echo_time=te, method=method,
                     baseline_frames=_baseline_option(opts["baseline_frames"],
                                                      opts.name("baseline_frames")),
                     leakage_correction=leakage, integration_window=window,
                     hematocrit_factor=opts.number("hematocrit_factor", positive=True), **extra)
    masks = {key: opts.mask(key, volume.spatial_shape)
             for key in ("aif_mask", "reference_mask", "leakage_reference_mask")}
    fit = model.fit(data, mask=mask, progress=progress, **masks)
    common = {
        "Software": "oncomri", "SoftwareVersion": __version__, "Model": "dsc",
        "Method": model.method if fit.has_aif else None,
        "EchoTime": te, "EchoTimeUnits": "s",
        "FrameTimes": protocol.times.tolist(), "FrameTimesUnits": "s",
        "FrameTimesSource": protocol.source,
        "LeakageCorrection": leakage,
        "AIF": f"mean ΔR2* of {opts.name('aif_mask')}" if masks["aif_mask"] is not None else None,
        "Notes": list(volume.meta.get("notes", [])),
    }
    counts = fit.summary()
    summary = (f"dsc ({model.method if fit.has_aif else 'no AIF'}; leakage correction "
               f"{'on' if leakage else 'off'}): {counts.get('ok', 0):,} voxels ok, "
               f"{counts.get('failed', 0) + counts.get('invalid_data', 0):,} failed, "
               f"{counts.get('masked', 0):,} masked out; baseline frames "
               f"{int(fit.baseline_frames[0])}-{int(fit.baseline_frames[-1])}, "
               f"{fit.n_leakage_reference:,} leakage-reference voxels")
    return VolumeFit(fit=fit, model=model, maps=fit.output_maps(), provenance=common,
                     summary=summary)
