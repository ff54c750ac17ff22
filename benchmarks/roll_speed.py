"""ROLL training cost: exact gradient norms vs the sampled estimate, on image-shaped inputs.

    python benchmarks/roll_speed.py [--samples 128] [--sample-dims 64] [--repeats 3]

Times, in one process on the same data and network (3×32×32 inputs, two 3×3 stride-2 ReLU
convolutions of 16 and 32 channels, a 100-unit dense ReLU layer, 10 classes), one training epoch
of: vanilla cross-entropy (λ = 0); ROLL with exact ‖∇ₓz‖₂ (all D = 3072 input directions); ROLL
with ``--sample-dims`` D' sampled directions (unbiased, γ = 100). Prints seconds per epoch
(median of the repeats) and the ratios exact/sampled and sampled/vanilla.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from lrcert.training.train import Settings, build_network, fit

SHAPE, CLASSES = (3, 32, 32), 10


def epoch_seconds(settings: Settings, data, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        model = build_network(SHAPE, CLASSES, hidden=(100,), conv=(16, 32), seed=0)
        started = time.perf_counter()
        fit(model, data, (data[0][:8], data[1][:8]), settings)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--sample-dims", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    data = (torch.rand(args.samples, *SHAPE, generator=generator), torch.randint(0, CLASSES, (args.samples,), generator=generator))
    base = dict(epochs=1, batch_size=64, seed=0, C=1.0)
    seconds = {
        "vanilla": epoch_seconds(Settings(lam=0.0, **base), data, args.repeats),
        "roll_exact": epoch_seconds(Settings(lam=1.0, **base), data, args.repeats),
        f"roll_sampled_{args.sample_dims}": epoch_seconds(Settings(lam=1.0, sample_dims=args.sample_dims, **base), data, args.repeats),
    }
    sampled = seconds[f"roll_sampled_{args.sample_dims}"]
    print(f"one epoch, {args.samples} images of {'×'.join(map(str, SHAPE))}, batch 64, {torch.get_num_threads()} threads "
          f"(median of {args.repeats}):")
    for name, value in seconds.items():
        print(f"  {name:<20} {value:8.2f} s")
    print(f"  exact / sampled = {seconds['roll_exact'] / sampled:.1f}×; sampled / vanilla = {sampled / seconds['vanilla']:.1f}×")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"seconds_per_epoch": seconds, "samples": args.samples, "sample_dims": args.sample_dims}, handle, indent=2)


if __name__ == "__main__":
    main()
