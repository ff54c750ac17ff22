"""What every ``lrcert`` command shares: the Typer app, the exit codes, one-line errors, clean
interruption, and the option parsers used by several commands."""

from __future__ import annotations

import errno
import functools
import os
import signal
import sys
import threading
import warnings
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

from .. import __version__
from ..errors import LrcertError, first_line

EXIT_OK, EXIT_CHECK_FAILED, EXIT_INPUT, EXIT_INTERNAL = 0, 1, 2, 3

class _Worded:
    """Help pages that name each value (FILE, N, table|json, …) instead of showing a Python type
    (``<path>``, ``<bool>``, ``<list[str]>``); flags, ``--help`` included, show none."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for param in self.params:
            if param.metavar is None:
                param.metavar = _metavar(param)
            if isinstance(param, typer.core.TyperArgument):  # its name column already says what it is
                param.display_type_rich = lambda ctx: None

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class Command(_Worded, typer.core.TyperCommand):
    """An lrcert command: worded help, and a usage line that reads ``lrcert certify [OPTIONS]
    MODEL DATA`` (Typer writes required arguments in braces)."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, typer.core.TyperArgument):
                name = param.metavar if param.required else f"[{param.metavar}]"
                pieces.append(name + ("..." if param.nargs != 1 else ""))
        return pieces


class Group(_Worded, typer.core.TyperGroup):
    """The ``lrcert`` group itself (``--version``, ``--help``)."""


def _metavar(param) -> str:
    """What a value of ``param`` is, in words: FILE, N, X (a number), the choices; nothing for a flag."""
    if getattr(param, "is_flag", False):
        return ""
    described = param.type_descriptor
    if described.is_choice:
        return "|".join(str(getattr(c, "value", c)) for c in described.choices)
    kind = described.annotation
    if kind is int:
        return "N"
    if kind is float:
        return "X"
    if described.is_path:
        return "FILE"
    return param.name.upper().replace("_", "-")


class _App(typer.Typer):
    """The lrcert app: every command an lrcert :class:`Command`."""

    def command(self, *args, cls=None, **kwargs):
        return super().command(*args, cls=cls or Command, **kwargs)


app = _App(
    cls=Group,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Exact linear-region radii for piecewise-linear (ReLU) networks: how far each input can move "
    "in l1, l2 or linf before the network stops being linear around it.",
)


