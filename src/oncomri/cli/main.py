"""``oncomri``: map, demo.

Thin: parse arguments, call ``io`` to read, a Model from ``oncomri.models.MODELS``
to fit, ``io`` to write. Errors from oncomri (bad input) become one line on
stderr and exit status 2; nothing is written unless every map is ready.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import numpy as np

from .. import __version__
from ..core.errors import OncomriError, ProtocolError

__all__ = ["main", "build_parser"]

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2

#: Runs with more voxels than this show a progress bar (on a terminal).
PROGRESS_MIN_VOXELS = 200_000

def parse_quantity(text: str, units: dict, *, name: str, default_unit: str | None = None):
    """Parse ``'3T'``, ``'20ms'``, ``'0.2,0.2,0.5'`` ... -> float or list of floats in SI.

    ``units`` maps suffixes to factors (e.g. ``{'s': 1, 'ms': 1e-3}``); a
    value without a suffix takes ``default_unit`` or is an error.
    """
    m = re.fullmatch(r"\s*([-+0-9.eE,\s]+?)\s*((?:[A-DF-Za-df-zµ%][A-Za-zµ/%²³0-9]*)?)\s*", text or "")
    if not m:
        raise ProtocolError(f"{name} {text!r}: not a number with a unit")
    unit = m.group(2) if m.group(2) else (default_unit if default_unit is not None else "")
    if unit not in units:
        raise ProtocolError(f"{name} {text!r}: give a unit, one of {', '.join(u for u in units if u)}")
    try:
        values = [float(v) * units[unit] for v in re.split(r"[,\s]+", m.group(1).strip()) if v]
    except ValueError:
        raise ProtocolError(f"{name} {text!r}: not a comma-separated list of numbers") from None
    if not values:
        raise ProtocolError(f"{name} {text!r}: no value given")
    return values[0] if len(values) == 1 else values


FIELD_UNITS = {"T": 1.0, "": 1.0}
TIME_UNITS_CLI = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


def noise_sigma_arg(text: str):
    """argparse type of ``--noise-sigma``: ``auto`` or a finite non-negative number."""
    if text == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor 'auto'") from None
    if not np.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite, non-negative number")
    return value


def _add_relaxometry_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``oncomri map r2star|t2star|t2``."""
    from ..models import MODELS

    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="NIfTI file(s) with BIDS sidecars (one 4D file or one per echo), "
                        "or one DICOM folder, Bruker ParaVision scan or Philips PAR file")
    p.add_argument("--series", metavar="N",
                   help="which series, when INPUT holds several (SeriesNumber or description)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    p.add_argument("--mask", type=Path, metavar="FILE", help="fit only inside this mask (NIfTI)")
    p.add_argument("--method", metavar="NAME",
                   help="fitting method (default ncexp); one of "
                        + ", ".join(MODELS["r2star"].methods))
    p.add_argument("--noise-sigma", type=noise_sigma_arg, default="auto", metavar="X",
                   help="noise sigma in signal units for noise-aware methods, or 'auto' "
                        "(estimate from the background; default)")
    p.add_argument("--noise-mask", type=Path, metavar="FILE",
                   help="air region (NIfTI mask) to estimate the noise sigma from")
    p.add_argument("--min-snr", type=float, metavar="K",
                   help="skip background: do not fit voxels whose first echo is below K times "
                        "the noise sigma (e.g. 3; default: fit every voxel)")
    p.add_argument("--echo-times", metavar="LIST",
                   help="echo times with a unit, e.g. '4.6,9.2,13.8ms' (overrides sidecars)")
    p.add_argument("--drop-first-echo", action="store_true",
                   help="t2 only: fit from the second echo (stimulated-echo contamination)")
    p.add_argument("--prefix", help="output file prefix (default: from the input names "
                                    "or the series description and number)")
    p.add_argument("--dicom", action="store_true",
                   help="also write the rate and time maps as DICOM Parametric Maps that "
                        "reference the source series (DICOM input only), in DIR/dicom/")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oncomri",
        description="Quantitative MRI biomarkers for therapy studies.",
    )
    parser.add_argument("--version", action="version", version=f"oncomri {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    m = sub.add_parser(
        "map", help="fit parametric maps: R2*/T2*, T2, T1, DCE, DSC, ADC/IVIM/DKI, CEST",
        description="Fit a model voxelwise and write BIDS-derivative maps with JSON sidecars "
                    "(units, method, inputs). `oncomri map MODEL --help` lists its options.")
    msub = m.add_subparsers(dest="model", required=True, metavar="MODEL")
    relaxometry = {"r2star": "R2* and T2* from multi-echo gradient echo",
                   "t2star": "the same as r2star",
                   "t2": "T2 and R2 from multi-echo spin echo"}
    for name, text in relaxometry.items():
        p = msub.add_parser(name, help=text, description=f"Fit {text} voxelwise.")
        _add_relaxometry_arguments(p)
        p.set_defaults(func=cmd_map, model=name)
    from . import map_adc, map_cest, map_dce, map_dsc, map_t1

    others = {
        "t1": (map_t1, "T1/R1 from variable flip angles or inversion recovery", {}),
        "dce": (map_dce, "Ktrans, ve, vp, Fp, PS from DCE (Tofts, extended Tofts, Patlak, "
                         "2CXM, 2CUM)", {}),
        "dsc": (map_dsc, "rCBV (leakage-corrected), CBF and MTT from DSC", {}),
        "adc": (map_adc, "ADC from diffusion-weighted images", {"kind": "adc"}),
        "ivim": (map_adc, "IVIM D, D* and f from diffusion-weighted images", {"kind": "ivim"}),
        "dki": (map_adc, "diffusion kurtosis (mean signal) from diffusion-weighted images",
                {"kind": "dki"}),
        "cest": (map_cest, "MTRasym and Lorentzian pools from CEST Z-spectra", {}),
    }
    for name, (module, text, options) in others.items():
        p = msub.add_parser(name, help=text, description=f"Fit {text} voxelwise.")
        module.add_arguments(p, **options)
        p.set_defaults(func=module.run, model=name)

    c = sub.add_parser(
        "convert", help="write scanner data (DICOM, Bruker, PAR/REC, NIfTI) as BIDS NIfTI + JSON",
        description="Read every series at INPUT (or the one chosen with --series) and write each "
                    "as a BIDS run: NIfTI + JSON sidecar in SI/BIDS units.")
    c.add_argument("input", metavar="INPUT", help="DICOM folder, Bruker study/scan, PAR file, NIfTI")
    c.add_argument("--out", required=True, type=Path, metavar="DIR", help="BIDS dataset root")
    c.add_argument("--series", metavar="N", help="convert only this series (SeriesNumber or description)")
    c.add_argument("--subject", default=None, metavar="LABEL",
                   help="BIDS subject label (default 01, or a pseudonym with --deidentify)")
    c.add_argument("--session", metavar="LABEL", help="BIDS session label, e.g. baseline or 24h")
    c.add_argument("--deidentify", action="store_true",
                   help="remove and pseudonymise PHI (DICOM PS3.15 Basic Profile, dates shifted "
                        "per subject)")
    c.add_argument("--deid-secret", type=Path, metavar="FILE",
                   help="secret that makes pseudonyms reproducible (default: created once in "
                        "~/.config/oncomri/deid-secret)")
    c.set_defaults(func=cmd_convert)

    m = sub.add_parser("measure", help="ROI statistics of maps: table on screen, CSV and JSON",
                       description="Statistics of each map inside each ROI label (first-order "
                                   "features as defined by pyradiomics), with volume in mm3. The "
                                   "ROI is resampled (nearest) onto the map grid if it differs.")
    m.add_argument("maps", nargs="+", metavar="MAP", help="3D maps (NIfTI, or any readable series)")
    m.add_argument("--roi", required=True, type=Path, metavar="MASK",
                   help="mask or label image: NIfTI, NRRD or DICOM SEG")
    m.add_argument("--out", type=Path, metavar="STEM",
                   help="write STEM.csv and STEM.json (default: ./<first map>_roi-stats)")
    m.add_argument("--bin-width", type=float, help="histogram/entropy bin width in map units "
                                                   "(default 25, as pyradiomics)")
    m.add_argument("--baseline", type=Path, metavar="PRE_MAP",
                   help="baseline R2* map on the same grid (register it first): adds the paired "
                        "ΔR2* and %%ΔR2* of each ROI (a single MAP only)")
    m.set_defaults(func=cmd_measure)

    rg = sub.add_parser("register", help="register a later session to baseline; carry masks and maps",
                        description="Rigid or affine registration (SimpleITK, Mattes MI) of the "
                                    "baseline anatomy (fixed) to a later session (moving): carries "
                                    "a baseline ROI to the later grid and later maps to the baseline "
                                    "grid, for ΔR2* with oncomri measure --baseline.")
    rg.add_argument("baseline", type=Path, metavar="BASELINE", help="baseline anatomical image (fixed)")
    rg.add_argument("later", type=Path, metavar="LATER", help="later anatomical image (moving)")
    rg.add_argument("--out", required=True, type=Path, metavar="DIR")
    rg.add_argument("--transform", default="rigid", choices=["rigid", "affine"])
    rg.add_argument("--mask", type=Path, metavar="BASELINE_ROI",
                    help="ROI drawn on the baseline: written on the later grid (_space-later)")
    rg.add_argument("--map", type=Path, nargs="*", default=[], metavar="LATER_MAP",
                    help="maps of the later session: written on the baseline grid (_space-baseline)")
    rg.set_defaults(func=cmd_register)

    mg = sub.add_parser("margin", help="ablative margin class AM(+)/AM(0)/AM(-) and minimum margin",
                        description="Ablative margin of a treated tumour from the (registered) "
                                    "pre-ablation tumour mask and the ablation zone on post-ablation "
                                    "T2*w images (Koda 2013; classes as Fukuda 2019).")
    mg.add_argument("--tumour", required=True, type=Path, metavar="MASK", help="pre-ablation tumour mask")
    mg.add_argument("--ablation", required=True, type=Path, metavar="MASK",
                    help="ablation zone mask on the same grid")
    mg.add_argument("--criterion", default="2mm", metavar="MM", help="safe margin (default 2mm)")
    mg.add_argument("--out", type=Path, metavar="STEM", help="also write STEM.csv and STEM.json")
    mg.set_defaults(func=cmd_margin)

    q = sub.add_parser("quant", help="turn maps into amounts: iron, liver iron",
                       description="Quantify iron (from ΔR2*) or liver iron (from R2*), from a "
                                   "number or from a NIfTI map inside an ROI.")
    qsub = q.add_subparsers(dest="quantity", required=True, metavar="QUANTITY")
    qi = qsub.add_parser("iron", help="iron concentration, mass and labelled cells from ΔR2*",
                         description="ΔR2* -> [Fe] (mM) -> iron mass -> labelled cells, with the "
                                     "agent's relaxivity r2* (Knobloch 2018 table) or a given one.")
    qi.add_argument("--delta-r2star", required=True, metavar="VALUE|MAP",
                    help="ΔR2* in 1/s (a number, or a NIfTI ΔR2* map with --roi)")
    qi.add_argument("--agent", help="contrast agent of the label (table: ferumoxytol)")
    qi.add_argument("--field", metavar="B0", help="field strength, e.g. 3T or 1.5T")
    qi.add_argument("--medium", default="plasma", help="relaxivity medium: plasma or saline")
    qi.add_argument("--relaxivity", type=float, metavar="R2STAR",
                    help="r2* in 1/(s mM) instead of the table")
    qi.add_argument("--volume", metavar="MM3", help="ROI volume in mm3 (with a number ΔR2*)")
    qi.add_argument("--iron-per-cell", metavar="PG", help="iron per labelled cell in pg")
    qi.add_argument("--roi", type=Path, metavar="MASK", help="ROI mask for a ΔR2* map")
    qi.add_argument("--out", type=Path, metavar="STEM", help="also write STEM.csv and STEM.json")
    qi.set_defaults(func=cmd_quant_iron)
    ql = qsub.add_parser("lic", help="liver iron concentration from R2* (Wood, Garbowski, Hernando)",
                         description="Liver iron concentration (mg Fe/g dry weight) from R2* with "
                                     "a published calibration, at the field it is valid for.")
    ql.add_argument("--r2star", required=True, metavar="VALUE|MAP", help="R2* in 1/s, or a map with --roi")
    ql.add_argument("--calibration", required=True, choices=["wood2005", "garbowski2014", "hernando2022"])
    ql.add_argument("--field", required=True, metavar="B0", help="field strength, e.g. 1.5T")
    ql.add_argument("--roi", type=Path, metavar="MASK", help="ROI mask for an R2* map")
    ql.add_argument("--out", type=Path, metavar="STEM", help="also write STEM.csv and STEM.json")
    ql.set_defaults(func=cmd_quant_lic)
    qf = qsub.add_parser("f19", help="19F-labelled cells from 19F signal against a reference",
                         description="Cells per voxel and per ROI from a 19F image (or one signal "
                                     "value) against a reference of known fluorine content, with "
                                     "noise-floor correction and an SNR detection threshold.")
    qf.add_argument("--signal", required=True, metavar="VALUE|MAP", help="19F magnitude (number or map)")
    qf.add_argument("--roi", type=Path, metavar="MASK", help="ROI mask for a 19F map")
    qf.add_argument("--reference-signal", required=True, type=float, help="signal of the reference")
    qf.add_argument("--reference-atoms", required=True, type=float, help="19F atoms in the reference")
    qf.add_argument("--fluorine-per-cell", required=True, type=float, help="19F atoms per cell (assay)")
    qf.add_argument("--noise-sigma", required=True, type=float, help="noise sigma in signal units")
    qf.add_argument("--snr-threshold", type=float, help="detection threshold in sigma (default 3.5)")
    qf.add_argument("--out", type=Path, metavar="STEM", help="also write STEM.csv and STEM.json")
    qf.set_defaults(func=cmd_quant_f19)
    qm = qsub.add_parser("mpi", help="iron and cells from MPI signal with a linear calibration",
                         description="Fit signal = a + b·iron on calibration standards (CSV with "
                                     "columns iron_ug,signal), then quantify a sample.")
    qm.add_argument("--calibration", required=True, type=Path, metavar="CSV",
                    help="standards: CSV with columns iron_ug,signal (rows with iron_ug 0 are blanks)")
    qm.add_argument("--signal", required=True, type=float, help="the sample's MPI signal")
    qm.add_argument("--iron-per-cell", metavar="PG", help="iron per labelled cell, e.g. 30pg")
    qm.add_argument("--out", type=Path, metavar="STEM", help="also write STEM.csv and STEM.json")
    qm.set_defaults(func=cmd_quant_mpi)

    pl = sub.add_parser("plan", help="plan a cell-tracking study: detection limit, label kinetics, power",
                        description="Planning calculators: cells per voxel needed for detection, "
                                    "label kinetics over time, group sizes.")
    psub = pl.add_subparsers(dest="calculator", required=True, metavar="CALCULATOR")
    pd = psub.add_parser("detection-limit", help="labelled cells per voxel needed for a ΔR2* of k SDs",
                         description="σ(R2*) from the Cramér–Rao bound at your echoes and SNR, "
                                     "then ΔR2* = k·σ -> [Fe] -> iron per voxel -> cells per voxel.")
    pd.add_argument("--voxel-size", required=True, metavar="MM", help="e.g. 0.1,0.1,0.5mm")
    pd.add_argument("--echo-times", required=True, metavar="LIST", help="e.g. 2,4,6,8,10,12ms")
    pd.add_argument("--snr", required=True, type=float, help="SNR at TE = 0")
    pd.add_argument("--iron-per-cell", required=True, metavar="PG", help="iron per cell, e.g. 10pg")
    pd.add_argument("--relaxivity", required=True, type=float, metavar="R2STAR",
                    help="r2* in 1/(s mM), e.g. 57 (ferumoxytol, 3 T, saline; Knobloch 2018)")
    pd.add_argument("--t2star", required=True, metavar="T", help="baseline T2* of the tissue, e.g. 20ms")
    pd.add_argument("--k", type=float, default=5.0, help="detection threshold in SDs (default 5, Rose)")
    pd.add_argument("--design", default="difference", choices=["single", "difference", "difference_exact"])
    pd.add_argument("--out", type=Path, metavar="STEM", help="also write STEM.csv and STEM.json")
    pd.set_defaults(func=cmd_plan_detection)
    pk = psub.add_parser("kinetics", help="label per cell and ΔR2* in a region over time (CSV + PNG)",
                         description="Label dilution by division, exocytosis, degradation and death "
                                     "with uptake by phagocytes; predicted ΔR2* and detection day.")
    pk.add_argument("--cells", required=True, type=float, help="labelled cells delivered to the region")
    pk.add_argument("--iron-per-cell", required=True, metavar="PG", help="iron per cell at day 0, e.g. 10pg")
    pk.add_argument("--doubling-time", metavar="DAYS", help="cell doubling time in days (omit: no division)")
    pk.add_argument("--exocytosis-rate", type=float, default=0.0, metavar="PER_DAY")
    pk.add_argument("--degradation-rate", type=float, default=0.0, metavar="PER_DAY")
    pk.add_argument("--death-rate", type=float, default=0.0, metavar="PER_DAY")
    pk.add_argument("--phagocyte-clearance-rate", type=float, default=0.0, metavar="PER_DAY")
    pk.add_argument("--region-volume", required=True, metavar="MM3", help="region volume in mm3")
    pk.add_argument("--relaxivity", required=True, type=float, metavar="R2STAR", help="r2* in 1/(s mM)")
    pk.add_argument("--days", type=float, default=28.0, help="simulate this many days (default 28)")
    pk.add_argument("--threshold", type=float, metavar="DR2STAR",
                    help="detection threshold on ΔR2* in 1/s (e.g. from plan detection-limit)")
    pk.add_argument("--out", required=True, type=Path, metavar="STEM", help="write STEM.csv, STEM.json, STEM.png")
    pk.set_defaults(func=cmd_plan_kinetics)
    pt = psub.add_parser("targeting", help="force on and drift of a SPION-labelled cell in a gradient",
                         description="Magnetic moment at saturation, force m·∇B, Stokes drift "
                                     "velocity and distance of a labelled cell in blood.")
    pt.add_argument("--iron-per-cell", required=True, metavar="PG", help="iron per cell, e.g. 10pg")
    pt.add_argument("--gradient", required=True, metavar="G", help="gradient, e.g. 40mT/m")
    pt.add_argument("--ms", type=float, default=92.0, metavar="AM2_PER_KG",
                    help="saturation magnetisation of the oxide (default 92, bulk magnetite)")
    pt.add_argument("--basis", default="magnetite", choices=["magnetite", "maghemite", "iron"],
                    help="what --ms is per kilogram of")
    pt.add_argument("--cell-radius", default="5um", metavar="R", help="cell radius (default 5um)")
    pt.add_argument("--duration", default="60s", metavar="T", help="time in the gradient (default 60s)")
    pt.add_argument("--field", default="3T", metavar="B0", help="main field (saturation check)")
    pt.set_defaults(func=cmd_plan_targeting)
    pp = psub.add_parser("power", help="power or group size for a two-arm or paired comparison",
                         description="t-test power (two-sided) for ΔR2* or volume comparisons.")
    pp.add_argument("--effect", required=True, type=float, help="difference to detect (map units)")
    pp.add_argument("--sd", required=True, type=float, help="SD (of each arm, or of the paired differences)")
    pp.add_argument("--n", type=int, help="n per arm (or pairs): compute power; omit to compute n")
    pp.add_argument("--power", type=float, default=0.8, help="target power when computing n (default 0.8)")
    pp.add_argument("--alpha", type=float, default=0.05)
    pp.add_argument("--paired", action="store_true", help="paired design (e.g. baseline vs 24 h)")
    pp.set_defaults(func=cmd_plan_power)

    r = sub.add_parser(
        "run", help="run a study: maps, ROIs and biomarkers for every session, then statistics "
                    "and the HTML report",
        description="Run (or resume) the study described by a YAML spec: only sessions whose "
                    "inputs changed are recomputed; results go to the study database, the "
                    "tidy tables and report.html in the spec's output folder.")
    r.add_argument("spec", type=Path, metavar="STUDY.yaml", help="the study spec (see oncomri init)")
    r.add_argument("--db", metavar="URL",
                   help="database: a SQLite file path or postgresql://user@host/db "
                        "(default: the spec's database, else OUTPUT/study.sqlite)")
    r.add_argument("--scheduler", default="processes", metavar="WHERE",
                   help="processes (default: local worker processes), threads, synchronous, "
                        "or a Dask scheduler address tcp://HOST:PORT")
    r.add_argument("--workers", type=int, metavar="N",
                   help="local workers (default: one per core)")
    r.add_argument("--force", action="store_true", help="recompute every session")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_run)

    i = sub.add_parser(
        "init", help="write a commented study spec from a BIDS-like folder",
        description="Scan a folder of sub-*/ses-* scans and write a commented study.yaml to "
                    "edit (arms, timepoints, scans, ROIs, maps, biomarkers, analyses).")
    i.add_argument("folder", type=Path, metavar="FOLDER")
    i.add_argument("--out", type=Path, metavar="FILE", help="default FOLDER/study.yaml")
    i.add_argument("--force", action="store_true", help="overwrite an existing spec")
    i.set_defaults(func=cmd_init)

    e = sub.add_parser(
        "export", help="export a study's tidy measurement table (CSV and Parquet)",
        description="Write the study database's tidy tables (measurements, maps, ROIs, "
                    "failures) as CSV and Parquet.")
    e.add_argument("spec", type=Path, metavar="STUDY.yaml")
    e.add_argument("--db", metavar="URL", help="as for oncomri run")
    e.add_argument("--out", type=Path, metavar="DIR", help="default OUTPUT/tables")
    e.add_argument("--format", default="csv,parquet", help="csv, parquet or both (default)")
    e.set_defaults(func=cmd_export)

    d = sub.add_parser(
        "demo", help="the built-in example: a synthetic 20-rat cell-delivery study, end to end",
        description="Write a synthetic study (20 rats, 3 arms, 4 timepoints, 12-echo GRE, "
                    "T2w, tumour masks; one rat as DICOM) with known truth, run it with "
                    "oncomri run and print the report's path and headline results. "
                    "--phantom instead maps a phantom with every R2* method.")
    d.add_argument("--out", type=Path, default=Path("demo_output"), metavar="DIR")
    d.add_argument("--subjects", type=int, default=20, help="study size (default 20)")
    d.add_argument("--phantom", action="store_true",
                   help="the relaxometry phantom demo: bias and precision of every method")
    d.add_argument("--snr", type=float, default=50.0, help="phantom SNR at TE = 0 (default 50)")
    d.add_argument("--scheduler", default="processes", metavar="WHERE", help="as for oncomri run")
    d.set_defaults(func=cmd_demo)
    return parser


