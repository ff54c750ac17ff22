"""Converted networks kept between runs: a model file is read, checked, converted and traced once
per row shape, and later runs load the layer list itself (shell pipelines and CI call lrcert once
per model or file; a hit skips importing onnx and onnx2torch too).

An entry's key is the SHA-256 of the model file's bytes, the row shape and output asked, and a
fingerprint of the code that made it: lrcert's own source files and the versions of PyTorch, onnx
and onnx2torch. So a changed model, lrcert or library never reads an old entry. Weights kept in
external files are checked on every hit (their SHA-256 is stored with the entry).

**Reading an entry never runs code.** An entry is data only (:mod:`.stored`): the layer list as
JSON (each layer's class named from the layer list's own classes, an average pool's operation from
a list of four) and its tensors, read back with ``torch.load(weights_only=True)``, whose unpickler
builds tensors, numbers, strings and containers and refuses everything else. Anything else in an
entry (a pickled object, an unknown class or operation) is a miss, and the entry is removed.

**A folder another user can write is not used**, as ssh and pip treat theirs: the cache folder and
its ``networks`` folder must belong to the user and be writable by no one else (a note on stderr
says why a cache is skipped, once); the folders lrcert creates are 0700 all the way down. Entries
live in ``$LRCERT_CACHE_DIR``, else the platform's user cache folder (``~/.cache/lrcert`` on Linux);
the oldest go beyond ``KEEP`` entries; a damaged or unreadable entry is a miss; a folder that
cannot be written means no cache, never an error. The commands' ``--no-cache`` (and
``cache=False``) read and write none.
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
import sys
import tempfile
from pathlib import Path

from . import stored

#: How many converted networks the cache keeps (the most recently used).
KEEP = 64


def folder() -> Path:
    """Where entries live: ``$LRCERT_CACHE_DIR``, or the platform's user cache folder."""
    if os.environ.get("LRCERT_CACHE_DIR"):
        return Path(os.environ["LRCERT_CACHE_DIR"])
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "lrcert"
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA", Path.home())) / "lrcert" / "Cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lrcert"


@functools.lru_cache(maxsize=1)
def fingerprint() -> str:
    """A digest of the code that converts: lrcert's source files and the libraries' versions."""
    from importlib import metadata

    digest = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]
    for source in sorted(package.rglob("*.py")):
        digest.update(source.relative_to(package).as_posix().encode() + b"\0" + source.read_bytes())
    for library in ("torch", "onnx", "onnx2torch"):
        try:
            digest.update(f"{library} {metadata.version(library)}".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{library} absent".encode())
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Entries:
    """The cache entries of one model file (read as ``output_name``), by row shape."""

    def __init__(self, path: Path, output_name: str | None):
        self.path = path
        self.base = hashlib.sha256(f"{fingerprint()} {file_digest(path)} {output_name!r}".encode()).hexdigest()

    def _file(self, sample_shape: tuple[int, ...] | None) -> Path:
        key = hashlib.sha256(f"{self.base} {sample_shape!r}".encode()).hexdigest()
        return folder() / "networks" / f"{key}.pt"

    def get(self, sample_shape: tuple[int, ...] | None):
        """The network stored for this row shape, or None."""
        import torch

        entry = self._file(sample_shape)
        if not safe_folders() or not entry.is_file():
            return None
        try:
            kept = torch.load(entry, map_location="cpu", weights_only=True)  # (data only: see the module)
            if any(file_digest(self.path.parent / name) != digest for name, digest in kept["external"].items()):
                return None
            network = stored.network(kept)
            os.utime(entry)  # (recently used: kept longest)
            return network
        except Exception:  # (damaged, from another layout, not data, or a weight file gone: a miss)
            entry.unlink(missing_ok=True)
            return None

    def put(self, sample_shape: tuple[int, ...] | None, network, external: list[str]) -> None:
        """Store ``network`` for this row shape, with the digests of its external weight files."""
        import torch

        entry, written = self._file(sample_shape), None
        try:
            _make_private(entry.parent)
            if not safe_folders():
                return
            kept = stored.entry(network) | {"external": {name: file_digest(self.path.parent / name) for name in external}}
            with tempfile.NamedTemporaryFile(dir=entry.parent, suffix=".tmp", delete=False) as handle:
                written = Path(handle.name)
                torch.save(kept, handle)
            os.replace(written, entry)
            _prune(entry.parent)
        except Exception:  # (a read-only or full disk, a network that does not store: no cache)
            if written is not None:
                written.unlink(missing_ok=True)


def _make_private(where: Path) -> None:
    """Create ``where`` and every missing folder above it with mode 0700."""
    missing = []
    for folder in (where, *where.parents):
        if folder.exists():
            break
        missing.append(folder)
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)
        folder.chmod(0o700)


def safe_folders() -> bool:
    """Whether the cache's folders that exist belong to this user and no one else may write them
    (always, where the system has no such owners: Windows); if not, says why on stderr, once."""
    if os.name == "nt":
        return True
    root = folder()
    for place in (root, root / "networks"):
        try:
            info = place.stat()
        except OSError:
            continue
        problem = _unsafe(place, info)
        if problem:
            _note(f"note: not using the cache of converted networks: {problem}. Fix: make it yours and private "
                  f"(chmod 700 {place}), or set LRCERT_CACHE_DIR to a folder of your own")
            return False
    return True


def _unsafe(where: Path, info: os.stat_result) -> str | None:
    """Why ``where`` may not hold the cache, or None."""
    if info.st_uid != _uid():
        return f"{where} belongs to another user (uid {info.st_uid})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{where} is writable by others (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def _uid() -> int:
    return os.getuid()


@functools.lru_cache(maxsize=None)
def _note(text: str) -> None:
    """A note on stderr, once per process."""
    print(text, file=sys.stderr)


def _prune(where: Path) -> None:
    """Keep the ``KEEP`` most recently used entries."""
    entries = sorted(where.glob("*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[KEEP:]:
        old.unlink(missing_ok=True)
