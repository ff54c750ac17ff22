"""The command line: every exit code, every input error as one line, and the output formats."""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from lrcert.cli import app
from onnx_models import REFUSED, SUPPORTED

MODELS = Path(__file__).resolve().parents[1] / "models"
runner = CliRunner()


def invoke(*args, stdin: bytes | None = None):
    return runner.invoke(app, [str(a) for a in args], input=stdin)


def assert_error(result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr  # one line, no traceback
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Fix:" in lines[0]


@pytest.fixture
def mlp(tmp_path):
    """An ONNX MLP (5 inputs) and 6 inputs for it."""
    onnx.save(SUPPORTED["gemm"](), str(tmp_path / "mlp.onnx"))
    x = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    return tmp_path / "mlp.onnx", tmp_path / "x.npy"


def test_quick_start_from_readme():
    result = invoke("certify", MODELS / "moons_mlp.onnx", MODELS / "moons_mlp.inputs.npy")
    assert result.exit_code == 0, result.stderr
    assert "ε̂₂" in result.stdout and "summary over 16 inputs" in result.stdout
    assert "certified 16 inputs" in result.stderr


def test_json_schema(mlp):
    model, data = mlp
    result = invoke("certify", model, data, "--format", "json", "--dtype", "float64")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert set(doc) == {"model", "options", "run", "results", "summary"}
    assert doc["run"]["seconds"] > 0 and doc["run"]["date"].startswith("20")
    assert doc["model"]["units"] == 8 and len(doc["model"]["sha256"]) == 64
    assert doc["options"]["norms"] == ["l1", "l2", "linf"] and doc["options"]["dtype"] == "float64"
    first = doc["results"][0]
    assert set(first) >= {"index", "prediction", "radius", "unbounded", "binding", "pattern", "precision_warning"}
    assert set(first["radius"]) == {"l1", "l2", "linf"}
    assert set(first["binding"]["l2"]) >= {"layer", "kind", "unit", "position", "z"}
    assert set(doc["summary"]["l2"]) == {"min", "p25", "p50", "p75", "max", "zero", "unbounded"}
    radii = sorted(r["radius"]["l2"] for r in doc["results"])
    assert doc["summary"]["l2"]["min"] == radii[0] and doc["summary"]["l2"]["max"] == radii[-1]


def test_unbounded_radius_is_null_in_json(tmp_path):
    affine = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("MatMul", ["x", "W"], ["y"])], "affine",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 2])],
            [onnx.numpy_helper.from_array(np.ones((3, 2), dtype=np.float32), "W")],
        ),
        opset_imports=[onnx.helper.make_opsetid("", 13)],
    )
    onnx.save(affine, str(tmp_path / "affine.onnx"))
    np.save(tmp_path / "x.npy", np.zeros((2, 3), dtype=np.float32))
    result = invoke("certify", tmp_path / "affine.onnx", tmp_path / "x.npy", "-f", "json")
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)["results"][0]
    assert record["radius"] == {"l1": None, "l2": None, "linf": None} and record["unbounded"] is True


def test_jsonl_csv_and_norm_selection(mlp):
    model, data = mlp
    lines = invoke("certify", model, data, "-f", "jsonl", "--p", "2", "--p", "inf").stdout.splitlines()
    assert len(lines) == 6
    assert set(json.loads(lines[0])["radius"]) == {"l2", "linf"}
    rows = list(csv.DictReader(io.StringIO(invoke("certify", model, data, "-f", "csv", "--p", "1").stdout)))
    assert len(rows) == 6 and float(rows[0]["l1"]) > 0 and "binding_l1" in rows[0]


def test_output_file_is_written_atomically(mlp, tmp_path):
    model, data = mlp
    out = tmp_path / "out.json"
    result = invoke("certify", model, data, "-f", "json", "-o", out)
    assert result.exit_code == 0 and result.stdout == ""
    assert len(json.loads(out.read_text())["results"]) == 6
    assert not list(tmp_path.glob(".out.json.*"))  # no temporary file left


def test_min_radius_check_exit_codes(mlp):
    model, data = mlp
    doc = json.loads(invoke("certify", model, data, "-f", "json", "--p", "2").stdout)
    radii = [r["radius"]["l2"] for r in doc["results"]]
    below = sorted(radii)[2]
    failed = invoke("certify", model, data, "--p", "2", "--min-radius", f"l2={below}", "-f", "json")
    assert failed.exit_code == 1
    assert "FAILED: 2 of 6 inputs" in failed.stderr
    expected = [str(i) for i, r in enumerate(radii) if r < below]
    assert failed.stderr.split("inputs ")[-1].strip().split(", ") == expected
    passed = invoke("certify", model, data, "--min-radius", "0", "-f", "json")
    assert passed.exit_code == 0 and "passed" in passed.stderr


