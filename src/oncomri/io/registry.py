"""One entry point for every scanner format: ``load(path)`` and ``load_all(path)``.

Like nibabel's image-class registry, each format is a :class:`Reader` that
*sniffs* a path (cheaply: names, magic bytes, marker files) and *reads* it
into one :class:`~oncomri.core.Volume` per series. Readers are tried in
order; the first that recognises the path reads it. Reader modules are
imported only when used, so a missing optional dependency (pydicom, ...)
only matters for its format.

Conventions every reader follows:

- ``Volume.data``: float32, spatial axes first (X, Y, Z), the measurement
  axis (echoes, b-values, flip angles, inversion times, dynamics) last and
  ordered by its parameter; scanner scaling applied.
- ``Volume.affine``: voxel indices -> world mm in RAS+ (as NIfTI/nibabel).
- ``Volume.protocol``: the matching ``oncomri.core`` protocol, SI units.
- ``Volume.meta``: BIDS sidecar fields in BIDS units (EchoTime s,
  RepetitionTime s, FlipAngle deg, MagneticFieldStrength T, SeriesNumber,
  SeriesDescription, Manufacturer ...) plus ``notes`` (list of str: what the
  reader decided, e.g. skipped objects or rescaling applied).
- ``Volume.sources``: the files read.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import ReadError, ValidationError
from ..core.volume import Volume

__all__ = ["Reader", "READERS", "find_reader", "load", "load_all", "describe_series"]


def _is_nifti(path: Path) -> bool:
    return path.is_file() and (path.name.endswith(".nii") or path.name.endswith(".nii.gz"))


def _is_parrec(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in (".par", ".rec")


def _is_bruker(path: Path) -> bool:
    """A ParaVision study, scan (``acqp``/``method``) or reconstruction (``2dseq``) folder."""
    if not path.is_dir():
        return path.is_file() and path.name in ("2dseq", "visu_pars")
    markers = ("2dseq", "visu_pars", "acqp", "method", "subject")
    if any((path / m).exists() for m in markers):
        return True
    return any((child / "acqp").exists() or (child / "pdata").is_dir()
               for child in path.iterdir() if child.is_dir() and child.name.isdigit())


def _has_dicom_magic(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _is_dicom(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() in (".dcm", ".ima") or _has_dicom_magic(path)
    if path.is_dir():
        for i, child in enumerate(sorted(path.rglob("*"))):
            if child.is_file() and (child.suffix.lower() in (".dcm", ".ima")
                                    or _has_dicom_magic(child)):
                return True
            if i > 200:
                break
    return False


@dataclass(frozen=True)
class Reader:
    """A scanner format: how to recognise a path and which module reads it.

    ``module`` must define ``read_series(path, **options) -> list[Volume]``.
    """

    name: str
    description: str
    sniff: Callable[[Path], bool]
    module: str

    def read(self, path: Path, **options) -> list[Volume]:
        return importlib.import_module(self.module).read_series(path, **options)


#: The readers, tried in this order.
READERS: list[Reader] = [
    Reader("bruker", "Bruker ParaVision 5.1/6/360 study, scan or pdata folder",
           _is_bruker, "oncomri.io.bruker"),
    Reader("parrec", "Philips PAR/REC", _is_parrec, "oncomri.io.parrec"),
    Reader("nifti", "NIfTI-1/2 with BIDS JSON sidecar", _is_nifti, "oncomri.io.nifti"),
    Reader("dicom", "DICOM file or folder (classic and enhanced MR)", _is_dicom, "oncomri.io.dicom"),
]


def find_reader(path) -> Reader:
    """The first reader that recognises ``path``; ReadError naming the path otherwise."""
    path = Path(path)
    if not path.exists():
        raise ReadError(f"{path}: no such file or folder; check the path")
    for reader in READERS:
        if reader.sniff(path):
            return reader
    kinds = "; ".join(r.description for r in READERS)
    raise ReadError(f"{path}: unknown file type; oncomri reads: {kinds}")


def load_all(path, **options) -> list[Volume]:
    """Every series found at ``path`` (a file or folder), each as a Volume."""
    reader = find_reader(path)
    volumes = reader.read(Path(path), **options)
    if not volumes:
        raise ReadError(f"{path}: no image series found ({reader.description})")
    return volumes


def _series_keys(volumes: list[Volume]) -> list[str]:
    """A selector per volume: its SeriesNumber, or ``N/k`` when a series was split.

    Readers split one series into several volumes when its images differ in
    orientation or image type (magnitude/phase ...); those share the number
    and are told apart by their position ``k`` (1-based) in reading order.
    """
    numbers = [str(v.meta.get("SeriesNumber", "?")) for v in volumes]
    keys, seen = [], {}
    for n in numbers:
        seen[n] = seen.get(n, 0) + 1
        keys.append(f"{n}/{seen[n]}" if numbers.count(n) > 1 else n)
    return keys


def describe_series(volume: Volume, key: str | None = None) -> str:
    """A short label of a series for messages: ``'5 (mge_te_12)'``."""
    number = key or volume.meta.get("SeriesNumber", "?")
    text = volume.meta.get("SeriesDescription") or volume.meta.get("ProtocolName") or ""
    return f"{number} ({text})" if text else f"{number}"


def load(path, *, series=None, **options) -> Volume:
    """The one series at ``path``; ``series`` picks it if there are several.

    ``series`` is a SeriesNumber, ``N/k`` for the k-th volume of a series
    that was split (see :func:`describe_series` listings), a
    SeriesDescription or a SeriesInstanceUID.

    Raises
    ------
    ValidationError
        The path holds several series and ``series`` does not pick exactly one.
    """
    volumes = load_all(path, **options)
    keys = _series_keys(volumes)
    listing = ", ".join(describe_series(v, k) for v, k in zip(volumes, keys))
    if series is None:
        if len(volumes) == 1:
            return volumes[0]
        raise ValidationError(
            f"{path}: holds {len(volumes)} series ({listing}); choose one with "
            "series=NUMBER (CLI: --series NUMBER)")
    chosen = [v for v, k in zip(volumes, keys)
              if k == str(series)
              or (str(v.meta.get("SeriesNumber")) == str(series) and "/" not in k)
              or v.meta.get("SeriesDescription") == series
              or v.meta.get("SeriesInstanceUID") == series]
    if len(chosen) != 1:
        raise ValidationError(
            f"{path}: series {series!r} matches {len(chosen)} of the series here ({listing}); "
            "give a SeriesNumber from this list")
    return chosen[0]
