"""The wheel: built from pyproject.toml, it holds every package of lrcert/ (setuptools finds them:
a new stage cannot be forgotten), and installed in a fresh environment it runs ``lrcert
--version`` and certifies a shipped model."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import lrcert

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_holds_every_package_and_runs_in_a_fresh_environment(tmp_path):
    source = tmp_path / "source"  # (a copy: no build/ left by an earlier build can supply a package)
    shutil.copytree(ROOT / "lrcert", source / "lrcert", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(tmp_path / "dist")], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("lrcert-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "lrcert").rglob("__init__.py")}
    assert packages and all(f"{package}/__init__.py" in names for package in packages), packages
    env = tmp_path / "env"  # fresh: lrcert only from the wheel (its dependencies from this interpreter's)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(env)], check=True)
    python = env / "bin" / "python"
    installed = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                               capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr[-2000:]
    where = subprocess.run([str(python), "-c", "import lrcert; print(lrcert.__file__)"], capture_output=True, text=True,
                           cwd=tmp_path)
    assert str(env) in where.stdout, where.stdout + where.stderr  # (not this checkout)
    version = subprocess.run([str(env / "bin" / "lrcert"), "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert version.returncode == 0 and lrcert.__version__ in version.stdout, version.stdout + version.stderr
    certified = subprocess.run([str(env / "bin" / "lrcert"), "certify", str(ROOT / "models" / "moons_mlp.onnx"),
                                str(ROOT / "models" / "moons_mlp.inputs.npy"), "-f", "jsonl"],
                               capture_output=True, text=True, cwd=tmp_path)
    rows = len(np.load(ROOT / "models" / "moons_mlp.inputs.npy"))
    assert certified.returncode == 0 and certified.stdout.count("\n") == rows, certified.stderr[-2000:]
