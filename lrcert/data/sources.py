"""Data where users keep it: folders of images and CSV or Parquet tables, read as rows of the
model's input (``.npy``/``.npz`` arrays are :mod:`lrcert.data.arrays`'s).

- **Image folders** (PNG, JPEG, WebP): every image file below the folder, in sorted order; in
  torchvision's ``ImageFolder`` layout (one subfolder per class) the folder gives each row its
  label too: the folder's place in ``--classes`` (the model's class names in output order), else
  its number where every folder is named by one (``0``, ``1``, …), else its place in sorted order
  (torchvision's), with a warning where the folders cannot be all of the model's classes. Images are decoded with Pillow when their rows are read
  (a batch at a time: a folder of 50,000 images never sits in memory), converted to the model's
  channels (1: grey, 3: RGB), resized (``--resize``: the shorter side to N, or to H×W) and
  center-cropped (``--center-crop``) as torchvision's transforms do it, and scaled to [0, 1]
  (``ToTensor``). Every file's header is read first: an unreadable file or a size that does not
  fit the model is refused before any work, naming the file.
- **Tables**: a CSV file with a header row, or a Parquet file (with pyarrow); ``--columns``
  chooses and orders the feature columns (default: all but the label column); the ``label``
  column (``--label-column``) holds class indices, or class names of ``--classes``. A cell that is not a number is refused naming its row and column.

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

from ..errors import LrcertError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
LABEL_COLUMN = "label"
#: ``--normalize`` presets: (mean, std) per channel.
NORMALIZATIONS = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


@dataclass
class Source:
    """What a data path holds: ``rows`` (indexable by arrays of row numbers, like a NumPy array),
    each row's ``names`` (image files, relative to the folder) and ``labels`` (class indices)
    where it has them, the class names, notes, and for sequences of different lengths (rows
    padded to the longest) each row's ``lengths``. ``guessed``: the labels are class folders'
    places in sorted order, which only the model's own class folders make right."""

    rows: object
    names: Sequence[str] | None = None
    labels: np.ndarray | None = None
    classes: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    images: bool = False
    lengths: np.ndarray | None = None
    guessed: bool = False


def class_names(text: str | None) -> list[str] | None:
    """``--classes``: the model's class names in output order, comma-separated, or a file of one
    name per line (blank lines and ``#`` comments skipped)."""
    if text is None:
        return None
    path = Path(text)
    if "," not in text and not path.is_file() and (path.suffix or "/" in text):
        raise LrcertError(f"--classes {text}: no such file", fix="give a file of class names (one per line), or the names "
                          "themselves (--classes cat,dog)")
    if path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise LrcertError(f"--classes {text}: the file cannot be read ({type(exc).__name__})",
                              fix="give a UTF-8 text file of one class name per line") from None
        names = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    else:
        names = [name.strip() for name in text.split(",")]
    if not names or not all(names):
        raise LrcertError(f"--classes {text!r} holds an empty class name",
                          fix="write --classes airplane,automobile,… (the model's classes in output order) or a file of names")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise LrcertError(f"--classes names {repeated[0]!r} twice", fix="give each of the model's classes once, in output order")
    return names


