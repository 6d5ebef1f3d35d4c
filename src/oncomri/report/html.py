"""The study report: one self-contained HTML file plus the tidy tables as CSV.

:func:`write_report` renders (jinja2, template :data:`TEMPLATE` below) the
study design, per-arm time courses, changes per arm with their tests,
correlations, representative maps, response (waterfall, ORR/DCR), survival,
the statistics table, a methods paragraph with references, the failed
sessions and the spec text. Figures are embedded as base64 PNG; there is no
external CSS, script, font or image, so the file opens offline and can be
mailed or archived as is. Files are written atomically (temporary file in
the same folder, then renamed).
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import math
import os
import platform
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from ..core.errors import OncomriError, ValidationError
from ..study.analysis import AnalysisResult, biomarker_label, results_table, run_analyses
from ..study.design import StudyDesign
from . import figures
from .images import RepresentativeImage, load_panel

__all__ = ["MethodsInfo", "REFERENCES", "TEMPLATE", "write_report", "methods_text"]


@dataclass(frozen=True)
class MethodsInfo:
    """What the methods paragraph of the report describes.

    Attributes
    ----------
    maps : sequence of dict
        One per fitted map: ``name, model, method, scan, noise_sigma`` (e.g.
        ``{"name": "r2star", "model": "r2star", "method": "ncexp", "scan":
        "megre", "noise_sigma": "auto"}``).
    rois : sequence of dict
        One per ROI: ``name, kind`` (``mask``, ``seed``, ``propagate``), and
        optionally ``on`` (the scan whose grid it is defined on).
    biomarkers : sequence of dict
        One per biomarker: ``name`` and ``map, roi, statistic`` or ``roi,
        measure``, optionally ``unit``.
    software : mapping str -> str
        Software versions (name -> version); the versions of oncomri, Python
        and the scientific libraries in use are added when absent.
    n_sessions, n_failed : int or None
        Sessions processed and failed.
    wall_time_s : float or None
        Wall time of the run (seconds).
    """

    maps: Sequence[Mapping[str, Any]] = ()
    rois: Sequence[Mapping[str, Any]] = ()
    biomarkers: Sequence[Mapping[str, Any]] = ()
    software: Mapping[str, str] = field(default_factory=dict)
    n_sessions: int | None = None
    n_failed: int | None = None
    wall_time_s: float | None = None


#: Reference list (short citations) used by the methods paragraph.
REFERENCES: dict[str, str] = {
    "raya2010": "Raya JG, et al. Magn Reson Med 2010;63:181.",
    "feng2013": "Feng Y, et al. Magn Reson Med 2013;70:1765.",
    "gudbjartsson1995": "Gudbjartsson H, Patz S. Magn Reson Med 1995;34:910.",
    "sijbers1998": "Sijbers J, et al. Magn Reson Imaging 1998;16:87.",
    "pei2015": "Pei M, et al. Magn Reson Med 2015;73:843.",
    "wood2005": "Wood JC, et al. Blood 2005;106:1460.",
    "marquardt1963": "Marquardt DW. J Soc Ind Appl Math 1963;11:431.",
    "student1908": "Student. Biometrika 1908;6:1.",
    "wilcoxon1945": "Wilcoxon F. Biometrics Bull 1945;1:80.",
    "hodges1963": "Hodges JL, Lehmann EL. Ann Math Stat 1963;34:598.",
    "fisher1925": "Fisher RA. Statistical Methods for Research Workers. Oliver and Boyd, 1925.",
    "kramer1956": "Kramer CY. Biometrics 1956;12:307.",
    "welch1947": "Welch BL. Biometrika 1947;34:28.",
    "holm1979": "Holm S. Scand J Stat 1979;6:65.",
    "kruskal1952": "Kruskal WH, Wallis WA. J Am Stat Assoc 1952;47:583.",
    "mann1947": "Mann HB, Whitney DR. Ann Math Stat 1947;18:50.",
    "pearson1895": "Pearson K. Proc R Soc Lond 1895;58:240.",
    "fisher1921": "Fisher RA. Metron 1921;1:3.",
    "spearman1904": "Spearman C. Am J Psychol 1904;15:72.",
    "bonett2000": "Bonett DG, Wright TA. Psychometrika 2000;65:23.",
    "laird1982": "Laird NM, Ware JH. Biometrics 1982;38:963.",
    "statsmodels2010": "Seabold S, Perktold J. statsmodels. Proc 9th Python in Science Conf 2010.",
    "eisenhauer2009": "Eisenhauer EA, et al. RECIST 1.1. Eur J Cancer 2009;45:228.",
    "lencioni2010": "Lencioni R, Llovet JM. mRECIST. Semin Liver Dis 2010;30:52.",
    "clopper1934": "Clopper CJ, Pearson ES. Biometrika 1934;26:404.",
    "kaplan1958": "Kaplan EL, Meier P. J Am Stat Assoc 1958;53:457.",
    "mantel1966": "Mantel N. Cancer Chemother Rep 1966;50:163.",
    "lifelines2019": "Davidson-Pilon C. lifelines. J Open Source Softw 2019;4:1317.",
    "koda2013": "Koda et al. J Gastroenterol 2013;48:1283.",
    "fukuda2019": "Fukuda et al. Jpn J Radiol 2019. doi:10.1007/s11604-019-00843-1.",
}

_MODEL_TEXT = {
    "r2star": "mono-exponential decay S(TE) = S0 exp(-R2* TE) of a multi-echo gradient echo",
    "t2star": "mono-exponential decay S(TE) = S0 exp(-TE / T2*) of a multi-echo gradient echo",
    "t2": "mono-exponential decay S(TE) = S0 exp(-TE / T2) of a multi-echo spin echo",
}

_METHOD_TEXT: dict[str, tuple[str, tuple[str, ...]]] = {
    "ncexp": ("least squares of the noise-corrected exponential (expected Rician magnitude)",
              ("raya2010", "feng2013", "gudbjartsson1995")),
    "loglin": ("log-linear least squares", ()),
    "wloglin": ("log-linear least squares weighted by S²", ()),
    "arlo": ("auto-regression on linear operations (ARLO)", ("pei2015",)),
    "nlls": ("nonlinear least squares (bounded Levenberg-Marquardt)", ("marquardt1963",)),
    "nlls_offset": ("nonlinear least squares with a constant offset (bounded Levenberg-Marquardt)",
                    ("wood2005", "marquardt1963")),
}

_ROI_TEXT = {
    "mask": "mask file",
    "seed": "seeded region growing (oncomri.roi.segment_from_seed)",
    "propagate": "propagated from the baseline session by registration (oncomri.roi.propagate_mask)",
}

# Substrings of TestResult.test (or analysis extras) -> references.
_TEST_REFS = (
    ("paired t-test", ("student1908",)),
    ("Wilcoxon", ("wilcoxon1945", "hodges1963")),
    ("one-way ANOVA", ("fisher1925",)),
    ("Tukey", ("kramer1956",)),
    ("Welch", ("welch1947", "holm1979")),
    ("Kruskal", ("kruskal1952",)),
    ("Mann-Whitney", ("mann1947", "holm1979")),
    ("Pearson correlation", ("pearson1895", "fisher1921")),
    ("Spearman", ("spearman1904", "bonett2000")),
    ("mixed model", ("laird1982", "statsmodels2010")),
    ("Clopper-Pearson", ("clopper1934",)),
    ("log-rank", ("mantel1966", "kaplan1958", "lifelines2019")),
)

_CRITERIA_REFS = {"recist": ("eisenhauer2009",), "mrecist": ("lencioni2010", "eisenhauer2009"),
                  "volumetric": ("eisenhauer2009",)}


class _Refs:
    """Numbered references in order of first citation."""

    def __init__(self) -> None:
        self.order: list[str] = []

    def cite(self, keys: Sequence[str]) -> str:
        nums = []
        for k in keys:
            if k not in self.order:
                self.order.append(k)
            nums.append(self.order.index(k) + 1)
        return "[" + ", ".join(str(n) for n in sorted(set(nums))) + "]" if nums else ""

    def listing(self) -> list[str]:
        return [REFERENCES[k] for k in self.order]


def _software_versions(given: Mapping[str, str]) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"oncomri": None, "Python": platform.python_version()}
    for pkg in ("numpy", "scipy", "pandas", "statsmodels", "lifelines", "nibabel", "matplotlib", "jinja2"):
        out[pkg] = None
    for k in list(out):
        if out[k] is None:
            try:
                out[k] = version(k)
            except PackageNotFoundError:
                out[k] = None
    out.update({str(k): str(v) for k, v in given.items()})
    return {k: v for k, v in out.items() if v}


def methods_text(methods: MethodsInfo | None, results: Sequence[AnalysisResult]) -> tuple[list[str], list[str]]:
    """The methods paragraphs (plain text with ``[n]`` citations) and the numbered reference list."""
    methods = methods or MethodsInfo()
    refs = _Refs()
    paras: list[str] = []
    parts = []
    for m in methods.maps:
        model = str(m.get("model", ""))
        method = str(m.get("method", "") or "default")
        mtext, mrefs = _METHOD_TEXT.get(method, (f"method {method}", ()))
        cite = refs.cite(mrefs)
        sigma = m.get("noise_sigma")
        sigma_text = ""
        if sigma is not None and str(sigma) != "":
            if str(sigma) == "auto":
                sigma_text = (", noise sigma estimated from the image background "
                              f"{refs.cite(('gudbjartsson1995', 'sijbers1998'))}")
            else:
                sigma_text = f", noise sigma {sigma} (signal units)"
        parts.append(f"{m.get('name', model)}: {_MODEL_TEXT.get(model, model + ' model')}, fitted voxelwise from the "
                     f"{m.get('scan', '?')} scan by {mtext}{(' ' + cite) if cite else ''}{sigma_text}")
    if parts:
        paras.append("Parameter maps. " + "; ".join(parts) + ".")
    if methods.rois:
        rtext = []
        for r in methods.rois:
            kind = str(r.get("kind", ""))
            on = f" on the {r['on']} scan" if r.get("on") else ""
            rtext.append(f"{r.get('name', '?')} ({_ROI_TEXT.get(kind, kind)}{on})")
        paras.append("Regions of interest: " + "; ".join(rtext) + ".")
    if methods.biomarkers:
        btext = []
        for b in methods.biomarkers:
            unit = f", {b['unit']}" if b.get("unit") else ""
            if b.get("measure") == "ablative_margin" and b.get("ablation_roi"):
                cite = refs.cite(("koda2013", "fukuda2019"))
                btext.append(f"{b.get('name')} = minimum ablative margin of ROI {b.get('roi')} within the "
                             f"ablation zone ROI {b.get('ablation_roi')}{unit or ', mm'} {cite}")
            elif b.get("measure"):
                btext.append(f"{b.get('name')} = {str(b['measure']).replace('_', ' ')} of ROI {b.get('roi')}{unit}")
            else:
                btext.append(f"{b.get('name')} = {b.get('statistic', 'median')} of {b.get('map')} in ROI {b.get('roi')}{unit}")
        paras.append("Biomarkers (one value per session): " + "; ".join(btext) + ".")
    run = []
    if methods.n_sessions is not None:
        run.append(f"{methods.n_sessions} session(s) were processed")
    if methods.n_failed is not None:
        run.append(f"{methods.n_failed} failed (listed under Failures)")
    if methods.wall_time_s is not None:
        run.append(f"wall time {methods.wall_time_s / 60.0:.1f} min")
    if run:
        paras.append("Run: " + ", ".join(run) + ".")
    stext = []
    for r in results:
        if r.error is not None:
            continue
        keys: list[str] = []
        names = " ".join(tr.test for _, tr in r.tests) + " " + r.title
        for needle, k in _TEST_REFS:
            if needle.lower() in names.lower():
                keys += [x for x in k if x not in keys]
        if r.type == "response":
            keys = list(_CRITERIA_REFS.get(str(r.extra.get("criteria")), ())) + keys
            if "clopper1934" not in keys:
                keys.append("clopper1934")
        if r.type == "survival":
            keys = ["kaplan1958"] + [k for k in keys if k != "kaplan1958"]
            if "lifelines2019" not in keys:
                keys.append("lifelines2019")
        cite = refs.cite(keys)
        stext.append(f"{r.title}{(' ' + cite) if cite else ''}")
    if stext:
        paras.append("Statistics (two-sided, 95 % confidence intervals; pairwise p-values adjusted as stated in the "
                     "statistics table): " + "; ".join(stext) + ".")
    sw = _software_versions(methods.software)
    paras.append("Software: " + ", ".join(f"{k} {v}" for k, v in sw.items()) + ".")
    return paras, refs.listing()


# --------------------------------------------------------------------------
# Rendering helpers
# --------------------------------------------------------------------------

def _png(fig: Any) -> str:
    """Base64 PNG of a matplotlib Figure (the figure is discarded)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not math.isfinite(f):
        return ""
    return f"{f:.{digits}g}"


