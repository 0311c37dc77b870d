"""The experiments' configurations: frozen dataclasses, validated when built.

One class per experiment (`TrainConfig`, `PruneConfig`, `EarlyConfig`), its
defaults in one place; the command-line flags are derived from the fields
(`experiments.cli`), so a flag, its default and its help are defined once.
A config is a plain value: build it in a notebook, `dataclasses.replace` a
field, pass it to the experiment's `run(config, workdir)`.

Why frozen dataclasses and not ml_collections.ConfigDict: typed fields with
defaults and inheritance for the parts experiments share, immutability (a
run cannot change its own settings), `__post_init__` as the one place where
a config is checked, `dataclasses.asdict` for config.json, and no
dependency. ConfigDict's strengths (override files, lazy references) are
not needed by three flat configurations.

Validation happens at construction, before any training: value ranges,
model, method and dataset names, the presence of the data files, and the
feasibility of every compression for the model's prunable set. Errors are
ValueErrors whose message starts with the flag (`--compressions ...`).
No flags are read and nothing is trained here.

May import: jax, numpy, kpjax.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from kpjax import data, koopman, models, pruning, train
from kpjax.pruning import structured
from kpjax.flatten import count_params


def opt(default: Any, help: str, kind: str | None = None, choices: tuple[str, ...] | None = None):
    """A config field with its flag's help, kind and choices.

    kind: 'str', 'int', 'float', 'bool', 'enum', 'floats', 'ints', 'strs'
    (comma-separated lists) or 'sgd' (a nested `SGD`, flags <field>_lr, ...);
    inferred from the default when it is a bool, int, float or str.
    """
    if kind is None:
        kind = {bool: "bool", int: "int", float: "float", str: "str"}[type(default)]
    if choices is not None:
        kind = "enum"
    return field(default=default, metadata={"help": help, "kind": kind, "choices": choices})


def _freeze(config: Any, name: str, convert, flag: str | None = None) -> None:
    """Sets a list-like field to a tuple of converted values (frozen-safe)."""
    value = getattr(config, name)
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        value = [value]
    try:
        converted = tuple(convert(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"--{flag or name} must be a list of {convert.__name__}s, got {value!r}") from None
    object.__setattr__(config, name, converted)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


# Upper bounds of integer flags: beyond them a value is a typo (10^27
# epochs), not a plan, and would run until killed or overflow int32 steps.
_MAX_STEPS = 10**9
_MAX_EPOCHS = 10**5
_MAX_SEED = 2**31 - 1  # PRNG keys and batch orders are seeded with 32-bit values


def _check_range(config: Any, name: str, low: int, high: int, none_ok: bool = False) -> None:
    value = getattr(config, name)
    if value is None and none_ok:
        return
    _check(isinstance(value, int) and not isinstance(value, bool) and low <= value <= high,
           f"--{name} must be an integer in [{low}, {high}], got {value!r}")


def _int(x: Any) -> int:
    if isinstance(x, bool) or float(x) != int(float(x)):
        raise ValueError(x)
    return int(float(x))


_int.__name__ = "integer"


# ---------------------------------------------------------------------------
# The optimizer: one concept, used for training and for fine-tuning.


@dataclass(frozen=True)
class SGD:
    """SGD as torch.optim.SGD (`kpjax.train.make_optimizer`), with step decay.

    In a config, a field `train: SGD` gives the flags --train_lr,
    --train_momentum, --train_nesterov, --train_weight_decay,
    --train_lr_boundaries and --train_lr_decay.
    """

    lr: float = opt(0.05, "learning rate η")
    momentum: float = opt(0.9, "momentum μ (0: plain SGD)")
    nesterov: bool = opt(False, "Nesterov momentum (needs momentum > 0)")
    weight_decay: float = opt(0.0, "L2 weight decay added to the gradient (PyTorch SGD)")
    lr_boundaries: tuple[int, ...] = opt((), "epochs at which η is multiplied by lr_decay", "ints")
    lr_decay: float = opt(0.1, "factor of η at each boundary")

    def check(self, prefix: str) -> None:
        _freeze(self, "lr_boundaries", _int, f"{prefix}_lr_boundaries")
        for name, ok in (("lr", math.isfinite(self.lr) and self.lr > 0),
                         ("momentum", 0 <= self.momentum < math.inf),
                         ("weight_decay", 0 <= self.weight_decay < math.inf),
                         ("lr_decay", 0 <= self.lr_decay < math.inf)):
            _check(ok, f"--{prefix}_{name} out of range: {getattr(self, name)}")
        _check(not (self.nesterov and self.momentum == 0),
               f"--{prefix}_nesterov needs --{prefix}_momentum > 0")
        _check(all(b >= 0 for b in self.lr_boundaries),
               f"--{prefix}_lr_boundaries must be >= 0, got {list(self.lr_boundaries)}")

    def optimizer(self, steps_per_epoch: int):
        schedule = self.lr
        if self.lr_boundaries:
            schedule = train.make_lr_schedule(
                self.lr, [b * steps_per_epoch for b in self.lr_boundaries], self.lr_decay)
        return train.make_optimizer(schedule, momentum=self.momentum, nesterov=self.nesterov,
                                    weight_decay=self.weight_decay)


# ---------------------------------------------------------------------------
# What every experiment shares: model, data, batches.


@dataclass(frozen=True)
class DataConfig:
    model: str = opt("mnistnet", "model: " + ", ".join(models.MODELS))
    data: str | None = opt(None, "dataset; default: the model's", "enum", data.DATASET_NAMES)
    data_dir: str | None = opt(None, "directory with the original dataset archives; or an image "
                               "folder (train/<class>/, test/<class>/) or a .tar/.tar.gz/.zip of "
                               "one, for --data=imagefolder and for cifar10", "str")
    download: bool = opt(False, "download missing archives with TFDS's download manager")
    synthetic_examples: int = opt(4096, "training examples of --data=synthetic")
    max_train_examples: int | None = opt(None, "use only the first N training examples (default all)", "int")
    max_test_examples: int | None = opt(None, "use only the first N test examples (default all)", "int")
    batch_size: int = opt(128, "training batch size")
    eval_batch_size: int = opt(1000, "evaluation batch size")
    devices: int = opt(1, "data-parallel training over this many devices (jax.devices()); 0 = all. "
                       "The batch is split over them, the state replicated (kpjax.koopman.sharded)")
    augment: str = opt("auto", "random crop + flip; auto: on for cifar10", choices=("auto", "on", "off"))
    normalization: str = opt("pretrained", "CIFAR-10 normalization constants (data.get_normalization)",
                             choices=("pretrained", "shrinkbench"))

    def __post_init__(self) -> None:
        try:
            models.get_model(self.model)
        except ValueError as e:
            raise ValueError(f"--model: {e}") from None
        for name in ("synthetic_examples", "batch_size", "eval_batch_size"):
            _check_range(self, name, 1, 10**7)
        _check_range(self, "devices", 0, 10**6)
        available = len(jax.devices())
        _check(self.devices <= available, f"--devices={self.devices}, but JAX sees {available} "
               "device(s) (on CPU: XLA_FLAGS=--xla_force_host_platform_device_count=N)")
        used = self.devices or available
        _check(self.batch_size % used == 0, f"--batch_size={self.batch_size} does not divide over "
               f"{used} devices; choose a multiple of {used}")
        for name in ("max_train_examples", "max_test_examples"):
            value = getattr(self, name)
            _check(value is None or value >= 1, f"--{name} must be >= 1 (omit it for all), got {value}")
            _check_range(self, name, 1, 10**9, none_ok=True)
        _check(self.augment in ("auto", "on", "off"), f"--augment must be auto, on or off, got {self.augment!r}")
        _check(self.normalization in ("pretrained", "shrinkbench"),
               f"--normalization must be pretrained or shrinkbench, got {self.normalization!r}")
        try:
            data.check_available(self.dataset_name, self.data_dir, self.download)
        except data.DataNotFoundError as e:  # an OSError; a config's errors are ValueErrors
            raise ValueError(str(e)) from None
        spec = self.spec()  # an image folder: decoded (and cached) here, so bad data stops the run now
        if self.data == "imagefolder":
            try:
                models.variable_shapes(spec)
            except (ValueError, TypeError, ZeroDivisionError) as e:  # shapes that do not fit the layers
                raise ValueError(f"--model={self.model} cannot take the image folder's "
                                 f"{'×'.join(map(str, spec.input_shape))} images "
                                 f"({type(e).__name__}: {e})") from None

    def spec(self) -> models.ModelSpec:
        """The model; for --data=imagefolder with the data's classes and image shape."""
        if self.data != "imagefolder":
            return models.get_model(self.model)
        shape, classes = data.image_folder_spec(self.data_dir)
        return models.get_model(self.model, classes)._replace(input_shape=shape)

    @property
    def dataset_name(self) -> str:
        return self.data or self.spec().dataset

    def check_sgd_fields(self) -> None:
        for f in dataclasses.fields(self):
            if f.metadata.get("kind") == "sgd":
                getattr(self, f.name).check(f.name)


