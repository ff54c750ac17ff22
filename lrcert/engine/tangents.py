"""The tangent push: input directions through the frozen (linearised, bias-free) network.

With the activation pattern of x frozen, a tangent seeded with input direction s becomes, at each
layer, that layer's Jacobian times s; at a nonlinearity it is the gradient of each face along s,
which a *fold* collects (``fold.faces(layer, rows, g)``, g of shape ``(1 or b, K, faces)`` for K
directions: :class:`lrcert.engine.norms.DualNorms`, ``Rates``). A :class:`Walk` says which layers
a push goes through; one that ends at the output also hands the output's tangent to
``fold.output(rows, t)`` (the margins' directional derivatives, for the sketched prediction radius).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..network import ir


@dataclass(frozen=True)
class Walk:
    """The layers a push goes through, in order, and what it may forget when."""

    order: list[int]  # every layer whose tangent is needed (the input aside)
    prefix: list[int]  # affine layers before any nonlinearity: their tangents do not depend on the input
    suffix: list[int]  # the rest
    last_use: dict[int, int]  # layer -> the last layer of the walk that reads it
    read: set[int]  # layers whose tangent some layer of the walk reads (or that the walk hands on)
    entries: list[int]  # unit activations reading only the prefix: their face gradients are shared too
    output: int | None = None  # the output layer, when its tangent is handed to the fold

    @classmethod
    def build(cls, network: ir.Network, to_output: bool = False) -> "Walk":
        """The walk to every face (ancestors of a nonlinearity, and the nonlinearities), and with
        ``to_output`` on to the network's output."""
        layers, nonlinear = network.layers, network.nonlinear
        targets = set(nonlinear) | ({network.output} if to_output else set())
        needed: set[int] = set()
        stack = [j for i in targets for j in layers[i].inputs]
        while stack:
            j = stack.pop()
            if j not in needed:
                needed.add(j)
                stack.extend(layers[j].inputs)
        order = sorted((needed | targets) - {0})
        prefix: set[int] = set()
        for i in order:
            if isinstance(layers[i], ir.Affine) and set(layers[i].inputs) <= {0} | prefix:
                prefix.add(i)
        read = {j for i in order for j in layers[i].inputs} | ({network.output} if to_output else set())
        entries = [i for i in nonlinear if isinstance(layers[i], ir.Elementwise) and set(layers[i].inputs) <= {0, *prefix}]
        return cls(order, sorted(prefix), [i for i in order if i not in prefix], network.last_uses(order), read,
                   entries, network.output if to_output else None)


@dataclass(frozen=True)
class ActiveColumns:
    """One input's tangent after a ReLU, kept only on its active units (the rest are exactly 0).

    A dense layer then multiplies by the matching columns of its weight only: the work shrinks
    by the fraction of inactive units.
    """

    values: Tensor  # (1, K, active)
    columns: Tensor  # (active,) flat unit indices

    def through(self, layer: ir.Layer, transposed_weight: Tensor | None) -> "ActiveColumns | Tensor":
        """Apply a reshape (keeps the flat indices) or a dense layer (``transposed_weight`` = Wᵀ)."""
        if transposed_weight is None:
            return self
        out = torch.matmul(self.values, torch.index_select(transposed_weight, 0, self.columns))
        return out.reshape(*out.shape[:2], *layer.shape)


def push(region, seeds: Tensor, fold, group: int, walk: Walk | None = None) -> None:
    """Push tangents ``seeds`` (shape ``(1 or B, K, *input_shape)``) of ``region``'s inputs through
    the frozen network along ``walk`` (default: the faces'), handing each face gradient to ``fold``.

    Shared seeds (the identity, or a sketch's directions) make every layer before the first
    nonlinearity the same for all inputs: that prefix is computed once, the rest in groups of
    ``group`` inputs, small enough to stay in cache, and from each of ``Engine.stages`` on,
    several of the stage before's groups together. The layers and frozen slopes are taken in
    the seeds' dtype (under ``dtype="auto"``: float32 for the identity, float64 for a direction).
    """
    engine = region.engine
    walk = walk or engine.walk
    layers = _layers(region, seeds.dtype)
    shared = seeds.shape[0] == 1
    base = {0: seeds}
    if shared:
        for i in walk.prefix:
            base[i] = layers[i].apply([base[j] for j in layers[i].inputs], offset=False)
        for i in walk.entries:  # ReLUs reading the prefix: their face gradients are shared too
            fold.faces(i, slice(None), base[layers[i].inputs[0]].flatten(2))
        read_later = {j for i in walk.suffix for j in layers[i].inputs} | {walk.output} - {None}
        base = {j: t for j, t in base.items() if j in read_later}
    order = walk.suffix if shared else walk.order
    cuts = [order.index(i) for i, _ in engine.stages if shared and i in order and walk is engine.walk]
    merges = [m for i, m in engine.stages if shared and i in order and walk is engine.walk]
    segments = [order[a:b] for a, b in zip([0, *cuts], [*cuts, len(order)])]
    spans = [group]
    for m in merges:
        spans.append(spans[-1] * m)
    kept = [seeds, *base.values()]

    def stage(k: int, rows: slice) -> dict:
        """Push inputs ``rows`` through segments 0…k; the tangents alive after segment k."""
        if k == 0:
            tangents = dict(base) if shared else {0: seeds[rows]}
        else:  # the inputs of the stage before, a span at a time, together
            parts = [stage(k - 1, slice(a, min(a + spans[k - 1], rows.stop))) for a in range(rows.start, rows.stop, spans[k - 1])]
            tangents = {j: t if t is base.get(j) else torch.cat([part[j] for part in parts]) for j, t in parts[0].items()}
        _walk(region, walk, segments[k], tangents, rows, seeds.dtype, shared, kept, fold)
        return tangents

    for start in range(0, region.batch, spans[-1]):
        rows = slice(start, min(start + spans[-1], region.batch))
        tangents = stage(len(segments) - 1, rows)
        if walk.output is not None:
            fold.output(rows, tangents[walk.output].flatten(2))


