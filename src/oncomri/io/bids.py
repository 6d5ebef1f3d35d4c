"""BIDS naming and JSON sidecars: file names in, derivative names out.

BIDS file names are ``<key>-<label>`` entities joined by ``_`` and ended by a
suffix, e.g. ``sub-01_ses-24h_echo-1_part-mag_MEGRE.nii.gz``. Derivatives of
a multi-echo series keep the entities that identify the acquisition and drop
those that only identify one image of it (``echo``, ``part``) together with
the suffix: ``sub-01_ses-24h_R2starmap.nii.gz``.

The JSON sidecar of an image is the file with the same name and ``.json`` in
place of ``.nii`` / ``.nii.gz``; BIDS stores times in it in seconds.

References
----------
Gorgolewski KJ et al. The brain imaging data structure, a format for
organizing and describing outputs of neuroimaging experiments.
Sci Data 2016;3:160044. https://bids-specification.readthedocs.io
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from ..core.errors import ReadError

__all__ = [
    "series_prefix",
    "bids_layout",
    "NIFTI_EXTENSIONS",
    "split_nifti_name",
    "sidecar_path",
    "read_sidecar",
    "parse_bids_name",
    "derivative_prefix",
]

#: File name endings recognised as NIfTI, longest first.
NIFTI_EXTENSIONS = (".nii.gz", ".nii", ".hdr", ".img")

#: Entities that label one image *within* a series; dropped from derivative names.
PER_IMAGE_ENTITIES = frozenset({"echo", "part"})

#: Used when no usable name can be derived from the inputs.
FALLBACK_PREFIX = "oncomri"

_ENTITY = re.compile(r"^([A-Za-z0-9]+)-([A-Za-z0-9]+)$")
_SUFFIX = re.compile(r"^[A-Za-z0-9]+$")
# A trailing echo marker in a non-BIDS stem: "_e1", "_e", "-echo2", "_echo_3", ".e12"
_ECHO_MARKER = re.compile(r"[_\-.\s]+(?:echo|e)[_\-]?\d*$", re.IGNORECASE)
_WORDS = re.compile(r"[A-Za-z0-9]+")


def split_nifti_name(path) -> tuple[str, str]:
    """Split a NIfTI file name into stem and extension.

    Parameters
    ----------
    path : str or path-like
        A file path such as ``sub-01_T2starw.nii.gz``.

    Returns
    -------
    stem : str
        The name without directory and extension (``sub-01_T2starw``).
    ext : str
        The extension including its dot(s) (``.nii.gz``), or the last suffix
        of the name if it is not a NIfTI extension (possibly ``''``).
    """
    name = Path(os.fspath(path)).name
    lower = name.lower()
    for ext in NIFTI_EXTENSIONS:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], name[-len(ext):]
    p = Path(name)
    return p.stem, p.suffix


def sidecar_path(path) -> Path:
    """The JSON sidecar that belongs to an image file.

    Parameters
    ----------
    path : str or path-like
        An image file (``.nii`` or ``.nii.gz``).

    Returns
    -------
    Path
        The same path with ``.json`` in place of the NIfTI extension
        (``x.nii.gz`` → ``x.json``).
    """
    p = Path(os.fspath(path))
    stem, _ = split_nifti_name(p)
    return p.with_name(stem + ".json")


def read_sidecar(path) -> dict | None:
    """Read the JSON sidecar of an image, if there is one.

    Parameters
    ----------
    path : str or path-like
        The image file (its sidecar is found with :func:`sidecar_path`) or the
        ``.json`` file itself.

    Returns
    -------
    dict or None
        The sidecar content, or ``None`` if the image has no sidecar.

    Raises
    ------
    ReadError
        If the sidecar exists but cannot be read, is not valid JSON, or does
        not hold a JSON object.
    """
    p = Path(os.fspath(path))
    js = p if p.suffix.lower() == ".json" else sidecar_path(p)
    if not js.is_file():
        return None
    try:
        text = js.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ReadError(f"{js}: cannot read the JSON sidecar ({_one_line(exc)})") from exc
    try:
        content = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReadError(
            f"{js}: the sidecar is not valid JSON (line {exc.lineno}: {exc.msg}); "
            "fix it or remove it and pass the acquisition parameters as arguments"
        ) from exc
    if not isinstance(content, dict):
        raise ReadError(
            f"{js}: the sidecar must hold a JSON object ({{...}}), "
            f"got a {type(content).__name__}"
        )
    return content


def parse_bids_name(path) -> tuple[list[tuple[str, str]], str | None] | None:
    """Parse a BIDS file name into its entities and suffix.

    Parameters
    ----------
    path : str or path-like
        A file path; only its name is used.

    Returns
    -------
    (entities, suffix) or None
        ``entities`` is the list of ``(key, label)`` pairs in file order and
        ``suffix`` the final part without a ``-`` (``None`` if the name ends in
        an entity). ``None`` if the name is not a BIDS name, i.e. does not start
        with ``sub-<label>`` or has a part that is neither an entity nor a
        final alphanumeric suffix.
    """
    stem, _ = split_nifti_name(path)
    parts = stem.split("_")
    entities: list[tuple[str, str]] = []
    suffix = None
    for i, part in enumerate(parts):
        m = _ENTITY.match(part)
        if m:
            entities.append((m.group(1), m.group(2)))
        elif i == len(parts) - 1 and _SUFFIX.match(part):
            suffix = part
        else:
            return None
    if not entities or entities[0][0] != "sub":
        return None
    return entities, suffix


def derivative_prefix(paths) -> str:
    """The entity prefix for derivative files computed from ``paths``.

    Output files are then named ``<prefix>_<map>.nii.gz`` (e.g.
    ``sub-01_ses-24h_R2starmap.nii.gz``).

    Parameters
    ----------
    paths : str, path-like, or sequence of them
        The input images (for example the per-echo files of one series).

    Returns
    -------
    str
        Never empty. The rule:

        * **BIDS names** (starting with ``sub-<label>``): the entities that
          all inputs share, in the order of the first input, without the
          per-image entities ``echo`` and ``part`` and without the suffix.
          ``sub-01_ses-24h_echo-1_T2starw.nii.gz`` → ``sub-01_ses-24h``.
        * **Other names**: the longest common leading part of the file stems,
          with a trailing echo marker (``_e1``, ``_e``, ``_echo-2`` ...) and
          separators removed, made into a valid BIDS label: its alphanumeric
          words are joined with the first letter of each word after the first
          in upper case, everything else (``_``, ``+``, spaces ...) dropped.
          ``00016__InPhase_Cor_R2_Mapping_BH_+_phase_e1.nii.gz`` →
          ``00016InPhaseCorR2MappingBHPhase``. Such a prefix holds no ``_``, so
          the map name after it stays unambiguous.
        * ``'oncomri'`` if neither rule leaves any character.
    """
    if isinstance(paths, (str, bytes, os.PathLike)):
        paths = [paths]
    paths = [os.fsdecode(p) for p in paths]
    if not paths:
        return FALLBACK_PREFIX
    parsed = [parse_bids_name(p) for p in paths]
    if all(p is not None for p in parsed):
        common = [
            (k, v)
            for k, v in parsed[0][0]
            if k not in PER_IMAGE_ENTITIES and all((k, v) in ents for ents, _ in parsed[1:])
        ]
        if common and common[0][0] == "sub":
            return "_".join(f"{k}-{v}" for k, v in common)
    stems = [split_nifti_name(p)[0] for p in paths]
    base = os.path.commonprefix(stems)
    base = _ECHO_MARKER.sub("", base)
    words = _WORDS.findall(base)
    label = "".join(w if i == 0 else w[:1].upper() + w[1:] for i, w in enumerate(words))
    return label or FALLBACK_PREFIX


def _one_line(exc: BaseException) -> str:
    """An exception as ``Type: message`` on one line."""
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _label(text) -> str:
    """A BIDS label: letters and digits only (camel-cased words)."""
    words = re.split(r"[^A-Za-z0-9]+", str(text or ""))
    return "".join(w[:1].upper() + w[1:] if i else w for i, w in enumerate(words) if w)


def series_prefix(volume) -> str:
    """Output prefix for a series read from DICOM, Bruker or PAR/REC: ``acq-<desc>_run-<n>``.

    Built from SeriesDescription/ProtocolName and SeriesNumber only (never
    from patient fields); ``'series'`` if the volume carries neither.
    """
    parts = []
    desc = _label(volume.meta.get("SeriesDescription") or volume.meta.get("ProtocolName"))
    if desc:
        parts.append(f"acq-{desc}")
    number = volume.meta.get("SeriesNumber")
    try:
        parts.append(f"run-{int(number)}")
    except (TypeError, ValueError):
        pass
    return "_".join(parts) or "series"


def bids_layout(volume) -> tuple[str, str | None]:
    """(BIDS suffix, per-measurement entity or None) for a series by what its last axis holds.

    Multi-echo gradient echo -> ('MEGRE', 'echo'); multi-echo spin echo ->
    ('MESE', 'echo'); variable flip angle -> ('VFA', 'flip'); inversion
    recovery -> ('IRT1', 'inv'); diffusion -> ('dwi', None, with .bval/.bvec);
    a dynamic series -> ('dynamic', None); a 3D image -> its description.
    """
    from ..core import (
        DiffusionProtocol,
        DynamicProtocol,
        InversionRecoveryProtocol,
        MultiEchoProtocol,
        VariableFlipAngleProtocol,
    )

    p = volume.protocol
    if isinstance(p, MultiEchoProtocol):
        seq = " ".join(map(str, np.atleast_1d(volume.meta.get("ScanningSequence", "")))).upper()
        spin_echo = "SE" in seq.split() or "SE" in seq.replace("\\", " ").split()
        return ("MESE" if spin_echo and "GR" not in seq else "MEGRE"), "echo"
    if isinstance(p, VariableFlipAngleProtocol):
        return "VFA", "flip"
    if isinstance(p, InversionRecoveryProtocol):
        return "IRT1", "inv"
    if isinstance(p, DiffusionProtocol):
        return "dwi", None
    if isinstance(p, DynamicProtocol):
        return "dynamic", None
    return (_label(volume.meta.get("SeriesDescription")) or "image"), None
