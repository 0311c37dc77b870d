"""What a pruning run shares: its `Setup`, its workdir's settings, the batch orders.

experiments.prune, .early, .init, .compare_dynamics and .coreset build one
`Setup` from their config (the model, the data, the optimizers, the job
clock) and check their workdir against config.json (`check_workdir`).
Recording and scoring a window of training is `experiments.koopman_window`;
pruning, refining and evaluating one (method, compression) cell, and the
rows of the result tables, `experiments.cell`. Reads no flags.

May import: jax, numpy, experiments, kpjax.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple

import jax
import numpy as np

from experiments import common, resources
from experiments.config import PruningFields, json_ready, to_json
from experiments.results import atomic_write_json, read_json
from experiments.workdir import refuse_if_in_use
from kpjax import data, flatten, metrics, models, parallel, pruning, train
from kpjax.data import shifts
from kpjax.pruning import structured

# Config fields that are not settings of the results in a workdir: more
# methods, compressions or seeds only add cells; summarize_only is a mode;
# the early-bird rule only reads the results; controls add their own rows;
# the device count, like the core count, changes only the reduction order.
NOT_SETTINGS = ("methods", "compressions", "seeds", "prune_epochs", "prune_points", "summarize_only",
                "early_bird_patience", "early_bird_eps", "controls", "devices")
# Settings newer than most workdirs that are written to config.json only
# when given, so that a run without them writes what it always did.
WRITTEN_WHEN_SET = ("input_shape",)
# Read from the registered methods' own facts (`kpjax.PruningMethod`), in
# registration order: each method with a baseline and that baseline; the
# kept-set overlaps (every pair, and each method's `compared_with`); the
# methods scored again at the extra rank cutoffs.
BASELINE = {name: m.baseline for name, m in pruning.METHODS.items() if m.baseline}
PAIRS = tuple(BASELINE.items())
OVERLAPS = PAIRS + tuple((name, other) for name, m in pruning.METHODS.items() for other in m.compared_with)
CUTOFF_SENSITIVE = tuple(name for name, m in pruning.METHODS.items() if m.cutoff_sensitive)


# Batch orders: each purpose of a seed gets its own (seed * 1000 + purpose).
PRETRAIN, WINDOW, FINETUNE, REINIT = 0, 1, 2, 3


class Variant(NamedTuple):
    """What one set of scores is: a method and the rank cutoff of the Koopman
    fit its scores read (rcond; None for a method that reads no fit at a
    cutoff of the run: references, controls, data-only methods). It is the
    `method` and `rcond` columns of every result table."""
    method: str
    rcond: float | None = None


class Setup:
    """What every cell of a run shares, built once from the config."""

    def __init__(self, config: PruningFields):
        self.config = config
        self.spec = resources.model_spec(config)
        self.methods = list(config.methods)
        # Every method at the run's cutoff, then the cutoff-sensitive ones at
        # the other cutoffs (evaluated before refinement only).
        self.variants = [self.variant(m) for m in self.methods]
        self.sensitivity = [Variant(m, r) for r in config.rcond[1:]
                            for m in CUTOFF_SENSITIVE if m in config.methods]
        self.scored = self.variants + self.sensitivity
        self.compressions = list(config.compressions)
        self.seeds = list(config.seeds)
        self.dataset = common.load_data(config)
        self.steps_per_epoch = common.steps_per_epoch(self.dataset, config.batch_size)
        self.normalize = common.normalize_fn(config, self.dataset)
        self.augment = common.augment_fn(config, self.dataset)
        self.finetune_tx = config.finetune.optimizer(self.steps_per_epoch)
        self.finetune_step = self.train_step(self.finetune_tx)
        self.eval_step = self.make_eval_step(self.spec)
        self.variables0 = models.init_variables(self.spec, 0)
        params = self.variables0["params"]
        self.select = resources.prunable_set(config, self.spec, params)
        self.flat_spec = flatten.flat_spec(params, self.select)
        self.flops = metrics.layer_flops(self.spec.module, self.variables0, self.spec.input_shape)
        self.job = common.JobClock()
        self.eval_units = common.eval_units(len(self.dataset.test_labels), config.batch_size)
        self._shifted = None
        self._fractions: dict[float, float] = {}
        self.shift_units = 0.0
        if getattr(config, "eval_shifts", False):
            n = min(config.shift_examples, len(self.dataset.test_labels))
            self.shift_units = common.eval_units(
                n * (1 + len(shifts.SHIFTS) * len(shifts.SEVERITIES)), config.batch_size)
        devices = config.devices or len(jax.devices())
        self.mesh = parallel.column_mesh(jax.devices()[:devices]) if devices > 1 else None

    def variant(self, method: str) -> Variant:
        """`method` as the run scores it: at the run's cutoff if its scores read it."""
        return Variant(method, self.config.rcond[0] if method in CUTOFF_SENSITIVE else None)

    @property
    def filter_granularity(self) -> bool:
        return getattr(self.config, "granularity", "weight") == "filter"

    def filter_fraction(self, c: float) -> float:
        """The kept fraction f of every group's units whose shrunk network has
        compression total/kept ≥ c (the largest such f, by bisection)."""
        if c not in self._fractions:
            self._fractions[c] = structured.fraction_for_compression(self.spec, self.variables0, c)
        return self._fractions[c]

    def train_step(self, tx, spec: models.ModelSpec | None = None):
        """The training step of `spec` (default: the run's model) with `tx`."""
        return train.make_train_step((spec or self.spec).module.apply, tx, augment_fn=self.augment,
                                     normalize_fn=self.normalize)

    def make_eval_step(self, spec: models.ModelSpec):
        return train.make_eval_step(spec.module.apply, normalize_fn=self.normalize)

    def stream(self, seed: int, purpose: int):
        """Batches of (seed, purpose) as a function of the start step (`kpjax.train.loop`),
        split over the devices when training is data-parallel."""
        def batches(start_step=0):
            stream = data.batch_stream(
                self.dataset.train_images, self.dataset.train_labels, self.config.batch_size,
                seed=seed * 1000 + purpose, start_step=start_step)
            if self.mesh is None:
                return stream
            return (parallel.shard_batch(x, y, self.mesh) for x, y in stream)
        return batches

    def evaluate(self, state, eval_step=None) -> dict[str, float]:
        """Test-set loss, top-1 and top-5 (`eval_step`: another model's, e.g. a shrunk one)."""
        result = common.evaluate(eval_step or self.eval_step, state, self.dataset,
                                 self.config.eval_batch_size)
        self.job.tick(self.eval_units)
        return result

    def evaluate_shifts(self, state, eval_step=None) -> dict[tuple[str, int], float]:
        """Top-1 on the first --shift_examples test images, unshifted (('clean', 0))
        and under every shift and severity (('contrast', 3); `kpjax.data.shifts`,
        the noise seeded by the severity); {} without --eval_shifts."""
        if not self.shift_units:  # only PruneConfig has --eval_shifts
            return {}
        if self._shifted is None:
            n = self.config.shift_examples
            images, labels = self.dataset.test_images[:n], self.dataset.test_labels[:n]
            self._shifted = {("clean", 0): images, **{
                (name, s): shifts.shift_images(images, name, s, seed=s)
                for name in shifts.SHIFTS for s in shifts.SEVERITIES}}
            self._shift_labels = labels
        out = {}
        for key, images in self._shifted.items():
            ev = train.evaluate(eval_step or self.eval_step, state, data.batches(
                images, self._shift_labels, self.config.eval_batch_size, seed=0, epoch=0,
                shuffle=False))
            out[key] = ev["top1"]
        self.job.tick(self.shift_units)
        return out

    def plan_cells(self, count: int, sensitivity: int = 0) -> None:
        """Adds `count` cells (evaluations and fine-tuning) and `sensitivity`
        evaluation-only cells to the job clock."""
        self.job.plan(sensitivity * self.eval_units)
        per_cell = (self.eval_units * (1 + bool(self.config.finetune_epochs)) + self.shift_units
                    + self.config.finetune_epochs * self.steps_per_epoch)
        self.job.plan(count * per_cell)

    def state(self, variables, seed: int, tx=None, mask=None) -> train.TrainState:
        state = train.create_train_state(variables["params"], tx or self.finetune_tx,
                                         jax.random.PRNGKey(seed),
                                         batch_stats=variables.get("batch_stats"), mask=mask)
        return state if self.mesh is None else parallel.replicate(state, self.mesh)


