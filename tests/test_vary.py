"""``--vary`` (Network.vary): a model of several inputs certified along some of them, the others
held at each row's values. Radii, binding faces, prediction radii and adversarial points, by every
way the engine has (dense, screened, sketched, float64 and auto), against an independent float64
computation: the model written in torch as a function of the varied coordinates alone."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

import lrcert
from lrcert.engine import Engine
from lrcert.errors import LrcertError
from onnx_models import n
from reference import reference_radii, relative_error
from test_cli import assert_error, invoke

RNG = np.random.default_rng(22)
IMG, VEC, CLASSES = (2, 6, 6), 5, 40
SIZES = {"img": math.prod(IMG), "vec": VEC}
WEIGHTS = {
    "W1": RNG.standard_normal((4, 2, 3, 3)) * 0.5, "b1": RNG.standard_normal(4) * 0.1,
    "W2": RNG.standard_normal((VEC, 8)) * 0.5, "b2": RNG.standard_normal(8) * 0.1,
    "W3": RNG.standard_normal((36 + 8, CLASSES)) * 0.3, "b3": RNG.standard_normal(CLASSES) * 0.1,
}


def _model() -> onnx.ModelProto:
    """An image branch (conv, ReLU, max-pool) and a vector branch (dense, ReLU), concatenated into 40 logits."""
    nodes = [n("Conv", ["img", "W1", "b1"], ["c"], pads=[1, 1, 1, 1]), n("Relu", ["c"], ["r"]),
             n("MaxPool", ["r"], ["m"], kernel_shape=[2, 2], strides=[2, 2]), n("Flatten", ["m"], ["f"]),
             n("MatMul", ["vec", "W2"], ["p"]), n("Add", ["p", "b2"], ["q"]), n("Relu", ["q"], ["h"]),
             n("Concat", ["f", "h"], ["joined"], axis=1), n("MatMul", ["joined", "W3"], ["s"]), n("Add", ["s", "b3"], ["y"])]
    graph = helper.make_graph(
        nodes, "two_branches",
        [helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", *IMG]),
         helper.make_tensor_value_info("vec", TensorProto.FLOAT, ["N", VEC])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", CLASSES])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in WEIGHTS.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


class _Twin(nn.Module):
    """The same network in float64 torch, as a function of the varied coordinates of one joint row
    ``x`` (the others held at x's values)."""

    def __init__(self, x: torch.Tensor, varied: torch.Tensor):
        super().__init__()
        self.x, self.varied = x, varied
        w = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)).double() for k, v in WEIGHTS.items()}
        self.conv = nn.Conv2d(2, 4, 3, padding=1).double()
        self.conv.weight.data, self.conv.bias.data = w["W1"], w["b1"]
        self.w = w
        self.relu1, self.relu2, self.pool = nn.ReLU(), nn.ReLU(), nn.MaxPool2d(2)

    def forward(self, part: torch.Tensor) -> torch.Tensor:
        row = self.x.expand(len(part), -1).clone()
        row[:, self.varied] = part
        img, vec = row[:, : SIZES["img"]].reshape(-1, *IMG), row[:, SIZES["img"] :]
        f = self.pool(self.relu1(self.conv(img))).flatten(1)
        h = self.relu2(vec @ self.w["W2"] + self.w["b2"])
        return torch.cat([f, h], dim=1) @ self.w["W3"] + self.w["b3"]


def _varied(names) -> torch.Tensor:
    start = {"img": 0, "vec": SIZES["img"]}
    return torch.cat([torch.arange(start[name], start[name] + SIZES[name]) for name in names])


