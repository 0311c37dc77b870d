"""Pruning scores, masks and the method registry.

Conventions follow ShrinkBench (the paper's harness):
- prunable parameters are the kernels and biases of conv and dense layers,
  never BatchNorm; the classifier can be included or excluded;
- the target is a compression ratio c = total / nonzero parameters, where the
  total counts every parameter (unprunable ones too);
- global pruning uses one threshold over all prunable scores, layerwise
  pruning one per tensor.

Scores are pytrees like the params (only prunable leaves matter); masks are
bool pytrees like the params, True = keep, all-True on unprunable leaves.

May import: jax, numpy, optax, kpjax.flatten, kpjax.koopman, kpjax.saliency.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kpjax import flatten, koopman, saliency
from kpjax.flatten import count_params

PyTree = Any

_PRUNABLE_LEAVES = ("kernel", "bias")


def _check_same_structure(a: PyTree, b: PyTree, what: str) -> None:
    ta, tb = jax.tree_util.tree_structure(a), jax.tree_util.tree_structure(b)
    if ta != tb:
        raise ValueError(f"{what}: pytrees have different structure:\n  {ta}\n  {tb}")


def _paths_and_leaves(tree: PyTree) -> list[tuple[flatten.Path, Any]]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(flatten.path_names(p), leaf) for p, leaf in leaves]


# ---------------------------------------------------------------------------
# Which parameters are prunable.


def prunable(
    params: PyTree, include_classifier: bool = True, classifier: Optional[str] = None
) -> PyTree:
    """ShrinkBench's prunable set as a bool pytree like `params`.

    A leaf is prunable when it is the `kernel` or `bias` of a module that owns
    a `kernel` (conv or dense); BatchNorm owns `scale`/`bias`, no kernel, so it
    is never prunable. The paper prunes the classifier too (default); pass
    include_classifier=False and its module name to exclude it.
    """
    if not include_classifier and not classifier:
        raise ValueError("include_classifier=False needs the classifier's module name")
    entries = _paths_and_leaves(params)
    owners = {path[:-1] for path, _ in entries if path and path[-1] == "kernel"}
    if not include_classifier and not any(o and o[-1] == classifier for o in owners):
        raise ValueError(
            f"classifier {classifier!r} is not a conv/dense module of params; modules: "
            f"{sorted('/'.join(o) for o in owners)}"
        )
    flags = []
    for path, _ in entries:
        owner = path[:-1]
        ok = bool(path) and path[-1] in _PRUNABLE_LEAVES and owner in owners
        if ok and not include_classifier and owner and owner[-1] == classifier:
            ok = False
        flags.append(ok)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), flags)


# ---------------------------------------------------------------------------
# Scores.


def magnitude_scores(params: PyTree) -> PyTree:
    """|θ| (global magnitude pruning, GMP)."""
    return jax.tree_util.tree_map(jnp.abs, params)


def gradient_scores(params: PyTree, grads: PyTree) -> PyTree:
    """|θ ⊙ ∂L/∂θ| (gradient pruning; ShrinkBench uses one training batch)."""
    _check_same_structure(params, grads, "gradient_scores(params, grads)")
    return jax.tree_util.tree_map(lambda p, g: jnp.abs(p * g), params, grads)


def random_scores(params: PyTree, rng: jax.Array) -> PyTree:
    """I.i.d. uniform scores: random pruning, the baseline every method must beat."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(rng, len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [jax.random.uniform(k, jnp.shape(x)) for k, x in zip(keys, leaves)]
    )


