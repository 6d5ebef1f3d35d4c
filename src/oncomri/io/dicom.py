"""DICOM MR reader: classic and enhanced multi-frame series into Volumes.

:func:`read_series` turns a DICOM file or a folder (searched recursively)
into one :class:`~oncomri.core.Volume` per image stack, following the reader
contract of :mod:`oncomri.io.registry`:

1. **Headers first.** Every file's header is read once, without pixel data:
   uncompressed little-endian Part 10 files (what scanners export) by a
   small element scanner that stops at Pixel Data (7FE0,0010) and notes
   where it starts; every other file (compressed, big endian, deflated,
   enhanced multi-frame, no preamble) with pydicom (``stop_before_pixels``).
   Objects that are not images (SR, PR, KO, RT, SEG, DICOMDIR, ...) are
   skipped with a note.
2. **Grouping.** Images are grouped by Series Instance UID (PS3.3 C.7.3.1);
   inside a series, images that differ in orientation, image type (or
   magnitude/phase/real/imaginary), matrix or pixel spacing are separate
   stacks, read as separate Volumes with a note (tri-plane localisers,
   magnitude + phase series, Dixon series). Orientations that differ by
   less than :data:`ORIENTATION_SPLIT_TOL` but more than
   :data:`ORIENTATION_TOL` cannot be either, and raise GeometryError.
3. **Geometry** (Image Plane Module, PS3.3 C.7.6.2.1.1). Slices are sorted
   along the slice normal ``n = row × column`` (Image Orientation
   (Patient)) by the projection of Image Position (Patient) on ``n``. The
   voxel ``(i, j, k)`` = (column, row, slice) maps to DICOM patient
   coordinates (LPS+) by ``IPP_0 + i Δc r + j Δr c + k s`` with ``Δr, Δc``
   the Pixel Spacing (row spacing, column spacing), ``r, c`` the row and
   column direction cosines and ``s`` the step between the first and last
   slice positions divided by the slice count minus one — the slice
   spacing comes from the positions, never from Slice Thickness. The
   affine is then flipped to RAS+ (``diag(-1, -1, 1, 1) @ A_lps``), as
   nibabel and dcm2niix do. Gaps (missing slices), uneven spacing, and
   positions off one line raise GeometryError.
4. **Measurement axis.** At each slice position, the images must differ in
   exactly one acquisition parameter, which becomes the last axis in
   increasing order with its protocol: echo time (EchoTime, ms -> s;
   :class:`~oncomri.core.MultiEchoProtocol`), b-value (DiffusionBValue
   (0018,9087), or the Siemens (0019,100C), GE (0043,1039) and Philips
   (2001,1003) private tags; :class:`~oncomri.core.DiffusionProtocol`,
   directions from (0018,9089) turned into RAS+), flip angle
   (:class:`~oncomri.core.VariableFlipAngleProtocol`), inversion time
   (:class:`~oncomri.core.InversionRecoveryProtocol`), else time
   (Temporal Position Identifier, Trigger Time, Acquisition Time;
   :class:`~oncomri.core.DynamicProtocol`). A stack with one image per
   position is 3D. Unequal image counts per measurement raise ProtocolError.
   Siemens MOSAIC images (slices tiled in one image) are refused with a
   hint to dcm2niix.
5. **Pixels and scaling.** Uncompressed little-endian pixel data are read
   at the offset the header read found; everything else is decoded by
   pydicom's pixel handlers (JPEG Lossless, JPEG-LS, JPEG 2000, RLE, big
   endian; via pylibjpeg, pyjpegls, Pillow or GDCM), and Rescale Slope and
   Intercept (per image or per frame) are applied, giving float32. Philips
   images carry a second, private scale slope (2005,100E); by default the
   Philips *floating-point* value ``(stored × RS + RI) / (RS × SS)`` is
   returned, as dcm2niix does by default (``-p y``), because it is the one
   that is comparable between images, echoes and series (display values
   may be scaled differently per image); ``philips_scaling='display'``
   returns ``stored × RS + RI`` instead.
6. **Enhanced multi-frame** objects (Enhanced MR Image Storage
   1.2.840.10008.5.1.4.1.1.4.1 and its Legacy Converted form) are read
   frame by frame through the Shared and Per-frame Functional Groups
   (PS3.3 C.7.6.16): Plane Position, Plane Orientation, Pixel Measures,
   Pixel Value Transformation, MR Echo (Effective Echo Time), MR Diffusion,
   MR Timing, MR Modifier (inversion times), Frame Content and MR Image
   Frame Type; frames then go through the same grouping as classic images.

``Volume.meta`` holds BIDS sidecar fields named as dcm2niix names them
(EchoTime in s — a list when echoes vary, RepetitionTime s, FlipAngle deg,
InversionTime s, MagneticFieldStrength T, Manufacturer, SeriesNumber, ...),
``DiffusionBValue`` (s/mm², per measurement), ``FrameTimesStart`` (s, dynamics),
``notes``, and the references a derived DICOM object (Parametric Map, SEG)
needs: ``SOPInstanceUIDs`` (per slice, or per slice and measurement),
``ReferencedFrameNumbers`` (multi-frame sources), ``SeriesInstanceUID``,
``StudyInstanceUID``, ``FrameOfReferenceUID``, ``SOPClassUID`` and
``PatientID``. ``Volume.sources`` lists the files in slice (then
measurement) order; :func:`read_source_datasets` reads them back.
"""

from __future__ import annotations

import datetime as _dt
import functools
import math
import os
import struct
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import (
    GeometryError,
    MissingDependencyError,
    ProtocolError,
    ReadError,
    ValidationError,
)
from ..core.protocols import (
    DiffusionProtocol,
    DynamicProtocol,
    InversionRecoveryProtocol,
    MultiEchoProtocol,
    VariableFlipAngleProtocol,
)
from ..core.volume import Volume

__all__ = [
    "read_series",
    "read_source_datasets",
    "PHILIPS_SCALINGS",
    "ORIENTATION_TOL",
    "ORIENTATION_SPLIT_TOL",
    "POSITION_TOL_MM",
    "SPACING_RTOL",
]

#: Values of ``philips_scaling``: ``'float'`` (dcm2niix's default) or ``'display'``.
PHILIPS_SCALINGS = ("float", "display")

#: Largest difference of direction cosines for two images to share an orientation.
ORIENTATION_TOL = 1e-3
#: Smallest difference of direction cosines (about 1.1 degrees) for two
#: orientations in one series to be read as separate stacks (localisers,
#: multi-stack acquisitions). Differences between the two tolerances raise
#: GeometryError: such images are neither one stack nor distinct planes.
ORIENTATION_SPLIT_TOL = 0.02
#: Images whose positions along the slice normal differ by less than this
#: (mm) are at the same slice position.
POSITION_TOL_MM = 0.01
#: Relative tolerance of the slice steps (with an absolute floor of 1e-3 mm).
SPACING_RTOL = 0.01

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
_ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
_LEGACY_ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.4"
_MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"
#: Image SOP classes read (other objects with pixel data and plane geometry
#: are read too, unless listed in _NEVER_READ).
_IMAGE_CLASSES = {
    _MR_STORAGE: "MR Image Storage",
    _ENHANCED_MR: "Enhanced MR Image Storage",
    _LEGACY_ENHANCED_MR: "Legacy Converted Enhanced MR Image Storage",
}
#: Objects with pixel data that are not scanner images.
_NEVER_READ = {
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation Storage",
    "1.2.840.10008.5.1.4.1.1.481.1": "RT Image Storage",
    "1.2.840.10008.5.1.4.1.1.481.2": "RT Dose Storage",
    "1.2.840.10008.5.1.4.1.1.4.2": "MR Spectroscopy Storage",
    "1.2.840.10008.5.1.4.1.1.4.3": "Enhanced MR Color Image Storage",
}

_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_IMPLICIT_LE = "1.2.840.10008.1.2"
_HEAD_BYTES = 1 << 15
#: Size of the buffer that pixel data pass through on their way to the output.
_BLOCK_BYTES = 32 << 20

_PHILIPS_SCALE = (0x2005, "Philips MR Imaging DD 001", 0x0E)
_PHILIPS_B = (0x2001, "Philips Imaging DD 001", 0x03)
_SIEMENS_B = (0x0019, "SIEMENS MR HEADER", 0x0C)
_GE_B = (0x0043, "GEMS_PARM_01", 0x39)
_GE_IMAGE_KIND = (0x0043, "GEMS_PARM_01", 0x2F)
_GE_IMAGE_KINDS = {0: "MAGNITUDE", 1: "PHASE", 2: "REAL", 3: "IMAGINARY"}
_PRIVATE_GROUPS = frozenset({0x0019, 0x0043, 0x2001, 0x2005})

# ---------------------------------------------------------------------------- header access

