"""Relaxometry beyond the contract: noise-floor behaviour, T2 options, the registry."""

import numpy as np
import pytest

from oncomri.core import MultiEchoProtocol, NoiseEstimateError, ProtocolError, ValidationError
from oncomri.fitting import Status
from oncomri.models import MODELS, R2StarModel, T2Model, estimate_noise_sigma
from oncomri.sim import accuracy_by_value, relaxometry_phantom

VALUES = (0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1)


@pytest.fixture(scope="module")
def phantom():
    """The issue's acceptance phantom: SNR 50 at TE = 0, 12 echoes 1-24 ms (TE1 <= T2*/2)."""
    return relaxometry_phantom(shape=(48, 64, 4), values=VALUES, snr=50.0, rng=7)


@pytest.fixture(scope="module")
def accuracy(phantom):
    out = {}
    for method in R2StarModel.methods:
        fit = R2StarModel(phantom.protocol, method=method).fit(
            phantom.data, mask=phantom.mask, noise_sigma=phantom.sigma)
        out[method] = {r.truth: r for r in accuracy_by_value(fit.t2star, phantom.relaxation_time,
                                                             values=phantom.values)}
    return out


def test_noise_floor_aware_method_is_unbiased_from_2_to_100_ms(accuracy):
    for v, row in accuracy["ncexp"].items():
        assert abs(row.median_bias) < 0.02, (v, row)
        assert row.precision < 0.12, (v, row)
        assert row.failed == 0


def test_noise_floor_aware_method_with_estimated_sigma(phantom):
    fit = R2StarModel(phantom.protocol).fit(phantom.data, mask=phantom.mask, noise_sigma="auto")
    assert fit.noise_sigma == pytest.approx(phantom.sigma, rel=0.03)
    for row in accuracy_by_value(fit.t2star, phantom.relaxation_time, values=phantom.values):
        assert abs(row.median_bias) < 0.02, row


def test_plain_methods_are_biased_at_short_t2star(accuracy):
    """Where the signal reaches the noise floor the usual fits overestimate T2*."""
    assert accuracy["loglin"][0.002].median_bias > 1.0
    assert accuracy["wloglin"][0.002].median_bias > 0.5
    assert accuracy["nlls"][0.002].median_bias > 0.02
    assert accuracy["arlo"][0.002].median_bias > 0.03


@pytest.mark.parametrize("method, low, bound", [
    ("loglin", 0.0075, 0.02), ("wloglin", 0.01, 0.02), ("arlo", 0.005, 0.02),
    ("nlls", 0.0075, 0.02), ("nlls_offset", 0.0075, 0.03)])
def test_every_method_is_unbiased_where_the_decay_stays_above_the_noise(accuracy, method, low, bound):
    for v, row in accuracy[method].items():
        if low <= v <= (0.02 if method == "nlls_offset" else 0.1):
            assert abs(row.median_bias) < bound, (method, v, row)
            assert row.precision < 0.15, (method, v, row)


def test_t2_drop_first_echo_removes_stimulated_echo_bias():
    te = np.linspace(0.01, 0.12, 12)
    t2 = np.array([0.04, 0.08, 0.15])
    data = 1000.0 * np.exp(-te / t2[:, None])
    data[:, 0] *= 0.8  # first echo off the decay (imperfect refocusing)
    biased = T2Model(te, method="nlls").fit(data)
    clean = T2Model(te, method="nlls", drop_first_echo=True).fit(data)
    np.testing.assert_allclose(clean.t2, t2, rtol=1e-4)
    assert np.all(np.abs(biased.t2 / t2 - 1) > 0.01)
    assert clean.predict().shape == data.shape


def test_registry_and_method_table():
    assert MODELS["r2star"] is R2StarModel and MODELS["t2star"] is R2StarModel
    assert MODELS["t2"] is T2Model
    assert {"loglin", "wloglin", "arlo", "nlls", "nlls_offset", "ncexp"} <= set(R2StarModel.methods)
    with pytest.raises(ValidationError, match="choose one of"):
        R2StarModel([0.001, 0.002], method="magic")


def test_a_callable_method_is_accepted():
    te = np.linspace(0.001, 0.024, 12)
    data = 100.0 * np.exp(-te / 0.02)[None]

    def constant(rows, echo_times, ctx):
        n = rows.shape[0]
        return {"s0": np.full(n, 100.0), "rate": np.full(n, 50.0),
                "status": np.zeros(n, np.uint8), "rss": np.zeros(n)}

    fit = R2StarModel(te, method=constant).fit(data)
    assert fit.model.method == "constant" and fit.r2star[0] == 50.0


def test_arlo_needs_evenly_spaced_echoes():
    with pytest.raises(ProtocolError, match="evenly"):
        R2StarModel(MultiEchoProtocol([0.001, 0.002, 0.004, 0.008]), method="arlo")


def test_data_must_match_the_protocol():
    with pytest.raises(ValidationError, match="12 echoes"):
        R2StarModel(np.linspace(0.001, 0.024, 12)).fit(np.ones((3, 3, 10)), noise_sigma=1.0)
    with pytest.raises(ValidationError, match="magnitude"):
        R2StarModel([0.001, 0.002]).fit(np.ones((3, 2), complex), noise_sigma=1.0)


def test_noise_sigma_map_equals_scalar_when_constant(phantom):
    model = R2StarModel(phantom.protocol)
    sub = phantom.data[:, :8]
    a = model.fit(sub, noise_sigma=phantom.sigma)
    b = model.fit(sub, noise_sigma=np.full(sub.shape[:-1], phantom.sigma))
    np.testing.assert_allclose(a.r2star, b.r2star, rtol=1e-12, equal_nan=True)


def test_rate_at_upper_bound_is_flagged():
    te = np.linspace(0.001, 0.024, 12)
    data = np.zeros((1, 12))
    data[0, 0] = 1000.0  # gone by the second echo: faster than 10 / TE1
    fit = R2StarModel(te, method="arlo").fit(data)
    assert fit.status[0] == Status.AT_BOUND and fit.r2star[0] == pytest.approx(10 / 0.001)


def test_noise_estimation_from_background_mask_and_failure_without_air(phantom):
    sigma = estimate_noise_sigma(phantom.data, background=~phantom.mask)
    assert sigma == pytest.approx(phantom.sigma, rel=0.02)
    no_air = relaxometry_phantom(shape=(16, 16, 2), snr=50, background_fraction=0.0)
    with pytest.raises(NoiseEstimateError, match="give the noise sigma"):
        estimate_noise_sigma(no_air.data)
    with pytest.raises(NoiseEstimateError):
        estimate_noise_sigma(phantom.data, background=np.zeros(phantom.mask.shape, bool))


@pytest.mark.parametrize("background_fraction", [0.02, 0.25])
def test_automatic_noise_estimate_on_float_and_integer_images(background_fraction):
    ph = relaxometry_phantom(shape=(64, 64, 8), snr=50, background_fraction=background_fraction, rng=3)
    assert estimate_noise_sigma(ph.data) == pytest.approx(ph.sigma, rel=0.04)
    # int16 scanner data with sigma of 3 units: quantised background
    quantised = np.round(ph.data * (3.0 / ph.sigma)).astype(np.int16)
    assert estimate_noise_sigma(quantised) == pytest.approx(3.0, rel=0.04)
