"""``lrcert stability``: every format, the worst points and the report, the CI ceilings, sequences of
different lengths, and every bad input as one line with exit 2."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import lrcert
from lrcert.cli import app
from stability_reference import target_gradient

MODELS = Path(__file__).resolve().parents[1] / "models"
runner = CliRunner()
MOONS, MOONS_DATA = MODELS / "moons_mlp.onnx", MODELS / "moons_mlp.inputs.npy"
BARS, BARS_DATA, BARS_IMAGES = MODELS / "bars_cnn.onnx", MODELS / "bars_cnn.inputs.npy", MODELS / "bars_images"
FAST = ("--samples", "64", "--budget", "40")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(f in lines[0] for f in fragments), (fragments, lines[0])


def test_the_table_says_what_each_column_means():
    result = invoke("stability", MOONS, MOONS_DATA, "--eps", "0.2", *FAST)
    assert result.exit_code == 0, result.stderr
    for fragment in ("gradient stability — moons_mlp.onnx, ℓ∞ ball of radius 0.2", "E[Δ] ± s.e.", "max bound",
                     "summary over 16 inputs", "P50", "ℓ1 distortion", "guarantee: ε̂ all 16 inputs deterministic"):
        assert fragment in result.stdout, fragment
    assert "analysed 16 inputs" in result.stderr


def test_json_records_agree_with_the_library_and_csv_and_jsonl(tmp_path):
    out = tmp_path / "s.json"
    assert invoke("stability", MOONS, MOONS_DATA, "--eps", "8/255", "-o", out, *FAST).exit_code == 0
    doc = json.loads(out.read_text())
    assert doc["kind"] == "stability" and doc["options"]["eps"] == pytest.approx(8 / 255)
    assert doc["options"]["eps_text"] == "8/255" and len(doc["results"]) == 16
    x = np.load(MOONS_DATA)
    library = lrcert.stability(str(MOONS), x, eps=8 / 255, samples=64, budget=40)
    for record, result in zip(doc["results"], library):
        assert record == result.record()
        assert record["max_found"]["value"] <= (record["max_bound"]["value"] or math.inf)
    lines = invoke("stability", MOONS, MOONS_DATA, "--eps", "8/255", "-f", "jsonl", *FAST).stdout.splitlines()
    assert [json.loads(line) for line in lines] == doc["results"]
    rows = list(csv.DictReader(io.StringIO(invoke("stability", MOONS, MOONS_DATA, "--eps", "8/255", "-f", "csv", *FAST).stdout)))
    assert [float(r["expected"]) for r in rows] == [r["expected"]["mean"] for r in doc["results"]]
    assert doc["summary"]["inputs"] == 16 and set(doc["summary"]["E[Δ]"]) == {"p25", "p50", "p75"}


def test_worst_points_lie_in_the_ball_and_attain_the_distortion(tmp_path):
    """Each row of --worst-out is inside the ℓ∞ ball, and its Δ, recomputed with
    torch.autograd through the ONNX model's own PyTorch twin, is the reported max found."""
    worst = tmp_path / "worst.npy"
    out = tmp_path / "s.json"
    result = invoke("stability", BARS, BARS_DATA, "--eps", "0.05", "--worst-out", worst, "-o", out, *FAST)
    assert result.exit_code == 0, result.stderr
    points, x = np.load(worst), np.load(BARS_DATA)
    assert points.shape == x.shape and points.dtype == np.float64
    assert np.all(np.abs(points - x) <= 0.05 + 1e-12)
    from onnx2torch import convert

    model = convert(str(BARS)).double()
    for record in json.loads(out.read_text())["results"]:
        w = torch.zeros(2, dtype=torch.float64)
        w[record["target"]["class"]] = 1
        i = record["index"]
        g0, g = (target_gradient(model, torch.from_numpy(np.asarray(p, dtype=np.float64)), w) for p in (x[i], points[i]))
        assert float((g - g0).abs().sum()) == pytest.approx(record["max_found"]["value"], rel=1e-9, abs=1e-12)