# ---------------------------------------------------------------------------
# experiments.train


@dataclass(frozen=True)
class TrainConfig(DataConfig):
    train: SGD = opt(SGD(), "the training optimizer", "sgd")
    epochs: int = opt(1, "epochs to train")
    steps: int | None = opt(None, "total optimizer steps; overrides --epochs", "int")
    seed: int = opt(0, "seed of the initialization, shuffling and augmentation")
    checkpoint_every: int = opt(200, "checkpoint every this many steps (with a workdir)")
    log_every: int = opt(50, "log progress every this many steps")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_sgd_fields()
        for name in ("epochs", "checkpoint_every", "log_every"):
            _check(getattr(self, name) >= 1, f"--{name} must be >= 1, got {getattr(self, name)}")
        _check_range(self, "epochs", 1, _MAX_EPOCHS)
        _check_range(self, "checkpoint_every", 1, _MAX_STEPS)
        _check_range(self, "log_every", 1, _MAX_STEPS)
        _check(self.steps is None or self.steps >= 1, f"--steps must be >= 1, got {self.steps}")
        _check_range(self, "steps", 1, _MAX_STEPS, none_ok=True)
        _check(self.seed >= 0, f"--seed must be >= 0, got {self.seed}")
        _check_range(self, "seed", 0, _MAX_SEED)


