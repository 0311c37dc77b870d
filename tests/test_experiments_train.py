"""Tests for the experiments.train binary (run as a subprocess, as users do)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model=mnistnet_tiny", "--data=synthetic",
        "--synthetic_examples=200", "--batch_size=32", "--eval_batch_size=64",
        "--checkpoint_every=3", "--log_every=4", "--nesterov"]


def run(*flags, cache_dir=None):
    env = dict(os.environ)
    if cache_dir is not None:  # later runs reuse the first one's compilations
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return subprocess.run([sys.executable, "-m", "experiments.train", *flags],
                          cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def final_state(workdir, step):
    options = ocp.CheckpointManagerOptions(read_only=True)
    with ocp.CheckpointManager(workdir, options=options) as manager:
        return jax.tree_util.tree_leaves(manager.restore(step)["state"])


def test_resume_mid_epoch_matches_uninterrupted_run(tmp_path):
    # 200 examples / 32 = 7 steps an epoch; 16 steps cross two epoch ends.
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    cache = tmp_path / "jax_cache"
    result = run(*TINY, "--steps=16", f"--workdir={whole}", cache_dir=cache)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "img/s" in result.stdout and "top-1" in result.stdout
    for steps in (10, 16):  # stops mid-epoch 1 at step 10, then resumes
        result = run(*TINY, f"--steps={steps}", f"--workdir={parts}",
                     cache_dir=cache)
        assert result.returncode == 0, result.stderr[-2000:]
    assert "Resumed from step 10 (epoch 1, batch 3)" in result.stderr
    a = json.loads((whole / "results.json").read_text())
    b = json.loads((parts / "results.json").read_text())
    assert a["test_loss"] == b["test_loss"] and a["steps"] == b["steps"] == 16
    for x, y in zip(final_state(whole, 16), final_state(parts, 16)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("flags, message", [
    (["--model=nope"], "unknown model"),
    (["--batch_size=0"], "--batch_size must be >= 1"),
    (["--lr_boundaries=a,b"], "integer epochs"),
    (["--model=resnet_tiny", "--data=mnist"], "expects (32, 32, 3) images"),
])
def test_bad_flags_give_a_usage_error(flags, message):
    result = run(*flags)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
