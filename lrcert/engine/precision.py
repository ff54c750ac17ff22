"""``dtype="auto"``: float64 radii at float32 speed, from rigorous bounds on float32 rounding.

The engine runs the value pass (every face value z, the activation pattern) and the directional
pass in float64, and only the expensive tangent passes (every face gradient g = ∇ₓz, D input
directions per input) in float32. Per input and norm the radius is min_j |z_j| / ‖g_j‖_q. If the
float32 dual norm ĝ_j is within E_j of the true ‖g_j‖_q, face j's true ratio lies in
[|z_j| / (ĝ_j + E_j), |z_j| / (ĝ_j − E_j)]. Let U be the smallest upper end over all faces of
the input: a face whose lower end exceeds U cannot bind. The others, the *candidates*, get their
gradient exactly, from one float64 reverse pass each, and the radius is the smallest exact ratio
among them: the float64 answer (the binding face is always a candidate; where the bounds leave a
single one, that is one reverse pass). An input with more candidates than ``RERUN_SHARE`` of its
input dimensions (reverse passes would cost more) is recomputed whole in float64 instead. Only an
input that lies on a face whose gradient is certainly nonzero (radius 0 exactly, e.g. a tied
max-pool window), or that has no face, keeps the float32 pass's answer: it is exact in any
precision. So every radius under auto is the float64 one, whatever the batch. Where float64
costs about what float32 does, auto simply certifies in float64 (:func:`float64_outright`).

**The bound E_j** (u = 2⁻²⁴, γₙ = n·u / (1 − n·u); every error a worst case, for any order of
summation). The float32 tangent T̂ of a layer holds, per unit, one row over the D directions;
let t bound each row's q-norm and e the q-norm of each row's error T̂ − T. At the input, t = 1
and e = 0. An affine layer A, of at most n products per output (``Affine.terms``), computes in
float32, with float32 weights, (A T̂) within γₙ₊₁ |A| |T̂| entrywise; by the triangle inequality
over the rows it reads,

    t_out ≤ (1 + γₙ₊₁) |A| t,        e_out ≤ |A| e + γₙ₊₁ |A| t.

Applied to the identity itself (a layer reading the input), each output is a single product of a
float32 weight and 1, plus zeros: γₙ₊₁ becomes u, the weight's own rounding.

A unit activation multiplies rows by its frozen slope s (the float64 pattern's): t_out = |s| t,
e_out = |s| e (+ u |s| t for a slope not exact in float32); its faces' gradients are its input
rows, so E_j = e of that row. Where the engine measured a row's norm (at every unit activation)
t is that norm, widened by its own rounding. A max-pool face z_w − z_l has the float32 gradient
row T̂_w − T̂_l, one subtraction: E = e_w + e_l + u (t_w + t_l); an elementwise max/min alike.
The engine's dual norm of a row is itself rounded: Σ g² and Σ |g| over D terms are sums of
non-negative numbers, within γ_D+1 of the exact sums; max |g| is exact. All bounds are computed
in float64 from the float64 pattern, so they hold whatever the float32 arithmetic did.

Cost: the bounds are three passes of |A| over per-unit vectors (like the value pass), and the
refinement one float64 reverse pass per candidate face.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..network import ir
from ..runtime import devices
from . import reverse

U32 = 2.0**-24
#: Below this many input dimensions, auto computes in float64 outright (cheaper than bounding float32).
FLOAT64_BELOW = 32
#: An input with more candidate faces than this share of its input dimensions is rerun whole in
#: float64 (a reverse pass per face would cost about as much as the D tangent passes).
RERUN_SHARE = 0.25


def float64_outright(network: ir.Network, device: torch.device) -> bool:
    """Whether auto should certify in float64 outright: a network of fewer than ``FLOAT64_BELOW``
    input dimensions (its tangent passes cost less than the bounds), or one without convolutions
    on a GPU whose float64 matrix products run at its float32 rate (measured on an H100: float64
    42,300 inputs/s on paper_mlp, float32 with bounds and refinement 8,400; with convolutions,
    which cuDNN runs 3-4x slower in float64, auto wins there too)."""
    if network.input_size < FLOAT64_BELOW:
        return True
    return devices.full_rate_float64(device) and not any(isinstance(layer, ir.Convolution) for layer in network.layers)


def gamma(n: int, u: float = U32) -> float:
    """γₙ = n·u / (1 − n·u): the relative error bound of a sum of n rounded products."""
    return n * u / (1 - n * u) if n * u < 0.5 else math.inf


def dual_norm_bounds(region, norms, p: str) -> dict[int, Tensor]:
    """Per nonlinear layer, (B, faces): a bound E on |ĝ − ‖g‖_q|, ĝ the float32 tangents' exact
    q-norm (the rounding of the engine's own norm computation is handled by :func:`true_norms`)."""
    engine, layers = region.engine, region.network.layers
    magnitude = engine.magnitudes.layers  # |parameters|, float64
    b = region.batch
    shape = engine.network.input_shape
    t = {0: torch.ones(b, *shape, dtype=torch.float64, device=region.output.device)}
    e = {0: torch.zeros_like(t[0])}
    bounds: dict[int, Tensor] = {}
    for i in engine.walk.order:
        layer = layers[i]
        ts, es = [t[j] for j in layer.inputs], [e[j] for j in layer.inputs]
        if isinstance(layer, ir.Affine):
            if not layer.terms:
                g = 0.0  # moves or copies entries: exact
            elif layer.inputs == (0,):
                g = U32  # on the identity each output is one product (a float32 weight) plus zeros
            else:
                g = gamma(layer.terms + 1)
            spread = magnitude[i].apply(ts, offset=False)
            t[i] = spread * (1 + g)
            e[i] = magnitude[i].apply(es, offset=False) + g * spread
        elif isinstance(layer, ir.MaxPool2d):
            tw, ew = layer.windows(ts[0], 0.0), layer.windows(es[0], 0.0)
            winner_t, winner_e = torch.gather(tw, -2, region.argmax[i]), torch.gather(ew, -2, region.argmax[i])
            bounds[i] = (winner_e + ew + U32 * (winner_t + tw)).reshape(b, -1)
            t[i], e[i] = winner_t.reshape(b, *layer.shape), winner_e.reshape(b, *layer.shape)
        elif isinstance(layer, ir.Maximum):
            first = region.first_wins[i]
            bounds[i] = layer.faces(es[0] + U32 * ts[0], -(es[1] + U32 * ts[1]))  # e_a + e_b + u (t_a + t_b)
            t[i], e[i] = layer.select(first, *ts), layer.select(first, *es)
        else:  # a unit activation: its faces' gradients are its input rows, whose norms the engine measured
            measured = _measured_rows(region, norms, i, p).reshape(ts[0].shape)
            row = torch.minimum(ts[0], measured)
            bounds[i] = es[0].reshape(b, -1)
            slope = region.gain[i].abs()
            t[i] = slope * row
            e[i] = slope * es[0] + (U32 * slope * row if layer.kind not in ("relu", "clip", "abs") else 0.0)
        for j in set(layer.inputs):
            if engine.walk.last_use.get(j) == i and j != 0:
                t.pop(j, None)
                e.pop(j, None)
    return bounds


def _measured_rows(region, norms, i: int, p: str) -> Tensor:
    """The q-norms of layer ``i``'s float32 input rows, as measured (upper end of their rounding)."""
    return norms.dual(i, p) * (1 + _norm_rounding(region, p))


def _norm_rounding(region, p: str) -> float:
    """Relative rounding of the engine's own dual norm of a row of D float32 entries."""
    d = region.network.input_size
    return {"l1": 0.0, "l2": gamma(d + 1) / 2 + U32, "linf": gamma(d)}[p]


def true_norms(region, norms, i: int, p: str, bound: Tensor) -> tuple[Tensor, Tensor]:
    """(low, high) per face of layer ``i``: where the exact ‖g‖_q lies, given the float32 one."""
    measured = region.per_face(i, norms.dual(i, p))
    rounding = _norm_rounding(region, p)
    low = (measured / (1 + rounding) - bound).clamp_min(0)
    return low, measured / (1 - rounding) + bound


def refine(region, norms, tensors: dict[str, Tensor], x: Tensor) -> int:
    """Replace the float32 radii in ``tensors`` (the batch's results, see ``norms.radii``) by
    float64 ones: exact ratios of every face the bounds cannot rule out, or a float64 rerun of
    inputs with too many such faces. Returns how many inputs were rerun."""
    engine = region.engine
    b, device = region.batch, region.output.device
    candidates = torch.zeros(0, 3, dtype=torch.long, device=device)  # (input, layer, unit)
    settled = torch.ones(b, dtype=torch.bool, device=device)  # exact as the float32 pass found it
    if not engine.nonlinear:
        return 0
    for p in engine.norms:
        low_ratio, high_ratio = {}, {}
        for i, bound in dual_norm_bounds(region, norms, p).items():
            low, high = true_norms(region, norms, i, p, region.per_face(i, bound))
            z = region.faces[i].double().abs()
            low_ratio[i] = torch.where(high > 0, z / high, math.inf)
            high_ratio[i] = torch.where(low > 0, z / low, math.inf)
        ceiling = torch.stack([r.min(dim=1).values for r in high_ratio.values()]).min(dim=0).values  # U
        count = torch.zeros(b, dtype=torch.long, device=device)
        for i, low_r in low_ratio.items():
            chosen = low_r <= ceiling[:, None]
            count += chosen.sum(dim=1)
            found = chosen.nonzero()
            layer = torch.full((len(found), 1), i, dtype=torch.long, device=device)
            candidates = torch.cat([candidates, torch.cat([found[:, :1], layer, found[:, 1:]], dim=1)])
        on_boundary = ceiling == 0  # a face with z = 0 and a gradient certainly nonzero: the radius is 0 exactly
        settled &= (count == 0) | on_boundary
    candidates = torch.unique(candidates, dim=0)
    per_input = torch.bincount(candidates[:, 0], minlength=b)
    whole = ~settled & (per_input > int(RERUN_SHARE * engine.dimensions))
    exact_ratios(region, tensors, x, candidates[(~settled & ~whole)[candidates[:, 0]]])
    rerun = whole.nonzero()[:, 0]
    _rerun(region, tensors, x, rerun)
    return len(rerun)


def exact_ratios(region, tensors: dict[str, Tensor], x: Tensor, candidates: Tensor, merge: bool = False) -> None:
    """Exact ratios of the ``candidates`` faces, (input, layer, unit) rows, from their gradients
    (one reverse pass each, many at a time, in the engine's value dtype); per input and norm the
    smallest replaces the entries of ``tensors`` (``merge``: only where it is smaller). Inputs with
    a gradient that overflows get ``gradients_finite`` False when ``tensors`` has it."""
    if len(candidates) == 0:
        return
    engine = region.engine
    gradients = reverse.face_gradients(engine, x, candidates)
    engine.work.exact += len(candidates)
    inputs, layers, units = candidates.unbind(dim=1)
    z = torch.zeros(len(candidates), dtype=torch.float64, device=x.device)
    for i in engine.nonlinear:  # no data-dependent branches: the host waits as often for any batch
        value = region.faces[i][inputs, units.clamp(max=region.faces[i].shape[1] - 1)].double()
        z = torch.where(layers == i, value, z)
    b = region.batch
    if "gradients_finite" in tensors:
        overflow = torch.zeros(b, dtype=torch.long, device=x.device).index_add_(
            0, inputs, (~torch.isfinite(gradients).all(dim=1)).long())
        tensors["gradients_finite"] = tensors["gradients_finite"] & (overflow == 0)
    for p in engine.norms:
        best, rows, done, _ = reverse.nearest_rows(inputs, z, gradients, p, b)
        layer = torch.where(done, layers[rows], -1)
        unit = torch.where(done, units[rows], 0)
        described = region.describe(layer, unit)
        involved = torch.zeros(b, dtype=torch.bool, device=x.device).index_fill_(0, inputs, True)
        if merge:
            involved &= best < tensors[f"{p}.distance"]
        for key, value in {"distance": best, "layer": layer, "unit": unit, **described}.items():
            tensors[f"{p}.{key}"] = torch.where(involved, value, tensors[f"{p}.{key}"])


def _rerun(region, tensors: dict[str, Tensor], x: Tensor, index: Tensor) -> None:
    """Inputs ``index`` (they had too many candidates): the whole computation again, in float64."""
    if len(index) == 0:
        return
    exact = region.engine.exact_engine()
    _, again = exact.compute(x[index], None, exact.plan(len(index)))
    for key, value in again.items():
        if key in tensors and key.split(".")[0] in region.engine.norms:
            tensors[key] = tensors[key].index_copy(0, index, value)