class _Progress:
    """A rich progress bar on stderr, only for long runs on a terminal."""

    def __init__(self, label: str, n_voxels: int, enabled: bool):
        self._bar = None
        if enabled and n_voxels >= PROGRESS_MIN_VOXELS and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.completed:,}/{task.total:,} voxels"),
                                 TimeRemainingColumn(), console=Console(stderr=True),
                                 transient=True)
            self._task = self._bar.add_task(label, total=n_voxels)

    def __enter__(self):
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def __call__(self, done: int, total: int):
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total)


def cmd_map(args) -> int:
    from ..core import ValidationError
    from ..io import derivative_prefix, load_mask, write_derivatives
    from ..io.bids import series_prefix
    from ..study.mapping import fit_map

    if args.drop_first_echo and args.model != "t2":
        raise ProtocolError("--drop-first-echo applies to 'oncomri map t2' only")
    volume = _load_multi_echo_input(args)
    mask = load_mask(args.mask, like=volume) if args.mask else None
    background = load_mask(args.noise_mask, like=volume) if args.noise_mask else None

    if args.dicom and not volume.meta.get("SOPInstanceUIDs"):
        raise ValidationError("--dicom needs a classic DICOM series as input (the Parametric "
                              "Maps must reference their source images)")
    n_voxels = int(mask.sum()) if mask is not None else int(np.prod(volume.spatial_shape))
    with _Progress(f"{args.model} ({args.method or 'default'})", n_voxels, not args.quiet) as progress:
        result = fit_map(volume, args.model, method=args.method, mask=mask,
                         noise_sigma=args.noise_sigma, noise_background=background,
                         drop_first_echo=args.drop_first_echo, progress=progress,
                         mask_source=str(args.mask.resolve()) if args.mask else None,
                         noise_background_label="--noise-mask", min_snr=args.min_snr)
    common, fit, model = result.sidecar, result.fit, result.model

    from_nifti = all(_is_nifti_name(p) for p in args.inputs)
    prefix = args.prefix or (derivative_prefix(volume.sources) if from_nifti
                             else series_prefix(volume))
    maps = result.maps
    dicom_written = _write_parametric_maps(args.out / "dicom", prefix, maps, volume) if args.dicom else []
    written = write_derivatives(args.out, prefix, maps, reference=volume, sidecar_common=common)

    counts = fit.summary()
    fitted = sum(v for k, v in counts.items() if k in ("ok", "not_converged", "at_bound"))
    failures = counts.get("failed", 0) + counts.get("invalid_data", 0)
    sigma_text = (f", noise sigma {common['NoiseSigma']:.4g} ({result.noise_sigma_source})"
                  if common["NoiseSigma"] is not None else "")
    print(f"{args.model} ({model.method}): {fitted:,} voxels fitted "
          f"({counts.get('not_converged', 0):,} not converged, {counts.get('at_bound', 0):,} at a bound), "
          f"{failures:,} failures, {counts.get('masked', 0):,} masked out, "
          f"{result.seconds:.2f} s{sigma_text}")
    print(f"wrote {len(written)} maps to {args.out}/{prefix}_*.nii.gz")
    if dicom_written:
        print(f"wrote {len(dicom_written)} DICOM Parametric Maps to {dicom_written[0].parent}")
    return EXIT_OK


