"""End-to-end tests of experiments.prune and experiments.early (subprocesses, as users run them)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model=mnistnet_tiny", "--max_train_examples=384", "--max_test_examples=200",
        "--batch_size=64", "--eval_batch_size=100", "--seeds=0,1"]


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    # The binaries compile the same steps in every subprocess: share XLA's
    # persistent cache between them (JAX reads these from the environment).
    cache = tmp_path_factory.mktemp("jax_cache")
    saved = {k: os.environ.get(k) for k in ("JAX_COMPILATION_CACHE_DIR",
                                             "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(cache)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def run(module, *flags):
    return subprocess.run([sys.executable, "-m", module, *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def rows(path):
    return json.loads(path.read_text())["rows"]


def test_prune_end_to_end_files_compression_and_resume(tmp_path):
    work = tmp_path / "prune"
    first = run("experiments.prune", *TINY, "--trajectory_steps=6", "--compressions=2",
                "--methods=kmp,gmp,kgp,grad,random", f"--workdir={work}")
    assert first.returncode == 0, first.stderr[-3000:]
    for name in ("results.csv", "results.json", "overlap.csv", "summary.md",
                 "fig_accuracy.png", "fig_overlap.png", "fig_spectrum.png"):
        assert (work / name).stat().st_size > 0, name
    table = rows(work / "results.json")
    with open(work / "results.csv") as f:
        header = next(csv.reader(f))
    for column in ("model", "method", "compression", "seed", "phase", "top1", "top5", "loss",
                   "compression_achieved", "speedup", "seconds"):
        assert column in header
    cells = [r for r in table if r["method"] != "dense"]
    assert len(cells) == 5 * 2 * 2  # methods × seeds × (pruned, finetuned)
    for r in cells:
        assert abs(r["compression_achieved"] - 2.0) < 0.01
        assert r["speedup"] > 1.0
        assert 0.0 <= r["top1"] <= r["top5"] <= 1.0
    overlaps = rows(work / "overlap.json")
    assert {r["pair"] for r in overlaps} == {"kmp~gmp", "kgp~grad"}
    assert all(0.0 <= r["jaccard"] <= 1.0 for r in overlaps)
    assert "kmp" in (work / "summary.md").read_text()

    # A rerun with one more compression only computes the new cells.
    second = run("experiments.prune", *TINY, "--trajectory_steps=6", "--compressions=2,8",
                 "--methods=kmp,gmp,kgp,grad,random", f"--workdir={work}")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "20 cells, 10 to do" in second.stderr
    again = rows(work / "results.json")
    assert again[:len(table)] == table
    assert {r["compression"] for r in again if r["method"] != "dense"} == {2.0, 8.0}

    # Other settings in the same workdir are refused.
    other = run("experiments.prune", *TINY, "--trajectory_steps=7", f"--workdir={work}")
    assert other.returncode != 0 and "other settings" in other.stderr
    assert "Traceback" not in other.stderr


def test_early_end_to_end(tmp_path):
    work = tmp_path / "early"
    result = run("experiments.early", *TINY, "--window_steps=4", "--prune_epochs=0,1",
                 "--compressions=4", "--methods=kmp,gmp", "--finetune_epochs=0", f"--workdir={work}")
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("fig_accuracy_vs_epoch.png", "fig_overlap_vs_epoch.png",
                 "fig_lambda_vs_epoch.png", "fig_spectra.png", "summary.md", "windows.csv"):
        assert (work / name).stat().st_size > 0, name
    table = [r for r in rows(work / "results.json") if r["method"] != "dense"]
    assert {(r["prune_epoch"], r["method"], r["seed"]) for r in table} == {
        (e, m, s) for e in (0, 1) for m in ("kmp", "gmp") for s in (0, 1)}
    assert all(r["phase"] == "pruned" for r in table)
    windows = rows(work / "windows.json")
    assert len(windows) == 4
    assert all(w["lambda1_separation"] > 0 for w in windows)


@pytest.mark.parametrize("flags, message", [
    (["--model=nope"], "unknown model"),
    (["--methods=kmp,nope"], "unknown pruning method 'nope'"),
    (["--compressions=1"], "--compressions must be finite and > 1"),
    (["--compressions="], "--compressions must not be empty"),
    (["--finetune_epochs=-1"], "--finetune_epochs must be >= 0"),
    (["--pretrain_epochs=-2"], "--pretrain_epochs must be >= 0"),
    (["--model=resnet20"], "No cifar10 data found"),
])
def test_prune_bad_flags_stop_with_a_usage_error(flags, message, tmp_path):
    result = run("experiments.prune", *flags, f"--workdir={tmp_path / 'w'}")
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
