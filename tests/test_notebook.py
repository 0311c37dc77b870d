"""examples/koopman_pruning.ipynb runs top to bottom (so it cannot rot)."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook test needs the test extra (nbformat)")
nbclient = pytest.importorskip("nbclient", reason="the notebook test needs the test extra (nbclient)")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "koopman_pruning.ipynb"


def test_example_notebook_executes_and_keeps_pruned_weights_zero():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError, with the cell, on any failure
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.outputs if o.get("name") == "stdout")
    assert "Jaccard(KMP, GMP)" in printed
    assert "pruned weights all exactly zero: True" in printed
    assert any(o.output_type == "display_data" for c in nb.cells if c.cell_type == "code"
               for o in c.outputs)  # the spectrum figure
