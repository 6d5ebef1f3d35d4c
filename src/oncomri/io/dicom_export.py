"""DICOM output: Parametric Map, Segmentation and TID 1500 measurement report.

Maps, ROI masks and ROI measurements go back to the scanner world as DICOM
objects that reference the source series they were computed from, so a PACS
or viewer shows them on top of the original images:

- :func:`write_parametric_map` — a quantitative map (R2*, T2*, ADC, Ktrans ...)
  as a Parametric Map (DICOM PS3.3 A.75), float32 pixel data with a Real
  World Value Mapping (PS3.3 C.7.6.16.2.11) that names the quantity and its
  UCUM unit.
- :func:`write_segmentation` — ROI masks as a BINARY Segmentation
  (PS3.3 A.51), one segment per label with coded property category and type.
- :func:`write_measurement_report` — per-ROI statistics of a map (mean,
  median, SD, min, max, volume, voxel count) as a Comprehensive 3D SR using
  TID 1500 "Measurement Report" with one TID 1411 volumetric group per
  segment, each referencing its SEG segment and the Parametric Map as the
  source of the measurements (PS3.16 TID 1500, 1411, 1419, 1420).

The DICOM objects themselves are built by highdicom (Herrmann et al.,
J Digit Imaging 2022;35:1719); this module adds oncomri's conventions and
eager validation on top of it.

Geometry: the arrays are in oncomri's Volume convention, ``(X, Y, Z)`` with
X the column index of the source images (fastest in a DICOM row, like x in
NIfTI), Y the row index and Z the slice index, slices ordered by increasing
position along the slice normal (row direction x column direction, PS3.3
C.7.6.2.1.1). Without an ``affine`` the array must be on exactly that grid;
with an ``affine`` (or a :class:`~oncomri.core.Volume`) the array may be on
the same grid with axes permuted or flipped (e.g. a dcm2niix NIfTI) and is
reoriented exactly, without resampling.

Codes: quantities use DICOM (DCM, CID 7180) codes where the standard has one
(R2* DCM 126395, T2* DCM 113064, ADC DCM 113041, Ktrans DCM 126312 ...); the
few that it lacks use the private coding scheme ``99ONCOMRI``
(:data:`ONCOMRI_CODING_SCHEME`): ``S0`` (model signal at zero echo time or
b-value), ``DR2STAR`` (change of R2* against a baseline), ``FECONC`` (iron
concentration) and ``NVOXELS`` (number of voxels of a segment).
Statistics use SNOMED CT (CID 7464): Mean 373098007, Median 373099004,
Standard Deviation 386136009, Minimum 255605001, Maximum 56851009; volume is
SCT 118565006 with method DCM 126030 "Sum of segmented voxel method for
volume". Units are UCUM (``/s``, ``s``, ``ms``, ``mm2/s``, ``/min``, ``1``,
``mm3`` ...).

Not-a-number voxels: DICOM does not define how IEEE NaN or infinity in Float
Pixel Data are to be read, and viewers treat them inconsistently. Voxels that
are not finite (NaN from failed fits, inf from 1/0) are therefore written as
``nan_value`` (default 0) and declared as padding with Float Pixel Padding
Value (0028,0122) and Float Pixel Padding Range Limit (0028,0124) (PS3.3
C.7.6.24); the Content Description says so too. Padding-aware readers mask
them; a map with genuine values equal to ``nan_value`` should choose another
one (e.g. ``nan_value=-1.0`` for a non-negative quantity).

Every writer validates its inputs before writing anything, raising
:mod:`oncomri.core.errors` exceptions with one-line messages, and writes its
file atomically: to a temporary file in the target folder, fsync'ed, then
moved into place with :func:`os.replace`, so the target is either the old
file or the complete new one.

De-identification: each writer takes ``deidentifier=`` (an object with
``deidentify_dataset(ds) -> ds``, e.g. :class:`oncomri.io.deid.Deidentifier`)
and applies it to an independent copy of the finished object before writing
(highdicom shares data elements with the source datasets, which must not
change). Written with one keyed de-identifier, the Parametric Map, the SEG
and the report still reference each other and the (equally de-identified)
source series; :func:`write_measurement_report` accepts the de-identified SEG
and Parametric Map together with the original source datasets.
"""

from __future__ import annotations

import io
import math
import os
import secrets
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import GeometryError, ReadError, ValidationError
from .bids import _one_line
from .nifti import _fsync_dir

__all__ = [
    "write_parametric_map",
    "write_segmentation",
    "write_measurement_report",
    "SegmentLabel",
    "QUANTITIES",
    "UNITS",
    "SEGMENT_TYPES",
    "STATISTICS",
    "ONCOMRI_CODING_SCHEME",
]

#: Private coding scheme designator for concepts that DICOM and SNOMED CT lack.
ONCOMRI_CODING_SCHEME = "99ONCOMRI"

_PM_STORAGE = "1.2.840.10008.5.1.4.1.1.30"
_SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
_MANUFACTURER = "oncomri"
_DEVICE_SERIAL = "0"
_POSITION_TOL_MM = 1e-3
_ORIENTATION_TOL = 1e-4
_GRID_TOL_VOXELS = 1e-2


def _hd():
    """highdicom, imported on first use (a declared dependency of oncomri)."""
    import highdicom

    return highdicom


def _code(value: str, scheme: str, meaning: str):
    from pydicom.sr.coding import Code

    return Code(value, scheme, meaning)


def _version() -> str:
    from .. import __version__

    return __version__


# --------------------------------------------------------------------------- code tables


@dataclass(frozen=True)
class _Quantity:
    """A quantity of :data:`QUANTITIES`: its code and what it measures."""

    code: tuple  # (value, scheme, meaning)
    dimension: str
    label: str  # Content Label / LUT Label (CS, <= 16 chars)
    text: str  # human-readable name


#: Quantities known by name: ``{name: _Quantity(code, dimension, label, text)}``,
#: ``code`` = (code value, coding scheme, code meaning); ``dimension`` is checked
#: against the unit's. Names are matched case-insensitively; ``*`` may be
#: written ``star`` (``'R2star'``).
QUANTITIES: dict[str, _Quantity] = {
    "R2*": _Quantity(("126395", "DCM", "R2*"), "rate", "R2STAR", "R2*"),
    "T2*": _Quantity(("113064", "DCM", "T2*"), "time", "T2STAR", "T2*"),
    "R2": _Quantity(("126394", "DCM", "R2"), "rate", "R2", "R2"),
    "T2": _Quantity(("113065", "DCM", "T2"), "time", "T2", "T2"),
    "R1": _Quantity(("126393", "DCM", "R1"), "rate", "R1", "R1"),
    "T1": _Quantity(("113063", "DCM", "T1"), "time", "T1", "T1"),
    "ADC": _Quantity(("113041", "DCM", "Apparent Diffusion Coefficient"), "diffusivity",
                     "ADC", "ADC"),
    "Ktrans": _Quantity(("126312", "DCM", "Ktrans"), "rate", "KTRANS", "Ktrans"),
    "kep": _Quantity(("126313", "DCM", "kep"), "rate", "KEP", "kep"),
    "ve": _Quantity(("126314", "DCM", "ve"), "fraction", "VE", "ve"),
    "vp": _Quantity(("126331", "DCM", "vp"), "fraction", "VP", "vp"),
    "PD": _Quantity(("113058", "DCM", "Proton Density"), "signal", "PD", "Proton density"),
    "chi": _Quantity(("126396", "DCM", "Magnetic Susceptibility"), "susceptibility", "CHI",
                     "Susceptibility"),
    "S0": _Quantity(("S0", ONCOMRI_CODING_SCHEME,
                     "Model signal at zero echo time or b-value"), "signal", "S0", "S0"),
    "dR2*": _Quantity(("DR2STAR", ONCOMRI_CODING_SCHEME, "Change in R2* from baseline"),
                      "rate", "DR2STAR", "dR2*"),
    "iron": _Quantity(("FECONC", ONCOMRI_CODING_SCHEME, "Iron concentration"),
                      "concentration", "FECONC", "Iron"),
}

