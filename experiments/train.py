r"""Train a model from scratch (or resume), with masks, checkpoints and ETA.

Examples:
  # MnistNet, one epoch on the MNIST shipped in the package (>= 97% top-1):
  python -m experiments.train
  # Smoke run of ResNet-20 on synthetic CIFAR-sized data:
  python -m experiments.train --model=resnet20 --data=synthetic --steps=20
  # The ResNet-20 pretraining recipe (DESIGN.md §4), resumable:
  python -m experiments.train --model=resnet20 --data_dir=~/data/cifar10 \
      --epochs=200 --lr=0.1 --weight_decay=1e-4 --lr_boundaries=100,150 \
      --workdir=/tmp/resnet20

With --workdir, the whole training state is checkpointed every
--checkpoint_every steps and at the end of each epoch; rerunning the same
command after a kill resumes from the latest checkpoint, mid-epoch at the
next batch (batches are a function of (seed, epoch)). The final metrics go to
<workdir>/results.json.
"""

from __future__ import annotations

import itertools
import json
import os
import time

import jax
import numpy as np
from absl import app, flags, logging

from experiments import common
from kpjax import checkpoints, data, models, train

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "mnistnet", "Model name (kpjax.models.MODELS).")
flags.DEFINE_string(
    "data", None,
    "Dataset: mnist, cifar10 or synthetic; default: the model's dataset.")
flags.DEFINE_string("data_dir", None,
                    "Directory with the original dataset archives.")
flags.DEFINE_bool("download", False,
                  "Download missing archives with TFDS's download manager.")
flags.DEFINE_integer("synthetic_examples", 4096,
                     "Training examples of --data=synthetic.")
flags.DEFINE_integer("epochs", 1, "Epochs to train.")
flags.DEFINE_integer(
    "steps", None, "Total optimizer steps; overrides --epochs when set.")
flags.DEFINE_integer("batch_size", 128, "Training batch size.")
flags.DEFINE_integer("eval_batch_size", 1000, "Evaluation batch size.")
flags.DEFINE_float("lr", 0.05, "Initial learning rate η.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum μ (0: plain SGD).")
flags.DEFINE_bool("nesterov", False, "Nesterov momentum.")
flags.DEFINE_float("weight_decay", 0.0,
                   "L2 weight decay, added to the gradient (PyTorch SGD).")
flags.DEFINE_list("lr_boundaries", [],
                  "Epochs at which the learning rate is multiplied by "
                  "--lr_decay, e.g. 100,150.")
flags.DEFINE_float("lr_decay", 0.1, "Learning-rate factor at each boundary.")
flags.DEFINE_enum("augment", "auto", ["auto", "on", "off"],
                  "Random crop + flip; auto: on for cifar10.")
flags.DEFINE_enum("normalization", "pretrained", ["pretrained", "shrinkbench"],
                  "Normalization constants (differ for CIFAR-10 only).")
flags.DEFINE_integer("seed", 0, "Seed of the initialization, shuffling and "
                     "augmentation.")
flags.DEFINE_string("workdir", None,
                    "Checkpoint/results directory; resumes from it.")
flags.DEFINE_integer("checkpoint_every", 200,
                     "Checkpoint every this many steps (with --workdir).")
flags.DEFINE_integer("log_every", 50, "Log progress every this many steps.")


def _check_flags() -> tuple[models.ModelSpec, list[int]]:
    """Validates the flags; returns the model spec and lr boundary epochs."""
    spec = common.model_spec(FLAGS.model)
    if FLAGS.data is not None and FLAGS.data not in data.DATASET_NAMES:
        raise app.UsageError(
            f"--data={FLAGS.data!r}; known: {', '.join(data.DATASET_NAMES)}")
    positive = {"epochs": FLAGS.epochs, "batch_size": FLAGS.batch_size,
                "eval_batch_size": FLAGS.eval_batch_size,
                "checkpoint_every": FLAGS.checkpoint_every,
                "log_every": FLAGS.log_every,
                "synthetic_examples": FLAGS.synthetic_examples}
    if FLAGS.steps is not None:
        positive["steps"] = FLAGS.steps
    for name, value in positive.items():
        if value < 1:
            raise app.UsageError(f"--{name} must be >= 1, got {value}")
    if FLAGS.lr <= 0 or FLAGS.momentum < 0 or FLAGS.weight_decay < 0:
        raise app.UsageError("need --lr > 0, --momentum >= 0, "
                             "--weight_decay >= 0")
    if FLAGS.nesterov and FLAGS.momentum == 0:
        raise app.UsageError("--nesterov needs --momentum > 0")
    try:
        boundaries = [int(b) for b in FLAGS.lr_boundaries]
    except ValueError:
        raise app.UsageError(
            f"--lr_boundaries must be integer epochs, got "
            f"{','.join(FLAGS.lr_boundaries)}") from None
    if any(b < 0 for b in boundaries) or FLAGS.lr_decay < 0:
        raise app.UsageError("--lr_boundaries and --lr_decay must be >= 0")
    return spec, boundaries


def _resume_or_init(state, run_info):
    """Restores the latest checkpoint of --workdir, if any."""
    if FLAGS.workdir is None:
        return state, 0, 0
    step = checkpoints.latest_step(FLAGS.workdir)
    if step is None:
        return state, 0, 0
    state, meta = checkpoints.restore_checkpoint(FLAGS.workdir, state)
    saved = {k: meta.get(k) for k in run_info}
    if saved != run_info:
        raise app.UsageError(
            f"--workdir={FLAGS.workdir} holds a run with {saved}, not "
            f"{run_info}; use another --workdir")
    logging.info("Resumed from step %d (epoch %d, batch %d)", step,
                 meta["epoch"], meta["batch"])
    return state, meta["epoch"], meta["batch"]


