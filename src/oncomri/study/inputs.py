"""Preflight of a study: find every session's files before anything is written.

:func:`resolve_sessions` expands the path patterns of a
:class:`~oncomri.study.spec.StudySpec` for every session that exists
(``{subject}`` and ``{timepoint}`` substituted, globs matched relative to the
spec's folder, sorted in natural order so that ``echo-10`` follows
``echo-2``), applies the per-session overrides, and checks what can be
checked cheaply: every pattern matches, every ROI mask exists and lies on
the grid of its ``on`` scan (NIfTI: headers only), and every propagated ROI
has a source session with its own ROI. The first problem, in spec order,
raises a :class:`~oncomri.study.spec.SpecError` that points at the line of
the pattern (or the per-subject override) that produced it.

:func:`content_hash` fingerprints input files (and folders) so that the
pipeline can tell when an input changed.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..core.errors import OncomriError, ReadError
from ..core.volume import same_grid
from .spec import SpecError, StudySpec

__all__ = [
    "ResolvedScan",
    "ResolvedRoi",
    "ResolvedSession",
    "resolve_sessions",
    "content_hash",
    "natural_key",
]

_ATOL_MM = 1e-3  # the grid tolerance of oncomri.core.same_grid and the readers
_BLOCK = 1 << 20


@dataclass(frozen=True)
class ResolvedScan:
    """The files of one scan role in one session.

    Attributes
    ----------
    role : str
        The scan's role (key of ``spec.scans``).
    paths : tuple of Path
        Absolute paths, natural order: one file, one file per echo, or one
        folder (DICOM series, Bruker scan).
    series : str or None
        Series selector for :func:`oncomri.io.load`.
    echo_times : str or None
        Echo times with their unit (``'4.6,9.2,13.8ms'``) when the files carry none.
    field : tuple
        The spec field that produced ``paths`` (for ``spec.where(*field)``).
    """

    role: str
    paths: tuple[Path, ...]
    series: str | None
    echo_times: str | None
    field: tuple = ()


@dataclass(frozen=True)
class ResolvedRoi:
    """The definition of one ROI in one session.

    Attributes
    ----------
    name : str
        The ROI's name (key of ``spec.rois``).
    on : str
        The scan role whose grid the ROI is on.
    kind : {'mask', 'seed', 'propagate'}
        Where the ROI comes from.
    mask_path : Path or None
        The mask file (``kind == 'mask'``).
    label : int or None
        The label of a label image to use (``kind == 'mask'``).
    seed_mm : tuple of 3 float or None
        World (RAS+, mm) seed point (``kind == 'seed'``).
    method : str or None
        Segmentation method of :func:`oncomri.roi.segment_from_seed` (``kind == 'seed'``).
    propagate_from : str or None
        Timepoint whose ROI is carried over (``kind == 'propagate'``).
    field : tuple
        The spec field that defines the ROI for this session.
    """

    name: str
    on: str
    kind: str
    mask_path: Path | None
    label: int | None
    seed_mm: tuple | None
    method: str | None
    propagate_from: str | None
    field: tuple = ()


@dataclass(frozen=True)
class ResolvedSession:
    """One session (subject x timepoint) with its scans and ROIs resolved.

    ``time_s`` is the time after treatment in seconds.
    """

    subject: str
    arm: str
    timepoint: str
    time_s: float
    scans: dict[str, ResolvedScan]
    rois: dict[str, ResolvedRoi]


def natural_key(text) -> tuple:
    """Sort key that orders digit runs by value: ``echo-2`` before ``echo-10``."""
    parts = re.split(r"(\d+)", str(text))
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


# --------------------------------------------------------------------------- patterns


def _expand(pattern: str, subject: str, timepoint: str) -> str:
    return pattern.replace("{subject}", subject).replace("{timepoint}", timepoint)


def _match(spec: StudySpec, pattern: str, subject: str, timepoint: str) -> tuple[str, list[Path]]:
    expanded = _expand(pattern, subject, timepoint)
    p = Path(expanded)
    if p.is_absolute():
        full, base = expanded, None
    else:
        base = spec.root
        full = os.path.join(glob.escape(str(base)), expanded)
    if glob.has_magic(expanded):
        found = glob.glob(full)
    else:
        target = p if p.is_absolute() else spec.root / p
        found = [str(target)] if target.exists() else []
    paths = sorted((Path(os.path.abspath(f)) for f in found), key=natural_key)
    return expanded, paths


def _not_found(spec, field, what, expanded, subject, timepoint) -> SpecError:
    return spec.error(
        field, f"no file matches {expanded!r} ({what}, subject {subject} at {timepoint}, "
               f"searched from {spec.root}); check the pattern, or if this session does not "
               f"exist list it under subjects.{subject}.missing")


# --------------------------------------------------------------------------- grids


def _grid_text(shape, affine) -> str:
    aff = np.asarray(affine, dtype=np.float64)
    vox = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
    rows = "; ".join(" ".join(f"{v:.4g}" for v in row) for row in aff[:3])
    return (f"(shape {tuple(int(n) for n in shape[:3])}, voxel "
            f"{'x'.join(f'{v:.4g}' for v in vox)} mm, affine [{rows}])")


def _is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith((".nii", ".nii.gz"))


def _nifti_grid(path: Path):
    """Spatial shape and affine from a NIfTI header (no data read)."""
    import nibabel as nib

    try:
        img = nib.load(path)
    except Exception as exc:  # nibabel raises many types for bad files
        raise ReadError(f"{path}: not a readable NIfTI file ({exc}); export it again") from exc
    shape = tuple(int(n) for n in img.shape)
    shape = (shape + (1, 1, 1))[:3]
    return shape, np.asarray(img.affine, dtype=np.float64)


class _Grids:
    """Grid look-ups, cached per file."""

    def __init__(self):
        self._cache: dict = {}

    def scan(self, scan: ResolvedScan):
        key = ("scan", scan.paths, scan.series)
        if key not in self._cache:
            first = scan.paths[0]
            if _is_nifti(first):
                self._cache[key] = _nifti_grid(first)
            else:
                from ..io.registry import load

                target = first
                if len(scan.paths) > 1 and len({p.parent for p in scan.paths}) == 1:
                    target = first.parent
                vol = load(target, series=scan.series)
                self._cache[key] = (vol.spatial_shape, vol.affine)
        return self._cache[key]

    def mask(self, path: Path):
        key = ("mask", path)
        if key not in self._cache:
            if _is_nifti(path):
                self._cache[key] = _nifti_grid(path)
            else:
                from ..io.masks import load_roi

                mask, affine = load_roi(path)
                self._cache[key] = (tuple(mask.shape), affine)
        return self._cache[key]

    def mask_fits(self, path: Path, shape, affine) -> bool:
        """True if the mask can be put on (shape, affine) exactly (axis order, flips, shift)."""
        key = ("fits", path, tuple(shape), np.asarray(affine).tobytes())
        if key not in self._cache:
            from ..io.masks import load_roi

            like = SimpleNamespace(spatial_shape=tuple(shape), affine=affine)
            mask, got = load_roi(path, like=like)
            self._cache[key] = same_grid(mask.shape, got, shape, affine, atol_mm=_ATOL_MM)
        return self._cache[key]


# --------------------------------------------------------------------------- resolve


def _roi_definition(spec: StudySpec, subject: str, timepoint: str, name: str):
    """(definition, on, spec field) of ROI ``name`` in a session, overrides applied."""
    roi = spec.rois[name]
    sess = spec.subjects[subject].sessions.get(timepoint)
    override = (sess.rois or {}).get(name) if sess is not None else None
    if override is None:
        return roi, roi.on, ("rois", name)
    return override, override.on or roi.on, ("subjects", subject, "sessions", timepoint,
                                              "rois", name)


def resolve_sessions(spec: StudySpec, *, check_geometry: bool = True) -> list[ResolvedSession]:
    """Resolve the scans and ROIs of every session of ``spec``, checking they exist.

    Parameters
    ----------
    spec : StudySpec
        A spec from :func:`oncomri.study.spec.load_spec`.
    check_geometry : bool
        Check that every ROI mask lies on the grid of its ``on`` scan (shape
        and affine within 1e-3 mm, or the same grid up to axis order, flips
        and a whole-voxel shift, which :func:`oncomri.io.load_roi` undoes).
        NIfTI files are checked from their headers; other formats are read.

    Returns
    -------
    list of ResolvedSession
        In the order of ``spec.design().sessions``.

    Raises
    ------
    SpecError
        The first problem in spec order (sessions in design order, then
        scans, then ROIs): a pattern that matches no file, several folders
        matched for one scan, an ROI mask that is missing, ambiguous or on
        another grid than its scan, or a propagated ROI whose source
        session is missing or itself propagated. The message points at the
        line of the pattern or of the per-subject override.
    """
    design = spec.design()
    existing = set(design.sessions)
    needed = _rois_needed(spec, design)
    grids = _Grids()
    out: list[ResolvedSession] = []
    for subject, timepoint in design.sessions:
        subj = spec.subjects[subject]
        sess = subj.sessions.get(timepoint)
        scans: dict[str, ResolvedScan] = {}
        for role, scan in spec.scans.items():
            override = (sess.scans or {}).get(role) if sess is not None else None
            if override is None:
                pattern, series, echo_times = scan.path, scan.series, scan.echo_times
                fld = ("scans", role, "path")
            else:
                given = override.model_fields_set
                pattern = override.path
                series = override.series if "series" in given else scan.series
                echo_times = override.echo_times if "echo_times" in given else scan.echo_times
                fld = ("subjects", subject, "sessions", timepoint, "scans", role)
                if (*fld, "path") in spec._lines:  # written as {path: ...}
                    fld = fld + ("path",)
            expanded, paths = _match(spec, pattern, subject, timepoint)
            if not paths:
                raise _not_found(spec, fld, f"scan {role}", expanded, subject, timepoint)
            folders = [p for p in paths if p.is_dir()]
            if folders and len(paths) > 1:
                listing = ", ".join(p.name for p in paths[:5]) + (" ..." if len(paths) > 5 else "")
                raise spec.error(
                    fld, f"{expanded!r} matches {len(paths)} entries ({listing}) of which "
                         f"{len(folders)} folder(s); a scan is one folder (DICOM series, Bruker "
                         "scan) or a set of files: narrow the pattern")
            scans[role] = ResolvedScan(role, tuple(paths), series, echo_times, fld)

        rois: dict[str, ResolvedRoi] = {}
        for name in spec.rois:
            if name not in needed[(subject, timepoint)]:
                continue
            definition, on, fld = _roi_definition(spec, subject, timepoint, name)
            kind = definition.kind
            mask_path = None
            if kind == "mask":
                mfld = fld + ("mask",)
                expanded, paths = _match(spec, definition.mask, subject, timepoint)
                paths = [p for p in paths if not p.is_dir()] or paths
                if not paths:
                    raise spec.error(
                        mfld, f"ROI {name}: no mask file matches {expanded!r} (subject {subject} "
                              f"at {timepoint}, searched from {spec.root}); check the pattern or "
                              f"save the mask there (if this session does not exist list it "
                              f"under subjects.{subject}.missing)")
                if len(paths) > 1 or paths[0].is_dir():
                    listing = ", ".join(p.name for p in paths[:5])
                    raise spec.error(
                        mfld, f"ROI {name}: {expanded!r} matches {len(paths)} entries "
                              f"({listing}) for subject {subject} at {timepoint}; the pattern "
                              "must name one mask file: narrow it")
                mask_path = paths[0]
                if check_geometry:
                    _check_grid(spec, grids, mfld, name, mask_path, on, scans[on])
            elif kind == "propagate":
                _check_propagation(spec, existing, subject, timepoint, name,
                                   definition.propagate.from_, fld + ("propagate", "from"))
            rois[name] = ResolvedRoi(
                name=name, on=on, kind=kind, mask_path=mask_path,
                label=definition.label if kind == "mask" else None,
                seed_mm=tuple(definition.seed) if kind == "seed" else None,
                method=(definition.method or "region_growing") if kind == "seed" else None,
                propagate_from=definition.propagate.from_ if kind == "propagate" else None,
                field=fld)
        out.append(ResolvedSession(subject, subj.arm, timepoint, design.time_of(timepoint),
                                   scans, rois))
    return out


def _rois_needed(spec, design) -> dict:
    """(subject, timepoint) -> names of the ROIs that session must resolve.

    Every ROI is resolved in every session except one whose only users are
    biomarkers limited to other timepoints (``biomarkers.<name>.timepoints``),
    e.g. an ablation zone that exists only after the ablation. ROIs another
    session of the same subject propagates from are added transitively.
    """
    all_rois = set(spec.rois)
    referenced = set().union(*(spec.rois_used_at(tp) for tp in spec.timepoints)) | {
        r for b in spec.biomarkers.values() for r in (b.roi, b.ablation_roi) if r}
    unreferenced = all_rois - referenced
    needed = {(subj, tp): (set(spec.rois_used_at(tp)) & all_rois) | unreferenced
              for subj, tp in design.sessions}
    changed = True
    while changed:
        changed = False
        for (subject, timepoint), names in list(needed.items()):
            for name in list(names):
                definition, _, _ = _roi_definition(spec, subject, timepoint, name)
                if definition.kind != "propagate":
                    continue
                source = (subject, definition.propagate.from_)
                if source in needed and name not in needed[source]:
                    needed[source].add(name)
                    changed = True
    return needed


def _check_grid(spec, grids: _Grids, fld, name, mask_path: Path, on: str, scan: ResolvedScan):
    try:
        scan_shape, scan_affine = grids.scan(scan)
    except OncomriError as exc:
        raise spec.error(scan.field, f"cannot read the header of scan {on} ({exc}); fix or "
                                     "replace the file") from None
    try:
        mask_shape, mask_affine = grids.mask(mask_path)
        if same_grid(mask_shape, mask_affine, scan_shape, scan_affine, atol_mm=_ATOL_MM):
            return
        if grids.mask_fits(mask_path, scan_shape, scan_affine):
            return
    except OncomriError as exc:
        raise spec.error(fld, f"ROI {name}: cannot read the mask ({exc}); fix or replace "
                              "the file") from None
    raise spec.error(
        fld, f"ROI {name}: the grid of mask {mask_path} {_grid_text(mask_shape, mask_affine)} "
             f"differs from the grid of its scan {on} ({scan.paths[0]}) "
             f"{_grid_text(scan_shape, scan_affine)}; resample the mask onto the {on} grid "
             f"(nearest neighbour) or set `on` to the scan the mask was drawn on")


def _check_propagation(spec, existing, subject, timepoint, name, source, fld):
    if (subject, source) not in existing:
        raise spec.error(
            fld, f"ROI {name} of subject {subject} at {timepoint} is propagated from {source}, "
                 f"but {subject} has no session at {source} (it is listed under "
                 f"subjects.{subject}.missing); give this session its own ROI under "
                 f"subjects.{subject}.sessions.{timepoint}.rois.{name} (mask or seed)")
    src_def, _, _ = _roi_definition(spec, subject, source, name)
    if src_def.kind == "propagate":
        raise spec.error(
            fld, f"ROI {name} of subject {subject} at {timepoint} is propagated from {source}, "
                 f"where ROI {name} is itself propagated; give the {source} session its own "
                 f"ROI under subjects.{subject}.sessions.{source}.rois.{name} (mask or seed)")


# --------------------------------------------------------------------------- hashing


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def content_hash(paths) -> str:
    """SHA-256 (hex) of the content of files and folders, independent of where they lie.

    Every file is hashed with its name relative to the given path (a given
    file: its name; a file inside a given folder: ``<folder name>/<relative
    path>``), its size and its bytes, in sorted order of those names.
    Folders are walked recursively; hidden files and folders (``.name``) are
    skipped. Files are read in 1 MiB blocks.

    Parameters
    ----------
    paths : path-like or iterable of path-like
        Files and folders.

    Raises
    ------
    ReadError
        A path does not exist or cannot be read.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    entries: list[tuple[str, str, Path]] = []
    for given in paths:
        p = Path(os.fspath(given))
        if p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for fname in filenames:
                    if fname.startswith("."):
                        continue
                    f = Path(dirpath) / fname
                    rel = f.relative_to(p)
                    entries.append((f"{p.name}/{rel.as_posix()}", str(f), f))
        elif p.is_file():
            entries.append((p.name, str(p), p))
        else:
            raise ReadError(f"{p}: no such file or folder; check the path")
    entries.sort()
    h = hashlib.sha256()
    for name, _, f in entries:
        try:
            size = f.stat().st_size
            h.update(name.encode("utf-8", "surrogateescape") + b"\0")
            h.update(size.to_bytes(8, "little"))
            with f.open("rb") as fh:
                while True:
                    block = fh.read(_BLOCK)
                    if not block:
                        break
                    h.update(block)
        except OSError as exc:
            raise ReadError(
                f"{f}: cannot be read ({exc.strerror}); check its permissions") from None
    return h.hexdigest()
