"""The work of one session: load its scans, make its ROIs, fit its maps, measure.

A :class:`SessionTask` is plain, picklable data (resolved paths, the spec's
map and biomarker definitions, where to write), so it can run in a Dask
worker on another machine that sees the same files. :func:`run_session`
never raises for bad data: it returns a :class:`SessionOutcome` holding
either the :class:`~oncomri.study.db.SessionRecord` to store or the stage
and one-line reason of the failure. The driver (:mod:`oncomri.study.pipeline`)
alone writes to the database; a worker writes only the session's derivative
files, each atomically (:func:`oncomri.io.write_derivatives`), so a run
killed at any moment leaves either no file or a complete one.

Stages (timed for the benchmark): ``load`` (read scans), ``roi`` (mask files,
seeded segmentation, propagation from another session by registration),
``map`` (fit and write parameter maps), ``measure`` (ROI statistics and
geometry, ablative margins).

``measure: ablative_margin`` puts the tumour ROI onto the grid of the
ablation-zone ROI (``ablation_roi``; voxels at least half inside) and reports
the minimum ablative margin in mm of :func:`oncomri.roi.ablative_margin`
(Koda et al., J Gastroenterol 2013;48:1283; Fukuda et al., Jpn J Radiol 2019,
doi 10.1007/s11604-019-00843-1), its AM(+)/AM(0)/AM(−) class and coverage in
the measurement's provenance.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .. import __version__
from ..core.errors import OncomriError, ValidationError
from .spec import NOISE_AWARE_MODELS, ROI_OPTIONS

__all__ = ["SessionTask", "SessionOutcome", "run_session", "STATISTICS", "MEASURES",
           "session_prefix"]

#: Biomarker ``statistic`` -> key of :meth:`oncomri.roi.RoiStatistics.as_dict`.
STATISTICS = {"mean": "mean", "median": "median", "sd": "sd", "p10": "p10", "p90": "p90",
              "min": "minimum", "max": "maximum"}

#: Biomarker ``measure`` -> unit of the ROI geometry it reports.
MEASURES = {"volume": "mm^3", "longest_diameter": "mm", "short_axis": "mm",
            "ablative_margin": "mm"}


def session_prefix(subject: str, timepoint: str) -> str:
    """BIDS entity prefix of a session's derivatives, ``sub-<subject>_ses-<timepoint>``."""
    return f"sub-{subject}_ses-{timepoint}"


@dataclass(frozen=True)
class SessionTask:
    """Everything a worker needs to process one session.

    Attributes
    ----------
    session : ResolvedSession
        The session's scans and ROI definitions (:mod:`oncomri.study.inputs`).
    others : mapping
        Other sessions of the same subject that ROIs propagate from
        (timepoint -> ResolvedSession).
    maps, biomarkers : mapping
        The spec's ``maps`` and ``biomarkers`` as plain dicts.
    out_dir : str
        Derivatives root; the session writes to ``<out_dir>/sub-X/ses-Y/``.
    task_key : str
        Hash of every input of this session (see the pipeline).
    input_hashes : mapping
        ``(timepoint, role) -> content hash`` of scans and ``(timepoint,
        'roi:'+name) -> hash`` of ROI mask files, for the records.
    """

    subject: str
    timepoint: str
    task_key: str
    session: Any
    others: Mapping[str, Any]
    maps: Mapping[str, Mapping]
    biomarkers: Mapping[str, Mapping]
    out_dir: str
    input_hashes: Mapping[tuple, str] = field(default_factory=dict)


@dataclass
class SessionOutcome:
    """What a worker returns: a record to store, or a failure (stage, reason)."""

    subject: str
    timepoint: str
    task_key: str
    record: Any = None
    stage: str | None = None
    reason: str | None = None
    timings: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.record is not None


class _Timer:
    """Seconds per stage; ``timer(stage)`` is a context that adds its wall time to
    ``stage`` and remembers the stage in progress (named in failures). Stages do
    not nest: an inner stage's time would be counted twice."""

    def __init__(self, timings: dict):
        self.timings = timings
        self.stage = "load"

    def __call__(self, stage: str):
        self.stage = stage
        return _Stage(self, stage)


