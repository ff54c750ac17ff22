"""A posteriori bounds on a face value's rounding error, from the computation actually done.

The precision flag first screens with an a-priori bound (:meth:`.region.Region.describe`: a face
within PRECISION_MARGIN · u · s of 0, s the magnitude of its terms, compounded over every layer
with no cancellation — on deep networks far above the real error). Faces it flags are judged
again here, by running error analysis.

Each affine layer computes ŷ = fl(A ĥ + c) from the values ĥ it was actually given; its local error
δ = ŷ − (A ĥ + c) satisfies |δ| ≤ Δ = γₙ₊₁ (|A| |ĥ| + |c|) componentwise (n products per output,
``Affine.terms``; u the unit roundoff, γₙ = n·u / (1 − n·u)). A unit activation rounds only
where its piece scales or shifts (LeakyReLU, PReLU, HardSigmoid: Δ = γ₂ (|s z| + |offset|));
ReLU, clips and max-pools select, exactly. The network frozen at the pattern is affine, so a
face's computed value ẑ differs from its exact value z (on the same input, by the same frozen
network) by exactly Σ_l J_l · δ_l, J_l = ∂z/∂y_l, hence

    |ẑ − z| ≤ E = Σ_l |J_l| · Δ_l  (+ u |ẑ| for the face's own subtraction of its kink).

J_l comes from one reverse pass per input (autograd, in the value dtype); its own rounding is of
second order (γ² relative) and is covered by a factor 2. A face stays flagged only where
|ẑ| ≤ PRECISION_MARGIN · E (E > 0): where even this bound does not put it well away from 0;
those few get their exact value recomputed (:mod:`.compensated`).

Cost: one value pass and one backward pass per flagged input, flagged inputs only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..network import ir
from . import precision, reverse

#: A face within PRECISION_MARGIN · (its rounding bound) of 0 gets a precision warning: a priori
#: u · s (s its terms' magnitude), a posteriori E.
PRECISION_MARGIN = 1000
#: Selections that never round: their output is one of their inputs (or a constant bound).
EXACT = (ir.MaxPool2d, ir.Maximum)


def face_bounds(engine, x: Tensor, layer: Tensor, unit: Tensor) -> tuple[Tensor, Tensor]:
    """For each input of ``x`` (in the value dtype) and its face (nonlinear ``layer``, ``unit``):
    the face value ẑ computed again and the bound E on |ẑ − z| (both (B,), float64). Inputs go
    through in groups that fit the reverse passes' memory budget."""
    fit = max(1, reverse.budget(engine) // (2 * engine.network.reverse_bytes_per_row(x.dtype)))
    parts = [_bounds(engine, x[a : a + fit], layer[a : a + fit], unit[a : a + fit]) for a in range(0, len(x), fit)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _bounds(engine, x: Tensor, layer: Tensor, unit: Tensor) -> tuple[Tensor, Tensor]:
    network, u = engine.network, torch.finfo(x.dtype).eps / 2
    points = x.detach().clone().requires_grad_(True)
    outputs, errors = [], []  # each rounding layer's output (in autograd's graph) and its Δ
    total = torch.zeros(len(x), dtype=x.dtype, device=x.device)

    def record(i: int, layer_i: ir.Nonlinearity, *z: Tensor) -> Tensor:
        nonlocal total
        here = layer == i
        faces = layer_i.faces(*z).reshape(len(x), -1)
        total = total + torch.where(here, faces.gather(1, torch.where(here, unit, 0)[:, None])[:, 0], 0.0)
        y = layer_i.apply(*z)
        if not isinstance(layer_i, EXACT):
            outputs.append(y)
            errors.append(_activation_error(layer_i, z[0].detach(), u))
        return y

    def affine(i: int, layer_i: ir.Affine, ins: list[Tensor]) -> Tensor:
        y = layer_i.apply(ins)
        magnitude = engine.magnitudes.layers[i].apply([v.detach().abs() for v in ins])
        outputs.append(y)
        errors.append(precision.gamma(layer_i.terms + 1, u) * magnitude)
        return y

    last = max(i for i, layer_i in enumerate(network.layers) if isinstance(layer_i, ir.Nonlinearity))
    with torch.enable_grad():
        network.run(points, nonlinear=record, affine=affine, until=last)  # (no face lies beyond the last)
        bound = propagated(total, outputs, errors)
    value = total.detach().double()
    return value, 2 * bound + u * value.abs()


def propagated(total: Tensor, outputs: list[Tensor], errors: list[Tensor]) -> Tensor:
    """Σ_l |∂z/∂y_l| · Δ_l for each row of ``total`` (each row's face value z, in autograd's graph),
    ``outputs`` the layers' outputs y_l and ``errors`` their local errors Δ_l: one reverse pass
    (float64 sums)."""
    gradients = torch.autograd.grad(total.sum(), outputs, allow_unused=True) if outputs else []
    bound = torch.zeros(len(total), dtype=torch.float64, device=total.device)
    for gradient, error in zip(gradients, errors):
        if gradient is not None:
            bound = bound + (gradient.abs() * error).reshape(len(total), -1).sum(dim=1, dtype=torch.float64)
    return bound


def _activation_error(layer: ir.Nonlinearity, z: Tensor, u: float) -> Tensor:
    """Δ of a unit activation's output: γ₂ (|s z| + |offset|) where its piece scales or shifts."""
    gain = layer.gain(z)
    scaled = torch.where((gain == 0) | (gain == 1), 0.0, (gain * z).abs())
    return precision.gamma(2, u) * (scaled + layer.offset_bound())

