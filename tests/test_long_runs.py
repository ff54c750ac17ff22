"""Large and interrupted runs: streaming in bounded memory, Ctrl-C, and --resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx_models import make, n, weight


def _mlp(path: Path, width: int, inputs: int = 784) -> Path:
    onnx.save(
        make(
            [n("Gemm", ["x", "W1", "b1"], ["h1"]), n("Relu", ["h1"], ["a1"]),
             n("Gemm", ["a1", "W2", "b2"], ["h2"]), n("Relu", ["h2"], ["a2"]),
             n("Gemm", ["a2", "W3", "b3"], ["y"])],
            ["N", inputs],
            {"W1": weight(inputs, width), "b1": weight(width), "W2": weight(width, width), "b2": weight(width),
             "W3": weight(width, 10), "b3": weight(10)},
        ),
        str(path),
    )
    return path


def _lrcert(*args) -> list[str]:
    return [sys.executable, "-m", "lrcert.cli", *map(str, args)]


def _peak_memory_while(process: subprocess.Popen) -> int:
    """The child's resident high-water mark (VmHWM), polled until it exits."""
    status = Path(f"/proc/{process.pid}/status")
    peak = 0
    while process.poll() is None:
        try:
            line = next(l for l in status.read_text().splitlines() if l.startswith("VmHWM"))
            peak = max(peak, int(line.split()[1]) * 1024)
        except (OSError, StopIteration):
            pass
        time.sleep(0.05)
    return peak


@pytest.mark.slow  # (about 20 s on 2 cores: 110,000 inputs)
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to watch memory")
def test_hundred_thousand_inputs_stream_in_bounded_memory(tmp_path):
    model = _mlp(tmp_path / "small.onnx", width=16, inputs=5)
    peaks = {}
    for count in (10_000, 100_000):
        data = tmp_path / f"x{count}.npy"
        np.save(data, np.random.default_rng(0).standard_normal((count, 5)).astype(np.float32))
        out = tmp_path / f"out{count}.jsonl"
        process = subprocess.Popen(_lrcert("certify", model, data, "-f", "jsonl", "-o", out), stderr=subprocess.PIPE)
        peaks[count] = _peak_memory_while(process)
        assert process.returncode == 0, process.stderr.read().decode()
        lines = out.read_text().splitlines()
        assert len(lines) == count
        assert [json.loads(lines[k])["index"] for k in (0, count // 2, count - 1)] == [0, count // 2, count - 1]
    # ten times the inputs, (almost) the same memory: results stream out instead of piling up
    assert peaks[100_000] < peaks[10_000] + 150e6, peaks


@pytest.mark.slow  # (about 20 s on 2 cores: a run stopped by SIGINT, then resumed)
def test_interrupted_run_resumes_without_recomputing_or_duplicating(tmp_path):
    model = _mlp(tmp_path / "mlp.onnx", width=256)
    count = 6000  # seconds of work, so that the interruption surely lands mid-run
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(1).random((count, 784)).astype(np.float32))
    out = tmp_path / "radii.jsonl"
    partial = tmp_path / "radii.jsonl.partial"
    command = _lrcert("certify", model, data, "-f", "jsonl", "-o", out, "--p", "2", "--batch-size", "20")

    process = subprocess.Popen(command, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and (not partial.exists() or partial.read_text().count("\n") < 40):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    stderr = stderr.decode()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "--resume" in stderr
    assert not out.exists()  # the output itself is never half-written
    kept = partial.read_text().splitlines()
    assert 40 <= len(kept) < count
    assert [json.loads(line)["index"] for line in kept] == list(range(len(kept)))

    with open(partial, "a") as handle:  # as if killed in the middle of a line
        handle.write('{"index": ')
    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after the {len(kept)} results" in resumed.stderr
    assert f"certified {count - len(kept)} inputs" in resumed.stderr  # nothing recomputed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(count))  # nothing lost, nothing twice
    assert not partial.exists()

    fresh = subprocess.run(command[:-4] + ["-f", "jsonl", "--p", "2", "--batch-size", "20", "-o", tmp_path / "fresh.jsonl"],
                           capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr
    assert (tmp_path / "fresh.jsonl").read_text() == out.read_text()


def test_resume_refuses_foreign_files(tmp_path):
    model = _mlp(tmp_path / "mlp.onnx", width=8, inputs=5)
    np.save(tmp_path / "x.npy", np.zeros((4, 5), dtype=np.float32))
    out = tmp_path / "out.jsonl"
    out.write_text('{"index": 3}\n')
    result = subprocess.run(_lrcert("certify", model, tmp_path / "x.npy", "-f", "jsonl", "-o", out, "--resume"),
                            capture_output=True, text=True)
    assert result.returncode == 2 and "cannot resume: line 1" in result.stderr and "Traceback" not in result.stderr
    result = subprocess.run(_lrcert("certify", model, tmp_path / "x.npy", "--resume"), capture_output=True, text=True)
    assert result.returncode == 2 and "--resume needs --format jsonl and --output FILE" in result.stderr
