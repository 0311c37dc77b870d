"""Benchmark: overhead of recording the trajectory Θ during training.

For each model (default MnistNet and ResNet-20, batch 128, SGD + momentum 0.9)
trains --steps steps on synthetic batches in three modes, alternating their
order over --repeats rounds:

  plain  `make_train_step` alone;
  ram    `kpjax.train.recording.record_trajectory`: `make_recording_train_step` writes
         the raveled prunable params into a donated (T+1)×N float32 device
         buffer inside the jitted step;
  disk   `kpjax.train.recording.record_trajectory_to_store`: a k-row device
         ring buffer, copied to the host and appended to a float32 store
         file by a writer thread every k steps (file under --dir).

Each timed run covers the whole loop of T steps (for ram and disk also the
buffer allocation, row 0 and, for disk, the last flush); every mode is
compiled by an untimed run first. Batches are made on the host before the
clock starts. Reports the median steps/s of each mode and the overhead
(median time per step relative to plain), with the load average.

  python -m benchmarks.record_overhead [--models=mnistnet,resnet20]
      [--steps=mnistnet=200,resnet20=10] [--repeats=3] [--dir=/tmp]
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks.timing import load_average

from kpjax import data, models, pruning, train
from kpjax.train import recording
from kpjax.io import trajectory_store
from kpjax.flatten import ravel_selected

_MODELS = flags.DEFINE_list("models", ["mnistnet", "resnet20"], "model names")
_STEPS = flags.DEFINE_list("steps", ["mnistnet=200", "resnet20=10"],
                           "timed steps T per run, as model=T")
_BATCH = flags.DEFINE_integer("batch_size", 128, "batch size")
_REPEATS = flags.DEFINE_integer("repeats", 3,
                                "rounds of (plain, ram, disk)")
_DIR = flags.DEFINE_string("dir", tempfile.gettempdir(),
                           "directory for the disk-mode store files")
_ROWS_PER_FLUSH = flags.DEFINE_integer("rows_per_flush", 32,
                                       "k of the disk mode's ring buffer")
_MODES = ("plain", "ram", "disk")


def _run(mode, variables, tx, steps, batches, select, num_params):
    """Seconds for len(batches) steps in `mode`, from a fresh state."""
    state = train.create_train_state(
        variables["params"], tx, jax.random.PRNGKey(0),
        batch_stats=variables.get("batch_stats"))
    jax.block_until_ready(state)
    t = len(batches)
    with tempfile.TemporaryDirectory(dir=_DIR.value) as tmp:
        store = (trajectory_store.create_store(
            os.path.join(tmp, "theta.kptraj"), num_params, t + 1)
            if mode == "disk" else None)
        start = time.perf_counter()
        if mode == "plain":
            for images, labels in batches:
                state, _ = steps["plain"](state, images, labels)
            jax.block_until_ready(state)
        elif mode == "ram":
            state, snapshots = recording.record_trajectory(
                steps["recording"], state, batches, t, select)
            jax.block_until_ready((state, snapshots))
        else:
            state = recording.record_trajectory_to_store(
                steps["recording"], state, batches, t, select, store,
                rows_per_flush=_ROWS_PER_FLUSH.value)
            store.sync()
            jax.block_until_ready(state)
        elapsed = time.perf_counter() - start
        if store is not None:
            store.close()
    return elapsed


def _benchmark(name: str, num_steps: int) -> None:
    spec = models.get_model(name)
    variables = spec.module.init(
        jax.random.PRNGKey(0), np.zeros((1, *spec.input_shape), np.float32),
        train=False)
    select = pruning.prunable(variables["params"])
    num_params = ravel_selected(variables["params"], select)[0].size
    dataset = data.synthetic_dataset(
        spec.input_shape, num_train=_BATCH.value * num_steps, num_test=1)
    mean, std = data.get_normalization(spec.dataset)
    batches = [(data.normalize(x, mean, std), y) for x, y in data.batches(
        dataset.train_images, dataset.train_labels, _BATCH.value, seed=0,
        epoch=0, drop_remainder=True)]
    tx = train.make_optimizer(0.01, momentum=0.9, nesterov=False)
    steps = {
        "plain": train.make_train_step(spec.module.apply, tx),
        "recording": recording.make_recording_train_step(
            train.make_train_step(spec.module.apply, tx, jit=False), select),
    }
    k = min(_ROWS_PER_FLUSH.value, num_steps)
    print(f"{spec.name}: N = {num_params} recorded params, T = {num_steps}, "
          f"batch {_BATCH.value}, RAM buffer "
          f"{(num_steps + 1) * num_params * 4 / 2**20:.0f} MiB, disk ring "
          f"2×{k} rows, {jax.devices()[0].device_kind}; {load_average()}",
          flush=True)
    # Untimed: compiles each mode's step for its buffer shape, (T+1)×N in
    # RAM and k×N on disk.
    for mode in ("plain", "disk"):
        _run(mode, variables, tx, steps, batches[:k], select, num_params)
    state = train.create_train_state(
        variables["params"], tx, jax.random.PRNGKey(0),
        batch_stats=variables.get("batch_stats"))
    jax.block_until_ready(steps["recording"](
        state, *batches[0], jnp.zeros((num_steps + 1, num_params)),
        jnp.int32(1)))
    seconds = {mode: [] for mode in _MODES}
    for r in range(_REPEATS.value):
        order = _MODES[r % 3:] + _MODES[:r % 3]
        for mode in order:
            seconds[mode].append(_run(mode, variables, tx, steps, batches,
                                      select, num_params))
        print(f"  round {r + 1}: " + ", ".join(
            f"{m} {num_steps / seconds[m][-1]:.2f}" for m in _MODES)
            + f" steps/s; {load_average()}", flush=True)
    median = {m: statistics.median(v) for m, v in seconds.items()}
    for mode in _MODES:
        print(f"  {mode:>5}: {num_steps / median[mode]:7.2f} steps/s median "
              f"({', '.join(f'{num_steps / s:.2f}' for s in seconds[mode])})"
              + ("" if mode == "plain" else
                 f", overhead {100 * (median[mode] / median['plain'] - 1):+.1f}%"
                 " time per step"))


def main(argv):
    del argv
    steps = {k: int(v) for k, v in (s.split("=") for s in _STEPS.value)}
    for name in _MODELS.value:
        _benchmark(name, steps.get(name, 20))


if __name__ == "__main__":
    app.run(main)
