"""oncomri measure / quant / plan from the command line, with hand-checked numbers."""

import json

import nibabel as nib
import numpy as np
import pytest

from oncomri.cli.main import main

AFFINE = np.diag([0.5, 0.5, 2.0, 1.0])


def _save(path, data, affine=AFFINE, units=None):
    nib.save(nib.Nifti1Image(np.asarray(data), affine), path)
    if units:
        path.with_name(path.name.replace(".nii.gz", ".json")).write_text(json.dumps({"Units": units}))
    return path


def _one_error_line(capsys):
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("oncomri: error:"), err
    return err[0]


@pytest.fixture
def r2star_map(tmp_path):
    data = np.full((8, 8, 3), 30.0, np.float32)
    data[2:4, 2:4, 1] = [[10.0, 20.0], [30.0, 40.0]]  # label 1: mean 25, biased SD sqrt(125)
    return _save(tmp_path / "sub-01_R2starmap.nii.gz", data, units="1/s")


def test_measure_prints_and_writes_hand_checked_statistics(tmp_path, r2star_map, capsys):
    roi = np.zeros((8, 8, 3), np.uint8)
    roi[2:4, 2:4, 1] = 1
    roi[5:7, 5:7, 0:2] = 2
    _save(tmp_path / "roi.nii.gz", roi)
    stem = tmp_path / "out" / "stats"
    assert main(["measure", str(r2star_map), "--roi", str(tmp_path / "roi.nii.gz"), "--out", str(stem)]) == 0
    out = capsys.readouterr().out
    assert "sub-01_R2starmap.nii.gz" in out and "1/s" in out
    rows = json.loads(stem.with_suffix(".json").read_text())["rows"]
    one, two = rows
    assert one["n_voxels"] == 4 and one["volume_mm3"] == pytest.approx(4 * 0.5 * 0.5 * 2.0)
    assert one["mean"] == pytest.approx(25.0) and one["sd"] == pytest.approx(np.sqrt(125.0))
    assert two["n_voxels"] == 8 and two["mean"] == pytest.approx(30.0)
    assert stem.with_suffix(".csv").read_text().splitlines()[0].startswith("map,label,n_voxels")


def test_measure_resamples_a_roi_drawn_on_another_grid(tmp_path, r2star_map, capsys):
    fine = np.zeros((16, 16, 3), bool)  # the same region on a grid twice as fine in-plane
    fine[4:8, 4:8, 1] = True
    _save(tmp_path / "roi_fine.nii.gz", fine.astype(np.uint8),
          np.diag([0.25, 0.25, 2.0, 1.0]) @ np.array([[1, 0, 0, -0.5], [0, 1, 0, -0.5], [0, 0, 1, 0], [0, 0, 0, 1]]))
    stem = tmp_path / "s"
    assert main(["measure", str(r2star_map), "--roi", str(tmp_path / "roi_fine.nii.gz"), "--out", str(stem)]) == 0
    row = json.loads(stem.with_suffix(".json").read_text())["rows"][0]
    assert row["n_voxels"] == 4 and row["mean"] == pytest.approx(25.0)


def test_quant_iron_chain_by_hand(tmp_path, capsys):
    # 57.0 1/s at 3 T in saline (r2* = 57.0, Knobloch 2018) -> 1 mM; 2 mm3 -> 2 nmol = 0.11169 ug
    assert main(["quant", "iron", "--delta-r2star", "57", "--agent", "ferumoxytol", "--field", "3T",
                 "--medium", "saline", "--volume", "2", "--iron-per-cell", "10pg",
                 "--out", str(tmp_path / "iron")]) == 0
    result = json.loads((tmp_path / "iron.json").read_text())["rows"][0]
    assert result["mean_iron_concentration_mM"] == pytest.approx(1.0)
    assert result["iron_ug"] == pytest.approx(2e-9 * 55.845 * 1e6)
    assert result["cells"] == pytest.approx(2e-9 * 55.845 * 1e12 / 10)


def test_quant_lic_by_hand(capsys):
    assert main(["quant", "lic", "--r2star", "100", "--calibration", "wood2005", "--field", "1.5T"]) == 0
    assert "2.742" in capsys.readouterr().out  # 0.0254 * 100 + 0.202


def test_plan_detection_limit_and_power(tmp_path, capsys):
    assert main(["plan", "detection-limit", "--voxel-size", "0.1,0.1,0.5mm", "--echo-times",
                 "2,4,6,8,10,12ms", "--snr", "30", "--iron-per-cell", "10pg", "--relaxivity", "57",
                 "--t2star", "20ms", "--out", str(tmp_path / "dl")]) == 0
    result = json.loads((tmp_path / "dl.json").read_text())["rows"][0]
    assert result["voxel_volume_mm3"] == pytest.approx(0.005)
    assert result["cells_per_voxel"] == pytest.approx(result["iron_mass_per_voxel_pg"] / 10)
    # Cohen (1992): d = 0.5, alpha 0.05, power 0.8 -> 64 per group
    assert main(["plan", "power", "--effect", "5", "--sd", "10"]) == 0
    assert "n_per_arm                64" in capsys.readouterr().out


