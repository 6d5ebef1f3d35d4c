"""Label kinetics: how much label a delivered cell population keeps in a region over time.

A compartment model of directly labelled cells (iron oxide or 19F) after they
are delivered into a region (a tumour, a lymph node, an injection site):

``N(t)``
    live labelled cells (all descendants of the delivered cells),
``L(t)``
    label inside live labelled cells (pg Fe or F atoms),
``q(t) = L / N``
    label per live labelled cell,
``P(t)``
    label released by dead labelled cells and taken up by host phagocytes
    (macrophages) that stay in the region: the *false-positive* pool.

With first-order rates (all in 1/day)::

    k_div   = ln 2 / T_d                    division (T_d: doubling time, days)
    k_exo                                    exocytosis of label
    k_deg                                    lysosomal degradation of the label
    k_death                                  death of labelled cells
    k_clear                                  clearance of the phagocyte pool
    f                                        fraction of the released label
                                             taken up by phagocytes in the region

    dN/dt = (k_div - k_death) N
    dL/dt = -(k_exo + k_deg + k_death) L
    dP/dt = f k_death L - k_clear P

Division splits a cell's label between its two daughters, so it doubles
``N`` and halves ``q`` while the label in the live population ``L`` is
conserved: label dilution (Arbab et al., Radiology 2003;229:838; Walczak et
al., MRM 2007;58:261; reviewed by Bulte & Kraitchman, NMR Biomed
2004;17:484). Exocytosis and degradation remove label from live cells
without killing them; degraded iron oxide is assumed invisible (its iron
enters ferritin/haemosiderin with a far lower relaxivity; Levy et al.,
Biomaterials 2011;32:3988). A dying cell releases its label; phagocytes take
up the fraction ``f`` and keep the region hypointense after the labelled
cells are gone, which is why iron-oxide MRI overestimates cell survival
(Terrovitis et al., Circulation 2008;117:1555; Berman et al., MRM
2011;65:564). The phagocyte pool leaves the region (migration, degradation)
at ``k_clear``. For 19F labels (perfluorocarbons), which cells do not
degrade, set ``k_deg = 0``; the 19F signal is proportional to the number of
19F nuclei in the region (Ahrens et al., Nat Biotechnol 2005;23:983;
Srinivas et al., Trends Biotechnol 2010;28:363).

The system is linear with constant coefficients and has the closed form
(``a = k_exo + k_deg + k_death``)::

    N(t) = N0 exp((k_div - k_death) t)
    L(t) = L0 exp(-a t),   q(t) = q0 exp(-(k_div + k_exo + k_deg) t)
    P(t) = f k_death L0 (exp(-a t) - exp(-k_clear t)) / (k_clear - a)
         (= f k_death L0 t exp(-a t)  when k_clear = a)

which is what :func:`simulate_label_kinetics` evaluates by default; the
same system integrated numerically (``method='ode'``, scipy's
``solve_ivp``) gives the same curves and is kept as a cross-check.

Signal. For iron, ``ΔR2* = r2* [Fe]`` with ``[Fe]`` in mmol/L from the iron
mass in the region and its volume (linear relaxivity model; r2* of
cell-internalised iron oxide differs from that of free particles, so pass
the value measured for labelled cells where known, e.g. Kuhlpeter et al.,
Radiology 2007;245:449). For 19F, the signal is the 19F concentration in
mmol/L of 19F nuclei (proportional to the number of F atoms in the region).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import constants, integrate, optimize

from ..core.checks import finite_float as _finite_float
from ..core.checks import positive_float as _positive
from ..core.errors import ValidationError

__all__ = [
    "IRON_MOLAR_MASS_G_PER_MOL",
    "LabelKineticsResult",
    "DetectionDay",
    "simulate_label_kinetics",
    "detection_day",
    "iron_mass_to_concentration_mmol_l",
    "fluorine_atoms_to_concentration_mmol_l",
]

#: Standard atomic weight of iron, g/mol (CIAAW; Meija et al., Pure Appl Chem 2016;88:265).
IRON_MOLAR_MASS_G_PER_MOL = 55.845

#: Label kinds: unit of the label amount, name and unit of the signal.
_LABELS = {
    "iron": ("pg Fe", "delta_r2star", "1/s"),
    "fluorine": ("F atoms", "fluorine_concentration", "mmol/L 19F"),
}

#: Largest exponent we let exp() reach before calling the input implausible.
_MAX_EXPONENT = 690.0


# --------------------------------------------------------------------------
# Unit conversions (pure functions)
# --------------------------------------------------------------------------

def iron_mass_to_concentration_mmol_l(iron_mass_pg, volume_mm3):
    """Iron concentration in mmol/L of ``iron_mass_pg`` (pg Fe) spread over ``volume_mm3`` (mm³).

    ``[Fe] = m·1e-12 g / 55.845 g/mol · 1e3 mmol/mol / (V·1e-6 L)
    = m·1e-3 / (55.845·V)``.
    """
    return np.asarray(iron_mass_pg, dtype=np.float64) * 1e-3 / (
        IRON_MOLAR_MASS_G_PER_MOL * np.asarray(volume_mm3, dtype=np.float64))


def fluorine_atoms_to_concentration_mmol_l(fluorine_atoms, volume_mm3):
    """Concentration of 19F nuclei in mmol/L of ``fluorine_atoms`` in ``volume_mm3`` (mm³).

    ``[19F] = n / N_A · 1e3 mmol/mol / (V·1e-6 L) = n·1e9 / (N_A·V)``.
    """
    return np.asarray(fluorine_atoms, dtype=np.float64) * 1e9 / (
        constants.Avogadro * np.asarray(volume_mm3, dtype=np.float64))


# --------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------

def _rate(name, value):
    v = _finite_float(name, value)
    if v < 0:
        raise ValidationError(f"{name} must be >= 0 per day (0 switches the process off), got {v:g}")
    return v


def _time_points(days, step):
    if np.ndim(days) == 0:
        end = _positive("days", days, "days (the last day simulated)")
        step = _positive("time_step_days", step, "days")
        t = np.arange(0.0, end + 0.5 * step, step)
        t = t[t <= end]
        if t[-1] < end:
            t = np.append(t, end)
        return t
    t = np.asarray(days, dtype=np.float64).reshape(-1)
    if t.size == 0:
        raise ValidationError("days is empty; pass the last day or an increasing array of days")
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ValidationError("days must be finite and >= 0 (days after delivery)")
    if np.any(np.diff(t) <= 0):
        raise ValidationError("days must be strictly increasing")
    return t


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class _Rates:
    division: float
    exocytosis: float
    degradation: float
    death: float
    clearance: float
    uptake: float

    @property
    def live_label_loss(self) -> float:
        return self.exocytosis + self.degradation + self.death


def _phase(x):
    """(1 - exp(-x)) / x, with its limit 1 at x = 0 (stable near 0)."""
    x = np.asarray(x, dtype=np.float64)
    safe = np.where(x == 0.0, 1.0, x)
    return np.where(x == 0.0, 1.0, -np.expm1(-safe) / safe)


def _closed_form(t, r: _Rates):
    """Normalised compartments at times t (days): N/N0, L/L0, P/L0."""
    t = np.asarray(t, dtype=np.float64)
    a = r.live_label_loss
    n = np.exp((r.division - r.death) * t)
    live = np.exp(-a * t)
    phag = r.uptake * r.death * t * live * _phase((r.clearance - a) * t)
    return n, live, phag


def _rhs(t, y, r: _Rates):
    n, live, phag = y
    return [(r.division - r.death) * n,
            -r.live_label_loss * live,
            r.uptake * r.death * live - r.clearance * phag]


def _ode(t, r: _Rates):
    if t[-1] == 0.0:
        return np.ones(1), np.ones(1), np.zeros(1)
    sol = integrate.solve_ivp(_rhs, (0.0, float(t[-1])), [1.0, 1.0, 0.0], t_eval=t,
                              args=(r,), method="LSODA", rtol=1e-10, atol=1e-14)
    if not sol.success:  # pragma: no cover - LSODA on a linear system
        raise ValidationError(f"the kinetics ODE did not integrate: {sol.message}")
    return sol.y[0], sol.y[1], sol.y[2]


@dataclass(frozen=True, eq=False)
class LabelKineticsResult:
    """Label kinetics of a delivered cell population (see :mod:`oncomri.sim.kinetics`).

    Arrays are indexed by :attr:`days`.

    Attributes
    ----------
    days : ndarray, days after delivery
    live_cells : ndarray, number of live labelled cells
    label_per_cell : ndarray, label per live labelled cell (:attr:`label_unit`)
    label_in_live_cells : ndarray, label inside live labelled cells (:attr:`label_unit`)
    label_in_phagocytes : ndarray, label taken up by host phagocytes in the region
    total_label : ndarray, label in the region (live cells + phagocytes)
    signal_live, signal_phagocytes, signal_total : ndarray
        The signal (:attr:`signal_name` in :attr:`signal_unit`) from each pool:
        ΔR2* in 1/s for iron, 19F concentration in mmol/L for fluorine.
    false_positive_fraction : ndarray
        Share of the total signal that comes from phagocytes (1); NaN where
        the region holds no label.
    label : {'iron', 'fluorine'}
    label_unit, signal_name, signal_unit : str
    parameters : dict
        The inputs, in their units (rates in 1/day).
    method : {'closed_form', 'ode'}
    """

    days: np.ndarray
    live_cells: np.ndarray
    label_per_cell: np.ndarray
    label_in_live_cells: np.ndarray
    label_in_phagocytes: np.ndarray
    total_label: np.ndarray
    signal_live: np.ndarray
    signal_phagocytes: np.ndarray
    signal_total: np.ndarray
    false_positive_fraction: np.ndarray
    label: str
    label_unit: str
    signal_name: str
    signal_unit: str
    parameters: dict = field(default_factory=dict)
    method: str = "closed_form"

    def _rates(self) -> _Rates:
        p = self.parameters
        return _Rates(p["division_rate_per_day"], p["exocytosis_rate_per_day"],
                      p["degradation_rate_per_day"], p["death_rate_per_day"],
                      p["phagocyte_clearance_rate_per_day"], p["phagocyte_uptake_fraction"])

    def _signal_per_label(self) -> float:
        """Signal (signal_unit) per unit of label (label_unit) in the region."""
        p = self.parameters
        if self.label == "iron":
            return float(p["relaxivity_r2star_l_per_mmol_s"]
                         * iron_mass_to_concentration_mmol_l(1.0, p["region_volume_mm3"]))
        return float(fluorine_atoms_to_concentration_mmol_l(1.0, p["region_volume_mm3"]))

    def signal_at(self, days, *, basis: str = "live") -> np.ndarray:
        """The signal (:attr:`signal_unit`) at any ``days`` from the closed form.

        ``basis`` is ``'live'`` (live labelled cells), ``'phagocytes'`` or ``'total'``.
        """
        if basis not in ("live", "phagocytes", "total"):
            raise ValidationError(f"basis must be 'live', 'phagocytes' or 'total', got {basis!r}")
        _, live, phag = _closed_form(days, self._rates())
        l0 = self.parameters["cells_delivered"] * self.parameters["label_per_cell"]
        pool = {"live": live, "phagocytes": phag, "total": live + phag}[basis]
        return l0 * pool * self._signal_per_label()

    def as_dict(self) -> dict:
        """Plain JSON-able values; units in the key names and in ``units``."""
        lu = self.label_unit
        return {
            "label": self.label,
            "method": self.method,
            "days": self.days.tolist(),
            "live_cells": self.live_cells.tolist(),
            "label_per_cell": self.label_per_cell.tolist(),
            "label_in_live_cells": self.label_in_live_cells.tolist(),
            "label_in_phagocytes": self.label_in_phagocytes.tolist(),
            "total_label": self.total_label.tolist(),
            f"{self.signal_name}_live": self.signal_live.tolist(),
            f"{self.signal_name}_phagocytes": self.signal_phagocytes.tolist(),
            f"{self.signal_name}_total": self.signal_total.tolist(),
            "false_positive_fraction": self.false_positive_fraction.tolist(),
            "parameters": dict(self.parameters),
            "units": {"days": "day", "live_cells": "cells", "label_per_cell": f"{lu} per cell",
                      "label_in_live_cells": lu, "label_in_phagocytes": lu, "total_label": lu,
                      self.signal_name: self.signal_unit, "false_positive_fraction": "1",
                      "rates": "1/day", "region_volume_mm3": "mm3"},
        }


def simulate_label_kinetics(*, cells_delivered, label_per_cell, doubling_time_days,
                            exocytosis_rate_per_day, degradation_rate_per_day,
                            death_rate_per_day, phagocyte_clearance_rate_per_day, days,
                            region_volume_mm3, label: str = "iron",
                            relaxivity_r2star_l_per_mmol_s=None,
                            phagocyte_uptake_fraction: float = 1.0,
                            time_step_days: float = 1.0,
                            method: str = "closed_form") -> LabelKineticsResult:
    """Label per cell, label in the region and its MRI signal over time after delivery.

    The compartment model and its literature are in the module docstring
    (:mod:`oncomri.sim.kinetics`): division dilutes the label per cell and
    conserves the label in live cells (Bulte & Kraitchman, NMR Biomed
    2004;17:484; Walczak et al., MRM 2007;58:261); exocytosis and
    lysosomal degradation remove it (Levy et al., Biomaterials
    2011;32:3988); dead cells release it to host phagocytes that stay in the
    region as a false-positive pool (Terrovitis et al., Circulation
    2008;117:1555; Berman et al., MRM 2011;65:564); 19F labels after Ahrens
    et al., Nat Biotechnol 2005;23:983 and Srinivas et al., Trends
    Biotechnol 2010;28:363.

    Parameters
    ----------
    cells_delivered : float
        Labelled cells in the region at day 0 (cells, > 0).
    label_per_cell : float
        Label per cell at day 0: pg Fe for ``label='iron'``, F atoms for
        ``label='fluorine'`` (> 0).
    doubling_time_days : float or None
        Doubling time of the labelled cells, days (> 0); ``None`` or
        ``math.inf`` for cells that do not divide.
    exocytosis_rate_per_day, degradation_rate_per_day, death_rate_per_day : float
        First-order rates, 1/day (>= 0). A half-life ``t½`` corresponds to
        a rate ``ln 2 / t½``.
    phagocyte_clearance_rate_per_day : float
        First-order clearance of label held by host phagocytes, 1/day (>= 0;
        0 keeps it in the region for good).
    days : float or array_like
        The last day simulated (time points every ``time_step_days`` from
        day 0), or the time points themselves (days, >= 0, increasing).
    region_volume_mm3 : float
        Volume of the region the label is spread over, mm³ (> 0).
    label : {'iron', 'fluorine'}
    relaxivity_r2star_l_per_mmol_s : float
        r2* of the label in L·mmol⁻¹·s⁻¹ (= s⁻¹·mM⁻¹ of Fe); required for
        iron. Free ferumoxytol at 37 °C: 60.4 (1.5 T) and 57.0 (3 T) in
        saline (Knobloch et al., Invest Radiol 2018); cell-bound iron oxide
        differs (Kuhlpeter et al., Radiology 2007;245:449).
    phagocyte_uptake_fraction : float
        Fraction (0–1) of the label released by dead cells that phagocytes in
        the region take up; the rest leaves the region. Default 1 (the worst
        case for false-positive signal).
    time_step_days : float
        Spacing of the time points when ``days`` is a number, days.
    method : {'closed_form', 'ode'}
        Evaluate the closed-form solution (default) or integrate the ODEs with
        :func:`scipy.integrate.solve_ivp` (LSODA).

    Returns
    -------
    LabelKineticsResult

    Raises
    ------
    ValidationError
        For non-finite, negative or zero amounts, volumes or doubling times,
        negative rates, an uptake fraction outside 0–1, a missing relaxivity
        for iron, or a growth so fast that the cell count overflows.

    Examples
    --------
    >>> r = simulate_label_kinetics(cells_delivered=1e6, label_per_cell=10.0,
    ...     doubling_time_days=2.0, exocytosis_rate_per_day=0.0,
    ...     degradation_rate_per_day=0.0, death_rate_per_day=0.0,
    ...     phagocyte_clearance_rate_per_day=0.0, days=4.0,
    ...     region_volume_mm3=100.0, relaxivity_r2star_l_per_mmol_s=60.0)
    >>> float(r.label_per_cell[-1])   # two doublings: 10 pg / 4
    2.5
    """
    if label not in _LABELS:
        raise ValidationError(f"label must be 'iron' or 'fluorine', got {label!r}")
    if method not in ("closed_form", "ode"):
        raise ValidationError(f"method must be 'closed_form' or 'ode', got {method!r}")
    n0 = _positive("cells_delivered", cells_delivered, "cells")
    label_unit, signal_name, signal_unit = _LABELS[label]
    q0 = _positive("label_per_cell", label_per_cell, label_unit)
    if doubling_time_days is None:
        doubling_time_days = math.inf
    try:
        td = float(doubling_time_days)
    except (TypeError, ValueError):
        raise ValidationError(
            f"doubling_time_days must be a number of days, got {doubling_time_days!r}") from None
    if math.isnan(td) or td <= 0:
        raise ValidationError(
            f"doubling_time_days must be > 0 days (None or inf for non-dividing cells), got {td:g}")
    k_div = 0.0 if math.isinf(td) else math.log(2.0) / td
    rates = _Rates(
        division=k_div,
        exocytosis=_rate("exocytosis_rate_per_day", exocytosis_rate_per_day),
        degradation=_rate("degradation_rate_per_day", degradation_rate_per_day),
        death=_rate("death_rate_per_day", death_rate_per_day),
        clearance=_rate("phagocyte_clearance_rate_per_day", phagocyte_clearance_rate_per_day),
        uptake=_finite_float("phagocyte_uptake_fraction", phagocyte_uptake_fraction),
    )
    if not 0.0 <= rates.uptake <= 1.0:
        raise ValidationError(
            f"phagocyte_uptake_fraction must lie in 0-1, got {rates.uptake:g}")
    volume = _positive("region_volume_mm3", region_volume_mm3, "mm3")
    relaxivity = None
    if label == "iron":
        if relaxivity_r2star_l_per_mmol_s is None:
            raise ValidationError(
                "relaxivity_r2star_l_per_mmol_s is required for label='iron' "
                "(r2* in L/(mmol s), e.g. 60.4 for ferumoxytol at 1.5 T)")
        relaxivity = _positive("relaxivity_r2star_l_per_mmol_s",
                               relaxivity_r2star_l_per_mmol_s, "L/(mmol s)")
    t = _time_points(days, time_step_days)
    growth = (rates.division - rates.death) * t[-1]
    if growth > _MAX_EXPONENT:
        raise ValidationError(
            f"doubling_time_days={td:g} over {t[-1]:g} days grows the cells by e^{growth:.0f}; "
            "shorten days or lengthen the doubling time")

    n, live, phag = (_closed_form if method == "closed_form" else _ode)(t, rates)
    l0 = n0 * q0
    live_cells = n0 * n
    label_live = l0 * live
    label_phag = l0 * phag
    total = label_live + label_phag
    per_cell = q0 * live / n
    if label == "iron":
        per_label = relaxivity * float(iron_mass_to_concentration_mmol_l(1.0, volume))
    else:
        per_label = float(fluorine_atoms_to_concentration_mmol_l(1.0, volume))
    with np.errstate(invalid="ignore", divide="ignore"):
        fp = np.where(total > 0, label_phag / total, np.nan)
    params = {
        "cells_delivered": n0, "label_per_cell": q0, "label_unit": label_unit,
        "doubling_time_days": td if math.isfinite(td) else None,
        "division_rate_per_day": rates.division,
        "exocytosis_rate_per_day": rates.exocytosis,
        "degradation_rate_per_day": rates.degradation,
        "death_rate_per_day": rates.death,
        "phagocyte_clearance_rate_per_day": rates.clearance,
        "phagocyte_uptake_fraction": rates.uptake,
        "region_volume_mm3": volume,
        "relaxivity_r2star_l_per_mmol_s": relaxivity,
    }
    return LabelKineticsResult(
        days=t, live_cells=live_cells, label_per_cell=per_cell,
        label_in_live_cells=label_live, label_in_phagocytes=label_phag, total_label=total,
        signal_live=label_live * per_label, signal_phagocytes=label_phag * per_label,
        signal_total=total * per_label, false_positive_fraction=fp,
        label=label, label_unit=label_unit, signal_name=signal_name, signal_unit=signal_unit,
        parameters=params, method=method)


# --------------------------------------------------------------------------
# Detection day
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class DetectionDay:
    """When the signal of a :class:`LabelKineticsResult` falls below a detection threshold.

    Attributes
    ----------
    basis : {'live', 'total'}
        Which signal was compared: live labelled cells only (what the study
        wants to see) or the total in the region (what the scanner sees,
        including the false-positive phagocyte pool).
    threshold : float
        Detection threshold, in :attr:`signal_unit`.
    signal_unit : str
    day : float or None
        First simulated time point (days) at which the signal is below the
        threshold; None if it stays at or above it over the simulated days.
    crossing_day : float or None
        The exact time (days) at which the signal reaches the threshold, from
        the closed form (the signals only decrease, so it is unique); None if
        not within the simulated days.
    detectable_at_start : bool
        Whether the signal at the first time point is at or above the threshold.
    false_positive_fraction_at_crossing : float or None
        Share of the total signal held by phagocytes at ``crossing_day``.
    """

    basis: str
    threshold: float
    signal_unit: str
    day: float | None
    crossing_day: float | None
    detectable_at_start: bool
    false_positive_fraction_at_crossing: float | None

    def as_dict(self) -> dict:
        """Plain JSON-able values; units in the key names."""
        return {"basis": self.basis, "threshold": self.threshold, "signal_unit": self.signal_unit,
                "day": self.day, "crossing_day": self.crossing_day,
                "detectable_at_start": self.detectable_at_start,
                "false_positive_fraction_at_crossing": self.false_positive_fraction_at_crossing,
                "units": {"day": "day", "crossing_day": "day", "threshold": self.signal_unit}}


def detection_day(result: LabelKineticsResult, *, threshold, basis: str = "live") -> DetectionDay:
    """The first day on which the signal falls below a detection threshold.

    Parameters
    ----------
    result : LabelKineticsResult
        From :func:`simulate_label_kinetics`.
    threshold : float
        The smallest detectable signal in ``result.signal_unit`` (ΔR2* in
        1/s for iron, e.g. from :func:`oncomri.sim.detection_limit`; 19F
        concentration in mmol/L for fluorine), > 0.
    basis : {'live', 'total'}
        Compare the signal of live labelled cells (default: when do the
        *cells* become undetectable) or the total signal in the region (when
        does the *region* stop looking labelled; later, because of the
        phagocyte pool). Both signals only decrease with time (the phagocyte
        pool is fed from the live-cell label, never from outside), so the
        crossing is unique.

    Returns
    -------
    DetectionDay
        States the basis used, the first sampled day below the threshold and
        the exact crossing time.
    """
    if not isinstance(result, LabelKineticsResult):
        raise ValidationError("result must be a LabelKineticsResult from simulate_label_kinetics")
    if basis not in ("live", "total"):
        raise ValidationError(f"basis must be 'live' or 'total', got {basis!r}")
    thr = _positive("threshold", threshold, result.signal_unit)
    signal = result.signal_live if basis == "live" else result.signal_total
    t = result.days
    below = np.flatnonzero(signal < thr)
    start_ok = bool(signal[0] >= thr)
    if below.size == 0:
        return DetectionDay(basis, thr, result.signal_unit, None, None, start_ok, None)
    i = int(below[0])
    if i == 0:
        crossing = float(t[0])
    else:
        def excess(x):
            return float(result.signal_at(x, basis=basis)) - thr
        if excess(t[i - 1]) >= 0 > excess(t[i]):
            crossing = float(optimize.brentq(excess, t[i - 1], t[i], xtol=1e-12, rtol=1e-12))
        else:  # sampled (ODE) values straddle the threshold by rounding only
            crossing = float(t[i])
    live = float(result.signal_at(crossing, basis="live"))
    phag = float(result.signal_at(crossing, basis="phagocytes"))
    fp = phag / (live + phag) if live + phag > 0 else None
    return DetectionDay(basis, thr, result.signal_unit, float(t[i]), crossing, start_ok, fp)
