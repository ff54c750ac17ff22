"""Two revisions of lrcert side by side in one process: did a change slow the engine down?

    python3 benchmarks/compare_revisions.py --base HEAD~1
    python3 benchmarks/compare_revisions.py --base main --workloads paper_mlp cifar10_resnet_2b --repeats 7

The base revision's ``lrcert`` package is taken with ``git archive`` into a temporary folder and
imported as ``lrcert_base``; the working tree's ``lrcert`` is the other. For each of bench.py's
workloads (same inputs, float32, the CPU unless --device says otherwise), each revision builds its
own layer list with its own loader; the script checks that both give the same radii, activation
patterns and binding faces, then times them alternately (median of --repeats) and prints the
ratio: above 1, the working tree is faster.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

import bench

ROOT = Path(__file__).resolve().parents[1]


def import_revision(revision: str, folder: Path):
    """The package ``lrcert`` of ``revision``, imported as ``lrcert_base``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "lrcert"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    (folder / "lrcert").rename(folder / "lrcert_base")
    sys.path.insert(0, str(folder))
    return importlib.import_module("lrcert_base")


def base_network(base, w: bench.Workload):
    if (bench.SHARED / f"{w.name}.onnx").exists():
        return base.load(bench.SHARED / f"{w.name}.onnx")
    return base.from_module(w.module, tuple(w.inputs.shape[1:]))


def certify(engine, x):
    """Every result of ``x``, through either revision's streaming method (``certify`` before it
    was named ``stream``)."""
    stream = engine.stream if hasattr(engine, "stream") else engine.certify
    return [r for batch in stream([x], n_inputs=len(x)) for r in batch]


def same_results(a, b) -> str | None:
    """Why the two revisions' results differ, or None."""
    for ra, rb in zip(a, b):
        if ra.radius != rb.radius or ra.pattern != rb.pattern:
            return f"input {ra.index}: radii {ra.radius} vs {rb.radius}"
        faces = [{p: c.as_dict() if c else None for p, c in r.binding.items()} for r in (ra, rb)]
        if faces[0] != faces[1]:
            return f"input {ra.index}: binding faces {faces[0]} vs {faces[1]}"
    return None if len(a) == len(b) else "different numbers of results"


def main(argv=None) -> int:
    names = list(bench.workloads(1, 1, 1))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="git revision to compare the working tree against")
    parser.add_argument("--workloads", nargs="*", default=names[:4], choices=names)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mlp-inputs", type=int, default=512)
    parser.add_argument("--other-inputs", type=int, default=128)
    parser.add_argument("--big-inputs", type=int, default=16)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as folder:
        base = import_revision(args.base, Path(folder))
        print(f"working tree vs {args.base}, {args.device}, float32, median of {args.repeats}, {torch.get_num_threads()} threads")
        makers = bench.workloads(args.mlp_inputs, args.other_inputs, args.big_inputs)
        for name in args.workloads:
            w = makers[name]()
            x = w.inputs.float()
            new = bench.Engine(w.network, device=args.device)
            old = base.Engine(base_network(base, w), device=args.device)
            difference = same_results(certify(new, x), certify(old, x))
            if difference:
                print(f"{name}: results differ from {args.base}: {difference}")
                return 1
            seconds = {"base": [], "tree": []}
            for _ in range(args.repeats):
                for label, engine in (("base", old), ("tree", new)):
                    started = time.perf_counter()
                    certify(engine, x)
                    seconds[label].append(time.perf_counter() - started)
            base_s, tree_s = (statistics.median(seconds[k]) for k in ("base", "tree"))
            print(
                f"{name:22s} {len(x):5d} inputs   {args.base}: {len(x) / base_s:9.1f}/s   working tree: "
                f"{len(x) / tree_s:9.1f}/s   ratio {base_s / tree_s:.3f}   (same radii, patterns, faces)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
