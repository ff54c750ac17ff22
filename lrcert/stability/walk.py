"""The search's finish in low dimension: a walk over neighbouring regions, crossing faces on purpose.

From the best point found, every face's value z and gradient ∇z come from one value pass and one
tangent push of the D input directions (the engine's own, :mod:`lrcert.engine.tangents`); the
faces nearest in ℓ2, |z| / ‖∇z‖₂, bound the region. Each round crosses the :data:`WIDTH` nearest
(a step to just past the face, x' − (1 + η) z ∇z / ‖∇z‖², kept in the ball), evaluates Δ there and
moves to the best neighbour even where it is worse (the best point so far is kept), never back
across the face it has just crossed. The regions a small ball meets are few; regions of the
largest Δ are often small and next to good ones, where uniform samples and the climb seldom land.

Cost per round, in passes per input: D (the tangents), 1 (the value pass) and 2 per face crossed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..engine import Engine
from ..engine.region import Region
from ..engine.tangents import push
from .ball import Ball

#: The largest input dimension D that gets a walk (its tangents cost D passes a round).
WALK_DIMS = 64
#: Faces crossed per round.
WIDTH = 8
#: How far past a face a crossing steps, relative to the distance; a face nearer than JUST_CROSSED·ε
#: is the one just crossed (going back leads to a region already known).
OVERSHOOT, JUST_CROSSED = 1e-6, 1e-5
#: Regions the walk keeps per input, best first.
POOL = 32


class _Gradients:
    """A tangent fold that keeps every face gradient: per nonlinear layer (B, D, faces)."""

    def __init__(self):
        self.found: dict[int, Tensor] = {}

    def faces(self, i: int, rows: slice, g: Tensor) -> None:
        self.found[i] = g if i not in self.found else torch.cat([self.found[i], g])


def _per_face(g: Tensor, faces: int) -> Tensor:
    """A unit's gradient for each of its kinks' faces (a Clip has two), as the faces lie."""
    return g if g.shape[2] == faces else g.repeat(1, 1, faces // g.shape[2])


def rounds(dimensions: int, budget: int) -> int:
    """Rounds of the walk ``budget`` passes per input buy (0 above :data:`WALK_DIMS`)."""
    return 0 if dimensions > WALK_DIMS else (budget - 2) // (dimensions + 1 + 2 * WIDTH)


def _across(points: Tensor, z: Tensor, g: Tensor, ball: Ball, x: Tensor, tries: int = 3) -> Tensor:
    """Points just past each face z + g·(y − point) = 0 inside the ball: the nearest point past
    the face, projected into the ball; where the projection pinned coordinates to the ball's edge
    before the face was crossed, the rest of the way along the coordinates still free (``tries``
    times: projection onto the face within a box, by its active set)."""
    free, start = torch.ones_like(g), z.sign()
    for _ in range(tries):
        moving = g * free * (z.sign() == start)[..., None]  # (a crossed face stays crossed)
        reach = (moving * g).sum(dim=2).clamp_min(1e-300)
        wanted = points - (1 + OVERSHOOT) * (z / reach)[..., None] * moving
        target = ball.project(wanted, x)
        free = free * (target == wanted).to(g.dtype)  # coordinates the ball's edge stopped move no more
        z = z + (g * (target - points)).sum(dim=2)
        points = target
    return points


def walk(engine: Engine, evaluate, ball: Ball, x: Tensor, best, steps: int, seeds: tuple[Tensor, Tensor, Tensor]) -> int:
    """``steps`` rounds of a best-first walk over regions (updating ``best`` in place); returns the
    passes spent. ``evaluate(points (B, K, *row))`` gives Δ there (B, K) and the points' patterns
    (B, K, n); ``seeds``: points already evaluated, with their Δ and patterns, to start from."""
    b, shape = len(x), x.shape[1:]
    value, pattern = evaluate(best.point.unsqueeze(1))
    pool = _Pool(*(torch.cat(pair, dim=1) for pair in ((best.point.unsqueeze(1), seeds[0]), (value, seeds[1]), (pattern, seeds[2]))))
    for _ in range(steps):
        point = pool.next()
        region = Region(engine, point.to(engine.value_dtype))
        fold = _Gradients()
        push(region, engine.identity(0, engine.dimensions, engine.value_dtype), fold, b)
        z = torch.cat([region.faces[i] for i in engine.nonlinear], dim=1)  # (B, F)
        g = torch.cat([_per_face(fold.found[i].expand(b, -1, -1), region.faces[i].shape[1]) for i in engine.nonlinear],
                      dim=2).transpose(1, 2)  # (B, F, D)
        length = g.square().sum(dim=2)
        distance = torch.where(length > 0, z.abs() / length.clamp_min(1e-300).sqrt(), torch.inf)
        distance = distance.masked_fill(distance < JUST_CROSSED * ball.eps, torch.inf)  # (the face it came across)
        width = min(WIDTH, distance.shape[1])
        nearest = (-distance).topk(width, dim=1).indices  # (B, W)
        zs, gs = z.gather(1, nearest), g.gather(1, nearest[..., None].expand(-1, -1, g.shape[2]))
        flat = point.reshape(b, 1, -1).to(engine.value_dtype).expand(b, width, -1)
        candidates = _across(flat, zs, gs, ball, x.reshape(b, -1).to(engine.value_dtype)).reshape(b, width, *shape)
        values, patterns = evaluate(candidates.to(point.dtype))
        values = values.masked_fill(~torch.isfinite(distance.gather(1, nearest)), -1.0)
        top, which = values.max(dim=1)
        better = top > best.value
        best.value = torch.where(better, top, best.value)
        chosen = candidates[torch.arange(b, device=x.device), which].to(best.point.dtype)
        best.point = torch.where(better.reshape(-1, *[1] * len(shape)), chosen, best.point)
        pool.add(candidates.to(point.dtype), values, patterns)
    return 2 + steps * (engine.dimensions + 1 + 2 * WIDTH)


class _Pool:
    """The walk's regions, best first: up to :data:`POOL` points per input with their Δ and patterns,
    one per region, and which were expanded (their neighbours evaluated)."""

    def __init__(self, points: Tensor, values: Tensor, patterns: Tensor):
        self.points, self.values, self.patterns = points[:, :0], values[:, :0], patterns[:, :0]
        self.expanded = torch.zeros_like(self.values, dtype=torch.bool)
        self.add(points, values, patterns)

    def next(self) -> Tensor:
        """The best point not expanded yet, per input (marked expanded)."""
        pick = self.values.masked_fill(self.expanded, -torch.inf).argmax(dim=1)
        self.expanded[torch.arange(len(pick), device=pick.device), pick] = True
        return self.points[torch.arange(len(pick), device=pick.device), pick]

    def add(self, points: Tensor, values: Tensor, patterns: Tensor) -> None:
        """Take new points in, a region already held (or held twice among them) counting once."""
        known = torch.cat([self.patterns, patterns], dim=1)
        same = (patterns.unsqueeze(2) == known.unsqueeze(1)).all(dim=3)  # (B, new, held + new)
        earlier = torch.ones(same.shape[1], same.shape[2], dtype=torch.bool, device=same.device).tril(self.patterns.shape[1] - 1)
        values = values.masked_fill((same & earlier).any(dim=2), -torch.inf)
        merged = [torch.cat(pair, dim=1) for pair in ((self.points, points), (self.values, values), (self.patterns, patterns),
                                                       (self.expanded, torch.zeros_like(values, dtype=torch.bool)))]
        keep = merged[1].topk(min(POOL, merged[1].shape[1]), dim=1).indices
        rows = torch.arange(len(keep), device=keep.device)[:, None]
        self.points, self.values, self.patterns, self.expanded = (t[rows, keep] for t in merged)