#: Map suffix -> (DICOM quantity, UCUM unit) for Parametric Map export.
_DICOM_QUANTITIES = {"R2starmap": ("R2*", "/s"), "T2starmap": ("T2*", "s"),
                     "R2map": ("R2", "/s"), "T2map": ("T2", "s")}


def _write_parametric_maps(folder, prefix, maps, volume):
    from ..io import write_parametric_map

    written = []
    for number, (suffix, (quantity, unit)) in enumerate(_DICOM_QUANTITIES.items(), start=1):
        if suffix not in maps:
            continue
        values = maps[suffix][0]
        path = folder / f"{prefix}_{suffix}.dcm"
        base = int(volume.meta.get("SeriesNumber") or 0)
        written.append(write_parametric_map(
            path, values, source_datasets=list(volume.sources), quantity=quantity, unit=unit,
            affine=volume.affine, series_number=1000 + 10 * base + number,
            series_description=f"oncomri {quantity} map"))
    return written


def _is_nifti_name(path) -> bool:
    return str(path).endswith((".nii", ".nii.gz"))


def _load_multi_echo_input(args):
    """The multi-echo series named on the command line (NIfTI files, or any registry format)."""
    from ..study.mapping import load_scan

    return load_scan(args.inputs, series=args.series, echo_times=args.echo_times,
                     multi_echo=True, label="--echo-times")


