"""--model=module.path:Attr: a user's Flax module in experiments.prune and .train."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import prune, resources, train, user_model
from experiments.config import PruneConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
MLP = "tests.user_models:TinyMLP"
SMALL = dict(max_train_examples=256, max_test_examples=100, batch_size=64, eval_batch_size=100)


def test_the_spec_of_a_module_without_train_wraps_it_and_finds_the_classifier():
    spec = resources.model_spec(PruneConfig(model=MLP))
    assert isinstance(spec.module, user_model.DropTrain)
    assert spec.name == MLP and spec.input_shape == (28, 28, 1) and spec.dataset == "mnist"
    assert spec.classifier == "Dense_1"  # the last Dense layer: the logits
    assert resources.model_spec(PruneConfig(model=MLP, input_shape=(8, 8, 1))).input_shape == (8, 8, 1)


def test_prune_runs_a_users_module_end_to_end(tmp_path):
    config = PruneConfig(model=MLP, **SMALL, seeds=(0,), trajectory_steps=4, compressions=(4,),
                         methods=("kmp", "gmp"), rcond=(1e-6,), prune_classifier=False)
    summary = prune.run(config, str(tmp_path / "w"))
    assert f"# Pruning {MLP} on mnist" in summary
    rows = json.loads((tmp_path / "w" / "results.json").read_text())["rows"]
    assert {r["method"] for r in rows} == {"dense", "kmp", "gmp"}
    assert all(r["model"] == MLP for r in rows)
    pruned = [r for r in rows if r["phase"] == "pruned"]
    assert all(r["compression_achieved"] > 3.9 for r in pruned)
    assert json.loads((tmp_path / "w" / "config.json").read_text())["model"] == MLP


def test_train_takes_a_factory_of_no_arguments():
    result = train.run(TrainConfig(model="tests.user_models:tiny_mlp", data="synthetic",
                                   synthetic_examples=128, batch_size=32, steps=3), None)
    assert result["steps"] == 3 and result["model"] == "tests.user_models:tiny_mlp"


@pytest.mark.parametrize("kwargs, message", [
    (dict(model="tests.nowhere:Net"), "--model=tests.nowhere:Net: cannot import tests.nowhere"),
    (dict(model="tests.user_models:Nope"), "--model=tests.user_models:Nope: module tests.user_models "
     "has no attribute Nope"),
    (dict(model="tests.user_models:NOT_A_MODULE"), "NOT_A_MODULE is not a Flax Linen module class"),
    (dict(model=MLP, input_shape=(0, 2)), "--input_shape must be positive integers"),
    (dict(model="mnistnet", input_shape=(28, 28, 1)), "--input_shape is for --model=module.path:Attr"),
    (dict(model=MLP, granularity="filter"), "--granularity=filter: structured pruning"),
    (dict(model=MLP, controls=("small_dense",)), "--controls=small_dense scales the widths"),
    (dict(model="not a path"), "--model: unknown model 'not a path'"),
])
def test_bad_user_models_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError) as info:
        resources.check_resources(PruneConfig(**kwargs))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_main_says_what_is_wrong_with_the_model_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "experiments.prune", "--model=tests.user_models:NOT_A_MODULE",
         "--granularity=weight", f"--workdir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[0].startswith(
        "usage error: --model=tests.user_models:NOT_A_MODULE: NOT_A_MODULE is not a Flax Linen")
