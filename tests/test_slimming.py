"""kpjax.pruning.slimming: network slimming's |γ| scores, registered as bn_gamma."""

import jax
import jax.numpy as jnp
import numpy as np

import kpjax
from kpjax import models, pruning
from kpjax.pruning import structured


def _params(spec):
    """Random parameters of `spec`'s layout (drawn by NumPy: only the layout and
    γ matter here, and an op-by-op ResNet init compiles for ~20 s)."""
    rng = np.random.default_rng(0)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(size=s.shape), s.dtype),
                                  models.variable_shapes(spec)["params"])


def test_bn_gamma_scores_broadcast_each_channels_scale_over_its_filter():
    spec = models.get_model("resnet_tiny")
    params = _params(spec)
    gamma = np.arange(1, params["layer2_0"]["bn1"]["scale"].size + 1, dtype=np.float32) * -1.0
    params = {**params, "layer2_0": {**params["layer2_0"], "bn1": {**params["layer2_0"]["bn1"],
                                                                     "scale": jnp.asarray(gamma)}}}
    scores = pruning.bn_gamma_scores(params)
    conv = np.asarray(scores["layer2_0"]["conv1"]["kernel"])
    np.testing.assert_array_equal(conv, np.broadcast_to(np.abs(gamma), conv.shape))
    assert float(jnp.sum(scores["linear"]["kernel"])) == 0.0  # no BatchNorm after the classifier
    # At filter granularity it ranks the block's inner channels by |γ|.
    keep = structured.keep_units(structured.group_scores(spec, scores), 0.5)["layer2_0"]
    np.testing.assert_array_equal(keep, np.abs(gamma) >= np.median(np.abs(gamma)))


def test_bn_gamma_is_registered_with_its_facts_and_prunes_by_the_lowest_gamma():
    method = kpjax.get_method("bn_gamma")
    assert (method.label, method.family, method.needs, method.baseline) == ("|γ|", "baseline", (), None)
    spec = models.get_model("resnet_tiny")
    params = _params(spec)
    gamma = np.array([0.1, 3.0, -2.0, 0.5], np.float32)  # resnet_tiny's first block has 4 channels
    params = {**params, "layer1_0": {**params["layer1_0"], "bn1": {**params["layer1_0"]["bn1"],
                                                                     "scale": jnp.asarray(gamma)}}}
    mask = kpjax.prune("bn_gamma", kpjax.PruneInputs(params, kpjax.prunable(params)), compression=1.5)
    kept = np.asarray(mask["layer1_0"]["conv1"]["kernel"])
    # Global pruning by |γ|: every other kernel scores 0 and goes first; of
    # this conv's filters the largest |γ| (3.0, then 2.0) are kept.
    assert kept[..., 1].all() and kept[..., 2].all() and not kept[..., 0].any()
