"""Cell-tracking biomarkers on maps and images that already share one voxel grid.

Iron-oxide-labelled cells (NK cells, T cells, macrophages, dendritic cells)
and iron-oxide agents taken up by macrophages shorten T2*: R2* rises and
T2*-weighted signal falls where they gather. This module turns that into
numbers, voxelwise and per ROI:

- :func:`delta_r2star`, :func:`delta_r2star_roi`: the rise of R2* (s⁻¹ and %)
  between a pre- and a post-injection R2* map.
- :func:`hypointense_fraction`: the fraction of an ROI that turned dark, by a
  reference-tissue rule or a percentile rule, leaving out voxels that were
  already dark before injection.
- :func:`detect_spots`: counting hypointense spots (connected components).
- :func:`signal_loss_percent`: ROI signal loss of T2*-weighted images.
- :func:`tumour_to_normal_ratio`: tumour-to-normal signal ratio in classes.
- :func:`classify_rcbv`: relative CBV of ferumoxytol perfusion MRI against
  the 1.75 cut-off for true progression vs pseudoprogression.

Registration between timepoints is not done here: every array passed to one
call must already be on the same voxel grid (see :mod:`oncomri.roi.registration`).

Conventions shared by every function here:

- Masks are boolean arrays (or 0/1 integers) of the image's shape; an empty
  mask is an error, as is a mask of another shape (``GeometryError``).
- Voxels whose value is not finite (NaN from a failed fit, ±inf) are left out
  of every ROI statistic and counted in ``n_excluded_nonfinite``; with
  ``nan_policy='raise'`` any such voxel inside an ROI is an error instead.
- R2* maps are in s⁻¹ and must not be negative; T2*-weighted images are
  magnitude images in arbitrary units and must not be negative either.
- Results are frozen dataclasses; ``as_dict()`` gives plain JSON-able values
  with the unit in each key name (NaN becomes ``None``).

Pure functions on arrays (numpy, scipy.ndimage); no file I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from ..core.errors import GeometryError, ValidationError

__all__ = [
    "RCBV_THRESHOLD_FERUMOXYTOL",
    "TNR_BOUNDARIES",
    "TNR_CLASSES",
    "DEFAULT_REFERENCE_FRACTION",
    "delta_r2star",
    "DeltaR2StarROI",
    "delta_r2star_roi",
    "HypointenseResult",
    "hypointense_fraction",
    "Spot",
    "SpotDetection",
    "detect_spots",
    "SignalLoss",
    "signal_loss_percent",
    "TumourToNormalRatio",
    "tumour_to_normal_ratio",
    "RCBVClassification",
    "classify_rcbv",
]

#: rCBV cut-off of ferumoxytol DSC perfusion MRI in glioblastoma after
#: chemoradiotherapy: rCBV > 1.75 was taken to indicate tumour (true
#: progression), rCBV <= 1.75 pseudoprogression (Gahramanov et al., Radiology
#: 2013;266:842).
RCBV_THRESHOLD_FERUMOXYTOL = 1.75

#: Class boundaries of the tumour-to-normal T2*-weighted signal ratio:
#: < 0.5, 0.5-0.7, > 0.7 (Chen et al., Nanoscale 2018;10:1788, as specified in
#: oncomri issue 4; see :func:`tumour_to_normal_ratio` for what is and is not
#: verified about their meaning).
TNR_BOUNDARIES = (0.5, 0.7)

#: Default fraction of the reference-tissue mean below which a voxel counts as
#: hypointense ("darker than 50 % of the reference", the lymph-node rule of
#: oncomri issue 4). No primary source for 0.5 has been verified: state the
#: fraction explicitly in study analyses.
DEFAULT_REFERENCE_FRACTION = 0.5

NAN_POLICIES = ("omit", "raise")


# --------------------------------------------------------------------------
# Validation helpers (also used by margins.py and lymphnode.py)
# --------------------------------------------------------------------------

def _as_array(data, name: str, *, ndim: int | None = None) -> np.ndarray:
    """A real numeric array (not modified, not copied if avoidable)."""
    arr = np.asanyarray(data)
    if arr.dtype.kind not in "fiu":
        raise ValidationError(
            f"{name} has dtype {arr.dtype}; pass a real-valued numeric array "
            "(take the magnitude of complex images)")
    if arr.size == 0:
        raise ValidationError(f"{name} is empty; pass an image with at least one voxel")
    if ndim is not None and arr.ndim != ndim:
        raise ValidationError(
            f"{name} must be {ndim}-D (X, Y, Z), got shape {arr.shape}; "
            "pass a single slice as shape (X, Y, 1)")
    return np.asarray(arr)


def _same_shape(arr: np.ndarray, name: str, shape: tuple, ref_name: str) -> None:
    if arr.shape != tuple(shape):
        raise GeometryError(
            f"{name} has shape {arr.shape} but {ref_name} has shape {tuple(shape)}; "
            "resample both onto one grid first (oncomri.roi.registration)")


def _as_mask(mask, name: str, shape: tuple, ref_name: str = "the image",
             *, nonempty: bool = True) -> np.ndarray:
    """A boolean mask of ``shape``: bool, or integers holding only 0 and 1."""
    arr = np.asanyarray(mask)
    if arr.dtype != np.bool_:
        if arr.dtype.kind not in "iuf":
            raise ValidationError(f"{name} has dtype {arr.dtype}; pass a boolean mask")
        values = np.unique(arr)
        other = values[~np.isin(values, (0, 1))]
        if other.size:
            raise ValidationError(
                f"{name} holds values other than 0 and 1 (e.g. {other[:3].tolist()}); pass a "
                "boolean mask (for a label image select one label: labels == k)")
        arr = arr.astype(bool)
    _same_shape(arr, name, shape, ref_name)
    if nonempty and not arr.any():
        raise ValidationError(f"{name} is empty (no voxel selected); pass a non-empty mask")
    return np.asarray(arr)


def _finite_number(value, name: str, *, positive: bool = False,
                   nonnegative: bool = False) -> float:
    if isinstance(value, bool):
        raise ValidationError(f"{name} must be a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{name} must be a number, got {value!r}") from exc
    if not math.isfinite(out):
        raise ValidationError(f"{name} must be finite, got {value!r}")
    if positive and out <= 0:
        raise ValidationError(f"{name} must be > 0, got {value!r}")
    if nonnegative and out < 0:
        raise ValidationError(f"{name} must be >= 0, got {value!r}")
    return out


def _voxel_sizes(voxel_size_mm, ndim: int) -> np.ndarray:
    """Voxel edge lengths (mm), one per axis; a single number means isotropic."""
    try:
        vs = np.asarray(voxel_size_mm, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ValidationError(
            f"voxel_size_mm must be {ndim} voxel edge lengths in mm, got {voxel_size_mm!r}"
        ) from exc
    if vs.size == 1:
        vs = np.repeat(vs, ndim)
    if vs.size != ndim or not np.all(np.isfinite(vs)) or np.any(vs <= 0):
        raise ValidationError(
            f"voxel_size_mm must be {ndim} positive voxel edge lengths in mm "
            f"(Volume.voxel_size), got {voxel_size_mm!r}")
    return vs


def _check_affine(affine, voxel_size: np.ndarray) -> np.ndarray | None:
    """A finite 4x4 voxel -> world (mm) affine whose column norms match ``voxel_size``."""
    if affine is None:
        return None
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        raise GeometryError(f"affine must be a finite 4x4 matrix, got shape {aff.shape}")
    if voxel_size.size != 3:
        raise GeometryError("affine needs a 3-D image; pass a single slice as shape (X, Y, 1)")
    from_affine = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
    if not np.allclose(from_affine, voxel_size, rtol=1e-3, atol=1e-4):
        raise GeometryError(
            f"voxel_size_mm {voxel_size.tolist()} disagrees with the affine's voxel size "
            f"{np.round(from_affine, 4).tolist()}; pass the image's own affine and voxel size")
    return aff


def _to_world(affine: np.ndarray | None, index) -> tuple | None:
    if affine is None:
        return None
    p = np.asarray(index, dtype=np.float64)
    return tuple(float(v) for v in affine[:3, :3] @ p + affine[:3, 3])


def _check_nan_policy(nan_policy: str) -> str:
    if nan_policy not in NAN_POLICIES:
        raise ValidationError(f"nan_policy {nan_policy!r} is unknown; use one of {NAN_POLICIES}")
    return nan_policy


def _roi_values(arr: np.ndarray, roi: np.ndarray, name: str, roi_name: str,
                nan_policy: str) -> tuple[np.ndarray, int]:
    """Finite values of ``arr`` inside ``roi`` and how many ROI voxels were not finite."""
    vals = arr[roi].astype(np.float64, copy=False)
    finite = np.isfinite(vals)
    n_bad = int(vals.size - finite.sum())
    if n_bad and nan_policy == "raise":
        raise ValidationError(
            f"{name} has {n_bad} non-finite voxel(s) inside {roi_name}; fix them or use "
            "nan_policy='omit'")
    vals = vals[finite]
    if vals.size == 0:
        raise ValidationError(f"{name} has no finite value inside {roi_name}; check the mask")
    return vals, n_bad


def _no_negative(values: np.ndarray, name: str, what: str) -> None:
    if values.size and np.nanmin(values) < 0:
        raise ValidationError(
            f"{name} holds negative values (min {np.nanmin(values):.4g}); {what}")


_MAGNITUDE = "pass a magnitude image (signal intensities are >= 0)"
_RATE = "R2* is a rate >= 0 s^-1: set failed fits to NaN or mask them out"


def _no_overlap(a: np.ndarray, b: np.ndarray, a_name: str, b_name: str) -> None:
    n = int(np.count_nonzero(a & b))
    if n:
        raise ValidationError(
            f"{b_name} overlaps {a_name} in {n} voxel(s); draw the reference ROI outside the "
            "ROI being measured")


def _jsonable(value):
    """Plain JSON values: floats (NaN/inf -> None), ints, str, bool, lists."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, (tuple, list, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _sd(values: np.ndarray) -> float:
    """Sample standard deviation (n - 1); NaN for a single value."""
    return float(np.std(values, ddof=1)) if values.size > 1 else float("nan")


