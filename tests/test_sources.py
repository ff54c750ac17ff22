"""Data where users keep it (lrcert.data.sources): image folders and CSV/Parquet tables read as the
model's rows, checked against an independent reading (torchvision's ImageFolder and transforms,
NumPy), certified like the same data saved as .npy by hand; --mean/--std folded into the network
(radii in pixel units); labels and accuracy; one-line errors for bad data and unwritable output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import lrcert
from lrcert.data import sources
from reference import reference_radii, relative_error
from test_cli import assert_error, invoke

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class SmallConvNet(nn.Module):
    """3×8×8 images, 4 classes."""

    def __init__(self, normalize: tuple | None = None):
        super().__init__()
        torch.manual_seed(4)
        self.conv, self.relu, self.pool = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.fc, self.relu2, self.out = nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4)
        self.normalize = normalize

    def forward(self, x):
        if self.normalize is not None:
            mean, std = (torch.tensor(v, dtype=x.dtype).reshape(1, -1, 1, 1) for v in self.normalize)
            x = (x - mean) / std
        return self.out(self.relu2(self.fc(self.pool(self.relu(self.conv(x))).flatten(1))))


def _export(model: nn.Module, path: Path, shape=(1, 3, 8, 8)) -> Path:
    torch.onnx.export(model.eval(), torch.zeros(shape), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "N"}})
    return path


def _image_folder(root: Path, sizes=((10, 12), (9, 9), (12, 10), (8, 11), (16, 9), (10, 10))) -> Path:
    """An ImageFolder tree: two classes, PNG, JPEG and WebP files of several sizes."""
    rng = np.random.default_rng(7)
    suffixes = (".png", ".jpg", ".webp")
    for k, (height, width) in enumerate(sizes):
        folder = root / ("cat" if k % 2 else "ant")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{k}{suffixes[k % 3]}", quality=95, lossless=True)
    (root / "ant" / "notes.txt").write_text("not an image")
    return root


def test_an_image_folder_reads_as_torchvisions_imagefolder_and_transforms(tmp_path):
    from torchvision import datasets, transforms

    root = _image_folder(tmp_path / "images")
    source = sources.open_source(str(root), (3, 8, 8), resize=(9,), center_crop=(8, 8))
    expected = datasets.ImageFolder(str(root), transform=transforms.Compose(
        [transforms.Resize(9), transforms.CenterCrop(8), transforms.ToTensor()]))
    assert source.classes == expected.classes == ["ant", "cat"]
    assert list(source.names) == [Path(p).relative_to(root).as_posix() for p, _ in expected.samples]
    assert source.labels.tolist() == [label for _, label in expected.samples]
    rows = source.rows[np.arange(len(source.rows))]
    for k in range(len(expected)):
        np.testing.assert_array_equal(rows[k], expected[k][0].numpy())
    assert rows.dtype == np.float32 and 0 <= rows.min() and rows.max() <= 1


def test_images_are_decoded_only_when_their_rows_are_read(tmp_path, monkeypatch):
    root = _image_folder(tmp_path / "images")
    source = sources.open_source(str(root), (3, 8, 8), resize=(8,), center_crop=(8,))
    decoded = []
    original = sources.ImageRows.decode
    monkeypatch.setattr(sources.ImageRows, "decode", lambda self, i: decoded.append(i) or original(self, i))
    source.rows[np.array([4, 1])]
    assert decoded == [4, 1]


def test_certifying_an_image_folder_equals_the_npy_made_by_hand(tmp_path):
    from torchvision import datasets, transforms

    model = _export(SmallConvNet(), tmp_path / "net.onnx")
    root = _image_folder(tmp_path / "images")
    by_hand = datasets.ImageFolder(str(root), transform=transforms.Compose(
        [transforms.Resize(8), transforms.CenterCrop(8), transforms.ToTensor()]))
    np.save(tmp_path / "x.npy", np.stack([by_hand[k][0].numpy() for k in range(len(by_hand))]))
    folder = invoke("certify", model, root, "--resize", "8", "--center-crop", "8", "-f", "json", "--no-prediction-radius")
    array = invoke("certify", model, tmp_path / "x.npy", "-f", "json", "--no-prediction-radius")
    assert folder.exit_code == array.exit_code == 0, folder.stderr + array.stderr
    assert "6 images, 2 class folders" in folder.stderr
    got, want = json.loads(folder.stdout), json.loads(array.stdout)
    assert [r["radius"] for r in got["results"]] == [r["radius"] for r in want["results"]]
    assert [r["source"] for r in got["results"]] == [Path(p).relative_to(root).as_posix() for p, _ in by_hand.samples]
    assert [r["label"] for r in got["results"]] == [label for _, label in by_hand.samples]
    assert got["options"]["resize"] == [8] and got["options"]["center_crop"] == [8]


def _table(tmp_path: Path, rows: np.ndarray, labels: np.ndarray) -> dict[str, Path]:
    """The same rows as CSV (columns in a scrambled order, plus an id column) and as Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [f"f{j}" for j in range(rows.shape[1])]
    order = list(reversed(range(rows.shape[1])))
    header = ["id", *[names[j] for j in order], "label"]
    lines = [",".join(header)] + [",".join([str(i), *[repr(float(rows[i, j])) for j in order], str(labels[i])])
                                  for i in range(len(rows))]
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")
    table = pa.table({"id": list(range(len(rows))), **{names[j]: rows[:, j] for j in order}, "label": labels})
    pq.write_table(table, tmp_path / "data.parquet")
    return {"csv": tmp_path / "data.csv", "parquet": tmp_path / "data.parquet"}


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_tables_read_the_chosen_columns_in_order_and_the_labels(tmp_path, kind):
    rng = np.random.default_rng(3)
    rows, labels = rng.standard_normal((7, 2)), rng.integers(0, 2, 7)
    path = _table(tmp_path, rows, labels)[kind]
    source = sources.open_source(str(path), (2,), columns="f0,f1")
    np.testing.assert_array_equal(source.rows, rows)
    assert source.labels.tolist() == labels.tolist()
    np.save(tmp_path / "x.npy", rows)
    model = Path(__file__).parent.parent / "models" / "moons_mlp.onnx"
    table = invoke("certify", model, path, "--columns", "f0,f1", "-f", "json")
    array = invoke("certify", model, tmp_path / "x.npy", "-f", "json")
    assert table.exit_code == array.exit_code == 0, table.stderr
    got, want = json.loads(table.stdout), json.loads(array.stdout)
    assert [r["radius"] for r in got["results"]] == [r["radius"] for r in want["results"]]
    predictions = np.array([r["prediction"] for r in got["results"]])
    assert got["labels"]["correct"] == int((predictions == labels).sum())
    assert got["labels"]["accuracy"] == pytest.approx((predictions == labels).mean())


