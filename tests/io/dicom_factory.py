"""Synthetic MR DICOM series for tests and benchmarks, written with pydicom/highdicom.

The writers take an image array and its voxel -> world affine in oncomri's
convention (data axes (X, Y, Z[, n]) = (column, row, slice[, measurement]),
affine voxel -> RAS+ mm as NIfTI) and write the DICOM objects a scanner
would, with the geometry of the Image Plane Module (DICOM PS3.3 C.7.6.2):

- :func:`write_classic_series`: one MR Image Storage file per slice and
  measurement (PS3.3 A.4), Image Position/Orientation (Patient), Pixel
  Spacing, Slice Thickness, Echo Time (ms), Echo Numbers, Rescale
  Slope/Intercept, unique UIDs and patient/study tags; options to drop a
  slice, shift one, reverse the file order, truncate a file, and Philips
  private scaling;
- :func:`write_enhanced_series`: one Enhanced MR Image Storage file (PS3.3
  A.36.2) with per-frame functional groups (Plane Position, MR Echo, MR
  Diffusion, Frame Content, Pixel Value Transformation; PS3.3 C.7.6.16,
  C.8.13.5) and a Dimension Index (PS3.3 C.7.6.17);
- :func:`write_text_sr`: a Comprehensive SR document (a non-image object)
  made with highdicom that references a series;
- :func:`truncate_file`: cut a file short, as an interrupted copy does.

Two series in one folder: call a writer twice on the folder with different
``series_number`` and ``prefix`` (file names), or the same ``series_uid`` to
put two acquisitions into one series.

:func:`dicom_to_ras_affine` gives the affine a reader should produce for the
files written; it is the affine the writers were given. Pixel values are
stored as ``round((value - intercept) / slope)``, so a reader that applies
the rescale gets the input back within ``slope / 2``.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    PYDICOM_IMPLEMENTATION_UID,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

__all__ = [
    "MR_IMAGE_STORAGE",
    "ENHANCED_MR_IMAGE_STORAGE",
    "LPS_FROM_RAS",
    "example_affine",
    "dicom_geometry",
    "dicom_to_ras_affine",
    "write_classic_series",
    "write_enhanced_series",
    "write_text_sr",
    "truncate_file",
]

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
#: DICOM patient coordinates are LPS+, NIfTI world coordinates RAS+.
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

_DTYPES = {"int16": np.dtype("<i2"), "uint16": np.dtype("<u2"), "uint8": np.dtype("u1")}
_PHILIPS_CREATOR = "Philips MR Imaging DD 001"


def _ds(value: float) -> str:
    """A Decimal String (at most 16 characters) as precise as DICOM allows."""
    return format_number_as_ds(float(value))


def example_affine(voxel_size=(1.0, 1.2, 2.5), *, oblique: bool = False,
                   origin=(-30.0, 25.0, -12.5)) -> np.ndarray:
    """A voxel -> RAS+ mm affine: axial-like, or double-oblique (rotated about two axes).

    Parameters
    ----------
    voxel_size : 3 floats, mm (column spacing, row spacing, slice spacing)
    oblique : bool
        Rotate the axes by 20 degrees about x and 15 degrees about z.
    origin : 3 floats, mm (RAS) of voxel (0, 0, 0)
    """
    rot = np.eye(3)
    if oblique:
        a, b = np.deg2rad(20.0), np.deg2rad(15.0)
        rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
        rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
        rot = rz @ rx
    aff = np.eye(4)
    # An axial DICOM stack (orientation 1\0\0\0\1\0): columns run to the
    # patient's left and rows to posterior, i.e. -x and -y in RAS.
    base = np.diag([-1.0, -1.0, 1.0])
    aff[:3, :3] = rot @ base @ np.diag(np.asarray(voxel_size, float))
    aff[:3, 3] = origin
    return aff


def dicom_geometry(affine, n_slices: int) -> dict:
    """Image Plane Module values for the slices of ``affine`` (voxel -> RAS+ mm).

    Returns
    -------
    dict with ``orientation`` (6 direction cosines, LPS), ``pixel_spacing``
    ((row spacing, column spacing) mm), ``slice_spacing`` (mm), ``normal``
    (LPS unit vector) and ``positions`` (n_slices x 3, LPS mm of the first
    pixel of each slice).
    """
    lps = LPS_FROM_RAS @ np.asarray(affine, dtype=np.float64)
    col_step, row_step, slice_step = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    dc, dr = np.linalg.norm(col_step), np.linalg.norm(row_step)
    row_cos, col_cos = col_step / dc, row_step / dr
    normal = np.cross(row_cos, col_cos)
    positions = np.array([lps[:3, 3] + k * slice_step for k in range(n_slices)])
    return {
        "orientation": np.concatenate([row_cos, col_cos]),
        "pixel_spacing": (float(dr), float(dc)),
        "slice_spacing": float(np.linalg.norm(slice_step)),
        "normal": normal,
        "positions": positions,
    }


def dicom_to_ras_affine(orientation, pixel_spacing, first_position, slice_step_lps) -> np.ndarray:
    """The voxel (column, row, slice) -> RAS+ mm affine from Image Plane values.

    ``slice_step_lps`` is the LPS vector from one slice's first pixel to the next's.
    """
    iop = np.asarray(orientation, dtype=np.float64)
    dr, dc = (float(v) for v in pixel_spacing)
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * dc
    lps[:3, 1] = iop[3:] * dr
    lps[:3, 2] = np.asarray(slice_step_lps, dtype=np.float64)
    lps[:3, 3] = np.asarray(first_position, dtype=np.float64)
    return LPS_FROM_RAS @ lps


def _as_4d(data) -> np.ndarray:
    data = np.asarray(data)
    if data.ndim == 3:
        return data[..., None]
    if data.ndim != 4:
        raise ValueError(f"data must be 3D or 4D, got shape {data.shape}")
    return data


def _quantise(values: np.ndarray, slope: float, intercept: float, dtype: np.dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    stored = np.rint((np.asarray(values, np.float64) - intercept) / slope)
    return np.clip(stored, info.min, info.max).astype(dtype)


def _measurements(n: int, echo_times, b_values, b_vectors, flip_angles, inversion_times,
                  frame_times) -> list[dict]:
    """Per-measurement DICOM values (ms, deg, s/mm²) from SI inputs."""
    given = [x is not None for x in (echo_times, b_values, flip_angles, inversion_times,
                                     frame_times)]
    if sum(given) > 1:
        raise ValueError("give at most one of echo_times, b_values, flip_angles, "
                         "inversion_times, frame_times")
    out = [{} for _ in range(n)]

    def check(values, name):
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if values.size != n:
            raise ValueError(f"{name} has {values.size} values for {n} measurements")
        return values

    if echo_times is not None:
        for m, te in enumerate(check(echo_times, "echo_times")):
            out[m].update(EchoTime=te * 1e3, EchoNumbers=m + 1)
    if b_values is not None:
        b = check(b_values, "b_values")
        g = None if b_vectors is None else np.asarray(b_vectors, np.float64).reshape(n, 3)
        for m in range(n):
            out[m]["b"] = b[m]
            if g is not None:
                out[m]["g"] = g[m]
    if flip_angles is not None:
        for m, fa in enumerate(check(flip_angles, "flip_angles")):
            out[m]["FlipAngle"] = fa
    if inversion_times is not None:
        for m, ti in enumerate(check(inversion_times, "inversion_times")):
            out[m]["InversionTime"] = ti * 1e3
    if frame_times is not None:
        for m, t in enumerate(check(frame_times, "frame_times")):
            out[m].update(frame_time=t, TemporalPositionIdentifier=m + 1)
    return out


def _patient_study(ds: Dataset, study_uid: str, patient_id: str) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Synthetic^Phantom"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "20200101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.Laterality = ""
    ds.PatientPosition = "HFS"
    ds.StudyDate = "20250312"
    ds.StudyTime = "101500"
    ds.StudyID = "1"
    ds.AccessionNumber = "ACC0001"
    ds.ReferringPhysicianName = ""


def _file_meta(sop_class: str, sop_uid: str, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _time_string(seconds_after: float, base=(10, 20, 0)) -> tuple[str, str]:
    t0 = _dt.datetime(2025, 3, 12, *base)
    t = t0 + _dt.timedelta(seconds=float(seconds_after))
    return t.strftime("%Y%m%d"), t.strftime("%H%M%S.%f")


def _add_philips(ds: Dataset, scale_slope: float) -> None:
    block = ds.private_block(0x2005, _PHILIPS_CREATOR, create=True)
    block.add_new(0x0E, "FL", float(scale_slope))


def _add_vendor_b(ds: Dataset, manufacturer: str, b: float) -> None:
    """The b-value where each vendor's classic files keep it (besides (0018,9087))."""
    vendor = manufacturer.upper()
    if "SIEMENS" in vendor:
        ds.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0C, "IS", int(b))
    elif "GE" in vendor:
        ds.private_block(0x0043, "GEMS_PARM_01", create=True).add_new(
            0x39, "IS", [int(b) + 1000000000, 0, 0, 0])
    elif "PHILIPS" in vendor:
        ds.private_block(0x2001, "Philips Imaging DD 001", create=True).add_new(0x03, "FL",
                                                                               float(b))


