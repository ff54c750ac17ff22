"""Property-based tests: random small piecewise-linear architectures and inputs.

lrcert's radii equal the independent float64 computation; points inside ε̂(1 − 10⁻³) keep the
activation pattern; the point at ε̂(1 + 10⁻³) along the binding face's worst direction leaves it.
CI runs a fixed, bounded set of examples; set LRCERT_HYPOTHESIS_EXAMPLES for more.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lrcert
from reference import module_input, pattern_of, point_on_unit_sphere, reference_radii, relative_error
from test_engine import _face_gradient, _worst_direction

EXAMPLES = int(os.environ.get("LRCERT_HYPOTHESIS_EXAMPLES", "60"))
PROPERTY_SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


class Residual(nn.Module):
    """x + act(conv(x)), shapes kept."""

    def __init__(self, channels: int, activation: nn.Module):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = activation

    def forward(self, x):
        return x + self.act(self.conv(x))


def _activation(slope: float) -> nn.Module:
    return nn.ReLU() if slope == 0 else nn.LeakyReLU(slope)


@st.composite
def architectures(draw):
    """(model, input shape): an MLP or a small CNN with pools, batch-norm and residual blocks."""
    torch.manual_seed(draw(st.integers(0, 2**16)))
    slopes = st.sampled_from([0.0, 0.0, 0.05, 0.3])
    if draw(st.booleans()):
        width = draw(st.integers(1, 8))
        layers: list[nn.Module] = []
        for hidden in draw(st.lists(st.integers(2, 12), min_size=1, max_size=4)):
            layers += [nn.Linear(width, hidden), _activation(draw(slopes))]
            width = hidden
        return nn.Sequential(*layers, nn.Linear(width, 3)).double().eval(), (layers[0].in_features,)
    channels, size = draw(st.integers(1, 3)), draw(st.integers(5, 9))
    shape = (channels, size, size)
    layers = []
    for _ in range(draw(st.integers(1, 3))):
        block = draw(st.sampled_from(["conv", "residual", "maxpool", "avgpool", "batchnorm"]))
        if block == "conv":
            out, kernel = draw(st.integers(1, 4)), draw(st.integers(1, 3))
            stride, padding = draw(st.integers(1, 2)), draw(st.integers(0, 1))
            if size + 2 * padding < kernel:
                continue
            layers += [nn.Conv2d(channels, out, kernel, stride=stride, padding=padding), _activation(draw(slopes))]
            channels, size = out, (size + 2 * padding - kernel) // stride + 1
        elif block == "residual":
            layers.append(Residual(channels, _activation(draw(slopes))))
        elif block == "batchnorm":
            norm = nn.BatchNorm2d(channels)
            with torch.no_grad():
                norm.running_mean.uniform_(-0.5, 0.5)
                norm.running_var.uniform_(0.5, 2)
                norm.weight.uniform_(-1.5, 1.5)
            layers.append(norm)
        elif size >= 2:
            layers.append(nn.MaxPool2d(2) if block == "maxpool" else nn.AvgPool2d(2))
            size //= 2
    layers += [nn.Flatten(), nn.Linear(channels * size * size, 3)]
    return nn.Sequential(*layers).double().eval(), shape


@PROPERTY_SETTINGS
@given(architectures(), st.integers(0, 2**16))
def test_radii_equal_independent_computation(architecture, seed):
    model, shape = architecture
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for k, result in enumerate(lrcert.certify(model, x, dtype=torch.float64)):
        expected = reference_radii(model, x[k : k + 1])
        for p in ("l1", "l2", "linf"):
            assert relative_error(result.radius[p], expected[p]) < 1e-9, (p, result.radius[p], expected[p])


@PROPERTY_SETTINGS
@given(architectures(), st.integers(0, 2**16), st.sampled_from(["l1", "l2", "linf"]))
def test_radius_is_sound_and_tight(architecture, seed, p):
    model, shape = architecture
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, *shape, generator=generator, dtype=torch.float64)
    (result,) = lrcert.certify(model, x, dtype=torch.float64, norms=(p,))
    assert_sound_and_tight(model, x, result, p, generator)


def assert_sound_and_tight(model: nn.Module, x: torch.Tensor, result, p: str, generator: torch.Generator) -> None:
    """Every case asserts. Finite ε̂: points inside ε̂(1 − 10⁻³) keep the pattern, and the point at
    ε̂(1 + 10⁻³) (10⁻⁹ for ε̂ = 0) along the binding face's worst direction leaves it, whichever kind
    of face binds (for a max-pool, z = z_winner − z_competitor at the pool's input). ε̂ = +∞: no face
    binds, and far away (10³) the pattern is the same and the network the same affine map."""
    radius, binding, base = result.radius[p], result.binding[p], pattern_of(model, x)
    if math.isinf(radius):
        assert binding is None
        _assert_affine_far_away(model, x, p, generator)
        return
    for _ in range(30 if radius > 0 else 0):
        v = point_on_unit_sphere(x.numel(), p, generator)
        assert pattern_of(model, x + radius * (1 - 1e-3) * v.reshape(x.shape)) == base
    g = _binding_gradient(model, x, binding)
    step = radius * (1 + 1e-3) if radius > 0 else 1e-9
    outside = x + step * _worst_direction(g, binding.value, p).reshape(x.shape)
    assert pattern_of(model, outside) != base, (binding.kind, radius)


def _binding_gradient(model: nn.Module, x: torch.Tensor, binding) -> torch.Tensor:
    """∇ₓ z of the binding face, by autograd on the module's input (not lrcert's)."""
    if binding.kind != "maxpool":
        return _face_gradient(model, x, binding.layer, binding.unit)
    x, z = module_input(model, x, binding.layer)
    plane = z[0]
    (g,) = torch.autograd.grad(plane[binding.winner] - plane[binding.competitor], x)
    return g.reshape(-1)


def _assert_affine_far_away(model: nn.Module, x: torch.Tensor, p: str, generator: torch.Generator) -> None:
    base = pattern_of(model, x)
    jacobian = torch.autograd.functional.jacobian(lambda v: model(v.reshape(x.shape)).reshape(-1), x.reshape(-1))
    with torch.no_grad():
        for _ in range(10):
            step = 1e3 * point_on_unit_sphere(x.numel(), p, generator)
            assert pattern_of(model, x + step.reshape(x.shape)) == base
            moved = model(x + step.reshape(x.shape)).reshape(-1)
            assert torch.allclose(moved, model(x).reshape(-1) + jacobian @ step, rtol=1e-9, atol=1e-9 * float(moved.abs().max()))


def test_an_input_on_a_face_has_radius_zero_and_leaves_at_once():
    """x with a pre-activation exactly 0: ε̂ = 0 for every norm, the face named, and a step of 10⁻⁹
    along its worst direction changes the pattern."""
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double().eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.2, -1.0], [-1.0, 1.0, 1.0], [2.0, 0.0, 1.0]]))
        model[0].bias.copy_(torch.tensor([0.5, -0.25, 1.0, 0.75]))
    x = torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64)  # unit 0: 0.5 − 1 + 0 + 0.5 = 0
    assert float(model[0](x)[0, 0]) == 0.0
    for p in ("l1", "l2", "linf"):
        (result,) = lrcert.certify(model, x, dtype=torch.float64, norms=(p,))
        assert result.radius[p] == 0.0 and result.binding[p].unit == 0
        assert_sound_and_tight(model, x, result, p, torch.Generator().manual_seed(0))
