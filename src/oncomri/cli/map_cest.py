"""``oncomri map cest``: Z-spectrum, B0, MTRasym (and multi-pool Lorentzian) maps of a CEST series.

Input: one CEST series (a 4D NIfTI with its BIDS sidecar, or a DICOM folder,
Bruker scan or PAR file), one volume per saturation offset, M0 included.
Offsets come from ``--offsets`` / ``--offsets-file`` or the sidecar
(``SaturationOffsets`` in ppm, or ``SaturationOffsetsHz`` in Hz); the M0
volume(s) from ``--m0-index`` or, without it, every offset with
``|offset| >= 100 ppm``. B0 comes from the Z-spectrum minimum (default), a
WASSR series (``--wassr``) or a B0 map (``--b0-map``, Hz or ppm).

Writes BIDS-derivative maps with JSON sidecars (see
:meth:`oncomri.models.cest.CESTFit.output_maps`): ``M0map``,
``desc-ppm_B0map``, ``desc-Hz_B0map`` (with a field strength),
``desc-MTRasym<Δω>_CESTmap`` per offset of interest (``3p5ppm``),
``desc-Zspectrum_CESTmap`` (4D), pool maps for ``--method lorentzian``, and
``desc-cestfit_status``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..core.errors import ProtocolError, ReadError, ValidationError

__all__ = ["add_arguments", "run", "parse_offsets"]

#: The B0 corrections accepted on the command line.
B0_CHOICES = ("minimum", "spline", "wassr", "map", "none")


def parse_offsets(text: str, *, name: str, field: float | None = None) -> list[float]:
    """Parse ``'-300,-3.5,0,3.5ppm'`` (or ``...Hz`` with a field in T) into ppm values."""
    from ..models.cest import parse_offsets as parse

    return parse(text, name=name, field=field)


def _field_arg(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*(T)?\s*", text)
    try:
        return float(m.group(1)) if m else float("nan")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a field strength like 3T") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``oncomri map cest INPUT --out DIR ...``."""
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="the CEST series: a 4D NIfTI (with a BIDS sidecar), or a DICOM "
                             "folder, Bruker scan or PAR file")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument("--series", metavar="N", help="which series, when INPUT holds several")
    parser.add_argument("--offsets", metavar="LIST",
                        help="saturation offsets with a unit, one per volume in order, M0 "
                             "included, e.g. --offsets=-300,-6,-5.5,...,6ppm (write '=' when "
                             "the list starts with a minus; Hz needs --field); "
                             "overrides the sidecar's SaturationOffsets")
    parser.add_argument("--offsets-file", type=Path, metavar="FILE",
                        help="text file of offsets in ppm (whitespace or comma separated), "
                             "one per volume")
    parser.add_argument("--m0-index", metavar="I[,J]",
                        help="0-based index of the unsaturated M0 volume(s) (default: every "
                             "offset with |offset| >= 100 ppm)")
    parser.add_argument("--field", type=_field_arg, metavar="B0",
                        help="field strength, e.g. 3T (default: the sidecar's MagneticFieldStrength)")
    parser.add_argument("--b0-correction", choices=B0_CHOICES,
                        help="B0 correction (default: map with --b0-map, wassr with --wassr, "
                             "else minimum: Lorentzian fit around the Z-spectrum minimum)")
    parser.add_argument("--b0-map", type=Path, metavar="FILE",
                        help="B0 shift map (NIfTI on the CEST grid) in Hz or ppm (--b0-unit, "
                             "else the map sidecar's Units)")
    parser.add_argument("--b0-unit", choices=("Hz", "ppm"), help="unit of --b0-map")
    parser.add_argument("--wassr", type=Path, metavar="FILE",
                        help="WASSR series (4D NIfTI on the CEST grid) for B0 by maximum symmetry")
    parser.add_argument("--wassr-offsets", metavar="LIST",
                        help="WASSR offsets with a unit, e.g. '-1,-0.9,...,1ppm' (default: "
                             "its sidecar's SaturationOffsets)")
    parser.add_argument("--offsets-of-interest", default="0.4,2,3.5ppm", metavar="LIST",
                        help="positive offsets for MTRasym (default '0.4,2,3.5ppm': lactate, "
                             "creatine/amine, amide)")
    parser.add_argument("--method", choices=("mtrasym", "lorentzian"), default="mtrasym",
                        help="mtrasym (default): Z, B0, MTRasym; lorentzian: also the "
                             "multi-pool Lorentzian fit")
    parser.add_argument("--pools", default="water,amide,amine,noe,mt", metavar="LIST",
                        help="Lorentzian pools, water first (default water,amide,amine,noe,mt; "
                             "also lactate)")
    parser.add_argument("--mask", type=Path, metavar="FILE", help="fit only inside this mask (NIfTI)")
    parser.add_argument("--prefix", help="output file prefix (default: from the input name)")
    parser.add_argument("--quiet", action="store_true", help="no summary line")


