"""A certified upper bound on the largest distortion in the ball: max over x' ∈ B of Δ(x').

1. **Which units can change.** Bounds on every nonlinearity's input over B: interval arithmetic
   through the layer list (an affine layer maps centre m and radius r to A m + c and |A| r; an ℓ2
   ball's first layers get their exact reach, z(x) ± ε‖∇z‖₂), intersected, where affordable, with
   linear relaxation bounds (:mod:`.relaxation`), much tighter on deep layers. A unit whose input
   interval holds none of its kinks keeps its slope over all of B (*fixed*); the others are
   *free*: their slope anywhere in the hull of their pieces' slopes ([0, 1] for a ReLU, [α, 1] a
   LeakyReLU, [−1, 1] an Abs); a max-pool window (or a max of two) with one possible arg-max is
   fixed, else each possible winner takes a share in [0, 1] of the window's gradient.
2. **Where the saliency can go.** g(x') = Aᵀ₁ D₁ Aᵀ₂ … D_L w, the backward pass with the slopes D
   of x'. Interval arithmetic on that product, backwards from w, with each D over the ball's
   slopes, encloses g_i(x') for every x' ∈ B coordinate by coordinate, in [m_i ± r_i]; the same
   pass with x's own slopes encloses g_i(x) in [m⁰_i ± r⁰_i]. Hence |g_i(x') − g_i(x)| ≤
   |m_i − m⁰_i| + r_i + r⁰_i, and Δ ≤ the distortion norm of that vector.
3. **Exactly 0 when it should be**: where every unit is fixed, every x' ∈ B has x's pattern, hence
   x's gradient, and the bound is 0. **Vacuous** where it is no smaller than the same pass with
   every unit free (what interval arithmetic says of the whole input space: the ball taught it
   nothing); interval arithmetic loosens with depth, so deep networks at large ε get it.

**Rigour in floating point.** Everything runs in float64 in :mod:`.intervals`' arithmetic, whose
enclosures include the rounding of every operation: an affine step's radius is widened to
(|A| r + γₙ (|A| |m| + |c|)) / (1 − γₙ), with n the layer's input and output sizes together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..network import ir
from . import relaxation
from .ball import Ball
from .intervals import TINY, U, Interval, gamma, hull_product, layer_size, transposed, widened


@dataclass
class Bound:
    """Per input: the bound on max Δ, whether it is vacuous, and how many units it left free."""

    value: Tensor
    vacuous: Tensor
    free: Tensor
    units: int


# ------------------------------------------------------------------------------- nonlinearities


@dataclass
class Routing:
    """How a nonlinearity passes the backward signal on, over a box of inputs: per *element* (a
    unit; a window's entry; an input of a max) a slope interval [lo, hi] under the box, and under
    every unit free. ``spread`` takes the output's cotangent to the elements (one tensor per layer
    input), ``gather`` the elements' back to the layer's inputs."""

    slopes: list[tuple[Tensor, Tensor]]
    every: list[tuple[Tensor, Tensor]]
    spread: Callable[[Interval], list[Interval]]
    gather: Callable[[list[Interval]], list[Interval]]

    def through(self, s: Interval, every: bool = False) -> list[Interval]:
        """The inputs' cotangents for the output's ``s``: each element's slope (under every unit
        free, with ``every``) times its share."""
        slopes = self.every if every else self.slopes
        return self.gather([hull_product(lo, hi, v) for (lo, hi), v in zip(slopes, self.spread(s))])


def _elementwise(layer: ir.Elementwise, z: Interval) -> tuple[Interval, Tensor, Routing]:
    """An elementwise piecewise-linear f: the image of [lo, hi] is spanned by f at the ends and at
    the kinks inside; a unit with a kink in [lo, hi] is free (its slope: :data:`SLOPES`)."""
    lo, hi = z.ends()
    kinks = [torch.as_tensor(b, dtype=lo.dtype, device=lo.device).expand_as(lo) for b in layer.kinks()]
    values = torch.stack([layer.apply(lo), layer.apply(hi)] + [layer.apply(torch.maximum(torch.minimum(b, hi), lo)) for b in kinks])
    out_lo, out_hi = values.amin(dim=0), values.amax(dim=0)
    free = torch.zeros_like(lo, dtype=torch.bool)
    for b in kinks:
        free |= (lo <= b) & (b <= hi)
    slopes = SLOPES[type(layer)]
    routing = Routing([slopes(layer, lo, free)], [slopes(layer, lo, torch.ones_like(free))], lambda s: [s], lambda parts: parts)
    output = Interval.between(out_lo - U * out_lo.abs(), out_hi + U * out_hi.abs())
    return output, free.flatten(1).sum(dim=1), routing


def _relu_slopes(layer: ir.ReLU, lo: Tensor, free: Tensor) -> tuple[Tensor, Tensor]:
    """A fixed unit: 1 above 0, α below; a free one: between α and 1."""
    alpha = torch.as_tensor(layer.negative_slope, dtype=lo.dtype, device=lo.device).expand_as(lo)
    fixed = torch.where(lo > 0, 1.0, alpha)
    return torch.where(free, alpha.clamp(max=1), fixed), torch.where(free, alpha.clamp(min=1), fixed)


def _clip_slopes(layer: ir.Clip, lo: Tensor, free: Tensor) -> tuple[Tensor, Tensor]:
    """A fixed unit: 1 between the bounds, 0 outside; a free one: between 0 and 1."""
    inside = layer.gain(lo)
    return torch.where(free, 0.0, inside), torch.where(free, 1.0, inside)


def _abs_slopes(layer: ir.Abs, lo: Tensor, free: Tensor) -> tuple[Tensor, Tensor]:
    """A fixed unit: its sign; a free one: between −1 and 1."""
    sign = torch.where(lo > 0, 1.0, -1.0).to(lo.dtype)
    return torch.where(free, -1.0, sign), torch.where(free, 1.0, sign)


#: Each elementwise nonlinearity's slope interval for its units, given their lower ends and which are free.
SLOPES = {ir.ReLU: _relu_slopes, ir.Clip: _clip_slopes, ir.Abs: _abs_slopes}


def _shares(sole: Tensor, possible: Tensor) -> tuple[Tensor, Tensor]:
    """Selection slopes: 1 for the sole possible winner, [0, 1] for one of several, 0 for the rest."""
    one = sole.to(torch.float64)
    return one, torch.where(possible, 1.0, one)


def _max_pool(layer: ir.MaxPool2d, z: Interval) -> tuple[Interval, Tensor, Routing]:
    """Each window's possible winners: the entries whose upper end reaches the largest lower end."""
    lo, hi = z.ends()
    windows_lo, windows_hi = layer.windows(lo, -math.inf), layer.windows(hi, -math.inf)
    top = windows_lo.amax(dim=-2, keepdim=True)
    possible = windows_hi >= top  # (padding never: its upper end is −inf)
    several = possible.sum(dim=-2, keepdim=True) > 1
    real = windows_hi > -math.inf
    output = Interval.between(top.reshape(len(lo), *layer.shape), windows_hi.amax(dim=-2).reshape(len(lo), *layer.shape))
    n = layer.window_size + 2
    routing = Routing([_shares(possible & ~several, possible)], [_shares(torch.zeros_like(real), real)],
                      lambda s: [Interval(s.mid.reshape(top.shape), s.rad.reshape(top.shape))],
                      lambda parts: [_adjoint(lambda t: layer.windows(t, 0.0), lo, parts[0], n)])
    return output, several.flatten(1).sum(dim=1), routing


