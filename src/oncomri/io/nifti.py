"""NIfTI readers and writers, with BIDS JSON sidecars.

Reading turns scanner exports (dcm2niix per-echo files with sidecars, or one
4D file) into a :class:`~oncomri.core.Volume` with a validated
:class:`~oncomri.core.MultiEchoProtocol` in seconds. Writing puts parameter
maps next to each other as BIDS derivatives, on exactly the input's grid,
all-or-nothing.

Every failure raises an :mod:`oncomri.core.errors` exception whose one-line
message names the file (or field) and the fix.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import secrets
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from ..core.errors import GeometryError, ProtocolError, ReadError, ValidationError
from ..core.protocols import MultiEchoProtocol
from ..core.units import check_echo_times_plausible, to_seconds
from ..core.volume import Volume, same_grid
from .bids import _one_line, read_sidecar, sidecar_path

__all__ = [
    "read_series",
    "load_nifti",
    "load_multi_echo",
    "load_mask",
    "write_derivatives",
    "HEADER_KEY",
]

#: Key of ``Volume.meta`` that holds the NIfTI header of the (first) file read.
HEADER_KEY = "nifti_header"

#: Tolerances of the magnitude / real / imaginary recognition (see
#: :func:`_find_magnitude_volume`). GE reconstructs its magnitude image apart
#: from the real and imaginary images, so on real GE data they agree to a
#: median of ~0.1-2 % and a 90th percentile of ~1-9 %, not to integer
#: rounding; three repeated magnitude images differ by ~41 % (√2 − 1).
MRI_MEDIAN_REL_TOL = 0.05
MRI_P90_REL_TOL = 0.20
#: Voxels with magnitude above this fraction of its 99th percentile are "signal".
MRI_SIGNAL_FRACTION = 0.1
MRI_MIN_SIGNAL_VOXELS = 10

_ATOL_MM = 1e-3
_GZIP_LEVEL = 6


# --------------------------------------------------------------------------- reading


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ReadError(f"{path}: file not found; check the path")
    if path.is_dir():
        raise ReadError(
            f"{path}: is a directory; pass the NIfTI file(s) in it, "
            "e.g. sorted(folder.glob('*.nii.gz'))"
        )


def _open_nifti(path: Path):
    """The nibabel image of ``path`` (header read, data not yet), or ReadError."""
    _check_file(path)
    try:
        img = nib.load(path)
    except Exception as exc:  # nibabel raises many types for bad files
        raise ReadError(
            f"{path}: not a readable NIfTI file ({_one_line(exc)}); "
            "pass a .nii or .nii.gz image (convert DICOM with dcm2niix)"
        ) from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image, nib.Nifti1Pair, nib.Nifti2Pair)):
        raise ReadError(
            f"{path}: is a {type(img).__name__}, not NIfTI; convert it to .nii.gz first"
        )
    return img


def _read_data(img, path: Path) -> np.ndarray:
    """Scaled float32 data of ``img`` with at least 3 axes, or ReadError."""
    try:
        data = img.get_fdata(dtype=np.float32, caching="unchanged")
    except MemoryError:
        raise
    except Exception as exc:  # truncated gzip, short file, bad offset ...
        raise ReadError(
            f"{path}: cannot read the image data ({_one_line(exc)}); the file is "
            "truncated or corrupt — copy or export it again"
        ) from exc
    return _spatial_first(data, path)


def _spatial_first(data: np.ndarray, path: Path) -> np.ndarray:
    """``data`` reshaped to three spatial axes (and an optional 4th), see :func:`_shape_only`."""
    shape = _shape_only(data.shape, path)
    return data if shape == data.shape else data.reshape(shape)


def _shape_only(shape: tuple, path: Path) -> tuple:
    """The data shape used for an image of ``shape``.

    2D becomes ``(X, Y, 1)``; axes of length 1 after the third are dropped
    until the shape is 4D. Other shapes than 3D/4D raise ValidationError.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) == 2:
        shape = shape + (1,)
    while len(shape) > 4 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 5 and shape[3] == 1:
        shape = shape[:3] + shape[4:]
    if len(shape) not in (3, 4):
        raise ValidationError(
            f"{path}: image of shape {shape} is not supported; "
            "expected 3D (X, Y, Z) or 4D (X, Y, Z, n) data"
        )
    return shape