# ------------------------------------------------------------------------------------- normalisation


def test_normalisation_folded_in_gives_the_radii_of_the_model_with_it_built_in(tmp_path):
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    plain = lrcert.from_module(SmallConvNet().double(), (3, 8, 8)).normalized(IMAGENET_MEAN, IMAGENET_STD)
    built_in = SmallConvNet(normalize=(IMAGENET_MEAN, IMAGENET_STD)).double().eval()
    for k, result in enumerate(lrcert.certify(plain, x, dtype=torch.float64)):
        expected = reference_radii(built_in, x[k : k + 1])
        for p in ("l1", "l2", "linf"):
            assert relative_error(result.radius[p], expected[p]) < 1e-9, (k, p)


def test_a_single_std_scales_the_radii_by_it(tmp_path):
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    network = lrcert.from_module(SmallConvNet().double(), (3, 8, 8))
    normalized = lrcert.certify(network, (x - 0.5) / 0.25, dtype=torch.float64)
    pixels = lrcert.certify(network.normalized((0.5,), (0.25,)), x, dtype=torch.float64)
    for a, b in zip(normalized, pixels):
        for p in a.radius:
            assert relative_error(b.radius[p], 0.25 * a.radius[p]) < 1e-12
            assert relative_error(b.prediction_radius[p], 0.25 * a.prediction_radius[p]) < 1e-12


