"""lrcert in CI: ``compare`` two runs, ``check`` the checks of a config (pyproject.toml or
lrcert.toml) with JUnit XML and baselines, the pre-commit hook, and start-up without torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lrcert.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args, cwd: Path | None = None):
    if cwd is None:
        return runner.invoke(app, [str(a) for a in args])
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("checking ")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Fix:" in lines[0]


def mlp(path: Path, bias_scale: float = 1.0, seed: int = 0) -> Path:
    """A small ONNX MLP (6 inputs, 3 classes); ``bias_scale`` ≠ 1 stands for a retrained model."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 24), torch.nn.ReLU(), torch.nn.Linear(24, 24), torch.nn.ReLU(),
                                torch.nn.Linear(24, 3)).eval()
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                layer.bias.mul_(bias_scale)
    torch.onnx.export(model, (torch.zeros(1, 6),), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "n"}})
    return path


@pytest.fixture
def project(tmp_path):
    """A repository with two models (the second a "retrained" first), data and a pyproject.toml."""
    mlp(tmp_path / "net.onnx")
    mlp(tmp_path / "retrained.onnx", bias_scale=0.3)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((32, 6)).astype(np.float32))
    np.save(tmp_path / "other.npy", np.random.default_rng(1).standard_normal((32, 6)).astype(np.float32))
    (tmp_path / "baselines").mkdir()
    return tmp_path


def certify(project: Path, model: str, out: str, data: str = "x.npy", fmt: str = "json") -> Path:
    result = invoke("certify", project / model, project / data, "-f", fmt, "-o", project / out, "--dtype", "float64")
    assert result.exit_code == 0, result.stderr
    return project / out


def medians(path: Path) -> dict[str, float]:
    records = json.loads(path.read_text())["results"]
    return {p: float(np.median([r["radius"][p] for r in records])) for p in records[0]["radius"]}


# ------------------------------------------------------------------------------------ compare


def test_compare_catches_a_drop_and_passes_a_rise(project):
    original, retrained = certify(project, "net.onnx", "a.json"), certify(project, "retrained.onnx", "b.json")
    before, after = medians(original), medians(retrained)
    change = after["l2"] / before["l2"] - 1
    assert abs(change) > 0.05  # the retrained model really moved the median
    base, candidate = (original, retrained) if change < 0 else (retrained, original)
    drop = abs(change) if change < 0 else 1 - 1 / (1 + change)
    limit = f"{50 * drop:.3f}%"  # half the drop
    caught = invoke("compare", base, candidate, "--max-drop", f"l2={limit}")
    assert caught.exit_code == 1, caught.stderr
    assert f"FAILED: median ε̂₂ dropped {100 * drop:.1f}%" in caught.stderr and "more than the" in caught.stderr
    risen = invoke("compare", candidate, base, "--max-drop", f"l2={limit}")
    assert risen.exit_code == 0 and "passed: l2 within" in risen.stderr
    within = invoke("compare", base, candidate, "--max-drop", f"l2={100 * drop + 1:.1f}%", "--on", "median")
    assert within.exit_code == 0, within.stderr


def test_compare_formats_count_changes_and_list_the_largest_drops(project):
    original, retrained = certify(project, "net.onnx", "a.json"), certify(project, "retrained.onnx", "b.jsonl", fmt="jsonl")
    doc = json.loads(invoke("compare", original, retrained, "-f", "json").stdout)
    assert doc["inputs"] == 32 and set(doc["norms"]) == {"l1", "l2", "linf"}
    figures = doc["norms"]["l2"]["figures"]
    assert set(figures) == {"radius", "certified_radius"} and set(figures["radius"]) == {"min", "P25", "median"}
    old = json.loads(original.read_text())["results"]
    new = [json.loads(line) for line in retrained.read_text().splitlines()]
    assert doc["changed_region"] == sum(a["pattern"] != b["pattern"] for a, b in zip(old, new))
    assert doc["changed_prediction"] == sum(a["prediction"] != b["prediction"] for a, b in zip(old, new))
    ratios = sorted(b["radius"]["l2"] / a["radius"]["l2"] for a, b in zip(old, new))
    drops = doc["norms"]["l2"]["largest_drops"]
    assert [d["ratio"] for d in drops] == pytest.approx([r for r in ratios if r < 1][:5])
    markdown = invoke("compare", original, retrained, "-f", "markdown").stdout
    assert markdown.startswith("### lrcert compare: passed") and "| ε̂₂ | median |" in markdown
    table = invoke("compare", original, retrained).stdout
    assert "changed linear region" in table and "dropped most" in table


