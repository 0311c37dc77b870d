r"""Why GraSP collapses at low compression when pruning at initialization:
the protocol differences from Wang et al. (2020), one at a time.

Each condition is a run of experiments.init (θ₀ pruned, then trained for
--finetune_epochs) in workdir/<condition>, with the flags given here changed
as the condition says (config as code, `CONDITIONS`):

  kpjax            kpjax's protocol: ShrinkBench's prunable set (biases too),
                   one random batch of --batch_size images, SGD at --train_lr
  kernels_only     biases left out of the prunable set (Wang et al.'s and
                   Synaptic-Flow's code score conv and linear weights only)
  reinit_balanced  scored on θ₀ with its dense kernels re-drawn (Xavier
                   normal, Wang et al.'s reinit) on a class-balanced batch of
                   `PER_CLASS` images per class; the mask still prunes θ₀
  wang             all three of Wang et al.'s choices
  lr_0.01, lr_0.005   training after pruning at a lower learning rate
  magnitude        keep the largest |θ ⊙ Hg| (registered as grasp_magnitude)
  negated          keep the largest −θ ⊙ Hg (grasp_negated)

A condition runs those of --methods its change can affect (the scoring
conditions only the methods that read the scoring batches; the sign
conditions GraSP's variant alone). Besides init's results (top-1 and loss
right after pruning and after training), every GraSP-family cell's kept
fraction per prunable leaf and the fraction of positive scores go to
layers.csv/json.

  python -m experiments.grasp_ablation                      # MnistNet, 3 seeds, c = 3.16, 10

Writes to --workdir: one init workdir per condition, layers.csv/json,
summary.md. Reruns resume (cell by cell in each condition).

May import: absl, jax, numpy, experiments, kpjax.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple

import jax
import numpy as np
from absl import flags

from experiments import cli, init, pipeline, report
from experiments.config import InitConfig
from experiments.results import ResultTable, atomic_write_text, fmt_pm, group_mean_std, markdown_table
from experiments.workdir import claim, refuse_if_in_use
from kpjax import pruning
from kpjax.pruning import saliency

PER_CLASS = 10  # 100 MNIST images, against kpjax's 128-image random batch
_LAYER_KEY = ("condition", "method", "compression", "seed", "layer")


class Condition(NamedTuple):
    name: str
    description: str
    changes: dict[str, Any]
    scoring_only: bool = False  # changes only what the data-dependent scores see
    sign: str | None = None     # GraSP replaced by this variant of its score


def _lr(lr: float) -> dict[str, Any]:
    return {"train": lambda sgd: dataclasses.replace(sgd, lr=lr)}


CONDITIONS = (
    Condition("kpjax", "kpjax's protocol: biases prunable, one random batch, train lr as given", {}),
    Condition("kernels_only", "biases not prunable (the references score weights only)",
              {"prune_biases": False}),
    Condition("reinit_balanced", f"scored with dense kernels re-drawn (Xavier normal) on "
              f"{PER_CLASS} images per class", {"score_reinit_dense": True,
                                                  "score_per_class": PER_CLASS}, scoring_only=True),
    Condition("wang", "all three of Wang et al.'s choices (kernels only, re-drawn dense kernels, "
              "class-balanced batch)", {"prune_biases": False, "score_reinit_dense": True,
                                        "score_per_class": PER_CLASS}),
    Condition("lr_0.01", "training after pruning at lr 0.01", _lr(0.01)),
    Condition("lr_0.005", "training after pruning at lr 0.005", _lr(0.005)),
    Condition("magnitude", "keep the largest |θ ⊙ Hg|", {}, sign="grasp_magnitude"),
    Condition("negated", "keep the largest −θ ⊙ Hg", {}, sign="grasp_negated"),
)


def condition_config(config: InitConfig, condition: Condition) -> InitConfig | None:
    """`config` changed as `condition` says; None if none of its methods is affected."""
    methods = list(config.methods)
    if condition.sign:
        methods = [condition.sign] if "grasp" in methods else []
    elif condition.scoring_only:
        methods = [m for m in methods if set(pruning.get_method(m).needs) & pruning.BATCH_INPUTS]
    if not methods:
        return None
    changes = {k: (v(getattr(config, k)) if callable(v) else v) for k, v in condition.changes.items()}
    # The conditions start from kpjax's former protocol, GraSP scoring what
    # the other methods score; "reinit_balanced" is today's default (wang).
    return dataclasses.replace(config, methods=tuple(methods), grasp_scoring="shared", **changes)


def layer_rows(setup: pipeline.Setup, one: init.Seed, condition: str, method: str,
               c: float) -> list[dict]:
    """Per prunable leaf of θ₀: the kept fraction of `method`'s mask at c and
    the fraction of its scores that are positive (θ ⊙ Hg > 0 for GraSP)."""
    mask = one.mask(method, c)
    scores = one.flat_scores(method)
    rows, offset = [], 0
    leaves = jax.tree_util.tree_leaves_with_path(mask)
    for (path, m), selected in zip(leaves, jax.tree_util.tree_leaves(setup.select)):
        if not selected:
            continue
        n = int(np.size(m))
        rows.append({"condition": condition, "method": method, "compression": c, "seed": one.seed,
                     "layer": "/".join(str(getattr(k, "key", k)) for k in path),
                     "size": n, "kept": float(np.mean(np.asarray(m))),
                     "positive": float(np.mean(scores[offset:offset + n] > 0))})
        offset += n
    return rows


def _summary(config: InitConfig, results: dict[str, list[dict]], layers: list[dict]) -> str:
    lines = [f"# GraSP at initialization: ablation of the protocol ({config.model})", "",
             f"Seeds {list(config.seeds)}; θ₀ pruned at c = {', '.join(f'{c:g}' for c in config.compressions)}, "
             f"then {config.finetune_epochs} epoch(s) of SGD (lr {config.train.lr:g} unless the condition "
             f"changes it); GraSP's logits / {saliency.GRASP_TEMPERATURE:g}. Mean ± std over seeds. "
             "'at θ₀⊙m': the pruned network before any training (test set). '% scores > 0': of the "
             "prunable parameters' scores (for GraSP, θ ⊙ Hg > 0).", "",
             markdown_table(["condition", "what changes"],
                            [[c.name, c.description] for c in CONDITIONS]), ""]
    for c in config.compressions:
        body = []
        for cond in CONDITIONS:
            rows = results.get(cond.name, [])
            trained = group_mean_std([r for r in rows if r["phase"] == "trained"], ("method", "compression"), "top1")
            loss = group_mean_std([r for r in rows if r["phase"] == "init"], ("method", "compression"), "loss")
            start = group_mean_std([r for r in rows if r["phase"] == "init"], ("method", "compression"), "top1")
            for m in sorted({r["method"] for r in rows}):
                lay = [r for r in layers if r["condition"] == cond.name and r["method"] == m
                       and r["compression"] == c]
                positive = (sum(r["positive"] * r["size"] for r in lay) / sum(r["size"] for r in lay)
                            if lay else None)
                body.append([cond.name, report.name(m), fmt_pm(start.get((m, c))),
                             fmt_pm(loss.get((m, c)), scale=1.0), fmt_pm(trained.get((m, c))),
                             "–" if positive is None else f"{100 * positive:.1f}"])
        lines += [f"## c = {c:g}", "",
                  markdown_table(["condition", "method", "top-1 % at θ₀⊙m", "test loss at θ₀⊙m",
                                  "top-1 % after training", "% scores > 0"], body), ""]
        names = sorted({r["layer"] for r in layers}, key=lambda n: [r["layer"] for r in layers].index(n))
        kept = group_mean_std([r for r in layers if r["compression"] == c],
                              ("condition", "method", "layer"), "kept")
        pairs = sorted({(r["condition"], r["method"]) for r in layers if r["compression"] == c},
                       key=lambda p: [k.name for k in CONDITIONS].index(p[0]))
        if pairs:
            lines += [f"Kept fraction per prunable leaf at c = {c:g} (% of the leaf, mean over seeds):", "",
                      markdown_table(["condition", "method"] + names,
                                     [[cn, report.name(m)] + [f"{100 * kept[(cn, m, n)][0]:.1f}"
                                                              if (cn, m, n) in kept else "–" for n in names]
                                      for cn, m in pairs]), ""]
    return "\n".join(lines)


def run(config: InitConfig, workdir: str) -> str:
    """Runs (or resumes) every condition in workdir/<condition>; returns summary.md."""
    if config.summarize_only:
        refuse_if_in_use(workdir)
        return _write_summary(config, workdir)
    with claim(workdir):
        layers = ResultTable(workdir, _LAYER_KEY, stem="layers")
        for cond in CONDITIONS:
            cond_config = condition_config(config, cond)
            if cond_config is None:
                continue
            init.run(cond_config, os.path.join(workdir, cond.name))
            todo = [(s, m, c) for s in cond_config.seeds for m in cond_config.methods
                    if "grasp_loss_fn" in pruning.get_method(m).needs for c in cond_config.compressions
                    if not any(r["condition"] == cond.name and r["method"] == m and r["compression"] == c
                               and r["seed"] == s for r in layers.rows)]
            if todo:
                setup = pipeline.Setup(cond_config)
                seeds = {}
                for s, m, c in todo:
                    one = seeds.setdefault(s, init.Seed(setup, s))
                    layers.add(layer_rows(setup, one, cond.name, m, c))
        return _write_summary(config, workdir)


def _write_summary(config: InitConfig, workdir: str) -> str:
    results = {c.name: ResultTable(os.path.join(workdir, c.name), init.CELL).rows for c in CONDITIONS
               if os.path.exists(os.path.join(workdir, c.name, "results.json"))}
    summary = _summary(config, results, ResultTable(workdir, _LAYER_KEY, stem="layers").rows)
    atomic_write_text(os.path.join(workdir, "summary.md"), summary)
    return summary


main = cli.summary_main(InitConfig, run)


if __name__ == "__main__":
    cli.define_flags(InitConfig, default_workdir="runs/grasp_ablation")
    flags.FLAGS.set_default("methods", ["grasp", "random"])
    flags.FLAGS.set_default("compressions", ["3.1623", "10"])
    cli.run_main(main)
