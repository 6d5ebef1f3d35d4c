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
    "CESTProtocol",
    "PROTON_HZ_PER_PPM_PER_T",
    "DCEProtocol",
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


#: 1H gyromagnetic ratio over 2π in Hz per tesla per ppm (42.577 478 MHz/T × 10⁻⁶,
#: CODATA 2018 shielded-proton value rounded; water protons differ by < 30 ppm of it).
PROTON_HZ_PER_PPM_PER_T = 42.577478518


def _optional_positive(value, *, name: str, source: str, unit: str, upper: float, hint: str):
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ProtocolError(f"{source}: {name} must be a number in {unit}, got {value!r}") from None
    if not (np.isfinite(v) and v > 0):
        raise ProtocolError(f"{source}: {name} must be a positive number in {unit}, got {value!r}")
    if v > upper:
        raise ProtocolError(f"{source}: {name} {v:g} {unit} is implausible; {hint}")
    return v


@dataclass(frozen=True, eq=False)
class CESTProtocol:
    """A CEST series: one saturation offset per measurement, and which are M0.

    Parameters
    ----------
    offsets : array_like
        Saturation frequency offsets in ppm relative to water, one per
        measurement, in acquisition order (any order, repeats allowed). The
        offset recorded for an M0 (unsaturated) measurement is not used.
    m0_index : int, sequence of int or None
        0-based index (or indices, averaged) of the unsaturated M0
        measurement(s). ``None`` detects them: every offset with
        ``|offset| >= m0_threshold_ppm`` (scanners store M0 as an offset
        far off resonance, e.g. -300 ppm or 1000 ppm).
    magnetic_field_strength : float, optional
        B0 in tesla; needed to convert B0 shifts between ppm and Hz.
    saturation_b1 : float, optional
        Saturation amplitude (B1, mean or CW-equivalent) in µT, for the record.
    saturation_duration : float, optional
        Total saturation time in s, for the record.
    m0_threshold_ppm : float
        Offsets at least this far from water count as M0 when ``m0_index``
        is None (default 100 ppm).
    source : str
        Where the offsets came from, used in error messages.

    Raises
    ------
    ProtocolError
        No M0 measurement (none given and no offset beyond the threshold),
        M0 indices out of range, fewer than three distinct saturated offsets,
        offsets that are not finite, or implausible field, B1 or duration
        (e.g. B1 in tesla, duration in ms).
    """

    offsets: np.ndarray
    m0_index: object = None
    magnetic_field_strength: float | None = None
    saturation_b1: float | None = None
    saturation_duration: float | None = None
    m0_threshold_ppm: float = 100.0
    source: str = "offsets"

    def __post_init__(self):
        src = self.source
        off = np.array(self.offsets, dtype=np.float64, copy=True).reshape(-1)
        if off.size == 0:
            raise ProtocolError(f"{src}: no CEST offsets given; pass one offset in ppm per measurement")
        if not np.all(np.isfinite(off)):
            raise ProtocolError(f"{src}: CEST offsets must be finite numbers in ppm, got {off.tolist()}")
        thr = float(self.m0_threshold_ppm)
        if not (np.isfinite(thr) and thr > 0):
            raise ProtocolError(f"{src}: m0_threshold_ppm must be positive, got {self.m0_threshold_ppm!r}")
        if self.m0_index is None:
            m0 = tuple(int(i) for i in np.flatnonzero(np.abs(off) >= thr))
            if not m0:
                shown = ", ".join(f"{v:g}" for v in off[:6]) + (", ..." if off.size > 6 else "")
                raise ProtocolError(
                    f"{src}: the CEST offsets ({shown} ppm) include no M0 (unsaturated) "
                    f"measurement; give its index (m0_index, CLI --m0-index) or acquire one "
                    f"far off resonance (|offset| >= {thr:g} ppm, e.g. -300 ppm)")
        else:
            raw = np.atleast_1d(np.asarray(self.m0_index))
            if (raw.size == 0 or raw.dtype.kind not in "iuf"
                    or not np.all(np.isfinite(raw)) or not np.all(np.mod(raw, 1) == 0)):
                raise ProtocolError(f"{src}: m0_index must be one or more integer indices, got {self.m0_index!r}")
            m0 = tuple(sorted({int(i) for i in raw}))
            if min(m0) < 0 or max(m0) >= off.size:
                raise ProtocolError(
                    f"{src}: m0_index {list(m0)} is outside the {off.size} measurements "
                    f"(indices count from 0)")
        sat = np.setdiff1d(np.arange(off.size), np.asarray(m0, dtype=int))
        n_distinct = np.unique(off[sat]).size
        if n_distinct < 3:
            hint = (" the offsets look like Hz; give them in ppm" if np.max(np.abs(off)) > thr
                    else " acquire more offsets")
            raise ProtocolError(
                f"{src}: {n_distinct} distinct saturated offsets ({off[sat].tolist()} ppm) cannot "
                f"make a Z-spectrum; need at least three;{hint}")
        off.flags.writeable = False
        sat.flags.writeable = False
        object.__setattr__(self, "offsets", off)
        object.__setattr__(self, "m0_index", m0)
        object.__setattr__(self, "_saturated", sat)
        object.__setattr__(self, "m0_threshold_ppm", thr)
        object.__setattr__(self, "magnetic_field_strength", _optional_positive(
            self.magnetic_field_strength, name="magnetic field strength", source=src, unit="T",
            upper=30.0, hint="give it in tesla"))
        object.__setattr__(self, "saturation_b1", _optional_positive(
            self.saturation_b1, name="saturation B1", source=src, unit="µT", upper=100.0,
            hint="give it in µT"))
        if self.saturation_b1 is not None and self.saturation_b1 < 1e-3:
            raise ProtocolError(f"{src}: saturation B1 {self.saturation_b1:g} µT looks like tesla; give µT")
        object.__setattr__(self, "saturation_duration", _optional_positive(
            self.saturation_duration, name="saturation duration", source=src, unit="s",
            upper=60.0, hint="it looks like milliseconds; give seconds"))

    @property
    def n_measurements(self) -> int:
        """Number of measurements on the data's last axis (M0 included)."""
        return int(self.offsets.size)

    @property
    def m0_indices(self) -> tuple:
        """0-based indices of the M0 (unsaturated) measurements."""
        return self.m0_index

    @property
    def saturated_indices(self) -> np.ndarray:
        """0-based indices of the saturated measurements, in acquisition order."""
        return self._saturated

    @property
    def saturated_offsets(self) -> np.ndarray:
        """Offsets of the saturated measurements in ppm, in acquisition order."""
        return self.offsets[self._saturated]

    @property
    def hz_per_ppm(self) -> float | None:
        """Hz per ppm of the water resonance at this field, or None without a field."""
        b0 = self.magnetic_field_strength
        return None if b0 is None else PROTON_HZ_PER_PPM_PER_T * b0

    def __eq__(self, other):
        return (isinstance(other, CESTProtocol)
                and np.array_equal(self.offsets, other.offsets)
                and self.m0_index == other.m0_index
                and self.magnetic_field_strength == other.magnetic_field_strength
                and self.saturation_b1 == other.saturation_b1
                and self.saturation_duration == other.saturation_duration)

    def __hash__(self):
        return hash((self.offsets.tobytes(), self.m0_index, self.magnetic_field_strength))


