"""Tests for experiments.common: flag parsing errors, progress formatting."""

import logging as py_logging

import pytest
from absl import app, logging

from experiments import common


def test_parse_ints_and_floats():
    assert common.parse_ints("seeds", ["0", "2"]) == [0, 2]
    assert common.parse_floats("compressions", ["2", "4.5"]) == [2.0, 4.5]
    with pytest.raises(app.UsageError, match="--seeds must be integers"):
        common.parse_ints("seeds", ["a"])
    with pytest.raises(app.UsageError, match="must not be empty"):
        common.parse_floats("compressions", [])
    with pytest.raises(app.UsageError, match=">= 0"):
        common.parse_ints("prune_epochs", ["-1"])


@pytest.mark.parametrize("c", [1.0, 0.5, float("inf"), float("nan")])
def test_check_compressions_rejects_impossible_ratios(c):
    with pytest.raises(app.UsageError, match="> 1"):
        common.check_compressions([2.0, c])


def test_unknown_model_is_a_usage_error():
    with pytest.raises(app.UsageError, match="mnistnet"):
        common.model_spec("lenet7")


def test_fmt_seconds_and_rate():
    assert common.fmt_seconds(59.6) == "1m00s"
    assert common.fmt_seconds(3725) == "1h02m05s"
    assert common.fmt_seconds(float("nan")) == "?"
    assert common.fmt_rate(21.74) == "21.7 it/s"
    assert common.fmt_rate(1 / 32.0) == "32.0 s/it"


def test_progress_logs_count_and_eta(caplog, monkeypatch):
    now = [0.0]
    monkeypatch.setattr(common.time, "time", lambda: now[0])
    progress = common.Progress(4, "cells", every_s=5.0)
    waited = []
    now[0] = 10.0
    with caplog.at_level(py_logging.INFO, logger=logging.get_absl_logger().name):
        progress.update(2, wait=lambda: waited.append(True))
    assert waited == [True]
    line = caplog.records[-1].getMessage()
    # 2 done in 10 s: 0.2 it/s, i.e. 5.0 s/it, and 2 left → 10 s.
    assert "2/4" in line and "5.0 s/it" in line and "ETA 0m10s" in line
    # Within every_s of the last line: counted, not logged; the last item always is.
    count = len(caplog.records)
    now[0] = 12.0
    with caplog.at_level(py_logging.INFO, logger=logging.get_absl_logger().name):
        progress.update(1)
        assert len(caplog.records) == count
        progress.update(1)
    assert "4/4" in caplog.records[-1].getMessage()
