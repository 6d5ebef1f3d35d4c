"""Bruker ParaVision 5.1, 6 and 360 reader: study, scan or reconstruction folders.

A ParaVision study folder holds numbered scan folders (EXPNO); each scan
holds the acquisition parameters (``acqp``, ``method``) and one folder per
reconstruction (``pdata/<PROCNO>``) with the image data (``2dseq``), its
description (``visu_pars``) and the reconstruction parameters (``reco``).
:func:`read_series` turns each reconstruction into one
:class:`~oncomri.core.Volume` following the conventions of
:mod:`oncomri.io.registry`:

- the data come from ``2dseq`` as described by the *Visu* parameters
  (``VisuCoreSize``, ``VisuCoreWordType``, ``VisuCoreByteOrder``,
  ``VisuCoreFrameCount``) with ``VisuCoreDataSlope``/``VisuCoreDataOffs``
  applied per frame;
- the frame groups (``VisuFGOrderDesc``; the first group listed varies
  fastest) give the axes: ``FG_SLICE`` becomes Z, the other group (echoes,
  diffusion weightings, inversions, repetitions) the measurement axis;
- the geometry comes from ``VisuCoreOrientation``/``VisuCorePosition``/
  ``VisuCoreExtent``, which ParaVision writes in the DICOM patient frame
  (x to the subject's left, y to posterior, z to head, mm; the subject
  position is already applied); the affine is that frame turned into RAS+;
- acquisition parameters come from ``visu_pars`` first, then ``method`` and
  ``acqp``.

All parameter files are JCAMP-DX 4.24 text (``##$NAME=value`` records);
:func:`read_jcamp` parses them.

References
----------
Bruker BioSpin MRI. ParaVision Parameter Reference (D02_PvParams, PV6;
D13_PvParams, PV5.1), "Visu Parameters"; ParaVision File Formats (D01/D12).
McDonald RS, Wilks PA. JCAMP-DX: a standard form for exchange of infrared
spectra in computer readable form. Appl Spectrosc 1988;42:151-162.
DICOM PS3.3 C.7.6.2 (Image Plane Module: the patient coordinate system).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from ..core.errors import GeometryError, ProtocolError, ReadError, ValidationError
from ..core.protocols import (
    DiffusionProtocol,
    DynamicProtocol,
    InversionRecoveryProtocol,
    MultiEchoProtocol,
)
from ..core.volume import Volume
from .bids import _one_line

__all__ = [
    "read_series",
    "read_jcamp",
    "parse_jcamp",
    "GYROMAGNETIC_RATIO_MHZ_PER_T",
    "WORD_TYPES",
    "SUBJECT_POSITIONS",
]

#: gamma / 2pi in MHz/T of the nuclei imaged on preclinical systems (CODATA 2018
#: for 1H; Harris et al., Pure Appl Chem 2001;73:1795 for the others). Used to
#: turn the base frequency (acqp ``BF1``) into the field strength.
GYROMAGNETIC_RATIO_MHZ_PER_T = {
    "1H": 42.577478,
    "2H": 6.536,
    "3HE": 32.434,
    "13C": 10.7084,
    "19F": 40.078,
    "23NA": 11.262,
    "31P": 17.235,
    "129XE": 11.777,
}

#: ``VisuCoreWordType`` -> numpy type of one pixel (byte order added from
#: ``VisuCoreByteOrder``).
WORD_TYPES = {
    "_8BIT_UNSGN_INT": "u1",
    "_8BIT_SGN_INT": "i1",
    "_16BIT_SGN_INT": "i2",
    "_32BIT_SGN_INT": "i4",
    "_32BIT_FLOAT": "f4",
}

_BYTE_ORDERS = {"littleEndian": "<", "bigEndian": ">"}

#: ``VisuSubjectPosition`` values accepted by the ``subject_position`` option,
#: each with the DICOM Patient Position (0018,5100) it corresponds to and the
#: diagonal that maps patient (LPS) axes to magnet axes relative to
#: ``Head_Supine`` (head first supine = identity; prone turns the subject
#: 180 degrees about the bore axis; feet first turns it 180 degrees about the
#: vertical axis).
SUBJECT_POSITIONS = {
    "Head_Supine": ("HFS", (1.0, 1.0, 1.0)),
    "Head_Prone": ("HFP", (-1.0, -1.0, 1.0)),
    "Foot_Supine": ("FFS", (-1.0, 1.0, -1.0)),
    "Foot_Prone": ("FFP", (1.0, -1.0, -1.0)),
}
_LATERAL_POSITIONS = {"Head_Left": "HFDL", "Head_Right": "HFDR",
                      "Foot_Left": "FFDL", "Foot_Right": "FFDR"}

#: LPS (DICOM patient frame, used by Visu) -> RAS+ (NIfTI).
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

#: Length units of ``VisuCoreUnits`` -> mm.
_LENGTH_UNITS = {"mm": 1.0, "cm": 10.0, "m": 1000.0, "um": 1e-3}

#: The frame group of the slices: the Z axis of 2D frames.
_SLICE_GROUP = "FG_SLICE"

_TOL_MM = 1e-3


# =========================================================================== JCAMP-DX


# Array sizes are written with inner spaces, "( 5, 3 )"; a struct of integers has none, "(0, 1)".
_DIMS = re.compile(r"^\(\s+(\d+(?:\s*,\s*\d+)*)\s+\)(?:\s+(.*))?$")
_RUN = re.compile(r"^@(\d+)\*\((.*)\)$")
_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_INT = re.compile(r"^[+-]?\d+$")


def read_jcamp(path) -> dict:
    """Read a ParaVision JCAMP-DX parameter file (``acqp``, ``method``, ``visu_pars`` ...).

    Parameters
    ----------
    path : str or path-like
        The file.

    Returns
    -------
    dict
        ``{name: value}`` for every ``##$name=`` record (and the header
        records ``TITLE``, ``JCAMPDX``, ``ORIGIN`` ... without ``$``); see
        :func:`parse_jcamp` for the value types.

    Raises
    ------
    ReadError
        The file is missing, unreadable, or not a JCAMP-DX parameter file.
    """
    p = Path(os.fspath(path))
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ReadError(f"{p}: file not found; check the path") from None
    except OSError as exc:
        raise ReadError(f"{p}: cannot be read ({_one_line(exc)}); check its permissions") from exc
    # ParaVision writes ASCII; latin-1 decodes every byte, so odd characters in
    # free-text comments never stop a read.
    return parse_jcamp(raw.decode("latin-1"), source=str(p))


def parse_jcamp(text: str, *, source: str = "JCAMP-DX text") -> dict:
    """Parse the text of a ParaVision JCAMP-DX parameter file.

    Parameters
    ----------
    text : str
        The file content.
    source : str
        Names the text in error messages.

    Returns
    -------
    dict
        Values by record name. A scalar record gives an ``int``, ``float`` or
        ``str`` (``<text>`` strings without their brackets, enumerations
        such as ``Head_Supine`` as they are) or a ``tuple`` for a struct
        ``(a, b, <c>)``. An array record (``##$NAME=( n[, m ...] )`` with
        the values on the following lines) gives a ``numpy.ndarray`` of that
        shape for numbers (``@n*(v)`` runs expanded), a ``str`` for a
        character array (``( 65 ) <text>``), a ``list`` of ``str`` for an
        array of strings or enumerations, and a ``list`` of ``tuple`` for an
        array of structs.

    Raises
    ------
    ReadError
        No ``##`` record in the text.

    Notes
    -----
    JCAMP-DX 4.24 labelled data records (McDonald & Wilks 1988) as written by
    ParaVision: lines starting ``$$`` are comments; a record continues on
    the following lines until the next ``##``; ParaVision wraps long lines at
    about 80 characters, inside numbers lists between values and inside
    strings anywhere, so a continuation joins with a space except inside an
    open ``<...>`` string.
    """
    records: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("##"):
            name, sep, value = line[2:].partition("=")
            if not sep:
                continue
            name = name[1:] if name.startswith("$") else name
            records.append((name.strip(), [value]))
        elif line.startswith("$$") or not records:
            continue
        else:
            records[-1][1].append(line)
    if not records:
        raise ReadError(
            f"{source}: not a JCAMP-DX parameter file (no '##NAME=value' record); "
            "the file is damaged or is not a ParaVision parameter file")
    out: dict = {}
    for name, lines in records:
        if name == "END":
            continue
        try:
            out[name] = _record_value(lines)
        except ValueError as exc:
            raise ReadError(
                f"{source}: record {name} cannot be parsed ({exc}); the file is damaged") from None
    return out


def _join(lines: list[str]) -> str:
    """Continuation lines joined: no separator inside an open ``<...>`` string."""
    text = ""
    for i, line in enumerate(lines):
        if i and not _inside_string(text):
            text += " "
        text += line
    return text


def _inside_string(text: str) -> bool:
    return text.rfind("<") > text.rfind(">")


def _record_value(lines: list[str]):
    first = lines[0].strip()
    dims = _DIMS.match(first)
    if dims:
        shape = tuple(int(v) for v in dims.group(1).split(","))
        rest = ([dims.group(2)] if dims.group(2) else []) + lines[1:]
        return _array_value(shape, _join(rest).strip())
    return _scalar_value(_join([first] + lines[1:]).strip())


def _scalar_value(text: str):
    if text.startswith("(") and text.endswith(")"):
        return tuple(_struct_fields(text[1:-1]))
    return _atom(text)


def _atom(text: str):
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        return text[1:-1]
    if _INT.match(text):
        return int(text)
    if _NUMBER.match(text):
        return float(text)
    if text.lower() in ("nan", "inf", "-inf"):
        return float(text)
    return text


def _split_top(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside ``<...>`` strings and ``(...)`` groups."""
    parts, depth, in_str, start = [], 0, False, 0
    for i, ch in enumerate(text):
        if in_str:
            in_str = ch != ">"
        elif ch == "<":
            in_str = True
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError("unbalanced ')'")
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth or in_str:
        raise ValueError("unbalanced '(' or '<'")
    parts.append(text[start:])
    return parts


