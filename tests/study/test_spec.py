"""Tests of oncomri.study.spec: loading, validation messages and the study design."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from oncomri.core.errors import ReadError, ValidationError
from oncomri.study.spec import MAP_OUTPUTS, SpecError, load_spec, parse_time

FULL = """\
oncomri: 1                          # spec format version
name: NK-cell delivery to rat liver tumours
description: >
  Rats with liver tumours; NK cells labelled with iron oxide.
output: derivatives
database: null

arms:
  control: {description: intra-arterial saline}
  iv_nk:   {description: intravenous NK cells}
  ia_nk:   {description: intra-arterial NK cells}

timepoints:
  24h: {time: 24 h}
  baseline: {time: -1 h}
  8d:  {time: 8 d}
  48h: {time: 48 h}
baseline: baseline

subjects:
  rat01: {arm: control, covariates: {recurrence_months: 3, recurred: false, margin_class: AM1}}
  rat02:
    arm: ia_nk
    covariates: {weight_g: 312, recurrence_months: 14.0, recurred: true, margin_class: AM0}
    missing: {8d: died on day 6}
    sessions:
      baseline:
        scans:  {megre: dicom/rat02_baseline}
        rois:   {tumour: {seed: [10.5, -3.0, 22.0]}}
  rat03:
    arm: iv_nk
    covariates: {recurrence_months: 9.5, recurred: true, margin_class: AM1}
    missing: [48h]

scans:
  megre:
    path: "sub-{subject}/ses-{timepoint}/anat/sub-{subject}_ses-{timepoint}_echo-*_MEGRE.nii.gz"
    series: null
    echo_times: null
  t2w:
    path: "sub-{subject}/ses-{timepoint}/anat/sub-{subject}_ses-{timepoint}_T2w.nii.gz"

rois:
  tumour:
    on: t2w
    mask: "sub-{subject}/ses-{timepoint}/anat/sub-{subject}_ses-{timepoint}_label-tumour_mask.nii.gz"
    label: null
  liver:
    on: t2w
    seed: [10.5, -3.0, 22.0]
    method: region_growing
  muscle:
    on: t2w
    propagate: {from: baseline}

maps:
  r2star:
    model: r2star
    scan: megre
    method: ncexp
    noise_sigma: auto
    fit_within: null

biomarkers:
  tumour_R2star:  {map: r2star.R2starmap, roi: tumour, statistic: median}
  tumour_T2star:  {map: r2star.T2starmap, roi: tumour, statistic: median}
  tumour_volume:  {roi: tumour, measure: volume}
  tumour_diameter: {roi: tumour, measure: longest_diameter}

analyses:
  - type: paired
    biomarker: tumour_R2star
    from: baseline
    to: 24h
    test: t
    arms: null
  - type: between_arms
    biomarker: tumour_volume
    timepoint: 8d
    change: percent
    test: kruskal
  - type: correlation
    x: {biomarker: tumour_R2star, timepoint: 24h, change: absolute}
    y: {biomarker: tumour_volume, timepoint: 8d, change: percent}
    arms: [ia_nk]
    method: pearson
  - type: mixed_model
    biomarker: tumour_R2star
    timepoints: null
  - type: response
    criteria: mrecist
    biomarker: tumour_diameter
    arms: null
  - type: survival
    name: recurrence
    time: recurrence_months
    time_unit: month
    event: recurred
    group: margin_class
