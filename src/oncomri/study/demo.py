"""The built-in synthetic study, written to disk as a user's study would be.

:func:`write_demo_study` simulates the NK-cell delivery study of
:mod:`oncomri.sim.study` and writes it as a BIDS-like tree that
``oncomri run`` (and ``oncomri demo``) process exactly like real data::

    <folder>/
      study.yaml                       the study spec (commented)
      truth.csv                        the true values (tidy table columns)
      dataset_description.json, participants.tsv
      sub-<id>/ses-<tp>/anat/
        sub-<id>_ses-<tp>_echo-<n>_MEGRE.nii.gz + .json    12 echoes, EchoTime in s
        sub-<id>_ses-<tp>_T2w.nii.gz + .json
        sub-<id>_ses-<tp>_label-tumour_mask.nii.gz
      sourcedata/dicom/sub-<id>/ses-<tp>/IM*.dcm           one rat's MGE as classic DICOM

One subject's MGE series (all its sessions) is written as classic DICOM
instead of NIfTI and the spec points at those folders through the
subject's per-session ``scans`` overrides, so the demo exercises the DICOM
reader and the overrides too. Output is deterministic: the same options
give byte-identical files (gzip without time stamps, UIDs derived from the
seed, fixed dates).
"""

from __future__ import annotations

import datetime as _dt
import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import ValidationError
from ..sim.study import SyntheticStudy, simulate_study

__all__ = ["DemoStudy", "write_demo_study", "MEGRE_PATTERN", "T2W_PATTERN", "MASK_PATTERN",
           "DICOM_FOLDER"]

#: Path patterns of the spec (relative to the study folder).
MEGRE_PATTERN = ("sub-{subject}/ses-{timepoint}/anat/"
                 "sub-{subject}_ses-{timepoint}_echo-*_MEGRE.nii.gz")
T2W_PATTERN = "sub-{subject}/ses-{timepoint}/anat/sub-{subject}_ses-{timepoint}_T2w.nii.gz"
MASK_PATTERN = ("sub-{subject}/ses-{timepoint}/anat/"
                "sub-{subject}_ses-{timepoint}_label-tumour_mask.nii.gz")
#: Folder of the DICOM subject's MGE series per session.
DICOM_FOLDER = "sourcedata/dicom/sub-{subject}/ses-{timepoint}"

#: Treatment day and time; sessions are dated from it (times in the design).
_TREATMENT = _dt.datetime(2025, 1, 6, 10, 0, 0)
_GZIP_LEVEL = 1
_MGE_SERIES, _T2W_SERIES = 3, 2


@dataclass(frozen=True, eq=False)
class DemoStudy:
    """What :func:`write_demo_study` wrote.

    Attributes
    ----------
    spec_path : Path
        The study spec (``study.yaml``).
    truth_path : Path
        The truth table (``truth.csv``).
    study : SyntheticStudy
        The simulated study (images and truth in memory).
    dicom_subject : str or None
        The subject whose MGE series are DICOM folders.
    """

    spec_path: Path
    truth_path: Path
    study: SyntheticStudy
    dicom_subject: str | None = None


# --------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------

def _nifti_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_sform(affine, code=1)
    img.header.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = b"oncomri synthetic study"
    return gzip.compress(img.to_bytes(), compresslevel=_GZIP_LEVEL, mtime=0)


