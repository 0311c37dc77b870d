r"""Compare Koopman pruning (KMP, KGP) with GMP and gradient pruning (the paper's Fig. 1).

For each seed: a dense model (from --init_checkpoint, or trained for
--pretrain_epochs), then --trajectory_steps steps with the fine-tuning
optimizer recording Θ, one Koopman fit; then for every method and
compression: prune θ(t₂) (the params at the end of the window, which every
method prunes), evaluate, fine-tune --finetune_epochs, evaluate again.

  python -m experiments.prune                      # MnistNet, embedded MNIST
  python -m experiments.prune --init_checkpoint=../shared/data/pretrained/mnistnet.pt --seeds=0,1,2
  python -m experiments.prune --model=resnet20 --data_dir=~/data/cifar10 \
      --init_checkpoint=../shared/data/pretrained/resnet20.th

Writes to --workdir: results.csv / results.json (one row per
model/method/compression/seed/phase), overlap.csv / overlap.json (Jaccard of
kept sets, KMP vs GMP and KGP vs grad), summary.md (mean ± std over seeds),
fig_accuracy.png, fig_overlap.png, fig_spectrum.png. A rerun with the same
--workdir skips finished cells; files are replaced atomically.
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

from experiments import common, plots
from experiments.results import (ResultTable, atomic_write_bytes, atomic_write_json, atomic_write_text,
                                 fmt_pm, group_mean_std, markdown_table)
from kpjax import checkpoints, data, koopman, metrics, pruning, train

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "mnistnet", "Model name (kpjax.models.MODELS).")
flags.DEFINE_string("data", None, "mnist, cifar10 or synthetic; default: the model's dataset.")
flags.DEFINE_string("data_dir", None, "Directory with the original dataset archives.")
flags.DEFINE_bool("download", False, "Download missing archives with TFDS's download manager.")
flags.DEFINE_integer("synthetic_examples", 4096, "Training examples of --data=synthetic.")
flags.DEFINE_integer("max_train_examples", None, "Use only the first N training examples.")
flags.DEFINE_integer("max_test_examples", None, "Use only the first N test examples.")
flags.DEFINE_string("init_checkpoint", None,
                    "Dense model: a PyTorch file (.pt/.th, e.g. the ShrinkBench weights) or an "
                    "orbax checkpoint directory of experiments.train; default: pretrain.")
flags.DEFINE_integer("pretrain_epochs", 1, "Epochs of training from scratch without --init_checkpoint.")
flags.DEFINE_float("pretrain_lr", 0.05, "Pretraining learning rate (SGD).")
flags.DEFINE_float("pretrain_momentum", 0.9, "Pretraining momentum.")
flags.DEFINE_float("pretrain_weight_decay", 0.0, "Pretraining weight decay.")
flags.DEFINE_integer("trajectory_steps", None,
                     "Steps T of the recorded window; default one epoch (469 MNIST, 391 CIFAR-10).")
flags.DEFINE_list("methods", ["kmp", "gmp", "kgp", "grad"], "Pruning methods (pruning.METHODS).")
flags.DEFINE_list("compressions", ["2", "4", "8", "16", "32"], "Compression ratios (total/nonzero).")
flags.DEFINE_list("seeds", ["0"], "Seeds: each has its own window, gradient batch and fine-tuning.")
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
flags.DEFINE_string("workdir", "runs/prune", "Output directory; a rerun resumes from it.")

# Flags whose change makes earlier results of a workdir incomparable.
_RUN_KEYS = ("model", "data", "max_train_examples", "max_test_examples", "init_checkpoint",
             "pretrain_epochs", "pretrain_lr", "pretrain_momentum", "pretrain_weight_decay",
             "trajectory_steps", "finetune_epochs", "prune_classifier", "lr", "momentum",
             "nesterov", "weight_decay", "batch_size", "augment", "normalization", "rcond",
             "synthetic_examples")
_PAIRS = (("kmp", "gmp"), ("kgp", "grad"))
_CELL = ("model", "method", "compression", "seed")


class Setup:
    """What every cell of the run shares (built once from the flags)."""

    def __init__(self):
        self.spec = common.model_spec(FLAGS.model)
        for m in FLAGS.methods:
            try:
                pruning.get_method(m)
            except ValueError as e:
                raise app.UsageError(str(e)) from None
        if not FLAGS.methods:
            raise app.UsageError("--methods must not be empty")
        self.compressions = common.parse_floats("compressions", FLAGS.compressions)
        common.check_compressions(self.compressions)
        self.seeds = common.parse_ints("seeds", FLAGS.seeds)
        for name in ("pretrain_epochs", "finetune_epochs"):
            if getattr(FLAGS, name) < 0:
                raise app.UsageError(f"--{name} must be >= 0, got {getattr(FLAGS, name)}")
        for name in ("batch_size", "eval_batch_size", "synthetic_examples"):
            if getattr(FLAGS, name) < 1:
                raise app.UsageError(f"--{name} must be >= 1, got {getattr(FLAGS, name)}")
        if FLAGS.trajectory_steps is not None and FLAGS.trajectory_steps < 2:
            raise app.UsageError("--trajectory_steps must be >= 2 (a DMD fit needs 3 snapshots)")
        if FLAGS.lr <= 0 or FLAGS.pretrain_lr <= 0:
            raise app.UsageError("--lr and --pretrain_lr must be > 0")
        if not 0 <= FLAGS.rcond < 1:
            raise app.UsageError(f"--rcond must be in [0, 1), got {FLAGS.rcond}")
        self.dataset = common.load_data(
            self.spec, FLAGS.data, FLAGS.data_dir, FLAGS.download,
            synthetic_examples=FLAGS.synthetic_examples, max_train=FLAGS.max_train_examples,
            max_test=FLAGS.max_test_examples)
        self.steps_per_epoch = data.num_batches(len(self.dataset.train_labels), FLAGS.batch_size)
        self.trajectory_steps = FLAGS.trajectory_steps or self.steps_per_epoch
        self.normalize = common.normalize_fn(self.spec, self.dataset, FLAGS.normalization)
        augment = FLAGS.augment == "on" or (FLAGS.augment == "auto" and self.dataset.name == "cifar10")
        self.augment = data.augment_cifar if augment else None
        self.finetune_tx = train.make_optimizer(
            FLAGS.lr, momentum=FLAGS.momentum, nesterov=FLAGS.nesterov and FLAGS.momentum > 0,
            weight_decay=FLAGS.weight_decay)
        apply = self.spec.module.apply
        self.finetune_step = train.make_train_step(
            apply, self.finetune_tx, augment_fn=self.augment, normalize_fn=self.normalize)
        self.eval_step = train.make_eval_step(apply, normalize_fn=self.normalize)
        self.variables0 = common.init_variables(self.spec, 0)
        params = self.variables0["params"]
        self.select = pruning.prunable(params, include_classifier=FLAGS.prune_classifier,
                                       classifier=self.spec.classifier)
        self.flat_spec = koopman.flat_spec(params, self.select)
        self.flops = metrics.layer_flops(self.spec.module, self.variables0, self.spec.input_shape)

    def stream(self, seed: int, purpose: int):
        # Each purpose (pretrain 0, window 1, fine-tune 2+) gets its own order.
        return data.batch_stream(self.dataset.train_images, self.dataset.train_labels,
                                 FLAGS.batch_size, seed=seed * 1000 + purpose)

    def evaluate(self, state) -> dict[str, float]:
        return common.evaluate(self.eval_step, state, self.dataset, FLAGS.eval_batch_size)


def _check_workdir() -> None:
    os.makedirs(FLAGS.workdir, exist_ok=True)
    config = {k: getattr(FLAGS, k) for k in _RUN_KEYS}
    path = os.path.join(FLAGS.workdir, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        diff = {k: (saved.get(k), v) for k, v in config.items() if saved.get(k) != v}
        if diff:
            raise app.UsageError(
                f"--workdir={FLAGS.workdir} holds a run with other settings "
                f"(saved, now): {diff}; use another --workdir")
    atomic_write_json(path, config)


def _dense_variables(setup: Setup, seed: int) -> Any:
    """The dense model of this seed: loaded, or pretrained (and cached)."""
    if FLAGS.init_checkpoint:
        return common.load_variables(FLAGS.init_checkpoint, setup.spec)
    variables = common.init_variables(setup.spec, seed)
    if FLAGS.pretrain_epochs == 0:
        return variables
    tx = train.make_optimizer(FLAGS.pretrain_lr, momentum=FLAGS.pretrain_momentum,
                              nesterov=False, weight_decay=FLAGS.pretrain_weight_decay)
    state = train.create_train_state(variables["params"], tx, jax.random.PRNGKey(seed),
                                     batch_stats=variables.get("batch_stats"))
    directory = os.path.abspath(os.path.join(FLAGS.workdir, f"seed{seed}", "dense"))
    if checkpoints.latest_step(directory) is not None:
        state, _ = checkpoints.restore_checkpoint(directory, state)
        logging.info("seed %d: dense model restored from %s", seed, directory)
    else:
        step = train.make_train_step(setup.spec.module.apply, tx, augment_fn=setup.augment,
                                     normalize_fn=setup.normalize)
        steps = FLAGS.pretrain_epochs * setup.steps_per_epoch
        state = common.run_steps(step, state, setup.stream(seed, 0), steps, f"seed {seed} pretrain")
        with checkpoints.checkpoint_manager(directory) as manager:
            checkpoints.save_checkpoint(manager, state)
    out = {"params": state.params}
    if state.batch_stats:
        out["batch_stats"] = state.batch_stats
    return out


class Window:
    """The end of the recorded window: θ(t₂), its BN statistics, every method's scores."""

    def __init__(self, variables, scores, eigenvalues):
        self.variables, self.scores, self.eigenvalues = variables, scores, eigenvalues