"""


def line_with(text: str, marker: str, nth: int = 1) -> int:
    """1-based number of the nth line of ``text`` containing ``marker`` (derived from the text)."""
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if marker in line]
    assert len(hits) >= nth, f"marker {marker!r} not in the text"
    return hits[nth - 1]


def write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def replaced(old: str, new: str, text: str = FULL) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def spec_error(tmp_path, monkeypatch, text: str) -> SpecError:
    """Load ``text`` as ./study.yaml (relative name) and return the SpecError."""
    write(tmp_path, text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as info:
        load_spec("study.yaml")
    return info.value


def check_location(err: SpecError, line: int, field: str):
    assert err.line == line
    assert err.field == field
    prefix = f"study.yaml:{line}: {field}: " if field else f"study.yaml:{line}: "
    assert str(err).startswith(prefix), str(err)
    assert err.path == Path("study.yaml")


# --------------------------------------------------------------------------- valid spec


def test_full_example_loads_and_gives_the_design(tmp_path):
    path = write(tmp_path, FULL)
    spec = load_spec(path)
    design = spec.design()

    assert design.name == "NK-cell delivery to rat liver tumours"
    assert design.arm_names == ("control", "iv_nk", "ia_nk")
    assert design.arms[2].description == "intra-arterial NK cells"
    # timepoints sorted by time, in seconds (written out of order in the file)
    expected_tp = [("baseline", -3600.0), ("24h", 24 * 3600.0), ("48h", 48 * 3600.0),
                   ("8d", 8 * 24 * 3600.0)]
    assert [(t.name, t.time_s) for t in design.timepoints] == expected_tp
    assert design.baseline == "baseline"
    assert [s.id for s in design.subjects] == ["rat01", "rat02", "rat03"]
    assert design.arm_of("rat03") == "iv_nk"
    assert design.subjects[1].covariates["weight_g"] == 312
    missing = {("rat02", "8d"), ("rat03", "48h")}
    expected_sessions = tuple((s, t) for s, (t, _) in itertools.product(
        ["rat01", "rat02", "rat03"], expected_tp) if (s, t) not in missing)
    assert design.sessions == expected_sessions
    assert design.description.startswith("Rats with liver tumours")


def test_file_facts_and_defaults(tmp_path):
    path = write(tmp_path, FULL)
    spec = load_spec(path)
    assert spec.path == path.absolute()
    assert spec.root == tmp_path.absolute()
    assert spec.output == tmp_path.absolute() / "derivatives"
    assert spec.database is None
    assert spec.text_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    assert spec.timepoints["8d"].time == 8 * 86400.0
    assert spec.analyses[0].from_ == "baseline"
    assert spec.analyses[1].correction == "holm"        # default for kruskal
    assert spec.maps["r2star"].noise_sigma == "auto"
    assert spec.rois["liver"].seed == (10.5, -3.0, 22.0)
    assert spec.subjects["rat03"].missing == {"48h": ""}
    names = [a.name for a in spec.analyses]
    assert all(names) and len(set(names)) == len(names)
    assert names[5] == "recurrence"                     # given names are kept
    override = spec.subjects["rat02"].sessions["baseline"]
    assert override.scans["megre"].path == "dicom/rat02_baseline"
    assert override.rois["tumour"].seed == (10.5, -3.0, 22.0)


def test_where_line_of_and_fragment(tmp_path, monkeypatch):
    write(tmp_path, FULL)
    monkeypatch.chdir(tmp_path)
    spec = load_spec("study.yaml")
    arm_line = line_with(FULL, "arm: ia_nk")
    assert spec.line_of("subjects", "rat02", "arm") == arm_line
    assert spec.where("subjects", "rat02", "arm") == f"study.yaml:{arm_line}: subjects.rat02.arm"
    assert spec.where("analyses[1].test") == (
        f"study.yaml:{line_with(FULL, 'test: kruskal')}: analyses[1].test")
    assert spec.line_of("rois", "muscle", "propagate", "from") == line_with(
        FULL, "{from: baseline}")
    # a default field has the line of its nearest written parent
    assert spec.line_of("rois", "liver", "label") == line_with(FULL, "  liver:")
    assert spec.line_of("nothing_here") is None

    frag = spec.fragment("rois", "muscle")
    assert frag["propagate"] == {"from": "baseline"}
    assert frag["on"] == "t2w"
    whole = spec.fragment()
    json.dumps(whole)                          # JSON-able
    assert whole["timepoints"]["24h"] == {"time": 86400.0}
    frag["on"] = "changed"                     # a copy: the spec is unchanged
    assert spec.fragment("rois", "muscle")["on"] == "t2w"
    with pytest.raises(KeyError):
        spec.fragment("rois", "nope")

    err = spec.error(("scans", "t2w", "path"), "no file; fix it")
    assert isinstance(err, SpecError)
    line = line_with(FULL, "_T2w.nii.gz")
    assert str(err) == f"study.yaml:{line}: scans.t2w.path: no file; fix it"


def test_defaults_baseline_is_the_earliest_timepoint(tmp_path):
    text = replaced("baseline: baseline\n", "")
    text = replaced("  24h: {time: 24 h}\n", "  24h: {time: 24 h}\n  pre: {time: -2 d}\n", text)
    spec = load_spec(write(tmp_path, text))
    assert spec.baseline == "pre"
    assert spec.design().baseline == "pre"
    assert spec.design().timepoint_names[0] == "pre"


def test_minimal_spec_defaults(tmp_path):
    text = """\