#: UCUM units: ``{code: (meaning, dimension)}``; aliases in :data:`_UNIT_ALIASES`.
UNITS: dict[str, tuple[str, str]] = {
    "/s": ("/s", "rate"),
    "/ms": ("/ms", "rate"),
    "/min": ("/min", "rate"),
    "Hz": ("hertz", "rate"),
    "s": ("second", "time"),
    "ms": ("millisecond", "time"),
    "mm2/s": ("mm2/s", "diffusivity"),
    "10-6.mm2/s": ("10-6.mm2/s", "diffusivity"),
    "um2/ms": ("um2/ms", "diffusivity"),
    "1": ("no units", "fraction"),
    "%": ("percent", "fraction"),
    "[arb'U]": ("arbitrary unit", "signal"),
    "mmol/L": ("millimole per liter", "concentration"),
    "ppm": ("parts per million", "susceptibility"),
}

_UNIT_ALIASES = {"1/s": "/s", "s-1": "/s", "1/ms": "/ms", "1/min": "/min", "min-1": "/min",
                 "a.u.": "[arb'U]", "au": "[arb'U]", "mM": "mmol/L", "mmol/l": "mmol/L"}

# Dimensions a quantity may carry besides its own ("signal" may be unitless).
_COMPATIBLE = {"signal": {"signal", "fraction"}}

#: Segment property types: ``{name: ((category code), (type code))}`` (CID 7150/7151).
SEGMENT_TYPES: dict[str, tuple[tuple, tuple]] = {
    "tissue": (("85756007", "SCT", "Tissue"), ("85756007", "SCT", "Tissue")),
    "tumour": (("49755003", "SCT", "Morphologically Abnormal Structure"),
               ("108369006", "SCT", "Neoplasm")),
    "necrosis": (("49755003", "SCT", "Morphologically Abnormal Structure"),
                 ("6574001", "SCT", "Necrosis")),
    "oedema": (("49755003", "SCT", "Morphologically Abnormal Structure"),
               ("79654002", "SCT", "Edema")),
    "lesion": (("49755003", "SCT", "Morphologically Abnormal Structure"),
               ("52988006", "SCT", "Lesion")),
    "lymph node": (("91723000", "SCT", "Anatomical Structure"),
                   ("59441001", "SCT", "Lymph node")),
    "kidney": (("91723000", "SCT", "Anatomical Structure"), ("64033007", "SCT", "Kidney")),
    "liver": (("91723000", "SCT", "Anatomical Structure"), ("10200004", "SCT", "Liver")),
    "spleen": (("91723000", "SCT", "Anatomical Structure"), ("78961009", "SCT", "Spleen")),
    "muscle": (("91723000", "SCT", "Anatomical Structure"),
               ("127954009", "SCT", "Skeletal muscle")),
    "brain": (("91723000", "SCT", "Anatomical Structure"), ("12738006", "SCT", "Brain")),
}
_SEGMENT_ALIASES = {"tumor": "tumour", "neoplasm": "tumour", "edema": "oedema",
                    "lymph-node": "lymph node", "lymph_node": "lymph node",
                    "lymphnode": "lymph node"}

#: ROI statistics accepted by :func:`write_measurement_report` and their codes.
STATISTICS: dict[str, tuple] = {
    "mean": ("373098007", "SCT", "Mean"),
    "median": ("373099004", "SCT", "Median"),
    "sd": ("386136009", "SCT", "Standard Deviation"),
    "min": ("255605001", "SCT", "Minimum"),
    "max": ("56851009", "SCT", "Maximum"),
    "volume_mm3": ("118565006", "SCT", "Volume"),
    "voxel_count": ("NVOXELS", ONCOMRI_CODING_SCHEME, "Number of voxels"),
}
_MAP_STATISTICS = ("mean", "median", "sd", "min", "max")


@dataclass(frozen=True)
class SegmentLabel:
    """The description of one segment of :func:`write_segmentation`.

    Parameters
    ----------
    label : str
        Segment Label (0062,0005), e.g. ``'tumour rim'`` (at most 64 characters).
    type : str or Code
        Segmented property type: a name of :data:`SEGMENT_TYPES` (``'tumour'``,
        ``'lymph node'``, ``'tissue'`` ...) or a ``pydicom.sr.coding.Code``
        (then ``category`` is required).
    category : Code, optional
        Segmented property category (CID 7150); taken from
        :data:`SEGMENT_TYPES` when ``type`` is a name.
    """

    label: str
    type: object = "tissue"
    category: object = None


# --------------------------------------------------------------------------- helpers


def _lookup_quantity(quantity):
    """(Code, dimension or None, content label, text) of ``quantity``."""
    from pydicom.sr.coding import Code

    hd = _hd()
    if isinstance(quantity, (Code, hd.sr.CodedConcept)):
        meaning = str(quantity.meaning)
        label = "".join(c for c in meaning.upper() if c.isalnum())[:16] or "MAP"
        return quantity, None, label, meaning
    if not isinstance(quantity, str):
        raise ValidationError(
            f"quantity must be a name ({', '.join(QUANTITIES)}) or a pydicom Code, "
            f"got {type(quantity).__name__}")
    key = quantity.strip().replace("star", "*").replace("STAR", "*").lower()
    for name, q in QUANTITIES.items():
        if name.lower() == key:
            return _code(*q.code), q.dimension, q.label, q.text
    raise ValidationError(
        f"quantity {quantity!r} is unknown; use one of {', '.join(QUANTITIES)} "
        "or pass a pydicom.sr.coding.Code")


def _lookup_unit(unit):
    """(Code, dimension or None) of a UCUM unit string or Code."""
    from pydicom.sr.coding import Code

    hd = _hd()
    if isinstance(unit, (Code, hd.sr.CodedConcept)):
        if str(unit.scheme_designator) != "UCUM":
            raise ValidationError(
                f"unit {unit.value!r} has coding scheme {unit.scheme_designator!r}; "
                "units must be UCUM codes")
        return unit, UNITS.get(str(unit.value), (None, None))[1]
    if not isinstance(unit, str):
        raise ValidationError(
            f"unit must be a UCUM string ({', '.join(UNITS)}), got {type(unit).__name__}")
    key = _UNIT_ALIASES.get(unit.strip(), unit.strip())
    if key not in UNITS:
        raise ValidationError(
            f"unit {unit!r} is unknown; use a UCUM unit: {', '.join(UNITS)} "
            "(or pass a pydicom Code with scheme 'UCUM')")
    meaning, dimension = UNITS[key]
    return _code(key, "UCUM", meaning), dimension


def _check_unit_fits(quantity_text: str, qdim, unit_code, udim) -> None:
    if qdim is None or udim is None:
        return
    if udim == qdim or udim in _COMPATIBLE.get(qdim, ()):
        return
    examples = ", ".join(k for k, (_, d) in UNITS.items() if d == qdim)
    raise ValidationError(
        f"unit {unit_code.value!r} is a {udim} but {quantity_text} is a {qdim}; "
        f"pass unit= one of: {examples}")


