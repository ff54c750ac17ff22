"""``lrcert.stability``: the expected distortion against torch.autograd in float64 on the same samples,
the exact maximum and expectation of 2-D networks (every region the ball meets, enumerated without
lrcert) between what the search finds and the certified bound, the bound's soundness on random
networks of every family, its zeros, and the expectation interval's failure probability."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stability_reference import autograd_distortions, exact_measures, regions_in_square
from torch import nn

import lrcert
from lrcert.errors import LrcertError
from lrcert.models.load import from_module
from lrcert.stability import Ball, Stability, parse_eps
from lrcert.stability.expected import hoeffding_width, samples_of


def _weights(k: int, target: int) -> torch.Tensor:
    w = torch.zeros(k, dtype=torch.float64)
    w[target] = 1
    return w


def mlp(seed: int, inputs: int = 6, hidden: int = 10, outputs: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, outputs)).double()


def cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4, 3)).double()


# ------------------------------------------------------------------------------------ the expectation


def _own_and_regions(model: nn.Module, x: torch.Tensor, points: torch.Tensor) -> tuple[float, int]:
    """The share of points with x's pattern (ReLU signs, max-pool arg-maxes) and the distinct patterns
    among them (forward hooks on the module's own layers)."""
    def pattern(p):
        found = []

        def pooled(mod, inp, out):  # a max-pool's piece: each window's arg-max
            _, where = nn.functional.max_pool2d(inp[0], mod.kernel_size, mod.stride, mod.padding, return_indices=True)
            found.append(where.reshape(-1))

        hooks = [m.register_forward_hook(lambda mod, inp, out: found.append((inp[0] > 0).reshape(-1)))
                 for m in model.modules() if isinstance(m, nn.ReLU)]
        hooks += [m.register_forward_hook(pooled) for m in model.modules() if isinstance(m, nn.MaxPool2d)]
        with torch.no_grad():
            model(p.unsqueeze(0))
        for h in hooks:
            h.remove()
        return tuple(torch.cat(found).tolist())

    own = pattern(x)
    patterns = [pattern(p) for p in points]
    return sum(p == own for p in patterns) / len(points), len(set(patterns))


@pytest.mark.parametrize("make, shape, norm, box", [(mlp, (6,), "linf", None), (mlp, (6,), "l2", None),
                                                    (cnn, (1, 6, 6), "linf", (0.0, 1.0))], ids=["mlp-linf", "mlp-l2", "cnn-box"])
def test_expected_distortion_equals_autograd_in_float64_on_the_same_samples(make, shape, norm, box):
    model = make(0)
    x = torch.rand(3, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    eps = 0.4 if norm == "linf" else 0.8
    results = Stability(from_module(model, shape), eps=eps, norm=norm, box=box, samples=150, budget=40, seed=5,
                        dtype=torch.float64).run(x, numbers=[7, 8, 9])
    for row, result, number in zip(x, results, (7, 8, 9)):
        points = samples_of(Ball(norm, eps, box), row, 150, 5, number)
        assert result.target == int(model(row.unsqueeze(0)).argmax())
        reference = autograd_distortions(model, row, points, _weights(3, result.target), 1)
        assert result.index == number
        assert math.isclose(result.expected, reference.mean(), rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(result.stderr, reference.std(ddof=1) / math.sqrt(150), rel_tol=1e-7, abs_tol=1e-12)
        assert result.quantiles["max"] == pytest.approx(reference.max(), rel=1e-9, abs=1e-12)
        own, regions = _own_and_regions(model, row, points)
        assert (result.own, result.regions) == (own, regions)
        assert result.max_found >= reference.max() - 1e-12  # (the samples count among the points seen)
        if box is not None:
            assert bool(((points >= 0) & (points <= 1)).all())


def test_draws_do_not_depend_on_the_batch():
    network = from_module(mlp(2), (6,))
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    together = Stability(network, eps=0.3, samples=200, budget=60).run(x)
    alone = [Stability(network, eps=0.3, samples=200, budget=60).run(x[k : k + 1], numbers=[k])[0] for k in range(4)]
    assert [r.expected for r in together] == pytest.approx([r.expected for r in alone], rel=1e-12)
    assert [r.max_found for r in together] == pytest.approx([r.max_found for r in alone], rel=1e-12)


# ------------------------------------------------------------------------------------ 2-D: every region


def _two_d(seed: int, kind: str) -> nn.Module:
    torch.manual_seed(seed)
    act = {"relu": nn.ReLU, "leaky": lambda: nn.LeakyReLU(0.1)}[kind]
    layers = [nn.Linear(2, 12), act(), nn.Linear(12, 12), act(), nn.Linear(12, 3)]
    return nn.Sequential(*layers).double()


def test_two_d_exact_maximum_lies_between_search_and_bound_and_the_search_finds_it():
    """The exact maximum over the square (every region it meets, clipped exactly): found ≤ exact ≤
    bound on every input, and the search alone (one sample beside it) finds it on at least 90 %;
    E[Δ] from 2,000 samples within 5 standard errors of the exact area-weighted expectation, and
    inside its Hoeffding interval."""
    hits, total = 0, 0
    for seed in range(12):
        model = _two_d(seed, "leaky" if seed % 4 == 0 else "relu")
        network = from_module(model, (2,))
        x = torch.randn(4, 2, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
        searched = Stability(network, eps=0.3, samples=1, budget=400, dtype=torch.float64).run(x)
        sampled = Stability(network, eps=0.3, samples=2000, budget=40, dtype=torch.float64).run(x)
        for row, found, r in zip(x, searched, sampled):
            exact_max, exact_mean = exact_measures(model, row.numpy(), 0.3, _weights(3, r.target))
            for result in (found, r):
                assert result.max_found <= exact_max * (1 + 1e-9) + 1e-12
                assert exact_max <= result.max_bound * (1 + 1e-9) + 1e-12
            assert abs(r.expected - exact_mean) <= 5 * r.stderr + 1e-12
            if r.interval is not None:
                assert r.interval[0] <= exact_mean <= r.interval[1]
            hits += math.isclose(found.max_found, exact_max, rel_tol=1e-9, abs_tol=1e-12)
            total += 1
    assert hits >= 0.9 * total, (hits, total)


def test_two_d_regions_tile_the_square():
    """The reference itself: the regions' areas sum to the square's, and each has one gradient."""
    model = _two_d(1, "relu")
    regions = regions_in_square(model, np.array([0.1, -0.2]), 0.5, _weights(3, 0))
    assert math.isclose(sum(area for area, _ in regions), 1.0, rel_tol=1e-9) and len(regions) > 3


# ------------------------------------------------------------------------------------ the bound


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.inner, self.head = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1), nn.Linear(27, 3)

    def forward(self, x):
        h = torch.relu(self.first(x))
        h = torch.relu(h + self.inner(h))
        return self.head(nn.functional.avg_pool2d(h, 2).flatten(1))


class ClipAbs(nn.Module):
    """ReLU6, |·| and Hardtanh: piecewise-linear units of two kinks and of a negative slope."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)])

    def forward(self, x):
        first, second, third, head = self.layers
        return head(nn.functional.hardtanh(third(torch.abs(second(nn.functional.relu6(first(x)))))))


class MaxOfTwo(nn.Module):
    """An elementwise max (and min) of two input-dependent tensors: the layer list's Maximum."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.head = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.minimum(torch.maximum(self.a(x), self.b(x)), self.c(x)))


class Recurrent(nn.Module):
    def __init__(self, features: int = 2):
        super().__init__()
        self.rnn, self.head = nn.RNN(features, 5, nonlinearity="relu", batch_first=True), nn.Linear(5, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def _family(kind: str) -> tuple[nn.Module, tuple[int, ...]]:
    if kind == "dense":
        return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.LeakyReLU(0.2), nn.Linear(8, 3)), (5,)
    if kind == "conv-maxpool":
        return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(18, 3)), (1, 6, 6)
    if kind == "residual-avgpool":
        return Residual(), (1, 6, 6)
    if kind == "relu6-abs":
        return ClipAbs(), (4,)
    if kind == "max-min":
        return MaxOfTwo(), (4,)
    return Recurrent(), (4, 2)


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(kind=st.sampled_from(["dense", "conv-maxpool", "residual-avgpool", "relu6-abs", "max-min", "rnn"]),
       seed=st.integers(0, 10_000), eps=st.sampled_from([0.01, 0.1, 0.5, 2.0]), norm=st.sampled_from(["linf", "l2"]),
       target=st.sampled_from(["predicted", "margin", 2]))
def test_the_bound_is_never_below_any_distortion_seen(kind, seed, eps, norm, target):
    """On random networks of every family (dense with LeakyReLU, conv with max-pool, residual with
    average pooling, ReLU6, Abs and Hardtanh, a max and a min of two branches, a ReLU RNN): max found ≤
    max bound, and so is every sample's Δ."""
    torch.manual_seed(seed)
    model, shape = _family(kind)
    model = model.double()
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    analysis = Stability(from_module(model, shape), eps=eps, norm=norm, samples=64, budget=60, target=target, dtype=torch.float64)
    for r in analysis.run(x):
        assert r.max_found <= r.max_bound * (1 + 1e-9) + 1e-12, (r.max_found, r.max_bound)
        assert r.quantiles["max"] <= r.max_bound * (1 + 1e-9) + 1e-12
        assert 0 <= r.free <= r.units


def test_the_bound_is_zero_exactly_when_it_should_be():
    model = mlp(4)
    network = from_module(model, (6,))
    x = torch.rand(3, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    radius = min(r.radius["linf"] for r in lrcert.certify(network, x, norms=("linf",), dtype=torch.float64))
    inside = Stability(network, eps=radius / 2, samples=50, budget=40).run(x)  # the ball in the region: Δ ≡ 0
    assert all(r.max_bound == 0 and r.inside and r.max_found == 0 and r.expected == 0 for r in inside)
    assert all(r.bound_by == "region" and r.own == 1 for r in inside)
    tiny = Stability(network, eps=1e-9, samples=20, budget=20).run(x)  # every unit proven fixed by the intervals
    assert all(r.max_bound == 0 and r.free == 0 for r in tiny)
    wide = Stability(network, eps=5.0, samples=200, budget=100).run(x)  # units change: the bound is positive
    assert all(r.max_found > 0 and r.max_bound >= r.max_found and r.free > 0 for r in wide)
    affine = from_module(nn.Sequential(nn.Linear(6, 3)).double(), (6,))  # no unit at all: Δ ≡ 0 anywhere
    assert all(r.max_bound == 0 and r.max_found == 0 for r in Stability(affine, eps=3.0, samples=10, budget=10).run(x))


def test_a_vacuous_bound_is_flagged():
    """Deep random layers at a large ε: the intervals prove nothing, and the bound says so."""
    torch.manual_seed(0)
    layers = []
    for _ in range(6):
        layers += [nn.Linear(8, 8), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(8, 2)).double()
    results = Stability(from_module(model, (8,)), eps=10.0, samples=20, budget=20).run(torch.randn(2, 8, dtype=torch.float64))
    assert all(r.vacuous and r.interval is None for r in results)


# ------------------------------------------------------------------------------------ failure probability


def test_the_expectation_interval_fails_no_more_often_than_its_delta():
    """The tail bound itself, measured: over 300 seeded runs on a 2-D network whose exact E[Δ] is
    known, the Hoeffding interval at δ = 0.2 misses the exact expectation in at most 20 % of runs
    (Hoeffding is conservative: the observed rate is far below); its width is the formula's."""
    model = _two_d(5, "relu")
    x = torch.tensor([[0.2, -0.1]], dtype=torch.float64)
    network = from_module(model, (2,))
    misses, runs = 0, 300
    exact = None
    for seed in range(runs):
        r = Stability(network, eps=0.4, samples=32, budget=40, seed=seed, interval_delta=0.2).run(x)[0]
        if exact is None:
            exact = exact_measures(model, x[0].numpy(), 0.4, _weights(3, r.target))[1]
        assert r.interval_delta == 0.2 and r.interval is not None
        width = hoeffding_width(r.max_bound, 32, 0.2)
        assert r.interval == (max(0.0, r.expected - width), min(r.max_bound, r.expected + width))
        misses += not (r.interval[0] <= exact <= r.interval[1])
    assert misses <= 0.2 * runs, misses


def test_hoeffding_width_is_the_formula():
    assert hoeffding_width(2.0, 100, 0.05) == pytest.approx(2.0 * math.sqrt(math.log(40) / 200))


# ------------------------------------------------------------------------------------ inputs


@pytest.mark.parametrize("text, value", [("8/255", 8 / 255), ("0.03", 0.03), (0.5, 0.5), ("1e-3", 1e-3)])
def test_eps_as_users_write_it(text, value):
    assert parse_eps(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["-1", "0", "abc", "1/0", "inf", "nan", "8/-255"])
def test_bad_eps_is_refused_in_one_line(text):
    with pytest.raises(LrcertError, match="is not a positive number.*Fix: write --eps"):
        parse_eps(text)


def test_bad_targets_and_balls_outside_the_box_are_refused():
    network = from_module(mlp(0), (6,))
    x = torch.rand(2, 6, dtype=torch.float64)
    with pytest.raises(LrcertError, match="names a class the model lacks"):
        Stability(network, eps=0.1, target=7).run(x)
    with pytest.raises(LrcertError, match="needs labels"):
        Stability(network, eps=0.1, target="label").run(x)
    with pytest.raises(LrcertError, match="outside --box"):
        Stability(network, eps=0.1, box=(0.0, 1.0)).run(x + 2)


# ------------------------------------------------------------------------------------ devices


def test_the_analysis_makes_no_tensor_on_the_default_device():
    """Under ``torch.device("meta")`` a tensor made without an explicit device lands on "meta" and
    any arithmetic with the real ones raises: every tensor of the analysis names its device."""
    for make, shape in ((mlp, (6,)), (cnn, (1, 6, 6))):
        network = from_module(make(1), shape)
        x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        expected = Stability(network, eps=0.2, samples=64, budget=60).run(x)
        with torch.device("meta"):
            got = Stability(network, eps=0.2, samples=64, budget=60).run(x)
        assert [r.record() for r in got] == [r.record() for r in expected]


def test_host_waits_are_per_batch_not_per_sample_or_input():
    from test_devices import CountSyncs

    network = from_module(cnn(2), (1, 6, 6))

    def waits(inputs: int, samples: int) -> int:
        x = torch.rand(inputs, 1, 6, 6, generator=torch.Generator().manual_seed(inputs), dtype=torch.float64)
        analysis = Stability(network, eps=0.3, samples=samples, budget=60)
        with CountSyncs() as counter:
            analysis.run(x)
        return counter.count

    few = waits(2, 64)
    assert waits(2, 1024) == few and waits(8, 64) == few, (few, waits(2, 1024), waits(8, 64))
