"""experiments.init end to end on a tiny model, and its layer-collapse check."""

import json

import jax.numpy as jnp

from experiments import init
from experiments.config import InitConfig


def test_init_end_to_end(tmp_path):
    config = InitConfig(model="mnistnet_tiny", max_train_examples=256, max_test_examples=200,
                        batch_size=64, seeds=(0,), compressions=(3.0, 30.0), window_steps=3,
                        synflow_rounds=5, methods=("random", "grasp", "synflow", "kmp"))
    summary = init.run(config, str(tmp_path))
    assert "## Layer collapse" in summary and (tmp_path / "fig_accuracy.png").stat().st_size > 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert {(r["method"], r["compression"], r["phase"]) for r in rows} == {
        (m, c, p) for m in config.methods for c in (3.0, 30.0) for p in ("init", "trained")}
    for r in rows:
        assert abs(r["compression_achieved"] - r["compression"]) < 0.1 * r["compression"]


def test_layer_collapse_counts_kernels_not_biases():
    select = {"a": {"kernel": True, "bias": True}, "b": {"kernel": True, "bias": True}}
    mask = {"a": {"kernel": jnp.ones(3, bool), "bias": jnp.zeros(2, bool)},
            "b": {"kernel": jnp.asarray([False, True]), "bias": jnp.ones(1, bool)}}
    assert not init._collapsed(mask, select)
    mask["b"]["kernel"] = jnp.zeros(2, bool)
    assert init._collapsed(mask, select)