def _read_dataset(item, what: str):
    """A pydicom Dataset from a Dataset or a path (ReadError if unreadable)."""
    import pydicom

    if isinstance(item, pydicom.Dataset):
        return item
    if isinstance(item, (str, bytes, os.PathLike)):
        p = Path(os.fsdecode(item))
        if not p.is_file():
            raise ReadError(f"{what} {p}: file not found; check the path")
        try:
            return pydicom.dcmread(p)
        except Exception as exc:  # pydicom raises many types for bad files
            raise ReadError(f"{what} {p}: not a readable DICOM file ({_one_line(exc)})") from exc
    raise ValidationError(
        f"{what} must be a pydicom Dataset or a file path, got {type(item).__name__}")


def _load_sources(source_datasets) -> list:
    """The source image datasets: a sequence of Datasets/paths, or a folder."""
    if isinstance(source_datasets, (str, bytes, os.PathLike)):
        folder = Path(os.fsdecode(source_datasets))
        if not folder.is_dir():
            raise ValidationError(
                f"source_datasets {folder}: not a folder; pass the source series' datasets "
                "or file paths, or the folder that holds only that series")
        items = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    elif isinstance(source_datasets, Sequence):
        items = list(source_datasets)
    else:
        raise ValidationError(
            "source_datasets must be a sequence of pydicom Datasets or file paths "
            f"(the source series), got {type(source_datasets).__name__}")
    if not items:
        raise ValidationError("source_datasets is empty; pass the images of the source series")
    return [_read_dataset(x, f"source_datasets[{i}]") for i, x in enumerate(items)]


@dataclass
class _Grid:
    """The slice geometry of a classic single-frame source series."""

    datasets: list  # all source datasets (all echoes ...)
    rows: int
    columns: int
    row_dir: np.ndarray  # direction of increasing column index (LPS)
    col_dir: np.ndarray  # direction of increasing row index (LPS)
    normal: np.ndarray
    pixel_spacing: tuple  # (between rows, between columns) mm
    positions: list  # one ImagePositionPatient per slice, sorted along normal

    @property
    def shape(self) -> tuple:
        return (self.columns, self.rows, len(self.positions))

    def affine(self) -> np.ndarray:
        """Voxel (column, row, slice) -> RAS+ mm; GeometryError if slices are uneven."""
        p = np.asarray(self.positions, dtype=np.float64)
        if len(p) > 1:
            steps = np.diff(p, axis=0)
            if not np.allclose(steps, steps[0], rtol=0, atol=0.01):
                raise GeometryError(
                    "source_datasets: slices are not evenly spaced, so the series has no "
                    "affine to compare with; omit affine= and pass values on the source grid")
            step = steps[0]
        else:
            step = self.normal
        lps = np.eye(4)
        lps[:3, 0] = self.row_dir * self.pixel_spacing[1]
        lps[:3, 1] = self.col_dir * self.pixel_spacing[0]
        lps[:3, 2] = step
        lps[:3, 3] = p[0]
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _source_grid(datasets) -> _Grid:
    """Validate the source series and find its slices (PS3.3 C.7.6.2 Image Plane Module)."""
    first = datasets[0]
    need = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
            "FrameOfReferenceUID", "Rows", "Columns", "ImageOrientationPatient",
            "ImagePositionPatient", "PixelSpacing")
    for i, ds in enumerate(datasets):
        if int(ds.get("NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds:
            raise ValidationError(
                f"source_datasets[{i}] is a multi-frame (enhanced) image; only classic "
                "single-frame source series are supported — pass the classic series "
                "(or convert it with dcm2niix and back)")
        missing = [k for k in need if k not in ds]
        if missing:
            raise ValidationError(
                f"source_datasets[{i}] lacks {', '.join(missing)}; pass images with the "
                "Image Plane Module (a tomographic image series)")
    key = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "Rows", "Columns")
    ref = tuple(str(first.get(k)) for k in key)
    for i, ds in enumerate(datasets):
        for k, r in zip(key, ref):
            if str(ds.get(k)) != r:
                raise ValidationError(
                    f"source_datasets[{i}] has {k} {ds.get(k)} but source_datasets[0] has {r}; "
                    "pass the images of one series only")
    iop = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    spacing = tuple(float(v) for v in first.PixelSpacing)
    for i, ds in enumerate(datasets):
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, dtype=float), iop,
                           rtol=0, atol=_ORIENTATION_TOL):
            raise GeometryError(
                f"source_datasets[{i}] has another ImageOrientationPatient than "
                "source_datasets[0]; the series must be one parallel slice stack")
        if not np.allclose([float(v) for v in ds.PixelSpacing], spacing, rtol=1e-4, atol=0):
            raise GeometryError(
                f"source_datasets[{i}] has PixelSpacing {list(ds.PixelSpacing)} but "
                f"source_datasets[0] has {list(spacing)}; pass the images of one series only")
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    positions = [np.asarray(ds.ImagePositionPatient, dtype=np.float64) for ds in datasets]
    order = np.argsort([float(p @ normal) for p in positions], kind="stable")
    unique: list = []
    for j in order:
        p = positions[j]
        if unique and np.allclose(p, unique[-1], rtol=0, atol=_POSITION_TOL_MM):
            continue
        if unique and abs(float((p - unique[-1]) @ normal)) < _POSITION_TOL_MM:
            raise GeometryError(
                f"source_datasets: two images lie in the same plane at different in-plane "
                f"positions ({list(unique[-1])} and {list(p)}); pass one slice stack")
        unique.append(p)
    return _Grid(list(datasets), int(first.Rows), int(first.Columns), row_dir, col_dir,
                 normal, spacing, unique)


def _as_array_and_affine(values, affine, name: str):
    from ..core.volume import Volume

    if isinstance(values, Volume):
        if affine is None:
            affine = values.affine
        values = values.data
    arr = np.asanyarray(values)
    if affine is not None:
        aff = np.asarray(affine, dtype=np.float64)
        if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
            raise GeometryError(f"affine must be a finite 4x4 matrix, got shape {aff.shape}")
        affine = aff
    return arr, affine


def _to_source_grid(arr: np.ndarray, affine, grid: _Grid, name: str) -> np.ndarray:
    """``arr`` (X, Y, Z[, n]) on the source grid: checked, or exactly reoriented by ``affine``."""
    spatial = tuple(arr.shape[:3])
    if affine is None:
        if spatial != grid.shape:
            hint = ""
            if spatial == (grid.rows, grid.columns, grid.shape[2]):
                hint = " (rows and columns swapped: transpose the first two axes)"
            raise ValidationError(
                f"{name} has shape {arr.shape}; the source series is (columns, rows, slices) "
                f"= {grid.shape}{hint}; pass the array on the source grid or give affine=")
        return arr
    src_aff = grid.affine()
    t = np.linalg.solve(src_aff, affine)  # value voxel -> source voxel
    rot = t[:3, :3]
    perm = np.argmax(np.abs(rot), axis=1)  # source axis a <- value axis perm[a]
    signs = np.sign(rot[np.arange(3), perm])
    expected = np.zeros((3, 3))
    expected[np.arange(3), perm] = signs
    if sorted(perm) != [0, 1, 2] or not np.allclose(rot, expected, rtol=0, atol=_GRID_TOL_VOXELS):
        raise GeometryError(
            f"{name}: its affine is not the source series' grid up to axis order and flips; "
            "resample it onto the source series first")
    out = np.transpose(arr, tuple(perm) + tuple(range(3, arr.ndim)))
    for a in range(3):
        n = out.shape[a]
        want = 0.0 if signs[a] > 0 else n - 1.0
        if out.shape[a] != grid.shape[a] or abs(t[a, 3] - want) > _GRID_TOL_VOXELS:
            raise GeometryError(
                f"{name}: grid of shape {spatial} with its affine does not cover the source "
                f"series grid {grid.shape} voxel for voxel; resample it onto the source series")
        if signs[a] < 0:
            out = np.flip(out, axis=a)
    return np.ascontiguousarray(out)


