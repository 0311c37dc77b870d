"""experiments.gradient_flow: the verdict rules on hand-made rows, and a tiny run end to end."""

import json

import pytest

from experiments import gradient_flow
from experiments.config import GradientFlowConfig


def _rows(values, quantity="top1"):
    """Rows of (seed, epoch, method) → value at c = 10."""
    return [{"seed": s, "prune_epoch": e, "method": m, "compression": 10.0, quantity: v}
            for (s, e, m), v in values.items()]


def test_verdicts_count_the_pairs_where_the_claim_holds():
    test = gradient_flow.Test(3, "GraSP ends worse", "grasp", "gn", "top1", True)
    # GraSP below GN in 4 of 5 (seed, epoch) pairs: holds (≥ 80 %).
    values = {(s, e, m): v for s, e, a, b in [(0, 0.0, .1, .9), (0, 1.0, .2, .8), (1, 0.0, .3, .7),
                                              (1, 1.0, .4, .6), (2, 0.0, .9, .1)]
              for m, v in (("grasp", a), ("gn", b))}
    verdict, won, n, ma, mb = gradient_flow.verdict_of(_rows(values), test, 10.0)
    assert (verdict, won, n) == ("holds", 4, 5) and ma == pytest.approx(0.38) and mb == pytest.approx(0.62)
    values[(1, 1.0, "grasp")] = 0.65  # now 3 of 5: mixed
    assert gradient_flow.verdict_of(_rows(values), test, 10.0)[:3] == ("mixed", 3, 5)
    # The other direction, from epoch 1 only: GraSP above GN in neither epoch-1 pair.
    values[(1, 1.0, "grasp")] = 0.4
    late = test._replace(smaller=False, min_epoch=1.0)
    assert gradient_flow.verdict_of(_rows(values), late, 10.0)[:3] == ("fails", 0, 2)
    assert gradient_flow.verdict_of(_rows(values), test, 4.0)[0] == "not run"
    assert gradient_flow.claim_verdict(["holds", "holds"]) == "reproduced"
    assert gradient_flow.claim_verdict(["holds", "mixed"]) == "inconclusive"
    assert gradient_flow.claim_verdict(["mixed", "fails", "holds"]) == "not reproduced"
    assert gradient_flow.claim_verdict(["not run"]) == "not run"


def test_gradient_flow_end_to_end_and_resume(tmp_path):
    config = GradientFlowConfig(model="mnistnet_tiny", max_train_examples=256, max_test_examples=200,
                                batch_size=64, seeds=(0,), methods=("gmp", "lp", "kmp"),
                                prune_points=(1.0, 0.0), score_batches=2, window_steps=3,
                                early_steps=2, curve_every=2)
    assert config.prune_points == (0.0, 1.0)
    summary = gradient_flow.run(config, str(tmp_path))
    assert "## Claims at c = 10" in summary and (tmp_path / "fig_curves.png").stat().st_size > 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert {(r["prune_epoch"], r["method"]) for r in rows} == {
        (e, m) for e in (0.0, 1.0) for m in ("gmp", "lp", "kmp", "dense")}
    for r in rows:
        step = round(r["prune_epoch"] * 4)  # 256 / 64 steps an epoch
        assert r["prune_step"] == step + (3 if r["method"] == "kmp" else 0)
        if r["method"] == "dense":
            assert r["loss_pruned"] == r["loss"] and r["predicted_loss_change"] == 0.0
        else:
            assert r["compression_achieved"] == pytest.approx(10.0, rel=0.1)
            assert r["kept_norm_sq"] < r["norm_sq"]
    # Methods scoring the same θ(e) see the same dense loss and gradient.
    for e in (0.0, 1.0):
        same = [r for r in rows if r["prune_epoch"] == e and r["method"] in ("gmp", "lp", "dense")]
        assert len({(r["loss"], r["grad_norm_sq"]) for r in same}) == 1
    curves = json.loads((tmp_path / "curves.json").read_text())["rows"]
    # Every branch ends one epoch (4 steps) after its point; KMP's window counts in its budget.
    for r in rows:
        mine = [c for c in curves if (c["prune_epoch"], c["method"]) == (r["prune_epoch"], r["method"])]
        assert max(c["since"] for c in mine) == 4
    before = (tmp_path / "results.json").read_text()
    tables = lambda text: text.split("## Provenance")[0]  # provenance times this invocation
    assert tables(gradient_flow.run(config, str(tmp_path))) == tables(summary)
    assert (tmp_path / "results.json").read_text() == before


def test_bad_prune_points_are_one_line_errors():
    with pytest.raises(ValueError, match="--prune_points lists a value twice"):
        GradientFlowConfig(prune_points=(0.5, 0.5))
    with pytest.raises(ValueError, match="--prune_points must be in"):
        GradientFlowConfig(prune_points=(-1.0,))
    with pytest.raises(ValueError, match="--finetune_epochs must be >= 1"):
        GradientFlowConfig(finetune_epochs=0)
