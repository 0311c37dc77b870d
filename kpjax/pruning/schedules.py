r"""Sparsity schedules: when a mask is recomputed during training, and the
sparsity s (the pruned fraction of the prunable parameters) it then reaches.

  one_shot(s, t)        s at step t, dense before;
  polynomial(s_f, ...)  Zhu & Gupta (2017): at t = t₀ + kΔt, k = 0 … n,
                        s_t = s_f + (s_i − s_f)(1 − (t − t₀)/(nΔt))³
                        (`optax.polynomial_schedule`, sampled at the points);
  iterative(s_f, R, L)  iterative magnitude pruning (Frankle & Carbin 2019;
                        Frankle et al. 2020): after each round of L steps,
                        prune the same fraction p of the surviving weights,
                        s_r = 1 − (1 − p)^r, p = 1 − (1 − s_f)^{1/R}, and
                        rewind the kept weights to θ(k) (k = 0: the
                        original lottery ticket).

A schedule is data: its points and targets, and what happens at a point
(rewind or not). It is also an optax-style schedule, step ↦ the sparsity in
force (0 before the first point), usable inside jit. Any registered score
drives any schedule: at a point, `kpjax.pruning.gradual.sparsity_flat_mask`
keeps the 1 − s_t best scores among the weights still kept.

May import: jax, numpy, optax.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax


class SparsitySchedule(NamedTuple):
    """Masks recomputed at `points` (training steps, increasing), reaching
    sparsity `targets[i]` at `points[i]` (non-decreasing, in [0, 1)).

    rewind_step: None, or k: after each point the kept weights are reset to
      θ(k) and training resumes from step k's schedule position (IMP with
      rewinding; k = 0 is the original lottery-ticket protocol).
    name: for tables ("one-shot", "gradual", "IMP").
    """

    points: tuple[int, ...]
    targets: tuple[float, ...]
    rewind_step: Optional[int] = None
    name: str = ""

    def __call__(self, step) -> jax.Array:
        """The sparsity in force after `step` steps: the target of the last
        point ≤ step, 0 before the first (traceable)."""
        points = jnp.asarray(self.points)
        targets = jnp.asarray(self.targets, jnp.float32)
        k = jnp.searchsorted(points, step, side="right")
        return jnp.where(k > 0, targets[jnp.maximum(k - 1, 0)], 0.0)

    def target_at(self, step: int) -> Optional[float]:
        """The target if `step` is a point, else None (host side)."""
        for p, s in zip(self.points, self.targets):
            if p == step:
                return s
        return None

    @property
    def final(self) -> float:
        return self.targets[-1]


def _check_int(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_sparsity(value, name: str) -> float:
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}") from None
    if not 0.0 <= s < 1.0:
        raise ValueError(f"{name} must be in [0, 1) (1 would prune every weight), got {value!r}")
    return s


def _checked(points: list[int], targets: list[float], rewind_step, name: str) -> SparsitySchedule:
    if any(b <= a for a, b in zip(points, points[1:])):
        raise ValueError(f"{name}: schedule points must increase, got {points}")
    if any(b < a for a, b in zip(targets, targets[1:])):
        raise ValueError(f"{name}: sparsity must not decrease between points, got {targets}")
    return SparsitySchedule(tuple(points), tuple(float(t) for t in targets), rewind_step, name)


def one_shot(sparsity: float, step: int) -> SparsitySchedule:
    """Prune once, to `sparsity`, at `step`."""
    return _checked([_check_int(step, "step", 0)], [_check_sparsity(sparsity, "sparsity")], None,
                    "one-shot")


def polynomial(final: float, *, begin: int, every: int, count: int, initial: float = 0.0,
               power: float = 3.0) -> SparsitySchedule:
    """Zhu & Gupta's gradual schedule: points t₀ + kΔt, k = 0 … n, with
    s = s_f + (s_i − s_f)(1 − kΔt/(nΔt))^power (power 3 in the paper).

    Args:
      final: s_f. initial: s_i (≤ s_f). begin: t₀. every: Δt ≥ 1.
      count: n ≥ 1, the number of steps of Δt from t₀ to the last point.
    """
    final, initial = _check_sparsity(final, "final sparsity"), _check_sparsity(initial, "initial sparsity")
    begin, every, count = (_check_int(begin, "begin", 0), _check_int(every, "every (Δt)", 1),
                           _check_int(count, "count (n)", 1))
    if initial > final:
        raise ValueError(f"initial sparsity {initial} exceeds the final {final}")
    if not (np.isfinite(power) and power > 0):
        raise ValueError(f"power must be > 0, got {power!r}")
    points = [begin + k * every for k in range(count + 1)]
    with jax.enable_x64(True):  # the targets in float64, as the formula
        curve = optax.polynomial_schedule(init_value=initial, end_value=final, power=power,
                                          transition_steps=count * every, transition_begin=begin)
        targets = [float(curve(jnp.asarray(p, jnp.float64))) for p in points]
    return _checked(points, targets, None, "gradual")


def iterative(final: float, rounds: int, round_steps: int, rewind_step: int = 0) -> SparsitySchedule:
    """IMP: R prunings, each after training to step L of the run's own
    schedule; after the r-th the sparsity is 1 − (1 − p)^r with
    p = 1 − (1 − s_f)^{1/R}, and the kept weights are rewound to θ(k), so the
    next round trains steps k … L again (L − k steps). Points count the steps
    taken in all: L, L + (L − k), …, L + (R − 1)(L − k); training goes on
    for a last round after the R-th, L + R(L − k) steps in all."""
    final = _check_sparsity(final, "final sparsity")
    rounds, round_steps = _check_int(rounds, "rounds", 1), _check_int(round_steps, "round_steps", 1)
    rewind_step = _check_int(rewind_step, "rewind_step", 0)
    if rewind_step >= round_steps:
        raise ValueError(f"rewind_step {rewind_step} must be before the end of the first round "
                         f"({round_steps} steps)")
    keep = (1.0 - final) ** (1.0 / rounds)
    targets = [1.0 - keep**r for r in range(1, rounds)] + [final]
    points = [round_steps + r * (round_steps - rewind_step) for r in range(rounds)]
    return _checked(points, targets, rewind_step, "IMP")


def total_steps(schedule: SparsitySchedule, steps: int) -> int:
    """The steps a run of `steps` per round takes under `schedule`: `steps`,
    plus the retraining after every rewind (IMP)."""
    if schedule.rewind_step is None:
        return steps
    return steps + len(schedule.points) * (steps - schedule.rewind_step)
