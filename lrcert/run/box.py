"""Prediction radii and adversarial points inside a box of valid inputs, lo ≤ x ≤ hi (pixels in
[0, 1]: ``--box 0,1``, the default for image folders).

Inside the linear region of x every margin is affine, m_j + g_j·δ (see :mod:`lrcert.engine.prediction`),
so the closest input with a tie to class j that is also inside the box solves

    min ‖δ‖_p   subject to   m_j + g_j·δ ≤ 0,   a ≤ δ ≤ b   (a = lo − x, b = hi − x),

a convex program with one constraint besides the box, solved exactly in float64:

- ℓ1 is a fractional knapsack: the coordinates of largest |g_j,i| move to their bounds in their
  helpful direction, the last one part way;
- ℓ∞ and ℓ2: δ(s) = clip(s·d, a, b) with d = −sign(g_j) (ℓ∞: s is the radius t) or d = −g_j (ℓ2:
  the KKT conditions of the projection of 0 onto the box-constrained half-space, s the multiplier
  λ); m_j + g_j·δ(s) is non-increasing and piecewise linear in s, so a bisection over its sorted
  breakpoints finds the segment of its root, where it is affine: s in closed form.

O(D log D) per class. (HiGHS, which tests/test_box.py uses as the independent computation, takes
these one-row linear programs a vertex at a time: 1.5 s at D = 10,000, minutes at 3×224×224.) A
class no point of the box reaches (m_j + min over the box of g_j·δ > 0) is at distance +∞.

The box's prediction radius is min over j ≠ c of those distances, never less than the free one
(m_j / ‖g_j‖_q); classes are taken in the order of their free distances, stopping when the next
free distance exceeds the best box distance. Where it is at most ε̂ the solution lies in the
region: it is the exact distance, within the box, to another prediction, and x + δ the closest
such input. Only inputs whose free prediction radius is at most ε̂ in some norm need it (a box
only lengthens distances: elsewhere the certified radius is ε̂ either way, and the free radius
stays as the lower bound it is).

>>> import numpy as np
>>> g, x = np.array([1.0, 1.0]), np.array([0.1, 0.5])  # margin ½ along g; x₀ can only fall by 0.1
>>> distance, step = nearest_in_box(g, 0.5, x, 0.0, 1.0, "l2")  # free: δ = (−¼, −¼), 1/(2√2)
>>> round(distance, 12), step.round(12)  # in the box: √(0.1² + 0.4²)
(0.412310562562, array([-0.1, -0.4]))
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..errors import LrcertError

DUAL = {"l1": math.inf, "l2": 2, "linf": 1}  # (the dual norm q of each p, for the free distances)
ORDER = {"l1": 1, "l2": 2, "linf": math.inf}


def parse(text: str | None) -> tuple[float, float] | None:
    """``"0,1"`` → (0.0, 1.0); ``"none"`` → None."""
    if text is None or text.lower() == "none":
        return None
    try:
        lo, hi = (float(part) for part in text.split(","))
    except ValueError:
        raise LrcertError(f"--box {text!r} is not two numbers LO,HI", fix="write --box 0,1 (or --box none)") from None
    if not lo < hi or not (math.isfinite(lo) and math.isfinite(hi)):
        raise LrcertError(f"--box {text!r} is empty or unbounded", fix="give finite bounds LO < HI, e.g. --box 0,1")
    return lo, hi


def nearest_in_box(g: np.ndarray, m: float, x: np.ndarray, lo: float, hi: float, p: str) -> tuple[float, np.ndarray | None]:
    """(‖δ*‖_p, δ*) for min ‖δ‖_p with m + g·δ ≤ 0 and lo ≤ x + δ ≤ hi (float64, flat arrays);
    (+inf, None) where no point of the box reaches the hyperplane."""
    g, x = np.asarray(g, dtype=np.float64), np.asarray(x, dtype=np.float64)
    a, b = lo - x, hi - x
    if m <= 0:
        return 0.0, np.zeros_like(x)
    if m + np.minimum(g * a, g * b).sum() > 0:
        return math.inf, None
    step = {"l1": _l1, "linf": _linf, "l2": _l2}[p](g, m, a, b)
    return float(np.linalg.norm(step, ORDER[p])), step


def _l1(g, m, a, b):
    """min Σ|δ_i|: a fractional knapsack. Moving coordinate i by one unit in its helpful direction
    lowers the margin by |g_i|, so the coordinates of largest |g_i| go to their bounds first and
    the last one part way (ties in |g_i| change δ, not ‖δ‖₁)."""
    room = np.where(g > 0, -a, b)  # how far each coordinate can move in its helpful direction
    order = np.argsort(-np.abs(g), kind="stable")
    gain = np.abs(g[order]) * room[order]
    before = np.concatenate([[0.0], np.cumsum(gain)[:-1]])
    last = min(int(np.searchsorted(before + gain, m)), len(g) - 1)  # the first whose full move closes the margin
    step = np.zeros_like(g)
    full = order[:last]
    step[full] = np.where(g[full] > 0, a[full], b[full])
    k = order[last]
    step[k] = -np.sign(g[k]) * min((m - before[last]) / abs(g[k]), room[k])
    return step


def _linf(g, m, a, b):
    """min t: δ_i = clip(−t·sign(g_i), a_i, b_i), the t ≥ 0 where m + g·δ(t) = 0."""
    return _root(-np.sign(g), g, m, a, b)


def _l2(g, m, a, b):
    """The projection of 0 onto {δ : m + g·δ ≤ 0, a ≤ δ ≤ b}: δ(λ) = clip(−λg, a, b) (the KKT
    conditions), the λ ≥ 0 where m + g·δ(λ) = 0."""
    return _root(-g, g, m, a, b)


def _root(direction, g, m, a, b) -> np.ndarray:
    """δ(s) = clip(s·direction, a, b) at the s ≥ 0 where m + g·δ(s) = 0. The value is non-increasing
    and piecewise linear in s, with a breakpoint where each coordinate meets its bound: a bisection
    over the sorted breakpoints finds the first at which it is ≤ 0 (the caller checked that the
    last one's is), and on the segment before it the value is affine: s in closed form there."""
    moving = direction != 0
    breaks = np.where(direction > 0, b, a)[moving] / direction[moving]
    breaks = np.unique(np.concatenate([[0.0], breaks[breaks > 0]]))
    value = lambda s: m + g @ np.clip(s * direction, a, b)  # noqa: E731
    low, high = 0, len(breaks) - 1
    while low < high:
        middle = (low + high) // 2
        low, high = (middle + 1, high) if value(breaks[middle]) > 0 else (low, middle)
    if low == 0:
        return np.zeros_like(g)
    left, right = breaks[low - 1], breaks[low]
    here, there = value(left), value(right)
    return np.clip((left + (right - left) * here / (here - there)) * direction, a, b)


def constrain(engine, x, results: Sequence, box: tuple[float, float], adversarial_norm: str | None) -> None:
    """Give each result whose free prediction radius is at most ε̂ in some norm its prediction radius
    within the box (see the module's docstring), its rival class and, for ``adversarial_norm``,
    the closest input of another prediction in the box (NaN where it lies beyond ε̂). ``x``: the
    results' inputs, (B, *sample_shape), on the host; ``engine``: the one that certified them, whose
    reverse passes give the margins' gradients (:func:`lrcert.engine.reverse.margin_gradients`,
    batched, in its value dtype) of the inputs that need them; the programs run on the host."""
    import torch

    from ..engine import reverse

    lo, hi = box
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    outside = np.flatnonzero(((flat < lo) | (flat > hi)).any(axis=1))
    if len(outside):
        row = results[outside[0]].index
        raise LrcertError(f"input {row} lies outside the box [{lo:g}, {hi:g}] (values from {flat[outside[0]].min():.3g} "
                          f"to {flat[outside[0]].max():.3g})", fix="give --box the range of the data (or --box none)")
    norms = engine.norms
    needed = [k for k, r in enumerate(results)
              if r.prediction_radius is not None and any(r.prediction_radius[p] <= r.radius[p] for p in norms)]
    if not needed:
        return
    points = torch.as_tensor(np.asarray(x)[needed]).to(engine.device, engine.value_dtype)
    with torch.no_grad():
        outputs = engine.network.run(points).reshape(len(needed), -1).double().cpu().numpy()
    classes = outputs.shape[1]
    predicted = [results[k].prediction for k in needed]
    rows = torch.tensor([(n, c, j) for n, c in enumerate(predicted) for j in range(classes) if j != c],
                        dtype=torch.long, device=engine.device).reshape(-1, 3)
    gradients = reverse.margin_gradients(engine, points, rows).double().cpu().numpy().reshape(len(needed), classes - 1, -1)
    for n, (k, c) in enumerate(zip(needed, predicted)):
        result, others = results[k], np.array([j for j in range(classes) if j != c])
        margins = outputs[n, c] - outputs[n, others]
        for p in norms:
            if result.prediction_radius[p] > result.radius[p]:
                continue
            distance, rival, step = _nearest(margins, gradients[n], flat[k], lo, hi, p)
            result.prediction_radius[p], result.rival[p] = distance, None if rival is None else int(others[rival])
            if p == adversarial_norm:
                exact = step is not None and distance <= result.radius[p]
                point = np.clip(flat[k] + step, lo, hi) if exact else np.full_like(flat[k], math.nan)
                result.adversarial = point.reshape(np.shape(x[k]))


def _nearest(margins, gradients, row, lo, hi, p) -> tuple[float, int | None, np.ndarray | None]:
    """The row (of ``margins`` and ``gradients``, one per other class) with the nearest tie inside
    the box: (distance, row, step)."""
    norms = np.linalg.norm(gradients, DUAL[p], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        free = np.where(norms > 0, margins / norms, math.inf)
    free[margins <= 0] = math.inf  # (exact ties: counted by the engine already)
    best, rival, chosen = math.inf, None, None
    for j in np.argsort(free, kind="stable"):
        if not free[j] < best:
            break
        distance, step = nearest_in_box(gradients[j], float(margins[j]), row, lo, hi, p)
        if distance < best:
            best, rival, chosen = distance, int(j), step
    return best, rival, chosen
