"""CEST: protocol, Z-spectrum, B0 correction, MTRasym and the multi-pool Lorentzian fit.

Simulated spectra are sums of Lorentzians written out here with numpy
(``_z``), independently of ``oncomri.models.cest``:
``Z(Δω) = c - Σ_i A_i (Γ_i²/4) / (Γ_i²/4 + (Δω - δ_i)²)``, with a B0 shift
moving every pool by the same δ. The "unshifted value" of MTRasym is the
closed form ``Z0(-Δω) - Z0(+Δω)`` of the unshifted spectrum.
"""

import numpy as np
import pytest

from oncomri.core import CESTProtocol, ProtocolError, ValidationError
from oncomri.fitting import Status
from oncomri.models.cest import CESTModel, LorentzianPool, offset_label

HZ_PER_PPM_3T = 42.577478518 * 3.0
WIDE = np.array([8.0, 10, 15, 20, 30, 50, 80])


def _z(x, pools, baseline=1.0, shift=0.0):
    """Sum-of-Lorentzians Z-spectrum; pools = [(A, FWHM, position)], shift broadcasts."""
    x = np.asarray(x, float)
    shift = np.asarray(shift, float)[..., None]
    z = np.asarray(baseline, float)[..., None] + 0.0 * x
    for a, w, pos in pools:
        g = (np.asarray(w, float)[..., None] / 2) ** 2
        d = x - (np.asarray(pos, float)[..., None] + shift)
        z = z - np.asarray(a, float)[..., None] * g / (g + d * d)
    return z


def _mtr_true(pools, dw):
    zz = _z([-dw, dw], pools)
    return zz[0] - zz[1]


def _series(offsets, z, m0=1000.0):
    """Signal (..., n) with M0 at index 0 and the saturated spectrum after it."""
    z = np.asarray(z)
    return np.concatenate([np.full(z.shape[:-1] + (1,), m0), m0 * z], axis=-1)


# ---------------------------------------------------------------- protocol

def test_offsets_without_m0_raise_one_clear_line():
    with pytest.raises(ProtocolError) as info:
        CESTModel([-4.0, -3.5, -1, 0, 1, 3.5, 4.0])
    msg = str(info.value)
    assert "\n" not in msg and "M0" in msg and "m0_index" in msg


def test_protocol_m0_detection_and_units():
    p = CESTProtocol([1000.0, -3, -1, 0, 1, 3, -300], magnetic_field_strength=3.0)
    assert p.m0_indices == (0, 6)
    np.testing.assert_array_equal(p.saturated_offsets, [-3, -1, 0, 1, 3])
    assert p.hz_per_ppm == pytest.approx(127.732435554)
    assert CESTProtocol([-3, -1, 0, 1, 3], m0_index=2).saturated_offsets.tolist() == [-3, -1, 1, 3]
    with pytest.raises(ProtocolError, match="outside"):
        CESTProtocol([-300, -1, 0, 1], m0_index=9)
    with pytest.raises(ProtocolError, match="Hz"):
        CESTProtocol([-38000, -400, 0, 400])  # Hz at 3 T: all beyond 100 "ppm"
    with pytest.raises(ProtocolError, match="tesla"):
        CESTProtocol([-300, -1, 0, 1], saturation_b1=2e-6)


# ---------------------------------------------------------------- MTRasym and B0

OFF_DENSE = np.concatenate([[-300.0], np.arange(-6, 6.0001, 0.1)])
AMIDE_TWO_POOL = [(0.8, 1.5, 0.0), (0.05, 0.8, 3.5)]
SHIFTS = np.array([0.0, 0.13, -0.27, 0.3, 0.55, -0.8])  # ppm, not on the 0.1-ppm grid


@pytest.mark.parametrize("b0_correction", ["minimum", "spline", "map"])
def test_mtrasym_after_b0_correction_equals_unshifted_value(b0_correction):
    data = _series(OFF_DENSE, _z(OFF_DENSE[1:], AMIDE_TWO_POOL, shift=SHIFTS))
    model = CESTModel(CESTProtocol(OFF_DENSE, magnetic_field_strength=3.0),
                      b0_correction=b0_correction, offsets_of_interest=(3.5,))
    kw = {"b0_map": SHIFTS * HZ_PER_PPM_3T, "b0_unit": "Hz"} if b0_correction == "map" else {}
    fit = model.fit(data, **kw)
    truth = _mtr_true(AMIDE_TWO_POOL, 3.5)
    np.testing.assert_allclose(fit.mtrasym[3.5], truth, rtol=5e-3)
    np.testing.assert_allclose(fit.b0_ppm, SHIFTS, atol=2e-3)
    np.testing.assert_allclose(fit.b0_hz, SHIFTS * HZ_PER_PPM_3T, atol=2e-3 * HZ_PER_PPM_3T)
    assert np.all(fit.status == Status.OK)
    # without correction the shifted voxels are visibly wrong
    raw = CESTModel(model.protocol, b0_correction="none", offsets_of_interest=(3.5,)).fit(data)
    big = np.abs(SHIFTS) > 0.25
    assert np.all(np.abs(raw.mtrasym[3.5][big] / truth - 1) > 0.1)


