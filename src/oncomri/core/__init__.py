"""Core types: units, acquisition protocols, ``Volume`` and the errors (numpy only)."""

from .checks import finite_float, positive_float
from .errors import (
    GeometryError,
    MissingDependencyError,
    NoiseEstimateError,
    OncomriError,
    ProtocolError,
    ReadError,
    ValidationError,
)
from .protocols import (
    DiffusionProtocol,
    DynamicProtocol,
    CESTProtocol,
    DCEProtocol,
    InversionRecoveryProtocol,
    MultiEchoProtocol,
    VariableFlipAngleProtocol,
)
from .units import TIME_UNITS, UNIT_LABELS, check_echo_times_plausible, to_seconds
from .volume import Volume, same_grid

__all__ = [
    "finite_float",
    "positive_float",
    "OncomriError",
    "ValidationError",
    "ProtocolError",
    "GeometryError",
    "NoiseEstimateError",
    "ReadError",
    "MissingDependencyError",
    "MultiEchoProtocol",
    "DiffusionProtocol",
    "VariableFlipAngleProtocol",
    "InversionRecoveryProtocol",
    "DynamicProtocol",
    "CESTProtocol",
    "DCEProtocol",
    "Volume",
    "same_grid",
    "TIME_UNITS",
    "UNIT_LABELS",
    "to_seconds",
    "check_echo_times_plausible",
]