def cmd_convert(args) -> int:
    from ..io import describe_series, load, load_all, write_bids_series

    volumes = [load(args.input, series=args.series)] if args.series else load_all(args.input)
    deidentifier = identity = None
    subject = args.subject or "01"
    if args.deidentify:
        from ..core import ValidationError
        from ..io.deid import Deidentifier

        deidentifier = Deidentifier(_deid_secret(args.deid_secret))
        identity = str(volumes[0].meta.get("PatientID") or volumes[0].meta.get("PatientName") or "")
        if not identity:
            if args.subject is None:
                raise ValidationError(
                    f"{args.input}: the data carries no PatientID or PatientName to derive a "
                    "pseudonym from; give --subject LABEL")
            identity = args.subject
        if args.subject is None:
            subject = deidentifier.pseudonym(identity).replace("sub-", "")
    written = []
    for volume in volumes:
        files = write_bids_series(args.out, volume, subject=subject, session=args.session,
                                  deidentifier=deidentifier, deidentify_as=identity)
        written.extend(files)
        shape = "x".join(map(str, volume.data.shape))
        print(f"series {describe_series(volume)}: {shape} -> {files[0].parent}/"
              f"{files[0].name if len(files) == 1 else f'{len(files)} files'}")
    note = " (de-identified, PS3.15 Basic Profile)" if deidentifier else ""
    print(f"wrote {len(written)} NIfTI files for {len(volumes)} series to {args.out}{note}")
    return EXIT_OK