def test_directional_radius(mlp, tmp_path):
    model, data = mlp
    np.save(tmp_path / "d.npy", np.ones((1, 5), dtype=np.float32))
    result = invoke("certify", model, data, "--direction", tmp_path / "d.npy", "-f", "json", "--dtype", "float64")
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)["results"][0]
    t = record["direction"]["radius"]
    assert t is None or t >= record["radius"]["l2"] / math.sqrt(5) * (1 - 1e-9)  # ‖d‖₂ = √5


def test_npz_key_and_stdin(mlp, tmp_path):
    model, data = mlp
    x = np.load(data)
    np.savez(tmp_path / "both.npz", a=x, b=x[:2])
    assert_error(invoke("certify", model, tmp_path / "both.npz"), 2, "holds 2 arrays (a, b)", "--key")
    result = invoke("certify", model, tmp_path / "both.npz", "--key", "b", "-f", "jsonl")
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 2
    buffer = io.BytesIO()
    np.save(buffer, x[:3])
    piped = invoke("certify", model, "-", "-f", "jsonl", stdin=buffer.getvalue())
    assert piped.exit_code == 0 and len(piped.stdout.splitlines()) == 3


def test_same_size_rows_are_reshaped_with_a_note(tmp_path):
    onnx.save(SUPPORTED["conv"](), str(tmp_path / "conv.onnx"))
    np.save(tmp_path / "flat.npy", np.random.default_rng(0).standard_normal((2, 144)).astype(np.float32))
    result = invoke("certify", tmp_path / "conv.onnx", tmp_path / "flat.npy", "-f", "jsonl")
    assert result.exit_code == 0, result.stderr
    assert "reshaped each row" in result.stderr and "(144,) to (2, 9, 8)" in result.stderr


def test_inspect(mlp, tmp_path):
    model, _ = mlp
    result = invoke("inspect", model)
    assert result.exit_code == 0 and "Gemm_h" in result.stdout and "input: one row of shape (5,)" in result.stdout
    doc = json.loads(invoke("inspect", model, "-f", "json").stdout)
    assert doc["units"] == 8 and [layer["kind"] for layer in doc["layers"]] == ["input", "dense", "relu", "dense"]
    onnx.save(REFUSED["products"][0](), str(tmp_path / "bad.onnx"))
    refused = invoke("inspect", tmp_path / "bad.onnx")
    assert refused.exit_code == 2 and "'gram' (MatMul) multiplies two input-dependent tensors" in refused.stderr


# ------------------------------------------------------------------------------------ input errors: exit 2


def test_missing_files(mlp):
    model, data = mlp
    assert_error(invoke("certify", "nope.onnx", data), 2, "model file 'nope.onnx' does not exist")
    assert_error(invoke("certify", model, "nope.npy"), 2, "data file 'nope.npy' does not exist")


def test_wrong_shape_names_both_shapes(mlp, tmp_path):
    model, _ = mlp
    np.save(tmp_path / "bad.npy", np.zeros((3, 7), dtype=np.float32))
    assert_error(invoke("certify", model, tmp_path / "bad.npy"), 2, "rows of shape (7,)", "rows of shape (5,)")


@pytest.mark.parametrize(
    "array, fragment",
    [
        (np.zeros((2, 5), dtype=np.int64), "holds integers"),
        (np.zeros((2, 5), dtype=bool), "holds booleans"),
        (np.zeros((2, 5), dtype=np.complex64), "holds complex numbers"),
        (np.zeros((0, 5), dtype=np.float32), "holds no inputs"),
    ],
)
def test_bad_data_arrays(mlp, tmp_path, array, fragment):
    model, _ = mlp
    np.save(tmp_path / "bad.npy", array)
    assert_error(invoke("certify", model, tmp_path / "bad.npy"), 2, fragment)


@pytest.mark.parametrize("value, kind", [(np.nan, "NaN"), (np.inf, "Inf")])
def test_non_finite_rows_name_the_first_bad_row(mlp, tmp_path, value, kind):
    model, data = mlp
    x = np.load(data)
    x[4, 2] = value
    x[5, 0] = value
    np.save(tmp_path / "bad.npy", x)
    assert_error(invoke("certify", model, tmp_path / "bad.npy"), 2, f"holds {kind} in row 4")


