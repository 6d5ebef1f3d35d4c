"""The Model/Fit contract shared by every physics module (after DIPY's ``reconst``).

A :class:`Model` holds the acquisition protocol and the choice of method; its
``fit(data, *, mask=None, ...)`` returns a :class:`Fit` whose maps have the
spatial shape ``data.shape[:-1]``, whose ``status`` is a uint8 map of
:class:`oncomri.fitting.Status` codes and whose ``predict()`` returns the model
signal with the shape of ``data``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..core.errors import ValidationError

__all__ = ["Model", "Fit", "result_dtype"]


def result_dtype(data) -> np.dtype:
    """Maps keep float32 data float32 and float64 data float64; anything else -> float32."""
    dt = np.asarray(data).dtype if not hasattr(data, "dtype") else data.dtype
    return np.dtype(np.float64) if dt == np.float64 else np.dtype(np.float32)


class Model:
    """Base class: a protocol plus a method chosen by name from :attr:`methods`.

    Subclasses define ``methods`` (name -> callable) and ``default_method``.
    A callable can be passed instead of a name; it must follow the signature
    of the entries of the subclass's table.
    """

    methods: dict = {}
    default_method: str = ""

    def __init__(self, protocol, *, method: str | Callable | None = None):
        self.protocol = protocol
        method = self.default_method if method is None else method
        if callable(method):
            self.method = getattr(method, "__name__", "custom")
            self._method = method
        else:
            try:
                self._method = self.methods[method]
            except (KeyError, TypeError):
                raise ValidationError(
                    f"method {method!r} is not known to {type(self).__name__}; "
                    f"choose one of: {', '.join(self.methods)}"
                ) from None
            self.method = method

    def fit(self, data, *, mask=None, **options) -> "Fit":  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}(protocol={self.protocol!r}, method={self.method!r})"


class Fit:
    """Base class of fit results: maps, status and the model signal."""

    model: Model
    status: np.ndarray

    def predict(self) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def output_maps(self) -> dict:  # pragma: no cover - abstract
        """BIDS-derivative suffix -> (map, sidecar dict with Units and Description)."""
        raise NotImplementedError

    def summary(self) -> dict:
        """Counts of voxels per status (``{'ok': n, 'masked': m, ...}``), for logs and the CLI."""
        from ..fitting import Status

        codes, counts = np.unique(self.status, return_counts=True)
        return {Status(int(c)).name.lower(): int(n) for c, n in zip(codes, counts)}
