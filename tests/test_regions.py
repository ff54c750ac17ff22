"""lrcert plot and lrcert path: the drawn regions and balls are right, the segment counts are exact."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import PROJECT_MODELS
from matplotlib.path import Path as Polygon
from reference import pattern_of, run_with_hooks
from typer.testing import CliRunner

from lrcert.cli import app
from lrcert.models.load import from_module
from lrcert.results.plot import make_plane, picture
from lrcert.results.regions import region_ids, walk

runner = CliRunner()


def net(seed: int, inputs: int, widths=(12, 12)) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip((inputs, *widths[:-1]), widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(widths[-1], 3)).double().eval()


def cnn(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 3 * 3, 8), nn.ReLU(), nn.Linear(8, 2)
    ).double().eval()


@pytest.mark.parametrize("model, shape, dirs", [(net(0, 2), (2,), "random"), (net(1, 5), (5,), "gradient"), (cnn(2), (1, 8, 8), "toward:1")])
def test_drawn_regions_and_balls_are_exact(model, shape, dirs):
    network = from_module(model, shape)
    data = torch.randn(4, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    plane = make_plane(network, data, [0], dirs, None)
    result = picture(network, plane, data, [0], resolution=60)
    generator = np.random.default_rng(0)
    for view in (result, result.zoom):
        # points inside every drawn ball share the centre's pattern (reference hooks, not lrcert's)
        for outlines in view.balls.values():
            centre = pattern_of(model, plane.points(outlines["l2"].mean(axis=0, keepdims=True)).reshape(1, *shape))
            for p, outline in outlines.items():
                polygon = Polygon(outline)
                low, high = outline.min(0), outline.max(0)
                samples = generator.uniform(low, high, (400, 2))
                inside = samples[polygon.contains_points(samples, radius=-1e-12 * np.abs(high - low).max())]
                assert len(inside) > 50
                for point in plane.points(inside * (1 - 1e-6) + outline.mean(0) * 1e-6).reshape(-1, *shape):
                    assert pattern_of(model, point[None]) == centre, p
        # pixels of different colour have different patterns; pixels of one label share one pattern
        flat = view.regions.reshape(-1)
        points = plane.points(view.grid.reshape(-1, 2))
        chosen = generator.choice(len(flat), 300, replace=False)
        patterns = [pattern_of(model, points[k].reshape(1, *shape)) for k in chosen]
        colours = view.colours[flat[chosen]]
        for i in range(len(chosen)):
            for j in range(i + 1, len(chosen)):
                same_label = flat[chosen[i]] == flat[chosen[j]]
                assert (patterns[i] == patterns[j]) == same_label
                if not np.allclose(colours[i], colours[j]):
                    assert patterns[i] != patterns[j]
        assert len(np.unique(view.colours, axis=0)) == len(view.colours)  # one colour per region
    # a region keeps its label, so its colour, in the zoomed inset: labels equal exactly when patterns are
    sampled = []
    for view in (result, result.zoom):
        flat, points = view.regions.reshape(-1), plane.points(view.grid.reshape(-1, 2))
        for k in generator.choice(len(flat), 120, replace=False):
            sampled.append((flat[k], pattern_of(model, points[k].reshape(1, *shape))))
    for i, (label, pattern) in enumerate(sampled[:120]):
        for other_label, other_pattern in sampled[120:]:
            assert (label == other_label) == (pattern == other_pattern)
            assert np.allclose(result.colours[label], result.zoom.colours[other_label]) or pattern != other_pattern


def _relu_signs(model: nn.Sequential, points: torch.Tensor) -> torch.Tensor:
    """(points, units): each ReLU's input > 0, from forward hooks on the torch model (not lrcert)."""
    captured: list[torch.Tensor] = []
    with torch.no_grad():
        run_with_hooks(model, points, on_relu=lambda m, faces: captured.extend(f > 0 for f in faces), on_pool=None)
    return torch.cat(captured, dim=1)


@pytest.mark.parametrize("seed", range(6))
def test_path_counts_equal_dense_sampling(seed):
    """The walk's regions and breakpoints (and region_ids' labels) are where 400,001 evenly spaced
    points change pattern, the patterns read from the torch model itself."""
    model = net(seed, 4, widths=(16, 16, 8))
    network = from_module(model, (4,))
    generator = torch.Generator().manual_seed(seed)
    a, b = (torch.randn(4, dtype=torch.float64, generator=generator) * 3 for _ in range(2))
    crossing = walk(network, a, b)
    t = torch.linspace(0, 1, 400001, dtype=torch.float64)[:, None]
    signs = _relu_signs(model, a + t * (b - a))
    changes = np.nonzero((signs[1:] != signs[:-1]).any(dim=1).numpy())[0]
    ids = region_ids(network, a + t * (b - a))
    np.testing.assert_array_equal(np.nonzero(ids[1:] != ids[:-1])[0], changes)  # lrcert's labels say the same
    assert crossing.regions == len(changes) + 1
    np.testing.assert_allclose(crossing.breakpoints, (changes + 0.5) / 400000, atol=1.5e-6)
    # the patterns on either side of each breakpoint differ exactly at the reported face, for ReLU faces
    for t_break, flip in zip(crossing.breakpoints, crossing.flips):
        before = pattern_of(model, (a + (t_break - 1e-7) * (b - a))[None])
        after = pattern_of(model, (a + (t_break + 1e-7) * (b - a))[None])
        layer = [i for i, m in enumerate(model) if isinstance(m, nn.ReLU)].index(int(flip.layer))  # module name
        changed = [k for k, (u, v) in enumerate(zip(before[layer], after[layer])) if u != v]
        assert flip.unit in changed