# ---------------------------------------------------------------------------
# experiments.prune and experiments.early


def _parse_compression(x: Any) -> float:
    return float(x)


_parse_compression.__name__ = "number"


@dataclass(frozen=True)
class PruningConfig(DataConfig):
    """Prune θ(t₂) with every method at every compression, refine, evaluate."""

    methods: tuple[str, ...] = opt(("kmp", "gmp", "kgp", "grad"), "pruning methods", "strs")
    compressions: tuple[float, ...] = opt((2.0, 4.0, 8.0, 16.0, 32.0),
                                          "compression ratios (total / nonzero parameters)", "floats")
    seeds: tuple[int, ...] = opt((0,), "seeds: each has its own training run, window, gradient "
                                 "batch and fine-tuning order", "ints")
    finetune_epochs: int = opt(1, "epochs of refinement after pruning")
    finetune: SGD = opt(SGD(lr=1e-3, momentum=0.9, nesterov=True), "the fine-tuning optimizer "
                        "(ShrinkBench: lr 1e-3, momentum 0.9, Nesterov); also records the window", "sgd")
    prune_classifier: bool = opt(True, "prune the classifier too (the paper does)")
    synflow_rounds: int = opt(100, "rounds of iterative SynFlow (exponential schedule; 1: one shot)")
    score_batches: int = opt(1, "training batches the data-dependent scores are taken on (grad, "
                             "snip/lp, lp_biased, gn, grasp): the mean of their losses")
    # The cutoff decides KMP vs GMP on some trajectories (issue 12): the run's
    # 1e-6, the reference implementation's σ² > 1e-14 σ²max (1e-7), and no
    # truncation beyond exact zeros.
    rcond: tuple[float, ...] = opt(
        (koopman.DEFAULT_RCOND, 1e-7, 0.0), "DMD rank cutoffs (keep σ_i > rcond·σ_max): the first "
        "is the run's; the Koopman methods are also scored, pruned and evaluated (before "
        "refinement) at the others, from the same Gram matrix, for the sensitivity table", "floats")
    summarize_only: bool = opt(False, "only rewrite summary.md and the figures of a finished "
                               "workdir from its result files (no training; config.json untouched)")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_sgd_fields()
        _freeze(self, "methods", str)
        _freeze(self, "compressions", _parse_compression)
        _freeze(self, "seeds", _int)
        for name in ("methods", "compressions", "seeds"):
            values = getattr(self, name)
            _check(bool(values), f"--{name} must not be empty")
            # A repeated seed would be averaged as if it were another one.
            _check(len(set(values)) == len(values), f"--{name} lists a value twice: {list(values)}")
        for m in self.methods:
            try:
                pruning.get_method(m)
            except ValueError as e:
                raise ValueError(f"--methods: {e}") from None
        for c in self.compressions:
            _check(math.isfinite(c) and c > 1.0, f"--compressions must be finite and > 1, got {c:g}")
        _check(all(s >= 0 for s in self.seeds), f"--seeds must be >= 0, got {list(self.seeds)}")
        _check(all(s <= _MAX_SEED for s in self.seeds), f"--seeds must be <= {_MAX_SEED}")
        _check(self.finetune_epochs >= 0, f"--finetune_epochs must be >= 0, got {self.finetune_epochs}")
        _check_range(self, "finetune_epochs", 0, _MAX_EPOCHS)
        _check_range(self, "score_batches", 1, 10**4)
        _check_range(self, "synflow_rounds", 1, 10**4)
        _freeze(self, "rcond", _parse_compression)
        _check(bool(self.rcond), "--rcond must not be empty")
        _check(len(set(self.rcond)) == len(self.rcond), f"--rcond lists a value twice: {list(self.rcond)}")
        for r in self.rcond:
            _check(0 <= r < 1, f"--rcond must be in [0, 1), got {r:g}")
        self._check_feasible()

    def _check_feasible(self) -> None:
        """Every compression is reachable with the model's prunable set."""
        params = models.variable_shapes(self.spec())["params"]
        select = self.prunable(params)
        total, prunable = count_params(params), count_params(params, select)
        layers = sum(bool(s) for s in jax.tree_util.tree_leaves(select))
        for c in self.compressions:
            try:
                kept = round(pruning.keep_fraction(c, total, prunable) * prunable)
            except ValueError as e:
                raise ValueError(f"--compressions: {e} (model {self.model}"
                                 f"{'' if self.prune_classifier else ', classifier kept dense'})") from None
            # Below one kept weight per prunable tensor the network is cut
            # (global pruning would have to empty some layer).
            _check(kept >= layers, f"--compressions: {c:g} keeps {kept} of {prunable:,} prunable "
                   f"parameters, fewer than one per prunable tensor ({layers}) of {self.model}")

    def prunable(self, params: Any) -> Any:
        return pruning.prunable(params, include_classifier=self.prune_classifier,
                                classifier=self.spec().classifier)


