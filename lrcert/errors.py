"""The one error type lrcert raises: what failed, the bad value, and how to fix it.

>>> str(LrcertError("data.npy holds NaN in row 3", fix="drop or repair that row"))
'data.npy holds NaN in row 3. Fix: drop or repair that row.'
"""

from __future__ import annotations

#: The fix for a model that is not (supported) piecewise linear.
SUPPORTED_NETWORKS = (
    "lrcert certifies networks of affine layers (dense, conv, pooling, batch-norm, residual adds, reshapes, "
    "splits, resizes, gathers) and the piecewise-linear activations ReLU, LeakyReLU, PReLU, Clip/ReLU6/Hardtanh, "
    "HardSigmoid, Abs, Max/Min and max-pool; replace or remove the listed operations"
)


class LrcertError(Exception):
    """A problem the user can act on; the CLI prints it as one line and exits non-zero.

    ``internal=True`` marks a broken promise of lrcert itself (exit code 3), for instance a
    loaded layer list that does not reproduce the model it came from.
    """

    def __init__(
        self, problem: str, *, fix: str | None = None, internal: bool = False, details: list[str] | None = None
    ):
        self.problem = problem.rstrip(".")
        self.fix = fix.rstrip(".") if fix else None
        self.internal = internal
        self.details = details or []  # the individual problems (e.g. one per offending node)
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.problem}."
        if self.fix:
            text += f" Fix: {self.fix}."
        return " ".join(text.split())


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (library errors can run to pages)."""
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__
