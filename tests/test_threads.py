"""CPU threads: the CPUs lrcert may use, the load it reads, and the settings it restores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from typer.testing import CliRunner

import lrcert
from lrcert.runtime import threads as cpu
from lrcert.cli import app
from lrcert.errors import LrcertError

MODELS = Path(__file__).resolve().parents[1] / "models"


class _Clock:
    """A fake ``time`` for :mod:`lrcert.runtime.threads`: wall and own CPU seconds set by the test."""

    def __init__(self):
        self.wall, self.own, self.slept = 100.0, 10.0, 0.0

    def monotonic(self):
        return self.wall

    def process_time(self):
        return self.own

    def sleep(self, seconds):
        self.slept += seconds
        self.wall += seconds


@pytest.fixture
def machine(monkeypatch):
    """A machine of 4 allowed CPUs whose busy seconds the test sets (``machine.busy``)."""
    clock = _Clock()
    clock.busy = 1000.0
    monkeypatch.setattr(cpu, "time", clock)
    monkeypatch.setattr(cpu, "cpu_busy_seconds", lambda cpus: clock.busy)
    monkeypatch.setattr(cpu, "allowed_cpus", lambda: 4)
    monkeypatch.setattr(cpu, "_FIRST_LOOK", None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    yield clock
    torch.set_num_threads(before)


def _advance(clock, seconds: float, others: float, own: float) -> None:
    """``seconds`` pass, other processes keeping ``others`` CPUs busy and this one ``own``."""
    clock.wall += seconds
    clock.own += own * seconds
    clock.busy += (others + own) * seconds


def test_auto_takes_the_cpus_others_leave(machine):
    threads = cpu.Threads()
    _advance(machine, 2.0, others=0.05, own=1.0)  # (start-up: one CPU of its own, background noise)
    assert threads.choose() == 4
    _advance(machine, 1.0, others=1.0, own=3.0)  # a busy process arrives
    assert threads.choose() == 3
    _advance(machine, 1.0, others=2.6, own=1.4)  # two more, sharing time with lrcert's threads
    assert threads.choose() == 1
    _advance(machine, 1.0, others=0.0, own=1.0)  # they are gone
    assert threads.choose() == 4


def test_auto_looks_again_only_after_a_window_and_afresh_when_stale(machine):
    threads = cpu.Threads()
    _advance(machine, 1.0, others=1.0, own=1.0)
    assert threads.choose() == 3
    _advance(machine, cpu.LOOK_EVERY / 10, others=0.0, own=1.0)  # too short a window to count ticks
    assert threads.choose() == 3
    machine.wall += cpu.STALE_AFTER + 1  # an engine idle in a notebook while a busy process ran
    machine.busy += 3.0 * (cpu.STALE_AFTER + 1)
    assert threads.choose() == 4 and machine.slept == cpu.FRESH_WINDOW  # (the fresh window: quiet)


def test_auto_never_exceeds_the_users_setting_or_the_allowed_cpus(machine, monkeypatch):
    torch.set_num_threads(2)
    assert cpu.Threads().choose() == 2
    torch.set_num_threads(8)
    assert cpu.Threads().choose() == 4  # (allowed_cpus)


def test_omp_num_threads_is_the_environments_choice(machine, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    torch.set_num_threads(3)
    threads = cpu.Threads()
    _advance(machine, 1.0, others=2.0, own=1.0)  # (busy, yet the environment's count stays)
    assert threads.choose() == 3


def test_a_given_count_is_used_as_given_and_the_setting_restored(machine):
    _advance(machine, 1.0, others=3.0, own=1.0)
    with cpu.Threads(3).use() as count:
        assert count == 3 and torch.get_num_threads() == 3
    assert torch.get_num_threads() == 4
    with pytest.raises(LrcertError, match="not a positive number of threads"):
        cpu.Threads(0)


def test_cgroup_quotas_of_both_versions(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpu.cgroup_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu.cgroup_quota(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu.cgroup_quota(tmp_path) == 3.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu.cgroup_quota(tmp_path) is None
    assert cpu.cgroup_quota(tmp_path / "absent") is None


def test_busy_seconds_count_only_the_allowed_cpus(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  300 0 30 900 10 0 0 0 0 0\n"
                    "cpu0 100 0 10 300 5 0 0 0 0 0\n"
                    "cpu1 200 0 20 600 5 0 3 4 0 0\n"
                    "intr 12345\n")
    tick = os.sysconf("SC_CLK_TCK")
    assert cpu.cpu_busy_seconds({0}, stat) == pytest.approx(110 / tick)
    assert cpu.cpu_busy_seconds(None, stat) == pytest.approx((110 + 227) / tick)
    assert cpu.cpu_busy_seconds(None, tmp_path / "absent") is None


@pytest.mark.skipif(not Path("/proc/stat").exists() or cpu.allowed_cpus() < 2, reason="needs /proc/stat and 2 CPUs")
def test_a_real_busy_process_takes_a_thread_away(monkeypatch):
    """On this machine: a process spinning beside us is seen, and auto leaves it its CPU."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        threads = cpu.Threads()
        threads.last = cpu._Look(threads.cpus)
        time.sleep(1.2)
        assert threads.choose() <= min(cpu.allowed_cpus(), torch.get_num_threads()) - 1
    finally:
        spinner.kill()
        spinner.wait()


class _ThreadCounts(TorchDispatchMode):
    """The PyTorch thread count at every matrix product (the engine's work)."""

    PRODUCTS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
                torch.ops.aten.baddbmm.default}

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.PRODUCTS:
            self.seen.add(torch.get_num_threads())
        return func(*args, **(kwargs or {}))


def test_the_engine_computes_with_its_threads_and_restores_the_users():
    network = lrcert.load(MODELS / "moons_mlp.onnx")
    x = torch.rand(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    counts, engine = _ThreadCounts(), lrcert.Engine(network, threads=1)
    with counts:
        results = engine.certify(x)
    assert counts.seen == {1} and torch.get_num_threads() == before
    again = lrcert.certify(network, x, threads=1)
    assert [r.radius for r in results] == [r.radius for r in again]


def test_threads_on_the_command_line(tmp_path):
    runner = CliRunner()
    model, data = MODELS / "moons_mlp.onnx", MODELS / "moons_mlp.inputs.npy"
    done = runner.invoke(app, ["certify", str(model), str(data), "-f", "json", "--threads", "1"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["options"]["threads"] == 1
    refused = runner.invoke(app, ["certify", str(model), str(data), "--threads", "0"])
    assert refused.exit_code == 2
    for command in ("check", "train", "plot", "path"):
        assert "--threads" in runner.invoke(app, [command, "--help"], terminal_width=200).stdout
