"""Eager validation of scalar arguments, with one-line messages naming the argument."""

from __future__ import annotations

import math

from .errors import ValidationError

__all__ = ["finite_float", "positive_float"]


def finite_float(name: str, value) -> float:
    """``value`` as a finite float, or ValidationError naming ``name``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValidationError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValidationError(f"{name} must be finite, got {v}")
    return v


def positive_float(name: str, value, unit: str = "") -> float:
    """``value`` as a finite float > 0 (in ``unit``, named in the message)."""
    v = finite_float(name, value)
    if v <= 0:
        raise ValidationError(f"{name} must be > 0{' ' + unit if unit else ''}, got {v:g}")
    return v
