"""The prune → evaluate → refine pipeline shared by experiments.prune and .early.

Defines the flags both binaries take (model, data, methods, compressions,
seeds, the fine-tuning optimizer, …) and the steps they share: record a
window of training recording Θ, fit the Koopman operator and score every
method (cached per window), and run one (method, compression) cell.
"""

from __future__ import annotations

import io
import json
import os
import time
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging

from experiments import common
from experiments.results import atomic_write_bytes, atomic_write_json
from kpjax import data, flatten, koopman, metrics, pruning, recording, train

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "mnistnet", "Model name (kpjax.models.MODELS).")
flags.DEFINE_string("data", None, "mnist, cifar10 or synthetic; default: the model's dataset.")
flags.DEFINE_string("data_dir", None, "Directory with the original dataset archives.")
flags.DEFINE_bool("download", False, "Download missing archives with TFDS's download manager.")
flags.DEFINE_integer("synthetic_examples", 4096, "Training examples of --data=synthetic.")
flags.DEFINE_integer("max_train_examples", None, "Use only the first N training examples.")
flags.DEFINE_integer("max_test_examples", None, "Use only the first N test examples.")
flags.DEFINE_list("methods", ["kmp", "gmp", "kgp", "grad"], "Pruning methods (pruning.METHODS).")
flags.DEFINE_list("compressions", ["2", "4", "8", "16", "32"], "Compression ratios (total/nonzero).")
flags.DEFINE_list("seeds", ["0"], "Seeds: each has its own training run, window, gradient batch "
                  "and fine-tuning order.")
flags.DEFINE_integer("finetune_epochs", 1, "Epochs of refinement after pruning.")
flags.DEFINE_bool("prune_classifier", True, "Prune the classifier too (the paper does).")
flags.DEFINE_float("lr", 1e-3, "Fine-tuning learning rate (ShrinkBench: 1e-3).")
flags.DEFINE_float("momentum", 0.9, "Fine-tuning momentum.")
flags.DEFINE_bool("nesterov", True, "Fine-tuning Nesterov momentum.")
flags.DEFINE_float("weight_decay", 0.0, "Fine-tuning weight decay.")
flags.DEFINE_integer("batch_size", 128, "Training batch size.")
flags.DEFINE_integer("eval_batch_size", 1000, "Evaluation batch size.")
flags.DEFINE_enum("augment", "auto", ["auto", "on", "off"], "Random crop + flip; auto: on for cifar10.")
flags.DEFINE_enum("normalization", "pretrained", ["pretrained", "shrinkbench"],
                  "CIFAR-10 normalization constants (data.get_normalization).")
flags.DEFINE_float("rcond", koopman.DEFAULT_RCOND, "DMD rank cutoff σ_i > rcond·σ_max.")
flags.DEFINE_string("workdir", None, "Output directory; a rerun resumes from it.")

# Flags whose change makes earlier results of a workdir incomparable.
RUN_KEYS = ("model", "data", "max_train_examples", "max_test_examples", "finetune_epochs",
            "prune_classifier", "lr", "momentum", "nesterov", "weight_decay", "batch_size",
            "augment", "normalization", "rcond", "synthetic_examples")
PAIRS = (("kmp", "gmp"), ("kgp", "grad"))

# Batch orders: each purpose of a seed gets its own (seed * 1000 + purpose).
PRETRAIN, WINDOW, FINETUNE = 0, 1, 2


