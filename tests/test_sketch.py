"""Sketching (lrcert.engine.sketch): sketched radii, binding faces and prediction radii are the
deterministic float64 ones on every input; the tail bound behind each estimator holds at a small
k over many seeds; δ is computed from k and the counts; the default picks the way by cost."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st
from reference import close

import lrcert
from lrcert.engine import Engine, prediction, sketch
from lrcert.engine.norms import DualNorms
from lrcert.engine.region import Region
from lrcert.engine.tangents import push
from test_activations import MODELS as ACTIVATION_MODELS
from test_engine import NETWORKS
from test_properties import PROPERTY_SETTINGS, architectures

ALL = {**NETWORKS, **{f"activations_{k}": v for k, v in ACTIVATION_MODELS.items()}}


class ManyClasses(nn.Module):
    """A conv net with 40 outputs: its sketched inputs take the prediction radius from float32
    gradients with sketched error bounds (prediction.sketched_margins), through a 12-unit bottleneck."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.inner = nn.Conv2d(6, 6, 3, padding=1)
        self.squeeze = nn.Linear(6 * 4 * 4, 12)
        self.head = nn.Linear(12, 40)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv(x)))
        x = torch.relu(self.inner(x))
        return self.head(self.squeeze(x.flatten(1)))


def many_classes() -> nn.Module:
    torch.manual_seed(11)
    return ManyClasses().double().eval()


def _network(name):
    make, shape = ALL[name]
    return lrcert.from_module(make().double().eval(), shape), shape


def _inputs(shape, n, seed):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _close(a: float, b: float) -> bool:
    return close(a, b, 1e-9)


def _same_answers(got, want, predictions=True):
    """The same radii (float64 rounding), binding faces, and prediction radii with their classes."""
    for r, w in zip(got, want):
        assert r.pattern == w.pattern
        for p in w.radius:
            assert _close(r.radius[p], w.radius[p]), (r.index, p, r.radius[p], w.radius[p])
            assert (r.binding[p] is None) == (w.binding[p] is None)
            if w.binding[p] is not None:
                assert (r.binding[p].layer, r.binding[p].unit) == (w.binding[p].layer, w.binding[p].unit), (r.index, p)
            if predictions and w.prediction_radius is not None:
                assert _close(r.prediction_radius[p], w.prediction_radius[p]), (r.index, p)
                assert r.rival[p] == w.rival[p], (r.index, p)


def _sketched_and_deterministic(network, x, screen=False, **kw):
    """Every input sketched (``screen``: after the deterministic screening, whose ratios it keeps;
    on these small inputs as many exact gradients allowed as needed, none sent the dense way),
    and the dense float64 engine."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lrcert.engine.screen, "SHARE", 1.0)
        sketched = Engine(network, dtype=torch.float64, sketch=True, screen=screen, **kw).run(x)
    deterministic = Engine(network, dtype=torch.float64, guarantee="deterministic", screen=False, **kw).run(x)
    assert all(r.delta == 0 for r in deterministic)
    # (an input with more open faces than D goes the dense way: on inputs of a few dimensions, it may)
    assert all(r.delta > 0 for r in sketched) or network.input_size < 32 or not network.nonlinear
    return sketched, deterministic


# ------------------------------------------------------------------------------------ the same answers


@pytest.mark.parametrize("screen", [False, True], ids=["sketch alone", "after the deterministic screening"])
@pytest.mark.parametrize("name", sorted(ALL))
def test_sketched_answers_are_the_deterministic_ones(name, screen):
    network, shape = _network(name)
    x = _inputs(shape, 8, 5) * 2
    if screen:  # (the inputs the deterministic screening settles are not sketched: no face passes it)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(lrcert.engine.screen, "deterministic_floors", lambda region: _no_floors(region))
            sketched, deterministic = _sketched_and_deterministic(network, x, screen=True)
    else:
        sketched, deterministic = _sketched_and_deterministic(network, x)
    _same_answers(sketched, deterministic)


def _no_floors(region):
    """Deterministic floors of 0 everywhere: the first round's exact ratios rule nothing out."""
    return torch.zeros(len(region.engine.norms), region.batch, region.network.faces, dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float64, "auto"])
