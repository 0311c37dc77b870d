r"""The spline view of a ReLU network and the spline early-bird ticket
(You, Balestriero et al., "Max-Affine Spline Insights Into Deep Network
Pruning", TMLR 2022; Balestriero & Baraniuk's max-affine spline operators).

A network of affine maps and ReLUs is a continuous piecewise-affine map: every
unit k of layer ℓ with pre-activation z_k^ℓ(x) (the BatchNorm output of a
conv-BN-ReLU block) is a hyperplane of the input-space partition, and an input
x lies in the region whose code is q^ℓ(x) = 1[z^ℓ(x) > 0] over every unit (and,
for a conv, every position). Two states θ, θ' of the network partition the
input space alike where their codes agree. The code distance between them on a
set of inputs X is the fraction of differing code bits, layer by layer,
averaged over the L layers:

    d(θ, θ') = (1/L) Σ_ℓ mean_{x ∈ X, k} |q_k^ℓ(x; θ) − q_k^ℓ(x; θ')|.

Spline-EB draws the early-bird ticket at the first epoch t ≥ w whose partition
has stopped moving: max_{1 ≤ j ≤ w} d(θ_t, θ_{t−j}) < τ (w = 3 and τ = 0.16 in
the authors' code), on a fixed canvas of n² inputs α·x₀ + β·x₁, α and β on an
n × n grid over [0, 1], from two test images of different classes (n = 100).
The network is evaluated in inference mode (BatchNorm on its running
statistics), as the authors' detector does.

Everything here takes pre-activations as plain arrays, so any model works;
`linen_preactivations` and `nnx_preactivations` read them off a Flax model.

May import: flax, jax, numpy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Codes = dict[str, np.ndarray]


def canvas(x0: jax.Array, x1: jax.Array, n: int = 100) -> jax.Array:
    """The n² inputs α·x₀ + β·x₁, (α, β) on the n × n grid over [0, 1]²; α
    varies fastest (row i·n + j has β = i/(n−1), α = j/(n−1))."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"canvas: n must be an int >= 2, got {n!r}")
    x0, x1 = jnp.asarray(x0), jnp.asarray(x1)
    if x0.shape != x1.shape:
        raise ValueError(f"canvas: x0 and x1 differ in shape, {x0.shape} vs {x1.shape}")
    alpha, beta = (g.reshape(-1) for g in jnp.meshgrid(jnp.linspace(0, 1, n), jnp.linspace(0, 1, n)))
    expand = (slice(None),) + (None,) * x0.ndim
    return alpha[expand] * x0 + beta[expand] * x1


def canvas_pair(labels: np.ndarray, first: int = 4690, second_class: int = 1) -> tuple[int, int]:
    """The two test images the authors' canvas is drawn from: index `first`,
    and the first image after index 0 of class `second_class` whose class
    differs from the first's (any other class if they coincide)."""
    labels = np.asarray(labels)
    if not 0 <= first < len(labels):
        raise ValueError(f"canvas_pair: first = {first} is outside the {len(labels)} labels")
    other = [i for i in range(1, len(labels)) if labels[i] != labels[first]]
    if not other:
        raise ValueError("canvas_pair: every image has the first image's class")
    preferred = [i for i in other if labels[i] == second_class]
    return first, (preferred or other)[0]


def region_codes(preactivations: Mapping[str, jax.Array]) -> Codes:
    """q^ℓ(x) = 1[z^ℓ(x) > 0] per layer, as (inputs, bits) boolean arrays
    (a conv's units × positions flattened)."""
    if not preactivations:
        raise ValueError("region_codes: no pre-activations")
    codes = {}
    for name, z in preactivations.items():
        z = np.asarray(z)
        if z.ndim < 2:
            raise ValueError(f"region_codes: {name} has shape {z.shape}; want (inputs, units, ...)")
        if not np.all(np.isfinite(z)):
            raise ValueError(f"region_codes: {name} has NaN or Inf pre-activations")
        codes[name] = (z > 0).reshape(z.shape[0], -1)
    return codes


