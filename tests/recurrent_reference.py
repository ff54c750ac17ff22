"""An independent float64 reference for recurrent networks, for checking lrcert.

It shares no code with lrcert and does not call torch's RNN kernels: each step's pre-activation
is written out as the equation, z_t = W x_t + R h_{t−1} + b, the network's faces are listed as
functions of the flattened input (every kink of every unit at every step, and a head's own), and
every face gradient comes from torch.autograd's full Jacobian. Radii are min |f| / ‖∇f‖_q over
the faces whose gradient is not zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

DUAL = {"l1": math.inf, "l2": 2.0, "linf": 1.0}


@dataclass
class Direction:
    """One direction of one recurrent layer: h_t = act(W x_t + R h_{t−1} + b), in float64."""

    W: torch.Tensor
    R: torch.Tensor
    b: torch.Tensor | None = None
    h0: torch.Tensor | None = None
    reverse: bool = False
    activation: str = "relu"  # relu, leaky, hardsigmoid, affine
    alpha: float = 0.0
    beta: float = 0.0
    clip: float | None = None


@dataclass
class Layer:
    directions: list[Direction]


@dataclass
class Sequence:
    """Stacked recurrent layers over a (T, F) input; ``head(outputs, finals, faces)`` maps the last
    layer's outputs (T, D·H) and the final states (one per layer and direction) to the logits,
    appending its own faces to ``faces``."""

    layers: list[Layer]
    head: Callable = None
    names: list = field(default_factory=list)

    def run(self, x: torch.Tensor, faces: list, names: list | None = None):
        seq, finals = x, []
        for k, layer in enumerate(self.layers):
            outs = []
            for d, direction in enumerate(layer.directions):
                out, last = _direction(seq, direction, faces, names, (k, d))
                outs.append(out)
                finals.append(last)
            seq = torch.cat(outs, dim=1)
        return self.head(seq, finals, faces)


def _direction(seq, d: Direction, faces: list, names, where):
    T = seq.shape[0]
    h = d.h0 if d.h0 is not None else torch.zeros(d.R.shape[0], dtype=torch.float64)
    outs = [None] * T
    for t in (range(T - 1, -1, -1) if d.reverse else range(T)):
        z = d.W @ seq[t] + d.R @ h + (d.b if d.b is not None else 0)
        if d.clip is not None:
            _add(faces, names, [z + d.clip, z - d.clip], (*where, t, "clip"))
            z = torch.clamp(z, -d.clip, d.clip)
        if d.activation == "relu":
            _add(faces, names, [z], (*where, t))
            h = torch.relu(z)
        elif d.activation == "leaky":
            _add(faces, names, [z], (*where, t))
            h = torch.where(z > 0, z, d.alpha * z)
        elif d.activation == "hardsigmoid":
            a = d.alpha * z + d.beta
            _add(faces, names, [a, a - 1], (*where, t))
            h = torch.clamp(a, 0.0, 1.0)
        else:  # affine: no faces
            h = d.alpha * z + d.beta
        outs[t] = h
    return torch.stack(outs), h


def _add(faces: list, names, values: list, where) -> None:
    for v in values:
        faces.append(v)
        if names is not None:
            names.extend((*where, unit) for unit in range(len(v)))


def max_faces(values: torch.Tensor, faces: list) -> torch.Tensor:
    """max over the first axis of (T, n): each unit's window of T, faces winner − every other element."""
    winner = values.argmax(dim=0).detach()
    best = values.gather(0, winner[None])[0]
    gaps = best[None] - values  # (T, n); the winner's own gap is 0 with gradient 0: not a face
    faces.append(gaps.reshape(-1))
    return best