@pytest.mark.parametrize("way", ["screened by the sketch", "bottleneck rows"])
def test_many_classes_take_the_prediction_radius_either_way(way, dtype):
    """40 classes, either way: margins screened by the sketch's floors, their ratios bounded by
    float32 estimates (auto; float64 ones under float64) whose errors the sketch bounds, or
    float32 gradients through the 12-unit bottleneck bounded alike; exact gradients for the
    candidates: the same prediction radii, classes and points as the deterministic float64 engine."""
    model = many_classes()
    network = lrcert.from_module(model, (3, 8, 8))
    cut, tail = prediction.bottleneck(network)
    assert network.layers[cut].size == 12 and tail.shape == (40, 12)
    x = _inputs((3, 8, 8), 10, 6)
    rows_per_margin = 1e-6 if way == "screened by the sketch" else 1e6  # (the bottleneck's way when any stays open)
    for p in ("l1", "l2", "linf"):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(prediction, "ROWS_PER_MARGIN", rows_per_margin)
            patch.setattr(lrcert.engine.screen, "SHARE", 1.0)
            engine = Engine(network, dtype=dtype, sketch=True, screen=False, adversarial_norm=p)
            sketched = engine.run(x)
        deterministic = Engine(network, dtype=torch.float64, guarantee="deterministic", screen=False,
                               adversarial_norm=p).run(x)
        assert (engine.work.rows > 0) == (way == "bottleneck rows") and engine.work.margins > 0
        assert engine.work.estimated > 0 and engine.work.margins < engine.work.estimated + engine.work.rows
        _same_answers(sketched, deterministic)
        for r, w in zip(sketched, deterministic):
            assert np.allclose(r.adversarial, w.adversarial, rtol=1e-9, atol=1e-12, equal_nan=True)


