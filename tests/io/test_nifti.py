"""Tests of the NIfTI + BIDS I/O layer (real files written with nibabel, no mocks)."""

from __future__ import annotations

import gzip
import json
import os
import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from oncomri.core import (
    GeometryError,
    MultiEchoProtocol,
    ProtocolError,
    ReadError,
    ValidationError,
    Volume,
)
from oncomri.io import (
    derivative_prefix,
    load_mask,
    load_multi_echo,
    load_nifti,
    parse_bids_name,
    sidecar_path,
    write_derivatives,
)

TE_S = [0.0046, 0.0092, 0.0138, 0.0184]
SHAPE = (6, 5, 4)


# ----------------------------------------------------------------------------- helpers


def _shared_data() -> Path:
    env = os.environ.get("ONCOMRI_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _kidney(vendor: str) -> list[Path]:
    folder = _shared_data() / "mgre_kidney_3T" / vendor
    files = sorted(folder.glob("*.nii.gz")) if folder.is_dir() else []
    if len(files) != 12:
        pytest.skip(
            f"real data not found: {folder} (12 per-echo files expected); set "
            "ONCOMRI_SHARED_DATA to the shared data folder to run this test"
        )
    return files


def _affine(oblique: bool = False) -> np.ndarray:
    if not oblique:
        return np.diag([1.5, 1.5, 5.0, 1.0]) @ np.array(
            [[1, 0, 0, -4], [0, 1, 0, -3], [0, 0, 1, -2], [0, 0, 0, 1]], float
        )
    a, b = np.deg2rad(17.3), np.deg2rad(-8.1)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ rx @ np.diag([1.4871, 1.4871, 4.9])
    aff[:3, 3] = [-97.123, 12.77, 55.5]
    return aff


def _save(path: Path, data, affine=None, *, sidecar=None, dtype=None) -> Path:
    data = np.asarray(data)
    img = nib.Nifti1Image(data, _affine() if affine is None else affine,
                          dtype=dtype or data.dtype)
    nib.save(img, path)
    if sidecar is not None:
        sidecar_path(path).write_text(json.dumps(sidecar))
    return path


def _decay(te, s0=1000.0, r2s=40.0, shape=SHAPE):
    rng = np.random.default_rng(0)
    base = s0 * (0.5 + rng.random(shape))
    return np.stack([base * np.exp(-r2s * t) for t in te], axis=-1).astype(np.float32)


def _per_echo(tmp_path: Path, te=TE_S, *, names=None, affine=None, data=None) -> list[Path]:
    data = _decay(te) if data is None else data
    paths = []
    for i, t in enumerate(te):
        name = names[i] if names else f"sub-01_ses-24h_echo-{i + 1}_part-mag_MEGRE.nii.gz"
        paths.append(_save(tmp_path / name, data[..., i], affine,
                           sidecar={"EchoTime": t, "MagneticFieldStrength": 3, "EchoNumber": i + 1}))
    return paths


def _listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


# ----------------------------------------------------------------------------- per-echo files


def test_per_echo_files_in_shuffled_order_are_sorted_by_echo_time(tmp_path):
    data = _decay(TE_S)
    paths = _per_echo(tmp_path, data=data)
    shuffled = [paths[i] for i in (2, 0, 3, 1)]
    vol = load_multi_echo(shuffled)
    assert isinstance(vol.protocol, MultiEchoProtocol)
    np.testing.assert_array_equal(vol.protocol.echo_times, TE_S)
    assert vol.data.shape == SHAPE + (4,)
    assert vol.data.dtype == np.float32
    np.testing.assert_array_equal(vol.data, data)
    assert vol.sources == tuple(str(p) for p in paths)
    assert vol.protocol.magnetic_field_strength == 3.0
    assert vol.meta["EchoTime"] == TE_S and "EchoNumber" not in vol.meta
    np.testing.assert_array_equal(vol.affine, nib.load(paths[0]).affine)
    assert isinstance(vol.meta["nifti_header"], nib.Nifti1Header)


def test_per_echo_echo_times_argument_in_ms_follow_paths_order(tmp_path):
    data = _decay(TE_S)
    paths = [_save(tmp_path / f"scan_e{i + 1}.nii.gz", data[..., i]) for i in range(4)]
    order = (3, 1, 0, 2)
    vol = load_multi_echo([paths[i] for i in order],
                          echo_times=[TE_S[i] * 1e3 for i in order], echo_time_unit="ms")
    np.testing.assert_allclose(vol.protocol.echo_times, TE_S, rtol=1e-12)
    np.testing.assert_array_equal(vol.data, data)
    assert vol.protocol.source == "echo_times"


def test_per_echo_3d_and_single_volume_4d_files_mix(tmp_path):
    data = _decay(TE_S[:3])
    paths = _per_echo(tmp_path, te=TE_S[:3], data=data)
    _save(paths[1], data[..., 1:2])  # rewrite echo 2 as (X, Y, Z, 1)
    assert nib.load(paths[1]).ndim == 4
    vol = load_multi_echo(paths)
    np.testing.assert_array_equal(vol.data, data)


def test_scaling_is_applied(tmp_path):
    raw = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    paths = []
    for i, t in enumerate(TE_S[:2]):
        img = nib.Nifti1Image(raw + i, _affine(), dtype=np.int16)
        img.header.set_slope_inter(2.0, 10.0)
        p = tmp_path / f"s_e{i}.nii.gz"
        nib.save(img, p)
        sidecar_path(p).write_text(json.dumps({"EchoTime": t}))
        paths.append(p)
    vol = load_multi_echo(paths)
    np.testing.assert_array_equal(vol.data[..., 1], 2.0 * (raw + 1) + 10.0)
    assert vol.data.dtype == np.float32


# ----------------------------------------------------------------------------- one 4D file


def test_4d_file_with_sidecar_list(tmp_path):
    data = _decay(TE_S)
    p = _save(tmp_path / "sub-02_T2starw.nii.gz", data,
              sidecar={"EchoTime": TE_S, "MagneticFieldStrength": 1.5})
    vol = load_multi_echo(p)
    np.testing.assert_array_equal(vol.protocol.echo_times, TE_S)
    assert vol.protocol.magnetic_field_strength == 1.5
    assert vol.protocol.source == str(sidecar_path(p))
    np.testing.assert_array_equal(vol.data, data)
    assert vol.sources == (str(p),)


def test_4d_file_with_echotimes_key(tmp_path):
    p = _save(tmp_path / "series.nii", _decay(TE_S), sidecar={"EchoTimes": TE_S})
    vol = load_multi_echo([p])
    np.testing.assert_array_equal(vol.protocol.echo_times, TE_S)


def test_4d_file_echo_times_argument_in_ms_and_us(tmp_path):
    p = _save(tmp_path / "series.nii.gz", _decay(TE_S))
    vol = load_multi_echo(p, echo_times=[4.6, 9.2, 13.8, 18.4], echo_time_unit="ms")
    np.testing.assert_allclose(vol.protocol.echo_times, TE_S, rtol=1e-12)
    vol = load_multi_echo(p, echo_times=[4600, 9200, 13800, 18400], echo_time_unit="us")
    np.testing.assert_allclose(vol.protocol.echo_times, TE_S, rtol=1e-12)


def test_4d_single_slice_file(tmp_path):
    data = _decay(TE_S, shape=(7, 6, 1))
    p = _save(tmp_path / "slice.nii.gz", data, sidecar={"EchoTime": TE_S})
    vol = load_multi_echo(p)
    assert vol.data.shape == (7, 6, 1, 4)
    np.testing.assert_array_equal(vol.data, data)


def test_echo_times_without_unit_is_an_error(tmp_path):
    p = _save(tmp_path / "series.nii.gz", _decay(TE_S))
    with pytest.raises(ProtocolError, match="echo_time_unit"):
        load_multi_echo(p, echo_times=[4.6, 9.2, 13.8, 18.4])
    with pytest.raises(ProtocolError, match="echo_times"):
        load_multi_echo(p, echo_time_unit="ms")


def test_echo_times_with_unknown_unit_is_an_error(tmp_path):
    p = _save(tmp_path / "series.nii.gz", _decay(TE_S))
    with pytest.raises(ProtocolError, match="unknown time unit"):
        load_multi_echo(p, echo_times=TE_S, echo_time_unit="sec")


def test_4d_count_mismatch(tmp_path):
    p = _save(tmp_path / "series.nii.gz", _decay(TE_S), sidecar={"EchoTime": TE_S[:3]})
    with pytest.raises(ProtocolError, match=r"3 echo times.*4 volumes"):
        load_multi_echo(p)
    with pytest.raises(ProtocolError, match="5 values"):
        load_multi_echo(p, echo_times=[1, 2, 3, 4, 5], echo_time_unit="ms")


def test_4d_not_increasing_echo_times(tmp_path):
    p = _save(tmp_path / "series.nii.gz", _decay(TE_S),
              sidecar={"EchoTime": [0.0046, 0.0138, 0.0092, 0.0184]})
    with pytest.raises(ProtocolError, match="increase"):
        load_multi_echo(p)


def test_4d_sidecar_echo_times_in_ms(tmp_path):
    p = _save(tmp_path / "series.nii.gz", _decay(TE_S), sidecar={"EchoTime": [4.6, 9.2, 13.8, 18.4]})
    with pytest.raises(ProtocolError, match="milliseconds") as err:
        load_multi_echo(p)
    assert "series.json" in str(err.value)


# ----------------------------------------------------------------------------- protocol errors


def test_sidecar_echo_time_in_ms_is_reported(tmp_path):
    paths = _per_echo(tmp_path)
    sidecar_path(paths[2]).write_text(json.dumps({"EchoTime": 13.8}))
    with pytest.raises(ProtocolError, match="milliseconds") as err:
        load_multi_echo(paths)
    assert sidecar_path(paths[2]).name in str(err.value)


def test_duplicate_echo_times_name_both_files(tmp_path):
    paths = _per_echo(tmp_path)
    sidecar_path(paths[3]).write_text(json.dumps({"EchoTime": TE_S[1]}))
    with pytest.raises(ProtocolError, match="appears") as err:
        load_multi_echo(paths)
    assert paths[1].name in str(err.value) and paths[3].name in str(err.value)


def test_same_file_twice_is_an_error(tmp_path):
    paths = _per_echo(tmp_path)
    with pytest.raises(ValidationError, match="passed twice"):
        load_multi_echo(paths + [paths[0]])


def test_duplicate_echo_times_argument(tmp_path):
    paths = _per_echo(tmp_path)
    with pytest.raises(ProtocolError, match="appears"):
        load_multi_echo(paths, echo_times=[4.6, 9.2, 9.2, 18.4], echo_time_unit="ms")


def test_single_echo_is_an_error(tmp_path):
    paths = _per_echo(tmp_path)
    with pytest.raises(ProtocolError, match="single"):
        load_multi_echo(paths[0])
    with pytest.raises(ProtocolError, match="single"):
        load_multi_echo([paths[0]])
    one = _save(tmp_path / "one.nii.gz", _decay(TE_S[:1]), sidecar={"EchoTime": [TE_S[0]]})
    with pytest.raises(ProtocolError, match="single"):
        load_multi_echo(one)


def test_missing_echo_times(tmp_path):
    paths = _per_echo(tmp_path)
    sidecar_path(paths[1]).unlink()
    with pytest.raises(ProtocolError, match="EchoTime") as err:
        load_multi_echo(paths)
    assert paths[1].name in str(err.value) and "echo_time_unit" in str(err.value)
    assert "--echo-times" in str(err.value)
    p4 = _save(tmp_path / "series.nii.gz", _decay(TE_S), sidecar={"RepetitionTime": 0.1})
    with pytest.raises(ProtocolError, match="EchoTime"):
        load_multi_echo(p4)


def test_non_numeric_echo_time(tmp_path):
    paths = _per_echo(tmp_path)
    sidecar_path(paths[0]).write_text(json.dumps({"EchoTime": "4.6ms"}))
    with pytest.raises(ProtocolError, match="must be a number"):
        load_multi_echo(paths)


def test_multi_volume_per_echo_file_that_is_not_mag_real_imag(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for i, t in enumerate(TE_S[:3]):
        # three repeated magnitude images: positive, similar, hypot(v1, v2) ~ sqrt(2) v0
        base = 500 + 100 * rng.random(SHAPE)
        reps = np.stack([base + rng.normal(0, 5, SHAPE) for _ in range(3)], -1)
        paths.append(_save(tmp_path / f"dyn_e{i}.nii.gz", reps.astype(np.float32),
                           sidecar={"EchoTime": t}))
    with pytest.raises(ProtocolError, match="3 volumes per echo") as err:
        load_multi_echo(paths)
    assert "one 3D magnitude file per echo" in str(err.value)
    two = _save(tmp_path / "dyn_e0.nii.gz", np.ones(SHAPE + (2,), np.float32),
                sidecar={"EchoTime": TE_S[0]})
    with pytest.raises(ProtocolError, match="2 volumes per echo"):
        load_multi_echo([two, paths[1]])


def _mag_real_imag(te, *, mag_index=0, scale=1.0):
    rng = np.random.default_rng(2)
    out = []
    for t in te:
        mag = 2000 * np.exp(-30 * t) * (0.3 + rng.random(SHAPE))
        phase = rng.uniform(-np.pi, np.pi, SHAPE)
        vols = [mag * np.cos(phase), mag * np.sin(phase)]
        vols.insert(mag_index, mag)
        out.append(np.rint(np.stack(vols, -1) / scale).astype(np.int16))
    return out


@pytest.mark.parametrize("mag_index", [0, 2])
def test_synthetic_magnitude_real_imaginary_files(tmp_path, mag_index):
    stored = _mag_real_imag(TE_S, mag_index=mag_index)
    paths = [_save(tmp_path / f"ge_e{i + 1}.nii.gz", arr, sidecar={"EchoTime": t})
             for i, (arr, t) in enumerate(zip(stored, TE_S))]
    vol = load_multi_echo(paths[::-1])
    for i, arr in enumerate(stored):
        np.testing.assert_array_equal(vol.data[..., i], arr[..., mag_index])
    assert any(f"volume {mag_index}" in n and "magnitude" in n for n in vol.meta["notes"])


def test_single_ge_style_file_is_one_echo(tmp_path):
    p = _save(tmp_path / "ge_e1.nii.gz", _mag_real_imag(TE_S[:1])[0], sidecar={"EchoTime": 0.0046})
    with pytest.raises(ProtocolError, match="single value"):
        load_multi_echo(p)


# ----------------------------------------------------------------------------- geometry


def test_shape_mismatch_names_both_files(tmp_path):
    paths = _per_echo(tmp_path)
    _save(paths[2], np.ones((6, 5, 3), np.float32), sidecar={"EchoTime": TE_S[2]})
    with pytest.raises(GeometryError, match="shape") as err:
        load_multi_echo(paths)
    assert paths[2].name in str(err.value) and paths[0].name in str(err.value)


def test_affine_mismatch_names_both_files(tmp_path):
    paths = _per_echo(tmp_path)
    moved = _affine()
    moved[0, 3] += 0.5
    _save(paths[3], _decay(TE_S)[..., 3], moved, sidecar={"EchoTime": TE_S[3]})
    with pytest.raises(GeometryError, match="affine") as err:
        load_multi_echo(paths)
    assert paths[3].name in str(err.value) and paths[0].name in str(err.value)


def test_affine_difference_below_tolerance_is_accepted(tmp_path):
    paths = _per_echo(tmp_path)
    nudged = _affine()
    nudged[1, 3] += 1e-5
    _save(paths[1], _decay(TE_S)[..., 1], nudged, sidecar={"EchoTime": TE_S[1]})
    assert load_multi_echo(paths).data.shape == SHAPE + (4,)


# ----------------------------------------------------------------------------- read errors


def test_missing_file(tmp_path):
    paths = _per_echo(tmp_path)
    with pytest.raises(ReadError, match="not found") as err:
        load_multi_echo(paths + [tmp_path / "nope_e9.nii.gz"])
    assert "nope_e9.nii.gz" in str(err.value)
    with pytest.raises(ReadError, match="not found"):
        load_nifti(tmp_path / "nope.nii.gz")


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ReadError, match="directory"):
        load_multi_echo(tmp_path)


@pytest.mark.parametrize("name", ["series.nii.gz", "series.nii"])
def test_truncated_file(tmp_path, name):
    p = _save(tmp_path / name, _decay(TE_S, shape=(32, 32, 8)), sidecar={"EchoTime": TE_S})
    whole = p.read_bytes()
    p.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ReadError) as err:
        load_multi_echo(p)
    assert name in str(err.value)
    assert isinstance(err.value, OSError)
    with pytest.raises(ReadError):
        load_nifti(p)


