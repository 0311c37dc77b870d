"""Tests of kpjax.koopman against dynamics with known spectra."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kpjax import koopman
from kpjax.koopman import blocked
from oracles import damped_rotation, quadratic_gd, stack_snapshots
from test_flatten import _params


def test_gram_blocked_equals_float64_product_for_any_block_size():
    rng = np.random.default_rng(0)
    theta = rng.normal(size=(7, 1001)).astype(np.float32)
    expected = theta.astype(np.float64) @ theta.astype(np.float64).T
    for block in (1, 64, 333, 1001, 5000):
        k = koopman.gram(jnp.asarray(theta), block_size=block)
        assert k.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(k), expected, rtol=1e-12)


def test_gram_reads_numpy_memmap(tmp_path):
    rng = np.random.default_rng(1)
    theta = rng.normal(size=(5, 300)).astype(np.float32)
    mm = np.lib.format.open_memmap(tmp_path / "theta.npy", mode="w+", dtype=np.float32, shape=theta.shape)
    mm[:] = theta
    k = koopman.gram(mm, block_size=128)
    np.testing.assert_allclose(np.asarray(k), theta.astype(np.float64) @ theta.astype(np.float64).T, rtol=1e-12)


@pytest.mark.parametrize("amplitudes", ["first", "all"])
def test_quadratic_gd_recovers_fixed_point_and_rates(amplitudes):
    oracle = quadratic_gd()
    theta = jnp.asarray(oracle.snapshots, jnp.float32)
    fit = koopman.fit_trajectory(theta, amplitudes=amplitudes)
    lam = np.asarray(fit.eigenvalues)[np.asarray(fit.valid)]
    assert int(fit.rank) == 4
    assert koopman.fixed_point_index(fit) == 0
    assert abs(lam[0] - 1.0) < 1e-5
    expected = np.sort(1.0 - oracle.eta * oracle.excited_h)
    np.testing.assert_allclose(np.sort(lam[1:].real), expected, atol=1e-4)
    np.testing.assert_allclose(lam.imag, 0.0, atol=1e-6)
    # λ₁ = 1 is separated from the slowest decaying mode 1 − η·h_min by η·h_min.
    np.testing.assert_allclose(koopman.fixed_point_separation(lam),
                               oracle.eta * np.min(oracle.excited_h), rtol=1e-3)
    # b₁φ₁ is θ* itself, not only proportional to it.
    phi = np.asarray(koopman.fixed_point_mode(theta, fit))
    np.testing.assert_allclose(phi.real, oracle.theta_star, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(phi.imag, 0.0, atol=1e-6)


def test_predictions_reproduce_the_trajectory_and_its_steps():
    oracle = quadratic_gd()
    theta = jnp.asarray(oracle.snapshots, jnp.float32)
    fit = koopman.fit_trajectory(theta)
    for t in (0, 7, 30):
        np.testing.assert_allclose(np.asarray(koopman.predict(theta, fit, t)), oracle.snapshots[t], atol=1e-4)
    last = oracle.snapshots[-1]
    step = np.asarray(koopman.predicted_step(theta, fit, 30))
    np.testing.assert_allclose(step, -oracle.eta * oracle.grad(last), atol=1e-5)


def test_damped_rotation_gives_complex_conjugate_pair():
    snapshots, true_lam = damped_rotation()
    fit = koopman.fit_trajectory(jnp.asarray(snapshots, jnp.float32))
    lam = np.asarray(fit.eigenvalues)[np.asarray(fit.valid)]
    assert int(fit.rank) == 3
    assert abs(lam[0] - 1.0) < 1e-5
    rest = lam[1:]
    np.testing.assert_allclose(np.sort_complex(rest), np.sort_complex(true_lam), atol=1e-4)
    assert abs(rest[0] - rest[1].conjugate()) < 1e-6


def _reference_exact_dmd(theta: np.ndarray, rank: int):
    """Exact DMD by full SVD of X (Tu et al. 2014), independent of kpjax."""
    x, y = theta[:-1].T, theta[1:].T
    u, s, vh = np.linalg.svd(x, full_matrices=False)
    u, s, v = u[:, :rank], s[:rank], vh[:rank].conj().T
    a_tilde = u.conj().T @ y @ v / s
    lam, w = np.linalg.eig(a_tilde)
    phi = (y @ v / s) @ w / lam
    return lam, phi


def test_gram_fit_matches_full_svd_exact_dmd_on_low_rank_data():
    rng = np.random.default_rng(3)
    rank, n, t = 6, 400, 15
    theta = (rng.normal(size=(t + 1, rank)) @ rng.normal(size=(rank, n))).astype(np.float32)
    fit = koopman.fit_trajectory(jnp.asarray(theta))
    valid = np.asarray(fit.valid)
    assert valid.sum() == rank
    lam_ref, phi_ref = _reference_exact_dmd(theta.astype(np.float64), rank)
    lam = np.asarray(fit.eigenvalues)[valid]
    phi = np.asarray(koopman.modes(jnp.asarray(theta), fit, np.flatnonzero(valid)))
    for i, l in enumerate(lam):
        j = int(np.argmin(np.abs(lam_ref - l)))
        assert abs(lam_ref[j] - l) < 1e-6 * max(1.0, abs(l))
        cos = abs(np.vdot(phi[:, i], phi_ref[:, j])) / (np.linalg.norm(phi[:, i]) * np.linalg.norm(phi_ref[:, j]))
        assert cos > 1 - 1e-6


def test_batched_fit_equals_separate_fits():
    a = quadratic_gd(seed=0).snapshots
    b = quadratic_gd(seed=5, excited_h=(0.5, 2.5)).snapshots
    grams = jnp.stack([koopman.gram(jnp.asarray(a, jnp.float32)), koopman.gram(jnp.asarray(b, jnp.float32))])
    batched = koopman.fit_dmd_batched(grams)
    for i, theta in enumerate((a, b)):
        single = koopman.fit_dmd(grams[i])
        np.testing.assert_allclose(np.asarray(batched.eigenvalues[i]), np.asarray(single.eigenvalues), atol=1e-9)
        np.testing.assert_array_equal(np.asarray(batched.valid[i]), np.asarray(single.valid))
    assert list(np.asarray(batched.rank)) == [4, 3]


def test_segment_grams_sum_to_the_global_gram():
    params = _params()
    rng = np.random.default_rng(2)
    traj = [jax.tree_util.tree_map(lambda x: x + rng.normal(size=x.shape), params) for _ in range(5)]
    theta, spec = stack_snapshots(traj, lambda p, x: True)
    grams = koopman.segment_grams(theta, spec, block_size=7)
    assert grams.shape == (4, 5, 5)
    np.testing.assert_allclose(np.asarray(grams).sum(0), np.asarray(koopman.gram(theta)), rtol=1e-12)


def test_rank_cutoff_drops_noise_directions():
    oracle = quadratic_gd()
    theta = oracle.snapshots.astype(np.float32)
    fit_cut = koopman.fit_trajectory(jnp.asarray(theta), rcond=1e-3)
    fit_all = koopman.fit_trajectory(jnp.asarray(theta), rcond=0.0)
    assert int(fit_cut.rank) < 4 < int(fit_all.rank)
    # The fixed point survives a cutoff that drops a fast-decaying direction.
    assert abs(complex(fit_cut.eigenvalues[0]) - 1.0) < 1e-4


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_snapshots_raises(bad):
    theta = np.ones((5, 10), np.float32)
    theta[3, 4] = bad
    with pytest.raises(ValueError, match=r"NaN or Inf.*\[3\]"):
        koopman.fit_trajectory(jnp.asarray(theta))


def test_too_few_snapshots_and_bad_arguments_raise():
    with pytest.raises(ValueError, match="at least 3 snapshots"):
        koopman.gram(jnp.ones((2, 10)))
    with pytest.raises(ValueError, match="at least 3 snapshots"):
        koopman.fit_dmd(np.eye(2))
    with pytest.raises(ValueError, match=r"\(T\+1, N\)"):
        koopman.gram(jnp.ones(10))
    k = koopman.gram(jnp.asarray(quadratic_gd().snapshots, jnp.float32))
    with pytest.raises(ValueError, match="rcond"):
        koopman.fit_dmd(k, rcond=1.5)
    with pytest.raises(ValueError, match="amplitudes"):
        koopman.fit_dmd(k, amplitudes="best")
    with pytest.raises(ValueError, match="NaN or Inf"):
        koopman.fit_dmd(np.full((4, 4), np.nan))


@pytest.mark.parametrize("dtype", [np.float16, "bfloat16"])
def test_gram_and_combine_cast_low_precision_blocks_to_float64(dtype):
    import ml_dtypes

    dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype
    theta = np.random.default_rng(2).normal(size=(6, 700)).astype(dtype)
    exact = theta.astype(np.float64)
    k = koopman.gram(theta, block_size=256)  # last block padded
    np.testing.assert_allclose(np.asarray(k), exact @ exact.T, rtol=1e-12)
    w = np.arange(6.0) - 2j
    np.testing.assert_allclose(
        np.asarray(koopman.combine_snapshots(theta, w, block_size=256)), exact.T @ w, rtol=1e-12
    )


@pytest.mark.parametrize("rows", [5, 40, 392])
@pytest.mark.parametrize("budget", [2**20, 2**23, 2**26])
def test_block_size_for_budget_bounds_compiled_temporaries(rows, budget):
    if budget < 3 * 8 * rows**2 + 32 * rows:
        with pytest.raises(ValueError, match="too small"):
            koopman.block_size_for_budget(rows, budget)
        return
    block = koopman.block_size_for_budget(rows, budget)
    assert 1 <= block <= koopman.DEFAULT_BLOCK_SIZE
    with jax.enable_x64(True):
        k = jax.ShapeDtypeStruct((rows, rows), jnp.float64)
        w = jax.ShapeDtypeStruct((rows, 2 * (rows - 1)), jnp.float64)  # all T modes, complex
        for dtype in (jnp.float32, jnp.float16):
            panel = jax.ShapeDtypeStruct((rows, block), dtype)
            for compiled in (
                blocked._gram_block.lower(k, panel).compile(),
                blocked._combine_block.lower(panel, w).compile(),
            ):
                mem = compiled.memory_analysis()
                used = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                assert used <= budget


def test_memory_budget_lowers_the_block_size_but_not_the_result():
    theta = np.random.default_rng(3).normal(size=(5, 3000)).astype(np.float32)
    budget = 3 * 8 * 25 + 32 * 5 * 100  # 100 columns a block
    assert koopman.block_size_for_budget(5, budget) == 100
    np.testing.assert_allclose(
        np.asarray(koopman.gram(theta, memory_budget=budget)),
        np.asarray(koopman.gram(theta)),
        rtol=1e-12,
    )


def test_fixed_point_separation_by_hand():
    assert koopman.fixed_point_separation(np.array([0.5, 1.0, 0.9])) == pytest.approx(0.1)
    pair = np.array([1 + 1e-3j, 1 - 1e-3j, 0.5])
    assert koopman.fixed_point_separation(pair) == pytest.approx(2e-3)
    assert koopman.fixed_point_separation(np.array([0.99])) == float("inf")
    with pytest.raises(ValueError, match="at least one eigenvalue"):
        koopman.fixed_point_separation(np.array([]))


def test_complex_snapshots_are_refused():
    theta = jnp.ones((4, 3), jnp.complex64)
    with pytest.raises(ValueError, match="snapshots must be real"):
        koopman.fit_trajectory(theta)


def test_mode_residuals_vanish_on_linear_dynamics_and_grow_with_noise():
    oracle = quadratic_gd()
    # Θ in float64 (a NumPy array): the claim is the float64 Gram's
    # cancellation floor (~1e-8). A float32 Θ adds its own rounding, which
    # reached 6.8e-6 for the λ = 0.8 mode on one CPU and less on another.
    theta = np.asarray(oracle.snapshots, np.float64)
    k = koopman.gram(theta)
    fit = koopman.fit_dmd(k)
    r = np.asarray(koopman.mode_residuals(k, fit))
    valid = np.asarray(fit.valid)
    assert np.all(np.isnan(r[~valid])) and valid.sum() >= 2
    assert np.all(r[valid] < 1e-6), r[valid]
    rng = np.random.default_rng(0)
    scale = float(np.abs(oracle.snapshots).max())
    residual_of_lambda1 = []
    for noise in (1e-6, 1e-4, 1e-2):
        noisy = oracle.snapshots + noise * scale * rng.normal(size=oracle.snapshots.shape)
        k = koopman.gram(jnp.asarray(noisy))
        fit = koopman.fit_dmd(k, rcond=0.0)
        residual_of_lambda1.append(float(koopman.mode_residuals(k, fit)[0]))
    assert residual_of_lambda1[0] < residual_of_lambda1[1] < residual_of_lambda1[2]


def test_mode_residuals_equal_the_direct_n_sized_computation():
    rng = np.random.default_rng(3)
    theta = rng.normal(size=(9, 40))
    k = koopman.gram(jnp.asarray(theta))
    fit = koopman.fit_dmd(k, rcond=0.0)
    x, y = theta[:-1].T, theta[1:].T
    c, lam = np.asarray(fit.coefficients), np.asarray(fit.eigenvalues)
    r = np.asarray(koopman.mode_residuals(k, fit))
    for i in np.flatnonzero(np.asarray(fit.valid)):
        v = lam[i] * c[1:, i]
        direct = np.linalg.norm(y @ v - lam[i] * (x @ v)) / np.linalg.norm(x @ v)
        assert r[i] == pytest.approx(direct, rel=1e-6, abs=1e-9)


def test_energy_kept_equals_the_svd_energy_above_the_cutoff():
    oracle = quadratic_gd()
    theta = oracle.snapshots + 1e-7 * np.random.default_rng(0).normal(size=oracle.snapshots.shape)
    s = np.linalg.svd(theta[:-1].T, compute_uv=False)  # independent: NumPy's SVD of X
    k = koopman.gram(jnp.asarray(theta))
    for rcond in (1e-6, 1e-9, 0.0):
        fit = koopman.fit_dmd(k, rcond=rcond)
        kept = s > rcond * s[0]
        assert int(fit.directions) == kept.sum()
        expected = np.sum(s[kept] ** 2) / np.sum(s**2)
        assert float(koopman.energy_kept(fit)) == pytest.approx(expected, rel=1e-12)
    assert float(koopman.energy_kept(koopman.fit_dmd(k, rcond=0.0))) == 1.0
    batched = koopman.fit_dmd_batched(jnp.stack([k, k]), rcond=1e-6)
    np.testing.assert_allclose(np.asarray(koopman.energy_kept(batched)),
                               float(koopman.energy_kept(koopman.fit_dmd(k, rcond=1e-6))))


def _nearly_flat_quadratic(steps=60):
    """GD on a quadratic whose iteration map has the eigenvalue 1 (θ*) and
    1 − ηh = 1 − 2e-5 (a nearly flat direction u): a double eigenvalue at 1
    up to 2e-5. On the window's horizon the flat direction does not move
    (T·ηh ≈ 1e-3), so the fixed point there is θ_S = θ* + u uᵀ(θ_0 − θ*),
    which is also the limit of θ(∞) as the flat direction's curvature → 0."""
    oracle = quadratic_gd(excited_h=(2e-4, 1.0, 2.0), eta=0.1, steps=steps)
    h, q = np.linalg.eigh(oracle.hessian)
    u = q[:, np.argmin(np.abs(h - 2e-4))]
    theta_s = oracle.theta_star + u * (u @ (oracle.snapshots[0] - oracle.theta_star))
    return oracle, theta_s


