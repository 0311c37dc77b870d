"""Tests of kpjax.pruning.structured: groups, group scores, and shrink ≡ mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kpjax import models, pruning
from kpjax.pruning import structured


def test_mnistnet_groups_by_hand():
    spec = models.get_model("mnistnet")
    params = models.init_variables(spec, 0)["params"]
    assert structured.groups(spec, params) == {"conv1": 20, "conv2": 50, "fc1": 500}


@pytest.mark.parametrize("name, blocks", [("resnet20", 3), ("resnet32", 5), ("resnet44", 7),
                                          ("resnet56", 9)])
def test_resnet_groups_are_each_blocks_inner_channels(name, blocks):
    spec = models.get_model(name)
    params = models.variable_shapes(spec)["params"]
    got = structured.groups(spec, params)
    expected = {f"layer{s}_{b}": w for s, w in zip((1, 2, 3), (16, 32, 64)) for b in range(blocks)}
    assert got == expected  # the stage channels, tied by the shortcuts, are no group


def test_group_scores_reduce_the_filter():
    spec = models.get_model("mnistnet")
    params = models.init_variables(spec, 0)["params"]
    l2 = structured.group_scores(spec, params, "l2")
    l1 = structured.group_scores(spec, params, "l1")
    kernel, bias = np.asarray(params["conv2"]["kernel"]), np.asarray(params["conv2"]["bias"])
    u = 7  # by hand: output channel 7 of conv2
    filt = np.concatenate([kernel[..., u].ravel(), [bias[u]]])
    assert float(l2["conv2"][u]) == pytest.approx(np.linalg.norm(filt), rel=1e-6)
    assert float(l1["conv2"][u]) == pytest.approx(np.abs(filt).sum(), rel=1e-6)
    # Group KMP = the per-weight KMP mode reduced over the group (no new fit).
    phi = jax.tree_util.tree_map(lambda p: 2.0 * p, params)  # stands in for |b₁φ₁|
    np.testing.assert_allclose(structured.group_scores(spec, phi)["fc1"], 2.0 * l2["fc1"], rtol=1e-6)


def _trained_like(spec, seed):
    """Variables with He-scaled random kernels and non-trivial BatchNorm
    statistics and affine parameters (drawn by NumPy: an op-by-op init of a
    ResNet-20 compiles for tens of seconds)."""
    variables = models.variable_shapes(spec)
    rng = np.random.default_rng(seed + 100)

    def jitter(path, x):
        name = getattr(path[-1], "key", "")
        if name == "kernel":
            fan_in = int(np.prod(x.shape[:-1]))
            return jnp.asarray(rng.normal(size=x.shape) * np.sqrt(2 / fan_in), x.dtype)
        if name == "var":
            return jnp.asarray(rng.uniform(0.5, 2.0, x.shape), x.dtype)
        if name in ("mean", "scale", "bias"):
            return jnp.asarray(rng.normal(size=x.shape) * 0.3 + (name == "scale"), x.dtype)
        return x
    return jax.tree_util.tree_map_with_path(jitter, variables)


@pytest.mark.parametrize("model, seed", [("mnistnet", 0), ("mnistnet", 1), ("mnistnet_tiny", 2),
                                         ("resnet20", 0), ("resnet_tiny", 3), ("vgg_tiny", 4)])
def test_shrink_computes_what_the_masked_network_computes(model, seed):
    spec = models.get_model(model)
    variables = _trained_like(spec, seed)
    params = variables["params"]
    rng = np.random.default_rng(seed)
    keep = {layer: rng.random(n) < 0.5 for layer, n in structured.groups(spec, params).items()}
    for k in keep.values():
        k[rng.integers(len(k))] = True
    masked = {**variables, "params": pruning.apply_mask(params, structured.unit_mask(spec, params, keep))}
    small_spec, small = structured.shrink(spec, variables, keep)
    x = jnp.asarray(rng.normal(size=(8, *spec.input_shape)), jnp.float32)
    expected = spec.module.apply(masked, x)  # BatchNorm with running statistics
    got = small_spec.module.apply(small, x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-4, atol=1e-4)
    if "batch_stats" in variables:  # and with the batch's statistics (training mode)
        expected, _ = spec.module.apply(masked, x, train=True, mutable=["batch_stats"])
        got, _ = small_spec.module.apply(small, x, train=True, mutable=["batch_stats"])
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-4, atol=1e-4)
    before = sum(np.size(p) for p in jax.tree_util.tree_leaves(params))
    after = sum(np.size(p) for p in jax.tree_util.tree_leaves(small["params"]))
    assert after < before
    first = structured.declared_groups(spec, params)[0]
    kernel = small["params"]
    for key in first.producer:
        kernel = kernel[key]
    assert kernel["kernel"].shape[-1] == keep[first.name].sum()


def test_keep_units_per_layer():
    keep = structured.keep_units({"a": jnp.asarray([3.0, 1.0, 2.0, 0.0]), "b": jnp.asarray([1.0])}, 0.5)
    np.testing.assert_array_equal(keep["a"], [True, False, True, False])
    np.testing.assert_array_equal(keep["b"], [True])  # at least one unit survives
    with pytest.raises(ValueError):
        structured.keep_units({"a": jnp.ones(2)}, 0.0)


@pytest.mark.parametrize("model", ["mnistnet", "resnet20", "vgg_tiny"])
def test_the_unit_mask_counts_what_shrink_keeps(model):
    from kpjax.flatten import count_params
    spec = models.get_model(model)
    variables = _trained_like(spec, 0)
    params = variables["params"]
    rng = np.random.default_rng(1)
    keep = {name: rng.random(n) < 0.4 for name, n in structured.groups(spec, params).items()}
    for k in keep.values():
        k[0] = True
    mask = structured.unit_mask(spec, params, keep)
    kept = sum(int(np.sum(np.asarray(m))) for m in jax.tree_util.tree_leaves(mask))
    assert kept == count_params(structured.shrink(spec, variables, keep)[1]["params"])
    got = structured.kept_units(spec, mask)
    assert all(np.array_equal(got[name], keep[name]) for name in keep)
