"""Tests of the ``oncomri`` command: ``oncomri map`` end to end, its errors, and ``oncomri demo``.

Inputs are real NIfTI files with BIDS sidecars written with nibabel into
``tmp_path`` (from :mod:`oncomri.sim` phantoms), and the real 3T kidney
series in ``../shared/data/mgre_kidney_3T`` (read-only; those tests skip when
it is absent). The CLI runs in-process through ``oncomri.cli.main.main``,
except for a few runs of the installed console script that prove the exit
status and that no traceback reaches the user. No mocks.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

import oncomri
from oncomri.cli.main import main
from oncomri.fitting import Status
from oncomri.sim import decay_series, relaxometry_phantom

#: Noise sigma of the default phantom (S0 1000 at SNR 50).
SIGMA = 20.0

#: Map name -> expected ``Units`` of its sidecar, for ``oncomri map r2star``.
R2STAR_MAPS = {
    "R2starmap": "1/s",
    "T2starmap": "s",
    "S0map": "a.u.",
    "desc-r2starfit_rsquared": "1",
    "desc-r2starfit_rmse": "a.u.",
    "desc-r2starfit_status": "1",
}


# ----------------------------------------------------------------------------- helpers


def _oblique_affine() -> np.ndarray:
    """An oblique, anisotropic voxel-to-world affine (mm), as on a real scan."""
    a, b = np.deg2rad(17.3), np.deg2rad(-8.1)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ rx @ np.diag([1.4871, 1.4871, 4.9])
    aff[:3, 3] = [-97.123, 12.77, 55.5]
    return aff


AFFINE = _oblique_affine()


def _json_path(nii: Path) -> Path:
    name = nii.name
    stem = name[:-7] if name.endswith(".nii.gz") else Path(name).stem
    return nii.with_name(stem + ".json")


def _save(path: Path, data, affine=AFFINE, *, sidecar=None) -> Path:
    """Write ``data`` as float32 NIfTI with sform and qform code 1 (scanner)."""
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    img.header.set_sform(affine, code=1)
    img.header.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    if sidecar is not None:
        _json_path(path).write_text(json.dumps(sidecar))
    return path


def write_echoes(folder: Path, data, echo_times, *, sidecars=True, affine=AFFINE,
                 subject="01") -> list[Path]:
    """One BIDS file per echo, ``sub-<subject>_echo-<k>_T2starw.nii.gz``, with sidecars."""
    paths = []
    for k in range(data.shape[-1]):
        p = folder / f"sub-{subject}_echo-{k + 1}_T2starw.nii.gz"
        side = {"EchoTime": float(echo_times[k])} if sidecars else None
        paths.append(_save(p, data[..., k], affine, sidecar=side))
    return paths


def _map_path(out: Path, name: str, prefix: str = "sub-01") -> Path:
    return out / f"{prefix}_{name}.nii.gz"


def _load_map(out: Path, name: str, prefix: str = "sub-01") -> np.ndarray:
    return np.asarray(nib.load(_map_path(out, name, prefix)).dataobj)


def _sidecar(out: Path, name: str, prefix: str = "sub-01") -> dict:
    return json.loads((out / f"{prefix}_{name}.json").read_text())


def run_map(capsys, *args):
    """``oncomri map ARGS`` in-process: (exit status, stdout, stderr)."""
    rc = main(["map", *map(str, args)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _leftovers(folder: Path) -> list[str]:
    """Every entry under ``folder`` (hidden ones included), [] if it does not exist."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def assert_clean_failure(rc, err, out_dir: Path, expect, *, root: Path | None = None):
    """Exit 2, one line ``oncomri: error: ...`` naming ``expect``, nothing written.

    ``expect`` items are strings that must all appear in the line; a tuple item
    means any one of its strings.
    """
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, f"exit status {rc}, stderr: {err!r}"
    assert "Traceback" not in err
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {err!r}"
    line = lines[0]
    assert line.startswith("oncomri: error:"), line
    for item in expect:
        alternatives = item if isinstance(item, tuple) else (item,)
        assert any(a in line for a in alternatives), (
            f"the error line names none of {alternatives}: {line!r}"
        )
    assert _leftovers(out_dir) == [], f"output left behind in {out_dir}: {_leftovers(out_dir)}"
    if root is not None:
        temps = [p for p in _leftovers(root) if Path(p).name.startswith(".tmp-")]
        assert temps == [], f"temporary files left behind: {temps}"


