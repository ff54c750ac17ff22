"""The engine's radii: exact on hand-computed networks, equal to an independent float64
computation on random networks, and sound and tight by sampling."""

from __future__ import annotations

import collections
import copy
import math

import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

import lrcert
from lrcert.engine import Engine
from lrcert.engine import plan as planning
from reference import close, faces_of, module_input, pattern_of, point_on_unit_sphere, reference_radii, relative_error


def _set(layer: nn.Linear, weight, bias) -> nn.Linear:
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight, dtype=torch.float64))
        layer.bias.copy_(torch.tensor(bias, dtype=torch.float64))
    return layer


def _certify(model, x, **kw):
    return lrcert.certify(model.double(), torch.tensor(x, dtype=torch.float64), dtype=torch.float64, **kw)


# ------------------------------------------------------------------------------------ by hand


def test_single_relu_unit_radii_by_hand():
    # z = 3 x1 + 4 x2 - 5 at x = 0: |z| = 5, ‖g‖∞ = 4, ‖g‖₂ = 5, ‖g‖₁ = 7
    model = nn.Sequential(_set(nn.Linear(2, 1), [[3.0, 4.0]], [-5.0]), nn.ReLU())
    (result,) = _certify(model, [[0.0, 0.0]])
    assert result.radius["l1"] == pytest.approx(5 / 4, rel=1e-12)
    assert result.radius["l2"] == pytest.approx(1.0, rel=1e-12)
    assert result.radius["linf"] == pytest.approx(5 / 7, rel=1e-12)
    binding = result.binding["l2"]
    assert (binding.layer, binding.kind, binding.unit, binding.value) == ("1", "relu", 0, -5.0)


def test_leaky_relu_two_layers_by_hand():
    # z1 = x1 (slope 0.1 below 0); z2 = a1 + x2 + 0.3. At x = (-1, 0): z1 = -1, g1 = (1, 0);
    # a1 = -0.1, z2 = 0.2, g2 = (0.1, 1).
    model = nn.Sequential(
        _set(nn.Linear(2, 2), [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0]),
        nn.LeakyReLU(0.1),
        _set(nn.Linear(2, 1), [[1.0, 1.0]], [0.3]),
        nn.LeakyReLU(0.1),
    )
    (result,) = _certify(model, [[-1.0, 0.0]])
    # unit 2 of the first layer is x2 = 0: on a boundary with a nonzero gradient
    assert result.radius == {"l1": 0.0, "l2": 0.0, "linf": 0.0}
    assert result.binding["l2"].unit == 1 and result.binding["l2"].kind == "leaky_relu"

    (result,) = _certify(model, [[-1.0, 0.05]])  # now z = (-1, 0.05), a = (-0.1, 0.05), z2 = 0.25
    g2 = torch.tensor([0.1, 1.0], dtype=torch.float64)
    expected_l2 = min(1.0, 0.05, 0.25 / float(g2.norm()))
    assert result.radius["l2"] == pytest.approx(expected_l2, rel=1e-12)
    assert result.radius["linf"] == pytest.approx(min(1.0, 0.05, 0.25 / 1.1), rel=1e-12)


def test_zero_gradient_units_are_not_faces():
    # unit 0 is constant (zero weights): z = 0 and g = 0 everywhere, so it never changes
    model = nn.Sequential(_set(nn.Linear(2, 2), [[0.0, 0.0], [1.0, 0.0]], [0.0, -2.0]), nn.ReLU())
    (result,) = _certify(model, [[0.0, 0.0]])
    assert result.radius["l2"] == pytest.approx(2.0, rel=1e-12)
    assert result.binding["l2"].unit == 1


def test_point_on_a_boundary_has_radius_zero():
    model = nn.Sequential(_set(nn.Linear(2, 1), [[1.0, 1.0]], [0.0]), nn.ReLU())
    (result,) = _certify(model, [[0.5, -0.5]])
    assert result.radius == {"l1": 0.0, "l2": 0.0, "linf": 0.0}


def test_affine_model_is_unbounded():
    (result,) = _certify(nn.Sequential(nn.Linear(3, 2)), [[0.1, 0.2, 0.3]])
    assert all(math.isinf(r) for r in result.radius.values())
    assert result.binding == {"l1": None, "l2": None, "linf": None}