class Setup:
    """What every cell of a run shares, built once from the flags."""

    def __init__(self):
        self.spec = common.model_spec(FLAGS.model)
        if not FLAGS.methods:
            raise app.UsageError("--methods must not be empty")
        for m in FLAGS.methods:
            try:
                pruning.get_method(m)
            except ValueError as e:
                raise app.UsageError(str(e)) from None
        self.methods = list(FLAGS.methods)
        self.compressions = common.parse_floats("compressions", FLAGS.compressions)
        common.check_compressions(self.compressions)
        self.seeds = common.parse_ints("seeds", FLAGS.seeds)
        if FLAGS.finetune_epochs < 0:
            raise app.UsageError(f"--finetune_epochs must be >= 0, got {FLAGS.finetune_epochs}")
        for name in ("batch_size", "eval_batch_size", "synthetic_examples"):
            if getattr(FLAGS, name) < 1:
                raise app.UsageError(f"--{name} must be >= 1, got {getattr(FLAGS, name)}")
        if FLAGS.lr <= 0 or FLAGS.momentum < 0 or FLAGS.weight_decay < 0:
            raise app.UsageError("need --lr > 0, --momentum >= 0, --weight_decay >= 0")
        if not 0 <= FLAGS.rcond < 1:
            raise app.UsageError(f"--rcond must be in [0, 1), got {FLAGS.rcond}")
        self.dataset = common.load_data(
            self.spec, FLAGS.data, FLAGS.data_dir, FLAGS.download,
            synthetic_examples=FLAGS.synthetic_examples, max_train=FLAGS.max_train_examples,
            max_test=FLAGS.max_test_examples)
        self.steps_per_epoch = data.num_batches(len(self.dataset.train_labels), FLAGS.batch_size)
        self.normalize = common.normalize_fn(self.spec, self.dataset, FLAGS.normalization)
        augment = FLAGS.augment == "on" or (FLAGS.augment == "auto" and self.dataset.name == "cifar10")
        self.augment = data.augment_cifar if augment else None
        self.finetune_tx = train.make_optimizer(
            FLAGS.lr, momentum=FLAGS.momentum, nesterov=FLAGS.nesterov and FLAGS.momentum > 0,
            weight_decay=FLAGS.weight_decay)
        self.finetune_step = self.train_step(self.finetune_tx)
        self.eval_step = train.make_eval_step(self.spec.module.apply, normalize_fn=self.normalize)
        self.variables0 = common.init_variables(self.spec, 0)
        params = self.variables0["params"]
        self.select = pruning.prunable(params, include_classifier=FLAGS.prune_classifier,
                                       classifier=self.spec.classifier)
        self.flat_spec = flatten.flat_spec(params, self.select)
        self.flops = metrics.layer_flops(self.spec.module, self.variables0, self.spec.input_shape)

    def train_step(self, tx):
        return train.make_train_step(self.spec.module.apply, tx, augment_fn=self.augment,
                                     normalize_fn=self.normalize)

    def stream(self, seed: int, purpose: int, start_step: int = 0):
        return data.batch_stream(self.dataset.train_images, self.dataset.train_labels,
                                 FLAGS.batch_size, seed=seed * 1000 + purpose, start_step=start_step)

    def evaluate(self, state) -> dict[str, float]:
        return common.evaluate(self.eval_step, state, self.dataset, FLAGS.eval_batch_size)

    def state(self, variables, seed: int, tx=None, mask=None) -> train.TrainState:
        return train.create_train_state(variables["params"], tx or self.finetune_tx,
                                        jax.random.PRNGKey(seed),
                                        batch_stats=variables.get("batch_stats"), mask=mask)


def check_workdir(workdir: str, run_keys) -> None:
    """Refuses to mix results of different settings in one workdir."""
    os.makedirs(workdir, exist_ok=True)
    config = {k: getattr(FLAGS, k) for k in run_keys}
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        diff = {k: (saved.get(k), v) for k, v in config.items() if saved.get(k) != v}
        if diff:
            raise app.UsageError(
                f"--workdir={workdir} holds a run with other settings (saved, now): {diff}; "
                "use another --workdir")
    atomic_write_json(path, config)


def variables_of(state: train.TrainState) -> dict[str, Any]:
    out = {"params": state.params}
    if state.batch_stats:
        out["batch_stats"] = state.batch_stats
    return jax.tree_util.tree_map(np.asarray, out)


class Window:
    """The end of a recorded window: θ(t₂) with its BN statistics, every method's
    scores, and the Koopman fit's spectrum."""

    def __init__(self, variables, scores, eigenvalues, seconds):
        self.variables, self.scores, self.eigenvalues = variables, scores, eigenvalues
        self.seconds = seconds

    @property
    def lambda1(self) -> complex:
        return complex(self.eigenvalues[0]) if len(self.eigenvalues) else complex("nan")

    @property
    def lambda1_separation(self) -> float:
        if not len(self.eigenvalues):
            return float("nan")
        return koopman.fixed_point_separation(self.eigenvalues)


def cached_window(setup: Setup, path: str) -> Window | None:
    """The window saved by `record_window` at `path`, if complete."""
    if not os.path.exists(path):
        return None
    template = setup.variables0
    treedef = jax.tree_util.tree_structure(template)
    with np.load(path) as f:
        if any(f"score_{m}" not in f for m in setup.methods):
            return None
        leaves = [f[f"var{i}"] for i in range(treedef.num_leaves)]
        variables = jax.tree_util.tree_unflatten(treedef, leaves)
        scores = {m: pruning.scores_from_flat(f[f"score_{m}"], setup.flat_spec, variables["params"])
                  for m in setup.methods}
        logging.info("window restored from %s", path)
        return Window(variables, scores, f["eigenvalues"], float(f["seconds"]))


