"""``lrcert stability``'s results for people and pipelines: a table, one JSON document, JSON lines
or CSV, from the records of :meth:`lrcert.stability.StabilityResult.record`, and the summary over
inputs (P25/P50/P75 of each measure, the paper's columns)."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Iterable, Sequence, TextIO

import numpy as np

from .report import _width

#: The columns of the summary: name, how to read it from a record.
MEASURES = (
    ("ε̂", lambda r: r["certified"]["radius"]),
    ("E[Δ]", lambda r: r["expected"]["mean"]),
    ("max found", lambda r: r["max_found"]["value"]),
    ("max bound", lambda r: None if r["max_bound"]["vacuous"] else r["max_bound"]["value"]),
)
CSV_COLUMNS = ("index", "source", "label", "length", "target", "rival", "radius", "inside", "radius_delta", "expected",
               "stderr", "own_region", "regions", "interval_low", "interval_high", "max_found", "passes", "max_bound",
               "vacuous", "free_units", "units", "bound_by", "saliency_norm", "dtype")


def summary(records: Sequence[dict]) -> dict:
    """Per measure, P25/P50/P75 over the inputs (None where no input has it: ε̂ unbounded, every
    bound vacuous), and the counts a reader needs beside them."""
    out = {}
    for name, read in MEASURES:
        values = [v for v in (read(r) for r in records) if v is not None]
        out[name] = {q: (float(np.percentile(values, p)) if values else None) for q, p in (("p25", 25), ("p50", 50), ("p75", 75))}
    out["inside"] = sum(r["certified"]["inside"] for r in records)
    out["vacuous"] = sum(r["max_bound"]["vacuous"] for r in records)
    out["exact"] = sum(_exact(r) for r in records)
    out["inputs"] = len(records)
    return out


def json_document(model: dict, options: dict, records: Sequence[dict], run: dict) -> str:
    """The run as one JSON document (``kind: stability`` tells ``lrcert report`` what it holds)."""
    doc = {"kind": "stability", "model": model, "options": options, "run": run, "results": list(records),
           "summary": summary(records)}
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def jsonl_lines(records: Iterable[dict]) -> Iterable[str]:
    for record in records:
        yield json.dumps(record, allow_nan=False) + "\n"


def csv_header() -> str:
    return _row(CSV_COLUMNS)


def csv_lines(records: Iterable[dict]) -> Iterable[str]:
    for r in records:
        expected, found, bound = r["expected"], r["max_found"], r["max_bound"]
        interval = expected["interval"] or ["", ""]
        yield _row([r["index"], r.get("source", ""), r.get("label", ""), r.get("length", ""), r["target"]["class"],
                    r["target"].get("rival", ""), _number(r["certified"]["radius"]), int(r["certified"]["inside"]),
                    r["certified"]["delta"], expected["mean"], _number(expected["stderr"]), expected["own_region"],
                    expected["regions"], *interval, found["value"], found["passes"], _number(bound["value"]),
                    int(bound["vacuous"]), bound["free_units"], bound["units"], bound["by"], r["saliency_norm"], r["dtype"]])


def print_table(out: TextIO, records: Sequence[dict], title: str, color: bool, footer: Sequence[str] = ()) -> None:
    """One row per input, then the summary (P25/P50/P75), then ``footer`` lines."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out, no_color=not color, highlight=False, soft_wrap=False, width=max(100, _width(out)))
    table = Table(title=title, title_justify="left")
    sourced, labelled = any("source" in r for r in records), any("label" in r for r in records)
    for column, shown in (("input", True), ("source", sourced), ("label", labelled), ("target", True), ("ε̂", True),
                          ("E[Δ] ± s.e.", True), ("own region", True), ("regions", True), ("max found", True),
                          ("max bound", True), ("free units", True)):
        if shown:
            table.add_column(column, justify="left" if column == "source" else "right")
    for r in records:
        certified, expected, bound = r["certified"], r["expected"], r["max_bound"]
        cells = [str(r["index"])] + ([r.get("source", "-")] if sourced else []) + ([str(r.get("label", "-"))] if labelled else [])
        target = str(r["target"]["class"]) + (f"−{r['target']['rival']}" if "rival" in r["target"] else "")
        radius = _short(certified["radius"]) + (" ✓" if certified["inside"] else "")
        cells += [target, radius, f"{_short(expected['mean'])} ± {_short(expected['stderr'])}",
                  f"{100 * expected['own_region']:.0f}%", str(expected["regions"]), _short(r["max_found"]["value"]),
                  _bound_text(r), f"{bound['free_units']}/{bound['units']}"]
        table.add_row(*cells)
    console.print(table)
    totals = summary(records)
    table = Table(title=f"summary over {len(records)} inputs", title_justify="left")
    for column in ("", "P25", "P50", "P75"):
        table.add_column(column, justify="left" if not column else "right")
    for name, _ in MEASURES:
        table.add_row(name, *(_short(totals[name][q]) for q in ("p25", "p50", "p75")))
    console.print(table)
    console.print(f"✓ ε < ε̂: Δ ≡ 0 in the whole ball ({totals['inside']} of {len(records)} inputs) · = the bound meets the "
                  f"distortion found: the exact maximum ({totals['exact']}) · vacuous bounds: {totals['vacuous']}", highlight=False)
    for line in footer:
        console.print(line, highlight=False)


def _bound_text(record: dict) -> str:
    bound = record["max_bound"]
    if bound["vacuous"]:
        return "vacuous"
    return _short(bound["value"]) + (" =" if _exact(record) and bound["value"] else "")


def _exact(record: dict) -> bool:
    """Whether the certified bound equals the distortion found: the maximum is then known exactly."""
    bound = record["max_bound"]
    return not bound["vacuous"] and bound["value"] is not None and bound["value"] <= record["max_found"]["value"] * (1 + 1e-9)


def _short(value: float | None) -> str:
    if value is None:
        return "∞"
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return "0" if value == 0 else f"{value:.3g}"


def _number(value: float | None) -> str:
    return "inf" if value is None else repr(float(value))


def _row(values: Sequence) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()
