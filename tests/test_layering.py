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


# Each concept's rule, for every module of its subpackage (or the one file):
# (glob under the repository root, imports forbidden there, files exempted).
RULES = [
    # The flat layout is the base everything shares: it imports nothing of kpjax.
    ("kpjax/flatten.py", ("kpjax.",), ()),
    # The fit works on arrays: no model, training, pruning or Flax/optax.
    ("kpjax/koopman/*.py", ("kpjax.train", "kpjax.pruning", "kpjax.models", "kpjax.data", "flax", "optax"), ()),
    # Scores and masks need no model library or training; structured pruning
    # alone knows the model families' unit groups.
    ("kpjax/pruning/*.py", ("kpjax.train", "kpjax.models", "kpjax.data", "flax"), ("structured.py",)),
    # Data knows nothing of models, training or pruning.
    ("kpjax/data/*.py", ("kpjax.models", "kpjax.train", "kpjax.pruning", "kpjax.koopman", "flax", "optax"), ()),
    # Training takes an apply function (or a `kpjax.flax_model.Model`) and a mask:
    # no model registry, no dataset, no Flax.
    ("kpjax/train/*.py", ("kpjax.models", "kpjax.data", "flax"), ()),
    # File formats import no training; the PyTorch importer knows no model registry.
    ("kpjax/io/*.py", ("kpjax.train", "kpjax.models", "kpjax.pruning", "kpjax.data", "flax", "optax"), ()),
    # The model zoo knows nothing of what is done with its models.
    ("kpjax/models/*.py", ("kpjax.train", "kpjax.pruning", "kpjax.koopman", "kpjax.data", "optax"), ()),
]
RULED = [(path, forbidden) for pattern, forbidden, exempt in RULES
         for path in sorted(ROOT.glob(pattern)) if path.name not in exempt]


def test_every_subpackage_has_a_rule():
    packages = {p.parent for p in KPJAX if p.parent != ROOT / "kpjax"}
    ruled = {ROOT / pattern.rsplit("/", 1)[0] for pattern, _, _ in RULES if "*" in pattern}
    assert packages <= ruled, f"subpackages without a layering rule: {sorted(map(str, packages - ruled))}"


@pytest.mark.parametrize("path, forbidden", RULED, ids=[kpjax_module(p) for p, _ in RULED])
def test_one_concern_per_module(path, forbidden):
    imports = imported_modules(path)
    bad = {m for m in imports for f in forbidden if m == f or m.startswith(f if f.endswith(".") else f + ".")
           or (f.endswith(".") and m.startswith(f))}
    # `from kpjax import x` shows up as "kpjax.x" too.
    assert not bad, f"{kpjax_module(path)} imports {sorted(bad)}"


def test_the_rules_see_imports():
    # The parser finds both import forms, so an empty result above means something.
    imports = imported_modules(ROOT / "kpjax" / "train" / "recording.py")
    assert "kpjax.io.trajectory_store" in imports and "jax" in imports


STDLIB = {"__future__", "abc", "ast", "inspect", "collections", "concurrent", "contextlib", "csv", "dataclasses",
          "errno", "fcntl", "glob", "platform", "resource", "socket", "subprocess",
          "functools", "gzip", "hashlib", "importlib", "io", "itertools", "json", "logging", "math",
          "os", "pathlib", "pickle", "pickletools", "queue", "re", "shutil", "signal", "stat", "struct", "sys", "tarfile",
          "tempfile", "threading", "time", "types", "typing", "urllib", "warnings", "zipfile", "zlib"}
DOCUMENTED = sorted((ROOT / "kpjax").rglob("*.py")) + sorted((ROOT / "experiments").glob("*.py"))


@pytest.mark.parametrize("path", DOCUMENTED,
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
        # A package root stands for `from package import x`, whose x is checked on its own.
        if top in STDLIB or (ROOT / module.replace(".", "/") / "__init__.py").exists():
            continue
        assert any(module == a or module.startswith(a + ".") for a in allowed), (
            f"{kpjax_module(path)} imports {module}, its docstring allows {sorted(allowed)}")
