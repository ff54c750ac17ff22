"""The largest distortion a search finds in the ball: a lower bound on max over B of Δ(x').

Δ is piecewise constant (the gradient changes only where x' crosses a face), so it has no gradient
to climb. The search has three phases:

1. **Explore**: a quarter of the budget on points of the ball, half uniform, half on its boundary
   (random vertices of an ℓ∞ ball, points of an ℓ2 sphere: the most faces crossed).
2. **Climb** a surrogate that has a gradient, built from what lrcert knows about the faces: every
   nonlinearity keeps its exact values, but its slope is smoothed over the distance its input
   actually moves within the ball,

       gain_τ(z) = σ(z / τ)   (a ReLU; Clip, Abs, LeakyReLU, max-pool and max alike: :data:`SMOOTH`),

   with τ per unit the spread (standard deviation) of that unit's input over a few samples of the
   ball. The surrogate saliency g_τ(x') = the backward pass with those slopes; ∇ₓ‖g_τ(x') − g(x)‖
   (a second backward pass through the first) points towards the faces whose crossing moves the
   true saliency most, weighted by how near they are: units that never cross within the ball
   (τ → 0) keep their hard slope and pull nothing. :data:`CHAINS` chains start at the best explored
   points and take projected steepest steps (sign steps for ℓ∞) of a shrinking length.
3. **Walk** (low dimension only, :mod:`.walk`): from region to region across the faces, best first.

The true Δ is evaluated at every point visited; the largest is the answer, with its point.

Cost, in passes per input (one pass: one point's value or backward pass): 2 per explored point; the
spread's value passes; per chain and step a value, backward and double backward (counted as two)
for the surrogate and a value and backward pass for the true Δ: 6; the walk's, in :mod:`.walk`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..network import ir
from .ball import Ball
from .saliency import Saliency, distortion

#: Samples of the ball that measure each unit's spread τ (value passes only).
SPREAD_SAMPLES = 8
#: Chains climbing in parallel per input.
CHAINS = 4
#: The share of the budget spent exploring (uniform points and points on the ball's boundary) first,
#: and in low dimension the share kept for the walk over neighbouring regions (:mod:`.walk`).
EXPLORE, WALK = 0.25, 0.4
#: Passes per chain and step: true Δ (value + backward), surrogate (value + backward + double backward).
STEP_PASSES = 6
#: The step, as a share of ε: from FIRST_STEP down to LAST_STEP over the chain.
FIRST_STEP, LAST_STEP = 0.5, 0.05


def _softplus(z: Tensor, tau: Tensor) -> Tensor:
    return tau * F.softplus(z / tau)


def _relu(layer: ir.ReLU, z: Tensor, tau: Tensor) -> Tensor:
    slope = layer.negative_slope
    return slope * z + (1 - slope) * _softplus(z, tau)


def _clip(layer: ir.Clip, z: Tensor, tau: Tensor) -> Tensor:
    out = z
    for bound, name in zip(layer.kinks(), layer.kink_names()):
        out = out - _softplus(bound - z, tau) if name == "low" else out - _softplus(z - bound, tau)
    return out


def _abs(layer: ir.Abs, z: Tensor, tau: Tensor) -> Tensor:
    return 2 * _softplus(z, tau) - z


def _max_pool(layer: ir.MaxPool2d, z: Tensor, tau: Tensor) -> Tensor:
    windows = layer.windows(z, float("-inf"))
    tau = layer.windows(tau, 0.0).amax(dim=-2, keepdim=True)
    smooth = tau * torch.logsumexp(windows / tau, dim=-2, keepdim=True)
    return smooth.reshape(*layer.lead(z), *layer.shape)


#: A smooth function of each nonlinearity's inputs, whose slopes are the layer's, smoothed at scale τ.
SMOOTH = {ir.ReLU: _relu, ir.Clip: _clip, ir.Abs: _abs, ir.MaxPool2d: _max_pool}


@dataclass
class Found:
    """Per input: the largest Δ found, the point that attains it, and the passes spent."""

    value: Tensor
    point: Tensor
    passes: int


def spreads(network: ir.Network, ball: Ball, x: Tensor, generators: Sequence[torch.Generator], count: int = SPREAD_SAMPLES) -> dict[int, Tensor]:
    """τ per nonlinear layer: the standard deviation of each unit's input (a − b for a max) over
    ``count`` samples of the ball, (B, *its shape), floored at a tiny share of the layer's largest."""
    b = len(x)
    points = ball.sample(x, count, generators).reshape(b * count, *x.shape[1:])
    found: dict[int, Tensor] = {}

    def record(i: int, layer: ir.Nonlinearity, *z: Tensor) -> Tensor:
        value = layer.faces(*z).reshape(b * count, *layer.shape) if isinstance(layer, ir.Maximum) else z[0]
        spread = value.reshape(b, count, *value.shape[1:]).std(dim=1)
        found[i] = spread.clamp_min(1e-9 * spread.amax().clamp_min(1e-30))
        return layer.apply(*z)

    with torch.no_grad():
        network.run(points, nonlinear=record)
    return found


