"""Faces and norms: what a tangent pass folds per face (:class:`DualNorms` over input directions,
:class:`Rates` along one direction), and the radii they give, ε̂ = min |z| / ‖g‖_q and the
directional t = min −z / (g·d), with the face that binds."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from ..network import ir


class DualNorms:
    """Folds face gradients ``g`` (shape ``(1 or b, K, faces)``, K directions) of inputs ``rows``
    into per-face statistics over the directions, accumulated across passes: max |g| (p = 1),
    Σ g² (p = 2), Σ |g| (p = ∞); ``stats[(layer, p)]`` is (B, faces).

    Pushing the identity, they are the dual norms of every face gradient (‖g‖₂ squared). Pushing
    random directions, Σ g² is the sketch of :mod:`lrcert.engine.sketch`.

    On a GPU (``fused``) each norm is one fused reduction (``vector_norm``: one read of g); on a
    CPU, where reducing over a middle axis that way is 2–4× slower (measured), |g| is formed once,
    through one reused buffer, and shared by the sum and the max.
    """

    def __init__(self, batch: int, norms: Sequence[str], fused: bool):
        self.batch, self.norms, self.fused = batch, tuple(norms), fused
        self.stats: dict[tuple[int, str], Tensor] = {}
        self.scratch: dict[torch.dtype, Tensor] = {}  # dtype -> the CPU reductions' reused buffer (flat)

    def faces(self, i: int, rows: slice, g: Tensor) -> None:
        norms = self._fused(g) if self.fused else self._cpu(g)
        for p in self.norms:
            if (i, p) not in self.stats:
                self.stats[(i, p)] = torch.zeros(self.batch, g.shape[2], dtype=g.dtype, device=g.device)
            target = self.stats[(i, p)][rows]
            if p == "l1":
                torch.maximum(target, norms[p], out=target)
            else:
                target += norms[p]

    def _fused(self, g: Tensor) -> dict[str, Tensor]:
        """The GPU's statistics: one fused reduction (one read of g) per norm."""
        norms = {p: torch.linalg.vector_norm(g, ir.DUAL_ORDER[p], dim=1) for p in self.norms}
        return norms | ({"l2": norms["l2"].square()} if "l2" in norms else {})

    def _cpu(self, g: Tensor) -> dict[str, Tensor]:
        """The CPU's statistics through one reused buffer: |g| formed once for the max and the sum,
        then squared in place (|g|² = g² exactly). A fresh temporary per layer would cost page
        faults as large as the work."""
        n = g.numel()
        if g.dtype not in self.scratch or self.scratch[g.dtype].numel() < n:
            self.scratch[g.dtype] = torch.empty(n, dtype=g.dtype, device=g.device)
        work = self.scratch[g.dtype][:n].view(g.shape)
        if "l1" not in self.norms and "linf" not in self.norms:
            return {"l2": torch.mul(g, g, out=work).sum(dim=1)}
        torch.abs(g, out=work)
        norms = {"l1": work.amax(dim=1)} if "l1" in self.norms else {}
        norms |= {"linf": work.sum(dim=1)} if "linf" in self.norms else {}
        return norms | ({"l2": work.mul_(work).sum(dim=1)} if "l2" in self.norms else {})

    def dual(self, i: int, p: str) -> Tensor:
        """Layer ``i``'s per-unit ‖g‖_q in float64, (B, units)."""
        statistic = self.stats[(i, p)].double()
        return statistic.sqrt() if p == "l2" else statistic


class Rates:
    """Folds the gradients of faces along one direction per input: ``rates[layer]`` = g·d, (B, faces)."""

    def __init__(self, batch: int):
        self.batch = batch
        self.rates: dict[int, Tensor] = {}

    def faces(self, i: int, rows: slice, g: Tensor) -> None:
        if i not in self.rates:
            self.rates[i] = torch.zeros(self.batch, g.shape[2], dtype=g.dtype, device=g.device)
        self.rates[i][rows] = g[:, 0, :]


def radii(region, norms: DualNorms) -> dict[str, Tensor]:
    """Every input's ε̂ per norm and its binding face (``Region.nearest``) from the pushed
    tangents, with ``Region.summary``: batched tensors, still on the device."""
    gradients_finite = torch.ones(region.batch, dtype=torch.bool, device=region.output.device)
    out: dict[str, Tensor] = region.summary()
    for p in region.engine.norms:

        def ratios(i: int) -> Tensor:
            nonlocal gradients_finite
            dual = region.per_face(i, norms.dual(i, p))
            gradients_finite &= torch.isfinite(dual).all(dim=1)
            positive = dual > 0
            return torch.where(positive, region.faces[i].double().abs() / torch.where(positive, dual, 1.0), math.inf)

        out |= {f"{p}.{key}": value for key, value in region.nearest(ratios).items()}
    out["gradients_finite"] = gradients_finite
    return out


def nearest_ahead(region, rates: Rates) -> dict[str, Tensor]:
    """Per input, the largest t with x + t·d in the region, min over faces with z·(g·d) < 0 of
    −z/(g·d) (z = 0 counts when g·d ≠ 0), and that face."""

    def steps(i: int) -> Tensor:
        z, rate = region.faces[i].double(), region.per_face(i, rates.rates[i].double())
        leaving = (z * rate < 0) | ((z == 0) & (rate != 0))
        return torch.where(leaving, (z / torch.where(rate != 0, rate, 1.0)).abs(), math.inf)

    return {f"ahead.{key}": value for key, value in region.nearest(steps).items()}