def test_max_pool_window_faces_by_hand():
    model = nn.Sequential(nn.MaxPool2d(2))
    # window (3, 1, 0, 0): faces 3-1 (g = e0 - e1) and 3-0 twice (g = e0 - e2, e0 - e3)
    (result,) = _certify(model, [[[[3.0, 1.0], [0.0, 0.0]]]])
    assert result.radius["l2"] == pytest.approx(2 / math.sqrt(2), rel=1e-12)
    assert result.radius["l1"] == pytest.approx(2.0, rel=1e-12)
    assert result.radius["linf"] == pytest.approx(1.0, rel=1e-12)
    binding = result.binding["l2"]
    assert binding.kind == "maxpool" and binding.winner == (0, 0, 0) and binding.competitor == (0, 0, 1)
    # a tie inside the window: the input sits on a boundary
    (result,) = _certify(model, [[[[1.0, 1.0], [0.0, 0.0]]]])
    assert result.radius["l2"] == 0.0 and result.binding["l2"].value == 0.0


def test_directional_radius_by_hand():
    model = nn.Sequential(_set(nn.Linear(2, 2), [[1.0, 0.0], [0.0, 1.0]], [-1.0, 2.0]), nn.ReLU())
    x = [[0.0, 0.0]]
    forward, backward = _certify(model, x * 2, directions=torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=torch.float64))
    assert forward.direction == pytest.approx(1.0) and forward.direction_binding.unit == 0
    assert backward.direction == pytest.approx(2.0) and backward.direction_binding.unit == 1
    (away,) = _certify(model, x, directions=torch.tensor([[-1.0, 1.0]], dtype=torch.float64))
    assert math.isinf(away.direction)


# ------------------------------------------------------------------------------------ random networks


def _mlp(seed: int, leaky: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    act = (lambda: nn.LeakyReLU(0.05)) if leaky else nn.ReLU
    return nn.Sequential(nn.Linear(6, 20), act(), nn.Linear(20, 16), act(), nn.Linear(16, 12), act(), nn.Linear(12, 3))


class _ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 6, 3, stride=1, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=2)
        self.relu2 = nn.ReLU()
        self.avg = nn.AvgPool2d(2)
        self.fc = nn.Linear(6 * 2 * 2, 4)

    def forward(self, x):
        x = self.pool(self.relu1(self.bn1(self.conv1(x))))
        x = x + self.relu2(self.conv2(x))  # residual add
        return self.fc(self.avg(x).flatten(1))


