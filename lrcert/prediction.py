"""Beyond the region: the exact radius within which the prediction cannot change, and the
closest input with another prediction when that lies inside the region.

Inside the linear region of x the network is affine. With c the predicted class (the arg-max
of the outputs), the margins m_j = f_c(x) − f_j(x) ≥ 0 and their gradients g_j = ∇ₓ(f_c − f_j)
are those of an affine map there, so along any step δ the margin is m_j + g_j·δ, and

    r_pred(x, p) = min over j ≠ c of m_j / ‖g_j‖_q          (q the dual norm of p)

is the distance at which the first margin can reach 0 if the region went on for ever. Within
certified(x, p) = min(ε̂(x, p), r_pred(x, p)) the prediction provably stays c (the step stays in
the region, where the margins are these affine functions, none of which reaches 0). When
r_pred ≤ ε̂ the bound is attained: the closest input with a tie, x*, is inside the closed ball of
the region, so r_pred is the exact distance to a different prediction ("exact adversarial"):

    p = 2:  x* = x − m_j g_j / ‖g_j‖₂²
    p = ∞:  x* = x − (m_j / ‖g_j‖₁) sign(g_j)
    p = 1:  x* = x − (m_j / g_jk) e_k,  k the coordinate of largest |g_jk|

(each makes m_j + g_j·(x* − x) = 0 at distance m_j / ‖g_j‖_q). The gradients come from
reverse passes, ∇f_c's and then all classes' at once (batched), in the engine's value dtype
(float64 under ``dtype="auto"``): a code path independent of the engine's forward tangent push. A model with a single output has
no second class: its prediction radius is ``None``.

>>> import torch
>>> from lrcert.load import from_module
>>> net = from_module(torch.nn.Linear(2, 2).double().requires_grad_(False), (2,))
>>> with torch.no_grad():
...     _ = net.layers[1].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
...     _ = net.layers[1].bias.zero_()
>>> out = margins(net, torch.tensor([[3.0, 1.0]], dtype=torch.float64), ("l2",), None, 8 << 20)
>>> round(float(out["l2.predicted"][0]), 12), int(out["l2.rival"][0])  # margin 2 over ‖(1, −1)‖₂ = √2
(1.414213562373, 1)
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from . import ir

def margins(
    network: ir.Network, x: Tensor, norms: Sequence[str], adversarial_norm: str | None, memory_bytes: int
) -> dict[str, Tensor]:
    """Per input of ``x`` (in the network's dtype and device): for each norm p the prediction
    radius ``p.predicted`` (+inf where no margin can close) and the class that binds it
    ``p.rival`` (−1: none); with ``adversarial_norm``, ``adversarial`` holds x* for that norm
    (B, *sample_shape), meaningful where the caller finds r_pred ≤ ε̂. Inputs are taken in
    chunks whose reverse passes fit ``memory_bytes``."""
    rows = max(1, memory_bytes // network.reverse_bytes_per_row(x.dtype))
    parts = [_margins(network, chunk, norms, adversarial_norm, memory_bytes) for chunk in x.split(rows)]
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def _margins(network: ir.Network, x: Tensor, norms: Sequence[str], adversarial_norm: str | None,
             memory_bytes: int) -> dict[str, Tensor]:
    b = len(x)
    with torch.enable_grad():
        points = x.detach().clone().requires_grad_(True)
        outputs = network.run(points).reshape(b, -1)
        return _closest_classes(points, outputs, norms, adversarial_norm, memory_bytes)


def _closest_classes(points: Tensor, outputs: Tensor, norms: Sequence[str], adversarial_norm: str | None,
                     memory_bytes: int) -> dict[str, Tensor]:
    """The ratios m_j / ‖g_j‖_q of every class j, from ∇f_c (one reverse pass) and the ∇f_j of as
    many classes at once as ``memory_bytes`` holds (one batched reverse pass each)."""
    b, classes = outputs.shape
    x, device = points.detach(), points.device
    predicted = outputs.detach().argmax(dim=1)
    top = outputs.gather(1, predicted[:, None])[:, 0]
    (toward,) = torch.autograd.grad(top.sum(), points, retain_graph=True)  # ∇f_c, each input its own c
    toward = toward.reshape(b, -1)
    best = {p: torch.full((b,), math.inf, dtype=x.dtype, device=device) for p in norms}
    rival = {p: torch.full((b,), -1, dtype=torch.long, device=device) for p in norms}
    step = torch.zeros_like(toward) if adversarial_norm else None  # x* − x for the binding class so far
    per_pass = max(1, memory_bytes // (4 * toward.numel() * toward.element_size()))
    seeds = torch.eye(classes, dtype=outputs.dtype, device=device)
    for first in range(0, classes, per_pass):
        chosen = torch.arange(first, min(classes, first + per_pass), device=device)
        (jacobian,) = torch.autograd.grad(outputs, points, grad_outputs=seeds[chosen, None, :].expand(-1, b, -1),
                                          retain_graph=True, is_grads_batched=True)
        gradient = toward - jacobian.reshape(len(chosen), b, -1)  # g_j = ∇(f_c − f_j): (classes here, b, D)
        margin = (top[None] - outputs[:, chosen].T).detach()  # ≥ 0; exactly 0 for j = c
        other = predicted[None] != chosen[:, None]
        for p in norms:
            dual = torch.linalg.vector_norm(gradient, ir.DUAL_ORDER[p], dim=2)
            ratio = torch.where(other & (dual > 0), margin / torch.where(dual > 0, dual, 1.0), math.inf)
            nearest, which = ratio.min(dim=0)  # the first of equals, as classes are scanned in order
            closer = nearest < best[p]
            best[p] = torch.where(closer, nearest, best[p])
            rival[p] = torch.where(closer, chosen[which], rival[p])
            if p == adversarial_norm:
                inputs = torch.arange(b, device=device)
                candidate = _closest_step(gradient[which, inputs], margin[which, inputs], dual[which, inputs], p)
                step = torch.where(closer[:, None], candidate, step)
    if classes < 2:
        best = {p: torch.full((b,), math.nan, dtype=x.dtype, device=device) for p in norms}
    out = {f"{p}.predicted": best[p] for p in norms} | {f"{p}.rival": rival[p] for p in norms}
    if adversarial_norm:
        out["adversarial"] = (x.reshape(b, -1) + step).reshape(x.shape)
    return out


def _closest_step(gradient: Tensor, margin: Tensor, dual: Tensor, p: str) -> Tensor:
    """The shortest step δ (in norm p) with margin + g·δ = 0, for each row (see the module's formulas)."""
    safe = torch.where(dual > 0, dual, 1.0)[:, None]
    if p == "l2":
        return -margin[:, None] * gradient / (safe * safe)
    if p == "linf":
        return -(margin[:, None] / safe) * torch.sign(gradient)
    k = gradient.abs().argmax(dim=1, keepdim=True)
    g_k = gradient.gather(1, k)
    return torch.zeros_like(gradient).scatter(1, k, -margin[:, None] / torch.where(g_k != 0, g_k, 1.0))