def _fmt_p(p: Any) -> str:
    try:
        f = float(p)
    except (TypeError, ValueError):
        return ""
    if not math.isfinite(f):
        return ""
    return "< 0.0001" if f < 1e-4 else f"{f:.2g}" if f < 0.01 else f"{f:.3f}"


def _time_text(t_s: float) -> str:
    """A time after treatment in a readable unit: ``-1 h``, ``24 h``, ``8 d``."""
    a = abs(t_s)
    for limit, scale, unit in ((60.0, 1.0, "s"), (3600.0, 60.0, "min"), (3 * 86400.0, 3600.0, "h")):
        if a < limit:
            return f"{t_s / scale:.3g} {unit}"
    return f"{t_s / 86400.0:.3g} d"


def _design_table(design: StudyDesign, table: pd.DataFrame) -> dict[str, Any]:
    measured = set()
    if len(table) and {"subject", "timepoint"} <= set(table.columns):
        measured = set(zip(table["subject"].astype(str), table["timepoint"].astype(str)))
    cols = [{"name": t.name, "time": _time_text(t.time_s)} for t in design.timepoints]
    rows = []
    for arm in design.arms:
        subj = [s.id for s in design.subjects if s.arm == arm.name]
        cells = []
        for t in design.timepoints:
            n = sum(1 for s, tp in design.sessions if tp == t.name and s in subj)
            m = sum(1 for s in subj if (s, t.name) in measured)
            cells.append(f"{n}" + (f" ({m} measured)" if m != n else ""))
        rows.append({"arm": arm.name, "description": arm.description, "n_subjects": len(subj), "cells": cells})
    total = [str(sum(1 for _, tp in design.sessions if tp == t.name)) for t in design.timepoints]
    return {"columns": cols, "rows": rows, "total": total, "n_subjects": len(design.subjects),
            "n_sessions": len(design.sessions)}