def _frames(arr: np.ndarray) -> np.ndarray:
    """(X, Y, Z[, n]) -> highdicom frames (Z, rows, columns[, n])."""
    return np.ascontiguousarray(np.moveaxis(arr, (0, 1, 2), (2, 1, 0)))


def _plane_positions(grid: _Grid) -> list:
    hd = _hd()
    return [hd.PlanePositionSequence(coordinate_system="PATIENT",
                                     image_position=[float(v) for v in p])
            for p in grid.positions]


def _check_text(value, what: str, limit: int):
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit or "\\" in value or any(
            ord(c) < 32 for c in value):
        raise ValidationError(
            f"{what} must be a single-line string of at most {limit} characters without "
            f"backslashes, got {value!r}")
    return value


def _series_number(series_number, sources, offset: int) -> int:
    if series_number is None:
        base = sources[0].get("SeriesNumber")
        try:
            base = int(base)
        except (TypeError, ValueError):
            base = 0
        return offset + base if 0 <= base < 2**31 - 1 - offset else offset
    if isinstance(series_number, bool) or not isinstance(series_number, (int, np.integer)) or not (
            0 < int(series_number) < 2**31):
        raise ValidationError(f"series_number must be a positive integer, got {series_number!r}")
    return int(series_number)


def _check_uid(uid, what: str):
    if uid is None:
        return _hd().UID()
    from pydicom.uid import UID

    if not isinstance(uid, str) or not UID(uid).is_valid:
        raise ValidationError(f"{what} {uid!r} is not a valid DICOM UID; omit it to generate one")
    return uid


def _check_deidentifier(deidentifier):
    if deidentifier is not None and not callable(getattr(deidentifier, "deidentify_dataset", None)):
        raise ValidationError(
            "deidentifier must have a deidentify_dataset(ds) -> ds method "
            f"(e.g. oncomri.io.deid), got {type(deidentifier).__name__}")


def _declare_private_scheme(ds) -> None:
    """Name :data:`ONCOMRI_CODING_SCHEME` in the Coding Scheme Identification Sequence.

    PS3.3 C.12.1.1.6 (SOP Common Module): private coding schemes used in an
    instance should be identified there.
    """
    from pydicom.dataset import Dataset

    seq = list(ds.get("CodingSchemeIdentificationSequence", []))
    if any(str(i.get("CodingSchemeDesignator")) == ONCOMRI_CODING_SCHEME for i in seq):
        return
    item = Dataset()
    item.CodingSchemeDesignator = ONCOMRI_CODING_SCHEME
    item.CodingSchemeName = "oncomri private codes"
    item.CodingSchemeResponsibleOrganization = "oncomri project"
    seq.append(item)
    ds.CodingSchemeIdentificationSequence = seq


def _set_laterality(ds, sources) -> None:
    """General Series Laterality (0020,0060), Type 2C: the source's, else empty (unknown).

    Used for the Parametric Map, which has no Frame Anatomy to carry laterality
    (dciodvfy requires the attribute there); the Segmentation leaves it out.
    """
    if "Laterality" in ds:
        return
    src = sources[0]
    ds.Laterality = src.get("Laterality", None) or src.get("ImageLaterality", None) or ""


