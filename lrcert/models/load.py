"""Model files → layer list: ONNX (checked, then converted with onnx2torch), TorchScript,
``torch.export`` programs (``.pt2``), and pickled ``nn.Module`` files (only with consent).

ONNX models are judged on the ONNX graph itself before anything is converted: every node that
reads an input-dependent tensor must be piecewise linear in it, and a product (Mul, MatMul,
Gemm) needs one constant side. All offending nodes are reported at once, by ONNX node name.

>>> import torch
>>> _ = torch.manual_seed(0)
>>> net = from_module(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)), (2, 2))
>>> net.sample_shape, net.output_shape
((2, 2), (2,))
"""

from __future__ import annotations

import heapq
import math
import os
import pickle
import warnings
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import SUPPORTED_NETWORKS, LrcertError, first_line
from ..network import ir
from . import recurrent
from .convert import to_network
from .fold import complete_types, fold_constants

#: ONNX ops that are linear in their input-dependent operands. The value lists the operand
#: positions that must be constant (weights, shapes, indices).
ONNX_LINEAR = {
    "Add": (), "Sub": (), "Sum": (), "Concat": (), "Identity": (), "Dropout": (1, 2), "Flatten": (),
    "Reshape": (1,), "Transpose": (), "Squeeze": (1,), "Unsqueeze": (1,), "Pad": (1, 2, 3),
    "AveragePool": (), "GlobalAveragePool": (), "BatchNormalization": (1, 2, 3, 4), "Slice": (1, 2, 3, 4),
    "Gather": (1,), "ReduceMean": (1,), "ReduceSum": (1,), "Expand": (1,), "Neg": (), "Cast": (),
    "Conv": (1, 2), "ConvTranspose": (1, 2), "Div": (1,), "Relu": (), "LeakyRelu": (), "MaxPool": (),
    "Clip": (1, 2), "PRelu": (1,), "Abs": (), "Max": (), "Min": (), "HardSigmoid": (),
    # entries moved, repeated or dropped (constant sizes, scales and indices): lrcert's Gather
    "Split": (1,), "Resize": (1, 2, 3), "Upsample": (1,), "DepthToSpace": (), "SpaceToDepth": (), "Tile": (1,),
    "GatherElements": (1,), "GatherND": (1,), "Where": (0,),
    # piecewise linear: a max (min) over axes is a max-pool window per output
    "ReduceMax": (1,), "ReduceMin": (1,),
}
#: Products: linear only when at most one of the listed operands depends on the input.
ONNX_PRODUCTS = {"MatMul": (0, 1), "Mul": (0, 1), "Gemm": (0, 1), "Einsum": (0, 1, 2, 3)}
#: Ops whose output is a constant even when their input depends on the input (shapes are static).
ONNX_SHAPE_ONLY = {"Shape"}
#: Ops allowed only as the model's last operation: lrcert then certifies the logits before them.
ONNX_FINAL_ONLY = {"Softmax", "LogSoftmax"}
ONNX_SMOOTH = {
    "Sigmoid", "Tanh", "Exp", "Log", "Softplus", "Softsign", "Elu", "Selu", "Celu", "Gelu", "Erf", "Sqrt",
    "Pow", "Reciprocal", "HardSwish", "Mish", "Sin", "Cos", "Softmax", "LogSoftmax",
}
#: Every op lrcert reads where it may meet an input-dependent tensor (the docs' table: docs/reference/supported.md).
READ_OPS = sorted(set(ONNX_LINEAR) | set(ONNX_PRODUCTS) | ONNX_SHAPE_ONLY | ONNX_FINAL_ONLY | {"RNN"})
#: Old models are brought to this opset first when onnx2torch lacks one of their op versions.
OLD_OPSET_TARGET = 17


def load(
    path: str | os.PathLike,
    *,
    trust_pickle: bool = False,
    sample_shape: Sequence[int] | None = None,
    output_name: str | None = None,
    cache: bool = True,
) -> ir.Network:
    """Load a model file into a layer list.

    ``sample_shape`` (the shape of one data row) is needed for TorchScript and pickled modules,
    which do not record their input shape, and for ONNX inputs with dynamic dimensions. The layer
    list lives on the CPU (engines move it where they compute): every tensor made while loading,
    by lrcert or by the converters it calls, is made there, whatever the default device.
    ``output_name`` picks the output of an ONNX model with several (default: the first) that
    predictions are read from; the regions are the whole graph's whichever is picked. ``cache``:
    an ONNX file's layer list is kept between runs (:mod:`lrcert.models.cache`), keyed by the
    file's bytes and the code that converted it.
    """
    return open_model(path, trust_pickle=trust_pickle, output_name=output_name, cache=cache).network(sample_shape)


