"""``--dtype auto`` against ``float32`` and ``float64``, side by side in one process.

    python3 benchmarks/auto_precision.py                       # bench.py's workloads, CPU
    python3 benchmarks/auto_precision.py --workloads paper_mlp --repeats 5 --json out.json

For each workload (bench.py's, same inputs): the three dtypes timed alternately (median of
--repeats), how far each is from float64 (worst relative difference of any radius; auto must stay
within 1e-5, in practice float64 rounding), what share of inputs auto refined in float64, how many
candidate faces it reverse-passed per input, and how many inputs it reran whole. Targets (issue 12):
auto ≤ 1.3× the float32 time on the MLPs, ≤ 2× on the conv and residual nets. The engines push
every face's gradient (``screen=False``: the refinement is what is measured); ``--screen`` times
the screening engines instead (lrcert.engine.screen: auto's reverse passes are then float64 ones, and
the candidate counts include screening's exact gradients).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

import bench
from lrcert.engine import precision
from lrcert.runtime.devices import exact_float32
from lrcert.engine import Engine

DTYPES = {"float32": torch.float32, "auto": "auto", "float64": torch.float64}


class Refinements:
    """Counts what auto's refinement does, by wrapping its two steps."""

    def __init__(self):
        self.candidates = self.reruns = 0
        self._exact, self._rerun = precision.exact_ratios, precision._rerun

    def __enter__(self):
        def exact(region, tensors, x, candidates, merge=False):
            self.candidates += len(candidates)
            return self._exact(region, tensors, x, candidates, merge)

        def rerun(region, tensors, x, index):
            self.reruns += len(index)
            return self._rerun(region, tensors, x, index)

        precision.exact_ratios, precision._rerun = exact, rerun
        return self

    def __exit__(self, *exc):
        precision.exact_ratios, precision._rerun = self._exact, self._rerun


def worst_difference(results, reference) -> float:
    worst = 0.0
    for got, want in zip(results, reference):
        for p, b in want.radius.items():
            a = got.radius[p]
            if a != b:
                worst = max(worst, abs(a - b) / abs(b) if b else float("inf"))
    return worst


def measure(w: bench.Workload, args) -> dict:
    x = w.inputs.double()
    engines = {name: Engine(w.network, device=args.device, dtype=dtype, predictions=False, screen=args.screen)
               for name, dtype in DTYPES.items()}

    def run(name):
        results = [r for batch in engines[name].stream([x], n_inputs=len(x)) for r in batch]
        bench._sync(args.device)
        return results

    results = {name: run(name) for name in DTYPES}  # warm-up, and the answers compared below
    with Refinements() as counts:
        run("auto")
    seconds = {name: [] for name in DTYPES}
    for _ in range(args.repeats):
        for name in DTYPES:
            started = time.perf_counter()
            run(name)
            seconds[name].append(time.perf_counter() - started)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    refined = sum(r.dtype == "float64" for r in results["auto"])
    return {
        "workload": w.name,
        "inputs": len(x),
        "seconds": median,
        "inputs_per_s": {name: len(x) / s for name, s in median.items()},
        "auto_over_float32": median["auto"] / median["float32"],
        "auto_over_float64": median["auto"] / median["float64"],
        "worst_vs_float64": {name: worst_difference(results[name], results["float64"]) for name in ("float32", "auto")},
        "refined_share": refined / len(x),
        "candidates_per_refined_input": counts.candidates / max(1, refined),
        "whole_reruns": counts.reruns,
    }


def main(argv=None) -> int:
    names = list(bench.workloads(1, 1, 1))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workloads", nargs="*", default=names, choices=names)
    parser.add_argument("--mlp-inputs", type=int, default=512)
    parser.add_argument("--other-inputs", type=int, default=128)
    parser.add_argument("--big-inputs", type=int, default=16)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--screen", action="store_true", help="time the screening engines (default: every face's gradient)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    report = {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(), "screen": args.screen,
              "workloads": []}
    makers = bench.workloads(args.mlp_inputs, args.other_inputs, args.big_inputs)
    print(f"{'workload':22s} {'inputs':>6s} {'float32/s':>10s} {'auto/s':>9s} {'float64/s':>10s} {'auto÷f32':>9s} "
          f"{'auto÷f64':>9s} {'refined':>8s} {'cand.':>6s} {'reruns':>6s} {'f32 vs f64':>11s} {'auto vs f64':>11s}")
    with exact_float32():
        for name in args.workloads:
            row = measure(makers[name](), args)
            report["workloads"].append(row)
            if args.json:  # after every workload: a stopped run keeps what it measured
                args.json.write_text(json.dumps(report, indent=2))
            rate, worst = row["inputs_per_s"], row["worst_vs_float64"]
            print(f"{name:22s} {row['inputs']:6d} {rate['float32']:10.1f} {rate['auto']:9.1f} {rate['float64']:10.1f} "
                  f"{row['auto_over_float32']:8.2f}× {row['auto_over_float64']:8.2f}× {100 * row['refined_share']:7.0f}% "
                  f"{row['candidates_per_refined_input']:6.1f} {row['whole_reruns']:6d} {worst['float32']:11.1e} "
                  f"{worst['auto']:11.1e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
