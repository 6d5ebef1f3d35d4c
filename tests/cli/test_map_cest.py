"""``oncomri map cest`` through its CLI module (``add_arguments`` + ``run``) on small NIfTI files.

The series is a water + amide sum of Lorentzians (closed form in the test),
shifted per voxel by a known B0; the expected MTRasym is the closed form of
the unshifted spectrum.
"""

import argparse
import json

import nibabel as nib
import numpy as np
import pytest

from oncomri.cli.map_cest import add_arguments, run
from oncomri.core import OncomriError, ProtocolError

OFFSETS = np.concatenate([[-300.0], np.arange(-6, 6.0001, 0.1)])
POOLS = [(0.8, 1.5, 0.0), (0.05, 0.8, 3.5)]
SHIFTS = np.array([[0.0, 0.2], [-0.3, 0.45]])  # ppm
HZ_PER_PPM_3T = 42.577478518 * 3.0


def _z(x, shift):
    x = np.asarray(x, float)
    z = 1.0 + 0.0 * x + 0.0 * np.asarray(shift)[..., None]
    for a, w, pos in POOLS:
        g = (w / 2) ** 2
        d = x - (pos + np.asarray(shift, float)[..., None])
        z = z - a * g / (g + d * d)
    return z


def _truth(dw):
    zz = _z([-dw, dw], 0.0)
    return zz[0] - zz[1]


def _write(path, data, sidecar=None):
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.diag([0.5, 0.5, 2.0, 1.0])), path)
    if sidecar is not None:
        path.with_name(path.name.replace(".nii.gz", ".json")).write_text(json.dumps(sidecar))


def _cest_file(tmp_path, sidecar=True):
    sig = np.concatenate([np.full((2, 2, 1), 1000.0), 1000.0 * _z(OFFSETS[1:], SHIFTS)], axis=-1)
    path = tmp_path / "sub-01_ses-1_cest.nii.gz"
    meta = {"SaturationOffsets": OFFSETS.tolist(), "MagneticFieldStrength": 3.0,
            "SaturationB1": 1.0, "SaturationDuration": 2.0} if sidecar else None
    _write(path, sig[:, :, None, :], meta)
    return path


def _run(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return run(parser.parse_args(argv))


def _load(out, name):
    img = nib.load(out / f"sub-01_ses-1_{name}.nii.gz")
    side = json.loads((out / f"sub-01_ses-1_{name}.json").read_text())
    return np.asarray(img.dataobj)[:, :, 0], side


def test_map_cest_from_sidecar_offsets(tmp_path):
    path = _cest_file(tmp_path)
    out = tmp_path / "out"
    assert _run([str(path), "--out", str(out), "--quiet"]) == 0
    mtr, side = _load(out, "desc-MTRasym3p5ppm_CESTmap")
    np.testing.assert_allclose(mtr, _truth(3.5), rtol=5e-3)
    assert side["Units"] == "1" and side["SaturationOffset"] == 3.5
    assert side["MagneticFieldStrength"] == 3.0 and side["M0Index"] == [0]
    b0, side = _load(out, "desc-Hz_B0map")
    np.testing.assert_allclose(b0, SHIFTS * HZ_PER_PPM_3T, atol=0.3)
    assert side["Units"] == "Hz"
    assert _load(out, "desc-ppm_B0map")[1]["Units"] == "ppm"
    for name in ("M0map", "desc-MTRasym0p4ppm_CESTmap", "desc-MTRasym2ppm_CESTmap",
                 "desc-cestfit_status"):
        assert (out / f"sub-01_ses-1_{name}.nii.gz").is_file()
    z = nib.load(out / "sub-01_ses-1_desc-Zspectrum_CESTmap.nii.gz")
    assert z.shape == (2, 2, 1, OFFSETS.size - 1)


def test_map_cest_with_b0_map_and_offsets_option(tmp_path):
    path = _cest_file(tmp_path, sidecar=False)
    b0 = tmp_path / "b0.nii.gz"
    _write(b0, (SHIFTS * HZ_PER_PPM_3T)[:, :, None], {"Units": "Hz"})
    out = tmp_path / "out"
    offsets = ",".join(f"{v:g}" for v in OFFSETS) + "ppm"
    assert _run([str(path), "--out", str(out), f"--offsets={offsets}", "--field", "3T",
                 "--b0-map", str(b0), "--offsets-of-interest", "3.5ppm", "--quiet"]) == 0
    mtr, side = _load(out, "desc-MTRasym3p5ppm_CESTmap")
    np.testing.assert_allclose(mtr, _truth(3.5), rtol=5e-3)
    assert side["B0Correction"] == "given B0 map"


def test_map_cest_with_wassr(tmp_path):
    path = _cest_file(tmp_path)
    woff = np.arange(-1.5, 1.5001, 0.1)
    g = 0.2 ** 2
    wassr = 800.0 * (1 - 0.7 * g / (g + (woff - SHIFTS[..., None]) ** 2))
    wpath = tmp_path / "wassr.nii.gz"
    _write(wpath, wassr[:, :, None, :], {"SaturationOffsets": woff.tolist()})
    out = tmp_path / "out"
    assert _run([str(path), "--out", str(out), "--wassr", str(wpath), "--quiet"]) == 0
    b0, _ = _load(out, "desc-ppm_B0map")
    np.testing.assert_allclose(b0, SHIFTS, atol=1e-3)


def test_map_cest_lorentzian_writes_pool_maps(tmp_path):
    path = _cest_file(tmp_path)
    out = tmp_path / "out"
    assert _run([str(path), "--out", str(out), "--method", "lorentzian", "--pools", "water,amide",
                 "--quiet"]) == 0
    amp, side = _load(out, "desc-amideAmplitude_CESTmap")
    np.testing.assert_allclose(amp, 0.05, rtol=1e-3)
    width, side = _load(out, "desc-amideWidth_CESTmap")
    assert side["Units"] == "ppm"
    np.testing.assert_allclose(width, 0.8, rtol=1e-3)


def test_offsets_without_m0_is_one_clear_line(tmp_path):
    path = _cest_file(tmp_path, sidecar=False)
    saturated_only = ",".join(f"{v:g}" for v in OFFSETS[1:]) + ",5ppm"  # no M0 among them
    with pytest.raises(ProtocolError) as info:
        _run([str(path), "--out", str(tmp_path / "o"), f"--offsets={saturated_only}"])
    assert "M0" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv, match", [
    (["--offsets=-300,0,1,2ppm"], "4 offsets for 122 volumes"),
    (["--offsets=-300,0,1,2"], "unit"),
    ([], None),  # no offsets at all (no sidecar)
    (["--offsets-of-interest", "3.5", "--offsets", "x"], "numbers"),
])
def test_bad_cli_input_raises_oncomri_error(tmp_path, argv, match):
    path = _cest_file(tmp_path, sidecar=False)
    with pytest.raises(OncomriError, match=match or "offsets"):
        _run([str(path), "--out", str(tmp_path / "o")] + argv)
