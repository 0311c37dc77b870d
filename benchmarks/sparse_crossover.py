"""Benchmark: at what density does a sparse (BCOO) layer beat the dense one?

Why structured pruning (issue 15): an unstructured mask leaves the weights
dense, and JAX's sparse kernels only pay off at very low density. For each
of MnistNet's layers as a matrix product at batch 128 — fc1 (800→500) and
fc2 (500→10) on their inputs, conv1 and conv2 as im2col products (patches
(B·H·W, k·k·C_in) times the (k·k·C_in, C_out) kernel) — a random mask at
each --densities keeps that fraction of the kernel's entries, and
`x @ W` dense is timed against `x @ BCOO.fromdense(W ⊙ m)` (jitted, sparse
operand on the right as in the layer). Runs alternate (dense, sparse,
dense, …), --repeats rounds of --steps calls after --warmup untimed ones;
the table gives medians and dense time / sparse time (> 1: sparse wins).
Measure on idle, pinned cores (`taskset`); report the load.

  taskset -c 0 python -m benchmarks.sparse_crossover [--densities=0.5,0.1,0.03,0.01,0.003]
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax.experimental import sparse

from benchmarks.timing import alternating_medians, call_timer

_DENSITIES = flags.DEFINE_list("densities", ["0.5", "0.2", "0.1", "0.05", "0.02", "0.01", "0.005", "0.002"],
                               "fractions of each kernel's entries kept")
_BATCH = flags.DEFINE_integer("batch", 128, "batch size")
_REPEATS = flags.DEFINE_integer("repeats", 5, "alternating rounds")
_STEPS = flags.DEFINE_integer("steps", 20, "timed calls per round")
_WARMUP = flags.DEFINE_integer("warmup", 3, "untimed calls per round")

# MnistNet's layers as products (rows of the input, inner size, outputs):
# conv1 5×5 on 28×28×1 → 24×24×20; conv2 5×5 on 12×12×20 → 8×8×50 (after pooling).
LAYERS = {"conv1 (im2col)": (24 * 24, 25, 20), "conv2 (im2col)": (8 * 8, 500, 50),
          "fc1": (1, 800, 500), "fc2": (1, 500, 10)}


def _timer(fn, *args):
    return call_timer(fn, *args, warmup=_WARMUP.value, steps=_STEPS.value)


def main(argv) -> None:
    del argv
    rng = np.random.default_rng(0)
    dense_matmul = jax.jit(lambda x, w: x @ w)
    sparse_matmul = jax.jit(sparse.sparsify(lambda x, w: x @ w))
    print(f"cores {len(os.sched_getaffinity(0))}, load {os.getloadavg()[0]:.2f}, batch {_BATCH.value}")
    print("| layer (rows × inner → out) | density | dense ms | BCOO ms | dense / BCOO |")
    print("|---|---|---|---|---|")
    for name, (rows, inner, out) in LAYERS.items():
        x = jnp.asarray(rng.normal(size=(_BATCH.value * rows, inner)), jnp.float32)
        w = rng.normal(size=(inner, out)).astype(np.float32)
        for density in (float(d) for d in _DENSITIES.value):
            masked = w * (rng.random(w.shape) < density)
            w_sparse = sparse.BCOO.fromdense(jnp.asarray(masked))
            np.testing.assert_allclose(np.asarray(sparse_matmul(x, w_sparse)),
                                       np.asarray(dense_matmul(x, jnp.asarray(masked))),
                                       rtol=1e-3, atol=1e-3)
            d, s = (1e3 * t for t in alternating_medians(
                (_timer(dense_matmul, x, jnp.asarray(masked)), _timer(sparse_matmul, x, w_sparse)),
                _REPEATS.value))
            print(f"| {name} ({_BATCH.value * rows} × {inner} → {out}) | {density:g} "
                  f"| {d:.3f} | {s:.3f} | {d / s:.2f}× |", flush=True)
    print(f"load after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    app.run(main)
