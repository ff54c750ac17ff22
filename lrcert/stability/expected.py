"""The expected distortion E[Δ(x')] over x' drawn from the ball (:class:`.ball.Ball`): a Monte Carlo
mean over N seeded samples, unbiased, with its standard error s/√N; the share of samples that stay
in x's own linear region (Δ = 0 there, exactly) and the number of distinct regions they fall in.

Samples of one region share their gradient exactly, so where samples share regions (small networks,
small balls) each batch of samples first gets a value pass alone (its patterns); only one sample per
new region gets a backward pass, and samples in x's own region none. Where most samples fall in
regions of their own (large inputs), that costs more than it saves, and from the first batch that
shows it on, each sample gets its value and backward pass together.

Where a certified bound M ≥ Δ over the whole ball is known (:mod:`.bound`), Hoeffding's inequality
for N independent draws in [0, M] gives an interval that holds the true expectation except with
probability δ: mean ± M·√(ln(2/δ) / 2N).

>>> round(hoeffding_width(1.0, 1000, 1e-3), 6)
0.061648
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from .ball import Ball
from .saliency import Saliency, distortion

#: Above this share of new regions among a batch's samples, the value pass alone stops paying.
DEDUPE_BELOW = 2 / 3
#: The samples that decide it first.
PROBE = 16


@dataclass
class Expectation:
    """Per input: the mean Δ over the samples, its standard error, the share of samples in x's own
    region, the number of distinct regions, and every sample's Δ (B, N)."""

    mean: Tensor
    stderr: Tensor
    own: Tensor
    regions: list[int]
    values: Tensor


def hoeffding_width(bound: float, count: int, delta: float) -> float:
    """Half-width of the interval around a mean of ``count`` draws in [0, ``bound``] that holds the
    expectation except with probability ``delta`` (two-sided Hoeffding)."""
    return bound * math.sqrt(math.log(2 / delta) / (2 * count))


#: Samples are drawn in blocks of this many per input, each block from its own generator, so that
#: an input's samples do not depend on how many a batch takes at once.
BLOCK = 64


def generator(seed: int, number: int, stream: int, device: torch.device) -> torch.Generator:
    """The generator of draw ``stream`` of input ``number`` in a run seeded with ``seed``."""
    kind = "cpu" if device.type == "meta" else device
    return torch.Generator(device=kind).manual_seed(((seed * 1_000_003 + number) * 1_000_033 + stream) % 2**63)


def samples_of(ball: Ball, x: Tensor, count: int, seed: int, number: int, start: int = 0) -> Tensor:
    """Samples ``start`` … ``start + count − 1`` of input ``number`` (its row ``x``): (count, *row).
    Sample k is in block k // BLOCK, drawn from :func:`generator` (seed, number, 2 + block)."""
    parts, k = [], start
    while k < start + count:
        block, offset = divmod(k, BLOCK)
        take = min(BLOCK - offset, start + count - k)
        drawn = ball.sample(x.unsqueeze(0), BLOCK, [generator(seed, number, 2 + block, x.device)])[0]  # (whole blocks:
        parts.append(drawn[offset : offset + take])  # an ℓ2 block draws its directions, then its lengths)
        k += take
    return torch.cat(parts)


def expectation(saliency: Saliency, ball: Ball, x: Tensor, weights: Tensor, g0: Tensor, pattern0: Tensor, count: int,
                seed: int, numbers: Sequence[int], order: float) -> Expectation:
    """E[Δ] for each row of ``x`` (B, *row) from ``count`` samples of ``ball`` (:func:`samples_of`,
    input ``numbers[i]``); ``g0`` (B, D) and ``pattern0`` (B, n): the gradient and pattern at x;
    ``order``: the distortion norm."""
    b = len(x)
    chunk = max(1, min(count, saliency.rows_per_pass() // b))
    chunk = max(BLOCK, chunk - chunk % BLOCK) if count > BLOCK else chunk
    probe = min(count, PROBE)  # (the first samples alone tell whether regions are shared)
    values = g0.new_empty(b, count, dtype=torch.float64)
    own = torch.zeros(b, dtype=torch.float64, device=x.device)
    seen: list[set[bytes]] = [set() for _ in range(b)]
    dedupe = True
    for start in [0, *range(probe, count, chunk)]:
        m = min(chunk, count - start) if start else probe
        points = torch.stack([samples_of(ball, row, m, seed, n, start) for row, n in zip(x, numbers)]).reshape(b * m, *x.shape[1:])
        who = torch.arange(b, device=x.device).repeat_interleave(m)
        if dedupe:
            g, pattern, fresh = _by_region(saliency, points, weights[who], who, pattern0)
            dedupe = fresh <= DEDUPE_BELOW * len(points)
        else:
            g, pattern = saliency.at(points, weights[who])
        same = (pattern.reshape(b, m, -1) == pattern0.unsqueeze(1)).all(dim=2)  # (b, m): in x's own region
        delta = distortion(g.reshape(b, m, -1), g0.unsqueeze(1), order).double()
        values[:, start : start + m] = torch.where(same, 0.0, delta)
        own += same.sum(dim=1)
        _count_regions(seen, who, pattern)
    spread = values.std(dim=1) / math.sqrt(count) if count > 1 else torch.full_like(own, math.nan)
    return Expectation(values.mean(dim=1), spread, own / count, [len(s) for s in seen], values)


def _by_region(saliency: Saliency, points: Tensor, weights: Tensor, who: Tensor, pattern0: Tensor) -> tuple[Tensor, Tensor, int]:
    """The gradients of ``points``, one backward pass per new region: a value pass for all (their
    patterns), then a value and backward pass for the first point of each (input, region) that is
    not the input's own region. Also returns how many new regions the points held (one host wait)."""
    pattern = saliency.patterns(points)
    same = (pattern == pattern0[who]).all(dim=1)
    keys = torch.cat([who[:, None].to(torch.int64).view(torch.uint8).reshape(len(who), 8), pattern], dim=1)
    _, group = torch.unique(keys, dim=0, return_inverse=True)
    order = torch.arange(len(points), device=points.device)
    first = torch.full((int(group.max()) + 1,), len(points), device=points.device).scatter_reduce(0, group, order, "amin")
    wanted = first[~same[first]]
    g = points.new_zeros(len(first), math.prod(points.shape[1:]))
    if len(wanted):
        g[group[wanted]] = saliency.at(points[wanted], weights[wanted])[0]
    return g[group], pattern, len(wanted)


def _count_regions(seen: list[set[bytes]], who: Tensor, pattern: Tensor) -> None:
    """Add each point's region (a 128-bit BLAKE2 digest of its pattern) to its input's set: the
    patterns go to the host once per batch."""
    for k, row in zip(who.tolist(), pattern.cpu().numpy()):
        seen[k].add(hashlib.blake2b(row.tobytes(), digest_size=16).digest())