def load_nifti(path) -> Volume:
    """Read a 3D or 4D NIfTI image.

    Parameters
    ----------
    path : str or path-like
        A ``.nii`` or ``.nii.gz`` file (a ``.hdr``/``.img`` pair also works).

    Returns
    -------
    Volume
        ``data`` as float32 with the header's scaling (``scl_slope``,
        ``scl_inter``) applied, 3D ``(X, Y, Z)`` or 4D ``(X, Y, Z, n)``; a 2D
        image gets ``Z = 1``. ``affine`` is nibabel's best affine (sform, else
        qform) in mm. ``meta`` holds the JSON sidecar's content if there is
        one, ``'notes'`` (an empty list) and, under ``'nifti_header'``
        (:data:`HEADER_KEY`), a copy of the NIfTI header, which
        :func:`write_derivatives` uses to write outputs on the same grid.
        ``protocol`` is None; ``sources`` is ``(str(path),)``.

    Raises
    ------
    ReadError
        If the file is missing, is not NIfTI, or its data cannot be read
        (truncated or corrupt files are detected here, not later), or if its
        sidecar is not valid JSON.
    ValidationError
        If the image has fewer than 2 or more than 4 non-trivial axes.
    """
    p = Path(os.fspath(path))
    img = _open_nifti(p)
    data = _read_data(img, p)
    meta = dict(read_sidecar(p) or {})
    meta["notes"] = []
    meta[HEADER_KEY] = img.header.copy()
    return Volume(data, np.asarray(img.affine, dtype=np.float64), meta=meta, sources=(str(p),))


def load_mask(path, *, like: Volume) -> np.ndarray:
    """Read a binary mask that lies on the grid of ``like``.

    Parameters
    ----------
    path : str or path-like
        A 3D NIfTI mask (a 4D file with a single volume is accepted). Voxels
        with a finite nonzero value are inside.
    like : Volume
        The image the mask belongs to; shape and affine must match it.

    Returns
    -------
    ndarray of bool, shape ``like.spatial_shape``

    Raises
    ------
    ReadError
        If the mask cannot be read.
    GeometryError
        If its shape or affine (tolerance 1e-3 mm) differs from ``like``, or
        it holds several volumes.
    """
    p = Path(os.fspath(path))
    vol = load_nifti(p)
    data = vol.data
    if data.ndim == 4:
        if data.shape[3] != 1:
            raise GeometryError(
                f"{p}: mask holds {data.shape[3]} volumes; pass a 3D mask (one volume)"
            )
        data = data[..., 0]
    if not same_grid(data.shape, vol.affine, like.spatial_shape, like.affine, atol_mm=_ATOL_MM):
        target = like.sources[0] if like.sources else "the series"
        raise GeometryError(
            f"{p}: mask grid {_grid_summary(data.shape, vol.affine)} differs from the grid of "
            f"{target} {_grid_summary(like.spatial_shape, like.affine)}; "
            "resample the mask onto the series grid (nearest neighbour) first"
        )
    return np.isfinite(data) & (data != 0)


def _grid_summary(shape, affine) -> str:
    aff = np.asarray(affine, dtype=np.float64)
    vox = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
    rows = "; ".join(" ".join(f"{v:.4g}" for v in row) for row in aff[:3])
    return (
        f"(shape {tuple(int(n) for n in shape[:3])}, voxel "
        f"{'x'.join(f'{v:.4g}' for v in vox)} mm, affine [{rows}])"
    )


def _echo_times_from_arguments(echo_times, echo_time_unit, n_expected, what: str,
                               label: str) -> np.ndarray:
    if echo_time_unit is None:
        raise ProtocolError(
            f"{label} given without a unit; pass echo_time_unit='s', 'ms' or 'us'"
        )
    te = np.asarray(echo_times, dtype=np.float64).reshape(-1)
    if te.size != n_expected:
        raise ProtocolError(
            f"{label} lists {te.size} values but {what} {n_expected} echoes; "
            "pass one echo time per echo"
        )
    return to_seconds(te, echo_time_unit)


