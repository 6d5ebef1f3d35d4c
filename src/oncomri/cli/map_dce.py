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
from ..core.protocols import DCEProtocol

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


def _frame_times(args, volume) -> np.ndarray:
    from ..models.dsc import dynamic_protocol

    n = volume.data.shape[-1]
    label = volume.sources[0] if volume.sources else "input"
    if args.times:
        t = np.asarray(_quantity(args.times, name="--times"))
        src = "--times"
    elif args.temporal_resolution:
        dt = _quantity(args.temporal_resolution, name="--temporal-resolution")[0]
        if not dt > 0:
            raise ProtocolError("--temporal-resolution must be positive")
        t = np.arange(n) * dt
        src = "--temporal-resolution"
    elif getattr(volume.protocol, "times", None) is not None:
        t = np.asarray(volume.protocol.times, float)
        src = f"{label}: the series' acquisition times"
    elif isinstance(volume.meta.get("FrameTimesStart"), list):
        t = np.asarray(volume.meta["FrameTimesStart"], float)
        src = f"{label}: sidecar FrameTimesStart"
    else:
        raise ProtocolError(f"{label}: no frame times (no FrameTimesStart in the sidecar); "
                            "give --times or --temporal-resolution")
    if t.size != n:
        raise ProtocolError(f"{src} lists {t.size} frame times but the series has {n} frames")
    # one line naming the source and the first frame out of order
    return np.asarray(dynamic_protocol(t, source=src).times, float)


def _protocol(args, volume, times) -> DCEProtocol:
    meta = volume.meta
    label = volume.sources[0] if volume.sources else "input"
    fa = args.flip_angle if args.flip_angle is not None else meta.get("FlipAngle")
    fa_src = "--flip-angle" if args.flip_angle is not None else f"{label}: FlipAngle"
    if fa is None:
        raise ProtocolError(f"{label}: no FlipAngle in the sidecar/headers; give --flip-angle "
                            "in degrees")
    try:
        fa = float(fa)
    except (TypeError, ValueError):
        raise ProtocolError(f"{fa_src} {fa!r}: give one flip angle in degrees (e.g. 15)") from None
    if fa < 1.0:
        raise ProtocolError(f"{fa_src} {fa:g} looks like radians; give it in degrees (e.g. 15)")
    tr = _quantity(args.tr, name="--tr")[0] if args.tr else meta.get("RepetitionTime")
    if tr is None:
        raise ProtocolError("no repetition time in the sidecar/headers; give --tr (e.g. '5ms')")
    field = args.field if args.field is not None else meta.get("MagneticFieldStrength")
    return DCEProtocol(times, np.deg2rad(fa), float(tr), args.baseline_frames,
                       None if field is None else float(field), source="oncomri map dce")


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


