"""ONNX op versions onnx2torch lacks, added through onnx2torch's own converter registry.

PyTorch's default exporter (dynamo) writes opset 18+ graphs, and ONNX gives an op a new version
each time it admits new element types (Reshape-19, -21, -23, …), so onnx2torch, which keys its
converters by exact op version, refuses most of them. :func:`register` adds, for every op lrcert
reads and every newer ONNX version onnx2torch has no converter for:

- onnx2torch's converter of the newest older version, when ONNX's schemas of the two versions
  declare the same inputs, outputs and attributes (only the admitted element types differ); where
  the newer version only adds an attribute or an optional input (AveragePool-19's ``dilations``,
  Pad-18's ``axes``), the older converter still serves every node that leaves it unused, and a
  node that uses it is refused by name;
- lrcert's own converter where the meaning changed: Reshape-19+ honours ``allowzero`` (the
  exporter writes ``allowzero=1`` on every Reshape), ReduceMean-18 reads its axes from an input.

>>> register()
>>> from onnx2torch.node_converters.registry import get_converter
>>> callable(get_converter("Reshape", 21)) and callable(get_converter("ReduceMean", 18))
True
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types

import numpy as np
import onnx
import torch
from onnx import defs
from torch import nn

from . import recurrent

#: The ops of the graphs lrcert reads (see load.py), whose newer versions get converters.
OPS = (
    "Add", "Sub", "Mul", "Div", "Sum", "Neg", "MatMul", "Gemm", "Conv", "ConvTranspose", "BatchNormalization",
    "Relu", "LeakyRelu", "PRelu", "Clip", "Abs", "Max", "Min", "HardSigmoid", "MaxPool", "AveragePool",
    "GlobalAveragePool", "ReduceMean", "ReduceSum", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
    "Slice", "Gather", "Concat", "Expand", "Pad", "Identity", "Dropout", "Cast", "Shape", "Constant",
    "ConstantOfShape", "Softmax", "LogSoftmax", "Split", "Resize", "Upsample", "DepthToSpace", "SpaceToDepth", "Tile",
    "GatherElements", "GatherND", "Where", "Einsum", "RNN", "Equal",
)
#: Attribute values that keep a newer attribute's older meaning (served by the older converter).
NEUTRAL = {
    "dilations": lambda value: all(d == 1 for d in value),
    "antialias": lambda value: value == 0,  # Resize-18: plain interpolation
    "keep_aspect_ratio_policy": lambda value: value in ("stretch", b"stretch"),  # Resize-18: scales as given
}

#: The ONNX RNN versions lrcert converts (RNN-1's ``output_sequence`` attribute: through the version converter).
RNN_VERSIONS = (7, 14, 22)

_registered = False


class _TorchvisionLater(types.ModuleType):
    """A stand-in for ``torchvision`` (or ``torchvision.ops``) while onnx2torch imports: its NMS and
    RoIAlign converters import torchvision, and with it torchvision.models and torch._dynamo (about
    1 s on 2 cores), for ops lrcert never reads. Once onnx2torch is imported the stand-ins leave
    ``sys.modules``, so any later ``import torchvision`` gets the real package, and the stand-ins
    the converters kept hand every attribute on to it."""

    def __getattr__(self, name: str):
        if sys.modules.get(self.__name__) is self:  # (still standing in: nothing to hand on yet)
            raise AttributeError(name)
        return getattr(importlib.import_module(self.__name__), name)


def _roi_align(*args, **kwargs):
    """torchvision.ops.roi_align, imported when first called."""
    return importlib.import_module("torchvision.ops").roi_align(*args, **kwargs)


def import_onnx2torch() -> None:
    """Import onnx2torch without importing torchvision (see :class:`_TorchvisionLater`)."""
    if "onnx2torch" in sys.modules or "torchvision" in sys.modules:
        return
    stand_ins = {"torchvision": _TorchvisionLater("torchvision"), "torchvision.ops": _TorchvisionLater("torchvision.ops")}
    stand_ins["torchvision.ops"].roi_align = _roi_align
    sys.modules.update(stand_ins)
    try:
        importlib.import_module("onnx2torch")
    finally:
        for name, stand_in in stand_ins.items():
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]


def register() -> None:
    """Add the missing converters to onnx2torch's registry (once per process)."""
    global _registered
    if _registered:
        return
    import_onnx2torch()
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription, add_converter

    for op, versions in (("DepthToSpace", (1, 11, 13)), ("SpaceToDepth", (1, 13))):  # onnx2torch: CRD only, or none
        for version in versions:
            _CONVERTER_REGISTRY[OperationDescription(defs.ONNX_DOMAIN, op, version)] = _block_rearrange
    for version in RNN_VERSIONS:  # onnx2torch has none: lrcert's unrolled RNN (lrcert.models.recurrent)
        _CONVERTER_REGISTRY[OperationDescription(defs.ONNX_DOMAIN, "RNN", version)] = recurrent.onnx_rnn_converter
    for op in ("ReduceMax", "ReduceMin"):  # onnx2torch: one axis after another, and none from opset 18
        for version in (1, 11, 12, 13, 18, 20):
            _CONVERTER_REGISTRY[OperationDescription(defs.ONNX_DOMAIN, op, version)] = _reduce_extreme
    for description in [d for d in _CONVERTER_REGISTRY if d.operation_type == "Flatten"]:  # axis=0: onnx2torch gives 1-D
        _CONVERTER_REGISTRY[description] = _flatten(_CONVERTER_REGISTRY[description])
    known = {(d.operation_type, d.version) for d in _CONVERTER_REGISTRY if d.domain == defs.ONNX_DOMAIN}
    for op, version in _newer_versions(known):
        if op == "Reshape":
            add_converter(op, version)(_reshape)
        elif op == "ReduceMean" and version == 18:
            add_converter(op, version)(_reduce_mean_18)
        else:
            older = max(v for o, v in known if o == op and v < version)
            added = _additions(op, older, version)
            if added is not None:
                converter = _CONVERTER_REGISTRY[OperationDescription(defs.ONNX_DOMAIN, op, older)]
                add_converter(op, version)(_unless_used(converter, op, version, added))
    _index_slices_by_tuple()
    _registered = True


