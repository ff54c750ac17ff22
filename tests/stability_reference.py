"""Independent references for ``lrcert stability``, written without lrcert's code.

- :func:`autograd_distortions`: Δ at given points by ``torch.autograd`` through the ``nn.Module``
  itself in float64, one point at a time.
- :func:`regions_in_square`: every linear region a 2-D ReLU network's ℓ∞ ball (a square) meets, as
  exact polygons (Sutherland–Hodgman clipping of the square by each region's half-planes, regions
  found by crossing each polygon edge that lies on a unit's line), with each region's gradient.
  From them: the exact maximum of Δ over the ball, and its exact expectation (area-weighted).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def target_gradient(model: nn.Module, point: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """∇ₓ(w·f)(point) by autograd, float64, for one point (its row shape)."""
    leaf = point.detach().double().clone().requires_grad_(True)
    out = model(leaf.unsqueeze(0)).reshape(-1)
    (g,) = torch.autograd.grad((out * weights.double()).sum(), leaf)
    return g.reshape(-1)


def autograd_distortions(model: nn.Module, x: torch.Tensor, points: torch.Tensor, weights: torch.Tensor, order: float) -> np.ndarray:
    """‖∇(w·f)(x') − ∇(w·f)(x)‖_order for each point x' of ``points`` (N, *row)."""
    g0 = target_gradient(model, x, weights)
    return np.array([float(torch.linalg.vector_norm(target_gradient(model, p, weights) - g0, order)) for p in points])


def _pre_activations(model: nn.Module, point: torch.Tensor) -> torch.Tensor:
    """Every ReLU's (and LeakyReLU's) input at ``point``, concatenated (forward hooks on the model's modules)."""
    found = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: found.append(inp[0].reshape(-1)))
             for m in model.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU))]
    try:
        model(point.unsqueeze(0))
    finally:
        for h in hooks:
            h.remove()
    return torch.cat(found)


def _pattern(model: nn.Module, point: np.ndarray) -> tuple:
    with torch.no_grad():
        return tuple((_pre_activations(model, torch.tensor(point, dtype=torch.float64)) > 0).tolist())


def _halfplanes(model: nn.Module, point: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """Each unit's pre-activation as a·x + b in the region of ``point`` (a: its gradient by
    autograd), oriented so that a·x + b ≥ 0 holds in that region."""
    at = torch.tensor(point, dtype=torch.float64)
    z = _pre_activations(model, at).detach().numpy()
    jacobian = torch.autograd.functional.jacobian(lambda p: _pre_activations(model, p), at).numpy()
    out = []
    for k in range(len(z)):
        a, b = jacobian[k], z[k] - jacobian[k] @ point
        out.append((a, b) if z[k] > 0 else (-a, -b))
    return out


def _clip(polygon: list[np.ndarray], a: np.ndarray, b: float) -> list[np.ndarray]:
    """The part of ``polygon`` where a·x + b ≥ 0."""
    out = []
    for k in range(len(polygon)):
        p, q = polygon[k], polygon[(k + 1) % len(polygon)]
        fp, fq = a @ p + b, a @ q + b
        if fp >= 0:
            out.append(p)
        if (fp >= 0) != (fq >= 0):
            out.append(p + (q - p) * fp / (fp - fq))
    return out


def _area(polygon: list[np.ndarray]) -> float:
    return 0.5 * abs(sum(p[0] * q[1] - q[0] * p[1] for p, q in zip(polygon, polygon[1:] + polygon[:1])))


def regions_in_square(model: nn.Module, centre: np.ndarray, eps: float, weights: torch.Tensor) -> list[tuple[float, np.ndarray]]:
    """(area, gradient of w·f) of every region the square [centre ± eps] meets (areas sum to 4ε²).
    Regions of zero area (a line, a point) are left out: no uniform sample falls in them."""
    square = [centre + eps * np.array(c) for c in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    found, queue = {}, [centre.astype(np.float64)]
    while queue:
        point = queue.pop()
        key = _pattern(model, point)
        if key in found:
            continue
        polygon = square
        for a, b in _halfplanes(model, point):
            polygon = _clip(polygon, a, b)
            if len(polygon) < 3:
                break
        area = _area(polygon) if len(polygon) >= 3 else 0.0
        gradient = target_gradient(model, torch.tensor(point), weights).numpy()
        found[key] = (area, gradient)
        for p, q in zip(polygon, polygon[1:] + polygon[:1]):
            middle, edge = (p + q) / 2, q - p
            normal = np.array([edge[1], -edge[0]]) / (np.linalg.norm(edge) + 1e-300)
            for step in (1e-7, -1e-7):
                beyond = middle + step * normal * max(eps, 1e-3)
                if np.all(np.abs(beyond - centre) < eps):
                    queue.append(beyond)
    return [v for v in found.values() if v[0] > 0]


def exact_measures(model: nn.Module, centre: np.ndarray, eps: float, weights: torch.Tensor, order: float = 1) -> tuple[float, float]:
    """The exact maximum and expectation of Δ over x' uniform in the square."""
    regions = regions_in_square(model, centre, eps, weights)
    g0 = target_gradient(model, torch.tensor(centre), weights).numpy()
    distortions = [(area, float(np.linalg.norm(g - g0, ord=order))) for area, g in regions]
    total = sum(area for area, _ in distortions)
    assert math.isclose(total, 4 * eps * eps, rel_tol=1e-6), (total, 4 * eps * eps)
    return max(d for _, d in distortions), sum(area * d for area, d in distortions) / total
