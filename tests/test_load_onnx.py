"""ONNX loading: every supported op family reproduces onnxruntime and gives radii equal to an
independent float64 computation; non-piecewise-linear graphs are refused, every node named."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import lrcert
from lrcert.errors import LrcertError
from onnx_models import REFUSED, SUPPORTED
from reference import one_layer_radii, reference_radii, relative_error


def _save(model, tmp_path, name="model.onnx"):
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _onnxruntime(model, x: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("name", sorted(SUPPORTED))
def test_supported_graph_reproduces_onnxruntime(name, tmp_path):
    model = SUPPORTED[name]()
    network = lrcert.load(_save(model, tmp_path))
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.standard_normal((1, *network.sample_shape)).astype(np.float32)
        expected = _onnxruntime(model, x.reshape(network.input_shape))
        if name == "plumbing":  # lrcert certifies the logits before the final softmax
            assert any("softmax" in note for note in network.notes)
            expected = np.log(expected)
            got = torch.log_softmax(network.run(torch.from_numpy(x).double()), dim=-1).numpy()
        else:
            got = network.run(torch.from_numpy(x).double()).numpy()
        np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def independent_radii(tmp_path_factory):
    """Every SUPPORTED graph's reference radii on four seeded rows, from ``onnx_reference.py`` in a
    process that never imports lrcert (lrcert registers converters into onnx2torch's registry: a
    reference in this process would compare lrcert with itself for those ops)."""
    folder = tmp_path_factory.mktemp("independent")
    jobs, rows = [], {}
    for name in sorted(SUPPORTED):
        path = _save(SUPPORTED[name](), folder, f"{name}.onnx")
        network = lrcert.load(path, cache=False)
        x = np.random.default_rng(1).standard_normal((4, *network.sample_shape))
        rows[name] = (network, x)
        np.save(folder / f"{name}.npy", x.reshape(4, *network.input_shape))
        jobs.append({"model": str(path), "inputs": str(folder / f"{name}.npy"), "out": str(folder / f"{name}.json")})
    (folder / "jobs.json").write_text(json.dumps(jobs))
    done = subprocess.run([sys.executable, str(Path(__file__).parent / "onnx_reference.py"), str(folder / "jobs.json")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return {name: (*rows[name], json.loads((folder / f"{name}.json").read_text())) for name in rows}


@pytest.mark.parametrize("name", sorted(SUPPORTED))
def test_supported_graph_radii_match_independent_computation(name, independent_radii):
    network, x, expected = independent_radii[name]
    results = lrcert.certify(network, x, dtype=torch.float64)
    for k, result in enumerate(results):
        for p in ("l1", "l2", "linf"):
            want = math.inf if expected[k][p] is None else expected[k][p]
            assert relative_error(result.radius[p], want) < 1e-9, (name, k, p, result.radius[p], want)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_not_piecewise_linear_graphs_are_refused_with_every_node_named(name, tmp_path):
    make, expected = REFUSED[name]
    with pytest.raises(LrcertError) as error:
        lrcert.load(_save(make(), tmp_path))
    assert error.value.details == expected
    for detail in expected:
        assert detail in str(error.value)


def test_old_opset_is_upgraded_for_onnx2torch(tmp_path):
    # Flatten-1 has no onnx2torch converter; lrcert upgrades the opset and goes on
    model = SUPPORTED["gemm"]()
    nodes = [onnx.helper.make_node("Flatten", ["x"], ["f"], name="flat")] + list(model.graph.node)
    nodes[1].input[0] = "f"
    graph = onnx.helper.make_graph(nodes, "old", model.graph.input, model.graph.output, model.graph.initializer)
    old = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 8)])
    old.ir_version = 3
    network = lrcert.load(_save(old, tmp_path))
    x = np.random.default_rng(2).standard_normal((1, 5)).astype(np.float32)
    expected = _onnxruntime(old, x)
    got = network.run(torch.from_numpy(x).double()).numpy().reshape(expected.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_external_weights_outside_the_model_folder_are_refused(tmp_path):
    model = SUPPORTED["gemm"]()
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save(model, str(folder / "m.onnx"), save_as_external_data=True, location="weights.bin", size_threshold=0)
    assert lrcert.load(folder / "m.onnx").units == 8  # beside the model: fine
    loaded = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    for tensor in loaded.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../elsewhere.bin"
    onnx.save(loaded, str(folder / "escape.onnx"))
    with pytest.raises(LrcertError, match="outside the model's folder"):
        lrcert.load(folder / "escape.onnx")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "holds no ONNX graph"),
        (b"\x08\x07\x12\x04junk\xff\xff\xff", "not a readable ONNX model"),
    ],
)
def test_unreadable_onnx_files(tmp_path, content, message):
    path = tmp_path / "broken.onnx"
    path.write_bytes(content)
    with pytest.raises(LrcertError, match=message):
        lrcert.load(path)


def test_truncated_onnx_file(tmp_path):
    data = SUPPORTED["conv"]().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LrcertError, match="not a readable ONNX model|not a valid ONNX model|holds no ONNX graph"):
        lrcert.load(path)


def test_pytorch_export_with_dynamic_flatten(tmp_path):
    """torch.onnx.export writes x.view(x.size(0), -1) as Shape → Gather → Concat → Reshape."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 3, 3)
            self.relu = torch.nn.ReLU()
            self.fc = torch.nn.Linear(3 * 6 * 6, 4)

        def forward(self, x):
            h = self.relu(self.conv(x))
            return self.fc(h.view(h.size(0), -1))

    torch.manual_seed(5)
    model = Net().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.zeros(1, 1, 8, 8),), str(tmp_path / "net.onnx"), dynamo=False, input_names=["x"],
            output_names=["y"], dynamic_axes={"x": {0: "batch"}}, opset_version=11,
        )
    assert {n.op_type for n in onnx.load(str(tmp_path / "net.onnx")).graph.node} >= {"Shape", "Gather", "Reshape"}
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    from_onnx = lrcert.certify(lrcert.load(tmp_path / "net.onnx"), x, dtype=torch.float64)
    for k, result in enumerate(from_onnx):
        expected = reference_radii(model, x[k : k + 1])
        assert all(relative_error(result.radius[p], expected[p]) < 1e-9 for p in expected)


