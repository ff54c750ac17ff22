"""Exact gradients by reverse passes: ∇ₓ of chosen face values (:func:`face_gradients`), of
margins f_c − f_j (:func:`margin_gradients`) and of every unit of one layer (:func:`unit_gradients`).

A code path independent of the tangent push: autograd through the network as it evaluates x
(whose gradient is the frozen network's). Each row's gradient is one reverse pass. Two ways to
batch them, chosen by memory: where several inputs' reverse passes fit at once, each row gets its
own copy of its input and all rows go through one value pass and one backward pass together;
where a single input's pass is large (an ImageNet-size network), each input is evaluated once and
its rows are taken by one batched backward pass over that single evaluation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..network import ir

#: Rows reverse-passed together on a CPU: at most this many, in at most this much memory (a GPU
#: takes as many as the engine's memory budget holds: each pass costs kernel launches).
REVERSE_ROWS = 256
REVERSE_BYTES = 256 << 20
#: Where fewer rows than this fit in one pass, each input is evaluated once and its rows share that
#: value pass (on a 2-core CPU, ResNet-18 at 224²: a float64 row then costs 0.12 s instead of 0.23 s).
SHARED_BELOW = 4
#: Rows of one batched backward pass over a single evaluation on a CPU (more were slower per row
#: there; a GPU takes up to GPU_BACKWARD_ROWS, as memory allows).
BACKWARD_ROWS = 16
GPU_BACKWARD_ROWS = 256
#: The layer index that stands for the network's output values (a nonlinear layer's stands for its faces).
OUTPUT = -1


def face_gradients(engine, x: Tensor, rows: Tensor) -> Tensor:
    """∇ₓz for each (input, layer, unit) of ``rows``, in the engine's value dtype: (rows, D)."""
    inputs, layers, units = rows.unbind(dim=1)
    ones = torch.ones_like(units, dtype=x.dtype)[:, None]
    return _gradients(engine, x, set(engine.nonlinear), inputs, layers[:, None], units[:, None], ones)


def margin_gradients(engine, x: Tensor, rows: Tensor, network: ir.Network | None = None) -> Tensor:
    """∇ₓ(f_c − f_j) for each (input, c, j) of ``rows``, through ``network`` (default: the engine's,
    in its value dtype; x in that network's dtype): (rows, D)."""
    inputs, c, j = rows.unbind(dim=1)
    return _gradients(engine, x, {OUTPUT}, inputs, *_margin_terms(x, c, j), network)


def margin_copies(network: ir.Network, x: Tensor, inputs: Tensor, c: Tensor, j: Tensor) -> Tensor:
    """∇ₓ(f_c − f_j) for each row (input, c, j), each row its own copy of its input, all rows in one
    value and one backward pass (the caller sizes them to its memory): (rows, D)."""
    return _copies(network, x, {OUTPUT}, inputs, *_margin_terms(x, c, j))


