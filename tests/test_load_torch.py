"""PyTorch loading: nn.Module, TorchScript, torch.export programs, and pickles only with consent.
The layer list must reproduce the source model on random inputs."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

import lrcert
from lrcert.errors import LrcertError
from test_engine import NETWORKS


class Pickled(nn.Module):
    """A module class the pickle tests can import again."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_layer_list_reproduces_module(name):
    make, shape = NETWORKS[name]
    model = make().eval()
    network = lrcert.from_module(model, shape)
    x = torch.randn(7, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
    got = network.run(x.double()).float()
    torch.testing.assert_close(got.reshape(expected.shape), expected, rtol=1e-4, atol=1e-5)


def test_functional_and_inplace_ops_are_traced():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(5, 5)
            self.b = nn.Linear(5, 3)

        def forward(self, x):
            h = self.a(x)
            h = torch.nn.functional.relu(h, inplace=True)
            h += x  # in-place residual
            h = torch.clamp(h, min=0) * 2 - 1
            return torch.log_softmax(self.b(h), dim=1)

    torch.manual_seed(3)
    model = Functional().eval()
    network = lrcert.from_module(model, (5,))
    assert [layer.kind for layer in network.layers].count("relu") == 2
    assert any("softmax" in note for note in network.notes)
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(
        torch.log_softmax(network.run(x.double()).float().reshape(4, 3), dim=1), model(x), rtol=1e-4, atol=1e-5
    )


def test_torchscript_and_export_files(tmp_path):
    make, shape = NETWORKS["convnet"]
    model = make().eval()
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, x[:1]), str(tmp_path / "model.ts"))
    torch.export.save(torch.export.export(model, (x[:1],)), str(tmp_path / "model.pt2"))
    expected = lrcert.certify(model, x, dtype=torch.float64)
    with pytest.raises(LrcertError, match="TorchScript file: loading it runs the TorchScript code"):
        lrcert.load(tmp_path / "model.ts", sample_shape=shape)
    for path in (tmp_path / "model.ts", tmp_path / "model.pt2"):
        network = lrcert.load(path, trust_pickle=True, sample_shape=shape)
        got = lrcert.certify(network, x, dtype=torch.float64)
        for a, b in zip(got, expected):
            assert a.radius == pytest.approx(b.radius, rel=1e-9)


def test_torchscript_needs_a_shape(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(Pickled()), str(tmp_path / "m.pt"))
    with pytest.raises(LrcertError, match="does not record its input shape"):
        lrcert.load(tmp_path / "m.pt", trust_pickle=True)


def test_pickled_model_needs_consent(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(Pickled(), path)
    with pytest.raises(LrcertError, match="pickled model; loading it runs code") as error:
        lrcert.load(path, sample_shape=(4,))
    assert "--trust-pickle" in str(error.value)
    network = lrcert.load(path, trust_pickle=True, sample_shape=(4,))
    assert network.units == 6


def test_state_dict_is_not_a_model(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(Pickled().state_dict(), path)
    with pytest.raises(LrcertError, match="holds only weights"):
        lrcert.load(path, trust_pickle=True, sample_shape=(4,))


def test_unsupported_torch_ops_are_listed_together():
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3), nn.Sigmoid())
    with pytest.raises(LrcertError) as error:
        lrcert.from_module(model, (3,))
    assert [d.split(" (")[0] for d in error.value.details] == ["'1'", "'3'"]
    assert all("is not piecewise linear" in d for d in error.value.details)


def test_product_of_input_dependent_tensors_is_refused():
    class Square(nn.Module):
        def forward(self, x):
            return torch.relu(x) * x

    with pytest.raises(LrcertError, match="multiplies two input-dependent tensors"):
        lrcert.from_module(Square(), (3,))


def test_data_dependent_control_flow_is_refused():
    class Branchy(nn.Module):
        def forward(self, x):
            return torch.relu(x) if x.sum() > 0 else -x

    with pytest.raises(LrcertError, match="data-dependent control flow"):
        lrcert.from_module(Branchy(), (3,))


def test_python_number_constants_stay_exact():
    """``x * 0.1`` must scale by the float64 0.1, not by float32's 0.100000001 (a 1.5e-8 error)."""

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.relu, self.out = nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)

        def forward(self, x):
            return self.out(self.relu(torch.clamp(self.fc(x) * 0.1 + 0.3, max=0.7) / 0.7))

    torch.manual_seed(0)
    model = Scaled().double()
    network = lrcert.from_module(model, (3,))
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(network.run(x).reshape(5, 2), model(x).detach(), rtol=1e-13, atol=0)  # ulps, not 1e-8
