"""Chunked, bounded-memory execution of a voxelwise fit over an image.

:func:`fit_voxelwise` walks the voxels of a (..., n_meas) array in chunks:
each chunk is copied to float64 (n_chunk, n_meas), screened for invalid
samples, handed to a row-wise fitting function, and its results written into
preallocated output maps. Peak memory is therefore the input, the output
maps and one chunk, whatever the size of the series.
"""

from __future__ import annotations

from collections.abc import Callable

import math

import numba
import numpy as np

from ..core.errors import GeometryError, ValidationError
from .status import Status

__all__ = ["fit_voxelwise", "DEFAULT_CHUNK_SIZE", "as_mask", "screen_rows"]

_OK = np.uint8(Status.OK)


@numba.njit(parallel=True, cache=True)
def _screen_kernel(rows, out):
    n, m = rows.shape
    for i in numba.prange(n):
        code = Status.FAILED.value  # no signal at all
        for j in range(m):
            v = rows[i, j]
            if not (v >= 0.0) or not math.isfinite(v):
                code = Status.INVALID_DATA.value
                break
            if v > 0.0:
                code = Status.OK.value if code != Status.INVALID_DATA.value else code
        out[i] = code


def screen_rows(rows) -> np.ndarray:
    """Status code per row: OK, INVALID_DATA (NaN/Inf/negative) or FAILED (all zero)."""
    out = np.empty(rows.shape[0], np.uint8)
    if rows.shape[0]:
        _screen_kernel(rows, out)
    return out

#: Voxels per chunk: 32768 x 16 echoes x 8 bytes = 4 MiB of float64 per copy.
DEFAULT_CHUNK_SIZE = 32768


def as_mask(mask, spatial_shape, *, name: str = "mask") -> np.ndarray | None:
    """Validate a mask against the spatial shape of the data; return it as bool."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != tuple(spatial_shape):
        raise GeometryError(
            f"{name} has shape {mask.shape} but the data's spatial shape is "
            f"{tuple(spatial_shape)}; resample the mask onto the data grid"
        )
    if mask.dtype != bool:
        if not np.all(np.isfinite(mask)):
            raise ValidationError(f"{name} contains NaN or Inf; a mask holds 0/1 values")
        mask = mask != 0
    return mask


def fit_voxelwise(data, func: Callable, *, outputs: dict, mask=None, aux=None,
                  measurements=None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                  progress: Callable | None = None):
    """Apply a row-wise fit to every (masked, valid) voxel of ``data``.

    Parameters
    ----------
    data : ndarray (..., n_meas)
        Never modified.
    func : callable
        ``func(rows, aux_rows) -> dict`` where ``rows`` is float64 (n, n_meas)
        of valid voxels (finite, non-negative, some signal), ``aux_rows`` the
        matching values of each ``aux`` map, and the dict maps output names
        to (n,) arrays, including ``"status"``.
    outputs : dict
        Output name -> dtype of its map. Float maps start as NaN; ``"status"``
        (uint8) starts as :attr:`Status.MASKED`.
    mask : bool ndarray of data.shape[:-1], optional
    aux : dict of name -> ndarray of data.shape[:-1], optional
        Per-voxel side inputs (e.g. a noise-sigma map), sliced like the data.
    measurements : slice or index array, optional
        Use only these measurements (e.g. drop the first echo) without
        copying the whole series.
    chunk_size : int
    progress : callable, optional
        ``progress(n_done, n_total)`` after each chunk.

    Returns
    -------
    dict of output name -> ndarray of shape data.shape[:-1]
    """
    data = np.asanyarray(data)
    spatial = data.shape[:-1]
    m = data.shape[-1]
    mask = as_mask(mask, spatial)
    flat = data.reshape(-1, m)
    cols = slice(None) if measurements is None else measurements
    aux_flat = {k: np.broadcast_to(np.asarray(v, np.float64), spatial).reshape(-1)
                for k, v in (aux or {}).items()}
    n_total_vox = flat.shape[0]
    maps = {}
    for name, dtype in outputs.items():
        if name == "status":
            maps[name] = np.full(n_total_vox, Status.MASKED, dtype=np.uint8)
        else:
            maps[name] = np.full(n_total_vox, np.nan, dtype=dtype)
    index = None if mask is None else np.flatnonzero(mask.reshape(-1))
    n_total = n_total_vox if index is None else index.size
    chunk_size = max(1, int(chunk_size))
    for start in range(0, n_total, chunk_size):
        stop = min(n_total, start + chunk_size)
        if index is None:
            where = np.arange(start, stop)
            rows = flat[start:stop, cols]
        else:
            where = index[start:stop]
            rows = flat[where][:, cols]
        if rows.dtype not in (np.float32, np.float64):
            rows = rows.astype(np.float32 if rows.dtype.itemsize <= 2 else np.float64)
        code = screen_rows(rows)
        status = maps["status"]
        status[where] = code
        keep = code == _OK
        if np.any(keep):
            target = where[keep]
            aux_rows = {k: v[target] for k, v in aux_flat.items()}
            result = func(rows[keep] if not keep.all() else rows, aux_rows)
            for name, values in result.items():
                if name in maps:
                    maps[name][target] = values
        if progress is not None:
            progress(stop, n_total)
    return {name: arr.reshape(spatial) for name, arr in maps.items()}
