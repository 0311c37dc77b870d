"""experiments.plots: what the figures draw (the figure objects, before saving)."""

import pytest

from experiments import plots


@pytest.fixture
def saved(monkeypatch):
    """The figures the plot functions would write, by path."""
    figures = {}
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.__setitem__(path, fig))
    return figures


def _rows():
    out = []
    for seed, (dense, tuned) in enumerate([(0.86, 0.87), (0.88, 0.87)]):
        out += [dict(method="dense", compression=1.0, seed=seed, phase="dense", top1=dense),
                dict(method="dense", compression=1.0, seed=seed, phase="finetuned", top1=tuned)]
        for c, acc in ((2.0, 0.8), (4.0, 0.5)):
            for phase in ("pruned", "finetuned"):
                out.append(dict(method="kmp", compression=c, seed=seed, phase=phase,
                                top1=acc + 0.01 * seed))
    return out


def _references(ax):
    """{label: y} of the horizontal reference lines of one panel."""
    return {line.get_label(): line.get_ydata()[0] for line in ax.get_lines()
            if len(set(line.get_ydata())) == 1 and len(line.get_ydata()) == 2
            and not line.get_label().startswith("_")}


def test_accuracy_panels_draw_the_dense_references_and_the_window_start(saved):
    plots.accuracy_vs_compression(_rows(), "fig.png", "t", start=0.8103,
                                  start_label="unpruned θ(t₁), imported")
    pruned, refined = saved["fig.png"].axes
    assert _references(pruned) == pytest.approx({"unpruned θ(t₂)": 87.0,
                                                 "unpruned θ(t₁), imported": 81.03})
    # θ(t₁) belongs to the pruned panel only: refinement is compared with the
    # dense network fine-tuned for the same steps.
    assert _references(refined) == pytest.approx({"unpruned, fine-tuned alike": 87.0})


def test_accuracy_panels_without_a_start_draw_no_start_line(saved):
    plots.accuracy_vs_compression(_rows(), "fig.png", "t")
    assert set(_references(saved["fig.png"].axes[0])) == {"unpruned θ(t₂)"}
