"""Piecewise-linear activations beyond ReLU: Clip/ReLU6/Hardtanh (a face at each bound), PReLU
(per-channel slopes), Abs, and the elementwise max/min of two varying tensors (a window of two).
Radii against the independent float64 reference, soundness and tightness by sampling, and the
directional radius reaching the far bound."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from reference import pattern_of, point_on_unit_sphere, reference_radii, relative_error

import lrcert
from lrcert import LrcertError


class Abs(nn.Module):
    def forward(self, x):
        return x.abs()

    def faces(self, z):  # for the reference: the kink at 0
        return z


class Max(nn.Module):
    """max(a, b) or min(a, b) of two varying tensors; the reference's face is a − b."""

    def __init__(self, minimum: bool = False):
        super().__init__()
        self.minimum = minimum

    def forward(self, a, b):
        return torch.minimum(a, b) if self.minimum else torch.maximum(a, b)

    def faces(self, a, b):
        return a - b


class Floor(nn.Module):
    """max(x, c) with a constant per-unit threshold c: a Clip with a tensor bound."""

    def __init__(self, c):
        super().__init__()
        self.register_buffer("c", c)

    def forward(self, x):
        return torch.maximum(x, self.c)

    def faces(self, z):
        return z - self.c


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.relu6 = nn.Linear(5, 12), nn.ReLU6()
        self.fc2, self.tanh = nn.Linear(12, 12), nn.Hardtanh(-0.5, 0.75)  # bounds exact in float32, as exporters store them
        self.fc3, self.prelu = nn.Linear(12, 10), nn.PReLU(10, init=0.2)
        self.fc4, self.abs = nn.Linear(10, 8), Abs()
        self.floor = Floor(torch.linspace(-0.3, 0.3, 8))
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        x = self.relu6(3 * self.fc1(x))
        x = self.prelu(self.fc3(self.tanh(self.fc2(x))))
        return self.out(self.floor(self.abs(self.fc4(x))))


class ConvMax(nn.Module):
    """Two conv branches joined by an elementwise max and min; per-channel PReLU; ReLU6."""

    def __init__(self):
        super().__init__()
        self.left, self.right = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(2, 4, 3, padding=1)
        self.max, self.min = Max(), Max(minimum=True)
        self.prelu, self.relu6 = nn.PReLU(4, init=0.1), nn.ReLU6()
        self.head = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x):
        a, b = self.left(x), self.right(x)
        y = self.prelu(self.max(a, b)) + self.relu6(4 * self.min(a, b))
        return self.head(y.flatten(1))


def _perturbed(model: nn.Module) -> nn.Module:
    with torch.no_grad():  # PReLU slopes differing per channel, so a shared slope would be wrong
        for module in model.modules():
            if isinstance(module, nn.PReLU):
                module.weight.copy_(torch.linspace(-0.3, 0.4, module.weight.numel()))
    return model.double().eval()


MODELS = {
    "mlp": (lambda: (torch.manual_seed(0), _perturbed(Mlp()))[1], (5,)),
    "conv_max": (lambda: (torch.manual_seed(1), _perturbed(ConvMax()))[1], (2, 5, 5)),
}


def _inputs(shape, n=6, seed=3):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_radii_equal_an_independent_float64_computation(name):
    make, shape = MODELS[name]
    model = make()
    network = lrcert.from_module(model, shape)
    kinds = {network.layers[i].kind for i in network.nonlinear}
    assert kinds >= ({"clip", "prelu", "abs"} if name == "mlp" else {"max", "min", "prelu", "clip"})
    x = _inputs(shape)
    for k, result in enumerate(lrcert.certify(network, x, dtype=torch.float64)):
        expected = reference_radii(model, x[k : k + 1])
        for p in ("l1", "l2", "linf"):
            assert relative_error(result.radius[p], expected[p]) < 1e-9, (name, k, p, result.radius[p], expected[p])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_radius_is_sound_and_tight_by_sampling(name):
    make, shape = MODELS[name]
    model = make()
    x = _inputs(shape, n=4, seed=5)
    generator = torch.Generator().manual_seed(9)
    for p in ("l1", "l2", "linf"):
        for k, result in enumerate(lrcert.certify(model, x, dtype=torch.float64, norms=(p,))):
            center, radius = x[k : k + 1], result.radius[p]
            base = pattern_of(model, center)
            for _ in range(100):  # inside: the sphere of radius ε̂(1 − 1e-3)
                v = point_on_unit_sphere(center.numel(), p, generator).reshape(center.shape)
                assert pattern_of(model, center + radius * (1 - 1e-3) * v) == base
            # outside, just past the ball: some point at ε̂(1 + 1e-2) leaves (the binding face's worst
            # direction, found among the l2-worst directions of every face by brute force below)
            assert _leaves_somewhere(model, center, radius * (1 + 1e-2), p, base)