@pytest.mark.parametrize("steps", [30, 60])
def test_subspace_kmp_recovers_the_fixed_point_where_single_mode_kmp_is_ill_defined(steps):
    oracle, theta_s = _nearly_flat_quadratic(steps)
    theta = jnp.asarray(oracle.snapshots)
    fit = koopman.fit_trajectory(theta)
    lam = np.asarray(fit.eigenvalues)
    cluster = koopman.fixed_point_cluster(fit)
    assert len(cluster) == 2 and np.all(np.abs(lam[cluster] - 1) < 1e-4)
    # Rounding alone already moves the two eigenvalues by more than their
    # separation, so the single mode φ₁ is an arbitrary vector of the plane
    # span{θ*, u}: neither θ_S nor θ*.
    assert abs(lam[1] - (1 - 2e-5)) > 2e-6 or abs(lam[0] - 1) > 2e-6
    rel = lambda a, b: np.linalg.norm(a - b) / np.linalg.norm(b)
    single = np.asarray(koopman.fixed_point_mode(theta, fit)).real
    assert rel(single, theta_s) > 0.05 and rel(single, oracle.theta_star) > 0.05
    subspace = np.asarray(koopman.fixed_point_subspace(theta, fit))
    assert rel(subspace, theta_s) < 1e-5
    # The pruning scores: |θ_S| up to the same error.
    from kpjax import pruning
    scores = np.asarray(pruning.kmp_subspace_flat_scores(theta, fit))
    np.testing.assert_allclose(scores, np.abs(theta_s), atol=1e-5 * np.abs(theta_s).max())