class Model:
    """A model file read once, whose layer list :meth:`network` builds for a row shape: the one
    the file fixes, or the one asked where it leaves dimensions dynamic. Sequences of different
    lengths get one layer list per length (each built once); the file is read and converted once."""

    def __init__(self, name: str, build: Callable[[tuple[int, ...] | None], ir.Network]):
        self.name, self._build, self._built = name, build, {}

    def network(self, sample_shape: Sequence[int] | None = None) -> ir.Network:
        key = None if sample_shape is None else tuple(int(d) for d in sample_shape)
        if key not in self._built:
            with torch.device("cpu"):
                self._built[key] = self._build(key)
        return self._built[key]


def open_model(path: str | os.PathLike, *, trust_pickle: bool = False, output_name: str | None = None,
               cache: bool = True) -> Model:
    """A model file, read and checked (see :func:`load`), ready to build layer lists; ``cache``:
    ONNX layer lists kept between runs (:mod:`.cache`)."""
    with torch.device("cpu"):
        return Model(Path(path).name, _open(Path(path), trust_pickle, output_name, cache))


def opener(path: str | os.PathLike, *, trust_pickle: bool = False, output_name: str | None = None,
           cache: bool = True) -> Callable:
    """``open_model(path).network``, the file read on the first call (a command checks its other
    arguments first): the layer list for each row shape asked, each built once."""
    opened: list[Model] = []

    def network(sample_shape: Sequence[int] | None = None) -> ir.Network:
        if not opened:
            opened.append(open_model(path, trust_pickle=trust_pickle, output_name=output_name, cache=cache))
        return opened[0].network(sample_shape)

    return network


def _open(path: Path, trust_pickle: bool, output_name: str | None, cache: bool) -> Callable[[tuple[int, ...] | None], ir.Network]:
    if not path.exists():
        raise LrcertError(f"model file {str(path)!r} does not exist", fix="check the path")
    if path.is_dir():
        raise LrcertError(f"model path {str(path)!r} is a folder", fix="give the model file itself")
    try:
        head = path.open("rb").read(4)
    except OSError as exc:
        raise LrcertError(f"cannot read model file {str(path)!r}: {exc.strerror}", fix="check its permissions") from None
    archive = zipfile.is_zipfile(path)
    pickled = not archive and (path.suffix.lower() in (".pt", ".pth", ".pkl", ".ckpt", ".bin") or head[:1] == b"\x80")
    if output_name is not None and (archive or pickled):
        raise LrcertError(f"--output-name {output_name!r} is given for {path.name}, which is not an ONNX model",
                          fix="leave it out: a PyTorch model must return one tensor")
    if archive:
        return _open_torch_archive(path, trust_pickle)
    if pickled:
        return _open_pickle(path, trust_pickle)
    return _cached_onnx(path, output_name) if cache else _OnnxFile(path, output_name).network


def _cached_onnx(path: Path, output_name: str | None) -> Callable[[tuple[int, ...] | None], ir.Network]:
    """An ONNX file's layer lists through the cache of converted networks (:mod:`.cache`): the
    file is read, checked and converted only where a row shape has no entry yet."""
    from .cache import Entries

    entries, onnx_file = Entries(path, output_name), []

    def build(sample_shape: tuple[int, ...] | None) -> ir.Network:
        found = entries.get(sample_shape)
        if found is not None:
            return found
        if not onnx_file:
            onnx_file.append(_OnnxFile(path, output_name))
        network = onnx_file[0].network(sample_shape)
        entries.put(sample_shape, network, onnx_file[0].external)
        return network

    return build


def from_module(module: torch.nn.Module, sample_shape: Sequence[int], *, source: str = "") -> ir.Network:
    """The layer list of an ``nn.Module`` (or TorchScript module) taking inputs ``(B, *sample_shape)``."""
    if not isinstance(module, torch.nn.Module):
        raise LrcertError(
            f"expected a torch.nn.Module, got {type(module).__name__}", fix="pass the model object itself"
        )
    return to_network(module, tuple(int(d) for d in sample_shape), source=source or type(module).__name__)


# ---------------------------------------------------------------------------------------------- ONNX


def load_onnx(path: str | os.PathLike, *, sample_shape: Sequence[int] | None = None, output_name: str | None = None) -> ir.Network:
    return _OnnxFile(Path(path), output_name).network(sample_shape)


