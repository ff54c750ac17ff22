"""What a converter works with: one recorded aten call (:class:`Call`: its arguments by name, and
how to emit layers for it), the refusals it may raise, and its constant operands in float64."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ...network import ir

if TYPE_CHECKING:
    from .trace import _Trace

aten = torch.ops.aten


class Call:
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


class Refused(Exception):
    """A converter's reason for refusing one call."""


class Softmax(Exception):
    def __init__(self, source: int):
        self.source = source


def constant(call: Call, value: Any, what: str) -> Tensor:
    if call.traced(value):
        raise Refused(f"multiplies two input-dependent tensors ({what} depends on the input)")
    if not isinstance(value, Tensor):  # a Python number: kept exact (the default dtype would round it to float32)
        return torch.tensor(value, dtype=torch.float64 if isinstance(value, float) else None, device="cpu")
    return call.trace.exact(value)


def scalar_or_tensor(call: Call, value: Any, what: str) -> Tensor:
    """A constant operand in float64: derived constants keep full precision until the engine casts."""
    return constant(call, value, what).double()


def ntuple(value, n: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    return value * n if len(value) == 1 else value


def with_args(call: Call, **overrides) -> Call:
    call.args.update(overrides)
    return call


class Poison:
    """Marks a tensor that must not reach the certified network (a reason), or a tensor whose
    producer was already reported (``reason=None``, so the problem is not repeated)."""

    def __init__(self, reason: str | None, softmax_of: int | None = None):
        self.reason = reason
        self.softmax_of = softmax_of


def emit_dense(call: Call, x: Tensor | int, weight: Tensor, bias: Tensor | None, shape) -> int:
    return call.emit(ir.Dense, [x], shape, weight=weight.contiguous(), bias=bias)
