"""``dtype="auto"``: float64 answers from float32 work. The rounding bounds hold (float32 dual norms
against exact float64 ones, face by face), auto's radii and binding faces equal float64's on every
kind of network, and every path of the refinement (kept in float32, exact candidates, whole
reruns) is taken and right."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import PROJECT_MODELS
from hypothesis import given
from hypothesis import strategies as st
from reference import close
from typer.testing import CliRunner

import lrcert
from lrcert.engine import precision
from lrcert.cli import app
from lrcert.engine import Engine
from lrcert.engine.norms import DualNorms
from lrcert.engine.region import Region
from lrcert.engine.tangents import push
from test_activations import MODELS as ACTIVATION_MODELS
from test_engine import NETWORKS
from test_properties import PROPERTY_SETTINGS, architectures

ALL = {**NETWORKS, **{f"activations_{k}": v for k, v in ACTIVATION_MODELS.items()}}


def _region(network, x, dtype):
    """A batch's region with every face's dual norms pushed densely (``region.norms``)."""
    engine = Engine(network, dtype=dtype, memory_bytes=1 << 26)
    plan = engine.plan(len(x))
    with torch.no_grad():
        region = Region(engine, x.to(engine.value_dtype))
        region.norms = DualNorms(region.batch, engine.norms, engine.fused_norms)
        for start in range(0, network.input_size, plan.directions_per_pass):
            seeds = engine.identity(start, min(network.input_size, start + plan.directions_per_pass))
            push(region, seeds, region.norms, plan.group)
    return region


def _faces(region, p):
    """Every face's measured dual norm, layer by layer: (B, faces) float64."""
    out = {}
    for i in region.engine.nonlinear:
        out[i] = region.per_face(i, region.norms.dual(i, p))
    return out


@pytest.mark.parametrize("name", sorted(ALL))
def test_float32_dual_norms_lie_within_their_bounds(name, monkeypatch):
    """The heart of auto: |float32 norm − exact norm| ≤ the bound, for every face of every input."""
    monkeypatch.setattr(precision, "FLOAT64_BELOW", 0)  # float32 tangents even for the few-input networks
    make, shape = ALL[name]
    model = make().double().eval()
    network = lrcert.from_module(model, shape)
    x = torch.randn(6, *shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 3
    auto, exact = _region(network, x, "auto"), _region(network, x, torch.float64)
    checked = 0
    for p in ("l1", "l2", "linf"):
        bounds = precision.dual_norm_bounds(auto, auto.norms, p)
        measured, truth = _faces(auto, p), _faces(exact, p)
        for i, bound in bounds.items():
            low, high = precision.true_norms(auto, auto.norms, i, p, auto.per_face(i, bound))
            assert torch.all(low <= truth[i] * (1 + 1e-12)) and torch.all(truth[i] <= high * (1 + 1e-12)), (name, p, i)
            checked += int((measured[i] != truth[i]).sum())
    assert checked > 0  # float32 really rounded something: the bounds were put to work


def _same(results, expected):
    """Every radius of auto is exact in float64: the same to float64 rounding."""
    for got, want in zip(results, expected):
        assert got.dtype == "float64"
        for p in want.radius:
            a, b = got.radius[p], want.radius[p]
            assert close(a, b, 1e-9), (got.index, got.dtype, p, a, b)


@pytest.mark.parametrize("screen", [True, False], ids=["screened", "dense"])
@pytest.mark.parametrize("name", sorted(ALL))
def test_auto_equals_float64(name, screen, monkeypatch):
    monkeypatch.setattr(precision, "FLOAT64_BELOW", 0)
    make, shape = ALL[name]
    model = make().double().eval()
    network = lrcert.from_module(model, shape)
    x = torch.randn(12, *shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    d = torch.randn(1, *shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    auto = lrcert.certify(network, x, directions=d, screen=screen)
    exact = lrcert.certify(network, x, directions=d, dtype=torch.float64, screen=False)
    _same(auto, exact)
    for got, want in zip(auto, exact):
        assert got.direction == pytest.approx(want.direction, rel=1e-12) and got.pattern == want.pattern
        for p in want.binding:
            if want.binding[p] is not None:
                assert (got.binding[p].layer, got.binding[p].unit) == (want.binding[p].layer, want.binding[p].unit)
        assert not got.precision_warning or want.precision_warning


def test_auto_fixes_what_float32_gets_wrong():
    """A face at 1e-4 among terms of 1000: float32 is 20 % off, auto is exact and warns of nothing."""
    model = nn.Sequential(nn.Linear(2, 1), nn.ReLU()).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -1.0]]))
        model[0].bias.zero_()
    x = torch.tensor([[1000.0, 999.9999]], dtype=torch.float64)
    (fast,) = lrcert.certify(model, x, dtype=torch.float32, screen=False)
    (auto,) = lrcert.certify(model, x, screen=False)
    assert fast.precision_warning and not auto.precision_warning
    assert auto.radius["l2"] == pytest.approx((1000.0 - 999.9999) / math.sqrt(2), rel=1e-12)