def _deid_secret(path):
    """The de-identification secret: from FILE, or one created once per user."""
    import secrets

    if path is None:
        path = Path.home() / ".config" / "oncomri" / "deid-secret"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_hex(32) + "\n")
            path.chmod(0o600)
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        from ..core import ReadError
        raise ReadError(f"{path}: cannot read the de-identification secret ({exc.strerror})") from None
    if len(text) < 16:
        from ..core import ValidationError
        raise ValidationError(f"{path}: the de-identification secret is shorter than 16 characters")
    return text


def cmd_measure(args) -> int:
    from ..core import GeometryError, ValidationError, same_grid
    from ..io import load, load_roi
    from ..io.bids import split_nifti_name
    from ..io.tables import write_table
    from ..roi import resample_mask, roi_statistics

    if args.baseline and len(args.maps) != 1:
        raise ValidationError("--baseline compares one map with its baseline; give a single MAP")
    rows = []
    for map_path in args.maps:
        volume = load(map_path)
        if volume.data.ndim != 3:
            raise ValidationError(f"{map_path}: measure takes 3D maps, got shape {volume.data.shape}")
        mask, mask_affine = load_roi(args.roi, like=volume)
        if not same_grid(mask.shape, mask_affine, volume.spatial_shape, volume.affine):
            mask = resample_mask(mask, mask_affine, target_shape=volume.spatial_shape,
                                 target_affine=volume.affine, method="nearest")
        unit = volume.meta.get("Units")
        baseline = None
        if args.baseline:
            baseline = load(args.baseline)
            if not same_grid(baseline.spatial_shape, baseline.affine, volume.spatial_shape,
                             volume.affine) or baseline.data.ndim != 3:
                raise GeometryError(
                    f"{args.baseline}: the baseline map is not on the grid of {map_path}; "
                    "register the sessions first (oncomri register) and resample the baseline")
        for stats in roi_statistics(volume.data, mask, voxel_size_mm=tuple(volume.voxel_size),
                                    bin_width=args.bin_width, value_unit=unit):
            row = {"map": str(map_path), **stats.as_dict()}
            if baseline is not None:
                from ..roi import delta_r2star_roi

                label_mask = (mask == stats.label) if mask.dtype != bool else mask
                row.update(delta_r2star_roi(volume.data, baseline.data, label_mask).as_dict())
            rows.append(row)
    print(f"{'map':<28} {'label':>5} {'voxels':>7} {'volume mm3':>11} {'mean':>10} {'sd':>10} "
          f"{'median':>10} {'p10':>10} {'p90':>10}  unit")
    for r in rows:
        name = Path(r["map"]).name
        name = name if len(name) <= 28 else "…" + name[-27:]
        print(f"{name:<28} {r['label']:>5} {r['n_voxels']:>7} {r['volume_mm3']:>11.4g} "
              f"{r['mean']:>10.4g} {r['sd']:>10.4g} {r['median']:>10.4g} {r['p10']:>10.4g} "
              f"{r['p90']:>10.4g}  {r.get('value_unit') or ''}")
        if "delta_r2star_per_s" in r:
            print(f"{'':<28} {'':>5} ΔR2* {r['delta_r2star_per_s']:+.4g} 1/s "
                  f"({r['delta_r2star_percent']:+.3g} %) from baseline mean "
                  f"{r['mean_pre_r2star_per_s']:.4g} 1/s, n = {r['n_post']} paired voxels")
    stem = args.out or Path(split_nifti_name(args.maps[0])[0]).name + "_roi-stats"
    csv_path, json_path = write_table(rows, stem, metadata={
        "command": "measure", "roi": str(args.roi), "maps": [str(p) for p in args.maps]})
    print(f"wrote {csv_path} and {json_path}")
    return EXIT_OK