def _phantom(shape=(16, 16, 2), **kwargs):
    return relaxometry_phantom(shape=shape, snr=50.0, rng=7, **kwargs)


def _band_medians(t_map, ph):
    return {v: float(np.nanmedian(t_map[ph.labels == i])) for i, v in enumerate(ph.values)}


# ----------------------------------------------------------------------------- a full run


def test_map_writes_every_map_with_a_complete_sidecar(tmp_path, capsys):
    ph = _phantom()
    te = ph.protocol.echo_times
    paths = write_echoes(tmp_path / "in", ph.data, te)
    out = tmp_path / "out"

    rc, stdout, err = run_map(capsys, "r2star", *paths, "--out", out,
                              "--noise-sigma", "20", "--quiet")

    assert rc == 0, err
    assert err == ""
    assert "wrote 6 maps" in stdout
    expected_files = sorted([f"sub-01_{k}.nii.gz" for k in R2STAR_MAPS]
                            + [f"sub-01_{k}.json" for k in R2STAR_MAPS])
    assert sorted(os.listdir(out)) == expected_files  # and no temporary files

    sources = [str(p.resolve()) for p in paths]
    ref = nib.load(paths[0])
    for name, units in R2STAR_MAPS.items():
        side = _sidecar(out, name)
        assert side["Units"] == units, name
        assert side["Method"] == "ncexp"
        assert side["Model"] == "r2star"
        assert side["SoftwareVersion"] == oncomri.__version__
        assert side["Sources"] == sources
        assert side["EchoTime"] == [float(t) for t in te]
        assert side["EchoTimeUnits"] == "s"
        assert side["EchoesUsed"] == list(range(1, 13))
        assert side["NoiseSigma"] == SIGMA
        assert side["NoiseSigmaSource"] == "given"
        img = nib.load(_map_path(out, name))
        assert img.shape == ph.data.shape[:3]
        assert np.array_equal(img.affine, ref.affine)
        assert int(img.header["sform_code"]) == int(ref.header["sform_code"]) == 1
        assert int(img.header["qform_code"]) == int(ref.header["qform_code"]) == 1

    status_img = nib.load(_map_path(out, "desc-r2starfit_status"))
    assert status_img.get_data_dtype() == np.uint8
    status = np.asarray(status_img.dataobj)
    assert status.dtype == np.uint8
    assert set(np.unique(status).tolist()) <= {int(s) for s in Status}
    assert np.isin(status[ph.mask], [Status.OK, Status.NOT_CONVERGED, Status.AT_BOUND]).all()
    assert np.mean(status[ph.mask] == Status.OK) > 0.9
    levels = _sidecar(out, "desc-r2starfit_status")["Levels"]
    assert set(levels) == {str(int(s)) for s in Status}

    r2s = _load_map(out, "R2starmap")
    t2s = _load_map(out, "T2starmap")
    assert r2s.dtype == np.float32
    fine = np.isfinite(r2s) & (r2s > 0)
    assert fine[ph.mask].all()
    np.testing.assert_allclose(t2s[fine], 1.0 / r2s[fine], rtol=1e-6)
    # the right echo times reached the fit: T2* of every band recovered (2-100 ms)
    for truth, median in _band_medians(t2s, ph).items():
        assert abs(median / truth - 1) < 0.08, (truth, median)


def test_echo_times_option_in_ms_overrides_missing_sidecars(tmp_path, capsys):
    """A 4D file without sidecar maps with --echo-times in ms; sidecar EchoTime in s."""
    ph = _phantom()
    te_ms = ph.protocol.echo_times * 1e3
    path = _save(tmp_path / "in" / "sub-02_T2starw.nii.gz", ph.data)
    out = tmp_path / "out"

    rc, _, err = run_map(capsys, "r2star", path, "--out", out, "--noise-sigma", "20",
                         "--echo-times", ",".join(f"{t:.6g}" for t in te_ms) + "ms", "--quiet")

    assert rc == 0, err
    side = _sidecar(out, "R2starmap", "sub-02")
    np.testing.assert_allclose(side["EchoTime"], ph.protocol.echo_times, rtol=1e-5)
    t2s = _load_map(out, "T2starmap", "sub-02")
    for truth, median in _band_medians(t2s, ph).items():
        assert abs(median / truth - 1) < 0.08, (truth, median)


