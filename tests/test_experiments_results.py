"""Tests for experiments.results: atomic writes, resumable tables, summaries."""

import json
import os
import stat

import pytest

from experiments import results


def test_atomic_write_leaves_no_temp_file_and_honours_umask(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "a.json"
    monkeypatch.setattr(results, "_UMASK", 0o022)
    results.atomic_write_json(str(path), {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}
    assert os.listdir(path.parent) == ["a.json"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.txt"
    results.atomic_write_text(str(path), "old")
    with pytest.raises(TypeError):  # str into a binary file: fails mid-write
        results.atomic_write_bytes(str(path), "new")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_result_table_resumes_from_its_files(tmp_path):
    key = ("method", "seed")
    table = results.ResultTable(str(tmp_path), key)
    table.add([{"method": "kmp", "seed": 0, "phase": "pruned", "top1": 0.5},
               {"method": "kmp", "seed": 0, "phase": "finetuned", "top1": 0.9}])
    reopened = results.ResultTable(str(tmp_path), key)
    assert reopened.done(method="kmp", seed=0)
    assert not reopened.done(method="kmp", seed=1)
    assert not reopened.done(method="gmp", seed=0)
    assert len(reopened.rows) == 2
    csv_lines = (tmp_path / "results.csv").read_text().splitlines()
    assert csv_lines[0] == "method,seed,phase,top1"
    assert len(csv_lines) == 3


def test_result_table_rejects_a_foreign_file(tmp_path):
    (tmp_path / "results.json").write_text("[1, 2")
    with pytest.raises(ValueError, match="not a results file"):
        results.ResultTable(str(tmp_path), ("seed",))


def test_rows_to_csv_takes_the_union_of_columns():
    text = results.rows_to_csv([{"a": 1}, {"a": 2, "b": 3}])
    assert text.splitlines() == ["a,b", "1,", "2,3"]


def test_mean_std_is_the_sample_std():
    assert results.mean_std([1.0]) == (1.0, 0.0)
    mean, std = results.mean_std([1.0, 2.0, 3.0])
    assert mean == 2.0 and std == pytest.approx(1.0)


def test_group_mean_std_skips_missing_values():
    rows = [{"m": "kmp", "v": 0.5}, {"m": "kmp", "v": 0.7},
            {"m": "gmp", "v": None}, {"m": "gmp", "v": 0.9}]
    stats = results.group_mean_std(rows, ("m",), "v")
    assert stats[("kmp",)][0] == pytest.approx(0.6)
    assert stats[("kmp",)][2] == 2
    assert stats[("gmp",)] == (0.9, 0.0, 1)


def test_fmt_pm_and_markdown_table():
    assert results.fmt_pm((0.5, 0.01, 3)) == "50.00 ± 1.00"
    assert results.fmt_pm((0.5, 0.0, 1)) == "50.00"
    assert results.fmt_pm(None) == "–"
    assert results.markdown_table(["a", "b"], [[1, 2]]).splitlines() == [
        "| a | b |", "|---|---|", "| 1 | 2 |"]
