"""Torch model → layer list, by running the model once and recording its aten operations.

The model (an ``nn.Module``, a TorchScript module, an exported program, or an ONNX model after
onnx2torch) is called on one example input under a ``TorchDispatchMode``. Every aten operation
that reads an input-dependent tensor is handed to its converter in :data:`CONVERTERS` (a plain
dict from aten op to function); operations on constants simply run, which folds shape arithmetic,
weight preprocessing and the like into constants. Problems (a sigmoid, a product of two
input-dependent tensors, an op with no converter) are collected and reported all at once.

>>> import torch
>>> _ = torch.manual_seed(0)
>>> net = to_network(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU()), (3,))
>>> [layer.kind for layer in net.layers]
['input', 'dense', 'relu']
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

from ..errors import SUPPORTED_NETWORKS, LrcertError, first_line
from ..network import ir
from ..runtime import devices
from . import recurrent

aten = torch.ops.aten

#: Operations that are smooth or otherwise not piecewise linear: refused with that reason.
NOT_PIECEWISE_LINEAR = {
    "sigmoid", "tanh", "exp", "exp2", "expm1", "log", "log2", "log1p", "gelu", "silu", "elu", "selu",
    "celu", "softplus", "mish", "erf", "sqrt", "rsqrt", "pow", "reciprocal", "sin", "cos", "hardswish",
    "logsigmoid", "_softmax", "_log_softmax", "glu", "norm", "linalg_vector_norm",
}


class _Poison:
    """Marks a tensor that must not reach the certified network (a reason), or a tensor whose
    producer was already reported (``reason=None``, so the problem is not repeated)."""

    def __init__(self, reason: str | None, softmax_of: int | None = None):
        self.reason = reason
        self.softmax_of = softmax_of


class _Call:
    """One recorded aten call: its arguments by schema name, and helpers for converters."""

    def __init__(self, trace: "_Trace", func, args, kwargs, out):
        self.trace, self.func, self.out = trace, func, out
        self.args: dict[str, Any] = {}
        for i, spec in enumerate(func._schema.arguments):
            if i < len(args) and not spec.kwarg_only:
                self.args[spec.name] = args[i]
            elif spec.name in kwargs:
                self.args[spec.name] = kwargs[spec.name]
            elif spec.has_default_value():
                self.args[spec.name] = spec.default_value
        self.op = func.overloadpacket.__name__

    def __getitem__(self, name: str) -> Any:
        return self.args.get(name)

    def traced(self, value: Any) -> bool:
        return isinstance(value, Tensor) and id(value) in self.trace.node

    def node(self, value: Tensor) -> int:
        return self.trace.node[id(value)]

    def emit(self, cls: type[ir.Layer], inputs: list[Tensor | int], shape, **params) -> int:
        """Append a layer reading ``inputs`` (traced tensors or layer indices); return its index."""
        nodes = [x if isinstance(x, int) else self.node(x) for x in inputs]
        in_shapes = tuple(self.trace.layers[j].shape for j in nodes)
        layer = cls(name=self.trace.name(self.op), inputs=tuple(nodes), shape=tuple(shape), in_shapes=in_shapes, **params)
        self.trace.layers.append(layer)
        return len(self.trace.layers) - 1

    def result(self, cls: type[ir.Layer], inputs: list[Tensor | int], **params) -> int:
        """Emit a layer producing this call's (first) output and bind that output to it."""
        out = self.out[0] if isinstance(self.out, (tuple, list)) else self.out
        index = self.emit(cls, inputs, out.shape, **params)
        self.trace.bind(out, index)
        return index

    def alias(self, source: Tensor) -> None:
        """This call's output carries the same values as ``source`` (clone, detach, eval dropout)."""
        out = self.out[0] if isinstance(self.out, (tuple, list)) else self.out
        self.trace.bind(out, self.node(source))


