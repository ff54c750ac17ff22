"""The layer list: a piecewise-linear network as an immutable list of layers in topological order.

Every layer works on *one model call* as the model was traced: ``shape`` is the exact shape the
model produced for that layer when given one input (batch axis included when the model has one).
lrcert prepends its own leading axes to that shape: ``(batch,)`` when evaluating values and
``(batch, directions)`` when pushing tangents, so each layer's ``apply`` accepts any number of
leading axes and broadcasts over them.

Affine layers compute ``y = A(x) + c``; ``apply(xs, offset=False)`` drops ``c``, which turns the
layer into its Jacobian-vector product. Nonlinear layers (ReLU, LeakyReLU, max-pool) are the
only places where the activation pattern, and so the linear region, is decided.

>>> import torch
>>> net = Network((Input("input", (), (2,), ()),
...                Dense("fc", (0,), (2,), ((2,),), torch.eye(2), torch.tensor([1., -1.])),
...                ReLU("relu", (1,), (2,), ((2,),))), output=2, sample_shape=(2,))
>>> net.run(torch.tensor([[0.5, 0.5]]))
tensor([[1.5000, 0.0000]])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Callable, ClassVar, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import LrcertError
from ..runtime.devices import exact_float32

#: The dual norm each p needs, as the order of ``torch.linalg.vector_norm`` (1/p + 1/q = 1): a
#: ball of radius r in norm p reaches the face z + g·δ = 0 at r = |z| / ‖g‖_q. p = 1 → ‖g‖∞,
#: p = 2 → ‖g‖₂ (the engine accumulates it squared over chunks of directions), p = ∞ → ‖g‖₁.
DUAL_ORDER = {"l1": math.inf, "l2": 2, "linf": 1}

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Step:
    """Where one step's nonlinearity sits: recurrence ``name``, stacked layer, direction, time step."""

    recurrence: str
    layer: int
    direction: str
    t: int


@dataclass(frozen=True)
class Recurrence:
    """A recurrence as ``lrcert inspect`` shows it: ``layers`` stacked layers of ``hidden`` units,
    run in ``directions`` over ``steps`` frames of ``features`` numbers, with ``activation``."""

    name: str
    layers: int
    hidden: int
    directions: tuple[str, ...]
    steps: int
    features: int
    activation: str


@dataclass(frozen=True, eq=False)
class Layer:
    """One node: ``inputs`` index earlier layers (0 is the model input)."""

    name: str
    inputs: tuple[int, ...]
    shape: Shape
    in_shapes: tuple[Shape, ...]
    kind: ClassVar[str] = "layer"

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def lead(self, x: Tensor, i: int = 0) -> Shape:
        """The leading axes lrcert added in front of input ``i``'s traced shape."""
        return tuple(x.shape[: x.dim() - len(self.in_shapes[i])])

    def to(self, device: torch.device | str, dtype: torch.dtype, memo: dict | None = None) -> "Layer":
        """A copy with floating-point tensors in ``dtype`` and all tensors on ``device`` (``memo``:
        tensors shared by several layers, an RNN's weights at every step, are converted once)."""
        return self._mapped(lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype), memo, False)

    def _mapped(self, fn: Callable[[Tensor], Tensor], memo: dict | None, floating_only: bool) -> "Layer":
        """The layer with ``fn`` applied to its tensors (to its floating-point ones only, with
        ``floating_only``), each tensor object once per ``memo`` (shared weights stay shared)."""
        memo = {} if memo is None else memo
        changes = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor) and (value.is_floating_point() or not floating_only):
                key = _same_values(value)
                if key not in memo:
                    memo[key] = (value, fn(value))  # (the source kept: its memory stays its own)
                changes[f.name] = memo[key][1]
        return replace(self, **changes)

    def describe(self) -> str:
        """Short human description of the layer's parameters (for ``lrcert inspect``)."""
        return ""

    def absolute(self, memo: dict | None = None) -> "Layer":
        """The layer with every parameter replaced by its absolute value.

        Applied to |x|, it bounds the magnitude of the terms summed into each output: the scale
        against which float rounding of that output is measured.
        """
        return self._mapped(torch.abs, memo, True)


