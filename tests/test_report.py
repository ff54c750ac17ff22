"""The HTML report: one self-contained page (no script, nothing fetched), from ``certify --report``
and from ``lrcert report`` on JSON and JSON lines; rendered by headless Chromium where installed."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

from lrcert.cli import app
from lrcert.results.html_report import png
from test_prediction import _near_boundary

SECTIONS = ("The run", "Summary", "Radii (log scale)", "Per predicted class", "Where the binding faces sit",
            "Smallest certified radii", "Exact adversarial inputs")


class _Page(HTMLParser):
    """Tags, attributes and nesting of a page: enough to check it is whole and self-contained."""

    VOID = {"meta", "img", "br", "hr", "input", "link"}

    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str, str]] = []
        self.open: list[str] = []
        self.text: list[str] = []
        self.problems: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += [(tag, k, v or "") for k, v in attrs]
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += [(tag, k, v or "") for k, v in attrs]

    def handle_endtag(self, tag):
        if not self.open or self.open[-1] != tag:
            self.problems.append(f"</{tag}> closes <{self.open[-1] if self.open else '-'}>")
        else:
            self.open.pop()

    def handle_data(self, data):
        self.text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def _check_self_contained(page: _Page) -> None:
    assert not page.problems and not page.open, (page.problems, page.open)
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    for tag, name, value in page.attributes:
        if name in ("src", "href"):
            assert value.startswith("data:"), (tag, name, value[:60])
        if name != "xmlns":  # the SVG namespace is a name, not a fetch
            assert "http://" not in value and "https://" not in value, (tag, name, value[:60])
    text = " ".join(page.text)
    for section in SECTIONS:
        assert section in text, section


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small image CNN (1×8×8, max-pool), inputs near its decision boundaries, certified with
    --report, --adversarial-out and JSON output."""
    folder = tmp_path_factory.mktemp("report")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 3))
    model = model.double().eval()
    torch.onnx.export(copy.deepcopy(model).float(), (torch.zeros(1, 1, 8, 8),), str(folder / "cnn.onnx"), dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "n"}})
    x = torch.cat([_near_boundary(model, (1, 8, 8), 6, seed=1), torch.randn(10, 1, 8, 8, dtype=torch.float64)])
    np.save(folder / "x.npy", x.numpy())
    result = CliRunner().invoke(app, ["certify", str(folder / "cnn.onnx"), str(folder / "x.npy"), "-f", "json",
                                      "-o", str(folder / "r.json"), "--report", str(folder / "certify.html"),
                                      "--adversarial-out", str(folder / "adv.npy")])
    assert result.exit_code == 0, result.output
    return folder


def test_certify_report_is_one_self_contained_page(run):
    page = _parse(run / "certify.html")
    _check_self_contained(page)
    assert page.tags.count("svg") == 3  # a histogram per norm
    doc = json.loads((run / "r.json").read_text())
    text = " ".join(page.text)
    assert doc["model"]["sha256"] in text and "cnn.onnx" in text
    exact = sum(r["exact_adversarial"]["l2"] for r in doc["results"])
    assert exact >= 3
    # the 10 smallest certified radii are listed, each pictured: input, adversarial point and difference where exact
    images = page.tags.count("img")
    assert 10 + 2 * min(exact, 10) <= images <= 30


def test_exact_adversarial_inputs_have_their_own_section_nearest_first(run):
    text = (run / "certify.html").read_text()
    section = text[text.index("<h2>Exact adversarial inputs</h2>"):]
    doc = json.loads((run / "r.json").read_text())
    exact = sorted((r["prediction_radius"]["l2"], r["index"]) for r in doc["results"] if r["exact_adversarial"]["l2"])
    listed = [int(cell) for cell in re.findall(r"<tr><td>(\d+)</td>", section)]
    assert listed == [index for _, index in exact[:10]]
    assert section.count("<img") == 3 * len(listed)  # input, adversarial point, difference


