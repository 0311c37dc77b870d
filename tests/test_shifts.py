"""Input shifts (kpjax.data.shifts): known answers, an independent HSV reference
(colorsys), determinism and severity ordering; the prune potential by hand."""

import colorsys

import numpy as np
import pytest

from kpjax.data import shifts


def _images(c=3, n=4, seed=0):
    rng = np.random.RandomState(seed)
    smooth = rng.uniform(40, 215, size=(n, 4, 4, c))
    return np.repeat(np.repeat(smooth, 4, axis=1), 4, axis=2).astype(np.uint8)  # 16×16


def test_every_shift_keeps_shape_and_dtype_is_deterministic_and_grows_with_severity():
    x = _images()
    for name in shifts.SHIFTS:
        errors = []
        for s in shifts.SEVERITIES:
            y = shifts.shift_images(x, name, s, seed=1)
            assert y.shape == x.shape and y.dtype == np.uint8
            np.testing.assert_array_equal(y, shifts.shift_images(x, name, s, seed=1))
            errors.append(np.abs(y.astype(float) - x).mean())
        assert errors[0] > 0, name
        assert errors[-1] > errors[0], (name, errors)
        if name != "jpeg":  # JPEG's error is not monotone in quality on every image
            assert all(a <= b + 1e-9 for a, b in zip(errors, errors[1:])), (name, errors)
    gray = shifts.shift_images(_images(c=1), "jpeg", 3)
    assert gray.shape == (4, 16, 16, 1)


def test_contrast_and_blur_leave_a_constant_image_and_blur_is_the_gaussian_filter():
    flat = np.full((2, 8, 8, 3), 100, np.uint8)
    for s in shifts.SEVERITIES:
        np.testing.assert_array_equal(shifts.shift_images(flat, "contrast", s), flat)
        np.testing.assert_array_equal(shifts.shift_images(flat, "gaussian_blur", s), flat)
    # A bright point far from the edges spreads as the outer product of the 1-D
    # kernel exp(−t²/2σ²)/Σ, radius ⌊4σ + ½⌋ (σ = 1 at severity 5: radius 4).
    point = np.zeros((1, 15, 15, 1), np.uint8)
    point[0, 7, 7, 0] = 255
    t = np.arange(-4, 5)
    k = np.exp(-0.5 * t ** 2)
    k /= k.sum()
    expected = np.zeros((15, 15))
    expected[3:12, 3:12] = np.outer(k, k) * 255
    np.testing.assert_array_equal(shifts.shift_images(point, "gaussian_blur", 5)[0, ..., 0],
                                  np.round(expected).astype(np.uint8))
    # Contrast: (x − mean)·c + mean per channel, by hand (c = .15 at severity 5).
    x = np.array([[[[0, 200, 40]], [[100, 0, 40]]]], np.uint8)  # 1×2×1×3
    mean = np.array([50, 100, 40]) / 255
    by_hand = np.round(np.clip((x / 255 - mean) * 0.15 + mean, 0, 1) * 255)
    np.testing.assert_array_equal(shifts.shift_images(x, "contrast", 5), by_hand)


def test_brightness_is_the_hsv_value_shift_of_colorsys():
    rng = np.random.RandomState(0)
    x = rng.randint(0, 256, size=(1, 6, 6, 3)).astype(np.uint8)
    x[0, 0, 0] = 0  # black: becomes grey
    for s, c in zip(shifts.SEVERITIES, (0.05, 0.1, 0.15, 0.2, 0.3)):
        y = shifts.shift_images(x, "brightness", s)
        for pixel, out in zip(x.reshape(-1, 3) / 255, y.reshape(-1, 3)):
            h, sat, v = colorsys.rgb_to_hsv(*pixel)
            ref = np.round(np.clip(colorsys.hsv_to_rgb(h, sat, min(v + c, 1.0)), 0, 1) * 255)
            np.testing.assert_allclose(out, ref, atol=1)  # 1 = rounding at .5


def test_gaussian_noise_has_its_standard_deviation():
    grey = np.full((8, 32, 32, 3), 128, np.uint8)
    for s, sigma in zip(shifts.SEVERITIES, (0.04, 0.06, 0.08, 0.09, 0.10)):
        y = shifts.shift_images(grey, "gaussian_noise", s, seed=s).astype(float) / 255
        assert abs(y.std() - sigma) < 0.004, (s, y.std())
    a = shifts.shift_images(grey, "gaussian_noise", 3, seed=0)
    assert not np.array_equal(a, shifts.shift_images(grey, "gaussian_noise", 3, seed=1))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="unknown shift 'fog'"):
        shifts.shift_images(_images(), "fog", 1)
    with pytest.raises(ValueError, match="severity"):
        shifts.shift_images(_images(), "contrast", 6)
    with pytest.raises(ValueError, match="uint8"):
        shifts.shift_images(_images().astype(np.float32), "contrast", 1)


def test_prune_potential_by_hand():
    cs = (2.0, 4.0, 8.0, 16.0)
    assert shifts.prune_potential(cs, (0.99, 0.985, 0.986, 0.90), reference=0.99) == 8.0
    assert shifts.prune_potential(cs, (0.95, 0.94, 0.93, 0.90), reference=0.99) == 1.0
    assert shifts.prune_potential(cs, (0.99, 0.99, 0.99, 0.99), reference=0.99, delta=0.0) == 16.0