def bn_gamma_scores(params: PyTree) -> PyTree:
    """Network slimming's |γ| (Liu et al. 2017): every weight of a conv's
    output channel u scores the |scale[u]| of the BatchNorm after that conv
    (convN → bnN in the same module, as the CIFAR ResNets name them); a
    filter's scores are then one value, so at filter granularity this ranks
    channels by |γ|. Kernels without a BatchNorm score 0 and biases 0."""
    def score(path, x):
        names = [getattr(p, "key", None) for p in path]
        module = params
        for key in names[:-2]:
            module = module[key]
        bn = str(names[-2]).replace("conv", "bn") if names[-2] else None
        if names[-1] == "kernel" and bn in module and bn != names[-2] and "scale" in module[bn]:
            return jnp.broadcast_to(jnp.abs(jnp.asarray(module[bn]["scale"], jnp.float32)), jnp.shape(x))
        return jnp.zeros(jnp.shape(x), jnp.float32)
    return jax.tree_util.tree_map_with_path(score, params)


def scores_from_flat(flat: jax.Array, spec: flatten.FlatSpec, params: PyTree) -> PyTree:
    """A score vector over `spec`'s leaves as a pytree like params (zeros elsewhere)."""
    zeros = jax.tree_util.tree_map(lambda x: jnp.zeros(jnp.shape(x), jnp.float32), params)
    return flatten.unravel_selected(flat.astype(jnp.float32), spec, zeros)


def kmp_flat_scores(snapshots: Any, fit: koopman.DMDFit) -> jax.Array:
    """|b_1 φ_1| over Θ's columns (float32, shape (N,)); see `kmp_scores`."""
    phi = koopman.fixed_point_mode(snapshots, fit)
    with jax.enable_x64(True):
        return jnp.abs(phi).astype(jnp.float32)


def kmp_scores(
    snapshots: Any, fit: koopman.DMDFit, spec: flatten.FlatSpec, params: PyTree
) -> PyTree:
    """Koopman magnitude pruning: |b_1 φ_1|, the mode with λ closest to 1.

    The modulus (not the real part, as in the reference code) makes the score
    independent of the eigenvector's phase; for a real λ_1 they agree. At
    convergence b_1 φ_1 = θ*, so KMP ≡ GMP.
    """
    return scores_from_flat(kmp_flat_scores(snapshots, fit), spec, params)


def kmp_subspace_flat_scores(
    snapshots: Any, fit: koopman.DMDFit, tol: float = koopman.DEFAULT_CLUSTER_TOL
) -> jax.Array:
    """|θ_S|, θ_S = Re Σ_{|λ_i − 1| ≤ tol} b_i φ_i (float32, (N,)); see `kmp_subspace_scores`."""
    theta_s = koopman.fixed_point_subspace(snapshots, fit, tol)
    with jax.enable_x64(True):
        return jnp.abs(theta_s).astype(jnp.float32)


def kmp_subspace_scores(
    snapshots: Any, fit: koopman.DMDFit, spec: flatten.FlatSpec, params: PyTree,
    tol: float = koopman.DEFAULT_CLUSTER_TOL,
) -> PyTree:
    """Subspace KMP: the magnitude of the fixed-point part of θ summed over
    every mode with |λ_i − 1| ≤ tol (`koopman.fixed_point_subspace`).

    KMP's single mode φ_1 is ill-determined when another eigenvalue lies
    within the data's perturbation of λ_1; the sum over the cluster is not.
    With only λ_1 in the cluster it equals KMP for a real λ_1 (for a complex
    λ_1 alone it is |Re b_1 φ_1| where KMP takes |b_1 φ_1|).
    """
    return scores_from_flat(kmp_subspace_flat_scores(snapshots, fit, tol), spec, params)


def kgp_flat_scores(snapshots: Any, fit: koopman.DMDFit) -> jax.Array:
    """|θ(t2) ⊙ Δθ_K(t2)| over Θ's columns (float32, (N,)); see `kgp_scores`."""
    t2 = snapshots.shape[0] - 1
    step = koopman.predicted_step(snapshots, fit, t2)
    with jax.enable_x64(True):
        theta = jnp.asarray(snapshots[t2]).astype(jnp.float64)
        return jnp.abs(theta * step).astype(jnp.float32)