def _struct_fields(inner: str) -> list:
    """Fields of a struct: atoms, nested structs, or lists of atoms ("3 3 3", "<a> <b>")."""
    fields = []
    for part in _split_top(inner, ","):
        part = part.strip()
        if part.startswith("(") and part.endswith(")"):
            fields.append(tuple(_struct_fields(part[1:-1])))
            continue
        tokens = _tokens(part)
        if len(tokens) > 1:
            fields.append([_atom(t) for t in tokens])
        else:
            fields.append(_atom(part))
    return fields


def _tokens(text: str) -> list[str]:
    """Whitespace-separated tokens, ``<...>`` strings and ``(...)`` structs kept whole."""
    out, i, n = [], 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        if ch == "<":
            j = text.find(">", i)
            if j < 0:
                raise ValueError("unterminated '<' string")
            out.append(text[i:j + 1])
            i = j + 1
            continue
        if ch == "(":
            depth, j, in_str = 0, i, False
            while j < n:
                c = text[j]
                if in_str:
                    in_str = c != ">"
                elif c == "<":
                    in_str = True
                elif c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if depth:
                raise ValueError("unbalanced '('")
            out.append(text[i:j + 1])
            i = j + 1
            continue
        j = i
        while j < n and not text[j].isspace() and text[j] not in "<":
            if text[j] == "(":  # a run '@5*(0)'
                k = text.find(")", j)
                if k < 0:
                    raise ValueError("unbalanced '('")
                j = k + 1
                break
            j += 1
        out.append(text[i:j])
        i = j
    return out


def _array_value(dims: tuple, text: str):
    if not text:
        return "" if len(dims) == 1 else []
    tokens = _tokens(text)
    if tokens[0].startswith("<"):
        strings = [t[1:-1] for t in tokens if t.startswith("<")]
        if len(dims) == 1 and len(strings) == 1:
            return strings[0]
        return strings
    if tokens[0].startswith("("):
        return [tuple(_struct_fields(t[1:-1])) for t in tokens]
    values = []
    for tok in tokens:
        run = _RUN.match(tok)
        if run:
            values.extend([_atom(run.group(2))] * int(run.group(1)))
        else:
            values.append(_atom(tok))
    if all(isinstance(v, (int, float)) for v in values):
        kind = np.int64 if all(isinstance(v, int) for v in values) else np.float64
        arr = np.asarray(values, dtype=kind)
        if arr.size == int(np.prod(dims)):
            return arr.reshape(dims)
        return arr
    return [str(v) for v in values]


# =========================================================================== folders


def _numbered_children(folder: Path) -> list[Path]:
    try:
        children = [c for c in folder.iterdir() if c.is_dir() and c.name.isdigit()]
    except OSError as exc:
        raise ReadError(
            f"{folder}: cannot be listed ({_one_line(exc)}); check its permissions") from exc
    return sorted(children, key=lambda c: int(c.name))


def _is_scan(folder: Path) -> bool:
    return ((folder / "acqp").is_file() or (folder / "method").is_file()
            or (folder / "pdata").is_dir())


def _is_pdata(folder: Path) -> bool:
    return any((folder / name).exists() for name in ("2dseq", "visu_pars", "reco"))


@dataclass
class _Options:
    reco: int | None
    subject_position: str | None