# --------------------------------------------------------------------------
# ΔR2*
# --------------------------------------------------------------------------

def delta_r2star(post, pre, *, mask=None, relative: bool = False) -> np.ndarray:
    """Voxelwise change of R2* after injection: ΔR2* = R2*post − R2*pre (s⁻¹) or %.

    ΔR2* is proportional to the local iron concentration where the relaxivity
    is linear (``ΔR2* = r2* · [Fe]``, see :mod:`oncomri.quant.iron`; Knobloch
    et al., Invest Radiol 2018;53:257), which is why cell-tracking studies
    report it rather than R2* itself (e.g. Stirrat et al., JCMR 2016;18:46 for
    ferumoxytol ΔR2* in liver, spleen and myocardium).

    Parameters
    ----------
    post, pre : array_like
        R2* maps (s⁻¹) after and before injection, on the same grid, any
        shape. Not modified.
    mask : array_like of bool, optional
        Voxels to compute; the others are NaN.
    relative : bool
        If True, return the percentage change ``100 (post − pre) / pre`` (%)
        instead of the difference (s⁻¹).

    Returns
    -------
    ndarray
        Same shape as the inputs, float32 if both maps are float32 (float64
        otherwise). NaN where: outside ``mask``; either map is not finite
        there (NaN, ±inf); and, with ``relative=True``, where pre is 0.

    Raises
    ------
    GeometryError
        The maps or the mask differ in shape.
    ValidationError
        A finite R2* value (inside ``mask``) is negative; an empty mask; a
        non-numeric map.
    """
    post_a = _as_array(post, "post")
    pre_a = _as_array(pre, "pre")
    _same_shape(pre_a, "pre", post_a.shape, "post")
    if mask is None:
        sel = np.ones(post_a.shape, bool)
    else:
        sel = _as_mask(mask, "mask", post_a.shape, "post")
    p = post_a.astype(np.float64)
    b = pre_a.astype(np.float64)
    valid = sel & np.isfinite(p) & np.isfinite(b)
    _no_negative(p[valid], "post", _RATE)
    _no_negative(b[valid], "pre", _RATE)
    out = np.full(post_a.shape, np.nan)
    diff = p[valid] - b[valid]
    if relative:
        base = b[valid]
        with np.errstate(divide="ignore", invalid="ignore"):
            diff = np.where(base > 0, 100.0 * diff / base, np.nan)
    out[valid] = diff
    dtype = np.result_type(post_a.dtype, pre_a.dtype, np.float32)
    return out.astype(dtype, copy=False)


