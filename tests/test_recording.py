"""Tests for kpjax.train.recording: Θ recorded in RAM and into a trajectory store."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kpjax import train
from kpjax.train import recording
from kpjax.io import trajectory_store as ts
from kpjax.flatten import ravel_selected
from test_train import TinyConvBN, TinyMLP, batches, init, is_weight, random_mask, tree_equal


@pytest.mark.parametrize("model", [TinyMLP(), TinyConvBN()],
                         ids=["mlp", "conv_bn"])
def test_recorder_stores_params_after_every_step(model):
    params, batch_stats = init(model)
    mask = random_mask(params, seed=2, keep=0.7)
    tx = train.make_optimizer(0.05, weight_decay=1e-3)
    data = batches(6)

    def fresh_state():
        return train.create_train_state(params, tx, jax.random.PRNGKey(0),
                                        batch_stats=batch_stats, mask=mask)

    step = train.make_train_step(model.apply, tx)
    state = fresh_state()
    expected = [np.asarray(ravel_selected(state.params, is_weight)[0])]
    for images, labels in data:
        state, _ = step(state, images, labels)
        expected.append(np.asarray(ravel_selected(state.params, is_weight)[0]))
    manual_final = jax.device_get(state.params)

    recorder = recording.make_recording_train_step(
        train.make_train_step(model.apply, tx, jit=False), is_weight)
    state, snapshots = recording.record_trajectory(recorder, fresh_state(), data,
                                               len(data), is_weight)
    assert snapshots.shape == (7, expected[0].size)
    assert snapshots.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(snapshots), np.stack(expected))
    assert tree_equal(jax.device_get(state.params), manual_final)


def test_record_trajectory_errors_when_batches_run_out():
    model = TinyMLP()
    params, _ = init(model)
    tx = train.make_optimizer(0.05)
    recorder = recording.make_recording_train_step(
        train.make_train_step(model.apply, tx), is_weight)
    state = train.create_train_state(params, tx, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="ran out after 2 of 5"):
        recording.record_trajectory(recorder, state, batches(2), 5, is_weight)


def test_recording_step_updates_the_donated_buffer_in_place():
    model = TinyMLP()
    params, _ = init(model)
    tx = train.make_optimizer(0.05)
    recorder = recording.make_recording_train_step(
        train.make_train_step(model.apply, tx, jit=False), is_weight)
    state = train.create_train_state(params, tx, jax.random.PRNGKey(0))
    n = ravel_selected(params, is_weight)[0].size
    buffer = jnp.full((3, n), -1.0, jnp.float32)
    (images, labels), = batches(1)
    state, new_buffer, _ = recorder(state, images, labels, buffer,
                                     jnp.int32(2))
    assert buffer.is_deleted()  # donated: no copy of the (T+1)×N buffer
    new_buffer = np.asarray(new_buffer)
    np.testing.assert_array_equal(new_buffer[:2], -1.0)
    np.testing.assert_array_equal(
        new_buffer[2], np.asarray(ravel_selected(state.params, is_weight)[0]))


def test_the_snapshot_buffer_is_built_without_a_second_copy():
    flat0 = jnp.arange(1000, dtype=jnp.float32)
    rows = 50
    buffer = np.asarray(recording.first_snapshots(flat0, rows))
    np.testing.assert_array_equal(buffer[0], np.asarray(flat0))
    np.testing.assert_array_equal(buffer[1:], 0.0)
    # Made by one computation: no rows×N argument or temporary beside the
    # output (a zero buffer passed in and given its row 0 would be one).
    mem = recording.first_snapshots.lower(flat0, rows).compile().memory_analysis()
    size = rows * flat0.size * 4
    assert mem.output_size_in_bytes == size
    assert mem.argument_size_in_bytes + mem.temp_size_in_bytes < size / 10


@pytest.mark.parametrize("rows_per_flush", [3, 100])
def test_recording_to_store_equals_in_memory_recording(tmp_path, rows_per_flush):
    model = TinyMLP()
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 6)))["params"]
    tx = train.make_optimizer(0.05)
    rng = np.random.default_rng(1)
    data = [
        (rng.normal(size=(8, 6)).astype(np.float32), rng.integers(0, 3, 8).astype(np.int32))
        for _ in range(10)
    ]
    select = lambda path, leaf: True
    recorder = recording.make_recording_train_step(train.make_train_step(model.apply, tx, jit=False), select)

    def fresh():
        return train.create_train_state(params, tx, jax.random.PRNGKey(0))

    _, expected = recording.record_trajectory(recorder, fresh(), data, 10, select)
    n = expected.shape[1]
    flat, spec = ravel_selected(params, select)
    with ts.create_store(tmp_path / "r", n, 11, metadata=ts.spec_metadata(spec)) as store:
        state = recording.record_trajectory_to_store(recorder, fresh(), data, 10, select, store, rows_per_flush)
        np.testing.assert_array_equal(store.read_rows(0, 11), np.asarray(expected))
        assert int(state.step) == 10
        assert store.metadata["paths"] == ["fc1/bias", "fc1/kernel", "fc2/bias", "fc2/kernel"]
    with ts.create_store(tmp_path / "short", n, 11) as store:
        with pytest.raises(ValueError, match="ran out after 3"):
            recording.record_trajectory_to_store(recorder, fresh(), data[:3], 10, select, store, 2)
    with ts.create_store(tmp_path / "small", n, 5) as store:
        with pytest.raises(ValueError, match="room for 11"):
            recording.record_trajectory_to_store(recorder, fresh(), data, 10, select, store)