# Tags the scanner keeps, with the VR that decodes them (implicit VR files carry none).
_WANTED = {
    0x00080008: ("ImageType", "CS"),
    0x00080016: ("SOPClassUID", "UI"),
    0x00080018: ("SOPInstanceUID", "UI"),
    0x00080022: ("AcquisitionDate", "DA"),
    0x0008002A: ("AcquisitionDateTime", "DT"),
    0x00080032: ("AcquisitionTime", "TM"),
    0x00080033: ("ContentTime", "TM"),
    0x00080070: ("Manufacturer", "LO"),
    0x00089208: ("ComplexImageComponent", "CS"),
    0x00180050: ("SliceThickness", "DS"),
    0x00180080: ("RepetitionTime", "DS"),
    0x00180081: ("EchoTime", "DS"),
    0x00180082: ("InversionTime", "DS"),
    0x00180086: ("EchoNumbers", "IS"),
    0x00180088: ("SpacingBetweenSlices", "DS"),
    0x00181060: ("TriggerTime", "DS"),
    0x00181314: ("FlipAngle", "DS"),
    0x00189087: ("DiffusionBValue", "FD"),
    0x00189089: ("DiffusionGradientOrientation", "FD"),
    0x0020000E: ("SeriesInstanceUID", "UI"),
    0x00200011: ("SeriesNumber", "IS"),
    0x00200012: ("AcquisitionNumber", "IS"),
    0x00200013: ("InstanceNumber", "IS"),
    0x00200032: ("ImagePositionPatient", "DS"),
    0x00200037: ("ImageOrientationPatient", "DS"),
    0x00200100: ("TemporalPositionIdentifier", "IS"),
    0x00280002: ("SamplesPerPixel", "US"),
    0x00280008: ("NumberOfFrames", "IS"),
    0x00280010: ("Rows", "US"),
    0x00280011: ("Columns", "US"),
    0x00280030: ("PixelSpacing", "DS"),
    0x00280100: ("BitsAllocated", "US"),
    0x00280101: ("BitsStored", "US"),
    0x00280103: ("PixelRepresentation", "US"),
    0x00281052: ("RescaleIntercept", "DS"),
    0x00281053: ("RescaleSlope", "DS"),
    0x52009229: ("SharedFunctionalGroupsSequence", "SQ"),
    0x52009230: ("PerFrameFunctionalGroupsSequence", "SQ"),
}
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)


class _NeedMore(Exception):
    """The header scanner ran past the bytes read so far."""


class _Unsupported(Exception):
    """The header scanner met a layout it leaves to pydicom."""


def _pydicom():
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - pydicom is installed with the dicom extra
        raise MissingDependencyError(
            "reading DICOM needs pydicom; install it with pip install 'oncomri[dicom]'"
        ) from exc
    return pydicom


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