def test_compare_refuses_runs_of_other_data_in_one_line(project):
    a = certify(project, "net.onnx", "a.json")
    other = certify(project, "net.onnx", "c.json", data="other.npy")
    one_line_error(invoke("compare", a, other), "different data", "sha256")
    np.save(project / "short.npy", np.load(project / "x.npy")[:20])
    short = certify(project, "net.onnx", "d.jsonl", data="short.npy", fmt="jsonl")  # (no sha256 in JSON lines)
    one_line_error(invoke("compare", a, short), "32 inputs", "20")
    one_line_error(invoke("compare", a, a, "--max-drop", "abc"), "--max-drop", "percentage")
    one_line_error(invoke("compare", a, project / "x.npy"), "neither JSON nor JSON lines")


# ------------------------------------------------------------------------------------ check


def write_config(project: Path, text: str, name: str = "pyproject.toml") -> Path:
    (project / name).write_text(text)
    return project / name


CONFIG = """
[project]
name = "demo"

[tool.lrcert]
dtype = "float64"

[tool.lrcert.checks.net]
model = "net.onnx"
data = "x.npy"
norms = ["l2", "linf"]
min-radius = {{l2 = {floor}}}
baseline = "baselines/net.json"
max-drop = "{drop}"

[tool.lrcert.checks.all-norms]
model = "net.onnx"
data = "x.npy"
min-certified = 1e-9
"""


def test_check_passes_fails_and_writes_junit_xml_that_a_junit_parser_reads(project):
    from junitparser import Error, Failure, JUnitXml

    write_config(project, CONFIG.format(floor="1e-9", drop="10%"))
    missing = invoke("check", "--junit-xml", project / "r.xml", cwd=project)
    assert missing.exit_code == 2 and "baseline" in missing.stderr and "--update-baseline" in missing.stderr
    suite = next(iter(JUnitXml.fromfile(str(project / "r.xml"))))
    cases = {case.name: case for case in suite}
    assert set(cases) == {"net", "all-norms"} and isinstance(cases["net"].result[0], Error)
    bootstrap = invoke("check", "net", "--update-baseline", cwd=project)
    assert bootstrap.exit_code == 0 and (project / "baselines" / "net.json").is_file(), bootstrap.stderr
    passed = invoke("check", "--junit-xml", project / "r.xml", cwd=project)
    assert passed.exit_code == 0, passed.stderr
    assert "net" in passed.stdout and "passed" in passed.stdout and "median ε̂₂ +0.0% (≥ −10%)" in passed.stdout
    xml = JUnitXml.fromfile(str(project / "r.xml"))
    assert xml.tests == 2 and xml.failures == 0 and xml.errors == 0
    smallest = min(r["radius"]["l2"] for r in json.loads((project / "baselines" / "net.json").read_text())["results"])
    write_config(project, CONFIG.format(floor=smallest * 1.01, drop="10%"))
    failed = invoke("check", "--junit-xml", project / "r.xml", cwd=project)
    assert failed.exit_code == 1
    assert "1 of 32 inputs has ε̂₂ below" in failed.stderr and "FAILED net" in failed.stderr
    suite = next(iter(JUnitXml.fromfile(str(project / "r.xml"))))
    result = {case.name: case.result for case in suite}
    assert isinstance(result["net"][0], Failure) and "inputs has ε̂₂ below" in result["net"][0].message
    assert result["all-norms"] == []  # passed


def test_check_against_a_baseline_catches_a_retrained_models_drop(project):
    """The baseline comes from a model whose radii are about 3.4× the retrained one's (biases ×3:
    its faces lie farther away), so swapping in the retrained model is a drop by construction,
    checked (not branched on) before the check runs: the check fails, names the drop, and writes no
    baseline; the accepted model passes again and the baseline is rewritten."""
    write_config(project, CONFIG.format(floor="0", drop="10%"))
    mlp(project / "net.onnx", bias_scale=3.0)
    assert invoke("check", "net", "--update-baseline", cwd=project).exit_code == 0
    before = (project / "baselines" / "net.json").read_bytes()
    shutil.copy(project / "net.onnx", project / "accepted.onnx")
    mlp(project / "net.onnx")  # (the retrained model: biases as trained)
    after = medians(certify(project, "net.onnx", "after.json"))["l2"] / medians(project / "baselines" / "net.json")["l2"]
    assert after < 0.5, after  # (the drop the check must catch: about 0.29)
    result = invoke("check", "net", "--update-baseline", cwd=project)
    assert result.exit_code == 1 and "dropped" in result.stderr and "baselines not updated" in result.stderr, result.stderr
    assert (project / "baselines" / "net.json").read_bytes() == before  # a failing run writes no baseline
    shutil.copy(project / "accepted.onnx", project / "net.onnx")
    passed = invoke("check", "net", "--update-baseline", cwd=project)
    assert passed.exit_code == 0 and "baseline" in passed.stderr and "updated" in passed.stderr, passed.stderr


