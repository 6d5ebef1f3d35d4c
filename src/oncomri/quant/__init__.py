"""Turning maps into amounts: iron from ΔR2*, liver iron, 19F and MPI cell quantification.

Pure functions on arrays and numbers (no file I/O); every number taken from
a paper carries its citation where it is defined.
"""

from .fluorine import (
    AVOGADRO_PER_MOL,
    DEFAULT_SNR_THRESHOLD,
    NOISE_CORRECTIONS,
    FluorineCells,
    fluorine_atoms,
    fluorine_cells,
    noise_floor_correct,
)
from .iron import (
    FE_MOLAR_MASS_G_PER_MOL,
    FIELD_STRENGTH_TOLERANCE_T,
    RELAXIVITY_TABLE,
    CellNumber,
    IronMass,
    RelaxivityEntry,
    cell_number,
    iron_concentration,
    iron_mass,
    labelled_cells,
    relaxivity,
)
from .liver import (
    LIVER_IRON_CALIBRATIONS,
    NORMAL_LIVER_R2STAR_1P5T_PER_S,
    NORMAL_LIVER_R2STAR_1P5T_SD_PER_S,
    LiverIron,
    LiverIronCalibration,
    liver_iron,
    liver_iron_concentration,
)
from .mpi import LOD_FACTOR, LOQ_FACTOR, MPICalibration, MPIQuantification, mpi_calibration, mpi_iron

__all__ = [
    "FE_MOLAR_MASS_G_PER_MOL", "FIELD_STRENGTH_TOLERANCE_T", "RelaxivityEntry", "RELAXIVITY_TABLE",
    "relaxivity", "iron_concentration", "IronMass", "iron_mass", "CellNumber", "cell_number",
    "labelled_cells",
    "LiverIronCalibration", "LIVER_IRON_CALIBRATIONS", "NORMAL_LIVER_R2STAR_1P5T_PER_S",
    "NORMAL_LIVER_R2STAR_1P5T_SD_PER_S", "liver_iron_concentration", "LiverIron", "liver_iron",
    "AVOGADRO_PER_MOL", "DEFAULT_SNR_THRESHOLD", "NOISE_CORRECTIONS", "fluorine_atoms",
    "noise_floor_correct", "FluorineCells", "fluorine_cells",
    "LOD_FACTOR", "LOQ_FACTOR", "MPICalibration", "mpi_calibration", "MPIQuantification", "mpi_iron",
]
