"""Labels that are the model's: --classes (names or a file) matches class folders and label cells to
the model's outputs, folders named by number keep their numbers, sorted folders that cannot be all
of the model's classes are warned about, labels past its outputs are refused; each input's file is
named in the table, CSV, check's failures and the report, beside its label and whether it is correct."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from test_cli import assert_error, invoke
from test_sources import SmallConvNet, _export

CLASSES = ["airplane", "bird", "cat", "dog"]  # SmallConvNet's four outputs, in order


def _folder(root: Path, names: list[str], per_class: int = 2) -> Path:
    rng = np.random.default_rng(3)
    for name in names:
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / name / f"{k}.png")
    return root


@pytest.fixture
def model(tmp_path) -> Path:
    return _export(SmallConvNet(), tmp_path / "net.onnx")


def _predictions(folder: Path) -> list[int]:
    """SmallConvNet's predictions for the folder's 8×8 images (sorted by path), read with PIL and
    scaled to [0, 1] here, run by the torch module itself: not through lrcert."""
    files = sorted(folder.glob("*/*.png"))
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255 for f in files])
    with torch.no_grad():
        return SmallConvNet()(torch.from_numpy(pixels).permute(0, 3, 1, 2)).argmax(dim=1).tolist()


def test_class_folders_are_matched_to_the_models_classes_by_name(tmp_path, model):
    folder = _folder(tmp_path / "imgs", ["cat", "dog"])  # classes 2 and 3 of the model, not 0 and 1
    done = invoke("certify", model, folder, "--classes", ",".join(CLASSES), "-f", "json", "-p", "2")
    assert done.exit_code == 0, done.stderr
    doc = json.loads(done.stdout)
    labels = [r["label"] for r in doc["results"]]
    assert labels == [2, 2, 3, 3] and [r["source"] for r in doc["results"]][::2] == ["cat/0.png", "dog/0.png"]
    predicted = _predictions(folder)
    assert [r["correct"] for r in doc["results"]] == [p == y for p, y in zip(predicted, labels)]
    assert [(c["class"], c["name"]) for c in doc["labels"]["per_class"]] == [(2, "cat"), (3, "dog")]
    assert doc["options"]["classes"] == CLASSES and "warning" not in done.stderr
    names = tmp_path / "classes.txt"
    names.write_text("# the model's classes\n" + "\n".join(CLASSES) + "\n\n")
    again = invoke("certify", model, folder, "--classes", names, "-f", "json", "-p", "2")
    assert [r["label"] for r in json.loads(again.stdout)["results"]] == labels


def test_sorted_folders_that_cannot_be_all_classes_are_warned_about(tmp_path, model):
    folder = _folder(tmp_path / "imgs", ["cat", "dog"])
    done = invoke("certify", model, folder, "-f", "json", "-p", "2")
    assert done.exit_code == 0
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "2 class folders (cat, dog)" in warnings[0] and "4 outputs" in warnings[0]
    assert "--classes" in warnings[0] and [r["label"] for r in json.loads(done.stdout)["results"]] == [0, 0, 1, 1]
    every = _folder(tmp_path / "all", CLASSES, per_class=1)  # as many folders as outputs: nothing to say
    assert "warning" not in invoke("certify", model, every, "-f", "json", "-p", "2").stderr


def test_folders_named_by_number_keep_their_numbers(tmp_path, model):
    folder = _folder(tmp_path / "imgs", ["1", "3"])
    done = invoke("certify", model, folder, "-f", "json", "-p", "2")
    assert done.exit_code == 0 and "warning" not in done.stderr
    assert [r["label"] for r in json.loads(done.stdout)["results"]] == [1, 1, 3, 3]


@pytest.mark.parametrize("folders, options, fragments", [
    (["cat", "emu"], ["--classes", ",".join(CLASSES)], ["class folder 'emu' is not one of --classes", "Fix:"]),
    (["cat"], ["--classes", "cat,dog"], ["--classes names 2 classes, and the model has 4 outputs"]),
    (["cat"], ["--classes", "cat,cat,dog,emu"], ["--classes names 'cat' twice"]),
    (["cat"], ["--classes", "cat,,dog"], ["empty class name"]),
    (["0", "7"], [], ["labels up to 7, and the model has 4 outputs", "--classes"]),
])
def test_labels_that_cannot_be_the_models_are_refused(tmp_path, model, folders, options, fragments):
    folder = _folder(tmp_path / "imgs", folders, per_class=1)
    assert_error(invoke("certify", model, folder, *options), 2, *fragments)


def test_a_tables_label_column_names_and_classes(tmp_path):
    moons = Path(__file__).parent.parent / "models" / "moons_mlp.onnx"
    table = tmp_path / "t.csv"
    table.write_text("species,x,y\nsetosa,0.1,0.2\nversicolor,0.5,-0.3\nsetosa,1.2,0.4\n")
    done = invoke("certify", moons, table, "--label-column", "species", "--classes", "setosa,versicolor",
                  "--columns", "x,y", "-f", "csv", "-p", "2")
    assert done.exit_code == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [r["label"] for r in rows] == ["0", "1", "0"]
    assert [r["correct"] for r in rows] == [str(int(r["prediction"] == r["label"])) for r in rows]
    assert invoke("certify", moons, table, "--columns", "x,y").exit_code == 0  # (no 'label' column: no labels)
    unnamed = invoke("certify", moons, table, "--label-column", "species", "--columns", "x,y")
    assert_error(unnamed, 2, "'setosa' is not a class index", "--classes", "--label-column")
    assert_error(invoke("certify", moons, table, "--label-column", "kind", "--columns", "x,y"), 2,
                 "has no column 'kind'", "--label-column")
    assert_error(invoke("certify", moons, Path(__file__).parent.parent / "models" / "moons_mlp.inputs.npy",
                        "--label-column", "species"), 2, "read tables and image folders")


def test_the_table_report_and_checks_name_each_inputs_file(tmp_path, model):
    folder = _folder(tmp_path / "imgs", CLASSES, per_class=1)
    page = tmp_path / "run.html"
    done = invoke("certify", model, folder, "-p", "2", "--report", page, "--classes", ",".join(CLASSES))
    assert done.exit_code == 0, done.stderr
    assert "source" in done.stdout and "airplane/0.png" in done.stdout
    html = page.read_text()
    assert "Per class (against the labels)" in html and "2 (cat)" in html
    assert "<th>label</th><th>correct</th>" in html and "dog/0.png" in html
    config = tmp_path / "lrcert.toml"
    config.write_text(f'[checks.imgs]\nmodel = "{model}"\ndata = "{folder}"\nnorms = ["l2"]\nmin-radius = 1e9\n'
                      f'classes = {json.dumps(CLASSES)}\n')
    failed = invoke("check", "--config", config)
    assert failed.exit_code == 1 and "inputs 0 (airplane/0.png), 1 (bird/0.png)" in failed.stderr
