"""The documentation, run as printed, so that it cannot go stale: README.md and every page of
docs/. Every ``console`` block's commands run (their output must be what the page shows, timings
aside), a page's blocks in order in one scratch folder (the shipped models linked in, the page's
titled files written first: the getting-started path of a new user, end to end); every ``python``
block runs (each ``print`` must print what its comment starts with; the roll_loss block gets a
model, inputs and labels for its placeholders); the JSON example against the run it abridges, the
config examples through lrcert's own config reader, the CI snippets as YAML. ``bash`` blocks hold
placeholders (your files, torchrun, GPUs, minutes-long experiments) and are not run. The site
builds with ``mkdocs build --strict`` (a broken link, an anchor, a page left out, an API reference
that no longer resolves fail it), its generated parts hold what the code says, README stays short,
and the layout page describes every stage.

The outputs shown were produced by lrcert: the tests that compare with them are regression tests
(they catch stale docs and changed output, not wrong radii; test_shipped_models.py checks the radii
of the models the examples use against an independent computation)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
#: What the roll_loss example leaves to the reader.
PLACEHOLDERS = """
import torch
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(128, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))  # 128 inputs ≥ sample_dims
x, y = torch.randn(16, 128), torch.randint(0, 3, (16,))
"""
FENCE = re.compile(r'^```(\w+)(?: title="([^"]+)")?\n(.*?)^```', re.M | re.S)


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def page_blocks(page: Path, kind: str) -> list[tuple[int, str | None, str]]:
    """(line, title, text) of every fenced block of ``kind`` on ``page``."""
    text = page.read_text(encoding="utf-8")
    return [(text[: m.start()].count("\n") + 1, m.group(2), m.group(3)) for m in FENCE.finditer(text) if m.group(1) == kind]


def blocks(kind: str) -> list[tuple[str, str]]:
    """(where, text) of every fenced block of ``kind`` on every page."""
    return [(f"{_name(page)}:{line}", text) for page in PAGES for line, _, text in page_blocks(page, kind)]


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A folder where the docs' commands run as a user's project would: the shipped models and the
    experiments linked in, nothing else of the repository (no pyproject.toml to pick up)."""
    for name in ("models", "experiments"):
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


def _run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    words = shlex.split(command)
    assert words[0] == "lrcert", command
    env = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "lrcert.cli", *words[1:]], cwd=cwd, capture_output=True, text=True,
                          env=env)


def _normalised(text: str) -> list[str]:
    """Lines without trailing blanks, and with the run's own timing masked."""
    text = re.sub(r"in \d+\.\d+ s \(\d+\.\d+ inputs/s\)", "in … s (… inputs/s)", text)
    return [line.rstrip() for line in text.strip().splitlines()]


@pytest.mark.parametrize("page", [p for p in PAGES if page_blocks(p, "console")], ids=_name)
def test_regression_console_blocks_print_what_the_page_shows(page, scratch):
    for kind in ("toml", "json", "yaml", "text"):  # the page's files, where a block names one
        for _, title, text in page_blocks(page, kind):
            if title:
                (scratch / title).write_text(text)
    for line, _, block in page_blocks(page, "console"):
        commands = re.split(r"^\$ ", block, flags=re.M)[1:]
        assert commands, f"{_name(page)}:{line}: a console block without a command"
        for part in commands:
            command, _, shown = part.partition("\n")
            result = _run(command, scratch)
            assert result.returncode == 0, (_name(page), line, command, result.stderr)
            if shown.strip():
                assert _normalised(result.stdout + result.stderr) == _normalised(shown), (_name(page), line, command)


def test_the_new_users_path_leaves_a_report_and_a_baseline(scratch):
    """Getting started, steps 4 and 5: the report is a page, the check's baseline was written
    (its folder made on the way) and the check passed against it."""
    test_regression_console_blocks_print_what_the_page_shows(ROOT / "docs" / "getting-started.md", scratch)
    assert (scratch / "moons.html").read_text().startswith("<!DOCTYPE html>")
    baseline = json.loads((scratch / "baselines" / "moons.json").read_text())
    assert len(baseline["results"]) == 16


@pytest.mark.parametrize("where, block", blocks("python"), ids=lambda v: v if ":" in str(v) else "")
def test_regression_python_blocks_run_and_print_what_their_comments_say(where, block, scratch):
    script = scratch / "example.py"
    script.write_text((PLACEHOLDERS if "roll_loss" in block else "") + block)
    result = subprocess.run([sys.executable, str(script)], cwd=scratch, capture_output=True, text=True)
    assert result.returncode == 0, (where, result.stderr)
    expected = [m.group(1) for m in re.finditer(r"^print\(.*\)\s+# (.*)$", block, re.M)]
    printed = result.stdout.strip().splitlines()
    assert len(printed) == len(expected), (where, printed)
    for got, comment in zip(printed, expected):
        assert comment.startswith(got), (where, got, comment)


def test_regression_the_json_example_is_the_run_it_abridges():
    ((where, block),) = blocks("json")
    shown = json.loads(block)
    result = _run("lrcert certify models/bars_cnn.onnx models/bars_cnn.inputs.npy --format json --p 2", ROOT)
    actual = json.loads(result.stdout)
    assert set(shown) == set(actual)
    for part in ("model", "options", "run"):
        assert set(shown[part]) == set(actual[part]), part
    assert shown["model"]["layers"] == actual["model"]["layers"] and shown["model"]["units"] == actual["model"]["units"]

    def same(a, b, where):
        if isinstance(a, dict):
            assert set(a) == set(b), where
            for key in a:
                same(a[key], b[key], f"{where}.{key}")
        elif isinstance(a, float):
            assert b == pytest.approx(a, rel=1e-4), where  # (the README rounds to 5 digits)
        else:
            assert a == b, where

    same(shown["results"][0], actual["results"][0], "results[0]")
    same(shown["summary"], actual["summary"], "summary")


