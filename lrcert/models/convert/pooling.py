"""Converters of pooling and reductions: max-pools and max/min over axes (faces: each window's
winner against its other elements), average pools, means and sums."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from ...network import ir
from .call import Call, Poison, Refused, aten, ntuple


def _amax(minimum: bool):
    """aten.amax / aten.amin: a max (min) over the given axes (every axis when none are given)."""

    def convert(call):
        x, dims = call["self"], call["dim"]
        reduced_max(call, minimum, dims if dims else range(x.dim()))

    return convert


def reduced_max(call: Call, minimum: bool, dims) -> None:
    """A max (min: −max(−x)) over the axes ``dims``: each output is the arg-max of its window of
    entries, a max-pool window (faces z_win − z_l). The reduced axes are moved last and joined into
    one row per output, a (outputs, 1, n) plane pooled with a (1, n) kernel, then shaped as the op's
    output; its arg-max indices are not piecewise linear."""
    x = call["self"]
    dims = sorted({d % max(x.dim(), 1) for d in dims})
    kept = [a for a in range(x.dim()) if a not in dims]
    perm = (*kept, *dims)
    outputs, n = math.prod(x.shape[a] for a in kept), math.prod(x.shape[a] for a in dims)
    index = x if perm == tuple(range(x.dim())) else call.emit(ir.Permute, [x], [x.shape[a] for a in perm], perm=perm)
    index = call.emit(ir.Reshape, [index], (outputs, 1, n))
    negate = torch.tensor(-1.0, dtype=torch.float64, device="cpu")
    if minimum:
        index = call.emit(ir.ElementwiseAffine, [index], (outputs, 1, n), scale=negate)
    index = call.emit(ir.MaxPool2d, [index], (outputs, 1, 1), kernel=(1, n), stride=(1, n))
    if minimum:
        index = call.emit(ir.ElementwiseAffine, [index], (outputs, 1, 1), scale=negate)
    values = call.out[0] if isinstance(call.out, (tuple, list)) else call.out
    call.trace.bind(values, call.emit(ir.Reshape, [index], values.shape))
    if isinstance(call.out, (tuple, list)):
        call.trace.mark(call.out[1], Poison("the arg-max indices of a max over an axis"))


def _max_pool2d(call):
    x = call["self"]
    kernel = ntuple(call["kernel_size"], 2)
    stride = ntuple(call["stride"], 2) if call["stride"] else kernel
    if x.dim() not in (3, 4):
        raise Refused("is a max-pool on a tensor that is not 3-d or 4-d")
    call.result(
        ir.MaxPool2d, [x], kernel=kernel, stride=stride, padding=ntuple(call["padding"], 2),
        dilation=ntuple(call["dilation"], 2), ceil_mode=bool(call["ceil_mode"]),
    )
    if isinstance(call.out, (tuple, list)):
        call.trace.mark(call.out[1], Poison("the arg-max indices of a max-pool"))


def _linear_pool(core_rank: int, names: tuple[str, ...]):
    def convert(call):
        args = tuple(call[n] for n in names)
        call.result(ir.LinearPool, [call["self"]], op=call.func, args=args, core_rank=core_rank)

    return convert


def _reduce(mean: bool):
    def convert(call):
        x = call["self"]
        dims = call["dim"]
        dims = tuple(range(x.dim())) if dims is None or len(dims) == 0 else tuple(d % x.dim() for d in dims)
        call.result(ir.Reduce, [x], mean=mean, axes=dims, keepdim=bool(call["keepdim"]))

    return convert


#: aten op → converter, for the ops of this family.
CONVERTERS: dict[Any, Callable[[Call], None]] = {
    aten.amax: _amax(minimum=False),
    aten.amin: _amax(minimum=True),
    aten.max_pool2d_with_indices: _max_pool2d,
    aten.max_pool2d: _max_pool2d,
    aten.avg_pool1d: _linear_pool(2, ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")),
    aten.avg_pool2d: _linear_pool(3, ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")),
    aten.avg_pool3d: _linear_pool(4, ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")),
    aten._adaptive_avg_pool2d: _linear_pool(3, ("output_size",)),
    aten.adaptive_avg_pool1d: _linear_pool(2, ("output_size",)),
    aten._adaptive_avg_pool3d: _linear_pool(4, ("output_size",)),
    aten.mean: _reduce(mean=True),
    aten.sum: _reduce(mean=False),
}
