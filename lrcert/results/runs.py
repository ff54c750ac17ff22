"""Result files of ``lrcert certify`` read back (``--format json`` documents and ``jsonl`` lines),
for ``lrcert report``, ``compare`` and ``check``: plain JSON, no torch."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import LrcertError


#: What each kind of result file's records hold, at least.
KINDS = {"certify": {"index", "radius", "binding"}, "stability": {"index", "certified", "expected", "max_found", "max_bound"}}


def read(path: Path, kinds: tuple[str, ...] = ("certify",)) -> tuple[dict, list[dict]]:
    """The run (model, options, and ``kind``: certify or stability) and the records of a JSON
    document, or the records of JSON lines; files of another kind than ``kinds`` are refused."""
    if not path.is_file():
        raise LrcertError(f"results file {str(path)!r} does not exist", fix="give lrcert certify's --format json or jsonl output")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        document = json.loads(text)
        lines = None
    except ValueError:
        document = None
        try:
            lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError:
            lines = None
    if isinstance(document, dict) and isinstance(document.get("results"), list):
        run = {"model": document.get("model"), "options": document.get("options"), **(document.get("run") or {})}
        records = document["results"]
    elif isinstance(document, dict):  # JSON lines with a single result
        run, records = {}, [document]
    elif lines is not None:
        run, records = {}, lines
    else:
        raise LrcertError(f"{path} is neither JSON nor JSON lines", fix="give lrcert certify's --format json or jsonl output")
    kind = next((k for k, keys in KINDS.items() if records and all(isinstance(r, dict) and keys <= r.keys() for r in records)), None)
    if kind not in kinds:
        held = f"lrcert {kind} results" if kind else "no lrcert certify results"
        raise LrcertError(f"{path} holds {held}", fix=f"give lrcert {' or '.join(kinds)}'s --format json or jsonl output")
    return run | {"kind": kind}, records
