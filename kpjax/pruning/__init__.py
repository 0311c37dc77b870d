"""Pruning: which parameters, scores, masks, the method registry, and masks
as an optax transformation.

  prunable(params)                        ShrinkBench's prunable set (select.py)
  keep_fraction, global/layerwise masks   from scores to masks (masks.py)
  apply_mask, compression_ratio           θ ⊙ m and total / nonzero (masks.py)
  freeze_pruned(tx, mask)                 any optax optimizer, pruned weights kept at 0 (optimizer.py)
  PruneInputs, get_method, prune          the registry and the one path to a mask (methods.py)

The methods, each registered in its family's module: `baselines` (GMP,
layerwise magnitude, L1, gradient, random), `koopman_scores` (KMP, subspace
KMP, KGP, layer KMP), `saliency` (SNIP/LP, biased LP, GN, GraSP, SynFlow),
`slimming` (network slimming's |γ|). `structured` prunes whole filters and neurons; `coreset` samples
a dense layer's neurons; `flow` measures what a mask does to the gradient flow (Lubana & Dick); `ellipsoid`
is the Löwner ellipsoid of a layer's neurons (Tukan et al.'s data-free coreset starts there).

During training: `schedules` (one-shot, Zhu & Gupta's gradual polynomial,
IMP with rewinding), `gradual` (any method's nested mask at a schedule
point, the rewind), `nm` (N:M semi-structured masks), `dynamic` (SET and
RigL at a fixed sparsity), `reset_moments` (optimizer moments of grown
weights); `export` saves a pruned model (orbax + a JSON sparsity report,
BCOO leaves).

May import: kpjax.pruning.
"""

from kpjax.pruning import baselines, koopman_scores, saliency, slimming  # registers every method
from kpjax.pruning import dynamic, export, gradual, nm, schedules
from kpjax.pruning.flow import FlowMeasures, flow_measures
from kpjax.pruning.baselines import gradient_scores, magnitude_scores, random_scores
from kpjax.pruning.koopman_scores import (kgp_flat_scores, kmp_flat_scores, kmp_subspace_flat_scores,
                                          layer_kmp_flat_scores)
from kpjax.pruning.masks import (apply_mask, check_keep_fraction, check_mask, compression_ratio,
                                 early_bird_index, global_flat_mask, global_mask, global_signed_flat_mask,
                                 keep_fraction, layerwise_flat_mask, mask_distance, mask_from_flat,
                                 mask_jaccard, scores_from_flat)
from kpjax.pruning.methods import (BATCH_INPUTS, METHODS, PruneInputs, PruningMethod, from_tree_scores, get_method,
                                   method_flat_mask, method_flat_scores, prune, register_method)
from kpjax.pruning.export import export_pruned, load_pruned, sparsity_report, to_bcoo
from kpjax.pruning.gradual import rewind, sparsity_mask, sparsity_of
from kpjax.pruning.nm import n_m_mask
from kpjax.pruning.optimizer import FreezePrunedState, freeze_pruned, reset_moments
from kpjax.pruning.schedules import SparsitySchedule
from kpjax.pruning.saliency import synflow_iterative_mask
from kpjax.pruning.select import prunable
from kpjax.pruning.slimming import bn_gamma_scores

__all__ = [
    "BATCH_INPUTS", "METHODS", "FreezePrunedState", "PruneInputs", "PruningMethod", "SparsitySchedule",
    "apply_mask", "baselines", "dynamic", "export", "export_pruned", "gradual", "load_pruned", "n_m_mask", "nm",
    "reset_moments", "rewind", "schedules", "sparsity_mask", "sparsity_of", "sparsity_report", "to_bcoo",
    "bn_gamma_scores", "check_keep_fraction", "check_mask", "compression_ratio", "early_bird_index",
    "freeze_pruned", "from_tree_scores",
    "get_method", "global_flat_mask", "global_mask", "global_signed_flat_mask", "gradient_scores",
    "keep_fraction", "kgp_flat_scores", "kmp_flat_scores", "kmp_subspace_flat_scores",
    "koopman_scores", "layer_kmp_flat_scores", "layerwise_flat_mask", "magnitude_scores",
    "mask_distance", "mask_from_flat", "mask_jaccard", "method_flat_mask", "method_flat_scores",
    "prunable", "prune", "random_scores", "register_method", "saliency", "scores_from_flat",
    "slimming", "synflow_iterative_mask",
]
