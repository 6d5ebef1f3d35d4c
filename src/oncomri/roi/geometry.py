"""Tumour size: volume (mm³) and RECIST-style axial diameters (mm) of a mask.

- :func:`tumour_volume`: the number of mask voxels times the voxel volume
  (the "sum of segmented voxels" volume, DICOM DCM 126030).
- :func:`longest_axial_diameter`: the longest in-plane diameter over all
  axial slices and its longest perpendicular diameter in that slice, as
  RECIST 1.1 measures target lesions (longest diameter in the axial plane)
  and lymph nodes (short axis, perpendicular to the long axis in the same
  plane) (Eisenhauer et al., Eur J Cancer 2009;45:228).

Pure functions on arrays; no file I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist, squareform

from ..core.errors import GeometryError, ValidationError

__all__ = ["tumour_volume", "longest_axial_diameter", "AxialDiameters", "axial_axis"]


# --------------------------------------------------------------------------- helpers


def _mask_of(mask, label, name: str = "mask") -> np.ndarray:
    arr = np.asanyarray(mask)
    if arr.ndim != 3:
        raise ValidationError(f"{name} must be 3D (X, Y, Z), got shape {arr.shape}")
    if arr.dtype.kind not in "biu":
        raise ValidationError(
            f"{name} has dtype {arr.dtype}; pass a bool mask or an integer label image")
    if label is None:
        return arr != 0
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or label <= 0:
        raise ValidationError(f"label must be a positive integer, got {label!r}")
    return arr == label


def _check_affine(affine) -> np.ndarray:
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        raise GeometryError(f"affine must be a finite 4x4 matrix, got shape {aff.shape}")
    if abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise GeometryError("affine is singular (a zero voxel size?); pass the image's affine")
    return aff


# --------------------------------------------------------------------------- volume


def tumour_volume(mask, *, voxel_size_mm, label: int | None = None,
                  allow_empty: bool = False) -> float:
    """Volume of a mask in mm³: voxel count times voxel volume.

    Parameters
    ----------
    mask : array_like (X, Y, Z), bool or integer
        Binary mask or label image.
    voxel_size_mm : sequence of 3 float
        Voxel edge lengths in mm (``Volume.voxel_size``).
    label : int, optional
        Count only this label of a label image; default any nonzero voxel.
    allow_empty : bool
        Return 0.0 for an empty mask (e.g. a lesion that has disappeared at
        follow-up) instead of raising.

    Returns
    -------
    float
        Volume in mm³ (divide by 1000 for mL).

    Raises
    ------
    ValidationError
        Bad mask or voxel size; an empty mask unless ``allow_empty``.

    Notes
    -----
    The "sum of segmented voxels" method (DICOM code DCM 126030); it counts
    whole voxels, so partial-volume voxels on the boundary count fully.
    """
    inside = _mask_of(mask, label)
    try:
        vs = np.asarray(voxel_size_mm, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"voxel_size_mm must be 3 numbers (mm), got {voxel_size_mm!r}") \
            from exc
    if vs.size != 3 or not np.all(np.isfinite(vs)) or np.any(vs <= 0):
        raise ValidationError(
            f"voxel_size_mm must be 3 positive voxel edge lengths in mm, got {voxel_size_mm!r}")
    n = int(np.count_nonzero(inside))
    if n == 0 and not allow_empty:
        raise ValidationError(
            "mask holds no voxel (empty ROI); pass allow_empty=True to report 0 mm3 for a "
            "lesion that has disappeared")
    return float(n * np.prod(vs))


# --------------------------------------------------------------------------- diameters


@dataclass(frozen=True)
class AxialDiameters:
    """Longest axial diameter and its perpendicular, in mm (RECIST 1.1).

    Attributes
    ----------
    long_axis_mm : float
        Longest in-plane diameter over all axial slices.
    short_axis_mm : float
        Longest chord perpendicular to the long axis in the same slice
        (RECIST short axis of a lymph node when measured on its long-axis
        slice).
    slice_index : int
        Index, along ``axial_axis``, of the slice of the long axis.
    axial_axis : int
        The voxel axis (0, 1 or 2) closest to the superior-inferior direction;
        slices are perpendicular to it.
    obliquity_deg : float
        Angle between that voxel axis and the world S axis (0 for a true
        axial acquisition).
    long_axis_endpoints_mm, short_axis_endpoints_mm : tuple
        The two end points of each diameter in world coordinates (RAS+, mm).
    max_short_axis_mm : float
        The largest short axis over all slices (each slice's longest chord
        perpendicular to that slice's own long axis).
    max_short_axis_slice : int
        Its slice index along ``axial_axis``.
    n_slices : int
        Number of slices the lesion occupies.
    """

    long_axis_mm: float
    short_axis_mm: float
    slice_index: int
    axial_axis: int
    obliquity_deg: float
    long_axis_endpoints_mm: tuple
    short_axis_endpoints_mm: tuple
    max_short_axis_mm: float
    max_short_axis_slice: int
    n_slices: int

    def as_dict(self) -> dict:
        """Plain JSON-able dict (lengths in mm, angle in degrees)."""
        return {
            "long_axis_mm": float(self.long_axis_mm),
            "short_axis_mm": float(self.short_axis_mm),
            "slice_index": int(self.slice_index),
            "axial_axis": int(self.axial_axis),
            "obliquity_deg": float(self.obliquity_deg),
            "long_axis_endpoints_mm": [[float(v) for v in p] for p in self.long_axis_endpoints_mm],
            "short_axis_endpoints_mm": [[float(v) for v in p]
                                        for p in self.short_axis_endpoints_mm],
            "max_short_axis_mm": float(self.max_short_axis_mm),
            "max_short_axis_slice": int(self.max_short_axis_slice),
            "n_slices": int(self.n_slices),
            "method": "convex hull of boundary face centres per axial slice (RECIST 1.1, "
                      "Eisenhauer et al., Eur J Cancer 2009;45:228)",
        }


def axial_axis(affine) -> tuple[int, float]:
    """The voxel axis closest to the world superior-inferior (S) axis.

    Parameters
    ----------
    affine : array_like (4, 4)
        Voxel -> world (RAS+, mm) affine.

    Returns
    -------
    axis : int
        0, 1 or 2.
    obliquity_deg : float
        Angle in degrees between that voxel axis and the S axis (0..90).
    """
    aff = _check_affine(affine)
    cols = aff[:3, :3]
    cosines = np.abs(cols[2]) / np.linalg.norm(cols, axis=0)
    axis = int(np.argmax(cosines))
    return axis, float(np.degrees(np.arccos(min(1.0, cosines[axis]))))


def _boundary_points(plane: np.ndarray) -> np.ndarray:
    """Centres of the edges between inside and outside pixels of a 2D mask, (n, 2) voxel units.

    Each inside pixel is the unit square around its centre; its sides that
    border an outside pixel (or the image edge) are the lesion's outline.
    Their mid-points lie half-way between the last inside and the first
    outside pixel centre, so diameters between them are not biased by half a
    pixel on each side as pixel centres (too short) or pixel corners (too
    long) would be.
    """
    padded = np.pad(plane, 1)
    core = padded[1:-1, 1:-1]
    pts = []
    for axis in (0, 1):
        for step in (-1, 1):
            neighbour = np.roll(padded, -step, axis=axis)[1:-1, 1:-1]
            idx = np.argwhere(core & ~neighbour).astype(np.float64)
            idx[:, axis] += 0.5 * step
            pts.append(idx)
    return np.concatenate(pts)


def _hull_vertices(points: np.ndarray) -> np.ndarray:
    try:
        return points[ConvexHull(points).vertices]
    except QhullError:  # collinear points cannot happen with face centres, but be safe
        return points


def _perpendicular_chord(hull: np.ndarray, u: np.ndarray):
    """Longest chord of the convex polygon ``hull`` (ordered vertices) perpendicular to ``u``.

    The chord length along lines ``{p : u . p = s}`` is a concave, piecewise
    linear function of ``s`` for a convex polygon, so its maximum is at one of
    the vertices' projections; each candidate line is intersected with every
    edge. Returns (length, point_a, point_b).
    """
    v = np.array([-u[1], u[0]])
    s_vert = hull @ u
    t_vert = hull @ v
    a_s, b_s = s_vert, np.roll(s_vert, -1)
    a_t, b_t = t_vert, np.roll(t_vert, -1)
    best = (0.0, hull[0], hull[0])
    for s in s_vert:
        lo, hi = np.minimum(a_s, b_s), np.maximum(a_s, b_s)
        hit = (lo <= s + 1e-12) & (s - 1e-12 <= hi)
        denom = b_s - a_s
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.where(np.abs(denom) > 1e-12, (s - a_s) / denom, 0.0)
        t_hit = a_t + np.clip(frac, 0, 1) * (b_t - a_t)
        # edges lying on the line contribute both of their ends
        along = hit & (np.abs(denom) <= 1e-12)
        ts = np.concatenate([t_hit[hit], b_t[along]])
        if ts.size < 2:
            continue
        length = float(ts.max() - ts.min())
        if length > best[0]:
            best = (length, s * u + ts.min() * v, s * u + ts.max() * v)
    return best


def _slice_diameters(points_2d: np.ndarray):
    """(long, long_a, long_b, short, short_a, short_b) of one slice's outline points (mm)."""
    hull = _hull_vertices(points_2d)
    if hull.shape[0] < 2:
        p = points_2d[0]
        return 0.0, p, p, 0.0, p, p
    d = squareform(pdist(hull))
    i, j = np.unravel_index(int(np.argmax(d)), d.shape)
    long = float(d[i, j])
    if long == 0.0:
        return 0.0, hull[i], hull[j], 0.0, hull[i], hull[j]
    u = (hull[j] - hull[i]) / long
    if hull.shape[0] >= 3:
        short, sa, sb = _perpendicular_chord(hull, u)
    else:
        short, sa, sb = 0.0, hull[i], hull[i]
    return long, hull[i], hull[j], short, sa, sb


def longest_axial_diameter(mask, affine, *, label: int | None = None,
                           allow_empty: bool = False) -> AxialDiameters:
    """Longest axial diameter and its longest perpendicular (RECIST 1.1), in mm.

    Parameters
    ----------
    mask : array_like (X, Y, Z), bool or integer
        The lesion (binary mask or a label image with ``label``). Measure one
        lesion at a time.
    affine : array_like (4, 4)
        Voxel -> world (RAS+, mm) affine of ``mask``; gives the voxel sizes
        (anisotropic and sheared grids are handled) and which voxel axis is
        closest to superior-inferior.
    label : int, optional
        The label to measure in a label image; default any nonzero voxel.
    allow_empty : bool
        Return zero diameters for an empty mask (a lesion that has
        disappeared) instead of raising.

    Returns
    -------
    AxialDiameters

    Raises
    ------
    ValidationError
        Bad mask; an empty mask unless ``allow_empty``.
    GeometryError
        A non-finite or singular affine.

    Notes
    -----
    Axial slices are the planes perpendicular to the voxel axis closest to
    the world S axis (for an oblique acquisition they are the acquired
    slices, tilted by ``obliquity_deg``). In each slice the lesion's outline
    is represented by the centres of the pixel sides that separate inside
    from outside pixels, mapped to mm with the affine; the long axis is the
    largest distance between two vertices of their convex hull
    (``scipy.spatial.ConvexHull``), i.e. the caliper diameter. The short axis
    is the longest chord perpendicular to the long axis across the same
    convex hull, found exactly by intersecting the hull with the lines
    perpendicular to the long axis through each hull vertex (the chord length
    of a convex polygon is concave along the axis, so it peaks at a vertex).
    For a concave lesion the short axis can therefore span a notch, as
    calipers would. The long-axis slice is reported; for lymph nodes RECIST
    1.1 uses the short axis (Eisenhauer et al., Eur J Cancer 2009;45:228),
    also given over all slices as ``max_short_axis_mm``. Accuracy on digital
    discs and ellipses is within one voxel.
    """
    inside = _mask_of(mask, label)
    aff = _check_affine(affine)
    ax, obliquity = axial_axis(aff)
    in_plane = [a for a in range(3) if a != ax]
    occupied = np.flatnonzero(np.any(inside, axis=tuple(in_plane)))
    if occupied.size == 0:
        if not allow_empty:
            raise ValidationError(
                "mask holds no voxel (empty ROI); pass allow_empty=True to report 0 mm for a "
                "lesion that has disappeared")
        zero = ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0))
        return AxialDiameters(0.0, 0.0, -1, ax, obliquity, zero, zero, 0.0, -1, 0)

    # orthonormal in-plane basis (world mm) to turn coplanar 3D points into 2D
    cols = aff[:3, :3]
    e1 = cols[:, in_plane[0]] / np.linalg.norm(cols[:, in_plane[0]])
    e2 = cols[:, in_plane[1]] - (cols[:, in_plane[1]] @ e1) * e1
    e2 /= np.linalg.norm(e2)
    basis = np.stack([e1, e2])  # (2, 3)

    best = None
    best_short = (-1.0, -1)
    for k in occupied:
        plane = np.take(inside, k, axis=ax)
        pts = _boundary_points(plane)  # (n, 2) indices along in_plane axes
        vox = np.zeros((pts.shape[0], 3))
        vox[:, in_plane[0]] = pts[:, 0]
        vox[:, in_plane[1]] = pts[:, 1]
        vox[:, ax] = k
        world = vox @ cols.T + aff[:3, 3]
        origin = world[0]
        flat = (world - origin) @ basis.T
        long, la, lb, short, sa, sb = _slice_diameters(flat)
        if best is None or long > best[0] + 1e-9:
            ends = [tuple(float(c) for c in origin + p @ basis) for p in (la, lb, sa, sb)]
            best = (long, short, int(k), ends)
        if short > best_short[0] + 1e-9:
            best_short = (short, int(k))
    long, short, k, ends = best
    return AxialDiameters(
        long_axis_mm=float(long), short_axis_mm=float(short), slice_index=k, axial_axis=ax,
        obliquity_deg=obliquity, long_axis_endpoints_mm=(ends[0], ends[1]),
        short_axis_endpoints_mm=(ends[2], ends[3]), max_short_axis_mm=float(best_short[0]),
        max_short_axis_slice=best_short[1], n_slices=int(occupied.size))
