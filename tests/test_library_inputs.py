"""Bad input at the library's public API gets one ValueError naming the
argument (and the pytree leaf, for masks), the rules the command line
applies (issue 33); the fit warns when its rank cutoff cannot work.
One test per bad input, each asserting the message."""

import re
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import kpjax
from kpjax import pruning


class TwoLayer(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3, name="out")(nn.relu(nn.Dense(4, name="hidden")(x)))


PARAMS = TwoLayer().init(jax.random.PRNGKey(0), jnp.ones((1, 5)))["params"]
SELECT = pruning.prunable(PARAMS)
TOTAL = kpjax.count_params(PARAMS)  # 20 + 4 + 12 + 3 = 39, all prunable
INPUTS = kpjax.PruneInputs(PARAMS, SELECT)
TRUE = jax.tree_util.tree_map(lambda p: jnp.ones(p.shape, bool), PARAMS)


def _with(tree, path, leaf):
    """`tree` with the leaf at `path` (module, name) replaced."""
    out = jax.tree_util.tree_map(lambda x: x, tree)
    out = {k: dict(v) for k, v in out.items()}
    out[path[0]][path[1]] = leaf
    return out


# --- compressions and counts -------------------------------------------------

def test_a_compression_that_keeps_nothing_is_refused():
    assert TOTAL == 39
    for c in (1e9, 2.5 * TOTAL):  # both round the kept count to 0
        with pytest.raises(ValueError, match=r"compression .* is impossible: it would keep none of the 39 "
                                             r"prunable parameters \(0 of 39 are not prunable\), so "
                                             r"compression is at most 39 \(one prunable weight kept\)"):
            pruning.prune("gmp", INPUTS, c)


def test_a_compression_that_keeps_fewer_weights_than_tensors_is_refused():
    # c = 20 keeps round(39/20) = 2 weights for 4 prunable tensors: a layer must empty.
    with pytest.raises(ValueError, match=r"keeps 2 of 39 prunable parameters, fewer than one per "
                                         r"prunable tensor \(4\)"):
        pruning.prune("gmp", INPUTS, 20.0)
    mask = pruning.prune("gmp", INPUTS, 39 / 4)  # 4 kept: allowed
    assert sum(int(np.sum(m)) for m in jax.tree_util.tree_leaves(mask)) == 4


def test_layerwise_masks_follow_the_same_rule():
    spec = kpjax.flat_spec(PARAMS, SELECT)
    with pytest.raises(ValueError, match="fewer than one per prunable tensor"):
        pruning.layerwise_flat_mask(jnp.ones(spec.size), spec, 3 / 39)


def test_keep_fraction_refuses_more_prunable_than_total():
    with pytest.raises(ValueError, match="prunable_count 100 exceeds total 10"):
        pruning.keep_fraction(4.0, total=10, prunable_count=100)


@pytest.mark.parametrize("total, prunable, name", [
    (0, 0, "total"), (10.5, 5, "total"), (10, -1, "prunable_count"), (10, True, "prunable_count")])
def test_keep_fraction_refuses_counts_that_are_not_positive_integers(total, prunable, name):
    with pytest.raises(ValueError, match=rf"{name}.* must be a positive integer"):
        pruning.keep_fraction(2.0, total, prunable)


def test_keep_fraction_refuses_a_compression_that_is_not_a_number():
    with pytest.raises(ValueError, match="compression ratio must be a number, got 'ten'"):
        pruning.keep_fraction("ten", 10, 5)


# --- masks -------------------------------------------------------------------

def test_apply_mask_refuses_a_leaf_that_would_broadcast():
    mask = jax.tree_util.tree_map(lambda p: jnp.ones((1,), bool), PARAMS)
    with pytest.raises(ValueError, match=re.escape("apply_mask(params, mask): leaf hidden/bias has shape "
                                                   "(1,), its parameter (4,)")):
        pruning.apply_mask(PARAMS, mask)


def test_apply_mask_names_a_leaf_that_cannot_broadcast():
    mask = _with(TRUE, ("out", "kernel"), jnp.ones((3, 4), bool))
    with pytest.raises(ValueError, match=re.escape("leaf out/kernel has shape (3, 4), its parameter (4, 3)")):
        pruning.apply_mask(PARAMS, mask)


@pytest.mark.parametrize("leaf", [jnp.full((4,), 0.5), jnp.full((4,), 2, jnp.int32)])
def test_masks_must_be_boolean(leaf):
    mask = _with(TRUE, ("hidden", "bias"), leaf)
    with pytest.raises(ValueError, match=f"leaf hidden/bias has dtype {leaf.dtype}, masks must be boolean"):
        pruning.apply_mask(PARAMS, mask)
    with pytest.raises(ValueError, match="apply_mask.*masks must be boolean"):
        pruning.compression_ratio(PARAMS, mask)


def test_a_mask_of_another_structure_is_refused():
    with pytest.raises(ValueError, match="apply_mask\\(params, mask\\): pytrees have different structure"):
        pruning.apply_mask(PARAMS, {"hidden": TRUE["hidden"]})


def test_mask_comparisons_check_both_masks():
    bad = _with(TRUE, ("hidden", "kernel"), jnp.ones((5, 4), jnp.float32))
    with pytest.raises(ValueError, match="mask_jaccard\\(a, b\\): leaf hidden/kernel has dtype float32"):
        pruning.mask_jaccard(TRUE, bad, SELECT)
    with pytest.raises(ValueError, match="mask_distance\\(a, b\\): leaf hidden/kernel has dtype float32"):
        pruning.mask_distance(bad, TRUE, SELECT)


