"""The study spec: one YAML file that describes a longitudinal imaging study.

:func:`load_spec` reads the file (PyYAML), checks it against pydantic models
(unknown keys are errors everywhere) and cross-checks every name it
references (arms, timepoints, scans, ROIs, maps, biomarkers, covariates).
Every error is a :class:`SpecError` whose one-line message starts with
``<file>:<line>: <field path>: `` and ends with the fix, e.g.::

    study.yaml:23: subjects.rat07.arm: 'treated' is not an arm of this study
    (arms: control, iv_nk, ia_nk); fix the arm or add it under arms

The result, :class:`StudySpec`, keeps the line of every field so that later
stages (the pipeline) can point their own errors at the spec
(:meth:`StudySpec.where`), gives the plain-data content of any part for
hashing (:meth:`StudySpec.fragment`) and the study design
(:meth:`StudySpec.design`). No scan file is opened here: resolving the
files of each session is :func:`oncomri.study.inputs.resolve_sessions`.

Times are written with a unit (``-1 h``, ``24 h``, ``8 d``, ``90 min``,
``2 w``, ``30 s``) and held in seconds (``StudySpec.timepoints[name].time``).
"""

from __future__ import annotations

import copy
import datetime as _dt
import difflib
import hashlib
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    field_validator,
    model_validator,
)
from pydantic import ValidationError as _PydanticError
from pydantic_core import PydanticCustomError

from ..core.errors import ProtocolError, ReadError, ValidationError
from .design import Arm, StudyDesign, Subject, Timepoint

__all__ = [
    "SpecError",
    "StudySpec",
    "load_spec",
    "parse_time",
    "TIME_UNITS",
    "MAP_OUTPUTS",
    "MAP_OUTPUT_PATTERNS",
    "RELAXOMETRY_MODELS",
    "NOISE_AWARE_MODELS",
    "ROI_OPTIONS",
    "STATISTICS",
    "MEASURES",
    "ArmSpec",
    "TimepointSpec",
    "SubjectSpec",
    "SessionSpec",
    "ScanSpec",
    "ScanOverride",
    "RoiSpec",
    "RoiOverride",
    "PropagateSpec",
    "MapSpec",
    "BiomarkerSpec",
    "PairedAnalysis",
    "BetweenArmsAnalysis",
    "CorrelationAxis",
    "CorrelationAnalysis",
    "MixedModelAnalysis",
    "ResponseAnalysis",
    "SurvivalGroup",
    "SurvivalAnalysis",
    "Analysis",
]

#: Time units accepted in the spec, in seconds.
TIME_UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_TIME_ALIASES = {
    "sec": "s", "second": "s", "seconds": "s",
    "mins": "min", "minute": "min", "minutes": "min",
    "hr": "h", "hrs": "h", "hour": "h", "hours": "h",
    "day": "d", "days": "d",
    "wk": "w", "wks": "w", "week": "w", "weeks": "w",
}
_UNITS_TEXT = "s, min, h, d (days), w (weeks)"

#: Map suffixes (BIDS derivative suffixes) each model of ``oncomri.models.MODELS``
#: writes (``Fit.output_maps()``), by model name; ``<map>.<suffix>`` names one.
MAP_OUTPUTS = {
    "r2star": ("R2starmap", "T2starmap", "S0map", "desc-r2starfit_rsquared",
               "desc-r2starfit_rmse", "desc-r2starfit_status"),
    "t2star": ("R2starmap", "T2starmap", "S0map", "desc-r2starfit_rsquared",
               "desc-r2starfit_rmse", "desc-r2starfit_status"),
    "t2": ("R2map", "T2map", "S0map", "desc-t2fit_rsquared", "desc-t2fit_rmse",
           "desc-t2fit_status"),
    # Models built from a scan and ``options`` (``<Model>.fit_volume``): every suffix
    # any method writes with the default options (and, for DSC, with an AIF and a
    # reference ROI); which of them a map really writes depends on its method/options.
    "t1": ("T1map", "R1map", "M0map", "desc-t1fit_rsquared", "desc-t1fit_rmse",
           "desc-t1fit_status"),
    "t1_ir": ("T1map", "R1map", "M0map", "desc-t1fit_rsquared", "desc-t1fit_rmse",
              "desc-t1fit_status", "desc-t1fit_inveff", "desc-lookLocker_T1map"),
    "dce": ("Ktransmap", "vemap", "kepmap", "vpmap", "Fpmap", "PSmap", "delaymap",
            "desc-dcefit_rmse", "desc-dcefit_status", "IAUC60map", "IAUC90map", "peakmap",
            "TTPmap", "washinmap"),
    "dsc": ("rCBVmap", "CBVmap", "CBFmap", "MTTmap", "K1map", "K2map", "S0map",
            "desc-dscfit_svdthreshold", "desc-dscfit_status"),
    "adc": ("ADCmap", "S0map", "desc-adcfit_rsquared", "desc-adcfit_rmse", "desc-adcfit_status"),
    "ivim": ("Dmap", "Dstarmap", "fmap", "desc-ivim_S0map", "desc-ivimfit_rsquared",
             "desc-ivimfit_rmse", "desc-ivimfit_status"),
    "dki": ("Kmap", "desc-dki_Dmap", "desc-dki_S0map", "desc-dkifit_rsquared",
            "desc-dkifit_rmse", "desc-dkifit_status"),
    "cest": ("M0map", "desc-ppm_B0map", "desc-Hz_B0map", "desc-MTRasym0p4ppm_CESTmap",
             "desc-MTRasym2ppm_CESTmap", "desc-MTRasym3p5ppm_CESTmap", "desc-Zspectrum_CESTmap",
             *(f"desc-{pool}{what}_CESTmap" for pool in ("water", "amide", "amine", "noe", "mt")
               for what in ("Amplitude", "Width", "Offset")),
             "desc-lorentzBaseline_CESTmap", "desc-cestfit_rmse", "desc-cestfit_status"),
}
#: Suffixes whose name follows an option (IAUC windows, CEST offsets and pools):
#: accepted when a biomarker names one outside :data:`MAP_OUTPUTS`; the run then
#: checks that the map really wrote it.
MAP_OUTPUT_PATTERNS = {
    "dce": (re.compile(r"IAUC[0-9.]+map"),),
    "cest": (re.compile(r"desc-MTRasym[0-9]+(p[0-9]+)?ppm_CESTmap"),
             re.compile(r"desc-[A-Za-z0-9]+(Amplitude|Width|Offset)_CESTmap")),
}
#: Models fitted to multi-echo series (loaded with their echo times).
RELAXOMETRY_MODELS = ("r2star", "t2star", "t2")
#: Models whose fit uses a noise sigma (``noise_sigma``, ``min_snr``).
NOISE_AWARE_MODELS = RELAXOMETRY_MODELS + ("adc", "ivim", "dki")
#: ``options`` of a map that name an ROI of the spec (its mask on the scan grid is
#: passed to the model as the option of the same name ending in ``_mask``).
ROI_OPTIONS = {"aif_roi": "aif_mask", "reference_roi": "reference_mask",
               "leakage_reference_roi": "leakage_reference_mask"}
#: Extra map written only by the ``nlls_offset`` method.
_OFFSET_OUTPUTS = {"r2star": "desc-r2starfit_offset", "t2star": "desc-r2starfit_offset",
                   "t2": "desc-t2fit_offset"}

#: Statistics of a map inside an ROI, and geometric measures of an ROI.
STATISTICS = ("mean", "median", "sd", "p10", "p90", "min", "max")
MEASURES = ("volume", "longest_diameter", "short_axis", "ablative_margin")

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")
_SEGMENT_METHODS = ("region_growing", "threshold")  # oncomri.roi.segment.SEGMENT_METHODS