def kgp_scores(
    snapshots: Any, fit: koopman.DMDFit, spec: flatten.FlatSpec, params: PyTree
) -> PyTree:
    """Koopman gradient pruning: |θ(t2) ⊙ Δθ_K(t2)| at the window's last snapshot.

    Δθ_K(t) = Σ_i b_i (λ_i − 1) λ_i^t φ_i is the Koopman-predicted step, which
    under gradient descent equals −η∇L; so KGP ≡ gradient pruning up to the
    global scale η. (The paper's code never released KGP; this is the
    definition of docs/DESIGN.md §1.)
    """
    return scores_from_flat(kgp_flat_scores(snapshots, fit), spec, params)


def layer_kmp_flat_scores(
    snapshots: Any, spec: flatten.FlatSpec, rcond: float = koopman.DEFAULT_RCOND
) -> jax.Array:
    """KMP with one Koopman fit per layer (tensor), fitted together (batched).

    Each tensor gets its own fixed-point mode |b_1^(l) φ_1^(l)|; use with a
    layerwise mask, since per-layer modes share no common scale. Flat over
    Θ's columns, float32.
    """
    fits = koopman.fit_dmd_batched(koopman.segment_grams(snapshots, spec), rcond=rcond)
    ends = list(spec.offsets[1:]) + [spec.size]
    parts = []
    for layer, (start, end) in enumerate(zip(spec.offsets, ends)):
        fit = jax.tree_util.tree_map(lambda x: x[layer], fits)
        parts.append(kmp_flat_scores(snapshots[:, start:end], fit))
    return jnp.concatenate(parts)


# ---------------------------------------------------------------------------
# Compression targets and masks.


def keep_fraction(compression: float, total: int, prunable_count: int) -> float:
    """Fraction f of prunable parameters to keep for compression c = total / nonzero.

    f = (total / prunable)·(1/c − 1) + 1 (unprunable parameters stay dense).

    Raises:
      ValueError: c < 1 or not finite, or c beyond what pruning every prunable
        parameter can reach (total / (total − prunable)).
    """
    c = float(compression)
    if not np.isfinite(c) or c < 1.0:
        raise ValueError(f"compression ratio must be a finite number >= 1, got {compression}")
    if prunable_count <= 0:
        raise ValueError("no prunable parameters")
    f = (total / prunable_count) * (1.0 / c - 1.0) + 1.0
    if f <= 0.0:
        limit = total / max(total - prunable_count, 1)
        raise ValueError(
            f"compression {c} is impossible: {total - prunable_count} of {total} parameters "
            f"are not prunable, so compression is at most {limit:.4g}"
        )
    return f


def _top_k_mask(scores: jax.Array, k: int) -> jax.Array:
    """Keep the k largest scores; ties keep the lower flat index.

    Sorting by (−score, index) with a stable sort makes the kept count exactly
    k whatever the ties, and the choice deterministic.
    """
    order = jnp.argsort(-scores, stable=True)
    keep = jnp.zeros(scores.shape, bool)
    return keep.at[order[:k]].set(True)


def _check_fraction(fraction: float) -> None:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"keep fraction must be in (0, 1], got {fraction}")


def _check_finite(flat: jax.Array, spec: flatten.FlatSpec) -> None:
    finite = np.asarray(jnp.isfinite(flat))
    if not finite.all():
        first = int(np.argmin(finite))
        leaf = int(np.searchsorted(spec.offsets, first, side="right")) - 1
        raise ValueError(f"scores of {'/'.join(spec.paths[leaf])} contain NaN or Inf")


def global_flat_mask(flat: jax.Array, spec: flatten.FlatSpec, fraction: float) -> jax.Array:
    """One threshold over all scores: keep the round(f·N) largest |scores|.

    Args:
      flat: scores over the prunable parameters θ ∈ R^N (layout `spec`).
      spec: the FlatSpec of the prunable leaves.
      fraction: f in (0, 1], from `keep_fraction`.

    Returns:
      Bool (N,), True = keep.
    """
    _check_fraction(fraction)
    _check_finite(flat, spec)
    return _top_k_mask(jnp.abs(flat.astype(jnp.float32)), int(round(fraction * spec.size)))


