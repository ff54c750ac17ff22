"""The prediction radius r_pred = min_j m_j / ‖∇(f_c − f_j)‖_q, the certified radius min(ε̂, r_pred),
and the closest input with another prediction when r_pred ≤ ε̂: checked against an independent
float64 computation (torch.func.jacrev of the original module, onnxruntime for ONNX files) and
by sampling the certified ball."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

import lrcert
from lrcert.cli import app
from test_engine import NETWORKS

DUAL = {"l1": math.inf, "l2": 2, "linf": 1}
NORMS = ("l1", "l2", "linf")


def _expected(model: nn.Module, x: torch.Tensor) -> dict:
    """r_pred per norm and its rival class, from the module's own Jacobian (reverse mode, float64)."""
    out = model(x[None])[0]
    jacobian = torch.func.jacrev(lambda v: model(v[None])[0])(x).reshape(len(out), -1)
    c = int(out.argmax())
    found = {}
    for p in NORMS:
        ratios = {j: float((out[c] - out[j]) / torch.linalg.vector_norm(jacobian[c] - jacobian[j], DUAL[p]))
                  for j in range(len(out)) if j != c}
        rival = min(ratios, key=ratios.get)
        found[p] = (ratios[rival], rival)
    return found


def _near_boundary(model: nn.Module, shape, count: int, seed: int, gap: float = 1e-4) -> torch.Tensor:
    """Inputs a hair's breadth (``gap`` of a segment) inside their class: bisection between random
    inputs of different predictions. Their margins are small, so r_pred is usually below ε̂."""
    g = torch.Generator().manual_seed(seed)
    found = []
    with torch.no_grad():
        while len(found) < count:
            a, b = torch.randn(2, *shape, generator=g, dtype=torch.float64)
            ca, cb = (int(model(v[None]).argmax()) for v in (a, b))
            if ca == cb:
                continue
            lo, hi = 0.0, 1.0
            while hi - lo > gap:
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if int(model((a + mid * (b - a))[None]).argmax()) == ca else (lo, mid)
            found.append(a + lo * (b - a))
    return torch.stack(found)


def _model(name: str) -> tuple[nn.Module, tuple]:
    make, shape = NETWORKS[name]
    return make().double().eval(), shape


@pytest.mark.parametrize("name", ["mlp", "leaky_mlp", "convnet"])
def test_prediction_radius_equals_an_independent_float64_computation(name):
    model, shape = _model(name)
    x = torch.cat([torch.randn(4, *shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64),
                   _near_boundary(model, shape, 4, seed=6)])
    for dtype in (torch.float64, "auto"):
        for result, xi in zip(lrcert.certify(model, x, dtype=dtype), x):
            expected = _expected(model, xi)
            for p in NORMS:
                radius, rival = expected[p]
                assert result.prediction_radius[p] == pytest.approx(radius, rel=1e-9), (name, p)
                assert result.rival[p] == rival
                assert result.certified_radius[p] == min(result.radius[p], result.prediction_radius[p])
                assert result.exact_adversarial[p] == (result.prediction_radius[p] <= result.radius[p])


def test_float32_prediction_radius_is_close():
    model, shape = _model("convnet")
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(5))
    exact = lrcert.certify(model, x.double(), dtype=torch.float64)
    fast = lrcert.certify(model.float(), x, dtype=torch.float32)
    for a, b in zip(fast, exact):
        assert a.prediction_radius["l2"] == pytest.approx(b.prediction_radius["l2"], rel=1e-4)


@pytest.mark.parametrize("name", ["mlp", "convnet"])
@pytest.mark.parametrize("p", NORMS)
def test_adversarial_points_are_exact(name, p):
    """x* changes the prediction just past it and not before, at distance r_pred, inside the region."""
    model, shape = _model(name)
    x = _near_boundary(model, shape, 6, seed=11)
    engine = lrcert.Engine(lrcert.from_module(model, shape), norms=(p,), dtype=torch.float64, adversarial_norm=p)
    results = engine.run(x)
    exact = [(r, xi) for r, xi in zip(results, x) if r.exact_adversarial[p]]
    assert len(exact) >= 3, "the near-boundary inputs should mostly have r_pred ≤ ε̂"
    for r, xi in zip(results, x):
        assert np.isnan(r.adversarial).all() != r.exact_adversarial[p]
    for r, xi in exact:
        point = torch.from_numpy(r.adversarial)
        step = point - xi
        assert float(torch.linalg.vector_norm(step.flatten(), {"l1": 1, "l2": 2, "linf": math.inf}[p])) == pytest.approx(
            r.prediction_radius[p], rel=1e-9)
        with torch.no_grad():
            before, after = (int(model((xi + s * step)[None]).argmax()) for s in (1 - 1e-6, 1 + 1e-6))
        assert before == r.prediction and after != r.prediction
        inside = engine.run((xi + (1 - 1e-6) * step)[None])[0]
        assert inside.pattern == r.pattern  # x* is in x's linear region


@pytest.mark.parametrize("name", ["mlp", "leaky_mlp", "convnet"])
def test_no_point_inside_the_certified_ball_changes_the_prediction(name):
    """Sampling: the ball's extreme points (±R·e_k for l1, R·sign vectors for linf, random
    directions for l2) at 0.999999 of the certified radius, around random and near-boundary inputs."""
    model, shape = _model(name)
    x = torch.cat([torch.randn(3, *shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64),
                   _near_boundary(model, shape, 3, seed=4)])
    g = torch.Generator().manual_seed(9)
    d = math.prod(shape)
    for result, xi in zip(lrcert.certify(model, x, dtype=torch.float64), x):
        for p in NORMS:
            radius = 0.999999 * result.certified_radius[p]
            if p == "l1":
                steps = torch.cat([torch.eye(d, dtype=torch.float64), -torch.eye(d, dtype=torch.float64)]) * radius
            elif p == "linf":
                steps = torch.randint(0, 2, (200, d), generator=g).double().mul(2).sub(1) * radius
            else:
                directions = torch.randn(200, d, generator=g, dtype=torch.float64)
                steps = directions / directions.norm(dim=1, keepdim=True) * radius
            with torch.no_grad():
                predicted = model(xi[None] + steps.reshape(-1, *shape)).argmax(dim=1)
            assert (predicted == result.prediction).all(), (name, p, result.index)