def test_a_graph_out_of_topological_order_is_sorted_and_noted(tmp_path):
    """Constants listed after their users (onnx's checker refuses such a file, onnxruntime sorts
    it): lrcert sorts the nodes, says so, and certifies as the ordered graph."""
    ordered = SUPPORTED["split"]()
    nodes = list(ordered.graph.node)
    weights = {t.name: t for t in ordered.graph.initializer if t.name in ("W", "sizes")}
    constants = [onnx.helper.make_node("Constant", [], [name], value=tensor) for name, tensor in weights.items()]
    graph = onnx.helper.make_graph(nodes + constants, "unsorted", ordered.graph.input, ordered.graph.output,
                                   [t for t in ordered.graph.initializer if t.name not in weights])
    unsorted = onnx.helper.make_model(graph, opset_imports=ordered.opset_import)
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(unsorted)
    network = lrcert.load(_save(unsorted, tmp_path, "unsorted.onnx"))
    assert any("sorted them, as onnxruntime does" in note for note in network.notes), network.notes
    x = np.random.default_rng(3).standard_normal((3, *network.sample_shape))
    got = lrcert.certify(network, x, dtype=torch.float64)
    want = lrcert.certify(lrcert.load(_save(ordered, tmp_path)), x, dtype=torch.float64)
    assert [r.radius for r in got] == [r.radius for r in want]


