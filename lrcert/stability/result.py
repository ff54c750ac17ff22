"""What a stability analysis hands back per input (:class:`StabilityResult`), and its record as
``lrcert stability`` writes it (JSON, JSON lines, CSV)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: The quantiles of Δ over an input's samples that a record keeps (the report draws them).
QUANTILES = (("min", 0), ("p5", 5), ("p25", 25), ("p50", 50), ("p75", 75), ("p95", 95), ("max", 100))


@dataclass
class StabilityResult:
    """The distortion Δ(x') = ‖g(x') − g(x)‖ of one input's saliency g = ∇ₓ(w·f) over its ball.

    ``radius`` is ε̂ in the ball's norm (Δ = 0 exactly within it; ``inside``: ε < ε̂), with the
    probability ``radius_delta`` that it is not exact (0: deterministic). ``expected`` ± ``stderr``
    is E[Δ] over ``samples`` draws, ``own`` the share of them in x's own region, ``regions`` the
    distinct regions among them, ``interval`` where a bound is known the range holding E[Δ] except
    with probability ``interval_delta``. ``max_found`` (a lower bound on max Δ) is attained at
    ``worst`` after ``passes`` passes; ``max_bound`` is a certified upper bound (``vacuous``: no
    better than interval arithmetic over the whole input space with every unit free, or over a
    thousand times the largest distortion seen), with ``free`` of ``units`` units not proven fixed. With ``relative``, every distortion is divided by ‖g(x)‖ (``saliency_norm``).
    """

    index: int
    target: int
    rival: int | None
    norm: str
    eps: float
    radius: float
    radius_delta: float
    inside: bool
    expected: float
    stderr: float
    samples: int
    own: float
    regions: int
    quantiles: dict[str, float]
    max_found: float
    passes: int
    max_bound: float
    vacuous: bool
    free: int
    units: int
    bound_by: str  # "region" (ε < ε̂: Δ ≡ 0), "intervals", or "none" (no bound: see notes)
    saliency_norm: float
    relative: bool
    dtype: str
    interval: tuple[float, float] | None = None
    interval_delta: float | None = None
    worst: np.ndarray | None = None  # the point x' attaining max_found (float64, the row's shape)
    saliency: np.ndarray | None = None  # g(x) and g(worst), kept for pictures (report)
    worst_saliency: np.ndarray | None = None
    source: str | None = None
    label: int | None = None
    length: int | None = None
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict:
        """The result as JSON writes it (no arrays; infinities as null)."""
        out = {"index": self.index}
        if self.source is not None:
            out["source"] = self.source
        if self.label is not None:
            out["label"] = self.label
        if self.length is not None:
            out["length"] = self.length
        out["target"] = {"class": self.target} | ({"rival": self.rival} if self.rival is not None else {})
        out["certified"] = {"radius": _finite(self.radius), "inside": self.inside, "delta": self.radius_delta}
        out["expected"] = {"mean": self.expected, "stderr": _finite(self.stderr), "samples": self.samples,
                           "own_region": self.own, "regions": self.regions, "quantiles": self.quantiles,
                           "interval": list(self.interval) if self.interval else None, "interval_delta": self.interval_delta}
        out["max_found"] = {"value": self.max_found, "passes": self.passes}
        out["max_bound"] = {"value": _finite(self.max_bound), "vacuous": self.vacuous, "free_units": self.free,
                            "units": self.units, "by": self.bound_by}
        out["saliency_norm"] = self.saliency_norm
        out["relative"], out["dtype"] = self.relative, self.dtype
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def quantiles(values: np.ndarray) -> dict[str, float]:
    """The quantiles of :data:`QUANTILES` of an input's Δ over its samples."""
    if len(values) == 0:
        return {}
    found = np.percentile(values, [q for _, q in QUANTILES])
    return {name: float(v) for (name, _), v in zip(QUANTILES, found)}


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else value