def _number(value, js: Path, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(
            f"{js}: {key} must be a number (seconds), got {value!r}; fix the sidecar"
        )
    return float(value)


def _field_strength(sidecar: dict | None, path: Path) -> float | None:
    if not sidecar or sidecar.get("MagneticFieldStrength") is None:
        return None
    b0 = _number(sidecar["MagneticFieldStrength"], sidecar_path(path), "MagneticFieldStrength")
    if not (math.isfinite(b0) and b0 > 0):
        raise ProtocolError(
            f"{sidecar_path(path)}: MagneticFieldStrength must be positive (tesla), got {b0:g}"
        )
    return b0


def _no_echo_times(path: Path) -> ProtocolError:
    return ProtocolError(
        f"{path}: no echo times found; add \"EchoTime\" (seconds) to {sidecar_path(path).name} "
        "or give the echo times with their unit (--echo-times 4.6,9.2,13.8ms; "
        "in Python echo_times=... with echo_time_unit='ms')"
    )


def load_multi_echo(paths, *, echo_times=None, echo_time_unit=None,
                    echo_times_label: str = "echo_times") -> Volume:
    """Read a multi-echo series into one ``(X, Y, Z, n_echoes)`` volume.

    Parameters
    ----------
    paths : str, path-like, or sequence of them
        Either one 4D NIfTI file with one volume per echo, or one file per
        echo (3D, or 4D with a single volume; GE files holding magnitude,
        real and imaginary along the 4th axis are recognised and their
        magnitude volume is used). Per-echo files may be given in any order;
        the echoes are sorted by echo time.
    echo_times : array_like, optional
        The echo times, in the order of the 4th axis (one file) or of
        ``paths`` (several files). Overrides the sidecars.
    echo_time_unit : {'s', 'ms', 'us'}, optional
        Unit of ``echo_times``; required when ``echo_times`` is given.
    echo_times_label : str
        How error messages name ``echo_times`` (the CLI passes its option).

    Returns
    -------
    Volume
        ``data``: float32, shape ``(X, Y, Z, n_echoes)``, scaling applied,
        echoes by increasing echo time. ``protocol``:
        :class:`MultiEchoProtocol` with echo times in seconds and the
        sidecar's ``MagneticFieldStrength`` (tesla) if any. ``meta``: the
        first echo's sidecar with ``EchoTime`` replaced by the list of all
        echo times (s) and the per-echo ``EchoNumber`` removed, plus
        ``'notes'`` (list of str: what was inferred, e.g. that a magnitude
        volume was picked) and ``'nifti_header'`` (the first echo's NIfTI
        header). ``sources``: the files, in echo order.

    Raises
    ------
    ReadError
        A file is missing, not NIfTI, truncated or corrupt, or a sidecar is
        not valid JSON.
    ProtocolError
        No echo times in the sidecars or arguments; ``echo_times`` without a
        unit; sidecar echo times that look like milliseconds; duplicated or
        (for one 4D file) non-increasing echo times; a single echo; a count
        of echo times that differs from the number of volumes; a per-echo
        file with several volumes that are not magnitude/real/imaginary.
    GeometryError
        Per-echo files whose shapes or affines differ.

    Notes
    -----
    BIDS sidecars give ``EchoTime`` in seconds: a scalar for a per-echo file,
    a list for a 4D file (``EchoTimes`` is also read). A 4D file whose third
    axis is 1 (one slice) is read as such; a 3D file whose third axis holds
    echoes of one slice must be saved as ``(X, Y, 1, n_echoes)`` first.
    """
    if isinstance(paths, (str, bytes, os.PathLike)):
        paths = [paths]
    paths = [Path(os.fsdecode(p)) for p in paths]
    if not paths:
        raise ValidationError("paths is empty; pass one 4D NIfTI file or one file per echo")
    if echo_times is None and echo_time_unit is not None:
        raise ProtocolError(
            f"echo_time_unit={echo_time_unit!r} given without echo_times; "
            "pass both, or neither to read echo times from the sidecars"
        )
    if len(paths) == 1:
        return _load_single_file(paths[0], echo_times, echo_time_unit, echo_times_label)
    return _load_per_echo_files(paths, echo_times, echo_time_unit, echo_times_label)


def _load_single_file(path: Path, echo_times, echo_time_unit, echo_times_label) -> Volume:
    img = _open_nifti(path)
    shape = _shape_only(tuple(int(n) for n in img.shape), path)
    sidecar = read_sidecar(path)
    js = sidecar_path(path)
    if len(shape) == 3 or shape[3] == 1:
        raise ProtocolError(
            f"{path}: holds a single 3D volume, i.e. one echo; pass the files of all "
            "echoes (one per echo) or one 4D file with one volume per echo "
            "(a single slice with echoes on its 3rd axis must be saved as (X, Y, 1, n_echoes))"
        )
    n = shape[3]
    if echo_times is not None:
        te = _echo_times_from_arguments(echo_times, echo_time_unit, n, f"{path} holds",
                                        echo_times_label)
        source = echo_times_label
    else:
        raw = None
        key = "EchoTime"
        if sidecar is not None:
            if isinstance(sidecar.get("EchoTime"), list):
                raw = sidecar["EchoTime"]
            elif isinstance(sidecar.get("EchoTimes"), list):
                raw, key = sidecar["EchoTimes"], "EchoTimes"
            elif sidecar.get("EchoTime") is not None:
                te0 = _number(sidecar["EchoTime"], js, "EchoTime")
                raise ProtocolError(
                    f"{js}: EchoTime is a single value ({te0:g} s) but {path.name} holds {n} "
                    "volumes; it is one echo (e.g. magnitude/real/imaginary) — pass the files "
                    "of all echoes, or list one EchoTime per volume in the sidecar"
                )
        if raw is None:
            raise _no_echo_times(path)
        te = np.array([_number(v, js, key) for v in raw], dtype=np.float64)
        if te.size != n:
            raise ProtocolError(
                f"{js}: {key} lists {te.size} echo times but {path.name} holds {n} volumes; "
                "list one echo time per volume"
            )
        check_echo_times_plausible(te, source=f"{js}: {key}")
        source = str(js)
    protocol = MultiEchoProtocol(te, magnetic_field_strength=_field_strength(sidecar, path),
                                 source=source)
    data = _read_data(img, path)
    meta = _series_meta(sidecar, te)
    meta[HEADER_KEY] = img.header.copy()
    return Volume(data, np.asarray(img.affine, dtype=np.float64), protocol=protocol, meta=meta,
                  sources=(str(path),))


def _series_meta(sidecar: dict | None, te: np.ndarray) -> dict:
    meta = dict(sidecar or {})
    meta.pop("EchoNumber", None)
    meta.pop("EchoTimes", None)
    meta["EchoTime"] = [float(t) for t in te]
    meta["notes"] = []
    return meta


def _load_per_echo_files(paths: list[Path], echo_times, echo_time_unit,
                         echo_times_label) -> Volume:
    seen: dict[Path, Path] = {}
    for p in paths:
        _check_file(p)
        key = p.resolve()
        if key in seen:
            also = "" if str(seen[key]) == str(p) else f" (also as {seen[key]})"
            raise ValidationError(f"{p}: passed twice{also}; pass each echo once")
        seen[key] = p
    images = [_open_nifti(p) for p in paths]  # headers only: unreadable files fail first
    sidecars = [read_sidecar(p) for p in paths]
    notes: list[str] = []

    if echo_times is not None:
        te = _echo_times_from_arguments(echo_times, echo_time_unit, len(paths),
                                        "the input files hold", echo_times_label)
        source = echo_times_label
        for p, sc, t in zip(paths, sidecars, te):
            if sc and isinstance(sc.get("EchoTime"), (int, float)) and not isinstance(
                sc.get("EchoTime"), bool
            ) and not np.isclose(sc["EchoTime"], t, rtol=1e-3, atol=1e-7):
                notes.append(
                    f"{p.name}: echo time {t:g} s from echo_times used; its sidecar says "
                    f"{sc['EchoTime']:g}"
                )
    else:
        values = []
        for p, sc in zip(paths, sidecars):
            js = sidecar_path(p)
            if sc is None or sc.get("EchoTime") is None:
                raise _no_echo_times(p)
            v = sc["EchoTime"]
            if isinstance(v, list):
                if len(v) != 1:
                    raise ProtocolError(
                        f"{js}: EchoTime lists {len(v)} echo times for a per-echo file; "
                        "give one value per file, or pass the 4D file alone"
                    )
                v = v[0]
            values.append(_number(v, js, "EchoTime"))
        te = np.array(values, dtype=np.float64)
        i_max = int(np.nanargmax(te))
        check_echo_times_plausible(te, source=f"{sidecar_path(paths[i_max])}: EchoTime")
        source = f"{sidecar_path(paths[0]).parent}: EchoTime in {len(paths)} sidecars"

    # Duplicates must name both files, before MultiEchoProtocol sees sorted values.
    order = np.argsort(te, kind="stable")
    te_sorted = te[order]
    same = np.flatnonzero(np.diff(te_sorted) == 0)
    if same.size:
        a, b = paths[order[same[0]]], paths[order[same[0] + 1]]
        raise ProtocolError(
            f"echo time {te_sorted[same[0]]:g} s appears for both {a} and {b}; each echo needs "
            "its own time — check for a file passed twice or echoes from two series"
        )
    paths = [paths[i] for i in order]
    sidecars = [sidecars[i] for i in order]
    images = [images[i] for i in order]
    protocol = MultiEchoProtocol(
        te_sorted, magnetic_field_strength=_field_strength(sidecars[0], paths[0]), source=source
    )

    shapes = [_shape_only(tuple(int(n) for n in img.shape), p) for img, p in zip(images, paths)]
    affines = [np.asarray(img.affine, dtype=np.float64) for img in images]
    for p, shape, aff in zip(paths[1:], shapes[1:], affines[1:]):
        if tuple(shape[:3]) != tuple(shapes[0][:3]):
            raise GeometryError(
                f"{p} has shape {tuple(shape[:3])} but {paths[0]} has {tuple(shapes[0][:3])}; "
                "all echoes must come from one series on one grid"
            )
        if not same_grid(shape, aff, shapes[0], affines[0], atol_mm=_ATOL_MM):
            diff = float(np.max(np.abs(aff - affines[0])))
            raise GeometryError(
                f"{p} and {paths[0]} have different affines (up to {diff:.4g} mm apart); "
                "all echoes must come from one series on one grid"
            )
    for p, shape in zip(paths, shapes):
        if len(shape) == 4 and shape[3] not in (1, 3):
            raise _not_one_volume(p, shape[3])

    data = np.empty(tuple(shapes[0][:3]) + (len(paths),), dtype=np.float32)
    picked: dict[int, list[str]] = {}
    for i, (p, img) in enumerate(zip(paths, images)):
        arr = _read_data(img, p)
        if arr.ndim == 4:
            if arr.shape[3] == 1:
                arr = arr[..., 0]
            else:
                k = _find_magnitude_volume(arr)
                if k is None:
                    raise _not_one_volume(p, arr.shape[3])
                picked.setdefault(k, []).append(p.name)
                arr = arr[..., k]
        data[..., i] = arr
        del arr
    for k, names in picked.items():
        notes.append(
            f"{len(names)} per-echo file(s) hold magnitude, real and imaginary images on the "
            f"4th axis (recognised numerically); used volume {k}, the magnitude"
            + (f": {', '.join(names)}" if len(names) < len(paths) else "")
        )
    series = {sc.get("SeriesNumber") for sc in sidecars if sc and "SeriesNumber" in sc}
    if len(series) > 1:
        notes.append(
            f"the per-echo sidecars name {len(series)} different SeriesNumber values "
            f"({sorted(map(str, series))}); check that all echoes belong to one series"
        )
    meta = _series_meta(sidecars[0], te_sorted)
    meta["notes"] = notes
    meta[HEADER_KEY] = images[0].header.copy()
    return Volume(data, affines[0], protocol=protocol, meta=meta,
                  sources=tuple(str(p) for p in paths))


def _not_one_volume(path: Path, n: int) -> ProtocolError:
    return ProtocolError(
        f"{path}: holds {n} volumes per echo that are not magnitude/real/imaginary; "
        "pass one 3D magnitude file per echo (or a single 4D file with one volume per echo)"
    )


def _find_magnitude_volume(arr: np.ndarray) -> int | None:
    """Index of the magnitude volume if ``arr`` (X, Y, Z, 3) holds magnitude, real, imaginary.

    Volume ``k`` is the magnitude if it is non-negative and, on the voxels
    with meaningful signal (above :data:`MRI_SIGNAL_FRACTION` of its 99th
    percentile), ``|m - hypot(a, b)| / m`` of the two other volumes has a
    median of at most :data:`MRI_MEDIAN_REL_TOL` and a 90th percentile of at
    most :data:`MRI_P90_REL_TOL`. Volume 0 is tried first.
    """
    if arr.ndim != 4 or arr.shape[3] != 3:
        return None
    for k in (0, 1, 2):
        mag = arr[..., k]
        top = float(np.percentile(mag, 99))
        if not np.isfinite(top) or top <= 0:
            continue
        if float(np.nanmin(mag)) < -1e-6 * top:
            continue
        sig = mag > MRI_SIGNAL_FRACTION * top
        if np.count_nonzero(sig) < MRI_MIN_SIGNAL_VOXELS:
            continue
        a, b = (arr[..., j][sig] for j in (0, 1, 2) if j != k)
        m = mag[sig].astype(np.float64)
        rel = np.abs(m - np.hypot(a.astype(np.float64), b.astype(np.float64))) / m
        med, p90 = np.percentile(rel, [50, 90])
        if med <= MRI_MEDIAN_REL_TOL and p90 <= MRI_P90_REL_TOL:
            return k
    return None


# --------------------------------------------------------------------------- writing

_NIFTI_DTYPES = {
    np.dtype(t)
    for t in (
        np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64,
        np.float32, np.float64, np.complex64, np.complex128,
    )
}


def _output_dtype(arr: np.ndarray, key: str) -> np.dtype:
    dt = arr.dtype
    if dt == np.bool_:
        return np.dtype(np.uint8)
    if dt == np.float16:
        return np.dtype(np.float32)
    native = dt.newbyteorder("=")
    if native in _NIFTI_DTYPES:
        return native
    raise ValidationError(
        f"maps[{key!r}]: arrays of dtype {dt} cannot be stored in NIfTI; "
        "pass a numeric (float32, integer or bool) array"
    )


def _json_ready(value, where: str):
    """``value`` with numpy types made plain Python; non-finite floats become None."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValidationError(f"{where}: sidecar keys must be strings, got {k!r}")
            out[k] = _json_ready(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_json_ready(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist(), where)
    if isinstance(value, np.generic):
        return _json_ready(value.item(), where)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, bool, int)):
        return value
    raise ValidationError(
        f"{where}: value of type {type(value).__name__} cannot be written to a JSON sidecar; "
        "pass numbers, strings, lists or dicts"
    )


def _output_header(reference: Volume):
    """(image class, header) for outputs on the grid of ``reference``."""
    hdr = reference.meta.get(HEADER_KEY) if isinstance(reference.meta, dict) else None
    if isinstance(hdr, nib.Nifti1Header):
        klass = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
        # Same binary layout: copying the block keeps sform/qform (and their codes)
        # bit for bit and leaves extensions (e.g. embedded DICOM) behind.
        out = klass.header_class(binaryblock=hdr.binaryblock, endianness=hdr.endianness,
                                 check=False)
        if not np.allclose(out.get_best_affine(), reference.affine, rtol=0, atol=_ATOL_MM):
            raise GeometryError(
                "reference: its NIfTI header's affine differs from reference.affine; "
                f"remove meta[{HEADER_KEY!r}] if the volume was resampled"
            )
        return klass, out
    out = nib.Nifti1Header()
    out.set_sform(reference.affine, code=1)
    out.set_qform(reference.affine, code=1)
    return nib.Nifti1Image, out


def _nifti_bytes(arr: np.ndarray, dtype: np.dtype, klass, header) -> bytes:
    """The gzipped single-file NIfTI of ``arr`` with a copy of ``header``."""
    from .. import __version__

    hdr = header.copy()
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(arr.shape)
    hdr.set_slope_inter(np.nan, np.nan)
    hdr["cal_min"] = 0
    hdr["cal_max"] = 0
    hdr["intent_code"] = 0
    hdr["intent_name"] = b""
    hdr["aux_file"] = b""
    hdr["descrip"] = f"oncomri {__version__}".encode("ascii", "replace")[:79]
    hdr.set_xyzt_units("mm", "sec")
    img = klass(np.asarray(arr, dtype=dtype), None, header=hdr)
    raw = img.to_bytes()
    del img
    return gzip.compress(raw, compresslevel=_GZIP_LEVEL, mtime=0)


def _write_new(path: Path, payload: bytes) -> None:
    with open(path, "xb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


def write_derivatives(out_dir, prefix, maps, *, reference, sidecar_common=None,
                      text_files=None) -> list[Path]:
    """Write parameter maps as BIDS derivatives, all or nothing.

    Parameters
    ----------
    out_dir : str or path-like
        Output folder; created if needed.
    prefix : str
        Entity prefix of the outputs, e.g. from
        :func:`~oncomri.io.derivative_prefix` (``'sub-01_ses-24h'``).
    maps : dict
        ``{name: (array, sidecar)}``. ``name`` is the rest of the BIDS name
        (``'R2starmap'``, ``'T2starmap'``, ``'S0map'``,
        ``'desc-r2starfit_rsquared'`` ...): letters, digits, ``-`` and ``_``.
        ``array`` has the spatial shape of ``reference`` (3D, or 4D with
        measurements last); float32 stays float32, bool is stored as uint8,
        float16 as float32. ``sidecar`` is a dict (or None) of the map's
        metadata, in SI units with their unit named.
    reference : Volume
        The volume the maps were computed from. If it carries a NIfTI header
        (``meta['nifti_header']``, as set by the readers) the outputs copy
        it: sform, qform and their codes bit for bit, so the output affine
        equals the input's exactly. Otherwise ``reference.affine`` is written
        as both sform and qform with code 1 (scanner); NIfTI-1 stores them
        as float32.
    sidecar_common : dict, optional
        Entries for every sidecar (software, method, inputs ...); a map's own
        sidecar entries take precedence.
    text_files : dict, optional
        ``{name: text}`` written as ``<prefix>_<name>`` in the same
        all-or-nothing commit (e.g. ``{'dwi.bval': '0 1000\\n'}``).

    Returns
    -------
    list of Path
        The NIfTI files written, ``<out_dir>/<prefix>_<name>.nii.gz``, in the
        order of ``maps``; each has a ``.json`` sidecar beside it (indented by
        2, numpy values as plain numbers, NaN/inf as null).

    Raises
    ------
    ValidationError
        A bad name, prefix, array shape or dtype, or a sidecar value that
        JSON cannot hold. Nothing is written then.
    GeometryError
        ``reference``'s header disagrees with its affine.
    OSError
        The folder cannot be created or written; all files of this call
        are removed again and files that existed before are left as they were.

    Notes
    -----
    Every file is first written (and fsync'ed) under a hidden temporary name
    in ``out_dir``; only when all are complete are they moved into place
    with :func:`os.replace`. Files that already exist under a final name are
    kept as a hard link (or copy) until all moves have succeeded and put back
    if one fails.
    """
    if not isinstance(reference, Volume):
        raise ValidationError(
            f"reference must be a Volume (the series the maps come from), got "
            f"{type(reference).__name__}"
        )
    if not isinstance(prefix, str) or not prefix or not _valid_name(prefix):
        raise ValidationError(
            f"prefix {prefix!r} is not usable in a file name; use letters, digits, '-' and '_' "
            "(e.g. from derivative_prefix(paths))"
        )
    if not isinstance(maps, dict) or not maps:
        raise ValidationError("maps must be a non-empty dict {name: (array, sidecar)}")
    if sidecar_common is not None and not isinstance(sidecar_common, dict):
        raise ValidationError("sidecar_common must be a dict or None")
    out = Path(os.fspath(out_dir))

    jobs = []
    for key, item in maps.items():
        if not isinstance(key, str) or not _valid_name(key):
            raise ValidationError(
                f"maps key {key!r} is not a BIDS name part; use letters, digits, '-' and '_' "
                "(no '/', '.' or spaces), e.g. 'R2starmap' or 'desc-fit_rsquared'"
            )
        if not (isinstance(item, tuple) and len(item) == 2):
            raise ValidationError(f"maps[{key!r}] must be a tuple (array, sidecar_dict)")
        arr, side = item
        arr = np.asanyarray(arr)
        if arr.ndim not in (3, 4) or arr.shape[:3] != reference.spatial_shape:
            raise ValidationError(
                f"maps[{key!r}] has shape {arr.shape}; expected {reference.spatial_shape} "
                "(the spatial shape of reference), optionally with a 4th axis"
            )
        if side is not None and not isinstance(side, dict):
            raise ValidationError(f"maps[{key!r}]: the sidecar must be a dict or None")
        dtype = _output_dtype(arr, key)
        name = f"{prefix}_{key}.nii.gz"
        jobs.append((key, arr, dtype, side or {}, out / name, out / f"{prefix}_{key}.json"))

    texts = []
    for name, text in (text_files or {}).items():
        stem = name.split(".", 1)[0]
        if not isinstance(name, str) or not _valid_name(stem) or "/" in name or not isinstance(text, str):
            raise ValidationError(f"text_files key {name!r} must be a BIDS name part with an extension, "
                                  "e.g. 'dwi.bval', and its value a str")
        texts.append((out / f"{prefix}_{name}", text.encode("utf-8")))

    finals = [p for job in jobs for p in job[4:6]] + [p for p, _ in texts]
    for p in finals:
        if p.exists() and not p.is_file():
            raise ValidationError(f"{p}: exists and is not a file; move it away or pick another prefix")

    klass, header = _output_header(reference)
    out.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    temps: dict[Path, Path] = {}
    try:
        for key, arr, dtype, side, nii_path, json_path in jobs:
            content = _json_ready({**(sidecar_common or {}), **side}, f"sidecar of maps[{key!r}]")
            text = json.dumps(content, indent=2, allow_nan=False) + "\n"
            payload = _nifti_bytes(arr, dtype, klass, header)
            for final, data in ((nii_path, payload), (json_path, text.encode("utf-8"))):
                tmp = out / f".tmp-{token}-{final.name}"
                temps[final] = tmp
                _write_new(tmp, data)
        for final, data in texts:
            tmp = out / f".tmp-{token}-{final.name}"
            temps[final] = tmp
            _write_new(tmp, data)
        _commit(temps)
    except BaseException:
        for tmp in temps.values():
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
        raise
    _fsync_dir(out)
    return [job[4] for job in jobs]


def _valid_name(s: str) -> bool:
    return all(c.isascii() and (c.isalnum() or c in "-_") for c in s) and s[0] not in "-_"


def _commit(temps: dict[Path, Path]) -> None:
    """Move every temporary onto its final name; on failure restore the previous state."""
    backups: dict[Path, Path] = {}
    done: list[Path] = []
    try:
        for final, tmp in temps.items():
            if final.exists():
                bak = tmp.with_name(tmp.name + ".bak")
                try:
                    os.link(final, bak)
                except OSError:
                    shutil.copy2(final, bak)
                backups[final] = bak
        for final, tmp in temps.items():
            os.replace(tmp, final)
            done.append(final)
    except BaseException:
        for final in done:
            try:
                if final in backups:
                    os.replace(backups.pop(final), final)
                else:
                    final.unlink()
            except OSError:
                pass
        for bak in backups.values():
            try:
                bak.unlink()
            except OSError:
                pass
        raise
    for bak in backups.values():
        try:
            bak.unlink()
        except OSError:
            pass


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_series(path, **options) -> list[Volume]:
    """Registry entry point (see :mod:`oncomri.io.registry`): one NIfTI file.

    A 4D file whose sidecar lists echo times becomes a multi-echo series;
    anything else is returned as read by :func:`load_nifti`.
    """
    path = Path(path)
    sidecar = read_sidecar(path)
    if sidecar and isinstance(sidecar.get("EchoTime"), list):
        n = len(_shape_only(_open_nifti(path).shape, path))
        if n == 4:  # a 3D map's sidecar may list the echo times it came from
            return [load_multi_echo(path, **options)]
    return [load_nifti(path)]