def test_report_command_from_json_and_json_lines(run, tmp_path):
    runner = CliRunner()
    again = runner.invoke(app, ["report", str(run / "r.json"), "--out", str(tmp_path / "json.html")])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "json.html").read_text().count("<img") == (run / "certify.html").read_text().count("<img")
    records = json.loads((run / "r.json").read_text())["results"]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    unhashed = json.loads((run / "r.json").read_text())  # (a run recorded before data_sha256 was)
    del unhashed["options"]["data_sha256"]
    (tmp_path / "unhashed.json").write_text(json.dumps(unhashed))
    lines = runner.invoke(app, ["report", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "lines.html"),
                                "--data", str(run / "x.npy"), "--adversarial", str(run / "adv.npy")])
    assert lines.exit_code == 0, lines.output
    page = _parse(tmp_path / "lines.html")
    _check_self_contained(page)
    assert page.tags.count("img") == (run / "certify.html").read_text().count("<img")
    bare = runner.invoke(app, ["report", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "bare.html")])
    assert bare.exit_code == 0 and "no thumbnails" in (tmp_path / "bare.html").read_text()


@pytest.mark.parametrize("args, message", [
    (["missing.json", "--out", "r.html"], "does not exist"),
    (["x.npy", "--out", "r.html"], "neither JSON nor JSON lines"),
    (["r.json", "--out", "r.pdf"], "does not end in .html"),
    (["other.json", "--out", "r.html"], "holds no lrcert certify results"),
    (["r.json", "--out", "r.html", "--adversarial", "short.npy"], "holds (2, 1, 8, 8)"),
    (["r.json", "--out", "r.html", "--data", "short.npy"], "is not the data these results were certified on"),
    (["r.jsonl", "--out", "r.html", "--data", "short.npy"], "holds 2 inputs, the results 16"),
    (["unhashed.json", "--out", "r.html", "--data", "wide.npy"], "has rows of shape (1, 9, 9)"),
])
def test_bad_report_input_gets_one_line(run, tmp_path, monkeypatch, args, message):
    """Among them: --data that is not the run's (another file, count, or row shape) draws no wrong thumbnails."""
    for name in ("r.json", "x.npy"):
        shutil.copy(run / name, tmp_path / name)
    records = json.loads((run / "r.json").read_text())["results"]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    unhashed = json.loads((run / "r.json").read_text())  # (a run recorded before data_sha256 was)
    del unhashed["options"]["data_sha256"]
    (tmp_path / "unhashed.json").write_text(json.dumps(unhashed))
    (tmp_path / "other.json").write_text('{"a": 1}')
    np.save(tmp_path / "short.npy", np.zeros((2, 1, 8, 8)))
    np.save(tmp_path / "wide.npy", np.zeros((16, 1, 9, 9)))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["report", *args])
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_png_encoder_round_trips():
    image = pytest.importorskip("PIL.Image")
    import io

    pixels = np.arange(48, dtype=np.uint8).reshape(4, 4, 3) * 5
    assert np.array_equal(np.asarray(image.open(io.BytesIO(png(pixels)))), pixels)
    grey = pixels[..., 0]
    assert np.array_equal(np.asarray(image.open(io.BytesIO(png(grey)))), grey)


def _chromium() -> str | None:
    return next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None)


@pytest.mark.skipif(_chromium() is None, reason="no Chromium here (.ci/run installs the Debian package where it can)")
def test_headless_chromium_renders_the_report(run, tmp_path):
    image = pytest.importorskip("PIL.Image")
    shot = tmp_path / "report.png"
    done = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr",
         "--window-size=1200,2400", f"--screenshot={shot}", (run / "certify.html").resolve().as_uri()],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    pixels = np.asarray(image.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.std() > 20  # text, tables and figures, not a blank page
    colours = {tuple(c) for c in pixels[::7, ::7].reshape(-1, 3).astype(int)}
    assert len(colours) > 50