def _check_target(path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise ValidationError(f"path must be a file path, got {type(path).__name__}")
    p = Path(os.fspath(path))
    if p.is_dir():
        raise ValidationError(f"{p}: is a folder; pass the name of the DICOM file to write")
    if p.name in ("", ".", ".."):
        raise ValidationError(f"{p}: not a file name; pass e.g. 'R2star_pm.dcm'")
    return p


def _save(ds, path: Path, deidentifier, verify=None) -> Path:
    """Apply ``deidentifier``, then write ``ds`` atomically to ``path`` (PS3.10 file).

    ``verify(before, after)`` may check the de-identified dataset (and raise).
    """
    import pydicom

    if deidentifier is not None:
        # highdicom shares data elements with the source datasets (the patient
        # module is copied by reference): de-identify an independent copy, read
        # back from its encoding, so the caller's source datasets stay as they are.
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        buffer.seek(0)
        out = deidentifier.deidentify_dataset(pydicom.dcmread(buffer))
        if not isinstance(out, pydicom.Dataset):
            raise ValidationError(
                f"deidentifier.deidentify_dataset returned {type(out).__name__}, not a pydicom "
                "Dataset; it must return the de-identified dataset")
        if verify is not None:
            verify(ds, out)
        ds = out
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{os.getpid()}-{secrets.token_hex(4)}-{path.name}"
    try:
        with open(tmp, "xb") as fh:
            try:
                pydicom.dcmwrite(fh, ds, enforce_file_format=True)
            except (OSError, ValueError, TypeError, struct.error) as exc:
                if isinstance(exc, OSError) and exc.errno is not None:
                    raise  # a real I/O failure (disk full, permissions ...)
                raise ValidationError(
                    f"{path}: the DICOM dataset cannot be encoded ({_one_line(exc)}); "
                    "check the values set on it (e.g. by the deidentifier)") from exc
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def _build(what: str, factory):
    """Run a highdicom constructor; its ValueError/TypeError become one-line ValidationErrors."""
    try:
        return factory()
    except (ValueError, TypeError) as exc:
        raise ValidationError(f"{what}: highdicom rejected the inputs ({_one_line(exc)})") from exc


# --------------------------------------------------------------------------- Parametric Map


def write_parametric_map(path, values, *, source_datasets, quantity, unit, affine=None,
                         nan_value: float = 0.0, series_number=None, series_description=None,
                         series_instance_uid=None, content_description=None,
                         deidentifier=None) -> Path:
    """Write a quantitative map as a DICOM Parametric Map on its source series' grid.

    Parameters
    ----------
    path : str or path-like
        The file to write (its folder is created if needed; an existing file
        is replaced atomically).
    values : array_like or Volume
        The map, shape ``(X, Y, Z)`` = (columns, rows, slices) of the source
        series with slices by increasing position along the slice normal
        (see the module notes). A :class:`~oncomri.core.Volume` brings its
        affine. Real numbers; written as float32 (Float Pixel Data,
        PS3.3 C.7.6.24). NaN and ±inf become ``nan_value``.
    source_datasets : sequence of pydicom.Dataset or paths, or a folder
        The classic single-frame images of the source series, in any order
        (several images per position, e.g. the echoes of a multi-echo
        series, are all referenced). A folder must hold only that series.
    quantity : str or pydicom.sr.coding.Code
        What the map holds: a name of :data:`QUANTITIES` (``'R2*'``,
        ``'T2*'``, ``'T2'``, ``'S0'``, ``'ADC'``, ``'Ktrans'`` ...) or a code
        (CID 7180). Written as the Quantity Definition of the Real World
        Value Mapping.
    unit : str or pydicom.sr.coding.Code
        UCUM unit of ``values``: a key of :data:`UNITS` (``'/s'``, ``'s'``,
        ``'ms'``, ``'mm2/s'``, ``'/min'``, ``'1'`` ...; ``'1/s'`` and
        ``'a.u.'`` are accepted aliases) or a UCUM Code. Checked against the
        quantity (R2* needs a rate, T2* a time ...).
    affine : array_like (4, 4), optional
        Voxel -> RAS+ mm affine of ``values``. When given, ``values`` may be
        on the source grid with axes permuted or flipped; it is reoriented
        exactly (GeometryError if it is another grid).
    nan_value : float
        Stored in place of non-finite voxels and declared as Float Pixel
        Padding Value; default 0.
    series_number : int, optional
        Default: 1000 + the source SeriesNumber.
    series_description : str, optional
        Default: ``'<quantity> map'``.
    series_instance_uid : str, optional
        Default: a new UID.
    content_description : str, optional
        Content Description (at most 64 characters); default names the
        quantity, unit and ``nan_value``.
    deidentifier : object, optional
        Has ``deidentify_dataset(ds) -> ds``; applied to the output before it
        is written.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValidationError
        Wrong shape against the source series, a map without any finite
        value, an unknown or mismatched quantity/unit, bad sources or options.
        Nothing is written then.
    GeometryError
        ``affine`` describes another grid than the source series'.
    ReadError
        A source path cannot be read.

    Notes
    -----
    Parametric Map IOD, PS3.3 A.75; Real World Value Mapping, PS3.3
    C.7.6.16.2.11 (identity mapping over the range of the stored values,
    ``nan_value`` included, so that readers map every frame);
    Float Pixel Padding, PS3.3 C.7.6.24. The frames follow the slices of the
    source series and each frame references its source images (Derivation
    Image Sequence). A VOI window spans the 1st to 99th percentile of the
    finite values.
    """
    target = _check_target(path)
    _check_deidentifier(deidentifier)
    sources = _load_sources(source_datasets)
    grid = _source_grid(sources)
    q_code, q_dim, q_label, q_text = _lookup_quantity(quantity)
    u_code, u_dim = _lookup_unit(unit)
    _check_unit_fits(q_text, q_dim, u_code, u_dim)
    arr, affine = _as_array_and_affine(values, affine, "values")
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iuf":
        raise ValidationError(
            f"values has dtype {arr.dtype}; pass a real-valued map (masks go to "
            "write_segmentation)")
    if arr.ndim != 3:
        raise ValidationError(
            f"values has shape {arr.shape}; pass one 3D map (columns, rows, slices) = "
            f"{grid.shape}")
    arr = _to_source_grid(arr, affine, grid, "values")
    if isinstance(nan_value, bool) or not isinstance(nan_value, (int, float, np.number)) or \
            not math.isfinite(float(nan_value)) or abs(float(nan_value)) > np.finfo(np.float32).max:
        raise ValidationError(f"nan_value must be a finite float32 number, got {nan_value!r}")
    nan_value = float(np.float32(nan_value))
    data = np.asarray(arr, dtype=np.float64)
    finite = np.isfinite(data)
    if not finite.any():
        raise ValidationError(
            "values holds no finite value (all NaN or inf); nothing to write — check the fit")
    big = np.abs(data[finite]).max()
    if big > np.finfo(np.float32).max:
        raise ValidationError(
            f"values reaches {big:g}, beyond float32; pass the map in a unit that fits")
    pixels = np.where(finite, data, nan_value).astype(np.float32)
    # The mapped range covers every stored value, the padding included: readers
    # (highdicom among them) refuse to map stored values outside of it.
    lo, hi = float(pixels.min()), float(pixels.max())
    p1, p99 = (float(v) for v in np.percentile(pixels[finite], [1, 99]))
    width = max(p99 - p1, abs(p99) * 1e-3, 1e-6)
    n_bad = int(np.count_nonzero(~finite))
    unit_text = str(u_code.value)
    if content_description is None:
        content_description = f"{q_text} map [{unit_text}]"
        if n_bad:
            content_description += f"; NaN/inf stored as {nan_value:g}"
        content_description = content_description[:64]
    _check_text(content_description, "content_description", 64)
    series_description = _check_text(series_description or f"{q_text} map",
                                     "series_description", 64)
    number = _series_number(series_number, sources, 1000)
    series_uid = _check_uid(series_instance_uid, "series_instance_uid")
    hd = _hd()
    rwvm = _build("real world value mapping", lambda: hd.pm.RealWorldValueMapping(
        lut_label=q_label, lut_explanation=f"{q_text} [{unit_text}]"[:64], unit=u_code,
        value_range=(lo, hi), slope=1.0, intercept=0.0, quantity_definition=q_code))
    src = sources[0]
    visual = str(src.get("RecognizableVisualFeatures", "NO")).upper() == "YES"
    pm = _build("parametric map", lambda: hd.pm.ParametricMap(
        source_images=sources,
        pixel_array=_frames(pixels),
        series_instance_uid=series_uid,
        series_number=number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=_MANUFACTURER,
        manufacturer_model_name=_MANUFACTURER,
        software_versions=_version(),
        device_serial_number=_DEVICE_SERIAL,
        contains_recognizable_visual_features=visual,
        real_world_value_mappings=[rwvm],
        voi_lut_transformations=[hd.VOILUTTransformation(
            window_center=(p1 + p99) / 2.0, window_width=width)],
        content_description=content_description,
        content_label=q_label,
        plane_positions=_plane_positions(grid),
        series_description=series_description,
    ))
    _set_laterality(pm, sources)
    if str(q_code.scheme_designator) == ONCOMRI_CODING_SCHEME:
        _declare_private_scheme(pm)
    if n_bad:
        pm.FloatPixelPaddingValue = nan_value
        pm.FloatPixelPaddingRangeLimit = nan_value
    return _save(pm, target, deidentifier)


# --------------------------------------------------------------------------- Segmentation


def _segment_label(item, i: int):
    """(label, category Code, type Code) of one entry of ``labels``."""
    from pydicom.sr.coding import Code

    hd = _hd()
    if isinstance(item, str):
        key = _SEGMENT_ALIASES.get(item.strip().lower(), item.strip().lower())
        item = SegmentLabel(item, key if key in SEGMENT_TYPES else "tissue")
    elif isinstance(item, Mapping):
        unknown = set(item) - {"label", "type", "category"}
        if unknown or "label" not in item:
            raise ValidationError(
                f"labels[{i}]: a dict needs 'label' and may have 'type' and 'category', "
                f"got keys {sorted(item)}")
        item = SegmentLabel(**item)
    elif not isinstance(item, SegmentLabel):
        raise ValidationError(
            f"labels[{i}] must be a str, a dict or a SegmentLabel, got {type(item).__name__}")
    label = _check_text(item.label, f"labels[{i}] label", 64)
    if not label or not label.strip():
        raise ValidationError(f"labels[{i}]: the label is empty; give each segment a name")
    if isinstance(item.type, (Code, hd.sr.CodedConcept)):
        if not isinstance(item.category, (Code, hd.sr.CodedConcept)):
            raise ValidationError(
                f"labels[{i}] ({label!r}): a coded type needs a coded category "
                "(CID 7150, e.g. Code('85756007', 'SCT', 'Tissue'))")
        return label, item.category, item.type
    if not isinstance(item.type, str):
        raise ValidationError(
            f"labels[{i}] ({label!r}): type must be a name ({', '.join(SEGMENT_TYPES)}) or a Code")
    key = _SEGMENT_ALIASES.get(item.type.strip().lower(), item.type.strip().lower())
    if key not in SEGMENT_TYPES:
        raise ValidationError(
            f"labels[{i}] ({label!r}): segment type {item.type!r} is unknown; use one of "
            f"{', '.join(SEGMENT_TYPES)} or pass Codes for type and category")
    category, typ = SEGMENT_TYPES[key]
    if item.category is not None:
        if not isinstance(item.category, (Code, hd.sr.CodedConcept)):
            raise ValidationError(f"labels[{i}] ({label!r}): category must be a Code or None")
        return label, item.category, _code(*typ)
    return label, _code(*category), _code(*typ)


def _mask_stack(masks, affine, n_labels: int, grid: _Grid) -> np.ndarray:
    """Boolean (X, Y, Z, n) on the source grid from a label image or a mask stack."""
    from ..core.volume import Volume

    if isinstance(masks, (list, tuple)) and masks and not isinstance(masks[0], (int, float)):
        try:
            masks = np.stack([np.asanyarray(m.data if isinstance(m, Volume) else m)
                              for m in masks], axis=-1)
        except ValueError as exc:
            raise ValidationError(f"masks: the masks differ in shape ({_one_line(exc)})") from exc
    arr, affine = _as_array_and_affine(masks, affine, "masks")
    if arr.dtype.kind not in "biuf":
        raise ValidationError(f"masks has dtype {arr.dtype}; pass integer or boolean masks")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValidationError("masks holds non-integer values; pass a label image or 0/1 masks")
    if arr.ndim in (3, 4):
        arr = _to_source_grid(arr, affine, grid, "masks")
    if arr.ndim == 3:
        lab = np.asarray(arr)
        if lab.min() < 0 or lab.max() > n_labels:
            raise ValidationError(
                f"masks is a label image with values {int(lab.min())}..{int(lab.max())} but "
                f"labels names {n_labels} segments; use 0 for background and 1..{n_labels}")
        if lab.dtype == np.bool_:
            lab = lab.astype(np.uint8)
        stack = np.stack([lab == k for k in range(1, n_labels + 1)], axis=-1)
    elif arr.ndim == 4:
        if arr.shape[3] != n_labels:
            raise ValidationError(
                f"masks holds {arr.shape[3]} masks on its last axis but labels names {n_labels}; "
                "give one label per mask")
        if arr.dtype != np.bool_ and not np.isin(np.unique(arr), (0, 1)).all():
            raise ValidationError("masks: a stack of masks must hold only 0/1 (or bool) values")
        stack = np.asarray(arr).astype(bool)
    else:
        raise ValidationError(
            f"masks has shape {arr.shape}; pass a label image (columns, rows, slices) = "
            f"{grid.shape} or a stack of masks with one mask per label on a 4th axis")
    return stack


def write_segmentation(path, masks, *, source_datasets, labels, affine=None,
                       algorithm_type: str = "manual", algorithm_name=None,
                       algorithm_family=None, series_number=None, series_description=None,
                       series_instance_uid=None, content_label: str = "ROI",
                       deidentifier=None) -> Path:
    """Write ROI masks as a BINARY DICOM Segmentation referencing the source series.

    Parameters
    ----------
    path : str or path-like
        The file to write (atomically; its folder is created if needed).
    masks : array_like, Volume, or sequence of arrays
        Either a label image ``(X, Y, Z)`` (0 background, 1..n the segments
        in the order of ``labels``) or one mask per label, stacked on a 4th
        axis ``(X, Y, Z, n)`` or given as a list (masks may overlap). On the
        source grid (columns, rows, slices), or reoriented by ``affine``
        like :func:`write_parametric_map`.
    source_datasets : sequence of pydicom.Dataset or paths, or a folder
        The classic single-frame images of the source series.
    labels : sequence
        One entry per segment: a str (the Segment Label; if it is a name of
        :data:`SEGMENT_TYPES`, e.g. ``'tumour'``, that is also its type,
        otherwise the type is ``'tissue'``), a :class:`SegmentLabel`, or a
        dict with its fields.
    affine : array_like (4, 4), optional
        Voxel -> RAS+ mm affine of ``masks``.
    algorithm_type : {'manual', 'semiautomatic', 'automatic'}
        Segment Algorithm Type; the latter two need ``algorithm_name`` and
        ``algorithm_family`` (a Code of CID 7162, e.g.
        ``codes.DCM.HistogramAnalysis``).
    algorithm_name : str, optional
    algorithm_family : pydicom.sr.coding.Code, optional
    series_number : int, optional
        Default: 2000 + the source SeriesNumber.
    series_description, series_instance_uid : str, optional
    content_label : str
        Content Label (CS, at most 16 upper-case characters).
    deidentifier : object, optional
        Has ``deidentify_dataset(ds) -> ds``; applied before writing.

    Returns
    -------
    Path

    Raises
    ------
    ValidationError
        A mask of the wrong shape, an empty segment, labels that do not
        match the masks, bad options. Nothing is written then.
    GeometryError
        ``affine`` describes another grid than the source series'.

    Notes
    -----
    Segmentation IOD, PS3.3 A.51; Segment Description, PS3.3 C.8.20.2
    (Segmented Property Category CID 7150, Type CID 7151/7166). Empty frames
    are omitted as the standard allows; every frame references its source
    images.
    """
    target = _check_target(path)
    _check_deidentifier(deidentifier)
    if isinstance(labels, (str, SegmentLabel, Mapping)) or not isinstance(labels, Sequence) \
            or not labels:
        raise ValidationError(
            "labels must be a non-empty list with one entry (str, dict or SegmentLabel) per "
            "segment")
    described = [_segment_label(item, i) for i, item in enumerate(labels)]
    names = [d[0] for d in described]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValidationError(f"labels: segment label(s) {dupes} appear twice; make them unique")
    kind = str(algorithm_type).strip().upper()
    if kind not in ("MANUAL", "SEMIAUTOMATIC", "AUTOMATIC"):
        raise ValidationError(
            f"algorithm_type {algorithm_type!r} is unknown; use 'manual', 'semiautomatic' "
            "or 'automatic'")
    hd = _hd()
    algorithm = None
    if kind != "MANUAL":
        from pydicom.sr.coding import Code

        if not isinstance(algorithm_name, str) or not algorithm_name.strip():
            raise ValidationError(
                f"algorithm_type {algorithm_type!r} needs algorithm_name (the program that "
                "made the masks)")
        if not isinstance(algorithm_family, (Code, hd.sr.CodedConcept)):
            raise ValidationError(
                f"algorithm_type {algorithm_type!r} needs algorithm_family, a Code of CID 7162 "
                "(e.g. pydicom.sr.codedict.codes.DCM.HistogramAnalysis)")
        algorithm = hd.AlgorithmIdentificationSequence(
            name=_check_text(algorithm_name, "algorithm_name", 64), family=algorithm_family,
            version=_version())
    content_label = _check_text(content_label, "content_label", 16)
    if not content_label or content_label.upper() != content_label or not all(
            c.isalnum() or c in " _" for c in content_label):
        raise ValidationError(
            f"content_label {content_label!r} must be upper-case letters, digits, '_' or ' '")
    sources = _load_sources(source_datasets)
    grid = _source_grid(sources)
    stack = _mask_stack(masks, affine, len(described), grid)
    counts = stack.reshape(-1, stack.shape[3]).sum(axis=0)
    empty = [names[k] for k in range(len(names)) if counts[k] == 0]
    if empty:
        raise ValidationError(
            f"masks: segment(s) {empty} hold no voxel; drop them from masks and labels")
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=k + 1, segment_label=label,
            segmented_property_category=category, segmented_property_type=typ,
            algorithm_type=kind, algorithm_identification=algorithm,
            tracking_uid=hd.UID(), tracking_id=label)
        for k, (label, category, typ) in enumerate(described)]
    series_description = _check_text(series_description or "ROI segmentation",
                                     "series_description", 64)
    number = _series_number(series_number, sources, 2000)
    series_uid = _check_uid(series_instance_uid, "series_instance_uid")
    seg = _build("segmentation", lambda: hd.seg.Segmentation(
        source_images=sources,
        pixel_array=_frames(stack),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid,
        series_number=number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=_MANUFACTURER,
        manufacturer_model_name=_MANUFACTURER,
        software_versions=_version(),
        device_serial_number=_DEVICE_SERIAL,
        content_label=content_label,
        content_description="ROI masks",
        plane_positions=_plane_positions(grid),
        series_description=series_description,
    ))
    return _save(seg, target, deidentifier)


