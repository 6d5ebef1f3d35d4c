"""``oncomri map t1``: T1/R1 maps from variable flip angle or inversion-recovery series.

Variable flip angle (spoiled gradient echo; :class:`oncomri.models.t1.VFAModel`):
one 4D NIfTI whose BIDS sidecar lists ``FlipAngle`` (degrees, one per volume)
and ``RepetitionTime`` (s), several 3D NIfTI files (one per flip angle, each
with its sidecar), or a DICOM folder / Bruker scan; ``--flip-angles 2,5,10,15deg``
and ``--tr 5ms`` override the headers. ``--b1 MAP`` corrects the flip angles
voxel by voxel (relative scale, 1 = nominal; ``--b1-unit percent`` for maps in %).

Inversion recovery (:class:`oncomri.models.t1.IRModel`): chosen by
``--inversion-times 50,100,200,400,800,1600ms``, by ``InversionTime`` lists in
the sidecars, by an IR DICOM series, or by an IR ``--method``
(``two_parameter``, ``three_parameter``, ``look_locker``).

Writes ``<prefix>_T1map`` (s), ``_R1map`` (1/s), ``_M0map`` and the fit quality
and status maps as BIDS derivatives with JSON sidecars. Bad input raises an
:class:`~oncomri.core.errors.OncomriError` with one line naming the input and
the fix (the ``oncomri`` command prints it and exits with status 2).
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import numpy as np

from ..core.errors import GeometryError, ProtocolError, ValidationError
from ..core.protocols import InversionRecoveryProtocol, VariableFlipAngleProtocol
from ..core.volume import Volume, same_grid

__all__ = ["add_arguments", "run", "parse_flip_angles", "parse_times"]

VFA_METHODS = ("nonlinear", "linear")
IR_METHODS = ("three_parameter", "two_parameter", "look_locker")
_TIME_UNITS = {"s": 1.0, "ms": 1e-3}

#: Longest plausible spoiled-gradient-echo TR in s: a longer value is milliseconds.
MAX_VFA_TR_S = 1.0
#: Longest plausible inversion time in s.
MAX_TI_S = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``oncomri map t1 INPUT... --out DIR``."""
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="one 4D NIfTI (with BIDS sidecar), one 3D NIfTI per flip angle or "
                             "inversion time, or a DICOM folder / Bruker scan")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument("--series", metavar="N", help="which series, when INPUT holds several")
    parser.add_argument("--method", metavar="NAME",
                        help="VFA: nonlinear (default) or linear (DESPOT1); IR: three_parameter "
                             "(default), two_parameter or look_locker")
    parser.add_argument("--flip-angles", metavar="LIST",
                        help="flip angles in degrees with the unit, e.g. '2,5,10,15deg' "
                             "(overrides the headers)")
    parser.add_argument("--tr", metavar="TIME",
                        help="repetition time with a unit, e.g. '5ms' (overrides the headers)")
    parser.add_argument("--b1", type=Path, metavar="MAP",
                        help="B1 map on the series grid: actual/nominal flip angle (VFA only)")
    parser.add_argument("--b1-unit", choices=("relative", "percent"), default="relative",
                        help="unit of the --b1 map values (default relative, 1 = nominal)")
    parser.add_argument("--inversion-times", metavar="LIST",
                        help="inversion times with a unit, e.g. '50,100,200,400,800ms' (IR)")
    parser.add_argument("--signal", choices=("magnitude", "real"), default="magnitude",
                        help="IR data: magnitude (default, polarity restored) or real (signed)")
    parser.add_argument("--mask", type=Path, metavar="FILE", help="fit only inside this mask")
    parser.add_argument("--prefix", help="output file prefix (default: from the input names)")


# ----------------------------------------------------------------- parsing


def _split_value_unit(text: str, name: str):
    m = re.fullmatch(r"\s*([-+0-9.eE,\s]+?)\s*([A-Za-z°µ]*)\s*", text or "")
    if not m:
        raise ProtocolError(f"{name} {text!r}: not a comma-separated list of numbers with a unit")
    try:
        values = [float(v) for v in re.split(r"[,\s]+", m.group(1).strip()) if v]
    except ValueError:
        raise ProtocolError(f"{name} {text!r}: not a comma-separated list of numbers") from None
    if not values:
        raise ProtocolError(f"{name} {text!r}: no value given")
    return values, m.group(2)