class _Stage:
    def __init__(self, timer: _Timer, stage: str):
        self.timer, self.stage = timer, stage

    def __enter__(self):
        self.timer.stage = self.stage
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        t = self.timer.timings
        t[self.stage] = t.get(self.stage, 0.0) + time.perf_counter() - self._t0


def _file_hash(path: Path) -> str:
    from .inputs import content_hash

    return content_hash([path])


class _Session:
    """Lazily loaded scans and ROIs of one session (and of the sessions it borrows from)."""

    def __init__(self, task: SessionTask, timer: _Timer, derived: list):
        self.task = task
        self.timer = timer
        self.derived = derived  # RoiRecords
        self._volumes: dict = {}
        self._rois: dict = {}
        from .mapping import DIFFUSION, RELAXOMETRY

        # multi-echo loading (echo times required) for relaxometry scans only; the
        # other models read their acquisition from the scan's sidecar/headers
        self._multi_echo_roles = {m["scan"] for m in task.maps.values()
                                  if m["model"] in RELAXOMETRY}
        self._diffusion_roles = {m["scan"] for m in task.maps.values() if m["model"] in DIFFUSION}

    def _resolved(self, timepoint: str):
        if timepoint == self.task.timepoint:
            return self.task.session
        return self.task.others[timepoint]

    def volume(self, role: str, timepoint: str | None = None):
        from .mapping import attach_b_values, load_scan

        timepoint = timepoint or self.task.timepoint
        key = (timepoint, role)
        if key not in self._volumes:
            scan = self._resolved(timepoint).scans[role]
            with self.timer("load"):
                self._volumes[key] = load_scan(
                    scan.paths, series=scan.series, echo_times=scan.echo_times,
                    multi_echo=role in self._multi_echo_roles,
                    label=f"scans.{role}.echo_times")
                if role in self._diffusion_roles:
                    attach_b_values(self._volumes[key], scan.paths, label=f"scans.{role}")
        return self._volumes[key]

    def anatomy(self, role: str, timepoint: str | None = None) -> np.ndarray:
        """3D image of a scan (its first measurement when it has several)."""
        data = np.asarray(self.volume(role, timepoint).data, dtype=np.float32)
        return data[..., 0] if data.ndim == 4 else data

    def roi(self, name: str, timepoint: str | None = None):
        """``(bool mask, affine)`` of ROI ``name`` on the grid of its ``on`` scan."""
        timepoint = timepoint or self.task.timepoint
        key = (timepoint, name)
        if key not in self._rois:
            self._rois[key] = self._make_roi(name, timepoint)
        return self._rois[key]

    def _make_roi(self, name: str, timepoint: str):
        from ..io import load_roi

        spec = self._resolved(timepoint).rois[name]
        on = self.volume(spec.on, timepoint)
        if spec.kind == "mask":
            with self.timer("roi"):
                labels, affine = load_roi(spec.mask_path, like=on)
                mask = labels == spec.label if spec.label is not None else labels > 0
                if not mask.any():
                    raise ValidationError(
                        f"{spec.mask_path}: ROI {name!r} is empty"
                        + (f" (no voxel has label {spec.label})" if spec.label is not None else "")
                        + "; draw the ROI or list the session as missing")
            return mask, affine
        if spec.kind == "seed":
            from ..roi import segment_from_seed

            image = self.anatomy(spec.on, timepoint)
            with self.timer("roi"):
                ijk = np.linalg.solve(on.affine, np.r_[np.asarray(spec.seed_mm, float), 1.0])[:3]
                ijk = tuple(int(round(v)) for v in ijk)
                if not all(0 <= v < n for v, n in zip(ijk, image.shape)):
                    raise ValidationError(
                        f"rois.{name}.seed {list(spec.seed_mm)} mm lies outside scan "
                        f"{spec.on!r} of {self.task.subject}/{timepoint} (voxel {ijk}, grid "
                        f"{image.shape}); give a seed inside the image (RAS+ mm)")
                mask = segment_from_seed(image, ijk, voxel_size_mm=tuple(on.voxel_size),
                                         **({"method": spec.method} if spec.method else {}))
                self._save_roi(name, timepoint, mask, on, "seed")
            return mask.astype(bool), on.affine
        if spec.kind == "propagate":
            from ..roi import propagate_mask, register

            source_tp = spec.propagate_from
            base_mask, base_affine = self.roi(name, source_tp)
            fixed = self.anatomy(spec.on, source_tp)
            moving = self.anatomy(spec.on, timepoint)
            base_volume = self.volume(spec.on, source_tp)
            with self.timer("roi"):
                reg = register(fixed, moving, fixed_affine=base_volume.affine,
                               moving_affine=on.affine)
                mask = propagate_mask(base_mask, from_affine=base_affine,
                                      to_shape=on.spatial_shape, to_affine=on.affine,
                                      registration=reg) > 0
                self._save_roi(name, timepoint, mask, on, "propagate")
            return mask, on.affine
        raise ValidationError(f"rois.{name}: unknown ROI source {spec.kind!r}")  # pragma: no cover

    def _save_roi(self, name, timepoint, mask, on, source):
        """Derived ROIs of this session are written as derivatives (kept for the report)."""
        if timepoint != self.task.timepoint:
            return
        from ..io import write_derivatives

        folder = _session_dir(self.task)
        prefix = session_prefix(self.task.subject, self.task.timepoint)
        suffix = f"label-{name}_mask"
        sidecar = {"Software": "oncomri", "SoftwareVersion": __version__, "Source": source,
                   "Type": "ROI", "Units": "1"}
        written = write_derivatives(folder, prefix, {suffix: (mask.astype(np.uint8), sidecar)},
                                    reference=on)
        self.derived.append((name, source, written[0]))


