"""What the engine hands back: per input its radii, binding faces (:class:`Constraint`), prediction
and guarantee (:class:`InputResult`), assembled from a batch's result tensors on the host
(:class:`Outcome`), once per batch."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import LrcertError
from ..network import ir
from ..runtime import devices
from . import compensated
from .roundoff import PRECISION_MARGIN, face_bounds


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
    bound: str | None = None  # clip: the bound ("low" or "high") whose kink binds
    step: int | None = None  # a recurrence's face: its time step (the layer's name says it too)
    direction: str | None = None  # and the direction it runs in ("forward" or "reverse")

    def as_dict(self) -> dict:
        out = {"layer": self.layer, "kind": self.kind, "unit": self.unit, "position": list(self.position), "z": self.value}
        if self.kind == "maxpool":
            out["winner"] = list(self.winner or ())
            out["competitor"] = list(self.competitor or ())
        if self.bound is not None:
            out["bound"] = self.bound
        if self.step is not None:
            out["step"], out["direction"] = self.step, self.direction
        return out

    def describe(self) -> str:
        where = ",".join(map(str, self.position))
        if self.kind == "maxpool":
            tie = " (tie)" if self.value == 0 else ""
            return f"{self.layer} window [{where}] vs input [{','.join(map(str, self.competitor or ()))}]{tie}"
        bound = f" at its {self.bound} bound" if self.bound else ""
        if self.step is not None:  # e.g. "rnn.l1.reverse t=7 unit 13"
            return f"{self.layer} unit {self.position[-1] if self.position else self.unit}{bound}"
        return f"{self.layer} [{where}]{bound}"


@dataclass
class Work:
    """What an engine has done so far, counted as it goes (for benchmarks and run notes):
    (input, direction) pairs pushed through tangent passes (dense and sketched), sketched inputs,
    exact face gradients (reverse passes) and, per norm, how many of them that norm's rounds chose
    (a face chosen for several norms is one gradient), exact margin gradients, float32 margin
    gradients screened by the sketch and float32 gradient rows of the bottleneck
    (:func:`.prediction.sketched_margins`), and inputs auto computed again in float64 (:mod:`.precision`)."""

    pushed: int = 0
    sketched: int = 0
    exact: int = 0
    chosen: dict[str, int] = field(default_factory=dict)
    margins: int = 0
    estimated: int = 0
    rows: int = 0
    rerun: int = 0  # inputs auto computed again in float64 (their float32 bounds settled too little)


@dataclass
class InputResult:
    """Everything lrcert knows about one input's linear region."""

    index: int
    prediction: int | None
    radius: dict[str, float]  # +inf when no face exists
    binding: dict[str, Constraint | None]
    pattern: str  # digest of the activation pattern (equal digests: same linear region)
    precision_warning: bool = False  # a binding face so close to 0 that rounding in this dtype may move ε̂
    dtype: str = "float64"  # the precision the radii are exact to: float64 (also under auto), or float32
    direction: float | None = None  # largest t with x + t·d in the region (+inf: unbounded)
    direction_binding: Constraint | None = None
    notes: list[str] = field(default_factory=list)
    #: min over classes j ≠ prediction of m_j / ‖∇(f_c − f_j)‖_q (None: one output, or not computed)
    prediction_radius: dict[str, float] | None = None
    rival: dict[str, int | None] | None = None  # the class j whose margin sets prediction_radius
    adversarial: np.ndarray | None = None  # closest input with another prediction (float64), when exact
    #: The probability that this result is not exact: 0 where it rests on deterministic bounds and
    #: computations alone, else the union bound δ over its sketched faces and margins
    #: (:mod:`lrcert.engine.sketch`): an answer exact with probability ≥ 1 − δ.
    delta: float = 0.0
    source: str | None = None  # where the row came from (an image file, relative to its folder), when known
    label: int | None = None  # the row's class in the data (an ImageFolder, a 'label' column), when known
    length: int | None = None  # the row's steps, for sequences of different lengths (:mod:`.lengths`)

    @property
    def guarantee(self) -> str | float:
        """``"deterministic"``, or δ: the answer is exact with probability at least 1 − δ."""
        return "deterministic" if self.delta == 0 else self.delta

    @property
    def certified_radius(self) -> dict[str, float] | None:
        """min(ε̂, r_pred): within it the prediction provably stays the same."""
        if self.prediction_radius is None:
            return None
        return {p: min(self.radius[p], r) for p, r in self.prediction_radius.items()}

    @property
    def exact_adversarial(self) -> dict[str, bool] | None:
        """r_pred ≤ ε̂: the prediction radius is the exact distance to a different prediction."""
        if self.prediction_radius is None:
            return None
        return {p: r <= self.radius[p] for p, r in self.prediction_radius.items()}



