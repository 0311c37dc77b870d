"""Tests of kpjax.structured: groups, group scores, and shrink ≡ mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kpjax import models, pruning, structured


def test_mnistnet_groups_by_hand():
    spec = models.get_model("mnistnet")
    params = models.init_variables(spec, 0)["params"]
    assert structured.groups(spec, params) == {"conv1": 20, "conv2": 50, "fc1": 500}
    with pytest.raises(ValueError, match="MnistNet models only"):
        structured.groups(models.get_model("resnet20"), params)


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


@pytest.mark.parametrize("model, seed", [("mnistnet", 0), ("mnistnet", 1), ("mnistnet_tiny", 2)])
def test_shrink_computes_what_the_masked_network_computes(model, seed):
    spec = models.get_model(model)
    variables = models.init_variables(spec, seed)
    params = variables["params"]
    rng = np.random.default_rng(seed)
    keep = {layer: rng.random(n) < 0.5 for layer, n in structured.groups(spec, params).items()}
    for k in keep.values():
        k[rng.integers(len(k))] = True
    masked = pruning.apply_mask(params, structured.unit_mask(params, keep))
    small_spec, small = structured.shrink(spec, variables, keep)
    x = jnp.asarray(rng.normal(size=(8, *spec.input_shape)), jnp.float32)
    expected = spec.module.apply({"params": masked}, x)
    got = small_spec.module.apply(small, x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)
    before = sum(np.size(p) for p in jax.tree_util.tree_leaves(params))
    after = sum(np.size(p) for p in jax.tree_util.tree_leaves(small))
    assert after < before
    assert small["params"]["conv1"]["kernel"].shape[-1] == keep["conv1"].sum()


def test_keep_units_per_layer():
    keep = structured.keep_units({"a": jnp.asarray([3.0, 1.0, 2.0, 0.0]), "b": jnp.asarray([1.0])}, 0.5)
    np.testing.assert_array_equal(keep["a"], [True, False, True, False])
    np.testing.assert_array_equal(keep["b"], [True])  # at least one unit survives
    with pytest.raises(ValueError):
        structured.keep_units({"a": jnp.ones(2)}, 0.0)