# ----------------------------------------------------------------------------- bad voxels


def test_nan_inf_and_negative_samples_are_flagged_not_fatal(tmp_path, capsys):
    ph = _phantom()
    data = ph.data.copy()
    bad = {  # voxel -> (echo index, value)
        (8, 3, 0): (2, np.nan),
        (8, 5, 1): (0, np.inf),
        (9, 7, 0): (5, -5.0),
        (7, 12, 1): (11, -np.inf),
        (0, 0, 0): (4, np.nan),  # in the air
    }
    for voxel, (echo, value) in bad.items():
        data[voxel + (echo,)] = value
    paths = write_echoes(tmp_path / "in", data, ph.protocol.echo_times)
    out = tmp_path / "out"

    rc, stdout, err = run_map(capsys, "r2star", *paths, "--out", out,
                              "--noise-sigma", "20", "--quiet")

    assert rc == 0, err
    status = _load_map(out, "desc-r2starfit_status")
    r2s = _load_map(out, "R2starmap")
    t2s = _load_map(out, "T2starmap")
    is_bad = np.zeros(status.shape, bool)
    for voxel in bad:
        is_bad[voxel] = True
        assert status[voxel] == Status.INVALID_DATA, voxel
        assert np.isnan(r2s[voxel]) and np.isnan(t2s[voxel]), voxel
    assert f"{len(bad)} failures" in stdout
    others = ~is_bad
    assert not np.any(status[others] == Status.INVALID_DATA)
    assert np.isfinite(r2s[others]).all()
    tissue = others & ph.mask
    assert np.isin(status[tissue], [Status.OK, Status.AT_BOUND]).all()
    assert np.isin(status[others & ~ph.mask],
                   [Status.OK, Status.NOT_CONVERGED, Status.AT_BOUND]).all()


# ----------------------------------------------------------------------------- options


def test_mask_limits_the_fit(tmp_path, capsys):
    ph = _phantom()
    paths = write_echoes(tmp_path / "in", ph.data, ph.protocol.echo_times)
    inside = ph.mask & (np.arange(16)[None, :, None] < 9)
    mask_path = _save(tmp_path / "in" / "sub-01_mask.nii.gz", inside.astype(np.float32))
    out = tmp_path / "out"

    rc, stdout, err = run_map(capsys, "r2star", *paths, "--out", out, "--mask", mask_path,
                              "--noise-sigma", "20", "--quiet")

    assert rc == 0, err
    status = _load_map(out, "desc-r2starfit_status")
    assert np.all(status[~inside] == Status.MASKED)
    assert np.isin(status[inside], [Status.OK, Status.NOT_CONVERGED, Status.AT_BOUND]).all()
    for name in ("R2starmap", "T2starmap", "S0map"):
        values = _load_map(out, name)
        assert np.isnan(values[~inside]).all(), name
        assert np.isfinite(values[inside]).all(), name
    assert f"{int((~inside).sum()):,} masked out" in stdout
    assert _sidecar(out, "R2starmap")["Mask"] == str(mask_path.resolve())


def test_noise_sigma_auto_on_a_small_phantom(tmp_path, capsys):
    """``--noise-sigma auto`` (the default) estimates sigma from a few hundred air voxels.

    The (32, 22, 2) phantom of ``run_demo`` has 352 air voxels at sigma 20.
    """
    ph = relaxometry_phantom(shape=(32, 22, 2), snr=50.0, rng=2026)
    paths = write_echoes(tmp_path / "in", ph.data, ph.protocol.echo_times)
    out = tmp_path / "out"

    rc, _, err = run_map(capsys, "r2star", *paths, "--out", out, "--noise-sigma", "auto",
                         "--quiet")

    assert rc == 0, err
    side = _sidecar(out, "R2starmap")
    assert "estimated" in side["NoiseSigmaSource"]
    assert side["NoiseSigma"] == pytest.approx(SIGMA, rel=0.15)


def test_noise_mask_estimates_sigma_from_the_air(tmp_path, capsys):
    ph = _phantom()
    paths = write_echoes(tmp_path / "in", ph.data, ph.protocol.echo_times)
    air = _save(tmp_path / "in" / "sub-01_air.nii.gz", (~ph.mask).astype(np.float32))
    out = tmp_path / "out"

    rc, stdout, err = run_map(capsys, "r2star", *paths, "--out", out, "--noise-mask", air,
                              "--quiet")

    assert rc == 0, err
    side = _sidecar(out, "T2starmap")
    assert side["NoiseSigmaSource"] == "estimated from --noise-mask"
    assert side["NoiseSigma"] == pytest.approx(SIGMA, rel=0.1)
    assert "estimated from --noise-mask" in stdout


