"""Running ``lrcert check``'s checks (:mod:`lrcert.ci.config`): each model is loaded once and
certifies its data; the check fails where an input's radius (or certified radius) is below its
floor, or where a figure dropped from the baseline run by more than allowed (:mod:`lrcert.results.compare`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from ..errors import LrcertError
from ..results import compare, report, runs
from .config import Check

#: Failing inputs named in a failure message, at most.
LISTED = 20


@dataclass
class Outcome:
    """What one check found: its figures, its failures (or the error that stopped it), its run."""

    check: Check
    inputs: int = 0
    seconds: float = 0.0
    figures: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    error: str | None = None
    document: str | None = None  # the run as certify's JSON document (the next baseline)
    guarantee: str = ""

    @property
    def status(self) -> str:
        return "error" if self.error else "failed" if self.failures else "passed"


def run(check: Check, use_baseline: bool = True, threads: int | None = None, cache: bool = True) -> Outcome:
    """Certify ``check``'s data with its model and judge it; an input error ends it as an error.
    ``use_baseline`` False leaves out the comparison (its baseline is about to be written);
    ``threads``: the engine's CPU threads (None: auto, :mod:`lrcert.runtime.threads`); ``cache``:
    the model's converted network kept between runs (:mod:`lrcert.models.cache`)."""
    from ..data.arrays import sha256

    outcome = Outcome(check)
    started = time.perf_counter()
    try:
        data_hash = sha256(check.data)
        if check.certifies:
            records, outcome.document = _certify(check, data_hash, started, outcome, threads, cache)
            _floors(check, records, outcome)
            if check.baseline is not None and use_baseline:
                _against_baseline(check, records, data_hash, outcome)
        if check.stability is not None:
            _ceilings(check, _stability(check, threads, cache), outcome)
    except LrcertError as error:
        from .config import in_config_terms

        outcome.error = in_config_terms(str(error))
    outcome.seconds = time.perf_counter() - started
    return outcome


def _certify(check: Check, data_hash: str | None, started: float, outcome: Outcome,
             threads: int | None, cache: bool) -> tuple[list[dict], str]:
    """The check's results as certify's records, and as its JSON document."""
    import numpy as np
    import torch

    from ..models.load import opener
    from ..results.html_report import today
    from ..run import runner

    networks = opener(str(check.model), cache=cache)
    network, source = runner.prepare(str(check.data), networks, key=check.key,
                                     columns=check.columns, resize=check.resize, center_crop=check.center_crop,
                                     normalization=check.normalization, vary=check.vary, classes=check.classes,
                                     label_column=check.label_column)
    rows, box = source.rows, runner.box_of(check.box, source)
    dtype = {"auto": "auto", "float32": torch.float32, "float64": torch.float64}[check.dtype]
    engine = runner.engine_for(network, source, networks, norms=check.norms, device=check.device, dtype=dtype,
                               batch_size=check.batch_size, guarantee=check.guarantee, seed=check.seed,
                               threads=threads)
    plan = engine.plan(len(rows))
    batches = [np.arange(start, min(start + plan.batch_size, len(rows))) for start in range(0, len(rows), plan.batch_size)]
    results = [r for batch in runner.results_of(engine, source, batches, run_size=len(rows), box=box) for r in batch]
    outcome.inputs = len(results)
    deltas = [r.delta for r in results if r.delta > 0]
    outcome.guarantee = report.guarantee_text(len(results), deltas)
    options = {"data": str(check.data), "data_sha256": data_hash, "key": check.key,
               "norms": list(check.norms), "dtype": check.dtype, "device": check.device, "batch_size": plan.batch_size,
               "guarantee": check.guarantee, "sketch_directions": engine.sketch.k if engine.sketch else None,
               "seed": check.seed, "columns": check.columns, "resize": check.resize and list(check.resize),
               "center_crop": check.center_crop and list(check.center_crop), "vary": check.vary and list(check.vary),
               "normalize": check.normalization and dict(zip(("mean", "std"), map(list, check.normalization))),
               "box": box and list(box), "check": check.name}
    run_facts = {"seconds": time.perf_counter() - started, "date": today()}
    document = report.json_document(report.model_record(check.model, network), options, results, check.norms, run_facts)
    return [report.result_record(r, check.norms) for r in results], document


