"""Scalar metrics as TensorBoard event files, through tensorboardX.

tensorboardX writes the event format with protobuf and numpy alone, so no
TensorFlow (which clu's and flax's TensorBoard writers need) and no
PyTorch; it is an optional dependency: ``pip install 'kpjax[tensorboard]'``.

    writer = open_writer("runs/x/tensorboard/cell")
    writer.write(step, {"train/loss": 0.31, "sparsity/fc1/kernel": 0.9})
    writer.close()

May import: numpy, tensorboardX.
"""

from __future__ import annotations

import math
import os
from typing import Mapping

import numpy as np


def available() -> bool:
    """Whether tensorboardX can be imported."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        return False
    return True


class MetricWriter:
    """Scalars per step into one run's event file (flushed on `close`)."""

    def __init__(self, logdir: str):
        from tensorboardX import SummaryWriter
        self._writer = SummaryWriter(logdir=logdir)

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        for tag, value in scalars.items():
            value = float(np.asarray(value))
            if math.isfinite(value):  # TensorBoard draws NaN as a gap; skip it instead
                self._writer.add_scalar(tag, value, global_step=int(step))

    def close(self) -> None:
        self._writer.close()


def open_writer(logdir: str | os.PathLike) -> MetricWriter:
    """A `MetricWriter` into `logdir` (created).

    Raises:
      ValueError: tensorboardX is not installed.
    """
    if not available():
        raise ValueError("TensorBoard event files need tensorboardX: pip install 'kpjax[tensorboard]'")
    os.makedirs(logdir, exist_ok=True)
    return MetricWriter(os.fspath(logdir))
