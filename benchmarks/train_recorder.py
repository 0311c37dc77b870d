"""Benchmark: overhead of recording the trajectory Θ during training.

Trains a model (default MnistNet, batch 128, plain SGD + momentum) on
synthetic MNIST-shaped batches for --steps steps twice, alternating the order
over --repeats rounds: with the plain jitted train step, and with
`make_recording_train_step`, which also writes the raveled prunable params
into a donated (T+1)×N float32 device buffer. Reports steps/s of both and
the relative overhead. Batches are pre-generated on the host so that the
loop times the steps alone; the first (compiling) steps are excluded.

  python -m benchmarks.train_recorder [--model=mnistnet] [--steps=300]
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from kpjax import data, models, pruning, train
from kpjax.koopman import ravel_selected

_MODEL = flags.DEFINE_string("model", "mnistnet", "model name")
_STEPS = flags.DEFINE_integer("steps", 300, "timed steps T per run")
_BATCH = flags.DEFINE_integer("batch_size", 128, "batch size")
_REPEATS = flags.DEFINE_integer("repeats", 2, "rounds of (plain, recording)")
_WARMUP = 3


def _run(spec, variables, tx, step_fn, batches, select, recording):
    state = train.create_train_state(
        variables["params"], tx, jax.random.PRNGKey(0),
        batch_stats=variables.get("batch_stats"))
    if recording:
        n = ravel_selected(state.params, select)[0].size
        snapshots = jnp.zeros((len(batches) + 1, n), jnp.float32)
    for i, (images, labels) in enumerate(batches):
        if i == _WARMUP:
            jax.block_until_ready(state)
            start = time.perf_counter()
        if recording:
            state, snapshots, _ = step_fn(state, images, labels, snapshots,
                                          jnp.int32(i + 1))
        else:
            state, _ = step_fn(state, images, labels)
    jax.block_until_ready(state)
    if recording:
        jax.block_until_ready(snapshots)
    return (len(batches) - _WARMUP) / (time.perf_counter() - start)


def main(argv):
    del argv
    spec = models.get_model(_MODEL.value)
    variables = spec.module.init(
        jax.random.PRNGKey(0), np.zeros((1, *spec.input_shape), np.float32),
        train=False)
    select = pruning.prunable(variables["params"])
    dataset = data.synthetic_dataset(
        spec.input_shape, num_train=_BATCH.value * (_STEPS.value + _WARMUP),
        num_test=1)
    mean, std = data.get_normalization(spec.dataset)
    batches = [(data.normalize(x, mean, std), y) for x, y in data.batches(
        dataset.train_images, dataset.train_labels, _BATCH.value, seed=0,
        epoch=0, drop_remainder=True)]
    tx = train.make_optimizer(0.01, momentum=0.9, nesterov=False)
    plain = train.make_train_step(spec.module.apply, tx)
    recording = train.make_recording_train_step(
        train.make_train_step(spec.module.apply, tx, jit=False), select)
    n = ravel_selected(variables["params"], select)[0].size
    print(f"{spec.name}: N = {n} recorded params, T = {_STEPS.value}, "
          f"batch {_BATCH.value}, buffer {(_STEPS.value + _WARMUP + 1) * n * 4 / 2**20:.0f} MiB, "
          f"{jax.devices()[0].device_kind}")
    rates = {"plain": [], "recording": []}
    for _ in range(_REPEATS.value):
        rates["plain"].append(
            _run(spec, variables, tx, plain, batches, select, False))
        rates["recording"].append(
            _run(spec, variables, tx, recording, batches, select, True))
    best = {k: max(v) for k, v in rates.items()}
    for k, v in rates.items():
        print(f"{k:>9}: {best[k]:7.2f} steps/s best "
              f"({', '.join(f'{r:.2f}' for r in v)})")
    print(f"overhead: {100 * (best['plain'] / best['recording'] - 1):+.1f}% "
          f"time per step")


if __name__ == "__main__":
    app.run(main)
