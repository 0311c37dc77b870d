"""experiments.coreset end to end on a tiny MnistNet."""

import json

from experiments import coreset
from experiments.config import CoresetConfig


def test_coreset_experiment_end_to_end(tmp_path):
    config = CoresetConfig(model="mnistnet_tiny", max_train_examples=384, max_test_examples=200,
                           batch_size=64, eval_batch_size=100, seeds=(0,), trajectory_steps=4,
                           fractions=(0.5, 0.25), finetune_epochs=1, rcond=(1e-6,),
                           sample_examples=64)
    summary = coreset.run(config, str(tmp_path / "w"))
    assert "## After refinement" in summary
    rows = json.loads((tmp_path / "w" / "results.json").read_text())["rows"]
    cells = {(r["method"], r["fraction"], r["phase"]): r for r in rows}
    assert set(cells) == {(m, f, p) for m in ("coreset", "kmp", "gmp") for f in (0.5, 0.25)
                          for p in ("pruned", "finetuned")} | {("dense", 1.0, "dense"),
                                                              ("dense", 1.0, "finetuned")}
    assert all(r["neurons_kept"] == round(16 * r["fraction"]) for r in rows)  # fc1 has 16 units
    assert "unpruned, refined alike" in summary