class _PoolNet(nn.Module):
    """Max-pools of every geometry the window views must handle (dilated and padded, ceil mode
    with a rectangular kernel and unequal strides) and 1×1 convolutions (matrix products over
    channels), strided and not."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.relu = nn.ReLU()
        self.dilated = nn.MaxPool2d(3, stride=2, padding=1, dilation=2)
        self.point = nn.Conv2d(3, 4, 1)
        self.relu2 = nn.ReLU()
        self.ceil = nn.MaxPool2d((2, 3), stride=(1, 2), ceil_mode=True)
        self.shortcut = nn.Conv2d(2, 4, 1, stride=(3, 5))
        self.fc = nn.Linear(4 * 3 * 2, 3)

    def forward(self, x):
        h = self.ceil(self.relu2(self.point(self.dilated(self.relu(self.conv(x))))))
        return self.fc((h + self.shortcut(x)).flatten(1))


class _Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 16)
        self.relu = nn.ReLU()
        self.up = nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1)
        self.relu2 = nn.ReLU()

    def forward(self, x):
        return self.relu2(self.up(self.relu(self.fc(x)).reshape(-1, 4, 2, 2))).sum(dim=(1, 2, 3))


def _randomize_batchnorm(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


NETWORKS = {
    "mlp": (lambda: _mlp(0), (6,)),
    "leaky_mlp": (lambda: _mlp(1, leaky=True), (6,)),
    "convnet": (lambda: (torch.manual_seed(2), _randomize_batchnorm(_ConvNet()))[1], (2, 8, 8)),
    "decoder": (lambda: (torch.manual_seed(3), _Decoder())[1], (3,)),
    "pools": (lambda: (torch.manual_seed(4), _PoolNet())[1], (2, 9, 9)),
}


@pytest.mark.parametrize("screen", [True, False], ids=["screened", "dense"])
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_radii_equal_an_independent_float64_computation(name, screen):
    make, shape = NETWORKS[name]
    model = make().double().eval()
    x = torch.randn(6, *shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    results = lrcert.certify(model, x, dtype=torch.float64, screen=screen)
    for k, result in enumerate(results):
        expected = reference_radii(model, x[k : k + 1])
        for p in ("l1", "l2", "linf"):
            assert relative_error(result.radius[p], expected[p]) < 1e-9, (name, k, p, result.radius[p], expected[p])


@pytest.mark.parametrize("screen", [True, False], ids=["screened", "dense"])
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_float32_radii_are_close(name, screen):
    """float32 radii within 2·10⁻⁴ of the float64 reference's, every norm: the largest error measured over these
    networks and inputs is 7.0·10⁻⁵ (decoder; float32's 6·10⁻⁸ rounding, magnified by the cancellation
    in a small binding z), so the tolerance is about three times it, and no absolute allowance."""
    make, shape = NETWORKS[name]
    model = make().eval()
    x = torch.randn(6, *shape, generator=torch.Generator().manual_seed(7))
    fast = lrcert.certify(model, x, dtype=torch.float32, screen=screen)
    twin = copy.deepcopy(model).double()
    for k, result in enumerate(fast):
        exact = reference_radii(twin, x[k : k + 1].double())
        for p in ("l1", "l2", "linf"):
            assert close(result.radius[p], exact[p], 2e-4), (name, k, p, result.radius[p], exact[p])


def _worst_direction(g: torch.Tensor, z: float, p: str) -> torch.Tensor:
    """The unit-``p``-norm direction that moves face value ``z`` towards 0 fastest."""
    sign = -1.0 if z > 0 else 1.0
    if p == "l2":
        return sign * g / g.norm()
    if p == "linf":
        return sign * torch.sign(g)
    d = torch.zeros_like(g)
    k = int(g.abs().argmax())
    d[k] = sign * torch.sign(g[k])
    return d


def _face_gradient(model: nn.Module, x: torch.Tensor, layer_name: str, unit: int) -> torch.Tensor:
    x, z = module_input(model, x, layer_name)
    (g,) = torch.autograd.grad(z.reshape(-1)[unit], x)
    return g.reshape(-1)


@pytest.mark.parametrize("name", ["mlp", "leaky_mlp", "convnet"])
@pytest.mark.parametrize("p", ["l1", "l2", "linf"])
def test_radius_is_sound_and_tight_by_sampling(name, p):
    make, shape = NETWORKS[name]
    model = make().double().eval()
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(4, *shape, generator=generator, dtype=torch.float64)
    results = lrcert.certify(model, x, dtype=torch.float64, norms=(p,))
    checked_tightness = 0
    for k, result in enumerate(results):
        radius = result.radius[p]
        center = x[k : k + 1]
        base = pattern_of(model, center)
        d = center.numel()
        # inside: points on the sphere of radius ε̂(1 − 1e-3), the hardest place to stay inside
        for _ in range(200):
            v = point_on_unit_sphere(d, p, generator)
            inside = center + radius * (1 - 1e-3) * v.reshape(center.shape)
            assert pattern_of(model, inside) == base
        # just outside, along the binding face's worst direction: the pattern changes
        binding = result.binding[p]
        if binding.kind == "maxpool":
            continue
        g = _face_gradient(model, center, binding.layer, binding.unit)
        outside = center + radius * (1 + 1e-3) * _worst_direction(g, binding.value, p).reshape(center.shape)
        assert pattern_of(model, outside) != base
        checked_tightness += 1
    assert checked_tightness > 0


@pytest.mark.parametrize("name", ["convnet", "mlp"])
def test_chunking_over_inputs_and_directions_gives_identical_radii(name, monkeypatch):
    monkeypatch.setattr(planning, "LAYER_COST", 0)  # (the small mlp skips inactive units as a large one would)
    make, shape = NETWORKS[name]
    model = make().double()
    network = lrcert.from_module(model, shape)
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    whole = Engine(network, dtype=torch.float64, memory_bytes=1 << 30, screen=False).run(x)
    memory = 1 << 20 if name == "mlp" else network.input_size * 600  # the convnet: chunks of directions
    tiny = Engine(network, dtype=torch.float64, batch_size=2, memory_bytes=memory, screen=False)
    plan = tiny.plan(len(x))
    if name == "mlp":  # one input at a time, dense layers skip inactive units
        assert tiny.sparse and plan.group == 1 and plan.batch_size == 2
    else:
        assert plan.directions_per_pass < network.input_size  # really chunks the directions
    pieces = [r for batch in tiny.stream([x], n_inputs=len(x)) for r in batch]
    assert [r.index for r in pieces] == list(range(5))
    for a, b in zip(whole, pieces):
        assert a.radius == pytest.approx(b.radius, rel=1e-12)
        assert a.pattern == b.pattern


def test_pattern_digest_tells_regions_apart():
    model = _mlp(0).double()
    x = torch.randn(1, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    (result,) = lrcert.certify(model, x, dtype=torch.float64, norms=("l2",))
    nudged = x + 0.5 * result.radius["l2"] * torch.ones_like(x) / math.sqrt(6)
    far = x + 50 * result.radius["l2"]
    same, other = lrcert.certify(model, torch.cat([nudged, far]), dtype=torch.float64, norms=("l2",))
    assert same.pattern == result.pattern
    assert other.pattern != result.pattern


def test_precision_warning_flags_faces_within_float32_rounding_of_zero():
    # z = x1 - x2 with x1 = 1000, x2 = 999.9999: |z| = 1e-4 against terms of size 1000.
    # float32 stores 999.9999 as 999.99988, so its radius is 20 % off; float64 gets it right.
    model = nn.Sequential(_set(nn.Linear(2, 1), [[1.0, -1.0]], [0.0]), nn.ReLU())
    x = torch.tensor([[1000.0, 999.9999], [1.0, 0.5]], dtype=torch.float64)
    fast = lrcert.certify(model.float(), x.float(), dtype=torch.float32)
    exact = lrcert.certify(model.double(), x, dtype=torch.float64)
    assert [r.precision_warning for r in fast] == [True, False]
    assert [r.precision_warning for r in exact] == [False, False]
    assert exact[0].radius["l2"] == pytest.approx((1000.0 - 999.9999) / math.sqrt(2), rel=1e-9)
    assert abs(fast[0].radius["l2"] / exact[0].radius["l2"] - 1) > 0.1  # the flag was warranted
    assert fast[1].radius["l2"] == pytest.approx(exact[1].radius["l2"], rel=1e-6)


def test_exact_zero_faces_are_boundaries_not_precision_warnings():
    (result,) = _certify(nn.Sequential(nn.MaxPool2d(2)), [[[[1.0, 1.0], [0.0, 0.0]]]])
    assert result.radius["l2"] == 0.0 and not result.precision_warning


def test_leaky_slopes_stay_exact_in_float64():
    """The frozen slope of a LeakyReLU(0.3) is float64's 0.3, not float32's 0.30000001 (which moved
    radii by about 4e-8)."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(5, 8), nn.LeakyReLU(0.3), nn.Linear(8, 8), nn.LeakyReLU(0.3), nn.Linear(8, 1), nn.ReLU())
    model = model.double()
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for k, result in enumerate(lrcert.certify(model, x, dtype=torch.float64)):
        expected = reference_radii(model, x[k : k + 1])
        assert all(relative_error(result.radius[p], expected[p]) < 1e-12 for p in expected), (k, result.radius, expected)