@pytest.mark.parametrize("share", [0.25, 0.0])
def test_exact_candidates_and_whole_reruns_give_the_same_answer(monkeypatch, share):
    """share 0: every unsettled input is rerun whole in float64 instead of reverse-passing its candidates."""
    monkeypatch.setattr(precision, "RERUN_SHARE", share)
    make, shape = NETWORKS["convnet"]
    model = make().double().eval()
    x = torch.randn(8, *shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    auto = lrcert.certify(model, x, screen=False)
    assert all(r.dtype == "float64" for r in auto)
    _same(auto, lrcert.certify(model, x, dtype=torch.float64))


def test_inputs_whose_float32_bounds_leave_one_face_take_its_float64_ratio():
    """One hidden layer on 40 inputs: float32 rounds the face gradients by about 1e-6, so the bounds
    leave a single candidate face on most inputs; its ratio is still taken in float64 (one reverse
    pass), so auto's answers equal float64's at any batch size, to float64 rounding."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(40, 16), nn.ReLU(), nn.Linear(16, 3)).double()
    x = torch.randn(20, 40, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    network = lrcert.from_module(model, (40,))
    engine = lrcert.Engine(network, screen=False)
    auto = engine.run(x)
    assert engine.work.exact <= 2 * len(x)  # one or two reverse passes per input, no more
    exact = lrcert.certify(model, x, dtype=torch.float64)
    _same(auto, exact)
    for size in (1, 7):
        again = lrcert.certify(network, x, screen=False, batch_size=size)
        for got, want in zip(again, auto):
            assert got.radius == pytest.approx(want.radius, rel=1e-12, abs=0)  # (float64 rounding of z)
            assert {p: (c.layer, c.unit) for p, c in got.binding.items()} == {p: (c.layer, c.unit) for p, c in want.binding.items()}


def test_tied_max_pools_give_zero_without_float64_work():
    """A max-pool over a constant background: the input is on a boundary whose gradient is surely
    nonzero, so the radius is 0 in any precision (positive conv biases: the background is active)."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 4 * 4, 2))
    model = model.double()
    model[0].bias.data = torch.tensor([0.2, 0.1], dtype=torch.float64)
    x = torch.zeros(3, 1, 8, 8, dtype=torch.float64)
    x[:, :, 2:4, 2:5] = torch.rand(3, 1, 2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    engine = lrcert.Engine(lrcert.from_module(model, (1, 8, 8)), screen=False)
    auto, exact = engine.run(x), lrcert.certify(model, x, dtype=torch.float64)
    assert all(r.radius["l2"] == 0 and r.binding["l2"].kind == "maxpool" for r in auto)
    assert not any(r.precision_warning for r in auto)  # a tie of identical computations: a boundary, not a doubt
    assert engine.work.exact == 0  # no reverse pass: 0 is exact in any precision
    _same(auto, exact)


def test_few_input_dimensions_are_certified_in_float64_outright():
    network = lrcert.load(PROJECT_MODELS / "moons_mlp.onnx")
    x = np.load(PROJECT_MODELS / "moons_mlp.inputs.npy")
    assert Engine(network).dtype == torch.float64
    assert all(r.dtype == "float64" for r in lrcert.certify(network, x))


@PROPERTY_SETTINGS
@given(architectures(), st.integers(0, 2**16), st.booleans())
def test_auto_equals_float64_on_random_architectures(architecture, seed, screen):
    model, shape = architecture
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precision, "FLOAT64_BELOW", 0)  # float32 tangents even for the few-input networks
        auto = lrcert.certify(model, x, screen=screen)
    _same(auto, lrcert.certify(model, x, dtype=torch.float64))


def test_auto_is_the_default_and_says_what_it_refined(tmp_path):
    model, data = PROJECT_MODELS / "bars_cnn.onnx", PROJECT_MODELS / "bars_cnn.inputs.npy"
    result = CliRunner().invoke(app, ["certify", str(model), str(data), "--format", "json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["options"]["dtype"] == "auto"
    dtypes = [r["dtype"] for r in doc["results"]]
    assert set(dtypes) <= {"float32", "float64"}
    exact64 = dtypes.count("float64")
    expected = ("auto: all exact in float64" if exact64 == len(dtypes) else "auto: all exact in float32" if exact64 == 0
                else f"auto: {exact64} of {len(dtypes)} exact in float64, the rest in float32")
    assert expected in result.stderr
    result = CliRunner().invoke(app, ["certify", str(model), str(data), "--format", "csv", "--dtype", "float32"])
    header, first = list(csv.reader(io.StringIO(result.stdout)))[:2]
    assert first[header.index("dtype")] == "float32"


def test_real_models_auto_equals_their_references(shared_models):
    for reference in sorted((shared_models / "reference").glob("*.json")):
        name = reference.stem
        expected = json.loads(reference.read_text())["results"]
        results = lrcert.certify(lrcert.load(shared_models / f"{name}.onnx"), np.load(shared_models / f"{name}.inputs.npy"))
        for got, want in zip(results, expected):
            for p in ("l1", "l2", "linf"):
                truth = math.inf if want[p] is None else want[p]
                assert close(got.radius[p], truth, 1e-5), (name, got.index, p)


def test_auto_is_float64_outright_for_dense_nets_where_float64_runs_at_the_float32_rate(monkeypatch):
    """On an A100/H100 float64 products cost what float32 ones do: auto skips the float32 bounds
    for networks without convolutions, and keeps them where cuDNN's float64 convolutions are slow."""
    torch.manual_seed(0)
    dense = lrcert.from_module(nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 3)), (3, 4, 4))
    conv = lrcert.from_module(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3)), (3, 4, 4))
    assert Engine(dense).auto and Engine(conv).auto  # on this CPU: float32 passes with bounds
    monkeypatch.setattr(lrcert.runtime.devices, "full_rate_float64", lambda device: True)
    engine = Engine(dense)
    assert not engine.auto and engine.dtype == engine.value_dtype == torch.float64
    assert {r.dtype for r in engine.run(torch.rand(4, 3, 4, 4))} == {"float64"}
    assert Engine(conv).auto
    assert not lrcert.runtime.devices.FULL_RATE_FLOAT64 & {(8, 6), (8, 9), (12, 0)}  # consumer cards: float64 is 1/64 rate
