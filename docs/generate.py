"""MkDocs hook: the parts of the documentation generated from the code, so that they cannot drift.

A page writes a marker, on a line of its own, where a generated part goes:

* ``<!-- lrcert:command NAME -->``: the command's usage, description, options (grouped as
  ``-h`` groups them) and exit codes, read from the Typer app itself;
* ``<!-- lrcert:commands -->``: one line per command, linking its page;
* ``<!-- lrcert:ops -->``: every ONNX op lrcert reads or refuses (``lrcert ops``'s rows, with
  the versions the loader reads).

Docstrings' doctests (``>>>`` lines and their output) are shown as code, on the API pages too.

``tests/test_docs.py`` builds the site with ``mkdocs build --strict`` and checks these parts.
"""

from __future__ import annotations

import re

from markdown.extensions import Extension
from markdown.preprocessors import Preprocessor
from mkdocs.plugins import event_priority

MARKER = re.compile(r"^<!-- lrcert:(command|commands|ops)(?: ([\w-]+))? -->$", re.M)  # (a line of its own)
ROLE = re.compile(r":(?:py:)?(?:class|func|mod|meth|attr|data|obj|exc):(?=`)")


@event_priority(100)  # (before mkdocstrings reads the Markdown extensions)
def on_config(config):
    """MkDocs' hook: doctests fenced as code wherever Markdown is rendered."""
    config.markdown_extensions.append(_DoctestsAsCode())
    return config


def on_page_markdown(markdown: str, page=None, config=None, files=None) -> str:
    """MkDocs' hook: every marker replaced by its generated Markdown."""
    return MARKER.sub(lambda m: GENERATORS[m.group(1)](m.group(2)), markdown)


def _group():
    import typer

    from lrcert.cli import app

    return typer.main.get_command(app)


def command(name: str) -> str:
    """A command's reference: usage, description, options by group, epilog (exit codes)."""
    import click

    group = _group()
    if name not in group.commands:
        raise KeyError(f"no lrcert command {name!r} (a page's marker names it)")
    cmd = group.commands[name]
    ctx = click.Context(cmd, info_name=name, parent=click.Context(group, info_name="lrcert"))
    parts = ["```text", cmd.get_usage(ctx).strip(), "```", "", _plain(cmd.help or "")]
    panels: dict[str, list[str]] = {}
    for param in cmd.params:
        record = param.get_help_record(ctx)
        if record is None or getattr(param, "hidden", False):
            continue
        panel = getattr(param, "rich_help_panel", None) or ("Arguments" if param.param_type_name == "argument" else "Options")
        panels.setdefault(panel, []).append(f"| `{_cell(record[0])}` | {_cell(record[1])} |")
    for panel, rows in panels.items():
        parts += ["", f"**{panel}**", "", "| name | meaning |", "| --- | --- |", *rows]
    if cmd.epilog:
        parts += ["", _plain(cmd.epilog)]
    return "\n".join(parts)


def commands(_: str | None = None) -> str:
    """Every command, one line each, linking its page (from the docs' root)."""
    rows = [f"| [`lrcert {name}`](commands/{name}.md) | {_cell(cmd.get_short_help_str(200))} |"
            for name, cmd in _group().commands.items() if not cmd.hidden]
    return "\n".join(["| command | what it does |", "| --- | --- |", *rows])


def ops(_: str | None = None) -> str:
    """Every ONNX op lrcert reads or refuses: how it reads it, its faces and their kind, the
    versions (``since_version``) the loader reads."""
    from lrcert.cli.ops import table
    from lrcert.models import onnx_ops
    from lrcert.models.load import READ_OPS

    versions = onnx_ops.versions(READ_OPS)
    rows = ["| ONNX op | read as | faces, or the condition | faces' `kind` | versions read |", "| --- | --- | --- | --- | --- |"]
    for row in table():
        read = versions.get(row["op"])
        shown = ", ".join(map(str, read)) if read else ("older opsets' versions, after ONNX's version converter"
                                                        if row["op"] in versions else "—")
        how = row.get("faces") or row.get("condition") or "—"
        rows.append(f"| {row['op']} | {row['read_as']} | {_cell(how)} | {_cell(row.get('kind', '—'))} | {shown} |")
    return "\n".join(rows)


GENERATORS = {"command": command, "commands": commands, "ops": ops}


class _DoctestsAsCode(Extension):
    def extendMarkdown(self, md):  # noqa: N802 (Markdown's name)
        md.preprocessors.register(_FenceDoctests(md), "lrcert_doctests", 40)  # (before fenced code, 25)


class _FenceDoctests(Preprocessor):
    """A run of lines from a ``>>>`` line to the next blank line, outside fenced code, fenced as
    ``pycon`` (else Markdown reads ``>>>`` as nested quotes); docstrings' reST roles
    (``:class:`Engine```) shown as the code they name."""

    def run(self, lines: list[str]) -> list[str]:
        out, fenced, doctest = [], False, None
        for line in lines:
            if not fenced:
                line = ROLE.sub("", line)
            stripped = line.lstrip()
            if doctest is None and stripped.startswith("```"):
                fenced = not fenced
            if doctest is not None and not stripped:
                out.append(doctest + "```")
                doctest = None
            elif doctest is None and not fenced and stripped.startswith(">>>"):
                doctest = line[: len(line) - len(stripped)]
                out.append(doctest + "```pycon")
            out.append(line)
        return out + ([doctest + "```"] if doctest is not None else [])


def _plain(text: str) -> str:
    """Help text as Markdown: Typer's line breaks (``\\b`` blocks) kept, the rest as written."""
    return text.replace("\b\n", "").strip()


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")
