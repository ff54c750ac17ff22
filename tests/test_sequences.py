"""Sequences of different lengths through the command line and the library: an .npz of padded rows
and their lengths, each row certified with the model unrolled to its own length (the padding never
read), against the independent reference of tests/recurrent_reference.py; and ReLU RNNs trained
with ROLL (roll_loss, lrcert train --rnn)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import lrcert
from lrcert.cli import app
from lrcert.errors import LrcertError
from lrcert.training.roll import face_gradients, roll_loss
from recurrent_reference import from_onnx, reference_radii
from test_recurrent import FEATURES, Classifier, export

runner = CliRunner()
LENGTHS = np.array([4, 7, 2, 7, 5, 3])


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def sequences(tmp_path_factory):
    """(folder, the model, model.onnx read at every length, sequences.npz: padded rows, lengths, labels)."""
    folder = tmp_path_factory.mktemp("sequences")
    model = Classifier(layers=2, bidirectional=True, seed=21).eval()
    export(model, folder / "model.onnx", steps=5, dynamo=False)
    rng = np.random.default_rng(5)
    x = np.full((len(LENGTHS), LENGTHS.max(), FEATURES), 1e6, dtype=np.float32)  # padding: never read
    for i, n in enumerate(LENGTHS):
        x[i, :n] = rng.standard_normal((n, FEATURES))
    np.savez(folder / "sequences.npz", x=x, lengths=LENGTHS, y=rng.integers(0, 4, len(x)))
    return folder, model, x


def rows(x):
    return [torch.from_numpy(x[i, :n]) for i, n in enumerate(LENGTHS)]


def test_an_npz_of_padded_sequences_certifies_each_row_at_its_own_length(sequences):
    folder, model, x = sequences
    result = invoke("certify", folder / "model.onnx", folder / "sequences.npz", "-f", "json")
    assert result.exit_code == 0, result.stderr
    assert "sequences of 2 to 7 steps" in result.stderr
    records = json.loads(result.stdout)["results"]
    for record, row in zip(records, rows(x)):
        expected = reference_radii(model.reference(), row)
        assert record["length"] == len(row)
        for p in ("l1", "l2", "linf"):
            assert record["radius"][p] == pytest.approx(expected["radius"][p], rel=1e-9)
            assert record["prediction_radius"][p] == pytest.approx(expected["prediction_radius"][p], rel=1e-9)
        face = record["binding"]["l2"]
        assert f"t={face['step']}" in face["layer"] and face["step"] < len(row) and face["direction"] in ("forward", "reverse")
        assert "label" in record and "correct" in record


def test_the_table_csv_and_report_show_each_rows_steps(sequences, tmp_path):
    folder, _, _ = sequences
    table = invoke("certify", folder / "model.onnx", folder / "sequences.npz")
    assert table.exit_code == 0 and "steps" in table.stdout and " unit " in table.stdout
    csv = invoke("certify", folder / "model.onnx", folder / "sequences.npz", "-f", "csv")
    header, *lines = csv.stdout.strip().splitlines()
    assert header.startswith("index,length,label,") and [int(line.split(",")[1]) for line in lines] == LENGTHS.tolist()
    page = tmp_path / "report.html"
    assert invoke("certify", folder / "model.onnx", folder / "sequences.npz", "--report", page).exit_code == 0
    assert "rnn/RNN_1.reverse t=" in page.read_text() or "rnn/RNN.forward t=" in page.read_text()


def test_adversarial_points_and_directions_move_only_a_rows_own_steps(sequences, tmp_path):
    folder, model, x = sequences
    d = np.zeros_like(x)
    d[..., 0] = 1.0
    np.save(tmp_path / "d.npy", d)
    points = tmp_path / "adversarial.npy"
    result = invoke("certify", folder / "model.onnx", folder / "sequences.npz", "-f", "json", "--direction", tmp_path / "d.npy",
                    "--adversarial-out", points)
    assert result.exit_code == 0, result.stderr
    found = np.load(points)
    assert found.shape == x.shape
    for record, row, point in zip(json.loads(result.stdout)["results"], rows(x), found):
        n = len(row)
        expected = reference_radii(model.reference(), row, direction=torch.from_numpy(d[0, :n]))
        assert record["direction"]["radius"] == pytest.approx(expected["direction"], rel=1e-9)
        if record["exact_adversarial"]["l2"]:
            assert (point[n:] == 0).all() and np.isfinite(point[:n]).all()
            assert np.linalg.norm(point[:n] - row.numpy()) == pytest.approx(record["prediction_radius"]["l2"], rel=1e-6)
            logits = model.reference().run(torch.from_numpy(point[:n]).double(), [])
            top = torch.topk(logits, 2).values
            assert float(top[0] - top[1]) < 1e-6  # on the boundary between two classes
        else:
            assert np.isnan(point).all()


def test_a_model_exported_for_one_length_refuses_other_lengths_in_one_line(sequences, tmp_path):
    folder, model, _ = sequences
    export(model, tmp_path / "fixed.onnx", steps=5, dynamo=True)
    result = invoke("certify", tmp_path / "fixed.onnx", folder / "sequences.npz")
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("note:")]
    assert len(lines) == 1 and "exactly 5 steps" in lines[0] and "dynamic sequence axis" in lines[0], result.stderr


@pytest.mark.parametrize("arrays, message", [
    (lambda x: {"x": x, "lengths": np.full(len(x), 9)}, "length 9, outside 1 … 7"),
    (lambda x: {"x": x, "lengths": np.zeros(len(x), dtype=np.int64)}, "length 0"),
    (lambda x: {"x": x, "lengths": LENGTHS.astype(np.float32)}, "'lengths'"),
    (lambda x: {"x": np.where(np.arange(7)[None, :, None] == 0, np.nan, x), "lengths": LENGTHS}, "NaN or Inf in row 0"),
    (lambda x: {"x": x.astype(np.int64), "lengths": LENGTHS}, "integers"),
])
def test_bad_sequence_files_are_refused_in_one_line(sequences, tmp_path, arrays, message):
    folder, _, x = sequences
    np.savez(tmp_path / "bad.npz", **arrays(np.where(np.isfinite(x) & (np.abs(x) < 1e5), x, 0).astype(np.float32)))
    result = invoke("certify", folder / "model.onnx", tmp_path / "bad.npz")
    assert result.exit_code == 2, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Fix:" in lines[0], result.stderr


def test_normalising_or_varying_sequences_is_refused(sequences):
    folder, _, _ = sequences
    result = invoke("certify", folder / "model.onnx", folder / "sequences.npz", "--mean", "0", "--std", "1")
    assert result.exit_code == 2 and "holds sequences" in result.stderr


def test_lrcert_check_reads_sequences(sequences, tmp_path):
    folder, _, _ = sequences
    config = tmp_path / "lrcert.toml"
    config.write_text(f'[checks.rnn]\nmodel = "{folder / "model.onnx"}"\ndata = "{folder / "sequences.npz"}"\nmin-radius = 1e-12\n')
    result = invoke("check", "--config", config, "-f", "json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)[0]["inputs"] == len(LENGTHS)


def test_the_library_takes_a_list_of_sequences(sequences):
    _, model, x = sequences
    found = lrcert.certify(model, rows(x), norms=("l2",))
    assert [r.length for r in found] == LENGTHS.tolist() and [r.index for r in found] == list(range(len(LENGTHS)))
    for result, row in zip(found, rows(x)):
        assert result.radius["l2"] == pytest.approx(reference_radii(model.reference(), row)["radius"]["l2"], rel=1e-9)
    one_length = lrcert.from_module(model, (7, FEATURES))
    with pytest.raises(LrcertError, match="exactly 7 steps"):
        lrcert.certify(one_length, rows(x))


# ---------------------------------------------------------------------------------------------- training

def test_roll_loss_on_an_rnn_has_every_steps_exact_face_gradients():
    model = Classifier(layers=2, bidirectional=True, seed=22).double()
    x = torch.randn(3, 5, FEATURES, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z, squared, real = face_gradients(model, x)
    assert z.shape == (3, 2 * 2 * 5 * 6) and bool(real.all())
    for k, row in enumerate(x):
        faces = []
        reference = model.reference()
        flat = row.reshape(-1)
        jacobian = torch.autograd.functional.jacobian(
            lambda v: (faces.clear(), reference.run(v.reshape(5, FEATURES), faces), torch.cat(faces))[-1], flat)
        reference.run(row, faces := [])
        torch.testing.assert_close(z[k], torch.cat(faces), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(squared[k], jacobian.square().sum(1), rtol=1e-10, atol=1e-12)
    every = face_gradients(model, x, sample_dims=5 * FEATURES, generator=torch.Generator().manual_seed(0))[1]
    torch.testing.assert_close(every, squared, rtol=1e-10, atol=1e-12)  # all coordinates sampled: the exact norms
    loss = roll_loss(model, x, lam=1.0, C=1.0, sample_dims=8, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.rnn.parameters())


def test_train_rnn_saves_a_model_whose_radii_at_every_length_are_the_reported_numbers(tmp_path):
    """The report's median ε̂₂ is the saved model's, computed independently (the RNN read from the
    ONNX file as equations, ``recurrent_reference.py``), and what ``certify`` finds."""
    rng = np.random.default_rng(3)
    n, steps = 60, 8
    lengths, y = rng.integers(3, steps + 1, n), rng.integers(0, 3, n)
    x = np.zeros((n, steps, 3), dtype=np.float32)
    for i in range(n):
        x[i, : lengths[i]] = rng.standard_normal((lengths[i], 3)) + y[i]
    np.savez(tmp_path / "train.npz", x=x[:45], y=y[:45], lengths=lengths[:45])
    np.savez(tmp_path / "val.npz", x=x[45:], y=y[45:], lengths=lengths[45:])
    out = tmp_path / "rnn.onnx"
    trained = invoke("train", tmp_path / "train.npz", "--val", tmp_path / "val.npz", "--rnn", "8,8", "--lam", "1",
                     "--epochs", "2", "-o", out, "-f", "json")
    assert trained.exit_code == 0, trained.stderr
    held_out = json.loads(trained.stdout)["held_out"]
    reference = from_onnx(out)
    independent = [reference_radii(reference, torch.from_numpy(x[k, : lengths[k]]))["radius"]["l2"] for k in range(45, n)]
    assert np.median(independent) == pytest.approx(held_out["l2"]["p50"], rel=1e-6)
    certified = invoke("certify", out, tmp_path / "val.npz", "-f", "json", "--dtype", "float64")
    assert certified.exit_code == 0, certified.stderr
    radii = [r["radius"]["l2"] for r in json.loads(certified.stdout)["results"]]
    assert np.median(radii) == pytest.approx(held_out["l2"]["p50"], rel=1e-9)
    assert sorted({r["length"] for r in json.loads(certified.stdout)["results"]}) == sorted(set(lengths[45:].tolist()))


def test_an_rnns_steps_share_one_copy_of_each_weight_in_every_engine_network():
    """The layer list holds W_hh once for all T steps, in the value, tangent and magnitude networks
    alike (T copies would make a long sequence's memory T times its weights')."""
    from lrcert.engine import Engine

    model = Classifier(layers=1, seed=23).eval()
    network = lrcert.from_module(model, (30, FEATURES))
    engine = Engine(network)
    for net in (network, engine.network, engine.tangent_network, engine.magnitudes):
        dense = [layer.weight for layer in net.layers if layer.kind == "dense"]
        assert len(dense) == 31 and len({w.untyped_storage().data_ptr() for w in dense}) == 3  # W_ih, W_hh, the head


def test_sequences_are_ready_for_a_gpu_no_default_device_and_no_wait_per_input():
    """Under torch.device("meta") every tensor must be made where the data are, and the host waits
    for the device as often for 256 sequences as for 16 (a fixed number per length)."""
    import collections

    from torch.utils._python_dispatch import TorchDispatchMode

    from lrcert.engine import ByLength

    class Waits(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.count = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if str(func.overloadpacket) in ("aten._local_scalar_dense", "aten.nonzero", "aten.item", "aten.is_nonzero"):
                self.count[str(func.overloadpacket)] += 1
            return func(*args, **(kwargs or {}))

    model = Classifier(layers=2, bidirectional=True, seed=24).eval()
    rows = [torch.rand(n, FEATURES) for n in (3, 5, 4)]
    with torch.device("meta"):
        lrcert.certify(model, rows)
        roll_loss(model, torch.rand(2, 4, FEATURES, device="cpu"), lam=1.0, C=1.0)
    waits = {}
    for n in (16, 256):
        rows = [torch.rand(3 + k % 3, FEATURES, generator=torch.Generator().manual_seed(k)) for k in range(n)]
        engine = ByLength(lambda steps: lrcert.from_module(model, (steps, FEATURES)), lengths=[len(r) for r in rows],
                          batch_size=n)
        with Waits() as counted:
            engine.certify(rows)
        waits[n] = sum(counted.count.values())
    assert waits[256] == waits[16]


def test_train_options_for_recurrent_networks_clip_and_decay(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((40, 5, 3)).astype(np.float32)
    np.savez(tmp_path / "train.npz", x=x, y=rng.integers(0, 2, 40), lengths=rng.integers(2, 6, 40))
    result = invoke("train", tmp_path / "train.npz", "--rnn", "4", "--epochs", "2", "--clip-norm", "0.5", "--cosine",
                    "-o", tmp_path / "m.onnx", "-f", "json")
    assert result.exit_code == 0, result.stderr
    settings = json.loads(result.stdout)["settings"]
    assert settings["clip"] == 0.5 and settings["cosine"] is True
    bad = invoke("train", tmp_path / "train.npz", "--rnn", "4", "--clip-norm", "0", "-o", tmp_path / "m.onnx")
    assert bad.exit_code == 2 and "--clip-norm 0.0 is not positive" in bad.stderr


@pytest.mark.slow  # (about 10 s: 370 utterances, two models)
def test_regression_shipped_japanese_vowels_models_reproduce_their_table():
    """Regression: models/japanese_vowels/table.json was written by lrcert (experiments/japanese_vowels.py),
    so this catches a change, not an error (test_shipped_models.py checks the radii independently):
    every model's ONNX file, certified by the command line on the 370 test utterances at their own
    lengths, gives the table's figures."""
    from conftest import PROJECT_MODELS

    folder = PROJECT_MODELS / "japanese_vowels"
    table = json.loads((folder / "table.json").read_text())
    for name, stats in table["test"].items():
        result = invoke("certify", folder / table["files"][name], folder / "test.npz", "-f", "json", "--no-prediction-radius")
        assert result.exit_code == 0, result.stderr
        records = json.loads(result.stdout)["results"]
        assert len(records) == stats["inputs"] == 370
        for p in ("l1", "l2"):
            radii = np.array([r["radius"][p] for r in records])
            for q in (25, 50, 75):
                assert np.percentile(radii, q) == pytest.approx(stats[p][f"p{q}"], rel=1e-9)
        assert np.mean([r["correct"] for r in records]) == pytest.approx(stats["accuracy"])
    gains = table["versus_vanilla"]
    assert any(g["median_l2_gain"] >= 5 and g["accuracy_change_points"] >= -1 for g in gains.values())