CONTROLS = ("reinit", "small_dense")


@dataclass(frozen=True)
class WindowConfig(PruningConfig):
    """A dense model (imported, or trained from scratch) and one recorded
    window of fine-tuning per seed: what experiments.prune, .compare_dynamics
    and .coreset start from (`prune.seed_window`)."""

    seeds: tuple[int, ...] = opt((0, 1, 2), "seeds: each has its own training run, window, gradient "
                                 "batch and fine-tuning order", "ints")
    init_checkpoint: str | None = opt(
        None, "dense model: a PyTorch file (.pt/.th, e.g. the ShrinkBench weights) or an orbax "
        "checkpoint directory of experiments.train; default: train one (--pretrain_epochs)", "str")
    pretrain_epochs: int = opt(1, "epochs of training from scratch without --init_checkpoint")
    train: SGD = opt(SGD(), "the optimizer of training from scratch", "sgd")
    trajectory_steps: int | None = opt(
        None, "steps T of the recorded window; default one epoch (469 MNIST, 391 CIFAR-10)", "int")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.pretrain_epochs >= 0, f"--pretrain_epochs must be >= 0, got {self.pretrain_epochs}")
        _check_range(self, "pretrain_epochs", 0, _MAX_EPOCHS)
        _check(self.trajectory_steps is None or self.trajectory_steps >= 2,
               "--trajectory_steps must be >= 2 (a DMD fit needs 3 snapshots)")
        _check_range(self, "trajectory_steps", 2, 10**6, none_ok=True)