def _same_values(t: Tensor) -> tuple:
    """A key equal for tensors that are views of the same memory with the same layout (an RNN's
    weight as each step's layer holds it); tensors without memory (meta) are keyed by identity."""
    pointer = t.untyped_storage().data_ptr() if t.device.type != "meta" else 0
    if pointer == 0:
        return ("object", id(t))
    return (pointer, t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype, t.device)


def _on_core(x: Tensor, core_rank: int, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """Apply ``fn`` (which wants one batch axis) to the trailing ``core_rank`` axes of ``x``."""
    outer = x.shape[: x.dim() - core_rank]
    y = fn(x.reshape(-1, *x.shape[x.dim() - core_rank :]))
    return y.reshape(*outer, *y.shape[1:])


def _align(x: Tensor, in_rank: int, out_rank: int) -> Tensor:
    """Insert singleton axes after the leading axes so a rank-``in_rank`` sample broadcasts like the trace."""
    if in_rank >= out_rank:
        return x
    n_lead = x.dim() - in_rank
    return x.reshape(*x.shape[:n_lead], *([1] * (out_rank - in_rank)), *x.shape[n_lead:])


class Affine(Layer):
    """``y = A(x) + c`` for a linear map ``A`` and a constant ``c``."""

    def apply(self, xs: Sequence[Tensor], offset: bool = True) -> Tensor:
        raise NotImplementedError

    @property
    def terms(self) -> int:
        """The most products summed into one output of ``A`` (0: ``A`` only moves or copies
        entries). Floating-point ``A(x)`` is then within γ_terms · (|A| |x|) of the exact one."""
        return 0


class Nonlinearity(Layer):
    """A piecewise-linear nonlinearity whose pieces define the linear region."""

    def apply(self, *xs: Tensor) -> Tensor:
        raise NotImplementedError

    def pieces(self, *xs: Tensor) -> Tensor:
        """Which piece each unit is on, (lead..., n): bools (one per face: z above it) or, for a
        max-pool, each window's arg-max. Equal pieces everywhere ⇔ the same linear region."""
        raise NotImplementedError

    def apply_and_pieces(self, *xs: Tensor) -> tuple[Tensor, Tensor]:
        """The output and a record of the pieces, equal for two inputs exactly where :meth:`pieces`
        is (a max-pool gives its arg-maxes as places in the plane: one fast kernel for both)."""
        return self.apply(*xs), self.pieces(*xs)

    @property
    def face_count(self) -> int:
        """Faces per input (the length of ``faces``'s last axis): one per unit here."""
        return self.size


@dataclass(frozen=True, eq=False)
class Input(Layer):
    kind: ClassVar[str] = "input"


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
        y = _align(xs[0], len(self.in_shapes[0]), len(self.shape))
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
            term = _align(x, len(shape), len(self.shape))
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
        x = _align(xs[0], len(self.in_shapes[0]), len(self.shape))
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


class Elementwise(Nonlinearity):
    """A piecewise-linear function of each unit alone. Its kinks b₁ < … < b_k split the line into
    pieces; each kink is a face z − b = 0 (of a unit's kinks, the nearest can bind first, so a unit
    contributes min_j |z − b_j| / ‖∇ₓz‖_q). ``faces`` lays them out one block of units per kink."""

    def kinks(self) -> tuple[float | Tensor, ...]:
        raise NotImplementedError

    def gain(self, z: Tensor) -> Tensor:
        """The slope of each unit's current piece: the frozen network multiplies tangents by it."""
        raise NotImplementedError

    @property
    def face_count(self):
        return self.size * len(self.kinks())

    def faces(self, z: Tensor) -> Tensor:
        """``z − b`` for every kink b, (lead..., k·n): block j holds every unit's distance to kink j."""
        lead = self.lead(z)
        blocks = [(z if isinstance(b, float) and b == 0 else z - b).reshape(*lead, -1) for b in self.kinks()]
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=-1)

    def pieces(self, z: Tensor) -> Tensor:
        return self.faces(z) > 0

    def offset_bound(self) -> float | Tensor:
        """A bound on |f(z) − gain·z|, the constant part of the current piece (rounding scales)."""
        return 0.0


