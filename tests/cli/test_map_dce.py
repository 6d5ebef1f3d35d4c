"""``oncomri map dce`` (src/oncomri/cli/map_dce.py), called through its own parser."""

from __future__ import annotations

import argparse
import json

import nibabel as nib
import numpy as np
import pytest

from oncomri.cli import map_dce
from oncomri.core import OncomriError
from oncomri.models.aif import population_aif
from oncomri.models.dce import extended_tofts, spgr_signal

T = np.arange(40) * 5.0
NB = 6
KTRANS = np.array([[0.001, 0.002], [0.003, 0.004]])  # 1/s on a 2 x 2 x 1 grid


def _parser():
    p = argparse.ArgumentParser()
    map_dce.add_arguments(p)
    return p


def _write_series(tmp_path, *, frame_times=True, flip=15.0):
    aif = population_aif("parker", T, onset=T[NB], hematocrit=0.42, oversample=4)
    conc = extended_tofts(T, aif, KTRANS[..., None], 0.3, 0.05)  # (2, 2, 1, 40)
    sig = spgr_signal(1 / 1.4 + 4.97 * conc, flip_angle=np.deg2rad(15.0), repetition_time=0.005,
                      m0=2000.0).astype(np.float32)
    path = tmp_path / "sub-01_ses-1_dce.nii.gz"
    nib.save(nib.Nifti1Image(sig, np.diag([2.0, 2.0, 3.0, 1.0])), path)
    side = {"FlipAngle": flip, "RepetitionTime": 0.005, "MagneticFieldStrength": 3.0}
    if frame_times:
        side["FrameTimesStart"] = T.tolist()
    path.with_name("sub-01_ses-1_dce.json").write_text(json.dumps(side))
    return path


def test_map_dce_from_nifti_writes_bids_maps(tmp_path, capsys):
    path = _write_series(tmp_path)
    out = tmp_path / "out"
    args = _parser().parse_args([str(path), "--out", str(out), "--t1", "1.4s", "--agent",
                                 "gadobutrol", "--baseline-frames", str(NB), "--iauc", "60,90"])
    assert map_dce.run(args) == 0
    img = nib.load(out / "sub-01_ses-1_Ktransmap.nii.gz")
    np.testing.assert_allclose(np.asarray(img.dataobj), KTRANS[..., None], rtol=1e-4)
    np.testing.assert_allclose(img.affine, np.diag([2.0, 2.0, 3.0, 1.0]))
    side = json.loads((out / "sub-01_ses-1_Ktransmap.json").read_text())
    assert side["Units"] == "1/s" and side["Relaxivity_per_mM_s"] == pytest.approx(4.97)
    for name in ("vemap", "vpmap", "IAUC60map", "IAUC90map", "peakmap", "TTPmap", "washinmap"):
        assert (out / f"sub-01_ses-1_{name}.nii.gz").is_file(), name
    assert json.loads((out / "sub-01_ses-1_IAUC60map.json").read_text())["Units"] == "mM*s"
    assert "extended_tofts" in capsys.readouterr().out


def test_map_dce_tofts_concentration_domain_with_delay(tmp_path):
    path = _write_series(tmp_path)
    out = tmp_path / "o2"
    args = _parser().parse_args([str(path), "--out", str(out), "--t1", "1400ms", "--relaxivity",
                                 "4.97", "--baseline-frames", str(NB), "--model", "tofts",
                                 "--fit-delay", "--fit-domain", "concentration", "--quiet"])
    assert map_dce.run(args) == 0
    assert (out / "sub-01_ses-1_delaymap.nii.gz").is_file()
    delay = np.asarray(nib.load(out / "sub-01_ses-1_delaymap.nii.gz").dataobj)
    assert np.all(np.abs(delay) < 10)


@pytest.mark.parametrize("extra, frame_times, flip, message", [
    ([], False, 15.0, "frame times"),
    ([], True, 0.26, "radians"),
    (["--times", "0,10,5s"], True, 15.0, "frame times"),
    (["--agent", "unobtainium"], True, 15.0, "relaxivity"),
])
def test_map_dce_bad_input_one_clear_error(tmp_path, extra, frame_times, flip, message):
    path = _write_series(tmp_path, frame_times=frame_times, flip=flip)
    argv = [str(path), "--out", str(tmp_path / "x"), "--t1", "1.4s", "--baseline-frames", str(NB)]
    if "--agent" not in extra:
        argv += ["--agent", "gadobutrol"]
    args = _parser().parse_args(argv + extra)
    with pytest.raises(OncomriError, match=message) as info:
        map_dce.run(args)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "x").exists()


def test_map_dce_non_increasing_times(tmp_path):
    path = _write_series(tmp_path)
    times = ",".join(f"{v:g}" for v in np.r_[T[:10], T[9], T[11:]]) + "s"
    args = _parser().parse_args([str(path), "--out", str(tmp_path / "y"), "--t1", "1.4s",
                                 "--agent", "gadobutrol", "--times", times])
    with pytest.raises(OncomriError, match="increase"):
        map_dce.run(args)