def test_the_config_examples_read():
    from lrcert.ci import config

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    ((_, title, block),) = page_blocks(ROOT / "docs" / "getting-started.md", "toml")
    (check,) = config.parse(tomllib.loads(block), ROOT / title, "", check_files=False)
    assert check.name == "moons" and check.norms == ("l2",) and check.max_drop == {"l2": 0.1}
    ((_, _, block),) = page_blocks(ROOT / "docs" / "guides" / "ci.md", "toml")
    table = tomllib.loads(block)["tool"]["lrcert"]
    check, images = config.parse(table, ROOT / "pyproject.toml", "tool.lrcert.", check_files=False)
    assert check.name == "mnist" and check.norms == ("l2", "linf") and check.max_drop == {"l2": 0.1, "linf": 0.1}
    assert images.resize == (256,) and images.center_crop == (224,) and images.normalization[1] == (0.229, 0.224, 0.225)


def test_the_ci_snippets_are_yaml_and_name_real_hooks():
    import yaml

    hooks = {hook["id"] for hook in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())}
    for line, block in blocks("yaml"):
        document = yaml.safe_load(block)
        assert isinstance(document, dict), line
        for repo in document.get("repos", []):
            assert {hook["id"] for hook in repo["hooks"]} <= hooks, line
            assert re.fullmatch(r"[0-9a-f]{40}", str(repo["rev"])), "a rev a user can name: a full commit"
        if "jobs" in document and any("junit-report" in str(step) for job in document["jobs"].values()
                                      for step in job["steps"]):
            assert document["permissions"]["checks"] == "write", line  # (the report action publishes a check run)


def test_the_hooks_run_when_models_data_tables_images_or_configs_change():
    import yaml

    patterns = {hook["id"]: hook["files"] for hook in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())}
    changed = ["net.onnx", "net.pt2", "net.pt", "x.npy", "x.npz", "data/table.csv", "t.parquet", "imgs/cat/1.png",
               "imgs/dog/2.JPG", "a.jpeg", "b.webp", "pyproject.toml", "baselines/net.json"]
    for hook, pattern in patterns.items():
        assert all(re.search(pattern, name) for name in changed), hook
        assert not any(re.search(pattern, name) for name in ("README.md", "train.py", "notes.txt")), hook


def test_the_shipped_models_are_the_ones_the_examples_show():
    result = subprocess.run([sys.executable, "models/make_models.py"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and "all 17 files match" in result.stdout, result.stdout + result.stderr


def _generate():
    """docs/generate.py, the MkDocs hook that writes the docs' generated parts (it needs the
    ``docs`` extra: without it these tests skip, as the site's build does)."""
    import importlib.util

    pytest.importorskip("mkdocs")

    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_onnx_op_table_is_what_the_loader_reads():
    from lrcert.models import onnx_ops
    from lrcert.models.load import READ_OPS

    assert "<!-- lrcert:ops -->" in (ROOT / "docs" / "reference" / "supported.md").read_text()
    rows = re.findall(r"^\| (\w+) \| ([^|]+) \|(?:[^|]|\\\|)+\|[^|]+\| ([^|]+) \|$", _generate().ops(), re.M)
    shown = {op: (how.strip(), cell.strip()) for op, how, cell in rows if op != "ONNX"}
    read = onnx_ops.versions(READ_OPS)
    assert {op for op, (how, _) in shown.items() if how != "refused"} == set(read)
    for op, versions in read.items():
        assert shown[op][1] == (", ".join(map(str, versions)) if versions else shown[op][1]) and (versions or "version converter" in shown[op][1]), op


def test_every_command_has_a_page_with_every_option_its_help_shows():
    from lrcert.cli import app
    import typer

    generate = _generate()
    commands = typer.main.get_command(app).commands
    assert {p.stem for p in (ROOT / "docs" / "commands").glob("*.md")} == set(commands)
    for name in commands:
        page = (ROOT / "docs" / "commands" / f"{name}.md").read_text()
        assert f"<!-- lrcert:command {name} -->" in page, name
        help_text = _run(f"lrcert {name} --help", ROOT).stdout
        options = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", help_text)) - {"--help"}
        reference = generate.command(name)
        assert options and all(option in reference for option in options), (name, options - set(re.findall(r"--[\w-]+", reference)))


def test_the_site_builds_strictly(tmp_path):
    """mkdocs build --strict: every link and anchor resolves, every page is in the nav, every API
    reference resolves; the built command pages hold the generated options, the API page the
    docstrings."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr
    certify = (tmp_path / "site" / "commands" / "certify" / "index.html").read_text()
    assert "--min-radius" in certify and "lrcert:command" not in certify
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "lrcert.engine.core.Engine" in api and "Certify every row of" in api


def test_the_readme_is_short_and_its_links_resolve():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), target


def test_the_layout_page_describes_every_stage():
    """Each package of lrcert (a stage) has its row in docs/layout.md, and no row names one that is gone."""
    stages = {p.parent.name for p in (ROOT / "lrcert").glob("*/__init__.py")}
    described = set(re.findall(r"^\| `lrcert/(\w+)/` \|", (ROOT / "docs" / "layout.md").read_text(), re.M))
    assert described == stages, (stages - described, described - stages)
