"""The precision flag's last stage (lrcert/engine/compensated.py), against exact rational
arithmetic: its error-free steps are exact; its face values hold their bound on every face of
random dense and residual convolutional networks (on and near faces too), and the bound lies far
below float64's resolution; it clears a face the running bound cannot, and never one it should
not (another pattern, a layer it does not compute)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn as nn
from test_roundoff import _exact_faces, _net, _on_a_face

import lrcert
from lrcert.engine import compensated, results
from lrcert.network import ir

F64 = torch.float64


def test_two_sum_and_two_prod_are_exact():
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.standard_normal(200) * 10.0 ** rng.integers(-30, 30, 200))
    b = torch.from_numpy(rng.standard_normal(200) * 10.0 ** rng.integers(-30, 30, 200))
    s, e = compensated.two_sum(a, b)
    p, f = compensated.two_prod(a, b)
    for k in range(200):
        x, y = Fraction(float(a[k])), Fraction(float(b[k]))
        assert Fraction(float(s[k])) + Fraction(float(e[k])) == x + y
        assert Fraction(float(p[k])) + Fraction(float(f[k])) == x * y
    for big, small in ((2.0**-500, 2.0**-500), (2.0**996, 0.5)):  # e would underflow; the split would overflow
        with pytest.raises(compensated.Unsupported):
            compensated.two_prod(torch.tensor([big], dtype=F64), torch.tensor([small], dtype=F64))


def _faces_of(network: ir.Network, x: np.ndarray, i: int) -> list[compensated.Face]:
    point = torch.from_numpy(x)[None]
    return [compensated.face_value(network, point, i, u) for u in range(network.layers[i].face_count)]


def _holds(face: compensated.Face, exact: Fraction, scale: float) -> None:
    """The exact value lies within the face's bound, and the bound is far below float64's own
    resolution at the face's scale (u · scale, u = 2⁻⁵³): 2²⁷ times below it at least."""
    assert abs(Fraction(face.hi) + Fraction(face.lo) - exact) <= Fraction(face.err), (face, float(exact))
    assert face.err <= 2.0**-80 * scale, (face.err, scale)


