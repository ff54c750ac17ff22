"""Progress for large inputs: the engine reports every tangent pass, the terminal bar counts input
directions (moving within a single input), and Ctrl-C stops a single large input cleanly."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import lrcert
from lrcert.engine import Engine

ROOT = Path(__file__).resolve().parents[1]


def _convnet(channels: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.LazyLinear(10)).eval()


@pytest.mark.parametrize("dtype", [torch.float32, "auto"], ids=["float32", "auto"])
def test_the_engine_reports_every_tangent_pass(dtype):
    model = _convnet(4)
    model(torch.zeros(1, 3, 8, 8))
    network = lrcert.from_module(model, (3, 8, 8))
    pushed = []
    engine = Engine(network, dtype=dtype, memory_bytes=200_000, progress=pushed.append)  # a few directions per pass
    x = torch.rand(3, 3, 8, 8)
    engine.run(x[:1])
    assert len(pushed) > 3 and sum(pushed) == 192  # one input: several passes, all 3·8·8 directions
    pushed.clear()
    list(engine.stream([x], n_inputs=3))
    assert sum(pushed) == 3 * 192


def _export(tmp_path: Path, channels: int, size: int) -> tuple[Path, Path]:
    model = _convnet(channels)
    model(torch.zeros(1, 3, size, size))
    torch.onnx.export(model, (torch.zeros(1, 3, size, size),), str(tmp_path / "net.onnx"), dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "n"}})
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32))
    return tmp_path / "net.onnx", tmp_path / "x.npy"


def _stderr_on_a_terminal(command: list[str], interrupt: bool = False) -> tuple[int, str, subprocess.Popen]:
    """Run ``command`` with stderr on a pseudo-terminal; with ``interrupt``, send Ctrl-C a second
    after the progress bar appears (the model loaded, the input being certified)."""
    master, slave = pty.openpty()
    process = subprocess.Popen(command, stderr=slave, stdout=subprocess.PIPE, cwd=ROOT)
    os.close(slave)
    seen, bar_at, interrupted = b"", None, False
    while True:
        if bar_at is None and b"certifying" in seen:
            bar_at = time.monotonic()
        if interrupt and not interrupted and bar_at is not None and time.monotonic() - bar_at > 1.0:
            process.send_signal(signal.SIGINT)
            interrupted = True
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                chunk = b""
            if not chunk and process.poll() is not None:
                break
            seen += chunk
        elif process.poll() is not None:
            break
    os.close(master)
    return process.wait(timeout=60), seen.decode(errors="replace"), process


def test_the_bar_moves_within_a_single_input(tmp_path):
    model, data = _export(tmp_path, 8, 48)  # one input: about a second of tangent passes on two cores
    code, stderr, _ = _stderr_on_a_terminal([sys.executable, "-m", "lrcert", "certify", str(model), str(data),
                                             "--dtype", "float32", "-f", "jsonl", "--guarantee", "deterministic"])
    assert code == 0, stderr[-2000:]
    frames = {line.split("directions")[0][-40:] for line in stderr.split("certifying") if "0 of 1 inputs" in line}
    assert len(frames) >= 3, frames  # several counts of directions pushed before the input is done
    assert "of 6,912 directions" in stderr and "certified 1 input in" in stderr


def test_ctrl_c_stops_a_single_large_input_cleanly(tmp_path):
    model, data = _export(tmp_path, 32, 96)  # one input: about 5 minutes on two cores the dense way
    out = tmp_path / "r.json"
    code, stderr, process = _stderr_on_a_terminal(
        [sys.executable, "-m", "lrcert", "certify", str(model), str(data), "-f", "json", "-o", str(out),
         "--guarantee", "deterministic"], interrupt=True)
    # 130, or (about one run in six with stderr on a terminal, after the message) death by the SIGINT
    # itself, which a shell reports as $? = 130 too
    assert code in (130, -signal.SIGINT), stderr[-2000:]
    assert "lrcert: interrupted" in stderr and "Traceback" not in stderr
    assert not out.exists() and not list(tmp_path.glob(".r.json*"))
