"""lrcert on a GPU, checked: every real model against its float64 reference, and ResNet-18 timed.

    python3 benchmarks/gpu_check.py --json gpu-check.json            # on the GPU (default: cuda)
    python3 benchmarks/gpu_check.py --device cpu --resnet-size 32    # the same checks on a CPU

(a) For every model of $LRCERT_SHARED_MODELS (default ../shared/models) with a reference in its
    ``reference/`` folder: certify every input in float64 (screened, the default, and unscreened:
    both of the engine's ways), auto and float32 on the device, and
    print the worst relative error of each against the reference (float64 must be within 1e-6,
    auto within 1e-5; float32 shows ordinary float32 rounding, plus how many inputs off by more
    than 0.1 % carried no precision warning). TF32 is left at PyTorch's defaults (on for convolutions): lrcert turns it off.
(b) ResNet-18 (torchvision, random weights, batch-norm statistics set, eval mode) on one
    3×S×S input, three norms, float32: seconds and peak GPU memory.
``benchmarks/gpu.sh`` runs this and bench.py on a GPU in one go.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import lrcert
from lrcert.runtime import devices

SHARED = Path(os.environ.get("LRCERT_SHARED_MODELS", Path(__file__).resolve().parents[2] / "shared" / "models"))
NORMS = ("l1", "l2", "linf")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def relative_errors(results, reference) -> list[float]:
    """Per input, the worst relative error over the three norms (+∞ radii must agree exactly)."""
    worst = []
    for result, expected in zip(results, reference):
        errors = []
        for p in NORMS:
            got, want = result.radius[p], math.inf if expected[p] is None else expected[p]
            if math.isinf(want) or math.isinf(got):
                errors.append(0.0 if got == want else math.inf)
            else:
                errors.append(abs(got - want) / max(abs(want), 1e-300))
        worst.append(max(errors))
    return worst


def check_models(device: torch.device) -> list[dict]:
    rows = []
    for reference_file in sorted((SHARED / "reference").glob("*.json")):
        name = reference_file.stem
        reference = json.loads(reference_file.read_text())["results"]
        network = lrcert.load(SHARED / f"{name}.onnx")
        x = torch.from_numpy(np.load(SHARED / f"{name}.inputs.npy"))
        row = {"model": name, "inputs": len(x)}
        for label, dtype, screen in (("float64", torch.float64, True), ("float64-unscreened", torch.float64, False),
                                     ("auto", "auto", True), ("float32", torch.float32, True)):
            started = time.perf_counter()
            results = lrcert.certify(network, x, device=device, dtype=dtype, screen=screen)
            _sync(device)
            errors = relative_errors(results, reference)
            row[label] = {
                "worst_relative_error": max(errors),
                "seconds": time.perf_counter() - started,
                "flagged": sum(r.precision_warning for r in results),
                "off_by_more_than_0.1%_unflagged": sum(e > 1e-3 and not r.precision_warning for e, r in zip(errors, results)),
            }
        rows.append(row)
        print(
            f"{name:32s} {len(x):4d} inputs   float64 worst {row['float64']['worst_relative_error']:.1e}   "
            f"(unscreened {row['float64-unscreened']['worst_relative_error']:.1e})   auto worst {row['auto']['worst_relative_error']:.1e}   "
            f"float32 worst {row['float32']['worst_relative_error']:.1e} ({row['float32']['flagged']} flagged, "
            f"{row['float32']['off_by_more_than_0.1%_unflagged']} off by >0.1 % unflagged)",
            flush=True,
        )
    return rows


def resnet18(device: torch.device, size: int) -> dict:
    from large import resnet  # benchmarks/large.py: the same network and input as its ResNet-18 figures

    model, x = resnet("resnet18", size)
    network = lrcert.from_module(model, (3, size, size))
    engine = lrcert.Engine(network, device=device, dtype=torch.float32, predictions=False)  # ε̂, as large.py
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    started = time.perf_counter()
    (result,) = engine.run(x)
    _sync(device)
    seconds = time.perf_counter() - started
    row = {
        "input": [3, size, size],
        "units": network.units,
        "seconds": seconds,
        "radius": result.radius,
        "plan": vars(engine.plan(1)),
    }
    if device.type == "cuda":
        row["peak_gpu_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    print(f"resnet18 3×{size}×{size}, three norms, float32: {seconds:.1f} s; radii {result.radius}", flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--resnet-size", type=int, default=224)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    device = devices.resolve(args.device)
    report = {"device": devices.describe(device), "torch": torch.__version__, "lrcert": lrcert.__version__}
    print(f"lrcert {lrcert.__version__} on {report['device']}, torch {torch.__version__}", flush=True)
    report["models"] = check_models(device) if (SHARED / "reference").is_dir() else []
    if not report["models"]:
        print(f"no reference models found in {SHARED} (set LRCERT_SHARED_MODELS)")
    report["resnet18"] = resnet18(device, args.resnet_size)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    bad = [row["model"] for row in report["models"]
           if not (row["float64"]["worst_relative_error"] <= 1e-6 and row["auto"]["worst_relative_error"] <= 1e-5)]
    if bad:
        print(f"FAILED: float64 radii off by more than 1e-6, or auto's by more than 1e-5, on {', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
