"""experiments.jump: steps-to-match by hand; with the gate shut the
accelerated run is plain SGD on the same batches; end to end and resume."""

import json

import pytest

from experiments import jump
from experiments.config import SGD, JumpConfig

TINY = dict(model="mnistnet_tiny", max_train_examples=512, max_test_examples=200, batch_size=64,
            eval_batch_size=100, seeds=(0,), budget=12, window=4, jump=4, eval_every=4,
            train=SGD(lr=0.05, momentum=0.9))


def config(**kw):
    return JumpConfig(**{**TINY, **kw})


def test_steps_to_reach_interpolates_and_says_never():
    curve = [(0, 0.1), (100, 0.5), (200, 0.9)]
    assert jump.steps_to_reach(curve, 0.7) == pytest.approx(150.0)
    assert jump.steps_to_reach(curve, 0.5) == pytest.approx(100.0)
    assert jump.steps_to_reach(curve, 0.05) == 0.0
    assert jump.steps_to_reach(curve, 0.95) is None


def test_with_the_gate_shut_the_accelerated_run_is_plain_sgd(tmp_path):
    summary = jump.run(config(max_residual=0.0), str(tmp_path / "w"))
    rows = json.loads((tmp_path / "w" / "curves.json").read_text())["rows"]
    sgd = {r["grad_evals"]: r for r in rows if r["run"] == "sgd"}
    kp = {r["grad_evals"]: r for r in rows if r["run"] == "koopman"}
    assert sorted(kp) == [0, 4, 8, 12] and max(sgd) == 24  # sgd_factor 2
    assert 12 in sgd  # SGD is evaluated at the budget itself
    for g in kp:
        assert kp[g]["top1"] == sgd[g]["top1"]
        assert kp[g]["loss"] == pytest.approx(sgd[g]["loss"], rel=1e-4)
    jumps = json.loads((tmp_path / "w" / "jumps.json").read_text())
    assert len(jumps) == 3 and not any(c["jumped"] for c in jumps)
    assert "Jumps taken: 0 of 3 cycles" in summary
    # No jump: the run is SGD, 0 % saved whatever SGD's curve does.
    assert "| 0 | 0 |" in summary and "12 (no jump: SGD itself) | 0.0 % |" in summary


def test_jumps_end_to_end_and_resume(tmp_path, monkeypatch):
    summary = jump.run(config(max_residual=1.0), str(tmp_path / "w"))
    assert "## Steps saved" in summary and (tmp_path / "w" / "fig_curves.png").exists()
    jumps = json.loads((tmp_path / "w" / "jumps.json").read_text())
    assert len(jumps) == 3 and all("loss_after" in c for c in jumps)
    monkeypatch.setattr(jump, "sgd_run", lambda *a: pytest.fail("ran again"))
    monkeypatch.setattr(jump, "koopman_run", lambda *a: pytest.fail("ran again"))
    jump.run(config(max_residual=1.0), str(tmp_path / "w"))


def test_sgd_is_evaluated_at_the_budget_off_the_grid(tmp_path):
    jump.run(config(max_residual=0.0, budget=10, eval_every=4), str(tmp_path / "w"))
    rows = json.loads((tmp_path / "w" / "curves.json").read_text())["rows"]
    assert sorted(r["grad_evals"] for r in rows if r["run"] == "sgd") == [0, 4, 8, 10, 12, 16, 20]


def test_increment_jumps_from_the_last_snapshot(tmp_path):
    jump.run(config(max_residual=1.0), str(tmp_path / "full"))
    summary = jump.run(config(max_residual=1.0, increment=True), str(tmp_path / "inc"))
    assert "increment: the drift of the modes with |λ| ≤ 1" in summary
    full, inc = (json.loads((tmp_path / w / "jumps.json").read_text()) for w in ("full", "inc"))
    # The first window is the same run: the same fit and loss before, another jump.
    assert inc[0]["loss_before"] == full[0]["loss_before"]
    assert inc[0]["residual"] == full[0]["residual"]
    assert inc[0]["loss_after"] != full[0]["loss_after"]