def _margin_terms(x: Tensor, c: Tensor, j: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The layers, units and coefficients of :func:`_gradients`' rows for the margins f_c − f_j."""
    output = torch.full_like(c, OUTPUT)
    one = torch.ones(len(c), dtype=x.dtype, device=x.device)  # (made on the device: no host data per batch)
    return torch.stack([output, output], 1), torch.stack([c, j], 1), torch.stack([one, -one], 1)


def _gradients(engine, x: Tensor, wanted: set[int], inputs: Tensor, layers: Tensor, units: Tensor,
               coefficients: Tensor, network: ir.Network | None = None) -> Tensor:
    """Row r's gradient is that of Σ_t coefficients[r, t] · value of unit ``units[r, t]`` of layer
    ``layers[r, t]`` (one of the ``wanted`` layers: a nonlinear layer's faces, or ``OUTPUT``: the
    network's output) at input ``inputs[r]``, through ``network`` (default: the engine's)."""
    network = network or engine.network
    if len(inputs) == 0:
        return x.new_zeros(0, network.input_size)
    fit = _copies_per_pass(engine, network, x.dtype, len(inputs))
    if fit >= SHARED_BELOW:
        parts = [
            _copies(network, x, wanted, *(t[a : a + fit] for t in (inputs, layers, units, coefficients)))
            for a in range(0, len(inputs), fit)
        ]
        return torch.cat(parts)
    return _shared(network, x, wanted, inputs, layers, units, coefficients)


def nearest_rows(inputs: Tensor, values: Tensor, gradients: Tensor, p: str, batch: int) -> tuple[Tensor, ...]:
    """For rows (their input ``inputs``, a value, its gradient), per input of a ``batch``: the
    smallest ratio |value| / ‖gradient‖_q among its rows (+inf where none has a nonzero gradient),
    the first row that attains it and whether one does; and every row's ‖gradient‖_q."""
    dual = torch.linalg.vector_norm(gradients, ir.DUAL_ORDER[p], dim=1)
    ratio = torch.where(dual > 0, values.abs() / torch.where(dual > 0, dual, 1.0), math.inf)
    best = torch.full((batch,), math.inf, dtype=ratio.dtype, device=ratio.device).scatter_reduce(0, inputs, ratio, "amin")
    n = len(inputs)
    order = torch.arange(n, device=ratio.device)
    chosen = torch.where(torch.isfinite(ratio) & (ratio == best[inputs]), order, n)
    first = torch.full((batch,), n, dtype=torch.long, device=ratio.device).scatter_reduce(0, inputs, chosen, "amin")
    return best, first.clamp(max=max(n - 1, 0)), first < n, dual


def _copies_per_pass(engine, network: ir.Network, dtype: torch.dtype, rows: int) -> int:
    """Rows of per-row copies one value and backward pass takes: as many as the budget holds, at
    most REVERSE_ROWS on a CPU (all ``rows`` on a GPU)."""
    most = REVERSE_ROWS if engine.device.type == "cpu" else rows
    return max(1, min(most, budget(engine) // network.reverse_bytes_per_row(dtype)))


def budget(engine) -> int:
    """Bytes one batch of reverse passes may hold: REVERSE_BYTES on a CPU, the engine's budget on a GPU."""
    return REVERSE_BYTES if engine.device.type == "cpu" else engine.memory_bytes


def _record(network: ir.Network, points: Tensor, wanted: set[int]) -> dict[int, Tensor]:
    """One value pass over ``points``: the faces of the wanted nonlinear layers and, if ``OUTPUT``
    is wanted, the output, each flattened to (P, n), in autograd's graph."""
    recorded: dict[int, Tensor] = {}

    def record(i: int, layer: ir.Nonlinearity, *z: Tensor) -> Tensor:
        if i in wanted:
            recorded[i] = layer.faces(*z)
        return layer.apply(*z)

    output = network.run(points, nonlinear=record)
    if OUTPUT in wanted:
        recorded[OUTPUT] = output.reshape(len(points), -1)
    return recorded


def _copies(network, x, wanted, inputs, layers, units, coefficients) -> Tensor:
    """Each row its own copy of its input: one value pass and one backward pass for all rows."""
    points = x[inputs].detach().clone().requires_grad_(True)
    with torch.enable_grad():
        recorded = _record(network, points, wanted)
        total = torch.zeros(len(inputs), dtype=x.dtype, device=x.device)
        for t in range(layers.shape[1]):
            for i, values in recorded.items():  # no data-dependent branches
                here = layers[:, t] == i
                picked = values.gather(1, torch.where(here, units[:, t], 0)[:, None])[:, 0]
                total = total + torch.where(here, coefficients[:, t] * picked, 0.0)
        (gradient,) = torch.autograd.grad(total.sum(), points)
    return gradient.reshape(len(inputs), -1)


def _shared(network, x, wanted, inputs, layers, units, coefficients) -> Tensor:
    """Each input evaluated once; its rows by batched backward passes over that evaluation."""
    out = x.new_empty(len(inputs), network.input_size)
    wanted = wanted & set(layers.unique().tolist())  # host waits: this way is for few, large passes
    order = torch.argsort(inputs, stable=True)
    start = 0
    for u, count in enumerate(torch.bincount(inputs).tolist()):
        rows, start = order[start : start + count], start + count
        if count == 0:
            continue
        point = x[u : u + 1].detach().clone().requires_grad_(True)
        with torch.enable_grad():
            recorded = _record(network, point, wanted)
            keys = list(recorded)
            for a in range(0, count, BACKWARD_ROWS):
                chunk = rows[a : a + BACKWARD_ROWS]
                seeds = []
                for i in keys:
                    seed = x.new_zeros(len(chunk), 1, recorded[i].shape[1])
                    for t in range(layers.shape[1]):
                        here = layers[chunk, t] == i
                        unit = torch.where(here, units[chunk, t], 0)[:, None]
                        seed[:, 0].scatter_add_(1, unit, (here * coefficients[chunk, t])[:, None])
                    seeds.append(seed)
                (gradient,) = torch.autograd.grad([recorded[i] for i in keys], point, grad_outputs=seeds,
                                                  retain_graph=True, is_grads_batched=True)
                out[chunk] = gradient.reshape(len(chunk), -1)
    return out


def unit_gradients(engine, network: ir.Network, x: Tensor, layer: int) -> Tensor:
    """∇ₓ of every unit of layer ``layer`` of ``network`` (the engine's, in some dtype), for every
    input of ``x``: (B, units, D), in x's dtype. Batched as the module says: where at least
    SHARED_BELOW rows' passes fit the budget, each row its own copy of its input (ResNet-18 at
    3×32×32 on a 2-core CPU: 512 rows in 0.38 s against 1.05 s by batched backward passes), else
    one value pass for the batch and batched backward passes, as many units at a time as the
    budget holds (about four copies of the largest layer per unit and input)."""
    b, units = len(x), network.layers[layer].size
    fit = _copies_per_pass(engine, network, x.dtype, b * units)
    if fit >= SHARED_BELOW:
        return _unit_copies(network, x, layer, fit)
    largest = max(other.size for other in network.layers)
    per_unit = 4 * b * largest * (torch.finfo(x.dtype).bits // 8)
    most = BACKWARD_ROWS if engine.device.type == "cpu" else GPU_BACKWARD_ROWS
    step = max(1, min(most, budget(engine) // per_unit))
    points = x.detach().clone().requires_grad_(True)
    out = x.new_empty(b, units, network.input_size)
    with torch.enable_grad():
        values = network.run(points, until=layer).reshape(b, units)
        for a in range(0, units, step):
            n = min(step, units - a)
            seeds = x.new_zeros(n, b, units)
            seeds[:, :, a : a + n] = torch.eye(n, dtype=x.dtype, device=x.device)[:, None, :]
            (gradient,) = torch.autograd.grad(values, points, grad_outputs=seeds, retain_graph=True, is_grads_batched=True)
            out[:, a : a + n] = gradient.reshape(n, b, -1).transpose(0, 1)
    return out


def _unit_copies(network: ir.Network, x: Tensor, layer: int, fit: int) -> Tensor:
    """:func:`unit_gradients` with each (input, unit) row its own copy of its input: ``fit`` rows
    at a time share one value pass and one backward pass."""
    b, units = len(x), network.layers[layer].size
    inputs = torch.arange(b, device=x.device).repeat_interleave(units)
    unit = torch.arange(units, device=x.device).repeat(b)
    out = x.new_empty(b * units, network.input_size)
    for a in range(0, b * units, fit):
        rows = slice(a, min(b * units, a + fit))
        points = x[inputs[rows]].detach().clone().requires_grad_(True)
        with torch.enable_grad():
            values = network.run(points, until=layer).reshape(len(points), -1)
            (gradient,) = torch.autograd.grad(values.gather(1, unit[rows, None]).sum(), points)
        out[rows] = gradient.reshape(len(points), -1)
    return out.reshape(b, units, -1)
