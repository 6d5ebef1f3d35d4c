"""Philips PAR/REC reader (PAR/REC export V4, V4.1, V4.2), built on :mod:`nibabel.parrec`.

A Philips PAR/REC export is a text header (``.PAR``: general information plus
one line per 2D image) and a raw file of unsigned 8/16-bit little-endian
pixels (``.REC``). nibabel's :class:`~nibabel.parrec.PARRECImage` parses the
header, checks it for truncation, sorts the images into volumes
(``strict_sort=True``: by image type, dynamic, ASL label, b-value,
gradient orientation, cardiac phase, echo and slice), gives each image's
scaling slope and intercept and the voxel -> RAS+ mm affine. This module
reads the pixels itself, each image at its PAR ``index in REC file``, and
adds what oncomri's reader contract (:mod:`oncomri.io.registry`) needs on
top: which image type to keep, which acquisition parameter goes on the last
axis (ordered by its value, with the matching :mod:`oncomri.core` protocol
in SI units), float32 data, BIDS metadata and one-line errors.

Image types
    Each PAR line has an ``image_type_mr`` code: 0 magnitude, 1 real,
    2 imaginary, 3 phase (higher codes are scanner-computed images such as
    the ADC map, code 11). One Volume holds one image type: the magnitude by
    default (see ``image_type``).

Scaling
    Every PAR file repeats Philips' definitions (nibabel documents them in
    :meth:`nibabel.parrec.PARRECHeader.get_data_scaling`)::

        PV = pixel value in REC, RS = rescale slope, RI = rescale intercept,
        SS = scale slope
        DV = PV * RS + RI             (the value displayed on the console)
        FP = DV / (RS * SS)           (the floating-point value)

    FP is the reconstruction's own floating-point value, before the scanner
    chose, image by image, an integer range for it (SS) and a display scale
    (RS, RI). RS and SS change between images of one series (echoes,
    dynamics, b-values, image types) and between series, so ratios of DV
    values across images carry an arbitrary factor while FP values are
    comparable (FP phase images are typically in radians, DV in mrad). Signal
    models (R2*, T2, ADC, DCE) fit such ratios, hence ``scaling='fp'`` is
    the default, as recommended for quantitative analysis of Philips data
    (Chenevert et al., Transl Oncol 2014;7:65-71). ``scaling='dv'`` gives the
    console values; use it for scanner-computed parametric maps (image type
    codes >= 4, e.g. an ADC map), for which Philips sets RS so that the
    display value is in the map's unit.

Several varying parameters
    When more than one of echo, dynamic, diffusion (b-value/direction),
    cardiac phase, ASL label type and scanning sequence varies (e.g. a
    multi-echo ASL with dynamics), the reader does not guess: it raises a
    :class:`~oncomri.core.ValidationError` naming them, and
    ``measurement=`` picks the one for the last axis; the series is then
    split into one Volume per combination of the others.

References
----------
Philips Medical Systems, PAR/REC export file format (the definitions block
of every PAR file, versions 4 to 4.2); nibabel ``nibabel.parrec`` module
documentation; T. L. Chenevert et al., "Errors in quantitative image analysis
due to platform-dependent image scaling", Transl Oncol 7(1):65-71, 2014.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path

import numpy as np
from nibabel.parrec import PARRECImage, supported_versions
from nibabel.volumeutils import array_from_file

from ..core.errors import ReadError, ValidationError
from ..core.protocols import DiffusionProtocol, DynamicProtocol, MultiEchoProtocol
from ..core.volume import Volume
from .bids import _one_line

__all__ = [
    "read_series",
    "IMAGE_TYPES",
    "SCALINGS",
    "MEASUREMENTS",
]

#: ``image_type_mr`` codes of the acquired images and their names.
IMAGE_TYPES = {0: "magnitude", 1: "real", 2: "imaginary", 3: "phase"}

#: Scaling methods (see the module docstring): Philips floating-point or display values.
SCALINGS = ("fp", "dv")

#: Parameters that may vary along a series, as ``measurement=`` names them,
#: with the PAR columns that label them.
MEASUREMENTS = {
    "echo": "echo number / echo_time",
    "dynamic": "dynamic scan number / dyn_scan_begin_time",
    "diffusion": "diffusion b value number, gradient orientation number / diffusion_b_factor",
    "cardiac_phase": "cardiac phase number / trigger_time",
    "label_type": "label type (ASL)",
    "sequence": "scanning sequence",
}

_PAR_EXTS = (".par", ".rec")
_TRUNCATION_MARKERS = ("Header inconsistency", "partial volume")
#: Header-inconsistency messages that describe the source acquisition, not a
#: scanner-computed map (an ADC map keeps the scan's b-value and direction counts).
_DERIVED_MAP_COUNTS = ("diffusion b value", "gradient orientation")


# --------------------------------------------------------------------------- files


def _partner(path: Path, ext: str) -> Path | None:
    """The file beside ``path`` with the same stem and extension ``ext`` (any case)."""
    same_case = ext.upper() if path.suffix.isupper() else ext.lower()
    for cand in (path.with_suffix(same_case), path.with_suffix(ext.upper()),
                 path.with_suffix(ext.lower())):
        if cand.is_file():
            return cand
    try:
        for cand in sorted(path.parent.iterdir()):
            if cand.stem == path.stem and cand.suffix.lower() == ext and cand.is_file():
                return cand
    except OSError:
        return None
    return None


def _locate(path: Path) -> tuple[Path, Path]:
    """(PAR, REC) of ``path`` (either of them), or ReadError naming what is missing."""
    if not path.exists():
        raise ReadError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise ReadError(f"{path}: is a folder; pass the .PAR (or .REC) file of the series")
    kind = path.suffix.lower()
    if kind not in _PAR_EXTS:
        raise ReadError(f"{path}: not a PAR/REC file name; pass the .PAR or .REC file")
    if kind == ".par":
        rec = _partner(path, ".rec")
        if rec is None:
            raise ReadError(
                f"{path}: its image file {path.stem}.REC is missing (the PAR holds only the "
                "header); copy the .REC of the same name into the same folder")
        return path, rec
    par = _partner(path, ".par")
    if par is None:
        raise ReadError(
            f"{path}: its header {path.stem}.PAR is missing (the REC holds only pixel values, "
            "no geometry or timing); copy the .PAR of the same name into the same folder")
    return par, path


def _par_text(par: Path) -> str:
    """The PAR's text: UTF-8, or Latin-1 (Philips consoles write names in a Windows code page)."""
    try:
        raw = par.read_bytes()
    except OSError as exc:
        raise ReadError(f"{par}: cannot read it ({exc.strerror}); check its permissions") from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _read_header(par: Path, rec_fobj):
    """nibabel's PARRECImage of ``par`` (data not read) and the warnings it gave."""
    # The header goes in as text: nibabel would decode the file with the locale's
    # encoding and fail on a Latin-1 patient or protocol name.
    file_map = PARRECImage.make_file_map({"header": io.StringIO(_par_text(par)),
                                          "image": rec_fobj})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            # permit_truncated=True: nibabel warns instead of raising; read_series
            # decides below (it needs to know the image type first).
            img = PARRECImage.from_file_map(file_map, permit_truncated=True, strict_sort=True,
                                            scaling="fp", mmap=False)
        except Exception as exc:  # nibabel raises many types for bad headers
            version = [str(w.message) for w in caught if "not supported" in str(w.message)]
            if version and "'None'" in version[0]:
                raise ReadError(
                    f"{par}: not a Philips PAR header (no 'image export tool V4.x' line, so "
                    "nibabel cannot tell its version); pass the .PAR file as exported") from exc
            if version:
                reason = " ".join(version[0].split()).split(" -- ")[0]
                raise ReadError(
                    f"{par}: nibabel cannot read it ({reason}; nibabel reads "
                    f"{', '.join(supported_versions)}); export the series again as PAR/REC "
                    "V4.2 (or as DICOM)") from exc
            raise ReadError(
                f"{par}: not a PAR header nibabel can read ({_one_line(exc)}); pass the "
                "Philips .PAR file as exported, unedited") from exc
    # nibabel builds the header twice (once more when the image copies it): drop repeats
    messages = list(dict.fromkeys(" ".join(str(w.message).split()) for w in caught))
    return img, messages