def _value_or_map(text: str, roi, *, name: str):
    """(values, mask, voxel volume mm3) from a number or a NIfTI map (+ ROI on its grid)."""
    from ..core import ValidationError

    try:
        value = float(text)
    except ValueError:
        value = None
    if value is not None:
        if roi is not None:
            raise ValidationError(f"--roi applies to a {name} map, not to a number")
        return np.array([value]), None, None
    from ..io import load, load_mask

    volume = load(text)
    if volume.data.ndim != 3:
        raise ValidationError(f"{text}: a {name} map must be 3D, got shape {volume.data.shape}")
    if roi is None:
        raise ValidationError(f"{text}: give --roi MASK to say where to quantify the map")
    mask = load_mask(roi, like=volume)
    return volume.data, mask, float(np.prod(volume.voxel_size))


def _print_result(title: str, result: dict) -> None:
    print(title)
    width = max(len(k) for k in result)
    for key, value in result.items():
        text = f"{value:.6g}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {text}")


def cmd_quant_iron(args) -> int:
    from ..core import ValidationError
    from ..quant import iron_concentration, iron_mass, labelled_cells

    values, mask, voxel_mm3 = _value_or_map(args.delta_r2star, args.roi, name="ΔR2*")
    table = {"relaxivity": args.relaxivity, "agent": args.agent, "medium": args.medium,
             "field_strength_t": (parse_quantity(args.field, FIELD_UNITS, name="--field")
                                  if args.field else None)}
    if args.relaxivity is not None:
        table.pop("agent"), table.pop("medium"), table.pop("field_strength_t")
    elif args.agent is None or args.field is None:
        raise ValidationError("give --agent and --field (e.g. --agent ferumoxytol --field 3T), "
                              "or the relaxivity with --relaxivity")
    if voxel_mm3 is None and args.volume is not None:
        voxel_mm3 = parse_quantity(args.volume, {"": 1.0, "mm3": 1.0, "uL": 1.0, "mL": 1e3},
                                   name="--volume")
    per_cell = (parse_quantity(args.iron_per_cell, {"": 1.0, "pg": 1.0}, name="--iron-per-cell")
                if args.iron_per_cell else None)
    if per_cell is not None and voxel_mm3 is not None:
        result = labelled_cells(values, iron_per_cell_pg=per_cell, voxel_volume_mm3=voxel_mm3,
                                mask=mask, **table).as_dict()
    elif voxel_mm3 is not None:
        conc = iron_concentration(values, **table)
        result = {"mean_delta_r2star_per_s": float(np.mean(values if mask is None else values[mask])),
                  **iron_mass(conc, voxel_volume_mm3=voxel_mm3, mask=mask).as_dict()}
    else:
        if per_cell is not None:
            raise ValidationError("--iron-per-cell needs --volume (mm3) to turn [Fe] into a mass")
        conc = iron_concentration(values, **table)
        result = {"delta_r2star_per_s": float(values[0]), "iron_concentration_mM": float(conc[0])}
    _print_result("iron from ΔR2* (linear relaxivity model; r2* in tissue may differ from solution)",
                  result)
    if args.out:
        _write_result(result, args.out, "quant iron")
    return EXIT_OK


def cmd_quant_lic(args) -> int:
    from ..quant import liver_iron

    values, mask, _ = _value_or_map(args.r2star, args.roi, name="R2*")
    field = parse_quantity(args.field, FIELD_UNITS, name="--field")
    result = liver_iron(values, calibration=args.calibration, field_strength_t=field,
                        mask=mask).as_dict()
    _print_result("liver iron concentration from R2*", result)
    if args.out:
        _write_result(result, args.out, "quant lic")
    return EXIT_OK


def cmd_quant_f19(args) -> int:
    from ..quant import fluorine_cells

    values, mask, voxel_mm3 = _value_or_map(args.signal, args.roi, name="19F signal")
    options = {} if args.snr_threshold is None else {"snr_threshold": args.snr_threshold}
    result = fluorine_cells(values, reference_signal=args.reference_signal,
                            reference_fluorine_atoms=args.reference_atoms,
                            fluorine_per_cell=args.fluorine_per_cell, noise_sigma=args.noise_sigma,
                            mask=mask, voxel_volume_mm3=voxel_mm3, **options).as_dict()
    _print_result("19F-labelled cells (reference-phantom quantification)", result)
    if args.out:
        _write_result(result, args.out, "quant f19")
    return EXIT_OK


def cmd_quant_mpi(args) -> int:
    import csv

    from ..core import ReadError, ValidationError
    from ..quant import mpi_calibration, mpi_iron

    try:
        with open(args.calibration, newline="") as fh:
            rows = list(csv.DictReader(fh))
        iron = np.array([float(r["iron_ug"]) for r in rows])
        signal = np.array([float(r["signal"]) for r in rows])
    except OSError as exc:
        raise ReadError(f"{args.calibration}: cannot read the calibration ({exc.strerror})") from None
    except (KeyError, ValueError, TypeError):
        raise ValidationError(f"{args.calibration}: needs numeric columns iron_ug,signal "
                              "(one row per standard; iron_ug 0 for blanks)") from None
    blanks = iron == 0
    calibration = mpi_calibration(iron[~blanks], signal[~blanks],
                                  blank_signal=signal[blanks] if blanks.sum() >= 2 else None)
    per_cell = (parse_quantity(args.iron_per_cell, {"": 1.0, "pg": 1.0}, name="--iron-per-cell")
                if args.iron_per_cell else None)
    result = {**{f"calibration_{k}": v for k, v in calibration.as_dict().items()},
              **mpi_iron(args.signal, calibration=calibration, iron_per_cell_pg=per_cell).as_dict()}
    _print_result("MPI iron quantification (linear calibration)", result)
    if args.out:
        _write_result(result, args.out, "quant mpi")
    return EXIT_OK