class _OnnxFile:
    """An ONNX model read and judged once (its graph checked for piecewise linearity, several
    inputs joined, the output chosen); :meth:`network` builds its layer list for a row shape,
    converting the graph with onnx2torch the first time."""

    def __init__(self, path: Path, output_name: str | None):
        self.path = path
        model, self.external = _read_onnx(path)
        reordered = _sort_nodes(model.graph)
        complete_types(model)
        unlisted = _list_initializers_as_inputs(model)
        fold_constants(model)
        _list_initializers_as_inputs(model)  # (and those folding made)
        _check_onnx(model, path)
        self.joined = _join_inputs(model, path.name)
        problems, self.dims = _inspect_onnx_graph(model)
        if problems:
            gated = any(node.op_type in recurrent.ONNX_RECURRENT for node in model.graph.node)
            raise LrcertError(
                f"{path.name} is not a supported piecewise-linear network: " + "; ".join(problems),
                fix=recurrent.RECURRENT_FIX if gated else SUPPORTED_NETWORKS,
                details=problems,
            )
        outputs_note = _choose_output(model.graph, output_name, path.name)  # (after the checks: a final softmax may end any output)
        self.model, self.converted = model, None
        self.notes = [outputs_note] if outputs_note else []
        if reordered:
            self.notes.append(f"the graph lists {reordered} nodes before the nodes they read; lrcert sorted them, as onnxruntime does")
        if unlisted:
            self.notes.append(f"the file (ONNX IR version {model.ir_version}) leaves {unlisted} weights out of its graph inputs, "
                              "where that version lists them; lrcert reads them as constants, as onnxruntime does")

    def network(self, sample_shape: tuple[int, ...] | None) -> ir.Network:
        path = self.path
        batch, declared = _input_layout(self.dims, sample_shape, path.name)
        if self.converted is None:
            self.converted = _onnx_to_torch(_explicit_padding(self.model, path), path)
        graph_module, converted = self.converted
        from . import onnx_ops  # (here: a cached network needs neither onnx nor onnx2torch)

        network = _network(graph_module, batch, declared, path.name, onnx_ops.op_types(converted))
        problems = onnx_ops.resize_problems(converted, graph_module, network.input_shape)
        if problems:
            raise LrcertError(f"{path.name} is not a supported piecewise-linear network: " + "; ".join(problems),
                              fix="re-export the resize as PyTorch computes it (nearest: asymmetric coordinates and floor; "
                                  "linear and cubic: half_pixel or align_corners, cubic_coeff_a=-0.75)", details=problems)
        notes = list(self.notes)
        if self.joined:
            parts = ", ".join(f"{name} ({'×'.join(map(str, shape)) or 'scalar'})" for name, shape in self.joined)
            notes.append(f"the model has {len(self.joined)} inputs: lrcert certifies in their joint space, each row "
                         f"{network.input_size} numbers, {parts} flattened in that order (an .npz with one array per input "
                         "name is joined so)")
        return replace(network, notes=(*network.notes, *notes), inputs=self.joined) if notes else network


JOINT_INPUT = "lrcert_joint_input"


def _join_inputs(model, file: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Rewrite a graph of several inputs into one of a single flat input whose rows join every
    input's flattened row, in the graph's order (a Slice and a Reshape give each input back).
    Inputs that all have a batch axis (dynamic or 1; where they differ, 1) join along it; inputs
    that all have fixed sizes and no batch axis join as one row, each row of DATA one joint sample.
    Returns the inputs' names and row shapes; () for a graph of one input."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inputs = _graph_inputs(graph)
    if len(inputs) < 2:
        return ()
    joined, batched, batches = [], [], set()
    for entry in inputs:
        tensor = entry.type.tensor_type
        dims = _dims(tensor)
        if tensor.elem_type not in FLOAT_TYPES:
            raise LrcertError(f"{file}: input {entry.name!r} is not a floating-point tensor",
                              fix="certify a model whose inputs are all float tensors")
        if None in dims[1:]:
            shown = ", ".join(str(d.dim_value) if d.HasField("dim_value") else d.dim_param or "?" for d in tensor.shape.dim)
            raise LrcertError(f"{file}: input {entry.name!r} has shape ({shown}); joining several inputs needs fixed "
                              "sizes besides a batch axis", fix="re-export the model with static input shapes")
        batched.append(bool(dims) and dims[0] in (None, 1))
        batches.add(dims[0] if dims else None)
        joined.append((entry.name, tuple(dims), tensor.elem_type))
    if all(batched):
        axis, batch = 1, 1 if 1 in batches else None  # (dynamic and 1 together: rows go one at a time, as batch 1)
        joined = [(name, dims[1:], elem_type) for name, dims, elem_type in joined]
    elif any(d is None for _, dims, _ in joined for d in dims):
        names = ", ".join(name for (name, _, _), b in zip(joined, batched) if not b)
        raise LrcertError(f"{file}: some inputs have a batch axis and {names} has none",
                          fix="re-export the model with every input batched (dynamic or 1), or every input of fixed size")
    else:
        axis, batch = 0, None  # no batch axis: each row of DATA is one joint sample
    opset = _opset(model)
    nodes, start = [], 0
    for k, (name, shape, elem_type) in enumerate(joined):
        size = math.prod(shape)
        piece, flat = f"{JOINT_INPUT}_{k}", f"{JOINT_INPUT}_{k}_flat"
        if opset >= 10:
            bounds = {f"{piece}_starts": [start], f"{piece}_ends": [start + size], f"{piece}_axes": [axis]}
            graph.initializer.extend(numpy_helper.from_array(np.array(v, dtype=np.int64), n) for n, v in bounds.items())
            nodes.append(helper.make_node("Slice", [JOINT_INPUT, *bounds], [flat], name=flat))
        else:
            nodes.append(helper.make_node("Slice", [JOINT_INPUT], [flat], name=flat, starts=[start], ends=[start + size], axes=[axis]))
        target = [-1, *shape] if axis else list(shape)
        graph.initializer.append(numpy_helper.from_array(np.array(target, dtype=np.int64), f"{piece}_shape"))
        reshaped = name if elem_type == TensorProto.FLOAT else piece
        nodes.append(helper.make_node("Reshape", [flat, f"{piece}_shape"], [reshaped], name=piece))
        if elem_type != TensorProto.FLOAT:
            nodes.append(helper.make_node("Cast", [piece], [name], name=f"{piece}_cast", to=elem_type))
        start += size
    layout = [start] if axis == 0 else ["N" if batch is None else 1, start]
    joint = helper.make_tensor_value_info(JOINT_INPUT, TensorProto.FLOAT, layout)
    weights = [i for i in graph.input if i.name not in {entry.name for entry in inputs}]
    del graph.input[:]
    graph.input.extend([joint, *weights])
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *rest])
    return tuple((name, shape) for name, shape, _ in joined)