# --------------------------------------------------------------------------- errors


class SpecError(ValidationError):
    """An error in a study spec, located at a line and a field of the file.

    Attributes
    ----------
    path : pathlib.Path or None
        The spec file, as given to :func:`load_spec`.
    line : int or None
        1-based line of the offending field.
    field : str
        Dotted path of the field (``subjects.rat07.arm``, ``analyses[2].test``);
        empty for errors of the whole file (YAML syntax).
    """

    def __init__(self, message: str, *, path=None, line: int | None = None, field: str = ""):
        super().__init__(message)
        self.path = Path(path) if path is not None else None
        self.line = line
        self.field = field


def _dotted(field: tuple) -> str:
    out = ""
    for part in field:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _located(file: str, line: int | None, field: tuple, text: str) -> str:
    head = f"{file}:{line}" if line is not None else f"{file}"
    dotted = _dotted(field)
    return f"{head}: {dotted}: {text}" if dotted else f"{head}: {text}"


def _closest(word: str, choices) -> str | None:
    found = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return found[0] if found else None


def _listing(choices) -> str:
    choices = list(choices)
    return ", ".join(str(c) for c in choices) if choices else "none defined"


# --------------------------------------------------------------------------- times


def _fail(text: str, key: str | None = None) -> PydanticCustomError:
    """A pydantic error whose message is ``text`` verbatim (braces included).

    ``key``: the key (of the mapping being validated) the error is about.
    """
    ctx = {"text": text} if key is None else {"text": text, "key": str(key)}
    return PydanticCustomError("spec", "{text}", ctx)


def parse_time(value, *, field: str = "time") -> float:
    """Seconds of a time written with its unit: ``'24 h'`` -> 86400.0.

    Parameters
    ----------
    value : str
        A number and a unit: ``s``, ``min``, ``h``, ``d`` (days) or ``w``
        (weeks), with or without a space (``-1 h``, ``8d``, ``90 min``).
    field : str
        Name of the field, for the message.

    Raises
    ------
    ValidationError
        A bare number (no unit), an unknown unit or unparsable text.
    """
    if isinstance(value, bool) or value is None:
        raise ValidationError(
            f"{field}: {value!r} is not a time; write a number and a unit, e.g. '24 h' "
            f"(units: {_UNITS_TEXT})")
    if isinstance(value, (int, float)):
        raise ValidationError(
            f"{field}: time {value!r} has no unit; write it with one, e.g. '{value} h' "
            f"(units: {_UNITS_TEXT})")
    text = str(value).strip()
    m = re.fullmatch(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)", text)
    if not m:
        raise ValidationError(
            f"{field}: {text!r} is not a time; write a number and a unit, e.g. '24 h' "
            f"(units: {_UNITS_TEXT})")
    number, unit = float(m.group(1)), m.group(2)
    if not unit:
        raise ValidationError(
            f"{field}: time {text!r} has no unit; write it with one, e.g. '{text} h' "
            f"(units: {_UNITS_TEXT})")
    key = unit if unit in TIME_UNITS else _TIME_ALIASES.get(unit.lower())
    if key is None:
        hint = " (write min for minutes)" if unit.lower() in ("m", "mn") else ""
        raise ValidationError(
            f"{field}: unknown time unit {unit!r} in {text!r}{hint}; use one of {_UNITS_TEXT}")
    seconds = number * TIME_UNITS[key]
    if not math.isfinite(seconds):
        raise ValidationError(f"{field}: time {text!r} is not finite; write a finite number")
    return seconds


def _time_value(value):
    try:
        return parse_time(value, field="time")
    except ValidationError as exc:
        raise _fail(str(exc).split(": ", 1)[1]) from None


# --------------------------------------------------------------------------- field validators


def _text(value):
    """Numbers written where a name or a selector is expected become text."""
    if isinstance(value, bool):
        raise _fail(f"expected text, got {str(value).lower()}; write it in quotes")
    if isinstance(value, (int, float)):
        return str(value)
    return value


def _series(value):
    if value is None:
        return None
    return _text(value)


def _echo_times(value):
    if value is None:
        return None
    if not isinstance(value, str):
        raise _fail(
            "echo times must be text with a unit, e.g. '4.6,9.2,13.8ms'; "
            "write them with their unit (s, ms or us)")
    from ..core.units import parse_echo_times

    try:
        values, _ = parse_echo_times(value, name="echo_times")
    except ProtocolError as exc:
        raise _fail(str(exc)) from None
    if len(values) < 2 or any(not math.isfinite(v) or v < 0 for v in values):
        raise _fail(f"echo_times {value!r}: give at least two non-negative echo times with a "
                    "unit, e.g. '4.6,9.2,13.8ms'")
    return value


def _noise_sigma(value):
    if value is None or value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value > 0):
        raise _fail(f"noise_sigma must be 'auto' or a positive number (signal units), got "
                    f"{value!r}; write auto or a positive number")
    return float(value)


def _min_snr(value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value > 0):
        raise _fail(f"min_snr must be a positive number (multiples of the noise sigma), got "
                    f"{value!r}; write e.g. 3, or remove it to fit every voxel")
    return float(value)


def _options(value):
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise _fail(f"options must be a mapping of option: value (e.g. aif: parker), got "
                    f"{_describe(value)}; write one option per line under options")
    return value


def _seed(value):
    if value is None:
        return None
    ok = (isinstance(value, (list, tuple)) and len(value) == 3
          and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                  and math.isfinite(v) for v in value))
    if not ok:
        raise _fail(f"seed must be three numbers [x, y, z], a world point (RAS+, mm) inside "
                    f"the object, got {value!r}; write e.g. [10.5, -3.0, 22.0]")
    return tuple(float(v) for v in value)