def _maximum(layer: ir.Maximum, a: Interval, b: Interval) -> tuple[Interval, Tensor, Routing]:
    """max(a, b) (or min) of two input-dependent tensors: a window of two."""
    (alo, ahi), (blo, bhi) = a.ends(), b.ends()
    pick_a = torch.ones((), dtype=torch.bool, device=alo.device)
    first = [layer.select(pick_a, alo, blo), layer.select(pick_a, ahi, bhi)]  # a, broadcast to the output
    second = [layer.select(~pick_a, alo, blo), layer.select(~pick_a, ahi, bhi)]  # b alike
    pick = torch.minimum if layer.minimum else torch.maximum
    output = Interval.between(pick(first[0], second[0]), pick(first[1], second[1]))
    if layer.minimum:
        a_can, b_can = first[0] <= second[1], second[0] <= first[1]
    else:
        a_can, b_can = first[1] >= second[0], second[1] >= first[0]
    several, every = a_can & b_can, torch.ones_like(a_can)
    never = torch.zeros_like(every)
    gather = lambda parts: [  # noqa: E731
        _adjoint(lambda t: layer.select(pick_a, t, torch.zeros_like(blo)), alo, parts[0], 4),
        _adjoint(lambda t: layer.select(~pick_a, torch.zeros_like(alo), t), blo, parts[1], 4)]
    routing = Routing([_shares(a_can & ~b_can, a_can), _shares(b_can & ~a_can, b_can)],
                      [_shares(never, every), _shares(never, every)], lambda s: [s, s], gather)
    return output, several.flatten(1).sum(dim=1), routing