def search(saliency: Saliency, ball: Ball, x: Tensor, weights: Tensor, g0: Tensor, budget: int, generators: Sequence[torch.Generator],
           order: float, chains: int = CHAINS, explore: float = EXPLORE, walker: Callable | None = None) -> Found:
    """The largest Δ found within ``budget`` passes per input (see the module), for each row of ``x``;
    ``walker(evaluate, best, passes)``, where given (low dimension: :mod:`.walk`), finishes it."""
    b = len(x)
    evaluate = lambda points: _evaluate(saliency, points, weights, g0, order)  # noqa: E731  (Δ and the patterns)
    kept = int(WALK * budget) if walker is not None else 0
    count = max(chains, int(explore * budget) // 2)
    steps = (budget - kept - SPREAD_SAMPLES - 2 * count) // (STEP_PASSES * chains)
    if steps < 1:
        count = max(1, (budget - kept) // 2)
    half = count // 2
    points = torch.cat([ball.sample(x, count - half, generators), ball.extremes(x, half, generators)], dim=1)
    best = Found(torch.full((b,), -1.0, dtype=torch.float64, device=x.device), x.clone(), 2 * count)
    values, patterns = evaluate(points)
    _keep_best(best, values, points)
    if steps >= 1:
        _climb(saliency, ball, x, weights, g0, order, best, points, values, steps, spreads(saliency.network, ball, x, generators))
        best.passes += SPREAD_SAMPLES + STEP_PASSES * chains * steps
    if walker is not None:
        best.passes += walker(evaluate, best, budget - best.passes, (points, values, patterns))
    return best


def _climb(saliency: Saliency, ball: Ball, x: Tensor, weights: Tensor, g0: Tensor, order: float, best: Found, points: Tensor,
           values: Tensor, steps: int, tau: dict[int, Tensor]) -> None:
    """Chains from the best explored points up the surrogate, ``steps`` steps each (see the module)."""
    b, chains, shape = len(x), min(CHAINS, points.shape[1]), x.shape[1:]
    top = values.topk(chains, dim=1).indices
    points = points[torch.arange(b, device=x.device)[:, None], top]
    rows = torch.arange(b, device=x.device).repeat_interleave(chains)
    for k in range(steps):
        flat = points.reshape(b * chains, *shape)
        ascent = _surrogate_ascent(saliency.network, flat, weights[rows], g0[rows], {i: t[rows] for i, t in tau.items()}, order)
        size = ball.eps * (FIRST_STEP + (LAST_STEP - FIRST_STEP) * k / max(1, steps - 1))
        points = ball.project(ball.step(points, ascent.reshape(points.shape), size), x)
        _keep_best(best, _evaluate(saliency, points, weights, g0, order)[0], points)


def _evaluate(saliency: Saliency, points: Tensor, weights: Tensor, g0: Tensor, order: float) -> tuple[Tensor, Tensor]:
    """Δ at each of ``points`` (B, K, *row): (B, K), float64; and their patterns, (B, K, n)."""
    b, k = points.shape[:2]
    rows = torch.arange(b, device=points.device).repeat_interleave(k)
    g, patterns = saliency.at(points.reshape(b * k, *points.shape[2:]), weights[rows])
    return distortion(g, g0[rows], order).double().reshape(b, k), patterns.reshape(b, k, -1)


def _keep_best(best: Found, values: Tensor, points: Tensor) -> None:
    """Take each input's best of ``values`` (B, K) at ``points`` (B, K, *row) where it beats the best so far."""
    value, which = values.max(dim=1)
    better = value > best.value
    chosen = points[torch.arange(len(points), device=points.device), which]
    best.value = torch.where(better, value, best.value)
    best.point = torch.where(better.reshape(-1, *[1] * (points.dim() - 2)), chosen, best.point)


def _surrogate_ascent(network: ir.Network, points: Tensor, weights: Tensor, g0: Tensor, tau: dict[int, Tensor], order: float) -> Tensor:
    """∇ₓ Σ ‖g_τ(x') − g(x)‖ at each point (see the module): (P, *row)."""

    def smoothed(i: int, layer: ir.Nonlinearity, *z: Tensor) -> Tensor:
        value = layer.apply(*z)
        if isinstance(layer, ir.Maximum):
            smooth = _smooth_maximum(layer, *z, tau[i])
        else:
            smooth = SMOOTH[type(layer)](layer, z[0], tau[i])
        return value.detach() + (smooth - smooth.detach())

    leaf = points.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        output = network.run(leaf, nonlinear=smoothed).reshape(len(points), -1)
        (g,) = torch.autograd.grad((output * weights).sum(), leaf, create_graph=True)
        (ascent,) = torch.autograd.grad(distortion(g.reshape(len(points), -1), g0, order).sum(), leaf)
    return ascent


def _smooth_maximum(layer: ir.Maximum, a: Tensor, b: Tensor, tau: Tensor) -> Tensor:
    """max(a, b) smoothed: b + τ·softplus((a − b)/τ); min(a, b): b − τ·softplus((b − a)/τ)."""
    gap = layer.faces(a, b).reshape(len(tau), *layer.shape)
    second = layer.select(torch.zeros((), dtype=torch.bool, device=gap.device), a, b)
    second = second.expand_as(gap)
    return second - _softplus(-gap, tau) if layer.minimum else second + _softplus(gap, tau)
