"""Converters of the piecewise-linear activations (ReLU, LeakyReLU, clips, max and min of two
tensors, PReLU, HardSigmoid, threshold, Abs) and the refusal of a softmax (certified before it,
at the logits, when it is the last op)."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from ...network import ir
from .call import Call, Refused, Softmax, aten, constant, with_args
from .pooling import reduced_max


def _relu(call):
    call.result(ir.ReLU, [call["self"]])


def _leaky_relu(call):
    call.result(ir.ReLU, [call["self"]], negative_slope=float(call["negative_slope"]))


def _clamp(call, low: Any = None, high: Any = None):
    """clamp / clip / hardtanh (ReLU6) / a max or min with a constant: ``Clip`` (``ReLU`` for
    clamp(min=0)). Bounds are numbers or constant tensors."""
    x = call["self"]
    bounds = []
    for bound, missing in ((low, -math.inf), (high, math.inf)):
        if bound is None:
            bounds.append(missing)
        elif not isinstance(bound, Tensor):
            bounds.append(float(bound))  # a Python number: exact (as a tensor it would be float32)
        elif bound.numel() > 1:
            bounds.append(constant(call, bound, "the bound").double().expand(call.out.shape).clone())
        else:
            bounds.append(float(constant(call, bound, "the bound")))
    if all(isinstance(b, float) for b in bounds) and bounds == [0.0, math.inf]:
        call.result(ir.ReLU, [x])
    else:
        call.result(ir.Clip, [x], low=bounds[0], high=bounds[1])


def _maximum(minimum: bool):
    """Elementwise max/min: of two input-dependent tensors, a ``Maximum`` layer (a window of two);
    with a constant, a ``Clip``."""

    def convert(call):
        a, b = call["self"], call["other"]
        if call.traced(a) and call.traced(b):
            call.result(ir.Maximum, [a, b], minimum=minimum)
            return
        x, c = (a, b) if call.traced(a) else (b, a)
        _clamp(with_args(call, self=x), high=c) if minimum else _clamp(with_args(call, self=x), low=c)

    return convert


def _binary_max(minimum: bool):
    """aten.max / aten.min: elementwise (``other``), or a reduction over one axis (``dim``) or all."""
    elementwise = _maximum(minimum)

    def convert(call):
        if call["other"] is not None:
            elementwise(call)
        else:
            x = call["self"]
            reduced_max(call, minimum, range(x.dim()) if call["dim"] is None else [call["dim"]])

    return convert


def _prelu(call):
    """PReLU: one slope per channel (axis 1), or one for all."""
    x, weight = call["self"], constant(call, call["weight"], "the PReLU slope").double()
    if weight.numel() == 1:
        call.result(ir.ReLU, [x], negative_slope=float(weight))
        return
    shape = [1] * x.dim()
    shape[1 if x.dim() > 1 else 0] = weight.numel()
    call.result(ir.ReLU, [x], negative_slope=weight.reshape(shape))


def _hardsigmoid(call):
    """clip(x / 6 + 1/2, 0, 1): a scale-shift, then a Clip."""
    x = call["self"]
    scaled = call.emit(ir.ElementwiseAffine, [x], x.shape, scale=torch.tensor(1 / 6, dtype=torch.float64, device="cpu"),
                       shift=torch.tensor(0.5, dtype=torch.float64, device="cpu"))
    call.result(ir.Clip, [scaled], low=0.0, high=1.0)


def _threshold(call):
    if float(call["threshold"]) != 0 or float(call["value"]) != 0:
        raise Refused("is a threshold other than ReLU's, which lrcert does not support")
    call.result(ir.ReLU, [call["self"]])


def _softmax(call):
    raise Softmax(call.node(call["self"]))


#: aten op → converter, for the ops of this family.
CONVERTERS: dict[Any, Callable[[Call], None]] = {
    aten.relu: _relu,
    aten.relu_: _relu,
    aten.leaky_relu: _leaky_relu,
    aten.leaky_relu_: _leaky_relu,
    aten.clamp: lambda call: _clamp(call, call["min"], call["max"]),
    aten.clamp_: lambda call: _clamp(call, call["min"], call["max"]),
    aten.clamp_min: lambda call: _clamp(call, low=call["min"]),
    aten.clamp_max: lambda call: _clamp(call, high=call["max"]),
    aten.hardtanh: lambda call: _clamp(call, call["min_val"], call["max_val"]),
    aten.hardtanh_: lambda call: _clamp(call, call["min_val"], call["max_val"]),
    aten.maximum: _maximum(minimum=False),
    aten.minimum: _maximum(minimum=True),
    aten.max: _binary_max(minimum=False),
    aten.min: _binary_max(minimum=True),
    aten.prelu: _prelu,
    aten._prelu_kernel: _prelu,
    aten.abs: lambda call: call.result(ir.Abs, [call["self"]]),
    aten.hardsigmoid: _hardsigmoid,
    aten.threshold: _threshold,
    aten._softmax: _softmax,
    aten._log_softmax: _softmax,
}
