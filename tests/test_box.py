"""--box (lrcert.run.box): the closest point with another prediction inside lo ≤ x ≤ hi. Each norm's
program against an independent solver (HiGHS's linear programs for ℓ1 and ℓ∞, SciPy's SLSQP and
the KKT conditions for ℓ2); the command line's adversarial points lie in the box, on the boundary
to the rival class, at the reported prediction radius, never nearer than the free one."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog, minimize

import lrcert
from lrcert.run.box import nearest_in_box, parse
from lrcert.errors import LrcertError
from test_cli import assert_error, invoke
from test_sources import SmallConvNet, _export, _image_folder


def _highs(g, m, x, lo, hi, p) -> float:
    """The same program as a linear program for HiGHS (ℓ1: δ = u − v; ℓ∞: −t ≤ δ ≤ t)."""
    n, a, b = len(g), lo - x, hi - x
    if p == "l1":
        found = linprog(np.ones(2 * n), A_ub=np.concatenate([g, -g])[None], b_ub=[-m], method="highs",
                        bounds=list(zip(np.zeros(2 * n), np.concatenate([np.maximum(b, 0), np.maximum(-a, 0)]))))
    else:
        rows = np.block([[np.eye(n), -np.ones((n, 1))], [-np.eye(n), -np.ones((n, 1))], [g[None], np.zeros((1, 1))]])
        found = linprog(np.append(np.zeros(n), 1.0), A_ub=rows, b_ub=np.append(np.zeros(2 * n), -m), method="highs",
                        bounds=[*zip(a, b), (0, None)])
    return math.inf if found.status == 2 else found.fun


def _problems(count: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        d = int(rng.integers(2, 40))
        g = rng.standard_normal(d) * (rng.random(d) > 0.2)  # (some coordinates do not matter)
        yield g, float(rng.random() * rng.choice([0.1, 1.0, 4.0])), rng.random(d)


@pytest.mark.parametrize("p", ["l1", "linf"])
def test_l1_and_linf_are_highs_linear_programs_answers(p):
    worst = 0.0
    for g, m, x in _problems(200, seed=1 if p == "l1" else 2):
        distance, step = nearest_in_box(g, m, x, 0.0, 1.0, p)
        expected = _highs(g, m, x, 0.0, 1.0, p)
        assert math.isinf(distance) == math.isinf(expected), (distance, expected)
        if math.isinf(expected):
            assert step is None
            continue
        worst = max(worst, abs(distance - expected) / expected)
        assert np.all(x + step >= 0) and np.all(x + step <= 1)
        assert abs(m + g @ step) <= 1e-12 * max(m, 1.0)  # on the hyperplane
        assert distance == pytest.approx(np.linalg.norm(step, 1 if p == "l1" else np.inf), rel=1e-15)
    assert worst < 1e-7  # (HiGHS's own tolerance; lrcert's answers are exact in float64)


def test_l2_is_the_projection_slsqp_finds_and_meets_the_kkt_conditions():
    for g, m, x in _problems(60, seed=3):
        distance, step = nearest_in_box(g, m, x, 0.0, 1.0, "l2")
        if math.isinf(distance):
            assert m + np.minimum(-g * x, g * (1 - x)).sum() > 0  # no point of the box reaches the hyperplane
            continue
        found = minimize(lambda d: d @ d, np.clip(-g * m / (g @ g), -x, 1 - x), jac=lambda d: 2 * d, method="SLSQP",
                         bounds=list(zip(-x, 1 - x)), constraints=[{"type": "ineq", "fun": lambda d: -(m + g @ d), "jac": lambda d: -g}],
                         options={"ftol": 1e-15, "maxiter": 1000})
        assert distance <= math.sqrt(found.fun) * (1 + 1e-9) and distance >= math.sqrt(found.fun) * (1 - 1e-6)
        free = (step > -x + 1e-12) & (step < 1 - x - 1e-12) & (g != 0)
        if free.any():  # δ = clip(−λg, a, b) for one λ ≥ 0 (the KKT conditions)
            lam = float(np.median(-step[free] / g[free]))
            assert lam >= 0 and np.allclose(np.clip(-lam * g, -x, 1 - x), step, rtol=1e-9, atol=1e-12)
        assert abs(m + g @ step) <= 1e-12 * max(m, 1.0)


def test_a_box_never_shortens_the_distance_and_a_large_one_changes_nothing():
    for g, m, x in _problems(50, seed=4):
        for p, q in (("l1", np.inf), ("l2", 2), ("linf", 1)):
            free = m / np.linalg.norm(g, q) if np.any(g) else math.inf
            assert nearest_in_box(g, m, x, 0.0, 1.0, p)[0] >= free * (1 - 1e-12)
            assert nearest_in_box(g, m, x, -1e6, 1e6, p)[0] == pytest.approx(free, rel=1e-12)


def test_parse():
    assert parse("0,1") == (0.0, 1.0) and parse("none") is None and parse("-1,2.5") == (-1.0, 2.5)
    for bad in ("1", "1,0", "a,b", "0,inf"):
        with pytest.raises(LrcertError):
            parse(bad)


def test_image_folders_take_the_box_0_1_by_default_and_the_report_says_so(tmp_path):
    model = _export(SmallConvNet(), tmp_path / "net.onnx")
    root = _image_folder(tmp_path / "images", sizes=[(8, 8)] * 3)
    for extra, expected in (([], [0.0, 1.0]), (["--box", "none"], None)):
        result = invoke("certify", model, root, "-f", "json", "--report", tmp_path / "page.html", *extra)
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["options"]["box"] == expected
        page = (tmp_path / "page.html").read_text()
        assert ("prediction radii and adversarial points within [0, 1]" in page) == (expected is not None)


def _near_the_boundary(network, count: int) -> np.ndarray:
    """Random images moved 70 % of the way toward their free adversarial point, five times (clipped
    to [0, 1]): most end with a prediction radius under ε̂, many with pixels at 0 or 1."""
    from lrcert.engine import prediction

    network = network.to("cpu", torch.float64)
    x = torch.from_numpy(np.random.default_rng(0).random((count, 3, 8, 8)))
    for _ in range(5):
        step = prediction.margins(network, x, ("l2",), "l2", 1 << 28)["adversarial"] - x
        x = (x + 0.7 * step).clip(0, 1)
    return x.numpy()


def test_adversarial_points_in_the_box_are_exact_and_inside_it(tmp_path):
    model = _export(SmallConvNet(), tmp_path / "net.onnx")
    network = lrcert.load(model)
    x = _near_the_boundary(network, 40)
    np.save(tmp_path / "x.npy", x)
    runs = {}
    for box in ("0,1", "none"):
        result = invoke("certify", model, tmp_path / "x.npy", "-f", "json", "--box", box, "--adversarial-out", tmp_path / "points.npy")
        assert result.exit_code == 0, result.stderr
        runs[box] = (json.loads(result.stdout)["results"], np.load(tmp_path / "points.npy"))
    (boxed, points), (free, _) = runs["0,1"], runs["none"]
    exact = longer = 0
    for k, (got, loose) in enumerate(zip(boxed, free)):
        assert got["prediction_radius"]["l2"] >= loose["prediction_radius"]["l2"] * (1 - 1e-9)  # (two float64 gradients)
        if not got["exact_adversarial"]["l2"]:
            assert np.isnan(points[k]).all()
            continue
        exact += 1
        longer += got["prediction_radius"]["l2"] > loose["prediction_radius"]["l2"] * (1 + 1e-9)
        point = points[k]
        assert point.min() >= 0 and point.max() <= 1  # in the box
        assert np.linalg.norm((point - x[k]).ravel()) == pytest.approx(got["prediction_radius"]["l2"], rel=1e-9)
        logits = network.to("cpu", torch.float64).run(torch.from_numpy(point[None])).reshape(-1)
        rival, predicted = got["rival"]["l2"], got["prediction"]
        assert abs(float(logits[predicted] - logits[rival])) <= 1e-9 * float(logits.abs().max())  # a tie: the boundary
    assert exact >= 10 and longer >= 5  # (the box binds on some: their pixels at 0 or 1 cannot move further)


def test_inputs_outside_the_box_are_refused(tmp_path):
    model = _export(SmallConvNet(), tmp_path / "net.onnx")
    np.save(tmp_path / "x.npy", np.full((2, 3, 8, 8), 1.5, dtype=np.float32))
    assert_error(invoke("certify", model, tmp_path / "x.npy", "--box", "0,1"), 2, "input 0 lies outside the box [0, 1]")
