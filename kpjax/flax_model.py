"""One functional view of any Flax model, Linen or NNX.

A model is a function f(θ, s, x) ↦ (y, s′) of its trainable parameters θ
(plain nested dicts of arrays, so every kpjax function sees ordinary paths
such as ('Dense_0', 'kernel')), of the rest of what training changes, s
(BatchNorm statistics, NNX rng counters; {} if none), and of the inputs x.
In training s′ is s after the call (running statistics updated); in
evaluation s′ = s. `from_linen` and `from_nnx` build this view; training,
recording and pruning (`kpjax.model_training`, `kpjax.pruning`) need nothing
else.

Randomness: a Linen model draws its dropout masks from the `rng` given to
`apply` in training, split into the named rng streams; an NNX model carries
its rng streams in s (RngKey, RngCount) and advances them itself, so `apply`
does not read `rng` for it.

May import: flax, jax.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
from flax import nnx

PyTree = Any
# apply(params, state, inputs, *, train, rng) -> (outputs, new_state)
ApplyFn = Callable[..., tuple[Any, PyTree]]

_TRAIN_NAMES = ("train", "training")
_DETERMINISTIC = "deterministic"


class Model(NamedTuple):
    """A Flax model as pure data and one pure function.

    Attributes:
        apply: ``apply(params, state, inputs, *, train: bool, rng: jax.Array
            | None) -> (outputs, new_state)``; jit-able, pure.
        params: θ, plain nested dicts of arrays (the nnx.Param or Linen
            'params' leaves).
        state: everything else training changes, plain nested dicts; {} if
            none.
        graphdef: the nnx.GraphDef that `to_nnx` rebuilds an NNX module
            from; None for a Linen model.
    """

    apply: ApplyFn
    params: PyTree
    state: PyTree
    graphdef: Any = None


# ---------------------------------------------------------------------------
# Linen.


def _call_parameters(module: nn.Module) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(module.__call__).parameters)


def _train_keyword(module: nn.Module, train_argument: str | None) -> str | None:
    """The keyword of `module.__call__` that carries the mode, or None.

    "auto": the first of train, training, deterministic that `__call__`
    takes by keyword; an explicit name must be one of its parameters (or
    `__call__` must take **kwargs).
    """
    parameters = _call_parameters(module)
    by_keyword = {name for name, p in parameters.items()
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if train_argument == "auto":
        return next((n for n in (*_TRAIN_NAMES, _DETERMINISTIC) if n in by_keyword), None)
    if train_argument is None:
        return None
    takes_kwargs = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
    if train_argument not in by_keyword and not takes_kwargs:
        raise ValueError(
            f"from_linen: train_argument {train_argument!r} is not a keyword parameter of "
            f"{type(module).__name__}.__call__ (its parameters: {', '.join(parameters)}); "
            "expected 'auto', None or one of them")
    return train_argument


def _mode_kwargs(keyword: str | None, train: bool) -> dict[str, bool]:
    if keyword is None:
        return {}
    return {keyword: not train} if keyword == _DETERMINISTIC else {keyword: train}


def _stream_keys(rng: jax.Array | None, rng_names: Sequence[str]) -> dict[str, jax.Array]:
    """One independent key per named stream: split(rng, k), in name order."""
    if rng is None or not rng_names:
        return {}
    return dict(zip(rng_names, jax.random.split(rng, len(rng_names))))


def from_linen(
    module: nn.Module,
    variables: Mapping[str, PyTree],
    *,
    train_argument: str | None = "auto",
    rng_names: Sequence[str] = ("dropout",),
) -> Model:
    """The functional view of a Linen module and its variables.

    θ = variables['params']; s = every other collection (e.g.
    'batch_stats'), all mutable in training and none in evaluation.

    Args:
        module: a ``flax.linen.Module``.
        variables: its variables (``module.init(...)``), with 'params'.
        train_argument: how `__call__` learns the mode. "auto" inspects its
            signature: a ``train`` or ``training`` keyword gets ``train``, a
            ``deterministic`` keyword gets ``not train``, neither: nothing.
            None passes nothing; a name passes ``name=train`` (or
            ``deterministic=not train``).
        rng_names: the rng streams the module draws from in training;
            `apply`'s ``rng`` is split into one key each.

    Returns:
        A `Model` with ``graphdef=None``.

    Raises:
        ValueError: `module` is not a Linen module, `variables` has no
            'params', or `train_argument` names no parameter of `__call__`.
    """
    if not isinstance(module, nn.Module):
        raise ValueError(f"from_linen: expected a flax.linen.Module, got {type(module).__name__}")
    if not isinstance(variables, Mapping) or "params" not in variables:
        got = sorted(variables) if isinstance(variables, Mapping) else type(variables).__name__
        raise ValueError(f"from_linen: variables must contain 'params' (module.init(...)); got {got}")
    variables = flax.core.unfreeze(variables)
    keyword = _train_keyword(module, train_argument)
    rng_names = tuple(rng_names)

    def apply(params, state, inputs, *, train: bool, rng: jax.Array | None = None):
        kwargs = dict(_mode_kwargs(keyword, train), rngs=_stream_keys(rng, rng_names))
        full = {"params": params, **state}
        try:
            if not (train and state):
                return module.apply(full, inputs, **kwargs), state
            outputs, updates = module.apply(full, inputs, mutable=list(state), **kwargs)
        except flax.errors.InvalidRngError as e:
            raise ValueError(
                f"from_linen: {type(module).__name__} needs an rng ({e}); expected "
                f"apply(..., rng=jax.random.key(seed)) and rng_names (now {list(rng_names)}) "
                "naming every stream it draws from") from None
        return outputs, {**state, **flax.core.unfreeze(updates)}

    params = variables["params"]
    state = {name: col for name, col in variables.items() if name != "params"}
    return Model(apply, params, state)


# ---------------------------------------------------------------------------
# NNX.


def _split(module: nnx.Module) -> tuple[Any, PyTree, PyTree]:
    """(graphdef, θ, s) with θ the nnx.Param leaves and s the rest, both plain dicts."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(rest)