def _stats_rows(results: Sequence[AnalysisResult]) -> list[dict[str, str]]:
    tab = results_table(results)
    titles = {r.name: r.title for r in results}
    out = []
    for row in tab.to_dict("records"):
        if str(row["notes"]).startswith("error:"):
            continue
        unit = f" {row['unit']}" if row["unit"] and row["unit"] != "fraction" else ""
        ci = ""
        if _fmt(row["ci_low"]) or _fmt(row["ci_high"]):
            ci = f"{_fmt(row['ci_low'])} to {_fmt(row['ci_high'])}"
        stat = ""
        if _fmt(row["statistic"]):
            df = row["df"]
            df_text = f" (df {df if isinstance(df, str) else _fmt(df)})" if (isinstance(df, str) or _fmt(df)) else ""
            stat = f"{row['statistic_name']} = {_fmt(row['statistic'])}{df_text}"
        out.append({
            "analysis": row["analysis"], "title": titles.get(row["analysis"], ""), "label": row["label"],
            "test": row["test"], "n": row["n"], "estimate": (_fmt(row["estimate"]) + unit) if _fmt(row["estimate"]) else "",
            "estimate_name": row["estimate_name"], "ci": ci, "statistic": stat, "p": _fmt_p(row["p_value"]),
            "notes": row["notes"],
        })
    return out


