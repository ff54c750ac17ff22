"""Graph forms of third-party ONNX files: a Conv kernel from a Constant node, a MatMul by
Transpose(weight), a 1-D input times a matrix, several inputs without a batch axis, inputs whose
batch axes differ (dynamic and 1), an output declared without a type. Each is read, reproduces
onnxruntime, and certifies to the radii of an independent float64 twin (reference.py's hooks)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

import lrcert
from lrcert.models.fold import complete_types, fold_constants
from reference import reference_radii, relative_error

RNG = np.random.default_rng(11)
W, W2 = RNG.standard_normal((5, 4)).astype(np.float32), RNG.standard_normal((4, 3)).astype(np.float32)
K, V = RNG.standard_normal((2, 1, 3, 3)).astype(np.float32), RNG.standard_normal((18, 2)).astype(np.float32)
A, B, C = (RNG.standard_normal(shape).astype(np.float32) for shape in ((5, 4), (5, 4), (4, 3)))


def _model(nodes, inputs, outputs, weights=None, constants=None):
    initializers = [numpy_helper.from_array(v, k) for k, v in (weights or {}).items()]
    made = [helper.make_node("Constant", [], [k], value=numpy_helper.from_array(v)) for k, v in (constants or {}).items()]
    graph = helper.make_graph([*made, *nodes], "form", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _float(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _untyped(name):
    info = onnx.ValueInfoProto()
    info.name = name
    return info


class _Dense(nn.Module):
    """relu(x W) W2 in float64, x of any leading shape."""

    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(x.reshape(-1, 5) @ torch.from_numpy(W).double()) @ torch.from_numpy(W2).double()


class _HalfDense(_Dense):
    """_Dense with W stored in float16 (as the graph keeps it)."""

    def forward(self, x):
        w = torch.from_numpy(W.T.astype(np.float16).T.astype(np.float64))
        return self.relu(x.reshape(-1, 5) @ w) @ torch.from_numpy(W2).double()


class _ConstConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, bias=False).double()
        self.conv.weight.data = torch.from_numpy(K).double()
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv(x.reshape(-1, 1, 5, 5))).flatten(1) @ torch.from_numpy(V).double()


class _Unbatched(nn.Module):
    """p (2, 5) and q (5, 1) from one joint row of 15: relu(p A) summed, and relu(q' B) C."""

    def __init__(self):
        super().__init__()
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()

    def forward(self, row):
        row = row.reshape(-1)
        p, q = row[:10].reshape(2, 5), row[10:].reshape(1, 5)
        total = self.relu1(p @ torch.from_numpy(A).double()).sum()
        y = self.relu2(q @ torch.from_numpy(B).double()) @ torch.from_numpy(C).double()
        return torch.cat([y.reshape(-1), total.reshape(1)])


class _MixedBatch(nn.Module):
    """p (N, 5) and q (1, 4) from one joint row of 9: relu(p A + q)."""

    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU()

    def forward(self, row):
        row = row.reshape(1, 9)
        return self.relu(row[:, :5] @ torch.from_numpy(A).double() + row[:, 5:])


def _dense_nodes(first="W"):
    return [helper.make_node("MatMul", ["x", first], ["h"]), helper.make_node("Relu", ["h"], ["a"]),
            helper.make_node("MatMul", ["a", "W2"], ["y"])]


FORMS = {
    "conv kernel from a Constant node": (lambda: _model(
        [helper.make_node("Conv", ["x", "K"], ["c"]), helper.make_node("Relu", ["c"], ["a"]),
         helper.make_node("Flatten", ["a"], ["f"]), helper.make_node("MatMul", ["f", "V"], ["y"])],
        [_float("x", ["N", 1, 5, 5])], [_float("y", ["N", 2])], {"V": V}, {"K": K}), _ConstConv, (1, 5, 5)),
    "MatMul by Transpose(weight)": (lambda: _model(
        [helper.make_node("Transpose", ["Wt"], ["WT"]), *_dense_nodes("WT")],
        [_float("x", ["N", 5])], [_float("y", ["N", 3])], {"W2": W2}, {"Wt": W.T.copy()}), _Dense, (5,)),
    "MatMul by Transpose(Cast(float16 weight))": (lambda: _model(
        [helper.make_node("Cast", ["Wh"], ["Wc"], to=TensorProto.FLOAT), helper.make_node("Transpose", ["Wc"], ["WT"]),
         *_dense_nodes("WT")], [_float("x", ["N", 5])], [_float("y", ["N", 3])],
        {"Wh": W.T.astype(np.float16), "W2": W2}), _HalfDense, (5,)),
    "a 1-D input times a matrix": (lambda: _model(
        _dense_nodes(), [_float("x", [5])], [_float("y", [3])], {"W": W, "W2": W2}), _Dense, (5,)),
    "an output without a type": (lambda: _model(
        _dense_nodes(), [_float("x", ["N", 5])], [_float("y", ["N", 3]), _untyped("h")], {"W": W, "W2": W2}), _Dense, (5,)),
    "inputs without a batch axis": (lambda: _model(
        [helper.make_node("MatMul", ["p", "A"], ["pa"]), helper.make_node("Relu", ["pa"], ["r"]),
         helper.make_node("ReduceSum", ["r"], ["s"], keepdims=0), helper.make_node("Flatten", ["q"], ["qf"], axis=0),
         helper.make_node("MatMul", ["qf", "B"], ["qb"]), helper.make_node("Relu", ["qb"], ["qr"]),
         helper.make_node("MatMul", ["qr", "C"], ["y0"])],
        [_float("p", [2, 5]), _float("q", [5, 1])], [_float("y0", [1, 3]), _float("s", [])],
        {"A": A, "B": B, "C": C}), _Unbatched, (15,)),
    "inputs whose batch axes differ": (lambda: _model(
        [helper.make_node("MatMul", ["p", "A"], ["pa"]), helper.make_node("Add", ["pa", "q"], ["z"]),
         helper.make_node("Relu", ["z"], ["y"])],
        [_float("p", ["N", 5]), _float("q", [1, 4])], [_float("y", ["N", 4])], {"A": A}), _MixedBatch, (9,)),
}


def _feeds(model, row: np.ndarray) -> dict:
    """One joint row as onnxruntime's feeds, in the graph's input order and shapes (batch 1)."""
    feeds, start = {}, 0
    for entry in model.graph.input:
        dims = [d.dim_value or 1 for d in entry.type.tensor_type.shape.dim]
        size = int(np.prod(dims))
        feeds[entry.name] = row[start:start + size].reshape(dims).astype(np.float32)
        start += size
    return feeds


@pytest.mark.parametrize("form", sorted(FORMS))
def test_third_party_graph_forms_certify_exactly(form, tmp_path):
    make, twin, shape = FORMS[form]
    model = make()
    path = tmp_path / "form.onnx"
    onnx.save(model, str(path))
    network = lrcert.load(path)
    assert network.sample_shape == shape, network.sample_shape
    rows = np.random.default_rng(3).standard_normal((4, *shape))
    session = onnxruntime.InferenceSession(make().SerializeToString(), providers=["CPUExecutionProvider"])
    for k, result in enumerate(lrcert.certify(network, rows, dtype=torch.float64)):
        expected = session.run(None, _feeds(model, rows[k].reshape(-1)))[0]
        got = network.run(torch.from_numpy(rows[k : k + 1])).numpy()
        np.testing.assert_allclose(got.reshape(-1)[: expected.size], expected.reshape(-1), rtol=1e-4, atol=1e-5)
        reference = reference_radii(twin(), torch.from_numpy(rows[k]).reshape(1, *shape))
        for p in ("l1", "l2", "linf"):
            assert relative_error(result.radius[p], reference[p]) < 1e-9, (form, k, p)


def test_only_exact_constant_subgraphs_are_folded():
    scale = np.float32(0.3)
    model = _model([helper.make_node("Transpose", ["Wt"], ["WT"]), helper.make_node("Mul", ["WT", "s"], ["Ws"]),
                    *_dense_nodes("Ws")], [_float("x", ["N", 5])], [_float("y", ["N", 3])], {"W2": W2},
                   {"Wt": W.T.copy(), "s": np.array(scale)})
    assert fold_constants(model) == 3  # the two Constant nodes and the Transpose; the Mul stays for the trace
    assert [node.op_type for node in model.graph.node] == ["Mul", "MatMul", "Relu", "MatMul"]
    folded = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_array_equal(folded["WT"], W)
    untyped = _model(_dense_nodes(), [_float("x", ["N", 5])], [_float("y", ["N", 3]), _untyped("h")], {"W": W, "W2": W2})
    assert complete_types(untyped) == 1 and untyped.graph.output[1].type.tensor_type.elem_type == TensorProto.FLOAT