@dataclass(frozen=True)
class DeltaR2StarROI:
    """ΔR2* of one ROI: mean post − mean pre (s⁻¹) and its percentage of mean pre.

    ``paired`` is True when one mask served both maps (then the same voxels,
    those finite in both maps, enter both means and ``sd_delta_r2star_per_s``
    is the sample SD of the voxelwise differences); False with a separate
    ``pre_mask`` (unpaired ROIs; no voxelwise SD). SDs use n − 1.
    """

    mean_pre_r2star_per_s: float
    mean_post_r2star_per_s: float
    sd_pre_r2star_per_s: float
    sd_post_r2star_per_s: float
    delta_r2star_per_s: float
    delta_r2star_percent: float
    sd_delta_r2star_per_s: float
    n_pre: int
    n_post: int
    n_excluded_nonfinite: int
    paired: bool

    def as_dict(self) -> dict:
        """Plain JSON-able values, units in the key names."""
        return {k: _jsonable(getattr(self, k)) for k in self.__dataclass_fields__}


def delta_r2star_roi(post, pre, mask, *, pre_mask=None, nan_policy: str = "omit") -> DeltaR2StarROI:
    """Per-ROI ΔR2*: mean R2* after minus mean R2* before injection (s⁻¹), and %.

    ``ΔR2* = mean(R2*post) − mean(R2*pre)`` and
    ``%ΔR2* = 100 · ΔR2* / mean(R2*pre)`` (NaN if the pre mean is 0).

    Parameters
    ----------
    post, pre : array_like
        R2* maps (s⁻¹) after and before injection, on the same grid.
    mask : array_like of bool
        The ROI (on ``post``; also on ``pre`` unless ``pre_mask`` is given).
    pre_mask : array_like of bool, optional
        A separately drawn ROI for the pre map. Without it the analysis is
        paired: only voxels finite in *both* maps enter either mean.
    nan_policy : {'omit', 'raise'}
        ``'omit'`` (default) leaves non-finite ROI voxels out and counts them
        in ``n_excluded_nonfinite``; ``'raise'`` makes any of them an error.

    Returns
    -------
    DeltaR2StarROI

    Raises
    ------
    GeometryError
        Shapes differ.
    ValidationError
        Empty ROI, no finite voxel left, negative R2*, bad ``nan_policy``.
    """
    nan_policy = _check_nan_policy(nan_policy)
    post_a = _as_array(post, "post")
    pre_a = _as_array(pre, "pre")
    _same_shape(pre_a, "pre", post_a.shape, "post")
    roi = _as_mask(mask, "mask", post_a.shape, "post")
    if pre_mask is None:
        vpost_all = post_a[roi].astype(np.float64)
        vpre_all = pre_a[roi].astype(np.float64)
        both = np.isfinite(vpost_all) & np.isfinite(vpre_all)
        n_bad = int(both.size - both.sum())
        if n_bad and nan_policy == "raise":
            raise ValidationError(
                f"post or pre has {n_bad} non-finite voxel(s) inside mask; fix them or use "
                "nan_policy='omit'")
        if not both.any():
            raise ValidationError("no voxel of mask is finite in both post and pre; check the maps")
        vpost = vpost_all[both]
        vpre = vpre_all[both]
        sd_delta = _sd(vpost - vpre)
    else:
        proi = _as_mask(pre_mask, "pre_mask", pre_a.shape, "pre")
        vpost, bad_post = _roi_values(post_a, roi, "post", "mask", nan_policy)
        vpre, bad_pre = _roi_values(pre_a, proi, "pre", "pre_mask", nan_policy)
        n_bad = bad_post + bad_pre
        sd_delta = float("nan")
    _no_negative(vpost, "post", _RATE)
    _no_negative(vpre, "pre", _RATE)
    m_post, m_pre = float(vpost.mean()), float(vpre.mean())
    delta = m_post - m_pre
    pct = 100.0 * delta / m_pre if m_pre > 0 else float("nan")
    return DeltaR2StarROI(
        mean_pre_r2star_per_s=m_pre, mean_post_r2star_per_s=m_post,
        sd_pre_r2star_per_s=_sd(vpre), sd_post_r2star_per_s=_sd(vpost),
        delta_r2star_per_s=delta, delta_r2star_percent=pct, sd_delta_r2star_per_s=sd_delta,
        n_pre=int(vpre.size), n_post=int(vpost.size), n_excluded_nonfinite=n_bad,
        paired=pre_mask is None)