@dataclass(frozen=True)
class PruneConfig(WindowConfig):
    """The paper's Fig. 1: dense model → one recorded window → prune θ(t₂)."""

    # The default main job (`python -m experiments.prune`, no flags): 3 seeds so
    # that every gap has a spread, at 3 compressions so that it stays within
    # 15 minutes on 2 cores (measured: BUILD_NOTES); c = 2, where every method
    # is within 0.2 points of dense, and c = 8 are left out. The paper's
    # figure: --compressions=2,4,8,16,32.
    compressions: tuple[float, ...] = opt((4.0, 16.0, 32.0), "compression ratios (total / nonzero "
                                          "parameters); the paper's figure: 2,4,8,16,32", "floats")
    granularity: str = opt("weight", "what a method removes: single weights, or whole filters "
                           "and neurons (kpjax.pruning.structured: each unit scored by the L2 norm, or for "
                           "saliencies the sum, of the method's scores over its filter; the same "
                           "fraction of every layer's units; the shrunk network is refined)",
                           choices=("weight", "filter"))
    eval_shifts: bool = opt(False, "also evaluate every refined cell under input shifts "
                            "(kpjax.data.shifts: 5 corruptions × severities 1–5) and report each "
                            "method's prune potential")
    shift_examples: int = opt(2000, "test examples evaluated under each shift (the first N)")
    prune_potential_delta: float = opt(0.5, "prune potential: the largest compression within "
                                       "this many top-1 points of the unpruned network")
    controls: tuple[str, ...] = opt(
        (), "extra controls: reinit = each pruned cell's mask on re-initialized weights, trained "
        "from scratch for --pretrain_epochs + --finetune_epochs epochs; small_dense = a dense "
        "network with each compression's parameter count (widths scaled down), trained the "
        "same way", "strs")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.granularity in ("weight", "filter"),
               f"--granularity must be weight or filter, got {self.granularity!r}")
        if self.granularity == "filter":
            spec = self.spec()
            zeros = jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype),
                                           models.variable_shapes(spec))
            try:
                for c in self.compressions:
                    structured.fraction_for_compression(spec, zeros, c)
            except ValueError as e:
                raise ValueError(f"--granularity=filter: {e}") from None
        _check_range(self, "shift_examples", 1, 10**7)
        _check(math.isfinite(self.prune_potential_delta) and self.prune_potential_delta >= 0,
               f"--prune_potential_delta must be >= 0, got {self.prune_potential_delta}")
        _freeze(self, "controls", str)
        for control in self.controls:
            _check(control in CONTROLS, f"--controls: unknown control {control!r}; known: "
                   + ", ".join(CONTROLS))


@dataclass(frozen=True)
class EarlyConfig(PruningConfig):
    """KMP vs GMP on windows early in training from scratch.

    The question is KMP vs GMP, and 4 methods × 5 compressions would cost
    100 fine-tuning epochs for 5 windows: KMP, its stable subspace variant
    and GMP at two compressions.
    """

    methods: tuple[str, ...] = opt(("kmp", "kmp_subspace", "gmp"), "pruning methods", "strs")
    compressions: tuple[float, ...] = opt((4.0, 16.0), "compression ratios (total / nonzero parameters)",
                                          "floats")
    prune_epochs: tuple[int, ...] = opt((0, 1, 2, 4, 8), "epochs at which a window starts", "ints")
    window_steps: int | None = opt(None, "steps of each Koopman window; default one epoch", "int")
    window_stride: int = opt(0, "sliding windows: record the run once (first window's start to "
                             "the last one's end), fit every window of --window_steps steps every "
                             "this many steps from one banded Gram, and score the --prune_epochs "
                             "windows from it; 0: each window a branch recording")
    train: SGD = opt(SGD(), "the optimizer of the training run the windows branch from", "sgd")
    early_bird_patience: int = opt(5, "early-bird ticket: drawn when this many consecutive mask "
                                   "distances (between windows) are below --early_bird_eps")
    early_bird_eps: float = opt(0.1, "early-bird ticket: the mask distance threshold "
                                "(normalized Hamming, You et al. 2020)")

    def __post_init__(self) -> None:
        super().__post_init__()
        _freeze(self, "prune_epochs", _int)
        _check(bool(self.prune_epochs), "--prune_epochs must not be empty")
        _check(all(e >= 0 for e in self.prune_epochs), f"--prune_epochs must be >= 0, got {list(self.prune_epochs)}")
        _check(len(set(self.prune_epochs)) == len(self.prune_epochs),
               f"--prune_epochs lists a value twice: {list(self.prune_epochs)}")
        object.__setattr__(self, "prune_epochs", tuple(sorted(self.prune_epochs)))
        _check(all(e <= _MAX_EPOCHS for e in self.prune_epochs), f"--prune_epochs must be <= {_MAX_EPOCHS}")
        _check(self.window_steps is None or self.window_steps >= 2,
               "--window_steps must be >= 2 (a DMD fit needs 3 snapshots)")
        _check_range(self, "window_steps", 2, 10**6, none_ok=True)
        _check_range(self, "early_bird_patience", 1, 10**6)
        _check_range(self, "window_stride", 0, 10**6)
        _check(0 < self.early_bird_eps <= 1, f"--early_bird_eps must be in (0, 1], got {self.early_bird_eps}")