def test_an_ir_3_graph_that_leaves_weights_out_of_its_inputs_is_read_as_onnxruntime_runs_it(tmp_path):
    """IR version 3 lists every initializer among the graph inputs; old exporters (the Marabou
    CIFAR nets) left some out. onnxruntime runs such a file, and lrcert reads it, says so, and
    certifies it exactly: radii min_j |a_j| / ‖W1_j‖_q with a = x W1 + b1, in NumPy."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1, b1, w2 = (rng.standard_normal(s).astype(np.float32) for s in ((4, 5), (5,), (5, 3)))
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("MatMul", ["r", "W2"], ["y"])]
    graph = helper.make_graph(
        nodes, "ir3", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                       helper.make_tensor_value_info("W1", TensorProto.FLOAT, [4, 5])],  # (b1, W2: left out)
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(w2, "W2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 3
    with pytest.raises(onnx.checker.ValidationError, match="in initializer but not in graph input"):
        onnx.checker.check_model(model)
    path = _save(model, tmp_path, "ir3.onnx")
    x = rng.standard_normal((3, 4))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    network = lrcert.load(path)
    assert any("leaves 2 weights out of its graph inputs" in note for note in network.notes), network.notes
    np.testing.assert_allclose(network.run(torch.from_numpy(x)).reshape(3, 3).numpy(),
                               np.concatenate([session.run(None, {"x": row[None].astype(np.float32)})[0] for row in x]),
                               rtol=1e-5, atol=1e-5)
    results = lrcert.certify(network, x, dtype=torch.float64)
    for p, expected in one_layer_radii(x, w1, b1).items():
        np.testing.assert_allclose([r.radius[p] for r in results], expected, rtol=1e-12)


def _two_outputs():
    """x → ReLU(x W) = a; outputs y = a W2 (3 classes) and z = ReLU(a W3) (2 classes)."""
    from onnx import TensorProto, helper, numpy_helper

    from onnx_models import n, weight

    weights = {"W": weight(4, 6), "W2": weight(6, 3), "W3": weight(6, 2)}
    nodes = [n("MatMul", ["x", "W"], ["h"]), n("Relu", ["h"], ["a"]), n("MatMul", ["a", "W2"], ["y"]),
             n("MatMul", ["a", "W3"], ["u"]), n("Relu", ["u"], ["z"])]
    graph = helper.make_graph(
        nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]), helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), weights


class _TwoOutputs(torch.nn.Module):
    """The same network in torch, reading output ``which``; both branches run, so the reference
    sees every ReLU's faces."""

    def __init__(self, weights, which):
        super().__init__()
        self.w = {k: torch.from_numpy(v).double() for k, v in weights.items()}
        self.relu_a, self.relu_z, self.which = torch.nn.ReLU(), torch.nn.ReLU(), which

    def forward(self, x):
        a = self.relu_a(x @ self.w["W"])
        y, z = a @ self.w["W2"], self.relu_z(a @ self.w["W3"])
        return y if self.which == "y" else z


@pytest.mark.parametrize("which", [None, "y", "z"])
def test_several_outputs_share_the_regions_and_predict_from_the_chosen_one(tmp_path, which):
    model, weights = _two_outputs()
    path = _save(model, tmp_path, "two.onnx")
    network = lrcert.load(path, output_name=which)
    assert any("2 outputs (y, z)" in note for note in network.notes), network.notes
    x = np.random.default_rng(4).standard_normal((5, 4))
    results = lrcert.certify(network, x, dtype=torch.float64)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    read = dict(zip(("y", "z"), session.run(None, {"x": x.astype(np.float32)})))[which or "y"]
    twin = _TwoOutputs(weights, which or "y")
    for k, result in enumerate(results):
        expected = reference_radii(twin, torch.from_numpy(x[k : k + 1]))  # the faces of both branches
        for p in ("l1", "l2", "linf"):
            assert relative_error(result.radius[p], expected[p]) < 1e-9, (which, k, p)
        assert result.prediction == int(np.argmax(read[k]))
    with pytest.raises(LrcertError, match=r"no output 'q' \(its outputs: y, z\)"):
        lrcert.load(path, output_name="q")


