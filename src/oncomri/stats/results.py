"""The tidy result type shared by every statistical test in :mod:`oncomri.stats`.

One frozen dataclass, :class:`TestResult`, holds the answer of any
hypothesis test or estimate with its confidence interval: the test name, the
number of observations used per group, the estimate (mean difference,
median difference, correlation, fixed-effect coefficient, ...), its
confidence interval, the test statistic with its degrees of freedom, the
p-value and the alternative hypothesis. ``as_dict()`` returns plain
JSON-able values (``None`` in place of NaN) so the CLI can write it directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["TestResult"]


def _json_float(value: float | None) -> float | None:
    """A finite float, or ``None`` for None / NaN / +-Inf (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _jsonable(value: Any) -> Any:
    """Recursively convert numpy scalars / containers to plain JSON values."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not hasattr(value, "__len__"):  # numpy scalar
        value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    return _json_float(value)


@dataclass(frozen=True)
class TestResult:
    """The result of one statistical test or estimate.

    Attributes
    ----------
    test : str
        Name of the test, e.g. ``"paired t-test"``, ``"Welch t-test"``.
    n : Mapping[str, int]
        Number of observations *used* per group (after dropping NaN), e.g.
        ``{"baseline": 10, "24h": 10}`` or ``{"pairs": 10}``.
    estimate : float
        The point estimate (mean difference, Hodges–Lehmann shift,
        correlation coefficient, regression coefficient, ...), in the unit of
        the data (or unitless for correlations).
    estimate_name : str
        What ``estimate`` is, e.g. ``"mean difference (b - a)"``.
    ci_low, ci_high : float
        Confidence interval of the estimate (NaN where none is defined).
    ci_level : float
        Confidence level of the interval, e.g. 0.95.
    statistic : float
        The test statistic.
    statistic_name : str
        Its name, e.g. ``"t"``, ``"W"``, ``"U"``, ``"F"``, ``"H"``, ``"z"``.
    df : float or tuple of float or None
        Degrees of freedom of the statistic (a pair for F), ``None`` where
        the statistic has none.
    p_value : float
        The p-value (adjusted, for pairwise comparisons; see ``notes``).
    alternative : str
        ``"two-sided"``, ``"less"`` or ``"greater"``.
    notes : str
        Method details: CI method, NaN handling (how many were dropped),
        multiple-comparison correction, ...
    extra : Mapping[str, Any]
        Further named numbers specific to a test (e.g. ``r_squared``), all
        JSON-able.
    """

    __test__ = False  # not a pytest test class despite its name

    test: str
    n: Mapping[str, int]
    estimate: float
    estimate_name: str
    ci_low: float
    ci_high: float
    ci_level: float
    statistic: float
    statistic_name: str
    df: float | tuple[float, ...] | None
    p_value: float
    alternative: str = "two-sided"
    notes: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (NaN and Inf become ``None``)."""
        if self.df is None:
            df: Any = None
        elif isinstance(self.df, tuple):
            df = [_json_float(d) for d in self.df]
        else:
            df = _json_float(self.df)
        extra = {str(k): _jsonable(v) for k, v in self.extra.items()}
        return {
            "test": self.test,
            "n": {str(k): int(v) for k, v in self.n.items()},
            "estimate": _json_float(self.estimate),
            "estimate_name": self.estimate_name,
            "ci_low": _json_float(self.ci_low),
            "ci_high": _json_float(self.ci_high),
            "ci_level": float(self.ci_level),
            "statistic": _json_float(self.statistic),
            "statistic_name": self.statistic_name,
            "df": df,
            "p_value": _json_float(self.p_value),
            "alternative": self.alternative,
            "notes": self.notes,
            "extra": extra,
        }