#: Options that take an array on the scan grid: a spec names an ROI instead
#: (:data:`oncomri.study.spec.ROI_OPTIONS`) or cannot give them.
_ARRAY_OPTIONS = ("aif_mask", "reference_mask", "leakage_reference_mask", "noise_background",
                  "b0_map", "wassr", "b1")


def _option_names(map_name: str):
    """How messages name a map's options: ``maps.<name>.options.<key>`` (ROI options by
    the ``*_roi`` key the spec used; ``method`` and ``noise_sigma`` by their own field)."""
    inverse = {v: k for k, v in ROI_OPTIONS.items()}

    def name(key: str) -> str:
        if key in ("method", "noise_sigma"):
            return f"maps.{map_name}.{key}"
        return f"maps.{map_name}.options.{inverse.get(key, key)}"

    return name


def _map_options(map_name: str, m: Mapping, s: "_Session", volume):
    """``(options for the model, {key: ROI name})``: ``*_roi`` options become the ROI's
    mask resampled onto the scan grid under the model's ``*_mask`` option."""
    options = dict(m.get("options") or {})
    rois = {}
    for key in list(options):
        if key in _ARRAY_OPTIONS:
            alt = {v: k for k, v in ROI_OPTIONS.items()}.get(key)
            fix = f"name an ROI with {alt}" if alt else "it takes an image; use oncomri map"
            raise ValidationError(f"maps.{map_name}.options.{key}: cannot be given in a study "
                                  f"spec; {fix}")
        if key in ROI_OPTIONS:
            roi = options.pop(key)
            if not isinstance(roi, str):
                raise ValidationError(f"maps.{map_name}.options.{key}: give the name of an ROI")
            mask = _mask_on_grid(*s.roi(roi), volume)
            if not mask.any():
                raise ValidationError(f"maps.{map_name}.options.{key}: ROI {roi!r} covers no voxel "
                                      f"of scan {m['scan']!r}; check the ROI's `on` scan")
            options[ROI_OPTIONS[key]] = mask
            rois[key] = roi
    return options, rois


