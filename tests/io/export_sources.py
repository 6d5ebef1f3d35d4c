"""A minimal synthetic classic MR source series for the DICOM export tests.

:func:`write_mr_series` writes one single-frame MR Image Storage file per
slice (and echo) with pydicom: an oblique slice stack with the Image Plane
Module (DICOM PS3.3 C.7.6.2) filled in, so that derived objects (Parametric
Map, SEG, SR) can reference it. :func:`grid_affine` gives the voxel -> RAS mm
affine of the (column, row, slice) grid that oncomri's Volume convention uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

__all__ = ["MR_IMAGE_STORAGE", "PATIENT_NAME", "PATIENT_ID", "write_mr_series", "grid_affine"]

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
PATIENT_NAME = "Synthetic^Rat07"
PATIENT_ID = "RAT-07-SECRET"


def _oblique_axes() -> tuple[np.ndarray, np.ndarray]:
    """Row and column direction cosines (LPS) of a double-oblique plane."""
    def rot(axis, deg):
        a = np.deg2rad(deg)
        c, s = np.cos(a), np.sin(a)
        i, j = [k for k in range(3) if k != axis]
        m = np.eye(3)
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        return m
    m = rot(0, 17.0) @ rot(2, -23.0)
    return m @ np.array([1.0, 0.0, 0.0]), m @ np.array([0.0, 1.0, 0.0])


def write_mr_series(folder, *, columns: int = 16, rows: int = 12, slices: int = 4,
                    echo_times_ms=(5.0,), spacing=(0.8, 0.6), slice_step: float = 1.5,
                    seed: int = 0) -> list[Path]:
    """Write a synthetic oblique classic MR series; one file per slice and echo.

    ``spacing`` is (row spacing, column spacing) in mm as DICOM PixelSpacing.
    Files are named so that their sorted order is *not* the slice order (the
    last slice first), to check that readers and writers sort by position.
    Returns the paths written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    row_dir, col_dir = _oblique_axes()
    normal = np.cross(row_dir, col_dir)
    origin = np.array([-20.0, 15.0, 7.5])
    study_uid, series_uid, for_uid = generate_uid(), generate_uid(), generate_uid()
    paths = []
    instance = 0
    for e, te in enumerate(echo_times_ms):
        for k in range(slices):
            instance += 1
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
            sop_uid = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds.SpecificCharacterSet = "ISO_IR 100"
            ds.SOPClassUID = MR_IMAGE_STORAGE
            ds.SOPInstanceUID = sop_uid
            ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
            ds.PatientName = PATIENT_NAME
            ds.PatientID = PATIENT_ID
            ds.PatientBirthDate = "20240101"
            ds.PatientSex = "F"
            ds.StudyInstanceUID = study_uid
            ds.StudyDate = "20250312"
            ds.StudyTime = "101500"
            ds.StudyID = "1"
            ds.AccessionNumber = "ACC0001"
            ds.ReferringPhysicianName = ""
            ds.Modality = "MR"
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = 5
            ds.SeriesDescription = "mge_oblique"
            ds.Manufacturer = "SyntheticVendor"
            ds.FrameOfReferenceUID = for_uid
            ds.PositionReferenceIndicator = ""
            ds.InstanceNumber = instance
            ds.AcquisitionNumber = 1
            ds.ScanningSequence = "GR"
            ds.SequenceVariant = "SP"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "2D"
            ds.RepetitionTime = 500.0
            ds.EchoTime = float(te)
            ds.EchoNumbers = e + 1
            ds.EchoTrainLength = len(echo_times_ms)
            ds.MagneticFieldStrength = 7.0
            ds.FlipAngle = 30.0
            ds.SliceThickness = slice_step
            ds.SpacingBetweenSlices = slice_step
            ds.PixelSpacing = [float(spacing[0]), float(spacing[1])]
            ds.ImageOrientationPatient = [round(float(v), 8) for v in (*row_dir, *col_dir)]
            pos = origin + k * slice_step * normal
            ds.ImagePositionPatient = [round(float(v), 6) for v in pos]
            ds.SliceLocation = round(float(pos @ normal), 6)
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows = rows
            ds.Columns = columns
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 0
            pixels = (1000 * np.exp(-te / 20.0) + rng.integers(0, 50, size=(rows, columns)))
            ds.PixelData = pixels.astype("<u2").tobytes()
            path = folder / f"IM{(len(echo_times_ms) * slices - instance):04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


def grid_affine(datasets) -> np.ndarray:
    """Voxel (column, row, slice) -> RAS+ mm affine of a sorted single-echo stack."""
    ds0 = datasets[0]
    iop = np.asarray(ds0.ImageOrientationPatient, dtype=float)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    pos = sorted((np.asarray(d.ImagePositionPatient, dtype=float) for d in datasets),
                 key=lambda p: float(p @ normal))
    dr, dc = (float(v) for v in ds0.PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * dc
    lps[:3, 1] = col_dir * dr
    lps[:3, 2] = (pos[1] - pos[0]) if len(pos) > 1 else normal
    lps[:3, 3] = pos[0]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
