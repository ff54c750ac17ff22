"""``lrcert certify MODEL DATA``: every input's exact l1/l2/linf radius, streamed to a table,
JSON, JSON lines or CSV; ``--min-radius`` checks, ``--resume`` of interrupted runs."""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional, TextIO

import typer

from ..errors import LrcertError
from .common import (
    EXIT_CHECK_FAILED, EXIT_OK, NORM_NAMES, Device, DType, Format, app, check_output_path, parse_shape, reports_errors,
    say, stop_if_interrupted,
)


def parse_norms(values: list[str] | None) -> tuple[str, ...]:
    if not values:
        return ("l1", "l2", "linf")
    norms = []
    for value in values:
        for part in value.split(","):
            key = part.strip().lower()
            if key not in NORM_NAMES:
                raise LrcertError(f"unknown norm --p {part!r}", fix="use --p 1, --p 2 or --p inf (repeatable)")
            norms.append(NORM_NAMES[key])
    return tuple(p for p in ("l1", "l2", "linf") if p in norms)


def parse_thresholds(values: list[str] | None, norms: tuple[str, ...]) -> dict[str, float]:
    """``R`` applies to every selected norm; ``l2=R`` (or ``2=R``, ``inf=R``) to one."""
    thresholds: dict[str, float] = {}
    for value in values or []:
        name, _, number = value.rpartition("=")
        targets = norms if not name else (NORM_NAMES.get(name.strip().lower()),)
        if None in targets:
            raise LrcertError(f"--min-radius {value!r} names an unknown norm", fix="write R, l1=R, l2=R or linf=R")
        try:
            radius = float(number)
        except ValueError:
            raise LrcertError(f"--min-radius {value!r} is not a number", fix="write R, l1=R, l2=R or linf=R") from None
        if not radius >= 0 or math.isinf(radius):
            raise LrcertError(f"--min-radius {value!r} must be a finite number ≥ 0", fix="give a radius like 0.01")
        for p in targets:
            if p not in norms:
                raise LrcertError(f"--min-radius {value!r} checks {p}, which --p did not select", fix=f"add --p {p}")
            thresholds[p] = radius
    return thresholds


