"""Ablative margin of a liver tumour on post-ablation iron-enhanced T2*-weighted MRI.

Background (Koda et al., J Gastroenterol 2013;48:1283; Fukuda et al., Jpn J
Radiol 2019, doi 10.1007/s11604-019-00843-1): a superparamagnetic iron oxide
(SPIO, ferucarbotran) is given shortly *before* radiofrequency ablation (RFA)
of a hepatocellular carcinoma. Kupffer cells of the non-tumorous liver take it
up, so the liver turns dark on T2*-weighted images while the tumour, which has
few or no Kupffer cells, does not. After ablation the iron stays in the
coagulated liver, so on T2*-weighted MRI a few days later the ablated
non-tumorous liver around the treated tumour shows as a **hypointense rim**:
the ablative margin (AM). The ablation is classified (wording of Fukuda et
al.'s abstract, the classes Koda et al. introduced):

- **AM(+)**: the rim surrounds the tumour completely;
- **AM(0)**: the rim is partly discontinuous, without tumour protrusion;
- **AM(−)**: the rim is partly discontinuous *with* tumour protrusion (part of
  the tumour lies outside the ablated zone).

Fukuda et al. (85 HCCs) saw no local recurrence where the minimal AM was
>= 2 mm and recommend an AM of >= 2 mm: hence the default criterion of 2 mm.

Operational definition implemented by :func:`ablative_margin` (on voxel masks
of one grid; registration of the pre-ablation tumour is done elsewhere):

1. The **ablation zone** Z is the region inside the outer boundary of the
   ablation (tumour and rim together), holes filled
   (``scipy.ndimage.binary_fill_holes``). From an ``ablation_mask`` (with
   ``rim_mask`` too: their union). From a ``rim_mask`` alone: the rim with
   the space it encloses, where the tumour plugs gaps in the rim inside the
   rim's convex hull: ``Z = fill_holes(rim ∪ (tumour ∩ hull(rim)))``. A
   tumour voxel outside the convex hull of the rim protrudes through the rim
   (the ablation zone of RFA is near-convex; for a concave zone, e.g. next
   to a vessel, pass an ``ablation_mask``).
2. A tumour voxel outside Z makes the class **AM(−)**.
3. For every tumour **surface voxel** (a tumour voxel with a face neighbour
   outside the tumour) inside Z, the **margin** is the distance from its
   centre to the centre of the nearest voxel outside Z (Euclidean distance
   transform with the voxel sampling, ``scipy.ndimage.distance_transform_edt``),
   minus the voxel size along that direction, ``sqrt(Σ (u_i d_i)²)`` for the
   unit direction u and voxel sizes d. This is the distance between the two
   boundaries taken half-way between voxel centres, where the masks change:
   a rim k voxels thick along an axis measures k voxel sizes, a tumour touching
   the ablation boundary measures 0. On curved boundaries the minimum errs
   low, by up to one voxel size along the measured direction (up to a slice
   thickness across thick slices): the safe side for a safety margin. Use
   near-isotropic voxels for margin work. For tumour
   voxels outside Z the margin is negative: minus their distance to the
   nearest voxel of Z (how far the tumour protrudes).
4. **AM(+)** if no tumour voxel is outside Z and the minimal margin is >=
   ``criterion_mm``; otherwise **AM(0)**. The image border counts as
   outside the ablation zone.
5. **Coverage** is the fraction of the tumour's surface area (the exposed
   voxel faces, each weighted by its area in mm², so anisotropic voxels are
   weighted correctly) whose voxel has a margin >= ``criterion_mm``.

Axes of length 1 are dropped: a single slice (X, Y, 1) is analysed in 2-D
(in-plane distances; "surface area" becomes the contour length), as margins
are read on single slices.

The papers classify by the rim's continuity and report its minimal
thickness separately; here the 2 mm recommendation is folded into AM(+), so a
complete but thin rim is AM(0), and a gap in the rim next to the tumour gives
AM(0) with a minimal margin of 0 mm. To classify by continuity alone, pass
``criterion_mm`` equal to the voxel size across the rim (a rim one voxel
thick then passes, a gap does not); ``min_margin_mm`` is reported either way.

Pure functions on arrays (scipy.ndimage, scipy.spatial); no file I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, Delaunay, QhullError

from ..core.errors import ValidationError
from .celltracking import (
    _as_mask,
    _check_affine,
    _finite_number,
    _jsonable,
    _to_world,
    _voxel_sizes,
)

__all__ = [
    "AM_CRITERION_MM",
    "AM_CLASSES",
    "AblativeMargin",
    "ablative_margin",
]

#: Minimal ablative margin (mm) above which no local recurrence was seen after
#: RFA of HCC assessed on SPIO-enhanced T2*-weighted MRI (Fukuda et al., Jpn J
#: Radiol 2019, doi 10.1007/s11604-019-00843-1: "an AM of >= 2 mm is recommended").
AM_CRITERION_MM = 2.0

#: The three margin classes (Koda et al., J Gastroenterol 2013;48:1283).
AM_CLASSES = ("AM(+)", "AM(0)", "AM(-)")


@dataclass(frozen=True, eq=False)
class AblativeMargin:
    """Ablative-margin classification and measurements (see the module docstring).

    ``min_margin_mm`` is the smallest margin over the tumour surface (mm;
    negative = the tumour protrudes that far beyond the ablation zone).
    ``coverage_fraction`` is the fraction of tumour surface area with a
    margin >= ``criterion_mm``. ``thinnest_tumour_voxel`` is the tumour voxel
    (indices) where the margin is smallest, and ``thinnest_boundary_voxel``
    the voxel on the other side of the boundary it was measured to (the
    nearest voxel outside the ablation zone, or for AM(−) the nearest voxel
    inside it; may lie one voxel outside the array, index -1 or n, when the
    ablation zone reaches the image border); ``*_world_mm`` the same points
    in world coordinates (None without an affine). ``surface_margin_mm`` is
    a float32 image with the margin at tumour surface voxels (and at every
    protruding tumour voxel) and NaN elsewhere (not in ``as_dict``).
    """

    margin_class: str
    min_margin_mm: float
    criterion_mm: float
    coverage_fraction: float
    tumour_volume_mm3: float
    ablation_volume_mm3: float
    protruding_volume_mm3: float
    n_surface_voxels: int
    thinnest_tumour_voxel: tuple
    thinnest_boundary_voxel: tuple
    thinnest_tumour_world_mm: tuple | None
    thinnest_boundary_world_mm: tuple | None
    ablation_source: str
    surface_margin_mm: np.ndarray = field(repr=False)

    def as_dict(self) -> dict:
        """Plain JSON-able values, units in the key names (the margin image is left out)."""
        return {k: _jsonable(getattr(self, k)) for k in self.__dataclass_fields__
                if k != "surface_margin_mm"}


def _convex_hull_contains(points_from: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Whether each query point (voxel indices) lies in the convex hull of ``points_from``."""
    if len(query) == 0:
        return np.zeros(0, bool)
    lo, hi = points_from.min(axis=0), points_from.max(axis=0)
    in_box = np.all((query >= lo) & (query <= hi), axis=1)
    varying = hi > lo
    if varying.sum() <= 1:
        # all rim voxels on a line parallel to an axis (or one voxel): hull = bounding box
        return in_box
    pts = points_from[:, varying].astype(np.float64)
    q = query[:, varying].astype(np.float64)
    try:
        tri = Delaunay(pts[ConvexHull(pts).vertices])  # hull vertices only: fast
    except QhullError:
        try:
            # a flat (e.g. coplanar, not axis-aligned) rim: joggle to get a thin hull
            tri = Delaunay(pts, qhull_options="QJ")
        except QhullError:
            # too few points for any hull (e.g. two voxels on a diagonal): the rim itself
            rim = {tuple(r) for r in points_from.tolist()}
            return np.array([tuple(r) in rim for r in query.tolist()], dtype=bool)
    inside = np.zeros(len(query), bool)
    inside[in_box] = tri.find_simplex(q[in_box], tol=1e-6) >= 0
    return inside