def parse_flip_angles(text: str, *, name: str = "--flip-angles") -> np.ndarray:
    """``'2,5,10,15deg'`` -> flip angles in degrees (the unit ``deg`` is required)."""
    values, unit = _split_value_unit(text, name)
    if unit not in ("deg", "°"):
        raise ProtocolError(f"{name} {text!r}: give the flip angles in degrees with the unit, "
                            "e.g. '2,5,10,15deg'")
    return check_degrees(values, source=name)


def check_degrees(values, *, source: str) -> np.ndarray:
    """Flip angles expected in degrees; a set that looks like radians is an error.

    Every variable-flip-angle protocol reaches well above pi degrees (the
    largest angle sits past the Ernst angle, >= ~10 deg), while flip angles
    in radians never exceed pi; so a set whose largest value is <= pi was
    given in radians.
    """
    fa = np.asarray(values, dtype=np.float64).reshape(-1)
    if fa.size == 0 or not np.all(np.isfinite(fa)) or np.any(fa <= 0):
        raise ProtocolError(f"{source}: flip angles must be positive numbers in degrees, "
                            f"got {fa.tolist()}")
    if fa.max() <= math.pi:
        raise ProtocolError(
            f"{source}: flip angles {[round(v, 4) for v in fa.tolist()]} look like radians "
            "(all <= pi); give them in degrees, e.g. '2,5,10,15deg'")
    if fa.max() > 180:
        raise ProtocolError(f"{source}: flip angles up to {fa.max():g} deg exceed 180 deg")
    return fa


def parse_times(text: str, *, name: str):
    """``'5ms'`` or ``'50,100,200ms'`` -> list of seconds (unit s or ms required)."""
    values, unit = _split_value_unit(text, name)
    if unit not in _TIME_UNITS:
        raise ProtocolError(f"{name} {text!r}: give a unit, s or ms (e.g. '5ms')")
    return [v * _TIME_UNITS[unit] for v in values]


# ----------------------------------------------------------------- loading


def _is_nifti(path) -> bool:
    return str(path).endswith((".nii", ".nii.gz"))


def _load_series(args) -> tuple[Volume, list]:
    """The series and, for several NIfTI files, one sidecar per file."""
    from ..io import load, load_nifti

    paths = [Path(p) for p in args.inputs]
    if len(paths) == 1:
        vol = load(paths[0], series=args.series)
        return vol, [vol.meta]
    if not all(_is_nifti(p) for p in paths):
        raise ValidationError("several INPUTs must all be NIfTI files (one per flip angle or "
                              "inversion time); pass a DICOM folder as a single INPUT")
    vols = [load_nifti(p) for p in paths]
    first = vols[0]
    for p, v in zip(paths, vols):
        if v.data.ndim != 3:
            raise ValidationError(f"{p}: has shape {v.data.shape}; with several INPUTs each "
                                  "file must be one 3D volume")
        if not same_grid(v.data.shape, v.affine, first.data.shape, first.affine):
            raise GeometryError(f"{p}: its grid differs from {paths[0]}; all volumes of a T1 "
                                "series must share one grid")
    data = np.stack([v.data for v in vols], axis=-1)
    meta = dict(first.meta)
    vol = Volume(data, first.affine, meta=meta, sources=tuple(str(p) for p in paths))
    return vol, [v.meta for v in vols]


def _sidecar_list(metas: list, key: str, n: int, source: str):
    """A per-volume list from one sidecar (a list) or one sidecar per file (scalars)."""
    if len(metas) == 1:
        value = metas[0].get(key)
        if value is None:
            return None
        values = np.atleast_1d(np.asarray(value, dtype=np.float64)).reshape(-1)
    else:
        raw = [m.get(key) for m in metas]
        if any(v is None for v in raw):
            return None
        values = np.asarray([float(np.atleast_1d(v)[0]) for v in raw])
    if values.size not in (1, n):
        raise ProtocolError(f"{source}: {key} lists {values.size} value(s) for {n} volumes; "
                            "give one per volume")
    return values


