r"""Coreset neuron pruning of MnistNet's fc1 (Tukan et al. 2022) against the
L2 norm of each neuron's weights and KMP per neuron, before and after
refinement.

For each seed: the dense model and its window, as in experiments.prune (the
same flags and cache). At each kept fraction f of fc1's neurons:
  * coreset: sensitivities from fc1's ReLU activations on the first
    --sample_examples training images at θ(t₂) and fc2's rows; exactly
    round(f·units) neurons sampled (seed's generator), fc2's rows reweighted
    by 1/π (`kpjax.pruning.coreset`);
  * each of --methods: the neurons with the largest L2 norm of the method's
    per-weight scores over their filter (gmp: of the weights; kmp: of
    b₁φ₁) — `kpjax.pruning.structured`, fc1 only.
The removed neurons are masked (their filter and fc2's rows), the network is
evaluated, refined for --finetune_epochs with the mask, evaluated again.

  python -m experiments.coreset --init_checkpoint=../shared/data/pretrained/mnistnet.pt

Writes to --workdir: results.csv/json, summary.md. Reruns resume cell by cell.

May import: absl, jax, numpy, experiments, kpjax.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from experiments import cell, cli, common, pipeline, prune, report, resources
from experiments.config import CoresetConfig
from experiments.results import ResultTable, atomic_write_text, fmt_pm, group_mean_std, markdown_table
from experiments.workdir import claim
from kpjax import pruning
from kpjax.pruning import coreset, structured

_CELL = ("model", "method", "rcond", "fraction", "seed")
LAYER, NEXT = "fc1", "fc2"


def fc1_activations(setup: pipeline.Setup, variables, n: int) -> np.ndarray:
    """ReLU(fc1(x)) on the first n training images, (n, units)."""
    images = jnp.asarray(setup.normalize(setup.dataset.train_images[:n]))
    _, state = setup.spec.module.apply(variables, images, capture_intermediates=True,
                                       mutable=["intermediates"])
    return np.maximum(np.asarray(state["intermediates"][LAYER]["__call__"][0]), 0.0)


def neuron_keep(setup, window, method: str, fraction: float, seed: int):
    """(keep, variables) for one cell: the neurons kept and the variables the
    pruned network starts from (reweighted for the coreset)."""
    variables = window.variables
    units = variables["params"][LAYER]["kernel"].shape[-1]
    k = max(1, int(round(fraction * units)))
    if method == "coreset":
        acts = fc1_activations(setup, variables, setup.config.sample_examples)
        rng = np.random.default_rng(seed * 1000 + int(round(fraction * 1e6)))
        keep, scale = coreset.coreset(acts, variables["params"][NEXT]["kernel"], k, rng)
        params = jax.tree_util.tree_map(np.asarray, variables["params"])
        params = {**params, NEXT: {**params[NEXT], "kernel": params[NEXT]["kernel"] * scale[:, None]}}
        return keep, {**variables, "params": params}
    tree = pruning.scores_from_flat(jnp.asarray(window.scores[setup.variant(method)]), setup.flat_spec,
                                    variables["params"])
    scores = structured.group_scores(setup.spec, tree, "l2")[LAYER]
    return structured.keep_units({LAYER: scores}, k / units)[LAYER], variables


def run_cell(setup, window, method: str, fraction: float, seed: int) -> list[dict]:
    start = time.time()
    keep, variables = neuron_keep(setup, window, method, fraction, seed)
    units = {name: np.ones(n, bool) for name, n in structured.groups(setup.spec, variables["params"]).items()}
    units[LAYER] = keep
    mask = structured.unit_mask(setup.spec, variables["params"], units)
    state = setup.state(variables, seed, mask=mask)
    variant = setup.variant(method)
    rows = [cell.row(setup, variant, fraction, seed, "pruned", setup.evaluate(state), state.params,
                     mask, time.time() - start)]
    if setup.config.finetune_epochs:
        steps = setup.config.finetune_epochs * setup.steps_per_epoch
        state = common.run_steps(setup.finetune_step, state, setup.stream(seed, pipeline.FINETUNE),
                                 steps, f"seed {seed} {method} f={fraction:g} fine-tune", job=setup.job)
        rows.append(cell.row(setup, variant, fraction, seed, "finetuned", setup.evaluate(state),
                             state.params, mask, time.time() - start))
    for r in rows:
        r["fraction"] = r.pop("compression")
        r["neurons_kept"] = int(keep.sum())
    logging.info("seed %d %s f=%g: %s", seed, method, fraction,
                 "  ".join(f"{r['phase']} top-1 {100 * r['top1']:.2f}%" for r in rows))
    return rows


def dense_cell(setup, window, seed: int) -> list[dict]:
    """The unpruned references (`cell.dense_cell`): θ(t₂), and θ(t₂) refined
    like every pruned cell; fraction 1, all 500 neurons."""
    rows = cell.dense_cell(setup, window, seed).rows
    for r in rows:
        r["fraction"] = r.pop("compression")
        r["neurons_kept"] = int(window.variables["params"][LAYER]["kernel"].shape[-1])
    return rows


def _summary(setup, rows, timings=()) -> str:
    config = setup.config
    names = ["coreset", *config.methods]
    stats = group_mean_std(rows, ("method", "fraction", "phase"), "top1")
    out = [f"# Neuron pruning of {setup.spec.name}'s fc1 on {setup.dataset.name}: coreset, L2, KMP", "",
           f"Seeds {sorted({r['seed'] for r in rows})}; each prunes θ(t₂) of its window (as "
           "experiments.prune); only fc1's neurons are removed (their filters and fc2's rows). "
           f"Refinement: {config.finetune_epochs} epoch(s) at lr {config.finetune.lr:g}. Top-1 %, "
           "mean ± std over seeds.", "",
           *report.data_line(setup.dataset.name, setup.dataset.source)]
    for phase, title in (("pruned", "Immediately after pruning"), ("finetuned", "After refinement")):
        # The unpruned reference: θ(t₂) itself before refinement, refined alike after.
        dense = fmt_pm(stats.get(("dense", 1.0, "dense" if phase == "pruned" else "finetuned")))
        body = [[f"{f:g}"] + [fmt_pm(stats.get((m, f, phase))) for m in names] + [dense]
                for f in config.fractions if any((m, f, phase) in stats for m in names)]
        if body:
            out += [f"## {title}", "", markdown_table(
                ["fc1 neurons kept"] + names + ["unpruned" + ("" if phase == "pruned" else ", refined alike")],
                body), ""]
    return "\n".join(out + report.provenance(timings))


def run(config: CoresetConfig, workdir: str) -> str:
    """Runs (or resumes) the comparison in `workdir`; returns summary.md."""
    resources.check_resources(config)
    setup = pipeline.Setup(config)
    steps = config.trajectory_steps or setup.steps_per_epoch
    if config.summarize_only:  # before any table rewrites its CSV
        pipeline.check_workdir(workdir, config, write=False)
    table = ResultTable(workdir, _CELL, timing_columns=("seconds",))
    if not config.summarize_only:
        with claim(workdir):
            pipeline.check_workdir(workdir, config)
            for seed in setup.seeds:
                cells = [(m, f) for m in ("coreset", *config.methods) for f in config.fractions]
                cells = [(m, f) for m, f in [("dense", 1.0)] + cells
                         if not table.done(model=setup.spec.name, **setup.variant(m)._asdict(),
                                           fraction=f, seed=seed)]
                if cells:
                    window = prune.seed_window(setup, seed, steps, workdir)
                    for method, fraction in cells:
                        table.add(dense_cell(setup, window, seed) if method == "dense"
                                  else run_cell(setup, window, method, fraction, seed))
    summary = _summary(setup, table.rows, table.timings.rows if table.timings else ())
    atomic_write_text(os.path.join(workdir, "summary.md"), summary)
    return summary


main = cli.summary_main(CoresetConfig, run)

if __name__ == "__main__":
    cli.define_flags(CoresetConfig, default_workdir="runs/coreset")
    cli.run_main(main)