def test_object_and_truncated_data(mlp, tmp_path):
    model, data = mlp
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert_error(invoke("certify", model, tmp_path / "obj.npy"), 2, "holds Python objects")
    raw = data.read_bytes()
    (tmp_path / "cut.npy").write_bytes(raw[: len(raw) // 2])
    assert_error(invoke("certify", model, tmp_path / "cut.npy"), 2, "not a readable .npy/.npz file")


def test_unsupported_model_names_the_nodes(tmp_path, mlp):
    _, data = mlp
    onnx.save(REFUSED["sigmoid"][0](), str(tmp_path / "sig.onnx"))
    np.save(tmp_path / "x4.npy", np.zeros((2, 4), dtype=np.float32))
    assert_error(invoke("certify", tmp_path / "sig.onnx", tmp_path / "x4.npy"), 2, "'squash' (Sigmoid) is not piecewise linear")


def test_truncated_onnx(mlp, tmp_path):
    model, data = mlp
    raw = model.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(raw[: len(raw) // 3])
    result = invoke("certify", tmp_path / "cut.onnx", data)
    assert_error(result, 2, "cut.onnx")


def test_pickle_without_consent(tmp_path, mlp):
    _, data = mlp
    torch.save(torch.nn.Sequential(torch.nn.Linear(5, 2)), tmp_path / "model.pt")
    assert_error(invoke("certify", tmp_path / "model.pt", data), 2, "pickled model", "--trust-pickle")
    trusted = invoke("certify", tmp_path / "model.pt", data, "--trust-pickle", "-f", "jsonl")
    assert trusted.exit_code == 0, trusted.stderr


@pytest.mark.parametrize(
    "options, fragment",
    [
        (["--p", "3"], "unknown norm --p '3'"),
        (["--batch-size", "0"], "--batch-size 0 is not positive"),
        (["--min-radius", "-1"], "must be a finite number ≥ 0"),
        (["--min-radius", "l7=1"], "names an unknown norm"),
        (["--min-radius", "l1=0.1", "--p", "2"], "which --p did not select"),
        (["--output", "/nonexistent-folder/out.json"], "does not exist"),
        (["--device", "cuda"] if not torch.cuda.is_available() else ["--p", "0"], "CUDA" if not torch.cuda.is_available() else "unknown norm"),
    ],
)
def test_bad_options(mlp, options, fragment):
    model, data = mlp
    assert_error(invoke("certify", model, data, *options), 2, fragment)


@pytest.mark.skipif(os.geteuid() == 0, reason="root is not bound by file permissions; the next test covers it")
def test_read_only_output(mlp, tmp_path):
    model, data = mlp
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert_error(invoke("certify", model, data, "-o", locked / "out.json"), 2, "permission denied")
    finally:
        locked.chmod(0o700)


def test_permission_refused_at_the_write_is_reported(mlp, tmp_path, monkeypatch):
    """For every user, root included: the folder looked writable before the run, the rename is refused
    (a mount turned read-only, an ACL): one line and exit 2, no file and no temporary left behind."""
    model, data = mlp
    out = tmp_path / "out" / "radii.json"
    out.parent.mkdir()

    def refuse(source, target):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(target))

    monkeypatch.setattr(os, "replace", refuse)
    assert_error(invoke("certify", model, data, "-o", out), 2, "permission denied", str(out))
    assert list(out.parent.iterdir()) == []


def test_internal_error_is_one_line_exit_3(mlp, monkeypatch):
    model, data = mlp

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug\nwith a second line")

    monkeypatch.setattr("lrcert.engine.Engine._launch", broken)
    result = invoke("certify", model, data)
    assert result.exit_code == 3
    assert result.stderr.strip() == (
        "lrcert: internal error: RuntimeError: simulated bug. Fix: rerun with LRCERT_DEBUG=1 for the traceback and "
        "report it."
    )


def test_usage_errors_exit_2(mlp):
    model, data = mlp
    result = invoke("certify", model, data, "--dtype", "float16")
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert invoke("certify").exit_code == 2


@pytest.fixture
def deep(tmp_path):
    """A deep MLP on 1,024 inputs, where the deterministic bounds are loose: its inputs are sketched."""
    torch.manual_seed(0)
    layers = [torch.nn.Linear(1024 if k == 0 else 48, 48) if k % 2 == 0 else torch.nn.ReLU() for k in range(14)]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(48, 3)).eval()
    torch.onnx.export(model, (torch.zeros(1, 1024),), str(tmp_path / "deep.onnx"), dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "n"}})
    np.save(tmp_path / "x.npy", np.random.default_rng(1).standard_normal((4, 1024)).astype(np.float32))
    return tmp_path / "deep.onnx", tmp_path / "x.npy"


