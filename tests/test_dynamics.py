"""Tests of kpjax.koopman.dynamics: comparing runs by their Koopman spectra."""

import jax.numpy as jnp
import numpy as np
import pytest

from kpjax import koopman
from kpjax.koopman import dynamics
from oracles import damped_rotation, quadratic_gd


def test_eigenvalue_distance_is_the_best_matching():
    a = np.array([0.5, 0.9 + 0.1j, 0.9 - 0.1j])
    assert dynamics.eigenvalue_distance(a, a) == 0.0
    b = np.array([0.9 - 0.1j, 0.6, 0.9 + 0.1j])  # a permuted, one moved by 0.1
    assert dynamics.eigenvalue_distance(a, b) == pytest.approx(0.1 / 3)
    assert dynamics.eigenvalue_distance(a, b) == dynamics.eigenvalue_distance(b, a)
    with pytest.raises(ValueError, match="equal size"):
        dynamics.eigenvalue_distance(a, a[:2])


def test_principal_coordinates_and_delays_keep_the_linear_spectrum():
    theta, lam_true = damped_rotation(n=60, steps=40, radius=0.9, omega=0.5)
    k = koopman.gram(jnp.asarray(theta))
    z = dynamics.principal_coordinates(k, 3)
    centred = theta - theta.mean(axis=0)
    np.testing.assert_allclose(z @ z.T, centred @ centred.T, atol=1e-6)  # K from float32 Θ
    # Centring leaves a constant offset in the window: λ = 1 beside the rotation's pair.
    signature = dynamics.spectrum_signature(k, components=2, delays=2, top=3)
    for lam in (*lam_true, 1.0):
        assert np.min(np.abs(signature - lam)) < 1e-6, (lam, signature)


def _signatures(eta, seeds):
    out = []
    for seed in seeds:
        oracle = quadratic_gd(n=60, steps=40, excited_h=(1.0, 2.0, 3.0), eta=eta, seed=seed)
        out.append(dynamics.spectrum_signature(koopman.gram(jnp.asarray(oracle.snapshots)),
                                               components=3, delays=2, top=3))
    return out


def test_the_shuffle_test_tells_same_from_different_dynamics():
    same_a, same_b = _signatures(0.1, (0, 1, 2, 3)), _signatures(0.1, (4, 5, 6, 7))
    assert dynamics.eigenvalue_distance(same_a[0], same_b[0]) < 1e-6  # one spectrum, any seed
    _, p_same = dynamics.shuffle_test(same_a, same_b, permutations=500)
    assert p_same > 0.2
    other = _signatures(0.15, (4, 5, 6, 7))
    stat, p_other = dynamics.shuffle_test(same_a, other, permutations=500)
    assert stat > 0 and p_other < 0.05
