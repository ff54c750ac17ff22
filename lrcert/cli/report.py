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
    worst: Annotated[Optional[Path], typer.Option("--worst", metavar="FILE", help="stability's --worst-out file, to picture each input's saliency at its worst point. Default: the file the run named.")] = None,
    key: Annotated[Optional[str], typer.Option("--key", metavar="NAME", help="Array to read from an .npz data file with several. Default: the file's only array.")] = None,
) -> int:
    """Write an HTML report: the run, histograms of ε̂ and of the certified radius, per-class medians,
    where the binding faces sit, and the inputs closest to another prediction (with thumbnails); of a
    stability run, the saliency maps at each input and at its worst point, and Δ's distribution.

    One file, no network access, no scripts: open it in any browser, attach it to a CI run."""
    from ..data.arrays import written_atomically
    from ..results import html_report, runs

    if output.suffix.lower() != ".html":
        raise LrcertError(f"--output {output} does not end in .html", fix="name an .html file")
    check_output_path(output)
    run, records = runs.read(results, kinds=("certify", "stability"))
    notes = list(run.get("notes") or [])
    if run["kind"] == "stability":
        from ..results import stability_page

        pictures = _saliency_pictures(run, records, data, worst, key, notes)
        page = stability_page.render(run | {"notes": notes}, records, pictures)
    else:
        pictures = _pictures(run, records, data, adversarial, key, notes)
        page = html_report.render(run | {"notes": notes}, records, pictures)
    with written_atomically(output) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
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


def _saliency_pictures(run: dict, records: list[dict], data: str | None, worst: Path | None, key: str | None,
                       notes: list[str]) -> dict:
    """The pictured inputs of a stability run (those whose saliency moved most), their worst points
    and the saliency maps at both, recomputed with the run's model (it must still be where it was)."""
    import numpy as np
    import torch

    from ..data import arrays as data_io
    from ..models.load import opener
    from ..results import html_report, stability_page
    from ..stability.saliency import Saliency

    model, options = run.get("model") or {}, run.get("options") or {}
    shape = model.get("input_shape")
    data, worst = data or options.get("data"), worst or (Path(options["worst_out"]) if options.get("worst_out") else None)
    missing = [what for what, path in (("data", data), ("worst points", worst), ("model", model.get("path")))
               if not path or path == "-" or not Path(path).exists()]
    if missing or not shape or not html_report.image_shaped(shape):
        if missing:
            notes.append(f"no saliency maps: the {', '.join(missing)} of the run cannot be found (give --data and --worst)")
        return {}
    try:
        rows, _ = data_io.read_rows(data, tuple(shape), key=key)
        points = np.load(worst, mmap_mode="r", allow_pickle=False)
    except (LrcertError, OSError, ValueError, EOFError) as problem:
        notes.append(f"no saliency maps: {worst} or {data} cannot be read ({problem})")
        return {}
    if tuple(points.shape) != tuple(rows.shape):
        raise LrcertError(f"{worst} holds {tuple(points.shape)}, the data {tuple(rows.shape)}",
                          fix="give the --worst-out file of the same stability run (--worst)")
    network = opener(model["path"])(tuple(shape))
    if options.get("normalize"):
        network = network.normalized(options["normalize"]["mean"], options["normalize"]["std"])
    saliency = Saliency(network.to("cpu", torch.float64))
    chosen = sorted(records, key=lambda r: -r["max_found"]["value"])[: stability_page.PICTURED]
    return {r["index"]: _saliency_maps(saliency, r, rows[r["index"]], points[r["index"]], shape) for r in chosen}


def _saliency_maps(saliency, record: dict, row, point, shape) -> dict:
    """The input, its worst point and the saliency map at both (the target the record names)."""
    import numpy as np
    import torch

    x, far = (torch.from_numpy(np.asarray(a, dtype=np.float64)).reshape(1, *shape) for a in (row, point))
    w = torch.zeros(1, int(np.prod(saliency.network.output_shape)), dtype=torch.float64)
    w[0, record["target"]["class"]] = 1
    if "rival" in record["target"]:
        w[0, record["target"]["rival"]] = -1
    (g, _), (g_far, _) = saliency.at(x, w), saliency.at(far, w)
    return {"input": x[0].numpy(), "worst": far[0].numpy(), "saliency": g[0].numpy(), "worst_saliency": g_far[0].numpy()}
