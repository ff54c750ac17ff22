"""Precision flags on real inputs: how many inputs the a-posteriori rounding bound leaves flagged,
against the a-priori screen alone (lrcert before it), and what judging them again costs — both in
one process, the same models and inputs, the default options (``lrcert certify``'s: dtype auto,
the prediction radius, sketching where it pays). The cost is given two ways: the whole runs'
times (the fastest of ``--repeats``, alternating which way goes first: on a shared 2-core machine
they move by ±15 % between runs), and the share of the judged run spent judging (all of
``Outcome._judged_again``: both stages and their bookkeeping; the largest over the repeats), which
such noise does not move; and how many faces the recomputation (``compensated``) cleared.

    python3 benchmarks/precision_flags.py --json benchmarks/precision-flags-cpu.json
    python3 benchmarks/precision_flags.py --models resnet18 mobilenet_v2 --repeats 1   # ImageNet size only
    python3 benchmarks/precision_flags.py --models resnet18 mobilenet_v2 resnet50 --crops 5 --flags-only  # 10 inputs each

Inputs: the shipped Japanese Vowels models on their 370 test utterances (real speech), and
ImageNet-size networks at 224² on the two real photographs scikit-learn ships (``china.jpg``,
``flower.jpg``; resized, ImageNet-normalised): torchvision's ResNet-18 and ResNet-50 and
MobileNet-V2 (ReLU6), random weights with batch-norm statistics set as a trained network would have
them (``large.resnet``), eval mode. No trained ImageNet weights install offline.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import lrcert
from lrcert.engine import compensated
from lrcert.engine import results as outcomes

sys.path.insert(0, str(Path(__file__).parent))
from large import resnet, set_batch_norm_statistics  # noqa: E402

MODELS = Path(__file__).resolve().parents[1] / "models"


def photographs(size: int = 224, crops: int = 1) -> torch.Tensor:
    """scikit-learn's two sample photographs, resized to size², ImageNet-normalised: of each, the
    centre square, then (``crops`` > 1) squares of 3/4 its side at its corners, in turn."""
    from sklearn.datasets import load_sample_images

    images = []
    for image in load_sample_images().images:
        h, w, _ = image.shape
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        small = 3 * side // 4
        squares = [(top, left, side)] + [(top + dy * (side - small), left + dx * (side - small), small)
                                         for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1))]
        for y, x, s in squares[:crops]:
            crop = torch.from_numpy(image[y : y + s, x : x + s].copy()).float() / 255
            images.append(torch.nn.functional.interpolate(crop.permute(2, 0, 1)[None], size=(size, size), mode="bilinear")[0])
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return (torch.stack(images) - mean) / std


def mobilenet() -> torch.nn.Module:
    """torchvision's MobileNet-V2 (ReLU6), batch-norm statistics set as :func:`large.resnet` sets them."""
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torchvision.models.mobilenet_v2(weights=None).eval()
    set_batch_norm_statistics(model, torch.Generator().manual_seed(0))
    return model


def run(model, x, judged: bool) -> tuple[int, float, list, float, int, int]:
    """Certify with the default options; the a-priori screen alone where not ``judged``. Also the
    seconds spent judging flagged faces again (all of ``Outcome._judged_again``, its bookkeeping
    included), how many faces were recomputed (:func:`compensated.face_value`), and how many
    inputs the screen flagged (either way)."""
    original_judge, original_screen = outcomes.Outcome._judged_again, outcomes.Outcome._screened
    original_recompute = compensated.face_value
    screened, judging, recomputed = [0], [0.0], [0]

    def counted(self, host):
        flags = original_screen(self, host)
        screened[0] += int(flags.sum())
        return flags

    def timed_judge(self, host):
        start = time.perf_counter()
        try:
            return original_judge(self, host)
        finally:
            judging[0] += time.perf_counter() - start

    def counted_recompute(*args):
        recomputed[0] += 1
        return original_recompute(*args)

    compensated.face_value = counted_recompute
    outcomes.Outcome._screened = counted
    outcomes.Outcome._judged_again = timed_judge if judged else counted
    try:
        start = time.perf_counter()
        results = lrcert.certify(model, x)
        seconds = time.perf_counter() - start
    finally:
        outcomes.Outcome._judged_again, outcomes.Outcome._screened = original_judge, original_screen
        compensated.face_value = original_recompute
    return (sum(r.precision_warning for r in results), seconds, [r.radius for r in results], judging[0], recomputed[0],
            screened[0])


def cases(names: list[str], crops: int = 1):
    """(name, model, inputs) for each case asked for."""
    data = np.load(MODELS / "japanese_vowels" / "test.npz")
    utterances = [data["x"][k, :n] for k, n in enumerate(data["lengths"])]
    for name in names:
        if name.startswith("jv-"):
            yield name, str(MODELS / "japanese_vowels" / f"{name[3:]}.onnx"), utterances
        elif name == "mobilenet_v2":
            yield name, mobilenet(), photographs(crops=crops)
        else:
            yield name, resnet(name, 224)[0], photographs(crops=crops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["jv-vanilla", "jv-roll_lam0.2_C1", "jv-roll_lam0.4_C1",
                                                        "resnet18", "mobilenet_v2", "resnet50"])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each way (the fastest counts)")
    parser.add_argument("--crops", type=int, default=1, choices=range(1, 6),
                        help="squares of each photograph: the centre one, then up to four corner ones")
    parser.add_argument("--flags-only", action="store_true",
                        help="one judged run per model: the flags both ways (the screen's counted in it), no timing")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    for name, model, x in cases(args.models, args.crops):
        if args.flags_only:
            after, seconds, _, spent, recomputed, before = run(model, x, judged=True)
            rows.append({"model": name, "inputs": len(x), "flagged_a_priori": before, "flagged_judged": after,
                         "seconds_judged": round(seconds, 2), "judging_share": round(spent / seconds, 4),
                         "faces_recomputed": recomputed})
            print(f"{name:>20}: {len(x):4d} inputs, flagged {before:4d} a priori → {after:4d} judged "
                  f"({recomputed} faces recomputed; judging {spent / seconds:.1%} of {seconds:.0f} s)", flush=True)
            continue
        if args.repeats > 1:
            run(model, x, judged=True)  # (a warm-up: the model's first read and conversion)
        flagged, times, radii, judging = {}, {False: [], True: []}, {}, []
        for repeat in range(args.repeats):
            for judged in ((True, False) if repeat % 2 else (False, True)):  # (alternating which goes first)
                flagged[judged], seconds, radii[judged], spent, recomputed, _ = run(model, x, judged)
                times[judged].append(seconds)
                if judged:
                    judging.append(spent / seconds)
        assert radii[False] == radii[True]  # (the flag is judged again; the radii are untouched)
        before, after, t_before, t_after = flagged[False], flagged[True], min(times[False]), min(times[True])
        rows.append({"model": name, "inputs": len(x), "flagged_a_priori": before, "flagged_judged": after,
                     "seconds_a_priori": round(t_before, 2), "seconds_judged": round(t_after, 2),
                     "time_ratio": round(t_after / t_before, 3), "judging_share": round(max(judging), 4),
                     "faces_recomputed": recomputed})
        print(f"{name:>20}: {len(x):4d} inputs, flagged {before:4d} a priori → {after:4d} judged; "
              f"{t_before:7.1f} s → {t_after:7.1f} s (× {t_after / t_before:.2f}; judging: {max(judging):.1%} of the run, "
              f"{recomputed} faces recomputed)",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
