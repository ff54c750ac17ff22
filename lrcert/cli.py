"""The ``lrcert`` command: thin Typer commands over load → engine → report.

Exit codes: 0 all good; 1 a ``--min-radius`` check failed; 2 usage or input error; 3 internal
error. Data goes to stdout (or ``--output``, written atomically); notes, progress and errors go
to stderr. Set ``LRCERT_DEBUG=1`` to see tracebacks of internal errors.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Iterator, Optional, TextIO

import typer

from . import __version__
from .errors import LrcertError, first_line

EXIT_OK, EXIT_CHECK_FAILED, EXIT_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
NORM_NAMES = {"1": "l1", "l1": "l1", "2": "l2", "l2": "l2", "inf": "linf", "linf": "linf", "∞": "linf"}

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Exact linear-region radii for piecewise-linear (ReLU) networks: how far each input can move "
    "in l1, l2 or linf before the network stops being linear around it.",
)


class Format(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class DType(str, Enum):
    float32 = "float32"
    float64 = "float64"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lrcert {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = None,
) -> None:
    """Exact linear-region radii for piecewise-linear (ReLU) networks."""


def _say(message: str) -> None:
    typer.echo(message, err=True)


#: Set by Ctrl-C or SIGTERM; the batch loop checks it, so an interruption that some library
#: swallowed still stops the run at the next batch.
_interrupted = threading.Event()


@contextmanager
def _interruptible() -> Iterator[None]:
    """Ctrl-C and SIGTERM (a CI timeout, kill) stop a command the same clean way: KeyboardInterrupt
    at once, and a flag that the batch loop checks (:func:`_stop_if_interrupted`). The previous
    handlers come back afterwards (the CLI also runs inside other programs, e.g. tests)."""

    def interrupt(signum, frame):
        _interrupted.set()
        raise KeyboardInterrupt

    _interrupted.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_if_interrupted() -> None:
    if _interrupted.is_set():
        raise KeyboardInterrupt


def reports_errors(command):
    """Wrap a command body so every failure becomes one line on stderr and a documented exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            with _interruptible():
                code = command(*args, **kwargs)
        except LrcertError as error:
            _say(f"lrcert: {'internal error: ' if error.internal else 'error: '}{error}")
            raise typer.Exit(EXIT_INTERNAL if error.internal else EXIT_INPUT) from None
        except KeyboardInterrupt:
            _say("lrcert: interrupted; no partial --output file was left behind")
            raise typer.Exit(130) from None
        except typer.Exit:
            raise
        except BrokenPipeError:  # the reader went away (| head): stop quietly, as Unix tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(141) from None
        except Exception as exc:  # a bug in lrcert: one line, exit 3
            if os.environ.get("LRCERT_DEBUG"):
                raise
            _say(
                f"lrcert: internal error: {type(exc).__name__}: {first_line(exc)}. Fix: rerun with LRCERT_DEBUG=1 "
                "for the traceback and report it."
            )
            raise typer.Exit(EXIT_INTERNAL) from None
        raise typer.Exit(code or EXIT_OK)

    return wrapper


# ---------------------------------------------------------------------------------------------- options


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


def integers(value: str) -> tuple[int, ...] | None:
    """``"3, 4,5"`` → ``(3, 4, 5)``; None when a part is not an integer."""
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        return None


