"""``lrcert path MODEL A.npy B.npy``: every linear region the segment from A to B crosses."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import LrcertError
from .common import EXIT_OK, TableOrJson, ThreadsOption, app, reports_errors


@app.command(short_help="Count the linear regions between two inputs, exactly.")
@reports_errors
def path(
    model: Annotated[str, typer.Argument(help="Model file (ONNX, .pt2, or pickled/TorchScript with --trust-pickle).")],
    start: Annotated[str, typer.Argument(help=".npy holding the segment's start A (one input).")],
    end: Annotated[str, typer.Argument(help=".npy holding the segment's end B (one input).")],
    output_format: Annotated[TableOrJson, typer.Option("--format", "-f", help="table (for people) or json.")] = TableOrJson.table,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Allow loading a pickled model (runs code from the file). Default: off.")] = False,
    threads: ThreadsOption = None,
) -> int:
    """Count the linear regions the segment from A to B crosses, exactly, with each boundary.

    Prints each breakpoint t in (0, 1) and the face that flips there."""
    import json

    import numpy as np
    import torch

    from ..data import arrays as data_io
    from ..models.load import load
    from ..results.regions import STEP, walk
    from ..runtime.threads import Threads

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
    with Threads(threads).use():
        crossing = walk(network, *ends)
    if output_format == TableOrJson.json:
        typer.echo(json.dumps({"model": model, "start": start, "end": end, "min_region_width_t": STEP, **crossing.as_dict()}, indent=2))
        return EXIT_OK
    typer.echo(f"{crossing.regions} linear region{'s' if crossing.regions != 1 else ''} between {start} (t=0) and {end} (t=1)")
    for t, flip in zip(crossing.breakpoints, crossing.flips):
        typer.echo(f"  t={t:.9f}  flips {flip.describe() if flip else '(unknown face)'}")
    return EXIT_OK
