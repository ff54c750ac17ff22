"""``lrcert stability MODEL DATA --eps E``: how far each input's saliency map can move within a
ball: the exact radius where it cannot (ε̂), its expected and largest-found distortion, and a
certified bound on the largest; a table, JSON, JSON lines or CSV, an HTML report, CI ceilings."""

from __future__ import annotations

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
from .outputs import adversarial_file, nowhere, open_output

BALL, MEASURES, DATA, MODEL, OUTPUT, CHECKS, ENGINE = "Ball", "Measures", "Data", "Model", "Output", "Checks", "Engine"


@app.command(short_help="How far each saliency map moves in a ball: expected, max, bound.",
             epilog="Exit codes: 0 all good · 1 a --max-distortion or --max-bound check failed · 2 usage or input error "
             "(one line naming the problem and the fix) · 3 internal error (LRCERT_DEBUG=1 shows the traceback) · 130 interrupted.")
@reports_errors
def stability(
    model: Annotated[str, typer.Argument(help="ONNX model, torch.export .pt2 program, or (with --trust-pickle) a TorchScript file or pickled nn.Module.")],
    data: Annotated[str, typer.Argument(help="Inputs: .npy or .npz (first axis indexes inputs), - for standard input, a folder of images (class folders give labels), or a .csv or .parquet table.")],
    eps: Annotated[str, typer.Option("--eps", metavar="E", help="Radius of the ball, in the data's units (pixels with --mean/--std): a number or a fraction such as 8/255. Required.", rich_help_panel=BALL)],
    p: Annotated[str, typer.Option("--norm", "-p", "--p", metavar="NORM", help="The ball: inf (a box of side 2ε around the input) or 2.", rich_help_panel=BALL)] = "inf",
    box: Annotated[Optional[str], typer.Option("--box", metavar="LO,HI", help="Valid inputs lie in [LO, HI]: samples, search and bound stay inside (pixels: 0,1, the default for image folders; none: no box).", rich_help_panel=BALL)] = None,
    target: Annotated[str, typer.Option("--target", metavar="WHAT", help="Whose gradient is the saliency map: predicted (the predicted class's logit), label (the data's label), margin (predicted minus the runner-up at the input), or a class number.", rich_help_panel=MEASURES)] = "predicted",
    distortion_norm: Annotated[str, typer.Option("--distortion-norm", metavar="1|2|inf", help="The norm of Δ = ‖∇f(x') − ∇f(x)‖: 1 (the paper's), 2 or inf.", rich_help_panel=MEASURES)] = "1",
    relative: Annotated[bool, typer.Option("--relative", help="Report Δ / ‖∇f(x)‖ (Captum's normalisation; a zero saliency divides by 1). Default: off.", rich_help_panel=MEASURES)] = False,
    samples: Annotated[int, typer.Option("--samples", metavar="N", min=1, help="Samples of the ball for the expected distortion (its standard error shrinks as 1/√N).", rich_help_panel=MEASURES)] = 1000,
    budget: Annotated[int, typer.Option("--budget", metavar="N", min=2, help="Passes per input (one point's value or backward pass each) for the search of the largest distortion.", rich_help_panel=MEASURES)] = 400,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Seed of the samples, the search and ε̂'s sketch (each input's draws depend on it and the input's number only).", rich_help_panel=MEASURES)] = 0,
    guarantee: Annotated[str, typer.Option("--guarantee", metavar="DELTA", help="ε̂ as certify computes it: a probability δ its sketch may fail with (default 1e-12), or deterministic.", rich_help_panel=MEASURES)] = "1e-12",
    key: Annotated[Optional[str], typer.Option("--key", metavar="NAME", help="Array to read from an .npz file with several. Default: the file's only array.", rich_help_panel=DATA)] = None,
    columns: Annotated[Optional[str], typer.Option("--columns", metavar="A,B,…", help="For a table: the feature columns, in the model's order. Default: every column but the label column.", rich_help_panel=DATA)] = None,
    label_column: Annotated[Optional[str], typer.Option("--label-column", metavar="NAME", help="For a table: the column of labels. Default: 'label', where there is one.", rich_help_panel=DATA)] = None,
    classes: Annotated[Optional[str], typer.Option("--classes", metavar="NAMES|FILE", help="The model's class names in output order, or a file of one per line. Default: none.", rich_help_panel=DATA)] = None,
    resize: Annotated[Optional[str], typer.Option("--resize", metavar="N|H,W", help="For an image folder: resize as torchvision's Resize does. Default: none.", rich_help_panel=DATA)] = None,
    center_crop: Annotated[Optional[str], typer.Option("--center-crop", metavar="N|H,W", help="For an image folder: then crop the center. Default: none.", rich_help_panel=DATA)] = None,
    mean: Annotated[Optional[str], typer.Option("--mean", metavar="M,…", help="The model expects (x − mean) / std: lrcert makes that its first layer, so ε and the worst points are in the data's own units (pixels). Needs --std. Default: none.", rich_help_panel=DATA)] = None,
    std: Annotated[Optional[str], typer.Option("--std", metavar="S,…", help="The std of --mean's normalisation. Default: none.", rich_help_panel=DATA)] = None,
    normalize: Annotated[Optional[str], typer.Option("--normalize", metavar="PRESET", help="A known --mean/--std: imagenet. Default: none.", rich_help_panel=DATA)] = None,
    input_shape: Annotated[Optional[str], typer.Option("--input-shape", metavar="SHAPE", help="Shape of one input, e.g. 1,28,28 (only for models that do not record it). Default: the data's row shape.", rich_help_panel=MODEL)] = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Allow loading a pickled model or TorchScript file: this runs code stored in the file. Default: off.", rich_help_panel=MODEL)] = False,
    no_cache: no_cache_option(MODEL) = False,
    output_name: Annotated[Optional[str], typer.Option("--output-name", metavar="NAME", help="For an ONNX model with several outputs: the one the target reads (default: the first).", rich_help_panel=MODEL)] = None,
    output_format: Annotated[Optional[Format], typer.Option("--format", "-f", help="table (for people), json, jsonl or csv (for pipelines). Default: the --output file's extension, else table.", rich_help_panel=OUTPUT)] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the results to this file (atomically) instead of stdout. Default: standard output.", rich_help_panel=OUTPUT)] = None,
    worst_out: Annotated[Optional[Path], typer.Option("--worst-out", metavar="FILE", help="Write an .npy shaped like the inputs (float64): row i is the point of its ball where the search found the largest distortion. Default: none.", rich_help_panel=OUTPUT)] = None,
    report_page: Annotated[Optional[Path], typer.Option("--report", metavar="FILE", help="Also write a self-contained HTML report: saliency maps at each input and at its worst point, their difference, Δ's distribution. Default: none.", rich_help_panel=OUTPUT)] = None,
    max_distortion: Annotated[Optional[float], typer.Option("--max-distortion", metavar="X", min=0, help="CI check: exit 1 if the search finds a distortion above X for any input. Default: no check.", rich_help_panel=CHECKS)] = None,
    max_bound: Annotated[Optional[float], typer.Option("--max-bound", metavar="X", min=0, help="CI check: exit 1 unless every input's certified bound is at most X (a vacuous bound fails). Default: no check.", rich_help_panel=CHECKS)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", metavar="N", min=1, help="Inputs per batch.", rich_help_panel=ENGINE)] = 16,
    dtype: Annotated[DType, typer.Option("--dtype", help="Of the samples and the search: auto (float32; float64 for toy networks of up to 10⁵ multiply-adds per pass), float32 or float64. ε̂, the saliency at x, the worst point's Δ and the bound are float64 always.", rich_help_panel=ENGINE)] = DType.auto,
    device: Annotated[Device, typer.Option("--device", help="Where to compute: auto takes the GPU when PyTorch sees one.", rich_help_panel=ENGINE)] = Device.auto,
    threads: threads_option(ENGINE) = None,
) -> int:
    """How far the saliency map ∇ₓf(x) of every input of DATA can move within the ball of radius
    --eps: exactly 0 within ε̂; the expected distortion over the ball; the largest a search finds
    (and where); a certified upper bound on the largest."""
    asked = SimpleNamespace(**locals())
    _parse(asked)
    run = _prepare(asked)
    _analyse(asked, run)
    return _finish(asked, run)


def _parse(asked: SimpleNamespace) -> None:
    """Check and read the options before any work."""
    import torch

    from ..data import sources
    from ..stability import parse_eps, parse_norm
    from .certify import _format_for

    asked.radius, asked.ball_norm = parse_eps(asked.eps), parse_norm(asked.p)
    asked.output_format = _format_for(asked.output_format, asked.output)
    if asked.distortion_norm.strip().lower() not in ("1", "2", "inf"):
        raise LrcertError(f"--distortion-norm {asked.distortion_norm!r} is not 1, 2 or inf", fix="use 1 (the paper's), 2 or inf")
    asked.distortion_norm = asked.distortion_norm.strip().lower()
    asked.target = _target(asked.target)
    asked.bound = limits.guarantee(asked.guarantee)
    for path, suffix, what in ((asked.worst_out, ".npy", "--worst-out"), (asked.report_page, ".html", "--report")):
        if path is not None:
            if path.suffix.lower() != suffix:
                raise LrcertError(f"{what} {path} does not end in {suffix}", fix=f"name a {suffix} file")
            check_output_path(path, what)
    check_output_path(asked.output)
    asked.shape_hint = parse_shape(asked.input_shape)
    asked.torch_dtype = {DType.auto: "auto", DType.float32: torch.float32, DType.float64: torch.float64}[asked.dtype]
    asked.resize_to, asked.crop_to = sources.sizes(asked.resize), sources.sizes(asked.center_crop, "--center-crop")
    asked.normalization = sources.normalization(asked.mean, asked.std, asked.normalize)
    asked.class_names = sources.class_names(asked.classes)


def _target(text: str) -> str | int:
    """--target: predicted, label, margin, or a class number (checked against the model later)."""
    word = text.strip().lower()
    if word in ("predicted", "label", "margin"):
        return word
    try:
        number = int(word)
    except ValueError:
        raise LrcertError(f"--target {text!r} is neither predicted, label, margin nor a class number",
                          fix="write --target predicted, --target label, --target margin or e.g. --target 3") from None
    if number < 0:
        raise LrcertError(f"--target {text!r} is negative", fix="give a class number from 0")
    return number


def _prepare(asked: SimpleNamespace) -> SimpleNamespace:
    """The network(s), the data and the analysis of the run."""
    from ..models.load import opener
    from ..results import report
    from ..run import runner
    from ..runtime import devices

    run = SimpleNamespace(raw=sys.stdin.buffer.read() if asked.data == "-" else None)
    run.networks = opener(asked.model, trust_pickle=asked.trust_pickle, output_name=asked.output_name, cache=not asked.no_cache)
    run.network, run.dataset = runner.prepare(
        asked.data, run.networks, raw=run.raw, key=asked.key, columns=asked.columns, resize=asked.resize_to,
        center_crop=asked.crop_to, normalization=asked.normalization, shape_hint=asked.shape_hint,
        classes=asked.class_names, label_column=asked.label_column)
    run.valid = runner.box_of(asked.box, run.dataset)
    for note in (*run.network.notes, *run.dataset.notes):
        say(note if note.startswith("warning:") else f"note: {note}")
    run.device = devices.resolve(asked.device.value)
    run.analyses = {}
    run.model_info = report.model_record(asked.model, run.network)
    return run


def _analysis(asked: SimpleNamespace, run: SimpleNamespace, length: int | None):
    """The :class:`~lrcert.stability.Stability` of rows of ``length`` steps (None: the network's own)."""
    from ..stability import Stability

    if length not in run.analyses:
        network = run.network if length is None else run.networks((length, *run.dataset.rows.shape[2:]))
        run.analyses[length] = Stability(
            network, eps=asked.radius, norm=asked.ball_norm, box=run.valid, samples=asked.samples, budget=asked.budget,
            target=asked.target, distortion=asked.distortion_norm, relative=asked.relative, seed=asked.seed,
            dtype=asked.torch_dtype, device=run.device, guarantee=asked.bound, threads=asked.threads,
            keep_maps=asked.report_page is not None)
        run.analyses[length].run_size = len(run.dataset.rows)
    return run.analyses[length]


def _analyse(asked: SimpleNamespace, run: SimpleNamespace) -> None:
    """Every input through its analysis, in batches (of one length each), written in input order as
    they finish (rows of different lengths come by length: each waits for the ones before it)."""
    from ..results import stability as render

    rows, count = run.dataset.rows, len(run.dataset.rows)
    run.records, run.kept, run.started = [], [], time.perf_counter()
    waiting: dict[int, object] = {}
    points = adversarial_file(asked.worst_out, (count, *rows.shape[1:])) if asked.worst_out else nowhere()
    with open_output(asked.output) as out, points as worst:
        if asked.output_format == Format.csv:
            out.write(render.csv_header())
        for batch in _batches(run.dataset, asked.batch_size):
            waiting.update((r.index, r) for r in _batch_results(asked, run, batch))
            while len(run.records) in waiting:
                _emit(asked, run, waiting.pop(len(run.records)), out, worst)
            out.flush()
            stop_if_interrupted()
        run.seconds = time.perf_counter() - run.started
        run.options = _options_record(asked, run)
        if asked.output_format == Format.json:
            facts = {"seconds": run.seconds, "date": time.strftime("%Y-%m-%d")}
            out.write(render.json_document(run.model_info, run.options, run.records, facts))
        elif asked.output_format == Format.table:
            render.print_table(out, run.records, f"gradient stability — {Path(asked.model).name}, "
                               f"{_ball_text(asked)}", out.isatty() and asked.output is None, _footer(asked, run))


def _emit(asked: SimpleNamespace, run: SimpleNamespace, result, out, worst) -> None:
    """One result, the next in input order: its record, its line (JSON lines, CSV), its worst point."""
    from ..results import stability as render

    record = result.record()
    run.records.append(record)
    if asked.output_format == Format.jsonl:
        out.writelines(render.jsonl_lines([record]))
    elif asked.output_format == Format.csv:
        out.writelines(render.csv_lines([record]))
    if worst is not None:
        _put_worst(worst, result)
    if asked.report_page is not None:
        _keep_worst(run.kept, result)


def _batches(dataset, size: int):
    """Row numbers in batches of at most ``size``, each of one sequence length (None: equal rows)."""
    import numpy as np

    count = len(dataset.rows)
    if dataset.lengths is None:
        for start in range(0, count, size):
            yield None, np.arange(start, min(count, start + size))
        return
    for length in sorted(set(int(n) for n in dataset.lengths)):
        where = np.flatnonzero(dataset.lengths == length)
        for start in range(0, len(where), size):
            yield length, where[start : start + size]


def _batch_results(asked: SimpleNamespace, run: SimpleNamespace, batch) -> list:
    import numpy as np
    import torch

    length, indices = batch
    rows = np.asarray(run.dataset.rows[indices], dtype=np.float64)
    if length is not None:
        rows = rows[:, :length]
    labels = None if run.dataset.labels is None else torch.from_numpy(np.asarray(run.dataset.labels[indices]))
    analysis = _analysis(asked, run, length)
    results = analysis.run(torch.from_numpy(rows), labels, numbers=[int(i) for i in indices])
    for result, index in zip(results, indices):
        if run.dataset.names is not None:
            result.source = run.dataset.names[int(index)]
        if run.dataset.labels is not None:
            result.label = int(run.dataset.labels[int(index)])
        result.length = length
    return results


def _keep_worst(kept: list, result) -> None:
    """The inputs the report pictures: those with the largest distortion found so far (their
    saliency maps are large; the others are let go)."""
    from ..results.stability_page import PICTURED

    kept.append(result)
    kept.sort(key=lambda r: -r.max_found)
    del kept[PICTURED:]


def _put_worst(array, result) -> None:
    """Row ``result.index`` of --worst-out: the worst point found (a sequence's padding steps 0)."""
    if result.length is None:
        array[result.index] = result.worst
    else:
        array[result.index, : result.length] = result.worst
        array[result.index, result.length :] = 0.0


def _ball_text(asked: SimpleNamespace) -> str:
    return f"ℓ{'∞' if asked.ball_norm == 'linf' else '2'} ball of radius {asked.radius:.4g}"


def _footer(asked: SimpleNamespace, run: SimpleNamespace) -> list[str]:
    """What the numbers mean, and how sure they are."""
    from ..results.report import guarantee_text

    deltas = [r["certified"]["delta"] for r in run.records if r["certified"]["delta"] > 0]
    norm = {"1": "ℓ1", "2": "ℓ2", "inf": "ℓ∞"}[asked.distortion_norm]
    what = f"Δ = {norm} distortion of the saliency ∇ₓ({_target_text(asked.target)})" + (" relative to ‖∇ₓf(x)‖" if asked.relative else "")
    lines = [f"{what}; E[Δ] from {asked.samples} samples per input; max found: a search of {asked.budget} passes per input",
             "max bound: certified (interval and linear-relaxation bounds on which units can change, interval arithmetic "
             "on the Jacobian)",
             f"guarantee: ε̂ {guarantee_text(len(run.records), deltas)}; max bound deterministic"]
    intervals = [r for r in run.records if r["expected"]["interval"] is not None]
    if intervals:
        total = sum(r["expected"]["interval_delta"] for r in intervals)
        lines.append(f"E[Δ] lies in its interval for every one of {len(intervals)} inputs with a bound, except with probability "
                     f"≤ {total:.1e} in all (Hoeffding, Δ ∈ [0, max bound])")
    return lines


def _target_text(target) -> str:
    return {"predicted": "f_predicted", "label": "f_label", "margin": "f_predicted − f_runner-up"}.get(target, f"f_{target}")


def _options_record(asked: SimpleNamespace, run: SimpleNamespace) -> dict:
    from ..data import arrays as data_io

    analysis = next(iter(run.analyses.values()), None)
    return {"data": asked.data, "data_sha256": data_io.sha256(asked.data) if run.raw is None else None,
            "eps": asked.radius, "eps_text": asked.eps, "norm": asked.ball_norm, "box": None if run.valid is None else list(run.valid),
            "target": asked.target, "distortion_norm": asked.distortion_norm, "relative": asked.relative,
            "samples": asked.samples, "budget": asked.budget, "seed": asked.seed, "guarantee": asked.bound,
            "dtype": None if analysis is None else str(analysis.working.network.dtype).split(".")[-1],
            "worst_out": None if asked.worst_out is None else str(asked.worst_out), "key": asked.key,
            "normalize": None if asked.normalization is None else {"mean": list(asked.normalization[0]), "std": list(asked.normalization[1])},
            "max_distortion": asked.max_distortion, "max_bound": asked.max_bound}


def _finish(asked: SimpleNamespace, run: SimpleNamespace) -> int:
    """Closing lines on stderr, the report, and the checks' verdict."""
    count = len(run.records)
    say(f"analysed {count} input{'' if count == 1 else 's'} in {run.seconds:.2f} s ({count / max(run.seconds, 1e-9):.1f} "
        f"inputs/s) on {run.device.type}")
    if asked.output_format != Format.table or asked.output is not None:
        for line in _footer(asked, run)[1:]:
            say(line)
    if asked.report_page is not None:
        _write_report(asked, run)
        say(f"report: {asked.report_page}")
    return _checks(asked, run.records)


def _write_report(asked: SimpleNamespace, run: SimpleNamespace) -> None:
    from ..data.arrays import written_atomically
    from ..results import stability_page

    pictures = stability_page.pictures(run.kept, run.network.sample_shape, run.dataset.rows)
    page = {"model": run.model_info, "options": run.options, "run": {"seconds": run.seconds, "date": time.strftime("%Y-%m-%d")},
            "notes": [*run.network.notes, *run.dataset.notes]}
    with written_atomically(asked.report_page) as tmp:
        Path(tmp).write_text(stability_page.render(page, run.records, pictures), encoding="utf-8")


def _checks(asked: SimpleNamespace, records: list[dict]) -> int:
    failed = False
    for what, ceiling, read in (("distortion found", asked.max_distortion, lambda r: r["max_found"]["value"]),
                                ("certified bound", asked.max_bound, _bound_or_inf)):
        if ceiling is None:
            continue
        above = [r["index"] for r in records if read(r) > ceiling]
        if above:
            failed = True
            shown = ", ".join(map(str, above[:20])) + (f", … ({len(above) - 20} more)" if len(above) > 20 else "")
            say(f"FAILED: {len(above)} of {len(records)} inputs have a {what} above {ceiling:g}: inputs {shown}")
        else:
            say(f"passed: every {what} ≤ {ceiling:g} ({len(records)} inputs)")
    return EXIT_CHECK_FAILED if failed else EXIT_OK


def _bound_or_inf(record: dict) -> float:
    bound = record["max_bound"]
    return math.inf if bound["vacuous"] or bound["value"] is None else bound["value"]