def cmd_register(args) -> int:
    from ..core import ValidationError
    from ..io import load, load_roi, write_derivatives
    from ..io.bids import split_nifti_name
    from ..roi import apply_to_image, propagate_mask, register, registration_quality

    fixed, moving = load(args.baseline), load(args.later)
    for vol, path in ((fixed, args.baseline), (moving, args.later)):
        if vol.data.ndim != 3:
            raise ValidationError(f"{path}: register takes 3D anatomical images, got {vol.data.shape}")
    reg = register(fixed.data, moving.data, fixed_affine=fixed.affine, moving_affine=moving.affine,
                   transform=args.transform)
    quality = registration_quality(reg, fixed.data, moving.data, fixed_affine=fixed.affine,
                                   moving_affine=moving.affine)
    outputs = []  # (reference volume, stem, key, array) computed before anything is written
    if args.mask:
        mask, mask_affine = load_roi(args.mask, like=fixed)
        carried = propagate_mask(mask, from_affine=mask_affine, to_shape=moving.spatial_shape,
                                 to_affine=moving.affine, registration=reg)
        outputs.append((moving, split_nifti_name(args.mask)[0], "space-later",
                        carried.astype(np.uint8)))
    for path in args.map:
        later_map = load(path)
        resampled = apply_to_image(reg, later_map.data, moving_affine=later_map.affine,
                                   target_shape=fixed.spatial_shape, target_affine=fixed.affine)
        outputs.append((fixed, split_nifti_name(path)[0], "space-baseline", resampled.astype(np.float32)))
    side = {"Software": "oncomri", "SoftwareVersion": __version__, "Registration": reg.as_dict(),
            "RegistrationQuality": quality.as_dict()}
    written = []
    for reference, stem, key, array in outputs:
        written += write_derivatives(args.out, Path(stem).name, {key: (array, {})},
                                     reference=reference, sidecar_common=side)
    from ..io.tables import write_table

    write_table([{**reg.as_dict(), **quality.as_dict()}], args.out / "registration",
                metadata={"baseline": str(args.baseline), "later": str(args.later)})
    print(f"{args.transform} registration: rotation {reg.rotation_deg:.2f} deg, "
          f"normalised mutual information {quality.normalized_mutual_information:.3f}")
    for path in written:
        print(f"wrote {path}")
    print(f"wrote {args.out / 'registration.json'} (4x4 baseline->later transform, RAS+ mm)")
    return EXIT_OK


def cmd_margin(args) -> int:
    from ..io import load, load_mask
    from ..roi import ablative_margin

    ablation = load(args.ablation)
    tumour = load_mask(args.tumour, like=ablation)
    result = ablative_margin(tumour, ablation_mask=ablation.data > 0,
                             voxel_size_mm=tuple(ablation.voxel_size), affine=ablation.affine,
                             criterion_mm=parse_quantity(args.criterion, {"mm": 1.0, "": 1.0},
                                                         name="--criterion")).as_dict()
    _print_result("ablative margin", result)
    if args.out:
        _write_result(result, args.out, "margin")
    return EXIT_OK


def cmd_plan_targeting(args) -> int:
    from ..sim import magnetic_drift

    result = magnetic_drift(
        iron_per_cell_pg=parse_quantity(args.iron_per_cell, {"": 1.0, "pg": 1.0}, name="--iron-per-cell"),
        gradient_t_per_m=parse_quantity(args.gradient, {"T/m": 1.0, "mT/m": 1e-3}, name="--gradient"),
        saturation_magnetisation_am2_per_kg=args.ms, magnetisation_basis=args.basis,
        cell_radius_um=parse_quantity(args.cell_radius, {"um": 1.0, "µm": 1.0}, name="--cell-radius"),
        duration_s=parse_quantity(args.duration, {"s": 1.0, "min": 60.0, "h": 3600.0}, name="--duration"),
        field_strength_t=parse_quantity(args.field, FIELD_UNITS, name="--field")).as_dict()
    _print_result("magnetic drift of a labelled cell (Stokes drag in blood)", result)
    return EXIT_OK


def _write_result(result: dict, stem, command: str) -> None:
    from ..io.tables import write_table

    csv_path, json_path = write_table([result], stem, metadata={"command": command})
    print(f"wrote {csv_path} and {json_path}")


def cmd_plan_detection(args) -> int:
    from ..sim import detection_limit

    result = detection_limit(
        voxel_size_mm=parse_quantity(args.voxel_size, {"mm": 1.0, "um": 1e-3}, name="--voxel-size"),
        echo_times_s=np.atleast_1d(parse_quantity(args.echo_times, TIME_UNITS_CLI, name="--echo-times")),
        snr=args.snr,
        iron_per_cell_pg=parse_quantity(args.iron_per_cell, {"": 1.0, "pg": 1.0}, name="--iron-per-cell"),
        relaxivity_r2star_l_per_mmol_s=args.relaxivity,
        baseline_t2star_s=parse_quantity(args.t2star, TIME_UNITS_CLI, name="--t2star"),
        k_sd=args.k, design=args.design).as_dict()
    _print_result("detection limit (Cramér–Rao σ of R2*, linear relaxivity)", result)
    if args.out:
        _write_result(result, args.out, "plan detection-limit")
    return EXIT_OK


