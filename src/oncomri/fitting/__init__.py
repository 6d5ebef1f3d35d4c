"""Vectorised solvers over (n_voxels, n_measurements) arrays.

- :func:`exponential_loglinear`, :func:`exponential_arlo`: closed-form fits;
- :func:`levenberg_marquardt`: batched, bounded LM with analytic Jacobians (numba);
- :func:`fit_voxelwise`: chunked execution with bounded memory;
- :class:`Status`: per-voxel status codes.
"""

from .linear import exponential_arlo, exponential_loglinear
from .lm import compile_solver, levenberg_marquardt
from .special import bessel_i0e, bessel_i1e, rician_mean
from .status import STATUS_DESCRIPTIONS, Status
from .voxelwise import DEFAULT_CHUNK_SIZE, as_mask, fit_voxelwise

__all__ = [
    "exponential_loglinear",
    "exponential_arlo",
    "levenberg_marquardt",
    "compile_solver",
    "fit_voxelwise",
    "as_mask",
    "DEFAULT_CHUNK_SIZE",
    "Status",
    "STATUS_DESCRIPTIONS",
    "bessel_i0e",
    "bessel_i1e",
    "rician_mean",
]
