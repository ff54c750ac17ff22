"""Converters of the affine operations: matrix products, convolutions, batch-norm, sums, products
and quotients by constants (``Dense``, ``Convolution``, ``ElementwiseAffine``, ``Sum``)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ...network import ir
from .call import Call, Refused, aten, constant, emit_dense, ntuple, scalar_or_tensor, with_args


def _one_matrix(w: Tensor) -> Tensor:
    """A constant factor of ``bmm`` as one matrix: a batch (G, k, n) that holds one matrix G times
    (as ``matmul`` expands a shared weight) is that matrix; a batch of different ones is refused."""
    if w.dim() == 3 and not torch.equal(w, w[:1].expand_as(w)):
        raise Refused("multiplies by a batch of different constant matrices")
    return w[0] if w.dim() == 3 else w


def _matmul(call: Call, a: Tensor, b: Tensor, scale: float = 1.0, bias: Tensor | None = None) -> None:
    """``a @ b`` (mm, mv, bmm, addmm) where exactly one side depends on the input."""
    out = call.out
    if call.traced(a) and call.traced(b):
        raise Refused("multiplies two input-dependent tensors")
    if call.traced(a):
        w = _one_matrix(constant(call, b, "the right factor"))
        if w.dim() == 1:  # (m, k) @ (k,) -> (m,)
            dense = emit_dense(call, a, scale * w[None, :], None, (*a.shape[:-1], 1))
            index = call.emit(ir.Reshape, [dense], out.shape)
        else:
            if bias is not None and bias.dim() <= 2 and bias.numel() == out.shape[-1] and bias.shape[-1] == out.shape[-1]:
                bias, folded = None, bias.reshape(-1)  # a per-output bias belongs to the dense layer
            else:
                folded = None
            index = emit_dense(call, a, w.T if scale == 1 else scale * w.T, folded, out.shape)  # (W itself: shared by steps)
    else:
        c = _one_matrix(constant(call, a, "the left factor"))
        if b.dim() == 1:  # (m, k) @ (k,) -> (m,)
            index = emit_dense(call, b, scale * c, None, out.shape)
        else:  # C @ X = (Xᵀ Cᵀ)ᵀ: permute, dense over the last axis, permute back
            perm = tuple(range(b.dim() - 2)) + (b.dim() - 1, b.dim() - 2)
            moved = call.emit(ir.Permute, [b], [b.shape[i] for i in perm], perm=perm)
            dense = emit_dense(call, moved, scale * c, None, [*out.shape[:-2], out.shape[-1], out.shape[-2]])
            index = call.emit(ir.Permute, [dense], out.shape, perm=perm)
    if bias is not None:
        index = call.emit(ir.ElementwiseAffine, [index], out.shape, shift=bias)
    call.trace.bind(out, index)


def _mm(call):
    _matmul(call, call["self"], call["mat2"] if "mat2" in call.args else call["vec"])


def _addmm(call):
    bias = constant(call, call["self"], "the bias")
    _matmul(call, call["mat1"], call["mat2"], float(call["alpha"]), float(call["beta"]) * bias)


def _convolution(call):
    weight = constant(call, call["weight"], "the kernel")
    bias = call["bias"]
    bias = None if bias is None else constant(call, bias, "the bias")
    n = weight.dim() - 2
    pad = call["padding"]
    call.result(
        ir.Convolution, [call["input"]], weight=weight, bias=bias,
        stride=ntuple(call["stride"], n), padding=ntuple(pad, n), dilation=ntuple(call["dilation"], n),
        transposed=bool(call["transposed"]), output_padding=ntuple(call["output_padding"], n),
        groups=int(call["groups"]),
    )


def _batch_norm(call):
    if call["training"]:
        raise Refused("is batch-norm in training mode (call model.eval() before certifying)")
    x = call["input"]
    mean = constant(call, call["running_mean"], "the running mean")
    var = constant(call, call["running_var"], "the running variance")
    weight, bias = call["weight"], call["bias"]
    inv = 1.0 / torch.sqrt(var.double() + float(call["eps"]))
    scale = inv if weight is None else constant(call, weight, "the scale").double() * inv
    shift = -mean.double() * scale + (0 if bias is None else constant(call, bias, "the shift").double())
    per_channel = (-1,) + (1,) * (x.dim() - 2)
    call.result(ir.ElementwiseAffine, [x], scale=scale.reshape(per_channel), shift=shift.reshape(per_channel))


def _add(call, sign: float = 1.0, reverse: bool = False):
    """``self + alpha·other`` (``sign=-1``: sub; ``reverse``: rsub, ``other - alpha·self``)."""
    a, b = call["self"], call["other"]
    alpha = sign * float(call["alpha"] if call["alpha"] is not None else 1)
    if reverse:
        a, b = b, a
    if call.traced(a) and call.traced(b):
        call.result(ir.Sum, [a, b], coefficients=(1.0, alpha))
    elif call.traced(a):
        call.result(ir.ElementwiseAffine, [a], shift=alpha * scalar_or_tensor(call, b, "the addend"))
    else:
        shift = scalar_or_tensor(call, a, "the addend")
        call.result(ir.ElementwiseAffine, [b], scale=torch.tensor(alpha, dtype=torch.float64, device="cpu"), shift=shift)


def _mul(call):
    a, b = call["self"], call["other"]
    if call.traced(a) and call.traced(b):
        raise Refused("multiplies two input-dependent tensors")
    x, c = (a, b) if call.traced(a) else (b, a)
    call.result(ir.ElementwiseAffine, [x], scale=scalar_or_tensor(call, c, "the factor"))


def _where(call):
    """torch.where (ONNX Where) with a constant condition c: c·a + (1 − c)·b, each input-dependent
    side a scale by its 0/1 mask, a constant side a shift."""
    out = call.out
    mask = call["condition"].to(torch.float64).expand(out.shape)
    sides = [(call["self"], mask), (call["other"], 1 - mask)]
    traced = [(side, keep) for side, keep in sides if call.traced(side)]
    shift = sum((keep * scalar_or_tensor(call, side, "the constant side") for side, keep in sides if not call.traced(side)),
                torch.zeros((), dtype=torch.float64))
    if len(traced) == 1:
        (side, keep), = traced
        call.result(ir.ElementwiseAffine, [side], scale=keep, shift=shift.expand(out.shape).contiguous())
    else:
        parts = [call.emit(ir.ElementwiseAffine, [side], out.shape, scale=keep) for side, keep in traced]
        call.result(ir.Sum, parts, coefficients=(1.0, 1.0))


def _div(call):
    if call["rounding_mode"] is not None:
        raise Refused("is a rounding division, which is not piecewise linear")
    if call.traced(call["other"]):
        raise Refused("divides by an input-dependent tensor, which is not piecewise linear")
    divisor = scalar_or_tensor(call, call["other"], "the divisor")
    call.result(ir.ElementwiseAffine, [call["self"]], scale=1.0 / divisor)


def _neg(call):
    call.result(ir.ElementwiseAffine, [call["self"]], scale=torch.tensor(-1.0, dtype=torch.float64, device="cpu"))


#: aten op → converter, for the ops of this family.
CONVERTERS: dict[Any, Callable[[Call], None]] = {
    aten.mm: _mm,
    aten.mv: _mm,
    aten.bmm: _mm,
    aten.addmm: _addmm,
    aten.convolution: _convolution,
    aten._convolution: _convolution,
    aten.native_batch_norm: _batch_norm,
    aten._native_batch_norm_legit_no_training: lambda call: _batch_norm(with_args(call, training=False)),
    aten.add: _add,
    aten.add_: _add,
    aten.sub: lambda call: _add(call, sign=-1.0),
    aten.sub_: lambda call: _add(call, sign=-1.0),
    aten.rsub: lambda call: _add(call, sign=-1.0, reverse=True),
    aten.mul: _mul,
    aten.mul_: _mul,
    aten.div: _div,
    aten.div_: _div,
    aten.neg: _neg,
    aten.where: _where,
}
