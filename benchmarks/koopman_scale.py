"""Benchmark: out-of-core Koopman fit of a 25M-parameter trajectory.

--mode=scale (default): a synthetic trajectory with N = 25,000,000 and
T = 391 (392 snapshots; 39 GB as float32, 20 GB as float16) is written to a
`kpjax.io.trajectory_store` file one snapshot at a time (never held in RAM),
then fitted out of core:
  write  generate θ(t) row by row, append (a writer thread overlaps the
         disk), fsync, then drop the file from the page cache
         (fadvise DONTNEED) so the fit reads from the disk;
  gram   K = ΘΘᵀ, one column sweep (`koopman.gram(store, memory_budget=…)`);
  eig    exact DMD from K (`koopman.fit_dmd`);
  mode   b₁φ₁, one more column sweep (`koopman.fixed_point_mode`);
  mask   KMP scores |φ₁| (N float32) and the global mask at compression 8,
         both saved next to the store.
Per phase: wall time, peak RSS in the phase (a 0.1 s sampler of
/proc/self/statm), ru_maxrss so far, and bytes read/written (/proc/self/io:
rchar/wchar = bytes through read/write calls, read_bytes/write_bytes = bytes
that reached the block device). The big files are deleted at the end.

The trajectory is the random walk of benchmarks/koopman_fit.py,
θ(t+1) = θ(t) + α(θ* − θ(t)) + s·ρ^t·ξ_t, except that ξ_t is a random
window of one pool of N + 2²⁰ normals (drawing 10⁹·9.8 fresh normals would
dominate the run; the windows are shifted by random offsets, so the noise
is still incoherent across steps).

--mode=compare: N = 268,346 (ResNet-20 sized) with fresh noise: the in-memory
fit (`workloads.make_trajectory`, Θ float32 in RAM) against the
out-of-core fit of the same Θ stored as float32, float16 and bfloat16:
cosine of the λ≈1 modes and agreement of the KMP masks at compression 8.

  python -m benchmarks.koopman_scale [--num_params=25000000] [--steps=391] [--dtype=float16]
      [--dir=/tmp] [--memory_budget=268435456] [--read_chunk_mib=256]
  python -m benchmarks.koopman_scale --mode=compare [--num_params=268346]

--mode=mnist: the same comparison on a real trajectory: MnistNet (431,080
parameters, all prunable) trained from its init on the embedded MNIST (SGD
lr 0.01, momentum 0.9, batch 128) for --steps steps, recorded straight to a
float32 store with `record_trajectory_to_store`; the float16 and bfloat16
stores hold the same rows cast.

  python -m benchmarks.koopman_scale --mode=mnist [--steps=391]

--mode=sharded: the fit with Θ's columns sharded over --devices devices
(`kpjax.koopman.sharded`; on a CPU, forced host devices) against the whole Θ on one
device, in alternating rounds: wall time of gram + fit + mode, Θ bytes held
per device against the formula N/devices·(T+1)·4 + (T+1)²·8, and the modes'
agreement. Every device's Θ shard is in memory, so on one host N is bounded
by RAM (N·(T+1)·4 bytes in all), not by the disk: N = 2,000,000 by default.

  python -m benchmarks.koopman_scale --mode=sharded --devices=4 [--num_params=2000000]
"""

from __future__ import annotations

import os
import queue
import resource
import threading
import time

import numpy as np
from absl import app, flags

from benchmarks import koopman_fit  # noqa: F401  (its flags: --n, --steps, --seed, --compression)
from benchmarks.workloads import kmp_mask, make_trajectory
from kpjax import flatten, koopman, parallel
from kpjax.train import recording
from kpjax.io import trajectory_store as ts

_MODE = flags.DEFINE_enum("mode", "scale", ["scale", "compare", "mnist", "sharded"], "what to run")
_DEVICES = flags.DEFINE_integer("devices", 4, "sharded mode: devices of the mesh (on a CPU, forced "
                                "host devices: XLA_FLAGS is set from this flag)")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "sharded mode: alternating rounds of each side "
                               "(after one that compiles)")
# --steps, --seed and --compression are benchmarks.koopman_fit's flags (imported).
_N = flags.DEFINE_integer("num_params", None, "N (default 25M for scale, 268,346 for compare)")
_DTYPE = flags.DEFINE_enum("dtype", "float16", sorted(ts.STORAGE_DTYPES), "storage dtype (scale)")
_DIR = flags.DEFINE_string("dir", "/tmp", "directory for the store and the scores")
_BUDGET = flags.DEFINE_integer("memory_budget", 256 << 20, "koopman memory_budget in bytes")
_CHUNK = flags.DEFINE_integer("read_chunk_mib", 256, "store read chunk in MiB")
_KEEP = flags.DEFINE_bool("keep_files", False, "keep the store and the scores")