@dataclass(frozen=True, eq=False)
class ReLU(Elementwise):
    """``y = x`` if ``x > 0`` else ``negative_slope · x``; each unit is the face ``z = 0``. A tensor
    ``negative_slope`` (broadcast over the layer's shape) is PReLU's per-channel slope."""

    negative_slope: float | Tensor = 0.0

    @property
    def kind(self) -> str:  # type: ignore[override]
        if isinstance(self.negative_slope, Tensor):
            return "prelu"
        return "relu" if self.negative_slope == 0 else "leaky_relu"

    def kinks(self):
        return (0.0,)

    def apply(self, x):
        if isinstance(self.negative_slope, Tensor):
            return torch.where(x > 0, x, x * self.negative_slope)
        return torch.relu(x) if self.negative_slope == 0 else F.leaky_relu(x, self.negative_slope)

    def gain(self, z: Tensor) -> Tensor:
        if isinstance(self.negative_slope, float) and self.negative_slope == 0:
            return (z > 0).to(z.dtype)
        # the slope as a tensor of z's dtype: two Python numbers would make a float32 tensor (0.3 → 0.30000001)
        slope = self.negative_slope.to(z.dtype) if isinstance(self.negative_slope, Tensor) else torch.full_like(z, self.negative_slope)
        return torch.where(z > 0, 1.0, slope)

    def describe(self):
        if isinstance(self.negative_slope, Tensor):
            return f"{self.negative_slope.numel()} slopes"
        return "" if self.negative_slope == 0 else f"slope {self.negative_slope:g}"


@dataclass(frozen=True, eq=False)
class Clip(Elementwise):
    """``y = min(max(x, low), high)`` (Clip, Hardtanh, ReLU6, a max or min with a constant): kinks
    at the finite bounds, slope 1 between them and 0 outside. Bounds are numbers (±inf: none) or
    constant tensors broadcast over the layer's shape."""

    low: float | Tensor = -math.inf
    high: float | Tensor = math.inf
    kind: ClassVar[str] = "clip"

    def kinks(self):
        return tuple(b for b in (self.low, self.high) if isinstance(b, Tensor) or math.isfinite(b))

    def apply(self, x):
        if isinstance(self.low, Tensor) or math.isfinite(self.low):
            x = torch.clamp(x, min=self.low)
        if isinstance(self.high, Tensor) or math.isfinite(self.high):
            x = torch.clamp(x, max=self.high)
        return x

    def gain(self, z: Tensor) -> Tensor:
        return ((z > self.low) & (z < self.high)).to(z.dtype)

    def offset_bound(self):
        return sum(b.abs() if isinstance(b, Tensor) else abs(b) for b in self.kinks())

    def kink_names(self) -> tuple[str, ...]:
        """``low``/``high`` for each of :meth:`kinks`, in order."""
        return tuple(name for name, b in (("low", self.low), ("high", self.high)) if isinstance(b, Tensor) or math.isfinite(b))

    def describe(self):
        shown = ["tensor" if isinstance(b, Tensor) else f"{b:g}" for b in (self.low, self.high)]
        return f"[{shown[0]}, {shown[1]}]"


@dataclass(frozen=True, eq=False)
class Abs(Elementwise):
    """``y = |x|``: slope −1 below 0, 1 above; each unit is the face ``z = 0``."""

    kind: ClassVar[str] = "abs"

    def kinks(self):
        return (0.0,)

    def apply(self, x):
        return x.abs()

    def gain(self, z: Tensor) -> Tensor:
        return (z > 0).to(z.dtype) * 2 - 1