def _label(value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(f"label must be a positive integer (a value of the label image), got "
                    f"{value!r}; write e.g. label: 1")
    return value


def _covariates(value):
    if not isinstance(value, dict):
        return value
    for key, v in value.items():
        if not (v is None or isinstance(v, (str, int, float, bool))):
            raise _fail(f"covariate {key!r} must be a number, text, true/false or null, got "
                        f"a {type(v).__name__}; write one value per covariate", key=key)
    return value


def _none_as_empty(value):
    """``name:`` with nothing after it (YAML null) is an entry with no options."""
    if isinstance(value, dict):
        return {k: ({} if v is None else v) for k, v in value.items()}
    return value


def _missing_map(value):
    """``missing`` as a mapping timepoint -> reason (a list of names is accepted)."""
    if value is None:
        return {}
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return {v: "" for v in value}
    if isinstance(value, dict):
        return {k: "" if v is None else _text(v) for k, v in value.items()}
    return value


_Text = Annotated[str, BeforeValidator(_text)]


# --------------------------------------------------------------------------- models


class _Model(BaseModel):
    """Strict, immutable base: unknown keys raise with the closest valid key."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data):
        if isinstance(data, dict):
            valid = [f.alias or name for name, f in cls.model_fields.items()]
            for key in data:
                if key not in valid and key not in cls.model_fields:
                    raise PydanticCustomError(
                        "unknown_key", "unknown key {key!r}",
                        {"key": str(key), "valid": ", ".join(valid)})
        return data


class ArmSpec(_Model):
    """``arms.<name>``: one treatment arm."""

    description: _Text = ""


class TimepointSpec(_Model):
    """``timepoints.<name>``: ``time`` after treatment, written with a unit, held in seconds."""

    time: Annotated[float, BeforeValidator(_time_value)]


class ScanOverride(_Model):
    """A per-session replacement of a scan's path (and optionally its series and echo times)."""

    path: _Text
    series: Annotated[Optional[str], BeforeValidator(_series)] = None
    echo_times: Annotated[Optional[str], BeforeValidator(_echo_times)] = None


def _scan_override(value):
    return {"path": value} if isinstance(value, str) else value


def _check_source(model, *, where: str):
    sources = [k for k in ("mask", "seed", "propagate") if getattr(model, k) is not None]
    if len(sources) != 1:
        got = "none" if not sources else " and ".join(sources)
        raise _fail(f"{where} needs exactly one source: mask, seed or propagate (got {got}); "
                    "keep one of them")
    if model.label is not None and model.mask is None:
        raise _fail(
            "label applies to a mask only; remove label or give a mask")
    if model.method is not None and model.seed is None:
        raise _fail(
            "method applies to a seed only (the segmentation method); remove method "
            "or give a seed")
    return model


class PropagateSpec(_Model):
    """``propagate: {from: <timepoint>}``: carry the ROI over from that session."""

    from_: _Text = Field(alias="from")


class RoiSpec(_Model):
    """``rois.<name>``: an ROI on the grid of scan ``on``, from a mask, a seed or propagation."""

    on: _Text
    mask: Optional[_Text] = None
    label: Annotated[Optional[int], BeforeValidator(_label)] = None
    seed: Annotated[Optional[tuple[float, float, float]], BeforeValidator(_seed)] = None
    method: Optional[Literal["region_growing", "threshold"]] = None
    propagate: Optional[PropagateSpec] = None

    @property
    def kind(self) -> str:
        """Where the ROI comes from: ``'mask'``, ``'seed'`` or ``'propagate'``."""
        return "mask" if self.mask is not None else "seed" if self.seed is not None else "propagate"

    @model_validator(mode="after")
    def _one_source(self):
        return _check_source(self, where="an ROI")


class RoiOverride(_Model):
    """A per-session replacement of an ROI's definition (``on`` defaults to the ROI's)."""

    on: Optional[_Text] = None
    mask: Optional[_Text] = None
    label: Annotated[Optional[int], BeforeValidator(_label)] = None
    seed: Annotated[Optional[tuple[float, float, float]], BeforeValidator(_seed)] = None
    method: Optional[Literal["region_growing", "threshold"]] = None
    propagate: Optional[PropagateSpec] = None

    @property
    def kind(self) -> str:
        """Where the ROI comes from: ``'mask'``, ``'seed'`` or ``'propagate'``."""
        return "mask" if self.mask is not None else "seed" if self.seed is not None else "propagate"

    @model_validator(mode="after")
    def _one_source(self):
        return _check_source(self, where="an ROI override")


class SessionSpec(_Model):
    """``subjects.<id>.sessions.<timepoint>``: per-session overrides of scans and ROIs."""

    scans: Optional[dict[str, Annotated[ScanOverride, BeforeValidator(_scan_override)]]] = None
    rois: Optional[dict[str, RoiOverride]] = None


class SubjectSpec(_Model):
    """``subjects.<id>``: the subject's arm, covariates, missing sessions and overrides."""

    arm: _Text
    covariates: Annotated[dict[str, Any], BeforeValidator(_covariates)] = Field(
        default_factory=dict)
    missing: Annotated[dict[str, str], BeforeValidator(_missing_map)] = Field(default_factory=dict)
    sessions: Annotated[dict[str, SessionSpec], BeforeValidator(_none_as_empty)] = Field(
        default_factory=dict)


class ScanSpec(_Model):
    """``scans.<role>``: the path pattern of a scan, optional series selector and echo times."""

    path: _Text
    series: Annotated[Optional[str], BeforeValidator(_series)] = None
    echo_times: Annotated[Optional[str], BeforeValidator(_echo_times)] = None


class MapSpec(_Model):
    """``maps.<name>``: a parameter map fitted with ``model`` on ``scan``.

    ``model`` is any name of :data:`oncomri.models.MODELS`. ``noise_sigma`` and
    ``min_snr`` apply to the noise-aware models (relaxometry and diffusion).
    ``options`` go to the model's ``fit_volume`` as plain values (numbers in SI
    or text with a unit, e.g. ``t1: 1.4s``, ``aif: parker``; see
    :mod:`oncomri.models.volume_fit`); they are checked when the map is fitted,
    and an unknown key or a bad value fails the session with a reason naming
    ``maps.<name>.options.<key>``. ``aif_roi``, ``reference_roi`` and
    ``leakage_reference_roi`` name an ROI of the spec (:data:`ROI_OPTIONS`),
    checked here; its mask on the scan grid is what the model gets.
    """

    model: _Text
    scan: _Text
    method: Optional[_Text] = None
    noise_sigma: Annotated[Union[Literal["auto"], float], BeforeValidator(_noise_sigma)] = "auto"
    fit_within: Optional[_Text] = None
    min_snr: Annotated[Optional[float], BeforeValidator(_min_snr)] = None
    options: Annotated[dict[str, Any], BeforeValidator(_options)] = Field(default_factory=dict)


class BiomarkerSpec(_Model):
    """``biomarkers.<name>``: a statistic of a map in an ROI, or a measure of the ROI.

    ``measure: ablative_margin`` is the minimum ablative margin (mm) of tumour
    ROI ``roi`` inside the ablation-zone ROI ``ablation_roi`` of the same
    session (:func:`oncomri.roi.ablative_margin`; Koda et al., J Gastroenterol
    2013;48:1283); ``ablation_roi`` is given with that measure only.
    ``timepoints`` limits the biomarker to some sessions (e.g. a margin only
    after the ablation); its ROIs are then needed only there.
    """

    roi: _Text
    map: Optional[_Text] = None
    statistic: Optional[Literal["mean", "median", "sd", "p10", "p90", "min", "max"]] = None
    measure: Optional[Literal["volume", "longest_diameter", "short_axis",
                              "ablative_margin"]] = None
    ablation_roi: Optional[_Text] = None
    timepoints: Optional[tuple[_Text, ...]] = None

    @model_validator(mode="after")
    def _one_kind(self):
        if self.ablation_roi is not None and self.measure != "ablative_margin":
            raise _fail("ablation_roi applies to measure: ablative_margin only; remove "
                        "ablation_roi or set measure: ablative_margin", key="ablation_roi")
        if self.measure == "ablative_margin" and self.ablation_roi is None:
            raise _fail("measure ablative_margin needs the ablation zone; add ablation_roi: "
                        "<ROI name> (the ablation zone ROI of the same session)")
        if self.measure is not None and (self.map is not None or self.statistic is not None):
            raise _fail(
                "a biomarker has either map + roi + statistic or roi + measure, never "
                "both; remove measure or map/statistic")
        if self.measure is None:
            if self.map is None and self.statistic is None:
                raise _fail(
                    "a biomarker needs map + statistic (a map inside the ROI) or "
                    "measure (the ROI's geometry); add them")
            if self.map is None:
                raise _fail(
                    "statistic needs a map; add map: <map name>.<suffix>, "
                    "e.g. r2star.R2starmap")
            if self.statistic is None:
                raise _fail(
                    "a map biomarker needs a statistic; add statistic: one of "
                    + ", ".join(STATISTICS))
        return self


class PairedAnalysis(_Model):
    """Within-arm comparison of a biomarker at ``to`` against ``from``."""

    type: Literal["paired"]
    name: Optional[_Text] = None
    biomarker: _Text
    from_: _Text = Field(alias="from")
    to: _Text
    test: Literal["t", "wilcoxon"] = "t"
    arms: Optional[list[_Text]] = None


class BetweenArmsAnalysis(_Model):
    """One test across arms at one timepoint, with pairwise comparisons."""

    type: Literal["between_arms"]
    name: Optional[_Text] = None
    biomarker: _Text
    timepoint: _Text
    change: Literal["none", "absolute", "percent"] = "none"
    test: Literal["anova", "kruskal"] = "anova"
    correction: Literal["tukey", "holm"] = "tukey"

    @model_validator(mode="before")
    @classmethod
    def _default_correction(cls, data):
        if isinstance(data, dict) and data.get("correction") is None:
            data = dict(data)
            data["correction"] = "holm" if data.get("test") == "kruskal" else "tukey"
        return data

    @model_validator(mode="after")
    def _correction_fits_the_test(self):
        if self.test == "kruskal" and self.correction == "tukey":
            raise _fail("correction tukey goes with test anova (Tukey's HSD); use "
                        "correction: holm with kruskal", key="correction")
        return self


class CorrelationAxis(_Model):
    """One axis of a correlation: a biomarker at a timepoint, optionally as a change."""

    biomarker: _Text
    timepoint: _Text
    change: Literal["none", "absolute", "percent"] = "none"


class CorrelationAnalysis(_Model):
    """Correlation of two biomarker values across subjects."""

    type: Literal["correlation"]
    name: Optional[_Text] = None
    x: CorrelationAxis
    y: CorrelationAxis
    arms: Optional[list[_Text]] = None
    method: Literal["pearson", "spearman"] = "pearson"


class MixedModelAnalysis(_Model):
    """Linear mixed model ``biomarker ~ arm * time + (1 | subject)``."""

    type: Literal["mixed_model"]
    name: Optional[_Text] = None
    biomarker: _Text
    timepoints: Optional[list[_Text]] = None


class ResponseAnalysis(_Model):
    """Tumour response by RECIST 1.1, mRECIST or volumetric criteria."""

    type: Literal["response"]
    name: Optional[_Text] = None
    criteria: Literal["recist", "mrecist", "volumetric"]
    biomarker: _Text
    arms: Optional[list[_Text]] = None


def _cut(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(f"a cut must be a finite number (in the biomarker's unit), got "
                    f"{_describe(value)}; write e.g. cuts: [0, 5]")
    return float(value)


class SurvivalGroup(_Model):
    """``group: {biomarker, timepoint, cuts, labels}``: classes from a biomarker's value.

    A subject's group is its value of ``biomarker`` at ``timepoint`` binned by
    ``cuts`` (increasing, in the biomarker's unit): ``labels[0]`` for values
    below ``cuts[0]``, ``labels[i]`` for ``cuts[i-1] <= value < cuts[i]``,
    ``labels[-1]`` for values ``>= cuts[-1]``; ``len(labels) == len(cuts) + 1``.
    """

    biomarker: _Text
    timepoint: _Text
    cuts: list[Annotated[float, BeforeValidator(_cut)]]
    labels: list[_Text]

    @model_validator(mode="after")
    def _bins(self):
        if not self.cuts:
            raise _fail("cuts is empty; give at least one cut point, e.g. cuts: [0, 5]",
                        key="cuts")
        if any(b <= a for a, b in zip(self.cuts, self.cuts[1:])):
            raise _fail(f"cuts {[_num(c) for c in self.cuts]} must increase strictly; sort "
                        "them and remove duplicates", key="cuts")
        if len(self.labels) != len(self.cuts) + 1:
            raise _fail(f"{len(self.cuts)} cut(s) make {len(self.cuts) + 1} groups, but "
                        f"{len(self.labels)} label(s) are given; give one label per group "
                        f"(len(labels) = len(cuts) + 1)", key="labels")
        seen = set()
        for label in self.labels:
            if label in seen:
                raise _fail(f"label {label!r} is given twice; give each group its own label",
                            key="labels")
            seen.add(label)
        return self


def _num(value: float):
    return int(value) if float(value).is_integer() else value


def _group_kind(value) -> str:
    return "by_biomarker" if isinstance(value, (dict, list, SurvivalGroup)) else "by_name"


class SurvivalAnalysis(_Model):
    """Kaplan–Meier curves and log-rank test from subject covariates.

    ``group`` is ``arm``, the name of a covariate, or a :class:`SurvivalGroup`
    (classes from a biomarker's value at a timepoint, e.g. the ablative-margin
    class from ``measure: ablative_margin``).
    """

    type: Literal["survival"]
    name: Optional[_Text] = None
    time: _Text
    time_unit: Literal["d", "w", "month", "y"] = "d"
    event: _Text
    group: Annotated[Union[Annotated[SurvivalGroup, Tag("by_biomarker")],
                           Annotated[_Text, Tag("by_name")]],
                     Discriminator(_group_kind)] = "arm"


Analysis = Annotated[
    Union[PairedAnalysis, BetweenArmsAnalysis, CorrelationAnalysis, MixedModelAnalysis,
          ResponseAnalysis, SurvivalAnalysis],
    Field(discriminator="type"),
]
_ANALYSIS_TYPES = ("paired", "between_arms", "correlation", "mixed_model", "response", "survival")


def _nonempty(what: str, example: str):
    def check(value):
        if isinstance(value, dict) and not value:
            raise _fail(f"no {what} defined; add at least one, e.g. {example}")
        return value
    return check


def _version(value):
    if isinstance(value, bool) or value != 1:
        raise _fail(f"spec format version {value!r} is not supported; this oncomri reads "
                    "format 1: write oncomri: 1")
    return 1


class StudySpec(_Model):
    """A validated study spec (see the module docstring and :func:`load_spec`).

    Attributes are the YAML keys (``from`` is ``from_``). After
    :func:`load_spec`: ``output`` is an absolute path, ``baseline`` is
    always set (the explicit one or the earliest timepoint), every analysis
    has a ``name``, and times are in seconds. ``path``, ``root`` and
    ``text_hash`` describe the file.
    """

    oncomri: Annotated[int, BeforeValidator(_version)]
    name: _Text
    description: Optional[_Text] = ""
    output: Path = Path("oncomri")
    database: Optional[_Text] = None
    arms: Annotated[dict[str, ArmSpec], BeforeValidator(_none_as_empty),
                    BeforeValidator(_nonempty("arms", "control: {description: saline}"))]
    timepoints: Annotated[dict[str, TimepointSpec],
                          BeforeValidator(_nonempty("timepoints", "24h: {time: 24 h}"))]
    baseline: Optional[_Text] = None
    subjects: Annotated[dict[str, SubjectSpec], BeforeValidator(_none_as_empty),
                        BeforeValidator(_nonempty("subjects", "rat01: {arm: control}"))]
    scans: Annotated[dict[str, ScanSpec],
                     BeforeValidator(_nonempty("scans", "t2w: {path: 'sub-{subject}/...'}"))]
    rois: dict[str, RoiSpec] = Field(default_factory=dict)
    maps: dict[str, MapSpec] = Field(default_factory=dict)
    biomarkers: Annotated[dict[str, BiomarkerSpec], BeforeValidator(
        _nonempty("biomarkers", "tumour_volume: {roi: tumour, measure: volume}"))]
    analyses: list[Analysis] = Field(default_factory=list)

    _file: str = PrivateAttr(default="study.yaml")
    _path: Optional[Path] = PrivateAttr(default=None)
    _text_hash: str = PrivateAttr(default="")
    _lines: dict = PrivateAttr(default_factory=dict)
    _dump: Any = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _name_not_empty(cls, value):
        if not value.strip():
            raise _fail("the study name is empty; write a name")
        return value

    @field_validator("output", mode="before")
    @classmethod
    def _output_text(cls, value):
        if value is None:
            return Path("oncomri")
        if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
            raise _fail(f"output must be a folder path (relative to the spec file), got "
                        f"{value!r}; write e.g. output: derivatives")
        return Path(value)

    # ------------------------------------------------------------------ file facts

    @property
    def path(self) -> Path:
        """Absolute path of the spec file."""
        return self._path

    @property
    def root(self) -> Path:
        """The spec file's folder: relative paths in the spec start here."""
        return self._path.parent if self._path is not None else Path.cwd()

    @property
    def text_hash(self) -> str:
        """SHA-256 (hex) of the spec file's bytes."""
        return self._text_hash

    # ------------------------------------------------------------------ locations

    def line_of(self, *field) -> int | None:
        """1-based line of a field (or of its nearest written parent); None if not in the file.

        ``field`` is a path of keys and list indices, ``line_of("subjects",
        "rat07", "arm")``, or one dotted string ``line_of("analyses[2].test")``.
        """
        key = _field_tuple(field)
        while key:
            if key in self._lines:
                return self._lines[key]
            key = key[:-1]
        return None

    def where(self, *field) -> str:
        """``'<file>:<line>: <field>'`` for messages: ``where("subjects", "rat07", "arm")``."""
        key = _field_tuple(field)
        line = self.line_of(*key)
        head = f"{self._file}:{line}" if line is not None else self._file
        return f"{head}: {_dotted(key)}" if key else head

    def error(self, field, text: str) -> SpecError:
        """A :class:`SpecError` at ``field`` (a tuple or dotted string): ``where(field): text``."""
        key = _field_tuple(field if isinstance(field, tuple) else (field,))
        line = self.line_of(*key)
        return SpecError(_located(self._file, line, key, text), path=self._file, line=line,
                         field=_dotted(key))

    def fragment(self, *field):
        """Plain-data (JSON-able) content of a part of the spec, defaults filled in.

        ``fragment()`` is the whole spec, ``fragment("scans", "megre")`` one scan,
        ``fragment("analyses", 0)`` one analysis. Keys are the YAML keys
        (``from``); times are in seconds. Raises KeyError for a part that
        does not exist.
        """
        if self._dump is None:
            self._dump = self.model_dump(mode="json", by_alias=True)
        node = self._dump
        for part in _field_tuple(field):
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                raise KeyError(f"{_dotted(_field_tuple(field))}: not a part of the spec") from None
        return copy.deepcopy(node)

    # ------------------------------------------------------------------ design

    def rois_used_at(self, timepoint: str) -> set:
        """Names of the ROIs a session at ``timepoint`` needs for itself: those of its
        maps (``fit_within``, ROI-valued options) and of the biomarkers measured at
        that timepoint. ROIs that other sessions propagate from are added by
        :func:`oncomri.study.inputs.resolve_sessions`."""
        used = set()
        for m in self.maps.values():
            if m.fit_within:
                used.add(m.fit_within)
            used |= {v for k, v in (m.options or {}).items()
                     if k in ROI_OPTIONS and isinstance(v, str)}
        for b in self.biomarkers.values():
            if b.timepoints is None or timepoint in b.timepoints:
                used.add(b.roi)
                if b.ablation_roi:
                    used.add(b.ablation_roi)
        return used

    def design(self) -> StudyDesign:
        """The :class:`~oncomri.study.design.StudyDesign` of this spec.

        Subjects in spec order; timepoints sorted by time (ties in spec
        order); sessions = every subject x timepoint minus its ``missing``.
        """
        order = {name: i for i, name in enumerate(self.timepoints)}
        tps = sorted(self.timepoints.items(), key=lambda kv: (kv[1].time, order[kv[0]]))
        timepoints = tuple(Timepoint(name, float(tp.time)) for name, tp in tps)
        subjects = tuple(Subject(sid, s.arm, dict(s.covariates))
                         for sid, s in self.subjects.items())
        sessions = tuple((sid, tp.name) for sid, s in self.subjects.items()
                         for tp in timepoints if tp.name not in s.missing)
        return StudyDesign(
            name=self.name,
            arms=tuple(Arm(name, a.description) for name, a in self.arms.items()),
            timepoints=timepoints,
            baseline=self.baseline or timepoints[0].name,
            subjects=subjects,
            sessions=sessions,
            description=(self.description or "").strip(),
        )


def _field_tuple(field) -> tuple:
    if len(field) == 1 and isinstance(field[0], tuple):
        field = field[0]
    if len(field) == 1 and isinstance(field[0], str) and ("." in field[0] or "[" in field[0]):
        parts: list = []
        for piece in field[0].split("."):
            m = re.fullmatch(r"([^\[\]]*)((?:\[\d+\])*)", piece)
            if not m:
                parts.append(piece)
                continue
            if m.group(1):
                parts.append(m.group(1))
            parts.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group(2)))
        return tuple(parts)
    return tuple(field)


