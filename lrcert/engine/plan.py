"""How a run is cut to fit memory: inputs per batch, inputs per tangent pass, input directions per
pass, and (CPU) the deeper stages that take several groups of inputs at once; also which ReLUs may
skip their inactive units one input at a time."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..network import ir
from ..runtime import devices

#: Inputs per batch when the caller does not say. On the CPU, 256 bounds the value pass and the
#: results; on a GPU, batches are as large as memory allows up to GPU_BATCH, and small enough
#: that the host assembles one batch's results while the GPU computes the next.
DEFAULT_BATCH = 256
GPU_BATCH = 2048
#: Gathering one active column costs about this many multiply-adds (measured, 2-core CPU).
GATHER_COST = 200
#: Below this many directions per pass, the fixed cost of gathering per pass outweighs the saving.
MIN_SKIP_DIRECTIONS = 256
#: One input's pass through one layer costs about as much as this many multiply-adds whatever the
#: layer (Python and dispatch, measured on a 2-core CPU): skipping, which pushes one input at a
#: time, needs the dense layers to do more per layer than that.
LAYER_COST = 1_000_000
#: Matrix products shorter than this many rows take more inputs at once where they fit (CPU).
STAGE_ROWS = 4096


@dataclass(frozen=True)
class Plan:
    """How a run is cut to fit memory.

    ``batch_size`` inputs share one value pass and one set of results; their tangents are pushed
    ``group`` inputs at a time, over ``directions_per_pass`` input directions at a time, so that
    one tangent pass holds about ``group · directions_per_pass · bytes_per_row`` bytes.
    """

    batch_size: int
    group: int
    directions_per_pass: int
    bytes_per_row: int


def choose(engine, n_inputs: int) -> Plan:
    """Choose the batch, the group and the directions per pass so one tangent pass fits in
    memory, and (CPU) the batch so its inputs' state fits in ``devices.cpu_state_budget``."""
    row = bytes_per_row(engine)
    if engine.device.type == "cuda":
        return gpu_plan(engine, n_inputs, row)
    rows = max(1, engine.memory_bytes // row)  # (input, direction) rows per pass
    directions = directions_per_pass(engine)
    # one input at a time lets dense layers skip inactive units (worth more than bigger passes on a CPU)
    group = 1 if engine.sparse else max(1, rows // directions)
    fits = devices.cpu_state_budget() // bytes_per_input(engine)  # inputs whose state fits in memory
    batch = engine.requested_batch or max(1, min(n_inputs, max(group, DEFAULT_BATCH), fits))
    return Plan(batch, min(group, batch), directions, row)


def gpu_plan(engine, n_inputs: int, row: int) -> Plan:
    """On a GPU: up to half the memory budget holds the batch's own state (up to GPU_BATCH
    inputs), the rest the tangent passes, with as many directions and inputs per pass as fit."""
    per_input = bytes_per_input(engine)
    batch = engine.requested_batch or max(1, min(n_inputs, GPU_BATCH, engine.memory_bytes // 2 // per_input))
    room = max(row, engine.memory_bytes - batch * per_input)
    directions = min(engine.dimensions, max(1, room // row))
    return Plan(batch, max(1, min(batch, room // (row * directions))), directions, row)


def bytes_per_row(engine, dtype: torch.dtype | None = None, walk=None) -> int:
    """Bytes of one (input, direction) row of a tangent pass through ``walk`` (default: the faces'),
    in ``dtype`` (default: the tangent passes')."""
    return peak_elements_per_row(engine, walk) * (torch.finfo(dtype or engine.dtype).bits // 8)


def directions_per_pass(engine, dtype: torch.dtype | None = None, walk=None) -> int:
    """Input directions one input pushes per pass through ``walk`` in ``dtype`` (defaults as above)."""
    return min(engine.dimensions, max(1, engine.memory_bytes // bytes_per_row(engine, dtype, walk)))


def bytes_per_input(engine) -> int:
    """Memory one input of a batch holds while its tangents are pushed: its face values, their
    rounding scales and gradient statistics (float64 copies while results are assembled), the
    activations of the value and magnitude passes, when screening each face's float64 floor per
    norm, a masked copy of them and a mask, and when sketching with many classes the float32
    gradients of the bottleneck's units (:func:`.prediction.sketched_margins`)."""
    faces = engine.network.faces
    activations = sum(layer.size for layer in engine.network.layers)
    itemsize = torch.finfo(engine.value_dtype).bits // 8
    screening = 17 * len(engine.norms) * faces if engine.screening or engine.sketching else 0
    margins = 0
    if engine.sketching and engine.sketch_margins:
        margins = engine.bottleneck()[1].shape[1] * engine.network.input_size * (torch.finfo(engine.dtype).bits // 8)
    return (faces * (3 + len(engine.norms)) + 2 * activations) * itemsize + 3 * 8 * faces + screening + margins


def peak_elements_per_row(engine, walk=None) -> int:
    """Largest number of tangent elements alive at once, per (input, direction) row of a pass
    through ``walk`` (default: the faces'): the live tangents, a layer's temporaries (a max-pool's
    padded input and face gradients, a slope product), and on a CPU the face statistics' reused
    buffer (the most face gradients)."""
    walk = walk or engine.walk
    return int((max(row_peaks(engine, walk)) + scratch_elements(engine, walk.order)) * 1.25) + 1


def row_peaks(engine, walk) -> list[int]:
    """Per layer of ``walk.order``: the tangent elements alive while it runs, per row (the
    reduction buffer aside)."""
    layers = engine.network.layers
    live = {0: engine.network.input_size}
    peaks = []
    for i in walk.order:
        layer = layers[i]
        inputs = sum(layers[j].size for j in set(layer.inputs))
        if isinstance(layer, ir.MaxPool2d):
            transient = 2 * inputs + layer.face_count
        elif isinstance(layer, ir.Nonlinearity):
            transient = inputs
        else:
            transient = 0
        live[i] = layer.size
        peaks.append(sum(live.values()) + transient)
        for j in set(layer.inputs):
            if walk.last_use.get(j) == i:
                live.pop(j, None)
    return peaks or [engine.network.input_size]


def scratch_elements(engine, order: Sequence[int]) -> int:
    """The CPU reduction buffer's elements per row for the layers ``order``: their most faces."""
    layers = engine.network.layers
    faces = [layers[i].face_count for i in order if isinstance(layers[i], ir.Nonlinearity)]
    return 0 if engine.fused_norms else max(faces, default=0)


def stages(engine) -> list[tuple[int, int]]:
    """``[(layer, m), ...]``: from ``layer`` on, the layers take ``m`` times the inputs of the
    stage before in one pass. A stage starts where the tangents have shrunk so that at least
    twice the inputs fit in a pass's working set and the layer's matrix products would be
    short (under STAGE_ROWS rows: directions × inputs × positions of its output), as in
    ResNets' deeper stages; bigger products reuse each weight more. None on a GPU (its passes
    take whole batches) or with inactive units skipped (one input at a time)."""
    if engine.device.type == "cuda" or engine.sparse:
        return []
    layers, directions, walk = engine.network.layers, directions_per_pass(engine), engine.walk
    peaks = row_peaks(engine, walk)
    total = max(peaks) + scratch_elements(engine, walk.order)
    found, inputs = [], 1  # inputs per pass, in groups
    for position, i in enumerate(walk.order):
        if i in walk.prefix or position == 0:
            continue
        fit = total // (max(peaks[position:]) + scratch_elements(engine, walk.order[position:]))
        rows = directions * inputs * math.prod(layers[i].shape[2:])
        if fit >= 2 * inputs and rows < STAGE_ROWS:
            found.append((i, fit // inputs))
            inputs = fit // inputs * inputs
    return found


# ----------------------------------------------------------------------------------- skipping inactive units


def skippable_relus(engine, skip_inactive: bool) -> dict[int, int]:
    """ReLU → the most active units at which skipping its inactive units (one input at a time,
    CPU) still pays; only ReLUs that reach the rest of the network through dense layers alone,
    and only in networks whose dense layers do enough work per layer and input that pushing one
    input at a time is not dominated by each layer's fixed cost (an RNN's many small steps are)."""
    directions = directions_per_pass(engine)
    layers = engine.network.layers
    work = directions * sum(layer.weight.numel() for layer in layers if isinstance(layer, ir.Dense))
    skip_inactive = skip_inactive and engine.device.type == "cpu" and (
        directions == engine.dimensions or directions >= MIN_SKIP_DIRECTIONS
    ) and work >= LAYER_COST * len(engine.walk.order)
    return {i: _skip_limit(engine, i) for i in engine.nonlinear if skip_inactive and _feeds_only_dense(engine, i)}


def sparse_reach(engine, relus: set[int]) -> set[int]:
    """The given ReLUs and the reshapes between them and their dense readers."""
    reach = set(relus)
    for i in engine.walk.order:
        layer = engine.network.layers[i]
        if isinstance(layer, ir.Reshape) and set(layer.inputs) & reach:
            reach.add(i)
    return reach


def _feeds_only_dense(engine, i: int) -> bool:
    """Whether ReLU ``i`` reaches the rest of the network only through dense layers (maybe via a
    flattening reshape). Then, one input at a time, its inactive units can be skipped entirely."""
    layers, order = engine.network.layers, engine.walk.order
    if layers[i].kind != "relu" or i == engine.network.output:
        return False
    readers = [j for j in order if i in layers[j].inputs]
    while len(readers) == 1 and isinstance(layers[readers[0]], ir.Reshape):
        reshape = readers[0]
        if reshape == engine.network.output or math.prod(layers[reshape].shape[:-1]) != 1:
            return False
        readers = [j for j in order if reshape in layers[j].inputs]
    return bool(readers) and all(
        isinstance(layers[j], ir.Dense) and math.prod(layers[j].in_shapes[0][:-1]) == 1 for j in readers
    )


def _skip_limit(engine, i: int) -> int:
    """Skipping pays while the products saved, (n − a)·n_out, outweigh gathering the a active
    columns, which costs about GATHER_COST multiply-adds each (measured on a CPU): skip when
    a < n · n_out / (n_out + GATHER_COST)."""
    layers = engine.network.layers
    reach = sparse_reach(engine, {i})
    n_out = sum(layer.weight.shape[0] for layer in layers if isinstance(layer, ir.Dense) and set(layer.inputs) & reach)
    return int(layers[i].size * n_out / (n_out + GATHER_COST))
