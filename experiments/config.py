"""The experiments' configurations: frozen dataclasses of plain values.

One class per experiment binary (`TrainConfig`, `PruneConfig`, `EarlyConfig`,
...), its defaults in one place; the command-line flags are derived from the
fields (`experiments.cli`), so a flag, its default and its help are defined
once. A config is a plain value: build it in a notebook, `dataclasses.replace`
a field, pass it to the experiment's `run(config, workdir)`.

Why frozen dataclasses and not ml_collections.ConfigDict: typed fields with
defaults, immutability (a run cannot change its own settings),
`__post_init__` as the one place where values are checked,
`dataclasses.asdict` for config.json, and no dependency.

Shape: every config is `DataConfig` (model, data, batches) plus one class
per binary; the field groups that several binaries share are mixins
(`PruningFields`, `WindowFields`), so no class is more than two levels
deep. A mixin's fields come after DataConfig's, in the order of config.json.

Construction checks values only: ranges, names, list syntax. Nothing that
needs a file, a device or a built model is looked at here: that is
`experiments.resources.check_resources(config)`, which each binary's `run`
calls before any training. Errors are ValueErrors whose message starts
with the flag (`--compressions ...`). No flags are read and nothing is
trained here.

May import: kpjax, experiments.fields, experiments.user_model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from experiments import user_model
from experiments.fields import (MAX_EPOCHS, MAX_SEED, MAX_STEPS, SGD, check, check_range, freeze,
                                integer, number, opt)
from kpjax import data, koopman, models, pruning
from kpjax.io import metric_writer

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

    input_shape: tuple[int, ...] = opt((), "one example's shape H,W,C for --model=module.path:Attr "
                                       "(default: the dataset's image shape)", "ints")

    def __post_init__(self) -> None:
        self.check_data()

    def check_data(self) -> None:
        """The values every config shares; the optimizers' too (`SGD.check`)."""
        known = self.model in models.MODELS or user_model.is_import_path(self.model)
        check(known, f"--model: unknown model {self.model!r}; known models: "
              f"{', '.join(models.MODELS)}, or a Flax module by import path (module.path:Attr)")
        freeze(self, "input_shape", integer)
        check(all(d >= 1 for d in self.input_shape),
              f"--input_shape must be positive integers, got {list(self.input_shape)}")
        check(not self.input_shape or user_model.is_import_path(self.model),
              f"--input_shape is for --model=module.path:Attr; --model={self.model} has its own")
        for name in ("synthetic_examples", "batch_size", "eval_batch_size"):
            check_range(self, name, 1, 10**7)
        check_range(self, "devices", 0, 10**6)
        for name in ("max_train_examples", "max_test_examples"):
            value = getattr(self, name)
            check(value is None or value >= 1, f"--{name} must be >= 1 (omit it for all), got {value}")
            check_range(self, name, 1, 10**9, none_ok=True)
        check(self.augment in ("auto", "on", "off"), f"--augment must be auto, on or off, got {self.augment!r}")
        check(self.normalization in ("pretrained", "shrinkbench"),
              f"--normalization must be pretrained or shrinkbench, got {self.normalization!r}")
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
        self.check_data()
        for name in ("epochs", "checkpoint_every", "log_every"):
            check(getattr(self, name) >= 1, f"--{name} must be >= 1, got {getattr(self, name)}")
        check_range(self, "epochs", 1, MAX_EPOCHS)
        check_range(self, "checkpoint_every", 1, MAX_STEPS)
        check_range(self, "log_every", 1, MAX_STEPS)
        check(self.steps is None or self.steps >= 1, f"--steps must be >= 1, got {self.steps}")
        check_range(self, "steps", 1, MAX_STEPS, none_ok=True)
        check(self.seed >= 0, f"--seed must be >= 0, got {self.seed}")
        check_range(self, "seed", 0, MAX_SEED)


# ---------------------------------------------------------------------------
# experiments.prune and experiments.early