def test_an_image_folder_gets_the_pixel_box_and_a_report_with_saliency_maps(tmp_path):
    page = tmp_path / "r.html"
    result = invoke("stability", BARS, BARS_IMAGES, "--eps", "8/255", "--report", page, *FAST, "-f", "json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["options"]["box"] == [0.0, 1.0] and all("source" in r and "label" in r for r in doc["results"])
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html
    assert "Where the saliency moved most" in html and html.count("<img") >= 5 and "<svg" in html


def test_report_redraws_a_stability_run_from_its_json(tmp_path):
    out, worst, page = tmp_path / "s.json", tmp_path / "w.npy", tmp_path / "again.html"
    assert invoke("stability", BARS, BARS_DATA, "--eps", "0.05", "--worst-out", worst, "-o", out, *FAST).exit_code == 0
    result = invoke("report", out, "-o", page)
    assert result.exit_code == 0, result.stderr
    html = page.read_text()
    assert "lrcert stability" in html and html.count("<img") >= 5


def test_ceilings_fail_a_model_whose_saliency_moves_too_much():
    base = ("stability", MOONS, MOONS_DATA, "--eps", "0.3", *FAST)
    failing = invoke(*base, "--max-distortion", "0")
    assert failing.exit_code == 1 and "FAILED:" in failing.stderr and "distortion found above 0" in failing.stderr
    assert invoke(*base, "--max-distortion", "1e9").exit_code == 0
    bounded = invoke(*base, "--max-bound", "1e9")
    assert bounded.exit_code == 0 and "passed: every certified bound ≤ 1e+09" in bounded.stderr


def test_sequences_of_different_lengths_are_analysed_each_at_its_own_length(tmp_path):
    data = np.load(MODELS / "japanese_vowels" / "test.npz")
    pick = [0, 1, 2]
    lengths = data["lengths"][pick]
    assert len(set(lengths.tolist())) > 1
    np.savez(tmp_path / "seq.npz", x=data["x"][pick], lengths=lengths)
    result = invoke("stability", MODELS / "japanese_vowels" / "vanilla.onnx", tmp_path / "seq.npz", "--eps", "0.05",
                    "--samples", "16", "--budget", "20", "-f", "json", "--worst-out", tmp_path / "w.npy")
    assert result.exit_code == 0, result.stderr
    records = json.loads(result.stdout)["results"]
    assert [r["length"] for r in records] == lengths.tolist()
    worst = np.load(tmp_path / "w.npy")
    for k, n in enumerate(lengths):
        assert np.all(worst[k, n:] == 0)  # padding is no input: never moved
        assert np.all(np.abs(worst[k, :n] - data["x"][pick[k], :n]) <= 0.05 + 1e-12)


@pytest.mark.parametrize("options, fragments", [
    (("--eps", "-1"), ("--eps '-1' is not a positive number", "Fix: write --eps 0.03")),
    (("--eps", "abc"), ("--eps 'abc' is not a positive number",)),
    (("--eps", "0.1", "--target", "9"), ("--target 9 names a class the model lacks",)),
    (("--eps", "0.1", "--target", "label"), ("--target label needs labels",)),
    (("--eps", "0.1", "--target", "cats"), ("--target 'cats' is neither",)),
    (("--eps", "0.1", "--distortion-norm", "3"), ("--distortion-norm '3' is not 1, 2 or inf",)),
    (("--eps", "0.1", "-p", "1"), ("--norm '1' is not a ball lrcert measures distortion over", "use --norm inf or --norm 2")),
    (("--eps", "0.1", "--box", "0,1"), ("lies outside --box 0,1",)),
    (("--eps", "0.1", "--worst-out", "w.txt"), ("--worst-out w.txt does not end in .npy",)),
    (("--eps", "0.1", "--report", "r.txt"), ("--report r.txt does not end in .html",)),
])
def test_bad_input_is_one_line_and_exit_2(options, fragments):
    assert_error(invoke("stability", MOONS, MOONS_DATA, *options, *FAST), *fragments)


def test_usage_errors_exit_2():
    assert invoke("stability", MOONS, MOONS_DATA).exit_code == 2  # --eps is required
    assert invoke("stability", MOONS, MOONS_DATA, "--eps", "0.1", "--samples", "0").exit_code == 2


def test_help_is_grouped_in_panels():
    page = runner.invoke(app, ["stability", "-h"], env={"COLUMNS": "80"}).stdout
    found = [line.split("─ ", 1)[1].split(" ─")[0] for line in page.splitlines() if line.startswith("╭─ ")]
    assert [n for n in found if n not in ("Arguments", "Options")] == ["Ball", "Measures", "Data", "Model", "Output",
                                                                        "Checks", "Engine"]
    wide = runner.invoke(app, ["stability", "-h"], env={"COLUMNS": "250"}).stdout
    assert "Exit codes: 0 all good" in wide and "--worst-out" in wide and "8/255" in wide


def _config(tmp_path, stability: str) -> Path:
    config = tmp_path / "lrcert.toml"
    config.write_text(f'[checks.moons]\nmodel = "{MOONS}"\ndata = "{MOONS_DATA}"\nstability = {stability}\n')
    return config


def test_check_fails_a_model_whose_explanations_move_too_much(tmp_path):
    strict = _config(tmp_path, '{eps = "0.3", max-distortion = 0, samples = 32, budget = 30}')
    failed = invoke("check", "--config", strict, "-f", "json")
    assert failed.exit_code == 1, failed.stderr
    (outcome,) = json.loads(failed.stdout)
    assert outcome["status"] == "failed" and outcome["figures"][0].startswith("max Δ found")
    assert "max Δ found above 0: inputs" in outcome["failures"][0]
    loose = _config(tmp_path, '{eps = "8/255", max-distortion = 1e9, max-bound = 1e9, samples = 32, budget = 30}')
    passed = invoke("check", "--config", loose, "-f", "json")
    assert passed.exit_code == 0, passed.stderr
    assert [f.split()[:3] for f in json.loads(passed.stdout)[0]["figures"]] == [["max", "Δ", "found"], ["max", "Δ", "bound"]]


@pytest.mark.parametrize("table, fragment", [
    ('{max-distortion = 1}', "has no eps"),
    ('{eps = "0.1"}', "could never fail"),
    ('{eps = "-2", max-bound = 1}', "eps = '-2' is not a positive number"),
    ('{eps = "0.1", max-bound = -1}', "max-bound: -1 is not a number ≥ 0"),
    ('{eps = "0.1", max-bound = 1, steps = 3}', "unknown key 'steps'"),
    ('{eps = "0.1", max-bound = 1, norm = "1"}', "is not a ball lrcert measures distortion over"),
])
def test_a_bad_stability_table_is_one_line(tmp_path, table, fragment):
    result = invoke("check", "--config", _config(tmp_path, table))
    assert_error(result, fragment, "[checks.moons]")


def test_targets_and_relative_distortion(tmp_path):
    base = ("stability", MOONS, MOONS_DATA, "--eps", "0.1", *FAST, "-f", "json")
    plain = json.loads(invoke(*base).stdout)["results"]
    relative = json.loads(invoke(*base, "--relative").stdout)["results"]
    for a, b in zip(plain, relative):
        scale = a["saliency_norm"] or 1.0
        assert b["expected"]["mean"] == pytest.approx(a["expected"]["mean"] / scale, rel=1e-12)
        assert b["max_found"]["value"] == pytest.approx(a["max_found"]["value"] / scale, rel=1e-12)
        assert b["relative"] and not a["relative"]
    margin = json.loads(invoke(*base, "--target", "margin").stdout)["results"]
    assert all(r["target"]["rival"] == 1 - r["target"]["class"] for r in margin)
    fixed = json.loads(invoke(*base, "--target", "1").stdout)["results"]
    assert all(r["target"]["class"] == 1 for r in fixed)
    labelled = invoke("stability", BARS, BARS_IMAGES, "--eps", "0.02", *FAST, "--target", "label", "-f", "json")
    assert labelled.exit_code == 0, labelled.stderr
    assert all(r["target"]["class"] == r["label"] for r in json.loads(labelled.stdout)["results"])
