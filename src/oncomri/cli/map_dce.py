"""``oncomri map dce``: Ktrans, ve, vp (Fp, PS) and model-free maps from a DCE series.

Input: one 4D NIfTI with a BIDS sidecar (``FrameTimesStart`` or
``--times``/``--temporal-resolution``; ``FlipAngle`` in degrees,
``RepetitionTime`` in s, ``MagneticFieldStrength`` in T), or a DICOM folder,
Bruker scan or PAR file holding a dynamic series. The signal is converted to
concentration (spoiled gradient echo, baseline T1 as a number or a map,
relaxivity from the agent and field or given) and fitted with the chosen
model (by default in the signal domain); model-free measures are computed
on the concentration. Maps are written as BIDS derivatives with units.

Examples::

    oncomri map dce sub-01_ses-1_dce.nii.gz --out derivatives --t1 1.4s \\
        --agent gadobutrol --baseline-frames 8 --aif parker --fit-delay
    oncomri map dce dicom/ --series 7 --out derivatives --t1-map T1map.nii.gz \\
        --relaxivity 4.5 --aif measured --aif-mask artery.nii.gz --aif-auto --t1-blood 1.6s
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np

from ..core.errors import ProtocolError, ValidationError

__all__ = ["add_arguments", "run"]

_TIME = {"s": 1.0, "ms": 1e-3, "min": 60.0}


def _quantity(text: str, *, name: str, units=_TIME, default_unit=None) -> list[float]:
    m = re.fullmatch(r"\s*([-+0-9.eE,\s]+?)\s*([a-zµ]*)\s*", str(text or ""))
    if not m:
        raise ProtocolError(f"{name} {text!r}: not a number (list) with a unit")
    unit = m.group(2) or default_unit
    if unit not in units:
        raise ProtocolError(f"{name} {text!r}: give a unit, one of {', '.join(units)}")
    try:
        return [float(v) * units[unit] for v in re.split(r"[,\s]+", m.group(1).strip()) if v]
    except ValueError:
        raise ProtocolError(f"{name} {text!r}: not a comma-separated list of numbers") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``oncomri map dce``."""
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="4D NIfTI with BIDS sidecar, or a DICOM folder / Bruker scan / PAR file")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument("--series", metavar="N", help="which series, when INPUT holds several")
    parser.add_argument("--mask", type=Path, metavar="FILE", help="fit only inside this mask (NIfTI)")
    parser.add_argument("--prefix", help="output file prefix (default: from the input)")
    g = parser.add_argument_group("acquisition (override the sidecar / headers)")
    g.add_argument("--times", metavar="LIST", help="frame times with a unit, e.g. '0,5,10,...s'")
    g.add_argument("--temporal-resolution", metavar="DT",
                   help="frame interval with a unit (e.g. '4.2s'); times = i * DT")
    g.add_argument("--flip-angle", type=float, metavar="DEG", help="flip angle in degrees")
    g.add_argument("--tr", metavar="TR", help="repetition time with a unit, e.g. '5ms'")
    g.add_argument("--field", type=float, metavar="T", help="field strength in tesla")
    g.add_argument("--baseline-frames", type=int, default=5, metavar="N",
                   help="pre-contrast frames at the start (default 5)")
    g.add_argument("--input-kind", choices=["signal", "concentration"], default="signal",
                   help="the series holds signal (default) or concentration in mM")
    r = parser.add_argument_group("relaxation")
    t1 = r.add_mutually_exclusive_group()
    t1.add_argument("--t1", metavar="T1", help="pre-contrast tissue T1 with a unit, e.g. '1.4s'")
    t1.add_argument("--t1-map", type=Path, metavar="FILE", help="pre-contrast T1 map (NIfTI, s)")
    r.add_argument("--agent", help="contrast agent (gadobutrol, gadoterate, gadoteridol, ferumoxytol)")
    r.add_argument("--relaxivity", type=float, metavar="R1", help="r1 in 1/(mM s) instead of the table")
    a = parser.add_argument_group("arterial input")
    a.add_argument("--aif", choices=["parker", "preclinical", "measured"], default="parker",
                   help="population AIF (Parker human, McGrath rodent) or measured (default parker)")
    a.add_argument("--aif-mask", type=Path, metavar="FILE",
                   help="arterial voxels (or the search region with --aif-auto), NIfTI")
    a.add_argument("--aif-auto", action="store_true",
                   help="select arterial voxels automatically inside --aif-mask (high, early peaks)")
    a.add_argument("--aif-voxels", type=int, default=10, metavar="N", help="voxels for --aif-auto")
    a.add_argument("--t1-blood", metavar="T1", help="blood T1 for a measured AIF, e.g. '1.6s'")
    a.add_argument("--hematocrit", type=float, default=0.42, help="blood to plasma (default 0.42)")
    a.add_argument("--aif-onset", metavar="T",
                   help="population AIF arrival with a unit (default: time of the first frame after "
                        "the baseline); model-free measures start at the last baseline frame")
    a.add_argument("--aif-oversample", type=int, default=4, metavar="K",
                   help="knots per frame of a population AIF (default 4)")
    f = parser.add_argument_group("model")
    # dest is not 'model': `oncomri map` sets args.model to the map kind ('dce')
    f.add_argument("--model", dest="kinetic_model", default="extended_tofts",
                   choices=["tofts", "extended_tofts", "patlak", "2cxm", "2cum", "none"],
                   help="tracer-kinetic model (default extended_tofts); none: model-free only")
    f.add_argument("--fit-delay", action="store_true", help="fit the bolus-arrival delay per voxel")
    f.add_argument("--fit-domain", choices=["signal", "concentration"], default=None,
                   help="fit the signal (default for signal input) or the concentration")
    f.add_argument("--iauc", default="60,90", metavar="LIST",
                   help="IAUC windows in s after the onset (default 60,90); '' for none")
    f.add_argument("--quiet", action="store_true")


