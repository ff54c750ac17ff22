"""Sketching: the faces that cannot bind, ruled out from k random directions instead of D, with a
failure probability that is computed, not assumed.

Screening (:mod:`.screen`) needs an upper bound U_j ≥ ‖g_j‖_q on each face's gradient norm; its
deterministic bounds loosen about tenfold per layer, so on deep networks (ResNets) they rule out
nothing. A sketch's bounds are tight within a small factor at any depth. Push k directions
s_1 … s_k with independent standard Gaussian entries through the frozen network (one tangent pass
each, all inputs sharing them); for every face j, y_ij = g_j·s_i ~ N(0, ‖g_j‖₂²), independent over
i, so

    e_j = Σ_i y_ij² ~ ‖g_j‖₂² · χ²_k,     P(e_j < c·k·‖g_j‖₂²) = P(χ²_k < c·k) = P(k/2, c·k/2)

(P the regularised lower incomplete gamma function: the chi-square lower tail, exactly).
U_j = √(e_j / (c·k)) bounds ‖g_j‖₂ unless that event happens, and with it ‖g_j‖∞ ≤ ‖g_j‖₂ ≤ U_j
(for ε̂₁) and ‖g_j‖₁ ≤ √D‖g_j‖₂ ≤ √D·U_j (for ε̂∞). The floors |z_j| / U_j then screen exactly as
the deterministic ones do (the larger of the two floors where both exist): every face whose floor
lies under the smallest exact ratio gets its exact gradient (a float64 reverse pass under auto),
and ε̂ is the smallest exact ratio. It is the exact ε̂ unless a face was ruled out by a bound that
failed: by the union bound, an input with F faces (and M margins, for the prediction radius,
each bounded twice alike: ‖g_j‖₂ and the error of a float32 estimate of g_j,
:func:`.prediction.sketched_margins`) is exact except with probability

    δ ≤ (F + 2M) · P(χ²_k < c·k).

A run's bound (``guarantee``, default 10⁻¹²) is shared equally by its N inputs; c is the largest
constant with (F + 2M)·P(χ²_k < c·k) ≤ bound / N, and each input reports its δ. With k = 64 and
ResNet-18 at 3×224×224 (4.1 million faces, 999 margins) one input gets c = 0.113: U_j overshoots
‖g_j‖₂ by about 1/√c ≈ 3×, and a few dozen exact gradients settle all three norms. The directions
are drawn on the CPU from ``seed`` (recorded with the results), the same for every input and
device: a run is reproducible.

**When.** An input is sketched where the deterministic screening cannot settle it and the input
is large: D ≥ ``RATIO`` · k (a float64 direction costs about four float32 ones on a CPU, so the
k sketch directions cost at most about a quarter of the dense way's D); elsewhere it goes the
dense way (deterministic). ``guarantee="deterministic"`` never sketches.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import plan as planning
from . import screen
from .norms import DualNorms
from .tangents import push

#: Directions per sketch (k).
DIRECTIONS = 64
#: Inputs are sketched only where D ≥ RATIO · k.
RATIO = 16
#: A run's bound on the probability that any of its answers is not exact.
DEFAULT_DELTA = 1e-12


def pays(d: int, k: int) -> bool:
    """Whether sketching an input of ``d`` dimensions with ``k`` directions is much cheaper than
    the dense way: d ≥ RATIO · k (see "When" above)."""
    return d >= RATIO * k


def lower_tail(k: int, c: float) -> float:
    """P(χ²_k < c·k): the probability that a sketch of k directions makes U_j < ‖g_j‖₂. It is the
    regularised lower incomplete gamma function P(k/2, c·k/2), by its series below a + 1 and its
    continued fraction above (Numerical Recipes §6.2), in plain float64 arithmetic on the host.

    >>> round(lower_tail(2, 0.5), 6)  # χ²_2 is exponential with mean 2: 1 − e^(−1/2)
    0.393469
    """
    a, x = k / 2, c * k / 2
    if x <= 0:
        return 0.0
    scale = math.exp(a * math.log(x) - x - math.lgamma(a))
    if x < a + 1:  # Σ_n x^n / (a (a+1) … (a+n))
        term = total = 1 / a
        n = a
        while term > total * 1e-17:
            n += 1
            term *= x / n
            total += term
        return min(1.0, scale * total)
    return max(0.0, 1.0 - scale * _upper_fraction(a, x))


def _upper_fraction(a: float, x: float) -> float:
    """The continued fraction of Q(a, x) / (x^a e^−x / Γ(a)), for x ≥ a + 1 (modified Lentz)."""
    tiny = 1e-300
    b = x + 1 - a
    c, d = 1 / tiny, 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        h *= d * c
        if abs(d * c - 1) < 1e-16:
            break
    return h


def constant(k: int, probability: float) -> float:
    """The largest c (to 1e-12, relative) with P(χ²_k < c·k) ≤ ``probability``.

    >>> c = constant(64, 1e-20); lower_tail(64, c) <= 1e-20 < lower_tail(64, c * (1 + 1e-9))
    True
    """
    low, high = 0.0, 1.0  # the tail at c = 1 is about 1/2: far above any bound asked for
    while high - low > 1e-12 * high:
        middle = (low + high) / 2
        low, high = (middle, high) if lower_tail(k, middle) <= probability else (low, middle)
    return low


class Sketch:
    """An engine's k Gaussian directions and the screening they give."""

    def __init__(self, engine, directions: int, seed: int, bound: float):
        self.engine, self.k, self.seed, self.bound = engine, directions, seed, bound
        self.run_size = 1  # inputs that share the bound (set for each run)
        self._directions: dict[torch.dtype, Tensor] = {}
        self._constants: dict[int, float] = {}

    def directions(self, dtype: torch.dtype) -> Tensor:
        """The k directions, (1, k, *input_shape) on the engine's device: drawn on the CPU from
        ``seed`` (the same on every device and for every batch), once per dtype."""
        if dtype not in self._directions:
            generator = torch.Generator(device="cpu").manual_seed(self.seed)
            network = self.engine.network
            drawn = torch.randn(self.k, network.input_size, generator=generator, dtype=torch.float64, device="cpu")
            self._directions[dtype] = drawn.to(self.engine.device, dtype).reshape(1, self.k, *network.input_shape)
        return self._directions[dtype]

    def level(self, events: int) -> tuple[float, float]:
        """For an input with ``events`` sketched bounds: the constant c, and its δ ≤ bound / run size."""
        if events not in self._constants:
            self._constants[events] = constant(self.k, self.bound / self.run_size / max(events, 1))
        c = self._constants[events]
        return c, events * lower_tail(self.k, c)

    def certify(self, region, x: Tensor, floor: Tensor | None, tensors: dict[str, Tensor], margins: bool):
        """Screen ``region``'s inputs with the sketch's floors (the larger of them and the
        deterministic ``floor`` where given), continuing from the exact ratios in ``tensors``.
        Returns the radii (as :func:`.screen.certify`), the inputs left to the dense way, each
        input's δ, and with ``margins`` the outputs' tangents along the directions (B, k, classes)
        and the constant c, for :func:`.prediction.sketched_margins`."""
        engine = self.engine
        classes = math.prod(engine.network.output_shape) if margins else 0
        c, delta = self.level(engine.network.faces + 2 * max(classes - 1, 0))
        fold = self.measure(region, margins)
        sketched = torch.stack([self.floors(region, fold.norms, p, c) for p in engine.norms])
        floor = sketched if floor is None else torch.maximum(floor, sketched)
        radii, dense = screen.certify(region, x, floor, tensors)
        deltas = torch.full((region.batch,), delta, dtype=torch.float64, device=engine.device)
        return radii, dense, deltas, (fold.outputs, c)

    def measure(self, region, margins: bool = False) -> "_Fold":
        """Push the k directions through ``region``'s frozen network in its value dtype: Σ_i y_ij²
        per face and, with ``margins``, the outputs' tangents."""
        engine = self.engine
        classes = math.prod(engine.network.output_shape) if margins else 0
        fold = _Fold(region.batch, engine.fused_norms, self.k, classes)
        walk = engine.output_walk if margins else engine.walk
        dtype = engine.value_dtype
        row = planning.bytes_per_row(engine, dtype, walk)
        per_pass = max(1, min(self.k, engine.memory_bytes // row))
        group = max(1, engine.memory_bytes // (row * per_pass))
        seeds = self.directions(dtype)
        for start in range(0, self.k, per_pass):
            fold.at = start
            stop = min(self.k, start + per_pass)
            push(region, seeds[:, start:stop], fold, group, walk)
            engine.work.pushed += region.batch * (stop - start)
            if engine.progress is not None:  # the k directions stand for the input's D
                d = engine.dimensions
                engine.progress(region.batch * (d * stop // self.k - d * start // self.k))
        return fold

    def floors(self, region, sums: DualNorms, p: str, c: float) -> Tensor:
        """(B, F): every face's floor |z| / U for norm ``p`` (+inf where all k directional
        derivatives are 0: a gradient that is zero, not a face)."""
        scale = math.sqrt(self.engine.dimensions) if p == "linf" else 1.0
        parts = []
        for i in self.engine.nonlinear:
            bound = region.per_face(i, upper_bound(sums.stats[(i, "l2")].double(), c, self.k)) * scale
            z = region.faces[i].double().abs()
            parts.append(torch.nan_to_num(torch.where(bound == 0, math.inf, z / bound), nan=0.0))
        return torch.cat(parts, dim=1)


def upper_bound(squares: Tensor, c: float, k: int) -> Tensor:
    """U = √(Σ_i y_i² / (c·k)) from the sums of squares of k Gaussian projections of vectors g:
    U ≥ ‖g‖₂ except with probability P(χ²_k < c·k) each."""
    return (squares / (c * k)).sqrt()


class _Fold:
    """What a sketch keeps of its pushes: Σ_i y_ij² per face, and the outputs' tangents."""

    def __init__(self, batch: int, fused: bool, k: int, classes: int):
        self.norms = DualNorms(batch, ("l2",), fused)
        self.outputs: Tensor | None = None
        self.k, self.classes, self.at = k, classes, 0

    def faces(self, i: int, rows: slice, g: Tensor) -> None:
        self.norms.faces(i, rows, g)

    def output(self, rows: slice, t: Tensor) -> None:
        if self.outputs is None:
            self.outputs = t.new_zeros(self.norms.batch, self.k, self.classes)
        self.outputs[rows, self.at : self.at + t.shape[1]] = t.reshape(*t.shape[:2], -1)