def _par_version(image_defs) -> str:
    names = image_defs.dtype.names
    if "label type" in names:
        return "V4.2"
    if "diffusion b value number" in names:
        return "V4.1"
    return "V4"


# --------------------------------------------------------------------------- options


def _check_options(image_type, scaling, measurement, magnetic_field_strength):
    if not isinstance(scaling, str) or scaling not in SCALINGS:
        raise ValidationError(
            f"scaling={scaling!r} is not known; use 'fp' (Philips floating-point values, for "
            "quantitative work) or 'dv' (console display values)")
    if measurement is not None and (not isinstance(measurement, str)
                                    or measurement not in MEASUREMENTS):
        raise ValidationError(
            f"measurement={measurement!r} is not known; use one of {', '.join(MEASUREMENTS)}")
    if image_type is not None:
        names = {v: k for k, v in IMAGE_TYPES.items()}
        if isinstance(image_type, str):
            if image_type.lower() not in names:
                raise ValidationError(
                    f"image_type={image_type!r} is not known; use one of "
                    f"{', '.join(IMAGE_TYPES.values())} or a Philips image_type_mr code (int)")
            image_type = names[image_type.lower()]
        elif isinstance(image_type, (bool, np.bool_)) or not isinstance(
                image_type, (int, np.integer)):
            raise ValidationError(
                f"image_type={image_type!r} must be a name ({', '.join(IMAGE_TYPES.values())}) "
                "or a Philips image_type_mr code (int)")
        image_type = int(image_type)
    b0 = None
    if magnetic_field_strength is not None:
        try:
            b0 = float(magnetic_field_strength)
        except (TypeError, ValueError):
            b0 = math.nan
        if not (math.isfinite(b0) and 0 < b0 < 30):
            raise ValidationError(
                f"magnetic_field_strength={magnetic_field_strength!r} is not a field strength; "
                "give it in tesla, e.g. 3.0")
    return image_type, b0