def record_window(setup: Setup, state: train.TrainState, step_fn, batches, steps: int,
                  seed: int, path: str, desc: str) -> Window:
    """Trains `steps` steps recording Θ, fits the Koopman operator, scores every method.

    The window's end θ(t₂), its scores and spectrum are saved to `path`
    (atomically) for `cached_window`. `state` is donated.
    """
    start = time.time()
    recorder = recording.make_recording_train_step(step_fn, setup.select)
    batches = iter(batches)
    state, theta = recording.record_trajectory(recorder, state, _with_progress(batches, steps, desc),
                                           steps, setup.select)
    fit = koopman.fit_trajectory(theta, rcond=FLAGS.rcond)
    lam = np.asarray(fit.eigenvalues)[np.asarray(fit.valid)]
    images, labels = next(batches)  # gradient pruning: the next batch, ShrinkBench-style
    _, grads = train.loss_and_grads(setup.spec.module.apply, state.params, state.batch_stats,
                                    setup.normalize(images), labels)
    inputs = pruning.PruneInputs(state.params, setup.select, grads=grads, snapshots=theta,
                                 spec=setup.flat_spec, fit=fit, rng=jax.random.PRNGKey(seed))
    scores = {m: pruning.method_scores(m, inputs) for m in setup.methods}
    del theta, inputs
    seconds = time.time() - start
    logging.info("%s: Koopman fit rank %d, λ₁ = %s; window + fit + scores %.1fs",
                 desc, lam.size, lam[0] if lam.size else None, seconds)
    variables = variables_of(state)
    arrays = {f"var{i}": x for i, x in enumerate(jax.tree_util.tree_leaves(variables))}
    arrays.update({f"score_{m}": np.asarray(flatten.ravel_with_spec(s, setup.flat_spec))
                   for m, s in scores.items()})
    buf = io.BytesIO()
    np.savez(buf, eigenvalues=lam, seconds=seconds, **arrays)
    atomic_write_bytes(path, buf.getvalue())
    return Window(variables, scores, lam, seconds)


def _with_progress(batches, steps: int, desc: str):
    progress = common.Progress(steps, f"{desc} window")
    for batch in batches:
        progress.update(1)
        yield batch


def row(setup: Setup, method: str, c: float, seed: int, phase: str, ev, params, mask,
        seconds: float, **extra) -> dict:
    return {
        "model": setup.spec.name, "data": setup.dataset.name, **extra, "method": method,
        "compression": c, "seed": seed, "phase": phase,
        "top1": ev["top1"], "top5": ev["top5"], "loss": ev["loss"],
        "compression_achieved": pruning.compression_ratio(params, mask),
        "speedup": metrics.theoretical_speedup(setup.flops, params, mask),
        "seconds": round(seconds, 2), "finetune_epochs": FLAGS.finetune_epochs,
    }


def dense_row(setup: Setup, window: Window, seed: int, **extra) -> dict:
    """θ(t₂) unpruned: the accuracy every method starts from."""
    start = time.time()
    state = setup.state(window.variables, seed)
    return row(setup, "dense", 1.0, seed, "dense", setup.evaluate(state), state.params,
               train.full_mask(state.params), time.time() - start, **extra)


def run_cell(setup: Setup, window: Window, method: str, c: float, seed: int, **extra) -> list[dict]:
    """Prune θ(t₂) with `method` at compression c, evaluate, refine, evaluate."""
    start = time.time()
    params = window.variables["params"]
    mask = pruning.method_mask(method, window.scores[method], params, setup.select, c)
    state = setup.state(window.variables, seed, mask=mask)
    rows = [row(setup, method, c, seed, "pruned", setup.evaluate(state), state.params, mask,
                time.time() - start, **extra)]
    if FLAGS.finetune_epochs:
        steps = FLAGS.finetune_epochs * setup.steps_per_epoch
        state = common.run_steps(setup.finetune_step, state, setup.stream(seed, FINETUNE), steps,
                                 f"seed {seed} {method} c={c:g} fine-tune")
        rows.append(row(setup, method, c, seed, "finetuned", setup.evaluate(state), state.params,
                        mask, time.time() - start, **extra))
    logging.info("seed %d %s c=%g %s: %s", seed, method, c, extra or "",
                 "  ".join(f"{r['phase']} top-1 {100 * r['top1']:.2f}%" for r in rows))
    return rows


def overlap_rows(setup: Setup, window: Window, seed: int, **extra) -> list[dict]:
    """Jaccard overlap of the kept sets of KMP/GMP and KGP/grad at every compression."""
    rows = []
    params = window.variables["params"]
    for a, b in PAIRS:
        if a in window.scores and b in window.scores:
            for c in setup.compressions:
                ma = pruning.method_mask(a, window.scores[a], params, setup.select, c)
                mb = pruning.method_mask(b, window.scores[b], params, setup.select, c)
                rows.append({"model": setup.spec.name, **extra, "pair": f"{a}~{b}",
                             "compression": c, "seed": seed,
                             "jaccard": pruning.mask_jaccard(ma, mb, setup.select)})
    return rows