# --------------------------------------------------------------------------
# Hypointense voxels
# --------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class HypointenseResult:
    """Hypointense voxels of an ROI after injection, net of those dark at baseline.

    Counts are voxels of the ROI that are finite in every image used:
    ``n_voxels`` of them in all; ``n_hypointense`` darker than ``threshold``
    after injection; ``n_baseline_hypointense`` darker than
    ``baseline_threshold`` at baseline (0 without a baseline);
    ``n_counted`` = post-dark and *not* baseline-dark, and
    ``fraction = n_counted / n_voxels``. Thresholds are in the image's
    intensity unit. ``volume_mm3`` is ``n_counted`` times the voxel volume
    (None without ``voxel_size_mm``). ``mask`` marks the counted voxels (not
    in ``as_dict``).
    """

    mode: str  # 'reference' or 'percentile'
    n_voxels: int
    n_hypointense: int
    n_baseline_hypointense: int
    n_counted: int
    fraction: float
    threshold: float
    baseline_threshold: float | None
    reference_mean: float | None
    baseline_reference_mean: float | None
    reference_fraction: float | None
    percentile: float | None
    volume_mm3: float | None
    n_excluded_nonfinite: int
    mask: np.ndarray = field(repr=False)

    @property
    def percent(self) -> float:
        """``fraction`` in percent."""
        return 100.0 * self.fraction

    def as_dict(self) -> dict:
        """Plain JSON-able values (the voxel mask is left out)."""
        out = {k: _jsonable(getattr(self, k)) for k in self.__dataclass_fields__ if k != "mask"}
        out["percent"] = _jsonable(self.percent)
        out["units"] = {"threshold": "image intensity", "volume_mm3": "mm^3",
                        "fraction": "1", "percent": "%"}
        return out


def _threshold(image, valid, *, reference, fraction, percentile, name, nan_policy):
    """(threshold, reference mean or None) of one image by the chosen rule."""
    if reference is not None:
        vals, _ = _roi_values(image, reference, name, "reference", nan_policy)
        _no_negative(vals, name, _MAGNITUDE)
        ref_mean = float(vals.mean())
        if ref_mean <= 0:
            raise ValidationError(
                f"the reference ROI mean of {name} is {ref_mean:.4g}; the reference tissue "
                "must have signal (mean > 0)")
        return fraction * ref_mean, ref_mean
    return float(np.percentile(image[valid].astype(np.float64), percentile)), None


