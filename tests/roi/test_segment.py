"""segment_from_seed on synthetic T2-weighted-like phantoms with a known object."""

from __future__ import annotations

import numpy as np
import pytest

from oncomri.core import ValidationError
from oncomri.roi.segment import segment_from_seed


def _dice(a, b):
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(scope="module")
def noisy_sphere():
    """A bright sphere (signal 100) in a background of 20, Gaussian noise SD 10 (seed 0)."""
    rng = np.random.default_rng(0)
    n = 48
    x, y, z = np.indices((n, n, n))
    truth = (x - 24) ** 2 + (y - 22) ** 2 + (z - 25) ** 2 <= 10 ** 2
    image = np.where(truth, 100.0, 20.0) + rng.normal(0.0, 10.0, truth.shape)
    return image.astype(np.float32), truth


@pytest.mark.parametrize("method", ["region_growing", "threshold"])
def test_noisy_bright_sphere_dice_at_least_0_9(noisy_sphere, method):
    image, truth = noisy_sphere
    seg = segment_from_seed(image, (24, 22, 25), voxel_size_mm=(1, 1, 1), method=method)
    assert seg.dtype == np.bool_ and seg.shape == truth.shape
    assert seg[24, 22, 25]
    assert _dice(seg, truth) >= 0.9


def test_threshold_with_a_tolerance_window(noisy_sphere):
    image, truth = noisy_sphere
    # window mean(3x3x3 around the seed) +- 40 keeps the sphere (100 +- 10 noise)
    # and excludes the background (20 +- 10)
    seg = segment_from_seed(image, (24, 22, 25), voxel_size_mm=(1, 1, 1), method="threshold",
                            tolerance=40.0)
    assert _dice(seg, truth) >= 0.9


def test_anisotropic_voxels_keep_a_two_slice_thick_disc():
    # 0.5 x 0.5 x 3 mm voxels: the default opening (0.5 mm) is one voxel in-plane
    # and round(0.5 / 3) = 0 through-plane, so a 2-slice object survives it.
    image = np.zeros((40, 40, 6), np.float32)
    x, y = np.indices((40, 40))
    disc = (x - 20) ** 2 + (y - 20) ** 2 <= 12 ** 2
    image[:, :, 2][disc] = 1.0
    image[:, :, 3][disc] = 1.0
    seg = segment_from_seed(image, (20, 20, 2), voxel_size_mm=(0.5, 0.5, 3.0),
                            method="threshold")
    truth = image > 0.5
    assert not np.any(seg & ~truth)
    # only the digital disc's one-pixel tips go (the in-plane opening), both slices stay
    for k in (2, 3):
        assert np.count_nonzero(seg[:, :, k]) >= 0.98 * np.count_nonzero(disc)
    without = segment_from_seed(image, (20, 20, 2), voxel_size_mm=(0.5, 0.5, 3.0),
                                method="threshold", opening_radius_mm=0)
    assert np.array_equal(without, truth)


def test_opening_cuts_a_one_voxel_bridge_to_a_neighbour():
    image = np.zeros((40, 20, 20), np.float32)
    x, y, z = np.indices(image.shape)
    a = (x - 10) ** 2 + (y - 10) ** 2 + (z - 10) ** 2 <= 6 ** 2
    b = (x - 29) ** 2 + (y - 10) ** 2 + (z - 10) ** 2 <= 6 ** 2
    image[a | b] = 1.0
    image[10:30, 10, 10] = 1.0  # a one-voxel-thin bridge between the two
    joined = segment_from_seed(image, (10, 10, 10), voxel_size_mm=(1, 1, 1), method="threshold",
                               opening_radius_mm=0)
    assert joined[29, 10, 10]  # without opening the neighbour is included
    seg = segment_from_seed(image, (10, 10, 10), voxel_size_mm=(1, 1, 1), method="threshold")
    assert not seg[29, 10, 10] and not seg[20, 10, 10]
    assert _dice(seg, a) >= 0.95


def test_enclosed_dark_core_is_filled_unless_asked_not_to():
    image = np.zeros((30, 30, 30), np.float32)
    x, y, z = np.indices(image.shape)
    r2 = (x - 15) ** 2 + (y - 15) ** 2 + (z - 15) ** 2
    image[r2 <= 10 ** 2] = 1.0
    image[r2 <= 4 ** 2] = 0.0  # necrotic core
    filled = segment_from_seed(image, (15, 15, 22), voxel_size_mm=(1, 1, 1), method="threshold",
                               opening_radius_mm=0)
    assert filled[15, 15, 15]
    assert np.count_nonzero(filled) == np.count_nonzero(r2 <= 10 ** 2)
    hollow = segment_from_seed(image, (15, 15, 22), voxel_size_mm=(1, 1, 1),
                               method="threshold", fill_holes=False, opening_radius_mm=0)
    assert not hollow[15, 15, 15]


def test_dark_object_with_otsu_threshold():
    image = np.full((30, 30, 30), 10.0, np.float32)
    x, y, z = np.indices(image.shape)
    dark = (x - 12) ** 2 + (y - 14) ** 2 + (z - 15) ** 2 <= 7 ** 2
    image[dark] = 2.0
    # Otsu's threshold lies between 2 and 10; the seed (2) is below it
    seg = segment_from_seed(image, (12, 14, 15), voxel_size_mm=(1, 1, 1), method="threshold",
                            opening_radius_mm=0)
    assert np.array_equal(seg, dark)
    # the default opening (1 voxel) only trims the digital sphere's one-voxel tips
    opened = segment_from_seed(image, (12, 14, 15), voxel_size_mm=(1, 1, 1), method="threshold")
    assert not np.any(opened & ~dark) and _dice(opened, dark) >= 0.99


@pytest.mark.parametrize("seed, match", [
    ((48, 0, 0), "outside the image"),
    ((-1, 5, 5), "outside the image"),
    ((1.5, 2, 3), "integer"),
    ((1, 2), "integer"),
])
def test_bad_seed(noisy_sphere, seed, match):
    image, _ = noisy_sphere
    with pytest.raises(ValidationError, match=match):
        segment_from_seed(image, seed, voxel_size_mm=(1, 1, 1))


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="watershed"), "method 'watershed'"),
    (dict(tolerance=5.0), "tolerance applies to method='threshold'"),
    (dict(multiplier=0), "multiplier"),
    (dict(voxel_size_mm=(1, 1)), "voxel_size_mm"),
    (dict(opening_radius_mm=-1.0), "opening_radius_mm"),
    (dict(iterations=-2), "iterations"),
])
def test_bad_options(kwargs, match):
    image = np.zeros((8, 8, 8), np.float32)
    args = dict(voxel_size_mm=(1, 1, 1))
    args.update(kwargs)
    with pytest.raises(ValidationError, match=match):
        segment_from_seed(image, (4, 4, 4), **args)


def test_nan_image_and_seed_outside_its_own_window():
    image = np.zeros((8, 8, 8), np.float32)
    image[0, 0, 0] = np.nan
    with pytest.raises(ValidationError, match="NaN"):
        segment_from_seed(image, (4, 4, 4), voxel_size_mm=(1, 1, 1))
    image = np.zeros((9, 9, 9), np.float32)
    image[4, 4, 4] = 100.0  # a lone bright voxel: the window around its neighbourhood misses it
    with pytest.raises(ValidationError, match="seed voxel's value"):
        segment_from_seed(image, (4, 4, 4), voxel_size_mm=(1, 1, 1), method="threshold",
                          tolerance=5.0)
