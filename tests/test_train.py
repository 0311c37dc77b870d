"""Tests for kpjax.train: masked steps, optimizer semantics, eval."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kpjax import train


class TinyMLP(nn.Module):
    """No BatchNorm: variables = {'params'}."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(16, name="fc1")(x))
        return nn.Dense(3, name="fc2")(x)


class TinyConvBN(nn.Module):
    """With BatchNorm: variables = {'params', 'batch_stats'}."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3), use_bias=False, name="conv1")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                         epsilon=1e-5, name="bn1")(x)
        x = nn.relu(x).mean(axis=(1, 2))
        return nn.Dense(3, name="linear")(x)


def is_weight(path, leaf):
    return path[-1] in ("kernel", "bias") and not path[0].startswith("bn")


def init(model, seed=0):
    x = jnp.zeros((2, 6, 6, 1), jnp.float32)
    variables = model.init(jax.random.PRNGKey(seed), x, train=False)
    return variables["params"], variables.get("batch_stats")


def batches(num, batch_size=8, seed=1):
    """Deterministic synthetic batches, batch t a function of t only."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num):
        images = rng.normal(size=(batch_size, 6, 6, 1)).astype(np.float32)
        labels = rng.integers(0, 3, size=batch_size).astype(np.int32)
        out.append((images, labels))
    return out


def random_mask(params, seed=0, keep=0.5):
    """Random keep-mask on conv/dense weights; BatchNorm leaves all True."""
    rng = np.random.default_rng(seed)

    def leaf_mask(path, p):
        if not is_weight(tuple(k.key for k in path), p):
            return np.ones(np.shape(p), bool)
        return rng.random(np.shape(p)) < keep

    return jax.tree_util.tree_map_with_path(leaf_mask, params)


def tree_equal(a, b):
    return all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), a, b)))


@pytest.mark.parametrize("model", [TinyMLP(), TinyConvBN()],
                         ids=["mlp", "conv_bn"])
def test_pruned_weights_stay_exactly_zero(model):
    params, batch_stats = init(model)
    mask = random_mask(params)
    tx = train.make_optimizer(0.2, momentum=0.9, nesterov=True,
                              weight_decay=1e-2)
    state = train.create_train_state(params, tx, jax.random.PRNGKey(0),
                                     batch_stats=batch_stats, mask=mask)
    step = train.make_train_step(model.apply, tx)
    for images, labels in batches(40):
        state, metrics = step(state, images, labels)
    assert int(state.step) == 40
    assert np.isfinite(float(metrics["loss"]))
    for p, m, p0 in zip(jax.tree_util.tree_leaves(state.params),
                        jax.tree_util.tree_leaves(mask),
                        jax.tree_util.tree_leaves(params)):
        p = np.asarray(p)
        assert np.all(p[~m] == 0) and not np.any(np.signbit(p[~m]))
        assert np.mean(p[m] != np.asarray(p0)[m]) > 0.5  # kept ones train
    momentum = [s for s in jax.tree_util.tree_leaves(
        state.opt_state, is_leaf=lambda s: isinstance(s, optax.TraceState))
        if isinstance(s, optax.TraceState)]
    assert len(momentum) == 1
    for buf, m in zip(jax.tree_util.tree_leaves(momentum[0].trace),
                      jax.tree_util.tree_leaves(mask)):
        assert np.all(np.asarray(buf)[~m] == 0)


def test_pruned_weight_stays_zero_when_its_gradient_is_nan():
    def apply_fn(variables, x, train=False):
        w = variables["params"]["w"]
        # d/dw of w·sqrt(w) at w = 0 is nan-producing under jax (0·inf).
        return (x * w * jnp.sqrt(w))[:, :3] + jnp.zeros((x.shape[0], 3))

    params = {"w": jnp.array([0.0, 1.0, 1.0])}
    mask = {"w": np.array([False, True, True])}
    tx = train.make_optimizer(0.1)
    state = train.create_train_state(params, tx, jax.random.PRNGKey(0),
                                     mask=mask)
    step = train.make_train_step(apply_fn, tx)
    x = np.ones((4, 3), np.float32)
    state, _ = step(state, x, np.zeros(4, np.int32))
    assert float(state.params["w"][0]) == 0.0
    assert np.all(np.isfinite(np.asarray(state.params["w"])))


def test_optimizer_matches_pytorch_sgd_formulas():
    """torch.optim.SGD: g += wd·θ; b = μb + g; θ -= η(g + μb) (Nesterov)."""
    lr, mu, wd = 0.1, 0.9, 0.01
    h = np.array([1.0, 3.0, 0.5])
    theta0 = np.array([1.0, -2.0, 0.5])
    grad = lambda th: h * th
    for nesterov in (True, False):
        tx = train.make_optimizer(lr, momentum=mu, nesterov=nesterov,
                                  weight_decay=wd)
        theta = jnp.asarray(theta0, jnp.float32)
        opt_state = tx.init(theta)
        ref, buf = theta0.copy(), np.zeros(3)
        for t in range(5):
            g = grad(ref) + wd * ref
            buf = mu * buf + g if t else g
            ref = ref - lr * (g + mu * buf if nesterov else buf)
            updates, opt_state = tx.update(grad(theta), opt_state, theta)
            theta = optax.apply_updates(theta, updates)
        np.testing.assert_allclose(np.asarray(theta), ref, rtol=1e-5)