def code_distance(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
    """d = (1/L) Σ_ℓ mean |q^ℓ_a − q^ℓ_b|: the layer-averaged fraction of
    differing code bits of two states on the same inputs (0: the same
    partition of those inputs)."""
    if set(a) != set(b):
        raise ValueError(f"code_distance: different layers, {sorted(set(a) ^ set(b))}")
    if not a:
        raise ValueError("code_distance: no layers")
    total = 0.0
    for name in a:
        if a[name].shape != b[name].shape:
            raise ValueError(f"code_distance: {name} has shapes {a[name].shape} and {b[name].shape}")
        total += float(np.mean(a[name] != b[name]))
    return total / len(a)


def code_distance_matrix(codes: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
    """D[s, t] = d(codes[s], codes[t]) for every pair of states (symmetric,
    zero diagonal): the epoch × epoch map of the paper's Fig. 4."""
    e = len(codes)
    out = np.zeros((e, e))
    for s in range(e):
        for t in range(s + 1, e):
            out[s, t] = out[t, s] = code_distance(codes[s], codes[t])
    return out


def code_distance_matrix_of(preactivations_fn: Callable[[object, jax.Array], Mapping[str, jax.Array]],
                            states: Sequence, inputs: jax.Array, chunk: int = 500) -> np.ndarray:
    """`code_distance_matrix` of the codes of `states` on `inputs`, computed
    `chunk` inputs at a time: the differing bits are counted per layer and
    pair, so memory holds one chunk's codes of every state (packed, 8 a byte),
    never the codes of all inputs (a ResNet-20 has ~1.9·10⁵ code bits per canvas image).

    Args:
        preactivations_fn: (state, x) ↦ {layer: pre-activations of x}, e.g.
            a `linen_preactivations` closure (jit it for speed).
        states: the network's states (e.g. its variables after each epoch).
        inputs: (n, ...) the inputs, e.g. a `canvas`.
        chunk: inputs per forward pass.
    """
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"code_distance_matrix_of: chunk must be an int >= 1, got {chunk!r}")
    e, n = len(states), len(inputs)
    if e < 1 or n < 1:
        raise ValueError(f"code_distance_matrix_of: need states and inputs, got {e} and {n}")
    differ, bits = None, None
    for start in range(0, n, chunk):
        x = inputs[start:start + chunk]
        codes = [region_codes(preactivations_fn(state, x)) for state in states]
        if differ is None:
            differ = {name: np.zeros((e, e)) for name in codes[0]}
            bits = dict.fromkeys(codes[0], 0)
        for name in differ:
            bits[name] += codes[0][name].size
            # Packed 8 bits a byte (the zero padding agrees): XOR and popcount.
            packed = [np.packbits(c[name]) for c in codes]
            for s in range(e):
                for t in range(s + 1, e):
                    differ[name][s, t] += int(np.bitwise_count(packed[s] ^ packed[t]).sum())
    d = sum(differ[name] / bits[name] for name in differ) / len(differ)
    return d + d.T


def spline_early_bird_epoch(distances: np.ndarray, lookback: int = 3, threshold: float = 0.16) -> int | None:
    """The first t ≥ `lookback` with max_{1 ≤ j ≤ lookback} D[t, t − j] < τ,
    D = `code_distance_matrix` of the states after each epoch; None if none."""
    d = np.asarray(distances, np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"spline_early_bird_epoch: want a square distance matrix, got shape {d.shape}")
    if isinstance(lookback, bool) or not isinstance(lookback, int) or lookback < 1:
        raise ValueError(f"spline_early_bird_epoch: lookback must be an int >= 1, got {lookback!r}")
    if not (np.isfinite(threshold) and threshold > 0):
        raise ValueError(f"spline_early_bird_epoch: threshold must be > 0, got {threshold!r}")
    for t in range(lookback, d.shape[0]):
        if max(d[t, t - j] for j in range(1, lookback + 1)) < threshold:
            return t
    return None


# ---------------------------------------------------------------------------
# Reading pre-activations off a Flax model.


def _is_batch_norm(module, method_name: str) -> bool:
    return isinstance(module, nn.BatchNorm) and method_name == "__call__"


def linen_preactivations(module: nn.Module, variables: Mapping, x: jax.Array, *,
                         is_preactivation: Callable[[nn.Module, str], bool] = _is_batch_norm,
                         **apply_kwargs) -> dict[str, jax.Array]:
    """The outputs of the submodules `is_preactivation` picks (BatchNorm's by
    default: the pre-activations of conv-BN-ReLU units), keyed by their path
    ('/'-joined), from ``module.apply(variables, x, **apply_kwargs)`` in
    inference mode (pass e.g. train=False). For a network without BatchNorm
    pick its Conv and Dense layers and leave out the classifier."""
    _, state = module.apply(variables, x, capture_intermediates=is_preactivation, mutable=["intermediates"],
                            **apply_kwargs)
    flat = jax.tree_util.tree_flatten_with_path(state["intermediates"],
                                                is_leaf=lambda v: isinstance(v, tuple))[0]
    out = {}
    for path, value in flat:
        keys = [p.key for p in path if hasattr(p, "key")]
        out["/".join(str(k) for k in keys if k != "__call__")] = value[0]
    if not out:
        raise ValueError("linen_preactivations: no submodule output was picked")
    return out


def nnx_preactivations(model: nnx.Module, x: jax.Array, *,
                       types: tuple[type, ...] = (nnx.BatchNorm,)) -> dict[str, jax.Array]:
    """The outputs of `model`'s submodules of `types` (BatchNorm by default),
    keyed by their path ('/'-joined), with the model in evaluation mode (a
    copy is switched; `model` is left as it was)."""
    model = nnx.clone(model)
    model.eval()
    wanted = {tuple(path) for path, sub in nnx.iter_graph(model) if isinstance(sub, types)}
    _, intermediates = nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)(x)
    out = {}
    for path, value in nnx.to_flat_state(intermediates):
        if path[-1] == "__call__" and tuple(path[:-1]) in wanted:
            out["/".join(str(p) for p in path[:-1])] = value.get_value()[0]
    if not out:
        raise ValueError(f"nnx_preactivations: the model has no submodule of {types}")
    return out
