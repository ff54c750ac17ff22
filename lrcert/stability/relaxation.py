"""Linear relaxation bounds (CROWN; Zhang et al., NeurIPS 2018) on a layer's values over the ball:
tighter than interval arithmetic, so that more units are proven fixed (:mod:`.bound`).

For a layer's unit z_j, start from the row e_j and substitute backwards: an affine layer y = A h + c
turns Λ·y into (Λ A)·h + Λ·c; a ReLU-family unit y = f(z) with input bounds [l, u] lies between two
lines, s_lo z + t_lo ≤ f(z) ≤ s_up z + t_up (for an unstable ReLU the chord u(z − l)/(u − l) above
and z or 0 below, whichever is nearer), and Λ·y ≤ Λ⁺(s_up z + t_up) + Λ⁻(s_lo z + t_lo); any other
nonlinearity is bounded by its interval (its output in [m ± r] gives Λ·y ≤ Λ·m + |Λ|·r) and the
substitution stops there. At the input, the ball itself: over a box [lo, hi] Λ·x' ≤ Λ·m + |Λ|·r;
over an ℓ2 ball Λ·x' ≤ Λ·x + ε‖Λ‖₂ (with a box too: the smaller of both). The same with −e_j gives
the lower bound.

**Rigour.** Every computed product Λ̂ M differs from the exact one by at most γₙ |Λ̂| |M|, an error
that reaches the bound only through the layer's values, whose magnitudes the interval pass bounds
(H = |m| + r): each step adds γₙ |Λ̂| (|M| H + |c|) to a running slack, added to the bound at the
end. Relaxation slopes are rounded up (the chord stays above the function) and intercepts widened.

**Cost.** Substituting back from a unit costs about one backward pass of the layers below it; only
units whose interval holds their kink (the ones a relaxation can fix) get one. Layers are relaxed
in order while the total stays within :data:`WORK` multiply-adds per input.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..network import ir
from .ball import Ball
from .intervals import TINY, U, Interval, gamma, layer_size, transposed

#: Multiply-adds per input the substitutions of one bound may cost in all (about as much as a few
#: hundred value passes of a small CNN; an ImageNet-size network keeps its interval bounds).
WORK = 100_000_000
#: Bytes of coefficient rows one substitution holds at once.
ROW_BYTES = 128 << 20


class Relaxation:
    """The relaxation bounds of one batch of inputs ``x`` (B, *input shape) over ``ball``: which
    layers may get them (:attr:`layers`, the ReLU-family layers; not those whose input is affine in
    the network's input over an ℓ∞ ball, where intervals are exact), and the work left to spend."""

    def __init__(self, network: ir.Network, magnitudes: ir.Network, ball: Ball, x: Tensor, work: int | None = None):
        self.network, self.magnitudes, self.ball, self.x = network, magnitudes, ball, x
        self.left = (WORK if work is None else work) * len(x)
        self.cost: dict[int, int] = {}  # layer -> multiply-adds of one row's substitution back from its input
        done, prefix = 0, {0}
        for i, layer in enumerate(network.layers[1 : network.output + 1], 1):
            if isinstance(layer, ir.Affine):
                done += layer.size * max(1, layer.terms)
                if set(layer.inputs) <= prefix:
                    prefix.add(i)
            elif _relaxable(layer) and not (ball.norm == "linf" and layer.inputs[0] in prefix):
                self.cost[i] = done

    @property
    def layers(self) -> frozenset[int]:
        return frozenset(self.cost)

    def bounds(self, values: dict[int, Interval], i: int) -> Interval:
        """The input of ReLU-family layer ``i`` over the ball, from the intervals ``values`` of every
        layer below it: its units whose interval holds the kink (0) get relaxation bounds while the
        work allows (two substitutions each), intersected with their interval; the others keep it."""
        j, b = self.network.layers[i].inputs[0], len(self.x)
        lo, hi = (t.reshape(b, -1) for t in values[j].ends())
        unstable = (lo < 0) & (hi > 0)
        count = unstable.sum(dim=1)
        most = int(count.max())  # (one host wait per layer relaxed)
        if most == 0 or 2 * most * self.cost[i] > self.left:
            return values[j]
        self.left -= 2 * most * self.cost[i]
        units = unstable.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :most]  # each input's open units first
        real = torch.arange(most, device=lo.device)[None, :] < count[:, None]  # (B, most)
        top, bottom = self._extremes(values, j, units, real)
        hi = hi.scatter(1, units, torch.where(real, torch.minimum(hi.gather(1, units), top), hi.gather(1, units)))
        lo = lo.scatter(1, units, torch.where(real, torch.maximum(lo.gather(1, units), bottom), lo.gather(1, units)))
        shape = self.network.layers[j].shape
        return Interval.between(lo.reshape(b, *shape), hi.reshape(b, *shape))

    def _extremes(self, values: dict[int, Interval], j: int, units: Tensor, real: Tensor) -> tuple[Tensor, Tensor]:
        """The largest and smallest value over the ball of each input's ``units`` of layer ``j``, (B, most)."""
        shape, (b, most) = self.network.layers[j].shape, units.shape
        largest = max(math.prod(layer.shape) for layer in self.network.layers[: j + 1])
        rows = max(1, min(most, ROW_BYTES // (24 * b * largest)))
        upper, lower = [], []
        for start in range(0, most, rows):
            r = min(rows, most - start)
            seeds = torch.zeros(r, b, math.prod(shape), dtype=self.x.dtype, device=self.x.device)
            seeds.scatter_(2, units[:, start : start + r].T.unsqueeze(2), real[:, start : start + r].T.unsqueeze(2).to(self.x.dtype))
            seeds = seeds.reshape(r, b, *shape)
            upper.append(_substitute(self.network, self.magnitudes, self.ball, self.x, values, j, seeds))
            lower.append(-_substitute(self.network, self.magnitudes, self.ball, self.x, values, j, -seeds))
        return torch.cat(upper).T, torch.cat(lower).T


def _relaxable(layer: ir.Layer) -> bool:
    """A ReLU or LeakyReLU (a PReLU with slopes of at most 1): convex, two lines bound it."""
    if not isinstance(layer, ir.ReLU):
        return False
    slope = layer.negative_slope
    return bool((slope <= 1).all()) if isinstance(slope, Tensor) else slope <= 1


def _substitute(network: ir.Network, magnitudes: ir.Network, ball: Ball, x: Tensor, values: dict[int, Interval], j: int,
                seeds: Tensor) -> Tensor:
    """max over the ball of seeds·(layer j's value), per row and input, (R, B): the module's substitution."""
    r, b = seeds.shape[:2]
    pending = {j: seeds}
    total = seeds.new_zeros(r, b)  # Λ·(constants) and the concretised parts
    slack = seeds.new_zeros(r, b)
    for k in range(j, 0, -1):
        if k not in pending:
            continue
        coefficients, layer = pending.pop(k), network.layers[k]
        if isinstance(layer, ir.Affine):
            parts, constant, error = _through_affine(layer, magnitudes.layers[k], coefficients, [values[i] for i in layer.inputs])
        elif k != j and _relaxable(layer):
            parts, constant, error = _through_relu(layer, coefficients, values[layer.inputs[0]])
        else:
            constant, error = _concretise(coefficients, values[k])
            parts = []
        total, slack = total + constant, slack + error
        for i, part in zip(layer.inputs, parts):
            pending[i] = part if i not in pending else pending[i] + part
    if 0 in pending:
        constant, error = _at_input(pending.pop(0), ball, x)
        total, slack = total + constant, slack + error
    return total + slack + 4 * U * (total.abs() + slack) + TINY * (j + 2)


def _flat(t: Tensor) -> Tensor:
    return t.flatten(2)


def _through_affine(layer: ir.Affine, magnitude: ir.Affine, coefficients: Tensor, ins: list[Interval]):
    """Λ·(A h + c): Λ A for each input, Λ·c, and the rounding slack γₙ |Λ| (|A| H + |c|)."""
    r, b = coefficients.shape[:2]
    parts = [g.reshape(r, b, *shape) for g, shape in zip(transposed(layer, r * b, coefficients), layer.in_shapes)]
    zeros = [coefficients.new_zeros(1, *shape) for shape in layer.in_shapes]
    offset = layer.apply(zeros).expand(1, *layer.shape).reshape(1, 1, -1)
    reach = magnitude.apply([i.mid.abs() + i.rad for i in ins]).reshape(1, b, -1)  # |A| H + |c|, per input
    flat = _flat(coefficients)
    constant = (flat * offset).sum(dim=2)
    error = gamma(layer_size(layer)) * (flat.abs() * reach).sum(dim=2) + gamma(layer.size + 2) * (flat * offset).abs().sum(dim=2)
    return parts, constant, error


def _through_relu(layer: ir.ReLU, coefficients: Tensor, z: Interval):
    """Λ·f(z) ≤ Λ⁺(s_up z + t_up) + Λ⁻(s_lo z + t_lo): the new coefficients, the intercepts' part, slack."""
    lo, hi = z.ends()
    alpha = torch.as_tensor(layer.negative_slope, dtype=lo.dtype, device=lo.device).expand_as(lo)
    unstable = (lo < 0) & (hi > 0)
    chord = ((hi - alpha * lo) / torch.where(unstable, hi - lo, 1.0)) * (1 + 4 * U)  # rounded up: stays above f
    s_up = torch.where(unstable, chord, torch.where(hi <= 0, alpha, 1.0))
    t_up = torch.where(unstable, ((alpha - chord) * lo) * (1 + 4 * U) + TINY, 0.0)
    s_lo = torch.where(unstable, torch.where(hi >= -lo, 1.0, alpha), torch.where(hi <= 0, alpha, 1.0))
    positive, negative = coefficients.clamp(min=0), coefficients.clamp(max=0)
    up, down = s_up.unsqueeze(0), s_lo.unsqueeze(0)
    new = positive * up + negative * down
    intercepts = _flat(positive) * t_up.reshape(1, len(lo), -1)
    magnitude = (z.mid.abs() + z.rad).reshape(1, len(lo), -1)
    error = (gamma(lo[0].numel() + 2) * intercepts.sum(dim=2) + 2 * U * (_flat(new.abs()) * magnitude).sum(dim=2))
    return [new], intercepts.sum(dim=2), error


def _concretise(coefficients: Tensor, y: Interval) -> tuple[Tensor, Tensor]:
    """max of Λ·y over y ∈ [m ± r]: Λ·m + |Λ|·r, and its rounding slack."""
    flat, b = _flat(coefficients), coefficients.shape[1]
    mid, rad = y.mid.reshape(1, b, -1), y.rad.reshape(1, b, -1)
    value = (flat * mid).sum(dim=2) + (flat.abs() * rad).sum(dim=2)
    return value, gamma(2 * flat.shape[2] + 2) * (flat.abs() * (mid.abs() + rad)).sum(dim=2)


def _at_input(coefficients: Tensor, ball: Ball, x: Tensor) -> tuple[Tensor, Tensor]:
    """max of Λ·x' over the ball (and its box): over the box [lo, hi] around B, and for an ℓ2 ball
    also Λ·x + ε‖Λ‖₂, the smaller."""
    lo, hi = ball.interval(x)
    value, error = _concretise(coefficients, Interval.between(lo, hi))
    if ball.norm == "l2":
        flat = _flat(coefficients)
        d = flat.shape[2]
        centre = (flat * x.reshape(1, len(x), -1)).sum(dim=2)
        reach = ball.eps * flat.square().sum(dim=2).sqrt() * (1 + gamma(d + 2)) * (1 + 4 * U)
        sphere_error = gamma(d + 2) * (flat.abs() * x.abs().reshape(1, len(x), -1)).sum(dim=2)
        better = centre + reach + sphere_error < value + error
        value, error = torch.where(better, centre + reach, value), torch.where(better, sphere_error, error)
    return value, error
