"""Per-ROI statistics of a map: first-order features with pyradiomics' definitions.

:func:`roi_statistics` summarises the values of a map (R2*, T2, ADC, a
T2-weighted signal ...) inside each label of a mask. The features and their
definitions follow pyradiomics' "First Order Features" (van Griethuysen et
al., Cancer Res 2017;77:e104; pyradiomics documentation, "Radiomic Features
-> First Order Features", class ``RadiomicsFirstOrder``), with
``voxelArrayShift`` c = 0 (pyradiomics' default and the IBSI definition).
With X the N finite ROI values and x̄ their mean:

- mean = Σ X / N; median; minimum; maximum; range = max − min.
- variance = Σ (X − x̄)² / N and SD = √variance: the *biased* (1/N, population)
  estimator, as pyradiomics (not the 1/(N−1) sample estimator).
- skewness = μ₃ / μ₂^(3/2), kurtosis = μ₄ / μ₂² with central moments
  μₖ = Σ (X − x̄)ᵏ / N. The kurtosis is NOT the excess kurtosis: a normal
  distribution has kurtosis 3 (IBSI's "excess kurtosis" is this minus 3).
  For a flat ROI (μ₂ = 0) both are 0, as in pyradiomics.
- percentiles by linear interpolation between order statistics
  (``numpy.percentile`` default, as pyradiomics); IQR = P75 − P25.
- MAD = Σ |X − x̄| / N (mean absolute deviation); robust MAD = the MAD of
  the values between P10 and P90 inclusive, about their own mean.
- energy = Σ X², total energy = V_voxel · energy (mm³ · unit²),
  RMS = √(energy / N).
- entropy = −Σ p(i) log₂(p(i) + ε) and uniformity = Σ p(i)² over the
  histogram p(i) = counts(i) / N of the values discretised with a fixed bin
  width w (pyradiomics default 25 in the map's unit) whose edges start at
  the largest multiple of w not above the minimum (min − (min mod w)) and
  run in steps of w past the maximum, bins half-open [e_k, e_k+1); or with a
  fixed number of bins between min and max (pyradiomics' ``binCount``).
  ε = 2.2 × 10⁻¹⁶ (machine epsilon, ``numpy.spacing(1)``).

Choose ``bin_width`` in the unit of the map: the default 25 was made for CT
Hounsfield units and gives a single bin (entropy 0, uniformity 1) for maps
with a small range such as ADC in mm²/s or R2* of healthy tissue in 1/s.

Voxels inside the ROI whose value is not finite (NaN from a failed fit, ±inf)
are left out of every statistic and counted in ``n_nan``; the ROI volume
counts all ROI voxels.

Pure functions on arrays; no file I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..core.errors import GeometryError, ValidationError

__all__ = ["roi_statistics", "RoiStatistics", "DEFAULT_BIN_WIDTH", "DEFAULT_PERCENTILES"]

#: pyradiomics' default ``binWidth`` (van Griethuysen et al., Cancer Res 2017;77:e104),
#: in the unit of the map.
DEFAULT_BIN_WIDTH = 25.0
#: Percentiles reported by default (P10 and P90 are pyradiomics features; P25/P75 give the IQR).
DEFAULT_PERCENTILES = (10, 25, 50, 75, 90)
_EPS = float(np.spacing(1))  # pyradiomics' epsilon in the entropy
_MAX_BINS = 1_000_000


@dataclass(frozen=True)
class RoiStatistics:
    """First-order statistics of a map inside one ROI label.

    Values are in the unit of the map (``value_unit``) unless stated: counts
    are plain numbers, ``volume_mm3`` is in mm³, ``variance`` and ``energy``
    in unit², ``total_energy`` in mm³·unit², ``skewness``, ``kurtosis``,
    ``entropy`` (bits) and ``uniformity`` are dimensionless.
    See the module docstring for the definitions (pyradiomics).
    """

    label: int
    n_voxels: int  # finite values used
    n_nan: int  # ROI voxels left out because their value is NaN or inf
    volume_mm3: float  # all ROI voxels (n_voxels + n_nan) x voxel volume
    mean: float
    sd: float
    variance: float
    median: float
    minimum: float
    maximum: float
    range: float
    iqr: float
    mad: float
    robust_mad: float
    skewness: float
    kurtosis: float
    energy: float
    total_energy: float
    rms: float
    entropy: float
    uniformity: float
    percentiles: tuple = ()  # ((p, value), ...), p in percent
    histogram_counts: tuple = ()
    histogram_edges: tuple = ()  # len(counts) + 1 edges, in the map's unit
    bin_width: float | None = None  # None when a bin count was given
    value_unit: str | None = None
    voxel_volume_mm3: float = field(default=float("nan"))

    def percentile(self, p: float) -> float:
        """The ``p``-th percentile (one of those computed)."""
        for q, v in self.percentiles:
            if q == p:
                return v
        raise ValidationError(
            f"percentile {p} was not computed; pass percentiles=(..., {p}) to roi_statistics")

    def as_dict(self) -> dict:
        """Plain JSON-able dict: numbers, lists and strings; units in ``units``."""
        unit = self.value_unit or "1"
        out = {
            "label": int(self.label),
            "n_voxels": int(self.n_voxels),
            "n_nan": int(self.n_nan),
            "volume_mm3": float(self.volume_mm3),
            "voxel_volume_mm3": float(self.voxel_volume_mm3),
        }
        names = ("mean", "sd", "variance", "median", "minimum", "maximum", "range", "iqr",
                 "mad", "robust_mad", "skewness", "kurtosis", "energy", "total_energy", "rms",
                 "entropy", "uniformity")
        for name in names:
            out[name] = float(getattr(self, name))
        for q, v in self.percentiles:
            out[_percentile_key(q)] = float(v)
        out["histogram_counts"] = [int(c) for c in self.histogram_counts]
        out["histogram_edges"] = [float(e) for e in self.histogram_edges]
        out["bin_width"] = None if self.bin_width is None else float(self.bin_width)
        out["value_unit"] = self.value_unit
        same = {k: unit for k in ("mean", "sd", "median", "minimum", "maximum", "range", "iqr",
                                  "mad", "robust_mad", "rms", "histogram_edges", "bin_width")}
        same.update({_percentile_key(q): unit for q, _ in self.percentiles})
        out["units"] = {
            **same,
            "volume_mm3": "mm3",
            "voxel_volume_mm3": "mm3",
            "variance": f"({unit})^2",
            "energy": f"({unit})^2",
            "total_energy": f"mm3*({unit})^2",
            "skewness": "1",
            "kurtosis": "1",
            "entropy": "bit",
            "uniformity": "1",
            "n_voxels": "1",
            "n_nan": "1",
            "histogram_counts": "1",
        }
        out["definitions"] = ("pyradiomics first-order features (van Griethuysen et al., "
                              "Cancer Res 2017;77:e104)")
        return out


def _percentile_key(q: float) -> str:
    text = f"{q:g}".replace(".", "_")
    return f"p{text}"


def _voxel_volume(voxel_size_mm) -> float:
    try:
        vs = np.asarray(voxel_size_mm, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ValidationError(
            f"voxel_size_mm must be 3 numbers (mm), got {voxel_size_mm!r}") from exc
    if vs.size != 3 or not np.all(np.isfinite(vs)) or np.any(vs <= 0):
        raise ValidationError(
            f"voxel_size_mm must be 3 positive voxel edge lengths in mm, got {voxel_size_mm!r}")
    return float(np.prod(vs))


def _bin_edges(x: np.ndarray, bins, bin_width) -> tuple[np.ndarray, float | None]:
    """Histogram edges as pyradiomics' fixed bin width (default) or fixed bin count."""
    lo, hi = float(x.min()), float(x.max())
    if bins is not None:
        return np.histogram_bin_edges(x, bins=int(bins)), None
    w = float(bin_width)
    low = lo - (lo % w)  # floor to a multiple of w (Python's % floors for negatives too)
    n_edges = int(math.ceil((hi + 2 * w - low) / w))
    if n_edges > _MAX_BINS:
        raise ValidationError(
            f"bin_width {w:g} makes {n_edges} bins over the ROI's range {lo:g}..{hi:g}; "
            "pass a larger bin_width (in the map's unit) or bins=")
    edges = np.arange(low, hi + 2 * w, w)
    if edges.size == 1:  # flat ROI on a multiple of w: one bin of width 1 around it
        edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
    return edges, w