def _choose_output(graph, name: str | None, file: str) -> str | None:
    """Keep one graph output, ``name`` (default: the first), as the one predictions are read
    from; the nodes that compute only the others stay in the graph, so their faces still bound
    the region. Returns the note that says so, None for a single output."""
    names = [o.name for o in graph.output]
    if name is not None and name not in names:
        raise LrcertError(f"{file} has no output {name!r} (its outputs: {', '.join(names)})",
                          fix="give one of those to --output-name")
    if len(names) == 1:
        return None
    chosen = name if name is not None else names[0]
    kept = [o for o in graph.output if o.name == chosen]
    del graph.output[:]
    graph.output.extend(kept)
    return (f"the model has {len(names)} outputs ({', '.join(names)}): the regions are the whole graph's; "
            f"predictions and prediction radii read {chosen!r}" + ("" if name else " (the first; --output-name picks another)"))


def _sort_nodes(graph) -> int:
    """Put the graph's nodes in topological order (each after the producers of its inputs),
    keeping the file's order where it already is one; returns how many nodes came too early.
    A node whose inputs never become available (a cycle, a missing tensor) stays at the end for
    the checker to name."""
    available = {t.name for t in graph.input} | {t.name for t in graph.initializer} | {""}
    produced = set(available)
    pending, ordered, early = list(graph.node), [], 0
    for node in graph.node:
        early += any(name not in produced for name in node.input)
        produced.update(node.output)
    if not early:
        return 0
    waiting = [0] * len(pending)  # per node: how many of its inputs no node before it has produced yet
    readers: dict[str, list[int]] = {}
    for k, node in enumerate(pending):
        for name in set(node.input) - available:
            readers.setdefault(name, []).append(k)
            waiting[k] += 1
    ready = [k for k, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    while ready:  # Kahn's algorithm, the earliest ready node first: the file's order where it is one
        k = heapq.heappop(ready)
        ordered.append(pending[k])
        for name in pending[k].output:
            for reader in readers.pop(name, []):
                waiting[reader] -= 1
                if waiting[reader] == 0:
                    heapq.heappush(ready, reader)
    placed = {id(node) for node in ordered}
    pending = [node for node in pending if id(node) not in placed]
    nodes = ordered + pending
    del graph.node[:]
    graph.node.extend(nodes)
    return early


def _input_layout(dims: list[int | None], sample_shape: Sequence[int] | None, name: str) -> tuple[int | None, tuple[int, ...]]:
    """How data rows map onto a model input of dimensions ``dims`` (None: dynamic): the batch the
    model's first axis holds (None: no batch axis; 0: a dynamic one) and the shape of one row.

    A first axis of size B > 1 is a fixed batch, unless the data's rows (``sample_shape``) have
    the input's whole shape: each row is then one whole model call.
    """
    if dims and dims[0] is None:
        batch, declared = 0, dims[1:]
    elif dims and (dims[0] == 1 or (len(dims) >= 2 and tuple(dims) != tuple(sample_shape or ()))):
        batch, declared = dims[0], dims[1:]
    else:
        batch, declared = None, dims
    if any(d is None for d in declared):
        if sample_shape is None or len(sample_shape) != len(declared):
            shown = ["?" if d is None else d for d in declared]
            raise LrcertError(
                f"{name} has dynamic input dimensions {shown}",
                fix="pass data (its rows fix the shape) or --input-shape with concrete sizes",
            )
        declared = [s if d is None else d for d, s in zip(declared, sample_shape)]
    return batch, tuple(declared)


def _network(module: torch.nn.Module, batch: int | None, sample_shape: tuple[int, ...], name: str,
             op_types: dict[str, str] | None = None) -> ir.Network:
    """The layer list of a model taking batches of ``batch`` rows (None: one row, no batch axis);
    ``op_types`` names what each ONNX node computes (by node name), for refusals."""
    if batch is None or batch <= 1:
        return to_network(module, sample_shape, batch_axis=batch is not None, source=name, op_types=op_types)
    return _fixed_batch_network(module, batch, sample_shape, name, op_types)


def _fixed_batch_network(module: torch.nn.Module, batch: int, sample_shape: tuple[int, ...], name: str,
                         op_types: dict[str, str] | None) -> ir.Network:
    """A model whose input fixes its batch to B > 1, certified one row at a time.

    Its rows are independent when rolling the B input rows rolls the output along one axis of size
    B (the output's batch axis: first, or moved, as exporters do for RNNs and transposes). Such a
    model is traced at batch 1 when that computes the same rows (checked on B random rows, row by
    row), and lrcert batches as it likes; otherwise (the graph bakes B into its constants) each row
    runs as the first of a batch of B whose other rows are zeros: B× the work, and the zero rows'
    units, constant, are no faces. A model whose rows interact takes its whole input as one row.
    """
    dtype = next((t.dtype for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()), torch.float32)
    rows = torch.rand(batch, *sample_shape, generator=torch.Generator(device="cpu").manual_seed(1), device="cpu", dtype=dtype)
    with torch.no_grad():
        out = module(rows)
    axis = _output_batch_axis(module, rows, out)
    if axis is None:  # not a batch after all: the first axis belongs to each input
        return to_network(module, (batch, *sample_shape), batch_axis=False, source=name, op_types=op_types)
    moved = "" if axis == 0 else f" (its output holds the batch on axis {axis})"
    expected = out.movedim(axis, 0).double().reshape(batch, -1)
    try:
        network = to_network(module, sample_shape, source=name, op_types=op_types)
        with torch.no_grad():
            got = network.run(rows.double()).reshape(batch, -1)
        if got.shape == expected.shape and _same_values(got, expected):
            note = (f"the model's input fixes its batch to {batch}{moved}; it computes each row on its own, "
                    "so lrcert certifies rows in batches of any size")
            return replace(network, notes=(*network.notes, note))
    except LrcertError:
        pass
    network = to_network(_FirstRowOfBatch(module, batch, axis), sample_shape, source=name, named=module, op_types=op_types)
    note = (f"the model's input fixes its batch to {batch}{moved} (its graph bakes it in): each input runs as the "
            f"first row of a batch of {batch} zero-padded rows, {batch}× the work of one row")
    return replace(network, notes=(*network.notes, note), rows_per_call=batch)


def _output_batch_axis(module: torch.nn.Module, rows: torch.Tensor, out) -> int | None:
    """The axis of ``module``'s output ``out`` (on ``rows``) that holds its B input rows, one output
    row each: the first axis of size B along which the output of the rows rolled by one is ``out``
    rolled by one (None where no axis is, or the output is not one tensor)."""
    with torch.no_grad():
        rolled = module(rows.roll(1, dims=0))
    if not isinstance(out, torch.Tensor) or not isinstance(rolled, torch.Tensor) or out.shape != rolled.shape:
        return None
    for axis, size in enumerate(out.shape):
        if size == rows.shape[0] and _same_values(rolled, out.roll(1, dims=axis)):
            return axis
    return None


def _same_values(got: torch.Tensor, expected: torch.Tensor) -> bool:
    """The model's own outputs agree, up to its dtype's rounding (relative 10⁻⁴, absolute 10⁻⁵ of
    the largest expected magnitude)."""
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    return torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * (scale + 1e-6))