def _two_inputs():
    """An image input (N, 1, 2, 2) and a vector input (N, 3), joined by an Add, a ReLU, 3 logits."""
    from onnx import TensorProto, helper, numpy_helper

    from onnx_models import n, weight

    weights = {"W1": weight(4, 5), "W2": weight(3, 5), "W3": weight(5, 3)}
    nodes = [n("Flatten", ["img"], ["f"]), n("MatMul", ["f", "W1"], ["p"]), n("MatMul", ["vec", "W2"], ["q"]),
             n("Add", ["p", "q"], ["h"]), n("Relu", ["h"], ["a"]), n("MatMul", ["a", "W3"], ["y"])]
    graph = helper.make_graph(
        nodes, "two_inputs", [helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", 1, 2, 2]),
                              helper.make_tensor_value_info("vec", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), weights


class _JointTwin(torch.nn.Module):
    """The two-input network as a function of the joint row v = (img flattened, vec)."""

    def __init__(self, weights):
        super().__init__()
        self.w = {k: torch.from_numpy(v).double() for k, v in weights.items()}
        self.relu = torch.nn.ReLU()

    def forward(self, v):
        img, vec = v[:, :4], v[:, 4:]
        return self.relu(img @ self.w["W1"] + vec @ self.w["W2"]) @ self.w["W3"]


def test_several_inputs_are_certified_in_their_joint_space(tmp_path):
    model, weights = _two_inputs()
    network = lrcert.load(_save(model, tmp_path, "two_inputs.onnx"))
    assert network.sample_shape == (7,) and network.inputs == (("img", (1, 2, 2)), ("vec", (3,)))
    assert any("2 inputs: lrcert certifies in their joint space" in note for note in network.notes)
    rng = np.random.default_rng(5)
    img, vec = rng.standard_normal((4, 1, 2, 2)), rng.standard_normal((4, 3))
    joint = np.concatenate([img.reshape(4, -1), vec], axis=1)
    expected_out = _onnxruntime_inputs(model, {"img": img.astype(np.float32), "vec": vec.astype(np.float32)})
    got = network.run(torch.from_numpy(joint)).numpy().reshape(expected_out.shape)
    np.testing.assert_allclose(got, expected_out, rtol=1e-4, atol=1e-5)
    twin = _JointTwin(weights)
    for k, result in enumerate(lrcert.certify(network, joint, dtype=torch.float64)):
        expected = reference_radii(twin, torch.from_numpy(joint[k : k + 1]))
        for p in ("l1", "l2", "linf"):
            assert relative_error(result.radius[p], expected[p]) < 1e-9, (k, p)


def _onnxruntime_inputs(model, feeds: dict) -> np.ndarray:
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def test_refusals_in_the_trace_name_the_onnx_op_type_not_the_pytorch_op():
    from lrcert.models.convert import to_network

    class Squash(torch.nn.Module):
        def forward(self, x):
            return torch.sigmoid(x)

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), Squash())
    with pytest.raises(LrcertError) as plain:
        to_network(model, (3,))
    with pytest.raises(LrcertError) as named:
        to_network(model, (3,), op_types={"1": "Sigmoid"})
    assert plain.value.details == ["'1' (sigmoid) is not piecewise linear"]
    assert named.value.details == ["'1' (Sigmoid) is not piecewise linear"]


def test_reading_onnx_imports_neither_torchvision_nor_dynamo_and_torchvision_stays_real():
    """Start-up: onnx2torch's NMS/RoIAlign converters would import torchvision (and torch._dynamo),
    and so would a dispatch mode's torch.compile wrapper; lrcert needs neither, and a later
    ``import torchvision`` still gets the real package, which those converters then use."""
    import subprocess
    import sys

    code = (
        "import sys, lrcert\n"
        "network = lrcert.load('models/moons_mlp.onnx')\n"
        "print('torchvision' in sys.modules, 'torch._dynamo' in sys.modules)\n"
        "import torchvision, torchvision.ops\n"
        "from onnx2torch.node_converters import nms, roialign\n"
        "print(torchvision.__file__.endswith('__init__.py'), nms.torchvision.ops.nms is torchvision.ops.nms,\n"
        "      callable(roialign.roi_align), hasattr(torchvision, 'models'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "True", "True", "True", "True"], done.stdout
