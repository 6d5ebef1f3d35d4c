"""``Volume``: an image array with its geometry, acquisition and provenance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import GeometryError, ValidationError

__all__ = ["Volume", "same_grid"]


def same_grid(shape_a, affine_a, shape_b, affine_b, *, atol_mm: float = 1e-3) -> bool:
    """True if two images share spatial shape and affine (within ``atol_mm``)."""
    return tuple(shape_a[:3]) == tuple(shape_b[:3]) and np.allclose(
        np.asarray(affine_a, float), np.asarray(affine_b, float), rtol=0, atol=atol_mm
    )


@dataclass(eq=False)
class Volume:
    """An image: voxel array, voxel-to-world affine, acquisition and provenance.

    Parameters
    ----------
    data : ndarray
        Spatial axes first (3 of them), measurements (echoes, b-values,
        dynamics ...) on the last axis if there is more than one.
    affine : ndarray, shape (4, 4)
        Voxel indices to world coordinates in mm, RAS+ as in NIfTI.
    protocol : object, optional
        The acquisition protocol (e.g. :class:`MultiEchoProtocol`) that
        describes the measurement axis.
    meta : dict
        Acquisition metadata in SI units (e.g. ``MagneticFieldStrength``).
    sources : tuple of str
        The files this volume was read from.
    """

    data: np.ndarray
    affine: np.ndarray
    protocol: Any = None
    meta: dict = field(default_factory=dict)
    sources: tuple = ()

    def __post_init__(self):
        self.data = np.asanyarray(self.data)
        aff = np.asarray(self.affine, dtype=np.float64)
        if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
            raise GeometryError(f"affine must be a finite 4x4 matrix, got shape {aff.shape}")
        self.affine = aff
        if self.data.ndim < 3:
            raise ValidationError(
                f"Volume data must have at least 3 spatial axes, got shape {self.data.shape}"
            )
        n = getattr(self.protocol, "n_measurements", None)
        if n is not None and self.data.ndim == 4 and self.data.shape[-1] != n:
            raise ValidationError(
                f"data has {self.data.shape[-1]} measurements on its last axis but the "
                f"protocol lists {n}; give one acquisition parameter per measurement"
            )

    @property
    def spatial_shape(self) -> tuple:
        """The shape of the three spatial axes."""
        return tuple(self.data.shape[:3])

    @property
    def voxel_size(self) -> np.ndarray:
        """Voxel edge lengths in mm, from the affine."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
