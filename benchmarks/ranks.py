"""lrcert under torchrun: throughput with 1 and 2 ranks, and the distributed path's overhead.

    python3 benchmarks/ranks.py                    # a conv net (oval21_cifar_base_kw if ../shared/models has it)
    python3 benchmarks/ranks.py --inputs 512 --repeats 3 --json out.json

Each configuration is the real command, timed in a process of its own (median of --repeats):
the plain ``lrcert certify`` and ``torchrun --standalone --nproc-per-node=N -m lrcert certify``,
JSON lines to a file, float32. Reported: the certification loop's inputs/s (from lrcert's own
footer, so start-up is left out) and the whole command's wall time. Every process gets the same
OMP_NUM_THREADS (torchrun would otherwise set 1): 1 rank × 2 threads against the plain command
× 2 threads measures the distributed path's own cost; 1 rank against 2 ranks of 1 thread each
measures how the work splits (2 cores bound it at 2×).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("LRCERT_SHARED_MODELS", Path(__file__).resolve().parents[2] / "shared" / "models"))
FOOTER = re.compile(r"certified (\d+) inputs? in ([\d.]+) s \(([\d.]+) inputs/s\)")


def conv_model(folder: Path) -> Path:
    """oval21_cifar_base_kw (a CIFAR conv net) when the shared models are there, else bench.py's 3×64×64 net."""
    if (SHARED / "oval21_cifar_base_kw.onnx").exists():
        return SHARED / "oval21_cifar_base_kw.onnx"
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    import bench

    path = folder / "conv.onnx"
    torch.onnx.export(bench.wide_conv(1).module, (torch.zeros(1, 3, 64, 64),), str(path), dynamo=False, opset_version=17)
    return path


def run(command: list[str], threads: int) -> tuple[float, float]:
    """(certification inputs/s from lrcert's footer, wall seconds) of one command."""
    environment = dict(os.environ, OMP_NUM_THREADS=str(threads))
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=environment)
    wall = time.perf_counter() - started
    match = FOOTER.search(done.stderr)
    if done.returncode != 0 or not match:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return float(match.group(3)), wall


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        model = conv_model(folder)
        shape = _input_shape(model)
        np.save(folder / "x.npy", np.random.default_rng(0).random((args.inputs, *shape), dtype=np.float32))
        certify = ["certify", str(model), str(folder / "x.npy"), "-f", "jsonl", "--dtype", "float32"]

        def plain(threads: int):
            return run([sys.executable, "-m", "lrcert", *certify, "-o", str(folder / "plain.jsonl")], threads)

        def ranks(n: int, threads: int):
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}"]
            return run([*launcher, "-m", "lrcert", *certify, "-o", str(folder / f"ranks{n}.jsonl")], threads)

        configurations = {
            "plain, 2 threads": lambda: plain(2),
            "torchrun 1 rank, 2 threads": lambda: ranks(1, 2),
            "plain, 1 thread": lambda: plain(1),
            "torchrun 1 rank, 1 thread": lambda: ranks(1, 1),
            "torchrun 2 ranks, 1 thread each": lambda: ranks(2, 1),
        }
        measured = {name: [] for name in configurations}
        for _ in range(args.repeats):  # alternate, so that drifts of the machine hit every configuration
            for name, command in configurations.items():
                measured[name].append(command())
    rows = {
        name: {"inputs_per_s": statistics.median(r for r, _ in runs), "wall_s": statistics.median(w for _, w in runs)}
        for name, runs in measured.items()
    }
    report = {
        "model": str(model.name),
        "inputs": args.inputs,
        "configurations": rows,
        "overhead_1_rank": 1 - rows["torchrun 1 rank, 2 threads"]["inputs_per_s"] / rows["plain, 2 threads"]["inputs_per_s"],
        "speedup_2_ranks": rows["torchrun 2 ranks, 1 thread each"]["inputs_per_s"] / rows["torchrun 1 rank, 1 thread"]["inputs_per_s"],
    }
    print(f"{model.name}, {args.inputs} inputs, float32, median of {args.repeats}")
    for name, row in rows.items():
        print(f"  {name:34s} {row['inputs_per_s']:9.1f} inputs/s   {row['wall_s']:6.2f} s wall")
    print(f"  distributed path with 1 rank: {100 * report['overhead_1_rank']:+.1f} % throughput cost (target ≤ 5 %)")
    print(f"  2 ranks over 1 rank (1 thread each): {report['speedup_2_ranks']:.2f}× (2 cores: at most 2×)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def _input_shape(model: Path) -> tuple[int, ...]:
    import lrcert

    return lrcert.load(model).sample_shape


if __name__ == "__main__":
    sys.exit(main())
