"""The README's Python example runs as written (so it cannot rot)."""

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_library_example_runs_verbatim():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python example"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for block in blocks:
            exec(compile(block, str(README), "exec"), {})
    printed = out.getvalue()
    match = re.search(r"KMP at c = 8: top-1 ([0-9.]+), compression ([0-9.]+)", printed)
    assert match, printed
    # Pruned weights stayed zero through fine-tuning: the compression holds.
    assert abs(float(match.group(2)) - 8.0) < 0.05 and float(match.group(1)) > 0.5
    # The exported model, reloaded, is the same model.
    assert re.search(r"reloaded: top-1 ([0-9.]+)", printed).group(1) == match.group(1)


def test_readme_and_notebook_use_only_the_public_face():
    import json
    notebook = Path(__file__).resolve().parents[1] / "examples" / "koopman_pruning.ipynb"
    code = "".join(re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S))
    code += "".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"]
                    if c["cell_type"] == "code")
    imports = re.findall(r"^\s*(?:from|import) (\S+)", code, flags=re.M)
    assert "kpjax" in imports
    imports = [m.rstrip(",") for m in imports]
    assert all(m.split(".")[0] in ("kpjax", "jax", "flax", "optax", "numpy", "matplotlib", "itertools", "tempfile")
               and not m.startswith("kpjax.") for m in imports), imports
