r"""Dynamic sparse training at a fixed sparsity: SET (Mocanu et al. 2018) and
RigL (Evci et al. 2020).

Every ΔT steps, in every prunable tensor with n active (kept) weights, a
fraction f_t of them is replaced: the k = ⌊f_t·n⌋ active weights of smallest
|θ| are dropped, and k inactive weights are grown, those with the largest
|∂L/∂θ| on the current batch (RigL; the dense gradient, pruned entries
included) or chosen uniformly at random (SET). Grown weights start at
exactly 0 and without stale optimizer moments (`reset_moments`); each
tensor keeps n active weights, so the sparsity never changes. The update
fraction decays as a cosine, f_t = (α/2)(1 + cos(π t / T_end)), 0 after
T_end (`optax.cosine_decay_schedule`). The starting mask spreads the
sparsity uniformly or by the Erdős–Rényi-Kernel rule (`erk_densities`).

As in the authors' code, the weights dropped at a step may grow back at it
(a dropped weight that is grown again keeps its value: it is no new
connection).

May import: jax, optax, kpjax.pruning.masks.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

from kpjax.pruning.masks import _check_same_structure, _top_k_mask, check_mask

PyTree = Any


def update_fraction(alpha: float, end_step: int) -> optax.Schedule:
    """f_t = (α/2)(1 + cos(π t / T_end)) for t ≤ T_end, 0 after (α: RigL's
    initial drop fraction, 0.3 in the paper; T_end: 75 % of training)."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"the update fraction alpha must be in (0, 1], got {alpha!r}")
    if isinstance(end_step, bool) or not isinstance(end_step, int) or end_step < 1:
        raise ValueError(f"end_step must be an integer >= 1, got {end_step!r}")
    return optax.cosine_decay_schedule(init_value=alpha, decay_steps=end_step)


def drop_and_grow(params: PyTree, mask: PyTree, select: PyTree, fraction: float,
                  grow_scores: PyTree) -> tuple[PyTree, PyTree]:
    """One SET/RigL mask update.

    Args:
      params: θ (pruned entries 0).
      mask: the current bool mask like params.
      select: the prunable leaves (the others stay as they are).
      fraction: f_t in [0, 1].
      grow_scores: pytree like params; the inactive weights with the
        largest scores grow (|∂L/∂θ| for RigL, uniform noise for SET).

    Returns:
      (new mask, grown): grown marks the new connections (kept now, not
      before), whose weights and moments the caller sets to 0.
    """
    check_mask(params, mask, "drop_and_grow(params, mask)")
    _check_same_structure(params, grow_scores, "params and grow_scores")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"drop_and_grow: fraction must be in [0, 1], got {fraction}")
    new_masks, grown = [], []
    leaves = zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(mask),
                 jax.tree_util.tree_leaves(select), jax.tree_util.tree_leaves(grow_scores))
    for p, m, s, g in leaves:
        if not s:
            new_masks.append(m)
            grown.append(jnp.zeros(jnp.shape(m), bool))
            continue
        flat_m = jnp.ravel(m)
        active = int(jnp.sum(flat_m))
        k = int(fraction * active)
        if k == 0 or active == flat_m.size:
            new_masks.append(m)
            grown.append(jnp.zeros(jnp.shape(m), bool))
            continue
        kept = _top_k_mask(jnp.abs(jnp.ravel(p).astype(jnp.float32)), active - k, among=flat_m)
        grow = _top_k_mask(jnp.ravel(g).astype(jnp.float32), k, among=~kept)
        new = kept | grow
        new_masks.append(new.reshape(jnp.shape(m)))
        grown.append((new & ~flat_m).reshape(jnp.shape(m)))
    tree = jax.tree_util.tree_structure(mask)
    return jax.tree_util.tree_unflatten(tree, new_masks), jax.tree_util.tree_unflatten(tree, grown)


def rigl_grow_scores(grads: PyTree) -> PyTree:
    """RigL's grow criterion: |∂L/∂θ| of the dense gradient."""
    return jax.tree_util.tree_map(jnp.abs, grads)


def set_grow_scores(params: PyTree, rng: jax.Array) -> PyTree:
    """SET's grow criterion: uniform random scores, one key per leaf."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(rng, max(len(leaves), 1))
    return jax.tree_util.tree_unflatten(
        tree, [jax.random.uniform(k, jnp.shape(x)) for k, x in zip(keys, leaves)])


def erk_densities(shapes: list[tuple[int, ...]], sparsity: float, power: float = 1.0) -> list[float]:
    """Erdős–Rényi-Kernel densities (Evci et al. 2020, after Mocanu et al.):
    tensor l keeps the fraction ε·(Σ_i d_i / Π_i d_i)^power of its weights
    (d_i its dimensions: a conv's h, w, n_in, n_out), ε set so that the kept
    total is (1 − s)·Σ_l n_l; a tensor whose density would exceed 1 is dense
    and ε is solved again over the others (the authors' loop). 1-D tensors
    (biases) have Σd/Πd = 1, the largest possible, and go dense first."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    sizes = [int(math.prod(shape)) for shape in shapes]
    raw = [(sum(shape) / max(math.prod(shape), 1)) ** power for shape in shapes]
    dense: set[int] = set()
    while True:
        kept_target = (1.0 - sparsity) * sum(sizes) - sum(sizes[i] for i in dense)
        divisor = sum(raw[i] * sizes[i] for i in range(len(shapes)) if i not in dense)
        if divisor <= 0:
            break
        eps = kept_target / divisor
        over = [i for i in range(len(shapes)) if i not in dense and eps * raw[i] > 1.0]
        if not over:
            break
        top = max(raw[i] for i in over)
        dense |= {i for i in over if raw[i] == top}
    return [1.0 if i in dense else min(1.0, eps * raw[i]) for i in range(len(shapes))]


def fixed_sparsity_mask(params: PyTree, select: PyTree, sparsity: float, rng: jax.Array,
                        scores: Optional[PyTree] = None, distribution: str = "uniform") -> PyTree:
    """The starting mask of dynamic sparse training: the prunable tensors at
    sparsity s in all, each keeping its largest `scores` (random when None).

    distribution: "uniform", every prunable tensor at s; "erk", the
      Erdős–Rényi-Kernel densities of `erk_densities` (Evci et al.'s
      default), sparser where a tensor has many weights per dimension.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if distribution not in ("uniform", "erk"):
        raise ValueError(f"distribution must be 'uniform' or 'erk', got {distribution!r}")
    scores = set_grow_scores(params, rng) if scores is None else scores
    leaves = jax.tree_util.tree_leaves(scores)
    chosen = [x for x, s in zip(leaves, jax.tree_util.tree_leaves(select)) if s]
    densities = iter(erk_densities([jnp.shape(x) for x in chosen], sparsity) if distribution == "erk"
                     else [1.0 - sparsity] * len(chosen))
    out = []
    for x, s in zip(leaves, jax.tree_util.tree_leaves(select)):
        if not s:
            out.append(jnp.ones(jnp.shape(x), bool))
            continue
        k = max(1, int(round(next(densities) * jnp.size(x))))
        out.append(_top_k_mask(jnp.abs(jnp.ravel(x).astype(jnp.float32)), k).reshape(jnp.shape(x)))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(scores), out)
