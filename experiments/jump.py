r"""Koopman-accelerated training (Dogra & Redman 2020; Tano et al. 2020):
does a Koopman jump save gradient steps?

For each seed, from the seed's initialization and with the same batches in
the same order (batch i is the i-th gradient evaluation of either run):
  * plain SGD for --sgd_factor × --budget gradient evaluations, evaluated
    every --eval_every;
  * the accelerated run, --budget gradient evaluations in cycles: --window
    SGD steps recording Θ, an exact-DMD fit of the window (rcond --rcond),
    then a jump θ ← Re Σ_i b_i λ_i^(w+τ) φ_i (τ = --jump; `koopman.jump`)
    of the recorded parameters (with --increment: θ(w) plus the drift of the
    modes with |λ| ≤ 1 only, `koopman.jump_increment`), taken only when the fixed-point mode's
    residual is at most --max_residual and the loss on the next batch does
    not rise (one forward pass each side: no gradient); the momentum buffer
    is zeroed after a jump (--reset_momentum). Evaluated after every cycle.

Steps saved at the end: 1 − budget / s, where s is the number of plain-SGD
gradient evaluations after which SGD first reaches the accelerated run's
final top-1 (linear interpolation between SGD's evaluations; "> factor"
when SGD never reaches it). A jump that helps gives s > budget.

  python -m experiments.jump                                  # MnistNet, 3 seeds
  python -m experiments.jump --model=resnet20 --data_dir=PATH/cifar10-jpeg.tar.gz --seeds=0

Writes to --workdir: curves.csv/json (one row per run, seed and evaluation),
jumps.csv/json (one row per cycle of the accelerated runs: residual, λ₁,
whether it jumped, the losses), summary.md, fig_curves.png. Reruns skip the
finished (run, seed) pairs.

May import: absl, jax, numpy, matplotlib, experiments, kpjax.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np
from absl import logging

from experiments import cli, common, pipeline, plots, report, resources
from experiments.config import JumpConfig
from experiments.results import (ResultTable, atomic_write_json, atomic_write_text, markdown_table,
                                 mean_std, read_json, rows_to_csv)
from experiments.workdir import claim
from kpjax import data, flatten, koopman, models, pruning, train
from kpjax.train import recording
from kpjax.flatten import count_params

_KEY = ("model", "run", "seed", "grad_evals")


class _Setup:
    """Data, model and compiled steps shared by every run."""

    def __init__(self, config: JumpConfig):
        self.config = config
        self.spec = resources.model_spec(config)
        self.dataset = common.load_data(config)
        self.steps_per_epoch = common.steps_per_epoch(self.dataset, config.batch_size)
        self.budget = config.budget or 2 * self.steps_per_epoch
        self.tx = config.train.optimizer(self.steps_per_epoch)
        self.normalize = common.normalize_fn(config, self.dataset)
        self.step = train.make_train_step(self.spec.module.apply, self.tx, normalize_fn=self.normalize,
                                          augment_fn=common.augment_fn(config, self.dataset))
        self.eval_step = train.make_eval_step(self.spec.module.apply, normalize_fn=self.normalize)
        params = models.variable_shapes(self.spec)["params"]
        self.select = pruning.prunable(params)  # every kernel and bias (BatchNorm's are not jumped)

    def state(self, seed: int) -> train.TrainState:
        variables = models.init_variables(self.spec, seed)
        return train.create_train_state(variables["params"], self.tx, jax.random.PRNGKey(seed),
                                        batch_stats=variables.get("batch_stats"))

    def batches(self, seed: int):
        return lambda start: data.batch_stream(self.dataset.train_images, self.dataset.train_labels,
                                               self.config.batch_size, seed=seed, start_step=start)

    def row(self, run: str, seed: int, grad_evals: int, state, seconds: float) -> dict:
        ev = common.evaluate(self.eval_step, state, self.dataset, self.config.eval_batch_size)
        return {"model": self.spec.name, "run": run, "seed": seed, "grad_evals": grad_evals,
                "phase": "eval", "top1": ev["top1"], "loss": ev["loss"], "seconds": round(seconds, 2)}


def sgd_run(setup: _Setup, seed: int) -> list[dict]:
    """Plain SGD, evaluated every --eval_every gradient evaluations."""
    config, start = setup.config, time.time()
    total = int(round(setup.config.sgd_factor * setup.budget))
    state, rows, done = setup.state(seed), [], 0
    rows.append(setup.row("sgd", seed, 0, state, 0.0))
    while done < total:  # every --eval_every, and at the budget itself (the equal-budget column)
        stop = min((done // config.eval_every + 1) * config.eval_every, total)
        n = (min(stop, setup.budget) if done < setup.budget else stop) - done
        state = common.run_steps(setup.step, state, setup.batches(seed), n, f"seed {seed} sgd")
        done += n
        rows.append(setup.row("sgd", seed, done, state, time.time() - start))
    return rows


def _loss(setup: _Setup, state, params, batch) -> float:
    images, labels = batch
    fn = train.batch_loss_fn(setup.spec.module.apply, state.batch_stats,
                             setup.normalize(np.asarray(images)), np.asarray(labels), train=False)
    return float(fn(params))


def koopman_run(setup: _Setup, seed: int) -> tuple[list[dict], list[dict]]:
    """The accelerated run: (its evaluations, one row per cycle)."""
    config, start = setup.config, time.time()
    state = setup.state(seed)
    recorder = recording.make_recording_train_step(setup.step, setup.select)
    rows, cycles, done = [setup.row("koopman", seed, 0, state, 0.0)], [], 0
    while done < setup.budget:
        w = min(config.window, setup.budget - done)
        if w < 2:  # too short to fit: plain steps
            state = common.run_steps(setup.step, state, setup.batches(seed), w, f"seed {seed} koopman")
            done += w
            rows.append(setup.row("koopman", seed, done, state, time.time() - start))
            break
        batches = setup.batches(seed)(int(state.step))
        state, theta = recording.record_trajectory(recorder, state, batches, w, setup.select)
        done += w
        fit = koopman.fit_trajectory(theta, rcond=config.rcond)
        i = koopman.fixed_point_index(fit)
        residual = float(np.asarray(fit.residuals)[i])
        lam = complex(np.asarray(fit.eigenvalues)[i])
        cycle = {"model": setup.spec.name, "seed": seed, "grad_evals": done, "residual": residual,
                 "lambda1_real": lam.real, "lambda1_imag": lam.imag, "jumped": False}
        if np.isfinite(residual) and residual <= config.max_residual:
            spec = flatten.flat_spec(state.params, setup.select)
            predict = koopman.jump_increment if config.increment else koopman.jump
            jumped = flatten.unravel_selected(
                np.asarray(predict(theta, fit, config.jump), np.float32), spec, state.params)
            jumped = pruning.apply_mask(jumped, state.mask)
            nxt = next(iter(setup.batches(seed)(int(state.step))))  # the next batch, forward only
            before, after = _loss(setup, state, state.params, nxt), _loss(setup, state, jumped, nxt)
            cycle.update(loss_before=before, loss_after=after)
            if np.isfinite(after) and after <= before:
                cycle["jumped"] = True
                if config.reset_momentum:
                    fresh = train.create_train_state(jumped, setup.tx, state.rng,
                                                     batch_stats=state.batch_stats, mask=state.mask)
                    state = fresh._replace(step=state.step)
                else:
                    state = state._replace(params=jumped)
        del theta
        cycles.append(cycle)
        rows.append(setup.row("koopman", seed, done, state, time.time() - start))
        logging.info("seed %d koopman: %d/%d gradient evaluations, residual %.2e, %s, top-1 %.2f%%",
                     seed, done, setup.budget, residual, "jumped" if cycle["jumped"] else "no jump",
                     100 * rows[-1]["top1"])
    return rows, cycles


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """Gradient evaluations at which a curve [(g, top1), ...] first reaches
    `target`, interpolated linearly between evaluations; None if never."""
    for (g0, a0), (g1, a1) in zip(curve, curve[1:]):
        if a1 >= target:
            if a0 >= target:
                return float(g0)
            return g0 + (g1 - g0) * (target - a0) / (a1 - a0)
    return None


def savings(setup: _Setup, rows: list[dict], cycles: list[dict]) -> list[dict]:
    """Per seed: the accelerated run's final top-1, the SGD evaluations that
    reach it, the fraction of steps saved, SGD's top-1 at the same budget,
    the jumps taken. A seed that took no jump ran plain SGD on SGD's batches:
    its steps to match are the budget by construction (reading them off a
    noisy SGD curve would make 'saved' the curve's noise)."""
    out = []
    for seed in sorted({r["seed"] for r in rows}):
        sgd = sorted((r["grad_evals"], r["top1"]) for r in rows if r["run"] == "sgd" and r["seed"] == seed)
        kp = sorted((r["grad_evals"], r["top1"]) for r in rows if r["run"] == "koopman" and r["seed"] == seed)
        if not sgd or not kp or kp[-1][0] < setup.budget:
            continue
        target = kp[-1][1]
        jumps = sum(c["jumped"] for c in cycles if c["seed"] == seed)
        reach = steps_to_reach(sgd, target) if jumps else float(setup.budget)
        at_budget = next((a for g, a in sgd if g == setup.budget), None)
        out.append({"seed": seed, "koopman_top1": target, "sgd_top1_at_budget": at_budget,
                    "sgd_steps_to_match": reach, "jumps": jumps,
                    "saved": None if reach is None else 1.0 - setup.budget / reach})
    return out


def _summary(setup: _Setup, rows, cycles, timings=()) -> str:
    config = setup.config
    saved = savings(setup, rows, cycles)
    body = [[str(s["seed"]), str(s["jumps"]), f"{100 * s['koopman_top1']:.2f}",
             "–" if s["sgd_top1_at_budget"] is None else f"{100 * s['sgd_top1_at_budget']:.2f}",
             "never" if s["sgd_steps_to_match"] is None
             else f"{s['sgd_steps_to_match']:.0f}" + ("" if s["jumps"] else " (no jump: SGD itself)"),
             "–" if s["saved"] is None else f"{100 * s['saved']:.1f} %"] for s in saved]
    fractions = [s["saved"] for s in saved if s["saved"] is not None]
    gaps = [s["koopman_top1"] - s["sgd_top1_at_budget"] for s in saved
            if s["sgd_top1_at_budget"] is not None]
    jumped = sum(c["jumped"] for c in cycles)
    answer = "no data yet"
    if fractions:
        m, sd = mean_std(fractions)
        g, gsd = mean_std(gaps)
        answer = (f"steps saved {100 * m:.1f} ± {100 * sd:.1f} % (n = {len(fractions)}); top-1 at "
                  f"equal gradient evaluations {100 * g:+.2f} ± {100 * gsd:.2f} points against SGD. "
                  f"The goal (≥ 30 % saved at equal accuracy ± 0.2 points) is "
                  f"{'met' if m >= 0.3 else 'not met'} with these settings.")
    params = models.variable_shapes(setup.spec)["params"]
    return "\n".join([
        f"# Koopman-accelerated training of {setup.spec.name} on {setup.dataset.name}", "",
        answer, "",
        f"Seeds {sorted({r['seed'] for r in rows})}; budget {setup.budget} gradient evaluations "
        f"({setup.budget / setup.steps_per_epoch:g} epochs); SGD lr {config.train.lr:g}, momentum "
        f"{config.train.momentum:g}, batch {config.batch_size}; window w = {config.window} steps, "
        f"jump τ = {config.jump} steps"
        f"{' (increment: the drift of the modes with |λ| ≤ 1 from θ(w))' if config.increment else ''}, rcond {config.rcond:g}, residual gate {config.max_residual:g}, "
        f"momentum {'reset' if config.reset_momentum else 'kept'} after a jump. Jumped params: "
        f"{count_params(params, setup.select):,} of {count_params(params):,}.", "",
        *report.data_line(setup.dataset.name, setup.dataset.source),
        "## Steps saved", "",
        markdown_table(["seed", "jumps", "accelerated top-1 %", "SGD top-1 % at the same budget",
                        "SGD evaluations to match", "saved"], body), "",
        f"Jumps taken: {jumped} of {len(cycles)} cycles (the others failed the residual gate "
        "or raised the next batch's loss; jumps.csv).", "",
        *report.provenance(timings)])


def _plot(rows, path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (run, seed) in sorted({(r["run"], r["seed"]) for r in rows}):
        curve = sorted((r["grad_evals"], r["top1"]) for r in rows if r["run"] == run and r["seed"] == seed)
        ax.plot([g for g, _ in curve], [100 * a for _, a in curve],
                color="C0" if run == "sgd" else "C3", alpha=0.7,
                label=f"{run}" if seed == min(r["seed"] for r in rows) else None)
    ax.set_xlabel("gradient evaluations")
    ax.set_ylabel("test top-1 %")
    ax.set_ylim(max(0, min(100 * r["top1"] for r in rows if r["grad_evals"] > 0) - 2), 100)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    plots.save_figure(fig, path)


def run(config: JumpConfig, workdir: str) -> str:
    """Runs (or resumes) the comparison in `workdir`; returns summary.md."""
    resources.check_resources(config)
    setup = _Setup(config)
    if config.summarize_only:  # before any table rewrites its CSV
        pipeline.check_workdir(workdir, config, write=False)
    curves = ResultTable(workdir, _KEY, stem="curves", timing_columns=("seconds",))
    jumps_path = os.path.join(workdir, "jumps.json")
    cycles = read_json(jumps_path, "the jump cycles") if os.path.exists(jumps_path) else []
    if not config.summarize_only:
        with claim(workdir):
            pipeline.check_workdir(workdir, config)
            for seed in config.seeds:
                for name, fn in (("sgd", sgd_run), ("koopman", koopman_run)):
                    if curves.done(model=setup.spec.name, run=name, seed=seed, grad_evals=0):
                        continue
                    out = fn(setup, seed)
                    if name == "koopman":
                        out, new = out
                        cycles = [c for c in cycles if c["seed"] != seed] + new
                        atomic_write_json(jumps_path, cycles)
                        atomic_write_text(os.path.join(workdir, "jumps.csv"), rows_to_csv(cycles))
                    curves.add(out)  # all the pair's rows at once: done or not at all
    # A run's rows carry the seconds since its start: its last row is its wall time.
    last: dict[tuple, dict] = {}
    for r in (curves.timings.rows if curves.timings else ()):
        key = (r["run"], r["seed"])
        if key not in last or r["grad_evals"] > last[key]["grad_evals"]:
            last[key] = r
    summary = _summary(setup, curves.rows, cycles, list(last.values()))
    atomic_write_text(os.path.join(workdir, "summary.md"), summary)
    if curves.rows:
        _plot(curves.rows, os.path.join(workdir, "fig_curves.png"),
              f"{setup.spec.name}: SGD vs Koopman jumps")
    return summary


main = cli.summary_main(JumpConfig, run)

if __name__ == "__main__":
    cli.define_flags(JumpConfig, default_workdir="runs/jump")
    cli.run_main(main)