def test_a_model_with_one_output_has_no_prediction_radius():
    model, shape = _model("decoder")
    result = lrcert.certify(model, torch.randn(2, *shape, dtype=torch.float64), dtype=torch.float64)[0]
    assert result.prediction_radius is None and result.certified_radius is None and result.exact_adversarial is None


# ------------------------------------------------------------------------------------ the command


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small ONNX MLP (legacy exporter) and inputs near its decision boundaries."""
    folder = tmp_path_factory.mktemp("prediction")
    model, shape = _model("mlp")
    torch.onnx.export(model.float(), (torch.zeros(1, *shape),), str(folder / "mlp.onnx"), dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "n"}})
    x = torch.cat([_near_boundary(model.double(), shape, 8, seed=21, gap=1e-3), torch.randn(4, *shape, dtype=torch.float64)])
    np.save(folder / "x.npy", x.numpy())
    return folder


def test_adversarial_out_checked_with_onnxruntime(exported):
    onnxruntime = pytest.importorskip("onnxruntime")
    folder = exported
    run = CliRunner().invoke(app, ["certify", str(folder / "mlp.onnx"), str(folder / "x.npy"), "-f", "json",
                                   "-o", str(folder / "r.json"), "--adversarial-out", str(folder / "adv.npy"),
                                   "--adversarial-norm", "inf"])
    assert run.exit_code == 0, run.output
    doc = json.loads((folder / "r.json").read_text())
    points, x = np.load(folder / "adv.npy"), np.load(folder / "x.npy")
    assert points.shape == x.shape and points.dtype == np.float64
    session = onnxruntime.InferenceSession(str(folder / "mlp.onnx"))
    predict = lambda v: session.run(None, {"x": np.asarray(v, dtype=np.float32)[None]})[0][0].argmax()
    exact = 0
    for record, point, xi in zip(doc["results"], points, x):
        assert set(record["prediction_radius"]) == set(NORMS) and record["certified_radius"]["l2"] <= record["radius"]["l2"]
        if not record["exact_adversarial"]["linf"]:
            assert np.isnan(point).all()
            continue
        exact += 1
        step = point - xi
        assert np.abs(step).max() == pytest.approx(record["prediction_radius"]["linf"], rel=1e-9)
        # float32 inference: 1 % of a margin of about 1e-2 is far beyond its rounding
        assert predict(xi + 0.99 * step) == record["prediction"] and predict(xi + 1.01 * step) != record["prediction"]
    assert exact >= 4


def test_min_certified_check_and_csv_fields(exported):
    folder = exported
    runner = CliRunner()
    doc = json.loads(runner.invoke(app, ["certify", str(folder / "mlp.onnx"), str(folder / "x.npy"), "-f", "json"]).stdout)
    smallest = min(r["certified_radius"]["l2"] for r in doc["results"])
    ok = runner.invoke(app, ["certify", str(folder / "mlp.onnx"), str(folder / "x.npy"), "-f", "csv",
                             "--min-certified", f"l2={smallest / 2}"])
    assert ok.exit_code == 0 and "passed: all 12 inputs have l2 certified radius" in ok.output
    header = ok.stdout.splitlines()[0].split(",")
    assert {"prediction_radius_l2", "certified_l2", "exact_adversarial_linf"} <= set(header)
    failed = runner.invoke(app, ["certify", str(folder / "mlp.onnx"), str(folder / "x.npy"), "-f", "jsonl",
                                 "--min-certified", str(smallest * 2)])
    assert failed.exit_code == 1 and "FAILED" in failed.output and "certified radius below" in failed.output


@pytest.mark.parametrize("args, message", [
    (["--adversarial-out", "points.txt"], "does not end in .npy"),
    (["--adversarial-out", "a.npy", "--adversarial-norm", "3"], "unknown norm"),
    (["--adversarial-out", "a.npy", "--p", "1", "--adversarial-norm", "2"], "is not one of the certified norms"),
    (["--adversarial-out", "a.npy", "-f", "jsonl", "-o", "r.jsonl", "--resume"], "cannot continue an interrupted run"),
    (["--min-certified", "l3=1"], "--min-certified"),
    (["--report", "r.pdf"], "does not end in .html"),
    (["--no-prediction-radius", "--min-certified", "1"], "need the prediction radius"),
])
def test_bad_prediction_options_get_one_line(exported, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    run = CliRunner().invoke(app, ["certify", str(exported / "mlp.onnx"), str(exported / "x.npy"), *args])
    assert run.exit_code == 2 and message in run.stderr and "Traceback" not in run.output
    assert len(run.stderr.strip().splitlines()) == 1 and not run.stdout


def test_no_prediction_radius_leaves_the_fields_null(exported):
    run = CliRunner().invoke(app, ["certify", str(exported / "mlp.onnx"), str(exported / "x.npy"), "-f", "jsonl",
                                   "--no-prediction-radius"])
    assert run.exit_code == 0, run.output
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert all(r["prediction_radius"] is None and r["certified_radius"] is None for r in records)
    assert all(r["radius"]["l2"] > 0 for r in records)