def _adjoint(linear: Callable[[Tensor], Tensor], like: Tensor, cotangent: Interval, n: int) -> Interval:
    """The cotangent interval of ``linear``'s input (shaped like ``like``): its transpose applied to
    the centre, and to the radius and |centre| as well, since ``linear`` only selects and sums."""
    leaf = torch.zeros_like(like).requires_grad_(True)
    with torch.enable_grad():
        out = linear(leaf)
        mid, rad, size = (torch.autograd.grad(out, leaf, v.expand(out.shape), retain_graph=True)[0]
                          for v in (cotangent.mid, cotangent.rad, cotangent.mid.abs()))
    return Interval(mid, widened(rad, size, n))


def _nonlinear(layer: ir.Nonlinearity, ins: list[Interval]) -> tuple[Interval, Tensor, Routing]:
    if isinstance(layer, ir.MaxPool2d):
        return _max_pool(layer, ins[0])
    if isinstance(layer, ir.Maximum):
        return _maximum(layer, *ins)
    return _elementwise(layer, ins[0])


# ------------------------------------------------------------------------------- affine layers


def _affine(layer: ir.Affine, magnitude: ir.Affine, ins: list[Interval]) -> Interval:
    mid = layer.apply([i.mid for i in ins])
    rad = magnitude.apply([i.rad for i in ins], offset=False)
    size = magnitude.apply([i.mid.abs() for i in ins])  # |A| |m| + |c|
    return Interval(mid, widened(rad.expand_as(mid), size.expand_as(mid), layer_size(layer)))


def _affine_back(layer: ir.Affine, magnitude: ir.Affine, s: Interval) -> list[Interval]:
    batch, n = len(s.mid), layer_size(layer)
    mids, rads, sizes = (transposed(op, batch, v) for op, v in ((layer, s.mid), (magnitude, s.rad), (magnitude, s.mid.abs())))
    return [Interval(m, widened(r, z, n)) for m, r, z in zip(mids, rads, sizes)]


# ------------------------------------------------------------------------------- the passes


def _prefix(network: ir.Network) -> set[int]:
    """The affine layers before any nonlinearity (their inputs all the input or such layers)."""
    found: set[int] = set()
    for i, layer in enumerate(network.layers[1:], 1):
        if isinstance(layer, ir.Affine) and set(layer.inputs) <= {0} | found:
            found.add(i)
    return found


def _forward(network: ir.Network, magnitudes: ir.Network, start: Interval, tighter: dict[int, Interval],
             relaxed: "relaxation.Relaxation | None" = None) -> tuple[dict, Tensor, dict]:
    """Interval bounds through the layers from ``start``, intersected with ``tighter`` where given,
    and for the inputs of the nonlinearities ``relaxed.layers`` with its relaxation bounds: each
    nonlinearity's :class:`Routing`, the free units per input, and the prefix's intervals."""
    values = {0: start}
    routes: dict[int, Routing] = {}
    free = torch.zeros(len(start.mid), dtype=torch.long, device=start.mid.device)
    last, prefix = network.last_uses(range(network.output + 1)), _prefix(network)
    chosen = relaxed.layers if relaxed is not None else frozenset()
    keep = prefix | {0} | (set(range(network.output + 1)) if chosen else set())
    for i, layer in enumerate(network.layers[1 : network.output + 1], 1):
        if i in chosen:
            values[layer.inputs[0]] = relaxed.bounds(values, i)
        ins = [values[j] for j in layer.inputs]
        if isinstance(layer, ir.Affine):
            values[i] = _affine(layer, magnitudes.layers[i], ins)
            if i in tighter:
                values[i] = _meet(values[i], tighter[i])
        else:
            values[i], count, routes[i] = _nonlinear(layer, ins)
            free += count
        for j in set(layer.inputs):
            if last.get(j) == i and j not in keep:
                values.pop(j, None)
    return routes, free, {j: v for j, v in values.items() if j in prefix or j == 0}


def _meet(a: Interval, b: Interval) -> Interval:
    """The intersection of two enclosures of the same values."""
    (lo, hi), (blo, bhi) = a.ends(), b.ends()
    return Interval.between(torch.maximum(lo, blo), torch.minimum(hi, bhi))


