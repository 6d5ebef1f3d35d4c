"""``oncomri map t1|dce|dsc|adc|ivim|cest`` end to end through ``oncomri.cli.main.main``.

Each model kind is mapped twice from the same noiseless phantom with known
parameters: (a) a 4D NIfTI with its BIDS sidecar (and ``.bval`` for
diffusion), (b) a DICOM folder written by ``tests/io/dicom_factory.py``
(classic MR Image Storage, one file per slice and measurement, or one
Enhanced MR multi-frame file). The test checks the exit status, the
BIDS-named outputs (``<prefix>_<suffix>.nii.gz`` + JSON sidecar carrying
``Units``) and the main map against the truth. Then the four bad inputs of
issue 6 go through ``main``: exit status 2, exactly one stderr line
``oncomri: error: ...`` naming the input and the fix, nothing in ``--out``.

Phantoms (closed forms written here unless stated):

- T1: spoiled gradient echo ``M0 sin a (1-E)/(1 - cos a E)``, ``E = exp(-TR/T1)``;
  inversion recovery ``|M0 (1 - 2 exp(-TI/T1))|``.
- DCE: extended Tofts tissue curves of the Parker population AIF from the
  model module's public ``population_aif`` / ``extended_tofts`` (the CLI's
  AIF with its defaults: onset at the first post-baseline frame, Hct 0.42,
  4 knots per frame), turned into SPGR signal with the closed form above,
  ``R1 = 1/T1 + r1 C``.
- DSC: gamma-variate AIF convolved with ``exp(-t/MTT)`` in closed form
  (regularised incomplete gamma), T1-leakage term ``-λ ∫AIF``, as in
  tests/cli/test_map_dsc.py; ``S = S0 exp(-TE ΔR2*)``.
- ADC/IVIM: ``S0 exp(-b ADC)``; ``S0 (f exp(-b D*) + (1-f) exp(-b D))``.
- CEST: water + amide Lorentzians shifted by a known B0 per voxel;
  MTRasym truth is the closed form of the unshifted spectrum.

What DICOM cannot carry, and is passed on the command line here: the tissue
T1 and relaxivity of DCE (``--t1``, ``--relaxivity``: not acquisition
parameters), the baseline frame count, and the CEST saturation offsets
(``--offsets``: no standard DICOM attribute; vendors keep them in private
or free-text fields).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.special import gamma as gamma_fn
from scipy.special import gammainc

from oncomri.cli.main import main
from oncomri.models.aif import population_aif
from oncomri.models.dce import extended_tofts

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
from dicom_factory import (  # noqa: E402
    example_affine,
    write_classic_series,
    write_enhanced_series,
)

SHAPE = (6, 6, 2)
#: An axial stack as a scanner writes it (columns to the left, rows posterior);
#: the DICOM reader returns this affine, so masks written with it fit both inputs.
AFFINE = example_affine((2.0, 2.0, 4.0))


# ----------------------------------------------------------------- helpers


def _nifti(path: Path, data, sidecar=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), AFFINE), path)
    if sidecar is not None:
        path.with_name(path.name.replace(".nii.gz", ".json")).write_text(json.dumps(sidecar))
    return path


def _mask(path: Path, mask) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(mask, np.uint8), AFFINE), path)
    return path


def _main(argv, capsys):
    rc = main(["map", *[str(a) for a in argv]])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _ok(argv, capsys):
    rc, out, err = _main(argv, capsys)
    assert rc == 0, err
    assert "error" not in err, err
    return out


def _read(out: Path, suffix: str, prefix: str | None = None):
    """The map ``<prefix>_<suffix>.nii.gz`` (any prefix if None) and its sidecar."""
    pattern = f"{prefix}_{suffix}.nii.gz" if prefix else f"*_{suffix}.nii.gz"
    files = sorted(out.glob(pattern))
    assert len(files) == 1, f"{pattern}: {sorted(p.name for p in out.iterdir())}"
    side_path = files[0].with_name(files[0].name[:-7] + ".json")
    assert side_path.is_file(), f"no sidecar for {files[0].name}"
    side = json.loads(side_path.read_text())
    assert side.get("Units"), f"{side_path.name} has no Units"
    img = nib.load(files[0])
    np.testing.assert_allclose(img.affine, AFFINE, atol=1e-3)
    return np.asarray(img.dataobj, dtype=np.float64), side


def _dicom_prefix(description: str, number: int) -> str:
    """``acq-<label>_run-<n>``: the BIDS prefix of maps from a DICOM series."""
    words = [w for w in description.replace("-", "_").split("_") if w]
    label = words[0] + "".join(w[:1].upper() + w[1:] for w in words[1:])
    return f"acq-{label}_run-{number}"


def _write_dicom(writer: str, folder: Path, data, **kwargs) -> Path:
    """Write ``data`` as a DICOM series in ``folder`` (created) and return the folder.

    ``writer``: 'classic' (one MR Image Storage file per slice and measurement)
    or 'enhanced' (one Enhanced MR Image Storage multi-frame file).
    """
    if writer == "classic":
        write_classic_series(folder, data, AFFINE, **kwargs)
    else:
        write_enhanced_series(folder / "series.dcm", data, AFFINE, **kwargs)
    return folder


WRITERS = pytest.mark.parametrize("writer", ["classic", "enhanced"])


def _one_error_line(err: str, *words: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("oncomri: error:"), line
    for w in words:
        assert w in line, f"{w!r} not in {line!r}"
    return line


def _nothing_written(out: Path):
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())


# ----------------------------------------------------------------- T1

FA_DEG = np.array([2.0, 5.0, 10.0, 15.0, 20.0])
TR_VFA = 0.005
TI_S = np.array([0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2])
T1_TRUE = np.broadcast_to(np.linspace(0.4, 2.0, SHAPE[0])[:, None, None], SHAPE).copy()
M0_TRUE = np.broadcast_to(np.linspace(8000.0, 10000.0, SHAPE[1])[None, :, None], SHAPE).copy()


def _vfa_signal():
    a = np.deg2rad(FA_DEG)
    e = np.exp(-TR_VFA / T1_TRUE)[..., None]
    return M0_TRUE[..., None] * np.sin(a) * (1 - e) / (1 - np.cos(a) * e)


def _ir_signal():
    m0 = M0_TRUE[..., None] / 20.0
    return np.abs(m0 * (1 - 2 * np.exp(-TI_S / T1_TRUE[..., None])))


def test_t1_vfa_from_nifti(tmp_path, capsys):
    src = _nifti(tmp_path / "sub-01_ses-1_VFA.nii.gz", _vfa_signal(),
                 {"FlipAngle": FA_DEG.tolist(), "RepetitionTime": TR_VFA})
    out = tmp_path / "out"
    text = _ok(["t1", src, "--out", out], capsys)
    assert "variable flip angle" in text
    t1, side = _read(out, "T1map", "sub-01_ses-1")
    assert side["Units"] == "s"
    np.testing.assert_allclose(t1, T1_TRUE, rtol=1e-4)
    r1, side = _read(out, "R1map", "sub-01_ses-1")
    assert side["Units"] == "1/s"
    np.testing.assert_allclose(r1, 1 / T1_TRUE, rtol=1e-4)
    m0, _ = _read(out, "M0map", "sub-01_ses-1")
    np.testing.assert_allclose(m0, M0_TRUE, rtol=1e-4)


@WRITERS
def test_t1_vfa_from_dicom(tmp_path, capsys, writer):
    # uint16 with slope 0.02: the signal (280 to 800) is stored to 0.01, < 4e-5 relative
    assert _vfa_signal().max() < 0.02 * 65535
    folder = _write_dicom(writer, tmp_path / "dicom", _vfa_signal(), flip_angles=FA_DEG,
                          repetition_time=TR_VFA, rescale_slope=0.02, dtype="uint16",
                          series_description="t1_vfa", series_number=5)
    out = tmp_path / "out"
    text = _ok(["t1", folder, "--out", out], capsys)
    assert "variable flip angle" in text
    t1, side = _read(out, "T1map", _dicom_prefix("t1_vfa", 5))
    assert side["Units"] == "s"
    np.testing.assert_allclose(t1, T1_TRUE, rtol=5e-4)  # measured 8e-5


def test_t1_inversion_recovery_from_enhanced_dicom(tmp_path, capsys):
    path = write_enhanced_series(tmp_path / "dicom" / "ir.dcm", _ir_signal(), AFFINE,
                                 inversion_times=TI_S, repetition_time=10.0,
                                 rescale_slope=0.02, dtype="uint16",
                                 series_description="t1_ir", series_number=6,
                                 frame_order="random")
    out = tmp_path / "out"
    text = _ok(["t1", path.parent, "--out", out], capsys)
    assert "inversion recovery" in text
    t1, side = _read(out, "T1map", _dicom_prefix("t1_ir", 6))
    assert side["Units"] == "s"
    np.testing.assert_allclose(t1, T1_TRUE, rtol=5e-4)  # measured 7e-5


# ----------------------------------------------------------------- DCE

DCE_T = np.arange(40) * 5.0
DCE_NB = 5
DCE_FA, DCE_TR, DCE_T1, DCE_R1 = 15.0, 0.005, 1.4, 4.5
KTRANS = np.broadcast_to(np.linspace(0.05, 0.3, SHAPE[0])[:, None, None] / 60.0, SHAPE).copy()
VE = np.broadcast_to(np.linspace(0.2, 0.45, SHAPE[1])[None, :, None], SHAPE).copy()
VP = np.broadcast_to(np.array([0.02, 0.06])[None, None, :], SHAPE).copy()


def _dce_signal():
    aif = population_aif("parker", DCE_T, onset=DCE_T[DCE_NB], hematocrit=0.42, oversample=4)
    conc = extended_tofts(DCE_T, aif, KTRANS, VE, VP)  # (6, 6, 2, 40)
    r1 = 1 / DCE_T1 + DCE_R1 * conc
    a = np.deg2rad(DCE_FA)
    e = np.exp(-DCE_TR * r1)
    return 3000.0 * np.sin(a) * (1 - e) / (1 - np.cos(a) * e)


DCE_ARGS = ["--t1", f"{DCE_T1}s", "--relaxivity", str(DCE_R1), "--baseline-frames", str(DCE_NB)]


def _check_dce(out, prefix, rtol):
    ktrans, side = _read(out, "Ktransmap", prefix)
    assert side["Units"] == "1/s"
    np.testing.assert_allclose(ktrans, KTRANS, rtol=rtol)
    ve, side = _read(out, "vemap", prefix)
    assert side["Units"] == "1"
    np.testing.assert_allclose(ve, VE, rtol=rtol)
    vp, _ = _read(out, "vpmap", prefix)
    np.testing.assert_allclose(vp, VP, rtol=rtol)
    _read(out, "desc-dcefit_status", prefix)


def test_dce_from_nifti(tmp_path, capsys):
    src = _nifti(tmp_path / "sub-01_ses-1_dce.nii.gz", _dce_signal(),
                 {"FrameTimesStart": DCE_T.tolist(), "FlipAngle": DCE_FA,
                  "RepetitionTime": DCE_TR, "MagneticFieldStrength": 3.0})
    out = tmp_path / "out"
    _ok(["dce", src, "--out", out, *DCE_ARGS], capsys)
    _check_dce(out, "sub-01_ses-1", rtol=1e-4)  # measured 7e-7
    side = json.loads((out / "sub-01_ses-1_Ktransmap.json").read_text())
    assert side["FrameTimes_s"][:2] == [0.0, 5.0]


@WRITERS
def test_dce_from_dicom(tmp_path, capsys, writer):
    # frame times (acquisition times), flip angle, TR and field come from the headers;
    # the tissue T1 and r1 from the command line; signal 70 to 310 stored to 0.005
    folder = _write_dicom(writer, tmp_path / "dicom", _dce_signal(), frame_times=DCE_T,
                          flip_angle=DCE_FA, repetition_time=DCE_TR,
                          magnetic_field_strength=3.0, rescale_slope=0.01, dtype="uint16",
                          series_description="dce_vibe", series_number=9)
    out = tmp_path / "out"
    _ok(["dce", folder, "--out", out, *DCE_ARGS], capsys)
    _check_dce(out, _dicom_prefix("dce_vibe", 9), rtol=1e-3)  # measured 1.7e-4
    side = json.loads((out / f"{_dicom_prefix('dce_vibe', 9)}_Ktransmap.json").read_text())
    np.testing.assert_allclose(side["FrameTimes_s"], DCE_T, atol=1e-3)
    assert side["FlipAngle_deg"] == pytest.approx(DCE_FA) and side["MagneticFieldStrength_T"] == 3.0


# ----------------------------------------------------------------- DSC

DSC_T = np.arange(60, dtype=float)
DSC_TE = 0.03
AIF_P = (88.0, 15.0, 3.0, 1.5)  # A (1/s), t0 (s), alpha, beta (s)
TUMOUR = np.zeros(SHAPE, bool)
TUMOUR[1:3, 1:3, :] = True
REFERENCE = np.zeros(SHAPE, bool)
REFERENCE[3:6, 3:6, :] = True


def _gamma_conv(rate):
    """∫ AIF(u) exp(-rate (t-u)) du for the gamma-variate AIF, in closed form."""
    a_, t0, a, b = AIF_P
    tau = np.clip(DSC_T - t0, 0, None)
    k = 1.0 / b - rate
    return a_ * np.exp(-rate * tau) * gamma_fn(a + 1) * gammainc(a + 1, k * tau) / k ** (a + 1)


def _dsc_signal():
    """Normal tissue CBV 0.04 / MTT 4 s; leaky tumour CBV 0.08 / MTT 3 s: true rCBV 2."""
    normal = 0.01 * _gamma_conv(1 / 4.0)
    tumour = (0.08 / 3.0) * _gamma_conv(1 / 3.0) - 5e-4 * _gamma_conv(0.0)
    dr = np.broadcast_to(normal, SHAPE + (DSC_T.size,)).copy()
    dr[TUMOUR] = tumour
    return 1000.0 * np.exp(-DSC_TE * dr)


def _check_dsc(out, prefix):
    rcbv, side = _read(out, "rCBVmap", prefix)
    assert side["Units"] == "1"
    assert abs(rcbv[TUMOUR].mean() / 2.0 - 1) < 0.10  # issue 6: within 10 % (measured +7.6 %)
    np.testing.assert_allclose(rcbv[~TUMOUR], 1.0, rtol=1e-3)  # normal tissue, as the reference
    assert _read(out, "K2map", prefix)[1]["Units"] == "1/s"


def test_dsc_from_nifti(tmp_path, capsys):
    src = _nifti(tmp_path / "sub-01_ses-1_dsc.nii.gz", _dsc_signal(),
                 {"EchoTime": DSC_TE, "RepetitionTime": 1.0})
    ref = _mask(tmp_path / "ref.nii.gz", REFERENCE)
    out = tmp_path / "out"
    _ok(["dsc", src, "--out", out, "--baseline-frames", "10", "--reference-mask", ref], capsys)
    _check_dsc(out, "sub-01_ses-1")


@WRITERS
def test_dsc_from_dicom(tmp_path, capsys, writer):
    # echo time and frame times (acquisition times) come from the headers
    folder = _write_dicom(writer, tmp_path / "dicom", _dsc_signal(), frame_times=DSC_T,
                          echo_time=DSC_TE, repetition_time=1.0, rescale_slope=0.05,
                          dtype="uint16", series_description="dsc_perf", series_number=7)
    ref = _mask(tmp_path / "ref.nii.gz", REFERENCE)
    out = tmp_path / "out"
    _ok(["dsc", folder, "--out", out, "--baseline-frames", "10", "--reference-mask", ref],
        capsys)
    _check_dsc(out, _dicom_prefix("dsc_perf", 7))
    side = json.loads((out / f"{_dicom_prefix('dsc_perf', 7)}_rCBVmap.json").read_text())
    np.testing.assert_allclose(side["FrameTimes"], DSC_T, atol=1e-3)


# ----------------------------------------------------------------- ADC and IVIM

ADC_B = np.array([0.0, 500.0, 1000.0])
ADC_TRUE = np.broadcast_to(np.linspace(0.5e-3, 2.5e-3, SHAPE[0])[:, None, None], SHAPE).copy()
IVIM_B = np.array([0.0, 10, 20, 50, 100, 200, 400, 600, 800, 1000])
IVIM_F = np.broadcast_to(np.linspace(0.05, 0.3, SHAPE[0])[:, None, None], SHAPE).copy()
IVIM_D = np.broadcast_to(np.linspace(0.7e-3, 1.5e-3, SHAPE[1])[None, :, None], SHAPE).copy()
IVIM_DSTAR = 0.03


def _adc_signal():
    return 1000.0 * np.exp(-ADC_TRUE[..., None] * ADC_B)


def _ivim_signal():
    f, d = IVIM_F[..., None], IVIM_D[..., None]
    return 1000.0 * (f * np.exp(-IVIM_DSTAR * IVIM_B) + (1 - f) * np.exp(-d * IVIM_B))


def _dwi(folder: Path, data, b) -> Path:
    path = _nifti(folder / "sub-01_ses-1_dwi.nii.gz", data)
    (folder / "sub-01_ses-1_dwi.bval").write_text(" ".join(f"{v:g}" for v in b) + "\n")
    return path


def test_adc_from_nifti(tmp_path, capsys):
    src = _dwi(tmp_path / "in", _adc_signal(), ADC_B)
    out = tmp_path / "out"
    _ok(["adc", src, "--out", out], capsys)
    adc, side = _read(out, "ADCmap", "sub-01_ses-1")
    assert side["Units"] == "mm^2/s"
    np.testing.assert_allclose(adc, ADC_TRUE, rtol=1e-4)
    s0, _ = _read(out, "S0map", "sub-01_ses-1")
    np.testing.assert_allclose(s0, 1000.0, rtol=1e-4)


def test_adc_from_enhanced_dicom(tmp_path, capsys):
    vectors = np.array([[0, 0, 0], [1, 0, 0], [1, 0, 0]], float)
    path = write_enhanced_series(tmp_path / "dicom" / "dwi.dcm", _adc_signal(), AFFINE,
                                 b_values=ADC_B, b_vectors=vectors, rescale_slope=0.05,
                                 series_description="ep2d_diff", series_number=3)
    out = tmp_path / "out"
    _ok(["adc", path.parent, "--out", out], capsys)
    adc, side = _read(out, "ADCmap", _dicom_prefix("ep2d_diff", 3))
    assert side["Units"] == "mm^2/s" and side["BValues"] == ADC_B.tolist()
    # int16 with slope 0.05 stores the signal (>= 80) to 0.025: < 1e-3 in ADC
    np.testing.assert_allclose(adc, ADC_TRUE, rtol=1e-3)


def _check_ivim(out, prefix, rtol_d, rtol_f):
    d, side = _read(out, "Dmap", prefix)
    assert side["Units"] == "mm^2/s"
    np.testing.assert_allclose(d, IVIM_D, rtol=rtol_d)
    f, side = _read(out, "fmap", prefix)
    assert side["Units"] == "1"
    np.testing.assert_allclose(f, IVIM_F, rtol=rtol_f)
    assert _read(out, "Dstarmap", prefix)[1]["Units"] == "mm^2/s"


def test_ivim_from_nifti(tmp_path, capsys):
    src = _dwi(tmp_path / "in", _ivim_signal(), IVIM_B)
    out = tmp_path / "out"
    _ok(["ivim", src, "--out", out, "--method", "full"], capsys)
    _check_ivim(out, "sub-01_ses-1", 1e-4, 1e-4)
    dstar, _ = _read(out, "Dstarmap", "sub-01_ses-1")
    np.testing.assert_allclose(dstar, IVIM_DSTAR, rtol=1e-3)


def test_ivim_from_classic_dicom_private_b_values(tmp_path, capsys):
    folder = tmp_path / "dicom"
    # b-values only in Siemens' private (0019,100C), as older Siemens classic files have them
    write_classic_series(folder, _ivim_signal(), AFFINE, b_values=IVIM_B,
                         standard_b_value=False, manufacturer="SIEMENS",
                         rescale_slope=0.05, series_description="ivim", series_number=4)
    out = tmp_path / "out"
    _ok(["ivim", folder, "--out", out], capsys)
    # default segmented fit: D from b >= 200, where exp(-200 D*) = 2.5e-3 of the perfusion
    # part remains (measured 2.3e-3 in D and f)
    _check_ivim(out, _dicom_prefix("ivim", 4), rtol_d=1e-2, rtol_f=1e-2)


# ----------------------------------------------------------------- CEST

CEST_OFFSETS = np.concatenate([[-300.0], np.arange(-6.0, 6.0001, 0.1)])
CEST_POOLS = [(0.8, 1.5, 0.0), (0.05, 0.8, 3.5)]  # amplitude, FWHM (ppm), position (ppm)
CEST_SHIFT = np.broadcast_to(np.linspace(-0.3, 0.3, SHAPE[0])[:, None, None], SHAPE).copy()


def _z(offsets, shift):
    x = np.asarray(offsets, float)
    z = np.ones(np.shape(shift) + x.shape)
    for a, w, pos in CEST_POOLS:
        g = (w / 2) ** 2
        d = x - (pos + np.asarray(shift, float)[..., None])
        z = z - a * g / (g + d * d)
    return z


def _cest_signal():
    m0 = np.full(SHAPE + (1,), 1000.0)
    return np.concatenate([m0, 1000.0 * _z(CEST_OFFSETS[1:], CEST_SHIFT)], axis=-1)


MTR_TRUE = float(np.subtract(*_z([-3.5, 3.5], 0.0)))


def _check_cest(out, prefix):
    mtr, side = _read(out, "desc-MTRasym3p5ppm_CESTmap", prefix)
    assert side["Units"] == "1" and side["SaturationOffset"] == 3.5
    np.testing.assert_allclose(mtr, MTR_TRUE, rtol=5e-3)  # measured 6e-4
    b0, side = _read(out, "desc-ppm_B0map", prefix)
    assert side["Units"] == "ppm"
    np.testing.assert_allclose(b0, CEST_SHIFT, atol=2e-3)  # measured 4e-4 ppm
    _read(out, "M0map", prefix)


def test_cest_from_nifti(tmp_path, capsys):
    src = _nifti(tmp_path / "sub-01_ses-1_cest.nii.gz", _cest_signal(),
                 {"SaturationOffsets": CEST_OFFSETS.tolist(), "MagneticFieldStrength": 3.0})
    out = tmp_path / "out"
    _ok(["cest", src, "--out", out], capsys)
    _check_cest(out, "sub-01_ses-1")
    assert _read(out, "desc-Hz_B0map", "sub-01_ses-1")[1]["Units"] == "Hz"


@WRITERS
def test_cest_from_dicom_offsets_on_command_line(tmp_path, capsys, writer):
    # one repetition per offset, acquired 4 s apart; the offsets themselves have no
    # standard DICOM attribute, so they come from --offsets
    folder = _write_dicom(writer, tmp_path / "dicom", _cest_signal(),
                          frame_times=np.arange(CEST_OFFSETS.size) * 4.0,
                          rescale_slope=0.02, dtype="uint16", magnetic_field_strength=3.0,
                          series_description="cest_apt", series_number=11)
    out = tmp_path / "out"
    offsets = ",".join(f"{v:g}" for v in CEST_OFFSETS) + "ppm"
    _ok(["cest", folder, "--out", out, f"--offsets={offsets}"], capsys)
    _check_cest(out, _dicom_prefix("cest_apt", 11))
    b0_hz, side = _read(out, "desc-Hz_B0map", _dicom_prefix("cest_apt", 11))
    assert side["MagneticFieldStrength"] == 3.0  # the field from the DICOM header


# ----------------------------------------------------------------- bad input: exit 2, one line


def test_dce_non_increasing_frame_times(tmp_path, capsys):
    times = DCE_T.tolist()
    times[12] = times[11]
    src = _nifti(tmp_path / "sub-01_dce.nii.gz", _dce_signal(),
                 {"FrameTimesStart": times, "FlipAngle": DCE_FA, "RepetitionTime": DCE_TR,
                  "MagneticFieldStrength": 3.0})
    out = tmp_path / "out"
    rc, _, err = _main(["dce", src, "--out", out, *DCE_ARGS], capsys)
    assert rc == 2
    _one_error_line(err, "FrameTimesStart", "sub-01_dce", "increas")
    _nothing_written(out)


def test_dce_non_increasing_times_option(tmp_path, capsys):
    src = _nifti(tmp_path / "sub-01_dce.nii.gz", _dce_signal(),
                 {"FlipAngle": DCE_FA, "RepetitionTime": DCE_TR, "MagneticFieldStrength": 3.0})
    times = ",".join(f"{v:g}" for v in DCE_T[::-1]) + "s"
    out = tmp_path / "out"
    rc, _, err = _main(["dce", src, "--out", out, "--times", times, *DCE_ARGS], capsys)
    assert rc == 2
    _one_error_line(err, "--times", "increas")
    _nothing_written(out)


def test_dsc_non_increasing_frame_times(tmp_path, capsys):
    times = DSC_T.tolist()
    times[20] = times[19]
    src = _nifti(tmp_path / "sub-01_dsc.nii.gz", _dsc_signal(),
                 {"EchoTime": DSC_TE, "FrameTimesStart": times})
    out = tmp_path / "out"
    rc, _, err = _main(["dsc", src, "--out", out], capsys)
    assert rc == 2
    _one_error_line(err, "FrameTimesStart", "sub-01_dsc", "frame 20")
    _nothing_written(out)


def test_t1_flip_angles_in_radians(tmp_path, capsys):
    src = _nifti(tmp_path / "sub-01_VFA.nii.gz", _vfa_signal(),
                 {"FlipAngle": np.deg2rad(FA_DEG).tolist(), "RepetitionTime": TR_VFA})
    out = tmp_path / "out"
    rc, _, err = _main(["t1", src, "--out", out], capsys)
    assert rc == 2
    _one_error_line(err, "sub-01_VFA", "FlipAngle", "radians", "degrees")
    _nothing_written(out)


def test_t1_flip_angle_option_without_degrees(tmp_path, capsys):
    src = _nifti(tmp_path / "sub-01_VFA.nii.gz", _vfa_signal(), {"RepetitionTime": TR_VFA})
    out = tmp_path / "out"
    rad = ",".join(f"{v:.4f}" for v in np.deg2rad(FA_DEG))
    rc, _, err = _main(["t1", src, "--out", out, "--flip-angles", rad], capsys)
    assert rc == 2
    _one_error_line(err, "--flip-angles", "degrees")
    _nothing_written(out)


def test_dce_flip_angle_in_radians(tmp_path, capsys):
    src = _nifti(tmp_path / "sub-01_dce.nii.gz", _dce_signal(),
                 {"FrameTimesStart": DCE_T.tolist(), "FlipAngle": float(np.deg2rad(DCE_FA)),
                  "RepetitionTime": DCE_TR, "MagneticFieldStrength": 3.0})
    out = tmp_path / "out"
    rc, _, err = _main(["dce", src, "--out", out, *DCE_ARGS], capsys)
    assert rc == 2
    _one_error_line(err, "sub-01_dce", "FlipAngle", "radians", "degrees")
    _nothing_written(out)


def test_bval_table_does_not_match_volumes(tmp_path, capsys):
    src = _dwi(tmp_path / "in", _adc_signal(), ADC_B)
    (tmp_path / "in" / "sub-01_ses-1_dwi.bval").write_text("0 1000\n")
    out = tmp_path / "out"
    rc, _, err = _main(["adc", src, "--out", out], capsys)
    assert rc == 2
    _one_error_line(err, "sub-01_ses-1_dwi.bval", "2 b-values", "3 volumes",
                    "one b-value per volume")
    _nothing_written(out)


def test_bval_option_does_not_match_dicom_volumes(tmp_path, capsys):
    folder = tmp_path / "dicom"
    write_classic_series(folder, _ivim_signal(), AFFINE, b_values=IVIM_B, rescale_slope=0.05,
                         series_description="ivim", series_number=4)
    bval = tmp_path / "short.bval"
    bval.write_text(" ".join(f"{v:g}" for v in IVIM_B[:-1]) + "\n")
    out = tmp_path / "out"
    rc, _, err = _main(["ivim", folder, "--out", out, "--bval", bval], capsys)
    assert rc == 2
    _one_error_line(err, "short.bval", f"{IVIM_B.size - 1} b-values", f"{IVIM_B.size} volumes")
    _nothing_written(out)


def test_cest_offsets_without_m0(tmp_path, capsys):
    offsets = CEST_OFFSETS[1:]  # saturated offsets only: no unsaturated M0 volume
    src = _nifti(tmp_path / "sub-01_cest.nii.gz", _cest_signal()[..., 1:],
                 {"SaturationOffsets": offsets.tolist(), "MagneticFieldStrength": 3.0})
    out = tmp_path / "out"
    rc, _, err = _main(["cest", src, "--out", out], capsys)
    assert rc == 2
    _one_error_line(err, "sub-01_cest", "M0", "--m0-index")
    _nothing_written(out)


def test_cest_dicom_without_offsets(tmp_path, capsys):
    folder = _write_dicom("enhanced", tmp_path / "dicom", _cest_signal(),
                          frame_times=np.arange(CEST_OFFSETS.size) * 4.0, rescale_slope=0.02,
                          dtype="uint16", series_description="cest_apt", series_number=11)
    out = tmp_path / "out"
    rc, _, err = _main(["cest", folder, "--out", out], capsys)
    assert rc == 2
    _one_error_line(err, "no saturation offsets", "--offsets")
    _nothing_written(out)
