"""Saliency scores from the loss or the network function: SNIP, GraSP,
SynFlow and Lubana & Dick's gradient-flow measures.

Each score is a pytree like θ, computed from a function of θ alone:
  * `loss_fn(θ)`: the loss L on the scoring batches (SNIP, GraSP, LP, GN);
    the caller closes over data, BatchNorm statistics and mode.
  * `objective(θ)`: SynFlow's data-free R(θ) = 1ᵀ f(|θ|; 1), built by
    `synflow_objective` from a Flax apply function.

With g = ∂L/∂θ and H = ∂²L/∂θ² (H g by `jax.jvp` of `jax.grad`: no Hessian
is ever formed):
  SNIP / loss preservation (LP)       |θ ⊙ g|         (Lee et al. 2019)
  magnitude-biased LP                 |θ² ⊙ g|        (Lubana & Dick 2021)
  gradient-norm measure (GN)          |θ ⊙ H g|       (Lubana & Dick 2021)
  GraSP                               θ ⊙ H g, signed (Wang et al. 2020)
  SynFlow                             |θ ⊙ ∂R/∂θ| / R (Tanaka et al. 2020)

GraSP removes the weights with the largest −θ ⊙ Hg (removing them reduces
the gradient flow least), i.e. keeps the largest θ ⊙ Hg: the score here has
that sign, and its mask keeps the largest signed values (no modulus). Its L
is taken on the logits divided by T = `GRASP_TEMPERATURE` = 200, as in Wang
et al.'s code and Synaptic-Flow's (without it, MnistNet pruned at
initialization at c = 3.16 trained to 11 % accuracy: BUILD_NOTES).

May import: jax, numpy, kpjax.flatten, kpjax.pruning.masks, kpjax.pruning.methods.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from kpjax import flatten
from kpjax.pruning.masks import (apply_mask, check_keep_fraction, global_flat_mask,
                                 global_signed_flat_mask, mask_from_flat)
from kpjax.pruning.methods import PruningMethod, from_tree_scores, get_method, register_method

PyTree = Any
GRASP_TEMPERATURE = 200.0
LossFn = Callable[[PyTree], jax.Array]


def _map(fn, *trees):
    return jax.tree_util.tree_map(fn, *trees)


@functools.lru_cache(maxsize=32)
def _grad(loss_fn: LossFn):
    """jit(∂L/∂θ), compiled once per loss function (op by op, a ResNet's
    derivative dispatches hundreds of kernels)."""
    return jax.jit(jax.grad(loss_fn))


@functools.lru_cache(maxsize=32)
def _hessian_gradient(loss_fn: LossFn):
    grad_fn = jax.grad(loss_fn)

    def hg(params):
        grads = grad_fn(params)
        return jax.jvp(grad_fn, (params,), (grads,))[1], grads
    return jax.jit(hg)


@functools.lru_cache(maxsize=32)
def _value_and_grad(objective: LossFn):
    return jax.jit(jax.value_and_grad(objective))


def snip_scores(params: PyTree, loss_fn: LossFn) -> PyTree:
    """|θ ⊙ ∂L/∂θ|: SNIP's connection sensitivity, Lubana & Dick's loss preservation."""
    grads = _grad(loss_fn)(params)
    return _map(lambda p, g: jnp.abs(p * g), params, grads)


def lp_biased_scores(params: PyTree, loss_fn: LossFn) -> PyTree:
    """|θ² ⊙ ∂L/∂θ|: loss preservation biased towards large weights (Lubana & Dick)."""
    grads = _grad(loss_fn)(params)
    return _map(lambda p, g: jnp.abs(p * p * g), params, grads)


def hessian_gradient_product(params: PyTree, loss_fn: LossFn) -> tuple[PyTree, PyTree]:
    """(H g, g) at θ: the forward-over-reverse derivative of ∂L/∂θ along g."""
    return _hessian_gradient(loss_fn)(params)


def grasp_scores(params: PyTree, loss_fn: LossFn) -> PyTree:
    """θ ⊙ H g, signed; keep the largest (= prune the largest of Wang et al.'s −θ ⊙ Hg).

    `loss_fn` should be the tempered loss (logits / `GRASP_TEMPERATURE`,
    `kpjax.train.batch_loss_fn(..., temperature=...)`) to match the reference.
    """
    hg, _ = hessian_gradient_product(params, loss_fn)
    return _map(lambda p, h: p * h, params, hg)


def reinit_dense_kernels(params: PyTree, rng: jax.Array) -> PyTree:
    """θ with every dense (2-D) `kernel` re-drawn from Xavier's normal
    N(0, 2 / (fan_in + fan_out)), untruncated as torch's `xavier_normal_`.

    Wang et al.'s GraSP code scores such a copy (`reinit=True`) and applies
    the mask to the original θ₀; conv kernels and biases are kept.
    """
    init = jax.nn.initializers.variance_scaling(1.0, "fan_avg", "normal")
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(rng, len(leaves))
    out = [init(k, p.shape, p.dtype) if getattr(path[-1], "key", None) == "kernel" and p.ndim == 2
           else p for k, (path, p) in zip(keys, leaves)]
    return jax.tree_util.tree_unflatten(treedef, out)


def gradient_norm_scores(params: PyTree, loss_fn: LossFn) -> PyTree:
    """|θ ⊙ H g|: how much removing θ changes the gradient norm (Lubana & Dick's GN)."""
    hg, _ = hessian_gradient_product(params, loss_fn)
    return _map(lambda p, h: jnp.abs(p * h), params, hg)


def synflow_objective(apply_fn: Callable[..., jax.Array], variables: PyTree,
                      input_shape: tuple[int, ...]) -> LossFn:
    """R(θ) = Σ f(|θ|; 1): the network with every parameter and statistic made
    non-negative, BatchNorm in inference mode, on one all-ones example.

    As in Tanaka et al.'s code, every variable (params, biases, BatchNorm's
    scale, bias and running statistics) enters with its absolute value; the
    returned function of θ takes |θ| itself. Evaluated in float64: the product
    of |θ| over a deep network overflows float32.
    """
    others = {k: v for k, v in variables.items() if k != "params"}

    def objective(params: PyTree) -> jax.Array:
        with jax.enable_x64(True):
            state = _map(lambda x: jnp.abs(jnp.asarray(x, jnp.float64)), others)
            ones = jnp.ones((1, *input_shape), jnp.float64)
            out = apply_fn({"params": _map(jnp.abs, params), **state}, ones, train=False)
            return jnp.sum(out)
    return objective


def synflow_scores(params: PyTree, objective: LossFn) -> PyTree:
    """|θ ⊙ ∂R/∂θ| / R, float32, for R = `objective`.

    Computed in float64; dividing by R keeps the ranking and brings the scores
    into float32 range (for a bias-free ReLU network each layer's scores sum
    to R, Tanaka et al.'s conservation law, so every score is ≤ 1).
    """
    with jax.enable_x64(True):
        params64 = _map(lambda p: jnp.asarray(p, jnp.float64), params)
        r, grads = _value_and_grad(objective)(params64)
        if not bool(jnp.isfinite(r)) or float(r) <= 0.0:
            raise ValueError(f"SynFlow's objective R = {float(r)} is not finite and positive "
                             "(a network of zeros, or an overflow even in float64)")
        return _map(lambda p, g: (jnp.abs(p * g) / r).astype(jnp.float32), params64, grads)


def synflow_iterative_mask(params: PyTree, select: PyTree, objective, fraction: float,
                           rounds: int = 100) -> PyTree:
    """Iterative SynFlow (Tanaka et al. 2020): `rounds` rounds of scoring the
    masked network and keeping the top f^(k/rounds) of the prunable parameters
    (the exponential schedule), so that no layer collapses before the last.

    Args:
      params, select: θ and its prunable leaves.
      objective: `saliency.synflow_objective(...)`, R as a function of θ.
      fraction: f, the fraction of prunable parameters kept at the end.
      rounds: 100 in the paper.

    Returns:
      The bool mask pytree (all-True off the prunable set).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    spec = flatten.flat_spec(params, select)
    check_keep_fraction(fraction, spec)
    keep = jnp.ones(spec.size, bool)
    for k in range(1, rounds + 1):
        masked = apply_mask(params, mask_from_flat(keep, spec, params))
        scores = flatten.ravel_with_spec(synflow_scores(masked, objective), spec)
        # Pruned weights score 0 and stay pruned: the kept set only shrinks.
        keep = global_flat_mask(jnp.where(keep, scores, 0.0), spec, fraction ** (k / rounds))
    return mask_from_flat(keep, spec, params)


register_method("snip", PruningMethod(
    from_tree_scores(lambda i: snip_scores(i.params, i.loss_fn)), global_flat_mask,
    ("loss_fn",), "SNIP / loss preservation: |θ ⊙ ∂L/∂θ| on the scoring batches", label="SNIP",
    family="saliency", filter_norm="l1"))
# Lubana & Dick's loss preservation is SNIP's score.
register_method("lp", get_method("snip")._replace(label="LP"))
register_method("lp_biased", PruningMethod(
    from_tree_scores(lambda i: lp_biased_scores(i.params, i.loss_fn)), global_flat_mask,
    ("loss_fn",), "magnitude-biased loss preservation: |θ² ⊙ ∂L/∂θ|", label="biased LP",
    family="saliency", filter_norm="l1"))
register_method("gn", PruningMethod(
    from_tree_scores(lambda i: gradient_norm_scores(i.params, i.loss_fn)),
    global_flat_mask, ("loss_fn",), "gradient-norm measure: |θ ⊙ Hg|", label="GN", family="saliency",
    filter_norm="l1"))
register_method("grasp", PruningMethod(
    from_tree_scores(lambda i: grasp_scores(i.params, i.grasp_loss_fn)),
    global_signed_flat_mask, ("grasp_loss_fn",),
    f"GraSP: keep the largest θ ⊙ Hg, logits / {GRASP_TEMPERATURE:g}", label="GraSP", family="saliency"))
# The two other signs of GraSP's score, for the ablation of its collapse at
# low compression (experiments.grasp_ablation): keep the largest |θ ⊙ Hg|
# (Lubana & Dick's GN on GraSP's tempered loss), or the largest −θ ⊙ Hg (the
# opposite of Wang et al.'s choice: prune what they keep first).
register_method("grasp_magnitude", PruningMethod(
    from_tree_scores(lambda i: jax.tree_util.tree_map(jnp.abs, grasp_scores(i.params, i.grasp_loss_fn))),
    global_flat_mask, ("grasp_loss_fn",),
    f"GraSP's score by modulus: keep the largest |θ ⊙ Hg|, logits / {GRASP_TEMPERATURE:g}",
    label="|GraSP|", family="saliency"))
register_method("grasp_negated", PruningMethod(
    from_tree_scores(lambda i: jax.tree_util.tree_map(jnp.negative, grasp_scores(i.params, i.grasp_loss_fn))),
    global_signed_flat_mask, ("grasp_loss_fn",),
    f"GraSP's score negated: keep the largest −θ ⊙ Hg, logits / {GRASP_TEMPERATURE:g}",
    label="−GraSP", family="saliency"))
register_method("synflow", PruningMethod(
    from_tree_scores(lambda i: synflow_scores(i.params, i.synflow_fn)), global_flat_mask,
    ("synflow_fn",), "SynFlow: |θ ⊙ ∂R/∂θ|, its mask in rounds (synflow_iterative_mask)",
    label="SynFlow", family="saliency",
    iterative_mask_fn=lambda i, fraction, rounds: synflow_iterative_mask(
        i.params, i.select, i.synflow_fn, fraction, rounds)))