def global_signed_flat_mask(flat: jax.Array, spec: flatten.FlatSpec, fraction: float) -> jax.Array:
    """One threshold over signed scores: keep the round(f·N) largest (GraSP)."""
    _check_fraction(fraction)
    _check_finite(flat, spec)
    return _top_k_mask(flat.astype(jnp.float32), int(round(fraction * spec.size)))


def layerwise_flat_mask(flat: jax.Array, spec: flatten.FlatSpec, fraction: float) -> jax.Array:
    """One threshold per tensor: keep round(f·size) largest |scores| of each."""
    _check_fraction(fraction)
    _check_finite(flat, spec)
    ends = list(spec.offsets[1:]) + [spec.size]
    parts = [_top_k_mask(jnp.abs(flat[s:e].astype(jnp.float32)), int(round(fraction * (e - s))))
             for s, e in zip(spec.offsets, ends)]
    return jnp.concatenate(parts)


def mask_from_flat(keep: jax.Array, spec: flatten.FlatSpec, params: PyTree) -> PyTree:
    """The bool pytree like params of a flat mask (True on unprunable leaves)."""
    ones = jax.tree_util.tree_map(lambda x: jnp.ones(jnp.shape(x), bool), params)
    return flatten.unravel_selected(keep, spec, ones)


def _tree_mask(flat_mask_fn, scores: PyTree, select: PyTree, fraction: float) -> PyTree:
    _check_same_structure(scores, select, "scores and the prunable selection")
    spec = flatten.flat_spec(scores, select)
    return mask_from_flat(flat_mask_fn(flatten.ravel_with_spec(scores, spec), spec, fraction),
                          spec, scores)


def global_mask(scores: PyTree, select: PyTree, fraction: float) -> PyTree:
    """`global_flat_mask` on pytrees: scores and mask like params.

    Args:
      scores: pytree like params.
      select: bool pytree, the prunable leaves (e.g. from `prunable`).
      fraction: f in (0, 1], from `keep_fraction`.
    """
    return _tree_mask(global_flat_mask, scores, select, fraction)


def layerwise_mask(scores: PyTree, select: PyTree, fraction: float) -> PyTree:
    """`layerwise_flat_mask` on pytrees."""
    return _tree_mask(layerwise_flat_mask, scores, select, fraction)


def apply_mask(params: PyTree, mask: PyTree) -> PyTree:
    """θ ⊙ m: pruned entries set to exactly zero."""
    _check_same_structure(params, mask, "apply_mask(params, mask)")
    return jax.tree_util.tree_map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, mask)


def compression_ratio(params: PyTree, mask: Optional[PyTree] = None) -> float:
    """ShrinkBench's compression: total parameters / nonzero parameters of θ ⊙ m."""
    if mask is not None:
        params = apply_mask(params, mask)
    leaves = jax.tree_util.tree_leaves(params)
    nonzero = sum(int(jnp.count_nonzero(x)) for x in leaves)
    return count_params(params) / max(nonzero, 1)


class MaskedState(NamedTuple):
    """State of `masked`: the inner optimizer's state (the mask is a constant)."""

    inner_state: optax.OptState


