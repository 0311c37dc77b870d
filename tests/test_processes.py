"""The experiment binaries on several processes (experiments.processes):
`python -m experiments.prune` on 2 processes × 2 CPU devices (JAX's
distributed runtime on localhost, Gloo collectives) against the same job on
1 process × 4 devices, and the launch mistakes that must stop every process
with one line instead of hanging."""

import fcntl
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# A prune job small enough for a test: MnistNet-tiny, 512 examples (8 steps
# an epoch), a 4-step window, KMP and GMP at compression 4, one epoch of
# fine-tuning.
JOB = ["--model=mnistnet_tiny", "--max_train_examples=512", "--max_test_examples=200",
       "--batch_size=64", "--seeds=0", "--compressions=4", "--trajectory_steps=4",
       "--finetune_epochs=1", "--methods=kmp,gmp", "--rcond=1e-6", "--devices=0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(workdir: Path, processes: int, flags=(), per_process=None, devices: int | None = None,
           launch: bool = True) -> list[subprocess.Popen]:
    """`processes` copies of the binary on `devices` // processes CPU devices each."""
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={(devices or 4) // processes}"}
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name, None)
    port = _free_port()
    children = []
    for i in range(processes):
        argv = [*JOB, f"--workdir={workdir}", *flags, *((per_process or {}).get(i, ()))]
        if launch and processes > 1:
            argv += [f"--coordinator_address=localhost:{port}", f"--num_processes={processes}",
                     f"--process_id={i}"]
        children.append(subprocess.Popen([sys.executable, "-m", "experiments.prune", *argv], cwd=ROOT,
                                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True))
    return children


def _wait(*groups, timeout=240) -> list[list[tuple[int, str, str]]]:
    """(return code, stdout, stderr) of every child of every group."""
    try:
        return [[(c, *c.communicate(timeout=timeout)) for c in group] for group in groups]
    finally:
        for child in sum(groups, []):
            child.kill()


def _usage_lines(results) -> list[str]:
    """The one usage-error line of each child (which must exit with status 2)."""
    lines = []
    for child, _, stderr in results:
        assert child.returncode == 2, stderr[-3000:]
        assert "Traceback" not in stderr, stderr[-3000:]
        lines += [line for line in stderr.splitlines() if line.startswith("usage error:")]
    assert len(lines) == len(results), [r[2][-2000:] for r in results]
    return lines


def _masks(workdir: Path):
    from experiments import koopman_window, pipeline
    from experiments.config import PruneConfig
    setup = pipeline.Setup(PruneConfig(model="mnistnet_tiny", max_train_examples=512,
                                       max_test_examples=200, batch_size=64, seeds=(0,),
                                       compressions=(4,), trajectory_steps=4, methods=("kmp", "gmp"),
                                       rcond=(1e-6,)))
    window = koopman_window.cached_window(setup, str(workdir / "seed0" / "window.npz"))
    return {v.method: window.mask(setup, v, 4.0) for v in setup.variants}