def check_labels(source: Source, outputs: int | None, data: str, classes: list[str] | None) -> None:
    """Refuse labels that cannot be the model's (a class it does not have, or ``--classes`` of
    another length); warn (a note) where class folders in sorted order may not be its classes."""
    if outputs is None:
        return
    if classes is not None and len(classes) != outputs:
        raise LrcertError(f"--classes names {len(classes)} classes, and the model has {outputs} outputs",
                          fix="name every class of the model, in its output order")
    if source.labels is None or not len(source.labels):
        return
    largest = int(source.labels.max())
    if largest >= outputs:
        where = "class folders" if source.images else "labels"
        raise LrcertError(f"{data}: the {where} give labels up to {largest}, and the model has {outputs} outputs "
                          f"(classes 0–{outputs - 1})", fix="give labels in the model's output order: --classes NAMES "
                          "names its classes (folders and label cells are matched to them)")
    if source.guessed and len(source.classes) != outputs:
        shown = ", ".join(source.classes[:5]) + (", …" if len(source.classes) > 5 else "")
        source.notes.append(
            f"warning: {data}: the {len(source.classes)} class folders ({shown}) became labels 0–{len(source.classes) - 1} "
            f"in sorted order, and the model has {outputs} outputs: the accuracy is right only if they are its first "
            "classes. Fix: --classes NAMES (the model's class names in output order, or a file of them) matches the "
            "folders to its outputs")


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
                resize: tuple[int, ...] | None = None, center_crop: tuple[int, ...] | None = None,
                classes: list[str] | None = None, label_column: str | None = None) -> Source:
    """The rows of an image folder or a table at ``path`` for a model taking rows of ``sample_shape``
    (None: the data decide, for models that do not fix it); ``classes``: the model's class names in
    output order, which class folders and label cells are matched to."""
    folder = Path(path)
    if folder.is_dir():
        for option, given in (("--columns", columns), ("--label-column", label_column)):
            if given is not None:
                raise LrcertError(f"{option} names columns of a table, and DATA is a folder", fix=f"drop {option}")
        return _image_folder(folder, sample_shape, resize, center_crop, classes)
    if resize is not None or center_crop is not None:
        raise LrcertError("--resize and --center-crop apply to image folders", fix="drop them, or give a folder of images")
    if not folder.exists():
        raise LrcertError(f"data file {path!r} does not exist", fix="check the path")
    label = label_column or LABEL_COLUMN
    read = _parquet if folder.suffix.lower() in (".parquet", ".pq") else _csv
    chosen, cells = read(folder, columns, label, label_column is not None)
    return _table_source(chosen, cells, folder.name, sample_shape, label, classes)


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


def _image_folder(folder: Path, sample_shape, resize, center_crop, classes: list[str] | None) -> Source:
    files, folders = _image_files(folder)
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
    source = _folder_labels(folder, files, folders, classes)
    source.rows, source.images = rows, True
    steps = [f"resized ({'shorter side ' + str(resize[0]) if len(resize) == 1 else '×'.join(map(str, resize))})"] if resize else []
    steps += [f"center-cropped to {'×'.join(map(str, center_crop))}"] if center_crop else []
    source.notes[0] += (f"; decoded as {'grey' if sample_shape[0] == 1 else 'RGB'}"
                        f"{', ' + ', '.join(steps) if steps else ''}, scaled to [0, 1]")
    return source


def _folder_labels(folder: Path, files: list[str], folders: list[str] | None, classes: list[str] | None) -> Source:
    """Each image's label from its class folder: its place in ``classes``, else the folder's own
    number (folders ``0``, ``1``, …), else its place among the folders in sorted order (guessed)."""
    if folders is None:
        return Source(None, names=files, classes=classes, notes=[f"{folder}: {len(files)} images, no class folders (no labels)"])
    if classes is not None:
        place = {name: k for k, name in enumerate(classes)} | {name.casefold(): k for k, name in enumerate(classes)}
        unknown = [name for name in folders if name not in place and name.casefold() not in place]
        if unknown:
            raise LrcertError(f"{folder}: class folder {unknown[0]!r} is not one of --classes ({', '.join(classes[:6])}"
                              f"{', …' if len(classes) > 6 else ''})", fix="name each class folder after one of the model's "
                              "classes, or correct --classes")
        number = {name: place.get(name, place.get(name.casefold())) for name in folders}
        layout, names, guessed = f"{len(folders)} class folders matched to --classes", classes, False
    elif all(name.isdigit() for name in folders):
        number = {name: int(name) for name in folders}
        layout, names, guessed = f"{len(folders)} class folders named by class number", None, False
    else:
        number = {name: k for k, name in enumerate(folders)}
        layout, names, guessed = f"{len(folders)} class folders (labels in sorted folder order)", folders, True
    labels = np.array([number[f.split("/")[0]] for f in files], dtype=np.int64)
    return Source(None, names=files, labels=labels, classes=names, notes=[f"{folder}: {len(files)} images, {layout}"],
                  guessed=guessed)


# ------------------------------------------------------------------------------------------ tables


