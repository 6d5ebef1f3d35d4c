"""Diffusion models (ADC, IVIM, DKI): the contract battery of DESIGN.md for every
model and method, noisy bias bounds, direction averaging and bad input.

Expected values come from the signal equations written out here with numpy
(not from the code under test) and Rician noise drawn here.
"""

import numpy as np
import pytest

from oncomri.core.errors import ProtocolError, ValidationError
from oncomri.core.protocols import DiffusionProtocol
from oncomri.fitting import Status
from oncomri.models.diffusion import ADCModel, DKIModel, IVIMModel, group_shells
from scipy.special import i0e, i1e

SIGMA = 20.0
SHAPE = (4, 3, 2)


def rician_mean_ref(a, sigma):
    """E[M] of a Rician magnitude, from scipy's Bessel functions (independent of the package)."""
    z = a * a / (4.0 * sigma * sigma)
    return sigma * np.sqrt(np.pi / 2) * ((1 + 2 * z) * i0e(z) + 2 * z * i1e(z))


def _grid(lo, hi, geometric=False):
    v = np.geomspace(lo, hi, 24) if geometric else np.linspace(lo, hi, 24)
    return v.reshape(SHAPE)


S0 = _grid(400.0, 3000.0)


def adc_ref(b, s0, adc):
    return s0[..., None] * np.exp(-adc[..., None] * b)


def ivim_ref(b, s0, f, d, dstar):
    f = f[..., None]
    return s0[..., None] * (f * np.exp(-dstar[..., None] * b) + (1 - f) * np.exp(-d[..., None] * b))


def dki_ref(b, s0, d, k):
    d = d[..., None]
    return s0[..., None] * np.exp(-b * d + b * b * d * d * k[..., None] / 6)


B_ADC = np.array([0.0, 50, 100, 200, 400, 600, 800, 1000])
B_IVIM = np.array([0.0, 10, 20, 30, 50, 75, 100, 150, 200, 300, 400, 600, 800, 1000])
B_DKI = np.array([0.0, 250, 500, 1000, 1500, 2000])


def _truth(cls, method):
    """(b, model kwargs, true maps {attribute: array}, amplitude) on the (4, 3, 2) grid.

    IVIM: D* in 0.05-0.15 mm²/s. The segmented method neglects the
    pseudo-diffusion term above b_threshold, so it is exact only where
    exp(-D* b_threshold) is negligible: with b_threshold = 400 s/mm² the
    neglected term is < f exp(-20) ~ 1e-9 of S0.
    """
    if cls is ADCModel:
        adc = _grid(0.2e-3, 3.5e-3, geometric=True)
        return B_ADC, {}, {"s0": S0, "adc": adc}, adc_ref(B_ADC, S0, adc)
    if cls is IVIMModel:
        f = _grid(0.05, 0.35)
        d = _grid(0.5e-3, 2.5e-3)
        dstar = _grid(0.05, 0.15, geometric=True)[::-1]
        kw = {"b_threshold": 400.0} if method == "segmented" else {}
        return (B_IVIM, kw, {"s0": S0, "f": f, "d": d, "dstar": dstar},
                ivim_ref(B_IVIM, S0, f, d, dstar))
    d = _grid(0.5e-3, 2.5e-3)
    k = _grid(1.5, 0.3)
    return B_DKI, {}, {"s0": S0, "d": d, "k": k}, dki_ref(B_DKI, S0, d, k)


CASES = [pytest.param(cls, m, id=f"{cls.__name__}-{m}")
         for cls in (ADCModel, IVIMModel, DKIModel) for m in cls.methods]


def _noiseless(cls, method, dtype=np.float64):
    b, kw, truth, amp = _truth(cls, method)
    data = rician_mean_ref(amp, SIGMA) if method == "ncexp" else amp
    return b, kw, truth, data.astype(dtype)