class _FirstRowOfBatch(torch.nn.Module):
    """``model(pad(x))`` at index 0 of its output's batch axis (kept, of size 1): one row padded
    with zero rows to the batch the model requires."""

    def __init__(self, model: torch.nn.Module, batch: int, axis: int):
        super().__init__()
        self.model, self.batch, self.axis = model, batch, axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.nn.functional.pad(x, [0, 0] * (x.dim() - 1) + [0, self.batch - 1])).narrow(self.axis, 0, 1)


def _read_onnx(path: Path) -> tuple[object, list[str]]:
    """The ONNX model at ``path`` with its external weights loaded, and those weights' files."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise LrcertError(
            f"{path.name} is not a readable ONNX model ({type(exc).__name__}: the file is truncated, corrupted or "
            "not ONNX)",
            fix="re-export or re-download the model",
        ) from None
    if not model.graph.node or not model.graph.input:
        raise LrcertError(
            f"{path.name} holds no ONNX graph (no nodes or no inputs; truncated, corrupted or not ONNX)",
            fix="re-export or re-download the model",
        )
    newest = onnx.defs.onnx_opset_version()
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > newest:
            raise LrcertError(
                f"{path.name} uses ONNX opset {opset.version}, newer than the newest this onnx package knows ({newest})",
                fix=f"export the model with opset {newest} or older, or upgrade onnx and onnx2torch",
            )
    base = path.resolve().parent
    external = set()
    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            target = (base / location).resolve()
            if os.path.isabs(location) or base not in target.parents:
                raise LrcertError(
                    f"{path.name} points its weights {tensor.name!r} at {location!r}, outside the model's folder",
                    fix="keep external weight files beside the model (lrcert refuses other locations for safety)",
                )
            if not target.is_file():
                raise LrcertError(
                    f"{path.name} keeps weights {tensor.name!r} in {location!r}, which is missing",
                    fix="put that file beside the model",
                )
            external.add(location)
    try:
        load_external_data_for_model(model, str(base))
    except Exception as exc:
        raise LrcertError(f"{path.name} is not a valid ONNX model: {first_line(exc)}", fix="re-export the model") from None
    return model, sorted(external)


def _list_initializers_as_inputs(model) -> int:
    """ONNX IR versions before 4 list every initializer among the graph's inputs (a default value
    for it); some exporters of the time left weights out. List those, in place, so the file meets
    its own version's rules (lrcert reads listed weights as constants); how many it listed."""
    if model.ir_version >= 4:
        return 0
    from onnx import helper

    listed = {i.name for i in model.graph.input}
    missing = [t for t in model.graph.initializer if t.name not in listed]
    model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in missing)
    return len(missing)