def read_series(path, *, reco: int | None = None,
                subject_position: str | None = None) -> list[Volume]:
    """Read a ParaVision study, scan or reconstruction into one Volume per series.

    Parameters
    ----------
    path : str or path-like
        A study folder (numbered scan folders), a scan folder (``acqp``,
        ``method``, ``pdata/``), a reconstruction folder ``pdata/<N>``
        (``2dseq``, ``visu_pars``, ``reco``), or its ``2dseq`` or
        ``visu_pars`` file.
    reco : int, optional
        The reconstruction (``pdata/<reco>``) to read from each scan.
        Default: ``pdata/1``, or the lowest-numbered one if there is no
        ``pdata/1`` (with a note).
    subject_position : str, optional
        Corrects a subject position registered wrongly at the scanner (a
        rodent that lay prone but was registered ``Head_Supine``): one of
        :data:`SUBJECT_POSITIONS`. The geometry is re-expressed as if the
        scan had been registered with this position. Default: trust
        ``VisuSubjectPosition``.

    Returns
    -------
    list of Volume
        One per reconstruction read, by scan number; a scan whose slices
        lie in several orientations (a localiser's slice packages) gives
        one Volume per orientation. Each has

        - ``data``: float32, ``(X, Y, Z)`` or ``(X, Y, Z, n)`` with X along
          ``VisuCoreSize[0]`` (the image columns), Z the slices (or the third
          axis of a 3D frame), the measurement axis last; slope and offset
          applied.
        - ``affine``: voxel -> RAS+ mm; the slice axis follows the slice
          positions (``VisuCorePosition``), as DICOM readers do.
        - ``protocol``: :class:`MultiEchoProtocol` (``FG_ECHO``; echo times
          in s), :class:`DiffusionProtocol` (``FG_DIFFUSION``/``FG_DTI``; s/mm²),
          :class:`InversionRecoveryProtocol` (``FG_IRMODE``; s),
          :class:`DynamicProtocol` (``FG_CYCLE``; s), else None.
        - ``meta``: BIDS fields (``EchoTime`` s — a list for multi-echo —,
          ``RepetitionTime`` s, ``FlipAngle`` deg, ``MagneticFieldStrength``
          T, ``SeriesNumber`` (the scan number), ``SeriesDescription``,
          ``ProtocolName``, ``SliceThickness`` mm, ``PatientPosition`` ...),
          provenance (``ParaVisionScan``, ``ParaVisionReco``,
          ``ParaVisionVersion``, ``VisuVersion``, ``ParaVisionFrameGroups``)
          and ``notes`` (what the reader decided).
        - ``sources``: the files read.

    Raises
    ------
    ReadError
        No ParaVision folder at ``path``; a reconstruction folder without
        ``visu_pars`` (not reconstructed, or older than ParaVision 5.1) or
        without ``2dseq``; a ``2dseq`` whose size does not match
        ``visu_pars`` (truncated); an unknown ``VisuCoreWordType``; a
        damaged parameter file; ``reco`` absent from a scan folder given
        directly; a scan folder given directly without reconstructions.
    ValidationError
        ``reco`` or ``subject_position`` invalid, or a reconstruction given
        directly that holds spectra rather than images.
    GeometryError
        ``VisuCoreOrientation`` is not a rotation, the units are not
        lengths, or one slice has no position.

    Notes
    -----
    In a study folder, scans without reconstruction (no ``pdata`` folder or
    no ``pdata/<reco>``) and non-image scans (spectroscopy) are skipped, each
    with a note in every Volume returned; several series are not an error
    here (``oncomri.io.load`` asks to choose one).

    ``VisuCorePosition`` is taken as the centre of the first voxel of a
    frame (as Image Position (Patient), where Bruker-to-DICOM converters put
    it; ITK instead treats it as a corner). Frames stored in
    ``disk_reverse_slice_order`` are put back in position order. The choices
    and a comparison with other readers are in ``docs/bruker_reader.md``.
    """
    opts = _Options(reco=_check_reco(reco), subject_position=_check_position(subject_position))
    p = Path(os.fspath(path))
    if not p.exists():
        raise ReadError(f"{p}: no such file or folder; check the path")
    if p.is_file():
        if p.name in ("2dseq", "visu_pars", "reco"):
            return _read_pdata_directly(p.parent, opts)
        raise ReadError(
            f"{p}: not a ParaVision folder or file; pass a study, scan or pdata/<N> folder")
    if p.name == "pdata" and not _is_pdata(p) and _numbered_children(p):
        p = p.parent
    if _is_scan(p):
        return _read_scan(p, opts, in_study=False, study_notes=[])
    if _is_pdata(p):
        return _read_pdata_directly(p, opts)
    scans = [c for c in _numbered_children(p) if _is_scan(c)]
    if not scans:
        raise ReadError(
            f"{p}: no ParaVision scan folders (numbered folders with acqp/method/pdata) here; "
            "pass a study, scan or pdata/<N> folder")
    return _read_study(p, scans, opts)


def _check_reco(reco):
    if reco is None:
        return None
    if isinstance(reco, bool) or not isinstance(reco, (int, np.integer)) or reco < 1:
        raise ValidationError(
            f"reco={reco!r}: give the reconstruction number (pdata/<N>), an integer >= 1")
    return int(reco)


def _check_position(position):
    if position is None:
        return None
    if position not in SUBJECT_POSITIONS:
        raise ValidationError(
            f"subject_position={position!r}: use one of {', '.join(SUBJECT_POSITIONS)} "
            "(lateral positions cannot be corrected here)")
    return position


def _read_study(study: Path, scans: list[Path], opts: _Options) -> list[Volume]:
    notes: list[str] = []
    pending: list[Path] = []
    for scan in scans:
        recos = _reco_folders(scan)
        if not recos:
            notes.append(f"scan {scan.name} skipped: no reconstruction in {scan / 'pdata'} "
                         "(not reconstructed in ParaVision)")
            continue
        if opts.reco is not None and opts.reco not in recos:
            notes.append(f"scan {scan.name} skipped: no pdata/{opts.reco} "
                         f"(it has {_list_recos(recos)})")
            continue
        pending.append(scan)
    volumes: list[Volume] = []
    for scan in pending:
        volumes.extend(_read_scan(scan, opts, in_study=True, study_notes=notes))
    if not volumes:
        raise ReadError(
            f"{study}: no reconstructed image series in this study ({'; '.join(notes)}); "
            "reconstruct the scans in ParaVision first")
    for vol in volumes:
        vol.meta["notes"].extend(n for n in notes if n not in vol.meta["notes"])
    return volumes


def _reco_folders(scan: Path) -> dict[int, Path]:
    pdata = scan / "pdata"
    if not pdata.is_dir():
        return {}
    return {int(c.name): c for c in _numbered_children(pdata)}


def _list_recos(recos) -> str:
    return ", ".join(f"pdata/{n}" for n in sorted(recos)) or "none"


def _read_scan(scan: Path, opts: _Options, *, in_study: bool,
               study_notes: list[str]) -> list[Volume]:
    recos = _reco_folders(scan)
    if not recos:
        raise ReadError(
            f"{scan}: this scan has no reconstruction (no {scan / 'pdata'}/<N> folder); "
            "reconstruct it in ParaVision (or export the pdata folder with the scan)")
    notes: list[str] = []
    if opts.reco is not None:
        if opts.reco not in recos:
            raise ReadError(
                f"{scan}: has no pdata/{opts.reco} (it has {_list_recos(recos)}); "
                "choose one of these with reco=N")
        number = opts.reco
    elif 1 in recos:
        number = 1
    else:
        number = min(recos)
        notes.append(f"no pdata/1; read pdata/{number} (of {_list_recos(recos)})")
    if len(recos) > 1 and opts.reco is None:
        notes.append(f"scan has {len(recos)} reconstructions ({_list_recos(recos)}); "
                     f"read pdata/{number} (choose another with reco=N)")
    pdata = recos[number]
    if in_study and not (pdata / "visu_pars").exists() and not (pdata / "2dseq").exists():
        study_notes.append(f"scan {scan.name} skipped: {pdata} holds neither visu_pars nor 2dseq "
                           "(not reconstructed)")
        return []
    try:
        return _read_pdata(pdata, opts, notes=notes, scan=scan)
    except _NotAnImage as exc:
        if in_study:
            study_notes.append(f"scan {scan.name} skipped: {exc}")
            return []
        raise ValidationError(f"{pdata}: {exc}; oncomri reads image series") from None


class _NotAnImage(Exception):
    """A reconstruction that holds spectra or other non-image frames."""


