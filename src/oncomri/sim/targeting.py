"""Magnetic resonance targeting: the pull of an imaging gradient on a SPION-loaded cell.

A cell carrying iron oxide in the scanner's B0 has a magnetic moment
``m = M_s · m_oxide`` (A·m²): at clinical field strengths (B0 >= 1.5 T)
superparamagnetic iron oxide is taken as saturated, because its Langevin
magnetisation curve is close to saturation by about 1 T at body temperature
(Pankhurst et al., J Phys D Appl Phys 2003;36:R167). A field gradient then
pulls the cell with ``F = (m·∇)B``; with the moment along B0 and the field
dominated by B0 this is ``F = m G``, ``G = ∂|B|/∂x`` the gradient strength in
T/m (clinical imaging gradients ~40 mT/m; dedicated or steering inserts
hundreds of mT/m and more). Steering cells and particles with the gradients
of an MRI system was shown by Mathieu & Martel (Biomed Microdevices
2007;9:801) and Riegler et al. (Biomaterials 2010;31:5366).

In a fluid at low Reynolds number the cell reaches its terminal drift
velocity within microseconds, set by Stokes drag on a sphere of radius
``r``: ``v = F / (6 π η r)`` (Stokes, Trans Camb Phil Soc 1851;9:8). The
first inertial correction multiplies the drag by ``1 + 3 Re / 16`` (Proudman
& Pearson, J Fluid Mech 1957;2:237), so Stokes' law is good to 2 % for
``Re = ρ v 2r / η < 0.1``; the result says whether that holds.

Blood is a suspension of cells about as large as the labelled cell, so a
continuum viscosity is an approximation: the default is the high-shear
viscosity of whole blood at 37 °C, ~3.5 mPa·s (reported range ~3–5 mPa·s;
Baskurt & Meiselman, Semin Thromb Hemost 2003;29:435); plasma (~1.2 mPa·s)
gives the upper bound on velocity. Drift is relative to the fluid: in
flowing blood it adds to the flow (cm/s in large vessels), so the distance
is the displacement across the streamlines, or in stagnant tissue fluid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..core.checks import positive_float as _positive
from ..core.errors import ValidationError
from .kinetics import IRON_MOLAR_MASS_G_PER_MOL

__all__ = [
    "MAGNETITE_MS_BULK_AM2_PER_KG",
    "BLOOD_VISCOSITY_PA_S",
    "BLOOD_DENSITY_KG_M3",
    "OXIDE_IRON_MASS_RATIO",
    "MagneticDrift",
    "magnetic_drift",
]

#: Saturation magnetisation of bulk magnetite (Fe3O4) at room temperature,
#: A·m²/kg of Fe3O4: 92–100 (Cornell & Schwertmann, The Iron Oxides, 2nd ed.,
#: Wiley-VCH 2003); the lower end. Nanoparticles are often lower (surface
#: spin canting): use the value measured for the particle where known.
MAGNETITE_MS_BULK_AM2_PER_KG = 92.0

#: Whole-blood viscosity at high shear, 37 °C, Pa·s (~3–5 mPa·s reported;
#: Baskurt & Meiselman, Semin Thromb Hemost 2003;29:435).
BLOOD_VISCOSITY_PA_S = 3.5e-3

#: Density of whole blood, kg/m³ (~1050–1060; Kenner, Basic Res Cardiol 1989;84:111).
BLOOD_DENSITY_KG_M3 = 1060.0

_O = 15.999  # standard atomic weight of oxygen, g/mol (CIAAW; Meija et al., Pure Appl Chem 2016;88:265)
_FE = IRON_MOLAR_MASS_G_PER_MOL

#: Mass of oxide per mass of its iron: Fe3O4 231.531/167.535, γ-Fe2O3 159.687/111.690;
#: 'iron' when M_s is given per kg of iron.
OXIDE_IRON_MASS_RATIO = {
    "magnetite": (3 * _FE + 4 * _O) / (3 * _FE),
    "maghemite": (2 * _FE + 3 * _O) / (2 * _FE),
    "iron": 1.0,
}

#: Reynolds number below which Stokes drag is within 2 % (3 Re / 16 < 0.02).
_STOKES_RE_LIMIT = 0.1
#: B0 from which SPIO is taken as saturated, T.
_SATURATION_B0_T = 1.5


@dataclass(frozen=True)
class MagneticDrift:
    """Force on, and drift of, a SPION-loaded cell in a field gradient (SI; units in names)."""

    iron_per_cell_pg: float
    magnetisation_basis: str
    oxide_mass_per_cell_pg: float
    saturation_magnetisation_am2_per_kg: float
    magnetic_moment_am2: float
    field_strength_t: float
    saturation_assumption_valid: bool
    gradient_t_per_m: float
    force_n: float
    cell_radius_um: float
    viscosity_pa_s: float
    drag_coefficient_n_s_per_m: float
    velocity_m_per_s: float
    duration_s: float
    distance_m: float
    fluid_density_kg_m3: float
    reynolds_number: float
    stokes_drag_valid: bool
    velocity_relaxation_time_s: float

    @property
    def force_pn(self) -> float:
        """Force in piconewton."""
        return self.force_n * 1e12

    @property
    def velocity_um_per_s(self) -> float:
        """Terminal drift velocity in µm/s."""
        return self.velocity_m_per_s * 1e6

    @property
    def distance_mm(self) -> float:
        """Distance drifted in ``duration_s``, mm."""
        return self.distance_m * 1e3

    def as_dict(self) -> dict:
        """Plain JSON-able values (units in the key names), with the derived units added."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out.update(force_pn=self.force_pn, velocity_um_per_s=self.velocity_um_per_s,
                   distance_mm=self.distance_mm)
        return out


