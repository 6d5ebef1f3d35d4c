"""Study statistics: response criteria, group tests, correlation, mixed models, survival.

Pure functions on numbers and arrays; every result is a frozen dataclass
with ``as_dict()`` naming the test, n per group, estimate, CI and p.
"""

from .response import *  # noqa: F401,F403
from .response import __all__ as _response_all
from .results import TestResult
from .survival import KaplanMeierResult, kaplan_meier, kaplan_meier_by_group, log_rank_test
from .tests import (
    GroupComparison,
    kruskal_wallis,
    mann_whitney,
    mixed_model_repeated,
    one_way_anova,
    paired_t_test,
    pearson_correlation,
    spearman_correlation,
    welch_t_test,
    wilcoxon_signed_rank,
)

__all__ = [
    *_response_all,
    "TestResult", "GroupComparison",
    "paired_t_test", "wilcoxon_signed_rank", "welch_t_test", "mann_whitney",
    "one_way_anova", "kruskal_wallis", "pearson_correlation", "spearman_correlation",
    "mixed_model_repeated",
    "KaplanMeierResult", "kaplan_meier", "kaplan_meier_by_group", "log_rank_test",
]
