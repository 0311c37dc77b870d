"""Pieces the experiments share: data, dense models, progress lines.

Glue between a config (`experiments.config`) and `kpjax`; no algorithm
lives here, and nothing reads flags. Progress lines (with ETA) go through
absl logging. Errors a user can fix are ValueErrors with one-line messages.

May import: absl, jax, numpy, experiments.config, experiments.resources, kpjax.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np
from absl import logging

from experiments import resources
from experiments.config import DataConfig
from kpjax import data, models, train
from kpjax.io import checkpoints, torch_import
from kpjax.train import loop

PyTree = Any


# ---------------------------------------------------------------------------
# Data.


def load_data(config: DataConfig, seed: int = 0) -> data.Dataset:
    """The config's dataset, optionally cut to its first examples.

    Raises:
      ValueError: the images do not fit the model.
      DataNotFoundError: the files are gone (an OSError, with the ways to
        provide them).
    """
    spec, name = resources.model_spec(config), resources.dataset_name(config)
    max_train, max_test = config.max_train_examples, config.max_test_examples
    if name == "synthetic":
        dataset = data.load_dataset(
            name, image_shape=spec.input_shape, num_train=config.synthetic_examples,
            num_test=max(config.synthetic_examples // 4, 1), seed=seed)
    else:
        dataset = data.load_dataset(name, config.data_dir, download=config.download)
    if dataset.train_images.shape[1:] != spec.input_shape:
        raise ValueError(
            f"--model={spec.name} expects {spec.input_shape} images; "
            f"--data={name} has {dataset.train_images.shape[1:]}")
    if max_train or max_test:
        dataset = dataset._replace(
            train_images=dataset.train_images[:max_train],
            train_labels=dataset.train_labels[:max_train],
            test_images=dataset.test_images[:max_test],
            test_labels=dataset.test_labels[:max_test])
    return dataset


def normalize_fn(config: DataConfig, dataset: data.Dataset) -> Callable:
    if dataset.name == "imagefolder":  # no published constants: the training images' own
        mean, std = data.image_normalization(dataset.train_images)
        return lambda images: data.normalize(images, mean, std)
    norm_dataset = resources.model_spec(config).dataset if dataset.name == "synthetic" else dataset.name
    mean, std = data.get_normalization(norm_dataset, config.normalization)
    return lambda images: data.normalize(images, mean, std)


def augment_fn(config: DataConfig, dataset: data.Dataset) -> Callable | None:
    on = config.augment == "on" or (config.augment == "auto" and dataset.name == "cifar10")
    return data.augment_cifar if on else None


# ---------------------------------------------------------------------------
# Dense models.


def load_variables(path: str, spec: models.ModelSpec) -> PyTree:
    """{'params', 'batch_stats'?} from a PyTorch file or an orbax checkpoint directory."""
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise ValueError(f"--init_checkpoint={path}: no such file or directory")
    template = models.variable_shapes(spec)
    try:
        if os.path.isdir(path):
            variables = checkpoints.restore_variables(path, template)
        else:
            variables = torch_import.import_torch_checkpoint(path, template, spec.flattened_inputs)
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"--init_checkpoint={path}: {e}") from None
    return jax.tree_util.tree_map(np.asarray, variables)


# ---------------------------------------------------------------------------
# The loop.


class Progress:
    """Logs a progress bar with rate and ETA at most every `every_s` seconds."""

    def __init__(self, total: int, desc: str, every_s: float = 10.0):
        self.total, self.desc, self.every_s = total, desc, every_s
        self.done = 0
        self.start = self.last = time.time()

    def update(self, n: int = 1, wait: Callable[[], Any] | None = None, **metrics: float) -> None:
        """Counts n more done; `wait` (e.g. block on the state) runs before a line is
        logged, since JAX dispatches steps asynchronously, ahead of the computation."""
        self.done += n
        if time.time() - self.last < self.every_s and self.done < self.total:
            return
        if wait is not None:
            wait()
        now = self.last = time.time()
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        width = 20
        filled = int(width * self.done / max(self.total, 1))
        extra = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        logging.info("%s [%s%s] %d/%d  %s  ETA %s  %s", self.desc, "#" * filled,
                     "." * (width - filled), self.done, self.total, fmt_rate(rate),
                     fmt_seconds(eta), extra)


class JobClock:
    """One progress line for a whole run, with an ETA over every phase.

    The run states its work up front in units of one training step
    (pretraining, the recorded windows, every cell's fine-tuning); an
    evaluation counts as the training steps its forward passes are worth
    (`eval_units`). The ETA is the remaining units at the rate measured so
    far over everything (compilation, fits and evaluations included), so it
    is there from the first logged line and tightens as the run goes.
    """

    def __init__(self, every_s: float = 30.0):
        self.total = self.done = 0.0
        self.every_s = every_s
        self.start = time.time()
        self.last = self.start - every_s + min(10.0, every_s)  # the first line after 10 s

    def plan(self, units: float) -> None:
        self.total += units

    def tick(self, units: float = 1.0) -> None:
        self.done += units
        now = time.time()
        if now - self.last < self.every_s:
            return
        self.last = now
        elapsed = now - self.start
        left = max(self.total - self.done, 0.0)
        eta = elapsed / self.done * left if self.done else float("nan")
        percent = 100.0 * self.done / self.total if self.total else 100.0
        logging.info("job %3.0f%% done, %s elapsed, ETA %s (all phases: training, windows, fits, "
                     "evaluations)", min(percent, 100.0), fmt_seconds(elapsed), fmt_seconds(eta))


def steps_per_epoch(dataset: data.Dataset, batch_size: int) -> int:
    """Training steps per epoch (the last batch may be short).

    Raises:
      ValueError: a batch larger than the training set, which would train
        one short batch per epoch under a batch size it never has.
    """
    n = len(dataset.train_labels)
    if batch_size > n:
        raise ValueError(f"--batch_size {batch_size} exceeds the {n} training examples; "
                         f"use --batch_size <= {n}")
    return data.num_batches(n, batch_size)


def eval_units(num_examples: int, batch_size: int) -> float:
    """An evaluation in training-step units: a forward pass costs about a third
    of a forward and backward pass, per example."""
    return num_examples / batch_size / 3.0


def fmt_rate(per_second: float) -> str:
    """'12.3 it/s', or seconds per item when slower than one a second (cells)."""
    if per_second >= 1 or per_second <= 0:
        return f"{per_second:.1f} it/s"
    return f"{1 / per_second:.1f} s/it"


def fmt_seconds(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def run_steps(
    train_step: Callable,
    state: train.TrainState,
    batches_from: Callable[[int], Iterable[tuple[np.ndarray, np.ndarray]]],
    num_steps: int,
    desc: str,
    checkpointing: loop.Checkpointing | None = None,
    job: JobClock | None = None,
) -> train.TrainState:
    """`num_steps` more steps of `kpjax.train.loop.train_steps` with a progress bar
    (resuming from `checkpointing`, if given); logs the last batch's loss and
    ticks the run's `job` clock."""
    progress = Progress(num_steps, desc)
    last: list[Any] = []

    def on_step(step, state, metrics):
        progress.update(1, wait=lambda: jax.block_until_ready(metrics))
        if job is not None:
            job.tick()
        last[:] = [metrics]

    state = loop.train_steps(train_step, state, batches_from, int(state.step) + num_steps,
                             checkpointing=checkpointing, on_step=on_step)
    if last:
        logging.info("%s done: last batch loss %.4f", desc, float(last[0]["loss"]))
    return state


def evaluate(eval_step: Callable, state: train.TrainState, dataset: data.Dataset,
             batch_size: int) -> dict[str, float]:
    return train.evaluate(eval_step, state, data.batches(
        dataset.test_images, dataset.test_labels, batch_size, seed=0, epoch=0, shuffle=False))
