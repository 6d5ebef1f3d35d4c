"""Detection limit: the CRLB of R2*, its Monte Carlo check, the chain to cells per voxel."""

import json
import math

import numpy as np
import pytest

from oncomri.core import ValidationError
from oncomri.models import R2StarModel
from oncomri.sim import decay_series
from oncomri.sim.detection import (
    ROSE_CRITERION,
    detection_limit,
    mono_exponential_fisher_information,
    r2star_crlb,
)

TE2 = [0.005, 0.015]
# Two echoes, R2* = 50 1/s: e1 = exp(-0.25) = 0.7788008, e2 = exp(-0.75) = 0.4723666;
# sigma(R2*) = sqrt(1/e1^2 + 1/e2^2) / (SNR dTE) = sqrt(e^0.5 + e^1.5) / (SNR * 0.01)
#            = sqrt(1.6487213 + 4.4816891) / (100 * 0.01) = sqrt(6.1304104) = 2.4759665 at SNR 100
SIGMA2_SNR100 = 2.4759665

CHAIN = dict(voxel_size_mm=1.0, echo_times_s=TE2, snr=100.0, iron_per_cell_pg=10.0,
             relaxivity_r2star_l_per_mmol_s=50.0, baseline_t2star_s=0.02)


def test_two_echo_crlb_closed_form():
    assert r2star_crlb(TE2, r2star_per_s=50.0, snr=100.0) == pytest.approx(SIGMA2_SNR100, rel=1e-7)
    # the bound scales as 1/SNR
    assert r2star_crlb(TE2, r2star_per_s=50.0, snr=50.0) == pytest.approx(2 * SIGMA2_SNR100, rel=1e-7)
    # arrays broadcast
    out = r2star_crlb(TE2, r2star_per_s=np.array([50.0, 50.0]), snr=np.array([100.0, 50.0]))
    np.testing.assert_allclose(out, [SIGMA2_SNR100, 2 * SIGMA2_SNR100], rtol=1e-7)


def test_fisher_information_two_echoes_by_hand():
    """S0 = 1, sigma = 0.01, R2* = 50: I = 1e4 [[e1^2 + e2^2, -(TE1 e1^2 + TE2 e2^2)],
    [., TE1^2 e1^2 + TE2^2 e2^2]] with e1^2 = e^-0.5 = 0.6065307, e2^2 = e^-1.5 = 0.2231302."""
    info = mono_exponential_fisher_information(TE2, s0=1.0, r2star_per_s=50.0, sigma=0.01)
    expected = 1e4 * np.array([
        [0.6065307 + 0.2231302, -(0.005 * 0.6065307 + 0.015 * 0.2231302)],
        [-(0.005 * 0.6065307 + 0.015 * 0.2231302), 0.005**2 * 0.6065307 + 0.015**2 * 0.2231302]])
    np.testing.assert_allclose(info, expected, rtol=1e-6)
    assert math.sqrt(np.linalg.inv(info)[1, 1]) == pytest.approx(SIGMA2_SNR100, rel=1e-6)


def test_crlb_equals_inverse_fisher_for_many_echoes():
    te = np.arange(1, 13) * 2e-3
    info = mono_exponential_fisher_information(te, s0=500.0, r2star_per_s=80.0, sigma=10.0)
    assert r2star_crlb(te, r2star_per_s=80.0, snr=50.0) == pytest.approx(
        math.sqrt(np.linalg.inv(info)[1, 1]), rel=1e-9)


@pytest.mark.parametrize("te, seed", [(np.arange(1, 9) * 2e-3, 1), (np.array(TE2), 2)])
def test_crlb_matches_monte_carlo_nlls(te, seed):
    """4000 noisy decays (T2* 20 ms, SNR 200, Rician) fitted by NLLS: SD within 10 % of the CRLB."""
    n, snr = 4000, 200.0
    data = decay_series(te, np.full(n, 1000.0), np.full(n, 0.02), sigma=1000.0 / snr, rng=seed)
    fit = R2StarModel(te, method="nlls").fit(data)
    r = fit.r2star.astype(np.float64)
    assert np.all(np.isfinite(r))
    assert abs(np.mean(r) - 50.0) < 0.1          # unbiased at this SNR
    assert np.std(r, ddof=1) == pytest.approx(r2star_crlb(te, r2star_per_s=50.0, snr=snr), rel=0.10)


def test_chain_by_hand():
    """k = 5, single: dR2* = 5 * 2.4759665 = 12.379833 1/s; [Fe] = 12.379833 / 50 = 0.24759665 mM;
    1 mm3 = 1e-6 L -> 2.4759665e-7 mmol = 2.4759665e-10 mol * 55.845 g/mol = 1.3827e-8 g
    = 13827.04 pg -> / 10 pg = 1382.704 cells."""
    d = detection_limit(**CHAIN, k_sd=5.0, design="single")
    assert d.sigma_r2star_per_s == pytest.approx(SIGMA2_SNR100, rel=1e-7)
    assert d.baseline_r2star_per_s == pytest.approx(50.0)
    assert d.delta_r2star_min_per_s == pytest.approx(12.379833, rel=1e-6)
    assert d.iron_concentration_min_mmol_l == pytest.approx(0.24759665, rel=1e-6)
    assert d.iron_mass_per_voxel_pg == pytest.approx(13827.04, rel=1e-6)
    assert d.cells_per_voxel == pytest.approx(1382.704, rel=1e-6)
    assert d.cells_per_mm3 == pytest.approx(1382.704, rel=1e-6)
    assert d.voxel_size_mm == (1.0, 1.0, 1.0)
    # pre/post difference of two independent scans: sqrt(2) more
    diff = detection_limit(**CHAIN, k_sd=5.0, design="difference")
    assert diff.delta_r2star_min_per_s == pytest.approx(12.379833 * math.sqrt(2), rel=1e-6)
    assert diff.cells_per_voxel == pytest.approx(1382.704 * math.sqrt(2), rel=1e-6)
    json.dumps(diff.as_dict())


