"""Pieces the experiment binaries share: flag checks, data, dense models, the loop.

Everything here is glue between absl flags and `kpjax`; no algorithm lives
here. Progress lines (with ETA) go through absl logging.
"""

from __future__ import annotations

import itertools
import logging as std_logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import numpy as np
from absl import app, logging

from kpjax import checkpoints, data, models, torch_import, train

PyTree = Any
TORCH_SUFFIXES = (".pt", ".pth", ".th", ".tar")


class QuietOrbax(std_logging.Filter):
    """Drops orbax's INFO records (a dozen lines per checkpoint)."""

    def filter(self, record):
        return (record.levelno >= std_logging.WARNING
                or f"{os.sep}orbax{os.sep}" not in record.pathname)


def quiet_orbax() -> None:
    logging.get_absl_handler().addFilter(QuietOrbax())


# ---------------------------------------------------------------------------
# Flags.


def run(main: Callable[[list[str]], Any]) -> None:
    """`app.run(main)`, but a bad flag value stops with one line, not the whole help."""

    def main_with_short_usage_errors(argv):
        try:
            return main(argv)
        except app.UsageError as e:
            sys.stderr.write(f"usage error: {e}\n(--help lists the flags)\n")
            sys.exit(2)

    app.run(main_with_short_usage_errors)


def parse_floats(name: str, values: Sequence[str]) -> list[float]:
    try:
        out = [float(v) for v in values]
    except ValueError:
        raise app.UsageError(f"--{name} must be numbers, got {','.join(values)}") from None
    if not out:
        raise app.UsageError(f"--{name} must not be empty")
    return out


def parse_ints(name: str, values: Sequence[str], minimum: int = 0) -> list[int]:
    try:
        out = [int(v) for v in values]
    except ValueError:
        raise app.UsageError(f"--{name} must be integers, got {','.join(values)}") from None
    if not out:
        raise app.UsageError(f"--{name} must not be empty")
    if any(v < minimum for v in out):
        raise app.UsageError(f"--{name} values must be >= {minimum}, got {out}")
    return out


def check_compressions(values: Sequence[float]) -> None:
    for c in values:
        if not np.isfinite(c) or c <= 1.0:
            raise app.UsageError(f"--compressions must be finite and > 1, got {c:g}")


def model_spec(name: str) -> models.ModelSpec:
    try:
        return models.get_model(name)
    except ValueError as e:
        raise app.UsageError(str(e)) from None


# ---------------------------------------------------------------------------
# Data.


def load_data(
    spec: models.ModelSpec,
    name: str | None,
    data_dir: str | None,
    download: bool,
    *,
    synthetic_examples: int = 4096,
    max_train: int | None = None,
    max_test: int | None = None,
    seed: int = 0,
) -> data.Dataset:
    """The model's dataset (or `name`), optionally cut to its first examples.

    A missing dataset stops the binary at once with the ways to provide it.
    """
    name = name or spec.dataset
    try:
        if name == "synthetic":
            dataset = data.load_dataset(
                name, image_shape=spec.input_shape, num_train=synthetic_examples,
                num_test=max(synthetic_examples // 4, 1), seed=seed)
        else:
            dataset = data.load_dataset(name, data_dir, download=download)
    except (data.DataNotFoundError, ValueError) as e:
        raise app.UsageError(str(e)) from None
    if dataset.train_images.shape[1:] != spec.input_shape:
        raise app.UsageError(
            f"--model={spec.name} expects {spec.input_shape} images; "
            f"--data={name} has {dataset.train_images.shape[1:]}")
    if max_train or max_test:
        dataset = dataset._replace(
            train_images=dataset.train_images[:max_train],
            train_labels=dataset.train_labels[:max_train],
            test_images=dataset.test_images[:max_test],
            test_labels=dataset.test_labels[:max_test])
    return dataset


def normalize_fn(spec: models.ModelSpec, dataset: data.Dataset, variant: str) -> Callable:
    norm_dataset = spec.dataset if dataset.name == "synthetic" else dataset.name
    mean, std = data.get_normalization(norm_dataset, variant)
    return lambda images: data.normalize(images, mean, std)


# ---------------------------------------------------------------------------
# Dense models.


def init_variables(spec: models.ModelSpec, seed: int) -> PyTree:
    return spec.module.init(jax.random.PRNGKey(seed),
                            np.zeros((1, *spec.input_shape), np.float32), train=False)


def load_variables(path: str, spec: models.ModelSpec) -> PyTree:
    """{'params', 'batch_stats'?} from a PyTorch file or an orbax checkpoint directory."""
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise app.UsageError(f"--init_checkpoint={path}: no such file or directory")
    template = jax.eval_shape(lambda: init_variables(spec, 0))
    try:
        if os.path.isdir(path):
            variables = checkpoints.restore_variables(path, template)
        else:
            variables = torch_import.import_torch_checkpoint(path, template, spec.flattened_inputs)
    except (ValueError, FileNotFoundError) as e:
        raise app.UsageError(f"--init_checkpoint={path}: {e}") from None
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
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    num_steps: int,
    desc: str,
) -> train.TrainState:
    """`num_steps` training steps with a progress bar (loss from the last step)."""
    progress = Progress(num_steps, desc)
    metrics = None
    for images, labels in itertools.islice(batches, num_steps):
        state, metrics = train_step(state, images, labels)
        progress.update(1, wait=lambda: jax.block_until_ready(metrics))
    if metrics is not None:
        logging.info("%s done: last batch loss %.4f", desc, float(metrics["loss"]))
    return state


def evaluate(eval_step: Callable, state: train.TrainState, dataset: data.Dataset,
             batch_size: int) -> dict[str, float]:
    return train.evaluate(eval_step, state, data.batches(
        dataset.test_images, dataset.test_labels, batch_size, seed=0, epoch=0, shuffle=False))
