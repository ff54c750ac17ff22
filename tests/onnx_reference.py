"""Reference radii of ONNX models, computed in a process that never imports lrcert.

    python tests/onnx_reference.py JOBS.json

JOBS.json lists ``{"model": "m.onnx", "inputs": "x.npy", "out": "radii.json"}``. Each model is
converted by onnx2torch's stock converters (lrcert, once imported, registers its own into the same
registry: a test in lrcert's process would compare lrcert with itself for those ops), with, written
here from the ONNX operator specification, the converters stock onnx2torch lacks or gets wrong:
DepthToSpace in DCR mode, SpaceToDepth, Flatten (always 2-D: axis 0 gives (1, all)), and
Conv/MaxPool with ``auto_pad`` SAME_UPPER/SAME_LOWER (pads computed per the spec at run time; a
max-pool pads with −inf). Upsample-9 goes through ONNX's own version
converter. The radii come from ``reference.py``: forward hooks and torch.autograd's full Jacobian.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import defs
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))


class _DepthToSpace(nn.Module):
    """ONNX DepthToSpace: DCR reshapes to (N, b, b, C/b², H, W), CRD to (N, C/b², b, b, H, W)."""

    def __init__(self, block: int, mode: str):
        super().__init__()
        self.block, self.mode = block, mode

    def forward(self, x):
        n, c, h, w = x.shape
        b = self.block
        if self.mode == "DCR":
            y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
        else:
            y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
        return y.reshape(n, c // (b * b), h * b, w * b)


class _SpaceToDepth(nn.Module):
    """ONNX SpaceToDepth: (N, C, H/b, b, W/b, b) → permute (0, 3, 5, 1, 2, 4) → (N, C·b², H/b, W/b)."""

    def __init__(self, block: int):
        super().__init__()
        self.block = block

    def forward(self, x):
        n, c, h, w = x.shape
        b = self.block
        y = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
        return y.reshape(n, c * b * b, h // b, w // b)


class _Flatten(nn.Module):
    """ONNX Flatten: always 2-D, (prod of the axes before ``axis``, prod of the rest); axis 0 gives (1, all)."""

    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, x):
        axis = self.axis % x.dim() if self.axis < 0 else self.axis
        return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


class _SamePadded(nn.Module):
    """A convolution or max-pool with ``auto_pad`` SAME_*: the spec's total pad per axis,
    max((ceil(in / s) − 1)·s + (k − 1)·d + 1 − in, 0), split with the extra at the end (UPPER) or
    the start (LOWER), padded with 0 (Conv) or −inf (MaxPool) before the unpadded operation."""

    def __init__(self, operation: nn.Module, kernel, strides, dilations, upper: bool, fill: float):
        super().__init__()
        self.operation, self.kernel, self.strides, self.dilations = operation, kernel, strides, dilations
        self.upper, self.fill = upper, fill

    def forward(self, x):
        pads = []
        for axis in reversed(range(len(self.kernel))):
            size, s, k, d = x.shape[2 + axis], self.strides[axis], self.kernel[axis], self.dilations[axis]
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            pads += [small, large] if self.upper else [large, small]
        return self.operation(F.pad(x, pads, value=self.fill))


def _register() -> None:
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, onnx_mapping_from_node

    def result(node, module, first_only: bool = False):
        mapping = OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values) if first_only else \
            onnx_mapping_from_node(node=node)
        return OperationConverterResult(torch_module=module, onnx_mapping=mapping)

    def depth_to_space(node, graph):
        return result(node, _DepthToSpace(node.attributes["blocksize"], node.attributes.get("mode", "DCR")))

    def space_to_depth(node, graph):
        return result(node, _SpaceToDepth(node.attributes["blocksize"]))

    def flatten(node, graph):
        return result(node, _Flatten(node.attributes.get("axis", 1)))

    def same(stock, op_type):
        def convert(node, graph):
            mode = node.attributes.get("auto_pad", "NOTSET")
            if mode not in ("SAME_UPPER", "SAME_LOWER"):
                return stock(node, graph)
            strides = node.attributes.get("strides")
            if op_type == "Conv":
                weight = graph.initializers[node.input_values[1]].to_torch()
                bias = graph.initializers[node.input_values[2]].to_torch() if len(node.input_values) == 3 else None
                kernel = list(weight.shape[2:])
                dilations = node.attributes.get("dilations", [1] * len(kernel))
                strides = strides or [1] * len(kernel)
                operation = nn.Conv2d(weight.shape[1] * node.attributes.get("group", 1), weight.shape[0], kernel, strides, 0,
                                      dilations, node.attributes.get("group", 1), bias is not None)
                with torch.no_grad():
                    operation.weight.copy_(weight)
                    if bias is not None:
                        operation.bias.copy_(bias)
                return result(node, _SamePadded(operation, kernel, strides, dilations, mode == "SAME_UPPER", 0.0), True)
            kernel = node.attributes["kernel_shape"]
            strides = strides or [1] * len(kernel)
            dilations = node.attributes.get("dilations", [1] * len(kernel))
            operation = nn.MaxPool2d(kernel, strides, 0, dilations)  # (a module: reference.py's hooks see its faces)
            return result(node, _SamePadded(operation, kernel, strides, dilations, mode == "SAME_UPPER", -math.inf))

        return convert

    for version in (1, 11, 13):
        _CONVERTER_REGISTRY[OperationDescription(defs.ONNX_DOMAIN, "DepthToSpace", version)] = depth_to_space
        _CONVERTER_REGISTRY[OperationDescription(defs.ONNX_DOMAIN, "SpaceToDepth", version)] = space_to_depth
    for version in (1, 9, 11, 13, 21, 23):
        _CONVERTER_REGISTRY[OperationDescription(defs.ONNX_DOMAIN, "Flatten", version)] = flatten
    for description in [d for d in _CONVERTER_REGISTRY if d.operation_type in ("Conv", "MaxPool")]:
        _CONVERTER_REGISTRY[description] = same(_CONVERTER_REGISTRY[description], description.operation_type)


def radii_of(model_path: str, inputs: np.ndarray) -> list[dict]:
    """Reference radii of each row of ``inputs`` (already in the model's input shape, batch 1 each)."""
    from onnx2torch import convert

    from reference import reference_radii

    model = onnx.load(model_path)
    if any(node.op_type == "Upsample" for node in model.graph.node):
        model = onnx.version_converter.convert_version(model, 17)
    module = convert(model).eval().double()
    out = []
    for row in inputs:
        radii = reference_radii(module, torch.from_numpy(np.asarray(row, dtype=np.float64)))
        out.append({p: (None if math.isinf(v) else v) for p, v in radii.items()})
    return out


def main() -> None:
    _register()
    for job in json.loads(Path(sys.argv[1]).read_text()):
        Path(job["out"]).write_text(json.dumps(radii_of(job["model"], np.load(job["inputs"]))))
    if "lrcert" in sys.modules:
        raise SystemExit("the reference imported lrcert")


if __name__ == "__main__":
    main()