def _read_pdata_directly(pdata: Path, opts: _Options) -> list[Volume]:
    try:
        return _read_pdata(pdata, opts, notes=[])
    except _NotAnImage as exc:
        raise ValidationError(f"{pdata}: {exc}; oncomri reads image series") from None


# =========================================================================== one reconstruction


@dataclass
class _Group:
    """One frame group of ``VisuFGOrderDesc``: its id, length and dependent parameters."""

    id: str
    length: int
    comment: str = ""
    deps: dict = field(default_factory=dict)  # parameter name -> start index


@dataclass
class _Layout:
    """How the frames of a 2dseq become the axes of the Volume."""

    groups: list            # the frame groups, first varies fastest (as in VisuFGOrderDesc)
    slice_index: int | None  # index in ``groups`` of FG_SLICE (2D frames), else None
    complex_index: int | None
    measured: list          # indices of the groups on the measurement axis (fastest first)
    n_z: int                # slices (2D) or planes of the 3D frame


def _read_pdata(pdata: Path, opts: _Options, *, notes: list[str], scan: Path | None = None
                ) -> list[Volume]:
    visu_path = pdata / "visu_pars"
    seq_path = pdata / "2dseq"
    if not visu_path.is_file():
        raise ReadError(
            f"{pdata}: no visu_pars; ParaVision 5.1 and later write it with every "
            "reconstruction, so this scan was probably not reconstructed (reconstruct it in "
            "ParaVision) or comes from an older ParaVision (open and save it in ParaVision 5.1 "
            "or later, or export it as DICOM)")
    if not seq_path.is_file():
        raise ReadError(
            f"{pdata}: no 2dseq image file next to visu_pars; the reconstruction is incomplete "
            "— reconstruct the scan again or copy the whole pdata folder")
    if scan is None and pdata.parent.name == "pdata" and _is_scan(pdata.parent.parent):
        scan = pdata.parent.parent
    visu = read_jcamp(visu_path)
    sources = [str(seq_path), str(visu_path)]
    acqp: dict = {}
    method: dict = {}
    if scan is not None:
        if (scan / "acqp").is_file():
            acqp = read_jcamp(scan / "acqp")
            sources.append(str(scan / "acqp"))
        if (scan / "method").is_file():
            method = read_jcamp(scan / "method")
            sources.append(str(scan / "method"))
    reader = _Reconstruction(visu=visu, acqp=acqp, method=method, visu_path=visu_path,
                             seq_path=seq_path, pdata=pdata, scan=scan, notes=list(notes),
                             opts=opts)
    return reader.volumes(sources)


