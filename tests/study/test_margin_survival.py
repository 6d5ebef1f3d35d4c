"""Time to local recurrence by ablative-margin class, from scanner files (issue 5).

A tiny study written to disk: per subject a tumour sphere (drawn at ``pre``)
and a concentric ablation-zone sphere (drawn at ``post``) on 1 mm isotropic
NIfTI scans. The margin of concentric spheres is ``r_ablation - r_tumour``
(mm); the expected values, margin classes, groups and group sizes below come
from the radii, not from the code. The run is the real pipeline
(``run_study``, SQLite, the HTML report).
"""

from __future__ import annotations

import json
import sqlite3
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from oncomri.core import Volume
from oncomri.study.pipeline import run_study
from oncomri.study.spec import SpecError, load_spec
from oncomri.study.tasks import _ablative_margin

N = 28  # grid 28^3, 1 mm voxels; sphere centres at the grid centre
VOXEL_MM = 1.0
AFFINE = np.array([[VOXEL_MM, 0, 0, -14.0], [0, VOXEL_MM, 0, -10.0], [0, 0, VOXEL_MM, 5.0],
                   [0, 0, 0, 1]])

#: subject -> (tumour radius mm, ablation radius mm, recurrence months, recurred)
SUBJECTS = {
    "p01": (4.0, 2.0, 3.0, True),
    "p02": (4.0, 2.5, 5.0, True),
    "p03": (3.0, 4.5, 8.0, True),
    "p04": (3.0, 5.5, 14.0, False),
    "p05": (3.0, 6.5, 20.0, True),
    "p06": (3.0, 9.5, 24.0, False),
    "p07": (3.0, 10.5, 30.0, False),
    "p08": (3.0, 11.0, 36.0, False),
}
#: A subject whose post session is missing: no margin at post, left out of the analysis.
LOST = ("p09", (3.0, 8.0, 12.0, False))
CUTS = (0.0, 5.0)
LABELS = ("AM-", "AM0", "AM+")


def _analytic_margin(sid: str) -> float:
    rt, ra = (dict([LOST]) | SUBJECTS)[sid][:2]
    return ra - rt


def _expected_group(margin: float) -> str:
    return LABELS[int(np.searchsorted(CUTS, margin, side="right"))]


def _sphere(radius_mm: float) -> np.ndarray:
    centre = (N - 1) / 2.0
    r = np.sqrt(((np.indices((N, N, N)) - centre) ** 2).sum(axis=0)) * VOXEL_MM
    return r <= radius_mm


def _save(path: Path, data, dtype) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=dtype), AFFINE), str(path))


SPEC = """\
oncomri: 1
name: RFA margins and local recurrence
output: derivatives
arms:
  rfa: {description: radiofrequency ablation}
timepoints:
  pre: {time: -1 d}
  post: {time: 2 d}
subjects:
SUBJECTS_HERE
scans:
  t2w:
    path: "sub-{subject}/ses-{timepoint}/anat/sub-{subject}_ses-{timepoint}_T2w.nii.gz"
rois:
  tumour:
    on: t2w
    mask: "sub-{subject}/ses-pre/anat/sub-{subject}_ses-pre_label-tumour_mask.nii.gz"
  ablation:
    on: t2w
    mask: "sub-{subject}/ses-{timepoint}/anat/sub-{subject}_ses-{timepoint}_label-ablation_mask.nii.gz"
biomarkers:
  tumour_volume: {roi: tumour, measure: volume}
  tumour_margin: {roi: tumour, measure: ablative_margin, ablation_roi: ablation, timepoints: [post]}
analyses:
  - type: survival
    name: recurrence_by_margin
    time: recurrence_months
    time_unit: month
    event: recurred
    group: {biomarker: tumour_margin, timepoint: post, cuts: [0, 5], labels: [AM-, AM0, AM+]}
  - type: survival
    name: recurrence_by_arm
    time: recurrence_months
    time_unit: month
    event: recurred
    group: arm
"""


def _write_study(root: Path) -> Path:
    lines = []
    for sid, (rt, ra, months, recurred) in list(SUBJECTS.items()) + [LOST]:
        tumour, zone = _sphere(rt), _sphere(ra)
        for tp in ("pre", "post"):
            image = np.full((N, N, N), 100.0)
            image[tumour] = 180.0 if tp == "pre" else 60.0
            if tp == "post":
                image[zone & ~tumour] = 40.0  # the hypointense ablated rim
            _save(root / f"sub-{sid}/ses-{tp}/anat/sub-{sid}_ses-{tp}_T2w.nii.gz", image,
                  np.float32)
        _save(root / f"sub-{sid}/ses-pre/anat/sub-{sid}_ses-pre_label-tumour_mask.nii.gz",
              tumour, np.uint8)
        _save(root / f"sub-{sid}/ses-post/anat/sub-{sid}_ses-post_label-ablation_mask.nii.gz",
              zone, np.uint8)
        entry = (f"  {sid}:\n    arm: rfa\n    covariates: {{recurrence_months: {months}, "
                 f"recurred: {str(recurred).lower()}}}")
        if sid == LOST[0]:
            entry += "\n    missing: {post: lost to follow-up}"
        lines.append(entry)
    spec = root / "study.yaml"
    spec.write_text(SPEC.replace("SUBJECTS_HERE", "\n".join(lines)))
    return spec


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    root = tmp_path_factory.mktemp("margin-study")
    spec = _write_study(root)
    db = root / "study.sqlite"
    summary = run_study(spec, database=str(db), scheduler="synchronous", progress=False,
                        report=True)
    return spec, db, summary


