"""VFA T1 mapping against the three OSIPI T1 reference sets, one test per case.

Data: ../shared/data/dce_osipi/T1_mapping (OSIPI DCE-DSC-MRI CodeCollection,
see the MANIFEST). Tolerance (OSIPI): |R1 - R1_ref| <= 0.05 /s + 0.05 |R1_ref|.
Unit quirks (MANIFEST): the QIBA R1 column is in /ms; prostate TR and T1 are in ms.

What each reference allows:

- brain (3T, R1 from a nonlinear fit of the same data): linear and nonlinear;
- QIBA T1 DRO (R1 is the ground truth of a noisy phantom): linear and nonlinear;
- prostate: the file has four references per voxel. ``nonlinear`` is compared
  with ``T1 nonlinear`` (the reference OSIPI tests), ``linear`` with
  ``T1 linear``, and the B1-corrected fits with ``T1 [non]linear B1cor``
  (B1 column in percent -> relative). One reference value,
  ``T1 linear B1cor`` of Pat1_voxel5, is inconsistent with its own row: B1 is
  100.5 %, so the correction must move T1 by about 1 % (the uncorrected linear
  T1 is 1230.8 ms), yet the reference is 1057.6 ms; that case is an expected
  failure (strict) with this reason.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

from oncomri.core.protocols import VariableFlipAngleProtocol
from oncomri.fitting import Status
from oncomri.models.t1 import VFAModel

ABS_TOL = 0.05  # 1/s
REL_TOL = 0.05


def _folder() -> Path:
    env = os.environ.get("ONCOMRI_SHARED_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"
    return root / "dce_osipi" / "T1_mapping"


def _numbers(text: str) -> np.ndarray:
    return np.array([float(v) for v in text.split()])


def _read(dataset: str):
    """(flip angles deg, TR s, signals (n, m), labels, {variant: (R1 ref /s, b1 or None)})."""
    path = _folder() / f"t1_{dataset}_data.csv"
    with path.open(newline="") as fh:
        rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(fh)]
    fa = {tuple(_numbers(r["FA"])) for r in rows}
    tr = {tuple(_numbers(r["TR"])) for r in rows}
    assert len(fa) == 1 and len(tr) == 1, "one protocol per file expected"
    fa_deg = np.array(next(iter(fa)))
    tr_value = float(next(iter(tr))[0])
    signals = np.array([_numbers(r["s"]) for r in rows])
    labels = [r["label"] for r in rows]
    if dataset == "prostate":
        tr_s = tr_value / 1000.0  # TR in ms
        b1 = np.array([float(r["B1"]) for r in rows]) / 100.0  # percent -> relative
        ref = {
            "linear": (1000.0 / np.array([float(r["T1 linear"]) for r in rows]), None),
            "nonlinear": (1000.0 / np.array([float(r["T1 nonlinear"]) for r in rows]), None),
            "linear-B1": (1000.0 / np.array([float(r["T1 linear B1cor"]) for r in rows]), b1),
            "nonlinear-B1": (1000.0 / np.array([float(r["T1 nonlinear B1cor"]) for r in rows]), b1),
        }
    else:
        tr_s = tr_value
        r1 = np.array([float(r["R1"]) for r in rows]) * (1000.0 if dataset == "quiba" else 1.0)
        ref = {"linear": (r1, None), "nonlinear": (r1, None)}
    return fa_deg, tr_s, signals, labels, ref


KNOWN_BAD_REFERENCE = {("prostate", "linear-B1", "Pat1_voxel5_prostaat")}


def _cases():
    cases = []
    for dataset in ("brain", "quiba", "prostate"):
        try:
            _, _, _, labels, ref = _read(dataset)
        except OSError:
            cases.append(pytest.param(dataset, "nonlinear", 0, "absent", id=f"{dataset}-absent"))
            continue
        for variant in ref:
            for i, label in enumerate(labels):
                marks = ()
                if (dataset, variant, label) in KNOWN_BAD_REFERENCE:
                    marks = pytest.mark.xfail(strict=True, reason=(
                        "reference 'T1 linear B1cor' = 1057.6 ms is inconsistent with B1 = "
                        "100.5 % and the uncorrected linear T1 of 1230.8 ms in the same row"))
                cases.append(pytest.param(dataset, variant, i, label,
                                          id=f"{dataset}-{variant}-{label}", marks=marks))
    return cases


_FITS: dict = {}


def _fit(dataset: str, variant: str):
    """R1 (/s) of every row of a dataset, fitted once per (dataset, variant)."""
    key = (dataset, variant)
    if key not in _FITS:
        fa_deg, tr_s, signals, _, ref = _read(dataset)
        r1_ref, b1 = ref[variant]
        order = np.argsort(fa_deg)
        proto = VariableFlipAngleProtocol(np.deg2rad(fa_deg[order]), tr_s)
        method = variant.split("-")[0]
        fit = VFAModel(proto, method=method).fit(signals[:, order], b1=b1)
        _FITS[key] = (fit, r1_ref)
    return _FITS[key]


@pytest.mark.parametrize("dataset, variant, index, label", _cases())
def test_osipi_vfa_r1(shared_data, dataset, variant, index, label):
    if label == "absent":
        pytest.skip(f"OSIPI T1 data {_folder()} is absent")
    fit, r1_ref = _fit(dataset, variant)
    ref = r1_ref[index]
    assert fit.status[index] == Status.OK
    assert abs(fit.r1[index] - ref) <= ABS_TOL + REL_TOL * abs(ref), (
        f"{label}: R1 {fit.r1[index]:.4f} /s vs reference {ref:.4f} /s")
