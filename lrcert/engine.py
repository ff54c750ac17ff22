"""Exact linear-region radii: ε̂(x, p) = min over faces |z(x)| / ‖∇ₓz(x)‖_q, with 1/p + 1/q = 1.

For a batch of inputs the engine

1. evaluates the network once, recording every face value z: each ReLU/LeakyReLU unit's
   pre-activation, and for each max-pool window the gaps ``z_win − z_l`` to its arg-max;
2. freezes that activation pattern and pushes tangents through the frozen, bias-free network:
   starting from the identity over the input's D coordinates, each layer's tangent is that
   layer's Jacobian, so every face gradient g = ∇ₓz comes out of one batched pass per chunk;
3. accumulates ‖g‖₂², ‖g‖₁ and ‖g‖∞ per face over chunks of the D input directions (memory is
   bounded by chunking inputs *and* directions), and takes the minimum ratio per input.

Rules (DESIGN.md): g = 0 is not a face (it never changes in the region); z = 0 with g ≠ 0 gives
ε̂ = 0 (the input sits on a boundary); no face at all gives ε̂ = +∞.

>>> import torch
>>> from lrcert.load import from_module
>>> net = from_module(torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.ReLU()), (2,))
>>> layer = net.layers[1]
>>> layer.weight.copy_(torch.tensor([[3.0, 4.0]])); layer.bias.fill_(-5.0)  # doctest: +ELLIPSIS
tensor(...)
>>> result = certify(net, torch.tensor([[0.0, 0.0]]))[0]
>>> {p: round(r, 6) for p, r in result.radius.items()}  # |−5| / ‖(3, 4)‖_q
{'l1': 1.25, 'l2': 1.0, 'linf': 0.714286}
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from . import ir
from .errors import LrcertError

NORMS = ("l1", "l2", "linf")
#: The dual-norm statistic each p needs: p = 1 → ‖g‖∞, p = 2 → ‖g‖₂, p = ∞ → ‖g‖₁.
DUAL_STATISTIC = {"l1": "max_abs", "l2": "sum_sq", "linf": "sum_abs"}


@dataclass(frozen=True)
class Constraint:
    """The face that binds: which unit, in which layer, and its value z at the input."""

    layer: str
    kind: str
    unit: int
    position: tuple[int, ...]
    value: float
    competitor: tuple[int, ...] | None = None  # max-pool: the window element that would take over
    winner: tuple[int, ...] | None = None  # max-pool: the window's current arg-max

    def as_dict(self) -> dict:
        out = {"layer": self.layer, "kind": self.kind, "unit": self.unit, "position": list(self.position), "z": self.value}
        if self.kind == "maxpool":
            out["winner"] = list(self.winner or ())
            out["competitor"] = list(self.competitor or ())
        return out

    def describe(self) -> str:
        where = ",".join(map(str, self.position))
        if self.kind == "maxpool":
            tie = " (tie)" if self.value == 0 else ""
            return f"{self.layer} window [{where}] vs input [{','.join(map(str, self.competitor or ()))}]{tie}"
        return f"{self.layer} [{where}]"


@dataclass
class InputResult:
    """Everything lrcert knows about one input's linear region."""

    index: int
    prediction: int | None
    radius: dict[str, float]  # +inf when no face exists
    binding: dict[str, Constraint | None]
    pattern: str  # digest of the activation pattern (equal digests: same linear region)
    direction: float | None = None  # largest t with x + t·d in the region (+inf: unbounded)
    direction_binding: Constraint | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Plan:
    """How a run is cut to fit memory: inputs per batch and input directions per tangent pass."""

    batch_size: int
    directions_per_pass: int
    bytes_per_row: int


