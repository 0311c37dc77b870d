"""kpjax.models.convolutions. ValidConv: nn.Conv's parameters and forward
values; its input gradient (im2col's transpose) against XLA's own, in
reverse and forward mode. Im2colConv: nn.Conv's parameters, values and
gradients to float32 rounding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from kpjax.models.convolutions import Im2colConv, ValidConv, smaller_than_kernel, valid_conv


def _conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _data(shape_x, shape_w, seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.standard_normal(shape_x), jnp.float32),
            jnp.asarray(rng.standard_normal(shape_w), jnp.float32))


def _rel(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def test_same_params_and_forward_bits_as_nn_conv():
    x, _ = _data((4, 12, 12, 3), (1,))
    ours, theirs = ValidConv(7, (5, 5), padding="VALID"), nn.Conv(7, (5, 5), padding="VALID")
    key = jax.random.PRNGKey(3)
    v_ours, v_theirs = ours.init(key, x), theirs.init(key, x)
    assert jax.tree.map(lambda a, b: bool(jnp.all(a == b)), v_ours, v_theirs) == {
        "params": {"kernel": True, "bias": True}}
    assert bool(jnp.all(ours.apply(v_ours, x) == theirs.apply(v_ours, x)))


@pytest.mark.parametrize("shape_x, shape_w", [((8, 12, 12, 20), (5, 5, 20, 50)),
                                              ((3, 9, 7, 2), (3, 2, 2, 5)),
                                              ((2, 6, 6, 1), (6, 6, 1, 4))])
def test_gradients_equal_xla_autodiff(shape_x, shape_w):
    x, w = _data(shape_x, shape_w)
    g = jax.random.normal(jax.random.PRNGKey(1), _conv(x, w).shape)
    ours = jax.vjp(valid_conv, x, w)[1](g)
    theirs = jax.vjp(_conv, x, w)[1](g)
    assert _rel(ours[0], theirs[0]) < 1e-5  # the input gradient, reformulated
    assert bool(jnp.all(ours[1] == theirs[1]))  # the weight gradient is XLA's own


def test_input_gradient_oracle_by_hand():
    # A 1×1 "image" patch: y = Σ x·w over one 2×2 window; ∂y/∂x = w.
    x, w = _data((1, 2, 2, 1), (2, 2, 1, 1))
    dx = jax.grad(lambda x: valid_conv(x, w).sum())(x)
    np.testing.assert_array_equal(np.asarray(dx)[0, :, :, 0], np.asarray(w)[:, :, 0, 0])


def test_forward_mode_hessian_vector_products_work():
    # GraSP and GN take jax.jvp of jax.grad: a custom VJP would refuse it.
    x, w = _data((4, 10, 10, 3), (5, 5, 3, 6))
    for f, at in ((lambda w: jnp.sum(jnp.tanh(valid_conv(x, w))), w),
                  (lambda x: jnp.sum(jnp.tanh(valid_conv(x, w))), x)):
        ref = (lambda w: jnp.sum(jnp.tanh(_conv(x, w)))) if at is w else (
            lambda x: jnp.sum(jnp.tanh(_conv(x, w))))
        hv = jax.jvp(jax.grad(f), (at,), (at,))[1]
        hv_ref = jax.jvp(jax.grad(ref), (at,), (at,))[1]
        assert _rel(hv, hv_ref) < 1e-5


@pytest.mark.parametrize("kwargs", [{"padding": "SAME"}, {"padding": "VALID", "strides": 2},
                                    {"padding": "VALID", "kernel_dilation": 2}])
def test_other_convolutions_are_refused(kwargs):
    x, _ = _data((1, 8, 8, 1), (1,))
    with pytest.raises(ValueError, match="ValidConv is a"):
        ValidConv(2, (3, 3), **kwargs).init(jax.random.PRNGKey(0), x)


@pytest.mark.parametrize("shape_x, padding", [((4, 2, 2, 6), ((1, 1), (1, 1))),
                                              ((2, 5, 4, 3), ((1, 1), (1, 1))),
                                              ((2, 6, 6, 3), ((0, 2), (1, 0)))])
def test_im2col_conv_equals_nn_conv(shape_x, padding):
    x, _ = _data(shape_x, (1,))
    ours = Im2colConv(5, (3, 3), padding=padding, use_bias=False)
    theirs = nn.Conv(5, (3, 3), padding=padding, use_bias=False)
    v = theirs.init(jax.random.PRNGKey(2), x)
    assert bool(jnp.all(ours.init(jax.random.PRNGKey(2), x)["params"]["kernel"]
                        == v["params"]["kernel"]))
    assert _rel(ours.apply(v, x), theirs.apply(v, x)) < 1e-6
    loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)))
    g_ours = jax.grad(loss(ours), argnums=(0, 1))(v, x)
    g_theirs = jax.grad(loss(theirs), argnums=(0, 1))(v, x)
    assert _rel(g_ours[0]["params"]["kernel"], g_theirs[0]["params"]["kernel"]) < 1e-5
    assert _rel(g_ours[1], g_theirs[1]) < 1e-5


def test_im2col_conv_refuses_named_padding_and_strides():
    x, _ = _data((1, 2, 2, 1), (1,))
    with pytest.raises(ValueError, match="explicit padding pairs"):
        Im2colConv(2, (3, 3), padding="SAME").init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="Im2colConv is a"):
        Im2colConv(2, (3, 3), padding=((1, 1), (1, 1)), strides=2).init(jax.random.PRNGKey(0), x)


def test_only_maps_smaller_than_the_kernel_take_im2col():
    assert smaller_than_kernel(jnp.zeros((1, 2, 2, 1)), (3, 3))
    assert smaller_than_kernel(jnp.zeros((1, 8, 2, 1)), (3, 3))
    assert not smaller_than_kernel(jnp.zeros((1, 3, 3, 1)), (3, 3))