# --------------------------------------------------------------------------- YAML with lines


_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Reader:
    """Turns a composed YAML node tree into plain data, recording the line of every field."""

    def __init__(self, file: str):
        self.file = file
        self.lines: dict[tuple, int] = {}
        self.raw: dict[tuple, str] = {}
        self._constructor = yaml.SafeLoader("")

    def fail(self, line, field, text):
        raise SpecError(_located(self.file, line, field, text), path=self.file, line=line,
                        field=_dotted(field))

    def data(self, node, field=(), depth=0):
        line = node.start_mark.line + 1
        self.lines.setdefault(field, line)
        if depth > 64:
            self.fail(line, field, "nesting too deep (a YAML alias that refers to itself?); "
                                   "write the value out")
        if isinstance(node, yaml.MappingNode):
            out: dict = {}
            seen: dict[str, int] = {}
            merges = []
            for knode, vnode in node.value:
                if knode.tag == _MERGE_TAG:
                    merges.append(vnode)
                    continue
                kline = knode.start_mark.line + 1
                if not isinstance(knode, yaml.ScalarNode):
                    self.fail(kline, field, "a key must be a plain name, not a list or mapping; "
                                            "rewrite the key")
                key = knode.value
                if key in seen:
                    self.fail(kline, field + (key,),
                              f"duplicate key {key!r} (first at line {seen[key]}); "
                              "remove one of them or rename it")
                seen[key] = kline
                self.lines[field + (key,)] = kline
                out[key] = self.data(vnode, field + (key,), depth + 1)
            for merged in merges:
                sources = merged.value if isinstance(merged, yaml.SequenceNode) else [merged]
                for src in sources:
                    if not isinstance(src, yaml.MappingNode):
                        self.fail(src.start_mark.line + 1, field,
                                  "a YAML merge (<<) needs a mapping; fix the merge")
                    for knode, vnode in src.value:
                        if knode.tag == _MERGE_TAG or not isinstance(knode, yaml.ScalarNode):
                            continue
                        if knode.value not in out:
                            out[knode.value] = self.data(vnode, field + (knode.value,), depth + 1)
            return out
        if isinstance(node, yaml.SequenceNode):
            out_list = []
            for i, item in enumerate(node.value):
                self.lines[field + (i,)] = item.start_mark.line + 1
                out_list.append(self.data(item, field + (i,), depth + 1))
            return out_list
        try:
            value = self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self.fail(line, field, f"cannot read this value ({exc}); write plain text or a number")
        self.raw[field] = node.value
        if isinstance(value, (_dt.date, _dt.datetime)):
            value = value.isoformat()
        elif isinstance(value, bytes):
            self.fail(line, field, "binary values are not supported; write text")
        return value


