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
reverse passes, a value and reverse pass over a copy of the input per class seeded with
e_c − e_j, in the engine's value dtype (float64 under ``dtype="auto"``): a code path independent
of the engine's forward tangent push. A model with a single output has no second class: its
prediction radius is ``None``.

**Many classes** (ImageNet's 1,000) make those reverse passes the larger part of a sketched
input's work. :func:`sketched_margins` screens margins as the sketch screens faces (:mod:`.sketch`):
the outputs' tangents along its k directions, pushed in float64, give every g_j·s_i, so
U_j = √(Σ_i (g_j·s_i)² / (c·k)) ≥ ‖g_j‖₂ (one more of the sketch's events, counted in its δ) and
the floor m_j / (s_q·U_j) is at most margin j's ratio, with s_q = 1 for ‖g‖₂ and ‖g‖∞ ≤ ‖g‖₂ and
s_q = √D for ‖g‖₁ ≤ √D‖g‖₂. Margins are then taken in rounds, smallest floors first: each one's
float32 gradient ĝ_j (a float32 reverse pass, about a sixth of a float64 one through a conv net
on a CPU) and the sketch's bound on its error E_j = ĝ_j − g_j (below) bound its ratio from both
sides, and the smallest upper end lowers the ceiling, until no floor is under it; then the
margins whose lower end is within the ceiling get exact gradients in the value dtype: a few
dozen estimates and one or two exact gradients per input for the ℓ2 and ℓ∞ prediction radii.
The ℓ1 radius's ‖g_j‖∞ is where this stops: ‖g‖∞ ≤ ‖g‖₂ is loose by about
√(D / 2 ln D), and no sketch of k ≪ D directions bounds a maximum over D coordinates better
(that takes about D linear measurements), so with many classes most margins stay open. An input
whose open margins would need more estimates than the bottleneck's units / ``ROWS_PER_MARGIN``
takes every margin's gradient ĝ_j in float32 instead, from the reverse passes of the
narrowest layer of the network's affine tail (ResNet-18: its 512 pooled features, times the
tail's Jacobian), and bounds each one's float32 error E_j = ĝ_j − g_j with the sketch's own
directions: E_j does not depend on them, and the sketch pushed them in float64, giving g_j·s_i,
so Σ_i (ĝ_j·s_i − g_j·s_i)² ~ ‖E_j‖₂² χ²_k and √(Σ / (c·k)) ≥ ‖E_j‖₂ ≥ ‖E_j‖_∞, ‖E_j‖₁ / √D
except with the sketch's probability (each margin's two bounds, on ‖g_j‖₂ and on E_j, are
counted in its δ). The margins whose ratio intervals reach below the smallest upper end get exact
gradients in the value dtype: usually one per norm.

>>> import torch
>>> from lrcert.models.load import from_module
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

from ..network import ir
from . import reverse, sketch


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
    """The ratios m_j / ‖g_j‖_q of every class j: as many classes at a time as ``memory_bytes``
    holds, each input copied once per class, its gradient g_j by :func:`.reverse.margin_copies`
    (one large value and reverse pass for many rows)."""
    b, device = len(x), x.device
    with torch.no_grad():
        values = network.run(x).reshape(b, -1)
    classes = values.shape[1]
    predicted = values.argmax(dim=1)
    top = values.gather(1, predicted[:, None])[:, 0]
    best = {p: torch.full((b,), math.inf, dtype=x.dtype, device=device) for p in norms}
    rival = {p: torch.full((b,), -1, dtype=torch.long, device=device) for p in norms}
    step = torch.zeros(b, network.input_size, dtype=x.dtype, device=device) if adversarial_norm else None
    per_pass = max(1, memory_bytes // (b * network.reverse_bytes_per_row(x.dtype)))
    for first in range(0, classes, per_pass):
        chosen = torch.arange(first, min(classes, first + per_pass), device=device)
        n = len(chosen)
        gradient = reverse.margin_copies(network, x, torch.arange(b, device=device).repeat(n), predicted.repeat(n),
                                         chosen.repeat_interleave(b)).reshape(n, b, -1)  # g_j = ∇(f_c − f_j)
        margin = top[None] - values[:, chosen].T  # ≥ 0; exactly 0 for j = c
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


#: A sketched input's prediction radius is taken with :func:`sketched_margins` where the model
#: has at least this many classes (fewer: every margin's exact gradient, as for other inputs).
SKETCH_CLASSES = 32
#: Floors and intervals are compared with the ceiling widened by this (relative): float64 rounding is far below.
SLACK = 1e-3
#: Margins per input and norm in the first round of exact gradients, and the growth per round.
FIRST_MARGINS = 2
GROWTH = 4
#: A margin's float32 estimate (a value and reverse pass through the whole network) costs about as
#: much as one float32 row of the bottleneck, and rounds take some margins that turn out not to
#: be needed: an input whose open margins exceed the bottleneck's units / ROWS_PER_MARGIN takes
#: every margin from the bottleneck's rows instead.
ROWS_PER_MARGIN = 2


def bottleneck(network: ir.Network) -> tuple[int, Tensor]:
    """The narrowest layer of the affine tail between the last nonlinearity and the output (the
    output itself when none is narrower), and the tail's Jacobian from it, (classes, its units),
    in the network's dtype: every output's gradient is that Jacobian times the layer's gradients."""
    layers, chain = network.layers, [network.output]
    while isinstance(layers[chain[-1]], ir.Affine) and len(layers[chain[-1]].inputs) == 1 and layers[chain[-1]].inputs[0]:
        chain.append(layers[chain[-1]].inputs[0])
    cut = min(chain, key=lambda i: (layers[i].size, -i))
    units = layers[cut].size
    tangent = torch.eye(units, dtype=network.dtype, device=network.device).reshape(units, *layers[cut].shape)
    for i in reversed(chain[: chain.index(cut)]):
        tangent = layers[i].apply([tangent], offset=False)
    return cut, tangent.reshape(units, -1).T.contiguous()


def sketched_margins(engine, region, x: Tensor, outputs: Tensor, c: float, directions: Tensor) -> dict[str, Tensor]:
    """:func:`margins` for the inputs ``x`` of a sketched ``region`` (see the module's docstring):
    screened by the sketch's floors where few margins stay open, else from the bottleneck's float32
    gradients. ``outputs`` (B, k, classes) are the outputs' tangents along the sketch's
    ``directions`` (1, k, *input_shape), pushed in float64."""
    b, classes = len(x), outputs.shape[2]
    values = region.output.reshape(b, -1)
    predicted = values.argmax(dim=1)
    margin = values.gather(1, predicted[:, None]) - values
    along = outputs.transpose(1, 2)  # (B, classes, k): g·s in the value dtype, every class
    along = along.gather(1, predicted[:, None, None].expand(-1, 1, along.shape[2])) - along
    sketched = _Sketched(along, directions.reshape(directions.shape[1], -1).to(x.dtype), c)
    bound = sketch.upper_bound(along.square().sum(dim=2), c, along.shape[2])  # ≥ ‖g_j‖₂ unless the sketch fails
    other = torch.arange(classes, device=x.device)[None] != predicted[:, None]
    floor = torch.stack([torch.where(other & (bound > 0), margin / (bound * _scale(engine, p)), math.inf)
                         for p in engine.norms])
    candidates, rows_way = _screened_margins(engine, x, floor, margin, predicted, sketched)
    rest = rows_way.nonzero()[:, 0]
    if len(rest):
        candidates = candidates.index_copy(0, rest, _bottleneck_candidates(engine, x, rest, margin, predicted, sketched))
    return _exact_margins(engine, x, candidates, margin, predicted)


class _Sketched:
    """What bounds a float32 estimate ĝ_j of a margin's gradient: the margins' exact projections
    g_j·s_i on the sketch's directions (B, classes, k), the directions (k, D) and the constant c."""

    def __init__(self, along: Tensor, seeds: Tensor, c: float):
        self.along, self.seeds, self.c = along, seeds, c

    def error(self, estimates: Tensor, inputs: Tensor, classes: Tensor) -> Tensor:
        """≥ ‖ĝ_j − g_j‖₂ for each row's estimate (unless the sketch fails): E_j = ĝ_j − g_j does not
        depend on the directions, so Σ_i (ĝ_j·s_i − g_j·s_i)² ~ ‖E_j‖₂² χ²_k."""
        misses = estimates.to(self.seeds.dtype) @ self.seeds.T - self.along[inputs, classes]
        return sketch.upper_bound(misses.square().sum(dim=1), self.c, self.seeds.shape[0])


def _scale(engine, p: str) -> float:
    """‖g‖_q ≤ scale · ‖g‖₂ for the dual norm q of ``p``: ‖g‖∞ ≤ ‖g‖₂ and ‖g‖₁ ≤ √D ‖g‖₂."""
    return math.sqrt(engine.dimensions) if p == "linf" else 1.0


def _screened_margins(engine, x: Tensor, floor: Tensor, margin: Tensor, predicted: Tensor,
                      sketched: _Sketched) -> tuple[Tensor, Tensor]:
    """The margins that may bind, given every margin's ``floor`` m_j / U_j per norm (P, B, classes):
    taken in rounds as :func:`.screen.certify` takes faces, smallest floors first, each one's
    ratio bounded from its float32 gradient ĝ_j and the sketch's bound on ĝ_j − g_j, the smallest
    upper end lowering the ceiling, until no floor is under it. Returns (B, classes) bool: the
    margins whose lower end is within the ceiling (for exact gradients), and (B,) bool: the inputs
    whose open margins would cost more than the bottleneck's float32 rows (``ROWS_PER_MARGIN``)."""
    b, width = len(x), floor.shape[2]
    ceiling = torch.full((len(engine.norms), b), math.inf, dtype=x.dtype, device=x.device)
    low = torch.full_like(floor, math.inf)  # each computed margin's lowest possible ratio, per norm
    done = torch.zeros(b, dtype=torch.long, device=x.device)
    rows_way = torch.zeros(b, dtype=torch.bool, device=x.device)
    cap = engine.network.layers[engine.bottleneck()[0]].size // ROWS_PER_MARGIN
    k, x_estimates = FIRST_MARGINS, x.to(engine.dtype)
    while True:
        wanted = (floor <= ceiling[..., None] * (1 + SLACK)) & torch.isfinite(floor)
        rows_way |= (done > 0) & (done + wanted.any(dim=0).sum(dim=1) > cap)
        smallest, which = torch.where(wanted & ~rows_way[None, :, None], floor, math.inf).topk(min(k, width), dim=2, largest=False)
        norm, rows, rank = torch.isfinite(smallest).nonzero().unbind(dim=1)
        if len(rows) == 0:
            break
        inputs, classes = torch.unique(torch.stack([rows, which[norm, rows, rank]], dim=1), dim=0).unbind(dim=1)
        engine.work.estimated += len(inputs)
        estimates = reverse.margin_gradients(engine, x_estimates, torch.stack([inputs, predicted[inputs], classes], dim=1),
                                             engine.tangent_network)
        error = sketched.error(estimates, inputs, classes)
        for q, p in enumerate(engine.norms):
            norm_q = torch.linalg.vector_norm(estimates, ir.DUAL_ORDER[p], dim=1, dtype=x.dtype)
            low[q, inputs, classes], high = _ratio_bounds(norm_q, error, margin[inputs, classes], _scale(engine, p))
            ceiling[q] = ceiling[q].scatter_reduce(0, inputs, high, "amin")
        floor[:, inputs, classes] = math.inf
        done += torch.bincount(inputs, minlength=b)
        k *= GROWTH
    candidates = (low <= ceiling[..., None] * (1 + SLACK)).any(dim=0) & ~rows_way[:, None]
    return candidates, rows_way


def _exact_margins(engine, x: Tensor, candidates: Tensor, margin: Tensor, predicted: Tensor) -> dict[str, Tensor]:
    """:func:`margins`' keys from the exact gradients (value dtype) of the ``candidates`` (B, classes)."""
    inputs, rival = candidates.nonzero().unbind(dim=1)
    engine.work.margins += len(inputs)
    gradients = reverse.margin_gradients(engine, x, torch.stack([inputs, predicted[inputs], rival], dim=1))
    return _nearest_classes(inputs, rival, gradients, margin[inputs, rival], len(x), engine.norms,
                            engine.adversarial_norm, x)


def _bottleneck_candidates(engine, x: Tensor, inputs: Tensor, margin: Tensor, predicted: Tensor,
                           sketched: _Sketched) -> Tensor:
    """For the ``inputs`` of the batch ``x``: every margin's float32 gradient ĝ_j (the bottleneck's
    rows times the tail's Jacobian) and the sketch's bound on ĝ_j − g_j bound each ratio; returns
    (len(inputs), classes) bool: the margins whose lowest ratio is within the smallest highest."""
    b, d, classes = len(inputs), engine.network.input_size, margin.shape[1]
    cut, tail = engine.bottleneck()
    rows = reverse.unit_gradients(engine, engine.tangent_network, x[inputs].to(engine.dtype), cut)
    engine.work.rows += b * rows.shape[1]
    low = torch.empty(len(engine.norms), b, classes, dtype=x.dtype, device=x.device)
    high = torch.empty_like(low)
    step = max(1, reverse.budget(engine) // (8 * b * d))
    for first in range(0, classes, step):
        chosen = torch.arange(first, min(classes, first + step), device=x.device)
        gradient = torch.bmm(tail[predicted[inputs]][:, None, :] - tail[chosen][None], rows.to(x.dtype))  # (B, n, D) ≈ g_j
        rows_of = (inputs[:, None].expand(-1, len(chosen)).reshape(-1), chosen.repeat(b))
        error = sketched.error(gradient.reshape(-1, d), *rows_of).reshape(b, -1)
        here = margin[inputs][:, chosen]
        for q, p in enumerate(engine.norms):
            norm_q = torch.linalg.vector_norm(gradient, ir.DUAL_ORDER[p], dim=2)
            low[q, :, chosen], high[q, :, chosen] = _ratio_bounds(norm_q, error, here, _scale(engine, p))
    other = torch.arange(classes, device=x.device)[None] != predicted[inputs, None]
    ceiling = torch.where(other, high, math.inf).amin(dim=2, keepdim=True)
    return (other & (low <= ceiling * (1 + SLACK))).any(dim=0)


def _ratio_bounds(norm_q: Tensor, error: Tensor, margin: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """The lowest and the highest m / ‖g‖_q can be, given ‖ĝ‖_q and ‖ĝ − g‖₂ ≤ ``error`` (and
    ‖·‖_q ≤ ``scale`` ‖·‖₂): m / (‖ĝ‖_q + scale·error) and m / (‖ĝ‖_q − scale·error)."""
    widen = error * scale
    low = torch.where(norm_q + widen > 0, margin / (norm_q + widen), math.inf)
    high = torch.where(norm_q > widen, margin / (norm_q - widen), math.inf)
    return low, high


def _nearest_classes(inputs: Tensor, rival: Tensor, gradient: Tensor, margin: Tensor, b: int, norms: Sequence[str],
                     adversarial_norm: str | None, x: Tensor) -> dict[str, Tensor]:
    """Per input and norm the smallest m_j / ‖g_j‖_q over the rows (input, class j, its gradient,
    its margin), the class that sets it, and x* for ``adversarial_norm``: :func:`margins`' keys."""
    out = {}
    n, device = len(inputs), x.device
    for p in norms:
        best, row, found, dual = reverse.nearest_rows(inputs, margin, gradient, p, b)
        out[f"{p}.predicted"] = best
        out[f"{p}.rival"] = torch.where(found, rival[row], -1) if n else torch.full((b,), -1, device=device)
        if p == adversarial_norm:
            step = torch.zeros(b, x[0].numel(), dtype=x.dtype, device=device)
            if n:
                closest = _closest_step(gradient[row], margin[row], dual[row], p)
                step = torch.where(found[:, None], closest, step)
            out["adversarial"] = (x.reshape(b, -1) + step).reshape(x.shape)
    return out