def _leaves_somewhere(model, center, reach, p, base) -> bool:
    """Whether a point at ℓp distance ``reach`` leaves the region, trying every face's worst direction."""
    from reference import faces_of

    x = center.clone().requires_grad_(True)
    faces = faces_of(model, x)
    for j in torch.argsort(faces.detach().abs())[:50].tolist():
        (g,) = torch.autograd.grad(faces[j], x, retain_graph=True)
        g = g.reshape(-1)
        if not g.any():
            continue
        sign = -1.0 if faces[j] > 0 else 1.0
        if p == "l2":
            d = g / g.norm()
        elif p == "linf":
            d = torch.sign(g)
        else:
            d = torch.zeros_like(g)
            d[int(g.abs().argmax())] = torch.sign(g[int(g.abs().argmax())])
        if pattern_of(model, center + reach * sign * d.reshape(center.shape)) != base:
            return True
    return False


def test_clip_faces_by_hand_and_the_far_bound_along_a_direction():
    # z = x1 on ReLU6: at x1 = 5 the high bound (6) is 1 away, the low bound (0) 5 away
    model = nn.Sequential(nn.Linear(2, 1), nn.ReLU6()).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0]]))
        model[0].bias.zero_()
    x = torch.tensor([[5.0, 0.0]], dtype=torch.float64)
    down, up = lrcert.certify(model, x.repeat(2, 1), dtype=torch.float64,
                             directions=torch.tensor([[-1.0, 0.0], [2.0, 0.0]], dtype=torch.float64))
    assert down.radius["l2"] == pytest.approx(1.0) and down.binding["l2"].bound == "high"
    assert down.binding["l2"].as_dict()["bound"] == "high" and down.binding["l2"].value == pytest.approx(-1.0)
    assert down.direction == pytest.approx(5.0) and down.direction_binding.bound == "low"
    assert up.direction == pytest.approx(0.5) and up.direction_binding.bound == "high"


def test_abs_and_max_by_hand():
    model = nn.Sequential(nn.Linear(2, 2), Abs()).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[3.0, 4.0], [1.0, 0.0]]))
        model[0].bias.copy_(torch.tensor([-5.0, 9.0]))
    (result,) = lrcert.certify(model, torch.zeros(1, 2, dtype=torch.float64), dtype=torch.float64)
    assert result.radius["l2"] == pytest.approx(1.0) and result.binding["l2"].kind == "abs"

    class Pair(nn.Module):  # max(x1, 2·x2): the face x1 − 2·x2, gradient (1, −2)
        def forward(self, x):
            return torch.maximum(x[:, :1], 2 * x[:, 1:])

    (result,) = lrcert.certify(Pair(), torch.tensor([[1.0, 0.0]], dtype=torch.float64), dtype=torch.float64)
    assert result.radius["l2"] == pytest.approx(1 / math.sqrt(5)) and result.radius["linf"] == pytest.approx(1 / 3)
    assert result.binding["l2"].kind == "max" and result.binding["l2"].value == pytest.approx(1.0)


def test_roll_loss_refuses_what_it_does_not_regularise():
    with pytest.raises(LrcertError, match="roll_loss regularises ReLU.*clip"):
        lrcert.roll_loss(nn.Sequential(nn.Linear(4, 5), nn.ReLU6(), nn.Linear(5, 2)), torch.randn(3, 4), lam=1.0, C=1.0)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_onnx_exports_of_the_new_activations_certify_exactly(tmp_path, name):
    """ONNX Clip (number and tensor bounds), PRelu (per channel), Abs, Max and Min, as the default
    exporter writes them (in float64, so the graph holds the module's exact weights)."""
    pytest.importorskip("onnxscript")
    import logging
    import warnings

    make, shape = MODELS[name]
    model = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        torch.onnx.export(model, (torch.zeros(1, *shape, dtype=torch.float64),), str(tmp_path / "m.onnx"))
        logging.disable(logging.NOTSET)
    x = _inputs(shape, n=3, seed=8)
    for k, result in enumerate(lrcert.certify(lrcert.load(tmp_path / "m.onnx"), x, dtype=torch.float64)):
        expected = reference_radii(model, x[k : k + 1])
        assert all(relative_error(result.radius[p], expected[p]) < 1e-9 for p in expected), (k, result.radius, expected)
