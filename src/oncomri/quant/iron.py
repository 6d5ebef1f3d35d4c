"""Iron from relaxation-rate changes: concentration, mass and labelled-cell number.

The chain, for iron-oxide-labelled cells or an iron-oxide agent in tissue::

    ΔR2* (s⁻¹) ──÷ r2*──► [Fe] (mmol/L = mM) ──× voxel volume, × 55.845 g/mol──► Fe (µg)
                                                        ──÷ iron per cell (pg)──► cells

The first step assumes the linear relaxivity model ``ΔR2* = r2* · [Fe]``.
Knobloch et al. (Invest Radiol 2018;53:257) found R1, R2 and R2* of
ferumoxytol linear in concentration (0.26–4.2 mM) in saline and in plasma at
37 °C, at 1.5 T and 3 T, but *not* in whole blood, where they fitted
second-order polynomials instead; their saline and plasma relaxivities make
up :data:`RELAXIVITY_TABLE`. Linearity of R2* in the volume fraction of
magnetised particles is also what the static-dephasing theory predicts
(Yablonskiy & Haacke, Magn Reson Med 1994;32:749).

**Caveat: tissue is not solution.** Iron that cells have internalised sits in
compartments (endosomes, lysosomes), and clustered particles relax water
differently from dispersed ones: relaxivities of cell-bound or internalised
iron oxide differ from those measured in solution (Billotey et al., Magn Reson
Med 2003;49:646; Kuhlpeter et al., Radiology 2007;245:449). An amount computed
with a solution relaxivity is therefore an *apparent* amount; where a
relaxivity measured on labelled cells (e.g. in a cell-pellet phantom) is
available, pass it as ``relaxivity`` instead.

Masses use the standard atomic weight of iron, 55.845 g/mol (IUPAC, Meija et
al., Pure Appl Chem 2016;88:265).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from ..core.errors import GeometryError, ValidationError

__all__ = [
    "FE_MOLAR_MASS_G_PER_MOL",
    "FIELD_STRENGTH_TOLERANCE_T",
    "RelaxivityEntry",
    "RELAXIVITY_TABLE",
    "relaxivity",
    "iron_concentration",
    "IronMass",
    "iron_mass",
    "CellNumber",
    "cell_number",
    "labelled_cells",
]

#: Standard atomic weight of iron, g/mol (IUPAC 2013; Meija et al., Pure Appl
#: Chem 2016;88:265: 55.845(2)).
FE_MOLAR_MASS_G_PER_MOL = 55.845

#: How far (tesla) a scanner's field may be from a tabulated field and still
#: use its value. 0.12 T rather than 0.1 T so that Siemens "3 T" systems, which
#: run at 2.89 T and write 2.89 into some DICOM headers, match the 3 T row.
FIELD_STRENGTH_TOLERANCE_T = 0.12

#: 1 mmol/L in 1 mm³ is 1e-9 mol (1 L = 1e6 mm³, 1 mmol = 1e-3 mol).
_MOL_PER_MM_MM3 = 1e-9

_KINDS = ("r1", "r2", "r2star")


@dataclass(frozen=True)
class RelaxivityEntry:
    """Relaxivities of one agent at one field, medium and temperature.

    All relaxivities in s⁻¹·mM⁻¹, i.e. per mmol/L of the agent's iron (or
    gadolinium) atoms.
    """

    agent: str
    field_strength_t: float
    medium: str
    temperature_c: float
    r1: float
    r2: float
    r2star: float
    source: str

    def value(self, kind: str) -> float:
        """The relaxivity of ``kind`` (``'r1'``, ``'r2'`` or ``'r2star'``), s⁻¹·mM⁻¹."""
        return float(getattr(self, kind))


_KNOBLOCH_2018 = "Knobloch et al., Invest Radiol 2018;53:257"

#: Ferumoxytol relaxivities at 37 °C, s⁻¹·mM⁻¹ (mM of Fe), from the linear fits
#: of Knobloch et al., Invest Radiol 2018;53:257 (values as listed in
#: shared/data/MANIFEST.md). Whole blood is not tabulated: its relaxation
#: rates are not linear in concentration (same paper).
RELAXIVITY_TABLE: tuple[RelaxivityEntry, ...] = (
    # Knobloch 2018, 1.5 T saline: r1 19.9, r2 60.8, r2* 60.4
    RelaxivityEntry("ferumoxytol", 1.5, "saline", 37.0, 19.9, 60.8, 60.4, _KNOBLOCH_2018),
    # Knobloch 2018, 1.5 T plasma: r1 19.0, r2 64.9, r2* 64.4
    RelaxivityEntry("ferumoxytol", 1.5, "plasma", 37.0, 19.0, 64.9, 64.4, _KNOBLOCH_2018),
    # Knobloch 2018, 3 T saline: r1 10.0, r2 62.3, r2* 57.0
    RelaxivityEntry("ferumoxytol", 3.0, "saline", 37.0, 10.0, 62.3, 57.0, _KNOBLOCH_2018),
    # Knobloch 2018, 3 T plasma: r1 9.5, r2 65.2, r2* 55.7
    RelaxivityEntry("ferumoxytol", 3.0, "plasma", 37.0, 9.5, 65.2, 55.7, _KNOBLOCH_2018),
)

#: The same table keyed by (agent, field_strength_t, medium), read-only.
_TABLE_BY_KEY = MappingProxyType(
    {(e.agent, e.field_strength_t, e.medium): e for e in RELAXIVITY_TABLE}
)


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------

def _positive_finite(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValidationError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ValidationError(f"{name} must be a positive finite number, got {value!r}")
    return v


def _roi(data: np.ndarray, mask, name: str) -> np.ndarray:
    """Boolean ROI of ``data``'s shape (all voxels when ``mask`` is None)."""
    if mask is None:
        roi = np.ones(data.shape, dtype=bool)
    else:
        roi = np.asarray(mask)
        if roi.shape != data.shape:
            raise GeometryError(
                f"mask has shape {roi.shape} but {name} has shape {data.shape}; "
                "give a mask on the same grid"
            )
        if roi.dtype != bool:
            if not np.all(np.isin(roi, (0, 1))):
                raise ValidationError("mask must be boolean (or 0/1); threshold a label image first")
            roi = roi.astype(bool)
    if not roi.any():
        raise ValidationError("mask selects no voxels; the ROI is empty")
    return roi


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


