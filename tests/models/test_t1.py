"""T1 mapping (VFA and inversion recovery): the contract battery and the physics.

Expected values come from closed forms written here (signal equations, the
Ernst angle, the IR null point), scipy, a Bloch simulation of a Look-Locker
readout, and Cramér–Rao bounds computed here by finite differences.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from oncomri.core.errors import ProtocolError, ValidationError
from oncomri.core.protocols import InversionRecoveryProtocol, VariableFlipAngleProtocol
from oncomri.fitting import Status
from oncomri.models.t1 import (
    IRModel,
    T1Fit,
    VFAModel,
    despot1_linear,
    inversion_recovery_signal,
    look_locker_t1,
    spgr_signal,
)

FA_DEG = np.array([2.0, 5.0, 10.0, 15.0, 20.0])
TR = 0.005
TI = np.array([0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4])
SHAPE = (4, 3, 2)


def _spgr(fa_rad, m0, r1, tr, b1=1.0):
    """Independent spoiled-GRE formula (Ernst & Anderson 1966 / Fram 1987)."""
    m0, r1, b1 = (np.asarray(v, float)[..., None] for v in (m0, r1, b1))
    a = b1 * fa_rad
    e1 = np.exp(-tr * r1)
    return m0 * np.sin(a) * (1 - e1) / (1 - np.cos(a) * e1)


def _truth():
    t1 = np.geomspace(0.15, 4.0, 24).reshape(SHAPE)
    m0 = np.linspace(500.0, 3000.0, 24).reshape(SHAPE)
    b1 = np.linspace(0.75, 1.25, 24).reshape(SHAPE)
    return t1, m0, b1


def _vfa_model(method):
    return VFAModel(VariableFlipAngleProtocol(np.deg2rad(FA_DEG), TR), method=method)


def _ir_case(method, signal, dtype=np.float64):
    """Noiseless IR data for a model configuration: (model, data, t1, m0)."""
    t1, m0, _ = _truth()
    if method == "look_locker":
        ti = np.arange(0.05, 6.0, 0.12)
        t1s = 0.6 * t1  # apparent T1*; A = M0 T1*/T1, B = M0 + A (Deichmann & Haase)
        a = m0 * t1s / t1
        s = a[..., None] - (m0 + a)[..., None] * np.exp(-ti / t1s[..., None])
    else:
        ti = TI
        b = 2.0 * m0 if method == "two_parameter" else 1.85 * m0
        s = m0[..., None] - b[..., None] * np.exp(-ti / t1[..., None])
    if signal == "magnitude":
        s = np.abs(s)
    model = IRModel(InversionRecoveryProtocol(ti), method=method, signal=signal)
    return model, s.astype(dtype), t1, m0


VFA_METHODS = ["linear", "nonlinear"]
IR_CASES = [(m, s) for m in ("two_parameter", "three_parameter", "look_locker")
            for s in ("magnitude", "real")]


def _all_cases():
    for m in VFA_METHODS:
        for b1 in (False, True):
            yield pytest.param("vfa", m, b1, id=f"vfa-{m}{'-b1' if b1 else ''}")
    for m, s in IR_CASES:
        yield pytest.param("ir", m, s, id=f"ir-{m}-{s}")


def _case(kind, method, option, dtype=np.float64):
    """(fit callable taking data/mask, data, true t1, true m0)."""
    if kind == "vfa":
        t1, m0, b1 = _truth()
        b1 = b1 if option else None
        data = _spgr(np.deg2rad(FA_DEG), m0, 1 / t1, TR, 1.0 if b1 is None else b1).astype(dtype)
        model = _vfa_model(method)
        return (lambda d, mask=None: model.fit(d, mask=mask, b1=b1)), data, t1, m0
    model, data, t1, m0 = _ir_case(method, option, dtype)
    return (lambda d, mask=None: model.fit(d, mask=mask)), data, t1, m0


# ----------------------------------------------------------------- pure functions


def test_spgr_signal_peaks_at_the_ernst_angle():
    r1 = 1.0 / 1.2
    fa = np.deg2rad(np.linspace(0.5, 40.0, 4000))
    s = spgr_signal(fa, 1.0, r1, TR)
    ernst = np.arccos(np.exp(-TR * r1))  # Ernst angle
    assert abs(fa[np.argmax(s)] - ernst) < np.deg2rad(0.02)
    np.testing.assert_allclose(spgr_signal(fa, 2.0, r1, TR, 0.9), _spgr(fa, 2.0, r1, TR, 0.9)[...],
                               rtol=1e-12)


def test_inversion_recovery_null_point_and_look_locker_formula():
    r1 = 1.0 / 0.8
    null = np.log(2.0) / r1  # two-parameter IR crosses zero at TI = T1 ln 2
    s = inversion_recovery_signal([null], 1.0, 2.0, r1)
    assert abs(s[0]) < 1e-12
    assert inversion_recovery_signal([0.0], 1.0, 2.0, r1, magnitude=True)[0] == pytest.approx(1.0)
    np.testing.assert_allclose(look_locker_t1(0.5, 1.0, 3.0), 1.0)
    assert np.isnan(look_locker_t1(0.5, 1.0, 0.9))


def test_despot1_matches_scipy_linregress():
    rng = np.random.default_rng(3)
    fa = np.deg2rad(FA_DEG)
    rows = _spgr(fa, rng.uniform(500, 2000, 20), 1 / rng.uniform(0.3, 3, 20), TR)
    rows = rows * (1 + 0.01 * rng.standard_normal(rows.shape))
    m0, r1, slope, intercept = despot1_linear(rows, fa, TR)
    for i in range(rows.shape[0]):
        ref = stats.linregress(rows[i] / np.tan(fa), rows[i] / np.sin(fa))
        assert slope[i] == pytest.approx(ref.slope, rel=1e-10)
        assert intercept[i] == pytest.approx(ref.intercept, rel=1e-8, abs=1e-8)
        assert r1[i] == pytest.approx(-np.log(ref.slope) / TR, rel=1e-9)
        assert m0[i] == pytest.approx(ref.intercept / (1 - ref.slope), rel=1e-8)


# ----------------------------------------------------------------- contract battery


@pytest.mark.parametrize("kind, method, option", list(_all_cases()))
def test_noiseless_recovery(kind, method, option):
    fit_fn, data, t1, m0 = _case(kind, method, option)
    fit = fit_fn(data)
    assert isinstance(fit, T1Fit)
    np.testing.assert_allclose(fit.t1, t1, rtol=1e-4)
    np.testing.assert_allclose(fit.r1, 1 / t1, rtol=1e-4)
    np.testing.assert_allclose(fit.m0, m0, rtol=1e-4)
    assert np.all(fit.status == Status.OK)
    assert np.all(fit.rsquared > 0.999999)


@pytest.mark.parametrize("kind, method, option", list(_all_cases()))
def test_predict_reproduces_noiseless_data(kind, method, option):
    fit_fn, data, _, _ = _case(kind, method, option)
    pred = fit_fn(data).predict()
    assert pred.shape == data.shape
    np.testing.assert_allclose(pred, data, rtol=1e-4, atol=1e-4 * np.abs(data).max())


@pytest.mark.parametrize("kind, method, option", list(_all_cases()))
def test_mask_and_data_untouched(kind, method, option):
    fit_fn, data, t1, _ = _case(kind, method, option)
    before = data.copy()
    mask = np.zeros(SHAPE, bool)
    mask[1:3, :, 1] = True
    fit = fit_fn(data, mask=mask)
    np.testing.assert_array_equal(data, before)
    assert np.all(fit.status[~mask] == Status.MASKED)
    assert np.all(np.isnan(fit.t1[~mask])) and np.all(np.isnan(fit.m0[~mask]))
    np.testing.assert_allclose(fit.t1[mask], t1[mask], rtol=1e-4)


@pytest.mark.parametrize("kind, method, option", list(_all_cases()))
def test_float32_stays_float32(kind, method, option):
    fit_fn, data, t1, _ = _case(kind, method, option, dtype=np.float32)
    fit = fit_fn(data)
    for arr in (fit.t1, fit.r1, fit.m0, fit.rsquared, fit.rmse, fit.predict()):
        assert arr.dtype == np.float32
    assert fit.status.dtype == np.uint8
    np.testing.assert_allclose(fit.t1, t1, rtol=1e-4)
    fit64 = fit_fn(data.astype(np.float64))
    assert fit64.t1.dtype == np.float64


def test_invalid_voxels_are_flagged_not_raised():
    t1, m0, b1 = _truth()
    data = _spgr(np.deg2rad(FA_DEG), m0, 1 / t1, TR, b1)
    data[0, 0, 0, 2] = np.nan
    data[0, 0, 1] = 0.0
    b1 = b1.copy()
    b1[1, 1, 1] = np.nan
    b1[2, 2, 0] = -1.0
    fit = _vfa_model("nonlinear").fit(data, b1=b1)
    assert fit.status[0, 0, 0] == Status.INVALID_DATA
    assert fit.status[0, 0, 1] == Status.FAILED
    assert fit.status[1, 1, 1] == Status.INVALID_DATA
    assert fit.status[2, 2, 0] == Status.INVALID_DATA
    for idx in [(0, 0, 0), (0, 0, 1), (1, 1, 1), (2, 2, 0)]:
        assert np.isnan(fit.t1[idx])
    assert np.sum(fit.status == Status.OK) == 20


def test_out_of_range_t1_hits_the_bounds():
    a = np.deg2rad(FA_DEG)
    # T1 -> 0 (E -> 0): S = M0 sin(a), DESPOT1 slope 0 -> R1 infinite -> upper bound;
    # T1 -> inf (E -> 1): S ~ cot(a/2), DESPOT1 slope 1 -> R1 = 0 -> lower bound.
    data = np.stack([1000.0 * np.sin(a), 10.0 / np.tan(a / 2)])
    for method in VFA_METHODS:
        fit = VFAModel(VariableFlipAngleProtocol(a, TR), method=method,
                       r1_bounds=(0.05, 100.0)).fit(data)
        assert np.all(fit.status == Status.AT_BOUND)
        np.testing.assert_allclose(fit.r1, [100.0, 0.05])
        assert np.all(np.isfinite(fit.m0))


def test_ir_signed_data_with_negative_samples_is_fitted():
    model, data, t1, _ = _ir_case("three_parameter", "real")
    assert np.any(data < 0)
    fit = model.fit(data)
    np.testing.assert_allclose(fit.t1, t1, rtol=1e-4)
    # the same numbers as magnitude data would be invalid (negative samples)
    fit_mag = IRModel(model.protocol, method="three_parameter").fit(data)
    assert np.all(fit_mag.status[np.any(data < 0, axis=-1)] == Status.INVALID_DATA)


def test_polarity_restoration_covers_every_null_position():
    # nulls (T1 ln 2 / efficiency) before the first TI, between every pair of TIs and after the last
    t1 = np.geomspace(0.05, 12.0, 60)
    s = np.abs(1000.0 - 1900.0 * np.exp(-TI / t1[:, None]))
    fit = IRModel(InversionRecoveryProtocol(TI)).fit(s)
    np.testing.assert_allclose(fit.t1, t1, rtol=1e-4)
    np.testing.assert_allclose(fit.inversion_efficiency, 1.9, rtol=1e-4)


def test_look_locker_correction_on_a_bloch_simulated_readout():
    """Discrete Look-Locker readout: pulses of 5 deg every 50 ms after an ideal inversion.

    Between pulses Mz relaxes exactly (Bloch); each pulse scales Mz by cos(a)
    and samples Mz sin(a). The correction T1 = T1*(B/A - 1) is exact only for a
    continuous readout; for 5 deg pulses the simulated error is about -0.2 %.
    """
    alpha, tau, n, m0 = np.deg2rad(5.0), 0.05, 60, 1000.0
    t1 = np.array([0.3, 0.8, 1.5, 2.5])
    mz = np.full(t1.shape, -m0)
    samples, times = [], []
    for k in range(n):
        samples.append(mz * np.sin(alpha))
        times.append(k * tau)
        mz = mz * np.cos(alpha)
        mz = m0 + (mz - m0) * np.exp(-tau / t1)
    data = np.abs(np.array(samples).T)
    times = np.array(times)
    times[0] = 1e-6  # protocol needs increasing, the first sample at the inversion
    fit = IRModel(InversionRecoveryProtocol(times), method="look_locker").fit(data)
    np.testing.assert_allclose(fit.t1, t1, rtol=5e-3)
    assert np.all(fit.t1star < 0.99 * t1) and np.max(1 - fit.t1star / t1) > 0.1  # uncorrected
    assert np.all(fit.status == Status.OK)


# ----------------------------------------------------------------- noise


def _crlb_sd(fun, params, sigma, eps=1e-6):
    """Cramér–Rao bound of each parameter's SD for Gaussian noise, J by central differences."""
    params = np.asarray(params, float)
    cols = []
    for k in range(params.size):
        h = eps * max(abs(params[k]), 1.0)
        up, dn = params.copy(), params.copy()
        up[k] += h
        dn[k] -= h
        cols.append((fun(up) - fun(dn)) / (2 * h))
    jac = np.column_stack(cols)
    cov = np.linalg.inv(jac.T @ jac) * sigma**2
    return np.sqrt(np.diag(cov))


