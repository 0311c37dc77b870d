"""Tests of kpjax.flatten: the flat layout θ ∈ R^N of selected leaves, parameter counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kpjax import flatten


def _params():
    return {
        "conv": {"kernel": jnp.arange(24.0).reshape(2, 3, 4), "bias": jnp.arange(4.0)},
        "bn": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
    }


def test_ravel_unravel_roundtrip_with_filter_and_bool_tree():
    params = _params()
    by_filter = lambda path, leaf: path[0] == "conv"
    flat, spec = flatten.ravel_selected(params, by_filter)
    assert flat.shape == (28,) and spec.size == 28
    assert spec.paths == (("conv", "bias"), ("conv", "kernel"))
    select = {"conv": {"kernel": True, "bias": True}, "bn": {"scale": False, "bias": False}}
    flat2, spec2 = flatten.ravel_selected(params, select)
    np.testing.assert_array_equal(flat, flat2)
    assert spec == spec2
    back = flatten.unravel_selected(flat * 2, spec, params)
    np.testing.assert_array_equal(back["conv"]["kernel"], params["conv"]["kernel"] * 2)
    np.testing.assert_array_equal(back["bn"]["scale"], params["bn"]["scale"])


def test_ravel_is_jittable_with_static_spec():
    params = _params()
    _, spec = flatten.ravel_selected(params, lambda p, x: p[-1] == "kernel")
    jitted = jax.jit(flatten.ravel_with_spec, static_argnums=1)
    np.testing.assert_array_equal(jitted(params, spec), jnp.ravel(params["conv"]["kernel"]))


def test_mismatched_pytrees_raise():
    params = _params()
    _, spec = flatten.ravel_selected(params, lambda p, x: True)
    with pytest.raises(ValueError, match="structure"):
        flatten.ravel_with_spec({"conv": params["conv"]}, spec)
    with pytest.raises(ValueError, match="select pytree does not match"):
        flatten.ravel_selected(params, {"conv": {"kernel": True, "bias": True}})



def test_count_params_all_and_selected():
    params = _params()
    assert flatten.count_params(params) == 24 + 4 + 4 + 4
    assert flatten.count_params(params, lambda p, x: p[0] == "conv") == 28
    shapes = jax.eval_shape(lambda: params)  # ShapeDtypeStructs count the same
    assert flatten.count_params(shapes) == 36