def masked(inner: optax.GradientTransformation, mask: PyTree) -> optax.GradientTransformation:
    """An optax optimizer that keeps pruned weights at exactly zero.

    For any inner transformation (sgd, adam, adamw, a chain with weight
    decay, ...): the gradient is zeroed at pruned entries before the inner
    update, so momenta and second moments of pruned weights stay 0, and the
    inner update is zeroed there afterwards, so decoupled weight decay or
    any transformation that mixes coordinates cannot revive them. Given
    `params`, the update at a pruned entry is −θ, which sets a weight that
    was not yet zero to exactly 0 on the first step (θ + (−θ) = 0); with
    pruned weights already zero (`apply_mask`) it is −0.0 and θ stays +0.0.
    `jnp.where`, not multiplication: 0·NaN is NaN.

      tx = pruning.masked(optax.adamw(1e-3, weight_decay=1e-4), mask)
      params = pruning.apply_mask(params, mask)
      opt_state = tx.init(params)  # then the usual optax loop

    Args:
      inner: the optimizer to wrap.
      mask: bool pytree like the params (True = keep); may be traced, so a
        jitted step can take the mask as an argument and need not recompile
        for every mask.

    Returns:
      An `optax.GradientTransformation` with state `MaskedState`.
    """

    def init(params):
        _check_same_structure(params, mask, "masked(tx, mask): params and mask")
        return MaskedState(inner.init(params))

    def update(updates, state, params=None):
        updates = apply_mask(updates, mask)
        new_updates, inner_state = inner.update(updates, state.inner_state, params)
        if params is None:
            new_updates = apply_mask(new_updates, mask)
        else:
            new_updates = jax.tree_util.tree_map(
                lambda u, m, p: jnp.where(m, u, -p).astype(u.dtype), new_updates, mask, params)
        return new_updates, MaskedState(inner_state)

    return optax.GradientTransformation(init, update)


# ---------------------------------------------------------------------------
# Method registry.


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
      loss_fn: θ ↦ L on the scoring batches (SNIP, LP, GN; `kpjax.saliency`).
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
    """A registered method: a score function, its mask, and what it needs.

    Attributes:
      score_fn: PruneInputs -> scores, a flat float vector over the prunable
        parameters (layout `flatten.flat_spec(params, select)`): scores stay
        flat from the fit to the mask.
      flat_mask_fn: (scores, spec, keep fraction) -> flat bool mask;
        `global_flat_mask` or `layerwise_flat_mask`.
      needs: the PruneInputs fields besides params/select that score_fn
        reads; `method_flat_scores` checks them before scoring, and
        experiments read them to know what to compute.
      description: one line, shown in the binaries' --help.
    """

    score_fn: Callable[[PruneInputs], jax.Array]
    flat_mask_fn: Callable[[jax.Array, flatten.FlatSpec, float], jax.Array]
    needs: tuple[str, ...] = ()
    description: str = ""


def _trajectory(inputs: PruneInputs, method: str):
    """Θ, its fit (fitted here when missing) and spec, after checking that the
    trajectory covers every prunable leaf with the params' shapes."""
    sel_spec = flatten.flat_spec(inputs.params, inputs.select)
    spec = inputs.spec
    recorded = dict(zip(spec.paths, spec.shapes))
    missing = [p for p in sel_spec.paths if p not in recorded]
    if missing:
        raise ValueError(
            f"method {method!r}: prunable leaves not in the trajectory: "
            f"{sorted('/'.join(p) for p in missing)}"
        )
    wrong = [f"{'/'.join(p)} {s} vs {recorded[p]}"
             for p, s in zip(sel_spec.paths, sel_spec.shapes) if recorded[p] != s]
    if wrong:
        raise ValueError(f"method {method!r}: the trajectory's shapes differ from the params': {wrong}")
    fit = inputs.fit if inputs.fit is not None else koopman.fit_trajectory(inputs.snapshots)
    return inputs.snapshots, fit, spec


def _prunable_flat(flat: jax.Array, spec: flatten.FlatSpec, inputs: PruneInputs) -> jax.Array:
    """Scores over Θ's columns as scores over the prunable parameters (the same
    vector when Θ records exactly the prunable leaves, the usual case)."""
    target = flatten.flat_spec(inputs.params, inputs.select)
    if spec.paths == target.paths:
        return flat
    return flatten.ravel_with_spec(scores_from_flat(flat, spec, inputs.params), target)


def _koopman_method(flat_fn):
    def score(inputs: PruneInputs) -> jax.Array:
        snapshots, fit, spec = _trajectory(inputs, "a Koopman method")
        return _prunable_flat(flat_fn(snapshots, fit), spec, inputs)
    return score


