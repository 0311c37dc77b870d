"""experiments.gradual: bad settings refused before training, a tiny run of
every schedule end to end (sparsities, steps, the schedule's targets,
resume, TensorBoard events), and kpjax.io.metric_writer."""

import json
import math

import pytest

from experiments import gradual
from experiments.config import GradualConfig
from kpjax import pruning
from kpjax.io import metric_writer
import tb_events

TINY = dict(model="mnistnet_tiny", max_train_examples=256, max_test_examples=200, batch_size=64, seeds=(0,))


@pytest.mark.parametrize("kwargs, message", [
    (dict(schedules=("gradual:nope",)), "unknown pruning method 'nope'"),
    (dict(schedules=("slow:gmp",)), "is not one of oneshot:<method>"),
    (dict(schedules=("rigl", "rigl")), "lists a value twice"),
    (dict(sparsities=(0.9, 1.0)), "must be in \\(0, 1\\)"),
    (dict(sparsities=(0.0,)), "must be in \\(0, 1\\)"),
    (dict(prune_every=0), "--prune_every \\(Δt\\) must be >= 1"),
    (dict(prune_begin=2.0, prune_end=1.0), "0 <= begin < end"),
    (dict(prune_end=9.0), "0 <= begin < end <= --epochs"),
    (dict(window_steps=1), "--window_steps must be >= 2"),
    (dict(rigl_alpha=0.0), "--rigl_alpha must be in"),
    (dict(rcond=(1e-6, 0.0)), "one cutoff"),
])
def test_bad_settings_get_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GradualConfig(**kwargs)


def test_tensorboard_without_tensorboardx_is_refused(monkeypatch):
    monkeypatch.setattr(metric_writer, "available", lambda: False)
    with pytest.raises(ValueError, match="needs tensorboardX"):
        GradualConfig(tensorboard=True)


@pytest.mark.parametrize("kwargs, message", [
    (dict(schedules=("gradual:kmp",), window_steps=7, prune_every=6), "exceeds --prune_every 6"),
    (dict(schedules=("oneshot:kmp",), window_steps=12, prune_begin=0.5, prune_every=6),
     "longer than the steps recorded before the first pruning point"),
    (dict(schedules=("imp:gmp",), imp_rounds=4, imp_rewind_step=20), "IMP: rounds of"),
    (dict(schedules=("gradual:gmp",), prune_every=100), "leaves no pruning point"),
])
def test_impossible_plans_are_refused_before_training(tmp_path, kwargs, message):
    config = GradualConfig(**{**TINY, "epochs": 6, **kwargs})
    with pytest.raises(ValueError, match=message):
        gradual.run(config, str(tmp_path))
    assert not (tmp_path / "results.csv").exists()


def test_every_schedule_end_to_end_and_resume(tmp_path):
    # 4 steps an epoch, 24 in all; gradual points at 4 + 6k ≤ 20: 10, 16 (and t₀ = 4 at sparsity 0).
    config = GradualConfig(**TINY, epochs=6, sparsities=(0.8,), prune_begin=1.0, prune_end=5.0,
                           prune_every=6, window_steps=4, imp_rounds=2, imp_rewind_step=1, rigl_every=4,
                           schedules=("oneshot:gmp", "gradual:gmp", "gradual:kmp", "imp:gmp", "rigl", "set"),
                           tensorboard=True, export=True)
    summary = gradual.run(config, str(tmp_path))
    assert "## Test top-1 after training" in summary and (tmp_path / "fig_sparsity.png").stat().st_size > 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    by = {(r["schedule"], r["method"]): r for r in rows}
    assert set(by) == {("dense", "dense"), ("oneshot", "gmp"), ("gradual", "gmp"), ("gradual", "kmp"),
                       ("imp", "gmp"), ("rigl", "rigl"), ("set", "set")}
    assert by[("dense", "dense")]["reached"] == 0.0
    for key, r in by.items():
        if key[0] in ("rigl", "set"):  # every tensor at 0.8, each rounded to whole weights
            assert r["reached"] == pytest.approx(0.8, abs=1e-3)
        elif key[0] != "dense":
            assert r["reached"] == pytest.approx(0.8, abs=1e-4)
    # IMP: L = (24 + 2·1)/3 ≈ 9 steps to each pruning, then rewound to step 1: 9 + 2·8 steps.
    assert by[("imp", "gmp")]["steps"] == 25 and by[("gradual", "kmp")]["steps"] == 24
    points = json.loads((tmp_path / "points.json").read_text())["rows"]
    grad = sorted((p["step"], p["target"], p["reached"]) for p in points
                  if p["schedule"] == "gradual" and p["method"] == "gmp")
    assert [s for s, _, _ in grad] == [10, 16]
    for (step, target, reached), k in zip(grad, (1, 2)):
        assert target == pytest.approx(0.8 - 0.8 * (1 - k / 2) ** 3, abs=1e-12)
        assert reached == pytest.approx(target, abs=1e-4)
    kmp = [p for p in points if p["method"] == "kmp"]
    assert len(kmp) == 2 and all(math.isfinite(p["lambda1_abs"]) for p in kmp)
    imp = sorted(p["step"] for p in points if p["schedule"] == "imp")
    assert imp == [9, 17]
    # TensorBoard: the loss, the sparsity per layer at the points, λ₁ of the windows, the test top-1.
    events = tb_events.scalars(tmp_path / "tensorboard" / "gradual-kmp-s0.8-seed0")
    assert [s for s, _ in events["sparsity/total"]] == [10, 16]
    assert {"koopman/lambda1_abs", "koopman/lambda1_separation", "test/top1"} <= set(events)
    assert any(tag.startswith("sparsity/") and tag.endswith("/kernel") for tag in events)
    # The exported model is the trained one: its sparsity and its accuracy.
    exported = pruning.load_pruned(tmp_path / "exports" / "gradual-kmp-s0.8-seed0")
    assert pruning.sparsity_of(exported["mask"], pruning.prunable(exported["params"])) == \
        pytest.approx(by[("gradual", "kmp")]["reached"], abs=1e-12)
    # A rerun resumes: nothing is trained again and the summary is the same.
    before = (tmp_path / "results.csv").read_text()
    assert gradual.run(config, str(tmp_path)).split("## Provenance")[0] == summary.split("## Provenance")[0]
    assert (tmp_path / "results.csv").read_text() == before


def test_metric_writer_round_trip(tmp_path):
    writer = metric_writer.open_writer(tmp_path / "run")
    writer.write(1, {"train/loss": 2.5, "skipped": float("nan")})
    writer.write(7, {"train/loss": 1.25})
    writer.close()
    events = tb_events.scalars(tmp_path / "run")
    assert events == {"train/loss": [(1, 2.5), (7, 1.25)]}
