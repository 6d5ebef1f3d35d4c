import math

import numba
import numpy as np
import pytest
from scipy.optimize import least_squares

from oncomri.fitting import (
    Status,
    exponential_arlo,
    exponential_loglinear,
    fit_voxelwise,
    levenberg_marquardt,
)
from oncomri.fitting.voxelwise import screen_rows

TE = np.linspace(0.001, 0.024, 12)
T = np.array([0.0005, 0.001, 0.002, 0.01, 0.05, 0.1, 0.3])


def _decays():
    s0 = np.linspace(100.0, 3000.0, T.size)
    return s0, s0[:, None] * np.exp(-TE[None] / T[:, None])


@pytest.mark.parametrize("weighted", [False, True])
def test_loglinear_is_exact_on_noiseless_decays(weighted):
    s0, y = _decays()
    a, r = exponential_loglinear(y, TE, weighted=weighted)
    np.testing.assert_allclose(r, 1 / T, rtol=1e-9)
    np.testing.assert_allclose(a, s0, rtol=1e-8)


def test_loglinear_ignores_non_positive_samples_and_flags_underdetermined_rows():
    _, y = _decays()
    y = y.copy()
    y[3, 5:] = 0.0  # noise floor clipped to zero: fit on the first 5 echoes
    y[4, 1:] = 0.0  # one usable sample: undetermined
    a, r = exponential_loglinear(y, TE)
    assert r[3] == pytest.approx(1 / T[3], rel=1e-9)
    assert np.isnan(r[4]) and np.isnan(a[4])


def test_arlo_is_exact_on_noiseless_decays_even_when_t_is_below_the_echo_spacing():
    s0, y = _decays()
    a, r = exponential_arlo(y, TE)
    np.testing.assert_allclose(r, 1 / T, rtol=1e-9)
    np.testing.assert_allclose(a, s0, rtol=1e-8)


def test_arlo_reports_an_unresolvable_decay_as_infinite_rate():
    y = np.array([[1000.0] + [0.0] * 11])  # gone after the first echo
    _, r = exponential_arlo(y, TE)
    assert np.isinf(r[0])


@numba.njit
def _gaussian(p, x, c, f, J):
    xs = x[0]
    for j in range(xs.shape[0]):
        d = xs[j] - p[1]
        e = math.exp(-0.5 * d * d / (p[2] * p[2]))
        f[j] = p[0] * e
        J[j, 0] = e
        J[j, 1] = p[0] * e * d / (p[2] * p[2])
        J[j, 2] = p[0] * e * d * d / (p[2] ** 3)


def test_levenberg_marquardt_matches_scipy_on_another_model():
    """The solver is generic: a Gaussian peak, noisy, against scipy's least_squares."""
    rng = np.random.default_rng(0)
    x = np.linspace(-5, 5, 40)
    truth = np.column_stack([rng.uniform(1, 3, 50), rng.uniform(-1, 1, 50), rng.uniform(0.5, 2, 50)])
    y = truth[:, :1] * np.exp(-0.5 * (x - truth[:, 1:2]) ** 2 / truth[:, 2:] ** 2)
    y += 0.05 * rng.standard_normal(y.shape)
    p0 = np.tile([2.0, 0.0, 1.0], (50, 1))
    p, cost, status, _ = levenberg_marquardt(_gaussian, y, p0, x=x[None], xtol=1e-12, ftol=1e-14)
    assert np.all(status == Status.OK)
    for i in range(50):
        ref = least_squares(lambda q: q[0] * np.exp(-0.5 * (x - q[1]) ** 2 / q[2] ** 2) - y[i],
                            p0[i], xtol=1e-14, ftol=1e-14, gtol=1e-14)
        np.testing.assert_allclose(np.abs(p[i]), np.abs(ref.x), rtol=1e-6)
        assert cost[i] == pytest.approx(2 * ref.cost, rel=1e-8)


def test_levenberg_marquardt_respects_bounds_and_reports_them():
    x = np.linspace(-5, 5, 40)
    y = 2.0 * np.exp(-0.5 * (x - 0.5) ** 2)[None]
    p, _, status, _ = levenberg_marquardt(_gaussian, y, np.array([[1.0, 0.0, 1.5]]), x=x[None],
                                          lower=[0, -1, 0.1], upper=[10, 0.2, 5])
    assert p[0, 1] == 0.2 and status[0] == Status.AT_BOUND


def test_levenberg_marquardt_reports_non_convergence_and_failure():
    x = np.linspace(-5, 5, 40)
    y = np.vstack([2.0 * np.exp(-0.5 * (x - 0.5) ** 2), np.full(40, np.nan)])
    _, _, status, n_iter = levenberg_marquardt(_gaussian, y, np.array([[1.0, -2.0, 3.0]] * 2),
                                               x=x[None], max_iter=1)
    assert status[0] == Status.NOT_CONVERGED and n_iter[0] == 1
    assert status[1] == Status.FAILED


