"""Comparing training runs by their Koopman spectra (Redman et al., NeurIPS
2024, "Identifying equivalent training dynamics").

A run's weight trajectory Θ (T+1, N) is projected onto its leading principal
components (from the Gram matrix: no N-sized work beyond K = ΘΘᵀ), delay-
embedded, and fitted by exact DMD; its top-k eigenvalues (by modulus) are
its signature. Two runs are compared by the 1-Wasserstein distance between
their eigenvalue sets (the best one-to-one matching in the complex plane),
and two groups of runs by a shuffle test on the group labels.

May import: jax, numpy, scipy, kpjax.koopman.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from kpjax import koopman


def principal_coordinates(k: Any, components: int) -> np.ndarray:
    """The snapshots' coordinates on their `components` leading principal axes,
    (T+1, components), from K = ΘΘᵀ: with the centred Gram H K H = U S² Uᵀ
    (H = I − 11ᵀ/(T+1)), the coordinates are U S."""
    k = np.asarray(k, np.float64)
    n = k.shape[0]
    if not 1 <= components <= n:
        raise ValueError(f"components must be in [1, {n}], got {components}")
    h = np.eye(n) - 1.0 / n
    s2, u = np.linalg.eigh(h @ k @ h)
    order = np.argsort(s2)[::-1][:components]
    return u[:, order] * np.sqrt(np.maximum(s2[order], 0.0))


def delay_embed(z: np.ndarray, delays: int) -> np.ndarray:
    """Hankel embedding: row t is [z_t, z_{t+1}, …, z_{t+delays−1}], shape
    (T+2−delays, delays·d)."""
    z = np.asarray(z)
    if not 1 <= delays <= z.shape[0] - koopman.MIN_SNAPSHOTS + 1:
        raise ValueError(f"delays must be in [1, {z.shape[0] - koopman.MIN_SNAPSHOTS + 1}], got {delays}")
    rows = z.shape[0] - delays + 1
    return np.concatenate([z[i : i + rows] for i in range(delays)], axis=1)


def spectrum_signature(k: Any, components: int = 10, delays: int = 4, top: int = 10,
                       rcond: float = koopman.DEFAULT_RCOND) -> np.ndarray:
    """The top-`top` eigenvalues (by modulus) of the DMD of the delay-embedded
    principal coordinates of one run; `k` is the run's Gram matrix."""
    z = delay_embed(principal_coordinates(k, components), delays)
    fit = koopman.fit_dmd(z @ z.T, rcond=rcond)
    lam = np.asarray(fit.eigenvalues)[np.asarray(fit.valid)]
    if lam.size < top:
        raise ValueError(f"the fit has {lam.size} valid eigenvalues, fewer than top={top}")
    return lam[np.argsort(-np.abs(lam), kind="stable")[:top]]


def eigenvalue_distance(a: Sequence[complex], b: Sequence[complex]) -> float:
    """1-Wasserstein distance between two equally many eigenvalues, each set a
    uniform measure on C: the mean |a_i − b_π(i)| of the best matching π."""
    a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    if a.size != b.size or a.size == 0:
        raise ValueError(f"need two non-empty sets of equal size, got {a.size} and {b.size}")
    cost = np.abs(a[:, None] - b[None, :])
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


def shuffle_test(group_a: Sequence[np.ndarray], group_b: Sequence[np.ndarray],
                 permutations: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Whether two groups of runs (their signatures) have different dynamics.

    Statistic: the mean distance between runs of different groups minus the
    mean distance between runs of the same group. p-value: the fraction of
    random relabellings of the pooled runs with a statistic at least as large
    (with the observed labelling counted), so a small p means the groups differ.

    Returns:
      (statistic, p-value).
    """
    runs = list(group_a) + list(group_b)
    n_a = len(group_a)
    if n_a < 1 or len(group_b) < 1 or len(runs) < 3:
        raise ValueError("need at least one run per group and three in all")
    d = np.array([[eigenvalue_distance(x, y) for y in runs] for x in runs])

    def statistic(labels: np.ndarray) -> float:
        same = labels[:, None] == labels[None, :]
        off = ~np.eye(len(runs), dtype=bool)
        within = d[same & off]
        return float(d[~same].mean() - (within.mean() if within.size else 0.0))

    labels = np.array([0] * n_a + [1] * len(group_b))
    observed = statistic(labels)
    rng = np.random.default_rng(seed)
    exceed = sum(statistic(rng.permutation(labels)) >= observed - 1e-15 for _ in range(permutations))
    return observed, (1 + exceed) / (1 + permutations)