@pytest.mark.parametrize("method, max_bias, sd_range", [
    ("nonlinear", 0.01, (0.85, 1.2)),
    ("linear", 0.03, (0.85, 1.6)),
])
def test_vfa_noisy_bias_and_precision(method, max_bias, sd_range):
    rng = np.random.default_rng(42)
    fa = np.deg2rad(FA_DEG)
    m0, r1, sigma, n = 10000.0, 1.0, 5.0, 4000
    clean = _spgr(fa, m0, r1, TR)
    data = clean + sigma * rng.standard_normal((n, fa.size))
    fit = _vfa_model(method).fit(data)
    assert np.all(fit.status == Status.OK)
    crlb = _crlb_sd(lambda p: _spgr(fa, p[0], p[1], TR), [m0, r1], sigma)[1]
    bias = fit.r1.mean() / r1 - 1
    assert abs(bias) < max_bias
    assert sd_range[0] * crlb < fit.r1.std() < sd_range[1] * crlb


def test_ir_magnitude_noisy_bias_and_precision():
    rng = np.random.default_rng(7)
    m0, b, t1, sigma, n = 1000.0, 1900.0, 1.0, 10.0, 3000
    clean = m0 - b * np.exp(-TI / t1)
    noisy = np.abs(clean + sigma * rng.standard_normal((n, TI.size))
                   + 1j * sigma * rng.standard_normal((n, TI.size)))  # Rician magnitude
    fit = IRModel(InversionRecoveryProtocol(TI)).fit(noisy)
    assert np.all(fit.status == Status.OK)
    crlb = _crlb_sd(lambda p: p[0] - p[1] * np.exp(-TI * p[2]), [m0, b, 1 / t1], sigma)[2]
    assert abs(fit.r1.mean() * t1 - 1) < 0.01
    assert 0.85 * crlb < fit.r1.std() < 1.25 * crlb