def _reference_prediction_radii(twin: _Twin, part: torch.Tensor) -> dict[str, float]:
    """min over j ≠ c of (f_c − f_j) / ‖∇(f_c − f_j)‖_q, by autograd's Jacobian of the varied coordinates."""
    out = twin(part)[0].detach()
    jacobian = torch.autograd.functional.jacobian(lambda v: twin(v)[0], part)[:, 0]
    c = int(out.argmax())
    found = {}
    for p, q in (("l1", math.inf), ("l2", 2), ("linf", 1)):
        ratios = [(out[c] - out[j]) / torch.linalg.vector_norm(jacobian[c] - jacobian[j], q)
                  for j in range(CLASSES) if j != c]
        found[p] = float(min(ratios))
    return found


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    path = tmp_path_factory.mktemp("vary") / "two_branches.onnx"
    onnx.save(_model(), str(path))
    return lrcert.load(path)


@pytest.fixture(scope="module")
def rows(network):
    """Six random rows, and for each way of varying one whose prediction radius is under its ε̂
    (so its adversarial point is exact), found among 200 more."""
    drawn = torch.from_numpy(RNG.standard_normal((206, SIZES["img"] + VEC)))
    chosen = list(range(6))
    for names in (["img"], ["vec"], ["img", "vec"]):
        found = Engine(network.vary(names), dtype=torch.float64).run(drawn[6:])
        chosen.append(6 + next(r.index for r in found if r.prediction_radius["l2"] < r.radius["l2"]))
    return drawn[chosen]


ENGINES = {
    "dense float64": dict(dtype=torch.float64, screen=False, guarantee="deterministic"),
    "dense auto": dict(screen=False, guarantee="deterministic"),
    "screened auto (the default)": dict(),
    "sketched float64": dict(dtype=torch.float64, sketch=True, screen=False),
    "screened and sketched auto": dict(sketch=True),
}


@pytest.mark.parametrize("names", [["img"], ["vec"], ["vec", "img"]], ids=["img", "vec", "both"])
@pytest.mark.parametrize("way", sorted(ENGINES))
def test_radii_along_some_inputs_are_the_partial_gradients_ones(network, rows, names, way, monkeypatch):
    monkeypatch.setattr(lrcert.engine.screen, "SHARE", 1.0)  # (small inputs: as many exact gradients as needed)
    varying = network.vary(names)
    varied = _varied(["img", "vec"] if len(names) == 2 else names)
    assert varying.dimensions == len(varied) and torch.equal(varying.varied, varied)
    results = Engine(varying, adversarial_norm="l2", **ENGINES[way]).run(rows)
    assert any(r.delta > 0 for r in results) if way == "sketched float64" else True  # (D = 5: some go dense)
    moved = 0
    for k, result in enumerate(results):
        twin = _Twin(rows[k : k + 1], varied)
        part = rows[k : k + 1, varied]
        expected, predicted = reference_radii(twin, part), _reference_prediction_radii(twin, part)
        for p in ("l1", "l2", "linf"):
            assert relative_error(result.radius[p], expected[p]) < 1e-9, (k, p, result.radius[p], expected[p])
            assert relative_error(result.prediction_radius[p], predicted[p]) < 1e-9, (k, p)
        if result.adversarial is not None and not np.isnan(result.adversarial).any():
            point = torch.from_numpy(result.adversarial).reshape(1, -1)
            held = torch.ones(point.shape[1], dtype=torch.bool).index_fill(0, varied, False)
            assert torch.equal(point[0, held], rows[k, held])  # only the varied coordinates moved
            assert relative_error(float((point - rows[k]).norm()), result.prediction_radius["l2"]) < 1e-9
            logits = twin(point[:, varied])[0]
            top = logits.topk(2).values
            assert float(top[0] - top[1]) < 1e-9 * float(top[0].abs())  # on the boundary to the rival class
            moved += 1
    assert moved > 0  # (some input's prediction radius is under its ε̂, so its adversarial point is exact)


def test_varying_every_input_is_the_joint_space(network, rows):
    joint = Engine(network, dtype=torch.float64).run(rows)
    every = Engine(network.vary(["vec", "img"]), dtype=torch.float64).run(rows)
    for a, b in zip(joint, every):
        assert a.radius == pytest.approx(b.radius, rel=1e-12) and a.pattern == b.pattern