def _merge(graphdef: Any, params: PyTree, state: PyTree) -> nnx.Module:
    return nnx.merge(graphdef, params, state)


def from_nnx(module: nnx.Module) -> Model:
    """The functional view of a live NNX module (a snapshot of it: the module
    is not changed by `apply`; write results back with `update_nnx`).

    `apply` rebuilds a copy of the module from (θ, s), sets it to training
    (``.train()``: dropout on, BatchNorm on batch statistics) or evaluation
    (``.eval()``) mode, calls it on the inputs and returns the copy's new
    non-param state.

    Raises:
        ValueError: `module` is not an ``nnx.Module`` or has no nnx.Param.
    """
    if not isinstance(module, nnx.Module):
        raise ValueError(f"from_nnx: expected an nnx.Module, got {type(module).__name__}")
    graphdef, params, state = _split(module)
    if not jax.tree_util.tree_leaves(params):
        raise ValueError(f"from_nnx: expected a module with nnx.Param variables; "
                         f"{type(module).__name__} has none")

    def apply(params, state, inputs, *, train: bool, rng: jax.Array | None = None):
        del rng  # the module's rng streams are in `state`
        copy = _merge(graphdef, params, state)
        if train:
            copy.train()
        else:
            copy.eval()
        outputs = copy(inputs)
        return outputs, _split(copy)[2]

    return Model(apply, params, state, graphdef)


def to_nnx(model: Model, params: PyTree | None = None, state: PyTree | None = None) -> nnx.Module:
    """A new NNX module from `model`'s graphdef and (θ, s) (the model's own
    unless given), e.g. after `kpjax.model_training.record`."""
    if model.graphdef is None:
        raise ValueError("to_nnx: expected a Model from from_nnx; this one has no graphdef")
    return _merge(model.graphdef,
                  model.params if params is None else params,
                  model.state if state is None else state)


def _shapes(tree: PyTree) -> dict[str, tuple[int, ...]]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path, simple=True, separator="/"): tuple(leaf.shape)
            for path, leaf in leaves}


def _check_like(new: PyTree, current: PyTree, what: str) -> None:
    """`new` has `current`'s leaf paths and shapes (nnx.update would skip
    unknown paths and take any shape without a word)."""
    have, want = _shapes(new), _shapes(current)
    if have == want:
        return
    wrong = [f"{p} {have[p]} vs {want[p]}" for p in sorted(want) if p in have and have[p] != want[p]]
    raise ValueError(
        f"update_nnx: expected {what} with the module's leaf paths and shapes; missing: "
        f"{', '.join(sorted(set(want) - set(have))) or '-'}; unexpected: "
        f"{', '.join(sorted(set(have) - set(want))) or '-'}; other shapes: {', '.join(wrong) or '-'}")


def update_nnx(module: nnx.Module, params: PyTree, state: PyTree | None = None) -> None:
    """Writes θ (and s, if given) into a live NNX module, in place, so that
    training can go on with it (e.g. under ``nnx.Optimizer``)."""
    if not isinstance(module, nnx.Module):
        raise ValueError(f"update_nnx: expected an nnx.Module, got {type(module).__name__}")
    _, current_params, current_state = _split(module)
    _check_like(params, current_params, "params")
    if state is not None:
        _check_like(state, current_state, "state")
    nnx.update(module, params)
    if state is not None:
        nnx.update(module, state)
