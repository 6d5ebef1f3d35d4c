"""The study report: figures and one self-contained HTML file with the tidy tables.

* :func:`write_report` — ``report.html`` (figures embedded, opens offline)
  plus ``measurements.csv``, ``statistics.csv`` and the response tables.
* :class:`RepresentativeImage`, :func:`choose_representatives` — the maps
  shown per arm and timepoint (median subject of each arm).
* :class:`MethodsInfo` — what the generated methods paragraph describes.
* :mod:`oncomri.report.figures` — each figure as a function returning a
  matplotlib Figure.
"""

from . import figures
from .html import MethodsInfo, methods_text, write_report
from .images import MapPanel, RepresentativeImage, choose_representatives, load_panel

__all__ = [
    "MethodsInfo",
    "RepresentativeImage",
    "MapPanel",
    "choose_representatives",
    "load_panel",
    "methods_text",
    "write_report",
    "figures",
]