def _type_name(code: int) -> str:
    return IMAGE_TYPES.get(int(code), f"image_type_mr {int(code)}")


def _type_option(code: int) -> str:
    return repr(IMAGE_TYPES[code]) if code in IMAGE_TYPES else str(int(code))


def _choose_image_type(par: Path, types: np.ndarray, requested: int | None) -> tuple[int, list]:
    present = sorted({int(t) for t in types})
    listing = ", ".join(_type_name(t) for t in present)
    if requested is not None:
        if requested not in present:
            raise ValidationError(
                f"{par}: holds no {_type_name(requested)} images (it holds: {listing}); "
                f"pass image_type={_type_option(present[0])}")
        chosen = requested
    elif 0 in present:
        chosen = 0
    elif len(present) == 1:
        chosen = present[0]
    else:
        raise ValidationError(
            f"{par}: holds no magnitude images but several image types ({listing}); choose one "
            f"with image_type={_type_option(present[0])}")
    notes = [f"image type: kept the {_type_name(chosen)} images"
             + ("" if requested is not None or chosen == 0 else " (the only type in the file)")]
    others = [t for t in present if t != chosen]
    if others:
        notes[0] += (f"; also in the file: {', '.join(_type_name(t) for t in others)} "
                     f"(read them with image_type={_type_option(others[0])})")
    return chosen, notes


# --------------------------------------------------------------------------- volume labels


