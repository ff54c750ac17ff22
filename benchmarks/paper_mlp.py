"""The paper's MLP as a user runs it: ``lrcert certify model.onnx inputs.npy -o out.json`` with the
default options, 2,048 inputs, against what this machine's matrix products allow for the work.

    python3 benchmarks/paper_mlp.py --json benchmarks/paper-mlp-cpu.json

The model is bench.py's ``paper_mlp`` (784-300-300-300-300-10, random weights), exported to ONNX
with its inputs in a temporary folder. In one process, one after another:

- the whole command (its own process, median of ``--repeats``, the cache of converted networks
  warm) beside ``python -c "import torch"``;
- the certification loop as the command's footer reports it, and the default engine in this
  process (``Engine(network).certify(x)``, auto, screening, the prediction radius);
- the work: the floating-point operations of that engine's run, per dtype, counted by
  torch.utils.flop_counter's formulas (matrix products and convolutions), and the float32 and
  float64 throughput of a 2048² matrix product here. The machine's limit for the run is
  Σ_dtype FLOPs / throughput; the fraction of the limit is that over a time;
- jacrev and jacfwd (bench.py's baselines: every face's gradient, ε̂ alone) on the same inputs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lrcert  # noqa: E402
from bench import BASELINES, paper_mlp  # noqa: E402
from large import matmul_rate  # noqa: E402
from lrcert.engine import Engine  # noqa: E402


class FlopsByDtype(TorchDispatchMode):
    """FLOPs of every operation torch.utils.flop_counter has a formula for, per dtype of its output."""

    def __init__(self):
        super().__init__()
        self.flops: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            dtype = str(out.dtype if isinstance(out, torch.Tensor) else out[0].dtype).split(".")[-1]
            self.flops[dtype] = self.flops.get(dtype, 0) + formula(*args, **(kwargs or {}), out_val=out)
        return out


def wall(command: list[str], repeats: int) -> float:
    """Median wall seconds of ``command`` (after one unmeasured run)."""
    times = []
    for k in range(repeats + 1):
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        if k:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def footer_seconds(command: list[str]) -> float:
    """The certification loop's seconds, from the footer ``certified N inputs in S s``."""
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    line = next(line for line in (done.stderr + done.stdout).splitlines() if line.startswith("certified "))
    return float(line.split(" in ")[1].split(" s")[0])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-inputs", type=int, default=128, help="inputs jacrev and jacfwd are timed on")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    workload = paper_mlp(args.inputs)
    with tempfile.TemporaryDirectory() as folder:
        model, data, out = (Path(folder) / name for name in ("paper_mlp.onnx", "inputs.npy", "out.json"))
        torch.onnx.export(workload.module, workload.inputs[:1], str(model), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})
        np.save(data, workload.inputs.numpy())
        command = [sys.executable, "-m", "lrcert.cli", "certify", str(model), str(data), "-o", str(out)]
        subprocess.run(command, capture_output=True, check=True)  # (the cache of converted networks: warm)
        row = {"inputs": args.inputs, "threads": torch.get_num_threads(),
               "import_torch_s": wall([sys.executable, "-c", "import torch"], args.repeats),
               "command_s": wall(command, args.repeats), "loop_s": footer_seconds(command)}
        network = lrcert.load(model)
    x = workload.inputs.double()
    Engine(network).certify(x[:16])
    started = time.perf_counter()
    Engine(network).certify(x)
    row["engine_s"] = time.perf_counter() - started
    with FlopsByDtype() as counter:
        Engine(network).certify(x)
    row["flops"] = counter.flops
    row["gflops_per_s"] = {name: matmul_rate(getattr(torch, name), "cpu") / 1e9 for name in ("float32", "float64")}
    row["limit_s"] = sum(f / (row["gflops_per_s"].get(d, row["gflops_per_s"]["float64"]) * 1e9)
                         for d, f in counter.flops.items())
    for key in ("command", "loop", "engine"):
        row[f"{key}_fraction"] = row["limit_s"] / row[f"{key}_s"]
    subset = workload.inputs[: args.baseline_inputs]  # (float32, as the module)
    for name in ("jacrev", "jacfwd"):
        method = BASELINES[name]
        method(workload, subset[:8])
        started = time.perf_counter()
        method(workload, subset)
        row[f"{name}_inputs_per_s"] = len(subset) / (time.perf_counter() - started)
    row["engine_inputs_per_s"] = args.inputs / row["engine_s"]
    print(json.dumps(row, indent=1))
    if args.json:
        args.json.write_text(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
