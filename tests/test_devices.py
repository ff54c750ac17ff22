"""GPU readiness, proven on a CPU: no tensor made on the default device, true float32 while lrcert
computes (and the user's settings restored), no host synchronisation per input, memory plans,
and the batched result assembly equal to the per-input reference."""

from __future__ import annotations

import collections
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import PROJECT_MODELS
from reference import reference_radii, relative_error
from torch.utils._python_dispatch import TorchDispatchMode
from typer.testing import CliRunner

import lrcert
from lrcert.runtime import devices
from lrcert.results import regions
from lrcert.engine import plan as planning
from lrcert.engine import screen
from lrcert.cli import app
from lrcert.engine import Engine, pattern_bytes
from lrcert.results.plot import make_plane, picture
from lrcert.training.train import Settings, build_network, fit

runner = CliRunner()


class Residual(nn.Module):
    """Conv, max-pool, LeakyReLU, a residual add and a dense head: every layer family the engine pushes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.inner = nn.Conv2d(6, 6, 3, padding=1)
        self.act = nn.LeakyReLU(0.1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(6 * 2 * 2, 3)

    def forward(self, x):
        x = self.pool(self.relu(self.conv(x)))
        x = x + self.act(self.inner(x))
        return self.head(x.flatten(1))


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)).eval()


def cnn() -> nn.Module:
    torch.manual_seed(1)
    return Residual().eval()


def inputs(n: int, seed: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------ no stray tensors
# Under ``torch.device("meta")`` a tensor created without an explicit device lands on "meta", and
# any arithmetic mixing it with the real (CPU) tensors of the network or the data raises.


def _radii(results):
    return [r.radius for r in results]


def affine() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 3)).eval()


@pytest.mark.parametrize("make", [mlp, cnn, affine], ids=["mlp", "cnn", "affine"])
def test_certify_makes_no_tensor_on_the_default_device(make):
    model, x = make(), inputs(5)
    network = lrcert.from_module(model, (3, 4, 4))
    directions = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    expected = lrcert.certify(network, x, directions=directions)
    with torch.device("meta"):
        got = lrcert.certify(network, x, directions=directions)
        from_module_too = lrcert.certify(model, x.numpy())  # conversion and numpy input included
    assert _radii(got) == _radii(expected) == _radii(from_module_too)
    assert [r.direction for r in got] == [r.direction for r in expected]
    assert [r.pattern for r in got] == [r.pattern for r in expected]


def many_classes() -> nn.Module:
    from test_sketch import many_classes

    return many_classes().float()


@pytest.mark.parametrize("make", [mlp, cnn, many_classes], ids=["mlp", "cnn", "many classes"])
def test_the_sketch_makes_no_tensor_on_the_default_device(make, monkeypatch):
    """Every input sketched (directions drawn on the CPU, then moved), the many-class prediction
    radius from float32 gradients and sketched error bounds included."""
    monkeypatch.setattr(screen, "SHARE", 1.0)  # (these small inputs: as many exact gradients as needed)
    model = make()
    shape = (3, 8, 8) if make is many_classes else (3, 4, 4)
    x = torch.rand(5, *shape, generator=torch.Generator().manual_seed(4))
    network = lrcert.from_module(model, shape)
    expected = Engine(network, sketch=True, screen=False, adversarial_norm="l2").run(x)
    with torch.device("meta"):
        got = Engine(network, sketch=True, screen=False, adversarial_norm="l2").run(x)
    assert _radii(got) == _radii(expected) and all(r.delta > 0 for r in got)
    assert [r.prediction_radius for r in got] == [r.prediction_radius for r in expected]


@pytest.mark.parametrize("make", [mlp, cnn, affine], ids=["mlp", "cnn", "affine"])
def test_path_regions_and_plot_make_no_tensor_on_the_default_device(make):
    network = lrcert.from_module(make(), (3, 4, 4))
    x = inputs(4).double()
    expected = regions.walk(network, x[0], x[1]).breakpoints
    with torch.device("meta"):
        assert regions.walk(network, x[0], x[1]).breakpoints == expected
        labels, outputs = regions.evaluate(network, x)
        view = picture(network, make_plane(network, x, [0], "gradient", None), x, [0], resolution=16)
    assert outputs.device.type == "cpu" and len(labels) == 4
    assert view.regions.shape == (16, 16)
    assert set(view.balls[0]) == ({"l1", "l2", "linf"} if network.nonlinear else set())  # affine: no finite ball


@pytest.mark.parametrize("make", [mlp, cnn], ids=["mlp", "cnn"])
def test_roll_loss_makes_no_tensor_on_the_default_device(make):
    model, x = make(), inputs(6)
    expected = lrcert.roll_loss(model, x, lam=1.0, C=1.0, gamma=50)
    with torch.device("meta"):
        assert torch.equal(lrcert.roll_loss(model, x, lam=1.0, C=1.0, gamma=50), expected)
        sampled = lrcert.roll_loss(model, x, lam=1.0, C=1.0, sample_dims=8, generator=torch.Generator().manual_seed(0))
        sampled.backward()
    assert sampled.device.type == "cpu" and torch.isfinite(sampled)


def test_training_and_loading_make_no_tensor_on_the_default_device(tmp_path):
    x = torch.rand(40, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    y = (x.flatten(1).sum(1) > 18).long()
    with torch.device("meta"):
        model = build_network((1, 6, 6), 2, hidden=(8,), conv=(4,), seed=0)
        history = fit(model, (x[:30], y[:30]), (x[30:], y[30:]), Settings(lam=0.5, epochs=1, sample_dims=4))
        network = lrcert.load(PROJECT_MODELS / "bars_cnn.onnx")
        results = lrcert.certify(network, np.load(PROJECT_MODELS / "bars_cnn.inputs.npy")[:2])
    assert math.isfinite(history[0]["loss"]) and history[0]["median_l2"] > 0
    assert all(r.radius["l2"] >= 0 for r in results)


def test_cli_commands_make_no_tensor_on_the_default_device(tmp_path):
    model, data = PROJECT_MODELS / "bars_cnn.onnx", PROJECT_MODELS / "bars_cnn.inputs.npy"
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "train.npz", x=rng.random((30, 4)).astype(np.float32), y=rng.integers(0, 2, 30))
    with torch.device("meta"):
        certified = runner.invoke(app, ["certify", str(model), str(data), "--format", "json", "--device", "auto"])
        trained = runner.invoke(app, ["train", str(tmp_path / "train.npz"), "--hidden", "8", "--epochs", "1",
                                      "--out", str(tmp_path / "m.onnx"), "--device", "auto"])
    assert certified.exit_code == 0, certified.stderr
    assert trained.exit_code == 0, trained.stderr
    assert "on cpu" in certified.stderr and "on cpu" in trained.stderr


# ------------------------------------------------------------------------------------ true float32


MATRIX_OPS = {"mm", "addmm", "bmm", "baddbmm", "convolution", "_convolution", "mkldnn_convolution"}


class RecordPrecision(TorchDispatchMode):
    """At every matrix product and convolution, what PyTorch's float32 settings say."""

    def __init__(self, read):
        super().__init__()
        self.read, self.seen = read, collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in MATRIX_OPS:
            self.seen[self.read()] += 1
        return func(*args, **(kwargs or {}))


