"""The ``lrcert`` command: thin Typer commands over load → engine → report, one module each.

Exit codes: 0 all good; 1 a ``--min-radius`` check failed; 2 usage or input error; 3 internal
error. Data goes to stdout (or ``--output``, written atomically); notes, progress and errors go
to stderr. Set ``LRCERT_DEBUG=1`` to see tracebacks of internal errors.
"""

from . import certify, check, compare, report, inspect, ops, train, plot, path  # noqa: F401, I001  (each registers its command, in this order)
from .common import app, main

__all__ = ["app", "main"]
