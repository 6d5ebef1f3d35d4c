"""Representative parameter maps over anatomy: choosing subjects and loading slices.

:func:`choose_representatives` picks, per arm, the subject whose biomarker
at the last timepoint is the arm's median and lists its map, anatomy and ROI
files at every timepoint. :func:`load_panel` reads them (NIfTI, nibabel),
reorients the map to the closest RAS+ orientation, resamples the anatomy and
the ROI onto the map grid when their grids differ (affine-based: linear
interpolation for the anatomy, nearest neighbour for the ROI) and returns the
axial slice with the largest ROI area.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..core.errors import ReadError, ValidationError
from ..study.design import StudyDesign

__all__ = ["RepresentativeImage", "MapPanel", "choose_representatives", "load_panel", "shared_range"]


@dataclass(frozen=True)
class RepresentativeImage:
    """One representative map of the report: a subject's parameter map at one timepoint.

    Attributes
    ----------
    arm, timepoint, subject : str
    map_path : str or Path
        The parameter map (NIfTI), e.g. ``sub-rat03_ses-24h_R2starmap.nii.gz``.
    anatomy_path : str or Path or None
        Anatomical image (NIfTI; first volume of a 4-D series) drawn in grey
        under the map; None draws the map alone.
    roi_path : str or Path or None
        ROI mask (NIfTI, non-zero inside) drawn as a contour; it also picks the
        slice (largest ROI area).
    parameter : str
        Parameter name, e.g. ``"R2starmap"``; panels of one parameter share a
        colour range.
    unit : str
        Unit of the map values, for the colour bar (e.g. ``"1/s"``).
    vmin, vmax : float or None
        Colour range; None: the 2nd and 98th percentiles of the map inside the
        ROIs over every panel of the parameter.
    """

    arm: str
    timepoint: str
    subject: str
    map_path: str | Path
    anatomy_path: str | Path | None
    roi_path: str | Path | None
    parameter: str
    unit: str = ""
    vmin: float | None = None
    vmax: float | None = None


@dataclass(frozen=True)
class MapPanel:
    """One loaded slice: 2-D arrays (rows anterior-to-posterior top-down, radiological left-right).

    Attributes
    ----------
    image : RepresentativeImage
    map : ndarray (float64, NaN outside the fitted region where the map has NaN)
    anatomy : ndarray or None
    roi : ndarray of bool or None
    slice_index : int
        Axial slice index in the RAS+-reoriented map grid.
    aspect : float
        Pixel height / width (mm / mm), for ``imshow(aspect=...)``.
    """

    image: RepresentativeImage
    map: np.ndarray
    anatomy: np.ndarray | None
    roi: np.ndarray | None
    slice_index: int
    aspect: float


def _nib():
    import nibabel as nib

    return nib


def _load(path: str | Path) -> Any:
    nib = _nib()
    p = Path(path)
    if not p.is_file():
        raise ReadError(f"{p}: file not found; the report needs the map/anatomy/ROI NIfTI files")
    try:
        return nib.load(str(p))
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise ReadError(f"{p}: not a readable NIfTI image ({exc}); give a .nii or .nii.gz file") from None


def _as3d(data: np.ndarray) -> np.ndarray:
    if data.ndim == 2:
        return data[:, :, None]
    while data.ndim > 3:
        data = data[..., 0]
    return data


def _on_grid(img: Any, shape: tuple[int, ...], affine: np.ndarray, *, order: int) -> np.ndarray:
    """``img``'s first volume resampled onto the voxel grid (shape, affine)."""
    from scipy import ndimage

    data = _as3d(np.asarray(img.dataobj, dtype=np.float64))
    src_affine = np.asarray(img.affine, dtype=np.float64)
    if data.shape == tuple(shape) and np.allclose(src_affine, affine, atol=1e-4):
        return data
    # voxel (target) -> world -> voxel (source)
    matrix = np.linalg.inv(src_affine) @ affine
    return ndimage.affine_transform(np.nan_to_num(data), matrix, output_shape=tuple(shape), order=order,
                                    mode="constant", cval=0.0)


def load_panel(image: RepresentativeImage) -> MapPanel:
    """Load the map, anatomy and ROI of ``image`` and cut the axial slice with the largest ROI area.

    The map is reoriented to the closest RAS+ orientation
    (``nibabel.as_closest_canonical``); the anatomy (linear interpolation)
    and the ROI (nearest neighbour) are resampled onto that grid with
    :func:`scipy.ndimage.affine_transform` when their grid differs. The
    returned 2-D slices are in radiological display (subject's right on the
    left of the image, anterior at the top).

    Raises
    ------
    ReadError
        A file is missing or not a NIfTI image.
    """
    nib = _nib()
    m_img = nib.as_closest_canonical(_load(image.map_path))
    m = _as3d(np.asarray(m_img.dataobj, dtype=np.float64))
    affine = np.asarray(m_img.affine, dtype=np.float64)
    shape = m.shape
    anat = roi = None
    if image.anatomy_path is not None:
        anat = _on_grid(_load(image.anatomy_path), shape, affine, order=1)
    if image.roi_path is not None:
        roi = _on_grid(_load(image.roi_path), shape, affine, order=0) > 0.5
    if roi is not None and roi.any():
        k = int(np.argmax(roi.sum(axis=(0, 1))))
    else:
        k = shape[2] // 2
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))

    def cut(vol: np.ndarray | None) -> np.ndarray | None:
        if vol is None:
            return None
        # (x: R, y: A) -> rows y top = anterior, columns x flipped (radiological)
        return vol[:, :, k].T[::-1, ::-1]

    return MapPanel(image=image, map=cut(m), anatomy=cut(anat), roi=cut(roi), slice_index=k,
                    aspect=float(zooms[1] / zooms[0]) if zooms[0] > 0 else 1.0)


