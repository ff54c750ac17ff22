"""Input files → arrays of shape ``(N, *sample_shape)``, checked before any work is done; and
output files written atomically.

``.npy`` files are memory-mapped (a large test set is streamed, never loaded whole); ``.npz``
archives take ``key`` or their only array; ``-`` reads either from standard input.

>>> import numpy as np, io
>>> buffer = io.BytesIO(); np.save(buffer, np.zeros((3, 4), dtype=np.float32))
>>> rows, notes = read_rows(buffer.getvalue(), (2, 2), name="stdin")
>>> rows.shape, notes
((3, 2, 2), ['reshaped each row of stdin from (4,) to (2, 2) (same number of elements)'])
"""

from __future__ import annotations

import io
import math
import os
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import LrcertError

#: Rows scanned at once when looking for NaN/Inf (keeps memory flat on memory-mapped files).
SCAN_ROWS = 4096


def read_rows(
    source: str | bytes,
    sample_shape: Sequence[int],
    *,
    key: str | None = None,
    name: str | None = None,
    what: str = "data",
    single: bool = False,
    inputs: Sequence[tuple[str, Sequence[int]]] = (),
) -> tuple[np.ndarray, list[str]]:
    """Read, check and shape the rows of ``source`` (a path, ``-`` for stdin, or raw bytes).

    ``single``: the source holds one input, saved with a leading axis of 1 or in the model's own
    row shape (``np.save(path, x)`` for one x). ``inputs``: a model's several inputs (name, row
    shape); an .npz holding an array for each name (and no --key) gives rows that join them.
    """
    array, name = _open(source, key, name, inputs)
    if single and tuple(array.shape) == tuple(sample_shape):
        array = array[None]
    rows, notes = shape_rows(array, tuple(sample_shape), name, what)
    _check_finite(rows, name)
    return rows, notes


def _open(source: str | bytes, key: str | None, name: str | None, inputs=()) -> tuple[np.ndarray, str]:
    if isinstance(source, bytes) or source == "-":
        raw = source if isinstance(source, bytes) else sys.stdin.buffer.read()
        name = name or "stdin"
        if not raw:
            raise LrcertError(f"{name} is empty", fix="pipe a .npy or .npz file into lrcert")
        if raw[:2] == b"PK":
            return _from_npz(np.load(io.BytesIO(raw), allow_pickle=False), key, name, inputs), name
        return _load_npy(io.BytesIO(raw), name), name
    path = Path(source)
    name = name or str(path)
    if not path.exists():
        raise LrcertError(f"data file {name!r} does not exist", fix="check the path")
    if path.is_dir():
        raise LrcertError(f"data path {name!r} is a folder", fix="give a .npy or .npz file")
    if zipfile.is_zipfile(path):
        try:
            archive = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise _unreadable(name, exc) from None
        return _from_npz(archive, key, name, inputs), name
    return _load_npy(path, name), name


def _load_npy(source, name: str) -> np.ndarray:
    try:
        if isinstance(source, Path):
            return np.load(source, mmap_mode="r", allow_pickle=False)
        return np.load(source, allow_pickle=False)
    except ValueError as exc:
        if any(text in str(exc) for text in ("allow_pickle", "Object arrays", "Python objects")):
            raise LrcertError(
                f"{name} holds Python objects (an object array)",
                fix="save a numeric float array, e.g. np.save(path, x.astype('float32'))",
            ) from None
        raise _unreadable(name, exc) from None
    except Exception as exc:
        raise _unreadable(name, exc) from None


def _unreadable(name: str, exc: Exception) -> LrcertError:
    return LrcertError(
        f"{name} is not a readable .npy/.npz file ({type(exc).__name__}: truncated or corrupted?)",
        fix="re-save it with numpy.save or numpy.savez",
    )


def _from_npz(archive, key: str | None, name: str, inputs=()) -> np.ndarray:
    keys = list(archive.keys())
    if key is None and inputs and all(input_name in keys for input_name, _ in inputs):
        return _joined(archive, inputs, name)
    if key is None:
        if len(keys) != 1:
            raise LrcertError(
                f"{name} holds {len(keys)} arrays ({', '.join(keys) or 'none'})", fix="choose one with --key NAME"
            )
        key = keys[0]
    if key not in keys:
        raise LrcertError(f"{name} has no array {key!r} (it has {', '.join(keys) or 'none'})", fix="choose one with --key")
    try:
        return archive[key]
    except ValueError as exc:
        if any(text in str(exc) for text in ("allow_pickle", "Object arrays", "Python objects")):
            raise LrcertError(
                f"array {key!r} of {name} holds Python objects", fix="save a numeric float array"
            ) from None
        raise _unreadable(name, exc) from None
    except Exception as exc:
        raise _unreadable(name, exc) from None