def _scalar_sidecar(metas, key):
    values = [m.get(key) for m in metas if m.get(key) is not None]
    if not values:
        return None
    vals = np.concatenate([np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in values])
    return float(vals[0])


def _sorted(values, data):
    order = np.argsort(values, kind="stable")
    if np.all(order == np.arange(order.size)):
        return np.asarray(values), data
    return np.asarray(values)[order], data[..., order]


def _vfa_inputs(args, vol, metas, n):
    proto = vol.protocol if isinstance(vol.protocol, VariableFlipAngleProtocol) else None
    label = args.inputs[0]
    if args.flip_angles:
        fa_deg = parse_flip_angles(args.flip_angles)
        source = "--flip-angles"
    elif proto is not None:
        fa_deg = np.rad2deg(proto.flip_angles)
        source = f"{label}: FlipAngle"
    else:
        fa_deg = _sidecar_list(metas, "FlipAngle", n, f"{label} sidecar")
        if fa_deg is None or (fa_deg.size == 1 and n > 1):
            raise ProtocolError(f"{label}: no flip angle per volume in the sidecar; give "
                                "--flip-angles with a unit, e.g. '2,5,10,15deg'")
        source = f"{label} sidecar FlipAngle"
        fa_deg = check_degrees(fa_deg, source=source)
    if fa_deg.size != n:
        raise ProtocolError(f"{source}: {fa_deg.size} flip angles for {n} volumes; give one per "
                            "volume")
    if args.tr:
        tr = parse_times(args.tr, name="--tr")
        if isinstance(tr, list) and len(tr) != 1:
            raise ProtocolError(f"--tr {args.tr!r}: give one repetition time")
        tr = tr[0]
        tr_source = "--tr"
    elif proto is not None:
        tr, tr_source = float(proto.repetition_time), f"{label}: RepetitionTime"
    else:
        tr = _scalar_sidecar(metas, "RepetitionTime")
        tr_source = f"{label} sidecar RepetitionTime"
        if tr is None:
            raise ProtocolError(f"{label}: no RepetitionTime in the sidecar; give --tr, e.g. '5ms'")
    if not (np.isfinite(tr) and tr > 0):
        raise ProtocolError(f"{tr_source}: repetition time {tr!r} s must be positive")
    if tr > MAX_VFA_TR_S:
        raise ProtocolError(f"{tr_source}: repetition time {tr:g} s is implausible for a spoiled "
                            "gradient echo; it looks like milliseconds (BIDS wants seconds)")
    fa_deg, data = _sorted(fa_deg, vol.data)
    protocol = VariableFlipAngleProtocol(np.deg2rad(fa_deg), float(tr), source=source)
    return protocol, data


def _ir_inputs(args, vol, metas, n):
    proto = vol.protocol if isinstance(vol.protocol, InversionRecoveryProtocol) else None
    label = args.inputs[0]
    if args.inversion_times:
        ti = np.asarray(parse_times(args.inversion_times, name="--inversion-times"), float)
        source = "--inversion-times"
    elif proto is not None:
        ti, source = np.asarray(proto.inversion_times), f"{label}: InversionTime"
    else:
        ti = _sidecar_list(metas, "InversionTime", n, f"{label} sidecar")
        source = f"{label} sidecar InversionTime"
        if ti is None or (ti.size == 1 and n > 1):
            raise ProtocolError(f"{label}: no inversion time per volume in the sidecar; give "
                                "--inversion-times with a unit, e.g. '50,100,200,400,800ms'")
    ti = np.atleast_1d(ti)
    if ti.size != n:
        raise ProtocolError(f"{source}: {ti.size} inversion times for {n} volumes; give one "
                            "per volume")
    if ti.max() > MAX_TI_S:
        raise ProtocolError(f"{source}: inversion times up to {ti.max():g} s look like "
                            "milliseconds; give seconds (or a unit on the command line)")
    ti, data = _sorted(ti, vol.data)
    return InversionRecoveryProtocol(ti, source=source), data


