"""experiments.grasp_ablation end to end on a tiny model: every condition is
an init run with its change, and the per-leaf diagnostics are consistent."""

import json

import pytest

from experiments import grasp_ablation
from experiments.config import InitConfig


def test_grasp_ablation_end_to_end(tmp_path, monkeypatch):
    # One condition of each kind (prunable set + scoring, scoring only, the
    # optimizer, the two signs), with the reference protocol.
    kept = ("kpjax", "wang", "reinit_balanced", "lr_0.005", "magnitude", "negated")
    monkeypatch.setattr(grasp_ablation, "CONDITIONS",
                        tuple(c for c in grasp_ablation.CONDITIONS if c.name in kept))
    # No training after pruning (--finetune_epochs=0): what is tested here is
    # what each condition runs and scores; init's training has its own test.
    config = InitConfig(model="mnistnet_tiny", max_train_examples=256, max_test_examples=100,
                        batch_size=64, seeds=(0,), compressions=(3.0,), methods=("grasp", "random"),
                        finetune_epochs=0)
    summary = grasp_ablation.run(config, str(tmp_path))
    for cond in grasp_ablation.CONDITIONS:
        assert f"| {cond.name} |" in summary
        saved = json.loads((tmp_path / cond.name / "config.json").read_text())
        methods = {r["method"] for r in json.loads((tmp_path / cond.name / "results.json").read_text())["rows"]}
        if cond.sign:
            assert methods == {cond.sign}
        elif cond.scoring_only:  # random reads no scoring batch: not rerun
            assert methods == {"grasp"} and saved["score_per_class"] == grasp_ablation.PER_CLASS
        else:
            assert methods == {"grasp", "random"}
    assert json.loads((tmp_path / "lr_0.005" / "config.json").read_text())["train"]["lr"] == 0.005
    layers = json.loads((tmp_path / "layers.json").read_text())["rows"]
    by = {(r["condition"], r["method"], r["layer"]): r for r in layers}
    assert not any(r["layer"].endswith("bias") for r in layers if r["condition"] == "wang")
    assert {r["method"] for r in layers} == {"grasp", "grasp_magnitude", "grasp_negated"}
    for cond in {r["condition"] for r in layers}:
        rows = [r for r in layers if r["condition"] == cond]
        kept = sum(r["kept"] * r["size"] for r in rows) / sum(r["size"] for r in rows)
        assert kept == pytest.approx(1 / 3.0, abs=0.02), cond
    for (cond, method, layer), r in by.items():
        if method != "grasp" or cond != "kpjax":
            continue
        neg, mag = by[("negated", "grasp_negated", layer)], by[("magnitude", "grasp_magnitude", layer)]
        # Same θ₀ and batch: |s| > 0 exactly where s > 0 or −s > 0.
        assert mag["positive"] == pytest.approx(r["positive"] + neg["positive"], abs=1e-12), layer
        assert 0.0 < r["positive"] < 1.0
    # Resumes: nothing is recomputed, the files stay as they are.
    before = (tmp_path / "layers.json").read_text()
    assert grasp_ablation.run(config, str(tmp_path)) == summary
    assert (tmp_path / "layers.json").read_text() == before
