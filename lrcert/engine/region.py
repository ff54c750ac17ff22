"""One batch's linear regions: the value pass that records every face value z, the activation
pattern and the frozen slopes, the scale of each face's rounding, and what the value pass alone
says about each input (prediction, pattern, finiteness, a face's description)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..network import ir
from .results import pattern_bytes
from .roundoff import PRECISION_MARGIN



class Region:
    """The activation pattern of a batch of inputs ``x``, as one value pass records it."""

    def __init__(self, engine, x: Tensor):
        self.engine = engine
        self.network = engine.network
        self.batch = len(x)
        self.x = x
        self.faces: dict[int, Tensor] = {}  # layer -> (B, faces) values z
        self.gain: dict[int, Tensor] = {}  # elementwise layer -> (B, *shape) frozen slopes
        self.argmax: dict[int, Tensor] = {}  # max-pool layer -> (B, ..., C, 1, L) window arg-max
        self.first_wins: dict[int, Tensor] = {}  # max/min layer -> (B, *shape) where its first input is the output
        self.pieces: dict[int, Tensor] = {}  # layer -> (B, n) the piece each unit is on (the pattern)
        self.output = self.network.run(x, nonlinear=self._record)
        self.scale = self._face_scales(x)
        self.active = self._active_columns()
        self._forget_conversions()

    def _forget_conversions(self) -> None:
        self.gain_in: dict[tuple[int, torch.dtype], Tensor] = {}  # frozen slopes in a tangent dtype
        self.winner_at: dict[int, Tensor] = {}  # max-pool layer -> (B, ..., C, L) arg-max's place in its input plane

    def subset(self, index: Tensor) -> "Region":
        """The same regions for inputs ``index`` of the batch only (no second value pass: every
        recorded tensor indexed, so the faces are bit for bit those of the whole batch)."""
        part = object.__new__(Region)
        part.engine, part.network, part.batch = self.engine, self.network, len(index)
        for name in ("faces", "gain", "argmax", "first_wins", "pieces", "scale"):
            setattr(part, name, {i: t.index_select(0, index) for i, t in getattr(self, name).items()})
        part.output = self.output.index_select(0, index)
        part.x = self.x.index_select(0, index)
        rows = index.tolist() if self.active else []
        part.active = {i: [columns[k] for k in rows] for i, columns in self.active.items()}
        part._forget_conversions()
        return part

    def _record(self, i: int, layer: ir.Nonlinearity, *z: Tensor) -> Tensor:
        """Evaluate nonlinear layer ``i`` on ``z``, recording its faces, pieces and frozen slopes.
        The pieces are ``layer.pieces(*z)``, taken from what is recorded anyway: each window's
        arg-max for a max-pool, the faces' signs otherwise."""
        if isinstance(layer, ir.MaxPool2d):
            windows = layer.windows(z[0], float("-inf"))
            best, arg = windows.max(dim=-2, keepdim=True)
            self.argmax[i] = self.pieces[i] = arg
            self.faces[i] = (best - windows).reshape(self.batch, -1)
            return best.reshape(self.batch, *layer.shape)
        if isinstance(layer, ir.Maximum):
            self.first_wins[i] = layer.first_wins(*z)
            self.faces[i] = layer.faces(*z)
            self.pieces[i] = self.faces[i] > 0
            return layer.apply(*z)
        self.gain[i] = layer.gain(z[0])
        self.faces[i] = layer.faces(z[0])
        self.pieces[i] = self.faces[i] > 0
        return layer.apply(z[0])

    def _face_scales(self, x: Tensor) -> dict[int, Tensor]:
        """Per face, the sum of the magnitudes of the terms that make up z (the network with
        |parameters| on |x|, frozen like x): float rounding of z is a small multiple of it."""
        scales: dict[int, Tensor] = {}

        def nonlinear(i: int, layer: ir.Nonlinearity, *magnitude: Tensor) -> Tensor:
            if isinstance(layer, ir.MaxPool2d):
                windows = layer.windows(magnitude[0], 0.0)
                winner = torch.gather(windows, -2, self.argmax[i])
                scales[i] = (winner + windows).reshape(self.batch, -1)
                return winner.reshape(self.batch, *layer.shape)
            if isinstance(layer, ir.Maximum):  # a − b: both magnitudes; the output: the winner's
                scales[i] = layer.faces(magnitude[0], -magnitude[1])
                return layer.select(self.first_wins[i], *magnitude)
            m = magnitude[0]  # z − b: z's terms and b
            scales[i] = torch.cat([(m + abs(b)).reshape(self.batch, -1) for b in layer.kinks()], dim=1)
            return self.gain[i].abs() * m + layer.offset_bound()

        self.engine.magnitudes.run(x.abs(), nonlinear=nonlinear)
        return scales

    def _active_columns(self) -> dict[int, list[Tensor | None]]:
        """For each ReLU whose inactive units can be skipped, each input's active units (None where
        too many are active for skipping to pay): one ``nonzero`` per layer for the whole batch."""
        active = {}
        for i, limit in self.engine.sparse.items():
            on = self.pieces[i]
            counts = on.sum(dim=1).tolist()
            columns = torch.split(on.nonzero()[:, 1], counts)
            active[i] = [units if n <= limit else None for units, n in zip(columns, counts)]
        return active

    def gain_as(self, i: int, dtype: torch.dtype) -> Tensor:
        """Layer ``i``'s frozen slopes in ``dtype`` (converted once per batch)."""
        if (i, dtype) not in self.gain_in:
            self.gain_in[(i, dtype)] = self.gain[i].to(dtype)
        return self.gain_in[(i, dtype)]

    def winner_positions(self, i: int) -> Tensor:
        """Max-pool ``i``'s window arg-maxes as places in its input plane, (B, ..., C, L)."""
        if i not in self.winner_at:
            self.winner_at[i] = self.network.layers[i].winner_positions(self.argmax[i]).squeeze(-2)
        return self.winner_at[i]

    def per_face(self, i: int, per_unit: Tensor) -> Tensor:
        """A per-unit statistic (B, n) repeated for each of a unit's kinks, as ``faces[i]`` lays them out."""
        kinks = self.faces[i].shape[1] // per_unit.shape[1]
        return per_unit if kinks == 1 else per_unit.repeat(1, kinks)

    # ----------------------------------------------------------------------------------- results

    def summary(self) -> dict[str, Tensor]:
        """What the value pass alone gives: prediction, pattern bytes, whether the values stayed
        finite (and ``gradients_finite`` True, for the gradients' own check to narrow)."""
        flat = self.output.reshape(self.batch, -1)
        values_finite = torch.isfinite(flat).all(dim=1)
        for faces in self.faces.values():
            values_finite &= ~torch.isnan(faces).any(dim=1)  # +inf gaps are padding; NaN means overflow
        out = {"values_finite": values_finite, "gradients_finite": torch.ones_like(values_finite)}
        out["pattern"] = pattern_bytes([self.pieces[i] for i in self.engine.nonlinear], self.batch, self.output.device)
        if flat.shape[1] >= 2:
            out["prediction"] = flat.argmax(dim=1)
        return out

    def nearest(self, distances: Callable[[int], Tensor]) -> dict[str, Tensor]:
        """Per input, the smallest of ``distances(i)`` (shape (B, faces)) over every nonlinear layer
        i, and that face: layer (−1: none), unit, and :meth:`describe`'s account of it. Batched,
        on the device."""
        b, device = self.batch, self.output.device
        best = torch.full((b,), float("inf"), dtype=torch.float64, device=device)
        layer = torch.full((b,), -1, dtype=torch.long, device=device)
        unit = torch.zeros(b, dtype=torch.long, device=device)
        for i in self.engine.nonlinear:
            distance, nearest = distances(i).min(dim=1)
            better = distance < best
            best = torch.where(better, distance, best)
            layer = torch.where(better, i, layer)
            unit = torch.where(better, nearest, unit)
        return {"distance": best, "layer": layer, "unit": unit, **self.describe(layer, unit)}

    def describe(self, layer: Tensor, unit: Tensor) -> dict[str, Tensor]:
        """For each input's face (``layer``, ``unit``; layer −1: none): its value z, the arg-max
        element of its max-pool window (−1 for units), and whether z is nonzero but within rounding
        reach of 0 a priori (|z| ≤ PRECISION_MARGIN · u · s, s the magnitude of z's terms), which
        :meth:`.results.Outcome.results` judges again (:mod:`.roundoff`). A unit's face computed as
        exactly 0 is judged too (exactly 0 only where nothing rounded); a max-pool or max tie of
        exactly 0 is not (identical computations, as over a constant background: a boundary)."""
        b, device = self.batch, self.output.device
        z = torch.zeros(b, dtype=torch.float64, device=device)
        winner = torch.full((b,), -1, dtype=torch.long, device=device)
        imprecise = torch.zeros(b, dtype=torch.bool, device=device)
        reach = PRECISION_MARGIN * torch.finfo(self.engine.value_dtype).eps
        for i in self.engine.nonlinear:
            here = layer == i
            units = torch.where(here, unit, 0)[:, None]
            value = self.faces[i].gather(1, units)[:, 0].double()
            scale = self.scale[i].gather(1, units)[:, 0].double()
            z = torch.where(here, value, z)
            near = here & (value.abs() <= reach * scale)
            if isinstance(self.network.layers[i], (ir.MaxPool2d, ir.Maximum)):
                near &= value != 0  # (a tie)
            imprecise |= near
            if i in self.argmax:
                winner = torch.where(here, self._window_winner(i, units[:, 0]), winner)
        return {"z": z, "winner": winner, "imprecise": imprecise}

    def _window_winner(self, i: int, unit: Tensor) -> Tensor:
        """For max-pool faces ``unit`` (flat over (plane, element, window)), their window's arg-max element."""
        layer = self.network.layers[i]
        windows = layer.shape[-1] * layer.shape[-2]
        plane, rest = unit // (layer.window_size * windows), unit % (layer.window_size * windows)
        return self.argmax[i].reshape(self.batch, -1).gather(1, (plane * windows + rest % windows)[:, None])[:, 0]