def hypointense_fraction(post, *, mask, reference=None,
                         fraction: float = DEFAULT_REFERENCE_FRACTION, baseline=None,
                         percentile: float | None = None, voxel_size_mm=None,
                         nan_policy: str = "omit") -> HypointenseResult:
    """Fraction of an ROI that is hypointense after injection, net of baseline darkness.

    Two threshold rules, chosen by which argument is given:

    **Reference mode** (``reference`` given): a voxel is hypointense if its
    intensity is below ``fraction`` times the mean intensity of a
    reference-tissue ROI (e.g. muscle) *of the same image*:
    ``T = fraction · mean(image[reference])``. ``fraction=0.5`` ("darker than
    half the reference") is the rule specified for lymph nodes in oncomri
    issue 4; we have not verified a primary source for 0.5, so state the
    fraction you use.

    **Percentile mode** (``percentile`` given): the threshold is the
    ``percentile``-th percentile of the ROI's own intensities,
    ``T = P_p(image[ROI])`` (``numpy.percentile``, linear interpolation), so
    the darkest ``p`` % of the ROI are hypointense. ``percentile=10`` (the
    darkest 10 % of a tumour) is the analysis attributed to Tremblay et al.,
    Magn Reson Med 2018;80:304 (immune-cell recruitment to tumours) in
    oncomri issue 4; we have not checked the paper's exact definition.

    In both modes "below" is strict: ``intensity < T``.

    **Baseline awareness** (``baseline`` given): the *same rule* is applied
    to the baseline (pre-injection) image on its own, giving its own
    threshold: in reference mode ``T_base = fraction · mean(baseline[reference])``
    (the same reference mask and fraction, so each session is normalised to
    its own reference tissue); in percentile mode ``T_base =
    P_p(baseline[ROI])`` over the same ROI voxels. A voxel is counted only if
    it is hypointense after injection (``post < T``) and was *not*
    hypointense at baseline (``baseline >= T_base``): dark structures that
    were there before the cells (haemorrhage, necrosis, vessels, air) do not
    count. The denominator stays the whole ROI (``n_voxels``), so fractions
    with and without a baseline are fractions of the same volume.

    Parameters
    ----------
    post : array_like
        T2*-weighted magnitude image after injection (any intensity unit, >= 0).
    mask : array_like of bool
        The ROI (tumour, lymph node, organ).
    reference : array_like of bool, optional
        Reference-tissue ROI (reference mode); must not overlap ``mask``.
    fraction : float
        Multiple of the reference mean used as threshold, > 0 (reference mode
        only; default 0.5).
    baseline : array_like, optional
        The same image before injection, on the same grid.
    percentile : float, optional
        Percentile in (0, 100) (percentile mode), e.g. 10.
    voxel_size_mm : float or sequence of float, optional
        Voxel edge lengths (mm), to report the counted volume in mm³.
    nan_policy : {'omit', 'raise'}
        Non-finite voxels (in ``post`` or ``baseline``) inside the ROI are
        left out of numerator and denominator (``'omit'``), or are an error.

    Returns
    -------
    HypointenseResult

    Raises
    ------
    ValidationError
        Neither or both of ``reference`` and ``percentile``; ``fraction`` <= 0;
        ``percentile`` outside (0, 100); empty or overlapping masks; negative
        intensities; a reference mean of 0; no finite ROI voxel.
    GeometryError
        Shapes differ.
    """
    nan_policy = _check_nan_policy(nan_policy)
    img = _as_array(post, "post")
    roi = _as_mask(mask, "mask", img.shape, "post")
    if (reference is None) == (percentile is None):
        raise ValidationError(
            "give either reference (reference-tissue mode) or percentile (percentile mode), "
            "not both and not neither")
    ref = None
    frac = None
    pct = None
    if reference is not None:
        ref = _as_mask(reference, "reference", img.shape, "post")
        _no_overlap(roi, ref, "mask", "reference")
        frac = _finite_number(fraction, "fraction", positive=True)
    else:
        pct = _finite_number(percentile, "percentile")
        if not 0 < pct < 100:
            raise ValidationError(f"percentile must be in (0, 100), got {percentile!r}")
    base = None
    if baseline is not None:
        base = _as_array(baseline, "baseline")
        _same_shape(base, "baseline", img.shape, "post")

    valid = roi & np.isfinite(img)
    if base is not None:
        valid &= np.isfinite(base)
    n_bad = int(roi.sum() - valid.sum())
    if n_bad and nan_policy == "raise":
        raise ValidationError(
            f"post or baseline has {n_bad} non-finite voxel(s) inside mask; fix them or use "
            "nan_policy='omit'")
    if not valid.any():
        raise ValidationError("no voxel of mask is finite in post (and baseline); check the images")
    _no_negative(img[valid], "post", _MAGNITUDE)

    thr, ref_mean = _threshold(img, valid, reference=ref, fraction=frac, percentile=pct,
                               name="post", nan_policy=nan_policy)
    dark = valid & (img < thr)
    n_dark = int(dark.sum())
    base_thr = base_ref_mean = None
    n_base_dark = 0
    counted = dark
    if base is not None:
        _no_negative(base[valid], "baseline", _MAGNITUDE)
        base_thr, base_ref_mean = _threshold(base, valid, reference=ref, fraction=frac,
                                             percentile=pct, name="baseline",
                                             nan_policy=nan_policy)
        base_dark = valid & (base < base_thr)
        n_base_dark = int(base_dark.sum())
        counted = dark & ~base_dark
    n_valid = int(valid.sum())
    n_counted = int(counted.sum())
    volume = None
    if voxel_size_mm is not None:
        volume = n_counted * float(np.prod(_voxel_sizes(voxel_size_mm, img.ndim)))
    return HypointenseResult(
        mode="reference" if ref is not None else "percentile", n_voxels=n_valid,
        n_hypointense=n_dark, n_baseline_hypointense=n_base_dark, n_counted=n_counted,
        fraction=n_counted / n_valid, threshold=float(thr),
        baseline_threshold=None if base_thr is None else float(base_thr),
        reference_mean=ref_mean, baseline_reference_mean=base_ref_mean,
        reference_fraction=frac, percentile=pct, volume_mm3=volume,
        n_excluded_nonfinite=n_bad, mask=counted)


# --------------------------------------------------------------------------
# Spot detection
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Spot:
    """One hypointense spot (a connected component below threshold).

    ``centroid_voxel`` is the unweighted centre of its voxels in voxel
    indices; ``centroid_world_mm`` the same point in world coordinates (mm,
    RAS+ as the affine) or None without an affine. Intensities are in the
    image's unit.
    """

    label: int
    n_voxels: int
    volume_mm3: float
    centroid_voxel: tuple
    centroid_world_mm: tuple | None
    min_intensity: float
    mean_intensity: float
    min_position_voxel: tuple

    def as_dict(self) -> dict:
        """Plain JSON-able values, units in the key names."""
        return {k: _jsonable(getattr(self, k)) for k in self.__dataclass_fields__}


@dataclass(frozen=True, eq=False)
class SpotDetection:
    """Hypointense spots of an ROI: count, sizes and positions.

    ``labels`` is an int32 image (0 background, 1..count the kept spots in
    ``spots`` order; not in ``as_dict``). ``n_rejected_small`` and
    ``n_rejected_large`` count components outside the size limits.
    """

    count: int
    spots: tuple
    total_volume_mm3: float
    threshold: float
    min_size_voxels: int
    max_size_voxels: int | None
    connectivity: int
    n_rejected_small: int
    n_rejected_large: int
    labels: np.ndarray = field(repr=False)

    def as_dict(self) -> dict:
        """Plain JSON-able values (the label image is left out)."""
        out = {k: _jsonable(getattr(self, k)) for k in self.__dataclass_fields__
               if k not in ("labels", "spots")}
        out["spots"] = [s.as_dict() for s in self.spots]
        return out