def reference_radii(model: Sequence, x: torch.Tensor, norms=("l1", "l2", "linf"), direction=None) -> dict:
    """{"radius": {p: ε̂}, "binding": {p: name of the face}, "prediction_radius": {p: r}} for one
    input x (T, F), float64; with ``direction`` d (T, F) also "direction": the largest t with x + t·d
    in the region, min over faces with z·(g·d) < 0 of −z / (g·d)."""
    x = x.detach().double().reshape(-1)
    shape = None

    def all_faces(flat):
        faces: list = []
        model.run(flat.reshape(shape), faces)
        return torch.cat(faces)

    def logits(flat):
        return model.run(flat.reshape(shape), []).reshape(-1)

    shape = (len(x) // model.layers[0].directions[0].W.shape[1], model.layers[0].directions[0].W.shape[1])
    names: list = []
    model.run(x.reshape(shape), [], names)
    z = all_faces(x)
    J = torch.autograd.functional.jacobian(all_faces, x, vectorize=True, strategy="forward-mode")  # inputs ≪ faces
    out = {"radius": {}, "binding": {}, "prediction_radius": {}}
    live = J.abs().sum(1) > 0
    for p in norms:
        q = J.norm(p=DUAL[p], dim=1)
        ratio = torch.where(live, z.abs() / torch.where(live, q, torch.ones_like(q)), torch.full_like(q, math.inf))
        k = int(ratio.argmin())
        out["radius"][p] = float(ratio[k])
        out["binding"][p] = names[k] if k < len(names) else ("head", k - len(names))
    if direction is not None:
        rate = J @ direction.detach().double().reshape(-1)
        ahead = (z * rate < 0) & live
        out["direction"] = float((-z / torch.where(ahead, rate, torch.ones_like(rate)))[ahead].min()) if ahead.any() else math.inf
    f = logits(x)
    G = torch.autograd.functional.jacobian(logits, x)
    c = int(f.argmax())
    for p in norms:
        best = math.inf
        for j in range(len(f)):
            if j != c:
                best = min(best, float((f[c] - f[j]) / (G[c] - G[j]).norm(p=DUAL[p])))
        out["prediction_radius"][p] = best
    return out


def from_torch_rnn(rnn: torch.nn.RNN, h0: torch.Tensor | None = None) -> list[Layer]:
    """The layers of an ``nn.RNN`` (ReLU), read from its parameters by name."""
    layers = []
    dirs = 2 if rnn.bidirectional else 1
    for k in range(rnn.num_layers):
        directions = []
        for d in range(dirs):
            suffix = f"_l{k}" + ("_reverse" if d else "")
            p = {n: getattr(rnn, n + suffix).detach().double() for n in ("weight_ih", "weight_hh")}
            b = None
            if rnn.bias:
                b = (getattr(rnn, "bias_ih" + suffix).detach().double() + getattr(rnn, "bias_hh" + suffix).detach().double())
            start = None if h0 is None else h0[k * dirs + d].reshape(-1).double()
            directions.append(Direction(p["weight_ih"], p["weight_hh"], b, start, reverse=d == 1))
        layers.append(Layer(directions))
    return layers


def from_onnx(path) -> Sequence:
    """The form lrcert's ``train --rnn`` (and experiments/japanese_vowels.py) exports, read from the
    ONNX graph's nodes and initializers: optionally (x − μ)/σ, stacked forward ReLU RNN nodes with a zero
    initial state, then Gemm (transB = 1) on the last step. A normalisation is folded into the first
    layer: W x' with x' = (x − μ)/σ is (W/σ) x − W(μ/σ)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    tensors = {t.name: torch.from_numpy(numpy_helper.to_array(t).astype(np.float64)) for t in graph.initializer}
    nodes = {node.op_type: node for node in graph.node}  # at most one Sub, Div and Gemm
    layers = []
    for node in [n for n in graph.node if n.op_type == "RNN"]:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attributes["activations"] == [b"Relu"] and attributes.get("direction", b"forward") == b"forward"
        assert len(node.input) < 6 or node.input[5] not in tensors  # the initial state: zeros made in the graph
        W, R, B = (tensors[name][0] for name in node.input[1:4])
        hidden = R.shape[0]
        layers.append(Layer([Direction(W, R, B[:hidden] + B[hidden:])]))
    if "Sub" in nodes:
        mean, std, first = tensors[nodes["Sub"].input[1]], tensors[nodes["Div"].input[1]], layers[0].directions[0]
        first.b, first.W = first.b - first.W @ (mean / std), first.W / std
    gemm = nodes["Gemm"]
    assert {a.name: onnx.helper.get_attribute_value(a) for a in gemm.attribute}.get("transB") == 1
    weight, bias = tensors[gemm.input[1]], tensors[gemm.input[2]]
    return Sequence(layers, head=lambda outputs, finals, faces: weight @ outputs[-1] + bias)
