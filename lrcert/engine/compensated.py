"""The precision flag's last stage: a face's exact value, to 80 bits or more (float64 keeps 53).

Where the a-posteriori bound E (:mod:`.roundoff`) cannot put a binding face's computed value ẑ
well away from 0, this stage computes the exact value z of that face — the network frozen at the
input's float64 activation pattern, evaluated at the float64 input without any rounding — as
hi + lo with a bound err on |z − (hi + lo)|. The flag is lifted where the reported value is
proven within 1/PRECISION_MARGIN of it, |ẑ − (hi + lo)| + err ≤ |ẑ| / PRECISION_MARGIN: then z
has ẑ's sign and ε̂ = |ẑ| / ‖g‖ is the exact value's to 0.1 % (:meth:`.results.Outcome`).

Every tensor is carried as a :class:`Value`: the float64 value the engine computes (``plain``,
whose signs freeze the network), and hi + lo, whose layer l adds at most ``err_l``
(elementwise) to what the exact layer makes of its input hi + lo. The steps are error-free
transformations or exact products:

* ``two_sum(a, b) = (s, e)``, s + e = a + b exactly (Knuth); ``two_prod(a, b) = (p, e)``,
  p + e = a·b exactly (Dekker, Veltkamp's split; refused near underflow, where it is not).
  Adding values sums the hi parts by ``two_sum`` and the rest, e + lo_a + lo_b, in two
  roundings: γ₂ (|e| + |lo_a| + |lo_b|). A product by a constant c likewise.
* A dense layer or convolution L_W(h): W and hi are cut into WEIGHT_SLICES and INPUT_SLICES
  slices on fixed-point grids β bits apart (W = Σ W_a + r_W, hi = Σ h_b + r_h, each slice an integer |k| ≤ 2^β times
  its grid's quantum). With n products per output and 2β + ⌈log₂ n⌉ ≤ 53, every slice product
  L_{W_a}(h_b) is an integer multiple of its quantum below 2⁵³, so any order of summation
  computes it exactly (checked: a result off its grid is refused). They, the bias and L_W(lo)
  (in float64, within γₙ L_|W|(|lo|)) are summed by ``two_sum``, whose m errors e are added in
  float64, within γ_m Σ|e|. What the slices leave out is bounded: err_l = L_|W|(|r_h| + γₙ |lo|)
  + L_|r_W|(|hi| + |r_h|) + γ_m Σ|e|: r_h is below 2^(−4β) (β ≥ 20) of the input's largest entry.
* Moves (reshape, slice, pad, concat, gather, ...) only copy: exact. Unit activations, maxima and
  max-pools are frozen at the plain pattern: ReLU, clips and Abs multiply by a slope of 0 or ±1
  (exact; a clipped unit is its bound), LeakyReLU and PReLU by their slope (a product); a max
  selects the plain winner. A face is z − b for a kink b, or the gap between two entries.

The frozen network is affine, so, as in :mod:`.roundoff`, z − (hi + lo) = Σ_l J_l · η_l exactly
(J_l = ∂z/∂y_l, |η_l| ≤ err_l), and err = 2 Σ_l |Ĵ_l| · err_l, Ĵ_l from one reverse pass of the
plain computation; its own rounding is of second order, covered by the factor 2. (Carrying err_l
forward through |W| instead, as interval arithmetic does, is rigorous at any order but grows
about tenfold per convolution: 10⁻²⁰ of the value after a ResNet-18, measured, 10⁺²² after a
ResNet-50.) A layer this stage does not compute (an average pool or a mean: a division) raises
:class:`Unsupported`, and the face stays flagged.

Cost, per face still flagged after :mod:`.roundoff`: about 12 + 4 value passes and one
reverse pass of that one input, on its device, with a few waits for it per layer (the grid
checks): flagged faces only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..network import ir
from . import precision, roundoff

#: Slices of a dense layer's or convolution's input and weights in its exact products (their
#: product: the products per layer). Four of the input's cover 80 bits or more below its largest
#: entry, enough for float64 entries 2⁻²⁷ of it (measured on a ResNet-18: err 10⁻²⁵ of the face,
#: against 10⁻¹⁶ with three); weights, most of them float32 numbers, need three.
INPUT_SLICES, WEIGHT_SLICES = 4, 3
U = 2.0**-53
GAMMA2 = precision.gamma(2, U)
#: Layers that only copy entries (a pad's fill is exact too).
MOVES = (ir.Pad, ir.Hold, ir.Concat, ir.Reshape, ir.Expand, ir.Permute, ir.Slice, ir.Gather)
_SPLITTER = 2.0**27 + 1  # Veltkamp's constant for float64
_SMALLEST_EXACT_PRODUCT = 2.0**-960  # below this a product's error term may underflow
_LARGEST_SPLIT = 2.0**995  # above this Veltkamp's split overflows


class Unsupported(Exception):
    """A layer (or a value) this stage cannot compute with its guarantee: the face stays flagged."""


def two_sum(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """(s, e) with s = fl(a + b) and s + e = a + b exactly (Knuth).

    >>> s, e = two_sum(torch.tensor([1.0], dtype=torch.float64), torch.tensor([2.0**-60], dtype=torch.float64))
    >>> s.item(), e.item() == 2.0**-60
    (1.0, True)
    """
    s = a + b
    b_virtual = s - a
    return s, (a - (s - b_virtual)) + (b - b_virtual)


def two_prod(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """(p, e) with p = fl(a·b) and p + e = a·b exactly (Dekker), where no nonzero |p| is below
    2⁻⁹⁶⁰ and no factor above 2⁹⁹⁵ (else :class:`Unsupported`: e could underflow, the split overflow)."""
    p = a * b
    tiny = (p != 0) & (p.abs() < _SMALLEST_EXACT_PRODUCT)
    if bool(tiny.any() | (a.abs() > _LARGEST_SPLIT).any() | (b.abs() > _LARGEST_SPLIT).any()):
        raise Unsupported("a product near float64's underflow or overflow")
    a_hi, a_lo = _split(a)
    b_hi, b_lo = _split(b)
    return p, a_lo * b_lo - (((p - a_hi * b_hi) - a_lo * b_hi) - a_hi * b_lo)


def _split(a: Tensor) -> tuple[Tensor, Tensor]:
    """a = hi + lo exactly, each with at most 26 significant bits (Veltkamp)."""
    c = _SPLITTER * a
    hi = c - (c - a)
    return hi, a - hi


@dataclass
class Value:
    """One tensor two ways: ``plain`` as the engine computes it in float64 (in autograd's graph),
    and ``hi + lo``, which the current layer computed to within ``err`` (elementwise) of the
    exact image of its inputs' hi + lo, in the network frozen at ``plain``'s pattern."""

    plain: Tensor
    hi: Tensor
    lo: Tensor
    err: Tensor

    @classmethod
    def exact(cls, t: Tensor) -> "Value":
        zero = torch.zeros_like(t)
        return cls(t, t.detach(), zero, zero)

    def each(self, fn) -> "Value":
        """``fn`` applied to every part (a selection or a copy: exact)."""
        return Value(fn(self.plain), fn(self.hi), fn(self.lo), fn(self.err))


def add(a: Value, b: Value, plain: Tensor) -> Value:
    """a + b (``plain``: the engine's own value of the sum)."""
    s, e = two_sum(a.hi, b.hi)
    hi, lo = two_sum(s, e + a.lo + b.lo)
    return Value(plain, hi, lo, a.err + b.err + GAMMA2 * (e.abs() + a.lo.abs() + b.lo.abs()))


def times(v: Value, c: Tensor, plain: Tensor) -> Value:
    """v · c for a constant c (broadcast)."""
    p, e = two_prod(v.hi, c)
    lo_c = v.lo * c
    hi, lo = two_sum(p, e + lo_c)
    return Value(plain, hi, lo, v.err * c.abs() + GAMMA2 * (e.abs() + lo_c.abs()))


def difference(a: Value, b: Value) -> Value:
    """a − b (a face: a value minus its kink, or a winner minus a competitor)."""
    return add(a, Value(-b.plain, -b.hi, -b.lo, b.err), a.plain - b.plain)


# ------------------------------------------------------------------------------------ layers

def affine(layer: ir.Affine, ins: list[Value]) -> Value:
    """An affine layer's output."""
    if isinstance(layer, MOVES):
        offset = not isinstance(layer, ir.Pad)  # (a pad fills lo and err with 0; the rest ignore the offset)
        return Value(layer.apply([v.plain for v in ins]), layer.apply([v.hi for v in ins]),
                     layer.apply([v.lo for v in ins], offset=offset), layer.apply([v.err for v in ins], offset=offset))
    if isinstance(layer, (ir.Dense, ir.Convolution)):
        return _bilinear(layer, ins[0])
    if isinstance(layer, ir.ElementwiseAffine):
        return _scale_shift(layer, ins[0])
    if isinstance(layer, ir.Sum):
        return _sum(layer, ins)
    raise Unsupported(f"{layer.kind} layers ({layer.name!r})")


def _bilinear(layer: ir.Dense | ir.Convolution, v: Value) -> Value:
    """L_W(v) + bias, from exact slice products (see the module's account)."""
    n = max(layer.terms, 1)
    bits = (53 - math.ceil(math.log2(n))) // 2
    weight_slices, weight_rest = _slices(layer.weight, bits, WEIGHT_SLICES)
    input_slices, input_rest = _slices(v.hi, bits, INPUT_SLICES)

    def through(weight: Tensor, x: Tensor) -> Tensor:
        return replace(layer, weight=weight).apply([x], offset=False)

    terms = [layer.apply([torch.zeros_like(v.hi)])]  # the bias alone, exactly (0 + b)
    for weight, weight_quantum in weight_slices:
        for x, input_quantum in input_slices:
            terms.append(_on_grid(through(weight, x), weight_quantum * input_quantum))
    terms.append(through(layer.weight, v.lo))
    hi, lo, spread = _accumulate(terms)
    gamma_n = precision.gamma(n, U)
    err = through(layer.weight.abs(), v.err + input_rest.abs() + gamma_n * v.lo.abs())
    err = err + through(weight_rest.abs(), v.hi.abs() + input_rest.abs()) + spread
    return Value(layer.apply([v.plain]), hi, lo, err)


def _slices(t: Tensor, bits: int, count: int) -> tuple[list[tuple[Tensor, float]], Tensor]:
    """``t`` as ``count`` slices, each an integer |k| ≤ 2^bits times its quantum (quanta ``bits``
    apart, the first above max |t| / 2^bits), and the rest, below half the last quantum. Each
    subtraction is exact: the slice is the rest rounded to a grid no finer than its last bit."""
    top = float(t.abs().max()) if t.numel() else 0.0
    if top == 0.0:
        return [], t
    quantum = math.ldexp(1.0, math.frexp(top)[1] - bits)
    rest, slices = t, []
    for _ in range(count):
        piece = torch.round(rest / quantum) * quantum
        slices.append((piece, quantum))
        rest = rest - piece
        quantum = math.ldexp(quantum, -bits)
    return slices, rest


def _on_grid(product: Tensor, quantum: float) -> Tensor:
    """``product``, having checked it is an integer multiple of ``quantum`` below 2⁵³ of them,
    as exact sums of exact products are (a kernel that computes otherwise is refused)."""
    units = product / quantum
    if not bool(((units == units.round()) & (units.abs() <= 2.0**53)).all()):
        raise Unsupported("a product the kernel did not compute as exact sums")
    return product


def _accumulate(terms: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Σ terms as hi + lo: the running sum by ``two_sum``, its m errors e summed in float64 (within
    γ_m Σ|e| of theirs), then joined: returns hi, lo and that bound."""
    total, errors, size = terms[0], torch.zeros_like(terms[0]), torch.zeros_like(terms[0])
    for term in terms[1:]:
        total, e = two_sum(total, term)
        errors = errors + e
        size = size + e.abs()
    hi, lo = two_sum(total, errors)
    return hi, lo, precision.gamma(len(terms), U) * size


def _scale_shift(layer: ir.ElementwiseAffine, v: Value) -> Value:
    plain = layer.apply([v.plain])
    out = v.each(lambda t: ir.align(t, len(layer.in_shapes[0]), len(layer.shape)))
    if layer.scale is not None:
        out = times(out, layer.scale, plain)
    if layer.shift is not None:
        out = add(out, Value.exact(layer.shift.expand(plain.shape)), plain)
    return out.each(lambda t: t.expand(plain.shape))


def _sum(layer: ir.Sum, ins: list[Value]) -> Value:
    plain = layer.apply([v.plain for v in ins])
    total = None
    for v, shape, c in zip(ins, layer.in_shapes, layer.coefficients):
        term = v.each(lambda t: ir.align(t, len(shape), len(layer.shape)))
        if c != 1:
            term = times(term, torch.tensor(c, dtype=plain.dtype, device=plain.device), plain)
        total = term if total is None else add(total, term, plain)
    return total.each(lambda t: t.expand(plain.shape))


def nonlinear(layer: ir.Nonlinearity, ins: list[Value]) -> tuple[Value, Tensor]:
    """A nonlinear layer's output frozen at the plain pattern, and its pieces (as the engine records them)."""
    if isinstance(layer, ir.MaxPool2d):
        windows = layer.windows(ins[0].plain, float("-inf"))
        best, arg = windows.max(dim=-2, keepdim=True)
        pick = lambda t: layer.windows(t, 0.0).gather(-2, arg).reshape(len(t), *layer.shape)  # noqa: E731
        v = ins[0]
        return Value(best.reshape(len(v.hi), *layer.shape), pick(v.hi), pick(v.lo), pick(v.err)), arg
    if isinstance(layer, ir.Maximum):
        a, b = ins
        first = layer.first_wins(a.plain, b.plain)
        out = Value(*(layer.select(first, s, t) for s, t in zip(_parts(a), _parts(b))))
        return out, layer.faces(a.plain, b.plain) > 0
    if not isinstance(layer, (ir.ReLU, ir.Clip, ir.Abs)):
        raise Unsupported(f"{layer.kind} activations ({layer.name!r})")
    z = ins[0]
    gain, y = layer.gain(z.plain), layer.apply(z.plain)
    plain = gain * z.plain + (y - gain * z.plain).detach()  # y itself, differentiated at the frozen slope
    out = times(z, gain, plain)
    bound = torch.where(gain == 0, y.detach(), 0.0)  # a unit on a flat piece is that piece's constant, exactly
    return Value(plain, out.hi + bound, out.lo, out.err), layer.faces(z.plain) > 0


def _parts(v: Value) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return v.plain, v.hi, v.lo, v.err


def face(layer: ir.Nonlinearity, ins: list[Value], unit: int) -> Value:
    """Face ``unit`` of a nonlinear layer (``faces``'s layout) from its inputs, as a one-entry value."""
    if isinstance(layer, ir.MaxPool2d):
        return _window_face(layer, ins[0], unit)
    if isinstance(layer, ir.Maximum):
        a, b = (v.each(lambda t, k=k: ir.align(t, len(layer.in_shapes[k]), len(layer.shape)).expand(1, *layer.shape)
                       .reshape(-1)[unit, None]) for k, v in enumerate(ins))
        return difference(a, b)
    kink = layer.kinks()[unit // layer.size]
    kink = kink.expand(layer.shape).reshape(-1)[unit % layer.size, None] if isinstance(kink, Tensor) else \
        torch.tensor([kink], dtype=ins[0].hi.dtype, device=ins[0].hi.device)
    z = ins[0].each(lambda t: t.reshape(-1)[unit % layer.size, None])
    return difference(z, Value.exact(kink))


def _window_face(layer: ir.MaxPool2d, v: Value, unit: int) -> Value:
    """A max-pool face: its window's plain winner minus the face's element (``unit`` flat over
    (plane, element, place), as ``MaxPool2d.faces`` lays them out)."""
    size = layer.window_size
    windows = [w.reshape(-1, size, w.shape[-1]) for w in (layer.windows(t, 0.0) for t in _parts(v))]
    places = windows[0].shape[-1]
    arg = layer.windows(v.plain, float("-inf")).max(dim=-2).indices.reshape(-1, places)  # (as the engine picks)
    plane, element, place = unit // (size * places), (unit // places) % size, unit % places
    winner = int(arg[plane, place])
    return difference(Value(*(w[plane, winner, place, None] for w in windows)),
                      Value(*(w[plane, element, place, None] for w in windows)))


@dataclass
class Face:
    """A face's exact value, z ∈ [hi + lo − err, hi + lo + err], and the plain pattern it was
    frozen at (the pieces of each nonlinear layer before the face's, in order)."""

    hi: float
    lo: float
    err: float
    pieces: list[Tensor]

    def proves(self, reported: float, margin: float) -> bool:
        """Whether ``reported`` (the engine's value of this face) is proven within 1/``margin`` of
        the exact value: |reported − (hi + lo)| + err ≤ |reported| / margin, with this test's own
        float rounding covered."""
        step = reported - self.hi
        gap = abs(step - self.lo) * (1 + 2 * U) + 2 * U * abs(step)  # ≥ |reported − hi − lo|
        return (gap + self.err) * (1 + 4 * U) <= abs(reported) / margin


def face_value(network: ir.Network, x: Tensor, layer: int, unit: int) -> Face:
    """Face (``layer``, ``unit``) of one float64 input ``x`` (shape ``(1, *sample_shape)``)."""
    pieces: list[Tensor] = []
    outputs, errors = [], []  # each layer's plain output and err
    found: list[Value] = []

    def settled(out: Value) -> Value:
        outputs.append(out.plain)
        errors.append(out.err)
        return Value(out.plain, out.hi, out.lo, torch.zeros_like(out.err))

    def record(i: int, layer_i: ir.Nonlinearity, *ins: Value) -> Value:
        ins = [_value(v) for v in ins]
        if i == layer:
            found.append(face(layer_i, ins, unit))
        out, piece = nonlinear(layer_i, ins)
        pieces.append(piece)
        return settled(out)

    point = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        network.run(point, nonlinear=record, until=layer,
                    affine=lambda i, layer_i, ins: settled(affine(layer_i, [_value(v) for v in ins])))
        z = found[0]
        bound = float(z.err.sum()) + float(roundoff.propagated(z.plain, outputs, errors).sum())
    return Face(float(z.hi), float(z.lo), 2 * bound, pieces[:-1])


def _value(v: Value | Tensor) -> Value:
    return v if isinstance(v, Value) else Value.exact(v)  # (the input itself: exact)
