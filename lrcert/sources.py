"""Data where users keep it: folders of images and CSV or Parquet tables, read as rows of the
model's input (``.npy``/``.npz`` arrays are :mod:`lrcert.data`'s).

- **Image folders** (PNG, JPEG, WebP): every image file below the folder, in sorted order; in
  torchvision's ``ImageFolder`` layout (one subfolder per class, classes in sorted order) the
  folder gives each row its label too. Images are decoded with Pillow when their rows are read
  (a batch at a time: a folder of 50,000 images never sits in memory), converted to the model's
  channels (1: grey, 3: RGB), resized (``--resize``: the shorter side to N, or to H×W) and
  center-cropped (``--center-crop``) as torchvision's transforms do it, and scaled to [0, 1]
  (``ToTensor``). Every file's header is read first: an unreadable file or a size that does not
  fit the model is refused before any work, naming the file.
- **Tables**: a CSV file with a header row, or a Parquet file (with pyarrow); ``--columns``
  chooses and orders the feature columns (default: all but ``label``); a ``label`` column holds
  class indices. A cell that is not a number is refused naming its row and column.

>>> sizes("224"), sizes("224,160")
((224,), (224, 160))
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import LrcertError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
LABEL_COLUMN = "label"
#: ``--normalize`` presets: (mean, std) per channel.
NORMALIZATIONS = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


@dataclass
class Source:
    """What a data path holds: ``rows`` (indexable by arrays of row numbers, like a NumPy array),
    each row's ``names`` (image files, relative to the folder) and ``labels`` (class indices, −1
    none) where it has them, the class names of an ``ImageFolder``, notes, and for sequences of
    different lengths (rows padded to the longest) each row's ``lengths``."""

    rows: object
    names: Sequence[str] | None = None
    labels: np.ndarray | None = None
    classes: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    images: bool = False
    lengths: np.ndarray | None = None


def is_source(path: str) -> bool:
    """Whether ``path`` is read here: a folder, or a file with a table's suffix."""
    return path != "-" and (Path(path).is_dir() or Path(path).suffix.lower() in TABLE_SUFFIXES)


def sizes(text: str | None, option: str = "--resize") -> tuple[int, ...] | None:
    """``"224"`` → (224,), ``"224,160"`` → (224, 160) (height, width); None stays None."""
    if text is None:
        return None
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) not in (1, 2) or min(values) < 1:
        raise LrcertError(f"{option} {text!r} is not a size", fix=f"write {option} 224 (the shorter side) or {option} 224,160 (height, width)")
    return values


def open_source(path: str, sample_shape: Sequence[int] | None, *, columns: str | None = None,
                resize: tuple[int, ...] | None = None, center_crop: tuple[int, ...] | None = None) -> Source:
    """The rows of an image folder or a table at ``path`` for a model taking rows of ``sample_shape``
    (None: the data decide, for models that do not fix it)."""
    folder = Path(path)
    if folder.is_dir():
        if columns is not None:
            raise LrcertError("--columns chooses columns of a table, and DATA is a folder", fix="drop --columns")
        return _image_folder(folder, sample_shape, resize, center_crop)
    if resize is not None or center_crop is not None:
        raise LrcertError("--resize and --center-crop apply to image folders", fix="drop them, or give a folder of images")
    if not folder.exists():
        raise LrcertError(f"data file {path!r} does not exist", fix="check the path")
    chosen, cells = _parquet(folder, columns) if folder.suffix.lower() in (".parquet", ".pq") else _csv(folder, columns)
    return _table_source(chosen, cells, folder.name, sample_shape)


def normalization(mean: str | None, std: str | None, preset: str | None):
    """(mean, std) from ``--mean``/``--std`` (comma-separated numbers) or ``--normalize PRESET``, or None."""
    if preset is not None:
        if mean is not None or std is not None:
            raise LrcertError("--normalize and --mean/--std both say how inputs are normalised", fix="give one of them")
        if preset.lower() not in NORMALIZATIONS:
            raise LrcertError(f"--normalize {preset!r} is not a known preset", fix=f"use {', '.join(NORMALIZATIONS)}, or --mean and --std")
        return NORMALIZATIONS[preset.lower()]
    if (mean is None) != (std is None):
        raise LrcertError(f"{'--std without --mean' if mean is None else '--mean without --std'}", fix="give both (or --normalize imagenet)")
    if mean is None:
        return None
    values = []
    for option, text in (("--mean", mean), ("--std", std)):
        try:
            values.append(tuple(float(v) for v in text.split(",")))
        except ValueError:
            raise LrcertError(f"{option} {text!r} is not a list of numbers", fix=f"write e.g. {option} 0.5 or 0.485,0.456,0.406") from None
    return values[0], values[1]


# ------------------------------------------------------------------------------------------ images