@functools.lru_cache(maxsize=8192)
def _decode(raw: bytes, vr: str):
    """A Python value from the raw bytes of an element (little endian); tuples if multi-valued.

    Cached: most values repeat from file to file of a series.
    """
    if vr in ("US", "SS", "FD", "FL", "UL", "SL"):
        fmt = {"US": "H", "SS": "h", "FD": "d", "FL": "f", "UL": "I", "SL": "i"}[vr]
        size = struct.calcsize(fmt)
        if len(raw) < size or len(raw) % size:
            return None
        values = struct.unpack("<" + fmt * (len(raw) // size), raw)
        return values[0] if len(values) == 1 else values
    text = raw.decode("latin-1").strip(" \x00")
    if vr in ("DS", "IS"):
        if not text:
            return None
        try:
            values = [float(v) for v in text.split("\\")]
        except ValueError:
            return None
        if vr == "IS":
            values = [int(round(v)) for v in values]
        return values[0] if len(values) == 1 else tuple(values)
    if vr == "CS" and "\\" in text:
        return tuple(v.strip() for v in text.split("\\"))
    return text


def _native(value):
    """pydicom values (DSfloat, IS, MultiValue, PersonName ...) as plain Python."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [_native(v) for v in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, bytes):
        return value
    return str(value)


class _RawHeader:
    """Header of an uncompressed little-endian Part 10 file, from the element scanner."""

    __slots__ = ("values", "privates", "pixel_offset", "pixel_length", "transfer_syntax",
                 "media_class")

    def __init__(self, values, privates, pixel_offset, pixel_length, transfer_syntax,
                 media_class):
        self.values = values
        self.privates = privates
        self.pixel_offset = pixel_offset
        self.pixel_length = pixel_length
        self.transfer_syntax = transfer_syntax
        self.media_class = media_class

    def get(self, keyword_tag):
        entry = self.values.get(keyword_tag)
        if entry is None:
            return None
        raw, vr = entry
        return _decode(raw, vr)

    def private(self, group: int, creator: str, offset: int):
        creators = self.privates.get(group, {})
        for block, name in creators.items():
            if name == creator:
                entry = self.privates.get((group, (block << 8) | offset))
                if entry is not None:
                    return entry
        return None


def _scan(path: Path):
    """The :class:`_RawHeader` of ``path``, or None when pydicom must read it.

    Raises ReadError if the file cannot be opened, or ends inside its header
    or pixel data.
    """
    want = _HEAD_BYTES
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise ReadError(f"{path}: cannot be read ({_one_line(exc)}); check permissions") from exc
    with fh:
        size = os.fstat(fh.fileno()).st_size
        while True:
            fh.seek(0)
            buf = fh.read(want)
            try:
                return _scan_buffer(buf, size)
            except _NeedMore:
                if len(buf) >= size:
                    raise ReadError(
                        f"{path}: the file ends inside its DICOM header ({size} bytes); it is "
                        "truncated — copy it again from the scanner or PACS"
                    ) from None
                want *= 4
            except (_Unsupported, UnicodeDecodeError):
                return None


def _scan_buffer(buf: bytes, size: int):
    unpack = struct.unpack_from
    if len(buf) < 132 or buf[128:132] != b"DICM":
        if len(buf) < 132 and len(buf) < size:
            raise _NeedMore
        raise _Unsupported
    pos = 132
    ts = media_class = None
    try:
        while True:
            group, elem = unpack("<HH", buf, pos)
            if group != 0x0002:
                break
            vr = buf[pos + 4:pos + 6]
            if vr in _LONG_VRS:
                length = unpack("<I", buf, pos + 8)[0]
                value = pos + 12
            else:
                length = unpack("<H", buf, pos + 6)[0]
                value = pos + 8
            if value + length > len(buf):
                raise _NeedMore
            if elem == 0x0010:
                ts = buf[value:value + length].decode("ascii").strip(" \x00")
            elif elem == 0x0002:
                media_class = buf[value:value + length].decode("ascii").strip(" \x00")
            pos = value + length
    except struct.error:
        raise _NeedMore from None
    if ts not in (_EXPLICIT_LE, _IMPLICIT_LE):
        raise _Unsupported
    explicit = ts == _EXPLICIT_LE
    values: dict = {}
    privates: dict = {}
    n = len(buf)
    try:
        while True:
            if pos + 8 > n:
                if n >= size:  # clean end of file without pixel data
                    return _RawHeader(_named(values), privates, None, None, ts, media_class)
                raise _NeedMore
            group, elem = unpack("<HH", buf, pos)
            tag = (group << 16) | elem
            if explicit:
                vr = buf[pos + 4:pos + 6]
                if vr in _LONG_VRS:
                    length = unpack("<I", buf, pos + 8)[0]
                    value = pos + 12
                elif vr.isalpha() and vr.isupper():
                    length = unpack("<H", buf, pos + 6)[0]
                    value = pos + 8
                else:
                    raise _Unsupported
            else:
                vr = None
                length = unpack("<I", buf, pos + 4)[0]
                value = pos + 8
            if tag in _PIXEL_TAGS:
                if tag != 0x7FE00010 or length == 0xFFFFFFFF:
                    raise _Unsupported  # float pixel data or encapsulated: pydicom
                if value + length > size:
                    raise ReadError(
                        f"the file ends inside its pixel data ({size - value} of {length} bytes); "
                        "it is truncated — copy it again from the scanner or PACS")
                return _RawHeader(_named(values), privates, value, length, ts, media_class)
            if length == 0xFFFFFFFF:
                if explicit and vr == b"UN":
                    raise _Unsupported
                pos = _skip_sequence(buf, value, explicit)
                if tag in (0x52009229, 0x52009230):
                    values[tag] = (b"", "SQ")
                continue
            end = value + length
            if end > n:
                raise _NeedMore
            if tag in _WANTED:
                values[tag] = (buf[value:end], _WANTED[tag][1])
            elif group in _PRIVATE_GROUPS and group & 1:
                if 0x0010 <= elem <= 0x00FF:
                    privates.setdefault(group, {})[elem] = (
                        buf[value:end].decode("latin-1").strip(" \x00"))
                else:
                    privates[(group, elem)] = (buf[value:end],
                                               vr.decode("ascii") if vr else None)
            pos = end
    except struct.error:
        raise _NeedMore from None


def _named(values: dict) -> dict:
    return {_WANTED[tag][0]: entry for tag, entry in values.items()}


def _skip_sequence(buf: bytes, pos: int, explicit: bool) -> int:
    """Position after an undefined-length sequence that starts at ``pos``."""
    unpack = struct.unpack_from
    while True:
        group, elem, length = unpack("<HHI", buf, pos)
        if group != 0xFFFE:
            raise _Unsupported
        pos += 8
        if elem == 0xE0DD:
            return pos
        if elem != 0xE000:
            raise _Unsupported
        if length != 0xFFFFFFFF:
            pos += length
            if pos > len(buf):
                raise _NeedMore
            continue
        while True:  # undefined-length item: elements until the item delimiter
            group, elem = unpack("<HH", buf, pos)
            if group == 0xFFFE and elem == 0xE00D:
                pos += 8
                break
            if explicit:
                vr = buf[pos + 4:pos + 6]
                if vr in _LONG_VRS:
                    length = unpack("<I", buf, pos + 8)[0]
                    value = pos + 12
                else:
                    length = unpack("<H", buf, pos + 6)[0]
                    value = pos + 8
                if length == 0xFFFFFFFF and vr == b"UN":
                    raise _Unsupported
            else:
                length = unpack("<I", buf, pos + 4)[0]
                value = pos + 8
            if length == 0xFFFFFFFF:
                pos = _skip_sequence(buf, value, explicit)
            else:
                pos = value + length
                if pos > len(buf):
                    raise _NeedMore


class _DsHeader:
    """Header access to a pydicom Dataset with the interface of :class:`_RawHeader`."""

    __slots__ = ("ds",)

    def __init__(self, ds):
        self.ds = ds

    def get(self, keyword):
        try:
            return _native(self.ds.get(keyword))
        except Exception:  # a malformed value: treat as absent
            return None

    def private(self, group: int, creator: str, offset: int):
        return _private_from_dataset(self.ds, group, creator, offset)


def _private_from_dataset(ds, group: int, creator: str, offset: int):
    try:
        block = ds.private_block(group, creator)
        elem = block[offset]
    except (KeyError, ValueError):
        return None
    value = elem.value
    if isinstance(value, bytes):
        return (value, None if elem.VR == "UN" else elem.VR)
    return (value, "value")


def _private_number(entry, kind: str):
    """A private element's first number; ``kind`` is the VR it is expected to have."""
    if entry is None:
        return None
    value, vr = entry
    if vr == "value":
        value = _native(value)
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        try:
            return None if value is None else float(value)
        except (TypeError, ValueError):
            return None
    if vr in (None, "UN", "OB"):
        vr = kind
    decoded = _decode(value, vr)
    if isinstance(decoded, (list, tuple)):
        decoded = decoded[0] if decoded else None
    if isinstance(decoded, str):
        try:
            decoded = float(decoded.split("\\")[0])
        except ValueError:
            return None
    return None if decoded is None else float(decoded)


# ---------------------------------------------------------------------------- frames


@dataclass(slots=True)
class _Frame:
    """One 2D image: a classic file or one frame of a multi-frame object."""

    path: str
    frame: int | None
    header: object
    sop_class: str
    sop_uid: str
    series_key: str
    position: np.ndarray
    orientation: np.ndarray
    rows: int
    cols: int
    pixel_spacing: tuple
    thickness: float | None
    spacing_between: float | None
    te_ms: float | None
    echo_number: int | None
    b_value: float | None
    b_vector: tuple | None
    flip_angle: float | None
    ti_ms: float | None
    tr_ms: float | None
    temporal_index: int | None
    trigger_ms: float | None
    acq_time: float | None
    instance: int
    image_type: tuple
    slope: float
    intercept: float
    philips_ss: float | None
    fast_pixels: tuple | None = None  # (offset, dtype) for direct reads
    proj: float = 0.0


def _float(v):
    if isinstance(v, (list, tuple)):
        v = v[0] if v else None
    try:
        out = None if v is None or v == "" else float(v)
    except (TypeError, ValueError):
        return None
    return out if out is not None and math.isfinite(out) else None


def _int(v):
    f = _float(v)
    return None if f is None else int(round(f))


def _floats(v, n: int):
    if v is None:
        return None
    if not isinstance(v, (list, tuple)):
        v = [v]
    try:
        out = np.array([float(x) for x in v], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return out if out.size == n and np.all(np.isfinite(out)) else None


def _seconds_of_day(tm) -> float | None:
    if not tm:
        return None
    s = str(tm).strip().replace(":", "")
    try:
        hh = int(s[0:2])
        mm = int(s[2:4]) if len(s) >= 4 else 0
        ss = float(s[4:]) if len(s) > 4 else 0.0
    except ValueError:
        return None
    return hh * 3600.0 + mm * 60.0 + ss


def _days(da) -> float:
    try:
        d = str(da).strip()
        return float(_dt.date(int(d[0:4]), int(d[4:6]), int(d[6:8])).toordinal())
    except (ValueError, IndexError):
        return 0.0


def _datetime_seconds(dt_value) -> float | None:
    if not dt_value:
        return None
    s = str(dt_value).strip()
    for sign in ("+", "-"):
        i = s.find(sign, 8)
        if i > 0:
            s = s[:i]
    if len(s) < 8:
        return None
    t = _seconds_of_day(s[8:]) if len(s) > 8 else 0.0
    return None if t is None else _days(s[:8]) * 86400.0 + t


def _acq_seconds(h) -> float | None:
    t = _datetime_seconds(h.get("AcquisitionDateTime"))
    if t is not None:
        return t
    t = _seconds_of_day(h.get("AcquisitionTime"))
    if t is None:
        t = _seconds_of_day(h.get("ContentTime"))
    if t is None:
        return None
    da = h.get("AcquisitionDate")
    return (_days(da) * 86400.0 if da else 0.0) + t


def _image_type(h) -> tuple:
    it = h.get("ImageType")
    if it is None:
        it = ()
    elif not isinstance(it, (list, tuple)):
        it = [it]
    return tuple(str(v).upper() for v in it)


def _vendor_b_value(h, manufacturer: str) -> float | None:
    b = _float(h.get("DiffusionBValue"))
    if b is not None:
        return b
    vendor = (manufacturer or "").upper()
    if "SIEMENS" in vendor:
        return _private_number(h.private(*_SIEMENS_B), "IS")
    if vendor.startswith("GE"):
        b = _private_number(h.private(*_GE_B), "IS")
        return None if b is None else float(b % 1_000_000_000)
    if "PHILIPS" in vendor:
        return _private_number(h.private(*_PHILIPS_B), "FL")
    return None


def _pixel_dtype(h) -> np.dtype | None:
    bits = _int(h.get("BitsAllocated"))
    stored = _int(h.get("BitsStored")) or bits
    signed = _int(h.get("PixelRepresentation")) == 1
    if bits not in (8, 16, 32) or stored is None:
        return None
    if signed and stored != bits:
        return None  # sign extension from BitsStored: leave it to pydicom
    return np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")


def _series_key(h, path: Path) -> str:
    uid = h.get("SeriesInstanceUID")
    if uid:
        return str(uid)
    return f"(no SeriesInstanceUID) series {h.get('SeriesNumber')} in {path.parent}"


def _classic_frame(h, path: Path, sop_class: str) -> _Frame:
    ipp = _floats(h.get("ImagePositionPatient"), 3)
    iop = _floats(h.get("ImageOrientationPatient"), 6)
    ps = _floats(h.get("PixelSpacing"), 2)
    manufacturer = str(h.get("Manufacturer") or "")
    g = _floats(h.get("DiffusionGradientOrientation"), 3)
    kind = h.get("ComplexImageComponent")
    image_type = _image_type(h)
    if manufacturer.upper().startswith("GE"):
        ge_kind = _private_number(h.private(*_GE_IMAGE_KIND), "SS")
        if ge_kind is not None and int(ge_kind) in _GE_IMAGE_KINDS:
            kind = _GE_IMAGE_KINDS[int(ge_kind)]
    if kind:
        image_type = image_type + (f"COMPLEX={kind}",)
    slope = _float(h.get("RescaleSlope"))
    ss = None
    if "PHILIPS" in manufacturer.upper():
        ss = _private_number(h.private(*_PHILIPS_SCALE), "FL")
    return _Frame(
        path=str(path), frame=None, header=h, sop_class=sop_class,
        sop_uid=str(h.get("SOPInstanceUID") or ""), series_key=_series_key(h, path),
        position=ipp, orientation=iop,
        rows=_int(h.get("Rows")) or 0, cols=_int(h.get("Columns")) or 0,
        pixel_spacing=None if ps is None else (float(ps[0]), float(ps[1])),
        thickness=_float(h.get("SliceThickness")),
        spacing_between=_float(h.get("SpacingBetweenSlices")),
        te_ms=_float(h.get("EchoTime")), echo_number=_int(h.get("EchoNumbers")),
        b_value=_vendor_b_value(h, manufacturer),
        b_vector=None if g is None else tuple(g),
        flip_angle=_float(h.get("FlipAngle")), ti_ms=_float(h.get("InversionTime")),
        tr_ms=_float(h.get("RepetitionTime")),
        temporal_index=_int(h.get("TemporalPositionIdentifier")),
        trigger_ms=_float(h.get("TriggerTime")), acq_time=_acq_seconds(h),
        instance=_int(h.get("InstanceNumber")) or 0, image_type=image_type,
        slope=1.0 if slope is None or slope == 0 else slope,
        intercept=_float(h.get("RescaleIntercept")) or 0.0, philips_ss=ss,
    )


def _first_item(fg, keyword):
    """The first item of sequence ``keyword`` (a keyword or a (group, element) tag) of ``fg``."""
    if fg is None:
        return None
    seq = fg.get(keyword)
    if isinstance(keyword, tuple) and seq is not None:
        seq = seq.value  # Dataset.get(tag) gives the element, not its value
    if not seq:
        return None
    try:
        return seq[0]
    except (IndexError, TypeError):
        return None


def _enhanced_frames(ds, path: Path, sop_class: str) -> list[_Frame]:
    """One :class:`_Frame` per frame of a multi-frame object (PS3.3 C.7.6.16)."""
    top = _DsHeader(ds)
    per = ds.get("PerFrameFunctionalGroupsSequence")
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    n_frames = _int(top.get("NumberOfFrames")) or 1
    if per is None or len(per) != n_frames:
        raise ReadError(
            f"{path}: NumberOfFrames is {n_frames} but the Per-frame Functional Groups "
            f"Sequence holds {0 if per is None else len(per)} items; the file is corrupt")
    manufacturer = str(top.get("Manufacturer") or "")
    is_philips = "PHILIPS" in manufacturer.upper()
    frames = []
    top_slope = _float(top.get("RescaleSlope"))
    top_intercept = _float(top.get("RescaleIntercept"))
    top_type = _image_type(top)
    series_key = _series_key(top, path)
    sop_uid = str(top.get("SOPInstanceUID") or "")
    for i, pf in enumerate(per):
        def group(keyword, pf=pf):
            return _first_item(pf, keyword) or _first_item(shared, keyword)

        def val(item, keyword):
            return None if item is None else _native(item.get(keyword))

        # Legacy Converted Enhanced objects keep classic attributes here (PS3.3 C.7.6.16.2.25)
        unassigned = (_first_item(pf, "UnassignedPerFrameConvertedAttributesSequence"),
                      _first_item(shared, "UnassignedSharedConvertedAttributesSequence"))

        def classic(keyword, unassigned=unassigned):
            for item in unassigned:
                v = val(item, keyword)
                if v is not None:
                    return v
            return top.get(keyword)

        pos = group("PlanePositionSequence")
        ori = group("PlaneOrientationSequence")
        meas = group("PixelMeasuresSequence")
        pvt = group("PixelValueTransformationSequence")
        echo = group("MREchoSequence")
        diff = group("MRDiffusionSequence")
        timing = group("MRTimingAndRelatedParametersSequence")
        modifier = group("MRModifierSequence")
        content = group("FrameContentSequence")
        ftype = group("MRImageFrameTypeSequence") or group("CTImageFrameTypeSequence") \
            or group("FrameTypeSequence")
        cardiac = group("CardiacSynchronizationSequence")
        ipp = _floats(val(pos, "ImagePositionPatient"), 3)
        iop = _floats(val(ori, "ImageOrientationPatient"), 6)
        if ipp is None:
            ipp = _floats(top.get("ImagePositionPatient"), 3)
        if iop is None:
            iop = _floats(top.get("ImageOrientationPatient"), 6)
        ps = _floats(val(meas, "PixelSpacing"), 2)
        if ps is None:
            ps = _floats(top.get("PixelSpacing"), 2)
        slope = _float(val(pvt, "RescaleSlope"))
        intercept = _float(val(pvt, "RescaleIntercept"))
        if slope is None:
            slope = top_slope
        if intercept is None:
            intercept = top_intercept
        b = g = None
        if diff is not None:
            b = _float(val(diff, "DiffusionBValue"))
            gseq = _first_item(diff, "DiffusionGradientDirectionSequence")
            g = _floats(val(gseq, "DiffusionGradientOrientation"), 3)
        inversions = val(modifier, "InversionTimes")
        image_type = top_type
        if ftype is not None and ftype.get("FrameType") is not None:
            image_type = tuple(str(v).upper() for v in (_native(ftype.get("FrameType")) or []))
            kind = val(ftype, "ComplexImageComponent")
            if kind:
                image_type = image_type + (f"COMPLEX={kind}",)
        ss = None
        if is_philips:
            for candidate in (pvt, pf, _first_item(pf, (0x2005, 0x140F)), ds):
                if candidate is not None:
                    ss = _private_number(
                        _private_from_dataset(candidate, *_PHILIPS_SCALE), "FL")
                    if ss is not None:
                        break
        t = _datetime_seconds(val(content, "FrameAcquisitionDateTime")) \
            if content is not None else None
        if t is None and content is not None:
            t = _datetime_seconds(val(content, "FrameReferenceDateTime"))
        trigger = _float(val(cardiac, "NominalCardiacTriggerDelayTime"))
        frames.append(_Frame(
            path=str(path), frame=i, header=top, sop_class=sop_class, sop_uid=sop_uid,
            series_key=series_key, position=ipp, orientation=iop,
            rows=_int(top.get("Rows")) or 0, cols=_int(top.get("Columns")) or 0,
            pixel_spacing=None if ps is None else (float(ps[0]), float(ps[1])),
            thickness=_float(val(meas, "SliceThickness")),
            spacing_between=_float(val(meas, "SpacingBetweenSlices")),
            te_ms=_float(val(echo, "EffectiveEchoTime")) if echo is not None
            else _float(classic("EchoTime")),
            echo_number=None, b_value=b, b_vector=None if g is None else tuple(g),
            flip_angle=_float(val(timing, "FlipAngle")) if timing is not None
            else _float(classic("FlipAngle")),
            ti_ms=_float(inversions) if inversions is not None
            else _float(classic("InversionTime")),
            tr_ms=_float(val(timing, "RepetitionTime")) if timing is not None
            else _float(classic("RepetitionTime")),
            temporal_index=_int(val(content, "TemporalPositionIndex")),
            trigger_ms=trigger if trigger is not None else _float(classic("TriggerTime")),
            acq_time=t, instance=i + 1, image_type=image_type,
            slope=1.0 if slope is None or slope == 0 else slope,
            intercept=intercept or 0.0, philips_ss=ss,
        ))
    return frames


# ---------------------------------------------------------------------------- files


def _list_files(path: Path) -> list[Path]:
    if not path.exists():
        raise ReadError(f"{path}: no such file or folder; check the path")
    if path.is_file():
        return [path]
    files = []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files.extend(Path(root) / n for n in sorted(names) if not n.startswith("."))
    if not files:
        raise ReadError(f"{path}: the folder is empty; point to a folder of DICOM files")
    return files


def _has_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _class_name(uid: str) -> str:
    if uid == _MEDIA_DIRECTORY:
        return "Media Storage Directory Storage (DICOMDIR)"
    if uid in _IMAGE_CLASSES:
        return _IMAGE_CLASSES[uid]
    if uid in _NEVER_READ:
        return _NEVER_READ[uid]
    try:
        name = _pydicom().uid.UID(uid).name
    except Exception:
        name = uid
    return name or uid or "unknown SOP class"


@dataclass
class _Scan:
    frames: list = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    not_dicom: list = field(default_factory=list)
    n_dicom: int = 0


_PIXEL_TAG_BYTES = (b"\xe0\x7f\x10\x00", b"\xe0\x7f\x08\x00", b"\xe0\x7f\x09\x00",
                    b"\x7f\xe0\x00\x10", b"\x7f\xe0\x00\x08", b"\x7f\xe0\x00\x09")


@dataclass
class _Header:
    """A header read by pydicom, whether pixel data follow, and where (native files)."""

    ds: object
    has_pixels: bool
    pixel_offset: int | None = None  # file offset of uncompressed little-endian Pixel Data
    pixel_length: int = 0


def _read_with_pydicom(path: Path, force: bool) -> _Header | None:
    """The header of ``path`` without pixel data (``stop_before_pixels``), or None."""
    pydicom = _pydicom()
    try:
        with open(path, "rb") as fh:
            ds = pydicom.dcmread(fh, stop_before_pixels=True, force=force)
            stop = fh.tell()
            size = os.fstat(fh.fileno()).st_size
            fh.seek(max(0, stop - 4))
            window = fh.read(16)
    except Exception as exc:
        if not force:
            raise ReadError(
                f"{path}: not a readable DICOM file ({_one_line(exc)}); it is truncated or "
                "corrupt — copy it again or remove it from the folder") from exc
        return None
    header = _Header(ds, any(tag in window for tag in _PIXEL_TAG_BYTES))
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    head = window[4:16] if stop >= 4 else window[:12]
    if header.has_pixels and ts in (_EXPLICIT_LE, _IMPLICIT_LE) and len(head) == 12 \
            and head[:4] == b"\xe0\x7f\x10\x00":
        if ts == _EXPLICIT_LE:
            length, value = struct.unpack_from("<I", head, 8)[0], stop + 12
        else:
            length, value = struct.unpack_from("<I", head, 4)[0], stop + 8
        if length != 0xFFFFFFFF:
            if value + length > size:
                raise ReadError(
                    f"{path}: the file ends inside its pixel data ({size - value} of {length} "
                    "bytes); it is truncated — copy it again from the scanner or PACS")
            header.pixel_offset, header.pixel_length = value, length
    return header


def _dataset_class(ds) -> str:
    uid = ds.get("SOPClassUID")
    if not uid:
        meta = getattr(ds, "file_meta", None)
        uid = meta.get("MediaStorageSOPClassUID") if meta is not None else None
    return str(uid or "")


def _collect(files: list[Path], *, fast: bool) -> _Scan:
    scan = _Scan()
    for path in files:
        if fast:
            try:
                raw = _scan(path)
            except ReadError as exc:
                msg = str(exc)
                raise ReadError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
            if raw is not None:
                scan.n_dicom += 1
                _add_raw(scan, raw, path)
                continue
        magic = _has_magic(path)
        suffix = path.suffix.lower()
        if not magic and path.name.upper() == "DICOMDIR":
            scan.n_dicom += 1
            scan.skipped["Media Storage Directory Storage (DICOMDIR)"] += 1
            continue
        if not magic and suffix not in (".dcm", ".ima", ".dicom", ""):
            scan.not_dicom.append(path)
            continue
        header = _read_with_pydicom(path, force=not magic)
        ds = None if header is None else header.ds
        if ds is None or (not magic and "SOPClassUID" not in ds and "Rows" not in ds):
            if suffix in (".dcm", ".ima", ".dicom"):
                raise ReadError(
                    f"{path}: not a readable DICOM file (no DICOM header found); it is "
                    "truncated or corrupt — copy it again or remove it from the folder")
            scan.not_dicom.append(path)
            continue
        scan.n_dicom += 1
        if not fast:
            header.pixel_offset = None  # pixels by pydicom too
        _add_dataset(scan, header, path)
    return scan


def _skip_reason(sop_class: str, has_pixels: bool, has_geometry: bool, samples) -> str | None:
    """Why an object is not read (a label for the notes), or None to read it."""
    name = _class_name(sop_class)
    if sop_class in _NEVER_READ:
        return name
    if not has_pixels:
        return f"{name} without pixel data" if "Image Storage" in name else name
    if samples not in (None, 1):
        return f"{name} in colour"
    if sop_class in _IMAGE_CLASSES or has_geometry:
        return None
    return f"{name} without image plane geometry"


def _no_pixels_error(path: Path, sop_class: str) -> ReadError:
    return ReadError(
        f"{path}: an {_class_name(sop_class)} object without pixel data; the file is "
        "truncated or corrupt — copy it again from the scanner or PACS")


def _add_raw(scan: _Scan, h: _RawHeader, path: Path) -> None:
    sop_class = str(h.get("SOPClassUID") or h.media_class or "")
    if not sop_class and not h.values:
        raise ReadError(
            f"{path}: DICOM header without content; the file is truncated or corrupt — "
            "copy it again or remove it")
    if sop_class in (_ENHANCED_MR, _LEGACY_ENHANCED_MR) or "PerFrameFunctionalGroupsSequence" \
            in h.values or (_int(h.get("NumberOfFrames")) or 1) > 1:
        _add_dataset(scan, _read_with_pydicom(path, force=False), path)
        return
    has_pixels = h.pixel_offset is not None
    has_geometry = "ImagePositionPatient" in h.values and "ImageOrientationPatient" in h.values
    if sop_class in _IMAGE_CLASSES and not has_pixels:
        raise _no_pixels_error(path, sop_class)
    reason = _skip_reason(sop_class, has_pixels, has_geometry, _int(h.get("SamplesPerPixel")))
    if reason:
        scan.skipped[reason] += 1
        return
    frame = _classic_frame(h, path, sop_class)
    dtype = _pixel_dtype(h)
    need = frame.rows * frame.cols * (dtype.itemsize if dtype is not None else 0)
    if dtype is not None and h.pixel_length >= need:
        frame.fast_pixels = (h.pixel_offset, dtype)
    scan.frames.append(frame)


def _add_dataset(scan: _Scan, header: _Header, path: Path) -> None:
    ds, has_pixels = header.ds, header.has_pixels
    sop_class = _dataset_class(ds)
    if not sop_class and len(ds) == 0:
        raise ReadError(
            f"{path}: DICOM file without content; it is truncated or corrupt — copy it "
            "again or remove it")
    per_frame = "PerFrameFunctionalGroupsSequence" in ds
    has_geometry = per_frame or ("ImagePositionPatient" in ds
                                 and "ImageOrientationPatient" in ds)
    if sop_class in _IMAGE_CLASSES and not has_pixels:
        raise _no_pixels_error(path, sop_class)
    reason = _skip_reason(sop_class, has_pixels, has_geometry, _int(ds.get("SamplesPerPixel")))
    if reason:
        scan.skipped[reason] += 1
        return
    n_frames = _int(ds.get("NumberOfFrames")) or 1
    if not per_frame and n_frames > 1:
        scan.skipped[f"{_class_name(sop_class)} with {n_frames} frames but no functional "
                     "groups"] += 1
        return
    frames = (_enhanced_frames(ds, path, sop_class) if per_frame
              else [_classic_frame(_DsHeader(ds), path, sop_class)])
    dtype = _pixel_dtype(_DsHeader(ds))
    if header.pixel_offset is not None and dtype is not None and frames:
        frame_bytes = frames[0].rows * frames[0].cols * dtype.itemsize
        if header.pixel_length >= frame_bytes * n_frames:
            for f in frames:
                f.fast_pixels = (header.pixel_offset + (f.frame or 0) * frame_bytes, dtype)
    scan.frames.extend(frames)


# ---------------------------------------------------------------------------- stacks


def _split_stacks(frames: list[_Frame], label: str) -> list[list[_Frame]]:
    """Images of one series grouped by orientation, image type, matrix and pixel spacing."""
    for f in frames:
        missing = [name for name, v in (("ImagePositionPatient", f.position),
                                        ("ImageOrientationPatient", f.orientation),
                                        ("PixelSpacing", f.pixel_spacing)) if v is None]
        if missing:
            raise GeometryError(
                f"{f.path}{'' if f.frame is None else f' frame {f.frame + 1}'}: "
                f"{', '.join(missing)} missing or malformed; oncomri needs the Image Plane "
                "Module (PS3.3 C.7.6.2) to place the image — re-export it from the scanner")
    orientations: list[np.ndarray] = []
    ori_index = []
    for f in frames:
        for i, o in enumerate(orientations):
            if np.max(np.abs(o - f.orientation)) <= ORIENTATION_TOL:
                ori_index.append(i)
                break
        else:
            orientations.append(f.orientation)
            ori_index.append(len(orientations) - 1)
    for a in range(len(orientations)):
        for b in range(a + 1, len(orientations)):
            d = float(np.max(np.abs(orientations[a] - orientations[b])))
            if d < ORIENTATION_SPLIT_TOL:
                raise GeometryError(
                    f"{label}: mixed orientations — ImageOrientationPatient differs by up to "
                    f"{d:.3g} between images (e.g. {_fmt(orientations[a])} and "
                    f"{_fmt(orientations[b])}); the images form neither one stack nor separate "
                    "planes — remove the stray images or re-export the series")
    groups: dict = defaultdict(list)
    for f, oi in zip(frames, ori_index):
        key = (oi, f.image_type, f.rows, f.cols,
               round(f.pixel_spacing[0], 4), round(f.pixel_spacing[1], 4))
        groups[key].append(f)
    return list(groups.values())


def _fmt(values) -> str:
    return "\\".join(f"{v:.4g}" for v in values)


@dataclass
class _Axis:
    kind: str  # 'none', 'echo', 'b', 'flip', 'inversion', 'time'
    table: list  # table[slice][measurement] -> _Frame
    protocol: object = None
    values: list | None = None
    notes: list = field(default_factory=list)


_KINDS = (
    ("echo", "echo time", lambda f: None if f.te_ms is None and f.echo_number is None
     else (round(f.te_ms, 4) if f.te_ms is not None else f.echo_number)),
    ("b", "b-value", lambda f: None if f.b_value is None else round(f.b_value, 3)),
    ("flip", "flip angle", lambda f: None if f.flip_angle is None else round(f.flip_angle, 4)),
    ("inversion", "inversion time", lambda f: None if f.ti_ms is None else round(f.ti_ms, 4)),
)


def _acquisition_order(f: _Frame):
    return (f.temporal_index if f.temporal_index is not None else -1,
            f.trigger_ms if f.trigger_ms is not None else -1.0,
            f.acq_time if f.acq_time is not None else -1.0,
            f.instance, f.frame if f.frame is not None else -1, f.path)


def _describe_value(kind: str, value) -> str:
    if kind == "echo":
        return f"echo time {value:g} ms" if isinstance(value, float) else f"echo {value}"
    if kind == "b":
        return f"b-value {value:g} s/mm²"
    if kind == "flip":
        return f"flip angle {value:g} deg"
    if kind == "inversion":
        return f"inversion time {value:g} ms"
    return f"time point {value}"


def _positions(stack: list[_Frame], label: str):
    """Frames grouped by slice position (sorted along the normal) and the slice positions."""
    iop = stack[0].orientation
    normal = np.cross(iop[:3], iop[3:])
    for f in stack:
        f.proj = float(f.position @ normal)
    stack.sort(key=lambda f: f.proj)
    groups: list[list[_Frame]] = [[stack[0]]]
    for f in stack[1:]:
        if f.proj - groups[-1][0].proj <= POSITION_TOL_MM:
            groups[-1].append(f)
        else:
            groups.append([f])
    for g in groups:
        p0 = g[0].position
        tol = max(10 * POSITION_TOL_MM, 0.1 * min(g[0].pixel_spacing))
        for f in g[1:]:
            if np.max(np.abs(f.position - p0)) > tol:
                raise GeometryError(
                    f"{label}: images at slice position {g[0].proj:.4g} mm have different "
                    f"ImagePositionPatient ({_fmt(p0)} and {_fmt(f.position)}); they belong to "
                    "stacks with different fields of view — export them as separate series")
    return groups, normal


def _check_counts(groups: list[list[_Frame]], label: str) -> None:
    counts = [len(g) for g in groups]
    if len(set(counts)) == 1:
        return
    frames = [f for g in groups for f in g]
    for kind, name, key in _KINDS:
        values = {key(f) for f in frames}
        if len(values) > 1 and None not in values:
            per = Counter(key(f) for f in frames)
            common = per.most_common(1)[0][1]
            short = sorted((v for v, c in per.items() if c != common), key=str)
            v = short[0]
            where = [g[0].proj for g in groups if all(key(f) != v for f in g)]
            at = f" (none at slice position {where[0]:.4g} mm)" if where else ""
            raise ProtocolError(
                f"{label}: unequal frame counts per measurement — {_describe_value(kind, v)} has "
                f"{per[v]} images, the others {common}{at}; an image is missing or extra — "
                "copy the complete series")
    full = max(counts)
    i = next(k for k, c in enumerate(counts) if c != full)
    raise ProtocolError(
        f"{label}: unequal frame counts per measurement — slice position {groups[i][0].proj:.4g} "
        f"mm has {counts[i]} images, other positions {full}; an image is missing or extra — "
        "copy the complete series")


def _check_spacing(projections: np.ndarray, label: str) -> None:
    if projections.size < 3:
        return
    steps = np.diff(projections)
    smin = float(steps.min())
    tol = max(1e-3, SPACING_RTOL * smin)
    if float(steps.max() - smin) <= tol:
        return
    multiples = np.rint(steps / smin)
    if np.all(np.abs(steps - multiples * smin) <= tol * multiples) and multiples.max() >= 2:
        k = int(np.argmax(multiples >= 2))
        missing = int((multiples - 1).sum())
        raise GeometryError(
            f"{label}: {missing} slice(s) missing — a gap of {steps[k]:.4g} mm between slice "
            f"positions {projections[k]:.4g} and {projections[k + 1]:.4g} mm where the spacing "
            f"is {smin:.4g} mm; copy the complete series (all files)")
    raise GeometryError(
        f"{label}: inconsistent slice spacing — steps between slice positions range from "
        f"{smin:.4g} to {float(steps.max()):.4g} mm; the images do not form one regular stack "
        "(check for images of another acquisition in the series)")


def _measurement_axis(groups: list[list[_Frame]], label: str, b0: float | None) -> _Axis:
    n_meas = len(groups[0])
    if n_meas == 1:
        return _Axis("none", [[g[0]] for g in groups])
    varying = []
    for kind, name, key in _KINDS:
        if any(len({key(f) for f in g}) > 1 for g in groups):
            varying.append((kind, name, key))
    if len(varying) > 1:
        names = " and ".join(name for _, name, _ in varying)
        raise ProtocolError(
            f"{label}: the images at each slice differ in {names}; oncomri reads one "
            "measurement axis per series — export each value of one of them as its own series")
    kind, name, key = varying[0] if varying else ("time", "time", None)
    table = []
    labels0 = None
    for g in groups:
        ordered = sorted(g, key=_acquisition_order)
        if key is not None:
            ordered.sort(key=lambda f: (key(f) is None, key(f) if key(f) is not None else 0))
            rank: Counter = Counter()
            labels = []
            for f in ordered:
                labels.append((key(f), rank[key(f)]))
                rank[key(f)] += 1
        else:
            labels = list(range(len(ordered)))
        if labels0 is None:
            labels0 = labels
        elif labels != labels0:
            raise ProtocolError(
                f"{label}: the {name}s differ between slices (slice at {g[0].proj:.4g} mm has "
                f"{_values_text(labels)}, the first {_values_text(labels0)}); the series is "
                "incomplete or mixes acquisitions")
        table.append(ordered)
    axis = _Axis(kind, table)
    first = table[0]
    if kind in ("echo", "flip", "inversion"):
        repeats = max(r for _, r in labels0) + 1
        if repeats > 1:
            raise ProtocolError(
                f"{label}: each {name} occurs {repeats} times at every slice (e.g. magnitude "
                "and phase with the same ImageType, or repeated acquisitions); oncomri cannot "
                "order them — export them as separate series")
    src = f"{label}: "
    if kind == "echo":
        if all(f.te_ms is not None for f in first):
            te = np.array([f.te_ms for f in first]) * 1e-3
            axis.values = te.tolist()
            axis.protocol = MultiEchoProtocol(te, magnetic_field_strength=b0,
                                              source=src + "EchoTime")
        else:
            axis.notes.append("echo numbers vary but EchoTime is missing; no echo times known")
    elif kind == "b":
        b = np.array([f.b_value if f.b_value is not None else 0.0 for f in first])
        vectors = None
        if all(f.b_vector is not None or (f.b_value or 0) == 0 for f in first):
            vectors = np.array([np.asarray(f.b_vector) * np.array([-1.0, -1.0, 1.0])
                                if f.b_vector is not None and (f.b_value or 0) > 0
                                else np.zeros(3) for f in first])
            norms = np.linalg.norm(vectors, axis=1)
            ok = (norms == 0) | (np.abs(norms - 1) < 1e-2)
            if not np.all(ok):
                vectors = None
                axis.notes.append("diffusion gradient directions are not unit vectors; not used")
        else:
            axis.notes.append("diffusion gradient directions not found in the headers; "
                              "b_vectors left empty")
        axis.values = b.tolist()
        axis.protocol = DiffusionProtocol(b, vectors, source=src + "DiffusionBValue")
    elif kind == "flip":
        fa = np.array([f.flip_angle for f in first])
        axis.values = fa.tolist()
        tr = first[0].tr_ms
        if tr is None:
            raise ProtocolError(f"{src}RepetitionTime missing; a variable flip angle series "
                                "needs TR — re-export with the MR Image Module")
        axis.protocol = VariableFlipAngleProtocol(np.deg2rad(fa), repetition_time=tr * 1e-3,
                                                  source=src + "FlipAngle")
    elif kind == "inversion":
        ti = np.array([f.ti_ms for f in first]) * 1e-3
        axis.values = ti.tolist()
        tr = first[0].tr_ms
        axis.protocol = InversionRecoveryProtocol(
            ti, repetition_time=None if tr is None else tr * 1e-3, source=src + "InversionTime")
    else:
        times = _frame_times(table)
        if times is None:
            axis.notes.append(
                f"{n_meas} images per slice with the same acquisition parameters and no "
                "increasing acquisition times; read as repetitions in acquisition order "
                "(no protocol)")
        else:
            axis.values = times.tolist()
            axis.protocol = DynamicProtocol(times, source=src + "acquisition times")
    return axis


def _values_text(labels) -> str:
    vals = [lab[0] if isinstance(lab, tuple) else lab for lab in labels]
    return "[" + ", ".join(str(v) for v in vals[:6]) + (", ..." if len(vals) > 6 else "") + "]"


def _frame_times(table) -> np.ndarray | None:
    """Start time (s, from the first) of each measurement, or None if not increasing."""
    n = len(table[0])
    first = table[0]
    if all(f.trigger_ms is not None for f in first) and len({f.trigger_ms for f in first}) == n:
        t = np.array([f.trigger_ms for f in first]) * 1e-3
    elif all(f.acq_time is not None for row in table for f in row):
        t = np.array([min(row[m].acq_time for row in table) for m in range(n)])
    else:
        return None
    t = t - t[0]
    if np.all(np.diff(t) > 0):
        return t
    return None


# ---------------------------------------------------------------------------- pixels


def _decode_file(path: str, cache: dict):
    """All frames of ``path`` as (frames, rows, cols), decoded by pydicom."""
    if path in cache:
        return cache[path]
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as exc:
        raise ReadError(f"{path}: not readable DICOM ({_one_line(exc)}); the file is "
                        "truncated or corrupt — copy it again") from exc
    try:
        arr = ds.pixel_array
    except Exception as exc:
        text = _one_line(exc)
        ts = getattr(getattr(ds, "file_meta", None), "get", lambda *_: None)("TransferSyntaxUID")
        if "missing" in text.lower() and ("plugin" in text.lower() or "depend" in text.lower()):
            raise MissingDependencyError(
                f"{path}: pixel data in {_class_name(str(ts)) if ts else 'this transfer syntax'} "
                "cannot be decoded here; install the decoders with pip install pylibjpeg "
                "pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle") from exc
        raise ReadError(f"{path}: cannot decode the pixel data ({text}); the file is "
                        "truncated or corrupt — copy it again") from exc
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[None]
    cache.clear()  # keep at most one multi-frame object in memory
    cache[path] = arr
    return arr


def _read_frame(f: _Frame, cache: dict) -> np.ndarray:
    if f.fast_pixels is not None:
        offset, dtype = f.fast_pixels
        count = f.rows * f.cols
        try:
            arr = np.fromfile(f.path, dtype=dtype, count=count, offset=offset)
        except (OSError, ValueError) as exc:
            raise ReadError(f"{f.path}: cannot read the pixel data ({_one_line(exc)})") from exc
        if arr.size != count:
            raise ReadError(
                f"{f.path}: the file ends inside its pixel data; it is truncated — copy it "
                "again from the scanner or PACS")
        return arr.reshape(f.rows, f.cols)
    arr = _decode_file(f.path, cache)
    index = f.frame or 0
    if index >= arr.shape[0] or arr.shape[1:] != (f.rows, f.cols):
        raise ReadError(
            f"{f.path}: decoded pixel data of shape {arr.shape} does not match Rows {f.rows}, "
            f"Columns {f.cols} and NumberOfFrames; the file is corrupt")
    return arr[index]


def _scaling(frames: list[_Frame], philips_scaling: str):
    """Per-frame (slope, intercept) in float64, and notes on what was applied."""
    slope = np.array([f.slope for f in frames], dtype=np.float64)
    intercept = np.array([f.intercept for f in frames], dtype=np.float64)
    notes = []
    ss = [f.philips_ss for f in frames]
    if philips_scaling == "float" and any(s is not None and s != 0 for s in ss):
        if not all(s is not None and s != 0 for s in ss):
            raise ProtocolError(
                f"{frames[0].path}: the Philips private scale slope (2005,100E) is missing on "
                "some images of the series; read with philips_scaling='display'")
        ss = np.array(ss, dtype=np.float64)
        intercept = intercept / (slope * ss)
        slope = 1.0 / ss
        notes.append(
            "Philips floating-point values: (stored × RescaleSlope + RescaleIntercept) / "
            "(RescaleSlope × ScaleSlope (2005,100E)), as dcm2niix -p y; "
            "philips_scaling='display' gives the display values")
    elif np.any(slope != 1) or np.any(intercept != 0):
        if np.ptp(slope) == 0 and np.ptp(intercept) == 0:
            notes.append(f"RescaleSlope {slope[0]:g} and RescaleIntercept {intercept[0]:g} applied")
        else:
            notes.append(
                f"per-image RescaleSlope ({slope.min():g} to {slope.max():g}) and "
                f"RescaleIntercept ({intercept.min():g} to {intercept.max():g}) applied")
    return slope, intercept, notes


def _assemble(table: list[list[_Frame]], philips_scaling: str):
    """float32 data (columns, rows, slices, measurements), C-contiguous, and notes.

    Frames are read a block of slices at a time into a small buffer laid out
    (rows, slices, measurements, columns), so that each row of the output
    is one cache-friendly transpose; the only large allocation is the output.
    """
    nz, nm = len(table), len(table[0])
    f0 = table[0][0]
    rows, cols = f0.rows, f0.cols
    flat = [f for row in table for f in row]
    slope, intercept, notes = _scaling(flat, philips_scaling)
    s = slope.reshape(nz, nm).astype(np.float32)
    b = intercept.reshape(nz, nm).astype(np.float32)
    identity = bool(np.all(slope == 1) and np.all(intercept == 0))
    add = bool(np.any(intercept != 0))
    out = np.empty((cols, rows, nz, nm), dtype=np.float32)
    block = int(max(1, min(nz, _BLOCK_BYTES // max(1, rows * cols * nm * 4))))
    buf = None
    cache: dict = {}
    for z0 in range(0, nz, block):
        z1 = min(nz, z0 + block)
        for z in range(z0, z1):
            for m, f in enumerate(table[z]):
                arr = _read_frame(f, cache)
                if buf is None:
                    buf = np.empty((rows, block, nm, cols), dtype=arr.dtype)
                elif not np.can_cast(arr.dtype, buf.dtype, casting="safe"):
                    buf = buf.astype(np.promote_types(buf.dtype, arr.dtype))
                buf[:, z - z0, m, :] = arr
        sz, bz = s[z0:z1], b[z0:z1]
        for r in range(rows):
            src = buf[r, :z1 - z0].transpose(2, 0, 1)  # (columns, slices, measurements)
            dst = out[:, r, z0:z1]
            if identity:
                dst[...] = src
            else:
                np.multiply(src, sz, out=dst, casting="unsafe")
                if add:
                    dst += bz
    cache.clear()
    del buf
    return out, notes


# ---------------------------------------------------------------------------- volumes


def _affine(groups: list[list[_Frame]], label: str, notes: list):
    f0 = groups[0][0]
    iop = f0.orientation
    row_cos, col_cos = iop[:3], iop[3:]
    dr, dc = f0.pixel_spacing
    first = groups[0][0].position
    n = len(groups)
    normal = np.cross(row_cos, col_cos)
    if n > 1:
        last = groups[-1][0].position
        step = (last - first) / (n - 1)
        # every slice on the line first + k * step
        expected = first[None, :] + np.arange(n)[:, None] * step[None, :]
        actual = np.array([g[0].position for g in groups])
        off = float(np.max(np.linalg.norm(actual - expected, axis=1)))
        if off > max(10 * POSITION_TOL_MM, SPACING_RTOL * float(np.linalg.norm(step))):
            raise GeometryError(
                f"{label}: the slice positions do not lie on one line (up to {off:.3g} mm off); "
                "the images do not form one regular stack")
        spacing = float(np.linalg.norm(step))
        if abs(abs(float(step @ normal)) - spacing) > 1e-3 * spacing:
            notes.append(f"slices are sheared (gantry tilt): slice step {_fmt(step)} mm (LPS) "
                         "is not along the slice normal; the affine keeps the shear")
    else:
        spacing = f0.spacing_between or f0.thickness
        if spacing is None or spacing <= 0:
            spacing = 1.0
            notes.append("single slice without SpacingBetweenSlices or SliceThickness; "
                         "slice spacing set to 1 mm")
        else:
            source = "SpacingBetweenSlices" if f0.spacing_between else "SliceThickness"
            notes.append(f"single slice: slice spacing {spacing:g} mm from {source}")
        step = normal * spacing
    lps = np.eye(4)
    lps[:3, 0] = row_cos * dc
    lps[:3, 1] = col_cos * dr
    lps[:3, 2] = step
    lps[:3, 3] = first
    return _LPS_TO_RAS @ lps, spacing


_META_FIELDS = (
    ("Modality", "Modality", str),
    ("MagneticFieldStrength", "MagneticFieldStrength", float),
    ("ImagingFrequency", "ImagingFrequency", float),
    ("Manufacturer", "Manufacturer", str),
    ("ManufacturersModelName", "ManufacturerModelName", str),
    ("InstitutionName", "InstitutionName", str),
    ("InstitutionalDepartmentName", "InstitutionalDepartmentName", str),
    ("StationName", "StationName", str),
    ("DeviceSerialNumber", "DeviceSerialNumber", str),
    ("SoftwareVersions", "SoftwareVersions", None),
    ("BodyPartExamined", "BodyPartExamined", str),
    ("PatientPosition", "PatientPosition", str),
    ("MRAcquisitionType", "MRAcquisitionType", str),
    ("SeriesDescription", "SeriesDescription", str),
    ("ProtocolName", "ProtocolName", str),
    ("ScanningSequence", "ScanningSequence", None),
    ("SequenceVariant", "SequenceVariant", None),
    ("ScanOptions", "ScanOptions", None),
    ("SequenceName", "SequenceName", str),
    ("PulseSequenceName", "PulseSequenceName", str),
    ("ImageType", "ImageType", list),
    ("SeriesNumber", "SeriesNumber", int),
    ("AcquisitionNumber", "AcquisitionNumber", int),
    ("EchoTrainLength", "EchoTrainLength", int),
    ("PixelBandwidth", "PixelBandwidth", float),
    ("PercentPhaseFOV", "PercentPhaseFieldOfView", float),
    ("PercentSampling", "PercentSampling", float),
    ("InPlanePhaseEncodingDirectionDICOM", "InPlanePhaseEncodingDirection", str),
    ("ReceiveCoilName", "ReceiveCoilName", str),
    ("NumberOfAverages", "NumberOfAverages", float),
    ("SeriesInstanceUID", "SeriesInstanceUID", str),
    ("StudyInstanceUID", "StudyInstanceUID", str),
    ("FrameOfReferenceUID", "FrameOfReferenceUID", str),
    ("PatientID", "PatientID", str),
)


def _meta(ds, stack_axis: _Axis, affine_spacing: float, slice_thickness, sop_class: str) -> dict:
    meta: dict = {}
    h = _DsHeader(ds)
    for key, keyword, kind in _META_FIELDS:
        v = h.get(keyword)
        if v is None or v == "" or v == []:
            continue
        try:
            if kind is float:
                v = float(v[0] if isinstance(v, list) else v)
            elif kind is int:
                v = int(v[0] if isinstance(v, list) else v)
            elif kind is list:
                v = [str(x) for x in (v if isinstance(v, list) else [v])]
            elif kind is str:
                v = "\\".join(map(str, v)) if isinstance(v, list) else str(v)
        except (TypeError, ValueError):
            continue
        meta[key] = v
    table = stack_axis.table
    first = table[0][0]
    acq = h.get("AcquisitionDateTime")
    date, time = h.get("AcquisitionDate") or h.get("SeriesDate"), h.get("AcquisitionTime")
    if acq and len(str(acq)) >= 14:
        s = str(acq)
        meta["AcquisitionDateTime"] = f"{s[0:4]}-{s[4:6]}-{s[6:8]}T{s[8:10]}:{s[10:12]}:{s[12:]}"
        time = time or s[8:]
    elif date and time and len(str(date)) == 8:
        d, t = str(date), str(time).replace(":", "")
        meta["AcquisitionDateTime"] = f"{d[0:4]}-{d[4:6]}-{d[6:8]}T{t[0:2]}:{t[2:4]}:{t[4:]}"
    if time:
        t = str(time).replace(":", "")
        if len(t) >= 6:
            meta["AcquisitionTime"] = f"{t[0:2]}:{t[2:4]}:{t[4:]}"
    if slice_thickness is not None:
        meta["SliceThickness"] = float(slice_thickness)
    meta["SpacingBetweenSlices"] = float(affine_spacing)
    kind = stack_axis.kind
    if kind == "echo" and stack_axis.values is not None:
        meta["EchoTime"] = [float(v) for v in stack_axis.values]
    elif first.te_ms is not None:
        meta["EchoTime"] = first.te_ms * 1e-3
    if first.tr_ms is not None:
        meta["RepetitionTime"] = first.tr_ms * 1e-3
    if kind == "flip":
        meta["FlipAngle"] = [float(v) for v in stack_axis.values]
    elif first.flip_angle is not None:
        meta["FlipAngle"] = first.flip_angle
    if kind == "inversion":
        meta["InversionTime"] = [float(v) for v in stack_axis.values]
    elif first.ti_ms is not None:
        meta["InversionTime"] = first.ti_ms * 1e-3
    if kind == "b":
        meta["DiffusionBValue"] = [float(v) for v in stack_axis.values]
    if kind == "time" and stack_axis.values is not None:
        meta["FrameTimesStart"] = [float(v) for v in stack_axis.values]
    meta["ImageOrientationPatientDICOM"] = [float(v) for v in first.orientation]
    meta["SOPClassUID"] = sop_class
    if kind == "none":
        meta["SOPInstanceUIDs"] = [row[0].sop_uid for row in table]
        if first.frame is not None:
            meta["ReferencedFrameNumbers"] = [row[0].frame + 1 for row in table]
    else:
        meta["SOPInstanceUIDs"] = [[f.sop_uid for f in row] for row in table]
        if first.frame is not None:
            meta["ReferencedFrameNumbers"] = [[f.frame + 1 for f in row] for row in table]
    if first.philips_ss is not None:
        meta["PhilipsRescaleSlope"] = first.slope
        meta["PhilipsRescaleIntercept"] = first.intercept
        meta["PhilipsScaleSlope"] = first.philips_ss
    meta["ConversionSoftware"] = "oncomri"
    return meta


def _volume_label(ds, sop_class: str) -> str:
    number = ds.get("SeriesNumber")
    desc = ds.get("SeriesDescription") or ds.get("ProtocolName")
    return f"series {number}" + (f" ({desc})" if desc else "")


def _build(stack: list[_Frame], label: str, *, philips_scaling: str, notes: list) -> Volume:
    if "MOSAIC" in stack[0].image_type:
        raise ProtocolError(
            f"{label}: Siemens MOSAIC images (several slices tiled in one image) are not "
            "unpacked by oncomri; convert the series with dcm2niix and load its NIfTI")
    groups, _ = _positions(stack, label)
    _check_counts(groups, label)
    _check_spacing(np.array([g[0].proj for g in groups]), label)
    f0 = groups[0][0]
    ds = _header_dataset(f0)
    b0 = _float(ds.get("MagneticFieldStrength"))
    if b0 is not None and b0 <= 0:
        b0 = None
    axis = _measurement_axis(groups, label, b0)
    vol_notes = list(notes)
    affine, spacing = _affine(groups, label, vol_notes)
    vol_notes.extend(axis.notes)
    data, scale_notes = _assemble(axis.table, philips_scaling)
    vol_notes.extend(scale_notes)
    if data.shape[3] == 1:
        data = data.reshape(data.shape[:3])
    meta = _meta(ds, axis, spacing, f0.thickness, f0.sop_class)
    meta["notes"] = vol_notes
    sources = []
    seen = set()
    for row in axis.table:
        for f in row:
            if f.path not in seen:
                seen.add(f.path)
                sources.append(f.path)
    return Volume(data, affine, protocol=axis.protocol, meta=meta, sources=tuple(sources))


def _header_dataset(f: _Frame):
    if isinstance(f.header, _DsHeader):
        return f.header.ds
    pydicom = _pydicom()
    try:
        return pydicom.dcmread(f.path, stop_before_pixels=True)
    except Exception as exc:
        raise ReadError(f"{f.path}: not readable DICOM ({_one_line(exc)}); the file is "
                        "truncated or corrupt — copy it again") from exc


def read_series(path, *, philips_scaling: str = "float", errors: str = "raise",
                fast: bool = True) -> list[Volume]:
    """Read the DICOM MR image series in a file or folder, one Volume per image stack.

    Parameters
    ----------
    path : str or path-like
        A DICOM file (read alone, not with the rest of its series), or a
        folder searched recursively (hidden files and folders are ignored;
        files that are not DICOM are skipped with a note).
    philips_scaling : {'float', 'display'}
        For Philips images with the private scale slope (2005,100E):
        ``'float'`` (default, as dcm2niix ``-p y``) returns the
        floating-point values ``(stored × RS + RI) / (RS × SS)``, comparable
        across images and series; ``'display'`` returns ``stored × RS + RI``.
        Other vendors always get ``stored × RescaleSlope + RescaleIntercept``.
    errors : {'raise', 'skip'}
        What to do with a series whose geometry or acquisition parameters
        are inconsistent (GeometryError, ProtocolError): ``'raise'``
        (default), or ``'skip'`` it and note why in every returned Volume's
        ``meta['notes']`` (useful on a whole study folder where one series,
        e.g. an aborted scan, is incomplete). Unreadable files always raise.
    fast : bool
        Read the headers and pixels of uncompressed little-endian files with
        oncomri's element scanner (default); False reads every file with
        pydicom (slower, same result).

    Returns
    -------
    list of Volume
        Ordered by SeriesNumber. ``data`` float32 ``(columns, rows, slices)``
        or ``(columns, rows, slices, n)`` with the measurements ordered by
        their parameter; ``affine`` voxel -> RAS+ mm; ``protocol`` as described
        in the module docstring (None for a 3D stack); ``meta`` BIDS fields,
        DICOM references and ``notes``; ``sources`` the files in slice order.

    Raises
    ------
    ReadError
        The path does not exist; a file is truncated or corrupt; the folder
        holds no DICOM images (only non-image objects, or no DICOM at all).
    GeometryError
        Missing slices, uneven spacing, mixed (near-parallel) orientations,
        images missing the Image Plane Module.
    ProtocolError
        Unequal image counts per measurement, several parameters varying at
        once, implausible echo times.
    MissingDependencyError
        A compressed transfer syntax without an installed decoder.

    Notes
    -----
    Geometry follows DICOM PS3.3 C.7.6.2.1.1 (Image Position and Orientation)
    and the LPS -> RAS flip of NIfTI (as nibabel and dcm2niix); enhanced
    objects follow PS3.3 C.7.6.16 (Multi-frame Functional Groups) and
    A.36.2 (Enhanced MR Image IOD).
    """
    if errors not in ("raise", "skip"):
        raise ValidationError(f"errors={errors!r} is not 'raise' or 'skip'")
    if philips_scaling not in PHILIPS_SCALINGS:
        raise ValidationError(
            f"philips_scaling={philips_scaling!r} is not one of {PHILIPS_SCALINGS}; use "
            "'float' (dcm2niix's default) or 'display'")
    path = Path(os.fspath(path))
    files = _list_files(path)
    scan = _collect(files, fast=fast)
    notes = []
    if scan.skipped:
        listing = ", ".join(f"{name}: {n}" for name, n in sorted(scan.skipped.items()))
        notes.append(f"skipped {sum(scan.skipped.values())} DICOM object(s) that are not "
                     f"images oncomri can place ({listing})")
    if scan.not_dicom:
        names = ", ".join(p.name for p in scan.not_dicom[:3])
        more = ", ..." if len(scan.not_dicom) > 3 else ""
        notes.append(f"skipped {len(scan.not_dicom)} file(s) that are not DICOM ({names}{more})")
    if not scan.frames:
        if scan.n_dicom:
            listing = ", ".join(f"{name}: {n}" for name, n in sorted(scan.skipped.items()))
            raise ReadError(
                f"{path}: holds {scan.n_dicom} DICOM object(s) but no images with plane "
                f"geometry ({listing}); point to the folder of the image series")
        raise ReadError(f"{path}: no DICOM files found; point to a DICOM file or a folder "
                        "of DICOM files")
    series: dict = defaultdict(list)
    for f in scan.frames:
        series[f.series_key].append(f)
    volumes = []
    failed: list = []
    for key, frames in series.items():
        ds = _header_dataset(frames[0])
        label = _volume_label(ds, frames[0].sop_class)
        dups = Counter((f.sop_uid, f.frame) for f in frames if f.sop_uid)
        extra = [k for k, c in dups.items() if c > 1]
        series_notes = []
        if extra:
            seen = set()
            unique = []
            for f in frames:
                k = (f.sop_uid, f.frame)
                if f.sop_uid and k in seen:
                    continue
                seen.add(k)
                unique.append(f)
            series_notes.append(f"{len(frames) - len(unique)} duplicate image(s) (same "
                                "SOPInstanceUID) ignored")
            frames = unique
        try:
            stacks = _split_stacks(frames, label)
        except GeometryError as exc:
            if errors == "raise":
                raise
            failed.append(exc)
            continue
        for i, stack in enumerate(stacks):
            stack_notes = notes + series_notes
            stack_label = label
            if len(stacks) > 1:
                f = stack[0]
                stack_label = f"{label} stack {i + 1}/{len(stacks)}"
                stack_notes = stack_notes + [
                    f"{label} holds {len(stacks)} image stacks (by orientation, image type, "
                    f"matrix or pixel spacing); this is stack {i + 1}: ImageType "
                    f"{'/'.join(f.image_type) or '-'}, orientation {_fmt(f.orientation)}, "
                    f"{f.rows}x{f.cols}"]
            try:
                vol = _build(stack, stack_label, philips_scaling=philips_scaling,
                             notes=stack_notes)
            except (GeometryError, ProtocolError) as exc:
                if errors == "raise":
                    raise
                failed.append(exc)
                continue
            volumes.append(vol)
    if failed and not volumes:
        raise failed[0]
    for exc in failed:
        for vol in volumes:
            vol.meta["notes"].append(f"not read: {exc}")
    volumes.sort(key=lambda v: (v.meta.get("SeriesNumber", 0)
                                if isinstance(v.meta.get("SeriesNumber"), int) else 0,
                                v.meta.get("SeriesInstanceUID", "")))
    return volumes


def read_source_datasets(volume: Volume, *, pixels: bool = False) -> list:
    """The pydicom Datasets a Volume was read from, in the order of ``volume.sources``.

    For DICOM export (Parametric Map, SEG, SR) that must reference and copy
    from the source series (patient, study, frame of reference, the images).

    Parameters
    ----------
    volume : Volume
        A Volume from :func:`read_series`.
    pixels : bool
        Also read the pixel data (default: headers only).

    Returns
    -------
    list of pydicom.Dataset
        One per file in ``volume.sources`` (slice order, then measurement
        order; a multi-frame source is one Dataset).

    Raises
    ------
    ReadError
        A source file is gone or changed since the Volume was read (its
        SOPInstanceUID is no longer one of ``volume.meta['SOPInstanceUIDs']``),
        or the Volume was not read from DICOM.
    """
    uids = volume.meta.get("SOPInstanceUIDs") if isinstance(volume.meta, dict) else None
    if not volume.sources or uids is None:
        raise ReadError("the volume was not read from DICOM (no sources with "
                        "SOPInstanceUIDs); read it with oncomri.io.dicom.read_series")
    known = set()
    for row in uids:
        known.update(row if isinstance(row, list) else [row])
    pydicom = _pydicom()
    out = []
    for src in volume.sources:
        try:
            ds = pydicom.dcmread(src, stop_before_pixels=not pixels)
        except FileNotFoundError as exc:
            raise ReadError(f"{src}: source file no longer exists; read the series again "
                            "from its current location") from exc
        except Exception as exc:
            raise ReadError(f"{src}: not readable DICOM ({_one_line(exc)})") from exc
        if str(ds.get("SOPInstanceUID", "")) not in known:
            raise ReadError(f"{src}: its SOPInstanceUID is not one of the volume's images; the "
                            "file changed since the series was read — read it again")
        out.append(ds)
    return out