def test_t2_with_drop_first_echo_fits_from_the_second_echo(tmp_path, capsys):
    """The first echo of this spin-echo train is 40 % low (stimulated-echo pattern)."""
    te = np.arange(1, 13) * 0.010
    ph = relaxometry_phantom(shape=(16, 16, 2), echo_times=te, values=(0.03, 0.05, 0.08, 0.12),
                             snr=50.0, rng=11)
    data = ph.data.copy()
    data[..., 0] *= 0.6
    paths = write_echoes(tmp_path / "in", data, te)

    out = tmp_path / "dropped"
    rc, _, err = run_map(capsys, "t2", *paths, "--out", out, "--drop-first-echo",
                         "--noise-sigma", "20", "--quiet")
    assert rc == 0, err
    side = _sidecar(out, "T2map")
    assert side["EchoesUsed"] == list(range(2, 13))
    assert side["Model"] == "t2"
    assert side["Units"] == "s"
    assert _sidecar(out, "R2map")["Units"] == "1/s"
    assert _sidecar(out, "desc-t2fit_status")["EchoesUsed"][0] == 2
    dropped = _band_medians(_load_map(out, "T2map"), ph)
    for truth, median in dropped.items():
        assert abs(median / truth - 1) < 0.05, (truth, median)

    # the same series with every echo: the low first echo biases T2 (so it was dropped above)
    out_all = tmp_path / "all"
    rc, _, err = run_map(capsys, "t2", *paths, "--out", out_all, "--noise-sigma", "20",
                         "--quiet")
    assert rc == 0, err
    assert _sidecar(out_all, "T2map")["EchoesUsed"][0] == 1
    biased = _band_medians(_load_map(out_all, "T2map"), ph)
    assert max(abs(m / t - 1) for t, m in biased.items()) > 0.1


def test_drop_first_echo_with_r2star_is_an_error(tmp_path, capsys):
    ph = _phantom()
    paths = write_echoes(tmp_path / "in", ph.data, ph.protocol.echo_times)
    out = tmp_path / "out"
    rc, _, err = run_map(capsys, "r2star", *paths, "--out", out, "--drop-first-echo")
    assert_clean_failure(rc, err, out, ["--drop-first-echo"], root=tmp_path)


# ----------------------------------------------------------------------------- bad input

TE3 = [0.0046, 0.0092, 0.0138]


def _series(shape=(16, 16, 2), te=TE3):
    """A noisy 3-echo decay (Rician, so the gzip files do not shrink to nothing)."""
    rng = np.random.default_rng(3)
    t2s = rng.uniform(0.01, 0.06, shape)
    return decay_series(te, np.full(shape, 1000.0), t2s, sigma=20.0, rng=4)


def _case_echo_times_missing(d: Path):
    paths = write_echoes(d, _series(), TE3, sidecars=False)
    return [*paths], [paths[0].name]


def _case_duplicated_echo_times(d: Path):
    paths = write_echoes(d, _series(), [0.0046, 0.0092, 0.0092])
    return [*paths], [paths[1].name, paths[2].name]


def _case_4d_sidecar_not_increasing(d: Path):
    p = _save(d / "sub-01_T2starw.nii.gz", _series(), sidecar={"EchoTime": TE3[::-1]})
    return [p], [("sub-01_T2starw.json", "sub-01_T2starw.nii.gz")]


def _case_echo_times_option_not_increasing(d: Path):
    p = _save(d / "sub-01_T2starw.nii.gz", _series(te=TE3[:2]))
    return [p, "--echo-times", "9.2,4.6ms"], ["--echo-times"]


def _case_sidecar_echo_time_in_ms(d: Path):
    paths = write_echoes(d, _series(), [4.6, 9.2, 13.8])
    return [*paths], [tuple(_json_path(p).name for p in paths)]


def _case_echo_times_option_seconds_as_ms(d: Path):
    p = _save(d / "sub-01_T2starw.nii.gz", _series(te=TE3[:2]))
    return [p, "--echo-times", "0.0046,0.0092ms"], ["--echo-times"]