def test_lactate_mtrasym_with_wassr_equals_unshifted_value():
    """Lactate at 0.4 ppm sits on the water line: B0 from WASSR (maximum symmetry)."""
    off = np.concatenate([[-300.0], np.arange(-3, 3.0001, 0.1)])
    pools = [(0.6, 1.2, 0.0), (0.03, 0.6, 0.4)]
    woff = np.arange(-1.5, 1.5001, 0.1)
    data = _series(off, _z(off[1:], pools, shift=SHIFTS))
    wassr = 800.0 * _z(woff, [(0.7, 0.4, 0.0)], shift=SHIFTS)
    model = CESTModel(off, b0_correction="wassr", wassr_protocol=woff, offsets_of_interest=(0.4,),
                      wassr_max_shift_ppm=1.0)
    fit = model.fit(data, wassr=wassr)
    np.testing.assert_allclose(fit.b0_ppm, SHIFTS, atol=1e-4)
    np.testing.assert_allclose(fit.mtrasym[0.4], _mtr_true(pools, 0.4), rtol=5e-3)
    # the Z-spectrum minimum is pulled by the lactate pool: WASSR is needed here
    biased = CESTModel(off, offsets_of_interest=(0.4,)).fit(data)
    assert np.all(np.abs(biased.mtrasym[0.4] / _mtr_true(pools, 0.4) - 1) > 0.1)


def test_b0_map_in_hz_and_ppm_agree_and_hz_needs_a_field():
    data = _series(OFF_DENSE, _z(OFF_DENSE[1:], AMIDE_TWO_POOL, shift=SHIFTS))
    proto = CESTProtocol(OFF_DENSE, magnetic_field_strength=3.0)
    a = CESTModel(proto, b0_correction="map").fit(data, b0_map=SHIFTS, b0_unit="ppm")
    b = CESTModel(proto, b0_correction="map").fit(data, b0_map=SHIFTS * HZ_PER_PPM_3T, b0_unit="Hz")
    for dw in (0.4, 2.0, 3.5):
        np.testing.assert_allclose(a.mtrasym[dw], b.mtrasym[dw], rtol=1e-10, atol=1e-14)
    with pytest.raises(ProtocolError, match="field strength"):
        CESTModel(OFF_DENSE, b0_correction="map").fit(data, b0_map=SHIFTS, b0_unit="Hz")
    with pytest.raises(ValidationError, match="b0_map"):
        CESTModel(OFF_DENSE, b0_correction="map").fit(data)