def pattern_bytes(parts: Sequence[Tensor], batch: int, device: torch.device) -> Tensor:
    """An activation pattern as bytes, (B, n) uint8, computed on ``device``, where the parts are:
    each bool part (ReLU signs) packed 8 units to a byte as ``numpy.packbits`` does, each integer
    part (max-pool arg-maxes) two little-endian bytes per window.

    >>> pattern_bytes([torch.tensor([[True, False, True]]), torch.tensor([[1, 258]])], 1, torch.device("cpu"))
    tensor([[160,   1,   0,   2,   1]], dtype=torch.uint8)
    """
    rows = []
    for part in parts:
        part = part.reshape(batch, -1)
        if part.dtype == torch.bool:
            bits = F.pad(part.to(torch.uint8), (0, -part.shape[1] % 8)).reshape(batch, -1, 8)
            shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=device)  # made there: no host copy, no wait
            rows.append((bits << shifts).sum(dim=2, dtype=torch.uint8))
        else:
            rows.append(part.to(torch.int16).contiguous().view(torch.uint8))
    return torch.cat(rows, dim=1) if rows else torch.zeros(batch, 0, dtype=torch.uint8, device=device)


class Outcome:
    """One batch's results on their way to the host; :meth:`results` waits for them and turns
    them into :class:`InputResult` objects (the only per-input work, all on the host)."""

    def __init__(self, region, tensors: dict[str, Tensor]):
        self.network = region.network
        self.engine, self.x, self.tensors = region.engine, region.x, tensors  # (for judging flagged faces again)
        self.norms = region.engine.norms
        self.dtype = region.engine.value_dtype
        self.batch = region.batch
        self.nonlinear = bool(region.engine.nonlinear)
        self.batch_axis = region.network.has_batch_axis
        self.positions: dict[tuple, tuple[int, ...]] = {}  # (shape, flat index) → coordinates, shared by the batch
        self.named: dict[tuple, Constraint] = {}  # (layer, unit, z, winner) → its Constraint, shared by the norms
        self.copy = devices.HostCopy(tensors)

    def results(self, first_index: int) -> list[InputResult]:
        host = self.copy.arrays()
        self._check_finite(host, first_index)
        radius = {p: host[f"{p}.distance"].tolist() for p in self.norms}
        binding = {p: self._constraints(host, p) for p in self.norms}
        prediction = host["prediction"].tolist() if "prediction" in host else [None] * self.batch
        flagged = self._judged_again(host).tolist()
        exact_in = str(self.dtype).split(".")[-1]  # the value dtype: float64 under auto
        delta = host["delta"].tolist() if "delta" in host else [0.0] * self.batch
        if self.nonlinear:
            patterns = [hashlib.blake2b(row.tobytes(), digest_size=8).hexdigest() for row in host["pattern"]]
        else:
            patterns = ["-"] * self.batch
        out = [
            InputResult(
                index=first_index + k,
                prediction=prediction[k],
                radius={p: radius[p][k] for p in self.norms},
                binding={p: binding[p][k] for p in self.norms},
                pattern=patterns[k],
                precision_warning=flagged[k],
                dtype=exact_in,
                delta=delta[k],
            )
            for k in range(self.batch)
        ]
        if "ahead.distance" in host:
            for result, (step, face) in zip(out, self._steps(host)):
                result.direction, result.direction_binding = step, face
        if f"{self.norms[0]}.predicted" in host:
            self._predictions(host, out)
        return out

    def _screened(self, host: dict[str, np.ndarray]) -> np.ndarray:
        """Per input, whether the a-priori screen flags a binding face under some norm."""
        return np.logical_or.reduce([host[f"{p}.imprecise"] for p in self.norms])

    def _judged_again(self, host: dict[str, np.ndarray]) -> np.ndarray:
        """Per input, whether a binding face stays flagged. In float64, the faces the a-priori
        screen flags are judged by the bound on the rounding the computation actually did
        (:mod:`.roundoff`): cleared where |ẑ| > PRECISION_MARGIN · E, or E = 0 (a value computed
        without rounding is exact, 0 included); each (input, face) once, whatever the norms it
        binds for, a value and a reverse pass each, on the device, and no wait at all where
        nothing is flagged. Faces that bound cannot clear get their exact value recomputed
        (:meth:`_recomputed`). In float32 the screen's flag stands (rerun with auto)."""
        flagged = self._screened(host)
        if self.dtype != torch.float64 or not flagged.any():
            return flagged
        order = torch.arange(self.batch, device=self.x.device)
        chosen = [self.tensors[f"{p}.imprecise"] for p in self.norms]
        rows = torch.cat([torch.stack([t[c] for t in (order, self.tensors[f"{p}.layer"], self.tensors[f"{p}.unit"])], dim=1)
                          for p, c in zip(self.norms, chosen)])
        keys, where = rows.unique(dim=0, return_inverse=True)  # (input, layer, unit), each once
        reported = torch.empty(len(keys), dtype=torch.float64, device=self.x.device).index_copy_(
            0, where, torch.cat([self.tensors[f"{p}.z"][c] for p, c in zip(self.norms, chosen)]))
        inputs, layers, units = keys.unbind(dim=1)
        value, bound = face_bounds(self.engine, self.x.index_select(0, inputs), layers, units)
        still = ((bound > 0) & (value.abs() <= PRECISION_MARGIN * bound)).cpu()
        if still.any():
            still = self._recomputed(keys.cpu(), reported.cpu(), still)
        return (torch.zeros(self.batch, dtype=torch.long, device="cpu").index_add_(0, inputs.cpu(), still.long()) > 0).numpy()

    def _recomputed(self, keys: Tensor, reported: Tensor, still: Tensor) -> Tensor:
        """``still`` cleared where a face's exact value, computed to 80 bits or more
        (:mod:`.compensated`) at the pattern this batch found, proves the reported ẑ within
        1/PRECISION_MARGIN of it: |ẑ − z̃| + err ≤ |ẑ| / PRECISION_MARGIN. One input at a time,
        for the few faces the running bound leaves undecided."""
        still = still.clone()
        for k in still.nonzero()[:, 0].tolist():
            i, layer, unit = keys[k].tolist()
            try:
                face = compensated.face_value(self.network, self.x[i : i + 1], layer, unit)
            except compensated.Unsupported:
                continue
            pattern = pattern_bytes(face.pieces, 1, self.x.device)[0] if face.pieces else None
            same = pattern is None or torch.equal(pattern, self.tensors["pattern"][i, : len(pattern)])
            still[k] = not (same and face.proves(float(reported[k]), PRECISION_MARGIN))
        return still

    def _predictions(self, host: dict[str, np.ndarray], out: list[InputResult]) -> None:
        radius = {p: host[f"{p}.predicted"].tolist() for p in self.norms}
        rival = {p: host[f"{p}.rival"].tolist() for p in self.norms}
        points = host["adversarial"].astype(np.float64) if "adversarial" in host else None
        for k, result in enumerate(out):
            if not math.isnan(radius[self.norms[0]][k]):  # NaN: a model with one output
                result.prediction_radius = {p: radius[p][k] for p in self.norms}
                result.rival = {p: rival[p][k] if rival[p][k] >= 0 else None for p in self.norms}
            if points is not None:
                result.adversarial = points[k]

    def steps(self) -> list[tuple[float, Constraint | None]]:
        """For :meth:`Engine.along`: per input, the directional radius and the face that sets it."""
        return self._steps(self.copy.arrays())

    def _steps(self, host: dict[str, np.ndarray]) -> list[tuple[float, Constraint | None]]:
        return list(zip(host["ahead.distance"].tolist(), self._constraints(host, "ahead")))

    def _check_finite(self, host: dict[str, np.ndarray], first_index: int) -> None:
        """Values or gradients beyond the dtype's range (overflow) would give meaningless radii: refuse them."""
        dtype = str(self.dtype).split(".")[-1]
        for key, problem, fix in (
            ("values_finite", f"the network overflows on input {{}}: its values leave the {dtype} range",
             "rerun with --dtype float64, or check the input's scale and the model's weights"),
            ("gradients_finite", f"the gradients overflow on input {{}}: they leave the {dtype} range",
             "rerun with --dtype float64, or check the model's weights"),
        ):
            bad = np.flatnonzero(~host[key])
            if len(bad):
                raise LrcertError(problem.format(first_index + int(bad[0])), fix=fix)

    def _constraints(self, host: dict[str, np.ndarray], prefix: str) -> list[Constraint | None]:
        """Each input's binding face under ``prefix`` (a norm, or "ahead"). A face that binds for
        several norms is named once (Constraint is immutable): most of the per-input host work."""
        faces = zip(*(host[f"{prefix}.{key}"].tolist() for key in ("layer", "unit", "z", "winner")))
        out = []
        for face in faces:
            named = self.named.get(face)
            if named is None and face[0] >= 0:
                named = self.named[face] = self.constraint(*face)
            out.append(named)
        return out

    def constraint(self, i: int, unit: int, value: float, winner: int) -> Constraint:
        """Name face ``unit`` of layer ``i``, whose value is ``value`` (``winner``: for a max-pool
        face, the arg-max element of its window)."""
        layer = self.network.layers[i]
        step = self.network.steps.get(layer.name)
        when = {} if step is None else {"step": step.t, "direction": step.direction}
        if isinstance(layer, ir.Clip):  # one block of units per bound
            bound, unit = divmod(unit, layer.size)
            return Constraint(layer.name, layer.kind, unit, self._position(layer.shape, unit), value,
                              bound=layer.kink_names()[bound], **when)
        if not isinstance(layer, ir.MaxPool2d):
            return Constraint(layer.name, layer.kind, unit, self._position(layer.shape, unit), value, **when)
        in_shape = layer.in_shapes[0]
        kk, windows = layer.window_size, layer.shape[-1] * layer.shape[-2]
        plane, rest = divmod(unit, kk * windows)  # plane = (outer, channel) flattened
        element, window = divmod(rest, windows)
        output = plane * windows + window

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
        """The coordinates of flat index ``flat`` in ``shape``, without the model's batch axis."""
        known = self.positions.get((shape, flat))
        if known is None:
            coords, rest = [], flat
            for size in reversed(shape):
                rest, coordinate = divmod(rest, size)
                coords.append(coordinate)
            if self.batch_axis and shape and shape[0] in (1, self.network.rows_per_call):  # row 0 of the call
                coords.pop()
            known = self.positions[(shape, flat)] = tuple(reversed(coords))
        return known


