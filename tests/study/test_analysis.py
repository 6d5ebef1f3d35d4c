"""Analyses of a study on a synthetic tidy table with known effects.

The table is built here: three arms, four timepoints; arm ``ia_nk`` gets
R2* +20 1/s at 24 h (others none) and shrinks by 70 % over 8 days while
``control`` grows by 50 %. Expected values are computed independently from
the table with numpy/scipy, never taken from the code under test.
"""

from __future__ import annotations

import math
from types import SimpleNamespace as NS

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from oncomri.study.analysis import RESULTS_TABLE_COLUMNS, AnalysisResult, results_table, run_analyses
from oncomri.study.spec import load_spec

ARMS = ("control", "iv_nk", "ia_nk")
TIMES = (("baseline", "-1 h", -3600.0), ("24h", "24 h", 86400.0), ("48h", "48 h", 172800.0),
         ("8d", "8 d", 8 * 86400.0))
N_PER_ARM = 6
EFFECT_R2 = 20.0  # 1/s, ia_nk at 24h
GROWTH = {"control": 0.5, "iv_nk": 0.1, "ia_nk": -0.7}  # fraction at 8 d

ANALYSES_YAML = """\
analyses:
  - {type: paired, name: r2_paired, biomarker: tumour_R2star, from: baseline, to: 24h}
  - {type: paired, name: r2_wilcoxon, biomarker: tumour_R2star, from: baseline, to: 24h, test: wilcoxon, arms: [ia_nk]}
  - {type: between_arms, name: dvol, biomarker: tumour_volume, timepoint: 8d, change: percent}
  - {type: between_arms, name: dvol_kw, biomarker: tumour_volume, timepoint: 8d, change: absolute, test: kruskal}
  - type: correlation
    name: corr
    x: {biomarker: tumour_R2star, timepoint: 24h, change: absolute}
    y: {biomarker: tumour_volume, timepoint: 8d, change: percent}
  - {type: mixed_model, name: mm, biomarker: tumour_R2star}
  - {type: response, name: resp, criteria: recist, biomarker: tumour_diameter}
  - {type: survival, name: surv, time: months, time_unit: month, event: recurred, group: margin}
"""


def _spec_text(rng: np.random.Generator) -> str:
    lines = ["oncomri: 1", "name: analysis test study", "arms:"]
    lines += [f"  {a}: {{description: arm {a}}}" for a in ARMS]
    lines.append("timepoints:")
    lines += [f"  {name}: {{time: {t}}}" for name, t, _ in TIMES]
    lines.append("subjects:")
    k = 0
    for arm in ARMS:
        for i in range(N_PER_ARM):
            k += 1
            months = round(float(rng.uniform(2, 20)), 2)
            recurred = "true" if rng.random() < 0.6 else "false"
            lines.append(f"  rat{k:02d}: {{arm: {arm}, covariates: {{months: {months}, recurred: {recurred}, "
                         f"margin: {'AM0' if i % 2 else 'AM1'}}}}}")
    lines += [
        "scans:",
        '  megre: {path: "sub-{subject}/ses-{timepoint}/megre.nii.gz"}',
        "rois:",
        '  tumour: {on: megre, mask: "sub-{subject}/ses-{timepoint}/tumour.nii.gz"}',
        "maps:",
        "  r2star: {model: r2star, scan: megre}",
        "biomarkers:",
        "  tumour_R2star: {map: r2star.R2starmap, roi: tumour, statistic: median}",
        "  tumour_volume: {roi: tumour, measure: volume}",
        "  tumour_diameter: {roi: tumour, measure: longest_diameter}",
    ]
    return "\n".join(lines) + "\n" + ANALYSES_YAML


