"""Tests for kpjax.train.loop: the one training loop, its checkpoints and resume."""

import itertools

import jax
import numpy as np
import pytest

from kpjax import train
from kpjax.io import checkpoints
from kpjax.train import loop
from test_train import TinyConvBN, init


def _setup(seed=0):
    model = TinyConvBN()
    params, batch_stats = init(model)
    tx = train.make_optimizer(0.05, weight_decay=1e-3)
    rng = np.random.default_rng(seed)
    data = [(rng.normal(size=(4, 6, 6, 1)).astype(np.float32),
             rng.integers(0, 3, 4).astype(np.int32)) for _ in range(12)]

    def fresh():
        return train.create_train_state(params, tx, jax.random.PRNGKey(0), batch_stats=batch_stats)

    return train.make_train_step(model.apply, tx), fresh, (lambda start: itertools.islice(data, start, None))


def _leaves(state):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(jax.device_get(state))]


def test_resumed_run_equals_the_uninterrupted_one(tmp_path):
    step, fresh, batches_from = _setup()
    seen = []
    whole = loop.train_steps(step, fresh(), batches_from, 12,
                             on_step=lambda s, st, m: seen.append((s, float(m["loss"]))))
    assert [s for s, _ in seen] == list(range(1, 13))
    ckpt = loop.Checkpointing(str(tmp_path / "c"), every=5, metadata={"model": "tiny"}, max_to_keep=None)
    loop.train_steps(step, fresh(), batches_from, 7, checkpointing=ckpt)
    assert checkpoints.saved_steps(ckpt.directory) == [5, 7]
    # A new process would start from a fresh state: the loop restores step 7.
    resumed = loop.train_steps(step, fresh(), batches_from, 12, checkpointing=ckpt)
    assert checkpoints.saved_steps(ckpt.directory) == [5, 7, 10, 12]
    for a, b in zip(_leaves(whole), _leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    # Nothing left to do: the saved end state comes back without a step.
    again = loop.train_steps(lambda *a: pytest.fail("stepped"), fresh(), batches_from, 12,
                             checkpointing=ckpt)
    assert int(again.step) == 12


def test_restore_takes_the_newest_step_up_to_until(tmp_path):
    step, fresh, batches_from = _setup()
    ckpt = loop.Checkpointing(str(tmp_path / "c"), every=2, max_to_keep=None)
    loop.train_steps(step, fresh(), batches_from, 6, checkpointing=ckpt)
    assert int(loop.restore_latest(ckpt, fresh(), until=5).step) == 4
    assert int(loop.restore_latest(ckpt, fresh()).step) == 6


def test_another_runs_checkpoint_is_refused(tmp_path):
    step, fresh, batches_from = _setup()
    loop.train_steps(step, fresh(), batches_from, 3,
                     checkpointing=loop.Checkpointing(str(tmp_path), metadata={"seed": 0}))
    with pytest.raises(ValueError, match=r"holds a run with \{'seed': 0\}, not \{'seed': 1\}"):
        loop.train_steps(step, fresh(), batches_from, 6,
                         checkpointing=loop.Checkpointing(str(tmp_path), metadata={"seed": 1}))


def test_bad_requests_are_clear_errors():
    step, fresh, batches_from = _setup()
    with pytest.raises(ValueError, match="ran out before step 13 of 14"):
        loop.train_steps(step, fresh(), batches_from, 14)
    state = loop.train_steps(step, fresh(), batches_from, 2)
    with pytest.raises(ValueError, match="past until=1"):
        loop.train_steps(step, state, batches_from, 1)


def _damage(path):
    for f in sorted(path.rglob("*")):
        if f.is_file() and f.parent.name == "d" and "state" in f.parts:
            f.write_bytes(b"\0" * 16)  # the array data of the state


# orbax's background read tasks of the damaged step die with the event loop
# that ran them; the restore itself reports the damage (asserted below).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_damaged_latest_step_falls_back_to_the_newest_intact_one(tmp_path, caplog):
    step, fresh, batches_from = _setup()
    ckpt = loop.Checkpointing(str(tmp_path / "c"), every=4, metadata={"seed": 0}, max_to_keep=None)
    at8 = loop.train_steps(step, fresh(), batches_from, 8, checkpointing=ckpt)
    expected = _leaves(loop.train_steps(step, at8, batches_from, 12))
    _damage(tmp_path / "c" / "8")
    with caplog.at_level("WARNING", logger="kpjax.train.loop"):
        resumed = loop.train_steps(step, fresh(), batches_from, 12, checkpointing=ckpt)
    assert "checkpoint step 8" in caplog.text and "damaged" in caplog.text
    assert (tmp_path / "c" / "8.damaged").is_dir()
    assert checkpoints.saved_steps(ckpt.directory) == [4, 8, 12]  # 8 saved again on the way
    for a, b in zip(expected, _leaves(resumed)):
        np.testing.assert_array_equal(a, b)


def test_another_models_checkpoint_is_named_before_its_arrays_are_read(tmp_path):
    step, fresh, batches_from = _setup()
    loop.train_steps(step, fresh(), batches_from, 2,
                     checkpointing=loop.Checkpointing(str(tmp_path), metadata={"model": "tiny"}))
    other = train.create_train_state({"w": np.zeros(7, np.float32)}, train.make_optimizer(0.1),
                                     jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"holds a run with \{'model': 'tiny'\}, not \{'model': 'big'\}"):
        loop.restore_latest(loop.Checkpointing(str(tmp_path), metadata={"model": "big"}), other)