def _io() -> dict[str, int]:
    with open("/proc/self/io") as f:
        return {k: int(v) for k, v in (line.split(":") for line in f)}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Phases:
    """Wall time, peak RSS (sampled) and I/O of consecutive phases."""

    def __init__(self):
        self.rows: list[tuple] = []
        self._peak = 0
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while not self._stop.wait(0.1):
            self._peak = max(self._peak, _rss())

    def run(self, name, fn, *args):
        self._peak = _rss()
        io0, t0 = _io(), time.perf_counter()
        out = fn(*args)
        wall = time.perf_counter() - t0
        io1 = _io()
        self._peak = max(self._peak, _rss())
        d = {k: io1[k] - io0[k] for k in io0}
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.rows.append((name, wall, self._peak, maxrss, d["rchar"], d["read_bytes"],
                          d["wchar"], d["write_bytes"]))
        print(f"  {name}: {wall:.1f} s, peak RSS {self._peak / 2**20:.0f} MiB", flush=True)
        return out

    def table(self) -> str:
        gb = lambda b: f"{b / 1e9:.2f}"
        lines = ["| phase | wall s | peak RSS in phase MiB | ru_maxrss so far MiB | "
                 "read GB (calls / device) | written GB (calls / device) |",
                 "|---|---|---|---|---|---|"]
        for name, wall, peak, maxrss, rc, rb, wc, wb in self.rows:
            lines.append(f"| {name} | {wall:.1f} | {peak / 2**20:.0f} | {maxrss / 2**20:.0f} | "
                         f"{gb(rc)} / {gb(rb)} | {gb(wc)} / {gb(wb)} |")
        total = sum(r[1] for r in self.rows)
        fit = sum(r[1] for r in self.rows if r[0] != "write")
        lines.append(f"| total (fit = all but write) | {total:.1f} (fit {fit:.1f}) | "
                     f"{max(r[2] for r in self.rows) / 2**20:.0f} | {self.rows[-1][3] / 2**20:.0f} | | |")
        return "\n".join(lines)


