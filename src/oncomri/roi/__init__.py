"""ROI masks, statistics, volumetry, segmentation, registration and cell-tracking biomarkers.

Pure functions on arrays with their affines / voxel sizes (mm); reading mask
files lives in :mod:`oncomri.io.masks`.
"""

from .geometry import AxialDiameters, axial_axis, longest_axial_diameter, tumour_volume
from .masks import RESAMPLE_METHODS, resample_mask, world_bounding_box
from .segment import SEGMENT_METHODS, segment_from_seed
from .stats import DEFAULT_BIN_WIDTH, DEFAULT_PERCENTILES, RoiStatistics, roi_statistics

__all__ = [
    "resample_mask", "world_bounding_box", "RESAMPLE_METHODS",
    "roi_statistics", "RoiStatistics", "DEFAULT_BIN_WIDTH", "DEFAULT_PERCENTILES",
    "tumour_volume", "longest_axial_diameter", "AxialDiameters", "axial_axis",
    "segment_from_seed", "SEGMENT_METHODS",
]