@dataclass(frozen=True)
class InitConfig(PruningConfig):
    """Pruning at initialization (SynFlow's protocol): prune θ₀, train, evaluate."""

    methods: tuple[str, ...] = opt(("random", "gmp", "snip", "grasp", "synflow", "kmp"),
                                   "pruning methods (gmp = magnitude at initialization; kmp = KMP "
                                   "of a --window_steps window from θ₀; synflow is iterative)", "strs")
    compressions: tuple[float, ...] = opt(
        tuple(round(10 ** (k / 2), 4) for k in range(1, 7)),
        "compression ratios, default 10^0.5 … 10^3", "floats")
    seeds: tuple[int, ...] = opt((0, 1, 2), "seeds: each has its own initialization, scoring batch "
                                 "and batch order", "ints")
    finetune_epochs: int = opt(1, "epochs of training after pruning at initialization")
    train: SGD = opt(SGD(), "the optimizer of the training after pruning", "sgd")
    window_steps: int = opt(20, "steps of the early window KMP is fitted on (counted in its "
                            "training budget)")
    rcond: tuple[float, ...] = opt((koopman.DEFAULT_RCOND,), "DMD rank cutoff of KMP's window", "floats")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_range(self, "window_steps", 2, 10**6)
        _check(len(self.rcond) == 1, "--rcond: pruning at initialization uses one cutoff")


@dataclass(frozen=True)
class CompareConfig(WindowConfig):
    """Comparing training dynamics (Redman et al. 2024): fine-tuning runs of
    the dense network and of its KMP- and GMP-pruned versions, each recorded
    and reduced to its Koopman spectrum."""

    methods: tuple[str, ...] = opt(("kmp", "gmp"), "pruning methods whose fine-tuning runs are "
                                   "compared with the dense run", "strs")
    compressions: tuple[float, ...] = opt((16.0,), "compression ratios of the pruned runs", "floats")
    record_steps: int = opt(200, "fine-tuning steps recorded per run (Θ in memory: "
                            "(steps + 1) · N · 4 bytes)")
    components: int = opt(10, "principal components each run is projected on")
    delays: int = opt(4, "delay embedding length")
    top: int = opt(10, "eigenvalues (largest modulus) in a run's signature")
    permutations: int = opt(1000, "relabellings of the shuffle test")
    rcond: tuple[float, ...] = opt((koopman.DEFAULT_RCOND,), "DMD rank cutoff of the pruning "
                                   "window's fit (KMP)", "floats")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_range(self, "record_steps", 2, 10**6)
        _check_range(self, "components", 1, 10**4)
        _check_range(self, "delays", 1, 10**4)
        _check_range(self, "top", 1, 10**4)
        _check_range(self, "permutations", 1, 10**7)
        _check(self.components * self.delays >= self.top,
               f"--top={self.top} needs --components · --delays >= {self.top}")
        _check(self.record_steps + 2 - self.delays >= self.top + 1,
               f"--record_steps={self.record_steps} is too short for --delays={self.delays} "
               f"and --top={self.top}")
        _check(len(self.seeds) >= 2, "--seeds: the shuffle test needs at least 2 seeds per run type")
        _check(len(self.rcond) == 1, "--rcond: the comparison uses one cutoff")


