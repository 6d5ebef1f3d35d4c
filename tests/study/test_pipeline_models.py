"""The study pipeline with the non-relaxometry models: T1 (VFA), DCE, ADC and IVIM.

Also a DCE map with a measured AIF taken from an ROI of the spec (``aif_roi``),
and a misspelled option key, which fails the sessions with a recorded reason.

A small study is written to ``tmp_path`` (2 subjects x 2 timepoints, 6 x 6 x 2
voxels): 4D NIfTI files with BIDS sidecars (and a ``.bval`` beside the DWI),
noiseless signals made from closed forms with known parameters in a tumour
ROI (and other values around it), and a spec whose ``maps`` use ``options``.
The biomarkers the pipeline stores are checked against those parameters.

Closed forms (written here, independently of :mod:`oncomri.models`):

- spoiled gradient echo ``S = S0 sin(a) (1 - E) / (1 - cos(a) E)``, ``E = exp(-TR R1)``;
- IVIM ``S = S0 [f exp(-b D*) + (1 - f) exp(-b D)]`` (the ADC map fits b >= 200
  s/mm² only, where the D* term is below exp(-16) and the decay is exp(-b D));
- DCE: Parker population AIF (Parker et al., MRM 2006;56:993, eq. 1 and Table 1),
  plasma = blood / (1 - 0.42), extended Tofts ``C = vp Cp + Ktrans int Cp(u)
  exp(-kep (t - u)) du`` integrated with scipy's ``quad`` on the continuous AIF,
  ``R1 = 1/T10 + r1 C``.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.integrate import quad, trapezoid

from oncomri.study.db import StudyDatabase
from oncomri.study.pipeline import run_study

SHAPE = (6, 6, 2)
AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])
TUMOUR = np.zeros(SHAPE, bool)
TUMOUR[1:4, 2:5, :] = True
ARTERY = np.zeros(SHAPE, bool)
ARTERY[5, 0:2, :] = True
SUBJECTS = ("r1", "r2")
TIMEPOINTS = ("baseline", "d7")

# acquisition
FA_VFA, TR_VFA = np.array([2.0, 5.0, 10.0, 15.0, 20.0]), 0.005
B = np.array([0.0, 10, 20, 50, 100, 200, 400, 600, 800, 1000])
DSTAR = 0.08  # mm²/s
T_DCE = np.arange(36) * 4.0  # s
NB, FA_DCE, TR_DCE, T10, R1_AGENT, HCT = 5, 15.0, 0.005, 1.4, 4.5, 0.42
T1_BLOOD = 1.6

#: Tolerances (relative) on the biomarkers: noiseless data, so only the fits'
#: convergence (T1, ADC, IVIM: measured <= 3e-7) and, for DCE, the piecewise-linear
#: AIF of the fit (16 knots per frame) against the continuous Parker curve of the
#: simulation (measured 1.3e-4 for Ktrans, 2.4e-4 for ve).
TOL = {"tumour_T1": 1e-4, "tumour_ADC": 1e-4, "tumour_f": 1e-4, "tumour_D": 1e-4,
       "tumour_Ktrans": 3e-3, "tumour_ve": 3e-3}


def truth(subject: str, timepoint: str) -> dict:
    """Tumour parameters of a session (SI; D in mm²/s, Ktrans in 1/s)."""
    i, k = SUBJECTS.index(subject), TIMEPOINTS.index(timepoint)
    return {"tumour_T1": 1.1 + 0.2 * i + 0.3 * k,
            "tumour_ADC": (0.9 + 0.2 * i + 0.4 * k) * 1e-3,
            "tumour_D": (0.9 + 0.2 * i + 0.4 * k) * 1e-3,
            "tumour_f": 0.12 + 0.03 * i - 0.05 * k,
            "tumour_Ktrans": (0.20 + 0.05 * i) / 60.0 * (0.5 if k else 1.0),
            "tumour_ve": 0.30 + 0.05 * i,
            "vp": 0.04}


BACKGROUND = {"tumour_T1": 0.8, "tumour_ADC": 2.0e-3, "tumour_D": 2.0e-3, "tumour_f": 0.05,
              "tumour_Ktrans": 0.05 / 60.0, "tumour_ve": 0.15, "vp": 0.02}


def _map(values: dict, key: str) -> np.ndarray:
    out = np.full(SHAPE, BACKGROUND[key])
    out[TUMOUR] = values[key]
    return out


def _spgr(r1, fa_deg, tr, s0=3000.0):
    a = np.deg2rad(fa_deg)
    e = np.exp(-tr * np.asarray(r1)[..., None])
    return s0 * np.sin(a) * (1 - e) / (1 - np.cos(a) * e)


def _parker_plasma(t_s: float) -> float:
    """Parker blood AIF (t in s after the bolus onset) over (1 - Hct)."""
    if t_s < 0:
        return 0.0
    t = t_s / 60.0
    g = (0.809 / (0.0563 * np.sqrt(2 * np.pi)) * np.exp(-(t - 0.17046) ** 2 / (2 * 0.0563 ** 2))
         + 0.330 / (0.132 * np.sqrt(2 * np.pi)) * np.exp(-(t - 0.365) ** 2 / (2 * 0.132 ** 2)))
    return (g + 1.050 * np.exp(-0.1685 * t) / (1 + np.exp(-38.078 * (t - 0.483)))) / (1 - HCT)


def _tofts_curve(ktrans: float, ve: float, vp: float) -> np.ndarray:
    onset = T_DCE[NB]
    kep = ktrans / ve
    out = []
    for t in T_DCE:
        if t <= onset:
            out.append(0.0)
            continue
        conv, _ = quad(lambda u: _parker_plasma(u - onset) * np.exp(-kep * (t - u)), onset, t,
                       points=[onset + 10.2, onset + 21.9, onset + 29.0], limit=200,
                       epsabs=1e-10)
        out.append(vp * _parker_plasma(t - onset) + ktrans * conv)
    return np.array(out)


def _nifti(path: Path, data, sidecar=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), AFFINE), path)
    if sidecar is not None:
        path.with_name(path.name.replace(".nii.gz", ".json")).write_text(json.dumps(sidecar))


def _write_session(root: Path, subject: str, timepoint: str) -> None:
    v = truth(subject, timepoint)
    folder = root / f"sub-{subject}" / f"ses-{timepoint}"
    stem = f"sub-{subject}_ses-{timepoint}"
    # VFA: flip angles in the sidecar, TR given as an option of the map
    _nifti(folder / "anat" / f"{stem}_VFA.nii.gz",
           _spgr(1.0 / _map(v, "tumour_T1"), FA_VFA, TR_VFA), {"FlipAngle": FA_VFA.tolist()})
    # DWI + .bval
    f, d = _map(v, "tumour_f")[..., None], _map(v, "tumour_D")[..., None]
    _nifti(folder / "dwi" / f"{stem}_dwi.nii.gz",
           1000.0 * (f * np.exp(-DSTAR * B) + (1 - f) * np.exp(-d * B)))
    (folder / "dwi" / f"{stem}_dwi.bval").write_text(" ".join(f"{b:g}" for b in B) + "\n")
    # DCE: one curve for the tumour, one for the rest
    conc = np.empty(SHAPE + (T_DCE.size,))
    conc[TUMOUR] = _tofts_curve(v["tumour_Ktrans"], v["tumour_ve"], v["vp"])
    conc[~TUMOUR] = _tofts_curve(BACKGROUND["tumour_Ktrans"], BACKGROUND["tumour_ve"],
                                 BACKGROUND["vp"])
    signal = _dce_signal(conc)
    # arterial voxels: blood concentration Cp (1 - Hct), blood T1
    blood = np.array([_parker_plasma(t - T_DCE[NB]) for t in T_DCE]) * (1 - HCT)
    signal[ARTERY] = _dce_signal(blood, t10=T1_BLOOD)
    _nifti(folder / "perf" / f"{stem}_dce.nii.gz", signal,
           {"FrameTimesStart": T_DCE.tolist(), "FlipAngle": FA_DCE, "RepetitionTime": TR_DCE,
            "MagneticFieldStrength": 3.0})
    _nifti(folder / "anat" / f"{stem}_label-tumour_mask.nii.gz", TUMOUR.astype(np.uint8))
    _nifti(folder / "anat" / f"{stem}_label-artery_mask.nii.gz", ARTERY.astype(np.uint8))


def _dce_signal(conc, t10=T10):
    a = np.deg2rad(FA_DCE)
    e = np.exp(-TR_DCE * (1.0 / t10 + R1_AGENT * conc))
    return 3000.0 * np.sin(a) * (1 - e) / (1 - np.cos(a) * e)


SPEC = """\
oncomri: 1
name: "models in a study (synthetic)"
output: derivatives
arms:
  a: {}