def test_the_bottleneck_jacobian_times_the_bottleneck_gradients_is_every_output_gradient():
    network = lrcert.from_module(many_classes(), (3, 8, 8))
    cut, tail = prediction.bottleneck(network)
    x = _inputs((3, 8, 8), 1, 7).requires_grad_(True)
    outputs = network.run(x).reshape(-1)
    jacobian = torch.stack([torch.autograd.grad(o, x, retain_graph=True)[0].reshape(-1) for o in outputs])
    bottleneck = network.run(x, until=cut).reshape(-1)
    rows = torch.stack([torch.autograd.grad(v, x, retain_graph=True)[0].reshape(-1) for v in bottleneck])
    assert torch.allclose(tail @ rows, jacobian, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shared_below", [1, 10**9], ids=["a copy per row", "batched backward passes"])
def test_the_bottleneck_rows_either_way_are_each_units_gradient(shared_below, monkeypatch):
    """reverse.unit_gradients, by per-row copies (small passes) or by batched backward passes over
    one evaluation (large ones): each unit's gradient, as one autograd pass per unit gives it."""
    from lrcert.engine import reverse

    network = lrcert.from_module(many_classes(), (3, 8, 8))
    cut, _ = prediction.bottleneck(network)
    x = _inputs((3, 8, 8), 3, 9)
    monkeypatch.setattr(reverse, "SHARED_BELOW", shared_below)
    rows = reverse.unit_gradients(Engine(network, dtype=torch.float64), network, x, cut)
    for b in range(len(x)):
        point = x[b : b + 1].clone().requires_grad_(True)
        values = network.run(point, until=cut).reshape(-1)
        want = torch.stack([torch.autograd.grad(v, point, retain_graph=True)[0].reshape(-1) for v in values])
        assert torch.allclose(rows[b], want, rtol=1e-12, atol=1e-14)


@PROPERTY_SETTINGS
@given(architectures(), st.integers(0, 2**16))
def test_sketched_radii_are_the_deterministic_ones_on_random_architectures(architecture, seed):
    model, shape = architecture
    network = lrcert.from_module(model, shape)
    sketched, deterministic = _sketched_and_deterministic(network, _inputs(shape, 4, seed))
    _same_answers(sketched, deterministic)


@pytest.mark.parametrize("name", ["oval21_cifar_base_kw", "cifar10_resnet_2b"])
def test_real_conv_nets_sketched_are_exact(shared_models, name):
    network = lrcert.load(shared_models / f"{name}.onnx")
    x = torch.from_numpy(np.load(shared_models / f"{name}.inputs.npy")[:12]).double()
    sketched, deterministic = _sketched_and_deterministic(network, x)
    _same_answers(sketched, deterministic)


@pytest.mark.slow  # (about 15 s on 2 cores)
def test_resnet18_by_default_is_the_deterministic_float64_answer():
    """torchvision's ResNet-18 (random weights, batch-norm statistics set) at 3×32×32, the
    default options (auto, the prediction radius over 1,000 classes): sketched, and every radius,
    face, prediction radius and rival class is that of the deterministic float64 engine."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from large import resnet

    model, x = resnet("resnet18", 32)
    network = lrcert.from_module(model, (3, 32, 32))
    default = Engine(network).run(x)
    assert default[0].delta > 0 and default[0].dtype == "float64"
    deterministic = Engine(network, dtype=torch.float64, guarantee="deterministic").run(x.double())
    _same_answers(default, deterministic)


# ------------------------------------------------------------------------------------ the tail bounds


def _exact_norms(network, x):
    """Every face gradient's exact ℓ∞, ℓ2, ℓ1 norms (float64, all D directions): {norm: (B, F)}."""
    engine = Engine(network, dtype=torch.float64, guarantee="deterministic", screen=False)
    with torch.no_grad():
        region = Region(engine, x)
        norms = DualNorms(region.batch, ("l1", "l2", "linf"), False)
        push(region, engine.identity(0, network.input_size), norms, region.batch)
    return region, {p: torch.cat([region.per_face(i, norms.dual(i, p)) for i in engine.nonlinear], 1)
                    for p in ("l1", "l2", "linf")}


def test_each_norms_bound_fails_no_more_often_than_its_computed_probability():
    """k = 4 directions and a per-face failure probability of 0.2, over 400 seeds: each face's floor
    as lrcert computes it (``Sketch.floors``: |z| / U for ε̂₂ and ε̂₁, |z| / (√D·U) for ε̂∞) exceeds
    the face's exact ratio |z| / ‖g‖_q no more often than 0.2; for ε̂₂ about that often (the
    chi-square tail is exact for Gaussian directions: a wrong scale of U would move the frequency far
    from it), and for ε̂∞ never more often than for ε̂₂ (√D·U ≥ √D‖g‖₂ ≥ ‖g‖₁ whenever U ≥ ‖g‖₂: a
    floor without the √D exceeds the exact ratio on most faces, and fails this test)."""
    network, shape = _network("convnet")
    x = _inputs(shape, 2, 8)
    region, exact = _exact_norms(network, x)
    k, probability, seeds = 4, 0.2, 400
    c = sketch.constant(k, probability)
    assert sketch.lower_tail(k, c) == pytest.approx(probability, rel=1e-9)
    engine = Engine(network, dtype=torch.float64, sketch=True, screen=False, sketch_directions=k)
    z = torch.cat([region.faces[i].double().abs() for i in engine.nonlinear], 1)
    faces = (exact["l2"] > 0) & (z > 0)
    ratio = {p: z[faces] / exact[p][faces] for p in ("l1", "l2", "linf")}
    failures = {"l1": 0, "l2": 0, "linf": 0}
    for seed in range(seeds):
        engine.sketch = sketch.Sketch(engine, k, seed, 1e-12)
        with torch.no_grad():
            sums = engine.sketch.measure(region).norms
        for p in failures:
            floors = engine.sketch.floors(region, sums, p, c)[faces]
            failures[p] += int((floors > ratio[p] * (1 + 1e-12)).sum())
    trials = seeds * int(faces.sum())
    tolerance = 4 * math.sqrt(probability * (1 - probability) / seeds)  # faces share directions: seeds are the samples
    for p, count in failures.items():
        assert count / trials <= probability + tolerance, (p, count / trials)
    assert abs(failures["l2"] / trials - probability) <= tolerance, failures["l2"] / trials
    assert failures["linf"] <= failures["l2"], failures


def test_the_margins_error_bound_fails_no_more_often_than_its_computed_probability():
    """The sketched bound on ‖ĝ − g‖₂ of the float32 margin gradients (prediction._Sketched.error,
    from the estimates and the exact projections g·s) is the chi-square estimator on fixed vectors:
    over 400 seeds it undershoots about as often as computed."""
    k, probability, seeds = 4, 0.2, 400
    c = sketch.constant(k, probability)
    generator = torch.Generator().manual_seed(0)
    gradients = torch.randn(30, 50, generator=generator, dtype=torch.float64)
    errors = torch.randn(30, 50, generator=generator, dtype=torch.float64)
    errors *= torch.logspace(-8, 0, 50, dtype=torch.float64)  # scales and shapes vary
    truth = torch.linalg.vector_norm(errors, dim=1)
    rows = (torch.zeros(30, dtype=torch.long), torch.arange(30))  # (one input, 30 classes)
    undershoots = 0
    for seed in range(seeds):
        directions = torch.randn(k, 50, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        sketched = prediction._Sketched((gradients @ directions.T)[None], directions, c)
        bound = sketched.error(gradients + errors, *rows)
        undershoots += int((bound < truth).sum())
    frequency = undershoots / (seeds * len(errors))
    assert abs(frequency - probability) <= 4 * math.sqrt(probability * (1 - probability) / seeds), frequency


def test_the_chi_square_tail_is_scipys():
    from scipy.stats import chi2

    for k in (1, 4, 64, 256):
        for c in (1e-3, 0.05, 0.3, 0.9):
            assert sketch.lower_tail(k, c) == pytest.approx(chi2.cdf(c * k, k), rel=1e-9, abs=1e-300)


# ------------------------------------------------------------------------------------ δ


def test_delta_grows_with_the_faces_and_shrinks_with_k():
    """At a fixed c (a fixed overshoot 1/√c), δ = (F + 2M)·P(χ²_k < c·k) shrinks with k; at a fixed
    bound, c shrinks as the count grows, each input's δ is the formula, at most the bound over the
    run's inputs, and c is the largest constant that keeps it there (a 10⁻⁶ larger c breaks it)."""
    tail = sketch.lower_tail
    assert tail(128, 0.3) < tail(64, 0.3) < tail(16, 0.3)
    network = lrcert.from_module(many_classes(), (3, 8, 8))
    engine = Engine(network, dtype=torch.float64, sketch=True)
    engine.sketch.run_size = 10
    small, large = engine.sketch.level(100), engine.sketch.level(100_000)
    assert large[0] < small[0]  # more faces: a smaller c, to keep δ
    for events, (c, delta) in ((100, small), (100_000, large)):
        assert delta == pytest.approx(events * tail(engine.sketch.k, c), rel=1e-12)
        assert delta <= 1e-12 / 10 < events * tail(engine.sketch.k, c * (1 + 1e-6))
    results = engine.run(_inputs((3, 8, 8), 5, 9))  # a run of 5 inputs
    c, delta = engine.sketch.level(network.faces + 2 * (40 - 1))  # the faces and the 39 margins, twice each
    assert delta <= 1e-12 / 5 and delta == pytest.approx(1e-12 / 5, rel=1e-6)
    assert all(r.delta == delta for r in results)


def test_deterministic_runs_report_no_delta_and_the_default_sketches_only_large_inputs():
    network, shape = _network("convnet")  # D = 128: the dense way is cheaper than 64 random directions
    assert not Engine(network).sketching
    assert all(r.guarantee == "deterministic" for r in Engine(network).run(_inputs(shape, 4, 1)))
    wide = lrcert.from_module(many_classes(), (3, 8, 8))  # D = 192
    assert not Engine(wide).sketching and Engine(wide, sketch=True).sketching
    assert not Engine(wide, guarantee="deterministic", sketch=None).sketching
    with pytest.raises(lrcert.LrcertError, match="guarantee"):
        Engine(wide, guarantee=1.5)
    with pytest.raises(lrcert.LrcertError, match="guarantee"):
        Engine(wide, guarantee="sometimes")


def test_inputs_the_deterministic_screening_leaves_are_sketched_by_default():
    """A deep MLP on 1,024 inputs (D ≥ 16·64): the bounds loosen per layer, the inputs are
    sketched, and the answers are the deterministic float64 ones."""
    torch.manual_seed(0)
    layers = [nn.Linear(1024 if k == 0 else 48, 48) if k % 2 == 0 else nn.ReLU() for k in range(14)]
    network = lrcert.from_module(nn.Sequential(*layers, nn.Linear(48, 3)).double(), (1024,))
    x = _inputs((1024,), 6, 2)
    default = Engine(network, dtype=torch.float64).run(x)
    assert all(r.delta > 0 for r in default)
    deterministic = Engine(network, dtype=torch.float64, guarantee="deterministic").run(x)
    _same_answers(default, deterministic)


def test_the_same_seed_draws_the_same_directions_and_any_seed_the_same_radii():
    network, shape = _network("pools")
    x = _inputs(shape, 6, 4)
    first = Engine(network, dtype=torch.float64, sketch=True, seed=3)
    again = Engine(network, dtype=torch.float64, sketch=True, seed=3)
    other = Engine(network, dtype=torch.float64, sketch=True, seed=4)
    assert torch.equal(first.sketch.directions(torch.float64), again.sketch.directions(torch.float64))
    assert not torch.equal(first.sketch.directions(torch.float64), other.sketch.directions(torch.float64))
    _same_answers(first.run(x), other.run(x))


def test_inputs_the_sketch_leaves_to_the_dense_way_are_deterministic(monkeypatch):
    """With no exact gradients allowed past the first round, sketched inputs with faces still
    open go the dense way: they report no δ, their prediction radius too is the deterministic one."""
    monkeypatch.setattr(lrcert.engine.screen, "SHARE", 0.0)
    network = lrcert.from_module(many_classes(), (3, 8, 8))
    x = _inputs((3, 8, 8), 12, 10)
    results = Engine(network, dtype=torch.float64, sketch=True, screen=False).run(x)
    assert any(r.delta == 0 for r in results)
    deterministic = Engine(network, dtype=torch.float64, guarantee="deterministic", screen=False).run(x)
    _same_answers(results, deterministic)
