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


def test_add_missing_skips_the_cells_already_in_the_table_and_at_cutoff_keeps_the_runs(tmp_path):
    table = results.ResultTable(str(tmp_path), ("method", "rcond"), stem="t")
    table.add([{"method": "kmp", "rcond": 1e-6, "x": 1}])
    table.add_missing([{"method": "kmp", "rcond": 1e-6, "x": 2}, {"method": "kmp", "rcond": 0.0, "x": 3},
                       {"method": "gmp", "rcond": None, "x": 4}])
    assert [r["x"] for r in table.rows] == [1, 3, 4]
    assert [r["x"] for r in results.ResultTable(str(tmp_path), table.key, stem="t").rows] == [1, 3, 4]
    assert [r["x"] for r in results.at_cutoff(table.rows, 1e-6)] == [1, 4]


@pytest.mark.parametrize("content", ['{"rows": [{"seed": 0', "[1, 2]", '{"rows": [{"x": 1}]}',
                                     b"\xff\xfe binary"])
def test_a_damaged_table_is_one_clear_error_naming_the_file(tmp_path, content):
    path = tmp_path / "results.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError) as info:
        results.ResultTable(str(tmp_path), ("seed",))
    message = str(info.value)
    assert str(path) in message and "move it away" in message and "\n" not in message


def test_the_csv_is_regenerated_from_the_json_when_opened(tmp_path):
    # A kill between the JSON and the CSV write, or a CSV cut short: the next
    # open (even of a run with nothing left to do) writes the CSV again.
    table = results.ResultTable(str(tmp_path), ("seed",))
    table.add([{"seed": 0, "top1": 0.5}])
    table.add([{"seed": 1, "top1": 0.6}])
    whole = (tmp_path / "results.csv").read_text()
    (tmp_path / "results.csv").write_text(whole[:9])
    results.ResultTable(str(tmp_path), ("seed",))
    assert (tmp_path / "results.csv").read_text() == whole


def test_timing_columns_go_to_their_own_table(tmp_path):
    rows = [{"seed": 0, "phase": "pruned", "top1": 0.5, "seconds": 1.25},
            {"seed": 0, "phase": "finetuned", "top1": 0.7, "seconds": 9.5}]
    results.ResultTable(str(tmp_path), ("seed",), timing_columns=("seconds",)).add(rows)
    assert "seconds" not in (tmp_path / "results.csv").read_text()
    commit = results.COMMIT
    assert (tmp_path / "timings.csv").read_text().splitlines() == [
        "seed,phase,seconds,commit", f"0,pruned,1.25,{commit}", f"0,finetuned,9.5,{commit}"]
    # Identical runs write identical comparison files, whatever their timings.
    other = tmp_path / "other"
    results.ResultTable(str(other), ("seed",), timing_columns=("seconds",)).add(
        [dict(r, seconds=r["seconds"] * 3) for r in rows])
    assert (other / "results.csv").read_bytes() == (tmp_path / "results.csv").read_bytes()


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