timepoints:
  baseline: {time: 0 d}
  d7: {time: 7 d}
baseline: baseline
subjects:
  r1: {arm: a}
  r2: {arm: a}
scans:
  vfa: {path: "sub-{subject}/ses-{timepoint}/anat/sub-{subject}_ses-{timepoint}_VFA.nii.gz"}
  dwi: {path: "sub-{subject}/ses-{timepoint}/dwi/sub-{subject}_ses-{timepoint}_dwi.nii.gz"}
  dce: {path: "sub-{subject}/ses-{timepoint}/perf/sub-{subject}_ses-{timepoint}_dce.nii.gz"}
rois:
  tumour:
    on: vfa
    mask: "sub-{subject}/ses-{timepoint}/anat/sub-{subject}_ses-{timepoint}_label-tumour_mask.nii.gz"
  artery:
    on: dce
    mask: "sub-{subject}/ses-{timepoint}/anat/sub-{subject}_ses-{timepoint}_label-artery_mask.nii.gz"
maps:
  t1:
    model: t1
    scan: vfa
    options: {tr: 5ms}
  adc:
    model: adc
    scan: dwi
    options: {b_range: "200,"}
  ivim:
    model: ivim
    scan: dwi
    method: segmented
    options: {b_threshold: 200}
  dce:
    model: dce
    scan: dce
    method: extended_tofts
    options:
      aif: parker
      aif_oversample: 16
      t1: 1.4s
      relaxivity: 4.5
      baseline_frames: 5
      iauc: [60]
  dce_measured:
    model: dce
    scan: dce
    method: extended_tofts
    options: {aif: measured, aif_roi: artery, t1_blood: 1.6s, t1: 1.4s, relaxivity: 4.5}
