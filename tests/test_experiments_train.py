"""Tests for experiments.train, in-process: resume, results, refusals.

(A workdir of another run is refused by `kpjax.train.loop`: tests/test_loop.py.)
"""

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import train as train_binary
from experiments.config import SGD, TrainConfig

TINY = dict(model="mnistnet_tiny", data="synthetic", synthetic_examples=200, batch_size=32,
            eval_batch_size=64, checkpoint_every=3, log_every=4,
            train=SGD(lr=0.05, momentum=0.9, nesterov=True))


def final_state(workdir, step):
    options = ocp.CheckpointManagerOptions(read_only=True)
    with ocp.CheckpointManager(workdir, options=options) as manager:
        return jax.tree_util.tree_leaves(manager.restore(step)["state"])


def test_resume_mid_epoch_matches_uninterrupted_run(tmp_path):
    # 200 examples / 32 = 7 steps an epoch; 16 steps cross two epoch ends.
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    a = train_binary.run(TrainConfig(**TINY, steps=16), str(whole))
    assert a["steps"] == 16 and a["train_img_per_s"] > 0
    for steps in (10, 16):  # stops mid-epoch 1 at step 10, then resumes
        b = train_binary.run(TrainConfig(**TINY, steps=steps), str(parts))
    assert b["test_loss"] == a["test_loss"] and b["steps"] == 16
    assert json.loads((parts / "results.json").read_text())["test_loss"] == a["test_loss"]
    for x, y in zip(final_state(whole, 16), final_state(parts, 16)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_images_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match=r"expects \(32, 32, 3\) images"):
        train_binary.run(TrainConfig(model="resnet_tiny", data="mnist"), None)
