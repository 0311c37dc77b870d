"""Tests for experiments.config, .resources and .cli: configs checked before training.

Every check a binary makes before training is a ValueError, of the config's
constructor (values) or of `resources.check_resources` (files, devices, the
built model), tested here without a process; `test_experiments_prune.py`
checks once that `main` turns them into a one-line usage error.
"""

import dataclasses

import pytest

from experiments import cli, resources
from experiments.config import SGD, EarlyConfig, PruneConfig, TrainConfig


def test_defaults_are_valid_and_typed():
    prune, early, train = PruneConfig(), EarlyConfig(), TrainConfig()
    assert prune.methods == ("kmp", "gmp", "kgp", "grad")
    assert prune.compressions == (4.0, 16.0, 32.0) and prune.seeds == (0, 1, 2)  # the main job
    assert prune.rcond == early.rcond == (1e-6, 1e-7, 0.0)  # cutoff sensitivity
    assert early.methods == ("kmp", "kmp_subspace", "gmp")
    assert prune.finetune == SGD(lr=1e-3, momentum=0.9, nesterov=True)
    assert prune.train == train.train == SGD(lr=0.05, momentum=0.9, nesterov=False)
    # early's own defaults hold however it is used, not only as a script
    assert early.compressions == (4.0, 16.0)
    assert early.prune_epochs == (0, 1, 2, 4, 8)


def test_lists_are_converted_and_frozen():
    config = PruneConfig(methods=["gmp"], compressions=["2", 4], seeds="3")
    assert config.methods == ("gmp",) and config.compressions == (2.0, 4.0) and config.seeds == (3,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seeds = (1,)
    assert dataclasses.replace(config, seeds=(1, 2)).seeds == (1, 2)
    assert EarlyConfig(prune_epochs=(4, 0)).prune_epochs == (0, 4)


@pytest.mark.parametrize("kwargs, message", [
    (dict(model="nope"), "--model: unknown model 'nope'"),
    (dict(methods=("kmp", "nope")), "--methods: unknown pruning method 'nope'"),
    (dict(methods=()), "--methods must not be empty"),
    (dict(compressions=(1,)), "--compressions must be finite and > 1"),
    (dict(compressions=(float("nan"),)), "--compressions must be finite and > 1"),
    (dict(compressions=()), "--compressions must not be empty"),
    (dict(compressions=("x",)), "--compressions must be a list of numbers"),
    (dict(seeds=("a",)), "--seeds must be a list of integers"),
    (dict(seeds=(0, 0)), "--seeds lists a value twice"),
    (dict(seeds=(-1,)), "--seeds must be >= 0"),
    (dict(methods=("kmp", "kmp")), "--methods lists a value twice"),
    (dict(finetune_epochs=-1), "--finetune_epochs must be >= 0"),
    (dict(pretrain_epochs=-2), "--pretrain_epochs must be >= 0"),
    (dict(trajectory_steps=1), "--trajectory_steps must be >= 2"),
    (dict(batch_size=0), "--batch_size must be an integer in [1, 10000000], got 0"),
    (dict(max_train_examples=0), "--max_train_examples must be >= 1"),
    (dict(rcond=(1e-6, 1.0)), "--rcond must be in [0, 1), got 1"),
    (dict(rcond=(1e-6, 1e-6)), "--rcond lists a value twice"),
    (dict(rcond=()), "--rcond must not be empty"),
    (dict(finetune=SGD(lr=0.0)), "--finetune_lr out of range"),
    (dict(train=SGD(momentum=0.0, nesterov=True)), "--train_nesterov needs --train_momentum > 0"),
    (dict(model="resnet20"), "No cifar10 data found"),
    (dict(data="cifar10", data_dir="/nonexistent"), "No cifar10 data found"),
    # MnistNet's classifier holds 5,010 of 431,080 parameters: kept dense,
    # the rest can reach at most 86x.
    (dict(prune_classifier=False, compressions=(2, 100)), "compression 100.0 is impossible"),
    # 431,080 parameters in 8 prunable tensors: c = 60,000 keeps 7.
    (dict(compressions=(60000,)), "fewer than one per prunable tensor (8)"),
    (dict(finetune_epochs=10**27), "--finetune_epochs must be an integer in [0, 100000]"),
    (dict(pretrain_epochs=10**27), "--pretrain_epochs must be an integer in [0, 100000]"),
    (dict(seeds=(2**40,)), "--seeds must be <= 2147483647"),
    (dict(batch_size=10**12), "--batch_size must be an integer in [1, 10000000]"),
])
def test_prune_config_refuses_bad_values(kwargs, message):
    with pytest.raises(ValueError) as info:
        resources.check_resources(PruneConfig(**kwargs))
    assert message in str(info.value)


@pytest.mark.parametrize("kwargs, message", [
    (dict(prune_epochs=()), "--prune_epochs must not be empty"),
    (dict(prune_epochs=(1, 1)), "--prune_epochs lists a value twice"),
    (dict(window_steps=1), "--window_steps must be >= 2"),
    (dict(spline_canvas=1), "--spline_canvas must be 0"),
    (dict(spline_canvas=10**4), "--spline_canvas must be an integer in"),
    (dict(spline_lookback=0), "--spline_lookback must be an integer in"),
    (dict(spline_threshold=float("nan")), "--spline_threshold must be in"),
])
def test_early_config_refuses_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EarlyConfig(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), "--batch_size must be an integer in [1, 10000000], got 0"),
    (dict(steps=0), "--steps must be >= 1"),
    (dict(train=SGD(lr_boundaries=("a",))), "--train_lr_boundaries must be a list of integers"),
    (dict(train=SGD(lr_boundaries=(-1,))), "--train_lr_boundaries must be >= 0"),
    (dict(seed=-1), "--seed must be >= 0"),
    (dict(epochs=10**27), "--epochs must be an integer in [1, 100000]"),
    (dict(steps=10**12), "--steps must be an integer in [1, 1000000000]"),
])
def test_train_config_refuses_bad_values(kwargs, message):
    with pytest.raises(ValueError) as info:
        TrainConfig(**kwargs)
    assert message in str(info.value)


