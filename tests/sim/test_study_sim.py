"""The synthetic NK-cell study (oncomri.sim.study): design, images and truth agree."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from oncomri.core.errors import ValidationError
from oncomri.models.relaxometry import R2StarModel
from oncomri.quant.iron import relaxivity
from oncomri.roi.geometry import longest_axial_diameter
from oncomri.sim import iron_mass_to_concentration_mmol_l
from oncomri.sim.study import (
    TRUTH_COLUMNS,
    SyntheticStudy,
    allocate_arms,
    simulate_study,
)

ARMS = ("control", "iv_nk", "ia_nk")
TPS = ("baseline", "24h", "48h", "8d")


@pytest.fixture(scope="module")
def small() -> SyntheticStudy:
    return SyntheticStudy.small(seed=3)


@pytest.fixture(scope="module")
def full_biology() -> SyntheticStudy:
    """All 20 rats (7/7/6) on a coarse grid: the biology does not depend on the grid."""
    return simulate_study(n_subjects=20, seed=0, shape=(24, 24, 8))


def _wide(study: SyntheticStudy, biomarker: str) -> pd.DataFrame:
    t = study.truth[study.truth.biomarker == biomarker]
    return t.pivot(index="subject", columns="timepoint", values="value")[list(TPS)]


def _arm_series(study: SyntheticStudy) -> pd.Series:
    return pd.Series({s.id: s.arm for s in study.design.subjects})


def test_arm_allocation():
    assert allocate_arms(20) == (7, 7, 6)
    assert allocate_arms(6) == (2, 2, 2)
    for n in range(6, 41):
        counts = allocate_arms(n)
        assert sum(counts) == n and min(counts) >= 2
    with pytest.raises(ValidationError, match="n_subjects"):
        allocate_arms(5)


def test_design_and_arrays(small):
    d = small.design
    assert d.arm_names == ARMS and d.timepoint_names == TPS and d.baseline == "baseline"
    assert [s.id for s in d.subjects] == [f"rat{i:02d}" for i in range(1, 7)]
    assert sorted(s.arm for s in d.subjects) == sorted(ARMS * 2)
    assert d.time_of("baseline") < 0 < d.time_of("24h") == 86400.0
    assert d.time_of("8d") == 8 * 86400.0
    assert list(small.sessions) == list(d.sessions) and len(d.sessions) == 24
    for ses in small.sessions.values():
        assert ses.megre.shape == (32, 32, 8, 12) and ses.megre.dtype == np.float32
        assert ses.t2w.shape == (64, 64, 8) and ses.t2w.dtype == np.float32
        assert ses.tumour_mask.shape == (64, 64, 8) and ses.tumour_mask.dtype == bool
        te = ses.echo_times_s
        assert te.shape == (12,) and np.all(np.diff(te) > 0) and 1e-3 <= te[0] <= 3e-3
        # the tumour stays inside the slab: no voxel in the first or last slice
        assert ses.tumour_mask.any() and not ses.tumour_mask[:, :, [0, -1]].any()
        assert np.all(ses.megre >= 0) and np.all(np.isfinite(ses.megre))


def test_gre_and_t2w_grids_cover_the_same_field_of_view(small):
    ses = small.sessions[("rat01", "baseline")]
    nx, ny, nz = ses.megre.shape[:3]
    for k in (0, nz - 1):
        for corner in ((-0.5, -0.5), (nx - 0.5, ny - 0.5), (-0.5, ny - 0.5)):
            gre = ses.megre_affine @ np.array([corner[0], corner[1], k, 1.0])
            fine = ses.t2w_affine @ np.array([2 * corner[0] + 0.5, 2 * corner[1] + 0.5, k, 1.0])
            np.testing.assert_allclose(gre, fine, atol=1e-9)
    voxel_gre = np.abs(np.diag(ses.megre_affine)[:3])
    voxel_t2w = np.abs(np.diag(ses.t2w_affine)[:3])
    np.testing.assert_allclose(voxel_gre, [60 / 32, 60 / 32, 20 / 8])
    np.testing.assert_allclose(voxel_t2w, voxel_gre * [0.5, 0.5, 1.0])


def test_truth_table_columns_and_units(small):
    t = small.truth
    assert tuple(t.columns) == TRUTH_COLUMNS
    per_session = t[t.timepoint != ""]
    counts = per_session.groupby("biomarker").size()
    assert set(counts) == {24}
    units = dict(zip(per_session.biomarker, per_session.unit))
    assert units["tumour_R2star"] == "1/s" and units["tumour_T2star"] == "s"
    assert units["tumour_volume"] == "mm^3" and units["tumour_diameter"] == "mm"
    params = t[t.timepoint == ""]
    assert params.time_s.isna().all() and set(params.statistic) == {"parameter"}
    assert set(params.biomarker) >= {"growth_rate", "delivery_fraction", "tumour_volume_t0"}


def test_volume_and_diameter_truth_match_the_masks(small):
    for (sub, tp), ses in small.sessions.items():
        voxel_mm3 = abs(np.linalg.det(ses.t2w_affine[:3, :3]))
        assert small.truth_value(sub, tp, "tumour_volume") == pytest.approx(
            ses.tumour_mask.sum() * voxel_mm3, rel=1e-12)
        model = small.truth_value(sub, tp, "tumour_volume_model")
        assert small.truth_value(sub, tp, "tumour_volume") == pytest.approx(model, rel=0.35)
        d = longest_axial_diameter(ses.tumour_mask, ses.t2w_affine)
        assert small.truth_value(sub, tp, "tumour_diameter") == pytest.approx(
            d.long_axis_mm, abs=1e-6)


def test_iron_truth_follows_the_relaxivity_table(full_biology):
    r2s = relaxivity("ferumoxytol", field_strength_t=3.0, medium="plasma", kind="r2star")
    t = full_biology
    for (sub, tp) in t.design.sessions:
        mass_pg = t.truth_value(sub, tp, "tumour_iron_mass") * 1e6
        conc = float(iron_mass_to_concentration_mmol_l(mass_pg,
                                                       t.truth_value(sub, tp, "tumour_volume")))
        assert t.truth_value(sub, tp, "tumour_iron_concentration") == pytest.approx(
            conc, rel=1e-9, abs=1e-15)
        assert t.truth_value(sub, tp, "tumour_delta_R2star") == pytest.approx(
            r2s * conc, rel=1e-9, abs=1e-12)


def test_r2star_rises_at_24h_most_in_ia_and_decays(full_biology):
    t = full_biology
    arm = _arm_series(t)
    r2 = _wide(t, "tumour_R2star")
    delta = _wide(t, "tumour_delta_R2star")
    change = (r2["24h"] - r2["baseline"]).groupby(arm).mean()
    assert change["ia_nk"] > change["iv_nk"] + 10 > change["control"] + 10
    assert abs(change["control"]) < 2.0
    assert (delta.loc[arm[arm == "control"].index] == 0).all().all()
    assert (delta["baseline"] == 0).all()
    treated = arm[arm != "control"].index
    d = delta.loc[treated]
    assert ((d["24h"] > d["48h"]) & (d["48h"] > d["8d"]) & (d["8d"] >= 0)).all()
    # every IA tumour has a larger ΔR2* at 24 h than every IV tumour
    assert d.loc[arm[arm == "ia_nk"].index, "24h"].min() > d.loc[
        arm[arm == "iv_nk"].index, "24h"].max()
    # at baseline the tumour R2* is the intrinsic value (session SD 1/s), raised towards
    # the liver's by partial volume in the boundary voxels
    p = t.parameters.set_index("subject")
    assert np.all(r2["baseline"] > p.tumour_R2star_intrinsic - 4.0)
    assert np.all(r2["baseline"] < p.liver_R2star)


def test_volumes_follow_the_arms(full_biology):
    t = full_biology
    arm = _arm_series(t)
    vol = _wide(t, "tumour_volume_model")
    pct = 100 * (vol["8d"] / vol["baseline"] - 1)
    by_arm = pct.groupby(arm).median()
    assert by_arm["control"] > 80 and by_arm["ia_nk"] < -20
    assert by_arm["control"] > by_arm["iv_nk"] > by_arm["ia_nk"]
    control = vol.loc[arm[arm == "control"].index]
    assert (control.diff(axis=1).iloc[:, 1:] > 0).all().all()
    assert (pct[arm[arm == "ia_nk"].index] < 0).all()
    # the day-8 shrinkage correlates with the 24 h R2* rise within ia_nk
    r2 = _wide(t, "tumour_R2star")
    ia = arm[arm == "ia_nk"].index
    r = np.corrcoef((r2["24h"] - r2["baseline"])[ia], pct[ia])[0, 1]
    assert r < -0.5


def test_images_recover_the_truth(full_biology):
    """An ordinary R2* fit of the noisy images gives the true tumour R2* and the noise sigma."""
    t = full_biology
    arm = _arm_series(t)
    for sub in (arm[arm == "ia_nk"].index[0], arm[arm == "control"].index[0]):
        for tp in ("baseline", "24h"):
            ses = t.sessions[(sub, tp)]
            air = np.isnan(ses.r2star)
            sigma = np.sqrt(np.mean(ses.megre[air].astype(np.float64) ** 2) / 2)
            assert sigma == pytest.approx(ses.noise_sigma, rel=0.05)
            fit = R2StarModel(ses.echo_times_s, method="ncexp").fit(
                ses.megre, noise_sigma=ses.noise_sigma)
            core = ses.tumour_fraction >= 0.5
            true = t.truth_value(sub, tp, "tumour_R2star")
            assert np.nanmedian(fit.r2star[core]) == pytest.approx(true, rel=0.08)
            np.testing.assert_allclose(np.median(ses.r2star[core]), true, rtol=1e-6)


def test_deterministic_for_a_seed(small):
    again = SyntheticStudy.small(seed=3)
    pd.testing.assert_frame_equal(small.truth, again.truth)
    for key, ses in small.sessions.items():
        other = again.sessions[key]
        np.testing.assert_array_equal(ses.megre, other.megre)
        np.testing.assert_array_equal(ses.t2w, other.t2w)
        np.testing.assert_array_equal(ses.tumour_mask, other.tumour_mask)
        np.testing.assert_array_equal(ses.megre_affine, other.megre_affine)
    different = SyntheticStudy.small(seed=4)
    assert not np.array_equal(different.sessions[("rat01", "24h")].megre,
                              small.sessions[("rat01", "24h")].megre)


def test_biology_does_not_depend_on_the_grid(small):
    other = SyntheticStudy.small(seed=3, shape=(24, 24, 8))
    pd.testing.assert_frame_equal(small.parameters, other.parameters)


@pytest.mark.parametrize("options, match", [
    ({"n_subjects": 4}, "n_subjects"),
    ({"echo_times_s": [1.5, 3.0, 4.5]}, "seconds"),
    ({"shape": (32, 32)}, "shape"),
    ({"fov_mm": (40.0, 40.0, 20.0)}, "fov_mm"),
    ({"delivery_fraction": {"intraportal": 0.1}}, "unknown arm"),
    ({"snr": 0}, "snr"),
])
def test_bad_options_raise(options, match):
    with pytest.raises(ValidationError, match=match):
        simulate_study(**{"n_subjects": 6, "shape": (16, 16, 4), **options})