def _index_slices_by_tuple() -> None:
    """onnx2torch's Slice indexes with a list of slices, which PyTorch warns of on every call (a
    deprecated form): the same indexing with a tuple, quiet."""
    from onnx2torch.node_converters import slice as onnx2torch_slice

    def _do_slice(x, flip_dims, pos_axes_slices, neg_axes_slices):
        x = torch.flip(x, dims=flip_dims) if flip_dims else x
        x = x[tuple(pos_axes_slices)] if pos_axes_slices else x
        return x[tuple(neg_axes_slices)] if neg_axes_slices else x

    onnx2torch_slice._do_slice = _do_slice


def _newer_versions(known: set[tuple[str, int]]) -> list[tuple[str, int]]:
    """(op, version) for every ONNX version of OPS above onnx2torch's newest one for that op."""
    newer = []
    for op in OPS:
        have = [v for o, v in known if o == op]
        if not have:
            continue
        versions = {defs.get_schema(op, opset).since_version for opset in range(1, defs.onnx_opset_version() + 1)
                    if _exists(op, opset)}
        newer += [(op, v) for v in sorted(versions) if v > max(have)]
    return newer


def _exists(op: str, opset: int) -> bool:
    try:
        defs.get_schema(op, opset)
        return True
    except defs.SchemaError:
        return False


def _additions(op: str, older: int, newer: int) -> tuple[set[str], int] | None:
    """What version ``newer`` of ``op`` adds to version ``older``: (attributes, number of inputs
    the older version takes), or None when it removes or renames something (not served)."""
    old, new = defs.get_schema(op, older), defs.get_schema(op, newer)
    old_inputs, new_inputs = [i.name for i in old.inputs], [i.name for i in new.inputs]
    if new_inputs[: len(old_inputs)] != old_inputs or [o.name for o in new.outputs] != [o.name for o in old.outputs]:
        return None
    if not set(old.attributes) <= set(new.attributes):
        return None
    return set(new.attributes) - set(old.attributes), len(old_inputs)


