"""Training: the state, SGD as torch.optim.SGD, masked train and eval steps,
the one training loop, and the trajectory recorders.

  TrainState, create_train_state, replace_mask   (state.py)
  make_optimizer, make_lr_schedule       (optimizer.py)
  make_train_step, make_eval_step, evaluate, loss_and_grads   (steps.py)

Submodules: `loop` (steps, callbacks, periodic checkpoints, resume),
`recording` (Θ in RAM or streamed into a store), `compile_options`
(per-jit XLA:CPU options).

May import: kpjax.train.
"""

from kpjax.train.optimizer import make_lr_schedule, make_optimizer
from kpjax.train.state import TrainState, create_train_state, full_mask, replace_mask
from kpjax.train.steps import (ApplyFn, AugmentFn, Metrics, NormalizeFn, batch_loss_fn, evaluate,
                               loss_and_grads, make_eval_step, make_train_step)

__all__ = [
    "ApplyFn", "AugmentFn", "Metrics", "NormalizeFn", "TrainState", "batch_loss_fn",
    "create_train_state", "evaluate", "full_mask", "loss_and_grads", "make_eval_step",
    "make_lr_schedule", "make_optimizer", "make_train_step", "replace_mask",
]
