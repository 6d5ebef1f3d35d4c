"""A first study spec written from a folder of scans.

:func:`write_template` looks at a BIDS-like folder, ``sub-<id>/ses-<tp>/...``
with NIfTI files (``anat/``, ``dwi/`` ...) or scanner folders (DICOM series,
Bruker scans), and writes a commented spec that loads with
:func:`oncomri.study.spec.load_spec` as written:

- subjects and timepoints from the ``sub-``/``ses-`` labels; times are
  guessed from the labels (``24h``, ``8d``, ``day8``, ``w2``; ``baseline``
  and ``pre`` become 0 h) and marked ``# TODO check``;
- one scan role per kind of file (BIDS suffix and entities other than
  subject, session and echo; ``echo-<n>`` becomes ``echo-*``), and per
  scanner folder; roles not present in every session are written commented out;
- ROIs from ``*_label-<name>_mask.nii*`` files, on the scan with the same grid;
  without masks, a seed ROI at the centre of the first image to edit;
- an ``r2star`` map (``t2`` for ``MESE``) when a multi-echo scan exists;
- biomarkers (median R2* and T2* in each ROI, ROI volume) and example analyses;
- one arm ``control`` holding every subject, to be replaced by the real arms.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from ..core.errors import ReadError, ValidationError
from ..core.volume import same_grid
from .inputs import natural_key

__all__ = ["write_template"]

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_NIFTI_RE = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
_TIME_RE = re.compile(
    r"(\d+(?:\.\d+)?)[-_ ]?(s|sec|min|mins|h|hr|hrs|hours?|d|days?|w|wk|wks|weeks?)", re.I)
_PREFIX_TIME_RE = re.compile(r"(d|day|w|wk|week|h|hr)[-_ ]?(\d+(?:\.\d+)?)", re.I)
_BASELINE_WORDS = {"baseline", "base", "bl", "pre", "pretreatment", "pre-treatment",
                   "pretx", "screening"}
_UNIT = {"s": "s", "sec": "s", "min": "min", "mins": "min", "h": "h", "hr": "h", "hrs": "h",
         "hour": "h", "hours": "h", "d": "d", "day": "d", "days": "d", "w": "w", "wk": "w",
         "wks": "w", "week": "w", "weeks": "w"}
_SECONDS = {"s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


# --------------------------------------------------------------------------- inventory


@dataclass
class _Item:
    """One scan or mask found in a session."""

    pattern: str              # generalised relative path (placeholders, echo-*)
    path: Path                # one concrete file or folder
    kind: str                 # 'nifti', 'mask', 'dicom', 'bruker'
    suffix: str = ""
    entities: dict = field(default_factory=dict)
    files: list = field(default_factory=list)


def _entities(name: str) -> tuple[dict, str]:
    """BIDS entities and suffix of a name: ``sub-1_echo-2_MEGRE.nii.gz`` -> ({...}, 'MEGRE')."""
    parts = _NIFTI_RE.sub("", name).split("_")
    suffix = parts.pop() if "-" not in parts[-1] else ""
    ents = {}
    for part in parts:
        k, _, v = part.partition("-")
        ents[k] = v
    return ents, suffix


def _generalise(rel: str, subject: str, session: str) -> str:
    out = re.sub(rf"(?<![A-Za-z0-9])sub-{re.escape(subject)}(?=[_/.]|$)", "sub-{subject}", rel)
    out = re.sub(rf"(?<![A-Za-z0-9])ses-{re.escape(session)}(?=[_/.]|$)", "ses-{timepoint}", out)
    out = re.sub(r"(?<=_)echo-\d+(?=_)", "echo-*", out)
    # folder names built from the labels (rat01_24h)
    parts = out.split("/")
    def label(text, value, placeholder):
        return re.sub(rf"(?<![A-Za-z0-9]){re.escape(value)}(?![A-Za-z0-9])", placeholder, text)

    parts = [p if "{" in p else label(label(p, subject, "{subject}"), session, "{timepoint}")
             for p in parts]
    return "/".join(parts)


def _scanner_folder(path: Path) -> str | None:
    from ..io.registry import find_reader

    try:
        name = find_reader(path).name
    except (ReadError, OSError):
        return None
    return name if name in ("dicom", "bruker") else None


def _session_items(ses_dir: Path, subject: str, session: str, root: Path) -> list[_Item]:
    items: dict[str, _Item] = {}
    for dirpath, dirnames, filenames in os.walk(ses_dir):
        here = Path(dirpath)
        dirnames[:] = sorted((d for d in dirnames if not d.startswith(".")), key=natural_key)
        niftis = sorted((f for f in filenames if _NIFTI_RE.search(f) and not f.startswith(".")),
                        key=natural_key)
        for fname in niftis:
            f = here / fname
            rel = f.relative_to(root).as_posix()
            pattern = _generalise(rel, subject, session)
            ents, suffix = _entities(fname)
            kind = "mask" if suffix.lower() == "mask" else "nifti"
            item = items.setdefault(pattern, _Item(pattern, f, kind, suffix, ents))
            item.files.append(f)
        keep = []
        for d in dirnames:
            sub = here / d
            has_nifti = any(_NIFTI_RE.search(x.name) for x in sub.iterdir() if x.is_file())
            kind = None if has_nifti else _scanner_folder(sub)
            if kind is None:
                keep.append(d)
                continue
            rel = sub.relative_to(root).as_posix()
            pattern = _generalise(rel, subject, session)
            items.setdefault(pattern, _Item(pattern, sub, kind, files=[sub]))
        dirnames[:] = keep
    return list(items.values())


def _guess_time(label: str) -> tuple[float | None, str | None, str | None]:
    """(seconds, text, comment) guessed from a session label; Nones if no guess."""
    low = label.lower()
    if low in _BASELINE_WORDS or low.startswith(("pre", "baseline")):
        return 0.0, "0 h", "TODO check: before treatment, e.g. -1 h or -1 d"
    m = _TIME_RE.fullmatch(label)
    if m:
        unit = _UNIT[m.group(2).lower()]
        return (float(m.group(1)) * _SECONDS[unit], f"{m.group(1)} {unit}",
                "TODO check: read from the label")
    m = _PREFIX_TIME_RE.fullmatch(label)
    if m:
        unit = _UNIT[m.group(1).lower()]
        return (float(m.group(2)) * _SECONDS[unit], f"{m.group(2)} {unit}",
                "TODO check: read from the label")
    return None, None, None


def _header_grid(path: Path):
    import nibabel as nib

    try:
        img = nib.load(path)
    except Exception:  # not readable: no grid
        return None
    shape = tuple(int(n) for n in img.shape)
    return shape, np.asarray(img.affine, dtype=np.float64)


# --------------------------------------------------------------------------- YAML text


def _key(name: str) -> str:
    """``name`` as a YAML key: plain when YAML reads it back as that text, quoted otherwise."""
    try:
        back = yaml.safe_load(f"{name}: 1")
    except yaml.YAMLError:
        back = None
    if isinstance(back, dict) and list(back) == [name] and _NAME_RE.fullmatch(name):
        return name
    return json.dumps(name)


def _q(text: str) -> str:
    return json.dumps(text)


def _fmt_number(x: float) -> str:
    return f"{x:.6g}"


class _Lines:
    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, text: str = "", comment: str | None = None, col: int = 0):
        if comment:
            text = f"{text}  # {comment}" if text.strip() else f"{' ' * col}# {comment}"
        self.lines.append(text.rstrip())

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


# --------------------------------------------------------------------------- main


def write_template(folder, out_path, *, force: bool = False) -> Path:
    """Write a commented study spec inferred from a folder of scans.

    Parameters
    ----------
    folder : str or path-like
        A BIDS-like folder: ``sub-<subject>/ses-<timepoint>/<datatype>/*.nii[.gz]``
        and/or scanner folders (DICOM series, Bruker scans) under
        ``sub-<subject>/ses-<timepoint>/``.
    out_path : str or path-like
        The spec file to write; paths in it are relative to its folder.
    force : bool
        Overwrite ``out_path`` if it exists.

    Returns
    -------
    Path
        ``out_path``.

    Raises
    ------
    ValidationError
        ``out_path`` exists and ``force`` is False; no ``sub-*/ses-*``
        session with scans under ``folder``; a subject or session label
        that cannot be a name in the spec.
    ReadError
        ``folder`` is not a folder.
    """
    folder = Path(os.fspath(folder))
    out = Path(os.fspath(out_path))
    if out.exists() and not force:
        raise ValidationError(
            f"{out}: already exists; choose another file name or pass --force "
            "(force=True) to overwrite it")
    if not folder.is_dir():
        raise ReadError(f"{folder}: no such folder; pass the folder holding sub-*/ses-*")
    root = folder.resolve()

    sessions: dict[tuple[str, str], list[_Item]] = {}
    subjects: list[str] = []
    labels: list[str] = []
    for sub_dir in sorted((p for p in root.glob("sub-*") if p.is_dir()), key=natural_key):
        subject = sub_dir.name[4:]
        for ses_dir in sorted((p for p in sub_dir.glob("ses-*") if p.is_dir()), key=natural_key):
            session = ses_dir.name[4:]
            items = _session_items(ses_dir, subject, session, root)
            if not items:
                continue
            for label, what, path in ((subject, "subject", sub_dir), (session, "session", ses_dir)):
                if not _NAME_RE.fullmatch(label):
                    raise ValidationError(
                        f"{path}: {what} label {label!r} may hold only letters, digits, '_' "
                        "and '-' to be a name in the spec; rename the folder")
            sessions[(subject, session)] = items
            if subject not in subjects:
                subjects.append(subject)
            if session not in labels:
                labels.append(session)
    if not sessions:
        raise ValidationError(
            f"{folder}: no sessions with scans found; expected sub-<subject>/ses-<timepoint>/ "
            "folders holding NIfTI files (e.g. anat/*.nii.gz), DICOM series or Bruker scans")

    # ---- timepoints
    guesses = {lab: _guess_time(lab) for lab in labels}
    known = [g[0] for g in guesses.values() if g[0] is not None]
    unknown = sorted((lab for lab in labels if guesses[lab][0] is None), key=natural_key)
    start = (max(known) / 86400.0 if known else -1.0)
    for i, lab in enumerate(unknown):
        days = math.floor(start) + 1 + i
        guesses[lab] = (days * 86400.0, f"{days} d",
                        "TODO: the real time after treatment (only the order was guessed)")
    order = sorted(labels, key=lambda lab: (guesses[lab][0], natural_key(lab)))
    baseline = order[0]

    # ---- scan roles
    groups: dict[str, list[_Item]] = {}
    for items in sessions.values():
        for item in items:
            groups.setdefault(item.pattern, []).append(item)
    n_sessions = len(sessions)
    scan_patterns = [p for p, its in groups.items() if its[0].kind != "mask"]
    mask_patterns = [p for p, its in groups.items() if its[0].kind == "mask"]
    roles: dict[str, str] = {}      # pattern -> role name
    for pattern in sorted(scan_patterns, key=natural_key):
        item = groups[pattern][0]
        if item.kind == "nifti":
            base = item.suffix.lower() or "scan"
            extra = [f"{k}-{v}" if v else k for k, v in item.entities.items()
                     if k not in ("sub", "ses", "echo")]
            name = "_".join([base] + extra)
        else:
            name = Path(pattern).name.replace("{subject}", "").replace("{timepoint}", "")
            name = name.strip("_-.") or item.kind
        name = re.sub(r"[^A-Za-z0-9_-]", "_", name).strip("_-") or "scan"
        if not name[0].isalnum():
            name = "scan_" + name
        unique, k = name, 2
        while unique in roles.values():
            unique, k = f"{name}_{k}", k + 1
        roles[pattern] = unique

    def everywhere(pattern):
        return len(groups[pattern]) == n_sessions  # one item per session holding it

    active = [p for p in roles if everywhere(p)]
    partial = [p for p in roles if p not in active]
    if not active:
        raise ValidationError(
            f"{folder}: no kind of scan is present in every session; give the sessions the "
            "same layout (or write the spec by hand, with per-session overrides)")

    def multi_echo(pattern) -> bool:
        items = groups[pattern]
        if items[0].kind != "nifti":
            return False
        if "echo-*" in pattern and max(len(i.files) for i in items) > 1:
            return True
        if items[0].suffix.upper() in ("MEGRE", "MESE"):
            grid = _header_grid(items[0].files[0])
            return grid is not None and len(grid[0]) == 4 and grid[0][3] > 1
        return False

    multi = [p for p in active if multi_echo(p)]
    single = [p for p in active if p not in multi]

    def grid_of(pattern):
        item = groups[pattern][0]
        return _header_grid(item.files[0]) if item.kind in ("nifti", "mask") else None

    # ---- ROIs
    rois: dict[str, tuple[str, str]] = {}   # name -> (pattern, on role)
    roi_partial: list[str] = []
    for pattern in sorted(mask_patterns, key=natural_key):
        item = groups[pattern][0]
        name = item.entities.get("label") or item.entities.get("desc") or "roi"
        name = re.sub(r"[^A-Za-z0-9_-]", "_", name).strip("_-") or "roi"
        if not name[0].isalnum():
            name = "roi_" + name
        unique, k = name, 2
        while unique in rois:
            unique, k = f"{name}_{k}", k + 1
        mgrid = grid_of(pattern)
        on = None
        for cand in single + multi:
            g = grid_of(cand)
            if mgrid is not None and g is not None and same_grid(mgrid[0], mgrid[1], g[0], g[1]):
                on = cand
                break
        if on is None:
            on = (single or multi)[0]
        if everywhere(pattern):
            rois[unique] = (pattern, roles[on])
        else:
            roi_partial.append(pattern)
    seed_roi = None
    if not rois:
        on = (single or multi)[0]
        g = grid_of(on)
        centre = [0.0, 0.0, 0.0]
        if g is not None:
            shape = np.asarray(g[0][:3], dtype=float)
            centre = (g[1] @ np.append((shape - 1) / 2.0, 1.0))[:3].tolist()
        seed_roi = ("tumour", roles[on], [round(c, 2) for c in centre])

    # ---- map
    map_name = map_model = None
    if multi:
        suffix = groups[multi[0]][0].suffix.upper()
        map_model = "t2" if suffix == "MESE" else "r2star"
        map_name = map_model
    echo_sidecars = {}
    for p in multi:
        f = groups[p][0].files[0]
        echo_sidecars[p] = Path(_NIFTI_RE.sub("", str(f)) + ".json").exists()

    # ---- paths relative to the spec's folder
    spec_dir = Path(os.path.abspath(out)).parent
    rel_root = os.path.relpath(root, spec_dir)
    rel_root = "" if rel_root == "." else Path(rel_root).as_posix() + "/"

    def rel(pattern: str) -> str:
        return rel_root + pattern

    # ---- write
    w = _Lines()
    w("# oncomri study spec, a template written from the scans in")
    w(f"#   {root}")
    w("# Check every line marked TODO, then run the study. Paths are relative to this file.")
    w("oncomri: 1", "spec format version (do not change)")
    w(f"name: {_q(root.name)}", "TODO: the study's name")
    w(f"description: {_q('')}", "optional free text")
    out_dir = "derivatives/oncomri" if (root / "dataset_description.json").exists() else "oncomri"
    w(f"output: {_q(rel(out_dir))}", "maps, tables and the report go here")
    w("database: null", "null: <output>/study.sqlite (the --db option overrides it)")
    w()
    w("arms:", "treatment groups, name -> description")
    w(f"  control: {{description: {_q('all subjects')}}}",
      "TODO: define the real arms and assign each subject to one")
    w()
    w("timepoints:", "imaging timepoints; time after treatment with a unit (s, min, h, d, w)")
    for lab in order:
        _, text, comment = guesses[lab]
        w(f"  {_key(lab)}: {{time: {_q(text)}}}", comment)
    w(f"baseline: {_q(baseline)}", "changes are computed from this timepoint")
    w()
    w("subjects:", "subject id -> arm, covariates, missing sessions, per-session overrides")
    for subject in subjects:
        missing = [lab for lab in order if (subject, lab) not in sessions]
        if missing:
            w(f"  {_key(subject)}:")
            w("    arm: control", "TODO: the subject's arm")
            w("    missing:", "sessions that do not exist, with the reason")
            for lab in missing:
                w(f"      {_key(lab)}: {_q('no session folder with scans found')}")
        else:
            w(f"  {_key(subject)}: {{arm: control}}", "TODO: the subject's arm")
    w()
    w("scans:", "the scans of every session by role: path pattern ({subject}, {timepoint}, globs)")
    for p in active:
        item = groups[p][0]
        w(f"  {roles[p]}:")
        w(f"    path: {_q(rel(p))}")
        if item.kind in ("dicom", "bruker"):
            w("    series: null", f"TODO: if this {item.kind} folder holds several series, "
                                   "pick one: \"5\"")
        if p in multi and not echo_sidecars[p]:
            w("    echo_times: null", "TODO: no JSON sidecar with EchoTime found; write e.g. "
                                       "\"4.6,9.2,13.8ms\"")
    for p in partial:
        n = len(groups[p])
        w(f"  # {roles[p]}: {{path: {_q(rel(p))}}}",
          f"found in {n} of {n_sessions} sessions only; give the others per-session "
          "overrides or list them as missing before enabling it")
    w()
    w("rois:", "named ROIs per session: on = the scan whose grid it lies on; "
               "one source: mask | seed | propagate")
    for name, (p, on) in rois.items():
        w(f"  {_key(name)}:")
        w(f"    on: {on}")
        w(f"    mask: {_q(rel(p))}")
    if seed_roi is not None:
        name, on, centre = seed_roi
        w(f"  {name}:")
        w(f"    on: {on}")
        w(f"    seed: [{', '.join(_fmt_number(c) for c in centre)}]",
          "TODO: a point inside the tumour (world RAS+ mm); this is the image centre")
        w("    method: region_growing", "or threshold")
    for p in roi_partial:
        w(f"  # mask found in {len(groups[p])} of {n_sessions} sessions only: {_q(rel(p))}")
    w()
    if map_name:
        w("maps:", "parameter maps to fit, by name")
        w(f"  {map_name}:")
        w(f"    model: {map_model}", "a model of oncomri.models.MODELS")
        w(f"    scan: {roles[multi[0]]}")
        w("    method: ncexp", "noise-floor aware fit (the default)")
        w("    noise_sigma: auto", "or the noise SD in signal units")
    else:
        w("maps: {}", "no multi-echo scan found; add maps here (model, scan)")
    w()
    w("biomarkers:", "one number per session each: map statistic in an ROI, or ROI geometry")
    roi_names = list(rois) or [seed_roi[0]]
    first = None
    for roi in roi_names:
        if map_name == "r2star":
            for quantity, suffix in (("R2star", "R2starmap"), ("T2star", "T2starmap")):
                bname = f"{roi}_{quantity}"
                w(f"  {bname}: {{map: {map_name}.{suffix}, roi: {roi}, statistic: median}}",
                  "s^-1" if quantity == "R2star" else "s")
                first = first or bname
        elif map_name == "t2":
            for quantity, suffix in (("R2", "R2map"), ("T2", "T2map")):
                bname = f"{roi}_{quantity}"
                w(f"  {bname}: {{map: {map_name}.{suffix}, roi: {roi}, statistic: median}}",
                  "s^-1" if quantity == "R2" else "s")
                first = first or bname
        w(f"  {roi}_volume: {{roi: {roi}, measure: volume}}", "mm^3")
        first = first or f"{roi}_volume"
    w("  # statistics: mean | median | sd | p10 | p90 | min | max;"
      " measures: volume | longest_diameter | short_axis")
    w()
    later = [lab for lab in order if lab != baseline]
    if later:
        w("analyses:", "statistics over the study; each has a type")
        for lab in later[:3]:
            w("  - type: paired", "within each arm: value at `to` vs at `from`")
            w(f"    biomarker: {first}")
            w(f"    from: {_q(baseline)}")
            w(f"    to: {_q(lab)}")
            w("    test: t", "t | wilcoxon")
        w("  # Once the arms are defined:")
        w("  # - type: between_arms", "one test across arms at one timepoint")
        w(f"  #   biomarker: {first}")
        w(f"  #   timepoint: {_q(later[-1])}")
        w("  #   change: percent", "none | absolute | percent (from the baseline)")
        w("  # - type: mixed_model", "biomarker ~ arm * time + (1 | subject)")
        w(f"  #   biomarker: {first}")
    else:
        w("analyses: []", "one timepoint only: add analyses here (paired, between_arms, ...)")
    w("  # Survival needs subject covariates, e.g. recurrence_months and recurred (true/false):")
    w("  # - {type: survival, time: recurrence_months, time_unit: month, event: recurred, "
      "group: arm}")

    text = w.text()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return out
