"""``lrcert train DATA --out MODEL``: a ReLU network trained with the ROLL regulariser, saved as ONNX."""

from __future__ import annotations

import dataclasses
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import LrcertError
from .common import EXIT_OK, Device, TableOrJson, app, check_output_path, integers, reports_errors, say


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
    hidden: Annotated[str, typer.Option("--hidden", metavar="WIDTHS", help="Widths of the dense ReLU layers, comma-separated.")] = "300,300,300,300",
    conv: Annotated[Optional[str], typer.Option("--conv", metavar="CHANNELS", help="Channels of 3×3 stride-2 ReLU convolutions before the dense layers, e.g. 16,32 (inputs must be (N, C, H, W)).")] = None,
    lam: Annotated[float, typer.Option("--lam", help="ROLL weight λ: larger gives larger regions and, past a point, lower accuracy; 0 trains a vanilla network.")] = 0.5,
    C: Annotated[float, typer.Option("--C", help="ROLL hinge weight C on max(0, 1 − |z|).")] = 1.0,
    gamma: Annotated[float, typer.Option("--gamma", help="Percent of faces per input in the ROLL term (those with the largest terms).")] = 100.0,
    sample_dims: Annotated[Optional[int], typer.Option("--sample-dims", help="Estimate gradient norms from this many random input coordinates (faster on large inputs; needs --gamma 100).")] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the training data.")] = 20,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Samples per optimisation step.")] = 64,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the split, the initial weights, the shuffling and the sampled coordinates.")] = 0,
    val: Annotated[Optional[str], typer.Option("--val", metavar="FILE", help="Held-out .npz (x, y). Default: a --val-fraction split of DATA.")] = None,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Share of DATA held out when --val is not given.")] = 0.2,
    output_format: Annotated[TableOrJson, typer.Option("--format", "-f", help="table or json (the held-out statistics and the training history).")] = TableOrJson.table,
    device: Annotated[Device, typer.Option("--device", help="Where to train (the ROLL loss and the per-epoch certification too): auto takes the GPU when PyTorch sees one.")] = Device.auto,
) -> int:
    """Train a ReLU network with the ROLL regulariser (larger linear regions) and save it as ONNX.

    Reports held-out accuracy, distinct activation patterns and certified radii."""
    import json

    from .. import devices
    from .. import train as training

    settings = training.Settings(
        lam=lam, C=C, gamma=gamma, sample_dims=sample_dims, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed
    )
    settings.check()
    widths, channels = parse_widths(hidden, "--hidden"), parse_widths(conv, "--conv")
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
    say(
        f"training on {len(train_set[0])} samples, {len(val_set[0])} held out; {classes} classes; λ={lam:g} C={C:g} "
        f"γ={gamma:g}; on {devices.describe(target)}"
    )
    with _epoch_progress(epochs) as on_epoch:
        history = training.fit(model, train_set, val_set, settings, on_epoch)
    training.save_onnx(model, tuple(x.shape[1:]), out)
    stats = training.region_statistics(model, *val_set)
    say(f"saved {out}")
    if output_format == TableOrJson.json:
        doc = {"model": str(out), "settings": dataclasses.asdict(settings), "hidden": widths, "conv": channels,
               "history": history, "held_out": stats}
        typer.echo(json.dumps(doc, indent=2))
    else:
        from ..report import print_region_table

        print_region_table(sys.stdout, f"{out.name} on {len(val_set[0])} held-out samples", [(out.name, stats)])
    return EXIT_OK


@contextmanager
def _epoch_progress(epochs: int):
    """Per epoch: a rich progress bar on a terminal, otherwise one line on stderr."""
    def line(record: dict) -> str:
        return (f"epoch {record['epoch']}/{epochs}: loss {record['loss']:.4f}, held-out accuracy "
                f"{record['accuracy']:.3f}, median ε̂₂ {record['median_l2']:.3g}")

    if not sys.stderr.isatty():
        yield lambda record: say(line(record))
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"), TimeElapsedColumn()]
    with Progress(*columns, console=Console(file=sys.stderr)) as bar:
        task = bar.add_task("train", total=epochs, status="")
        yield lambda record: bar.update(task, advance=1, status=line(record).split(": ", 1)[1])
