"""``oncomri map dsc``: DSC perfusion maps (CBV, rCBV, CBF, MTT, K2) from a dynamic series.

Input: one 4D NIfTI file (frames on the 4th axis; BIDS sidecar with
``EchoTime`` in s and ``FrameTimesStart`` or ``RepetitionTime`` in s), or a
DICOM folder / Bruker scan / PAR file holding the dynamic series (frame
times from the acquisition or trigger times). Writes BIDS-derivative maps
with JSON sidecars (units) via :func:`oncomri.io.write_derivatives`. The
physics and its references are in :mod:`oncomri.models.dsc`.

Examples::

    oncomri map dsc sub-01_ses-1_dsc.nii.gz --out derivatives --te 30ms \\
        --baseline-frames 10 --aif-mask aif.nii.gz --reference-mask nawm.nii.gz
    oncomri map dsc dicom/ --series 7 --out derivatives --leakage-correction off
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from ..core.errors import ValidationError

__all__ = ["add_arguments", "run"]

def _baseline(text: str):
    """``'10'`` (first 10 frames), ``'2-11'`` (frames 2..11) or ``'2,3,4'`` (0-based)."""
    t = text.strip()
    try:
        if re.fullmatch(r"\d+", t):
            return int(t)
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", t)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            if b < a:
                raise ValueError
            return list(range(a, b + 1))
        return [int(v) for v in t.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a number of frames (10), a range (2-11) or 0-based indices (2,3,4)"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``oncomri map dsc INPUT... --out DIR``."""
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                        help="one 4D NIfTI file, or a DICOM folder / Bruker scan / PAR file")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--series", help="series to use if INPUT holds several")
    parser.add_argument("--prefix", help="output name prefix (default: from the input)")
    parser.add_argument("--te", help="echo time with unit (30ms, 0.03s); default: from the "
                                     "sidecar or the DICOM header")
    parser.add_argument("--frame-times", help="start time of every frame with unit "
                                              "(0,1.5,3,...s); default: from the input")
    parser.add_argument("--tr", help="frame interval with unit (1.5s); frames at 0, TR, 2TR ...")
    parser.add_argument("--baseline-frames", type=_baseline,
                        help="pre-bolus frames: a count N (the first N), a range 2-11 or "
                             "0-based indices; default: found from the mean signal")
    parser.add_argument("--mask", type=Path, help="voxels to fit (e.g. the brain), NIfTI on the series grid")
    parser.add_argument("--aif-mask", type=Path,
                        help="arterial voxels (NIfTI): their mean ΔR2* is the AIF; gives absolute "
                             "CBV, CBF and MTT")
    parser.add_argument("--reference-mask", type=Path,
                        help="normal-appearing tissue (NIfTI): rCBV = CBV / its mean CBV")
    parser.add_argument("--leakage-reference-mask", type=Path,
                        help="non-enhancing tissue for the BSW reference curve (default: the "
                             "non-enhancing voxels of --mask, found automatically)")
    parser.add_argument("--leakage-correction", choices=("on", "off"), default="on",
                        help="Boxerman-Schmainda-Weisskoff leakage correction (default on)")
    parser.add_argument("--method", choices=("osvd", "csvd", "ssvd"), default="osvd",
                        help="deconvolution for CBF/MTT (default osvd)")
    parser.add_argument("--oscillation-index", type=float, default=None,
                        help="oSVD oscillation-index threshold (default 0.095)")
    parser.add_argument("--integration-window", help="start,stop of the CBV integral with unit "
                                                     "(20,80s); default: the whole series")
    parser.add_argument("--hematocrit-factor", type=float, default=1.0,
                        help="k_H multiplying CBV and CBF (default 1)")
    parser.add_argument("--lesion-mask", type=Path,
                        help="lesion (NIfTI): print its mean rCBV against the ferumoxytol cut-off "
                             "1.75 (needs --reference-mask)")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")


def _is_nifti(path: Path) -> bool:
    return str(path).endswith((".nii", ".nii.gz"))


def _load(args):
    from ..io import load, load_nifti

    paths = list(args.inputs)
    if len(paths) != 1:
        raise ValidationError(
            f"give one dynamic series (a 4D NIfTI file or one DICOM folder), got {len(paths)} inputs")
    path = paths[0]
    volume = load_nifti(path) if _is_nifti(path) else load(path, series=args.series)
    if volume.data.ndim != 4 or volume.data.shape[-1] < 4:
        raise ValidationError(
            f"{path}: a DSC series is 4D with at least 4 frames, got shape {volume.data.shape}")
    return volume


def run(args) -> int:
    """Fit and write the DSC maps; returns the exit status (0). Bad input raises OncomriError."""
    from ..io import derivative_prefix, load_mask, write_derivatives
    from ..io.bids import series_prefix
    from ..models.dsc import DSCModel

    volume = _load(args)
    masks = {}
    for key in ("mask", "aif_mask", "reference_mask", "leakage_reference_mask", "lesion_mask"):
        path = getattr(args, key)
        masks[key] = load_mask(path, like=volume) if path else None
    if masks["lesion_mask"] is not None and masks["reference_mask"] is None:
        raise ValidationError("--lesion-mask needs --reference-mask (rCBV is relative to it)")
    result = DSCModel.fit_volume(
        volume, mask=masks["mask"], method=args.method, te=args.te, frame_times=args.frame_times,
        tr=args.tr, baseline_frames=args.baseline_frames,
        leakage_correction=args.leakage_correction == "on",
        oscillation_index=args.oscillation_index, integration_window=args.integration_window,
        hematocrit_factor=args.hematocrit_factor, aif_mask=masks["aif_mask"],
        reference_mask=masks["reference_mask"],
        leakage_reference_mask=masks["leakage_reference_mask"])
    fit = result.fit

    prefix = args.prefix or (derivative_prefix(volume.sources) if _is_nifti(args.inputs[0])
                             else series_prefix(volume))
    common = {
        **result.provenance,
        "Sources": [str(Path(s).resolve()) for s in volume.sources],
        **{f"{k.title().replace('_', '')}": (str(getattr(args, k).resolve()) if getattr(args, k) else None)
           for k in ("mask", "aif_mask", "reference_mask", "leakage_reference_mask")},
    }
    written = write_derivatives(args.out, prefix, result.maps, reference=volume,
                                sidecar_common=common)
    if not args.quiet:
        print(result.summary)
        print(f"wrote {len(written)} maps to {args.out}/{prefix}_*.nii.gz")
    if masks["lesion_mask"] is not None:
        from ..roi.celltracking import classify_rcbv

        vals = fit.rcbv[masks["lesion_mask"]]
        vals = vals[np.isfinite(vals)]
        if vals.size == 0:
            raise ValidationError("--lesion-mask holds no voxel with a fitted rCBV")
        result = classify_rcbv(float(vals.mean()))
        print(f"lesion mean rCBV {result.rcbv:.3f} ({vals.size} voxels): {result.label} "
              f"(cut-off {result.threshold:g}, ferumoxytol, Gahramanov et al. Radiology 2013)")
    return 0