@pytest.mark.parametrize("activation", ["relu", "leaky", "relu6"])
@pytest.mark.parametrize("seed", range(3))
def test_dense_faces_hold_their_bound_near_and_on_faces(activation, seed):
    model = _net(seed, (6, 16, 16, 8), activation)
    network = lrcert.from_module(model, (6,)).to("cpu", F64)
    nonlinear = network.nonlinear
    rng = np.random.default_rng(seed)
    for trial in range(4):
        x = rng.standard_normal(6)
        if trial % 2:
            x = _on_a_face(model, x, layer=trial % 3, unit=int(rng.integers(8)))
        exact = _exact_faces(model, x)
        for k, i in enumerate(nonlinear):
            size = network.layers[i].size
            for u, face in enumerate(_faces_of(network, x, i)):
                kink = [Fraction(0), Fraction(6)][u // size]
                _holds(face, exact[k][u % size] - kink, scale=1e3)


class _Residual(nn.Module):
    """conv → batch-norm → ReLU → conv, + the skip → ReLU6 → 2×2 max-pool → dense → ReLU → dense."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.skip = nn.Conv2d(2, 3, 1)
        self.norm = nn.BatchNorm2d(3, eps=0.0)
        self.head, self.out = nn.Linear(12, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.norm(self.conv1(x)))
        h = torch.clamp(self.conv2(h) + self.skip(x), 0.0, 6.0)
        h = torch.flatten(nn.functional.max_pool2d(h, 2), 1)
        return self.out(torch.relu(self.head(h)))


def _residual(seed: int) -> _Residual:
    torch.manual_seed(seed)
    model = _Residual().double().eval()
    with torch.no_grad():  # batch-norm constants of few bits: its scale and shift are exact, however converted
        model.norm.running_var.copy_(torch.tensor([0.25, 4.0, 1.0], dtype=F64))
        model.norm.running_mean.copy_(torch.tensor([0.125, -0.5, 0.25], dtype=F64))
        model.norm.weight.copy_(torch.tensor([1.5, 0.75, -2.0], dtype=F64))
        model.norm.bias.copy_(torch.tensor([0.25, 0.0, -0.125], dtype=F64))
    return model


def _exact(a) -> np.ndarray:
    return np.vectorize(lambda v: Fraction(float(v)), otypes=[object])(a.detach().numpy() if isinstance(a, torch.Tensor) else a)


def _conv(x: np.ndarray, conv: nn.Conv2d) -> np.ndarray:
    """A same-size convolution (stride 1, padding k // 2) in Fractions, one output at a time."""
    w, pad = _exact(conv.weight), conv.padding[0]
    c, h, wd = x.shape
    padded = np.full((c, h + 2 * pad, wd + 2 * pad), Fraction(0), dtype=object)
    padded[:, pad : pad + h, pad : pad + wd] = x
    k = w.shape[-1]
    out = np.empty((w.shape[0], h, wd), dtype=object)
    for o in range(w.shape[0]):
        for r in range(h):
            for s in range(wd):
                out[o, r, s] = (padded[:, r : r + k, s : s + k] * w[o]).sum() + (
                    Fraction(float(conv.bias[o])) if conv.bias is not None else 0)
    return out


def _residual_faces(model: _Residual, x: np.ndarray) -> list[np.ndarray]:
    """Every face of the residual network, exactly, frozen at the float64 module's own pattern: the
    first ReLU's units, the ReLU6's units at 0 and at 6, the max-pool's gaps, the head's units."""
    with torch.no_grad():
        t = torch.from_numpy(x)[None]
        z1 = model.norm(model.conv1(t))[0]
        z2 = (model.conv2(torch.relu(z1)[None]) + model.skip(t))[0]
        h2 = torch.clamp(z2, 0.0, 6.0)
        z3 = model.head(torch.flatten(nn.functional.max_pool2d(h2[None], 2), 1))[0]
    n = model.norm
    scale = _exact(n.weight) / _exact(n.running_var.sqrt())  # (square roots of powers of 4: exact)
    e1 = (_conv(_exact(x), model.conv1) - _exact(n.running_mean)[:, None, None]) * scale[:, None, None] + _exact(n.bias)[:, None, None]
    h1 = np.where(z1.numpy() > 0, e1, Fraction(0))
    e2 = _conv(h1, model.conv2) + _conv(_exact(x), model.skip)
    h2_exact = np.where(z2.numpy() <= 0, Fraction(0), np.where(z2.numpy() >= 6, Fraction(6), e2))
    windows = h2_exact.reshape(3, 2, 2, 2, 2).transpose(0, 2, 4, 1, 3).reshape(3, 4, 4)  # (C, window element, place)
    plain = h2.numpy().reshape(3, 2, 2, 2, 2).transpose(0, 2, 4, 1, 3).reshape(3, 4, 4)
    winner = torch.from_numpy(plain).max(dim=1).indices.numpy()
    best = np.take_along_axis(windows, winner[:, None, :], axis=1)
    pooled = best[:, 0, :].reshape(-1)  # (C·places): flatten order (C, 2, 2)
    e3 = _exact(model.head.weight).dot(pooled) + _exact(model.head.bias)
    assert np.allclose(np.vectorize(float)(e3), z3.numpy())  # (the reference is the module's network)
    return [e1.reshape(-1), np.concatenate([e2.reshape(-1), e2.reshape(-1) - 6]), (best - windows).reshape(-1), e3]


@pytest.mark.parametrize("seed", range(3))
def test_residual_convolution_faces_hold_their_bound(seed):
    model = _residual(seed)
    network = lrcert.from_module(model, (2, 4, 4)).to("cpu", F64)
    kinds = [network.layers[i].kind for i in network.nonlinear]
    assert kinds == ["relu", "clip", "maxpool", "relu"], kinds
    rng = np.random.default_rng(seed)
    for _ in range(2):
        x = rng.standard_normal((2, 4, 4))
        for i, exact in zip(network.nonlinear, _residual_faces(model, x)):
            faces = _faces_of(network, x, i)
            assert len(faces) == len(exact)
            for face, value in zip(faces, exact):
                _holds(face, value, scale=1e4)


def _on_a_grid_face(second: bool = False) -> tuple[nn.Sequential, np.ndarray]:
    """Integer weights, an input on a 2⁻¹⁰ grid: float64 computes the first layer exactly, and a
    bias puts its first unit at 2⁻⁴⁰ — far inside the running bound E (n = 512 terms of size ~1),
    so only the exact recomputation can clear it. With ``second``, the first layer's units are
    1, …, 8 exactly and the 2⁻⁴⁰ unit is the first of a second layer (integer weights too)."""
    torch.manual_seed(0)
    weight = torch.randint(-3, 4, (8, 512)).double()
    x = torch.randint(-1024, 1025, (512,)).double() / 1024
    bias = torch.arange(1.0, 9.0, dtype=F64) - weight @ x if second else torch.randn(8, dtype=F64)
    bias[0] = bias[0] if second else 2.0**-40 - float(weight[0] @ x)
    layers = [nn.Linear(512, 8), nn.ReLU()] + ([nn.Linear(8, 8), nn.ReLU()] if second else []) + [nn.Linear(8, 3)]
    model = nn.Sequential(*layers).double()
    with torch.no_grad():
        model[0].weight.copy_(weight)
        model[0].bias.copy_(bias)
        if second:
            model[2].weight.copy_(torch.randint(-3, 4, (8, 8)).double())
            model[2].bias[0] = 2.0**-40 - float(model[2].weight[0] @ torch.arange(1.0, 9.0, dtype=F64))
    return model, x.numpy()[None]


@pytest.mark.parametrize("second", [False, True])
def test_a_face_the_running_bound_cannot_clear_is_cleared_exactly(monkeypatch, second):
    model, x = _on_a_grid_face(second)
    network = lrcert.from_module(model, (512,))
    cleared = lrcert.certify(network, x, dtype=F64)[0]
    assert cleared.binding["l2"].value == 2.0**-40 and not cleared.precision_warning
    with torch.device("meta"):  # (every tensor of the stage made with an explicit device)
        assert not lrcert.certify(network, x, dtype=F64)[0].precision_warning
    monkeypatch.setattr(results.Outcome, "_recomputed", lambda self, keys, reported, still: still)
    judged = lrcert.certify(network, x, dtype=F64)[0]
    assert judged.precision_warning and judged.radius == cleared.radius  # (the running bound alone: flagged)


def test_a_face_found_at_another_pattern_stays_flagged(monkeypatch):
    model, x = _on_a_grid_face(second=True)
    network = lrcert.from_module(model, (512,))
    original = compensated.face_value

    def flipped(*args):
        face = original(*args)
        face.pieces[0] = ~face.pieces[0]
        return face

    monkeypatch.setattr(compensated, "face_value", flipped)
    assert lrcert.certify(network, x, dtype=F64)[0].precision_warning


def test_a_layer_the_stage_does_not_compute_leaves_the_face_flagged():
    model, x = _on_a_grid_face()
    with torch.no_grad():  # units 0 and 1 both at 2⁻⁴⁰; an average pool of the pairs puts its first at 2⁻⁴⁰
        model[0].bias[1] = 2.0**-40 - float(model[0].weight[1] @ torch.from_numpy(x[0]))
    model = nn.Sequential(model[0], nn.Unflatten(1, (1, 2, 4)), nn.AvgPool2d((1, 2)), nn.Flatten(), nn.ReLU(),
                          nn.Linear(4, 3)).double()
    network = lrcert.from_module(model, (512,))
    assert "avgpool" in [layer.kind for layer in network.layers]
    result = lrcert.certify(network, x, dtype=F64)[0]
    assert result.binding["l2"].value == 2.0**-40 and result.precision_warning