# ----------------------------------------------------------------- outputs and validation


def test_output_maps_have_units():
    fit_fn, data, _, _ = _case("ir", "look_locker", "magnitude")
    maps = fit_fn(data).output_maps()
    assert maps["T1map"][1]["Units"] == "s"
    assert maps["R1map"][1]["Units"] == "1/s"
    assert "M0map" in maps and "desc-t1fit_status" in maps and "desc-lookLocker_T1map" in maps
    for arr, side in maps.values():
        assert arr.shape == SHAPE and "Units" in side and "Description" in side
    vfa = _case("vfa", "linear", False)
    vmaps = vfa[0](vfa[1]).output_maps()
    assert vmaps["T1map"][1]["FlipAngle"] == pytest.approx(FA_DEG.tolist())
    assert vmaps["T1map"][1]["RepetitionTime"] == TR


def test_validation_errors_name_the_input():
    proto = VariableFlipAngleProtocol(np.deg2rad(FA_DEG), TR)
    with pytest.raises(ProtocolError, match="VariableFlipAngleProtocol"):
        VFAModel(InversionRecoveryProtocol(TI))
    with pytest.raises(ProtocolError, match="InversionRecoveryProtocol"):
        IRModel(proto)
    with pytest.raises(ValidationError, match="not known"):
        VFAModel(proto, method="despot2")
    with pytest.raises(ValidationError, match="r1_bounds"):
        VFAModel(proto, r1_bounds=(2.0, 1.0))
    with pytest.raises(ValidationError, match="last axis"):
        VFAModel(proto).fit(np.ones((3, 4)))
    with pytest.raises(ValidationError, match="percent"):
        VFAModel(proto).fit(np.ones((2, 5)), b1=np.array([99.0, 101.0]))
    with pytest.raises(ValidationError, match="spatial shape"):
        VFAModel(proto).fit(np.ones((2, 5)), b1=np.ones(3))
    with pytest.raises(ProtocolError, match="at least 3"):
        IRModel(InversionRecoveryProtocol([0.1, 1.0]), method="three_parameter")
    with pytest.raises(ValidationError, match="signal"):
        IRModel(InversionRecoveryProtocol(TI), signal="complex")