def test_two_processes_run_the_prune_job_as_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    reference, pair = _start(one, 1), _start(two, 2)
    (ref,), runs = _wait(reference, pair)
    for child, stdout, stderr in (ref, *runs):
        assert child.returncode == 0, stderr[-3000:]
        assert "# Pruning mnistnet_tiny" in stdout  # every process prints the summary
    assert "process 1 of 2: 2 of the job's 4 devices" in runs[1][2]
    # Process 0 held the workdir and wrote the results, once.
    assert (two / ".lock").read_text().strip() == str(pair[0].pid)
    rows1 = json.loads((one / "results.json").read_text())["rows"]
    rows2 = json.loads((two / "results.json").read_text())["rows"]
    assert [(r["method"], r["phase"]) for r in rows2] == [(r["method"], r["phase"]) for r in rows1]
    assert len(rows2) == 6
    # The same masks, and the same accuracies up to the order of float
    # reductions (measured: the losses agree to the last bit; the Gram's
    # cross-process psum moves the scores by ~1e-8 of their largest value).
    for r1, r2 in zip(rows1, rows2):
        assert r2["top1"] == r1["top1"], (r1, r2)
        assert abs(r2["loss"] - r1["loss"]) <= 1e-5 * abs(r1["loss"]), (r1, r2)
    import jax
    masks1, masks2 = _masks(one), _masks(two)
    for method in masks1:
        for a, b in zip(jax.tree_util.tree_leaves(masks1[method]), jax.tree_util.tree_leaves(masks2[method])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The dense model's orbax checkpoint, written by both processes, restores here.
    from kpjax.io import checkpoints
    assert checkpoints.saved_steps(two / "seed0" / "dense") == [8]


def test_a_batch_that_does_not_divide_over_the_job_stops_every_process(tmp_path):
    lines = _usage_lines(_wait(_start(tmp_path / "w", 2, flags=["--batch_size=66"]))[0])
    assert all("--batch_size=66 does not divide over 4 devices (2 processes)" in line for line in lines)


def test_flags_that_differ_between_processes_are_named_in_every_process(tmp_path):
    results = _wait(_start(tmp_path / "w", 2, per_process={1: ["--compressions=8"]}))[0]
    for line in _usage_lines(results):
        assert "started with different flags" in line and "--compressions" in line, line


def test_a_device_subset_is_refused_on_several_processes(tmp_path):
    for line in _usage_lines(_wait(_start(tmp_path / "w", 2, flags=["--devices=1"]))[0]):
        assert "--devices=1 with 2 processes" in line, line


def test_a_process_that_never_comes_stops_the_others_after_the_timeout(tmp_path):
    port = _free_port()
    alone = _start(tmp_path / "w", 1, launch=False, devices=2, flags=[
        f"--coordinator_address=localhost:{port}", "--num_processes=2", "--process_id=0",
        "--distributed_timeout=3"])
    line, = _usage_lines(_wait(alone, timeout=120)[0])
    assert "distributed start failed within 3 s" in line and "process 0 of 2" in line, line


def test_a_workdir_in_use_stops_every_process(tmp_path):
    workdir = tmp_path / "w"
    workdir.mkdir()
    with open(workdir / ".lock", "w") as f:
        f.write("4242\n")
        f.flush()
        fcntl.flock(f, fcntl.LOCK_EX)
        results = _wait(_start(workdir, 2))[0]
    for line in _usage_lines(results):
        assert "in use by pid 4242" in line, line


@pytest.mark.parametrize("values, message", [
    ({"num_processes": 2, "process_id": 0}, "needs --coordinator_address"),
    ({"num_processes": 2, "process_id": 2, "coordinator_address": "h:1"}, "must be one of 0..1"),
    ({"num_processes": 2, "coordinator_address": "h:1"}, "must be one of 0..1"),
    ({"process_id": 1}, "with one process"),
    ({"num_processes": -1}, "--num_processes must be >= 1"),
    ({"distributed_timeout": 0}, "--distributed_timeout must be >= 1"),
])
def test_bad_launch_flags_are_refused(values, message, monkeypatch):
    from experiments import processes
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match=message):
        processes.launch(values)


def test_the_environment_variables_stand_in_for_the_flags(monkeypatch):
    from experiments import processes
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "host0:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    assert processes.launch({}) == {"coordinator_address": "host0:1234", "num_processes": 4,
                                    "process_id": 3, "timeout": 120}
    assert processes.launch({"process_id": 1})["process_id"] == 1  # a flag wins
    monkeypatch.setenv("JAX_NUM_PROCESSES", "four")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES must be an integer"):
        processes.launch({})
    assert processes.launch({"num_processes": 0})["num_processes"] is None  # detected by JAX


def test_a_launch_mistake_is_one_line_from_the_binary(tmp_path):
    line, = _usage_lines(_wait(_start(tmp_path / "w", 1, launch=False,
                                      flags=["--num_processes=2", "--process_id=0"]))[0])
    assert "needs --coordinator_address" in line, line
