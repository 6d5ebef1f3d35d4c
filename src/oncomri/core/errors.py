"""The exception hierarchy of oncomri.

Every error raised on bad input is a subclass of :class:`OncomriError`, and
also of the built-in exception it resembles (``ValueError`` for bad values,
``OSError`` for unreadable files), so callers can catch either. Messages name
the offending input (file, field or argument) and say how to fix it; the CLI
prints them as one line and exits with status 2.
"""

from __future__ import annotations

__all__ = [
    "OncomriError",
    "ValidationError",
    "ProtocolError",
    "GeometryError",
    "NoiseEstimateError",
    "ReadError",
    "MissingDependencyError",
]


class OncomriError(Exception):
    """Base class of every error oncomri raises on purpose."""


class ValidationError(OncomriError, ValueError):
    """An argument or a data array is invalid (wrong shape, type or value)."""


class ProtocolError(ValidationError):
    """Acquisition parameters are missing, inconsistent or in the wrong unit."""


class GeometryError(ValidationError):
    """Images that must share a grid (shape and affine) do not."""


class NoiseEstimateError(ValidationError):
    """The noise level could not be estimated from the data."""


class ReadError(OncomriError, OSError):
    """A file is missing, unreadable, truncated or not in the expected format."""


class MissingDependencyError(OncomriError, ImportError):
    """An optional dependency needed for this feature is not installed."""
