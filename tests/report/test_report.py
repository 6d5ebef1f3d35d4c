"""The HTML study report: self-contained, complete, readable back, rendered by a real browser.

A small synthetic study (spec written and loaded here, measurement table
built here, tiny NIfTI maps/anatomy/ROIs in tmp_path) goes through
run_analyses and write_report. The browser check needs headless Chromium
(Debian package ``chromium``); without it the test fails and says so.
"""

from __future__ import annotations

import base64
import math
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from oncomri.report import (
    MethodsInfo,
    RepresentativeImage,
    choose_representatives,
    load_panel,
    write_report,
)
from oncomri.study.analysis import results_table, run_analyses
from oncomri.study.spec import load_spec

ARMS = ("control", "iv_nk", "ia_nk")
TIMES = (("baseline", "-1 h"), ("24h", "24 h"), ("8d", "8 d"))
N_PER_ARM = 4

SPEC_TAIL = """\
scans:
  megre: {path: "sub-{subject}/ses-{timepoint}/megre.nii.gz"}
  t2w: {path: "sub-{subject}/ses-{timepoint}/t2w.nii.gz"}
rois:
  tumour: {on: t2w, mask: "sub-{subject}/ses-{timepoint}/tumour.nii.gz"}
maps:
  r2star: {model: r2star, scan: megre, method: ncexp, noise_sigma: auto}
biomarkers:
  tumour_R2star: {map: r2star.R2starmap, roi: tumour, statistic: median}
  tumour_volume: {roi: tumour, measure: volume}
  tumour_diameter: {roi: tumour, measure: longest_diameter}
analyses:
  - {type: paired, name: r2_paired, biomarker: tumour_R2star, from: baseline, to: 24h}
  - {type: between_arms, name: dvol, biomarker: tumour_volume, timepoint: 8d, change: percent}
  - type: correlation
    name: corr
    x: {biomarker: tumour_R2star, timepoint: 24h, change: absolute}
    y: {biomarker: tumour_volume, timepoint: 8d, change: percent}
  - {type: mixed_model, name: mm, biomarker: tumour_R2star}
  - {type: response, name: resp, criteria: mrecist, biomarker: tumour_diameter}
  - {type: survival, name: surv, time: months, time_unit: month, event: recurred, group: arm}
"""

SECTION_HEADINGS = ("Study design", "Time courses", "Changes per arm", "Correlation", "Representative maps",
                    "Response", "Survival", "Statistics", "Methods", "Failures", "Study specification")

MAP_AFFINE = np.array([[1.0, 0, 0, 10.0], [0, 1.0, 0, -5.0], [0, 0, 2.0, 3.0], [0, 0, 0, 1]])
# anatomy/ROI: half the in-plane voxel size, same field of view, a small shift
ANAT_AFFINE = np.array([[0.5, 0, 0, 10.0 - 0.2], [0, 0.5, 0, -5.0 - 0.2], [0, 0, 2.0, 3.0], [0, 0, 0, 1]])


def _world(affine, shape):
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _ramp(affine, shape):
    """A linear function of world position: x + 100 y (exact under linear interpolation)."""
    w = _world(affine, shape)
    return (w[..., 0] + 100.0 * w[..., 1]).astype(np.float32)


def _write_images(folder: Path, subject: str, timepoint: str, rng) -> dict:
    d = folder / f"sub-{subject}" / f"ses-{timepoint}"
    d.mkdir(parents=True, exist_ok=True)
    shape_m, shape_a = (8, 8, 3), (16, 16, 3)
    r2 = rng.normal(40.0, 4.0, shape_m).astype(np.float32)
    roi = np.zeros(shape_a, np.uint8)
    roi[4:12, 4:12, 1] = 1   # largest in slice 1 (8x8 fine voxels = 4x4 map voxels)
    roi[4:8, 4:8, 2] = 1     # smaller in slice 2
    paths = {"map": d / "R2starmap.nii.gz", "t2w": d / "t2w.nii.gz", "roi": d / "tumour.nii.gz"}
    nib.save(nib.Nifti1Image(r2, MAP_AFFINE), str(paths["map"]))
    nib.save(nib.Nifti1Image(_ramp(ANAT_AFFINE, shape_a), ANAT_AFFINE), str(paths["t2w"]))
    nib.save(nib.Nifti1Image(roi, ANAT_AFFINE), str(paths["roi"]))
    return paths


def _spec_text(rng) -> str:
    lines = ["oncomri: 1", "name: report test study", "description: synthetic NK-cell study", "arms:"]
    lines += [f"  {a}: {{description: arm {a}}}" for a in ARMS]
    lines += ["timepoints:"] + [f"  {n}: {{time: {t}}}" for n, t in TIMES] + ["subjects:"]
    k = 0
    for arm in ARMS:
        for _ in range(N_PER_ARM):
            k += 1
            lines.append(f"  rat{k:02d}: {{arm: {arm}, covariates: {{months: {round(float(rng.uniform(2, 20)), 1)}, "
                         f"recurred: {'true' if rng.random() < 0.6 else 'false'}}}}}")
    return "\n".join(lines) + "\n" + SPEC_TAIL


