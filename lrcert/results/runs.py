"""Result files of ``lrcert certify`` read back (``--format json`` documents and ``jsonl`` lines),
for ``lrcert report``, ``compare`` and ``check``: plain JSON, no torch."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import LrcertError


def read(path: Path) -> tuple[dict, list[dict]]:
    """The run (model, options) and the records of a JSON document, or the records of JSON lines."""
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
    if not records or not all(isinstance(r, dict) and {"index", "radius", "binding"} <= r.keys() for r in records):
        raise LrcertError(f"{path} holds no lrcert certify results", fix="give lrcert certify's --format json or jsonl output")
    return run, records