def _case_echo_times_option_without_unit(d: Path):
    paths = write_echoes(d, _series(), TE3, sidecars=False)
    return [*paths, "--echo-times", "4.6,9.2,13.8"], ["--echo-times"]


def _case_shapes_differ(d: Path):
    data = _series()
    paths = write_echoes(d, data, TE3)
    _save(paths[1], data[:, :15, :, 1], sidecar={"EchoTime": TE3[1]})
    return [*paths], [paths[1].name]


def _case_affines_differ(d: Path):
    data = _series()
    paths = write_echoes(d, data, TE3)
    moved = AFFINE.copy()
    moved[:3, 3] += [2.0, 0.0, 0.0]
    _save(paths[2], data[..., 2], moved, sidecar={"EchoTime": TE3[2]})
    return [*paths], [paths[2].name]


def _case_mask_of_another_shape(d: Path):
    paths = write_echoes(d, _series(), TE3)
    mask = _save(d / "mask.nii.gz", np.ones((16, 16, 3)))
    return [*paths, "--mask", mask], ["mask.nii.gz"]


def _case_mask_on_another_grid(d: Path):
    paths = write_echoes(d, _series(), TE3)
    moved = AFFINE.copy()
    moved[:3, 3] += [0.0, 3.0, 0.0]
    mask = _save(d / "mask.nii.gz", np.ones((16, 16, 2)), moved)
    return [*paths, "--mask", mask], ["mask.nii.gz"]


def _case_single_echo(d: Path):
    p = _save(d / "sub-01_echo-1_T2starw.nii.gz", _series()[..., 0],
              sidecar={"EchoTime": 0.0046})
    return [p], [p.name]


def _case_garbage_file(d: Path):
    paths = write_echoes(d, _series(), TE3)
    paths[1].write_bytes(np.random.default_rng(5).bytes(4000))
    return [*paths], [paths[1].name]


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _case_truncated_echo(d: Path):
    paths = write_echoes(d, _series(), TE3)
    _truncate(paths[2])
    return [*paths], [paths[2].name]


def _case_truncated_4d(d: Path):
    p = _save(d / "sub-01_T2starw.nii.gz", _series(), sidecar={"EchoTime": TE3})
    _truncate(p)
    return [p], [p.name]


def _case_missing_file(d: Path):
    paths = write_echoes(d, _series(), TE3)
    missing = d / "sub-01_echo-4_T2starw.nii.gz"
    return [*paths, missing], [missing.name]


BAD_INPUTS = {
    "echo-times-missing": _case_echo_times_missing,
    "duplicated-echo-times": _case_duplicated_echo_times,
    "4d-sidecar-not-increasing": _case_4d_sidecar_not_increasing,
    "echo-times-option-not-increasing": _case_echo_times_option_not_increasing,
    "sidecar-echo-time-in-ms": _case_sidecar_echo_time_in_ms,
    "echo-times-option-seconds-as-ms": _case_echo_times_option_seconds_as_ms,
    "echo-times-option-without-unit": _case_echo_times_option_without_unit,
    "shapes-differ": _case_shapes_differ,
    "affines-differ": _case_affines_differ,
    "mask-of-another-shape": _case_mask_of_another_shape,
    "mask-on-another-grid": _case_mask_on_another_grid,
    "single-echo": _case_single_echo,
    "garbage-file": _case_garbage_file,
    "truncated-echo": _case_truncated_echo,
    "truncated-4d": _case_truncated_4d,
    "missing-file": _case_missing_file,
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_one_line_exit_2_and_no_output(case, tmp_path, capsys):
    args, expect = BAD_INPUTS[case](tmp_path / "in")
    out = tmp_path / "out"
    rc, stdout, err = run_map(capsys, "r2star", *args, "--out", out, "--noise-sigma", "20",
                              "--quiet")
    assert_clean_failure(rc, err, out, expect, root=tmp_path)
    assert stdout == ""


def _snapshot(folder: Path) -> dict:
    return {p.name: (p.read_bytes() if p.is_file() else "<dir>") for p in folder.iterdir()}


def test_failing_run_leaves_older_maps_byte_identical(tmp_path, capsys):
    ph = _phantom()
    paths = write_echoes(tmp_path / "in", ph.data, ph.protocol.echo_times)
    out = tmp_path / "out"
    rc, _, err = run_map(capsys, "r2star", *paths, "--out", out, "--noise-sigma", "20",
                         "--quiet")
    assert rc == 0, err
    before = _snapshot(out)
    assert len(before) == 12

    # a series of the same subject whose echo times are duplicated: fails while reading
    dup = write_echoes(tmp_path / "dup", ph.data[..., :3], [0.001, 0.002, 0.002])
    rc, _, err = run_map(capsys, "r2star", *dup, "--out", out, "--quiet")
    assert rc == 2, err
    assert _snapshot(out) == before

    # a good series of the same subject with a mask on another grid: fails after reading
    other = write_echoes(tmp_path / "other", 2 * ph.data, ph.protocol.echo_times)
    mask = _save(tmp_path / "other" / "mask.nii.gz", np.ones((16, 16, 3)))
    rc, _, err = run_map(capsys, "r2star", *other, "--out", out, "--mask", mask,
                         "--noise-sigma", "20", "--quiet")
    assert rc == 2, err
    assert _snapshot(out) == before

    # fails in the writer, after the fit: one final name is taken by a folder
    (out / "sub-01_S0map.json").unlink()
    (out / "sub-01_S0map.json").mkdir()
    before = _snapshot(out)
    rc, _, err = run_map(capsys, "r2star", *other, "--out", out, "--noise-sigma", "20",
                         "--quiet")
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and "sub-01_S0map.json" in lines[0], err
    assert _snapshot(out) == before  # no new map, no temporary file


# ----------------------------------------------------------------------------- console script


def _console_script() -> list[str]:
    script = Path(sys.executable).parent / "oncomri"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "oncomri.cli.main"]