def _classic_flags():
    return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())


def _lrcert_work(network, x):
    lrcert.certify(network, x, directions=x[:1])
    regions.walk(network, x[0].double(), x[1].double())
    regions.evaluate(network, x)


def test_tf32_is_off_while_lrcert_computes_and_the_users_flags_come_back():
    network, x = lrcert.from_module(cnn(), (3, 4, 4)), inputs(3)
    before = _classic_flags()
    try:
        torch.backends.cuda.matmul.allow_tf32 = True  # what a user after speed sets
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("medium")  # on CPUs: bfloat16 products
        users = _classic_flags()
        with RecordPrecision(_classic_flags) as record:
            _lrcert_work(network, x)
        assert set(record.seen) == {(False, False, "highest")}, record.seen
        assert sum(record.seen.values()) > 10
        assert _classic_flags() == users == (True, True, "medium")
    finally:
        torch.set_float32_matmul_precision(before[2])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[:2]
    assert _classic_flags() == before


@pytest.mark.skipif(not hasattr(torch.backends.cudnn, "conv"), reason="PyTorch < 2.9 has no per-backend fp32_precision")
def test_tf32_is_off_under_the_per_backend_settings_too():
    network, x = lrcert.from_module(mlp(), (3, 4, 4)), inputs(3)
    settings = [torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.mkldnn.matmul]
    before = [s.fp32_precision for s in settings]
    try:
        for setting, mode in zip(settings, ("tf32", "tf32", "bf16")):
            setting.fp32_precision = mode
        with RecordPrecision(lambda: tuple(s.fp32_precision for s in settings)) as record:
            _lrcert_work(network, x)
        assert set(record.seen) == {("ieee", "ieee", "ieee")}, record.seen
        assert [s.fp32_precision for s in settings] == ["tf32", "tf32", "bf16"]
    finally:
        for setting, mode in zip(settings, before):
            setting.fp32_precision = mode


