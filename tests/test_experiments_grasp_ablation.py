"""experiments.grasp_ablation end to end on a tiny model: every condition is
an init run with its change, and the per-leaf diagnostics are consistent."""

import dataclasses
import json

import pytest

from experiments import grasp_ablation
from experiments.config import InitConfig


def test_grasp_ablation_end_to_end(tmp_path, monkeypatch):
    # The reference protocol, the prunable set with scoring, and the two signs
    # (what each of the others changes is condition_config's test).
    kept = ("kpjax", "wang", "magnitude", "negated")
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


def test_each_condition_changes_what_it_says_and_only_that():
    # Every condition starts from kpjax's former protocol: GraSP scores what the others score.
    default = InitConfig(model="mnistnet_tiny", seeds=(0,), compressions=(3.0,),
                         methods=("grasp", "random", "snip", "gmp"))
    assert default.grasp_scoring == "wang"
    assert all(grasp_ablation.condition_config(default, c).grasp_scoring == "shared"
               for c in grasp_ablation.CONDITIONS)
    config = dataclasses.replace(default, grasp_scoring="shared")
    by = {c.name: grasp_ablation.condition_config(config, c) for c in grasp_ablation.CONDITIONS}
    assert by["kpjax"] == config
    assert by["kernels_only"] == dataclasses.replace(config, prune_biases=False)
    # Scoring-only changes rerun the methods that read a batch, nothing else.
    assert by["reinit_balanced"] == dataclasses.replace(
        config, methods=("grasp", "snip"), score_reinit_dense=True,
        score_per_class=grasp_ablation.PER_CLASS)
    assert by["wang"].methods == config.methods and not by["wang"].prune_biases
    assert by["lr_0.005"] == dataclasses.replace(config, train=dataclasses.replace(config.train, lr=0.005))
    assert by["lr_0.01"].train.lr == 0.01 and by["lr_0.01"].methods == config.methods
    assert by["magnitude"].methods == ("grasp_magnitude",)
    assert by["negated"].methods == ("grasp_negated",)
    no_grasp = dataclasses.replace(config, methods=("random", "gmp"))
    assert grasp_ablation.condition_config(no_grasp, by_name("negated")) is None
    assert grasp_ablation.condition_config(no_grasp, by_name("reinit_balanced")) is None


def by_name(name):
    return next(c for c in grasp_ablation.CONDITIONS if c.name == name)