def shared_range(panels: Sequence[MapPanel]) -> tuple[float, float]:
    """Colour range of panels of one parameter: the images' vmin/vmax, else percentiles 2–98 inside the ROIs."""
    given_lo = [p.image.vmin for p in panels if p.image.vmin is not None]
    given_hi = [p.image.vmax for p in panels if p.image.vmax is not None]
    vals = []
    for p in panels:
        m = p.map
        sel = np.isfinite(m) & (p.roi if p.roi is not None and p.roi.any() else np.isfinite(m))
        vals.append(m[sel])
    pooled = np.concatenate(vals) if vals else np.empty(0)
    pooled = pooled[np.isfinite(pooled)]
    lo = float(np.percentile(pooled, 2)) if pooled.size else 0.0
    hi = float(np.percentile(pooled, 98)) if pooled.size else 1.0
    lo = min(given_lo) if given_lo else lo
    hi = max(given_hi) if given_hi else hi
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def _is_nifti(path: str) -> bool:
    return str(path).endswith((".nii", ".nii.gz"))


def choose_representatives(
    table: pd.DataFrame,
    maps_df: pd.DataFrame,
    rois_df: pd.DataFrame,
    scans_df: pd.DataFrame,
    *,
    design: StudyDesign,
    biomarker: str,
    parameter: str,
    anatomy_role: str | None,
) -> list[RepresentativeImage]:
    """Per arm, the subject with the arm's median ``biomarker`` at the last timepoint, at every timepoint.

    The "last timepoint" is the latest timepoint at which the arm has values
    of the biomarker. With an even number of subjects the lower of the two
    middle values is taken (ties broken by subject id), so the chosen subject
    is a real one.

    Parameters
    ----------
    table : DataFrame
        Tidy measurement table.
    maps_df : DataFrame
        Columns ``subject, timepoint, name, parameter, path``: the map files.
    rois_df : DataFrame
        Columns ``subject, timepoint, name, path``: the ROI masks.
    scans_df : DataFrame
        Columns ``subject, timepoint, role, path``: the scan files.
    design : StudyDesign
    biomarker : str
        Chooses the subject; its ``map`` column (``"name.parameter"``) picks
        the map name and its ``roi`` column the ROI drawn.
    parameter : str
        The map parameter shown, e.g. ``"R2starmap"``.
    anatomy_role : str or None
        Scan role drawn under the map (NIfTI files only; otherwise none).

    Returns
    -------
    list of RepresentativeImage
        Arms in spec order, timepoints in time order; a timepoint without a
        map file for the subject is left out.
    """
    rows = table[table["biomarker"] == biomarker]
    if rows.empty:
        raise ValidationError(f"biomarker {biomarker!r} has no rows in the measurement table; choose another for the representative maps")
    maps = [str(m) for m in rows["map"].dropna().unique() if str(m)]
    map_name = None
    for m in maps:
        if "." in m:
            name, par = m.split(".", 1)
            if par == parameter:
                map_name = name
    rois = [str(r) for r in rows["roi"].dropna().unique() if str(r)]
    roi_name = rois[0] if rois else None
    unit = ""
    unit_rows = table[table["map"].astype(str).str.endswith("." + parameter)] if "map" in table.columns else rows.iloc[:0]
    if not unit_rows.empty:
        unit = str(unit_rows["unit"].iloc[0])
    out: list[RepresentativeImage] = []
    for arm in design.arm_names:
        sub = rows[rows["arm"] == arm].dropna(subset=["value"])
        if sub.empty:
            continue
        last = max(sub["timepoint"].unique(), key=design.time_of)
        at = sub[sub["timepoint"] == last].sort_values(["value", "subject"])
        chosen = str(at.iloc[(len(at) - 1) // 2]["subject"])
        for tp in design.timepoint_names:
            m = maps_df[(maps_df["subject"] == chosen) & (maps_df["timepoint"] == tp)
                        & (maps_df["parameter"] == parameter)]
            if map_name is not None:
                m = m[m["name"] == map_name]
            if m.empty:
                continue
            r = rois_df[(rois_df["subject"] == chosen) & (rois_df["timepoint"] == tp)]
            if roi_name is not None:
                r = r[r["name"] == roi_name]
            roi_path = str(r["path"].iloc[0]) if not r.empty else None
            anat_path = None
            if anatomy_role is not None:
                s = scans_df[(scans_df["subject"] == chosen) & (scans_df["timepoint"] == tp)
                             & (scans_df["role"] == anatomy_role)]
                files = sorted(str(p) for p in s["path"] if _is_nifti(str(p)))
                anat_path = files[0] if files else None
            out.append(RepresentativeImage(arm=arm, timepoint=tp, subject=chosen, map_path=str(m["path"].iloc[0]),
                                           anatomy_path=anat_path, roi_path=roi_path, parameter=parameter,
                                           unit=unit))
    return out
