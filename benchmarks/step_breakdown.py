"""Benchmark: where ResNet-20's training step spends its time, XLA against PyTorch.

Two tables, for `benchmarks/train_throughput.py`'s ResNet-20 gap:

1. ResNet-20's six convolution shapes in isolation, at batch 128, float32,
   3x3, padding 1, no bias: the forward convolution, its input gradient ∂/∂x
   and its weight gradient ∂/∂w, in XLA (`lax.conv_general_dilated`, NHWC,
   each half jitted alone) and in PyTorch (`benchmarks/torch_conv_worker.py`,
   NCHW, oneDNN), and their sums over the network (each shape times the
   number of layers that have it).
2. The kpjax step taken apart (jitted, the step's compiler options): the
   forward pass in training mode; the gradient with respect to the images
   only (forward + the ∂/∂x chain, no weight gradients); the gradient with
   respect to θ; the whole train step (`kpjax.train.make_train_step`). The
   gradient's cost beyond the images-only one is what the weight gradients
   cost *inside* the step, to compare with their isolated sum.

Each round runs the kpjax worker and the PyTorch worker in fresh
subprocesses, alternating which goes first; the tables give medians over
--repeats rounds. Pin the run (`taskset -c 0,1`) and report the load.

  python -m benchmarks.step_breakdown [--repeats=3] [--calls=10]
      [--torch_python=/work/venv-torch/bin/python]
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

from absl import app, flags

from benchmarks.timing import load_average, run_json

_REPEATS = flags.DEFINE_integer("repeats", 3, "alternating rounds (kpjax, torch)")
_CALLS = flags.DEFINE_integer("calls", 10, "timed calls per measurement and round")
_BATCH = flags.DEFINE_integer("batch_size", 128, "batch size")
_TORCH_PYTHON = flags.DEFINE_string(
    "torch_python", "/work/venv-torch/bin/python",
    "interpreter with torch installed; empty skips PyTorch")
_WORKER = flags.DEFINE_bool("worker", False, "internal: run the kpjax measurements")

_ROOT = Path(__file__).resolve().parents[1]
_TORCH_WORKER = _ROOT / "benchmarks" / "torch_conv_worker.py"
# ResNet-20's convolutions: (H, C_in, C_out, stride) and how many layers have it.
LAYERS = {(32, 3, 16, 1): 1, (32, 16, 16, 1): 6, (32, 16, 32, 2): 1,
          (16, 32, 32, 1): 5, (16, 32, 64, 2): 1, (8, 64, 64, 1): 5}
_PARTS = ("forward", "input_grad", "weight_grad")


def _key(layer) -> str:
    return ",".join(map(str, layer))


def _kpjax_worker(batch_size: int, calls: int) -> dict:
    """Seconds per call of every measurement, one round."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from benchmarks.timing import call_timer
    from kpjax import models, train
    from kpjax.train import compile_options

    jit = compile_options.jit_step
    rng = np.random.default_rng(0)

    def seconds(fn, *args) -> float:
        return call_timer(fn, *args, warmup=2, steps=calls)()

    layers = {}
    for layer in LAYERS:
        h, cin, cout, stride = layer
        x = jnp.asarray(rng.standard_normal((batch_size, h, h, cin), np.float32))
        w = jnp.asarray(0.1 * rng.standard_normal((3, 3, cin, cout), np.float32))

        def conv(x, w, stride=stride):
            return jax.lax.conv_general_dilated(
                x, w, (stride, stride), ((1, 1), (1, 1)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"))

        g = jnp.asarray(rng.standard_normal(conv(x, w).shape, np.float32))
        forward = jit(conv)
        # A linear map's VJP does not need the forward: each half runs alone.
        input_grad = jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0])
        weight_grad = jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])
        layers[_key(layer)] = {"forward": seconds(forward, x, w),
                               "input_grad": seconds(input_grad, x, w, g),
                               "weight_grad": seconds(weight_grad, x, w, g)}

    spec = models.get_model("resnet20")
    variables = spec.module.init(jax.random.PRNGKey(0),
                                 np.zeros((1, *spec.input_shape), np.float32), train=False)
    params, stats = variables["params"], variables["batch_stats"]
    images = jnp.asarray(rng.standard_normal((batch_size, *spec.input_shape), np.float32))
    labels = jnp.asarray(rng.integers(0, 10, batch_size).astype(np.int32))

    def loss(params, images):
        logits, _ = spec.module.apply({"params": params, "batch_stats": stats}, images,
                                      train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    tx = train.make_optimizer(0.01, momentum=0.9, nesterov=False)
    step = train.make_train_step(spec.module.apply, tx)
    state = train.create_train_state(params, tx, jax.random.PRNGKey(0), batch_stats=stats)

    def train_round() -> float:
        nonlocal state
        for i in range(2 + calls):
            if i == 2:
                jax.block_until_ready(state)
                start = time.perf_counter()
            state, metrics = step(state, images, labels)
        jax.block_until_ready((state, metrics))
        return (time.perf_counter() - start) / calls

    parts = {"forward (train mode)": seconds(jit(loss), params, images),
             "∂/∂images only": seconds(jit(jax.grad(loss, argnums=1)), params, images),
             "∂/∂θ": seconds(jit(jax.grad(loss)), params, images),
             "train step": train_round()}
    return {"layers": layers, "step": parts, "jax": jax.__version__}


def _median(rounds: list[dict], *path: str) -> float:
    values = []
    for r in rounds:
        for p in path:
            r = r[p]
        values.append(r)
    return statistics.median(values)


def main(argv):
    del argv
    if _WORKER.value:
        print(json.dumps(_kpjax_worker(_BATCH.value, _CALLS.value)))
        return
    threads = len(os.sched_getaffinity(0))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    jax_cmd = [sys.executable, "-m", "benchmarks.step_breakdown", "--worker",
               f"--batch_size={_BATCH.value}", f"--calls={_CALLS.value}"]
    torch_cmd = [_TORCH_PYTHON.value, str(_TORCH_WORKER),
                 "--layers=" + ";".join(_key(x) for x in LAYERS),
                 f"--batch_size={_BATCH.value}", f"--calls={_CALLS.value}",
                 "--repeats=1", f"--threads={threads}"] if _TORCH_PYTHON.value else None
    print(f"threads {threads}; {load_average()}", flush=True)
    rounds = {"kpjax": [], "torch": []}
    for r in range(_REPEATS.value):
        order = ["kpjax", "torch"] if r % 2 == 0 else ["torch", "kpjax"]
        for name in order:
            if name == "kpjax":
                rounds[name].append(run_json(jax_cmd, env, _ROOT))
            elif torch_cmd:
                rounds[name].append(run_json(torch_cmd, env, _ROOT))
        print(f"  round {r + 1} done; {load_average()}", flush=True)

    has_torch = bool(rounds["torch"])
    print("\n| layer (H, C_in→C_out, stride) | × | " + " | ".join(
        f"{p} XLA | {p} PyTorch" if has_torch else f"{p} XLA" for p in _PARTS)
        + " |  (ms, batch %d)" % _BATCH.value)
    print("|---|---|" + "---|" * (len(_PARTS) * (1 + has_torch)))
    totals = {(p, f): 0.0 for p in _PARTS for f in rounds}
    for layer, count in LAYERS.items():
        h, cin, cout, stride = layer
        cells = []
        for p in _PARTS:
            for f in (("kpjax", "torch") if has_torch else ("kpjax",)):
                ms = 1e3 * _median(rounds[f], "layers", _key(layer), p)
                totals[p, f] += count * ms
                cells.append(f"{ms:.1f}")
        print(f"| {h}×{h}, {cin}→{cout}, {stride} | {count} | " + " | ".join(cells) + " |")
    print("| **ResNet-20 (sum)** | 19 | " + " | ".join(
        f"**{totals[p, f]:.0f}**" for p in _PARTS
        for f in (("kpjax", "torch") if has_torch else ("kpjax",))) + " |")
    print("\n| kpjax ResNet-20 step part | ms |\n|---|---|")
    for part in rounds["kpjax"][0]["step"]:
        print(f"| {part} | {1e3 * _median(rounds['kpjax'], 'step', part):.0f} |")
    print(f"\nmedians of {_REPEATS.value} rounds, {_CALLS.value} calls each; "
          f"jax {rounds['kpjax'][0]['jax']}"
          + (f", torch {rounds['torch'][0]['torch']}" if has_torch else "") + f"; {load_average()}")


if __name__ == "__main__":
    app.run(main)
