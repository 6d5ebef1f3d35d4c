"""ROI masks, statistics, volumetry, segmentation, registration and cell-tracking biomarkers.

Pure functions on arrays with their affines / voxel sizes (mm); reading mask
files lives in :mod:`oncomri.io.masks`.
"""

from .celltracking import (
    DEFAULT_REFERENCE_FRACTION,
    RCBV_THRESHOLD_FERUMOXYTOL,
    TNR_BOUNDARIES,
    TNR_CLASSES,
    DeltaR2StarROI,
    HypointenseResult,
    RCBVClassification,
    SignalLoss,
    Spot,
    SpotDetection,
    TumourToNormalRatio,
    classify_rcbv,
    delta_r2star,
    delta_r2star_roi,
    detect_spots,
    hypointense_fraction,
    signal_loss_percent,
    tumour_to_normal_ratio,
)
from .geometry import AxialDiameters, axial_axis, longest_axial_diameter, tumour_volume
from .lymphnode import LYMPH_NODE_CLASSES, LymphNodeClassification, classify_lymph_node, feret_diameter_mm
from .margins import AM_CLASSES, AM_CRITERION_MM, AblativeMargin, ablative_margin
from .masks import RESAMPLE_METHODS, resample_mask, world_bounding_box
from .registration import (
    Registration,
    RegistrationQuality,
    affine_to_sitk_geometry,
    apply_to_image,
    apply_to_mask,
    array_to_sitk,
    dice,
    normalized_mutual_information,
    propagate_mask,
    ras_lps_transform,
    register,
    registration_quality,
    sitk_geometry_to_affine,
    sitk_to_array,
)
from .segment import SEGMENT_METHODS, segment_from_seed
from .stats import DEFAULT_BIN_WIDTH, DEFAULT_PERCENTILES, RoiStatistics, roi_statistics

__all__ = [
    "resample_mask", "world_bounding_box", "RESAMPLE_METHODS",
    "roi_statistics", "RoiStatistics", "DEFAULT_BIN_WIDTH", "DEFAULT_PERCENTILES",
    "tumour_volume", "longest_axial_diameter", "AxialDiameters", "axial_axis",
    "segment_from_seed", "SEGMENT_METHODS",
    "delta_r2star", "delta_r2star_roi", "DeltaR2StarROI", "hypointense_fraction", "HypointenseResult",
    "detect_spots", "Spot", "SpotDetection", "signal_loss_percent", "SignalLoss",
    "tumour_to_normal_ratio", "TumourToNormalRatio", "TNR_BOUNDARIES", "TNR_CLASSES",
    "classify_rcbv", "RCBVClassification", "RCBV_THRESHOLD_FERUMOXYTOL", "DEFAULT_REFERENCE_FRACTION",
    "ablative_margin", "AblativeMargin", "AM_CRITERION_MM", "AM_CLASSES",
    "classify_lymph_node", "LymphNodeClassification", "LYMPH_NODE_CLASSES", "feret_diameter_mm",
    "register", "Registration", "RegistrationQuality", "apply_to_image", "apply_to_mask",
    "propagate_mask", "registration_quality", "dice", "normalized_mutual_information",
    "affine_to_sitk_geometry", "sitk_geometry_to_affine", "ras_lps_transform", "array_to_sitk",
    "sitk_to_array",
]
