"""Lymph-node classification on post-iron T2*-weighted MRI (lymphotropic nanoparticle MRI).

After an intravenous ultrasmall iron oxide (ferumoxtran-10, ferumoxytol) the
particles reach lymph nodes through the interstitium and lymphatics and are
taken up by the macrophages of normal nodal tissue, which then loses signal
on T2*-weighted images. Metastatic tissue has no such macrophages and keeps
its signal. Harisinghani et al. (N Engl J Med 2003;348:2491; ferumoxtran-10,
2.6 mg Fe/kg, imaging 24 h later, prostate cancer) read nodes with a
homogeneous decrease in signal as benign and nodes with focal (or global)
high-signal areas as metastatic; the same reading criteria are described in
Harisinghani et al., RadioGraphics 2004;24:867.

Their reading was visual. :func:`classify_lymph_node` makes it operational:

1. A node voxel is **high-signal** if its intensity is at or above a
   threshold ``T`` (i.e. *not* darker than T, the complement of the
   hypointense rule of :func:`oncomri.roi.celltracking.hypointense_fraction`):
   either an absolute ``threshold`` chosen by the user, or
   ``T = reference_fraction · mean(image[reference_mask])`` for a
   reference-tissue ROI of the same image (default fraction 0.5, the
   "darker than half the reference" rule specified in oncomri issue 4; no
   primary source for 0.5 has been verified, so state it in analyses).
2. High-signal voxels are grouped into connected **focal areas**
   (``scipy.ndimage.label``, face connectivity by default).
3. The node is **suspicious** if at least one focal area has a volume >=
   ``min_focal_volume_mm3``, else **benign** (homogeneous low signal). A
   node that took up no iron at all is one large focal area, hence
   suspicious, as in the paper's reading. ``min_focal_volume_mm3`` has no
   published value and must be given: it is the smallest focus the study
   wants to call, and should be several voxels to be robust to noise.

Partial volume with the bright fat around a node can make its outer voxel
layer look high-signal; ``exclude_boundary_mm`` leaves such a layer out.

Pure functions on arrays (scipy.ndimage, scipy.spatial); no file I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull
from scipy.spatial.distance import pdist

from ..core.errors import ValidationError
from .celltracking import (
    DEFAULT_REFERENCE_FRACTION,
    _as_array,
    _as_mask,
    _check_affine,
    _connectivity,
    _finite_number,
    _jsonable,
    _MAGNITUDE,
    _no_negative,
    _no_overlap,
    _roi_values,
    _to_world,
    _voxel_sizes,
)

__all__ = [
    "LYMPH_NODE_CLASSES",
    "LymphNodeClassification",
    "classify_lymph_node",
    "feret_diameter_mm",
]

#: Classes of :func:`classify_lymph_node`.
LYMPH_NODE_CLASSES = ("benign", "suspicious")

_CORNERS = np.array([[i, j, k] for i in (-0.5, 0.5) for j in (-0.5, 0.5) for k in (-0.5, 0.5)])


def feret_diameter_mm(mask, *, voxel_size_mm) -> float:
    """Largest diameter (mm) of a voxel region: its maximum caliper (Feret) diameter.

    The region is the union of its voxels as boxes (centre ± half a voxel
    along each axis); the diameter is the largest distance between two of
    their corners, found on the corners' convex hull
    (``scipy.spatial.ConvexHull``). One 1 mm voxel measures √3 mm; a
    voxelised ball of diameter D measures D to within about one voxel.

    Parameters
    ----------
    mask : array_like of bool (X, Y, Z)
        The region (need not be connected).
    voxel_size_mm : float or sequence of 3 float
        Voxel edge lengths (mm).

    Returns
    -------
    float
        The diameter in mm.
    """
    m = np.asanyarray(mask)
    if m.ndim != 3:
        raise ValidationError(f"mask must be 3-D (X, Y, Z), got shape {m.shape}")
    m = _as_mask(m, "mask", m.shape)
    vs = _voxel_sizes(voxel_size_mm, 3)
    idx = np.argwhere(m)
    # corners in half-voxel integer units, de-duplicated between neighbours
    doubled = (2 * idx[:, None, :] + (2 * _CORNERS)[None]).reshape(-1, 3).astype(np.int64)
    corners = np.unique(doubled, axis=0)
    pts = corners * (vs / 2.0)
    hull = ConvexHull(pts)
    return float(pdist(pts[hull.vertices]).max())


@dataclass(frozen=True, eq=False)
class LymphNodeClassification:
    """Lymph-node class and the measurements behind it (see the module docstring).

    ``high_signal_fraction`` is the fraction of the analysed node voxels at
    or above ``threshold`` (image intensity unit). The ``largest_focal_*``
    fields describe the largest connected high-signal area whether or not
    it reaches ``min_focal_volume_mm3`` (volume 0 and diameters 0 when there
    is none); ``n_focal_areas`` counts those that do. ``focal_labels`` is an
    int32 image labelling those focal areas 1..n, largest first (not in
    ``as_dict``).
    """

    classification: str
    threshold: float
    threshold_rule: str  # 'absolute' or 'reference'
    reference_mean: float | None
    reference_fraction: float | None
    min_focal_volume_mm3: float
    n_node_voxels: int
    node_volume_mm3: float
    n_excluded_boundary: int
    n_excluded_nonfinite: int
    high_signal_fraction: float
    high_signal_volume_mm3: float
    n_focal_areas: int
    largest_focal_volume_mm3: float
    largest_focal_diameter_mm: float
    largest_focal_equivalent_diameter_mm: float
    largest_focal_centroid_voxel: tuple | None
    largest_focal_centroid_world_mm: tuple | None
    focal_labels: np.ndarray = field(repr=False)

    def as_dict(self) -> dict:
        """Plain JSON-able values, units in the key names (the label image is left out)."""
        return {k: _jsonable(getattr(self, k)) for k in self.__dataclass_fields__
                if k != "focal_labels"}


def classify_lymph_node(image, *, node_mask, voxel_size_mm, min_focal_volume_mm3,
                        reference_mask=None, reference_fraction: float = DEFAULT_REFERENCE_FRACTION,
                        threshold: float | None = None, connectivity: int = 1,
                        exclude_boundary_mm: float = 0.0, affine=None) -> LymphNodeClassification:
    """Classify a lymph node on a post-iron T2*-weighted image as benign or suspicious.

    Benign: homogeneous low signal (iron taken up throughout). Suspicious: a
    focal high-signal area of at least ``min_focal_volume_mm3`` (tissue
    without iron uptake, as metastases; Harisinghani et al., N Engl J Med
    2003;348:2491). The rule is given step by step in the module docstring.

    Parameters
    ----------
    image : array_like (X, Y, Z)
        T2*-weighted magnitude image after the iron agent (>= 0).
    node_mask : array_like of bool (X, Y, Z)
        The lymph node.
    voxel_size_mm : float or sequence of 3 float
        Voxel edge lengths (mm).
    min_focal_volume_mm3 : float
        Smallest focal high-signal area (mm³) that makes a node suspicious,
        >= 0 (no published value: a required choice of the study).
    reference_mask : array_like of bool, optional
        Reference-tissue ROI (e.g. muscle) defining the threshold as
        ``reference_fraction`` × its mean; must not overlap the node.
    reference_fraction : float
        Multiple of the reference mean (> 0, default 0.5).
    threshold : float, optional
        Absolute intensity threshold (> 0) instead of a reference ROI. Give
        exactly one of ``threshold`` and ``reference_mask``.
    connectivity : int
        1 (faces, default), 2 (faces and edges) or 3 (also corners) for
        grouping high-signal voxels into focal areas.
    exclude_boundary_mm : float
        Leave out node voxels whose centre is within this distance (mm) of
        the centre of the nearest voxel outside the node (``0``: none; one
        voxel size: the outer voxel layer), against partial volume with fat.
    affine : array_like (4, 4), optional
        Voxel -> world (mm) affine for the focal area's world centroid.

    Returns
    -------
    LymphNodeClassification

    Raises
    ------
    ValidationError
        Both or neither of ``threshold`` and ``reference_mask``; negative or
        zero threshold, negative ``min_focal_volume_mm3`` or
        ``exclude_boundary_mm``; empty or overlapping masks; negative
        intensities; nothing left of the node to analyse.
    GeometryError
        Shape mismatch; affine inconsistent with ``voxel_size_mm``.
    """
    img = _as_array(image, "image", ndim=3)
    node = _as_mask(node_mask, "node_mask", img.shape)
    vs = _voxel_sizes(voxel_size_mm, 3)
    aff = _check_affine(affine, vs)
    min_vol = _finite_number(min_focal_volume_mm3, "min_focal_volume_mm3", nonnegative=True)
    margin = _finite_number(exclude_boundary_mm, "exclude_boundary_mm", nonnegative=True)
    structure = _connectivity(connectivity, 3)
    if (threshold is None) == (reference_mask is None):
        raise ValidationError("give either threshold (an absolute intensity) or reference_mask "
                              "(a reference-tissue ROI), not both and not neither")
    ref_mean = frac = None
    if threshold is not None:
        thr = _finite_number(threshold, "threshold", nonnegative=True)
        if thr == 0:
            raise ValidationError("threshold must be > 0 (every magnitude voxel is >= 0)")
        rule = "absolute"
    else:
        ref = _as_mask(reference_mask, "reference_mask", img.shape)
        _no_overlap(node, ref, "node_mask", "reference_mask")
        frac = _finite_number(reference_fraction, "reference_fraction", positive=True)
        vals, _ = _roi_values(img, ref, "image", "reference_mask", "omit")
        _no_negative(vals, "image", _MAGNITUDE)
        ref_mean = float(vals.mean())
        if ref_mean <= 0:
            raise ValidationError("the reference ROI mean is 0; the reference tissue must have "
                                  "signal")
        thr = frac * ref_mean
        rule = "reference"

    region = node.copy()
    n_boundary = 0
    if margin > 0:
        depth = ndi.distance_transform_edt(np.pad(node, 1), sampling=vs)[1:-1, 1:-1, 1:-1]
        region &= depth > margin
        n_boundary = int(node.sum() - region.sum())
    finite = np.isfinite(img)
    n_nonfinite = int((region & ~finite).sum())
    region &= finite
    if not region.any():
        raise ValidationError("no node voxel is left to analyse (all excluded as boundary or "
                              "non-finite); lower exclude_boundary_mm or check the image")
    _no_negative(img[region], "image", _MAGNITUDE)

    voxel_volume = float(np.prod(vs))
    high = region & (img >= thr)
    labels, n = ndi.label(high, structure=structure)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    volumes = sizes * voxel_volume
    tol = 1e-9 * max(1.0, min_vol)
    focal = np.flatnonzero(volumes >= min_vol - tol) + 1 if n else np.zeros(0, int)
    # largest first
    focal = focal[np.argsort(-sizes[focal - 1], kind="stable")] if focal.size else focal
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[focal] = np.arange(1, focal.size + 1, dtype=np.int32)
    focal_labels = lut[labels]

    if n:
        big = int(np.argmax(sizes)) + 1
        comp = labels == big
        largest_vol = float(volumes[big - 1])
        diameter = feret_diameter_mm(comp, voxel_size_mm=vs)
        equivalent = (6.0 * largest_vol / math.pi) ** (1.0 / 3.0)
        centroid = tuple(float(c) for c in ndi.center_of_mass(comp))
    else:
        largest_vol = diameter = equivalent = 0.0
        centroid = None
    n_region = int(region.sum())
    return LymphNodeClassification(
        classification=LYMPH_NODE_CLASSES[1] if focal.size else LYMPH_NODE_CLASSES[0],
        threshold=float(thr), threshold_rule=rule, reference_mean=ref_mean,
        reference_fraction=frac, min_focal_volume_mm3=min_vol, n_node_voxels=n_region,
        node_volume_mm3=n_region * voxel_volume, n_excluded_boundary=n_boundary,
        n_excluded_nonfinite=n_nonfinite, high_signal_fraction=float(high.sum()) / n_region,
        high_signal_volume_mm3=float(high.sum()) * voxel_volume, n_focal_areas=int(focal.size),
        largest_focal_volume_mm3=largest_vol, largest_focal_diameter_mm=diameter,
        largest_focal_equivalent_diameter_mm=equivalent,
        largest_focal_centroid_voxel=centroid,
        largest_focal_centroid_world_mm=None if centroid is None else _to_world(aff, centroid),
        focal_labels=focal_labels)