# --------------------------------------------------------------------------- SR (TID 1500)


def _referenced_series_uids(ds) -> set:
    uids = {str(item.SeriesInstanceUID) for item in ds.get("ReferencedSeriesSequence", [])}
    for item in ds.get("StudiesContainingOtherReferencedInstancesSequence", []):
        uids |= {str(s.SeriesInstanceUID) for s in item.get("ReferencedSeriesSequence", [])}
    return uids


def _check_derived(ds, what: str, sop_class: str, sources) -> None:
    src = sources[0]
    if str(ds.get("SOPClassUID")) != sop_class:
        writer = "write_segmentation" if sop_class == _SEG_STORAGE else "write_parametric_map"
        raise ValidationError(
            f"{what} has SOP Class {ds.get('SOPClassUID')}, expected {sop_class}; pass the "
            f"object written by {writer}")
    if str(ds.get("StudyInstanceUID")) != str(src.StudyInstanceUID):
        raise ValidationError(
            f"{what} belongs to study {ds.get('StudyInstanceUID')}, the source series to "
            f"{src.StudyInstanceUID}; pass objects derived from source_datasets")
    if str(src.SeriesInstanceUID) not in _referenced_series_uids(ds):
        raise ValidationError(
            f"{what} does not reference the source series {src.SeriesInstanceUID}; pass "
            "objects derived from source_datasets")