def _connectivity(connectivity, ndim: int) -> np.ndarray:
    if isinstance(connectivity, bool) or not isinstance(connectivity, (int, np.integer)) \
            or not 1 <= connectivity <= ndim:
        raise ValidationError(
            f"connectivity must be an integer from 1 (faces) to {ndim} (faces, edges and "
            f"corners), got {connectivity!r}")
    return ndi.generate_binary_structure(ndim, int(connectivity))


def detect_spots(image, *, mask, threshold, voxel_size_mm, min_size_voxels: int = 1,
                 max_size_voxels: int | None = None, connectivity: int = 1,
                 affine=None) -> SpotDetection:
    """Detect and count hypointense spots: connected components darker than a threshold.

    Iron-labelled cells appear as focal signal voids on T2*-weighted images
    (Heyn et al., Magn Reson Med 2006;55:23 for single cells). A voxel is a
    spot candidate if it lies in ``mask``, is finite and ``image < threshold``
    (strict). Candidates are grouped into connected components with
    ``scipy.ndimage.label``; components with fewer than ``min_size_voxels``
    or more than ``max_size_voxels`` voxels are rejected (isolated noise
    voxels, or large dark structures such as vessels or necrosis that are not
    spots). Choose the threshold from the data, e.g. with the reference-tissue
    rule of :func:`hypointense_fraction` (its ``threshold``) or from the
    background mean minus k standard deviations.

    Parameters
    ----------
    image : array_like (X, Y, Z)
        T2*-weighted magnitude image (a single slice as (X, Y, 1)).
    mask : array_like of bool (X, Y, Z)
        Where to look (e.g. the tumour or lymph node).
    threshold : float
        Intensity (image unit), > 0; voxels strictly below it are candidates.
    voxel_size_mm : float or sequence of 3 float
        Voxel edge lengths (mm), for the volumes.
    min_size_voxels, max_size_voxels : int
        Size limits in voxels (inclusive); ``max_size_voxels=None``: no upper limit.
    connectivity : int
        1: voxels sharing a face are connected (6-neighbourhood, scipy's
        default); 2: faces or edges (18); 3: faces, edges or corners (26).
    affine : array_like (4, 4), optional
        Voxel -> world (mm) affine, for world centroids; its voxel size must
        match ``voxel_size_mm``.

    Returns
    -------
    SpotDetection
        Spots in label order (first voxel in C order).

    Raises
    ------
    ValidationError
        Not 3-D, negative or zero threshold, bad sizes, connectivity or mask.
    GeometryError
        Shape mismatch; affine inconsistent with ``voxel_size_mm``.
    """
    img = _as_array(image, "image", ndim=3)
    roi = _as_mask(mask, "mask", img.shape)
    thr = _finite_number(threshold, "threshold", nonnegative=True)
    if thr == 0:
        raise ValidationError("threshold must be > 0 (no magnitude voxel is below 0)")
    vs = _voxel_sizes(voxel_size_mm, 3)
    aff = _check_affine(affine, vs)
    for name, v in (("min_size_voxels", min_size_voxels), ("max_size_voxels", max_size_voxels)):
        if v is None and name == "max_size_voxels":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValidationError(f"{name} must be a positive integer, got {v!r}")
    if max_size_voxels is not None and max_size_voxels < min_size_voxels:
        raise ValidationError(
            f"max_size_voxels ({max_size_voxels}) is smaller than min_size_voxels "
            f"({min_size_voxels})")
    structure = _connectivity(connectivity, 3)

    with np.errstate(invalid="ignore"):
        cand = roi & np.isfinite(img) & (img < thr)
    labels, n = ndi.label(cand, structure=structure)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    small = sizes < min_size_voxels
    large = sizes > max_size_voxels if max_size_voxels is not None else np.zeros(n, bool)
    keep = ~small & ~large
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    kept = lut[labels]
    count = int(keep.sum())
    voxel_volume = float(np.prod(vs))
    spots = []
    if count:
        index = np.arange(1, count + 1)
        values = img.astype(np.float64)
        centroids = ndi.center_of_mass(cand, kept, index)
        mins = ndi.minimum(values, kept, index)
        means = ndi.mean(values, kept, index)
        min_pos = ndi.minimum_position(values, kept, index)
        for k, n_vox in enumerate(sizes[keep]):
            c = tuple(float(v) for v in centroids[k])
            spots.append(Spot(
                label=k + 1, n_voxels=int(n_vox), volume_mm3=int(n_vox) * voxel_volume,
                centroid_voxel=c, centroid_world_mm=_to_world(aff, c),
                min_intensity=float(mins[k]), mean_intensity=float(means[k]),
                min_position_voxel=tuple(int(v) for v in min_pos[k])))
    return SpotDetection(
        count=count, spots=tuple(spots),
        total_volume_mm3=float(sizes[keep].sum()) * voxel_volume, threshold=thr,
        min_size_voxels=int(min_size_voxels),
        max_size_voxels=None if max_size_voxels is None else int(max_size_voxels),
        connectivity=int(connectivity), n_rejected_small=int(small.sum()),
        n_rejected_large=int(large.sum()), labels=kept)


