"""ImageNet-size networks, one input, the default options: full runs, the work they took, and the
deterministic engine beside them in the same process.

    python3 benchmarks/large.py --json benchmarks/large-cpu.json     # ResNet-18 and -50 at 224², full runs
    python3 benchmarks/large.py --models resnet18 --size 64 --check   # also the deterministic float64 answer

torchvision's ResNets (random weights, batch-norm statistics set as a trained network would have
them, eval mode), one random input, three norms, what ``lrcert certify`` does by default: dtype
auto, the prediction radius over 1,000 classes, ``--guarantee 1e-12`` (inputs the deterministic
bounds cannot settle are sketched). Reported per model: the whole run's time and peak memory
(the process's resident high-water mark, reset before each model; the allocator's peak on a GPU),
the work (directions pushed, exact face gradients in all and as chosen per norm, exact margin
gradients, float32 estimates of margin gradients and gradient rows of the bottleneck), the radii and each answer's δ.

Beside it, in the same process, the deterministic engine (``--guarantee deterministic``, float32
tangent passes as large.py measured before), stopped after ``--budget`` seconds and projected
linearly from the directions it pushed (every direction costs the same tangent pass; its
prediction radius and float64 refinement come on top, so the projection is a lower bound): the
ratio of the two is the speed-up. The machine's limit: the float32 and float64 matrix-product
throughput measured here, and the run's work costed at it (each tangent direction and each
gradient row one forward pass of FLOPs, by torch.utils.flop_counter) as a lower bound on its time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import lrcert
from lrcert.runtime.devices import exact_float32


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
    set_batch_norm_statistics(model, generator)
    return model, torch.rand(1, 3, size, size, generator=generator)


def set_batch_norm_statistics(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Running means ~ 0.1·N(0, 1) and variances in [0.5, 1.5], as a trained network's (not 0 and 1)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))


def forward_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def matmul_rate(dtype: torch.dtype, device: str) -> float:
    """FLOP/s of a 2048² matrix product in ``dtype`` (the best of five)."""
    a = torch.randn(2048, 2048, dtype=dtype, device=device)
    best = float("inf")
    for _ in range(6):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        a @ a
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * 2048**3 / best


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: the resident high-water mark starts again
    except OSError:
        pass


def _peak_gb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 1e9
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024 / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def default_run(network, x, device: str) -> dict:
    """The whole default run of one input, timed, with the engine's account of its work."""
    _reset_peak(device)
    started = time.perf_counter()
    engine = lrcert.Engine(network, device=device)
    (result,) = engine.run(x)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    work = engine.work
    return {
        "seconds": seconds,
        "peak_gb": _peak_gb(device),
        "directions_pushed": work.pushed,
        "sketched": work.sketched,
        "exact_face_gradients": work.exact,
        "chosen_per_norm": {p: int(n) for p, n in work.chosen.items()},
        "exact_margin_gradients": work.margins,
        "float32_gradient_rows": work.rows,
        "float32_margin_estimates": work.estimated,
        "sketch_directions": engine.sketch.k if engine.sketch is not None else 0,
        "radius": result.radius,
        "prediction_radius": result.prediction_radius,
        "binding": {p: b.describe() if b else None for p, b in result.binding.items()},
        "delta": result.delta,
        "dtype": result.dtype,
    }


def deterministic_projection(network, x, device: str, budget: float) -> dict:
    """The deterministic engine's tangent passes (float32), stopped after ``budget`` seconds and
    projected to all D directions."""
    d, pushed, started = network.input_size, 0, None

    def progress(pairs: int) -> None:
        nonlocal pushed
        pushed += pairs
        if time.perf_counter() - started > budget:
            raise _Budget

    engine = lrcert.Engine(network, device=device, dtype=torch.float32, progress=progress, predictions=False,
                           guarantee="deterministic")
    started = time.perf_counter()
    complete = True
    try:
        engine.run(x)
    except _Budget:
        complete = False
    seconds = time.perf_counter() - started
    return {"directions_done": pushed, "seconds": seconds, "complete": complete,
            "projected_seconds": seconds * d / max(pushed, 1)}