def test_subspace_kmp_with_one_eigenvalue_near_1_is_kmp():
    oracle = quadratic_gd()
    theta = jnp.asarray(oracle.snapshots)
    fit = koopman.fit_trajectory(theta)
    assert list(koopman.fixed_point_cluster(fit)) == [0]
    np.testing.assert_array_equal(np.asarray(koopman.fixed_point_subspace(theta, fit)),
                                  np.asarray(koopman.fixed_point_mode(theta, fit)).real)
    # tol = 0 keeps λ₁ alone; a tolerance that reaches every mode sums them all: θ_0.
    assert list(koopman.fixed_point_cluster(fit, 0.0)) == [0]
    everything = koopman.fixed_point_subspace(theta, fit, 10.0)
    np.testing.assert_allclose(np.asarray(everything), oracle.snapshots[0], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="tol"):
        koopman.fixed_point_cluster(fit, float("nan"))


def test_the_cluster_is_closed_under_conjugation():
    # A slow rotation, λ = 0.9995·e^{±2e-4 i}: the fit puts the pair 5e-4 from 1.
    theta, _ = damped_rotation(radius=0.9995, omega=2e-4, steps=40)
    fit = koopman.fit_trajectory(jnp.asarray(theta))
    lam = np.asarray(fit.eigenvalues)
    assert int(fit.rank) == 3 and abs(lam[1].imag) > 0 and lam[2] == np.conj(lam[1])
    assert list(koopman.fixed_point_cluster(fit, 1e-4)) == [0]
    assert list(koopman.fixed_point_cluster(fit, 1e-3)) == [0, 1, 2]
    # With the pair, the cluster holds every mode: θ_S is θ_0 (real by the
    # conjugate symmetry, not by dropping an imaginary part).
    idx = koopman.fixed_point_cluster(fit, 1e-3)
    weights = np.asarray(fit.coefficients)[:, idx] @ np.asarray(fit.amplitudes)[idx]
    combined = koopman.combine_snapshots(jnp.asarray(theta), weights)
    np.testing.assert_allclose(np.asarray(combined).imag, 0.0, atol=1e-8)
    np.testing.assert_allclose(np.asarray(combined).real, theta[0], rtol=1e-6, atol=1e-6)