def _features(x: np.ndarray, *, label: int, n_nan: int, n_total: int, voxel_volume: float,
              percentiles, bins, bin_width, value_unit) -> RoiStatistics:
    n = x.size
    mean = float(x.mean())
    d = x - mean
    m2 = float(np.mean(d * d))
    m3 = float(np.mean(d ** 3))
    m4 = float(np.mean(d ** 4))
    flat = m2 == 0.0
    skew = 0.0 if flat else m3 / m2 ** 1.5
    kurt = 0.0 if flat else m4 / m2 ** 2
    pct = np.percentile(x, [10, 25, 75, 90])
    p10, p25, p75, p90 = (float(v) for v in pct)
    central = x[(x >= p10) & (x <= p90)]
    robust_mad = float(np.mean(np.abs(central - central.mean())))
    energy = float(np.sum(x * x))
    edges, width = _bin_edges(x, bins, bin_width)
    counts = np.histogram(x, bins=edges)[0]
    p = counts[counts > 0] / n
    entropy = float(-np.sum(p * np.log2(p + _EPS)))
    uniformity = float(np.sum(p * p))
    asked = tuple(float(q) for q in percentiles)
    values = np.percentile(x, asked) if asked else ()
    return RoiStatistics(
        label=int(label), n_voxels=int(n), n_nan=int(n_nan),
        volume_mm3=float(n_total * voxel_volume),
        mean=mean, sd=math.sqrt(m2), variance=m2, median=float(np.median(x)),
        minimum=float(x.min()), maximum=float(x.max()), range=float(x.max() - x.min()),
        iqr=p75 - p25, mad=float(np.mean(np.abs(d))), robust_mad=robust_mad,
        skewness=float(skew), kurtosis=float(kurt), energy=energy,
        total_energy=voxel_volume * energy, rms=math.sqrt(energy / n),
        entropy=entropy, uniformity=uniformity,
        percentiles=tuple((q if q != int(q) else int(q), float(v))
                          for q, v in zip(asked, values)),
        histogram_counts=tuple(int(c) for c in counts),
        histogram_edges=tuple(float(e) for e in edges), bin_width=width,
        value_unit=value_unit, voxel_volume_mm3=voxel_volume)