@dataclass(frozen=True, eq=False)
class DCEProtocol:
    """A dynamic contrast-enhanced spoiled gradient-echo series (T1-weighted).

    Parameters
    ----------
    times : array_like
        Frame times in seconds (strictly increasing), e.g. from the first frame.
    flip_angle : float
        Flip angle in radians (convert degrees at the edge with np.deg2rad).
    repetition_time : float
        TR of the spoiled gradient echo in s.
    baseline_frames : int
        Number of pre-contrast frames at the start (>= 1).
    magnetic_field_strength : float, optional
        B0 in tesla (picks the relaxivity from the table).
    source : str
        Where the values came from, used in error messages.
    """

    times: np.ndarray
    flip_angle: float
    repetition_time: float
    baseline_frames: int = 1
    magnetic_field_strength: float | None = None
    source: str = "DCE protocol"

    def __post_init__(self):
        src = self.source
        t = np.array(self.times, dtype=np.float64, copy=True).reshape(-1)
        if t.size < 3 or not np.all(np.isfinite(t)):
            raise ProtocolError(f"{src}: need at least three finite frame times in seconds, "
                                f"got {t[:6].tolist()}")
        d = np.diff(t)
        if np.any(d <= 0):
            i = int(np.flatnonzero(d <= 0)[0])
            raise ProtocolError(
                f"{src}: frame times must increase (frame {i + 1} at {t[i + 1]:g} s follows "
                f"{t[i]:g} s); order the dynamics by acquisition time")
        t.flags.writeable = False
        object.__setattr__(self, "times", t)
        fa = float(self.flip_angle)
        if not (np.isfinite(fa) and 0 < fa <= np.pi / 2):
            hint = "it looks like degrees; give radians (np.deg2rad)" if fa > np.pi / 2 else \
                "give the flip angle in radians, > 0"
            raise ProtocolError(f"{src}: flip angle {self.flip_angle!r} rad is not a spoiled "
                                f"gradient-echo flip angle; {hint}")
        object.__setattr__(self, "flip_angle", fa)
        tr = float(self.repetition_time)
        if not (np.isfinite(tr) and 0 < tr < 1.0):
            hint = " (it looks like milliseconds; give seconds)" if tr >= 1.0 else ""
            raise ProtocolError(f"{src}: repetition time {self.repetition_time!r} s is not "
                                f"plausible for a spoiled gradient echo{hint}")
        object.__setattr__(self, "repetition_time", tr)
        nb = self.baseline_frames
        if isinstance(nb, bool) or int(nb) != nb or not 1 <= int(nb) < t.size:
            raise ProtocolError(f"{src}: baseline_frames={nb!r} must be a whole number from 1 "
                                f"to {t.size - 1} (frames before the contrast arrives)")
        object.__setattr__(self, "baseline_frames", int(nb))
        b0 = self.magnetic_field_strength
        if b0 is not None:
            b0 = float(b0)
            if not (np.isfinite(b0) and 0 < b0 <= 30):
                raise ProtocolError(f"{src}: field strength {self.magnetic_field_strength!r} T "
                                    "is not plausible; give tesla (e.g. 3 or 9.4)")
            object.__setattr__(self, "magnetic_field_strength", b0)

    @property
    def n_measurements(self) -> int:
        return int(self.times.size)

    def __eq__(self, other):
        return (isinstance(other, DCEProtocol) and np.array_equal(self.times, other.times)
                and self.flip_angle == other.flip_angle
                and self.repetition_time == other.repetition_time
                and self.baseline_frames == other.baseline_frames
                and self.magnetic_field_strength == other.magnetic_field_strength)

    def __hash__(self):
        return hash((self.times.tobytes(), self.flip_angle, self.repetition_time,
                     self.baseline_frames))