def magnetic_drift(*, iron_per_cell_pg, gradient_t_per_m, saturation_magnetisation_am2_per_kg,
                   magnetisation_basis: str, cell_radius_um, duration_s, field_strength_t,
                   viscosity_pa_s=BLOOD_VISCOSITY_PA_S,
                   fluid_density_kg_m3=BLOOD_DENSITY_KG_M3) -> MagneticDrift:
    """Magnetic force, terminal drift velocity and distance of a labelled cell.

    ``m = M_s · m_oxide``, ``F = m G`` (Pankhurst et al., J Phys D Appl Phys
    2003;36:R167), ``v = F / (6 π η r)`` (Stokes drag), ``d = v t``,
    ``Re = ρ v 2r / η``; see :mod:`oncomri.sim.targeting` for the
    assumptions and references.

    Parameters
    ----------
    iron_per_cell_pg : float
        Iron per cell, pg Fe (> 0).
    gradient_t_per_m : float
        Gradient of the field magnitude, T/m (> 0; 0.04 for a 40 mT/m
        clinical gradient).
    saturation_magnetisation_am2_per_kg : float
        Saturation magnetisation M_s of the particle's iron oxide, A·m²/kg
        (= emu/g), per kg of what ``magnetisation_basis`` names. Bulk
        magnetite: :data:`MAGNETITE_MS_BULK_AM2_PER_KG` (92 A·m²/kg Fe3O4);
        use the particle's measured value where known.
    magnetisation_basis : {'magnetite', 'maghemite', 'iron'}
        Whether M_s is per kg of Fe3O4, of γ-Fe2O3, or of iron. The iron
        mass is converted to oxide mass with :data:`OXIDE_IRON_MASS_RATIO`.
    cell_radius_um : float
        Radius of the cell, µm (> 0; lymphocytes and NK cells are ~3.5–5 µm).
    duration_s : float
        Time the gradient is applied, s (>= 0).
    field_strength_t : float
        B0 in T; the saturated-moment model holds from 1.5 T
        (``saturation_assumption_valid`` says whether it does; below it the
        force is overestimated).
    viscosity_pa_s : float
        Dynamic viscosity of the fluid, Pa·s (default whole blood, 3.5 mPa·s).
    fluid_density_kg_m3 : float
        Density of the fluid, kg/m³, for the Reynolds number (default blood,
        1060 kg/m³). The cell is taken as neutrally buoyant at this density
        for the velocity relaxation time ``2 ρ r² / (9 η)``.

    Returns
    -------
    MagneticDrift
    """
    fe = _positive("iron_per_cell_pg", iron_per_cell_pg, "pg Fe")
    g = _positive("gradient_t_per_m", gradient_t_per_m, "T/m")
    ms = _positive("saturation_magnetisation_am2_per_kg", saturation_magnetisation_am2_per_kg,
                   "A m2/kg")
    # no iron oxide beats metallic iron, bcc Fe ~218 A m2/kg at room temperature
    # (Cullity & Graham, Introduction to Magnetic Materials, 2nd ed., Wiley 2009)
    if ms > 250.0:
        raise ValidationError(
            f"saturation_magnetisation_am2_per_kg={ms:g} exceeds that of metallic iron "
            "(~218 A m2/kg); give it in A m2/kg (= emu/g)")
    if magnetisation_basis not in OXIDE_IRON_MASS_RATIO:
        raise ValidationError(
            f"magnetisation_basis must be one of {', '.join(OXIDE_IRON_MASS_RATIO)}, "
            f"got {magnetisation_basis!r}")
    r_um = _positive("cell_radius_um", cell_radius_um, "um")
    try:
        t = float(duration_s)
    except (TypeError, ValueError):
        raise ValidationError(f"duration_s must be a number of seconds, got {duration_s!r}") from None
    if not (math.isfinite(t) and t >= 0):
        raise ValidationError(f"duration_s must be finite and >= 0 s, got {t:g}")
    b0 = _positive("field_strength_t", field_strength_t, "T")
    eta = _positive("viscosity_pa_s", viscosity_pa_s, "Pa s")
    if eta > 1.0:
        raise ValidationError(
            f"viscosity_pa_s={eta:g} Pa s is implausible for blood; give it in Pa s (3.5 mPa s = 0.0035)")
    rho = _positive("fluid_density_kg_m3", fluid_density_kg_m3, "kg/m3")

    oxide_pg = fe * OXIDE_IRON_MASS_RATIO[magnetisation_basis]
    moment = ms * oxide_pg * 1e-15          # pg -> kg
    force = moment * g                       # A m2 * T/m = N
    r = r_um * 1e-6
    drag = 6.0 * math.pi * eta * r
    v = force / drag
    re = rho * v * 2.0 * r / eta
    tau = 2.0 * rho * r * r / (9.0 * eta)
    return MagneticDrift(
        iron_per_cell_pg=fe, magnetisation_basis=magnetisation_basis, oxide_mass_per_cell_pg=oxide_pg,
        saturation_magnetisation_am2_per_kg=ms, magnetic_moment_am2=moment,
        field_strength_t=b0, saturation_assumption_valid=b0 >= _SATURATION_B0_T,
        gradient_t_per_m=g, force_n=force, cell_radius_um=r_um, viscosity_pa_s=eta,
        drag_coefficient_n_s_per_m=drag, velocity_m_per_s=v, duration_s=t, distance_m=v * t,
        fluid_density_kg_m3=rho, reynolds_number=re, stokes_drag_valid=re < _STOKES_RE_LIMIT,
        velocity_relaxation_time_s=tau)
