"""OSIPI DCE reference data (../shared/data/dce_osipi), one test per reference case.

Tolerances from the data MANIFEST (OSIPI DCE-DSC-MRI_CodeCollection): a case
passes when |estimate - reference| <= a_tol + r_tol |reference| for every
parameter: Ktrans and PS a_tol 0.005 /min r_tol 0.1; ve a_tol 0.05; vp a_tol
0.025; Fp a_tol 5 mL/100 mL/min r_tol 0.1; delay a_tol 1 s. Fitting bounds
as there (Ktrans 0-5 /min, ve 0-1, vp 0-1, delay -10..10 s). AIF curves:
a_tol 1e-4 mM, r_tol 0.01; signal to concentration 1e-5 + 1e-5 relative.

"With delay" for the Tofts DROs follows the OSIPI suite: the tissue curve is
delayed by 5 frames (zeros in front), so the reference delay is t[5] - t[0].
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from oncomri.core import DCEProtocol
from oncomri.models.aif import ArterialInputFunction, parker_aif, preclinical_aif
from oncomri.models.dce import DCEModel, signal_to_concentration

pd = pytest.importorskip("pandas")

TOL = {  # parameter -> (column scale SI->reference unit, a_tol, r_tol)
    "ktrans": (60.0, 0.005, 0.1),
    "ps": (60.0, 0.005, 0.1),
    "ve": (1.0, 0.05, 0.0),
    "vp": (1.0, 0.025, 0.0),
    "fp": (6000.0, 5.0, 0.1),
}

# (file, method, parameter -> reference column, fit_delay, shift tissue by 5 frames)
MODEL_SETS = {
    "tofts": ("dce_DRO_data_tofts.csv", "tofts", {"ktrans": "Ktrans", "ve": "ve"}, False, False),
    "tofts_delay": ("dce_DRO_data_tofts.csv", "tofts", {"ktrans": "Ktrans", "ve": "ve"}, True, True),
    "etofts": ("dce_DRO_data_extended_tofts.csv", "extended_tofts",
               {"ktrans": "Ktrans", "ve": "ve", "vp": "vp"}, False, False),
    "etofts_delay": ("dce_DRO_data_extended_tofts.csv", "extended_tofts",
                     {"ktrans": "Ktrans", "ve": "ve", "vp": "vp"}, True, True),
    "patlak": ("patlak_sd_0.02_delay_0.csv", "patlak", {"ktrans": "ps", "vp": "vp"}, False, False),
    "patlak_delay": ("patlak_sd_0.02_delay_5.csv", "patlak", {"ktrans": "ps", "vp": "vp"}, True, False),
    "2cxm": ("2cxm_sd_0.001_delay_0.csv", "2cxm", {"fp": "fp", "ps": "ps", "ve": "ve", "vp": "vp"},
             False, False),
    "2cxm_delay": ("2cxm_sd_0.001_delay_5.csv", "2cxm",
                   {"fp": "fp", "ps": "ps", "ve": "ve", "vp": "vp"}, True, False),
    "2cum": ("2cum_sd_0.0025_delay_0.csv", "2cum", {"fp": "fp", "ps": "ps", "vp": "vp"}, False, False),
    "2cum_delay": ("2cum_sd_0.0025_delay_5.csv", "2cum", {"fp": "fp", "ps": "ps", "vp": "vp"},
                   True, False),
}

# Case counts per file, fixed here so that the parametrisation does not read the data.
N_CASES = {"dce_DRO_data_tofts.csv": 25, "dce_DRO_data_extended_tofts.csv": 15,
           "patlak_sd_0.02_delay_0.csv": 9, "patlak_sd_0.02_delay_5.csv": 9,
           "2cxm_sd_0.001_delay_0.csv": 24, "2cxm_sd_0.001_delay_5.csv": 24,
           "2cum_sd_0.0025_delay_0.csv": 27, "2cum_sd_0.0025_delay_5.csv": 27}


def _arr(text) -> np.ndarray:
    return np.array(str(text).split(), dtype=np.float64)


@functools.lru_cache(maxsize=None)
def _table(folder: str, name: str):
    return pd.read_csv(f"{folder}/{name}", encoding="utf-8-sig")


@functools.lru_cache(maxsize=None)
def _fitted(folder: str, key: str):
    """Fit every case of one set; returns a list of (label, estimates, references)."""
    file, method, refs, fit_delay, shift = MODEL_SETS[key]
    df = _table(f"{folder}/DCEmodels", file)
    out = []
    for _, row in df.iterrows():
        t = _arr(row["t"])
        c = _arr(row["C"] if "C" in row else row["C_t"])
        ca = _arr(row["ca"] if "ca" in row else row["cp_aif"])
        ta = _arr(row["ta"]) if "ta" in row else t
        ref_delay = float(row.get("arterialdelay", row.get("arterial_delay", 0.0)))
        if shift:
            c = np.concatenate([np.zeros(5), c[:-5]])
            ref_delay += t[5] - t[0]
        fit = DCEModel(t, ArterialInputFunction(ta, ca), method=method,
                       fit_delay=fit_delay).fit(c[None, :])
        est = {p: float(getattr(fit, p)[0]) * TOL[p][0] for p in refs}
        ref = {p: float(row[col]) for p, col in refs.items()}
        if fit_delay:
            est["delay"] = float(fit.delay[0])
            ref["delay"] = ref_delay
        out.append((row["label"], est, ref, int(fit.status[0])))
    return out


def _model_cases():
    for key, (file, *_rest) in MODEL_SETS.items():
        for i in range(N_CASES[file]):
            yield pytest.param(key, i, id=f"{key}-case{i + 1}")


@pytest.mark.parametrize("key, index", list(_model_cases()))
def test_osipi_model_case(shared_data, key, index):
    folder = str(shared_data / "dce_osipi")
    label, est, ref, status = _fitted(folder, key)[index]
    failures = []
    for p, value in est.items():
        a_tol, r_tol = (1.0, 0.0) if p == "delay" else TOL[p][1:]
        if not abs(value - ref[p]) <= a_tol + r_tol * abs(ref[p]):
            failures.append(f"{p}: {value:.5g} vs {ref[p]:.5g} (tol {a_tol} + {r_tol} rel)")
    assert not failures, f"{label}: " + "; ".join(failures)


def test_osipi_case_counts(shared_data):
    for file, n in N_CASES.items():
        assert len(_table(str(shared_data / "dce_osipi" / "DCEmodels"), file)) == n


# ---------------------------------------------------------------- AIF curves

AIF_SETS = {
    "parker": ("ParkerAIF_ref.csv", parker_aif, 60.0, 11),
    "parker_delay": ("ParkerAIF_ref_with_delay.csv", parker_aif, 60.0, 9),
    "preclinical": ("preclinicalAIF_ref.csv", preclinical_aif, 1.0, 10),
    "preclinical_delay": ("preclinicalAIF_ref_delay.csv", preclinical_aif, 1.0, 8),
}


def _aif_cases():
    for key, (_f, _fn, _s, n) in AIF_SETS.items():
        for i in range(n):
            yield pytest.param(key, i, id=f"{key}-{i + 1}")


@pytest.mark.parametrize("key, index", list(_aif_cases()))
def test_osipi_population_aif(shared_data, key, index):
    file, func, to_seconds, n = AIF_SETS[key]
    df = _table(str(shared_data / "dce_osipi" / "PopulationAIF_DCE"), file)
    groups = list(df.groupby("label", sort=False))
    assert len(groups) == n
    label, g = groups[index]
    t_s = g["time"].to_numpy() * to_seconds  # Parker reference times are in minutes
    delay = float(g["delay"].iloc[0]) if "delay" in g else 0.0
    got = func(t_s, delay=delay)
    np.testing.assert_allclose(got, g["Cb"].to_numpy(), rtol=0.01, atol=1e-4, err_msg=label)


# ------------------------------------------------------ signal -> concentration

@pytest.mark.parametrize("index", range(5), ids=[f"vox_{i + 1}" for i in range(5)])
def test_osipi_signal_to_concentration(shared_data, index):
    row = _table(str(shared_data / "dce_osipi" / "SI_to_Conc"), "SI2Conc_data.csv").iloc[index]
    s = _arr(row["s"])
    ref = _arr(row["conc"])
    protocol = DCEProtocol(np.arange(s.size, dtype=float), np.deg2rad(float(row["FA"])),
                           float(row["TR"]), int(row["numbaselinepts"]))
    # as the OSIPI suite: the first frame is not part of the baseline nor assessed
    conc = signal_to_concentration(s, protocol, t1_baseline=float(row["T1base"]),
                                   relaxivity=float(row["r1"]), baseline_start=1)
    np.testing.assert_allclose(conc[1:], ref[1:], rtol=1e-5, atol=1e-5, err_msg=row["label"])