def image_row_shape(path: str, resize: tuple[int, ...] | None, center_crop: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """The row shape (C, H, W) the folder's first image gives (C: 1 for a grey image, else 3), for
    models that do not fix their input size; None where there is no readable image."""
    files = _image_files(Path(path))[0]
    if not files:
        return None
    try:
        width, height, mode = _header(Path(path) / files[0])
    except LrcertError:
        return None
    return (1 if mode in ("1", "L", "I", "I;16", "F") else 3, *_output_size((height, width), resize, center_crop))


class ImageRows:
    """An image folder's rows, decoded when read: ``rows[indices]`` → float32 (n, C, H, W) in [0, 1]."""

    def __init__(self, folder: Path, files: list[str], shape: tuple[int, ...], resize, center_crop):
        self.folder, self.files, self.shape_of_row = folder, files, tuple(shape)
        self.resize, self.center_crop = resize, center_crop
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.files), *self.shape_of_row)

    def __getitem__(self, indices) -> np.ndarray:
        if isinstance(indices, (int, np.integer)):
            return self[[indices]][0]
        chosen = range(len(self))[indices] if isinstance(indices, slice) else np.asarray(indices).reshape(-1)
        out = np.empty((len(chosen), *self.shape_of_row), dtype=np.float32)
        for k, index in enumerate(chosen):
            out[k] = self.decode(int(index))
        return out

    def decode(self, index: int) -> np.ndarray:
        """One image as the model's row, as torchvision's Resize, CenterCrop and ToTensor make it."""
        from PIL import Image
        from torchvision.transforms import functional

        path = self.folder / self.files[index]
        try:
            with Image.open(path) as image:
                image = image.convert("L" if self.shape_of_row[0] == 1 else "RGB")
        except Exception as exc:
            raise LrcertError(f"{path}: the image cannot be decoded ({type(exc).__name__}: truncated or corrupt?)",
                              fix="repair or remove the file") from None
        if self.resize is not None:
            image = functional.resize(image, list(self.resize))
        if self.center_crop is not None:
            image = functional.center_crop(image, list(self.center_crop))
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _image_files(folder: Path) -> tuple[list[str], list[str] | None]:
    """The image files below ``folder`` (relative paths, sorted) and, in ImageFolder layout (no
    image at the top, each below a class folder), the class folders, sorted."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if files and all("/" in f for f in files):  # (class by class: "cat-x/…" sorts before "cat/…" as a path)
        return sorted(files, key=lambda f: (f.split("/")[0], f)), sorted({f.split("/")[0] for f in files})
    return files, None


def _header(path: Path) -> tuple[int, int, str]:
    """(width, height, mode) from the file's header alone."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.width, image.height, image.mode
    except UnidentifiedImageError:
        raise LrcertError(f"{path} is not an image Pillow can read", fix="repair or remove the file") from None
    except OSError as exc:
        raise LrcertError(f"{path} cannot be read ({exc.strerror or type(exc).__name__})", fix="check the file") from None


def _output_size(size: tuple[int, int], resize, center_crop) -> tuple[int, int]:
    """(H, W) after torchvision's Resize (one number: the shorter side) and CenterCrop."""
    height, width = size
    if resize is not None:
        if len(resize) == 2:
            height, width = resize
        elif height <= width:
            height, width = resize[0], int(resize[0] * width / height)
        else:
            height, width = int(resize[0] * height / width), resize[0]
    if center_crop is not None:
        height, width = center_crop if len(center_crop) == 2 else (center_crop[0], center_crop[0])
    return height, width


def _image_folder(folder: Path, sample_shape, resize, center_crop) -> Source:
    files, classes = _image_files(folder)
    if not files:
        raise LrcertError(f"{folder} holds no PNG, JPEG or WebP images", fix="give a folder of images (or a class folder of them)")
    if sample_shape is None or len(sample_shape) != 3 or sample_shape[0] not in (1, 3):
        shown = "unknown" if sample_shape is None else "×".join(map(str, sample_shape))
        raise LrcertError(f"an image folder needs a model whose input is one image (channels × height × width, 1 or 3 "
                          f"channels); this one takes {shown}", fix="give the data as a .npy array instead")
    wanted = tuple(sample_shape[1:])
    first = None
    for name in files:
        width, height, _ = _header(folder / name)
        if resize is None and first is not None and (height, width) != first[1]:
            raise LrcertError(f"{folder / name} is {width}×{height} pixels, {first[0]} is {first[1][1]}×{first[1][0]}",
                              fix="add --resize N (and --center-crop) to bring every image to one size")
        first = first or (name, (height, width))
        made = _output_size((height, width), resize, center_crop)
        if made != wanted:
            raise LrcertError(f"{folder / name} gives {made[1]}×{made[0]} pixels, the model takes {wanted[1]}×{wanted[0]}",
                              fix=f"add --resize {min(wanted)} --center-crop {wanted[0]},{wanted[1]} (as torchvision's transforms do)")
    rows = ImageRows(folder, files, tuple(sample_shape), resize, center_crop)
    number = {name: k for k, name in enumerate(classes or ())}
    labels = None if classes is None else np.array([number[f.split("/")[0]] for f in files], dtype=np.int64)
    layout = f"{len(classes)} class folders (labels in sorted folder order)" if classes else "no class folders (no labels)"
    steps = [f"resized ({'shorter side ' + str(resize[0]) if len(resize) == 1 else '×'.join(map(str, resize))})"] if resize else []
    steps += [f"center-cropped to {'×'.join(map(str, center_crop))}"] if center_crop else []
    notes = [f"{folder}: {len(files)} images, {layout}; decoded as {'grey' if sample_shape[0] == 1 else 'RGB'}"
             f"{', ' + ', '.join(steps) if steps else ''}, scaled to [0, 1]"]
    return Source(rows, names=files, labels=labels, classes=classes, notes=notes, images=True)


