"""Load a scan and fit a parametric map with its provenance: the step shared by
``oncomri map`` and the study pipeline.

One place decides how a scan given as files becomes a :class:`~oncomri.core.Volume`
(NIfTI per-echo files or one 4D file with BIDS sidecars, or any format of
:func:`oncomri.io.load`, optionally with echo times given as text) and which
provenance goes into every map's JSON sidecar (model, method and its
reference, echo times used, noise sigma and where it came from, sources,
software version).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .. import __version__
from ..core import MultiEchoProtocol, ProtocolError, ValidationError, Volume
from ..core.units import parse_echo_times, to_seconds

__all__ = ["METHOD_REFERENCES", "MapResult", "load_scan", "fit_map", "attach_b_values",
           "read_bval", "RELAXOMETRY", "DIFFUSION"]

#: Fit method -> what it is, with its literature reference (for sidecars and the report).
METHOD_REFERENCES = {
    "loglin": "log-linear least squares",
    "wloglin": "log-linear least squares weighted by S^2",
    "arlo": "ARLO, Pei et al., MRM 2015;73:843 (Simpson ratio inverted exactly)",
    "nlls": "nonlinear least squares, S0 exp(-R TE), bounded Levenberg-Marquardt",
    "nlls_offset": "nonlinear least squares, S0 exp(-R TE) + C, bounded Levenberg-Marquardt",
    "ncexp": "noise-corrected exponential (Rician mean), Raya et al., MRM 2010;63:181; "
             "Feng et al., MRM 2013;70:1765",
}


def _is_nifti_name(path) -> bool:
    return str(path).endswith((".nii", ".nii.gz"))


def load_scan(paths: Sequence, *, series: str | None = None, echo_times: str | None = None,
              multi_echo: bool = False, label: str = "--echo-times") -> Volume:
    """Read one scan given as files or a folder.

    Parameters
    ----------
    paths : sequence of path-like
        NIfTI files (one 4D file, or one file per echo with BIDS sidecars),
        or a single DICOM folder/file, Bruker scan or PAR file.
    series : str, optional
        Series selector for inputs holding several (``'5'`` or ``'5/2'``).
    echo_times : str, optional
        Echo times with their unit (``'4.6,9.2,13.8ms'``); override the files'.
    multi_echo : bool
        Require a multi-echo series (for relaxometry); a clear error otherwise.
    label : str
        The option or spec field ``echo_times`` came from, for messages.
    """
    from ..io import describe_series, load, load_multi_echo, load_nifti

    paths = [Path(p) for p in paths]
    if not paths:
        raise ValidationError(f"{label}: no input files")
    te = unit = None
    if echo_times is not None:
        te, unit = parse_echo_times(echo_times, name=label)
    if all(_is_nifti_name(p) for p in paths):
        if multi_echo or len(paths) > 1 or te is not None:
            return load_multi_echo(paths, echo_times=te, echo_time_unit=unit,
                                   echo_times_label=f"{label} {echo_times!r}")
        return load_nifti(paths[0])
    if len(paths) != 1:
        raise ValidationError(
            "give one DICOM folder, Bruker scan or PAR file, or NIfTI files (one per echo); "
            f"got {len(paths)} inputs of other kinds")
    volume = load(paths[0], series=series)
    if te is not None:
        volume.protocol = MultiEchoProtocol(to_seconds(te, unit), source=label)
        if volume.data.ndim != 4 or volume.data.shape[-1] != volume.protocol.n_echoes:
            raise ProtocolError(f"{label} lists {volume.protocol.n_echoes} echoes but series "
                                f"{describe_series(volume)} has "
                                f"{volume.data.shape[-1] if volume.data.ndim == 4 else 1}")
    if multi_echo and not isinstance(volume.protocol, MultiEchoProtocol):
        what = type(volume.protocol).__name__ if volume.protocol is not None else "a single image"
        raise ProtocolError(
            f"{paths[0]}: series {describe_series(volume)} is not a multi-echo series "
            f"({what}); choose a multi-echo series (--series / series:) or give echo times")
    return volume


@dataclass
class MapResult:
    """A fitted model with the maps a user gets on disk and their common sidecar.

    ``maps`` is ``{BIDS suffix: (array, sidecar)}`` (``fit.output_maps()``),
    ``sidecar`` the provenance shared by every map, ``seconds`` the fit time.
    """

    fit: Any
    model: Any
    maps: dict
    sidecar: dict
    seconds: float
    noise_sigma_source: str | None


#: Registry names of the multi-echo relaxometry models (fitted here, from echo times).
RELAXOMETRY = ("r2star", "t2star", "t2")
#: Registry names of the diffusion models (noise-aware with method ncexp).
DIFFUSION = ("adc", "ivim", "dki")


def fit_map(volume: Volume, model_name: str, *, method: str | None = None, mask=None,
            options: dict | None = None, names=None,
            noise_sigma="auto", noise_background=None, drop_first_echo: bool = False,
            progress: Callable | None = None, mask_source: str | None = None,
            noise_background_label: str = "the noise mask",
            min_snr: float | None = None) -> MapResult:
    """Fit ``oncomri.models.MODELS[model_name]`` to ``volume`` and describe how.

    Relaxometry (``r2star``, ``t2star``, ``t2``) is fitted here from the
    volume's echo times (see :mod:`oncomri.models.relaxometry` for the methods
    and their references); every other model goes through its
    ``fit_volume`` classmethod (:mod:`oncomri.models.volume_fit`), the same
    path as ``oncomri map <model>``, with ``options`` as its plain options
    (checked there: an unknown key or a bad value raises an error naming it
    as ``names`` says, e.g. ``maps.dce.options.aif``).

    This adds the provenance sidecar: model, method and its reference
    (:data:`METHOD_REFERENCES` for relaxometry), the acquisition values used
    (echo times, b-values, frame times, flip angles ... with units), noise
    sigma (signal units) and its source where the model uses one, the
    options given, the source files, the mask and the software version.
    ``mask_source`` and ``noise_background_label`` name the mask and the noise
    region where they came from (a file, an option, an ROI) for the sidecar.

    ``noise_sigma``, ``noise_background`` and ``min_snr`` apply to the
    noise-aware models: relaxometry and diffusion (ignored by the others).
    ``min_snr`` skips background: voxels whose first fitted echo (diffusion:
    lowest-b image) is below ``min_snr`` times the noise sigma (given, or
    estimated as the model would) are not fitted (status MASKED, NaN maps).
    In magnitude images pure noise exceeds 3 sigma with probability
    exp(-4.5) ~ 1 % (Rayleigh distribution; Gudbjartsson & Patz, MRM
    1995;34:910), so ``min_snr=3`` removes air while keeping tissue whose
    later echoes sit in the noise floor, which the noise-aware fit handles.
    Fitting air is the slow part of a whole-volume noise-aware fit (it
    rarely converges).
    """
    from ..models import MODELS

    if model_name not in MODELS:
        raise ValidationError(f"model {model_name!r}: not one of {', '.join(sorted(MODELS))}")
    if model_name not in RELAXOMETRY:
        if drop_first_echo:
            raise ProtocolError("--drop-first-echo applies to the t2 model only")
        return _fit_volume_model(volume, model_name, method=method, mask=mask,
                                 options=options, names=names, noise_sigma=noise_sigma,
                                 noise_background=noise_background, progress=progress,
                                 mask_source=mask_source,
                                 noise_background_label=noise_background_label, min_snr=min_snr)
    if options:
        from ..models.volume_fit import Options

        known = {"drop_first_echo": False} if model_name == "t2" else {}
        opts = Options(options, known, model=model_name, names=names)
        drop_first_echo = drop_first_echo or (opts.flag("drop_first_echo") if known else False)
    if drop_first_echo and model_name != "t2":
        raise ProtocolError("--drop-first-echo applies to the t2 model only")
    model_options = {"drop_first_echo": True} if drop_first_echo else {}
    model = MODELS[model_name](volume.protocol, method=method, **model_options)
    start = time.perf_counter()
    threshold_note = None
    if min_snr is not None:
        mask, noise_sigma, auto_sigma, threshold_note = _snr_mask(
            volume.data, model.first_echo, f"echo {model.first_echo + 1}", volume.data, mask=mask,
            noise_sigma=noise_sigma, noise_background=noise_background, min_snr=min_snr)
    else:
        auto_sigma = isinstance(noise_sigma, str) and noise_sigma == "auto"
    fit = model.fit(volume.data, mask=mask, noise_sigma=noise_sigma,
                    noise_background=noise_background, progress=progress)
    seconds = time.perf_counter() - start
    sigma_source = None
    if model.noise_aware:
        sigma_source = ("given" if not auto_sigma else
                        f"estimated from {noise_background_label}" if noise_background is not None else
                        "estimated from the image background (first echo)")
    scalar_sigma = (fit.noise_sigma is not None and np.ndim(fit.noise_sigma) == 0)
    sidecar = {
        "Software": "oncomri",
        "SoftwareVersion": __version__,
        "Model": model_name,
        "Method": model.method,
        "MethodDescription": METHOD_REFERENCES.get(model.method, "user-supplied"),
        "EchoTime": volume.protocol.echo_times.tolist(),
        "EchoTimeUnits": "s",
        "EchoesUsed": list(range(model.first_echo + 1, volume.protocol.n_echoes + 1)),
        "RateBounds": list(model.rate_bounds),
        "RateBoundsUnits": "1/s",
        "Sources": [str(Path(s).resolve()) for s in volume.sources],
        "Mask": mask_source,
        "SignalThreshold": threshold_note,
        "NoiseSigma": float(fit.noise_sigma) if scalar_sigma else None,
        "NoiseSigmaUnits": "a.u. (signal units)" if model.noise_aware else None,
        "NoiseSigmaSource": sigma_source,
        "Notes": list(volume.meta.get("notes", [])),
    }
    return MapResult(fit=fit, model=model, maps=fit.output_maps(), sidecar=sidecar,
                     seconds=seconds, noise_sigma_source=sigma_source)


def _snr_mask(data, index: int, what: str, sigma_data, *, mask, noise_sigma, noise_background,
              min_snr):
    """``(mask, noise_sigma, sigma_was_estimated, note)``: voxels of measurement ``index``
    at or above ``min_snr`` times the noise sigma (estimated when 'auto')."""
    from ..core.checks import positive_float
    from ..models import estimate_noise_sigma

    min_snr = positive_float("min_snr", min_snr)
    if isinstance(noise_sigma, str) and noise_sigma == "auto":
        noise_sigma = estimate_noise_sigma(sigma_data, background=noise_background)
        auto_sigma = True
    else:
        auto_sigma = False
    first = np.asarray(data[..., index], dtype=np.float64)
    signal = first >= min_snr * np.asarray(noise_sigma, dtype=np.float64)
    mask = signal if mask is None else (np.asarray(mask, bool) & signal)
    return mask, noise_sigma, auto_sigma, f"voxels with {what} below {min_snr:g} x noise sigma not fitted"


def _fit_volume_model(volume, model_name, *, method, mask, options, names, noise_sigma,
                      noise_background, progress, mask_source, noise_background_label,
                      min_snr) -> MapResult:
    """Any model with a ``fit_volume`` classmethod (T1, DCE, DSC, diffusion, CEST)."""
    from ..models import MODELS

    cls = MODELS[model_name]
    builder = getattr(cls, "fit_volume", None)
    if builder is None:  # pragma: no cover - every non-relaxometry model has one
        raise ValidationError(f"model {model_name!r} cannot be fitted from a scan here; "
                              "use oncomri map")
    options = dict(options or {})
    threshold_note = None
    if model_name in DIFFUSION:
        if min_snr is not None:
            b = getattr(volume.protocol, "b_values", None)
            if "b_values" in options and options["b_values"] is not None:
                b = options["b_values"]
            index = int(np.argmin(np.asarray(b, float))) if b is not None else 0
            mask, noise_sigma, auto_sigma, threshold_note = _snr_mask(
                volume.data, index, "the lowest-b image",
                volume.data if noise_background is not None else volume.data[..., index:index + 1],
                mask=mask, noise_sigma=noise_sigma,
                noise_background=noise_background, min_snr=min_snr)
            if auto_sigma:
                noise_sigma = float(noise_sigma)
        options.setdefault("noise_sigma", noise_sigma)
        if noise_background is not None:
            options.setdefault("noise_background", noise_background)
    start = time.perf_counter()
    result = builder(volume, mask=mask, method=method, names=names, progress=progress, **options)
    seconds = time.perf_counter() - start
    provenance = dict(result.provenance)
    sigma_source = provenance.get("NoiseSigmaSource")
    if sigma_source and noise_background is not None and sigma_source.startswith("estimated from"):
        sigma_source = provenance["NoiseSigmaSource"] = f"estimated from {noise_background_label}"
    given = {k: _describe_option(v) for k, v in (options or {}).items()
             if k not in ("noise_sigma", "noise_background")}
    sidecar = {
        **provenance,
        "Software": "oncomri",
        "SoftwareVersion": __version__,
        "Model": model_name,
        "Method": result.method,
        "Options": given,
        "Sources": [str(Path(s).resolve()) for s in volume.sources],
        "Mask": mask_source,
        "Notes": list(volume.meta.get("notes", [])),
    }
    if threshold_note is not None:
        sidecar["SignalThreshold"] = threshold_note
    return MapResult(fit=result.fit, model=result.model, maps=result.maps, sidecar=sidecar,
                     seconds=seconds, noise_sigma_source=sigma_source)


def _describe_option(value):
    """An option value for a JSON sidecar (arrays, e.g. ROI masks, by their size)."""
    if isinstance(value, np.ndarray):
        if value.dtype == bool:
            return f"mask of {int(value.sum())} voxels"
        return value.tolist() if value.size <= 16 else f"array of shape {list(value.shape)}"
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_describe_option(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _describe_option(v) for k, v in value.items()}
    return str(value)


def read_bval(path) -> np.ndarray:
    """b-values (s/mm²) of an FSL/BIDS ``.bval`` file (numbers separated by blanks)."""
    from ..core.errors import ReadError

    path = Path(path)
    try:
        text = path.read_text()
        values = np.array(text.split(), dtype=np.float64)
    except OSError as exc:
        raise ReadError(f"{path}: cannot read the b-values ({exc.strerror})") from None
    except (ValueError, UnicodeDecodeError):
        raise ReadError(f"{path}: not a bval file (numbers separated by spaces)") from None
    if values.size == 0:
        raise ReadError(f"{path}: holds no b-values; write one per volume, in s/mm²")
    return values


def attach_b_values(volume: Volume, paths: Sequence, *, label: str = "the scan") -> Volume:
    """Give a NIfTI diffusion scan its b-values from the ``.bval`` file next to it.

    A volume that already has a DiffusionProtocol (DICOM, Bruker, PAR readers)
    is returned as is; so is a NIfTI without a ``.bval`` (the model then asks
    for ``b_values``). The number of b-values must equal the number of volumes.
    """
    from ..core import DiffusionProtocol

    if isinstance(volume.protocol, DiffusionProtocol) or len(paths) != 1:
        return volume
    image = Path(paths[0])
    name = image.name
    if not _is_nifti_name(name):
        return volume
    stem = name[:-7] if name.endswith(".nii.gz") else name[:-4]
    bval = image.with_name(stem + ".bval")
    if not bval.is_file():
        return volume
    b = read_bval(bval)
    n = volume.data.shape[-1] if volume.data.ndim == 4 else 1
    if b.size != n:
        raise ProtocolError(f"{bval} lists {b.size} b-values but {image} has {n} volume"
                            f"{'s' if n != 1 else ''}; give one b-value per volume ({label})")
    volume.protocol = DiffusionProtocol(b, source=str(bval))
    return volume
