"""Where lrcert computes: choosing the device, true float32 arithmetic, memory budgets, and
moving batches between host and device without a synchronisation per input.

Rules (DESIGN.md, "Devices"): every tensor is created on the device of the data it meets; a
batch's results travel to the host together, once; and a library never changes the user's
global PyTorch settings without restoring them. The one setting lrcert does change, for the
duration of its own computations, is TF32: PyTorch lets float32 matrix products and
convolutions on GPUs round their operands to 10-bit mantissas (and, with
``set_float32_matmul_precision("medium")``, CPU products to bfloat16), which moves radii by
up to 11× on real models. :func:`exact_float32` turns that off and restores it afterwards.

>>> import torch
>>> resolve("cpu")
device(type='cpu')
>>> torch.backends.cudnn.allow_tf32 = True
>>> with exact_float32():
...     torch.backends.cudnn.allow_tf32
False
>>> torch.backends.cudnn.allow_tf32
True
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor

from ..errors import LrcertError

#: On the CPU, one tangent pass uses about this much memory: large enough for efficient products
#: (32 MiB against 16: conv nets 6-20 % faster, MLPs unchanged, measured on a 2-core Xeon with 2 MiB
#: of L2 per core), small enough that each buffer stays below glibc's largest mmap threshold and is
#: reused instead of being faulted in afresh (64 MiB was no faster, 256 MiB slower).
CPU_PASS_BYTES = 32 << 20
#: On a GPU, the share of its free memory one batch may use (values, statistics and tangents).
GPU_MEMORY_SHARE = 0.4
#: On the CPU, the share of the machine's memory that one batch's per-input state may hold (its
#: face values, statistics and activations): a batch of 256 ResNet-50 inputs would need ~300 GB.
CPU_STATE_SHARE = 1 / 8


def cpu_state_budget() -> int:
    """Bytes one CPU batch's per-input state may hold: ``CPU_STATE_SHARE`` of physical memory."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * CPU_STATE_SHARE)
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): assume 16 GB
        return int((16 << 30) * CPU_STATE_SHARE)


def resolve(device: str | torch.device | None, like: Tensor | None = None) -> torch.device:
    """``"auto"`` → the GPU when PyTorch sees one, else the CPU; ``None`` → ``like``'s device
    (or the CPU); anything else as given, refusing ``cuda`` on a machine without a GPU."""
    if device is None:
        return like.device if isinstance(like, Tensor) else torch.device("cpu")
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise LrcertError(f"device {str(device)!r} is not a device name", fix="use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise LrcertError(
            f"device {str(device)!r} was asked for, but PyTorch ({torch.__version__}, {build}) sees no CUDA GPU",
            fix="use device cpu or auto (--device cpu), or check the GPU driver and CUDA_VISIBLE_DEVICES",
        )
    if device.type not in ("cpu", "cuda", "meta"):
        raise LrcertError(f"device {str(device)!r} is not supported", fix="use auto, cpu or cuda")
    return device


def as_tensor(x) -> Tensor:
    """A tensor as given, or a numpy array or nested list as a CPU tensor (never on the default device)."""
    return x if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x))


def of_module(module: torch.nn.Module) -> torch.device:
    """Where a module's parameters (or else its buffers) are; the CPU for a module with neither."""
    return next((t.device for t in (*module.parameters(), *module.buffers())), torch.device("cpu"))


def describe(device: torch.device) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H100 80GB HBM3)``: what ``lrcert certify`` says it used."""
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def memory_budget(device: torch.device) -> int:
    """Bytes one batch may use: a share of the GPU's free memory, or one CPU pass (``CPU_PASS_BYTES``)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * GPU_MEMORY_SHARE)
    return CPU_PASS_BYTES


#: CUDA compute capabilities whose float64 tensor cores match their float32 rate (A100, A30; H100, H200).
FULL_RATE_FLOAT64 = {(8, 0), (9, 0)}


