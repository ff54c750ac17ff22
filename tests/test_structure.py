"""The package's stages import only downward: each subpackage only from the stages below it (or its
own modules), as README's "How the code is laid out" draws them; the public API stays lazy."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lrcert"
#: Each stage and the stages it may import (errors: everyone's).
MAY_IMPORT = {
    "errors": set(),
    "runtime": {"errors"},
    "network": {"runtime", "errors"},
    "data": {"runtime", "errors"},
    "models": {"network", "runtime", "errors"},
    "engine": {"network", "data", "runtime", "errors"},
    "run": {"engine", "models", "data", "network", "runtime", "errors"},
    "results": {"engine", "data", "network", "runtime", "errors"},
    "training": {"engine", "models", "data", "network", "runtime", "errors"},
    "stability": {"engine", "models", "data", "network", "runtime", "errors"},
    "ci": {"run", "results", "stability", "engine", "models", "data", "network", "runtime", "errors"},
    "cli": {"ci", "training", "stability", "run", "results", "engine", "models", "data", "network", "runtime", "errors"},
}


def _stage(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imported_stages(path: Path) -> set[str]:
    """The stages a module imports (relative imports resolved), wherever the import sits."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    package = list(parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = [*base, *(node.module.split(".") if node.module else [])]
            names = [target] if target else [[alias.name] for alias in node.names]
            found.update(t[0] for t in names if t)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            found.update(m.split(".")[1] for m in modules if m and m.startswith("lrcert.") and m.count(".") >= 1)
    return found - {"__version__"}


def test_every_stage_imports_only_downward():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent == PACKAGE:
            continue  # (lrcert/__init__.py, the lazy public API, and errors.py)
        stage = _stage(path)
        for other in _imported_stages(path) - {stage}:
            if other not in MAY_IMPORT[stage]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {other}")
    assert not wrong, wrong


def test_every_stage_is_a_package_that_says_what_it_holds():
    stages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert stages == set(MAY_IMPORT) - {"errors"}
    for stage in stages:
        doc = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text()))
        assert doc and "May import" in doc, stage
    assert {p.stem for p in PACKAGE.glob("*.py")} == {"__init__", "__main__", "errors"}


def test_importing_lrcert_imports_no_torch():
    code = "import sys, lrcert; lrcert.__version__; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_the_flat_layouts_module_names_still_reach_the_modules():
    """Tools and probes written against the flat layout (``from lrcert import regions``, ``from
    lrcert.load import from_module``) get the very modules, and ``lrcert.load`` stays the function."""
    code = (
        "import sys, lrcert\n"
        "from lrcert import regions\n"
        "from lrcert.load import from_module\n"
        "import lrcert.sources, lrcert.data.sources\n"
        "print(regions is sys.modules['lrcert.results.regions'],\n"
        "      regions.__spec__.name, lrcert.sources is lrcert.data.sources, callable(lrcert.load),\n"
        "      from_module is lrcert.from_module)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "lrcert.results.regions", "True", "True", "True"], done.stdout
