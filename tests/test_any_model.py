"""Pruning a model the researcher brings: Linen (with or without a train flag,
dropout, BatchNorm) and NNX, through kpjax.flax_model and kpjax.train.any_model.

Every model is defined here and trained on synthetic data made here.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

from kpjax import flatten, koopman, pruning
from kpjax.flax_model import Model, from_linen, from_nnx, to_nnx, update_nnx
from kpjax.train.any_model import (cross_entropy_loss, init_carry, inputs_of, make_step, record,
                                  targets_of)

B, D, K, T = 16, 6, 3, 6


class MLP(nn.Module):
    """Two dense layers; its __call__ takes no train argument."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(K)(nn.relu(nn.Dense(8)(x)))


class DropBN(nn.Module):
    """Dense → BatchNorm → ReLU → Dropout → Dense, mode by a `train` flag."""

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Dense(8)(x)))
        return nn.Dense(K)(nn.Dropout(0.5, deterministic=not train)(x))


class NNXNet(nnx.Module):
    """Conv → BatchNorm → ReLU → Dropout → mean pool → Linear."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.head = nnx.Linear(4, K, rngs=rngs)

    def __call__(self, x):
        x = self.drop(nnx.relu(self.bn(self.conv(x))))
        return self.head(x.mean(axis=(1, 2)))


def _data(seed=0, shape=(D,)):
    # NumPy, not jax.random: the eager draws would each compile.
    gen = np.random.default_rng(seed)
    x = gen.normal(size=(B, *shape)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(gen.integers(0, K, size=B), jnp.int32)


def _linen(module, x, **kwargs):
    return from_linen(module, module.init(jax.random.key(1), x, **kwargs))


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _ravel(params):
    return np.asarray(flatten.ravel_selected(params, pruning.prunable(params))[0])


def _check_recording(rec, params0):
    """Θ is (T+1)×N over the prunable params, from θ₀ to the returned θ."""
    n = flatten.count_params(params0, pruning.prunable(params0))
    assert rec.theta.shape == (T + 1, n) and rec.theta.dtype == jnp.float32
    assert rec.spec.size == n
    np.testing.assert_array_equal(np.asarray(rec.theta[0]), _ravel(params0))
    np.testing.assert_array_equal(np.asarray(rec.theta[-1]), _ravel(rec.params))
    assert not np.array_equal(np.asarray(rec.theta[0]), np.asarray(rec.theta[-1]))


def _masks(rec, compression=2.0):
    """KMP and GMP masks of the recording, each keeping round(f·N) weights."""
    select = pruning.prunable(rec.params)
    fit = koopman.fit_trajectory(rec.theta)
    inputs = pruning.PruneInputs(rec.params, select, snapshots=rec.theta, spec=rec.spec, fit=fit)
    total, n = flatten.count_params(rec.params), rec.spec.size
    expected = int(round(pruning.keep_fraction(compression, total, n) * n))
    masks = {}
    for method in ("kmp", "gmp"):
        mask = pruning.prune(method, inputs, compression)
        kept = int(flatten.ravel_selected(mask, select)[0].sum())
        assert kept == expected < n, method
        masks[method] = mask
    return masks


def _check_finetuned(before, after, mask):
    """Pruned weights exactly zero (they were not before), kept ones moved."""
    pruned_were_nonzero = changed = kept = 0
    for b, a, m in zip(_leaves(before), _leaves(after), _leaves(mask)):
        b, a, m = np.broadcast_arrays(b, a, m)
        assert np.all(a[~m] == 0) and not np.any(np.signbit(a[~m]))
        pruned_were_nonzero += int(np.count_nonzero(b[~m]))
        changed += int(np.sum(a[m] != b[m]))
        kept += int(m.sum())
    assert pruned_were_nonzero > 0
    assert changed > 0.5 * kept


def _finetune_functional(model, rec, mask, batches, rng):
    step = make_step(model.apply, optax.adam(1e-2), mask=mask)
    tuned = Model(model.apply, rec.params, rec.state)
    carry = init_carry(tuned, optax.adam(1e-2), rng, mask=mask)
    for batch in batches:
        carry, _ = step(carry, batch)
    _check_finetuned(rec.params, carry.params, mask)


# ---------------------------------------------------------------------------
# (a) Linen without a train argument.


def test_linen_without_train_argument_records_prunes_and_finetunes():
    x, y = _data()
    model = _linen(MLP(), x)
    assert model.state == {} and set(model.params) == {"Dense_0", "Dense_1"}
    out, state = model.apply(model.params, model.state, x, train=True, rng=None)
    assert out.shape == (B, K) and state == {}
    rec = record(model, optax.sgd(0.1), [(x, y)] * T, T, rng=jax.random.key(2))
    _check_recording(rec, model.params)
    masks = _masks(rec)
    _finetune_functional(model, rec, masks["gmp"], [(x, y)] * 3, jax.random.key(3))


# ---------------------------------------------------------------------------
# (b) Linen with dropout and BatchNorm behind a train flag.


def test_linen_dropout_and_batchnorm_thread_rngs_and_state():
    x, y = _data()
    model = _linen(DropBN(), x, train=False)
    assert set(model.state) == {"batch_stats"}
    apply = functools.partial(jax.jit(model.apply, static_argnames="train"),
                              model.params, model.state, x)
    out1, state1 = apply(train=True, rng=jax.random.key(10))
    out1b, _ = apply(train=True, rng=jax.random.key(10))
    out2, _ = apply(train=True, rng=jax.random.key(11))
    np.testing.assert_array_equal(out1, out1b)
    assert not np.allclose(out1, out2)
    eval1, eval_state = apply(train=False, rng=jax.random.key(10))
    eval2, _ = apply(train=False, rng=None)
    np.testing.assert_array_equal(eval1, eval2)
    for before, after in zip(_leaves(model.state), _leaves(eval_state)):
        np.testing.assert_array_equal(before, after)
    assert all(not np.array_equal(b, a) for b, a in zip(_leaves(model.state), _leaves(state1)))

    rec = record(model, optax.sgd(0.1), [(x, y)] * T, T, rng=jax.random.key(2))
    _check_recording(rec, model.params)
    assert not np.array_equal(_leaves(rec.state)[0], _leaves(model.state)[0])
    masks = _masks(rec)
    _finetune_functional(model, rec, masks["kmp"], [(x, y)] * 3, jax.random.key(3))


def test_a_linen_model_that_needs_an_rng_and_gets_none_fails_clearly():
    x, _ = _data()
    model = _linen(DropBN(), x, train=False)
    with pytest.raises(ValueError, match=r"DropBN needs an rng .*expected apply\(\.\.\., rng="):
        model.apply(model.params, model.state, x, train=True, rng=None)


class _Flag(nn.Module):
    """Returns 1 where it was called in training mode, 0 otherwise."""

    keyword: str

    @nn.compact
    def __call__(self, x, **kwargs):
        self.param("w", nn.initializers.ones, (1,))
        flag = kwargs[self.keyword]
        return jnp.full((1,), (not flag) if self.keyword == "deterministic" else flag, jnp.float32)


class _Training(nn.Module):
    @nn.compact
    def __call__(self, x, training: bool = False):
        return self.param("w", nn.initializers.ones, (1,)) * training


class _Deterministic(nn.Module):
    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        return self.param("w", nn.initializers.ones, (1,)) * (not deterministic)


@pytest.mark.parametrize("module", [_Training(), _Deterministic()], ids=["training", "deterministic"])
def test_train_argument_auto_finds_training_and_deterministic(module):
    model = _linen(module, jnp.ones(1))
    for train in (True, False):
        out, _ = model.apply(model.params, model.state, jnp.ones(1), train=train, rng=None)
        assert float(out[0]) == float(train)


def test_an_explicit_train_argument_goes_through_kwargs_and_a_wrong_one_is_refused():
    module = _Flag("mode")
    variables = module.init(jax.random.key(0), jnp.ones(1), mode=False)
    model = from_linen(module, variables, train_argument="mode")
    assert float(model.apply(model.params, {}, jnp.ones(1), train=True, rng=None)[0][0]) == 1.0
    with pytest.raises(ValueError, match=r"train_argument 'mode' is not a keyword parameter of "
                                         r"MLP.__call__ \(its parameters: x\)"):
        from_linen(MLP(), MLP().init(jax.random.key(0), jnp.ones(2)), train_argument="mode")


# ---------------------------------------------------------------------------
# (c) NNX, continued with nnx.Optimizer.


def _nnx_data():
    return _data(shape=(6, 6, 1))


def test_nnx_apply_modes_and_state():
    x, _ = _nnx_data()
    module = NNXNet(nnx.Rngs(0))
    model = from_nnx(module)
    assert set(model.params) == {"conv", "bn", "head"}
    assert set(model.params["conv"]) == {"kernel", "bias"} and isinstance(model.params, dict)
    assert set(model.state) == {"bn", "drop"}
    kernel0 = np.asarray(module.conv.kernel[...])
    apply = jax.jit(model.apply, static_argnames="train")
    eval1, eval_state = apply(model.params, model.state, x, train=False, rng=None)
    eval2, _ = apply(model.params, model.state, x, train=False, rng=None)
    np.testing.assert_array_equal(eval1, eval2)
    for before, after in zip(_leaves(model.state["bn"]), _leaves(eval_state["bn"])):
        np.testing.assert_array_equal(before, after)
    train1, state1 = apply(model.params, model.state, x, train=True, rng=None)
    train2, _ = apply(model.params, state1, x, train=True, rng=None)
    assert not np.allclose(train1, train2)  # the dropout stream advanced in the state
    assert int(state1["drop"]["rngs"]["count"]) == int(model.state["drop"]["rngs"]["count"]) + 1
    assert not np.array_equal(state1["bn"]["mean"], model.state["bn"]["mean"])
    # apply works on copies: the live module is untouched.
    np.testing.assert_array_equal(module.conv.kernel[...], kernel0)
    rebuilt = to_nnx(model, state=state1)
    np.testing.assert_array_equal(rebuilt.bn.mean[...], state1["bn"]["mean"])


def test_nnx_records_prunes_and_finetunes_with_nnx_optimizer():
    x, y = _nnx_data()
    module = NNXNet(nnx.Rngs(0))
    model = from_nnx(module)
    rec = record(model, optax.sgd(0.1), [(x, y)] * T, T, rng=jax.random.key(2))
    _check_recording(rec, model.params)
    masks = _masks(rec)
    update_nnx(module, rec.params, rec.state)
    np.testing.assert_array_equal(module.conv.kernel[...], rec.params["conv"]["kernel"])
    np.testing.assert_array_equal(module.bn.mean[...], rec.state["bn"]["mean"])

    mask = masks["kmp"]
    optimizer = nnx.Optimizer(module, pruning.freeze_pruned(optax.adam(1e-2), mask), wrt=nnx.Param)
    module.train()

    @nnx.jit
    def train_step(module, optimizer, x, y):
        loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
        optimizer.update(module, nnx.grad(loss)(module))

    for _ in range(3):
        train_step(module, optimizer, x, y)
    _check_finetuned(rec.params, from_nnx(module).params, mask)


def test_prunable_reads_an_nnx_state_as_the_plain_dict_of_its_params():
    state = nnx.state(NNXNet(nnx.Rngs(0)), nnx.Param)
    plain = nnx.to_pure_dict(state)
    assert pruning.prunable(plain)["conv"] == {"kernel": True, "bias": True}
    assert jax.tree_util.tree_leaves(pruning.prunable(state)) == jax.tree_util.tree_leaves(
        pruning.prunable(plain))
    assert flatten.flat_spec(state, pruning.prunable(state)).paths == flatten.flat_spec(
        plain, pruning.prunable(plain)).paths


def test_freeze_pruned_refuses_a_mask_of_other_paths_under_nnx_optimizer():
    module = NNXNet(nnx.Rngs(0))
    mask = jax.tree_util.tree_map(lambda p: jnp.ones(p.shape, bool), from_nnx(module).params)
    del mask["head"]
    with pytest.raises(ValueError, match=r"mask must have the params' structure, or the same leaf "
                                         r"paths; params paths \[.*'head/kernel'.*mask paths"):
        nnx.Optimizer(module, pruning.freeze_pruned(optax.adam(1e-2), mask), wrt=nnx.Param)


# ---------------------------------------------------------------------------
# Losses, batches, the caller's arrays, the spec.


def _first_step_loss(model, loss_fn, batch):
    carry = init_carry(model, optax.sgd(0.01), jax.random.key(5))
    return float(make_step(model.apply, optax.sgd(0.01), loss_fn)(carry, batch)[1]["loss"])


def test_a_label_smoothing_loss_is_the_one_minimized():
    x, y = _data()
    model = _linen(MLP(), x)

    def smoothed(outputs, batch):
        labels = optax.smooth_labels(jax.nn.one_hot(targets_of(batch), K), 0.2)
        return optax.softmax_cross_entropy(outputs, labels).mean()

    logits = MLP().apply({"params": model.params}, x)
    by_hand = float(smoothed(logits, (x, y)))
    assert by_hand != pytest.approx(float(cross_entropy_loss(logits, (x, y))), rel=1e-3)
    assert _first_step_loss(model, smoothed, (x, y)) == pytest.approx(by_hand, rel=1e-6)
    rec = record(model, optax.sgd(0.1), [(x, y)] * T, T, rng=jax.random.key(2), loss_fn=smoothed)
    assert float(smoothed(MLP().apply({"params": rec.params}, x), (x, y))) < by_hand


def test_an_mse_regression_loss_trains_a_regressor():
    x, _ = _data()
    targets = x @ jnp.arange(1.0, D + 1.0)[:, None]  # (B, 1) real targets
    module = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(1)])
    model = _linen(module, x)

    def mse(outputs, batch):
        return jnp.mean((outputs - batch["y"]) ** 2)

    batch = {"x": x, "y": targets}
    by_hand = float(mse(module.apply({"params": model.params}, x), batch))
    assert _first_step_loss(model, mse, batch) == pytest.approx(by_hand, rel=1e-6)
    rec = record(model, optax.adam(1e-2), [batch] * T, T, rng=jax.random.key(2), loss_fn=mse)
    assert float(mse(module.apply({"params": rec.params}, x), batch)) < by_hand
    assert rec.theta.shape == (T + 1, flatten.count_params(model.params))


def test_dict_tuple_and_custom_batches_give_identical_recordings():
    x, y = _data()
    model = _linen(DropBN(), x, train=False)
    run = functools.partial(record, model, optax.sgd(0.1), num_steps=T, rng=jax.random.key(2))
    base = run(batches=[(x, y)] * T).theta
    z = jnp.zeros(B)  # a third element is ignored
    others = [
        run(batches=[[x, y, z]] * T).theta,
        run(batches=[{"image": x, "label": y}] * T).theta,
        run(batches=[{"inputs": x, "targets": y, "extra": z}] * T).theta,
        run(batches=[{"pixels": x, "cls": y}] * T, inputs="pixels",
            loss_fn=functools.partial(cross_entropy_loss, targets=("cls",))).theta,
        run(batches=[{"a": {"b": x}, "c": y}] * T, inputs=lambda b: b["a"]["b"],
            loss_fn=functools.partial(cross_entropy_loss, targets=lambda b: b["c"])).theta,
    ]
    for theta in others:
        np.testing.assert_array_equal(np.asarray(theta), np.asarray(base))
    different = run(batches=[(x, (y + 1) % K)] * T).theta
    assert not np.array_equal(np.asarray(different), np.asarray(base))


def test_inputs_of_and_targets_of_defaults():
    assert inputs_of((1, 2)) == 1 and targets_of([1, 2, 3]) == 2
    assert inputs_of({"x": 1, "image": 2}) == 2 and targets_of({"y": 3, "labels": 4}) == 4
    assert inputs_of({"data": 5}, "data") == 5 and targets_of({"t": 6}, lambda b: b["t"]) == 6


def test_record_does_not_consume_the_callers_arrays():
    x, y = _data()
    model = _linen(DropBN(), x, train=False)
    copies = [np.array(a) for a in _leaves((model.params, model.state))]
    opt_state = optax.adam(1e-2).init(model.params)
    rec = record(model, optax.adam(1e-2), [(x, y)] * T, T, rng=jax.random.key(2), opt_state=opt_state)
    for mine, kept in zip(jax.tree_util.tree_leaves((model.params, model.state)), copies):
        assert not mine.is_deleted()
        np.testing.assert_array_equal(np.asarray(mine), kept)
    assert int(opt_state[0].count) == 0 and int(rec.opt_state[0].count) == T
    # The check means something: the jitted step does donate its carry.
    carry = init_carry(model, optax.sgd(0.1), jax.random.key(0))
    make_step(model.apply, optax.sgd(0.1))(carry, (x, y))
    assert jax.tree_util.tree_leaves(carry.params)[0].is_deleted()


def test_the_spec_names_thetas_columns():
    x, y = _data()
    model = _linen(DropBN(), x, train=False)
    rec = record(model, optax.sgd(0.1), [(x, y)] * T, T, rng=jax.random.key(2))
    assert rec.spec.paths == (("Dense_0", "bias"), ("Dense_0", "kernel"),
                              ("Dense_1", "bias"), ("Dense_1", "kernel"))
    back = flatten.unravel_selected(rec.theta[-1], rec.spec, rec.params)
    for a, b in zip(_leaves(back), _leaves(rec.params)):
        np.testing.assert_array_equal(a, b)
    kernels = record(model, optax.sgd(0.1), [(x, y)] * T, T, rng=jax.random.key(2),
                     select=lambda path, leaf: path[-1] == "kernel")
    assert kernels.spec.paths == (("Dense_0", "kernel"), ("Dense_1", "kernel"))
    assert kernels.theta.shape == (T + 1, D * 8 + 8 * K)
    np.testing.assert_array_equal(np.asarray(kernels.theta[:, :D * 8]),
                                  np.asarray(rec.theta[:, 8:8 + D * 8]))


# ---------------------------------------------------------------------------
# Bad models, batches and losses: one ValueError naming what was expected.


def test_bad_models_are_refused():
    x, _ = _data()
    with pytest.raises(ValueError, match=r"from_linen: expected a flax.linen.Module, got NNXNet"):
        from_linen(NNXNet(nnx.Rngs(0)), {"params": {}})
    with pytest.raises(ValueError, match=r"from_linen: variables must contain 'params' .*\['batch_stats'\]"):
        from_linen(DropBN(), {"batch_stats": {}})
    with pytest.raises(ValueError, match=r"from_linen: variables must contain 'params' .*got list"):
        from_linen(MLP(), [1])
    with pytest.raises(ValueError, match=r"from_nnx: expected an nnx.Module, got MLP"):
        from_nnx(MLP())
    with pytest.raises(ValueError, match=r"from_nnx: expected a module with nnx.Param variables; "
                                         r"Dropout has none"):
        from_nnx(nnx.Dropout(0.5))
    with pytest.raises(ValueError, match=r"to_nnx: expected a Model from from_nnx"):
        to_nnx(_linen(MLP(), x))
    module = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"update_nnx: expected params with the module's leaf paths "
                                         r"and shapes; missing: bias, kernel; unexpected: kernal; other shapes: -$"):
        update_nnx(module, {"kernal": jnp.zeros((2, 3))})
    with pytest.raises(ValueError, match=r"missing: -; unexpected: -; other shapes: kernel \(5, 5\) vs \(2, 3\)"):
        update_nnx(module, {"bias": jnp.zeros(3), "kernel": jnp.zeros((5, 5))})
    with pytest.raises(ValueError, match=r"update_nnx: expected an nnx.Module, got dict"):
        update_nnx({}, {})


@pytest.mark.parametrize("batch, got", [
    ("array", r"an array of shape \(16, 6\)"),
    ("dict", r"a dict with keys \['feats', 'label'\]"),
    ("short", r"a tuple of length 1"),
], ids=["array", "dict-without-input-key", "short-tuple"])
def test_a_batch_of_no_known_form_is_refused(batch, got):
    x, y = _data()
    batch = {"array": x, "dict": {"feats": x, "label": y}, "short": (x,)}[batch]
    model = _linen(MLP(), x)
    expected = r"expected a tuple/list batch with element \d or a dict batch with one of the keys"
    with pytest.raises(ValueError, match=rf"_of: {expected} \[.*\]; got {got}"):
        record(model, optax.sgd(0.1), [batch] * 2, 2, rng=jax.random.key(0))


def test_a_loss_that_is_not_a_scalar_is_refused():
    x, y = _data()
    model = _linen(MLP(), x)
    per_example = lambda out, batch: optax.softmax_cross_entropy_with_integer_labels(
        out, targets_of(batch))
    with pytest.raises(ValueError, match=r"loss_fn\(outputs, batch\) must return a scalar, the mean "
                                         r"over the batch; got .* of shape \(16,\)"):
        record(model, optax.sgd(0.1), [(x, y)] * 2, 2, rng=jax.random.key(0), loss_fn=per_example)


def test_too_few_batches_are_refused():
    x, y = _data()
    with pytest.raises(ValueError, match=r"record: the batches ran out after 0 of 3 steps"):
        record(_linen(MLP(), x), optax.sgd(0.1), [], 3, rng=jax.random.key(0))
    with pytest.raises(ValueError, match=r"record: num_steps must be >= 1, got 0"):
        record(_linen(MLP(), x), optax.sgd(0.1), [(x, y)], 0, rng=jax.random.key(0))
