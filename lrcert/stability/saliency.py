"""The saliency map and its distortion: g(x') = ∇ₓ(w·f)(x'), the gradient of the target w·f (a
class's logit, w = e_y, or a margin, w = e_c − e_r) at many points, and
Δ(x') = ‖g(x') − g(x)‖ in the distortion norm.

Each point's gradient is one of lrcert's reverse passes: points are batched, each its own row of
one value pass and one backward pass (as many rows at a time as the memory budget holds). The same
value pass records each point's activation pattern, so that points of one linear region, which
share a gradient exactly, can be told apart from the rest (:func:`patterns` alone costs a value
pass, no backward pass).

>>> import torch
>>> from lrcert.models.load import from_module
>>> _ = torch.manual_seed(0)
>>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
>>> saliency = Saliency(from_module(model, (2,)).to("cpu", torch.float64))
>>> g, pattern = saliency.at(torch.zeros(3, 2, dtype=torch.float64), torch.ones(3, 1, dtype=torch.float64))
>>> g.shape, pattern.shape  # one gradient of D = 2 and one byte of pattern (two units) per point
(torch.Size([3, 2]), torch.Size([3, 1]))
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..engine.results import pattern_bytes
from ..errors import LrcertError
from ..network import ir

#: Bytes of activations one batch of reverse passes may hold (a CPU's: ResNet-18 at 224² takes 8 rows
#: at a time, the batch its convolutions run fastest at; a GPU: as the caller's budget says), and on
#: a CPU at most CPU_ROWS rows (more run slower per row once they leave the cache: 2× at 800 rows of
#: a small CNN, measured).
PASS_BYTES, CPU_ROWS = 1 << 30, 64
#: The distortion norms: ‖·‖₁ (the paper's), ‖·‖₂, ‖·‖∞.
ORDERS = {"1": 1, "2": 2, "inf": math.inf}


def distortion(g: Tensor, g0: Tensor, order: float) -> Tensor:
    """‖g − g0‖ over the last axis, in the distortion norm ``order`` (1, 2 or inf)."""
    return torch.linalg.vector_norm(g - g0, order, dim=-1)


def target_weights(outputs: Tensor, target: str | int, labels: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Per input, the weights w of the target w·f over the K outputs, the class it names and the
    rival class (−1 but for a margin): ``predicted`` (the default), ``label`` (the data's labels),
    a class index, or ``margin`` (the predicted class's logit minus the runner-up's at x)."""
    b, k = outputs.shape
    device = outputs.device
    if target == "label":
        if labels is None:
            raise LrcertError("--target label needs labels, and the data have none",
                              fix="use --target predicted, a class number, or data with labels")
        classes = labels.to(device=device, dtype=torch.long)
    elif target == "margin":
        if k < 2:
            raise LrcertError("--target margin needs two outputs or more; this model has one", fix="use --target predicted")
        top = outputs.topk(2, dim=1).indices
        weights = torch.zeros_like(outputs).scatter_(1, top[:, :1], 1.0).scatter_(1, top[:, 1:], -1.0)
        return weights, top[:, 0], top[:, 1]
    elif target == "predicted":
        classes = outputs.argmax(dim=1)
    else:
        if not 0 <= int(target) < k:
            raise LrcertError(f"--target {target} names a class the model lacks (it has {k} outputs: 0 to {k - 1})",
                              fix=f"name a class from 0 to {k - 1}, or use predicted, label or margin")
        classes = torch.full((b,), int(target), dtype=torch.long, device=device)
    weights = torch.zeros_like(outputs).scatter_(1, classes[:, None], 1.0)
    return weights, classes, torch.full_like(classes, -1)


class Saliency:
    """The gradients of the target at batches of points, through ``network`` (its dtype and device)."""

    def __init__(self, network: ir.Network, memory_bytes: int | None = None):
        self.network = network
        self.memory_bytes = memory_bytes or PASS_BYTES
        self.passes = 0  # rows of value passes and of backward passes done (for the budget's account)

    def rows_per_pass(self) -> int:
        """Points one value-and-backward pass holds within the memory budget (and CPU_ROWS on a CPU)."""
        rows = max(1, self.memory_bytes // self.network.reverse_bytes_per_row(self.network.dtype))
        return min(rows, CPU_ROWS) if self.network.device.type == "cpu" else rows

    def outputs(self, x: Tensor) -> Tensor:
        """The network's outputs at ``x``, flattened: (B, K)."""
        with torch.no_grad():
            return self.network.run(x).reshape(len(x), -1)

    def at(self, points: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        """(∇ₓ(w·f) at each point, (P, D); each point's activation pattern as bytes, (P, n)),
        ``weights`` (P, K) one row per point."""
        rows = self.rows_per_pass()
        parts = [self._gradients(points[a : a + rows], weights[a : a + rows]) for a in range(0, len(points), rows)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def patterns(self, points: Tensor) -> Tensor:
        """Each point's activation pattern as bytes, (P, n): a value pass, no backward pass."""
        rows = 4 * self.rows_per_pass()  # (no graph is kept: a value pass holds about a quarter)
        with torch.no_grad():
            return torch.cat([self._value(points[a : a + rows])[1] for a in range(0, len(points), rows)])

    def _value(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """The outputs (P, K) and the activation patterns (P, n) of one value pass."""
        pieces = []

        def record(i: int, layer: ir.Nonlinearity, *z: Tensor) -> Tensor:
            output, piece = layer.apply_and_pieces(*z)
            if piece.dtype != torch.bool:  # (places in a plane: four bytes each, lossless at any size)
                piece = piece.to(torch.int32).contiguous().view(torch.uint8)
            pieces.append(piece.reshape(len(points), -1))
            return output

        output = self.network.run(points, nonlinear=record)
        self.passes += len(points)
        return output.reshape(len(points), -1), _packed(pieces, len(points), points.device)

    def _gradients(self, points: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        leaf = points.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            output, pattern = self._value(leaf)
            (gradient,) = torch.autograd.grad((output * weights).sum(), leaf)
        self.passes += len(points)
        return gradient.reshape(len(points), -1), pattern


def _packed(pieces: list[Tensor], batch: int, device: torch.device) -> Tensor:
    """The pieces as pattern bytes (:func:`lrcert.engine.results.pattern_bytes`); on a CPU by NumPy's
    packbits, the same bytes three times as fast (the memory is the host's already)."""
    if device.type != "cpu":
        return pattern_bytes(pieces, batch, device)
    parts = [np.packbits(p.reshape(batch, -1).numpy(), axis=1) if p.dtype == torch.bool else p.reshape(batch, -1).numpy()
             for p in pieces]
    return torch.from_numpy(np.concatenate(parts, axis=1)) if parts else torch.zeros(batch, 0, dtype=torch.uint8, device=device)