class _Labels:
    """Per-volume PAR labels (from each volume's first slice) and how to order them."""

    def __init__(self, idefs, rows: np.ndarray):
        first = rows[0]
        names = idefs.dtype.names
        col = lambda name: np.asarray(idefs[name][first])  # noqa: E731
        self.echo_number = col("echo number")
        self.echo_time_ms = col("echo_time").astype(np.float64)
        self.dynamic = col("dynamic scan number")
        # a volume starts when its first slice starts
        self.dyn_time_s = np.asarray(idefs["dyn_scan_begin_time"][rows], np.float64).min(axis=0)
        self.phase = col("cardiac phase number")
        self.trigger_ms = col("trigger_time").astype(np.float64)
        self.b = col("diffusion_b_factor").astype(np.float64)
        self.b_number = col("diffusion b value number") if "diffusion b value number" in names \
            else None
        self.gradient = col("gradient orientation number") \
            if "gradient orientation number" in names else None
        self.gradient_apfhrl = col("diffusion").astype(np.float64) if "diffusion" in names \
            else None
        self.label_type = col("label type") if "label type" in names else None
        self.sequence = col("scanning sequence")
        self.image_type = col("image_type_mr")
        self.flip_deg = col("image_flip_angle").astype(np.float64)
        self.inversion_ms = col("Inversion delay").astype(np.float64)
        self.slice_thickness = col("slice thickness").astype(np.float64)
        self.n = first.size

    def key(self, dim: str, v: int) -> tuple:
        """What identifies volume ``v`` along ``dim``."""
        if dim == "echo":
            return (int(self.echo_number[v]),)
        if dim == "dynamic":
            return (int(self.dynamic[v]),)
        if dim == "diffusion":
            if self.b_number is not None:
                return (int(self.b_number[v]), int(self.gradient[v]))
            return (float(self.b[v]),)
        if dim == "cardiac_phase":
            return (int(self.phase[v]),)
        if dim == "label_type":
            return (int(self.label_type[v]),) if self.label_type is not None else (1,)
        if dim == "sequence":
            return (int(self.sequence[v]),)
        raise KeyError(dim)

    def order(self, dim: str, v: int) -> tuple:
        """Sort key of volume ``v`` along ``dim``: the parameter's value first."""
        if dim == "echo":
            return (self.echo_time_ms[v], self.echo_number[v])
        if dim == "dynamic":
            return (self.dyn_time_s[v], self.dynamic[v])
        if dim == "diffusion":
            return (self.b[v],) + self.key(dim, v)
        if dim == "cardiac_phase":
            return (self.trigger_ms[v], self.phase[v])
        return self.key(dim, v)


def _describe(labels: _Labels, dim: str, v: int) -> str:
    if dim == "echo":
        return f"echo {labels.echo_number[v]} (TE {labels.echo_time_ms[v]:g} ms)"
    if dim == "dynamic":
        return f"dynamic {labels.dynamic[v]} (at {labels.dyn_time_s[v]:g} s)"
    if dim == "diffusion":
        return f"b {labels.b[v]:g} s/mm2" + (
            f" direction {labels.gradient[v]}" if labels.gradient is not None else "")
    if dim == "cardiac_phase":
        return f"cardiac phase {labels.phase[v]} (trigger {labels.trigger_ms[v]:g} ms)"
    if dim == "label_type":
        return f"ASL label type {labels.key(dim, v)[0]}"
    return f"scanning sequence {labels.sequence[v]}"


