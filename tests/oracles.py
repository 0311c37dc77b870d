"""Dynamical systems with known Koopman spectra, shared by the tests."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class QuadraticGD(NamedTuple):
    """Gradient descent on L(θ) = ½(θ−θ*)ᵀH(θ−θ*): θ(t+1) = θ(t) − ηH(θ(t) − θ*)."""

    snapshots: np.ndarray  # (T+1, N) float64
    theta_star: np.ndarray
    hessian: np.ndarray
    eta: float
    excited_h: np.ndarray  # eigenvalues of H excited by θ_0 − θ*

    def grad(self, theta: np.ndarray) -> np.ndarray:
        return self.hessian @ (theta - self.theta_star)


def quadratic_gd(
    n: int = 120,
    steps: int = 30,
    excited_h=(1.0, 2.0, 3.0),
    eta: float = 0.1,
    theta_star: np.ndarray | None = None,
    seed: int = 0,
) -> QuadraticGD:
    """A trajectory whose DMD must give λ = 1 (mode θ*) and λ = 1 − ηh.

    Only len(excited_h) eigen-directions of H are excited (N ≫ k+1), so the
    affine dynamics fit in the snapshot span (docs/DESIGN.md §1, oracles).
    """
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    k = len(excited_h)
    h = np.full(n, 1.5)
    h[:k] = excited_h
    hessian = q @ np.diag(h) @ q.T
    if theta_star is None:
        theta_star = rng.normal(size=n)
    theta = theta_star + q[:, :k] @ (rng.normal(size=k) + np.sign(rng.normal(size=k)) * 2.0)
    traj = [theta]
    for _ in range(steps):
        theta = theta - eta * hessian @ (theta - theta_star)
        traj.append(theta)
    return QuadraticGD(np.stack(traj), theta_star, hessian, eta, np.asarray(excited_h))


def damped_rotation(
    n: int = 80, steps: int = 30, radius: float = 0.95, omega: float = 0.4, seed: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """θ(t+1) − θ* = A(θ(t) − θ*), A a damped rotation in one random plane.

    Returns (snapshots (T+1, N), the true non-unit eigenvalues r·e^{±iω}).
    """
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, 2)))
    rot = radius * np.array([[np.cos(omega), -np.sin(omega)], [np.sin(omega), np.cos(omega)]])
    theta_star = rng.normal(size=n)
    z = np.array([2.0, -1.0])
    traj = []
    for _ in range(steps + 1):
        traj.append(theta_star + q @ z)
        z = rot @ z
    lam = radius * np.exp(1j * omega)
    return np.stack(traj), np.array([lam, lam.conjugate()])


def stack_snapshots(trajectory, select):
    """Θ ((T+1, N) float32) and its FlatSpec from a list of parameter pytrees."""
    import jax.numpy as jnp
    from kpjax import flatten
    spec = flatten.flat_spec(trajectory[0], select)
    return jnp.stack([flatten.ravel_with_spec(p, spec).astype(jnp.float32) for p in trajectory]), spec
