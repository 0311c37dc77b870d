"""Benchmark: training throughput (images/s) on CPU, kpjax against PyTorch.

For each model (MnistNet, ResNet-20, VGG-16 with --models) one training step at batch 128: SGD
with momentum 0.9, mean cross-entropy, BatchNorm in training mode for the
ResNet. The kpjax side is `kpjax.train.make_train_step` (jitted, state
donated, masks applied) on `kpjax.models.get_model`; the PyTorch side is
`benchmarks/torch_train_worker.py`, the same architectures in a CPU build of
torch, run by a separate interpreter (--torch_python) so that the kpjax venv
stays torch-free.

Every measurement is a fresh subprocess (one model, one framework): kpjax and
PyTorch runs alternate, --repeats rounds, and the table reports the median
images/s of each and their ratio (> 1: kpjax faster). Inputs are random
float32 batches made before the clock starts; the first --warmup steps
(compilation, allocation) are not timed. Both sides use the same number of
threads (--threads, default: the cores this process may run on; XLA's CPU
client sizes its intra-op pool from the same affinity mask).

  python -m benchmarks.train_throughput [--models=mnistnet,resnet20,vgg16]
      [--repeats=3] [--torch_python=/work/venv-torch/bin/python]
      [--xla_flags=...]

The torch venv: python3 -m venv /work/venv-torch &&
/work/venv-torch/bin/pip install torch==2.13.0 numpy (a CPU wheel).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

from absl import app, flags

from benchmarks.timing import load_average, run_json, write_json
from benchmarks.workloads import kpjax_throughput

_MODELS = flags.DEFINE_list("models", ["mnistnet", "resnet20"],
                            "models to time")
_BATCH = flags.DEFINE_integer("batch_size", 128, "batch size")
_STEPS = flags.DEFINE_list(
    "steps", ["mnistnet=40", "resnet20=8", "vgg16=3"],
    "timed steps per run, as model=steps")
_WARMUP = flags.DEFINE_integer("warmup", 2, "untimed first steps per run")
_REPEATS = flags.DEFINE_integer("repeats", 3,
                                "alternating rounds (kpjax run, torch run)")
_THREADS = flags.DEFINE_integer(
    "threads", 0, "threads for both frameworks; 0: the usable cores")
_TORCH_PYTHON = flags.DEFINE_string(
    "torch_python", "/work/venv-torch/bin/python",
    "interpreter with torch installed; empty skips PyTorch")
_XLA_FLAGS = flags.DEFINE_string(
    "xla_flags", "", "appended to XLA_FLAGS for the kpjax runs")
_JSON_OUT = flags.DEFINE_string(
    "json_out", "", "also write the medians and rounds here (benchmarks.suite)")
_WORKER = flags.DEFINE_string(
    "worker", "", "internal: run one kpjax measurement of this model")

_ROOT = Path(__file__).resolve().parents[1]
_TORCH_WORKER = _ROOT / "benchmarks" / "torch_train_worker.py"


def _kpjax_worker(model: str, batch_size: int, steps: int, warmup: int):
    """Times `steps` kpjax training steps; prints one JSON line."""
    print(json.dumps(kpjax_throughput(model, batch_size, steps, warmup)))


def main(argv):
    del argv
    steps = dict(s.split("=") for s in _STEPS.value)
    if _WORKER.value:
        _kpjax_worker(_WORKER.value, _BATCH.value,
                      int(steps.get(_WORKER.value, 10)), _WARMUP.value)
        return
    threads = _THREADS.value or len(os.sched_getaffinity(0))
    # Both frameworks get `threads` threads: XLA's CPU client and torch's
    # intra-op pool follow the affinity mask / OMP_NUM_THREADS.
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    jax_env = dict(env, XLA_FLAGS=" ".join(
        f for f in (env.get("XLA_FLAGS", ""), _XLA_FLAGS.value) if f))
    print(f"threads {threads}; XLA_FLAGS={jax_env['XLA_FLAGS']!r}; "
          f"{load_average()}")
    rows = []
    for model in _MODELS.value:
        n = str(int(steps.get(model, 10)))
        common = [f"--batch_size={_BATCH.value}", f"--warmup={_WARMUP.value}"]
        jax_cmd = [sys.executable, "-m", "benchmarks.train_throughput",
                   f"--worker={model}", f"--steps={model}={n}"] + common
        torch_cmd = ([_TORCH_PYTHON.value, str(_TORCH_WORKER),
                      f"--model={model}", f"--threads={threads}",
                      f"--steps={n}"] + common
                     if _TORCH_PYTHON.value else None)
        rates = {"kpjax": [], "torch": []}
        for r in range(_REPEATS.value):
            # Alternate which framework goes first in each round.
            order = ["kpjax", "torch"] if r % 2 == 0 else ["torch", "kpjax"]
            for name in order:
                if name == "kpjax":
                    rates[name].append(run_json(jax_cmd, jax_env, _ROOT)["images_per_s"])
                elif torch_cmd:
                    rates[name].append(run_json(torch_cmd, env, _ROOT)["images_per_s"])
            print(f"  {model} round {r + 1}: " + ", ".join(
                f"{k} {v[-1]:.1f}" for k, v in rates.items() if v)
                + f" img/s; {load_average()}", flush=True)
        rows.append((model, rates))
    print("\n| model | kpjax img/s | PyTorch img/s | ratio kpjax/PyTorch |"
          "\n|---|---|---|---|")
    for model, rates in rows:
        jax_med = statistics.median(rates["kpjax"])
        if rates["torch"]:
            torch_med = statistics.median(rates["torch"])
            print(f"| {model} | {jax_med:.1f} | {torch_med:.1f} | "
                  f"{jax_med / torch_med:.2f} |")
        else:
            print(f"| {model} | {jax_med:.1f} | - | - |")
    print(f"\nmedians of {_REPEATS.value} runs, batch {_BATCH.value}; "
          f"{load_average()}")
    if _JSON_OUT.value:
        write_json(_JSON_OUT.value, {model: {
            "kpjax": statistics.median(rates["kpjax"]),
            "torch": statistics.median(rates["torch"]) if rates["torch"] else None,
            "rounds": rates} for model, rates in rows})


if __name__ == "__main__":
    app.run(main)
