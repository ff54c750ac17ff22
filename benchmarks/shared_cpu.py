"""lrcert on a shared CPU: the whole command, quiet and beside one busy process, against one thread.

    python3 benchmarks/shared_cpu.py                        # median of 3 runs each
    python3 benchmarks/shared_cpu.py --json benchmarks/shared-cpu.json

The workload is issue 32's: the paper's 784-300×4-10 ReLU MLP (random weights, ONNX) on 1,024
inputs, ``lrcert certify MODEL X.npy -f jsonl -o /dev/null`` with the default options, each run its
own process. Every configuration runs quiet and beside one competing busy process (a Python loop,
``while True: pass``, on the same CPUs), the configurations interleaved within each repeat so that
they see the same machine: the default (auto threads), ``--threads 1``, and ``--threads N`` for N
the CPUs this process may use (what lrcert did before it looked at the load: PyTorch's default).
The target: busy, the default is never slower than one thread.
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
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_workload(folder: Path, inputs: int) -> tuple[Path, Path]:
    """The paper's MLP as ONNX, and ``inputs`` random images in [0, 1]."""
    import numpy as np
    import torch
    from torch import nn

    torch.manual_seed(0)
    widths = [784, 300, 300, 300, 300]
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    module = nn.Sequential(*layers, nn.Linear(300, 10)).eval()
    model, data = folder / "paper_mlp.onnx", folder / "x.npy"
    torch.onnx.export(module, (torch.zeros(1, 784),), str(model), dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "N"}})
    np.save(data, np.random.default_rng(1).random((inputs, 784), dtype=np.float32))
    return model, data


@contextmanager
def busy_process(enabled: bool):
    """One competing process that keeps a CPU busy (``while True: pass``), while inside."""
    if not enabled:
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(1.0)  # (running, and seen by the scheduler, before the measured command starts)
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def run_once(model: Path, data: Path, threads: str | None) -> float:
    """Seconds of one whole ``lrcert certify`` process (failing loudly if it fails)."""
    command = [sys.executable, "-m", "lrcert.cli", "certify", str(model), str(data), "-f", "jsonl", "-o", os.devnull]
    if threads is not None:
        command += ["--threads", threads]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("OMP_NUM_THREADS", None)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"lrcert failed: {done.stderr.strip()}")
    return elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--inputs", type=int, default=1024)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from lrcert.runtime.threads import allowed_cpus

    cpus = allowed_cpus()
    configurations = {"default (auto)": None, "--threads 1": "1", f"--threads {cpus} (all CPUs)": str(cpus)}
    times: dict[str, dict[str, list[float]]] = {load: {name: [] for name in configurations} for load in ("quiet", "busy")}
    with tempfile.TemporaryDirectory() as folder:
        model, data = make_workload(Path(folder), args.inputs)
        run_once(model, data, "1")  # (warm the file cache)
        for repeat in range(args.repeats):
            for load in ("quiet", "busy"):
                with busy_process(load == "busy"):
                    for name, threads in configurations.items():
                        times[load][name].append(run_once(model, data, threads))
                        print(f"repeat {repeat + 1}, {load}, {name}: {times[load][name][-1]:.2f} s", flush=True)
    medians = {load: {name: statistics.median(values) for name, values in by.items()} for load, by in times.items()}
    print(f"\npaper MLP, {args.inputs} inputs, whole command, median of {args.repeats}; {cpus} CPUs allowed")
    print(f"{'':28}{'quiet':>10}{'busy':>10}{'busy ÷ quiet':>14}")
    for name in configurations:
        quiet, busy = medians["quiet"][name], medians["busy"][name]
        print(f"{name:28}{quiet:9.2f}s{busy:9.2f}s{busy / quiet:13.2f}×")
    one = medians["busy"]["--threads 1"]
    verdict = {load: medians[load]["default (auto)"] / medians[load]["--threads 1"] for load in medians}
    print(f"default ÷ one thread: quiet {verdict['quiet']:.2f}, busy {verdict['busy']:.2f} (target: busy ≤ 1)")
    if args.json:
        import torch

        report = {"workload": f"paper_mlp 784-300x4-10, {args.inputs} inputs, lrcert certify -f jsonl",
                  "cpus_allowed": cpus, "torch": torch.__version__, "repeats": args.repeats, "seconds": times,
                  "median_seconds": medians, "default_over_one_thread": verdict, "busy_one_thread_seconds": one,
                  "date": time.strftime("%Y-%m-%d")}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
