"""Fitting a model to a loaded :class:`~oncomri.core.Volume` from plain options.

``oncomri map <kind>`` and the study pipeline share one path from a scan to
its maps: the scan is read (by :mod:`oncomri.io`, in the CLI or the study
layer), then the model's ``fit_volume(volume, *, mask=None, method=None,
names=None, **options)`` classmethod builds the protocol from the volume's
acquisition (its protocol or its sidecar ``meta``) and the options, fits,
and returns a :class:`VolumeFit`: the maps to write and the provenance for
their sidecars. Options are plain Python values -- numbers in SI units (flip
angles in degrees), or text with an explicit unit as the command line takes
it (``'1.4s'``, ``'2,5,10,15deg'``, ``'0.4,2,3.5ppm'``), booleans, lists,
and masks or maps as arrays on the volume's grid; never paths (models do no
file I/O, DESIGN.md).

Errors name the option the way the caller's user wrote it: ``names=None``
gives command-line flags (``--t1-blood``), a text prefix gives dotted spec
fields (``names='maps.dce.options'`` -> ``maps.dce.options.t1_blood``), and
a callable ``names(key) -> str`` anything else. An unknown option key is a
:class:`~oncomri.core.errors.ValidationError` naming it and the known ones.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.errors import ProtocolError, ValidationError

__all__ = ["VolumeFit", "Options", "quantity"]


@dataclass
class VolumeFit:
    """What ``<Model>.fit_volume`` returns.

    Attributes
    ----------
    fit : Fit or None
        The model's fit (None when only model-free maps were asked, e.g. DCE
        with method ``'none'``).
    model : Model or None
        The model that was fitted.
    maps : dict
        ``{BIDS suffix: (array, sidecar)}``: every map to write (the fit's
        ``output_maps()`` plus any extra maps, e.g. DCE model-free measures).
    provenance : dict
        Sidecar entries shared by every map (model, method, acquisition
        values used and where they came from); JSON-serialisable.
    summary : str
        One line describing the fit, for logs and the command line.
    data : ndarray, optional
        The data as fitted when it differs from ``volume.data`` (e.g. a T1
        series sorted by flip angle).
    """

    fit: Any
    model: Any
    maps: dict
    provenance: dict = field(default_factory=dict)
    summary: str = ""
    data: Any = None

    @property
    def method(self) -> str:
        return getattr(self.model, "method", "none") if self.model is not None else "none"


def _cli_flag(key: str) -> str:
    return "--" + key.replace("_", "-")


class Options:
    """Plain options of a ``fit_volume`` builder, checked, with the names messages use.

    Parameters
    ----------
    given : mapping
        The options passed (``None`` values count as not given).
    defaults : mapping
        Every known key -> its default.
    model : str
        The model's registry name, for messages.
    names : None, str or callable
        How to name an option in messages (module docstring).
    cli : mapping, optional
        Command-line flags that differ from ``--<key-with-dashes>``.
    """

    def __init__(self, given: Mapping, defaults: Mapping, *, model: str,
                 names: str | Callable | None = None, cli: Mapping | None = None):
        self.model = model
        self._defaults = dict(defaults)
        self._cli = dict(cli or {})
        self._names = names
        unknown = [k for k in given if k not in self._defaults]
        if unknown:
            key = unknown[0]
            best = difflib.get_close_matches(str(key), list(self._defaults), n=1)
            hint = f" (did you mean {best[0]!r}?)" if best else ""
            known = ", ".join(sorted(k for k in self._defaults if k != "method"))
            raise ValidationError(f"{self.name(key)}: unknown option of model {model}; "
                                  f"known options: {known}{hint}")
        self._given = {k: v for k, v in given.items() if v is not None}

    def name(self, key: str) -> str:
        """How the user wrote option ``key`` (a flag or a dotted spec field)."""
        if callable(self._names):
            return self._names(key)
        if isinstance(self._names, str):
            return f"{self._names}.{key}"
        return self._cli.get(key, _cli_flag(key))

    def given(self, key: str) -> bool:
        return key in self._given

    def __getitem__(self, key: str):
        return self._given.get(key, self._defaults[key])

    def get(self, key: str, default=None):
        value = self[key]
        return default if value is None else value

    def as_dict(self) -> dict:
        """The options given, JSON-friendly (arrays described by their shape), for sidecars."""
        out = {}
        for k, v in self._given.items():
            if isinstance(v, np.ndarray) and v.ndim > 0 and v.size > 16:
                out[k] = f"array of shape {list(v.shape)}"
            elif isinstance(v, np.ndarray):
                out[k] = v.tolist()
            elif isinstance(v, (str, bool, int, float)) or v is None:
                out[k] = v
            elif isinstance(v, (list, tuple)):
                out[k] = [x if isinstance(x, (str, bool, int, float)) else str(x) for x in v]
            else:
                out[k] = str(v)
        return out

    # ---- typed access (validation names the option)

    def flag(self, key: str) -> bool:
        value = self[key]
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("on", "off", "true", "false", "yes", "no"):
            return value.lower() in ("on", "true", "yes")
        raise ValidationError(f"{self.name(key)} {value!r}: give true or false")

    def choice(self, key: str, choices) -> str | None:
        value = self[key]
        if value is None:
            return None
        if not isinstance(value, str) or value not in choices:
            raise ValidationError(f"{self.name(key)} {value!r}: choose one of {', '.join(choices)}")
        return value

    def number(self, key: str, *, positive: bool = False, integer: bool = False,
               minimum: float | None = None) -> float | int | None:
        value = self[key]
        if value is None:
            return None
        try:
            if isinstance(value, bool):
                raise TypeError
            num = float(value)
        except (TypeError, ValueError):
            raise ValidationError(f"{self.name(key)} {value!r}: give a number") from None
        if not np.isfinite(num):
            raise ValidationError(f"{self.name(key)} {value!r}: give a finite number")
        if integer:
            if num != int(num):
                raise ValidationError(f"{self.name(key)} {value!r}: give a whole number")
            num = int(num)
        if positive and not num > 0:
            raise ValidationError(f"{self.name(key)} must be positive, got {value!r}")
        if minimum is not None and num < minimum:
            raise ValidationError(f"{self.name(key)} must be at least {minimum:g}, got {value!r}")
        return num

    def array(self, key: str, shape, *, dtype=np.float64, what: str = "map"):
        """A scalar or an array of ``shape`` (the volume's spatial shape)."""
        value = self[key]
        if value is None:
            return None
        try:
            arr = np.asarray(value, dtype=dtype)
        except (TypeError, ValueError):
            raise ValidationError(f"{self.name(key)}: give a number or a {what} array") from None
        if arr.ndim and arr.shape != tuple(shape):
            raise ValidationError(f"{self.name(key)}: {what} of shape {arr.shape} does not match the "
                                  f"series grid {tuple(shape)}; resample it onto the series first")
        return arr

    def mask(self, key: str, shape) -> np.ndarray | None:
        value = self[key]
        if value is None:
            return None
        arr = np.asarray(value)
        if arr.shape != tuple(shape):
            raise ValidationError(f"{self.name(key)}: mask of shape {arr.shape} does not match the "
                                  f"series grid {tuple(shape)}")
        return arr.astype(bool)


_NUMBERS_UNIT = re.compile(r"\s*([-+0-9.eE,\s]+?)\s*([A-Za-zµ°]*)\s*")


def quantity(value, *, name: str, units: Mapping[str, float], default_unit: str | None = None,
             si_unit: str | None = None) -> list[float]:
    """Values of an option in SI: a number or list of numbers (already in ``si_unit``),
    or text with a unit (``'1.4s'``, ``'0,5,10 s'``); text without a unit uses
    ``default_unit`` and is an error when there is none.

    Raises :class:`~oncomri.core.errors.ProtocolError` naming ``name``.
    """
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return [float(value)]
    if isinstance(value, (list, tuple, np.ndarray)):
        try:
            return [float(v) for v in np.asarray(value, dtype=np.float64).reshape(-1)]
        except (TypeError, ValueError):
            raise ProtocolError(f"{name} {value!r}: give numbers") from None
    if not isinstance(value, str):
        raise ProtocolError(f"{name} {value!r}: not a number (list) with a unit")
    m = _NUMBERS_UNIT.fullmatch(value)
    if not m:
        raise ProtocolError(f"{name} {value!r}: not a number (list) with a unit")
    unit = m.group(2) or default_unit
    if unit not in units:
        raise ProtocolError(f"{name} {value!r}: give a unit, one of {', '.join(units)}")
    try:
        return [float(v) * units[unit] for v in re.split(r"[,\s]+", m.group(1).strip()) if v]
    except ValueError:
        raise ProtocolError(f"{name} {value!r}: not a comma-separated list of numbers") from None