def _backward(network: ir.Network, magnitudes: ir.Network, step: Callable[[int, Interval], list[Interval]],
              start: Interval) -> Interval:
    """Interval arithmetic backwards from ``start`` at the output to the input: affine layers by
    their transposes, nonlinearity ``i`` by ``step(i, cotangent)``."""
    cotangents = {network.output: start}
    for i in range(network.output, 0, -1):
        if i not in cotangents:
            continue
        s, layer = cotangents.pop(i), network.layers[i]
        parts = _affine_back(layer, magnitudes.layers[i], s) if isinstance(layer, ir.Affine) else step(i, s)
        for j, part in zip(layer.inputs, parts):
            cotangents[j] = part if j not in cotangents else cotangents[j] + part
    if 0 not in cotangents:  # an output that does not depend on the input
        return Interval.zero(start.mid.new_zeros(len(start.mid), *network.input_shape))
    return cotangents[0]


def _l2_prefix(network: ir.Network, at_x: dict[int, Interval], eps: float) -> dict[int, Interval]:
    """For an ℓ2 ball: the prefix's exact reach, z(x) ± ε‖row of z's Jacobian‖₂, where the prefix
    squares cleanly (selections and diagonal scales, and at most one dense or convolution layer,
    whose squared weights then give each row's squared norm); other layers get none."""
    squares: dict[int, tuple[Tensor, bool]] = {0: (at_x[0].mid.new_ones(at_x[0].mid.shape), False)}
    tighter = {}
    for i in sorted(at_x):
        layer = network.layers[i]
        if i == 0 or any(j not in squares for j in layer.inputs):
            continue
        ins = [squares[j] for j in layer.inputs]
        mixed = any(m for _, m in ins)
        if isinstance(layer, (ir.Dense, ir.Convolution)) and not mixed:
            sq, mixed = layer._mapped(torch.square, {}, True).apply([ins[0][0]], offset=False), True
        elif isinstance(layer, ir.ElementwiseAffine):
            sq = layer._mapped(torch.square, {}, True).apply([ins[0][0]], offset=False)
        elif isinstance(layer, (ir.Reshape, ir.Permute, ir.Slice, ir.Gather, ir.Pad, ir.Expand, ir.Concat, ir.Hold)):
            sq = layer.apply([sq for sq, _ in ins], offset=False)
        else:
            continue
        squares[i] = (sq, mixed)
        g = gamma(layer_size(layer))
        reach = eps * sq.clamp_min(0).sqrt() * (1 + g) / (1 - g) * (1 + 8 * U)
        tighter[i] = Interval(at_x[i].mid, at_x[i].rad + reach + TINY)
    return tighter


def _reach(over: Interval, at_x: Interval, order: float) -> Tensor:
    """The largest ‖g' − g‖ over g' in ``over`` and g in ``at_x`` (B, …): per coordinate
    |m − m⁰| + r + r⁰, in ``order``."""
    reach = (over.mid - at_x.mid).abs() + over.rad + at_x.rad
    reach = (reach + 2 * U * (over.mid.abs() + at_x.mid.abs() + reach) + TINY).flatten(1)
    if order == math.inf:
        return reach.amax(dim=1)
    total = (reach.sum(dim=1) if order == 1 else reach.square().sum(dim=1)) * (1 + gamma(reach.shape[1] + 2))
    return total if order == 1 else total.sqrt() * (1 + 4 * U)


def distortion_bound(network: ir.Network, magnitudes: ir.Network, x: Tensor, weights: Tensor, ball: Ball, order: float) -> Bound:
    """The certified bound of the module for each row of ``x`` (float64, like ``network`` and
    ``magnitudes`` = ``network.absolute()``), the target ``weights`` (B, K), the ``order`` of Δ."""
    x = x.reshape(len(x), *network.input_shape)
    at_x, _, prefix = _forward(network, magnitudes, Interval(x, torch.zeros_like(x)), {})
    tighter = _l2_prefix(network, prefix, ball.eps) if ball.norm == "l2" else {}
    relaxed = relaxation.Relaxation(network, magnitudes, ball, x)
    over, free, _ = _forward(network, magnitudes, Interval.between(*ball.interval(x)), tighter, relaxed)
    out = network.layers[network.output]
    w = weights.reshape(len(weights), *out.shape)
    start = Interval(w, torch.zeros_like(w))
    g0 = _backward(network, magnitudes, lambda i, s: at_x[i].through(s), start)
    change = {every: _reach(_backward(network, magnitudes, lambda i, s: over[i].through(s, every), start), g0, order)
              for every in (False, True)}
    value = torch.where(free == 0, 0.0, change[False])
    units = sum(network.layers[i].size for i in network.nonlinear if i <= network.output)
    return Bound(value, (free > 0) & (change[False] >= change[True]), free, units)
