"""The report's figures, each a function returning a :class:`matplotlib.figure.Figure`.

The figures are built with the object-oriented API on
:class:`matplotlib.figure.Figure` (no pyplot, no global state, nothing is
shown): render one with ``fig.savefig(buffer, format="png")``. Every axis
names its unit. Arms keep one colour throughout the report
(:func:`arm_colors`).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..study.analysis import AnalysisResult, biomarker_label
from ..study.design import StudyDesign
from .images import MapPanel, shared_range

__all__ = [
    "arm_colors",
    "time_axis",
    "format_p",
    "time_course_figure",
    "change_figure",
    "correlation_figure",
    "waterfall_figure",
    "km_figure",
    "maps_figure",
]

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf")
_RESPONSE_COLORS = {"CR": "#1a7f37", "PR": "#7cc46f", "SD": "#9e9e9e", "PD": "#d62728", "NE": "#d9d9d9", "": "#bdbdbd"}


def arm_colors(design: StudyDesign) -> dict[str, str]:
    """One colour per arm, in spec order (tab10 palette)."""
    return {a: _PALETTE[i % len(_PALETTE)] for i, a in enumerate(design.arm_names)}


def time_axis(design: StudyDesign) -> tuple[float, str]:
    """Seconds per plotted time unit and its name: hours, or days when the study spans 3 days or more."""
    span = max((abs(t.time_s) for t in design.timepoints), default=0.0)
    return (86400.0, "d") if span >= 3 * 86400.0 else (3600.0, "h")


def format_p(p: float) -> str:
    """``p = 0.012``, ``p < 0.0001``, or ``p = n/a``."""
    if p is None or not math.isfinite(p):
        return "p = n/a"
    if p < 1e-4:
        return "p < 0.0001"
    if p < 0.01:
        return f"p = {p:.2g}"
    if p < 0.1:
        return f"p = {p:.3f}"
    return f"p = {p:.2f}"


def _axis_label(text: str, unit: str) -> str:
    return f"{text} ({unit})" if unit else text


def time_course_figure(table: pd.DataFrame, *, design: StudyDesign, biomarker: str) -> Figure:
    """Per-arm mean ± SEM of ``biomarker`` over time, each subject as a faint line.

    SEM = SD / sqrt(n) with the sample SD (ddof 1); no bar where n = 1.
    """
    rows = table[table["biomarker"] == biomarker].copy()
    rows["value"] = pd.to_numeric(rows["value"], errors="coerce")
    rows = rows.dropna(subset=["value"])
    unit = str(rows["unit"].iloc[0]) if len(rows) else ""
    scale, tname = time_axis(design)
    colors = arm_colors(design)
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.subplots()
    rows["t"] = [design.time_of(tp) / scale for tp in rows["timepoint"]]
    for arm in design.arm_names:
        sub = rows[rows["arm"] == arm]
        if sub.empty:
            continue
        for _, s in sub.sort_values("t").groupby("subject"):
            ax.plot(s["t"], s["value"], color=colors[arm], alpha=0.22, lw=0.8)
        g = sub.groupby("t")["value"]
        mean, n = g.mean(), g.count()
        sem = (g.std(ddof=1) / np.sqrt(n)).where(n > 1)
        ax.errorbar(mean.index, mean.to_numpy(), yerr=sem.fillna(0).to_numpy(), color=colors[arm], lw=2,
                    marker="o", ms=4, capsize=3, label=f"{arm} (n={sub['subject'].nunique()})")
    ax.set_xlabel(f"time after treatment ({tname})")
    ax.set_ylabel(_axis_label(biomarker_label(biomarker), unit))
    ax.set_title(f"{biomarker_label(biomarker)}: mean ± SEM per arm", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def _strip(ax, groups: list[tuple[str, np.ndarray]], colors: Mapping[str, str]) -> None:
    rng = np.random.default_rng(0)  # fixed jitter: the same figure every run
    data = [v for _, v in groups]
    ax.boxplot(data, positions=range(len(groups)), widths=0.5, showfliers=False,
               medianprops={"color": "k"}, boxprops={"color": "0.4"}, whiskerprops={"color": "0.4"},
               capprops={"color": "0.4"})
    for i, (arm, v) in enumerate(groups):
        ax.scatter(i + rng.uniform(-0.12, 0.12, v.size), v, s=18, color=colors.get(arm, "k"), zorder=3,
                   edgecolor="white", linewidth=0.5)
    ax.set_xticks(range(len(groups)), [f"{a}\n(n={v.size})" for a, v in groups])


def change_figure(result: AnalysisResult, *, design: StudyDesign) -> Figure:
    """Strip + box plot per arm of a ``paired`` (change to − from) or ``between_arms`` result, p annotated.

    Paired: each arm's paired-test p above its box. Between arms: the
    omnibus p in the title and the pairwise (adjusted) p on brackets.
    """
    colors = arm_colors(design)
    fig = Figure(figsize=(5.6, 4.0))
    ax = fig.subplots()
    data = result.data
    arms = [a for a in design.arm_names if a in set(data["arm"])]
    label = biomarker_label(result.biomarker)
    if result.type == "paired":
        col = "change"
        groups = [(a, data.loc[data["arm"] == a, col].to_numpy(float)) for a in arms]
        _strip(ax, groups, colors)
        ax.axhline(0.0, color="0.5", lw=0.8, ls="--")
        ptext = {lab: format_p(tr.p_value) for lab, tr in result.tests}
        top = max((np.nanmax(v) for _, v in groups if v.size), default=1.0)
        bottom = min((np.nanmin(v) for _, v in groups if v.size), default=0.0)
        pad = 0.08 * (top - bottom or 1.0)
        for i, (a, _) in enumerate(groups):
            if a in ptext:
                ax.text(i, top + pad, ptext[a], ha="center", va="bottom", fontsize=8)
        ax.set_ylim(bottom - pad, top + 3 * pad)
        ax.set_ylabel(_axis_label(f"Δ {label} ({result.extra['to']} − {result.extra['from']})", result.unit))
        ax.set_title(f"{label}: change {result.extra['from']} → {result.extra['to']}", fontsize=10)
    else:
        groups = [(a, data.loc[data["arm"] == a, "value"].to_numpy(float)) for a in arms]
        _strip(ax, groups, colors)
        change = result.extra.get("change", "none")
        if change != "none":
            ax.axhline(0.0, color="0.5", lw=0.8, ls="--")
        tp = result.extra["timepoint"]
        what = f"{label} at {tp}" if change == "none" else f"Δ {label} ({design.baseline} → {tp})"
        ax.set_ylabel(_axis_label(what, result.unit))
        omnibus = result.tests[0][1]
        ax.set_title(f"{label} at {result.extra['timepoint']}: {omnibus.test}, {format_p(omnibus.p_value)}",
                     fontsize=10)
        top = max((np.nanmax(v) for _, v in groups if v.size), default=1.0)
        bottom = min((np.nanmin(v) for _, v in groups if v.size), default=0.0)
        step = 0.09 * (top - bottom or 1.0)
        pos = {a: i for i, (a, _) in enumerate(groups)}
        level = top + step
        for lab, tr in result.tests[1:]:
            b, _, a = lab.partition(" vs ")
            if a not in pos or b not in pos:
                continue
            x0, x1 = sorted((pos[a], pos[b]))
            ax.plot([x0, x0, x1, x1], [level - step * 0.3, level, level, level - step * 0.3], color="0.3", lw=0.8)
            ax.text((x0 + x1) / 2, level, format_p(tr.p_value), ha="center", va="bottom", fontsize=7)
            level += step
        ax.set_ylim(bottom - step, level + step)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def correlation_figure(result: AnalysisResult, *, design: StudyDesign) -> Figure:
    """Scatter of a ``correlation`` result coloured by arm, with the OLS line, R², p and n."""
    colors = arm_colors(design)
    fig = Figure(figsize=(5.6, 4.2))
    ax = fig.subplots()
    d = result.data
    for arm in design.arm_names:
        s = d[d["arm"] == arm]
        if len(s):
            ax.scatter(s["x"], s["y"], s=22, color=colors[arm], label=arm, edgecolor="white", linewidth=0.5, zorder=3)
    line = result.extra["line"]
    xs = np.linspace(float(d["x"].min()), float(d["x"].max()), 50)
    ax.plot(xs, line["slope"] * xs + line["intercept"], color="k", lw=1.2, label="least-squares line")
    tr = result.tests[0][1]
    r2 = result.extra["r_squared"]
    sym = "R²" if result.extra.get("method", "pearson") == "pearson" else "ρ²"
    ax.text(0.02, 0.98, f"{sym} = {r2:.2f}, {format_p(tr.p_value)}, n = {len(d)}", transform=ax.transAxes,
            va="top", ha="left", fontsize=9, bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
    ax.set_xlabel(_axis_label(result.extra["x_label"], result.extra["x_unit"]), fontsize=9)
    ax.set_ylabel(_axis_label(result.extra["y_label"], result.extra["y_unit"]), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="best")
    fig.tight_layout()
    return fig


def waterfall_figure(result: AnalysisResult, *, design: StudyDesign) -> Figure:
    """Waterfall of the best % change per subject, bars coloured by best overall response.

    Dashed lines mark the PR threshold (from baseline) and the PD threshold
    (from the nadir, drawn for orientation) of the criteria used.
    """
    colors = arm_colors(design)
    wf = result.extra["waterfall"]
    fig = Figure(figsize=(max(5.0, 0.28 * len(wf) + 2.0), 3.8))
    ax = fig.subplots()
    x = np.arange(len(wf))
    ax.bar(x, wf["best_percent_change"], color=[_RESPONSE_COLORS.get(c, "#bdbdbd") for c in wf["best_overall_response"]],
           edgecolor="0.3", linewidth=0.4)
    ax.set_xticks(x, list(wf["subject"]), rotation=90, fontsize=7)
    for tick, arm in zip(ax.get_xticklabels(), wf["arm"]):
        tick.set_color(colors.get(arm, "k"))
    thr = {}
    assessments = result.extra.get("assessments", {})
    if assessments:
        thr = next(iter(assessments.values())).thresholds
    pr = -thr["pr_decrease_percent"] if "pr_decrease_percent" in thr else thr.get("pr_percent")
    pd_ = thr.get("pd_increase_percent", thr.get("pd_percent"))
    if pr is not None:
        ax.axhline(pr, color="#1a7f37", ls="--", lw=0.8)
    if pd_ is not None:
        ax.axhline(pd_, color="#d62728", ls="--", lw=0.8)
    ax.axhline(0, color="k", lw=0.6)
    from matplotlib.patches import Patch

    present = [c for c in ("CR", "PR", "SD", "PD", "NE") if c in set(wf["best_overall_response"])]
    ax.legend(handles=[Patch(color=_RESPONSE_COLORS[c], label=c) for c in present], fontsize=8, frameon=False,
              ncol=len(present) or 1, loc="upper right")
    ax.set_ylabel("best change from baseline (%)")
    ax.set_title(f"{result.extra.get('criteria_name', '')} best response (tick colour: arm)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def km_figure(result: AnalysisResult, *, design: StudyDesign | None = None) -> Figure:
    """Kaplan–Meier curves of a ``survival`` result with pointwise CI bands, censor marks and log-rank p.

    Grouped by arm (and given ``design``), each curve has its arm's colour.
    """
    fig = Figure(figsize=(5.6, 4.0))
    ax = fig.subplots()
    km = result.extra["km"]
    by_arm = arm_colors(design) if design is not None and result.extra.get("group") == "arm" else {}
    for i, (group, curve) in enumerate(km.items()):
        c = by_arm.get(group, _PALETTE[i % len(_PALETTE)])
        t = np.asarray(curve.times)
        s = np.asarray(curve.survival)
        ax.step(t, s, where="post", color=c, lw=1.6, label=f"{group} (n={curve.n}, events={curve.n_events_total})")
        ax.fill_between(t, curve.ci_low, curve.ci_high, step="post", color=c, alpha=0.12, lw=0)
        cens = np.asarray(curve.n_censored) > 0
        ax.plot(t[cens], s[cens], "|", color=c, ms=8, mew=1.4)
    unit = result.extra.get("time_unit") or ""
    tname = biomarker_label(result.extra.get("time", "time"), capital=False)
    ax.set_xlabel(_axis_label(tname, unit) if unit and unit.lower() not in tname.lower() else tname)
    ax.set_ylabel("proportion without event")
    ax.set_ylim(-0.02, 1.05)
    p = result.tests[0][1].p_value if result.tests else math.nan
    ax.set_title(f"Kaplan-Meier by {result.extra.get('group', 'group')}: log-rank {format_p(p)}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="lower left")
    fig.tight_layout()
    return fig


def maps_figure(panels: Sequence[MapPanel], *, arms: Sequence[str], timepoints: Sequence[str]) -> Figure:
    """Grid (arms × timepoints) of one parameter's map over the anatomy with the ROI outline.

    All panels share the colour range of :func:`~oncomri.report.images.shared_range`
    and one colour bar labelled with the unit. Radiological display
    (subject's right on the left).
    """
    import matplotlib as mpl

    arms = [a for a in arms if any(p.image.arm == a for p in panels)]
    tps = [t for t in timepoints if any(p.image.timepoint == t for p in panels)]
    vmin, vmax = shared_range(panels)
    nr, nc = max(1, len(arms)), max(1, len(tps))
    fig = Figure(figsize=(1.9 * nc + 1.2, 1.9 * nr + 0.4))
    axes = np.atleast_2d(fig.subplots(nr, nc, squeeze=False))
    cmap = mpl.colormaps["inferno"].with_extremes(bad=(0.0, 0.0, 0.0, 0.0))
    image = None
    for ax in axes.ravel():
        ax.set_axis_off()
    for p in panels:
        if p.image.arm not in arms or p.image.timepoint not in tps:
            continue
        ax = axes[arms.index(p.image.arm), tps.index(p.image.timepoint)]
        if p.anatomy is not None:
            a = p.anatomy
            lo, hi = np.nanpercentile(a, (1, 99)) if np.isfinite(a).any() else (0.0, 1.0)
            ax.imshow(a, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, aspect=p.aspect,
                      interpolation="nearest")
        m = np.ma.masked_invalid(np.where(p.map == 0, np.nan, p.map))
        image = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax, alpha=0.7 if p.anatomy is not None else 1.0,
                          aspect=p.aspect, interpolation="nearest")
        if p.roi is not None and p.roi.any() and not p.roi.all():
            ax.contour(p.roi.astype(float), levels=[0.5], colors="#00e5ff", linewidths=0.9)
        ax.set_title(f"{p.image.arm} · {p.image.timepoint}\n{p.image.subject}", fontsize=7)
    if image is not None:
        unit = panels[0].image.unit
        cbar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, fraction=0.04)
        cbar.set_label(_axis_label(panels[0].image.parameter, unit), fontsize=8)
    return fig