def _map_quantity(pm):
    """(quantity CodedConcept, unit CodedConcept) of a Parametric Map's first RWVM."""
    hd = _hd()
    try:
        item = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    except (AttributeError, IndexError) as exc:
        raise ValidationError(
            "parametric_map has no shared Real World Value Mapping; pass a map written by "
            "write_parametric_map") from exc
    unit = hd.sr.CodedConcept.from_dataset(item.MeasurementUnitsCodeSequence[0])
    quantity = None
    for q in item.get("QuantityDefinitionSequence", []):
        if "ConceptCodeSequence" in q:
            quantity = hd.sr.CodedConcept.from_dataset(q.ConceptCodeSequence[0])
    if quantity is None:
        raise ValidationError(
            "parametric_map names no quantity (Quantity Definition Sequence); pass a map "
            "written by write_parametric_map")
    return quantity, unit


def _check_measurements(measurements, segments: dict) -> list:
    """[(segment number, label, {stat: float})] in segment order."""
    if not isinstance(measurements, Mapping) or not measurements:
        raise ValidationError(
            "measurements must be a non-empty dict {segment label: {statistic: value}}")
    by_number = {n: label for label, n in segments.items()}
    rows = []
    for key, stats in measurements.items():
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            if int(key) not in by_number:
                raise ValidationError(
                    f"measurements[{key!r}]: the segmentation has no segment number {key}; "
                    f"it has {sorted(by_number)}")
            number, label = int(key), by_number[int(key)]
        elif isinstance(key, str):
            if key not in segments:
                raise ValidationError(
                    f"measurements[{key!r}]: the segmentation has no segment labelled {key!r}; "
                    f"it has {sorted(segments)}")
            number, label = segments[key], key
        else:
            raise ValidationError(
                f"measurements keys must be segment labels or numbers, got {key!r}")
        if not isinstance(stats, Mapping) or not stats:
            raise ValidationError(
                f"measurements[{key!r}] must be a non-empty dict {{statistic: value}} with "
                f"statistics from {', '.join(STATISTICS)}")
        clean = {}
        for name, value in stats.items():
            if name not in STATISTICS:
                raise ValidationError(
                    f"measurements[{key!r}]: statistic {name!r} is unknown; use "
                    f"{', '.join(STATISTICS)}")
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or \
                    not math.isfinite(float(value)):
                raise ValidationError(
                    f"measurements[{key!r}][{name!r}] = {value!r} is not a finite number; "
                    "drop it or give a number")
            clean[name] = float(value)
        if "voxel_count" in clean and (clean["voxel_count"] < 0
                                       or clean["voxel_count"] != round(clean["voxel_count"])):
            raise ValidationError(
                f"measurements[{key!r}]['voxel_count'] must be a non-negative whole number")
        if "volume_mm3" in clean and clean["volume_mm3"] < 0:
            raise ValidationError(f"measurements[{key!r}]['volume_mm3'] must not be negative")
        rows.append((number, label, clean))
    numbers = [r[0] for r in rows]
    if len(set(numbers)) != len(numbers):
        raise ValidationError("measurements names one segment twice (by label and by number)")
    return sorted(rows, key=lambda r: r[0])


