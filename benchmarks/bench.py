"""lrcert's engine against what a user would write instead, side by side in one process.

    python benchmarks/bench.py                      # all workloads, CPU, float32
    python benchmarks/bench.py --device cuda        # on a GPU
    python benchmarks/bench.py --workloads paper_mlp --repeats 3 --json out.json

For every workload the script first checks, in float64 on a few inputs, that all methods give the
same radii (relative 1e-6: float64 rounding of a face value near 0 limits it); only then does it time them (float32, median of --repeats runs,
same inputs for every method) and report inputs/s, the engine's speed-up over each baseline, the
engine's achieved GFLOP/s (exact flop count of its matrix products, counted by
torch.utils.flop_counter) as a fraction of the machine's measured float32 matmul throughput, and
peak memory (a forked child per workload on the CPU; the CUDA allocator's peak on a GPU).

lrcert computes ε̂ alone here (``predictions=False``), the job the baselines do; the prediction
radius's own cost is measured by compare_revisions.py (benchmarks/RESULTS.md).

Baselines (all hidden pre-activations z of the ReLUs, gradients w.r.t. the input, then the same
dual norms): per-neuron ``torch.autograd.grad`` (one backward pass per neuron, batched over
inputs), ``torch.func.jacrev`` and ``torch.func.jacfwd`` under ``torch.func.vmap``. Slow
baselines are timed on a subset of the inputs (their cost is linear in the number of inputs)
and reported per input like the others. Everything runs in true float32: TF32 is off for the
baselines and the matmul measurement too, as it is inside lrcert.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

import lrcert
from lrcert.runtime import devices
from lrcert.runtime.devices import exact_float32
from lrcert.engine import Engine

SHARED = Path(os.environ.get("LRCERT_SHARED_MODELS", Path(__file__).resolve().parents[2] / "shared" / "models"))
NORMS = ("l1", "l2", "linf")
DUAL_ORDER = {"l1": math.inf, "l2": 2, "linf": 1}


@dataclass
class Workload:
    name: str
    module: nn.Module  # for the baselines (ReLU modules are where faces are captured)
    network: lrcert.Network  # for lrcert
    inputs: torch.Tensor
    kind: str  # "mlp", "conv" or "rnn"
    not_run: dict[str, str] = field(default_factory=dict)  # baseline -> why it is not run (measured)


# ------------------------------------------------------------------------------------------ workloads


def paper_mlp(n: int) -> Workload:
    """The paper's MNIST network shape: 784-300-300-300-300-10 ReLU MLP (random weights)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Flatten()]
    widths = [784, 300, 300, 300, 300]
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    module = nn.Sequential(*layers, nn.Linear(300, 10)).eval()
    x = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    return Workload("paper_mlp", module, lrcert.from_module(module, (1, 28, 28)), x, "mlp")


class WideConvNet(nn.Module):
    """The project's larger convolutional net: 3×64×64 inputs, strided convs, a residual block."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.conv4 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.relu4 = nn.ReLU()
        self.fc = nn.Linear(16 * 8 * 8, 64)
        self.relu5 = nn.ReLU()
        self.out = nn.Linear(64, 10)

    def forward(self, x):
        h = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        h = h + self.relu3(self.conv3(h))
        h = self.relu4(self.conv4(h))
        return self.out(self.relu5(self.fc(h.flatten(1))))


def wide_conv(n: int) -> Workload:
    torch.manual_seed(0)
    module = WideConvNet().eval()
    x = torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    return Workload("conv_3x64x64", module, lrcert.from_module(module, (3, 64, 64)), x, "conv")


def resnet18_32(n: int) -> Workload:
    """torchvision's ResNet-18 on 3×32×32 inputs (random weights, set batch-norm statistics, as in
    large.py); its ReLUs made out-of-place so the baselines' hooks see the pre-activations."""
    from large import resnet

    module, _ = resnet("resnet18", 32)
    for m in module.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    network = lrcert.from_module(module, (3, 32, 32))
    too_big = {"jacrev": "out of memory: more than 24 GB for one input (measured: killed on a 24 GB machine)"}
    return Workload("resnet18_3x32x32", module, network, x, "conv", too_big)


