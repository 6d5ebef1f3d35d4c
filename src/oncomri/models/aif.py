"""Arterial input functions (AIFs) for DCE-MRI: population curves and measured ones.

An :class:`ArterialInputFunction` is the *plasma* concentration of the
contrast agent (mmol/L) at knot times in seconds. Between knots it is linear,
before the first knot it is zero and after the last knot it holds the last
value: the tracer-kinetic models of :mod:`oncomri.models.dce` convolve exactly
this piecewise-linear function (see there why that matters).

Population curves
-----------------
:func:`parker_aif`
    Parker et al., "Experimentally-derived functional form for a
    population-averaged high-temporal-resolution arterial input function for
    dynamic contrast-enhanced MRI", MRM 2006;56:993-1000, eq. 1 with the
    parameters of its Table 1 (blood concentration, time in minutes from the
    bolus onset). The parameter values were checked against the OSIPI
    reference file ``PopulationAIF_DCE/ParkerAIF.csv``.
:func:`preclinical_aif`
    The rodent population AIF of McGrath et al., "Comparison of model-based
    arterial input functions for dynamic contrast-enhanced MRI in
    tumor-bearing rats", MRM 2009;61:1173-1184, "model B" (eq. 5, Table 1): a
    linear up-slope to ``t1 = 7 s`` followed by a bi-exponential wash-out,
    ``A1 = 3.4 mM``, ``A2 = 1.81 mM``, ``k1 = 0.045 /s``, ``k2 = 0.0015 /s``.
    Form and numbers as used by the OSIPI DCE code collection
    (``ST_USyd_AUS.InputFunctions.preclinicalAIF``) and its reference curves
    ``preclinicalAIF_ref*.csv``; not checked against the paper itself.

Measured AIF
------------
:func:`measured_aif` averages blood concentration curves inside an arterial
mask, optionally restricted to automatically selected arterial voxels
(:func:`select_arterial_voxels`), and converts blood to plasma with the
haematocrit.

Bolus arrival
-------------
Every AIF can be shifted in time (:meth:`ArterialInputFunction.shifted`); the
DCE models can also fit that delay per voxel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.errors import ProtocolError, ValidationError

__all__ = [
    "ArterialInputFunction",
    "PARKER_PARAMETERS",
    "MCGRATH_MODEL_B_PARAMETERS",
    "parker_aif",
    "preclinical_aif",
    "blood_to_plasma",
    "select_arterial_voxels",
    "measured_aif",
    "population_aif",
    "POPULATION_AIFS",
]

#: Parker et al. MRM 2006;56:993, Table 1 (A in mmol*min, sigma/T in min, alpha
#: in mmol, beta/s in 1/min, tau in min).
PARKER_PARAMETERS = {
    "A1": 0.809, "sigma1": 0.0563, "T1": 0.17046,
    "A2": 0.330, "sigma2": 0.132, "T2": 0.365,
    "alpha": 1.050, "beta": 0.1685, "s": 38.078, "tau": 0.483,
}

#: McGrath et al. MRM 2009;61:1173, model B (A in mM, k in 1/s, t1 in s), as
#: used by the OSIPI code collection; not checked against the paper.
MCGRATH_MODEL_B_PARAMETERS = {"A1": 3.4, "A2": 1.81, "k1": 0.045, "k2": 0.0015, "t1": 7.0}


def _times(times, name="times") -> np.ndarray:
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    if t.size == 0 or not np.all(np.isfinite(t)):
        raise ValidationError(f"{name} must be finite numbers in seconds, got {t[:5].tolist()}...")
    return t


def parker_aif(times, *, delay: float = 0.0) -> np.ndarray:
    """Parker population AIF: *blood* concentration in mmol/L.

    Parameters
    ----------
    times : array_like
        Times in seconds after the bolus onset.
    delay : float
        Bolus arrival time in seconds: the curve is ``Cb(t - delay)`` for
        ``t >= delay`` and zero before (the convention of the OSIPI reference
        curves ``ParkerAIF_ref_with_delay.csv``).

    Notes
    -----
    Parker et al., MRM 2006;56:993, eq. 1::

        Cb(t) = sum_n A_n / (sigma_n sqrt(2 pi)) exp(-(t - T_n)^2 / (2 sigma_n^2))
                + alpha exp(-beta t) / (1 + exp(-s (t - tau)))

    with t in minutes and the Table 1 parameters (:data:`PARKER_PARAMETERS`).
    At ``delay = 0`` the curve is evaluated as is for every t (it is 0.08 mM
    at t = 0, as in the reference).
    """
    t = _times(times)
    p = PARKER_PARAMETERS
    tm = (t - float(delay)) / 60.0
    out = np.zeros_like(tm)
    keep = tm >= 0 if delay != 0 else np.ones(tm.shape, bool)
    x = tm[keep]
    g1 = p["A1"] / (p["sigma1"] * np.sqrt(2 * np.pi)) * np.exp(-(x - p["T1"]) ** 2 / (2 * p["sigma1"] ** 2))
    g2 = p["A2"] / (p["sigma2"] * np.sqrt(2 * np.pi)) * np.exp(-(x - p["T2"]) ** 2 / (2 * p["sigma2"] ** 2))
    with np.errstate(over="ignore"):
        sig = p["alpha"] * np.exp(-p["beta"] * x) / (1.0 + np.exp(-p["s"] * (x - p["tau"])))
    out[keep] = g1 + g2 + sig
    return out


def preclinical_aif(times, *, delay: float = 0.0) -> np.ndarray:
    """Rodent population AIF (McGrath et al. MRM 2009, model B), in mmol/L.

    Parameters
    ----------
    times : array_like
        Times in seconds after the bolus onset.
    delay : float
        Bolus arrival time in seconds; zero before it.

    Notes
    -----
    ``C(t) = (A1 + A2) t / t1`` for ``0 <= t <= t1`` and
    ``A1 exp(-k1 (t - t1)) + A2 exp(-k2 (t - t1))`` after, with
    :data:`MCGRATH_MODEL_B_PARAMETERS`. The OSIPI reference shifts the
    sampled curve by whole samples; for delays that are multiples of the
    sampling interval that equals ``C(t - delay)``, which is what this
    returns for any delay.
    """
    t = _times(times)
    p = MCGRATH_MODEL_B_PARAMETERS
    x = t - float(delay)
    rise = (p["A1"] + p["A2"]) * x / p["t1"]
    fall = p["A1"] * np.exp(-p["k1"] * (x - p["t1"])) + p["A2"] * np.exp(-p["k2"] * (x - p["t1"]))
    out = np.where(x <= p["t1"], rise, fall)
    return np.where(x < 0, 0.0, out)


def blood_to_plasma(blood, hematocrit: float) -> np.ndarray:
    """Plasma concentration ``Cb / (1 - Hct)`` (the agent stays out of red cells)."""
    h = float(hematocrit)
    if not 0.0 <= h < 1.0:
        raise ValidationError(f"hematocrit {hematocrit!r} must be in [0, 1), e.g. 0.42")
    return np.asarray(blood, dtype=np.float64) / (1.0 - h)


@dataclass(frozen=True, eq=False)
class ArterialInputFunction:
    """A piecewise-linear plasma input ``cp(t)``.

    Parameters
    ----------
    times : array_like
        Knot times in seconds, strictly increasing (at least two).
    concentration : array_like
        Plasma concentration at the knots, mmol/L.
    kind : str
        ``'parker'``, ``'preclinical'``, ``'measured'`` or ``'custom'``.
    description : str
        Provenance for sidecars (method, citation, haematocrit, onset).

    Notes
    -----
    The function is zero before ``times[0]``, linear between knots and equal
    to ``concentration[-1]`` after ``times[-1]``.
    """

    times: np.ndarray
    concentration: np.ndarray
    kind: str = "custom"
    description: str = ""

    def __post_init__(self):
        t = _times(self.times, "AIF times")
        c = np.asarray(self.concentration, dtype=np.float64).reshape(-1)
        if t.size < 2:
            raise ValidationError("an AIF needs at least two time points")
        if c.shape != t.shape:
            raise ValidationError(
                f"AIF concentration has {c.size} values but there are {t.size} AIF times; "
                "give one concentration per time")
        if np.any(np.diff(t) <= 0):
            raise ProtocolError("AIF times must increase strictly (seconds); sort them")
        if not np.all(np.isfinite(c)):
            raise ValidationError("AIF concentration contains NaN or Inf; clean the curve first")
        t.flags.writeable = False
        c.flags.writeable = False
        object.__setattr__(self, "times", t)
        object.__setattr__(self, "concentration", c)

    def at(self, times) -> np.ndarray:
        """The (piecewise-linear) AIF at ``times`` in seconds."""
        t = _times(times)
        out = np.interp(t, self.times, self.concentration)
        return np.where(t < self.times[0], 0.0, out)

    def shifted(self, delay: float) -> "ArterialInputFunction":
        """The same curve arriving ``delay`` seconds later (earlier if negative)."""
        return ArterialInputFunction(self.times + float(delay), self.concentration, self.kind,
                                     f"{self.description}; shifted by {float(delay):g} s")

    def sidecar(self) -> dict:
        """A JSON-ready description for output sidecars."""
        return {"AIFType": self.kind, "AIFDescription": self.description,
                "AIFPeakConcentration_mM": float(self.concentration.max())}


def _knots(times, oversample: int) -> np.ndarray:
    t = _times(times)
    if oversample < 1 or int(oversample) != oversample:
        raise ValidationError(f"oversample must be a whole number >= 1, got {oversample!r}")
    if oversample == 1 or t.size < 2:
        return t
    frac = np.arange(int(oversample)) / int(oversample)
    fine = (t[:-1, None] + np.diff(t)[:, None] * frac[None, :]).reshape(-1)
    return np.append(fine, t[-1])


POPULATION_AIFS = {"parker": parker_aif, "preclinical": preclinical_aif}


def population_aif(kind: str, times, *, onset: float = 0.0, hematocrit: float = 0.42,
                   oversample: int = 1) -> ArterialInputFunction:
    """A population AIF as a piecewise-linear plasma input on the dynamic's time grid.

    Parameters
    ----------
    kind : {'parker', 'preclinical'}
    times : array_like
        The dynamic's frame times in seconds.
    onset : float
        Bolus arrival in the frame-time axis, seconds (the population curve's
        t = 0); per-voxel delays can then be fitted on top.
    hematocrit : float
        Blood-to-plasma conversion (0.42 for adults; use 0 if the curve is
        already plasma). Both population curves are treated as blood curves.
    oversample : int
        Knots per frame interval. The models convolve the piecewise-linear
        AIF exactly, so its knots decide how much of the narrow first-pass
        peak survives: 1 samples the population curve at the frame times,
        larger values follow the analytic curve more closely (and cost time).
    """
    try:
        func = POPULATION_AIFS[kind]
    except KeyError:
        raise ValidationError(f"unknown population AIF {kind!r}; choose one of "
                              f"{', '.join(POPULATION_AIFS)}") from None
    knots = _knots(times, oversample)
    blood = func(knots, delay=float(onset))
    cite = ("Parker et al. MRM 2006;56:993" if kind == "parker"
            else "McGrath et al. MRM 2009;61:1173 model B")
    return ArterialInputFunction(
        knots, blood_to_plasma(blood, hematocrit), kind,
        f"{kind} population AIF ({cite}), onset {float(onset):g} s, hematocrit {hematocrit:g}, "
        f"{oversample} knot(s) per frame")


def select_arterial_voxels(concentration, times, *, mask=None, n_voxels: int = 10,
                           peak_fraction: float = 0.05) -> np.ndarray:
    """Automatic arterial-voxel selection: high and early peaks.

    The criteria follow the rationale of Mouridsen et al., "Automatic
    selection of arterial input function using cluster analysis", MRM
    2006;55:524-531 (arterial curves peak high, early and narrow); this is a
    simple rank-based screen, not their k-means clustering (citation from
    memory, not checked against the paper):

    1. candidates: voxels in ``mask`` with finite curves;
    2. keep the ``peak_fraction`` of candidates with the highest peak
       concentration (at least ``n_voxels``);
    3. of those keep the ones whose time to peak is at most the median time
       to peak of the set (early arrival);
    4. return the ``n_voxels`` with the highest peaks among them.

    Parameters
    ----------
    concentration : ndarray (..., n_times)
        Concentration (or relaxation-rate change) curves.
    times : array_like (n_times,)
        Frame times in seconds.
    mask : bool ndarray of concentration.shape[:-1], optional
        Where to search (e.g. a box around an artery).

    Returns
    -------
    bool ndarray of concentration.shape[:-1]
        The selected voxels.
    """
    c = np.asarray(concentration, dtype=np.float64)
    t = _times(times)
    if c.shape[-1] != t.size:
        raise ValidationError(f"concentration has {c.shape[-1]} frames but {t.size} times were given")
    spatial = c.shape[:-1]
    flat = c.reshape(-1, t.size)
    cand = np.all(np.isfinite(flat), axis=1)
    if mask is not None:
        m = np.asarray(mask, bool)
        if m.shape != spatial:
            raise ValidationError(f"AIF search mask has shape {m.shape}, the data {spatial}; "
                                  "resample the mask onto the data grid")
        cand &= m.reshape(-1)
    idx = np.flatnonzero(cand)
    if idx.size == 0:
        raise ValidationError("no voxel with a finite curve in the AIF search region; check the mask")
    peak = flat[idx].max(axis=1)
    ttp = t[np.argmax(flat[idx], axis=1)]
    n_keep = max(int(n_voxels), int(np.ceil(peak_fraction * idx.size)))
    order = np.argsort(-peak, kind="stable")[:n_keep]
    early = order[ttp[order] <= np.median(ttp[order])]
    chosen = idx[early[np.argsort(-peak[early], kind="stable")][:int(n_voxels)]]
    out = np.zeros(flat.shape[0], bool)
    out[chosen] = True
    return out.reshape(spatial)


def measured_aif(blood_concentration, times, mask, *, hematocrit: float = 0.42,
                 auto_select: bool = False, n_voxels: int = 10) -> ArterialInputFunction:
    """The mean blood curve inside an arterial mask, as a plasma AIF.

    Parameters
    ----------
    blood_concentration : ndarray (..., n_times)
        Blood concentration curves in mmol/L (from the signal with the blood
        T1, e.g. :func:`oncomri.models.dce.signal_to_concentration`).
    times : array_like
        Frame times in seconds (the AIF knots).
    mask : bool ndarray
        Arterial voxels, or the search region when ``auto_select``.
    hematocrit : float
        ``cp = cb / (1 - Hct)``.
    auto_select : bool
        Pick the arterial voxels inside ``mask`` with
        :func:`select_arterial_voxels`.
    """
    c = np.asarray(blood_concentration, dtype=np.float64)
    t = _times(times)
    m = np.asarray(mask, bool)
    if m.shape != c.shape[:-1]:
        raise ValidationError(f"AIF mask has shape {m.shape} but the data {c.shape[:-1]}; "
                              "resample the mask onto the data grid")
    if auto_select:
        m = select_arterial_voxels(c, t, mask=m, n_voxels=n_voxels)
    rows = c[m]
    rows = rows[np.all(np.isfinite(rows), axis=1)]
    if rows.shape[0] == 0:
        raise ValidationError("the AIF mask holds no voxel with a finite curve; draw it on an artery")
    curve = blood_to_plasma(rows.mean(axis=0), hematocrit)
    how = f"{rows.shape[0]} {'automatically selected ' if auto_select else ''}voxels"
    return ArterialInputFunction(t, curve, "measured",
                                 f"measured AIF, mean of {how}, hematocrit {hematocrit:g}")