def write_walk(store: ts.TrajectoryStore, seed: int) -> None:
    """Appends the random walk row by row; a writer thread does the appends."""
    n, rows = store.num_params, store.num_snapshots
    rng = np.random.default_rng(seed)
    pool = rng.standard_normal(n + (1 << 20), dtype=np.float32)
    theta_star = rng.standard_normal(n, dtype=np.float32) * 0.1
    theta = theta_star + rng.standard_normal(n, dtype=np.float32) * 0.05
    alpha, s, rho = 0.02, 2e-3, 0.995
    pending: queue.Queue = queue.Queue(maxsize=2)

    def writer():
        while (row := pending.get()) is not None:
            store.append(row)

    thread = threading.Thread(target=writer)
    thread.start()
    step = np.empty_like(theta)
    pending.put(theta.astype(store.dtype))
    for t in range(rows - 1):
        offset = int(rng.integers(0, 1 << 20))
        np.subtract(theta_star, theta, out=step)
        step *= alpha
        theta += step
        np.multiply(pool[offset : offset + n], s * rho**t, out=step)
        theta += step
        pending.put(theta.astype(store.dtype))
    pending.put(None)
    thread.join()
    store.sync()
    with open(store.path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def scale(n: int) -> None:
    path = os.path.join(_DIR.value, f"koopman_scale_{n}_{_DTYPE.value}.kpt")
    scores_path = os.path.join(_DIR.value, f"koopman_scale_{n}_scores.npy")
    mask_path = os.path.join(_DIR.value, f"koopman_scale_{n}_mask.npy")
    rows = flags.FLAGS.steps + 1
    size = n * rows * ts.STORAGE_DTYPES[_DTYPE.value].itemsize
    print(f"N = {n:,}, T = {flags.FLAGS.steps}, {_DTYPE.value} store {size / 1e9:.1f} GB at {path}; "
          f"memory_budget {_BUDGET.value / 2**20:.0f} MiB "
          f"(block {koopman.block_size_for_budget(rows, _BUDGET.value)} columns), "
          f"read chunk {_CHUNK.value} MiB; {os.cpu_count()} CPUs, load average {os.getloadavg()}",
          flush=True)
    phases = Phases()
    chunk = _CHUNK.value << 20
    try:
        with ts.create_store(path, n, rows, _DTYPE.value, {"benchmark": "koopman_scale"},
                             overwrite=True, read_chunk_bytes=chunk) as store:
            phases.run("write", write_walk, store, flags.FLAGS.seed)
        with ts.open_store(path, read_chunk_bytes=chunk) as store:
            k = phases.run("gram", koopman.gram, store, koopman.DEFAULT_BLOCK_SIZE, _BUDGET.value)
            fit = phases.run("eig", koopman.fit_dmd, k)

            def mode():
                i = koopman.fixed_point_index(fit)
                w = fit.coefficients[:, i] * fit.amplitudes[i]
                phi = koopman.combine_snapshots(store, w, memory_budget=_BUDGET.value)
                return np.abs(np.asarray(phi)).astype(np.float32)

            scores = phases.run("mode", mode)

        def mask():
            np.save(scores_path, scores)
            m = kmp_mask(scores, flags.FLAGS.compression)
            np.save(mask_path, m)
            return m

        m = phases.run("mask", mask)
        lam = complex(fit.eigenvalues[0])
        print(f"λ₁ = {lam:.6f}, rank {int(fit.rank)}, kept {m.mean():.4f} of N; "
              f"load average {os.getloadavg()}")
        print(phases.table())
    finally:
        if not _KEEP.value:
            for p in (path, scores_path, mask_path):
                if os.path.exists(p):
                    os.remove(p)


def compare(n: int) -> None:
    import tempfile

    theta = make_trajectory(n, flags.FLAGS.steps, flags.FLAGS.seed)
    t0 = time.perf_counter()
    fit = koopman.fit_trajectory(theta)
    ref = np.asarray(koopman.fixed_point_mode(theta, fit))
    print(f"N = {n:,}, T = {flags.FLAGS.steps}: in-memory fit {time.perf_counter() - t0:.1f} s, "
          f"λ₁ = {complex(fit.eigenvalues[0]):.6f}; load average {os.getloadavg()}")
    with tempfile.TemporaryDirectory(dir=_DIR.value) as tmp:
        _compare_stores(theta, tmp, ref)


def _compare_stores(theta_rows, tmp: str, ref: np.ndarray) -> None:
    """Fits stores of `theta_rows` in each dtype; prints cosine and mask agreement with `ref`."""
    ref_mask = kmp_mask(ref, flags.FLAGS.compression)
    print("| store dtype | fit s | λ₁ | cosine(λ≈1 mode, float32 reference) | "
          f"KMP mask agreement at c = {flags.FLAGS.compression:g} |")
    print("|---|---|---|---|---|")
    rows, n = theta_rows.shape
    for dtype in ("float32", "float16", "bfloat16"):
        path = os.path.join(tmp, f"{dtype}.kpt")
        with ts.create_store(path, n, rows, dtype) as store:
            for start in range(0, rows, 32):
                store.append(theta_rows[start : start + 32])
        with ts.open_store(path, read_chunk_bytes=_CHUNK.value << 20) as store:
            t0 = time.perf_counter()
            f = koopman.fit_trajectory(store, memory_budget=_BUDGET.value)
            mode = np.asarray(koopman.fixed_point_mode(store, f))
            wall = time.perf_counter() - t0
        cos = abs(np.vdot(mode, ref)) / (np.linalg.norm(mode) * np.linalg.norm(ref))
        agree = np.mean(kmp_mask(mode, flags.FLAGS.compression) == ref_mask)
        print(f"| {dtype} | {wall:.1f} | {complex(f.eigenvalues[0]):.6f} | {cos:.8f} | "
              f"{100 * agree:.4f}% |", flush=True)


def mnist() -> None:
    import tempfile

    import jax

    from kpjax import data, models, pruning, train

    spec = models.get_model("mnistnet")
    ds = data.load_dataset("mnist")
    norm = data.get_normalization("mnist")
    variables = spec.module.init(jax.random.PRNGKey(flags.FLAGS.seed),
                                 np.zeros((1, *spec.input_shape), np.float32), train=False)
    select = pruning.prunable(variables["params"])
    tx = train.make_optimizer(0.01, momentum=0.9, nesterov=False)
    step = train.make_train_step(spec.module.apply, tx, jit=False,
                                 normalize_fn=lambda x: data.normalize(x, norm.mean, norm.std))
    recorder = recording.make_recording_train_step(step, select)
    state = train.create_train_state(variables["params"], tx, jax.random.PRNGKey(1))
    steps = flags.FLAGS.steps
    batches = data.batches(ds.train_images, ds.train_labels, 128, seed=flags.FLAGS.seed, epoch=0)
    n = flatten.ravel_selected(variables["params"], select)[0].size
    with tempfile.TemporaryDirectory(dir=_DIR.value) as tmp:
        with ts.create_store(os.path.join(tmp, "recorded.kpt"), n, steps + 1) as store:
            t0 = time.perf_counter()
            recording.record_trajectory_to_store(recorder, state, batches, steps, select, store)
            wall = time.perf_counter() - t0
            theta = store.read_rows(0, steps + 1)
        print(f"MnistNet N = {n:,}, T = {steps}: recorded to disk in {wall:.1f} s "
              f"({steps / wall:.1f} steps/s, with compilation); load average {os.getloadavg()}")
        ref = np.asarray(koopman.fixed_point_mode(theta, koopman.fit_trajectory(theta)))
        _compare_stores(theta, tmp, ref)


def sharded(n: int) -> None:
    """One device against --devices: the same Θ (a float32 store in the page
    cache, read straight into device memory) fitted whole on one device and
    with its columns sharded (`kpjax.koopman.sharded`), in alternating rounds."""
    import tempfile

    import jax
    import jax.numpy as jnp

    from kpjax.koopman import sharded as sh

    devices = _DEVICES.value
    if len(jax.devices()) < devices:
        raise app.UsageError(f"--devices={devices}, but JAX sees {len(jax.devices())} devices")
    rows = flags.FLAGS.steps + 1
    mesh = parallel.column_mesh(jax.devices()[:devices])
    per_device = sh.padded_columns(n, mesh) // devices * rows * 4
    gram_bytes = rows * rows * 8
    print(f"N = {n:,}, T = {flags.FLAGS.steps}: Θ {n * rows * 4 / 1e9:.2f} GB float32; {devices} "
          f"{jax.devices()[0].platform} devices; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()}", flush=True)
    results: dict[str, list[float]] = {"one device": [], f"{devices} devices": []}
    with tempfile.TemporaryDirectory(dir=_DIR.value) as tmp:
        path = os.path.join(tmp, "theta.kpt")
        with ts.create_store(path, n, rows, "float32", overwrite=True) as store:
            write_walk(store, flags.FLAGS.seed)
        with ts.open_store(path, read_chunk_bytes=_CHUNK.value << 20) as store:
            modes = {}
            for r in range(_ROUNDS.value + 1):  # round 0 compiles: not counted
                t0 = time.perf_counter()
                x = jnp.asarray(store[:, :])  # the whole Θ on one device
                fit = koopman.fit_dmd(koopman.gram(x))
                modes["one device"] = np.asarray(koopman.fixed_point_mode(x, fit))
                del x
                wall_one = time.perf_counter() - t0
                t0 = time.perf_counter()
                x = sh.shard_columns(store, mesh)
                held = max(sum(s.data.nbytes for s in x.addressable_shards if s.device == d)
                           for d in mesh.devices.flat)
                fit = koopman.fit_dmd(sh.sharded_gram(x, mesh))
                modes["sharded"] = sh.gather(sh.sharded_fixed_point_mode(x, fit, mesh), n)
                del x
                wall_many = time.perf_counter() - t0
                print(f"  round {r}: one device {wall_one:.1f} s, {devices} devices {wall_many:.1f} s"
                      + (" (compiles; not counted)" if r == 0 else ""), flush=True)
                if r:
                    results["one device"].append(wall_one)
                    results[f"{devices} devices"].append(wall_many)
    a, b = modes["one device"], modes["sharded"]
    cos = abs(np.vdot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b))
    agree = np.mean(kmp_mask(a, flags.FLAGS.compression) == kmp_mask(b, flags.FLAGS.compression))
    one, many = np.median(results["one device"]), np.median(results[f"{devices} devices"])
    print(f"Θ held per device: {held / 2**20:.1f} MiB measured (its shards' bytes); formula "
          f"N/devices·(T+1)·4 + (T+1)²·8 = {(per_device + gram_bytes) / 2**20:.1f} MiB "
          f"(Θ {per_device / 2**20:.1f} + K {gram_bytes / 2**20:.1f}); peak RSS of the process "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    print(f"gram + fit + mode, median of {_ROUNDS.value}: one device {one:.1f} s, {devices} devices "
          f"{many:.1f} s ({one / many:.2f}×); λ≈1 modes cosine {cos:.9f}, KMP masks at "
          f"c = {flags.FLAGS.compression:g} agree on {100 * agree:.4f} %; load average {os.getloadavg()}")


def main(argv):
    del argv
    if _MODE.value == "scale":
        scale(_N.value or 25_000_000)
    elif _MODE.value == "compare":
        compare(_N.value or 268_346)
    elif _MODE.value == "sharded":
        sharded(_N.value or 2_000_000)
    else:
        mnist()


if __name__ == "__main__":
    # Forced host devices must be set before JAX starts its CPU backend.
    import sys
    devices = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--devices=")), None)
    if devices and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={devices}").strip()


    app.run(main)
