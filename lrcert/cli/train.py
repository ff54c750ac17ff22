"""``lrcert train DATA --output MODEL``: a ReLU network trained with the ROLL regulariser, saved as ONNX."""

from __future__ import annotations

import dataclasses
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import LrcertError
from .common import EXIT_OK, Device, TableOrJson, app, check_output_path, integers, reports_errors, say, threads_option


def parse_widths(value: str | None, option: str) -> tuple[int, ...]:
    if not value:
        return ()
    widths = integers(value)
    if not widths or any(w < 1 for w in widths):
        raise LrcertError(f"{option} {value!r} is not a list of positive widths", fix=f"write e.g. {option} 300,300")
    return widths


@app.command(short_help="Train a ReLU network with ROLL (larger regions), as ONNX.")
@reports_errors
def train(
    data: Annotated[str, typer.Argument(help=".npz with 'x' (inputs, first axis indexes samples) and 'y' (integer class labels); sequences of different lengths: x (N, steps, features) zero-padded, and 'lengths' (N,).")],
    output: Annotated[Path, typer.Option("--output", "-o", "--out", help="Where to save the trained model (ONNX, readable by lrcert certify).", rich_help_panel="Output")],
    hidden: Annotated[Optional[str], typer.Option("--hidden", metavar="WIDTHS", help="Widths of the dense ReLU layers, comma-separated. Default: 300,300,300,300; with --rnn, none (a linear layer on the last step).", rich_help_panel="Network")] = None,
    rnn: Annotated[Optional[str], typer.Option("--rnn", metavar="WIDTHS", help="Train a ReLU RNN over sequences instead: the units of each recurrent layer, e.g. 64 or 64,64 (x: (N, steps, features)). The saved ONNX model reads every length. Default: none (a dense or --conv network).", rich_help_panel="Network")] = None,
    conv: Annotated[Optional[str], typer.Option("--conv", metavar="CHANNELS", help="Channels of 3×3 stride-2 ReLU convolutions before the dense layers, e.g. 16,32 (inputs must be (N, C, H, W)). Default: none.", rich_help_panel="Network")] = None,
    lam: Annotated[float, typer.Option("--lam", help="ROLL weight λ: larger gives larger regions and, past a point, lower accuracy; 0 trains a vanilla network.", rich_help_panel="ROLL")] = 0.5,
    C: Annotated[float, typer.Option("--C", help="ROLL hinge weight C on max(0, 1 − |z|).", rich_help_panel="ROLL")] = 1.0,
    gamma: Annotated[float, typer.Option("--gamma", help="Percent of faces per input in the ROLL term (those with the largest terms).", rich_help_panel="ROLL")] = 100.0,
    sample_dims: Annotated[Optional[int], typer.Option("--sample-dims", help="Estimate gradient norms from this many random input coordinates (faster on large inputs; needs --gamma 100). Default: every coordinate (exact).", rich_help_panel="ROLL")] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the training data.", rich_help_panel="Optimisation")] = 20,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Samples per optimisation step.", rich_help_panel="Optimisation")] = 64,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.", rich_help_panel="Optimisation")] = 1e-3,
    clip_norm: Annotated[Optional[float], typer.Option("--clip-norm", metavar="N", help="Clip each step's gradient norm to N (recurrent networks' usual guard against exploding gradients). Default: no clipping.", rich_help_panel="Optimisation")] = None,
    cosine: Annotated[bool, typer.Option("--cosine", help="Decay the learning rate from --lr to 0 along a half cosine over the epochs. Default: off (a constant rate).", rich_help_panel="Optimisation")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the split, the initial weights, the shuffling and the sampled coordinates.", rich_help_panel="Optimisation")] = 0,
    val: Annotated[Optional[str], typer.Option("--val", metavar="FILE", help="Held-out .npz (x, y). Default: a --val-fraction split of DATA.", rich_help_panel="Data")] = None,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Share of DATA held out when --val is not given.", rich_help_panel="Data")] = 0.2,
    output_format: Annotated[TableOrJson, typer.Option("--format", "-f", help="table or json (the held-out statistics and the training history).", rich_help_panel="Output")] = TableOrJson.table,
    device: Annotated[Device, typer.Option("--device", help="Where to train (the ROLL loss and the per-epoch certification too): auto takes the GPU when PyTorch sees one.", rich_help_panel="Engine")] = Device.auto,
    threads: threads_option("Engine") = None,
) -> int:
    """Train a ReLU network with the ROLL regulariser (larger linear regions) and save it as ONNX.

    Reports held-out accuracy, distinct activation patterns and certified radii."""
    import json

    from ..runtime import devices
    from ..training import train as training

    settings = training.Settings(
        lam=lam, C=C, gamma=gamma, sample_dims=sample_dims, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
        clip=clip_norm, cosine=cosine, threads=threads,
    )
    settings.check()
    recurrent = parse_widths(rnn, "--rnn")
    widths = parse_widths(hidden if hidden is not None else None if recurrent else "300,300,300,300", "--hidden")
    channels = parse_widths(conv, "--conv")
    output = output if output.suffix else output.with_suffix(".onnx")
    check_output_path(output)
    x, y, lengths = training.read_labelled(data)
    _check_shape(x, lengths, recurrent, channels, data)
    if val is not None:
        vx, vy, vl = training.read_labelled(val, what="--val data")
        _check_shape(vx, vl, recurrent, channels, val)
        frame = 2 if recurrent else 1  # (sequences may differ in steps, not in their frames)
        if vx.shape[frame:] != x.shape[frame:]:
            raise LrcertError(f"--val samples have shape {tuple(vx.shape[1:])}, {data}'s have {tuple(x.shape[1:])}",
                              fix="give held-out data shaped like the training data")
        train_set = (x, y) if lengths is None else (x, y, lengths)
        val_set = (vx, vy) if vl is None else (vx, vy, vl)
    else:
        train_set, val_set = training.split(x, y, val_fraction, seed, lengths)
    classes = int(max(y.max(), val_set[1].max())) + 1
    target = devices.resolve(device.value)
    if recurrent:
        model = training.build_recurrent(x.shape[2], classes, rnn=recurrent, hidden=widths, seed=seed).to(target)
    else:
        model = training.build_network(tuple(x.shape[1:]), classes, hidden=widths, conv=channels, seed=seed).to(target)
    say(
        f"training on {len(train_set[0])} samples, {len(val_set[0])} held out; {classes} classes; λ={lam:g} C={C:g} "
        f"γ={gamma:g}; on {devices.describe(target)}"
    )
    with _epoch_progress(epochs) as on_epoch:
        history = training.fit(model, train_set, val_set, settings, on_epoch)
    training.save_onnx(model, tuple(x.shape[1:]), output)
    stats = training.region_statistics(model, *val_set)
    say(f"saved {output}")
    if output_format == TableOrJson.json:
        doc = {"model": str(output), "settings": dataclasses.asdict(settings), "hidden": widths, "conv": channels,
               "rnn": recurrent, "history": history, "held_out": stats}
        typer.echo(json.dumps(doc, indent=2))
    else:
        from ..results.report import print_region_table

        print_region_table(sys.stdout, f"{output.name} on {len(val_set[0])} held-out samples", [(output.name, stats)])
    return EXIT_OK


def _check_shape(x, lengths, recurrent: tuple[int, ...], channels: tuple[int, ...], data: str) -> None:
    """--rnn needs sequences (N, steps, features) and no --conv; sequences of different lengths need --rnn."""
    if recurrent and channels:
        raise LrcertError("--rnn and --conv build different networks", fix="give one of them")
    if recurrent and x.dim() != 3:
        raise LrcertError(f"--rnn needs sequences: x of shape (N, steps, features), and {data}'s x has shape {tuple(x.shape)}",
                          fix="save x as (N, steps, features), zero-padded, with 'lengths' where they differ")
    if lengths is not None and not recurrent:
        raise LrcertError(f"{data} holds sequences of different lengths ('lengths')",
                          fix="train a recurrent network on them with --rnn WIDTHS, e.g. --rnn 64")


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
