"""Model/Fit pairs, one module per physics, and the registry ``MODELS``.

``MODELS`` maps the names used by the CLI and the study pipeline to Model
classes: ``r2star`` and ``t2star`` (the same model, gradient echo), ``t2``
(spin echo).
"""

from .base import Fit, Model
from .noise import estimate_noise_sigma, rician_mean
from .relaxometry import (
    R2StarModel,
    T2Fit,
    T2Model,
    T2StarFit,
    mono_exponential,
    rician_mono_exponential,
)

MODELS = {
    "r2star": R2StarModel,
    "t2star": R2StarModel,
    "t2": T2Model,
}

__all__ = [
    "MODELS",
    "Model",
    "Fit",
    "R2StarModel",
    "T2StarFit",
    "T2Model",
    "T2Fit",
    "mono_exponential",
    "rician_mono_exponential",
    "rician_mean",
    "estimate_noise_sigma",
]
