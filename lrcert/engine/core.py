"""The engine: certifies batches of inputs of one network on one device (see the package's docstring)."""

from __future__ import annotations

import math
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import LrcertError
from ..network import ir
from ..runtime import devices
from ..runtime.threads import Threads
from . import norms as face_norms
from . import plan as planning
from . import precision, prediction, screen
from . import sketch as sketch_module
from .region import Region
from .results import Constraint, InputResult, Outcome, Work
from .tangents import Walk, push, push_directions

NORMS = ("l1", "l2", "linf")


class Engine:
    """Certifies batches of inputs of one network on one device.

    ``dtype`` float32 or float64 computes everything in that dtype. ``"auto"`` (the default)
    gives float64 results at float32 speed: the value pass (faces, pattern) and the directional
    pass run in float64, the expensive tangent passes in float32, and :mod:`.precision` bounds
    their rounding and recomputes in float64 exactly the faces it cannot rule out.
    ``predictions`` adds each input's prediction radius and certified radius (:mod:`.prediction`),
    and ``adversarial_norm`` the closest input with another prediction in that norm. ``progress``
    is called with the number of (input, direction) pairs pushed after each tangent pass: the
    work done, in the unit that matters for a single large input as for many small ones.
    ``screen`` first rules out the faces that cannot bind (:mod:`.screen`): a few reverse
    passes per input instead of D tangent directions where that pays, the dense way elsewhere.

    ``guarantee`` bounds the probability that any answer of a run is not exact: inputs the
    deterministic screening cannot settle (every input, with ``screen=False``) are then sketched
    (:mod:`.sketch`: ``sketch_directions`` random directions drawn from ``seed``) and report
    their δ; ``sketch=None`` does so only where it is much cheaper than the dense way (the rule
    in :mod:`.sketch`), True wherever, False never. ``guarantee="deterministic"`` never sketches.

    ``threads`` is how many CPU threads its computations use: None (auto) takes the CPUs this
    process may use less those other processes keep busy, looked at again before each batch
    (:mod:`lrcert.runtime.threads`); PyTorch's own setting is restored after each batch.
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
        guarantee: float | str = sketch_module.DEFAULT_DELTA,
        sketch_directions: int = sketch_module.DIRECTIONS,
        seed: int = 0,
        sketch: bool | None = None,
        threads: int | None = None,
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
        deterministic = guarantee == "deterministic"
        if not deterministic and not (isinstance(guarantee, (int, float)) and 0 < guarantee < 1):
            raise LrcertError(f"guarantee {guarantee!r} is neither 'deterministic' nor a probability in (0, 1)",
                              fix="use deterministic, or a bound such as 1e-12")
        if sketch_directions < 1:
            raise LrcertError(f"{sketch_directions} sketch directions", fix="use 1 or more (the default is 64)")
        self.device = devices.resolve(device)
        self.threads = Threads(threads)
        if dtype == "auto" and precision.float64_outright(network, self.device):
            dtype = torch.float64
        self.auto = dtype == "auto"
        self.dtype = torch.float32 if self.auto else dtype  # of the tangent passes
        self.value_dtype = torch.float64 if self.auto else dtype  # of faces, pattern and directions
        self.network = network.to(self.device, self.value_dtype)
        self.tangent_network = network.to(self.device, self.dtype) if self.auto else self.network
        self.norms = tuple(p for p in NORMS if p in norms)
        self.nonlinear = network.nonlinear
        varied = network.varied  # the coordinates a certificate moves (Network.vary), or all
        self.varied = None if varied is None else varied.to(self.device)
        self.dimensions = network.dimensions  # D (every gradient is zero on the held coordinates)
        self.walk = Walk.build(network)
        #: One fused reduction per dual norm (GPU), or |g| shared by the sum and the max (CPU).
        self.fused_norms = self.device.type == "cuda"
        self.memory_bytes = memory_bytes or devices.memory_budget(self.device)
        self.requested_batch = batch_size
        self.progress = progress
        self.predictions = predictions  # the prediction radius (.prediction) beside ε̂
        self.adversarial_norm = adversarial_norm if predictions else None  # and x* for this norm
        #: Whether batches are screened first (.screen). It stops for the rest of a run after a
        #: batch whose inputs mostly had to go the dense way (the bounds are loose on that
        #: network): screening them cost a little and saved nothing.
        self.screening = screen and bool(self.nonlinear)
        #: Whether auto computes in float64 outright: it does after a batch that went the dense way
        #: whole (neither screened nor sketched: nothing of theirs is lost) and most of whose inputs
        #: the float32 bounds could not settle, so :mod:`.precision` computed them again in float64
        #: (deep recurrences: the rounding bounds grow with every step), for the rest of a run.
        self.float64_pays = False
        if deterministic or not self.nonlinear:
            sketch = False
        elif sketch is None:
            sketch = screen and sketch_module.pays(self.dimensions, sketch_directions)
        self.sketching = sketch
        self.sketch = sketch_module.Sketch(self, sketch_directions, seed, float(guarantee)) if sketch else None
        #: Sketched inputs take the prediction radius from :func:`.prediction.sketched_margins`.
        self.sketch_margins = predictions and math.prod(network.output_shape) >= prediction.SKETCH_CLASSES
        if self.sketch is not None:  # the outputs' tangents too, for the prediction radius of many classes
            self.output_walk = Walk.build(network, to_output=True)
        self.sparse = planning.skippable_relus(self, skip_inactive)
        self.stages = planning.stages(self)
        reach = planning.sparse_reach(self, set(self.sparse))
        fed = {j: layer.weight for j, layer in enumerate(self.tangent_network.layers)
               if isinstance(layer, ir.Dense) and set(layer.inputs) & reach}
        once = {id(w): w.t().contiguous() for w in fed.values()}  # (an RNN's steps share one)
        self.transposed = {j: once[id(w)] for j, w in fed.items()}  # Wᵀ of the dense layers fed by those ReLUs: rows gather fast
        self.magnitudes = self.network.absolute()  # |parameters|: the scale of each face's rounding error
        self.work = Work()  # what it has done so far
        self._exact: Engine | None = None
        self._cache: dict[str, object] = {}  # computed once, when first needed
        if self.screening or self.sketching:  # where each layer's faces start among all layers' (no host data per batch)
            counts = [0, *(network.layers[i].face_count for i in self.nonlinear)]
            self.face_starts = torch.tensor(counts, device=self.device).cumsum(0)
            self.face_layers = torch.tensor(self.nonlinear, dtype=torch.long, device=self.device)

    def plan(self, n_inputs: int) -> planning.Plan:
        """How a run of ``n_inputs`` inputs is cut to fit memory (:func:`.plan.choose`)."""
        return planning.choose(self, n_inputs)

    # ----------------------------------------------------------------------------------- running

    def run(
        self, x: Tensor, *, first_index: int = 0, directions: Tensor | None = None, plan: planning.Plan | None = None
    ) -> list[InputResult]:
        """Certify the inputs ``x`` (shape ``(B, *sample_shape)``) in one batch (one run)."""
        self._share(len(x))
        return self._launch(x, directions, plan or self.plan(len(x))).results(first_index)

    def _share(self, run_size: int) -> None:
        """A run of ``run_size`` inputs shares the guarantee: each input's δ is at most guarantee / run_size."""
        if self.sketch is not None:
            self.sketch.run_size = max(1, run_size)

    def along(self, x: Tensor, directions: Tensor) -> list[tuple[float, Constraint | None]]:
        """Only the directional radius of each input of ``x`` along its direction (one per input, or
        one for all) and the face that sets it: one tangent pass, no gradient norms."""
        plan = self.plan(len(x))
        with torch.no_grad(), devices.exact_float32(), self.threads.use():
            region = Region(self, x.to(self.device, self.value_dtype))
            rates = face_norms.Rates(region.batch)
            push_directions(region, directions, rates, plan.group)
            outcome = Outcome(region, face_norms.nearest_ahead(region, rates))
        return outcome.steps()

    def certify(self, x: Tensor | np.ndarray, *, directions: Tensor | np.ndarray | None = None) -> list[InputResult]:
        """Certify every row of ``x`` (shape ``(N, *network.sample_shape)``; a tensor, an array or
        nested lists), in batches that fit memory: one result per row, in order. ``directions``: one
        per row or one for all, for the directional radius. Bad input raises :class:`LrcertError`
        with the command line's one-line message.

        >>> import torch, lrcert
        >>> _ = torch.manual_seed(0)
        >>> network = lrcert.from_module(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU()), (3,))
        >>> engine = Engine(network, norms=("l2",))
        >>> [sorted(r.radius) for r in engine.certify(torch.ones(2, 3))]
        [['l2'], ['l2']]
        """
        from ..data.arrays import tensor_rows

        x = tensor_rows(x, self.network.sample_shape)
        d = None if directions is None else tensor_rows(directions, self.network.sample_shape, "directions")
        return [result for batch in self.stream([x], n_inputs=len(x), directions=d) for result in batch]

    def stream(
        self, batches: Iterable[Tensor], *, n_inputs: int, directions: Tensor | None = None, start: int = 0,
        run_size: int | None = None,
    ) -> Iterator[list[InputResult]]:
        """Certify a stream of batches; yields each batch's results as soon as they are ready.

        ``directions`` holds one direction per input (``n_inputs`` rows) or one for all (1 row).
        Results are numbered from ``start`` (the stream's first input is input ``start``). Each
        batch is queued on the device before the previous batch's results are assembled. The
        run (``run_size`` inputs, default ``n_inputs``: more where ranks share it) shares the
        guarantee.
        """
        self._share(run_size or n_inputs)
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

    def _launch(self, x: Tensor, directions: Tensor | None, plan: planning.Plan) -> Outcome:
        """Queue all of one batch's work on the device, and the copy of its results to the host."""
        with torch.no_grad(), devices.exact_float32(), self.threads.use():
            region, tensors = self.compute(x, directions, plan)
            return Outcome(region, tensors)

    def compute(self, x: Tensor, directions: Tensor | None, plan: planning.Plan) -> tuple[Region, dict[str, Tensor]]:
        """One batch's region and its results as batched tensors on the device (see :func:`.norms.radii`)."""
        x = x.to(self.device, self.value_dtype)
        sketched = None
        if self.float64_pays:  # (auto learnt it: the float64 engine's answer, without the float32 pass first)
            exact = self.exact_engine()
            region, tensors = exact.compute(x, directions, exact.plan(len(x)))
            if self.progress is not None:
                self.progress(len(x) * self.dimensions)
        else:
            region = Region(self, x)
            if self.screening or self.sketching:
                tensors, sketched = self._screened(region, x, plan)
            else:
                tensors = self._dense_learning(region, x, plan)
            if directions is not None:
                rates = face_norms.Rates(region.batch)
                push_directions(region, directions, rates, plan.group)
                tensors |= face_norms.nearest_ahead(region, rates)
        if self.predictions:
            tensors |= self._predictions(x, tensors, sketched)
        return region, tensors

    def _dense(self, region: Region, x: Tensor, plan: planning.Plan) -> dict[str, Tensor]:
        """The radii from every face's gradient: all D input directions pushed, in chunks."""
        d = self.dimensions
        stats = face_norms.DualNorms(region.batch, self.norms, self.fused_norms)
        for start in range(0, d, plan.directions_per_pass):
            stop = min(d, start + plan.directions_per_pass)
            push(region, self.identity(start, stop), stats, plan.group)
            self.work.pushed += len(x) * (stop - start)
            if self.progress is not None:
                self.progress(len(x) * (stop - start))
        tensors = face_norms.radii(region, stats)
        if self.auto:
            self.work.rerun += precision.refine(region, stats, tensors, x)
        return tensors

    def _dense_learning(self, region: Region, x: Tensor, plan: planning.Plan) -> dict[str, Tensor]:
        """:meth:`_dense`; where the engine neither screens nor sketches any more (switching loses
        nothing of theirs) and auto computed most of these inputs again in float64, auto certifies
        in float64 outright from then on (``float64_pays``)."""
        reruns = self.work.rerun
        tensors = self._dense(region, x, plan)
        if self.auto and not (self.screening or self.sketching) and 2 * (self.work.rerun - reruns) > len(x):
            self.float64_pays = True
        return tensors

    def _screened(self, region: Region, x: Tensor, plan: planning.Plan) -> tuple[dict[str, Tensor], tuple | None]:
        """The radii from the faces that may bind: the deterministic screening (:mod:`.screen`),
        then for the inputs it leaves the sketch (:mod:`.sketch`), each where it is on; the inputs
        left after both go the dense way. One host wait for each count of inputs. Also returns,
        where the sketched inputs' prediction radius is to come from :func:`.prediction.sketched_margins`,
        what it needs: (their index, their region, the outputs' tangents, the sketch's c)."""
        b, d = len(x), self.dimensions
        tensors = region.summary() | screen.unknown(region)
        tensors["delta"] = torch.zeros(b, dtype=torch.float64, device=self.device)
        floor, index, sketched = None, torch.arange(b, device=self.device), None
        if self.screening:
            floor = screen.deterministic_floors(region)
            tensors, dense = screen.certify(region, x, floor, tensors)
            index = dense.nonzero()[:, 0]
            if 2 * len(index) > b:
                self.screening = False
        if self.progress is not None:
            self.progress((b - len(index)) * d)
        if self.sketching and len(index):
            part = region.subset(index)
            keys = [key for key in tensors if key.split(".")[0] in self.norms or key == "gradients_finite"]
            radii, dense, deltas, (outputs, c) = self.sketch.certify(part, x[index], None if floor is None else floor[:, index],
                                                                     {key: tensors[key][index] for key in keys}, self.sketch_margins)
            _merge(tensors, radii | {"delta": deltas}, index, self.norms)
            self.work.sketched += len(index)
            stay = (~dense).nonzero()[:, 0]  # (the inputs the sketch leaves go the dense way, deterministic)
            if self.sketch_margins and len(stay):
                sketched = (index[stay], part if len(stay) == len(index) else part.subset(stay), outputs[stay], c)
            index = index[dense]
        if len(index):
            again = self._dense_learning(Region(self, x[index]), x[index], plan)
            _merge(tensors, again, index, self.norms)
            tensors["delta"] = tensors["delta"].index_fill(0, index, 0.0)  # the dense way is deterministic
        return tensors, sketched

    def bottleneck(self) -> tuple[int, Tensor]:
        """:func:`.prediction.bottleneck` of the network, computed once."""
        if "bottleneck" not in self._cache:
            self._cache["bottleneck"] = prediction.bottleneck(self.network)
        return self._cache["bottleneck"]

    def float64_network(self) -> ir.Network:
        """The network in float64 (the value network under auto and float64)."""
        if "network" not in self._cache:
            same = self.value_dtype == torch.float64
            self._cache["network"] = self.network if same else self.network.to(self.device, torch.float64)
        return self._cache["network"]

    def float64_magnitudes(self) -> ir.Network:
        """|parameters| in float64, for :mod:`.screen`'s bounds."""
        if "magnitudes" not in self._cache:
            same = self.value_dtype == torch.float64
            self._cache["magnitudes"] = self.magnitudes if same else self.float64_network().absolute()
        return self._cache["magnitudes"]

    def entry_norms(self, batch: int) -> dict[tuple[int, str], Tensor]:
        """:func:`.screen.entry_norms`, computed once (they do not depend on the input), when the
        first batch large enough for them to pay comes (``screen.ENTRY_WORK``); {} before."""
        if "entries" not in self._cache:
            if not self.walk.entries or screen.entry_work(self) > screen.ENTRY_WORK * batch:
                return {}
            self._cache["entries"] = screen.entry_norms(self)
        return self._cache["entries"]

    def _predictions(self, x: Tensor, tensors: dict[str, Tensor], sketched: tuple | None) -> dict[str, Tensor]:
        """Per norm the prediction radius and its rival class; x* (NaN where r_pred > ε̂) if asked.
        The ``sketched`` inputs (see :meth:`_screened`) take :func:`.prediction.sketched_margins`."""
        if sketched is None:
            found = prediction.margins(self.network, x, self.norms, self.adversarial_norm, self.memory_bytes)
        else:
            index, part, outputs, c = sketched
            parts = [(index, prediction.sketched_margins(self, part, x[index], outputs, c,
                                                         self.sketch.directions(self.value_dtype)))]
            rest = torch.ones(len(x), dtype=torch.bool, device=self.device).index_fill(0, index, False).nonzero()[:, 0]
            if len(rest):
                parts.append((rest, prediction.margins(self.network, x[rest], self.norms, self.adversarial_norm,
                                                       self.memory_bytes)))
            found = {}
            for key, value in parts[0][1].items():
                found[key] = value.new_empty(len(x), *value.shape[1:])
                for where, part_found in parts:
                    found[key].index_copy_(0, where, part_found[key])
        if self.adversarial_norm is not None:
            p = self.adversarial_norm
            exact = (found[f"{p}.predicted"] <= tensors[f"{p}.distance"]).reshape(-1, *[1] * (x.dim() - 1))
            found["adversarial"] = torch.where(exact, found["adversarial"], math.nan)
        return found

    def exact_engine(self) -> "Engine":
        """The same engine in float64 (``dtype="auto"`` reruns the inputs it cannot settle cheaply with it)."""
        if self._exact is None:
            self._exact = Engine(self.network, norms=self.norms, device=self.device, dtype=torch.float64,
                                 memory_bytes=self.memory_bytes, predictions=False, screen=False,
                                 threads=self.threads.requested)
        return self._exact

    def identity(self, start: int, stop: int, dtype: torch.dtype | None = None) -> Tensor:
        """The input directions e_start … e_(stop−1) of the coordinates a certificate moves (all, or
        those :meth:`ir.Network.vary` leaves), as one seed shared by all inputs: (1, K, *input_shape),
        in ``dtype`` (default: the tangent passes')."""
        identity = torch.zeros(stop - start, self.network.input_size, device=self.device, dtype=dtype or self.dtype)
        if self.varied is None:
            identity.diagonal(offset=start).fill_(1)
        else:
            identity[torch.arange(stop - start, device=self.device), self.varied[start:stop]] = 1
        return identity.reshape(1, stop - start, *self.network.input_shape)


def _merge(tensors: dict[str, Tensor], part: dict[str, Tensor], index: Tensor, norms: Sequence[str]) -> None:
    """Put ``part``'s per-norm radii and faces (and ``gradients_finite``, ``delta``), computed for
    inputs ``index`` of the batch, into the batch's ``tensors``."""
    for key, value in part.items():
        if key in tensors and (key.split(".")[0] in norms or key in ("gradients_finite", "delta")):
            tensors[key] = tensors[key].index_copy(0, index, value)


def _chunks(batches: Iterable[Tensor], size: int) -> Iterator[Tensor]:
    for x in batches:
        for start in range(0, len(x), size):
            yield x[start : start + size]


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
    threads: int | None = None,
) -> list[InputResult]:
    """Certify every row of ``x`` (shape ``(N, *network.sample_shape)``) on ``device`` (default:
    where ``x`` is; ``"auto"``: a GPU when there is one) in ``dtype`` (default ``"auto"``: float64
    results at float32 speed); see :class:`Engine`."""
    x = devices.as_tensor(x)
    engine = Engine(network, norms=norms, device=devices.resolve(device, like=x), dtype=dtype, batch_size=batch_size,
                    predictions=predictions, screen=screen, threads=threads)
    return engine.certify(x, directions=directions)