def _run_console(*args, cwd: Path):
    env = {k: v for k, v in os.environ.items() if k != "ONCOMRI_DEBUG"}
    return subprocess.run([*_console_script(), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120)


def test_console_script_unreadable_file_exit_2_without_traceback(tmp_path):
    args, expect = _case_garbage_file(tmp_path / "in")
    out = tmp_path / "out"
    proc = _run_console("map", "r2star", *args, "--out", out, cwd=tmp_path)
    assert_clean_failure(proc.returncode, proc.stderr, out, expect, root=tmp_path)
    assert proc.stdout == ""


def test_console_script_echo_times_without_unit_exit_2_without_traceback(tmp_path):
    args, expect = _case_echo_times_option_without_unit(tmp_path / "in")
    out = tmp_path / "out"
    proc = _run_console("map", "t2star", *args, "--out", out, cwd=tmp_path)
    assert_clean_failure(proc.returncode, proc.stderr, out, expect, root=tmp_path)


# ----------------------------------------------------------------------------- real data


def _run_in_process(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def _real_run(tmp_path_factory, files, order, model="r2star", extra=()):
    out = tmp_path_factory.mktemp("real") / "derivatives"
    rc, stdout, stderr = _run_in_process(
        ["map", model, *map(str, order), "--out", str(out), "--quiet", *extra])
    maps = sorted(out.glob("*_T2starmap.nii.gz")) if out.is_dir() else []
    return SimpleNamespace(rc=rc, stdout=stdout, stderr=stderr, out=out, files=files,
                           order=order, t2starmap=maps[0] if len(maps) == 1 else None)


@pytest.fixture(scope="module")
def ge_run(tmp_path_factory, kidney_series):
    files = kidney_series("ge")
    return _real_run(tmp_path_factory, files, files)  # in echo order


@pytest.fixture(scope="module")
def siemens_run(tmp_path_factory, kidney_series):
    files = kidney_series("siemens")
    order = list(files)
    random.Random(2026).shuffle(order)
    assert order != files
    return _real_run(tmp_path_factory, files, order)  # shuffled


#: vendor -> (first echo time in s, renal boxes [x, y] over slices 1:4)
REAL = {
    "ge": (0.0046, [(slice(70, 92), slice(100, 140)), (slice(155, 180), slice(105, 150))]),
    "siemens": (0.00461, [(slice(36, 50), slice(55, 75)), (slice(78, 92), slice(60, 84))]),
}


def _echo_time(path: Path) -> float:
    return float(json.loads(_json_path(path).read_text())["EchoTime"])


def _assert_plausible_renal_t2star(t2star: np.ndarray, boxes):
    for bx, by in boxes:
        box = t2star[bx, by, 1:4]
        nan_fraction = float(np.mean(np.isnan(box)))
        median = float(np.nanmedian(box))
        assert nan_fraction < 0.05, (bx, by, nan_fraction)
        assert 0.025 < median < 0.065, (bx, by, median)


@pytest.mark.parametrize("vendor", ["ge", "siemens"])
def test_real_series_maps_end_to_end(vendor, request):
    run = request.getfixturevalue(f"{vendor}_run")
    first_te, _ = REAL[vendor]
    assert run.rc == 0, run.stderr
    assert "error" not in run.stderr
    assert run.t2starmap is not None, sorted(p.name for p in run.out.iterdir())

    side = json.loads(_json_path(run.t2starmap).read_text())
    te_sidecars = sorted(_echo_time(f) for f in run.files)
    assert side["EchoTime"] == te_sidecars
    assert np.all(np.diff(side["EchoTime"]) > 0)
    assert side["EchoTime"][0] == pytest.approx(first_te, rel=2e-3)
    assert len(side["EchoTime"]) == 12
    assert side["Units"] == "s"
    assert side["Method"] == "ncexp"
    assert "estimated" in side["NoiseSigmaSource"]
    assert side["NoiseSigma"] > 0
    # sources in echo order, whatever order they were passed in
    by_te = sorted(run.files, key=_echo_time)
    assert side["Sources"] == [str(f.resolve()) for f in by_te]
    if vendor == "ge":
        assert any("magnitude" in note for note in side["Notes"])

    echo1 = nib.load(by_te[0])
    for name in R2STAR_MAPS:
        img = nib.load(run.t2starmap.with_name(run.t2starmap.name.replace("T2starmap", name)))
        assert img.shape == echo1.shape[:3]
        assert np.array_equal(img.affine, echo1.affine), name
        assert int(img.header["sform_code"]) == int(echo1.header["sform_code"])
        assert int(img.header["qform_code"]) == int(echo1.header["qform_code"])


@pytest.mark.parametrize("vendor", ["ge", "siemens"])
def test_real_series_renal_t2star_is_plausible(vendor, request):
    run = request.getfixturevalue(f"{vendor}_run")
    assert run.rc == 0, run.stderr
    t2star = np.asarray(nib.load(run.t2starmap).dataobj)
    _assert_plausible_renal_t2star(t2star, REAL[vendor][1])


def test_real_siemens_t2star_with_nlls_records_the_method(tmp_path_factory, kidney_series):
    files = kidney_series("siemens")
    run = _real_run(tmp_path_factory, files, files, model="t2star", extra=("--method", "nlls"))
    assert run.rc == 0, run.stderr
    assert "t2star (nlls)" in run.stdout
    side = json.loads(_json_path(run.t2starmap).read_text())
    assert side["Method"] == "nlls"
    assert side["Model"] == "t2star"
    assert "nonlinear least squares" in side["MethodDescription"]
    assert side["NoiseSigma"] is None
    t2star = np.asarray(nib.load(run.t2starmap).dataobj)
    _assert_plausible_renal_t2star(t2star, REAL["siemens"][1])


# ----------------------------------------------------------------------------- demo


def test_demo_on_a_small_phantom(tmp_path, capsys):
    from oncomri.cli.demo import run_demo

    try:
        rows = run_demo(tmp_path, shape=(32, 22, 2))
    except SystemExit as exc:
        pytest.fail(f"run_demo exited with status {exc.code}: {capsys.readouterr().err.strip()}")
    stdout = capsys.readouterr().out

    assert set(rows) == {"loglin", "wloglin", "arlo", "nlls", "nlls_offset", "ncexp"}
    ncexp = rows["ncexp"]
    assert len(ncexp) == 11
    for row in ncexp:
        assert abs(row.median_bias) < 0.05, row
    loglin_2ms = [r for r in rows["loglin"] if r.truth == pytest.approx(0.002)]
    assert len(loglin_2ms) == 1 and loglin_2ms[0].median_bias > 0.5, loglin_2ms

    table = tmp_path / "accuracy.csv"
    assert table.is_file()
    with table.open() as fh:
        records = list(csv.DictReader(fh))
    assert len(records) == 6 * 11
    assert {r["method"] for r in records} == set(rows)
    derivatives = tmp_path / "derivatives"
    assert derivatives.is_dir()
    assert (derivatives / "sub-phantom_R2starmap.nii.gz").is_file()
    assert (derivatives / "sub-phantom_R2starmap.json").is_file()
    assert "T2* median bias" in stdout