def test_screen_rows_codes():
    rows = np.array([[1.0, 2.0], [np.nan, 1.0], [1.0, -1.0], [np.inf, 1.0], [0.0, 0.0], [0.0, 1.0]],
                    dtype=np.float32)
    np.testing.assert_array_equal(
        screen_rows(rows),
        [Status.OK, Status.INVALID_DATA, Status.INVALID_DATA, Status.INVALID_DATA, Status.FAILED, Status.OK])


def test_fit_voxelwise_is_independent_of_chunk_size_and_respects_mask():
    rng = np.random.default_rng(3)
    data = rng.uniform(1, 10, (7, 5, 3, 4)).astype(np.float32)
    mask = rng.random((7, 5, 3)) > 0.3

    def func(rows, aux):
        return {"mean": rows.mean(axis=1) + aux["bias"], "status": np.zeros(len(rows), np.uint8)}

    kw = dict(outputs={"mean": np.float64, "status": np.uint8}, mask=mask,
              aux={"bias": np.full((7, 5, 3), 0.5)})
    a = fit_voxelwise(data, func, chunk_size=4, **kw)
    b = fit_voxelwise(data, func, chunk_size=10_000, **kw)
    np.testing.assert_array_equal(a["mean"], b["mean"])
    np.testing.assert_allclose(a["mean"][mask], data[mask].mean(axis=1) + 0.5, rtol=1e-6)
    assert np.all(np.isnan(a["mean"][~mask])) and np.all(a["status"][~mask] == Status.MASKED)


@numba.njit
def _line(p, x, c, f, J):
    for j in range(x.shape[1]):
        f[j] = p[0] + p[1] * x[0, j]
        J[j, 0] = 1.0
        J[j, 1] = x[0, j]


def test_solver_of_an_importable_model_is_generated_once_in_the_cache_folder(tmp_path, monkeypatch):
    from oncomri.fitting import compile_solver

    monkeypatch.setenv("ONCOMRI_CACHE_DIR", str(tmp_path))
    x = np.linspace(0, 1, 5)[None]
    y = np.array([[1.0, 1.5, 2.0, 2.5, 3.0]])
    p, _, status, _ = levenberg_marquardt(_line, y, np.zeros((1, 2)), x=x)
    np.testing.assert_allclose(p[0], [1.0, 2.0], rtol=1e-8)
    generated = list((tmp_path / "kernels").glob("lm_line_*.py"))
    assert len(generated) == 1 and "import _line as model" in generated[0].read_text()
    assert compile_solver(_line) is compile_solver(_line)


def test_a_closure_model_is_compiled_in_memory_with_the_same_result():
    slope = 2.0

    @numba.njit
    def closure(p, x, c, f, J):
        for j in range(x.shape[1]):
            f[j] = p[0] + slope * p[1] * x[0, j]
            J[j, 0] = 1.0
            J[j, 1] = slope * x[0, j]

    x = np.linspace(0, 1, 5)[None]
    y = np.array([[1.0, 1.5, 2.0, 2.5, 3.0]])
    p, _, _, _ = levenberg_marquardt(closure, y, np.zeros((1, 2)), x=x)
    np.testing.assert_allclose(p[0], [1.0, 1.0], rtol=1e-8)


def test_solver_cache_key_changes_with_the_models_source(tmp_path, monkeypatch):
    """numba does not track callees in other files: the generated module's key must."""
    from oncomri.fitting import lm

    monkeypatch.setattr(lm, "_model_fingerprint", lambda model: "edited")
    monkeypatch.setenv("ONCOMRI_CACHE_DIR", str(tmp_path))
    lm.compile_solver.cache_clear()
    try:
        x = np.linspace(0, 1, 5)[None]
        levenberg_marquardt(_line, np.array([[1.0, 1.5, 2.0, 2.5, 3.0]]), np.zeros((1, 2)), x=x)
        edited = {p.name for p in (tmp_path / "kernels").glob("lm_line_*.py")}
        monkeypatch.setattr(lm, "_model_fingerprint", lambda model: "original")
        lm.compile_solver.cache_clear()
        levenberg_marquardt(_line, np.array([[1.0, 1.5, 2.0, 2.5, 3.0]]), np.zeros((1, 2)), x=x)
        both = {p.name for p in (tmp_path / "kernels").glob("lm_line_*.py")}
        assert len(edited) == 1 and len(both) == 2
    finally:
        lm.compile_solver.cache_clear()
