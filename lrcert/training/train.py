"""Training with the ROLL regulariser, and the statistics of the regions a trained model has.

``fit`` minimises CE(f(x), y) + roll_loss(f, x) (λ = 0: vanilla training) with Adam, on the
model's device (the data moves there one mini-batch at a time), on fixed-size rows or on
sequences of different lengths (a ReLU RNN from ``build_recurrent``);
``region_statistics`` certifies held-out inputs with the engine and returns the paper's table
row: accuracy, distinct activation patterns, ε̂ quantiles. ``save_onnx`` writes a model that
``lrcert certify`` reads.

>>> import torch
>>> _ = torch.manual_seed(0)
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

from ..errors import LrcertError
from ..runtime import devices
from ..runtime.threads import Threads
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
    clip: float | None = None  # the largest gradient norm a step takes (recurrent networks' usual guard), or none
    cosine: bool = False  # the learning rate decays from lr to 0 over the epochs along a half cosine
    threads: int | None = None  # CPU threads (None: auto, chosen again each epoch: lrcert.runtime.threads)

    def check(self) -> None:
        if self.lam < 0 or self.C < 0 or not math.isfinite(self.lam + self.C):
            raise LrcertError(f"--lam {self.lam} / --C {self.C}: both must be finite and ≥ 0", fix="e.g. --lam 2 --C 1")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise LrcertError(f"--{name.replace('_', '-')} {getattr(self, name)} is not positive", fix="use 1 or more")
        if not self.lr > 0:
            raise LrcertError(f"--lr {self.lr} is not positive", fix="e.g. --lr 0.001")
        if self.clip is not None and not self.clip > 0:
            raise LrcertError(f"--clip-norm {self.clip} is not positive", fix="e.g. --clip-norm 1, or leave it out")


def read_labelled(path: str, *, what: str = "training data") -> tuple[Tensor, Tensor, Tensor | None]:
    """``x`` (float32, first axis indexes samples), ``y`` (int64 labels) and, for sequences of
    different lengths, ``lengths`` (int64: x is padded to the longest, its second axis the steps;
    None otherwise) from an .npz file."""
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
            lengths = archive["lengths"] if "lengths" in archive.files else None
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
    if lengths is not None and (lengths.dtype.kind not in "iu" or lengths.shape != (len(x),) or x.ndim < 3
                                or (lengths < 1).any() or (lengths > x.shape[1]).any()):
        raise LrcertError(
            f"{path}: 'lengths' has dtype {lengths.dtype} and shape {lengths.shape} for x of shape {x.shape}",
            fix="give one integer length per sequence, 1 to x.shape[1] (x: (N, steps, features), zero-padded)",
        )
    frames = x.reshape(len(x), -1) if lengths is None else np.where(
        (np.arange(x.shape[1])[None, :] < lengths[:, None]).reshape(*x.shape[:2], *[1] * (x.ndim - 2)), x, 0)
    bad = ~np.isfinite(frames.reshape(len(x), -1)).all(axis=1)
    if bad.any():
        raise LrcertError(f"{path}: sample {int(bad.argmax())} of 'x' holds NaN or Inf", fix="drop or repair it")
    return (torch.from_numpy(np.asarray(x, dtype=np.float32)), torch.from_numpy(y.astype(np.int64)),
            None if lengths is None else torch.from_numpy(lengths.astype(np.int64)))


def split(x: Tensor, y: Tensor, fraction: float, seed: int, lengths: Tensor | None = None) -> tuple[tuple, tuple]:
    """A random (seeded) held-out split: ``fraction`` of the samples, at least one; (x, y) pairs,
    or (x, y, lengths) triples for sequences of different lengths."""
    if not 0 < fraction < 1:
        raise LrcertError(f"--val-fraction {fraction} is not in (0, 1)", fix="e.g. --val-fraction 0.2")
    order = torch.randperm(len(x), generator=torch.Generator(device="cpu").manual_seed(seed), device="cpu")
    held = max(1, int(round(fraction * len(x))))
    if held >= len(x):
        raise LrcertError(f"{len(x)} samples leave nothing to train on", fix="give more samples or a --val file")
    arrays = (x, y) if lengths is None else (x, y, lengths)
    return tuple(a[order[held:]] for a in arrays), tuple(a[order[:held]] for a in arrays)


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


class SequenceClassifier(nn.Module):
    """A ReLU RNN classifier of sequences (N, steps, features): stacked recurrent layers of ``rnn``
    units (one ``nn.RNN`` where the widths are equal), dense ReLU layers of ``hidden`` units on the
    last step's state, and a linear layer to the classes. Recurrent weights start orthogonal, their
    biases at 0 (as orthogonal RNNs such as the paper's scoRNN keep them; ReLU RNNs train stably so)."""

    def __init__(self, features: int, classes: int, rnn: Sequence[int], hidden: Sequence[int] = ()):
        super().__init__()
        if len(set(rnn)) == 1:
            self.rnn = nn.ModuleList([nn.RNN(features, rnn[0], num_layers=len(rnn), nonlinearity="relu", batch_first=True)])
        else:
            widths = [features, *rnn]
            self.rnn = nn.ModuleList(nn.RNN(a, b, nonlinearity="relu", batch_first=True) for a, b in zip(widths, rnn))
        for name, parameter in self.rnn.named_parameters():
            if "weight_hh" in name:
                nn.init.orthogonal_(parameter)
            elif "bias_hh" in name:
                nn.init.zeros_(parameter)
        dense: list[nn.Module] = []
        for a, b in zip([rnn[-1], *hidden], hidden):
            dense += [nn.Linear(a, b), nn.ReLU()]
        self.head = nn.Sequential(*dense, nn.Linear(([rnn[-1], *hidden])[-1], classes))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.rnn:
            x = layer(x)[0]
        return self.head(x[:, -1])


def build_recurrent(features: int, classes: int, *, rnn: Sequence[int], hidden: Sequence[int] = (), seed: int = 0) -> nn.Module:
    """A :class:`SequenceClassifier`, its initial weights from ``seed`` alone (the caller's random
    state left as it was)."""
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(seed)
        return SequenceClassifier(features, classes, rnn, hidden)


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
    train: tuple[Tensor, ...],
    val: tuple[Tensor, ...],
    settings: Settings,
    on_epoch: Callable[[dict], None] = lambda stats: None,
) -> list[dict]:
    """Adam on CE + ROLL, ``settings.epochs`` passes over shuffled mini-batches.

    ``train`` and ``val`` are (x, y), or (x, y, lengths) for sequences of different lengths (x
    padded to the longest: each mini-batch then holds sequences of one length). Trains where the
    model is. After each epoch, ``on_epoch`` gets: mean loss, held-out accuracy, median ε̂₂ of up
    to ``MONITOR_INPUTS`` held-out inputs. Returns those per-epoch records.
    """
    settings.check()
    x, y, lengths = _samples(train)
    val = _samples(val)
    generator = torch.Generator(device="cpu").manual_seed(settings.seed)  # the same run on any device
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.epochs) if settings.cosine else None
    history, cpus = [], Threads(settings.threads)
    for epoch in range(1, settings.epochs + 1):
        with cpus.use():
            history.append(_epoch(model, optimizer, (x, y, lengths), val, settings, generator, epoch))
        if decay is not None:
            decay.step()
        on_epoch(history[-1])
    return history


