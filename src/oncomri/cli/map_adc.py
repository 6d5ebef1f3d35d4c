"""``oncomri map adc|ivim|dki INPUT... --out DIR``: diffusion maps from a DWI series.

One module serves the three diffusion kinds; :func:`add_arguments` takes the
kind (``'adc'``, ``'ivim'`` or ``'dki'``) and records it in the parsed
arguments, :func:`run` fits the matching model of :mod:`oncomri.models.diffusion`.

Input: a 4D NIfTI file (volumes on the 4th axis) with its FSL/BIDS ``.bval``
file (b-values in s/mm², found next to the image or given with ``--bval``;
a ``.bvec`` is checked for its size and otherwise ignored, these models being
rotation invariant), or a DICOM folder / Bruker scan / PAR file whose reader
yields a diffusion protocol. Measurements of the same b-value (several
directions, repeats) are averaged per shell before fitting: geometric mean
(the trace-weighted image, whose decay gives the mean diffusivity), or
arithmetic mean for the noise-floor method ``ncexp`` (see
:mod:`oncomri.models.diffusion`).

Output: BIDS-named maps with JSON sidecars (units named): ``ADCmap``
(mm^2/s) and ``S0map`` for adc; ``Dmap``, ``Dstarmap`` (mm^2/s), ``fmap``
and ``desc-ivim_S0map`` for ivim; ``Kmap``, ``desc-dki_Dmap`` and
``desc-dki_S0map`` for dki; fit quality and a status map for each.

Bad input raises an :class:`~oncomri.core.errors.OncomriError` with a
one-line message; ``oncomri``'s main turns it into exit status 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..core.errors import ProtocolError, ReadError, ValidationError
from ..core.protocols import DiffusionProtocol
from .main import noise_sigma_arg

__all__ = ["KINDS", "add_arguments", "run", "read_bval", "read_bvec", "load_dwi"]

#: kind -> (model class name in oncomri.models.diffusion, help text)
KINDS = {
    "adc": ("ADCModel", "apparent diffusion coefficient, S0 exp(-b ADC)"),
    "ivim": ("IVIMModel", "intravoxel incoherent motion: D, D*, perfusion fraction f"),
    "dki": ("DKIModel", "mean-signal diffusional kurtosis: D and K"),
}


def _b_range(text: str):
    parts = [p.strip() for p in text.split(",")]
    try:
        if len(parts) != 2:
            raise ValueError
        lo, hi = (float(p) if p else None for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give LOW,HIGH in s/mm² (either may be empty, e.g. '200,')") from None
    return lo, hi


def add_arguments(parser: argparse.ArgumentParser, kind: str = "adc") -> None:
    """Add the options of ``oncomri map <kind>`` (kind: 'adc', 'ivim' or 'dki') to ``parser``."""
    from ..models import diffusion

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    model = getattr(diffusion, KINDS[kind][0])
    parser.set_defaults(diffusion_kind=kind)
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="4D NIfTI with a .bval file beside it (or --bval), or one DICOM "
                             "folder, Bruker scan or PAR file of a diffusion series")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument("--bval", type=Path, metavar="FILE",
                        help="b-values in s/mm² (FSL/BIDS .bval: one row, one per volume); "
                             "default: <image>.bval; overrides the scanner files' b-values")
    parser.add_argument("--bvec", type=Path, metavar="FILE",
                        help="gradient directions (.bvec); only checked, these scalar models "
                             "average directions per b-value")
    parser.add_argument("--series", metavar="N",
                        help="which series, when INPUT holds several (SeriesNumber or description)")
    parser.add_argument("--mask", type=Path, metavar="FILE", help="fit only inside this mask (NIfTI)")
    parser.add_argument("--method", choices=list(model.methods), default=None,
                        help=f"fitting method (default {model.default_method}); "
                             + ", ".join(model.methods))
    parser.add_argument("--noise-sigma", type=noise_sigma_arg, default="auto", metavar="X",
                        help="noise sigma in signal units for the noise-floor method ncexp, or "
                             "'auto' (estimate from the background of the lowest-b image; default)")
    parser.add_argument("--noise-mask", type=Path, metavar="FILE",
                        help="air region (NIfTI mask) to estimate the noise sigma from")
    if kind == "ivim":
        parser.add_argument("--b-threshold", type=float, default=diffusion.B_THRESHOLD,
                            metavar="B", help="s/mm²: D is fitted from b >= B first "
                                              f"(default {diffusion.B_THRESHOLD:g})")
    else:
        parser.add_argument("--b-range", type=_b_range, default=(None, None), metavar="LOW,HIGH",
                            help="fit only b-values in this range (s/mm²), e.g. '200,' to "
                                 "suppress perfusion")
    parser.add_argument("--prefix", help="output file prefix (default: from the input name or "
                                         "the series description and number)")


def _numbers(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise ReadError(f"{path}: {what} file not found; give it with --{what}")
    try:
        rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
        return np.array(rows, dtype=np.float64)
    except (ValueError, UnicodeDecodeError):
        raise ReadError(f"{path}: not a {what} file (rows of numbers separated by spaces)") from None


def read_bval(path) -> np.ndarray:
    """b-values (s/mm²) of an FSL/BIDS ``.bval`` file: numbers separated by blanks or newlines."""
    path = Path(path)
    values = _numbers(path, "bval").reshape(-1)
    if values.size == 0:
        raise ReadError(f"{path}: holds no b-values; write one per volume, in s/mm²")
    return values


def read_bvec(path, n: int) -> np.ndarray:
    """Gradient directions of a ``.bvec`` file as (n, 3); checks their number only."""
    path = Path(path)
    values = _numbers(path, "bvec")
    if values.shape == (3, n):
        return values.T
    if values.shape == (n, 3):
        return values
    raise ProtocolError(f"{path}: gradient table of shape {values.shape} does not match the "
                        f"{n} volumes; expected 3 rows of {n} values (FSL .bvec)")


def _sibling(image: Path, suffix: str) -> Path:
    name = image.name
    stem = name[:-7] if name.endswith(".nii.gz") else name[:-4] if name.endswith(".nii") else name
    return image.with_name(stem + suffix)


def _is_nifti(path) -> bool:
    return str(path).endswith((".nii", ".nii.gz"))


def load_dwi(inputs, *, bval=None, bvec=None, series=None):
    """The diffusion series named on the command line, as a Volume with a DiffusionProtocol.

    The number of b-values must equal the number of volumes, else one
    ProtocolError naming both.
    """
    from ..io import load_nifti
    from ..io.registry import describe_series
    from ..study.mapping import load_scan

    paths = [Path(p) for p in inputs]
    if all(_is_nifti(p) for p in paths):
        if len(paths) != 1:
            raise ValidationError(f"give one 4D NIfTI file with all diffusion volumes, got {len(paths)} "
                                  "files; merge them first (e.g. fslmerge -t)")
        volume = load_nifti(paths[0])
        what = f"{paths[0]}"
        bval_path = Path(bval) if bval is not None else _sibling(paths[0], ".bval")
        if bval is None and not bval_path.is_file():
            raise ReadError(f"{paths[0]}: no b-values: {bval_path.name} not found next to it; "
                            "give them with --bval FILE (s/mm², one per volume)")
        b = read_bval(bval_path)
        source = str(bval_path)
    else:
        volume = load_scan(paths, series=series)
        what = f"{paths[0]}: series {describe_series(volume)}"
        if bval is not None:
            b = read_bval(bval)
            source = str(bval)
        elif isinstance(volume.protocol, DiffusionProtocol):
            b = volume.protocol.b_values
            source = volume.protocol.source
        else:
            kind = type(volume.protocol).__name__ if volume.protocol is not None else "a single image"
            raise ProtocolError(f"{what} is not a diffusion series ({kind}); choose a diffusion "
                                "series with --series or give the b-values with --bval")
    n_volumes = volume.data.shape[-1] if volume.data.ndim == 4 else 1
    if b.size != n_volumes:
        raise ProtocolError(f"{source} lists {b.size} b-values but {what} has {n_volumes} "
                            f"volume{'s' if n_volumes != 1 else ''}; give one b-value per volume")
    if bvec is not None or (bval is None and all(_is_nifti(p) for p in paths)
                            and _sibling(paths[0], ".bvec").is_file()):
        read_bvec(bvec if bvec is not None else _sibling(paths[0], ".bvec"), n_volumes)
    volume.protocol = DiffusionProtocol(b, source=source)
    return volume


def run(args) -> int:
    """Fit the diffusion model of ``args.diffusion_kind`` and write its maps; returns 0."""
    from ..io import derivative_prefix, load_mask, write_derivatives
    from ..io.bids import series_prefix
    from ..models import diffusion

    kind = getattr(args, "diffusion_kind", "adc")
    cls = getattr(diffusion, KINDS[kind][0])
    volume = load_dwi(args.inputs, bval=args.bval, bvec=args.bvec, series=args.series)
    mask = load_mask(args.mask, like=volume) if args.mask else None
    background = load_mask(args.noise_mask, like=volume) if args.noise_mask else None
    options = ({"b_threshold": args.b_threshold} if kind == "ivim"
               else {"b_range": args.b_range})
    result = cls.fit_volume(volume, mask=mask, method=args.method, noise_sigma=args.noise_sigma,
                            noise_background=background, **options)
    common = {**result.provenance,
              "Sources": [str(Path(s).resolve()) for s in volume.sources],
              "Mask": str(args.mask.resolve()) if args.mask else None}
    prefix = args.prefix or (derivative_prefix(volume.sources)
                             if all(_is_nifti(p) for p in args.inputs) else series_prefix(volume))
    written = write_derivatives(args.out, prefix, result.maps, reference=volume,
                                sidecar_common=common)
    print(result.summary)
    print(f"wrote {len(written)} maps to {args.out}/{prefix}_*.nii.gz")
    return 0
