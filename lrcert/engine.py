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
#: Inputs per batch when the caller does not say (value pass, results and Python overhead).
DEFAULT_BATCH = 256
CPU_PASS_BYTES = 16 << 20
#: Gathering one active column costs about this many multiply-adds (measured, 2-core CPU).
GATHER_COST = 200
#: Faces within PRECISION_MARGIN · u · (their terms' magnitude) of 0 get a precision warning.
PRECISION_MARGIN = 1000
#: Below this many directions per pass, the fixed cost of gathering per pass outweighs the saving.
MIN_SKIP_DIRECTIONS = 256


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
    precision_warning: bool = False  # a binding face so close to 0 that rounding in this dtype may move ε̂
    direction: float | None = None  # largest t with x + t·d in the region (+inf: unbounded)
    direction_binding: Constraint | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Plan:
    """How a run is cut to fit memory.

    ``batch_size`` inputs share one value pass and one set of results; their tangents are pushed
    ``group`` inputs at a time, over ``directions_per_pass`` input directions at a time, so that
    one tangent pass holds about ``group · directions_per_pass · bytes_per_row`` bytes.
    """

    batch_size: int
    group: int
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
        skip_inactive: bool = True,
    ):
        unknown = [p for p in norms if p not in NORMS]
        if unknown or not norms:
            raise LrcertError(f"unknown norm {unknown[0] if unknown else '(none)'!r}", fix="use l1, l2 or linf")
        if batch_size is not None and batch_size < 1:
            raise LrcertError(f"batch size {batch_size} is not positive", fix="use a batch size of 1 or more")
        self.network = network.to(device, dtype)
        self.norms = tuple(p for p in NORMS if p in norms)
        self.statistics = sorted({DUAL_STATISTIC[p] for p in self.norms})
        self.device = torch.device(device)
        self.dtype = dtype
        self.nonlinear = network.nonlinear
        self.order = self._tangent_order()
        self.last_use = network.last_uses(self.order)
        self.prefix = self._prefix()
        self.suffix = [i for i in self.order if i not in self.prefix]
        self.memory_bytes = memory_bytes or default_memory_bytes(self.device)
        directions = self._directions_per_pass()
        skip_inactive = skip_inactive and self.device.type == "cpu" and (
            directions == self.network.input_size or directions >= MIN_SKIP_DIRECTIONS
        )
        self.sparse = {  # ReLU → most active units at which skipping the inactive ones still pays
            i: self._skip_limit(i) for i in self.nonlinear if skip_inactive and self._feeds_only_dense(i)
        }
        reach = self._sparse_reach(set(self.sparse))
        self.transposed = {  # Wᵀ of the dense layers fed by those ReLUs: rows gather fast
            j: layer.weight.t().contiguous()
            for j, layer in enumerate(self.network.layers)
            if isinstance(layer, ir.Dense) and set(layer.inputs) & reach
        }
        self.magnitudes = self.network.absolute()  # |parameters|: the scale of each face's rounding error
        self.entries = [
            i for i in self.nonlinear
            if isinstance(network.layers[i], ir.ReLU) and set(network.layers[i].inputs) <= {0, *self.prefix}
        ]
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

    def _prefix(self) -> list[int]:
        """Affine layers before any nonlinearity: their tangents do not depend on the input."""
        prefix: set[int] = set()
        for i in self.order:
            layer = self.network.layers[i]
            if isinstance(layer, ir.Affine) and set(layer.inputs) <= {0} | prefix:
                prefix.add(i)
        return sorted(prefix)

    def _sparse_reach(self, relus: set[int]) -> set[int]:
        """The given ReLUs and the reshapes between them and their dense readers."""
        reach = set(relus)
        for i in self.order:
            layer = self.network.layers[i]
            if isinstance(layer, ir.Reshape) and set(layer.inputs) & reach:
                reach.add(i)
        return reach

    def _feeds_only_dense(self, i: int) -> bool:
        """Whether ReLU ``i`` reaches the rest of the network only through dense layers (maybe via a
        flattening reshape). Then, one input at a time, its inactive units can be skipped entirely."""
        layers = self.network.layers
        if not (isinstance(layers[i], ir.ReLU) and layers[i].negative_slope == 0) or i == self.network.output:
            return False
        readers = [j for j in self.order if i in layers[j].inputs]
        while len(readers) == 1 and isinstance(layers[readers[0]], ir.Reshape):
            reshape = readers[0]
            if reshape == self.network.output or math.prod(layers[reshape].shape[:-1]) != 1:
                return False
            readers = [j for j in self.order if reshape in layers[j].inputs]
        return bool(readers) and all(
            isinstance(layers[j], ir.Dense) and math.prod(layers[j].in_shapes[0][:-1]) == 1 for j in readers
        )

    def _skip_limit(self, i: int) -> int:
        """Skipping pays while the products saved, (n − a)·n_out, outweigh gathering the a active
        columns, which costs about GATHER_COST multiply-adds each (measured on a CPU): skip when
        a < n · n_out / (n_out + GATHER_COST)."""
        layers = self.network.layers
        reach = self._sparse_reach({i})
        n_out = sum(layer.weight.shape[0] for layer in layers if isinstance(layer, ir.Dense) and set(layer.inputs) & reach)
        return int(layers[i].size * n_out / (n_out + GATHER_COST))

    def _bytes_per_row(self) -> int:
        return self.peak_elements_per_row() * (torch.finfo(self.dtype).bits // 8)

    def _directions_per_pass(self) -> int:
        return min(self.network.input_size, max(1, self.memory_bytes // self._bytes_per_row()))

    def plan(self, n_inputs: int) -> Plan:
        """Choose the batch, the group and the directions per pass so one tangent pass fits in memory."""
        rows = max(1, self.memory_bytes // self._bytes_per_row())  # (input, direction) rows per pass
        directions = self._directions_per_pass()
        # one input at a time lets dense layers skip inactive units (worth more than bigger passes on a CPU)
        group = 1 if self.sparse else max(1, rows // directions)
        batch = self.requested_batch or max(1, min(n_inputs, max(group, DEFAULT_BATCH)))
        return Plan(batch, min(group, batch), directions, self._bytes_per_row())

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
            state = _Region(self, x, first_index)
            d = self.network.input_size
            for start in range(0, d, plan.directions_per_pass):
                stop = min(d, start + plan.directions_per_pass)
                identity = torch.zeros(stop - start, d, device=self.device, dtype=self.dtype)
                identity[torch.arange(stop - start), torch.arange(start, stop)] = 1
                state.push(identity.reshape(1, stop - start, *self.network.input_shape), True, plan.group)
            results = state.results(first_index)
            if directions is not None:
                state.push_directions(directions, plan.group)
                state.directional(results)
        return results

    def along(self, x: Tensor, directions: Tensor) -> list[tuple[float, Constraint | None]]:
        """Only the directional radius of each input of ``x`` along its direction (one per input, or
        one for all) and the face that sets it: one tangent pass, no gradient norms."""
        plan = self.plan(len(x))
        with torch.no_grad():
            state = _Region(self, x.to(self.device, self.dtype), 0)
            state.push_directions(directions, plan.group)
            return state.steps()

    def certify(
        self, batches: Iterable[Tensor], *, n_inputs: int, directions: Tensor | None = None, start: int = 0
    ) -> Iterator[list[InputResult]]:
        """Certify a stream of batches; yields each batch's results as soon as they are ready.

        ``directions`` holds one direction per input (``n_inputs`` rows) or one for all (1 row).
        Results are numbered from ``start`` (the stream's first input is input ``start``).
        """
        plan = self.plan(n_inputs)
        index = start
        for x in batches:
            for start in range(0, len(x), plan.batch_size):
                chunk = x[start : start + plan.batch_size]
                d = None
                if directions is not None:
                    d = directions if len(directions) == 1 else directions[index : index + len(chunk)]
                yield self.run(chunk, first_index=index, directions=d, plan=plan)
                index += len(chunk)


@dataclass(frozen=True)
class _ActiveColumns:
    """One input's tangent after a ReLU, kept only on its active units (the rest are exactly 0).

    A dense layer then multiplies by the matching columns of its weight only: the work shrinks
    by the fraction of inactive units.
    """

    values: Tensor  # (1, K, active)
    columns: Tensor  # (active,) flat unit indices

    def through(self, layer: ir.Layer, transposed_weight: Tensor | None) -> "_ActiveColumns | Tensor":
        """Apply a reshape (keeps the flat indices) or a dense layer (``transposed_weight`` = Wᵀ)."""
        if transposed_weight is None:
            return self
        out = torch.matmul(self.values, torch.index_select(transposed_weight, 0, self.columns))
        return out.reshape(*out.shape[:2], *layer.shape)


class _Region:
    """The activation pattern of one batch, and the face statistics accumulated over passes."""

    def __init__(self, engine: Engine, x: Tensor, first_index: int = 0):
        self.engine = engine
        self.network = engine.network
        self.batch = len(x)
        self.faces: dict[int, Tensor] = {}  # layer -> (B, faces) values z
        self.gain: dict[int, Tensor] = {}  # ReLU layer -> (B, *shape) frozen slopes
        self.argmax: dict[int, Tensor] = {}  # max-pool layer -> (B, ..., C, 1, L) window arg-max
        self.stats: dict[tuple[int, str], Tensor] = {}
        self.rates: dict[int, Tensor] = {}  # layer -> (B, faces) g·d for the directional radius
        self.output = self.network.run(x, nonlinear=self._record)
        self._check_finite(first_index)
        self.scale = self._face_scales(x)

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

    def _check_finite(self, first_index: int) -> None:
        """Values beyond the dtype's range (overflow) would give meaningless radii: refuse them."""
        finite = torch.isfinite(self.output.reshape(self.batch, -1)).all(dim=1)
        for i, faces in self.faces.items():
            finite &= ~torch.isnan(faces).any(dim=1)  # +inf gaps are padding; NaN means overflow
        if not bool(finite.all()):
            k = first_index + int((~finite).nonzero()[0])
            raise LrcertError(
                f"the network overflows on input {k}: its values leave the {str(self.engine.dtype)[6:]} range",
                fix="rerun with --dtype float64, or check the input's scale and the model's weights",
            )

    def _check_gradients(self, dual: Tensor, first_index: int) -> None:
        finite = torch.isfinite(dual).all(dim=1)
        if not bool(finite.all()):
            k = first_index + int((~finite).nonzero()[0])
            raise LrcertError(
                f"the gradients overflow on input {k}: they leave the {str(self.engine.dtype)[6:]} range",
                fix="rerun with --dtype float64, or check the model's weights",
            )

    def _face_scales(self, x: Tensor) -> dict[int, Tensor]:
        """Per face, the sum of the magnitudes of the terms that make up z (the network with
        |parameters| on |x|, frozen like x): float rounding of z is a small multiple of it."""
        scales: dict[int, Tensor] = {}

        def nonlinear(i: int, layer: ir.Nonlinearity, magnitude: Tensor) -> Tensor:
            if isinstance(layer, ir.MaxPool2d):
                windows = layer.windows(magnitude, 0.0)
                winner = torch.gather(windows, -2, self.argmax[i])
                scales[i] = (winner + windows).reshape(self.batch, -1)
                return winner.reshape(self.batch, *layer.shape)
            scales[i] = magnitude.reshape(self.batch, -1)
            return self.gain[i] * magnitude

        self.engine.magnitudes.run(x.abs(), nonlinear=nonlinear)
        return scales

    def imprecise(self, k: int, i: int, unit: int) -> bool:
        """Whether face ``unit`` of layer ``i`` is nonzero but within rounding reach of 0 for input ``k``.

        Rounding in a sum of n terms of total magnitude s is at most about n·u·s (u: unit
        roundoff); the margin covers n up to PRECISION_MARGIN. Exact zeros are structural (ties,
        boundaries), not rounding, and are reported as ε̂ = 0.
        """
        z = abs(float(self.faces[i][k, unit]))
        return 0 < z <= PRECISION_MARGIN * torch.finfo(self.engine.dtype).eps * float(self.scale[i][k, unit])

    def push_directions(self, directions: Tensor, group: int) -> None:
        """Push each input's direction d (one per input, or one for all) to get the rates g·d."""
        seeds = directions.to(self.engine.device, self.engine.dtype).reshape(-1, 1, *self.engine.network.input_shape)
        self.push(seeds.expand(self.batch, *seeds.shape[1:]), False, group)

    def push(self, seeds: Tensor, accumulate: bool, group: int) -> None:
        """Push tangents ``seeds`` (shape ``(1 or B, K, *input_shape)``) through the frozen network.

        Shared seeds (the identity) make every layer before the first nonlinearity the same for
        all inputs: that prefix is computed once, the rest in groups of ``group`` inputs, small
        enough to stay in cache.
        """
        engine, layers = self.engine, self.network.layers
        shared = seeds.shape[0] == 1
        base = {0: seeds}
        if shared:
            for i in engine.prefix:
                base[i] = layers[i].apply([base[j] for j in layers[i].inputs], offset=False)
            for i in engine.entries:  # ReLUs reading the prefix: their face gradients are shared too
                self._face_gradients(i, slice(None), base[layers[i].inputs[0]].flatten(2), accumulate)
            read_later = {j for i in engine.suffix for j in layers[i].inputs}
            base = {j: t for j, t in base.items() if j in read_later}
        for start in range(0, self.batch, group):
            rows = slice(start, min(start + group, self.batch))
            tangents = dict(base) if shared else {0: seeds[rows]}
            for i in engine.suffix if shared else engine.order:
                layer = layers[i]
                ins = [tangents[j] for j in layer.inputs]
                if isinstance(ins[0], _ActiveColumns):
                    tangents[i] = ins[0].through(layer, engine.transposed.get(i))
                elif isinstance(layer, ir.Affine):
                    tangents[i] = layer.apply(ins, offset=False)
                elif isinstance(layer, ir.MaxPool2d):
                    windows = layer.windows(ins[0], 0.0)
                    index = self.argmax[i][rows].unsqueeze(1)
                    index = index.expand(len(index), windows.shape[1], *index.shape[2:])
                    winner = torch.gather(windows.expand(len(index), *windows.shape[1:]), -2, index)
                    self._face_gradients(i, rows, (winner - windows).flatten(2), accumulate)
                    tangents[i] = winner.reshape(*index.shape[:2], *layer.shape)
                else:
                    if not (shared and i in engine.entries):
                        self._face_gradients(i, rows, ins[0].flatten(2), accumulate)
                    active = self._active_units(i, rows)
                    if active is not None:
                        tangents[i] = _ActiveColumns(torch.index_select(ins[0].flatten(2), 2, active), active)
                    else:
                        tangents[i] = self.gain[i][rows].unsqueeze(1) * ins[0]
                for j in set(layer.inputs):
                    if engine.last_use.get(j) == i:
                        tangents.pop(j, None)

    def _active_units(self, i: int, rows: slice) -> Tensor | None:
        """The active units of ReLU ``i`` for a one-input group, when skipping the others pays."""
        limit = self.engine.sparse.get(i)
        if limit is None or rows.stop - rows.start != 1:
            return None
        active = self.gain[i][rows].reshape(-1).nonzero().squeeze(1)
        return active if len(active) <= limit else None

    def _face_gradients(self, i: int, rows: slice, g: Tensor, accumulate: bool) -> None:
        """Fold face gradients ``g`` (shape ``(1 or b, K, faces)``) of inputs ``rows`` into the statistics."""
        if not accumulate:
            if i not in self.rates:
                self.rates[i] = torch.zeros(self.batch, g.shape[2], dtype=g.dtype, device=g.device)
            self.rates[i][rows] = g[:, 0, :]
            return
        magnitude = g.abs() if ("sum_abs" in self.engine.statistics or "max_abs" in self.engine.statistics) else None
        for stat in self.engine.statistics:
            key = (i, stat)
            if key not in self.stats:
                self.stats[key] = torch.zeros(self.batch, g.shape[2], dtype=g.dtype, device=g.device)
            target = self.stats[key][rows]
            if stat == "sum_sq":
                target += (g * g).sum(dim=1)
            elif stat == "sum_abs":
                target += magnitude.sum(dim=1)
            else:
                torch.maximum(target, magnitude.amax(dim=1), out=target)

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
                self._check_gradients(dual, first_index)
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
                    precision_warning=any(self.imprecise(k, *where[p][k]) for p in self.engine.norms if where[p][k][0] >= 0),
                )
            )
        return out

    def directional(self, results: list[InputResult]) -> None:
        """Fill each result's directional radius and the face that sets it (see :meth:`steps`)."""
        for result, (step, face) in zip(results, self.steps()):
            result.direction, result.direction_binding = step, face

    def steps(self) -> list[tuple[float, Constraint | None]]:
        """Per input, the largest t with x + t·d in the region, min over faces with z·(g·d) < 0 of
        −z/(g·d), and that face (+inf and None when no face is ahead)."""
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
        return [(best[k], self.constraint(k, *where[k]) if where[k][0] >= 0 else None) for k in range(b)]

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
    """Memory one tangent pass may use.

    On a GPU, 40 % of the free memory (big passes keep it busy). On the CPU, 16 MiB: passes that
    fit in cache run fastest there, and buffers below glibc's mmap threshold are reused instead
    of being faulted in afresh for every pass.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.4)
    return CPU_PASS_BYTES


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
