"""``oncomri map adc|ivim|dki`` through its CLI module (oncomri.cli.map_adc): NIfTI + .bval
and DICOM input, BIDS-named maps with units, and one clear error for bad b-value tables."""

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from oncomri.cli import map_adc
from oncomri.core.errors import OncomriError, ProtocolError, ReadError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
from dicom_factory import write_classic_series  # noqa: E402

AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])


def _args(kind, argv):
    parser = argparse.ArgumentParser(prog=f"oncomri map {kind}")
    map_adc.add_arguments(parser, kind=kind)
    return parser.parse_args([str(a) for a in argv])


def _adc_phantom(b, shape=(6, 5, 2)):
    """S0 = 1000, ADC from 0.5e-3 to 2.5e-3 mm²/s along x (closed form, noiseless)."""
    adc = np.broadcast_to(np.linspace(0.5e-3, 2.5e-3, shape[0])[:, None, None], shape)
    return adc, 1000.0 * np.exp(-adc[..., None] * np.asarray(b, float))


def _write_dwi(folder, data, b, *, name="sub-01_dwi", bvec=True):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.float32), AFFINE), path)
    (folder / f"{name}.bval").write_text(" ".join(f"{v:g}" for v in b) + "\n")
    if bvec:
        g = np.zeros((3, len(b)))
        g[0, np.asarray(b) > 0] = 1.0
        (folder / f"{name}.bvec").write_text("\n".join(" ".join(f"{v:g}" for v in r) for r in g) + "\n")
    return path


def _map(out, suffix, prefix="sub-01"):
    img = nib.load(out / f"{prefix}_{suffix}.nii.gz")
    side = json.loads((out / f"{prefix}_{suffix}.json").read_text())
    return np.asarray(img.dataobj), side, img.affine


def test_adc_from_nifti_and_bval(tmp_path, capsys):
    b = [0, 500, 500, 500, 1000, 1000, 1000]  # three directions per shell
    adc, data = _adc_phantom(b)
    src = _write_dwi(tmp_path / "in", data, b)
    assert map_adc.run(_args("adc", [src, "--out", tmp_path / "out"])) == 0
    values, side, affine = _map(tmp_path / "out", "ADCmap")
    np.testing.assert_allclose(values, adc, rtol=1e-4)
    np.testing.assert_allclose(affine, AFFINE)
    assert side["Units"] == "mm^2/s" and side["Method"] == "loglin"
    assert side["BValueUnits"] == "s/mm^2" and side["ShellBValuesFitted"] == [0, 500, 1000]
    assert side["DirectionAverage"].startswith("geometric")
    s0, s0_side, _ = _map(tmp_path / "out", "S0map")
    np.testing.assert_allclose(s0, 1000.0, rtol=1e-4)
    status, _, _ = _map(tmp_path / "out", "desc-adcfit_status")
    assert np.all(status == 0)
    assert "adc (loglin)" in capsys.readouterr().out


def test_adc_noise_floor_method_with_given_sigma(tmp_path):
    b = [0, 400, 800, 1200]
    adc, data = _adc_phantom(b)
    src = _write_dwi(tmp_path, data, b, bvec=False)
    out = tmp_path / "out"
    map_adc.run(_args("adc", [src, "--out", out, "--method", "ncexp", "--noise-sigma", "0"]))
    values, side, _ = _map(out, "ADCmap")
    np.testing.assert_allclose(values, adc, rtol=1e-4)
    assert side["NoiseSigma"] == 0 and side["NoiseSigmaSource"] == "given"


