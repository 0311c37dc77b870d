"""kpjax's Gram-based DMD against the reference formulation on a recorded
MnistNet trajectory (not a synthetic one).

The reference (Redman et al.'s code; Tu et al. 2014) computes exact DMD from
a full thin SVD of X and keeps the directions with σ² > 1e-14·σ²_max, i.e.
σ > 1e-7·σ_max. kpjax at rcond = 1e-7 must give the same λ≈1 mode b₁φ₁,
and the same KMP masks, although it never forms X, Y or an SVD.
"""

import jax
import jax.numpy as jnp
import numpy as np

from kpjax import data, koopman, models, pruning, train
from kpjax.train import recording
from kpjax.flatten import flat_spec

REFERENCE_RCOND = 1e-7  # σ² > 1e-14 σ²_max


def _recorded_mnistnet_trajectory(pretrain_steps=100, window=30):
    """MnistNet from seed 0: `pretrain_steps` of SGD (lr 0.05, momentum 0.9) on the
    shipped MNIST, then a window recorded with ShrinkBench's fine-tuning SGD
    (lr 1e-3, momentum 0.9, Nesterov), as experiments.prune records it."""
    spec = models.get_model("mnistnet")
    dataset = data.load_dataset("mnist")
    mean, std = data.get_normalization("mnist")
    normalize = lambda x: data.normalize(x, mean, std)
    params = models.init_variables(spec, 0)["params"]
    batches = data.batch_stream(dataset.train_images, dataset.train_labels, 128, seed=0)
    tx = train.make_optimizer(0.05, nesterov=False)
    state = train.create_train_state(params, tx, jax.random.PRNGKey(0))
    step = train.make_train_step(spec.module.apply, tx, normalize_fn=normalize)
    for _ in range(pretrain_steps):
        state, _ = step(state, *next(batches))
    tx = train.make_optimizer(1e-3)
    select = pruning.prunable(state.params)
    recorder = recording.make_recording_train_step(
        train.make_train_step(spec.module.apply, tx, normalize_fn=normalize), select)
    state = train.create_train_state(state.params, tx, jax.random.PRNGKey(0))
    _, theta = recording.record_trajectory(recorder, state, batches, window, select)
    return np.asarray(theta), flat_spec(state.params, select)


def _reference_fixed_point_mode(theta: np.ndarray, rcond: float):
    """b₁φ₁ and λ₁ by the reference formulation: thin SVD of X, exact modes
    Φ = Y V Σ⁻¹ W Λ⁻¹, amplitudes b = argmin ‖Φb − θ_0‖."""
    x, y = theta[:-1].T.astype(np.float64), theta[1:].T.astype(np.float64)
    u, s, vh = np.linalg.svd(x, full_matrices=False)
    r = int(np.sum(s**2 > rcond**2 * s[0] ** 2))
    u, s, v = u[:, :r], s[:r], vh[:r].T
    lam, w = np.linalg.eig(u.T @ y @ (v / s))
    phi = (y @ (v / s)) @ w / lam
    b = np.linalg.lstsq(phi, x[:, 0], rcond=None)[0]
    i = int(np.argmin(np.abs(lam - 1.0)))
    return b[i] * phi[:, i], lam[i], r


def test_gram_dmd_reproduces_the_full_svd_fixed_point_mode_on_a_recorded_trajectory():
    theta, spec = _recorded_mnistnet_trajectory()
    reference, lam_ref, rank_ref = _reference_fixed_point_mode(theta, REFERENCE_RCOND)
    fit = koopman.fit_trajectory(jnp.asarray(theta), rcond=REFERENCE_RCOND)
    assert int(fit.directions) == rank_ref
    assert abs(complex(fit.eigenvalues[0]) - lam_ref) < 1e-8
    mode = np.asarray(koopman.fixed_point_mode(jnp.asarray(theta), fit))
    cos = abs(np.vdot(mode, reference)) / (np.linalg.norm(mode) * np.linalg.norm(reference))
    assert cos >= 0.99999, cos
    assert np.linalg.norm(mode - reference) / np.linalg.norm(reference) < 1e-4
    # The KMP masks at the paper's compressions.
    scores = np.asarray(pruning.kmp_flat_scores(jnp.asarray(theta), fit))
    total = theta.shape[1]
    for c in (2, 4, 8, 16, 32):
        fraction = pruning.keep_fraction(c, total, total)
        ours = np.asarray(pruning.global_flat_mask(jnp.asarray(scores), spec, fraction))
        theirs = np.asarray(pruning.global_flat_mask(jnp.asarray(np.abs(reference)), spec, fraction))
        assert np.mean(ours == theirs) >= 0.99999, c