def test_truncated_per_echo_file(tmp_path):
    paths = _per_echo(tmp_path, data=_decay(TE_S, shape=(32, 32, 8)))
    whole = paths[2].read_bytes()
    paths[2].write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ReadError, match="truncated") as err:
        load_multi_echo(paths)
    assert paths[2].name in str(err.value)


@pytest.mark.parametrize("name,payload", [
    ("garbage.nii.gz", bytes(range(256)) * 8),
    ("garbage.nii", b"this is not an image\n" * 40),
    ("garbage.nii.gz", gzip.compress(b"\x00" * 10)),
    ("notes.txt", b"hello"),
])
def test_garbage_is_a_read_error(tmp_path, name, payload):
    p = tmp_path / name
    p.write_bytes(payload)
    with pytest.raises(ReadError) as err:
        load_nifti(p)
    assert name in str(err.value) and "\n" not in str(err.value)


def test_invalid_sidecar_json(tmp_path):
    paths = _per_echo(tmp_path)
    sidecar_path(paths[0]).write_text('{"EchoTime": 0.0046,')
    with pytest.raises(ReadError, match="not valid JSON") as err:
        load_multi_echo(paths)
    assert sidecar_path(paths[0]).name in str(err.value)


# ----------------------------------------------------------------------------- load_nifti