def _session_dir(task: SessionTask) -> Path:
    return Path(task.out_dir) / f"sub-{task.subject}" / f"ses-{task.timepoint}"


def _mask_on_grid(mask, mask_affine, volume) -> np.ndarray:
    """A bool ROI on ``volume``'s grid: unchanged when the grids agree, otherwise the
    voxels at least half inside (partial-volume fraction >= 0.5)."""
    from ..core import same_grid
    from ..roi import resample_mask

    if same_grid(mask.shape, mask_affine, volume.spatial_shape, volume.affine):
        return np.asarray(mask, bool)
    # 4 x 4 x 4 sub-samples: exact for the common 2:1 (and 4:1) in-plane ratios
    fraction = resample_mask(mask.astype(np.uint8), mask_affine, target_shape=volume.spatial_shape,
                             target_affine=volume.affine, method="fraction", supersampling=4)
    return fraction >= 0.5


def _ablative_margin(bname: str, b: Mapping, tumour, tumour_affine, ablation, ablation_affine,
                     grid) -> tuple[float, str, dict]:
    """``(minimum margin in mm, method, provenance)`` of biomarker ``bname``.

    The tumour mask goes onto the grid of the ablation-zone mask (``grid``:
    the volume of the ablation ROI's ``on`` scan) with :func:`_mask_on_grid`;
    the margin is :func:`oncomri.roi.ablative_margin` with the ablation zone
    as ``ablation_mask`` and the default AM(+) criterion
    (:data:`oncomri.roi.margins.AM_CRITERION_MM`; Koda et al., J Gastroenterol
    2013;48:1283; Fukuda et al., Jpn J Radiol 2019). The provenance holds the
    class (``margin_class``), the coverage and the volumes of
    :meth:`~oncomri.roi.margins.AblativeMargin.as_dict`.
    """
    from ..roi.margins import AM_CRITERION_MM, ablative_margin

    zone = _mask_on_grid(ablation, ablation_affine, grid)
    on_grid = _mask_on_grid(tumour, tumour_affine, grid)
    resampled = not np.array_equal(np.shape(tumour), on_grid.shape) or not np.allclose(
        np.asarray(tumour_affine, float), np.asarray(grid.affine, float))
    if not on_grid.any():
        raise ValidationError(
            f"biomarkers.{bname}: tumour ROI {b['roi']!r} covers no voxel of the grid of "
            f"ablation ROI {b['ablation_roi']!r} (grids do not overlap); check the ROIs' `on` "
            "scans")
    if not zone.any():
        raise ValidationError(
            f"biomarkers.{bname}: ablation ROI {b['ablation_roi']!r} is empty; draw the "
            "ablation zone or list the session as missing")
    result = ablative_margin(on_grid, voxel_size_mm=tuple(float(v) for v in grid.voxel_size),
                             ablation_mask=zone, affine=grid.affine)
    method = (f"minimum ablative margin of the tumour inside the ablation zone (surface "
              f"distance; AM(+) if >= {AM_CRITERION_MM:g} mm and no protrusion; Koda et al. "
              f"2013, Fukuda et al. 2019)")
    provenance = {**result.as_dict(), "ablation_roi": b["ablation_roi"],
                  "tumour_resampled": bool(resampled),
                  "voxel_size_mm": [float(v) for v in grid.voxel_size]}
    return float(result.min_margin_mm), method, provenance


