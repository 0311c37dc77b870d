r"""Are pruned networks trained like the dense one? Koopman spectra of
fine-tuning runs (Redman et al., NeurIPS 2024, "Identifying equivalent
training dynamics").

For each seed: the dense model and its window, as in experiments.prune
(the same flags, files and cache); then one fine-tuning run per run type —
the dense network, and the network pruned by each --methods at each
--compressions — from θ(t₂), --record_steps steps with the fine-tuning
optimizer and the seed's fine-tuning batch order (the same batches for
every run type of a seed), recording Θ. Each run becomes a signature
(`kpjax.koopman.dynamics.spectrum_signature`): Θ projected on its --components
leading principal components (from K = ΘΘᵀ), delay-embedded (--delays),
fitted by exact DMD, its --top eigenvalues of largest modulus. Two run
types are compared by the 1-Wasserstein distance between signatures
(optimal matching) and a shuffle test on the type labels (--permutations).

  python -m experiments.compare_dynamics --init_checkpoint=../shared/data/pretrained/mnistnet.pt

Writes to --workdir: signatures.csv/json (one row per run type and seed:
the eigenvalues, top-1 after the recorded steps), distances.csv (every
pair of runs), summary.md (distances within and between run types, the
shuffle tests), fig_spectra.png. Reruns resume run by run.

May import: absl, numpy, experiments, kpjax.
"""

from __future__ import annotations

import os
import time
from itertools import combinations

import numpy as np
from absl import logging

from experiments import cli, koopman_window, pipeline, plots, prune, report, resources
from experiments.config import CompareConfig
from experiments.results import ResultTable, atomic_write_text, markdown_table, rows_to_csv
from experiments.workdir import claim
from kpjax import koopman, train
from kpjax.koopman import dynamics
from kpjax.train import recording

_KEY = ("model", "run", "seed")


def run_types(config: CompareConfig) -> list[tuple[str, str, float]]:
    """(name, method, compression) of every run type; the dense run first."""
    return [("dense", "dense", 1.0)] + [(f"{m} c={c:g}", m, c) for m in config.methods
                                        for c in config.compressions]


def record_run(setup: pipeline.Setup, window: koopman_window.Window, name: str, method: str, c: float,
               seed: int) -> dict:
    """One fine-tuning run from θ(t₂), recorded; its signature and accuracy."""
    config = setup.config
    start = time.time()
    params = window.variables["params"]
    mask = (train.full_mask(params) if method == "dense"
            else window.mask(setup, setup.variant(method), c))
    state = setup.state(window.variables, seed, mask=mask)
    recorder = recording.make_recording_train_step(setup.finetune_step, setup.select)
    state, theta = recording.record_trajectory(
        recorder, state, setup.stream(seed, pipeline.FINETUNE)(), config.record_steps, setup.select)
    k = np.asarray(koopman.gram(theta))
    del theta
    lam = dynamics.spectrum_signature(k, config.components, config.delays, config.top, config.rcond[0])
    ev = setup.evaluate(state)
    logging.info("seed %d %s: top-1 %.2f%% after %d recorded steps; |λ| %s", seed, name,
                 100 * ev["top1"], config.record_steps, np.round(np.abs(lam[:3]), 5))
    return {"model": setup.spec.name, "run": name, "seed": seed, "phase": "recorded", "method": method,
            "compression": c, "top1": ev["top1"],
            **{f"lam{i}_re": float(x.real) for i, x in enumerate(lam)},
            **{f"lam{i}_im": float(x.imag) for i, x in enumerate(lam)},
            "seconds": round(time.time() - start, 2)}


def signature(row: dict, top: int) -> np.ndarray:
    return np.array([complex(row[f"lam{i}_re"], row[f"lam{i}_im"]) for i in range(top)])