def main(argv):
    wall_start = time.time()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    common.quiet_orbax()
    spec, boundary_epochs = _check_flags()
    dataset = common.load_data(spec, FLAGS.data, FLAGS.data_dir, FLAGS.download,
                               synthetic_examples=FLAGS.synthetic_examples, seed=FLAGS.seed)
    norm_dataset = spec.dataset if dataset.name == "synthetic" else dataset.name
    mean, std = data.get_normalization(norm_dataset, FLAGS.normalization)
    augment = (FLAGS.augment == "on"
               or (FLAGS.augment == "auto" and dataset.name == "cifar10"))

    num_train = len(dataset.train_labels)
    steps_per_epoch = data.num_batches(num_train, FLAGS.batch_size)
    total_steps = FLAGS.steps or FLAGS.epochs * steps_per_epoch
    schedule = train.make_lr_schedule(
        FLAGS.lr, [b * steps_per_epoch for b in boundary_epochs],
        FLAGS.lr_decay)
    tx = train.make_optimizer(schedule, momentum=FLAGS.momentum,
                              nesterov=FLAGS.nesterov,
                              weight_decay=FLAGS.weight_decay)

    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(FLAGS.seed))
    # Jitted: op by op, the random initializers compile one by one (slow on CPU).
    variables = jax.jit(spec.module.init, static_argnames="train")(
        init_rng, np.zeros((1, *spec.input_shape), np.float32), train=False)
    state = train.create_train_state(
        variables["params"], tx, train_rng,
        batch_stats=variables.get("batch_stats"))
    run_info = {"model": spec.name, "data": dataset.name,
                "batch_size": FLAGS.batch_size, "seed": FLAGS.seed}
    state, epoch, batch_in_epoch = _resume_or_init(state, run_info)

    def normalize_fn(images):
        return data.normalize(images, mean, std)

    train_step = train.make_train_step(
        spec.module.apply, tx, normalize_fn=normalize_fn,
        augment_fn=data.augment_cifar if augment else None)
    eval_step = train.make_eval_step(spec.module.apply,
                                     normalize_fn=normalize_fn)
    n_params = sum(np.size(p) for p in jax.tree_util.tree_leaves(state.params))
    logging.info("%s on %s: %d params, %d examples, %d steps/epoch, %d steps "
                 "in all (augment=%s)", spec.name, dataset.name, n_params,
                 num_train, steps_per_epoch, total_steps, augment)

    manager = (checkpoints.checkpoint_manager(FLAGS.workdir)
               if FLAGS.workdir else None)
    step = int(state.step)
    start_step = step
    # Throughput is timed from the end of the first (compiling) step.
    timed_start, timed_images = None, 0
    window = []
    while step < total_steps:
        batch_iter = data.batches(dataset.train_images, dataset.train_labels,
                                  FLAGS.batch_size, seed=FLAGS.seed,
                                  epoch=epoch)
        for images, labels in itertools.islice(batch_iter, batch_in_epoch,
                                               None):
            state, metrics = train_step(state, images, labels)
            step += 1
            batch_in_epoch += 1
            window.append(metrics)
            if timed_start is None:
                jax.block_until_ready(state)
                timed_start = time.time()
            else:
                timed_images += len(labels)
            epoch_done = batch_in_epoch == steps_per_epoch
            if epoch_done:
                epoch, batch_in_epoch = epoch + 1, 0
            if step % FLAGS.log_every == 0 or step == total_steps:
                window = jax.device_get(window)
                elapsed = time.time() - timed_start
                timed_steps = step - start_step - 1
                eta = (elapsed / timed_steps * (total_steps - step)
                       if timed_steps else float("nan"))
                logging.info(
                    "step %d/%d  epoch %.2f  loss %.4f  top1 %.4f  "
                    "%.0f img/s  ETA %.0fs", step, total_steps,
                    step / steps_per_epoch,
                    np.mean([m["loss"] for m in window]),
                    np.mean([m["top1"] for m in window]),
                    timed_images / elapsed if elapsed > 0 else 0.0, eta)
                window = []
            if manager is not None and (step % FLAGS.checkpoint_every == 0
                                        or epoch_done or step == total_steps):
                checkpoints.save_checkpoint(
                    manager, state,
                    {**run_info, "epoch": epoch, "batch": batch_in_epoch})
            if step == total_steps:
                break
    jax.block_until_ready(state)
    train_seconds = time.time() - timed_start if timed_start else 0.0
    if manager is not None:
        manager.close()

    eval_start = time.time()
    test = train.evaluate(eval_step, state, data.batches(
        dataset.test_images, dataset.test_labels, FLAGS.eval_batch_size,
        seed=0, epoch=0, shuffle=False))
    eval_seconds = time.time() - eval_start
    results = {
        "model": spec.name, "data": dataset.name, "steps": step,
        "test_loss": test["loss"], "test_top1": test["top1"],
        "test_top5": test["top5"], "test_examples": test["n"],
        "train_img_per_s": (timed_images / train_seconds
                            if timed_images else None),
        "eval_img_per_s": test["n"] / eval_seconds,
        "wall_seconds": time.time() - wall_start,
    }
    print(f"test loss {test['loss']:.4f}  top-1 {100 * test['top1']:.2f}%  "
          f"top-5 {100 * test['top5']:.2f}%  ({test['n']} examples)")
    if results["train_img_per_s"] is not None:
        print(f"train {results['train_img_per_s']:.0f} img/s (after the first "
              f"step); eval {results['eval_img_per_s']:.0f} img/s; "
              f"wall {results['wall_seconds']:.1f}s")
    if FLAGS.workdir:
        with open(os.path.join(FLAGS.workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    common.run(main)