def _margins(db: Path) -> pd.DataFrame:
    with sqlite3.connect(db) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"measurements", "sessions", "subjects", "timepoints"} <= tables
        rows = con.execute(
            "SELECT subjects.name, timepoints.name, m.value, m.unit, m.statistic, m.method, "
            "m.provenance FROM measurements m JOIN sessions ON m.session_id = sessions.id "
            "JOIN subjects ON sessions.subject_id = subjects.id "
            "JOIN timepoints ON sessions.timepoint_id = timepoints.id "
            "WHERE m.biomarker = 'tumour_margin'").fetchall()
    return pd.DataFrame(rows, columns=["subject", "timepoint", "value", "unit", "statistic",
                                       "method", "provenance"])


def test_margin_values_and_classes(ran):
    _, db, summary = ran
    assert summary.n_failed == 0, summary.failures
    # `timepoints: [post]`: measured after the ablation only, so `pre` needs no ablation mask
    assert set(_margins(db).timepoint) == {"post"}
    post = _margins(db).query("timepoint == 'post'").set_index("subject")
    assert sorted(post.index) == sorted(SUBJECTS)
    for sid in SUBJECTS:
        row = post.loc[sid]
        expected = _analytic_margin(sid)
        # voxelised spheres: the measured margin is within one voxel of r_a - r_t
        assert abs(row["value"] - expected) <= VOXEL_MM, (sid, row["value"], expected)
        assert row["unit"] == "mm"
        assert row["statistic"] == "ablative_margin"
        assert "Koda" in row["method"]
        provenance = json.loads(row["provenance"])
        assert provenance["min_margin_mm"] == pytest.approx(row["value"])
        assert provenance["ablation_roi"] == "ablation"
        # the AM class of oncomri.roi.ablative_margin (criterion 2 mm), where the
        # analytic margin leaves no doubt within the one-voxel tolerance
        if expected < 0:
            assert provenance["margin_class"] == "AM(-)"
            assert provenance["protruding_volume_mm3"] > 0
        elif expected < 2.0:
            assert provenance["margin_class"] == "AM(0)"
        elif expected >= 3.0:
            assert provenance["margin_class"] == "AM(+)"
            assert provenance["coverage_fraction"] == 1.0


def _log_rank_chi2(groups: dict) -> float:
    """K-group log-rank statistic: (O - E) V^-1 (O - E) over the first K-1 groups."""
    labels = list(LABELS)
    time = np.array([SUBJECTS[s][2] for s in groups])
    event = np.array([SUBJECTS[s][3] for s in groups])
    g = np.array([labels.index(groups[s]) for s in groups])
    k = len(labels)
    o_minus_e, v = np.zeros(k), np.zeros((k, k))
    for t in np.unique(time[event]):
        at_risk = time >= t
        n = at_risk.sum()
        d = (event & (time == t)).sum()
        n_g = np.array([(at_risk & (g == j)).sum() for j in range(k)])
        d_g = np.array([(event & (time == t) & (g == j)).sum() for j in range(k)])
        o_minus_e += d_g - d * n_g / n
        if n > 1:
            p = n_g / n
            v += d * (n - d) / (n - 1) * (np.diag(p) - np.outer(p, p))
    x = o_minus_e[:-1]
    return float(x @ np.linalg.solve(v[:-1, :-1], x))


def test_survival_by_margin_class(ran):
    spec, _, summary = ran
    by_name = {r.name: r for r in summary.analyses}
    result = by_name["recurrence_by_margin"]
    assert result.ok, result.error

    expected = {sid: _expected_group(_analytic_margin(sid)) for sid in SUBJECTS}
    groups = dict(zip(result.data["subject"], result.data["group"]))
    assert groups == expected  # p09 (no post session) is left out
    assert any("p09" in note for note in result.notes)
    counts = {label: sum(1 for g in expected.values() if g == label) for label in LABELS}
    assert counts == {"AM-": 2, "AM0": 3, "AM+": 3}
    events = {label: sum(1 for sid, g in expected.items() if g == label and SUBJECTS[sid][3])
              for label in LABELS}
    assert list(result.extra["km"]) == list(LABELS)
    for label, curve in result.extra["km"].items():
        assert curve.n == counts[label]
        assert curve.n_events_total == events[label]

    # the statistics table of the report: one log-rank row with n per group
    stats = pd.read_csv(spec.parent / "derivatives" / "report" / "statistics.csv")
    row = stats[stats["analysis"] == "recurrence_by_margin"]
    assert len(row) == 1
    row = row.iloc[0]
    assert "log-rank" in str(row["test"]).lower() or "log-rank" in str(row["label"]).lower()
    n = dict(part.split("=") for part in str(row["n"]).split("; "))
    assert {k: int(v) for k, v in n.items()} == counts
    # the log-rank chi-square computed here by hand (Mantel 1966) from the radii's groups
    assert row["statistic"] == pytest.approx(_log_rank_chi2(expected), rel=1e-9)
    assert row["df"] == len(LABELS) - 1
    # all events in the low-margin groups, none with AM+: the curves differ
    assert row["p_value"] < 0.05

    html = (spec.parent / "derivatives" / "report" / "report.html").read_text()
    assert "recurrence_by_margin" in html
    assert "ablation zone ROI ablation" in html

    # grouping by arm still works (one arm: a curve without a test)
    by_arm = by_name["recurrence_by_arm"]
    assert by_arm.ok and list(by_arm.extra["km"]) == ["rfa"] and by_arm.tests == []


