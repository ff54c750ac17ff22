"""Models as users export them today: torch.onnx.export's default (dynamo, opset 18+, weights in
external data), the legacy exporter, torch.export (.pt2); static, dynamic and fixed batches. The
same module must certify to the same radii whichever way it travels, and those radii must match
the independent float64 reference."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx_models import make, n
from exporting import export
from reference import reference_radii, relative_error
from typer.testing import CliRunner

import lrcert
from lrcert.cli import app

pytest.importorskip("onnxscript")  # the default exporter needs it (a test extra)
runner = CliRunner()


class SmallCNN(nn.Module):
    """conv, batch-norm, ReLU6, max-pool, flatten, linear: what a user's first CNN looks like."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU6()
        self.pool, self.fc = nn.MaxPool2d(2), nn.Linear(4 * 3 * 3, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.act(3 * self.bn(self.conv(x)))), 1))


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = SmallCNN()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


def mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 12), nn.PReLU(), nn.Linear(12, 3)).eval()


def _radii(results):
    return [r.radius for r in results]


def _assert_same(results, expected, tolerance=1e-9):
    for got, want in zip(results, expected):
        for p in ("l1", "l2", "linf"):
            assert relative_error(got.radius[p], want.radius[p]) < tolerance, (p, got.radius[p], want.radius[p])


@pytest.mark.parametrize("how", ["dynamo", "dynamic", "legacy", "pt2"])
def test_every_export_certifies_like_the_module_and_the_reference(tmp_path, how):
    # exported in float64: the default exporter folds batch-norm into the convolution, which in
    # float32 would move the weights (and radii) by about 1e-7
    model = small_cnn().double()
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    path = export(model, torch.zeros(1, 1, 8, 8, dtype=torch.float64), tmp_path / f"cnn.{'pt2' if how == 'pt2' else 'onnx'}", how)
    if how == "dynamo":
        saved = onnx.load(path, load_external_data=False)
        assert saved.opset_import[0].version >= 18 and (tmp_path / "cnn.onnx.data").exists()  # today's default
    results = lrcert.certify(lrcert.load(path), x, dtype=torch.float64)
    expected = lrcert.certify(model, x, dtype=torch.float64)
    _assert_same(results, expected)
    for k in range(2):
        reference = reference_radii(model, x[k : k + 1])
        assert all(relative_error(results[k].radius[p], reference[p]) < 1e-9 for p in reference)


def test_every_opset_the_exporter_writes_certifies(tmp_path):
    model = small_cnn().double()
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = lrcert.certify(model, x, dtype=torch.float64)
    newest = min(25, onnx.defs.onnx_opset_version())  # torch's exporter writes up to opset 25
    for opset in range(18, newest + 1):
        path = export(model, torch.zeros(1, 1, 8, 8, dtype=torch.float64), tmp_path / f"cnn{opset}.onnx", f"dynamo:{opset}")
        _assert_same(lrcert.certify(lrcert.load(path), x, dtype=torch.float64), expected)