def _window(setup: Setup, seed: int) -> Window:
    """Records Θ, fits the Koopman operator and scores every method (cached per seed)."""
    path = os.path.join(FLAGS.workdir, f"seed{seed}", "window.npz")
    template = setup.variables0
    if os.path.exists(path):
        with np.load(path) as f:
            leaves = [f[f"var{i}"] for i in range(len(jax.tree_util.tree_leaves(template)))]
            variables = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), leaves)
            scores = {m: pruning.scores_from_flat(f[f"score_{m}"], setup.flat_spec, variables["params"])
                      for m in FLAGS.methods if f"score_{m}" in f}
            eigenvalues = f["eigenvalues"]
        if set(scores) == set(FLAGS.methods):
            logging.info("seed %d: window and scores restored from %s", seed, path)
            return Window(variables, scores, eigenvalues)

    dense = _dense_variables(setup, seed)
    state = train.create_train_state(dense["params"], setup.finetune_tx, jax.random.PRNGKey(seed),
                                     batch_stats=dense.get("batch_stats"))
    t0 = time.time()
    recording = train.make_recording_train_step(setup.finetune_step, setup.select)
    stream = setup.stream(seed, 1)
    state, theta = train.record_trajectory(recording, state, _logged(stream, setup.trajectory_steps, seed),
                                           setup.trajectory_steps, setup.select)
    jax.block_until_ready(theta)
    logging.info("seed %d: recorded Θ %s in %.1fs", seed, theta.shape, time.time() - t0)
    t0 = time.time()
    fit = koopman.fit_trajectory(theta, rcond=FLAGS.rcond)
    lam = np.asarray(fit.eigenvalues)[np.asarray(fit.valid)]
    logging.info("seed %d: Koopman fit rank %d, λ₁ = %s (%.1fs)", seed, lam.size, lam[0], time.time() - t0)

    images, labels = next(stream)
    _, grads = train.loss_and_grads(setup.spec.module.apply, state.params, state.batch_stats,
                                    setup.normalize(images), labels)
    inputs = pruning.PruneInputs(state.params, setup.select, grads=grads, snapshots=theta,
                                 spec=setup.flat_spec, fit=fit, rng=jax.random.PRNGKey(seed))
    scores = {m: pruning.method_scores(m, inputs) for m in FLAGS.methods}
    del theta, inputs
    variables = {"params": state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    variables = jax.tree_util.tree_map(np.asarray, variables)
    arrays = {f"var{i}": x for i, x in enumerate(jax.tree_util.tree_leaves(variables))}
    arrays.update({f"score_{m}": np.asarray(koopman.ravel_with_spec(s, setup.flat_spec))
                   for m, s in scores.items()})
    buf = io.BytesIO()
    np.savez(buf, eigenvalues=lam, **arrays)
    atomic_write_bytes(path, buf.getvalue())
    return Window(variables, scores, lam)


def _logged(stream, steps: int, seed: int):
    progress = common.Progress(steps, f"seed {seed} window")
    for batch in stream:
        progress.update(1)
        yield batch


def _row(setup, method, c, seed, phase, ev, params, mask, seconds) -> dict:
    return {
        "model": setup.spec.name, "data": setup.dataset.name, "method": method,
        "compression": c, "seed": seed, "phase": phase,
        "top1": ev["top1"], "top5": ev["top5"], "loss": ev["loss"],
        "compression_achieved": pruning.compression_ratio(params, mask),
        "speedup": metrics.theoretical_speedup(setup.flops, params, mask),
        "seconds": round(seconds, 2), "trajectory_steps": setup.trajectory_steps,
        "finetune_epochs": FLAGS.finetune_epochs,
    }


def _run_cell(setup: Setup, window: Window, method: str, c: float, seed: int) -> list[dict]:
    start = time.time()
    params = window.variables["params"]
    mask = pruning.method_mask(method, window.scores[method], params, setup.select, c)
    state = train.create_train_state(params, setup.finetune_tx, jax.random.PRNGKey(seed),
                                     batch_stats=window.variables.get("batch_stats"), mask=mask)
    rows = [_row(setup, method, c, seed, "pruned", setup.evaluate(state), state.params, mask,
                 time.time() - start)]
    if FLAGS.finetune_epochs:
        steps = FLAGS.finetune_epochs * setup.steps_per_epoch
        state = common.run_steps(setup.finetune_step, state, setup.stream(seed, 2), steps,
                                 f"seed {seed} {method} c={c:g} fine-tune")
        rows.append(_row(setup, method, c, seed, "finetuned", setup.evaluate(state), state.params,
                         mask, time.time() - start))
    logging.info("seed %d %s c=%g: %s", seed, method, c,
                 "  ".join(f"{r['phase']} top1 {100 * r['top1']:.2f}%" for r in rows))
    return rows


def _overlaps(setup: Setup, window: Window, seed: int) -> list[dict]:
    rows = []
    params = window.variables["params"]
    for a, b in _PAIRS:
        if a in window.scores and b in window.scores:
            for c in setup.compressions:
                ma = pruning.method_mask(a, window.scores[a], params, setup.select, c)
                mb = pruning.method_mask(b, window.scores[b], params, setup.select, c)
                rows.append({"model": setup.spec.name, "pair": f"{a}~{b}", "compression": c,
                             "seed": seed, "jaccard": pruning.mask_jaccard(ma, mb, setup.select)})
    return rows


def _summary(setup: Setup, rows, overlap_rows) -> str:
    stats = {k: group_mean_std(rows, ("method", "compression", "phase"), k)
             for k in ("top1", "top5", "compression_achieved", "speedup")}
    methods = [m for m in FLAGS.methods if any(r["method"] == m for r in rows)]
    seeds = sorted({r["seed"] for r in rows})
    out = [f"# Pruning {setup.spec.name} on {setup.dataset.name}", "",
           f"Seeds {seeds}; window T = {setup.trajectory_steps} steps; "
           f"fine-tuning {FLAGS.finetune_epochs} epoch(s) at lr {FLAGS.lr:g}; "
           f"classifier {'pruned' if FLAGS.prune_classifier else 'kept dense'}. "
           "Top-1 % as mean ± std over seeds.", ""]
    dense = group_mean_std([r for r in rows if r["method"] == "dense"], ("phase",), "top1")
    if dense:
        out += [f"Unpruned θ(t₂) (end of the window): top-1 {fmt_pm(dense.get(('dense',)))} %", ""]
    for phase, title in (("pruned", "Immediately after pruning"), ("finetuned", "After refinement")):
        body = []
        for c in setup.compressions:
            any_c = next((stats[k][(m, c, phase)] for m in methods for k in ("speedup",)
                          if (m, c, phase) in stats[k]), None)
            if any_c is None:
                continue
            body.append([f"{c:g}", f"{any_c[0]:.2f}"] +
                        [fmt_pm(stats["top1"].get((m, c, phase))) for m in methods])
        if body:
            out += [f"## {title}", "", markdown_table(["compression", "speedup"] + methods, body), ""]
    if overlap_rows:
        ov = group_mean_std(overlap_rows, ("pair", "compression"), "jaccard")
        pairs = sorted({r["pair"] for r in overlap_rows})
        body = [[f"{c:g}"] + [fmt_pm(ov.get((p, c)), scale=1.0, digits=4) for p in pairs]
                for c in setup.compressions]
        out += ["## Jaccard overlap of kept parameters", "", markdown_table(["compression"] + pairs, body), ""]
    return "\n".join(out)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    common.quiet_orbax()
    setup = Setup()
    _check_workdir()
    table = ResultTable(FLAGS.workdir, _CELL)
    overlap = ResultTable(FLAGS.workdir, ("model", "pair", "compression", "seed"), stem="overlap")
    cells = [(s, m, c) for s in setup.seeds for m in FLAGS.methods for c in setup.compressions]
    todo = [x for x in cells if not table.done(model=setup.spec.name, method=x[1], compression=x[2], seed=x[0])]
    logging.info("%s on %s: %d cells, %d to do (%d finished earlier); workdir %s", setup.spec.name,
                 setup.dataset.name, len(cells), len(todo), len(cells) - len(todo), FLAGS.workdir)
    progress = common.Progress(len(todo), "cells", every_s=0.0)
    spectrum = None
    for seed in setup.seeds:
        seed_cells = [x for x in todo if x[0] == seed]
        need_dense_row = not table.done(model=setup.spec.name, method="dense", compression=1.0, seed=seed)
        if not seed_cells and not need_dense_row and spectrum is not None:
            continue
        window = _window(setup, seed)
        if spectrum is None:
            spectrum = window.eigenvalues
        if need_dense_row:
            start = time.time()
            state = train.create_train_state(window.variables["params"], setup.finetune_tx,
                                             jax.random.PRNGKey(seed),
                                             batch_stats=window.variables.get("batch_stats"))
            mask = train.full_mask(state.params)
            table.add([_row(setup, "dense", 1.0, seed, "dense", setup.evaluate(state), state.params,
                            mask, time.time() - start)])
        new_overlaps = [r for r in _overlaps(setup, window, seed)
                        if not overlap.done(**{k: r[k] for k in overlap.key})]
        if new_overlaps:
            overlap.add(new_overlaps)
        for _, method, c in seed_cells:
            table.add(_run_cell(setup, window, method, c, seed))
            progress.update(1)

    atomic_write_text(os.path.join(FLAGS.workdir, "summary.md"), _summary(setup, table.rows, overlap.rows))
    title = f"{setup.spec.name} on {setup.dataset.name}"
    plots.accuracy_vs_compression(table.rows, os.path.join(FLAGS.workdir, "fig_accuracy.png"), title)
    if overlap.rows:
        plots.overlap_vs(overlap.rows, "compression", os.path.join(FLAGS.workdir, "fig_overlap.png"),
                         "compression ratio", log2=True)
    if spectrum is not None:
        plots.spectrum(spectrum, os.path.join(FLAGS.workdir, "fig_spectrum.png"),
                       f"Koopman spectrum, {title}, seed {setup.seeds[0]}")
    print(open(os.path.join(FLAGS.workdir, "summary.md")).read())


if __name__ == "__main__":
    app.run(main)