class Engine:
    """Certifies batches of inputs of one network on one device in one dtype."""

    def __init__(
        self,
        network: ir.Network,
        *,
        norms: Sequence[str] = NORMS,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int | None = None,
        memory_bytes: int | None = None,
    ):
        unknown = [p for p in norms if p not in NORMS]
        if unknown or not norms:
            raise LrcertError(f"unknown norm {unknown[0] if unknown else '(none)'!r}", fix="use l1, l2 or linf")
        if batch_size is not None and batch_size < 1:
            raise LrcertError(f"batch size {batch_size} is not positive", fix="use a batch size of 1 or more")
        self.source = network
        self.network = network.to(device, dtype)
        self.norms = tuple(p for p in NORMS if p in norms)
        self.statistics = sorted({DUAL_STATISTIC[p] for p in self.norms})
        self.device = torch.device(device)
        self.dtype = dtype
        self.nonlinear = network.nonlinear
        self.order = self._tangent_order()
        self.last_use = network.last_uses(self.order)
        self.memory_bytes = memory_bytes or default_memory_bytes(self.device)
        self.requested_batch = batch_size

    # ----------------------------------------------------------------------------------- planning

    def _tangent_order(self) -> list[int]:
        """Layers whose tangent is needed: ancestors of some nonlinearity, and the nonlinearities."""
        layers = self.network.layers
        needed: set[int] = set()
        stack = [j for i in self.nonlinear for j in layers[i].inputs]
        while stack:
            j = stack.pop()
            if j not in needed:
                needed.add(j)
                stack.extend(layers[j].inputs)
        return sorted((needed | set(self.nonlinear)) - {0})

    def plan(self, n_inputs: int) -> Plan:
        """Choose inputs per batch and directions per pass so one tangent pass fits in memory."""
        itemsize = torch.finfo(self.dtype).bits // 8
        rows = max(1, self.memory_bytes // (self.peak_elements_per_row() * itemsize))
        d = self.network.input_size
        if self.requested_batch is not None:
            batch = self.requested_batch
        else:
            batch = max(1, min(n_inputs, 1024, rows // d))
        directions = max(1, min(d, rows // batch))
        return Plan(batch, directions, self.peak_elements_per_row() * itemsize)

    def peak_elements_per_row(self) -> int:
        """Largest number of tangent elements alive at once, per (input, direction) row."""
        layers = self.network.layers
        live = {0: self.network.input_size}
        peak = live[0]
        for i in self.order:
            layer = layers[i]
            inputs = sum(layers[j].size for j in set(layer.inputs))
            if isinstance(layer, ir.MaxPool2d):
                windows = layer.size * layer.window_size
                transient = 3 * windows
            elif isinstance(layer, ir.ReLU):
                transient = 2 * inputs
            else:
                transient = 0
            live[i] = layer.size
            peak = max(peak, sum(live.values()) + transient)
            for j in set(layer.inputs):
                if self.last_use.get(j) == i:
                    live.pop(j, None)
        return int(peak * 1.25) + 1

    # ----------------------------------------------------------------------------------- running

    def run(
        self, x: Tensor, *, first_index: int = 0, directions: Tensor | None = None, plan: Plan | None = None
    ) -> list[InputResult]:
        """Certify the inputs ``x`` (shape ``(B, *sample_shape)``) in one batch."""
        plan = plan or self.plan(len(x))
        x = x.to(self.device, self.dtype)
        with torch.no_grad():
            state = _Region(self, x)
            d = self.network.input_size
            eye = torch.eye(d, device=self.device, dtype=self.dtype)
            for start in range(0, d, plan.directions_per_pass):
                rows = eye[start : start + plan.directions_per_pass]
                state.push(rows.reshape(1, len(rows), *self.network.input_shape), accumulate=True)
            del eye
            results = state.results(first_index)
            if directions is not None:
                seeds = directions.to(self.device, self.dtype).reshape(-1, 1, *self.network.input_shape)
                state.push(seeds, accumulate=False)
                state.directional(results)
        return results

    def certify(
        self, batches: Iterable[Tensor], *, n_inputs: int, directions: Tensor | None = None
    ) -> Iterator[list[InputResult]]:
        """Certify a stream of batches; yields each batch's results as soon as they are ready.

        ``directions`` holds one direction per input (``n_inputs`` rows) or one for all (1 row).
        """
        plan = self.plan(n_inputs)
        index = 0
        for x in batches:
            for start in range(0, len(x), plan.batch_size):
                chunk = x[start : start + plan.batch_size]
                d = None
                if directions is not None:
                    d = directions if len(directions) == 1 else directions[index : index + len(chunk)]
                yield self.run(chunk, first_index=index, directions=d, plan=plan)
                index += len(chunk)


class _Region:
    """The activation pattern of one batch, and the face statistics accumulated over passes."""

    def __init__(self, engine: Engine, x: Tensor):
        self.engine = engine
        self.network = engine.network
        self.batch = len(x)
        self.faces: dict[int, Tensor] = {}  # layer -> (B, faces) values z
        self.gain: dict[int, Tensor] = {}  # ReLU layer -> (B, *shape) frozen slopes
        self.argmax: dict[int, Tensor] = {}  # max-pool layer -> (B, ..., C, 1, L) window arg-max
        self.stats: dict[tuple[int, str], Tensor] = {}
        self.rates: dict[int, Tensor] = {}  # layer -> (B, faces) g·d for the directional radius
        self.output = self.network.run(x, nonlinear=self._record)

    def _record(self, i: int, layer: ir.Nonlinearity, z: Tensor) -> Tensor:
        if isinstance(layer, ir.MaxPool2d):
            windows = layer.windows(z, float("-inf"))
            best, arg = windows.max(dim=-2, keepdim=True)
            self.argmax[i] = arg
            self.faces[i] = (best - windows).reshape(self.batch, -1)
            return best.reshape(self.batch, *layer.shape)
        self.gain[i] = layer.gain(z)
        self.faces[i] = z.reshape(self.batch, -1)
        return layer.apply(z)

    def push(self, seeds: Tensor, accumulate: bool) -> None:
        """Push tangents ``seeds`` (shape ``(1 or B, K, *input_shape)``) through the frozen network."""
        layers = self.network.layers
        tangents = {0: seeds}
        for i in self.engine.order:
            layer = layers[i]
            ins = [tangents[j] for j in layer.inputs]
            if isinstance(layer, ir.Affine):
                tangents[i] = layer.apply(ins, offset=False)
            elif isinstance(layer, ir.MaxPool2d):
                windows = layer.windows(ins[0], 0.0)
                lead = (self.batch, windows.shape[1])
                index = self.argmax[i].unsqueeze(1).expand(*lead, *self.argmax[i].shape[1:])
                winner = torch.gather(windows.expand(*lead, *windows.shape[2:]), -2, index)
                self._face_gradients(i, (winner - windows).reshape(*winner.shape[:2], -1), accumulate)
                tangents[i] = winner.reshape(*lead, *layer.shape)
            else:
                self._face_gradients(i, ins[0].reshape(*ins[0].shape[:2], -1), accumulate)
                tangents[i] = self.gain[i].unsqueeze(1) * ins[0]
            for j in set(layer.inputs):
                if self.engine.last_use.get(j) == i:
                    del tangents[j]

    def _face_gradients(self, i: int, g: Tensor, accumulate: bool) -> None:
        """Fold one pass's face gradients ``g`` (shape ``(1 or B, K, faces)``) into the statistics."""
        if not accumulate:
            self.rates[i] = g[:, 0, :].expand(self.batch, -1)
            return
        for stat in self.engine.statistics:
            if stat == "sum_sq":
                part = (g * g).sum(dim=1)
            elif stat == "sum_abs":
                part = g.abs().sum(dim=1)
            else:
                part = g.abs().amax(dim=1)
            key = (i, stat)
            if key not in self.stats:
                self.stats[key] = part.expand(self.batch, -1).clone()
            elif stat == "max_abs":
                torch.maximum(self.stats[key], part, out=self.stats[key])
            else:
                self.stats[key] += part

    # ----------------------------------------------------------------------------------- results

    def _dual(self, i: int, p: str) -> Tensor:
        stat = self.stats[(i, DUAL_STATISTIC[p])].double()
        return stat.sqrt() if p == "l2" else stat

    def results(self, first_index: int) -> list[InputResult]:
        b = self.batch
        radius = {p: torch.full((b,), math.inf, dtype=torch.float64, device=self.output.device) for p in self.engine.norms}
        where = {p: torch.full((b, 2), -1, dtype=torch.long, device=self.output.device) for p in self.engine.norms}
        for i in self.engine.nonlinear:
            z = self.faces[i].double().abs()
            for p in self.engine.norms:
                dual = self._dual(i, p)
                ratio = torch.where(dual > 0, z / torch.where(dual > 0, dual, 1.0), math.inf)
                best, unit = ratio.min(dim=1)
                better = best < radius[p]
                radius[p] = torch.where(better, best, radius[p])
                where[p][better] = torch.stack([torch.full_like(unit, i), unit], dim=1)[better]
        prediction = self._predictions()
        patterns = self._patterns()
        radius = {p: r.cpu().tolist() for p, r in radius.items()}
        where = {p: w.cpu().tolist() for p, w in where.items()}
        out = []
        for k in range(b):
            binding = {p: self.constraint(k, *where[p][k]) if where[p][k][0] >= 0 else None for p in self.engine.norms}
            out.append(
                InputResult(
                    index=first_index + k,
                    prediction=prediction[k] if prediction is not None else None,
                    radius={p: radius[p][k] for p in self.engine.norms},
                    binding=binding,
                    pattern=patterns[k],
                )
            )
        return out

    def directional(self, results: list[InputResult]) -> None:
        """Largest t with x + t·d in the region: min over faces with z·(g·d) < 0 of −z/(g·d)."""
        b = self.batch
        best = torch.full((b,), math.inf, dtype=torch.float64, device=self.output.device)
        where = torch.full((b, 2), -1, dtype=torch.long, device=self.output.device)
        for i in self.engine.nonlinear:
            z = self.faces[i].double()
            rate = self.rates[i].double()
            leaving = (z * rate < 0) | ((z == 0) & (rate != 0))
            steps = torch.where(leaving, -z / torch.where(rate != 0, rate, 1.0), math.inf).abs()
            step, unit = steps.min(dim=1)
            better = step < best
            best = torch.where(better, step, best)
            where[better] = torch.stack([torch.full_like(unit, i), unit], dim=1)[better]
        best, where = best.cpu().tolist(), where.cpu().tolist()
        for k, result in enumerate(results):
            result.direction = best[k]
            result.direction_binding = self.constraint(k, *where[k]) if where[k][0] >= 0 else None

    def constraint(self, k: int, i: int, unit: int) -> Constraint:
        """Name face ``unit`` of layer ``i`` for input ``k``."""
        layer = self.network.layers[i]
        value = float(self.faces[i][k, unit])
        if not isinstance(layer, ir.MaxPool2d):
            return Constraint(layer.name, layer.kind, unit, self._position(layer.in_shapes[0], unit), value)
        in_shape = layer.in_shapes[0]
        kk, windows = layer.window_size, layer.shape[-1] * layer.shape[-2]
        plane, rest = divmod(unit, kk * windows)  # plane = (outer, channel) flattened
        element, window = divmod(rest, windows)
        output = plane * windows + window
        winner = int(self.argmax[i].reshape(self.batch, -1)[k, output])

        def input_position(offset: int) -> tuple[int, ...]:
            oh, ow = divmod(window, layer.shape[-1])
            ki, kj = divmod(offset, layer.kernel[1])
            h = oh * layer.stride[0] - layer.padding[0] + ki * layer.dilation[0]
            w = ow * layer.stride[1] - layer.padding[1] + kj * layer.dilation[1]
            return self._position(in_shape, (plane * in_shape[-2] + h) * in_shape[-1] + w)

        return Constraint(
            layer.name, layer.kind, output, self._position(layer.shape, output), value,
            competitor=input_position(element), winner=input_position(winner),
        )

    def _position(self, shape: tuple[int, ...], flat: int) -> tuple[int, ...]:
        coords = tuple(int(c) for c in np.unravel_index(flat, shape)) if shape else ()
        if self.network.has_batch_axis and shape and shape[0] == 1:
            coords = coords[1:]
        return coords

    def _predictions(self) -> list[int] | None:
        flat = self.output.reshape(self.batch, -1)
        if flat.shape[1] < 2:
            return None
        return flat.argmax(dim=1).cpu().tolist()

    def _patterns(self) -> list[str]:
        """A short digest per input of its activation pattern (ReLU signs, max-pool arg-maxes)."""
        parts = []
        for i in self.engine.nonlinear:
            if i in self.gain:
                parts.append(np.packbits((self.gain[i] == 1).reshape(self.batch, -1).cpu().numpy(), axis=1))
            else:
                parts.append(self.argmax[i].reshape(self.batch, -1).to(torch.int16).cpu().numpy().view(np.uint8))
        if not parts:
            return ["-"] * self.batch
        rows = np.concatenate(parts, axis=1)
        return [hashlib.blake2b(row.tobytes(), digest_size=8).hexdigest() for row in rows]


def default_memory_bytes(device: torch.device) -> int:
    """Memory one tangent pass may use: a quarter of free memory, at most 2 GiB on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    try:
        import os

        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        available = 8 << 30
    return int(min(2 << 30, available // 4))


def certify(
    network: ir.Network,
    x: Tensor | np.ndarray,
    *,
    norms: Sequence[str] = NORMS,
    directions: Tensor | np.ndarray | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    batch_size: int | None = None,
) -> list[InputResult]:
    """Certify every row of ``x`` (shape ``(N, *network.sample_shape)``); see :class:`Engine`."""
    x = torch.as_tensor(x)
    d = None if directions is None else torch.as_tensor(directions)
    engine = Engine(network, norms=norms, device=device, dtype=dtype, batch_size=batch_size)
    results = []
    for batch in engine.certify([x], directions=d, n_inputs=len(x)):
        results.extend(batch)
    return results
