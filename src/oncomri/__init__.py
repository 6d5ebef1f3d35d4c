"""oncomri: quantitative MRI biomarkers for therapy studies.

From scanner files to maps (R2*, T2*, T2 ...), per-ROI measurements and
study-level statistics. See ``DESIGN.md`` in the shared folder for the layers.
"""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("oncomri")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