class Format(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"


class TableOrJson(str, Enum):
    """What ``inspect``, ``path`` and ``train`` print: a table for people, or JSON."""

    table = "table"
    json = "json"


class SummaryFormat(str, Enum):
    """What ``check`` and ``compare`` print: for people, machines, or a pull request's summary."""

    table = "table"
    json = "json"
    markdown = "markdown"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class DType(str, Enum):
    auto = "auto"
    float32 = "float32"
    float64 = "float64"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lrcert {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = None,
) -> None:
    """Exact linear-region radii for piecewise-linear (ReLU) networks."""


def say(message: str) -> None:
    typer.echo(message, err=True)


#: Set by Ctrl-C or SIGTERM; the batch loop checks it, so an interruption that some library
#: swallowed still stops the run at the next batch.
_interrupted = threading.Event()


@contextmanager
def _interruptible() -> Iterator[None]:
    """Ctrl-C and SIGTERM (a CI timeout, kill) stop a command the same clean way: KeyboardInterrupt
    at once, and a flag that the batch loop checks (:func:`stop_if_interrupted`). The previous
    handlers come back afterwards (the CLI also runs inside other programs, e.g. tests)."""

    def interrupt(signum, frame):
        _interrupted.set()
        raise KeyboardInterrupt

    _interrupted.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_if_interrupted() -> None:
    if _interrupted.is_set():
        raise KeyboardInterrupt


def reports_errors(command):
    """Wrap a command body so every failure becomes one line on stderr and a documented exit code
    (advice about ``--output`` only for commands that have it)."""
    import inspect

    writes = "output" in inspect.signature(command).parameters
    elsewhere = "write elsewhere (--output FILE)" if writes else "write elsewhere"

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            with _interruptible(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # libraries' warnings: lrcert says what matters in its own notes
                code = command(*args, **kwargs)
        except LrcertError as error:
            say(f"lrcert: {'internal error: ' if error.internal else 'error: '}{error}")
            raise typer.Exit(EXIT_INTERNAL if error.internal else EXIT_INPUT) from None
        except KeyboardInterrupt:
            say("lrcert: interrupted" + ("; no partial --output file was left behind" if writes else ""))
            raise typer.Exit(130) from None
        except typer.Exit:
            raise
        except BrokenPipeError:  # the reader went away (| head): stop quietly, as Unix tools do
            _quiet_stdout()
            raise typer.Exit(141) from None
        except OSError as exc:  # a full disk, a failing device: the output could not be written (or a file read)
            where = f" ({exc.filename})" if exc.filename else ""
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                say(f"lrcert: error: cannot write the output{where}: {exc.strerror}. Fix: free space, or {elsewhere}")
            elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):  # allowed when checked, refused when written
                say(f"lrcert: error: permission denied{where}: {exc.strerror}. Fix: {elsewhere}, or ask for access")
            else:
                say(f"lrcert: error: input/output failed{where}: {exc.strerror or exc}. Fix: check the disk and the files named")
            _quiet_stdout()
            raise typer.Exit(EXIT_INPUT) from None
        except Exception as exc:  # a bug in lrcert: one line, exit 3
            if os.environ.get("LRCERT_DEBUG"):
                raise
            say(
                f"lrcert: internal error: {type(exc).__name__}: {first_line(exc)}. Fix: rerun with LRCERT_DEBUG=1 "
                "for the traceback and report it."
            )
            raise typer.Exit(EXIT_INTERNAL) from None
        raise typer.Exit(code or EXIT_OK)

    return wrapper


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that Python's own flush at exit does not fail a second time."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # (no file descriptor: a test's captured stdout)
        pass


def integers(value: str) -> tuple[int, ...] | None:
    """``"3, 4,5"`` → ``(3, 4, 5)``; None when a part is not an integer."""
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        return None


def parse_shape(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    shape = integers(value.replace("x", ","))
    if shape is None:
        raise LrcertError(f"--input-shape {value!r} is not a list of sizes", fix="write e.g. --input-shape 1,28,28")
    if not shape or any(d <= 0 for d in shape):
        raise LrcertError(f"--input-shape {value!r} has no or non-positive sizes", fix="write e.g. --input-shape 1,28,28")
    return shape


def check_output_path(path: Path | None, option: str = "--output") -> None:
    """Refuse, before any work, an ``option`` file that cannot be written."""
    if path is None:
        return
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise LrcertError(f"cannot write {option} {str(path)!r}: folder {str(folder)!r} does not exist", fix="create it first")
    if path.is_dir():
        raise LrcertError(f"{option} {str(path)!r} is a folder", fix="give a file name")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise LrcertError(f"cannot write {option} {str(path)!r}: permission denied", fix="choose a writable place")


def threads_option(panel: str | None = None):
    """``--threads``, on every command that computes (in help panel ``panel``)."""
    return Annotated[Optional[int], typer.Option(
        "--threads", metavar="N", min=1, rich_help_panel=panel,
        help="CPU threads to compute with. Default: auto, the CPUs this process may use (affinity, cgroup quota, "
             "OMP_NUM_THREADS) less those other processes keep busy, looked at again before each batch.")]


ThreadsOption = threads_option()

def no_cache_option(panel: str | None = None):
    """``--no-cache``, on the commands that read a model (in help panel ``panel``)."""
    return Annotated[bool, typer.Option(
        "--no-cache", rich_help_panel=panel,
        help="Neither read nor write the cache of converted ONNX networks (keyed by the file's bytes and lrcert's "
             "code; in $LRCERT_CACHE_DIR or ~/.cache/lrcert). Default: use it.")]


NoCacheOption = no_cache_option()


def main() -> None:
    from ..runtime.threads import first_look

    first_look()  # (the first look at the machine's load: the start-up is the first window)
    app(prog_name="lrcert")
