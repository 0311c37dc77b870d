"""Masked training and evaluation steps, and the loss and gradients of a batch.

Everything here takes a Flax-style ``apply_fn`` (``module.apply``) and a mask;
nothing imports a particular model or dataset.

``apply_fn(variables, x, train=bool, mutable=...)`` with ``variables`` =
``{'params': θ}`` plus ``{'batch_stats': ...}`` for models with BatchNorm.
Masks are bool pytrees shaped like the params (True = keep).

May import: jax, optax, kpjax.metrics, kpjax.pruning, kpjax.train.compile_options, kpjax.train.state.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from kpjax.metrics import accuracy_counts
from kpjax.pruning.masks import apply_mask
from kpjax.pruning.optimizer import freeze_pruned
from kpjax.train.compile_options import jit_step
from kpjax.train.state import TrainState

PyTree = Any
ApplyFn = Callable[..., Any]
# (rng, images) -> images; runs inside the jitted step.
AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]
# images -> images; runs inside the jitted step, after augmentation.
NormalizeFn = Callable[[jax.Array], jax.Array]
Metrics = dict[str, jax.Array]


def _forward(apply_fn, params, batch_stats, images, train):
    """Logits and batch stats (updated in training mode when there are any)."""
    if not batch_stats:
        return apply_fn({"params": params}, images, train=train), batch_stats
    variables = {"params": params, "batch_stats": batch_stats}
    if not train:
        return apply_fn(variables, images, train=False), batch_stats
    logits, updates = apply_fn(variables, images, train=True,
                               mutable=["batch_stats"])
    return logits, updates["batch_stats"]


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def make_train_step(
    apply_fn: ApplyFn,
    tx: optax.GradientTransformation,
    *,
    augment_fn: AugmentFn | None = None,
    normalize_fn: NormalizeFn | None = None,
    jit: bool = True,
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, Metrics]]:
    """One masked SGD step on the mean cross-entropy of a batch.

    Args:
        apply_fn: the model's ``apply``.
        tx: the optimizer.
        augment_fn: optional ``(rng, images) -> images`` (random crop, flip).
        normalize_fn: optional ``images -> images``, after augmentation.
        jit: return the jitted step with ``state`` donated (True), or the
            plain function, to compose inside another jit.

    Returns:
        ``train_step(state, images, labels) -> (state, metrics)``, metrics =
        ``{'loss': mean cross-entropy, 'top1': batch accuracy}`` (device
        scalars, from the forward pass before the update). The jitted step
        donates ``state``: do not use it after the call.
    """

    def train_step(state: TrainState, images, labels):
        rng, augment_rng = jax.random.split(state.rng)
        if augment_fn is not None:
            images = augment_fn(augment_rng, images)
        if normalize_fn is not None:
            images = normalize_fn(images)

        def loss_fn(params):
            logits, batch_stats = _forward(
                apply_fn, params, state.batch_stats, images, train=True)
            loss = _cross_entropy(logits, labels).mean()
            return loss, (logits, batch_stats)

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(state.params)
        # Pruned weights must stay exactly zero. Masking the gradient keeps
        # the pruned entries of the momentum buffer at zero (weight decay
        # adds wd·0 there); masking the updates covers optimizers that mix
        # coordinates; masking the new params makes exact zeros a guarantee
        # rather than a consequence of the two (−0.0 and NaN·0 included).
        # Pruned weights stay exactly zero through the optax mask
        # transformation; the mask is the state's (traced), so one compiled
        # step serves every mask. Masking the new params too is redundant in
        # exact arithmetic, but it changes how XLA fuses the add θ + u, and
        # without it the steps round differently from the runs recorded
        # before the transformation existed (measured: other params after
        # 10 MnistNet steps).
        updates, opt_state = freeze_pruned(tx, state.mask).update(grads, state.opt_state, state.params)
        params = apply_mask(optax.apply_updates(state.params, updates), state.mask)
        new_state = TrainState(step=state.step + 1, params=params,
                               batch_stats=batch_stats, opt_state=opt_state,
                               mask=state.mask, rng=rng)
        metrics = {"loss": loss,
                   "top1": accuracy_counts(logits, labels, ks=(1,))["top1"] / labels.shape[0]}
        return new_state, metrics

    return jit_step(train_step, donate_argnums=0) if jit else train_step


def make_eval_step(
    apply_fn: ApplyFn,
    *,
    normalize_fn: NormalizeFn | None = None,
) -> Callable[..., Metrics]:
    """Per-batch sums for example-weighted evaluation (BN in inference mode).

    Args:
        apply_fn: the model's ``apply``.
        normalize_fn: optional ``images -> images``.

    Returns:
        jitted ``eval_step(params, batch_stats, images, labels) -> sums`` with
        ``{'loss': Σ cross-entropy, 'top1': #correct, 'top5': #label in the
        top 5, 'n': batch size}`` as float32 device scalars.
    """

    @jit_step
    def eval_step(params, batch_stats, images, labels):
        if normalize_fn is not None:
            images = normalize_fn(images)
        logits, _ = _forward(apply_fn, params, batch_stats, images,
                             train=False)
        counts = accuracy_counts(logits, labels, ks=(1, 5))
        return {"loss": _cross_entropy(logits, labels).sum(),
                "top1": counts["top1"].astype(jnp.float32),
                "top5": counts["top5"].astype(jnp.float32),
                "n": jnp.asarray(labels.shape[0], jnp.float32)}

    return eval_step


def evaluate(
    eval_step: Callable[..., Metrics],
    state: TrainState,
    batches: Iterable[tuple[Any, Any]],
) -> dict[str, float]:
    """Loss and accuracies over all examples of ``batches``, by example.

    The sums stay on the device until the end (one host transfer).

    Args:
        eval_step: from `make_eval_step`.
        state: a `TrainState` (or anything with ``.params``,
            ``.batch_stats``).
        batches: iterable of ``(images, labels)``; the last batch may be
            smaller.

    Returns:
        ``{'loss': Σ loss / n, 'top1': #correct / n, 'top5': #in top 5 / n,
        'n': n}``.
    """
    totals = None
    for images, labels in batches:
        sums = eval_step(state.params, state.batch_stats, images, labels)
        totals = sums if totals is None else jax.tree_util.tree_map(
            jnp.add, totals, sums)
    if totals is None:
        raise ValueError("evaluate: the batch iterable is empty")
    totals = jax.device_get(totals)
    n = float(totals["n"])
    return {"loss": float(totals["loss"]) / n,
            "top1": float(totals["top1"]) / n,
            "top5": float(totals["top5"]) / n,
            "n": int(n)}


@functools.lru_cache(maxsize=32)
def _value_and_grad_step(apply_fn: ApplyFn, train: bool):
    """One jitted ∂L/∂θ per (apply function, mode): compiled once, reused."""

    @jit_step
    def value_and_grad(params, batch_stats, images, labels):
        def loss_fn(p):
            logits, _ = _forward(apply_fn, p, batch_stats, images, train)
            return _cross_entropy(logits, labels).mean()
        return jax.value_and_grad(loss_fn)(params)

    return value_and_grad


_UNROLLED_BATCHES = 32  # stacked scoring batches traced one by one (batch_loss_fn)


def batch_loss_fn(apply_fn: ApplyFn, batch_stats: PyTree, images: jax.Array, labels: jax.Array,
                  *, train: bool = True, temperature: float = 1.0) -> Callable[[PyTree], jax.Array]:
    """θ ↦ mean cross-entropy of f(x; θ)/T on the scoring batches (the
    `loss_fn` of the saliency methods, `kpjax.pruning.saliency`); BN as in `loss_and_grads`.

    Args:
        images, labels: one batch, (B, H, W, C) and (B,); or k batches stacked,
            (k, B, H, W, C) and (k, B): L is then the mean of the k batch losses,
            each batch normalized by BatchNorm on its own, as the references
            iterate their data loaders.
        temperature: T dividing the logits (GraSP's reference uses T = 200).
    """
    def one(params: PyTree, batch) -> jax.Array:
        logits, _ = _forward(apply_fn, params, batch_stats or {}, batch[0], train)
        if temperature != 1.0:
            logits = logits / temperature
        return _cross_entropy(logits, batch[1]).mean()

    def loss_fn(params: PyTree) -> jax.Array:
        if jnp.ndim(labels) == 1:
            return one(params, (images, labels))
        # Unrolled up to _UNROLLED_BATCHES, not lax.map: XLA:CPU runs convolutions
        # inside a loop body ~10x slower (MnistNet, 8 batches of 128: ∂L/∂θ 3.6 s
        # in a scan, 0.34 s unrolled; H g 10.5 vs 0.9 s), whatever the scan's
        # unroll factor; beyond it the loop keeps the compile time bounded.
        if len(images) <= _UNROLLED_BATCHES:
            return jnp.mean(jnp.stack([one(params, (images[i], labels[i])) for i in range(len(images))]))
        return jnp.mean(jax.lax.map(lambda b: one(params, b), (images, labels)))
    return loss_fn


def loss_and_grads(
    apply_fn: ApplyFn,
    params: PyTree,
    batch_stats: PyTree,
    images: jax.Array,
    labels: jax.Array,
    *,
    train: bool = True,
) -> tuple[jax.Array, PyTree]:
    """Mean cross-entropy L and ∂L/∂θ on one batch (gradient pruning).

    ShrinkBench takes this gradient in training mode (BN normalizes with the
    batch's statistics); the updated running statistics are discarded. The
    step is compiled once per ``(apply_fn, train)`` (``module.apply`` of a
    Flax module is hashable) and reused by later calls.

    Args:
        apply_fn: the model's ``apply``.
        params: θ.
        batch_stats: BN statistics, or ``{}``/None without BN.
        images: one batch, already normalized.
        labels: integer labels.
        train: forward in training mode (ShrinkBench) or inference mode.

    Returns:
        ``(L, ∂L/∂θ)``, the gradient shaped like ``params``.
    """
    return _value_and_grad_step(apply_fn, train)(params, batch_stats or {}, images, labels)
