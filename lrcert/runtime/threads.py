"""How many CPU threads lrcert computes with: the CPUs it may use, less those others keep busy.

A parallel region of PyTorch waits for its slowest thread. On a shared machine, a thread that
the scheduler parks behind another process's makes every small operation of the engine wait a
time slice: on 2 cores with one busy process beside it, a 240×64 matrix product took 10 ms on
2 threads against 0.035 ms on 1, and a whole run went 2.3× slower than on one thread. So the
default (``threads=None``, "auto") uses

    n = max(1, min(allowed, torch.get_num_threads()) − ⌈busy − 0.5⌉)

where ``allowed`` counts the CPUs this process may run on (its affinity, less a cgroup CPU quota),
``torch.get_num_threads()`` is the user's setting or PyTorch's default (which follows
``OMP_NUM_THREADS``), and ``busy`` is how many of the allowed CPUs other processes used since the
last look: the CPUs' busy time in ``/proc/stat`` less this process's own CPU time, over the wall
time between. It is looked at again before each batch (at most every ``LOOK_EVERY`` seconds), so a
run follows the machine's load; where ``/proc/stat`` is absent (macOS, Windows), ``busy`` is 0.
A given number (``threads=N``, ``--threads N``) is used as given, and so is PyTorch's setting
where ``OMP_NUM_THREADS`` is set (torchrun sets it; so do the tests): the thread count moves the
last bits of float64 sums, so a run that must be reproducible bit for bit fixes it.

Computations run inside :meth:`Threads.use`, which sets PyTorch's thread count and restores the
user's afterwards: no global setting changes behind the user's back.

>>> import torch
>>> before = torch.get_num_threads()
>>> with Threads(1).use():
...     torch.get_num_threads()
1
>>> torch.get_num_threads() == before
True
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import LrcertError

#: Seconds between two looks at the machine's load: shorter windows count too few clock ticks
#: and follow a moment's noise.
LOOK_EVERY = 1.0
#: A look older than this is stale (an engine idle in a notebook): a fresh window is measured.
STALE_AFTER = 30.0
#: The length of that fresh window, in seconds.
FRESH_WINDOW = 0.1
#: A share of a CPU that other processes use, below which it still counts as free.
FREE_BELOW = 0.5
#: Fields of a ``/proc/stat`` CPU line that are idle time (idle, iowait); the rest is busy.
IDLE_FIELDS = (3, 4)


def allowed_cpus() -> int:
    """The CPUs this process may use: its affinity, capped by a cgroup CPU quota (rounded down)."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # (no affinity on macOS and Windows)
        count = os.cpu_count() or 1
    quota = cgroup_quota()
    return max(1, min(count, math.floor(quota)) if quota is not None else count)


def cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs' worth of time a cgroup quota grants (v2 ``cpu.max`` or v1 ``cfs_quota_us``), or None."""
    for quota_file, period_file in (("cpu.max", None), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us"),
                                    ("cpu,cpuacct/cpu.cfs_quota_us", "cpu,cpuacct/cpu.cfs_period_us")):
        try:
            fields = (root / quota_file).read_text().split()
            if period_file is not None:
                fields.append((root / period_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if len(fields) >= 2 and fields[0] not in ("max", "-1"):
            try:
                return int(fields[0]) / int(fields[1])
            except (ValueError, ZeroDivisionError):
                return None
        return None
    return None


def cpu_busy_seconds(cpus: set[int] | None, stat: Path = Path("/proc/stat")) -> float | None:
    """Seconds the CPUs ``cpus`` (all when None) have been busy since boot, or None where unknown."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or (cpus is not None and int(name[3:]) not in cpus):
            continue
        busy += sum(int(v) for i, v in enumerate(fields[:8]) if i not in IDLE_FIELDS)
    return busy / tick


class _Look:
    """One reading: wall time, the allowed CPUs' busy seconds and this process's CPU seconds."""

    def __init__(self, cpus: set[int] | None):
        self.wall, self.busy, self.own = time.monotonic(), cpu_busy_seconds(cpus), time.process_time()

    def others_since(self, earlier: "_Look") -> float:
        """CPUs other processes kept busy between ``earlier`` and this reading (on average)."""
        if self.busy is None or earlier.busy is None or self.wall <= earlier.wall:
            return 0.0
        others = (self.busy - earlier.busy) - (self.own - earlier.own)
        return max(0.0, others / (self.wall - earlier.wall))


#: The reading taken when lrcert was first imported: a command's first window spans its start-up.
_FIRST_LOOK: _Look | None = None


def _cpus() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


class Threads:
    """The thread count of lrcert's computations: ``requested`` as given, or auto (None)."""

    def __init__(self, requested: int | None = None):
        if requested is not None and (isinstance(requested, bool) or not isinstance(requested, int) or requested < 1):
            raise LrcertError(f"threads={requested!r} is not a positive number of threads",
                              fix="give 1 or more, or leave it out (auto: the CPUs not busy elsewhere)")
        self.requested = requested
        self.cpus, self.allowed = _cpus(), allowed_cpus()
        self.last = _FIRST_LOOK or _Look(self.cpus)
        self.count: int | None = requested  # (auto: decided at the first use)

    def choose(self) -> int:
        """The thread count for the next computation (auto: from the load since the last look)."""
        import torch

        if self.requested is not None:
            return self.requested
        if os.environ.get("OMP_NUM_THREADS"):  # (the environment chose: PyTorch follows it)
            return torch.get_num_threads()
        waited = time.monotonic() - self.last.wall
        if self.count is not None and waited < LOOK_EVERY:  # (no new look due: /proc/stat is not read)
            return self.count
        now = _Look(self.cpus)
        if waited > STALE_AFTER:  # (measure a fresh window instead)
            time.sleep(FRESH_WINDOW)
            self.last, now = now, _Look(self.cpus)
        busy = max(0, math.ceil(now.others_since(self.last) - FREE_BELOW))
        self.count = max(1, min(self.allowed, torch.get_num_threads()) - busy)
        self.last = now
        return self.count

    @contextmanager
    def use(self) -> Iterator[int]:
        """Compute with :meth:`choose`'s count of threads, restoring PyTorch's setting afterwards."""
        import torch

        before = torch.get_num_threads()
        count = self.choose()
        if count != before:
            torch.set_num_threads(count)
        try:
            yield count
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)


def first_look() -> None:
    """Take the reading a command's first window starts from (call before the heavy imports)."""
    global _FIRST_LOOK
    if _FIRST_LOOK is None:
        _FIRST_LOOK = _Look(_cpus())
