"""The ball B a user fears around each input: ℓ∞ or ℓ2, radius ε, optionally inside a box of valid
inputs lo ≤ x' ≤ hi (pixels in [0, 1]). Sampling, projection, steps and the box that bounds B.

- ℓ∞: B ∩ box = [max(x − ε, lo), min(x + ε, hi)] is itself a box; samples are uniform in it, a
  projection is a clamp.
- ℓ2: samples are uniform in the ball (a Gaussian direction scaled by ε·U^(1/D)), then clipped
  into the box where there is one (the distribution is then the ball's pushed onto the box: a
  uniform draw from ball ∩ box would need rejection, hopeless in high dimension). A step is
  projected onto the ball, then clamped to the box; clamping moves every coordinate towards x
  (which is in the box), so the point stays in the ball.

>>> import torch
>>> ball = Ball("linf", parse_eps("8/255"), (0.0, 1.0))
>>> round(ball.eps, 6), [round(v, 6) for v in ball.interval(torch.tensor([0.0, 0.5]))[1].tolist()]
(0.031373, [0.031373, 0.531373])
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..errors import LrcertError

NORMS = {"inf": "linf", "linf": "linf", "∞": "linf", "2": "l2", "l2": "l2"}


def parse_eps(text: str | float, option: str = "--eps") -> float:
    """A radius as users write it: ``0.03``, ``8/255``; finite and > 0."""
    value = math.nan
    if isinstance(text, (int, float)):
        value = float(text)
    elif (fraction := re.fullmatch(r"\s*([0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)\s*", str(text))) is not None:
        try:
            value = float(fraction[1]) / float(fraction[2])
        except (ValueError, ZeroDivisionError):
            pass
    else:
        try:
            value = float(text)
        except ValueError:
            pass
    if not (value > 0 and math.isfinite(value)):
        raise LrcertError(f"{option} {text!r} is not a positive number", fix=f"write {option} 0.03 or {option} 8/255")
    return value


def parse_norm(text: str, option: str = "--norm") -> str:
    """``inf`` or ``2`` (the balls a distortion is measured over) as ``linf`` / ``l2``."""
    key = str(text).strip().lower()
    if key not in NORMS:
        raise LrcertError(f"{option} {text!r} is not a ball lrcert measures distortion over", fix=f"use {option} inf or {option} 2")
    return NORMS[key]


@dataclass(frozen=True)
class Ball:
    """B(x, ε) in ``norm`` ("linf" or "l2"), inside ``box`` (lo, hi) where there is one."""

    norm: str
    eps: float
    box: tuple[float, float] | None = None

    def check(self, x: Tensor) -> None:
        """Refuse inputs outside the box: their ball would be centred on an invalid input (one host wait)."""
        if self.box is None:
            return
        lo, hi = self.box
        flat = x.reshape(len(x), -1)
        outside = ((flat < lo) | (flat > hi)).any(dim=1)
        if x.device.type != "meta" and bool(outside.any()):
            row = int(outside.to(torch.uint8).argmax())
            raise LrcertError(f"input {row} lies outside --box {lo:g},{hi:g} (values {float(flat[row].min()):g} to "
                              f"{float(flat[row].max()):g}), so its ball is centred on an invalid input",
                              fix="give the box the data live in (--box LO,HI), or --box none")

    def interval(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(lo, hi): the smallest box around B ∩ box, per coordinate (the same shape as x)."""
        lo, hi = x - self.eps, x + self.eps
        if self.box is not None:
            lo, hi = lo.clamp(min=self.box[0]), hi.clamp(max=self.box[1])
        return lo, hi

    def sample(self, x: Tensor, count: int, generators: Sequence[torch.Generator]) -> Tensor:
        """``count`` points of B ∩ box around each row of ``x``: (B, count, *row shape), row i's drawn
        from ``generators[i]`` on x's device (so an input's draws do not depend on its batch)."""
        return torch.stack([self._draw(row, count, generator) for row, generator in zip(x, generators)])

    def _draw(self, x: Tensor, count: int, generator: torch.Generator) -> Tensor:
        """``count`` points around one input ``x`` (its row shape): (count, *row shape)."""
        shape = (count, *x.shape)
        if self.norm == "linf":
            lo, hi = self.interval(x)
            return lo + torch.rand(shape, generator=generator, dtype=x.dtype, device=x.device) * (hi - lo)
        direction = torch.randn(shape, generator=generator, dtype=x.dtype, device=x.device)
        norm = direction.flatten(1).norm(dim=1).clamp_min(torch.finfo(x.dtype).tiny)
        scale = torch.rand(count, generator=generator, dtype=x.dtype, device=x.device) ** (1.0 / x.numel())
        step = direction * (self.eps * scale / norm).reshape(count, *[1] * x.dim())
        return self._into_box(x + step)

    def extremes(self, x: Tensor, count: int, generators: Sequence[torch.Generator]) -> Tensor:
        """``count`` points on the ball's boundary around each row of ``x``, (B, count, *row): random
        vertices x ± ε (ℓ∞) or points of the sphere (ℓ2), moved into the box."""
        parts = []
        for row, generator in zip(x, generators):
            shape = (count, *row.shape)
            if self.norm == "linf":
                signs = torch.rand(shape, generator=generator, dtype=row.dtype, device=row.device).round() * 2 - 1
                parts.append(self._into_box(row + self.eps * signs))
            else:
                direction = torch.randn(shape, generator=generator, dtype=row.dtype, device=row.device)
                norm = direction.flatten(1).norm(dim=1).clamp_min(torch.finfo(row.dtype).tiny)
                parts.append(self._into_box(row + direction * (self.eps / norm).reshape(count, *[1] * row.dim())))
        return torch.stack(parts)

    def project(self, points: Tensor, x: Tensor) -> Tensor:
        """Points of B ∩ box: ``points`` (B, K, *row) moved into the ball around x (B, *row)."""
        centre = x.unsqueeze(1)
        if self.norm == "linf":
            lo, hi = self.interval(x)
            return torch.minimum(torch.maximum(points, lo.unsqueeze(1)), hi.unsqueeze(1))
        step = points - centre
        length = step.flatten(2).norm(dim=2).reshape(*step.shape[:2], *[1] * (x.dim() - 1))
        shrink = torch.where(length > self.eps, self.eps / length.clamp_min(torch.finfo(x.dtype).tiny), 1.0)
        return self._into_box(centre + step * shrink)

    def step(self, points: Tensor, ascent: Tensor, size: float | Tensor) -> Tensor:
        """A steepest step of length ``size`` (in the ball's norm) along ``ascent``: its signs for
        ℓ∞, its direction for ℓ2."""
        if self.norm == "linf":
            return points + size * ascent.sign()
        length = ascent.flatten(2).norm(dim=2).reshape(*ascent.shape[:2], *[1] * (ascent.dim() - 2))
        return points + size * ascent / length.clamp_min(torch.finfo(ascent.dtype).tiny)

    def _into_box(self, points: Tensor) -> Tensor:
        return points if self.box is None else points.clamp(self.box[0], self.box[1])