def test_sketched_inputs_report_their_delta_and_the_run_its_bound(deep):
    model, data = deep
    result = invoke("certify", model, data, "-f", "json", "--guarantee", "1e-9", "--seed", "7")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["options"]["guarantee"] == 1e-9 and doc["options"]["seed"] == 7
    assert doc["options"]["sketch_directions"] == 64
    deltas = [r["guarantee"] for r in doc["results"] if r["guarantee"] != "deterministic"]
    assert len(deltas) >= 3 and all(isinstance(d, float) and 0 < d <= 1e-9 / 4 for d in deltas), deltas
    sketched = f"guarantee: {len(deltas)} of 4 inputs sketched: each exact with probability ≥ 1 − 2.5e-10"
    assert sketched in result.stderr and "(64 random directions, seed 7)" in result.stderr
    exact = invoke("certify", model, data, "-f", "json", "--guarantee", "deterministic", "--dtype", "float64")
    same = json.loads(exact.stdout)
    assert [r["guarantee"] for r in same["results"]] == ["deterministic"] * 4
    assert same["options"]["guarantee"] == "deterministic" and same["options"]["sketch_directions"] is None
    for got, want in zip(doc["results"], same["results"]):
        for p, radius in want["radius"].items():
            assert got["radius"][p] == pytest.approx(radius, rel=1e-9)
    assert "guarantee: all 4 inputs deterministic" in exact.stderr


def test_the_guarantee_in_the_table_and_csv(deep):
    model, data = deep
    table = invoke("certify", model, data)
    assert "inputs sketched: each exact with probability" in table.stdout and "guarantee:" not in table.stderr
    rows = list(csv.DictReader(io.StringIO(invoke("certify", model, data, "-f", "csv").stdout)))
    deltas = [float(row["guarantee"]) for row in rows if row["guarantee"] != "deterministic"]
    assert len(deltas) >= 3 and all(0 < d <= 1e-12 / 4 for d in deltas)
    rows = list(csv.DictReader(io.StringIO(invoke("certify", model, data, "-f", "csv", "--guarantee", "deterministic").stdout)))
    assert {row["guarantee"] for row in rows} == {"deterministic"}


@pytest.mark.parametrize("value", ["2", "0", "-1e-3", "often", "nan"])
def test_a_bad_guarantee_is_one_line(mlp, value):
    model, data = mlp
    assert_error(invoke("certify", model, data, "--guarantee", value), 2, "--guarantee", "deterministic")


@pytest.mark.parametrize("command", [[], ["certify"], ["check"], ["compare"], ["report"], ["inspect"], ["train"],
                                     ["plot"], ["path"]])
def test_help_pages_name_values_not_python_types(command):
    """No ``<bool>``, ``<path>``, ``<list[str]>`` in the options, no ``{model}`` braces in the usage."""
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "120"}, prog_name="lrcert")
    assert result.exit_code == 0
    assert "<" not in result.stdout and "{" not in result.stdout, result.stdout
    if command:
        assert f"Usage: lrcert {command[0]} [OPTIONS]" in result.stdout


def test_without_prediction_radii_the_table_has_no_certified_column(mlp):
    model, data = mlp
    result = invoke("certify", model, data, "--no-prediction-radius")
    assert result.exit_code == 0 and "ε̂₂" in result.stdout and "cert" not in result.stdout


@pytest.mark.parametrize("command", ["inspect", "path", "train"])
def test_table_or_json_commands_offer_no_other_format(command):
    result = runner.invoke(app, [command, "x", "--format", "csv"])
    assert result.exit_code == 2 and "csv" in result.output


def test_no_library_warning_reaches_stderr(mlp, tmp_path):
    """A float64 direction file (what np.save(np.ones(…)) writes) made torch warn of read-only memory."""
    model, data = mlp
    np.save(tmp_path / "d.npy", np.ones((1, 5)))
    result = invoke("certify", model, data, "--direction", tmp_path / "d.npy", "-f", "json")
    assert result.exit_code == 0 and "Warning" not in result.stderr and "warn" not in result.stderr, result.stderr


