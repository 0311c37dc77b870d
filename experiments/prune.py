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

import os

from absl import app, flags, logging

from experiments import common, pipeline, plots
from experiments.pipeline import FLAGS
from experiments.results import ResultTable, atomic_write_text, fmt_pm, group_mean_std, markdown_table
from kpjax import checkpoints, train

flags.DEFINE_string("init_checkpoint", None,
                    "Dense model: a PyTorch file (.pt/.th, e.g. the ShrinkBench weights) or an "
                    "orbax checkpoint directory of experiments.train; default: pretrain.")
flags.DEFINE_integer("pretrain_epochs", 1, "Epochs of training from scratch without --init_checkpoint.")
flags.DEFINE_float("pretrain_lr", 0.05, "Pretraining learning rate (SGD).")
flags.DEFINE_float("pretrain_momentum", 0.9, "Pretraining momentum.")
flags.DEFINE_float("pretrain_weight_decay", 0.0, "Pretraining weight decay.")
flags.DEFINE_integer("trajectory_steps", None,
                     "Steps T of the recorded window; default one epoch (469 MNIST, 391 CIFAR-10).")

_RUN_KEYS = pipeline.RUN_KEYS + ("init_checkpoint", "pretrain_epochs", "pretrain_lr",
                                 "pretrain_momentum", "pretrain_weight_decay", "trajectory_steps")
_CELL = ("model", "method", "compression", "seed")


def _check_flags() -> None:
    if FLAGS.pretrain_epochs < 0:
        raise app.UsageError(f"--pretrain_epochs must be >= 0, got {FLAGS.pretrain_epochs}")
    if FLAGS.pretrain_lr <= 0:
        raise app.UsageError("--pretrain_lr must be > 0")
    if FLAGS.trajectory_steps is not None and FLAGS.trajectory_steps < 2:
        raise app.UsageError("--trajectory_steps must be >= 2 (a DMD fit needs 3 snapshots)")


def _dense_variables(setup: pipeline.Setup, seed: int):
    """The dense model of this seed: loaded, or pretrained (and checkpointed)."""
    if FLAGS.init_checkpoint:
        return common.load_variables(FLAGS.init_checkpoint, setup.spec)
    variables = common.init_variables(setup.spec, seed)
    if FLAGS.pretrain_epochs == 0:
        return variables
    tx = train.make_optimizer(FLAGS.pretrain_lr, momentum=FLAGS.pretrain_momentum,
                              nesterov=False, weight_decay=FLAGS.pretrain_weight_decay)
    state = setup.state(variables, seed, tx=tx)
    directory = os.path.abspath(os.path.join(FLAGS.workdir, f"seed{seed}", "dense"))
    if checkpoints.latest_step(directory) is not None:
        state, _ = checkpoints.restore_checkpoint(directory, state)
        logging.info("seed %d: dense model restored from %s", seed, directory)
    else:
        steps = FLAGS.pretrain_epochs * setup.steps_per_epoch
        state = common.run_steps(setup.train_step(tx), state, setup.stream(seed, pipeline.PRETRAIN),
                                 steps, f"seed {seed} pretrain")
        with checkpoints.checkpoint_manager(directory) as manager:
            checkpoints.save_checkpoint(manager, state)
    return pipeline.variables_of(state)


def _window(setup: pipeline.Setup, seed: int, steps: int) -> pipeline.Window:
    path = os.path.join(FLAGS.workdir, f"seed{seed}", "window.npz")
    cached = pipeline.cached_window(setup, path)
    if cached is not None:
        return cached
    state = setup.state(_dense_variables(setup, seed), seed)
    return pipeline.record_window(setup, state, setup.finetune_step, setup.stream(seed, pipeline.WINDOW),
                                  steps, seed, path, f"seed {seed}")


