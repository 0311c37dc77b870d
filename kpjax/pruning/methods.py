"""The method registry: a pruning method's scores, its mask, and what it needs;
`prune`, the one path from inputs to a mask.

Methods register themselves in their family's module (`baselines`,
`koopman_scores`, `saliency`); `kpjax.pruning` imports every family, so the
registry is complete once the package is imported.

May import: jax, kpjax.flatten, kpjax.koopman, kpjax.pruning.masks.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax

from kpjax import flatten, koopman
from kpjax.flatten import count_params
from kpjax.pruning.masks import _check_same_structure, keep_fraction, mask_from_flat

PyTree = Any


class PruneInputs(NamedTuple):
    """Everything a score function may use; methods take what they need.

    Attributes:
      params: θ, the parameters to prune (after the trajectory, if any).
      select: bool pytree of prunable leaves.
      grads: ∂L/∂θ on one batch (gradient pruning).
      snapshots: Θ, (T+1, N) over the leaves of `spec`.
      spec: FlatSpec of Θ's columns.
      fit: the DMD fit of Θ (fitted on demand when missing).
      rng: PRNG key (random pruning).
      loss_fn: θ ↦ L on the scoring batches (SNIP, LP, GN; `kpjax.pruning.saliency`).
      grasp_loss_fn: θ ↦ L of the logits divided by GraSP's temperature
        (`saliency.GRASP_TEMPERATURE`) on the same batches (GraSP).
      synflow_fn: θ ↦ R(θ), `saliency.synflow_objective` (SynFlow).
    """

    params: PyTree
    select: PyTree
    grads: Optional[PyTree] = None
    snapshots: Any = None
    spec: Optional[flatten.FlatSpec] = None
    fit: Optional[koopman.DMDFit] = None
    rng: Optional[jax.Array] = None
    loss_fn: Optional[Callable[[PyTree], jax.Array]] = None
    grasp_loss_fn: Optional[Callable[[PyTree], jax.Array]] = None
    synflow_fn: Optional[Callable[[PyTree], jax.Array]] = None


class PruningMethod(NamedTuple):
    """A registered method: everything kpjax and the experiments know of it.

    Attributes:
      score_fn: PruneInputs -> scores, a flat float vector over the prunable
        parameters (layout `flatten.flat_spec(params, select)`): scores stay
        flat from the fit to the mask.
      flat_mask_fn: (scores, spec, keep fraction, among=None) -> flat bool
        mask; `global_flat_mask`, `global_signed_flat_mask` or
        `layerwise_flat_mask` (`among`: only those entries may be kept, for
        the nested masks of gradual pruning).
      needs: the PruneInputs fields besides params/select that score_fn
        reads; `method_flat_scores` checks them before scoring, and
        experiments read them to know what to compute (a trajectory,
        gradients, the scoring batches, a data-free objective).
      description: one line, shown in the binaries' --help.
      label: the name in tables and figures ("KMP").
      family: "baseline", "koopman" or "saliency".
      baseline: the method it is compared with (KMP ↔ GMP, KGP ↔ gradient
        pruning); None for a method that is itself a baseline.
      cutoff_sensitive: whether its scores depend on the fit's rank cutoff
        (the experiments score it again at the extra cutoffs).
      filter_norm: how its per-weight scores make a filter's at
        `--granularity=filter`: "l2" (magnitudes, modes) or "l1" (saliencies
        that add up, and Li et al.'s L1 filter norm).
      iterative_mask_fn: (inputs, keep fraction, rounds) -> mask pytree, for a
        method whose mask is built in rounds that score the pruned network
        again (SynFlow); None: one threshold of `score_fn`'s scores.
      compared_with: further methods whose kept sets are compared with its
        own (subspace KMP with single-mode KMP).
      style: matplotlib line keywords for its curves (None: the default cycle).
    """

    score_fn: Callable[[PruneInputs], jax.Array]
    flat_mask_fn: Callable[[jax.Array, flatten.FlatSpec, float], jax.Array]
    needs: tuple[str, ...] = ()
    description: str = ""
    label: str = ""
    family: str = "baseline"
    baseline: Optional[str] = None
    cutoff_sensitive: bool = False
    filter_norm: str = "l2"
    iterative_mask_fn: Optional[Callable[[PruneInputs, float, int], PyTree]] = None
    compared_with: tuple[str, ...] = ()
    style: Optional[dict] = None


# PruneInputs fields computed from a data batch (the scoring batches after a
# window): a method that needs one of them needs data.
BATCH_INPUTS = frozenset({"grads", "loss_fn", "grasp_loss_fn"})


def from_tree_scores(fn: Callable[[PruneInputs], PyTree]) -> Callable[[PruneInputs], jax.Array]:
    """A pytree score function as a flat one (over the prunable parameters)."""
    return lambda i: flatten.ravel_with_spec(fn(i), flatten.flat_spec(i.params, i.select))


METHODS: dict[str, PruningMethod] = {}


def register_method(name: str, method: PruningMethod) -> None:
    """Adds a method to the registry (experiments pick methods by these names)."""
    METHODS[name] = method


def get_method(name: str) -> PruningMethod:
    """The registered method `name`; ValueError listing the known ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown pruning method {name!r}; known: {sorted(METHODS)}") from None


def method_flat_scores(name: str, inputs: PruneInputs) -> jax.Array:
    """Scores of method `name` over the prunable parameters (flat, float32);
    reusable across compressions."""
    method = get_method(name)
    missing = [f for f in method.needs if getattr(inputs, f) is None]
    if missing:
        raise ValueError(f"method {name!r} needs PruneInputs.{', '.join(missing)}")
    _check_same_structure(inputs.params, inputs.select, "params and select")
    return method.score_fn(inputs)


def method_flat_mask(
    name: str, flat_scores: jax.Array, spec: flatten.FlatSpec, total: int, compression: float
) -> jax.Array:
    """The flat mask of method `name` at compression c = total / nonzero.

    Args:
      flat_scores: from `method_flat_scores`.
      spec: the FlatSpec of the prunable parameters.
      total: all parameters of the model (unprunable ones too).
      compression: c >= 1.
    """
    fraction = keep_fraction(compression, total, spec.size)
    return get_method(name).flat_mask_fn(flat_scores, spec, fraction)


def prune(name: str, inputs: PruneInputs, compression: float) -> PyTree:
    """The mask of method `name` at compression ratio c (total / nonzero)."""
    spec = flatten.flat_spec(inputs.params, inputs.select)
    keep = method_flat_mask(name, method_flat_scores(name, inputs), spec,
                            count_params(inputs.params), compression)
    return mask_from_flat(keep, spec, inputs.params)
