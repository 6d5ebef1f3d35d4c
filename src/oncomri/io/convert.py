"""Write any series oncomri reads as BIDS-named NIfTI + JSON (``oncomri convert``).

One call writes one series as a run, all files or none: multi-echo series
as one file per echo (``_echo-<k>_MEGRE``/``_MESE``, each sidecar with its
``EchoTime`` in s), variable flip angles as ``_flip-<k>_VFA`` (``FlipAngle``
in degrees), inversion recovery as ``_inv-<k>_IRT1`` (``InversionTime`` in s),
diffusion as ``_dwi`` with ``.bval`` (s/mm²) and ``.bvec``, dynamics as one
4D file whose sidecar lists ``FrameTimesStart`` (s), and 3D images as one
file. Names follow BIDS (https://bids-specification.readthedocs.io,
"Magnetic Resonance Imaging" and "Entities").
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import __version__
from ..core import (
    DiffusionProtocol,
    DynamicProtocol,
    MultiEchoProtocol,
    VariableFlipAngleProtocol,
    ValidationError,
    Volume,
)
from .bids import _label, bids_layout
from .nifti import write_derivatives

__all__ = ["write_bids_series", "sidecar_from_meta"]

#: Volume.meta keys that are reader internals, not sidecar fields.
INTERNAL_KEYS = frozenset({"nifti_header", "notes", "SOPInstanceUIDs", "ReferencedFrameNumbers",
                           "source_files", "source_datasets"})

#: Patient identifiers the readers keep in meta (for DICOM export) but that
#: never go into a sidecar, de-identified or not (as dcm2niix's default -ba y).
PATIENT_KEYS = frozenset({"PatientID", "PatientName", "PatientBirthDate", "PatientAddress",
                          "OtherPatientIDs", "OtherPatientNames", "AccessionNumber"})


def sidecar_from_meta(meta: dict) -> dict:
    """The JSON-able BIDS fields of a Volume's ``meta`` (reader internals dropped)."""
    out = {}
    for key, value in meta.items():
        if key in INTERNAL_KEYS or key in PATIENT_KEYS or key.startswith("_"):
            continue
        if isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            continue
        out[key] = value
    notes = list(meta.get("notes", []))
    if notes:
        out["ConversionNotes"] = notes
    return out


def write_bids_series(out_dir, volume: Volume, *, subject: str = "01", session: str | None = None,
                      run: int | None = None, deidentifier=None,
                      deidentify_as: str | None = None) -> list[Path]:
    """Write ``volume`` under ``out_dir/sub-<subject>[/ses-<session>]/<datatype>/``.

    Parameters
    ----------
    out_dir : path
        The BIDS dataset root.
    volume : Volume
        A series from :func:`oncomri.io.load`.
    subject, session : str
        BIDS labels (letters and digits).
    run : int, optional
        Run index (default: the series' SeriesNumber, if any).
    deidentifier : oncomri.io.deid.Deidentifier, optional
        Applied to the sidecar (PS3.15 Basic Profile); the NIfTI header is
        then rebuilt from the affine alone (no description or file fields
        carried over) and reader notes, which may hold paths, are dropped.
    deidentify_as : str, optional
        The original subject identifier (PatientID) that keys the
        pseudonym and the date shift, so dates shift consistently across
        sessions; defaults to the series' PatientID.

    Returns
    -------
    list of Path: the NIfTI files written.
    """
    for name, label in (("subject", subject), ("session", session)):
        if label is not None and (not label or _label(label) != label):
            raise ValidationError(f"{name} label {label!r} must be letters and digits only (BIDS)")
    suffix, entity = bids_layout(volume)
    if run is None:
        try:
            run = int(volume.meta.get("SeriesNumber"))
        except (TypeError, ValueError):
            run = None
    parts = [f"sub-{subject}"] + ([f"ses-{session}"] if session else [])
    desc = _label(volume.meta.get("SeriesDescription") or volume.meta.get("ProtocolName"))
    if desc and desc != suffix:
        parts.append(f"acq-{desc}")
    if run is not None:
        parts.append(f"run-{run}")
    prefix = "_".join(parts)
    datatype = "dwi" if suffix == "dwi" else "anat"
    folder = Path(out_dir) / f"sub-{subject}" / (f"ses-{session}" if session else "") / datatype

    meta = dict(volume.meta)
    reference = volume
    if deidentifier is not None:
        meta.pop("notes", None)
        meta = deidentifier.deidentify_metadata(meta, subject_id=deidentify_as)
        reference = Volume(volume.data, volume.affine, protocol=volume.protocol)
    common = sidecar_from_meta(meta)
    common.update({"ConversionSoftware": "oncomri", "ConversionSoftwareVersion": __version__})
    for key in ("EchoTime", "FlipAngle", "InversionTime", "EchoNumber"):
        if isinstance(common.get(key), list):
            del common[key]

    data = volume.data
    p = volume.protocol
    maps, texts = {}, {}
    if entity is not None and data.ndim == 4:
        if isinstance(p, MultiEchoProtocol):
            per = [{"EchoTime": float(t), "EchoNumber": k + 1} for k, t in enumerate(p.echo_times)]
        elif isinstance(p, VariableFlipAngleProtocol):
            per = [{"FlipAngle": float(np.rad2deg(a)), "RepetitionTime": p.repetition_time}
                   for a in p.flip_angles]
        else:  # inversion recovery
            per = [{"InversionTime": float(t)} for t in p.inversion_times]
        for k, side in enumerate(per, start=1):
            maps[f"{entity}-{k}_{suffix}"] = (data[..., k - 1], side)
    else:
        side = {}
        if isinstance(p, DynamicProtocol):
            side["FrameTimesStart"] = p.times.tolist()
        if isinstance(p, DiffusionProtocol):
            texts[f"{suffix}.bval"] = " ".join(f"{b:g}" for b in p.b_values) + "\n"
            vec = p.b_vectors if p.b_vectors is not None else np.zeros((p.b_values.size, 3))
            texts[f"{suffix}.bvec"] = "\n".join(" ".join(f"{v:.6f}" for v in row)
                                                for row in vec.T) + "\n"
        maps[suffix] = (data, side)
    return write_derivatives(folder, prefix, maps, reference=reference, sidecar_common=common,
                             text_files=texts)