@dataclass
class _Reconstruction:
    """One ``pdata/<N>`` folder and the parameter files of its scan."""

    visu: dict
    acqp: dict
    method: dict
    visu_path: Path
    seq_path: Path
    pdata: Path
    scan: Path | None
    notes: list
    opts: _Options

    # ------------------------------------------------------------------ parameter access
    def _require(self, name: str):
        if name not in self.visu:
            raise ReadError(
                f"{self.visu_path}: {name} is missing; the file is incomplete — "
                "reconstruct the scan again in ParaVision")
        return self.visu[name]

    def _int(self, name: str) -> int:
        value = self._require(name)
        arr = np.asarray(value).reshape(-1)
        if arr.size != 1 or not np.issubdtype(arr.dtype, np.number) or arr[0] != int(arr[0]):
            raise ReadError(f"{self.visu_path}: {name} must be one integer, got {value!r}; "
                            "the file is damaged")
        return int(arr[0])

    @staticmethod
    def _floats(name: str, source: dict) -> np.ndarray | None:
        """``source[name]`` as a flat float array, or None if absent or not numeric."""
        value = source.get(name)
        if value is None or isinstance(value, str):
            return None
        if isinstance(value, (list, tuple)) and not all(
                isinstance(v, (int, float)) for v in value):
            return None
        try:
            return np.asarray(value, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            return None

    def _file_of(self, source: dict) -> str:
        if source is self.visu:
            return str(self.visu_path)
        name = "method" if source is self.method else "acqp"
        return str(self.scan / name) if self.scan is not None else name

    def _along(self, name: str, layout: _Layout, index: int | None, n_frames: int, width: int,
               *, broadcast: bool) -> np.ndarray | None:
        """Rows (of ``width`` values) of visu_pars ``name``, one per element of group ``index``.

        A parameter listed in ``VisuGroupDepVals`` for the group is read from
        its start index on; otherwise it may hold one row per element of the
        group, one row per frame (the rows of the group's elements at index 0
        of the other groups are taken) or, with ``broadcast``, one row for all.
        """
        values = self._floats(name, self.visu)
        if values is None or values.size % width:
            return None
        rows = values.reshape(-1, width)
        if index is None:
            if rows.shape[0] in (1, n_frames):
                return rows[:1]
            return None
        group = layout.groups[index]
        n = group.length
        if name in group.deps:
            start = group.deps[name]
            return rows[start:start + n] if rows.shape[0] >= start + n else None
        if rows.shape[0] == n:
            return rows
        if rows.shape[0] == n_frames:
            stride = int(np.prod([g.length for g in layout.groups[:index]]))
            return rows[np.arange(n) * stride]
        if broadcast and rows.shape[0] == 1:
            return np.repeat(rows, n, axis=0)
        return None

    # ------------------------------------------------------------------ main
    def volumes(self, sources: list[str]) -> list[Volume]:
        dim_desc = self.visu.get("VisuCoreDimDesc", "spatial")
        dim_desc = [dim_desc] if isinstance(dim_desc, str) else list(dim_desc)
        core_dim = self._int("VisuCoreDim")
        if core_dim not in (2, 3) or any(d != "spatial" for d in dim_desc):
            raise _NotAnImage(
                f"its frames are {core_dim}D {'/'.join(map(str, dim_desc))} (VisuCoreDimDesc), "
                "not images")
        size = np.asarray(self._require("VisuCoreSize")).reshape(-1)
        if size.size != core_dim or not np.issubdtype(size.dtype, np.integer) or np.any(size < 1):
            raise ReadError(f"{self.visu_path}: VisuCoreSize {size.tolist()} does not match "
                            f"VisuCoreDim {core_dim}; the file is damaged")
        size = size.astype(np.int64)
        n_frames = self._int("VisuCoreFrameCount") if "VisuCoreFrameCount" in self.visu else 1
        layout = self._layout(core_dim, size, n_frames)
        data = self._read_data(size, n_frames, layout)  # float32 (X, Y, Z, M), scaled
        return self._assemble(data, size, core_dim, n_frames, layout, sources)

    # ------------------------------------------------------------------ frame groups
    def _layout(self, core_dim: int, size: np.ndarray, n_frames: int) -> _Layout:
        groups = self._groups(n_frames)
        if not groups and n_frames > 1:
            if core_dim == 2:
                groups = [_Group(_SLICE_GROUP, n_frames)]
                self.notes.append(f"no VisuFGOrderDesc: the {n_frames} frames were taken as slices")
            else:
                groups = [_Group("FG_FRAME", n_frames)]
                self.notes.append(f"no VisuFGOrderDesc: the {n_frames} 3D frames form the "
                                  "measurement axis")
        ids = [g.id for g in groups]
        slice_index = ids.index(_SLICE_GROUP) if core_dim == 2 and _SLICE_GROUP in ids else None
        if core_dim == 3 and _SLICE_GROUP in ids:
            self.notes.append("3D frames with an FG_SLICE group: the slabs are kept on the "
                              "measurement axis")
        complex_index = None
        if "FG_COMPLEX" in ids and groups[ids.index("FG_COMPLEX")].length == 2:
            complex_index = ids.index("FG_COMPLEX")
        measured = [i for i in range(len(groups)) if i not in (slice_index, complex_index)]
        n_z = groups[slice_index].length if slice_index is not None else (
            int(size[2]) if core_dim == 3 else 1)
        return _Layout(groups, slice_index, complex_index, measured, n_z)

    def _groups(self, n_frames: int) -> list[_Group]:
        desc = self.visu.get("VisuFGOrderDesc")
        if desc is None or self.visu.get("VisuFGOrderDescDim", 1) == 0:
            return []
        desc = [desc] if isinstance(desc, tuple) else desc
        deps = self.visu.get("VisuGroupDepVals", [])
        deps = [deps] if isinstance(deps, tuple) else deps
        if not isinstance(desc, list) or not isinstance(deps, list):
            raise ReadError(f"{self.visu_path}: VisuFGOrderDesc/VisuGroupDepVals are not lists of "
                            "structs; the file is damaged")
        groups = []
        for item in desc:
            if (not isinstance(item, tuple) or len(item) != 5
                    or not all(isinstance(item[k], int) for k in (0, 3, 4))):
                raise ReadError(f"{self.visu_path}: VisuFGOrderDesc entry {item!r} is not "
                                "(len, <id>, <comment>, start, count); the file is damaged")
            length, gid, comment, start, count = item
            dep = {}
            for d in deps[start:start + count]:
                if isinstance(d, tuple) and len(d) == 2 and isinstance(d[1], int):
                    dep[str(d[0])] = d[1]
            groups.append(_Group(str(gid), int(length), str(comment), dep))
        total = int(np.prod([g.length for g in groups])) if groups else 1
        if total != n_frames or any(g.length < 1 for g in groups):
            listing = " x ".join(f"{g.id}({g.length})" for g in groups)
            raise ReadError(
                f"{self.visu_path}: the frame groups ({listing} = {total} frames) do not match "
                f"VisuCoreFrameCount {n_frames}; the file is damaged — reconstruct again")
        return groups

    # ------------------------------------------------------------------ data
    def _dtype(self) -> np.dtype:
        word = str(self._require("VisuCoreWordType"))
        if word not in WORD_TYPES:
            raise ReadError(
                f"{self.visu_path}: VisuCoreWordType {word!r} is not a ParaVision pixel type "
                f"({', '.join(WORD_TYPES)}); the file is damaged or from an unsupported "
                "ParaVision version")
        order = self.visu.get("VisuCoreByteOrder")
        if order is None:
            order = "littleEndian"
            self.notes.append("VisuCoreByteOrder missing; 2dseq read as little-endian")
        if order not in _BYTE_ORDERS:
            raise ReadError(f"{self.visu_path}: VisuCoreByteOrder {order!r} is neither "
                            "littleEndian nor bigEndian; the file is damaged")
        return np.dtype(_BYTE_ORDERS[order] + WORD_TYPES[word])

    def _per_frame(self, name: str, n_frames: int, default: float) -> np.ndarray:
        values = self._floats(name, self.visu)
        if values is None:
            if name in self.visu:
                raise ReadError(f"{self.visu_path}: {name} is not a list of numbers; "
                                "the file is damaged")
            return np.full(n_frames, default)
        if values.size == 1:
            values = np.full(n_frames, values[0])
        if values.size != n_frames or not np.all(np.isfinite(values)):
            raise ReadError(
                f"{self.visu_path}: {name} lists {values.size} values for {n_frames} frames "
                "(or non-finite values); the file is damaged — reconstruct again")
        return values

    def _read_data(self, size: np.ndarray, n_frames: int, layout: _Layout) -> np.ndarray:
        dtype = self._dtype()
        per_frame = int(np.prod(size))
        count = per_frame * n_frames
        expected = count * dtype.itemsize
        try:
            actual = self.seq_path.stat().st_size
        except OSError as exc:
            raise ReadError(f"{self.seq_path}: cannot be read ({_one_line(exc)})") from exc
        blocks = 1
        if actual != expected:
            frame_type = " ".join(np.atleast_1d(self.visu.get("VisuCoreFrameType", "")).astype(str))
            frame_type = frame_type.upper()
            if actual == 2 * expected and "COMPLEX" in frame_type:
                blocks = 2
            else:
                desc = (f"VisuCoreSize {'x'.join(map(str, size.tolist()))}, VisuCoreFrameCount "
                        f"{n_frames}, {self.visu.get('VisuCoreWordType')}")
                if actual < expected:
                    raise ReadError(
                        f"{self.seq_path}: holds {actual} bytes but visu_pars ({desc}) needs "
                        f"{expected}; the file is truncated — copy the scan from the scanner again")
                raise ReadError(
                    f"{self.seq_path}: holds {actual} bytes but visu_pars ({desc}) describes "
                    f"{expected}; visu_pars does not belong to this 2dseq — copy the whole pdata "
                    "folder again")
        try:
            raw = np.fromfile(self.seq_path, dtype=dtype, count=count * blocks)
        except OSError as exc:
            raise ReadError(f"{self.seq_path}: cannot be read ({_one_line(exc)}); "
                            "copy the scan again") from exc
        if raw.size != count * blocks:
            raise ReadError(f"{self.seq_path}: ended early while reading; the file is truncated "
                            "— copy the scan from the scanner again")
        slope = self._per_frame("VisuCoreDataSlope", n_frames, 1.0)
        offset = self._per_frame("VisuCoreDataOffs", n_frames, 0.0)
        parts = [self._scaled(raw[b * count:(b + 1) * count], size, n_frames, layout, slope, offset)
                 for b in range(blocks)]
        if blocks == 2:
            self.notes.append("complex reconstruction (real frames, then imaginary frames): "
                              "magnitude computed")
            return np.hypot(parts[0], parts[1], out=parts[0])
        return parts[0]

    def _scaled(self, raw, size, n_frames, layout: _Layout, slope, offset) -> np.ndarray:
        """Frames of one block -> C-contiguous float32 (X, Y, Z, M), slope/offset applied.

        On disk the frames follow each other with the first frame group
        varying fastest, each frame row by row with X fastest, i.e. the C
        order ``(g_last, ..., g_0, [z,] y, x)``. One transposed copy puts
        the axes in the order (X, Y, Z, measured groups slowest first), so
        that merging the measured groups is a free reshape.
        """
        groups = layout.groups
        k = len(groups)
        lengths = [g.length for g in reversed(groups)] or [1]
        k_axes = len(lengths)
        n_s = len(size)
        shaped = raw.reshape(tuple(lengths) + tuple(int(s) for s in size[::-1]))
        gaxis = {i: k_axes - 1 - i for i in range(k)}  # group index -> axis in ``shaped``
        x_ax, y_ax = k_axes + n_s - 1, k_axes + n_s - 2
        order = [x_ax, y_ax]
        if n_s == 3:
            order.append(k_axes)
        elif layout.slice_index is not None:
            order.append(gaxis[layout.slice_index])
        order += [gaxis[i] for i in reversed(layout.measured)]
        front = [gaxis[layout.complex_index]] if layout.complex_index is not None else []
        used = set(order + front)
        rest = [a for a in range(shaped.ndim) if a not in used]  # the length-1 placeholder axis
        perm = front + order + rest
        view = shaped.transpose(perm)
        scale_shape = tuple(lengths) + (1,) * n_s
        s = slope.reshape(scale_shape).transpose(perm)
        o = offset.reshape(scale_shape).transpose(perm)
        reverse = (str(self.visu.get("VisuCoreDiskSliceOrder", "")) == "disk_reverse_slice_order"
                   and layout.n_z > 1)
        if reverse:
            z = len(front) + 2
            # Only the pixel data are stored in reverse; the per-frame parameters
            # (slopes, positions) stay in slice order.
            view = np.flip(view, axis=z)
            self.notes.append("VisuCoreDiskSliceOrder is disk_reverse_slice_order: slices put "
                              "back in position order")
        data = np.array(view, dtype=np.float32, order="C")
        if not np.all(s == 1.0):
            data *= s.astype(np.float32)
        if not np.all(o == 0.0):
            data += o.astype(np.float32)
        if front:
            data = np.hypot(data[0], data[1])
            self.notes.append("FG_COMPLEX (real, imaginary) frames combined into the magnitude")
        nx, ny = int(size[0]), int(size[1])
        return data.reshape(nx, ny, layout.n_z, -1)

    # ------------------------------------------------------------------ geometry
    def _units_mm(self, core_dim: int) -> np.ndarray:
        units = self.visu.get("VisuCoreUnits", ["mm"] * core_dim)
        units = [units] if isinstance(units, str) else list(units)
        if len(units) == 1:
            units = units * core_dim
        factors = []
        for u in units[:core_dim]:
            if u not in _LENGTH_UNITS:
                raise GeometryError(
                    f"{self.visu_path}: VisuCoreUnits {units!r} are not lengths (mm, cm, m, um); "
                    "these frames are not spatial images")
            factors.append(_LENGTH_UNITS[u])
        return np.asarray(factors, dtype=np.float64)

    def _orientation(self, rows: np.ndarray) -> np.ndarray:
        m = rows.reshape(3, 3)
        if not np.allclose(m @ m.T, np.eye(3), atol=1e-3):
            raise GeometryError(
                f"{self.visu_path}: VisuCoreOrientation {np.round(m, 4).tolist()} is not a "
                "rotation (its rows must be orthonormal); the geometry is damaged")
        return m

    def _slice_geometry(self, layout: _Layout, core_dim: int, n_frames: int):
        n_rows = layout.n_z if core_dim == 2 else 1
        index = layout.slice_index if core_dim == 2 else None
        pos = self._along("VisuCorePosition", layout, index, n_frames, 3, broadcast=False)
        ori = self._along("VisuCoreOrientation", layout, index, n_frames, 9, broadcast=True)
        if n_rows == 1 and pos is not None:
            pos = pos[:1]
        if ori is not None and n_rows == 1:
            ori = ori[:1]
        if pos is None or pos.shape[0] != n_rows:
            raise GeometryError(
                f"{self.visu_path}: VisuCorePosition does not give one position per slice "
                f"({n_rows} slices); the geometry is incomplete — reconstruct again")
        if ori is None or ori.shape[0] != n_rows:
            raise GeometryError(
                f"{self.visu_path}: VisuCoreOrientation does not give one orientation per slice "
                f"({n_rows} slices); the geometry is incomplete — reconstruct again")
        return pos, np.stack([self._orientation(o) for o in ori])

    def _affine(self, size, core_dim, positions, orient) -> tuple[np.ndarray, list[str]]:
        notes = []
        extent = self._floats("VisuCoreExtent", self.visu)
        if extent is None or extent.size < core_dim or np.any(extent[:core_dim] <= 0):
            raise GeometryError(
                f"{self.visu_path}: VisuCoreExtent {self.visu.get('VisuCoreExtent')!r} must give "
                "a positive extent per frame axis")
        spacing = extent[:core_dim] * self._units_mm(core_dim) / size[:core_dim]
        r0, r1, r2 = orient
        if core_dim == 3:
            col2 = r2 * spacing[2]
        elif positions.shape[0] > 1:
            step = positions[1] - positions[0]
            dist = float(np.linalg.norm(step))
            along = float(step @ r2)
            if dist <= _TOL_MM:
                raise GeometryError(f"{self.visu_path}: slices 1 and 2 have the same "
                                    "VisuCorePosition; the geometry is damaged")
            if np.linalg.norm(step - along * r2) <= _TOL_MM + 1e-3 * dist:
                col2 = step
            else:
                sign = -1.0 if along < -_TOL_MM else 1.0
                col2 = sign * dist * r2
                notes.append(
                    f"VisuCorePosition moves {np.round(step, 4).tolist()} mm from slice to slice, "
                    f"not along the slice normal {np.round(r2, 4).tolist()} of "
                    f"VisuCoreOrientation; the normal was used with a spacing of {dist:g} mm — "
                    "check the geometry (was visu_pars edited?)")
        else:
            thick = self._floats("VisuCoreFrameThickness", self.visu)
            if thick is not None and thick.size and thick[0] > 0:
                col2 = r2 * float(thick[0])
            else:
                col2 = r2 * 1.0
                notes.append("single slice without VisuCoreFrameThickness: slice axis of 1 mm")
        lps = np.eye(4)
        lps[:3, 0] = r0 * spacing[0]
        lps[:3, 1] = r1 * spacing[1]
        lps[:3, 2] = col2
        lps[:3, 3] = positions[0]
        if self.opts.subject_position is not None:
            lps = self._reposition(lps, notes)
        ras = np.eye(4)
        ras[:3] = _LPS_TO_RAS @ lps[:3]
        return ras, notes

    def _reposition(self, lps: np.ndarray, notes: list) -> np.ndarray:
        stored = str(self.visu.get("VisuSubjectPosition", "Head_Supine"))
        wanted = self.opts.subject_position
        if stored == wanted:
            return lps
        if stored not in SUBJECT_POSITIONS:
            raise ValidationError(
                f"{self.visu_path}: VisuSubjectPosition {stored!r} cannot be corrected to "
                f"{wanted}; subject_position works between {', '.join(SUBJECT_POSITIONS)}")
        flip = np.asarray(SUBJECT_POSITIONS[wanted][1]) * np.asarray(SUBJECT_POSITIONS[stored][1])
        out = lps.copy()
        out[:3] = np.diag(flip) @ lps[:3]
        notes.append(f"subject position corrected from {stored} (as registered) to {wanted}")
        return out

    def _assemble(self, data, size, core_dim, n_frames, layout: _Layout, sources) -> list[Volume]:
        measured = [layout.groups[i] for i in layout.measured]
        multi = [g for g in measured if g.length > 1]
        if len(multi) > 1:
            listing = ", ".join(f"{g.id} ({g.length})" for g in multi)
            self.notes.append(f"frame groups {listing} flattened into one measurement axis "
                              "(the first varies fastest); no protocol set")
        meta, protocol, order = self._series_meta(layout, multi, n_frames)
        if order is not None:
            data = np.ascontiguousarray(data[..., order])
        if data.shape[3] == 1:
            data = data[..., 0]
        positions, orients = self._slice_geometry(layout, core_dim, n_frames)
        runs = _runs(positions, orients)
        volumes = []
        for r, (start, stop) in enumerate(runs):
            affine, run_notes = self._affine(size, core_dim, positions[start:stop], orients[start])
            vol_meta = dict(meta)
            notes = list(self.notes) + run_notes
            if len(runs) > 1:
                vol_meta["SeriesDescription"] = (f"{meta.get('SeriesDescription', '')} "
                                                 f"(slice package {r + 1} of {len(runs)})").strip()
                vol_meta["ParaVisionSlicePackage"] = r + 1
                notes.append(f"the slices lie in {len(runs)} stacks (orientations or spacings): "
                             "one series per slice package")
                part = np.ascontiguousarray(data[:, :, start:stop])
            else:
                part = data
            if core_dim == 2 and stop - start > 1:
                vol_meta["SpacingBetweenSlices"] = float(
                    np.linalg.norm(positions[start + 1] - positions[start]))
            vol_meta["notes"] = notes
            volumes.append(Volume(part, affine, protocol=protocol, meta=vol_meta,
                                  sources=tuple(sources)))
        return volumes

    # ------------------------------------------------------------------ parameters
    def _version(self) -> str | None:
        for src, key in ((self.acqp, "ACQ_sw_version"), (self.visu, "VisuAcqSoftwareVersion"),
                         (self.visu, "VisuCreatorVersion")):
            value = src.get(key)
            if isinstance(value, str) and value.strip():
                return re.sub(r"^(PV|ParaVision)[\s\-_]*", "", value.strip(), flags=re.IGNORECASE)
        found = re.search(r"ParaVision\s+(.+)$", str(self.visu.get("TITLE", "")))
        return found.group(1).strip() if found else None

    def _field_strength(self) -> tuple[float | None, str | None]:
        b0 = self._floats("VisuMagneticFieldStrength", self.visu)
        if b0 is not None and b0.size and b0[0] > 0:
            return round(float(b0[0]), 2), "visu_pars VisuMagneticFieldStrength"
        for src, freq_key, nuc_key, where in (
                (self.acqp, "BF1", "NUC1", "acqp BF1"),
                (self.visu, "VisuAcqImagingFrequency", "VisuAcqImagedNucleus",
                 "visu_pars VisuAcqImagingFrequency")):
            freq = self._floats(freq_key, src)
            if freq is None or not freq.size or freq[0] <= 0:
                continue
            nucleus = str(src.get(nuc_key, "1H")).strip().upper()
            gamma = GYROMAGNETIC_RATIO_MHZ_PER_T.get(nucleus)
            if gamma is None:
                self.notes.append(f"field strength unknown: nucleus {nucleus!r} ({where}) is "
                                  "not in GYROMAGNETIC_RATIO_MHZ_PER_T")
                return None, None
            return round(float(freq[0]) / gamma, 2), f"{where} / gamma({nucleus})"
        return None, None

    def _first(self, *candidates) -> np.ndarray | None:
        for name, src in candidates:
            v = self._floats(name, src)
            if v is not None and v.size:
                return v
        return None

    def _series_meta(self, layout: _Layout, multi: list[_Group], n_frames: int):
        visu, acqp, method = self.visu, self.acqp, self.method
        meta: dict = {"Manufacturer": "Bruker"}
        scan_number = None
        if self.scan is not None and self.scan.name.isdigit():
            scan_number = int(self.scan.name)
        elif isinstance(visu.get("VisuExperimentNumber"), int):
            scan_number = visu["VisuExperimentNumber"]
        elif isinstance(visu.get("VisuSeriesNumber"), int):
            scan_number = visu["VisuSeriesNumber"] >> 16  # PV5.1: EXPNO * 2**16 + PROCNO
        reco_number = int(self.pdata.name) if self.pdata.name.isdigit() else None
        if reco_number is None and isinstance(visu.get("VisuProcessingNumber"), int):
            reco_number = visu["VisuProcessingNumber"]
        elif reco_number is None and isinstance(visu.get("VisuSeriesNumber"), int):
            reco_number = visu["VisuSeriesNumber"] & 0xFFFF
        if scan_number is not None:
            meta["SeriesNumber"] = scan_number
        description = next((d for d in (visu.get("VisuAcquisitionProtocol"),
                                        acqp.get("ACQ_scan_name"), acqp.get("ACQ_protocol_name"))
                            if isinstance(d, str) and d.strip()), None)
        if description:
            meta["SeriesDescription"] = description.strip()
            meta["ProtocolName"] = description.strip()
        when = _iso_datetime(visu.get("VisuAcqDate"))
        if when:
            meta["AcquisitionDateTime"] = when
        for key, name in (("SequenceName", "VisuAcqSequenceName"),
                          ("ManufacturersModelName", "VisuStation"),
                          ("InstitutionName", "VisuInstitution"),
                          ("ImagedNucleus", "VisuAcqImagedNucleus")):
            v = visu.get(name)
            if isinstance(v, str) and v.strip():
                meta[key] = v.strip()
        method_name = method.get("Method") or acqp.get("ACQ_method")
        if isinstance(method_name, str) and method_name.strip():
            meta["PulseSequenceDetails"] = method_name.strip()
        version = self._version()
        if version:
            meta["SoftwareVersions"] = f"ParaVision {version}"
        meta["ParaVisionVersion"] = version
        if isinstance(visu.get("VisuVersion"), int):
            meta["VisuVersion"] = visu["VisuVersion"]
        meta["ParaVisionScan"] = scan_number
        meta["ParaVisionReco"] = reco_number
        meta["ParaVisionFrameGroups"] = [f"{g.id}({g.length})" for g in layout.groups]
        position = visu.get("VisuSubjectPosition", acqp.get("ACQ_patient_pos"))
        if isinstance(position, str) and position:
            meta["ParaVisionSubjectPosition"] = position
            effective = self.opts.subject_position or position
            code = SUBJECT_POSITIONS.get(effective, (None,))[0] or _LATERAL_POSITIONS.get(effective)
            if code:
                meta["PatientPosition"] = code
        if isinstance(visu.get("VisuSubjectType"), str):
            meta["ParaVisionSubjectType"] = visu["VisuSubjectType"]
            if visu["VisuSubjectType"] == "Quadruped":
                self.notes.append(
                    "VisuSubjectType Quadruped: the affine is in the DICOM patient frame as "
                    "ParaVision writes it (left, dorsal as posterior, cranial as superior), not an "
                    "atlas-style quadruped RAS")
        slope = self._floats("VisuCoreDataSlope", visu)
        offset = self._floats("VisuCoreDataOffs", visu)
        if ((slope is not None and np.any(slope != 1.0))
                or (offset is not None and np.any(offset != 0))):
            self.notes.append("VisuCoreDataSlope/VisuCoreDataOffs applied per frame")
        transposed = self._floats("VisuCoreTransposition", visu)
        if transposed is not None and np.any(transposed != 0):
            self.notes.append("VisuCoreTransposition is set: the geometry was taken from "
                              "VisuCoreOrientation/VisuCoreExtent as written for the stored frames")
        thick = self._floats("VisuCoreFrameThickness", visu)
        if thick is not None and thick.size:
            meta["SliceThickness"] = float(thick[0])
        b0, b0_source = self._field_strength()
        if b0 is not None:
            meta["MagneticFieldStrength"] = b0
            meta["MagneticFieldStrengthSource"] = b0_source
        freq = self._floats("VisuAcqImagingFrequency", visu)
        if freq is not None and freq.size:
            meta["ImagingFrequency"] = float(freq[0])
        tr = self._first(("VisuAcqRepetitionTime", visu), ("PVM_RepetitionTime", method),
                         ("ACQ_repetition_time", acqp))
        tr_s = None
        if tr is not None:
            tr_s = float(tr[0]) / 1e3
            meta["RepetitionTime"] = (tr_s if np.allclose(tr, tr[0])
                                      else [float(t) / 1e3 for t in tr])
        fa = self._first(("VisuAcqFlipAngle", visu), ("ACQ_flip_angle", acqp))
        if fa is not None:
            meta["FlipAngle"] = float(fa[0])
        etl = self._floats("VisuAcqEchoTrainLength", visu)
        if etl is not None and etl.size:
            meta["EchoTrainLength"] = int(etl[0])
        te = self._first(("VisuAcqEchoTime", visu), ("PVM_EchoTime", method),
                         ("ACQ_echo_time", acqp))
        if te is not None:
            meta["EchoTime"] = float(te[0]) / 1e3
        ti = self._floats("VisuAcqInversionTime", visu)
        if ti is not None and ti.size == 1 and ti[0] > 0:
            meta["InversionTime"] = float(ti[0]) / 1e3
        protocol, order = None, None
        if len(multi) == 1:
            protocol, order = self._protocol(multi[0], layout, n_frames, meta, b0, tr_s)
        return meta, protocol, order

    def _per_element(self, group: _Group, layout: _Layout, n_frames: int, name: str,
                     source: dict) -> np.ndarray | None:
        """One value of ``name`` per element of ``group``, or None."""
        if source is self.visu:
            v = self._along(name, layout, layout.groups.index(group), n_frames, 1, broadcast=False)
            return None if v is None else v.reshape(-1)
        v = self._floats(name, source)
        return v if v is not None and v.size == group.length else None

    def _protocol(self, group: _Group, layout: _Layout, n_frames: int, meta: dict, b0, tr_s):
        n = group.length
        try:
            if group.id == "FG_ECHO":
                for name, src in (("VisuAcqEchoTime", self.visu), ("EffectiveTE", self.method),
                                  ("MultiEchoTime", self.method), ("ACQ_echo_time", self.acqp)):
                    te = self._per_element(group, layout, n_frames, name, src)
                    if te is not None:
                        break
                else:
                    self.notes.append(
                        f"FG_ECHO with {n} echoes but no echo times (VisuAcqEchoTime, method "
                        "EffectiveTE) with one value per echo; no protocol set — give the echo "
                        "times to the model")
                    return None, None
                te_s, order = _sorted(te / 1e3)
                if order is not None:
                    self.notes.append("echoes reordered by increasing echo time")
                meta["EchoTime"] = [float(t) for t in te_s]
                return MultiEchoProtocol(te_s, magnetic_field_strength=b0,
                                         source=f"{self._file_of(src)}: {name}"), order
            if group.id in ("FG_DIFFUSION", "FG_DTI"):
                return self._diffusion(group, layout, n_frames, meta), None
            if group.id == "FG_IRMODE":
                for name, src in (("VisuAcqInversionTime", self.visu),
                                  ("PVM_InversionTime", self.method)):
                    ti = self._per_element(group, layout, n_frames, name, src)
                    if ti is not None:
                        break
                else:
                    self.notes.append(f"FG_IRMODE with {n} inversions but no inversion time per "
                                      "inversion; no protocol set")
                    return None, None
                ti_s, order = _sorted(ti / 1e3)
                if order is not None:
                    self.notes.append("inversions reordered by increasing inversion time")
                meta["InversionTime"] = [float(t) for t in ti_s]
                return InversionRecoveryProtocol(ti_s, repetition_time=tr_s,
                                                 source=f"{self._file_of(src)}: {name}"), order
            if group.id == "FG_CYCLE":
                scan_time = self._floats("VisuAcqScanTime", self.visu)
                if scan_time is None or not scan_time.size or scan_time[0] <= 0:
                    self.notes.append(f"FG_CYCLE with {n} repetitions but no VisuAcqScanTime; "
                                      "no frame times, no protocol set")
                    return None, None
                dt = float(scan_time[0]) / 1e3 / n
                self.notes.append(f"frame times estimated as VisuAcqScanTime / {n} = {dt:g} s per "
                                  "repetition")
                return DynamicProtocol(np.arange(n) * dt,
                                       source=f"{self.visu_path}: VisuAcqScanTime"), None
        except ProtocolError as exc:
            self.notes.append(f"no protocol set: {exc}")
            return None, None
        self.notes.append(f"frame group {group.id} ({n}) is the measurement axis; no protocol "
                          "for it")
        return None, None

    def _diffusion(self, group: _Group, layout: _Layout, n_frames: int, meta: dict):
        n = group.length
        bmat = self._along("VisuAcqDiffusionBMatrix", layout, layout.groups.index(group), n_frames,
                           9, broadcast=False)
        vecs = None
        if bmat is not None:
            mats = bmat.reshape(n, 3, 3)
            bvals = np.trace(mats, axis1=1, axis2=2)
            vecs = np.zeros((n, 3))
            for k in range(n):
                if bvals[k] > 0:
                    _, v = np.linalg.eigh(0.5 * (mats[k] + mats[k].T))
                    vecs[k] = _LPS_TO_RAS @ v[:, -1]
            source = f"{self.visu_path}: VisuAcqDiffusionBMatrix"
        else:
            bvals = self._per_element(group, layout, n_frames, "PVM_DwEffBval", self.method)
            source = f"{self._file_of(self.method)}: PVM_DwEffBval"
            if bvals is None:
                self.notes.append(f"{group.id} with {n} weightings but no b-values "
                                  "(VisuAcqDiffusionBMatrix, method PVM_DwEffBval); "
                                  "no protocol set")
                return None
            self.notes.append("diffusion directions not read (no VisuAcqDiffusionBMatrix)")
        meta["DiffusionBValues"] = [float(b) for b in bvals]
        return DiffusionProtocol(bvals, b_vectors=vecs, source=source)


def _iso_datetime(value) -> str | None:
    """A ParaVision date as BIDS ``YYYY-MM-DDThh:mm:ss`` (local time), or None.

    PV5.1 writes ``12:20:46 30 Nov 2011``; PV6/360 ``2015-02-19T14:10:53,123+0100``.
    """
    if not isinstance(value, str):
        return None
    text = value.strip()
    iso = re.match(r"^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})", text)
    if iso:
        return f"{iso.group(1)}T{iso.group(2)}"
    try:
        return datetime.strptime(text, "%H:%M:%S %d %b %Y").strftime("%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None


def _sorted(values: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    order = np.argsort(values, kind="stable")
    if np.all(order == np.arange(values.size)):
        return values, None
    return values[order], order


def _runs(positions: np.ndarray, orients: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive slices sharing an orientation and a constant step: (start, stop) pairs."""
    n = positions.shape[0]
    runs, start = [], 0
    for k in range(1, n):
        same_orient = np.allclose(orients[k], orients[start], atol=1e-4)
        if same_orient and k - start >= 2:
            step0 = positions[start + 1] - positions[start]
            step = positions[k] - positions[k - 1]
            same_orient = np.allclose(step, step0, atol=_TOL_MM + 1e-3 * np.linalg.norm(step0))
        if not same_orient:
            runs.append((start, k))
            start = k
    runs.append((start, n))
    return runs
