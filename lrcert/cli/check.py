"""``lrcert check [NAME …]``: the checks a project keeps in ``pyproject.toml`` (``[tool.lrcert]``)
or ``lrcert.toml``, one summary table, JUnit XML for CI, baselines kept up to date."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import LrcertError
from .common import (
    EXIT_CHECK_FAILED,
    EXIT_INPUT,
    EXIT_OK,
    NoCacheOption,
    SummaryFormat,
    ThreadsOption,
    app,
    check_output_path,
    reports_errors,
    say,
)


@app.command(short_help="Run the project's checks (floors, baselines) for CI.")
@reports_errors
def check(
    names: Annotated[Optional[list[str]], typer.Argument(metavar="NAME", help="The checks to run (default: all of them).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="The config file: an lrcert.toml, or a pyproject.toml with \\[tool.lrcert]. Default: the nearest one here or above.")] = None,
    junit_xml: Annotated[Optional[Path], typer.Option("--junit-xml", metavar="FILE", help="Also write the results as JUnit XML (one test case per check), for a CI system's test tab. Default: none.")] = None,
    update_baseline: Annotated[bool, typer.Option("--update-baseline", help="After a run where every check passed, write each check's results to its baseline file (atomically): the new accepted run. Default: off.")] = False,
    output_format: Annotated[SummaryFormat, typer.Option("--format", "-f", help="The summary: table (for people), json (for machines) or markdown (for $GITHUB_STEP_SUMMARY).")] = SummaryFormat.table,
    threads: ThreadsOption = None,
    no_cache: NoCacheOption = False,
) -> int:
    """Run the checks of the project's config: each model certifies its data, and a check fails
    where a radius is below its floor (min-radius, min-certified) or a figure dropped from the
    baseline run by more than max-drop. Exit 0: all passed; 1: a check failed; 2: a config or
    input error."""
    from ..ci import checks, junit
    from ..ci import config as settings
    from ..data.arrays import written_atomically

    check_output_path(junit_xml, "--junit-xml")
    path = config or settings.find(Path.cwd())
    chosen = settings.load(path)
    if names:
        known = {c.name: c for c in chosen}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise LrcertError(f"{path} has no check {unknown[0]!r}", fix=f"name one of {', '.join(known)}")
        chosen = [known[n] for n in names]
    outcomes = []
    for entry in chosen:
        say(f"checking {entry.name}: {entry.model} on {entry.data}")
        outcome = checks.run(entry, use_baseline=not (update_baseline and entry.baseline and not entry.baseline.exists()),
                             threads=threads, cache=not no_cache)
        if outcome.error:
            say(f"lrcert: error: {outcome.error}")
        for failure in outcome.failures:
            say(f"FAILED {entry.name}: {failure}")
        outcomes.append(outcome)
    _summary(outcomes, output_format)
    if junit_xml is not None:
        with written_atomically(junit_xml) as tmp:
            Path(tmp).write_text(junit.document(outcomes), encoding="utf-8")
    code = EXIT_INPUT if any(o.status == "error" for o in outcomes) else \
        EXIT_CHECK_FAILED if any(o.status == "failed" for o in outcomes) else EXIT_OK
    if update_baseline:
        _update(outcomes, code)
    return code


def _update(outcomes, code: int) -> None:
    """Write the baselines of a run where every check passed; say why not otherwise."""
    from ..data.arrays import written_atomically

    if code != EXIT_OK:
        say("baselines not updated: not every check passed")
        return
    for outcome in outcomes:
        if outcome.check.baseline is not None:
            outcome.check.baseline.parent.mkdir(parents=True, exist_ok=True)  # (a first baseline: its folder too)
            with written_atomically(outcome.check.baseline) as tmp:
                Path(tmp).write_text(outcome.document, encoding="utf-8")
            say(f"baseline {outcome.check.baseline} updated ({outcome.check.name})")


def _summary(outcomes, output_format: SummaryFormat) -> None:
    rows = [(o.check.name, str(o.inputs), "; ".join(o.figures) or "-", o.status, f"{o.seconds:.1f} s") for o in outcomes]
    if output_format == SummaryFormat.json:
        doc = [{"check": o.check.name, "inputs": o.inputs, "figures": o.figures, "status": o.status,
                "failures": o.failures, "error": o.error, "guarantee": o.guarantee, "seconds": o.seconds} for o in outcomes]
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    elif output_format == SummaryFormat.markdown:
        lines = ["### lrcert check", "", "| check | inputs | figures | result | time |", "|---|---:|---|---|---:|"]
        lines += [f"| {name} | {n} | {figures} | {'**' + status + '**' if status != 'passed' else status} | {t} |"
                  for name, n, figures, status, t in rows]
        failures = [f"- {o.check.name}: {text}" for o in outcomes for text in ([o.error] if o.error else o.failures)]
        sys.stdout.write("\n".join(lines + ([""] + failures if failures else [])) + "\n")
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="lrcert check", title_justify="left")
        for column, justify in (("check", "left"), ("inputs", "right"), ("figures", "left"), ("result", "left"),
                                ("time", "right")):
            table.add_column(column, justify=justify)
        for row in rows:
            table.add_row(*row)
        Console(file=sys.stdout, no_color=not sys.stdout.isatty(), highlight=False, width=140).print(table)