@dataclass(frozen=True)
class PruningFields:
    """Prune θ(t₂) with every method at every compression, refine, evaluate:
    the fields of experiments.prune, .early, .init, .compare_dynamics and .coreset."""

    methods: tuple[str, ...] = opt(("kmp", "gmp", "kgp", "grad"), "pruning methods", "strs")
    compressions: tuple[float, ...] = opt((2.0, 4.0, 8.0, 16.0, 32.0),
                                          "compression ratios (total / nonzero parameters)", "floats")
    seeds: tuple[int, ...] = opt((0,), "seeds: each has its own training run, window, gradient "
                                 "batch and fine-tuning order", "ints")
    finetune_epochs: int = opt(1, "epochs of refinement after pruning")
    finetune: SGD = opt(SGD(lr=1e-3, momentum=0.9, nesterov=True), "the fine-tuning optimizer "
                        "(ShrinkBench: lr 1e-3, momentum 0.9, Nesterov); also records the window", "sgd")
    prune_classifier: bool = opt(True, "prune the classifier too (the paper does)")
    prune_biases: bool = opt(True, "prune conv/dense biases too (ShrinkBench does; GraSP's and "
                             "SynFlow's reference code prune kernels only)")
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

    def check_pruning(self) -> None:
        freeze(self, "methods", str)
        freeze(self, "compressions", number)
        freeze(self, "seeds", integer)
        for name in ("methods", "compressions", "seeds"):
            values = getattr(self, name)
            check(bool(values), f"--{name} must not be empty")
            # A repeated seed would be averaged as if it were another one.
            check(len(set(values)) == len(values), f"--{name} lists a value twice: {list(values)}")
        for m in self.methods:
            try:
                pruning.get_method(m)
            except ValueError as e:
                raise ValueError(f"--methods: {e}") from None
        for c in self.compressions:
            check(math.isfinite(c) and c > 1.0, f"--compressions must be finite and > 1, got {c:g}")
        check(all(s >= 0 for s in self.seeds), f"--seeds must be >= 0, got {list(self.seeds)}")
        check(all(s <= MAX_SEED for s in self.seeds), f"--seeds must be <= {MAX_SEED}")
        check(self.finetune_epochs >= 0, f"--finetune_epochs must be >= 0, got {self.finetune_epochs}")
        check_range(self, "finetune_epochs", 0, MAX_EPOCHS)
        check_range(self, "score_batches", 1, 10**4)
        check_range(self, "synflow_rounds", 1, 10**4)
        freeze(self, "rcond", number)
        check(bool(self.rcond), "--rcond must not be empty")
        check(len(set(self.rcond)) == len(self.rcond), f"--rcond lists a value twice: {list(self.rcond)}")
        for r in self.rcond:
            check(0 <= r < 1, f"--rcond must be in [0, 1), got {r:g}")


CONTROLS = ("reinit", "small_dense")
GRASP_SCORING = ("wang", "shared")
GRASP_PER_CLASS = 10  # Wang et al.'s samples per class for GraSP (their CIFAR-10 setting)


@dataclass(frozen=True)
class WindowFields:
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

    def check_window(self) -> None:
        check(self.pretrain_epochs >= 0, f"--pretrain_epochs must be >= 0, got {self.pretrain_epochs}")
        check_range(self, "pretrain_epochs", 0, MAX_EPOCHS)
        check(self.trajectory_steps is None or self.trajectory_steps >= 2,
              "--trajectory_steps must be >= 2 (a DMD fit needs 3 snapshots)")
        check_range(self, "trajectory_steps", 2, 10**6, none_ok=True)


@dataclass(frozen=True)
class PruneConfig(WindowFields, PruningFields, DataConfig):
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
        self.check_data()
        self.check_pruning()
        self.check_window()
        check(self.granularity in ("weight", "filter"),
              f"--granularity must be weight or filter, got {self.granularity!r}")
        # Which compressions filter pruning reaches is a fact of the built
        # model: `experiments.resources.check_resources`.
        check(self.granularity == "weight" or self.model in models.MODELS,
              f"--granularity=filter: structured pruning (kpjax.pruning.structured) knows the "
              f"unit groups of MnistNet and the CIFAR ResNets only, not --model={self.model}; "
              "use --granularity=weight")
        check_range(self, "shift_examples", 1, 10**7)
        check(math.isfinite(self.prune_potential_delta) and self.prune_potential_delta >= 0,
              f"--prune_potential_delta must be >= 0, got {self.prune_potential_delta}")
        freeze(self, "controls", str)
        for control in self.controls:
            check(control in CONTROLS, f"--controls: unknown control {control!r}; known: "
                  + ", ".join(CONTROLS))
        check("small_dense" not in self.controls or self.model in models.MODELS,
              f"--controls=small_dense scales the widths of the registry's models "
              f"(kpjax.models.scale_width), not of --model={self.model}")


