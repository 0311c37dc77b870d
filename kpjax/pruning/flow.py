r"""What a mask does to the gradient flow (Lubana & Dick 2021): the loss, the
norm's rate of change and the gradient norm, before and after θ → θ ⊙ m.

Under gradient flow dθ/dt = −g(θ), g = ∂L/∂θ, H = ∂²L/∂θ²:

  dL/dt = −‖g‖²,   d‖θ‖²/dt = −2 θᵀg,   d²‖θ‖²/dt² = 2 ‖g‖² + 2 θᵀH g.

Lubana & Dick read the pruning measures through these derivatives: magnitude
|θ| keeps the parameters that carry ‖θ‖²; loss preservation |θ ⊙ g| (LP,
SNIP) keeps the first-order term θᵀg; the gradient-norm measures θ ⊙ Hg (GN
|θ ⊙ Hg|, GraSP signed) act on the second-order term. Removing
δ = θ ⊙ (1 − m) changes, to first order in δ,

  L(θ ⊙ m) − L(θ)       ≈ −gᵀδ
  ‖g(θ ⊙ m)‖² − ‖g(θ)‖² ≈ −2 δᵀH g

(H g by `jax.jvp` of `jax.grad`; no Hessian is formed). `flow_measures`
returns these predictions beside the actual values and the shares of θᵀg,
Σ|θ ⊙ g| and ‖θ‖² the kept parameters carry: the measurements with which
experiments.gradient_flow tests the paper's three claims.

May import: jax, kpjax.pruning.masks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from kpjax.pruning.masks import apply_mask

PyTree = Any


class FlowMeasures(NamedTuple):
    """Scalars of θ (dense) and θ ⊙ m (pruned) on one loss L.

    loss, loss_pruned: L(θ), L(θ ⊙ m).
    predicted_loss_change: −gᵀ(θ ⊙ (1 − m)), the first-order L(θ ⊙ m) − L(θ).
    grad_norm_sq, grad_norm_sq_pruned: ‖g(θ)‖², ‖g(θ ⊙ m)‖² (all coordinates).
    kept_grad_norm_sq_pruned: ‖m ⊙ g(θ ⊙ m)‖², the pruned network's −dL/dt
      (its removed weights are frozen at 0).
    predicted_grad_norm_sq_change: −2 (θ ⊙ (1 − m))ᵀ H g.
    norm_rate, kept_norm_rate: θᵀg and (θ ⊙ m)ᵀg (−½ d‖θ‖²/dt, dense and
      its kept part).
    abs_rate, kept_abs_rate: Σ|θ ⊙ g| and its kept part (what LP keeps).
    norm_sq, kept_norm_sq: ‖θ‖² and ‖θ ⊙ m‖² (what magnitude keeps).
    """
    loss: jax.Array
    loss_pruned: jax.Array
    predicted_loss_change: jax.Array
    grad_norm_sq: jax.Array
    grad_norm_sq_pruned: jax.Array
    kept_grad_norm_sq_pruned: jax.Array
    predicted_grad_norm_sq_change: jax.Array
    norm_rate: jax.Array
    kept_norm_rate: jax.Array
    abs_rate: jax.Array
    kept_abs_rate: jax.Array
    norm_sq: jax.Array
    kept_norm_sq: jax.Array


def _sum(tree: PyTree) -> jax.Array:
    return sum(jnp.sum(x, dtype=jnp.float32) for x in jax.tree_util.tree_leaves(tree))


def _map(fn, *trees):
    return jax.tree_util.tree_map(fn, *trees)


def flow_measures(params: PyTree, mask: PyTree, loss_fn: Callable[[PyTree], jax.Array]) -> FlowMeasures:
    """The gradient-flow quantities of pruning `params` (θ) to θ ⊙ `mask` (m).

    Args:
      params: θ, any pytree of float arrays.
      mask: m, a bool pytree like θ (True = kept; unprunable leaves True).
      loss_fn: L(θ) -> scalar (the caller closes over data and BatchNorm state).

    Returns:
      `FlowMeasures`, float32 scalars. Pure: jit it with `loss_fn` closed over
      (`jax.jit(functools.partial(flow_measures, loss_fn=L))`) to measure
      several masks of one θ with one compilation.
    """
    grad_fn = jax.grad(loss_fn)
    loss, g = jax.value_and_grad(loss_fn)(params)
    _, hg = jax.jvp(grad_fn, (params,), (g,))
    keep = _map(lambda m, p: jnp.asarray(m).astype(p.dtype), mask, params)
    removed = _map(lambda p, k: p * (1 - k), params, keep)
    pruned = apply_mask(params, mask)
    loss_pruned, g_pruned = jax.value_and_grad(loss_fn)(pruned)
    theta_g = _map(jnp.multiply, params, g)
    return FlowMeasures(
        loss=loss,
        loss_pruned=loss_pruned,
        predicted_loss_change=-_sum(_map(jnp.multiply, g, removed)),
        grad_norm_sq=_sum(_map(jnp.square, g)),
        grad_norm_sq_pruned=_sum(_map(jnp.square, g_pruned)),
        kept_grad_norm_sq_pruned=_sum(_map(lambda x, k: jnp.square(x) * k, g_pruned, keep)),
        predicted_grad_norm_sq_change=-2 * _sum(_map(jnp.multiply, removed, hg)),
        norm_rate=_sum(theta_g),
        kept_norm_rate=_sum(_map(jnp.multiply, theta_g, keep)),
        abs_rate=_sum(_map(jnp.abs, theta_g)),
        kept_abs_rate=_sum(_map(lambda x, k: jnp.abs(x) * k, theta_g, keep)),
        norm_sq=_sum(_map(jnp.square, params)),
        kept_norm_sq=_sum(_map(lambda p, k: jnp.square(p) * k, params, keep)),
    )