def _table(design, rng) -> pd.DataFrame:
    growth = {"control": 0.5, "iv_nk": 0.1, "ia_nk": -0.7}
    rows = []
    for s in design.subjects:
        r0, v0 = rng.normal(40, 3), rng.normal(100, 10)
        for tp in design.timepoints:
            frac = max(tp.time_s, 0.0) / (8 * 86400.0)
            r2 = r0 + (20.0 if s.arm == "ia_nk" and tp.name == "24h" else 0.0) + rng.normal(0, 1)
            vol = v0 * (1 + growth[s.arm] * frac) * (1 + rng.normal(0, 0.03))
            for bm, val, unit, mp, st in (("tumour_R2star", r2, "1/s", "r2star.R2starmap", "median"),
                                          ("tumour_volume", vol, "mm^3", "", "volume"),
                                          ("tumour_diameter", (6 * vol / math.pi) ** (1 / 3), "mm", "",
                                           "longest_diameter")):
                rows.append(dict(subject=s.id, arm=s.arm, timepoint=tp.name, time_s=tp.time_s, biomarker=bm,
                                 value=val, unit=unit, roi="tumour", map=mp, statistic=st,
                                 method="ncexp" if mp else "voxel count", software_version="test"))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    rng = np.random.default_rng(7)
    folder = tmp_path_factory.mktemp("report_study")
    spec_text = _spec_text(rng)
    (folder / "study.yaml").write_text(spec_text)
    spec = load_spec(folder / "study.yaml")
    design = spec.design()
    table = _table(design, rng)
    maps, rois, scans = [], [], []
    for sid, tp in design.sessions:
        p = _write_images(folder / "data", sid, tp, rng)
        maps.append(dict(subject=sid, timepoint=tp, name="r2star", parameter="R2starmap", path=str(p["map"])))
        rois.append(dict(subject=sid, timepoint=tp, name="tumour", path=str(p["roi"])))
        scans.append(dict(subject=sid, timepoint=tp, role="t2w", path=str(p["t2w"])))
    images = choose_representatives(table, pd.DataFrame(maps), pd.DataFrame(rois), pd.DataFrame(scans),
                                    design=design, biomarker="tumour_R2star", parameter="R2starmap",
                                    anatomy_role="t2w")
    results = run_analyses(spec.analyses, table, design=design)
    methods = MethodsInfo(
        maps=[{"name": "r2star", "model": "r2star", "method": "ncexp", "scan": "megre", "noise_sigma": "auto"}],
        rois=[{"name": "tumour", "kind": "mask", "on": "t2w"}],
        biomarkers=[{"name": "tumour_R2star", "map": "r2star.R2starmap", "roi": "tumour", "statistic": "median",
                     "unit": "1/s"}],
        software={"oncomri": "test"}, n_sessions=len(design.sessions), n_failed=1, wall_time_s=42.0)
    failures = [{"subject": "rat99", "timepoint": "8d", "stage": "fit", "reason": "no echo files matched"}]
    out = folder / "out"
    path = write_report(out, design=design, table=table, analyses=results, images=images, methods=methods,
                        failures=failures, spec_text=spec_text, title="Report test")
    return {"path": path, "html": path.read_text(encoding="utf-8"), "results": results, "table": table,
            "design": design, "images": images, "out": out}


