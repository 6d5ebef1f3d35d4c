"""Units: SI inside, conversions at the edges.

oncomri stores times in seconds, rates in s⁻¹ and field strengths in tesla.
Scanner formats differ (DICOM ``EchoTime`` is in ms, BIDS ``EchoTime`` is in s),
so readers convert with :func:`to_seconds` and check plausibility with
:func:`check_echo_times_plausible`, which catches the most common unit slip
in relaxometry: milliseconds passed where seconds are expected or the reverse.
"""

from __future__ import annotations

import re

import numpy as np

from .errors import ProtocolError

__all__ = [
    "TIME_UNITS",
    "UNIT_LABELS",
    "to_seconds",
    "parse_echo_times",
    "check_echo_times_plausible",
    "MAX_PLAUSIBLE_ECHO_TIME_S",
    "MIN_PLAUSIBLE_LAST_ECHO_TIME_S",
]

#: Factors that convert a time in the named unit to seconds.
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}

#: Unit strings written to sidecars for each quantity (UCUM where one exists).
UNIT_LABELS = {
    "time": "s",
    "rate": "1/s",
    "signal": "a.u.",
    "fraction": "1",
}

#: Longest echo time we accept as seconds. Multi-echo spin-echo trains for T2
#: rarely exceed ~0.5 s; a value above 1 s is almost surely in milliseconds.
MAX_PLAUSIBLE_ECHO_TIME_S = 1.0

#: The last echo of any multi-echo series is later than 50 µs; a last echo
#: earlier than that means seconds were passed where milliseconds were expected.
MIN_PLAUSIBLE_LAST_ECHO_TIME_S = 50e-6


def to_seconds(values, unit: str, *, name: str = "echo times") -> np.ndarray:
    """Convert times in ``unit`` (``'s'``, ``'ms'`` or ``'us'``) to seconds.

    Parameters
    ----------
    values : array_like
        Times in ``unit``.
    unit : str
        One of :data:`TIME_UNITS`.
    name : str
        What the values are, used in error messages.

    Returns
    -------
    ndarray of float64, seconds.
    """
    try:
        factor = TIME_UNITS[unit]
    except KeyError:
        raise ProtocolError(
            f"{name}: unknown time unit {unit!r}; use one of {', '.join(TIME_UNITS)}"
        ) from None
    return np.asarray(values, dtype=np.float64) * factor


def check_echo_times_plausible(echo_times_s, *, source: str = "echo times") -> None:
    """Raise :class:`ProtocolError` if echo times in seconds look like another unit.

    Parameters
    ----------
    echo_times_s : array_like
        Echo times that are claimed to be in seconds.
    source : str
        Where they came from (a file or field name), for the message.
    """
    te = np.asarray(echo_times_s, dtype=np.float64)
    if te.size == 0:
        return
    if np.nanmax(te) > MAX_PLAUSIBLE_ECHO_TIME_S:
        raise ProtocolError(
            f"{source}: echo times up to {np.nanmax(te):g} s look like milliseconds; "
            "give them in seconds (BIDS) or state the unit as ms"
        )
    if np.nanmax(te) < MIN_PLAUSIBLE_LAST_ECHO_TIME_S:
        raise ProtocolError(
            f"{source}: echo times up to {np.nanmax(te) * 1e3:g} ms look like seconds "
            "given as milliseconds; state the unit as s"
        )


def parse_echo_times(text: str, *, name: str = "--echo-times") -> tuple[list[float], str]:
    """Parse echo times written with their unit, ``'4.6,9.2,13.8ms'`` -> ``([4.6, 9.2, 13.8], 'ms')``.

    The unit suffix is required (``s``, ``ms`` or ``us``) so that a value can
    never be taken in the wrong unit; convert with :func:`to_seconds`.
    ``name`` is the option or field the text came from, for the error message.
    """
    m = re.fullmatch(r"\s*(.*?)\s*(ms|us|s)\s*", text or "")
    if not m or not m.group(1):
        raise ProtocolError(
            f"{name} {text!r}: give the values with a unit, "
            "e.g. '4.6,9.2,13.8ms' or '0.0046,0.0092,0.0138s'"
        )
    parts = [p for p in re.split(r"[,\s]+", m.group(1).replace(m.group(2), " ")) if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ProtocolError(f"{name} {text!r}: not a comma-separated list of numbers") from None
    return values, m.group(2)
