"""ImageNet-scale networks, one input: how long, how much memory, and where a full run would end.

    python3 benchmarks/large.py                                   # ResNet-18 and -50 at 224², 60 s each
    python3 benchmarks/large.py --models resnet18 --size 64 --budget 0 --json large.json   # run to the end

torchvision's ResNets (random weights, batch-norm statistics set as a trained network would have
them, eval mode), one random input, three norms, float32 (exact float32: no TF32). The engine's
progress callback counts input directions pushed; with ``--budget S`` the run stops after S
seconds and the time of the whole run is projected from the directions done (every direction
costs the same tangent pass, so the projection is linear). Also: the engine's memory plan, the
process's peak resident memory (CPU) or the allocator's peak (GPU), and the dense FLOPs of one
direction through the network (torch.utils.flop_counter on a forward pass, times D).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

import lrcert
from lrcert.devices import exact_float32


class _Budget(Exception):
    """Raised from the progress callback when the time budget is spent."""


def resnet(name: str, size: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """torchvision's ``name`` with random weights and batch-norm statistics as a trained network
    would have them (not 0 and 1), in eval mode, and one random input of 3×size×size."""
    import torchvision

    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(weights=None).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
    return model, torch.rand(1, 3, size, size, generator=generator)


def forward_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def measure(name: str, size: int, budget: float, device: str) -> dict:
    model, x = resnet(name, size)
    loaded = time.perf_counter()
    network = lrcert.from_module(model, (3, size, size))
    load_seconds = time.perf_counter() - loaded
    d = network.input_size
    pushed, started = 0, None

    def progress(pairs: int) -> None:
        nonlocal pushed
        pushed += pairs
        if budget and time.perf_counter() - started > budget:
            raise _Budget

    engine = lrcert.Engine(network, device=device, dtype=torch.float32, progress=progress, predictions=False)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = None
    try:
        (result,) = engine.run(x)
    except _Budget:
        pass
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    row = {
        "model": name, "input": [3, size, size], "directions": d, "units": network.units,
        "load_seconds": load_seconds, "plan": vars(engine.plan(1)),
        "directions_done": pushed, "seconds": seconds,
        "projected_seconds": seconds * d / max(pushed, 1),
        "complete": result is not None,
        "dense_tflop": forward_flops(model, x) * d / 1e12,
    }
    if result is not None:
        row["radius"] = result.radius
    if device.startswith("cuda"):
        row["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1e9
    else:
        row["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    done = "complete" if result is not None else f"{pushed:,} of {d:,} directions"
    memory = f"peak GPU {row['peak_gpu_gb']:.1f} GB" if "peak_gpu_gb" in row else f"peak RSS {row['peak_rss_gb']:.1f} GB"
    print(f"{name} 3×{size}×{size}: {done} in {seconds:.1f} s; whole input {row['projected_seconds']:.0f} s "
          f"({row['dense_tflop']:.1f} dense TFLOP); {memory}; {engine.plan(1).directions_per_pass} directions per pass",
          flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["resnet18", "resnet50"], choices=["resnet18", "resnet50"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per model (0: run to the end)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = []
    with exact_float32():
        for name in args.models:
            rows.append(measure(name, args.size, args.budget, args.device))
    report = {"device": args.device, "threads": torch.get_num_threads(), "torch": torch.__version__, "models": rows}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