def _is_nifti(path) -> bool:
    return str(path).endswith((".nii", ".nii.gz"))


def _load_series(args):
    from ..io import load, load_nifti

    if len(args.inputs) != 1:
        raise ValidationError(
            f"map cest takes one CEST series (a 4D file or one folder), got {len(args.inputs)} "
            "inputs; merge the offsets into one 4D NIfTI")
    path = args.inputs[0]
    volume = load_nifti(path) if _is_nifti(path) else load(path, series=args.series)
    if volume.data.ndim != 4 or volume.data.shape[3] < 4:
        raise ValidationError(
            f"{path}: a CEST series needs one volume per offset on the 4th axis, got shape "
            f"{volume.data.shape}")
    return volume


def _offsets_file(args):
    """Offsets (ppm) of ``--offsets-file``, or None."""
    if args.offsets and args.offsets_file:
        raise ValidationError("give --offsets or --offsets-file, not both")
    if not args.offsets_file:
        return None
    try:
        text = Path(args.offsets_file).read_text()
    except OSError as exc:
        raise ReadError(f"{args.offsets_file}: cannot read the offsets file ({exc.strerror})") from None
    try:
        return [float(v) for v in re.split(r"[,\s]+", text.strip()) if v]
    except ValueError:
        raise ProtocolError(f"{args.offsets_file}: offsets must be numbers in ppm, "
                            "separated by spaces, commas or new lines") from None


def _grid_check(other, volume, what):
    from ..core import GeometryError, same_grid

    if not same_grid(other.spatial_shape, other.affine, volume.spatial_shape, volume.affine):
        raise GeometryError(f"{what} grid {other.spatial_shape} differs from the CEST series grid "
                            f"{volume.spatial_shape}; resample it onto the CEST grid first")


def run(args) -> int:
    """Fit the CEST series and write the maps; raises OncomriError on bad input.

    Files are read here; :meth:`oncomri.models.CESTModel.fit_volume` (shared
    with the study pipeline) builds the protocol and fits.
    """
    from ..io import derivative_prefix, load_mask, load_nifti, write_derivatives
    from ..io.bids import series_prefix
    from ..models.cest import CESTModel, sidecar_offsets

    volume = _load_series(args)
    options = {"offsets": args.offsets, "m0_index": args.m0_index, "field": args.field,
               "b0_correction": args.b0_correction, "b0_unit": args.b0_unit,
               "offsets_of_interest": args.offsets_of_interest, "pools": args.pools}
    from_file = _offsets_file(args)
    if from_file is not None:
        options["offsets"] = from_file
    if args.b0_map is not None:
        b0 = load_nifti(args.b0_map)
        _grid_check(b0, volume, f"--b0-map {args.b0_map}")
        options["b0_map"] = b0.data
        options["b0_unit"] = args.b0_unit or b0.meta.get("Units")
        if options["b0_unit"] not in ("Hz", "ppm") and args.b0_correction in (None, "map"):
            raise ProtocolError(f"--b0-map {args.b0_map}: its unit is unknown; give --b0-unit Hz or ppm")
    if args.wassr is not None:
        wassr = load_nifti(args.wassr)
        _grid_check(wassr, volume, f"--wassr {args.wassr}")
        options["wassr"] = wassr.data
        field = args.field if args.field is not None else volume.meta.get("MagneticFieldStrength")
        wassr_offsets = args.wassr_offsets or sidecar_offsets(
            wassr.meta, None if field is None else float(field), str(args.wassr))
        if wassr_offsets is None and args.b0_correction in (None, "wassr"):
            raise ProtocolError(f"--wassr {args.wassr}: no offsets; give --wassr-offsets "
                                "(e.g. '-1,-0.9,...,1ppm') or SaturationOffsets in its sidecar")
        options["wassr_offsets"] = wassr_offsets
    mask = load_mask(args.mask, like=volume) if args.mask else None
    result = CESTModel.fit_volume(volume, mask=mask, method=args.method, **options)
    common = {**result.provenance, "Sources": [str(Path(s).resolve()) for s in volume.sources]}
    if args.mask:
        common["Mask"] = str(Path(args.mask).resolve())
    prefix = args.prefix or (derivative_prefix(volume.sources) if _is_nifti(args.inputs[0])
                             else series_prefix(volume))
    written = write_derivatives(args.out, prefix, result.maps, reference=volume,
                                sidecar_common=common)
    if not args.quiet:
        print(result.summary)
        print(f"wrote {len(written)} maps to {args.out}/{prefix}_*.nii.gz")
    return 0
