"""The ``lrcert`` command: thin Typer commands over load → engine → report, one module each.

Exit codes: 0 all good; 1 a check failed (``--min-radius``, ``--min-certified``, ``--max-distortion``, …); 2 usage or input
error; 3 internal error; 130 interrupted. Data goes to stdout (or ``--output``, written atomically); notes, progress and errors go
to stderr. Set ``LRCERT_DEBUG=1`` to see tracebacks of internal errors.

May import: every stage below it (:mod:`lrcert.ci`, :mod:`lrcert.training`, :mod:`lrcert.run`,
:mod:`lrcert.results`, …); nothing imports it but ``lrcert.__main__``.
"""

from . import certify, stability, check, compare, report, inspect, ops, train, plot, path  # noqa: F401, I001  (each registers its command, in this order)
from .common import app, main

__all__ = ["app", "main"]
