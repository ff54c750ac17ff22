"""Third-party models from ../shared/models: radii against the float64 references, refusals named.

Skipped cleanly where that folder is absent.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import lrcert
from lrcert.errors import LrcertError
from reference import relative_error

CERTIFIED = [
    "acasxu_1_1",
    "cgan_32_nch1",
    "cifar10_resnet_2b",
    "eran_mnist_relu_9_200",
    "marabou_mnist2x10",
    "marabou_mnist5x20_leakyrelu",
    "marabou_mnist_softmax_last",
    "mnist_256x2",
    "mnist_256x4",
    "oval21_cifar_base_kw",
    "verivital_convnet_avgpool",
    "verivital_convnet_maxpool",
]


def _load(shared_models, name):
    network = lrcert.load(shared_models / f"{name}.onnx")
    x = np.load(shared_models / f"{name}.inputs.npy")
    return network, x


@pytest.mark.parametrize("screen", [True, False], ids=["screened", "dense"])
@pytest.mark.parametrize("name", CERTIFIED)
def test_radii_match_reference(shared_models, name, screen):
    network, x = _load(shared_models, name)
    reference = json.loads((shared_models / "reference" / f"{name}.json").read_text())["results"]
    results = lrcert.certify(network, x, dtype=torch.float64, screen=screen)
    assert len(results) == len(reference)
    for result, expected in zip(results, reference):
        for p in ("l1", "l2", "linf"):
            want = math.inf if expected[p] is None else expected[p]
            assert relative_error(result.radius[p], want) < 1e-4, (name, result.index, p, result.radius[p], want)


def test_cgan_matches_independent_computation(shared_models, tmp_path):
    """cgan_32_nch1 (ConvTranspose + 7 BatchNormalization): checked against autograd on onnx2torch's
    stock conversion, in a process that never imports lrcert (``onnx_reference.py``: lrcert registers
    converters of its own into onnx2torch's registry)."""
    network, x = _load(shared_models, "cgan_32_nch1")
    np.save(tmp_path / "x.npy", x[:6].reshape(6, *network.input_shape))
    jobs = [{"model": str(shared_models / "cgan_32_nch1.onnx"), "inputs": str(tmp_path / "x.npy"), "out": str(tmp_path / "r.json")}]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    done = subprocess.run([sys.executable, str(Path(__file__).parent / "onnx_reference.py"), str(tmp_path / "jobs.json")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = json.loads((tmp_path / "r.json").read_text())
    for k, result in enumerate(lrcert.certify(network, x[:6], dtype=torch.float64)):
        for p in ("l1", "l2", "linf"):
            want = math.inf if expected[k][p] is None else expected[k][p]
            assert relative_error(result.radius[p], want) < 1e-9, (k, p)


def test_cgan_batch_norm_runs_in_inference_mode_as_onnxruntime_has_it(shared_models):
    """BatchNormalization-9 with the (always exported) momentum attribute and one output is in
    inference mode (running statistics), as onnxruntime and the ONNX spec have it; lrcert agrees
    with onnxruntime on every row (onnx.reference once used the batch's statistics here)."""
    onnxruntime = pytest.importorskip("onnxruntime")
    network, x = _load(shared_models, "cgan_32_nch1")
    session = onnxruntime.InferenceSession(str(shared_models / "cgan_32_nch1.onnx"), providers=["CPUExecutionProvider"])
    for row in x[:5]:
        expected = session.run(None, {"X": row[None]})[0]
        got = network.run(torch.from_numpy(row[None]).double()).numpy().reshape(expected.shape)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    model = onnx.load(str(shared_models / "cgan_32_nch1.onnx"))
    assert any(a.name == "momentum" for node in model.graph.node if node.op_type == "BatchNormalization" for a in node.attribute)


def test_tied_max_pool_windows_give_zero_and_name_the_window(shared_models):
    network, x = _load(shared_models, "verivital_convnet_maxpool")
    results = lrcert.certify(network, x[:3], dtype=torch.float64, norms=("l2",))
    for result in results:
        binding = result.binding["l2"]
        assert result.radius["l2"] == 0.0
        assert binding.kind == "maxpool" and binding.value == 0.0 and binding.winner != binding.competitor


def test_softmax_last_certifies_the_logits(shared_models):
    network, _ = _load(shared_models, "marabou_mnist_softmax_last")
    assert any("logits" in note for note in network.notes)


@pytest.mark.parametrize(
    "name, count, expected",
    [
        ("eran_ffnn_sigmoid_6x200", 6, "'Sigmoid_6' (Sigmoid) is not piecewise linear"),
        ("ml4acopf_14_ieee_linear", 10, "'Mulpow_0' (Mul) multiplies two input-dependent tensors"),
    ],
)
def test_not_piecewise_linear_models_are_refused(shared_models, name, count, expected):
    with pytest.raises(LrcertError) as error:
        lrcert.load(shared_models / f"{name}.onnx")
    assert len(error.value.details) == count
    assert expected in error.value.details


@pytest.mark.parametrize("name", ["mnist_256x4", "oval21_cifar_base_kw", "cgan_32_nch1"])
def test_layer_list_reproduces_onnxruntime(shared_models, name):
    onnxruntime = pytest.importorskip("onnxruntime")
    network, x = _load(shared_models, name)
    session = onnxruntime.InferenceSession(str(shared_models / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    rng = np.random.default_rng(0)
    for row in [x[0], *(rng.standard_normal(x.shape[1:]).astype(np.float32) for _ in range(2))]:
        expected = session.run(None, {feed: row.reshape(network.input_shape)})[0]
        got = network.run(torch.from_numpy(row[None]).double()).numpy().reshape(expected.shape)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
