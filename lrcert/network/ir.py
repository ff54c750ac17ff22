"""The layer list: a piecewise-linear network as an immutable list of layers in topological order.

Every layer works on *one model call* as the model was traced: ``shape`` is the exact shape the
model produced for that layer when given one input (batch axis included when the model has one).
lrcert prepends its own leading axes to that shape: ``(batch,)`` when evaluating values and
``(batch, directions)`` when pushing tangents, so each layer's ``apply`` accepts any number of
leading axes and broadcasts over them.

Affine layers compute ``y = A(x) + c``; ``apply(xs, offset=False)`` drops ``c``, which turns the
layer into its Jacobian-vector product. Nonlinear layers (ReLU, LeakyReLU, max-pool) are the
only places where the activation pattern, and so the linear region, is decided. The layers live
in :mod:`.layers` (what every layer is), :mod:`.affine` and :mod:`.nonlinear`; this module holds
the :class:`Network` and names them all (``ir.Dense``, ``ir.ReLU``, …).

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
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

from ..errors import LrcertError
from ..runtime.devices import exact_float32
from .affine import (Concat, Convolution, Dense, ElementwiseAffine, Expand, Gather, Hold, LinearPool, Pad, Permute,
                     Reduce, Reshape, Slice, Sum)
from .layers import Affine, Input, Layer, Nonlinearity, Recurrence, Shape, Step, align
from .nonlinear import Abs, Clip, Elementwise, Maximum, MaxPool2d, ReLU

__all__ = ["DUAL_ORDER", "Network", "Layer", "Affine", "Nonlinearity", "Input", "Step", "Recurrence", "Shape", "align",
           "Dense", "Convolution", "LinearPool", "Pad", "ElementwiseAffine", "Sum", "Hold", "Concat", "Reshape", "Expand",
           "Permute", "Slice", "Gather", "Reduce", "Elementwise", "ReLU", "Clip", "Abs", "Maximum", "MaxPool2d"]

#: The dual norm each p needs, as the order of ``torch.linalg.vector_norm`` (1/p + 1/q = 1): a
#: ball of radius r in norm p reaches the face z + g·δ = 0 at r = |z| / ‖g‖_q. p = 1 → ‖g‖∞,
#: p = 2 → ‖g‖₂ (the engine accumulates it squared over chunks of directions), p = ∞ → ‖g‖₁.
DUAL_ORDER = {"l1": math.inf, "l2": 2, "linf": 1}


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