def _group(par: Path, labels: _Labels, volumes: list[int], measurement: str | None):
    """Which parameter goes on the last axis, and how the volumes form series.

    Returns ``(measurement, split, groups)``: the measurement (None when
    nothing varies), the other varying parameters, and per output Volume
    ``({parameter: a volume showing its value}, volume indices in order)``.
    """
    counts = {d: len({labels.key(d, v) for v in volumes}) for d in MEASUREMENTS}
    varying = [d for d in MEASUREMENTS if counts[d] > 1]
    if measurement is None:
        if len(varying) > 1:
            listing = ", ".join(f"{d} ({counts[d]} values)" for d in varying)
            choices = "; ".join(
                f"measurement={d!r} (one Volume per "
                f"{', '.join(o for o in varying if o != d)})" for d in varying)
            raise ValidationError(
                f"{par}: several parameters vary: {listing}; choose the one for the last "
                f"axis with {choices}")
        measurement = varying[0] if varying else None
    elif counts[measurement] < 2:
        listing = ", ".join(f"{d} ({counts[d]} values)" for d in varying) or "nothing"
        raise ValidationError(
            f"{par}: measurement={measurement!r} but the series has a single {measurement}; "
            f"what varies here: {listing}")
    split = [d for d in varying if d != measurement]
    groups: dict[tuple, list[int]] = {}
    for v in volumes:
        groups.setdefault(tuple(labels.key(d, v) for d in split), []).append(v)
    ordered = sorted(groups.items(),
                     key=lambda item: tuple(labels.order(d, item[1][0]) for d in split))
    result = []
    expected = None
    for values, members in ordered:
        if measurement is not None:
            members = sorted(members, key=lambda v: labels.order(measurement, v))
            keys = [labels.key(measurement, v) for v in members]
            if measurement != "diffusion" and len(set(keys)) != len(keys):
                dup = next(v for v, k in zip(members, keys) if keys.count(k) > 1)
                raise ReadError(
                    f"{par}: several volumes share the label {_describe(labels, measurement, dup)}"
                    " and nothing in the PAR tells them apart; this layout is not supported — "
                    "export the series as DICOM")
            if expected is None:
                expected = sorted(keys)
            elif sorted(keys) != expected:
                raise ReadError(
                    f"{par}: the {measurement} values differ between "
                    f"{', '.join(split)} volumes (the series is incomplete); export it again")
        result.append(({d: members[0] for d in split}, members))
    return measurement, split, result


# --------------------------------------------------------------------------- reading


def _rec_images(par: Path, rec: Path, rec_fobj, hdr, used: np.ndarray, listed: np.ndarray):
    """The REC as an (X, Y, n_images) array (memory-mapped where possible), size checked.

    ``used``: the REC indices of the images to read; ``listed``: of all PAR lines.
    """
    nx, ny = (int(n) for n in hdr.get_rec_shape()[:2])
    dtype = hdr.get_data_dtype()
    if listed.min() < 0:
        raise ReadError(f"{par}: lists a negative 'index in REC file'; export the series again")
    n_images = int(used.max()) + 1
    need = nx * ny * dtype.itemsize * n_images
    size = os.fstat(rec_fobj.fileno()).st_size
    if size < need:
        raise ReadError(
            f"{rec}: is truncated: {size} bytes, but {par.name} describes {n_images} images of "
            f"{nx}x{ny} {8 * dtype.itemsize}-bit pixels ({need} bytes); copy or export the REC "
            "again")
    notes = []
    described = nx * ny * dtype.itemsize * (int(listed.max()) + 1)
    if size > described:
        notes.append(f"{rec.name} holds {size - described} bytes more than {par.name} "
                     "describes; they were ignored")
    try:
        arr = array_from_file((nx, ny, n_images), dtype, rec_fobj, offset=0, order="F",
                              mmap="r")
    except (OSError, ValueError) as exc:
        raise ReadError(f"{rec}: cannot read the pixel data ({_one_line(exc)}); copy or export "
                        "the REC again") from exc
    return arr, notes


def _scaled(raw, rec_index, rows, slopes, inters, members) -> np.ndarray:
    """float32 (X, Y, Z, len(members)) of the chosen volumes, scaling applied in float64."""
    nx, ny = raw.shape[:2]
    out = np.empty((nx, ny, rows.shape[0], len(members)), dtype=np.float32)
    for k, v in enumerate(members):
        pix = np.asarray(raw[:, :, rec_index[rows[:, v]]], dtype=np.float64)
        pix *= slopes[:, v]
        pix += inters[:, v]
        out[..., k] = pix
    return out


