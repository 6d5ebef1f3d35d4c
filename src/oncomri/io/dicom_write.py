"""Write image arrays as classic DICOM MR series (one MR Image Storage file per slice and echo).

For synthetic studies, demos and round-trip tests: the files carry what a
scanner's classic MR export carries for the readers (oncomri's, dcm2niix,
PACS viewers) to rebuild the volume, the Image Plane Module geometry (DICOM
PS3.3 C.7.6.2) from a voxel -> RAS+ affine, and the MR Image Module's
acquisition values (PS3.3 C.8.3.1; EchoTime in ms). Not for clinical use.

Geometry. oncomri's data axes are (column, row, slice[, measurement]) and
its affine maps voxel indices to RAS+ mm (as NIfTI); DICOM patient
coordinates are LPS+. With ``M = diag(-1, -1, 1, 1) @ affine`` (LPS):

- ImageOrientationPatient = the unit columns 0 (along a row, i.e. the
  direction of increasing column index) and 1 (down a column) of ``M``;
- PixelSpacing = (row spacing, column spacing) = (|M[:3, 1]|, |M[:3, 0]|);
- ImagePositionPatient of slice k = ``M @ (0, 0, k, 1)``, the centre of its
  first transmitted pixel;
- SliceThickness = SpacingBetweenSlices = |M[:3, 2]|.

(PS3.3 C.7.6.2.1.1; the LPS/RAS flip as nibabel and dcm2niix.) The pixel
rows of a slice are ``data[:, :, k].T``.

Values. Float data are stored as 16-bit integers with RescaleSlope and
RescaleIntercept (PS3.3 C.7.6.3.1 / C.11.1.1.2): ``stored = round((value -
intercept) / slope)``, so a reader that applies ``stored × slope +
intercept`` gets the values back within ``slope / 2``. Integer data that fit
are stored exactly (slope 1, intercept 0).

UIDs are derived from ``study_uid`` (or from ``uid_seed``) with
:func:`pydicom.uid.generate_uid`'s hashed ``entropy_srcs``, so the same
inputs give byte-identical files.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from pathlib import Path

import numpy as np

from ..core.errors import GeometryError, ValidationError

__all__ = ["MR_IMAGE_STORAGE", "write_mr_series", "dicom_plane_geometry"]

#: SOP Class UID of (classic) MR Image Storage, PS3.4 B.5.
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_GYROMAGNETIC_MHZ_PER_T = 42.577478  # 1H, CODATA 2018
_INT_RANGE = {"uint16": (0, 65535), "int16": (-32768, 32767)}


def _ds(value: float) -> str:
    """A DICOM Decimal String (<= 16 characters)."""
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value))


def dicom_plane_geometry(affine, n_slices: int) -> dict:
    """Image Plane Module values of the slices of a voxel -> RAS+ mm affine.

    Parameters
    ----------
    affine : array_like (4, 4)
        Voxel (column, row, slice) -> RAS+ mm.
    n_slices : int

    Returns
    -------
    dict
        ``orientation`` (6 direction cosines, LPS), ``pixel_spacing`` ((row,
        column) spacing, mm), ``slice_spacing`` (mm), ``normal`` (LPS unit
        vector, row × column cosines) and ``positions`` (n_slices × 3, LPS
        mm of each slice's first pixel).

    Raises
    ------
    GeometryError
        A non-finite or singular affine, or one whose slice axis is not
        perpendicular to the image plane (sheared: classic DICOM cannot
        store it).
    """
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        raise GeometryError(f"affine must be a finite 4x4 matrix, got shape {aff.shape}")
    lps = _LPS_FROM_RAS @ aff
    col_step, row_step, slice_step = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    dc, dr, ds = (float(np.linalg.norm(v)) for v in (col_step, row_step, slice_step))
    if min(dc, dr, ds) < 1e-9:
        raise GeometryError("affine has a zero voxel size; pass the image's voxel -> RAS+ affine")
    row_cos, col_cos = col_step / dc, row_step / dr
    normal = np.cross(row_cos, col_cos)
    if abs(float(row_cos @ col_cos)) > 1e-4:
        raise GeometryError("affine's in-plane axes are not perpendicular; DICOM cannot store "
                            "a sheared grid; resample the image first")
    if abs(abs(float(slice_step @ normal)) / ds - 1.0) > 1e-4:
        raise GeometryError("affine's slice axis is not perpendicular to the image plane "
                            "(a sheared stack); resample the image first")
    positions = lps[:3, 3][None, :] + np.arange(int(n_slices))[:, None] * slice_step[None, :]
    return {"orientation": np.concatenate([row_cos, col_cos]), "pixel_spacing": (dr, dc),
            "slice_spacing": ds, "normal": normal, "positions": positions}


def _scaling(data: np.ndarray, dtype, rescale_slope, rescale_intercept):
    """(numpy dtype name, slope, intercept) for storing ``data`` as 16-bit integers."""
    finite = data[np.isfinite(data)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 0.0
    if dtype is None:
        dtype = "uint16" if lo >= 0 else "int16"
    if dtype not in _INT_RANGE:
        raise ValidationError(f"dtype must be 'uint16', 'int16' or None, got {dtype!r}")
    imin, imax = _INT_RANGE[dtype]
    if rescale_slope is not None or rescale_intercept is not None:
        slope = 1.0 if rescale_slope is None else float(rescale_slope)
        intercept = 0.0 if rescale_intercept is None else float(rescale_intercept)
        if not (math.isfinite(slope) and slope > 0 and math.isfinite(intercept)):
            raise ValidationError("rescale_slope must be > 0 and rescale_intercept finite")
        return dtype, slope, intercept
    integral = np.all(np.equal(np.mod(finite, 1.0), 0.0)) if finite.size else True
    if integral and lo >= imin and hi <= imax:
        return dtype, 1.0, 0.0
    if dtype == "uint16":
        intercept = min(lo, 0.0)
        span = hi - intercept
        slope = span / imax if span > 0 else 1.0
    else:
        intercept = 0.0
        span = max(abs(lo), abs(hi))
        slope = span / imax if span > 0 else 1.0
    # A slope that is exact as a Decimal String, so reader and writer agree.
    slope = float(_ds(slope * (1.0 + 1e-6)))
    return dtype, slope, intercept


def _uid(*parts) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(p) for p in parts])


def write_mr_series(folder, data, affine, *, echo_times_s=None, series_number: int = 1,
                    series_description: str = "", patient_id: str = "ONCOMRI-SYNTHETIC",
                    patient_name: str = "Synthetic^Subject", study_uid: str | None = None,
                    uid_seed: str | None = None, study_description: str = "",
                    acquisition_datetime: _dt.datetime | None = None,
                    repetition_time_s: float = 0.1, flip_angle_deg: float = 20.0,
                    echo_time_s: float | None = None, magnetic_field_strength_t: float = 7.0,
                    scanning_sequence: str = "GR", mr_acquisition_type: str = "2D",
                    manufacturer: str = "oncomri", dtype: str | None = None,
                    rescale_slope: float | None = None, rescale_intercept: float | None = None,
                    prefix: str = "IM") -> list[Path]:
    """Write ``data`` as a classic MR series: one MR Image Storage file per slice (and echo).

    Parameters
    ----------
    folder : path
        Created if needed; files are ``{prefix}{n:05d}.dcm`` numbered echo-major,
        then by slice (existing files of those names are replaced).
    data : array_like (X, Y, Z) or (X, Y, Z, n_echoes)
        Real values, axes (column, row, slice[, echo]). NaN is stored as 0.
    affine : array_like (4, 4)
        Voxel -> RAS+ mm (converted to LPS for DICOM).
    echo_times_s : array_like (n_echoes,), optional
        Echo times in seconds (written as EchoTime in ms, with EchoNumbers);
        required for 4D data. For 3D data ``echo_time_s`` gives the one echo time.
    series_number : int
    series_description : str
        Also the ProtocolName.
    patient_id, patient_name : str
    study_uid : str, optional
        StudyInstanceUID; default derived from ``uid_seed`` and ``patient_id``
        (or random when ``uid_seed`` is None). Series, frame-of-reference and
        SOP instance UIDs are derived from it and ``series_number``.
    uid_seed : str, optional
        Any text that makes the UIDs reproducible (default: random UIDs
        unless ``study_uid`` is given).
    study_description : str
    acquisition_datetime : datetime, optional
        Study/series/acquisition date and time (default 2025-01-06 09:00).
    repetition_time_s, flip_angle_deg, echo_time_s, magnetic_field_strength_t : float
        Acquisition values (s, degrees, s, tesla), written in DICOM units.
    scanning_sequence, mr_acquisition_type : str
        ScanningSequence ('GR', 'SE', ...) and MRAcquisitionType ('2D'/'3D').
    manufacturer : str
    dtype : {'uint16', 'int16'}, optional
        Stored integer type (default uint16 for non-negative data, else int16).
    rescale_slope, rescale_intercept : float, optional
        Fixed scaling; default chosen from the data's range (exact for
        integer data that fit, else the full 16-bit range).
    prefix : str
        File-name prefix.

    Returns
    -------
    list of Path
        The files written, echo-major then slice order.

    Raises
    ------
    ValidationError
        Data not 3D/4D or not real, echo times that do not match the echoes,
        are not increasing or look like milliseconds, bad scaling options.
    GeometryError
        A bad or sheared affine.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    arr = np.asarray(data)
    if arr.ndim not in (3, 4):
        raise ValidationError(f"data must be 3D (X, Y, Z) or 4D (X, Y, Z, echoes), got shape "
                              f"{arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValidationError(f"data must be real numbers, got dtype {arr.dtype}")
    data4 = arr[..., None] if arr.ndim == 3 else arr
    nx, ny, nz, n = data4.shape
    if echo_times_s is not None:
        te = np.asarray(echo_times_s, dtype=np.float64).reshape(-1)
        if te.size != n:
            raise ValidationError(
                f"echo_times_s has {te.size} values for {n} echo(es) on the data's last axis")
        if not np.all(np.isfinite(te)) or np.any(te < 0) or np.any(np.diff(te) <= 0):
            raise ValidationError("echo_times_s must be finite, >= 0 and increasing (seconds)")
        if te.max() > 1.0:
            raise ValidationError(f"echo_times_s go up to {te.max():g}; give seconds, not ms")
    elif n > 1:
        raise ValidationError("4D data needs echo_times_s (seconds), one per volume")
    else:
        te = np.array([0.005 if echo_time_s is None else float(echo_time_s)])
    geo = dicom_plane_geometry(affine, nz)
    values = np.nan_to_num(np.asarray(data4, dtype=np.float64), nan=0.0, posinf=0.0,
                           neginf=0.0)
    dt_name, slope, intercept = _scaling(values, dtype, rescale_slope, rescale_intercept)
    dt = np.dtype(dt_name).newbyteorder("<")
    imin, imax = _INT_RANGE[dt_name]

    when = acquisition_datetime or _dt.datetime(2025, 1, 6, 9, 0, 0)
    if study_uid is None:
        study_uid = _uid("study", uid_seed, patient_id) if uid_seed is not None else _uid(
            "study", os.urandom(16).hex())
    series_uid = _uid(study_uid, "series", series_number, series_description)
    frame_uid = _uid(study_uid, "frame-of-reference")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = when.strftime("%H%M%S")
    ds.AccessionNumber = ""
    ds.Modality = "MR"
    ds.Manufacturer = manufacturer
    ds.InstitutionName = "oncomri synthetic"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study_description
    ds.SeriesDescription = series_description
    ds.ManufacturerModelName = "synthetic"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.PatientSpeciesDescription = "synthetic"
    ds.ScanningSequence = scanning_sequence
    ds.SequenceVariant = "SP" if scanning_sequence == "GR" else "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = mr_acquisition_type
    ds.SliceThickness = _ds(geo["slice_spacing"])
    ds.RepetitionTime = _ds(repetition_time_s * 1e3)
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = _ds(_GYROMAGNETIC_MHZ_PER_T * magnetic_field_strength_t)
    ds.ImagedNucleus = "1H"
    ds.MagneticFieldStrength = _ds(magnetic_field_strength_t)
    ds.SpacingBetweenSlices = _ds(geo["slice_spacing"])
    ds.EchoTrainLength = str(n)
    ds.SoftwareVersions = "oncomri"
    ds.ProtocolName = series_description
    ds.FlipAngle = _ds(flip_angle_deg)
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = str(int(series_number))
    ds.AcquisitionNumber = "1"
    ds.ImageOrientationPatient = [_ds(v) for v in geo["orientation"]]
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ny
    ds.Columns = nx
    ds.PixelSpacing = [_ds(v) for v in geo["pixel_spacing"]]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if dt_name == "int16" else 0
    ds.RescaleIntercept = _ds(intercept)
    ds.RescaleSlope = _ds(slope)
    ds.RescaleType = "US"
    slope_f, intercept_f = float(ds.RescaleSlope), float(ds.RescaleIntercept)

    paths = []
    number = 0
    for m in range(n):
        for k in range(nz):
            number += 1
            sop_uid = _uid(series_uid, "instance", m, k)
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds.file_meta = meta
            ds.SOPInstanceUID = sop_uid
            ds.InstanceNumber = str(number)
            ds.EchoTime = _ds(te[m] * 1e3)
            ds.EchoNumbers = str(m + 1)
            ds.AcquisitionTime = ds.ContentTime = (
                when + _dt.timedelta(milliseconds=10 * number)).strftime("%H%M%S.%f")
            pos = geo["positions"][k]
            ds.ImagePositionPatient = [_ds(v) for v in pos]
            ds.SliceLocation = _ds(float(pos @ geo["normal"]))
            stored = np.rint((values[:, :, k, m].T - intercept_f) / slope_f)
            stored = np.clip(stored, imin, imax).astype(dt)
            ds.PixelData = np.ascontiguousarray(stored).tobytes()
            ds["PixelData"].VR = "OW"
            path = folder / f"{prefix}{number:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths
