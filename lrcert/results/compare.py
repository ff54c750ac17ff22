"""Two runs of ``lrcert certify`` on the same data, side by side: how the radii moved.

Per norm, the min, P25 and median of ε̂ and of the certified radius min(ε̂, prediction radius) in
the base run and the candidate, and their relative change (candidate / base − 1); the inputs whose
ε̂ dropped most (their ratio); how many inputs changed linear region (activation-pattern digest)
and prediction; how many had an exact adversarial point. A *drop limit* per norm
(:func:`lrcert.ci.limits.drops`: ``10%``, or ``l2=10%``) on one figure (the median by default) fails
the comparison where that figure fell by more.

>>> relative_change(2.0, 1.5), relative_change(0.0, 0.0), relative_change(math.inf, 1.0)
(-0.25, 0.0, -1.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import LrcertError
from .report import CERTIFIED_LABELS, NORM_LABELS, radii_of, summarize

FIGURES = ("min", "p25", "p50")
FIGURE_NAMES = {"min": "min", "p25": "P25", "p50": "median", "median": "median"}
#: The inputs listed as having dropped most, per norm.
LARGEST_DROPS = 5


def relative_change(base: float, candidate: float) -> float:
    """candidate / base − 1; 0 where both are equal (0 and 0, +∞ and +∞), −1 (all of it) from +∞
    to a finite radius, +∞ from 0 to a positive one."""
    if base == candidate:
        return 0.0
    if math.isinf(base):
        return -1.0
    if base == 0 or math.isinf(candidate):
        return math.inf
    return candidate / base - 1


@dataclass
class Failure:
    """A figure that fell by more than its limit."""

    norm: str
    quantity: str  # "radius" or "certified_radius"
    figure: str
    base: float
    candidate: float
    limit: float

    def describe(self) -> str:
        label = (NORM_LABELS if self.quantity == "radius" else CERTIFIED_LABELS)[self.norm]
        return (f"{FIGURE_NAMES[self.figure]} {label} dropped {-100 * relative_change(self.base, self.candidate):.1f}% "
                f"(from {self.base:.4g} to {self.candidate:.4g}), more than the {100 * self.limit:g}% allowed")


@dataclass
class Comparison:
    """How a candidate run's radii moved from a base run's, input by input (same inputs)."""

    norms: tuple[str, ...]
    count: int
    figures: dict = field(default_factory=dict)  # norm -> quantity -> figure -> (base, candidate, change)
    largest_drops: dict = field(default_factory=dict)  # norm -> [(index, base, candidate, ratio)]
    changed_region: int = 0
    changed_prediction: int = 0
    exact_adversarial: dict = field(default_factory=dict)  # norm -> (base, candidate)
    failures: list[Failure] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict:
        def number(value: float) -> float | None:
            return None if math.isinf(value) or math.isnan(value) else value

        return {
            "inputs": self.count,
            "norms": {
                p: {
                    "figures": {quantity: {FIGURE_NAMES[f]: {"base": number(b), "candidate": number(c), "change": number(x)}
                                           for f, (b, c, x) in by_figure.items()}
                                for quantity, by_figure in self.figures[p].items()},
                    "largest_drops": [{"index": i, "base": number(b), "candidate": number(c), "ratio": number(r)}
                                      for i, b, c, r in self.largest_drops[p]],
                    "exact_adversarial": dict(zip(("base", "candidate"), self.exact_adversarial[p])),
                }
                for p in self.norms
            },
            "changed_region": self.changed_region,
            "changed_prediction": self.changed_prediction,
            "failures": [failure.describe() for failure in self.failures],
            "passed": self.passed,
        }


def compare(base: tuple[dict, list[dict]], candidate: tuple[dict, list[dict]], names: tuple[str, str],
            limits: dict[str, float] | None = None, on: str = "median") -> Comparison:
    """Compare two runs (``runs.read``'s (run, records)), named ``names`` in errors; refuse runs
    of different data. ``limits``: the largest drop allowed per norm, of figure ``on``."""
    (base_run, base_records), (new_run, new_records) = base, candidate
    _same_data(base_run, base_records, new_run, new_records, names)
    norms = tuple(p for p in ("l1", "l2", "linf") if p in base_records[0]["radius"] and p in new_records[0]["radius"])
    if not norms:
        raise LrcertError(f"{names[0]} and {names[1]} certified no norm in common", fix="compare runs of the same norms")
    old = {r["index"]: r for r in base_records}
    new = {r["index"]: r for r in new_records}
    pairs = [(old[i], new[i]) for i in sorted(old)]
    result = Comparison(norms, len(pairs))
    result.changed_region = sum(a.get("pattern") != b.get("pattern") for a, b in pairs)
    result.changed_prediction = sum(a.get("prediction") != b.get("prediction") for a, b in pairs)
    figure = {"median": "p50", "p50": "p50", "min": "min", "p25": "p25"}[on]
    for p in norms:
        result.figures[p] = {}
        for quantity in ("radius", "certified_radius"):
            if all(a.get(quantity) and b.get(quantity) for a, b in pairs):
                before = summarize([radii_of(a, quantity)[p] for a, _ in pairs])
                after = summarize([radii_of(b, quantity)[p] for _, b in pairs])
                result.figures[p][quantity] = {f: (before[f], after[f], relative_change(before[f], after[f])) for f in FIGURES}
        ratios = []
        for a, b in pairs:
            was, now = radii_of(a, "radius")[p], radii_of(b, "radius")[p]
            change = relative_change(was, now)
            if change < 0:
                ratios.append((a["index"], was, now, 1 + change))
        result.largest_drops[p] = sorted(ratios, key=lambda row: (row[3], row[0]))[:LARGEST_DROPS]
        result.exact_adversarial[p] = tuple(sum(bool((r.get("exact_adversarial") or {}).get(p)) for r in side)
                                            for side in zip(*pairs))
        limit = (limits or {}).get(p)
        for quantity, by_figure in result.figures[p].items():
            was, now, change = by_figure[figure]
            if limit is not None and change < -limit:
                result.failures.append(Failure(p, quantity, figure, was, now, limit))
    return result


def _same_data(base_run: dict, base_records: list[dict], new_run: dict, new_records: list[dict],
               names: tuple[str, str]) -> None:
    """Refuse two runs whose data differ: another file (sha256, where both recorded it) or another
    set of inputs."""
    hashes = [(run.get("options") or {}).get("data_sha256") for run in (base_run, new_run)]
    if None not in hashes and hashes[0] != hashes[1]:
        raise LrcertError(f"{names[0]} and {names[1]} certified different data (sha256 {hashes[0][:12]}… and "
                          f"{hashes[1][:12]}…)", fix="compare two runs over the same data file")
    indices = [sorted(r["index"] for r in records) for records in (base_records, new_records)]
    if indices[0] != indices[1]:
        raise LrcertError(f"{names[0]} holds {len(indices[0])} inputs and {names[1]} {len(indices[1])}"
                          + (" (other indices)" if len(indices[0]) == len(indices[1]) else ""),
                          fix="compare two complete runs over the same data")


# ------------------------------------------------------------------------------------ rendering


def _percent(change: float) -> str:
    return "±0%" if change == 0 else "+∞" if math.isinf(change) else f"{100 * change:+.1f}%"


def _rows(comparison: Comparison) -> list[tuple[str, str, str, str, str]]:
    """(radius, figure, base, candidate, change) rows, every norm's."""
    rows = []
    for p in comparison.norms:
        for quantity, by_figure in comparison.figures[p].items():
            label = (NORM_LABELS if quantity == "radius" else CERTIFIED_LABELS)[p]
            for figure, (was, now, change) in by_figure.items():
                rows.append((label, FIGURE_NAMES[figure], f"{was:.4g}", f"{now:.4g}", _percent(change)))
    return rows


def _facts(comparison: Comparison) -> list[str]:
    n = comparison.count
    facts = [f"{comparison.changed_region} of {n} inputs changed linear region, {comparison.changed_prediction} changed prediction"]
    for p in comparison.norms:
        was, now = comparison.exact_adversarial[p]
        drops = ", ".join(f"input {i} ×{ratio:.3g}" for i, _, _, ratio in comparison.largest_drops[p]) or "none"
        facts.append(f"{NORM_LABELS[p]}: exact adversarial inputs {was} → {now}; dropped most: {drops}")
    facts += [f"FAILED: {failure.describe()}" for failure in comparison.failures]
    return facts


def markdown(comparison: Comparison, names: tuple[str, str]) -> str:
    """The comparison as Markdown, for ``$GITHUB_STEP_SUMMARY`` or a merge-request comment."""
    verdict = "passed" if comparison.passed else "**failed**"
    lines = [f"### lrcert compare: {verdict}", "", f"`{names[0]}` → `{names[1]}`, {comparison.count} inputs", "",
             "| radius | figure | base | candidate | change |", "|---|---|---:|---:|---:|"]
    lines += [f"| {' | '.join(row)} |" for row in _rows(comparison)]
    lines += [""] + [f"- {fact}" for fact in _facts(comparison)]
    return "\n".join(lines) + "\n"


def print_table(out, comparison: Comparison, names: tuple[str, str], color: bool) -> None:
    """The comparison for people: one table, then the counts and the verdict."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out, no_color=not color, highlight=False, soft_wrap=False, width=120)
    table = Table(title=f"{names[0]} → {names[1]} ({comparison.count} inputs)", title_justify="left")
    for column, justify in (("radius", "left"), ("figure", "left"), ("base", "right"), ("candidate", "right"),
                            ("change", "right")):
        table.add_column(column, justify=justify)
    for row in _rows(comparison):
        table.add_row(*row)
    console.print(table)
    for fact in _facts(comparison):
        console.print(fact, highlight=False)