class _Trace(TorchDispatchMode):
    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        """No torch.compile wrapper: it would import torch._dynamo (about 1 s) at the trace's first
        op, and the trace never runs under torch.compile."""
        return False

    def __init__(self, names: dict[int, str], op_types: dict[str, str]):
        super().__init__()
        self.op_types = op_types
        self.layers: list[ir.Layer] = []
        self.node: dict[int, int] = {}  # id(tensor) -> layer index
        self.poison: dict[int, _Poison] = {}  # id(tensor) -> why it may not be used
        self.alive: list[Tensor] = []  # keeps traced tensors alive so their ids stay unique
        self.viewed: set[int] = set()  # ids of traced tensors that have traced views
        self.problems: list[str] = []
        self.scope: list[str] = []
        self.module_names = names
        self.used_names: Counter[str] = Counter()
        #: id(constant float tensor) → (op, args, kwargs, which output): how the model computed it,
        #: so that :meth:`exact` can compute it again in float64
        self.recipes: dict[int, tuple] = {}
        self.exact_values: dict[int, Tensor] = {}

    def name(self, op: str) -> str:
        base = next((s for s in reversed(self.scope) if s), op)
        self.used_names[base] += 1
        n = self.used_names[base]
        return base if n == 1 else f"{base}#{n}"

    def bind(self, tensor: Tensor, index: int) -> None:
        self.node[id(tensor)] = index
        self.poison.pop(id(tensor), None)
        self.alive.append(tensor)
        if tensor._base is not None:
            self.viewed.add(id(tensor._base))

    def mark(self, out: Any, poison: _Poison) -> None:
        for t in tree_leaves(out):
            if isinstance(t, Tensor):
                self.node.pop(id(t), None)
                self.poison[id(t)] = poison
                self.alive.append(t)

    def stand_in(self, out: Any) -> None:
        """After a refusal, let the trace go on (to find every problem) with placeholder layers."""
        for t in tree_leaves(out):
            if isinstance(t, Tensor) and t.is_floating_point():
                self.layers.append(ir.Input(name="(refused)", inputs=(), shape=tuple(t.shape), in_shapes=()))
                self.bind(t, len(self.layers) - 1)
            elif isinstance(t, Tensor):
                self.mark(t, _Poison(None))

    def record(self, func, args, kwargs, out) -> None:
        """Remember how a constant float tensor was computed (not for random or in-place ops: their
        result cannot be computed again; an in-place op on a constant forgets that constant's recipe)."""
        mutated = func._schema.arguments[0].alias_info if func._schema.arguments else None
        if mutated is not None and mutated.is_write:
            self.recipes.pop(id(args[0]), None)
            return
        if torch.Tag.nondeterministic_seeded in func.tags:
            return
        for k, t in enumerate(tree_leaves(out)):
            if isinstance(t, Tensor) and t.is_floating_point():
                self.recipes[id(t)] = (func, args, kwargs, k)
                self.alive.append(t)

    def exact(self, value: Tensor) -> Tensor:
        """A constant float tensor in float64, as exact as the model's operations define it: those
        that computed it are run again on float64 operands (the model's dtype would round each step,
        e.g. an RNN's W_hh·h0 for a given h0); other constants are converted as they are."""
        known = self.exact_values.get(id(value))
        if known is not None:
            return known
        recipe = self.recipes.get(id(value))
        exact = value.detach().double() if value.is_floating_point() else value.detach().clone()
        if recipe is not None:
            func, args, kwargs, k = recipe
            again = lambda a: self.exact(a) if isinstance(a, Tensor) else torch.float64 if a in _FLOATS else a  # noqa: E731
            try:
                outputs = tree_leaves(func(*tree_map(again, args), **tree_map(again, kwargs)))
                if outputs[k].shape == value.shape and outputs[k].dtype == torch.float64:
                    exact = outputs[k]
            except Exception:  # an op without a float64 kernel: the model's value, converted
                pass
        self.exact_values[id(value)] = exact
        self.alive.append(value)  # (its id stays its own)
        return exact

    def where(self, op: str) -> str:
        """The running submodule and what it computes: its ONNX op type where known, else ``op``."""
        scope = next((s for s in reversed(self.scope) if s), None)
        return f"{scope!r} ({self.op_types.get(scope, op)})" if scope else f"the model's top level ({op})"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        leaves = [t for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
        poisoned = [self.poison[id(t)] for t in leaves if id(t) in self.poison]
        if not poisoned and not any(id(t) in self.node for t in leaves):
            if any(t.is_floating_point() for t in leaves):
                self.record(func, args, kwargs, out)
            return out  # a constant computation: it simply runs
        op = func.overloadpacket.__name__
        if poisoned:
            if len(poisoned) == 1 and poisoned[0].softmax_of is not None and op in _SHAPE_OPS:
                self.mark(out, poisoned[0])  # a reshape after the final softmax: still the final softmax
                return out
            reasons = [p.reason for p in poisoned if p.reason]
            if reasons:
                self.problems.append(f"{self.where(op)} uses {reasons[0]}")
            self.mark(out, _Poison(None))
            return out
        call = _Call(self, func, args, kwargs, out)
        mutated = func._schema.arguments[0].alias_info if func._schema.arguments else None
        if mutated is not None and mutated.is_write and call.traced(args[0]):
            if args[0]._is_view() or id(args[0]) in self.viewed:
                self.problems.append(f"{self.where(op)} changes a tensor in place that shares memory with another")
                self.mark(out, _Poison(None))
                return out
        converter = CONVERTERS.get(func.overloadpacket)
        try:
            if converter is None:
                raise _Refused(_refusal(op))
            converter(call)
        except _Refused as refusal:
            self.problems.append(f"{self.where(op)} {refusal}")
            self.stand_in(out)
        except _Softmax as softmax:
            self.mark(out, _Poison("a softmax output, which is not piecewise linear", softmax_of=softmax.source))
        return out


_FLOATS = (torch.float16, torch.bfloat16, torch.float32)
_DATA_DEPENDENT = {"_local_scalar_dense", "is_nonzero", "equal", "item", "gt", "lt", "ge", "le", "eq", "ne", "argmax",
                   "argmin", "sort", "topk", "where", "sign", "any", "all", "nonzero", "masked_fill", "heaviside"}
_SHAPE_OPS = {"view", "_unsafe_view", "reshape", "squeeze", "unsqueeze", "flatten", "clone", "alias", "detach",
              "contiguous", "_to_copy"}


class _Refused(Exception):
    """A converter's reason for refusing one call."""


class _Softmax(Exception):
    def __init__(self, source: int):
        self.source = source


def _refusal(op: str) -> str:
    if op in NOT_PIECEWISE_LINEAR:
        return "is not piecewise linear"
    if op in _DATA_DEPENDENT:
        return "reads or compares input-dependent values (data-dependent control flow or masking)"
    return "is an operation lrcert has no converter for"


# ----------------------------------------------------------------------------------------------
# Converters: one function per aten op family. Each reads ``call`` and emits layers.
# ----------------------------------------------------------------------------------------------


def _const(call: _Call, value: Any, what: str) -> Tensor:
    if call.traced(value):
        raise _Refused(f"multiplies two input-dependent tensors ({what} depends on the input)")
    if not isinstance(value, Tensor):  # a Python number: kept exact (the default dtype would round it to float32)
        return torch.tensor(value, dtype=torch.float64 if isinstance(value, float) else None, device="cpu")
    return call.trace.exact(value)


def _dense(call: _Call, x: Tensor | int, weight: Tensor, bias: Tensor | None, shape) -> int:
    return call.emit(ir.Dense, [x], shape, weight=weight.contiguous(), bias=bias)


def _one_matrix(w: Tensor) -> Tensor:
    """A constant factor of ``bmm`` as one matrix: a batch (G, k, n) that holds one matrix G times
    (as ``matmul`` expands a shared weight) is that matrix; a batch of different ones is refused."""
    if w.dim() == 3 and not torch.equal(w, w[:1].expand_as(w)):
        raise _Refused("multiplies by a batch of different constant matrices")
    return w[0] if w.dim() == 3 else w


def _matmul(call: _Call, a: Tensor, b: Tensor, scale: float = 1.0, bias: Tensor | None = None) -> None:
    """``a @ b`` (mm, mv, bmm, addmm) where exactly one side depends on the input."""
    out = call.out
    if call.traced(a) and call.traced(b):
        raise _Refused("multiplies two input-dependent tensors")
    if call.traced(a):
        w = _one_matrix(_const(call, b, "the right factor"))
        if w.dim() == 1:  # (m, k) @ (k,) -> (m,)
            dense = _dense(call, a, scale * w[None, :], None, (*a.shape[:-1], 1))
            index = call.emit(ir.Reshape, [dense], out.shape)
        else:
            if bias is not None and bias.dim() <= 2 and bias.numel() == out.shape[-1] and bias.shape[-1] == out.shape[-1]:
                bias, folded = None, bias.reshape(-1)  # a per-output bias belongs to the dense layer
            else:
                folded = None
            index = _dense(call, a, w.T if scale == 1 else scale * w.T, folded, out.shape)  # (W itself: shared by steps)
    else:
        c = _one_matrix(_const(call, a, "the left factor"))
        if b.dim() == 1:  # (m, k) @ (k,) -> (m,)
            index = _dense(call, b, scale * c, None, out.shape)
        else:  # C @ X = (Xᵀ Cᵀ)ᵀ: permute, dense over the last axis, permute back
            perm = tuple(range(b.dim() - 2)) + (b.dim() - 1, b.dim() - 2)
            moved = call.emit(ir.Permute, [b], [b.shape[i] for i in perm], perm=perm)
            dense = _dense(call, moved, scale * c, None, [*out.shape[:-2], out.shape[-1], out.shape[-2]])
            index = call.emit(ir.Permute, [dense], out.shape, perm=perm)
    if bias is not None:
        index = call.emit(ir.ElementwiseAffine, [index], out.shape, shift=bias)
    call.trace.bind(out, index)


def _mm(call):
    _matmul(call, call["self"], call["mat2"] if "mat2" in call.args else call["vec"])


def _addmm(call):
    bias = _const(call, call["self"], "the bias")
    _matmul(call, call["mat1"], call["mat2"], float(call["alpha"]), float(call["beta"]) * bias)


def _convolution(call):
    weight = _const(call, call["weight"], "the kernel")
    bias = call["bias"]
    bias = None if bias is None else _const(call, bias, "the bias")
    n = weight.dim() - 2
    pad = call["padding"]
    call.result(
        ir.Convolution, [call["input"]], weight=weight, bias=bias,
        stride=_ntuple(call["stride"], n), padding=_ntuple(pad, n), dilation=_ntuple(call["dilation"], n),
        transposed=bool(call["transposed"]), output_padding=_ntuple(call["output_padding"], n),
        groups=int(call["groups"]),
    )


def _ntuple(value, n: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    return value * n if len(value) == 1 else value


def _batch_norm(call):
    if call["training"]:
        raise _Refused("is batch-norm in training mode (call model.eval() before certifying)")
    x = call["input"]
    mean = _const(call, call["running_mean"], "the running mean")
    var = _const(call, call["running_var"], "the running variance")
    weight, bias = call["weight"], call["bias"]
    inv = 1.0 / torch.sqrt(var.double() + float(call["eps"]))
    scale = inv if weight is None else _const(call, weight, "the scale").double() * inv
    shift = -mean.double() * scale + (0 if bias is None else _const(call, bias, "the shift").double())
    per_channel = (-1,) + (1,) * (x.dim() - 2)
    call.result(ir.ElementwiseAffine, [x], scale=scale.reshape(per_channel), shift=shift.reshape(per_channel))


def _scalar_or_tensor(call: _Call, value: Any, what: str) -> Tensor:
    """A constant operand in float64: derived constants keep full precision until the engine casts."""
    return _const(call, value, what).double()


def _add(call, sign: float = 1.0, reverse: bool = False):
    """``self + alpha·other`` (``sign=-1``: sub; ``reverse``: rsub, ``other - alpha·self``)."""
    a, b = call["self"], call["other"]
    alpha = sign * float(call["alpha"] if call["alpha"] is not None else 1)
    if reverse:
        a, b = b, a
    if call.traced(a) and call.traced(b):
        call.result(ir.Sum, [a, b], coefficients=(1.0, alpha))
    elif call.traced(a):
        call.result(ir.ElementwiseAffine, [a], shift=alpha * _scalar_or_tensor(call, b, "the addend"))
    else:
        shift = _scalar_or_tensor(call, a, "the addend")
        call.result(ir.ElementwiseAffine, [b], scale=torch.tensor(alpha, dtype=torch.float64, device="cpu"), shift=shift)


def _mul(call):
    a, b = call["self"], call["other"]
    if call.traced(a) and call.traced(b):
        raise _Refused("multiplies two input-dependent tensors")
    x, c = (a, b) if call.traced(a) else (b, a)
    call.result(ir.ElementwiseAffine, [x], scale=_scalar_or_tensor(call, c, "the factor"))


def _where(call):
    """torch.where (ONNX Where) with a constant condition c: c·a + (1 − c)·b, each input-dependent
    side a scale by its 0/1 mask, a constant side a shift."""
    out = call.out
    mask = call["condition"].to(torch.float64).expand(out.shape)
    sides = [(call["self"], mask), (call["other"], 1 - mask)]
    traced = [(side, keep) for side, keep in sides if call.traced(side)]
    shift = sum((keep * _scalar_or_tensor(call, side, "the constant side") for side, keep in sides if not call.traced(side)),
                torch.zeros((), dtype=torch.float64))
    if len(traced) == 1:
        (side, keep), = traced
        call.result(ir.ElementwiseAffine, [side], scale=keep, shift=shift.expand(out.shape).contiguous())
    else:
        parts = [call.emit(ir.ElementwiseAffine, [side], out.shape, scale=keep) for side, keep in traced]
        call.result(ir.Sum, parts, coefficients=(1.0, 1.0))


def _div(call):
    if call["rounding_mode"] is not None:
        raise _Refused("is a rounding division, which is not piecewise linear")
    if call.traced(call["other"]):
        raise _Refused("divides by an input-dependent tensor, which is not piecewise linear")
    divisor = _scalar_or_tensor(call, call["other"], "the divisor")
    call.result(ir.ElementwiseAffine, [call["self"]], scale=1.0 / divisor)


def _neg(call):
    call.result(ir.ElementwiseAffine, [call["self"]], scale=torch.tensor(-1.0, dtype=torch.float64, device="cpu"))


def _relu(call):
    call.result(ir.ReLU, [call["self"]])


def _leaky_relu(call):
    call.result(ir.ReLU, [call["self"]], negative_slope=float(call["negative_slope"]))


def _clamp(call, low: Any = None, high: Any = None):
    """clamp / clip / hardtanh (ReLU6) / a max or min with a constant: ``Clip`` (``ReLU`` for
    clamp(min=0)). Bounds are numbers or constant tensors."""
    x = call["self"]
    bounds = []
    for bound, missing in ((low, -math.inf), (high, math.inf)):
        if bound is None:
            bounds.append(missing)
        elif not isinstance(bound, Tensor):
            bounds.append(float(bound))  # a Python number: exact (as a tensor it would be float32)
        elif bound.numel() > 1:
            bounds.append(_const(call, bound, "the bound").double().expand(call.out.shape).clone())
        else:
            bounds.append(float(_const(call, bound, "the bound")))
    if all(isinstance(b, float) for b in bounds) and bounds == [0.0, math.inf]:
        call.result(ir.ReLU, [x])
    else:
        call.result(ir.Clip, [x], low=bounds[0], high=bounds[1])


def _maximum(minimum: bool):
    """Elementwise max/min: of two input-dependent tensors, a ``Maximum`` layer (a window of two);
    with a constant, a ``Clip``."""

    def convert(call):
        a, b = call["self"], call["other"]
        if call.traced(a) and call.traced(b):
            call.result(ir.Maximum, [a, b], minimum=minimum)
            return
        x, c = (a, b) if call.traced(a) else (b, a)
        _clamp(_with(call, self=x), high=c) if minimum else _clamp(_with(call, self=x), low=c)

    return convert


def _binary_max(minimum: bool):
    """aten.max / aten.min: elementwise (``other``), or a reduction over one axis (``dim``) or all."""
    elementwise = _maximum(minimum)

    def convert(call):
        if call["other"] is not None:
            elementwise(call)
        else:
            x = call["self"]
            _reduced_max(call, minimum, range(x.dim()) if call["dim"] is None else [call["dim"]])

    return convert


def _amax(minimum: bool):
    """aten.amax / aten.amin: a max (min) over the given axes (every axis when none are given)."""

    def convert(call):
        x, dims = call["self"], call["dim"]
        _reduced_max(call, minimum, dims if dims else range(x.dim()))

    return convert


def _reduced_max(call: _Call, minimum: bool, dims) -> None:
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
        call.trace.mark(call.out[1], _Poison("the arg-max indices of a max over an axis"))


def _prelu(call):
    """PReLU: one slope per channel (axis 1), or one for all."""
    x, weight = call["self"], _const(call, call["weight"], "the PReLU slope").double()
    if weight.numel() == 1:
        call.result(ir.ReLU, [x], negative_slope=float(weight))
        return
    shape = [1] * x.dim()
    shape[1 if x.dim() > 1 else 0] = weight.numel()
    call.result(ir.ReLU, [x], negative_slope=weight.reshape(shape))


def _hardsigmoid(call):
    """clip(x / 6 + 1/2, 0, 1): a scale-shift, then a Clip."""
    x = call["self"]
    scaled = call.emit(ir.ElementwiseAffine, [x], x.shape, scale=torch.tensor(1 / 6, dtype=torch.float64, device="cpu"),
                       shift=torch.tensor(0.5, dtype=torch.float64, device="cpu"))
    call.result(ir.Clip, [scaled], low=0.0, high=1.0)


def _threshold(call):
    if float(call["threshold"]) != 0 or float(call["value"]) != 0:
        raise _Refused("is a threshold other than ReLU's, which lrcert does not support")
    call.result(ir.ReLU, [call["self"]])


def _max_pool2d(call):
    x = call["self"]
    kernel = _ntuple(call["kernel_size"], 2)
    stride = _ntuple(call["stride"], 2) if call["stride"] else kernel
    if x.dim() not in (3, 4):
        raise _Refused("is a max-pool on a tensor that is not 3-d or 4-d")
    call.result(
        ir.MaxPool2d, [x], kernel=kernel, stride=stride, padding=_ntuple(call["padding"], 2),
        dilation=_ntuple(call["dilation"], 2), ceil_mode=bool(call["ceil_mode"]),
    )
    if isinstance(call.out, (tuple, list)):
        call.trace.mark(call.out[1], _Poison("the arg-max indices of a max-pool"))


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
    index = _const(call, call["index"], "the index")
    call.result(ir.Gather, [x], axis=call["dim"] % x.dim(), index=index.long())


def _index(call):
    x, indices = call["self"], call["indices"]
    used = [k for k, ix in enumerate(indices) if ix is not None]
    if any(call.traced(ix) for ix in indices if ix is not None):
        raise _Refused("indexes with input-dependent indices, which lrcert does not support")
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
        raise _Refused("takes more than one input-dependent tensor, which lrcert does not support here")
    x = call[traced[0]]
    if x.numel() >= 2**53:
        raise _Refused("copies from a tensor too large to index exactly")
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
        dense = _dense(call, moved, weight, None, [shape[a] for a in perm])
        index = call.emit(ir.Permute, [dense], shape, perm=back)
    call.trace.bind(call.out, index)


def _cat(call):
    tensors = call["tensors"]
    if not all(call.traced(t) for t in tensors):
        raise _Refused("concatenates constants with input-dependent tensors, which lrcert does not support")
    call.result(ir.Concat, list(tensors), axis=call["dim"] % tensors[0].dim())


def _stack(call):
    """torch.stack: one Concat along a new axis."""
    tensors, axis = call["tensors"], call["dim"] % (call.out.dim())
    if not all(call.traced(t) for t in tensors):
        raise _Refused("stacks constants with input-dependent tensors, which lrcert does not support")
    call.result(ir.Concat, list(tensors), axis=axis, new_axis=True)


def _identity(call):
    call.alias(call["self"] if "self" in call.args else call["input"])


def _constant_like(call):
    """zeros_like, x.new_zeros and their kin read only an input's shape, dtype and device: their
    output is a constant (an RNN's first hidden state, say)."""


def _to_copy(call):
    x = call["self"]
    if not call.out.dtype.is_floating_point:
        raise _Refused(f"converts to {call.out.dtype}, which is not piecewise linear")
    call.alias(x)


def _dropout(call):
    if call["train"]:
        raise _Refused("is dropout in training mode (call model.eval() before certifying)")
    call.alias(call["input"])


def _softmax(call):
    raise _Softmax(call.node(call["self"]))


CONVERTERS: dict[Any, Callable[[_Call], None]] = {
    aten.mm: _mm,
    aten.mv: _mm,
    aten.bmm: _mm,
    aten.addmm: _addmm,
    aten.convolution: _convolution,
    aten._convolution: _convolution,
    aten.native_batch_norm: _batch_norm,
    aten._native_batch_norm_legit_no_training: lambda call: _batch_norm(_with(call, training=False)),
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
    aten.relu: _relu,
    aten.relu_: _relu,
    aten.leaky_relu: _leaky_relu,
    aten.leaky_relu_: _leaky_relu,
    aten.clamp: lambda call: _clamp(call, call["min"], call["max"]),
    aten.clamp_: lambda call: _clamp(call, call["min"], call["max"]),
    aten.clamp_min: lambda call: _clamp(call, low=call["min"]),
    aten.clamp_max: lambda call: _clamp(call, high=call["max"]),
    aten.hardtanh: lambda call: _clamp(call, call["min_val"], call["max_val"]),
    aten.hardtanh_: lambda call: _clamp(call, call["min_val"], call["max_val"]),
    aten.maximum: _maximum(minimum=False),
    aten.minimum: _maximum(minimum=True),
    aten.max: _binary_max(minimum=False),
    aten.min: _binary_max(minimum=True),
    aten.amax: _amax(minimum=False),
    aten.amin: _amax(minimum=True),
    aten.prelu: _prelu,
    aten._prelu_kernel: _prelu,
    aten.abs: lambda call: call.result(ir.Abs, [call["self"]]),
    aten.hardsigmoid: _hardsigmoid,
    aten.threshold: _threshold,
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
    aten.where: _where,
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
    aten._softmax: _softmax,
    aten._log_softmax: _softmax,
}


def _with(call: _Call, **overrides) -> _Call:
    call.args.update(overrides)
    return call


# ----------------------------------------------------------------------------------------------


def to_network(
    model: Callable[[Tensor], Any],
    sample_shape: tuple[int, ...],
    *,
    batch_axis: bool = True,
    source: str = "",
    dtype: torch.dtype | None = None,
    named: torch.nn.Module | None = None,
    op_types: dict[str, str] | None = None,
) -> ir.Network:
    """Trace ``model`` on one example input and return its layer list.

    ``sample_shape`` is the shape of one data row; the model is called on ``(1, *sample_shape)``
    when ``batch_axis`` is true (the usual case) or on ``sample_shape`` itself otherwise.
    Layers are named after the submodules of ``named`` (default: the model) that make them;
    refusals name a submodule's ``op_types`` entry (an ONNX node's op type) rather than the
    PyTorch op it ran.
    The layer list is checked to reproduce the model's output on that input.
    """
    if isinstance(model, torch.nn.Module):
        try:
            model.eval()
        except NotImplementedError:  # exported programs: the mode was fixed when they were exported
            pass
        names = {id(m): name for name, m in (named or model).named_modules()}
        floating = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
        dtype = dtype or (floating[0].dtype if floating else None)
        device = devices.of_module(model)
    else:
        names, device = {}, torch.device("cpu")
    dtype = dtype or torch.float32
    input_shape = (1, *sample_shape) if batch_axis else tuple(sample_shape)
    generator = torch.Generator(device="cpu").manual_seed(0)  # the same example wherever the model lives
    example = torch.randn(input_shape, generator=generator, dtype=dtype, device="cpu").to(device)

    trace = _Trace(names, op_types or {})
    trace.layers.append(ir.Input(name="input", inputs=(), shape=input_shape, in_shapes=()))
    trace.bind(example, 0)
    hooks = _scope_hooks(trace) if names else []
    namer = recurrent.Namer(trace.scope)
    try:
        with torch.no_grad(), torch.device(device), devices.exact_float32(), recurrent.naming(namer), \
                recurrent.Unrolled(namer, _refuse), trace:
            output = model(example)
    except LrcertError:
        raise
    except Exception as exc:  # the model itself failed on an input of this shape
        raise LrcertError(
            f"the model fails when called on an input of shape {list(input_shape)}: {type(exc).__name__}: "
            f"{first_line(exc)}",
            fix="check that the data rows have the shape the model expects (lrcert inspect MODEL)",
        ) from None
    finally:
        for hook in hooks:
            hook.remove()

    outputs = [t for t in tree_leaves(output) if isinstance(t, Tensor)]
    if len(outputs) != 1:
        raise LrcertError(
            f"the model returns {len(outputs)} tensors",
            fix="certify a model with a single output tensor (wrap it to return the one you want)",
        )
    output = outputs[0]
    notes = []
    poison = trace.poison.get(id(output))
    if poison is not None and poison.softmax_of is not None:
        notes.append("the model ends in a softmax: lrcert certified the logits before it (the regions are the same)")
        output_index = poison.softmax_of
    elif id(output) in trace.node:
        output_index = trace.node[id(output)]
    elif poison is not None:
        output_index = -1  # produced by refused operations: trace.problems says which, just below
    else:
        raise LrcertError("the model's output does not depend on its input", fix="check the model")
    if trace.problems:
        problems = list(dict.fromkeys(trace.problems))  # each once, in order
        raise LrcertError(
            f"{source or 'the model'} is not a supported piecewise-linear network: " + "; ".join(problems),
            fix=SUPPORTED_NETWORKS,
            details=problems,
        )
    traced_output = output_index
    if output_index >= 0 and any(isinstance(layer, ir.Nonlinearity) for layer in trace.layers[output_index + 1 :]):
        # nonlinearities past the output (an ONNX model's other outputs) bound the region too: the
        # network runs them all and reads the output from a copy of it placed last
        shape = trace.layers[output_index].shape
        trace.layers.append(ir.Reshape(name="output", inputs=(output_index,), shape=shape, in_shapes=(shape,)))
        output_index = len(trace.layers) - 1
    layers = tuple(layer.to("cpu", torch.float64) for layer in trace.layers)  # exact parameters, one dtype
    _check_layers(layers, source)
    network = ir.Network(
        layers=layers, output=output_index, sample_shape=tuple(sample_shape), notes=tuple(notes), source=source,
        recurrences=tuple(namer.shapes), steps=_steps(layers, namer),
    )
    _check_reproduces(network, example, output if not notes else None, trace, traced_output)
    if namer.replaced and not notes:  # lrcert's own steps ran for torch's RNN kernels in the trace: those must agree
        with torch.no_grad(), devices.exact_float32():
            _check_reproduces(network, example, _single_output(model(example)), trace, traced_output)
    return network


def _refuse(error: LrcertError) -> None:
    raise error


def _single_output(output: Any) -> Tensor:
    return next(t for t in tree_leaves(output) if isinstance(t, Tensor))


def _steps(layers: tuple[ir.Layer, ...], namer: recurrent.Namer) -> dict[str, ir.Step]:
    """The step (recurrence, layer, direction, t) of each nonlinear layer a recurrence made."""
    steps = {}
    for layer in layers:
        step = namer.steps.get(layer.name.split("#")[0])  # (a recurrence run twice: "rnn.l0 t=3#2")
        if step is not None and isinstance(layer, ir.Nonlinearity):
            steps[layer.name] = step
    return steps


def _check_layers(layers: tuple[ir.Layer, ...], source: str) -> None:
    """Refuse parameters that are not finite and tensors without elements: no radius could be trusted."""
    for layer in layers:
        if layer.size == 0:
            raise LrcertError(
                f"{source or 'the model'}: layer {layer.name!r} has shape {list(layer.shape)}, with no elements",
                fix="check the model's input shape and weights",
            )
        for name, value in vars(layer).items():
            if isinstance(value, Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
                raise LrcertError(
                    f"{source or 'the model'}: the {name} of layer {layer.name!r} holds NaN or Inf",
                    fix="repair or re-export the model",
                )


def _scope_hooks(trace: _Trace) -> list:
    """Global module hooks that keep ``trace.scope`` equal to the stack of running module names."""

    def enter(module, args):
        trace.scope.append(trace.module_names.get(id(module), ""))

    def leave(module, args, result):
        if trace.scope:
            trace.scope.pop()

    return [
        torch.nn.modules.module.register_module_forward_pre_hook(enter),
        torch.nn.modules.module.register_module_forward_hook(leave, always_call=True),
    ]


def _check_reproduces(network: ir.Network, example: Tensor, output: Tensor | None, trace: _Trace, index: int) -> None:
    """The layer list must compute what the model computed (exit code 3 if not: a bug in lrcert)."""
    expected = output
    if expected is None:  # the output was a softmax: compare the logits recorded during the trace
        expected = next((t for t in trace.alive if trace.node.get(id(t)) == index), None)
        if expected is None:
            return
    with torch.no_grad():
        got = network.run(example.reshape(1, *network.sample_shape).to(network.device, network.dtype))
    expected = expected.reshape(got.shape).to(got.device, got.dtype)
    finite = torch.isfinite(expected)  # the model's own dtype may overflow where float64 does not
    got, expected = got[finite], expected[finite]
    scale = float(expected.abs().max()) + 1e-6 if len(expected) else 1.0
    if not torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * scale):
        worst = float((got - expected).abs().max())
        raise LrcertError(
            f"the layer list built from the model does not reproduce its output (largest difference {worst:.3g})",
            fix="please report this model to the lrcert developers",
            internal=True,
        )


