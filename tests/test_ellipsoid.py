"""kpjax.pruning.ellipsoid against ellipsoids known in closed form."""

import itertools

import numpy as np
import pytest

from kpjax.pruning.ellipsoid import mvee_symmetric


def test_the_cubes_corners_give_the_ball_of_radius_sqrt_d():
    d = 3
    corners = np.array(list(itertools.product((-1.0, 1.0), repeat=d)))
    e = mvee_symmetric(corners, tol=1e-9)
    np.testing.assert_allclose(e.shape, np.eye(d) / d, atol=1e-8)
    np.testing.assert_allclose(e.kappa, 1.0, atol=1e-8)


def test_points_on_an_ellipse_recover_it():
    a, b, angle = 3.0, 0.5, 0.4
    t = np.linspace(0, np.pi, 40, endpoint=False)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = np.stack([a * np.cos(t), b * np.sin(t)], 1) @ rot.T
    e = mvee_symmetric(pts, tol=1e-9)
    expected = rot @ np.diag([1 / a**2, 1 / b**2]) @ rot.T
    np.testing.assert_allclose(e.shape, expected, rtol=1e-5, atol=1e-7)


def test_interior_points_get_no_weight_and_every_point_is_inside():
    rng = np.random.default_rng(0)
    box = np.array(list(itertools.product((-1.0, 1.0), repeat=2))) * [2.0, 1.0]
    inner = rng.uniform(-0.5, 0.5, size=(30, 2))
    pts = np.concatenate([inner, box])
    e = mvee_symmetric(pts, tol=1e-6)
    assert np.all(e.weights[:30] == 0.0) and np.all(e.kappa <= 1 + 1e-6)
    np.testing.assert_allclose(e.shape, np.diag([1 / 8, 1 / 2]), rtol=1e-5, atol=1e-12)
    # A general cloud: inside within the tolerance, its support on the boundary.
    cloud = rng.normal(size=(200, 5)) * [3, 2, 1, 1, 0.5]
    e = mvee_symmetric(cloud, tol=1e-4)
    assert np.all(e.kappa <= 1 + 1e-4)
    assert np.all(e.kappa[e.weights > 1e-3] >= 1 - 1e-3)


def test_fewer_points_than_dimensions_lie_all_on_the_boundary():
    # n < d (MnistNet's fc1: 500 neurons in 800 dimensions): the MVEE of n
    # independent points in their span passes through each, so it cannot rank them.
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(6, 10)) * np.arange(1, 11)
    e = mvee_symmetric(pts, tol=1e-9)
    assert e.rank == 6
    np.testing.assert_allclose(e.weights, 1 / 6, atol=1e-9)
    np.testing.assert_allclose(e.kappa, 1.0, atol=1e-9)
    np.testing.assert_allclose(np.einsum("ij,jk,ik->i", pts, e.shape, pts), 1.0, atol=1e-8)


def test_bad_points_are_one_line_errors():
    for bad in (np.zeros((3, 2)), np.array([[np.nan, 1.0]]), np.ones(3)):
        with pytest.raises(ValueError, match="mvee_symmetric"):
            mvee_symmetric(bad)