def _check_onnx(model, path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise LrcertError(f"{path.name} is not a valid ONNX model: {first_line(exc)}", fix="re-export the model") from None


#: ONNX element types of floating-point tensors: float, float16, double, bfloat16.
FLOAT_TYPES = (1, 10, 11, 16)


def _graph_inputs(graph) -> list:
    """The graph's inputs that are not weights (old exporters list their weights among the inputs)."""
    constants = {t.name for t in graph.initializer} | {t.name for t in graph.sparse_initializer}
    return [i for i in graph.input if i.name not in constants]


def _dims(tensor_type) -> list[int | None]:
    """A tensor's dimensions, None where they are dynamic."""
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim]


def _inspect_onnx_graph(model) -> tuple[list[str], list[int | None]]:
    """Decide piecewise-linearity on the ONNX graph: which nodes read input-dependent tensors, how."""
    graph = model.graph
    inputs = _graph_inputs(graph)
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise LrcertError(
            f"the model has {len(inputs)} inputs ({names})", fix="certify a model with exactly one input tensor"
        )
    entry = inputs[0]
    tensor_type = entry.type.tensor_type
    if tensor_type.elem_type not in FLOAT_TYPES:
        raise LrcertError(
            f"the model's input {entry.name!r} is not a floating-point tensor", fix="certify a model with a float input"
        )
    dims = _dims(tensor_type)
    outputs = {o.name for o in graph.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1

    dependent = {entry.name}
    problems = []
    for k, node in enumerate(graph.node):
        reads = [i for i, name in enumerate(node.input) if name in dependent]
        if not reads:
            continue
        label = f"{node.name or f'node #{k}'!r} ({node.op_type})"
        op = node.op_type
        if op in ONNX_SHAPE_ONLY:
            continue
        dependent.update(o for o in node.output if o)
        if op in ONNX_LINEAR:
            bad = [i for i in reads if i in ONNX_LINEAR[op]]
            if bad:
                problems.append(f"{label} takes an input-dependent operand {bad[0]}, which must be constant")
            elif op == "Dropout" and len(node.input) > 2 and node.input[2] and _constant(graph, node.input[2]) is not False:
                problems.append(f"{label} is dropout in training mode (random masks; export the model in eval mode)")
        elif op in ONNX_PRODUCTS:
            if len([i for i in reads if i in ONNX_PRODUCTS[op]]) > 1:
                problems.append(f"{label} multiplies two input-dependent tensors")
        elif op in recurrent.ONNX_RECURRENT:
            bad = [i for i in reads if i in recurrent.ONNX_RECURRENT[op]]
            problem = recurrent.onnx_problem(op, _attribute(node, "activations", []))
            if problem is None and bad:
                problem = f"takes an input-dependent operand {bad[0]}, which must be constant"
            if problem is not None:
                problems.append(f"{label} {problem}")
        elif op in ONNX_FINAL_ONLY and all(o in outputs and consumers.get(o, 0) == 0 for o in node.output):
            continue
        elif op in ONNX_SMOOTH:
            problems.append(f"{label} is not piecewise linear")
        else:
            problems.append(f"{label} is an operation lrcert does not support")
    return problems, dims


def _constant(graph, name: str):
    """The value of a graph constant (an initializer or a Constant node's output) as a Python
    scalar or list; None when ``name`` is not a constant."""
    from onnx import numpy_helper

    for tensor in graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor).tolist()
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name and node.attribute and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t).tolist()
    return None


