"""lrcert train: ROLL widens the regions, the saved ONNX certifies to the reported numbers, bad input is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import PROJECT_MODELS
from reference import mlp_from_onnx, reference_radii

from lrcert.cli import app
from lrcert.training.train import Settings, build_network, certified_radii, fit, split

runner = CliRunner()


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three Gaussian clusters in 6 dimensions."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = rng.normal(0, 1.5, (3, 6))
    return (centres[y] + rng.normal(0, 0.6, (n, 6))).astype(np.float32), y


def test_roll_widens_the_median_l2_radius_over_vanilla():
    x, y = (torch.from_numpy(a) for a in blobs(400, 0))
    train, val = split(x, y.long(), 0.25, seed=0)
    medians, accuracies = {}, {}
    for lam in (0.0, 1.0):
        model = build_network((6,), 3, hidden=(32, 32), seed=0)
        history = fit(model, train, val, Settings(lam=lam, C=1.0, epochs=15, seed=0))
        medians[lam] = float(np.median(certified_radii(model, val[0], ("l2",))["l2"]))
        accuracies[lam] = history[-1]["accuracy"]
    assert medians[1.0] > 1.3 * medians[0.0]  # measured: 1.7×
    assert accuracies[1.0] >= accuracies[0.0] - 0.05


def test_train_cli_saves_a_model_whose_radii_are_the_reported_numbers(tmp_path):
    """The report's held-out accuracy and median ε̂₂ are the saved model's, computed independently
    (weights read from the ONNX file, radii by ``reference.py``), and what ``certify`` finds."""
    x, y = blobs(300, 1)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    x_val, y_val = blobs(60, 2)
    np.savez(tmp_path / "val.npz", x=x_val, y=y_val)
    out = tmp_path / "model.onnx"
    result = runner.invoke(
        app,
        ["train", str(tmp_path / "train.npz"), "--val", str(tmp_path / "val.npz"), "--hidden", "16,16", "--lam", "1",
         "--epochs", "3", "--seed", "0", "--out", str(out), "--format", "json"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [r["epoch"] for r in report["history"]] == [1, 2, 3]
    assert "epoch 3/3" in result.stderr

    reference = mlp_from_onnx(out)
    x_rows = torch.from_numpy(x_val).double()
    independent = [reference_radii(reference, row[None])["l2"] for row in x_rows]
    assert np.median(independent) == pytest.approx(report["held_out"]["l2"]["p50"], rel=1e-6)
    with torch.no_grad():
        assert (reference(x_rows).argmax(1).numpy() == y_val).mean() == pytest.approx(report["held_out"]["accuracy"])

    np.save(tmp_path / "val_x.npy", x_val)
    certified = runner.invoke(app, ["certify", str(out), str(tmp_path / "val_x.npy"), "--format", "json", "--dtype", "float64"])
    assert certified.exit_code == 0, certified.output
    radii = np.array([r["radius"]["l2"] for r in json.loads(certified.stdout)["results"]])
    assert np.percentile(radii, 50) == pytest.approx(report["held_out"]["l2"]["p50"], rel=1e-6)
    predictions = np.array([r["prediction"] for r in json.loads(certified.stdout)["results"]])
    assert (predictions == y_val).mean() == pytest.approx(report["held_out"]["accuracy"])


def test_train_is_reproducible_with_a_seed(tmp_path):
    x, y = blobs(120, 3)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    runs = []
    for name in ("a", "b"):
        result = runner.invoke(
            app, ["train", str(tmp_path / "d.npz"), "--hidden", "8", "--epochs", "2", "--seed", "7",
                  "--out", str(tmp_path / f"{name}.onnx"), "--format", "json"],
        )
        assert result.exit_code == 0, result.output
        runs.append(json.loads(result.stdout)["history"])
    assert runs[0] == runs[1]


def test_conv_option_trains_on_images(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 1, 8, 8)).astype(np.float32)
    y = (x[:, 0, :4].sum((1, 2)) > x[:, 0, 4:].sum((1, 2))).astype(np.int64)
    np.savez(tmp_path / "img.npz", x=x, y=y)
    result = runner.invoke(
        app, ["train", str(tmp_path / "img.npz"), "--conv", "4", "--hidden", "8", "--epochs", "1",
              "--sample-dims", "16", "--out", str(tmp_path / "cnn.onnx")],
    )
    assert result.exit_code == 0, result.output
    assert "cnn.onnx" in result.stdout and (tmp_path / "cnn.onnx").exists()


@pytest.mark.parametrize(
    "arrays, options, message",
    [
        ({"x": np.zeros((4, 3), np.float32)}, [], "has no array 'y'"),
        ({"x": np.zeros((4, 3), np.float32), "y": np.zeros(3, np.int64)}, [], "4 labels ≥ 0 are needed"),
        ({"x": np.full((4, 3), np.nan, np.float32), "y": np.zeros(4, np.int64)}, [], "sample 0 of 'x' holds NaN"),
        ({"x": np.zeros((4, 3), np.float32), "y": np.zeros(4, np.int64)}, ["--conv", "4"], "--conv needs image inputs"),
        ({"x": np.zeros((4, 3), np.float32), "y": np.zeros(4, np.int64)}, ["--hidden", "3,x"], "not a list of positive widths"),
        ({"x": np.zeros((4, 3), np.float32), "y": np.zeros(4, np.int64)}, ["--epochs", "0"], "--epochs 0 is not positive"),
        ({"x": np.zeros((4, 3), np.float32), "y": np.zeros(4, np.int64)}, ["--gamma", "50", "--sample-dims", "2"], "gamma=50"),
        ({"x": np.zeros((4, 3), np.float32), "y": np.zeros(4, np.int64)}, ["--val-fraction", "1.5"], "--val-fraction 1.5"),
    ],
)
def test_train_refuses_bad_input_in_one_line(tmp_path, arrays, options, message):
    np.savez(tmp_path / "d.npz", **arrays)
    result = runner.invoke(app, ["train", str(tmp_path / "d.npz"), "--out", str(tmp_path / "m.onnx"), "--epochs", "1", *options])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) <= 2  # the training banner may precede the error


def test_train_refuses_files_that_are_not_npz_archives(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 2)))
    (tmp_path / "junk.npz").write_bytes(b"garbage")
    np.savez(tmp_path / "objects.npz", x=np.array([None, 1], dtype=object), y=np.zeros(2, np.int64))
    for name, message in (("x.npy", "holds a single array"), ("junk.npz", "not a readable .npz archive"),
                          ("objects.npz", "not a readable .npz archive")):
        result = runner.invoke(app, ["train", str(tmp_path / name), "--out", str(tmp_path / "m.onnx")])
        assert result.exit_code == 2, result.output
        assert message in result.stderr and "Traceback" not in result.output


def test_train_refuses_missing_files_and_folders(tmp_path):
    result = runner.invoke(app, ["train", str(tmp_path / "none.npz"), "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2 and "does not exist" in result.stderr
    x, y = blobs(10, 0)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    result = runner.invoke(app, ["train", str(tmp_path / "d.npz"), "--out", str(tmp_path / "no" / "m.onnx")])
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_shipped_toy_models_roll_has_larger_regions():
    x = np.load(PROJECT_MODELS / "toy2d.inputs.npy")
    medians = {}
    for name in ("vanilla", "roll"):
        result = runner.invoke(app, ["certify", str(PROJECT_MODELS / f"toy2d_{name}.onnx"), str(PROJECT_MODELS / "toy2d.inputs.npy"),
                                     "--format", "json", "--p", "2", "--dtype", "float64"])
        assert result.exit_code == 0, result.output
        medians[name] = np.median([r["radius"]["l2"] for r in json.loads(result.stdout)["results"]])
    assert len(x) == 200 and medians["roll"] > 4 * medians["vanilla"]  # make_models.py printed 0.0204 vs 0.00334


def test_regression_shipped_digits_models_reproduce_their_table1():
    """Regression: table1.json was written by lrcert (experiments/digits.py), so this catches a
    change, not an error; test_shipped_models.py checks these models' radii independently."""
    folder = PROJECT_MODELS / "digits"
    table = json.loads((folder / "table1.json").read_text())
    labels = np.load(folder / "test_labels.npy")
    for name, stats in table["test"].items():
        result = runner.invoke(app, ["certify", str(folder / table["files"][name]), str(folder / "test.npy"),
                                     "--format", "json", "--dtype", "float64"])
        assert result.exit_code == 0, result.output
        results = json.loads(result.stdout)["results"]
        for p in ("l1", "l2"):
            radii = np.array([r["radius"][p] for r in results])
            for q in (25, 50, 75):
                assert np.percentile(radii, q) == pytest.approx(stats[p][f"p{q}"], rel=1e-9)
        assert np.mean([r["prediction"] for r in results] == labels) == pytest.approx(stats["accuracy"])
        assert len({r["pattern"] for r in results}) == stats["patterns"]