def push_directions(region, directions: Tensor, fold, group: int) -> None:
    """Push each input's direction d (one per input, or one for all) to fold the rates g·d."""
    engine = region.engine
    seeds = directions.to(engine.device, engine.value_dtype).reshape(-1, 1, *engine.network.input_shape)
    push(region, seeds.expand(region.batch, *seeds.shape[1:]), fold, group)


def _layers(region, dtype: torch.dtype) -> Sequence[ir.Layer]:
    """The network's layers in the tangents' dtype."""
    engine = region.engine
    return (engine.tangent_network if dtype == engine.dtype else region.network).layers


def _walk(region, walk: Walk, order: Sequence[int], tangents: dict, rows: slice, dtype: torch.dtype, shared: bool,
          kept: list, fold) -> None:
    """Push the tangents of inputs ``rows`` through layers ``order``, in place in ``tangents``
    (``shared``: seeds common to all inputs; ``kept``: tensors never to overwrite)."""
    engine = region.engine
    tangent_dtype = dtype == engine.dtype
    layers = _layers(region, dtype)
    for i in order:
        layer = layers[i]
        ins = [tangents[j] for j in layer.inputs]
        if isinstance(ins[0], ActiveColumns):
            tangents[i] = ins[0].through(layer, engine.transposed.get(i))
        elif isinstance(layer, ir.Affine):
            tangents[i] = layer.apply(ins, offset=False)
        elif isinstance(layer, ir.MaxPool2d):
            winner = _winner_tangent(region, i, rows, ins[0])
            windows = layer.window_view(ins[0], 0.0)
            faces = winner.new_empty(*winner.shape[:-1], *windows.shape[-4:])  # in window order, not the view's
            torch.sub(winner.unflatten(-1, (1, 1, *layer.shape[-2:])), windows, out=faces)
            fold.faces(i, rows, faces.flatten(2))
            tangents[i] = winner.reshape(*winner.shape[:2], *layer.shape)
        elif isinstance(layer, ir.Maximum):
            fold.faces(i, rows, layer.faces(*ins))
            if i in walk.read:
                tangents[i] = layer.select(region.first_wins[i][rows].unsqueeze(1), *ins)
        else:
            if not (shared and i in walk.entries):  # (done once for all inputs in push)
                fold.faces(i, rows, ins[0].flatten(2))
            if i in walk.read:  # (no layer reads the last nonlinearity's tangent: only its faces count)
                one = rows.stop - rows.start == 1 and tangent_dtype
                active = region.active[i][rows.start] if i in region.active and one else None
                if active is not None:
                    tangents[i] = ActiveColumns(torch.index_select(ins[0].flatten(2), 2, active), active)
                else:
                    gain = region.gain_as(i, dtype)[rows].unsqueeze(1)
                    owned = _sole_reader(walk, i, layer.inputs[0], tangents, kept)
                    tangents[i] = ins[0].mul_(gain) if owned and len(gain) == len(ins[0]) else gain * ins[0]
        for j in set(layer.inputs):
            if walk.last_use.get(j) == i:
                tangents.pop(j, None)


def _sole_reader(walk: Walk, i: int, j: int, tangents: dict, kept: list[Tensor]) -> bool:
    """Whether layer ``i`` may overwrite tangent ``j`` instead of allocating its own: it is
    the last to read it, and no other memory is shared with it (not the caller's seeds, not
    the tensors ``kept`` for every group of inputs, not another layer's tangent)."""
    tangent = tangents[j]
    if walk.last_use.get(j) != i or not tangent.is_contiguous():
        return False
    memory = tangent.untyped_storage().data_ptr()
    others = [t for k, t in tangents.items() if k != j and not isinstance(t, ActiveColumns)] + kept
    return all(t.untyped_storage().data_ptr() != memory for t in others)


def _winner_tangent(region, i: int, rows: slice, tangent: Tensor) -> Tensor:
    """Max-pool ``i``'s output tangent, ``(b, K, ..., C, out_h·out_w)``: each window's arg-max
    element of ``tangent`` (``(1 or b, K, ..., C, h, w)``), gathered from the input plane."""
    index = region.winner_positions(i)[rows].unsqueeze(1)
    planes = tangent.flatten(-2)
    index = index.expand(len(index), planes.shape[1], *index.shape[2:])
    return torch.gather(planes.expand(len(index), *planes.shape[1:]), -1, index)
