"""The nonlinear layers, where the activation pattern and so the linear region is decided: unit
activations (ReLU and its leaky and parametric forms, clips, Abs), maxima of two tensors and
max-pools, each with its faces (``faces``), pieces (``pieces``) and frozen slopes (``gain``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .layers import Nonlinearity, _on_core, align


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
        a, b = align(a, len(self.in_shapes[0]), len(self.shape)), align(b, len(self.in_shapes[1]), len(self.shape))
        return torch.minimum(a, b) if self.minimum else torch.maximum(a, b)

    def select(self, first: Tensor, a: Tensor, b: Tensor) -> Tensor:
        """``a`` where ``first``, else ``b``: the output (or its tangent, or its magnitude) on the
        frozen pattern."""
        a, b = align(a, len(self.in_shapes[0]), len(self.shape)), align(b, len(self.in_shapes[1]), len(self.shape))
        return torch.where(first, a, b)

    def faces(self, a: Tensor, b: Tensor) -> Tensor:
        """``a − b`` per unit, (lead..., n)."""
        lead = torch.broadcast_shapes(self.lead(a, 0), self.lead(b, 1))
        gap = align(a, len(self.in_shapes[0]), len(self.shape)) - align(b, len(self.in_shapes[1]), len(self.shape))
        return gap.expand(*lead, *self.shape).reshape(*lead, -1)

    def first_wins(self, a: Tensor, b: Tensor) -> Tensor:
        """Where ``a`` is the output (ties go to a), broadcast over the layer's shape."""
        a, b = align(a, len(self.in_shapes[0]), len(self.shape)), align(b, len(self.in_shapes[1]), len(self.shape))
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