def check_workdir(workdir: str, config: PruningFields, write: bool = True) -> None:
    """Refuses to mix results of different settings in one workdir; records
    the settings in config.json (unless `write` is False: summarize only,
    which is refused while a run holds the workdir)."""
    if not write:
        refuse_if_in_use(workdir)
    settings = {k: v for k, v in to_json(config).items() if k not in NOT_SETTINGS
                and not (k in WRITTEN_WHEN_SET and v == [])}
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        saved = read_json(path, "the settings of the results in this workdir")
        if not isinstance(saved, dict):
            raise ValueError(f"{path} is damaged (not an object); delete it or use another --workdir")
        # A setting newer than the workdir matches when it has its default.
        defaults = {f.name: json_ready(dataclasses.asdict(f.default) if dataclasses.is_dataclass(f.default)
                                       else f.default) for f in dataclasses.fields(config)}
        diff = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k, defaults.get(k)) != v}
        if diff:
            raise ValueError(
                f"workdir {workdir} holds a run with other settings (saved, now): {diff}; "
                "use another --workdir")
    elif not write:
        raise ValueError(f"{workdir} holds no run to summarize (no config.json)")
    if write:
        os.makedirs(workdir, exist_ok=True)
        atomic_write_json(path, settings)


def variables_of(state: train.TrainState) -> dict[str, Any]:
    out = {"params": state.params}
    if state.batch_stats:
        out["batch_stats"] = state.batch_stats
    return jax.tree_util.tree_map(np.asarray, out)
