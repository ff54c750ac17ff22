"""README.md's examples, run as printed, so that the README cannot go stale: every ``console``
block's commands (their output must be what the README shows, timings aside), every ``python``
block (each ``print`` must print what its comment starts with; the roll_loss block gets a model,
inputs and labels for its placeholders), the JSON example against the run it abridges, the
config example through lrcert's own config reader, and the CI snippets as YAML. ``bash`` blocks
hold placeholders (your files, torchrun, GPUs, minutes-long experiments) and are not run.

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
README = (ROOT / "README.md").read_text(encoding="utf-8")
#: What the roll_loss example leaves to the reader.
PLACEHOLDERS = """
import torch
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(128, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))  # 128 inputs ≥ sample_dims
x, y = torch.randn(16, 128), torch.randint(0, 3, (16,))
"""


def blocks(kind: str) -> list[tuple[int, str]]:
    """(line, text) of every fenced block of ``kind``."""
    found = []
    for match in re.finditer(rf"^```{kind}\n(.*?)^```", README, re.M | re.S):
        found.append((README[: match.start()].count("\n") + 1, match.group(1)))
    return found


def _run(command: str) -> subprocess.CompletedProcess:
    words = shlex.split(command)
    assert words[0] == "lrcert", command
    env = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "lrcert.cli", *words[1:]], cwd=ROOT, capture_output=True, text=True,
                          env=env)


def _normalised(text: str) -> list[str]:
    """Lines without trailing blanks, and with the run's own timing masked."""
    text = re.sub(r"in \d+\.\d+ s \(\d+\.\d+ inputs/s\)", "in … s (… inputs/s)", text)
    return [line.rstrip() for line in text.strip().splitlines()]


@pytest.mark.parametrize("line, block", blocks("console"), ids=lambda v: str(v) if isinstance(v, int) else "")
def test_regression_console_blocks_print_what_the_readme_shows(line, block):
    commands = re.split(r"^\$ ", block, flags=re.M)[1:]
    assert commands, f"README line {line}: a console block without a command"
    for part in commands:
        command, _, shown = part.partition("\n")
        result = _run(command)
        assert result.returncode == 0, (line, command, result.stderr)
        if shown.strip():
            assert _normalised(result.stdout + result.stderr) == _normalised(shown), (line, command)


@pytest.mark.parametrize("line, block", blocks("python"), ids=lambda v: str(v) if isinstance(v, int) else "")
def test_regression_python_blocks_run_and_print_what_their_comments_say(line, block, tmp_path):
    script = tmp_path / "example.py"
    script.write_text((PLACEHOLDERS if "roll_loss" in block else "") + block)
    result = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, (line, result.stderr)
    expected = [m.group(1) for m in re.finditer(r"^print\(.*\)\s+# (.*)$", block, re.M)]
    printed = result.stdout.strip().splitlines()
    assert len(printed) == len(expected), (line, printed)
    for got, comment in zip(printed, expected):
        assert comment.startswith(got), (line, got, comment)


def test_regression_the_json_example_is_the_run_it_abridges():
    ((line, block),) = blocks("json")
    shown = json.loads(block)
    result = _run("lrcert certify models/bars_cnn.onnx models/bars_cnn.inputs.npy --format json --p 2")
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


def test_the_config_example_reads():
    from lrcert.ci import config

    ((line, block),) = blocks("toml")
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
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


def test_the_onnx_op_table_is_what_the_loader_reads():
    from lrcert.models import onnx_ops
    from lrcert.models.load import READ_OPS

    rows = re.findall(r"^\| (\w+) \| [^|]+ \| ([^|]+) \|$", README.split("**Every ONNX op lrcert reads**")[1].split("\n## ")[0], re.M)
    shown = {op: cell.strip() for op, cell in rows if op != "ONNX"}
    read = onnx_ops.versions(READ_OPS)
    assert set(shown) == set(read)
    for op, versions in read.items():
        assert shown[op] == (", ".join(map(str, versions)) if versions else shown[op]) and (versions or "version converter" in shown[op]), op