def _epoch(model: nn.Module, optimizer, train: tuple, val: tuple, settings: Settings, generator, epoch: int) -> dict:
    """One pass over the shuffled mini-batches, then its record (see :func:`fit`)."""
    x, y, lengths = train
    device = devices.of_module(model)
    model.train()
    total = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device: no host sync per step
    for batch in _batches(len(x), lengths, settings.batch_size, generator):
        optimizer.zero_grad()
        inputs, labels = _rows(x, lengths, batch).to(device), y[batch].to(device)
        loss = F.cross_entropy(model(inputs), labels) + roll_loss(
            model, inputs, lam=settings.lam, C=settings.C, gamma=settings.gamma,
            sample_dims=settings.sample_dims, generator=generator,
        )
        loss.backward()
        if settings.clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip)
        optimizer.step()
        total += loss.detach().double() * len(batch)
    model.eval()
    record = {"epoch": epoch, "loss": float(total) / len(x), "accuracy": accuracy(model, *val)}
    monitored = [None if a is None else a[:MONITOR_INPUTS] for a in (val[0], val[2])]
    record["median_l2"] = float(np.median(certified_radii(model, monitored[0], ("l2",), lengths=monitored[1])["l2"]))
    return record


def _samples(samples: tuple) -> tuple[Tensor, Tensor, Tensor | None]:
    """(x, y, lengths or None) of an (x, y) pair or an (x, y, lengths) triple."""
    x, y, *rest = samples
    return x, y, (rest[0] if rest else None)