# --------------------------------------------------------------------------
# Relaxivity lookup
# --------------------------------------------------------------------------

def relaxivity(agent: str = "ferumoxytol", *, field_strength_t, medium: str = "plasma",
               kind: str = "r2star") -> float:
    """Tabulated relaxivity of an agent, s⁻¹·mM⁻¹ (per mmol/L of Fe).

    Looks up :data:`RELAXIVITY_TABLE` (ferumoxytol at 37 °C in saline and
    plasma at 1.5 T and 3 T; Knobloch et al., Invest Radiol 2018;53:257).

    Parameters
    ----------
    agent : str
        Agent name, case-insensitive (``'ferumoxytol'``).
    field_strength_t : float
        Main field in tesla; matches a tabulated field within
        :data:`FIELD_STRENGTH_TOLERANCE_T` (±0.12 T).
    medium : str
        ``'plasma'`` (default) or ``'saline'``.
    kind : str
        ``'r1'``, ``'r2'`` or ``'r2star'`` (default).

    Returns
    -------
    float
        Relaxivity in s⁻¹·mM⁻¹.

    Raises
    ------
    ValidationError
        Unknown agent, medium or kind, or a field strength with no entry;
        the message says to pass the relaxivity explicitly.
    """
    if kind not in _KINDS:
        raise ValidationError(f"kind must be one of {', '.join(_KINDS)}, got {kind!r}")
    entry = _lookup(agent, field_strength_t, medium)
    return entry.value(kind)


def _lookup(agent, field_strength_t, medium) -> RelaxivityEntry:
    agent_key = str(agent).strip().lower()
    medium_key = str(medium).strip().lower()
    agents = sorted({e.agent for e in RELAXIVITY_TABLE})
    if agent_key not in agents:
        raise ValidationError(
            f"agent {agent!r} is not in the relaxivity table (known: {', '.join(agents)}); "
            "pass relaxivity= explicitly in s^-1 mM^-1"
        )
    field = _positive_finite(field_strength_t, "field_strength_t")
    rows = [e for e in RELAXIVITY_TABLE if e.agent == agent_key]
    media = sorted({e.medium for e in rows})
    if medium_key not in media:
        raise ValidationError(
            f"medium {medium!r} has no {agent_key} relaxivity (known: {', '.join(media)}); "
            "pass relaxivity= explicitly in s^-1 mM^-1"
        )
    for e in rows:
        if e.medium == medium_key and abs(e.field_strength_t - field) <= FIELD_STRENGTH_TOLERANCE_T:
            return e
    fields = ", ".join(f"{f:g} T" for f in sorted({e.field_strength_t for e in rows}))
    raise ValidationError(
        f"no {agent_key} relaxivity at {field:g} T (table has {fields}); "
        "pass relaxivity= explicitly in s^-1 mM^-1 for this field"
    )


