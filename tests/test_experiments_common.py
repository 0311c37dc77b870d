"""Tests for experiments.common: progress lines."""

import logging as py_logging

from absl import logging

from experiments import common


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


def test_job_clock_eta_counts_every_planned_unit(caplog, monkeypatch):
    now = [0.0]
    monkeypatch.setattr(common.time, "time", lambda: now[0])
    job = common.JobClock(every_s=5.0)
    job.plan(80)                         # training steps of two phases...
    job.plan(common.eval_units(3840, 128))  # ...and an evaluation: 10 step-equivalents
    assert common.eval_units(3840, 128) == 10
    now[0] = 10.0
    with caplog.at_level(py_logging.INFO, logger=logging.get_absl_logger().name):
        job.tick(30)
    # 30 of 90 units in 10 s: 60 left at 3 units/s → 20 s.
    line = caplog.records[-1].getMessage()
    assert "33% done" in line and "0m10s elapsed" in line and "ETA 0m20s" in line
