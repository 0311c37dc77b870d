"""Benchmark: kpjax's Koopman fit against the reference formulation.

A ResNet-20-sized trajectory (N = 268,346 prunable parameters, T = 391
steps, i.e. 392 snapshots) is a random walk converging to a point θ*:

  θ(t+1) = θ(t) + α(θ* − θ(t)) + s·ρ^t·ξ_t,   ξ_t ~ N(0, I).

Two fits of the λ ≈ 1 mode, each in its own fresh process so that each one's
peak memory is its own:
- kpjax: blocked float64 Gram K = ΘΘᵀ, exact DMD from K, one blocked pass for
  b₁φ₁ (`kpjax.koopman`);
- reference: the original code's formulation, full-SVD exact DMD in NumPy /
  SciPy: X, Y as N×T copies, X = UΣVᵀ (all σ kept, as the reference does),
  Ã = UᵀYVΣ⁻¹, eig, YVΣ⁻¹ held to form the mode.

Peak memory is the process's peak RSS (`resource.getrusage` ru_maxrss, Linux,
KiB); both processes first build the same Θ (float32, 420 MB), so the table
shows peak RSS and peak RSS above the process's RSS once Θ was built. Wall
time is the fit alone, measured twice in the process: the first call
(imports, JIT compilation) and a second call. Then: cosine similarity of the two λ ≈ 1 modes and
agreement of the KMP masks at compression 8 (all parameters prunable).

kpjax's workers share a persistent XLA compilation cache in a fresh
temporary directory (`jax_compilation_cache_dir`, as a user would set it):
the first kpjax run finds it empty, so its first call compiles everything
("first call, empty cache"); later runs load the compiled fit from it
("first call, warm cache"). Runs alternate reference / kpjax; the machine's
load average is printed before and after.

  python -m benchmarks.koopman_fit [--n=268346] [--steps=391] [--repeats=3]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

from benchmarks.timing import write_json
from benchmarks.workloads import kmp_mask, make_trajectory

_N = flags.DEFINE_integer("n", 268_346, "parameters N")
_STEPS = flags.DEFINE_integer("steps", 391, "steps T (T+1 snapshots)")
_SEED = flags.DEFINE_integer("seed", 0, "data seed")
_COMPRESSION = flags.DEFINE_float("compression", 8.0, "compression ratio for the KMP masks")
_REPEATS = flags.DEFINE_integer("repeats", 1, "alternating runs of each; the median is reported")
_JSON_OUT = flags.DEFINE_string("json_out", None, "also write the results here (benchmarks.suite)")
_WORKER = flags.DEFINE_enum("worker", None, ["kpjax", "reference"], "internal: run one fit")
_OUT = flags.DEFINE_string("out", None, "internal: where a worker writes its mode")
_CACHE = flags.DEFINE_string("compilation_cache", None, "internal: the kpjax worker's XLA cache")


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def kpjax_mode(theta: np.ndarray) -> np.ndarray:
    import jax

    if _CACHE.value:
        jax.config.update("jax_compilation_cache_dir", _CACHE.value)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    from kpjax import koopman

    fit = koopman.fit_trajectory(theta)
    return np.asarray(koopman.fixed_point_mode(theta, fit))


def reference_mode(theta: np.ndarray) -> np.ndarray:
    import scipy.linalg

    x = np.array(theta[:-1].T)  # N×T copies, as the reference builds them
    y = np.array(theta[1:].T)
    u, s, vh = scipy.linalg.svd(x, full_matrices=False)
    v_over_s = vh.conj().T / s  # every σ inverted, however small
    a_tilde = u.conj().T @ y @ v_over_s
    lam, w = np.linalg.eig(a_tilde)
    yvs = y @ v_over_s  # N×T
    i = int(np.argmin(np.abs(lam - 1.0)))
    return (yvs @ w[:, i]) / lam[i]


def worker(kind: str, out: str) -> None:
    theta = make_trajectory(_N.value, _STEPS.value, _SEED.value)
    base = _rss_kib()
    fn = kpjax_mode if kind == "kpjax" else reference_mode
    start = time.perf_counter()
    mode = fn(theta)
    cold = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # A second fit in the same process: kpjax without JIT compilation.
    start = time.perf_counter()
    fn(theta)
    warm = time.perf_counter() - start
    np.save(out, mode)
    print(json.dumps({"seconds": warm, "cold_seconds": cold, "peak_kib": peak, "base_kib": base}))


def run_worker(kind: str, out: str, cache: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.koopman_fit", f"--worker={kind}", f"--out={out}",
           f"--n={_N.value}", f"--steps={_STEPS.value}", f"--seed={_SEED.value}"]
    if kind == "kpjax":
        cmd.append(f"--compilation_cache={cache}")
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    if _WORKER.value:
        worker(_WORKER.value, _OUT.value)
        return
    runs = {"kpjax": [], "reference": []}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        paths = {k: os.path.join(tmp, f"{k}.npy") for k in runs}
        cache = os.path.join(tmp, "xla_cache")
        for _ in range(_REPEATS.value):
            for kind in ("reference", "kpjax"):
                runs[kind].append(run_worker(kind, paths[kind], cache))
        modes = {k: np.load(p) for k, p in paths.items()}
    load_after = os.getloadavg()
    med = {k: {f: float(np.median([r[f] for r in v])) for f in v[0]} for k, v in runs.items()}
    empty_cache = runs["kpjax"][0]["cold_seconds"]
    warm_cache = (float(np.median([r["cold_seconds"] for r in runs["kpjax"][1:]]))
                  if _REPEATS.value > 1 else float("nan"))
    a, b = modes["kpjax"], modes["reference"]
    cos = abs(np.vdot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b))
    agree = float(np.mean(kmp_mask(a, _COMPRESSION.value) == kmp_mask(b, _COMPRESSION.value)))
    mib = lambda kib: kib / 1024
    print(f"N = {_N.value:,}, T = {_STEPS.value} ({_STEPS.value + 1} snapshots), "
          f"median of {_REPEATS.value} alternating run(s), {len(os.sched_getaffinity(0))} CPUs; "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print("| fit | wall s | first call s (imports, JIT compile) | peak RSS MiB | peak above Θ MiB |")
    print("|---|---|---|---|---|")
    for k in ("kpjax", "reference"):
        m = med[k]
        cold = (f"{empty_cache:.2f} (empty cache), {warm_cache:.2f} (warm cache)" if k == "kpjax"
                else f"{m['cold_seconds']:.2f}")
        print(f"| {k} | {m['seconds']:.2f} | {cold} | {mib(m['peak_kib']):.0f} "
              f"| {mib(m['peak_kib'] - m['base_kib']):.0f} |")
    r, k = med["reference"], med["kpjax"]
    print(f"speedup (reference / kpjax wall): {r['seconds'] / k['seconds']:.2f}x "
          f"(first calls: {r['cold_seconds'] / empty_cache:.2f}x with an empty compilation cache, "
          f"{r['cold_seconds'] / warm_cache:.2f}x with a warm one)")
    print(f"peak RSS ratio (kpjax / reference): {k['peak_kib'] / r['peak_kib']:.3f}")
    print(f"peak above Θ ratio (kpjax / reference): "
          f"{(k['peak_kib'] - k['base_kib']) / (r['peak_kib'] - r['base_kib']):.3f}")
    print(f"cosine(λ≈1 modes): {cos:.6f}")
    print(f"KMP mask agreement at compression {_COMPRESSION.value:g}: {100 * agree:.4f}%")
    if _JSON_OUT.value:
        write_json(_JSON_OUT.value, {
            "kpjax_seconds": k["seconds"], "reference_seconds": r["seconds"],
            "kpjax_first_empty_cache": empty_cache, "kpjax_first_warm_cache": warm_cache,
            "reference_first": r["cold_seconds"], "kpjax_peak_mib": mib(k["peak_kib"]),
            "reference_peak_mib": mib(r["peak_kib"]), "cosine": float(cos),
            "mask_agreement": agree, "load_before": load_before[0], "load_after": load_after[0]})


if __name__ == "__main__":
    app.run(main)
