"""Training with the ROLL regulariser, and the statistics of the regions a trained model has.

``fit`` minimises CE(f(x), y) + roll_loss(f, x) (λ = 0: vanilla training) with Adam, on the
model's device (the data moves there one mini-batch at a time);
``region_statistics`` certifies held-out inputs with the engine and returns the paper's table
row: accuracy, distinct activation patterns, ε̂ quantiles. ``save_onnx`` writes a model that
``lrcert certify`` reads.

>>> import torch
>>> x, y = torch.randn(64, 2), torch.randint(0, 2, (64,))
>>> model = build_network((2,), 2, hidden=(8, 8), seed=0)
>>> history = fit(model, (x, y), (x, y), Settings(epochs=1, lam=1.0))
>>> sorted(history[-1])
['accuracy', 'epoch', 'loss', 'median_l2']
"""

from __future__ import annotations

import math
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import devices
from .errors import LrcertError
from .roll import roll_loss

MONITOR_INPUTS = 256  # held-out inputs certified after each epoch for the progress line


@dataclass(frozen=True)
class Settings:
    """One training run. ``lam = 0`` is vanilla training; the rest are the paper's knobs."""

    lam: float = 0.0
    C: float = 1.0
    gamma: float = 100.0
    sample_dims: int | None = None
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0

    def check(self) -> None:
        if self.lam < 0 or self.C < 0 or not math.isfinite(self.lam + self.C):
            raise LrcertError(f"--lam {self.lam} / --C {self.C}: both must be finite and ≥ 0", fix="e.g. --lam 2 --C 1")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise LrcertError(f"--{name.replace('_', '-')} {getattr(self, name)} is not positive", fix="use 1 or more")
        if not self.lr > 0:
            raise LrcertError(f"--lr {self.lr} is not positive", fix="e.g. --lr 0.001")


def read_labelled(path: str, *, what: str = "training data") -> tuple[Tensor, Tensor]:
    """``x`` (float32, first axis indexes samples) and ``y`` (int64 labels) from an .npz file."""
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise LrcertError(
                f"{path} holds a single array, not an .npz archive of inputs and labels",
                fix="save both: np.savez(path, x=inputs, y=labels)",
            )
        with archive:
            missing = [k for k in ("x", "y") if k not in archive.files]
            if missing:
                raise LrcertError(
                    f"{path} has no array {missing[0]!r} (it holds {', '.join(archive.files) or 'nothing'})",
                    fix="save the inputs as 'x' and the integer labels as 'y': np.savez(path, x=..., y=...)",
                )
            x, y = archive["x"], archive["y"]
    except FileNotFoundError:
        raise LrcertError(f"{what} file {path} does not exist", fix="check the path") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        raise LrcertError(f"{path} is not a readable .npz archive of numbers", fix="write it with numpy.savez(path, x=..., y=...)") from None
    if x.dtype.kind not in "fiu" or x.ndim < 2 or len(x) < 2:
        raise LrcertError(
            f"{path}: 'x' has dtype {x.dtype} and shape {x.shape}", fix="give numbers, one sample per row, 2 or more rows"
        )
    if y.dtype.kind not in "iu" or y.shape != (len(x),) or (y < 0).any():
        raise LrcertError(
            f"{path}: 'y' has dtype {y.dtype} and shape {y.shape}; {len(x)} labels ≥ 0 are needed",
            fix="give one non-negative integer class label per sample",
        )
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if bad.any():
        raise LrcertError(f"{path}: sample {int(bad.argmax())} of 'x' holds NaN or Inf", fix="drop or repair it")
    return torch.from_numpy(np.asarray(x, dtype=np.float32)), torch.from_numpy(y.astype(np.int64))