@contextmanager
def open_output(path: Path | None) -> Iterator[TextIO]:
    """stdout, or a temporary file beside ``path`` renamed over it only once everything is written."""
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    from ..data import written_atomically

    with written_atomically(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def partial_path(path: Path) -> Path:
    """Where a JSON-lines ``--output`` grows until the run completes (and where ``--resume`` looks)."""
    return path.with_name(path.name + ".partial")


@contextmanager
def open_resumable(path: Path) -> Iterator[TextIO]:
    """Append JSON lines to ``path``.partial; rename it to ``path`` when the run completes.

    Interrupted, the partial file keeps every complete line and ``path`` itself is never
    half-written; ``--resume`` continues from it.
    """
    partial = partial_path(path)
    with open(partial, "a", encoding="utf-8", newline="") as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def resume_point(path: Path, tally) -> int:
    """How many results a previous run of this command left in ``path`` (or its .partial).

    Reads them into ``tally``, drops a torn last line, and checks they are inputs 0..k-1 in order.
    """
    import json

    partial = partial_path(path)
    if not partial.exists() and path.exists():
        os.replace(path, partial)
    if not partial.exists():
        return 0
    raw = partial.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    count = 0
    for number, line in enumerate(complete.decode("utf-8", errors="replace").splitlines()):
        try:
            record = json.loads(line)
            ok = record.get("index") == number
        except (ValueError, AttributeError):
            ok = False
        if not ok:
            raise LrcertError(
                f"cannot resume: line {number + 1} of {partial} is not the result for input {number}",
                fix="resume only the same command that wrote it, or delete the file to start over",
            )
        tally.add_record(record)
        count += 1
    if len(complete) != len(raw):
        with open(partial, "r+b") as handle:
            handle.truncate(len(complete))
    return count


def file_sha256(path: str) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


@app.command()
@reports_errors
def certify(
    model: Annotated[str, typer.Argument(help="ONNX model, torch.export .pt2 program, or (with --trust-pickle) a TorchScript file or pickled nn.Module.")],
    data: Annotated[str, typer.Argument(help="Inputs: .npy or .npz whose first axis indexes inputs, or - for standard input.")],
    p: Annotated[Optional[list[str]], typer.Option("--p", help="Norm of the ball: 1, 2 or inf. Repeatable. Default: all three.")] = None,
    output_format: Annotated[Format, typer.Option("--format", "-f", help="table (for people), json, jsonl or csv (for pipelines).")] = Format.table,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the results to this file (atomically) instead of stdout.")] = None,
    min_radius: Annotated[Optional[list[str]], typer.Option("--min-radius", help="CI check: exit 1 if any radius is below R. 'R' applies to every selected norm, 'l2=R' to one. Repeatable.")] = None,
    direction: Annotated[Optional[str], typer.Option("--direction", help=".npy of directions d (one per input, or one for all): also report the largest t with x + t·d in the region.")] = None,
    key: Annotated[Optional[str], typer.Option("--key", help="Array to read from an .npz file with several.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Inputs per batch. Default: as many as fit the memory bound.")] = None,
    device: Annotated[Device, typer.Option("--device", help="Where to compute: auto takes the GPU when PyTorch sees one (batches then sized from its free memory).")] = Device.auto,
    dtype: Annotated[DType, typer.Option("--dtype", help="auto: float64 radii at about float32 speed (float32 work, rigorous rounding bounds, float64 where they do not settle the answer); float32: raw speed; float64: everything in float64.")] = DType.auto,
    input_shape: Annotated[Optional[str], typer.Option("--input-shape", help="Shape of one input, e.g. 1,28,28 (only for models that do not record it).")] = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Allow loading a pickled model or TorchScript file: this runs code stored in the file.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="With --format jsonl --output FILE: continue an interrupted run, keeping the rows already written.")] = False,
) -> int:
    """Certify every input of DATA: the exact l1/l2/linf radius of its linear region and the face that binds."""
    import numpy as np
    import torch

    from .. import data as data_io
    from .. import devices, report
    from ..engine import Engine
    from ..load import load

    norms = parse_norms(p)
    thresholds = parse_thresholds(min_radius, norms)
    if batch_size is not None and batch_size < 1:
        raise LrcertError(f"--batch-size {batch_size} is not positive", fix="use 1 or more, or leave it out (automatic)")
    shape_hint = parse_shape(input_shape)
    check_output_path(output)
    if resume and (output_format != Format.jsonl or output is None):
        raise LrcertError("--resume needs --format jsonl and --output FILE", fix="add them, or drop --resume")
    target = devices.resolve(device.value)
    torch_dtype = {DType.auto: "auto", DType.float32: torch.float32, DType.float64: torch.float64}[dtype]

    source = sys.stdin.buffer.read() if data == "-" else data
    if shape_hint is None:
        shape_hint = data_io.peek_row_shape(source, key)
    network = load(model, trust_pickle=trust_pickle, sample_shape=shape_hint)
    rows, notes = data_io.read_rows(source, network.sample_shape, key=key, name="stdin" if data == "-" else data)
    directions = None
    if direction is not None:
        directions, more = data_io.read_rows(direction, network.sample_shape, name=direction, what="directions")
        notes += more
        if len(directions) not in (1, len(rows)):
            raise LrcertError(
                f"{direction} holds {len(directions)} directions for {len(rows)} inputs",
                fix="give one direction per input, or a single direction for all",
            )
        directions = torch.from_numpy(np.asarray(directions, dtype=np.float64))
    for note in (*network.notes, *notes):
        say(f"note: {note}")

    engine = Engine(network, norms=norms, device=target, dtype=torch_dtype, batch_size=batch_size)
    plan = engine.plan(len(rows))
    model_info = {
        "path": model,
        "sha256": file_sha256(model),
        "layers": len(network.layers) - 1,
        "units": network.units,
        "input_shape": list(network.sample_shape),
        "output_shape": list(network.output_shape),
        "notes": list(network.notes),
    }
    options = {
        "data": "-" if data == "-" else data,
        "key": key,
        "norms": list(norms),
        "dtype": dtype.value,
        "device": devices.describe(target),
        "batch_size": plan.batch_size,
        "direction": direction,
        "min_radius": thresholds,
    }
    tally = report.Tally(norms, thresholds)
    done = resume_point(output, tally) if resume else 0
    if done:
        say(f"note: resuming after the {done} results already in {partial_path(output)}")
    streaming = output_format in (Format.jsonl, Format.csv)
    results = []  # kept whole only for the formats that need them all at the end
    started = time.perf_counter()
    writer = open_resumable(output) if output_format == Format.jsonl and output is not None else open_output(output)
    try:
        with writer as out, _progress(len(rows) - done) as advance:
            if output_format == Format.csv:
                out.write(report.csv_header(norms, directions is not None))
            batches = data_io.batches(rows[done:], plan.batch_size)
            for batch in engine.certify(batches, n_inputs=len(rows) - done, directions=directions, start=done):
                for result in batch:
                    tally.add_result(result)
                if output_format == Format.jsonl:
                    out.writelines(report.jsonl_lines(batch, norms))
                elif output_format == Format.csv:
                    out.writelines(report.csv_lines(batch, norms, directions is not None))
                if not streaming:
                    results.extend(batch)
                out.flush()
                advance(len(batch))
                stop_if_interrupted()
            if output_format == Format.json:
                out.write(report.json_document(model_info, options, results, norms))
            elif output_format == Format.table:
                report.print_table(
                    out, results, norms, Path(model).name, directions is not None, color=out.isatty() and output is None
                )
    except KeyboardInterrupt:
        if output_format == Format.jsonl and output is not None:
            say(
                f"lrcert: interrupted after {tally.count} results; {output} was not written, the completed rows are "
                f"in {partial_path(output)}. Fix: rerun the same command with --resume to continue."
            )
            raise typer.Exit(130) from None
        raise
    elapsed = time.perf_counter() - started
    fresh = tally.count - done
    how = dtype.value
    if dtype == DType.auto:
        refined = tally.dtypes.get("float64", 0)
        how = f"auto: {refined} of {tally.count} refined in float64, the rest exact in float32"
    say(f"certified {fresh} inputs in {elapsed:.2f} s ({fresh / max(elapsed, 1e-9):.1f} inputs/s) on {devices.describe(target)}, {how}")
    _explain(tally, dtype)
    return _check_thresholds(tally)


