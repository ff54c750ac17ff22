"""ReLU recurrent networks, unrolled: h_t = f(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh), t = 0 … T−1.

Over a sequence of T frames of F features a recurrence is a piecewise-linear network of the T·F
inputs once unrolled: a chain of dense layers sharing their weights, with one nonlinearity per
step whose units are faces (z = the pre-activation). This module runs recurrences as explicit
loops of torch operations, which the loader's trace reads as layers like any other code and
:mod:`lrcert.training.roll` records as faces:

- :func:`run_rnn` computes what ``nn.RNN`` computes (torch's ``_VF.rnn_relu``): stacked layers,
  both directions, ``batch_first``, a given ``h0``;
- :class:`OnnxRNN` computes the ONNX ``RNN`` node (forward, reverse, bidirectional, layouts 0 and 1,
  ``initial_h``, ``clip`` and the piecewise-linear activations Relu, LeakyRelu, HardSigmoid, Affine);
- :class:`Unrolled` routes ``nn.RNN`` and ``nn.RNNCell`` through them while a model is traced, and
  refuses LSTM, GRU and tanh RNNs in one line.

Each step's nonlinearity runs under the name ``{stem} t={t}`` (e.g. ``rnn.l1.reverse t=7``), so
the face that binds reads as layer, direction, time step and unit.

>>> import torch
>>> _ = torch.manual_seed(0)
>>> rnn = torch.nn.RNN(3, 4, num_layers=2, nonlinearity="relu", batch_first=True)
>>> x = torch.randn(2, 5, 3)
>>> out, h = run_rnn(x, torch.zeros(2, 2, 4), rnn._flat_weights, True, 2, 0.0, False, False, True)
>>> expected = rnn(x)
>>> bool(torch.allclose(out, expected[0], atol=1e-6)), bool(torch.allclose(h, expected[1], atol=1e-6))
(True, True)
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..errors import LrcertError
from ..network.ir import Recurrence, Step


@dataclass(frozen=True)
class Activation:
    """f(z) = g(α·z + β): an affine part, computed with the pre-activation, then ``g``, piecewise
    linear (its kinks are the step's faces), or None (f affine: the step has no faces)."""

    g: Callable[[Tensor], Tensor] | None = torch.relu
    alpha: float = 1.0
    beta: float = 0.0

    def affine(self, z: Tensor) -> Tensor:
        return z if (self.alpha, self.beta) == (1.0, 0.0) else z * self.alpha + self.beta


RELU = Activation()

#: What to use instead of a recurrence lrcert cannot certify.
RECURRENT_FIX = ("use a ReLU RNN, which lrcert certifies exactly: nn.RNN(..., nonlinearity='relu'), or an ONNX RNN "
                 "with Relu (or LeakyRelu, HardSigmoid) activations")

#: torch's recurrent kernels that are not piecewise linear, and why.
SMOOTH_KERNELS = {
    "rnn_tanh": "an RNN with tanh, which is not piecewise linear",
    "rnn_tanh_cell": "an RNN cell with tanh, which is not piecewise linear",
    "lstm": "an LSTM, whose sigmoid/tanh gates are not piecewise linear",
    "lstm_cell": "an LSTM cell, whose sigmoid/tanh gates are not piecewise linear",
    "gru": "a GRU, whose sigmoid/tanh gates are not piecewise linear",
    "gru_cell": "a GRU cell, whose sigmoid/tanh gates are not piecewise linear",
}


class Namer:
    """Names the steps of the recurrences a trace runs through (a no-op outside a trace).

    ``scope`` is the trace's stack of running names; ``steps`` maps each step's name to its
    :class:`Step`; ``shapes`` records each recurrence as :class:`Recurrence` for ``lrcert inspect``;
    ``replaced`` counts the torch kernels :class:`Unrolled` ran as lrcert's own steps."""

    def __init__(self, scope: list[str] | None = None):
        self.scope = scope
        self.steps: dict[str, Step] = {}
        self.shapes: list[Recurrence] = []
        self.replaced = 0

    def here(self, default: str) -> str:
        """The name of the running module (the recurrence's name), or ``default``."""
        return next((s for s in reversed(self.scope or []) if s), default)

    def named(self, name: str, step: Step | None = None):
        """Run what follows under ``name`` (the layers it makes are named after it)."""
        if step is not None:
            self.steps[name] = step
        return _pushed(self.scope, name) if self.scope is not None else nullcontext()


@contextmanager
def _pushed(scope: list[str], name: str) -> Iterator[None]:
    scope.append(name)
    try:
        yield
    finally:
        scope.pop()


def stem(name: str, layer: int | None, direction: str, bidirectional: bool) -> str:
    """``rnn.l1.reverse``: a step's name without its time (layer omitted for one ONNX node,
    direction for a forward-only recurrence)."""
    parts = [name] + ([f"l{layer}"] if layer is not None else []) + ([direction] if bidirectional or direction == "reverse" else [])
    return ".".join(parts)


def run_direction(seq: Tensor, h: Tensor | None, w_ih: Tensor, w_hh: Tensor, bias_ih: Tensor | None, bias_hh: Tensor | None,
                  *, reverse: bool, activation: Activation, namer: Namer, name: str, where: Step,
                  clip: float | None = None) -> tuple[Tensor, Tensor]:
    """One direction of one layer over ``seq`` (T, B, F): every step's output (T, B, H) and the last
    step's. The input term W_ih x_t + b_ih of every step is one product; ``h`` None starts from 0.
    ``clip`` bounds each pre-activation to [−clip, clip] before the activation (ONNX's attribute)."""
    with namer.named(f"{name} W_ih x"):
        projected = F.linear(seq, w_ih, bias_ih)
    outputs: list[Tensor | None] = [None] * len(seq)
    for t in (range(len(seq) - 1, -1, -1) if reverse else range(len(seq))):
        step = Step(where.recurrence, where.layer, where.direction, t)
        with namer.named(f"{name} t={t} z"):
            if h is not None:
                z = projected[t] + F.linear(h, w_hh, bias_hh)
            else:  # h_{−1} = 0: only the bias of the hidden term
                z = projected[t] if bias_hh is None else projected[t] + bias_hh
        if clip is not None:
            with namer.named(f"{name} t={t} clip", step):
                z = torch.clamp(z, -clip, clip)
        with namer.named(f"{name} t={t} z"):  # (the affine part: named apart from the step's faces)
            z = activation.affine(z)
        if activation.g is not None:
            with namer.named(f"{name} t={t}", step):
                z = activation.g(z)
        outputs[t] = h = z
    return torch.stack(outputs), h


def run_rnn(x: Tensor, hx: Tensor | None, weights: Sequence[Tensor], has_biases: bool, num_layers: int, dropout: float,
            train: bool, bidirectional: bool, batch_first: bool, *, activation: Activation = RELU,
            namer: Namer | None = None) -> tuple[Tensor, Tensor]:
    """``nn.RNN``'s computation (the arguments of torch's ``_VF.rnn_relu``) as explicit steps:
    returns (output, h_n) as ``nn.RNN`` does. ``hx`` (layers·directions, B, H) or None (zeros)."""
    namer = namer or Namer()
    name = namer.here("rnn")
    directions = ("forward", "reverse") if bidirectional else ("forward",)
    per = 4 if has_biases else 2
    seq = x.transpose(0, 1) if batch_first else x  # (T, B, F)
    features, finals = seq.shape[-1], []
    for k in range(num_layers):
        outputs = []
        for d, direction in enumerate(directions):
            w = list(weights[(k * len(directions) + d) * per : (k * len(directions) + d + 1) * per])
            w_ih, w_hh, *biases = w
            b_ih, b_hh = biases if has_biases else (None, None)
            h0 = None if hx is None else hx[k * len(directions) + d]
            out, last = run_direction(seq, h0, w_ih, w_hh, b_ih, b_hh, reverse=d == 1, activation=activation, namer=namer,
                                      name=stem(name, k, direction, bidirectional), where=Step(name, k, direction, 0))
            outputs.append(out)
            finals.append(last)
        with namer.named(f"{name} output"):
            seq = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
            if dropout and train and k < num_layers - 1:
                seq = F.dropout(seq, dropout, True)
    namer.shapes.append(Recurrence(name, num_layers, w_hh.shape[0], directions, x.shape[1 if batch_first else 0], features, "relu"))
    with namer.named(f"{name} output"):
        return (seq.transpose(0, 1) if batch_first else seq), torch.stack(finals)


def run_cell(x: Tensor, h: Tensor | None, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None, b_hh: Tensor | None = None,
             *, activation: Activation = RELU) -> Tensor:
    """``nn.RNNCell(nonlinearity='relu')`` (torch's ``_VF.rnn_relu_cell``): relu(W_ih x + b_ih + W_hh h + b_hh)."""
    z = F.linear(x, w_ih, b_ih)
    return activation.g(z if h is None else z + F.linear(h, w_hh, b_hh))


def kernel(func) -> str:
    """The name of a torch function or aten op without its overload (``rnn_relu``)."""
    return getattr(func, "__name__", "").split(".")[0]


def refusal(func, where: str) -> LrcertError | None:
    """The one-line error for a recurrent kernel that is not piecewise linear (None: it is, or not recurrent)."""
    what = SMOOTH_KERNELS.get(kernel(func))
    return None if what is None else LrcertError(f"{where} is {what}", fix=RECURRENT_FIX)


def call_rnn(args: tuple, kwargs: dict, activation: Activation = RELU, namer: Namer | None = None) -> tuple[Tensor, Tensor]:
    """``_VF.rnn_relu(*args)`` through :func:`run_rnn`; packed sequences are refused."""
    if len(args) < 3 or not isinstance(args[2], (list, tuple)):
        raise LrcertError("the model runs an RNN over a packed sequence (pack_padded_sequence)",
                          fix="give the RNN a plain tensor; lrcert certifies each row at its own length (DATA: an .npz "
                              "with 'x' padded and 'lengths')")
    return run_rnn(*args, **kwargs, activation=activation, namer=namer)


class Unrolled(TorchFunctionMode):
    """While a model runs: ``nn.RNN`` with ReLU and ``nn.RNNCell`` with ReLU computed by
    :func:`run_rnn` / :func:`run_cell` (their steps named through ``namer``), and LSTM, GRU and
    tanh RNNs refused through ``refuse(error)``."""

    def __init__(self, namer: Namer, refuse: Callable[[LrcertError], None]):
        super().__init__()
        self.namer, self.refuse = namer, refuse

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = kernel(func)
        if name in ("rnn_relu", "rnn_relu_cell"):
            self.namer.replaced += 1
            return call_rnn(args, kwargs, namer=self.namer) if name == "rnn_relu" else run_cell(*args, **kwargs)
        error = refusal(func, repr(self.namer.here("the model")))
        if error is not None:
            self.refuse(error)
        return func(*args, **kwargs)


# ---------------------------------------------------------------------------------------------- ONNX RNN

#: ONNX RNN activations that are piecewise linear, and their default (alpha, beta) (ONNX's spec).
ONNX_ACTIVATIONS = {"Relu": (None, None), "LeakyRelu": (0.01, None), "HardSigmoid": (0.2, 0.5), "Affine": (1.0, 0.0)}


#: ONNX's recurrent ops, and the operands of an RNN that must be constant (W, R, B, sequence_lens).
ONNX_RECURRENT = {"RNN": (1, 2, 3, 4), "LSTM": (), "GRU": ()}


def onnx_problem(op: str, activations: Sequence[str | bytes]) -> str | None:
    """Why an ONNX recurrent node is not piecewise linear (an RNN's activations default to Tanh), or None."""
    if op != "RNN":
        return f"is {'an LSTM' if op == 'LSTM' else 'a GRU'}, whose sigmoid/tanh gates are not piecewise linear"
    names = [canonical(a) for a in activations]
    smooth = [a for a in names or ("Tanh",) if a not in ONNX_ACTIVATIONS]
    if not smooth:
        return None
    why = "is discontinuous" if smooth[0] == "ThresholdedRelu" else "is not piecewise linear"
    return f"uses the activation {smooth[0]}{'' if names else ' (the ONNX default)'}, which {why}"


def canonical(name: str | bytes) -> str:
    """An ONNX RNN activation's name as the spec spells it (runtimes read them in any case)."""
    name = name.decode() if isinstance(name, bytes) else name
    return next((known for known in ONNX_ACTIVATIONS if known.lower() == name.lower()), name)


def onnx_activation(name: str, alpha: float | None, beta: float | None) -> Activation:
    """One of :data:`ONNX_ACTIVATIONS` (ONNX's defaults where alpha/beta are None)."""
    default_alpha, default_beta = ONNX_ACTIVATIONS[name]
    alpha = default_alpha if alpha is None else float(alpha)
    beta = default_beta if beta is None else float(beta)
    if name == "Relu":
        return RELU
    if name == "LeakyRelu":
        return Activation(lambda z: F.leaky_relu(z, alpha))
    if name == "HardSigmoid":  # max(0, min(1, α·z + β))
        return Activation(lambda z: torch.clamp(z, 0.0, 1.0), alpha, beta)
    return Activation(None, alpha, beta)  # Affine: α·z + β


class OnnxRNN(nn.Module):
    """The ONNX ``RNN`` node: Y (T, directions, B, H) and Y_h (directions, B, H), or with
    ``layout=1`` (B, T, directions, H) and (B, directions, H); X (T, B, F), or (B, T, F)."""

    def __init__(self, hidden: int, direction: str, activations: Sequence[Activation], names: Sequence[str],
                 clip: float | None, layout: int, outputs: int = 2):
        super().__init__()
        self.hidden, self.direction, self.activations, self.names = hidden, direction, list(activations), list(names)
        self.clip, self.layout, self.outputs = clip, layout, outputs

    def forward(self, x: Tensor, w: Tensor, r: Tensor, b: Tensor | None = None, sequence_lens: Tensor | None = None,
                initial_h: Tensor | None = None) -> tuple[Tensor, Tensor]:
        seq = x.transpose(0, 1) if self.layout else x
        if sequence_lens is not None and bool((sequence_lens != len(seq)).any()):
            raise LrcertError("an ONNX RNN node gets sequence_lens shorter than its input",
                              fix="export without sequence_lens; lrcert certifies each row at its own length "
                                  "(DATA: an .npz with 'x' padded and 'lengths')")
        h0 = None if initial_h is None else (initial_h.transpose(0, 1) if self.layout else initial_h)
        directions = ("forward", "reverse") if self.direction == "bidirectional" else (self.direction,)
        namer = _namer()
        name = namer.here("RNN")
        outputs, finals = [], []
        for d, direction in enumerate(directions):
            b_ih, b_hh = (None, None) if b is None else (b[d, : self.hidden], b[d, self.hidden :])
            activation = self.activations[d] if len(self.activations) > d else self.activations[0]
            out, last = run_direction(seq, None if h0 is None else h0[d], w[d], r[d], b_ih, b_hh, reverse=direction == "reverse",
                                      activation=activation, namer=namer, clip=self.clip, where=Step(name, 0, direction, 0),
                                      name=stem(name, None, direction, len(directions) == 2))
            outputs.append(out)
            finals.append(last)
        namer.shapes.append(Recurrence(name, 1, self.hidden, directions, len(seq), seq.shape[-1],
                                  "/".join(dict.fromkeys(self.names[: len(directions)]))))
        with namer.named(f"{name} output"):
            y, y_h = torch.stack(outputs, dim=1), torch.stack(finals)  # (T, D, B, H), (D, B, H)
            if self.layout:
                y, y_h = y.permute(2, 0, 1, 3), y_h.transpose(0, 1)
            return (y, y_h) if self.outputs > 1 else y  # (a node that names Y alone gives Y alone)


def onnx_rnn_converter(node, graph):
    """onnx2torch's converter for ONNX ``RNN`` (any version): an :class:`OnnxRNN`."""
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    attributes = node.attributes
    problem = onnx_problem("RNN", attributes.get("activations", []))
    if problem is not None:
        raise NotImplementedError(f"RNN node {node.name!r} {problem}")
    names = [canonical(a) for a in attributes["activations"]]
    alphas, betas = iter(attributes.get("activation_alpha", [])), iter(attributes.get("activation_beta", []))
    functions = []
    for name in names:  # each takes the next alpha (beta) if it has one, as onnxruntime reads them
        default_alpha, default_beta = ONNX_ACTIVATIONS[name]
        functions.append(onnx_activation(name, None if default_alpha is None else next(alphas, None),
                                         None if default_beta is None else next(betas, None)))
    direction = attributes.get("direction", "forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    clip = attributes.get("clip")
    module = OnnxRNN(int(attributes["hidden_size"]), direction, functions, names, None if clip is None else float(clip),
                     int(attributes.get("layout", 0)), len(node.output_values))
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


# the namer of the trace running now (set by lrcert.models.convert while it traces): OnnxRNN modules,
# called by onnx2torch's graph rather than through a torch function, name their steps with it
_current: list[Namer] = []


@contextmanager
def naming(namer: Namer) -> Iterator[Namer]:
    """Make ``namer`` the one :class:`OnnxRNN` modules use while the block runs."""
    _current.append(namer)
    try:
        yield namer
    finally:
        _current.pop()


def _namer() -> Namer:
    return _current[-1] if _current else Namer()


def describe(shape: Recurrence, faces: int) -> str:
    """One line for ``lrcert inspect``: the recurrence's layers, units, steps and faces."""
    both = ", bidirectional" if len(shape.directions) == 2 else ", reverse" if shape.directions == ("reverse",) else ""
    layers = f"{shape.layers} layer{'s' if shape.layers > 1 else ''} of {shape.hidden} units{both}"
    return (f"{shape.name}: {shape.activation} RNN, {layers}, over {shape.steps} steps of {shape.features} "
            f"features: {math.prod((shape.layers, len(shape.directions), shape.steps, shape.hidden))} units, {faces} faces")