@pytest.mark.parametrize("make, batch, shape, how", [
    (mlp, 2, (20,), "any size"),  # no reshape: traced at batch 1, checked against batch 2
    (small_cnn, 4, (1, 8, 8), "zero-padded"),  # flatten became a reshape to (4, 36)
])
def test_fixed_batch_graphs_certify_rows(tmp_path, make, batch, shape, how):
    model = make().double()
    path = export(model, torch.zeros(batch, *shape, dtype=torch.float64), tmp_path / "fixed.onnx", "dynamo")
    x = torch.rand(5, *shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    network = lrcert.load(path, sample_shape=shape)
    assert network.sample_shape == shape and any(how in note for note in network.notes)
    _assert_same(lrcert.certify(network, x, dtype=torch.float64), lrcert.certify(model, x, dtype=torch.float64))
    np.save(tmp_path / "rows.npy", x.numpy())
    result = runner.invoke(app, ["certify", path, str(tmp_path / "rows.npy"), "--format", "json", "--dtype", "float64"])
    assert result.exit_code == 0, result.stderr
    assert f"fixes its batch to {batch}" in result.stderr and len(json.loads(result.stdout)["results"]) == 5
    if how == "zero-padded":  # faces are named in the row's own coordinates (C, H, W), not the padded batch's
        for row in json.loads(result.stdout)["results"]:
            assert len(row["binding"]["l2"]["position"]) == 3


def test_whole_calls_when_the_data_rows_have_the_full_input_shape(tmp_path):
    path = export(mlp(), torch.zeros(2, 20), tmp_path / "pair.onnx", "dynamo")
    np.save(tmp_path / "pairs.npy", np.random.default_rng(0).random((3, 2, 20), dtype=np.float32))
    result = runner.invoke(app, ["certify", path, str(tmp_path / "pairs.npy"), "--format", "json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["model"]["input_shape"] == [2, 20] and len(doc["results"]) == 3


@pytest.mark.slow  # (about a minute for all three on 2 cores)
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vgg11_bn"])  # VGG: its 7×7 adaptive pool of a 1×1 map is a GatherND
def test_torchvision_classics_from_the_default_exporter(tmp_path, name):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10).eval().double()
    path = export(model, torch.zeros(1, 3, 32, 32, dtype=torch.float64), tmp_path / f"{name}.onnx", "dynamo")
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    network = lrcert.load(path)
    kinds = {network.layers[i].kind for i in network.nonlinear}
    assert kinds == ({"clip"} if name == "mobilenet_v2" else {"relu", "maxpool"})  # mobilenet's ReLU6: Clip(0, 6)
    results = lrcert.certify(network, x, dtype=torch.float64, norms=("l2",))
    expected = lrcert.certify(model, x, dtype=torch.float64, norms=("l2",))
    # VGG's binding face is a max-pool gap of 1.4e-8 between terms of order 1, and the exporter folds batch-norm
    # into the convolutions (weights moved by float64 rounding): its ratio agrees to about 1e-8
    tolerance = 1e-6 if name == "vgg11_bn" else 1e-9
    assert relative_error(results[0].radius["l2"], expected[0].radius["l2"]) < tolerance
    got, want = results[0].binding["l2"], expected[0].binding["l2"]
    assert (got.kind, got.unit, got.position) == (want.kind, want.unit, want.position)


def test_a_node_no_converter_takes_is_named_with_its_op_version(tmp_path):
    pool = n("AveragePool", ["x"], ["y"], name="dilated_pool", kernel_shape=[2, 2], dilations=[2, 2])
    onnx.save(make([pool], [1, 1, 6, 6], {}, out_rank=4, opset=19), str(tmp_path / "pool.onnx"))
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 6, 6), np.float32))
    result = runner.invoke(app, ["certify", str(tmp_path / "pool.onnx"), str(tmp_path / "x.npy")])
    assert result.exit_code == 2 and "AveragePool-19 node 'dilated_pool' uses dilations" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    custom = make([n("Relu", ["x"], ["y"], name="act"), n("Shift", ["k"], ["u"], name="odd", domain="com.example")],
                  [1, 4], {"k": np.ones(4, np.float32)}, opset=20, check=False)
    custom.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    onnx.save(custom, str(tmp_path / "custom.onnx"))
    with pytest.raises(lrcert.LrcertError, match=r"'odd' \(com.example.Shift\)"):
        lrcert.load(tmp_path / "custom.onnx")


def test_reshape_allowzero_before_opset_19_is_read(tmp_path):
    nodes = [n("Relu", ["x"], ["r"]), n("Reshape", ["r", "s"], ["y"], allowzero=1)]
    model = make(nodes, [1, 4], {"s": np.array([1, 2, 2], np.int64)}, out_rank=3, opset=18)
    onnx.save(model, str(tmp_path / "reshape.onnx"))
    network = lrcert.load(tmp_path / "reshape.onnx")
    assert network.output_shape == (2, 2)


@pytest.mark.parametrize("saved_shape", [(4,), (1, 4)])
def test_path_takes_one_input_in_its_own_row_shape(tmp_path, saved_shape):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)).eval()
    path = export(model, torch.zeros(1, 4), tmp_path / "m.onnx", "dynamic")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.random(saved_shape, dtype=np.float32))
    np.save(tmp_path / "b.npy", rng.random(saved_shape, dtype=np.float32))
    result = runner.invoke(app, ["path", path, str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--format", "json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["regions"] >= 1
    np.save(tmp_path / "two.npy", rng.random((2, 4), dtype=np.float32))
    result = runner.invoke(app, ["path", path, str(tmp_path / "two.npy"), str(tmp_path / "b.npy")])
    assert result.exit_code == 2 and "a segment end is one input" in result.stderr and "(4) or (1, 4)" in result.stderr