def test_ivim_and_dki_maps(tmp_path):
    shape = (4, 3, 1)
    b = np.array([0, 10, 20, 50, 100, 200, 400, 600, 800, 1000.0])
    f, d, dstar = 0.2, 1e-3, 0.05
    ivim = 800 * (f * np.exp(-dstar * b) + (1 - f) * np.exp(-d * b)) * np.ones(shape + (1,))
    src = _write_dwi(tmp_path / "ivim", ivim, b)
    out = tmp_path / "out_ivim"
    map_adc.run(_args("ivim", [src, "--out", out, "--method", "full"]))
    for suffix, truth, unit in [("Dmap", d, "mm^2/s"), ("Dstarmap", dstar, "mm^2/s"), ("fmap", f, "1")]:
        values, side, _ = _map(out, suffix)
        np.testing.assert_allclose(values, truth, rtol=1e-4, err_msg=suffix)
        assert side["Units"] == unit
    assert (out / "sub-01_desc-ivim_S0map.nii.gz").is_file()

    bk = np.array([0, 500, 1000, 1500, 2000.0])
    dki = 900 * np.exp(-bk * 1e-3 + bk**2 * 1e-6 * 0.9 / 6) * np.ones(shape + (1,))
    src = _write_dwi(tmp_path / "dki", dki, bk)
    out = tmp_path / "out_dki"
    map_adc.run(_args("dki", [src, "--out", out]))
    k, side, _ = _map(out, "Kmap")
    np.testing.assert_allclose(k, 0.9, rtol=1e-4)
    assert side["Units"] == "1"
    np.testing.assert_allclose(_map(out, "desc-dki_Dmap")[0], 1e-3, rtol=1e-4)


def test_adc_from_dicom_folder(tmp_path):
    b = [0, 500, 1000]
    adc, data = _adc_phantom(b, shape=(8, 6, 3))
    folder = tmp_path / "dicom"
    write_classic_series(folder, data, AFFINE, b_values=b, rescale_slope=0.05,
                         series_description="ep2d_diff", series_number=7)
    out = tmp_path / "out"
    map_adc.run(_args("adc", [folder, "--out", out]))
    files = sorted(out.glob("*_ADCmap.nii.gz"))
    assert len(files) == 1
    values = np.asarray(nib.load(files[0]).dataobj)
    # int16 storage with slope 0.05 quantises the signal by 0.025 (of >= 80): < 1e-3 in ADC
    np.testing.assert_allclose(values, adc, rtol=1e-3)


def test_bval_count_mismatch_is_one_clear_error(tmp_path):
    b = [0, 500, 1000, 1500]
    _, data = _adc_phantom(b)
    src = _write_dwi(tmp_path, data, b, bvec=False)
    (tmp_path / "sub-01_dwi.bval").write_text("0 500 1000\n")
    out = tmp_path / "out"
    with pytest.raises(ProtocolError) as info:
        map_adc.run(_args("adc", [src, "--out", out]))
    message = str(info.value)
    assert "\n" not in message
    assert "3 b-values" in message and "4 volumes" in message and "sub-01_dwi.bval" in message
    assert isinstance(info.value, OncomriError) and not out.exists()


def test_other_bad_tables(tmp_path):
    b = [0, 500, 1000]
    _, data = _adc_phantom(b)
    src = _write_dwi(tmp_path, data, b)
    (tmp_path / "sub-01_dwi.bvec").write_text("1 0\n0 1\n0 0\n")
    with pytest.raises(ProtocolError, match="gradient table"):
        map_adc.run(_args("adc", [src, "--out", tmp_path / "out"]))
    (tmp_path / "sub-01_dwi.bvec").unlink()
    (tmp_path / "sub-01_dwi.bval").unlink()
    with pytest.raises(ReadError, match="--bval"):
        map_adc.run(_args("adc", [src, "--out", tmp_path / "out"]))
    bad = tmp_path / "bad.bval"
    bad.write_text("0 0.5 1\n")
    with pytest.raises(ProtocolError, match="s/mm²"):
        map_adc.run(_args("adc", [src, "--out", tmp_path / "out", "--bval", bad]))
    bad.write_text("0 five 1000\n")
    with pytest.raises(ReadError, match="not a bval file"):
        map_adc.run(_args("adc", [src, "--out", tmp_path / "out", "--bval", bad]))
    bad.write_text("0 100 200\n")
    with pytest.raises(ProtocolError, match="at least 4 distinct b-values"):
        map_adc.run(_args("ivim", [src, "--out", tmp_path / "out", "--bval", bad]))
