"""Every model the project ships (models/) against an independent float64 computation, a few rows each.

The tables beside the models (table1.json, table.json) and the README's shown outputs were written by
lrcert itself: the tests that compare with them are regression tests (they catch a change, not an
error). These check the radii themselves. Feed-forward models are converted by stock onnx2torch in a
process that never imports lrcert (``onnx_reference.py``); the recurrent ones are read from the ONNX
graph's initializers here and written out as equations (``recurrent_reference.py``).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lrcert
from conftest import PROJECT_MODELS
from recurrent_reference import from_onnx, reference_radii
from reference import relative_error

ROWS = 3  # per model: the first rows of its shipped data

FEED_FORWARD = {
    "moons_mlp.onnx": "moons_mlp.inputs.npy",
    "bars_cnn.onnx": "bars_cnn.inputs.npy",
    "toy2d_vanilla.onnx": "toy2d.inputs.npy",
    "toy2d_roll.onnx": "toy2d.inputs.npy",
    **{f"digits/{m.name}": "digits/test.npy" for m in sorted((PROJECT_MODELS / "digits").glob("*.onnx"))},
    **{f"mnist_stability/{m.name}": "mnist_stability/test.npy" for m in sorted((PROJECT_MODELS / "mnist_stability").glob("*.onnx"))},
}
RECURRENT = sorted(f"japanese_vowels/{m.name}" for m in (PROJECT_MODELS / "japanese_vowels").glob("*.onnx"))


def _same(got: float, want: float | None, what) -> None:
    want = math.inf if want is None else want
    assert relative_error(got, want) < 1e-9, (*what, got, want)


@pytest.fixture(scope="module")
def independent_radii(tmp_path_factory):
    """{model: (its first rows, the reference radii of each)}, from one ``onnx_reference.py`` process."""
    folder = tmp_path_factory.mktemp("shipped")
    jobs, rows = [], {}
    for k, (model, data) in enumerate(sorted(FEED_FORWARD.items())):
        network = lrcert.load(PROJECT_MODELS / model, cache=False)
        rows[model] = np.load(PROJECT_MODELS / data)[:ROWS].astype(np.float64).reshape(ROWS, *network.sample_shape)
        np.save(folder / f"{k}.npy", rows[model].reshape(ROWS, *network.input_shape))
        jobs.append({"model": str(PROJECT_MODELS / model), "inputs": str(folder / f"{k}.npy"), "out": str(folder / f"{k}.json")})
    (folder / "jobs.json").write_text(json.dumps(jobs))
    done = subprocess.run([sys.executable, str(Path(__file__).parent / "onnx_reference.py"), str(folder / "jobs.json")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return {model: (rows[model], json.loads(Path(job["out"]).read_text())) for model, job in zip(sorted(FEED_FORWARD), jobs)}


def test_every_shipped_model_is_checked():
    shipped = {str(path.relative_to(PROJECT_MODELS)) for path in PROJECT_MODELS.rglob("*.onnx")}
    assert shipped == set(FEED_FORWARD) | set(RECURRENT)


@pytest.mark.parametrize("model", sorted(FEED_FORWARD))
def test_shipped_feed_forward_model_matches_independent_computation(model, independent_radii):
    x, expected = independent_radii[model]
    for k, result in enumerate(lrcert.certify(lrcert.load(PROJECT_MODELS / model), x, dtype=torch.float64)):
        for p in ("l1", "l2", "linf"):
            _same(result.radius[p], expected[k][p], (model, k, p))


@pytest.mark.parametrize("model", RECURRENT)
def test_shipped_recurrent_model_matches_independent_computation(model):
    data = np.load(PROJECT_MODELS / "japanese_vowels" / "test.npz")
    reference = from_onnx(PROJECT_MODELS / model)
    rows = [torch.from_numpy(data["x"][k, : data["lengths"][k]]).double() for k in range(ROWS)]
    for k, result in enumerate(lrcert.certify(PROJECT_MODELS / model, rows, dtype=torch.float64)):
        expected = reference_radii(reference, rows[k])
        for p in ("l1", "l2", "linf"):
            _same(result.radius[p], expected["radius"][p], (model, k, p))
            _same(result.prediction_radius[p], expected["prediction_radius"][p], (model, k, p, "prediction"))
