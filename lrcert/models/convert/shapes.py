"""Converters of the operations that move, copy or select entries: padding, reshapes,
permutations, slices, indexing, joins and splits, resizing, identities and dtype casts."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ...network import ir
from .call import Call, Refused, aten, constant, emit_dense


def _constant_pad(call):
    call.result(ir.Pad, [call["self"]], pads=tuple(call["pad"]), mode="constant", value=float(call["value"] or 0))


def _pad_mode(mode: str):
    def convert(call):
        call.result(ir.Pad, [call["self"]], pads=tuple(call["padding"]), mode=mode)

    return convert


def _reshape(call):
    x = call["self"]
    out = call.out
    if out.numel() != x.numel():
        call.result(ir.Expand, [x])
    elif tuple(out.shape) == tuple(x.shape):
        call.alias(x)
    else:
        call.result(ir.Reshape, [x])


def _reshape_in_place(call):
    """``squeeze_``/``unsqueeze_``: the tensor already has its new shape; its layer, the old one."""
    call.result(ir.Reshape, [call["self"]])


def _permute(call):
    """permute, transpose, t and their in-place forms (``transpose_``, ``t_``: TorchScript's
    batch_first RNNs), which leave the tensor with its new shape and bind it to the new layer."""
    x = call["self"]
    n = x.dim()
    op = call.op.removesuffix("_")
    if op in ("t", "numpy_T"):
        perm = tuple(reversed(range(n)))
    elif op == "transpose":
        perm = list(range(n))
        d0, d1 = call["dim0"] % n, call["dim1"] % n
        perm[d0], perm[d1] = perm[d1], perm[d0]
        perm = tuple(perm)
    else:
        perm = tuple(d % n for d in call["dims"])
    if perm == tuple(range(n)):
        call.alias(x)
    else:
        call.result(ir.Permute, [x], perm=perm)


def _slice(call):
    x = call["self"]
    axis = call["dim"] % x.dim()
    start, stop, step = slice(call["start"], call["end"], call["step"]).indices(x.shape[axis])
    call.result(ir.Slice, [x], axis=axis, start=start, stop=stop, step=step)


def _select(call):
    x = call["self"]
    axis = call["dim"] % x.dim()
    index = call["index"] % x.shape[axis]
    kept = call.emit(ir.Slice, [x], [*x.shape[:axis], 1, *x.shape[axis + 1 :]], axis=axis, start=index, stop=index + 1, step=1)
    index = call.emit(ir.Reshape, [kept], call.out.shape)
    call.trace.bind(call.out, index)


def _index_select(call):
    x = call["self"]
    index = constant(call, call["index"], "the index")
    call.result(ir.Gather, [x], axis=call["dim"] % x.dim(), index=index.long())


def _index(call):
    x, indices = call["self"], call["indices"]
    used = [k for k, ix in enumerate(indices) if ix is not None]
    if any(call.traced(ix) for ix in indices if ix is not None):
        raise Refused("indexes with input-dependent indices, which lrcert does not support")
    if len(used) == 1 and indices[used[0]].dtype != torch.bool:
        call.result(ir.Gather, [x], axis=used[0], index=indices[used[0]].detach().clone().long())
    else:  # several constant index tensors (ONNX GatherND), or a constant mask
        _copies(call)


def _copies(call):
    """An op that only moves, repeats or drops entries of its one input-dependent argument (split,
    nearest upsampling, pixel shuffle, repeat, flip, roll, indexing with constant indices): which
    input entry each output entry copies is found by running the op once on the entries' own
    flat positions (0, 1, …, n−1, exact in float64); each output is then a Gather of the flattened
    input. Constant arguments (sizes, scales, indices) are taken as they are."""
    traced = [name for name, value in call.args.items() if call.traced(value)]
    nested = [t for value in call.args.values() if isinstance(value, (list, tuple)) for t in value if call.traced(t)]
    if len(traced) != 1 or nested:
        raise Refused("takes more than one input-dependent tensor, which lrcert does not support here")
    x = call[traced[0]]
    if x.numel() >= 2**53:
        raise Refused("copies from a tensor too large to index exactly")
    positions = torch.arange(x.numel(), dtype=torch.float64, device=x.device).reshape(x.shape)
    copied = call.func(**{**call.args, traced[0]: positions})  # (inside the trace's dispatch: not traced)
    flat = call.emit(ir.Reshape, [x], (x.numel(),))
    outputs = copied if isinstance(copied, (tuple, list)) else [copied]
    results = call.out if isinstance(call.out, (tuple, list)) else [call.out]
    for out, index in zip(results, outputs):
        gathered = call.emit(ir.Gather, [flat], out.shape, axis=0, index=index.round().long())
        call.trace.bind(out, gathered)


def _interpolate(call):
    """Linear, bilinear, trilinear and bicubic resizing (antialiased too): separable, so output = M_1 ⊗ M_2 ⊗ … applied to the
    spatial axes, each M_a (out_a × in_a) a Dense layer over axis a (moved last and back). M_a's
    column i is the op's output for the input that is 1 at position i of axis a and constant along
    the other axes (their interpolation weights sum to 1)."""
    name = "input" if "input" in call.args else "self"
    x = call[name]
    index: Tensor | int = x
    shape = list(x.shape)
    for axis in range(2, x.dim()):
        n = x.shape[axis]
        basis = torch.eye(n, dtype=torch.float64, device=x.device).reshape(n, 1, *[n if a == axis else 1 for a in range(2, x.dim())])
        basis = basis.expand(n, 1, *[n if a == axis else x.shape[a] for a in range(2, x.dim())]).contiguous()
        columns = call.func(**{**call.args, name: basis})
        weight = columns[(slice(None), 0, *[slice(None) if a == axis else 0 for a in range(2, x.dim())])].T.contiguous()
        perm = tuple(a for a in range(x.dim()) if a != axis) + (axis,)
        back = tuple(perm.index(a) for a in range(x.dim()))
        moved = call.emit(ir.Permute, [index], [shape[a] for a in perm], perm=perm)
        shape[axis] = call.out.shape[axis]
        dense = emit_dense(call, moved, weight, None, [shape[a] for a in perm])
        index = call.emit(ir.Permute, [dense], shape, perm=back)
    call.trace.bind(call.out, index)


def _cat(call):
    tensors = call["tensors"]
    if not all(call.traced(t) for t in tensors):
        raise Refused("concatenates constants with input-dependent tensors, which lrcert does not support")
    call.result(ir.Concat, list(tensors), axis=call["dim"] % tensors[0].dim())


def _stack(call):
    """torch.stack: one Concat along a new axis."""
    tensors, axis = call["tensors"], call["dim"] % (call.out.dim())
    if not all(call.traced(t) for t in tensors):
        raise Refused("stacks constants with input-dependent tensors, which lrcert does not support")
    call.result(ir.Concat, list(tensors), axis=axis, new_axis=True)


def _identity(call):
    call.alias(call["self"] if "self" in call.args else call["input"])


def _constant_like(call):
    """zeros_like, x.new_zeros and their kin read only an input's shape, dtype and device: their
    output is a constant (an RNN's first hidden state, say)."""


def _to_copy(call):
    x = call["self"]
    if not call.out.dtype.is_floating_point:
        raise Refused(f"converts to {call.out.dtype}, which is not piecewise linear")
    call.alias(x)


def _dropout(call):
    if call["train"]:
        raise Refused("is dropout in training mode (call model.eval() before certifying)")
    call.alias(call["input"])


#: aten op → converter, for the ops of this family.
CONVERTERS: dict[Any, Callable[[Call], None]] = {
    aten.constant_pad_nd: _constant_pad,
    aten.reflection_pad1d: _pad_mode("reflect"),
    aten.reflection_pad2d: _pad_mode("reflect"),
    aten.replication_pad1d: _pad_mode("replicate"),
    aten.replication_pad2d: _pad_mode("replicate"),
    aten.view: _reshape,
    aten._unsafe_view: _reshape,
    aten.reshape: _reshape,
    aten._reshape_alias: _reshape,
    aten.squeeze: _reshape,
    aten.unsqueeze: _reshape,
    aten.squeeze_: _reshape_in_place,  # (torch.matmul of a vector squeezes its product so)
    aten.unsqueeze_: _reshape_in_place,
    aten.flatten: _reshape,
    aten.expand: _reshape,
    aten.t: _permute,
    aten.t_: _permute,
    aten.transpose: _permute,
    aten.transpose_: _permute,
    aten.permute: _permute,
    aten.slice: _slice,
    aten.select: _select,
    aten.index_select: _index_select,
    aten.index: _index,
    aten.cat: _cat,
    aten.stack: _stack,
    aten.upsample_linear1d: _interpolate,
    aten.upsample_bilinear2d: _interpolate,
    aten.upsample_trilinear3d: _interpolate,
    aten.upsample_bicubic2d: _interpolate,
    aten._upsample_bilinear2d_aa: _interpolate,
    aten._upsample_bicubic2d_aa: _interpolate,
    **{op: _copies for op in (
        aten.split, aten.split_with_sizes, aten.unbind, aten.chunk, aten.tensor_split, aten.upsample_nearest1d,
        aten.upsample_nearest2d, aten.upsample_nearest3d, aten._upsample_nearest_exact1d, aten._upsample_nearest_exact2d,
        aten._upsample_nearest_exact3d, aten.pixel_shuffle, aten.pixel_unshuffle, aten.channel_shuffle, aten.repeat,
        aten.flip, aten.roll, aten.gather, aten.take, aten.diagonal, aten.unfold, aten.narrow, aten.movedim,
    )},
    aten.clone: _identity,
    aten.alias: _identity,
    aten.detach: _identity,
    aten.lift_fresh: _identity,
    **{op: _constant_like for op in (
        aten.zeros_like, aten.ones_like, aten.full_like, aten.new_zeros, aten.new_ones, aten.new_full, aten.new_empty,
        aten.empty_like,
    )},
    aten.contiguous: _identity,
    aten._to_copy: _to_copy,
    aten.native_dropout: _dropout,
}
