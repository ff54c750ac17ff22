"""Rows of different lengths: sequences of T_i frames for a recurrent network.

A row of T_i frames of F features is an input of T_i·F numbers to the network unrolled to T_i
steps: a different network over a different input space for each length. The padding that makes
rows of an array equally long is not part of any input: no radius, direction or adversarial point
moves it. :class:`ByLength` keeps one :class:`~.core.Engine` per length (its network built when
the length first comes), splits each batch by length, and hands the results back in the batch's
order, each carrying its length. A model that fixes its sequence length refuses other lengths in
one line before any work is done.

>>> import torch
>>> from lrcert.models.load import from_module
>>> _ = torch.manual_seed(0)
>>> rnn = torch.nn.Sequential(torch.nn.RNN(2, 3, nonlinearity="relu", batch_first=True))
>>> class Last(torch.nn.Module):
...     def forward(self, x):
...         return rnn(x)[0][:, -1]
>>> engine = ByLength(lambda steps: from_module(Last(), (steps, 2)), lengths=[4, 2], norms=("l2",))
>>> [(r.length, sorted(r.radius)) for r in engine.certify([torch.randn(4, 2), torch.randn(2, 2)])]
[(4, ['l2']), (2, ['l2'])]
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import LrcertError
from ..network import ir
from .core import Engine
from .results import InputResult

#: What to do with a model that runs one sequence length only.
LENGTH_FIX = ("export it for every length: nn.RNN with a dynamic sequence axis (torch.onnx.export(..., dynamo=False, "
              "dynamic_axes={'input': {0: 'batch', 1: 'steps'}}); a loop over steps exported by tracing, and the default "
              "exporter, keep the length they were exported with), or give rows of that one length")


class ByLength:
    """Certifies rows of different lengths, each with ``networks(length)`` (the network unrolled to
    that many steps), through one :class:`Engine` per length made with ``options``. ``lengths``:
    the run's row lengths, whose shortest and longest are checked up front (a model exported for
    one length refuses the others here)."""

    def __init__(self, networks: Callable[[int], ir.Network], *, lengths: Sequence[int], **options):
        self.networks, self.options = networks, options
        self.engines: dict[int, Engine] = {}
        #: What one length's engine learns holds for all (they are one network unrolled): once
        #: screening did not pay (Engine.screening), or auto's float32 pass did not (Engine.float64_pays).
        self.lessons = {"screening": True, "float64_pays": False}
        self.lengths = sorted({int(n) for n in lengths})
        if not self.lengths or self.lengths[0] < 1:
            raise LrcertError("sequences need a length of at least 1 step", fix="give every row 1 or more frames")
        self.longest = self.at(self.lengths[-1])
        self.at(self.lengths[0])
        self.norms, self.predictions = self.longest.norms, self.longest.predictions
        self.device, self.value_dtype, self.sketch = self.longest.device, self.longest.value_dtype, self.longest.sketch
        self.network = self.longest.network  # (the longest rows' network: what is shown of the model)

    def at(self, length: int) -> Engine:
        """The engine of rows of ``length`` steps."""
        if length not in self.engines:
            network = self._network(length)
            if network.sample_shape[:1] != (length,):
                steps = network.sample_shape[0] if network.sample_shape else 1
                raise LrcertError(f"the model reads sequences of exactly {steps} steps (rows of shape "
                                  f"{network.sample_shape}), and the data has rows of {length}", fix=LENGTH_FIX)
            options = self.options
            if self.lessons["float64_pays"] and options.get("dtype", "auto") == "auto":  # (what auto would do: at once)
                options = {**options, "dtype": torch.float64}
            engine = self.engines[length] = Engine(network, **options)
            self._teach(engine)
        return self.engines[length]

    def _learn(self, engine: Engine) -> None:
        """What ``engine`` learnt on its batch, passed on to every length's engine."""
        learnt = {"screening": self.lessons["screening"] and engine.screening,
                  "float64_pays": self.lessons["float64_pays"] or engine.float64_pays}
        if learnt != self.lessons:
            self.lessons = learnt
            for other in self.engines.values():
                self._teach(other)

    def _teach(self, engine: Engine) -> None:
        engine.screening = engine.screening and self.lessons["screening"]
        engine.float64_pays = engine.float64_pays or (engine.auto and self.lessons["float64_pays"])

    def _network(self, length: int) -> ir.Network:
        """``networks(length)``; where that fails but another length of the run works (a loop over
        steps traced for one length), a one-line error that says so."""
        try:
            return self.networks(length)
        except LrcertError as error:
            if error.internal:
                raise
            works = next((n for n in self.lengths if n != length and self._builds(n)), None)
            if works is None:
                raise
            raise LrcertError(f"the model runs sequences of {works} steps but not of {length} ({error.problem})",
                              fix=LENGTH_FIX) from None

    def _builds(self, length: int) -> bool:
        try:
            self.networks(length)
            return True
        except LrcertError:
            return False

    def plan(self, n_inputs: int):
        """The longest rows' plan: its batches fit memory for rows of every length."""
        return self.longest.plan(n_inputs)

    def stream(self, batches: Iterable[tuple[Tensor, Tensor]], *, n_inputs: int, directions: Tensor | None = None,
               start: int = 0, run_size: int | None = None) -> Iterator[list[InputResult]]:
        """Each batch's results, for batches of (rows padded to a common length, their lengths);
        ``directions`` (one per input of the stream, or one for all) are padded likewise."""
        index = start
        for x, lengths in batches:
            results: list[InputResult | None] = [None] * len(x)
            for length, where in groups(lengths):
                d = None
                if directions is not None:
                    chosen = torch.as_tensor(where + index - start, device=directions.device)
                    d = (directions if len(directions) == 1 else directions[chosen])[:, :length]
                engine = self.at(length)
                rows = x[torch.as_tensor(where, device=x.device), :length]
                part = engine.stream([rows], n_inputs=len(where), directions=d, run_size=run_size or n_inputs)
                for k, result in zip(where.tolist(), (r for batch in part for r in batch)):
                    result.index, result.length = index + k, length
                    results[k] = result
                self._learn(engine)
            index += len(x)
            yield results

    def certify(self, rows: Sequence, *, directions: Sequence | None = None) -> list[InputResult]:
        """Certify each row (an array or tensor of shape (T_i, *features)) at its own length; one
        result per row, in order. ``directions``: one per row (each of its row's shape) or None."""
        x, lengths = pad(rows)
        d = None if directions is None else pad(directions, "directions")[0]
        if d is not None and len(d) != len(x):
            raise LrcertError(f"{len(d)} directions for {len(x)} rows", fix="give one direction per row")
        size = self.plan(len(x)).batch_size
        chunks = ((x[i : i + size], lengths[i : i + size]) for i in range(0, len(x), size))
        return [r for batch in self.stream(chunks, n_inputs=len(x), directions=d) for r in batch]


