"""What a maintainer runs when a GPU (or any accelerator) is at hand: one
script, one table (`benchmarks/device_check.sh`; about 5 minutes on one GPU).

  1. the platform: backend, device kind and count, jax version, whether
     float64 computes on the device (the Gram is float64);
  2. the tests that need neither ../shared nor a second process kind of
     setup (`TEST_FILES`), run on this backend;
  3. ResNet-20 training throughput (batch 128, SGD momentum;
     `benchmarks.train_throughput.kpjax_throughput`);
  4. the Koopman fit of a synthetic trajectory (`benchmarks.workloads.make_trajectory`,
     N = 268,346, T = 391 by default): the Gram K = ΘΘᵀ in float64 (kpjax's
     blocked `koopman.gram`) and in float32 (one matmul at HIGHEST
     precision), the fixed-point mode's cosine between the two fits and the
     agreement of their KMP masks at compression 8;
  5. with two or more devices, the Gram sharded over 2 of them
     (`koopman.sharded`) against the one-device K.

On a CPU it runs too and says so: then it checks the script, not a device.
`--tiny` shrinks every size (the test suite runs it so, on 2 forced CPU
devices). Not a test: nothing here asserts a speed.

  python -m benchmarks.device_check [--tiny] [--skip_tests]
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]

# Library tests that run on any backend, need no ../shared and no PyTorch
# file: the fit, the scores and masks, training, the sharded Gram, pruning
# during training.
TEST_FILES = ("tests/test_koopman.py", "tests/test_pruning.py", "tests/test_train.py",
              "tests/test_sharded.py", "tests/test_during_training.py", "tests/test_models.py")
TINY_TESTS = ("tests/test_flatten.py",)

_TINY = flags.DEFINE_bool("tiny", False, "tiny sizes: checks the script in seconds")
_SKIP_TESTS = flags.DEFINE_bool("skip_tests", False, "skip the test subset")
_N = flags.DEFINE_integer("fit_n", None, "parameters N of the fit (default 268,346; tiny 20,000)")
_STEPS = flags.DEFINE_integer("fit_steps", None, "steps T of the fit (default 391; tiny 40)")


def _row(rows: list, check: str, result: str, detail: str = "") -> None:
    rows.append((check, result, detail))
    print(f"[device_check] {check}: {result} {detail}", flush=True)


def platform_rows(rows: list) -> bool:
    """The backend and devices; whether float64 runs on the device. True on CPU only."""
    import jax
    import jax.numpy as jnp
    devices = jax.devices()
    backend = jax.default_backend()
    _row(rows, "platform", f"{backend}: {len(devices)} x {devices[0].device_kind}",
         f"jax {jax.__version__}")
    with jax.enable_x64(True):
        x = jnp.ones((4, 4), jnp.float64)
        y = (x @ x).block_until_ready()
    _row(rows, "float64 on the device", "yes" if y.dtype == jnp.float64 and float(y[0, 0]) == 4.0
         else f"no ({y.dtype})")
    return backend == "cpu"


def test_rows(rows: list, files) -> None:
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
                          "-o", "addopts=", *files], cwd=ROOT, env=env, capture_output=True, text=True)
    tail = [line for line in res.stdout.splitlines() if " passed" in line or " failed" in line
            or " error" in line]
    _row(rows, "tests " + " ".join(Path(f).stem for f in files),
         "ok" if res.returncode == 0 else f"FAILED (rc {res.returncode})",
         f"{tail[-1] if tail else res.stdout[-300:]}; {time.perf_counter() - start:.0f} s")


def throughput_rows(rows: list, tiny: bool) -> None:
    from benchmarks.workloads import kpjax_throughput
    model, batch, steps = ("resnet_tiny", 16, 3) if tiny else ("resnet20", 128, 30)
    r = kpjax_throughput(model, batch, steps, warmup=2)
    _row(rows, f"train {model}, batch {batch}", f"{r['images_per_s']:,.0f} img/s",
         f"{steps} steps after 2 untimed")


def _timed(fn, *args):
    import jax
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def fit_rows(rows: list, n: int, steps: int) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks.workloads import kmp_mask, make_trajectory
    from kpjax import koopman
    theta = make_trajectory(n, steps, seed=0)

    gram64 = koopman.gram

    @jax.jit
    def gram32(x):
        return jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST)

    on_device = jax.device_put(theta)
    _, cold64 = _timed(gram64, on_device)
    k64, warm64 = _timed(gram64, on_device)
    _, cold32 = _timed(gram32, on_device)
    k32, warm32 = _timed(gram32, on_device)
    modes = []
    for k in (k64, k32):
        fit = koopman.fit_dmd(np.asarray(k, np.float64))
        modes.append(np.asarray(koopman.fixed_point_mode(theta, fit)))
    a, b = modes
    cos = abs(np.vdot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b))
    agree = float(np.mean(kmp_mask(a, 8.0) == kmp_mask(b, 8.0)))
    rel = float(np.max(np.abs(np.asarray(k64) - np.asarray(k32, np.float64))) / np.max(np.abs(np.asarray(k64))))
    _row(rows, f"Gram float64, N={n:,}, T={steps}", f"{warm64:.3f} s warm", f"{cold64:.2f} s first call")
    _row(rows, "Gram float32 (HIGHEST)", f"{warm32:.3f} s warm",
         f"{cold32:.2f} s first call; max ΔK / max K {rel:.1e}")
    _row(rows, "float32 vs float64 fit", f"cos(φ₁) {cos:.7f}", f"KMP masks at c=8 agree on {100 * agree:.4f} %")


def mesh_rows(rows: list, n: int, steps: int) -> None:
    import jax
    import numpy as np

    from benchmarks.workloads import make_trajectory
    from kpjax import koopman, parallel
    from kpjax.koopman import sharded
    if jax.device_count() < 2:
        _row(rows, "2-device mesh", "skipped", f"{jax.device_count()} device")
        return
    theta = make_trajectory(n, steps, seed=1)
    mesh = parallel.column_mesh(jax.devices()[:2])
    placed = sharded.shard_columns(theta, mesh)
    sharded.sharded_gram(placed, mesh)
    start = time.perf_counter()
    k2 = sharded.sharded_gram(placed, mesh)
    seconds = time.perf_counter() - start
    k1 = np.asarray(koopman.gram(theta))
    rel = float(np.max(np.abs(np.asarray(k2) - k1)) / np.max(np.abs(k1)))
    _row(rows, "2-device mesh: sharded Gram", f"{seconds:.3f} s warm", f"max ΔK / max K vs 1 device {rel:.1e}")


def main(argv) -> None:
    del argv
    # JAX logs its probe for a TPU on every non-TPU machine; it says nothing here.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    tiny = _TINY.value
    n = _N.value or (20_000 if tiny else 268_346)
    steps = _STEPS.value or (40 if tiny else 391)
    rows: list = []
    cpu = platform_rows(rows)
    if not _SKIP_TESTS.value:
        test_rows(rows, TINY_TESTS if tiny else TEST_FILES)
    throughput_rows(rows, tiny)
    fit_rows(rows, n, steps)
    mesh_rows(rows, n, steps)
    print()
    if cpu:
        print("CPU only: no accelerator was found; this run checks the script, not a device.")
    width = max(len(r[0]) for r in rows)
    print(f"| {'check'.ljust(width)} | result | detail |")
    print(f"|{'-' * (width + 2)}|---|---|")
    for check, result, detail in rows:
        print(f"| {check.ljust(width)} | {result} | {detail} |")
    if any(r[1].startswith("FAILED") for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