def _stability(check: Check, threads: int | None, cache: bool) -> list[dict]:
    """The check's data through ``lrcert stability`` (its ``stability`` table), as records."""
    import numpy as np
    import torch

    from ..models.load import opener
    from ..run import runner
    from ..stability import Stability

    asked = check.stability
    networks = opener(str(check.model), cache=cache)
    network, source = runner.prepare(str(check.data), networks, key=check.key, columns=check.columns, resize=check.resize,
                                     center_crop=check.center_crop, normalization=check.normalization, classes=check.classes,
                                     label_column=check.label_column)
    if source.lengths is not None:
        raise LrcertError(f"check {check.name}: stability over sequences of different lengths runs in lrcert stability only",
                          fix="run lrcert stability --max-distortion in CI for this data, or give rows of one length")
    dtype = {"auto": "auto", "float32": torch.float32, "float64": torch.float64}[check.dtype]
    analysis = Stability(network, eps=asked.eps, norm=asked.norm, box=runner.box_of(check.box, source), samples=asked.samples,
                         budget=asked.budget, target=asked.target, distortion=asked.distortion_norm, relative=asked.relative,
                         seed=check.seed, dtype=dtype, device=check.device, guarantee=check.guarantee, threads=threads)
    analysis.run_size = len(source.rows)
    labels = None if source.labels is None else torch.from_numpy(np.asarray(source.labels))
    records = []
    for start in range(0, len(source.rows), 16):
        rows = torch.from_numpy(np.asarray(source.rows[start : start + 16], dtype=np.float64))
        part = None if labels is None else labels[start : start + 16]
        records += [r.record() for r in analysis.run(rows, part, numbers=range(start, start + len(rows)))]
    return records


def _ceilings(check: Check, records: list[dict], outcome: Outcome) -> None:
    """max-distortion and max-bound: the largest per input, and the inputs above the ceiling (a
    vacuous bound is above every ceiling)."""
    asked = check.stability
    outcome.inputs = outcome.inputs or len(records)
    for label, ceiling, read in (("max Δ found", asked.max_distortion, lambda r: r["max_found"]["value"]),
                                 ("max Δ bound", asked.max_bound, lambda r: math.inf if r["max_bound"]["vacuous"]
                                  or r["max_bound"]["value"] is None else r["max_bound"]["value"])):
        if ceiling is None:
            continue
        values = [read(r) for r in records]
        largest = max(values, default=0.0)
        above = [_named(r) for r, v in zip(records, values) if v > ceiling]
        outcome.figures.append(f"{label} {'vacuous' if math.isinf(largest) else f'{largest:.3g}'} {'>' if above else '≤'} {ceiling:g}"
                               f" (ε {asked.eps_text})")
        if above:
            shown = ", ".join(map(str, above[:LISTED])) + (f", … ({len(above) - LISTED} more)" if len(above) > LISTED else "")
            outcome.failures.append(f"{report.some_of(len(above), len(records))} {label} above {ceiling:g}: inputs {shown}")


def _floors(check: Check, records: list[dict], outcome: Outcome) -> None:
    """min-radius and min-certified: the smallest radius per norm, and the inputs below the floor."""
    for quantity, floors, label in (("radius", check.min_radius, report.NORM_LABELS),
                                    ("certified_radius", check.min_certified, report.CERTIFIED_LABELS)):
        for p, floor in floors.items():
            values = [report.radii_of(r, quantity)[p] if r.get(quantity) else report.radii_of(r, "radius")[p]
                      for r in records]
            smallest = min(values) if values else math.inf
            below = [_named(r) for r, v in zip(records, values) if v < floor]
            outcome.figures.append(f"min {label[p]} {smallest:.3g} {'<' if below else '≥'} {floor:g}")
            if below:
                shown = ", ".join(map(str, below[:LISTED])) + (f", … ({len(below) - LISTED} more)" if len(below) > LISTED else "")
                outcome.failures.append(f"{report.some_of(len(below), len(records))} {label[p]} below {floor:g}: inputs {shown}")


def _named(record: dict) -> str:
    """An input as a failure names it: its number, and its file where it has one (``3 (cat/7.png)``)."""
    return f"{record['index']} ({record['source']})" if record.get("source") else str(record["index"])


def _against_baseline(check: Check, records: list[dict], data_hash: str | None, outcome: Outcome) -> None:
    """The run against the check's baseline: the limited figures' changes, and the drops too large."""
    if not check.baseline.is_file():
        raise LrcertError(f"check {check.name}: baseline {check.baseline} does not exist",
                          fix=f"create it from an accepted run: lrcert check {check.name} --update-baseline")
    base = runs.read(check.baseline)
    candidate = ({"options": {"data_sha256": data_hash}}, records)
    result = compare.compare(base, candidate, (str(check.baseline), f"check {check.name}"), check.max_drop,
                             check.max_drop_on)
    figure = {"median": "p50", "min": "min", "p25": "p25"}[check.max_drop_on]
    for p, limit in check.max_drop.items():
        for quantity, by_figure in result.figures[p].items():
            label = (report.NORM_LABELS if quantity == "radius" else report.CERTIFIED_LABELS)[p]
            change = by_figure[figure][2]
            shown = "+∞" if math.isinf(change) else f"{100 * change:+.1f}%"
            outcome.figures.append(f"{compare.FIGURE_NAMES[figure]} {label} {shown} (≥ −{100 * limit:g}%)")
    outcome.failures += [failure.describe() + f" (baseline {check.baseline})" for failure in result.failures]