@dataclass(frozen=True)
class EarlyConfig(PruningFields, DataConfig):
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
    spline_canvas: int = opt(100, "spline early-bird (You et al. 2022): the canvas is this many "
                             "squared inputs between two test images; 0: off")
    spline_lookback: int = opt(3, "spline early-bird: drawn when the code distances to this many "
                               "previous windows are all below --spline_threshold")
    spline_threshold: float = opt(0.16, "spline early-bird: the code distance threshold")

    def __post_init__(self) -> None:
        self.check_data()
        self.check_pruning()
        freeze(self, "prune_epochs", integer)
        check(bool(self.prune_epochs), "--prune_epochs must not be empty")
        check(all(e >= 0 for e in self.prune_epochs), f"--prune_epochs must be >= 0, got {list(self.prune_epochs)}")
        check(len(set(self.prune_epochs)) == len(self.prune_epochs),
              f"--prune_epochs lists a value twice: {list(self.prune_epochs)}")
        object.__setattr__(self, "prune_epochs", tuple(sorted(self.prune_epochs)))
        check(all(e <= MAX_EPOCHS for e in self.prune_epochs), f"--prune_epochs must be <= {MAX_EPOCHS}")
        check(self.window_steps is None or self.window_steps >= 2,
              "--window_steps must be >= 2 (a DMD fit needs 3 snapshots)")
        check_range(self, "window_steps", 2, 10**6, none_ok=True)
        check_range(self, "early_bird_patience", 1, 10**6)
        check_range(self, "window_stride", 0, 10**6)
        check(0 < self.early_bird_eps <= 1, f"--early_bird_eps must be in (0, 1], got {self.early_bird_eps}")
        check_range(self, "spline_canvas", 0, 1000)
        check(self.spline_canvas != 1, "--spline_canvas must be 0 (off) or >= 2, got 1")
        check_range(self, "spline_lookback", 1, 10**6)
        check(0 < self.spline_threshold <= 1, f"--spline_threshold must be in (0, 1], got {self.spline_threshold}")


@dataclass(frozen=True)
class InitConfig(PruningFields, DataConfig):
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
    score_per_class: int = opt(0, "score the data-dependent methods on one class-balanced batch of "
                               "this many training examples per class (Wang et al.'s GraSP: 10 "
                               "for 10 classes); 0: on --score_batches batches of the stream")
    score_reinit_dense: bool = opt(False, "score the data-dependent methods on θ₀ with its dense "
                                   "kernels re-drawn (Xavier normal, Wang et al.'s GraSP reinit); "
                                   "the mask still prunes θ₀")
    # results/grasp_ablation_mnistnet_seeds012: scored on θ₀ itself with a
    # random batch, GraSP collapses (30.45 ± 34.18 % at c = 3.16); with Wang
    # et al.'s re-drawn dense kernels and class-balanced batch, 98.08 ± 0.39 %.
    grasp_scoring: str = opt("wang", "what GraSP (and its sign variants) scores: wang = θ₀ with "
                             "its dense kernels re-drawn (Xavier normal) on 10 training images per "
                             "class, as Wang et al.'s code; shared = what the other data-dependent "
                             "methods score (--score_batches, --score_per_class, --score_reinit_dense)",
                             choices=GRASP_SCORING)

    def __post_init__(self) -> None:
        self.check_data()
        self.check_pruning()
        check_range(self, "window_steps", 2, 10**6)
        check_range(self, "score_per_class", 0, 10**4)
        check(len(self.rcond) == 1, "--rcond: pruning at initialization uses one cutoff")
        check(self.grasp_scoring in GRASP_SCORING,
              f"--grasp_scoring must be one of {', '.join(GRASP_SCORING)}, got {self.grasp_scoring!r}")


