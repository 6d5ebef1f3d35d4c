"""The DICOM reader against dcm2niix, run for real on the same files.

For every test series, ``dcm2niix -b y -z n -f %s_%e`` converts the folder;
its NIfTI files (one per echo) and JSON sidecars are the reference for our
affine (RAS+ mm), shape, voxel values and echo times. Both images are
brought to the closest canonical (RAS) voxel order with nibabel first,
because dcm2niix flips the row axis while oncomri keeps the DICOM order.

dcm2niix is a declared system dependency (the Makefile installs it): these
tests fail, with a message saying so, when it is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from dicom_factory import example_affine, write_classic_series, write_enhanced_series
from oncomri.io.dicom import read_series
from oncomri.sim import relaxometry_phantom

DCM2NIIX = Path("/usr/bin/dcm2niix")
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
#: MR_small and its encodings that dcm2niix decodes (its Debian build has no
#: JPEG-LS decoder, so MR_small_jpeg_ls_lossless.dcm is compared in
#: test_dicom.py against the uncompressed file instead).
REAL_FILES = ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm",
              "MR_small_expb.dcm", "MR_small_implicit.dcm", "MR_small_jp2klossless.dcm",
              "MR_small_padded.dcm"]
TE = np.array([0.0021, 0.0057, 0.0093, 0.0129])


@pytest.fixture(scope="module")
def dcm2niix() -> Path:
    found = DCM2NIIX if DCM2NIIX.is_file() else (Path(p) if (p := shutil.which("dcm2niix"))
                                                else None)
    if found is None:
        pytest.fail("dcm2niix is not installed (expected /usr/bin/dcm2niix); it is a declared "
                    "system dependency of oncomri's tests: apt-get install dcm2niix")
    return found


@pytest.fixture(scope="module")
def phantom():
    return relaxometry_phantom(shape=(18, 14, 6), echo_times=TE, values=(0.004, 0.02, 0.05),
                               snr=40.0, rng=11)


def _convert(dcm2niix: Path, folder: Path, out: Path) -> list[tuple[nib.Nifti1Image, dict]]:
    out.mkdir()
    proc = subprocess.run([str(dcm2niix), "-b", "y", "-z", "n", "-f", "%s_%e", "-o", str(out),
                           str(folder)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"dcm2niix failed on {folder}: {proc.stdout}{proc.stderr}"
    results = []
    for nii in sorted(out.glob("*.nii")):
        sidecar = json.loads(nii.with_suffix(".json").read_text())
        results.append((nib.load(nii), sidecar))
    assert results, f"dcm2niix wrote no NIfTI for {folder}: {proc.stdout}"
    return sorted(results, key=lambda r: r[1].get("EchoTime", 0.0))


def _compare(folder: Path, reference, *, echo_times=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        (vol,) = read_series(folder)
    ours = nib.as_closest_canonical(nib.Nifti1Image(vol.data, vol.affine))
    data = np.asarray(ours.dataobj, dtype=np.float64)
    if data.ndim == 3:
        data = data[..., None]
    assert data.shape[3] == len(reference), (
        f"oncomri reads {data.shape[3]} measurements, dcm2niix wrote {len(reference)} files")
    for m, (img, sidecar) in enumerate(reference):
        theirs = nib.as_closest_canonical(img)
        np.testing.assert_allclose(ours.affine, theirs.affine, rtol=0, atol=1e-3)
        tdata = theirs.get_fdata(dtype=np.float64)
        if tdata.ndim == 4:
            assert tdata.shape[3] == 1
            tdata = tdata[..., 0]
        assert data.shape[:3] == tdata.shape
        scale = max(1.0, float(np.abs(tdata).max()))
        np.testing.assert_allclose(data[..., m], tdata, rtol=1e-6, atol=1e-6 * scale)
        te = vol.meta["EchoTime"][m] if isinstance(vol.meta["EchoTime"], list) \
            else vol.meta["EchoTime"]
        assert te == pytest.approx(sidecar["EchoTime"], abs=1e-6)
    if echo_times is not None:
        np.testing.assert_allclose(vol.protocol.echo_times,
                                   [s["EchoTime"] for _, s in reference], atol=1e-6)
        np.testing.assert_allclose(vol.protocol.echo_times, echo_times, atol=1e-9)
    return vol


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_mr_files_match_dcm2niix(tmp_path, dcm2niix, name):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(TEST_FILES / name, folder / name)
    ref = _convert(dcm2niix, folder, tmp_path / "out")
    vol = _compare(folder, ref)
    assert vol.data.shape == (64, 64, 1)


def test_classic_multi_echo_matches_dcm2niix(tmp_path, dcm2niix, phantom):
    write_classic_series(tmp_path / "in", phantom.data * 3.0, example_affine(), echo_times=TE,
                         rescale_slope=0.5, rescale_intercept=-12.0)
    ref = _convert(dcm2niix, tmp_path / "in", tmp_path / "out")
    assert len(ref) == 4
    _compare(tmp_path / "in", ref, echo_times=TE)


def test_oblique_reversed_classic_series_matches_dcm2niix(tmp_path, dcm2niix, phantom):
    affine = example_affine((0.9, 1.1, 3.0), oblique=True, origin=(5.0, -60.0, 20.0))
    write_classic_series(tmp_path / "in", phantom.data, affine, echo_times=TE,
                         reverse_files=True)
    ref = _convert(dcm2niix, tmp_path / "in", tmp_path / "out")
    vol = _compare(tmp_path / "in", ref, echo_times=TE)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-4)


def test_enhanced_multi_echo_matches_dcm2niix(tmp_path, dcm2niix, phantom):
    # dcm2niix splits enhanced MR into echoes by its Philips rules, so the
    # synthetic object says Philips (the vendor that exports enhanced MR most).
    write_enhanced_series(tmp_path / "in" / "emr.dcm", phantom.data,
                          example_affine(oblique=True), echo_times=TE, frame_order="random",
                          manufacturer="Philips Medical Systems", rescale_slope=0.5)
    ref = _convert(dcm2niix, tmp_path / "in", tmp_path / "out")
    assert len(ref) == 4
    _compare(tmp_path / "in", ref, echo_times=TE)


def test_philips_floating_point_scaling_matches_dcm2niix_default(tmp_path, dcm2niix, phantom):
    write_classic_series(tmp_path / "in", phantom.data * 10.0, example_affine(oblique=True),
                         echo_times=TE, rescale_slope=2.5, rescale_intercept=4.0,
                         manufacturer="Philips Medical Systems", philips_scale_slope=0.3)
    ref = _convert(dcm2niix, tmp_path / "in", tmp_path / "out")
    vol = _compare(tmp_path / "in", ref, echo_times=TE)
    assert vol.meta["PhilipsScaleSlope"] == pytest.approx(0.3)
