"""What the prediction radius costs: the default engine (auto, three norms, the prediction radius)
beside the same engine without it (``--no-prediction-radius``), in one process, on networks of
10, 100 and 1,000 classes at several input sizes; and every prediction radius and rival class
compared with a float64 reference: the outputs' full Jacobian by one torch.autograd reverse pass
per class on the float64 network (no sketch, no bottleneck, none of the engine's batching).

    python3 benchmarks/prediction.py --json benchmarks/prediction-cpu.json
    python3 benchmarks/prediction.py --workloads resnet18_3x224x224 --inputs 1   # ImageNet size (minutes)

The engines run with the default options but a fixed thread count (the machine's), so that the
two sides of each ratio see the same threads. Reported per workload: seconds with and without the prediction radius (median of ``--repeats``),
the prediction radius's share of the run (1 − without / with), the same for ``-p l2 -p linf``
alone, the work (exact margin gradients, float32 estimates of margin gradients, float32 rows of
the bottleneck) and the largest relative
difference from the float64 reference over the checked inputs.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lrcert  # noqa: E402
from lrcert.engine import Engine  # noqa: E402


class CifarResNet(nn.Module):
    """A CIFAR-size residual net (3×3 stem, three stages of 16/32/64 channels, two basic blocks
    each, global average pooling) with a 100-class head: the CIFAR-100 shape."""

    def __init__(self, classes: int = 100):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        blocks, width = [], 16
        for out, stride in ((16, 1), (16, 1), (32, 2), (32, 1), (64, 2), (64, 1)):
            blocks.append(_Block(width, out, stride))
            width = out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(64, classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class _Block(nn.Module):
    def __init__(self, width: int, out: int, stride: int):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(width, out, 3, stride, 1), nn.BatchNorm2d(out), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(out, out, 3, 1, 1), nn.BatchNorm2d(out))
        self.skip = nn.Identity() if stride == 1 and width == out else nn.Conv2d(width, out, 1, stride)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.b(self.a(x)) + self.skip(x))


def cifar100_resnet() -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    model = CifarResNet(100).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
    return model, (3, 32, 32)


def workloads() -> dict:
    from bench import paper_mlp, wide_conv
    from large import resnet

    def torchvision(size):
        return lambda: (resnet("resnet18", size)[0], (3, size, size))

    return {
        "paper_mlp (10 classes)": lambda: (paper_mlp(1).module, (1, 28, 28)),
        "conv_3x64x64 (10 classes)": lambda: (wide_conv(1).module, (3, 64, 64)),
        "cifar100_resnet (100 classes)": cifar100_resnet,
        "resnet18_3x32x32 (1,000 classes)": torchvision(32),
        "resnet18_3x64x64 (1,000 classes)": torchvision(64),
        "resnet18_3x224x224 (1,000 classes)": torchvision(224),
    }


DEFAULT_INPUTS = {"paper_mlp (10 classes)": 256, "conv_3x64x64 (10 classes)": 32, "cifar100_resnet (100 classes)": 16,
                  "resnet18_3x32x32 (1,000 classes)": 4, "resnet18_3x64x64 (1,000 classes)": 2,
                  "resnet18_3x224x224 (1,000 classes)": 1}


def timed(makers: dict, x, repeats: int) -> dict[str, tuple[float, Engine, list]]:
    """Per engine maker: the median seconds of certifying ``x`` with a new engine each time (none
    learns from an earlier run), the makers taking turns so that each sees the same machine, after
    one warm-up run each; and the last engine and results."""
    times: dict[str, list[float]] = {name: [] for name in makers}
    last = {}
    for name, make in makers.items():
        make().certify(x[:1])  # (the first runs of a process pay one-off costs)
    for _ in range(repeats):
        for name, make in makers.items():
            engine = make()
            started = time.perf_counter()
            results = engine.certify(x)
            times[name].append(time.perf_counter() - started)
            last[name] = (engine, results)
    return {name: (statistics.median(times[name]), *last[name]) for name in makers}


def reference(network, x, norms, check: int) -> list[dict]:
    """The float64 prediction radii and rivals of the first ``check`` inputs from the full Jacobian
    of the outputs, one reverse pass per class (torch.autograd, a path the engine does not take)."""
    from lrcert.network.ir import DUAL_ORDER

    network64, out = network.to("cpu", torch.float64), []
    for point in x[:check].double():
        point = point[None].clone().requires_grad_(True)
        values = network64.run(point).reshape(-1)
        jacobian = torch.stack([torch.autograd.grad(v, point, retain_graph=True)[0].reshape(-1) for v in values])
        c = int(values.argmax())
        margin, gradient = (values[c] - values).detach(), jacobian[c] - jacobian
        found = {}
        for p in norms:
            dual = torch.linalg.vector_norm(gradient, DUAL_ORDER[p], dim=1)
            ratio = torch.where(dual > 0, margin / dual, math.inf)
            ratio[c] = math.inf
            found[p] = (float(ratio.min()), int(ratio.argmin()) if math.isfinite(ratio.min()) else -1)
        out.append(found)
    return out


def worst_difference(results, expected, norms) -> float:
    worst = 0.0
    for r, e in zip(results, expected):
        for p in norms:
            radius, rival = e[p]
            if r.rival[p] != rival:
                raise SystemExit(f"input {r.index} {p}: rival {r.rival[p]}, the float64 reference says {rival}")
            if not (math.isinf(radius) and math.isinf(r.prediction_radius[p])):
                worst = max(worst, abs(r.prediction_radius[p] - radius) / radius)
    return worst


def measure(name: str, make, n: int, repeats: int, check: int) -> dict:
    module, shape = make()
    network = lrcert.from_module(module, shape)
    x = torch.rand(n, *shape, generator=torch.Generator().manual_seed(1))
    row = {"workload": name, "inputs": n, "classes": math.prod(network.output_shape)}
    for label, norms in (("three norms", ("l1", "l2", "linf")), ("l2 and linf", ("l2", "linf"))):
        threads = torch.get_num_threads()  # (fixed: auto's look at the other processes adds noise to an A/B)
        got = timed({"with": lambda: Engine(network, norms=norms, threads=threads),
                     "without": lambda: Engine(network, norms=norms, predictions=False, threads=threads)}, x, repeats)
        (with_, engine, results), without = got["with"], got["without"][0]
        expected = reference(network, x, norms, min(check, n))
        row[label] = {"seconds": with_, "without": without, "share": 1 - without / with_,
                      "exact_margin_gradients": engine.work.margins, "float32_estimates": engine.work.estimated,
                      "bottleneck_rows": engine.work.rows,
                      "sketched": engine.work.sketched, "checked": len(expected),
                      "max_relative_difference": worst_difference(results, expected, norms)}
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="*", default=[k for k in DEFAULT_INPUTS if "224" not in k],
                        help="by name prefix (default: all but the 224² one)")
    parser.add_argument("--inputs", type=int, default=None, help="inputs per workload (default: per workload)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--check", type=int, default=2, help="inputs compared with the float64 reference")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    chosen = {k: v for k, v in workloads().items() if any(k.startswith(w) for w in args.workloads)}
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'workload':36} {'norms':12} {'with':>8} {'without':>8} {'share':>6} {'exact':>6} {'f32 est':>7} {'rows':>6} {'max rel diff':>12}")
    for name, make in chosen.items():
        row = measure(name, make, args.inputs or DEFAULT_INPUTS[name], args.repeats, args.check)
        rows.append(row)
        for label in ("three norms", "l2 and linf"):
            r = row[label]
            print(f"{name:36} {label:12} {r['seconds']:8.2f} {r['without']:8.2f} {r['share']:6.0%} "
                  f"{r['exact_margin_gradients']:6d} {r['float32_estimates']:7d} {r['bottleneck_rows']:6d} {r['max_relative_difference']:12.1e}",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows},
                                        indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