def test_an_adversarial_file_of_only_nan_comes_with_a_note(mlp, tmp_path):
    model, data = mlp
    result = invoke("certify", model, data, "-f", "json", "--adversarial-out", tmp_path / "adv.npy")
    assert result.exit_code == 0, result.stderr
    exact = sum(any(r["exact_adversarial"].values()) for r in json.loads(result.stdout)["results"])
    points = np.load(tmp_path / "adv.npy")
    assert np.isnan(points).all() == (exact == 0)
    assert ("holds only NaN" in result.stderr) == (exact == 0)


def test_output_name_picks_the_output_of_a_model_with_several(tmp_path):
    from test_load_onnx import _two_outputs

    model, _ = _two_outputs()
    onnx.save(model, str(tmp_path / "two.onnx"))
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32))
    first = invoke("certify", tmp_path / "two.onnx", tmp_path / "x.npy", "-f", "json")
    chosen = invoke("certify", tmp_path / "two.onnx", tmp_path / "x.npy", "-f", "json", "--output-name", "z")
    assert first.exit_code == chosen.exit_code == 0, first.stderr + chosen.stderr
    assert "predictions and prediction radii read 'y' (the first; --output-name picks another)" in first.stderr
    one, other = json.loads(first.stdout)["results"], json.loads(chosen.stdout)["results"]
    assert [r["radius"] for r in one] == [r["radius"] for r in other]  # the same regions, whichever output is read
    assert {r["prediction"] for r in other} <= {0, 1} and one[0]["prediction_radius"] != other[0]["prediction_radius"]
    assert_error(invoke("certify", tmp_path / "two.onnx", tmp_path / "x.npy", "--output-name", "q"), 2,
                 "has no output 'q' (its outputs: y, z)")
    assert_error(invoke("certify", MODELS / "moons_mlp.onnx", MODELS / "moons_mlp.inputs.npy", "--output-name", "q"), 2,
                 "has no output 'q' (its outputs: logits)")


def test_an_npz_with_one_array_per_input_is_joined(tmp_path):
    from test_load_onnx import _two_inputs

    model, _ = _two_inputs()
    onnx.save(model, str(tmp_path / "two.onnx"))
    rng = np.random.default_rng(1)
    img, vec = rng.standard_normal((3, 1, 2, 2)).astype(np.float32), rng.standard_normal((3, 3)).astype(np.float32)
    np.savez(tmp_path / "both.npz", vec=vec, img=img)  # (the model's order, not the file's, joins them)
    np.save(tmp_path / "joint.npy", np.concatenate([img.reshape(3, -1), vec], axis=1))
    joined = invoke("certify", tmp_path / "two.onnx", tmp_path / "both.npz", "-f", "json")
    flat = invoke("certify", tmp_path / "two.onnx", tmp_path / "joint.npy", "-f", "json")
    assert joined.exit_code == flat.exit_code == 0, joined.stderr + flat.stderr
    assert "joint space, each row 7 numbers, img (1×2×2), vec (3)" in joined.stderr
    assert [r["radius"] for r in json.loads(joined.stdout)["results"]] == [r["radius"] for r in json.loads(flat.stdout)["results"]]
    np.savez(tmp_path / "short.npz", img=img, vec=vec[:2])
    assert_error(invoke("certify", tmp_path / "two.onnx", tmp_path / "short.npz"), 2, "array 'vec'", "holds 2 rows")


# ------------------------------------------------------------------------------------ conventions


def test_the_output_files_extension_chooses_the_format(mlp, tmp_path):
    model, data = mlp
    for name, read in (("r.json", lambda text: json.loads(text)["results"]),
                       ("r.jsonl", lambda text: [json.loads(line) for line in text.splitlines()]),
                       ("r.csv", lambda text: list(csv.DictReader(io.StringIO(text))))):
        out = tmp_path / name
        assert invoke("certify", model, data, "-o", out, "-p", "2").exit_code == 0
        assert len(read(out.read_text())) == 6, name
    table = tmp_path / "r.txt"
    assert invoke("certify", model, data, "-o", table).exit_code == 0 and "summary over 6 inputs" in table.read_text()
    assert_error(invoke("certify", model, data, "-f", "table", "-o", tmp_path / "x.json"), 2,
                 "--format table does not write what x.json names (json)")
    assert not (tmp_path / "x.json").exists()
    assert invoke("report", tmp_path / "r.json", "-o", tmp_path / "r.html").exit_code == 0  # (a report reads it back)