def _summary(setup: pipeline.Setup, steps: int, rows, overlap_rows) -> str:
    stats = {k: group_mean_std(rows, ("method", "compression", "phase"), k) for k in ("top1", "speedup")}
    methods = [m for m in setup.methods if any(r["method"] == m for r in rows)]
    seeds = sorted({r["seed"] for r in rows})
    out = [f"# Pruning {setup.spec.name} on {setup.dataset.name}", "",
           f"Seeds {seeds}; window T = {steps} steps; fine-tuning {FLAGS.finetune_epochs} epoch(s) "
           f"at lr {FLAGS.lr:g}; classifier {'pruned' if FLAGS.prune_classifier else 'kept dense'}. "
           "Top-1 % as mean ± std over seeds.", ""]
    dense = group_mean_std([r for r in rows if r["method"] == "dense"], ("phase",), "top1")
    if dense:
        out += [f"Unpruned θ(t₂) (end of the window): top-1 {fmt_pm(dense.get(('dense',)))} %", ""]
    for phase, title in (("pruned", "Immediately after pruning"), ("finetuned", "After refinement")):
        body = []
        for c in setup.compressions:
            speed = next((stats["speedup"][(m, c, phase)] for m in methods
                          if (m, c, phase) in stats["speedup"]), None)
            if speed is not None:
                body.append([f"{c:g}", f"{speed[0]:.2f}"]
                            + [fmt_pm(stats["top1"].get((m, c, phase))) for m in methods])
        if body:
            out += [f"## {title}", "", markdown_table(["compression", "speedup"] + methods, body), ""]
    if overlap_rows:
        ov = group_mean_std(overlap_rows, ("pair", "compression"), "jaccard")
        pairs = sorted({r["pair"] for r in overlap_rows})
        body = [[f"{c:g}"] + [fmt_pm(ov.get((p, c)), scale=1.0, digits=4) for p in pairs]
                for c in setup.compressions]
        out += ["## Jaccard overlap of kept parameters", "",
                markdown_table(["compression"] + pairs, body), ""]
    return "\n".join(out)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    common.quiet_orbax()
    _check_flags()
    setup = pipeline.Setup()
    FLAGS.workdir = FLAGS.workdir or "runs/prune"
    pipeline.check_workdir(FLAGS.workdir, _RUN_KEYS)
    steps = FLAGS.trajectory_steps or setup.steps_per_epoch
    table = ResultTable(FLAGS.workdir, _CELL)
    overlap = ResultTable(FLAGS.workdir, ("model", "pair", "compression", "seed"), stem="overlap")
    model = setup.spec.name
    cells = [(s, m, c) for s in setup.seeds for m in setup.methods for c in setup.compressions]
    todo = [x for x in cells if not table.done(model=model, method=x[1], compression=x[2], seed=x[0])]
    logging.info("%s on %s: %d cells, %d to do; workdir %s", model, setup.dataset.name,
                 len(cells), len(todo), FLAGS.workdir)
    progress = common.Progress(len(todo), "cells", every_s=0.0)
    spectrum = None
    for seed in setup.seeds:
        window = _window(setup, seed, steps)
        if spectrum is None:
            spectrum = window.eigenvalues
        if not table.done(model=model, method="dense", compression=1.0, seed=seed):
            table.add([pipeline.dense_row(setup, window, seed)])
        new = [r for r in pipeline.overlap_rows(setup, window, seed)
               if not overlap.done(**{k: r[k] for k in overlap.key})]
        if new:
            overlap.add(new)
        for _, method, c in [x for x in todo if x[0] == seed]:
            table.add(pipeline.run_cell(setup, window, method, c, seed))
            progress.update(1)

    summary = _summary(setup, steps, table.rows, overlap.rows)
    atomic_write_text(os.path.join(FLAGS.workdir, "summary.md"), summary)
    title = f"{model} on {setup.dataset.name}"
    plots.accuracy_vs_compression(table.rows, os.path.join(FLAGS.workdir, "fig_accuracy.png"), title)
    if overlap.rows:
        plots.overlap_vs(overlap.rows, "compression", os.path.join(FLAGS.workdir, "fig_overlap.png"),
                         "compression ratio", log2=True)
    plots.spectrum(spectrum, os.path.join(FLAGS.workdir, "fig_spectrum.png"),
                   f"Koopman spectrum, {title}, seed {setup.seeds[0]}")
    print(summary)


if __name__ == "__main__":
    common.run(main)