def _load(args):
    from ..io import load, load_nifti

    paths = [Path(p) for p in args.inputs]
    if all(str(p).endswith((".nii", ".nii.gz")) for p in paths):
        if len(paths) != 1:
            raise ValidationError("give one 4D NIfTI file with the dynamics on the 4th axis")
        volume = load_nifti(paths[0])
    else:
        if len(paths) != 1:
            raise ValidationError("give one DICOM folder, Bruker scan or PAR file")
        volume = load(paths[0], series=args.series)
    if volume.data.ndim != 4 or volume.data.shape[-1] < 3:
        raise ValidationError(f"{paths[0]}: a DCE series needs a 4th (dynamic) axis with at least "
                              f"3 frames; got shape {volume.data.shape}")
    return volume


def _t1(args, volume):
    from ..io import load_nifti
    from ..core.volume import same_grid

    if args.t1:
        return _quantity(args.t1, name="--t1", default_unit=None)[0], args.t1
    if args.t1_map:
        vol = load_nifti(args.t1_map)
        data = vol.data[..., 0] if vol.data.ndim == 4 else vol.data
        if not same_grid(data.shape, vol.affine, volume.spatial_shape, volume.affine):
            raise ValidationError(f"{args.t1_map}: T1 map grid differs from the DCE series; "
                                  "resample it onto the series grid first")
        unit = str(vol.meta.get("Units", "s")).strip()
        data = np.asarray(data, np.float64) * (1e-3 if unit == "ms" else 1.0)
        return data, str(args.t1_map)
    raise ProtocolError("give the pre-contrast T1: --t1 VALUE (e.g. '1.4s') or --t1-map FILE")


#: argparse dest -> option of :func:`oncomri.models.dce.fit_dce_volume` (same names).
_OPTIONS = ("times", "temporal_resolution", "flip_angle", "tr", "field", "baseline_frames",
            "input_kind", "agent", "relaxivity", "aif", "aif_auto", "aif_voxels", "t1_blood",
            "hematocrit", "aif_onset", "aif_oversample", "fit_delay", "fit_domain", "iauc")


def run(args) -> int:
    """Run ``oncomri map dce`` for parsed ``args``; returns the exit status (0).

    Reads the files, then :meth:`oncomri.models.DCEModel.fit_volume` does the
    conversion, the fit and the model-free measures (shared with the study
    pipeline); the maps are written as BIDS derivatives.
    """
    from ..io import derivative_prefix, load_mask, write_derivatives
    from ..io.bids import series_prefix
    from ..models.dce import DCEModel

    start = time.perf_counter()
    volume = _load(args)
    options = {key: getattr(args, key) for key in _OPTIONS}
    t1_label = None
    if args.input_kind == "signal" and (args.t1 or args.t1_map):
        options["t1"], t1_label = _t1(args, volume)
        if args.t1_map:
            options["t1"] = np.asarray(options["t1"])
    mask = load_mask(args.mask, like=volume) if args.mask else None
    if args.aif_mask is not None:
        options["aif_mask"] = load_mask(args.aif_mask, like=volume)
    result = DCEModel.fit_volume(volume, mask=mask, method=args.kinetic_model, **options)
    common = {**result.provenance, "Sources": list(volume.sources)}
    if "T1Baseline" in common and t1_label is not None:
        common["T1Baseline"] = t1_label
    from_nifti = all(str(p).endswith((".nii", ".nii.gz")) for p in args.inputs)
    prefix = args.prefix or (derivative_prefix(volume.sources) if from_nifti else series_prefix(volume))
    written = write_derivatives(args.out, prefix, result.maps, reference=volume,
                                sidecar_common=common)
    if not getattr(args, "quiet", False):
        if result.summary:
            print(result.summary + f", {time.perf_counter() - start:.2f} s")
        print(f"wrote {len(written)} maps to {args.out}/{prefix}_*.nii.gz")
    return 0
