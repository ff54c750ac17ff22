"""Rendering only: results → rich table, JSON, JSON lines or CSV, and the per-norm summary.

JSON never holds ``Infinity``: an unbounded radius (no face at all) is ``null`` with
``"unbounded": true``.

>>> summarize([0.0, 1.0, 2.0, 3.0, 4.0])
{'min': 0.0, 'p25': 1.0, 'p50': 2.0, 'p75': 3.0, 'max': 4.0, 'zero': 1, 'unbounded': 0}
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Sequence, TextIO

import numpy as np

if TYPE_CHECKING:  # (rendering needs no torch: lrcert compare and report read results without it)
    from ..engine import InputResult

NORM_LABELS = {"l1": "ε̂₁", "l2": "ε̂₂", "linf": "ε̂∞"}
#: min(ε̂, prediction radius): the radius within which the prediction provably stays the same
CERTIFIED_LABELS = {"l1": "cert₁", "l2": "cert₂", "linf": "cert∞"}
PERCENTILES = (("min", 0), ("p25", 25), ("p50", 50), ("p75", 75), ("max", 100))


def radii_text(radius: dict[str, float]) -> str:
    """``ε̂₁=0.0363, ε̂₂=0.0353, ε̂∞=0.0283`` (for titles and one-line summaries)."""
    return ", ".join(f"{NORM_LABELS[p]}={r:.3g}" for p, r in radius.items())


def finite_or_none(value: float | None) -> float | None:
    return None if value is None or math.isinf(value) else value


def summarize(radii: Sequence[float]) -> dict:
    """min, P25, P50, P75, max (paper's tables), plus how many radii are 0 and how many unbounded."""
    values = np.sort(np.asarray(radii, dtype=np.float64))
    out: dict = {}
    for label, q in PERCENTILES:
        with np.errstate(invalid="ignore"):
            v = float(np.percentile(values, q)) if len(values) else math.nan
        out[label] = math.inf if math.isnan(v) and len(values) else v
    out["zero"] = int((values == 0).sum())
    out["unbounded"] = int(np.isinf(values).sum())
    return out


@dataclass
class Tally:
    """What the closing notes and the ``--min-radius`` check need from every result.

    Kept small (no bindings, no patterns), so runs over very large inputs stream in bounded memory.
    """

    norms: Sequence[str]
    thresholds: dict[str, float]
    certified_thresholds: dict[str, float] = field(default_factory=dict)  # --min-certified
    count: int = 0
    on_boundary: int = 0  # inputs with some ε̂ = 0
    ties: int = 0  # ... of which at a tied max-pool window
    flagged: list[int] = field(default_factory=list)  # precision warnings
    below: dict[str, list[int]] = field(default_factory=dict)  # thresholds not met
    below_certified: dict[str, list[int]] = field(default_factory=dict)  # certified thresholds not met
    dtypes: dict[str, int] = field(default_factory=dict)  # results per precision (auto: float32 kept, float64 refined)
    deltas: list[float] = field(default_factory=list)  # the δ of each sketched input
    exact_adversarial: int = 0  # inputs with an exact adversarial point in some norm
    labelled: list[tuple[int, int | None, dict[str, float]]] = field(default_factory=list)  # (label, prediction, ε̂)

    def add(self, index: int, radius: dict[str, float], kinds: dict[str, str | None], precision_warning: bool,
            dtype: str = "float32", certified: dict[str, float] | None = None, delta: float = 0.0,
            exact: dict[str, bool] | None = None, label: int | None = None, prediction: int | None = None) -> None:
        self.count += 1
        if label is not None:
            self.labelled.append((label, prediction, dict(radius)))
        if delta > 0:
            self.deltas.append(delta)
        self.exact_adversarial += bool(exact and any(exact.values()))
        for p, limit in self.certified_thresholds.items():
            if (radius if certified is None else certified)[p] < limit:  # one output: certified is ε̂
                self.below_certified.setdefault(p, []).append(index)
        self.dtypes[dtype] = self.dtypes.get(dtype, 0) + 1
        if any(radius[p] == 0 for p in self.norms):
            self.on_boundary += 1
            self.ties += any(kind == "maxpool" for kind in kinds.values())
        if precision_warning:
            self.flagged.append(index)
        for p, limit in self.thresholds.items():
            if radius[p] < limit:
                self.below.setdefault(p, []).append(index)

    def add_result(self, r: InputResult) -> None:
        kinds = {p: b.kind if b else None for p, b in r.binding.items()}
        self.add(r.index, r.radius, kinds, r.precision_warning, r.dtype, r.certified_radius, r.delta, r.exact_adversarial,
                 r.label, r.prediction)

    def add_record(self, record: dict) -> None:
        """A result read back from JSON (``null`` radius: unbounded)."""
        radius = radii_of(record, "radius")
        kinds = {p: b["kind"] if b else None for p, b in record["binding"].items()}
        certified = radii_of(record, "certified_radius") if record.get("certified_radius") else None
        guarantee = record.get("guarantee", "deterministic")
        self.add(record["index"], radius, kinds, record.get("precision_warning", False), record.get("dtype", "float32"),
                 certified, 0.0 if guarantee == "deterministic" else float(guarantee), record.get("exact_adversarial"),
                 record.get("label"), record.get("prediction"))


def some_of(count: int, total: int) -> str:
    """``3 of 16 inputs have`` / ``1 of 16 inputs has``: a count of inputs and its verb.

    >>> some_of(1, 16), some_of(3, 16)
    ('1 of 16 inputs has', '3 of 16 inputs have')
    """
    return f"{count} of {total} inputs {'has' if count == 1 else 'have'}"


def guarantee_text(count: int, deltas: Sequence[float]) -> str:
    """How sure the run's answers are: ``all 8 inputs deterministic``, or how many inputs were
    sketched, the largest δ among them and the run's union bound Σδ.

    >>> guarantee_text(4, [1e-13, 3e-13])
    '2 of 4 inputs sketched: each exact with probability ≥ 1 − 3.0e-13, all of them ≥ 1 − 4.0e-13; the other 2 deterministic'
    """
    if not deltas:
        return f"all {count} inputs deterministic" if count != 1 else "the input is deterministic"
    rest = count - len(deltas)
    others = f"; the other {rest} deterministic" if rest > 1 else "; the other one deterministic" if rest else ""
    if len(deltas) == 1:
        return f"{'the input' if count == 1 else '1 of ' + str(count) + ' inputs'} sketched: exact with probability ≥ 1 − {deltas[0]:.1e}{others}"
    return (f"{len(deltas)} of {count} inputs sketched: each exact with probability ≥ 1 − {max(deltas):.1e}, "
            f"all of them ≥ 1 − {math.fsum(deltas):.1e}{others}")


def model_record(path, network) -> dict:
    """What a run's JSON says of its model: the file, its SHA-256, and the layer list's sizes."""
    from ..data.arrays import sha256

    return {
        "path": str(path),
        "sha256": sha256(path),
        "layers": len(network.layers) - 1,
        "units": network.units,
        "input_shape": list(network.sample_shape),
        "output_shape": list(network.output_shape),
        "notes": list(network.notes),
    }


def radii_of(record: dict, key: str) -> dict[str, float]:
    """A JSON record's radii under ``key`` (``null``: unbounded, +inf)."""
    return {p: math.inf if v is None else v for p, v in record[key].items()}


def summary(results: Sequence[InputResult], norms: Sequence[str]) -> dict:
    return {p: summarize([r.radius[p] for r in results]) for p in norms}


def result_record(result: InputResult, norms: Sequence[str]) -> dict:
    """One input as a JSON-ready dict."""
    record = {"index": result.index}
    if result.source is not None:
        record["source"] = result.source
    if result.length is not None:
        record["length"] = result.length
    if result.label is not None:
        record |= {"label": result.label, "correct": result.prediction == result.label}
    record |= {
        "prediction": result.prediction,
        "radius": {p: finite_or_none(result.radius[p]) for p in norms},
        "unbounded": any(math.isinf(result.radius[p]) for p in norms),
        "binding": {p: (b.as_dict() if b else None) for p, b in result.binding.items()},
        "pattern": result.pattern,
        "precision_warning": result.precision_warning,
        "dtype": result.dtype,
        "guarantee": result.guarantee,
        "prediction_radius": _radii(result.prediction_radius, norms),
        "certified_radius": _radii(result.certified_radius, norms),
        "exact_adversarial": None if result.exact_adversarial is None else {p: result.exact_adversarial[p] for p in norms},
        "rival": None if result.rival is None else {p: result.rival[p] for p in norms},
    }
    if result.direction is not None:
        record["direction"] = {
            "radius": finite_or_none(result.direction),
            "unbounded": math.isinf(result.direction),
            "binding": result.direction_binding.as_dict() if result.direction_binding else None,
        }
    return record


def _radii(radius: dict[str, float] | None, norms: Sequence[str]) -> dict | None:
    return None if radius is None else {p: finite_or_none(radius[p]) for p in norms}


def json_document(model: dict, options: dict, results: Sequence[InputResult], norms: Sequence[str],
                  run: dict | None = None, labels: dict | None = None) -> str:
    """The whole run as one JSON document; ``run``: when and how long (``seconds``, ``date``);
    ``labels``: :func:`label_summary` where the data have labels."""
    doc = {
        "model": model,
        "options": options,
        "run": run or {},
        "results": [result_record(r, norms) for r in results],
        "summary": _json_summary(summary(results, norms)),
    }
    if labels is not None:
        doc["labels"] = labels
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def label_summary(rows: Sequence[tuple[int, int | None, dict[str, float]]], norms: Sequence[str],
                  classes: Sequence[str] | None = None) -> dict | None:
    """Accuracy against the labels, and ε̂ for correct and wrong predictions apart (a region around a
    misclassified input means something else), overall and per class, from (label, prediction,
    radius) of each labelled input; None where no input has a label.

    >>> s = label_summary([(0, 0, {"l2": 1.0}), (0, 1, {"l2": 0.5}), (1, 1, {"l2": 2.0})], ["l2"])
    >>> s["correct"], round(s["accuracy"], 3), s["radius"]["wrong"]["l2"]["p50"], s["per_class"][1]["radius"]["wrong"]
    (2, 0.667, 0.5, None)
    """
    if not rows:
        return None

    def part(chosen) -> dict:
        right = [r for label, predicted, r in chosen if predicted == label]
        wrong = [r for label, predicted, r in chosen if predicted != label]
        radii = {name: _json_summary({p: summarize([r[p] for r in group]) for p in norms}) if group else None
                 for name, group in (("correct", right), ("wrong", wrong))}  # (None: no such input)
        return {"inputs": len(chosen), "correct": len(right), "accuracy": len(right) / len(chosen), "radius": radii}

    by_class: dict[int, list] = {}
    for row in rows:  # (one pass: ImageNet's 50,000 inputs over 1,000 classes)
        by_class.setdefault(row[0], []).append(row)
    out = part(rows)
    out["per_class"] = []
    for label in sorted(by_class):
        entry = {"class": label, **part(by_class[label])}
        if classes is not None and 0 <= label < len(classes):
            entry["name"] = classes[label]
        out["per_class"].append(entry)
    return out


def label_lines(labels: dict, norms: Sequence[str]) -> list[str]:
    """:func:`label_summary` as lines for people: accuracy, then each class's, with median ε̂ of
    its correct and wrong predictions (the first norm of ``norms`` that is l2, else the first)."""
    p = "l2" if "l2" in norms else norms[0]

    def medians(part: dict) -> str:
        shown = {name: "-" if group is None else "∞" if group[p]["p50"] is None else f"{group[p]['p50']:.4g}"
                 for name, group in part["radius"].items()}
        return f"median {NORM_LABELS[p]} correct {shown['correct']}, wrong {shown['wrong']}"

    lines = [f"accuracy against the labels: {labels['correct']} of {labels['inputs']} correct "
             f"({100 * labels['accuracy']:.1f} %); {medians(labels)}"]
    for entry in labels["per_class"]:
        name = f"class {entry['class']}" + (f" ({entry['name']})" if "name" in entry else "")
        lines.append(f"  {name}: {entry['correct']} of {entry['inputs']} correct ({100 * entry['accuracy']:.1f} %); {medians(entry)}")
    return lines


def _json_summary(stats: dict) -> dict:
    return {p: {k: (finite_or_none(v) if isinstance(v, float) else v) for k, v in s.items()} for p, s in stats.items()}


def jsonl_lines(results: Iterable[InputResult], norms: Sequence[str]) -> Iterable[str]:
    for r in results:
        yield json.dumps(result_record(r, norms), allow_nan=False) + "\n"


def csv_header(norms: Sequence[str], directional: bool, sourced: bool = False, labelled: bool = False,
               sequences: bool = False) -> str:
    columns = ["index", *(["source"] if sourced else []), *(["length"] if sequences else []),
               *(["label", "correct"] if labelled else []), "prediction", *norms, *(f"binding_{p}" for p in norms), "pattern", "precision_warning", "dtype", "guarantee"]
    columns += [f"{what}_{p}" for what in ("prediction_radius", "certified", "exact_adversarial") for p in norms]
    if directional:
        columns += ["direction", "binding_direction"]
    return _csv_row(columns)


def csv_lines(results: Iterable[InputResult], norms: Sequence[str], directional: bool, sourced: bool = False,
              labelled: bool = False, sequences: bool = False) -> Iterable[str]:
    for r in results:
        row = [r.index, *([r.source] if sourced else []), *([r.length] if sequences else [])]
        if labelled:
            row += ["", ""] if r.label is None else [r.label, int(r.prediction == r.label)]
        row.append("" if r.prediction is None else r.prediction)
        row += [_number(r.radius[p]) for p in norms]
        row += [r.binding[p].describe() if r.binding[p] else "" for p in norms]
        row += [r.pattern, int(r.precision_warning), r.dtype, r.guarantee if r.delta == 0 else repr(r.delta)]
        if r.prediction_radius is None:  # one output: no other class to reach
            row += [""] * (3 * len(norms))
        else:
            row += [_number(r.prediction_radius[p]) for p in norms] + [_number(r.certified_radius[p]) for p in norms]
            row += [int(r.exact_adversarial[p]) for p in norms]
        if directional:
            row += [_number(r.direction), r.direction_binding.describe() if r.direction_binding else ""]
        yield _csv_row(row)


def _csv_row(values: Sequence) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return "inf" if math.isinf(value) else repr(float(value))


def _short(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:.4g}"


def print_table(
    out: TextIO,
    results: Sequence[InputResult],
    norms: Sequence[str],
    model_name: str,
    directional: bool,
    color: bool,
    guarantee: str | None = None,
    labels: dict | None = None,
) -> None:
    """The terminal view: one row per input, then the per-norm summary (paper's table layout),
    and how sure the answers are (``guarantee``, default :func:`guarantee_text`'s line)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out, no_color=not color, highlight=False, soft_wrap=False, width=max(100, _width(out)))
    shown = "l2" if "l2" in norms else norms[0]
    table = Table(title=f"linear-region radii — {model_name}", title_justify="left")
    table.add_column("input", justify="right")
    sourced = any(r.source is not None for r in results)
    if sourced:
        table.add_column("source", overflow="fold")
    sequences = any(r.length is not None for r in results)
    if sequences:
        table.add_column("steps", justify="right")
    labelled = any(r.label is not None for r in results)
    if labelled:
        table.add_column("label", justify="right")
    table.add_column("class", justify="right")
    with_certified = any(r.certified_radius is not None for r in results)  # (none: --no-prediction-radius)
    for p in norms:
        table.add_column(NORM_LABELS[p], justify="right")
        if with_certified:
            table.add_column(CERTIFIED_LABELS[p], justify="right")
    if directional:
        table.add_column("t (direction)", justify="right")
    table.add_column(f"binding constraint ({NORM_LABELS[shown]})")
    for r in results:
        cells = [str(r.index)]
        if sourced:
            cells.append(r.source or "-")
        if sequences:
            cells.append("-" if r.length is None else str(r.length))
        if labelled:
            cells.append("-" if r.label is None else str(r.label))
        cells.append("-" if r.prediction is None else str(r.prediction) + (" ✗" if labelled and r.prediction != r.label else ""))
        mark = " †" if r.precision_warning else ""
        for p in norms:
            cells.append(_short(r.radius[p]) + mark)
            certified = r.certified_radius
            if with_certified:
                cells.append("-" if certified is None else _short(certified[p]) + (" *" if r.exact_adversarial[p] else ""))
        if directional:
            cells.append(_short(r.direction))
        binding = r.binding[shown]
        cells.append(binding.describe() if binding else "none (no face: unbounded)")
        table.add_row(*cells)
    console.print(table)

    stats = summary(results, norms)
    totals = Table(title=f"summary over {len(results)} inputs", title_justify="left")
    totals.add_column("norm")
    for label, _ in PERCENTILES:
        totals.add_column(label.upper() if label.startswith("p") else label, justify="right")
    totals.add_column("ε̂ = 0", justify="right")
    totals.add_column("unbounded", justify="right")
    for p in norms:
        s = stats[p]
        totals.add_row(NORM_LABELS[p], *(_short(s[label]) for label, _ in PERCENTILES), str(s["zero"]), str(s["unbounded"]))
    certified = [r for r in results if r.certified_radius is not None]
    for p in norms if certified else ():
        s = summarize([r.certified_radius[p] for r in certified])
        totals.add_row(CERTIFIED_LABELS[p], *(_short(s[label]) for label, _ in PERCENTILES), str(s["zero"]), str(s["unbounded"]))
    console.print(totals)
    if any(any(r.exact_adversarial.values()) for r in certified):
        console.print("* the prediction radius is at most ε̂: the exact distance to another prediction", highlight=False)
    guarantee = guarantee or "guarantee: " + guarantee_text(len(results), [r.delta for r in results if r.delta > 0])
    console.print(guarantee, highlight=False)
    for line in label_lines(labels, norms) if labels is not None else ():
        console.print(line, highlight=False)


def _width(out: TextIO) -> int:
    import shutil

    return shutil.get_terminal_size((120, 24)).columns if getattr(out, "isatty", lambda: False)() else 140


def print_region_table(out: TextIO, title: str, rows: list[tuple[str, dict]]) -> None:
    """The paper's Table 1 layout, one row per model: accuracy, distinct activation patterns among
    the inputs, ε̂₁ and ε̂₂ at P25/P50/P75/max (rows from ``train.region_statistics``)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in ("model", "accuracy", "patterns"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for p in ("l1", "l2"):
        for q in ("P25", "P50", "P75", "max"):
            table.add_column(f"{NORM_LABELS[p]} {q}", justify="right")
    for name, stats in rows:
        cells = [name, f"{100 * stats['accuracy']:.1f}%", f"{stats['patterns']}/{stats['inputs']}"]
        cells += [f"{stats[p][q]:.3g}" for p in ("l1", "l2") for q in ("p25", "p50", "p75", "max")]
        table.add_row(*cells)
    Console(file=out, highlight=False, width=160 if not out.isatty() else None).print(table)