def test_exact_difference_accounts_for_the_post_scan():
    exact = detection_limit(**CHAIN, design="difference_exact")
    approx = detection_limit(**CHAIN, design="difference")
    d = exact.delta_r2star_min_per_s
    # it solves d = k sqrt(sigma(R0)^2 + sigma(R0 + d)^2)
    assert d == pytest.approx(ROSE_CRITERION * math.hypot(
        exact.sigma_r2star_per_s, r2star_crlb(TE2, r2star_per_s=50.0 + d, snr=100.0)), rel=1e-9)
    assert exact.sigma_r2star_post_per_s > exact.sigma_r2star_per_s
    assert d > approx.delta_r2star_min_per_s


def test_detection_limit_phantom_difference_is_k_sds():
    """Pre voxels at R2* 50, post voxels at 50 + dR2*_min ('difference_exact', k = 5), both
    fitted by NLLS at SNR 200: mean(post - pre) / SD(post - pre) is k within 10 %."""
    te = np.arange(1, 9) * 2e-3
    lim = detection_limit(voxel_size_mm=0.5, echo_times_s=te, snr=200.0, iron_per_cell_pg=10.0,
                          relaxivity_r2star_l_per_mmol_s=50.0, baseline_t2star_s=0.02,
                          design="difference_exact")
    n = 4000
    t_post = 1.0 / (50.0 + lim.delta_r2star_min_per_s)
    pre = decay_series(te, np.full(n, 1000.0), np.full(n, 0.02), sigma=5.0, rng=3)
    post = decay_series(te, np.full(n, 1000.0), np.full(n, t_post), sigma=5.0, rng=4)
    model = R2StarModel(te, method="nlls")
    diff = (model.fit(post).r2star.astype(np.float64) - model.fit(pre).r2star.astype(np.float64))
    assert np.mean(diff) / np.std(diff, ddof=1) == pytest.approx(5.0, rel=0.10)


def test_scaling_with_voxel_size_and_snr():
    small = detection_limit(**{**CHAIN, "voxel_size_mm": 0.5})
    big = detection_limit(**{**CHAIN, "voxel_size_mm": 1.0})
    # fixed SNR: same [Fe]_min, 8x the volume -> 8x the cells per voxel, same density
    assert big.iron_concentration_min_mmol_l == pytest.approx(small.iron_concentration_min_mmol_l)
    assert big.cells_per_voxel == pytest.approx(8 * small.cells_per_voxel, rel=1e-12)
    assert big.cells_per_mm3 == pytest.approx(small.cells_per_mm3, rel=1e-12)
    # SNR proportional to voxel volume (same scan): cells per voxel unchanged, density / 8
    big_snr = detection_limit(**{**CHAIN, "voxel_size_mm": 1.0, "snr": 8 * 100.0})
    small_snr = detection_limit(**{**CHAIN, "voxel_size_mm": 0.5, "snr": 100.0})
    assert big_snr.cells_per_voxel == pytest.approx(small_snr.cells_per_voxel, rel=1e-12)
    assert big_snr.cells_per_mm3 == pytest.approx(small_snr.cells_per_mm3 / 8, rel=1e-12)
    # more iron per cell or a higher relaxivity -> fewer cells
    assert detection_limit(**{**CHAIN, "iron_per_cell_pg": 20.0}).cells_per_voxel == pytest.approx(
        big.cells_per_voxel / 2)
    assert detection_limit(**{**CHAIN, "relaxivity_r2star_l_per_mmol_s": 100.0}).cells_per_voxel \
        == pytest.approx(big.cells_per_voxel / 2)


def test_anisotropic_voxel():
    d = detection_limit(**{**CHAIN, "voxel_size_mm": (0.1, 0.1, 0.5)})
    assert d.voxel_volume_mm3 == pytest.approx(0.005)


def test_undetectable_exact_difference_raises():
    with pytest.raises(ValidationError, match="no ΔR2\\* is detectable"):
        detection_limit(voxel_size_mm=1.0, echo_times_s=[0.01, 0.02, 0.03], snr=3.0,
                        iron_per_cell_pg=10.0, relaxivity_r2star_l_per_mmol_s=60.0,
                        baseline_t2star_s=0.02, k_sd=20.0, design="difference_exact")


@pytest.mark.parametrize("kw", [
    dict(voxel_size_mm=-1.0),
    dict(voxel_size_mm=(1.0, 1.0)),
    dict(voxel_size_mm="1 mm"),
    dict(echo_times_s=[5.0, 15.0]),        # ms given as s
    dict(echo_times_s=[0.005]),
    dict(snr=0.0),
    dict(iron_per_cell_pg=-3.0),
    dict(relaxivity_r2star_l_per_mmol_s=float("nan")),
    dict(baseline_t2star_s=20.0),          # ms given as s
    dict(baseline_t2star_s=0.0),
    dict(k_sd=0.0),
    dict(design="paired"),
])
def test_validation(kw):
    with pytest.raises(ValidationError):
        detection_limit(**{**CHAIN, **kw})


def test_crlb_validation():
    with pytest.raises(ValidationError):
        r2star_crlb(TE2, r2star_per_s=-1.0, snr=10.0)
    with pytest.raises(ValidationError):
        r2star_crlb(TE2, r2star_per_s=10.0, snr=0.0)
    with pytest.raises(ValidationError):
        mono_exponential_fisher_information(TE2, s0=1.0, r2star_per_s=10.0, sigma=0.0)
