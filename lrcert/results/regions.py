"""Linear regions seen in the large: activation patterns of many points, and a segment walked region by region.

``region_ids`` labels points by activation pattern (equal label ⇔ equal pattern ⇔ same linear
region, up to points exactly on a boundary). ``walk`` follows the segment a → b: from a point
x(t) = a + t·(b − a), the engine's directional radius s is exact, so x(t + s) is the next
boundary; stepping ``STEP`` past it enters the next region. Regions thinner than ``STEP`` (in t)
can be missed; nothing else is approximated.

Two units with faces at x = 1 and x = −2 cut the segment −9 → 9 at t = 7/18 and 10/18:

>>> import torch
>>> from lrcert.models.load import from_module
>>> layer = torch.nn.Linear(1, 2)
>>> with torch.no_grad():
...     _ = layer.weight.copy_(torch.tensor([[1.0], [-1.0]])), layer.bias.copy_(torch.tensor([-1.0, -2.0]))
>>> net = from_module(torch.nn.Sequential(layer, torch.nn.ReLU()), (1,))
>>> crossing = walk(net, torch.tensor([-9.0]), torch.tensor([9.0]))
>>> crossing.regions, [round(t * 18, 6) for t in crossing.breakpoints]
(3, [7.0, 10.0])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..engine import Constraint, Engine, pattern_bytes
from ..network import ir
from ..runtime import devices

STEP = 1e-9  # how far past a boundary (in t) the walk resumes: regions thinner than this are missed


def patterns(network: ir.Network, points: Tensor) -> tuple[np.ndarray, Tensor]:
    """One row of bytes per point, the piece each unit is on (``Nonlinearity.pieces``, packed as
    :func:`lrcert.engine.pattern_bytes` packs them), and the network's outputs (B, outputs), from
    one pass on the network's device; both come to the host together."""
    parts: list[Tensor] = []

    def record(i: int, layer: ir.Nonlinearity, *z: Tensor) -> Tensor:
        parts.append(layer.pieces(*z))
        return layer.apply(*z)

    with torch.no_grad(), devices.exact_float32():
        outputs = network.run(points.to(network.device, network.dtype), record).reshape(len(points), -1)
        rows = pattern_bytes(parts, len(points), outputs.device)
        host = devices.HostCopy({"rows": rows, "outputs": outputs}).arrays()
    return host["rows"], torch.from_numpy(host["outputs"])


def points_per_pass(network: ir.Network) -> int:
    """Points evaluated together: about 4 million activations per layer (32 MB in float64)."""
    return max(16, min(65536, 4_000_000 // max(1, max(layer.size for layer in network.layers))))


def evaluate(network: ir.Network, points: Tensor, known: dict[bytes, int] | None = None) -> tuple[np.ndarray, Tensor]:
    """Per point, a region label, equal exactly when the activation patterns are equal (0, 1,
    2, …), and the network's output (N, outputs); memory-bounded passes. ``known`` (pattern bytes
    → label) keeps the labels of patterns seen before (another picture's) and numbers new ones
    after them; it gains the new ones."""
    chunk = points_per_pass(network)
    passes = [patterns(network, points[i : i + chunk]) for i in range(0, len(points), chunk)]
    rows = np.concatenate([rows for rows, _ in passes])
    unique, inverse = np.unique(rows, axis=0, return_inverse=True)
    labels = inverse.reshape(-1)
    if known is not None:
        labels = np.array([known.setdefault(row.tobytes(), len(known)) for row in unique], dtype=np.int64)[labels]
    return labels, torch.cat([outputs for _, outputs in passes])


def region_ids(network: ir.Network, points: Tensor) -> np.ndarray:
    """Region labels only (see :func:`evaluate`)."""
    return evaluate(network, points)[0]


@dataclass
class Crossing:
    """The regions met along a → b: ``regions`` of them, separated at ``breakpoints`` (t in (0, 1)),
    each with the face that flips there."""

    regions: int
    breakpoints: list[float]
    flips: list[Constraint | None]

    def as_dict(self) -> dict:
        return {
            "regions": self.regions,
            "breakpoints": [
                {"t": t, "flips": flip.as_dict() if flip else None} for t, flip in zip(self.breakpoints, self.flips)
            ],
        }


def walk(network: ir.Network, a: Tensor, b: Tensor, *, device: str | torch.device | None = None) -> Crossing:
    """Every linear region the segment a → b crosses, boundary to boundary (float64), on
    ``device`` (default: the network's)."""
    engine = Engine(network, norms=("linf",), device=device or network.device, dtype=torch.float64, batch_size=1,
                    predictions=False)
    a, d = a.double().reshape(1, -1), (b.double() - a.double()).reshape(1, -1)
    breakpoints: list[float] = []
    flips: list[Constraint | None] = []
    t = 0.0
    while True:
        point = (a + t * d).reshape(1, *network.sample_shape)
        ((step, face),) = engine.along(point, d)
        end = t + step
        if end >= 1.0:
            return Crossing(len(breakpoints) + 1, breakpoints, flips)
        if step > 0:  # 0: on a boundary (a itself, or a region thinner than STEP)
            breakpoints.append(end)
            flips.append(face)
        t = end + STEP
