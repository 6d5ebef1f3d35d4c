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

__all__ = ["METHOD_REFERENCES", "MapResult", "load_scan", "fit_map"]

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


def fit_map(volume: Volume, model_name: str, *, method: str | None = None, mask=None,
            noise_sigma="auto", noise_background=None, drop_first_echo: bool = False,
            progress: Callable | None = None, mask_source: str | None = None,
            noise_background_label: str = "the noise mask",
            min_snr: float | None = None) -> MapResult:
    """Fit ``oncomri.models.MODELS[model_name]`` to ``volume`` and describe how.

    The fit itself is the Model's (see :mod:`oncomri.models.relaxometry` for
    the methods and their references); this adds the provenance sidecar:
    model, method and its reference (:data:`METHOD_REFERENCES`), echo times
    (s) and echoes used, rate bounds (1/s), noise sigma (signal units) and
    its source, the source files, the mask and the software version.
    ``mask_source`` and ``noise_background_label`` name the mask and the noise
    region where they came from (a file, an option, an ROI) for the sidecar.

    ``min_snr`` skips background: voxels whose first fitted echo is below
    ``min_snr`` times the noise sigma (given, or estimated as the model
    would) are not fitted (status MASKED, NaN maps). In magnitude images
    pure noise exceeds 3 sigma with probability exp(-4.5) ~ 1 % (Rayleigh
    distribution; Gudbjartsson & Patz, MRM 1995;34:910), so ``min_snr=3``
    removes air while keeping tissue whose later echoes sit in the noise
    floor, which the noise-aware fit handles. Fitting air is the slow part
    of a whole-volume noise-aware fit (it rarely converges).
    """
    from ..models import MODELS

    if model_name not in MODELS:
        raise ValidationError(f"model {model_name!r}: not one of {', '.join(sorted(MODELS))}")
    if drop_first_echo and model_name != "t2":
        raise ProtocolError("--drop-first-echo applies to the t2 model only")
    options = {"drop_first_echo": True} if drop_first_echo else {}
    model = MODELS[model_name](volume.protocol, method=method, **options)
    start = time.perf_counter()
    threshold_note = None
    if min_snr is not None:
        from ..core.checks import positive_float
        from ..models import estimate_noise_sigma

        min_snr = positive_float("min_snr", min_snr)
        if isinstance(noise_sigma, str) and noise_sigma == "auto":
            noise_sigma = estimate_noise_sigma(volume.data, background=noise_background)
            auto_sigma = True
        else:
            auto_sigma = False
        first = np.asarray(volume.data[..., model.first_echo], dtype=np.float64)
        signal = first >= min_snr * np.asarray(noise_sigma, dtype=np.float64)
        mask = signal if mask is None else (np.asarray(mask, bool) & signal)
        threshold_note = f"voxels with echo {model.first_echo + 1} below {min_snr:g} x noise sigma not fitted"
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