biomarkers:
  tumour_T1: {map: t1.T1map, roi: tumour, statistic: median}
  tumour_ADC: {map: adc.ADCmap, roi: tumour, statistic: mean}
  tumour_D: {map: ivim.Dmap, roi: tumour, statistic: mean}
  tumour_f: {map: ivim.fmap, roi: tumour, statistic: mean}
  tumour_Ktrans: {map: dce.Ktransmap, roi: tumour, statistic: mean}
  tumour_ve: {map: dce.vemap, roi: tumour, statistic: median}
  tumour_IAUC60: {map: dce.IAUC60map, roi: tumour, statistic: mean}
  tumour_Ktrans_measured_aif: {map: dce_measured.Ktransmap, roi: tumour, statistic: mean}
"""


@pytest.fixture(scope="module")
def study_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("models-study")
    for subject in SUBJECTS:
        for timepoint in TIMEPOINTS:
            _write_session(root, subject, timepoint)
    return root


def _spec(study_files: Path, folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for child in study_files.iterdir():
        (folder / child.name).symlink_to(child, target_is_directory=True)
    path = folder / "study.yaml"
    path.write_text(text)
    return path


def test_study_maps_every_model_family(study_files, tmp_path):
    spec = _spec(study_files, tmp_path / "study", SPEC)
    url = str(tmp_path / "study.sqlite")
    summary = run_study(spec, database=url, scheduler="synchronous", progress=False, report=False)
    assert summary.failures == [] and summary.n_done == 4, summary.failures

    with StudyDatabase.open(url, create=False) as db:
        measured = db.measurements()
        maps = db.maps()
    assert len(measured) == 4 * 8
    units = dict(zip(measured.biomarker, measured.unit))
    assert units == {"tumour_T1": "s", "tumour_ADC": "mm^2/s", "tumour_D": "mm^2/s",
                     "tumour_f": "1", "tumour_Ktrans": "1/s", "tumour_ve": "1",
                     "tumour_IAUC60": "mM*s", "tumour_Ktrans_measured_aif": "1/s"}
    for row in measured.itertuples():
        if row.biomarker not in TOL:
            continue
        expected = truth(row.subject, row.timepoint)[row.biomarker]
        assert abs(row.value / expected - 1) < TOL[row.biomarker], (
            row.subject, row.timepoint, row.biomarker, row.value, expected)
    # the tumour's IAUC60 from the simulated concentration (trapezoid on the frames,
    # from the last baseline frame; the first 60 s hold exact frames)
    for (subject, timepoint), rows in measured.groupby(["subject", "timepoint"]):
        v = truth(subject, timepoint)
        c = _tofts_curve(v["tumour_Ktrans"], v["tumour_ve"], v["vp"])
        t0 = T_DCE[NB - 1]
        keep = (T_DCE >= t0) & (T_DCE <= t0 + 60)
        iauc = trapezoid(c[keep], T_DCE[keep])
        value = rows.set_index("biomarker").loc["tumour_IAUC60", "value"]
        assert abs(value / iauc - 1) < 1e-3, (subject, timepoint, value, iauc)

    # the measured AIF (options.aif_roi: the artery ROI's mask on the DCE grid): the
    # artery's signal at the frames (4 s), so the fit sees a piecewise-linear AIF
    # through the frame values of the Parker curve; Ktrans within 2 % (measured <= 0.6 %)
    got = measured[measured.biomarker == "tumour_Ktrans_measured_aif"]
    assert len(got) == 4
    for row in got.itertuples():
        expected = truth(row.subject, row.timepoint)["tumour_Ktrans"]
        assert abs(row.value / expected - 1) < 0.02, (row.subject, row.timepoint, row.value)

    # provenance: the options reached the sidecars of the maps
    dce_rows = maps[(maps.name == "dce") & (maps.parameter == "Ktransmap")]
    assert len(dce_rows) == 4
    sidecar = json.loads(Path(dce_rows.path.iloc[0].replace(".nii.gz", ".json")).read_text())
    assert sidecar["MapName"] == "dce" and sidecar["Method"] == "extended_tofts"
    assert sidecar["Options"]["aif"] == "parker" and sidecar["Relaxivity_per_mM_s"] == 4.5
    assert sidecar["Units"] == "1/s" and "Parker" in sidecar["AIF"]
    adc_side = json.loads(Path(maps[maps.parameter == "ADCmap"].path.iloc[0]
                               .replace(".nii.gz", ".json")).read_text())
    assert adc_side["ShellBValuesFitted"] == [200.0, 400.0, 600.0, 800.0, 1000.0]
    assert adc_side["BValues"] == B.tolist()
    measured_rows = maps[(maps.name == "dce_measured") & (maps.parameter == "Ktransmap")]
    side = json.loads(Path(measured_rows.path.iloc[0].replace(".nii.gz", ".json")).read_text())
    assert side["Options"]["aif_roi"] == "artery"
    assert side["Options"]["aif_mask"] == f"mask of {ARTERY.sum()} voxels"


def test_a_bad_option_key_is_a_recorded_failure(study_files, tmp_path):
    text = SPEC.replace("      aif: parker\n", "      aif: parker\n      aif_kind: parker\n")
    spec = _spec(study_files, tmp_path / "study", text)
    url = str(tmp_path / "study.sqlite")
    summary = run_study(spec, database=url, scheduler="synchronous", progress=False, report=False)
    assert summary.n_failed == 4 and summary.n_done == 0
    with StudyDatabase.open(url, create=False) as db:
        failures = db.failures()
    assert len(failures) == 4 and set(failures.stage) == {"map"}
    for reason in failures.reason:
        assert "maps.dce.options.aif_kind" in reason and "unknown option" in reason, reason
        assert "\n" not in reason


@pytest.mark.parametrize("old, new, field, words", [
    ("aif_roi: artery,", "aif_roi: arteryy,", "maps.dce_measured.options.aif_roi",
     ("'arteryy' is not an ROI", "did you mean 'artery'?")),
    ("    method: segmented\n", "    method: segmented\n    min_snr: 3\n", None, ()),
    ("    method: extended_tofts\n    options:\n",
     "    method: extended_tofts\n    min_snr: 3\n    options:\n", "maps.dce.min_snr",
     ("applies to relaxometry and diffusion models",)),
    ("model: dce\n    scan: dce\n    method: extended_tofts",
     "model: dcee\n    scan: dce\n    method: extended_tofts", "maps.dce.model",
     ("'dcee' is not a model", "did you mean 'dce'?")),
])
def test_spec_checks_of_model_maps(tmp_path, old, new, field, words):
    """The spec knows every model, the ROIs options name, and where noise options apply."""
    from oncomri.study.spec import SpecError, load_spec

    assert old in SPEC
    path = tmp_path / "study.yaml"
    path.write_text(SPEC.replace(old, new, 1))
    if field is None:  # min_snr on a diffusion map is fine
        assert load_spec(path).maps["ivim"].min_snr == 3
        return
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.field == field, str(info.value)
    for word in words:
        assert word in str(info.value), str(info.value)
