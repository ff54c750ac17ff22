"""Model files → layer list: ONNX (checked, then converted with onnx2torch), TorchScript,
``torch.export`` programs (``.pt2``), and pickled ``nn.Module`` files (only with consent).

ONNX models are judged on the ONNX graph itself before anything is converted: every node that
reads an input-dependent tensor must be piecewise linear in it, and a product (Mul, MatMul,
Gemm) needs one constant side. All offending nodes are reported at once, by ONNX node name.

>>> import torch
>>> net = from_module(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)), (2, 2))
>>> net.sample_shape, net.output_shape
((2, 2), (2,))
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import ir
from .convert import to_network
from .errors import SUPPORTED_NETWORKS, LrcertError, first_line

#: ONNX ops that are linear in their input-dependent operands. The value lists the operand
#: positions that must be constant (weights, shapes, indices).
ONNX_LINEAR = {
    "Add": (), "Sub": (), "Sum": (), "Concat": (), "Identity": (), "Dropout": (1, 2), "Flatten": (),
    "Reshape": (1,), "Transpose": (), "Squeeze": (1,), "Unsqueeze": (1,), "Pad": (1, 2, 3),
    "AveragePool": (), "GlobalAveragePool": (), "BatchNormalization": (1, 2, 3, 4), "Slice": (1, 2, 3, 4),
    "Gather": (1,), "ReduceMean": (1,), "ReduceSum": (1,), "Expand": (1,), "Neg": (), "Cast": (),
    "Conv": (1, 2), "ConvTranspose": (1, 2), "Div": (1,), "Relu": (), "LeakyRelu": (), "MaxPool": (),
    "Clip": (1, 2),  # only Clip(min=0) without max, a ReLU, gets through the conversion
}
#: Products: linear only when at most one of the listed operands depends on the input.
ONNX_PRODUCTS = {"MatMul": (0, 1), "Mul": (0, 1), "Gemm": (0, 1)}
#: Ops whose output is a constant even when their input depends on the input (shapes are static).
ONNX_SHAPE_ONLY = {"Shape", "Size"}
#: Ops allowed only as the model's last operation: lrcert then certifies the logits before them.
ONNX_FINAL_ONLY = {"Softmax", "LogSoftmax"}
ONNX_SMOOTH = {
    "Sigmoid", "Tanh", "Exp", "Log", "Softplus", "Softsign", "Elu", "Selu", "Celu", "Gelu", "Erf", "Sqrt",
    "Pow", "Reciprocal", "HardSigmoid", "HardSwish", "Mish", "Sin", "Cos", "Softmax", "LogSoftmax",
}
NEWEST_OPSET_TRIED = 17


def load(
    path: str | os.PathLike,
    *,
    trust_pickle: bool = False,
    sample_shape: Sequence[int] | None = None,
) -> ir.Network:
    """Load a model file into a layer list.

    ``sample_shape`` (the shape of one data row) is needed for TorchScript and pickled modules,
    which do not record their input shape, and for ONNX inputs with dynamic dimensions. The layer
    list lives on the CPU (engines move it where they compute): every tensor made while loading,
    by lrcert or by the converters it calls, is made there, whatever the default device.
    """
    with torch.device("cpu"):
        return _load(Path(path), trust_pickle, sample_shape)


def _load(path: Path, trust_pickle: bool, sample_shape: Sequence[int] | None) -> ir.Network:
    if not path.exists():
        raise LrcertError(f"model file {str(path)!r} does not exist", fix="check the path")
    if path.is_dir():
        raise LrcertError(f"model path {str(path)!r} is a folder", fix="give the model file itself")
    try:
        head = path.open("rb").read(4)
    except OSError as exc:
        raise LrcertError(f"cannot read model file {str(path)!r}: {exc.strerror}", fix="check its permissions") from None
    if zipfile.is_zipfile(path):
        return _load_torch_archive(path, trust_pickle, sample_shape)
    if path.suffix.lower() in (".pt", ".pth", ".pkl", ".ckpt", ".bin") or head[:1] == b"\x80":
        return _load_pickle(path, trust_pickle, sample_shape)
    return load_onnx(path, sample_shape=sample_shape)


def from_module(module: torch.nn.Module, sample_shape: Sequence[int], *, source: str = "") -> ir.Network:
    """The layer list of an ``nn.Module`` (or TorchScript module) taking inputs ``(B, *sample_shape)``."""
    if not isinstance(module, torch.nn.Module):
        raise LrcertError(
            f"expected a torch.nn.Module, got {type(module).__name__}", fix="pass the model object itself"
        )
    return to_network(module, tuple(int(d) for d in sample_shape), source=source or type(module).__name__)


# ---------------------------------------------------------------------------------------------- ONNX


def load_onnx(path: str | os.PathLike, *, sample_shape: Sequence[int] | None = None) -> ir.Network:
    path = Path(path)
    model = _read_onnx(path)
    problems, input_name, dims = _inspect_onnx_graph(model)
    if problems:
        raise LrcertError(
            f"{path.name} is not a supported piecewise-linear network: " + "; ".join(problems),
            fix=SUPPORTED_NETWORKS,
            details=problems,
        )
    batch_axis = len(dims) > 0 and (dims[0] is None or dims[0] == 1)
    declared = dims[1:] if batch_axis else dims
    if any(d is None for d in declared):
        if sample_shape is None or len(sample_shape) != len(declared):
            shown = ["?" if d is None else d for d in declared]
            raise LrcertError(
                f"{path.name} has dynamic input dimensions {shown}",
                fix="pass data (its rows fix the shape) or --input-shape with concrete sizes",
            )
        declared = [s if d is None else d for d, s in zip(declared, sample_shape)]
    graph_module = _onnx_to_torch(_explicit_padding(model, path), path)
    return to_network(graph_module, tuple(declared), batch_axis=batch_axis, source=path.name)


def _read_onnx(path: Path):
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
    try:
        load_external_data_for_model(model, str(base))
        onnx.checker.check_model(model)
    except Exception as exc:
        raise LrcertError(f"{path.name} is not a valid ONNX model: {first_line(exc)}", fix="re-export the model") from None
    return model


def _inspect_onnx_graph(model) -> tuple[list[str], str, list[int | None]]:
    """Decide piecewise-linearity on the ONNX graph: which nodes read input-dependent tensors, how."""
    graph = model.graph
    constants = {t.name for t in graph.initializer} | {t.name for t in graph.sparse_initializer}
    inputs = [i for i in graph.input if i.name not in constants]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise LrcertError(
            f"the model has {len(inputs)} inputs ({names})", fix="certify a model with exactly one input tensor"
        )
    entry = inputs[0]
    tensor_type = entry.type.tensor_type
    if tensor_type.elem_type not in (1, 10, 11, 16):  # float, float16, double, bfloat16
        raise LrcertError(
            f"the model's input {entry.name!r} is not a floating-point tensor", fix="certify a model with a float input"
        )
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim]
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
        elif op in ONNX_PRODUCTS:
            if len([i for i in reads if i in ONNX_PRODUCTS[op]]) > 1:
                problems.append(f"{label} multiplies two input-dependent tensors")
        elif op in ONNX_FINAL_ONLY and all(o in outputs and consumers.get(o, 0) == 0 for o in node.output):
            continue
        elif op in ONNX_SMOOTH:
            problems.append(f"{label} is not piecewise linear")
        else:
            problems.append(f"{label} is an operation lrcert does not support")
    return problems, entry.name, dims


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


def _onnx_to_torch(model, path: Path) -> torch.fx.GraphModule:
    """onnx2torch, upgrading the opset first when onnx2torch lacks a converter for an old op version."""
    from onnx import version_converter
    from onnx2torch import convert

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return convert(model)
    except Exception as first:
        opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
        if opset >= NEWEST_OPSET_TRIED:
            raise _conversion_error(path, first) from None
        try:
            upgraded = version_converter.convert_version(model, NEWEST_OPSET_TRIED)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return convert(upgraded)
        except Exception as second:
            raise _conversion_error(path, first, second) from None


def _conversion_error(path: Path, first: Exception, second: Exception | None = None) -> LrcertError:
    detail = first_line(first)
    if second is not None:
        detail += f"; after upgrading to opset {NEWEST_OPSET_TRIED}: {first_line(second)}"
    return LrcertError(
        f"onnx2torch cannot convert {path.name}: {detail}",
        fix="re-export the model without that construct (for an old opset, onnx.version_converter may help)",
    )


# ---------------------------------------------------------------------------------------------- torch files


def _load_torch_archive(path: Path, trust_pickle: bool, sample_shape) -> ir.Network:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any(n.endswith("archive_format") for n in names):
        return _load_exported(path)
    if any("/code/" in n for n in names):
        return _load_torchscript(path, trust_pickle, sample_shape)
    return _load_pickle(path, trust_pickle, sample_shape)


def _load_exported(path: Path) -> ir.Network:
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise LrcertError(f"cannot load exported program {path.name}: {first_line(exc)}", fix="re-export it") from None
    user_inputs = set(program.graph_signature.user_inputs)
    shapes = [n.meta["val"].shape for n in program.graph.nodes if n.op == "placeholder" and n.name in user_inputs]
    if len(shapes) != 1:
        raise LrcertError(f"{path.name} takes {len(shapes)} inputs", fix="certify a program with exactly one input")
    dims = [d if isinstance(d, int) else None for d in shapes[0]]
    batch_axis = len(dims) > 0 and (dims[0] is None or dims[0] == 1)
    declared = dims[1:] if batch_axis else dims
    if any(d is None for d in declared):
        raise LrcertError(f"{path.name} has dynamic input dimensions besides the batch", fix="export with static shapes")
    return to_network(program.module(), tuple(declared), batch_axis=batch_axis, source=path.name)


def _load_torchscript(path: Path, trust_pickle: bool, sample_shape) -> ir.Network:
    if not trust_pickle:
        raise LrcertError(
            f"{path.name} is a TorchScript file: loading it runs the TorchScript code stored in it",
            fix="pass --trust-pickle if you trust its source, or export the model to ONNX or torch.export (.pt2)",
        )
    if sample_shape is None:
        raise LrcertError(
            f"TorchScript file {path.name} does not record its input shape",
            fix="pass data (its rows give the shape) or --input-shape",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise LrcertError(f"cannot load TorchScript file {path.name}: {first_line(exc)}", fix="re-save it") from None
    return to_network(module, tuple(sample_shape), source=path.name)


def _load_pickle(path: Path, trust_pickle: bool, sample_shape) -> ir.Network:
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
    if sample_shape is None:
        raise LrcertError(
            f"pickled model {path.name} does not record its input shape", fix="pass data or --input-shape"
        )
    try:
        module = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise LrcertError(
            f"cannot unpickle {path.name}: {type(exc).__name__}: {first_line(exc)}",
            fix="run lrcert where the model's class can be imported (add its module to PYTHONPATH)",
        ) from None
    return from_module(module, sample_shape, source=path.name)