def write_classic_series(folder, data, affine, *, echo_times=None, b_values=None,
                         b_vectors=None, flip_angles=None, inversion_times=None,
                         frame_times=None, repetition_time: float = 0.1,
                         flip_angle: float = 20.0, echo_time: float = 0.005,
                         magnetic_field_strength: float = 3.0, rescale_slope: float = 1.0,
                         rescale_intercept: float = 0.0, dtype: str = "int16",
                         series_number: int = 1, series_description: str = "synthetic_mr",
                         series_uid: str | None = None, study_uid: str | None = None,
                         frame_of_reference_uid: str | None = None,
                         patient_id: str = "ONCOMRI-TEST", manufacturer: str = "SIEMENS",
                         image_type=("ORIGINAL", "PRIMARY", "M", "ND"),
                         philips_scale_slope: float | None = None,
                         standard_b_value: bool = True, slice_thickness: float | None = None,
                         drop=(), shift_slices=None, reverse_files: bool = False,
                         prefix: str = "IM", transfer_syntax: str = ExplicitVRLittleEndian,
                         ) -> list[Path]:
    """Write ``data`` as a classic MR series: one MR Image Storage file per slice and measurement.

    Parameters
    ----------
    folder : path
        Created if needed; files are ``{prefix}{n:05d}.dcm``.
    data : ndarray (X, Y, Z) or (X, Y, Z, n)
        Real values (after rescale), axes (column, row, slice[, measurement]).
    affine : (4, 4)
        Voxel -> RAS+ mm.
    echo_times, inversion_times, frame_times : array_like, s, optional
        One per measurement (at most one of these and ``b_values``/``flip_angles``).
    b_values : array_like, s/mm²; ``b_vectors`` (n, 3) LPS unit vectors.
    flip_angles : array_like, degrees.
    repetition_time, echo_time : float, s; ``flip_angle`` degrees (when not varied).
    rescale_slope, rescale_intercept : float
        Written as RescaleSlope/RescaleIntercept; stored = round((value - intercept) / slope).
    dtype : {'int16', 'uint16', 'uint8'}
    philips_scale_slope : float, optional
        Add Philips' private floating-point scale slope (2005,100E) under
        the creator ``'Philips MR Imaging DD 001'`` (set ``manufacturer`` to Philips).
    standard_b_value : bool
        Write b-values in (0018,9087) DiffusionBValue; with False only the
        vendor's private tag is written (Siemens, GE or Philips).
    slice_thickness : float, optional
        SliceThickness in mm (default: the slice spacing; smaller values
        make a gap between slices, larger ones an overlap).
    drop : iterable of int or of (slice, measurement)
        Slices (all measurements) or single images not to write.
    shift_slices : dict {slice: mm}, optional
        Move these slices along the slice normal (inconsistent spacing).
    reverse_files : bool
        Name and number the files from the last slice to the first.
    transfer_syntax : UID
        Explicit or implicit VR little endian, or a compressed syntax that
        pydicom can encode (RLE Lossless, JPEG-LS Lossless, JPEG 2000 Lossless).

    Returns
    -------
    list of Path, the files written in writing order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data4 = _as_4d(data)
    nx, ny, nz, n = data4.shape
    dt = _DTYPES[dtype]
    geo = dicom_geometry(affine, nz)
    meas = _measurements(n, echo_times, b_values, b_vectors, flip_angles, inversion_times,
                         frame_times)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    for_uid = frame_of_reference_uid or generate_uid()
    drop_slices = {d for d in drop if not isinstance(d, tuple)}
    drop_images = {d for d in drop if isinstance(d, tuple)}
    shift_slices = dict(shift_slices or {})

    ds = Dataset()
    _patient_study(ds, study_uid, patient_id)
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.ImageType = list(image_type)
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.ProtocolName = series_description
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = "Synthetic"
    ds.SoftwareVersions = "oncomri tests"
    ds.InstitutionName = "oncomri"
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = "SP"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.MagneticFieldStrength = _ds(magnetic_field_strength)
    ds.ImagingFrequency = _ds(42.577478 * magnetic_field_strength)
    ds.RepetitionTime = _ds(repetition_time * 1e3)
    ds.EchoTrainLength = n if echo_times is not None else 1
    ds.SliceThickness = _ds(geo["slice_spacing"] if slice_thickness is None else slice_thickness)
    ds.SpacingBetweenSlices = _ds(geo["slice_spacing"])
    ds.PixelSpacing = [_ds(v) for v in geo["pixel_spacing"]]
    ds.ImageOrientationPatient = [_ds(v) for v in geo["orientation"]]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ny
    ds.Columns = nx
    ds.BitsAllocated = dt.itemsize * 8
    ds.BitsStored = dt.itemsize * 8
    ds.HighBit = dt.itemsize * 8 - 1
    ds.PixelRepresentation = 1 if dt.kind == "i" else 0
    ds.RescaleIntercept = _ds(rescale_intercept)
    ds.RescaleSlope = _ds(rescale_slope)
    ds.RescaleType = "US"
    if philips_scale_slope is not None:
        _add_philips(ds, philips_scale_slope)

    order = [(k, m) for m in range(n) for k in range(nz)
             if k not in drop_slices and (k, m) not in drop_images]
    if reverse_files:
        order = sorted(order, key=lambda km: (-km[0], km[1]))
    else:
        order = sorted(order, key=lambda km: (km[0], km[1]))
    paths = []
    compressed = transfer_syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    for number, (k, m) in enumerate(order, start=1):
        sop_uid = generate_uid()
        ds.file_meta = _file_meta(MR_IMAGE_STORAGE, sop_uid, transfer_syntax)
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = number
        params = meas[m]
        ds.EchoTime = _ds(params.get("EchoTime", echo_time * 1e3))
        ds.EchoNumbers = params.get("EchoNumbers", 1)
        ds.FlipAngle = _ds(params.get("FlipAngle", flip_angle))
        if "InversionTime" in params:
            ds.InversionTime = _ds(params["InversionTime"])
        if "TemporalPositionIdentifier" in params:
            ds.TemporalPositionIdentifier = params["TemporalPositionIdentifier"]
            ds.NumberOfTemporalPositions = n
        if "b" in params:
            if standard_b_value:
                ds.DiffusionBValue = float(params["b"])
                if "g" in params:
                    ds.DiffusionGradientOrientation = [float(v) for v in params["g"]]
            else:
                _add_vendor_b(ds, manufacturer, params["b"])
        t = params.get("frame_time", 0.0) + 0.05 * k
        date, time = _time_string(t)
        ds.AcquisitionDate = ds.ContentDate = ds.SeriesDate = date
        ds.AcquisitionTime = ds.ContentTime = time
        ds.SeriesTime = _time_string(0.0)[1]
        ds.AcquisitionNumber = 1
        pos = geo["positions"][k] + shift_slices.get(k, 0.0) * geo["normal"]
        ds.ImagePositionPatient = [_ds(v) for v in pos]
        ds.SliceLocation = _ds(float(pos @ geo["normal"]))
        stored = _quantise(data4[:, :, k, m].T, rescale_slope, rescale_intercept, dt)
        stored = np.ascontiguousarray(stored)
        if compressed:
            ds.compress(transfer_syntax, stored)
        else:
            ds.PixelData = stored.tobytes()
            if "PixelData" in ds:
                ds["PixelData"].VR = "OW" if dt.itemsize > 1 else "OB"
        path = folder / f"{prefix}{number:05d}.dcm"
        ds.save_as(path, enforce_file_format=True,
                   implicit_vr=transfer_syntax == ImplicitVRLittleEndian, little_endian=True)
        if "b" in params:
            for kw in ("DiffusionBValue", "DiffusionGradientOrientation"):
                if kw in ds:
                    del ds[kw]
        paths.append(path)
    return paths


def _item(**kwargs) -> Dataset:
    d = Dataset()
    for k, v in kwargs.items():
        setattr(d, k, v)
    return d


def _modifier(inversion_time_ms) -> Dataset:
    mod = _item(InversionRecovery="NO" if inversion_time_ms is None else "YES",
                FlowCompensation="NONE", T2Preparation="NO",
                SpectrallySelectedExcitation="NONE", SpatialPresaturation="NONE",
                PartialFourier="NO", ParallelAcquisition="NO")
    if inversion_time_ms is not None:
        mod.InversionTimes = [float(inversion_time_ms)]
    return mod


def write_enhanced_series(path, data, affine, *, echo_times=None, b_values=None,
                          b_vectors=None, flip_angles=None, inversion_times=None,
                          frame_times=None, repetition_time: float = 0.1,
                          flip_angle: float = 20.0, echo_time: float = 0.005,
                          magnetic_field_strength: float = 3.0, rescale_slope=1.0,
                          rescale_intercept: float = 0.0, dtype: str = "int16",
                          series_number: int = 1, series_description: str = "synthetic_emr",
                          series_uid: str | None = None, study_uid: str | None = None,
                          patient_id: str = "ONCOMRI-TEST", manufacturer: str = "SIEMENS",
                          frame_order: str = "measurement", drop_frames=(),
                          rng=0) -> Path:
    """Write ``data`` as one Enhanced MR Image Storage (multi-frame) file.

    Parameters
    ----------
    path : path of the file to write.
    data, affine, echo_times, b_values, b_vectors, flip_angles, inversion_times, frame_times
        As :func:`write_classic_series` (one frame per slice and measurement).
    rescale_slope : float or array_like (n,)
        One slope for all frames (shared Pixel Value Transformation) or one
        per measurement (per-frame).
    frame_order : {'measurement', 'slice', 'random'}
        Frames ordered measurement-major, slice-major, or shuffled (seeded
        by ``rng``); readers must sort by the functional groups.
    drop_frames : iterable of (slice, measurement)
        Frames not to write (unequal frame counts).

    Returns
    -------
    Path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data4 = _as_4d(data)
    nx, ny, nz, n = data4.shape
    dt = _DTYPES[dtype]
    geo = dicom_geometry(affine, nz)
    meas = _measurements(n, echo_times, b_values, b_vectors, flip_angles, inversion_times,
                         frame_times)
    slopes = np.broadcast_to(np.asarray(rescale_slope, np.float64), (n,))
    per_frame_slope = np.ndim(rescale_slope) > 0
    sop_uid = generate_uid()

    ds = Dataset()
    ds.file_meta = _file_meta(ENHANCED_MR_IMAGE_STORAGE, sop_uid, ExplicitVRLittleEndian)
    _patient_study(ds, study_uid or generate_uid(), patient_id)
    del ds.Laterality
    ds.SOPClassUID = ENHANCED_MR_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.ProtocolName = series_description
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = "Synthetic"
    ds.SoftwareVersions = "oncomri tests"
    ds.DeviceSerialNumber = "0000"
    ds.FrameOfReferenceUID = generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = 1
    date, time = _time_string(0.0)
    ds.ContentDate = ds.SeriesDate = ds.AcquisitionDate = date
    ds.ContentTime = ds.SeriesTime = time
    ds.AcquisitionDateTime = date + time
    ds.AcquisitionDuration = 60.0
    ds.AcquisitionNumber = 1
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.ComplexImageComponent = "MAGNITUDE"
    ds.AcquisitionContrast = "T2" if echo_times is not None else "UNKNOWN"
    ds.ContentQualification = "PRODUCT"
    ds.ResonantNucleus = "1H"
    ds.KSpaceFiltering = "NONE"
    ds.MagneticFieldStrength = _ds(magnetic_field_strength)
    ds.ImagingFrequency = _ds(42.577478 * magnetic_field_strength)
    ds.ApplicableSafetyStandardAgency = "IEC"
    ds.ImageComments = "synthetic"
    ds.MRAcquisitionType = "2D"
    ds.EchoPulseSequence = "GRADIENT"
    ds.MultiPlanarExcitation = "NO"
    ds.PhaseContrast = "NO"
    ds.TimeOfFlightContrast = "NO"
    ds.Spoiling = "RF"
    ds.SteadyStatePulseSequence = "NONE"
    ds.EchoPlanarPulseSequence = "NO"
    ds.SaturationRecovery = "NO"
    ds.SpectrallySelectedSuppression = "NONE"
    ds.OversamplingPhase = "NONE"
    ds.GeometryOfKSpaceTraversal = "RECTILINEAR"
    ds.SegmentedKSpaceTraversal = "SINGLE"
    ds.RectilinearPhaseEncodeReordering = "LINEAR"
    ds.NumberOfKSpaceTrajectories = 1
    ds.AcquisitionContextSequence = Sequence([])
    ds.PulseSequenceName = "synthetic"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ny
    ds.Columns = nx
    ds.BitsAllocated = dt.itemsize * 8
    ds.BitsStored = dt.itemsize * 8
    ds.HighBit = dt.itemsize * 8 - 1
    ds.PixelRepresentation = 1 if dt.kind == "i" else 0
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"

    frames = [(k, m) for m in range(n) for k in range(nz) if (k, m) not in set(drop_frames)]
    if frame_order == "slice":
        frames.sort(key=lambda km: (km[0], km[1]))
    elif frame_order == "random":
        np.random.default_rng(rng).shuffle(frames)
    elif frame_order != "measurement":
        raise ValueError("frame_order must be 'measurement', 'slice' or 'random'")
    ds.NumberOfFrames = len(frames)

    stack_uid = generate_uid()
    ds.DimensionOrganizationSequence = Sequence([_item(DimensionOrganizationUID=stack_uid)])
    dims = [
        ("StackID", 0x00209056, 0x00209111),
        ("InStackPositionNumber", 0x00209057, 0x00209111),
    ]
    measure_kind = None
    if echo_times is not None:
        dims.append(("EffectiveEchoTime", 0x00189082, 0x00189114))
        measure_kind = "echo"
    elif frame_times is not None:
        dims.append(("TemporalPositionIndex", 0x00209128, 0x00209111))
        measure_kind = "time"
    elif n > 1:
        dims.append(("FrameAcquisitionNumber", 0x00209156, 0x00209111))
        measure_kind = "other"
    ds.DimensionIndexSequence = Sequence([
        _item(DimensionOrganizationUID=stack_uid, DimensionIndexPointer=ptr,
              FunctionalGroupPointer=grp, DimensionDescriptionLabel=label)
        for label, ptr, grp in dims])

    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([_item(
        PixelSpacing=[_ds(v) for v in geo["pixel_spacing"]],
        SliceThickness=_ds(geo["slice_spacing"]),
        SpacingBetweenSlices=_ds(geo["slice_spacing"]))])
    shared.PlaneOrientationSequence = Sequence([_item(
        ImageOrientationPatient=[_ds(v) for v in geo["orientation"]])])
    def timing(fa: float) -> Sequence:
        return Sequence([_item(
            RepetitionTime=float(repetition_time * 1e3), FlipAngle=float(fa),
            EchoTrainLength=n if echo_times is not None else 1, RFEchoTrainLength=1,
            GradientEchoTrainLength=n if echo_times is not None else 1,
            SpecificAbsorptionRateSequence=Sequence([_item(
                SpecificAbsorptionRateDefinition="IEC_WHOLE_BODY",
                SpecificAbsorptionRateValue=0.5)]),
            OperatingModeSequence=Sequence([_item(
                OperatingModeType="STATIC FIELD", OperatingMode="IEC_NORMAL")]))])

    if flip_angles is None:
        shared.MRTimingAndRelatedParametersSequence = timing(flip_angle)
    if echo_times is None:
        shared.MREchoSequence = Sequence([_item(EffectiveEchoTime=float(echo_time * 1e3))])
    if not per_frame_slope:
        shared.PixelValueTransformationSequence = Sequence([_item(
            RescaleIntercept=_ds(rescale_intercept), RescaleSlope=_ds(slopes[0]),
            RescaleType="US")])
    shared.MRImageFrameTypeSequence = Sequence([_item(
        FrameType=["ORIGINAL", "PRIMARY", "M", "NONE"], PixelPresentation="MONOCHROME",
        VolumetricProperties="VOLUME", VolumeBasedCalculationTechnique="NONE",
        ComplexImageComponent="MAGNITUDE", AcquisitionContrast=ds.AcquisitionContrast)])
    shared.FrameAnatomySequence = Sequence([_item(
        FrameLaterality="U", AnatomicRegionSequence=Sequence([_item(
            CodeValue="38266002", CodingSchemeDesignator="SCT", CodeMeaning="Entire body")]))])
    shared.MRFOVGeometrySequence = Sequence([_item(
        InPlanePhaseEncodingDirection="ROW", MRAcquisitionFrequencyEncodingSteps=nx,
        MRAcquisitionPhaseEncodingStepsInPlane=ny, PercentSampling=100.0,
        PercentPhaseFieldOfView=100.0)])
    if inversion_times is None:
        shared.MRModifierSequence = Sequence([_modifier(inversion_time_ms=None)])
    shared.MRImagingModifierSequence = Sequence([_item(
        MagnetizationTransfer="NONE", BloodSignalNulling="NO", Tagging="NONE",
        TransmitterFrequency=42.577478 * magnetic_field_strength, PixelBandwidth=300.0)])
    shared.MRReceiveCoilSequence = Sequence([_item(
        ReceiveCoilName="synthetic", ReceiveCoilManufacturerName="oncomri",
        ReceiveCoilType="VOLUME", QuadratureReceiveCoil="YES")])
    shared.MRTransmitCoilSequence = Sequence([_item(
        TransmitCoilName="body", TransmitCoilManufacturerName="oncomri",
        TransmitCoilType="BODY")])
    shared.MRAveragesSequence = Sequence([_item(NumberOfAverages=1.0)])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])

    per_frame = []
    pixels = np.empty((len(frames), ny, nx), dtype=dt)
    for f, (k, m) in enumerate(frames):
        params = meas[m]
        item = Dataset()
        t = params.get("frame_time", 0.0) + 0.05 * k
        fdate, ftime = _time_string(t)
        content = _item(FrameAcquisitionNumber=m + 1, FrameReferenceDateTime=fdate + ftime,
                        FrameAcquisitionDateTime=fdate + ftime, FrameAcquisitionDuration=10.0,
                        StackID="1", InStackPositionNumber=k + 1)
        index = [1, k + 1]
        if measure_kind is not None:
            index.append(m + 1)
        content.DimensionIndexValues = index
        if "TemporalPositionIdentifier" in params:
            content.TemporalPositionIndex = m + 1
        item.FrameContentSequence = Sequence([content])
        item.PlanePositionSequence = Sequence([_item(
            ImagePositionPatient=[_ds(v) for v in geo["positions"][k]])])
        if "EchoTime" in params:
            item.MREchoSequence = Sequence([_item(EffectiveEchoTime=float(params["EchoTime"]))])
        if "FlipAngle" in params:
            item.MRTimingAndRelatedParametersSequence = timing(params["FlipAngle"])
        if "InversionTime" in params:
            item.MRModifierSequence = Sequence([_modifier(params["InversionTime"])])
        if "b" in params:
            diff = _item(DiffusionBValue=float(params["b"]),
                         DiffusionDirectionality="DIRECTIONAL" if params["b"] > 0 else "NONE")
            if "g" in params and params["b"] > 0:
                diff.DiffusionGradientDirectionSequence = Sequence([_item(
                    DiffusionGradientOrientation=[float(v) for v in params["g"]])])
            item.MRDiffusionSequence = Sequence([diff])
        if per_frame_slope:
            item.PixelValueTransformationSequence = Sequence([_item(
                RescaleIntercept=_ds(rescale_intercept), RescaleSlope=_ds(slopes[m]),
                RescaleType="US")])
        per_frame.append(item)
        pixels[f] = _quantise(data4[:, :, k, m].T, slopes[m], rescale_intercept, dt)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW" if dt.itemsize > 1 else "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def write_text_sr(path, evidence, *, series_number: int = 99) -> Path:
    """Write a Comprehensive SR document (highdicom) that cites ``evidence`` (datasets).

    A non-image object in the same study, as scanners and PACS put next to
    images (dose reports, key images, reports). PS3.3 A.35.3.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    root = hd.sr.ContainerContentItem(name=codes.DCM.Finding, template_id=None)
    root.ContentSequence = hd.sr.ContentSequence([
        hd.sr.TextContentItem(name=codes.DCM.Finding, value="synthetic report",
                              relationship_type="CONTAINS")])
    sr = hd.sr.ComprehensiveSR(
        evidence=list(evidence), content=root, series_instance_uid=generate_uid(),
        series_number=series_number, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="oncomri tests")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sr.save_as(path, enforce_file_format=True)
    return path


def truncate_file(path, *, keep: float = 0.6) -> Path:
    """Cut ``path`` to ``keep`` of its size in place (an interrupted copy)."""
    path = Path(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: max(1, int(len(raw) * keep))])
    return path
