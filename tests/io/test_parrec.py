"""Tests of the Philips PAR/REC reader on the PAR/REC files that ship with nibabel.

Only three of nibabel's PAR files come with their REC (the EPI phantoms
``phantom_EPI_asc_CLEAR_2_1``, ``phantom_varscale`` and ``phantom_truncated``).
For the others (multi-echo with four image types, DTI, ASL, field map, ADC
map, an oblique EPI) the real PAR is copied next to a REC of seeded random
pixels of the size the PAR describes, so that every expected value below is
computed by hand: the image at the PAR's ``index in REC file``, scaled with
the RS/RI/SS read from the PAR text.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from oncomri.core import (
    DiffusionProtocol,
    DynamicProtocol,
    MultiEchoProtocol,
    ProtocolError,
    ReadError,
    ValidationError,
)
from oncomri.io import find_reader, load, load_all
from oncomri.io.parrec import read_series

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
EPI = NIB_DATA / "phantom_EPI_asc_CLEAR_2_1.PAR"
VARSCALE = NIB_DATA / "phantom_varscale.PAR"
TRUNCATED = NIB_DATA / "phantom_truncated.PAR"

# (nx, ny, number of REC images) read from each PAR: recon resolution and the
# largest "index in REC file" + 1.
REC_SIZE = {
    "T1_3echo_mag_real_imag_phase.PAR": (80, 80, 360),
    "DTI.PAR": (80, 80, 80),
    "DTIv40.PAR": (80, 80, 80),
    "ASL_3D_Multiecho.PAR": (80, 80, 318),
    "fieldmap.PAR": (80, 80, 20),
    "ADC_Map.PAR": (144, 144, 22),
    "umass_anonymized.PAR": (80, 80, 74),
    "Phantom_EPI_3mm_cor_20APtrans_15RLrot_SENSE_15_1.PAR": (80, 80, 40),
}


# ----------------------------------------------------------------------------- helpers


def _image(flat: np.ndarray, index: int, nx: int, ny: int) -> np.ndarray:
    """REC image ``index`` as an (x, y) array (x varies fastest in the file)."""
    return flat[index * nx * ny:(index + 1) * nx * ny].reshape(ny, nx).T.astype(np.float64)


def _fp(pv, rs, ri, ss):
    """Philips' floating-point value, as every PAR defines it: FP = (PV*RS + RI) / (RS*SS)."""
    return (pv * rs + ri) / (rs * ss)


def _with_rec(tmp_path: Path, name: str, *, seed: int = 0, par_name: str | None = None):
    """Copy nibabel's ``name`` PAR into tmp_path with a seeded random REC; (par, flat pixels)."""
    nx, ny, n = REC_SIZE[name]
    par = tmp_path / (par_name or name)
    shutil.copyfile(NIB_DATA / name, par)
    flat = np.random.default_rng(seed).integers(0, 4096, size=nx * ny * n, dtype="<u2")
    flat.tofile(par.with_suffix(".REC" if par.suffix.isupper() else ".rec"))
    return par, flat


def _copy_pair(tmp_path: Path, src: Path, stem: str, par_ext=".PAR", rec_ext=".REC",
               rec_bytes: int | None = None):
    par = tmp_path / f"{stem}{par_ext}"
    shutil.copyfile(src, par)
    if rec_ext is not None:
        data = src.with_suffix(".REC").read_bytes()
        kept = data if rec_bytes is None else data[:rec_bytes]
        (tmp_path / f"{stem}{rec_ext}").write_bytes(kept)
    return par


def _nibabel(par: Path, *, scaling: str = "dv"):
    """nibabel's own reading of ``par``: (affine, scaled data), its REC file closed again."""
    img = nib.load(par, scaling=scaling)
    try:
        return img.affine, img.get_fdata()
    finally:
        img.dataobj.file_like.close()  # nibabel leaves the REC it opened to the GC


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


# ----------------------------------------------------------------------------- real REC files