# ------------------------------------------------------------------------------------------ tables


def _csv(path: Path, columns: str | None) -> tuple[list[str], dict[str, list]]:
    """(the chosen columns, their cells by name as (line, text)) of a CSV file."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise LrcertError(f"{path} is empty", fix="give a CSV file with a header row")
            header = [h.strip() for h in header]
            chosen = _columns(header, columns, path.name)
            where = {name: header.index(name) for name in chosen}
            cells: dict[str, list] = {name: [] for name in chosen}
            for line, record in enumerate(reader, start=2):
                if not record:
                    continue
                if len(record) != len(header):
                    raise LrcertError(f"{path.name} line {line} has {len(record)} fields, the header {len(header)}",
                                      fix="give every row one value per column")
                for name, at in where.items():
                    cells[name].append((line, record[at]))
    except UnicodeDecodeError:
        raise LrcertError(f"{path} is not a text (UTF-8) CSV file", fix="save it as UTF-8 CSV") from None
    except OSError as exc:
        raise LrcertError(f"{path} cannot be read ({exc.strerror})", fix="check the file") from None
    return chosen, cells


def _parquet(path: Path, columns: str | None) -> tuple[list[str], dict[str, list]]:
    """(the chosen columns, their cells by name as (row, value)) of a Parquet file."""
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise LrcertError("reading Parquet needs pyarrow", fix="pip install 'lrcert[parquet]'") from None
    try:
        table = parquet.read_table(path)
    except Exception as exc:
        raise LrcertError(f"{path} is not a readable Parquet file ({type(exc).__name__})", fix="check the file") from None
    chosen = _columns(list(table.column_names), columns, path.name)
    cells = {name: list(enumerate(table.column(name).to_pylist())) for name in chosen}
    return chosen, cells


def _columns(header: list[str], columns: str | None, name: str) -> list[str]:
    """The feature columns in order (``--columns``, default all but ``label``), then ``label`` if there."""
    if columns is not None:
        features = [c.strip() for c in columns.split(",") if c.strip()]
        unknown = [c for c in features if c not in header]
        if unknown:
            raise LrcertError(f"{name} has no column {unknown[0]!r} (its columns: {', '.join(header)})",
                              fix="name columns of the header in --columns")
    else:
        features = [c for c in header if c != LABEL_COLUMN]
    if not features:
        raise LrcertError(f"{name} has no feature columns", fix="give a table with one column per input feature")
    return features + ([LABEL_COLUMN] if LABEL_COLUMN in header and LABEL_COLUMN not in features else [])


def _table_source(chosen: list[str], cells: dict[str, list], file: str, sample_shape) -> Source:
    features = [c for c in chosen if c != LABEL_COLUMN]
    count = len(cells[chosen[0]])
    if count == 0:
        raise LrcertError(f"{file} holds no rows", fix="give at least one row")
    rows = np.empty((count, len(features)), dtype=np.float64)
    for j, name in enumerate(features):
        for i, (where, value) in enumerate(cells[name]):
            rows[i, j] = _number(value, file, where, name)
    labels = None
    if LABEL_COLUMN in chosen:
        labels = np.empty(count, dtype=np.int64)
        for i, (where, value) in enumerate(cells[LABEL_COLUMN]):
            number = _number(value, file, where, LABEL_COLUMN)
            if number != int(number) or number < 0:
                raise LrcertError(f"{file} {_place(file, where)}, column 'label': {value!r} is not a class index",
                                  fix="write labels as class indices 0, 1, 2, … (the model's output order)")
            labels[i] = int(number)
    if sample_shape is not None and math.prod(sample_shape) != len(features):
        raise LrcertError(f"{file} has {len(features)} feature columns, the model takes {math.prod(sample_shape)} numbers a row",
                          fix="choose the model's features, in its order, with --columns a,b,c")
    shape = tuple(sample_shape) if sample_shape is not None else (len(features),)
    notes = [f"{file}: {count} rows of columns {', '.join(features)}" + (", labels from 'label'" if labels is not None else "")]
    return Source(rows.reshape(count, *shape), labels=labels, notes=notes)


def _number(value, file: str, where: int, column: str) -> float:
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise LrcertError(f"{file} {_place(file, where)}, column {column!r}: {value!r} is not a number",
                          fix="give only numbers in the chosen columns (or leave that column out with --columns)") from None
    if not math.isfinite(number):
        raise LrcertError(f"{file} {_place(file, where)}, column {column!r}: {value!r} is not finite", fix="repair the row")
    return number


def _place(file: str, where: int) -> str:
    """A CSV cell's line (header = line 1), or a Parquet cell's row (from 0)."""
    return f"line {where}" if file.lower().endswith(".csv") else f"row {where}"
