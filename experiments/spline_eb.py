r"""The spline early-bird ticket of a run (You, Balestriero et al., TMLR 2022)
beside the mask-distance one: `kpjax.spline` on the states a study already has.

The canvas is the authors': n² inputs α·x₀ + β·x₁ (α, β on an n × n grid over
[0, 1]) from test image 4690 and the first test image of class 1 of another
class, normalized as the model's inputs. The pre-activations are the BatchNorm
outputs (conv-BN-ReLU units) of models with BatchNorm, else the outputs of the
conv and dense layers but the classifier; the network runs in inference mode.

May import: flax, jax, numpy, experiments, kpjax.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np

from experiments import pipeline
from experiments.results import markdown_table
from kpjax import models, spline

SENSITIVITY = (0.1, 0.05, 0.03)  # smaller thresholds the summary also reads the ticket at


def canvas(setup: pipeline.Setup, n: int) -> jax.Array:
    """The n² canvas inputs of the run's test set, normalized."""
    labels = np.asarray(setup.dataset.test_labels)
    first = 4690 if len(labels) > 4690 else 0  # the authors' image where the test set has it
    i, j = spline.canvas_pair(labels, first=first)
    images = setup.normalize(np.asarray(setup.dataset.test_images[np.array([i, j])]))
    return spline.canvas(images[0], images[1], n)


def preactivations_fn(setup: pipeline.Setup):
    """jit((variables, x) ↦ {layer: pre-activations}) for the run's model."""
    module, classifier = setup.spec.module, setup.spec.classifier
    has_bn = "batch_stats" in models.variable_shapes(setup.spec)

    def picked(m, method):
        if method != "__call__":
            return False
        if has_bn:
            return isinstance(m, nn.BatchNorm)
        return isinstance(m, (nn.Conv, nn.Dense)) and m.name != classifier

    return jax.jit(lambda variables, x: spline.linen_preactivations(
        module, variables, x, is_preactivation=picked, train=False))


def distance_rows(setup: pipeline.Setup, seed: int, epochs: list[int], states: list, n: int) -> list[dict]:
    """One row per pair of epochs (a < b) of the layer-averaged code distance
    between the states after them."""
    d = spline.code_distance_matrix_of(preactivations_fn(setup), states, canvas(setup, n))
    return [{"model": setup.spec.name, "seed": seed, "epoch": epochs[b], "other_epoch": epochs[a],
             "distance": float(d[a, b])} for b in range(len(epochs)) for a in range(b)]


def matrix(rows, seed: int, epochs: list[int]) -> np.ndarray:
    """The epoch × epoch distance matrix of one seed's rows (NaN where absent)."""
    index = {e: i for i, e in enumerate(epochs)}
    d = np.full((len(epochs), len(epochs)), np.nan)
    np.fill_diagonal(d, 0.0)
    for r in rows:
        if r["seed"] == seed and r["epoch"] in index and r["other_epoch"] in index:
            d[index[r["epoch"]], index[r["other_epoch"]]] = d[index[r["other_epoch"]], index[r["epoch"]]] = \
                r["distance"]
    return d


def section(setup: pipeline.Setup, epochs: list[int], rows) -> list[str]:
    """The summary's spline early-bird section: each seed's epoch and the
    distances between consecutive states."""
    config = setup.config
    if not rows:
        return []
    thresholds = [config.spline_threshold] + [x for x in SENSITIVITY if x < config.spline_threshold]
    body, drawn = [], []
    for seed in setup.seeds:
        d = matrix(rows, seed, epochs)
        if np.isnan(d).any():
            continue
        ts = [spline.spline_early_bird_epoch(d, config.spline_lookback, x) for x in thresholds]
        drawn.append([seed] + [f"epoch {epochs[t]}" if t is not None else "not drawn" for t in ts])
        body.append([seed] + [f"{d[i, i - 1]:.4f}" for i in range(1, len(epochs))])
    return ["## Spline early-bird tickets", "",
            f"Layer-averaged fraction of differing region-code bits 1[z > 0] (You et al. 2022) between "
            f"the states at the ends of consecutive windows, on the {config.spline_canvas}² canvas of two "
            f"test images; pre-activations: BatchNorm outputs (else conv/dense outputs but the "
            f"classifier), inference mode. A ticket is drawn at the first window whose distances to each "
            f"of the last {config.spline_lookback} are all below {config.spline_threshold:g} (the "
            "authors' detector compares consecutive epochs; with windows at sparse epochs the distances "
            "span several). The full epoch × epoch map: spline_distance.csv, fig_spline_distance.png.", "",
            markdown_table(["seed"] + [f"{epochs[i - 1]}→{epochs[i]}" for i in range(1, len(epochs))], body),
            "", f"The spline early-bird epoch at the threshold τ = {config.spline_threshold:g} and, for the "
            "sensitivity, at smaller ones (the authors tuned τ on CIFAR networks):", "",
            markdown_table(["seed"] + [f"τ = {x:g}" for x in thresholds], drawn), ""]