def test_tumour_on_another_grid_is_put_on_the_ablation_grid():
    """Tumour drawn on a 2 mm grid, ablation zone on a 1 mm grid: same margin within a voxel
    of the coarse grid."""
    fine = Volume(np.zeros((N, N, N), np.float32), AFFINE)
    coarse_affine = AFFINE.copy()
    coarse_affine[:3, :3] *= 2.0
    coarse_affine[:3, 3] += 0.5  # voxel centres of the 2 mm grid on 1 mm voxel corners
    half = N // 2
    centre_world = AFFINE[:3, :3] @ np.full(3, (N - 1) / 2.0) + AFFINE[:3, 3]
    ijk = np.indices((half, half, half)).reshape(3, -1).T
    world = ijk @ coarse_affine[:3, :3].T + coarse_affine[:3, 3]
    tumour_coarse = (np.linalg.norm(world - centre_world, axis=1) <= 4.0).reshape((half,) * 3)
    zone = _sphere(9.0)
    value, method, provenance = _ablative_margin(
        "m", {"roi": "tumour", "ablation_roi": "ablation"}, tumour_coarse, coarse_affine,
        zone, AFFINE, fine)
    assert provenance["tumour_resampled"] is True
    assert abs(value - (9.0 - 4.0)) <= 2.0
    assert provenance["margin_class"] == "AM(+)"


_MINI = """\
oncomri: 1
name: mini
arms:
  rfa: {}
timepoints:
  pre: {time: -1 d}
  post: {time: 2 d}
subjects:
  p01: {arm: rfa, covariates: {recurrence_months: 3, recurred: true}}
scans:
  t2w: {path: "sub-{subject}/ses-{timepoint}/t2w.nii.gz"}
rois:
  tumour: {on: t2w, mask: "tumour.nii.gz"}
  ablation: {on: t2w, mask: "ablation.nii.gz"}
biomarkers:
  tumour_margin:
    roi: tumour
    measure: ablative_margin
    ablation_roi: ABLATION
analyses:
  - type: survival
    time: recurrence_months
    event: recurred
    group:
      biomarker: tumour_margin
      timepoint: post
      cuts: [0, 5]
      labels: LABELS
"""


def _line(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_spec_error_ablation_roi_unknown(tmp_path):
    text = _MINI.replace("ABLATION", "ablaton").replace("LABELS", "[AM-, AM0, AM+]")
    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    err = info.value
    assert err.field == "biomarkers.tumour_margin.ablation_roi"
    assert err.line == _line(text, "ablation_roi:")
    assert str(err).startswith(f"{path}:{err.line}: biomarkers.tumour_margin.ablation_roi: ")
    assert "'ablaton' is not an ROI" in str(err) and "'ablation'" in str(err)


def test_spec_error_labels_do_not_match_cuts(tmp_path):
    text = _MINI.replace("ABLATION", "ablation").replace("LABELS", "[AM-, AM+]")
    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    err = info.value
    assert err.field == "analyses[0].group.labels"
    assert err.line == _line(text, "labels:")
    assert "2 cut(s) make 3 groups" in str(err) and "2 label(s)" in str(err)


def test_spec_ablation_roi_needs_the_margin_measure(tmp_path):
    text = (_MINI.replace("measure: ablative_margin", "measure: volume")
            .replace("ABLATION", "ablation").replace("LABELS", "[AM-, AM0, AM+]"))
    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.field == "biomarkers.tumour_margin.ablation_roi"
    assert info.value.line == _line(text, "ablation_roi:")
    # and the valid spec loads, with the group as a model
    ok = tmp_path / "ok.yaml"
    ok.write_text(_MINI.replace("ABLATION", "ablation").replace("LABELS", "[AM-, AM0, AM+]"))
    spec = load_spec(ok)
    group = spec.analyses[0].group
    assert (group.biomarker, group.timepoint, group.cuts, group.labels) == (
        "tumour_margin", "post", [0.0, 5.0], ["AM-", "AM0", "AM+"])
