"""The design of a study: arms, timepoints, subjects and the sessions that exist.

:class:`StudyDesign` is the plain, picklable description shared by the spec
(:func:`oncomri.study.spec.load_spec` builds it with ``spec.design()``), the
database (which stores it) and the analyses and report (which group by it).
It holds no paths and reads no files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["Arm", "Timepoint", "Subject", "StudyDesign"]


@dataclass(frozen=True)
class Arm:
    """One treatment arm (group) of the study."""

    name: str
    description: str = ""


@dataclass(frozen=True)
class Timepoint:
    """One imaging timepoint, ``time_s`` seconds after treatment (negative: before)."""

    name: str
    time_s: float


@dataclass(frozen=True)
class Subject:
    """One subject, its arm and its subject-level covariates (JSON-able values)."""

    id: str
    arm: str
    covariates: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StudyDesign:
    """Arms, timepoints (ordered by time), subjects and existing sessions.

    Attributes
    ----------
    name : str
        Study name.
    arms : tuple of Arm
        In the order of the spec.
    timepoints : tuple of Timepoint
        Ordered by ``time_s``.
    baseline : str
        Name of the baseline timepoint (changes are computed from it).
    subjects : tuple of Subject
        In the order of the spec.
    sessions : tuple of (subject id, timepoint name)
        The sessions that exist (a subject's ``missing`` sessions excluded),
        subjects in spec order, timepoints in time order.
    description : str
        Free text from the spec.
    """

    name: str
    arms: tuple[Arm, ...]
    timepoints: tuple[Timepoint, ...]
    baseline: str
    subjects: tuple[Subject, ...]
    sessions: tuple[tuple[str, str], ...]
    description: str = ""

    @property
    def arm_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.arms)

    @property
    def timepoint_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.timepoints)

    def arm_of(self, subject: str) -> str:
        """The arm of ``subject`` (KeyError if it is not in the study)."""
        for s in self.subjects:
            if s.id == subject:
                return s.arm
        raise KeyError(subject)

    def time_of(self, timepoint: str) -> float:
        """Time after treatment of ``timepoint``, in seconds (KeyError if unknown)."""
        for t in self.timepoints:
            if t.name == timepoint:
                return t.time_s
        raise KeyError(timepoint)
