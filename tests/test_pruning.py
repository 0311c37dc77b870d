"""Tests of kpjax.pruning: hand-computed masks, targets, KMP ≡ GMP, KGP ≡ grad."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kpjax import flatten, koopman, pruning
from oracles import quadratic_gd, stack_snapshots


def _model_params(seed=0):
    rng = np.random.default_rng(seed)
    r = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
    return {
        "conv1": {"kernel": r(3, 3, 2, 8), "bias": r(8)},
        "bn1": {"scale": r(8), "bias": r(8)},
        "fc": {"kernel": r(32, 10), "bias": r(10)},
    }


def test_prunable_never_batchnorm_and_classifier_flag():
    params = _model_params()
    sel = pruning.prunable(params)
    assert sel["conv1"] == {"kernel": True, "bias": True}
    assert sel["bn1"] == {"scale": False, "bias": False}
    assert sel["fc"] == {"kernel": True, "bias": True}
    sel = pruning.prunable(params, include_classifier=False, classifier="fc")
    assert sel["fc"] == {"kernel": False, "bias": False}
    assert sel["conv1"]["kernel"]
    with pytest.raises(ValueError, match="not a conv/dense module"):
        pruning.prunable(params, include_classifier=False, classifier="bn1")
    sel = pruning.prunable(params, include_biases=False)  # GraSP's and SynFlow's set
    assert sel == {"conv1": {"kernel": True, "bias": False}, "bn1": {"scale": False, "bias": False},
                   "fc": {"kernel": True, "bias": False}}


def test_keep_fraction_formula_and_errors():
    # 100 params, 80 prunable, c = 2 -> 50 nonzero -> keep 30 of 80.
    assert pruning.keep_fraction(2.0, 100, 80) == pytest.approx(30 / 80)
    assert pruning.keep_fraction(1.0, 100, 80) == pytest.approx(1.0)
    for bad in (0.5, 0.0, -3, np.nan, np.inf):
        with pytest.raises(ValueError, match="compression ratio must be"):
            pruning.keep_fraction(bad, 100, 80)
    # 20 unprunable parameters: one kept prunable weight gives 100 / 21.
    with pytest.raises(ValueError, match="impossible.*at most 4.762"):
        pruning.keep_fraction(5.0, 100, 80)


def test_global_mask_hand_computed_and_ties():
    scores = {"a": jnp.array([3.0, 1.0]), "b": jnp.array([[2.0, 5.0]])}
    select = {"a": True, "b": True}
    mask = pruning.global_mask(scores, select, 0.5)
    np.testing.assert_array_equal(mask["a"], [True, False])
    np.testing.assert_array_equal(mask["b"], [[False, True]])
    # All tied: exactly k kept, the lowest flat indices.
    tied = {"a": jnp.ones(4), "b": jnp.ones((2, 3))}
    mask = pruning.global_mask(tied, {"a": True, "b": True}, 0.3)
    np.testing.assert_array_equal(mask["a"], [True, True, True, False])
    assert not np.any(mask["b"])


def test_layerwise_mask_keeps_fraction_of_each_tensor():
    scores = {"a": jnp.array([3.0, 1.0, 2.0, 0.5]), "b": jnp.array([10.0, 20.0]), "c": jnp.zeros(3)}
    select = {"a": True, "b": True, "c": False}
    spec = flatten.flat_spec(scores, select)
    keep = pruning.layerwise_flat_mask(flatten.ravel_with_spec(scores, spec), spec, 0.5)
    mask = pruning.mask_from_flat(keep, spec, scores)
    np.testing.assert_array_equal(mask["a"], [True, False, True, False])
    np.testing.assert_array_equal(mask["b"], [False, True])
    np.testing.assert_array_equal(mask["c"], [True, True, True])


@pytest.mark.parametrize("method", ["gmp", "layer_mag", "random"])
@pytest.mark.parametrize("compression", [1.0, 2.0, 4.0, 8.0, 16.0])
def test_target_compression_reached_and_batchnorm_kept(method, compression):
    params = _model_params()
    select = pruning.prunable(params)
    inputs = pruning.PruneInputs(params, select, rng=jax.random.key(0))
    mask = pruning.prune(method, inputs, compression)
    total = flatten.count_params(params)
    kept = sum(int(m.sum()) for m in jax.tree_util.tree_leaves(mask))
    # Within one parameter of the target nonzero count (layerwise: one per tensor).
    slack = 1 if method != "layer_mag" else 4
    assert abs(kept - total / compression) <= slack
    assert np.all(mask["bn1"]["scale"]) and np.all(mask["bn1"]["bias"])
    # Random normal weights have no zeros, so compression of θ ⊙ m is the mask's.
    assert pruning.compression_ratio(params, mask) == pytest.approx(total / kept)


def test_classifier_excluded_stays_dense():
    params = _model_params()
    select = pruning.prunable(params, include_classifier=False, classifier="fc")
    mask = pruning.prune("gmp", pruning.PruneInputs(params, select), 1.2)
    assert np.all(mask["fc"]["kernel"]) and np.all(mask["fc"]["bias"])
    assert not np.all(mask["conv1"]["kernel"])


def test_apply_mask_gives_exact_zeros_and_is_jittable():
    params = _model_params()
    mask = pruning.prune("gmp", pruning.PruneInputs(params, pruning.prunable(params)), 4.0)
    for fn in (pruning.apply_mask, jax.jit(pruning.apply_mask)):
        pruned = fn(params, mask)
        for p, m in zip(jax.tree_util.tree_leaves(pruned), jax.tree_util.tree_leaves(mask)):
            assert np.all(np.asarray(p)[~np.asarray(m)] == 0.0)
            assert np.all(np.asarray(p)[np.asarray(m)] != 0.0)


def test_gradient_scores_hand_computed():
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    grads = {"w": jnp.array([4.0, 1.0, -0.1])}
    np.testing.assert_allclose(pruning.gradient_scores(params, grads)["w"], [4.0, 2.0, 0.3], rtol=1e-6)
    mask = pruning.prune("grad", pruning.PruneInputs(params, {"w": True}, grads=grads), 1.5)
    np.testing.assert_array_equal(mask["w"], [True, True, False])


def _as_params(vec):
    return {"layer": {"kernel": jnp.asarray(vec, jnp.float32)}}


def test_kmp_equals_gmp_on_a_converged_trajectory():
    n = 150
    rng = np.random.default_rng(7)
    # Well-separated magnitudes so that the masks are determined, not tie-broken.
    theta_star = rng.permutation(np.linspace(0.1, 2.0, n)) * rng.choice([-1, 1], n)
    oracle = quadratic_gd(n=n, steps=80, excited_h=(3.0, 4.0, 5.0), eta=0.1, theta_star=theta_star)
    theta = jnp.asarray(oracle.snapshots, jnp.float32)
    params = _as_params(oracle.snapshots[-1])
    select = pruning.prunable(params)
    spec = flatten.flat_spec(params, select)
    inputs = pruning.PruneInputs(params, select, snapshots=theta, spec=spec)
    for c in (2.0, 4.0, 10.0):
        kmp = pruning.prune("kmp", inputs, c)
        gmp = pruning.prune("gmp", inputs, c)
        np.testing.assert_array_equal(kmp["layer"]["kernel"], gmp["layer"]["kernel"])


def test_kgp_equals_gradient_pruning_on_a_short_gd_window():
    oracle = quadratic_gd(n=150, steps=8, eta=0.05, seed=3)
    theta = jnp.asarray(oracle.snapshots, jnp.float32)
    last = oracle.snapshots[-1]
    params = _as_params(last)
    select = pruning.prunable(params)
    spec = flatten.flat_spec(params, select)
    kgp = np.asarray(pruning.scores_from_flat(pruning.kgp_flat_scores(theta, koopman.fit_trajectory(theta)), spec,
                                              params)["layer"]["kernel"])
    grad = np.abs(last * oracle.grad(last))
    # KGP = |θ ⊙ η∇L|: gradient pruning's scores up to the global scale η.
    np.testing.assert_allclose(kgp, oracle.eta * grad, rtol=1e-3, atol=1e-6 * grad.max())
    inputs = pruning.PruneInputs(params, select, grads=_as_params(oracle.grad(last)), snapshots=theta, spec=spec)
    for c in (2.0, 4.0):
        m_kgp = np.asarray(pruning.prune("kgp", inputs, c)["layer"]["kernel"])
        m_grad = np.asarray(pruning.prune("grad", inputs, c)["layer"]["kernel"])
        threshold = np.sort(grad)[::-1][int(m_grad.sum()) - 1]
        differ = m_kgp != m_grad
        # Only entries within float32 noise of the threshold may differ.
        assert np.all(np.abs(grad[differ] - threshold) < 1e-4 * threshold)
        assert differ.sum() <= 2


def test_layer_kmp_fits_each_tensor_and_reaches_target():
    oracle = quadratic_gd(n=120, steps=40, excited_h=(3.0, 4.0, 5.0))
    snaps = oracle.snapshots.astype(np.float32)
    traj = [{"a": {"kernel": jnp.asarray(s[:70])}, "b": {"kernel": jnp.asarray(s[70:])}} for s in snaps]
    theta, spec = stack_snapshots(traj, lambda p, x: True)
    params = traj[-1]
    select = pruning.prunable(params)
    mask = pruning.prune("layer_kmp", pruning.PruneInputs(params, select, snapshots=theta, spec=spec), 2.0)
    assert int(mask["a"]["kernel"].sum()) == 35 and int(mask["b"]["kernel"].sum()) == 25
    gmp = pruning.prune("layer_mag", pruning.PruneInputs(params, select), 2.0)
    agree = np.mean(np.concatenate([np.asarray(mask[k]["kernel"] == gmp[k]["kernel"]) for k in "ab"]))
    assert agree > 0.95


def test_registry_errors_and_extension():
    params = _model_params()
    inputs = pruning.PruneInputs(params, pruning.prunable(params))
    with pytest.raises(ValueError, match="unknown pruning method 'nope'.*kmp"):
        pruning.prune("nope", inputs, 2.0)
    with pytest.raises(ValueError, match="needs PruneInputs.grads"):
        pruning.prune("grad", inputs, 2.0)
    with pytest.raises(ValueError, match="needs PruneInputs.snapshots"):
        pruning.prune("kmp", inputs, 2.0)
    pruning.register_method("neg_mag", pruning.PruningMethod(
        pruning.from_tree_scores(lambda i: jax.tree_util.tree_map(lambda x: 1.0 / (1e-6 + jnp.abs(x)), i.params)),
        pruning.global_flat_mask))
    try:
        mask = pruning.prune("neg_mag", inputs, 2.0)
        gmp = pruning.prune("gmp", inputs, 2.0)
        assert not np.any(mask["conv1"]["kernel"] & gmp["conv1"]["kernel"])
    finally:
        del pruning.METHODS["neg_mag"]


def test_bad_inputs_raise_clear_errors():
    params = _model_params()
    select = pruning.prunable(params)
    with pytest.raises(ValueError, match="different structure"):
        pruning.apply_mask(params, {"conv1": params["conv1"]})
    with pytest.raises(ValueError, match="different structure"):
        pruning.gradient_scores(params, {"fc": params["fc"]})
    bad = jax.tree_util.tree_map(lambda x: x, params)
    bad["conv1"]["kernel"] = bad["conv1"]["kernel"].at[0, 0, 0, 0].set(jnp.nan)
    with pytest.raises(ValueError, match="conv1/kernel contain NaN"):
        pruning.prune("gmp", pruning.PruneInputs(bad, select), 2.0)
    with pytest.raises(ValueError, match="compression ratio must be"):
        pruning.prune("gmp", pruning.PruneInputs(params, select), 0.5)


def test_random_is_reproducible_per_key():
    params = _model_params()
    select = pruning.prunable(params)
    m1 = pruning.prune("random", pruning.PruneInputs(params, select, rng=jax.random.key(1)), 4.0)
    m2 = pruning.prune("random", pruning.PruneInputs(params, select, rng=jax.random.key(1)), 4.0)
    m3 = pruning.prune("random", pruning.PruneInputs(params, select, rng=jax.random.key(2)), 4.0)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(m1), jax.tree_util.tree_leaves(m2)))
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(m1), jax.tree_util.tree_leaves(m3)))


def test_mask_jaccard_hand_computed():
    a = {"w": jnp.array([True, True, False, False]), "bn": jnp.array([True])}
    b = {"w": jnp.array([True, False, True, False]), "bn": jnp.array([True])}
    select = {"w": True, "bn": False}
    assert pruning.mask_jaccard(a, b, select) == pytest.approx(1 / 3)
    assert pruning.mask_jaccard(a, a, select) == 1.0


def test_scores_are_reusable_across_compressions():
    params = _model_params()
    select = pruning.prunable(params)
    inputs = pruning.PruneInputs(params, select)
    spec = flatten.flat_spec(params, select)
    scores = pruning.method_flat_scores("gmp", inputs)
    for c in (2.0, 8.0):
        keep = pruning.method_flat_mask("gmp", scores, spec, flatten.count_params(params), c)
        via_scores = pruning.mask_from_flat(keep, spec, params)
        direct = pruning.prune("gmp", inputs, c)
        assert all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(via_scores), jax.tree_util.tree_leaves(direct)))


# ---------------------------------------------------------------------------
# The optax mask transformation.


def _masked_problem(seed=0):
    rng = np.random.default_rng(seed)
    params = {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32),
                       "bias": jnp.asarray(rng.normal(size=4), jnp.float32)},
              "dense": {"kernel": jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)}}
    mask = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.random(p.shape) < 0.6), params)
    grads = [jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
             for _ in range(12)]
    return params, mask, grads


@pytest.mark.parametrize("inner", [
    optax.sgd(0.1, momentum=0.9, nesterov=True),
    optax.adam(1e-2),
    optax.adamw(1e-2, weight_decay=0.1),
    optax.chain(optax.add_decayed_weights(1e-2), optax.sgd(0.1, momentum=0.9)),
], ids=["sgd", "adam", "adamw", "sgd+decay"])
def test_masked_keeps_pruned_weights_zero_and_leaves_kept_ones_alone(inner):
    params, mask, grads = _masked_problem()
    tx = pruning.freeze_pruned(inner, mask)
    p = pruning.apply_mask(params, mask)
    state = tx.init(p)
    # The reference: the plain optimizer on gradients that are zero where pruned.
    q, ref_state = p, inner.init(p)
    step = jax.jit(tx.update)
    for i, g in enumerate(grads):
        if i == 3:  # a NaN gradient on pruned weights must not leak anywhere
            g = jax.tree_util.tree_map(lambda x, m: jnp.where(m, x, jnp.nan), g, mask)
        updates, state = step(g, state, p)
        p = optax.apply_updates(p, updates)
        ref_updates, ref_state = inner.update(pruning.apply_mask(g, mask), ref_state, q)
        q = optax.apply_updates(q, ref_updates)
    for x, y, m in zip(*(jax.tree_util.tree_leaves(t) for t in (p, q, mask))):
        x, y, m = np.asarray(x), np.asarray(y), np.asarray(m)
        assert np.all(x[~m] == 0) and not np.any(np.signbit(x[~m]))  # +0.0 exactly
        np.testing.assert_allclose(x[m], y[m], rtol=1e-5, atol=1e-6)  # jit vs eager rounding
    moved = [np.abs(np.asarray(a) - np.asarray(b))[np.asarray(m)].max()
             for a, b, m in zip(*(jax.tree_util.tree_leaves(t) for t in (p, params, mask)))]
    assert min(moved) > 0  # the kept weights did train


def test_masked_zeroes_weights_that_were_not_pruned_yet():
    params, mask, grads = _masked_problem(1)
    tx = pruning.freeze_pruned(optax.adamw(1e-3, weight_decay=1e-2), mask)
    updates, _ = tx.update(grads[0], tx.init(params), params)
    p = optax.apply_updates(params, updates)
    for x, m in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(mask)):
        assert np.all(np.asarray(x)[~np.asarray(m)] == 0)


def test_masked_refuses_a_mask_of_another_structure():
    params, mask, _ = _masked_problem()
    with pytest.raises(ValueError, match="structure"):
        pruning.freeze_pruned(optax.sgd(0.1), {"conv": mask["conv"]}).init(params)


def test_a_trajectory_of_other_shapes_is_refused():
    # Same leaf names, another model's shapes (fc 32x10 recorded as 8x40).
    params = _model_params()
    select = pruning.prunable(params)
    other = dict(params, fc={"kernel": jnp.zeros((8, 40)), "bias": params["fc"]["bias"]})
    theta, spec = stack_snapshots([other] * 4, pruning.prunable(other))
    inputs = pruning.PruneInputs(params, select, snapshots=theta, spec=spec)
    with pytest.raises(ValueError, match=r"shapes differ from the params'.*fc/kernel \(32, 10\) vs \(8, 40\)"):
        pruning.prune("kmp", inputs, 2.0)


def test_early_bird_mask_distance_and_the_draw():
    select = {"a": True, "b": False}
    m = {"a": jnp.asarray([True, False, True, True]), "b": jnp.asarray([True])}
    complement = {"a": ~m["a"], "b": jnp.asarray([False])}  # b is not prunable: not counted
    assert pruning.mask_distance(m, m, select) == 0.0
    assert pruning.mask_distance(m, complement, select) == 1.0
    half = {"a": jnp.asarray([True, True, False, True]), "b": m["b"]}
    assert pruning.mask_distance(m, half, select) == 0.5
    # Drawn where the last 5 distances are all below 0.1 (distance i: masks i, i+1).
    assert pruning.early_bird_index([0.3, 0.05, 0.05, 0.05, 0.05, 0.05, 0.01]) == 5
    assert pruning.early_bird_index([0.05] * 4 + [0.2] + [0.05] * 4) is None
    assert pruning.early_bird_index([0.2, 0.05, 0.05], patience=2, eps=0.1) == 2
    with pytest.raises(ValueError):
        pruning.early_bird_index([0.1], patience=0)
