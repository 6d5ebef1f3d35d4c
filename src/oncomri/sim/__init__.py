"""Digital phantoms with known truth, label kinetics, detection limits, targeting and study power."""

from .detection import (
    ROSE_CRITERION,
    DetectionLimit,
    detection_limit,
    mono_exponential_fisher_information,
    r2star_crlb,
)
from .evaluate import AccuracyRow, accuracy_by_value
from .kinetics import (
    IRON_MOLAR_MASS_G_PER_MOL,
    DetectionDay,
    LabelKineticsResult,
    detection_day,
    fluorine_atoms_to_concentration_mmol_l,
    iron_mass_to_concentration_mmol_l,
    simulate_label_kinetics,
)
from .phantoms import (
    DEFAULT_T2STAR_VALUES_S,
    RelaxometryPhantom,
    add_rician_noise,
    decay_series,
    relaxometry_phantom,
)

from .power import (
    PowerResult,
    SampleSizeResult,
    power_paired,
    power_two_sample,
    sample_size_paired,
    sample_size_two_sample,
)
from .targeting import (
    BLOOD_DENSITY_KG_M3,
    BLOOD_VISCOSITY_PA_S,
    MAGNETITE_MS_BULK_AM2_PER_KG,
    OXIDE_IRON_MASS_RATIO,
    MagneticDrift,
    magnetic_drift,
)

__all__ = [
    "simulate_label_kinetics", "detection_day", "LabelKineticsResult", "DetectionDay",
    "IRON_MOLAR_MASS_G_PER_MOL", "iron_mass_to_concentration_mmol_l",
    "fluorine_atoms_to_concentration_mmol_l",
    "detection_limit", "DetectionLimit", "r2star_crlb", "mono_exponential_fisher_information",
    "ROSE_CRITERION",
    "magnetic_drift", "MagneticDrift", "MAGNETITE_MS_BULK_AM2_PER_KG", "BLOOD_VISCOSITY_PA_S",
    "BLOOD_DENSITY_KG_M3", "OXIDE_IRON_MASS_RATIO",
    "power_two_sample", "sample_size_two_sample", "power_paired", "sample_size_paired",
    "PowerResult", "SampleSizeResult",
    "AccuracyRow",
    "accuracy_by_value",
    "add_rician_noise",
    "decay_series",
    "RelaxometryPhantom",
    "relaxometry_phantom",
    "DEFAULT_T2STAR_VALUES_S",
]
