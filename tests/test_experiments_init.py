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


def test_grasp_scores_wang_et_al_s_inputs_and_the_others_theirs():
    import dataclasses

    import numpy as np

    from experiments import pipeline
    from kpjax import data

    config = InitConfig(model="mnistnet_tiny", max_train_examples=256, max_test_examples=200,
                        batch_size=64, seeds=(0,), compressions=(3.0,), methods=("snip", "grasp"))
    one = init.Seed(pipeline.Setup(config), 0)
    theta0 = one.plain.params
    wang, snip = one.inputs_of("grasp"), one.inputs_of("snip")
    assert one.inputs_of("grasp_negated") is wang and snip is one.inputs
    kernels = lambda p: [(k, np.asarray(v["kernel"])) for k, v in p.items() if "kernel" in v]
    # Dense kernels re-drawn for GraSP only; conv kernels and SNIP's θ₀ untouched.
    for (name, w), (_, w0) in zip(kernels(wang.params), kernels(theta0)):
        assert np.array_equal(w, w0) == name.startswith("conv"), name
    for (_, w), (_, w0) in zip(kernels(snip.params), kernels(theta0)):
        assert np.array_equal(w, w0)
    # GraSP's loss is on 10 images per class: equal to one built from that sample.
    setup = one.setup
    images, labels = data.class_balanced_sample(setup.dataset.train_images, setup.dataset.train_labels,
                                                10, seed=init.SCORING)
    assert np.bincount(np.asarray(labels), minlength=10).tolist() == [10] * 10
    from kpjax import train
    from kpjax.pruning import saliency
    loss = train.batch_loss_fn(setup.spec.module.apply, None, setup.normalize(np.asarray(images)),
                               np.asarray(labels), temperature=saliency.GRASP_TEMPERATURE)
    assert float(loss(wang.params)) == float(wang.grasp_loss_fn(wang.params))
    shared = init.Seed(pipeline.Setup(dataclasses.replace(config, grasp_scoring="shared")), 0)
    assert shared.inputs_of("grasp") is shared.inputs