def test_the_held_inputs_only_shrink_the_directions_so_radii_grow(network, rows):
    joint = Engine(network, dtype=torch.float64).run(rows)
    for names in (["img"], ["vec"]):
        for a, b in zip(joint, Engine(network.vary(names), dtype=torch.float64).run(rows)):
            assert all(b.radius[p] >= a.radius[p] * (1 - 1e-12) for p in a.radius)


def test_vary_refuses_unknown_names_one_input_models_and_a_second_call(network):
    with pytest.raises(LrcertError, match=r"no input 'z' \(its inputs: img, vec\)"):
        network.vary(["z"])
    with pytest.raises(LrcertError, match="already varies"):
        network.vary(["img"]).vary(["vec"])
    one = lrcert.from_module(nn.Sequential(nn.Linear(3, 2), nn.ReLU()), (3,))
    with pytest.raises(LrcertError, match="models with several inputs"):
        one.vary(["x"])


def test_the_tensors_of_a_varying_network_are_on_the_meta_device(network, rows):
    meta = Engine(network.vary(["img"]), device="meta", dtype=torch.float64)
    assert meta.varied.device.type == "meta" and meta.identity(0, 3).device.type == "meta"


def test_certify_vary_on_the_command_line(tmp_path, network, rows):
    onnx.save(_model(), str(tmp_path / "two.onnx"))
    np.save(tmp_path / "rows.npy", rows.numpy())
    varying = invoke("certify", tmp_path / "two.onnx", tmp_path / "rows.npy", "--vary", "vec", "-f", "json",
                     "--adversarial-out", tmp_path / "points.npy")
    assert varying.exit_code == 0, varying.stderr
    assert "certified along vec only: img held at each row's values" in varying.stderr
    document = json.loads(varying.stdout)
    assert document["options"]["vary"] == ["vec"]
    expected = Engine(network.vary(["vec"])).run(rows)
    for got, want in zip(document["results"], expected):
        assert got["radius"] == pytest.approx(want.radius, rel=1e-12)
    points = np.load(tmp_path / "points.npy")
    found = ~np.isnan(points).any(axis=1)
    assert found.any() and np.array_equal(points[found, : SIZES["img"]], rows.numpy()[found, : SIZES["img"]])
    assert_error(invoke("certify", tmp_path / "two.onnx", tmp_path / "rows.npy", "--vary", "z"), 2,
                 "has no input 'z' (its inputs: img, vec)")


def test_the_dense_way_pushes_only_the_varied_directions(network, rows):
    for names in (["img"], ["vec"]):
        engine = Engine(network.vary(names), dtype=torch.float64, screen=False, guarantee="deterministic")
        engine.run(rows)
        assert engine.work.pushed == len(rows) * SIZES[names[0]]


def test_vary_on_a_model_of_one_input_is_refused_in_one_line(tmp_path):
    from pathlib import Path

    models = Path(__file__).parent.parent / "models"
    assert_error(invoke("certify", models / "moons_mlp.onnx", models / "moons_mlp.inputs.npy", "--vary", "x"), 2,
                 "--vary is for models with several inputs; this one has one")


def test_a_direction_that_moves_a_held_input_is_refused(tmp_path, rows):
    onnx.save(_model(), str(tmp_path / "two.onnx"))
    np.save(tmp_path / "rows.npy", rows.numpy())
    direction = np.zeros(rows.shape[1])
    direction[-1] = 1.0  # along vec
    np.save(tmp_path / "along_vec.npy", direction[None])
    along = invoke("certify", tmp_path / "two.onnx", tmp_path / "rows.npy", "--vary", "vec", "--direction",
                   tmp_path / "along_vec.npy", "-f", "json")
    assert along.exit_code == 0, along.stderr
    assert all(r["direction"]["radius"] > 0 for r in json.loads(along.stdout)["results"])
    assert_error(invoke("certify", tmp_path / "two.onnx", tmp_path / "rows.npy", "--vary", "img", "--direction",
                        tmp_path / "along_vec.npy"), 2, "moves the inputs --vary holds")