def cmd_plan_kinetics(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io.tables import write_table
    from ..sim import detection_day, simulate_label_kinetics

    doubling = (parse_quantity(args.doubling_time, {"": 1.0, "d": 1.0, "days": 1.0},
                               name="--doubling-time") if args.doubling_time else None)
    result = simulate_label_kinetics(
        cells_delivered=args.cells,
        label_per_cell=parse_quantity(args.iron_per_cell, {"": 1.0, "pg": 1.0}, name="--iron-per-cell"),
        doubling_time_days=doubling, exocytosis_rate_per_day=args.exocytosis_rate,
        degradation_rate_per_day=args.degradation_rate, death_rate_per_day=args.death_rate,
        phagocyte_clearance_rate_per_day=args.phagocyte_clearance_rate, days=args.days,
        region_volume_mm3=parse_quantity(args.region_volume, {"": 1.0, "mm3": 1.0}, name="--region-volume"),
        relaxivity_r2star_l_per_mmol_s=args.relaxivity)
    d = result.as_dict()
    columns = ["days", "live_cells", "label_per_cell", "label_in_live_cells", "label_in_phagocytes",
               "total_label", "delta_r2star_live", "delta_r2star_phagocytes", "delta_r2star_total",
               "false_positive_fraction"]
    rows = [{c: d[c][i] for c in columns} for i in range(len(d["days"]))]
    detection = detection_day(result, threshold=args.threshold).as_dict() if args.threshold else None
    write_table(rows, args.out, metadata={"command": "plan kinetics", "parameters": d["parameters"],
                                          "units": d["units"], "detection": detection})
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(d["days"], d["delta_r2star_total"], label="total (what MRI sees)", lw=2)
    ax.plot(d["days"], d["delta_r2star_live"], label="label in live delivered cells")
    ax.plot(d["days"], d["delta_r2star_phagocytes"], "--", label="label in host phagocytes (false positive)")
    if args.threshold:
        ax.axhline(args.threshold, color="grey", lw=1, ls=":", label=f"detection threshold {args.threshold:g} 1/s")
    ax.set_xlabel("days after delivery")
    ax.set_ylabel("ΔR2* in the region (1/s)")
    ax.set_title(f"{args.cells:.3g} cells × {d['parameters']['label_per_cell']:g} pg Fe in "
                 f"{d['parameters']['region_volume_mm3']:g} mm³")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png = Path(args.out).with_suffix(".png")
    tmp = png.with_name(f".tmp-{os.getpid()}-{png.name}")
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    os.replace(tmp, png)
    print(f"ΔR2* at day 0: {d['delta_r2star_total'][0]:.4g} 1/s; at day {d['days'][-1]:g}: "
          f"{d['delta_r2star_total'][-1]:.4g} 1/s (live cells {d['delta_r2star_live'][-1]:.4g})")
    if detection:
        when = (f"day {detection['day']:g} (crossing at {detection['crossing_day']:.2f} d)"
                if detection["day"] is not None else "not within the simulated days")
        print(f"signal of live labelled cells falls below {args.threshold:g} 1/s: {when}")
    print(f"wrote {Path(args.out).with_suffix('.csv')}, .json and {png}")
    return EXIT_OK


def cmd_plan_power(args) -> int:
    from ..sim import power_paired, power_two_sample, sample_size_paired, sample_size_two_sample

    if args.n is not None:
        result = (power_paired(effect=args.effect, sd_difference=args.sd, n_pairs=args.n, alpha=args.alpha)
                  if args.paired else
                  power_two_sample(effect=args.effect, sd=args.sd, n_per_arm=args.n, alpha=args.alpha))
    else:
        result = (sample_size_paired(effect=args.effect, sd_difference=args.sd, power=args.power,
                                     alpha=args.alpha)
                  if args.paired else
                  sample_size_two_sample(effect=args.effect, sd=args.sd, power=args.power, alpha=args.alpha))
    _print_result("study power (two-sided t-test)", result.as_dict())
    return EXIT_OK


def cmd_run(args) -> int:
    from ..study.pipeline import run_study

    summary = run_study(args.spec, database=args.db, scheduler=args.scheduler,
                        workers=args.workers, force=args.force, progress=not args.quiet,
                        log=print)
    print_run_summary(summary)
    return EXIT_OK


def print_run_summary(summary) -> None:
    """The end-of-run summary: counts, failures, headline results, where everything is."""
    print(f"sessions: {summary.n_done} processed, {summary.n_skipped} unchanged, "
          f"{summary.n_failed} failed, of {summary.n_sessions}; {summary.wall_s:.1f} s")
    if summary.stage_s:
        print("worker time by stage: " + ", ".join(
            f"{k} {v:.1f} s" for k, v in sorted(summary.stage_s.items(), key=lambda kv: -kv[1])))
    for subject, timepoint, stage, reason in summary.failures:
        print(f"  failed {subject}/{timepoint} ({stage}): {reason}")
    for line in headline_results(summary.analyses):
        print(line)
    if summary.report:
        print(f"report: {summary.report}")
    if summary.tables:
        print(f"tables: {Path(summary.tables[0]).parent}")
    print(f"database: {summary.database}")


def _finite(value) -> bool:
    try:
        return bool(np.isfinite(float(value)))
    except (TypeError, ValueError):
        return False


def headline_results(analyses) -> list[str]:
    """One line per test of each analysis: estimate with CI and unit, p (the statistics table)."""
    from ..study.analysis import results_table

    lines = []
    titles = {a.name: a.title for a in analyses}
    current = None
    for row in results_table(analyses).itertuples():
        if row.analysis != current:
            current = row.analysis
            lines.append(f"{titles.get(row.analysis, row.analysis)}:")
        if str(row.notes).startswith("error:"):
            lines.append(f"  not computed: {row.notes[len('error:'):].strip()}")
            continue
        unit = f" {row.unit}" if isinstance(row.unit, str) and row.unit else ""
        ci = (f" [{row.ci_low:.3g}, {row.ci_high:.3g}]"
              if _finite(row.ci_low) and _finite(row.ci_high) else "")
        p = f", p = {row.p_value:.3g}" if _finite(row.p_value) else ""
        lines.append(f"  {row.label}: {row.estimate_name} {row.estimate:.4g}{ci}{unit}{p}")
    return lines


def cmd_init(args) -> int:
    from ..study.template import write_template

    out = args.out or args.folder / "study.yaml"
    path = write_template(args.folder, out, force=args.force)
    print(f"wrote {path}: edit the arms and subjects, then run: oncomri run {path}")
    return EXIT_OK


def cmd_export(args) -> int:
    from ..core import ValidationError
    from ..study.db import StudyDatabase
    from ..study.pipeline import default_database
    from ..study.spec import load_spec

    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    bad = [f for f in formats if f not in ("csv", "parquet")]
    if bad or not formats:
        raise ValidationError(f"--format {args.format!r}: use csv, parquet or csv,parquet")
    spec = load_spec(args.spec)
    with StudyDatabase.open(args.db or default_database(spec), create=False) as db:
        written = db.export(args.out or spec.output / "tables", design=spec.design(),
                            formats=formats)
    for path in written:
        print(f"wrote {path}")
    return EXIT_OK


def cmd_demo(args) -> int:
    if args.phantom:
        from .demo import run_demo

        run_demo(args.out, snr=args.snr)
        return EXIT_OK
    from .demo import run_study_demo

    run_study_demo(args.out, n_subjects=args.subjects, scheduler=args.scheduler)
    return EXIT_OK


def main(argv=None) -> int:
    """Entry point of the ``oncomri`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except OncomriError as exc:
        print(f"oncomri: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # file-system problems while writing
        print(f"oncomri: error: {exc.filename or ''} {exc.strerror or exc}".strip(), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("oncomri: interrupted; no output was written unless reported above", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line, traceback on request
        if os.environ.get("ONCOMRI_DEBUG"):
            raise
        print(f"oncomri: internal error: {type(exc).__name__}: {exc} "
              "(set ONCOMRI_DEBUG=1 for the traceback and please report it)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