def parse_shape(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    shape = integers(value.replace("x", ","))
    if shape is None:
        raise LrcertError(f"--input-shape {value!r} is not a list of sizes", fix="write e.g. --input-shape 1,28,28")
    if not shape or any(d <= 0 for d in shape):
        raise LrcertError(f"--input-shape {value!r} has no or non-positive sizes", fix="write e.g. --input-shape 1,28,28")
    return shape


def check_output_path(path: Path | None) -> None:
    if path is None:
        return
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise LrcertError(f"cannot write --output {str(path)!r}: folder {str(folder)!r} does not exist", fix="create it first")
    if path.is_dir():
        raise LrcertError(f"--output {str(path)!r} is a folder", fix="give a file name")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise LrcertError(f"cannot write --output {str(path)!r}: permission denied", fix="choose a writable place")


@contextmanager
def open_output(path: Path | None) -> Iterator[TextIO]:
    """stdout, or a temporary file beside ``path`` renamed over it only once everything is written."""
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    from .data import written_atomically

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


# ---------------------------------------------------------------------------------------------- certify


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
    dtype: Annotated[DType, typer.Option("--dtype", help="float64 for reference-grade radii; float32 is faster (true float32: TF32 is off while lrcert computes).")] = DType.float32,
    input_shape: Annotated[Optional[str], typer.Option("--input-shape", help="Shape of one input, e.g. 1,28,28 (only for models that do not record it).")] = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Allow loading a pickled model or TorchScript file: this runs code stored in the file.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="With --format jsonl --output FILE: continue an interrupted run, keeping the rows already written.")] = False,
) -> int:
    """Certify every input of DATA: the exact l1/l2/linf radius of its linear region and the face that binds."""
    import numpy as np
    import torch

    from . import data as data_io
    from . import devices, report
    from .engine import Engine
    from .load import load

    norms = parse_norms(p)
    thresholds = parse_thresholds(min_radius, norms)
    if batch_size is not None and batch_size < 1:
        raise LrcertError(f"--batch-size {batch_size} is not positive", fix="use 1 or more, or leave it out (automatic)")
    shape_hint = parse_shape(input_shape)
    check_output_path(output)
    if resume and (output_format != Format.jsonl or output is None):
        raise LrcertError("--resume needs --format jsonl and --output FILE", fix="add them, or drop --resume")
    target = devices.resolve(device.value)
    torch_dtype = torch.float64 if dtype == DType.float64 else torch.float32

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
        _say(f"note: {note}")

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
        _say(f"note: resuming after the {done} results already in {partial_path(output)}")
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
                _stop_if_interrupted()
            if output_format == Format.json:
                out.write(report.json_document(model_info, options, results, norms))
            elif output_format == Format.table:
                report.print_table(
                    out, results, norms, Path(model).name, directions is not None, color=out.isatty() and output is None
                )
    except KeyboardInterrupt:
        if output_format == Format.jsonl and output is not None:
            _say(
                f"lrcert: interrupted after {tally.count} results; {output} was not written, the completed rows are "
                f"in {partial_path(output)}. Fix: rerun the same command with --resume to continue."
            )
            raise typer.Exit(130) from None
        raise
    elapsed = time.perf_counter() - started
    fresh = tally.count - done
    _say(f"certified {fresh} inputs in {elapsed:.2f} s ({fresh / max(elapsed, 1e-9):.1f} inputs/s) on {devices.describe(target)}, {dtype.value}")
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
        _say(f"note: ε̂ = 0 for {tally.on_boundary} inputs: they lie on a region boundary ({'; '.join(why)})")
    if tally.flagged:
        shown = ", ".join(map(str, tally.flagged[:20])) + (", …" if len(tally.flagged) > 20 else "")
        fix = "rerun with --dtype float64" if dtype == DType.float32 else "the face is within float64 rounding of 0"
        _say(
            f"note: {len(tally.flagged)} inputs (marked †, \"precision_warning\": true) have a binding face so close "
            f"to 0 that {dtype.value} rounding may change their radius ({shown}); {fix}"
        )


def _check_thresholds(tally) -> int:
    for p, radius in tally.thresholds.items():
        below = tally.below.get(p, [])
        if below:
            shown = ", ".join(map(str, below[:20])) + (f", … ({len(below) - 20} more)" if len(below) > 20 else "")
            _say(f"FAILED: {len(below)} of {tally.count} inputs have {p} radius below {radius:g}: inputs {shown}")
        else:
            _say(f"passed: all {tally.count} inputs have {p} radius ≥ {radius:g}")
    return EXIT_CHECK_FAILED if tally.below else EXIT_OK


# ---------------------------------------------------------------------------------------------- inspect


