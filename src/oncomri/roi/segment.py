"""Semi-automatic tumour segmentation from one seed point (for users without masks).

:func:`segment_from_seed` grows a region from a voxel the user clicks inside
the tumour on a T2-weighted (or any) image where the tumour is brighter or
darker than its surroundings, then cleans it up:

1. region: either confidence-connected region growing (``'region_growing'``)
   or an intensity window plus the connected component holding the seed
   (``'threshold'``), both with SimpleITK (face-connected, 6-neighbourhood);
2. holes enclosed in 3D are filled (e.g. a necrotic core is part of the tumour
   volume);
3. a morphological opening with a ball of ``opening_radius_mm`` removes
   thin bridges to touching structures and one-voxel spurs;
4. the connected component containing the seed is kept.

Semi-automatic masks must be checked by a reader; write them with
``algorithm_type='semiautomatic'`` when exporting a DICOM SEG.

Pure function on arrays (SimpleITK inside); no file I/O.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from ..core.errors import MissingDependencyError, ValidationError

__all__ = ["segment_from_seed", "SEGMENT_METHODS"]

#: Methods of :func:`segment_from_seed`.
SEGMENT_METHODS = ("region_growing", "threshold")


def _sitk():
    try:
        import SimpleITK
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise MissingDependencyError(
            "segment_from_seed needs SimpleITK; install it with pip install SimpleITK") from exc
    return SimpleITK


def _seed_index(seed_ijk, shape) -> tuple:
    try:
        seed = [s for s in np.asarray(seed_ijk).reshape(-1).tolist()]
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"seed_ijk must be 3 voxel indices (i, j, k), got {seed_ijk!r}") \
            from exc
    if len(seed) != 3 or not all(isinstance(s, (int, float)) and float(s).is_integer()
                                 for s in seed):
        raise ValidationError(
            f"seed_ijk must be 3 integer voxel indices (i, j, k), got {seed_ijk!r}")
    seed = tuple(int(s) for s in seed)
    if any(not 0 <= s < n for s, n in zip(seed, shape)):
        raise ValidationError(
            f"seed_ijk {seed} lies outside the image of shape {tuple(shape)}; pick a voxel "
            "inside the tumour (0-based indices)")
    return seed


def _radius_vox(radius_mm: float, voxel_size: np.ndarray) -> list:
    return [int(round(radius_mm / v)) for v in voxel_size]


def segment_from_seed(image, seed_ijk, *, voxel_size_mm, method: str = "region_growing",
                      tolerance: float | None = None, multiplier: float = 2.5,
                      iterations: int = 5, neighborhood_radius: int = 2,
                      fill_holes: bool = True, opening_radius_mm: float | None = None
                      ) -> np.ndarray:
    """Segment the object around a seed voxel: region growing or threshold, then clean-up.

    Parameters
    ----------
    image : array_like (X, Y, Z)
        A 3D image (e.g. T2-weighted signal, arbitrary units); finite values.
    seed_ijk : sequence of 3 int
        Voxel indices (0-based, in the array's axis order) of a point inside
        the object.
    voxel_size_mm : sequence of 3 float
        Voxel edge lengths in mm, for the structuring element in mm.
    method : {'region_growing', 'threshold'}
        ``'region_growing'``: SimpleITK ``ConfidenceConnected``: starting from
        the seed's neighbourhood (a box of ``neighborhood_radius`` voxels),
        voxels connected to the region whose value lies within
        mean ± ``multiplier`` × SD of the current region are added; mean
        and SD are re-estimated from the region ``iterations`` times.
        ``'threshold'``: the connected component containing the seed of
        the voxels whose value lies in a window (SimpleITK
        ``ConnectedThreshold``): mean of the seed's 3×3×3 neighbourhood ±
        ``tolerance`` if given, otherwise the side of Otsu's threshold of the
        whole image that holds the seed (Otsu, IEEE Trans Syst Man Cybern
        1979;9:62).
    tolerance : float, optional
        Half-width of the intensity window of ``'threshold'``, in the image's
        unit.
    multiplier : float
        Width of the acceptance interval of ``'region_growing'`` in SDs.
    iterations : int
        Re-estimations of the region's statistics (``'region_growing'``).
    neighborhood_radius : int
        Radius in voxels of the initial box around the seed
        (``'region_growing'``).
        The defaults (2.5 SD, 5 iterations, radius 2) are those of the
        confidence-connected example of the ITK Software Guide (Johnson,
        McCormick, Ibáñez, The ITK Software Guide, 4th ed., Kitware 2015,
        section "Confidence Connected").
    fill_holes : bool
        Fill cavities enclosed in 3D (``BinaryFillhole``).
    opening_radius_mm : float, optional
        Radius in mm of the opening's structuring element (per axis
        ``round(r / voxel size)`` voxels, so thick slices are not eroded
        through). Default: the smallest voxel size, i.e. one voxel in-plane.
        ``0`` switches the opening off.

    Returns
    -------
    ndarray of bool, shape of ``image``
        The object; it always contains the seed.

    Raises
    ------
    ValidationError
        A seed outside the image, non-finite image values, bad options,
        ``tolerance`` with ``'region_growing'`` (use ``multiplier``), or a
        seed whose own value falls outside the grown region's window.

    Notes
    -----
    Seeded region growing after Adams & Bischof (IEEE Trans Pattern Anal
    Mach Intell 1994;16:641), with ITK's confidence-connected criterion
    (Yoo et al., Stud Health Technol Inform 2002;85:586). If the opening
    removes the whole object (an object thinner than the structuring
    element) or the seed's part of it, the unopened region is returned.
    """
    sitk = _sitk()
    arr = np.asanyarray(image)
    if arr.ndim != 3:
        raise ValidationError(f"image must be 3D (X, Y, Z), got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise ValidationError(f"image has dtype {arr.dtype}; pass a real-valued image")
    if method not in SEGMENT_METHODS:
        raise ValidationError(f"method {method!r} is unknown; use one of {SEGMENT_METHODS}")
    seed = _seed_index(seed_ijk, arr.shape)
    try:
        vs = np.asarray(voxel_size_mm, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"voxel_size_mm must be 3 numbers (mm), got {voxel_size_mm!r}") \
            from exc
    if vs.size != 3 or not np.all(np.isfinite(vs)) or np.any(vs <= 0):
        raise ValidationError(
            f"voxel_size_mm must be 3 positive voxel edge lengths in mm, got {voxel_size_mm!r}")
    data = np.asarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(data)):
        raise ValidationError(
            "image holds NaN or inf; replace them (e.g. np.nan_to_num) before segmenting")
    if method == "region_growing" and tolerance is not None:
        raise ValidationError(
            "tolerance applies to method='threshold'; for 'region_growing' set multiplier")
    if not (isinstance(multiplier, (int, float, np.number)) and not isinstance(multiplier, bool)
            and math.isfinite(multiplier)
            and multiplier > 0):
        raise ValidationError(f"multiplier must be a positive number of SDs, got {multiplier!r}")
    for name, val, lo in (("iterations", iterations, 0),
                          ("neighborhood_radius", neighborhood_radius, 0)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < lo:
            raise ValidationError(f"{name} must be a non-negative integer, got {val!r}")
    if tolerance is not None and not (isinstance(tolerance, (int, float, np.number))
                                      and math.isfinite(tolerance) and tolerance >= 0):
        raise ValidationError(
            f"tolerance must be a non-negative number in the image's unit, got {tolerance!r}")
    if opening_radius_mm is None:
        opening_radius_mm = float(vs.min())
    if not (isinstance(opening_radius_mm, (int, float, np.number))
            and math.isfinite(opening_radius_mm)
            and opening_radius_mm >= 0):
        raise ValidationError(
            f"opening_radius_mm must be a non-negative length in mm, got {opening_radius_mm!r}")

    # numpy (x, y, z) -> SimpleITK array [z, y, x]; SimpleITK indices are (x, y, z)
    img = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    img.SetSpacing(tuple(float(v) for v in vs))
    seed_list = [list(seed)]
    if method == "region_growing":
        region = sitk.ConfidenceConnected(
            img, seedList=seed_list, numberOfIterations=int(iterations),
            multiplier=float(multiplier), initialNeighborhoodRadius=int(neighborhood_radius),
            replaceValue=1)
    else:
        lower, upper = _threshold_window(data, seed, tolerance, sitk, img)
        region = sitk.ConnectedThreshold(img, seedList=seed_list, lower=lower, upper=upper,
                                         replaceValue=1)
    if fill_holes:
        region = sitk.BinaryFillhole(region, fullyConnected=False, foregroundValue=1)
    grown = sitk.GetArrayFromImage(region).transpose(2, 1, 0).astype(bool)
    if not grown[seed]:
        raise ValidationError(
            f"the seed voxel's value {float(data[seed]):g} lies outside the grown region's "
            "intensity window; pick a seed nearer the object's centre or widen the window "
            "(multiplier or tolerance)")
    result = grown
    radius = _radius_vox(opening_radius_mm, vs)
    if any(radius):
        opened = sitk.BinaryMorphologicalOpening(region, kernelRadius=radius,
                                                 kernelType=sitk.sitkBall, foregroundValue=1)
        opened_arr = sitk.GetArrayFromImage(opened).transpose(2, 1, 0).astype(bool)
        if opened_arr[seed]:
            result = opened_arr
    return _component_with(result, seed)


def _threshold_window(data, seed, tolerance, sitk, img):
    """(lower, upper) intensity window of the 'threshold' method."""
    if tolerance is not None:
        sl = tuple(slice(max(0, s - 1), s + 2) for s in seed)
        centre = float(np.mean(data[sl]))
        return centre - float(tolerance), centre + float(tolerance)
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.SetInsideValue(0)
    otsu.SetOutsideValue(1)
    otsu.Execute(img)
    t = float(otsu.GetThreshold())
    lo, hi = float(data.min()), float(data.max())
    if data[seed] > t:
        return math.nextafter(t, math.inf), hi
    return lo, t


def _component_with(mask: np.ndarray, seed) -> np.ndarray:
    """The face-connected component of ``mask`` that contains ``seed``."""
    labels, _ = ndi.label(mask)
    return labels == labels[seed]
