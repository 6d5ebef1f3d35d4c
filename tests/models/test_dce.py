"""DCE models: exact convolution, Jacobians, contract battery, signal conversion, model-free."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import quad

from oncomri.core import DCEProtocol, ProtocolError, ValidationError
from oncomri.fitting import Status
from oncomri.models import dce
from oncomri.models.aif import ArterialInputFunction, population_aif
from oncomri.models.dce import (
    DCEModel,
    convolve_exponential,
    extended_tofts,
    model_free_measures,
    model_free_output_maps,
    relaxivity,
    signal_to_concentration,
    spgr_signal,
    two_compartment_exchange,
    two_compartment_uptake,
)

T = np.arange(0.0, 300.0, 2.5)
AIF = population_aif("parker", T, onset=20.0, hematocrit=0.42)
TRUTH = {  # method -> parameters (SI) of a 2 x 3 grid
    "tofts": {"ktrans": [[0.002, 0.004, 0.006], [0.001, 0.003, 0.008]],
              "ve": [[0.2, 0.3, 0.4], [0.15, 0.5, 0.25]]},
    "extended_tofts": {"ktrans": [[0.002, 0.004, 0.006], [0.001, 0.003, 0.008]],
                       "ve": [[0.2, 0.3, 0.4], [0.15, 0.5, 0.25]],
                       "vp": [[0.02, 0.05, 0.01], [0.08, 0.03, 0.04]]},
    "patlak": {"ktrans": [[0.0005, 0.001, 0.002], [0.0, 0.0015, 0.0008]],
               "vp": [[0.02, 0.05, 0.01], [0.08, 0.03, 0.04]]},
    "2cxm": {"fp": [[0.004, 0.006, 0.008], [0.005, 0.003, 0.007]],
             "ps": [[0.001, 0.002, 0.0015], [0.0025, 0.001, 0.002]],
             "ve": [[0.2, 0.3, 0.4], [0.15, 0.35, 0.25]],
             "vp": [[0.05, 0.08, 0.06], [0.1, 0.04, 0.07]]},
    "2cum": {"fp": [[0.004, 0.006, 0.008], [0.005, 0.003, 0.007]],
             "ps": [[0.0005, 0.001, 0.0015], [0.0002, 0.001, 0.0008]],
             "vp": [[0.05, 0.08, 0.06], [0.1, 0.04, 0.07]]},
}
METHODS = list(TRUTH)


def _curves(method, delay=None):
    params = [np.asarray(v) for v in TRUTH[method].values()]
    return dce._curves(method, T, AIF, params, delay)


# ------------------------------------------------------------ convolution

def test_exact_convolution_matches_quadrature():
    """The recursion equals the integral of the piecewise-linear AIF (scipy quad), shifted too."""
    rng = np.random.default_rng(3)
    ta = np.sort(rng.uniform(0, 100, 30))
    aif = ArterialInputFunction(ta, rng.uniform(0, 5, 30))
    t = np.sort(rng.uniform(0, 120, 25))
    for k, d in [(0.0, 0.0), (0.01, 0.0), (0.3, 3.7), (2.0, -4.2), (1e-5, 1.3)]:
        got = convolve_exponential(t, aif, k, delay=d)
        ref = []
        for tj in t:
            lo = ta[0] + d
            if tj <= lo:
                ref.append(0.0)
                continue
            pts = [p for p in ta + d if lo < p < tj]
            ref.append(quad(lambda u: aif.at(u - d)[0] * np.exp(-k * (tj - u)), lo, tj,
                            points=pts or None, limit=200, epsabs=1e-12, epsrel=1e-12)[0])
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-11)


def test_two_compartment_limits():
    """2CXM with huge ve approaches the 2CUM; 2CUM with PS = 0 is vp-free flow only."""
    c_x = two_compartment_exchange(T, AIF, 0.005, 0.001, 1e6, 0.05)
    c_u = two_compartment_uptake(T, AIF, 0.005, 0.001, 0.05)
    np.testing.assert_allclose(c_x, c_u, rtol=1e-4, atol=1e-7)
    # 2CXM at high flow approaches the extended Tofts with Ktrans = PS
    c_hf = two_compartment_exchange(T, AIF, 50.0, 0.002, 0.3, 0.05)
    np.testing.assert_allclose(c_hf, extended_tofts(T, AIF, 0.002, 0.3, 0.05), rtol=2e-3, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("with_delay", [False, True])
def test_kernel_jacobian_matches_finite_differences(method, with_delay):
    spec = dce.DCE_METHODS[method]
    p = np.array([np.asarray(v)[0, 1] for v in TRUTH[method].values()] + ([2.7] if with_delay else []))
    x = dce._pack(T + 0.3, AIF, 1.0)
    m = T.size
    f = np.empty(m)
    J = np.empty((m, p.size))
    spec.kernel(p, x, np.zeros(0), f, J)
    for i in range(p.size):
        h = 1e-6 * max(abs(p[i]), 1e-3)
        a, b = p.copy(), p.copy()
        a[i] += h
        b[i] -= h
        fa, fb, Jd = np.empty(m), np.empty(m), np.empty((m, p.size))
        spec.kernel(a, x, np.zeros(0), fa, Jd)
        spec.kernel(b, x, np.zeros(0), fb, Jd)
        num = (fa - fb) / (2 * h)
        np.testing.assert_allclose(J[:, i], num, rtol=1e-5, atol=1e-6 * np.abs(num).max())


# ------------------------------------------------------------ contract battery

@pytest.mark.parametrize("method", METHODS)
def test_noiseless_recovery_and_predict(method):
    data = _curves(method)
    fit = DCEModel(T, AIF, method=method).fit(data)
    for name, truth in TRUTH[method].items():
        truth = np.asarray(truth)
        np.testing.assert_allclose(getattr(fit, name), truth, rtol=1e-4, atol=1e-4 * truth.max(),
                                   err_msg=name)
    assert set(np.unique(fit.status)) <= {Status.OK, Status.AT_BOUND}
    np.testing.assert_allclose(fit.predict(), data, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["tofts", "extended_tofts", "patlak"])
def test_noiseless_recovery_with_fitted_delay(method):
    data = _curves(method, delay=np.full((2, 3), 4.3))
    fit = DCEModel(T, AIF, method=method, fit_delay=True).fit(data)
    np.testing.assert_allclose(fit.delay, 4.3, atol=1e-3)
    np.testing.assert_allclose(fit.ktrans, np.asarray(TRUTH[method]["ktrans"]), rtol=1e-4, atol=1e-8)
    assert "delaymap" in fit.output_maps()


def test_noisy_extended_tofts_bias_within_bounds():
    """500 noisy curves (sd 0.01 mM): median Ktrans, ve, vp bias below 2 %."""
    rng = np.random.default_rng(7)
    n = 500
    truth = {"ktrans": np.full(n, 0.004), "ve": np.full(n, 0.3), "vp": np.full(n, 0.05)}
    data = extended_tofts(T, AIF, truth["ktrans"], truth["ve"], truth["vp"])
    data = data + rng.normal(0, 0.01, data.shape)
    fit = DCEModel(T, AIF, method="extended_tofts").fit(data)
    for name in truth:
        rel = np.median(getattr(fit, name)) / truth[name][0] - 1
        assert abs(rel) < 0.02, (name, rel)
    assert np.percentile(np.abs(fit.ktrans / truth["ktrans"] - 1), 90) < 0.05


def test_signal_domain_fit_recovers_parameters():
    protocol = DCEProtocol(T, np.deg2rad(15.0), 0.005, 8, 3.0)
    conc = _curves("extended_tofts")
    m0 = np.linspace(500, 1500, 6).reshape(2, 3)
    t10 = np.array([[1.2, 0.9, 1.5], [1.0, 1.3, 0.8]])
    sig = spgr_signal(1 / t10[..., None] + 4.5 * conc, flip_angle=protocol.flip_angle,
                      repetition_time=0.005, m0=m0[..., None])
    # baseline frames are pre-contrast (AIF onset at 20 s = frame 8)
    fit = DCEModel(protocol, AIF, method="extended_tofts").fit(sig, t1_baseline=t10, relaxivity=4.5)
    np.testing.assert_allclose(fit.ktrans, np.asarray(TRUTH["extended_tofts"]["ktrans"]), rtol=1e-4)
    np.testing.assert_allclose(fit.predict(), sig, rtol=1e-5)


def test_mask_dtype_and_invalid_voxels():
    data = _curves("extended_tofts").astype(np.float32)
    data[0, 0, 5] = np.nan
    mask = np.array([[True, True, False], [True, True, True]])
    before = data.copy()
    fit = DCEModel(T, AIF).fit(data, mask=mask)
    np.testing.assert_array_equal(np.isnan(data), np.isnan(before))
    assert fit.ktrans.dtype == np.float32 and fit.predict().dtype == np.float32
    assert fit.status[0, 2] == Status.MASKED and np.isnan(fit.ktrans[0, 2])
    assert fit.status[0, 0] == Status.INVALID_DATA and np.isnan(fit.ve[0, 0])
    assert np.isfinite(fit.ktrans[1]).all()
    maps = fit.output_maps()
    assert {"Ktransmap", "vemap", "vpmap", "kepmap", "desc-dcefit_status"} <= set(maps)
    assert maps["Ktransmap"][1]["Units"] == "1/s" and maps["vemap"][1]["Units"] == "1"
    assert "delaymap" not in maps


def test_two_compartment_output_maps():
    fit = DCEModel(T, AIF, method="2cxm").fit(_curves("2cxm"))
    maps = fit.output_maps()
    assert {"Fpmap", "PSmap", "vemap", "vpmap", "Ktransmap"} <= set(maps)
    fp, ps = np.asarray(TRUTH["2cxm"]["fp"]), np.asarray(TRUTH["2cxm"]["ps"])
    np.testing.assert_allclose(fit.ktrans, fp * ps / (fp + ps), rtol=1e-3)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ProtocolError, match="must increase"):
        DCEProtocol([0, 2, 1, 3], 0.2, 0.005, 1)
    with pytest.raises(ProtocolError, match="degrees"):
        DCEProtocol(T, 15.0, 0.005, 4)
    with pytest.raises(ProtocolError, match="milliseconds"):
        DCEProtocol(T, 0.2, 5.0, 4)
    with pytest.raises(ValidationError, match="frames"):
        DCEModel(T, AIF).fit(np.zeros((2, T.size + 1)))
    with pytest.raises(ValidationError, match="method"):
        DCEModel(T, AIF, method="nope")
    with pytest.raises(ProtocolError, match="no tabulated r1"):
        relaxivity("ferumoxytol", 7.0)
    assert relaxivity("Gadovist", 3.0) == pytest.approx(4.97)
    assert relaxivity("gadoterate", 1.5) == pytest.approx(3.32)


# ------------------------------------------------------------ signal conversion

def test_signal_to_concentration_inverts_spgr():
    protocol = DCEProtocol(T, np.deg2rad(20.0), 0.004, 8, 1.5)
    conc = _curves("extended_tofts")
    t10 = 1.1
    sig = spgr_signal(1 / t10 + 3.3 * conc, flip_angle=protocol.flip_angle,
                      repetition_time=0.004, m0=1000.0).astype(np.float32)
    got = signal_to_concentration(sig, protocol, t1_baseline=t10, relaxivity=3.3)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, conc, atol=2e-4)
    with pytest.raises(ProtocolError, match="milliseconds"):
        signal_to_concentration(sig, protocol, t1_baseline=1100.0, relaxivity=3.3)
    over = sig.copy()
    over[0, 0, 20] = 1e6  # above the fully relaxed signal: not invertible
    assert np.isnan(signal_to_concentration(over, protocol, t1_baseline=t10, relaxivity=3.3)[0, 0, 20])


# ------------------------------------------------------------ model-free

def test_model_free_measures_closed_form():
    t = np.arange(0.0, 200.0, 5.0)
    c = np.clip((t - 20.0) * 0.01, 0, None)  # ramp from 20 s, slope 0.01 mM/s
    c = np.minimum(c, 0.5)  # plateau at 0.5 mM from 70 s
    m = model_free_measures(c[None], t, onset=20.0, iauc_times=(30.0, 60.0, 500.0))
    assert m["IAUC30"][0] == pytest.approx(0.5 * 0.01 * 30**2)
    assert m["IAUC60"][0] == pytest.approx(0.5 * 0.5 * 50 + 0.5 * 10)
    assert np.isnan(m["IAUC500"][0])  # beyond the end of the series
    assert m["peak"][0] == pytest.approx(0.5)
    assert m["ttp"][0] == pytest.approx(50.0)
    assert m["washin"][0] == pytest.approx(0.01)
    maps = model_free_output_maps(m, onset=20.0)
    assert maps["IAUC60map"][1]["Units"] == "mM*s" and maps["TTPmap"][1]["Units"] == "s"
