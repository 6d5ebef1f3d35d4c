"""Accuracy of an estimated map against a phantom's truth, per true value."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["AccuracyRow", "accuracy_by_value"]

#: Normal-consistency factor of the median absolute deviation.
_MAD_TO_SD = 1.4826


@dataclass(frozen=True)
class AccuracyRow:
    """Bias and precision of an estimate for one true value.

    ``median_bias`` is ``median(estimate) / truth - 1``; ``precision`` is the
    robust coefficient of variation ``1.4826 MAD(estimate) / truth``
    (Rousseeuw & Croux, J Am Stat Assoc 1993;88:1273); ``failed`` is the
    fraction of voxels with no finite estimate. All three are fractions.
    """

    truth: float
    n: int
    median_bias: float
    precision: float
    failed: float


def accuracy_by_value(estimate, truth, *, values=None, mask=None) -> list[AccuracyRow]:
    """Median bias and robust precision of ``estimate`` for each distinct true value."""
    estimate = np.asarray(estimate, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    sel = np.isfinite(truth) if mask is None else (np.asarray(mask, bool) & np.isfinite(truth))
    if values is None:
        values = np.unique(truth[sel])
    rows = []
    for v in values:
        in_bin = sel & (truth == v)
        est = estimate[in_bin]
        good = est[np.isfinite(est)]
        n = int(in_bin.sum())
        if good.size:
            med = float(np.median(good))
            mad = float(np.median(np.abs(good - med)))
            rows.append(AccuracyRow(float(v), n, med / v - 1.0, _MAD_TO_SD * mad / v,
                                    1.0 - good.size / max(n, 1)))
        else:
            rows.append(AccuracyRow(float(v), n, np.nan, np.nan, 1.0))
    return rows