# --------------------------------------------------------------------------
# Signal loss, tumour-to-normal ratio, rCBV
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class SignalLoss:
    """ROI signal loss between a pre- and a post-injection T2*-weighted image.

    ``loss_percent = 100 (1 − S_post / S_pre)`` with ``S`` the ROI mean, or
    the ROI mean divided by the reference-ROI mean of the same image when a
    reference was given. Positive: the ROI darkened. Means are in the image's
    unit (the ratios are dimensionless).
    """

    loss_percent: float
    mean_pre: float
    mean_post: float
    reference_mean_pre: float | None
    reference_mean_post: float | None
    normalised_pre: float
    normalised_post: float
    n_voxels: int
    n_excluded_nonfinite: int

    def as_dict(self) -> dict:
        """Plain JSON-able values, units in the key names."""
        return {k: _jsonable(getattr(self, k)) for k in self.__dataclass_fields__}


def _paired_values(a, b, roi, names, roi_name, nan_policy):
    va = a[roi].astype(np.float64)
    vb = b[roi].astype(np.float64)
    ok = np.isfinite(va) & np.isfinite(vb)
    n_bad = int(ok.size - ok.sum())
    if n_bad and nan_policy == "raise":
        raise ValidationError(
            f"{names} has {n_bad} non-finite voxel(s) inside {roi_name}; fix them or use "
            "nan_policy='omit'")
    if not ok.any():
        raise ValidationError(f"no voxel of {roi_name} is finite in both {names}; check the images")
    return va[ok], vb[ok], n_bad


def signal_loss_percent(post, pre, *, mask, reference=None, nan_policy: str = "omit") -> SignalLoss:
    """Signal loss (%) of an ROI from the pre- to the post-injection T2*-weighted image.

    ``loss = 100 · (1 − S_post / S_pre)`` where ``S`` is the ROI mean
    intensity of each image (voxels finite in both images). With a
    ``reference`` ROI (e.g. muscle), each ROI mean is first divided by the
    reference mean of its own image, ``S = mean(ROI) / mean(reference)``,
    which cancels gain and coil-loading differences between sessions (the
    signal-intensity ratio normalisation used for iron-oxide lymph-node and
    liver MRI, e.g. Harisinghani et al., N Engl J Med 2003;348:2491).

    Parameters
    ----------
    post, pre : array_like
        T2*-weighted magnitude images (>= 0) after and before injection, same grid.
    mask : array_like of bool
        The ROI.
    reference : array_like of bool, optional
        Reference-tissue ROI (must not overlap ``mask``).
    nan_policy : {'omit', 'raise'}

    Returns
    -------
    SignalLoss

    Raises
    ------
    ValidationError
        Empty or overlapping masks, negative intensities, a zero pre mean.
    GeometryError
        Shapes differ.
    """
    nan_policy = _check_nan_policy(nan_policy)
    post_a = _as_array(post, "post")
    pre_a = _as_array(pre, "pre")
    _same_shape(pre_a, "pre", post_a.shape, "post")
    roi = _as_mask(mask, "mask", post_a.shape, "post")
    vpost, vpre, n_bad = _paired_values(post_a, pre_a, roi, "post and pre", "mask", nan_policy)
    _no_negative(vpost, "post", _MAGNITUDE)
    _no_negative(vpre, "pre", _MAGNITUDE)
    m_post, m_pre = float(vpost.mean()), float(vpre.mean())
    r_post_mean = r_pre_mean = None
    s_post, s_pre = m_post, m_pre
    if reference is not None:
        ref = _as_mask(reference, "reference", post_a.shape, "post")
        _no_overlap(roi, ref, "mask", "reference")
        rpost, rpre, _ = _paired_values(post_a, pre_a, ref, "post and pre", "reference",
                                        nan_policy)
        _no_negative(rpost, "post", _MAGNITUDE)
        _no_negative(rpre, "pre", _MAGNITUDE)
        r_post_mean, r_pre_mean = float(rpost.mean()), float(rpre.mean())
        if r_post_mean <= 0 or r_pre_mean <= 0:
            raise ValidationError("the reference ROI mean is 0 in post or pre; the reference "
                                  "tissue must have signal")
        s_post, s_pre = m_post / r_post_mean, m_pre / r_pre_mean
    if s_pre <= 0:
        raise ValidationError("the pre-injection ROI mean is 0; the signal loss is undefined")
    return SignalLoss(
        loss_percent=100.0 * (1.0 - s_post / s_pre), mean_pre=m_pre, mean_post=m_post,
        reference_mean_pre=r_pre_mean, reference_mean_post=r_post_mean,
        normalised_pre=s_pre, normalised_post=s_post, n_voxels=int(vpost.size),
        n_excluded_nonfinite=n_bad)


#: Class names of :func:`tumour_to_normal_ratio`, from darkest to brightest.
TNR_CLASSES = ("strong", "moderate", "weak")


@dataclass(frozen=True)
class TumourToNormalRatio:
    """Tumour-to-normal T2*-weighted signal ratio and its class.

    ``ratio = mean(tumour) / mean(normal)`` (dimensionless). ``label`` is
    ``'strong'`` (ratio < lower boundary), ``'moderate'`` (lower <= ratio <=
    upper) or ``'weak'`` (ratio > upper) darkening of the tumour.
    """

    ratio: float
    label: str
    tumour_mean: float
    normal_mean: float
    boundaries: tuple
    n_tumour: int
    n_normal: int
    n_excluded_nonfinite: int

    def as_dict(self) -> dict:
        """Plain JSON-able values."""
        return {k: _jsonable(getattr(self, k)) for k in self.__dataclass_fields__}