@pytest.mark.parametrize("cls, method", CASES)
def test_noiseless_recovery(cls, method):
    b, kw, truth, data = _noiseless(cls, method)
    fit = cls(b, method=method, **kw).fit(data, noise_sigma=SIGMA)
    for name, value in truth.items():
        np.testing.assert_allclose(getattr(fit, name), value, rtol=1e-4, err_msg=name)
    assert set(np.unique(fit.status)) <= {Status.OK, Status.AT_BOUND}
    assert np.all(fit.rsquared > 0.999999)


@pytest.mark.parametrize("cls, method", CASES)
def test_predict_reproduces_noiseless_data(cls, method):
    b, kw, _, data = _noiseless(cls, method)
    pred = cls(b, method=method, **kw).fit(data, noise_sigma=SIGMA).predict()
    assert pred.shape == data.shape
    np.testing.assert_allclose(pred, data, rtol=1e-4, atol=1e-4 * data.max())


@pytest.mark.parametrize("cls, method", CASES)
def test_mask_handling(cls, method):
    b, kw, truth, data = _noiseless(cls, method)
    mask = np.zeros(SHAPE, bool)
    mask[1:3, :, 1] = True
    model = cls(b, method=method, **kw)
    full = model.fit(data, noise_sigma=SIGMA)
    part = model.fit(data, mask=mask, noise_sigma=SIGMA)
    assert np.all(part.status[~mask] == Status.MASKED)
    for name in truth:
        assert np.all(np.isnan(getattr(part, name)[~mask]))
        np.testing.assert_allclose(getattr(part, name)[mask], getattr(full, name)[mask], rtol=1e-12)
    np.testing.assert_array_equal(part.status[mask], full.status[mask])


@pytest.mark.parametrize("cls, method", CASES)
@pytest.mark.parametrize("dtype, expected", [(np.float32, np.float32), (np.float64, np.float64),
                                             (np.int16, np.float32)])
def test_dtype_preserved(cls, method, dtype, expected):
    b, kw, truth, data = _noiseless(cls, method)
    data = (data * (10 if dtype == np.int16 else 1)).astype(dtype)
    fit = cls(b, method=method, **kw).fit(data, noise_sigma=SIGMA)
    for name in list(truth) + ["rsquared", "rmse"]:
        assert getattr(fit, name).dtype == expected
    assert fit.status.dtype == np.uint8
    assert fit.predict().dtype == expected
    for array, side in fit.output_maps().values():
        assert array.shape == SHAPE and "Units" in side


@pytest.mark.parametrize("cls, method", CASES)
def test_data_is_never_modified(cls, method):
    b, kw, _, data = _noiseless(cls, method, dtype=np.float32)
    data[0, 0, 0, 3] = np.nan
    before = data.copy()
    data.flags.writeable = False
    cls(b, method=method, **kw).fit(data, noise_sigma=SIGMA)
    np.testing.assert_array_equal(data, before)


@pytest.mark.parametrize("cls, method", CASES)
def test_invalid_voxels_are_flagged_not_raised(cls, method):
    b, kw, truth, data = _noiseless(cls, method)
    data = data.copy()
    data[0, 0, 0, 2] = np.nan
    data[0, 1, 0, 1] = np.inf
    data[0, 2, 0, 0] = -1.0
    data[1, 0, 0, :] = 0.0
    fit = cls(b, method=method, **kw).fit(data, noise_sigma=SIGMA)
    first = list(truth)[1]
    for idx in [(0, 0, 0), (0, 1, 0), (0, 2, 0)]:
        assert fit.status[idx] == Status.INVALID_DATA and np.isnan(getattr(fit, first)[idx])
    assert fit.status[1, 0, 0] == Status.FAILED and np.isnan(getattr(fit, first)[1, 0, 0])
    assert np.all(np.isfinite(getattr(fit, first)[2:]))


@pytest.mark.parametrize("cls, method", CASES)
def test_any_leading_shape_and_chunking(cls, method):
    b, kw, truth, data = _noiseless(cls, method)
    flat = data.reshape(-1, data.shape[-1])
    fit = cls(b, method=method, chunk_size=5, **kw).fit(flat, noise_sigma=SIGMA)
    name = list(truth)[1]
    assert getattr(fit, name).shape == (flat.shape[0],)
    np.testing.assert_allclose(getattr(fit, name), truth[name].reshape(-1), rtol=1e-4)


