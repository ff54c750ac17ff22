"""``lrcert report RESULTS --output report.html``: one self-contained HTML page from certify's
JSON or JSON-lines output."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import LrcertError
from .common import EXIT_OK, app, check_output_path, reports_errors, say


@app.command(short_help="Write a self-contained HTML report of a certify run.")
@reports_errors
def report(
    results: Annotated[Path, typer.Argument(metavar="RESULTS", help="lrcert certify's output: --format json or jsonl.")],
    output: Annotated[Path, typer.Option("--output", "-o", "--out", help="The HTML file to write.")],
    data: Annotated[Optional[str], typer.Option("--data", metavar="FILE", help="The inputs certified (default: the data named in a JSON document), for thumbnails of image-shaped inputs.")] = None,
    adversarial: Annotated[Optional[Path], typer.Option("--adversarial", help="certify's --adversarial-out file, to picture each input beside its adversarial point. Default: none.")] = None,
    key: Annotated[Optional[str], typer.Option("--key", metavar="NAME", help="Array to read from an .npz data file with several. Default: the file's only array.")] = None,
) -> int:
    """Write an HTML report: the run, histograms of ε̂ and of the certified radius, per-class medians,
    where the binding faces sit, and the inputs closest to another prediction (with thumbnails).

    One file, no network access, no scripts: open it in any browser, attach it to a CI run."""
    from ..data.arrays import written_atomically
    from ..results import html_report, runs

    if output.suffix.lower() != ".html":
        raise LrcertError(f"--output {output} does not end in .html", fix="name an .html file")
    check_output_path(output)
    run, records = runs.read(results)
    notes = list(run.get("notes") or [])
    pictures = _pictures(run, records, data, adversarial, key, notes)
    run["notes"] = notes
    with written_atomically(output) as tmp:
        Path(tmp).write_text(html_report.render(run, records, pictures), encoding="utf-8")
    say(f"report: {output} ({len(records)} inputs)")
    return EXIT_OK


def _same_data(data: str, key: str | None, run: dict, records: list[dict]) -> None:
    """Refuse ``--data`` that is not the data of the run: another file (the SHA-256 the run
    recorded), another count of inputs, or rows of another shape than the model's."""
    from ..data import arrays as data_io

    if Path(data).is_dir():  # (an image folder has no single digest: its images are read as the run named them)
        return
    recorded = (run.get("options") or {}).get("data_sha256")
    if recorded and data_io.sha256(data) not in (None, recorded):
        raise LrcertError(f"--data {data} is not the data these results were certified on (sha256 {recorded[:12]}…)",
                          fix="give the data file of the same certify run")
    shape = (run.get("model") or {}).get("input_shape") or data_io.peek_row_shape(data, key)
    rows, _ = data_io.read_rows(data, shape, key=key, name=data) if shape else (None, [])
    count = len(records) if run.get("model") else max(record["index"] for record in records) + 1
    if rows is not None and (len(rows) < count or run.get("model") and len(rows) != count):
        raise LrcertError(f"--data {data} holds {len(rows)} inputs, the results {count}",
                          fix="give the data file of the same certify run")


def _pictures(run: dict, records: list[dict], data: str | None, adversarial: Path | None, key: str | None,
              notes: list[str]) -> dict:
    """Input (and adversarial point) pixels of the inputs the page lists, when they are images."""
    import numpy as np

    from ..data import arrays as data_io
    from ..results import html_report

    options = run.get("options") or {}
    if data is not None:  # named by the user: it must be the run's data, or the thumbnails would be someone else's
        _same_data(data, key, run, records)
    data = data or options.get("data")
    if adversarial is None and options.get("adversarial_out") and Path(options["adversarial_out"]).is_file():
        adversarial = Path(options["adversarial_out"])
    if data is None or data == "-":
        notes.append("no thumbnails: the data file is not known (give --data)")
        return {}
    shape = (run.get("model") or {}).get("input_shape") or data_io.peek_row_shape(data, key)
    if shape is None or not html_report.image_shaped(shape):
        return {}
    try:
        if Path(data).is_dir():  # an image folder, read as the run read it
            from ..data import sources

            resize, crop = (tuple(options[k]) if options.get(k) else None for k in ("resize", "center_crop"))
            rows = sources.open_source(data, shape, resize=resize, center_crop=crop).rows
        else:
            rows, _ = data_io.read_rows(data, shape, key=key)
        points = None if adversarial is None else np.load(adversarial, mmap_mode="r", allow_pickle=False)
    except (LrcertError, OSError, ValueError) as problem:
        notes.append(f"no thumbnails: {problem}")
        return {}
    if points is not None and tuple(points.shape) != tuple(rows.shape):
        raise LrcertError(f"{adversarial} holds {tuple(points.shape)}, the data {tuple(rows.shape)}",
                          fix="give the --adversarial-out file of the same certify run")
    last = max(record["index"] for record in records)
    if last >= len(rows):
        raise LrcertError(f"the results name input {last}, but {data} holds {len(rows)}",
                          fix="give the data of the same certify run (--data)")
    point = (lambda i: None) if points is None else (lambda i: np.asarray(points[i], dtype=np.float64))
    return html_report.pictures(records, html_report.listed_norm(run, records), rows.__getitem__, point)
