"""The a-posteriori rounding bound behind the precision flag (lrcert/engine/roundoff.py), against
exact rational arithmetic: the bound holds on every face of random networks, including inputs
placed on a face to float64's resolution; such inputs stay flagged or are decided correctly
(the sign and the value of the binding face), never wrongly; and real runs flag nothing the
bound clears."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import PROJECT_MODELS

import lrcert
from lrcert.engine import results, roundoff
from lrcert.network import ir

ACTIVATIONS = {"relu": nn.ReLU(), "leaky": nn.LeakyReLU(0.1), "relu6": nn.ReLU6()}


def _net(seed: int, widths: tuple[int, ...], activation: str) -> nn.Sequential:
    torch.manual_seed(seed)
    layers, width = [], widths[0]
    for w in widths[1:]:
        layers += [nn.Linear(width, w), ACTIVATIONS[activation]]
        width = w
    return nn.Sequential(*layers, nn.Linear(width, 3)).double()


def _exact_faces(model: nn.Sequential, x: np.ndarray) -> list[list[Fraction]]:
    """Every activation's input, exactly (Fractions of the float64 weights and input), with each
    unit on the piece the float64 forward pass put it on: the frozen network's exact values."""
    h = [Fraction(float(v)) for v in x]
    approx = torch.from_numpy(x)[None]
    faces = []
    for module in model:
        if isinstance(module, nn.Linear):
            w, b = module.weight.detach().numpy(), module.bias.detach().numpy()
            h = [sum((Fraction(float(wij)) * hj for wij, hj in zip(row, h)), Fraction(float(bi))) for row, bi in zip(w, b)]
            approx = module(approx)
        else:
            faces.append(h)
            z = approx[0].detach().numpy()
            if isinstance(module, nn.LeakyReLU):
                h = [v if zk > 0 else Fraction(module.negative_slope) * v for v, zk in zip(h, z)]
            elif isinstance(module, nn.ReLU6):
                h = [Fraction(0) if zk <= 0 else Fraction(6) if zk >= 6 else v for v, zk in zip(h, z)]
            else:
                h = [v if zk > 0 else Fraction(0) for v, zk in zip(h, z)]
            approx = module(approx)
    return faces


def _on_a_face(model: nn.Sequential, x: np.ndarray, layer: int, unit: int) -> np.ndarray:
    """``x`` moved along the face's gradient onto it, to float64's resolution (z ≈ 0 up to rounding)."""
    point = torch.from_numpy(x)[None].requires_grad_(True)
    z = model[: 2 * layer + 1](point)[0, unit]
    (g,) = torch.autograd.grad(z, point)
    return (point - z * g / (g * g).sum()).detach().numpy()[0]


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("seed", range(4))
def test_the_bound_holds_against_exact_arithmetic_near_and_on_faces(activation, seed):
    model = _net(seed, (6, 16, 16, 8), activation)
    network = lrcert.from_module(model, (6,))
    engine = lrcert.Engine(network, dtype=torch.float64)
    nonlinear = [i for i, layer in enumerate(network.layers) if isinstance(layer, ir.Nonlinearity)]
    rng = np.random.default_rng(seed)
    for trial in range(6):
        x = rng.standard_normal(6)
        if trial % 2:  # on a face of a hidden layer, to float64's resolution
            x = _on_a_face(model, x, layer=trial % 3, unit=int(rng.integers(8)))
        exact = _exact_faces(model, x)
        for k, i in enumerate(nonlinear):
            units = torch.arange(network.layers[i].size)
            value, bound = roundoff.face_bounds(engine, torch.from_numpy(np.tile(x, (len(units), 1))),
                                                torch.full_like(units, i), units)
            for u in units.tolist():  # (the first block of faces: each unit's kink at 0)
                error = abs(Fraction(float(value[u])) - exact[k][u])
                assert error <= Fraction(float(bound[u])), (trial, k, u, float(error), float(bound[u]))


@pytest.mark.parametrize("seed", range(6))
def test_inputs_on_a_face_stay_flagged_or_are_decided_right(seed):
    """Inputs put on a hidden face to float64's resolution: the binding face of each is either
    flagged, or its reported value has the exact value's sign and is within 10⁻³ of it."""
    model = _net(seed, (5, 12, 12, 6), "relu")
    network = lrcert.from_module(model, (5,))
    rng = np.random.default_rng(seed)
    points = np.stack([_on_a_face(model, rng.standard_normal(5), layer=k % 3, unit=k % 6) for k in range(12)])
    results = lrcert.certify(network, points, dtype=torch.float64)
    layers = [i for i, layer in enumerate(network.layers) if layer.kind == "relu"]
    for x, result in zip(points, results):
        face = result.binding["l2"]
        if result.precision_warning or face is None:
            continue
        k = layers.index(next(i for i, layer in enumerate(network.layers) if layer.name == face.layer))
        exact = _exact_faces(model, x)[k][face.unit]
        assert exact != 0 and (exact > 0) == (face.value > 0), (result.index, face.value, float(exact))
        assert abs(Fraction(face.value) - exact) <= abs(exact) / 1000


def test_the_shipped_vowels_model_flags_nothing_the_bound_clears(monkeypatch):
    """Five utterances the a-priori screen flags on the shipped vanilla Japanese Vowels RNN (a
    magnitude compounded over 7 to 26 steps): the bound clears all five, and the radii are the
    same either way."""
    data = np.load(PROJECT_MODELS / "japanese_vowels" / "test.npz")
    rows = [data["x"][k, :n] for k, n in enumerate(data["lengths"]) if k in (0, 85, 130, 134, 158, 165)]
    model = str(PROJECT_MODELS / "japanese_vowels" / "vanilla.onnx")
    judged = lrcert.certify(model, rows)
    monkeypatch.setattr(results.Outcome, "_judged_again", results.Outcome._screened)  # the screen alone, as before
    screened = lrcert.certify(model, rows)
    assert [r.radius for r in judged] == [r.radius for r in screened]
    assert [r.precision_warning for r in screened] == [False] + [True] * 5
    assert not any(r.precision_warning for r in judged)


def test_judging_makes_no_tensor_on_the_default_device_and_waits_once_per_batch(monkeypatch):
    """The judged flags (utterances the screen flags) come out the same under torch.device("meta"),
    which any tensor made without an explicit device would break; and the judging waits for the
    device a bounded number of times per batch, not per flagged input."""
    from test_devices import CountSyncs

    data = np.load(PROJECT_MODELS / "japanese_vowels" / "test.npz")
    flagged = [85, 130, 134, 158, 165]
    same_length = [k for k in flagged if data["lengths"][k] == data["lengths"][flagged[0]]] or flagged[:1]
    rows = np.stack([data["x"][k, : data["lengths"][k]] for k in same_length * 4])  # one length: one batch
    network = lrcert.load(PROJECT_MODELS / "japanese_vowels" / "vanilla.onnx", sample_shape=rows.shape[1:])
    judged = []
    monkeypatch.setattr(results, "face_bounds", lambda *args: judged.append(len(args[1])) or roundoff.face_bounds(*args))
    expected = lrcert.certify(network, rows)
    with torch.device("meta"):
        got = lrcert.certify(network, rows)
    assert judged == [len(rows)] * 2  # (every row flagged a priori, all judged in one call per run)
    assert [r.precision_warning for r in got] == [r.precision_warning for r in expected]
    with CountSyncs() as few:
        lrcert.certify(network, rows[:1])
    with CountSyncs() as many:
        lrcert.certify(network, rows)
    assert many.count <= few.count, (few.count, many.count)