# ------------------------------------------------------------------ noise

def _rician(amplitude, sigma, seed):
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(amplitude.shape + (2,)) * sigma
    return np.hypot(amplitude + noise[..., 0], noise[..., 1])


def _median_bias(estimate, truth):
    return float(np.median(estimate / truth - 1.0))


N_NOISY = 3000


@pytest.mark.parametrize("method", list(ADCModel.methods))
def test_adc_noisy_bias(method):
    # SNR 50 at b = 0; ADC 1.5e-3 mm²/s (SNR 11 at b = 1000). Bound: |median bias| < 1.5 %.
    n = np.ones(N_NOISY)
    data = _rician(adc_ref(B_ADC, 1000 * n, 1.5e-3 * n), 20.0, seed=1)
    fit = ADCModel(B_ADC, method=method).fit(data, noise_sigma=20.0)
    assert abs(_median_bias(fit.adc, 1.5e-3)) < 0.015


def test_adc_noise_floor_method_removes_the_floor_bias():
    # Low SNR at high b (b up to 3000, SNR 20 at b = 0, 0.2 at b = 3000): the
    # Gaussian methods underestimate ADC (floor), ncexp does not.
    b = np.array([0.0, 500, 1000, 1500, 2000, 2500, 3000])
    n = np.ones(N_NOISY)
    data = _rician(adc_ref(b, 1000 * n, 1.5e-3 * n), 50.0, seed=2)
    bias = {m: _median_bias(ADCModel(b, method=m).fit(data, noise_sigma=50.0).adc, 1.5e-3)
            for m in ("loglin", "nlls", "ncexp")}
    assert abs(bias["ncexp"]) < 0.02
    assert bias["nlls"] < -0.03 and bias["loglin"] < -0.2


def test_ncexp_estimates_sigma_from_the_background():
    # tissue square in air; sigma 'auto' from the lowest-b image
    spatial = (40, 40, 1)
    s0 = np.zeros(spatial)
    s0[10:30, 10:30] = 1000.0
    adc = np.full(spatial, 1e-3)
    data = _rician(adc_ref(B_ADC, s0, adc), 20.0, seed=3)
    fit = ADCModel(B_ADC, method="ncexp").fit(data)
    assert abs(fit.noise_sigma / 20.0 - 1) < 0.1
    assert abs(_median_bias(fit.adc[10:30, 10:30], 1e-3)) < 0.02


@pytest.mark.parametrize("method", list(IVIMModel.methods))
@pytest.mark.parametrize("f, d, dstar", [(0.1, 1.0e-3, 0.05), (0.25, 1.2e-3, 0.02)])
def test_ivim_noisy_bias(method, f, d, dstar):
    # SNR 100 at b = 0. Bounds on |median bias|: f 5 %, D 2 %, D* 10 %.
    n = np.ones(N_NOISY)
    data = _rician(ivim_ref(B_IVIM, 1000 * n, f * n, d * n, dstar * n), 10.0, seed=4)
    fit = IVIMModel(B_IVIM, method=method).fit(data)
    assert abs(_median_bias(fit.f, f)) < 0.05
    assert abs(_median_bias(fit.d, d)) < 0.02
    assert abs(_median_bias(fit.dstar, dstar)) < 0.10


@pytest.mark.parametrize("method", list(IVIMModel.methods))
def test_ivim_bounds_hold_at_low_snr(method):
    # SNR 20, small f: f stays in [0, 1] (never negative) and D* >= D everywhere
    n = np.ones(N_NOISY)
    data = _rician(ivim_ref(B_IVIM, 1000 * n, 0.03 * n, 1.0e-3 * n, 0.03 * n), 50.0, seed=5)
    fit = IVIMModel(B_IVIM, method=method).fit(data)
    ok = np.isfinite(fit.f)
    assert ok.mean() > 0.99
    assert np.all(fit.f[ok] >= 0) and np.all(fit.f[ok] <= 1)
    assert np.all(fit.dstar[ok] >= fit.d[ok])
    assert np.any(fit.status == Status.AT_BOUND)  # f = 0 voxels say so