def _failures(failures: Any) -> dict[str, Any] | None:
    if failures is None:
        return None
    if isinstance(failures, pd.DataFrame):
        df = failures
    else:
        rows = []
        for f in failures:
            if isinstance(f, Mapping):
                rows.append(dict(f))
            elif hasattr(f, "__dict__") and not isinstance(f, (tuple, list)):
                rows.append({k: v for k, v in vars(f).items() if not k.startswith("_")})
            else:
                seq = list(f)
                rows.append({"subject": seq[0] if seq else "", "timepoint": seq[1] if len(seq) > 1 else "",
                             "reason": "; ".join(str(x) for x in seq[2:])})
        df = pd.DataFrame(rows)
    if df.empty:
        return {"columns": [], "rows": []}
    cols = [str(c) for c in df.columns]
    return {"columns": cols, "rows": [["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
                                        for v in r] for r in df.itertuples(index=False)]}


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_") or "analysis"


def _atomic_write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _atomic_csv(path: Path, df: pd.DataFrame) -> None:
    _atomic_write(path, df.to_csv(index=False))


# --------------------------------------------------------------------------
# The template (a package string: no data file to ship)
# --------------------------------------------------------------------------

TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="oncomri {{ version }}">
<title>{{ title }}</title>
<style>
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 1em 2em 4em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #ccd; padding-bottom: 0.2em; margin-top: 2em; }
h3 { font-size: 1.05em; margin-bottom: 0.3em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f0f2f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 0.6em 0 1.4em; }
.grid figure { display: inline-block; vertical-align: top; width: 49%; margin: 0.3em 0 1em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #444; }
.meta { color: #555; font-size: 0.9em; }
.error { background: #fdecea; border-left: 4px solid #d62728; padding: 0.4em 0.8em; margin: 0.5em 0; }
.warning { background: #fff7e0; border-left: 4px solid #e0a000; padding: 0.4em 0.8em; margin: 0.5em 0; }
ul.notes { font-size: 0.85em; color: #444; margin-top: 0; }
nav a { margin-right: 0.8em; font-size: 0.9em; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
ol.refs { font-size: 0.85em; }
</style>
</head>
<body>
<header>
<h1>{{ title }}</h1>
<p class="meta">Study <b>{{ study_name }}</b>{% if description %}: {{ description }}{% endif %}<br>
Generated {{ generated }} by oncomri {{ version }}.</p>
<nav>{% for id, name in sections %}<a href="#{{ id }}">{{ name }}</a>{% endfor %}</nav>
{% for w in warnings %}<div class="warning">{{ w }}</div>{% endfor %}
</header>

<section id="design">
<h2>Study design</h2>
<p>{{ design.n_subjects }} subjects in {{ design.rows|length }} arms, {{ design.n_sessions }} sessions; baseline: {{ baseline }}.
Cells: sessions per arm and timepoint (with the number that have measurements where it differs).</p>
<table class="design">
<tr><th>arm</th><th>description</th><th>subjects</th>{% for c in design.columns %}<th>{{ c.name }}<br><small>{{ c.time }}</small></th>{% endfor %}</tr>
{% for r in design.rows %}<tr><td>{{ r.arm }}</td><td>{{ r.description }}</td><td class="num">{{ r.n_subjects }}</td>{% for c in r.cells %}<td class="num">{{ c }}</td>{% endfor %}</tr>
{% endfor %}<tr><th>all</th><th></th><th class="num">{{ design.n_subjects }}</th>{% for c in design.total %}<th class="num">{{ c }}</th>{% endfor %}</tr>
</table>
</section>

<section id="time-courses">
<h2>Time courses</h2>
<div class="grid">{% for f in time_courses %}<figure><img alt="{{ f.alt }}" src="data:image/png;base64,{{ f.png }}"><figcaption>{{ f.caption }}</figcaption></figure>
{% else %}<p>No measurements.</p>{% endfor %}</div>
{% for a in mixed %}{% include "analysis" %}{% endfor %}
</section>

<section id="changes">
<h2>Changes per arm</h2>
{% for a in changes %}{% include "analysis" %}{% else %}<p>No paired or between-arm analysis in the spec.</p>{% endfor %}
</section>

{% if correlations %}<section id="correlation">
<h2>Correlation</h2>
{% for a in correlations %}{% include "analysis" %}{% endfor %}
</section>{% endif %}

{% if maps or map_errors %}<section id="maps">
<h2>Representative maps</h2>
<p>Per arm the subject whose biomarker at the last timepoint is the arm's median, at every timepoint: the map in colour
over the anatomy (grey), the ROI outlined in cyan, the axial slice with the largest ROI area; radiological display
(subject's right on the left); one colour range per parameter.</p>
{% for f in maps %}<figure><img alt="{{ f.alt }}" src="data:image/png;base64,{{ f.png }}"><figcaption>{{ f.caption }}</figcaption></figure>{% endfor %}
{% for e in map_errors %}<div class="warning">{{ e }}</div>{% endfor %}
</section>{% endif %}

{% if responses %}<section id="response">
<h2>Response</h2>
{% for a in responses %}{% include "analysis" %}
{% if a.rates %}<table class="rates">
<tr><th>group</th><th>rate</th><th>responders / n</th><th>proportion</th><th>95 % CI (Clopper-Pearson)</th><th>CR</th><th>PR</th><th>SD</th><th>PD</th><th>NE</th></tr>
{% for r in a.rates %}<tr><td>{{ r.group }}</td><td>{{ r.rate }}</td><td class="num">{{ r.frac }}</td><td class="num">{{ r.pct }}</td><td class="num">{{ r.ci }}</td>
<td class="num">{{ r.CR }}</td><td class="num">{{ r.PR }}</td><td class="num">{{ r.SD }}</td><td class="num">{{ r.PD }}</td><td class="num">{{ r.NE }}</td></tr>
{% endfor %}</table>{% endif %}
{% endfor %}
</section>{% endif %}

{% if survivals %}<section id="survival">
<h2>Survival</h2>
{% for a in survivals %}{% include "analysis" %}{% endfor %}
</section>{% endif %}

<section id="statistics">
<h2>Statistics</h2>
{% for e in errors %}<div class="error">Analysis <b>{{ e.name }}</b> ({{ e.title }}) could not be run: {{ e.error }}</div>{% endfor %}
{% if stats_rows %}<table class="statistics" id="statistics-table">
<tr><th>analysis</th><th>label</th><th>test</th><th>n</th><th>estimate</th><th>CI</th><th>statistic</th><th>p</th><th>notes</th></tr>
{% for r in stats_rows %}<tr class="stat-row" data-analysis="{{ r.analysis }}"><td title="{{ r.title }}">{{ r.analysis }}</td><td>{{ r.label }}</td><td>{{ r.test }}</td><td>{{ r.n }}</td>
<td class="num" title="{{ r.estimate_name }}">{{ r.estimate }}<br><small>{{ r.estimate_name }}</small></td><td class="num">{{ r.ci }}</td><td class="num">{{ r.statistic }}</td><td class="num">{{ r.p }}</td><td><small>{{ r.notes }}</small></td></tr>
{% endfor %}</table>
<p class="meta">Also in statistics.csv beside this report (full precision).</p>
{% else %}<p>No statistical test was run.</p>{% endif %}
</section>

<section id="methods">
<h2>Methods</h2>
{% for p in methods %}<p>{{ p }}</p>{% endfor %}
{% if references %}<h3>References</h3><ol class="refs">{% for r in references %}<li>{{ r }}</li>{% endfor %}</ol>{% endif %}
</section>

<section id="failures">
<h2>Failures</h2>
{% if failures and failures.rows %}<table class="failures"><tr>{% for c in failures.columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for r in failures.rows %}<tr>{% for v in r %}<td>{{ v }}</td>{% endfor %}</tr>{% endfor %}</table>
{% elif failures is none %}<p>No failure information was given.</p>{% else %}<p>No session failed.</p>{% endif %}
</section>

<section id="spec">
<h2>Study specification</h2>
{% if spec_text %}<details><summary>Show the study spec (YAML)</summary><pre>{{ spec_text }}</pre></details>
{% else %}<p>The spec text was not given.</p>{% endif %}
</section>
</body>
</html>
"""

_ANALYSIS_PARTIAL = r"""<article class="analysis" id="analysis-{{ a.name }}">
<h3>{{ a.title }}</h3>
{% if a.error %}<div class="error">This analysis could not be run: {{ a.error }}</div>{% endif %}
{% if a.png %}<figure><img alt="{{ a.title }}" src="data:image/png;base64,{{ a.png }}"><figcaption>{{ a.caption }}</figcaption></figure>{% endif %}
{% if a.notes %}<ul class="notes">{% for n in a.notes %}<li>{{ n }}</li>{% endfor %}</ul>{% endif %}
</article>
"""


def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.DictLoader({"report": TEMPLATE, "analysis": _ANALYSIS_PARTIAL}),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=False,
    )


# --------------------------------------------------------------------------
# write_report
# --------------------------------------------------------------------------

def _caption(r: AnalysisResult) -> str:
    if r.error is not None:
        return ""
    if r.type == "paired":
        return (f"Change {r.extra.get('from')} to {r.extra.get('to')} per subject (points), box: median and quartiles; "
                "p of the within-arm test above each arm.")
    if r.type == "between_arms":
        return "Per-subject values (points), box: median and quartiles; omnibus p in the title, pairwise p on the brackets."
    if r.type == "correlation":
        return "One point per subject, coloured by arm; line: ordinary least squares of y on x."
    if r.type == "response":
        return "Best % change from baseline per subject, coloured by best overall response; dashed lines: PR and PD thresholds."
    if r.type == "survival":
        return "Kaplan-Meier estimates with 95 % pointwise bands; ticks: censored subjects."
    return ""


def write_report(
    out_dir: str | Path,
    *,
    design: StudyDesign,
    table: pd.DataFrame,
    analyses: Sequence[Any] | None,
    images: Sequence[RepresentativeImage] | None = None,
    methods: MethodsInfo | None = None,
    failures: Any = None,
    spec_text: str | None = None,
    title: str | None = None,
) -> Path:
    """Write ``<out_dir>/report.html`` (self-contained) and the tidy tables as CSV beside it.

    Parameters
    ----------
    out_dir : str or Path
        Folder of the report (created if absent).
    design : StudyDesign
    table : pandas.DataFrame
        The tidy measurement table (written as ``measurements.csv``).
    analyses : sequence of AnalysisResult, or of spec analysis models
        Results of :func:`oncomri.study.analysis.run_analyses`; spec models
        are run here. Their tests go to ``statistics.csv``; each response
        analysis writes ``response_<name>.csv`` (per subject and timepoint),
        ``response_<name>_best.csv`` and ``response_<name>_rates.csv``
        (ORR/DCR per arm and overall).
    images : sequence of RepresentativeImage, optional
        Representative maps (see :func:`oncomri.report.choose_representatives`);
        one figure per parameter, arms x timepoints.
    methods : MethodsInfo, optional
        What the methods paragraph describes.
    failures : DataFrame, or sequence of mappings / tuples, optional
        Failed sessions with their reason (e.g. columns ``subject,
        timepoint, stage, reason``); tuples are ``(subject, timepoint,
        reason...)``.
    spec_text : str, optional
        The spec YAML, shown in a collapsible block.
    title : str, optional
        Report title (default: the study name).

    Returns
    -------
    Path
        The report file.

    Notes
    -----
    A figure that cannot be drawn (e.g. a map file missing) does not stop
    the report: it is replaced by a warning naming the reason.
    """
    out = Path(out_dir)
    if not isinstance(design, StudyDesign):
        raise ValidationError("write_report: design must be a StudyDesign (spec.design())")
    if not isinstance(table, pd.DataFrame):
        raise ValidationError("write_report: table must be the tidy measurement DataFrame")
    analyses = list(analyses or ())
    if analyses and not all(isinstance(a, AnalysisResult) for a in analyses):
        results = run_analyses(analyses, table, design=design)
    else:
        results = analyses
    warnings: list[str] = []

    def draw(what: str, make: Callable[[], Any]) -> str | None:
        try:
            return _png(make())
        except Exception as exc:  # a figure never takes the report down
            warnings.append(f"{what}: figure could not be drawn ({type(exc).__name__}: {exc})")
            return None

    # Time courses: map biomarkers first, then geometry, in table order.
    time_courses = []
    if len(table) and "biomarker" in table.columns:
        bms = list(dict.fromkeys(table["biomarker"].astype(str)))
        def is_map(b: str) -> bool:
            if "map" not in table.columns:
                return False
            v = table.loc[table["biomarker"] == b, "map"].iloc[0]
            return not pd.isna(v) and bool(str(v))

        has_map = {b: is_map(b) for b in bms}
        for b in sorted(bms, key=lambda b: (not has_map[b], bms.index(b))):
            png = draw(f"time course of {b}", lambda b=b: figures.time_course_figure(table, design=design, biomarker=b))
            if png:
                time_courses.append({"png": png, "alt": f"time course of {b}",
                                     "caption": f"{biomarker_label(b)} per arm over time: mean ± SEM (thick), "
                                                "individual subjects (faint)."})

    def card(r: AnalysisResult, maker: Callable[[], Any] | None) -> dict[str, Any]:
        png = None
        if r.error is None and maker is not None:
            png = draw(r.title, maker)
        return {"name": r.name, "title": r.title, "error": r.error, "png": png, "caption": _caption(r),
                "notes": list(r.notes), "rates": []}

    changes, correlations, responses, survivals, mixed = [], [], [], [], []
    for r in results:
        if r.type in ("paired", "between_arms"):
            changes.append(card(r, lambda r=r: figures.change_figure(r, design=design)))
        elif r.type == "correlation":
            correlations.append(card(r, lambda r=r: figures.correlation_figure(r, design=design)))
        elif r.type == "response":
            c = card(r, lambda r=r: figures.waterfall_figure(r, design=design))
            if r.error is None:
                for row in r.extra["rates"].to_dict("records"):
                    c["rates"].append({**row, "frac": f"{row['n_responders']} / {row['n_total']}",
                                       "pct": f"{100 * row['proportion']:.0f} %",
                                       "ci": f"{100 * row['ci_low']:.0f} to {100 * row['ci_high']:.0f} %"})
            responses.append(c)
        elif r.type == "survival":
            survivals.append(card(r, lambda r=r: figures.km_figure(r, design=design)))
        elif r.type == "mixed_model":
            c = card(r, None)
            if r.error is None:
                c["notes"].append("Coefficients (fixed effects) are in the statistics table.")
            mixed.append(c)
        else:
            changes.append(card(r, None))

    # Representative maps: one figure per parameter.
    maps, map_errors = [], []
    by_param: dict[str, list[Any]] = {}
    for img in images or ():
        try:
            panel = load_panel(img)
        except (OncomriError, OSError, ValueError) as exc:
            map_errors.append(f"{img.subject} {img.timepoint} {img.parameter}: {exc}")
            continue
        by_param.setdefault(img.parameter, []).append(panel)
    for param, panels in by_param.items():
        png = draw(f"representative {param} maps", lambda panels=panels: figures.maps_figure(
            panels, arms=design.arm_names, timepoints=design.timepoint_names))
        if png:
            unit = panels[0].image.unit
            maps.append({"png": png, "alt": f"representative {param} maps",
                         "caption": f"{param}{' (' + unit + ')' if unit else ''}: rows arms, columns timepoints; "
                                    "subject and slice per panel title."})

    paras, refs = methods_text(methods, results)
    sections = [("design", "Study design"), ("time-courses", "Time courses"), ("changes", "Changes per arm")]
    if correlations:
        sections.append(("correlation", "Correlation"))
    if maps or map_errors:
        sections.append(("maps", "Representative maps"))
    if responses:
        sections.append(("response", "Response"))
    if survivals:
        sections.append(("survival", "Survival"))
    sections += [("statistics", "Statistics"), ("methods", "Methods"), ("failures", "Failures"),
                 ("spec", "Study specification")]
    from .. import __version__

    html = _environment().get_template("report").render(
        title=title or design.name, study_name=design.name, description=design.description,
        generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), version=__version__,
        sections=sections, warnings=warnings, design=_design_table(design, table), baseline=design.baseline,
        time_courses=time_courses, mixed=mixed, changes=changes, correlations=correlations, maps=maps,
        map_errors=map_errors, responses=responses, survivals=survivals,
        errors=[{"name": r.name, "title": r.title, "error": r.error} for r in results if r.error is not None],
        stats_rows=_stats_rows(results), methods=paras, references=refs, failures=_failures(failures),
        spec_text=spec_text,
    )
    out.mkdir(parents=True, exist_ok=True)
    _atomic_csv(out / "measurements.csv", table)
    _atomic_csv(out / "statistics.csv", results_table(results))
    for r in results:
        if r.type == "response" and r.error is None:
            base = _safe_name(r.name)
            _atomic_csv(out / f"response_{base}.csv", r.data)
            _atomic_csv(out / f"response_{base}_best.csv", r.extra["best"])
            _atomic_csv(out / f"response_{base}_rates.csv", r.extra["rates"])
    path = out / "report.html"
    _atomic_write(path, html)
    return path