def test_build_config_from_flag_values():
    # What absl hands main: lists of strings, prefixed optimizer flags.
    values = {"methods": ["gmp", "kmp"], "compressions": ["2", "8"], "seeds": ["0", "1"],
              "finetune_lr": 0.01, "finetune_momentum": 0.5, "finetune_nesterov": False,
              "train_lr_boundaries": ["1"], "workdir": "w", "verbosity": 0}
    config = cli.build_config(PruneConfig, values)
    assert config.methods == ("gmp", "kmp") and config.compressions == (2.0, 8.0)
    assert config.finetune == SGD(lr=0.01, momentum=0.5, nesterov=False)
    assert config.train.lr_boundaries == (1,)
    # Every field of every config has a flag, with the config's default.
    names = [n for n, _, _, _ in cli._flag_fields(EarlyConfig)]
    assert len(names) == len(set(names))
    assert {"finetune_lr", "train_lr", "prune_epochs", "window_steps", "model"} <= set(names)
    defaults = {n: d for n, _, d, _ in cli._flag_fields(EarlyConfig)}
    assert defaults["methods"] == ("kmp", "kmp_subspace", "gmp") and defaults["finetune_lr"] == 1e-3


def test_more_devices_than_jax_sees_is_a_usage_error():
    import jax
    with pytest.raises(ValueError, match=f"--devices={len(jax.devices()) + 1}, but JAX sees"):
        resources.check_resources(PruneConfig(devices=len(jax.devices()) + 1))


@pytest.mark.parametrize("kwargs", [
    dict(model="resnet20"),  # no CIFAR-10 here
    dict(prune_classifier=False, compressions=(2, 100)),
    dict(compressions=(60000,)),
    dict(devices=10**5),
])
def test_construction_looks_at_values_only(kwargs):
    # What needs the data, the devices or the built model is check_resources'.
    config = PruneConfig(**kwargs)
    with pytest.raises(ValueError):
        resources.check_resources(config)


def test_only_one_level_of_config_classes():
    from experiments import config as module
    for cls in (module.TrainConfig, module.PruneConfig, module.EarlyConfig, module.InitConfig,
                module.CompareConfig, module.CoresetConfig, module.JumpConfig):
        assert all(len(base.__mro__) <= 2 for base in cls.__bases__), cls  # bases derive from object only
