"""One batch of inputs through the whole analysis: ε̂ (:class:`lrcert.engine.Engine`), the saliency
at x, the expected distortion (:mod:`.expected`), the search (:mod:`.search`) and the bound
(:mod:`.bound`), assembled on the device and moved to the host once per batch.

Precision: g(x), the worst point's Δ and the bound are computed in float64 always. The samples and
the search run in the *working* dtype: ``"auto"`` takes float64 for toy networks (at most
:data:`FLOAT64_WORK` multiply-adds per pass), float32 above (a float64 convolution costs about six
float32 ones on a CPU, and Captum and a user's own loop sample in float32); a sample's Δ is then
within float32 rounding of the float64 one, far inside the standard error of the mean
(``dtype=torch.float64`` computes them in float64: then E[Δ] equals torch.autograd's in float64).

Draws are seeded per input (from ``seed`` and the input's number), so an input's samples and
search do not depend on the batch it came in.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..engine import Engine
from ..errors import LrcertError
from ..network import ir
from ..runtime import devices
from . import bound as bounds
from . import expected as expectations
from . import search as searching
from . import walk as walking
from .ball import Ball
from .result import StabilityResult, quantiles
from .saliency import ORDERS, Saliency, distortion, target_weights

#: ``dtype="auto"``: the samples and the search in float64 up to this many multiply-adds per value pass
#: (toy networks, where it costs nothing), in float32 above.
FLOAT64_WORK = 100_000
#: The search's default budget, in passes per input.
BUDGET = 400
#: The default probability, for the whole run, that some expectation interval misses.
INTERVAL_DELTA = 1e-3
#: A bound more than this many times the largest distortion seen (found, or the mean) bounds nothing
#: a user asks about: it is reported as vacuous, as one no better than every unit free is.
VACUOUS_GAP = 1000


class Stability:
    """Gradient stability of ``network``'s saliency over a ball: see :func:`lrcert.stability`.

    ``target``: predicted, label, margin or a class number; ``distortion``: the norm of Δ ("1",
    "2", "inf"); ``relative``: Δ / ‖g(x)‖ (Captum's normalisation; ‖g(x)‖ = 0 divides by 1);
    ``samples`` and ``budget``: draws for E[Δ] and passes per input for the search; ``guarantee``
    and ``seed``: ε̂'s engine options (its sketch's δ), ``seed`` also the draws'."""

    def __init__(self, network: ir.Network, *, eps: float, norm: str = "linf", box: tuple[float, float] | None = None,
                 samples: int = 1000, budget: int = BUDGET, target: str | int = "predicted", distortion: str = "1",
                 relative: bool = False, seed: int = 0, dtype: torch.dtype | str = "auto", device="cpu",
                 guarantee: float | str = 1e-12, threads: int | None = None, interval_delta: float = INTERVAL_DELTA,
                 keep_maps: bool = False):
        if samples < 1 or budget < 2:
            raise LrcertError(f"{samples} samples and a budget of {budget} passes",
                              fix="give 1 sample or more (--samples) and a budget of 2 passes or more (--budget)")
        if distortion not in ORDERS:
            raise LrcertError(f"--distortion-norm {distortion!r} is not 1, 2 or inf", fix="use 1 (the paper's), 2 or inf")
        if not math.prod(network.output_shape) >= 1:
            raise LrcertError("the model has no outputs", fix="give a model with outputs")
        self.ball = Ball(norm, eps, box)
        self.device = devices.resolve(device)
        self.engine = Engine(network, norms=(norm,), device=self.device, predictions=False, guarantee=guarantee,
                             seed=seed, threads=threads)
        self.network64 = network.to(self.device, torch.float64)
        self.magnitudes64 = self.network64.absolute()
        memory = None if self.device.type == "cpu" else devices.memory_budget(self.device)  # (a GPU: its free memory's share)
        self.exact = Saliency(self.network64, memory)
        work = dtype if dtype != "auto" else torch.float64 if _work(network) <= FLOAT64_WORK else torch.float32
        self.working = self.exact if work == torch.float64 else Saliency(network.to(self.device, work), memory)
        self.samples, self.budget, self.target, self.order = samples, budget, target, ORDERS[distortion]
        self.relative, self.seed, self.keep_maps = relative, seed, keep_maps
        self.interval_delta, self.run_size = interval_delta, 1
        self.walk_engine: Engine | None = None

    @property
    def network(self) -> ir.Network:
        return self.engine.network

    def run(self, x: Tensor, labels: Tensor | None = None, numbers: Sequence[int] | None = None) -> list[StabilityResult]:
        """The analysis of each row of ``x`` (B, *sample_shape); ``numbers``: the inputs' numbers in
        the run (default 0, 1, …), which seed their draws and number their results."""
        x = x.to(self.device, torch.float64)
        numbers = list(range(len(x))) if numbers is None else list(numbers)
        self.ball.check(x)
        regions = self.engine.run(x)
        with torch.no_grad(), devices.exact_float32(), self.engine.threads.use():
            tensors = self._compute(x, labels, numbers, regions)
            host = devices.HostCopy(tensors).arrays()
        return self._results(host, regions, numbers)

    def _compute(self, x: Tensor, labels: Tensor | None, numbers: Sequence[int], regions) -> dict[str, Tensor]:
        """Every per-input figure of the batch, as tensors on the device."""
        weights, classes, rivals = target_weights(self.exact.outputs(x), self.target, labels)
        g0, _ = self.exact.at(x, weights)
        xw = x.to(self.working.network.dtype)
        ww = weights.to(xw.dtype)
        g0w, pattern0 = self.working.at(xw, ww)
        found = expectations.expectation(self.working, self.ball, xw, ww, g0w, pattern0, self.samples, self.seed,
                                         numbers, self.order)
        best = searching.search(self.working, self.ball, xw, ww, g0w, self.budget, self._generators(numbers, 1), self.order,
                                walker=self._walker(xw))
        worst, g_worst = self._worst(x, weights, g0, best.point, found.values, numbers)
        limit = self._bound(x, weights)
        tensors = {"classes": classes, "rivals": rivals, "mean": found.mean, "stderr": found.stderr, "own": found.own,
                   "values": found.values, "max_found": distortion(g_worst, g0, self.order), "worst": worst,
                   "bound": limit.value, "vacuous": limit.vacuous, "free": limit.free,
                   "saliency_norm": torch.linalg.vector_norm(g0, self.order, dim=1)}
        if self.keep_maps:
            tensors |= {"saliency": g0, "worst_saliency": g_worst}
        self._regions, self._passes, self._units = found.regions, best.passes, limit.units
        return tensors

    def _worst(self, x: Tensor, weights: Tensor, g0: Tensor, searched: Tensor, values: Tensor, numbers: Sequence[int]):
        """The point of largest Δ seen, the search's or a sample's, and the saliency there (float64)."""
        largest = values.argmax(dim=1).tolist()  # (one wait per batch: which sample to draw again)
        drawn = torch.stack([expectations.samples_of(self.ball, row, 1, self.seed, n, k)[0].to(x.dtype)
                             for row, n, k in zip(x.to(self.working.network.dtype), numbers, largest)])
        # (into the ball in float64: a float32 point may lie a rounding outside it)
        candidates = self.ball.project(torch.stack([searched.to(x.dtype), drawn.to(x.dtype)], dim=1), x).transpose(0, 1)
        candidates = candidates.reshape(2 * len(x), *x.shape[1:])
        g, _ = self.exact.at(candidates, weights.repeat(2, 1))
        d = distortion(g, g0.repeat(2, 1), self.order).reshape(2, len(x))
        pick = (d[1] > d[0]).reshape(-1, *[1] * (x.dim() - 1))
        return torch.where(pick, candidates[len(x) :], candidates[: len(x)]), torch.where(pick.reshape(-1, 1), g[len(x) :], g[: len(x)])

    def _bound(self, x: Tensor, weights: Tensor) -> bounds.Bound:
        """:func:`.bound.distortion_bound` of the batch, as many inputs at a time as the memory budget holds."""
        rows = max(1, self.exact.memory_bytes // (2 * self.network64.reverse_bytes_per_row(torch.float64)))
        parts = [bounds.distortion_bound(self.network64, self.magnitudes64, x[a : a + rows], weights[a : a + rows],
                                         self.ball, self.order) for a in range(0, len(x), rows)]
        return bounds.Bound(*(torch.cat([getattr(p, name) for p in parts]) for name in ("value", "vacuous", "free")),
                            parts[0].units)

    def _walker(self, x: Tensor):
        """The search's finish over neighbouring regions, in low dimension (:mod:`.walk`); None above."""
        if walking.rounds(self.network.dimensions, self.budget) == 0:
            return None
        if self.walk_engine is None:
            self.walk_engine = Engine(self.network64, device=self.device, dtype=torch.float64, predictions=False,
                                      screen=False, guarantee="deterministic")
        return lambda evaluate, best, passes, seeds: walking.walk(self.walk_engine, evaluate, self.ball, x, best,
                                                                  walking.rounds(self.network.dimensions, passes), seeds)

    def _generators(self, numbers: Sequence[int], stream: int) -> list[torch.Generator]:
        """One generator per input, for draw ``stream`` (:func:`.expected.generator`)."""
        return [expectations.generator(self.seed, n, stream, self.device) for n in numbers]

    def _results(self, host: dict[str, np.ndarray], regions, numbers: Sequence[int]) -> list[StabilityResult]:
        out = []
        for k, region in enumerate(regions):
            result = self._result(host, k, region, numbers[k])
            if not result.vacuous and math.isfinite(result.max_bound):
                delta = self.interval_delta / self.run_size
                width = expectations.hoeffding_width(result.max_bound, self.samples, delta)
                result.interval = (max(0.0, result.expected - width), min(result.max_bound, result.expected + width))
                result.interval_delta = delta
            if self.keep_maps:
                result.saliency, result.worst_saliency = host["saliency"][k], host["worst_saliency"][k]
            out.append(result)
        return out

    def _result(self, host: dict[str, np.ndarray], k: int, region, number: int) -> StabilityResult:
        """Input ``k`` of the batch's host arrays, with ε̂'s ``region`` result."""
        scale = float(host["saliency_norm"][k]) if self.relative and host["saliency_norm"][k] > 0 else 1.0
        radius = region.radius[self.ball.norm]
        # ε < ε̂, exact and deterministic: B lies in x's region, where the saliency is constant
        by_region = region.delta == 0 and not region.precision_warning and self.ball.eps < radius
        bound = 0.0 if by_region else float(host["bound"][k]) / scale
        mean, found = float(host["mean"][k]) / scale, float(host["max_found"][k]) / scale
        useless = not by_region and (bool(host["vacuous"][k]) or 0 < VACUOUS_GAP * max(found, mean) < bound)
        return StabilityResult(
            index=number, target=int(host["classes"][k]), rival=int(host["rivals"][k]) if host["rivals"][k] >= 0 else None,
            norm=self.ball.norm, eps=self.ball.eps, radius=radius, radius_delta=region.delta, inside=bool(self.ball.eps < radius),
            expected=mean, stderr=float(host["stderr"][k]) / scale, samples=self.samples, own=float(host["own"][k]),
            regions=self._regions[k], quantiles=quantiles(host["values"][k] / scale), max_found=found, passes=self._passes,
            max_bound=bound, vacuous=useless, free=int(host["free"][k]), units=self._units,
            bound_by="region" if by_region else "intervals", saliency_norm=float(host["saliency_norm"][k]),
            relative=self.relative, dtype=str(self.working.network.dtype).split(".")[-1],
            worst=host["worst"][k].reshape(self.network.sample_shape))


def _work(network: ir.Network) -> int:
    """Multiply-adds of one value pass: each affine layer's outputs times the products each sums."""
    return sum(layer.size * max(1, layer.terms) for layer in network.layers if isinstance(layer, ir.Affine))