def tumour_to_normal_ratio(t2star_w, *, tumour_mask, normal_mask, boundaries=TNR_BOUNDARIES,
                           nan_policy: str = "omit") -> TumourToNormalRatio:
    """Tumour-to-normal-tissue signal ratio on a T2*-weighted image, in three classes.

    ``TNR = mean(image[tumour]) / mean(image[normal])``. After an iron-oxide
    agent, accumulation in the tumour darkens it relative to normal tissue,
    so a lower TNR means more T2* contrast in the tumour. Classes (Chen et
    al., Nanoscale 2018;10:1788; boundaries configurable):

    - ``'strong'``: TNR < 0.5, the tumour has less than half the signal of
      normal tissue: marked negative (T2*) enhancement;
    - ``'moderate'``: 0.5 <= TNR <= 0.7;
    - ``'weak'``: TNR > 0.7, little darkening.

    We could not consult the paper: the three classes and boundaries are as
    specified in oncomri issue 4, and the readings above follow from the
    ratio's definition (the darker the tumour relative to normal tissue, the
    stronger the iron contrast), not from the paper's text. Check them
    against the paper before using the class names in a report.

    Parameters
    ----------
    t2star_w : array_like
        T2*-weighted magnitude image (>= 0).
    tumour_mask, normal_mask : array_like of bool
        Tumour ROI and normal-tissue ROI (must not overlap).
    boundaries : (float, float)
        Lower and upper class boundaries, 0 < lower < upper (default 0.5, 0.7).
    nan_policy : {'omit', 'raise'}

    Returns
    -------
    TumourToNormalRatio

    Raises
    ------
    ValidationError
        Bad boundaries, empty or overlapping masks, negative intensities, a
        normal-tissue mean of 0.
    GeometryError
        Shapes differ.
    """
    nan_policy = _check_nan_policy(nan_policy)
    img = _as_array(t2star_w, "t2star_w")
    tum = _as_mask(tumour_mask, "tumour_mask", img.shape, "t2star_w")
    nor = _as_mask(normal_mask, "normal_mask", img.shape, "t2star_w")
    _no_overlap(tum, nor, "tumour_mask", "normal_mask")
    try:
        lo, hi = (float(b) for b in boundaries)
    except (TypeError, ValueError) as exc:
        raise ValidationError(
            f"boundaries must be two numbers (lower, upper), got {boundaries!r}") from exc
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise ValidationError(f"boundaries must satisfy 0 < lower < upper, got {boundaries!r}")
    vt, bad_t = _roi_values(img, tum, "t2star_w", "tumour_mask", nan_policy)
    vn, bad_n = _roi_values(img, nor, "t2star_w", "normal_mask", nan_policy)
    _no_negative(vt, "t2star_w", _MAGNITUDE)
    _no_negative(vn, "t2star_w", _MAGNITUDE)
    mt, mn = float(vt.mean()), float(vn.mean())
    if mn <= 0:
        raise ValidationError("the normal-tissue ROI mean is 0; the ratio is undefined")
    ratio = mt / mn
    label = TNR_CLASSES[0] if ratio < lo else TNR_CLASSES[1] if ratio <= hi else TNR_CLASSES[2]
    return TumourToNormalRatio(
        ratio=ratio, label=label, tumour_mean=mt, normal_mean=mn, boundaries=(lo, hi),
        n_tumour=int(vt.size), n_normal=int(vn.size), n_excluded_nonfinite=bad_t + bad_n)


@dataclass(frozen=True)
class RCBVClassification:
    """rCBV against a cut-off: ``'progression'`` if rCBV > threshold, else
    ``'pseudoprogression'`` (rCBV dimensionless)."""

    rcbv: float
    threshold: float
    label: str
    suggests_progression: bool

    def as_dict(self) -> dict:
        """Plain JSON-able values (rCBV is dimensionless)."""
        return {k: _jsonable(getattr(self, k)) for k in self.__dataclass_fields__}


def classify_rcbv(rcbv, *, threshold: float = RCBV_THRESHOLD_FERUMOXYTOL) -> RCBVClassification:
    """True progression vs pseudoprogression from a lesion's relative CBV.

    Gahramanov et al. (Radiology 2013;266:842) measured rCBV with dynamic
    susceptibility-weighted contrast-enhanced perfusion MRI using ferumoxytol
    in glioblastoma that looked progressive on conventional MRI after
    chemoradiotherapy. rCBV > 1.75 was classed as tumour (true progression)
    and rCBV <= 1.75 as pseudoprogression; with ferumoxytol, low rCBV went with
    longer overall survival (median 591 vs 163 days). The cut-off applies to
    ferumoxytol rCBV normalised as in that study (lesion CBV relative to
    normal-appearing tissue); with gadolinium agents rCBV is affected by
    leakage and the cut-off is not transferable.

    Parameters
    ----------
    rcbv : float
        The lesion's relative cerebral blood volume (dimensionless, >= 0).
    threshold : float
        Cut-off (default 1.75); strictly greater means progression.

    Returns
    -------
    RCBVClassification

    Raises
    ------
    ValidationError
        rCBV not a single finite number >= 0; threshold not > 0.
    """
    if np.ndim(rcbv) != 0:
        raise ValidationError(
            f"rcbv must be a single number (the lesion's rCBV), got shape {np.shape(rcbv)}")
    value = _finite_number(rcbv, "rcbv", nonnegative=True)
    thr = _finite_number(threshold, "threshold", positive=True)
    progression = value > thr
    return RCBVClassification(
        rcbv=value, threshold=thr,
        label="progression" if progression else "pseudoprogression",
        suggests_progression=bool(progression))