def test_lrcert_toml_and_defaults(project):
    write_config(project, '[checks.small]\nmodel = "net.onnx"\ndata = "x.npy"\nnorms = "2"\nmin-radius = 1e-12\n',
                 name="lrcert.toml")
    result = invoke("check", "-f", "json", cwd=project)
    assert result.exit_code == 0, result.stderr
    (entry,) = json.loads(result.stdout)
    assert entry["check"] == "small" and entry["inputs"] == 32 and entry["status"] == "passed"
    markdown = invoke("check", "-f", "markdown", cwd=project).stdout
    assert markdown.startswith("### lrcert check") and "| small | 32 |" in markdown


@pytest.mark.parametrize("change, fragments", [
    (("min-radius = {l2 = 1e-9}", "min_radius = 1e-9"), ["checks.net]", "unknown key 'min_radius'", "min-radius"]),
    (('max-drop = "10%"', 'max-drop = "10"'), ["checks.net] max-drop", "between 0% and 100%"]),
    (('max-drop = "10%"', 'max-drop = "a lot"'), ["max-drop", "percentage"]),
    (('baseline = "baselines/net.json"', ""), ["max-drop", "names none", "baseline ="]),
    (('model = "net.onnx"', 'model = "gone.onnx"'), ["checks.net] model", "does not exist"]),
    (('norms = ["l2", "linf"]', 'norms = ["l7"]'), ["checks.net] norms", "l7"]),
    (('min-radius = {l2 = 1e-9}', 'min-radius = {l1 = 1e-9}'), ["min-radius", "l1", "norms"]),
    (('dtype = "float64"', 'dtype = "double"'), ["[tool.lrcert", "dtype", "float32"]),
    (('dtype = "float64"', 'batch-size = 0'), ["batch-size", "positive"]),
    (('[tool.lrcert.checks.all-norms]', '[tool.lrcert.checks.all-norms'), ["not valid TOML"]),
    (('dtype = "float64"', 'normalize = "cifar"'), ["[tool.lrcert", "normalize", "not a known preset"]),
    (('dtype = "float64"', 'box = [1, 0]'), ["[tool.lrcert", "box", "empty"]),
    (('dtype = "float64"', 'resize = "big"'), ["[tool.lrcert", "resize", "not a size"]),
])
def test_config_errors_name_the_key_and_the_file(project, change, fragments):
    text = CONFIG.format(floor="1e-9", drop="10%").replace(*change)
    write_config(project, text)
    one_line_error(invoke("check", cwd=project), "pyproject.toml", *fragments)
    from lrcert.ci.config import KEYS

    said = invoke("check", cwd=project).stderr  # (the config's keys, never certify's flags)
    assert not [key for key in (*KEYS, "mean", "std", "p", "norm") if f"--{key}" in said], said


def test_a_check_that_could_never_fail_is_refused(project):
    write_config(project, '[checks.small]\nmodel = "net.onnx"\ndata = "x.npy"\n', name="lrcert.toml")
    one_line_error(invoke("check", cwd=project), "lrcert.toml", "[checks.small]", "could never fail", "min-radius =",
                   "max-drop =")


def test_check_names_and_config_lookup(project, tmp_path_factory):
    write_config(project, CONFIG.format(floor="1e-9", drop="10%"))
    one_line_error(invoke("check", "nope", cwd=project), "no check 'nope'", "all-norms")
    nowhere = tmp_path_factory.mktemp("empty")
    one_line_error(invoke("check", cwd=nowhere), "no lrcert.toml", "--config")
    sub = project / "sub"
    sub.mkdir()
    assert invoke("check", "all-norms", cwd=sub).exit_code == 0  # found in the folder above
    assert invoke("check", "all-norms", "--config", project / "pyproject.toml", cwd=nowhere).exit_code == 0


