"""The contract battery of DESIGN.md, run on every relaxometry model and method in the registry.

The other models (T1, DCE, DSC, diffusion, CEST) run the same checks in their
own test files, with their own acquisitions.

Noiseless recovery (relative error < 1e-4), ``predict()`` reproduces the data,
mask handling, dtype preservation, data untouched, invalid voxels flagged.
"""

import numpy as np
import pytest

from oncomri.fitting import Status
from oncomri.models import MODELS, R2StarModel, T2Model, rician_mono_exponential

SIGMA = 20.0


def _cases():
    seen = set()
    for name, cls in MODELS.items():
        if cls not in (R2StarModel, T2Model):  # the other models have their own batteries
            continue
        if cls in seen:
            continue
        seen.add(cls)
        for method in cls.methods:
            yield pytest.param(cls, method, id=f"{name}-{method}")


CASES = list(_cases())


def _truth(cls):
    """Echo times and true maps on a (4, 3, 2) grid spanning the model's range."""
    if cls is T2Model:
        te = np.linspace(0.010, 0.120, 12)
        t = np.geomspace(0.012, 0.300, 24)
    else:
        te = np.linspace(0.001, 0.024, 12)
        t = np.geomspace(0.002, 0.100, 24)
    t = t.reshape(4, 3, 2)
    s0 = np.linspace(400.0, 3000.0, 24).reshape(4, 3, 2)
    return te, s0, 1.0 / t


def _noiseless(cls, method, dtype=np.float64):
    te, s0, rate = _truth(cls)
    if method == "ncexp":
        data = rician_mono_exponential(te, s0, rate, SIGMA)
    else:
        data = s0[..., None] * np.exp(-rate[..., None] * te)
    return te, s0, rate, data.astype(dtype)


@pytest.mark.parametrize("cls, method", CASES)
def test_noiseless_recovery(cls, method):
    te, s0, rate, data = _noiseless(cls, method)
    fit = cls(te, method=method).fit(data, noise_sigma=SIGMA)
    np.testing.assert_allclose(fit.rate, rate, rtol=1e-4)
    np.testing.assert_allclose(fit.s0, s0, rtol=1e-4)
    np.testing.assert_allclose(fit.time, 1.0 / rate, rtol=1e-4)
    assert set(np.unique(fit.status)) <= {Status.OK, Status.AT_BOUND}
    assert np.all(fit.rsquared > 0.999999)


@pytest.mark.parametrize("cls, method", CASES)
def test_predict_reproduces_noiseless_data(cls, method):
    te, _, _, data = _noiseless(cls, method)
    fit = cls(te, method=method).fit(data, noise_sigma=SIGMA)
    pred = fit.predict()
    assert pred.shape == data.shape
    np.testing.assert_allclose(pred, data, rtol=1e-4, atol=1e-4 * data.max())


@pytest.mark.parametrize("cls, method", CASES)
def test_mask_handling(cls, method):
    te, _, _, data = _noiseless(cls, method)
    mask = np.zeros(data.shape[:-1], bool)
    mask[1:3, :, 1] = True
    model = cls(te, method=method)
    full = model.fit(data, noise_sigma=SIGMA)
    part = model.fit(data, mask=mask, noise_sigma=SIGMA)
    assert np.all(part.status[~mask] == Status.MASKED)
    assert np.all(np.isnan(part.rate[~mask])) and np.all(np.isnan(part.s0[~mask]))
    np.testing.assert_allclose(part.rate[mask], full.rate[mask], rtol=1e-12)
    np.testing.assert_array_equal(part.status[mask], full.status[mask])


@pytest.mark.parametrize("cls, method", CASES)
@pytest.mark.parametrize("dtype, expected", [(np.float32, np.float32), (np.float64, np.float64),
                                             (np.int16, np.float32)])
def test_dtype_preserved(cls, method, dtype, expected):
    te, _, _, data = _noiseless(cls, method)
    data = (data * (10 if dtype == np.int16 else 1)).astype(dtype)
    fit = cls(te, method=method).fit(data, noise_sigma=SIGMA)
    for m in (fit.rate, fit.s0, fit.time, fit.rsquared, fit.rmse):
        assert m.dtype == expected
    assert fit.status.dtype == np.uint8
    assert fit.predict().dtype == expected
    for array, _ in fit.output_maps().values():
        assert array.shape == data.shape[:-1]


@pytest.mark.parametrize("cls, method", CASES)
def test_data_is_never_modified(cls, method):
    te, _, _, data = _noiseless(cls, method, dtype=np.float32)
    data[0, 0, 0, 3] = np.nan
    before = data.copy()
    data.flags.writeable = False  # a write attempt would raise
    cls(te, method=method).fit(data, noise_sigma=SIGMA)
    np.testing.assert_array_equal(data, before)


@pytest.mark.parametrize("cls, method", CASES)
def test_invalid_voxels_are_flagged_not_raised(cls, method):
    te, _, _, data = _noiseless(cls, method)
    data = data.copy()
    data[0, 0, 0, 2] = np.nan
    data[0, 1, 0, 5] = np.inf
    data[0, 2, 0, 0] = -1.0
    data[1, 0, 0, :] = 0.0
    fit = cls(te, method=method).fit(data, noise_sigma=SIGMA)
    for idx in [(0, 0, 0), (0, 1, 0), (0, 2, 0)]:
        assert fit.status[idx] == Status.INVALID_DATA and np.isnan(fit.rate[idx])
    assert fit.status[1, 0, 0] == Status.FAILED and np.isnan(fit.rate[1, 0, 0])
    assert np.all(np.isfinite(fit.rate[2:]))


@pytest.mark.parametrize("cls, method", CASES)
def test_any_leading_shape_and_chunking(cls, method):
    te, _, rate, data = _noiseless(cls, method)
    flat = data.reshape(-1, data.shape[-1])
    fit = cls(te, method=method, chunk_size=5).fit(flat, noise_sigma=SIGMA)
    assert fit.rate.shape == (flat.shape[0],)
    np.testing.assert_allclose(fit.rate, rate.reshape(-1), rtol=1e-4)
