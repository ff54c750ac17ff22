"""Certifying one data set with many processes: torchrun's ranks, coordinated by torch.distributed.

Launched by ``torchrun`` (one process per GPU, or per CPU share, on one or many machines), every
rank loads the model and reads the data; the inputs still to certify are cut into batches dealt
out round-robin: in round k, rank r certifies batch k·W + r. After each round the ranks' results
meet on rank 0 (``gather_object``), which writes them in input order, so that the one output file
is the single-process output, streamed. Everything goes through torch.distributed (gloo on CPUs,
NCCL on GPUs); nothing here starts processes or opens sockets. Outside torchrun there is one rank
and no process group.

>>> ranks = Ranks.from_environment({})
>>> ranks.size, ranks.rank, ranks.launched
(1, 0, False)
>>> [[b.tolist() for b in round] for round in deal(list(range(7)), batch=2, ranks=2)]
[[[0, 1], [2, 3]], [[4, 5], [6]]]
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from ..errors import LrcertError, first_line


@dataclass
class Ranks:
    """This process's place among the ranks (``launched``: started by torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    launched: bool = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> "Ranks":
        environ = os.environ if environ is None else environ
        if "TORCHELASTIC_RUN_ID" not in environ and "RANK" not in environ:
            return cls()
        try:
            return cls(int(environ["RANK"]), int(environ["WORLD_SIZE"]), int(environ.get("LOCAL_RANK", 0)), True)
        except (KeyError, ValueError):
            raise LrcertError(
                "torchrun's environment is incomplete (RANK, WORLD_SIZE)", fix="launch lrcert with torchrun"
            ) from None

    @property
    def name(self) -> str:
        return f"rank {self.rank} of {self.size}"

    def start(self, device: torch.device) -> torch.device:
        """Join the process group; return this rank's device (its own GPU, ``LOCAL_RANK``, for CUDA)."""
        if not self.launched:
            return device
        import torch.distributed as dist

        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank % torch.cuda.device_count())
            torch.cuda.set_device(device)  # NCCL's object collectives use the current device
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return device

    def gather(self, value) -> list | None:
        """Every rank's ``value``, on rank 0 (in rank order); None on the others."""
        if not self.launched:
            return [value]
        import torch.distributed as dist

        received = [None] * self.size if self.rank == 0 else None
        with self._together():
            dist.gather_object(value, received, dst=0)
        return received

    def share(self, value):
        """Rank 0's ``value``, on every rank."""
        if not self.launched:
            return value
        import torch.distributed as dist

        box = [value]
        with self._together():
            dist.broadcast_object_list(box, src=0)
        return box[0]

    @contextmanager
    def _together(self):
        """A collective that breaks because another rank stopped: one line, not a gloo traceback."""
        try:
            yield
        except RuntimeError as error:
            detail = first_line(error).split("] ", 1)[-1].split(". ")[0]  # gloo: "[file:line] what. Advice."
            raise LrcertError(
                f"{self.name}: another rank stopped, so the ranks can no longer meet ({detail})",
                fix="torchrun's report names the rank that failed; with --format jsonl --output FILE, rerun the same "
                "command with --resume to keep every row already certified",
            ) from None

    def close(self) -> None:
        """Leave the process group together (after every rank's last message)."""
        if self.launched:
            import torch.distributed as dist

            if dist.is_initialized():
                with self._together():
                    dist.barrier()
                dist.destroy_process_group()

    def leave(self, code: int) -> None:
        """End a torchrun rank with ``code`` at once, its output flushed: about one run in twelve,
        the interpreter's own teardown after the process group aborted the process ("terminate
        called without an active exception", no Python frame left), turning a finished run into a
        failed one. Everything lrcert writes is closed by now."""
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def deal(indices: Sequence[int], batch: int, ranks: int) -> list[list[np.ndarray]]:
    """Cut ``indices`` into batches and deal them round-robin: per round, each rank's batch (the
    last round's may be missing for some ranks)."""
    indices = np.asarray(indices, dtype=np.int64)
    batches = [indices[start : start + batch] for start in range(0, len(indices), batch)]
    return [batches[k : k + ranks] for k in range(0, len(batches), ranks)]