def _csv(path: Path, columns: str | None, label: str, required: bool) -> tuple[list[str], dict[str, list]]:
    """(the chosen columns, their cells by name as (line, text)) of a CSV file."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise LrcertError(f"{path} is empty", fix="give a CSV file with a header row")
            header = [h.strip() for h in header]
            chosen = _columns(header, columns, path.name, label, required)
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


def _parquet(path: Path, columns: str | None, label: str, required: bool) -> tuple[list[str], dict[str, list]]:
    """(the chosen columns, their cells by name as (row, value)) of a Parquet file."""
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise LrcertError("reading Parquet needs pyarrow", fix="pip install pyarrow (in lrcert's clone: pip install -e '.[parquet]')") from None
    try:
        table = parquet.read_table(path)
    except Exception as exc:
        raise LrcertError(f"{path} is not a readable Parquet file ({type(exc).__name__})", fix="check the file") from None
    chosen = _columns(list(table.column_names), columns, path.name, label, required)
    cells = {name: list(enumerate(table.column(name).to_pylist())) for name in chosen}
    return chosen, cells


def _columns(header: list[str], columns: str | None, name: str, label: str, required: bool) -> list[str]:
    """The feature columns in order (``--columns``, default all but the label column), then the
    label column if there (``required``: named by ``--label-column``, so it must be)."""
    if required and label not in header:
        raise LrcertError(f"{name} has no column {label!r} (its columns: {', '.join(header)})",
                          fix="name the label column with --label-column, or leave it out (no labels)")
    if columns is not None:
        features = [c.strip() for c in columns.split(",") if c.strip()]
        unknown = [c for c in features if c not in header]
        if unknown:
            raise LrcertError(f"{name} has no column {unknown[0]!r} (its columns: {', '.join(header)})",
                              fix="name columns of the header in --columns")
    else:
        features = [c for c in header if c != label]
    if label in features and required:
        raise LrcertError(f"--columns names the label column {label!r} as a feature", fix=f"leave {label!r} out of --columns")
    if not features:
        raise LrcertError(f"{name} has no feature columns", fix="give a table with one column per input feature")
    return features + ([label] if label in header and label not in features else [])


def _table_source(chosen: list[str], cells: dict[str, list], file: str, sample_shape, label: str,
                  classes: list[str] | None) -> Source:
    features = [c for c in chosen if c != label]
    count = len(cells[chosen[0]])
    if count == 0:
        raise LrcertError(f"{file} holds no rows", fix="give at least one row")
    rows = np.empty((count, len(features)), dtype=np.float64)
    for j, name in enumerate(features):
        for i, (where, value) in enumerate(cells[name]):
            rows[i, j] = _number(value, file, where, name)
    labels = None
    if label in chosen:
        labels = np.array([_label(value, file, where, label, classes) for where, value in cells[label]], dtype=np.int64)
    if sample_shape is not None and math.prod(sample_shape) != len(features):
        raise LrcertError(f"{file} has {len(features)} feature columns, the model takes {math.prod(sample_shape)} numbers a row",
                          fix="choose the model's features, in its order, with --columns a,b,c")
    shape = tuple(sample_shape) if sample_shape is not None else (len(features),)
    notes = [f"{file}: {count} rows of columns {', '.join(features)}" + (f", labels from {label!r}" if labels is not None else "")]
    return Source(rows.reshape(count, *shape), labels=labels, classes=classes, notes=notes)


def _label(value, file: str, where: int, column: str, classes: list[str] | None) -> int:
    """A label cell: a class index, or a name of ``classes``."""
    if classes is not None and isinstance(value, str) and value.strip() in classes:
        return classes.index(value.strip())
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (number == int(number) if math.isfinite(number) else False) or number < 0:
        names = "one of --classes" if classes is not None else "named by --classes NAMES (the model's classes in output order)"
        raise LrcertError(f"{file} {_place(file, where)}, column {column!r}: {value!r} is not a class index",
                          fix=f"write labels as class indices 0, 1, 2, … (the model's output order), or class names {names}; "
                          "a column that is not the label: --label-column NAME, and --columns for the features")
    return int(number)


def _number(value, file: str, where: int, column: str) -> float:
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise LrcertError(f"{file} {_place(file, where)}, column {column!r}: {value!r} is not a number",
                          fix="give only numbers in the feature columns: choose them with --columns, and name a "
                          "column of labels with --label-column") from None
    if not math.isfinite(number):
        raise LrcertError(f"{file} {_place(file, where)}, column {column!r}: {value!r} is not finite", fix="repair the row")
    return number


def _place(file: str, where: int) -> str:
    """A CSV cell's line (header = line 1), or a Parquet cell's row (from 0)."""
    return f"line {where}" if file.lower().endswith(".csv") else f"row {where}"
