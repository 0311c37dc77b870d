"""Known-answer tests of kpjax.pruning.saliency (SNIP, GraSP, SynFlow, Lubana & Dick's
measures) and of their registry entries and masks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from kpjax import flatten, pruning
from kpjax.pruning import saliency


def linear_problem(seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(32, 5)), rng.normal(size=32)
    params = {"w": jnp.asarray(rng.normal(size=5)), "b": jnp.asarray(rng.normal())}
    loss_fn = lambda p: 0.5 * jnp.mean((x @ p["w"] + p["b"] - y) ** 2)
    return x, y, params, loss_fn


def test_snip_lp_and_biased_lp_by_hand_on_a_linear_model():
    with jax.enable_x64(True):
        x, y, params, loss_fn = linear_problem()
        w, b = np.asarray(params["w"]), float(params["b"])
        r = x @ w + b - y
        g_w, g_b = x.T @ r / len(y), r.mean()  # ∂L/∂w, ∂L/∂b by hand
        snip = saliency.snip_scores(params, loss_fn)
        np.testing.assert_allclose(snip["w"], np.abs(w * g_w), rtol=1e-12)
        np.testing.assert_allclose(snip["b"], abs(b * g_b), rtol=1e-12)
        biased = saliency.lp_biased_scores(params, loss_fn)
        np.testing.assert_allclose(biased["w"], np.abs(w * w * g_w), rtol=1e-12)
        lp, snip_method = pruning.get_method("lp"), pruning.get_method("snip")
        # LP is SNIP's score under its own label.
        assert lp.score_fn is snip_method.score_fn and (lp.label, snip_method.label) == ("LP", "SNIP")


class MLP(nn.Module):
    widths: tuple = (6, 4, 3)
    use_bias: bool = True

    @nn.compact
    def __call__(self, x, train=False):
        for i, w in enumerate(self.widths):
            x = nn.Dense(w, use_bias=self.use_bias, name=f"dense{i}")(x)
            if i < len(self.widths) - 1:
                x = nn.relu(x)
        return x


def test_grasp_and_gn_use_the_exact_hessian_gradient_product():
    with jax.enable_x64(True):
        model = MLP()
        rng = np.random.default_rng(1)
        x, labels = jnp.asarray(rng.normal(size=(16, 5))), jnp.asarray(rng.integers(0, 3, 16))
        params = model.init(jax.random.PRNGKey(0), x)["params"]
        params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), params)

        def loss_fn(p):
            logp = jax.nn.log_softmax(model.apply({"params": p}, x))
            return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))

        flat, unravel = ravel_pytree(params)
        flat_loss = lambda f: loss_fn(unravel(f))
        # The explicit Hessian, small enough here (under jit: op by op,
        # jax.hessian's nested vmaps compile for tens of seconds).
        h, g = jax.jit(lambda f: (jax.hessian(flat_loss)(f), jax.grad(flat_loss)(f)))(flat)
        expected = np.asarray(h @ g)
        hg, _ = saliency.hessian_gradient_product(params, loss_fn)
        np.testing.assert_allclose(ravel_pytree(hg)[0], expected, rtol=1e-9, atol=1e-14)
        grasp = ravel_pytree(saliency.grasp_scores(params, loss_fn))[0]
        np.testing.assert_allclose(grasp, np.asarray(flat) * expected, rtol=1e-9, atol=1e-14)
        gn = ravel_pytree(saliency.gradient_norm_scores(params, loss_fn))[0]
        np.testing.assert_allclose(gn, np.abs(np.asarray(flat) * expected), rtol=1e-9, atol=1e-14)


def test_grasp_keeps_the_largest_signed_scores():
    # Scores −3, −1, 2, 0.5: the two kept are 2 and 0.5 (not |−3|).
    spec = flatten.flat_spec({"w": jnp.zeros(4)}, {"w": True})
    keep = pruning.global_signed_flat_mask(jnp.asarray([-3.0, -1.0, 2.0, 0.5]), spec, 0.5)
    np.testing.assert_array_equal(keep, [False, False, True, True])


def test_synflow_conserves_the_score_of_every_layer_and_needs_no_data():
    model = MLP(widths=(8, 6, 4), use_bias=False)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 5)))
    objective = saliency.synflow_objective(model.apply, variables, (5,))
    scores = saliency.synflow_scores(variables["params"], objective)
    # Tanaka et al.'s conservation law: in a bias-free ReLU network of |θ| on
    # a positive input, each layer's scores sum to R (here normalized to 1).
    for name, layer in scores.items():
        assert float(jnp.sum(layer["kernel"])) == pytest.approx(1.0, rel=1e-5), name
    # R itself by hand: 1ᵀ|W₃||W₂||W₁|1.
    ws = [np.abs(np.asarray(variables["params"][f"dense{i}"]["kernel"], np.float64)) for i in range(3)]
    r = float(np.ones(5) @ ws[0] @ ws[1] @ ws[2] @ np.ones(4))
    assert float(objective(variables["params"])) == pytest.approx(r, rel=1e-12)
    # The signs of θ do not matter (|θ| enters), and no data enters at all.
    flipped = jax.tree_util.tree_map(lambda p: -p, variables["params"])
    np.testing.assert_array_equal(ravel_pytree(saliency.synflow_scores(flipped, objective))[0],
                                  ravel_pytree(scores)[0])


def test_synflow_stays_finite_where_float32_overflows():
    model = MLP(widths=(64,) * 12 + (4,), use_bias=False)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64)))
    params = jax.tree_util.tree_map(lambda p: p * 200.0, variables["params"])
    objective = saliency.synflow_objective(model.apply, variables, (64,))
    assert float(objective(params)) > 1e39  # beyond float32's 3.4e38
    scores = ravel_pytree(saliency.synflow_scores(params, objective))[0]
    assert scores.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(scores)))
    assert float(jnp.max(scores)) > 0


def test_iterative_synflow_avoids_the_layer_collapse_of_magnitude_pruning():
    # A middle layer of tiny weights: one-shot magnitude pruning removes it
    # entirely at high compression and cuts the network; iterative SynFlow
    # (scores conserved per layer) keeps weights in every layer.
    model = MLP(widths=(20, 20, 20, 1), use_bias=False)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 20)))
    params = dict(variables["params"])
    params["dense1"] = {"kernel": params["dense1"]["kernel"] * 1e-3}
    select = jax.tree_util.tree_map(lambda _: True, params)
    total = sum(int(np.size(p)) for p in jax.tree_util.tree_leaves(params))
    fraction = 0.02  # 1,220 weights → 24 kept
    gmp = pruning.global_mask(pruning.magnitude_scores(params), select, fraction)
    assert not bool(jnp.any(gmp["dense1"]["kernel"]))  # collapsed
    objective = saliency.synflow_objective(model.apply, {"params": params}, (20,))
    mask = pruning.synflow_iterative_mask(params, select, objective, fraction, rounds=20)
    kept = {name: int(jnp.sum(m["kernel"])) for name, m in mask.items()}
    assert all(k > 0 for k in kept.values()), kept
    assert sum(kept.values()) == round(fraction * total)
    # The flow survives: R of the pruned network is positive.
    assert float(objective(pruning.apply_mask(params, mask))) > 0


def test_registered_methods_declare_what_they_need():
    _, _, params, loss_fn = linear_problem()
    select = {"w": True, "b": False}
    for name, field in (("snip", "loss_fn"), ("lp_biased", "loss_fn"), ("gn", "loss_fn"),
                        ("grasp", "grasp_loss_fn")):
        with pytest.raises(ValueError, match=f"needs PruneInputs.{field}"):
            pruning.method_flat_scores(name, pruning.PruneInputs(params, select))
        scores = pruning.method_flat_scores(name, pruning.PruneInputs(params, select, **{field: loss_fn}))
        assert scores.shape == (5,)
    with pytest.raises(ValueError, match="needs PruneInputs.synflow_fn"):
        pruning.method_flat_scores("synflow", pruning.PruneInputs(params, select))


def test_grasp_sign_variants_are_its_modulus_and_its_negation():
    _, _, params, loss_fn = linear_problem(3)
    select = {"w": True, "b": True}
    inputs = pruning.PruneInputs(params, select, grasp_loss_fn=loss_fn)
    signed = np.asarray(pruning.method_flat_scores("grasp", inputs))
    assert (signed > 0).any() and (signed < 0).any()  # the three orders differ
    np.testing.assert_array_equal(pruning.method_flat_scores("grasp_magnitude", inputs), np.abs(signed))
    np.testing.assert_array_equal(pruning.method_flat_scores("grasp_negated", inputs), -signed)
    spec = flatten.flat_spec(params, select)
    keep = lambda m: np.asarray(pruning.method_flat_mask(m, pruning.method_flat_scores(m, inputs),
                                                         spec, 6, 2.0))
    # At c = 2 (3 of 6 kept), the negated score keeps exactly what GraSP prunes.
    np.testing.assert_array_equal(keep("grasp_negated"), ~keep("grasp"))
    np.testing.assert_array_equal(keep("grasp"), signed >= np.sort(signed)[3])
    np.testing.assert_array_equal(keep("grasp_magnitude"), np.abs(signed) >= np.sort(np.abs(signed))[3])


def test_reinit_dense_kernels_redraws_only_dense_kernels_at_xavier_scale():
    params = {"conv": {"kernel": jnp.ones((3, 3, 4, 8)), "bias": jnp.ones(8)},
              "fc": {"kernel": jnp.ones((600, 400)), "bias": jnp.ones(400)}}
    out = saliency.reinit_dense_kernels(params, jax.random.PRNGKey(0))
    for leaf in ("conv/kernel", "conv/bias", "fc/bias"):
        a, b = leaf.split("/")
        np.testing.assert_array_equal(out[a][b], params[a][b])
    k = np.asarray(out["fc"]["kernel"])
    np.testing.assert_allclose(k.std(), np.sqrt(2 / 1000), rtol=0.01)
    assert abs(k.mean()) < 1e-3 and np.abs(k).max() > 2.5 * np.sqrt(2 / 1000)  # not truncated


def test_batch_loss_fn_averages_stacked_batches_and_divides_by_the_temperature():
    from kpjax import models, train
    spec = models.get_model("mnistnet_tiny")
    variables = models.init_variables(spec, 0)
    rng = np.random.RandomState(0)
    images = rng.randn(3, 8, *spec.input_shape).astype(np.float32)
    labels = rng.randint(0, 10, size=(3, 8))
    params = variables["params"]
    one = [train.batch_loss_fn(spec.module.apply, None, images[i], labels[i])(params) for i in range(3)]
    stacked = train.batch_loss_fn(spec.module.apply, None, images, labels)(params)
    np.testing.assert_allclose(stacked, np.mean(one), rtol=1e-6)
    # Past the unrolled count the batches go through lax.map: the same mean.
    many = rng.randn(train.steps._UNROLLED_BATCHES + 1, 2, *spec.input_shape).astype(np.float32)
    many_labels = rng.randint(0, 10, size=many.shape[:2])
    each = [train.batch_loss_fn(spec.module.apply, None, x, y)(params) for x, y in zip(many, many_labels)]
    np.testing.assert_allclose(train.batch_loss_fn(spec.module.apply, None, many, many_labels)(params),
                               np.mean(each), rtol=1e-6)
    # T = 200 by hand: cross-entropy of the logits / T.
    logits = np.asarray(spec.module.apply(variables, images[0]), np.float64) / 200.0
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -logp[np.arange(8), labels[0]].mean()
    tempered = train.batch_loss_fn(spec.module.apply, None, images[0], labels[0], temperature=200.0)
    np.testing.assert_allclose(tempered(params), expected, rtol=1e-5)