def test_load_nifti_3d_and_2d(tmp_path):
    p = _save(tmp_path / "img.nii.gz", np.arange(120, dtype=np.int16).reshape(SHAPE),
              sidecar={"Foo": 1})
    vol = load_nifti(p)
    assert vol.data.dtype == np.float32 and vol.data.shape == SHAPE
    assert vol.meta["Foo"] == 1 and vol.protocol is None
    assert vol.meta["nifti_header"]["sform_code"] == nib.load(p).header["sform_code"]
    p2 = _save(tmp_path / "img2d.nii", np.ones((4, 3), np.float32))
    assert load_nifti(p2).data.shape == (4, 3, 1)


# ----------------------------------------------------------------------------- real data


def test_ge_real_data_magnitude_and_echo_times():
    files = _kidney("ge")
    shuffled = files[:]
    random.Random(3).shuffle(shuffled)
    vol = load_multi_echo(shuffled)
    te = vol.protocol.echo_times
    assert vol.data.shape == (256, 256, 5, 12) and vol.data.dtype == np.float32
    assert te.size == 12 and np.all(np.diff(te) > 0)
    assert te[0] == pytest.approx(0.0046, abs=1e-9)
    assert vol.protocol.magnetic_field_strength == 3.0
    for i, src in enumerate(vol.sources):
        stored = nib.load(src).get_fdata(dtype=np.float32)
        assert stored.shape[3] == 3
        np.testing.assert_array_equal(vol.data[..., i], stored[..., 0])
        assert json.loads(sidecar_path(src).read_text())["EchoTime"] == te[i]
    assert any("magnitude" in n and "volume 0" in n for n in vol.meta["notes"])
    assert derivative_prefix(files) == "00016InPhaseCorR2MappingBHPhase"