def _layer_kmp(inputs: PruneInputs) -> jax.Array:
    _trajectory(inputs, "layer_kmp")
    return _prunable_flat(layer_kmp_flat_scores(inputs.snapshots, inputs.spec), inputs.spec, inputs)


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


def method_scores(name: str, inputs: PruneInputs) -> PyTree:
    """Scores of method `name` as a pytree like params (zeros off the prunable set)."""
    spec = flatten.flat_spec(inputs.params, inputs.select)
    return scores_from_flat(method_flat_scores(name, inputs), spec, inputs.params)


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


def method_mask(
    name: str, scores: PyTree, params: PyTree, select: PyTree, compression: float
) -> PyTree:
    """The mask of method `name` from its (pytree) scores at compression c."""
    _check_same_structure(params, select, "params and select")
    _check_same_structure(scores, select, "scores and the prunable selection")
    spec = flatten.flat_spec(params, select)
    keep = method_flat_mask(name, flatten.ravel_with_spec(scores, spec), spec,
                            count_params(params), compression)
    return mask_from_flat(keep, spec, params)


def prune(name: str, inputs: PruneInputs, compression: float) -> PyTree:
    """The mask of method `name` at compression ratio c (total / nonzero)."""
    spec = flatten.flat_spec(inputs.params, inputs.select)
    keep = method_flat_mask(name, method_flat_scores(name, inputs), spec,
                            count_params(inputs.params), compression)
    return mask_from_flat(keep, spec, inputs.params)


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
    _check_fraction(fraction)
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    spec = flatten.flat_spec(params, select)
    keep = jnp.ones(spec.size, bool)
    for k in range(1, rounds + 1):
        masked = apply_mask(params, mask_from_flat(keep, spec, params))
        scores = flatten.ravel_with_spec(saliency.synflow_scores(masked, objective), spec)
        # Pruned weights score 0 and stay pruned: the kept set only shrinks.
        keep = global_flat_mask(jnp.where(keep, scores, 0.0), spec, fraction ** (k / rounds))
    return mask_from_flat(keep, spec, params)


def mask_jaccard(a: PyTree, b: PyTree, select: PyTree) -> float:
    """|A ∩ B| / |A ∪ B| of the kept prunable parameters of two masks."""
    _check_same_structure(a, b, "mask_jaccard(a, b)")
    inter = union = 0
    for x, y, s in zip(*(jax.tree_util.tree_leaves(t) for t in (a, b, select))):
        if s:
            inter += int(jnp.sum(x & y))
            union += int(jnp.sum(x | y))
    return inter / union if union else 1.0


def mask_distance(a: PyTree, b: PyTree, select: PyTree) -> float:
    """Normalized Hamming distance of two masks over the prunable parameters:
    the fraction whose keep/prune decision differs (You et al.'s early-bird
    mask distance; 0 for equal masks, 1 for complements)."""
    _check_same_structure(a, b, "mask_distance(a, b)")
    differ = count = 0
    for x, y, s in zip(*(jax.tree_util.tree_leaves(t) for t in (a, b, select))):
        if s:
            differ += int(jnp.sum(x != y))
            count += int(np.size(x))
    if not count:
        raise ValueError("mask_distance: no prunable parameters")
    return differ / count


def early_bird_index(distances: list[float], patience: int = 5, eps: float = 0.1) -> int | None:
    """Where an early-bird ticket is drawn (You et al. 2020): the first i such
    that the `patience` distances ending at i are all below eps; distances[i]
    compares masks i and i+1, so the ticket is mask i+1. None if never."""
    if patience < 1 or not eps > 0:
        raise ValueError(f"patience must be >= 1 and eps > 0, got {patience}, {eps}")
    run = 0
    for i, d in enumerate(distances):
        run = run + 1 if d < eps else 0
        if run >= patience:
            return i
    return None


_TRAJECTORY = ("snapshots", "spec")

register_method("gmp", PruningMethod(
    from_tree_scores(lambda i: magnitude_scores(i.params)), global_flat_mask, (),
    "global magnitude pruning: |θ|, one threshold"))