def _compose(text: str, file: str):
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise SpecError(
            _located(file, line, (), f"YAML syntax error: {problem}; fix the YAML at this line "
                                     "(indentation with spaces, ': ' after each key, matching "
                                     "quotes and brackets)"),
            path=file, line=line) from None
    except yaml.YAMLError as exc:
        raise SpecError(_located(file, 1, (), f"YAML syntax error: {exc}; fix the YAML"),
                        path=file, line=1) from None


# --------------------------------------------------------------------------- pydantic errors

_MISSING_HINTS = {
    "oncomri": "add `oncomri: 1` (the spec format version) as the first line",
    "name": "add `name: <study name>`",
    "arms": "add `arms:` with at least one arm, e.g. `control: {description: saline}`",
    "timepoints": "add `timepoints:` with at least one timepoint, e.g. `24h: {time: 24 h}`",
    "subjects": "add `subjects:` with at least one subject, e.g. `rat01: {arm: control}`",
    "scans": "add `scans:` with at least one scan role and its path pattern",
    "biomarkers": "add `biomarkers:` with at least one biomarker, e.g. "
                  "`tumour_volume: {roi: tumour, measure: volume}`",
    "time": "add `time:` with a unit, e.g. `time: 24 h` (units: " + _UNITS_TEXT + ")",
    "path": "add `path:` with the file pattern (relative to the spec file)",
    "on": "add `on: <scan role>`, the scan whose grid the ROI is defined on",
    "roi": "add `roi: <ROI name>`",
    "model": "add `model:` with a model name (e.g. r2star)",
    "scan": "add `scan: <scan role>`",
    "from": "add `from: <timepoint>`",
    "type": "add `type:`, one of " + ", ".join(_ANALYSIS_TYPES),
}

