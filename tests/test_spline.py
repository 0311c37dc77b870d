"""kpjax.spline against hand-computed partitions of small ReLU networks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kpjax import spline


def _two_layer(params, points):
    """Pre-activations of a 2-2-1 ReLU network, by hand."""
    z1 = points @ params["w1"].T + params["b1"]
    z2 = jax.nn.relu(z1) @ params["w2"].T + params["b2"]
    return {"layer1": z1, "layer2": z2}


def test_canvas_is_the_alpha_beta_grid():
    c = spline.canvas(jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]), n=3)
    # α fastest: row i·n + j = (j/2, i/2).
    np.testing.assert_allclose(c, [[0, 0], [.5, 0], [1, 0], [0, .5], [.5, .5], [1, .5],
                                   [0, 1], [.5, 1], [1, 1]])
    images = spline.canvas(jnp.ones((4, 4, 3)), 2 * jnp.ones((4, 4, 3)), n=5)
    assert images.shape == (25, 4, 4, 3)
    np.testing.assert_allclose(images[24], 3.0)  # α = β = 1


def test_codes_and_distance_of_a_known_partition():
    # Canvas (α, β) on the 5 × 5 grid {0, .25, .5, .75, 1}²; layer 1's units are
    # the lines α = 0.5 and β = 0.5 (state a) or α = 0.3 and β = 0.5 (state b).
    points = spline.canvas(jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]), n=5)
    a = {"w1": jnp.eye(2), "b1": jnp.array([-0.5, -0.5]), "w2": jnp.array([[1.0, 1.0]]), "b2": jnp.array([-0.4])}
    b = {**a, "b1": jnp.array([-0.3, -0.5])}
    ca, cb = (spline.region_codes(_two_layer(p, points)) for p in (a, b))
    assert ca["layer1"].shape == (25, 2)
    # Unit 1 is on for α ∈ {0.75, 1} in a and α ∈ {0.5, 0.75, 1} in b: the α = 0.5
    # column (5 of 25 inputs) differs, unit 2 never: 5 / 50 of layer 1's bits.
    assert ca["layer1"][:, 0].sum() == 10 and cb["layer1"][:, 0].sum() == 15
    # Layer 2: relu(α − s) + relu(β − 0.5) > 0.4. By hand on the grid, state a
    # (s = 0.5): (1, ·) with relu(β − .5) ≥ 0 → 5, (.75, β): .25 + relu(β − .5) > .4
    # ↔ β ≥ .75 → 2, (α ≤ .5, β = 1) → 3; total 10. State b (s = 0.3): (1, ·) 5,
    # (.75, ·): .45 > .4 → 5, (.5, β ≥ .75) → 2, (α ≤ .25, β = 1) → 2; total 14.
    assert ca["layer2"].sum() == 10 and cb["layer2"].sum() == 14
    # a's on-set is contained in b's, so 4 of 25 bits differ in layer 2.
    assert spline.code_distance(ca, cb) == pytest.approx((5 / 50 + 4 / 25) / 2)
    assert spline.code_distance(ca, ca) == 0.0
    d = spline.code_distance_matrix([ca, cb, ca])
    np.testing.assert_allclose(d, d.T)
    assert d[0, 2] == 0.0 and d[0, 1] == pytest.approx(0.13)


def test_a_unit_on_everywhere_gives_all_ones_and_the_complement_distance_one():
    z = {"l": jnp.ones((7, 3))}
    assert spline.code_distance(spline.region_codes(z), spline.region_codes({"l": -z["l"]})) == 1.0


def test_spline_early_bird_needs_every_one_of_the_last_lookback_epochs_close():
    d = np.full((8, 8), 0.5)
    np.fill_diagonal(d, 0.0)
    for s, t in [(3, 4), (2, 4), (1, 4)]:  # epoch 4 near 3, 2 and 1 ...
        d[s, t] = d[t, s] = 0.1
    d[4, 3] = d[3, 4] = 0.2               # ... but not 3 at τ = 0.16
    assert spline.spline_early_bird_epoch(d) is None
    assert spline.spline_early_bird_epoch(d, threshold=0.25) == 4
    assert spline.spline_early_bird_epoch(d, lookback=1, threshold=0.25) == 4
    d[5, 4] = d[5, 3] = d[5, 2] = 0.05
    d[4, 5] = d[3, 5] = d[2, 5] = 0.05
    assert spline.spline_early_bird_epoch(d) == 5
    # Epochs before `lookback` are never drawn, even with zero distances.
    assert spline.spline_early_bird_epoch(np.zeros((5, 5)), lookback=3) == 3


@pytest.mark.parametrize("bad", [dict(lookback=0), dict(threshold=0.0), dict(threshold=float("nan"))])
def test_spline_early_bird_rejects_bad_settings(bad):
    with pytest.raises(ValueError):
        spline.spline_early_bird_epoch(np.zeros((4, 4)), **bad)


def test_bad_pre_activations_get_one_clear_error():
    with pytest.raises(ValueError, match="NaN"):
        spline.region_codes({"l": jnp.array([[jnp.nan, 1.0]])})
    with pytest.raises(ValueError, match="different layers"):
        spline.code_distance({"a": np.ones((2, 2), bool)}, {"b": np.ones((2, 2), bool)})
    with pytest.raises(ValueError, match="shapes"):
        spline.code_distance({"a": np.ones((2, 2), bool)}, {"a": np.ones((3, 2), bool)})
    with pytest.raises(ValueError):
        spline.canvas(jnp.ones(2), jnp.ones(3))


def test_canvas_pair_takes_the_first_image_of_the_second_class():
    labels = np.array([3, 5, 1, 1, 3, 7])
    assert spline.canvas_pair(labels, first=4) == (4, 2)
    assert spline.canvas_pair(labels, first=2) == (2, 1)  # its own class is 1: the first other
    with pytest.raises(ValueError):
        spline.canvas_pair(labels, first=6)


class _LinenBlock(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(3, name="fc")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
        return nn.Dense(1, name="out")(nn.relu(x))


def test_linen_preactivations_are_the_batch_norm_outputs_in_inference_mode():
    module = _LinenBlock()
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 2))
    variables = module.init(jax.random.PRNGKey(1), x)
    stats = {"mean": jnp.array([0.1, -0.2, 0.3]), "var": jnp.array([2.0, 0.5, 1.0])}
    variables = {**variables, "batch_stats": {"bn": stats}}
    z = spline.linen_preactivations(module, variables, x, train=False)
    assert list(z) == ["bn"]
    fc = variables["params"]["fc"]
    by_hand = (x @ fc["kernel"] + fc["bias"] - stats["mean"]) / jnp.sqrt(stats["var"] + 1e-5)
    np.testing.assert_allclose(z["bn"], by_hand, rtol=1e-5, atol=1e-6)
    dense = spline.linen_preactivations(module, variables, x, train=False,
                                        is_preactivation=lambda m, name: isinstance(m, nn.Dense) and m.name == "fc")
    np.testing.assert_allclose(dense["fc"], x @ fc["kernel"] + fc["bias"], rtol=1e-5)


class _NNXBlock(nnx.Module):
    def __init__(self, rngs):
        self.fc = nnx.Linear(2, 3, rngs=rngs)
        self.bn = nnx.BatchNorm(3, rngs=rngs)
        self.out = nnx.Linear(3, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.bn(self.fc(x))))


def test_nnx_preactivations_match_linen_s_rule_and_leave_the_model_in_its_mode():
    model = _NNXBlock(nnx.Rngs(0))
    model.bn.mean[...] = jnp.array([0.1, -0.2, 0.3])
    model.bn.var[...] = jnp.array([2.0, 0.5, 1.0])
    model.train()
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 2))
    z = spline.nnx_preactivations(model, x)
    assert list(z) == ["bn"]
    by_hand = (model.fc(x) - model.bn.mean[...]) / jnp.sqrt(model.bn.var[...] + 1e-5)
    np.testing.assert_allclose(z["bn"], by_hand, rtol=1e-5, atol=1e-6)
    assert not model.bn.use_running_average  # still in training mode


def test_the_chunked_matrix_equals_the_matrix_of_the_full_codes():
    key = jax.random.PRNGKey(3)
    points = spline.canvas(jnp.array([1.0, -1.0]), jnp.array([0.5, 2.0]), n=7)  # 49 inputs
    states = [{"w1": jax.random.normal(jax.random.fold_in(key, i), (2, 2)), "b1": jnp.full(2, 0.1 * i),
               "w2": jnp.ones((1, 2)), "b2": jnp.array([-0.5])} for i in range(4)]
    full = spline.code_distance_matrix([spline.region_codes(_two_layer(p, points)) for p in states])
    assert full[0, 1] > 0
    for chunk in (1, 10, 49, 100):
        np.testing.assert_allclose(spline.code_distance_matrix_of(_two_layer, states, points, chunk), full,
                                   rtol=1e-12)
