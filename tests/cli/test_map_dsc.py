"""``oncomri map dsc`` (oncomri.cli.map_dsc) on small NIfTI files and a DICOM folder.

Series model (as in tests/models/test_dsc.py): gamma-variate AIF (A = 88 s⁻¹,
t0 = 15 s, α = 3, β = 1.5 s), tissue ΔR2* = CBF (AIF ⊗ exp(-t/MTT)) in closed
form, T1-dominant leakage -λ ∫AIF (λ = 5e-4 s⁻¹), S = 1000 exp(-TE ΔR2*),
TE = 30 ms, 1 s frames.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.special import gamma, gammainc

from oncomri.cli.map_dsc import add_arguments, run
from oncomri.core.errors import OncomriError, ProtocolError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
from dicom_factory import write_classic_series  # noqa: E402

N = 60
T = np.arange(N, dtype=float)
TE = 0.03
AIF_P = (88.0, 15.0, 3.0, 1.5)


def _conv(rate):
    A, t0, a, b = AIF_P
    tau = np.clip(T - t0, 0, None)
    k = 1.0 / b - rate
    return A * np.exp(-rate * tau) * gamma(a + 1) * gammainc(a + 1, k * tau) / k ** (a + 1)


def _aif():
    A, t0, a, b = AIF_P
    tau = np.clip(T - t0, 0, None)
    return A * tau ** a * np.exp(-tau / b)


def _series():
    """(10, 10, 1, N): normal CBV 0.04/MTT 4 s, leaky tumour CBV 0.08/MTT 3 s, artery."""
    normal = 0.01 * _conv(1 / 4.0)
    tumour = (0.08 / 3.0) * _conv(1 / 3.0) - 5e-4 * _conv(0.0)
    dr = np.tile(normal, (10, 10, 1, 1))
    tum = np.zeros((10, 10, 1), bool)
    tum[1:4, 1:4] = True
    ref = np.zeros_like(tum)
    ref[5:9, 5:9] = True
    art = np.zeros_like(tum)
    art[0, 7:10] = True
    dr[tum] = tumour
    dr[art] = _aif() * 0.02  # arterial voxels with a partial-volume scaled AIF
    return 1000.0 * np.exp(-TE * dr), tum, ref, art


def _parser():
    p = argparse.ArgumentParser(prog="oncomri map dsc")
    add_arguments(p)
    return p


def _nifti(path, arr, sidecar=None):
    nib.save(nib.Nifti1Image(np.asarray(arr, np.float32), np.diag([2.0, 2.0, 4.0, 1.0])), path)
    if sidecar is not None:
        Path(str(path).replace(".nii.gz", ".json")).write_text(json.dumps(sidecar))
    return path


@pytest.fixture()
def files(tmp_path):
    data, tum, ref, art = _series()
    return {
        "dsc": _nifti(tmp_path / "sub-01_ses-1_dsc.nii.gz", data,
                      {"EchoTime": TE, "RepetitionTime": 1.0}),
        "tumour": _nifti(tmp_path / "tumour.nii.gz", tum.astype(np.uint8)),
        "reference": _nifti(tmp_path / "nawm.nii.gz", ref.astype(np.uint8)),
        "aif": _nifti(tmp_path / "aif.nii.gz", art.astype(np.uint8)),
        "brain": _nifti(tmp_path / "brain.nii.gz", (~art).astype(np.uint8)),
        "masks": (tum, ref, art),
    }


def test_map_dsc_from_nifti_writes_maps_with_units(files, tmp_path, capsys):
    out = tmp_path / "out"
    args = _parser().parse_args([
        str(files["dsc"]), "--out", str(out), "--baseline-frames", "10",
        "--mask", str(files["brain"]), "--aif-mask", str(files["aif"]),
        "--reference-mask", str(files["reference"]), "--lesion-mask", str(files["tumour"])])
    assert run(args) == 0
    for suffix, unit in (("rCBVmap", "1"), ("CBVmap", "mL/mL"), ("CBFmap", "1/s"),
                         ("MTTmap", "s"), ("K2map", "1/s")):
        assert (out / f"sub-01_ses-1_{suffix}.nii.gz").is_file(), suffix
        side = json.loads((out / f"sub-01_ses-1_{suffix}.json").read_text())
        assert side["Units"] == unit
        assert side["FrameTimes"][:3] == [0.0, 1.0, 2.0]
    tum = files["masks"][0]
    rcbv = np.asarray(nib.load(out / "sub-01_ses-1_rCBVmap.nii.gz").dataobj)
    assert abs(rcbv[tum].mean() / 2.0 - 1) < 0.10  # true rCBV 0.08 / 0.04
    text = capsys.readouterr().out
    assert "lesion mean rCBV" in text and "progression" in text


def test_map_dsc_leakage_correction_off_is_biased(files, tmp_path):
    out = tmp_path / "off"
    args = _parser().parse_args([
        str(files["dsc"]), "--out", str(out), "--te", "30ms", "--baseline-frames", "0-9",
        "--mask", str(files["brain"]), "--reference-mask", str(files["reference"]),
        "--leakage-correction", "off", "--quiet"])
    assert run(args) == 0
    rcbv = np.asarray(nib.load(out / "sub-01_ses-1_rCBVmap.nii.gz").dataobj)
    assert rcbv[files["masks"][0]].mean() / 2.0 - 1 < -0.20  # measured -24 % (60 frames)
    assert not (out / "sub-01_ses-1_CBFmap.nii.gz").exists()  # no AIF: no CBF


def test_map_dsc_non_increasing_times_one_clear_line(files, tmp_path):
    data, *_ = _series()
    times = T.tolist()
    times[20] = times[19]
    bad = _nifti(tmp_path / "bad_dsc.nii.gz", data, {"EchoTime": TE, "FrameTimesStart": times})
    out = tmp_path / "bad"
    args = _parser().parse_args([str(bad), "--out", str(out)])
    with pytest.raises(ProtocolError) as err:
        run(args)
    msg = str(err.value)
    assert "\n" not in msg and "FrameTimesStart" in msg and "frame 20" in msg
    assert not out.exists()


def test_map_dsc_missing_echo_time(files, tmp_path):
    data, *_ = _series()
    bare = _nifti(tmp_path / "bare.nii.gz", data, {"RepetitionTime": 1.0})
    with pytest.raises(OncomriError, match="--te"):
        run(_parser().parse_args([str(bare), "--out", str(tmp_path / "o")]))


def test_map_dsc_from_dicom_folder(tmp_path):
    data, tum, ref, _ = _series()
    folder = tmp_path / "dicom"
    write_classic_series(folder, data, np.diag([2.0, 2.0, 4.0, 1.0]), frame_times=T,
                         echo_time=TE, repetition_time=1.0, series_description="dsc_perf",
                         series_number=7, dtype="uint16")
    _nifti(tmp_path / "ref.nii.gz", ref.astype(np.uint8))
    out = tmp_path / "out"
    # the mask must lie on the DICOM grid: write it with the series' own affine
    from oncomri.io import load

    vol = load(folder)
    nib.save(nib.Nifti1Image(ref.astype(np.uint8), vol.affine), tmp_path / "ref.nii.gz")
    args = _parser().parse_args([str(folder), "--out", str(out), "--baseline-frames", "10",
                                 "--reference-mask", str(tmp_path / "ref.nii.gz"), "--quiet"])
    assert run(args) == 0
    written = sorted(p.name for p in out.glob("*.nii.gz"))
    assert "acq-dscPerf_run-7_rCBVmap.nii.gz" in written, written
    rcbv = np.asarray(nib.load(out / "acq-dscPerf_run-7_rCBVmap.nii.gz").dataobj)
    assert abs(rcbv[tum].mean() / 2.0 - 1) < 0.10