_EXAMPLES = {
    "ArmSpec": "{description: saline}",
    "TimepointSpec": "{time: 24 h}",
    "SubjectSpec": "{arm: control}",
    "SessionSpec": "{scans: {t2w: path/to/file.nii.gz}}",
    "ScanSpec": "{path: 'sub-{subject}/ses-{timepoint}/anat/...nii.gz'}",
    "ScanOverride": "a path or {path: ..., series: '5'}",
    "RoiSpec": "{on: t2w, mask: '...'}",
    "RoiOverride": "{seed: [10.5, -3.0, 22.0]}",
    "PropagateSpec": "{from: baseline}",
    "MapSpec": "{model: r2star, scan: megre}",
    "BiomarkerSpec": "{roi: tumour, measure: volume}",
    "CorrelationAxis": "{biomarker: tumour_R2star, timepoint: 24h}",
    "SurvivalGroup": "{biomarker: tumour_margin, timepoint: post, cuts: [0, 5], "
                     "labels: [AM-, AM0, AM+]}",
}


def _describe(value) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    return repr(value)


_ABSENT = object()


def _translate(err: dict, data, reader: _Reader) -> tuple[int, tuple, str]:
    loc = err["loc"]
    kind = err["type"]
    ctx = err.get("ctx") or {}
    field: list = []
    cur = data
    for i, part in enumerate(loc):
        if isinstance(cur, dict) and part in cur:
            field.append(part)
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            field.append(part)
            cur = cur[part]
        elif i == len(loc) - 1 and kind == "missing":
            field.append(part)
            cur = _ABSENT
        # other entries are union members / tags: not part of the file
    field_t = tuple(field)
    parent = field_t[:-1]

    if kind == "unknown_key":
        key = ctx["key"]
        valid = [v for v in ctx["valid"].split(", ") if v]
        field_t = field_t + (key,)
        where = _dotted(field_t[:-1]) or "the top level"
        best = _closest(key, valid)
        fix = (f"did you mean {best!r}?" if best else
               f"valid keys here: {', '.join(valid)}; remove it or fix its spelling")
        text = f"unknown key {key!r} in {where}; {fix}"
    elif kind == "missing":
        key = field_t[-1]
        if len(field_t) == 3 and field_t[0] == "subjects" and key == "arm":
            arms = list(data.get("arms") or {}) if isinstance(data.get("arms"), dict) else []
            text = (f"subject {field_t[1]} is in no arm; add `arm: <name>` with one of the "
                    f"arms ({_listing(arms)})")
        else:
            hint = _MISSING_HINTS.get(str(key), f"add `{key}: ...`")
            text = f"required key {key!r} is missing; {hint}"
    elif kind == "union_tag_invalid":
        tag = ctx.get("tag")
        field_t = field_t + ("type",)
        best = _closest(tag, _ANALYSIS_TYPES)
        fix = f"did you mean {best!r}?" if best else "use one of them"
        text = (f"unknown analysis type {tag!r} (types: {', '.join(_ANALYSIS_TYPES)}); {fix}")
    elif kind == "union_tag_not_found":
        text = f"an analysis needs a type; add `type:` with one of {', '.join(_ANALYSIS_TYPES)}"
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        example = _EXAMPLES.get(ctx.get("class_name", ""), "key: value pairs")
        text = f"expected a mapping, got {_describe(cur)}; write it as {example}"
    elif kind in ("list_type", "tuple_type"):
        text = f"expected a list, got {_describe(cur)}; write it as [a, b, ...]"
    elif kind == "literal_error":
        expected = ctx.get("expected", "")
        choices = re.findall(r"'([^']*)'", expected)
        best = _closest(cur, choices) if isinstance(cur, str) else None
        fix = f"did you mean {best!r}?" if best else "choose one of them"
        text = f"{_describe(cur)} is not one of {expected}; {fix}"
    elif kind == "string_type":
        raw = reader.raw.get(field_t)
        if raw is not None and not isinstance(cur, (dict, list)):
            text = f"expected text, got {raw}; write it in quotes: '{raw}'"
        else:
            text = f"expected text, got {_describe(cur)}; write one value"
    elif kind.startswith(("int_", "float_", "bool_")):
        what = "true or false" if kind.startswith("bool_") else "a number"
        text = f"expected {what}, got {_describe(cur)}; write {what}"
    elif kind == "spec":
        text = err["msg"]
        if ctx.get("key") is not None:
            field_t = field_t + (ctx["key"],)
    else:
        text = f"{err['msg']} (got {_describe(cur)}); fix the value"
    if kind == "missing":
        line = reader.lines.get(parent) or 1
    else:
        line = _line_of(reader.lines, field_t)
    return line, field_t, text


def _line_of(lines: dict, field: tuple) -> int:
    key = tuple(field)
    while key:
        if key in lines:
            return lines[key]
        key = key[:-1]
    return 1


# --------------------------------------------------------------------------- cross-checks