def run(args) -> int:
    """Run ``oncomri map dce`` for parsed ``args``; returns the exit status (0)."""
    from .. import __version__
    from ..io import derivative_prefix, load_mask, write_derivatives
    from ..io.bids import series_prefix
    from ..models.aif import measured_aif, population_aif
    from ..models.dce import (
        DCEModel,
        model_free_measures,
        model_free_output_maps,
        relaxivity,
        signal_to_concentration,
    )

    start = time.perf_counter()
    volume = _load(args)
    times = _frame_times(args, volume)
    mask = load_mask(args.mask, like=volume) if args.mask else None
    data = volume.data
    is_signal = args.input_kind == "signal"
    protocol = None
    t1 = t1_label = r1 = None
    if is_signal:
        protocol = _protocol(args, volume, times)
        t1, t1_label = _t1(args, volume)
        if args.relaxivity is not None:
            r1 = float(args.relaxivity)
            if not r1 > 0:
                raise ValidationError("--relaxivity must be positive, in 1/(mM s)")
        elif args.agent:
            r1 = relaxivity(args.agent, protocol.magnetic_field_strength)
        else:
            raise ProtocolError("give --agent NAME (with the field) or --relaxivity R1 in 1/(mM s)")
        conc = signal_to_concentration(data, protocol, t1_baseline=t1, relaxivity=r1)
    else:
        if args.baseline_frames >= times.size:
            raise ProtocolError(f"--baseline-frames {args.baseline_frames} leaves no dynamic frames")
        conc = np.asarray(data)
    nb = args.baseline_frames

    # arterial input
    if args.aif == "measured":
        if args.aif_mask is None:
            raise ValidationError("--aif measured needs --aif-mask FILE (arterial voxels or a "
                                  "search region with --aif-auto)")
        aif_mask = load_mask(args.aif_mask, like=volume)
        if is_signal:
            if not args.t1_blood:
                raise ProtocolError("--aif measured needs the blood T1: --t1-blood VALUE (e.g. '1.6s')")
            t1b = _quantity(args.t1_blood, name="--t1-blood")[0]
            sub = data[aif_mask]
            blood = signal_to_concentration(sub, protocol, t1_baseline=t1b, relaxivity=r1)
        else:
            blood = np.asarray(conc)[aif_mask]
        aif = measured_aif(blood[:, None, None, :], times, np.ones(blood.shape[:1] + (1, 1), bool),
                           hematocrit=args.hematocrit, auto_select=args.aif_auto,
                           n_voxels=args.aif_voxels)
    else:
        if args.aif_mask is not None or args.aif_auto:
            raise ValidationError("--aif-mask/--aif-auto apply to --aif measured only")
        onset = (_quantity(args.aif_onset, name="--aif-onset")[0] if args.aif_onset
                 else float(times[nb]))
        aif = population_aif(args.aif, times, onset=onset, hematocrit=args.hematocrit,
                             oversample=args.aif_oversample)

    common = {"Software": f"oncomri {__version__}", "Sources": list(volume.sources),
              "FrameTimes_s": [float(v) for v in times], "BaselineFrames": nb}
    if is_signal:
        common.update({"FlipAngle_deg": float(np.rad2deg(protocol.flip_angle)),
                       "RepetitionTime_s": protocol.repetition_time,
                       "MagneticFieldStrength_T": protocol.magnetic_field_strength,
                       "Relaxivity_per_mM_s": r1, "T1Baseline": t1_label,
                       "ContrastAgent": args.agent})
    maps = {}
    summary = ""
    if args.kinetic_model != "none":
        model = DCEModel(times if protocol is None else protocol, aif, method=args.kinetic_model,
                         fit_delay=args.fit_delay)
        domain = args.fit_domain or ("signal" if is_signal else "concentration")
        if domain == "signal" and not is_signal:
            raise ValidationError("--fit-domain signal needs --input-kind signal")
        if domain == "signal":
            fit = model.fit(data, mask=mask, t1_baseline=t1, relaxivity=r1)
        else:
            fit = model.fit(conc, mask=mask)
        for key, (arr, side) in fit.output_maps().items():
            maps[key] = (arr, {**side, "FitDomain": domain})
        counts = fit.summary()
        n_fitted = counts.get('ok', 0) + counts.get('at_bound', 0)
        summary = (f"{args.kinetic_model}: {n_fitted:,} voxels fitted "
                   f"({counts.get('at_bound', 0):,} at a bound, {counts.get('not_converged', 0):,} "
                   f"not converged), {counts.get('failed', 0) + counts.get('invalid_data', 0):,} "
                   f"failures, {counts.get('masked', 0):,} masked out")
    windows = _quantity(args.iauc, name="--iauc", default_unit="s") if args.iauc.strip() else []
    onset_mf = float(times[nb - 1])
    measures = model_free_measures(conc, times, onset=onset_mf, iauc_times=windows, mask=mask)
    maps.update(model_free_output_maps(measures, onset=onset_mf))

    from_nifti = all(str(p).endswith((".nii", ".nii.gz")) for p in args.inputs)
    prefix = args.prefix or (derivative_prefix(volume.sources) if from_nifti else series_prefix(volume))
    written = write_derivatives(args.out, prefix, maps, reference=volume,
                                sidecar_common={**common, "AIF": aif.description})
    if not getattr(args, "quiet", False):
        if summary:
            print(summary + f", {time.perf_counter() - start:.2f} s")
        print(f"wrote {len(written)} maps to {args.out}/{prefix}_*.nii.gz")
    return 0
