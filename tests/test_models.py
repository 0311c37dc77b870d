"""Tests for kpjax.models: shapes, exact parameter counts, names, init, BatchNorm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from kpjax import models
from kpjax.models import BasicBlock, get_model, initializers, shortcut_option_a
from kpjax.models.mnistnet import max_pool_2x2


def _key(seed):
    # XLA compiles RBG keys' random bits several times faster than the default
    # threefry on CPU (~5 s vs ~45 s for a tiny ResNet's init on 2 loaded cores).
    return jax.random.key(seed, impl="rbg")


def _abstract_variables(spec, batch=1):
    x = jnp.zeros((batch, *spec.input_shape), jnp.float32)
    return jax.eval_shape(lambda: spec.module.init(_key(0), x, train=False))


def _count(tree):
    return sum(leaf.size for leaf in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def tiny():
    """name -> (spec, variables, jitted apply(variables, x, train) -> (logits, state))."""
    out = {}
    for name in ("mnistnet_tiny", "resnet_tiny"):
        spec = get_model(name)
        init = jax.jit(spec.module.init, static_argnames="train")
        x = jnp.zeros((1, *spec.input_shape), jnp.float32)
        apply = jax.jit(
            lambda v, x, train, m=spec.module: m.apply(v, x, train=train, mutable=["batch_stats"]),
            static_argnums=2)
        out[name] = (spec, init(_key(0), x, train=False), apply)
    return out


def _resnet_counts(n):
    """(conv, BN, dense) parameters of ResNet-(6n+2), from the architecture."""
    conv = 3 * 3 * 3 * 16
    conv += 2 * n * 9 * 16 * 16
    conv += 9 * 16 * 32 + (2 * n - 1) * 9 * 32 * 32
    conv += 9 * 32 * 64 + (2 * n - 1) * 9 * 64 * 64
    bn = 2 * (16 + 2 * n * (16 + 32 + 64))
    return conv, bn, 64 * 10 + 10


def test_mnistnet_parameter_count_and_names():
    params = _abstract_variables(get_model("mnistnet"))["params"]
    assert _count(params) == 431_080
    shapes = {k: v.shape for k, v in traverse_util.flatten_dict(params).items()}
    assert shapes == {
        ("conv1", "kernel"): (5, 5, 1, 20), ("conv1", "bias"): (20,),
        ("conv2", "kernel"): (5, 5, 20, 50), ("conv2", "bias"): (50,),
        ("fc1", "kernel"): (800, 500), ("fc1", "bias"): (500,),
        ("fc2", "kernel"): (500, 10), ("fc2", "bias"): (10,),
    }


@pytest.mark.parametrize("h,w", [(24, 24), (7, 9)])
def test_max_pool_2x2_matches_flax_values_and_gradient(h, w):
    # Distinct values: no ties, where the two gradients may differ.
    x = jax.random.permutation(_key(1), h * w * 6).reshape(2, h, w, 3).astype(jnp.float32)
    ref = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))
    assert max_pool_2x2(x).shape == (2, h // 2, w // 2, 3)
    np.testing.assert_array_equal(max_pool_2x2(x), ref(x))
    g = jax.random.normal(_key(2), (2, h // 2, w // 2, 3))
    grad = jax.grad(lambda x: jnp.sum(max_pool_2x2(x) * g))(x)
    np.testing.assert_allclose(grad, jax.grad(lambda x: jnp.sum(ref(x) * g))(x))
    # Each window passes its gradient to exactly one input.
    assert int(jnp.sum(grad != 0)) == g.size


def test_resnet20_parameter_breakdown():
    variables = _abstract_variables(get_model("resnet20"))
    flat = traverse_util.flatten_dict(variables["params"])
    conv = sum(v.size for k, v in flat.items() if k[-2].startswith("conv"))
    bn = sum(v.size for k, v in flat.items() if k[-2].startswith("bn"))
    dense = sum(v.size for k, v in flat.items() if k[0] == "linear")
    assert (conv, bn, dense) == (267_696, 1_376, 650)
    assert conv + bn + dense == _count(variables["params"]) == 269_722
    assert (conv, bn, dense) == _resnet_counts(3)


@pytest.mark.parametrize("name,n", [("resnet32", 5), ("resnet44", 7), ("resnet56", 9)])
def test_deeper_resnet_parameter_counts(name, n):
    params = _abstract_variables(get_model(name))["params"]
    assert _count(params) == sum(_resnet_counts(n))
    assert {f"layer{s}_{b}" for s in (1, 2, 3) for b in range(n)} <= set(params)


def test_resnet_names_mirror_pytorch_state_dict():
    variables = _abstract_variables(get_model("resnet20"))
    params, stats = variables["params"], variables["batch_stats"]
    blocks = [f"layer{s}_{b}" for s in (1, 2, 3) for b in range(3)]
    assert set(params) == {"conv1", "bn1", "linear", *blocks}
    assert set(params["conv1"]) == {"kernel"}  # no conv bias
    assert set(params["bn1"]) == {"scale", "bias"}
    assert set(params["linear"]) == {"kernel", "bias"}
    for block in blocks:
        assert set(params[block]) == {"conv1", "bn1", "conv2", "bn2"}
        assert set(stats[block]) == {"bn1", "bn2"}
        assert set(stats[block]["bn2"]) == {"mean", "var"}
    assert params["layer2_0"]["conv1"]["kernel"].shape == (3, 3, 16, 32)
    assert params["layer3_2"]["conv2"]["kernel"].shape == (3, 3, 64, 64)


def test_stage_output_shapes():
    spec = get_model("resnet20")
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    variables = _abstract_variables(spec)
    _, state = jax.eval_shape(
        lambda v, x: spec.module.apply(v, x, train=False, capture_intermediates=True,
                                       mutable=["intermediates"]), variables, x)
    inter = state["intermediates"]
    assert inter["layer1_2"]["__call__"][0].shape == (2, 32, 32, 16)
    assert inter["layer2_0"]["__call__"][0].shape == (2, 16, 16, 32)
    assert inter["layer3_2"]["__call__"][0].shape == (2, 8, 8, 64)
    assert inter["__call__"][0].shape == (2, 10)


@pytest.mark.parametrize("name", list(models.MODELS))
def test_spec_fields_and_logit_shape(name):
    spec = get_model(name, num_classes=7)
    assert spec.name == name
    assert spec.dataset == ("mnist" if name.startswith("mnist") else "cifar10")
    assert spec.input_shape == ((28, 28, 1) if spec.dataset == "mnist" else (32, 32, 3))
    variables = _abstract_variables(spec)
    assert spec.classifier in variables["params"]
    assert variables["params"][spec.classifier]["kernel"].shape[-1] == 7
    x = jax.ShapeDtypeStruct((3, *spec.input_shape), jnp.float32)
    logits = jax.eval_shape(lambda v, x: spec.module.apply(v, x, train=False), variables, x)
    assert logits.shape == (3, 7)


@pytest.mark.parametrize("name", ["mnistnet_tiny", "resnet_tiny"])
def test_tiny_variants_run_and_are_small(name, tiny):
    spec, variables, apply = tiny[name]
    full = _abstract_variables(get_model("mnistnet" if name.startswith("mnist") else "resnet20"))
    assert _count(variables["params"]) < 10_000 < _count(full["params"])
    # Same topology: the same module names, one block a stage for the ResNet.
    assert set(variables["params"]) <= set(full["params"])
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, *spec.input_shape)), jnp.float32)
    logits, _ = apply(variables, x, False)
    assert logits.shape == (4, 10)
    assert np.all(np.isfinite(logits))


def test_unknown_name_lists_known_models():
    with pytest.raises(ValueError, match="resnet20") as info:
        get_model("resnet18")
    assert "resnet18" in str(info.value) and "mnistnet_tiny" in str(info.value)


def test_bad_num_classes():
    with pytest.raises(ValueError, match="num_classes"):
        get_model("mnistnet", num_classes=0)
    with pytest.raises(ValueError, match="num_classes"):
        get_model("mnistnet", num_classes=True)


def test_shortcut_identity_when_shape_kept():
    x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
    assert shortcut_option_a(x, 3, 1) is x


def test_shortcut_subsamples_and_zero_pads_both_sides():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 8, 16)), jnp.float32)
    y = shortcut_option_a(x, 32, 2)
    assert y.shape == (2, 4, 4, 32)
    # akamaster: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes//4, planes//4)).
    np.testing.assert_array_equal(y[..., 8:24], x[:, ::2, ::2, :])
    assert not np.any(y[..., :8]) and not np.any(y[..., 24:])


def test_shortcut_rejects_channel_reduction():
    with pytest.raises(ValueError, match="reduce channels"):
        shortcut_option_a(jnp.zeros((1, 4, 4, 8)), 4, 2)


def test_strided_block_aligns_conv_with_shortcut():
    """PyTorch's padding=1 centres stride-2 conv outputs on even pixels, like ::2.

    With centre-tap convs, identity BatchNorm and positive input the block
    computes 2·pad(x[::2, ::2]); Flax's 'SAME' padding would mix in
    x[1::2, 1::2] instead.
    """
    conv1 = np.zeros((3, 3, 4, 8), np.float32)
    conv1[1, 1, np.arange(4), np.arange(2, 6)] = 1.0  # channel c -> c + 2, like the shortcut
    conv2 = np.zeros((3, 3, 8, 8), np.float32)
    conv2[1, 1, np.arange(8), np.arange(8)] = 1.0
    bn_params = {"scale": jnp.ones(8), "bias": jnp.zeros(8)}
    bn_stats = {"mean": jnp.zeros(8), "var": jnp.ones(8)}
    variables = {
        "params": {"conv1": {"kernel": jnp.asarray(conv1)}, "bn1": bn_params,
                   "conv2": {"kernel": jnp.asarray(conv2)}, "bn2": bn_params},
        "batch_stats": {"bn1": bn_stats, "bn2": bn_stats},
    }
    x = jnp.asarray(np.random.default_rng(0).uniform(0.5, 1.0, (1, 6, 6, 4)), jnp.float32)
    out = BasicBlock(features=8, stride=2).apply(variables, x, train=False)
    np.testing.assert_allclose(out, 2.0 * shortcut_option_a(x, 8, 2), rtol=1e-4, atol=1e-6)


def test_batch_stats_update_only_in_training(tiny):
    _, variables, apply = tiny["resnet_tiny"]
    x = jnp.asarray(np.random.default_rng(0).normal(1.0, 1.0, (8, 8, 8, 3)), jnp.float32)
    _, eval_state = apply(variables, x, False)
    jax.tree.map(np.testing.assert_array_equal, variables["batch_stats"], eval_state["batch_stats"])

    _, train_state = apply(variables, x, True)
    # Stem: running mean <- 0.9·0 + 0.1·(batch mean of conv1(x)), torch's momentum 0.1.
    conv = jax.lax.conv_general_dilated(x, variables["params"]["conv1"]["kernel"], (1, 1),
                                        ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(train_state["batch_stats"]["bn1"]["mean"],
                               0.1 * conv.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.allclose(a, b),
                                           variables["batch_stats"], train_state["batch_stats"]))
    assert len(changed) == 2 * 7 and all(changed)  # mean, var of 7 BatchNorms


def test_train_mode_uses_batch_statistics(tiny):
    _, variables, apply = tiny["resnet_tiny"]
    x = jnp.asarray(np.random.default_rng(1).normal(2.0, 3.0, (8, 8, 8, 3)), jnp.float32)
    train_logits, _ = apply(variables, x, True)
    eval_logits, _ = apply(variables, x, False)
    assert not np.allclose(train_logits, eval_logits, atol=1e-3)


def test_kaiming_normal_matches_torch():
    kernel = np.asarray(initializers.kaiming_normal(_key(0), (3, 3, 64, 64)))
    std = np.sqrt(2.0 / (9 * 64))  # fan_in = k_h·k_w·C_in, gain √2
    assert abs(kernel.mean()) < 0.02 * std
    assert kernel.std() == pytest.approx(std, rel=0.02)
    # Untruncated normal (torch's kaiming_normal_): 4.55% beyond 2σ; Flax's
    # truncated normal (he_normal) has none.
    assert np.mean(np.abs(kernel) > 2 * std) == pytest.approx(0.0455, abs=0.005)


def test_torch_default_init_bounds():
    fan_in = 800
    kernel = np.asarray(initializers.torch_default_kernel(_key(0), (fan_in, 100)))
    bias = np.asarray(initializers.torch_default_bias(fan_in)(_key(1), (10_000,)))
    bound = 1 / np.sqrt(fan_in)
    for values in (kernel, bias):
        assert np.abs(values).max() <= bound
        assert np.abs(values).max() > 0.99 * bound
        assert values.std() == pytest.approx(bound / np.sqrt(3), rel=0.02)  # U(-b, b)


def test_models_use_torch_initializers(tiny):
    _, mnist_vars, _ = tiny["mnistnet_tiny"]
    params = mnist_vars["params"]
    # PyTorch default: every kernel and bias within ±1/√fan_in (Flax's LeCun
    # normal would exceed it and its zero biases would fail the spread check).
    for name, fan_in in [("conv1", 25), ("conv2", 25 * 4), ("fc1", 128), ("fc2", 16)]:
        for leaf in ("kernel", "bias"):
            assert np.abs(params[name][leaf]).max() <= 1 / np.sqrt(fan_in)
        assert np.std(params[name]["bias"]) > 0
    _, resnet_vars, _ = tiny["resnet_tiny"]
    params = resnet_vars["params"]
    kernel = np.asarray(params["layer3_0"]["conv2"]["kernel"])
    assert kernel.std() == pytest.approx(np.sqrt(2.0 / (9 * 16)), rel=0.1)
    assert np.all(np.abs(params["linear"]["bias"]) <= 1 / 4)  # torch default, fan_in 16
    np.testing.assert_array_equal(params["bn1"]["scale"], 1.0)
    np.testing.assert_array_equal(params["bn1"]["bias"], 0.0)


def test_init_is_deterministic_per_seed():
    spec = get_model("mnistnet_tiny")
    init = jax.jit(spec.module.init, static_argnames="train")
    x = jnp.zeros((1, *spec.input_shape))
    a = init(_key(3), x, train=False)
    b = init(_key(3), x, train=False)
    c = init(_key(4), x, train=False)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.array_equal(a["params"]["fc1"]["kernel"], c["params"]["fc1"]["kernel"])


def test_width_scaling_by_hand_and_the_largest_model_under_a_budget():
    from kpjax.flatten import count_params
    half = models.scale_width(models.get_model("mnistnet"), 0.5)
    assert (half.module.conv1_features, half.module.conv2_features, half.module.fc1_features) == (10, 25, 250)
    # conv1 5·5·1·10+10, conv2 5·5·10·25+25, fc1 4·4·25·250+250, fc2 250·10+10.
    assert count_params(models.variable_shapes(half)["params"]) == 260 + 6275 + 100250 + 2510
    resnet = models.scale_width(models.get_model("resnet20"), 0.25)
    assert resnet.module.widths == (4, 8, 16) and resnet.module.num_blocks == 3
    spec = models.get_model("resnet20")
    total = count_params(models.variable_shapes(spec)["params"])
    for c in (4.0, 30.0):
        small, factor = models.width_for_params(spec, int(total // c))
        n = count_params(models.variable_shapes(small)["params"])
        assert n <= total // c
        wider = count_params(models.variable_shapes(models.scale_width(spec, factor + 0.02))["params"])
        assert wider > total // c  # the widest under the budget (to the bisection's step)
    with pytest.raises(ValueError, match="width factor"):
        models.scale_width(spec, 1.5)
    with pytest.raises(ValueError, match="at width 1"):
        models.width_for_params(spec, 10)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_stored_for_backward_is_the_identity_bit_for_bit(dtype):
    from kpjax.models.resnet import stored_for_backward
    x = jnp.asarray([[-0.0, 1.5, jnp.nan, -jnp.inf], [3e-39, -2.0, 7.0, 0.0]], dtype)
    g = jnp.asarray(np.arange(8).reshape(2, 4), dtype)
    for key in (jnp.float32(1.0), jnp.float32(-1.0), jnp.float32(jnp.nan)):  # either branch
        out, vjp = jax.vjp(lambda v: stored_for_backward(v, key), x)
        np.testing.assert_array_equal(np.asarray(out).view(np.uint8), np.asarray(x).view(np.uint8))
        np.testing.assert_array_equal(vjp(g)[0], g)


def test_stored_for_backward_puts_a_conditional_in_the_cpu_step():
    from kpjax.models.resnet import stored_for_backward
    text = jax.jit(lambda v: stored_for_backward(v, v[0]) * 2).lower(jnp.ones(3)).compile().as_text()
    assert ("conditional(" in text) == (jax.default_backend() == "cpu")


def test_resnet_training_gradients_do_not_depend_on_the_stored_activations(tiny, monkeypatch):
    """The model with and without `stored_for_backward`: the same loss, batch
    statistics and gradients (up to XLA's fusion order), and its eval pass unchanged."""
    from kpjax.models import resnet
    spec, variables, _ = tiny["resnet_tiny"]
    x = jnp.asarray(np.random.default_rng(2).normal(0.5, 1.0, (8, 8, 8, 3)), jnp.float32)

    def loss(params):
        logits, state = spec.module.apply({**variables, "params": params}, x, train=True,
                                          mutable=["batch_stats"])
        return jnp.sum(logits ** 2), state

    def run():
        (value, state), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
        logits = jax.jit(lambda v: spec.module.apply(v, x, train=False))(variables)
        return value, state, grads, logits

    with_store = run()
    monkeypatch.setattr(resnet, "stored_for_backward", lambda v, key: v)
    without = run()
    # Fusion changes float32 summation order: compare on each array's scale.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max()),
                 with_store[:3], without[:3])
    np.testing.assert_array_equal(with_store[3], without[3])
    # The equality above holds by construction (eval never calls it); this is the check
    # that evaluation compiles without the conditionals.
    monkeypatch.undo()
    hlo = jax.jit(lambda v: spec.module.apply(v, x, train=False)).lower(variables).compile().as_text()
    assert "conditional(" not in hlo


