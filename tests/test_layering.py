"""The import rules of BUILD_NOTES' layout section, checked on the source.

Parsed with `ast`, not by importing: a rule holds for every import statement
in the file, including ones inside functions.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KPJAX = sorted((ROOT / "kpjax").rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def kpjax_module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


@pytest.mark.parametrize("path", KPJAX, ids=kpjax_module)
def test_the_library_never_imports_experiments_or_benchmarks(path):
    bad = {m for m in imported_modules(path) if m.split(".")[0] in ("experiments", "benchmarks")}
    assert not bad, f"{kpjax_module(path)} imports {sorted(bad)}"


@pytest.mark.parametrize("module, forbidden", [
    ("kpjax/trajectory_store.py", ("kpjax.train", "kpjax.recording", "optax", "flax")),
    ("kpjax/torch_import.py", ("kpjax.models", "flax")),
    ("kpjax/flatten.py", ("kpjax.",)),
    ("kpjax/koopman.py", ("kpjax.train", "kpjax.pruning", "flax", "optax")),
    ("kpjax/pruning.py", ("kpjax.train", "kpjax.models", "flax")),
])
def test_one_concern_per_module(module, forbidden):
    imports = imported_modules(ROOT / module)
    bad = {m for m in imports for f in forbidden if m == f or m.startswith(f)}
    # `from kpjax import x` shows up as "kpjax.x" too.
    assert not bad, f"{module} imports {sorted(bad)}"


def test_the_rules_see_imports():
    # The parser finds both import forms, so an empty result above means something.
    imports = imported_modules(ROOT / "kpjax" / "recording.py")
    assert "kpjax.trajectory_store" in imports and "jax" in imports


STDLIB = {"__future__", "abc", "ast", "collections", "concurrent", "contextlib", "csv", "dataclasses",
          "errno", "fcntl", "glob", "platform", "resource", "socket", "subprocess",
          "functools", "gzip", "hashlib", "importlib", "io", "itertools", "json", "logging", "math",
          "os", "pathlib", "pickle", "pickletools", "queue", "re", "shutil", "stat", "struct", "sys", "tarfile",
          "tempfile", "threading", "time", "types", "typing", "urllib", "warnings", "zipfile", "zlib"}
DOCUMENTED = sorted((ROOT / "kpjax").rglob("*.py")) + sorted((ROOT / "experiments").glob("*.py"))


@pytest.mark.parametrize("path", [p for p in DOCUMENTED if p.name != "__init__.py" or p.parent.name == "models"],
                         ids=kpjax_module)
def test_each_module_docstring_says_what_it_may_import(path):
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    paragraphs = [" ".join(p.split()) for p in doc.split("\n\n")]
    line = [p for p in paragraphs if p.startswith("May import:")]
    assert line, f"{kpjax_module(path)}: no 'May import:' paragraph in the docstring"
    declared = line[0].removeprefix("May import:").strip().rstrip(".")
    allowed = {w.strip().split(" ")[0] for w in declared.split(",")}
    for module in imported_modules(path):
        top = module.split(".")[0]
        if top in STDLIB or module in ("kpjax", "experiments"):  # package roots: `from kpjax import x`
            continue
        assert any(module == a or module.startswith(a + ".") for a in allowed), (
            f"{kpjax_module(path)} imports {module}, its docstring allows {sorted(allowed)}")
