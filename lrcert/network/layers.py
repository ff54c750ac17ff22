"""The layers' common ground: :class:`Layer` (a node of the layer list, its shape as traced, its
tensors mapped to a device, a dtype or their absolute values), the two kinds every layer is —
:class:`Affine` (``y = A(x) + c``) and :class:`Nonlinearity` (where the pattern is decided) —
the :class:`Input`, and the helpers that apply a layer over lrcert's leading axes."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Callable, ClassVar, Sequence

import torch
from torch import Tensor


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


def align(x: Tensor, in_rank: int, out_rank: int) -> Tensor:
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