def test_path_and_plot_commands(tmp_path):
    data = np.load(PROJECT_MODELS / "toy2d.inputs.npy")
    np.save(tmp_path / "a.npy", data[:1])
    np.save(tmp_path / "b.npy", data[1:2])
    model = str(PROJECT_MODELS / "toy2d_roll.onnx")
    result = runner.invoke(app, ["path", model, str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["regions"] == len(report["breakpoints"]) + 1 >= 1
    assert all(0 < b["t"] < 1 for b in report["breakpoints"])
    table = runner.invoke(app, ["path", model, str(tmp_path / "a.npy"), str(tmp_path / "b.npy")])
    assert f"{report['regions']} linear regions" in table.stdout

    for out in ("fig.png", "fig.svg"):
        drawn = runner.invoke(app, ["plot", model, "--data", str(PROJECT_MODELS / "toy2d.inputs.npy"), "--points", "0,3",
                                    "--resolution", "80", "--out", str(tmp_path / out)])
        assert drawn.exit_code == 0, drawn.output
        assert (tmp_path / out).stat().st_size > 1000
    bars = str(PROJECT_MODELS / "bars_cnn.onnx")
    drawn = runner.invoke(app, ["plot", bars, "--data", str(PROJECT_MODELS / "bars_cnn.inputs.npy"), "--points", "0",
                                "--dirs", "toward:1", "--resolution", "40", "--out", str(tmp_path / "bars.png")])
    assert drawn.exit_code == 0, drawn.output


def test_plot_zooms_to_where_regions_can_be_seen_and_says_so(tmp_path):
    """bars_cnn toward input 1: at the distance's scale nearly every pixel is boundary ink, so the
    view zooms to input 0's neighbourhood (a note says how to get the wide one back); the target is
    marked; a point off the plane gets a note instead of silently no ball."""
    from lrcert.results import plot as plotting
    from lrcert.models.load import load

    network, data = load(PROJECT_MODELS / "bars_cnn.onnx"), np.load(PROJECT_MODELS / "bars_cnn.inputs.npy")
    inputs = torch.from_numpy(data.astype(np.float64))
    wide = plotting.make_plane(network, inputs, [0], "toward:1", None)
    assert 1 in wide.marks and wide.marks[1][0] == pytest.approx(float((inputs[1] - inputs[0]).norm()))
    assert plotting.picture(network, wide, inputs, [0], 60).boundary_share() > plotting.TOO_FINE
    args = ["plot", str(PROJECT_MODELS / "bars_cnn.onnx"), "--data", str(PROJECT_MODELS / "bars_cnn.inputs.npy"),
            "--points", "0,3", "--dirs", "toward:1", "--resolution", "60", "--out", str(tmp_path / "b.png")]
    drawn = runner.invoke(app, args)
    assert drawn.exit_code == 0, drawn.output
    assert "mostly narrower than a pixel; drawn at" in drawn.stderr and "--extent" in drawn.stderr
    assert "input 3 is" in drawn.stderr and "no ball drawn for it" in drawn.stderr
    close = plotting.make_plane(network, inputs, [0], "toward:1", plotting.neighbourhood(network, wide.origin, wide.u, wide.v))
    assert plotting.picture(network, close, inputs, [0], 60).boundary_share() < plotting.TOO_FINE
    kept = runner.invoke(app, [*args[:-2], "--extent", "3", "--out", str(tmp_path / "c.png")])
    assert kept.exit_code == 0 and "show as boundary ink" in kept.stderr  # asked for: drawn as asked, and said


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["plot", "MODEL", "--out", "fig.jpg"], "neither .png nor .svg"),
        (["plot", "BARS", "--out", "fig.png"], "the plane goes through an input"),
        (["plot", "MODEL", "--data", "DATA", "--points", "999", "--out", "fig.png"], "--points 999 is not an input"),
        (["plot", "BARS", "--data", "BARSDATA", "--points", "0", "--dirs", "toward:99", "--out", "fig.png"], "input index '99'"),
        (["plot", "MODEL", "--points", "0", "--out", "fig.png"], "--points needs --data"),
        (["plot", "MODEL", "--resolution", "5", "--out", "fig.png"], "--resolution 5"),
        (["path", "MODEL", "DATA", "DATA"], "holds 200 inputs"),
    ],
)
def test_plot_and_path_refuse_bad_input(tmp_path, arguments, message):
    names = {"MODEL": str(PROJECT_MODELS / "toy2d_roll.onnx"), "DATA": str(PROJECT_MODELS / "toy2d.inputs.npy"),
             "BARS": str(PROJECT_MODELS / "bars_cnn.onnx"), "BARSDATA": str(PROJECT_MODELS / "bars_cnn.inputs.npy")}
    arguments = [names.get(a, str(tmp_path / a) if a.startswith("fig") else a) for a in arguments]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output


def test_plot_without_matplotlib_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    result = runner.invoke(app, ["plot", str(PROJECT_MODELS / "toy2d_roll.onnx"), "--resolution", "20", "--out", str(tmp_path / "f.png")])
    assert result.exit_code == 2 and "pip install -e '.[plot]'" in result.stderr
