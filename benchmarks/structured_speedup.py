"""Benchmark: measured CPU speed of a structurally pruned network.

The dense model against `kpjax.pruning.structured.shrink` of it at several kept
fractions of every group's units (MnistNet: conv1's and conv2's channels
and fc1's neurons; ResNets: every block's inner channels), chosen by L2
filter norm, beside the theoretical speedup (dense multiply-adds / the
shrunk network's). --speedups picks, instead of --fractions, the kept
fraction whose theoretical speedup is each target (bisection). Timed: the
inference forward pass at batch 1 and 128, and a training step at batch
128. Runs alternate (dense, shrunk, dense, …) in one process, --repeats
rounds of --steps calls each after --warmup untimed calls; the table gives
the median time of each and the measured speedup (dense / shrunk).
Measure on idle, pinned cores (`taskset`); report the load.

  taskset -c 0,1 python -m benchmarks.structured_speedup [--fractions=0.75,0.5,0.25]
  taskset -c 0,1 python -m benchmarks.structured_speedup --model=resnet20 --speedups=1.5,2,3
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks.timing import alternating_medians, call_timer, write_json
from kpjax import metrics, models, train
from kpjax.pruning import structured

_MODEL = flags.DEFINE_string("model", "mnistnet", "model (MnistNet or a CIFAR ResNet)")
_FRACTIONS = flags.DEFINE_list("fractions", ["0.75", "0.5", "0.25"], "kept fraction of every layer's units")
_SPEEDUPS = flags.DEFINE_list("speedups", [], "theoretical speedups to reach (overrides --fractions)")
_REPEATS = flags.DEFINE_integer("repeats", 5, "alternating rounds")
_STEPS = flags.DEFINE_integer("steps", 20, "timed calls per round")
_WARMUP = flags.DEFINE_integer("warmup", 3, "untimed calls per round")
_JSON_OUT = flags.DEFINE_string("json_out", "", "also write the rows here (benchmarks.suite)")


def _timer(fn, *args):
    return call_timer(fn, *args, warmup=_WARMUP.value, steps=_STEPS.value)


def _workloads(spec, variables, rng):
    stats = {k: v for k, v in variables.items() if k != "params"}
    apply = jax.jit(lambda p, x: spec.module.apply({"params": p, **stats}, x))
    tx = train.make_optimizer(1e-3)
    step = train.make_train_step(spec.module.apply, tx)
    state = train.create_train_state(variables["params"], tx, jax.random.PRNGKey(0),
                                      batch_stats=variables.get("batch_stats"))
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


def _theoretical(spec, variables, flops, scores, fraction):
    small_spec, small = structured.shrink(spec, variables, structured.keep_units(scores, fraction))
    # The shrunk network also loses the next layer's inputs from removed units.
    return sum(flops.values()) / sum(
        metrics.layer_flops(small_spec.module, small, spec.input_shape).values()), small_spec, small


def _fraction_for(spec, variables, flops, scores, target: float) -> float:
    low, high = 1e-3, 1.0  # speedup falls as the kept fraction grows
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (mid, high) if _theoretical(spec, variables, flops, scores, mid)[0] > target else (low, mid)
    return high


def main(argv) -> None:
    del argv
    rng = np.random.default_rng(0)
    spec = models.get_model(_MODEL.value)
    variables = models.init_variables(spec, 0)
    params = variables["params"]
    flops = metrics.layer_flops(spec.module, variables, spec.input_shape)
    dense = _workloads(spec, variables, rng)
    scores = structured.group_scores(spec, params)
    fractions = ([_fraction_for(spec, variables, flops, scores, float(t)) for t in _SPEEDUPS.value]
                 or [float(f) for f in _FRACTIONS.value])
    print(f"{spec.name}; load average at start: {os.getloadavg()[0]:.2f}; "
          f"cores: {len(os.sched_getaffinity(0))}")
    print("| kept units | theoretical speedup | workload | dense ms | shrunk ms | measured speedup |")
    print("|---|---|---|---|---|---|")
    rows = []
    for fraction in fractions:
        theoretical, small_spec, small = _theoretical(spec, variables, flops, scores, fraction)
        shrunk = _workloads(small_spec, small, rng)
        for name in dense:
            d, s = alternating_medians((dense[name], shrunk[name]), _REPEATS.value)
            print(f"| {fraction:.3f} | {theoretical:.2f}× | {name} | {1e3 * d:.3f} | {1e3 * s:.3f} | "
                  f"{d / s:.2f}× |", flush=True)
            rows.append({"kept": fraction, "theoretical": theoretical, "workload": name,
                         "dense_s": d, "shrunk_s": s})
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    if _JSON_OUT.value:
        write_json(_JSON_OUT.value, rows)


if __name__ == "__main__":
    app.run(main)
