"""Coreset neuron pruning of a dense layer (after Tukan et al. 2022, "Pruning
neural networks via coresets and convex geometry").

A hidden neuron j of a dense layer feeds the next layer through its
outgoing weights w_j (a row of the next kernel); on an input x it
contributes a_j(x)·w_j, and the next layer's pre-activation is
z(x) = Σ_j a_j(x) w_j + b. A coreset keeps a few neurons and reweights
their rows so that z(x) is preserved in expectation.

  sensitivity   s_j = max over a data sample of a_j(x)‖w_j‖₂ / Σ_k a_k(x)‖w_k‖₂
                (the largest share of the output a neuron carries; a_j ≥ 0
                after ReLU);
  inclusion     π_j = min(1, λ s_j), λ such that Σ_j π_j = k (the requested
                number of neurons; capped neurons are always kept);
  sampling      exactly k neurons by systematic πps sampling over a random
                order (Madow 1949): neuron j is kept with probability π_j;
  reweighting   kept rows w_j / π_j (Horvitz–Thompson), so that
                E[Σ_{j kept} a_j w_j / π_j] = Σ_j a_j w_j for every x.

Taken from the paper: the sensitivity as a neuron's maximal relative
contribution over a data sample, importance sampling by sensitivity, and
reweighting the sampled neurons' outgoing weights. Chosen here (the paper
has no public code): the ℓ₂ norm of the outgoing row in the sensitivity,
sampling without replacement with exactly k distinct neurons and the
Horvitz–Thompson weights (the paper draws i.i.d. with replacement, which
makes the number of distinct neurons random), and no re-fitting of the
bias.

May import: numpy.
"""

from __future__ import annotations

import numpy as np


def sensitivities(activations: np.ndarray, outgoing: np.ndarray) -> np.ndarray:
    """s_j = max_x a_j(x)‖w_j‖₂ / Σ_k a_k(x)‖w_k‖₂ over the rows x of
    `activations` (n, units), ≥ 0; `outgoing` is the next kernel (units, out)."""
    a = np.asarray(activations, np.float64)
    if np.any(a < 0) or not np.all(np.isfinite(a)):
        raise ValueError("activations must be finite and non-negative (after ReLU)")
    share = a * np.linalg.norm(np.asarray(outgoing, np.float64), axis=1)[None, :]
    total = share.sum(axis=1, keepdims=True)
    share = np.divide(share, total, out=np.zeros_like(share), where=total > 0)
    return share.max(axis=0)


def inclusion_probabilities(s: np.ndarray, k: int) -> np.ndarray:
    """π_j = min(1, λ s_j) with Σ π_j = k (neurons with s_j = 0 only when the
    others cannot reach k)."""
    s = np.asarray(s, np.float64)
    n = s.size
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    # Every neuron gets a tiny floor, so that k neurons can always be drawn.
    s = s + 1e-12 * max(float(s.max()), 1.0)
    pi = np.zeros(n)
    capped = np.zeros(n, bool)
    for _ in range(n):
        free = ~capped
        pi[free] = s[free] * (k - capped.sum()) / s[free].sum()
        pi[capped] = 1.0
        over = free & (pi > 1.0)
        if not over.any():
            break
        capped |= over
    return np.minimum(pi, 1.0)


def coreset(activations: np.ndarray, outgoing: np.ndarray, k: int,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Exactly k neurons kept with probability π_j each, and their weights.

    Returns:
      (keep, scale): bool (units,) and float (units,) with scale_j = 1/π_j for
      kept neurons and 0 for the others; multiply the next kernel's rows by
      scale to reweight.
    """
    pi = inclusion_probabilities(sensitivities(activations, outgoing), k)
    order = rng.permutation(pi.size)
    cumulative = np.cumsum(pi[order])
    cumulative[-1] = round(cumulative[-1])  # = k up to rounding
    points = rng.uniform() + np.arange(k)
    picked = order[np.searchsorted(cumulative, points, side="right")]
    keep = np.zeros(pi.size, bool)
    keep[picked] = True
    scale = np.where(keep, 1.0 / np.where(keep, pi, 1.0), 0.0)
    return keep, scale
