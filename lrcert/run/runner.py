"""A run's model and data, and its inputs through an engine: what ``lrcert certify`` and ``lrcert
check`` share. :func:`prepare` loads the network (with ``--vary`` and the normalisation folded in)
and the rows of DATA for it (an array, stdin, an image folder or a table: :mod:`lrcert.data.sources`);
:func:`results_of` streams chosen rows through an engine and gives each result its number, its
file name and label where the data have them, and, with a box, its prediction radius and
adversarial point inside it (:mod:`lrcert.run.box`)."""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from ..data import arrays as data_io
from ..data import sources
from ..errors import LrcertError
from . import box as boxes


def prepare(data: str, load_model: Callable, *, raw: bytes | None = None, key: str | None = None,
            columns: str | None = None, resize: tuple[int, ...] | None = None, center_crop: tuple[int, ...] | None = None,
            normalization: tuple | None = None, vary: Sequence[str] | None = None, shape_hint=None,
            classes: list[str] | None = None, label_column: str | None = None):
    """(network, :class:`sources.Source`): ``load_model(shape_hint)`` gives the network (the hint,
    where not given, is the data's row shape); ``raw``: the bytes of stdin when ``data`` is ``-``;
    ``classes``: the model's class names in output order (labels are checked against its outputs)."""
    network, source = _prepare(data, load_model, raw=raw, key=key, columns=columns, resize=resize, center_crop=center_crop,
                               normalization=normalization, vary=vary, shape_hint=shape_hint, classes=classes,
                               label_column=label_column)
    shape = tuple(network.output_shape)
    sources.check_labels(source, shape[0] if len(shape) == 1 else None, data, classes)
    return network, source


def _prepare(data: str, load_model: Callable, *, raw, key, columns, resize, center_crop, normalization, vary, shape_hint,
             classes, label_column):
    kept = sources.is_source(data)  # an image folder or a table (else an array, or stdin)
    if not kept and (columns or resize or center_crop or label_column):
        if data != "-" and not Path(data).exists():
            raise LrcertError(f"data path {data!r} does not exist", fix="check the path")
        raise LrcertError("--columns, --label-column, --resize and --center-crop read tables and image folders",
                          fix="drop them for an array")
    source = raw if raw is not None else data
    if not kept and data_io.holds_sequences(source, key):
        return _sequences(source, "stdin" if raw is not None else data, load_model, normalization, vary)
    table = (sources.open_source(data, None, columns=columns, classes=classes, label_column=label_column)
             if kept and not Path(data).is_dir() else None)
    if shape_hint is None:
        shape_hint = (table.rows.shape[1:] if table is not None else sources.image_row_shape(data, resize, center_crop)
                      if kept else data_io.peek_row_shape(source, key))
    network = load_model(shape_hint)
    if vary:
        network = network.vary(vary)
    if normalization is not None:
        network = network.normalized(*normalization)
    if table is not None:
        table.rows, more = data_io.shape_rows(table.rows, network.sample_shape, data, "data")
        table.notes += more
        return network, table
    if kept:
        return network, sources.open_source(data, network.sample_shape, resize=resize, center_crop=center_crop, classes=classes)
    rows, notes = data_io.read_rows(source, network.sample_shape, key=key, name="stdin" if raw is not None else data,
                                    inputs=network.inputs)
    return network, sources.Source(rows, notes=notes)


def _sequences(source, name: str, load_model: Callable, normalization, vary):
    """(the network of the longest rows, the source) for an .npz of sequences of different lengths."""
    for option, given in (("--mean/--std/--normalize", normalization), ("--vary", vary)):
        if given:
            raise LrcertError(f"{option} is for images and several inputs, and {name} holds sequences",
                              fix=f"drop {option.split('/')[0]}; normalise the frames before saving them")
    rows, lengths, labels, notes = data_io.read_sequences(source, name)
    network = load_model((int(lengths.max()), *rows.shape[2:]))
    return network, sources.Source(rows, labels=labels, notes=notes, lengths=lengths)


def engine_for(network, source: "sources.Source", load_model: Callable, **options):
    """The run's engine: an :class:`~lrcert.engine.Engine` of ``network``, or for sequences of
    different lengths a :class:`~lrcert.engine.ByLength` of the model unrolled to each
    (``load_model(row shape)``)."""
    from ..engine import ByLength, Engine

    if source.lengths is None:
        return Engine(network, **options)
    features = tuple(source.rows.shape[2:])
    return ByLength(lambda steps: load_model((steps, *features)), lengths=source.lengths, **options)


def box_of(text: str | None, source: "sources.Source") -> tuple[float, float] | None:
    """``--box``: as given (``none``: no box), or [0, 1] for an image folder's pixels by default."""
    return boxes.parse(text) if text is not None else (0.0, 1.0) if source.images else None


def results_of(engine, source: "sources.Source", batches: Iterable[np.ndarray], *, directions=None, run_size: int,
               box: tuple[float, float] | None = None, adversarial_norm: str | None = None) -> Iterator[list]:
    """Each batch's results, for batches of row numbers of ``source`` (read one batch at a time,
    queued on the device before the previous batch's results are assembled)."""
    import torch

    batches = list(batches)
    rows = source.rows
    kind = np.float64 if rows.dtype == np.float64 else np.float32
    read = deque()  # the batches read and not yet answered (the box needs their inputs)

    def inputs():
        for indices in batches:
            read.append(torch.from_numpy(np.asarray(rows[indices], dtype=kind)))
            yield read[-1] if source.lengths is None else (read[-1], source.lengths[indices])

    count = sum(len(indices) for indices in batches)
    stream = engine.stream(inputs(), n_inputs=count, directions=directions, run_size=run_size)
    for indices in batches:
        results = []
        while len(results) < len(indices):  # (the engine may cut a batch larger than its plan's)
            results += next(stream)
        x = read.popleft()
        for result, index in zip(results, indices):
            result.index = int(index)
            if source.names is not None:
                result.source = source.names[result.index]
            if source.labels is not None:
                result.label = int(source.labels[result.index])
        if box is not None and engine.predictions:
            _constrain(engine, x.numpy(), results, box, adversarial_norm, None if source.lengths is None else source.lengths[indices])
        yield results


def _constrain(engine, x: np.ndarray, results: list, box, adversarial_norm: str | None, lengths) -> None:
    """The box's prediction radii and adversarial points (:func:`lrcert.run.box.constrain`), each
    length's rows with its own engine."""
    from ..engine.lengths import groups

    if lengths is None:
        boxes.constrain(engine, x, results, box, adversarial_norm)
        return
    for length, where in groups(lengths):
        boxes.constrain(engine.at(length), x[where, :length], [results[k] for k in where], box, adversarial_norm)
