"""``lrcert stability`` against what a user would run instead, side by side in one process.

    python3 benchmarks/stability.py --json benchmarks/stability-cpu.json          # every section
    python3 benchmarks/stability.py --sections search --inputs 20                  # one section

Sections:

- **search**: the largest distortion found at an equal budget of passes (one pass: one point's value
  or backward pass), per input, by lrcert's search (:mod:`lrcert.stability.search`), by the paper's
  genetic algorithm (our reading of Lee et al. 2019: a population of points of the ball; each
  generation keeps the best quarter, mutates a quarter, crosses half over, coordinate by
  coordinate, and projects back) and by Captum's ``sensitivity_max`` (uniform samples of the ball,
  the largest distortion among them; Captum divides by ‖∇f(x)‖, multiplied back here). Reported:
  the share of inputs where lrcert's is at least each baseline's, and more. Every Δ of the three is
  lrcert's own value at its point, recomputed in float64 with torch.autograd on the ONNX model's
  PyTorch twin for the search's points (a check that the search reports what it attains).
- **speed**: inputs/s of the whole default analysis (ε̂, 1,000 samples, the search, the bound)
  against a ``torch.autograd`` loop over the same number of gradient evaluations, one point at a
  time, and of lrcert's sampling stage alone (float32 as Captum, and the default dtype) against
  Captum's ``sensitivity_max`` at 1,000 samples; the sampling's FLOPs (twice the forward pass's, by
  torch.utils.flop_counter) as a fraction of the machine's float32 matrix-product rate.
- **shared** (not in the default run): the sampling against Captum's at ℓ∞ 1/255, where samples
  share regions and a sample in a known region needs no backward pass.
- **imagenet**: torchvision's ResNet-18 at 224² (batch-norm statistics set, random weights), one
  input, ``lrcert stability model.onnx x.npy --eps 8/255 --box 0,1``: the whole command, timed as a
  user runs it, and the stages of the same analysis in process.

Models: the third-party networks of ../shared/models (MNIST MLPs and CNNs, CIFAR CNNs; real test
inputs) where present, and the project's own (models/). Captum is a baseline only (pip install
captum); without it its columns are left out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import lrcert
from lrcert.stability import Ball, Stability
from lrcert.stability import expected as expectations
from lrcert.stability import search as searching
from lrcert.stability.saliency import Saliency, distortion, target_weights

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LRCERT_SHARED_MODELS", ROOT.parent / "shared" / "models"))
EPS = 8 / 255
#: (model, box): MNIST models read pixels in [0, 1]; the CIFAR ones normalised inputs (no box).
MODELS = [("mnist_256x2", (0.0, 1.0)), ("mnist_256x4", (0.0, 1.0)), ("eran_mnist_relu_9_200", (0.0, 1.0)),
          ("verivital_convnet_avgpool", (0.0, 1.0)), ("verivital_convnet_maxpool", (0.0, 1.0)),
          ("oval21_cifar_base_kw", None), ("cifar10_resnet_2b", None)]


def load(name: str):
    """(network, PyTorch twin in float64, inputs) of a model of ../shared/models."""
    from onnx2torch import convert

    path = SHARED / f"{name}.onnx"
    network = lrcert.load(str(path))
    x = torch.from_numpy(np.load(SHARED / f"{name}.inputs.npy")).double().reshape(-1, *network.sample_shape)
    return network, convert(str(path)).double().eval(), x


# ------------------------------------------------------------------------------------ baselines


def genetic(evaluate, ball: Ball, x: torch.Tensor, budget: int, generator: torch.Generator, population: int = 16) -> float:
    """The paper's genetic algorithm (our reading) at ``budget`` passes for one input ``x``."""
    evaluations = budget // 2
    points = ball.sample(x[None], population, [generator])[0]
    values = evaluate(points)
    used = population
    while used + population - population // 4 <= evaluations:
        order = values.argsort(descending=True)
        elite, elite_values = points[order[: population // 4]], values[order[: population // 4]]
        pick = lambda n: elite[torch.randint(0, len(elite), (n,), generator=generator)]  # noqa: E731
        noise = (torch.rand((population // 4, *x.shape), generator=generator, dtype=x.dtype) * 2 - 1) * ball.eps / 2
        mutated = pick(population // 4) + noise
        count = population - 2 * (population // 4)
        mask = torch.rand((count, *x.shape), generator=generator) < 0.5
        crossed = torch.where(mask, pick(count), pick(count))
        fresh = ball.project(torch.cat([mutated, crossed])[None], x[None])[0]
        fresh_values = evaluate(fresh)
        used += len(fresh)
        points, values = torch.cat([elite, fresh]), torch.cat([elite_values, fresh_values])
    return float(values.max())


def captum_max(model, x: torch.Tensor, target: int, ball: Ball, samples: int, g0_norm: float) -> float:
    """Captum's sensitivity_max with uniform samples of the ball (and box), ℓ1, as an absolute Δ."""
    from captum.attr import Saliency as CaptumSaliency
    from captum.metrics import sensitivity_max

    saliency = CaptumSaliency(model)

    def explain(inputs, target):
        return saliency.attribute(inputs, target=target, abs=False)

    def perturb(inputs, radius):
        lo, hi = ball.interval(inputs)
        return lo + torch.rand_like(inputs) * (hi - lo)

    value = sensitivity_max(explain, x[None].float() if next(model.parameters()).dtype == torch.float32 else x[None],
                            perturb_func=perturb, perturb_radius=ball.eps, n_perturb_samples=samples, norm_ord=1,
                            target=target, max_examples_per_batch=64)
    return float(value) * (g0_norm if g0_norm > 0 else 1.0)


# ------------------------------------------------------------------------------------ sections


def search_section(names, inputs: int, budget: int) -> dict:
    """The largest Δ found at ``budget`` passes per input by the three, on every model."""
    out = {}
    for name, box in names:
        network, twin, x = load(name)
        x = x[:inputs]
        saliency = Saliency(network.to("cpu", torch.float64))
        weights, classes, _ = target_weights(saliency.outputs(x), "predicted", None)
        g0, _ = saliency.at(x, weights)
        ball = Ball("linf", EPS, box)
        rows = []
        for k in range(len(x)):
            w, g = weights[k : k + 1], g0[k : k + 1]

            def evaluate(points, w=w, g=g):
                grads, _ = saliency.at(points, w.expand(len(points), -1))
                return distortion(grads, g.expand(len(points), -1), 1)

            found = searching.search(saliency, ball, x[k : k + 1], w, g, budget, [expectations.generator(0, k, 1, x.device)], 1)
            point = found.point[0]
            check = _autograd_distortion(twin, x[k], point, int(classes[k]))
            ga = genetic(evaluate, ball, x[k], budget, torch.Generator().manual_seed(k))
            rows.append({"lrcert": float(found.value[0]), "autograd_at_point": check, "genetic": ga,
                         "captum": _captum_or_none(twin, x[k], int(classes[k]), ball, budget // 2, float(g.abs().sum()))})
        out[name] = _search_summary(rows)
        print(f"{name}: {json.dumps(out[name]['summary'])}", flush=True)
    return out


def _captum_or_none(twin, x, target, ball, samples, norm):
    try:
        torch.manual_seed(0)
        return captum_max(twin, x, target, ball, samples, norm)
    except ImportError:
        return None


def _autograd_distortion(model, x: torch.Tensor, point: torch.Tensor, target: int) -> float:
    """‖∇f_target(point) − ∇f_target(x)‖₁ by torch.autograd through the PyTorch twin, float64."""
    grads = []
    for p in (x, point):
        leaf = p.detach().clone().double().reshape(1, *x.shape).requires_grad_(True)
        (g,) = torch.autograd.grad(model(leaf).reshape(1, -1)[0, target], leaf)
        grads.append(g)
    return float((grads[1] - grads[0]).abs().sum())


def _search_summary(rows: list[dict]) -> dict:
    mine = np.array([r["lrcert"] for r in rows])
    summary = {"inputs": len(rows), "lrcert_median": float(np.median(mine)),
               "largest_gap_to_autograd": max(abs(r["lrcert"] - r["autograd_at_point"]) / max(1e-300, r["lrcert"]) for r in rows)}
    for rival in ("genetic", "captum"):
        theirs = np.array([r[rival] if r[rival] is not None else math.nan for r in rows])
        if np.isnan(theirs).all():
            continue
        summary[f"{rival}_median"] = float(np.nanmedian(theirs))
        summary[f"at_least_{rival}"] = float(np.mean(mine >= theirs * (1 - 1e-9)))
        summary[f"more_than_{rival}"] = float(np.mean(mine > theirs * (1 + 1e-9)))
    return {"summary": summary, "inputs": rows}


def shared_section(names, inputs: int, samples: int, eps: float = 1 / 255) -> dict:
    """Where samples share regions (a smaller ball): lrcert's sampling (a sample in a known region
    gets no backward pass) against Captum's, side by side."""
    out = {}
    for name, box in names:
        network, twin, x = load(name)
        x, twin32 = x[:inputs], twin.float()
        analysis = Stability(network, eps=eps, box=box, samples=samples, dtype=torch.float32)
        results = Stability(network, eps=eps, box=box, samples=samples, budget=20).run(x)
        timings = _side_by_side({"lrcert_sampling_float32": lambda: _sampling(analysis, x),
                                 "captum": lambda: _captum_timing(twin32, x, [r.target for r in results], Ball("linf", eps, box), samples)})
        out[name] = {"eps": eps, "seconds": timings, "sampling_float32_over_captum": timings["captum"] / timings["lrcert_sampling_float32"]
                     if timings["captum"] else None, "own_region_share": float(np.mean([r.own for r in results])),
                     "regions_per_input": float(np.mean([r.regions for r in results]))}
        print(f"{name}: {json.dumps(out[name])}", flush=True)
    return out


def speed_section(names, inputs: int, samples: int, budget: int) -> dict:
    """Inputs/s: lrcert's default analysis, an autograd loop, lrcert's sampling alone, Captum."""
    out = {}
    rate = _matmul_rate()
    for name, box in names:
        network, twin, x = load(name)
        x = x[:inputs]
        twin32 = twin.float()
        timings = {}
        started = time.perf_counter()
        results = Stability(network, eps=EPS, box=box, samples=samples, budget=budget).run(x)
        timings["lrcert_default"] = time.perf_counter() - started
        timings["autograd_loop"] = _loop(twin32, x, [r.target for r in results], Ball("linf", EPS, box), samples + budget // 2)
        default = Stability(network, eps=EPS, box=box, samples=samples, budget=budget)
        float32 = Stability(network, eps=EPS, box=box, samples=samples, budget=budget, dtype=torch.float32)
        captum = lambda: _captum_timing(twin32, x, [r.target for r in results], Ball("linf", EPS, box), samples)  # noqa: E731
        timings.update(_side_by_side({"lrcert_sampling_float32": lambda: _sampling(float32, x),
                                      "lrcert_sampling_default": lambda: _sampling(default, x), "captum": captum}))
        flops = _pass_flops(twin32, x[:1]) * samples
        out[name] = {"seconds": timings, "inputs": len(x), "samples": samples, "budget": budget,
                     "inputs_per_second": {k: len(x) / v for k, v in timings.items() if v},
                     "default_over_loop": timings["autograd_loop"] / timings["lrcert_default"],
                     "sampling_float32_over_captum": (timings["captum"] / timings["lrcert_sampling_float32"]) if timings["captum"] else None,
                     "sampling_share_of_machine_limit": flops * len(x) / timings["lrcert_sampling_float32"] / rate,
                     "own_region_share": float(np.mean([r.own for r in results])),
                     "regions_per_input": float(np.mean([r.regions for r in results]))}
        print(f"{name}: {json.dumps({k: v for k, v in out[name].items() if k != 'seconds'})}", flush=True)
    return {"float32_matmul_gflops": rate / 1e9, "models": out}


def _side_by_side(measures: dict, repeats: int = 5) -> dict:
    """Each measure's median over ``repeats`` rounds, the measures taking turns in every round (the
    machine's speed drifts: side by side, each sees the same drift)."""
    found = {name: [] for name in measures}
    for _ in range(repeats):
        for name, measure in measures.items():
            found[name].append(measure())
    return {name: None if values[0] is None else float(np.median(values)) for name, values in found.items()}


def _loop(model, x, targets, ball: Ball, count: int) -> float:
    """A user's loop: per input, per sampled point, one forward and one backward pass (float32)."""
    started = time.perf_counter()
    for row, target in zip(x.float(), targets):
        leaf = row[None].clone().requires_grad_(True)
        (g0,) = torch.autograd.grad(model(leaf).reshape(1, -1)[0, target], leaf)
        lo, hi = ball.interval(row[None])
        worst, total = 0.0, 0.0
        for _ in range(count):
            point = (lo + torch.rand_like(lo) * (hi - lo)).requires_grad_(True)
            (g,) = torch.autograd.grad(model(point).reshape(1, -1)[0, target], point)
            d = float((g - g0).abs().sum())
            worst, total = max(worst, d), total + d
    return time.perf_counter() - started


def _sampling(analysis: Stability, x: torch.Tensor) -> float:
    """lrcert's sampling stage alone (:func:`lrcert.stability.expected.expectation`), all inputs."""
    work = analysis.working
    xw = x.to(work.network.dtype)
    weights, _, _ = target_weights(work.outputs(xw), "predicted", None)
    started = time.perf_counter()
    with torch.no_grad():
        g0, pattern0 = work.at(xw, weights)
        expectations.expectation(work, analysis.ball, xw, weights, g0, pattern0, analysis.samples, 0, range(len(x)), 1)
    return time.perf_counter() - started


def _captum_timing(model, x, targets, ball: Ball, samples: int) -> float | None:
    try:
        import captum  # noqa: F401
    except ImportError:
        return None
    started = time.perf_counter()
    for row, target in zip(x, targets):
        captum_max(model, row.float(), target, ball, samples, 1.0)
    return time.perf_counter() - started


def _pass_flops(model, x) -> int:
    """FLOPs of one point's forward and backward (input gradient) pass: twice the forward's, by
    torch's flop counter (the backward to the input runs each product of the forward, transposed)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x.float())
    return 2 * counter.get_total_flops()


def _matmul_rate() -> float:
    a = torch.randn(2048, 2048)
    best = math.inf
    for _ in range(5):
        started = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - started)
    return 2 * 2048**3 / best


def imagenet_section(samples: int, budget: int, device: str = "cpu") -> dict:
    """ResNet-18 at 224², one input: the whole command as a user runs it, and its stages."""
    sys.path.insert(0, str(Path(__file__).parent))
    from large import resnet

    model, x = resnet("resnet18", 224)
    with tempfile.TemporaryDirectory() as folder:
        onnx_path, data = Path(folder) / "resnet18.onnx", Path(folder) / "x.npy"
        torch.onnx.export(model, (x,), str(onnx_path), dynamo=False, input_names=["input"])
        np.save(data, x.numpy())
        command = [sys.executable, "-m", "lrcert.cli", "stability", str(onnx_path), str(data), "--eps", "8/255", "--box", "0,1",
                   "--samples", str(samples), "--budget", str(budget), "-f", "json", "--no-cache", "--device", device]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        whole = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    record = json.loads(done.stdout)["results"][0]
    stages = _stages(lrcert.from_module(model, (3, 224, 224)), x, samples, budget, device)
    return {"whole_command_seconds": whole, "samples": samples, "budget": budget, "device": device, "record": record,
            "stages_seconds": stages}


def _stages(network, x, samples: int, budget: int, device: str) -> dict:
    """The in-process stage timers of one analysis (ε̂, sampling, search, bound, the rest)."""
    import lrcert.stability.analysis as analysis_module

    timers: dict[str, float] = {}

    def timed(module, name, key):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                timers[key] = timers.get(key, 0.0) + time.perf_counter() - started

        setattr(module, name, wrapper)
        return original

    saved = [(expectations, "expectation", timed(expectations, "expectation", "sampling")),
             (searching, "search", timed(searching, "search", "search")),
             (analysis_module.bounds, "distortion_bound", timed(analysis_module.bounds, "distortion_bound", "bound"))]
    try:
        analysis = Stability(network, eps=EPS, box=(0.0, 1.0), samples=samples, budget=budget, device=device)
        run = analysis.engine.run
        analysis.engine.run = lambda *a, **k: _timed_call(timers, "radius", run, *a, **k)
        started = time.perf_counter()
        analysis.run(x.double())
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        timers["total"] = time.perf_counter() - started
    finally:
        for module, name, original in saved:
            setattr(module, name, original)
    return timers


def _timed_call(timers, key, fn, *args, **kwargs):
    started = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    finally:
        timers[key] = time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="*", default=["search", "speed", "imagenet"])
    parser.add_argument("--models", nargs="*", default=[name for name, _ in MODELS])
    parser.add_argument("--inputs", type=int, default=20)
    parser.add_argument("--budget", type=int, default=400)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--device", default="cpu", help="for the imagenet section: cpu or cuda")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    names = [(n, box) for n, box in MODELS if n in args.models and (SHARED / f"{n}.onnx").exists()]
    report = {"machine": {"processor": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}, "eps": EPS}
    if "search" in args.sections:
        report["search"] = search_section(names, args.inputs, args.budget)
    if "speed" in args.sections:
        report["speed"] = speed_section(names, min(args.inputs, 8), args.samples, args.budget)
    if "shared" in args.sections:
        report["shared"] = shared_section(names, min(args.inputs, 8), args.samples)
    if "imagenet" in args.sections:
        report["imagenet"] = imagenet_section(args.samples, args.budget, args.device)
        print(f"imagenet: {json.dumps({k: v for k, v in report['imagenet'].items() if k != 'record'})}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
