"""``lrcert inspect MODEL``: the layer list lrcert built, its input shape, and what it refuses."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import LrcertError
from .common import EXIT_INPUT, EXIT_OK, NoCacheOption, TableOrJson, app, parse_shape, reports_errors, say


@app.command(short_help="Show how lrcert reads a model: layers, faces, shapes.")
@reports_errors
def inspect(
    model: Annotated[str, typer.Argument(help="Model file (ONNX, TorchScript, .pt2, or pickled with --trust-pickle).")],
    input_shape: Annotated[Optional[str], typer.Option("--input-shape", metavar="SHAPE", help="Shape of one input, for models that do not record it, e.g. 1,28,28. Default: the model's own.")] = None,
    output_format: Annotated[TableOrJson, typer.Option("--format", "-f", help="table (for people) or json.")] = TableOrJson.table,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Allow loading a pickled model (runs code from the file). Default: off.")] = False,
    output_name: Annotated[Optional[str], typer.Option("--output-name", metavar="NAME", help="For an ONNX model with several outputs: the one to show as the output (default: the first).")] = None,
    no_cache: NoCacheOption = False,
) -> int:
    """Show the layer list lrcert built from MODEL, its input shape, and anything unsupported."""
    import json

    from ..models.load import load
    from ..models.recurrent import describe

    try:
        network = load(model, trust_pickle=trust_pickle, sample_shape=parse_shape(input_shape), output_name=output_name,
                       cache=not no_cache)
    except LrcertError as error:
        if not error.details:
            raise
        say(f"lrcert: {Path(model).name} cannot be certified; {len(error.details)} unsupported operation(s):")
        for detail in error.details:
            say(f"  - {detail}")
        say(f"Fix: {error.fix}.")
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
    if output_format == TableOrJson.json:
        doc = {
            "model": model,
            "input_shape": list(network.sample_shape),
            "output_shape": list(network.output_shape),
            "units": network.units,
            "faces": network.faces,
            "recurrences": [{**vars(shape), "directions": list(shape.directions), "faces": network.recurrence_faces(shape.name)}
                            for shape in network.recurrences],
            "layers": layers,
            "notes": list(network.notes),
        }
        typer.echo(json.dumps(doc, indent=2))
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stdout, highlight=False, width=140 if not sys.stdout.isatty() else None)
    title = f"{Path(model).name}: the input and {len(layers) - 1} layers, {network.units} nonlinear units"
    table = Table(title=title, title_justify="left")
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
    for shape in network.recurrences:
        console.print(f"recurrence {describe(shape, network.recurrence_faces(shape.name))}")
    for note in network.notes:
        console.print(f"note: {note}")
    return EXIT_OK