def _explicit_padding(model, path: Path):
    """Rewrite what onnx2torch gets wrong or lacks about padding, on a copy of the model.

    ``auto_pad=SAME_UPPER/SAME_LOWER`` (common in Keras exports) becomes explicit pads, computed
    from the shapes ONNX shape inference gives; a max-pool's asymmetric pads become a Pad node
    filling -inf before it (onnx2torch would pad with 0, which can add faces that do not exist).
    """
    import onnx
    from onnx import helper

    pooled = ("Conv", "MaxPool", "AveragePool")
    nodes = [n for n in model.graph.node if n.op_type in pooled]
    if not any(_attribute(n, "auto_pad", b"NOTSET") in (b"SAME_UPPER", b"SAME_LOWER") or _asymmetric_max_pool(n) for n in nodes):
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {
        info.name: [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]
        for info in (*inferred.graph.value_info, *inferred.graph.input)
    }
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    rewritten = []
    for node in model.graph.node:
        mode = _attribute(node, "auto_pad", b"NOTSET")
        if node.op_type in pooled and mode in (b"SAME_UPPER", b"SAME_LOWER"):
            spatial = (shapes.get(node.input[0]) or [None])[2:]
            kernel = _attribute(node, "kernel_shape", None) or weights.get(node.input[1], [None, None])[2:]
            if not spatial or None in spatial or not kernel:
                raise LrcertError(
                    f"{path.name}: node {node.name!r} uses auto_pad={mode.decode()} on an input of unknown size",
                    fix="export the model with explicit pads or a static input shape",
                )
            strides = _attribute(node, "strides", None) or [1] * len(spatial)
            dilations = _attribute(node, "dilations", None) or [1] * len(spatial)
            begin, end = [], []
            for size, k, s, d in zip(spatial, kernel, strides, dilations):
                total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
                small, large = total // 2, total - total // 2
                begin.append(small if mode == b"SAME_UPPER" else large)
                end.append(large if mode == b"SAME_UPPER" else small)
            _set_attribute(node, "auto_pad", b"NOTSET")
            _set_attribute(node, "pads", begin + end)
        if _asymmetric_max_pool(node):
            pads = list(_attribute(node, "pads", None))
            half = len(pads) // 2
            padded = f"{node.input[0]}__lrcert_padded"
            value = f"{node.input[0]}__lrcert_fill"
            amounts = f"{node.input[0]}__lrcert_pads"
            model.graph.initializer.extend([
                onnx.numpy_helper.from_array(np.array([0, 0, *pads[:half], 0, 0, *pads[half:]], dtype=np.int64), amounts),
                onnx.numpy_helper.from_array(np.array(-np.inf, dtype=np.float32), value),
            ])
            rewritten.append(helper.make_node("Pad", [node.input[0], amounts, value], [padded], name=f"{node.name}/pad"))
            node.input[0] = padded
            _set_attribute(node, "pads", [0] * len(pads))
        rewritten.append(node)
    del model.graph.node[:]
    model.graph.node.extend(rewritten)
    return model