def _process(task: SessionTask, timer: _Timer):
    from ..io import find_reader, write_derivatives
    from ..roi import longest_axial_diameter, roi_statistics, tumour_volume
    from .db import MapRecord, MeasurementRecord, RoiRecord, ScanRecord, SessionRecord
    from .mapping import fit_map

    derived: list = []
    s = _Session(task, timer, derived)
    folder = _session_dir(task)
    prefix = session_prefix(task.subject, task.timepoint)

    # ---- load every scan of the session (errors name the scan)
    for role in task.session.scans:
        s.volume(role)
    # ---- ROIs used by maps or biomarkers
    timer("roi")
    biomarkers = {name: b for name, b in task.biomarkers.items()
                  if not b.get("timepoints") or task.timepoint in b["timepoints"]}
    roi_names = {b["roi"] for b in biomarkers.values() if b.get("roi")}
    roi_names |= {b["ablation_roi"] for b in biomarkers.values() if b.get("ablation_roi")}
    roi_names |= {m["fit_within"] for m in task.maps.values() if m.get("fit_within")}
    roi_names |= {v for m in task.maps.values() for k, v in (m.get("options") or {}).items()
                  if k in ROI_OPTIONS and isinstance(v, str)}
    for name in sorted(roi_names):
        s.roi(name)

    # ---- maps
    fitted: dict = {}
    map_records: list = []
    for name, m in task.maps.items():
        volume = s.volume(m["scan"])
        mask = None
        if m.get("fit_within"):
            mask = _mask_on_grid(*s.roi(m["fit_within"]), volume)
        timer("map")  # failures of the options are failures of the map stage
        options, roi_options = _map_options(name, m, s, volume)
        with timer("map"):
            noise = {}
            if m["model"] in NOISE_AWARE_MODELS:
                sigma = m.get("noise_sigma", "auto")
                noise = {"noise_sigma": "auto" if sigma in (None, "auto") else float(sigma),
                         "min_snr": m.get("min_snr")}
            result = fit_map(volume, m["model"], method=m.get("method"), mask=mask,
                             options=options, names=_option_names(name),
                             mask_source=f"ROI {m['fit_within']}" if m.get("fit_within") else None,
                             **noise)
            if roi_options:
                result.sidecar["Options"] = {**result.sidecar.get("Options", {}), **roi_options}
            map_prefix = prefix if name == m["model"] else f"{prefix}_desc-{name}"
            written = write_derivatives(folder, map_prefix, result.maps, reference=volume,
                                        sidecar_common={**result.sidecar, "MapName": name})
        fitted[name] = (result, volume)
        for (suffix, (_, side)), path in zip(result.maps.items(), written):
            map_records.append(MapRecord(
                name=name, parameter=suffix, path=str(path), content_hash=_file_hash(path),
                unit=str(side.get("Units", "")) if side else "",
                parameters={"model": m["model"], "method": result.model.method,
                            "noise_sigma": result.sidecar.get("NoiseSigma"),
                            "noise_sigma_source": result.noise_sigma_source,
                            "fit_within": m.get("fit_within"),
                            "options": result.sidecar.get("Options") or {}},
                software_version=__version__))

    # ---- measurements
    measurements: list = []
    on_map_grid: dict = {}
    with timer("measure"):
        for bname, b in biomarkers.items():
            mask, mask_affine = s.roi(b["roi"])
            on_volume = s.volume(task.session.rois[b["roi"]].on)
            if b.get("map"):
                map_name, parameter = b["map"].split(".", 1)
                result, volume = fitted[map_name]
                if parameter not in result.maps:
                    raise ValidationError(
                        f"biomarkers.{bname}: map {map_name} (model {result.sidecar.get('Model')}, "
                        f"method {result.sidecar.get('Method')}) wrote no {parameter!r}; it wrote "
                        f"{', '.join(result.maps)}; change the biomarker's map or the map's "
                        "method/options")
                values, side = result.maps[parameter]
                unit = str(side.get("Units", "")) if side else ""
                key = (b["roi"], map_name)
                if key not in on_map_grid:
                    on_map_grid[key] = _mask_on_grid(mask, mask_affine, volume)
                roi = on_map_grid[key]
                if not roi.any():
                    raise ValidationError(
                        f"biomarkers.{bname}: ROI {b['roi']!r} covers no voxel of map "
                        f"{b['map']} (grids do not overlap); check the ROI's `on` scan")
                stats = roi_statistics(values, roi, voxel_size_mm=tuple(volume.voxel_size),
                                       value_unit=unit)[0].as_dict()
                value = stats[STATISTICS[b["statistic"]]]
                measurements.append(MeasurementRecord(
                    biomarker=bname, value=float(value), unit=unit, roi=b["roi"], map=b["map"],
                    statistic=b["statistic"], method=result.model.method,
                    provenance={"n_voxels": stats["n_voxels"], "n_nan": stats["n_nan"],
                                "roi_volume_mm3": stats["volume_mm3"],
                                "roi_resampled": not np.array_equal(mask.shape, roi.shape)}))
            elif b["measure"] == "ablative_margin":
                ablation, ablation_affine = s.roi(b["ablation_roi"])
                grid = s.volume(task.session.rois[b["ablation_roi"]].on)
                value, method, provenance = _ablative_margin(
                    bname, b, mask, mask_affine, ablation, ablation_affine, grid)
                measurements.append(MeasurementRecord(
                    biomarker=bname, value=value, unit=MEASURES["ablative_margin"],
                    roi=b["roi"], map="", statistic="ablative_margin", method=method,
                    provenance=provenance))
            else:
                measure = b["measure"]
                if measure == "volume":
                    value = tumour_volume(mask, voxel_size_mm=tuple(on_volume.voxel_size),
                                          allow_empty=True)
                    method = "voxel count x voxel volume"
                else:
                    d = longest_axial_diameter(mask, mask_affine, allow_empty=True)
                    value = d.long_axis_mm if measure == "longest_diameter" else d.short_axis_mm
                    method = "RECIST 1.1 axial diameter (convex hull per slice)"
                measurements.append(MeasurementRecord(
                    biomarker=bname, value=float(value), unit=MEASURES[measure], roi=b["roi"],
                    map="", statistic=measure, method=method,
                    provenance={"n_voxels": int(np.count_nonzero(mask)),
                                "voxel_size_mm": [float(v) for v in on_volume.voxel_size]}))

    scans = []
    for role, scan in task.session.scans.items():
        scans.append(ScanRecord(
            role=role, path=";".join(str(p) for p in scan.paths),
            content_hash=task.input_hashes.get((task.timepoint, role), ""),
            format=find_reader(scan.paths[0]).name))
    rois = []
    derived_paths = {name: (source, path) for name, source, path in derived}
    for name in sorted(roi_names):
        mask, _ = s.roi(name)
        on_volume = s.volume(task.session.rois[name].on)
        spec = task.session.rois[name]
        if name in derived_paths:
            source, path = derived_paths[name]
            content = _file_hash(path)
        else:
            source, path = spec.kind, spec.mask_path
            content = task.input_hashes.get((task.timepoint, "roi:" + name), "")
        rois.append(RoiRecord(name=name, source=source, path=str(path), content_hash=content,
                              n_voxels=int(np.count_nonzero(mask)),
                              volume_mm3=float(np.count_nonzero(mask) * np.prod(on_volume.voxel_size))))
    return SessionRecord(subject=task.subject, timepoint=task.timepoint, task_key=task.task_key,
                         scans=scans, maps=map_records, rois=rois, measurements=measurements,
                         timings=dict(timer.timings))


def run_session(task: SessionTask) -> SessionOutcome:
    """Process one session; bad data becomes a failure outcome, never an exception."""
    timings: dict = {}
    timer = _Timer(timings)
    try:
        record = _process(task, timer)
    except OncomriError as exc:
        return SessionOutcome(task.subject, task.timepoint, task.task_key, stage=timer.stage,
                              reason=str(exc), timings=timings)
    except (OSError, MemoryError) as exc:
        return SessionOutcome(task.subject, task.timepoint, task.task_key, stage=timer.stage,
                              reason=f"{type(exc).__name__}: {exc}", timings=timings)
    except Exception as exc:  # a bug: keep the study going, say where
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return SessionOutcome(
            task.subject, task.timepoint, task.task_key, stage=timer.stage,
            reason=f"internal error {type(exc).__name__}: {exc} "
                   f"(at {Path(where.filename).name}:{where.lineno}; please report it)",
            timings=timings)
    return SessionOutcome(task.subject, task.timepoint, task.task_key, record=record,
                          timings=timings)
