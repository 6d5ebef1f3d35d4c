"""Study statistics: response criteria, group tests, correlation, mixed models, survival.

Pure functions on numbers and arrays; every result is a frozen dataclass
with ``as_dict()`` naming the test, n per group, estimate, CI and p.
"""

from .response import *  # noqa: F401,F403
from .response import __all__ as _response_all

__all__ = [*_response_all]