@dataclass(frozen=True, eq=False)
class Maximum(Nonlinearity):
    """``y = max(a, b)`` (or ``min``) of two input-dependent tensors, elementwise: a max-pool window
    of two, whose face is ``a − b = 0`` with gradient ∇a − ∇b."""

    minimum: bool = False

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "min" if self.minimum else "max"

    def apply(self, a, b):
        a, b = _align(a, len(self.in_shapes[0]), len(self.shape)), _align(b, len(self.in_shapes[1]), len(self.shape))
        return torch.minimum(a, b) if self.minimum else torch.maximum(a, b)

    def select(self, first: Tensor, a: Tensor, b: Tensor) -> Tensor:
        """``a`` where ``first``, else ``b``: the output (or its tangent, or its magnitude) on the
        frozen pattern."""
        a, b = _align(a, len(self.in_shapes[0]), len(self.shape)), _align(b, len(self.in_shapes[1]), len(self.shape))
        return torch.where(first, a, b)

    def faces(self, a: Tensor, b: Tensor) -> Tensor:
        """``a − b`` per unit, (lead..., n)."""
        lead = torch.broadcast_shapes(self.lead(a, 0), self.lead(b, 1))
        gap = _align(a, len(self.in_shapes[0]), len(self.shape)) - _align(b, len(self.in_shapes[1]), len(self.shape))
        return gap.expand(*lead, *self.shape).reshape(*lead, -1)

    def first_wins(self, a: Tensor, b: Tensor) -> Tensor:
        """Where ``a`` is the output (ties go to a), broadcast over the layer's shape."""
        a, b = _align(a, len(self.in_shapes[0]), len(self.shape)), _align(b, len(self.in_shapes[1]), len(self.shape))
        return a <= b if self.minimum else a >= b

    def pieces(self, a, b):
        return self.faces(a, b) > 0