def _unless_used(converter, op: str, version: int, added: tuple[set[str], int]):
    """The older converter, refusing a node that uses what the newer version added."""
    attributes, inputs = added

    def convert(node, graph):
        used = [a for a in attributes if a in node.attributes and not NEUTRAL.get(a, lambda v: False)(node.attributes[a])]
        used += [f"input {i}" for i, name in enumerate(node.input_values) if i >= inputs and name]
        if used:
            raise NotImplementedError(f"{op}-{version} node {node.name!r} uses {', '.join(used)}, which lrcert does not read")
        return converter(node, graph)

    return convert


# ---------------------------------------------------------------------------------------------- own converters


class LiteralReshape(nn.Module):
    """ONNX Reshape with ``allowzero=1``: a 0 in the shape is a dimension of size 0, not a copy."""

    def forward(self, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        return torch.reshape(x, [int(d) for d in shape.tolist()])


def _converted(node, module: nn.Module):
    """onnx2torch's result for ``node`` computed by ``module`` from the node's own inputs and outputs."""
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


def _reshape(node, graph):
    from onnx2torch.node_converters.reshape import OnnxReshape

    return _converted(node, LiteralReshape() if node.attributes.get("allowzero", 0) == 1 else OnnxReshape())


class BlockRearrange(nn.Module):
    """ONNX DepthToSpace (modes DCR and CRD) and SpaceToDepth, as the ONNX spec writes them:
    one reshape, one transpose, one reshape."""

    def __init__(self, op: str, blocksize: int, mode: str):
        super().__init__()
        self.op, self.blocksize, self.mode = op, blocksize, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        k = self.blocksize
        if self.op == "SpaceToDepth":
            moved = x.reshape(b, c, h // k, k, w // k, k).permute(0, 3, 5, 1, 2, 4)
            return moved.reshape(b, c * k * k, h // k, w // k)
        if self.mode == "DCR":
            moved = x.reshape(b, k, k, c // (k * k), h, w).permute(0, 3, 4, 1, 5, 2)
        else:
            moved = x.reshape(b, c // (k * k), k, k, h, w).permute(0, 1, 4, 2, 5, 3)
        return moved.reshape(b, c // (k * k), h * k, w * k)


def _block_rearrange(node, graph):
    return _converted(node, BlockRearrange(node.operation_type, node.attributes["blocksize"], node.attributes.get("mode", "DCR")))


class FlattenAll(nn.Module):
    """ONNX Flatten with ``axis=0``: every axis into the second, shape (1, n)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(1, -1)


def _flatten(converter):
    """onnx2torch's Flatten ``converter``, but ours for ``axis=0`` (onnx2torch flattens to 1-D)."""

    def convert(node, graph):
        return _converted(node, FlattenAll()) if node.attributes.get("axis", 1) == 0 else converter(node, graph)

    return convert


class StaticMean(nn.Module):
    """Mean over constant axes (ReduceMean-18, whose axes come as an input)."""

    def __init__(self, axes: list[int] | None, keepdims: bool):
        super().__init__()
        self.axes, self.keepdims = axes, keepdims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axes = self.axes if self.axes else list(range(x.dim()))
        return torch.mean(x, dim=axes, keepdim=self.keepdims)


def _reduce_mean_18(node, graph):
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, get_const_value

    axes = None
    if len(node.input_values) > 1 and node.input_values[1]:
        try:
            axes = [int(a) for a in get_const_value(node.input_values[1], graph).tolist()]
        except KeyError:
            raise NotImplementedError("ReduceMean-18 with input-dependent axes is not supported") from None
    if not axes and node.attributes.get("noop_with_empty_axes", 0):
        raise NotImplementedError("ReduceMean-18 with noop_with_empty_axes=1 and no axes is not supported")
    return OperationConverterResult(
        torch_module=StaticMean(axes, bool(node.attributes.get("keepdims", 1))),
        onnx_mapping=OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values),
    )


class StaticExtreme(nn.Module):
    """ReduceMax / ReduceMin over constant axes (all when none), at once: ``torch.amax`` / ``amin``
    (each output the arg-max of its whole window, not a max of maxes)."""

    def __init__(self, axes: list[int] | None, keepdims: bool, minimum: bool):
        super().__init__()
        self.axes, self.keepdims, self.minimum = axes, keepdims, minimum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduce = torch.amin if self.minimum else torch.amax
        return reduce(x, dim=self.axes or list(range(x.dim())), keepdim=self.keepdims)


def _reduce_extreme(node, graph):
    """ReduceMax / ReduceMin of any version: axes from the attribute or (opset 18+) a constant input."""
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, get_const_value

    axes = node.attributes.get("axes")
    if len(node.input_values) > 1 and node.input_values[1]:
        try:
            axes = [int(a) for a in get_const_value(node.input_values[1], graph).tolist()]
        except KeyError:
            raise NotImplementedError(f"{node.operation_type} with input-dependent axes is not supported") from None
    if not axes and node.attributes.get("noop_with_empty_axes", 0):
        raise NotImplementedError(f"{node.operation_type} with noop_with_empty_axes=1 and no axes is not supported")
    module = StaticExtreme(list(axes) if axes else None, bool(node.attributes.get("keepdims", 1)),
                           node.operation_type == "ReduceMin")
    return OperationConverterResult(torch_module=module,
                                    onnx_mapping=OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values))


# ---------------------------------------------------------------------------------------------- module swaps


class PairwiseMax(nn.Module):
    """ONNX Max/Min of any number of tensors, as pairwise ``torch.maximum``/``minimum`` (onnx2torch
    stacks them and reduces over the stack, which the tracer cannot read as faces)."""

    def __init__(self, minimum: bool):
        super().__init__()
        self.minimum = minimum

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = torch.minimum(out, x) if self.minimum else torch.maximum(out, x)
        return out


class BroadcastPReLU(nn.Module):
    """ONNX PRelu, its slope broadcast from the right as ONNX has it: ``F.prelu`` when the slope is
    one number or varies along axis 1 only, else relu(x) + slope·(x − relu(x)), the same function
    (one term is exactly 0). onnx2torch's module falls back on a masked assignment instead."""

    def forward(self, x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
        aligned = slope.reshape((1,) * (x.dim() - slope.dim()) + tuple(slope.shape))
        if slope.numel() == 1 or (
            x.dim() > 1 and aligned.shape[1] == x.shape[1] and all(d == 1 for k, d in enumerate(aligned.shape) if k != 1)
        ):
            return torch.nn.functional.prelu(x, slope.reshape(-1))
        positive = torch.relu(x)
        return positive + slope * (x - positive)


def traceable(module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """onnx2torch's module with its Max/Min and PRelu modules swapped for the equivalent ones above."""
    from onnx2torch.node_converters.activations import OnnxPReLU
    from onnx2torch.node_converters.min_max import OnnxMinMax

    for name, child in list(module.named_modules()):
        if isinstance(child, OnnxMinMax):
            module.set_submodule(name, PairwiseMax(minimum=child._operator is torch.amin))
        elif isinstance(child, OnnxPReLU):
            module.set_submodule(name, BroadcastPReLU())
    return module


def versions(ops) -> dict[str, list[int]]:
    """For each op, the ONNX versions lrcert reads directly (onnx2torch's converters and those
    :func:`register` adds); older opsets are first converted by ONNX's version converter."""
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY

    register()
    return {op: sorted(d.version for d in _CONVERTER_REGISTRY if d.domain == defs.ONNX_DOMAIN and d.operation_type == op)
            for op in ops}


def missing(model: onnx.ModelProto) -> list[str]:
    """Nodes onnx2torch (with the converters above) cannot convert, as "'name' (Op-version)"."""
    from onnx2torch.node_converters.registry import get_converter

    register()
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=1)
    problems = []
    for k, node in enumerate(model.graph.node):
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{node.name or f'node #{k}'!r} ({node.domain}.{node.op_type}): custom-domain op")
            continue
        try:
            get_converter(node.op_type, opset)
        except NotImplementedError:
            version = defs.get_schema(node.op_type, opset).since_version if _exists(node.op_type, opset) else opset
            problems.append(f"{node.name or f'node #{k}'!r} ({node.op_type}-{version}): onnx2torch has no converter for it")
    return problems


def op_types(model: onnx.ModelProto) -> dict[str, str]:
    """Each node's op type by the name onnx2torch gives its module (for refusals that name it)."""
    from onnx2torch.onnx_graph import OnnxGraph

    return {name: node.operation_type for name, node in OnnxGraph(model.graph).nodes.items()}


def resize_problems(model: onnx.ModelProto, module: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """The Resize nodes whose onnx2torch module computes otherwise than ONNX says, as one line each.

    onnx2torch maps Resize onto ``F.interpolate`` and only warns where that differs (a nearest mode
    or coordinate transformation PyTorch lacks, ``cubic_coeff_a`` ≠ −0.75, ``exclude_outside``).
    So the graph runs once on a random input of ``input_shape``, and each Resize module, given a
    random tensor of the shape it meets there and the scales or sizes it is given, is compared with
    ONNX's reference implementation (``onnx.reference``) of its node."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator
    from onnx2torch.onnx_graph import OnnxGraph

    nodes = {name: node.proto for name, node in OnnxGraph(model.graph).nodes.items() if node.operation_type == "Resize"}
    if not nodes:
        return []
    opsets = list(model.opset_import)
    problems: list[str] = []

    def check(name: str, node: onnx.NodeProto):
        def hook(resize, args, kwargs, output):
            signature = inspect.signature(resize.forward)  # (its parameters: the ONNX inputs, in order)
            bound = signature.bind(*args, **kwargs).arguments
            args = [bound.get(p) for p in signature.parameters]
            args[0] = torch.randn(args[0].shape, generator=generator, dtype=args[0].dtype)  # (every entry random: none hidden)
            output = resize.forward(*args)
            feeds = {f"in{i}": a.detach().cpu().numpy() for i, a in enumerate(args) if a is not None}
            inputs = [f"in{i}" if a is not None else "" for i, a in enumerate(args)]
            single = helper.make_node(node.op_type, inputs, ["out"], domain=node.domain, **{
                a.name: helper.get_attribute_value(a) for a in node.attribute})
            declared = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in feeds.items()]
            graph = helper.make_graph([single], "resize", declared, [helper.make_empty_tensor_value_info("out")])
            expected = ReferenceEvaluator(helper.make_model(graph, opset_imports=opsets)).run(None, feeds)[0]
            got = output.detach().cpu().numpy()
            scale = float(np.abs(expected).max(initial=0.0)) + 1e-12
            if expected.shape != got.shape or not np.allclose(got, expected, rtol=1e-4, atol=1e-5 * scale):
                settings = ", ".join(f"{a.name}={_shown(helper.get_attribute_value(a))}" for a in node.attribute)
                differs = ("output shape " + "×".join(map(str, got.shape)) + " instead of " + "×".join(map(str, expected.shape))
                           if expected.shape != got.shape else f"values up to {np.abs(got - expected).max():.3g} off")
                problems.append(f"{node.name or name!r} (Resize{', ' + settings if settings else ''}): PyTorch's interpolation, "
                                f"which lrcert reads it as, computes it otherwise than ONNX ({differs})")
        return hook

    generator = torch.Generator(device="cpu").manual_seed(3)
    modules = dict(module.named_modules())
    hooks = [modules[name].register_forward_hook(check(name, node), with_kwargs=True) for name, node in nodes.items() if name in modules]
    try:
        dtype = next((t.dtype for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()), torch.float32)
        example = torch.randn(input_shape, generator=torch.Generator(device="cpu").manual_seed(2), dtype=dtype, device="cpu")
        with torch.no_grad():
            module(example)
    finally:
        for hook in hooks:
            hook.remove()
    return problems


def _shown(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