@app.command()
@reports_errors
def inspect(
    model: Annotated[str, typer.Argument(help="Model file (ONNX, TorchScript, .pt2, or pickled with --trust-pickle).")],
    input_shape: Annotated[Optional[str], typer.Option("--input-shape", help="Shape of one input, for models that do not record it, e.g. 1,28,28.")] = None,
    output_format: Annotated[Format, typer.Option("--format", "-f", help="table or json.")] = Format.table,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Allow loading a pickled model (runs code from the file).")] = False,
) -> int:
    """Show the layer list lrcert built from MODEL, its input shape, and anything unsupported."""
    import json

    from .load import load

    try:
        network = load(model, trust_pickle=trust_pickle, sample_shape=parse_shape(input_shape))
    except LrcertError as error:
        if not error.details:
            raise
        _say(f"lrcert: {Path(model).name} cannot be certified; {len(error.details)} unsupported operation(s):")
        for detail in error.details:
            _say(f"  - {detail}")
        _say(f"Fix: {error.fix}.")
        return EXIT_INPUT
    layers = []
    for i, layer in enumerate(network.layers):
        layers.append(
            {
                "index": i,
                "name": layer.name,
                "kind": layer.kind,
                "inputs": list(layer.inputs),
                "shape": list(layer.shape),
                "units": layer.size if i in network.nonlinear else 0,
                "details": layer.describe(),
            }
        )
    if output_format == Format.json:
        doc = {
            "model": model,
            "input_shape": list(network.sample_shape),
            "output_shape": list(network.output_shape),
            "units": network.units,
            "layers": layers,
            "notes": list(network.notes),
        }
        typer.echo(json.dumps(doc, indent=2))
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stdout, highlight=False, width=140 if not sys.stdout.isatty() else None)
    table = Table(title=f"{Path(model).name}: {len(layers) - 1} layers, {network.units} nonlinear units", title_justify="left")
    for column in ("#", "name", "kind", "reads", "output shape", "units", "details"):
        table.add_column(column, justify="right" if column in ("#", "units") else "left")
    for row in layers:
        table.add_row(
            str(row["index"]), row["name"], row["kind"], ",".join(map(str, row["inputs"])) or "-",
            "×".join(map(str, row["shape"])) or "scalar", str(row["units"] or ""), row["details"],
        )
    console.print(table)
    console.print(f"input: one row of shape {network.sample_shape} (data files: shape (N, {', '.join(map(str, network.sample_shape))}))")
    console.print(f"output: shape {network.output_shape}")
    for note in network.notes:
        console.print(f"note: {note}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- train


def parse_widths(value: str | None, option: str) -> tuple[int, ...]:
    if not value:
        return ()
    widths = integers(value)
    if not widths or any(w < 1 for w in widths):
        raise LrcertError(f"{option} {value!r} is not a list of positive widths", fix=f"write e.g. {option} 300,300")
    return widths


@app.command()
@reports_errors
def train(
    data: Annotated[str, typer.Argument(help=".npz with 'x' (inputs, first axis indexes samples) and 'y' (integer class labels).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to save the trained model (ONNX, readable by lrcert certify).")],
    hidden: Annotated[str, typer.Option("--hidden", help="Widths of the dense ReLU layers, comma-separated.")] = "300,300,300,300",
    conv: Annotated[Optional[str], typer.Option("--conv", help="Channels of 3×3 stride-2 ReLU convolutions before the dense layers, e.g. 16,32 (inputs must be (N, C, H, W)).")] = None,
    lam: Annotated[float, typer.Option("--lam", help="ROLL weight λ: larger gives larger regions and, past a point, lower accuracy; 0 trains a vanilla network.")] = 0.5,
    C: Annotated[float, typer.Option("--C", help="ROLL hinge weight C on max(0, 1 − |z|).")] = 1.0,
    gamma: Annotated[float, typer.Option("--gamma", help="Percent of faces per input in the ROLL term (those with the largest terms).")] = 100.0,
    sample_dims: Annotated[Optional[int], typer.Option("--sample-dims", help="Estimate gradient norms from this many random input coordinates (faster on large inputs; needs --gamma 100).")] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the training data.")] = 20,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Samples per optimisation step.")] = 64,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the split, the initial weights, the shuffling and the sampled coordinates.")] = 0,
    val: Annotated[Optional[str], typer.Option("--val", help="Held-out .npz (x, y). Default: a --val-fraction split of DATA.")] = None,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Share of DATA held out when --val is not given.")] = 0.2,
    output_format: Annotated[Format, typer.Option("--format", "-f", help="table or json (the held-out statistics and the training history).")] = Format.table,
    device: Annotated[Device, typer.Option("--device", help="Where to train (the ROLL loss and the per-epoch certification too): auto takes the GPU when PyTorch sees one.")] = Device.auto,
) -> int:
    """Train a ReLU network with the ROLL regulariser (larger linear regions) and save it as ONNX.

    Reports held-out accuracy, distinct activation patterns and certified radii."""
    import json

    from . import devices
    from . import train as training

    settings = training.Settings(
        lam=lam, C=C, gamma=gamma, sample_dims=sample_dims, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed
    )
    settings.check()
    widths, channels = parse_widths(hidden, "--hidden"), parse_widths(conv, "--conv")
    if output_format not in (Format.table, Format.json):
        raise LrcertError(f"--format {output_format.value} is not available for train", fix="use --format table or json")
    out = out if out.suffix else out.with_suffix(".onnx")
    check_output_path(out)
    x, y = training.read_labelled(data)
    if val is not None:
        train_set, val_set = (x, y), training.read_labelled(val, what="--val data")
        if val_set[0].shape[1:] != x.shape[1:]:
            raise LrcertError(
                f"--val samples have shape {tuple(val_set[0].shape[1:])}, {data}'s have {tuple(x.shape[1:])}",
                fix="give held-out data shaped like the training data",
            )
    else:
        train_set, val_set = training.split(x, y, val_fraction, seed)
    classes = int(max(y.max(), val_set[1].max())) + 1
    target = devices.resolve(device.value)
    model = training.build_network(tuple(x.shape[1:]), classes, hidden=widths, conv=channels, seed=seed).to(target)
    _say(
        f"training on {len(train_set[0])} samples, {len(val_set[0])} held out; {classes} classes; λ={lam:g} C={C:g} "
        f"γ={gamma:g}; on {devices.describe(target)}"
    )
    with _epoch_progress(epochs) as on_epoch:
        history = training.fit(model, train_set, val_set, settings, on_epoch)
    training.save_onnx(model, tuple(x.shape[1:]), out)
    stats = training.region_statistics(model, *val_set)
    _say(f"saved {out}")
    if output_format == Format.json:
        doc = {"model": str(out), "settings": dataclasses.asdict(settings), "hidden": widths, "conv": channels,
               "history": history, "held_out": stats}
        typer.echo(json.dumps(doc, indent=2))
    else:
        from .report import print_region_table

        print_region_table(sys.stdout, f"{out.name} on {len(val_set[0])} held-out samples", [(out.name, stats)])
    return EXIT_OK


