"""``lrcert ops``: the ONNX operations lrcert reads, how it reads each, and those it refuses."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import EXIT_OK, TableOrJson, app, reports_errors

#: Ops that are the network's nonlinearities: each contributes faces (docs/reference/supported.md).
FACES = {"Relu": "z = 0", "LeakyRelu": "z = 0", "PRelu": "z = 0", "Abs": "z = 0", "Clip": "z = low, z = high",
         "HardSigmoid": "its two kinks", "Max": "a = b (or the constant)", "Min": "a = b (or the constant)",
         "MaxPool": "winner = each other element", "ReduceMax": "winner = each other element",
         "ReduceMin": "winner = each other element",
         "RNN": "every unit at every step (Relu, LeakyRelu, HardSigmoid or Affine activations)"}
#: The ``kind`` each nonlinearity's faces carry in the results (a binding face's ``kind``).
KINDS = {"Relu": "relu", "LeakyRelu": "leaky_relu", "PRelu": "prelu", "Abs": "abs", "Clip": "clip", "HardSigmoid": "clip",
         "Max": "max (two tensors), clip (a constant)", "Min": "min (two tensors), clip (a constant)", "MaxPool": "maxpool",
         "ReduceMax": "maxpool (a window over the reduced axes)", "ReduceMin": "maxpool (a window over the reduced axes)",
         "RNN": "each step's units: relu, leaky_relu or clip"}


def table() -> list[dict]:
    """Every ONNX op lrcert reads or refuses by name: (op, how, condition), grouped."""
    from ..models.load import ONNX_FINAL_ONLY, ONNX_LINEAR, ONNX_PRODUCTS, ONNX_SHAPE_ONLY, ONNX_SMOOTH

    rows = [{"op": op, "read_as": "nonlinearity", "faces": faces, "kind": KINDS[op]} for op, faces in sorted(FACES.items())]
    for op, constant in sorted(ONNX_LINEAR.items()):
        if op not in FACES:
            needs = f"operands {', '.join(map(str, constant))} constant" if constant else ""
            rows.append({"op": op, "read_as": "linear", "condition": needs})
    rows += [{"op": op, "read_as": "linear", "condition": "one operand constant"} for op in sorted(ONNX_PRODUCTS)]
    rows += [{"op": op, "read_as": "shape only", "condition": "static shapes"} for op in sorted(ONNX_SHAPE_ONLY)]
    rows += [{"op": op, "read_as": "dropped", "condition": "as the last op: the logits are certified"}
             for op in sorted(ONNX_FINAL_ONLY)]
    refused = (ONNX_SMOOTH - ONNX_FINAL_ONLY) | {"LSTM", "GRU"}
    rows += [{"op": op, "read_as": "refused", "condition": "not piecewise linear"} for op in sorted(refused)]
    return rows


@app.command(short_help="List the ONNX operations lrcert reads, and how.")
@reports_errors
def ops(
    output_format: Annotated[TableOrJson, typer.Option("--format", "-f", help="table (for people) or json.")] = TableOrJson.table,
) -> int:
    """List the ONNX operations lrcert reads: the nonlinearities (with their faces), the linear
    ops (with the operands that must be constant), and the ops it refuses. Constant subgraphs
    (shapes, weights computed from constants) are computed once at load, whatever their ops."""
    import json
    import sys

    rows = table()
    if output_format == TableOrJson.json:
        typer.echo(json.dumps(rows, indent=2))
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    shown = Table(title="ONNX operations (PyTorch modules: their ATen ops, read the same way)", title_justify="left")
    for column in ("op", "read as", "faces / condition"):
        shown.add_column(column)
    for row in rows:
        shown.add_row(row["op"], row["read_as"], row.get("faces") or row.get("condition", ""))
    Console(file=sys.stdout, highlight=False, soft_wrap=False).print(shown)
    return EXIT_OK