# ------------------------------------------------------------------------------------ pre-commit


@pytest.mark.slow  # (about 10 s: pre-commit installs the hook's environment)
@pytest.mark.skipif(shutil.which("pre-commit") is None or shutil.which("git") is None, reason="needs pre-commit and git")
def test_pre_commit_runs_the_hook(project):
    """``pre-commit try-repo`` on a temporary repository: the hook passes, then fails on a floor."""
    write_config(project, CONFIG.format(floor="1e-9", drop="10%").replace('baseline = "baselines/net.json"\nmax-drop = "10%"\n', ""))
    git = ["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci"]
    subprocess.run([*git, "init", "-q"], cwd=project, check=True)
    subprocess.run([*git, "add", "-A"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", "models"], cwd=project, check=True)
    where = dict.fromkeys([str(Path(sys.executable).parent), str(Path(shutil.which("pre-commit")).parent)])  # lrcert's first
    env = {"PRE_COMMIT_HOME": str(project / ".pre-commit-cache"), "PATH": ":".join(where) + ":/usr/bin:/bin"}
    command = ["pre-commit", "try-repo", str(ROOT), "lrcert-check-system", "--all-files"]
    passed = subprocess.run(command, cwd=project, capture_output=True, text=True, env=env)
    assert passed.returncode == 0 and "Passed" in passed.stdout, passed.stdout + passed.stderr
    write_config(project, CONFIG.format(floor="1e3", drop="10%").replace('baseline = "baselines/net.json"\nmax-drop = "10%"\n', ""))
    failed = subprocess.run(command, cwd=project, capture_output=True, text=True, env=env)
    assert failed.returncode == 1 and "Failed" in failed.stdout and "inputs have ε̂₂ below" in failed.stdout


# ------------------------------------------------------------------------------------ start-up


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["check", "--help"], ["compare", "--help"]])
def test_help_and_version_import_no_torch(args):
    """What makes ``lrcert --version`` and ``--help`` take seconds: torch, onnx, onnx2torch."""
    code = ("import sys\nfrom lrcert.cli import app\ntry:\n    app(%r, prog_name='lrcert')\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'onnx', 'onnx2torch', 'torchvision') if m in sys.modules))") % (args,)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


def test_compare_imports_no_torch(project):
    a = certify(project, "net.onnx", "a.json")
    code = ("import sys\nfrom lrcert.cli import app\ntry:\n    app(['compare', %r, %r], prog_name='lrcert')\n"
            "except SystemExit as e:\n    print(e.code)\nprint('torch' in sys.modules)") % (str(a), str(a))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip().splitlines()[-2:] == ["0", "False"], out.stdout + out.stderr


def test_the_package_api_stays_after_lazy_imports():
    """``lrcert.load`` is the function, also once the module it lives in is imported."""
    code = ("import lrcert\nfrom lrcert.models.load import from_module\nimport lrcert.models.load\n"
            "print(callable(lrcert.load), lrcert.load.__module__, lrcert.from_module is from_module, lrcert.Engine.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.split() == ["True", "lrcert.models.load", "True", "Engine"], out.stdout + out.stderr


def test_a_check_reads_an_image_folder_with_its_normalisation_and_box(project):
    import shutil

    models = Path(__file__).parent.parent / "models"
    shutil.copytree(models / "bars_images", project / "images")
    shutil.copy(models / "bars_cnn.onnx", project / "bars.onnx")
    write_config(project, '[checks.bars]\nmodel = "bars.onnx"\ndata = "images"\nnormalize = {mean = [0.5], std = [0.25]}\n'
                          'min-certified = 1e-12\nbaseline = "base.json"\n', name="lrcert.toml")
    made = invoke("check", "--update-baseline", cwd=project)
    assert made.exit_code == 0, made.stderr
    baseline = json.loads((project / "base.json").read_text())
    assert baseline["options"]["normalize"] == {"mean": [0.5], "std": [0.25]} and baseline["options"]["box"] == [0.0, 1.0]
    assert [r["source"] for r in baseline["results"]][:2] == ["horizontal/bar0.png", "horizontal/bar2.png"]
    direct = invoke("certify", project / "bars.onnx", project / "images", "--mean", "0.5", "--std", "0.25", "-f", "json")
    assert [r["radius"] for r in json.loads(direct.stdout)["results"]] == [r["radius"] for r in baseline["results"]]