def test_short_options_and_help():
    assert invoke("-h").exit_code == 0 and "Commands" in invoke("-h").stdout
    model, data = MODELS / "moons_mlp.onnx", MODELS / "moons_mlp.inputs.npy"
    short = json.loads(invoke("certify", model, data, "-p", "2", "-p", "inf", "-f", "json").stdout)
    assert short["options"]["norms"] == ["l2", "linf"]
    page = runner.invoke(app, ["certify", "-h"], env={"COLUMNS": "250"}).stdout
    assert "Exit codes: 0 all good" in page and "2 usage or input" in page and "--norm" in page and "-p" in page
    for command in ("plot", "report", "train"):
        shown = runner.invoke(app, [command, "-h"], env={"COLUMNS": "250"}).stdout
        assert "--output" in shown and "-o" in shown and "--out" in shown, command


def test_the_command_summaries_are_one_line_each_on_80_columns():
    page = runner.invoke(app, ["--help"], env={"COLUMNS": "80"}).stdout
    commands = page[page.index("Commands"):].splitlines()[1:-1]
    names = [line.split()[1] for line in commands if line.startswith("│ ") and line[2] != " "]
    assert {"certify", "check", "compare", "report", "inspect", "ops", "train", "plot", "path"} <= set(names)
    assert all(line[2] != " " for line in commands), page  # (no summary wraps onto a second line)


def test_ops_lists_every_op_lrcert_reads_and_refuses():
    from lrcert.models.load import ONNX_SMOOTH, READ_OPS

    rows = json.loads(invoke("ops", "-f", "json").stdout)
    how = {row["op"]: row["read_as"] for row in rows}
    assert set(READ_OPS) <= set(how) and how["Relu"] == how["MaxPool"] == how["RNN"] == "nonlinearity"
    assert how["MatMul"] == "linear" and how["Softmax"] == "dropped"
    assert all(how[op] == "refused" for op in ONNX_SMOOTH - {"Softmax", "LogSoftmax"}) and how["LSTM"] == "refused"
    assert "Conv" in invoke("ops").stdout


def test_errors_of_commands_without_an_output_file_do_not_advise_one(monkeypatch):
    import errno

    from lrcert.cli.common import reports_errors

    def full(model: str) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def full_with_output(model: str, output: str | None = None) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    said = []
    monkeypatch.setattr("lrcert.cli.common.say", said.append)
    monkeypatch.setattr("lrcert.cli.common._quiet_stdout", lambda: None)
    for command in (full, full_with_output):
        with pytest.raises(Exception):
            reports_errors(command)("m")
    assert "--output" not in said[0] and "--output FILE" in said[1]


def test_every_options_help_says_its_default():
    import typer

    group = typer.main.get_command(app)
    silent = []
    for name, command in group.commands.items():
        for param in command.params:
            if type(param).__name__ != "TyperOption" or param.name == "help":
                continue
            shown = param.required or param.show_default and param.default is not None and not (
                param.is_flag and param.default is False)  # (the help prints [default: …] or [required])
            if "default" not in (param.help or "").lower() and not shown:
                silent.append(f"{name} {param.opts[0]}")
    assert not silent, silent


def test_certify_and_train_help_is_grouped_in_panels():
    panels = {"certify": ["Radii", "Data", "Model", "Output", "Checks", "Prediction and adversarial points", "Engine"],
              "train": ["Output", "Network", "ROLL", "Optimisation", "Data", "Engine"]}
    for command, names in panels.items():
        page = runner.invoke(app, [command, "-h"], env={"COLUMNS": "80"}).stdout
        found = [line.split("─ ", 1)[1].split(" ─")[0] for line in page.splitlines() if line.startswith("╭─ ")]
        assert [n for n in found if n not in ("Arguments", "Options")] == names, found
        from rich.cells import cell_len

        assert all(cell_len(line) <= 80 for line in page.splitlines())  # (as a terminal counts: ε̂ is one cell)
    certify = runner.invoke(app, ["certify", "-h"], env={"COLUMNS": "250"}).stdout
    data = certify[certify.index("╭─ Data"):certify.index("╭─ Model")]
    assert all(f"--{o}" in data for o in ("columns", "label-column", "classes", "resize", "normalize", "vary"))