def comparisons(config: CompareConfig, rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(every pair of runs with its distance, every pair of run types with
    the mean distances within and between them and the shuffle test)."""
    sigs = {(r["run"], r["seed"]): signature(r, config.top) for r in rows}
    pairs = [{"run_a": a[0], "seed_a": a[1], "run_b": b[0], "seed_b": b[1],
              "distance": dynamics.eigenvalue_distance(sigs[a], sigs[b])}
             for a, b in combinations(sorted(sigs), 2)]
    names = [n for n, _, _ in run_types(config)]
    tests = []
    for a, b in combinations(names, 2):
        group_a = [s for (n, _), s in sorted(sigs.items()) if n == a]
        group_b = [s for (n, _), s in sorted(sigs.items()) if n == b]
        if len(group_a) + len(group_b) < 3 or not group_a or not group_b:
            continue

        def mean(keep) -> float:
            values = [p["distance"] for p in pairs if keep(p["run_a"], p["run_b"])]
            return float(np.mean(values)) if values else float("nan")

        stat, p = dynamics.shuffle_test(group_a, group_b, config.permutations, seed=0)
        tests.append({"run_a": a, "run_b": b, "within_a": mean(lambda x, y: x == y == a),
                      "within_b": mean(lambda x, y: x == y == b),
                      "between": mean(lambda x, y: {x, y} == {a, b}),
                      "statistic": stat, "p_value": p})
    return pairs, tests


def _summary(setup: pipeline.Setup, steps: int, rows, tests, timings=()) -> str:
    config = setup.config
    seeds = sorted({r["seed"] for r in rows})
    acc = {(r["run"], r["seed"]): r["top1"] for r in rows}
    names = [n for n, _, _ in run_types(config)]
    body = [[n] + [f"{100 * acc[(n, s)]:.2f}" if (n, s) in acc else "–" for s in seeds] for n in names]
    test_body = [[f"{t['run_a']} vs {t['run_b']}", f"{t['within_a']:.2e}", f"{t['within_b']:.2e}",
                  f"{t['between']:.2e}", f"{t['statistic']:.2e}", f"{t['p_value']:.3f}"] for t in tests]
    groups = len(seeds)
    return "\n".join([
        f"# Training dynamics of dense and pruned {setup.spec.name} on {setup.dataset.name}", "",
        f"Seeds {seeds}. Each seed: the dense model and a T = {steps}-step window as in "
        f"experiments.prune (KMP from its fit, rcond {config.rcond[0]:g}); then each run type "
        f"fine-tunes θ(t₂) for {config.record_steps} recorded steps (lr {config.finetune.lr:g}, "
        "the seed's batches, the same for every run type). A run's signature: its "
        f"{config.top} largest-modulus eigenvalues of the exact DMD of its {config.components} "
        f"leading principal coordinates, {config.delays} delays.", "",
        *report.data_line(setup.dataset.name, setup.dataset.source),
        "## Top-1 % after the recorded steps", "",
        markdown_table(["run"] + [f"seed {s}" for s in seeds], body), "",
        "## Distances between signatures (1-Wasserstein, optimal matching)", "",
        "Mean distance between runs of one type (within) and between the two types; the shuffle "
        f"test relabels the pooled runs {config.permutations} times (statistic: between − within; "
        f"small p: the types train differently). With {groups} runs per type there are "
        f"{_relabellings(groups)} labellings, and a labelling and its swap give the same "
        f"statistic, so p cannot go below about {2 / _relabellings(groups):.3f}.", "",
        markdown_table(["types", "within a", "within b", "between", "statistic", "p"], test_body), "",
        *report.provenance(timings)])


def _relabellings(n: int) -> int:
    from math import comb
    return comb(2 * n, n)


def run(config: CompareConfig, workdir: str) -> str:
    """Runs (or resumes) the comparison in `workdir`; returns summary.md."""
    resources.check_resources(config)
    setup = pipeline.Setup(config)
    steps = config.trajectory_steps or setup.steps_per_epoch
    if config.summarize_only:  # before any table rewrites its CSV
        pipeline.check_workdir(workdir, config, write=False)
    table = ResultTable(workdir, _KEY, stem="signatures", timing_columns=("seconds",))
    if not config.summarize_only:
        with claim(workdir):
            pipeline.check_workdir(workdir, config)
            todo = [(s, t) for s in setup.seeds for t in run_types(config)
                    if not table.done(model=setup.spec.name, run=t[0], seed=s)]
            setup.job.plan(len(todo) * (config.record_steps + setup.eval_units))
            for seed in setup.seeds:
                runs = [t for s, t in todo if s == seed]
                if runs:
                    window = prune.seed_window(setup, seed, steps, workdir)
                    for name, method, c in runs:
                        table.add([record_run(setup, window, name, method, c, seed)])
    pairs, tests = comparisons(config, table.rows) if table.rows else ([], [])
    if pairs:
        atomic_write_text(os.path.join(workdir, "distances.csv"), rows_to_csv(pairs))
        atomic_write_text(os.path.join(workdir, "tests.csv"), rows_to_csv(tests))
        spectra = {n: np.concatenate([signature(r, config.top) for r in table.rows if r["run"] == n])
                   for n, _, _ in run_types(config) if any(r["run"] == n for r in table.rows)}
        plots.spectra_by(spectra, os.path.join(workdir, "fig_spectra.png"), "run",
                         f"Signatures of the fine-tuning runs, {setup.spec.name}")
    summary = _summary(setup, steps, table.rows, tests, table.timings.rows if table.timings else ())
    atomic_write_text(os.path.join(workdir, "summary.md"), summary)
    return summary


main = cli.summary_main(CompareConfig, run)


if __name__ == "__main__":
    cli.define_flags(CompareConfig, default_workdir="runs/compare_dynamics")
    cli.run_main(main)
