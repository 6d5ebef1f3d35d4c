"""Digital phantoms and synthetic data with known truth."""

from .evaluate import AccuracyRow, accuracy_by_value
from .phantoms import (
    DEFAULT_T2STAR_VALUES_S,
    RelaxometryPhantom,
    add_rician_noise,
    decay_series,
    relaxometry_phantom,
)

__all__ = [
    "AccuracyRow",
    "accuracy_by_value",
    "add_rician_noise",
    "decay_series",
    "RelaxometryPhantom",
    "relaxometry_phantom",
    "DEFAULT_T2STAR_VALUES_S",
]