def test_normalize_imagenet_on_the_command_line_is_recorded_and_in_pixel_units(tmp_path):
    model = _export(SmallConvNet(), tmp_path / "net.onnx")
    built_in = _export(SmallConvNet(normalize=(IMAGENET_MEAN, IMAGENET_STD)), tmp_path / "built_in.onnx")
    x = np.random.default_rng(5).random((3, 3, 8, 8), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    folded = invoke("certify", model, tmp_path / "x.npy", "--normalize", "imagenet", "-f", "json")
    inside = invoke("certify", built_in, tmp_path / "x.npy", "-f", "json")
    assert folded.exit_code == inside.exit_code == 0, folded.stderr + inside.stderr
    got, want = json.loads(folded.stdout), json.loads(inside.stdout)
    assert got["options"]["normalize"] == {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    same = lrcert.certify(lrcert.load(model).normalized(IMAGENET_MEAN, IMAGENET_STD), x)
    for a, b, c in zip(got["results"], want["results"], same):
        assert a["radius"] == c.radius  # the library's fold, exactly
        for p in ("l1", "l2", "linf"):  # (the graph holds mean and std rounded to float32, lrcert as given:
            assert relative_error(a["radius"][p], b["radius"][p]) < 1e-4  # 1e-8 apart, more near a tied face)


# ------------------------------------------------------------------------------------------- bad data


def test_bad_data_is_refused_in_one_line_naming_the_place(tmp_path):
    model = _export(SmallConvNet(), tmp_path / "net.onnx")
    mixed = _image_folder(tmp_path / "mixed", sizes=((8, 8), (8, 8), (9, 8)))
    assert_error(invoke("certify", model, mixed), 2, "img2.webp is 8×9 pixels, ant/img0.png is 8×8", "Fix: add --resize N")
    root = _image_folder(tmp_path / "images")
    assert_error(invoke("certify", model, root), 2, "gives 12×10 pixels, the model takes 8×8", "Fix: add --resize 8")
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    assert_error(invoke("certify", model, root, "--resize", "8", "--center-crop", "8"), 2, "broken.png is not an image")
    (root / "cat" / "broken.png").unlink()
    truncated = root / "cat" / "truncated.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])  # (the header is whole: the pixels are cut short)
    out = tmp_path / "out.json"
    broken = invoke("certify", model, root, "--resize", "8", "--center-crop", "8", "-o", out)
    errors = [line for line in broken.stderr.splitlines() if line.strip() and not line.startswith(("note: ", "warning: "))]
    assert broken.exit_code == 2 and len(errors) == 1 and "Traceback" not in broken.stderr  # (found while decoding: after the notes)
    assert "truncated.png: the image cannot be decoded" in errors[0] and "Fix:" in errors[0]
    assert not out.exists() and not list(tmp_path.glob(".out.json*"))  # nothing half-written
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n3,x\n")
    moons = Path(__file__).parent.parent / "models" / "moons_mlp.onnx"
    assert_error(invoke("certify", moons, tmp_path / "bad.csv"), 2, "bad.csv line 3, column 'b': 'x' is not a number")
    assert_error(invoke("certify", moons, tmp_path / "bad.csv", "--columns", "a,c"), 2, "has no column 'c'")
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 8, 8), dtype=np.float32))
    assert_error(invoke("certify", model, tmp_path / "x.npy", "--mean", "0.5,0.5", "--std", "0.2,0.2"), 2,
                 "--mean has 2 values, the model's input has 3 channels")
    assert_error(invoke("certify", model, tmp_path / "x.npy", "--std", "0.2"), 2, "--std without --mean")
    assert_error(invoke("certify", model, tmp_path / "x.npy", "--mean", "0", "--std", "0"), 2, "--std holds 0")


def test_output_that_cannot_be_written_is_an_error_not_a_crash(tmp_path):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    moons = Path(__file__).parent.parent / "models"
    result = invoke("certify", moons / "moons_mlp.onnx", moons / "moons_mlp.inputs.npy", "-o", "/dev/full", "-f", "jsonl")
    assert_error(result, 2, "cannot write the output", "No space left on device")


def test_a_full_disk_under_standard_output_is_one_line_and_exit_2():
    import subprocess
    import sys

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    models = Path(__file__).parent.parent / "models"
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "lrcert", "certify", models / "moons_mlp.onnx",
                               models / "moons_mlp.inputs.npy"], stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "cannot write the output: No space left on device. Fix:" in lines[0]


def test_a_folders_run_resumes_and_reports_with_its_labels_and_thumbnails(tmp_path):
    root = Path(__file__).parent.parent / "models" / "bars_images"
    model = Path(__file__).parent.parent / "models" / "bars_cnn.onnx"
    whole = invoke("certify", model, root, "-f", "jsonl", "-o", tmp_path / "whole.jsonl")
    assert whole.exit_code == 0, whole.stderr
    lines = (tmp_path / "whole.jsonl").read_text().splitlines(keepends=True)
    assert [json.loads(line)["source"] for line in lines] == sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))
    (tmp_path / "run.jsonl.partial").write_text("".join(lines[:3]))  # an interrupted run's rows
    resumed = invoke("certify", model, root, "-f", "jsonl", "-o", tmp_path / "run.jsonl", "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert (tmp_path / "run.jsonl").read_text().splitlines() == [line.rstrip("\n") for line in lines]
    document = invoke("certify", model, root, "-f", "json", "-o", tmp_path / "run.json")
    assert document.exit_code == 0, document.stderr
    page = invoke("report", tmp_path / "run.json", "--out", tmp_path / "page.html")
    assert page.exit_code == 0, page.stderr
    html = (tmp_path / "page.html").read_text()
    assert "8 of 8 correct against the labels (100.0 %)" in html and 'class="thumb"' in html
    assert "prediction radii and adversarial points within [0, 1]" in html
