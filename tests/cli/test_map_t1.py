"""``oncomri map t1`` (module oncomri.cli.map_t1) on small NIfTI series written here."""

from __future__ import annotations

import argparse
import json

import nibabel as nib
import numpy as np
import pytest

from oncomri.cli import map_t1
from oncomri.core.errors import OncomriError, ProtocolError

SHAPE = (4, 3, 2)
AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])
FA_DEG = [2.0, 5.0, 10.0, 15.0]
TR_S = 0.006


def _parse(argv):
    parser = argparse.ArgumentParser(prog="oncomri map t1")
    map_t1.add_arguments(parser)
    return parser.parse_args(argv)


def _truth():
    t1 = np.geomspace(0.3, 3.0, 24).reshape(SHAPE)
    m0 = np.linspace(800.0, 2000.0, 24).reshape(SHAPE)
    return t1, m0


def _spgr(fa_deg, t1, m0, b1=1.0):
    a = np.deg2rad(np.asarray(fa_deg)) * np.asarray(b1)[..., None]
    e = np.exp(-TR_S / t1)[..., None]
    return m0[..., None] * np.sin(a) * (1 - e) / (1 - e * np.cos(a))


def _write(path, data, sidecar=None):
    nib.Nifti1Image(np.asarray(data, np.float32), AFFINE).to_filename(path)
    if sidecar is not None:
        path.with_name(path.name.replace(".nii.gz", ".json")).write_text(json.dumps(sidecar))
    return path


def _read_map(out, name):
    files = list(out.glob(f"*_{name}.nii.gz"))
    assert len(files) == 1, f"{name}: {[f.name for f in out.iterdir()]}"
    side = json.loads(files[0].with_name(files[0].name.replace(".nii.gz", ".json")).read_text())
    return np.asarray(nib.load(files[0]).dataobj), side


def _one_line_error(exc_info, *words):
    msg = str(exc_info.value)
    assert isinstance(exc_info.value, OncomriError)  # the CLI prints it as one line, exit 2
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_vfa_from_4d_nifti_and_sidecar(tmp_path, capsys):
    t1, m0 = _truth()
    # flip angles out of order in the file: the command sorts them
    order = [2, 0, 3, 1]
    data = _spgr(np.array(FA_DEG)[order], t1, m0)
    src = _write(tmp_path / "sub-01_ses-pre_VFA.nii.gz", data,
                 {"FlipAngle": [FA_DEG[i] for i in order], "RepetitionTime": TR_S})
    out = tmp_path / "out"
    assert map_t1.run(_parse([str(src), "--out", str(out)])) == 0
    t1_map, side = _read_map(out, "T1map")
    assert side["Units"] == "s" and side["Method"] == "nonlinear"
    np.testing.assert_allclose(t1_map, t1, rtol=1e-3)
    r1_map, side = _read_map(out, "R1map")
    assert side["Units"] == "1/s"
    np.testing.assert_allclose(r1_map, 1 / t1, rtol=1e-3)
    m0_map, _ = _read_map(out, "M0map")
    np.testing.assert_allclose(m0_map, m0, rtol=1e-3)
    status, _ = _read_map(out, "desc-t1fit_status")
    assert np.all(status == 0)
    assert (out / "sub-01_ses-pre_T1map.nii.gz").exists()
    assert "variable flip angle" in capsys.readouterr().out


def test_vfa_flip_angles_and_tr_on_the_command_line_with_b1_percent(tmp_path):
    t1, m0 = _truth()
    b1 = np.linspace(0.8, 1.2, 24).reshape(SHAPE)
    src = _write(tmp_path / "vfa.nii.gz", _spgr(FA_DEG, t1, m0, b1))
    b1_file = _write(tmp_path / "b1.nii.gz", 100.0 * b1)
    out = tmp_path / "out"
    args = _parse([str(src), "--out", str(out), "--flip-angles", "2,5,10,15deg", "--tr", "6ms",
                   "--b1", str(b1_file), "--b1-unit", "percent", "--method", "linear"])
    assert map_t1.run(args) == 0
    t1_map, side = _read_map(out, "T1map")
    assert side["Method"] == "linear" and side["RepetitionTime"] == pytest.approx(TR_S)
    np.testing.assert_allclose(t1_map, t1, rtol=1e-3)
    # without the B1 map the same data give biased T1
    out2 = tmp_path / "out2"
    map_t1.run(_parse([str(src), "--out", str(out2), "--flip-angles", "2,5,10,15deg",
                       "--tr", "6ms", "--method", "linear"]))
    assert np.max(np.abs(_read_map(out2, "T1map")[0] / t1 - 1)) > 0.2


def test_vfa_from_one_file_per_flip_angle(tmp_path):
    t1, m0 = _truth()
    data = _spgr(FA_DEG, t1, m0)
    paths = [str(_write(tmp_path / f"sub-02_flip-{k + 1}_VFA.nii.gz", data[..., k],
                        {"FlipAngle": fa, "RepetitionTime": TR_S}))
             for k, fa in enumerate(FA_DEG)]
    out = tmp_path / "out"
    assert map_t1.run(_parse(paths + ["--out", str(out)])) == 0
    np.testing.assert_allclose(_read_map(out, "T1map")[0], t1, rtol=1e-3)


