"""Where ``lrcert certify`` writes: its output (stdout, a file renamed into place only when complete,
or a device written directly), the JSON-lines file an interrupted run grows and ``--resume``
continues (with torchrun, each rank's own rows too), and the ``--adversarial-out`` array."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, TextIO

from ..errors import LrcertError


@contextmanager
def open_output(path: Path | None) -> Iterator[TextIO]:
    """stdout, or a temporary file beside ``path`` renamed over it only once everything is written."""
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    if device_file(path):
        with open(path, "w", encoding="utf-8", newline="") as handle:
            yield handle
        return
    from ..data.arrays import written_atomically

    with written_atomically(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def partial_path(path: Path) -> Path:
    """Where a JSON-lines ``--output`` grows until the run completes (and where ``--resume`` looks)."""
    return path.with_name(path.name + ".partial")


@contextmanager
def open_resumable(path: Path) -> Iterator[TextIO]:
    """Append JSON lines to ``path``.partial; rename it to ``path`` when the run completes.

    Interrupted, the partial file keeps every complete line and ``path`` itself is never
    half-written; ``--resume`` continues from it.
    """
    partial = partial_path(path)
    with open(partial, "a", encoding="utf-8", newline="") as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def rank_path(path: Path, ranks) -> Path:
    """Where rank r of a torchrun job keeps the rows it certified, until rank 0 has written them all."""
    return path.with_name(f"{path.name}.rank{ranks.rank}.partial")


@dataclass
class Resumed:
    """What an interrupted run left: inputs 0..prefix-1 in order in the .partial file, and (from the
    ranks' own files) rows of later inputs, as JSON lines by input."""

    prefix: int = 0
    scattered: dict[int, str] = field(default_factory=dict)

    def remaining(self, count: int) -> list[int]:
        return [i for i in range(self.prefix, count) if i not in self.scattered]


def resumed_rows(path: Path, tally, resume: bool, lead: bool) -> Resumed:
    """The rows a previous run of this command left (with ``--resume``), read into ``tally``;
    without it, a left-over run is refused rather than overwritten. Only rank 0 reads."""
    if not lead:
        return Resumed()
    leftovers = sorted(path.parent.glob(f"{path.name}.rank*.partial"))
    if not resume:
        if partial_path(path).exists() or leftovers:
            raise LrcertError(
                f"{partial_path(path)} (or a rank's .partial file) holds rows of an interrupted run of this output",
                fix="add --resume to continue it, or delete those files to start over",
            )
        return Resumed()
    resumed = Resumed(prefix=_ordered_rows(path, tally))
    for leftover in leftovers:
        for line in _complete_lines(leftover):
            try:
                index = json.loads(line)["index"]
            except (ValueError, KeyError, TypeError):
                raise LrcertError(
                    f"cannot resume: {leftover} holds a line that is not a result", fix="delete it to start over"
                ) from None
            if index >= resumed.prefix:
                resumed.scattered.setdefault(index, line)
    return resumed


def _ordered_rows(path: Path, tally) -> int:
    """How many results a previous run of this command left in ``path`` (or its .partial), inputs
    0..k-1 in order (checked); read into ``tally``. A torn last line is dropped."""
    partial = partial_path(path)
    if not partial.exists() and path.exists():
        os.replace(path, partial)
    if not partial.exists():
        return 0
    lines = _complete_lines(partial)
    for number, line in enumerate(lines):
        try:
            record = json.loads(line)
            ok = record.get("index") == number
        except (ValueError, AttributeError):
            ok = False
        if not ok:
            raise LrcertError(
                f"cannot resume: line {number + 1} of {partial} is not the result for input {number}",
                fix="resume only the same command that wrote it, or delete the file to start over",
            )
        tally.add_record(record)
    return len(lines)


def _complete_lines(path: Path) -> list[str]:
    """The complete lines of a JSON-lines file, each with its newline; a torn last line is cut off."""
    raw = path.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    if len(complete) != len(raw):
        with open(path, "r+b") as handle:
            handle.truncate(len(complete))
    return complete.decode("utf-8", errors="replace").splitlines(keepends=True)


def forget_rank_rows(path: Path) -> None:
    """The run is complete and written: the ranks' own row files are no longer needed."""
    for leftover in path.parent.glob(f"{path.name}.rank*.partial"):
        leftover.unlink(missing_ok=True)


@contextmanager
def nowhere():
    yield None


@contextmanager
def adversarial_file(path: Path, shape: tuple[int, ...]):
    """The --adversarial-out array, NaN until rows arrive; written beside its name and renamed
    over it only when the run completes (an interrupted run leaves nothing half-written)."""
    import numpy as np

    from ..data.arrays import written_atomically

    with written_atomically(path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float64, shape=shape)
        array[...] = np.nan
        try:
            yield array
        finally:
            array.flush()
            del array


def put_point(array, result) -> None:
    """Row ``result.index`` of the --adversarial-out array: the input's adversarial point (NaN where
    there is none); a sequence's over its own steps, its padding steps 0 like the data's."""
    import numpy as np

    point = result.adversarial
    if result.length is None or point is None:
        array[result.index] = point
        return
    array[result.index, : result.length] = point
    array[result.index, result.length :] = 0.0 if bool(np.isfinite(point).all()) else np.nan


def device_file(path: Path) -> bool:
    """An existing output that is not a regular file (a device such as /dev/null, a pipe): written
    directly, never replaced by a renamed temporary file."""
    return path.exists() and not path.is_file()