def test_siemens_real_data():
    files = _kidney("siemens")
    vol = load_multi_echo(files[::-1])
    assert vol.data.shape == (128, 128, 5, 12)
    assert vol.protocol.n_echoes == 12
    assert vol.protocol.echo_times[0] == pytest.approx(0.00461, abs=1e-8)
    assert vol.protocol.echo_spacing == pytest.approx(0.00461, rel=0.01)
    first = nib.load(vol.sources[0])
    np.testing.assert_array_equal(vol.data[..., 0], first.get_fdata(dtype=np.float32))
    np.testing.assert_array_equal(vol.affine, first.affine)
    assert vol.meta["notes"] == []


# ----------------------------------------------------------------------------- writing


def _assert_same_grid_bitwise(out_path: Path, in_path: Path):
    o, i = nib.load(out_path), nib.load(in_path)
    assert np.array_equal(o.affine, i.affine)
    for field in ("sform_code", "qform_code", "srow_x", "srow_y", "srow_z", "quatern_b",
                  "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z"):
        assert np.array_equal(o.header[field], i.header[field]), field
    assert np.array_equal(o.header["pixdim"][:4], i.header["pixdim"][:4])
    assert np.array_equal(o.header.get_qform(), i.header.get_qform())


def _write_maps(vol, out_dir, prefix="sub-01"):
    r2 = np.linspace(0, 100, np.prod(vol.spatial_shape), dtype=np.float32).reshape(vol.spatial_shape)
    r2[0, 0, 0] = np.nan
    maps = {
        "R2starmap": (r2, {"Units": "1/s", "EchoTimes": vol.protocol.echo_times}),
        "desc-r2starfit_mask": ((r2 > 50).astype(np.uint8), {"Description": "fitted"}),
    }
    common = {"SoftwareName": "oncomri", "Threshold": np.float32(0.5), "Sources": vol.sources}
    return r2, write_derivatives(out_dir, prefix, maps, reference=vol, sidecar_common=common)


