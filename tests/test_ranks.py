"""lrcert under torchrun: the inputs shared among gloo ranks, one output equal to the single
process's, the summary and the --min-radius verdict over all ranks, and a rank killed mid-run
whose rows survive into a --resume with another number of ranks."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lrcert.runtime.ranks import Ranks, deal
from reference import close
from test_long_runs import _mlp

ROOT = Path(__file__).resolve().parents[1]


def _torchrun(ranks: int, *args, **kw) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
               "-m", "lrcert", *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, **kw)


def _single(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lrcert", *map(str, args)], capture_output=True, text=True, cwd=ROOT)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _radius(value: float | None) -> float:
    """A radius as read from JSON, which writes +∞ as null."""
    return math.inf if value is None else value


def _same_rows(got: list[dict], expected: list[dict]) -> None:
    """Row for row the same, radii to float64 rounding (torchrun runs each rank on one thread,
    which may sum in another order than the single process's two)."""
    assert [r["index"] for r in got] == [r["index"] for r in expected] == list(range(len(expected)))
    for a, b in zip(got, expected):
        assert (a["pattern"], a["prediction"], a["dtype"]) == (b["pattern"], b["prediction"], b["dtype"])
        for p, radius in b["radius"].items():
            assert close(_radius(a["radius"][p]), _radius(radius), 1e-9), (a["index"], p)
        assert {p: (f or {}).get("unit") for p, f in a["binding"].items()} == {p: (f or {}).get("unit") for p, f in b["binding"].items()}


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ranks")
    model = _mlp(folder / "mlp.onnx", width=64, inputs=20)
    np.save(folder / "x.npy", np.random.default_rng(0).standard_normal((137, 20)).astype(np.float32))
    alone = _single("certify", model, folder / "x.npy", "-f", "jsonl", "-o", folder / "alone.jsonl", "--dtype", "float64",
                    "--batch-size", "8")
    assert alone.returncode == 0, alone.stderr
    return folder, model


def test_two_ranks_write_the_single_process_rows(job):
    folder, model = job
    run = _torchrun(2, "certify", model, folder / "x.npy", "-f", "jsonl", "-o", folder / "two.jsonl", "--dtype", "float64",
                    "--batch-size", "8")
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr
    _same_rows(_rows(folder / "two.jsonl"), _rows(folder / "alone.jsonl"))
    assert "certified 137 inputs" in stderr and "2 ranks" in stderr
    assert not list(folder.glob("two.jsonl*.partial"))


def test_two_ranks_stream_csv_to_stdout(job):
    folder, model = job
    run = _torchrun(2, "certify", model, folder / "x.npy", "-f", "csv", "--dtype", "float64", "--batch-size", "8")
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr
    lines = stdout.splitlines()
    assert lines[0].startswith("index,prediction,l1,l2,linf") and len(lines) == 138  # one header, written once
    assert [int(line.split(",")[0]) for line in lines[1:]] == list(range(137))
    radii = [row["radius"]["l2"] for row in _rows(folder / "alone.jsonl")]
    assert [float(line.split(",")[3]) for line in lines[1:]] == pytest.approx(radii, rel=1e-9)


def test_three_ranks_json_summary_and_the_check_cover_every_rank(job):
    folder, model = job
    radii = [row["radius"]["l2"] for row in _rows(folder / "alone.jsonl")]
    limit = float(np.percentile(radii, 10))  # about a tenth of the inputs fail, on every rank
    run = _torchrun(3, "certify", model, folder / "x.npy", "-f", "json", "--dtype", "float64", "--batch-size", "8",
                    "--norm", "2", "--min-radius", f"l2={limit}")
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 1, stderr  # torchrun passes the ranks' verdict on
    doc = json.loads(stdout)
    l2_only = [{**row, "radius": {"l2": row["radius"]["l2"]}, "binding": {"l2": row["binding"]["l2"]}}
               for row in _rows(folder / "alone.jsonl")]
    _same_rows(doc["results"], l2_only)
    failing = sorted(i for i, r in enumerate(radii) if r < limit)
    assert f"FAILED: {len(failing)} of 137 inputs have l2 radius below" in stderr
    assert stderr.count("FAILED:") == 1  # said once, by rank 0
    assert doc["summary"]["l2"]["min"] == pytest.approx(min(radii), rel=1e-9)


def _rank_pid(rank: int, marker: str) -> int | None:
    """The process of torchrun rank ``rank`` whose command line holds ``marker``."""
    for entry in Path("/proc").iterdir():
        try:
            if marker in (entry / "cmdline").read_text() and f"\0RANK={rank}\0" in "\0" + (entry / "environ").read_text():
                return int(entry.name)
        except (OSError, ValueError):
            continue
    return None


@pytest.mark.slow  # (about 25 s on 2 cores: torchrun, a rank killed, a resumed run)
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the rank's process in /proc")
def test_a_killed_rank_loses_no_row_and_resume_finishes_with_other_ranks(tmp_path):
    model = _mlp(tmp_path / "mlp.onnx", width=256)
    np.save(tmp_path / "x.npy", np.random.default_rng(1).random((3000, 784)).astype(np.float32))
    out = tmp_path / "radii.jsonl"
    args = ["certify", model, tmp_path / "x.npy", "-f", "jsonl", "-o", out, "--norm", "2", "--batch-size", "10"]
    run = _torchrun(2, *args)
    own = tmp_path / "radii.jsonl.rank1.partial"
    deadline = time.time() + 120
    while time.time() < deadline and (not own.exists() or own.read_text().count("\n") < 30):
        time.sleep(0.05)
    pid = _rank_pid(1, str(out))
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode != 0 and not out.exists()
    ours = [line for line in stderr.splitlines() if line.startswith("lrcert:")]
    # rank 0 notices the broken collective, or (if torchrun's SIGTERM comes first) is interrupted: one line either way
    assert len(ours) == 1 and "--resume" in ours[0], stderr
    assert "rank 0 of 2: another rank stopped" in ours[0] or "rank 0 of 2: interrupted" in ours[0], stderr
    assert "rank      : 1" in stderr  # torchrun's report names the rank that died
    kept = {json.loads(line)["index"] for f in tmp_path.glob("radii.jsonl*.partial") for line in f.read_text().splitlines()}
    assert 30 <= len(kept) < 3000

    again = _torchrun(3, *args, "--resume")
    _, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr
    assert "resuming after" in stderr and f"certified {3000 - len(kept)} inputs" in stderr  # nothing recomputed
    rows = _rows(out)
    assert [r["index"] for r in rows] == list(range(3000))  # nothing lost, nothing twice
    alone = _single(*args[:6], tmp_path / "alone.jsonl", *args[7:])
    assert alone.returncode == 0, alone.stderr
    _same_rows(rows, _rows(tmp_path / "alone.jsonl"))
    assert not list(tmp_path.glob("radii.jsonl*.partial"))


def test_outside_torchrun_there_is_one_rank_and_deals_are_round_robin():
    assert Ranks.from_environment({}) == Ranks()
    assert Ranks.from_environment({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0"}).name == "rank 2 of 4"
    rounds = deal(range(10), batch=3, ranks=3)
    assert [[b.tolist() for b in r] for r in rounds] == [[[0, 1, 2], [3, 4, 5], [6, 7, 8]], [[9]]]