def test_tls_dmd_is_exact_dmd_on_clean_data_and_less_biased_under_noise():
    theta, lam_true = damped_rotation(n=400, steps=40, radius=0.95, omega=0.4)
    k = koopman.gram(jnp.asarray(theta))
    for tls in (False, True):
        fit = koopman.fit_dmd(k, rcond=0.03, tls=tls)
        lam = np.asarray(fit.eigenvalues)[np.asarray(fit.valid)]
        assert int(fit.rank) == 3
        np.testing.assert_allclose(np.sort_complex(lam[1:]), np.sort_complex(lam_true), atol=1e-8)
    # Measurement noise (std 0.1 per entry, 10 draws): exact DMD's eigenvalues
    # are biased towards 0, TLS's far less.
    rng = np.random.default_rng(0)
    errors = {False: [], True: []}
    for _ in range(10):
        k = koopman.gram(jnp.asarray(theta + 0.1 * rng.normal(size=theta.shape)))
        for tls in (False, True):
            fit = koopman.fit_dmd(k, rcond=0.03, tls=tls)
            lam = np.asarray(fit.eigenvalues)[np.asarray(fit.valid)]
            assert int(fit.rank) == 3
            errors[tls].append(np.max(np.min(np.abs(lam[:, None] - lam_true[None, :]), axis=0)))
    assert np.mean(errors[True]) < 0.5 * np.mean(errors[False]), errors


