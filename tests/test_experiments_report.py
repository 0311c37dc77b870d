"""Tests for experiments.report: the generated reading and the provenance."""

from experiments import report, results


def _rows(values):
    return [{"method": m, "compression": c, "seed": s, "phase": p, "top1": v}
            for (m, c, p), vs in values.items() for s, v in enumerate(vs)]


def test_reading_names_leads_trails_and_the_seed_spread():
    rows = _rows({("kmp", 4.0, "pruned"): [0.90, 0.92, 0.91], ("gmp", 4.0, "pruned"): [0.80, 0.81, 0.79],
                  ("kmp", 16.0, "pruned"): [0.50, 0.70, 0.60], ("gmp", 16.0, "pruned"): [0.61, 0.62, 0.60],
                  ("dense", 1.0, "finetuned"): [0.99, 0.99, 0.99]})
    text = report.reading(rows, [("kmp", "gmp")])
    # c = 4: +11 points, stds 0.01 -> beyond; c = 16: -1 point, std 0.10 -> within.
    assert text.startswith("Immediately after pruning, KMP leads GMP at c = 4 and trails it at c = 16")
    assert "gaps up to 11.00 points" in text
    assert "the gap exceeds the seed spread (n = 3) at c = 4." in text
    assert "fine-tuned for the same steps reaches 99.00 ± 0.00 %" in text


def test_one_seed_has_no_spread_to_compare_with():
    rows = _rows({("kgp", 8.0, "finetuned"): [0.5], ("grad", 8.0, "finetuned"): [0.6]})
    assert report.reading(rows, [("kgp", "grad")]) == (
        "After refinement, KGP trails gradient pruning at c = 8 (top-1 gaps up to 10.00 points); "
        "with one seed there is no spread to compare the gaps with.")


def test_provenance_names_commit_versions_cpu_and_cores():
    text = "\n".join(report.provenance())
    for fragment in ("- commit: ", "jax ", "numpy ", "- CPU: ", "cores available", "s wall", "s CPU"):
        assert fragment in text


def test_provenance_names_the_commits_that_computed_the_cells(tmp_path, monkeypatch):
    # A run resumed at another commit: its cells come from two invocations.
    table = results.ResultTable(str(tmp_path), ("method", "seed"), timing_columns=("seconds",))
    for commit, cells in (("aaaa", [("kmp", 0), ("gmp", 0)]), ("bbbb", [("kmp", 1)])):
        monkeypatch.setattr(results, "COMMIT", commit)
        for method, seed in cells:
            table.add([{"method": method, "seed": seed, "phase": p, "top1": 0.5, "seconds": 1.0}
                       for p in ("pruned", "finetuned")])
    text = "\n".join(report.provenance(table.timings.rows))
    assert "- the cells were computed at: aaaa (2 cells); bbbb (1 cell)" in text
    # Timings written before the commit was recorded say so.
    old = [{k: v for k, v in r.items() if k != "commit"} for r in table.timings.rows]
    assert "not recorded (3 cells)" in "\n".join(report.provenance(old))