def _ms_to_s(values) -> np.ndarray:
    """Milliseconds (as the PAR gives them, a few decimals) to seconds, without binary noise."""
    return np.round(np.asarray(values, dtype=np.float64) / 1000.0, 12)


def _scalar_or_list(values):
    """One float if all ``values`` agree, else the list of them."""
    vals = [float(x) for x in values]
    uniq = sorted(set(vals))
    return uniq[0] if len(uniq) == 1 else vals


def read_series(path, *, image_type=None, scaling: str = "fp", measurement: str | None = None,
                permit_truncated: bool = False,
                magnetic_field_strength: float | None = None) -> list[Volume]:
    """Read a Philips PAR/REC series (registry entry point, see :mod:`oncomri.io.registry`).

    Parameters
    ----------
    path : str or path-like
        The ``.PAR`` or the ``.REC`` file (any case of the extension); the
        other one must lie beside it with the same name.
    image_type : {None, 'magnitude', 'real', 'imaginary', 'phase'} or int, optional
        Which images to read (Philips ``image_type_mr``; an int picks any
        code, e.g. 11 for a scanner ADC map). None (default): the magnitude
        images, or the only image type of a file without magnitude images.
        What was kept and what else the file holds is written to
        ``meta['notes']``.
    scaling : {'fp', 'dv'}
        ``'fp'`` (default): Philips floating-point values
        FP = (PV·RS + RI) / (RS·SS), comparable between images and series —
        what signal models need (see the module docstring). ``'dv'``: the
        console display values DV = PV·RS + RI (scanner-computed maps).
    measurement : {None, 'echo', 'dynamic', 'diffusion', 'cardiac_phase', 'label_type', 'sequence'}
        The parameter for the last axis when several vary; the others then
        split the series into one Volume each. None (default): the one
        parameter that varies; if several do, ValidationError naming them.
    permit_truncated : bool
        Read a series whose PAR shows that the scan or export stopped early
        (fewer dynamics, echoes or slices than planned): only its complete
        volumes are read and the PAR's complaint goes to ``meta['notes']``.
    magnetic_field_strength : float, optional
        B0 in tesla; the PAR does not record it. Goes to the protocol and to
        ``meta['MagneticFieldStrength']``.

    Returns
    -------
    list of Volume
        Usually one. ``data``: float32 ``(X, Y, Z)`` or ``(X, Y, Z, n)`` in
        nibabel's voxel order, scaling applied, the varying parameter on the
        last axis in increasing order of its value. ``affine``: nibabel's
        voxel -> RAS+ mm affine (:meth:`~nibabel.parrec.PARRECHeader.get_affine`,
        origin at the scanner isocentre). ``protocol``:
        :class:`~oncomri.core.MultiEchoProtocol` (echo times in s) for echoes,
        :class:`~oncomri.core.DynamicProtocol` (times in s from the first
        dynamic) for dynamics, :class:`~oncomri.core.DiffusionProtocol`
        (b in s/mm², ordered by b, then b-value and gradient number; no
        b-vectors) for diffusion, None otherwise (and for dynamics whose
        PAR has no increasing begin times). ``meta``: BIDS fields
        ``Manufacturer`` ('Philips'), ``SeriesDescription`` and
        ``ProtocolName`` (the PAR's protocol name), ``SeriesNumber`` (its
        acquisition number), ``EchoTime`` (s; a list along echoes),
        ``RepetitionTime`` (s), ``FlipAngle`` (deg), ``InversionTime`` (s,
        when set), ``MRAcquisitionType``, ``SliceThickness`` (mm),
        ``MagneticFieldStrength`` (T, if given); ``ParrecVersion``,
        ``ParrecImageType``, ``ParrecScaling``,
        ``ParrecDiffusionAPFHRL`` (the PAR's gradient directions as listed,
        along diffusion), ``ParrecSplit`` (the PAR numbers of the parameters
        a split Volume holds fixed) and ``notes``. ``sources``: (PAR, REC).

    Raises
    ------
    ReadError
        The PAR or REC is missing, the PAR is unreadable or of a version
        nibabel does not read (nibabel's reason in the message), the REC is
        shorter than the PAR describes, or the PAR shows an incomplete scan
        (unless ``permit_truncated``).
    ValidationError
        A bad option, the requested image type is absent, or several
        parameters vary and ``measurement`` is not given.
    ProtocolError
        The PAR's echo times or b-values do not make a valid protocol.

    Notes
    -----
    Each REC image is read at the PAR's ``index in REC file`` (Philips'
    definition) rather than at its line number, so PAR files whose lines
    are not in REC order are read correctly. The PAR text is decoded as
    UTF-8, else as Latin-1 (names written by the console).
    """
    path = Path(os.fspath(path))
    image_type, b0 = _check_options(image_type, scaling, measurement, magnetic_field_strength)
    par, rec = _locate(path)
    try:
        rec_fobj = open(rec, "rb")
    except OSError as exc:
        raise ReadError(f"{rec}: cannot open it ({exc.strerror}); check its permissions") from exc
    with rec_fobj:
        img, messages = _read_header(par, rec_fobj)
        hdr = img.header
        idefs = hdr.image_defs
        shape = hdr.get_data_shape()
        n_slices = int(shape[2])
        n_vols = int(shape[3]) if len(shape) > 3 else 1
        rows = np.asarray(hdr.get_sorted_slice_indices()).reshape((n_slices, n_vols), order="F")
        labels = _Labels(idefs, rows)

        chosen, notes = _choose_image_type(par, labels.image_type, image_type)
        truncation = [m for m in messages if any(s in m for s in _TRUNCATION_MARKERS)]
        for m in truncation:
            derived_count = chosen not in IMAGE_TYPES and any(s in m for s in _DERIVED_MAP_COUNTS)
            if not (permit_truncated or derived_count):
                raise ReadError(
                    f"{par}: the scan or its export is incomplete (nibabel: {m}); export it "
                    "again, or pass permit_truncated=True to read the complete volumes only")
            notes.append(f"PAR header: {m}" + (
                "; the counts describe the source scan of this computed map" if derived_count
                else "; read the complete volumes only"))
        notes.extend(f"nibabel: {m}" for m in messages if m not in truncation)

        volumes = [v for v in range(n_vols) if labels.image_type[v] == chosen]
        measurement, split, groups = _group(par, labels, volumes, measurement)

        slopes, inters = (np.asarray(a, np.float64).reshape((n_slices, n_vols))
                          for a in hdr.get_data_scaling(scaling))
        rec_index = np.asarray(idefs["index in REC file"], dtype=np.int64)
        raw, rec_notes = _rec_images(par, rec, rec_fobj, hdr, rec_index[rows.ravel()], rec_index)
        notes.extend(rec_notes)
        if scaling == "fp":
            notes.append("scaling: Philips floating-point values FP = (PV*RS + RI)/(RS*SS) "
                         "(scaling='fp'); console display values: scaling='dv'")
            if chosen not in IMAGE_TYPES:
                notes.append("this is a scanner-computed image; its value in the map's unit is "
                             "usually the display value: read it with scaling='dv'")
        else:
            notes.append("scaling: Philips console display values DV = PV*RS + RI "
                         "(scaling='dv'); values comparable across images: scaling='fp'")
        if b0 is None:
            notes.append("PAR files do not record the field strength; pass "
                         "magnetic_field_strength= (T) to set it")

        common = _common_meta(par, hdr, idefs, chosen, scaling, b0)
        out = []
        for fixed, members in groups:
            data = _scaled(raw, rec_index, rows, slopes, inters, members)
            if data.shape[-1] == 1:
                data = data[..., 0]
            meta = dict(common)
            vol_notes = list(notes)
            protocol = _protocol_and_meta(par, labels, measurement, members, b0, meta, vol_notes)
            if split:
                meta["ParrecSplit"] = {d: int(labels.key(d, v)[0]) if d != "diffusion"
                                       else list(labels.key(d, v)) for d, v in fixed.items()}
                vol_notes.append(
                    f"split: one of {len(groups)} volumes along {', '.join(split)}; this one "
                    f"holds {', '.join(_describe(labels, d, v) for d, v in fixed.items())}")
            meta["notes"] = vol_notes
            out.append(Volume(data, np.asarray(img.affine, dtype=np.float64), protocol=protocol,
                              meta=meta, sources=(str(par), str(rec))))
        del raw
    return out


