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
from reference import pattern_of, point_on_unit_sphere, reference_radii, relative_error
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
    radius = result.radius[p]
    if radius == 0 or math.isinf(radius):
        return
    base = pattern_of(model, x)
    d = x.numel()
    for _ in range(30):
        v = point_on_unit_sphere(d, p, generator)
        assert pattern_of(model, x + radius * (1 - 1e-3) * v.reshape(x.shape)) == base
    binding = result.binding[p]
    if binding.kind != "maxpool":
        g = _face_gradient(model, x, binding.layer, binding.unit)
        outside = x + radius * (1 + 1e-3) * _worst_direction(g, binding.value, p).reshape(x.shape)
        assert pattern_of(model, outside) != base
