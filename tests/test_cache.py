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


# ------------------------------------------------------------------------------------ nothing read back runs code


class _Command:
    """A pickle that runs a command when unpickled (``__reduce__``): what a crafted file would hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted(marker: Path, protocol: int = 4) -> bytes:
    import pickle

    return pickle.dumps(_Command(marker), protocol=protocol)


def test_a_crafted_cache_entry_is_a_miss_and_runs_nothing(store, tmp_path):
    """The issue's attack: certify once, replace the entry with a pickle whose ``__reduce__`` runs a
    command, certify again: nothing runs, the entry is a miss (rebuilt), the radii are the same. The
    same with the payload inside a ``torch.save``d entry of the expected layout."""
    model, data = ROOT / "models" / "moons_mlp.onnx", ROOT / "models" / "moons_mlp.inputs.npy"
    first = invoke("certify", model, data, "-f", "json")
    (entry,) = store.glob("*.pt")
    marker = tmp_path / "ran"
    for payload in (_crafted(marker), None):
        if payload is None:
            torch.save({"format": 1, "manifest": "{}", "tensors": {}, "external": {}, "x": _Command(marker)}, entry)
        else:
            entry.write_bytes(payload)
        again = invoke("certify", model, data, "-f", "json")
        assert again.exit_code == 0 and not marker.exists(), again.stderr
        assert json.loads(again.stdout)["results"] == json.loads(first.stdout)["results"]
        assert entry.read_bytes() != payload  # (rebuilt as data)
        torch.load(entry, weights_only=True)  # (the rebuilt entry is data only)


@pytest.mark.parametrize("command", ["report", "compare", "check", "resume", "plot-points"])
def test_no_other_file_lrcert_reads_back_runs_code(tmp_path, command):
    """Results (report, compare), baselines (check), config files, a resumed run's partial file and
    every .npy lrcert reads (points for report, data) are JSON, TOML or arrays read without pickles:
    a pickle in their place is refused in one line, and runs nothing."""
    marker = tmp_path / "ran"
    crafted = tmp_path / "crafted"
    crafted.write_bytes(_crafted(marker))
    model, data = ROOT / "models" / "moons_mlp.onnx", ROOT / "models" / "moons_mlp.inputs.npy"
    if command == "report":
        result = invoke("report", crafted, "-o", tmp_path / "r.html")
    elif command == "compare":
        result = invoke("compare", crafted, crafted)
    elif command == "check":
        config = tmp_path / "lrcert.toml"
        config.write_text(f'[checks.c]\nmodel = "{model}"\ndata = "{data}"\nbaseline = "crafted"\nmax-drop = "10%"\n')
        result = invoke("check", "--config", config)
        assert result.exit_code == 2 and not marker.exists(), result.stderr
        crafted.rename(config)  # (and the config file itself)
        result = invoke("check", "--config", config)
    elif command == "resume":
        out = tmp_path / "out.jsonl"
        (tmp_path / "out.jsonl.partial").write_bytes(_crafted(marker, protocol=0))  # (text, in lines)
        result = invoke("certify", model, data, "-f", "jsonl", "-o", out, "--resume")
    else:
        np.save(tmp_path / "x.npy", np.load(data))
        (tmp_path / "x.npy").write_bytes((tmp_path / "x.npy").read_bytes()[:128] + _crafted(marker))
        result = invoke("certify", model, tmp_path / "x.npy")
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1 and "Traceback" not in result.stderr
    assert not marker.exists()


def _outcome(store, capsys) -> tuple[int, str]:
    lrcert.load(ROOT / "models" / "moons_mlp.onnx")
    cache._note.cache_clear()
    return len(list(store.glob("*.pt"))) if store.exists() else 0, capsys.readouterr().err


def test_a_cache_folder_others_can_write_is_not_used(store, capsys):
    store.mkdir(parents=True)
    store.parent.chmod(0o777)
    count, said = _outcome(store, capsys)
    assert count == 0 and "not using the cache of converted networks" in said and "writable by others (mode 777)" in said
    assert "Fix: make it yours and private (chmod 700" in said and len(said.strip().splitlines()) == 1
    store.parent.chmod(0o700)
    store.chmod(0o770)  # (the networks folder too)
    count, said = _outcome(store, capsys)
    assert count == 0 and "writable by others (mode 770)" in said
    store.chmod(0o700)
    assert _outcome(store, capsys)[0] == 1


def test_a_cache_folder_of_another_user_is_not_used(store, capsys, monkeypatch):
    store.mkdir(parents=True, mode=0o700)
    store.parent.chmod(0o700)
    monkeypatch.setattr(cache, "_uid", lambda: os.getuid() + 1)  # (as if another user owned the folders)
    count, said = _outcome(store, capsys)
    assert count == 0 and "belongs to another user" in said


def test_folders_lrcert_creates_are_private_all_the_way_down(tmp_path, monkeypatch):
    root = tmp_path / "a" / "b" / "cache"
    monkeypatch.setenv("LRCERT_CACHE_DIR", str(root))
    lrcert.load(ROOT / "models" / "moons_mlp.onnx")
    for folder in (tmp_path / "a", tmp_path / "a" / "b", root, root / "networks"):
        assert (folder.stat().st_mode & 0o777) == 0o700, folder
    assert len(list((root / "networks").glob("*.pt"))) == 1


@pytest.mark.parametrize("name, shape", [("bars_cnn.onnx", None), ("japanese_vowels/vanilla.onnx", (7, 12)),
                                          ("digits/vanilla.onnx", None)])
def test_every_kind_of_layer_list_comes_back_bit_identical(store, name, shape):
    """Max-pools and residual adds, an unrolled RNN whose steps share their weights (shared once
    more after reading), dense layers: cached and fresh give the same radii, bit for bit."""
    path = ROOT / "models" / name
    fresh = lrcert.load(path, cache=False, sample_shape=shape)
    lrcert.load(path, sample_shape=shape)
    again = lrcert.load(path, sample_shape=shape)
    x = torch.rand(3, *fresh.sample_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got, want = (lrcert.certify(n, x, dtype=torch.float64) for n in (again, fresh))
    assert [(r.radius, r.binding, r.prediction_radius) for r in got] == [(r.radius, r.binding, r.prediction_radius) for r in want]
    weights = [layer.weight for layer in again.layers if isinstance(layer, lrcert.network.ir.Dense)]
    assert len({id(w) for w in weights}) == len({id(w) for w in (l.weight for l in fresh.layers
                                                                  if isinstance(l, lrcert.network.ir.Dense))})