def test_dynamic_epi_phantom():
    (vol,) = read_series(EPI)
    assert vol.data.shape == (64, 64, 9, 3)
    assert vol.data.dtype == np.float32
    assert isinstance(vol.protocol, DynamicProtocol)
    # dyn_scan_begin_time column of the PAR: 0.00, 2.00, 4.00 s
    np.testing.assert_array_equal(vol.protocol.times, [0.0, 2.0, 4.0])
    ref_affine, ref_data = _nibabel(EPI, scaling="fp")
    np.testing.assert_array_equal(vol.affine, ref_affine)
    # header: "Repetition time [ms] : 2000.000", echo 30.00 ms, flip 90.00 deg
    assert vol.meta["RepetitionTime"] == 2.0
    assert vol.meta["EchoTime"] == 0.03
    assert vol.meta["FlipAngle"] == 90.0
    assert vol.meta["SeriesDescription"] == "EPI_asc CLEAR"
    assert vol.meta["SeriesNumber"] == 2
    assert vol.meta["Manufacturer"] == "Philips"
    assert vol.meta["MRAcquisitionType"] == "2D"
    assert "MagneticFieldStrength" not in vol.meta
    assert vol.sources == (str(EPI), str(EPI.with_suffix(".REC")))
    np.testing.assert_allclose(vol.data, ref_data, rtol=1e-6)


def test_fp_scaling_by_hand_on_varying_scale():
    rec = VARSCALE.with_suffix(".REC")
    flat = np.fromfile(rec, dtype="<u2")
    (vol,) = read_series(VARSCALE)
    assert vol.meta["ParrecScaling"] == "fp"
    assert any("FP = (PV*RS + RI)/(RS*SS)" in n for n in vol.meta["notes"])
    # PAR lines: slice 1 dyn 1 idx 0: RI -0.69352 RS 0.65184 SS 4.78462e-003;
    # slice 2 dyn 2 idx 10: RI 1.09595 RS 2.68028 SS 4.32900e-003;
    # slice 9 dyn 3 idx 26: RI 0.79204 RS 1.65725 SS 3.95777e-003
    for (z, t, idx, ri, rs, ss) in [(0, 0, 0, -0.69352, 0.65184, 4.78462e-3),
                                   (1, 1, 10, 1.09595, 2.68028, 4.32900e-3),
                                   (8, 2, 26, 0.79204, 1.65725, 3.95777e-3)]:
        expected = _fp(_image(flat, idx, 64, 64), rs, ri, ss)
        np.testing.assert_allclose(vol.data[:, :, z, t], expected, rtol=1e-6)

    (dv,) = read_series(VARSCALE, scaling="dv")
    assert dv.meta["ParrecScaling"] == "dv"
    np.testing.assert_allclose(dv.data[:, :, 1, 1], _image(flat, 10, 64, 64) * 2.68028 + 1.09595,
                               rtol=1e-6)
    # FP = DV / (RS*SS): the factor changes from image to image (320.6 for idx 0, 86.2 for
    # idx 10), so DV values of different images are not comparable; FP values are
    np.testing.assert_allclose(vol.data[:, :, 0, 0], dv.data[:, :, 0, 0] / (0.65184 * 4.78462e-3),
                               rtol=1e-5)
    np.testing.assert_allclose(vol.data[:, :, 1, 1], dv.data[:, :, 1, 1] / (2.68028 * 4.32900e-3),
                               rtol=1e-5)


def test_truncated_scan_needs_permission():
    with pytest.raises(ReadError) as exc:
        read_series(TRUNCATED)
    msg = _one_line(exc)
    assert "Found 3 dynamic scan values, but expected 4" in msg
    assert "permit_truncated=True" in msg
    (vol,) = read_series(TRUNCATED, permit_truncated=True)
    assert vol.data.shape == (64, 64, 9, 3)
    assert any("expected 4" in n for n in vol.meta["notes"])


# ----------------------------------------------------------------------------- registry


def test_registry_loads_par_and_rec_in_any_case(tmp_path):
    assert find_reader(EPI).name == "parrec"
    ref = read_series(EPI)[0].data
    for stem, par_ext, rec_ext, given in [("upper", ".PAR", ".REC", "rec"),
                                          ("lower", ".par", ".rec", "par"),
                                          ("mixed", ".Par", ".rec", "par"),
                                          ("mixed2", ".par", ".REC", "rec")]:
        par = _copy_pair(tmp_path, EPI, stem, par_ext, rec_ext)
        path = par if given == "par" else tmp_path / f"{stem}{rec_ext}"
        vol = load(path)
        np.testing.assert_array_equal(vol.data, ref)
        assert vol.sources == (str(par), str(tmp_path / f"{stem}{rec_ext}"))
    assert len(load_all(EPI)) == 1


# ----------------------------------------------------------------------------- echoes, types


