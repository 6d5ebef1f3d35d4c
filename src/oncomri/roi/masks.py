"""Masks on other grids: nearest-neighbour label resampling and partial-volume fractions.

A mask drawn on one image (a T2-weighted scan, a CT, an atlas) is used to
measure another (an R2* map, an ADC map) that was acquired with another voxel
size, field of view or orientation. :func:`resample_mask` brings it onto the
target grid using the two voxel -> world (RAS+, mm) affines; no registration
is done, so both images must share one world (scanner) coordinate system,
as images of one session do.

Pure functions on arrays (scipy.ndimage inside); no file I/O.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..core.errors import GeometryError, ValidationError
from ..core.volume import same_grid

__all__ = ["resample_mask", "RESAMPLE_METHODS", "world_bounding_box"]

#: Methods of :func:`resample_mask`.
RESAMPLE_METHODS = ("nearest", "fraction")


def _check_affine(affine, name: str) -> np.ndarray:
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        raise GeometryError(f"{name} must be a finite 4x4 matrix, got shape {aff.shape}")
    if abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise GeometryError(
            f"{name} is singular (a zero voxel size?); pass a valid voxel -> mm affine")
    return aff


def _check_shape(shape, name: str) -> tuple:
    try:
        out = tuple(int(n) for n in shape)
    except TypeError as exc:
        raise ValidationError(f"{name} must be a tuple of 3 voxel counts, got {shape!r}") from exc
    if len(out) != 3 or min(out) < 1 or any(int(n) != n for n in shape):
        raise ValidationError(
            f"{name} must be 3 positive voxel counts (X, Y, Z), got {tuple(shape)}; "
            "for a 4D image pass its spatial shape (Volume.spatial_shape)")
    return out


def world_bounding_box(shape, affine) -> np.ndarray:
    """Axis-aligned world bounding box (RAS+, mm) of a grid's voxels.

    The box encloses the grid's voxels as cubes (voxel centre +- half a voxel
    along each voxel axis), so a one-voxel image still has an extent.

    Parameters
    ----------
    shape : tuple of 3 int
        Grid shape (X, Y, Z).
    affine : array_like (4, 4)
        Voxel -> world (mm) affine.

    Returns
    -------
    ndarray, shape (2, 3)
        ``[[min_x, min_y, min_z], [max_x, max_y, max_z]]`` in mm.
    """
    shape = _check_shape(shape, "shape")
    aff = _check_affine(affine, "affine")
    corners = np.array(np.meshgrid(*[(-0.5, n - 0.5) for n in shape], indexing="ij"))
    corners = corners.reshape(3, -1)
    world = aff[:3, :3] @ corners + aff[:3, 3:4]
    return np.stack([world.min(axis=1), world.max(axis=1)])


def _box_text(box) -> str:
    return "[" + ", ".join(f"{lo:.1f}..{hi:.1f}" for lo, hi in zip(box[0], box[1])) + "] mm"


def resample_mask(mask, mask_affine, *, target_shape, target_affine, method: str = "nearest",
                  label: int | None = None, supersampling: int = 3) -> np.ndarray:
    """Put a mask or label image onto another voxel grid (same world coordinates).

    Parameters
    ----------
    mask : array_like (X, Y, Z), bool or integer
        A binary mask or a label image (0 = background).
    mask_affine : array_like (4, 4)
        Voxel -> world (RAS+, mm) affine of ``mask``.
    target_shape : tuple of 3 int
        Spatial shape of the target grid (e.g. ``Volume.spatial_shape``).
    target_affine : array_like (4, 4)
        Voxel -> world (RAS+, mm) affine of the target grid.
    method : {'nearest', 'fraction'}
        ``'nearest'``: every target voxel takes the value of the mask voxel
        that contains its centre (nearest neighbour; a voxel is the cube
        within half a voxel of its centre), so labels are kept and no new
        values appear. Target voxels outside the mask grid get 0.
        ``'fraction'``: the partial-volume fraction of each target voxel that
        lies inside the mask, in [0, 1], estimated by supersampling: the
        target voxel is divided into ``supersampling``\\ :sup:`3` equal
        sub-voxels whose centres are looked up by nearest neighbour in the
        mask, and the fraction of them inside is returned. For a target grid
        that is an integer multiple of an aligned mask grid (e.g. a 1 mm mask
        onto 3 mm voxels with ``supersampling=3``) the fraction is exact;
        otherwise its error is at most about ``1/supersampling`` of a voxel
        layer on the object's boundary.
    label : int, optional
        With ``'fraction'`` on a label image: the fraction of voxel volume
        with this label. Default: any nonzero label.
    supersampling : int
        Sub-voxels per axis for ``'fraction'`` (default 3, i.e. 27 per voxel).

    Returns
    -------
    ndarray, shape ``target_shape``
        ``'nearest'``: same dtype as ``mask`` (bool stays bool, labels stay
        labels). ``'fraction'``: float32 in [0, 1].

    Raises
    ------
    ValidationError
        Bad ``mask``, ``target_shape``, ``method``, ``label`` or
        ``supersampling``; an empty mask.
    GeometryError
        A singular or non-finite affine; the mask's and the target's world
        bounding boxes do not overlap at all (typically an LPS/RAS mix-up or a
        mask of another session); or no mask voxel lands on the target grid
        (the overlap is too thin, or the object is smaller than a target
        voxel with ``'nearest'``: use ``'fraction'``).

    Notes
    -----
    Nearest-neighbour sampling through the two affines is the standard way to
    carry label maps between grids (e.g. ITK's
    ``NearestNeighborInterpolateImageFunction``; Yoo et al., Stud Health
    Technol Inform 2002;85:586). It is exact when the grids coincide up to
    axis order, flips and whole-voxel shifts. Implemented with
    ``scipy.ndimage.affine_transform`` (order 0, mode ``'grid-constant'``).
    """
    arr = np.asanyarray(mask)
    if arr.ndim != 3:
        raise ValidationError(
            f"mask must be 3D (X, Y, Z), got shape {arr.shape}; pass one mask or label image")
    if arr.dtype.kind not in "biu":
        raise ValidationError(
            f"mask has dtype {arr.dtype}; pass a bool mask or an integer label image "
            "(threshold probabilistic masks first)")
    if method not in RESAMPLE_METHODS:
        raise ValidationError(f"method {method!r} is unknown; use one of {RESAMPLE_METHODS}")
    src_aff = _check_affine(mask_affine, "mask_affine")
    tgt_aff = _check_affine(target_affine, "target_affine")
    tgt_shape = _check_shape(target_shape, "target_shape")
    if isinstance(supersampling, bool) or not isinstance(supersampling, (int, np.integer)) \
            or not 1 <= supersampling <= 16:
        raise ValidationError(
            f"supersampling must be an integer from 1 to 16, got {supersampling!r}")
    if label is not None and method != "fraction":
        raise ValidationError("label applies to method='fraction' only; omit it for 'nearest'")
    if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
        raise ValidationError("mask holds negative labels; use 0 for background and labels > 0")
    inside = arr != 0 if label is None else arr == label
    if not np.any(inside):
        what = "holds no voxel" if label is None else f"holds no voxel with label {label}"
        raise ValidationError(f"mask {what}; pass a non-empty mask")

    src_box = world_bounding_box(arr.shape, src_aff)
    tgt_box = world_bounding_box(tgt_shape, tgt_aff)
    if np.any(src_box[1] < tgt_box[0]) or np.any(tgt_box[1] < src_box[0]):
        raise GeometryError(
            f"mask and target grid do not overlap: the mask spans {_box_text(src_box)} "
            f"and the target {_box_text(tgt_box)} (RAS+); check that both affines are RAS+ "
            "in the same scanner coordinates (an LPS affine flips x and y)")

    # target voxel -> mask voxel
    t = np.linalg.solve(src_aff, tgt_aff)
    matrix, offset = t[:3, :3], t[:3, 3]

    if method == "nearest":
        if same_grid(arr.shape, src_aff, tgt_shape, tgt_aff, atol_mm=1e-6):
            out = np.array(arr, copy=True)
        else:
            work = arr.astype(np.uint8) if arr.dtype == np.bool_ else np.asarray(arr)
            out = ndi.affine_transform(work, matrix, offset=offset, output_shape=tgt_shape,
                                       order=0, mode="grid-constant", cval=0,
                                       output=work.dtype)
            out = out.astype(arr.dtype, copy=False)
        if not np.any(out):
            raise GeometryError(
                "mask: no mask voxel lands on the target grid (the object is smaller than a "
                "target voxel or outside its field of view); use method='fraction' or check "
                "the affines")
        return out

    # Only target voxels that can touch the mask are sampled: the mask's voxel bounding
    # box (grown by one voxel) carried into target indices. Same result, and far less
    # work for an ROI that is small compared with the field of view.
    idx = np.nonzero(inside)
    lo_src = np.array([i.min() for i in idx], float) - 1.0
    hi_src = np.array([i.max() for i in idx], float) + 1.0
    corners = np.array([[c[0], c[1], c[2], 1.0] for c in
                        np.array(np.meshgrid(*zip(lo_src, hi_src), indexing="ij")).reshape(3, -1).T])
    to_target = np.linalg.solve(tgt_aff, src_aff)
    tc = (to_target @ corners.T)[:3]
    lo = np.clip(np.floor(tc.min(axis=1)).astype(int) - 1, 0, np.array(tgt_shape))
    hi = np.clip(np.ceil(tc.max(axis=1)).astype(int) + 2, 0, np.array(tgt_shape))
    total = np.zeros(tgt_shape, dtype=np.float32)
    if np.any(hi <= lo):
        raise GeometryError(
            "mask: no part of the mask lies inside the target grid's voxels; check the affines")
    sub_shape = tuple(int(v) for v in hi - lo)
    sub_offset = offset + matrix @ lo.astype(float)
    work = inside.astype(np.uint8)
    n = int(supersampling)
    steps = (np.arange(n) + 0.5) / n - 0.5  # sub-voxel centres, target voxel units
    sub = np.zeros(sub_shape, dtype=np.float32)
    for dx in steps:
        for dy in steps:
            for dz in steps:
                shift = matrix @ np.array([dx, dy, dz]) + sub_offset
                sub += ndi.affine_transform(work, matrix, offset=shift, output_shape=sub_shape,
                                            order=0, mode="grid-constant", cval=0)
    total[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = sub
    total /= np.float32(n ** 3)
    if not np.any(total):
        raise GeometryError(
            "mask: no part of the mask lies inside the target grid's voxels; check the affines")
    return total
