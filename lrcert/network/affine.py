"""The affine layers, ``y = A(x) + c``: dense, convolution, average pools, padding, scale and
shift, sums, held inputs, and the moves (concatenation, reshapes, permutations, slices, gathers,
reductions). ``apply(xs, offset=False)`` is ``A(x)``: each layer's Jacobian-vector product."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .layers import Affine, _on_core, align


@dataclass(frozen=True, eq=False)
class Dense(Affine):
    """``y = x Wᵀ + b`` over the last axis (Gemm, MatMul with a constant, nn.Linear)."""

    weight: Tensor = field(repr=False, default=None)
    bias: Tensor | None = field(repr=False, default=None)
    kind: ClassVar[str] = "dense"

    def apply(self, xs, offset=True):
        return F.linear(xs[0], self.weight, self.bias if offset else None)

    def describe(self):
        return f"{self.weight.shape[1]} → {self.weight.shape[0]}"

    @property
    def terms(self):
        return self.weight.shape[1]


@dataclass(frozen=True, eq=False)
class Convolution(Affine):
    """N-d convolution or transposed convolution (``torch.convolution`` semantics)."""

    weight: Tensor = field(repr=False, default=None)
    bias: Tensor | None = field(repr=False, default=None)
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    transposed: bool = False
    output_padding: tuple[int, ...] = ()
    groups: int = 1
    kind: ClassVar[str] = "conv"

    def apply(self, xs, offset=True):
        bias = self.bias if offset else None
        if self.pointwise:
            return self._pointwise(xs[0], bias)
        return _on_core(
            xs[0],
            self.weight.dim() - 1,
            lambda x: torch.convolution(
                x, self.weight, bias, list(self.stride), list(self.padding), list(self.dilation),
                self.transposed, list(self.output_padding), self.groups,
            ),
        )

    @property
    def pointwise(self) -> bool:
        """A 1×1 convolution without padding or groups, on a CPU: a matrix product over channels
        there (GPUs keep their convolution, whose speed was measured)."""
        return (
            self.weight.device.type == "cpu" and not self.transposed and self.groups == 1
            and set(self.weight.shape[2:]) == {1} and not any(self.padding)
        )

    def _pointwise(self, x: Tensor, bias: Tensor | None) -> Tensor:
        """y = W·x per output position (x subsampled by the stride first), as matrix products
        with the convolution's flop count, 1.1–10× faster than the CPU's convolution at the
        channel counts of ResNets' shortcuts (measured): on small planes (< 16 positions) one
        product over all planes' positions, (N·positions, C)·Wᵀ; on larger ones one per plane."""
        spatial = self.weight.dim() - 2
        x = x[(..., *(slice(None, None, step) for step in self.stride))]
        planes = x.flatten(-spatial)  # (..., C, positions)
        weight = self.weight.flatten(1)  # (C_out, C)
        if planes.shape[-1] < 16:
            y = torch.matmul(planes.transpose(-1, -2).reshape(-1, planes.shape[-2]), weight.t())
            y = y.reshape(*planes.shape[:-2], planes.shape[-1], -1).transpose(-1, -2).contiguous()
        else:
            y = torch.matmul(weight, planes)
        y = y.unflatten(-1, x.shape[-spatial:])
        return y if bias is None else y + bias.reshape(-1, *(1,) * spatial)

    @property
    def terms(self):
        channels = self.weight.shape[0] // self.groups if self.transposed else self.weight.shape[1]
        return channels * math.prod(self.weight.shape[2:])

    def describe(self):
        kind = "transposed " if self.transposed else ""
        k = "×".join(map(str, self.weight.shape[2:]))
        return f"{kind}{k} stride {list(self.stride)} padding {list(self.padding)} groups {self.groups}"


@dataclass(frozen=True, eq=False)
class LinearPool(Affine):
    """Average pooling and adaptive average pooling: a fixed linear map over the trailing axes."""

    op: Callable = field(repr=False, default=None)
    args: tuple = ()
    core_rank: int = 3
    kind: ClassVar[str] = "avgpool"

    def apply(self, xs, offset=True):
        return _on_core(xs[0], self.core_rank, lambda x: self.op(x, *self.args))

    @property
    def terms(self):  # a pool never mixes channels: at most every element of one plane, and the division
        return math.prod(self.in_shapes[0][len(self.in_shapes[0]) - self.core_rank + 1 :]) + 1

    def describe(self):
        return f"{self.op.__name__} {list(self.args)}"