def groups(lengths: Tensor | np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(length, positions of the rows of that length) for each length in ``lengths``, shortest first."""
    lengths = np.asarray(lengths)
    for length in np.unique(lengths):
        yield int(length), np.flatnonzero(lengths == length)


def pad(rows: Sequence, name: str = "rows") -> tuple[Tensor, np.ndarray]:
    """Rows of shapes (T_i, *features) as one float tensor (N, max T_i, *features), zero-padded, on
    the rows' device, and their lengths; one-line errors for rows that are not float arrays of a
    common feature shape, or not finite (one check for all rows: no wait per row on a GPU)."""
    tensors = [r if isinstance(r, Tensor) else torch.from_numpy(np.asarray(r)) for r in rows]
    if not tensors:
        raise LrcertError(f"no {name}", fix="give at least one sequence")
    features = {tuple(t.shape[1:]) for t in tensors}
    if len(features) != 1 or any(t.dim() < 1 or len(t) == 0 for t in tensors):
        shown = sorted(features)[:3]
        raise LrcertError(f"the {name} are not sequences of one frame shape (frames of shapes {shown})",
                          fix="give each row as an array (steps, *features), every row with the same features")
    bad = next((i for i, t in enumerate(tensors) if not t.is_floating_point()), None)
    if bad is not None:
        raise LrcertError(f"{name} {bad} holds {str(tensors[bad].dtype).split('.')[-1]}, not floating-point numbers",
                          fix="convert it, e.g. x.astype('float32')")
    lengths = np.array([len(t) for t in tensors])
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    device = tensors[0].device
    x = torch.zeros(len(tensors), int(lengths.max()), *features.pop(), dtype=dtype, device=device)
    for i, t in enumerate(tensors):
        x[i, : len(t)] = t
    finite = torch.isfinite(x).reshape(len(x), -1).all(dim=1)
    if not bool(finite.all()):  # (the padding is 0: finite)
        raise LrcertError(f"{name} {int(torch.argmin(finite.to(torch.uint8)))} holds NaN or Inf",
                          fix="remove or repair the rows that are not finite")
    return x, lengths
