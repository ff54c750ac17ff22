"""Norms, limits and guarantees as users write them, on the command line (``--p 2``,
``--min-radius l2=0.01``, ``--max-drop 10%``) and in a config file (a number, or a table per norm):
parsed once here for ``certify``, ``compare`` and ``check``, with one-line errors that name the
option (or the config key) and the fix.

>>> radii(["0.01", "l2=0.5"], ("l1", "l2"))
{'l1': 0.01, 'l2': 0.5}
>>> drops(["10%"], ("l2",))
{'l2': 0.1}
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from ..errors import LrcertError

NORMS = ("l1", "l2", "linf")
NORM_NAMES = {"1": "l1", "l1": "l1", "2": "l2", "l2": "l2", "inf": "linf", "linf": "linf", "∞": "linf"}


def norms(values: Sequence[str] | None, option: str = "--p") -> tuple[str, ...]:
    """``1``, ``2``, ``inf`` (or ``l1`` …), repeated or comma-separated; all three when none."""
    if not values:
        return NORMS
    chosen = []
    for value in values:
        for part in str(value).split(","):
            key = part.strip().lower()
            if key not in NORM_NAMES:
                raise LrcertError(f"unknown norm {option} {part!r}", fix=f"use {option} 1, {option} 2 or {option} inf (repeatable)")
            chosen.append(NORM_NAMES[key])
    return tuple(p for p in NORMS if p in chosen)


def per_norm(values: Sequence[str] | None, selected: Sequence[str], option: str, number: Callable[[str], float],
             form: str, selector: str = "--p") -> dict[str, float]:
    """``V`` for every selected norm, ``l2=V`` (or ``2=V``, ``inf=V``) for one: {norm: number(V)}.
    ``form`` shows the forms in errors (``R, l2=R``), ``selector`` what selects the norms."""
    out: dict[str, float] = {}
    for value in values or []:
        name, _, text = str(value).rpartition("=")
        targets = tuple(selected) if not name else (NORM_NAMES.get(name.strip().lower()),)
        if None in targets:
            raise LrcertError(f"{option} {value!r} names an unknown norm", fix=f"write {form}")
        amount = number(text.strip())
        for p in targets:
            if p not in selected:
                raise LrcertError(f"{option} {value!r} checks {p}, which {selector} did not select", fix=f"add {p} to {selector}")
            out[p] = amount
    return out


def radii(values: Sequence[str] | None, selected: Sequence[str], option: str = "--min-radius",
          selector: str = "--p") -> dict[str, float]:
    """Radius floors (``--min-radius``, ``--min-certified``): finite numbers ≥ 0."""

    def radius(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise LrcertError(f"{option} {text!r} is not a number", fix="write R, l1=R, l2=R or linf=R") from None
        if not value >= 0 or math.isinf(value):
            raise LrcertError(f"{option} {text!r} must be a finite number ≥ 0", fix="give a radius like 0.01")
        return value

    return per_norm(values, selected, option, radius, "R, l1=R, l2=R or linf=R", selector)


def drops(values: Sequence[str] | None, selected: Sequence[str], option: str = "--max-drop",
          selector: str = "the runs") -> dict[str, float]:
    """Drop limits (``--max-drop``): a percentage ``10%`` (or a fraction ``0.1``) below 100 %."""

    def drop(text: str) -> float:
        try:
            fraction = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            fraction = math.nan
        if not 0 <= fraction < 1:
            raise LrcertError(f"{option} {text!r} is not a drop between 0% and 100%", fix="write a percentage such as 10%")
        return fraction

    return per_norm(values, selected, option, drop, "10%, l1=10%, l2=10% or linf=10%", selector)


def guarantee(value: str, option: str = "--guarantee") -> str | float:
    """``deterministic``, or a probability in (0, 1): the bound on the run's chance of an answer that is not exact."""
    if str(value).strip().lower() == "deterministic":
        return "deterministic"
    try:
        bound = float(value)
    except ValueError:
        bound = math.nan
    if not 0 < bound < 1:
        raise LrcertError(f"{option} {value!r} is neither 'deterministic' nor a probability between 0 and 1",
                          fix=f"write {option} deterministic, or a bound such as {option} 1e-12")
    return bound