# ------------------------------------------------------------------------------------ host syncs

SYNCS = {"_local_scalar_dense", "nonzero", "item", "is_nonzero", "equal"}


class CountSyncs(TorchDispatchMode):
    """Operations that make a GPU wait for the host (they read a value back); a CPU sees them too."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func.overloadpacket.__name__ in SYNCS
        return func(*args, **(kwargs or {}))


def _syncs(network, n, batch_size, **kw) -> int:
    x = torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(n))
    with CountSyncs() as counter:
        lrcert.certify(network, x, batch_size=batch_size, **kw)
    return counter.count


#: Waits per region built: the CPU's skipping of inactive units, one nonzero.
REGION_SYNCS = 1


def _dense_syncs(network, dtype, checked_arrays: int = 1) -> int:
    """One wait per array the library checks for NaN and Inf (the inputs, the directions when
    given), once per call; the region's; under auto, choosing the candidate faces, a few per layer
    and norm (never per input)."""
    return checked_arrays + REGION_SYNCS + (0 if dtype == torch.float32 else 3 + 2 * len(network.nonlinear) * 3)


@pytest.mark.parametrize("dtype", [torch.float32, "auto"], ids=["float32", "auto"])
@pytest.mark.parametrize("make", [mlp, cnn], ids=["mlp", "cnn"])
def test_host_syncs_do_not_grow_with_the_batch(make, dtype):
    network = lrcert.from_module(make(), (3, 4, 4))
    one_direction = torch.ones(1, 3, 4, 4)
    for kw in ({}, {"directions": one_direction}):
        most = _dense_syncs(network, dtype, checked_arrays=1 + len(kw))
        small = _syncs(network, 16, 16, dtype=dtype, screen=False, **kw)
        large = _syncs(network, 256, 256, dtype=dtype, screen=False, **kw)
        assert large <= small <= most, (kw, small, large)
        assert _syncs(network, 256, 64, dtype=dtype, screen=False, **kw) <= 4 * small  # per batch, not per input


@pytest.mark.parametrize("dtype", [torch.float32, "auto"], ids=["float32", "auto"])
@pytest.mark.parametrize("make", [mlp, cnn], ids=["mlp", "cnn"])
def test_screening_waits_a_bounded_number_of_times_per_batch(make, dtype):
    """Screening waits once per round of exact gradients (at most screen.rounds(D)) and once for
    the inputs that go the dense way (whose region is built anew), whatever the batch size."""
    network = lrcert.from_module(make(), (3, 4, 4))
    most = _dense_syncs(network, dtype) + REGION_SYNCS + screen.rounds(network.input_size) + 1
    for n in (16, 256):
        assert _syncs(network, n, n, dtype=dtype) <= most, n


@pytest.mark.parametrize("dtype", [torch.float32, "auto"], ids=["float32", "auto"])
@pytest.mark.parametrize("make", [mlp, cnn, many_classes], ids=["mlp", "cnn", "many classes"])
def test_sketching_waits_a_bounded_number_of_times_per_batch(make, dtype, monkeypatch):
    """Sketched batches wait once per round of exact gradients, once for the inputs left to the
    sketch and once more for those it leaves, and (many classes) once for the candidate margins
    and once for the inputs not sketched: as often for 256 inputs as for 16, never per face."""
    monkeypatch.setattr(screen, "SHARE", 1.0)
    shape = (3, 8, 8) if make is many_classes else (3, 4, 4)
    network = lrcert.from_module(make(), shape)
    most = len(network.nonlinear) + screen.rounds(network.input_size) + 4
    counts = []
    for n in (16, 256):
        x = torch.rand(n, *shape, generator=torch.Generator().manual_seed(n))
        with CountSyncs() as counter:
            results = Engine(network, dtype=dtype, sketch=True, screen=False, batch_size=n).run(x)
        assert all(r.delta > 0 for r in results)
        counts.append(counter.count)
    assert max(counts) <= most, (counts, most)


class CountHostData(TorchDispatchMode):
    """Tensors made from Python data (``torch.tensor([...], device=...)``): on a GPU each is a copy
    from pageable host memory, which makes the host wait for all the work queued so far."""

    def __init__(self):
        super().__init__()
        self.made = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ == "lift_fresh":
            self.made.append(args[0].shape)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, "auto"], ids=["float32", "float64", "auto"])
@pytest.mark.parametrize("make", [mlp, cnn], ids=["mlp", "cnn"])
def test_batches_copy_no_host_data_to_the_device(make, dtype):
    """A batch queued while the previous one's results are assembled must not wait for the device."""
    network = lrcert.from_module(make(), (3, 4, 4))
    engine = Engine(network, dtype=dtype, batch_size=8)
    x = torch.rand(24, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    for directions in (None, torch.ones(1, 3, 4, 4)):
        with CountHostData() as counter:
            results = [r for batch in engine.stream([x], n_inputs=len(x), directions=directions) for r in batch]
        assert len(results) == len(x) and counter.made == [], counter.made


# ------------------------------------------------------------------------------------ GPU plan


def test_gpu_plan_fits_the_memory_budget_and_batches_by_the_thousand():
    network = lrcert.from_module(mlp(), (3, 4, 4))
    for budget in (1 << 20, 64 << 20, 32 << 30):
        engine = Engine(network, memory_bytes=budget)
        plan = planning.gpu_plan(engine, 100_000, planning.bytes_per_row(engine))
        used = plan.batch_size * planning.bytes_per_input(engine) + plan.group * plan.directions_per_pass * plan.bytes_per_row
        assert used <= budget or plan.batch_size == plan.group == 1, (budget, plan)
        assert 1 <= plan.group <= plan.batch_size
    assert plan.batch_size == 2048 and plan.directions_per_pass == 48 and plan.group == 2048  # 32 GiB: all of it


def test_fused_dual_norms_of_the_gpu_path_give_the_same_radii():
    model = cnn().double()
    network, x = lrcert.from_module(model, (3, 4, 4)), inputs(4).double()
    engine = Engine(network, dtype=torch.float64)
    engine.fused_norms = True  # what a CUDA engine does: one vector_norm per dual norm
    for result, row in zip(engine.run(x), x):
        expected = reference_radii(model, row[None])
        assert all(relative_error(result.radius[p], expected[p]) < 1e-9 for p in expected)


def test_pattern_bytes_pack_like_numpy():
    rng = np.random.default_rng(0)
    signs, winners = rng.random((5, 21)) > 0.5, rng.integers(0, 9, (5, 7))
    packed = pattern_bytes([torch.from_numpy(signs), torch.from_numpy(winners)], 5, torch.device("cpu")).numpy()
    expected = np.concatenate([np.packbits(signs, axis=1), winners.astype(np.int16).view(np.uint8)], axis=1)
    assert np.array_equal(packed, expected)


def test_device_choice(monkeypatch):
    assert devices.resolve("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert devices.resolve(None, like=torch.zeros(1)) == torch.device("cpu")
    assert devices.describe(torch.device("cpu")) == "cpu"
    with pytest.raises(lrcert.LrcertError, match="not a device name"):
        devices.resolve("gpu-please")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve("auto") == torch.device("cpu")
    with pytest.raises(lrcert.LrcertError, match="sees no CUDA GPU.*Fix: use device cpu or auto"):
        devices.resolve("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.resolve("auto") == torch.device("cuda")  # auto takes the GPU whenever there is one


def test_batched_results_equal_each_input_certified_alone():
    """The batched assembly (argmin faces, gathers, positions, pattern bytes) must not mix inputs
    up: each input of a batch of 48 gets exactly what it gets alone, and every binding position
    is its unit's coordinates."""
    model = cnn().double()
    network, x = lrcert.from_module(model, (3, 4, 4)), inputs(48).double()
    direction = torch.randn(1, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    together = lrcert.certify(network, x, directions=direction, dtype=torch.float64)
    for k in range(0, 48, 5):
        (alone,) = lrcert.certify(network, x[k : k + 1], directions=direction, dtype=torch.float64)
        mine = together[k]
        assert (mine.radius, mine.pattern, mine.prediction, mine.direction) == (alone.radius, alone.pattern, alone.prediction, alone.direction)
        faces = [{p: c.as_dict() if c else None for p, c in r.binding.items()} for r in (mine, alone)]
        assert faces[0] == faces[1] and mine.direction_binding.as_dict() == alone.direction_binding.as_dict()
    layers = {layer.name: layer for layer in network.layers}
    for result in together:
        for face in result.binding.values():
            layer = layers[face.layer]
            shape = layer.shape if face.kind == "maxpool" else layer.in_shapes[0]
            assert face.position == tuple(int(c) for c in np.unravel_index(face.unit, shape))[1:]  # batch axis dropped
