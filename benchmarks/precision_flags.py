"""Precision flags on real inputs: how many inputs the a-posteriori rounding bound leaves flagged,
against the a-priori screen alone (lrcert before it), and what judging them again costs — both in
one process, the same models and inputs, the default options (``lrcert certify``'s: dtype auto,
the prediction radius, sketching where it pays). The cost is given two ways: the whole runs'
times (the fastest of ``--repeats``, alternating which way goes first: on a shared 2-core machine
they move by ±15 % between runs), and the share of the judged run spent judging (timed inside
``roundoff.face_bounds``; the largest over the repeats), which such noise does not move.

    python3 benchmarks/precision_flags.py --json benchmarks/precision-flags-cpu.json
    python3 benchmarks/precision_flags.py --models resnet18 mobilenet_v2 --repeats 1   # ImageNet size only

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
from lrcert.engine import results as outcomes

sys.path.insert(0, str(Path(__file__).parent))
from large import resnet, set_batch_norm_statistics  # noqa: E402

MODELS = Path(__file__).resolve().parents[1] / "models"


def photographs(size: int = 224) -> torch.Tensor:
    """scikit-learn's two sample photographs, centre-cropped, resized to size², ImageNet-normalised."""
    from sklearn.datasets import load_sample_images

    images = []
    for image in load_sample_images().images:
        h, w, _ = image.shape
        side = min(h, w)
        crop = torch.from_numpy(image[(h - side) // 2 : (h + side) // 2, (w - side) // 2 : (w + side) // 2].copy()).float() / 255
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


def run(model, x, judged: bool) -> tuple[int, float, list, float]:
    """Certify with the default options; the a-priori screen alone where not ``judged``. Also the
    seconds spent judging flagged faces again (inside :func:`roundoff.face_bounds`)."""
    original_judge, original_bounds = outcomes.Outcome._judged_again, outcomes.face_bounds
    judging = [0.0]

    def timed_bounds(*args):
        start = time.perf_counter()
        try:
            return original_bounds(*args)
        finally:
            judging[0] += time.perf_counter() - start

    outcomes.face_bounds = timed_bounds
    if not judged:
        outcomes.Outcome._judged_again = outcomes.Outcome._screened
    try:
        start = time.perf_counter()
        results = lrcert.certify(model, x)
        seconds = time.perf_counter() - start
    finally:
        outcomes.Outcome._judged_again, outcomes.face_bounds = original_judge, original_bounds
    return sum(r.precision_warning for r in results), seconds, [r.radius for r in results], judging[0]


def cases(names: list[str]):
    """(name, model, inputs) for each case asked for."""
    data = np.load(MODELS / "japanese_vowels" / "test.npz")
    utterances = [data["x"][k, :n] for k, n in enumerate(data["lengths"])]
    for name in names:
        if name.startswith("jv-"):
            yield name, str(MODELS / "japanese_vowels" / f"{name[3:]}.onnx"), utterances
        elif name == "mobilenet_v2":
            yield name, mobilenet(), photographs()
        else:
            yield name, resnet(name, 224)[0], photographs()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["jv-vanilla", "jv-roll_lam0.2_C1", "jv-roll_lam0.4_C1",
                                                        "resnet18", "mobilenet_v2", "resnet50"])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each way (the fastest counts)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    for name, model, x in cases(args.models):
        if args.repeats > 1:
            run(model, x, judged=True)  # (a warm-up: the model's first read and conversion)
        flagged, times, radii, judging = {}, {False: [], True: []}, {}, []
        for repeat in range(args.repeats):
            for judged in ((True, False) if repeat % 2 else (False, True)):  # (alternating which goes first)
                flagged[judged], seconds, radii[judged], spent = run(model, x, judged)
                times[judged].append(seconds)
                if judged:
                    judging.append(spent / seconds)
        assert radii[False] == radii[True]  # (the flag is judged again; the radii are untouched)
        before, after, t_before, t_after = flagged[False], flagged[True], min(times[False]), min(times[True])
        rows.append({"model": name, "inputs": len(x), "flagged_a_priori": before, "flagged_judged": after,
                     "seconds_a_priori": round(t_before, 2), "seconds_judged": round(t_after, 2),
                     "time_ratio": round(t_after / t_before, 3), "judging_share": round(max(judging), 4)})
        print(f"{name:>20}: {len(x):4d} inputs, flagged {before:4d} a priori → {after:4d} judged; "
              f"{t_before:7.1f} s → {t_after:7.1f} s (× {t_after / t_before:.2f}; judging: {max(judging):.1%} of the run)",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
