"""The Koopman / DMD fit of a weight trajectory Θ = [θ_0 … θ_T] ((T+1, N)).

  K = ΘΘᵀ (float64, blocked)             `gram`, `banded_gram` (blocked.py)
  exact DMD from K: λ_i, φ_i = Θᵀc_i, b_i  `fit_dmd`, `fit_trajectory` (dmd.py)
  the fixed point b₁φ₁, predictions      `fixed_point_mode`, `predict`, `predicted_step` (modes.py)
  sliding windows, jumps                 `sliding_window_fits`, `jump` (windows.py)

Submodules with their own concern: `kpjax.koopman.sharded` (the fit with
Θ's columns on a device mesh) and `kpjax.koopman.dynamics` (comparing runs
by their Koopman spectra).

May import: kpjax.koopman.
"""

from kpjax.koopman.dmd import (DEFAULT_RCOND, DMDFit, fit_dmd, fit_dmd_batched,
                               fit_trajectory, mode_residuals)
from kpjax.koopman.blocked import (DEFAULT_BLOCK_SIZE, MIN_SNAPSHOTS, banded_gram, block_size_for_budget,
                                combine_snapshots, gram, segment_grams)
from kpjax.koopman.modes import (DEFAULT_CLUSTER_TOL, energy_kept, fixed_point_cluster,
                                 fixed_point_index, fixed_point_mode, fixed_point_separation,
                                 fixed_point_subspace, modes, predict, predicted_step)
from kpjax.koopman.windows import (jump, jump_increment, sliding_fixed_point_modes,
                                   sliding_window_fits, window_starts)

__all__ = [
    "DEFAULT_BLOCK_SIZE", "DEFAULT_CLUSTER_TOL", "DEFAULT_RCOND", "DMDFit", "MIN_SNAPSHOTS",
    "banded_gram", "block_size_for_budget", "combine_snapshots", "energy_kept",
    "fit_dmd", "fit_dmd_batched", "fit_trajectory", "fixed_point_cluster", "fixed_point_index",
    "fixed_point_mode", "fixed_point_separation", "fixed_point_subspace", "gram", "jump",
    "jump_increment", "mode_residuals", "modes", "predict", "predicted_step", "segment_grams",
    "sliding_fixed_point_modes", "sliding_window_fits", "window_starts",
]