def test_freeze_pruned_checks_the_mask_at_init():
    mask = _with(TRUE, ("out", "bias"), jnp.ones((1,), bool))
    tx = pruning.freeze_pruned(optax.sgd(0.1), mask)
    with pytest.raises(ValueError, match=re.escape("freeze_pruned(tx, mask): leaf out/bias has shape (1,)")):
        tx.init(PARAMS)


def test_freeze_pruned_checks_an_nnx_models_mask():
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    good = {"bias": jnp.ones((2,), bool), "kernel": jnp.ones((3, 2), bool)}
    nnx.Optimizer(model, pruning.freeze_pruned(optax.sgd(0.1), good), wrt=nnx.Param)  # accepted
    bad = {"bias": jnp.ones((2,), bool), "kernel": jnp.ones((3, 2), jnp.float32)}
    with pytest.raises(ValueError, match="freeze_pruned\\(tx, mask\\): leaf kernel has dtype float32"):
        nnx.Optimizer(model, pruning.freeze_pruned(optax.sgd(0.1), bad), wrt=nnx.Param)


def test_a_good_mask_still_works_under_jit():
    mask = pruning.prune("gmp", INPUTS, 2.0)
    jitted = jax.jit(pruning.apply_mask)(PARAMS, mask)
    eager = pruning.apply_mask(PARAMS, mask)
    for a, b in zip(jax.tree_util.tree_leaves(jitted), jax.tree_util.tree_leaves(eager)):
        np.testing.assert_array_equal(a, b)


# --- trajectories ------------------------------------------------------------

@pytest.mark.parametrize("theta, message", [
    (np.array([["a", "b"]] * 5, dtype=object), "snapshots must be numeric, got dtype object"),
    (np.array([["a", "b"]] * 5), "snapshots must be numeric, got dtype <U1"),
    (np.ones((5, 3), bool), "snapshots must be numeric, got dtype bool"),
    (np.ones((5, 3), np.complex64), "snapshots must be real"),
    ([[1.0, 2.0]] * 5, "snapshots must be an array with a shape and a dtype, got list"),
    (np.zeros((5, 0), np.float32), re.escape("snapshots have no columns (shape (5, 0))")),
    (np.zeros((0, 4), np.float32), "need at least 3 snapshots"),
    (np.ones((5, 4), np.float32) * np.array([1, 1, np.nan, 1], np.float32), "NaN or Inf"),
])
def test_bad_trajectories_are_refused(theta, message):
    with pytest.raises(ValueError, match=message):
        kpjax.fit_trajectory(theta)


def test_a_gram_matrix_that_is_not_numeric_is_refused():
    with pytest.raises(ValueError, match="the Gram matrix must be numeric, got dtype object"):
        kpjax.fit_dmd(np.full((4, 4), None))


def _walk(rows=20, cols=50):
    return np.cumsum(np.random.default_rng(0).normal(size=(rows, cols)), axis=0).astype(np.float32)


def test_an_ordinary_trajectory_fits_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert int(kpjax.fit_trajectory(_walk()).rank) == 19


def test_an_outlier_entry_that_hides_the_rest_warns():
    theta = _walk()
    theta[3, 7] = 3e38  # finite: the fit keeps rank 1 with λ ≈ 0
    with pytest.warns(RuntimeWarning, match=r"snapshot norms span .* more than 1/rcond = 1e\+06: the rank "
                                            r"cutoff, set by the largest, discards the smallest"):
        fit = kpjax.fit_trajectory(theta)
    assert int(fit.rank) == 1
    with warnings.catch_warnings():  # no cutoff, no warning
        warnings.simplefilter("error")
        kpjax.fit_trajectory(theta, rcond=0.0)


def test_a_zero_trajectory_warns_and_a_subnormal_one_on_the_host_is_fitted():
    with pytest.warns(RuntimeWarning, match="the Gram matrix is zero"):
        assert int(kpjax.fit_trajectory(np.zeros((5, 4), np.float32)).rank) == 0
    # NumPy's cast keeps float32 subnormals (XLA:CPU flushes them to zero, and
    # a device Θ still gets the warning): the host Gram is ~1e-80, not 0.
    walk = _walk().astype(np.float32)
    tiny = (_walk() * 1e-40).astype(np.float32)
    assert int(kpjax.fit_trajectory(tiny).rank) == int(kpjax.fit_trajectory(walk).rank)


# --- the same rules for an NNX model's parameters (kpjax.from_nnx) ------------

class NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(1, 3, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(3, rngs=rngs)
        self.head = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
        return self.head(nnx.relu(self.bn(self.conv(x))).mean(axis=(1, 2)))


def test_an_nnx_models_masks_and_compressions_are_checked_alike():
    params = kpjax.from_nnx(NNXNet(nnx.Rngs(0))).params
    inputs = kpjax.PruneInputs(params, pruning.prunable(params))  # conv, head: 4 tensors
    with pytest.raises(ValueError, match="impossible: it would keep none"):
        pruning.prune("gmp", inputs, 1e9)
    with pytest.raises(ValueError, match="fewer than one per prunable tensor \\(4\\)"):
        pruning.prune("gmp", inputs, kpjax.count_params(params) / (6 + 2))  # 6 BN parameters + 2 kept
    mask = pruning.prune("gmp", inputs, 2.0)
    pruning.apply_mask(params, mask)
    bad = {**mask, "bn": {**mask["bn"], "scale": jnp.ones((1,), bool)}}
    with pytest.raises(ValueError, match=re.escape("leaf bn/scale has shape (1,), its parameter (3,)")):
        pruning.apply_mask(params, bad)
