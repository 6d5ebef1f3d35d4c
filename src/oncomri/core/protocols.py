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

__all__ = [
    "MultiEchoProtocol",
    "DiffusionProtocol",
    "VariableFlipAngleProtocol",
    "InversionRecoveryProtocol",
    "DynamicProtocol",
]


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
    def n_measurements(self) -> int:
        """Number of measurements on the data's last axis (= echoes)."""
        return self.n_echoes

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


def _strictly_increasing(values, *, name: str, source: str, unit: str, minimum: float = 0.0,
                         allow_equal: bool = False) -> np.ndarray:
    v = np.array(values, dtype=np.float64, copy=True).reshape(-1)
    if v.size < 2:
        raise ProtocolError(f"{source}: {name} needs at least two values, got {v.tolist()}")
    if not np.all(np.isfinite(v)):
        raise ProtocolError(f"{source}: {name} must be finite numbers ({unit}), got {v.tolist()}")
    if np.any(v < minimum):
        raise ProtocolError(f"{source}: {name} must be >= {minimum:g} {unit}, got {v.tolist()}")
    if not allow_equal and np.any(np.diff(v) <= 0):
        raise ProtocolError(f"{source}: {name} must increase (got {v.tolist()} {unit})")
    v.flags.writeable = False
    return v


@dataclass(frozen=True, eq=False)
class DiffusionProtocol:
    """A diffusion-weighted series: one b-value (and direction) per measurement.

    Parameters
    ----------
    b_values : array_like
        b-values in s/mm² (the unit every scanner and paper uses; 1 s/mm² =
        10⁶ s/m²), one per measurement, not necessarily sorted (repeated b=0
        and several directions per shell are normal).
    b_vectors : array_like (n, 3), optional
        Unit gradient directions in the image's RAS+ frame (zeros for b = 0).
    """

    b_values: np.ndarray
    b_vectors: np.ndarray | None = None
    source: str = "b_values"

    def __post_init__(self):
        b = np.array(self.b_values, dtype=np.float64, copy=True).reshape(-1)
        if b.size < 2 or not np.all(np.isfinite(b)) or np.any(b < 0):
            raise ProtocolError(
                f"{self.source}: need at least two finite, non-negative b-values in s/mm², "
                f"got {b.tolist()}")
        if b.max() < 5.0 and b.max() > 0:
            raise ProtocolError(
                f"{self.source}: b-values up to {b.max():g} look like mm²/ms or s/µm²; "
                "give them in s/mm²")
        b.flags.writeable = False
        object.__setattr__(self, "b_values", b)
        if self.b_vectors is not None:
            g = np.array(self.b_vectors, dtype=np.float64, copy=True)
            if g.shape != (b.size, 3):
                raise ProtocolError(f"{self.source}: b_vectors must have shape ({b.size}, 3), got {g.shape}")
            g.flags.writeable = False
            object.__setattr__(self, "b_vectors", g)

    @property
    def n_measurements(self) -> int:
        return int(self.b_values.size)


@dataclass(frozen=True, eq=False)
class VariableFlipAngleProtocol:
    """A spoiled gradient-echo series at several flip angles (T1 by VFA).

    Parameters
    ----------
    flip_angles : array_like
        Flip angles in radians (convert degrees at the edge with np.deg2rad).
    repetition_time : float
        TR in s.
    """

    flip_angles: np.ndarray
    repetition_time: float
    source: str = "flip_angles"

    def __post_init__(self):
        fa = _strictly_increasing(self.flip_angles, name="flip angles", source=self.source,
                                  unit="rad")
        if fa.max() > np.pi:
            raise ProtocolError(
                f"{self.source}: flip angles up to {fa.max():g} look like degrees; give radians")
        object.__setattr__(self, "flip_angles", fa)
        if not (np.isfinite(self.repetition_time) and 0 < self.repetition_time < 20):
            raise ProtocolError(f"{self.source}: repetition time {self.repetition_time!r} s is not plausible")

    @property
    def n_measurements(self) -> int:
        return int(self.flip_angles.size)


@dataclass(frozen=True, eq=False)
class InversionRecoveryProtocol:
    """An inversion-recovery series (T1 by IR): inversion times in s, TR in s (optional)."""

    inversion_times: np.ndarray
    repetition_time: float | None = None
    source: str = "inversion_times"

    def __post_init__(self):
        object.__setattr__(self, "inversion_times", _strictly_increasing(
            self.inversion_times, name="inversion times", source=self.source, unit="s"))

    @property
    def n_measurements(self) -> int:
        return int(self.inversion_times.size)


@dataclass(frozen=True, eq=False)
class DynamicProtocol:
    """A dynamic series (DCE, DSC, CEST offsets aside): acquisition times in s from the first frame."""

    times: np.ndarray
    source: str = "times"

    def __post_init__(self):
        object.__setattr__(self, "times", _strictly_increasing(
            self.times, name="frame times", source=self.source, unit="s"))

    @property
    def n_measurements(self) -> int:
        return int(self.times.size)
