"""The benchmarks' shared workloads, without flags (so that one process may
import them beside any benchmark's flags): the synthetic trajectory of the
fit benchmarks, the KMP mask of a mode, kpjax's training throughput.
"""

from __future__ import annotations

import time

import numpy as np


def make_trajectory(n: int, steps: int, seed: int) -> np.ndarray:
    """Θ, (steps+1, n) float32: a noisy walk converging to θ*."""
    rng = np.random.default_rng(seed)
    theta_star = rng.standard_normal(n).astype(np.float32) * 0.1
    theta = np.empty((steps + 1, n), np.float32)
    theta[0] = theta_star + rng.standard_normal(n).astype(np.float32) * 0.05
    alpha, s, rho = 0.02, 2e-3, 0.995
    for t in range(steps):
        noise = rng.standard_normal(n).astype(np.float32)
        theta[t + 1] = theta[t] + alpha * (theta_star - theta[t]) + s * rho**t * noise
    return theta


def kmp_mask(mode: np.ndarray, compression: float) -> np.ndarray:
    import jax.numpy as jnp

    from kpjax import pruning

    scores = {"w": jnp.asarray(np.abs(mode), jnp.float32)}
    f = pruning.keep_fraction(compression, mode.size, mode.size)
    return np.asarray(pruning.global_mask(scores, {"w": True}, f)["w"])


def kpjax_throughput(model: str, batch_size: int, steps: int, warmup: int) -> dict:
    """Images/s of `steps` kpjax training steps of `model` after `warmup`
    untimed ones, on JAX's default device."""
    import jax
    import numpy as np

    from kpjax import models, train

    spec = models.get_model(model)
    variables = spec.module.init(
        jax.random.PRNGKey(0), np.zeros((1, *spec.input_shape), np.float32),
        train=False)
    tx = train.make_optimizer(0.01, momentum=0.9, nesterov=False)
    step = train.make_train_step(spec.module.apply, tx)
    state = train.create_train_state(
        variables["params"], tx, jax.random.PRNGKey(0),
        batch_stats=variables.get("batch_stats"))
    rng = np.random.default_rng(0)
    n = warmup + steps
    images = [jax.device_put(rng.standard_normal(
        (batch_size, *spec.input_shape), np.float32)) for _ in range(n)]
    labels = [jax.device_put(rng.integers(0, 10, batch_size, np.int32))
              for _ in range(n)]
    for i in range(n):
        if i == warmup:
            jax.block_until_ready(state)
            start = time.perf_counter()
        state, metrics = step(state, images[i], labels[i])
    jax.block_until_ready((state, metrics))
    elapsed = time.perf_counter() - start
    return {"images_per_s": steps * batch_size / elapsed, "jax": jax.__version__,
            "device": jax.devices()[0].device_kind}
