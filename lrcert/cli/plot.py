"""``lrcert plot MODEL --output fig.png``: the linear regions in a plane, with certified balls."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import LrcertError
from .common import EXIT_OK, app, check_output_path, integers, reports_errors, say, threads_option


def parse_indices(value: str | None) -> list[int]:
    if not value:
        return []
    indices = integers(value)
    if indices is None:
        raise LrcertError(f"--points {value!r} is not a list of input indices", fix="write e.g. --points 0,3")
    return list(indices)


@app.command(short_help="Draw the linear regions in a plane, with certified balls.")
@reports_errors
def plot(
    model: Annotated[str, typer.Argument(help="Model file (ONNX, .pt2, or pickled/TorchScript with --trust-pickle).")],
    output: Annotated[Path, typer.Option("--output", "-o", "--out", help="Picture to write: .png or .svg.", rich_help_panel="Output")],
    data: Annotated[Optional[str], typer.Option("--data", metavar="FILE", help=".npy/.npz of inputs: drawn (2-D models) and indexed by --points. Default: none.", rich_help_panel="Data")] = None,
    points: Annotated[Optional[str], typer.Option("--points", metavar="INDICES", help="Inputs (indices into --data) whose certified l1/l2/linf balls are drawn; the plane goes through the first. Default: none.", rich_help_panel="Data")] = None,
    dirs: Annotated[str, typer.Option("--dirs", help="Plane directions (inputs of more than 2 dimensions): random | toward:INDEX (towards another input) | gradient (of the predicted logit) | FILE.npy (two directions).", rich_help_panel="View")] = "random",
    extent: Annotated[Optional[float], typer.Option("--extent", help="Half-width of the view in plane units. Default: the data's span (2-D), 1.3× the distance (toward:), else 3× how far the point's region reaches in the plane.", rich_help_panel="View")] = None,
    resolution: Annotated[int, typer.Option("--resolution", help="Pixels per side (each pixel's region is computed exactly).", rich_help_panel="View")] = 400,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the random plane directions.", rich_help_panel="View")] = 0,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Allow loading a pickled model (runs code from the file). Default: off.", rich_help_panel="Model")] = False,
    threads: threads_option("Engine") = None,
) -> int:
    """Draw the linear regions of MODEL in a plane, with the certified balls of chosen inputs."""
    import numpy as np
    import torch

    from ..data import arrays as data_io
    from ..models.load import load
    from ..results import plot as plotting

    if output.suffix.lower() not in (".png", ".svg"):
        raise LrcertError(f"--output {str(output)!r} is neither .png nor .svg", fix="name the picture fig.png or fig.svg")
    if not 16 <= resolution <= 2000:
        raise LrcertError(f"--resolution {resolution} is outside 16..2000", fix="e.g. --resolution 400")
    if extent is not None and not (0 < extent < math.inf):
        raise LrcertError(f"--extent {extent} is not a positive number", fix="e.g. --extent 0.5")
    check_output_path(output)
    indices = parse_indices(points)
    network = load(model, trust_pickle=trust_pickle, sample_shape=data_io.peek_row_shape(data))
    inputs = labels = None
    if data is not None:
        rows, notes = data_io.read_rows(data, network.sample_shape, name=data)
        inputs = torch.from_numpy(np.asarray(rows, dtype=np.float64))
        for note in notes:
            say(f"note: {note}")
        for index in indices:
            if not 0 <= index < len(inputs):
                raise LrcertError(f"--points {index} is not an input of {data} (0..{len(inputs) - 1})", fix="pick existing inputs")
        labels_file = Path(str(data).replace(".inputs.npy", ".labels.npy"))
        labels = np.load(labels_file, allow_pickle=False) if labels_file != Path(data) and labels_file.exists() else None
    elif indices:
        raise LrcertError("--points needs --data", fix="give the inputs with --data X.npy")
    from ..runtime.threads import Threads

    with Threads(threads).use():
        picture = _picture(network, inputs, indices, dirs, extent, seed, resolution)
    for index, distance in picture.off_plane.items():
        say(f"note: input {index} is {distance:.3g} away from the plane (it passes through input {indices[0]}): "
            "no ball drawn for it")
    from ..results.report import radii_text

    radii = [f"input {i}: {radii_text(picture.radii[i])}" for i in indices[:4]]
    title = "\n".join([f"{Path(model).name}: linear regions", *radii])
    plotting.draw(picture, inputs, labels, title, output)
    say(f"wrote {output}: {int(picture.regions.max()) + 1} linear regions in view")
    return EXIT_OK


def _picture(network, inputs, indices: list[int], dirs: str, extent: float | None, seed: int, resolution: int):
    """The plane's picture; where its regions are mostly narrower than a pixel and no --extent was
    given, zoomed in to the first point's own neighbourhood (with a note saying so)."""
    from ..results import plot as plotting

    plane = plotting.make_plane(network, inputs, indices, dirs, extent, seed)
    picture = plotting.picture(network, plane, inputs, indices, resolution)
    fine = picture.boundary_share() > plotting.TOO_FINE
    if fine and extent is None and plane.u.numel() > 2:  # only ink at this scale: the point's own neighbourhood
        closer = plotting.neighbourhood(network, plane.origin, plane.u, plane.v)
        if closer < plane.extent:
            say(f"note: at ±{plane.extent:.3g} the {int(picture.regions.max()) + 1} regions in view are mostly narrower "
                f"than a pixel; drawn at ±{closer:.3g} around input {indices[0]} instead (--extent {plane.extent:.3g} "
                "draws the wider view)")
            picture = plotting.picture(network, replace(plane, extent=closer), inputs, indices, resolution)
    elif fine:
        say(f"note: most of the {int(picture.regions.max()) + 1} regions in view are narrower than a pixel: they show "
            "as boundary ink (a smaller --extent, or a larger --resolution, shows them)")
    return picture
