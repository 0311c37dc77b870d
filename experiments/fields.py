"""Config fields and their checks: what every experiment config is built of.

A field is a dataclass field whose metadata carries its flag's help, kind
and choices (`opt`); `experiments.cli` derives the flags from it. The
checks are pure functions of values (a range, a list's conversion): no file,
device or model is looked at here (`experiments.resources` does that).
Errors are ValueErrors whose message starts with the flag (`--seeds ...`).

`SGD` is the one optimizer concept of the experiments (training and
fine-tuning), nested in a config as the flags <field>_lr, <field>_momentum, ...

May import: kpjax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from kpjax import train


def opt(default: Any, help: str, kind: str | None = None, choices: tuple[str, ...] | None = None):
    """A config field with its flag's help, kind and choices.

    kind: 'str', 'int', 'float', 'bool', 'enum', 'floats', 'ints', 'strs'
    (comma-separated lists) or 'sgd' (a nested `SGD`, flags <field>_lr, ...);
    inferred from the default when it is a bool, int, float or str.
    """
    if kind is None:
        kind = {bool: "bool", int: "int", float: "float", str: "str"}[type(default)]
    if choices is not None:
        kind = "enum"
    return field(default=default, metadata={"help": help, "kind": kind, "choices": choices})


def freeze(config: Any, name: str, convert, flag: str | None = None) -> None:
    """Sets a list-like field to a tuple of converted values (frozen-safe)."""
    value = getattr(config, name)
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        value = [value]
    try:
        converted = tuple(convert(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"--{flag or name} must be a list of {convert.__name__}s, got {value!r}") from None
    object.__setattr__(config, name, converted)


def check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


# Upper bounds of integer flags: beyond them a value is a typo (10^27
# epochs), not a plan, and would run until killed or overflow int32 steps.
MAX_STEPS = 10**9
MAX_EPOCHS = 10**5
MAX_SEED = 2**31 - 1  # PRNG keys and batch orders are seeded with 32-bit values


def check_range(config: Any, name: str, low: int, high: int, none_ok: bool = False) -> None:
    value = getattr(config, name)
    if value is None and none_ok:
        return
    check(isinstance(value, int) and not isinstance(value, bool) and low <= value <= high,
          f"--{name} must be an integer in [{low}, {high}], got {value!r}")


def integer(x: Any) -> int:
    if isinstance(x, bool) or float(x) != int(float(x)):
        raise ValueError(x)
    return int(float(x))


def number(x: Any) -> float:
    return float(x)


@dataclass(frozen=True)
class SGD:
    """SGD as torch.optim.SGD (`kpjax.train.make_optimizer`), with step decay.

    In a config, a field `train: SGD` gives the flags --train_lr,
    --train_momentum, --train_nesterov, --train_weight_decay,
    --train_lr_boundaries and --train_lr_decay.
    """

    lr: float = opt(0.05, "learning rate η")
    momentum: float = opt(0.9, "momentum μ (0: plain SGD)")
    nesterov: bool = opt(False, "Nesterov momentum (needs momentum > 0)")
    weight_decay: float = opt(0.0, "L2 weight decay added to the gradient (PyTorch SGD)")
    lr_boundaries: tuple[int, ...] = opt((), "epochs at which η is multiplied by lr_decay", "ints")
    lr_decay: float = opt(0.1, "factor of η at each boundary")

    def check(self, prefix: str) -> None:
        freeze(self, "lr_boundaries", integer, f"{prefix}_lr_boundaries")
        for name, ok in (("lr", math.isfinite(self.lr) and self.lr > 0),
                         ("momentum", 0 <= self.momentum < math.inf),
                         ("weight_decay", 0 <= self.weight_decay < math.inf),
                         ("lr_decay", 0 <= self.lr_decay < math.inf)):
            check(ok, f"--{prefix}_{name} out of range: {getattr(self, name)}")
        check(not (self.nesterov and self.momentum == 0),
              f"--{prefix}_nesterov needs --{prefix}_momentum > 0")
        check(all(b >= 0 for b in self.lr_boundaries),
              f"--{prefix}_lr_boundaries must be >= 0, got {list(self.lr_boundaries)}")

    def optimizer(self, steps_per_epoch: int):
        schedule = self.lr
        if self.lr_boundaries:
            schedule = train.make_lr_schedule(
                self.lr, [b * steps_per_epoch for b in self.lr_boundaries], self.lr_decay)
        return train.make_optimizer(schedule, momentum=self.momentum, nesterov=self.nesterov,
                                    weight_decay=self.weight_decay)