def split(x: Tensor, y: Tensor, fraction: float, seed: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """A random (seeded) held-out split: ``fraction`` of the samples, at least one."""
    if not 0 < fraction < 1:
        raise LrcertError(f"--val-fraction {fraction} is not in (0, 1)", fix="e.g. --val-fraction 0.2")
    order = torch.randperm(len(x), generator=torch.Generator(device="cpu").manual_seed(seed), device="cpu")
    held = max(1, int(round(fraction * len(x))))
    if held >= len(x):
        raise LrcertError(f"{len(x)} samples leave nothing to train on", fix="give more samples or a --val file")
    return (x[order[held:]], y[order[held:]]), (x[order[:held]], y[order[:held]])


def build_network(
    sample_shape: Sequence[int], classes: int, *, hidden: Sequence[int], conv: Sequence[int] = (), seed: int = 0
) -> nn.Sequential:
    """ReLU network: optional 3×3 stride-2 convolutions (``conv`` channels), then dense layers.

    The first layer reads data rows as they are (an MLP flattens them itself). The initial
    weights come from ``seed`` alone; the caller's random state is left as it was.
    """
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(seed)
        return _layers(sample_shape, classes, hidden, conv)


def _layers(sample_shape: Sequence[int], classes: int, hidden: Sequence[int], conv: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    if conv:
        if len(sample_shape) != 3:
            raise LrcertError(
                f"--conv needs image inputs of shape (channels, height, width), got per-sample shape {tuple(sample_shape)}",
                fix="reshape x to (N, C, H, W), or drop --conv",
            )
        channels, size = sample_shape[0], list(sample_shape[1:])
        for width in conv:
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.ReLU()]
            channels, size = width, [(s + 1) // 2 for s in size]
        features = channels * size[0] * size[1]
    else:
        features = int(np.prod(sample_shape))
    layers.append(nn.Flatten())
    for width in hidden:
        layers += [nn.Linear(features, width), nn.ReLU()]
        features = width
    layers.append(nn.Linear(features, classes))
    return nn.Sequential(*layers)


def fit(
    model: nn.Module,
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    settings: Settings,
    on_epoch: Callable[[dict], None] = lambda stats: None,
) -> list[dict]:
    """Adam on CE + ROLL, ``settings.epochs`` passes over shuffled mini-batches.

    Trains where the model is. After each epoch, ``on_epoch`` gets: mean loss, held-out accuracy,
    median ε̂₂ of up to ``MONITOR_INPUTS`` held-out inputs. Returns those per-epoch records.
    """
    settings.check()
    x, y = train
    device = devices.of_module(model)
    generator = torch.Generator(device="cpu").manual_seed(settings.seed)  # the same run on any device
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    history = []
    for epoch in range(1, settings.epochs + 1):
        model.train()
        total = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device: no host sync per step
        for batch in torch.randperm(len(x), generator=generator, device="cpu").split(settings.batch_size):
            optimizer.zero_grad()
            inputs, labels = x[batch].to(device), y[batch].to(device)
            loss = F.cross_entropy(model(inputs), labels) + roll_loss(
                model, inputs, lam=settings.lam, C=settings.C, gamma=settings.gamma,
                sample_dims=settings.sample_dims, generator=generator,
            )
            loss.backward()
            optimizer.step()
            total += loss.detach().double() * len(batch)
        record = {"epoch": epoch, "loss": float(total) / len(x), "accuracy": accuracy(model, *val)}
        record["median_l2"] = float(np.median(certified_radii(model, val[0][:MONITOR_INPUTS], ("l2",))["l2"]))
        history.append(record)
        on_epoch(record)
    model.eval()
    return history


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    device = devices.of_module(model)
    correct = torch.zeros((), dtype=torch.long, device=device)
    for start in range(0, len(x), 4096):  # bounded memory for any held-out set
        logits = model(x[start : start + 4096].to(device))
        correct += (logits.argmax(1) == y[start : start + 4096].to(device)).sum()
    return int(correct) / len(x)


def certified_radii(model: nn.Module, x: Tensor, norms: Sequence[str] = ("l1", "l2", "linf")) -> dict:
    """The engine's exact radii (float64, on the model's device) of every row of ``x``, per norm,
    plus the pattern digests."""
    from .engine import certify
    from .load import from_module

    network = from_module(model, tuple(x.shape[1:]), source="the trained model")
    results = certify(network, x.double(), norms=norms, dtype=torch.float64, device=devices.of_module(model), predictions=False)
    radii: dict = {p: np.array([r.radius[p] for r in results]) for p in norms}
    radii["pattern"] = [r.pattern for r in results]
    return radii


def region_statistics(model: nn.Module, x: Tensor, y: Tensor) -> dict:
    """The paper's table row for held-out (x, y): accuracy, distinct patterns, ε̂ quantiles."""
    radii = certified_radii(model, x)
    stats = {"accuracy": accuracy(model, x, y), "inputs": len(x), "patterns": len(set(radii["pattern"]))}
    for p in ("l1", "l2", "linf"):
        stats[p] = {f"p{q}": float(np.percentile(radii[p], q)) for q in (25, 50, 75)} | {"max": float(radii[p].max())}
    return stats


def save_onnx(model: nn.Module, sample_shape: Sequence[int], path: Path) -> None:
    """Write ``model`` as ONNX (dynamic batch axis), atomically."""
    from .data import written_atomically

    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise LrcertError(f"cannot write --out {str(path)!r}: folder {str(folder)!r} does not exist", fix="create it first")
    model.eval()
    device = devices.of_module(model)
    with written_atomically(path) as tmp, warnings.catch_warnings(), torch.device(device):  # the exporter's own tensors too
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.zeros(1, *sample_shape, device=device),), tmp, dynamo=False, input_names=["input"],
            output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=13,
        )
