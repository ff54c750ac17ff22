"""Exact linear-region radii: ε̂(x, p) = min over faces |z(x)| / ‖∇ₓz(x)‖_q, with 1/p + 1/q = 1.

For a batch of inputs the engine

1. evaluates the network once, recording every face value z: each ReLU/LeakyReLU unit's
   pre-activation, and for each max-pool window the gaps ``z_win − z_l`` to its arg-max;
2. freezes that activation pattern and pushes tangents through the frozen, bias-free network:
   starting from the identity over the input's D coordinates, each layer's tangent is that
   layer's Jacobian, so every face gradient g = ∇ₓz comes out of one batched pass per chunk;
3. accumulates ‖g‖₂², ‖g‖₁ and ‖g‖∞ per face over chunks of the D input directions (memory is
   bounded by chunking inputs *and* directions), and takes the minimum ratio per input;
4. assembles each batch's results (radii, binding faces, predictions, pattern digests, precision
   flags) as batched tensors on the device and moves them to the host together, once per batch:
   on a GPU there is no synchronisation per input, and the next batch is already queued while
   the host turns the last one into :class:`InputResult` objects.

Rules (DESIGN.md): g = 0 is not a face (it never changes in the region); z = 0 with g ≠ 0 gives
ε̂ = 0 (the input sits on a boundary); no face at all gives ε̂ = +∞. Float32 is true float32
(:func:`lrcert.devices.exact_float32`: no TF32 while the engine computes).

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
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import devices, ir, precision, prediction, screen
from .errors import LrcertError

NORMS = ("l1", "l2", "linf")
#: Inputs per batch when the caller does not say. On the CPU, 256 bounds the value pass and the
#: results; on a GPU, batches are as large as memory allows up to GPU_BATCH, and small enough
#: that the host assembles one batch's results while the GPU computes the next.
DEFAULT_BATCH = 256
GPU_BATCH = 2048
#: Gathering one active column costs about this many multiply-adds (measured, 2-core CPU).
GATHER_COST = 200
#: Faces within PRECISION_MARGIN · u · (their terms' magnitude) of 0 get a precision warning.
PRECISION_MARGIN = 1000
#: Below this many directions per pass, the fixed cost of gathering per pass outweighs the saving.
MIN_SKIP_DIRECTIONS = 256
#: Matrix products shorter than this many rows take more inputs at once where they fit (CPU).
STAGE_ROWS = 4096


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

    def as_dict(self) -> dict:
        out = {"layer": self.layer, "kind": self.kind, "unit": self.unit, "position": list(self.position), "z": self.value}
        if self.kind == "maxpool":
            out["winner"] = list(self.winner or ())
            out["competitor"] = list(self.competitor or ())
        if self.bound is not None:
            out["bound"] = self.bound
        return out

    def describe(self) -> str:
        where = ",".join(map(str, self.position))
        if self.kind == "maxpool":
            tie = " (tie)" if self.value == 0 else ""
            return f"{self.layer} window [{where}] vs input [{','.join(map(str, self.competitor or ()))}]{tie}"
        return f"{self.layer} [{where}]" + (f" at its {self.bound} bound" if self.bound else "")


@dataclass
class InputResult:
    """Everything lrcert knows about one input's linear region."""

    index: int
    prediction: int | None
    radius: dict[str, float]  # +inf when no face exists
    binding: dict[str, Constraint | None]
    pattern: str  # digest of the activation pattern (equal digests: same linear region)
    precision_warning: bool = False  # a binding face so close to 0 that rounding in this dtype may move ε̂
    dtype: str = "float32"  # the precision the radii are exact to: float32, or float64 (also auto's refined inputs)
    direction: float | None = None  # largest t with x + t·d in the region (+inf: unbounded)
    direction_binding: Constraint | None = None
    notes: list[str] = field(default_factory=list)
    #: min over classes j ≠ prediction of m_j / ‖∇(f_c − f_j)‖_q (None: one output, or not computed)
    prediction_radius: dict[str, float] | None = None
    rival: dict[str, int | None] | None = None  # the class j whose margin sets prediction_radius
    adversarial: np.ndarray | None = None  # closest input with another prediction (float64), when exact

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
    """Certifies batches of inputs of one network on one device.

    ``dtype`` float32 or float64 computes everything in that dtype. ``"auto"`` (the default)
    gives float64 results at float32 speed: the value pass (faces, pattern) and the directional
    pass run in float64, the expensive tangent passes in float32, and :mod:`lrcert.precision`
    bounds their rounding and recomputes in float64 exactly the faces it cannot rule out.
    ``predictions`` adds each input's prediction radius and certified radius (:mod:`lrcert.prediction`),
    and ``adversarial_norm`` the closest input with another prediction in that norm. ``progress``
    is called with the number of (input, direction) pairs pushed after each tangent pass: the
    work done, in the unit that matters for a single large input as for many small ones.
    ``screen`` first rules out the faces that cannot bind (:mod:`lrcert.screen`): a few reverse
    passes per input instead of D tangent directions where that pays, the dense way elsewhere.
    """

    def __init__(
        self,
        network: ir.Network,
        *,
        norms: Sequence[str] = NORMS,
        device: str | torch.device | None = "cpu",
        dtype: torch.dtype | str = "auto",
        batch_size: int | None = None,
        memory_bytes: int | None = None,
        skip_inactive: bool = True,
        predictions: bool = True,
        adversarial_norm: str | None = None,
        progress: Callable[[int], None] | None = None,
        screen: bool = True,
    ):
        unknown = [p for p in norms if p not in NORMS]
        if unknown or not norms:
            raise LrcertError(f"unknown norm {unknown[0] if unknown else '(none)'!r}", fix="use l1, l2 or linf")
        if batch_size is not None and batch_size < 1:
            raise LrcertError(f"batch size {batch_size} is not positive", fix="use a batch size of 1 or more")
        if adversarial_norm is not None and adversarial_norm not in norms:
            raise LrcertError(f"adversarial points for {adversarial_norm!r}, a norm not certified", fix=f"add {adversarial_norm} to the norms")
        if dtype not in ("auto", torch.float32, torch.float64):
            raise LrcertError(f"dtype {dtype!r} is not supported", fix="use auto, torch.float32 or torch.float64")
        self.device = devices.resolve(device)
        if dtype == "auto" and precision.float64_outright(network, self.device):
            dtype = torch.float64
        self.auto = dtype == "auto"
        self.dtype = torch.float32 if self.auto else dtype  # of the tangent passes
        self.value_dtype = torch.float64 if self.auto else dtype  # of faces, pattern and directions
        self.network = network.to(self.device, self.value_dtype)
        self.tangent_network = network.to(self.device, self.dtype) if self.auto else self.network
        self.norms = tuple(p for p in NORMS if p in norms)
        self.nonlinear = network.nonlinear
        self.order = self._tangent_order()
        self.last_use = network.last_uses(self.order)
        self.read = {j for i in self.order for j in network.layers[i].inputs}  # layers whose tangent is used
        self.prefix = self._prefix()
        self.suffix = [i for i in self.order if i not in self.prefix]
        #: One fused reduction per dual norm (GPU), or |g| shared by the sum and the max (CPU).
        self.fused_norms = self.device.type == "cuda"
        self.memory_bytes = memory_bytes or devices.memory_budget(self.device)
        directions = self._directions_per_pass()
        skip_inactive = skip_inactive and self.device.type == "cpu" and (
            directions == self.network.input_size or directions >= MIN_SKIP_DIRECTIONS
        )
        self.sparse = {  # ReLU → most active units at which skipping the inactive ones still pays
            i: self._skip_limit(i) for i in self.nonlinear if skip_inactive and self._feeds_only_dense(i)
        }
        self.stages = self._stages()
        reach = self._sparse_reach(set(self.sparse))
        self.transposed = {  # Wᵀ of the dense layers fed by those ReLUs: rows gather fast
            j: layer.weight.t().contiguous()
            for j, layer in enumerate(self.tangent_network.layers)
            if isinstance(layer, ir.Dense) and set(layer.inputs) & reach
        }
        self.magnitudes = self.network.absolute()  # |parameters|: the scale of each face's rounding error
        self.entries = [
            i for i in self.nonlinear
            if isinstance(network.layers[i], ir.Elementwise) and set(network.layers[i].inputs) <= {0, *self.prefix}
        ]
        self.requested_batch = batch_size
        self.progress = progress
        self.predictions = predictions  # the prediction radius (lrcert.prediction) beside ε̂
        self.adversarial_norm = adversarial_norm if predictions else None  # and x* for this norm
        #: Whether batches are screened first (:mod:`lrcert.screen`). It stops for the rest of a
        #: run after a batch whose inputs mostly had to go the dense way (the bounds are loose on
        #: that network): screening them cost a little and saved nothing.
        self.screening = screen and bool(self.nonlinear)
        self._exact: Engine | None = None
        self._cache: dict[str, object] = {}  # computed once, when first needed
        if self.screening:  # where each layer's faces start among all layers' (made here: no host data per batch)
            counts = [0, *(network.layers[i].face_count for i in self.nonlinear)]
            self.face_starts = torch.tensor(counts, device=self.device).cumsum(0)
            self.face_layers = torch.tensor(self.nonlinear, dtype=torch.long, device=self.device)

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
        if layers[i].kind != "relu" or i == self.network.output:
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
        """Choose the batch, the group and the directions per pass so one tangent pass fits in
        memory, and (CPU) the batch so its inputs' state fits in ``devices.cpu_state_budget``."""
        row = self._bytes_per_row()
        if self.device.type == "cuda":
            return self._gpu_plan(n_inputs, row)
        rows = max(1, self.memory_bytes // row)  # (input, direction) rows per pass
        directions = self._directions_per_pass()
        # one input at a time lets dense layers skip inactive units (worth more than bigger passes on a CPU)
        group = 1 if self.sparse else max(1, rows // directions)
        fits = devices.cpu_state_budget() // self.bytes_per_input()  # inputs whose state fits in memory
        batch = self.requested_batch or max(1, min(n_inputs, max(group, DEFAULT_BATCH), fits))
        return Plan(batch, min(group, batch), directions, row)

    def _gpu_plan(self, n_inputs: int, row: int) -> Plan:
        """On a GPU: up to half the memory budget holds the batch's own state (up to GPU_BATCH
        inputs), the rest the tangent passes, with as many directions and inputs per pass as fit."""
        per_input = self.bytes_per_input()
        batch = self.requested_batch or max(1, min(n_inputs, GPU_BATCH, self.memory_bytes // 2 // per_input))
        room = max(row, self.memory_bytes - batch * per_input)
        directions = min(self.network.input_size, max(1, room // row))
        return Plan(batch, max(1, min(batch, room // (row * directions))), directions, row)

    def bytes_per_input(self) -> int:
        """Memory one input of a batch holds while its tangents are pushed: its face values, their
        rounding scales and gradient statistics (float64 copies while results are assembled), the
        activations of the value and magnitude passes, and when screening each face's float64
        floor per norm, a masked copy of them and a mask."""
        faces = self.network.faces
        activations = sum(layer.size for layer in self.network.layers)
        itemsize = torch.finfo(self.value_dtype).bits // 8
        screening = 17 * len(self.norms) * faces if self.screening else 0
        return (faces * (3 + len(self.norms)) + 2 * activations) * itemsize + 3 * 8 * faces + screening

    def peak_elements_per_row(self) -> int:
        """Largest number of tangent elements alive at once, per (input, direction) row: the live
        tangents, a layer's temporaries (a max-pool's padded input and face gradients, a slope
        product), and on a CPU the face statistics' reused buffer (the most face gradients)."""
        return int((max(self._row_peaks()) + self._scratch_elements(self.order)) * 1.25) + 1

    def _row_peaks(self) -> list[int]:
        """Per layer of ``self.order``: the tangent elements alive while it runs, per row (the
        reduction buffer aside)."""
        layers = self.network.layers
        live = {0: self.network.input_size}
        peaks = []
        for i in self.order:
            layer = layers[i]
            inputs = sum(layers[j].size for j in set(layer.inputs))
            if isinstance(layer, ir.MaxPool2d):
                transient = 2 * inputs + layer.face_count
            elif isinstance(layer, ir.Nonlinearity):
                transient = inputs
            else:
                transient = 0
            live[i] = layer.size
            peaks.append(sum(live.values()) + transient)
            for j in set(layer.inputs):
                if self.last_use.get(j) == i:
                    live.pop(j, None)
        return peaks or [self.network.input_size]

    def _scratch_elements(self, walk: Sequence[int]) -> int:
        """The CPU reduction buffer's elements per row for the layers ``walk``: their most faces."""
        faces = [self.network.layers[i].face_count for i in walk if isinstance(self.network.layers[i], ir.Nonlinearity)]
        return 0 if self.fused_norms else max(faces, default=0)

    def _stages(self) -> list[tuple[int, int]]:
        """``[(layer, m), ...]``: from ``layer`` on, the layers take ``m`` times the inputs of the
        stage before in one pass. A stage starts where the tangents have shrunk so that at least
        twice the inputs fit in a pass's working set and the layer's matrix products would be
        short (under STAGE_ROWS rows: directions × inputs × positions of its output), as in
        ResNets' deeper stages; bigger products reuse each weight more. None on a GPU (its passes
        take whole batches) or with inactive units skipped (one input at a time)."""
        if self.device.type == "cuda" or self.sparse:
            return []
        layers, directions = self.network.layers, self._directions_per_pass()
        peaks = self._row_peaks()
        total = max(peaks) + self._scratch_elements(self.order)
        stages, inputs = [], 1  # inputs per pass, in groups
        for position, i in enumerate(self.order):
            if i in self.prefix or position == 0:
                continue
            fit = total // (max(peaks[position:]) + self._scratch_elements(self.order[position:]))
            rows = directions * inputs * math.prod(layers[i].shape[2:])
            if fit >= 2 * inputs and rows < STAGE_ROWS:
                stages.append((i, fit // inputs))
                inputs = fit // inputs * inputs
        return stages

    # ----------------------------------------------------------------------------------- running

    def run(
        self, x: Tensor, *, first_index: int = 0, directions: Tensor | None = None, plan: Plan | None = None
    ) -> list[InputResult]:
        """Certify the inputs ``x`` (shape ``(B, *sample_shape)``) in one batch."""
        return self._launch(x, directions, plan or self.plan(len(x))).results(first_index)

    def along(self, x: Tensor, directions: Tensor) -> list[tuple[float, Constraint | None]]:
        """Only the directional radius of each input of ``x`` along its direction (one per input, or
        one for all) and the face that sets it: one tangent pass, no gradient norms."""
        plan = self.plan(len(x))
        with torch.no_grad(), devices.exact_float32():
            region = _Region(self, x.to(self.device, self.value_dtype))
            region.push_directions(directions, plan.group)
            outcome = _Outcome(region, region.nearest_ahead())
        return outcome.steps()

    def certify(
        self, batches: Iterable[Tensor], *, n_inputs: int, directions: Tensor | None = None, start: int = 0
    ) -> Iterator[list[InputResult]]:
        """Certify a stream of batches; yields each batch's results as soon as they are ready.

        ``directions`` holds one direction per input (``n_inputs`` rows) or one for all (1 row).
        Results are numbered from ``start`` (the stream's first input is input ``start``). Each
        batch is queued on the device before the previous batch's results are assembled.
        """
        plan = self.plan(n_inputs)
        index, pending = start, None
        for x in devices.staged(_chunks(batches, plan.batch_size), self.device, self.value_dtype):
            d = None
            if directions is not None:
                d = directions if len(directions) == 1 else directions[index : index + len(x)]
            launched = (self._launch(x, d, plan), index)
            if pending is not None:
                yield pending[0].results(pending[1])
            pending = launched
            index += len(x)
        if pending is not None:
            yield pending[0].results(pending[1])

    def _launch(self, x: Tensor, directions: Tensor | None, plan: Plan) -> "_Outcome":
        """Queue all of one batch's work on the device, and the copy of its results to the host."""
        with torch.no_grad(), devices.exact_float32():
            region, tensors = self.compute(x, directions, plan)
            return _Outcome(region, tensors)

    def compute(self, x: Tensor, directions: Tensor | None, plan: Plan) -> tuple["_Region", dict[str, Tensor]]:
        """One batch's region and its results as batched tensors on the device (see ``_Region.radii``)."""
        x = x.to(self.device, self.value_dtype)
        region = _Region(self, x)
        tensors = self._screened(region, x, plan) if self.screening else self._dense(region, x, plan)
        if directions is not None:
            region.push_directions(directions, plan.group)
            tensors |= region.nearest_ahead()
        if self.predictions:
            tensors |= self._predictions(x, tensors)
        return region, tensors

    def _dense(self, region: "_Region", x: Tensor, plan: Plan) -> dict[str, Tensor]:
        """The radii from every face's gradient: all D input directions pushed, in chunks."""
        d = self.network.input_size
        for start in range(0, d, plan.directions_per_pass):
            stop = min(d, start + plan.directions_per_pass)
            region.push(self.identity(start, stop), True, plan.group)
            if self.progress is not None:
                self.progress(len(x) * (stop - start))
        tensors = region.radii()
        if self.auto:
            precision.refine(region, tensors, x)
        return tensors

    def _screened(self, region: "_Region", x: Tensor, plan: Plan) -> dict[str, Tensor]:
        """The radii from the faces that may bind (:mod:`lrcert.screen`); the inputs that have
        too many go the dense way. One host wait for the count of those inputs."""
        radii, dense = screen.certify(region, x)
        tensors = region.summary() | radii
        if self.auto:
            tensors["exact"] = torch.ones(len(x), dtype=torch.bool, device=self.device)
        index = dense.nonzero()[:, 0]
        if self.progress is not None:
            self.progress((len(x) - len(index)) * self.network.input_size)
        if len(index):
            again = self._dense(_Region(self, x[index]), x[index], plan)
            for key, value in again.items():
                if key in tensors and (key.split(".")[0] in self.norms or key in ("exact", "gradients_finite")):
                    tensors[key] = tensors[key].index_copy(0, index, value)
        if 2 * len(index) > len(x):
            self.screening = False
        return tensors

    def float64_network(self) -> ir.Network:
        """The network in float64 (the value network under auto and float64)."""
        if "network" not in self._cache:
            same = self.value_dtype == torch.float64
            self._cache["network"] = self.network if same else self.network.to(self.device, torch.float64)
        return self._cache["network"]

    def float64_magnitudes(self) -> ir.Network:
        """|parameters| in float64, for :mod:`lrcert.screen`'s bounds."""
        if "magnitudes" not in self._cache:
            same = self.value_dtype == torch.float64
            self._cache["magnitudes"] = self.magnitudes if same else self.float64_network().absolute()
        return self._cache["magnitudes"]

    def entry_norms(self, batch: int) -> dict[tuple[int, str], Tensor]:
        """:func:`screen.entry_norms`, computed once (they do not depend on the input), when the
        first batch large enough for them to pay comes (``screen.ENTRY_WORK``); {} before."""
        if "entries" not in self._cache:
            if not self.entries or screen.entry_work(self) > screen.ENTRY_WORK * batch:
                return {}
            self._cache["entries"] = screen.entry_norms(self)
        return self._cache["entries"]

    def _predictions(self, x: Tensor, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per norm the prediction radius and its rival class; x* (NaN where r_pred > ε̂) if asked."""
        found = prediction.margins(self.network, x, self.norms, self.adversarial_norm, self.memory_bytes)
        if self.adversarial_norm is not None:
            p = self.adversarial_norm
            exact = (found[f"{p}.predicted"] <= tensors[f"{p}.distance"]).reshape(-1, *[1] * (x.dim() - 1))
            found["adversarial"] = torch.where(exact, found["adversarial"], math.nan)
        return found

    def exact_engine(self) -> "Engine":
        """The same engine in float64 (``dtype="auto"`` reruns the inputs it cannot settle cheaply with it)."""
        if self._exact is None:
            self._exact = Engine(self.network, norms=self.norms, device=self.device, dtype=torch.float64,
                                 memory_bytes=self.memory_bytes, predictions=False, screen=False)
        return self._exact

    def identity(self, start: int, stop: int, dtype: torch.dtype | None = None) -> Tensor:
        """The input directions e_start … e_(stop−1), as one seed shared by all inputs: (1, K, *input_shape),
        in ``dtype`` (default: the tangent passes')."""
        identity = torch.zeros(stop - start, self.network.input_size, device=self.device, dtype=dtype or self.dtype)
        identity.diagonal(offset=start).fill_(1)
        return identity.reshape(1, stop - start, *self.network.input_shape)


def _chunks(batches: Iterable[Tensor], size: int) -> Iterator[Tensor]:
    for x in batches:
        for start in range(0, len(x), size):
            yield x[start : start + size]


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

    def __init__(self, engine: Engine, x: Tensor):
        self.engine = engine
        self.network = engine.network
        self.batch = len(x)
        self.faces: dict[int, Tensor] = {}  # layer -> (B, faces) values z
        self.gain: dict[int, Tensor] = {}  # elementwise layer -> (B, *shape) frozen slopes
        self.gain_in: dict[tuple[int, torch.dtype], Tensor] = {}  # the same in the tangents' dtype
        self.argmax: dict[int, Tensor] = {}  # max-pool layer -> (B, ..., C, 1, L) window arg-max
        self.scratch: dict[torch.dtype, Tensor] = {}  # dtype -> the CPU reductions' reused buffer (flat)
        self.winner_at: dict[int, Tensor] = {}  # max-pool layer -> (B, ..., C, L) arg-max's place in its input plane
        self.first_wins: dict[int, Tensor] = {}  # max/min layer -> (B, *shape) where its first input is the output
        self.pieces: dict[int, Tensor] = {}  # layer -> (B, n) the piece each unit is on (the pattern)
        self.stats: dict[tuple[int, str], Tensor] = {}  # (layer, norm) -> (B, faces) dual norm, accumulated
        self.rates: dict[int, Tensor] = {}  # layer -> (B, faces) g·d for the directional radius
        self.output = self.network.run(x, nonlinear=self._record)
        self.scale = self._face_scales(x)
        self.active = self._active_columns()

    def _record(self, i: int, layer: ir.Nonlinearity, *z: Tensor) -> Tensor:
        """Evaluate nonlinear layer ``i`` on ``z``, recording its faces, pieces and frozen slopes.
        The pieces are ``layer.pieces(*z)``, taken from what is recorded anyway: each window's
        arg-max for a max-pool, the faces' signs otherwise."""
        if isinstance(layer, ir.MaxPool2d):
            windows = layer.windows(z[0], float("-inf"))
            best, arg = windows.max(dim=-2, keepdim=True)
            self.argmax[i] = self.pieces[i] = arg
            self.faces[i] = (best - windows).reshape(self.batch, -1)
            return best.reshape(self.batch, *layer.shape)
        if isinstance(layer, ir.Maximum):
            self.first_wins[i] = layer.first_wins(*z)
            self.faces[i] = layer.faces(*z)
            self.pieces[i] = self.faces[i] > 0
            return layer.apply(*z)
        self.gain[i] = layer.gain(z[0])
        self.faces[i] = layer.faces(z[0])
        self.pieces[i] = self.faces[i] > 0
        return layer.apply(z[0])


    def _face_scales(self, x: Tensor) -> dict[int, Tensor]:
        """Per face, the sum of the magnitudes of the terms that make up z (the network with
        |parameters| on |x|, frozen like x): float rounding of z is a small multiple of it."""
        scales: dict[int, Tensor] = {}

        def nonlinear(i: int, layer: ir.Nonlinearity, *magnitude: Tensor) -> Tensor:
            if isinstance(layer, ir.MaxPool2d):
                windows = layer.windows(magnitude[0], 0.0)
                winner = torch.gather(windows, -2, self.argmax[i])
                scales[i] = (winner + windows).reshape(self.batch, -1)
                return winner.reshape(self.batch, *layer.shape)
            if isinstance(layer, ir.Maximum):  # a − b: both magnitudes; the output: the winner's
                scales[i] = layer.faces(magnitude[0], -magnitude[1])
                return layer.select(self.first_wins[i], *magnitude)
            m = magnitude[0]  # z − b: z's terms and b
            scales[i] = torch.cat([(m + abs(b)).reshape(self.batch, -1) for b in layer.kinks()], dim=1)
            return self.gain[i].abs() * m + layer.offset_bound()

        self.engine.magnitudes.run(x.abs(), nonlinear=nonlinear)
        return scales


    def _active_columns(self) -> dict[int, list[Tensor | None]]:
        """For each ReLU whose inactive units can be skipped, each input's active units (None where
        too many are active for skipping to pay): one ``nonzero`` per layer for the whole batch."""
        active = {}
        for i, limit in self.engine.sparse.items():
            on = self.pieces[i]
            counts = on.sum(dim=1).tolist()
            columns = torch.split(on.nonzero()[:, 1], counts)
            active[i] = [units if n <= limit else None for units, n in zip(columns, counts)]
        return active

    def _gain(self, i: int, dtype: torch.dtype) -> Tensor:
        """Layer ``i``'s frozen slopes in ``dtype`` (converted once per batch)."""
        if (i, dtype) not in self.gain_in:
            self.gain_in[(i, dtype)] = self.gain[i].to(dtype)
        return self.gain_in[(i, dtype)]

    def push_directions(self, directions: Tensor, group: int) -> None:
        """Push each input's direction d (one per input, or one for all) to get the rates g·d."""
        seeds = directions.to(self.engine.device, self.engine.value_dtype).reshape(-1, 1, *self.engine.network.input_shape)
        self.push(seeds.expand(self.batch, *seeds.shape[1:]), False, group)

    def push(self, seeds: Tensor, accumulate: bool, group: int) -> None:
        """Push tangents ``seeds`` (shape ``(1 or B, K, *input_shape)``) through the frozen network.

        Shared seeds (the identity) make every layer before the first nonlinearity the same for
        all inputs: that prefix is computed once, the rest in groups of ``group`` inputs, small
        enough to stay in cache, and from each of ``Engine.stages`` on, several of the stage
        before's groups together. The layers and frozen slopes are taken in the seeds' dtype
        (under ``dtype="auto"``: float32 for the identity, float64 for a direction).
        """
        engine = self.engine
        tangent_dtype = seeds.dtype == engine.dtype
        layers = (engine.tangent_network if tangent_dtype else self.network).layers
        shared = seeds.shape[0] == 1
        base = {0: seeds}
        if shared:
            for i in engine.prefix:
                base[i] = layers[i].apply([base[j] for j in layers[i].inputs], offset=False)
            for i in engine.entries:  # ReLUs reading the prefix: their face gradients are shared too
                self._face_gradients(i, slice(None), base[layers[i].inputs[0]].flatten(2), accumulate)
            read_later = {j for i in engine.suffix for j in layers[i].inputs}
            base = {j: t for j, t in base.items() if j in read_later}
        walk = engine.suffix if shared else engine.order
        cuts = [walk.index(i) for i, _ in engine.stages if shared and i in walk]
        merges = [m for i, m in engine.stages if shared and i in walk]
        segments = [walk[a:b] for a, b in zip([0, *cuts], [*cuts, len(walk)])]
        spans = [group]
        for m in merges:
            spans.append(spans[-1] * m)
        kept = [seeds, *base.values()]

        def stage(k: int, rows: slice) -> dict:
            """Push inputs ``rows`` through segments 0…k; the tangents alive after segment k."""
            if k == 0:
                tangents = dict(base) if shared else {0: seeds[rows]}
            else:  # the inputs of the stage before, a span at a time, together
                parts = [stage(k - 1, slice(a, min(a + spans[k - 1], rows.stop))) for a in range(rows.start, rows.stop, spans[k - 1])]
                tangents = {j: t if t is base.get(j) else torch.cat([part[j] for part in parts]) for j, t in parts[0].items()}
            self._walk(segments[k], tangents, rows, seeds.dtype, shared, kept, accumulate)
            return tangents

        for start in range(0, self.batch, spans[-1]):
            stage(len(segments) - 1, slice(start, min(start + spans[-1], self.batch)))

    def _walk(
        self, walk: Sequence[int], tangents: dict, rows: slice, dtype: torch.dtype, shared: bool, kept: list, accumulate: bool
    ) -> None:
        """Push the tangents of inputs ``rows`` through layers ``walk``, in place in ``tangents``
        (``shared``: seeds common to all inputs; ``kept``: tensors never to overwrite)."""
        engine = self.engine
        tangent_dtype = dtype == engine.dtype
        layers = (engine.tangent_network if tangent_dtype else self.network).layers
        for i in walk:
            layer = layers[i]
            ins = [tangents[j] for j in layer.inputs]
            if isinstance(ins[0], _ActiveColumns):
                tangents[i] = ins[0].through(layer, engine.transposed.get(i))
            elif isinstance(layer, ir.Affine):
                tangents[i] = layer.apply(ins, offset=False)
            elif isinstance(layer, ir.MaxPool2d):
                winner = self._winner_tangent(i, rows, ins[0])
                windows = layer.window_view(ins[0], 0.0)
                faces = winner.new_empty(*winner.shape[:-1], *windows.shape[-4:])  # in window order, not the view's
                torch.sub(winner.unflatten(-1, (1, 1, *layer.shape[-2:])), windows, out=faces)
                self._face_gradients(i, rows, faces.flatten(2), accumulate)
                tangents[i] = winner.reshape(*winner.shape[:2], *layer.shape)
            elif isinstance(layer, ir.Maximum):
                self._face_gradients(i, rows, layer.faces(*ins), accumulate)
                if i in engine.read:
                    tangents[i] = layer.select(self.first_wins[i][rows].unsqueeze(1), *ins)
            else:
                if not (shared and i in engine.entries):  # (done once for all inputs in push)
                    self._face_gradients(i, rows, ins[0].flatten(2), accumulate)
                if i in engine.read:  # (no layer reads the last nonlinearity's tangent: only its faces count)
                    one = rows.stop - rows.start == 1 and tangent_dtype
                    active = self.active[i][rows.start] if i in self.active and one else None
                    if active is not None:
                        tangents[i] = _ActiveColumns(torch.index_select(ins[0].flatten(2), 2, active), active)
                    else:
                        gain = self._gain(i, dtype)[rows].unsqueeze(1)
                        owned = self._sole_reader(i, layer.inputs[0], tangents, kept)
                        tangents[i] = ins[0].mul_(gain) if owned and len(gain) == len(ins[0]) else gain * ins[0]
            for j in set(layer.inputs):
                if engine.last_use.get(j) == i:
                    tangents.pop(j, None)

    def _sole_reader(self, i: int, j: int, tangents: dict, kept: list[Tensor]) -> bool:
        """Whether layer ``i`` may overwrite tangent ``j`` instead of allocating its own: it is
        the last to read it, and no other memory is shared with it (not the caller's seeds, not
        the tensors ``kept`` for every group of inputs, not another layer's tangent)."""
        tangent = tangents[j]
        if self.engine.last_use.get(j) != i or not tangent.is_contiguous():
            return False
        memory = tangent.untyped_storage().data_ptr()
        others = [t for k, t in tangents.items() if k != j and not isinstance(t, _ActiveColumns)] + kept
        return all(t.untyped_storage().data_ptr() != memory for t in others)

    def _winner_tangent(self, i: int, rows: slice, tangent: Tensor) -> Tensor:
        """Max-pool ``i``'s output tangent, ``(b, K, ..., C, out_h·out_w)``: each window's arg-max
        element of ``tangent`` (``(1 or b, K, ..., C, h, w)``), gathered from the input plane."""
        if i not in self.winner_at:
            self.winner_at[i] = self.network.layers[i].winner_positions(self.argmax[i]).squeeze(-2)
        index = self.winner_at[i][rows].unsqueeze(1)
        planes = tangent.flatten(-2)
        index = index.expand(len(index), planes.shape[1], *index.shape[2:])
        return torch.gather(planes.expand(len(index), *planes.shape[1:]), -1, index)

    def _face_gradients(self, i: int, rows: slice, g: Tensor, accumulate: bool) -> None:
        """Fold face gradients ``g`` (shape ``(1 or b, K, faces)``) of inputs ``rows`` into the dual
        norms over the K directions: max |g| (p = 1), Σ g² (p = 2), Σ |g| (p = ∞).

        On a GPU each norm is one fused reduction (``vector_norm``: one read of g); on a CPU,
        where reducing over a middle axis that way is 2–4× slower (measured), |g| is formed once
        and shared by the sum and the max."""
        if not accumulate:
            if i not in self.rates:
                self.rates[i] = torch.zeros(self.batch, g.shape[2], dtype=g.dtype, device=g.device)
            self.rates[i][rows] = g[:, 0, :]
            return
        norms = self._fused_norms(g) if self.engine.fused_norms else self._cpu_norms(g)
        for p in self.engine.norms:
            if (i, p) not in self.stats:
                self.stats[(i, p)] = torch.zeros(self.batch, g.shape[2], dtype=g.dtype, device=g.device)
            target = self.stats[(i, p)][rows]
            if p == "l1":
                torch.maximum(target, norms[p], out=target)
            else:
                target += norms[p]

    def _fused_norms(self, g: Tensor) -> dict[str, Tensor]:
        """The GPU's per-face statistics of ``g`` over its K directions: one fused reduction
        (one read of g) per norm."""
        norms = {p: torch.linalg.vector_norm(g, ir.DUAL_ORDER[p], dim=1) for p in self.engine.norms}
        return norms | ({"l2": norms["l2"].square()} if "l2" in norms else {})

    def _cpu_norms(self, g: Tensor) -> dict[str, Tensor]:
        """The CPU's per-face statistics of ``g`` over its K directions, through one reused
        buffer: |g| formed once for the max and the sum, then squared in place (|g|² = g²
        exactly). A fresh temporary per layer would cost page faults as large as the work."""
        wanted = self.engine.norms
        n = g.numel()
        if g.dtype not in self.scratch or self.scratch[g.dtype].numel() < n:
            self.scratch[g.dtype] = torch.empty(n, dtype=g.dtype, device=g.device)
        work = self.scratch[g.dtype][:n].view(g.shape)
        if "l1" not in wanted and "linf" not in wanted:
            return {"l2": torch.mul(g, g, out=work).sum(dim=1)}
        torch.abs(g, out=work)
        norms = {"l1": work.amax(dim=1)} if "l1" in wanted else {}
        norms |= {"linf": work.sum(dim=1)} if "linf" in wanted else {}
        return norms | ({"l2": work.mul_(work).sum(dim=1)} if "l2" in wanted else {})

    # ----------------------------------------------------------------------------------- results

    def radii(self) -> dict[str, Tensor]:
        """Every input's ε̂ per norm and its binding face (see :meth:`_nearest`) from the pushed
        tangents, with :meth:`summary`: batched tensors, still on the device."""
        gradients_finite = torch.ones(self.batch, dtype=torch.bool, device=self.output.device)
        out: dict[str, Tensor] = self.summary()
        for p in self.engine.norms:

            def ratios(i: int) -> Tensor:
                nonlocal gradients_finite
                dual = self._per_face(i, self.stats[(i, p)].double())
                dual = dual.sqrt() if p == "l2" else dual
                gradients_finite &= torch.isfinite(dual).all(dim=1)
                positive = dual > 0
                return torch.where(positive, self.faces[i].double().abs() / torch.where(positive, dual, 1.0), math.inf)

            out |= {f"{p}.{key}": value for key, value in self._nearest(ratios).items()}
        out["gradients_finite"] = gradients_finite
        return out

    def summary(self) -> dict[str, Tensor]:
        """What the value pass alone gives: prediction, pattern bytes, whether the values stayed
        finite (and ``gradients_finite`` True, for the gradients' own check to narrow)."""
        flat = self.output.reshape(self.batch, -1)
        values_finite = torch.isfinite(flat).all(dim=1)
        for faces in self.faces.values():
            values_finite &= ~torch.isnan(faces).any(dim=1)  # +inf gaps are padding; NaN means overflow
        out = {"values_finite": values_finite, "gradients_finite": torch.ones_like(values_finite)}
        out["pattern"] = pattern_bytes([self.pieces[i] for i in self.engine.nonlinear], self.batch, self.output.device)
        if flat.shape[1] >= 2:
            out["prediction"] = flat.argmax(dim=1)
        return out

    def nearest_ahead(self) -> dict[str, Tensor]:
        """Per input, the largest t with x + t·d in the region, min over faces with z·(g·d) < 0 of
        −z/(g·d) (z = 0 counts when g·d ≠ 0), and that face."""

        def steps(i: int) -> Tensor:
            z, rate = self.faces[i].double(), self._per_face(i, self.rates[i].double())
            leaving = (z * rate < 0) | ((z == 0) & (rate != 0))
            return torch.where(leaving, (z / torch.where(rate != 0, rate, 1.0)).abs(), math.inf)

        return {f"ahead.{key}": value for key, value in self._nearest(steps).items()}

    def _per_face(self, i: int, per_unit: Tensor) -> Tensor:
        """A per-unit statistic (B, n) repeated for each of a unit's kinks, as ``faces[i]`` lays them out."""
        kinks = self.faces[i].shape[1] // per_unit.shape[1]
        return per_unit if kinks == 1 else per_unit.repeat(1, kinks)

    def _nearest(self, distances: Callable[[int], Tensor]) -> dict[str, Tensor]:
        """Per input, the smallest of ``distances(i)`` (shape (B, faces)) over every nonlinear layer
        i, and that face: layer (−1: none), unit, and :meth:`describe`'s account of it. Batched,
        on the device."""
        b, device = self.batch, self.output.device
        best = torch.full((b,), math.inf, dtype=torch.float64, device=device)
        layer = torch.full((b,), -1, dtype=torch.long, device=device)
        unit = torch.zeros(b, dtype=torch.long, device=device)
        for i in self.engine.nonlinear:
            distance, nearest = distances(i).min(dim=1)
            better = distance < best
            best = torch.where(better, distance, best)
            layer = torch.where(better, i, layer)
            unit = torch.where(better, nearest, unit)
        return {"distance": best, "layer": layer, "unit": unit, **self.describe(layer, unit)}

    def describe(self, layer: Tensor, unit: Tensor) -> dict[str, Tensor]:
        """For each input's face (``layer``, ``unit``; layer −1: none): its value z, the arg-max
        element of its max-pool window (−1 for units), and whether z is nonzero but within rounding
        reach of 0 (|z| ≤ PRECISION_MARGIN · u · s, s the magnitude of z's terms)."""
        b, device = self.batch, self.output.device
        z = torch.zeros(b, dtype=torch.float64, device=device)
        winner = torch.full((b,), -1, dtype=torch.long, device=device)
        imprecise = torch.zeros(b, dtype=torch.bool, device=device)
        roundoff = PRECISION_MARGIN * torch.finfo(self.engine.value_dtype).eps
        for i in self.engine.nonlinear:
            here = layer == i
            units = torch.where(here, unit, 0)[:, None]
            value = self.faces[i].gather(1, units)[:, 0].double()
            scale = self.scale[i].gather(1, units)[:, 0].double()
            z = torch.where(here, value, z)
            imprecise |= here & (value != 0) & (value.abs() <= roundoff * scale)
            if i in self.argmax:
                winner = torch.where(here, self._window_winner(i, units[:, 0]), winner)
        return {"z": z, "winner": winner, "imprecise": imprecise}

    def _window_winner(self, i: int, unit: Tensor) -> Tensor:
        """For max-pool faces ``unit`` (flat over (plane, element, window)), their window's arg-max element."""
        layer = self.network.layers[i]
        windows = layer.shape[-1] * layer.shape[-2]
        plane, rest = unit // (layer.window_size * windows), unit % (layer.window_size * windows)
        return self.argmax[i].reshape(self.batch, -1).gather(1, (plane * windows + rest % windows)[:, None])[:, 0]


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


class _Outcome:
    """One batch's results on their way to the host; :meth:`results` waits for them and turns
    them into :class:`InputResult` objects (the only per-input work, all on the host)."""

    def __init__(self, region: _Region, tensors: dict[str, Tensor]):
        self.network = region.network
        self.norms = region.engine.norms
        self.dtype = region.engine.value_dtype
        self.tangent_dtype = region.engine.dtype
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
        flagged = np.logical_or.reduce([host[f"{p}.imprecise"] for p in self.norms]).tolist()
        names = {False: str(self.tangent_dtype).split(".")[-1], True: "float64"}
        exact = host["exact"].tolist() if "exact" in host else [self.tangent_dtype == torch.float64] * self.batch
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
                dtype=names[exact[k]],
            )
            for k in range(self.batch)
        ]
        if "ahead.distance" in host:
            for result, (step, face) in zip(out, self._steps(host)):
                result.direction, result.direction_binding = step, face
        if f"{self.norms[0]}.predicted" in host:
            self._predictions(host, out)
        return out

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
        if isinstance(layer, ir.Clip):  # one block of units per bound
            bound, unit = divmod(unit, layer.size)
            return Constraint(layer.name, layer.kind, unit, self._position(layer.shape, unit), value,
                              bound=layer.kink_names()[bound])
        if not isinstance(layer, ir.MaxPool2d):
            return Constraint(layer.name, layer.kind, unit, self._position(layer.shape, unit), value)
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


def certify(
    network: ir.Network,
    x: Tensor | np.ndarray,
    *,
    norms: Sequence[str] = NORMS,
    directions: Tensor | np.ndarray | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str = "auto",
    batch_size: int | None = None,
    predictions: bool = True,
    screen: bool = True,
) -> list[InputResult]:
    """Certify every row of ``x`` (shape ``(N, *network.sample_shape)``) on ``device`` (default:
    where ``x`` is; ``"auto"``: a GPU when there is one) in ``dtype`` (default ``"auto"``: float64
    results at float32 speed); see :class:`Engine`."""
    x = devices.as_tensor(x)
    d = None if directions is None else devices.as_tensor(directions)
    engine = Engine(network, norms=norms, device=devices.resolve(device, like=x), dtype=dtype, batch_size=batch_size,
                    predictions=predictions, screen=screen)
    results = []
    for batch in engine.certify([x], directions=d, n_inputs=len(x)):
        results.extend(batch)
    return results