def test_the_fit_carries_its_mode_residuals():
    rng = np.random.default_rng(5)
    theta = rng.normal(size=(9, 40))
    k = koopman.gram(jnp.asarray(theta))
    fit = koopman.fit_dmd(k, rcond=0.0)
    np.testing.assert_array_equal(np.asarray(fit.residuals), np.asarray(koopman.mode_residuals(k, fit)))
    batched = koopman.fit_dmd_batched(jnp.stack([k, k]), rcond=0.0)
    np.testing.assert_allclose(np.asarray(batched.residuals[1]), np.asarray(fit.residuals), rtol=1e-9)


def test_sliding_windows_equal_independent_fits_of_the_slices():
    oracle = quadratic_gd(steps=40)
    theta = jnp.asarray(oracle.snapshots)
    k = np.asarray(koopman.gram(theta))
    starts, fits = koopman.sliding_window_fits(k, window=12, stride=7)
    assert starts == [0, 7, 14, 21, 28]
    modes = np.asarray(koopman.sliding_fixed_point_modes(theta, starts, fits))
    assert modes.shape == (theta.shape[1], len(starts))
    for j, s in enumerate(starts):
        # A window's Gram is the slice's Gram up to the summation order of the
        # BLAS kernel (which depends on the matrix's size); the fit of the
        # slice's noise directions amplifies that 1e-16 to ~1e-7, so the
        # window is compared with the fit of the same block.
        block = k[s : s + 13, s : s + 13]
        np.testing.assert_allclose(np.asarray(koopman.gram(theta[s : s + 13])), block, rtol=1e-14)
        alone = koopman.fit_dmd(block)
        np.testing.assert_allclose(np.asarray(fits.eigenvalues[j]), np.asarray(alone.eigenvalues),
                                   rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(np.asarray(fits.valid[j]), np.asarray(alone.valid))
        np.testing.assert_allclose(modes[:, j], np.asarray(koopman.fixed_point_mode(theta[s : s + 13], alone)),
                                   rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(modes[:, 0].real, oracle.theta_star, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="needs 42 snapshots"):
        koopman.window_starts(41, 41, 1)


@pytest.mark.parametrize("bandwidth,block", [(2, 5), (12, 7), (13, 64), (40, 3)])
def test_banded_gram_is_the_band_of_the_gram(bandwidth, block):
    theta = np.random.default_rng(0).normal(size=(41, 30)).astype(np.float32)
    full = np.asarray(koopman.gram(jnp.asarray(theta)))
    band = koopman.banded_gram(theta, bandwidth, block_size=block)
    i, j = np.indices(full.shape)
    inside = np.abs(i - j) <= bandwidth
    np.testing.assert_allclose(band[inside], full[inside], rtol=1e-12)
    assert np.all(band[~inside] == 0)
    # Sliding windows read only the band: their fits are the full Gram's.
    starts, fits = koopman.sliding_window_fits(band, window=min(bandwidth, 12), stride=5)
    _, ref = koopman.sliding_window_fits(full, window=min(bandwidth, 12), stride=5)
    np.testing.assert_allclose(np.asarray(fits.eigenvalues), np.asarray(ref.eigenvalues), rtol=1e-8, atol=1e-12)
    theta[7, 3] = np.nan
    with pytest.raises(ValueError, match=r"NaN or Inf \(in snapshot rows \[7\]"):
        koopman.banded_gram(theta, bandwidth)


def test_a_jump_on_linear_dynamics_lands_on_the_trajectory():
    oracle = quadratic_gd(steps=60)
    seen = jnp.asarray(oracle.snapshots[:21])  # fit on the first 20 steps
    fit = koopman.fit_trajectory(seen)
    for tau in (1, 10, 40):
        np.testing.assert_allclose(np.asarray(koopman.jump(seen, fit, tau)),
                                   oracle.snapshots[20 + tau], rtol=1e-5, atol=1e-6)


def test_an_increment_jump_keeps_only_the_decaying_modes_drift():
    # Stable linear dynamics: the same landing point as the full jump.
    oracle = quadratic_gd(steps=60)
    seen = jnp.asarray(oracle.snapshots[:21])
    fit = koopman.fit_trajectory(seen)
    for tau in (1, 10, 40):
        np.testing.assert_allclose(np.asarray(koopman.jump_increment(seen, fit, tau)),
                                   oracle.snapshots[20 + tau], rtol=1e-5, atol=1e-6)
    # θ(t) = θ* + Σ a_i μ_i^t v_i with one growing mode (μ = 1.05): the
    # increment jump moves the decaying ones by their drift and leaves the
    # growing one where θ(T) has it; the full jump extrapolates it.
    rng = np.random.default_rng(3)
    v, _ = np.linalg.qr(rng.normal(size=(50, 3)))
    theta_star, a, mu = rng.normal(size=50), np.array([2.0, -1.5, 0.7]), np.array([0.9, 0.5, 1.05])
    traj = np.stack([theta_star + v @ (a * mu**t) for t in range(21)])
    fit = koopman.fit_trajectory(jnp.asarray(traj))
    tau = 15
    expected = theta_star + v @ (a * np.array([0.9**35, 0.5**35, 1.05**20]))
    np.testing.assert_allclose(np.asarray(koopman.jump_increment(jnp.asarray(traj), fit, tau)),
                               expected, rtol=1e-5, atol=1e-6)
    full = theta_star + v @ (a * mu**35)
    np.testing.assert_allclose(np.asarray(koopman.jump(jnp.asarray(traj), fit, tau)), full,
                               rtol=1e-5, atol=1e-6)
    assert np.abs(expected - full).max() > 0.1  # the two jumps differ here
