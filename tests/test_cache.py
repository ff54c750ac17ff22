"""The cache of converted networks: a hit gives bit-identical radii without reading the file
again (no onnx imported), and every change of model, external weights or code is a miss."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import lrcert
from lrcert.models import cache
from onnx_models import SUPPORTED
from test_cli import invoke

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("LRCERT_CACHE_DIR", str(folder))
    return folder / "networks"


def test_a_cached_network_gives_bit_identical_radii(store, tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(SUPPORTED["gemm"](), str(path))
    x = np.random.default_rng(0).standard_normal((6, 5))
    fresh = lrcert.load(path, cache=False)
    assert not store.exists()  # (cache=False writes nothing)
    first = lrcert.load(path)
    assert len(list(store.glob("*.pt"))) == 1
    again = lrcert.load(path)  # (from the entry)
    for network in (first, again):
        got = lrcert.certify(network, x, dtype=torch.float64)
        want = lrcert.certify(fresh, x, dtype=torch.float64)
        assert [(r.radius, r.binding, r.prediction_radius) for r in got] == \
               [(r.radius, r.binding, r.prediction_radius) for r in want]
    assert again.notes == fresh.notes and again.sample_shape == fresh.sample_shape


def test_a_hit_reads_no_onnx(store):
    code = "import sys, lrcert; lrcert.load('models/moons_mlp.onnx'); print('onnx' in sys.modules)"
    env = {**os.environ, "LRCERT_CACHE_DIR": str(store.parent)}
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
            for _ in range(2)]
    assert [run.stdout.strip() for run in runs] == ["True", "False"], [run.stderr for run in runs]


def test_a_changed_model_or_code_is_a_miss_and_a_damaged_entry_is_rebuilt(store, tmp_path, monkeypatch):
    path = tmp_path / "mlp.onnx"
    onnx.save(SUPPORTED["gemm"](), str(path))
    lrcert.load(path)
    model = onnx.load(str(path))
    model.graph.initializer[0].float_data[:] = []
    weights = onnx.numpy_helper.to_array(model.graph.initializer[0]) * 2
    model.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(weights, model.graph.initializer[0].name))
    onnx.save(model, str(path))
    changed = lrcert.load(path)  # (new bytes: a new entry, the new weights)
    assert len(list(store.glob("*.pt"))) == 2
    assert torch.equal(changed.run(torch.ones(1, 5, dtype=torch.float64)),
                       lrcert.load(path, cache=False).run(torch.ones(1, 5, dtype=torch.float64)))
    monkeypatch.setattr(cache, "fingerprint", lambda: "another lrcert")
    lrcert.load(path)
    assert len(list(store.glob("*.pt"))) == 3  # (other code: another entry)
    for entry in store.glob("*.pt"):
        entry.write_bytes(b"damaged")
    assert lrcert.load(path).sample_shape == (5,)  # (a damaged entry is a miss, and is rebuilt)


def test_changed_external_weights_are_a_miss(store, tmp_path):
    model = SUPPORTED["gemm"]()
    path = tmp_path / "mlp.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="mlp.onnx.data",
              size_threshold=0)
    x = torch.ones(1, 5, dtype=torch.float64)
    before = lrcert.load(path).run(x)
    data = path.with_name("mlp.onnx.data")
    raw = np.frombuffer(data.read_bytes(), dtype=np.float32).copy()
    data.write_bytes((raw * 3).tobytes())
    after = lrcert.load(path).run(x)
    assert not torch.equal(before, after) and torch.equal(after, lrcert.load(path, cache=False).run(x))


def test_an_unwritable_cache_is_no_cache(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("LRCERT_CACHE_DIR", str(blocked))
    assert lrcert.load(ROOT / "models" / "moons_mlp.onnx").sample_shape == (2,)


def test_no_cache_on_the_command_line(store):
    model, data = ROOT / "models" / "moons_mlp.onnx", ROOT / "models" / "moons_mlp.inputs.npy"
    done = invoke("certify", model, data, "-f", "json", "--no-cache")
    assert done.exit_code == 0 and not store.exists()
    cached = invoke("certify", model, data, "-f", "json")
    assert len(list(store.glob("*.pt"))) == 1
    assert json.loads(done.stdout)["results"] == json.loads(cached.stdout)["results"]
