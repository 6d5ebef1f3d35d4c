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
from pathlib import Path

import numpy as np

from ..core.errors import GeometryError, ProtocolError, ValidationError
from ..core.volume import Volume, same_grid

__all__ = ["add_arguments", "run", "parse_flip_angles", "parse_times"]

#: Methods of oncomri.models.t1 (kept here so that --help does not import the models).
VFA_METHODS = ("nonlinear", "linear")
IR_METHODS = ("three_parameter", "two_parameter", "look_locker")


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
# (the parsers live with the model, shared with the study pipeline)


def parse_flip_angles(text: str, *, name: str = "--flip-angles") -> np.ndarray:
    """``'2,5,10,15deg'`` -> flip angles in degrees (:func:`oncomri.models.t1.parse_flip_angles`)."""
    from ..models.t1 import parse_flip_angles as parse

    return parse(text, name=name)


def parse_times(text: str, *, name: str):
    """``'5ms'`` or ``'50,100,200ms'`` -> list of seconds (:func:`oncomri.models.t1.parse_times`)."""
    from ..models.t1 import parse_times as parse

    return parse(text, name=name)


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


def _merge_sidecars(vol: Volume, metas: list) -> None:
    """Per-file sidecars (one 3D file per flip angle / inversion time) as one
    sidecar with a list per key (the first value of each file), as a 4D file has."""
    if len(metas) == 1:
        return
    for key in ("FlipAngle", "InversionTime", "RepetitionTime"):
        raw = [m.get(key) for m in metas]
        if any(v is None for v in raw):
            vol.meta.pop(key, None)
        else:
            vol.meta[key] = [float(np.atleast_1d(np.asarray(v, dtype=np.float64))[0])
                             for v in raw]


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
    """Fit the T1 series named by ``args`` and write the maps; returns 0.

    Files are read here; :func:`oncomri.models.t1.fit_t1_volume` (shared
    with the study pipeline) builds the protocol and fits.
    """
    from ..io import derivative_prefix, load_mask, write_derivatives
    from ..io.bids import series_prefix
    from ..models.t1 import fit_t1_volume

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
    _merge_sidecars(vol, metas)
    mask = load_mask(args.mask, like=vol) if args.mask else None
    b1 = _load_b1(args, vol) if args.b1 else None
    result = fit_t1_volume(vol, None, mask=mask, method=method, label=str(args.inputs[0]),
                           flip_angles=args.flip_angles, tr=args.tr, b1=b1,
                           inversion_times=args.inversion_times, signal=args.signal)
    prefix = args.prefix or (derivative_prefix(vol.sources) if all(_is_nifti(p) for p in args.inputs)
                             else series_prefix(vol))
    common = {**result.provenance, "Sources": [str(p) for p in args.inputs]}
    if args.b1:
        common["B1Map"] = str(args.b1)
    written = write_derivatives(args.out, prefix, result.maps, reference=vol,
                                sidecar_common=common)
    print(f"{result.summary}; {len(written)} maps in {args.out}")
    return 0