def _table(design, rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for s in design.subjects:
        r0, v0 = rng.normal(40.0, 3.0), rng.normal(100.0, 10.0)
        for tp in design.timepoints:
            r2 = r0 + (EFFECT_R2 if (s.arm == "ia_nk" and tp.name == "24h") else 0.0) + rng.normal(0.0, 1.0)
            frac = max(tp.time_s, 0.0) / (8 * 86400.0)
            vol = v0 * (1.0 + GROWTH[s.arm] * frac) * (1.0 + rng.normal(0.0, 0.03))
            diam = (6.0 * vol / math.pi) ** (1.0 / 3.0)
            for bm, val, unit, mp, st in (("tumour_R2star", r2, "1/s", "r2star.R2starmap", "median"),
                                          ("tumour_volume", vol, "mm^3", "", "volume"),
                                          ("tumour_diameter", diam, "mm", "", "longest_diameter")):
                rows.append(dict(subject=s.id, arm=s.arm, timepoint=tp.name, time_s=tp.time_s, biomarker=bm,
                                 value=val, unit=unit, roi="tumour", map=mp, statistic=st,
                                 method="ncexp" if mp else "voxel count", software_version="test"))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    rng = np.random.default_rng(20240501)
    folder = tmp_path_factory.mktemp("analysis_study")
    (folder / "study.yaml").write_text(_spec_text(rng))
    spec = load_spec(folder / "study.yaml")
    design = spec.design()
    table = _table(design, rng)
    results = {r.name: r for r in run_analyses(spec.analyses, table, design=design)}
    return spec, design, table, results


def _wide(table, biomarker):
    rows = table[table["biomarker"] == biomarker]
    return rows.pivot(index="subject", columns="timepoint", values="value")


def _arm_subjects(design, arm):
    return [s.id for s in design.subjects if s.arm == arm]


def _tests(result: AnalysisResult) -> dict:
    return dict(result.tests)


def test_every_analysis_runs(study):
    _, _, _, results = study
    assert set(results) == {"r2_paired", "r2_wilcoxon", "dvol", "dvol_kw", "corr", "mm", "resp", "surv"}
    for r in results.values():
        assert r.error is None, (r.name, r.error)
        assert r.tests and r.title and r.title[0].isupper()


def test_paired_detects_the_effect_arm_only(study):
    _, design, table, results = study
    r = results["r2_paired"]
    assert r.type == "paired" and r.unit == "1/s"
    assert r.title == "Tumour R2* from baseline to 24h, within each arm (paired t-test)"
    tests = _tests(r)
    assert list(tests) == list(ARMS)
    wide = _wide(table, "tumour_R2star")
    for arm in ARMS:
        subj = _arm_subjects(design, arm)
        ref = sps.ttest_rel(wide.loc[subj, "24h"], wide.loc[subj, "baseline"])
        assert tests[arm].p_value == pytest.approx(ref.pvalue, rel=1e-9)
        assert tests[arm].n["pairs"] == N_PER_ARM
    assert tests["ia_nk"].p_value < 1e-4
    assert tests["ia_nk"].ci_low < EFFECT_R2 < tests["ia_nk"].ci_high
    assert tests["control"].p_value > 0.05 and tests["iv_nk"].p_value > 0.05
    # the plot data is the per-subject change
    d = r.data[r.data["arm"] == "ia_nk"].set_index("subject")
    subj = _arm_subjects(design, "ia_nk")
    np.testing.assert_allclose(d.loc[subj, "change"], wide.loc[subj, "24h"] - wide.loc[subj, "baseline"])


def test_wilcoxon_within_selected_arm(study):
    _, design, table, results = study
    r = results["r2_wilcoxon"]
    assert [label for label, _ in r.tests] == ["ia_nk"]
    wide = _wide(table, "tumour_R2star")
    subj = _arm_subjects(design, "ia_nk")
    ref = sps.wilcoxon(wide.loc[subj, "24h"], wide.loc[subj, "baseline"])
    assert r.tests[0][1].p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert "Wilcoxon" in r.title


def test_between_arms_percent_change(study):
    _, design, table, results = study
    r = results["dvol"]
    assert r.unit == "%"
    wide = _wide(table, "tumour_volume")
    pct = 100.0 * (wide["8d"] - wide["baseline"]) / wide["baseline"]
    groups = {arm: pct.loc[_arm_subjects(design, arm)].to_numpy() for arm in ARMS}
    tests = _tests(r)
    assert tests["all arms"].p_value == pytest.approx(sps.f_oneway(*groups.values()).pvalue, rel=1e-6)
    assert tests["all arms"].p_value < 1e-6
    # pair "b vs a" estimates b - a
    assert tests["ia_nk vs control"].estimate == pytest.approx(groups["ia_nk"].mean() - groups["control"].mean())
    assert set(tests) == {"all arms", "iv_nk vs control", "ia_nk vs control", "ia_nk vs iv_nk"}
    np.testing.assert_allclose(r.data.set_index("subject").loc[pct.index, "value"], pct)


def test_between_arms_kruskal_absolute_change(study):
    _, design, table, results = study
    r = results["dvol_kw"]
    wide = _wide(table, "tumour_volume")
    delta = wide["8d"] - wide["baseline"]
    ref = sps.kruskal(*[delta.loc[_arm_subjects(design, a)] for a in ARMS])
    assert _tests(r)["all arms"].p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert r.unit == "mm^3"
    assert "Holm" in _tests(r)["ia_nk vs control"].test


def test_correlation_r2_and_line(study):
    _, _, table, results = study
    r = results["corr"]
    r2w, vw = _wide(table, "tumour_R2star"), _wide(table, "tumour_volume")
    x = (r2w["24h"] - r2w["baseline"])
    y = 100.0 * (vw["8d"] - vw["baseline"]) / vw["baseline"]
    x, y = x.to_numpy(), y.loc[x.index].to_numpy()
    r_ref = np.corrcoef(x, y)[0, 1]
    assert r.extra["r_squared"] == pytest.approx(r_ref ** 2, rel=1e-9)
    assert r.tests[0][1].estimate == pytest.approx(r_ref, rel=1e-9)
    design_matrix = np.column_stack([x, np.ones_like(x)])
    slope, intercept = np.linalg.lstsq(design_matrix, y, rcond=None)[0]
    assert r.extra["line"]["slope"] == pytest.approx(slope, rel=1e-9)
    assert r.extra["line"]["intercept"] == pytest.approx(intercept, rel=1e-9)
    assert r.extra["x_unit"] == "1/s" and r.extra["y_unit"] == "%"
    assert r.tests[0][1].p_value < 1e-3  # R2* rise goes with shrinkage here


def test_mixed_model_recovers_interaction(study):
    _, _, _, results = study
    r = results["mm"]
    tests = _tests(r)
    assert r.extra["time_as"] == "categorical" and "categorical" in r.title
    # reference levels: first arm of the spec, earliest timepoint
    assert "arm=control" not in tests and "time=baseline" not in tests
    inter = tests["arm=ia_nk x time=24h"]
    assert inter.ci_low < EFFECT_R2 < inter.ci_high and inter.p_value < 1e-6
    assert abs(tests["arm=iv_nk x time=24h"].estimate) < 5.0  # no effect in iv_nk


def test_survival_from_covariates(study):
    spec, design, _, results = study
    r = results["surv"]
    from lifelines.statistics import logrank_test

    cov = pd.DataFrame([dict(s.covariates) for s in design.subjects])
    a, b = cov[cov["margin"] == "AM0"], cov[cov["margin"] == "AM1"]
    ref = logrank_test(a["months"], b["months"], a["recurred"].astype(float), b["recurred"].astype(float))
    assert _tests(r)["log-rank"].p_value == pytest.approx(ref.p_value, rel=1e-9)
    assert set(r.extra["km"]) == {"AM0", "AM1"}
    assert r.unit == "month"


def _response_design_and_table(tmp_path):
    """Diameters with a known best response per subject (RECIST 1.1 rules)."""
    series = {  # arm -> list of (baseline, 24h, 48h, 8d) sums of diameters in mm
        "control": [(20, 25, 26, 27), (20, 20, 21, 22), (20, 26, 28, 30), (20, 19, 20, 21)],  # PD, SD, PD, SD
        "iv_nk": [(20, 18, 17, 16), (20, 19, 19, 19), (20, 16, 14, 13), (20, 20, 20, 20)],     # SD, SD, PR, SD
        "ia_nk": [(20, 15, 12, 10), (20, 14, 12, 0), (20, 18, 14, 13), (20, 17, 15, 14)],      # PR, CR, PR, PR
    }
    expected = {"control": ["PD", "SD", "PD", "SD"], "iv_nk": ["SD", "SD", "PR", "SD"],
                "ia_nk": ["PR", "CR", "PR", "PR"]}
    lines = ["oncomri: 1", "name: response", "arms:"] + [f"  {a}: {{}}" for a in ARMS]
    lines += ["timepoints:"] + [f"  {n}: {{time: {t}}}" for n, t, _ in TIMES] + ["subjects:"]
    rows, k = [], 0
    for arm, ss in series.items():
        for s in ss:
            k += 1
            lines.append(f"  s{k:02d}: {{arm: {arm}}}")
            for (tp, _, t), v in zip(TIMES, s):
                rows.append(dict(subject=f"s{k:02d}", arm=arm, timepoint=tp, time_s=t, biomarker="diam",
                                 value=float(v), unit="mm", roi="tumour", map="", statistic="longest_diameter",
                                 method="geometry", software_version="test"))
    lines += ['scans:', '  t2w: {path: "x/{subject}_{timepoint}.nii.gz"}', "rois:",
              '  tumour: {on: t2w, mask: "x/{subject}_{timepoint}_roi.nii.gz"}', "biomarkers:",
              "  diam: {roi: tumour, measure: longest_diameter}",
              "analyses:", "  - {type: response, name: r, criteria: recist, biomarker: diam}"]
    (tmp_path / "s.yaml").write_text("\n".join(lines) + "\n")
    spec = load_spec(tmp_path / "s.yaml")
    return spec, pd.DataFrame(rows), expected


def test_response_orr_dcr_and_clopper_pearson(tmp_path):
    spec, table, expected = _response_design_and_table(tmp_path)
    design = spec.design()
    (r,) = run_analyses(spec.analyses, table, design=design)
    assert r.error is None, r.error
    best = r.extra["best"].set_index("subject")["best_overall_response"]
    for arm, cats in expected.items():
        assert list(best.loc[_arm_subjects(design, arm)]) == cats
    rates = r.extra["rates"].set_index(["group", "rate"])
    all_cats = [c for cats in expected.values() for c in cats]
    for group, cats in list(expected.items()) + [("all", all_cats)]:
        n = len(cats)
        k_orr = sum(c in ("CR", "PR") for c in cats)
        k_dcr = sum(c in ("CR", "PR", "SD") for c in cats)
        for rate, k in (("ORR", k_orr), ("DCR", k_dcr)):
            row = rates.loc[(group, rate)]
            assert row["n_responders"] == k and row["n_total"] == n
            lo = 0.0 if k == 0 else sps.beta.ppf(0.025, k, n - k + 1)
            hi = 1.0 if k == n else sps.beta.ppf(0.975, k + 1, n - k)
            assert row["ci_low"] == pytest.approx(lo, abs=1e-9)
            assert row["ci_high"] == pytest.approx(hi, abs=1e-9)
    labels = [label for label, _ in r.tests]
    assert "ia_nk ORR" in labels and "all DCR" in labels
    # waterfall: sorted descending, best % change from baseline
    wf = r.extra["waterfall"]
    assert list(wf["best_percent_change"]) == sorted(wf["best_percent_change"], reverse=True)
    s_cr = wf.set_index("subject").loc["s10", "best_percent_change"]
    assert s_cr == pytest.approx(-100.0)
    # per-timepoint table: baseline first
    first = r.data.groupby("subject").head(1)
    assert set(first["timepoint"]) == {"baseline"} and set(first["response"]) == {"BL"}


def test_one_subject_gives_error_result_and_others_go_on(study):
    _, design, table, _ = study
    one = table[table["subject"] == "rat13"]
    analyses = [
        NS(type="paired", name="p1", biomarker="tumour_R2star", from_="baseline", to="24h", test="t", arms=None),
        NS(type="between_arms", name="b1", biomarker="tumour_volume", timepoint="8d", change="none",
           test="anova", correction="tukey"),
        NS(type="paired", name="bad_bm", biomarker="no_such", from_="baseline", to="24h", test="t", arms=None),
    ]
    res = run_analyses(analyses, one, design=design)
    assert [r.name for r in res] == ["p1", "b1", "bad_bm"]
    for r in res:
        assert r.error and "\n" not in r.error and not r.tests
    assert "no_such" in res[2].error
    # the good analyses still run on the full table next to a failing one
    res = run_analyses(analyses[:1] + analyses[2:], table, design=design)
    assert res[0].error is None and res[1].error is not None


def test_missing_baseline_is_dropped_and_counted(study):
    _, design, table, _ = study
    cut = table[~((table["subject"] == "rat01") & (table["timepoint"] == "baseline"))]
    a = NS(type="between_arms", name="b", biomarker="tumour_volume", timepoint="8d", change="percent",
           test="anova", correction="tukey")
    (r,) = run_analyses([a], cut, design=design)
    assert r.error is None
    assert "rat01" not in set(r.data["subject"])
    assert _tests(r)["all arms"].n["control"] == N_PER_ARM - 1
    assert any("1 subject(s)" in n for n in r.notes)


def test_results_table(study):
    _, design, table, results = study
    res = list(results.values())
    bad = run_analyses([NS(type="mixed_model", name="mm_bad", biomarker="nope", timepoints=None)], table,
                       design=design)
    tab = results_table(res + bad)
    assert tuple(tab.columns) == RESULTS_TABLE_COLUMNS
    assert len(tab) == sum(len(r.tests) for r in res) + 1
    err = tab[tab["analysis"] == "mm_bad"]
    assert len(err) == 1 and err["notes"].iloc[0].startswith("error:")
    paired = tab[(tab["analysis"] == "r2_paired") & (tab["label"] == "ia_nk")].iloc[0]
    assert paired["n"] == f"pairs={N_PER_ARM}" and paired["unit"] == "1/s"
    assert paired["estimate_name"] == "mean difference (24h - baseline)"
    anova = tab[(tab["analysis"] == "dvol") & (tab["label"] == "all arms")].iloc[0]
    assert anova["df"] == f"2, {3 * N_PER_ARM - 3}"
    assert tab.loc[tab["analysis"] == "resp", "unit"].eq("fraction").all()