def test_multi_echo_keeps_magnitude_by_default(tmp_path):
    par, flat = _with_rec(tmp_path, "T1_3echo_mag_real_imag_phase.PAR")
    (vol,) = read_series(par)
    assert vol.data.shape == (80, 80, 30, 3)
    assert isinstance(vol.protocol, MultiEchoProtocol)
    # echo_time column: 1.29, 3.28, 5.27 ms
    np.testing.assert_allclose(vol.protocol.echo_times, [1.29e-3, 3.28e-3, 5.27e-3], rtol=1e-12)
    assert vol.meta["EchoTime"] == [0.00129, 0.00328, 0.00527]
    assert vol.meta["RepetitionTime"] == 0.006746
    assert vol.meta["FlipAngle"] == 8.0
    assert vol.meta["MRAcquisitionType"] == "3D"
    assert vol.meta["ParrecImageType"] == "magnitude"
    assert "real, imaginary, phase" in vol.meta["notes"][0]
    assert "magnitude" in vol.meta["notes"][0]
    np.testing.assert_array_equal(vol.affine, _nibabel(par)[0])
    # slice 1 magnitude images: idx 182 (echo 1), 186 (echo 2), 190 (echo 3),
    # RI 0, RS 1.28767, SS 9.78947e-005
    for echo, idx in enumerate((182, 186, 190)):
        expected = _fp(_image(flat, idx, 80, 80), 1.28767, 0.0, 9.78947e-5)
        np.testing.assert_allclose(vol.data[:, :, 0, echo], expected, rtol=1e-6)


def test_multi_echo_phase_and_real_on_request(tmp_path):
    par, flat = _with_rec(tmp_path, "T1_3echo_mag_real_imag_phase.PAR")
    (phase,) = read_series(par, image_type="phase")
    assert phase.meta["ParrecImageType"] == "phase"
    assert isinstance(phase.protocol, MultiEchoProtocol)
    # slice 1 echo 2 phase: idx 187, RI -3142, RS 1.53455, SS 6.51740e+002 -> radians
    expected = _fp(_image(flat, 187, 80, 80), 1.53455, -3142.0, 651.740)
    np.testing.assert_allclose(phase.data[:, :, 0, 1], expected, rtol=1e-6, atol=1e-6)
    assert np.abs(phase.data).max() <= np.pi + 1e-3
    (real,) = read_series(par, image_type="real", scaling="dv")
    # slice 1 echo 1 real: idx 180, DV = PV*2.57485 - 5272
    np.testing.assert_allclose(real.data[:, :, 0, 0],
                               _image(flat, 180, 80, 80) * 2.57485 - 5272.0, rtol=1e-6)
    (imag,) = read_series(par, image_type=2)
    assert imag.meta["ParrecImageType"] == "imaginary"


def test_field_map_magnitude_and_missing_type(tmp_path):
    par, flat = _with_rec(tmp_path, "fieldmap.PAR")
    (mag,) = read_series(par)
    assert mag.data.shape == (80, 80, 10)  # one magnitude volume: 3D, no protocol
    assert mag.protocol is None
    assert mag.meta["EchoTime"] == 0.007
    assert "image_type='phase'" in mag.meta["notes"][0]
    # slice 1 magnitude idx 0: RI 0, RS 10.40049, SS 1.18623e-003
    np.testing.assert_allclose(mag.data[:, :, 0],
                               _fp(_image(flat, 0, 80, 80), 10.40049, 0.0, 1.18623e-3), rtol=1e-6)
    with pytest.raises(ValidationError) as exc:
        read_series(par, image_type="real")
    msg = _one_line(exc)
    assert "holds no real images" in msg and "magnitude, phase" in msg


def test_no_magnitude_and_several_types_asks_for_a_choice(tmp_path):
    par, _ = _with_rec(tmp_path, "umass_anonymized.PAR")
    with pytest.raises(ValidationError) as exc:
        read_series(par)
    assert "image_type=16" in _one_line(exc)
    (vol,) = read_series(par, image_type=17)
    assert vol.meta["ParrecImageType"] == "image_type_mr 17"


def test_scanner_adc_map_reads_despite_source_scan_counts(tmp_path):
    par, flat = _with_rec(tmp_path, "ADC_Map.PAR")
    (fp,) = read_series(par)  # header lists 3 b-values of the source scan: not an error here
    assert fp.data.shape == (144, 144, 22)
    assert any("source scan" in n for n in fp.meta["notes"])
    assert any("scaling='dv'" in n and "scanner-computed" in n for n in fp.meta["notes"])
    (dv,) = read_series(par, scaling="dv")
    # slice 2: idx 1, RI 0, RS 0.00067
    np.testing.assert_allclose(dv.data[:, :, 1], _image(flat, 1, 144, 144) * 0.00067, rtol=1e-6)


