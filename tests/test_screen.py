"""Screening (lrcert.engine.screen): the bounds hold for every face, and the screened radii are the dense
ones (float64, faces named the same) on random and real networks, whichever way each input goes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st
from reference import close

import lrcert
from lrcert.engine import Engine, screen
from lrcert.engine.region import Region
from test_activations import MODELS as ACTIVATION_MODELS
from test_engine import NETWORKS
from test_precision import _faces, _region
from test_properties import PROPERTY_SETTINGS, architectures

ALL = {**NETWORKS, **{f"activations_{k}": v for k, v in ACTIVATION_MODELS.items()}}


def _network(name):
    make, shape = ALL[name]
    return lrcert.from_module(make().double().eval(), shape), shape


def _screened(engine, x):
    """One batch through the deterministic screening alone: (radii, the inputs it leaves to the dense way)."""
    region = Region(engine, x)
    return screen.certify(region, x, screen.deterministic_floors(region))


def _inputs(shape, n, seed):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _same_as_dense(network, x, **kw):
    """Screened float64 radii and binding faces equal the dense engine's."""
    screened = Engine(network, dtype=torch.float64, predictions=False, **kw).run(x)
    dense = Engine(network, dtype=torch.float64, predictions=False, screen=False).run(x)
    for got, want in zip(screened, dense):
        assert got.pattern == want.pattern
        for p in want.radius:
            a, b = got.radius[p], want.radius[p]
            assert close(a, b, 1e-9), (got.index, p, a, b)
            if want.binding[p] is None:
                assert got.binding[p] is None
            else:
                assert (got.binding[p].layer, got.binding[p].unit) == (want.binding[p].layer, want.binding[p].unit)


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_floor_is_below_its_faces_exact_ratio(name):
    """|z| / G ≤ |z| / ‖g‖_q for every face of every input: G bounds ‖g‖_q from above."""
    network, shape = _network(name)
    region = _region(network, _inputs(shape, 6, 1) * 2, torch.float64)
    entry = region.engine.entry_norms(region.batch)
    positive = 0
    for p in ("l1", "l2", "linf"):
        floors = screen.floors(region, p, entry)
        exact = _faces(region, p)
        ratios = torch.cat([
            torch.where(exact[i] > 0, region.faces[i].abs() / torch.where(exact[i] > 0, exact[i], 1.0), math.inf)
            for i in region.engine.nonlinear
        ], dim=1)
        assert torch.all(floors <= ratios * (1 + 1e-12)), (name, p)
        positive += int((floors > 0).sum())
    assert positive > 0  # the bound says something


@pytest.mark.parametrize("name", sorted(ALL))
def test_entry_norms_are_the_first_faces_exact_norms(name):
    network, shape = _network(name)
    region = _region(network, _inputs(shape, 2, 2), torch.float64)
    entry = region.engine.entry_norms(region.batch)
    assert {i for i, _ in entry} == set(region.engine.walk.entries)
    for (i, p), norms in entry.items():
        assert torch.allclose(region.per_face(i, norms.expand(2, -1)), _faces(region, p)[i], rtol=1e-12, atol=0)


@pytest.mark.parametrize("share", [1.0, 0.2, 0.0], ids=["screened", "mixed", "dense"])
@pytest.mark.parametrize("name", sorted(ALL))
def test_screened_radii_are_the_dense_ones(name, share, monkeypatch):
    """share 1: every input screened; 0: every input dense after the first round; between: both in one batch."""
    monkeypatch.setattr(screen, "SHARE", share)
    network, shape = _network(name)
    _same_as_dense(network, _inputs(shape, 12, 3))


def test_a_batch_can_mix_screened_and_dense_inputs(monkeypatch):
    network, shape = _network("activations_conv_max")
    x = _inputs(shape, 16, 4)
    engine = Engine(network, dtype=torch.float64, predictions=False)
    monkeypatch.setattr(screen, "SHARE", 0.2)
    with torch.no_grad():
        _, dense = _screened(engine, x)
    assert 0 < int(dense.sum()) < len(x)  # the parametrized "mixed" case above really mixes
    _same_as_dense(network, x)