def _load_b1(args, vol) -> np.ndarray:
    from ..io import load_nifti

    b1 = load_nifti(args.b1)
    data = b1.data
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3 or not same_grid(data.shape, b1.affine, vol.spatial_shape, vol.affine):
        raise GeometryError(f"--b1 {args.b1}: its grid {data.shape} differs from the series grid "
                            f"{vol.spatial_shape}; resample the B1 map onto the series first")
    data = data.astype(np.float64)
    if args.b1_unit == "percent":
        data = data / 100.0
    return data


# ----------------------------------------------------------------- run


def run(args) -> int:
    """Fit the T1 series named by ``args`` and write the maps; returns 0."""
    from .. import __version__
    from ..io import derivative_prefix, load_mask, write_derivatives
    from ..io.bids import series_prefix
    from ..models.t1 import IRModel, VFAModel

    method = args.method
    if method is not None and method not in VFA_METHODS + IR_METHODS:
        raise ValidationError(f"--method {method!r} is not a T1 method; choose one of "
                              f"{', '.join(VFA_METHODS + IR_METHODS)}")
    if args.flip_angles and args.inversion_times:
        raise ProtocolError("--flip-angles and --inversion-times exclude each other: a series is "
                            "either variable flip angle or inversion recovery")
    vol, metas = _load_series(args)
    if vol.data.ndim != 4 or vol.data.shape[-1] < 2:
        raise ValidationError(f"{args.inputs[0]}: has shape {vol.data.shape}; a T1 series needs "
                              "several volumes (flip angles or inversion times) on the 4th axis")
    n = vol.data.shape[-1]
    is_ir = (bool(args.inversion_times) or method in IR_METHODS
             or isinstance(vol.protocol, InversionRecoveryProtocol))
    if not (is_ir or args.flip_angles or isinstance(vol.protocol, VariableFlipAngleProtocol)):
        ti = _sidecar_list(metas, "InversionTime", n, f"{args.inputs[0]} sidecar")
        fa = _sidecar_list(metas, "FlipAngle", n, f"{args.inputs[0]} sidecar")
        is_ir = ti is not None and ti.size == n and (fa is None or fa.size != n)
    if is_ir and method in VFA_METHODS:
        raise ValidationError(f"--method {method} is a VFA method but the series is inversion "
                              f"recovery; choose one of {', '.join(IR_METHODS)}")
    if is_ir and args.b1:
        raise ValidationError("--b1 applies to variable flip angle series only")

    mask = load_mask(args.mask, like=vol) if args.mask else None
    if is_ir:
        protocol, data = _ir_inputs(args, vol, metas, n)
        model = IRModel(protocol, method=method, signal=args.signal)
        fit = model.fit(data, mask=mask)
        kind = "inversion recovery"
    else:
        protocol, data = _vfa_inputs(args, vol, metas, n)
        b1 = _load_b1(args, vol) if args.b1 else None
        model = VFAModel(protocol, method=method)
        fit = model.fit(data, mask=mask, b1=b1)
        kind = "variable flip angle"

    prefix = args.prefix or (derivative_prefix(vol.sources) if all(_is_nifti(p) for p in args.inputs)
                             else series_prefix(vol))
    common = {"Software": f"oncomri {__version__}", "Model": f"T1 {kind}",
              "Method": model.method, "Sources": [str(p) for p in args.inputs]}
    if args.b1:
        common["B1Map"] = str(args.b1)
    written = write_derivatives(args.out, prefix, fit.output_maps(), reference=vol,
                                sidecar_common=common)
    counts = fit.summary()
    fitted = sum(v for k, v in counts.items() if k in ("ok", "not_converged", "at_bound"))
    print(f"t1 ({kind}, {model.method}): {fitted:,} voxels fitted "
          f"({counts.get('at_bound', 0):,} at a bound, {counts.get('not_converged', 0):,} not "
          f"converged), {counts.get('failed', 0) + counts.get('invalid_data', 0):,} not fittable; "
          f"{len(written)} maps in {args.out}")
    return 0
