"""Benchmark: measured CPU speed of a structurally pruned MnistNet.

The dense MnistNet against `kpjax.structured.shrink` of it at several kept
fractions of every layer's units (the same fraction of conv1's and conv2's
channels and of fc1's neurons, chosen by L2 filter norm), beside the
theoretical speedup (dense multiply-adds / the shrunk network's). Timed: the
inference forward pass at batch 1 and 128, and a training step at batch
128. Runs alternate (dense, shrunk, dense, …) in one process, --repeats
rounds of --steps calls each after --warmup untimed calls; the table gives
the median time of each and the measured speedup (dense / shrunk).
Measure on idle, pinned cores (`taskset`); report the load.

  taskset -c 0,1 python -m benchmarks.structured_speedup [--fractions=0.75,0.5,0.25]
"""

from __future__ import annotations

import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from kpjax import metrics, models, structured, train

_FRACTIONS = flags.DEFINE_list("fractions", ["0.75", "0.5", "0.25"], "kept fraction of every layer's units")
_REPEATS = flags.DEFINE_integer("repeats", 5, "alternating rounds")
_STEPS = flags.DEFINE_integer("steps", 20, "timed calls per round")
_WARMUP = flags.DEFINE_integer("warmup", 3, "untimed calls per round")


def _timer(fn, *args):
    def run():
        for _ in range(_WARMUP.value):
            jax.block_until_ready(fn(*args))
        start = time.perf_counter()
        for _ in range(_STEPS.value):
            out = fn(*args)
        jax.block_until_ready(out)
        return (time.perf_counter() - start) / _STEPS.value
    return run


def _workloads(spec, variables, rng):
    apply = jax.jit(lambda p, x: spec.module.apply({"params": p}, x))
    tx = train.make_optimizer(1e-3)
    step = train.make_train_step(spec.module.apply, tx)
    state = train.create_train_state(variables["params"], tx, jax.random.PRNGKey(0))
    x1 = jnp.asarray(rng.normal(size=(1, *spec.input_shape)), jnp.float32)
    x128 = jnp.asarray(rng.normal(size=(128, *spec.input_shape)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, 128), jnp.int32)

    def train_step():
        nonlocal state
        state, m = step(state, x128, labels)
        return m["loss"]
    return {"infer b=1": _timer(apply, variables["params"], x1),
            "infer b=128": _timer(apply, variables["params"], x128),
            "train b=128": _timer(train_step)}


def main(argv) -> None:
    del argv
    rng = np.random.default_rng(0)
    spec = models.get_model("mnistnet")
    variables = models.init_variables(spec, 0)
    params = variables["params"]
    flops = metrics.layer_flops(spec.module, variables, spec.input_shape)
    dense = _workloads(spec, variables, rng)
    scores = structured.group_scores(spec, params)
    print(f"load average at start: {os.getloadavg()[0]:.2f}; cores: {len(os.sched_getaffinity(0))}")
    print("| kept units | theoretical speedup | workload | dense ms | shrunk ms | measured speedup |")
    print("|---|---|---|---|---|---|")
    for fraction in (float(f) for f in _FRACTIONS.value):
        keep = structured.keep_units(scores, fraction)
        small_spec, small = structured.shrink(spec, variables, keep)
        # The shrunk network also loses the next layer's inputs from removed units.
        theoretical = sum(flops.values()) / sum(
            metrics.layer_flops(small_spec.module, small, spec.input_shape).values())
        shrunk = _workloads(small_spec, small, rng)
        for name in dense:
            times = {"dense": [], "shrunk": []}
            for _ in range(_REPEATS.value):
                times["dense"].append(dense[name]())
                times["shrunk"].append(shrunk[name]())
            d, s = statistics.median(times["dense"]), statistics.median(times["shrunk"])
            print(f"| {fraction:g} | {theoretical:.2f}× | {name} | {1e3 * d:.3f} | {1e3 * s:.3f} | "
                  f"{d / s:.2f}× |")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    app.run(main)
