"""Pruning during training: schedules, nested masks, IMP's rewind, N:M,
SET/RigL, mask changes in a running optimizer, and the pruned export."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kpjax import flatten, pruning, train
from kpjax.pruning import dynamic, export, gradual, nm, schedules


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Dense(32, name="fc1")(x.reshape((x.shape[0], -1))))
        return nn.Dense(4, name="fc2")(x)


def mlp_params(seed=0):
    return MLP().init(jax.random.PRNGKey(seed), jnp.zeros((1, 8)))["params"]


def batches(num, seed=1):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(16, 8)).astype(np.float32), rng.integers(0, 4, 16).astype(np.int32))
            for _ in range(num)]


def prunable_count(params):
    return flatten.flat_spec(params, pruning.prunable(params)).size


# ----------------------------------------------------------------- schedules

def test_polynomial_targets_are_zhu_and_gupta_formula():
    s_i, s_f, t0, dt, n = 0.1, 0.95, 40, 7, 6
    sched = schedules.polynomial(s_f, begin=t0, every=dt, count=n, initial=s_i)
    assert sched.points == tuple(t0 + k * dt for k in range(n + 1))
    for t, s in zip(sched.points, sched.targets):
        assert s == pytest.approx(s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3, abs=1e-15)
    assert sched.targets[0] == pytest.approx(s_i) and sched.final == pytest.approx(s_f)
    # The schedule as an optax-style function of the step (0 before t0, constant between points).
    assert float(sched(t0 - 1)) == 0.0
    assert float(sched(t0 + dt + 3)) == pytest.approx(sched.targets[1], abs=1e-7)
    assert float(jax.jit(lambda t: sched(t))(10_000)) == pytest.approx(s_f, abs=1e-7)


def test_iterative_schedule_prunes_the_same_fraction_of_survivors_each_round():
    sched = schedules.iterative(0.9, rounds=4, round_steps=50, rewind_step=5)
    assert sched.points == (50, 95, 140, 185) and sched.rewind_step == 5
    kept = [1 - s for s in sched.targets]
    ratios = [kept[0]] + [b / a for a, b in zip(kept, kept[1:])]
    assert np.allclose(ratios, 0.1 ** 0.25) and sched.final == 0.9
    assert schedules.total_steps(sched, 50) == 50 + 4 * 45


@pytest.mark.parametrize("make, message", [
    (lambda: schedules.one_shot(1.0, 10), "in \\[0, 1\\)"),
    (lambda: schedules.one_shot(float("nan"), 10), "in \\[0, 1\\)"),
    (lambda: schedules.polynomial(0.9, begin=0, every=0, count=5), "every \\(Δt\\) must be an integer >= 1"),
    (lambda: schedules.polynomial(0.9, begin=0, every=-3, count=5), "every \\(Δt\\) must be an integer >= 1"),
    (lambda: schedules.polynomial(0.9, begin=0, every=2, count=0), "count \\(n\\)"),
    (lambda: schedules.polynomial(0.5, begin=0, every=2, count=3, initial=0.6), "exceeds the final"),
    (lambda: schedules.iterative(0.9, rounds=3, round_steps=10, rewind_step=10), "rewind_step 10"),
    (lambda: schedules.iterative(0.9, rounds=0, round_steps=10), "rounds must be"),
])
def test_impossible_schedules_get_one_line(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# ------------------------------------------------------- masks at the points

def test_every_point_reaches_its_sparsity_exactly_and_masks_are_nested():
    params = mlp_params()
    select = pruning.prunable(params)
    n = prunable_count(params)
    sched = schedules.polynomial(0.97, begin=0, every=1, count=8)
    rng = np.random.default_rng(0)
    mask = None
    for s in sched.targets:
        # New scores at every point (as a trained network's would be).
        params = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
        inputs = pruning.PruneInputs(params, select)
        new = gradual.sparsity_mask("gmp", inputs, s, mask)
        kept = n - round(pruning.sparsity_of(new, select) * n)
        assert kept == round((1 - s) * n)
        if mask is not None:
            assert all(bool(jnp.all(a <= b)) for a, b in zip(jax.tree_util.tree_leaves(new),
                                                           jax.tree_util.tree_leaves(mask)))
        mask = new


def test_a_lower_sparsity_than_the_current_mask_is_refused():
    params = mlp_params()
    inputs = pruning.PruneInputs(params, pruning.prunable(params))
    mask = gradual.sparsity_mask("gmp", inputs, 0.8)
    with pytest.raises(ValueError, match="needs that many allowed"):
        gradual.sparsity_mask("gmp", inputs, 0.5, mask)
    with pytest.raises(ValueError, match="sparsity must be in"):
        gradual.sparsity_mask("gmp", inputs, 1.0)


def test_any_registered_method_drives_a_schedule_kmp_from_the_last_window():
    params = mlp_params()
    select = pruning.prunable(params)
    flat0, spec = flatten.ravel_selected(params, select)
    # A window of decaying linear dynamics θ(t) = θ* + 0.9^t (θ0 − θ*): b₁φ₁ = θ*.
    target = jnp.asarray(np.random.default_rng(3).normal(size=flat0.shape), jnp.float32)
    window = jnp.stack([target + 0.9 ** t * (flat0 - target) for t in range(12)])
    inputs = pruning.PruneInputs(params, select, snapshots=window, spec=spec)
    kmp = gradual.sparsity_mask("kmp", inputs, 0.75)
    by_target = gradual.sparsity_mask("gmp", pruning.PruneInputs(flatten.unravel_selected(target, spec, params),
                                                                  select), 0.75)
    assert pruning.mask_jaccard(kmp, by_target, select) > 0.99
    layerwise = gradual.sparsity_mask("layer_mag", inputs, 0.5)
    for m, s in zip(jax.tree_util.tree_leaves(layerwise), jax.tree_util.tree_leaves(select)):
        if s:
            assert int(m.sum()) == round(0.5 * m.size)


def training(tx, mask=None):
    """(params, prunable selection, train state, jitted step) of the MLP."""
    params = mlp_params()
    state = train.create_train_state(params, tx, jax.random.PRNGKey(0), mask=mask)
    return params, pruning.prunable(params), state, train.make_train_step(MLP().apply, tx)


def test_pruned_weights_stay_zero_between_points_of_a_gradual_run():
    tx = optax.sgd(0.1, momentum=0.9)
    params, select, state, step = training(tx)
    sched = schedules.polynomial(0.9, begin=3, every=4, count=3)
    for t, (x, y) in enumerate(batches(20), start=1):
        state, _ = step(state, x, y)
        s = sched.target_at(t)
        if s is not None:
            mask = gradual.sparsity_mask("gmp", pruning.PruneInputs(state.params, select), s, state.mask)
            state = train.replace_mask(state, mask, tx)
        for p, m in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(state.mask)):
            assert bool(jnp.all(jnp.where(m, True, p == 0)))
    assert pruning.sparsity_of(state.mask, select) == pytest.approx(0.9, abs=1 / prunable_count(params))


def test_imp_rewinds_to_the_stored_step_k_weights_bit_exactly():
    tx = optax.sgd(0.05, momentum=0.9)
    params, select, state, step = training(tx)
    data = batches(10)
    for x, y in data[:2]:
        state, _ = step(state, x, y)
    theta_k = jax.tree_util.tree_map(np.array, state.params)  # θ(k), k = 2
    for x, y in data[2:]:
        state, _ = step(state, x, y)
    mask = gradual.sparsity_mask("gmp", pruning.PruneInputs(state.params, select), 0.5)
    rewound = pruning.rewind(theta_k, mask)
    for r, k, m in zip(*(jax.tree_util.tree_leaves(t) for t in (rewound, theta_k, mask))):
        r, m = np.asarray(r), np.asarray(m)
        assert np.array_equal(r[m].view(np.uint32), k[m].view(np.uint32))
        assert np.all(r[~m] == 0)


# ----------------------------------------------------------------------- N:M

def test_n_m_keeps_the_n_largest_of_every_group_hand_computed():
    kernel = jnp.array([[0.1, 5.0], [-3.0, 0.0], [2.0, -1.0], [0.5, 0.2]])  # (in=4, out=2)
    keep = nm.n_m_leaf_mask(kernel, 2, 4)
    assert keep.tolist() == [[False, True], [True, False], [True, True], [False, False]]


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8), (1, 2)])
def test_every_group_of_m_holds_exactly_n(n, m):
    rng = np.random.default_rng(n * 10 + m)
    params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(16, 6)), jnp.float32), "bias": jnp.ones(6)},
              "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 8, 5)), jnp.float32)}}
    select = pruning.prunable(params)
    mask = nm.n_m_mask(params, select, n, m)
    assert sorted(nm.check_n_m_mask(mask, select, n, m)) == ["conv/kernel", "dense/kernel"]
    for path in (("dense", "kernel"), ("conv", "kernel")):
        k = np.asarray(mask[path[0]][path[1]])
        groups = np.moveaxis(k, -2, -1).reshape(-1, m)
        assert np.all(groups.sum(axis=1) == n)
    assert bool(jnp.all(mask["dense"]["bias"]))


def test_n_m_from_kmp_scores():
    params = mlp_params()
    select = pruning.prunable(params)
    flat0, spec = flatten.ravel_selected(params, select)
    window = jnp.stack([flat0 * (1 + 0.5 ** t) for t in range(8)])
    inputs = pruning.PruneInputs(params, select, snapshots=window, spec=spec)
    scores = pruning.scores_from_flat(pruning.method_flat_scores("kmp", inputs), spec, params)
    mask = nm.n_m_mask(scores, select, 2, 4)
    assert sorted(nm.check_n_m_mask(mask, select, 2, 4)) == ["fc1/kernel", "fc2/kernel"]


def test_bad_n_m_gets_one_line():
    params = {"conv": {"kernel": jnp.ones((3, 3, 3, 8))}}
    select = pruning.prunable(params)
    with pytest.raises(ValueError, match="N = 5 exceeds M = 4"):
        nm.n_m_mask(params, select, 5, 4)
    with pytest.raises(ValueError, match="N must be a positive integer"):
        nm.n_m_mask(params, select, 0, 4)
    with pytest.raises(ValueError, match="input dimension 3, not a multiple of M = 4"):
        nm.n_m_mask(params, select, 2, 4, indivisible="error")
    assert bool(jnp.all(nm.n_m_mask(params, select, 2, 4)["conv"]["kernel"]))  # left dense


# ----------------------------------------------------------------- SET/RigL

def test_rigl_drops_smallest_magnitude_and_grows_largest_gradient():
    params = {"w": {"kernel": jnp.array([[4.0, 0.0], [0.1, 0.0], [3.0, 0.0]])}}
    mask = {"w": {"kernel": jnp.array([[True, False], [True, False], [True, False]])}}
    grads = {"w": {"kernel": jnp.array([[0.0, 0.2], [9.0, -7.0], [0.0, 1.0]])}}
    select = pruning.prunable(params)
    new, grown = dynamic.drop_and_grow(params, mask, select, 0.34, dynamic.rigl_grow_scores(grads))
    # k = ⌊0.34·3⌋ = 1: drop |0.1| at (1, 0); grow the largest |g| among the rest: (1, 0) itself (9.0).
    assert new["w"]["kernel"].tolist() == mask["w"]["kernel"].tolist() and not bool(grown["w"]["kernel"].any())
    new, grown = dynamic.drop_and_grow(params, mask, select, 0.67, dynamic.rigl_grow_scores(grads))
    # k = 2: drop (1, 0) and (2, 0); grow (1, 0) [9.0] and (1, 1) [7.0].
    assert new["w"]["kernel"].tolist() == [[True, False], [True, True], [False, False]]
    assert grown["w"]["kernel"].tolist() == [[False, False], [False, True], [False, False]]


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_dynamic_sparse_training_keeps_sparsity_and_grows_at_zero(method):
    tx = optax.sgd(0.1, momentum=0.9)
    params = mlp_params()
    select = pruning.prunable(params)
    mask0 = dynamic.fixed_sparsity_mask(params, select, 0.8, jax.random.PRNGKey(1))
    state = train.create_train_state(params, tx, jax.random.PRNGKey(0), mask=mask0)
    step = train.make_train_step(MLP().apply, tx)
    fraction = dynamic.update_fraction(0.3, 12)
    sparsity0 = pruning.sparsity_of(state.mask, select)
    grew = 0
    for t, (x, y) in enumerate(batches(16), start=1):
        if t % 3 == 0:
            _, grads = jax.value_and_grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
                MLP().apply({"params": p}, x), y).mean())(state.params)
            scores = (dynamic.rigl_grow_scores(grads) if method == "rigl"
                      else dynamic.set_grow_scores(state.params, jax.random.PRNGKey(t)))
            mask, grown = dynamic.drop_and_grow(state.params, state.mask, select, float(fraction(t)), scores)
            state = train.replace_mask(state, mask, tx)
            for p, g in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(grown)):
                assert bool(jnp.all(jnp.where(g, p == 0, True)))  # grown weights start at 0
            for mom, g in zip(jax.tree_util.tree_leaves(state.opt_state.inner_state[0].trace),
                              jax.tree_util.tree_leaves(grown)):
                assert bool(jnp.all(jnp.where(g, mom == 0, True)))  # and without stale momentum
            grew += sum(int(g.sum()) for g in jax.tree_util.tree_leaves(grown))
        state, _ = step(state, x, y)
        assert pruning.sparsity_of(state.mask, select) == sparsity0
    assert grew > 0


def test_update_fraction_is_the_cosine_decay():
    f = dynamic.update_fraction(0.3, 100)
    for t in (0, 25, 50, 99, 100, 150):
        expected = 0.15 * (1 + np.cos(np.pi * min(t, 100) / 100))
        assert float(f(t)) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="alpha must be in"):
        dynamic.update_fraction(0.0, 10)
    with pytest.raises(ValueError, match="end_step must be"):
        dynamic.update_fraction(0.3, 0)


def test_replace_mask_resets_only_the_grown_moments():
    tx = optax.adam(1e-2)
    params = mlp_params()
    select = pruning.prunable(params)
    half = gradual.sparsity_mask("gmp", pruning.PruneInputs(params, select), 0.5)
    state = train.create_train_state(params, tx, jax.random.PRNGKey(0), mask=half)
    step = train.make_train_step(MLP().apply, tx)
    for x, y in batches(3):
        state, _ = step(state, x, y)
    full = train.state.full_mask(params)
    before = state.opt_state.inner_state[0].mu
    after = train.replace_mask(state, full, tx).opt_state.inner_state[0].mu
    for b, a, m in zip(*(jax.tree_util.tree_leaves(t) for t in (before, after, half))):
        assert np.array_equal(np.asarray(a)[np.asarray(m)], np.asarray(b)[np.asarray(m)])
        assert np.all(np.asarray(a)[~np.asarray(m)] == 0)


# -------------------------------------------------------------------- export

def test_export_round_trip_is_bit_exact_and_evaluates(tmp_path):
    params = mlp_params()
    select = pruning.prunable(params)
    mask = gradual.sparsity_mask("gmp", pruning.PruneInputs(params, select), 0.9)
    stats = {"extra": {"mean": jnp.arange(3.0)}}
    export.export_pruned(tmp_path / "sparse", params, mask, batch_stats=stats)
    report = json.loads((tmp_path / "sparse" / "sparsity.json").read_text())
    assert report["layers"]["fc1/kernel"]["kept"] == int(mask["fc1"]["kernel"].sum())
    tree = export.load_pruned(tmp_path / "sparse")
    expected = {"params": pruning.apply_mask(params, mask), "mask": mask, "batch_stats": stats}
    for a, b in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(expected)):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))
    x = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    assert np.array_equal(MLP().apply({"params": tree["params"]}, x),
                          MLP().apply({"params": expected["params"]}, x))
    sparse = export.to_bcoo(tree["params"], tree["mask"])
    assert sparse["fc1"]["kernel"].nse == report["layers"]["fc1/kernel"]["kept"]
    assert np.array_equal(sparse["fc1"]["kernel"].todense(), tree["params"]["fc1"]["kernel"])


def test_damaged_or_edited_exports_are_refused(tmp_path):
    params = mlp_params()
    mask = gradual.sparsity_mask("gmp", pruning.PruneInputs(params, pruning.prunable(params)), 0.5)
    out = export.export_pruned(tmp_path / "a", params, mask)
    with pytest.raises(ValueError, match="exists"):
        export.export_pruned(tmp_path / "a", params, mask)
    with pytest.raises(ValueError, match="not a kpjax pruned export"):
        export.load_pruned(tmp_path)
    report = json.loads((tmp_path / "a" / "sparsity.json").read_text())
    report["layers"]["fc1/kernel"]["kept"] += 1
    (tmp_path / "a" / "sparsity.json").write_text(json.dumps(report))
    with pytest.raises(ValueError, match="disagrees"):
        export.load_pruned(out)
    (tmp_path / "a" / "sparsity.json").write_text("{not json")
    with pytest.raises(ValueError, match="damaged"):
        export.load_pruned(out)
    with pytest.raises(ValueError, match="shape"):
        export.export_pruned(tmp_path / "b", params, {**mask, "fc2": {**mask["fc2"], "bias": jnp.ones(3, bool)}})
    assert not os.path.exists(tmp_path / "b")


def test_erk_densities_match_the_total_and_fill_small_tensors_first():
    shapes = [(3, 3, 1, 4), (4,), (3, 3, 4, 16), (256, 10)]
    sizes = [36, 4, 576, 2560]
    densities = dynamic.erk_densities(shapes, 0.9)
    kept = sum(d * n for d, n in zip(densities, sizes))
    assert kept == pytest.approx(0.1 * sum(sizes), rel=1e-9)
    assert densities[1] == 1.0  # a bias: Σd/Πd = 1, dense first
    # The rest follow ε·Σd/Πd: denser where a tensor has few weights per dimension.
    sparse = [i for i, d in enumerate(densities) if d < 1.0]
    ratios = {i: densities[i] / (sum(shapes[i]) / np.prod(shapes[i])) for i in sparse}
    assert np.allclose(list(ratios.values()), next(iter(ratios.values())))
    assert densities[0] > densities[3] > densities[2]  # Σd/Πd: 0.31, 0.10, 0.045
    params = {f"l{i}": {"kernel": jnp.ones(s)} for i, s in enumerate(shapes)}
    mask = dynamic.fixed_sparsity_mask(params, pruning.prunable(params), 0.9, jax.random.PRNGKey(0),
                                       distribution="erk")
    assert pruning.sparsity_of(mask, pruning.prunable(params)) == pytest.approx(0.9, abs=2e-3)
    with pytest.raises(ValueError, match="distribution must be"):
        dynamic.fixed_sparsity_mask(params, pruning.prunable(params), 0.9, jax.random.PRNGKey(0),
                                    distribution="ERK")