@dataclass(frozen=True)
class CoresetConfig(WindowConfig):
    """Neuron pruning of MnistNet's fc1: coreset against L2 neuron norm and KMP per neuron."""

    methods: tuple[str, ...] = opt(("kmp", "gmp"), "per-weight scores reduced per neuron beside "
                                   "the coreset (gmp: the L2 norm of the neuron's weights)", "strs")
    fractions: tuple[float, ...] = opt((0.5, 0.25, 0.1, 0.05), "kept fractions of fc1's neurons",
                                       "floats")
    compressions: tuple[float, ...] = opt((2.0,), "unused: the kept fractions of fc1 set the size",
                                          "floats")
    sample_examples: int = opt(512, "training examples the coreset's sensitivities are taken on")
    rcond: tuple[float, ...] = opt((koopman.DEFAULT_RCOND,), "DMD rank cutoff of the window's fit",
                                   "floats")

    def __post_init__(self) -> None:
        super().__post_init__()
        _freeze(self, "fractions", float)
        _check(bool(self.fractions) and all(0 < f <= 1 for f in self.fractions),
               f"--fractions must be in (0, 1], got {list(self.fractions)}")
        _check(isinstance(self.spec().module, models.MnistNet),
               "--model: the coreset experiment prunes MnistNet's fc1")
        _check_range(self, "sample_examples", 1, 10**6)


@dataclass(frozen=True)
class JumpConfig(DataConfig):
    """Koopman-accelerated training (Dogra & Redman 2020) against plain SGD
    with the same number of gradient evaluations."""

    train: SGD = opt(SGD(lr=0.01), "the optimizer of both runs", "sgd")
    seeds: tuple[int, ...] = opt((0, 1, 2), "seeds: initialization and batch order of both runs", "ints")
    budget: int | None = opt(None, "gradient evaluations of the accelerated run; default 2 epochs",
                             "int")
    sgd_factor: float = opt(2.0, "plain SGD runs this many times the budget, so that the steps it "
                            "needs to match the accelerated run can be read off its curve")
    window: int = opt(50, "SGD steps recorded before each jump (the DMD window)")
    jump: int = opt(50, "τ: steps the jump predicts ahead, θ ← Re Σ b_i λ_i^(w+τ) φ_i")
    increment: bool = opt(False, "jump by the drift of the modes with |λ| ≤ 1 from θ(w) instead, "
                          "θ ← θ(w) + Re Σ_{|λ_i|≤1} b_i λ_i^w (λ_i^τ − 1) φ_i "
                          "(koopman.jump_increment): growing modes are not extrapolated")
    max_residual: float = opt(0.05, "jump only when the fixed-point mode's residual "
                              "‖Yv − λXv‖/‖Xv‖ is at most this")
    reset_momentum: bool = opt(True, "zero the momentum buffer after a jump (it describes the "
                               "trajectory before the jump)")
    eval_every: int = opt(100, "evaluate both runs every this many gradient evaluations")
    rcond: float = opt(koopman.DEFAULT_RCOND, "DMD rank cutoff of each window's fit")
    summarize_only: bool = opt(False, "only rewrite summary.md and the figure from the result files")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_sgd_fields()
        _freeze(self, "seeds", _int)
        _check(bool(self.seeds) and len(set(self.seeds)) == len(self.seeds),
               f"--seeds must be distinct and not empty, got {list(self.seeds)}")
        _check(all(0 <= s <= _MAX_SEED for s in self.seeds), f"--seeds must be in [0, {_MAX_SEED}]")
        _check_range(self, "budget", 1, _MAX_STEPS, none_ok=True)
        _check(math.isfinite(self.sgd_factor) and 1 <= self.sgd_factor <= 100,
               f"--sgd_factor must be in [1, 100], got {self.sgd_factor}")
        _check_range(self, "window", 2, 10**6)
        _check_range(self, "jump", 1, 10**6)
        _check_range(self, "eval_every", 1, _MAX_STEPS)
        _check(self.max_residual >= 0, f"--max_residual must be >= 0, got {self.max_residual}")
        _check(0 <= self.rcond < 1, f"--rcond must be in [0, 1), got {self.rcond}")


def to_json(config: Any) -> dict[str, Any]:
    """The config as JSON-ready values (tuples become lists)."""
    return json_ready(dataclasses.asdict(config))


def json_ready(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    return x
