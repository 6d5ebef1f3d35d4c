"""Reading ROI masks and label images: NIfTI, NRRD (and MetaImage), DICOM SEG.

:func:`load_roi` returns a mask or label image in oncomri's Volume convention:
three spatial axes ``(X, Y, Z)`` and a voxel -> world affine in mm, RAS+ as in
NIfTI. Each format is converted at this edge:

NIfTI (``.nii``, ``.nii.gz``, ``.hdr/.img``)
    read with nibabel; the affine is nibabel's best affine (sform, else qform),
    already RAS+.
NRRD (``.nrrd``, ``.nhdr``, 3D Slicer ``.seg.nrrd`` with one layer), MetaImage (``.mha``, ``.mhd``)
    read with SimpleITK, which gives origin, spacing and direction in ITK's
    LPS+ patient space whatever ``space`` the NRRD header names (ITK converts a
    ``right-anterior-superior`` header to LPS). The LPS affine
    ``[D diag(spacing) | origin]`` becomes RAS+ by negating its first two rows
    (``diag(-1, -1, 1, 1) @ A_lps``); SimpleITK's array is indexed
    ``[z, y, x]`` and is transposed to ``(x, y, z)``.
DICOM Segmentation (PS3.3 A.51)
    read with highdicom (``highdicom.seg.segread``; Herrmann et al.,
    J Digit Imaging 2022;35:1719); its segments are combined into one label
    image whose values are the Segment Numbers. highdicom's volume is indexed
    ``(slice, row, column)`` with an LPS affine; it is transposed to
    ``(column, row, slice)`` and converted to RAS+ as above. The grid is the
    SEG's own (only the slices it holds frames for); pass ``like=`` to put
    it back on the source series' grid.

Values: a mask whose values are all 0 or 1 comes back as ``bool``; an image
with other non-negative integer values is a label image and keeps its labels
(with the file's integer dtype, or int32 for integer-valued float files).
Non-finite voxels (NaN) count as background (0). Non-integer values
(probabilistic masks) and negative labels raise :class:`ValidationError`.

No resampling happens here: resampling a mask onto another grid is
:func:`oncomri.roi.resample_mask`'s job.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..core.errors import GeometryError, MissingDependencyError, ReadError, ValidationError
from .bids import _one_line

__all__ = ["load_roi", "ROI_SUFFIXES"]

#: File name endings :func:`load_roi` recognises, by reader.
ROI_SUFFIXES = {
    "nifti": (".nii", ".nii.gz", ".hdr", ".img", ".img.gz"),
    "itk": (".nrrd", ".nhdr", ".mha", ".mhd"),
    "dicom": (".dcm", ".dicom"),
}

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_GRID_TOL_VOXELS = 1e-3  # exact re-gridding tolerance (fraction of a voxel)


# --------------------------------------------------------------------------- public API


def load_roi(path, *, like=None) -> tuple[np.ndarray, np.ndarray]:
    """Read a binary mask or a label image from NIfTI, NRRD/MetaImage or DICOM SEG.

    Parameters
    ----------
    path : str or path-like
        The mask file. The format is chosen by the file name ending
        (:data:`ROI_SUFFIXES`); a file without a known ending is read as
        DICOM if it has the DICOM preamble (``DICM`` at byte 128).
    like : Volume, optional
        The image the mask belongs to. If the mask's grid is the image's grid
        up to axis order, axis flips and a whole-voxel shift (e.g. an LPS NRRD
        or a DICOM SEG that holds only some slices of the series), the mask is
        moved onto ``like``'s grid exactly, without interpolation, and
        ``like.affine`` is returned. Otherwise (another voxel size, an oblique
        or sub-voxel shift, or mask voxels that would fall outside the image)
        the mask is returned on its own grid, unchanged: resample it with
        :func:`oncomri.roi.resample_mask`.

    Returns
    -------
    mask : ndarray, shape (X, Y, Z)
        ``bool`` if the file holds only 0 and 1; otherwise an integer label
        image (0 = background), labels as stored.
    affine : ndarray, shape (4, 4)
        Voxel -> world (RAS+, mm) affine of ``mask``.

    Raises
    ------
    ReadError
        The file is missing, not in a supported format, corrupt, a DICOM
        object other than a Segmentation, or a SEG whose segments overlap
        or are fractional (they do not fit in one label image).
    ValidationError
        The image holds non-integer or negative values, or has more than
        three non-trivial axes (several masks in one file).

    Examples
    --------
    >>> mask, affine = load_roi("sub-01_tumour_mask.nii.gz", like=t2w)  # doctest: +SKIP
    """
    p = Path(os.fspath(path))
    if not p.exists():
        raise ReadError(f"{p}: file not found; check the path")
    if p.is_dir():
        raise ReadError(f"{p}: is a folder; pass the mask file (NIfTI, NRRD or DICOM SEG)")
    kind = _format_of(p)
    if kind == "nifti":
        data, affine = _read_nifti(p)
    elif kind == "itk":
        data, affine = _read_itk(p)
    else:
        data, affine = _read_seg(p)
    mask = _as_roi_values(_three_axes(data, p), p)
    if like is not None:
        mask, affine = _onto_grid_exactly(mask, affine, like)
    return mask, affine


# --------------------------------------------------------------------------- readers


def _format_of(p: Path) -> str:
    name = p.name.lower()
    for kind, suffixes in ROI_SUFFIXES.items():
        if name.endswith(suffixes):
            return kind
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise ReadError(f"{p}: cannot be opened ({_one_line(exc)}); check its permissions") from exc
    if len(head) == 132 and head[128:132] == b"DICM":
        return "dicom"
    raise ReadError(
        f"{p}: unknown mask format; pass a NIfTI (.nii/.nii.gz), NRRD (.nrrd/.nhdr), "
        "MetaImage (.mha/.mhd) or DICOM Segmentation (.dcm) file")


def _read_nifti(p: Path):
    import nibabel as nib

    try:
        img = nib.load(p)
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image, nib.Nifti1Pair,
                                nib.Nifti2Pair)):
            raise ReadError(f"{p}: is a {type(img).__name__}, not NIfTI; save the mask as .nii.gz")
        data = np.asanyarray(img.dataobj)
    except ReadError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # nibabel raises many types for bad files
        raise ReadError(
            f"{p}: not a readable NIfTI mask ({_one_line(exc)}); the file is truncated or "
            "corrupt — export it again") from exc
    return data, np.asarray(img.affine, dtype=np.float64)


def _sitk():
    try:
        import SimpleITK
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise MissingDependencyError(
            "reading NRRD/MetaImage masks needs SimpleITK; install it with "
            "pip install SimpleITK") from exc
    return SimpleITK


def _read_itk(p: Path):
    sitk = _sitk()
    try:
        img = sitk.ReadImage(str(p))
    except Exception as exc:  # SimpleITK raises RuntimeError with a multi-line message
        raise ReadError(
            f"{p}: not a readable NRRD/MetaImage file ({_one_line(exc)}); the file is "
            "truncated or corrupt — export it again") from exc
    if img.GetNumberOfComponentsPerPixel() > 1:
        raise ReadError(
            f"{p}: holds {img.GetNumberOfComponentsPerPixel()} values per voxel (e.g. a 3D "
            "Slicer segmentation with overlapping layers); export one label map "
            "(Slicer: 'Export to labelmap') or one file per segment")
    dim = img.GetDimension()
    if dim not in (2, 3):
        raise ValidationError(
            f"{p}: a {dim}D image is not a mask; pass a 3D mask or label image")
    spacing = np.asarray(img.GetSpacing(), dtype=np.float64)
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)
    origin = np.asarray(img.GetOrigin(), dtype=np.float64)
    lps = np.eye(4)
    lps[:dim, :dim] = direction * spacing[None, :]
    lps[:dim, 3] = origin
    data = np.transpose(sitk.GetArrayFromImage(img))  # [z, y, x] -> (x, y, z)
    return data, _LPS_TO_RAS @ lps


def _read_seg(p: Path):
    import highdicom as hd
    import pydicom

    try:
        ds = pydicom.dcmread(p)
    except Exception as exc:  # pydicom raises many types for bad files
        raise ReadError(f"{p}: not a readable DICOM file ({_one_line(exc)})") from exc
    sop = str(ds.get("SOPClassUID", ""))
    if sop != "1.2.840.10008.5.1.4.1.1.66.4":
        what = {"1.2.840.10008.5.1.4.1.1.481.3": "an RT Structure Set (contours)"}.get(
            sop, f"a DICOM object of SOP class {sop or 'unknown'}")
        raise ReadError(
            f"{p}: is {what}, not a DICOM Segmentation; convert it to a SEG or a NIfTI "
            "label map (e.g. with 3D Slicer) first")
    if str(ds.get("SegmentationType", "")).upper() == "FRACTIONAL":
        raise ReadError(
            f"{p}: is a FRACTIONAL segmentation (probabilities); threshold it into a BINARY "
            "SEG or a label map first")
    try:
        seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
        vol = seg.get_volume(combine_segments=True, relabel=False)
    except Exception as exc:  # highdicom raises ValueError/RuntimeError for many layouts
        text = _one_line(exc)
        if "overlap" in text.lower():
            raise ReadError(
                f"{p}: its segments overlap, so they do not fit in one label image; "
                "export each segment as its own mask") from exc
        raise ReadError(
            f"{p}: the segmentation is not a regular 3D slice stack ({text})") from exc
    # highdicom: array (slice, row, column), affine maps those indices to LPS mm.
    data = np.transpose(np.asarray(vol.array), (2, 1, 0))
    lps = np.asarray(vol.affine, dtype=np.float64)[:, [2, 1, 0, 3]]
    return data, _LPS_TO_RAS @ lps


# --------------------------------------------------------------------------- values


def _three_axes(data: np.ndarray, p: Path) -> np.ndarray:
    """``data`` with exactly three spatial axes (2D -> Z = 1, trailing 1s dropped)."""
    shape = tuple(int(n) for n in data.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 2:
        shape = shape + (1,)
    if len(shape) != 3:
        raise ValidationError(
            f"{p}: image of shape {tuple(data.shape)} holds several volumes; pass one 3D "
            "mask or label image per file")
    return data.reshape(shape)


def _as_roi_values(data: np.ndarray, p: Path) -> np.ndarray:
    """bool for a 0/1 mask, integer labels otherwise (see the module docstring)."""
    data = np.asarray(data)
    if data.dtype == np.bool_:
        return data.copy()
    if data.dtype.kind not in "iuf":
        raise ValidationError(
            f"{p}: voxel type {data.dtype} is not a mask; save it as integers (0/1 or labels)")
    if data.dtype.kind == "f":
        data = np.where(np.isfinite(data), data, 0)
        if np.any(data != np.round(data)):
            raise ValidationError(
                f"{p}: holds non-integer values (a probabilistic mask?); threshold it "
                "(e.g. > 0.5) and save 0/1 or integer labels")
    if data.size and data.min() < 0:
        raise ValidationError(
            f"{p}: holds negative values (min {data.min():g}); labels must be 0 (background) "
            "or positive integers")
    if data.size == 0 or data.max() <= 1:
        return data.astype(bool)
    if data.dtype.kind == "f":
        if data.max() > np.iinfo(np.int32).max:
            raise ValidationError(f"{p}: label {data.max():g} is too large for a label image")
        return data.astype(np.int32)
    return data.copy()


# --------------------------------------------------------------------------- exact re-gridding


def _onto_grid_exactly(mask: np.ndarray, affine: np.ndarray, like):
    """``mask`` on ``like``'s grid if it is the same grid up to axis order, flips and shift.

    Returns ``(mask, affine)`` unchanged otherwise (see :func:`load_roi`).
    """
    try:
        target_shape = tuple(int(n) for n in like.spatial_shape)
        target_affine = np.asarray(like.affine, dtype=np.float64)
    except AttributeError as exc:
        raise ValidationError(
            f"like must be a Volume (with spatial_shape and affine), got {type(like).__name__}"
        ) from exc
    if target_affine.shape != (4, 4):
        raise GeometryError(f"like.affine must be 4x4, got shape {target_affine.shape}")
    t = np.linalg.solve(target_affine, affine)  # mask voxel -> target voxel
    rot = t[:3, :3]
    perm = np.argmax(np.abs(rot), axis=1)  # target axis a <- mask axis perm[a]
    if sorted(perm.tolist()) != [0, 1, 2]:
        return mask, affine
    signs = np.sign(rot[np.arange(3), perm])
    expected = np.zeros((3, 3))
    expected[np.arange(3), perm] = signs
    shift = t[:3, 3]
    if not (np.allclose(rot, expected, rtol=0, atol=_GRID_TOL_VOXELS)
            and np.allclose(shift, np.round(shift), rtol=0, atol=_GRID_TOL_VOXELS)):
        return mask, affine
    out = np.transpose(mask, tuple(perm))
    offset = np.round(shift).astype(int)
    for a in range(3):
        if signs[a] < 0:
            out = np.flip(out, axis=a)
            offset[a] -= out.shape[a] - 1
    # out[i] lands on target voxel i + offset; keep it only if nothing inside is lost.
    src_lo = np.maximum(0, -offset)
    src_hi = np.minimum(out.shape, np.asarray(target_shape) - offset)
    if np.any(src_hi <= src_lo):
        return mask, affine
    inside = tuple(slice(lo, hi) for lo, hi in zip(src_lo, src_hi))
    if np.count_nonzero(out[inside]) != np.count_nonzero(out):
        return mask, affine
    result = np.zeros(target_shape, dtype=mask.dtype)
    dst = tuple(slice(lo + o, hi + o) for lo, hi, o in zip(src_lo, src_hi, offset))
    result[dst] = out[inside]
    return result, target_affine.copy()
