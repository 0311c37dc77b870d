"""kpjax.pruning.flow on a quadratic, where every quantity has a closed form.

L(θ) = ½ θᵀAθ − bᵀθ: g = Aθ − b, H = A. Removing δ = θ ⊙ (1 − m):
L(θ − δ) − L(θ) = −gᵀδ + ½ δᵀAδ and ‖g(θ − δ)‖² − ‖g‖² = −2 δᵀAg + ‖Aδ‖²,
so the first-order predictions miss the actual changes by exactly the
second-order terms.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from kpjax import pruning

RNG = np.random.default_rng(0)
N = 7
M = RNG.normal(size=(N, N))
A = M @ M.T / N + np.eye(N)
B = RNG.normal(size=N)
THETA = RNG.normal(size=N)
KEEP = np.array([1, 0, 1, 1, 0, 0, 1], bool)


def _split(x, dtype=jnp.float32):  # θ as a two-leaf pytree, to check the sums run over leaves
    return {"a": jnp.asarray(x[:3], dtype), "b": {"kernel": jnp.asarray(x[3:], dtype)}}


def _loss(params):
    theta = jnp.concatenate([params["a"], params["b"]["kernel"]])
    return 0.5 * theta @ jnp.asarray(A, jnp.float32) @ theta - jnp.asarray(B, jnp.float32) @ theta


def test_flow_measures_match_the_quadratics_closed_forms():
    out = pruning.flow_measures(_split(THETA), _split(KEEP, bool), _loss)
    g = A @ THETA - B
    delta = THETA * ~KEEP
    kept = THETA * KEEP
    g_pruned = A @ kept - B
    expected = {
        "loss": 0.5 * THETA @ A @ THETA - B @ THETA,
        "loss_pruned": 0.5 * kept @ A @ kept - B @ kept,
        "predicted_loss_change": -g @ delta,
        "grad_norm_sq": g @ g,
        "grad_norm_sq_pruned": g_pruned @ g_pruned,
        "kept_grad_norm_sq_pruned": (g_pruned * KEEP) @ (g_pruned * KEEP),
        "predicted_grad_norm_sq_change": -2 * delta @ A @ g,
        "norm_rate": THETA @ g,
        "kept_norm_rate": kept @ g,
        "abs_rate": np.abs(THETA * g).sum(),
        "kept_abs_rate": np.abs(kept * g).sum(),
        "norm_sq": THETA @ THETA,
        "kept_norm_sq": kept @ kept,
    }
    assert set(expected) == set(pruning.FlowMeasures._fields)
    for name, value in expected.items():
        np.testing.assert_allclose(float(getattr(out, name)), value, rtol=2e-5, atol=1e-5, err_msg=name)
    # The predictions are first order: they miss by exactly the second-order terms.
    np.testing.assert_allclose(float(out.loss_pruned - out.loss - out.predicted_loss_change),
                               0.5 * delta @ A @ delta, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(out.grad_norm_sq_pruned - out.grad_norm_sq
                                     - out.predicted_grad_norm_sq_change),
                               (A @ delta) @ (A @ delta), rtol=1e-4, atol=1e-5)


def test_a_full_mask_changes_nothing_and_jit_with_the_loss_closed_over_agrees():
    full = jax.tree_util.tree_map(lambda x: jnp.ones(x.shape, bool), _split(THETA))
    out = pruning.flow_measures(_split(THETA), full, _loss)
    assert float(out.predicted_loss_change) == 0.0 and float(out.loss_pruned) == float(out.loss)
    assert float(out.kept_norm_sq) == float(out.norm_sq)
    jitted = jax.jit(functools.partial(pruning.flow_measures, loss_fn=_loss))(_split(THETA), _split(KEEP, bool))
    eager = pruning.flow_measures(_split(THETA), _split(KEEP, bool), _loss)
    for a, b in zip(jitted, eager):
        np.testing.assert_allclose(float(a), float(b), rtol=1e-6)
