r"""The Löwner ellipsoid (minimum-volume enclosing ellipsoid, MVEE) of a
centrally symmetric set {±p_j}: what Tukan et al. (2022)'s data-free coreset
of a layer's neurons starts from (p_j = neuron j's incoming weights).

A symmetric set's MVEE is centred at 0: E = {x : xᵀ A x ≤ 1} with
A = (d · M(u))⁻¹, M(u) = Σ_j u_j p_j p_jᵀ, where the weights u (u ≥ 0,
Σu = 1) maximise log det M(u) (the D-optimal design; Khachiyan 1996). With
κ_j = p_jᵀ M(u)⁻¹ p_j, u is optimal iff max_j κ_j = d, and an ε-approximate
solution has max_j κ_j ≤ (1 + ε) d: every point then lies in (1 + ε)·E's
boundary scaling, E being within a factor (1 + ε)^{d/2} of the optimal volume.

`mvee_symmetric` runs Khachiyan's coordinate ascent (increase the weight of
the point with the largest κ) with Todd & Yildirim's (2007) away steps
(decrease that of the weighted point with the smallest κ), each step a
rank-one update of M⁻¹ (Sherman–Morrison), O(n d) per iteration.

Points spanning only r < d dimensions (n < d: MnistNet's fc1 has 500
neurons in 800 dimensions) have a flat MVEE: it is solved in their span (r
dimensions) and A is returned in the original coordinates (zero across the
span's complement). When the points are linearly independent (n = r), the
optimum is u_j = 1/n with κ_j = r for every j: every ±p_j lies on the
ellipsoid's boundary, so the ellipsoid cannot rank them.

May import: numpy.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class SymmetricMVEE(NamedTuple):
    """E = {x : xᵀ A x ≤ 1} ⊇ {±p_j}.

    shape: A (d × d), positive semidefinite; rank = the points' rank r.
    weights: u (n,), the design; its support are the points on the boundary.
    kappa: κ_j / r = p_jᵀ A p_j (≤ 1 + ε; 1 on the boundary).
    rank: r, the dimension of the points' span.
    iterations: ascent and away steps taken.
    """
    shape: np.ndarray
    weights: np.ndarray
    kappa: np.ndarray
    rank: int
    iterations: int


def _span(points: np.ndarray, rtol: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates of the points in an orthonormal basis V (d × r) of their span."""
    _, s, vt = np.linalg.svd(points, full_matrices=False)
    r = int(np.sum(s > rtol * (s[0] if s.size else 0.0)))
    v = vt[:r].T
    return points @ v, v


def mvee_symmetric(points: np.ndarray, tol: float = 1e-3, max_iter: int = 100_000,
                   rank_rtol: float = 1e-10) -> SymmetricMVEE:
    """The (1 + tol)-approximate MVEE of {±p_j}, the rows of `points` (n × d).

    Raises:
      ValueError: not a finite 2-D array with a nonzero row, or tol ≤ 0.
    """
    p = np.asarray(points, np.float64)
    if p.ndim != 2 or not p.size or not np.all(np.isfinite(p)):
        raise ValueError(f"mvee_symmetric: points must be a finite (n, d) array, got shape {p.shape}")
    if not tol > 0:
        raise ValueError(f"mvee_symmetric: tol must be > 0, got {tol}")
    q, basis = _span(p, rank_rtol)
    n, r = q.shape
    if r == 0:
        raise ValueError("mvee_symmetric: every point is 0")
    u = np.full(n, 1.0 / n)
    m_inv = np.linalg.inv(q.T @ (q * u[:, None]))
    kappa = np.einsum("ij,jk,ik->i", q, m_inv, q)
    it = 0
    while it < max_iter:
        j_up = int(np.argmax(kappa))
        up = kappa[j_up] - r
        support = np.flatnonzero(u > 0)
        j_down = int(support[np.argmin(kappa[support])])
        down = r - kappa[j_down]
        if up <= tol * r and down <= tol * r:
            break
        j = j_up if up >= down else j_down
        k = kappa[j]
        floor = -u[j] / (1.0 - u[j]) if u[j] < 1.0 else 0.0  # an away step stops at weight 0
        # The exact line search of log det M along e_j − u; at κ_j ≤ 1 log det
        # keeps rising as u_j falls, so the away step drops the point.
        beta = (k - r) / (r * (k - 1.0)) if k > 1.0 else floor
        if j == j_down:
            beta = max(beta, floor)
            if beta == 0.0:
                break
        w = q @ (m_inv @ q[j])  # p_iᵀ M⁻¹ p_j
        denom = 1.0 - beta + beta * k
        m_inv = (m_inv - beta * np.outer(m_inv @ q[j], m_inv @ q[j]) / denom) / (1.0 - beta)
        kappa = (kappa - beta * w * w / denom) / (1.0 - beta)
        u *= 1.0 - beta
        u[j] += beta
        u[u < 0] = 0.0
        it += 1
    shape = basis @ (m_inv / r) @ basis.T
    return SymmetricMVEE(shape, u, kappa / r, r, it)