@pytest.mark.parametrize("vendor", ["ge", "siemens"])
def test_write_derivatives_round_trip_real_data(tmp_path, vendor):
    vol = load_multi_echo(_kidney(vendor))
    r2, written = _write_maps(vol, tmp_path / "derivatives" / "oncomri")
    assert [p.name for p in written] == ["sub-01_R2starmap.nii.gz", "sub-01_desc-r2starfit_mask.nii.gz"]
    _assert_same_grid_bitwise(written[0], Path(vol.sources[0]))
    img = nib.load(written[0])
    assert img.get_data_dtype() == np.float32 and img.shape == vol.spatial_shape
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), r2)
    assert nib.load(written[1]).get_data_dtype() == np.uint8
    side = json.loads(sidecar_path(written[0]).read_text())
    assert side["Units"] == "1/s" and side["SoftwareName"] == "oncomri"
    assert side["Threshold"] == 0.5 and len(side["EchoTimes"]) == 12
    assert side["Sources"] == list(vol.sources)


def test_write_derivatives_oblique_synthetic_affine(tmp_path):
    aff = _affine(oblique=True)
    paths = _per_echo(tmp_path, affine=aff)
    hdr_in = nib.load(paths[0]).header
    assert hdr_in["sform_code"] == 2 and hdr_in["qform_code"] == 0  # nibabel's defaults
    vol = load_multi_echo(paths)
    r2, written = _write_maps(vol, tmp_path / "out")
    _assert_same_grid_bitwise(written[0], paths[0])
    np.testing.assert_allclose(nib.load(written[0]).affine, aff, atol=1e-4)


def test_write_derivatives_keeps_scanner_qform_and_sform_codes(tmp_path):
    aff = _affine(oblique=True)
    img = nib.Nifti1Image(_decay(TE_S), aff)
    img.header.set_qform(aff, code=1)
    img.header.set_sform(aff, code=4)
    p = tmp_path / "series.nii.gz"
    nib.save(img, p)
    sidecar_path(p).write_text(json.dumps({"EchoTime": TE_S}))
    vol = load_multi_echo(p)
    _, written = _write_maps(vol, tmp_path / "out")
    hdr = nib.load(written[0]).header
    assert (int(hdr["qform_code"]), int(hdr["sform_code"])) == (1, 4)
    _assert_same_grid_bitwise(written[0], p)


def test_write_derivatives_without_header_uses_affine(tmp_path):
    vol = Volume(np.zeros(SHAPE + (2,), np.float32), _affine(),
                 protocol=MultiEchoProtocol([0.005, 0.01]))
    out = write_derivatives(tmp_path, "sub-x", {"T2starmap": (np.ones(SHAPE, np.float64), None),
                                                "mask": (np.ones(SHAPE, bool), {})},
                            reference=vol)
    img = nib.load(out[0])
    assert (int(img.header["sform_code"]), int(img.header["qform_code"])) == (1, 1)
    np.testing.assert_array_equal(img.affine, _affine())  # exactly representable in float32
    assert img.get_data_dtype() == np.float64
    assert nib.load(out[1]).get_data_dtype() == np.uint8
    assert json.loads(sidecar_path(out[0]).read_text()) == {}


def test_write_derivatives_overwrites_existing_outputs_cleanly(tmp_path):
    vol = load_multi_echo(_per_echo(tmp_path))
    out = tmp_path / "out"
    _write_maps(vol, out)
    r2, written = _write_maps(vol, out)
    assert _listing(out) == sorted(
        [p.name for p in written] + [sidecar_path(p).name for p in written]
    )


def _existing_output(out: Path) -> tuple[Path, bytes]:
    out.mkdir()
    old = out / "sub-01_R2starmap.nii.gz"
    old.write_bytes(b"previous result")
    return old, old.read_bytes()


def test_write_derivatives_is_all_or_nothing_on_a_failure_mid_write(tmp_path):
    vol = load_multi_echo(_per_echo(tmp_path))
    out = tmp_path / "out"
    old, before = _existing_output(out)
    maps = {
        "R2starmap": (np.ones(SHAPE, np.float32), {"Units": "1/s"}),
        "T2starmap": (np.ones(SHAPE, np.float32), {"Units": "s"}),
        # fails only after the first two maps (4 files) were written to temporaries
        "S0map": (np.ones(SHAPE, np.float32), {"Method": object()}),
    }
    with pytest.raises(ValidationError, match="JSON") as err:
        write_derivatives(out, "sub-01", maps, reference=vol)
    assert "S0map" in str(err.value) and "Method" in str(err.value)
    assert _listing(out) == [old.name]
    assert old.read_bytes() == before


@pytest.mark.parametrize("bad", [
    {"R2starmap": (np.ones(SHAPE, np.float32), {}), "S0map": (np.empty(SHAPE, dtype=object), {})},
    {"R2starmap": (np.ones(SHAPE, np.float32), {}), "sub/S0map": (np.ones(SHAPE, np.float32), {})},
    {"R2starmap": (np.ones(SHAPE, np.float32), {}), "S0map": (np.ones((6, 5, 3), np.float32), {})},
])
def test_write_derivatives_rejects_bad_maps_before_writing(tmp_path, bad):
    vol = load_multi_echo(_per_echo(tmp_path))
    out = tmp_path / "out"
    old, before = _existing_output(out)
    with pytest.raises(ValidationError, match="maps"):
        write_derivatives(out, "sub-01", bad, reference=vol)
    assert _listing(out) == [old.name]
    assert old.read_bytes() == before


def test_write_derivatives_bad_prefix(tmp_path):
    vol = load_multi_echo(_per_echo(tmp_path))
    with pytest.raises(ValidationError, match="prefix"):
        write_derivatives(tmp_path / "o", "../x", {"R2starmap": (np.ones(SHAPE), {})},
                          reference=vol)
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- masks


def test_load_mask(tmp_path):
    vol = load_multi_echo(_per_echo(tmp_path))
    m = np.zeros(SHAPE, np.uint8)
    m[1:3, 2:4, 1] = 1
    mask = load_mask(_save(tmp_path / "mask.nii.gz", m), like=vol)
    assert mask.dtype == bool and mask.sum() == 4
    mask4 = load_mask(_save(tmp_path / "mask4.nii.gz", m[..., None]), like=vol)
    np.testing.assert_array_equal(mask4, mask)


def test_load_mask_grid_mismatch(tmp_path):
    vol = load_multi_echo(_per_echo(tmp_path))
    with pytest.raises(GeometryError, match="resample") as err:
        load_mask(_save(tmp_path / "small.nii.gz", np.ones((6, 5, 3), np.uint8)), like=vol)
    assert "small.nii.gz" in str(err.value) and "(6, 5, 3)" in str(err.value)
    shifted = _affine()
    shifted[2, 3] += 2.5
    with pytest.raises(GeometryError, match="resample"):
        load_mask(_save(tmp_path / "shifted.nii.gz", np.ones(SHAPE, np.uint8), shifted), like=vol)
    with pytest.raises(GeometryError, match="3 volumes"):
        load_mask(_save(tmp_path / "m3.nii.gz", np.ones(SHAPE + (3,), np.uint8)), like=vol)


def test_load_mask_unreadable(tmp_path):
    vol = load_multi_echo(_per_echo(tmp_path))
    bad = tmp_path / "mask.nii.gz"
    bad.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ReadError, match="mask.nii.gz"):
        load_mask(bad, like=vol)


# ----------------------------------------------------------------------------- naming


@pytest.mark.parametrize("names,expected", [
    (["sub-01_ses-24h_echo-1_T2starw.nii.gz", "sub-01_ses-24h_echo-2_T2starw.nii.gz"],
     "sub-01_ses-24h"),
    (["sub-01_ses-24h_acq-bh_echo-1_part-mag_MEGRE.nii.gz"], "sub-01_ses-24h_acq-bh"),
    (["sub-03_run-1_echo-2_part-mag_MEGRE.nii", "sub-03_run-2_echo-1_part-mag_MEGRE.nii"],
     "sub-03"),
    ([f"00016__InPhase_Cor_R2_Mapping_BH_+_phase_e{i}.nii.gz" for i in (1, 2, 10, 12)],
     "00016InPhaseCorR2MappingBHPhase"),
    (["00025__bh3x_r2star_inphase_volume_e1.nii.gz"], "00025Bh3xR2starInphaseVolume"),
    (["liver_echo-1.nii", "liver_echo-2.nii"], "liver"),
    (["__+__.nii.gz"], "oncomri"),
    ([], "oncomri"),
])
def test_derivative_prefix(names, expected):
    assert derivative_prefix([Path("/data") / n for n in names]) == expected


def test_derivative_prefix_single_path_and_parse():
    assert derivative_prefix("sub-7_echo-1_MEGRE.nii.gz") == "sub-7"
    assert parse_bids_name("x/sub-7_ses-a_T2w.nii.gz") == ([("sub", "7"), ("ses", "a")], "T2w")
    assert parse_bids_name("00016__InPhase_e1.nii.gz") is None
