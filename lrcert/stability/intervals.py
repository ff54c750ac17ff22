"""Interval arithmetic in float64 that encloses the exact values (the rounding of every operation
included): what :mod:`.bound` and :mod:`.relaxation` compute with.

A computed sum of at most n products is within γₙ = nu/(1 − nu) of its exact value relative to the
sum of the magnitudes of its terms (u = 2⁻⁵³; any order of summation, as PyTorch's float64 CPU
kernels sum classically); every other operation adds a relative u, absorbed by a few more units
of u, and a tiny absolute term covers underflow.

>>> import torch
>>> box = Interval.between(torch.tensor([0.1]), torch.tensor([0.3]))
>>> lo, hi = box.ends()
>>> bool(lo <= 0.1) and bool(hi >= 0.3)
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..network import ir

U = 2.0**-53
TINY = 2.0**-1022  # the smallest normal float64: covers every underflow of one operation


def gamma(n: int) -> float:
    """γₙ = n·u / (1 − n·u) in float64."""
    return n * U / (1 - n * U)


@dataclass
class Interval:
    """[mid − rad, mid + rad] per entry, rad ≥ 0, enclosing the exact values."""

    mid: Tensor
    rad: Tensor

    @classmethod
    def between(cls, lo: Tensor, hi: Tensor) -> "Interval":
        """An interval enclosing [lo, hi] (the rounding of its own centre and radius included)."""
        return cls((lo + hi) / 2, (hi - lo) / 2 + 2 * U * (lo.abs() + hi.abs()) + TINY)

    @classmethod
    def zero(cls, like: Tensor) -> "Interval":
        return cls(torch.zeros_like(like), torch.zeros_like(like))

    def ends(self) -> tuple[Tensor, Tensor]:
        """(lo, hi) enclosing the interval (the rounding of the subtraction and the sum included)."""
        slack = 2 * U * (self.mid.abs() + self.rad) + TINY
        return self.mid - self.rad - slack, self.mid + self.rad + slack

    def __add__(self, other: "Interval") -> "Interval":
        rad = self.rad + other.rad
        return Interval(self.mid + other.mid, rad + 2 * U * (self.mid.abs() + other.mid.abs() + rad) + TINY)


def widened(rad: Tensor, size: Tensor, n: int) -> Tensor:
    """The radius of an affine step: computed |A| r and |A| |m| + |c| widened for the step's rounding."""
    g = gamma(n)
    return (rad + g * size) / (1 - g) * (1 + 8 * U) + n * TINY


def hull_product(lo: Tensor, hi: Tensor, s: Interval) -> Interval:
    """{d·v : d ∈ [lo, hi], v ∈ s}, enclosed (each product rounded once)."""
    slo, shi = s.ends()
    products = torch.stack(torch.broadcast_tensors(lo * slo, lo * shi, hi * slo, hi * shi))
    low, high = products.amin(dim=0), products.amax(dim=0)
    return Interval.between(low - U * low.abs(), high + U * high.abs())


def layer_size(layer: ir.Layer) -> int:
    """n of γₙ for an affine step either way: every input and output entry (an over-count that costs
    nothing: γ ≤ 10⁻⁹ for ten million)."""
    return sum(math.prod(shape) for shape in layer.in_shapes) + layer.size + 2


def transposed(layer: ir.Affine, batch: int, v: Tensor) -> list[Tensor]:
    """Aᵀ v for each input of the (linear, offset-free) ``layer``, ``v`` (batch, *its shape): a dense
    layer's v W directly, any other's by autograd's vector-Jacobian product (a value pass and a
    backward pass of the layer alone)."""
    if isinstance(layer, ir.Dense) and layer.weight.dim() == 2:
        out = v.reshape(batch, *layer.shape) @ layer.weight
        return [out.reshape(batch, *layer.in_shapes[0])]
    leaves = [v.new_zeros(batch, *shape).requires_grad_(True) for shape in layer.in_shapes]
    with torch.enable_grad():
        out = layer.apply(leaves, offset=False)
        grads = torch.autograd.grad(out, leaves, v.reshape(out.shape), allow_unused=True)
    return [g if g is not None else leaf.detach() for g, leaf in zip(grads, leaves)]