def test_vgg16_layout_count_and_init_as_network_slimming():
    spec = get_model("vgg16")
    variables = _abstract_variables(spec)
    params = variables["params"]
    shapes = {k: v.shape for k, v in traverse_util.flatten_dict(params).items()}
    widths = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
    c_in = 3
    for i, w in enumerate(widths, 1):  # 3x3 convs without bias, each with BN
        assert shapes[(f"conv{i}", "kernel")] == (3, 3, c_in, w) and (f"conv{i}", "bias") not in shapes
        assert shapes[(f"bn{i}", "scale")] == shapes[(f"bn{i}", "bias")] == (w,)
        c_in = w
    assert shapes[("classifier", "kernel")] == (512, 10)
    conv = sum(9 * a * b for a, b in zip((3,) + widths[:-1], widths))
    assert _count(params) == conv + 2 * sum(widths) + 512 * 10 + 10 == 14_724_042
    # Initialized as the slimming code: γ = 0.5, β = 0, convs N(0, 2/(9·C_out)),
    # the classifier N(0, 0.01²) with zero bias.
    small = get_model("vgg_tiny")
    v = small.module.init(_key(3), jnp.zeros((1, 32, 32, 3)), train=False)
    assert all(bool(jnp.all(v["params"][f"bn{i}"]["scale"] == 0.5)) for i in range(1, 14))
    assert not bool(jnp.any(v["params"]["classifier"]["bias"]))
    p = v["params"]  # vgg_tiny: 16 output channels in conv13
    np.testing.assert_allclose(float(jnp.std(p["conv13"]["kernel"])), np.sqrt(2 / (9 * 16)), rtol=0.05)
    np.testing.assert_allclose(float(jnp.std(p["classifier"]["kernel"])), 0.01, rtol=0.2)
    logits, state = small.module.apply(v, jnp.ones((2, 32, 32, 3)), train=True, mutable=["batch_stats"])
    assert logits.shape == (2, 10) and set(state["batch_stats"]) == {f"bn{i}" for i in range(1, 14)}
