r"""Train a model from scratch (or resume), with masks, checkpoints and ETA.

Examples:
  # MnistNet, one epoch on the MNIST shipped in the package (>= 97% top-1):
  python -m experiments.train
  # Smoke run of ResNet-20 on synthetic CIFAR-sized data:
  python -m experiments.train --model=resnet20 --data=synthetic --steps=20
  # The ResNet-20 pretraining recipe (docs/DESIGN.md §4), resumable:
  python -m experiments.train --model=resnet20 --data_dir=~/data/cifar10 \
      --epochs=200 --train_lr=0.1 --train_weight_decay=1e-4 \
      --train_lr_boundaries=100,150 --workdir=/tmp/resnet20

With --workdir, the whole training state is checkpointed every
--checkpoint_every steps and at the end; rerunning the same
command after a kill resumes from the latest checkpoint, mid-epoch at the
next batch (batches are a function of (seed, step)); `kpjax.train.loop` does
both. The final metrics go to <workdir>/results.json, written atomically.
From Python: `run(TrainConfig(steps=20), workdir)`.

May import: absl, jax, numpy, experiments, kpjax.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

import jax
import numpy as np
from absl import flags, logging

from experiments import cli, common, resources
from experiments.config import TrainConfig
from experiments.results import atomic_write_json
from experiments.workdir import claim
from kpjax import data, train
from kpjax.train import loop
from kpjax.flatten import count_params


class _Log:
    """The loop's callback: mean loss/top-1 of the last `every` steps, img/s
    (timed from the end of the first, compiling step) and ETA."""

    def __init__(self, every: int, total: int, steps_per_epoch: int, batch_size: int):
        self.every, self.total, self.per_epoch, self.batch = every, total, steps_per_epoch, batch_size
        self.window: list[Any] = []
        self.start_step: int | None = None
        self.timed_start = 0.0

    def __call__(self, step: int, state, metrics) -> None:
        self.window.append(metrics)
        if self.start_step is None:
            jax.block_until_ready(state)
            self.start_step, self.timed_start = step, time.time()
        if step % self.every and step != self.total:
            return
        window, self.window = jax.device_get(self.window), []
        elapsed = time.time() - self.timed_start
        timed = step - self.start_step
        logging.info("step %d/%d  epoch %.2f  loss %.4f  top1 %.4f  %.0f img/s  ETA %s",
                     step, self.total, step / self.per_epoch,
                     np.mean([m["loss"] for m in window]), np.mean([m["top1"] for m in window]),
                     self.img_per_s(step), common.fmt_seconds(
                         elapsed / timed * (self.total - step) if timed else float("nan")))

    def img_per_s(self, step: int) -> float | None:
        timed = step - (self.start_step or step)
        elapsed = time.time() - self.timed_start
        return timed * self.batch / elapsed if timed and elapsed > 0 else None


def run(config: TrainConfig, workdir: str | None) -> dict[str, Any]:
    """Trains (resuming from `workdir`'s checkpoints, if any) and evaluates.

    Returns the final metrics, also written to <workdir>/results.json.
    """
    resources.check_resources(config)
    wall_start = time.time()
    spec = resources.model_spec(config)
    dataset = common.load_data(config, seed=config.seed)
    steps_per_epoch = common.steps_per_epoch(dataset, config.batch_size)
    total_steps = config.steps or config.epochs * steps_per_epoch
    tx = config.train.optimizer(steps_per_epoch)
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    # Jitted: op by op, the random initializers compile one by one (slow on CPU).
    variables = jax.jit(spec.module.init, static_argnames="train")(
        init_rng, np.zeros((1, *spec.input_shape), np.float32), train=False)
    state = train.create_train_state(variables["params"], tx, train_rng,
                                     batch_stats=variables.get("batch_stats"))
    normalize, augment = common.normalize_fn(config, dataset), common.augment_fn(config, dataset)
    train_step = train.make_train_step(spec.module.apply, tx, normalize_fn=normalize,
                                       augment_fn=augment)
    logging.info("%s on %s: %d params, %d examples, %d steps/epoch, %d steps in all (augment=%s)",
                 spec.name, dataset.name, count_params(state.params), len(dataset.train_labels),
                 steps_per_epoch, total_steps, augment is not None)
    checkpointing = None
    if workdir:
        checkpointing = loop.Checkpointing(
            workdir, every=config.checkpoint_every, max_to_keep=3,
            metadata={"model": spec.name, "data": dataset.name,
                      "batch_size": config.batch_size, "seed": config.seed})
    log = _Log(config.log_every, total_steps, steps_per_epoch, config.batch_size)

    def batches_from(start_step: int):
        return data.batch_stream(dataset.train_images, dataset.train_labels, config.batch_size,
                                 seed=config.seed, start_step=start_step)

    with claim(workdir) if workdir else contextlib.nullcontext():
        state = loop.train_steps(train_step, state, batches_from, total_steps,
                                 checkpointing=checkpointing, on_step=log)
    jax.block_until_ready(state)
    train_img_per_s = log.img_per_s(total_steps)

    eval_start = time.time()
    eval_step = train.make_eval_step(spec.module.apply, normalize_fn=normalize)
    test = common.evaluate(eval_step, state, dataset, config.eval_batch_size)
    results = {
        "model": spec.name, "data": dataset.name, "steps": int(state.step),
        "test_loss": test["loss"], "test_top1": test["top1"], "test_top5": test["top5"],
        "test_examples": test["n"], "train_img_per_s": train_img_per_s,
        "eval_img_per_s": test["n"] / (time.time() - eval_start),
        "wall_seconds": time.time() - wall_start,
    }
    if workdir:  # after the lock: a concurrent run was refused before training
        atomic_write_json(os.path.join(workdir, "results.json"), results)
    return results


def main(argv) -> None:
    values = flags.FLAGS.flag_values_dict()
    cli.quiet_orbax()
    r = run(cli.build_config(TrainConfig, values), values["workdir"])
    print(f"test loss {r['test_loss']:.4f}  top-1 {100 * r['test_top1']:.2f}%  "
          f"top-5 {100 * r['test_top5']:.2f}%  ({r['test_examples']} examples)")
    if r["train_img_per_s"] is not None:
        print(f"train {r['train_img_per_s']:.0f} img/s (after the first step); "
              f"eval {r['eval_img_per_s']:.0f} img/s; wall {r['wall_seconds']:.1f}s")


if __name__ == "__main__":
    cli.define_flags(TrainConfig, default_workdir=None)
    cli.run_main(main)
