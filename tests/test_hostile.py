"""Hostile inputs: corrupted model files (fuzzed with a fixed seed), broken graphs, overflow.
Every one ends in an LrcertError (one line, a fix) or a correct load — never another exception."""

from __future__ import annotations

import os
import random

import numpy as np
import onnx
import pytest
import torch
from onnx import helper
from typer.testing import CliRunner

import lrcert
from lrcert.cli import app
from lrcert.errors import LrcertError
from onnx_models import SUPPORTED, make, n, weight
from reference import one_layer_radii

FUZZ_CASES = int(os.environ.get("LRCERT_FUZZ_CASES", "300"))


def _corruptions(data: bytes, count: int, seed: int = 0):
    """Byte flips (1 to 8 bytes) and cuts at random offsets, half and half."""
    rng = random.Random(seed)
    for case in range(count):
        if case % 2:
            yield f"cut-{case}", data[: rng.randrange(len(data))]
        else:
            mutated = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            yield f"flip-{case}", bytes(mutated)


def test_fuzzed_onnx_files_never_crash(tmp_path):
    data = SUPPORTED["conv"]().SerializeToString()
    x = np.random.default_rng(0).standard_normal((2, 2, 9, 8))
    outcomes = {"loaded": 0, "refused": 0}
    for name, content in _corruptions(data, FUZZ_CASES):
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(content)
        try:
            network = lrcert.load(path)
        except LrcertError as error:
            assert "\n" not in str(error) and error.fix, (name, str(error))
            outcomes["refused"] += 1
            continue
        outcomes["loaded"] += 1  # a harmless corruption (say, in a weight): it must still certify or refuse
        try:
            results = lrcert.certify(network, x.reshape(2, *network.sample_shape), dtype=torch.float64)
        except LrcertError:
            continue
        assert all(r.radius[p] >= 0 for r in results for p in r.radius), name
    assert outcomes["refused"] > FUZZ_CASES // 2, outcomes


def test_fuzzed_files_through_the_cli_are_one_line(tmp_path):
    data = SUPPORTED["gemm"]().SerializeToString()
    np.save(tmp_path / "x.npy", np.zeros((2, 5), dtype=np.float32))
    runner = CliRunner()
    for name, content in _corruptions(data, 40, seed=1):
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(content)
        result = runner.invoke(app, ["certify", str(path), str(tmp_path / "x.npy"), "-f", "jsonl"])
        assert result.exit_code in (0, 2), (name, result.exit_code, result.stderr)
        assert "Traceback" not in result.stderr
        if result.exit_code == 2:
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def _graph(nodes, initializers, inputs=None, opset=13):
    inits = [onnx.numpy_helper.from_array(v, k) for k, v in initializers.items()]
    graph = helper.make_graph(
        nodes, "hostile", inputs or [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 2])], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize(
    "name, model, message",
    [
        ("missing_initializer", _graph([n("MatMul", ["x", "W"], ["y"])], {}), "not a valid ONNX model"),
        ("cycle", _graph([n("Add", ["x", "y"], ["a"]), n("MatMul", ["a", "W"], ["y"])], {"W": weight(4, 4)}), "not a valid ONNX model"),
        ("opset_too_new", _graph([n("MatMul", ["x", "W"], ["y"])], {"W": weight(4, 2)}, opset=99), "newer than the newest"),
        (
            "zero_size",
            _graph([n("MatMul", ["x", "W"], ["h"]), n("Relu", ["h"], ["y"])], {"W": np.zeros((4, 0), dtype=np.float32)}),
            "with no elements",
        ),
        (
            "two_inputs_of_dynamic_size",  # (two inputs of fixed sizes are joined: tests/test_load_onnx.py)
            _graph([n("Add", ["x", "z"], ["y"])], {}, inputs=[
                helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4]),
                helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, ["N", "M"]),
            ]),
            r"input 'z' has shape \(N, M\); joining several inputs needs fixed sizes besides a batch axis",
        ),
        (
            "integer_input",
            _graph([n("Cast", ["x"], ["y"], to=1)], {}, inputs=[
                helper.make_tensor_value_info("x", onnx.TensorProto.INT64, ["N", 4])]),
            "is not a floating-point tensor",
        ),
        (
            "nan_weights",
            _graph([n("MatMul", ["x", "W"], ["h"]), n("Relu", ["h"], ["y"])], {"W": np.full((4, 2), np.nan, dtype=np.float32)}),
            "holds NaN or Inf",
        ),
    ],
)
def test_broken_graphs_are_refused(tmp_path, name, model, message):
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    with pytest.raises(LrcertError, match=message):
        lrcert.load(path)


def test_an_opset_1_graph_is_upgraded_and_certified_exactly(tmp_path):
    """ONNX's version converter lifts opset 1 to one lrcert reads; the radii are then
    min_j |x·W_j| / ‖W_j‖_q, computed here in NumPy."""
    w = weight(4, 2)
    model = _graph([n("MatMul", ["x", "W"], ["h"]), n("Relu", ["h"], ["y"])], {"W": w}, opset=1)
    onnx.save(model, str(tmp_path / "ancient.onnx"))
    x = np.random.default_rng(3).standard_normal((3, 4))
    results = lrcert.certify(lrcert.load(tmp_path / "ancient.onnx"), x, dtype=torch.float64)
    for p, expected in one_layer_radii(x, w).items():
        np.testing.assert_allclose([r.radius[p] for r in results], expected, rtol=1e-12)


def test_overflow_is_refused_not_reported_as_a_radius(tmp_path):
    model = make([n("MatMul", ["x", "W"], ["h"]), n("Relu", ["h"], ["y"])], ["N", 2],
                 {"W": np.full((2, 2), 3e38, dtype=np.float32)})
    onnx.save(model, str(tmp_path / "huge.onnx"))
    network = lrcert.load(tmp_path / "huge.onnx")
    with pytest.raises(LrcertError, match="overflows on input 1"):
        lrcert.certify(network, np.array([[0.0, 0.0], [10.0, 10.0]]), dtype=torch.float32)
    results = lrcert.certify(network, np.array([[0.0, 0.0], [10.0, 10.0]]), dtype=torch.float64)
    assert results[1].radius["l2"] > 0


@pytest.mark.parametrize("content", [b"not numpy at all", b"\x93NUMPY\x01\x00garbage", b"PK\x03\x04broken zip"])
def test_garbage_data_files(tmp_path, content):
    onnx.save(SUPPORTED["gemm"](), str(tmp_path / "m.onnx"))
    (tmp_path / "bad.npy").write_bytes(content)
    result = CliRunner().invoke(app, ["certify", str(tmp_path / "m.onnx"), str(tmp_path / "bad.npy")])
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Fix:" in result.stderr