def check(network, x, device: str, default: dict) -> dict:
    """The deterministic float64 answer (every direction pushed), and whether the default's equals it."""
    started = time.perf_counter()
    (exact,) = lrcert.Engine(network, device=device, dtype=torch.float64, guarantee="deterministic").run(x.double())
    same = all(abs(default["radius"][p] - exact.radius[p]) <= 1e-9 * exact.radius[p] for p in exact.radius)
    same &= all(abs(default["prediction_radius"][p] - exact.prediction_radius[p]) <= 1e-9 * exact.prediction_radius[p]
                for p in exact.radius)
    return {"seconds": time.perf_counter() - started, "radius": exact.radius,
            "prediction_radius": exact.prediction_radius, "equal": same}


def measure(name: str, size: int, budget: float, device: str, rates: dict, with_check: bool) -> dict:
    model, x = resnet(name, size)
    network = lrcert.from_module(model, (3, size, size))
    flops = forward_flops(model, x)  # one forward pass, float32
    row = {"model": name, "input": [3, size, size], "directions": network.input_size, "faces": network.faces,
           "forward_gflop": flops / 1e9}
    row["default"] = default_run(network, x, device)
    work = row["default"]
    # the work at the machine's limit: float64 passes (value, magnitudes, sketch directions, exact
    # face and margin gradients) and float32 ones (the bottleneck's gradient rows, the margins'
    # estimates), one forward each
    float64_passes = 2 + work["directions_pushed"] + work["exact_face_gradients"] + work["exact_margin_gradients"]
    limit = flops * (float64_passes / rates["float64"] + (work["float32_gradient_rows"] + work["float32_margin_estimates"]) / rates["float32"])
    row["limit_seconds"] = limit
    row["fraction_of_limit"] = limit / work["seconds"]
    if budget:
        row["deterministic"] = deterministic_projection(network, x, device, budget)
        row["speedup"] = row["deterministic"]["projected_seconds"] / work["seconds"]
    if with_check:
        row["check"] = check(network, x, device, work)
    memory = f"peak {'GPU' if device.startswith('cuda') else 'RSS'} {work['peak_gb']:.1f} GB"
    chosen = ", ".join(f"{p} {n}" for p, n in work["chosen_per_norm"].items())
    print(f"{name} 3×{size}×{size}: {work['seconds']:.1f} s, {memory}; {work['directions_pushed']:,} of "
          f"{network.input_size:,} directions pushed, {work['exact_face_gradients']} exact face gradients "
          f"(chosen per norm: {chosen}), {work['exact_margin_gradients']} exact margin gradients, "
          f"{work['float32_margin_estimates']} float32 margin estimates, "
          f"{work['float32_gradient_rows']:,} float32 gradient rows; δ = {work['delta']:.1e}; "
          f"{100 * row['fraction_of_limit']:.0f}% of the machine's limit", flush=True)
    if budget:
        det = row["deterministic"]
        print(f"    deterministic: {det['directions_done']:,} directions in {det['seconds']:.0f} s, "
              f"whole input ≥ {det['projected_seconds']:.0f} s: the default is {row['speedup']:.0f}× faster", flush=True)
    if with_check:
        print(f"    deterministic float64: {row['check']['seconds']:.0f} s, every radius and prediction radius "
              f"{'equal' if row['check']['equal'] else 'DIFFERENT'}", flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["resnet18", "resnet50"], choices=["resnet18", "resnet50"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds for the deterministic engine's projection (0: leave it out)")
    parser.add_argument("--check", action="store_true", help="also the deterministic float64 answer, in full (slow)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rates = {"float32": matmul_rate(torch.float32, args.device), "float64": matmul_rate(torch.float64, args.device)}
    print(f"matrix products: float32 {rates['float32'] / 1e9:.0f} GFLOP/s, float64 {rates['float64'] / 1e9:.0f} GFLOP/s")
    rows = []
    with exact_float32():
        for name in args.models:
            rows.append(measure(name, args.size, args.budget, args.device, rates, args.check))
    report = {"device": args.device, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "matmul_gflops": {k: v / 1e9 for k, v in rates.items()}, "models": rows}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
