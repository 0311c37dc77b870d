"""experiments.compare_dynamics end to end on a tiny model, and its
comparisons on signatures with known distances."""

import json

import numpy as np
import pytest

from experiments import compare_dynamics
from experiments.config import CompareConfig

TINY = dict(model="mnistnet_tiny", max_train_examples=384, max_test_examples=200, batch_size=64,
            eval_batch_size=100, seeds=(0, 1), trajectory_steps=6, record_steps=12,
            components=3, delays=2, top=4, permutations=50)


def test_compare_dynamics_end_to_end_and_resume(tmp_path, monkeypatch):
    work = tmp_path / "work"
    summary = compare_dynamics.run(CompareConfig(**TINY), str(work))
    assert "## Distances between signatures" in summary
    rows = json.loads((work / "signatures.json").read_text())["rows"]
    assert sorted((r["run"], r["seed"]) for r in rows) == sorted(
        (n, s) for n in ("dense", "kmp c=16", "gmp c=16") for s in (0, 1))
    for r in rows:
        lam = compare_dynamics.signature(r, 4)
        assert np.all(np.diff(-np.abs(lam)) >= -1e-12)  # by decreasing modulus
    tests = (work / "tests.csv").read_text().splitlines()
    assert len(tests) == 1 + 3  # header + three pairs of run types
    assert (work / "fig_spectra.png").stat().st_size > 0
    # A rerun records nothing.
    monkeypatch.setattr(compare_dynamics, "record_run", lambda *a: pytest.fail("recorded again"))
    compare_dynamics.run(CompareConfig(**TINY), str(work))


def test_comparisons_on_signatures_with_known_distances():
    config = CompareConfig(**{**TINY, "methods": ("gmp",), "seeds": (0, 1, 2)})
    def row(run, seed, shift):
        lam = np.array([0.99, 0.9, 0.5, 0.1]) + shift
        return {"run": run, "seed": seed, **{f"lam{i}_re": x for i, x in enumerate(lam)},
                **{f"lam{i}_im": 0.0 for i in range(4)}}
    rows = [row("dense", s, 0.001 * s) for s in range(3)] + [row("gmp c=16", s, 0.05 + 0.001 * s)
                                                              for s in range(3)]
    pairs, tests = compare_dynamics.comparisons(config, rows)
    assert len(pairs) == 15
    (t,) = tests
    assert t["within_a"] == pytest.approx((0.001 + 0.002 + 0.001) / 3)
    assert t["between"] == pytest.approx(np.mean([abs(0.05 + 0.001 * (b - a)) for a in range(3)
                                                   for b in range(3)]))
    assert t["p_value"] <= 0.15  # the least a 3-vs-3 shuffle test can give is 2/20


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="at least 2 seeds"):
        CompareConfig(**{**TINY, "seeds": (0,)})
    with pytest.raises(ValueError, match="--top"):
        CompareConfig(**{**TINY, "top": 20})
