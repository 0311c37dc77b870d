"""Several processes with JAX's own distributed runtime: 2 processes × 2 CPU
devices (`jax.distributed.initialize` on localhost, Gloo CPU collectives)
train MnistNet-tiny data-parallel for a few steps, save the state with orbax
(each process writes its part) and fit Θ read column range by column range
from a trajectory store (each process reads only its devices' columns);
the same script on 1 process × 4 devices is the reference."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import json, os, sys
    process, processes, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    import jax
    if processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"localhost:{port}",
                                   num_processes=processes, process_id=process)
    import jax.numpy as jnp, numpy as np
    from kpjax import koopman, models, parallel, pruning, train
    from kpjax.io import checkpoints, trajectory_store
    from kpjax.koopman import sharded
    from oracles import quadratic_gd
    assert jax.device_count() == 4 and jax.process_count() == processes
    mesh = parallel.column_mesh()

    # Data-parallel training: every process passes the same global batches.
    spec = models.get_model("mnistnet_tiny")
    variables = models.init_variables(spec, 0)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 16, *spec.input_shape)).astype(np.float32)
    labels = rng.integers(0, 10, (4, 16)).astype(np.int32)
    tx = train.make_optimizer(0.05, momentum=0.9)
    step = train.make_train_step(spec.module.apply, tx)
    state = parallel.replicate(train.create_train_state(variables["params"], tx, jax.random.PRNGKey(0)),
                              mesh)
    for x, y in zip(images, labels):
        state, _ = step(state, *parallel.shard_batch(x, y, mesh))
    # orbax's multi-host saving: every process calls save, the primary writes
    # the replicated arrays.
    manager = checkpoints.checkpoint_manager(os.path.join(out, "ckpt"))
    checkpoints.save_checkpoint(manager, state)

    # The sharded fit of a stored Θ: each process reads its own column ranges.
    oracle = quadratic_gd(n=1001, steps=30)
    theta = (oracle.snapshots + 1e-6 * rng.normal(size=oracle.snapshots.shape)).astype(np.float32)
    path = os.path.join(out, "theta.kpj")
    if process == 0:
        with trajectory_store.create_store(path, theta.shape[1], theta.shape[0]) as store:
            store.append(theta)
    parallel.sync("theta written")
    with trajectory_store.open_store(path) as store:
        x = sharded.shard_columns(store, mesh, block_size=64)
        k = sharded.sharded_gram(x, mesh, block_size=64)
        fit = koopman.fit_dmd(k)
        phi = sharded.sharded_fixed_point_mode(x, fit, mesh)
        whole = sharded.gather(phi, theta.shape[1])  # asked for: an all-gather
    # Each process writes only its own part of φ; process 0 the shared results.
    part = {f"{s.index[0].start or 0}": np.asarray(s.data) for s in phi.addressable_shards}
    np.savez(os.path.join(out, f"phi_part{process}.npz"), **part)
    if process == 0:
        params = parallel.to_host(state.params)
        np.savez(os.path.join(out, "params.npz"),
                 **{str(i): p for i, p in enumerate(jax.tree_util.tree_leaves(params))})
        np.save(os.path.join(out, "phi_gathered.npy"), whole)
        json.dump({"lambda1": abs(complex(np.asarray(fit.eigenvalues)[koopman.fixed_point_index(fit)])),
                   "rank": int(np.sum(np.asarray(fit.valid)))}, open(os.path.join(out, "result.json"), "w"))
    parallel.sync("done")
    print("ok", process)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(processes: int, out: Path) -> list[subprocess.Popen]:
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={4 // processes}"}
    port = str(_free_port())
    return [subprocess.Popen([sys.executable, "-c", CHILD, str(i), str(processes), port, str(out)],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for i in range(processes)]


def _wait(*groups: list[subprocess.Popen]) -> None:
    """Waits for every group; child i of a group must print "ok i"."""
    try:
        outputs = [[child.communicate(timeout=300) for child in group] for group in groups]
    finally:
        for child in sum(groups, []):
            child.kill()
    for group, out in zip(groups, outputs):
        for i, (child, (stdout, stderr)) in enumerate(zip(group, out)):
            assert child.returncode == 0 and f"ok {i}" in stdout, stderr[-3000:]


def _phi(out: Path) -> np.ndarray:
    parts = {}
    for f in sorted(out.glob("phi_part*.npz")):
        with np.load(f) as z:
            parts.update({int(k): z[k] for k in z.files})
    return np.concatenate([parts[k] for k in sorted(parts)])


def test_two_processes_train_and_fit_as_one(tmp_path):
    # The reference and the two-process run are independent: they run at once.
    reference, pair = _start(1, tmp_path / "one"), _start(2, tmp_path / "two")
    _wait(reference, pair)
    one, two = tmp_path / "one", tmp_path / "two"
    # Each process wrote its own half of φ (2 devices each, 2 shards per process).
    with np.load(two / "phi_part0.npz") as a, np.load(two / "phi_part1.npz") as b:
        assert len(a.files) == 2 and len(b.files) == 2 and not set(a.files) & set(b.files)
    phi1, phi2 = _phi(one)[:1001], _phi(two)[:1001]
    np.testing.assert_array_equal(np.load(two / "phi_gathered.npy"), phi2)
    cos = abs(np.vdot(phi1, phi2)) / (np.linalg.norm(phi1) * np.linalg.norm(phi2))
    assert cos >= 0.999999, cos
    assert json.loads((one / "result.json").read_text())["rank"] == json.loads(
        (two / "result.json").read_text())["rank"]
    with np.load(one / "params.npz") as a, np.load(two / "params.npz") as b:
        for k in a.files:
            np.testing.assert_allclose(b[k], a[k], rtol=2e-4, atol=2e-5)
    # The checkpoint written by two processes restores in this (single) process.
    import jax
    from kpjax import models, train
    from kpjax.io import checkpoints
    assert checkpoints.saved_steps(two / "ckpt") == [4]
    variables = models.init_variables(models.get_model("mnistnet_tiny"), 0)
    template = train.create_train_state(variables["params"], train.make_optimizer(0.05, momentum=0.9),
                                        jax.random.PRNGKey(0))
    restored, _ = checkpoints.restore_checkpoint(two / "ckpt", template)
    with np.load(two / "params.npz") as saved:
        for i, leaf in enumerate(jax.tree_util.tree_leaves(restored.params)):
            np.testing.assert_array_equal(np.asarray(leaf), saved[str(i)])
