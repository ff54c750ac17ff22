"""Screening: the faces that cannot bind are ruled out without their gradients.

Done densely, ε̂ = min_j |z_j| / ‖g_j‖_q needs every face gradient g_j = ∇ₓz_j: D tangent passes
per input. Most faces are far from binding. Given an upper bound G_j ≥ ‖g_j‖_q, face j's ratio is
at least its *floor* |z_j| / G_j, and per input

1. for each norm, the face with the smallest floor gets its exact gradient (a reverse pass, as
   :mod:`.precision` takes them): its ratio is a *ceiling* C ≥ ε̂;
2. every other face whose floor is at most C gets its exact gradient, and ε̂ is the smallest
   exact ratio: a face left out has ratio ≥ floor > C ≥ ε̂, so it cannot bind.

Step 2 runs in rounds, smallest floors first, each round's ratios lowering the ceiling before the
next one chooses. An input whose next round would take its exact gradients past ``SHARE`` · D is
certified densely instead (more reverse passes would cost more than the D tangent passes); it
has spent at most that many. The answer is the dense one either way (the same faces, ratios from
exact gradients; ties between exactly equal ratios aside).

**The bound G.** A layer's tangent holds, per unit, a row over the D input directions. If every
row that an affine layer reads has q-norm ≤ t, each output row has q-norm ≤ |A| t (triangle
inequality; any q). A unit activation multiplies rows by its frozen slope s, t_out = |s| t, and
its faces' gradients are its input rows: G = t_in. A max-pool face z_w − z_l has gradient
g_w − g_l, G = t_w + t_l; an elementwise max/min alike. At the input t = 1. The faces that read
the first affine layers (before any nonlinearity) have gradients that do not depend on the input:
their exact q-norms, computed once per engine when that is cheap, start the propagation instead.
All of it runs in float64, and floors are compared with a relative ``SLACK``.

The bound is tight on shallow networks and loosens by about an order of magnitude per layer:
it rules out all but a few faces per input on small conv nets (5 exact gradients per input on
oval21_cifar_base_kw, where D = 3072) and almost none on ResNet-18 or on deep MLPs, where the
engine soon stops screening (see ``Engine.screening``) and pushes tangents.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..network import ir
from . import precision

#: An input goes the dense way before its exact gradients would pass this share of D. A face's
#: reverse pass (value pass, backward pass, float64) costs about as much as 11 tangent directions of
#: the dense way (measured on cifar10_resnet_2b, 2-core CPU: 0.17 ms against 15 µs).
SHARE = 1 / 16
#: Floors are compared with the ceiling widened by this (relative): the float64 rounding of the
#: bounds and ratios is far below it, and float32 ratios (``dtype=float32``) are not exact anyway.
SLACK = 1e-3
#: The exact norms of the first faces are computed (once per engine, in float64) when pushing the
#: identity through the layers before them costs at most this many multiply-adds per input of the
#: batch: they make screening pay far more often (cifar10_resnet_2b 3.5x faster with them,
#: conv_3x64x64 8x) but cost about a second on conv_3x64x64, too much for one or two inputs.
ENTRY_WORK = 1e9
#: Faces per input and norm in the first round of exact gradients, and the growth per round.
FIRST = 4
GROWTH = 8


def entry_work(engine) -> int:
    """Multiply-adds of :func:`entry_norms`: the D input directions through the first affine layers."""
    layers = engine.network.layers
    return engine.dimensions * sum(layers[i].size * max(1, layers[i].terms) for i in engine.walk.prefix)


def entry_norms(engine) -> dict[tuple[int, str], Tensor]:
    """Per (layer, norm) of the nonlinearities that read only the input-independent first affine
    layers: the exact q-norms of their faces' gradients, (1, units), float64."""
    network = engine.float64_network()
    layers, d = network.layers, engine.dimensions
    row = sum(layers[i].size for i in [0, *engine.walk.prefix])
    step = max(1, min(d, engine.memory_bytes // (8 * row)))
    sums: dict[tuple[int, str], Tensor] = {}
    for start in range(0, d, step):
        stop = min(d, start + step)
        tangents = {0: engine.identity(start, stop, torch.float64)[0]}
        for i in engine.walk.prefix:
            tangents[i] = layers[i].apply([tangents[j] for j in layers[i].inputs], offset=False)
        for i in engine.walk.entries:
            g = tangents[layers[i].inputs[0]].reshape(stop - start, -1).abs()
            for p, part in (("l1", g.amax(dim=0)), ("l2", (g * g).sum(dim=0)), ("linf", g.sum(dim=0))):
                known = sums.get((i, p))
                sums[(i, p)] = part if known is None else torch.maximum(known, part) if p == "l1" else known + part
    return {(i, p): (s.sqrt() if p == "l2" else s)[None] for (i, p), s in sums.items()}


def deterministic_floors(region) -> Tensor:
    """(P, B, F): every face's floor for each of the engine's norms, from the bound G."""
    entry = region.engine.entry_norms(region.batch)
    return torch.stack([floors(region, p, entry) for p in region.engine.norms])


def floors(region, p: str, entry: dict[tuple[int, str], Tensor]) -> Tensor:
    """(B, faces of every nonlinear layer, in layer order): |z_j| / G_j for norm ``p`` (0 where
    G overflows, +inf where G = 0: a gradient that is certainly zero)."""
    engine, layers = region.engine, region.network.layers
    magnitude = engine.float64_magnitudes().layers
    t = {0: torch.ones(1, *engine.network.input_shape, dtype=torch.float64, device=region.output.device)}
    bound: dict[int, Tensor] = {}
    for i in engine.walk.order:
        layer = layers[i]
        ts = [t[j] for j in layer.inputs]
        if isinstance(layer, ir.Affine):
            t[i] = magnitude[i].apply(ts, offset=False)
        elif isinstance(layer, ir.MaxPool2d):
            windows = layer.windows(ts[0].expand(region.batch, *ts[0].shape[1:]), 0.0)
            winner = torch.gather(windows, -2, region.argmax[i])
            bound[i] = (winner + windows).reshape(region.batch, -1)
            t[i] = winner.reshape(region.batch, *layer.shape)
        elif isinstance(layer, ir.Maximum):
            bound[i] = layer.faces(ts[0], -ts[1]).expand(region.batch, -1)
            t[i] = layer.select(region.first_wins[i], *ts)
        else:
            rows = entry[(i, p)].reshape(1, *ts[0].shape[1:]) if (i, p) in entry else ts[0]
            bound[i] = rows.reshape(len(rows), -1).expand(region.batch, -1)
            t[i] = region.gain[i].abs().double() * rows
        for j in set(layer.inputs):
            if engine.walk.last_use.get(j) == i:
                t.pop(j, None)
    parts = []
    for i in engine.nonlinear:
        g, z = region.per_face(i, bound[i]), region.faces[i].double().abs()
        parts.append(torch.nan_to_num(torch.where(g == 0, math.inf, z / g), nan=0.0))
    return torch.cat(parts, dim=1)


def certify(region, x: Tensor, floor: Tensor, tensors: dict[str, Tensor] | None = None) -> tuple[dict[str, Tensor], Tensor]:
    """Every input's radii and binding faces (``norms.radii``'s per-norm entries) from exact
    gradients of the faces that may bind, given every face's ``floor`` per norm, (P, B, F), and
    (B,) bool: the inputs left to the dense way (their entries are placeholders). ``tensors``
    continues from exact ratios found before (by default none); ``floor`` is set to +inf where a
    face's ratio becomes known.

    The faces are taken in rounds, smallest floors first (``FIRST`` per input and norm, then
    ``GROWTH`` times more each round), so that each round's ratios lower the ceiling before the
    next round chooses: only faces whose floor is within the ceiling are taken, and the rounds
    end when no face is (within :func:`rounds`; one host wait each). An input goes dense when
    the faces it still needs, capped at what the next round can take, would bring its exact
    gradients past SHARE·D (a loose early ceiling alone does not send it there), or at once when
    more faces than D are still open after a round (a bound that loose will not get there: on
    cifar10_resnet_2b at most 1,103 faces are open after the first round and at most 295 exact
    gradients needed in the end, D = 3072; on ResNet-18 83,964 are open, all of them)."""
    engine = region.engine
    b, device = region.batch, region.output.device
    starts, nonlinear = engine.face_starts, engine.face_layers
    known = torch.full((), math.inf, dtype=torch.float64, device=device)  # a floor once the ratio is exact
    tensors = unknown(region) if tensors is None else tensors
    done = torch.zeros(b, dtype=torch.long, device=device)  # exact gradients taken, per input
    dense = torch.zeros(b, dtype=torch.bool, device=device)
    d = engine.dimensions
    limit = SHARE * d
    k = FIRST

    def open_faces() -> Tensor:
        """(P, B, F): the faces not known exactly whose floor is within the ceiling, of inputs not
        gone dense."""
        ceiling = torch.stack([tensors[f"{p}.distance"] for p in engine.norms])[..., None] * (1 + SLACK)
        return (floor <= ceiling) & torch.isfinite(floor) & ~dense[None, :, None]

    for _ in range(rounds(d)):
        wanted = open_faces()
        count = wanted.any(dim=0).sum(dim=1)
        dense |= (count > 0) & (done > 0) & ((done + count.clamp(max=len(engine.norms) * k) > limit) | (count > d))
        wanted &= ~dense[None, :, None]
        smallest, flat = torch.where(wanted, floor, math.inf).topk(min(k, floor.shape[2]), dim=2, largest=False)
        norm, rows, rank = torch.isfinite(smallest).nonzero().unbind(dim=1)
        if len(rows) == 0:
            return tensors, dense
        chosen = torch.unique(torch.stack([rows, flat[norm, rows, rank]], dim=1), dim=0)
        _count(engine.work, engine.norms, norm)
        rows, flat = chosen[:, 0].contiguous(), chosen[:, 1].contiguous()
        layer = torch.searchsorted(starts, flat, right=True) - 1
        precision.exact_ratios(region, tensors, x, torch.stack([rows, nonlinear[layer], flat - starts[layer]], 1), merge=True)
        floor[:, rows, flat] = known
        done += torch.bincount(rows, minlength=b)
        k *= GROWTH
    dense |= open_faces().any(dim=0).any(dim=1)  # a guard: rounds() says none are left
    return tensors, dense


def _count(work, norms, norm: Tensor) -> None:
    """Note how many of a round's faces each norm chose (``norm``: the norm of each choice; the
    counts stay on the device until someone reads them)."""
    for q, p in enumerate(norms):
        work.chosen[p] = work.chosen.get(p, 0) + (norm == q).sum()


def rounds(d: int) -> int:
    """The most rounds :func:`certify` takes for inputs of ``d`` dimensions. Round r takes up to
    FIRST·GROWTHʳ faces per input and norm; an input with faces left for round r + 1 took that many
    in round r, and goes the dense way unless at least one more fits within SHARE·d: so rounds take
    faces only while FIRST·GROWTHʳ < SHARE·d, one more, and a last one finds none."""
    count, k = 2, FIRST
    while k < SHARE * d:
        count, k = count + 1, k * GROWTH
    return count


def unknown(region) -> dict[str, Tensor]:
    """Per norm: no face found yet (radius +inf, layer −1), for :func:`precision.exact_ratios` to
    improve; ``gradients_finite`` for it to narrow."""
    b, device = region.batch, region.output.device
    layer = torch.full((b,), -1, dtype=torch.long, device=device)
    unit = torch.zeros(b, dtype=torch.long, device=device)
    none = {"distance": torch.full((b,), math.inf, dtype=torch.float64, device=device), "layer": layer, "unit": unit,
            **region.describe(layer, unit)}
    tensors = {f"{p}.{key}": value for p in region.engine.norms for key, value in none.items()}
    return tensors | {"gradients_finite": torch.ones(b, dtype=torch.bool, device=device)}