def test_inspect_shows_each_recurrence_and_its_faces(sequences):
    folder, _, _ = sequences
    table = invoke("inspect", folder / "model.onnx", "--input-shape", f"6,{FEATURES}")
    assert table.exit_code == 0, table.stderr
    lines = [line for line in table.stdout.splitlines() if line.startswith("recurrence ")]
    assert len(lines) == 2 and all("bidirectional" in line for line in lines)
    assert "6 units, bidirectional, over 6 steps" in lines[0] and "72 faces" in lines[0]  # 2 directions × 6 steps × 6 units
    doc = json.loads(invoke("inspect", folder / "model.onnx", "--input-shape", f"6,{FEATURES}", "-f", "json").stdout)
    shapes = doc["recurrences"]
    assert [s["steps"] for s in shapes] == [6, 6] and all(s["faces"] == 2 * 6 * 6 for s in shapes)
    assert doc["faces"] == sum(s["faces"] for s in shapes)


def test_an_interrupted_run_of_sequences_resumes(sequences, tmp_path):
    folder, _, _ = sequences
    out = tmp_path / "rows.jsonl"
    whole = invoke("certify", folder / "model.onnx", folder / "sequences.npz", "-f", "jsonl", "-o", out)
    assert whole.exit_code == 0, whole.stderr
    rows = out.read_text().splitlines()
    partial = tmp_path / "rows.jsonl.partial"
    partial.write_text("\n".join(rows[:3]) + "\n")
    out.unlink()
    resumed = invoke("certify", folder / "model.onnx", folder / "sequences.npz", "-f", "jsonl", "-o", out, "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert [json.loads(r)["length"] for r in out.read_text().splitlines()] == LENGTHS.tolist()