def _resolve_relaxivity(relaxivity_value, agent, field_strength_t, medium):
    """(relaxivity in s⁻¹·mM⁻¹, its source) from an explicit value or the table."""
    if relaxivity_value is not None:
        if agent is not None:
            raise ValidationError(
                "give either relaxivity= or agent= (with field_strength_t=), not both"
            )
        return _positive_finite(relaxivity_value, "relaxivity"), "user-supplied"
    if agent is None or field_strength_t is None:
        raise ValidationError(
            "give relaxivity= in s^-1 mM^-1, or agent= and field_strength_t= to look it up"
        )
    entry = _lookup(agent, field_strength_t, medium)
    source = (f"{entry.source} ({entry.agent}, {entry.field_strength_t:g} T, "
              f"{entry.medium}, {entry.temperature_c:g} C)")
    return entry.r2star, source


# --------------------------------------------------------------------------
# ΔR2* → concentration
# --------------------------------------------------------------------------

def iron_concentration(delta_r2star, *, relaxivity=None, agent=None, field_strength_t=None,
                       medium: str = "plasma", negative: str = "error") -> np.ndarray:
    """Iron concentration (mmol Fe/L = mM) from the R2* change, ``[Fe] = ΔR2* / r2*``.

    The linear relaxivity model ``ΔR2* = r2* · [Fe]``, with ``ΔR2*`` the
    post- minus pre-labelling R2* in s⁻¹. Linearity holds for ferumoxytol in
    saline and plasma from 0.26 to 4.2 mM, but not in whole blood (Knobloch et
    al., Invest Radiol 2018;53:257).

    **Caveat**: the tabulated relaxivities are for iron dispersed in
    solution. In tissue, iron that is compartmentalised or internalised by
    cells relaxes differently (Billotey et al., Magn Reson Med 2003;49:646;
    Kuhlpeter et al., Radiology 2007;245:449), so the result is an apparent
    concentration; pass a relaxivity measured on labelled cells where you
    have one.

    Parameters
    ----------
    delta_r2star : array_like
        ΔR2* in s⁻¹, a scalar or a voxelwise map. NaN (failed fits) stays NaN.
    relaxivity : float, optional
        r2* in s⁻¹·mM⁻¹. Always allowed; give it *or* ``agent``.
    agent : str, optional
        Look r2* up in :data:`RELAXIVITY_TABLE` (needs ``field_strength_t``).
    field_strength_t : float, optional
        Main field in tesla, for the lookup.
    medium : str
        ``'plasma'`` (default) or ``'saline'``, for the lookup.
    negative : {'error', 'clip'}
        What to do with ΔR2* < 0, which is noise or a pre/post mismatch,
        since a negative concentration is impossible. ``'error'`` (default)
        raises; ``'clip'`` sets those voxels to 0 mM. Clipping removes the
        negative half of the noise, so a sum over a noisy ROI is biased
        upwards; mask unlabelled tissue out rather than clip where you can.

    Returns
    -------
    ndarray of float64
        Iron concentration in mmol Fe/L (mM), the shape of ``delta_r2star``.
    """
    r, _ = _resolve_relaxivity(relaxivity, agent, field_strength_t, medium)
    if negative not in ("error", "clip"):
        raise ValidationError(f"negative must be 'error' or 'clip', got {negative!r}")
    try:
        d = np.asarray(delta_r2star, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValidationError("delta_r2star must be numeric (s^-1)") from None
    if np.any(np.isinf(d)):
        raise ValidationError("delta_r2star contains infinite values; mask them out or set them to NaN")
    neg = d < 0
    if neg.any():
        if negative == "error":
            raise ValidationError(
                f"delta_r2star has {int(neg.sum())} negative value(s) (min {np.nanmin(d):g} s^-1); "
                "mask them out or pass negative='clip' to set them to 0 mM"
            )
        d = np.where(neg, 0.0, d)
    return d / r


# --------------------------------------------------------------------------
# Concentration → mass → cells
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class IronMass:
    """Total iron in an ROI.

    Attributes
    ----------
    n_voxels : int
        Voxels in the ROI.
    roi_volume_mm3 : float
        ROI volume in mm³.
    mean_concentration_mM : float
        Mean iron concentration over the ROI, mmol Fe/L.
    iron_mol : float
        Total iron, mol.
    iron_ug : float
        Total iron, µg.
    mean_delta_r2star_per_s, relaxivity_per_mM_per_s, relaxivity_source
        The first link of the chain when the mass was computed from ΔR2*
        (:func:`labelled_cells`); None otherwise.
    """

    n_voxels: int
    roi_volume_mm3: float
    mean_concentration_mM: float
    iron_mol: float
    iron_ug: float
    mean_delta_r2star_per_s: float | None = None
    relaxivity_per_mM_per_s: float | None = None
    relaxivity_source: str | None = None

    def as_dict(self) -> dict:
        """Plain JSON-able values; units in the key names."""
        out = {}
        if self.mean_delta_r2star_per_s is not None:
            out["mean_delta_r2star_per_s"] = self.mean_delta_r2star_per_s
            out["relaxivity_per_mM_per_s"] = self.relaxivity_per_mM_per_s
            out["relaxivity_source"] = self.relaxivity_source
        out.update(
            n_voxels=self.n_voxels,
            roi_volume_mm3=self.roi_volume_mm3,
            mean_iron_concentration_mM=self.mean_concentration_mM,
            iron_mol=self.iron_mol,
            iron_ug=self.iron_ug,
        )
        return {k: _jsonable(v) for k, v in out.items()}


def iron_mass(concentration_mM, *, voxel_volume_mm3, mask=None) -> IronMass:
    """Total iron in an ROI from a concentration map.

    ``n_Fe = Σ c_i · V · 1e-9`` mol (c in mmol/L, V in mm³, 1 L = 1e6 mm³) and
    ``m_Fe = n_Fe · 55.845 g/mol`` (IUPAC standard atomic weight; Meija et
    al., Pure Appl Chem 2016;88:265). Example: 1 mM in 1 mm³ is 1e-9 mol,
    55.845 ng.

    Parameters
    ----------
    concentration_mM : array_like
        Iron concentration in mmol Fe/L (e.g. from :func:`iron_concentration`).
    voxel_volume_mm3 : float
        Volume of one voxel in mm³ (product of the voxel edge lengths).
    mask : bool array_like, optional
        ROI, same shape as ``concentration_mM``; all voxels when omitted.

    Returns
    -------
    IronMass

    Raises
    ------
    ValidationError
        Negative or non-finite concentrations inside the ROI, empty ROI,
        non-positive voxel volume.
    GeometryError
        Mask shape differs from the map.
    """
    v = _positive_finite(voxel_volume_mm3, "voxel_volume_mm3")
    try:
        c = np.asarray(concentration_mM, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValidationError("concentration_mM must be numeric (mmol/L)") from None
    roi = _roi(c, mask, "concentration_mM")
    values = c[roi]
    bad = ~np.isfinite(values)
    if bad.any():
        raise ValidationError(
            f"concentration_mM has {int(bad.sum())} non-finite voxel(s) inside the ROI; "
            "remove them from the mask (e.g. failed fits) or fill them"
        )
    if np.any(values < 0):
        raise ValidationError(
            "concentration_mM has negative values inside the ROI; a concentration cannot be "
            "negative (use iron_concentration(..., negative='clip') or mask them out)"
        )
    n = int(values.size)
    mol = float(values.sum()) * v * _MOL_PER_MM_MM3
    return IronMass(
        n_voxels=n,
        roi_volume_mm3=n * v,
        mean_concentration_mM=float(values.mean()),
        iron_mol=mol,
        iron_ug=mol * FE_MOLAR_MASS_G_PER_MOL * 1e6,
    )


@dataclass(frozen=True)
class CellNumber:
    """Labelled-cell estimate from an iron mass and the iron content per cell.

    Attributes
    ----------
    iron_ug : float
        Total iron, µg.
    iron_per_cell_pg : float
        Iron per labelled cell from the labelling assay, pg Fe/cell.
    cells : float
        ``iron_ug · 1e6 / iron_per_cell_pg``.
    iron : IronMass or None
        The earlier links of the chain, when known.
    """

    iron_ug: float
    iron_per_cell_pg: float
    cells: float
    iron: IronMass | None = None

    def as_dict(self) -> dict:
        """The chain ΔR2* → mM → µg → cells as plain values, units in the key names."""
        out = {} if self.iron is None else self.iron.as_dict()
        out["iron_ug"] = self.iron_ug
        out["iron_per_cell_pg"] = self.iron_per_cell_pg
        out["cells"] = self.cells
        return {k: _jsonable(v) for k, v in out.items()}


def cell_number(iron, *, iron_per_cell_pg) -> CellNumber:
    """Number of labelled cells, ``N = m_Fe / m_Fe,cell``.

    Assumes every cell carries the mean iron load measured in the labelling
    assay and that no iron has left the cells (label dilution by division
    and iron in macrophages that took up dead cells both bias the count).

    Parameters
    ----------
    iron : IronMass or float
        Total iron, an :class:`IronMass` or a mass in µg.
    iron_per_cell_pg : float
        Mean iron per labelled cell in pg Fe/cell (user input from the
        labelling assay, e.g. ferrozine or ICP-MS on a counted cell pellet;
        pmol/cell × 55.845 = pg/cell).

    Returns
    -------
    CellNumber
    """
    per_cell = _positive_finite(iron_per_cell_pg, "iron_per_cell_pg")
    if isinstance(iron, IronMass):
        mass_ug, chain = iron.iron_ug, iron
    else:
        try:
            mass_ug = float(iron)
        except (TypeError, ValueError):
            raise ValidationError(f"iron must be an IronMass or a mass in ug, got {iron!r}") from None
        if not math.isfinite(mass_ug) or mass_ug < 0:
            raise ValidationError(f"iron mass must be a finite number >= 0 ug, got {iron!r}")
        chain = None
    return CellNumber(iron_ug=mass_ug, iron_per_cell_pg=per_cell,
                      cells=mass_ug * 1e6 / per_cell, iron=chain)


def labelled_cells(delta_r2star, *, iron_per_cell_pg, voxel_volume_mm3, mask=None,
                   relaxivity=None, agent=None, field_strength_t=None,
                   medium: str = "plasma", negative: str = "error") -> CellNumber:
    """Labelled cells in an ROI from a ΔR2* map: ΔR2* → mM → µg → cells.

    Runs :func:`iron_concentration`, :func:`iron_mass` and
    :func:`cell_number` and keeps every link of the chain in the result's
    ``as_dict()``. See :func:`iron_concentration` for the relaxivity model
    and its caveat in tissue.

    Parameters
    ----------
    delta_r2star : array_like
        ΔR2* map in s⁻¹.
    iron_per_cell_pg : float
        Mean iron per labelled cell, pg Fe/cell.
    voxel_volume_mm3 : float
        Volume of one voxel, mm³.
    mask : bool array_like, optional
        ROI; all voxels when omitted.
    relaxivity, agent, field_strength_t, medium, negative
        As in :func:`iron_concentration`.

    Returns
    -------
    CellNumber
        With ``iron`` holding the ROI mass and the mean ΔR2* and relaxivity.
    """
    r, source = _resolve_relaxivity(relaxivity, agent, field_strength_t, medium)
    try:
        d = np.asarray(delta_r2star, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValidationError("delta_r2star must be numeric (s^-1)") from None
    roi = _roi(d, mask, "delta_r2star")
    conc = iron_concentration(np.where(roi, d, 0.0), relaxivity=r, negative=negative)
    mass = iron_mass(conc, voxel_volume_mm3=voxel_volume_mm3, mask=roi)
    mass = dataclasses.replace(
        mass,
        mean_delta_r2star_per_s=float(mass.mean_concentration_mM * r),
        relaxivity_per_mM_per_s=r,
        relaxivity_source=source,
    )
    return cell_number(mass, iron_per_cell_pg=iron_per_cell_pg)