def test_acquisition_order_and_repeats_do_not_matter():
    z = _z(OFF_DENSE[1:], AMIDE_TWO_POOL, shift=SHIFTS[:3])
    ref = CESTModel(OFF_DENSE).fit(_series(OFF_DENSE, z))
    rng = np.random.default_rng(3)
    order = rng.permutation(OFF_DENSE.size)
    k = int(np.argmin(np.abs(OFF_DENSE[order] - 3.5)))
    off2 = np.concatenate([OFF_DENSE[order], [OFF_DENSE[order][k], -300.0]])  # a repeat, a 2nd M0
    data = _series(OFF_DENSE, z)[..., order]
    data2 = np.concatenate([data, data[..., k:k + 1], np.full((3, 1), 1000.0)], axis=-1)
    fit = CESTModel(off2).fit(data2)
    for dw in (0.4, 2.0, 3.5):
        np.testing.assert_allclose(fit.mtrasym[dw], ref.mtrasym[dw], rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- Lorentzian fit

OFF_WIDE = np.concatenate([[-300.0], -WIDE[::-1], np.arange(-6, 6.0001, 0.2), WIDE])


def _five_pool_truth(n, seed):
    rng = np.random.default_rng(seed)
    t = {
        "baseline": rng.uniform(0.95, 1.0, n),
        "water": (rng.uniform(0.5, 0.7, n), rng.uniform(1.0, 2.5, n), rng.uniform(-0.5, 0.5, n)),
        "amide": (rng.uniform(0.01, 0.05, n), rng.uniform(0.8, 2.5, n), rng.uniform(3.3, 3.7, n)),
        "amine": (rng.uniform(0.005, 0.03, n), rng.uniform(0.8, 2.5, n), rng.uniform(1.8, 2.2, n)),
        "noe": (rng.uniform(0.01, 0.05, n), rng.uniform(1.5, 4.0, n), rng.uniform(-3.8, -3.2, n)),
        "mt": (rng.uniform(0.05, 0.2, n), rng.uniform(15, 40, n), rng.uniform(-3.0, -2.0, n)),
    }
    return t


def _five_pool_z(t):
    b0 = t["water"][2]
    pools = [(a, w, (d if name == "water" else d + b0))
             for name, (a, w, d) in ((k, v) for k, v in t.items() if k != "baseline")]
    return _z(OFF_WIDE[1:], pools, baseline=t["baseline"])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lorentzian_noiseless_recovery(dtype):
    t = _five_pool_truth(24, seed=0)
    data = _series(OFF_WIDE, _five_pool_z(t)).reshape(4, 3, 2, -1)
    fit = CESTModel(OFF_WIDE, method="lorentzian").fit(data.astype(dtype))
    rtol = 1e-4 if dtype == np.float64 else 2e-2  # float32 data carry 6e-8 relative noise
    assert fit.baseline.dtype == dtype and fit.mtrasym[3.5].dtype == dtype
    np.testing.assert_allclose(fit.baseline.ravel(), t["baseline"], rtol=rtol)
    for name in ("water", "amide", "amine", "noe", "mt"):
        for key, true in zip(("amplitude", "width", "offset"), t[name]):
            np.testing.assert_allclose(fit.pools[name][key].ravel(), true, rtol=rtol,
                                       err_msg=f"{name} {key}")
    if dtype == np.float64:
        assert set(np.unique(fit.status)) <= {Status.OK, Status.AT_BOUND}
        np.testing.assert_allclose(fit.predict(), data, rtol=1e-4, atol=1e-4 * data.max())


def test_lorentzian_noisy_bias_within_bounds():
    """SNR 200 on M0 (Gaussian noise σ = 5 on M0 = 1000, every image), 400 voxels, one truth.

    Stated bounds on the mean error: water amplitude, width 1 %, water centre
    (B0) 0.01 ppm; amide and MT amplitude 10 %; amide and NOE centres
    0.05 ppm; MTRasym(3.5 ppm) within 5e-4 (0.05 percentage points) of the
    noiseless pipeline. The amine pool (2 ppm, on the water line's flank) is
    poorly determined at this SNR and is not bounded.
    """
    truth = {"baseline": 1.0, "water": (0.65, 1.8, 0.2), "amide": (0.03, 1.5, 3.5),
             "amine": (0.015, 1.5, 2.0), "noe": (0.03, 3.0, -3.5), "mt": (0.12, 30.0, -2.5)}
    clean = _series(OFF_WIDE, _five_pool_z(truth))
    rng = np.random.default_rng(1)
    data = clean + rng.normal(0.0, 5.0, (400, clean.size))
    fit = CESTModel(OFF_WIDE, method="lorentzian").fit(data)
    assert np.all(fit.status != Status.FAILED)

    def bias(name, key):
        k = ("amplitude", "width", "offset").index(key)
        return np.mean(fit.pools[name][key]) - truth[name][k]

    assert abs(bias("water", "amplitude")) < 0.01 * 0.65
    assert abs(bias("water", "width")) < 0.01 * 1.8
    assert abs(bias("water", "offset")) < 0.01
    assert abs(bias("amide", "amplitude")) < 0.1 * 0.03
    assert abs(bias("mt", "amplitude")) < 0.1 * 0.12
    assert abs(bias("amide", "offset")) < 0.05 and abs(bias("noe", "offset")) < 0.05
    ref = CESTModel(OFF_WIDE).fit(clean[None])
    noisy = CESTModel(OFF_WIDE).fit(data)
    assert abs(np.mean(noisy.mtrasym[3.5]) - ref.mtrasym[3.5][0]) < 5e-4


def test_custom_pools_and_lactate_pool():
    pools = [(0.6, 1.2, 0.0), (0.03, 0.6, 0.4)]
    off = np.concatenate([[-300.0], np.arange(-3, 3.0001, 0.1)])
    data = _series(off, _z(off[1:], pools, shift=SHIFTS))
    water = LorentzianPool("water", 0.0, (-1, 1), (0.5, 0.1, 1.0), (1.0, 0.2, 5.0))
    fit = CESTModel(off, method="lorentzian", pools=[water, "lactate"]).fit(data)
    np.testing.assert_allclose(fit.pools["lactate"]["amplitude"], 0.03, rtol=1e-4)
    np.testing.assert_allclose(fit.pools["water"]["offset"], SHIFTS, atol=1e-5)
    with pytest.raises(ValidationError, match="water"):
        CESTModel(off, method="lorentzian", pools=["amide", "water"])
    with pytest.raises(ValidationError, match="not known"):
        CESTModel(off, method="lorentzian", pools=["water", "glutamate"])


# ---------------------------------------------------------------- contract

def test_mask_invalid_voxels_dtype_and_data_untouched():
    z = _z(OFF_DENSE[1:], AMIDE_TWO_POOL, shift=np.linspace(-0.4, 0.4, 6).reshape(3, 2))
    data = _series(OFF_DENSE, z).astype(np.float32)
    data[0, 0, 5] = np.nan
    data[0, 1, 0] = 0.0  # M0 = 0 -> cannot normalise
    before = data.copy()
    mask = np.ones((3, 2), bool)
    mask[2, 1] = False
    fit = CESTModel(OFF_DENSE).fit(data, mask=mask)
    np.testing.assert_array_equal(np.isnan(data), np.isnan(before))
    np.testing.assert_array_equal(data[~np.isnan(data)], before[~np.isnan(before)])
    assert fit.status[0, 0] == Status.INVALID_DATA and fit.status[0, 1] == Status.FAILED
    assert fit.status[2, 1] == Status.MASKED
    assert np.all(fit.status[1:, :][mask[1:, :]] == Status.OK)
    for arr in (fit.m0, fit.b0_ppm, fit.mtrasym[3.5]):
        assert arr.dtype == np.float32
        assert np.all(np.isnan(arr[fit.status != Status.OK]))
    pred = fit.predict()
    ok = fit.status == Status.OK
    np.testing.assert_allclose(pred[ok], data[ok], rtol=1e-5)


def test_output_maps_names_and_units():
    proto = CESTProtocol(OFF_WIDE, magnetic_field_strength=9.4)
    data = _series(OFF_WIDE, _five_pool_z(_five_pool_truth(2, seed=5)))
    fit = CESTModel(proto, method="lorentzian", offsets_of_interest=(0.4, 2, 3.5)).fit(data)
    maps = fit.output_maps()
    for name in ("M0map", "desc-ppm_B0map", "desc-Hz_B0map", "desc-MTRasym0p4ppm_CESTmap",
                 "desc-MTRasym2ppm_CESTmap", "desc-MTRasym3p5ppm_CESTmap",
                 "desc-Zspectrum_CESTmap", "desc-amideAmplitude_CESTmap",
                 "desc-mtWidth_CESTmap", "desc-noeOffset_CESTmap", "desc-cestfit_status"):
        assert name in maps, name
        assert "Units" in maps[name][1] and "Description" in maps[name][1]
    assert maps["desc-Hz_B0map"][1]["Units"] == "Hz" and maps["desc-ppm_B0map"][1]["Units"] == "ppm"
    assert maps["desc-Zspectrum_CESTmap"][0].shape == (2, OFF_WIDE.size - 1)
    np.testing.assert_allclose(fit.b0_hz, fit.b0_ppm * 42.577478518 * 9.4)
    assert offset_label(0.4) == "0p4ppm" and offset_label(-3.5) == "m3p5ppm"


def test_bad_inputs_raise_clear_errors():
    data = _series(OFF_DENSE, _z(OFF_DENSE[1:], AMIDE_TWO_POOL))
    with pytest.raises(ValidationError, match="last axis"):
        CESTModel(OFF_DENSE).fit(data[..., :-1][None])
    with pytest.raises(ValidationError, match="positive"):
        CESTModel(OFF_DENSE, offsets_of_interest=(-3.5,))
    with pytest.raises(ValidationError, match="wassr_protocol"):
        CESTModel(OFF_DENSE, b0_correction="wassr")
    with pytest.raises(ValidationError, match="wassr="):
        CESTModel(OFF_DENSE, b0_correction="wassr", wassr_protocol=np.linspace(-1, 1, 11)).fit(data[None])
    with pytest.raises(ValidationError, match="b0_correction"):
        CESTModel(OFF_DENSE, b0_correction="shim")