def _asymmetric_max_pool(node) -> bool:
    pads = _attribute(node, "pads", None)
    return node.op_type == "MaxPool" and pads is not None and list(pads[: len(pads) // 2]) != list(pads[len(pads) // 2 :])


def _attribute(node, name: str, default):
    import onnx

    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _set_attribute(node, name: str, value) -> None:
    import onnx

    for attribute in list(node.attribute):
        if attribute.name == name:
            node.attribute.remove(attribute)
    node.attribute.append(onnx.helper.make_attribute(name, value))


def _onnx_to_torch(model, path: Path) -> tuple[torch.fx.GraphModule, object]:
    """onnx2torch, with converters for the op versions it lacks (``onnx_ops``), after ONNX's version
    converter has lifted what onnx2torch cannot read as it is: old opsets (to 17; onnx2torch lacks
    some old op versions) and, before opset 19, Reshape with ``allowzero=1`` (to 19, whose Reshape
    lrcert converts). Nodes no converter can take are named, each with its op version. Returns
    the module and the model it was converted from (after the version converter)."""
    from onnx import version_converter

    from . import onnx_ops

    onnx_ops.register()  # (first: it imports onnx2torch without torchvision)
    from onnx2torch import convert
    opset = _opset(model)
    target = None
    if opset < 19 and any(n.op_type == "Reshape" and _attribute(n, "allowzero", 0) == 1 for n in model.graph.node):
        target = 19
    elif onnx_ops.missing(model) and opset < OLD_OPSET_TARGET:
        target = OLD_OPSET_TARGET
    if target is not None:
        try:
            model = version_converter.convert_version(model, target)
        except Exception as exc:
            raise LrcertError(
                f"{path.name}: ONNX's version converter cannot bring opset {opset} to {target} ({first_line(exc)}), "
                "which onnx2torch needs",
                fix=f"re-export the model with opset {max(target, 19)} or newer",
            ) from None
    problems = onnx_ops.missing(model)
    if problems:
        raise LrcertError(
            f"{path.name} uses operations lrcert cannot convert: " + "; ".join(problems),
            fix="re-export the model without them (lrcert inspect MODEL lists them)",
            details=problems,
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return onnx_ops.traceable(convert(model)), model
    except Exception as exc:
        raise LrcertError(
            f"onnx2torch cannot convert {path.name}: {first_line(exc)}",
            fix="re-export the model without that construct, or with another opset",
        ) from None


def _opset(model) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=1)


# ---------------------------------------------------------------------------------------------- torch files


Build = Callable[[tuple[int, ...] | None], ir.Network]


def _open_torch_archive(path: Path, trust_pickle: bool) -> Build:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any(n.endswith("archive_format") for n in names):
        return _open_exported(path)
    if any("/code/" in n for n in names):
        return _open_torchscript(path, trust_pickle)
    return _open_pickle(path, trust_pickle)


def _open_exported(path: Path) -> Build:
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise LrcertError(f"cannot load exported program {path.name}: {first_line(exc)}", fix="re-export it") from None
    user_inputs = set(program.graph_signature.user_inputs)
    shapes = [n.meta["val"].shape for n in program.graph.nodes if n.op == "placeholder" and n.name in user_inputs]
    if len(shapes) != 1:
        raise LrcertError(f"{path.name} takes {len(shapes)} inputs", fix="certify a program with exactly one input")
    dims = [d if isinstance(d, int) else None for d in shapes[0]]

    def build(sample_shape):
        batch, declared = _input_layout(dims, sample_shape, path.name)
        return _network(program.module(), batch, declared, path.name)

    return build


def _open_torchscript(path: Path, trust_pickle: bool) -> Build:
    if not trust_pickle:
        raise LrcertError(
            f"{path.name} is a TorchScript file: loading it runs the TorchScript code stored in it",
            fix="pass --trust-pickle if you trust its source, or export the model to ONNX or torch.export (.pt2)",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise LrcertError(f"cannot load TorchScript file {path.name}: {first_line(exc)}", fix="re-save it") from None
    return _shaped(module, f"TorchScript file {path.name}", "pass data (its rows give the shape) or --input-shape", path.name)


def _shaped(module: torch.nn.Module, what: str, fix: str, source: str) -> Build:
    """The layer list of a module that does not record its input shape, for the shape asked."""

    def build(sample_shape):
        if sample_shape is None:
            raise LrcertError(f"{what} does not record its input shape", fix=fix)
        return to_network(module, tuple(sample_shape), source=source)

    return build


def _open_pickle(path: Path, trust_pickle: bool) -> Build:
    try:
        torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # holds more than tensors: a pickled object, so unpickling would run code
    except Exception as exc:
        raise LrcertError(
            f"{path.name} is not a model file lrcert can read ({first_line(exc)})",
            fix="give an ONNX file, a TorchScript file, a torch.export .pt2 program or a pickled nn.Module",
        ) from None
    else:
        raise LrcertError(
            f"{path.name} holds only weights (a state_dict), not a model",
            fix="build the model in Python and call lrcert.certify(model, data), or export it to ONNX",
        )
    if not trust_pickle:
        raise LrcertError(
            f"{path.name} is a pickled model; loading it runs code stored in the file",
            fix="pass --trust-pickle if you trust its source, or export the model to ONNX or torch.export",
        )
    try:
        module = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise LrcertError(
            f"cannot unpickle {path.name}: {type(exc).__name__}: {first_line(exc)}",
            fix="run lrcert where the model's class can be imported (add its module to PYTHONPATH)",
        ) from None
    if not isinstance(module, torch.nn.Module):
        raise LrcertError(f"expected a torch.nn.Module, got {type(module).__name__}", fix="pass the model object itself")
    return _shaped(module, f"pickled model {path.name}", "pass data or --input-shape", path.name)