def test_cpu_batches_hold_no_more_input_state_than_the_memory_budget(monkeypatch):
    """Large networks get smaller CPU batches (a batch of 256 ResNet-50 inputs would need ~300 GB);
    results do not depend on it."""
    make, shape = NETWORKS["convnet"]
    network = lrcert.from_module(make().double(), shape)
    x = torch.randn(25, *shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    engine = Engine(network, dtype=torch.float64)
    assert engine.plan(1000).batch_size == 256  # the default where memory is plentiful
    monkeypatch.setattr(lrcert.runtime.devices, "cpu_state_budget", lambda: 10 * planning.bytes_per_input(engine) + 1)
    assert engine.plan(1000).batch_size == 10
    assert Engine(network, dtype=torch.float64, batch_size=64).plan(1000).batch_size == 64  # asked for: as asked
    small = [r for batch in engine.stream([x], n_inputs=len(x)) for r in batch]
    whole = Engine(network, dtype=torch.float64, batch_size=25).run(x)
    assert [r.index for r in small] == list(range(25))
    for a, b in zip(small, whole):
        assert a.radius == pytest.approx(b.radius, rel=1e-12) and a.pattern == b.pattern


class _Calls(TorchDispatchMode):
    """Per aten operator: how often it ran, and the most rows (first-argument entries) it got."""

    def __init__(self):
        super().__init__()
        self.count, self.rows = collections.Counter(), collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        self.count[name] += 1
        if args and isinstance(args[0], torch.Tensor) and args[0].dim():
            self.rows[name] = max(self.rows[name], args[0].shape[0])
        return func(*args, **(kwargs or {}))


def test_frozen_slopes_overwrite_only_tangents_nobody_else_reads():
    """The CPU engine multiplies a ReLU's input tangent by the frozen slopes in place when the ReLU
    is its last reader: on the convnet it does, with radii still equal to the reference; where the
    tangent is the caller's seeds or a view of them (a network that starts with a ReLU), it does not
    touch them, and the radii are still exact."""
    make, shape = NETWORKS["convnet"]
    model = make().double().eval()
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with _Calls() as calls:
        results = lrcert.certify(model, x, dtype=torch.float64, screen=False)
    assert calls.count["aten.mul_.Tensor"] > 0
    for k, result in enumerate(results):
        assert relative_error(result.radius["l2"], reference_radii(model, x[k : k + 1])["l2"]) < 1e-9

    torch.manual_seed(6)
    shape = (2, 4)
    head = lambda: [nn.Conv1d(2, 3, 2), nn.ReLU(), nn.Flatten(), nn.Linear(9, 3)]  # noqa: E731 (a conv: no skipping of inactive units)
    for model in (nn.Sequential(nn.ReLU(), *head()), nn.Sequential(nn.Flatten(), nn.ReLU(), nn.Unflatten(1, shape), *head())):
        model = model.double()
        x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
        engine = Engine(lrcert.from_module(model, shape), dtype=torch.float64, screen=False)
        directions = torch.randn(4, *shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
        kept = directions.clone()
        steps = engine.along(x, directions)
        assert torch.equal(directions, kept)
        for k, (step, _) in enumerate(steps):  # the first face reached along d: min over z·ż < 0 of −z/ż
            z, rate = torch.func.jvp(lambda point: faces_of(model, point), (x[k : k + 1],), (directions[k : k + 1],))
            ahead = z * rate < 0
            assert step == pytest.approx((-z[ahead] / rate[ahead]).min().item(), rel=1e-9)
        for k, result in enumerate(engine.run(x)):
            assert relative_error(result.radius["linf"], reference_radii(model, x[k : k + 1])["linf"]) < 1e-9


@pytest.mark.parametrize("name", ["convnet", "pools"])
def test_deeper_stages_take_several_groups_of_inputs_at_once_with_identical_radii(name):
    """Where the tangents have shrunk, the CPU engine pushes several groups of inputs through the
    deeper layers together: the radii and binding faces are those of one group at a time, and of
    the independent reference."""
    make, shape = NETWORKS[name]
    model = make().double().eval()
    network = lrcert.from_module(model, shape)
    x = torch.randn(7, *shape, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    memory = network.input_size * 600  # a few directions and one input per pass
    staged = Engine(network, dtype=torch.float64, memory_bytes=memory, screen=False)
    plan = staged.plan(len(x))
    assert staged.stages and plan.group == 1 and plan.directions_per_pass < network.input_size
    flat = Engine(network, dtype=torch.float64, memory_bytes=memory, screen=False)
    flat.stages = []
    with _Calls() as calls:
        together = staged.run(x)
    products = [rows for name, rows in calls.rows.items() if name.startswith(("aten.convolution", "aten.mm", "aten.bmm"))]
    assert max(products) > plan.directions_per_pass * plan.group  # the deeper layers did take more inputs
    for a, b, k in zip(together, flat.run(x), range(len(x))):
        assert a.radius == pytest.approx(b.radius, rel=1e-12)
        assert a.binding == b.binding
        expected = reference_radii(model, x[k : k + 1])
        assert all(relative_error(a.radius[p], expected[p]) < 1e-9 for p in ("l1", "l2", "linf"))