def test_plan_kinetics_writes_csv_json_and_png(tmp_path, capsys):
    stem = tmp_path / "kin" / "nk"
    assert main(["plan", "kinetics", "--cells", "1e6", "--iron-per-cell", "10", "--doubling-time", "2",
                 "--region-volume", "100", "--relaxivity", "57", "--days", "4", "--threshold", "20",
                 "--out", str(stem)]) == 0
    rows = json.loads(stem.with_suffix(".json").read_text())["rows"]
    # no losses: label is conserved while label per cell halves every 2 days
    assert rows[-1]["total_label"] == pytest.approx(1e7) and rows[-1]["label_per_cell"] == pytest.approx(2.5)
    png = stem.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.parametrize("argv, words", [
    (["quant", "iron", "--delta-r2star", "57", "--agent", "unobtainium", "--field", "3T"], "not in the relaxivity table"),
    (["quant", "iron", "--delta-r2star", "57", "--agent", "ferumoxytol", "--field", "7T"], "relaxivity"),
    (["quant", "iron", "--delta-r2star", "57"], "--relaxivity"),
    (["quant", "iron", "--delta-r2star", "-3", "--relaxivity", "57"], "negative"),
    (["quant", "lic", "--r2star", "100", "--calibration", "wood2005", "--field", "3T"], "1.5 T"),
    (["plan", "kinetics", "--cells", "1e6", "--iron-per-cell", "10", "--doubling-time", "-2",
      "--region-volume", "100", "--relaxivity", "57", "--out", "OUT"], "doubling"),
    (["plan", "kinetics", "--cells", "1e6", "--iron-per-cell", "10", "--death-rate", "-0.1",
      "--region-volume", "100", "--relaxivity", "57", "--out", "OUT"], "death"),
    (["plan", "detection-limit", "--voxel-size", "0.1,0.1", "--echo-times", "2,4ms", "--snr", "30",
      "--iron-per-cell", "10", "--relaxivity", "57", "--t2star", "20ms"], "voxel"),
])
def test_bad_quant_and_plan_input_one_line_exit_2(tmp_path, capsys, argv, words):
    argv = [str(tmp_path / "o") if a == "OUT" else a for a in argv]
    assert main(argv) == 2
    assert words.lower() in _one_error_line(capsys).lower()
    assert not any(tmp_path.iterdir())


def test_measure_bad_rois(tmp_path, r2star_map, capsys):
    _save(tmp_path / "empty.nii.gz", np.zeros((8, 8, 3), np.uint8))
    assert main(["measure", str(r2star_map), "--roi", str(tmp_path / "empty.nii.gz"),
                 "--out", str(tmp_path / "s")]) == 2
    assert "empty" in _one_error_line(capsys).lower()
    far = np.eye(4)
    far[:3, 3] = 1000.0
    _save(tmp_path / "far.nii.gz", np.ones((8, 8, 3), np.uint8), far)
    assert main(["measure", str(r2star_map), "--roi", str(tmp_path / "far.nii.gz"),
                 "--out", str(tmp_path / "s")]) == 2
    assert "overlap" in _one_error_line(capsys).lower()
    assert not (tmp_path / "s.csv").exists()


def _ball(shape, centre, radius):
    grid = np.indices(shape).transpose(1, 2, 3, 0)
    return np.linalg.norm(grid - np.asarray(centre), axis=-1) <= radius


@pytest.mark.parametrize("ablation_centre, expected", [((15, 15, 15), "AM(+)"), ((15, 15, 22), "AM(-)")])
def test_margin_cli_on_concentric_and_crossing_zones(tmp_path, capsys, ablation_centre, expected):
    shape = (31, 31, 31)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    _save(tmp_path / "tumour.nii.gz", _ball(shape, (15, 15, 15), 5).astype(np.uint8), affine)
    _save(tmp_path / "zone.nii.gz", _ball(shape, ablation_centre, 10).astype(np.uint8), affine)
    assert main(["margin", "--tumour", str(tmp_path / "tumour.nii.gz"), "--ablation",
                 str(tmp_path / "zone.nii.gz"), "--out", str(tmp_path / "am")]) == 0
    result = json.loads((tmp_path / "am.json").read_text())["rows"][0]
    assert result["margin_class"] == expected
    if expected == "AM(+)":
        assert abs(result["min_margin_mm"] - 5.0) <= 1.0  # radius difference, within one voxel


def test_quant_f19_and_mpi_by_hand(tmp_path, capsys):
    assert main(["quant", "f19", "--signal", "50", "--reference-signal", "100", "--reference-atoms",
                 "1e18", "--fluorine-per-cell", "1e13", "--noise-sigma", "2",
                 "--out", str(tmp_path / "f")]) == 0
    f19 = json.loads((tmp_path / "f.json").read_text())["rows"][0]
    # second-moment noise correction of sample and reference: A = sqrt(M^2 - 2 sigma^2)
    assert f19["total_cells"] == pytest.approx(np.sqrt(2500 - 8) / np.sqrt(10000 - 8) * 1e18 / 1e13, rel=1e-6)
    cal = tmp_path / "cal.csv"
    cal.write_text("iron_ug,signal\n0,0.1\n0,-0.1\n0,0.0\n0.01,1.0\n0.1,10.0\n1,100\n10,1000\n")
    assert main(["quant", "mpi", "--calibration", str(cal), "--signal", "50", "--iron-per-cell", "25pg",
                 "--out", str(tmp_path / "m")]) == 0
    mpi = json.loads((tmp_path / "m.json").read_text())["rows"][0]
    assert mpi["iron_ug"] == pytest.approx(0.5, rel=1e-6) and mpi["cells"] == pytest.approx(0.5e6 / 25, rel=1e-6)


