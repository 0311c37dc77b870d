"""SGD as PyTorch's ``torch.optim.SGD``, and its step-wise learning rate.

The recipes of the pretrained checkpoints and of ShrinkBench used it:
weight decay is added to the gradient before momentum, g ← g + wd·θ; the
momentum buffer is b ← μ·b + g; the step is −η·(g + μ·b) with Nesterov,
−η·b without.

May import: optax.
"""

from __future__ import annotations

from collections.abc import Sequence

import optax


def make_lr_schedule(
    learning_rate: float,
    boundaries: Sequence[int] = (),
    decay: float = 0.1,
) -> optax.Schedule:
    """Piecewise-constant learning rate, ×``decay`` at each boundary.

    The step with index t (t = number of updates already applied) uses
    η·decay^#{b ≤ t}, as PyTorch's MultiStepLR with boundaries in steps
    (epoch e → step e·steps_per_epoch).

    Args:
        learning_rate: the initial η.
        boundaries: step indices at which η is multiplied by ``decay``.
        decay: the factor (≥ 0).

    Returns:
        An optax schedule ``step -> η``.
    """
    if learning_rate <= 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    if decay < 0:
        raise ValueError(f"lr decay factor must be >= 0, got {decay}")
    if any(b < 0 for b in boundaries):
        raise ValueError(
            f"lr boundaries must be >= 0, got {list(boundaries)}")
    scales: dict[int, float] = {}
    for b in boundaries:  # a repeated boundary decays twice, as MultiStepLR
        scales[int(b)] = scales.get(int(b), 1.0) * decay
    return optax.piecewise_constant_schedule(learning_rate, scales or None)


def make_optimizer(
    learning_rate: float | optax.Schedule = 1e-3,
    *,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """SGD as ``torch.optim.SGD`` (defaults: ShrinkBench fine-tuning).

    ShrinkBench fine-tuning: ``make_optimizer(1e-3)``.
    ResNet-20 pretraining (docs/DESIGN.md §4, 391 steps an epoch):
    ``make_optimizer(make_lr_schedule(0.1, [100 * 391, 150 * 391]),
    nesterov=False, weight_decay=1e-4)``.

    Args:
        learning_rate: η, a float or an optax schedule of the step.
        momentum: μ; 0 gives plain SGD.
        nesterov: Nesterov momentum (needs μ > 0, as in PyTorch).
        weight_decay: L2 coefficient added to the gradient before momentum,
            on every parameter (pruned ones are 0 and stay 0).

    Returns:
        An optax GradientTransformation.
    """
    if not callable(learning_rate) and learning_rate <= 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    if momentum < 0:
        raise ValueError(f"momentum must be >= 0, got {momentum}")
    if nesterov and momentum == 0:
        raise ValueError("nesterov momentum requires momentum > 0")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    sgd = optax.sgd(learning_rate, momentum=momentum or None,
                    nesterov=nesterov)
    if weight_decay == 0:
        return sgd
    return optax.chain(optax.add_decayed_weights(weight_decay), sgd)