class RNNClassifier(nn.Module):
    """A ReLU RNN over sequences (B, T, F) with a linear head on the last step: what a user holds."""

    def __init__(self, features: int, hidden: int, layers: int, classes: int):
        super().__init__()
        self.rnn = nn.RNN(features, hidden, num_layers=layers, nonlinearity="relu", batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


class UnrolledRNN(nn.Module):
    """The same network written out step by step, with an ``nn.ReLU`` call per step, so that the
    baselines' face hooks see every step's pre-activations (torch's RNN kernel hides them)."""

    def __init__(self, model: RNNClassifier):
        super().__init__()
        self.model, self.relu = model, nn.ReLU()

    def forward(self, x):
        rnn, seq = self.model.rnn, x
        for k in range(rnn.num_layers):
            w_ih, w_hh, b_ih, b_hh = (getattr(rnn, f"{name}_l{k}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            h, steps = torch.zeros(len(x), rnn.hidden_size, dtype=x.dtype, device=x.device), []
            for t in range(seq.shape[1]):
                h = self.relu(seq[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh)
                steps.append(h)
            seq = torch.stack(steps, dim=1)
        return self.model.head(seq[:, -1])


def rnn_vowels(n: int) -> Workload:
    """A ReLU RNN of the Japanese Vowels shape: 2 layers of 64 units over T = 26 frames of F = 12
    (random weights), a linear head to 9 speakers; lrcert reads the nn.RNN, the baselines the same
    network unrolled by hand."""
    torch.manual_seed(0)
    model = RNNClassifier(12, 64, 2, 9).eval()
    x = torch.randn(n, 26, 12, generator=torch.Generator().manual_seed(1))
    return Workload("rnn_2x64_T26", UnrolledRNN(model).eval(), lrcert.from_module(model, (26, 12)), x, "rnn")


def shared(name: str, kind: str, n: int) -> Callable[[], Workload]:
    def make() -> Workload:
        import onnx
        from onnx2torch import convert

        path = SHARED / f"{name}.onnx"
        network = lrcert.load(path)
        module = convert(onnx.load(str(path))).eval()
        x = torch.from_numpy(np.load(SHARED / f"{name}.inputs.npy"))
        x = x.repeat((math.ceil(n / len(x)),) + (1,) * (x.dim() - 1))[:n]
        return Workload(name, module, network, x, kind)

    return make


def workloads(n_mlp: int, n_other: int, n_big: int) -> dict[str, Callable[[], Workload]]:
    return {
        "paper_mlp": lambda: paper_mlp(n_mlp),
        "mnist_256x4": shared("mnist_256x4", "mlp", n_other),
        "oval21_cifar_base_kw": shared("oval21_cifar_base_kw", "conv", n_other),
        "cifar10_resnet_2b": shared("cifar10_resnet_2b", "conv", n_other),
        "conv_3x64x64": lambda: wide_conv(n_big),
        "resnet18_3x32x32": lambda: resnet18_32(n_big),
        "rnn_2x64_T26": lambda: rnn_vowels(n_other),
    }


# ------------------------------------------------------------------------------------------ methods


def _pool_faces(pool: nn.MaxPool2d, z: torch.Tensor) -> torch.Tensor:
    """A max-pool's faces at its input ``z``: each window's maximum minus every element of the
    window (padding gives +inf), flattened per input."""
    assert not pool.ceil_mode, "the baselines' max-pool faces cover floor mode only"
    k, s, p = (nn.modules.utils._pair(v) for v in (pool.kernel_size, pool.stride or pool.kernel_size, pool.padding))
    padded = nn.functional.pad(z, (p[1], p[1], p[0], p[0]), value=-math.inf)
    windows = nn.functional.unfold(padded, k, dilation=pool.dilation, stride=s).unflatten(1, (z.shape[1], -1))
    return (windows.amax(dim=2, keepdim=True) - windows).reshape(len(z), -1)


def _faces(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """All faces of ``module`` at ``x``, flattened per input: (B, faces): the ReLUs'
    pre-activations, and the max-pools' window differences."""
    captured = []
    hooks = [
        m.register_forward_pre_hook(lambda m, args: captured.append(args[0].reshape(args[0].shape[0], -1)))
        for m in module.modules()
        if isinstance(m, nn.ReLU)
    ] + [
        m.register_forward_pre_hook(lambda m, args: captured.append(_pool_faces(m, args[0])))
        for m in module.modules()
        if isinstance(m, nn.MaxPool2d)
    ]
    try:
        module(x)
    finally:
        for h in hooks:
            h.remove()
    return torch.cat(captured, dim=1)


def _radii(z: torch.Tensor, jac: torch.Tensor) -> dict[str, torch.Tensor]:
    """z (B, U), jac (B, U, D) → ε̂ per norm (B,)."""
    out = {}
    for p in NORMS:
        dual = torch.linalg.vector_norm(jac, ord=DUAL_ORDER[p], dim=2)
        ratio = torch.where(dual > 0, z.abs() / torch.where(dual > 0, dual, 1), math.inf)
        out[p] = ratio.min(dim=1).values
    return out


def per_neuron_autograd(w: Workload, x: torch.Tensor) -> dict[str, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    z = _faces(w.module, x)
    stats = {p: torch.zeros_like(z) for p in NORMS}
    for j in range(z.shape[1]):
        (g,) = torch.autograd.grad(z[:, j].sum(), x, retain_graph=True)
        g = g.reshape(len(x), -1)
        for p in NORMS:
            stats[p][:, j] = torch.linalg.vector_norm(g, ord=DUAL_ORDER[p], dim=1)
    z = z.detach().abs()
    return {
        p: torch.where(s > 0, z / torch.where(s > 0, s, 1), math.inf).min(dim=1).values for p, s in stats.items()
    }


def _func_jacobian(transform):
    def method(w: Workload, x: torch.Tensor) -> dict[str, torch.Tensor]:
        single = lambda v: _faces(w.module, v[None])[0]  # noqa: E731
        with torch.no_grad():
            z = _faces(w.module, x)
        jac = torch.func.vmap(transform(single))(x).reshape(len(x), z.shape[1], -1)
        return _radii(z, jac)

    return method


def lrcert_engine(engine: Engine):
    def method(w: Workload, x: torch.Tensor) -> dict[str, torch.Tensor]:
        results = [r for batch in engine.stream([x], n_inputs=len(x)) for r in batch]
        return {p: torch.tensor([r.radius[p] for r in results]) for p in NORMS}

    return method


#: jacrev's documented ``chunk_size``: how many vector-Jacobian products run at once.
JACREV_CHUNK = 512
#: A baseline whose estimated memory exceeds this is reported as out of memory instead of run:
#: half the machine's memory (4 × the engine's CPU state budget), at least 8 GB.
MEMORY_CAP = max(8 << 30, 4 * devices.cpu_state_budget())
#: Per-neuron autograd is left out above this many neurons (it would run for tens of minutes).
AUTOGRAD_MAX_UNITS = 20_000

BASELINES = {
    "autograd": per_neuron_autograd,
    "jacrev": _func_jacobian(lambda f: torch.func.jacrev(f, chunk_size=JACREV_CHUNK)),
    "jacfwd": _func_jacobian(torch.func.jacfwd),
}


# ------------------------------------------------------------------------------------------ measuring


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], repeats: int, device: str) -> float:
    """Median wall time of ``repeats`` runs after one warm-up run."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def matmul_gflops(device: str, repeats: int) -> float:
    n = 4096 if device.startswith("cuda") else 2048
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    seconds = timed(lambda: a @ b, repeats, device)
    return 2 * n**3 / seconds / 1e9


def engine_flops(engine: Engine, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        for _ in engine.stream([x], n_inputs=len(x)):
            pass
    return counter.get_total_flops()


def peak_rss_bytes(workload: str, args) -> int | None:
    """Peak resident memory of the engine alone on ``workload``, measured in a fresh process."""
    import subprocess

    n = str(args.memory_inputs)
    command = [sys.executable, __file__, "--engine-only", workload, "--mlp-inputs", n, "--other-inputs", n,
               "--big-inputs", n]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return None
    return int(done.stdout.split()[-1])


def engine_only(name: str, args) -> int:
    """Child process for peak_rss_bytes: certify the workload once, print the peak resident bytes.

    The peak is the process's own high-water mark (VmHWM), which starts afresh at exec, unlike
    ru_maxrss, which a child inherits from the large parent that forked it.
    """
    w = workloads(args.mlp_inputs, args.other_inputs, args.big_inputs)[name]()
    engine = Engine(w.network, device="cpu", dtype=torch.float32, predictions=False)
    lrcert_engine(engine)(w, w.inputs.float())
    status = Path("/proc/self/status")
    if status.exists():
        peak_kb = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmHWM"))
        print(peak_kb * 1024)
    else:
        import resource

        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024))
    return 0


def check_agreement(w: Workload, methods: dict, n: int, device: str) -> dict[str, str]:
    """Check every baseline against lrcert on ``n`` inputs before anything is timed.

    In float64 (relative 1e-6) where the baseline fits in memory so, else in float32 (relative
    2e-3); a baseline that fits in neither is left out of the timings. Returns how each was checked.
    """
    checked = {}
    for name, method in methods.items():
        if not _fits(name, w, n, 8):
            dtype, tolerance = torch.float64, 1e-6
        elif not _fits(name, w, n, 4):
            dtype, tolerance = torch.float32, 2e-3
        else:
            continue
        x = w.inputs[:n].to(device, dtype)
        module = w.module.to(device, dtype)
        expected = lrcert_engine(Engine(w.network, device=device, dtype=dtype, predictions=False))(w, x)
        got = method(Workload(w.name, module, w.network, x, w.kind, w.not_run), x)
        worst = 0.0
        for p in NORMS:
            a, b = got[p].cpu().double(), expected[p].cpu().double()
            finite = ~(torch.isinf(a) & torch.isinf(b))
            rel = ((a - b).abs() / b.abs().clamp_min(1e-300))[finite]
            worst = max(worst, float(rel.max()) if len(rel) else 0.0)
        if worst > tolerance:
            raise SystemExit(f"{w.name}: {name} disagrees with lrcert (relative {worst:.3g} in {dtype})")
        checked[name] = f"{str(dtype).split('.')[-1]}, max relative difference {worst:.1e}"
    w.module.float()
    return checked


def run_workload(w: Workload, args, throughput: float) -> dict:
    device = args.device
    baselines = {k: v for k, v in BASELINES.items() if k in args.baselines}
    agreement = check_agreement(w, baselines, n=2 if w.network.faces * w.network.input_size < 5e7 else 1, device=device)
    not_run = {k: _fits(k, w, 1, 4) or "does not fit in memory" for k in baselines if k not in agreement}
    baselines = {k: v for k, v in baselines.items() if k in agreement}
    module = w.module.float().to(device)
    x = w.inputs.float().to(device)
    w = Workload(w.name, module, w.network, x, w.kind, w.not_run)
    engine = Engine(w.network, device=device, dtype=torch.float32, predictions=False)  # ε̂, the baselines' job
    row = {"workload": w.name, "inputs": len(x), "agreement": agreement, "not_run": not_run, "methods": {}}

    seconds = timed(lambda: lrcert_engine(engine)(w, x), args.repeats, device)
    row["methods"]["lrcert"] = {"inputs": len(x), "seconds": seconds, "inputs_per_s": len(x) / seconds}
    row["screening"] = engine.screening  # still on after the timed runs: it paid on this workload
    # the tangent engine alone (every face's gradient): its matrix products' rate is the efficiency
    unscreened = Engine(w.network, device=device, dtype=torch.float32, predictions=False, screen=False)
    unscreened_seconds = timed(lambda: lrcert_engine(unscreened)(w, x), args.repeats, device)
    row["methods"]["lrcert-unscreened"] = {
        "inputs": len(x), "seconds": unscreened_seconds, "inputs_per_s": len(x) / unscreened_seconds}
    flops = engine_flops(unscreened, x)
    row["engine_gflops"] = flops / unscreened_seconds / 1e9
    row["matmul_fraction"] = row["engine_gflops"] / throughput
    row["screened_equivalent_gflops"] = flops / seconds / 1e9  # the same job, screened
    row["batch_plan"] = vars(unscreened.plan(len(x)))
    if unscreened.sparse:  # the idea "skip inactive units", measured: the same engine without it
        dense = Engine(w.network, device=device, dtype=torch.float32, skip_inactive=False, predictions=False, screen=False)
        dense_seconds = timed(lambda: lrcert_engine(dense)(w, x), args.repeats, device)
        row["methods"]["lrcert-dense"] = {"inputs": len(x), "seconds": dense_seconds, "inputs_per_s": len(x) / dense_seconds}
        dense_flops = engine_flops(dense, x)
        row["dense_equivalent_gflops"] = dense_flops / unscreened_seconds / 1e9
        row["dense_gflops"] = dense_flops / dense_seconds / 1e9
        row["dense_matmul_fraction"] = row["dense_gflops"] / throughput

    for name, method in baselines.items():
        subset = x[: _baseline_inputs(name, w, len(x))]
        too_big = _fits(name, w, len(subset), 4)
        if too_big:
            row["methods"][name] = {"inputs": len(subset), "error": too_big}
            continue
        try:
            seconds = timed(lambda: method(w, subset), max(1, args.repeats // 2), device)
            row["methods"][name] = {"inputs": len(subset), "seconds": seconds, "inputs_per_s": len(subset) / seconds}
        except (RuntimeError, MemoryError) as exc:  # e.g. out of memory: say so, do not hide it
            row["methods"][name] = {"inputs": len(subset), "error": str(exc).splitlines()[0][:200]}
    rates = [m["inputs_per_s"] for k, m in row["methods"].items() if k in BASELINES and "inputs_per_s" in m]
    row["fastest_baseline_inputs_per_s"] = max(rates) if rates else None
    row["speedup_vs_fastest"] = row["methods"]["lrcert"]["inputs_per_s"] / max(rates) if rates else None

    if device == "cpu" and not args.no_memory:
        peak = peak_rss_bytes(w.name, args)
        row["peak_rss_gb"] = None if peak is None else peak / 1e9
        row["peak_rss_inputs"] = args.memory_inputs
    elif device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        lrcert_engine(engine)(w, x)
        row["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return row


def _baseline_inputs(name: str, w: Workload, n: int) -> int:
    """How many inputs a baseline is timed on (its cost is linear in them, so inputs/s compare).

    Per-neuron autograd runs one backward pass per neuron: enough inputs to amortise it, few
    enough to finish in minutes. jacrev/jacfwd hold the whole Jacobian, faces × D per input:
    keep it near 1 GB.
    """
    if name == "autograd":
        return max(1, min(n, 64, 50_000 // w.network.faces))
    per_input = w.network.faces * w.network.input_size * 4
    n = max(1, min(n, (1 << 30) // per_input))
    while n > 1 and estimated_bytes(name, w, n, 4) > MEMORY_CAP:  # (jacrev's chunks of many activations: fewer inputs)
        n //= 2
    return n


def estimated_bytes(name: str, w: Workload, n: int, itemsize: int) -> int:
    """Rough memory a baseline needs for ``n`` inputs: activations per vmapped row plus the Jacobian."""
    activations = sum(layer.size for layer in w.network.layers)
    jacobian = 3 * w.network.faces * w.network.input_size  # the result and the norms' temporaries (2× measured)
    if name == "autograd":
        return 3 * n * activations * itemsize
    if name == "jacrev":
        return n * (JACREV_CHUNK * activations + jacobian) * itemsize
    return n * (w.network.input_size * activations + jacobian) * itemsize


def _fits(name: str, w: Workload, n: int, itemsize: int) -> str | None:
    """Why baseline ``name`` cannot run on ``n`` inputs (memory, or hours of per-neuron passes), or None."""
    if name in w.not_run:
        return w.not_run[name]
    if name == "autograd" and w.network.faces > AUTOGRAD_MAX_UNITS:
        return (
            f"not run: one backward pass per face, {w.network.faces} faces (tens of minutes); "
            "jacrev is the same computation, batched"
        )
    need = estimated_bytes(name, w, n, itemsize)
    if need > MEMORY_CAP:
        return f"out of memory: needs about {need / 1e9:.0f} GB for {n} input(s), more than {MEMORY_CAP / 1e9:.0f} GB"
    return None


def scaling(args, throughput: float) -> dict:
    """Is the cost linear in the number of inputs? Time 256 and 1024 inputs of the paper MLP."""
    w = paper_mlp(1024)
    engine = Engine(w.network, device=args.device, dtype=torch.float32, predictions=False)
    x = w.inputs.to(args.device)
    small = timed(lambda: lrcert_engine(engine)(w, x[:256]), args.repeats, args.device)
    large = timed(lambda: lrcert_engine(engine)(w, x), args.repeats, args.device)
    return {"seconds_256": small, "seconds_1024": large, "ratio": large / small}


def main(argv=None) -> int:
    names = list(workloads(1, 1, 1))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per method (median reported)")
    parser.add_argument("--workloads", nargs="*", default=names, choices=names)
    parser.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=list(BASELINES))
    parser.add_argument("--mlp-inputs", type=int, default=512)
    parser.add_argument("--other-inputs", type=int, default=256)
    parser.add_argument("--big-inputs", type=int, default=32, help="timed inputs of conv_3x64x64 and resnet18_3x32x32 (minutes each)")
    parser.add_argument("--memory-inputs", type=int, default=256, help="inputs of the peak-memory runs")
    parser.add_argument("--no-memory", action="store_true", help="skip the forked peak-memory runs")
    parser.add_argument("--no-scaling", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--engine-only", choices=names, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.engine_only:
        return engine_only(args.engine_only, args)

    with exact_float32():  # every method and the machine's limit in true float32 (no TF32 on GPUs)
        return run_all(args)


def run_all(args) -> int:
    throughput = matmul_gflops(args.device, args.repeats)
    report = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "matmul_gflops": throughput,
        "workloads": [],
    }
    print(f"matmul throughput: {throughput:.1f} GFLOP/s ({report['device']}, {report['threads']} threads)", flush=True)
    makers = workloads(args.mlp_inputs, args.other_inputs, args.big_inputs)
    for name in args.workloads:
        try:
            w = makers[name]()
        except lrcert.LrcertError as exc:
            print(f"{name}: skipped ({exc})")
            continue
        row = run_workload(w, args, throughput)
        report["workloads"].append(row)
        _print_row(row)
    if not args.no_scaling:
        report["scaling"] = scaling(args, throughput)
        s = report["scaling"]
        print(f"scaling: 256 inputs {s['seconds_256']:.3f} s, 1024 inputs {s['seconds_1024']:.3f} s, ratio {s['ratio']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def _print_row(row: dict) -> None:
    print(f"\n{row['workload']} ({row['inputs']} inputs)")
    for name, how in row["agreement"].items():
        print(f"  radii agree with {name}: {how}")
    for name, why in row.get("not_run", {}).items():
        print(f"  {name}: {why}")
    engine = row["methods"]["lrcert"]["inputs_per_s"]
    print(f"  {'method':<10} {'inputs/s':>12} {'lrcert ×':>10}")
    for name, m in row["methods"].items():
        if "error" in m:
            print(f"  {name:<10} {'failed: ' + m['error']}")
            continue
        ratio = engine / m["inputs_per_s"]
        print(f"  {name:<10} {m['inputs_per_s']:>12.2f} {ratio:>10.2f}")
    print(f"  screening: {'on' if row['screening'] else 'stopped (it did not pay)'}")
    print(
        f"  unscreened engine: {row['engine_gflops']:.1f} GFLOP/s = {100 * row['matmul_fraction']:.0f}% of matmul "
        f"throughput; screened, the same job at {row['screened_equivalent_gflops']:.1f} equivalent GFLOP/s"
    )
    if "dense_equivalent_gflops" in row:
        print(
            f"  unscreened, without skipping inactive units: {row['dense_gflops']:.1f} GFLOP/s = "
            f"{100 * row['dense_matmul_fraction']:.0f}% of matmul throughput; the skipping engine does the same "
            f"job at {row['dense_equivalent_gflops']:.1f} dense-equivalent GFLOP/s"
        )
    if row.get("peak_rss_gb") is not None:
        print(f"  peak resident memory (engine alone, own process, {row['peak_rss_inputs']} inputs): {row['peak_rss_gb']:.2f} GB")
    if row.get("peak_cuda_gb") is not None:
        print(f"  peak CUDA memory (engine): {row['peak_cuda_gb']:.2f} GB")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