def _joined(archive, inputs, name: str) -> np.ndarray:
    """One row per input of a model with several: each array's rows flattened, side by side."""
    parts = []
    for key, shape in inputs:
        array = _from_npz(archive, key, name)
        size = math.prod(shape)
        if array.ndim == 0 or array[0].size != size:
            raise LrcertError(f"array {key!r} of {name} has shape {list(array.shape)}, not (N, {_dims(shape)})",
                              fix=f"give input {key!r} as an array of shape (N, {_dims(shape)})")
        if parts and len(array) != len(parts[0]):
            raise LrcertError(f"array {key!r} of {name} holds {len(array)} rows, {inputs[0][0]!r} {len(parts[0])}",
                              fix="give every input the same number of rows")
        parts.append(np.asarray(array).reshape(len(array), size))
    return np.concatenate(parts, axis=1)


def shape_rows(array: np.ndarray, sample: tuple[int, ...], name: str, what: str) -> tuple[np.ndarray, list[str]]:
    """The rows in the model's row shape (of as many elements: reshaped, with a note), or a one-line error."""
    notes = _check_rows(tuple(array.shape), array.dtype.kind, str(array.dtype), sample, name, what)
    return (array.reshape(len(array), *sample) if notes else array), notes


def _check_rows(shape: tuple[int, ...], kind: str, dtype: str, sample: tuple[int, ...], name: str,
                what: str) -> list[str]:
    """Refuse rows that are not floating-point rows of the model's row shape (or of as many
    elements: then a note says they are reshaped). ``kind``: numpy's dtype kind letter."""
    if kind != "f":
        kinds = {"i": "integers", "u": "unsigned integers", "b": "booleans", "c": "complex numbers", "O": "objects"}
        raise LrcertError(
            f"{name} holds {kinds.get(kind, dtype)} ({dtype}), not floating-point {what}",
            fix="convert it, e.g. np.save(path, x.astype('float32')) (scale images to the model's input range)",
        )
    if len(shape) == 0:
        raise LrcertError(f"{name} holds a single number, not rows of {what}", fix=f"save an array of shape (N, {_dims(sample)})")
    if shape[0] == 0:
        raise LrcertError(f"{name} holds no inputs (0 rows)", fix="give at least one row")
    row = tuple(shape[1:])
    if row == sample:
        return []
    if math.prod(row) != math.prod(sample):
        raise LrcertError(
            f"{name} has rows of shape {row} (array {tuple(shape)}), but the model takes rows of shape {sample}",
            fix=f"give the {what} as an array of shape (N, {_dims(sample)})",
        )
    return [f"reshaped each row of {name} from {row} to {sample} (same number of elements)"]


def tensor_rows(x, sample_shape: Sequence[int], name: str = "x"):
    """The library's inputs checked as the command line checks a file: ``x`` (a tensor, an array or
    nested lists) as a float tensor of shape (N, *sample_shape), where it was; the same one-line
    errors (rows of as many elements are reshaped, silently)."""
    import torch

    if not isinstance(x, torch.Tensor):
        array = np.asarray(x)
        _check_rows(tuple(array.shape), array.dtype.kind, str(array.dtype), tuple(sample_shape), name, "data")
        x = torch.from_numpy(array if array.flags.writeable else array.copy())  # (torch warns of read-only memory)
    kind = "f" if x.is_floating_point() else "c" if x.is_complex() else "b" if x.dtype == torch.bool else "i"
    sample = tuple(sample_shape)
    if _check_rows(tuple(x.shape), kind, str(x.dtype).split(".")[-1], sample, name, "data"):
        x = x.reshape(len(x), *sample)
    finite = torch.isfinite(x.reshape(len(x), -1)).all(dim=1)
    if not bool(finite.all()):  # (one wait for the device: the library's inputs are checked once)
        bad = int(torch.argmin(finite.to(torch.uint8)))
        kind = "NaN" if bool(torch.isnan(x[bad]).any()) else "Inf"
        raise LrcertError(f"{name} holds {kind} in row {bad}", fix="remove or repair the rows that are not finite")
    return x


#: An .npz of sequences of different lengths: ``x`` (N, T_max, *features), zero-padded, ``lengths``
#: (N,), and optionally ``y``, each row's class.
SEQUENCE_KEYS = ("x", "lengths")


