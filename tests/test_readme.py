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
    # The evaluation dict of the pruned network: 10,000 test images.
    assert "'top1'" in printed and "'n': 10000" in printed