def roi_statistics(values, mask, *, voxel_size_mm, labels=None,
                   percentiles=DEFAULT_PERCENTILES, bins: int | None = None,
                   bin_width: float | None = None, value_unit: str | None = None
                   ) -> list[RoiStatistics]:
    """First-order statistics of ``values`` inside each label of ``mask``.

    Parameters
    ----------
    values : array_like (X, Y, Z)
        The map, in its own unit (e.g. R2* in 1/s); NaN and ±inf allowed.
    mask : array_like (X, Y, Z), bool or integer
        A binary mask (one ROI, reported as label 1) or a label image
        (0 = background, each positive value one ROI), on the grid of
        ``values`` (resample it first with :func:`oncomri.roi.resample_mask`).
    voxel_size_mm : sequence of 3 float
        Voxel edge lengths in mm (``Volume.voxel_size``), for the volumes.
    labels : sequence of int, optional
        The labels to report, in this order. Default: every positive label
        present in ``mask``, ascending.
    percentiles : sequence of float
        Percentiles (0..100) to report; default (10, 25, 50, 75, 90).
    bins : int, optional
        Histogram with this many equal bins between the ROI's min and max
        (pyradiomics ``binCount``). Exclusive with ``bin_width``.
    bin_width : float, optional
        Histogram bin width in the unit of ``values`` (pyradiomics
        ``binWidth``). Default :data:`DEFAULT_BIN_WIDTH` (25) when neither is
        given — pick one that suits the map's range (see the module notes).
    value_unit : str, optional
        Unit of ``values`` (e.g. ``'1/s'``), copied into the results' units.

    Returns
    -------
    list of RoiStatistics
        One per label, in the order of ``labels``.

    Raises
    ------
    ValidationError
        An empty ROI (no voxel with the label, or no finite value in it),
        a bad ``mask``, ``voxel_size_mm``, ``percentiles``, ``bins`` or
        ``bin_width``, or both ``bins`` and ``bin_width``.
    GeometryError
        ``values`` and ``mask`` differ in shape.

    Notes
    -----
    Definitions: pyradiomics first-order features (van Griethuysen et al.,
    Cancer Res 2017;77:e104), listed in this module's docstring: biased
    (1/N) variance and SD, kurtosis not in excess (normal = 3), entropy in
    bits with a fixed bin width by default.
    """
    vals = np.asanyarray(values)
    m = np.asanyarray(mask)
    if vals.dtype.kind not in "biuf":
        raise ValidationError(f"values has dtype {vals.dtype}; pass a real-valued map")
    if m.dtype.kind not in "biu":
        raise ValidationError(
            f"mask has dtype {m.dtype}; pass a bool mask or an integer label image")
    if vals.shape != m.shape:
        raise GeometryError(
            f"values has shape {vals.shape} but mask has shape {m.shape}; resample the mask "
            "onto the map's grid first (oncomri.roi.resample_mask)")
    voxel_volume = _voxel_volume(voxel_size_mm)
    if bins is not None and bin_width is not None:
        raise ValidationError("give either bins or bin_width, not both")
    if bins is not None and (isinstance(bins, bool) or not isinstance(bins, (int, np.integer))
                             or not 1 <= bins <= _MAX_BINS):
        raise ValidationError(f"bins must be a positive integer, got {bins!r}")
    if bins is None:
        if bin_width is None:
            bin_width = DEFAULT_BIN_WIDTH
        if isinstance(bin_width, bool) or not isinstance(bin_width, (int, float, np.number)) \
                or not (math.isfinite(bin_width) and bin_width > 0):
            raise ValidationError(
                f"bin_width must be a positive number in the map's unit, got {bin_width!r}")
    try:
        pct = [float(q) for q in percentiles]
    except (TypeError, ValueError) as exc:
        raise ValidationError(
            f"percentiles must be numbers from 0 to 100, got {percentiles!r}") from exc
    if any(not (0 <= q <= 100) for q in pct):
        raise ValidationError(f"percentiles must lie in 0..100, got {list(percentiles)}")
    if m.dtype.kind == "i" and m.size and m.min() < 0:
        raise ValidationError("mask holds negative labels; use 0 for background and labels > 0")

    if m.dtype == np.bool_:
        lab_img = m.view(np.uint8) if m.flags.c_contiguous else m.astype(np.uint8)
    else:
        lab_img = m
    if labels is None:
        present = np.unique(lab_img)
        wanted = [int(v) for v in present if v > 0]
        if not wanted:
            raise ValidationError("mask holds no voxel (the ROI is empty); pass a non-empty mask")
    else:
        try:
            wanted = [int(v) for v in labels]
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"labels must be positive integers, got {labels!r}") from exc
        if not wanted or any(v <= 0 for v in wanted):
            raise ValidationError(f"labels must be a non-empty list of positive integers, got "
                                  f"{labels!r}")

    results = []
    finite = np.isfinite(vals) if vals.dtype.kind == "f" else None
    for lab in wanted:
        sel = lab_img == lab
        n_total = int(np.count_nonzero(sel))
        if n_total == 0:
            raise ValidationError(
                f"label {lab} holds no voxel in mask (the ROI is empty); drop it from labels")
        if finite is not None:
            good = sel & finite
            x = np.asarray(vals[good], dtype=np.float64)
        else:
            x = np.asarray(vals[sel], dtype=np.float64)
        n_nan = n_total - x.size
        if x.size == 0:
            raise ValidationError(
                f"label {lab}: all {n_total} ROI voxels are NaN or inf in values; the map has no "
                "valid value there (check the fit status)")
        results.append(_features(x, label=lab, n_nan=n_nan, n_total=n_total,
                                 voxel_volume=voxel_volume, percentiles=pct, bins=bins,
                                 bin_width=bin_width, value_unit=value_unit))
    return results