def test_oblique_affine_is_nibabels(tmp_path):
    # "Angulation midslice(ap,fh,rl)[degr]: 0.000 0.000 15.000", coronal slices
    par, _ = _with_rec(tmp_path, "Phantom_EPI_3mm_cor_20APtrans_15RLrot_SENSE_15_1.PAR")
    (vol,) = read_series(par)
    assert vol.data.shape == (80, 80, 40)
    np.testing.assert_array_equal(vol.affine, _nibabel(par)[0])
    rot = vol.affine[:3, :3]
    assert np.count_nonzero(np.abs(rot) > 1e-3) > 3  # angulated: not a permuted diagonal
    # pixel spacing 3.000 3.000, slice thickness 3.000 + gap 0.300 mm
    np.testing.assert_allclose(vol.voxel_size, [3.0, 3.0, 3.3], atol=1e-6)


# ----------------------------------------------------------------------------- diffusion


def test_dti_b_values_ordered(tmp_path):
    par, flat = _with_rec(tmp_path, "DTI.PAR")
    (vol,) = read_series(par)
    assert vol.data.shape == (80, 80, 10, 8)
    assert isinstance(vol.protocol, DiffusionProtocol)
    # diffusion_b_factor column: one b=0 (grad 7) and seven b=1000 (grad 1..7)
    np.testing.assert_array_equal(vol.protocol.b_values, [0] + [1000] * 7)
    assert vol.protocol.b_vectors is None
    dirs = vol.meta["ParrecDiffusionAPFHRL"]
    assert dirs[0] == [0.0, 0.0, 0.0]
    assert dirs[1] == [-0.667, -0.667, -0.333]  # gradient orientation 1
    assert dirs[7] == [0.0, 0.0, 0.0]  # b=1000 without direction: the trace image
    assert any("trace" in n for n in vol.meta["notes"])
    # slice 1: b=0 idx 60, b=1000 grad 1 idx 0, grad 2 idx 10, trace idx 70; RS 22.15092,
    # SS 1.35565e-003
    for k, idx in [(0, 60), (1, 0), (2, 10), (7, 70)]:
        expected = _fp(_image(flat, idx, 80, 80), 22.15092, 0.0, 1.35565e-3)
        np.testing.assert_allclose(vol.data[:, :, 0, k], expected, rtol=1e-6)
    (v40,) = read_series(_with_rec(tmp_path, "DTIv40.PAR")[0])
    assert v40.meta["ParrecVersion"] == "V4"
    np.testing.assert_array_equal(v40.protocol.b_values, [0] + [1000] * 7)


# ----------------------------------------------------------------------------- several vary


def test_several_varying_parameters_need_a_choice(tmp_path):
    par, flat = _with_rec(tmp_path, "ASL_3D_Multiecho.PAR")
    with pytest.raises(ValidationError) as exc:
        read_series(par)
    msg = _one_line(exc)
    for word in ("echo (3 values)", "dynamic (2 values)", "label_type (2 values)",
                 "measurement='echo'"):
        assert word in msg

    per_dynamic = read_series(par, measurement="echo")
    assert len(per_dynamic) == 4  # 2 dynamics x 2 ASL label types
    for vol in per_dynamic:
        assert vol.data.shape == (80, 80, 8, 3)
        np.testing.assert_allclose(vol.protocol.echo_times, [1.42e-3, 3.45e-3, 5.49e-3])
    assert [v.meta["ParrecSplit"] for v in per_dynamic] == [
        {"dynamic": 1, "label_type": 1}, {"dynamic": 1, "label_type": 2},
        {"dynamic": 2, "label_type": 1}, {"dynamic": 2, "label_type": 2}]
    # the REC images sit at the PAR's "index in REC file" (90..317), not at line numbers:
    # dynamic 2, label 2, slice 2, echo 3 is idx 281; RS 1.50110, SS 8.85639e-004
    expected = _fp(_image(flat, 281, 80, 80), 1.50110, 0.0, 8.85639e-4)
    np.testing.assert_allclose(per_dynamic[3].data[:, :, 1, 2], expected, rtol=1e-6)
    np.testing.assert_array_equal(per_dynamic[0].affine, _nibabel(par)[0])

    per_echo = read_series(par, measurement="dynamic")
    assert len(per_echo) == 6
    np.testing.assert_array_equal(per_echo[0].protocol.times, [0.0, 71.29])
    assert per_echo[0].meta["EchoTime"] == 0.00142

    with pytest.raises(ValidationError):
        load(par)  # the registry passes no measurement: same clear error


def test_measurement_that_does_not_vary_is_refused():
    with pytest.raises(ValidationError) as exc:
        read_series(EPI, measurement="echo")
    assert "dynamic (3 values)" in _one_line(exc)


def test_field_strength_option():
    (vol,) = read_series(VARSCALE, magnetic_field_strength=3)
    assert vol.meta["MagneticFieldStrength"] == 3.0
    with pytest.raises(ValidationError):
        read_series(VARSCALE, magnetic_field_strength=3000)


def test_field_strength_goes_to_multi_echo_protocol(tmp_path):
    par, _ = _with_rec(tmp_path, "T1_3echo_mag_real_imag_phase.PAR")
    (vol,) = read_series(par, magnetic_field_strength=1.5)
    assert vol.protocol.magnetic_field_strength == 1.5


# ----------------------------------------------------------------------------- errors


def test_par_without_rec(tmp_path):
    par = _copy_pair(tmp_path, EPI, "alone", rec_ext=None)
    with pytest.raises(ReadError) as exc:
        read_series(par)
    msg = _one_line(exc)
    assert "alone.REC is missing" in msg and "copy the .REC" in msg
    with pytest.raises(ReadError):
        load(par)


def test_rec_without_par(tmp_path):
    rec = tmp_path / "orphan.REC"
    shutil.copyfile(EPI.with_suffix(".REC"), rec)
    with pytest.raises(ReadError) as exc:
        read_series(rec)
    msg = _one_line(exc)
    assert "orphan.PAR is missing" in msg and "copy the .PAR" in msg


def test_truncated_rec(tmp_path):
    par = _copy_pair(tmp_path, EPI, "short", rec_bytes=100_000)
    with pytest.raises(ReadError) as exc:
        read_series(par)
    msg = _one_line(exc)
    # 27 images of 64x64 16-bit pixels = 221184 bytes
    assert "truncated" in msg and "100000 bytes" in msg and "221184 bytes" in msg
    empty = _copy_pair(tmp_path, EPI, "empty", rec_bytes=0)
    with pytest.raises(ReadError):
        read_series(empty)


def test_unsupported_par_version(tmp_path):
    par = _copy_pair(tmp_path, EPI, "v3")
    text = par.read_text()
    assert "image export tool     V4.2" in text
    par.write_text(text.replace("image export tool     V4.2", "image export tool     V3"))
    with pytest.raises(ReadError) as exc:
        read_series(par)
    msg = _one_line(exc)
    assert "'V3' is currently not supported" in msg  # nibabel's reason
    assert "V4.2" in msg and "export" in msg


def test_not_a_par_file(tmp_path):
    par = tmp_path / "junk.PAR"
    par.write_text("this is not a PAR header\n")
    (tmp_path / "junk.REC").write_bytes(b"\0" * 16)
    with pytest.raises(ReadError) as exc:
        read_series(par)
    assert "not a Philips PAR header" in _one_line(exc)
    cut = _copy_pair(tmp_path, EPI, "cut")
    cut.write_text(cut.read_text()[:9000])  # ends inside the image lines
    with pytest.raises(ReadError) as exc:
        read_series(cut)
    assert "not a PAR header nibabel can read" in _one_line(exc)
    other = tmp_path / "image.txt"
    other.write_text("x")
    with pytest.raises(ReadError):
        read_series(other)
    with pytest.raises(ReadError):
        read_series(tmp_path / "nothing.PAR")


def test_latin1_protocol_name(tmp_path):
    # Philips consoles write names in a Windows code page, not UTF-8
    par = _copy_pair(tmp_path, EPI, "latin")
    par.write_bytes(par.read_bytes().replace(b"EPI_asc CLEAR", "EPI_äsc CLEAR".encode("latin-1")))
    (vol,) = read_series(par)
    assert vol.meta["SeriesDescription"] == "EPI_äsc CLEAR"


@pytest.mark.parametrize("options, words", [
    ({"scaling": "raw"}, "scaling='raw'"),
    ({"measurement": "te"}, "measurement='te'"),
    ({"measurement": ["echo"]}, "measurement=['echo']"),
    ({"image_type": "complex"}, "image_type='complex'"),
    ({"image_type": 1.5}, "image_type=1.5"),
])
def test_bad_options(options, words):
    with pytest.raises(ValidationError) as exc:
        read_series(EPI, **options)
    assert words in _one_line(exc)


def test_echo_times_must_make_a_valid_protocol(tmp_path):
    par, _ = _with_rec(tmp_path, "T1_3echo_mag_real_imag_phase.PAR")
    text = par.read_text()
    # give echo 2 the echo time of echo 1 (column "echo" 3.28 -> 1.29 ms)
    par.write_text(text.replace(" 3.28 ", " 1.29 "))
    with pytest.raises(ProtocolError) as exc:
        read_series(par)
    assert "appears twice" in _one_line(exc)
