"""What a CI job or a shell pipeline pays on every call: whole-process times of lrcert's commands,
beside ``python -c pass`` and ``python -c "import torch"`` in the same run; certify and inspect
of a model both the first time (an empty cache of converted networks) and the second.

    python3 benchmarks/startup.py                     # median of 5 runs each
    python3 benchmarks/startup.py --json startup.json --before /tmp/lrcert-old   # and another checkout's

Each command runs as its own process (``sys.executable -m lrcert.cli``, what the ``lrcert``
script runs), one after another, so every figure sees the same machine state; with ``--before``
the same commands of another checkout (an earlier revision) run beside them. Also, from
``python -X importtime``, the modules ``lrcert --version`` imports that take longest.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def seconds(command: list[str], repeats: int, root: Path = ROOT, cache: Path | None = None) -> float:
    """Median wall time of ``command`` run in checkout ``root`` over ``repeats`` runs (after one
    unmeasured run), with lrcert's cache of converted networks in ``cache`` (the second time a model
    is certified), or, where None, in a new empty folder for every run (the first time)."""
    times = []
    for k in range(repeats + 1):
        with tempfile.TemporaryDirectory() as empty:
            env = {**os.environ, "PYTHONPATH": str(root), "LRCERT_CACHE_DIR": str(cache or empty)}
            started = time.perf_counter()
            subprocess.run(command, cwd=root, capture_output=True, check=False, env=env)
            if k:
                times.append(time.perf_counter() - started)
    return statistics.median(times)


def slowest_imports(command: list[str], count: int = 5) -> list[tuple[str, float]]:
    """The modules with the largest cumulative import time under ``python -X importtime``."""
    out = subprocess.run([sys.executable, "-X", "importtime", *command[1:]], cwd=ROOT, capture_output=True, text=True)
    rows = []
    for line in out.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.split("|")
            try:
                rows.append((name.strip(), int(cumulative) / 1e6))
            except ValueError:
                continue
    return sorted(rows, key=lambda row: -row[1])[:count]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--before", type=Path, help="another checkout of lrcert, timed beside this one")
    args = parser.parse_args(argv)
    lrcert = [sys.executable, "-m", "lrcert.cli"]
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "run.json"
        subprocess.run([*lrcert, "certify", "models/moons_mlp.onnx", "models/moons_mlp.inputs.npy", "-f", "json",
                        "-o", str(result)], cwd=ROOT, capture_output=True, check=True)
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            'python -c "import torch"': [sys.executable, "-c", "import torch"],
            "lrcert --version": [*lrcert, "--version"],
            "lrcert --help": [*lrcert, "--help"],
            "lrcert certify --help": [*lrcert, "certify", "--help"],
            "lrcert compare RUN RUN": [*lrcert, "compare", str(result), str(result)],
            "lrcert inspect moons_mlp.onnx": [*lrcert, "inspect", "models/moons_mlp.onnx"],
            "lrcert certify moons_mlp (16 inputs)": [*lrcert, "certify", "models/moons_mlp.onnx",
                                                      "models/moons_mlp.inputs.npy", "-f", "json"],
        }
        commands["lrcert certify moons_mlp, first time"] = commands["lrcert certify moons_mlp (16 inputs)"]
        commands["lrcert inspect moons_mlp.onnx, first time"] = commands["lrcert inspect moons_mlp.onnx"]
        cache = Path(folder) / "cache"  # (warmed by each command's unmeasured run: the second time)

        def timed(name: str, command: list[str], root: Path = ROOT) -> float:
            return seconds(command, args.repeats, root, None if name.endswith("first time") else cache)

        figures = {name: timed(name, command) for name, command in commands.items()}
        before = {name: timed(name, command, args.before) for name, command in commands.items()
                  if name.startswith("lrcert") and args.before}
    for name, value in figures.items():
        print(f"{name:40s} {value:6.2f} s" + (f"   (before: {before[name]:.2f} s)" if name in before else ""))
    imports = slowest_imports([*lrcert, "--version"])
    print("lrcert --version, slowest imports (cumulative): " + ", ".join(f"{n} {s:.3f} s" for n, s in imports))
    if args.json:
        args.json.write_text(json.dumps({"python": sys.version.split()[0], "repeats": args.repeats,
                                         "seconds": figures, "before": before, "version_imports": imports}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