def _write_bytes(path: Path, payload: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path


def _write_json(path: Path, content: dict) -> Path:
    return _write_bytes(path, (json.dumps(content, indent=2) + "\n").encode("utf-8"))


def _format(pattern: str, subject: str, timepoint: str) -> str:
    return pattern.replace("{subject}", subject).replace("{timepoint}", timepoint)


def _mge_sidecar(study: SyntheticStudy, te: float, echo: int) -> dict:
    o = study.options
    return {
        "Modality": "MR", "MagneticFieldStrength": o["magnetic_field_strength_t"],
        "ImagingFrequency": round(42.577478 * o["magnetic_field_strength_t"], 6),
        "Manufacturer": "oncomri (synthetic)", "ManufacturersModelName": "synthetic 7T",
        "SeriesDescription": "MGE_12echo", "ProtocolName": "MGE_12echo",
        "SeriesNumber": _MGE_SERIES, "ScanningSequence": "GR", "SequenceVariant": "SP",
        "MRAcquisitionType": "2D", "SliceThickness": o["fov_mm"][2] / o["shape"][2],
        "RepetitionTime": o["mge_repetition_time_s"], "FlipAngle": o["mge_flip_angle_deg"],
        "EchoTime": float(te), "EchoNumber": int(echo),
    }


def _t2w_sidecar(study: SyntheticStudy) -> dict:
    o = study.options
    return {
        "Modality": "MR", "MagneticFieldStrength": o["magnetic_field_strength_t"],
        "Manufacturer": "oncomri (synthetic)", "ManufacturersModelName": "synthetic 7T",
        "SeriesDescription": "T2w_RARE", "ProtocolName": "T2w_RARE",
        "SeriesNumber": _T2W_SERIES, "ScanningSequence": "SE", "SequenceVariant": "SK",
        "MRAcquisitionType": "2D", "SliceThickness": o["fov_mm"][2] / o["shape"][2],
        "RepetitionTime": o["t2w_repetition_time_s"], "EchoTime": o["t2w_echo_time_s"],
    }


# --------------------------------------------------------------------------
# The spec
# --------------------------------------------------------------------------

def _q(text: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(text)


def _time_text(seconds: float) -> str:
    """``-1 h``, ``24 h``, ``48 h``, ``8 d``: hours below 3 days, days above."""
    units = (("h", 3600.0), ("d", 86400.0)) if abs(seconds) < 3 * 86400 else (
        ("d", 86400.0), ("h", 3600.0))
    for unit, size in units + (("min", 60.0),):
        if seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def _spec_text(study: SyntheticStudy, dicom_subject: str | None) -> str:
    d = study.design
    o = study.options
    te_ms = ", ".join(f"{t * 1e3:g}" for t in o["echo_times_s"])
    lines = [
        "# Study spec of the synthetic NK-cell delivery study written by",
        "# oncomri.study.demo.write_demo_study (seed {}, {} rats); run it with".format(
            o["seed"], o["n_subjects"]),
        "#   oncomri run study.yaml",
        "# and compare the results with truth.csv (the values the images were made from).",
        "# Paths are relative to this file; {subject} and {timepoint} are filled in per session.",
        "oncomri: 1                        # spec format version",
        f"name: {_q(d.name)}",
        "description: >",
        "  Rats with liver tumours in three arms (intra-arterial saline, intravenous",
        "  NK cells, intra-arterial NK cells); NK cells labelled with ferumoxytol-based",
        "  iron nanocomplexes; 7 T MRI at baseline, 24 h, 48 h and 8 days: 12-echo MGE",
        f"  (TE {te_ms} ms) for R2* and T2-weighted images for tumour volume.",
        f"  Simulated by oncomri.sim.study (seed {o['seed']}); the truth is in truth.csv.",
        "output: derivatives               # maps, tables, database and report go here",
        "",
        "arms:",
    ]
    for arm in d.arms:
        lines.append(f"  {arm.name}: {{description: {_q(arm.description)}}}")
    lines += ["", "timepoints:                        # times relative to treatment"]
    for tp in d.timepoints:
        note = "  # before treatment: no label yet" if tp.time_s < 0 else ""
        lines.append(f"  {tp.name}: {{time: {_time_text(tp.time_s)}}}{note}")
    lines += [f"baseline: {d.baseline}", "", "subjects:"]
    for subj in d.subjects:
        if subj.id != dicom_subject:
            lines.append(f"  {subj.id}: {{arm: {subj.arm}}}")
            continue
        lines += [f"  {subj.id}:",
                  f"    arm: {subj.arm}",
                  "    sessions:                      # this rat's MGE series are classic DICOM "
                  "folders"]
        for tp in d.timepoints:
            if (subj.id, tp.name) not in d.sessions:
                continue
            lines += [f"      {tp.name}:",
                      f"        scans: {{megre: {_q(_format(DICOM_FOLDER, subj.id, tp.name))}}}"]
    lines += [
        "",
        "scans:",
        "  megre:                            # 12-echo gradient echo, one NIfTI file per echo",
        f"    path: {_q(MEGRE_PATTERN)}",
        "  t2w:                              # T2-weighted anatomy (2x finer in-plane grid)",
        f"    path: {_q(T2W_PATTERN)}",
        "",
        "rois:",
        "  tumour:                           # drawn on the T2-weighted grid",
        "    on: t2w",
        f"    mask: {_q(MASK_PATTERN)}",
        "",
        "maps:",
        "  r2star:",
        "    model: r2star",
        "    scan: megre",
        "    method: ncexp                   # noise-floor-aware fit (Rician magnitude)",
        "    noise_sigma: auto               # estimated from the air around the body",
        "    min_snr: 3                      # air (first echo below 3 noise sigma) is not fitted",
        "",
        "biomarkers:",
        "  tumour_R2star:   {map: r2star.R2starmap, roi: tumour, statistic: median}   # 1/s",
        "  tumour_T2star:   {map: r2star.T2starmap, roi: tumour, statistic: median}   # s",
        "  tumour_volume:   {roi: tumour, measure: volume}                            # mm^3",
        "  tumour_diameter: {roi: tumour, measure: longest_diameter}                  # mm",
        "",
        "analyses:",
        "  # Does R2* rise 24 h after the labelled cells arrive? (per arm)",
        "  - name: r2star_baseline_to_24h",
        "    type: paired",
        "    biomarker: tumour_R2star",
        "    from: baseline",
        "    to: 24h",
        "    test: t",
        "  # Do the arms differ in tumour growth by day 8?",
        "  - name: volume_change_8d_by_arm",
        "    type: between_arms",
        "    biomarker: tumour_volume",
        "    timepoint: 8d",
        "    change: percent",
        "    test: anova",
        "    correction: tukey",
        "  # Does the 24 h R2* rise (cells delivered) predict the day-8 shrinkage?",
        "  - name: r2star_24h_vs_volume_8d_ia",
        "    type: correlation",
        "    x: {biomarker: tumour_R2star, timepoint: 24h, change: absolute}",
        "    y: {biomarker: tumour_volume, timepoint: 8d, change: percent}",
        "    arms: [ia_nk]",
        "    method: pearson",
        "  # R2* over time by arm: tumour_R2star ~ arm * time + (1 | subject)",
        "  - name: r2star_mixed_model",
        "    type: mixed_model",
        "    biomarker: tumour_R2star",
        "  # Volumetric response per arm",
        "  - name: volumetric_response",
        "    type: response",
        "    criteria: volumetric",
        "    biomarker: tumour_volume",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------

def _pick_dicom_subject(study: SyntheticStudy, dicom_subject) -> str | None:
    if dicom_subject is False or dicom_subject is None:
        return None
    ids = [s.id for s in study.design.subjects]
    if dicom_subject is True:
        treated = [s.id for s in study.design.subjects if s.arm == "ia_nk"]
        return treated[0] if treated else ids[0]
    if str(dicom_subject) not in ids:
        raise ValidationError(
            f"dicom_subject={dicom_subject!r} is not a subject of the study "
            f"({', '.join(ids)}); give one of them, True (the first ia_nk rat) or False")
    return str(dicom_subject)


def write_demo_study(folder, *, n_subjects: int = 20, seed: int = 0, dicom_subject=True,
                     overwrite: bool = False, **sim_options) -> DemoStudy:
    """Simulate the synthetic NK-cell study and write it as a study folder with its spec.

    Parameters
    ----------
    folder : path
        Where to write (created; must be empty unless ``overwrite``).
    n_subjects : int
        Number of rats (>= 6), see :func:`oncomri.sim.study.simulate_study`.
    seed : int
        Seed of the simulation; the same seed and options give identical files.
    dicom_subject : bool or str
        Write this subject's MGE series as classic DICOM folders
        (``sourcedata/dicom/sub-<id>/ses-<tp>/``) referenced by per-session
        ``scans`` overrides in the spec; True (default) picks the first
        ia_nk rat, False writes every MGE as NIfTI.
    overwrite : bool
        Allow a non-empty ``folder``; files of the same names are replaced
        (nothing is deleted).
    **sim_options
        Passed to :func:`oncomri.sim.study.simulate_study` (``shape``,
        ``snr``, ``fov_mm`` ...).

    Returns
    -------
    DemoStudy

    Raises
    ------
    ValidationError
        A non-empty folder without ``overwrite``, an unknown
        ``dicom_subject``, or invalid simulation options.
    """
    from ..io.dicom_write import write_mr_series

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValidationError(f"{folder}: is a file; give a folder for the demo study")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise ValidationError(
            f"{folder}: folder is not empty; choose an empty or new folder "
            "(or pass overwrite=True to replace the demo files in it)")
    study = simulate_study(n_subjects=n_subjects, seed=seed, **sim_options)
    dicom_id = _pick_dicom_subject(study, dicom_subject)
    folder.mkdir(parents=True, exist_ok=True)

    o = study.options
    _write_json(folder / "dataset_description.json", {
        "Name": study.design.name, "BIDSVersion": "1.9.0", "DatasetType": "raw",
        "GeneratedBy": [{"Name": "oncomri.study.demo",
                         "Description": f"synthetic study, seed {o['seed']}"}],
    })
    tsv = ["participant_id\tarm"] + [f"sub-{s.id}\t{s.arm}" for s in study.design.subjects]
    _write_bytes(folder / "participants.tsv", ("\n".join(tsv) + "\n").encode("utf-8"))

    for (subject, timepoint), ses in study.sessions.items():
        anat = folder / f"sub-{subject}" / f"ses-{timepoint}" / "anat"
        stem = f"sub-{subject}_ses-{timepoint}"
        if subject == dicom_id:
            when = _TREATMENT + _dt.timedelta(seconds=study.design.time_of(timepoint))
            write_mr_series(folder / _format(DICOM_FOLDER, subject, timepoint), ses.megre,
                            ses.megre_affine, echo_times_s=ses.echo_times_s,
                            series_number=_MGE_SERIES, series_description="MGE_12echo",
                            patient_id=subject, patient_name=f"Synthetic^{subject}",
                            uid_seed=f"oncomri-demo/{o['seed']}/{subject}/{timepoint}",
                            study_description=f"{study.design.name} {timepoint}",
                            acquisition_datetime=when,
                            repetition_time_s=o["mge_repetition_time_s"],
                            flip_angle_deg=o["mge_flip_angle_deg"],
                            magnetic_field_strength_t=o["magnetic_field_strength_t"])
        else:
            for k, te in enumerate(ses.echo_times_s, start=1):
                base = anat / f"{stem}_echo-{k}_MEGRE"
                _write_bytes(base.with_name(base.name + ".nii.gz"),
                             _nifti_bytes(np.ascontiguousarray(ses.megre[..., k - 1]),
                                          ses.megre_affine))
                _write_json(base.with_name(base.name + ".json"), _mge_sidecar(study, te, k))
        _write_bytes(anat / f"{stem}_T2w.nii.gz", _nifti_bytes(ses.t2w, ses.t2w_affine))
        _write_json(anat / f"{stem}_T2w.json", _t2w_sidecar(study))
        _write_bytes(anat / f"{stem}_label-tumour_mask.nii.gz",
                     _nifti_bytes(ses.tumour_mask.astype(np.uint8), ses.t2w_affine))

    truth_path = folder / "truth.csv"
    text = study.truth.to_csv(index=False, float_format="%.10g", lineterminator="\n")
    _write_bytes(truth_path, text.encode("utf-8"))
    spec_path = _write_bytes(folder / "study.yaml", _spec_text(study, dicom_id).encode("utf-8"))
    return DemoStudy(spec_path=spec_path, truth_path=truth_path, study=study,
                     dicom_subject=dicom_id)