@dataclass(frozen=True)
class GradientFlowConfig(PruningFields, DataConfig):
    """Lubana & Dick's claims: prune at points early in training from scratch,
    measure the gradient flow at the cut, keep training."""

    methods: tuple[str, ...] = opt(("gmp", "lp", "lp_biased", "gn", "grasp", "kmp"),
                                   "pruning methods (kmp: of a --window_steps window from the "
                                   "point, counted in its budget)", "strs")
    compressions: tuple[float, ...] = opt((10.0,), "compression ratios (total / nonzero parameters)",
                                          "floats")
    seeds: tuple[int, ...] = opt((0, 1, 2), "seeds: each has its own training run, scoring "
                                 "batches and batch order", "ints")
    prune_points: tuple[float, ...] = opt((0.0, 0.1, 0.5, 1.0, 2.0), "epochs of the training "
                                          "run at which it is pruned (step round(e·S))", "floats")
    finetune_epochs: int = opt(1, "epochs of training after pruning (the --train_* optimizer, "
                               "its momentum restarted)")
    train: SGD = opt(SGD(), "the optimizer of the run and of the training after pruning", "sgd")
    # Lubana & Dick estimate g on 10,000 images (their config.py); 8 batches
    # of 128 keep H g cheap on a CPU.
    score_batches: int = opt(8, "training batches the scores and the gradient-flow measures "
                             "are taken on (the mean of their losses)")
    window_steps: int = opt(20, "steps of KMP's window from the point (counted in its budget)")
    rcond: tuple[float, ...] = opt((koopman.DEFAULT_RCOND,), "DMD rank cutoff of KMP's window", "floats")
    early_steps: int = opt(100, "convergence speed: the mean training loss over this many steps "
                           "after pruning")
    curve_every: int = opt(10, "the training-loss curve after pruning: the mean of every this many steps")

    def __post_init__(self) -> None:
        self.check_data()
        self.check_pruning()
        freeze(self, "prune_points", number)
        points = self.prune_points
        check(bool(points), "--prune_points must not be empty")
        check(all(math.isfinite(p) and 0 <= p <= MAX_EPOCHS for p in points),
              f"--prune_points must be in [0, {MAX_EPOCHS}], got {list(points)}")
        check(len(set(points)) == len(points), f"--prune_points lists a value twice: {list(points)}")
        object.__setattr__(self, "prune_points", tuple(sorted(points)))
        check(self.finetune_epochs >= 1, "--finetune_epochs must be >= 1: the claims are about "
              "training after pruning")
        check_range(self, "window_steps", 2, 10**6)
        check_range(self, "early_steps", 1, MAX_STEPS)
        check_range(self, "curve_every", 1, MAX_STEPS)
        check(len(self.rcond) == 1, "--rcond: the gradient-flow study uses one cutoff")


@dataclass(frozen=True)
class CompareConfig(WindowFields, PruningFields, DataConfig):
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
        self.check_data()
        self.check_pruning()
        self.check_window()
        check_range(self, "record_steps", 2, 10**6)
        check_range(self, "components", 1, 10**4)
        check_range(self, "delays", 1, 10**4)
        check_range(self, "top", 1, 10**4)
        check_range(self, "permutations", 1, 10**7)
        check(self.components * self.delays >= self.top,
              f"--top={self.top} needs --components · --delays >= {self.top}")
        check(self.record_steps + 2 - self.delays >= self.top + 1,
              f"--record_steps={self.record_steps} is too short for --delays={self.delays} "
              f"and --top={self.top}")
        check(len(self.seeds) >= 2, "--seeds: the shuffle test needs at least 2 seeds per run type")
        check(len(self.rcond) == 1, "--rcond: the comparison uses one cutoff")


@dataclass(frozen=True)
class CoresetConfig(WindowFields, PruningFields, DataConfig):
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
        self.check_data()
        self.check_pruning()
        self.check_window()
        freeze(self, "fractions", float)
        check(bool(self.fractions) and all(0 < f <= 1 for f in self.fractions),
              f"--fractions must be in (0, 1], got {list(self.fractions)}")
        check(self.model in models.MODELS and isinstance(models.get_model(self.model).module,
                                                          models.MnistNet),
               "--model: the coreset experiment prunes MnistNet's fc1")
        check_range(self, "sample_examples", 1, 10**6)