def test_lr_schedule_decays_at_boundaries_like_multisteplr():
    sched = train.make_lr_schedule(0.1, [10, 15], decay=0.1)
    values = [float(sched(t)) for t in (0, 9, 10, 14, 15, 100)]
    np.testing.assert_allclose(values, [0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3],
                               rtol=1e-6)
    tx = train.make_optimizer(sched, momentum=0.0, nesterov=False)
    state = tx.init(jnp.zeros(()))
    steps = []
    for _ in range(12):
        update, state = tx.update(jnp.ones(()), state)
        steps.append(-float(update))
    np.testing.assert_allclose(steps, [0.1] * 10 + [0.01] * 2, rtol=1e-6)


@pytest.mark.parametrize("kwargs", [
    dict(learning_rate=0.0), dict(momentum=-1.0),
    dict(momentum=0.0, nesterov=True), dict(weight_decay=-1e-4)])
def test_make_optimizer_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        train.make_optimizer(**kwargs)


def test_create_train_state_rejects_mismatched_mask():
    params, _ = init(TinyMLP())
    with pytest.raises(ValueError, match="tree structure"):
        train.create_train_state(params, train.make_optimizer(),
                                 jax.random.PRNGKey(0), mask={"fc1": True})


def test_batch_stats_updated_in_training_only():
    model = TinyConvBN()
    params, batch_stats = init(model)
    tx = train.make_optimizer(0.01)
    state = train.create_train_state(params, tx, jax.random.PRNGKey(0),
                                     batch_stats=batch_stats)
    step = train.make_train_step(model.apply, tx)
    (images, labels), = batches(1)
    state, _ = step(state, images, labels)
    mean = np.asarray(state.batch_stats["bn1"]["mean"])
    assert not np.allclose(mean, 0.0)
    # Inference mode uses the running statistics: the logits follow them.
    eval_step = train.make_eval_step(model.apply)
    a = eval_step(state.params, state.batch_stats, images, labels)
    b = eval_step(state.params, batch_stats, images, labels)
    assert float(a["loss"]) != float(b["loss"])


def test_augment_and_normalize_run_inside_step_with_fresh_rng():
    seen = []

    def augment(rng, images):
        jax.debug.callback(lambda k: seen.append(np.asarray(k)), rng)
        return images

    model = TinyMLP()
    params, _ = init(model)
    tx = train.make_optimizer(0.01)
    step = train.make_train_step(model.apply, tx, augment_fn=augment,
                                 normalize_fn=lambda x: x / 2.0)
    state = train.create_train_state(params, tx, jax.random.PRNGKey(3))
    for images, labels in batches(3):
        state, _ = step(state, images, labels)
    jax.effects_barrier()
    assert len(seen) == 3
    assert len({k.tobytes() for k in seen}) == 3


def test_same_seed_same_numbers():
    model = TinyConvBN()
    finals = []
    for _ in range(2):
        params, batch_stats = init(model)
        tx = train.make_optimizer(0.1, weight_decay=1e-4)
        state = train.create_train_state(params, tx, jax.random.PRNGKey(0),
                                         batch_stats=batch_stats)
        step = train.make_train_step(model.apply, tx)
        for images, labels in batches(5):
            state, _ = step(state, images, labels)
        finals.append(jax.device_get(state))
    assert tree_equal(finals[0], finals[1])


def test_evaluate_weights_by_examples_with_uneven_last_batch():
    def apply_fn(variables, x, train=False):  # the images are the logits
        return x

    eval_step = train.make_eval_step(apply_fn)
    logits = np.array([
        [5, 4, 3, 2, 1, 0],   # label 0: top1
        [5, 4, 3, 2, 1, 0],   # label 1: top5 only
        [5, 4, 3, 2, 1, 0],   # label 5: neither
        [0, 0, 9, 0, 0, 0],   # label 2: top1
        [5, 4, 3, 2, 1, 0],   # label 4: top5 only  (last batch of 1)
    ], np.float32)
    labels = np.array([0, 1, 5, 2, 4], np.int32)
    state = train.TrainState(step=0, params={}, batch_stats={}, opt_state=(),
                             mask={}, rng=None)
    batch_list = [(logits[:4], labels[:4]), (logits[4:], labels[4:])]
    result = train.evaluate(eval_step, state, batch_list)
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected_loss = -log_softmax[np.arange(5), labels].mean()
    assert result["n"] == 5
    np.testing.assert_allclose(result["top1"], 2 / 5)  # batch mean: 0.25
    np.testing.assert_allclose(result["top5"], 4 / 5)  # batch mean: 0.875
    np.testing.assert_allclose(result["loss"], expected_loss, rtol=1e-6)
    with pytest.raises(ValueError, match="empty"):
        train.evaluate(eval_step, state, [])


def test_loss_and_grads_matches_softmax_regression_formula():
    def apply_fn(variables, x, train=False):
        return x @ variables["params"]["w"]

    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4)).astype(np.float32)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 2, 1, 0], np.int32)
    loss, grads = train.loss_and_grads(apply_fn, {"w": w}, {}, x, y)
    z = x @ w
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    onehot = np.eye(3)[y]
    np.testing.assert_allclose(float(loss),
                               -np.log(p[np.arange(6), y]).mean(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grads["w"]),
                               x.T @ (p - onehot) / 6, rtol=1e-4, atol=1e-6)


def test_donating_steps_leave_the_callers_arrays_alive():
    model = TinyConvBN()
    params, batch_stats = init(model)
    mask = jax.tree_util.tree_map(lambda p: jnp.ones(p.shape, bool), params)
    rng = jax.random.PRNGKey(0)
    tx = train.make_optimizer(0.05)
    state = train.create_train_state(params, tx, rng, batch_stats=batch_stats,
                                     mask=mask)
    step = train.make_train_step(model.apply, tx)
    state, _ = step(state, *batches(1)[0])
    for tree in (params, batch_stats, mask, rng):
        assert not any(x.is_deleted() for x in jax.tree_util.tree_leaves(tree))