def test_plan_targeting_by_hand(capsys):
    # 10 pg Fe as magnetite (Fe3O4 / 3 Fe = 231.533 / 167.535) x 92 A m2/kg; F = m G at 40 mT/m
    assert main(["plan", "targeting", "--iron-per-cell", "10pg", "--gradient", "40mT/m"]) == 0
    out = capsys.readouterr().out
    moment = 10e-15 * (231.533 / (3 * 55.845)) * 92.0
    force_pn = moment * 0.040 * 1e12
    line = next(l for l in out.splitlines() if l.strip().startswith("force_pn"))
    assert float(line.split()[-1]) == pytest.approx(force_pn, rel=1e-3)


def test_measure_with_baseline_reports_paired_delta_r2star(tmp_path, r2star_map, capsys):
    pre = np.full((8, 8, 3), 20.0, np.float32)
    _save(tmp_path / "sub-01_ses-pre_R2starmap.nii.gz", pre, units="1/s")
    roi = np.zeros((8, 8, 3), np.uint8)
    roi[2:4, 2:4, 1] = 1
    _save(tmp_path / "roi.nii.gz", roi)
    stem = tmp_path / "delta"
    assert main(["measure", str(r2star_map), "--roi", str(tmp_path / "roi.nii.gz"), "--baseline",
                 str(tmp_path / "sub-01_ses-pre_R2starmap.nii.gz"), "--out", str(stem)]) == 0
    row = json.loads(stem.with_suffix(".json").read_text())["rows"][0]
    assert row["delta_r2star_per_s"] == pytest.approx(25.0 - 20.0)
    assert row["delta_r2star_percent"] == pytest.approx(25.0)
    assert "ΔR2* +5 1/s" in capsys.readouterr().out
    other = np.eye(4)
    other[0, 0] = 0.7
    _save(tmp_path / "moved.nii.gz", pre, other)
    assert main(["measure", str(r2star_map), "--roi", str(tmp_path / "roi.nii.gz"), "--baseline",
                 str(tmp_path / "moved.nii.gz"), "--out", str(stem)]) == 2
    assert "register" in _one_error_line(capsys)


def test_register_carries_a_baseline_roi_to_a_shifted_later_session(tmp_path, capsys):
    shape = (40, 40, 20)
    grid = np.indices(shape).astype(float)
    body = np.exp(-(((grid[0] - 20) / 12) ** 2 + ((grid[1] - 20) / 9) ** 2 + ((grid[2] - 10) / 6) ** 2))
    tumour = ((grid[0] - 24) ** 2 + (grid[1] - 18) ** 2 + ((grid[2] - 10) * 2) ** 2) <= 16
    image = (100 * body + 60 * tumour).astype(np.float32)
    base_affine = np.diag([1.0, 1.0, 2.0, 1.0])
    later_affine = base_affine.copy()
    later_affine[:3, 3] = [3.0, -2.0, 2.0]  # the animal lies 3 mm, -2 mm, 2 mm away at 24 h
    _save(tmp_path / "t2w_pre.nii.gz", image, base_affine)
    _save(tmp_path / "t2w_24h.nii.gz", image, later_affine)  # same anatomy, shifted in the scanner
    _save(tmp_path / "tumour.nii.gz", tumour.astype(np.uint8), base_affine)
    _save(tmp_path / "r2star_24h.nii.gz", image, later_affine)
    out = tmp_path / "reg"
    assert main(["register", str(tmp_path / "t2w_pre.nii.gz"), str(tmp_path / "t2w_24h.nii.gz"),
                 "--out", str(out), "--mask", str(tmp_path / "tumour.nii.gz"),
                 "--map", str(tmp_path / "r2star_24h.nii.gz")]) == 0
    carried = nib.load(out / "tumour_space-later.nii.gz")
    assert np.array_equal(carried.affine, nib.load(tmp_path / "t2w_24h.nii.gz").affine)
    inter = np.logical_and(carried.get_fdata() > 0, tumour).sum()
    assert 2 * inter / (tumour.sum() + (carried.get_fdata() > 0).sum()) >= 0.95
    back = nib.load(out / "r2star_24h_space-baseline.nii.gz").get_fdata()
    inside = tumour & np.isfinite(back)
    assert np.allclose(back[inside], image[inside], rtol=0.05)
    matrix = np.array(json.loads((out / "registration.json").read_text())["rows"][0]["fixed_to_moving_ras_mm"])
    np.testing.assert_allclose(matrix[:3, 3], [3.0, -2.0, 2.0], atol=0.5)