@contextmanager
def _epoch_progress(epochs: int):
    """Per epoch: a rich progress bar on a terminal, otherwise one line on stderr."""
    def line(record: dict) -> str:
        return (f"epoch {record['epoch']}/{epochs}: loss {record['loss']:.4f}, held-out accuracy "
                f"{record['accuracy']:.3f}, median ε̂₂ {record['median_l2']:.3g}")

    if not sys.stderr.isatty():
        yield lambda record: _say(line(record))
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"), TimeElapsedColumn()]
    with Progress(*columns, console=Console(file=sys.stderr)) as bar:
        task = bar.add_task("train", total=epochs, status="")
        yield lambda record: bar.update(task, advance=1, status=line(record).split(": ", 1)[1])


# ---------------------------------------------------------------------------------------------- plot, path


def parse_indices(value: str | None) -> list[int]:
    if not value:
        return []
    indices = integers(value)
    if indices is None:
        raise LrcertError(f"--points {value!r} is not a list of input indices", fix="write e.g. --points 0,3")
    return list(indices)


@app.command()
@reports_errors
def plot(
    model: Annotated[str, typer.Argument(help="Model file (ONNX, .pt2, or pickled/TorchScript with --trust-pickle).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Picture to write: .png or .svg.")],
    data: Annotated[Optional[str], typer.Option("--data", help=".npy/.npz of inputs: drawn (2-D models) and indexed by --points.")] = None,
    points: Annotated[Optional[str], typer.Option("--points", help="Inputs (indices into --data) whose certified l1/l2/linf balls are drawn; the plane goes through the first.")] = None,
    dirs: Annotated[str, typer.Option("--dirs", help="Plane directions (inputs of more than 2 dimensions): random | toward:INDEX (towards another input) | gradient (of the predicted logit) | FILE.npy (two directions).")] = "random",
    extent: Annotated[Optional[float], typer.Option("--extent", help="Half-width of the view in plane units. Default: the data's span (2-D), 1.3× the distance (toward:), else 3× how far the point's region reaches in the plane.")] = None,
    resolution: Annotated[int, typer.Option("--resolution", help="Pixels per side (each pixel's region is computed exactly).")] = 400,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the random plane directions.")] = 0,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Allow loading a pickled model (runs code from the file).")] = False,
) -> int:
    """Draw the linear regions of MODEL in a plane, with the certified balls of chosen inputs."""
    import numpy as np
    import torch

    from . import data as data_io
    from . import plot as plotting
    from .load import load

    if out.suffix.lower() not in (".png", ".svg"):
        raise LrcertError(f"--out {str(out)!r} is neither .png nor .svg", fix="name the picture fig.png or fig.svg")
    if not 16 <= resolution <= 2000:
        raise LrcertError(f"--resolution {resolution} is outside 16..2000", fix="e.g. --resolution 400")
    if extent is not None and not (0 < extent < math.inf):
        raise LrcertError(f"--extent {extent} is not a positive number", fix="e.g. --extent 0.5")
    check_output_path(out)
    indices = parse_indices(points)
    network = load(model, trust_pickle=trust_pickle, sample_shape=data_io.peek_row_shape(data))
    inputs = labels = None
    if data is not None:
        rows, notes = data_io.read_rows(data, network.sample_shape, name=data)
        inputs = torch.from_numpy(np.asarray(rows, dtype=np.float64))
        for note in notes:
            _say(f"note: {note}")
        for index in indices:
            if not 0 <= index < len(inputs):
                raise LrcertError(f"--points {index} is not an input of {data} (0..{len(inputs) - 1})", fix="pick existing inputs")
        labels_file = Path(str(data).replace(".inputs.npy", ".labels.npy"))
        labels = np.load(labels_file) if labels_file != Path(data) and labels_file.exists() else None
    elif indices:
        raise LrcertError("--points needs --data", fix="give the inputs with --data X.npy")
    plane = plotting.make_plane(network, inputs, indices, dirs, extent, seed)
    picture = plotting.picture(network, plane, inputs, indices, resolution)
    from .report import radii_text

    radii = "; ".join(f"input {i}: {radii_text(picture.radii[i])}" for i in indices[:3])
    title = f"{Path(model).name}: linear regions" + (f"\n{radii}" if radii else "")
    plotting.draw(picture, inputs, labels, title, out)
    _say(f"wrote {out}: {int(picture.regions.max()) + 1} linear regions in view")
    return EXIT_OK