class _Checker:
    """Cross-checks of names between the parts of a validated spec; collects errors."""

    def __init__(self, spec: StudySpec, reader: _Reader):
        self.spec = spec
        self.reader = reader
        self.errors: list[tuple[int, int, tuple, str]] = []

    def add(self, field: tuple, text: str):
        self.errors.append((_line_of(self.reader.lines, field), len(self.errors), field, text))

    def ref(self, field: tuple, value, choices, kind: str, plural: str, fix: str,
            scope: str = "of this study") -> bool:
        if value in choices:
            return True
        best = _closest(value, choices)
        hint = f" (did you mean {best!r}?)" if best else ""
        self.add(field, f"{value!r} is not {kind} {scope} ({plural}: "
                        f"{_listing(choices)}); {fix}{hint}")
        return False

    def arm(self, field, value):
        return self.ref(field, value, self.spec.arms, "an arm", "arms",
                        "fix the arm or add it under arms")

    def timepoint(self, field, value):
        return self.ref(field, value, self.spec.timepoints, "a timepoint", "timepoints",
                        "fix the name or add it under timepoints")

    def scan(self, field, value):
        return self.ref(field, value, self.spec.scans, "a scan", "scans",
                        "fix the name or add it under scans")

    def roi(self, field, value):
        return self.ref(field, value, self.spec.rois, "an ROI", "ROIs",
                        "fix the name or add it under rois")

    def biomarker(self, field, value):
        return self.ref(field, value, self.spec.biomarkers, "a biomarker", "biomarkers",
                        "fix the name or add it under biomarkers")

    def pattern(self, field, value):
        for name in _PLACEHOLDER_RE.findall(value):
            if name not in ("subject", "timepoint"):
                self.add(field, f"unknown placeholder {{{name}}} in {value!r}; "
                                "use {subject} or {timepoint}")

    # ------------------------------------------------------------------

    def run(self):
        s = self.spec
        self.names()
        if s.baseline is not None:
            self.timepoint(("baseline",), s.baseline)
        for role, scan in s.scans.items():
            self.pattern(("scans", role, "path"), scan.path)
        for name, roi in s.rois.items():
            self.roi_def(("rois", name), roi)
        self.subjects()
        self.empty_timepoints()
        self.maps()
        self.biomarkers()
        self.analyses()

    def names(self):
        for section in ("arms", "timepoints", "subjects", "scans", "rois", "maps", "biomarkers"):
            for name in getattr(self.spec, section):
                if not _NAME_RE.fullmatch(name):
                    self.add((section, name),
                             f"name {name!r} may hold only letters, digits, '_' and '-' and "
                             "must start with a letter or digit; rename it")

    def roi_def(self, field, roi):
        if roi.on is not None:
            self.scan(field + ("on",), roi.on)
        if roi.mask is not None:
            self.pattern(field + ("mask",), roi.mask)
        if roi.propagate is not None:
            self.timepoint(field + ("propagate", "from"), roi.propagate.from_)

    def subjects(self):
        s = self.spec
        for sid, subj in s.subjects.items():
            base = ("subjects", sid)
            self.arm(base + ("arm",), subj.arm)
            for tp in subj.missing:
                self.timepoint(base + ("missing", tp), tp)
            for tp, sess in subj.sessions.items():
                f = base + ("sessions", tp)
                if not self.timepoint(f, tp):
                    continue
                if tp in subj.missing:
                    self.add(f, f"subject {sid} lists {tp} as missing but gives overrides for "
                                "it; remove the overrides or the missing entry")
                if sess.scans is not None:
                    if not sess.scans:
                        self.add(f + ("scans",),
                                 "empty scans override: this session would have no scans; "
                                 "list the scans to replace, or remove `scans:`")
                    for role, ov in sess.scans.items():
                        if self.scan(f + ("scans", role), role):
                            self.pattern(f + ("scans", role), ov.path)
                for name, ov in (sess.rois or {}).items():
                    if self.roi(f + ("rois", name), name):
                        self.roi_def(f + ("rois", name), ov)

    def empty_timepoints(self):
        s = self.spec
        for tp in s.timepoints:
            if all(tp in subj.missing for subj in s.subjects.values()):
                self.add(("timepoints", tp),
                         f"timepoint {tp} has no scans: every subject lists it as missing; "
                         "remove the timepoint or its missing entries")

    def maps(self):
        from ..models import MODELS

        s = self.spec
        for name, m in s.maps.items():
            f = ("maps", name)
            if "." in name:
                self.add(f, f"map name {name!r} must not contain '.'; rename it")
            ok = self.ref(f + ("model",), m.model, MODELS, "a model", "models",
                          "choose one of them", scope="a study can map")
            if ok and m.model not in NOISE_AWARE_MODELS:
                given = [k for k in ("noise_sigma", "min_snr")
                         if (m.noise_sigma != "auto" if k == "noise_sigma" else m.min_snr is not None)]
                for key in given:
                    self.add(f + (key,), f"{key} applies to relaxometry and diffusion models "
                                         f"({', '.join(NOISE_AWARE_MODELS)}), not {m.model}; "
                                         "remove it")
            for key, value in m.options.items():
                if key in ROI_OPTIONS:
                    if not isinstance(value, str):
                        self.add(f + ("options", key), f"{key} names an ROI of this study, got "
                                                       f"{_describe(value)}; write its name")
                    else:
                        self.roi(f + ("options", key), value)
            if ok and m.method is not None:
                methods = list(getattr(MODELS[m.model], "methods", {}) or {})
                if methods and m.method not in methods:
                    best = _closest(m.method, methods)
                    hint = f" (did you mean {best!r}?)" if best else ""
                    self.add(f + ("method",),
                             f"{m.method!r} is not a method of model {m.model} (methods: "
                             f"{_listing(methods)}); choose one of them{hint}")
            self.scan(f + ("scan",), m.scan)
            if m.fit_within is not None:
                self.roi(f + ("fit_within",), m.fit_within)

    def biomarkers(self):
        s = self.spec
        for name, b in s.biomarkers.items():
            f = ("biomarkers", name)
            self.roi(f + ("roi",), b.roi)
            for i, tp in enumerate(b.timepoints or ()):
                self.timepoint(f + ("timepoints", i), tp)
            if b.ablation_roi is not None:
                if self.roi(f + ("ablation_roi",), b.ablation_roi) and b.ablation_roi == b.roi:
                    self.add(f + ("ablation_roi",),
                             f"ablation_roi and roi are both {b.roi}; name the ablation-zone "
                             "ROI in ablation_roi and the tumour ROI in roi")
            if b.map is None:
                continue
            mapname, dot, suffix = b.map.partition(".")
            if not dot or not suffix:
                self.add(f + ("map",), f"map {b.map!r} must be <map name>.<suffix>, e.g. "
                                       f"{next(iter(s.maps), 'r2star')}.R2starmap; add the suffix")
                continue
            if not self.ref(f + ("map",), mapname, s.maps, "a map", "maps",
                            "fix the name or add it under maps"):
                continue
            model = s.maps[mapname].model
            suffixes = MAP_OUTPUTS.get(model)
            if suffixes is None:
                continue
            if s.maps[mapname].method == "nlls_offset" and model in _OFFSET_OUTPUTS:
                suffixes = suffixes + (_OFFSET_OUTPUTS[model],)
            if any(p.fullmatch(suffix) for p in MAP_OUTPUT_PATTERNS.get(model, ())):
                continue
            if suffix not in suffixes:
                best = _closest(suffix, suffixes)
                hint = f" (did you mean {best!r}?)" if best else ""
                self.add(f + ("map",),
                         f"map {mapname} (model {model}) has no output {suffix!r} (outputs: "
                         f"{_listing(suffixes)}); write {mapname}.<one of them>{hint}")

    def analyses(self):
        s = self.spec
        names: dict[str, int] = {}
        for i, a in enumerate(s.analyses):
            f = ("analyses", i)
            if a.name is not None:
                if not _NAME_RE.fullmatch(a.name):
                    self.add(f + ("name",), f"name {a.name!r} may hold only letters, digits, "
                                            "'_' and '-'; rename it")
                if a.name in names:
                    self.add(f + ("name",), f"analysis name {a.name!r} is already used by "
                                            f"analyses[{names[a.name]}]; rename one of them")
                names.setdefault(a.name, i)
            for j, arm in enumerate(getattr(a, "arms", None) or []):
                self.arm(f + ("arms", j), arm)
            if isinstance(a, PairedAnalysis):
                self.biomarker(f + ("biomarker",), a.biomarker)
                ok = self.timepoint(f + ("from",), a.from_) & self.timepoint(f + ("to",), a.to)
                if ok and a.from_ == a.to:
                    self.add(f + ("to",), f"from and to are both {a.to}; compare two "
                                          "different timepoints")
            elif isinstance(a, BetweenArmsAnalysis):
                self.biomarker(f + ("biomarker",), a.biomarker)
                self.timepoint(f + ("timepoint",), a.timepoint)
            elif isinstance(a, CorrelationAnalysis):
                for axis in ("x", "y"):
                    ax = getattr(a, axis)
                    self.biomarker(f + (axis, "biomarker"), ax.biomarker)
                    self.timepoint(f + (axis, "timepoint"), ax.timepoint)
            elif isinstance(a, MixedModelAnalysis):
                self.biomarker(f + ("biomarker",), a.biomarker)
                for j, tp in enumerate(a.timepoints or []):
                    self.timepoint(f + ("timepoints", j), tp)
            elif isinstance(a, ResponseAnalysis):
                if self.biomarker(f + ("biomarker",), a.biomarker):
                    measure = s.biomarkers[a.biomarker].measure
                    wanted = (("volume",) if a.criteria == "volumetric"
                              else ("longest_diameter", "short_axis"))
                    if measure not in wanted:
                        self.add(f + ("biomarker",),
                                 f"{a.criteria} response needs a biomarker with measure "
                                 f"{' or '.join(wanted)}, but {a.biomarker} is "
                                 f"{'a map statistic' if measure is None else measure}; "
                                 "choose such a biomarker")
            elif isinstance(a, SurvivalAnalysis):
                self.survival(f, a)

    def survival(self, f, a):
        s = self.spec
        for key, kind in (("time", "number"), ("event", "boolean")):
            cov = getattr(a, key)
            for sid, subj in s.subjects.items():
                value = subj.covariates.get(cov, _ABSENT)
                bad = (value is _ABSENT
                       or (kind == "boolean" and not isinstance(value, bool))
                       or (kind == "number" and (isinstance(value, bool)
                                                 or not isinstance(value, (int, float))
                                                 or not math.isfinite(value) or value < 0)))
                if bad:
                    got = "it is absent" if value is _ABSENT else f"it is {value!r}"
                    want = ("true (event observed) or false (censored)" if kind == "boolean"
                            else "a non-negative number")
                    self.add(f + (key,),
                             f"covariate {cov!r} must be {want} for every subject, but for "
                             f"{sid} {got}; set subjects.{sid}.covariates.{cov}")
                    break
        if isinstance(a.group, SurvivalGroup):
            g = f + ("group",)
            self.biomarker(g + ("biomarker",), a.group.biomarker)
            self.timepoint(g + ("timepoint",), a.group.timepoint)
        elif a.group != "arm":
            if not any(a.group in subj.covariates for subj in s.subjects.values()):
                covs = sorted({c for subj in s.subjects.values() for c in subj.covariates})
                self.add(f + ("group",), f"group {a.group!r} is neither 'arm' nor a covariate "
                                         f"(covariates: {_listing(covs)}); fix the name")


