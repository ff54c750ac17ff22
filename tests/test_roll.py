"""The ROLL regulariser: its face gradients against autograd, its sampled estimate, its refusals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from reference import faces_of, reference_radii

from lrcert import LrcertError
from lrcert.training.roll import face_gradients, roll_loss


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.inner = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.LeakyReLU(0.1)
        self.relu = nn.ReLU()  # a module, so that the reference's hooks see it
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        x = self.pool(self.relu(self.conv(x)))
        x = x + self.act(self.inner(x))
        return self.head(x.flatten(1))


class ClampReLU(nn.Module):
    """A ReLU in disguise: lrcert certifies it, the face recorder does not see it."""

    def forward(self, x):
        return torch.clamp(x, min=0)


def mlp(seed: int, widths=(5, 12, 9, 3)) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-2], widths[1:-1]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(widths[-2], widths[-1])).double()


def autograd_squared_norms(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """‖∇ₓz‖² of every face of every row, one row and one face at a time (reference hooks)."""
    rows = []
    for row in x:
        jacobian = torch.autograd.functional.jacobian(lambda v: faces_of(model, v), row[None], create_graph=True)
        rows.append(jacobian.reshape(jacobian.shape[0], -1).square().sum(1))
    return torch.stack(rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_face_gradients_equal_autograd_on_mlps(seed):
    model = mlp(seed)
    x = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    z, squared, real = face_gradients(model, x)
    assert real.all()
    torch.testing.assert_close(z, torch.stack([faces_of(model, row[None]) for row in x]), rtol=0, atol=1e-12)
    torch.testing.assert_close(squared, autograd_squared_norms(model, x), rtol=1e-10, atol=1e-12)


def test_face_gradients_with_max_pool_padding_and_leaky_relu_give_the_exact_l2_radius():
    torch.manual_seed(3)
    model = Residual().double().eval()
    x = torch.randn(4, 2, 8, 8, dtype=torch.float64)
    z, squared, real = face_gradients(model, x)
    for k in range(len(x)):
        live = real[k] & (squared[k] > 0)
        radius = float((z[k][live].abs() / squared[k][live].sqrt()).min())
        assert math.isclose(radius, reference_radii(model, x[k : k + 1])["l2"], rel_tol=1e-10)
        reference_z = faces_of(model, x[k : k + 1]).detach()
        reference_sq = autograd_squared_norms(model, x[k : k + 1])[0].detach()
        in_bounds = reference_z.abs() < 1e299  # the reference pads max-pool windows with -1e300
        assert math.isclose(float(squared[k][real[k]].sum()), float(reference_sq[in_bounds].sum()), rel_tol=1e-10)


def test_parameter_gradients_equal_double_backward():
    model = mlp(4)
    x = torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    loss = roll_loss(model, x, lam=1.5, C=0.7)
    hidden = list(model.parameters())[:-2]  # the output layer makes no face
    ours = torch.autograd.grad(loss, hidden)

    z = torch.stack([faces_of(model, row[None]) for row in x])
    squared = autograd_squared_norms(model, x)
    expected = 1.5 * (squared + 0.7 * torch.relu(1 - z.abs())).mean()
    assert math.isclose(float(loss), float(expected), rel_tol=1e-12)
    for a, b in zip(ours, torch.autograd.grad(expected, hidden)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_gamma_keeps_the_largest_terms():
    model = mlp(5)
    x = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    z, squared, _ = face_gradients(model, x)
    terms = squared + 2.0 * torch.relu(1 - z.abs())
    keep = math.ceil(0.3 * z.shape[1])
    expected = terms.sort(dim=1, descending=True).values[:, :keep].mean()
    assert math.isclose(float(roll_loss(model, x, lam=1.0, C=2.0, gamma=30)), float(expected), rel_tol=1e-12)


def test_sampled_estimate_is_unbiased():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).double()
    x = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    exact = float(roll_loss(model, x, lam=1.0, C=1.0))
    generator = torch.Generator().manual_seed(0)
    draws = [float(roll_loss(model, x, lam=1.0, C=1.0, sample_dims=9, generator=generator)) for _ in range(3000)]
    spread = torch.tensor(draws).std().item() / math.sqrt(len(draws))
    assert abs(sum(draws) / len(draws) - exact) < 4 * spread
    assert spread < 0.02 * exact  # the test can tell a biased estimate apart


def test_refusals():
    x = torch.randn(4, 5)
    with pytest.raises(LrcertError, match="sample_dims=3 with gamma=50"):
        roll_loss(mlp(0).float(), x, lam=1.0, C=1.0, gamma=50, sample_dims=3)
    with pytest.raises(LrcertError, match="outside 1..5"):
        roll_loss(mlp(0).float(), x, lam=1.0, C=1.0, sample_dims=6)
    with pytest.raises(LrcertError, match="not a supported piecewise-linear network"):
        roll_loss(nn.Sequential(nn.Linear(5, 4), nn.Sigmoid(), nn.Linear(4, 2)), x, lam=1.0, C=1.0)
    clamped = nn.Sequential(nn.Linear(5, 4), ClampReLU(), nn.Linear(4, 2))
    with pytest.raises(LrcertError, match="sees 0 ReLU/LeakyReLU units per input but the model has 4"):
        roll_loss(clamped, x, lam=1.0, C=1.0)
    with pytest.raises(LrcertError, match="gamma=0"):
        roll_loss(mlp(0).float(), x, lam=1.0, C=1.0, gamma=0)


def test_training_modes_survive_the_check_and_running_statistics_move_once():
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2), nn.Dropout(0.0))
    model.train()
    model[4].eval()  # a submodule the user froze stays frozen
    roll_loss(model, torch.randn(16, 5), lam=1.0, C=1.0).backward()
    assert model.training and model[1].training and not model[4].training
    assert int(model[1].num_batches_tracked) == 0  # the task loss's forward pass updates them, not roll_loss