def full_rate_float64(device: torch.device) -> bool:
    """Whether float64 matrix products on ``device`` run about as fast as float32 ones (without TF32)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) in FULL_RATE_FLOAT64


# ---------------------------------------------------------------------------------------------- float32


#: PyTorch's per-backend float32 modes (PyTorch ≥ 2.9), as paths under ``torch.backends``: the
#: "all" levels are only read and restored, the operation levels are also pinned to "ieee".
_ALL_LEVELS = ("", "cudnn", "mkldnn")  # generic/all, cuda/all, mkldnn/all
_OPERATION_LEVELS = ("cuda.matmul", "cudnn.conv", "cudnn.rnn", "mkldnn.matmul", "mkldnn.conv", "mkldnn.rnn")
#: The classic flags, as (read, write, the value that means true float32).
_CLASSIC_FLAGS = (
    (torch.get_float32_matmul_precision, torch.set_float32_matmul_precision, "highest"),
    (lambda: torch.backends.cudnn.allow_tf32, lambda value: setattr(torch.backends.cudnn, "allow_tf32", value), False),
)


def _modes(paths: tuple[str, ...]) -> list:
    """The objects that carry ``fp32_precision`` at ``paths`` under ``torch.backends``; none on PyTorch < 2.9."""
    found = []
    for path in paths:
        holder = torch.backends
        for name in filter(None, path.split(".")):
            holder = getattr(holder, name, None)
        try:
            holder.fp32_precision
        except (AttributeError, RuntimeError):
            return []
        found.append(holder)
    return found


@contextmanager
def exact_float32() -> Iterator[None]:
    """True IEEE float32 in matrix products and convolutions (no TF32, no bfloat16), restored on exit.

    PyTorch keeps two views of these settings: the classic flags (``allow_tf32``,
    ``set_float32_matmul_precision``) and, since 2.9, per-backend ``fp32_precision`` modes, which
    its kernels read and which an "all" level can override. Both are set, so that they agree
    (PyTorch refuses to read the classic flags when they disagree), and both are put back.
    """
    levels = _modes(_ALL_LEVELS) + _modes(_OPERATION_LEVELS)
    saved_levels = [level.fp32_precision for level in levels]
    flags = [(write, value, exact) for read, write, exact in _CLASSIC_FLAGS if (value := _read(read)) is not None]
    for write, _, exact in flags:
        write(exact)
    for level in _modes(_OPERATION_LEVELS):
        level.fp32_precision = "ieee"
    try:
        yield
    finally:
        for write, value, _ in flags:
            write(value)
        for level, value in zip(levels, saved_levels):
            level.fp32_precision = value


def _read(flag):
    """A classic flag's value, or None where PyTorch refuses to read it (the user's per-backend
    modes disagree with it; it is then left alone)."""
    try:
        return flag()
    except RuntimeError:
        return None


# ---------------------------------------------------------------------------------------------- transfers


class HostCopy:
    """A batch's result tensors on their way to the host. The copies are queued at once (on a GPU
    without blocking, into pinned memory); :meth:`arrays` waits for them: one synchronisation per
    batch, not one per value, and the device can work on the next batch meanwhile."""

    def __init__(self, tensors: dict[str, Tensor]):
        self._copies = {name: t.to("cpu", non_blocking=True) for name, t in tensors.items()}
        self._done = None
        cuda = [t.device for t in tensors.values() if t.device.type == "cuda"]
        if cuda:
            self._done = torch.cuda.Event()
            self._done.record(torch.cuda.current_stream(cuda[0]))

    def arrays(self) -> dict[str, np.ndarray]:
        if self._done is not None:
            self._done.synchronize()
        return {name: t.numpy() for name, t in self._copies.items()}


def staged(batches: Iterable[Tensor], device: torch.device, dtype: torch.dtype) -> Iterator[Tensor]:
    """Host batches on ``device``: on a GPU each batch goes through pinned memory and is copied
    without blocking, and the next batch is read and queued before the current one is handed on,
    so that reading input overlaps the GPU's work."""
    if device.type != "cuda":
        for batch in batches:
            yield batch.to(device=device, dtype=dtype)
        return
    queued = None
    for batch in batches:
        if batch.device.type == "cpu":
            batch = batch.to(dtype).pin_memory()
        upcoming = batch.to(device=device, dtype=dtype, non_blocking=True)
        if queued is not None:
            yield queued
        queued = upcoming
    if queued is not None:
        yield queued
