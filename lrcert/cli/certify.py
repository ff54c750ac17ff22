"""``lrcert certify MODEL DATA``: every input's exact l1/l2/linf radius, streamed to a table,
JSON, JSON lines or CSV; ``--min-radius`` checks, ``--resume`` of interrupted runs."""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Optional

import typer

from ..ci import limits
from ..errors import LrcertError
from .common import (
    EXIT_CHECK_FAILED,
    EXIT_OK,
    Device,
    DType,
    Format,
    app,
    check_output_path,
    no_cache_option,
    parse_shape,
    reports_errors,
    say,
    stop_if_interrupted,
    threads_option,
)
from .outputs import (
    Resumed,
    adversarial_file,
    device_file,
    forget_rank_rows,
    nowhere,
    open_output,
    open_resumable,
    partial_path,
    put_point,
    rank_path,
    resumed_rows,
)


@app.command(short_help="Certify each input: its exact linear-region radius and face.",
             epilog="Exit codes: 0 all good · 1 a --min-radius or --min-certified check failed · 2 usage or input "
             "error (one line naming the problem and the fix) · 3 internal error (LRCERT_DEBUG=1 shows the traceback) · "
             "130 interrupted.")
@reports_errors
def certify(
    model: Annotated[str, typer.Argument(help="ONNX model, torch.export .pt2 program, or (with --trust-pickle) a TorchScript file or pickled nn.Module.")],
    data: Annotated[str, typer.Argument(help="Inputs: .npy or .npz whose first axis indexes inputs, - for standard input, a folder of PNG/JPEG/WebP images (class folders give labels), or a .csv or .parquet table (a 'label' column gives labels).")],
    p: Annotated[Optional[list[str]], typer.Option("--norm", "-p", "--p", metavar="NORM", help="Norm of the ball: 1, 2 or inf. Repeatable. Default: all three. (Under torchrun write --norm or -p: its parser takes --p for one of its own options.)", rich_help_panel="Radii")] = None,
    direction: Annotated[Optional[str], typer.Option("--direction", metavar="FILE", help=".npy of directions d (one per input, or one for all): also report the largest t with x + t·d in the region. Default: none.", rich_help_panel="Radii")] = None,
    dtype: Annotated[DType, typer.Option("--dtype", help="auto: float64 radii at about float32 speed (the expensive passes in float32 with rigorous rounding bounds, the faces that can bind recomputed in float64); float32: raw speed; float64: everything in float64.", rich_help_panel="Radii")] = DType.auto,
    guarantee: Annotated[str, typer.Option("--guarantee", metavar="DELTA", help="How sure every answer must be. A probability δ (default 1e-12): inputs whose faces the deterministic bounds cannot rule out are sketched with random directions where that is much cheaper (large inputs, deep networks: minutes instead of hours at 224×224), and the whole run is exact except with probability at most δ (each input reports its share). deterministic: never sketch.", rich_help_panel="Radii")] = "1e-12",
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Seed of the sketch's random directions (recorded with the results: a run is reproducible).", rich_help_panel="Radii")] = 0,
    key: Annotated[Optional[str], typer.Option("--key", metavar="NAME", help="Array to read from an .npz file with several. Default: the file's only array.", rich_help_panel="Data")] = None,
    columns: Annotated[Optional[str], typer.Option("--columns", metavar="A,B,…", help="For a table: the feature columns, in the model's order. Default: every column but the label column.", rich_help_panel="Data")] = None,
    label_column: Annotated[Optional[str], typer.Option("--label-column", metavar="NAME", help="For a table: the column of labels (class indices, or names of --classes). Default: 'label', where there is one.", rich_help_panel="Data")] = None,
    classes: Annotated[Optional[str], typer.Option("--classes", metavar="NAMES|FILE", help="The model's class names in output order (airplane,automobile,…) or a file of one per line: class folders and label cells are matched to them, and summaries name them. Default: folders named 0, 1, … by number, others in sorted order (with a warning where they cannot be all of the model's classes).", rich_help_panel="Data")] = None,
    resize: Annotated[Optional[str], typer.Option("--resize", metavar="N|H,W", help="For an image folder: resize as torchvision's Resize does (N: the shorter side to N; H,W: to that size). Default: none (every image of one size).", rich_help_panel="Data")] = None,
    center_crop: Annotated[Optional[str], typer.Option("--center-crop", metavar="N|H,W", help="For an image folder: then crop the center, as torchvision's CenterCrop. Default: none.", rich_help_panel="Data")] = None,
    mean: Annotated[Optional[str], typer.Option("--mean", metavar="M,…", help="The model expects (x − mean) / std (per channel): lrcert makes that its first layer, so every radius and adversarial point is in the data's own units (pixels). Needs --std. Default: none.", rich_help_panel="Data")] = None,
    std: Annotated[Optional[str], typer.Option("--std", metavar="S,…", help="The std of --mean's normalisation: one value, or one per channel. Default: none.", rich_help_panel="Data")] = None,
    normalize: Annotated[Optional[str], typer.Option("--normalize", metavar="PRESET", help="A known --mean/--std: imagenet (0.485,0.456,0.406 / 0.229,0.224,0.225). Default: none.", rich_help_panel="Data")] = None,
    vary: Annotated[Optional[list[str]], typer.Option("--vary", metavar="NAME", help="For an ONNX model with several inputs: certify along this input only, the others held at each row's values (radii, faces and adversarial points then move only its coordinates). Repeatable. Default: every input (their joint space).", rich_help_panel="Data")] = None,
    input_shape: Annotated[Optional[str], typer.Option("--input-shape", metavar="SHAPE", help="Shape of one input, e.g. 1,28,28 (only for models that do not record it). Default: the data's row shape.", rich_help_panel="Model")] = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Allow loading a pickled model or TorchScript file: this runs code stored in the file. Default: off.", rich_help_panel="Model")] = False,
    no_cache: no_cache_option("Model") = False,
    output_name: Annotated[Optional[str], typer.Option("--output-name", metavar="NAME", help="For an ONNX model with several outputs: the one predictions and prediction radii read (default: the first). The regions are the whole graph's either way.", rich_help_panel="Model")] = None,
    output_format: Annotated[Optional[Format], typer.Option("--format", "-f", help="table (for people), json, jsonl or csv (for pipelines). Default: the --output file's extension (.json, .jsonl, .csv), else table.", rich_help_panel="Output")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the results to this file (atomically) instead of stdout. Default: standard output.", rich_help_panel="Output")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="With --format jsonl --output FILE: continue an interrupted run, keeping the rows already written. Default: off (an interrupted run's left-over is refused).", rich_help_panel="Output")] = False,
    report_page: Annotated[Optional[Path], typer.Option("--report", help="Also write a self-contained HTML report of the run (see lrcert report). Default: none.", rich_help_panel="Output")] = None,
    min_radius: Annotated[Optional[list[str]], typer.Option("--min-radius", metavar="R", help="CI check: exit 1 if any radius is below R. 'R' applies to every selected norm, 'l2=R' to one. Repeatable. Default: no check.", rich_help_panel="Checks")] = None,
    min_certified: Annotated[Optional[list[str]], typer.Option("--min-certified", metavar="R", help="CI check on predictions: exit 1 if any certified radius, min(ε̂, prediction radius), is below R. Same forms as --min-radius. Default: no check.", rich_help_panel="Checks")] = None,
    box: Annotated[Optional[str], typer.Option("--box", metavar="LO,HI", help="Valid inputs lie in [LO, HI] (pixels: 0,1, the default for image folders; none: no box): prediction radii at most ε̂ and adversarial points are then the closest inputs inside the box with another prediction.", rich_help_panel="Prediction and adversarial points")] = None,
    adversarial_out: Annotated[Optional[Path], typer.Option("--adversarial-out", help="Write an .npy shaped like the inputs (float64): row i is the closest input with another prediction where the prediction radius is at most ε̂ (exact), NaN elsewhere. Default: none.", rich_help_panel="Prediction and adversarial points")] = None,
    adversarial_norm: Annotated[Optional[str], typer.Option("--adversarial-norm", metavar="NORM", help="Norm of the adversarial points: 1, 2 or inf. Default: l2, or the one norm --p selects.", rich_help_panel="Prediction and adversarial points")] = None,
    no_prediction_radius: Annotated[bool, typer.Option("--no-prediction-radius", help="Leave out each input's prediction and certified radius (their reverse passes): ε̂ alone, at full speed. Default: off (the prediction radius is computed).", rich_help_panel="Prediction and adversarial points")] = False,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Inputs per batch. Default: as many as fit the memory bound.", rich_help_panel="Engine")] = None,
    device: Annotated[Device, typer.Option("--device", help="Where to compute: auto takes the GPU when PyTorch sees one (batches then sized from its free memory).", rich_help_panel="Engine")] = Device.auto,
    threads: threads_option("Engine") = None,
) -> int:
    """Certify every input of DATA: the exact l1/l2/linf radius of its linear region and the face that binds."""
    asked = SimpleNamespace(**locals())  # (the options as given; the steps below add what they derive)
    _parse(asked)
    ranks = _ranks(asked)
    run = _prepare(asked, ranks)
    _stream(asked, run, ranks)
    code = _finish(asked, run, ranks) if ranks.rank == 0 else EXIT_OK
    ranks.close()
    if ranks.launched:
        ranks.leave(code)  # rank 0's verdict covers every rank's inputs; torchrun passes it on
    return code


def _parse(asked: SimpleNamespace) -> None:
    """Check the options against each other and read their values (norms, floors, sizes, …), before any work."""
    import torch

    from ..data import sources

    asked.output_format = _format_for(asked.output_format, asked.output)
    asked.norms = limits.norms(asked.p)
    asked.bound = limits.guarantee(asked.guarantee)
    asked.thresholds = limits.radii(asked.min_radius, asked.norms)
    asked.certified_thresholds = limits.radii(asked.min_certified, asked.norms, "--min-certified")
    pictured = asked.adversarial_out or asked.report_page
    asked.point_norm = _adversarial_norm(asked.adversarial_norm, asked.norms) if pictured else None
    for path, suffix, what in ((asked.adversarial_out, ".npy", "--adversarial-out"), (asked.report_page, ".html", "--report")):
        if path is not None:
            if path.suffix.lower() != suffix:
                raise LrcertError(f"{what} {path} does not end in {suffix}", fix=f"name a {suffix} file")
            check_output_path(path, what)
    if asked.no_prediction_radius and (asked.certified_thresholds or asked.adversarial_out):
        raise LrcertError("--min-certified and --adversarial-out need the prediction radius",
                          fix="drop --no-prediction-radius")
    if asked.adversarial_out is not None and asked.resume:
        raise LrcertError("--adversarial-out cannot continue an interrupted run (--resume)",
                          fix="rerun without --resume, or drop --adversarial-out")
    if asked.batch_size is not None and asked.batch_size < 1:
        raise LrcertError(f"--batch-size {asked.batch_size} is not positive", fix="use 1 or more, or leave it out (automatic)")
    asked.shape_hint = parse_shape(asked.input_shape)
    check_output_path(asked.output)
    if asked.resume and (asked.output_format != Format.jsonl or asked.output is None):
        raise LrcertError("--resume needs --format jsonl and --output FILE", fix="add them, or drop --resume")
    asked.torch_dtype = {DType.auto: "auto", DType.float32: torch.float32, DType.float64: torch.float64}[asked.dtype]
    asked.resize_to, asked.crop_to = sources.sizes(asked.resize), sources.sizes(asked.center_crop, "--center-crop")
    asked.normalization = sources.normalization(asked.mean, asked.std, asked.normalize)
    asked.class_names = sources.class_names(asked.classes)


def _ranks(asked: SimpleNamespace):
    """torchrun's ranks, or this one process; each rank's device (``asked.target``)."""
    from ..runtime import devices
    from ..runtime.ranks import Ranks

    ranks = Ranks.from_environment()
    if ranks.launched and asked.data == "-":
        raise LrcertError("under torchrun every rank reads the data itself, so it cannot come from stdin", fix="give a file")
    asked.target = ranks.start(devices.resolve(asked.device.value))
    return ranks


def _prepare(asked: SimpleNamespace, ranks) -> SimpleNamespace:
    """The network, the data and the engine of the run, and the record of its options."""
    from ..models.load import opener
    from ..results import report
    from ..run import runner

    lead = ranks.rank == 0  # writes the output and every note
    run = SimpleNamespace(raw=sys.stdin.buffer.read() if asked.data == "-" else None)
    networks = opener(asked.model, trust_pickle=asked.trust_pickle, output_name=asked.output_name, cache=not asked.no_cache)
    run.network, run.dataset = runner.prepare(
        asked.data, networks, raw=run.raw, key=asked.key, columns=asked.columns, resize=asked.resize_to,
        center_crop=asked.crop_to, normalization=asked.normalization, vary=asked.vary, shape_hint=asked.shape_hint,
        classes=asked.class_names, label_column=asked.label_column)
    run.valid = runner.box_of(asked.box, run.dataset)
    run.directions = _directions(asked.direction, run.network, run.dataset)
    for note in (*run.network.notes, *run.dataset.notes) if lead else ():
        say(note if note.startswith("warning:") else f"note: {note}")
    run.progress = _Progress(run.network.dimensions, ranks.size, shown=lead)
    run.engine = runner.engine_for(
        run.network, run.dataset, networks, norms=asked.norms, device=asked.target, dtype=asked.torch_dtype,
        batch_size=asked.batch_size, predictions=not asked.no_prediction_radius, adversarial_norm=asked.point_norm,
        progress=run.progress.pushed, guarantee=asked.bound, seed=asked.seed, threads=asked.threads)
    run.plan = run.engine.plan(len(run.dataset.rows))
    run.model_info = report.model_record(asked.model, run.network)
    run.options = _options_record(asked, run)
    return run


def _directions(direction: str | None, network, dataset):
    """--direction's rows as a float64 tensor (one per input, or one for all), or None."""
    import numpy as np
    import torch

    from ..data import arrays as data_io

    if direction is None:
        return None
    directions, more = data_io.read_rows(direction, network.sample_shape, name=direction, what="directions")
    dataset.notes += more
    if len(directions) not in (1, len(dataset.rows)):
        raise LrcertError(f"{direction} holds {len(directions)} directions for {len(dataset.rows)} inputs",
                          fix="give one direction per input, or a single direction for all")
    directions = torch.from_numpy(np.array(directions, dtype=np.float64))  # (a copy: torch wants writable memory)
    if network.varied is not None and directions.reshape(len(directions), -1).index_fill(1, network.varied, 0).any():
        raise LrcertError(f"{direction} moves the inputs --vary holds",
                          fix="set their coordinates of every direction to 0, or drop --vary")
    return directions


def _options_record(asked: SimpleNamespace, run: SimpleNamespace) -> dict:
    """The run's options as the JSON document records them."""
    from ..data import arrays as data_io
    from ..runtime import devices

    normalization = asked.normalization
    return {
        "data": asked.data,
        "data_sha256": hashlib.sha256(run.raw).hexdigest() if run.raw is not None else data_io.sha256(asked.data),
        "key": asked.key, "norms": list(asked.norms), "dtype": asked.dtype.value, "device": devices.describe(asked.target),
        "batch_size": run.plan.batch_size, "direction": asked.direction, "vary": asked.vary or None,
        "columns": asked.columns, "label_column": asked.label_column, "classes": asked.class_names,
        "resize": list(asked.resize_to) if asked.resize_to else None,
        "center_crop": list(asked.crop_to) if asked.crop_to else None,
        "normalize": None if normalization is None else {"mean": list(normalization[0]), "std": list(normalization[1])},
        "box": None if run.valid is None else list(run.valid),
        "min_radius": asked.thresholds, "min_certified": asked.certified_thresholds,
        "adversarial_out": None if asked.adversarial_out is None else str(asked.adversarial_out),
        "adversarial_norm": asked.point_norm, "guarantee": asked.bound,
        "sketch_directions": run.engine.sketch.k if run.engine.sketch is not None else None,
        "seed": asked.seed, "threads": asked.threads,
    }


def _stream(asked: SimpleNamespace, run: SimpleNamespace, ranks) -> None:
    """Certify this rank's share, rank 0 writing every result in input order as the rounds finish
    (a resumed run skips the rows it has); an interruption keeps the completed rows resumable."""
    from ..results import report
    from ..runtime.ranks import deal

    lead, output = ranks.rank == 0, asked.output
    run.tally = report.Tally(asked.norms, asked.thresholds, asked.certified_thresholds)
    run.resumable = asked.output_format == Format.jsonl and output is not None and not device_file(output)
    resumed = resumed_rows(output, run.tally, asked.resume, lead) if run.resumable else Resumed()
    rows = len(run.dataset.rows)
    run.remaining = ranks.share(resumed.remaining(rows) if lead else None)
    rounds = deal(run.remaining, _share(run.plan.batch_size, len(run.remaining), ranks.size, asked.batch_size), ranks.size)
    if lead and resumed.prefix:
        say(f"note: resuming after the {resumed.prefix + len(resumed.scattered)} results already in {partial_path(output)}")
    run.started = time.perf_counter()
    ordered = _InOrder(asked.output_format, asked.norms, run.directions is not None, run.tally, resumed, run.dataset)
    own_rows = open(rank_path(output, ranks), "a", encoding="utf-8") if run.resumable and ranks.size > 1 else None
    run.page = _ReportRows(asked.norms, asked.point_norm) if asked.report_page and lead else None
    try:
        _write(asked, run, ranks, rounds, ordered if lead else None, own_rows)
    except KeyboardInterrupt:
        if run.resumable:
            who = f"{ranks.name}: " if ranks.launched else ""
            kept = f"{partial_path(output)}" + (" and the ranks' own .partial files" if ranks.size > 1 else "")
            say(f"lrcert: {who}interrupted after {run.tally.count} results; {output} was not written, the completed rows "
                f"are in {kept if lead else rank_path(output, ranks)}. Fix: rerun the same command with --resume to continue.")
            raise typer.Exit(130) from None
        raise
    finally:
        if own_rows is not None:
            own_rows.close()


def _write(asked: SimpleNamespace, run: SimpleNamespace, ranks, rounds, ordered, own_rows) -> None:
    """The rounds through the engine and out: the output (rank 0), adversarial points, the report's rows."""
    from ..results import report
    from ..results.html_report import today

    lead, output = ordered is not None, asked.output
    writer = (open_resumable(output) if run.resumable else open_output(output)) if lead else nowhere()
    shape = (len(run.dataset.rows), *run.network.sample_shape)
    points = adversarial_file(asked.adversarial_out, shape) if asked.adversarial_out and lead else nowhere()
    with writer as out, points as adversarial, run.progress.counting(len(run.remaining)):
        if lead:
            ordered.begin(out)
        for mine in _my_rounds(run.engine, run.dataset, run.directions, rounds, ranks, asked.norms, own_rows, run.valid,
                               asked.point_norm):
            everyone = ranks.gather(mine)
            if lead:
                fresh = [result for rank_rows in everyone for result in rank_rows]
                ordered.add(out, fresh)
                for result in fresh:
                    if adversarial is not None:
                        put_point(adversarial, result)
                    if run.page is not None:
                        run.page.add(result)
                run.progress.finished(len(fresh))
            stop_if_interrupted()
        if lead:
            facts = {"seconds": time.perf_counter() - run.started, "date": today()}
            sketch = f" ({run.engine.sketch.k} random directions, seed {asked.seed})" if run.tally.deltas else ""
            run.certainty = f"guarantee: {report.guarantee_text(run.tally.count, run.tally.deltas)}{sketch}"
            run.labels = report.label_summary(run.tally.labelled, asked.norms, run.dataset.classes)
            ordered.end(out, run.model_info, run.options, facts, Path(asked.model).name, out.isatty() and output is None,
                        run.certainty, run.labels)


def _finish(asked: SimpleNamespace, run: SimpleNamespace, ranks) -> int:
    """Rank 0's closing lines on stderr, the report, and the checks' verdict (the exit code)."""
    from ..results import report
    from ..results.html_report import today
    from ..runtime import devices

    if run.resumable:
        forget_rank_rows(asked.output)
    elapsed, fresh, tally = time.perf_counter() - run.started, len(run.remaining), run.tally
    how = asked.dtype.value
    if asked.dtype == DType.auto:
        exact64 = tally.dtypes.get("float64", 0)
        how = ("auto: all exact in float64" if exact64 == tally.count else "auto: all exact in float32" if exact64 == 0
               else f"auto: {exact64} of {tally.count} exact in float64, the rest in float32")
    several = f", {ranks.size} rank{'s' if ranks.size > 1 else ''}" if ranks.launched else ""
    where = devices.describe(asked.target) + several
    counted = f"{fresh} input{'' if fresh == 1 else 's'}"
    say(f"certified {counted} in {elapsed:.2f} s ({fresh / max(elapsed, 1e-9):.1f} inputs/s) on {where}, {how}")
    if asked.output_format != Format.table or asked.output is not None:  # (the table's own footer says it)
        say(run.certainty)
    if run.labels is not None and asked.output_format != Format.table:  # (the table prints them itself)
        for line in report.label_lines(run.labels, asked.norms):
            say(line)
    _explain(tally, asked.dtype)
    if asked.adversarial_out is not None and not tally.exact_adversarial:
        say(f"note: no input has an exact adversarial point (the prediction radius exceeds ε̂ everywhere: the region "
            f"ends first), so {asked.adversarial_out} holds only NaN")
    if run.page is not None:
        notes = [*run.network.notes, *run.dataset.notes]
        page = {"model": run.model_info, "options": run.options, "seconds": elapsed, "date": today(), "notes": notes}
        run.page.write(asked.report_page, page, run.dataset.rows, run.network.sample_shape)
        say(f"report: {asked.report_page}")
    return _check_thresholds(tally)


#: --output extensions and the format each names.
EXTENSIONS = {".json": Format.json, ".jsonl": Format.jsonl, ".ndjson": Format.jsonl, ".csv": Format.csv}


def _format_for(given: Format | None, output: Path | None) -> Format:
    """--format, or the one --output's extension names (table for others); a format that
    contradicts the extension is refused (a table in results.json is no JSON)."""
    named = EXTENSIONS.get(output.suffix.lower()) if output is not None else None
    if given is None:
        return named or Format.table
    if named is not None and given != named:
        raise LrcertError(f"--format {given.value} does not write what {output.name} names ({named.value})",
                          fix=f"drop --format (the extension chooses), or name the file for {given.value}")
    return given


def _share(batch: int, count: int, ranks: int, requested: int | None) -> int:
    """Inputs per batch among ranks: the plan's, but small enough that every rank gets about four
    batches (work to share, and rows leaving in order as it goes), unless --batch-size says."""
    if requested is not None or ranks == 1:
        return batch
    return max(1, min(batch, math.ceil(count / (4 * ranks))))


def _my_rounds(engine, dataset, directions, rounds, ranks, norms, own_rows, valid, point_norm):
    """This rank's results, one list per round (empty where it has no batch), numbered by input,
    its own batches streamed through the engine (:func:`lrcert.run.runner.results_of`)."""
    import numpy as np
    import torch

    from ..results import report
    from ..run import runner

    mine = [batch[ranks.rank] for batch in rounds if len(batch) > ranks.rank]
    order = np.concatenate(mine) if mine else np.zeros(0, dtype=np.int64)
    own = None if directions is None or len(directions) == 1 else directions[torch.from_numpy(order)]
    produced = runner.results_of(engine, dataset, mine, directions=directions if own is None else own,
                                 run_size=len(dataset.rows), box=valid, adversarial_norm=point_norm)
    for batch in rounds:
        if len(batch) <= ranks.rank:
            yield []
            continue
        results = next(produced)
        if own_rows is not None:
            own_rows.writelines(report.jsonl_lines(results, norms))
            own_rows.flush()
        yield results


class _InOrder:
    """Rank 0's writer: results arrive by rounds, from every rank, and leave in input order (with
    rows a resumed run already had), to a table, JSON, JSON lines or CSV."""

    def __init__(self, output_format, norms, directional: bool, tally, resumed: "Resumed", dataset):
        self.format, self.norms, self.directional, self.tally = output_format, norms, directional, tally
        self.sourced, self.labelled = dataset.names is not None, dataset.labels is not None
        self.sequences = dataset.lengths is not None
        self.waiting: dict[int, object] = dict(resumed.scattered)  # index -> InputResult, or a JSON line
        self.next = resumed.prefix
        self.kept = []  # every result, for the formats written at the end

    def begin(self, out) -> None:
        from ..results import report

        if self.format == Format.csv:
            out.write(report.csv_header(self.norms, self.directional, self.sourced, self.labelled, self.sequences))

    def add(self, out, results) -> None:
        from ..results import report

        self.waiting.update((r.index, r) for r in results)
        while self.next in self.waiting:
            item = self.waiting.pop(self.next)
            self.next += 1
            if isinstance(item, str):  # a row of the interrupted run (JSON lines only)
                self.tally.add_record(json.loads(item))
                out.write(item)
                continue
            self.tally.add_result(item)
            if self.format == Format.jsonl:
                out.writelines(report.jsonl_lines([item], self.norms))
            elif self.format == Format.csv:
                out.writelines(report.csv_lines([item], self.norms, self.directional, self.sourced, self.labelled,
                                                self.sequences))
            else:
                self.kept.append(item)
        out.flush()

    def end(self, out, model_info, options, run, model_name: str, color: bool, guarantee: str, labels: dict | None) -> None:
        from ..results import report

        if self.waiting:
            raise LrcertError(f"internal: results {sorted(self.waiting)[:5]} were never written", internal=True)
        if self.format == Format.json:
            out.write(report.json_document(model_info, options, self.kept, self.norms, run, labels))
        elif self.format == Format.table:
            report.print_table(out, self.kept, self.norms, model_name, self.directional, color=color, guarantee=guarantee,
                               labels=labels)


class _Progress:
    """Progress on stderr, only when it is a terminal (and only on rank 0). The bar counts input
    directions pushed, (input, direction) pairs, as the engine reports them after each tangent pass, so it
    moves within one large input (ResNet-50 at 224×224: 150,528 directions) as it does over many
    small ones; the text counts inputs done and inputs/s. Under torchrun rank 0 sees its own
    passes and assumes the other ranks keep pace; each finished round sets the count straight."""

    def __init__(self, directions: int, ranks: int, shown: bool):
        self.directions, self.ranks = directions, ranks
        self.shown = shown and sys.stderr.isatty()
        self.inputs, self.bar = 0, None

    def counting(self, inputs: int) -> "_Progress":
        """The same bar, for a run of ``inputs`` inputs (entered with ``with``)."""
        self.inputs = inputs
        return self

    def __enter__(self):
        if self.shown and self.inputs:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            columns = [TextColumn("certifying"), BarColumn(), TextColumn("{task.completed:,.0f} of {task.total:,.0f} directions,"),
                       TextColumn("{task.fields[done]} of {task.fields[inputs]} inputs"), TextColumn("{task.fields[rate]}"),
                       TimeRemainingColumn()]
            self.bar = Progress(*columns, console=Console(file=sys.stderr), transient=True)
            self.bar.__enter__()
            self.task = self.bar.add_task("certify", total=self.inputs * self.directions, done=0, inputs=self.inputs, rate="")
            self.started, self.done = time.perf_counter(), 0
        return self

    def __exit__(self, *failure):
        if self.bar is not None:
            self.bar.__exit__(*failure)

    def pushed(self, pairs: int) -> None:
        """The engine's callback, after each tangent pass."""
        stop_if_interrupted()
        if self.bar is not None:
            self.bar.update(self.task, advance=pairs * self.ranks)

    def finished(self, inputs: int) -> None:
        if self.bar is not None:
            self.done += inputs
            rate = f"{self.done / max(time.perf_counter() - self.started, 1e-9):.1f} inputs/s"
            completed = max(self.bar.tasks[0].completed, self.done * self.directions)
            self.bar.update(self.task, completed=completed, done=self.done, rate=rate)


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
    """--min-radius and --min-certified: one line per check; exit 1 if any input falls short."""
    from ..results import report

    for what, thresholds, below_by_norm in (
        ("radius", tally.thresholds, tally.below), ("certified radius", tally.certified_thresholds, tally.below_certified)
    ):
        for p, radius in thresholds.items():
            below = below_by_norm.get(p, [])
            if below:
                shown = ", ".join(map(str, below[:20])) + (f", … ({len(below) - 20} more)" if len(below) > 20 else "")
                say(f"FAILED: {report.some_of(len(below), tally.count)} {p} {what} below {radius:g}: inputs {shown}")
            else:
                every = f"all {tally.count} inputs have" if tally.count != 1 else "the input has"
                say(f"passed: {every} {p} {what} ≥ {radius:g}")
    return EXIT_CHECK_FAILED if tally.below or tally.below_certified else EXIT_OK


def _adversarial_norm(value: str | None, norms: tuple[str, ...]) -> str:
    """--adversarial-norm, or l2, or the one norm --p selects."""
    if value is None:
        return "l2" if "l2" in norms or len(norms) != 1 else norms[0]
    chosen = limits.norms([value])
    if len(chosen) != 1 or chosen[0] not in norms:
        raise LrcertError(f"--adversarial-norm {value!r} is not one of the certified norms ({', '.join(norms)})",
                          fix="name one norm that --p selects")
    return chosen[0]


class _ReportRows:
    """What ``--report`` needs from the results as they stream past: each one's record (no
    adversarial pixels) and the adversarial points of the inputs it will picture."""

    def __init__(self, norms, point_norm: str):
        from ..results import html_report

        self.norms, self.norm = norms, point_norm  # (the page lists the smallest radii in this norm)
        self.records: list[dict] = []
        self.kept = {which: [] for which in html_report.LISTS}  # max-heaps of (−radius, −index): each list's first
        self.points: dict[int, object] = {}  # their adversarial points

    def add(self, result) -> None:
        import heapq

        from ..results import html_report, report

        record = report.result_record(result, self.norms)
        self.records.append(record)
        if result.adversarial is None:
            return
        for which, heap in self.kept.items():
            place = html_report.ranking(record, self.norm, which)
            if place is None:
                continue
            heapq.heappush(heap, (-place[0], -place[1]))
            self.points[place[1]] = result.adversarial
            if len(heap) > html_report.SMALLEST:
                evicted = -heapq.heappop(heap)[1]
                if all(evicted != -i for other in self.kept.values() for _, i in other):  # in no list any more
                    self.points.pop(evicted, None)

    def write(self, path: Path, run: dict, rows, sample_shape) -> None:
        from ..data.arrays import written_atomically
        from ..results import html_report

        pictures = {}
        if html_report.image_shaped(sample_shape):
            pictures = html_report.pictures(self.records, self.norm, rows.__getitem__, self.points.get)
        with written_atomically(path) as tmp:
            Path(tmp).write_text(html_report.render(run, self.records, pictures), encoding="utf-8")