@app.command()
@reports_errors
def path(
    model: Annotated[str, typer.Argument(help="Model file (ONNX, .pt2, or pickled/TorchScript with --trust-pickle).")],
    start: Annotated[str, typer.Argument(help=".npy holding the segment's start A (one input).")],
    end: Annotated[str, typer.Argument(help=".npy holding the segment's end B (one input).")],
    output_format: Annotated[Format, typer.Option("--format", "-f", help="table or json.")] = Format.table,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Allow loading a pickled model (runs code from the file).")] = False,
) -> int:
    """Count the linear regions the segment from A to B crosses, exactly, with each boundary.

    Prints each breakpoint t in (0, 1) and the face that flips there."""
    import json

    import numpy as np
    import torch

    from . import data as data_io
    from .load import load
    from .regions import STEP, walk

    network = load(model, trust_pickle=trust_pickle, sample_shape=data_io.peek_row_shape(start, single=True))
    ends = []
    for name in (start, end):
        rows, _ = data_io.read_rows(name, network.sample_shape, name=name, single=True)
        if len(rows) != 1:
            shape = ", ".join(map(str, network.sample_shape))
            raise LrcertError(
                f"{name} holds {len(rows)} inputs; a segment end is one input",
                fix=f"save one input, of shape ({shape}) or (1, {shape})",
            )
        ends.append(torch.from_numpy(np.asarray(rows[0], dtype=np.float64)))
    crossing = walk(network, *ends)
    if output_format == Format.json:
        typer.echo(json.dumps({"model": model, "start": start, "end": end, "min_region_width_t": STEP, **crossing.as_dict()}, indent=2))
        return EXIT_OK
    typer.echo(f"{crossing.regions} linear regions between {start} (t=0) and {end} (t=1)")
    for t, flip in zip(crossing.breakpoints, crossing.flips):
        typer.echo(f"  t={t:.9f}  flips {flip.describe() if flip else '(unknown face)'}")
    return EXIT_OK


def main() -> None:
    app()


if __name__ == "__main__":
    main()