oncomri: 1
name: minimal
arms: {control: }
timepoints: {"01": {time: 0 h}, "02": {time: 2 w}}
subjects: {"007": {arm: control}}
scans: {t2w: {path: "sub-{subject}/ses-{timepoint}/t2w.nii.gz"}}
rois: {tumour: {on: t2w, seed: [1, 2, 3]}}
biomarkers: {vol: {roi: tumour, measure: volume}}
"""
    spec = load_spec(write(tmp_path, text))
    design = spec.design()
    assert design.timepoint_names == ("01", "02")
    assert design.sessions == (("007", "01"), ("007", "02"))
    assert design.timepoints[1].time_s == 14 * 86400.0
    assert spec.output == tmp_path.absolute() / "oncomri"
    assert spec.analyses == []
    assert spec.rois["tumour"].method is None


@pytest.mark.parametrize("text, seconds", [
    ("-1 h", -3600.0), ("24 h", 86400.0), ("8 d", 691200.0), ("90 min", 5400.0),
    ("2 w", 1209600.0), ("30 s", 30.0), ("24h", 86400.0), ("1.5 d", 129600.0),
    ("3 days", 259200.0),
])
def test_parse_time(text, seconds):
    assert parse_time(text) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [24, "24", "24 m", "h 24", True, "24 years"])
def test_parse_time_rejects_times_without_a_known_unit(value):
    with pytest.raises(ValidationError, match="s, min, h, d"):
        parse_time(value)


def _model_volumes():
    """One small noiseless series per model family, built from closed forms, as
    ``{model name: (Volume, [fit_volume keyword sets to try])}``."""
    from oncomri.core import Volume
    from oncomri.core.protocols import DiffusionProtocol
    from oncomri.models.aif import population_aif
    from oncomri.models.dce import extended_tofts

    shape = (3, 3, 1)

    def volume(signal, meta=None, protocol=None):
        data = np.ascontiguousarray(np.broadcast_to(signal, shape + np.shape(signal)[-1:]),
                                    np.float32)
        return Volume(data, np.eye(4), protocol=protocol, meta=meta or {},
                      sources=("series.nii.gz",))

    out = {}
    fa, tr, t1 = np.array([2.0, 5.0, 10.0, 15.0]), 0.005, 1.0
    e = np.exp(-tr / t1)
    a = np.deg2rad(fa)
    out["t1"] = (volume(1000 * np.sin(a) * (1 - e) / (1 - np.cos(a) * e),
                        {"FlipAngle": fa.tolist(), "RepetitionTime": tr}), [{}])
    ti = np.array([0.1, 0.3, 0.9, 2.7, 6.0])
    out["t1_ir"] = (volume(np.abs(1000 * (1 - 2 * np.exp(-ti / t1))),
                           {"InversionTime": ti.tolist()}), [{}])
    t = np.arange(30) * 5.0
    aif = population_aif("parker", t, onset=t[5])
    conc = extended_tofts(t, aif, 0.1 / 60, 0.3, 0.05)
    e = np.exp(-0.005 * (1 / 1.4 + 4.5 * conc))
    a = np.deg2rad(15.0)
    out["dce"] = (volume(3000 * np.sin(a) * (1 - e) / (1 - np.cos(a) * e),
                         {"FrameTimesStart": t.tolist(), "FlipAngle": 15.0,
                          "RepetitionTime": 0.005}),
                  [{"t1": 1.4, "relaxivity": 4.5}, {"t1": "1400ms", "relaxivity": 4.5,
                                                    "fit_delay": True}])
    t = np.arange(40.0)
    tau = np.clip(t - 10, 0, None)
    bolus = np.convolve(tau ** 3 * np.exp(-tau / 1.5), np.exp(-t / 4.0))[:t.size]
    ref = np.zeros(shape, bool)
    ref[0] = True
    out["dsc"] = (volume(1000 * np.exp(-0.03 * 0.01 * bolus),
                         {"EchoTime": 0.03, "RepetitionTime": 1.0}),
                  [{"baseline_frames": 8},
                   {"baseline_frames": 8, "aif_mask": ref, "reference_mask": ref}])
    b = np.array([0.0, 10, 20, 50, 100, 200, 400, 600, 800, 1000, 1500, 2000])
    dwi = volume(1000 * np.exp(-1e-3 * b) * (1 + 1e-5 * b), protocol=DiffusionProtocol(b))
    for name in ("adc", "ivim", "dki"):
        out[name] = (dwi, [{"noise_sigma": 1.0}])
    off = np.concatenate([[-300.0], np.arange(-6.0, 6.0001, 0.5)])
    x = off[1:]
    z = 1 - 0.8 * 0.5625 / (0.5625 + x ** 2) - 0.05 * 0.16 / (0.16 + (x - 3.5) ** 2)
    out["cest"] = (volume(np.concatenate([[1000.0], 1000 * z]),
                          {"SaturationOffsets": off.tolist(), "MagneticFieldStrength": 3.0}),
                   [{}])
    return out


def test_map_outputs_table_matches_the_models(tmp_path):
    """MAP_OUTPUTS lists what each model really writes: relaxometry's Fit.output_maps(),
    and for the others the maps of their fit_volume (every method, default options)."""
    from oncomri.core.protocols import MultiEchoProtocol
    from oncomri.models import MODELS
    from oncomri.study.spec import MAP_OUTPUT_PATTERNS

    assert set(MAP_OUTPUTS) == set(MODELS)
    te = np.array([0.004, 0.008, 0.012, 0.016])
    data = (1000.0 * np.exp(-te * np.array([[[[30.0]]], [[[60.0]]]]))).astype(np.float32)
    for name in ("r2star", "t2star", "t2"):
        cls = MODELS[name]
        fit = cls(MultiEchoProtocol(echo_times=te), method="loglin").fit(data)
        assert set(fit.output_maps()) == set(MAP_OUTPUTS[name]), name
    volumes = _model_volumes()
    assert set(volumes) == set(MODELS) - {"r2star", "t2star", "t2"}
    for name, (volume, variants) in volumes.items():
        cls = MODELS[name]
        methods = list(cls.methods) + (["none"] if name == "dce" else [])
        written = set()
        for method in methods:
            for options in variants:
                result = cls.fit_volume(volume, method=method, **options)
                written |= set(result.maps)
                assert np.isfinite(next(iter(result.maps.values()))[0]).any(), (name, method)
        assert written == set(MAP_OUTPUTS[name]), (name, written ^ set(MAP_OUTPUTS[name]))
        for suffix in MAP_OUTPUTS[name]:  # the patterns cover the option-named outputs
            if suffix.startswith(("IAUC", "desc-MTRasym")) or suffix.endswith(
                    ("Amplitude_CESTmap", "Width_CESTmap", "Offset_CESTmap")):
                assert any(p.fullmatch(suffix) for p in MAP_OUTPUT_PATTERNS[name]), suffix


# --------------------------------------------------------------------------- errors


def test_unknown_key_suggests_the_closest(tmp_path, monkeypatch):
    text = replaced("    biomarker: tumour_volume\n    timepoint: 8d",
                    "    biomarkr: tumour_volume\n    timepoint: 8d")
    err = spec_error(tmp_path, monkeypatch, text)
    check_location(err, line_with(text, "biomarkr:"), "analyses[1].biomarkr")
    assert "unknown key 'biomarkr' in analyses[1]" in str(err)
    assert str(err).endswith("did you mean 'biomarker'?")


def test_unknown_top_level_key(tmp_path, monkeypatch):
    text = replaced("biomarkers:\n", "biomarker:\n")
    err = spec_error(tmp_path, monkeypatch, text)
    check_location(err, line_with(text, "biomarker:"), "biomarker")
    assert "did you mean 'biomarkers'?" in str(err)


def test_unknown_key_in_a_roi(tmp_path, monkeypatch):
    text = replaced("    method: region_growing", "    methd: region_growing")
    err = spec_error(tmp_path, monkeypatch, text)
    check_location(err, line_with(text, "methd:"), "rois.liver.methd")
    assert "did you mean 'method'?" in str(err)


def test_subject_in_no_arm(tmp_path, monkeypatch):
    text = replaced("  rat01: {arm: control, covariates:", "  rat01: {covariates:")
    err = spec_error(tmp_path, monkeypatch, text)
    check_location(err, line_with(text, "  rat01:"), "subjects.rat01.arm")
    assert "no arm" in str(err)
    assert "control, iv_nk, ia_nk" in str(err)


def test_subject_with_empty_entry_is_in_no_arm(tmp_path, monkeypatch):
    text = replaced("    arm: iv_nk\n    covariates: {recurrence_months: 9.5, recurred: true, "
                    "margin_class: AM1}\n    missing: [48h]\n", "")
    err = spec_error(tmp_path, monkeypatch, text)
    check_location(err, line_with(text, "  rat03:"), "subjects.rat03.arm")
    assert "no arm" in str(err)


def test_subject_arm_that_is_not_an_arm(tmp_path, monkeypatch):
    text = replaced("    arm: ia_nk", "    arm: treated")
    err = spec_error(tmp_path, monkeypatch, text)
    check_location(err, line_with(text, "arm: treated"), "subjects.rat02.arm")
    assert "'treated' is not an arm of this study (arms: control, iv_nk, ia_nk)" in str(err)
    assert "add it under arms" in str(err)


def test_time_without_unit(tmp_path, monkeypatch):
    text = replaced("  48h: {time: 48 h}", "  48h: {time: 48}")
    err = spec_error(tmp_path, monkeypatch, text)
    check_location(err, line_with(text, "{time: 48}"), "timepoints.48h.time")
    assert "no unit" in str(err)
    assert "s, min, h, d (days), w (weeks)" in str(err)


def test_time_with_unknown_unit(tmp_path, monkeypatch):
    text = replaced("  8d:  {time: 8 d}", "  8d:  {time: 8 months}")
    err = spec_error(tmp_path, monkeypatch, text)
    check_location(err, line_with(text, "8 months"), "timepoints.8d.time")
    assert "unknown time unit 'months'" in str(err)


def test_duplicate_key(tmp_path, monkeypatch):
    text = replaced("  48h: {time: 48 h}\n", "  48h: {time: 48 h}\n  24h: {time: 2 d}\n")
    err = spec_error(tmp_path, monkeypatch, text)
    check_location(err, line_with(text, "24h: {time: 2 d}"), "timepoints.24h")
    assert f"first at line {line_with(text, '24h: {time: 24 h}')}" in str(err)


def test_duplicate_key_in_a_nested_mapping(tmp_path, monkeypatch):
    text = replaced("    series: null\n", "    series: null\n    series: '5'\n")
    err = spec_error(tmp_path, monkeypatch, text)
    check_location(err, line_with(text, "series: '5'"), "scans.megre.series")
    assert "duplicate key 'series'" in str(err)


def test_yaml_syntax_error(tmp_path, monkeypatch):
    text = replaced("  ia_nk:   {description: intra-arterial NK cells}",
                    "  ia_nk:   {description: intra-arterial NK cells")
    err = spec_error(tmp_path, monkeypatch, text)
    assert err.field == ""
    assert "YAML syntax error" in str(err)
    # the parser notices the unclosed brace on the line or at the next key
    assert line_with(text, "ia_nk:") <= err.line <= line_with(text, "ia_nk:") + 2
    assert str(err).startswith(f"study.yaml:{err.line}: YAML syntax error")


def test_yaml_tab_indentation(tmp_path, monkeypatch):
    text = replaced("  iv_nk:   {description", "\tiv_nk:   {description")
    err = spec_error(tmp_path, monkeypatch, text)
    assert err.line == line_with(text, "\tiv_nk")
    assert "YAML syntax error" in str(err)


@pytest.mark.parametrize("old, new, marker, field, words", [
    ("{map: r2star.R2starmap, roi: tumour,", "{map: r2star.R2starmap, roi: tumor,",
     "roi: tumor,", "biomarkers.tumour_R2star.roi", "did you mean 'tumour'?"),
    ("{map: r2star.T2starmap,", "{map: r2star.T2map,", "r2star.T2map",
     "biomarkers.tumour_T2star.map", "has no output 'T2map'"),
    ("{map: r2star.T2starmap,", "{map: t2.T2map,", "t2.T2map",
     "biomarkers.tumour_T2star.map", "'t2' is not a map of this study"),
    ("{map: r2star.T2starmap,", "{map: r2star,", "{map: r2star,",
     "biomarkers.tumour_T2star.map", "<map name>.<suffix>"),
    ("    timepoint: 8d\n", "    timepoint: 9d\n", "timepoint: 9d",
     "analyses[1].timepoint", "'9d' is not a timepoint"),
    ("    arms: [ia_nk]", "    arms: [ia_nk, sc_nk]", "sc_nk", "analyses[2].arms[1]",
     "'sc_nk' is not an arm"),
    ("    scan: megre\n", "    scan: mgre\n", "scan: mgre", "maps.r2star.scan",
     "did you mean 'megre'?"),
    ("    model: r2star", "    model: r2sta", "model: r2sta", "maps.r2star.model",
     "did you mean 'r2star'?"),
    ("    method: ncexp", "    method: lm", "method: lm", "maps.r2star.method",
     "not a method of model r2star"),
    ("    fit_within: null", "    fit_within: liverr", "fit_within: liverr",
     "maps.r2star.fit_within", "did you mean 'liver'?"),
    ("    on: t2w\n    seed", "    on: t2x\n    seed", "on: t2x", "rois.liver.on",
     "'t2x' is not a scan"),
    ("propagate: {from: baseline}", "propagate: {from: base}", "{from: base}",
     "rois.muscle.propagate.from", "'base' is not a timepoint"),
    ("missing: {8d: died on day 6}", "missing: {9d: died on day 6}", "9d: died",
     "subjects.rat02.missing.9d", "'9d' is not a timepoint"),
    ("        rois:   {tumour:", "        rois:   {tumor:", "{tumor:",
     "subjects.rat02.sessions.baseline.rois.tumor", "is not an ROI"),
    ("        scans:  {megre:", "        scans:  {mgre:", "{mgre:",
     "subjects.rat02.sessions.baseline.scans.mgre", "is not a scan"),
    ("baseline: baseline\n", "baseline: basline\n", "baseline: basline", "baseline",
     "did you mean 'baseline'?"),
    ("    biomarker: tumour_diameter", "    biomarker: tumour_volume  # response",
     "# response",
     "analyses[4].biomarker", "needs a biomarker with measure longest_diameter"),
    ("    group: margin_class", "    group: margin", "group: margin", "analyses[5].group",
     "neither 'arm' nor a covariate"),
    ("    test: kruskal\n", "    test: kruskal\n    correction: tukey\n", "correction: tukey",
     "analyses[1].correction", "use correction: holm with kruskal"),
    ("  - type: paired\n", "  - type: pared\n", "type: pared", "analyses[0].type",
     "did you mean 'paired'?"),
    ("    test: t\n", "    test: u\n", "test: u", "analyses[0].test", "'t' or 'wilcoxon'"),
    ("    to: 24h", "    to: baseline", "to: baseline", "analyses[0].to",
     "two different timepoints"),
])
def test_bad_references(tmp_path, monkeypatch, old, new, marker, field, words):
    text = replaced(old, new)
    err = spec_error(tmp_path, monkeypatch, text)
    check_location(err, line_with(text, marker), field)
    assert words in str(err)


def test_survival_event_must_be_boolean_for_every_subject(tmp_path, monkeypatch):
    text = replaced("recurrence_months: 9.5, recurred: true", "recurrence_months: 9.5, recurred: 1")
    err = spec_error(tmp_path, monkeypatch, text)
    check_location(err, line_with(text, "event: recurred"), "analyses[5].event")
    assert "rat03" in str(err) and "true (event observed) or false (censored)" in str(err)


def test_survival_event_absent_for_a_subject(tmp_path, monkeypatch):
    text = replaced("recurrence_months: 3, recurred: false, ", "recurrence_months: 3, ")
    err = spec_error(tmp_path, monkeypatch, text)
    check_location(err, line_with(text, "event: recurred"), "analyses[5].event")
    assert "rat01 it is absent" in str(err)


def test_timepoint_without_scans(tmp_path, monkeypatch):
    text = replaced("  rat01: {arm: control, covariates:",
                    "  rat01: {arm: control, missing: {48h: lost}, covariates:")
    text = replaced("    missing: {8d: died on day 6}", "    missing: {8d: died on day 6, 48h: x}",
                    text)
    err = spec_error(tmp_path, monkeypatch, text)
    check_location(err, line_with(text, "48h: {time: 48 h}"), "timepoints.48h")
    assert "timepoint 48h has no scans: every subject lists it as missing" in str(err)


def test_roi_with_two_sources(tmp_path, monkeypatch):
    text = replaced("    propagate: {from: baseline}",
                    "    propagate: {from: baseline}\n    seed: [1, 2, 3]")
    err = spec_error(tmp_path, monkeypatch, text)
    check_location(err, line_with(text, "  muscle:"), "rois.muscle")
    assert "exactly one source" in str(err)


def test_roi_without_source(tmp_path, monkeypatch):
    text = replaced("    propagate: {from: baseline}\n", "")
    err = spec_error(tmp_path, monkeypatch, text)
    check_location(err, line_with(text, "  muscle:"), "rois.muscle")
    assert "got none" in str(err)


def test_empty_scans_override(tmp_path, monkeypatch):
    text = replaced("        scans:  {megre: dicom/rat02_baseline}", "        scans:  {}")
    err = spec_error(tmp_path, monkeypatch, text)
    check_location(err, line_with(text, "scans:  {}"), "subjects.rat02.sessions.baseline.scans")
    assert "empty scans override" in str(err)


def test_unknown_placeholder(tmp_path, monkeypatch):
    text = replaced("_T2w.nii.gz\"", "_{sub}_T2w.nii.gz\"")
    err = spec_error(tmp_path, monkeypatch, text)
    check_location(err, line_with(text, "{sub}_T2w"), "scans.t2w.path")
    assert "{subject} or {timepoint}" in str(err)


def test_version_is_required(tmp_path, monkeypatch):
    text = replaced("oncomri: 1                          # spec format version\n", "")
    err = spec_error(tmp_path, monkeypatch, text)
    check_location(err, 1, "oncomri")
    assert "oncomri: 1" in str(err)


def test_other_version_is_refused(tmp_path, monkeypatch):
    text = replaced("oncomri: 1 ", "oncomri: 2 ")
    err = spec_error(tmp_path, monkeypatch, text)
    check_location(err, 1, "oncomri")
    assert "version 2 is not supported" in str(err)


def test_bad_seed(tmp_path, monkeypatch):
    text = replaced("    seed: [10.5, -3.0, 22.0]\n    method",
                    "    seed: [10.5, -3.0]\n    method")
    err = spec_error(tmp_path, monkeypatch, text)
    check_location(err, line_with(text, "seed: [10.5, -3.0]"), "rois.liver.seed")
    assert "three numbers" in str(err)


def test_first_error_in_file_order_is_reported(tmp_path, monkeypatch):
    text = replaced("    arm: ia_nk", "    arm: treated")
    text = replaced("  48h: {time: 48 h}", "  48h: {time: 48}", text)
    err = spec_error(tmp_path, monkeypatch, text)
    assert err.field == "timepoints.48h.time"     # earlier in the file than subjects


def test_missing_required_section(tmp_path, monkeypatch):
    start = FULL.index("biomarkers:")
    end = FULL.index("analyses:")
    text = FULL[:start] + FULL[end:].replace("tumour_", "x_", 0)
    text = text[:text.index("analyses:")]
    err = spec_error(tmp_path, monkeypatch, text)
    check_location(err, 1, "biomarkers")
    assert "required key 'biomarkers' is missing" in str(err)


def test_spec_file_problems(tmp_path, monkeypatch):
    with pytest.raises(ReadError, match="not found"):
        load_spec(tmp_path / "absent.yaml")
    err = spec_error(tmp_path, monkeypatch, "")
    check_location(err, 1, "")
    assert "empty" in str(err)
    err = spec_error(tmp_path, monkeypatch, "- a\n- b\n")
    assert "mapping of keys" in str(err)


def test_errors_are_validation_errors(tmp_path, monkeypatch):
    err = spec_error(tmp_path, monkeypatch, replaced("  48h: {time: 48 h}", "  48h: {time: 48}"))
    assert isinstance(err, ValidationError) and isinstance(err, ValueError)


def test_spec_pickles_with_its_lines(tmp_path, monkeypatch):
    import pickle

    write(tmp_path, FULL)
    monkeypatch.chdir(tmp_path)
    spec = load_spec("study.yaml")
    again = pickle.loads(pickle.dumps(spec))
    assert again.where("subjects", "rat02", "arm") == spec.where("subjects", "rat02", "arm")
    assert again.design() == spec.design()
    assert again.text_hash == spec.text_hash and again.path == spec.path


def test_yaml_anchors_and_merge_keys(tmp_path):
    text = replaced("  rat01: {arm: control, covariates:",
                    "  rat00: &ctl {arm: control, covariates: {recurrence_months: 1, "
                    "recurred: false, margin_class: AM9}}\n  rat01: {<<: *ctl, covariates:")
    spec = load_spec(write(tmp_path, text))
    assert spec.subjects["rat00"].arm == "control"
    assert spec.subjects["rat01"].arm == "control"
    assert spec.subjects["rat01"].covariates["margin_class"] == "AM1"   # own key wins
    assert spec.subjects["rat00"].covariates["margin_class"] == "AM9"
    assert spec.line_of("subjects", "rat01") == line_with(text, "rat01: {<<")


def test_unquoted_numeric_names_keep_their_text(tmp_path):
    text = """\
oncomri: 1
name: numbers
arms: {control: }
timepoints:
  01: {time: 1 d}
  02: {time: 2 d}
subjects:
  007: {arm: control, missing: {02: not scanned}}
  008: {arm: control}
scans: {t2w: {path: "x/{subject}_{timepoint}.nii.gz"}}
rois: {tumour: {on: t2w, seed: [1, 2, 3]}}
biomarkers: {vol: {roi: tumour, measure: volume}}
"""
    design = load_spec(write(tmp_path, text)).design()
    assert design.timepoint_names == ("01", "02")
    assert design.sessions == (("007", "01"), ("008", "01"), ("008", "02"))