@contextmanager
def _progress(total: int):
    """A progress bar with inputs/s on stderr, only when stderr is a terminal."""
    if not sys.stderr.isatty() or total < 2:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn("certifying"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeRemainingColumn()]
    with Progress(*columns, console=Console(file=sys.stderr), transient=True) as bar:
        task = bar.add_task("certify", total=total, rate="")
        started = time.perf_counter()
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            bar.update(task, advance=n, rate=f"{done / max(time.perf_counter() - started, 1e-9):.1f} inputs/s")

        yield advance


def _explain(tally, dtype: DType) -> None:
    """Notes on stderr: inputs on a boundary (ε̂ = 0) and why, and precision warnings."""
    if tally.on_boundary:
        why = []
        if tally.ties:
            why.append(f"{tally.ties} at a tied max-pool window (equal values, e.g. over a constant background)")
        if tally.on_boundary - tally.ties:
            why.append(f"{tally.on_boundary - tally.ties} at a unit whose pre-activation is exactly 0")
        say(f"note: ε̂ = 0 for {tally.on_boundary} inputs: they lie on a region boundary ({'; '.join(why)})")
    if tally.flagged:
        shown = ", ".join(map(str, tally.flagged[:20])) + (", …" if len(tally.flagged) > 20 else "")
        fix = "rerun with --dtype auto or float64" if dtype == DType.float32 else "even float64 cannot decide them"
        say(
            f"note: {len(tally.flagged)} inputs (marked †, \"precision_warning\": true) have a binding face so close "
            f"to 0 that {'float64' if dtype == DType.auto else dtype.value} rounding may change their radius ({shown}); {fix}"
        )


def _check_thresholds(tally) -> int:
    for p, radius in tally.thresholds.items():
        below = tally.below.get(p, [])
        if below:
            shown = ", ".join(map(str, below[:20])) + (f", … ({len(below) - 20} more)" if len(below) > 20 else "")
            say(f"FAILED: {len(below)} of {tally.count} inputs have {p} radius below {radius:g}: inputs {shown}")
        else:
            say(f"passed: all {tally.count} inputs have {p} radius ≥ {radius:g}")
    return EXIT_CHECK_FAILED if tally.below else EXIT_OK