def test_inversion_recovery_magnitude(tmp_path):
    t1, m0 = _truth()
    ti = np.array([0.05, 0.15, 0.4, 0.8, 1.6, 3.2, 6.0])
    data = np.abs(m0[..., None] * (1 - 1.9 * np.exp(-ti / t1[..., None])))
    src = _write(tmp_path / "ir.nii.gz", data)
    out = tmp_path / "out"
    args = _parse([str(src), "--out", str(out), "--inversion-times",
                   ",".join(f"{v * 1000:g}" for v in ti) + "ms"])
    assert map_t1.run(args) == 0
    np.testing.assert_allclose(_read_map(out, "T1map")[0], t1, rtol=1e-3)
    eff, side = _read_map(out, "desc-t1fit_inveff")
    np.testing.assert_allclose(eff, 1.9, rtol=1e-3)


def test_inversion_times_from_the_sidecar(tmp_path):
    t1, m0 = _truth()
    ti = [0.1, 0.3, 0.9, 2.7, 6.0]
    data = m0[..., None] * (1 - 2 * np.exp(-np.array(ti) / t1[..., None]))
    src = _write(tmp_path / "ir.nii.gz", data, {"InversionTime": ti, "FlipAngle": 90})
    out = tmp_path / "out"
    assert map_t1.run(_parse([str(src), "--out", str(out), "--signal", "real",
                              "--method", "two_parameter"])) == 0
    np.testing.assert_allclose(_read_map(out, "T1map")[0], t1, rtol=1e-3)


# ----------------------------------------------------------------- bad input: one clear line


def test_radians_in_the_sidecar_where_degrees_are_expected(tmp_path):
    t1, m0 = _truth()
    src = _write(tmp_path / "vfa.nii.gz", _spgr(FA_DEG, t1, m0),
                 {"FlipAngle": np.deg2rad(FA_DEG).tolist(), "RepetitionTime": TR_S})
    with pytest.raises(ProtocolError) as exc:
        map_t1.run(_parse([str(src), "--out", str(tmp_path / "o")]))
    _one_line_error(exc, "radians", "degrees")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("text, words", [
    ("0.035,0.087,0.17,0.26deg", ("radians",)),
    ("2,5,10,15", ("degrees", "unit")),
    ("0.035,0.087,0.17,0.26rad", ("degrees",)),
    ("2,5,ten,15deg", ("--flip-angles",)),
])
def test_bad_flip_angles_on_the_command_line(tmp_path, text, words):
    t1, m0 = _truth()
    src = _write(tmp_path / "vfa.nii.gz", _spgr(FA_DEG, t1, m0))
    with pytest.raises(ProtocolError) as exc:
        map_t1.run(_parse([str(src), "--out", str(tmp_path / "o"), "--flip-angles", text,
                           "--tr", "6ms"]))
    _one_line_error(exc, *words)


def test_other_bad_input(tmp_path):
    t1, m0 = _truth()
    data = _spgr(FA_DEG, t1, m0)
    ms_tr = _write(tmp_path / "a.nii.gz", data, {"FlipAngle": FA_DEG, "RepetitionTime": 6.0})
    with pytest.raises(ProtocolError) as exc:
        map_t1.run(_parse([str(ms_tr), "--out", str(tmp_path / "o")]))
    _one_line_error(exc, "milliseconds")
    bare = _write(tmp_path / "b.nii.gz", data)
    with pytest.raises(ProtocolError) as exc:
        map_t1.run(_parse([str(bare), "--out", str(tmp_path / "o"), "--flip-angles",
                           "2,5,10deg", "--tr", "6ms"]))
    _one_line_error(exc, "3 flip angles for 4 volumes")
    with pytest.raises(ProtocolError) as exc:
        map_t1.run(_parse([str(bare), "--out", str(tmp_path / "o"), "--flip-angles",
                           "2,5,10,15deg"]))
    _one_line_error(exc, "--tr")
    with pytest.raises(ProtocolError) as exc:
        map_t1.run(_parse([str(bare), "--out", str(tmp_path / "o"), "--flip-angles",
                           "2,5,10,15deg", "--tr", "6"]))
    _one_line_error(exc, "unit")
    with pytest.raises(OncomriError) as exc:
        map_t1.run(_parse([str(bare), "--out", str(tmp_path / "o"), "--method", "despot2",
                           "--flip-angles", "2,5,10,15deg", "--tr", "6ms"]))
    _one_line_error(exc, "--method")
    with pytest.raises(OncomriError) as exc:
        map_t1.run(_parse([str(bare), "--out", str(tmp_path / "o"), "--flip-angles",
                           "2,5,10,15deg", "--inversion-times", "1,2,3,4s"]))
    _one_line_error(exc, "exclude")
    small_b1 = _write(tmp_path / "b1.nii.gz", np.ones((2, 2, 2)))
    with pytest.raises(OncomriError) as exc:
        map_t1.run(_parse([str(bare), "--out", str(tmp_path / "o"), "--flip-angles",
                           "2,5,10,15deg", "--tr", "6ms", "--b1", str(small_b1)]))
    _one_line_error(exc, "--b1", "resample")
    assert not (tmp_path / "o").exists()