@dataclass(frozen=True, eq=False)
class Pad(Affine):
    """Padding of the trailing axes; the constant fill value is the layer's offset."""

    pads: tuple[int, ...] = ()
    mode: str = "constant"
    value: float = 0.0
    kind: ClassVar[str] = "pad"

    def absolute(self, memo=None):
        return replace(self, value=abs(self.value))

    def apply(self, xs, offset=True):
        if self.mode == "constant":
            return F.pad(xs[0], list(self.pads), value=self.value if offset else 0.0)
        return _on_core(xs[0], len(self.pads) // 2 + 1, lambda x: F.pad(x, list(self.pads), mode=self.mode))

    def describe(self):
        return f"{self.mode} {list(self.pads)}"


@dataclass(frozen=True, eq=False)
class ElementwiseAffine(Affine):
    """``y = x · scale + shift`` with constants broadcast over the sample (Mul/Div/Add/Sub, batch-norm)."""

    scale: Tensor | None = field(repr=False, default=None)
    shift: Tensor | None = field(repr=False, default=None)
    kind: ClassVar[str] = "scale-shift"

    @property
    def terms(self):
        return 0 if self.scale is None else 1

    def apply(self, xs, offset=True):
        y = align(xs[0], len(self.in_shapes[0]), len(self.shape))
        if self.scale is not None:
            y = y * self.scale
        if offset and self.shift is not None:
            y = y + self.shift
        if y.shape[y.dim() - len(self.shape) :] != self.shape:  # an offset-free tangent must still broadcast
            y = y.expand(*y.shape[: y.dim() - len(self.shape)], *self.shape)
        return y


@dataclass(frozen=True, eq=False)
class Sum(Affine):
    """``y = Σ cᵢ xᵢ`` of input-dependent tensors (residual adds, Sub of two branches)."""

    coefficients: tuple[float, ...] = ()
    kind: ClassVar[str] = "add"

    @property
    def terms(self):
        return len(self.inputs) + any(c != 1 for c in self.coefficients)

    def absolute(self, memo=None):
        return replace(self, coefficients=tuple(abs(c) for c in self.coefficients))

    def apply(self, xs, offset=True):
        total = None
        for x, shape, c in zip(xs, self.in_shapes, self.coefficients):
            term = align(x, len(shape), len(self.shape))
            term = term if c == 1 else term * c
            total = term if total is None else total + term
        return total


@dataclass(frozen=True, eq=False)
class Hold(Affine):
    """Holds some input coordinates fixed (``--vary``): ``y = m ⊙ x + c`` with ``m`` 1 on the
    coordinates the certificate varies and 0 on the held ones, whose values ``c = (1 − m) ⊙ x``
    are each row's own constants. The value passes every coordinate; tangents and gradients keep
    only the varied ones, so every face gradient is the partial one over them."""

    mask: Tensor = field(repr=False, default=None)
    varied: tuple[str, ...] = ()
    kind: ClassVar[str] = "hold"

    def apply(self, xs, offset=True):
        moved = xs[0] * self.mask  # (exact: a multiplication by 0 or 1)
        return moved + (xs[0] - moved).detach() if offset else moved

    def describe(self):
        return f"varies {', '.join(self.varied)}; holds the other inputs"


@dataclass(frozen=True, eq=False)
class Concat(Affine):
    """The inputs joined along ``axis`` (ONNX Concat, torch.cat), or along a new axis there
    (``new_axis``: torch.stack, an RNN's steps into its output sequence)."""

    axis: int = 0
    new_axis: bool = False
    kind: ClassVar[str] = "concat"

    def apply(self, xs, offset=True):
        leads = torch.broadcast_shapes(*(self.lead(x, i) for i, x in enumerate(xs)))
        parts = [x.expand(*leads, *shape) for x, shape in zip(xs, self.in_shapes)]
        return (torch.stack if self.new_axis else torch.cat)(parts, dim=len(leads) + self.axis)


@dataclass(frozen=True, eq=False)
class Reshape(Affine):
    kind: ClassVar[str] = "reshape"

    def apply(self, xs, offset=True):
        return xs[0].reshape(*self.lead(xs[0]), *self.shape)


@dataclass(frozen=True, eq=False)
class Expand(Affine):
    kind: ClassVar[str] = "expand"

    def apply(self, xs, offset=True):
        x = align(xs[0], len(self.in_shapes[0]), len(self.shape))
        return x.expand(*x.shape[: x.dim() - len(self.shape)], *self.shape)


@dataclass(frozen=True, eq=False)
class Permute(Affine):
    perm: tuple[int, ...] = ()
    kind: ClassVar[str] = "permute"

    def apply(self, xs, offset=True):
        n = len(self.lead(xs[0]))
        return xs[0].permute(*range(n), *(n + p for p in self.perm))

    def describe(self):
        return f"{list(self.perm)}"


@dataclass(frozen=True, eq=False)
class Slice(Affine):
    axis: int = 0
    start: int = 0
    stop: int = 0
    step: int = 1
    kind: ClassVar[str] = "slice"

    def apply(self, xs, offset=True):
        n = len(self.lead(xs[0]))
        index = (slice(None),) * (n + self.axis) + (slice(self.start, self.stop, self.step),)
        return xs[0][index]

    def describe(self):
        return f"axis {self.axis} [{self.start}:{self.stop}:{self.step}]"


@dataclass(frozen=True, eq=False)
class Gather(Affine):
    """Selects entries along ``axis`` with a constant integer index tensor (ONNX Gather)."""

    axis: int = 0
    index: Tensor = field(repr=False, default=None)
    kind: ClassVar[str] = "gather"

    def apply(self, xs, offset=True):
        x = xs[0]
        axis = len(self.lead(x)) + self.axis
        y = torch.index_select(x, axis, self.index.reshape(-1))
        return y.reshape(*x.shape[:axis], *self.index.shape, *x.shape[axis + 1 :])


@dataclass(frozen=True, eq=False)
class Reduce(Affine):
    """Sum or mean over sample axes (GlobalAveragePool, ReduceMean, ReduceSum)."""

    mean: bool = True
    axes: tuple[int, ...] = ()
    keepdim: bool = False
    kind: ClassVar[str] = "reduce"

    @property
    def terms(self):
        return math.prod(self.in_shapes[0][a] for a in self.axes) + self.mean

    def apply(self, xs, offset=True):
        n = len(self.lead(xs[0]))
        axes = [n + a for a in self.axes]
        reduce = torch.mean if self.mean else torch.sum
        return reduce(xs[0], dim=axes, keepdim=self.keepdim)

    def describe(self):
        return f"{'mean' if self.mean else 'sum'} over axes {list(self.axes)}"