def _analysis_name(a) -> str:
    if isinstance(a, PairedAnalysis):
        return f"paired_{a.biomarker}_{a.from_}_{a.to}"
    if isinstance(a, BetweenArmsAnalysis):
        change = "" if a.change == "none" else f"_{a.change}"
        return f"between_arms_{a.biomarker}_{a.timepoint}{change}"
    if isinstance(a, CorrelationAnalysis):
        return (f"correlation_{a.x.biomarker}_{a.x.timepoint}_vs_"
                f"{a.y.biomarker}_{a.y.timepoint}")
    if isinstance(a, MixedModelAnalysis):
        return f"mixed_model_{a.biomarker}"
    if isinstance(a, ResponseAnalysis):
        return f"response_{a.criteria}_{a.biomarker}"
    if isinstance(a.group, SurvivalGroup):
        return f"survival_{a.time}_{a.event}_by_{a.group.biomarker}_{a.group.timepoint}"
    return f"survival_{a.time}_{a.event}_by_{a.group}"


# --------------------------------------------------------------------------- load_spec


def load_spec(path) -> StudySpec:
    """Read, validate and cross-check a study spec (YAML).

    Parameters
    ----------
    path : str or path-like
        The spec file. Relative paths inside it start at its folder.

    Returns
    -------
    StudySpec
        The validated spec; ``spec.design()`` gives the study design.

    Raises
    ------
    ReadError
        The file does not exist or cannot be read.
    SpecError
        Any problem in the file: YAML syntax, duplicate or unknown keys,
        wrong values, times without a unit, references to names that are
        not defined. The message starts with ``<file>:<line>: <field>: ``
        and ends with the fix; only the first problem (in file order) is
        reported.
    """
    file = os.fspath(path)
    p = Path(file)
    try:
        blob = p.read_bytes()
    except FileNotFoundError:
        raise ReadError(f"{file}: spec file not found; check the path") from None
    except IsADirectoryError:
        raise ReadError(f"{file}: is a folder; pass the study spec file (YAML)") from None
    except OSError as exc:
        raise ReadError(f"{file}: cannot read the spec ({exc.strerror}); check its "
                        "permissions") from None
    try:
        text = blob.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = blob[:exc.start].count(b"\n") + 1
        raise SpecError(_located(file, line, (), "the file is not UTF-8 text; save it as UTF-8"),
                        path=file, line=line) from None

    node = _compose(text, file)
    if node is None:
        raise SpecError(_located(file, 1, (), "the spec is empty; start it with `oncomri: 1` "
                                              "(see the spec format)"), path=file, line=1)
    reader = _Reader(file)
    data = reader.data(node)
    if not isinstance(data, dict):
        raise SpecError(_located(file, 1, (), f"the spec must be a mapping of keys (oncomri: 1, "
                                              f"name: ..., ...), got {_describe(data)}; "
                                              "rewrite it as key: value lines"),
                        path=file, line=1)

    try:
        spec = StudySpec.model_validate(data)
    except _PydanticError as exc:
        found = [_translate(err, data, reader) for err in exc.errors()]
        line, field, text = min(found, key=lambda t: t[0])
        raise SpecError(_located(file, line, field, text), path=file, line=line,
                        field=_dotted(field)) from None

    checker = _Checker(spec, reader)
    checker.run()
    if checker.errors:
        line, _, field, text = min(checker.errors)
        raise SpecError(_located(file, line, field, text), path=file, line=line,
                        field=_dotted(field))

    # Fill in what is implied: absolute output, baseline, analysis names.
    abspath = Path(os.path.abspath(file))
    update: dict[str, Any] = {"output": abspath.parent / spec.output}
    if spec.baseline is None:
        order = list(spec.timepoints)
        update["baseline"] = min(order, key=lambda n: (spec.timepoints[n].time, order.index(n)))
    used = {a.name for a in spec.analyses if a.name is not None}
    analyses = []
    for a in spec.analyses:
        if a.name is None:
            base = _analysis_name(a)
            name, k = base, 2
            while name in used:
                name, k = f"{base}_{k}", k + 1
            used.add(name)
            a = a.model_copy(update={"name": name})
        analyses.append(a)
    update["analyses"] = analyses
    spec = spec.model_copy(update=update)
    spec._file = file
    spec._path = abspath
    spec._text_hash = hashlib.sha256(blob).hexdigest()
    spec._lines = dict(reader.lines)
    spec._dump = None
    return spec

