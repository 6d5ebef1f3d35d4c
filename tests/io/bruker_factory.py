"""Synthetic Bruker ParaVision scans for tests: small folders written from a documented layout.

Layout written by :func:`write_scan` (one scan; :func:`write_study` writes
several under one study folder)::

    <study>/<E>/acqp               JCAMP-DX: ACQ_sw_version, NUC1, BF1, ACQ_scan_name,
                                   ACQ_method, ACQ_patient_pos, ACQ_echo_time (ms),
                                   ACQ_repetition_time (ms), ACQ_flip_angle (deg), NI, NR
    <study>/<E>/method             JCAMP-DX: Method, PVM_EchoTime, PVM_RepetitionTime (ms),
                                   PVM_NEchoImages, EffectiveTE (ms, MSME), PVM_SliceThick,
                                   PVM_SPackArrSliceOrient
    <study>/<E>/pdata/<P>/visu_pars   JCAMP-DX Visu parameters (below)
    <study>/<E>/pdata/<P>/reco        JCAMP-DX: RECO_wordtype, RECO_size, RECO_byte_order,
                                      RECO_map_slope
    <study>/<E>/pdata/<P>/2dseq       the frames, headerless

``visu_pars`` describes ``n_slices`` 2D frames of ``matrix`` = (X, Y)
pixels (``VisuCoreSize``; X = image columns, stored fastest) times the
echoes: frame groups ``FG_ECHO`` and ``FG_SLICE`` in ``frame_order`` (the
first listed varies fastest, as in ParaVision), ``VisuGroupDepVals`` making
``VisuAcqEchoTime`` depend on the echo group and ``VisuCoreOrientation``/
``VisuCorePosition`` on the slice group. Geometry is in the Visu (DICOM
patient, LPS) frame: the orientation rows are the X, Y directions and the
slice normal (:data:`ORIENTATIONS`); slice ``s`` (in position order) has its
first voxel centre at ``first_position_mm + s * slice_step_mm * normal``.

Pixel values: the raw integer stored for voxel (x, y) of slice z and echo m
is :func:`raw_value` ``= 1000 (m + 1) + 100 z + 10 y + x``; the frame of
(z, m) has ``VisuCoreDataSlope`` :func:`frame_slope` ``= slope (1 + 0.1 m +
0.01 z)`` and ``VisuCoreDataOffs`` ``offset``, so a correct reader returns
``raw_value * frame_slope + offset`` at [x, y, z, m].

ParaVision versions differ as on real systems: ``"5.1"`` (``##TITLE=Parameter
List``, VisuVersion 1, ``VisuSeriesNumber = E * 2**16 + P``, ``ACQ_sw_version
<PV 5.1>``), ``"6"`` (title with ``ParaVision 6.0.1``, VisuVersion 3,
``VisuExperimentNumber``/``VisuProcessingNumber``, ``<Bruker:MGE>`` method
names), ``"360"`` (title ``ParaVision 360 V3.5``, VisuVersion 8,
``VisuSubjectType``, slice-package parameters, ``@n*(v)`` runs for repeated
values, ``ACQ_sw_version <PV-360.3.5>``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "ORIENTATIONS",
    "ScanSpec",
    "Str",
    "frame_slope",
    "raw_value",
    "write_jcamp",
    "write_scan",
    "write_study",
]

#: VisuCoreOrientation rows (X direction, Y direction, slice normal) in the Visu
#: patient frame (x to the subject's left, y posterior, z head), as ParaVision
#: writes them for the standard slice orientations (the DICOM conventions).
ORIENTATIONS = {
    "axial": ((1, 0, 0), (0, 1, 0), (0, 0, 1)),
    "coronal": ((1, 0, 0), (0, 0, -1), (0, 1, 0)),
    "sagittal": ((0, 1, 0), (0, 0, -1), (-1, 0, 0)),
}

_VERSIONS = {
    "5.1": dict(title="Parameter List", visu_version=1, creator="5.1", sw="PV 5.1"),
    "6": dict(title="Parameter List, ParaVision 6.0.1", visu_version=3, creator="6.0.1",
              sw="PV 6.0.1"),
    "360": dict(title="Parameter List, ParaVision 360 V3.5", visu_version=8, creator="360.3.5",
                sw="PV-360.3.5"),
}

_WORDS = {"_8BIT_UNSGN_INT": "u1", "_16BIT_SGN_INT": "i2", "_32BIT_SGN_INT": "i4",
          "_32BIT_FLOAT": "f4"}


class Str(str):
    """A JCAMP-DX string value, written ``<text>`` (a plain ``str`` is an enumeration)."""


def raw_value(x, y, z, m):
    """The raw pixel value the factory stores at (x, y) of slice z, echo m."""
    return 1000 * (np.asarray(m) + 1) + 100 * np.asarray(z) + 10 * np.asarray(y) + np.asarray(x)


def frame_slope(z, m, slope):
    """``VisuCoreDataSlope`` of the frame of slice z, echo m."""
    return slope * (1.0 + 0.1 * np.asarray(m) + 0.01 * np.asarray(z))


@dataclass
class ScanSpec:
    """A synthetic scan; defaults: a ParaVision 6 MGE, 3 axial slices, 4 echoes, prone."""

    version: str = "6"
    method: str = "MGE"
    protocol: str = "MGE_T2star"
    matrix: tuple = (6, 4)
    extent_mm: tuple = (12.0, 10.0)
    n_slices: int = 3
    slice_thickness_mm: float = 0.8
    slice_step_mm: float = 1.2            # signed: negative = slices against the normal
    first_position_mm: tuple = (-6.0, -5.0, -1.5)
    orientation: str = "axial"
    echo_times_ms: tuple = (3.0, 6.5, 10.0, 13.5)
    frame_order: tuple = ("FG_ECHO", "FG_SLICE")
    subject_position: str = "Head_Prone"
    subject_type: str = "Quadruped"       # written for version 360 only
    repetition_time_ms: float = 800.0
    flip_angle_deg: float = 30.0
    bf1_mhz: float = 300.3
    nucleus: str = "1H"
    word_type: str = "_16BIT_SGN_INT"
    byte_order: str = "littleEndian"
    slope: float = 0.5
    offset: float = 0.0
    visu_echo_times: bool = True          # False: echo times only in method EffectiveTE
    disk_reverse: bool = False            # write slices in disk_reverse_slice_order
    extra_visu: dict = field(default_factory=dict)   # records added to / replacing visu_pars
    drop_visu: tuple = ()                 # record names left out of visu_pars

    @property
    def n_echoes(self) -> int:
        return len(self.echo_times_ms)

    def rows(self) -> np.ndarray:
        return np.asarray(ORIENTATIONS[self.orientation], dtype=float)

    def positions(self) -> np.ndarray:
        """First-voxel centre of each slice (position order), mm, Visu frame."""
        normal = self.rows()[2]
        first = np.asarray(self.first_position_mm, float)
        return np.stack([first + s * self.slice_step_mm * normal for s in range(self.n_slices)])


# ----------------------------------------------------------------------------- JCAMP-DX


def _fmt(v) -> str:
    if isinstance(v, Str):
        return f"<{v}>"
    if isinstance(v, (bool, np.bool_)):
        return "Yes" if v else "No"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.15g}"
    if isinstance(v, tuple):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    return str(v)


def _wrap(tokens: list[str], width: int = 78) -> str:
    """Tokens joined by spaces, wrapped before ``width`` as ParaVision does."""
    lines, line = [], ""
    for tok in tokens:
        if line and len(line) + 1 + len(tok) > width:
            lines.append(line + " ")
            line = tok
        else:
            line = f"{line} {tok}" if line else tok
    lines.append(line)
    return "\n".join(lines)


def _runs(tokens: list[str]) -> list[str]:
    """ParaVision 360 style: a run of n equal values written ``@n*(v)``."""
    out, i = [], 0
    while i < len(tokens):
        j = i
        while j < len(tokens) and tokens[j] == tokens[i]:
            j += 1
        out.append(f"@{j - i}*({tokens[i]})" if j - i > 2 else " ".join(tokens[i:j]))
        i = j
    return out


def _record(name: str, value, compress: bool) -> str:
    head = f"##${name}="
    if isinstance(value, Str):
        return f"{head}( {max(len(value) + 1, 65)} )\n<{value}>"
    if isinstance(value, tuple):
        return head + _fmt(value)
    if isinstance(value, (list, np.ndarray)):
        if isinstance(value, list) and value and isinstance(value[0], tuple):
            return f"{head}( {len(value)} )\n" + _wrap([_fmt(v) for v in value])
        if isinstance(value, list) and value and isinstance(value[0], Str):
            return f"{head}( {len(value)}, 65 )\n" + _wrap([_fmt(v) for v in value])
        if isinstance(value, list) and value and isinstance(value[0], str):
            return f"{head}( {len(value)} )\n" + _wrap(list(value))
        arr = np.asarray(value)
        dims = ", ".join(str(d) for d in arr.shape)
        tokens = [_fmt(v) for v in arr.reshape(-1).tolist()]
        if compress:
            tokens = _runs(tokens)
        return f"{head}( {dims} )\n" + _wrap(tokens)
    return head + _fmt(value)


def write_jcamp(path, records: dict, *, title: str = "Parameter List", compress: bool = False,
                owner: str = "nmrsu") -> Path:
    """Write ``records`` ({name: value}) as a ParaVision JCAMP-DX parameter file.

    Values: ``int``/``float`` scalars; ``str`` enumerations (bare); :class:`Str`
    strings (``( 65 ) <text>``); ``tuple`` structs; lists or arrays of numbers
    (``( dims )`` then the values, wrapped at ~80 characters); lists of ``str``
    (enumerations), of :class:`Str` (``( n, 65 )``) or of tuples (struct arrays).
    ``compress`` writes runs of equal numbers as ``@n*(v)`` (ParaVision 360).
    """
    path = Path(path)
    lines = [f"##TITLE={title}", "##JCAMPDX=4.24", "##DATATYPE=Parameter Values",
             "##ORIGIN=Bruker BioSpin MRI GmbH", f"##OWNER={owner}",
             "$$ Tue Mar  5 10:00:00 2024 CET (UT+1h)  nmrsu",
             f"$$ /opt/data/{path.name}"]
    names = list(records)
    for k, name in enumerate(names):
        lines.append(_record(name, records[name], compress))
        if k % 4 == 3:
            lines.append("$$ @vis= " + " ".join(names[k - 3:k + 1]))
    lines.append("##END=")
    path.write_text("\n".join(lines) + "\n", encoding="latin-1")
    return path


# ----------------------------------------------------------------------------- scans


def _frames(spec: ScanSpec) -> tuple[np.ndarray, np.ndarray]:
    """Raw frames in file order (first frame group fastest) and the slope of each frame."""
    nx, ny = spec.matrix
    x, y, z, m = np.meshgrid(np.arange(nx), np.arange(ny), np.arange(spec.n_slices),
                             np.arange(spec.n_echoes), indexing="ij")
    raw = raw_value(x, y, z, m)                       # (X, Y, Z, M)
    slopes = frame_slope(np.arange(spec.n_slices)[:, None], np.arange(spec.n_echoes)[None, :],
                         spec.slope)                  # (Z, M)
    axis_of = {"FG_SLICE": 2, "FG_ECHO": 3}
    groups = [g for g in spec.frame_order if g in axis_of]
    missing = [axis_of[g] for g in axis_of if g not in groups]   # groups of length 1, not listed
    # File order: C order (g_last, ..., g_0, y, x).
    perm = missing + [axis_of[g] for g in reversed(groups)] + [1, 0]
    frames = raw.transpose(perm)
    frames = frames.reshape(frames.shape[len(missing):])
    slope_perm = [a - 2 for a in missing] + [axis_of[g] - 2 for g in reversed(groups)]
    frame_slopes = slopes.transpose(slope_perm).reshape(-1)
    if spec.disk_reverse:
        frames = np.flip(frames, axis=list(reversed(groups)).index("FG_SLICE"))
    return np.ascontiguousarray(frames), frame_slopes


def _visu(spec: ScanSpec, scan_number: int, reco_number: int) -> dict:
    v = _VERSIONS[spec.version]
    n_frames = spec.n_slices * spec.n_echoes
    rows = spec.rows()
    frames, slopes = _frames(spec)
    deps, desc = [], []
    lengths = {"FG_SLICE": spec.n_slices, "FG_ECHO": spec.n_echoes}
    dep_names = {"FG_SLICE": ["VisuCoreOrientation", "VisuCorePosition"],
                 "FG_ECHO": ["VisuAcqEchoTime"] if spec.visu_echo_times else []}
    for g in spec.frame_order:
        start = len(deps)
        deps += [(Str(name), 0) for name in dep_names[g]]
        desc.append((lengths[g], Str(g), Str(""), start, len(dep_names[g])))
    visu = {
        "VisuVersion": v["visu_version"],
        "VisuUid": Str(f"2.16.756.5.5.100.1.{scan_number}.{reco_number}"),
        "VisuCreator": Str("ParaVision"),
        "VisuCreatorVersion": Str(v["creator"]),
        "VisuCoreFrameCount": n_frames,
        "VisuCoreDim": 2,
        "VisuCoreSize": list(spec.matrix),
        "VisuCoreDimDesc": ["spatial", "spatial"],
        "VisuCoreExtent": [float(e) for e in spec.extent_mm],
        "VisuCoreFrameThickness": [spec.slice_thickness_mm],
        "VisuCoreUnits": [Str("mm"), Str("mm")],
        "VisuCoreOrientation": np.tile(rows.reshape(1, 9), (spec.n_slices, 1)),
        "VisuCorePosition": spec.positions(),
        "VisuCoreDataMin": np.zeros(n_frames),
        "VisuCoreDataMax": np.full(n_frames, 32767.0),
        "VisuCoreDataOffs": np.full(n_frames, float(spec.offset)),
        "VisuCoreDataSlope": slopes,
        "VisuCoreFrameType": "MAGNITUDE_IMAGE",
        "VisuCoreWordType": spec.word_type,
        "VisuCoreByteOrder": spec.byte_order,
        "VisuCoreDiskSliceOrder": ("disk_reverse_slice_order" if spec.disk_reverse
                                   else "disk_normal_slice_order"),
        "VisuFGOrderDescDim": len(desc),
        "VisuFGOrderDesc": desc,
        "VisuGroupDepVals": deps,
        "VisuSubjectName": Str("mouse^01"),
        "VisuSubjectId": Str("M01"),
        "VisuSubjectComment": Str("tumour model (left flank), day 7: T2*, (R2* map)"),
        "VisuStudyUid": Str("2.16.756.5.5.100.1"),
        "VisuStudyId": Str("study"),
        "VisuSubjectPosition": spec.subject_position,
        "VisuSeriesTypeId": Str("ACQ_BRUKER_PVM"),
        "VisuInstitution": Str("Test Lab"),
        "VisuStation": Str("BioSpec 94/20"),
        "VisuAcqDate": Str("2024-03-05T10:00:00,000+0100"),
        "VisuAcqSequenceName": Str(f"{spec.method} (pvm)"),
        "VisuAcqImagingFrequency": spec.bf1_mhz,
        "VisuAcqImagedNucleus": Str(spec.nucleus),
        "VisuAcqRepetitionTime": [spec.repetition_time_ms],
        "VisuAcqFlipAngle": spec.flip_angle_deg,
        "VisuAcqEchoTrainLength": spec.n_echoes,
        "VisuAcquisitionProtocol": Str(spec.protocol),
        "VisuAcqScanTime": spec.repetition_time_ms * spec.matrix[1],
    }
    if spec.visu_echo_times:
        visu["VisuAcqEchoTime"] = [float(t) for t in spec.echo_times_ms]
    if spec.version == "5.1":
        visu["VisuSeriesNumber"] = scan_number * 65536 + reco_number
        visu["VisuAcqDate"] = Str("10:00:00  5 Mar 2024")
    else:
        visu["VisuExperimentNumber"] = scan_number
        visu["VisuProcessingNumber"] = reco_number
        visu["VisuAcqSoftwareVersion"] = Str(v["creator"])
    if spec.version == "360":
        visu["VisuSubjectType"] = spec.subject_type
        slice_group = list(spec.frame_order).index("FG_SLICE")
        visu["VisuCoreSlicePacksDef"] = (slice_group, 1)
        visu["VisuCoreSlicePacksSlices"] = [(0, spec.n_slices)]
        visu["VisuCoreSlicePacksSliceDist"] = [abs(spec.slice_step_mm)]
    for name in spec.drop_visu:
        visu.pop(name, None)
    visu.update(spec.extra_visu)
    return visu


def write_scan(study: Path, scan_number: int, spec: ScanSpec, *, reco_number: int = 1,
               write_pdata: bool = True) -> Path:
    """Write scan ``scan_number`` of ``spec`` into ``study``; returns the scan folder."""
    v = _VERSIONS[spec.version]
    compress = spec.version == "360"
    scan = Path(study) / str(scan_number)
    scan.mkdir(parents=True, exist_ok=True)
    method_name = spec.method if spec.version == "5.1" else f"<Bruker:{spec.method}>"
    write_jcamp(scan / "acqp", {
        "ACQ_sw_version": Str(v["sw"]),
        "NUC1": Str(spec.nucleus),
        "BF1": spec.bf1_mhz,
        "ACQ_scan_name": Str(spec.protocol),
        "ACQ_method": Str(spec.method),
        "ACQ_patient_pos": spec.subject_position,
        "ACQ_echo_time": [float(t) for t in spec.echo_times_ms],
        "ACQ_repetition_time": [spec.repetition_time_ms],
        "ACQ_flip_angle": spec.flip_angle_deg,
        "NI": spec.n_slices * spec.n_echoes,
        "NR": 1,
    }, title=v["title"], compress=compress)
    method = {
        "Method": method_name,
        "PVM_EchoTime": float(spec.echo_times_ms[0]),
        "PVM_RepetitionTime": spec.repetition_time_ms,
        "PVM_NEchoImages": spec.n_echoes,
        "PVM_SliceThick": spec.slice_thickness_mm,
        "PVM_Matrix": list(spec.matrix),
        "PVM_Fov": [float(e) for e in spec.extent_mm],
        "PVM_SpatResol": [e / n for e, n in zip(spec.extent_mm, spec.matrix, strict=True)],
        "PVM_ObjOrderList": list(range(spec.n_slices)),
        "PVM_NSPacks": 1,
        "PVM_SPackArrNSlices": [spec.n_slices],
        "PVM_SPackArrSliceOrient": [spec.orientation],
        "PVM_SPackArrReadOrient": ["L_R" if spec.orientation != "sagittal" else "A_P"],
        "PVM_SPackArrSliceGapMode": ["non_contiguous"],
        "PVM_SPackArrSliceGap": [abs(spec.slice_step_mm) - spec.slice_thickness_mm],
        "PVM_SPackArrSliceDistance": [abs(spec.slice_step_mm)],
        "PVM_ExcPulse": (1.0, 5400.0, spec.flip_angle_deg, 2.6, Str("hermite, (sinc3)"), Str("")),
    }
    if spec.method == "MSME":
        method["EffectiveTE"] = [float(t) for t in spec.echo_times_ms]
    write_jcamp(scan / "method", method, title=v["title"], compress=compress)
    if not write_pdata:
        return scan
    pdata = scan / "pdata" / str(reco_number)
    pdata.mkdir(parents=True, exist_ok=True)
    frames, slopes = _frames(spec)
    dtype = np.dtype(("<" if spec.byte_order == "littleEndian" else ">") + _WORDS[spec.word_type])
    frames.astype(dtype).tofile(pdata / "2dseq")
    write_jcamp(pdata / "visu_pars", _visu(spec, scan_number, reco_number), title=v["title"],
                compress=compress)
    write_jcamp(pdata / "reco", {
        "RECO_wordtype": spec.word_type,
        "RECO_size": list(spec.matrix),
        "RECO_byte_order": spec.byte_order,
        "RECO_map_slope": 1.0 / slopes,
    }, title=v["title"], compress=compress)
    return scan


def write_study(root: Path, scans: dict, *, without_pdata: tuple = ()) -> Path:
    """A study folder: ``{scan_number: ScanSpec}`` plus scans ``without_pdata`` (no pdata)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    write_jcamp(root / "subject", {"SUBJECT_id": Str("M01"), "SUBJECT_type": "Quadruped",
                                   "SUBJECT_position": "SUBJ_POS_Prone"})
    for number, spec in scans.items():
        write_scan(root, number, spec)
    for number in without_pdata:
        write_scan(root, number, ScanSpec(), write_pdata=False)
    return root
