"""Acquisition protocols: the parameters a model needs, in SI units.

A protocol describes *how* the measurements along the last axis of a data
array were acquired. It is validated once, eagerly, with messages that name
the field and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ProtocolError
from .units import check_echo_times_plausible

__all__ = ["MultiEchoProtocol"]


@dataclass(frozen=True, eq=False)
class MultiEchoProtocol:
    """A multi-echo acquisition (gradient echo for T2*, spin echo for T2).

    Parameters
    ----------
    echo_times : array_like
        Echo times in seconds, strictly increasing, at least two.
    magnetic_field_strength : float, optional
        B0 in tesla.
    source : str
        Where the echo times came from, used in error messages.

    Raises
    ------
    ProtocolError
        If the echo times are missing, not finite, non-positive, duplicated,
        not increasing, fewer than two, or look like milliseconds.
    """

    echo_times: np.ndarray
    magnetic_field_strength: float | None = None
    source: str = "echo_times"

    def __post_init__(self):
        te = np.array(self.echo_times, dtype=np.float64, copy=True).reshape(-1)
        src = self.source
        if te.size == 0:
            raise ProtocolError(f"{src}: no echo times given; pass one per echo, in seconds")
        if te.size < 2:
            raise ProtocolError(
                f"{src}: a single echo ({te[0]:g} s) cannot define a decay; "
                "pass at least two echoes"
            )
        if not np.all(np.isfinite(te)):
            raise ProtocolError(f"{src}: echo times must be finite numbers, got {te.tolist()}")
        if np.any(te < 0):
            raise ProtocolError(f"{src}: echo times must not be negative, got {te.tolist()}")
        d = np.diff(te)
        if np.any(d == 0):
            dup = te[1:][d == 0][0]
            raise ProtocolError(
                f"{src}: echo time {dup:g} s appears twice; each echo needs its own time"
            )
        if np.any(d < 0):
            raise ProtocolError(
                f"{src}: echo times must increase (got {te.tolist()}); "
                "order the echoes by echo time"
            )
        check_echo_times_plausible(te, source=src)
        te.flags.writeable = False
        object.__setattr__(self, "echo_times", te)

    @property
    def n_echoes(self) -> int:
        """Number of echoes."""
        return int(self.echo_times.size)

    @property
    def echo_spacing(self) -> float | None:
        """The echo spacing in seconds if the echoes are evenly spaced, else None."""
        d = np.diff(self.echo_times)
        if np.allclose(d, d[0], rtol=1e-3, atol=1e-7):
            return float(d.mean())
        return None

    @property
    def evenly_spaced(self) -> bool:
        """True if the echo times are evenly spaced (within 0.1 %)."""
        return self.echo_spacing is not None

    def drop_echoes(self, n_first: int) -> "MultiEchoProtocol":
        """The same protocol without its first ``n_first`` echoes."""
        return MultiEchoProtocol(
            self.echo_times[n_first:],
            magnetic_field_strength=self.magnetic_field_strength,
            source=self.source,
        )

    def __eq__(self, other):
        return (
            isinstance(other, MultiEchoProtocol)
            and np.array_equal(self.echo_times, other.echo_times)
            and self.magnetic_field_strength == other.magnetic_field_strength
        )

    def __hash__(self):
        return hash((self.echo_times.tobytes(), self.magnetic_field_strength))