def _common_meta(par: Path, hdr, idefs, chosen: int, scaling: str, b0) -> dict:
    info = hdr.general_info
    name = str(info.get("protocol_name", "")).strip()
    meta: dict = {"Manufacturer": "Philips"}
    if name:
        meta["SeriesDescription"] = name
        meta["ProtocolName"] = name
    if "acq_nr" in info:
        meta["SeriesNumber"] = int(info["acq_nr"])
    tr = np.atleast_1d(np.asarray(info.get("repetition_time", []), dtype=np.float64))
    if tr.size:
        meta["RepetitionTime"] = _scalar_or_list(_ms_to_s(tr))
    mode = str(info.get("scan_mode", "")).strip().upper()
    if mode in ("3D", "MS", "SS", "M2D", "2D"):
        meta["MRAcquisitionType"] = "3D" if mode == "3D" else "2D"
    if b0 is not None:
        meta["MagneticFieldStrength"] = b0
    meta["ParrecVersion"] = _par_version(idefs)
    meta["ParrecImageType"] = _type_name(chosen)
    meta["ParrecScaling"] = scaling
    return meta


def _protocol_and_meta(par: Path, labels: _Labels, measurement, members, b0, meta, notes):
    m = np.asarray(members)
    te_s = _ms_to_s(labels.echo_time_ms[m])
    meta["EchoTime"] = [float(t) for t in te_s] if measurement == "echo" \
        else _scalar_or_list(te_s)
    meta["FlipAngle"] = _scalar_or_list(labels.flip_deg[m])
    ti = labels.inversion_ms[m]
    if np.any(ti > 0):
        meta["InversionTime"] = _scalar_or_list(_ms_to_s(ti))
    meta["SliceThickness"] = _scalar_or_list(labels.slice_thickness[m])
    if measurement == "echo":
        return MultiEchoProtocol(te_s, magnetic_field_strength=b0,
                                 source=f"{par}: echo_time")
    if measurement == "dynamic":
        t = labels.dyn_time_s[m]
        if np.all(np.diff(t) > 0):
            return DynamicProtocol(t - t[0], source=f"{par}: dyn_scan_begin_time")
        notes.append("dynamic: the PAR's dyn_scan_begin_time does not increase, so the frame "
                     "times are unknown and no DynamicProtocol was set; give the times yourself")
        return None
    if measurement == "diffusion":
        if labels.gradient_apfhrl is not None:
            meta["ParrecDiffusionAPFHRL"] = labels.gradient_apfhrl[m].tolist()
            b = labels.b[m]
            vec = labels.gradient_apfhrl[m]
            trace = np.count_nonzero((b > 0) & ~np.any(vec != 0, axis=1))
            if trace:
                notes.append(f"diffusion: {trace} volume(s) with b > 0 but no gradient direction "
                             "(Philips' isotropic/trace image) are kept")
        notes.append("diffusion: b-vectors are not set (the frame of the PAR's (ap, fh, rl) "
                     "directions is not documented); they are in meta['ParrecDiffusionAPFHRL']")
        return DiffusionProtocol(labels.b[m], source=f"{par}: diffusion_b_factor")
    if measurement is None and len(members) > 1:
        notes.append(f"{len(members)} volumes with identical PAR labels (e.g. repeated "
                     "averages) are kept in the PAR's order on the last axis")
    return None