SCHEDULE_KINDS = ("oneshot", "gradual", "imp")  # each with a method: "gradual:kmp"
FIXED_SPARSITY = ("rigl", "set")  # dynamic sparse training, no method


def parse_schedule(entry: str) -> tuple[str, str]:
    """'gradual:kmp' → ('gradual', 'kmp'); 'rigl' → ('rigl', 'rigl')."""
    if entry in FIXED_SPARSITY:
        return entry, entry
    kind, _, method = entry.partition(":")
    check(kind in SCHEDULE_KINDS and bool(method),
          f"--schedules: {entry!r} is not one of {', '.join(k + ':<method>' for k in SCHEDULE_KINDS)}, "
          f"{', '.join(FIXED_SPARSITY)}")
    try:
        pruning.get_method(method)
    except ValueError as e:
        raise ValueError(f"--schedules {entry}: {e}") from None
    return kind, method


@dataclass(frozen=True)
class GradualConfig(PruningFields, DataConfig):
    """Pruning during training from scratch, the same number of steps for
    every schedule: one-shot, gradual (Zhu & Gupta), IMP with rewinding,
    SET/RigL, with magnitude or Koopman (KMP of the last window) scores."""

    schedules: tuple[str, ...] = opt(
        ("oneshot:gmp", "gradual:gmp", "gradual:kmp", "imp:gmp", "rigl"),
        "what is compared beside the dense run: oneshot:<method> (prune once at --prune_end), "
        "gradual:<method> (Zhu & Gupta's cubic schedule), imp:<method> (iterative pruning with "
        "rewinding), rigl, set; a method reading a trajectory (kmp, kgp) is fitted on the "
        "--window_steps steps before each point", "strs")
    sparsities: tuple[float, ...] = opt((0.8, 0.9, 0.95, 0.98), "final sparsities (pruned fraction "
                                        "of the prunable parameters)", "floats")
    methods: tuple[str, ...] = opt(("gmp",), "unused: --schedules names the methods", "strs")
    compressions: tuple[float, ...] = opt((2.0,), "unused: --sparsities sets the size", "floats")
    seeds: tuple[int, ...] = opt((0, 1, 2), "seeds: each has its own initialization and batch order",
                                 "ints")
    epochs: int = opt(4, "training epochs of every run (IMP's rounds share them)")
    train: SGD = opt(SGD(), "the optimizer of every run", "sgd")
    finetune_epochs: int = opt(0, "unused: every schedule trains --epochs in all")
    prune_begin: float = opt(0.5, "gradual: epoch t₀ of the first pruning point")
    prune_end: float = opt(3.0, "gradual: the last point is at or before this epoch (n = "
                           "⌊(end − t₀)/Δt⌋ steps of Δt); one-shot prunes there")
    prune_every: int = opt(100, "gradual: Δt, steps between pruning points")
    window_steps: int = opt(50, "steps of the window a trajectory method is fitted on, ending at "
                            "the point (at most Δt, so windows do not span a pruning)")
    rcond: tuple[float, ...] = opt((koopman.DEFAULT_RCOND,), "DMD rank cutoff of the windows", "floats")
    imp_rounds: int = opt(4, "IMP: prunings R; each removes the same fraction of the survivors")
    imp_rewind_step: int = opt(50, "IMP: the step k the kept weights (and the whole training "
                               "state) are rewound to; 0: the original lottery ticket")
    rigl_every: int = opt(100, "SET/RigL: ΔT, steps between mask updates")
    rigl_alpha: float = opt(0.3, "SET/RigL: the initial update fraction α (cosine-decayed)")
    rigl_end: float = opt(0.75, "SET/RigL: the fraction of training after which the mask is fixed")
    rigl_distribution: str = opt("uniform", "SET/RigL: the sparsity of each tensor, uniform (all at "
                                 "the target) or erk (Erdős–Rényi-Kernel, Evci et al.'s default)",
                                 choices=("uniform", "erk"))
    tensorboard: bool = opt(False, "write TensorBoard event files (loss, per-layer sparsity, λ₁) "
                            "under <workdir>/tensorboard")
    export: bool = opt(False, "save every run's final θ ⊙ m and mask under <workdir>/exports/<cell> "
                       "(orbax + sparsity.json: kpjax.pruning.load_pruned reads it)")

    def __post_init__(self) -> None:
        self.check_data()
        freeze(self, "schedules", str)
        freeze(self, "sparsities", number)
        check(bool(self.schedules), "--schedules must not be empty")
        check(len(set(self.schedules)) == len(self.schedules),
              f"--schedules lists a value twice: {list(self.schedules)}")
        parsed = [parse_schedule(e) for e in self.schedules]
        methods = tuple(dict.fromkeys(m for k, m in parsed if k not in FIXED_SPARSITY)) or ("gmp",)
        object.__setattr__(self, "methods", methods)
        self.check_pruning()
        check(bool(self.sparsities) and len(set(self.sparsities)) == len(self.sparsities),
              f"--sparsities must be distinct values, got {list(self.sparsities)}")
        check(all(0 < s < 1 for s in self.sparsities),
              f"--sparsities must be in (0, 1) (1 prunes every weight), got {list(self.sparsities)}")
        check_range(self, "epochs", 1, MAX_EPOCHS)
        check(math.isfinite(self.prune_begin) and math.isfinite(self.prune_end)
              and 0 <= self.prune_begin < self.prune_end <= self.epochs,
              f"--prune_begin and --prune_end must satisfy 0 <= begin < end <= --epochs "
              f"({self.epochs}), got {self.prune_begin:g}, {self.prune_end:g}")
        check(self.prune_every >= 1, f"--prune_every (Δt) must be >= 1, got {self.prune_every}")
        check_range(self, "prune_every", 1, MAX_STEPS)
        check(self.window_steps >= 2, f"--window_steps must be >= 2 (a fit needs 3 snapshots), "
              f"got {self.window_steps}")
        check_range(self, "window_steps", 2, MAX_STEPS)
        check(len(self.rcond) == 1, "--rcond: pruning during training uses one cutoff")
        check_range(self, "imp_rounds", 1, 100)
        check_range(self, "imp_rewind_step", 0, MAX_STEPS)
        check_range(self, "rigl_every", 1, MAX_STEPS)
        check(0 < self.rigl_alpha <= 1, f"--rigl_alpha must be in (0, 1], got {self.rigl_alpha:g}")
        check(0 < self.rigl_end <= 1, f"--rigl_end must be in (0, 1], got {self.rigl_end:g}")
        check(self.rigl_distribution in ("uniform", "erk"),
              f"--rigl_distribution must be uniform or erk, got {self.rigl_distribution!r}")
        check(not self.tensorboard or metric_writer.available(),
              "--tensorboard needs tensorboardX: pip install 'kpjax[tensorboard]'")


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
        self.check_data()
        freeze(self, "seeds", integer)
        check(bool(self.seeds) and len(set(self.seeds)) == len(self.seeds),
              f"--seeds must be distinct and not empty, got {list(self.seeds)}")
        check(all(0 <= s <= MAX_SEED for s in self.seeds), f"--seeds must be in [0, {MAX_SEED}]")
        check_range(self, "budget", 1, MAX_STEPS, none_ok=True)
        check(math.isfinite(self.sgd_factor) and 1 <= self.sgd_factor <= 100,
              f"--sgd_factor must be in [1, 100], got {self.sgd_factor}")
        check_range(self, "window", 2, 10**6)
        check_range(self, "jump", 1, 10**6)
        check_range(self, "eval_every", 1, MAX_STEPS)
        check(self.max_residual >= 0, f"--max_residual must be >= 0, got {self.max_residual}")
        check(0 <= self.rcond < 1, f"--rcond must be in [0, 1), got {self.rcond}")


def to_json(config: Any) -> dict[str, Any]:
    """The config as JSON-ready values (tuples become lists)."""
    return json_ready(dataclasses.asdict(config))


def json_ready(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    return x