def write_measurement_report(path, measurements, *, source_datasets, segmentation,
                             parametric_map, observer_name=None, series_number=None,
                             series_description=None, series_instance_uid=None,
                             deidentifier=None) -> Path:
    """Write ROI measurements of a map as a DICOM SR (TID 1500 Measurement Report).

    Parameters
    ----------
    path : str or path-like
        The file to write (atomically; its folder is created if needed).
    measurements : dict
        ``{segment: {statistic: value}}``. ``segment`` is a Segment Label of
        ``segmentation`` (or its segment number). Statistics are keys of
        :data:`STATISTICS`: ``'mean'``, ``'median'``, ``'sd'``, ``'min'``,
        ``'max'`` of the map inside the segment, in the map's unit;
        ``'volume_mm3'`` (mm3) and ``'voxel_count'``. Values must be finite.
    source_datasets : sequence of pydicom.Dataset or paths, or a folder
        The images of the source series (recorded in the Image Library and
        as evidence).
    segmentation : pydicom.Dataset or path
        The SEG (from :func:`write_segmentation`) whose segments were measured.
    parametric_map : pydicom.Dataset or path, or None
        The Parametric Map (from :func:`write_parametric_map`) that was
        measured; its quantity and unit name the map statistics and it is
        referenced as their source of measurement. None is allowed only
        when no map statistic is given.
    observer_name : str, optional
        A person observer (DICOM person name, e.g. ``'Doe^Jane'``); the
        device observer is always oncomri.
    series_number : int, optional
        Default: 3000 + the source SeriesNumber.
    series_description, series_instance_uid : str, optional
    deidentifier : object, optional
        Has ``deidentify_dataset(ds) -> ds``. If ``segmentation`` and
        ``parametric_map`` are not de-identified, it is applied to the report
        before writing; it must keep the report's codes and numbers (for
        :class:`oncomri.io.deid.Deidentifier` pass
        ``clean_structured_content=True``), else ValidationError. If they
        are de-identified (Patient Identity Removed YES, e.g. written with
        the same ``deidentifier``), the source datasets are de-identified in
        memory with it instead, so that their keyed UIDs match, and the
        report is built from de-identified inputs.

    Returns
    -------
    Path

    Raises
    ------
    ValidationError
        Unknown segments or statistics, non-finite values, objects that do
        not derive from the source series, a de-identified segmentation
        without its deidentifier, a deidentifier that drops the report's
        measurements. Nothing is written then.
    ReadError
        A path cannot be read.

    Notes
    -----
    Comprehensive 3D SR (PS3.3 A.35.13) with TID 1500 (PS3.16): one TID 1411
    Volumetric ROI group per segment, tracked by the segment's label and
    Tracking UID, with the segment referenced (TID 1411 "Referenced
    Segment") and its property type as Finding. Each map statistic is a
    TID 1420 measurement whose concept is the map's quantity (e.g. R2*,
    DCM 126395) with the statistic as Derivation (CID 7464) and the
    Parametric Map as Source of Measurement (DCM 121112); volume is SCT
    118565006 [mm3] with method DCM 126030; voxel count is
    ``99ONCOMRI NVOXELS`` ["{voxels}"].
    """
    target = _check_target(path)
    _check_deidentifier(deidentifier)
    sources = _load_sources(source_datasets)
    _source_grid(sources)
    seg = _read_dataset(segmentation, "segmentation")
    pm = None if parametric_map is None else _read_dataset(parametric_map, "parametric_map")
    inputs_deidentified = _is_deidentified(seg)
    if pm is not None and _is_deidentified(pm) != inputs_deidentified:
        raise ValidationError(
            "one of segmentation and parametric_map is de-identified and the other is not; "
            "write both with the same deidentifier (or both without)")
    deidentify_output = deidentifier
    if inputs_deidentified and not all(_is_deidentified(d) for d in sources):
        if deidentifier is None:
            raise ValidationError(
                "segmentation is de-identified but source_datasets are not; pass the "
                "deidentifier it was written with (deidentifier=...)")
        # Same de-identifier, same (keyed) UID mapping: the de-identified sources match
        # the de-identified SEG and PM, and the report built from them is de-identified.
        sources = [_deidentified_copy(d, deidentifier) for d in sources]
        deidentify_output = None
        if observer_name is not None:
            raise ValidationError(
                "observer_name would name a person in a de-identified report; omit it")
    _check_derived(seg, "segmentation", _SEG_STORAGE, sources)
    segments = {}
    seg_items = {}
    for item in seg.get("SegmentSequence", []):
        segments[str(item.SegmentLabel)] = int(item.SegmentNumber)
        seg_items[int(item.SegmentNumber)] = item
    if not segments:
        raise ValidationError("segmentation has no segments (empty Segment Sequence)")
    rows = _check_measurements(measurements, segments)
    wants_map = any(k in _MAP_STATISTICS for _, _, stats in rows for k in stats)
    if pm is not None:
        _check_derived(pm, "parametric_map", _PM_STORAGE, sources)
    elif wants_map:
        raise ValidationError(
            "measurements hold map statistics (mean, median, sd, min, max) but "
            "parametric_map is None; pass the Parametric Map they were measured on")
    if pm is not None and str(pm.get("FrameOfReferenceUID")) != str(seg.get("FrameOfReferenceUID")):
        raise ValidationError(
            "parametric_map and segmentation have different frames of reference; pass objects "
            "derived from the same source series")
    if observer_name is not None:
        _check_text(observer_name, "observer_name", 64)
    series_description = _check_text(series_description or "ROI measurements",
                                     "series_description", 64)
    number = _series_number(series_number, sources, 3000)
    series_uid = _check_uid(series_instance_uid, "series_instance_uid")

    hd = _hd()
    from pydicom.sr.codedict import codes

    quantity = unit = None
    if pm is not None:
        quantity, unit = _map_quantity(pm)

    def build_report():
        from pydicom.uid import generate_uid

        device = hd.sr.ObserverContext(
            observer_type=codes.cid270.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=generate_uid(entropy_srcs=["oncomri device observer"]),
                name=_MANUFACTURER, manufacturer_name=_MANUFACTURER,
                model_name=_MANUFACTURER))
        person = None
        if observer_name is not None:
            person = hd.sr.ObserverContext(
                observer_type=codes.cid270.Person,
                observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                    name=observer_name))
        context = hd.sr.ObservationContext(observer_person_context=person,
                                           observer_device_context=device)
        source_ref = None
        if pm is not None:
            source_ref = [hd.sr.SourceImageForMeasurement(
                referenced_sop_class_uid=pm.SOPClassUID,
                referenced_sop_instance_uid=pm.SOPInstanceUID)]
        groups = []
        for seg_number, label, stats in rows:
            item = seg_items[seg_number]
            tracking_uid = str(item.get("TrackingUID", "") or "") or hd.UID()
            meas = []
            for name in _MAP_STATISTICS:
                if name in stats:
                    meas.append(hd.sr.Measurement(
                        name=quantity, value=stats[name], unit=unit,
                        derivation=_code(*STATISTICS[name]), referenced_images=source_ref))
            if "volume_mm3" in stats:
                meas.append(hd.sr.Measurement(
                    name=_code(*STATISTICS["volume_mm3"]), value=stats["volume_mm3"],
                    unit=codes.UCUM.CubicMillimeter,
                    method=codes.DCM.SumOfSegmentedVoxelMethodForVolume))
            if "voxel_count" in stats:
                meas.append(hd.sr.Measurement(
                    name=_code(*STATISTICS["voxel_count"]), value=stats["voxel_count"],
                    unit=_code("{voxels}", "UCUM", "voxels")))
            groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=label),
                referenced_segment=hd.sr.ReferencedSegment.from_segmentation(
                    seg, segment_number=seg_number),
                finding_type=hd.sr.CodedConcept.from_dataset(
                    item.SegmentedPropertyTypeCodeSequence[0]),
                finding_category=hd.sr.CodedConcept.from_dataset(
                    item.SegmentedPropertyCategoryCodeSequence[0]),
                measurements=meas))
        report = hd.sr.MeasurementReport(
            observation_context=context,
            procedure_reported=_code("113091000", "SCT", "Magnetic resonance imaging"),
            imaging_measurements=groups,
            referenced_images=sources)
        evidence = list(sources) + [seg] + ([pm] if pm is not None else [])
        return hd.sr.Comprehensive3DSR(
            evidence=evidence, content=report, series_instance_uid=series_uid,
            series_number=number, sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer=_MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
            series_description=series_description)

    sr = _build("measurement report", build_report)
    if any("voxel_count" in stats for _, _, stats in rows) or (
            quantity is not None and str(quantity.scheme_designator) == ONCOMRI_CODING_SCHEME):
        _declare_private_scheme(sr)
    return _save(sr, target, deidentify_output, verify=_same_numeric_content)


def _is_deidentified(ds) -> bool:
    """Patient Identity Removed (0012,0062) is YES (PS3.3 C.7.1.1)."""
    return str(ds.get("PatientIdentityRemoved", "")).strip().upper() == "YES"


def _deidentified_copy(ds, deidentifier):
    import copy

    import pydicom

    out = deidentifier.deidentify_dataset(copy.deepcopy(ds))  # the caller's stays as it is
    if not isinstance(out, pydicom.Dataset):
        raise ValidationError(
            f"deidentifier.deidentify_dataset returned {type(out).__name__}, not a pydicom "
            "Dataset; it must return the de-identified dataset")
    return out


def _numeric_content(ds) -> list:
    """Every NUM content item of an SR as (concept, scheme, value, unit), sorted."""
    found = []

    def walk(items):
        for item in items:
            if str(item.get("ValueType", "")) == "NUM" and "MeasuredValueSequence" in item:
                name = item.ConceptNameCodeSequence[0]
                mv = item.MeasuredValueSequence[0]
                unit = mv.MeasurementUnitsCodeSequence[0]
                found.append((str(name.CodeValue), str(name.CodingSchemeDesignator),
                              float(mv.NumericValue), str(unit.CodeValue),
                              str(unit.CodingSchemeDesignator)))
            walk(item.get("ContentSequence", []))

    walk(ds.get("ContentSequence", []))
    return sorted(found)


def _same_numeric_content(before, after) -> None:
    """ValidationError if de-identification changed or dropped the report's measurements."""
    if _numeric_content(before) != _numeric_content(after):
        raise ValidationError(
            "the deidentifier replaced the report's structured content (codes or numbers), "
            "so the measurements would be lost; use one that keeps oncomri's own SR content "
            "(oncomri.io.deid.Deidentifier(..., clean_structured_content=True))")
