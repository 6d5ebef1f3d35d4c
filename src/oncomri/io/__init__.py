"""Readers and writers: NIfTI images with BIDS JSON sidecars.

``load_multi_echo`` turns per-echo files (or one 4D file) and their sidecars
into one :class:`~oncomri.core.Volume` with a validated
:class:`~oncomri.core.MultiEchoProtocol` (seconds); ``write_derivatives``
writes maps next to it as BIDS derivatives on exactly the same grid.
"""

from .bids import derivative_prefix, parse_bids_name, read_sidecar, sidecar_path
from .nifti import load_mask, load_multi_echo, load_nifti, write_derivatives
from .dicom_export import (
    SegmentLabel,
    write_measurement_report,
    write_parametric_map,
    write_segmentation,
)
from .convert import sidecar_from_meta, write_bids_series
from .masks import ROI_SUFFIXES, load_roi
from .registry import READERS, Reader, describe_series, find_reader, load, load_all

__all__ = [
    "load_roi",
    "ROI_SUFFIXES",
    "write_parametric_map",
    "write_segmentation",
    "write_measurement_report",
    "SegmentLabel",
    "write_bids_series",
    "sidecar_from_meta",
    "load",
    "load_all",
    "find_reader",
    "describe_series",
    "Reader",
    "READERS",
    "load_nifti",
    "load_multi_echo",
    "load_mask",
    "write_derivatives",
    "derivative_prefix",
    "parse_bids_name",
    "sidecar_path",
    "read_sidecar",
]
