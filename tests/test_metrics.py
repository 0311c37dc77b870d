"""Tests for kpjax.metrics: top-k counts, model size, FLOPs and speedup."""

from flax import linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kpjax import metrics
from kpjax.models import get_model


def _abstract_init(module, input_shape):
    x = jnp.zeros((1, *input_shape), jnp.float32)
    return jax.eval_shape(lambda: module.init(jax.random.key(0), x, train=False))


def _full_mask(params):
    return jax.tree.map(lambda p: np.ones(p.shape, bool), params)


class _Tiny(nn.Module):
    """Conv layers of every flavour plus a dense layer used at two positions."""

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Conv(3, (3, 3), padding="VALID", name="a")(x)                 # 6x6x2 -> 4x4x3
        x = nn.Conv(4, (3, 3), strides=2, padding=1, use_bias=False, name="b")(x)  # -> 2x2x4
        x = nn.Conv(6, (1, 1), feature_group_count=2, name="grouped")(x)    # -> 2x2x6
        x = nn.Dense(5, name="per_row")(x.reshape(x.shape[0], 4, 6))        # 4 rows of 6 -> 5
        return nn.Dense(2, name="head")(x.reshape(x.shape[0], -1))          # 20 -> 2


_TINY_FLOPS = {
    ("a",): 4 * 4 * 3 * 3 * 2 * 3,
    ("b",): 2 * 2 * 3 * 3 * 3 * 4,
    ("grouped",): 2 * 2 * 1 * 1 * (4 // 2) * 6,
    ("per_row",): 4 * 6 * 5,
    ("head",): 20 * 2,
}


def test_layer_flops_hand_computed_tiny_model():
    variables = _abstract_init(_Tiny(), (6, 6, 2))
    assert metrics.layer_flops(_Tiny(), variables, (6, 6, 2)) == _TINY_FLOPS


def test_layer_flops_sums_a_shared_layer():
    class Shared(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            layer = nn.Dense(4, name="shared")
            return layer(layer(x))

    variables = _abstract_init(Shared(), (4,))
    assert metrics.layer_flops(Shared(), variables, (4,)) == {("shared",): 2 * 16}


def test_layer_flops_rejects_uncounted_kernels():
    class Local(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.ConvLocal(2, (3, 3), name="local")(x)

    variables = _abstract_init(Local(), (5, 5, 1))
    with pytest.raises(ValueError, match="local"):
        metrics.layer_flops(Local(), variables, (5, 5, 1))


def test_layer_flops_rejects_bad_input_shape():
    variables = _abstract_init(_Tiny(), (6, 6, 2))
    with pytest.raises(ValueError, match="input_shape"):
        metrics.layer_flops(_Tiny(), variables, (6, 0, 2))


def test_mnistnet_flops():
    spec = get_model("mnistnet")
    flops = metrics.layer_flops(spec.module, _abstract_init(spec.module, spec.input_shape),
                                spec.input_shape)
    assert flops == {("conv1",): 20 * 24 * 24 * 25, ("conv2",): 50 * 8 * 8 * 500,
                     ("fc1",): 800 * 500, ("fc2",): 500 * 10}
    assert sum(flops.values()) == 20 * 24 * 24 * 25 + 50 * 8 * 8 * 500 + 800 * 500 + 500 * 10


def test_resnet20_flops():
    spec = get_model("resnet20")
    variables = _abstract_init(spec.module, spec.input_shape)
    flops = metrics.layer_flops(spec.module, variables, spec.input_shape)
    kernels = {path[:-1] for path in traverse_util.flatten_dict(variables["params"])
               if path[-1] == "kernel"}
    assert set(flops) == kernels  # 19 convs + linear, keyed like params
    assert flops[("layer2_0", "conv1")] == 16 * 16 * 9 * 16 * 32  # stride 2
    stage = lambda hw, c: 6 * hw * hw * 9 * c * c
    expected = (32 * 32 * 27 * 16 + stage(32, 16)
                + stage(16, 32) - 16 * 16 * 9 * 32 * 16
                + stage(8, 64) - 8 * 8 * 9 * 64 * 32 + 64 * 10)
    assert sum(flops.values()) == expected == 40_551_040


def test_speedup_is_one_with_full_mask():
    variables = _abstract_init(_Tiny(), (6, 6, 2))
    flops = metrics.layer_flops(_Tiny(), variables, (6, 6, 2))
    params = variables["params"]
    assert metrics.theoretical_speedup(flops, params, _full_mask(params)) == 1.0


def test_speedup_half_pruned_layer():
    spec = get_model("mnistnet")
    variables = _abstract_init(spec.module, spec.input_shape)
    flops = metrics.layer_flops(spec.module, variables, spec.input_shape)
    params = variables["params"]
    mask = _full_mask(params)
    mask["fc1"]["kernel"][:400] = False  # half of fc1's kernel
    mask["fc1"]["bias"][:] = False  # biases do not count
    total = 288_000 + 1_600_000 + 400_000 + 5_000
    assert metrics.theoretical_speedup(flops, params, mask) == pytest.approx(
        total / (total - 200_000))
    mask["conv2"]["kernel"][:] = False
    assert metrics.theoretical_speedup(flops, params, mask) == pytest.approx(
        total / (total - 200_000 - 1_600_000))


def test_speedup_from_zero_weights_without_mask():
    params = {"a": {"kernel": np.array([[1.0, 0.0], [0.0, 0.0]]), "bias": np.zeros(2)},
              "b": {"kernel": np.ones((2, 2))}}
    flops = {("a",): 100, ("b",): 300}
    assert metrics.theoretical_speedup(flops, params) == pytest.approx(400 / (25 + 300))
    params["b"]["kernel"][:] = 0.0
    params["a"]["kernel"][:] = 0.0
    assert metrics.theoretical_speedup(flops, params) == float("inf")


def test_speedup_rejects_mismatched_mask():
    params = {"a": {"kernel": np.ones((2, 2))}}
    with pytest.raises(ValueError, match="kernel"):
        metrics.theoretical_speedup({("a",): 4}, params, {"a": {"bias": np.ones(2, bool)}})
    with pytest.raises(ValueError, match="shape"):
        metrics.theoretical_speedup({("a",): 4}, params, {"a": {"kernel": np.ones(3, bool)}})


def test_model_size():
    params = {"conv": {"kernel": np.array([[0.0, 1.0], [2.0, 0.0]]), "bias": np.zeros(3)},
              "bn": {"scale": np.ones(2)}}
    assert metrics.model_size(params) == (9, 4)
    mask = {"conv": {"kernel": np.array([[True, False], [False, False]]),
                     "bias": np.ones(3, bool)},
            "bn": {"scale": np.ones(2, bool)}}
    assert metrics.model_size(params, mask) == (9, 6)  # kept entries, zero or not
    with pytest.raises(ValueError, match="structure"):
        metrics.model_size(params, {"conv": mask["conv"]})


_LOGITS = np.array([
    [0.1, 0.9, 0.0, 0.0, 0.0, 0.0],  # label 1: top-1
    [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],  # label 4: rank 5, top-5 only
    [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],  # label 5: rank 6, neither
    [0.2, 0.2, 0.0, 0.0, 0.0, 0.0],  # label 1: tied with class 0, ranks 2nd
    [0.0, np.nan, 0.0, 0.0, 0.0, 1.0],  # label 1 with a NaN logit: wrong
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # label 0: constant logits, first by index
], np.float32)
_LABELS = np.array([1, 4, 5, 1, 1, 0])


@pytest.mark.parametrize("jit", [False, True])
def test_accuracy_counts_hand_made(jit):
    fn = jax.jit(metrics.accuracy_counts, static_argnames="ks") if jit else metrics.accuracy_counts
    counts = fn(jnp.asarray(_LOGITS), jnp.asarray(_LABELS), ks=(1, 2, 5))
    assert {k: int(v) for k, v in counts.items()} == {
        "top1": 2, "top2": 3, "top5": 4, "examples": 6}


def test_ties_count_as_lax_top_k_and_pytorch_topk_do():
    # Constant logits on labels [0, 3, 5, 9]: only class 0 is "first" (1/4),
    # exactly what membership in jax.lax.top_k (PyTorch's topk) gives.
    logits = jnp.zeros((4, 10))
    labels = jnp.array([0, 3, 5, 9])
    assert int(metrics.accuracy_counts(logits, labels, ks=(1,))["top1"]) == 1
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.integers(0, 3, size=(200, 10)).astype(np.float32))  # many ties
    labels = jnp.asarray(rng.integers(0, 10, size=200))
    for k in (1, 2, 5):
        _, top = jax.lax.top_k(logits, k)
        expected = int(jnp.sum(jnp.any(top == labels[:, None], axis=1)))
        assert int(metrics.accuracy_counts(logits, labels, ks=(k,))[f"top{k}"]) == expected


def test_accuracies_weight_by_examples():
    first = metrics.accuracy_counts(jnp.asarray(_LOGITS[:1]), jnp.asarray(_LABELS[:1]))
    rest = metrics.accuracy_counts(jnp.asarray(_LOGITS[1:]), jnp.asarray(_LABELS[1:]))
    total = jax.tree.map(jnp.add, first, rest)
    # Per-batch averaging would give (1/1 + 1/5) / 2 = 0.6 top-1.
    assert metrics.accuracies(total) == {"top1": 2 / 6, "top5": 4 / 6}


def test_accuracy_counts_bad_input():
    logits, labels = jnp.asarray(_LOGITS), jnp.asarray(_LABELS)
    with pytest.raises(ValueError, match="k=0"):
        metrics.accuracy_counts(logits, labels, ks=(1, 0))
    with pytest.raises(ValueError, match="labels"):
        metrics.accuracy_counts(logits, labels[:3])
    with pytest.raises(ValueError, match="zero examples"):
        metrics.accuracies({"top1": 0, "examples": 0})
