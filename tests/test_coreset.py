"""kpjax.pruning.coreset: sensitivities by hand, exactly k neurons, inclusion
probabilities honoured, and the reweighted layer unbiased."""

import numpy as np
import pytest

from kpjax.pruning import coreset


def test_sensitivities_by_hand():
    a = np.array([[1.0, 0.0, 1.0], [0.0, 2.0, 2.0]])
    w = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 1.0]])  # ‖w‖ = 5, 1, 1
    # shares: x1: (5, 0, 1)/6; x2: (0, 2, 2)/4
    np.testing.assert_allclose(coreset.sensitivities(a, w), [5 / 6, 0.5, 0.5])
    with pytest.raises(ValueError, match="non-negative"):
        coreset.sensitivities(-a, w)


def test_inclusion_probabilities_sum_to_k_and_cap_at_one():
    pi = coreset.inclusion_probabilities(np.array([10.0, 1.0, 1.0, 1.0, 1.0]), 3)
    assert pi.sum() == pytest.approx(3.0) and pi[0] == 1.0
    np.testing.assert_allclose(pi[1:], 0.5)


def test_the_coreset_keeps_k_neurons_with_probability_pi_and_is_unbiased():
    rng = np.random.default_rng(0)
    units, k = 40, 10
    a = np.maximum(rng.normal(size=(64, units)), 0.0) * rng.uniform(0.1, 3.0, units)
    w = rng.normal(size=(units, 5))
    pi = coreset.inclusion_probabilities(coreset.sensitivities(a, w), k)
    exact = a @ w
    draws, counts, total = 4000, np.zeros(units), np.zeros_like(exact)
    for seed in range(draws):
        keep, scale = coreset.coreset(a, w, k, np.random.default_rng(seed))
        assert keep.sum() == k
        counts += keep
        total += a @ (w * scale[:, None])
    np.testing.assert_allclose(counts / draws, pi, atol=0.03)
    # Unbiased: the mean over draws approaches the full layer's output.
    err = np.abs(total / draws - exact).mean() / np.abs(exact).mean()
    assert err < 0.03, err