def _batches(count: int, lengths: Tensor | None, size: int, generator: torch.Generator) -> list[Tensor]:
    """Shuffled mini-batches of row numbers; for sequences of different lengths, each of one length
    (the rows of each length shuffled and cut, then the batches shuffled)."""
    order = torch.randperm(count, generator=generator, device="cpu")
    if lengths is None:
        return list(order.split(size))
    batches = [b for steps in lengths.unique().tolist() for b in order[lengths[order] == steps].split(size)]
    return [batches[k] for k in torch.randperm(len(batches), generator=generator, device="cpu").tolist()]


def _rows(x: Tensor, lengths: Tensor | None, batch: Tensor) -> Tensor:
    """The rows ``batch`` (of one length: cut to it, the padding dropped)."""
    return x[batch] if lengths is None else x[batch][:, : int(lengths[batch[0]])]


def _by_length(count: int, lengths: Tensor | None, size: int = 4096) -> list[Tensor]:
    """Row numbers in order, in batches of at most ``size`` rows of one length each."""
    rows = torch.arange(count)
    if lengths is None:
        return list(rows.split(size))
    return [b for steps in lengths.unique().tolist() for b in rows[lengths == steps].split(size)]


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, lengths: Tensor | None = None) -> float:
    model.eval()
    device = devices.of_module(model)
    correct = torch.zeros((), dtype=torch.long, device=device)
    for batch in _by_length(len(x), lengths):  # bounded memory for any held-out set
        logits = model(_rows(x, lengths, batch).to(device))
        correct += (logits.argmax(1) == y[batch].to(device)).sum()
    return int(correct) / len(x)


def certified_radii(model: nn.Module, x: Tensor, norms: Sequence[str] = ("l1", "l2", "linf"),
                    lengths: Tensor | None = None) -> dict:
    """The engine's exact radii (float64, on the model's device) of every row of ``x`` (each at
    its own length, for sequences), per norm, plus the pattern digests."""
    from ..engine import ByLength, certify
    from ..models.load import from_module

    device = devices.of_module(model)
    if lengths is None:
        network = from_module(model, tuple(x.shape[1:]), source="the trained model")
        results = certify(network, x.double(), norms=norms, dtype=torch.float64, device=device, predictions=False)
    else:
        networks = lambda steps: from_module(model, (steps, *x.shape[2:]), source="the trained model")  # noqa: E731
        engine = ByLength(networks, lengths=lengths.tolist(), norms=norms, dtype=torch.float64, device=device,
                          predictions=False)
        results = engine.certify([row[:n] for row, n in zip(x.double(), lengths.tolist())])
    radii: dict = {p: np.array([r.radius[p] for r in results]) for p in norms}
    radii["pattern"] = [r.pattern for r in results]
    return radii


def region_statistics(model: nn.Module, x: Tensor, y: Tensor, lengths: Tensor | None = None) -> dict:
    """The paper's table row for held-out (x, y): accuracy, distinct patterns, ε̂ quantiles."""
    radii = certified_radii(model, x, lengths=lengths)
    stats = {"accuracy": accuracy(model, x, y, lengths), "inputs": len(x), "patterns": len(set(radii["pattern"]))}
    for p in ("l1", "l2", "linf"):
        stats[p] = {f"p{q}": float(np.percentile(radii[p], q)) for q in (25, 50, 75)} | {"max": float(radii[p].max())}
    return stats


def save_onnx(model: nn.Module, sample_shape: Sequence[int], path: Path) -> None:
    """Write ``model`` as ONNX (dynamic batch axis; a model holding an RNN also a dynamic sequence
    axis, its RNN an ONNX ``RNN`` node, so that every length certifies), atomically."""
    from ..data.arrays import written_atomically

    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise LrcertError(f"cannot write --output {str(path)!r}: folder {str(folder)!r} does not exist", fix="create it first")
    model.eval()
    device = devices.of_module(model)
    axes = {0: "batch", 1: "steps"} if any(isinstance(m, nn.RNNBase) for m in model.modules()) else {0: "batch"}
    with written_atomically(path) as tmp, warnings.catch_warnings(), torch.device(device):  # the exporter's own tensors too
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.zeros(1, *sample_shape, device=device),), tmp, dynamo=False, input_names=["input"],
            output_names=["logits"], dynamic_axes={"input": axes, "logits": {0: "batch"}}, opset_version=13,
        )
