"""The small models shipped in models/: checked against their SHA-256, or made again.

    python models/make_models.py            # check every file against models/SHA256SUMS (exit 1 on a mismatch)
    python models/make_models.py --rebuild  # train them again and write SHA256SUMS

The committed files are the reference: the README's example outputs and the tests read them.
Training is seeded and single-threaded, so a rebuild reproduces them on the machine that made
them; another CPU (other vector units, another BLAS path) rounds float32 training differently,
and its files differ in the last bits of the weights (up to about 1e-3 after training): that is
why the files are committed and checked rather than rebuilt.

- moons_mlp.onnx: a 2-32-32-2 ReLU MLP trained on two interleaved half-moons (generated here),
  with 16 held-out points in moons_mlp.inputs.npy.
- bars_cnn.onnx: a small CNN (conv + batch-norm + ReLU + max-pool + residual add + average pool)
  that tells horizontal from vertical bars in noisy 12x12 images (generated here), with 8
  held-out images in bars_cnn.inputs.npy.
- toy2d_vanilla.onnx, toy2d_roll.onnx: the paper's toy experiment: 2-100-100-100-100-2 ReLU nets
  trained on the half-moons without and with the ROLL regulariser (lrcert.training.train), with 200
  held-out points in toy2d.inputs.npy and their labels in toy2d.labels.npy.

- bars_images/ (horizontal/, vertical/: an ImageFolder tree of 8 PNG images, pixels clipped to
  [0, 1]) and moons.csv (16 points, columns x, y and label): data as users keep it, for the
  README's examples of image folders and tables.

models/digits/ is written by experiments/table1_digits.py (the paper's Table 1 on 8×8 digits).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent
TOY_LAMBDA, TOY_EPOCHS = 1.0, 40


def moons(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved half circles with a little noise (labels 0 and 1)."""
    t = rng.uniform(0, np.pi, n)
    label = rng.integers(0, 2, n)
    x = np.where(label == 0, np.cos(t), 1 - np.cos(t))
    y = np.where(label == 0, np.sin(t), 0.5 - np.sin(t))
    points = np.stack([x, y], axis=1) + rng.normal(0, 0.1, (n, 2))
    return points.astype(np.float32), label.astype(np.int64)


def bars(n: int, rng: np.random.Generator, size: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images holding one horizontal (label 0) or vertical (label 1) bar."""
    images = rng.normal(0, 0.15, (n, 1, size, size)).astype(np.float32)
    label = rng.integers(0, 2, n)
    where = rng.integers(1, size - 1, n)
    for k in range(n):
        if label[k] == 0:
            images[k, 0, where[k], :] += 1.0
        else:
            images[k, 0, :, where[k]] += 1.0
    return images, label


class BarsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3)
        self.bn1 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = x + torch.relu(self.conv2(x))
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.head(x)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, steps: int, lr: float = 1e-2) -> float:
    inputs, labels = torch.from_numpy(x), torch.from_numpy(y).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(inputs), labels)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        return float((model(inputs).argmax(1) == labels).float().mean())


def export(model: nn.Module, example: torch.Tensor, name: str) -> None:
    from lrcert.training.train import save_onnx

    save_onnx(model, tuple(example.shape[1:]), HERE / f"{name}.onnx")


SUMS = HERE / "SHA256SUMS"
#: The files the script makes (models/digits/ comes from experiments/table1_digits.py).
EXAMPLES = (*(f"bars_images/{'horizontal' if k % 2 == 0 else 'vertical'}/bar{k}.png" for k in range(8)), "moons.csv")
MADE = ("moons_mlp.onnx", "moons_mlp.inputs.npy", "bars_cnn.onnx", "bars_cnn.inputs.npy", "toy2d.inputs.npy",
        "toy2d.labels.npy", "toy2d_vanilla.onnx", "toy2d_roll.onnx", *EXAMPLES)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check() -> int:
    """0 when every made file matches its line of SHA256SUMS, else 1 (naming the files)."""
    expected = dict(line.split()[::-1] for line in SUMS.read_text().splitlines() if line.strip())
    wrong = [name for name in MADE if not (HERE / name).is_file() or digest(HERE / name) != expected.get(name)]
    if wrong:
        print(f"{', '.join(wrong)} differ from {SUMS.name}: restore them (git checkout models/), or rebuild with --rebuild")
        return 1
    print(f"all {len(MADE)} files match {SUMS.name}")
    return 0


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)  # (the same bits for any thread count on this machine)
    rng = np.random.default_rng(0)

    x, y = moons(600, rng)
    mlp = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    accuracy = train(mlp, x, y, steps=400)
    held_out, _ = moons(16, rng)
    export(mlp, torch.from_numpy(held_out[:1]), "moons_mlp")
    np.save(HERE / "moons_mlp.inputs.npy", held_out)
    print(f"moons_mlp: training accuracy {accuracy:.3f}")

    x, y = bars(512, rng)
    cnn = BarsCNN()
    accuracy = train(cnn, x, y, steps=150)
    held_out, _ = bars(8, rng)
    export(cnn, torch.from_numpy(held_out[:1]), "bars_cnn")
    np.save(HERE / "bars_cnn.inputs.npy", held_out)
    print(f"bars_cnn: training accuracy {accuracy:.3f}")

    toy2d(rng)
    examples()


def examples() -> None:
    """The image folder and the table (their own seed: the files above do not depend on them)."""
    from PIL import Image

    rng = np.random.default_rng(24)
    for k in range(8):  # (as bars() makes them, the classes alternating: both folders hold four)
        image = rng.normal(0, 0.15, (12, 12))
        image[int(rng.integers(1, 11)), :] += 1.0
        image = image if k % 2 == 0 else image.T
        folder = HERE / "bars_images" / ("horizontal" if k % 2 == 0 else "vertical")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(folder / f"bar{k}.png")
    points, labels = moons(16, rng)
    rows = "".join(f"{x:.6f},{y:.6f},{label}\n" for (x, y), label in zip(points, labels))
    (HERE / "moons.csv").write_text("x,y,label\n" + rows)


def toy2d(rng: np.random.Generator) -> None:
    """Vanilla and ROLL 4×100 nets on the half-moons (the paper's Figure 1 setting)."""
    from lrcert.training.train import Settings, build_network, fit, region_statistics, save_onnx

    train_set = tuple(torch.from_numpy(a) for a in moons(1000, rng))
    held_out = tuple(torch.from_numpy(a) for a in moons(200, rng))
    np.save(HERE / "toy2d.inputs.npy", held_out[0].numpy())
    np.save(HERE / "toy2d.labels.npy", held_out[1].numpy())
    for name, lam in (("vanilla", 0.0), ("roll", TOY_LAMBDA)):
        model = build_network((2,), 2, hidden=(100,) * 4, seed=0)
        fit(model, train_set, held_out, Settings(lam=lam, C=1.0, epochs=TOY_EPOCHS, seed=0))
        save_onnx(model, (2,), HERE / f"toy2d_{name}.onnx")
        stats = region_statistics(model, *held_out)
        print(
            f"toy2d_{name} (λ={lam:g}): held-out accuracy {stats['accuracy']:.3f}, {stats['patterns']} patterns among "
            f"{stats['inputs']} points, median ε̂₂ {stats['l2']['p50']:.3g}"
        )


if __name__ == "__main__":
    if "--rebuild" in sys.argv[1:]:
        main()
        SUMS.write_text("".join(f"{digest(HERE / name)}  {name}\n" for name in MADE))
        print(f"wrote {SUMS.name}")
    else:
        sys.exit(check())
