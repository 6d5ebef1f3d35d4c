"""oncomri convert: BIDS layout per kind of series, and round trips through our readers."""

import json

import nibabel as nib
import numpy as np
import pytest

from oncomri.cli.main import main
from oncomri.core import (
    DiffusionProtocol,
    DynamicProtocol,
    InversionRecoveryProtocol,
    MultiEchoProtocol,
    ValidationError,
    VariableFlipAngleProtocol,
    Volume,
)
from oncomri.io import load_multi_echo, write_bids_series
from oncomri.io.convert import sidecar_from_meta

AFFINE = np.array([[0.5, 0, 0, -10], [0, 0.5, 0, 20], [0, 0, 1.0, 3], [0, 0, 0, 1]])


def _volume(n, protocol, **meta):
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 100, (6, 5, 3, n)).astype(np.float32)
    base = {"SeriesNumber": 7, "SeriesDescription": "test series", "MagneticFieldStrength": 9.4,
            "notes": ["made by the test"], "nifti_header": object()}
    return Volume(data, AFFINE, protocol=protocol, meta={**base, **meta})


def test_multi_echo_series_round_trips_through_the_per_echo_reader(tmp_path):
    te = [0.002, 0.004, 0.007]
    vol = _volume(3, MultiEchoProtocol(te), ScanningSequence="GR")
    files = write_bids_series(tmp_path, vol, subject="rat01", session="24h")
    names = sorted(f.name for f in files)
    assert names == [f"sub-rat01_ses-24h_acq-testSeries_run-7_echo-{k}_MEGRE.nii.gz" for k in (1, 2, 3)]
    assert files[0].parent == tmp_path / "sub-rat01" / "ses-24h" / "anat"
    back = load_multi_echo(list(reversed(files)))
    np.testing.assert_allclose(back.protocol.echo_times, te)
    np.testing.assert_array_equal(back.data, vol.data)
    np.testing.assert_allclose(back.affine, AFFINE, atol=1e-6)
    side = json.loads(files[1].with_name(files[1].name.replace(".nii.gz", ".json")).read_text())
    assert side["EchoTime"] == 0.004 and side["EchoNumber"] == 2
    assert side["MagneticFieldStrength"] == 9.4 and side["ConversionNotes"] == ["made by the test"]
    assert "nifti_header" not in side


def test_spin_echo_series_is_named_mese():
    from oncomri.io.bids import bids_layout

    vol = _volume(3, MultiEchoProtocol([0.01, 0.02, 0.03]), ScanningSequence="SE")
    assert bids_layout(vol) == ("MESE", "echo")


def test_diffusion_series_writes_bval_and_bvec(tmp_path):
    vol = _volume(3, DiffusionProtocol([0, 500, 1000], b_vectors=[[0, 0, 0], [1, 0, 0], [0, 1, 0]]))
    files = write_bids_series(tmp_path, vol)
    assert files[0].name == "sub-01_acq-testSeries_run-7_dwi.nii.gz" and files[0].parent.name == "dwi"
    bval = files[0].with_name(files[0].name.replace(".nii.gz", ".bval")).read_text().split()
    bvec = np.loadtxt(files[0].with_name(files[0].name.replace(".nii.gz", ".bvec")))
    assert bval == ["0", "500", "1000"] and bvec.shape == (3, 3) and bvec[0, 1] == 1.0
    assert nib.load(files[0]).shape == (6, 5, 3, 3)


@pytest.mark.parametrize("protocol, suffix, key, first", [
    (VariableFlipAngleProtocol(np.deg2rad([2.0, 10.0, 20.0]), 0.005), "VFA", "FlipAngle", 2.0),
    (InversionRecoveryProtocol([0.1, 0.5, 2.0]), "IRT1", "InversionTime", 0.1),
])
def test_flip_angle_and_inversion_series_are_split_per_measurement(tmp_path, protocol, suffix, key, first):
    files = write_bids_series(tmp_path, _volume(3, protocol))
    assert files[0].name.endswith(f"-1_{suffix}.nii.gz") and len(files) == 3
    side = json.loads(files[0].with_name(files[0].name.replace(".nii.gz", ".json")).read_text())
    assert side[key] == pytest.approx(first)


def test_dynamic_series_lists_frame_times(tmp_path):
    files = write_bids_series(tmp_path, _volume(3, DynamicProtocol([0.0, 4.5, 9.0])))
    side = json.loads(files[0].with_name(files[0].name.replace(".nii.gz", ".json")).read_text())
    assert side["FrameTimesStart"] == [0.0, 4.5, 9.0] and files[0].name.endswith("_dynamic.nii.gz")


def test_bad_labels_are_rejected_before_writing(tmp_path):
    with pytest.raises(ValidationError, match="letters and digits"):
        write_bids_series(tmp_path, _volume(3, DynamicProtocol([0.0, 1.0, 2.0])), subject="rat_01")
    assert not any(tmp_path.iterdir())


def test_sidecar_from_meta_keeps_only_json_fields():
    side = sidecar_from_meta({"EchoTime": np.float64(0.01), "x": np.arange(3), "bad": object(),
                              "nifti_header": 1, "_private": 2, "notes": []})
    assert side == {"EchoTime": 0.01, "x": [0, 1, 2]}


def test_convert_cli_on_real_per_echo_files(tmp_path, shared_data, capsys):
    src = shared_data / "mgre_kidney_3T" / "siemens" / "00025__bh3x_r2star_inphase_volume_e1.nii.gz"
    assert main(["convert", str(src), "--out", str(tmp_path), "--subject", "vol01"]) == 0
    out = capsys.readouterr().out
    written = list((tmp_path / "sub-vol01" / "anat").glob("*.nii.gz"))
    assert len(written) == 1 and "wrote 1 NIfTI files for 1 series" in out
    assert np.array_equal(nib.load(written[0]).affine, nib.load(src).affine)


def test_load_picks_a_split_series_by_number_and_position(tmp_path):
    """A DICOM series whose magnitude and phase images split into two volumes."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from dicom_factory import write_classic_series

    from oncomri.io import load

    data = np.random.default_rng(1).uniform(10, 100, (6, 5, 3)).astype(np.float32)
    write_classic_series(tmp_path, data, AFFINE, series_number=5, prefix="M",
                         image_type=("ORIGINAL", "PRIMARY", "M", "ND"))
    write_classic_series(tmp_path, data * 0.5, AFFINE, series_number=5, prefix="P",
                         series_uid=None, image_type=("ORIGINAL", "PRIMARY", "P", "ND"))
    with pytest.raises(ValidationError, match=r"5/1 .*5/2"):
        load(tmp_path, series=5)
    first, second = load(tmp_path, series="5/1"), load(tmp_path, series="5/2")
    assert {float(first.data.max()), float(second.data.max())} != {float(first.data.max())}