register_method("l1", PruningMethod(
    from_tree_scores(lambda i: magnitude_scores(i.params)), global_flat_mask, (),
    "L1 filter norm (Li et al. 2017): |θ|, summed over each filter with --granularity=filter "
    "(gmp: the L2 norm); per weight the same as gmp"))
register_method("layer_mag", PruningMethod(
    from_tree_scores(lambda i: magnitude_scores(i.params)), layerwise_flat_mask, (),
    "layerwise magnitude pruning: |θ|, one threshold per tensor"))
register_method("grad", PruningMethod(
    from_tree_scores(lambda i: gradient_scores(i.params, i.grads)), global_flat_mask, ("grads",),
    "global gradient pruning: |θ ⊙ ∂L/∂θ| on one batch"))
register_method("layer_grad", PruningMethod(
    from_tree_scores(lambda i: gradient_scores(i.params, i.grads)), layerwise_flat_mask, ("grads",),
    "layerwise gradient pruning"))
register_method("random", PruningMethod(
    from_tree_scores(lambda i: random_scores(i.params, i.rng)), global_flat_mask, ("rng",),
    "uniformly random global pruning"))
register_method("snip", PruningMethod(
    from_tree_scores(lambda i: saliency.snip_scores(i.params, i.loss_fn)), global_flat_mask,
    ("loss_fn",), "SNIP / loss preservation: |θ ⊙ ∂L/∂θ| on the scoring batches"))
register_method("lp", METHODS["snip"])  # Lubana & Dick's loss preservation is SNIP's score
register_method("lp_biased", PruningMethod(
    from_tree_scores(lambda i: saliency.lp_biased_scores(i.params, i.loss_fn)), global_flat_mask,
    ("loss_fn",), "magnitude-biased loss preservation: |θ² ⊙ ∂L/∂θ|"))
register_method("gn", PruningMethod(
    from_tree_scores(lambda i: saliency.gradient_norm_scores(i.params, i.loss_fn)),
    global_flat_mask, ("loss_fn",), "gradient-norm measure: |θ ⊙ Hg|"))
register_method("grasp", PruningMethod(
    from_tree_scores(lambda i: saliency.grasp_scores(i.params, i.grasp_loss_fn)),
    global_signed_flat_mask, ("grasp_loss_fn",),
    f"GraSP: keep the largest θ ⊙ Hg, logits / {saliency.GRASP_TEMPERATURE:g}"))
register_method("synflow", PruningMethod(
    from_tree_scores(lambda i: saliency.synflow_scores(i.params, i.synflow_fn)), global_flat_mask,
    ("synflow_fn",), "SynFlow, one shot: |θ ⊙ ∂R/∂θ| (iterative: synflow_iterative_mask)"))
register_method("bn_gamma", PruningMethod(
    from_tree_scores(lambda i: bn_gamma_scores(i.params)), global_flat_mask, (),
    "network slimming: |γ| of each conv channel's BatchNorm (meant for --granularity=filter)"))
register_method("kmp", PruningMethod(
    _koopman_method(kmp_flat_scores), global_flat_mask, _TRAJECTORY,
    "Koopman magnitude pruning: |b₁φ₁|, λ₁ closest to 1"))
register_method("kmp_subspace", PruningMethod(
    _koopman_method(kmp_subspace_flat_scores), global_flat_mask, _TRAJECTORY,
    f"subspace KMP: |Re Σ b_iφ_i| over all |λ_i − 1| ≤ {koopman.DEFAULT_CLUSTER_TOL:g}"))
register_method("kgp", PruningMethod(
    _koopman_method(kgp_flat_scores), global_flat_mask, _TRAJECTORY,
    "Koopman gradient pruning: |θ(t₂) ⊙ Δθ_K(t₂)|"))
register_method("layer_kmp", PruningMethod(
    _layer_kmp, layerwise_flat_mask, _TRAJECTORY,
    "KMP with one Koopman fit per tensor, layerwise masks"))
