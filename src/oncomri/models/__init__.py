"""Model/Fit pairs, one module per physics, and the registry ``MODELS``.

``MODELS`` maps the names used by ``oncomri map`` and the study pipeline to
Model classes: ``r2star`` and ``t2star`` (the same model, gradient echo),
``t2`` (spin echo), ``t1`` (variable flip angle) and ``t1_ir`` (inversion
recovery), ``dce``, ``dsc``, ``adc``, ``ivim``, ``dki`` and ``cest``.
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

from .cest import CESTFit, CESTModel
from .dce import DCEFit, DCEModel
from .diffusion import ADCFit, ADCModel, DKIFit, DKIModel, IVIMFit, IVIMModel
from .dsc import DSCFit, DSCModel
from .t1 import IRModel, T1Fit, VFAModel

MODELS = {
    "r2star": R2StarModel,
    "t2star": R2StarModel,
    "t2": T2Model,
    "t1": VFAModel,
    "t1_ir": IRModel,
    "dce": DCEModel,
    "dsc": DSCModel,
    "adc": ADCModel,
    "ivim": IVIMModel,
    "dki": DKIModel,
    "cest": CESTModel,
}

__all__ = [
    "MODELS",
    "Model",
    "Fit",
    "R2StarModel",
    "T2StarFit",
    "T2Model",
    "T2Fit",
    "VFAModel",
    "IRModel",
    "T1Fit",
    "DCEModel",
    "DCEFit",
    "DSCModel",
    "DSCFit",
    "ADCModel",
    "ADCFit",
    "IVIMModel",
    "IVIMFit",
    "DKIModel",
    "DKIFit",
    "CESTModel",
    "CESTFit",
    "mono_exponential",
    "rician_mono_exponential",
    "rician_mean",
    "estimate_noise_sigma",
]
