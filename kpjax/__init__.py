"""kpjax: Koopman-operator pruning of neural networks in JAX.

Pure functions on parameter pytrees, for any Flax model (Linen or NNX,
`from_linen` / `from_nnx`) and the user's own loss. Training is a dynamical system on the
weights θ; a Koopman / DMD fit of the recorded trajectory Θ = [θ_0 … θ_T]
gives Koopman magnitude pruning (KMP: |b₁φ₁|, the mode with λ₁ closest to 1)
and Koopman gradient pruning (KGP: |θ ⊙ Δθ_K|), beside the baselines (GMP,
gradient, random) and the saliency methods (SNIP, GraSP, SynFlow, ...):

    model = kpjax.from_linen(module, variables)          # or kpjax.from_nnx(nnx_module)
    rec = kpjax.record(model, optax.sgd(0.05), batches, T, rng=key)  # Θ: (T+1, N), its FlatSpec
    fit = kpjax.fit_trajectory(rec.theta)                # exact DMD from K = ΘΘᵀ (float64)
    inputs = kpjax.PruneInputs(rec.params, kpjax.prunable(rec.params),
                               snapshots=rec.theta, spec=rec.spec, fit=fit)
    mask = kpjax.prune("kmp", inputs, compression=8.0)   # bool pytree like params
    tx = kpjax.freeze_pruned(optax.adam(1e-3), mask)     # pruned weights stay exactly 0

The concepts live in subpackages, each with its own face: `kpjax.koopman`
(the fit), `kpjax.pruning` (scores, masks, methods), `kpjax.train` (state,
steps, loop, recording), `kpjax.models` (MnistNet, CIFAR ResNets),
`kpjax.data` (datasets, batches), `kpjax.io` (checkpoints, trajectory
files, PyTorch import); `kpjax.flatten` (θ ∈ R^N), `kpjax.flax_model` (any
Flax module as a function), `kpjax.metrics` (sizes, FLOPs), `kpjax.spline` (region codes and the
spline early-bird ticket) and `kpjax.parallel` (device meshes) stand alone.

Names resolve on first use (PEP 562 `__getattr__`): `from kpjax import
koopman` imports the fit alone (JAX and NumPy), not Flax, optax and the
data pipeline: a fresh process's first fit pays for what it uses
(benchmarks/koopman_fit.py counts the import).

May import: kpjax.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBPACKAGES = ("data", "flatten", "flax_model", "io", "koopman", "metrics", "models", "parallel",
               "pruning", "spline", "train")

# Each public name, grouped, and the module that defines it.
_NAMES = {
    # any Flax model (Linen or NNX) as f(θ, s, x) ↦ (y, s′); its masked training and Θ
    "kpjax.flax_model": ("Model", "from_linen", "from_nnx", "to_nnx", "update_nnx"),
    "kpjax.train.any_model": ("Carry", "Recording", "cross_entropy_loss", "init_carry", "inputs_of",
                              "make_step", "record", "targets_of"),
    # θ ∈ R^N
    "kpjax.flatten": ("FlatSpec", "count_params", "flat_spec", "ravel_selected", "unravel_selected"),
    # recording and fitting
    "kpjax.train.recording": ("make_recording_train_step", "record_trajectory"),
    "kpjax.koopman": ("DEFAULT_RCOND", "DMDFit", "fit_dmd", "fit_trajectory", "fixed_point_mode",
                      "gram", "predicted_step"),
    # scoring and masking
    "kpjax.pruning": ("METHODS", "PruneInputs", "PruningMethod", "get_method", "keep_fraction",
                      "prunable", "prune", "register_method", "apply_mask", "compression_ratio",
                      "freeze_pruned", "mask_jaccard"),
    # training
    "kpjax.models": ("ModelSpec", "get_model"),
    "kpjax.train": ("TrainState", "create_train_state", "evaluate", "make_eval_step", "make_optimizer",
                    "make_train_step"),
}
_MODULE_OF = {name: module for module, names in _NAMES.items() for name in names}

__all__ = [*_SUBPACKAGES, *_MODULE_OF]


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"kpjax.{name}")
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(_MODULE_OF[name]), name)
        globals()[name] = value  # resolved once
        return value
    raise AttributeError(f"module 'kpjax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