def test_report_is_self_contained(report):
    html = report["html"]
    assert report["path"].name == "report.html"
    assert html.startswith("<!DOCTYPE html>")
    low = html.lower()
    for bad in ('src="http', "src='http", "<link", 'href="http', "<script", "url(", "@import", "//cdn"):
        assert bad not in low, bad
    srcs = re.findall(r'src="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    for heading in SECTION_HEADINGS:
        assert f"<h2>{heading}</h2>" in html, heading
    assert "<details>" in html and "name: report test study" in html
    assert "figure could not be drawn" not in html
    # the failures section lists the failed session with its reason
    assert "rat99" in html and "no echo files matched" in html
    # methods paragraph with references: ncexp, mRECIST, Clopper-Pearson, Kaplan-Meier
    for ref in ("Magn Reson Med 2010;63:181", "Semin Liver Dis 2010;30:52", "Biometrika 1934;26:404",
                "J Am Stat Assoc 1958;53:457"):
        assert ref in html, ref


def test_report_embedded_images_are_png(report):
    blobs = re.findall(r'src="data:image/png;base64,([^"]+)"', report["html"])
    n_biomarkers = report["table"]["biomarker"].nunique()
    # time courses + paired + between + correlation + maps + waterfall + KM
    assert len(blobs) == n_biomarkers + 6
    for b in blobs:
        raw = base64.b64decode(b, validate=True)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_csvs_read_back(report):
    out, table = report["out"], report["table"]
    meas = pd.read_csv(out / "measurements.csv")
    assert list(meas.columns) == list(table.columns) and len(meas) == len(table)
    np.testing.assert_allclose(meas["value"].to_numpy(), table["value"].to_numpy(), rtol=1e-12)
    stats_csv = pd.read_csv(out / "statistics.csv")
    expected = results_table(report["results"])
    assert list(stats_csv.columns) == list(expected.columns) and len(stats_csv) == len(expected)
    np.testing.assert_allclose(stats_csv["p_value"].to_numpy(float), expected["p_value"].to_numpy(float),
                               rtol=1e-9, equal_nan=True)
    rates = pd.read_csv(out / "response_resp_rates.csv")
    assert set(rates["group"]) == set(ARMS) | {"all"} and set(rates["rate"]) == {"ORR", "DCR"}
    per_tp = pd.read_csv(out / "response_resp.csv")
    assert len(per_tp) == N_PER_ARM * len(ARMS) * len(TIMES)
    assert (out / "response_resp_best.csv").is_file()
    assert not list(out.glob("*.tmp"))


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    pytest.fail("headless Chromium is needed to check the HTML report in a real browser: install the Debian "
                "package 'chromium' (apt-get install chromium) so that `chromium` is on PATH")


def test_report_renders_in_chromium(report, tmp_path):
    exe = _chromium()
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", report["path"].resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    expected = results_table(report["results"])
    n_rows = len(re.findall(r'<tr class="stat-row"', dom))
    assert n_rows == len(expected) > 0
    for label in ("ia_nk vs control", "ia_nk ORR", "log-rank", "arm=ia_nk x time=24h"):
        assert f"<td>{label}</td>" in dom, label
    assert dom.count("<img") == len(re.findall(r"<img", report["html"]))
    for heading in SECTION_HEADINGS:
        assert f"<h2>{heading}</h2>" in dom, heading


def test_choose_representatives_median_subject(report):
    design, table, images = report["design"], report["table"], report["images"]
    last = design.timepoint_names[-1]
    for arm in ARMS:
        rows = table[(table["biomarker"] == "tumour_R2star") & (table["arm"] == arm) & (table["timepoint"] == last)]
        vals = sorted(zip(rows["value"], rows["subject"]))
        median_subject = vals[(len(vals) - 1) // 2][1]
        arm_imgs = [i for i in images if i.arm == arm]
        assert {i.subject for i in arm_imgs} == {median_subject}
        assert [i.timepoint for i in arm_imgs] == list(design.timepoint_names)
        for i in arm_imgs:
            assert f"sub-{median_subject}/ses-{i.timepoint}/" in str(i.map_path)
            assert str(i.anatomy_path).endswith("t2w.nii.gz") and str(i.roi_path).endswith("tumour.nii.gz")
            assert i.unit == "1/s"


def test_load_panel_resamples_onto_map_grid(tmp_path):
    rng = np.random.default_rng(3)
    p = _write_images(tmp_path, "r1", "baseline", rng)
    # the map holds the same linear function of world position as the anatomy
    nib.save(nib.Nifti1Image(_ramp(MAP_AFFINE, (8, 8, 3)), MAP_AFFINE), str(p["map"]))
    panel = load_panel(RepresentativeImage("control", "baseline", "r1", p["map"], p["t2w"], p["roi"],
                                           "R2starmap", "1/s"))
    assert panel.slice_index == 1
    assert int(panel.roi.sum()) == 16            # 8x8 fine voxels -> 4x4 map voxels
    inner = np.s_[1:-1, 1:-1]
    np.testing.assert_allclose(panel.anatomy[inner], panel.map[inner], atol=1e-3)
    # radiological display: subject's right (+x) on the left, anterior (+y) at the top
    assert panel.map[0, 0] > panel.map[0, -1]
    assert panel.map[0, 0] > panel.map[-1, 0]


def test_missing_map_file_is_a_warning_not_a_crash(report, tmp_path):
    img = RepresentativeImage("control", "baseline", "rat01", tmp_path / "absent.nii.gz", None, None, "R2starmap")
    # spec-like analysis objects are run by write_report; a failing one is shown, not raised
    bad = SimpleNamespace(type="paired", name="bad_paired", biomarker="no_such_biomarker", from_="baseline",
                          to="24h", test="t", arms=None)
    path = write_report(tmp_path / "out", design=report["design"], table=report["table"], analyses=[bad],
                        images=[img])
    html = path.read_text(encoding="utf-8")
    assert "absent.nii.gz" in html and 'class="warning"' in html
    assert "No statistical test was run." in html
    assert 'class="error"' in html and "no_such_biomarker" in html
    stats_csv = pd.read_csv(tmp_path / "out" / "statistics.csv")
    assert list(stats_csv["analysis"]) == ["bad_paired"] and stats_csv["notes"][0].startswith("error:")