def _surface_face_area(tumour: np.ndarray, vs: np.ndarray) -> np.ndarray:
    """Exposed face area (mm²) of each voxel of ``tumour`` (0 inside; padded array)."""
    area = np.zeros(tumour.shape)
    face_area = float(np.prod(vs)) / vs
    for axis in range(tumour.ndim):
        for shift in (1, -1):
            neighbour = np.roll(tumour, shift, axis=axis)  # padding makes the wrap harmless
            area += (tumour & ~neighbour) * face_area[axis]
    return area


def ablative_margin(tumour_mask, *, voxel_size_mm, ablation_mask=None, rim_mask=None,
                    criterion_mm: float = AM_CRITERION_MM, affine=None) -> AblativeMargin:
    """Classify the ablative margin as AM(+), AM(0) or AM(−) and measure it in mm.

    See the module docstring for the operational definition (after Koda et
    al., J Gastroenterol 2013;48:1283 and Fukuda et al., Jpn J Radiol 2019).

    Parameters
    ----------
    tumour_mask : array_like of bool (X, Y, Z)
        The tumour before ablation, registered to the post-ablation grid. A
        single slice (X, Y, 1) is analysed in 2-D.
    voxel_size_mm : float or sequence of 3 float
        Voxel edge lengths (mm) of the grid; distances use them (anisotropic
        voxels are handled exactly by the distance transform).
    ablation_mask : array_like of bool (X, Y, Z), optional
        The ablation zone: everything inside the outer boundary of the
        hypointense rim, tumour included (holes are filled).
    rim_mask : array_like of bool (X, Y, Z), optional
        The hypointense periablational rim (iron-laden ablated liver). Used
        alone, the ablation zone is derived from it (module docstring, step
        1); with ``ablation_mask``, the zone is the union of both.
    criterion_mm : float
        Margin required for AM(+), >= 0 (default 2 mm, Fukuda et al. 2019).
    affine : array_like (4, 4), optional
        Voxel -> world (mm) affine, to give the thinnest point in world
        coordinates; its voxel size must match ``voxel_size_mm``.

    Returns
    -------
    AblativeMargin

    Raises
    ------
    ValidationError
        No ablation or rim mask; empty masks; negative criterion; bad voxel size.
    GeometryError
        Masks of different shapes; an affine inconsistent with the voxel size.
    """
    if ablation_mask is None and rim_mask is None:
        raise ValidationError("give ablation_mask (the ablation zone) or rim_mask (the "
                              "hypointense rim), or both")
    tum = np.asanyarray(tumour_mask)
    if tum.ndim != 3:
        raise ValidationError(
            f"tumour_mask must be 3-D (X, Y, Z), got shape {tum.shape}; pass a single slice "
            "as shape (X, Y, 1)")
    tumour = _as_mask(tum, "tumour_mask", tum.shape)
    shape = tumour.shape
    vs = _voxel_sizes(voxel_size_mm, 3)
    aff = _check_affine(affine, vs)
    criterion = _finite_number(criterion_mm, "criterion_mm", nonnegative=True)

    if ablation_mask is not None:
        zone = _as_mask(ablation_mask, "ablation_mask", shape, "tumour_mask")
        source = "ablation_mask"
        if rim_mask is not None:
            zone = zone | _as_mask(rim_mask, "rim_mask", shape, "tumour_mask")
            source = "ablation_mask+rim_mask"
        rim = None
    else:
        rim = _as_mask(rim_mask, "rim_mask", shape, "tumour_mask")
        zone = None
        source = "rim_mask"

    # a single slice (X, Y, 1) is analysed in 2-D: drop axes of length 1
    axes = [a for a in range(3) if shape[a] > 1]
    if not axes:
        raise ValidationError("tumour_mask has a single voxel; pass the image's full grid")
    reduced = tuple(shape[a] for a in axes)
    tumour_r = tumour.reshape(reduced)
    vs_r = vs[axes]
    if zone is None:
        rim_r = rim.reshape(reduced)
        tumour_idx = np.argwhere(tumour_r)
        in_hull = _convex_hull_contains(np.argwhere(rim_r), tumour_idx)
        plug = np.zeros(reduced, bool)
        plug[tuple(tumour_idx[in_hull].T)] = True
        zone_r = rim_r | plug
    else:
        zone_r = zone.reshape(reduced)
    zone_r = ndi.binary_fill_holes(zone_r)

    # pad by one voxel: the image border is outside the zone and outside the tumour
    ndim = len(axes)
    t = np.pad(tumour_r, 1)
    z = np.pad(zone_r, 1)
    face = ndi.generate_binary_structure(ndim, 1)
    surface = t & ~ndi.binary_erosion(t, structure=face, border_value=0)
    inside = t & z
    outside = t & ~z

    margin = np.full(t.shape, np.nan)
    nearest = np.zeros((ndim,) + t.shape, dtype=np.intp)

    surf_in = surface & inside
    if surf_in.any():
        dist, ind = ndi.distance_transform_edt(z, sampling=vs_r, return_indices=True)
        p = np.argwhere(surf_in)
        q = ind[:, surf_in].T
        raw = dist[surf_in]
        step_mm = (q - p) * vs_r  # p -> q in mm; raw > 0 since p is inside the zone
        along = np.sqrt((((step_mm / raw[:, None]) * vs_r) ** 2).sum(axis=1))
        margin[surf_in] = raw - along
        nearest[:, surf_in] = q.T
    if outside.any():
        dist_out, ind_out = ndi.distance_transform_edt(~z, sampling=vs_r, return_indices=True)
        margin[outside] = -dist_out[outside]
        nearest[:, outside] = ind_out[:, outside]

    measured = surface | outside
    values = margin[measured]
    k = int(np.argmin(values))
    where = np.argwhere(measured)[k]
    min_margin = float(values[k])
    tol = 1e-9 * max(1.0, criterion)
    ok = margin >= criterion - tol
    area = _surface_face_area(t, vs_r)
    total_area = float(area[surface].sum())
    coverage = float(area[surface & ok].sum()) / total_area if total_area > 0 else float("nan")

    if outside.any():
        margin_class = AM_CLASSES[2]
    elif min_margin >= criterion - tol:
        margin_class = AM_CLASSES[0]
    else:
        margin_class = AM_CLASSES[1]

    def _full_index(index_r) -> tuple:
        full = [0, 0, 0]
        for a, v in zip(axes, index_r):
            full[a] = int(v) - 1  # undo the padding
        return tuple(full)

    thin_t = _full_index(where)
    thin_b = _full_index(nearest[(slice(None),) + tuple(where)])
    voxel_volume = float(np.prod(vs))
    unpad = tuple(slice(1, -1) for _ in range(ndim))
    surface_map = margin[unpad].reshape(shape).astype(np.float32)
    zone_volume = float(zone_r.sum()) * voxel_volume
    return AblativeMargin(
        margin_class=margin_class, min_margin_mm=min_margin, criterion_mm=criterion,
        coverage_fraction=coverage,
        tumour_volume_mm3=float(tumour.sum()) * voxel_volume,
        ablation_volume_mm3=zone_volume,
        protruding_volume_mm3=float(outside.sum()) * voxel_volume,
        n_surface_voxels=int(surface.sum()),
        thinnest_tumour_voxel=thin_t, thinnest_boundary_voxel=thin_b,
        thinnest_tumour_world_mm=_to_world(aff, thin_t),
        thinnest_boundary_world_mm=_to_world(aff, thin_b),
        ablation_source=source, surface_margin_mm=surface_map)