def holds_sequences(source: str | bytes | None, key: str | None = None) -> bool:
    """Whether ``source`` is an .npz of sequences (``x`` and ``lengths``; ``--key`` unset or x)."""
    if key not in (None, "x") or source is None or source == "-":
        return False
    try:
        with (io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")) as handle:
            if not zipfile.is_zipfile(handle):
                return False
            with zipfile.ZipFile(handle) as archive:
                members = {m[:-4] for m in archive.namelist() if m.endswith(".npy")}
    except OSError:
        return False
    return set(SEQUENCE_KEYS) <= members


def read_sequences(source: str | bytes, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[str]]:
    """The rows of an .npz of sequences (see :data:`SEQUENCE_KEYS`): ``x``, ``lengths`` and the
    labels ``y`` (or None), checked: floating-point frames, every length in 1 … T_max, finite
    values in every row's first ``length`` frames (the padding is never read)."""
    archive = np.load(io.BytesIO(source) if isinstance(source, bytes) else source, allow_pickle=False)
    x, lengths = (_from_npz(archive, key, name) for key in SEQUENCE_KEYS)
    labels = _from_npz(archive, "y", name) if "y" in archive.files else None
    if x.ndim < 2:
        raise LrcertError(f"array 'x' of {name} has shape {list(x.shape)}, not (N, steps, *features)",
                          fix="pad the sequences to one length: x of shape (N, T_max, features), with their lengths")
    _check_rows(tuple(x.shape), x.dtype.kind, str(x.dtype), tuple(x.shape[1:]), name, "sequences")
    if lengths.shape != (len(x),) or lengths.dtype.kind not in "iu":
        raise LrcertError(f"array 'lengths' of {name} has shape {list(lengths.shape)} and dtype {lengths.dtype}",
                          fix=f"give one integer length per row of x ({len(x)})")
    bad = np.flatnonzero((lengths < 1) | (lengths > x.shape[1]))
    if len(bad):
        raise LrcertError(f"row {bad[0]} of {name} has length {lengths[bad[0]]}, outside 1 … {x.shape[1]} (the steps x holds)",
                          fix="give every row a length between 1 and x.shape[1]")
    if labels is not None and (labels.shape != (len(x),) or labels.dtype.kind not in "iu"):
        raise LrcertError(f"array 'y' of {name} has shape {list(labels.shape)} and dtype {labels.dtype}",
                          fix=f"give one integer class per row of x ({len(x)}), or leave y out")
    valid = np.arange(x.shape[1])[None, :] < lengths[:, None]  # (N, T_max): the frames that are data
    finite = np.isfinite(x.reshape(*x.shape[:2], -1)).all(axis=2) | ~valid
    if not finite.all():
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        raise LrcertError(f"{name} holds NaN or Inf in row {row}", fix="remove or repair the rows that are not finite")
    lengths = lengths.astype(np.int64)
    notes = [f"{name} holds {len(x)} sequences of {lengths.min()} to {lengths.max()} steps of {_dims(x.shape[2:]) or 1} "
             "features: each is certified with the model unrolled to its own length (the padding is not part of it)"]
    return x, lengths, None if labels is None else labels.astype(np.int64), notes


def peek_row_shape(source: str | bytes | None, key: str | None = None, single: bool = False) -> tuple[int, ...] | None:
    """The shape of one row of a .npy/.npz file (or raw bytes), from its header alone; with
    ``single``, of its one input (a leading axis of 1 dropped). None when it cannot be read: the
    full checks come later, in :func:`read_rows`."""
    try:
        if isinstance(source, bytes):
            opened = io.BytesIO(source)
        elif source is None or source == "-":
            return None
        else:
            opened = open(source, "rb")
        with opened as handle:
            shape = _header_shape(handle, key)
    except Exception:
        return None
    if shape is None:
        return None
    return shape[1:] if not single or shape[:1] == (1,) else shape


def _header_shape(handle, key: str | None) -> tuple[int, ...] | None:
    """The array shape in a .npy header, or in that of the (only, or ``key``) member of an .npz."""
    if zipfile.is_zipfile(handle):
        with zipfile.ZipFile(handle) as archive:
            members = [m for m in archive.namelist() if m.endswith(".npy")]
            chosen = [m for m in members if m[:-4] == key] if key is not None else members
            if len(chosen) != 1:
                return None
            with archive.open(chosen[0]) as member:
                return _header_shape(member, None)
    handle.seek(0)
    version = np.lib.format.read_magic(handle)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return tuple(read(handle)[0])


def _check_finite(rows: np.ndarray, name: str) -> None:
    for start in range(0, len(rows), SCAN_ROWS):
        chunk = np.asarray(rows[start : start + SCAN_ROWS])
        finite = np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1)
        if not finite.all():
            bad = start + int(np.argmin(finite))
            kind = "NaN" if np.isnan(chunk[bad - start]).any() else "Inf"
            raise LrcertError(f"{name} holds {kind} in row {bad}", fix="remove or repair the rows that are not finite")


def _dims(shape: Sequence[int]) -> str:
    return ", ".join(map(str, shape)) if shape else ""


def sha256(path: str | Path) -> str | None:
    """The file's SHA-256 digest (hex), read in blocks; None where it cannot be read."""
    import hashlib

    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def batches(rows: np.ndarray, size: int):
    """Float tensors of at most ``size`` rows each, read lazily from a (memory-mapped) array."""
    import torch

    for start in range(0, len(rows), size):
        yield torch.from_numpy(np.array(rows[start : start + size], dtype=np.float64 if rows.dtype == np.float64 else np.float32))


@contextmanager
def written_atomically(path: Path) -> Iterator[str]:
    """A temporary path beside ``path``, renamed over it only if the block completes.

    Readers never see a half-written file; an interrupted or failed write leaves nothing behind.
    The file gets the permissions an ordinary new file would (mkstemp makes it private).
    """
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