def test_inputs_left_after_the_last_round_go_dense(monkeypatch):
    """The guard behind rounds(): with a single round, what the round left is certified densely."""
    monkeypatch.setattr(screen, "rounds", lambda d: 1)
    monkeypatch.setattr(screen, "FIRST", 1)
    network, shape = _network("convnet")
    _same_as_dense(network, _inputs(shape, 8, 5))


def test_without_exact_entry_norms_the_bound_starts_at_the_input(monkeypatch):
    monkeypatch.setattr(screen, "ENTRY_WORK", 0)
    network, shape = _network("convnet")
    assert Engine(network).entry_norms(256) == {}
    _same_as_dense(network, _inputs(shape, 8, 6))


@pytest.mark.parametrize("share", [1.0, 0.0], ids=["screened", "dense"])
def test_a_region_without_reachable_faces_has_infinite_radii_both_ways(share, monkeypatch):
    """Every face's gradient is zero (the first layer ignores its input), so ε̂ = +∞ and no face binds:
    the screened way must say +∞ too, not a large finite number."""
    monkeypatch.setattr(screen, "SHARE", share)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.linspace(-1.0, 1.0, 6, dtype=torch.float64) + 0.05)
    network = lrcert.from_module(model.eval(), (4,))
    x = _inputs((4,), 5, 8)
    assert all(r == math.inf for result in Engine(network, dtype=torch.float64, screen=False).run(x)
               for r in result.radius.values())
    _same_as_dense(network, x)


@PROPERTY_SETTINGS
@given(architectures(), st.integers(0, 2**16), st.sampled_from([1.0, 0.05]))
def test_screened_radii_are_the_dense_ones_on_random_architectures(architecture, seed, share):
    model, shape = architecture
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(screen, "SHARE", share)
        _same_as_dense(lrcert.from_module(model, shape), _inputs(shape, 4, seed))


def test_screening_stops_on_a_network_where_it_does_not_pay():
    """A deep MLP: the bounds loosen by a factor per layer, every input goes dense, and after one
    batch the engine stops screening (the radii are the dense ones all the same)."""
    torch.manual_seed(0)
    layers = [nn.Linear(64, 64) if k % 2 == 0 else nn.ReLU() for k in range(12)]
    network = lrcert.from_module(nn.Sequential(*layers, nn.Linear(64, 3)).double(), (64,))
    x = _inputs((64,), 24, 7)
    engine = Engine(network, dtype=torch.float64, batch_size=8, predictions=False)
    assert engine.screening
    results = [r for batch in engine.stream([x], n_inputs=len(x)) for r in batch]
    assert not engine.screening
    dense = Engine(network, dtype=torch.float64, predictions=False, screen=False).run(x)
    for got, want in zip(results, dense):
        assert got.radius == pytest.approx(want.radius, rel=1e-12)


def test_auto_screened_inputs_are_float64_exact():
    network, shape = _network("convnet")
    x = _inputs(shape, 8, 8)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(screen, "SHARE", 1.0)
        auto = Engine(network, predictions=False).run(x)
    exact = Engine(network, dtype=torch.float64, predictions=False, screen=False).run(x)
    for got, want in zip(auto, exact):
        assert got.dtype == "float64"
        assert got.radius == pytest.approx(want.radius, rel=1e-12)


@pytest.mark.parametrize("name", ["oval21_cifar_base_kw", "cifar10_resnet_2b"])
def test_real_conv_nets_are_screened_and_exact(shared_models, name):
    network = lrcert.load(shared_models / f"{name}.onnx")
    x = torch.from_numpy(np.load(shared_models / f"{name}.inputs.npy")[:16]).double()
    engine = Engine(network, dtype=torch.float64, predictions=False)
    with torch.no_grad():
        _, dense = _screened(engine, x)
    assert int(dense.sum()) <= len(x) // 2  # screening carries most of them
    _same_as_dense(network, x)


def test_entry_norms_wait_for_a_batch_they_pay_for(monkeypatch):
    network, _ = _network("convnet")
    engine = Engine(network, dtype=torch.float64)
    monkeypatch.setattr(screen, "ENTRY_WORK", screen.entry_work(engine) / 10)
    assert engine.entry_norms(4) == {}
    assert set(engine.entry_norms(16)) == {(i, p) for i in engine.walk.entries for p in engine.norms}
    assert engine.entry_norms(1) is engine.entry_norms(16)  # computed once
