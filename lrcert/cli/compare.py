"""``lrcert compare BASE CANDIDATE``: how the radii moved between two certify runs of the same
data; ``--max-drop`` fails (exit 1) where a figure fell by more than allowed."""

from __future__ import annotations

import enum
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import EXIT_CHECK_FAILED, EXIT_OK, SummaryFormat, app, reports_errors, say


class Figure(str, enum.Enum):
    min = "min"
    p25 = "p25"
    median = "median"


@app.command(short_help="Compare two certify runs of the same data.")
@reports_errors
def compare(
    base: Annotated[Path, typer.Argument(metavar="BASE", help="The accepted run: lrcert certify's --format json or jsonl output.")],
    candidate: Annotated[Path, typer.Argument(metavar="CANDIDATE", help="The new run, over the same data.")],
    max_drop: Annotated[Optional[list[str]], typer.Option("--max-drop", metavar="DROP", help="Exit 1 when a figure of ε̂ or of the certified radius fell by more than this: 10% for every norm, l2=10% for one. Repeatable. Default: no limit (report only).")] = None,
    on: Annotated[Figure, typer.Option("--on", help="The figure --max-drop limits: the minimum, the 25th percentile or the median over the inputs.")] = Figure.median,
    output_format: Annotated[SummaryFormat, typer.Option("--format", "-f", help="table (for people), json (for machines) or markdown (for $GITHUB_STEP_SUMMARY or a merge-request comment).")] = SummaryFormat.table,
) -> int:
    """Compare two runs of lrcert certify over the same data: per norm the change in min, P25 and
    median of ε̂ and of the certified radius, the inputs whose radius dropped most, how many inputs
    changed region or prediction, and the exact adversarial counts."""
    from ..ci import limits
    from ..results import compare as comparing
    from ..results import runs

    names = (str(base), str(candidate))
    first, second = runs.read(base), runs.read(candidate)
    norms = tuple(p for p in limits.NORMS if p in first[1][0]["radius"] and p in second[1][0]["radius"])
    drops = limits.drops(max_drop, norms)
    result = comparing.compare(first, second, names, drops, on.value)
    if output_format == SummaryFormat.json:
        sys.stdout.write(json.dumps({"base": names[0], "candidate": names[1], "on": on.value,
                                     "max_drop": drops, **result.as_dict()}, indent=2) + "\n")
    elif output_format == SummaryFormat.markdown:
        sys.stdout.write(comparing.markdown(result, names))
    else:
        comparing.print_table(sys.stdout, result, names, color=sys.stdout.isatty())
    for failure in result.failures:
        say(f"FAILED: {failure.describe()}")
    if drops and result.passed:
        say("passed: " + ", ".join(f"{p} within {100 * limit:g}%" for p, limit in drops.items()) + f" ({on.value})")
    return EXIT_CHECK_FAILED if result.failures else EXIT_OK