@dataclass(frozen=True, eq=False)
class MaxPool2d(Nonlinearity):
    """2-d max pooling; each window's arg-max defines faces ``z_win − z_l = 0`` (paper, appendix E)."""

    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False
    kind: ClassVar[str] = "maxpool"

    def apply(self, x):
        return _on_core(
            x, 3, lambda t: F.max_pool2d(t, self.kernel, self.stride, self.padding, self.dilation, self.ceil_mode)
        )

    def apply_and_pieces(self, x):
        core = x.reshape(-1, *x.shape[x.dim() - 3 :])
        y, where = F.max_pool2d(core, self.kernel, self.stride, self.padding, self.dilation, self.ceil_mode, return_indices=True)
        lead = x.shape[: x.dim() - 3]
        return y.reshape(*lead, *y.shape[1:]), where.reshape(*lead, -1)

    @property
    def window_size(self) -> int:
        return self.kernel[0] * self.kernel[1]

    @property
    def face_count(self):
        return self.size * self.window_size

    def window_view(self, x: Tensor, fill: float) -> Tensor:
        """``(..., C, kh, kw, out_h, out_w)``: every window's elements as a strided view of ``x``
        padded with ``fill`` (the padding is the only copy).

        Values use ``fill=-inf`` (padding never wins), tangents ``fill=0``.
        """
        (ph, pw), (oh, ow) = self.padding, self.shape[-2:]
        (sh, sw), (dh, dw), (kh, kw) = self.stride, self.dilation, self.kernel
        h, w = self.in_shapes[0][-2:]
        span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
        extra_h = max(0, (oh - 1) * sh + span_h - (h + 2 * ph))
        extra_w = max(0, (ow - 1) * sw + span_w - (w + 2 * pw))
        padded = F.pad(x, [pw, pw + extra_w, ph, ph + extra_h], value=fill) if ph or pw or extra_h or extra_w else x
        view = padded.unfold(-2, span_h, sh).unfold(-2, span_w, sw)[..., :oh, :ow, ::dh, ::dw]
        return view.movedim((-2, -1), (-4, -3))

    def windows(self, x: Tensor, fill: float) -> Tensor:
        """``(..., C, kh·kw, out_h·out_w)``: :meth:`window_view` as one contiguous tensor."""
        view = self.window_view(x, fill)
        return view.reshape(*view.shape[:-4], self.window_size, -1)

    def winner_positions(self, argmax: Tensor) -> Tensor:
        """For each window's arg-max (``(..., C, 1, out_h·out_w)``, flat over the window), its
        element's flat position in the unpadded input plane (h·w): where a tangent's winner is."""
        (ph, pw), (oh, ow) = self.padding, self.shape[-2:]
        (sh, sw), (dh, dw), kw = self.stride, self.dilation, self.kernel[1]
        window = torch.arange(oh * ow, device=argmax.device)
        row = (window // ow) * sh - ph + (argmax // kw) * dh
        column = (window % ow) * sw - pw + (argmax % kw) * dw
        return row * self.in_shapes[0][-1] + column

    def pieces(self, x):
        return self.windows(x, float("-inf")).argmax(dim=-2)

    def faces(self, x: Tensor) -> Tensor:
        """``z_win − z_l`` for every element l of every window, (lead..., faces): the arg-max's own
        entry is 0 with gradient 0 (no face), padding gives +inf."""
        windows = self.windows(x, float("-inf"))
        return (windows.max(dim=-2, keepdim=True).values - windows).reshape(*self.lead(x), -1)

    def describe(self):
        return f"{self.kernel[0]}×{self.kernel[1]} stride {list(self.stride)} padding {list(self.padding)}"


@dataclass(frozen=True, eq=False)
class Network:
    """The layer list. ``layers[0]`` is the :class:`Input`; ``output`` indexes the output layer.

    ``sample_shape`` is the shape of one data row (the input shape without its batch axis);
    rows are reshaped to ``layers[0].shape`` before the first layer. ``notes`` records what the
    loader changed (for instance a dropped trailing softmax). ``rows_per_call`` is the batch the
    traced model call holds inside: 1, or B for a model that fixes its batch to B > 1 and runs
    each row padded with zero rows. ``inputs``, for a model with several inputs, names them and
    their row shapes in the order their flattened rows are joined into one row (the joint space
    lrcert certifies in); empty for one input. ``recurrences`` are the recurrent layers the list
    holds unrolled, and ``steps`` names the step (recurrence, layer, direction, t) of each of their
    nonlinear layers, by layer name (:mod:`lrcert.models.recurrent`).
    """

    layers: tuple[Layer, ...]
    output: int
    sample_shape: Shape
    notes: tuple[str, ...] = ()
    source: str = ""
    rows_per_call: int = 1
    inputs: tuple[tuple[str, Shape], ...] = ()
    recurrences: tuple[Recurrence, ...] = ()
    steps: Mapping[str, Step] = field(default_factory=dict)

    def __post_init__(self):
        if not self.layers or not isinstance(self.layers[0], Input):
            raise LrcertError("a layer list must start with its Input layer", internal=True)
        for i, layer in enumerate(self.layers[1:], 1):
            if any(not 0 <= j < i for j in layer.inputs):
                raise LrcertError(f"layer {layer.name!r} reads a later layer", internal=True)
            declared = tuple(self.layers[j].shape for j in layer.inputs)
            if declared != layer.in_shapes:
                raise LrcertError(
                    f"layer {layer.name!r} expects inputs {layer.in_shapes} but gets {declared}", internal=True
                )
        if math.prod(self.sample_shape) != math.prod(self.input_shape):
            raise LrcertError(f"sample shape {self.sample_shape} does not fit input {self.input_shape}", internal=True)
        self._check_shapes()

    @property
    def input_shape(self) -> Shape:
        return self.layers[0].shape

    @property
    def has_batch_axis(self) -> bool:
        """Whether the traced model call carries a leading batch axis (of size 1)."""
        return len(self.input_shape) == len(self.sample_shape) + 1

    @property
    def output_shape(self) -> Shape:
        """The shape of one input's output (batch axis dropped when the model has one)."""
        shape = self.layers[self.output].shape
        return shape[1:] if self.has_batch_axis and shape[:1] == (1,) else shape

    @property
    def input_size(self) -> int:
        return math.prod(self.input_shape)

    @property
    def nonlinear(self) -> list[int]:
        return [i for i, layer in enumerate(self.layers) if isinstance(layer, Nonlinearity)]

    def _tensors(self):
        for layer in self.layers:
            for f in fields(layer):
                value = getattr(layer, f.name)
                if isinstance(value, Tensor):
                    yield value

    @property
    def dtype(self) -> torch.dtype:
        """The parameters' floating-point dtype (float32 for a layer list without any)."""
        return next((t.dtype for t in self._tensors() if t.is_floating_point()), torch.float32)

    @property
    def device(self) -> torch.device:
        """Where the layers' tensors are (the CPU for a layer list without any)."""
        return next((t.device for t in self._tensors()), torch.device("cpu"))

    @property
    def units(self) -> int:
        """Nonlinear units: ReLU/LeakyReLU units plus max-pool outputs."""
        return sum(self.layers[i].size for i in self.nonlinear)

    @property
    def faces(self) -> int:
        """Faces per input: every nonlinear layer's (a max-pool has one per window element)."""
        return sum(self.layers[i].face_count for i in self.nonlinear)

    def recurrence_faces(self, name: str) -> int:
        """Faces per input of the recurrence ``name``: the units of every step's nonlinearity."""
        return sum(layer.face_count for layer in self.layers
                   if (step := self.steps.get(layer.name)) is not None and step.recurrence == name)

    def reverse_bytes_per_row(self, dtype: torch.dtype) -> int:
        """Memory one input's reverse pass holds in ``dtype``: its activations and their autograd
        graph, about three copies of every layer's output."""
        return 3 * (torch.finfo(dtype).bits // 8) * sum(layer.size for layer in self.layers)

    def last_uses(self, needed: Sequence[int] | None = None) -> dict[int, int]:
        """For each layer, the index of the last layer (among ``needed``) that reads it."""
        last: dict[int, int] = {}
        for i in needed if needed is not None else range(len(self.layers)):
            for j in self.layers[i].inputs:
                last[j] = i
        return last

    def vary(self, names: Sequence[str]) -> "Network":
        """The network certified along the inputs ``names`` only, the model's other inputs held at
        each row's values (a :class:`Hold` after the input): radii, faces, directions and adversarial
        points stay in the joint space, and move only the varied coordinates."""
        known = [name for name, _ in self.inputs]
        if not known:
            raise LrcertError("--vary is for models with several inputs; this one has one", fix="leave out --vary")
        if isinstance(self.layers[1], Hold):
            raise LrcertError("this network already varies only some inputs", fix="call vary once, with every name")
        unknown = [name for name in names if name not in known]
        if unknown or not names:
            raise LrcertError(f"the model has no input {unknown[0] if unknown else '(none)'!r} (its inputs: {', '.join(known)})",
                              fix="name one of its inputs")
        mask, start = torch.zeros(self.input_size, dtype=self.dtype, device=self.device), 0
        for name, shape in self.inputs:
            if name in names:
                mask[start : start + math.prod(shape)] = 1
            start += math.prod(shape)
        order = tuple(name for name in known if name in names)
        hold = Hold("lrcert_hold", (0,), self.input_shape, (self.input_shape,), mask=mask.reshape(self.input_shape), varied=order)
        held = ", ".join(name for name in known if name not in names)
        return self._first(hold, f"certified along {', '.join(order)} only: {held} held at each row's values")

    def normalized(self, mean: Sequence[float], std: Sequence[float]) -> "Network":
        """The network reading inputs before ``Normalize(mean, std)`` (per channel, the first axis
        of a row; one value: every entry): ``(x − mean) / std`` becomes its first layer, so radii,
        prediction radii and adversarial points are in the units of the data as stored (pixels)."""
        if self.inputs:
            raise LrcertError("--mean/--std normalise a model of one input; this one has several", fix="leave them out")
        channels = self.sample_shape[0] if self.sample_shape else 1
        for option, values in (("--mean", mean), ("--std", std)):
            if len(values) not in (1, channels):
                raise LrcertError(f"{option} has {len(values)} values, the model's input has {channels} channels",
                                  fix=f"give one value, or one per channel ({channels})")
        if any(not v > 0 for v in std) or not all(math.isfinite(v) for v in (*mean, *std)):
            raise LrcertError(f"--std holds {min(std):g}: every std must be positive and finite", fix="give the std the model was trained with")
        n = max(len(mean), len(std))
        shape = (*[1] * (len(self.input_shape) - len(self.sample_shape)), n, *[1] * (len(self.sample_shape) - 1))
        # the constants as given, 1/std and −mean/std in float64 until the engine casts (as the loader keeps
        # constants it derives)
        std_t, mean_t = (torch.tensor(v, dtype=torch.float64, device=self.device).expand(n) for v in (std, mean))
        scale, shift = (v.reshape(shape) for v in (1 / std_t, -mean_t / std_t))
        layer = ElementwiseAffine("lrcert_normalize", (0,), self.input_shape, (self.input_shape,), scale=scale, shift=shift)
        shown = lambda v: ", ".join(f"{x:g}" for x in v)  # noqa: E731
        return self._first(layer, f"inputs normalised by lrcert as (x − mean) / std, mean {shown(mean)}, std {shown(std)}: "
                                  "radii and adversarial points are in the data's own units")

    def _first(self, layer: Layer, note: str) -> "Network":
        """The network with ``layer`` (reading the input) inserted first, and ``note``."""
        moved = (replace(later, inputs=tuple(j + 1 for j in later.inputs)) for later in self.layers[1:])
        return replace(self, layers=(self.layers[0], layer, *moved), output=self.output + 1, notes=(*self.notes, note))

    @property
    def dimensions(self) -> int:
        """D: the input coordinates a certificate moves (all, or those :meth:`vary` leaves)."""
        varied = self.varied
        return self.input_size if varied is None else len(varied)

    @property
    def varied(self) -> Tensor | None:
        """The flat positions of the input coordinates a certificate moves, where :meth:`vary` holds
        the others; None where every coordinate moves."""
        if len(self.layers) > 1 and isinstance(self.layers[1], Hold):
            return self.layers[1].mask.reshape(-1).nonzero()[:, 0]
        return None

    def absolute(self) -> "Network":
        """Every layer with absolute parameters (see :meth:`Layer.absolute`)."""
        memo: dict = {}
        return self._with_layers(layer.absolute(memo) for layer in self.layers)

    def to(self, device: torch.device | str, dtype: torch.dtype) -> "Network":
        memo: dict = {}
        return self._with_layers(layer.to(device, dtype, memo) for layer in self.layers)

    def _with_layers(self, layers) -> "Network":
        """This network with ``layers``, the same layers with other parameters: what the checks
        of a new network (``__post_init__``, a pass of the whole network) found holds still."""
        copy = object.__new__(Network)
        for f in fields(self):
            object.__setattr__(copy, f.name, getattr(self, f.name))
        object.__setattr__(copy, "layers", tuple(layers))
        return copy

    def run(
        self,
        x: Tensor,
        nonlinear: Callable[[int, Nonlinearity, Tensor], Tensor] | None = None,
        check_shapes: bool = False,
        until: int | None = None,
        affine: Callable[[int, Affine, list[Tensor]], Tensor] | None = None,
    ) -> Tensor:
        """Evaluate on a batch ``x`` of shape ``(B, *sample_shape)``; returns ``(B, *output_shape)``,
        or with ``until`` the values of that layer, ``(B, *its shape)``, computing no further.

        ``nonlinear(i, layer, *z)``, when given, evaluates nonlinear layer ``i`` on its inputs ``z``
        (the engine uses it to record the activation pattern on the way); ``affine(i, layer, ins)``
        likewise each affine layer (the rounding bound records each one's inputs).
        """
        target = self.output if until is None else until
        values = {0: x.reshape(x.shape[0], *self.input_shape)}
        last = self.last_uses()
        for i, layer in enumerate(self.layers[1 : target + 1], 1):
            ins = [values[j] for j in layer.inputs]
            if isinstance(layer, Affine):
                values[i] = layer.apply(ins) if affine is None else affine(i, layer, ins)
            elif nonlinear is not None:
                values[i] = nonlinear(i, layer, *ins)
            else:
                values[i] = layer.apply(*ins)
            if check_shapes and tuple(values[i].shape[1:]) != layer.shape:
                raise LrcertError(
                    f"layer {layer.name!r} produces {tuple(values[i].shape[1:])}, declared {layer.shape}",
                    internal=True,
                )
            for j in set(layer.inputs):
                if last.get(j) == i and j != target:
                    del values[j]
        return values[target]

    def _check_shapes(self) -> None:
        with torch.no_grad(), exact_float32():
            self.run(torch.zeros(1, *self.sample_shape, dtype=self.dtype, device=self.device), check_shapes=True)
