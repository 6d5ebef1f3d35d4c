"""Per-voxel fit status codes, stored as uint8 in every Fit and status map."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["Status", "STATUS_DESCRIPTIONS"]


class Status(IntEnum):
    """Why a voxel has the value it has."""

    OK = 0
    NOT_CONVERGED = 1
    AT_BOUND = 2
    MASKED = 3
    INVALID_DATA = 4
    FAILED = 5


#: Human-readable meaning of each code (written to status-map sidecars).
STATUS_DESCRIPTIONS = {
    int(Status.OK): "fitted and converged",
    int(Status.NOT_CONVERGED): "iteration limit reached before convergence (values kept)",
    int(Status.AT_BOUND): "a parameter ended on its bound (values kept)",
    int(Status.MASKED): "outside the mask, not fitted",
    int(Status.INVALID_DATA): "NaN, Inf or negative samples, not fitted",
    int(Status.FAILED): "fit failed (degenerate data), values are NaN",
}