@pytest.mark.parametrize("method", list(DKIModel.methods))
@pytest.mark.parametrize("d, k", [(1.0e-3, 0.8), (1.5e-3, 0.5)])
def test_dki_noisy_bias(method, d, k):
    # SNR 100 at b = 0. Bounds on |median bias|: D 1 %, K 4 %.
    n = np.ones(N_NOISY)
    data = _rician(dki_ref(B_DKI, 1000 * n, d * n, k * n), 10.0, seed=6)
    fit = DKIModel(B_DKI, method=method).fit(data, noise_sigma=10.0)
    assert abs(_median_bias(fit.d, d)) < 0.01
    assert abs(_median_bias(fit.k, k)) < 0.04


# ------------------------------------------------------------------ shells

def test_directions_are_averaged_geometrically_into_the_mean_diffusivity():
    # three orthogonal directions per shell, anisotropic tissue: the trace-weighted
    # (geometric mean) signal decays with the mean of the three diffusivities
    rng = np.random.default_rng(7)
    d_xyz = rng.uniform(0.3e-3, 2.5e-3, (50, 3))
    b = np.array([0.0, 500, 500, 500, 1000, 1000, 1000])
    axis = np.array([0, 0, 1, 2, 0, 1, 2])
    data = 800 * np.exp(-b * d_xyz[:, axis])
    fit = ADCModel(DiffusionProtocol(b), method="nlls").fit(data)
    np.testing.assert_allclose(fit.adc, d_xyz.mean(axis=1), rtol=1e-6)
    assert ADCModel(b, method="ncexp").direction_average == "arithmetic"


def test_shells_group_nearby_b_values():
    shell_b, labels = group_shells([0, 1000, 995, 5, 1005, 2000, 2010])
    np.testing.assert_allclose(shell_b, [2.5, 1000, 2005])
    np.testing.assert_array_equal(labels, [0, 1, 1, 0, 1, 2, 2])
    model = ADCModel([0, 1000, 995, 5, 1005, 2000, 2010], b_range=(None, 1500))
    np.testing.assert_allclose(model.shell_b_values, [2.5, 1000])


def test_b_range_excludes_perfusion():
    # an IVIM signal fitted with ADC from b >= 200 gives D within 0.5 % (D* = 0.1 mm²/s)
    n = np.ones(10)
    data = ivim_ref(B_IVIM, 1000 * n, 0.2 * n, 1e-3 * n, 0.1 * n)
    fit = ADCModel(B_IVIM, method="nlls", b_range=(200, None)).fit(data)
    np.testing.assert_allclose(fit.adc, 1e-3, rtol=5e-3)
    assert fit.predict().shape == data.shape


# ------------------------------------------------------------------ bad input

def test_bad_input_is_one_clear_error():
    with pytest.raises(ValidationError, match="7 b-values"):
        ADCModel(np.linspace(0, 1000, 7)).fit(np.ones((3, 8)))
    with pytest.raises(ProtocolError, match="at least 3 distinct b-values"):
        DKIModel([0, 1000, 1000])
    with pytest.raises(ProtocolError, match="b_threshold"):
        IVIMModel([0, 10, 20, 50, 100, 400])
    with pytest.raises(ProtocolError, match="s/mm²"):
        ADCModel([0, 0.5, 1.0])
    with pytest.raises(ValidationError, match="mm²/s"):
        ADCModel([0, 1000], d_bounds=(0, 3.0))
    with pytest.raises(ValidationError, match="not known"):
        IVIMModel(B_IVIM, method="bayes")
    with pytest.raises(ValidationError, match="noise_sigma map"):
        ADCModel(B_ADC, method="ncexp").fit(np.ones((4, 8)), noise_sigma=np.ones(3))
