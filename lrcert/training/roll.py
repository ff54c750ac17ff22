"""The ROLL regulariser (Lee, Alvarez-Melis & Jaakkola, ICLR 2019): train for larger linear regions.

    loss = CE(f(x), y) + λ · mean over Î(x, γ) of [ ‖∇ₓzⱼ‖₂² + C · max(0, 1 − |zⱼ|) ]

zⱼ runs over every face of x's linear region: each ReLU/LeakyReLU pre-activation and each
max-pool margin (window arg-max minus another window element). Î(x, γ) keeps the γ percent of
faces with the largest term (γ = 100: all of them).

All ∇ₓzⱼ come from the linearised-network trick: with x's activation pattern frozen, pushing an
input direction e through the network gives J·e for every face at once, so D forward-mode passes
(batched into one by ``torch.func.vmap``) replace one backward pass per face. With
``sample_dims=D'`` only D' random input coordinates are pushed and Σₖ (∂zⱼ/∂xₖ)² is scaled by
D/D', an unbiased estimate of ‖∇ₓzⱼ‖₂² (the top-γ selection would bias it, hence γ = 100 only).

>>> import torch
>>> _ = torch.manual_seed(0)
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
>>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
>>> loss = torch.nn.functional.cross_entropy(model(x), y) + roll_loss(model, x, lam=2.0, C=1.0)
>>> loss.backward()
"""

from __future__ import annotations

import math
import warnings
import weakref
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import TorchFunctionMode

from ..errors import LrcertError
from ..models import recurrent
from ..models.load import from_module

RELU_FUNCTIONS = {F.relu, F.relu_, torch.relu, torch.relu_, Tensor.relu, Tensor.relu_, F.leaky_relu, F.leaky_relu_}
MAX_POOL_NAMES = {"max_pool2d", "_max_pool2d", "max_pool2d_with_indices"}
TANGENTS_PER_PASS = 64  # input directions pushed together: bounds memory at 64 copies of the activations

_validated: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()


class _RecordFaces(TorchFunctionMode):
    """Records, during one forward pass, the value of every face: ReLU inputs and max-pool margins."""

    def __init__(self):
        super().__init__()
        self.faces: list[Tensor] = []  # each (B, units)
        self.real: list[Tensor] = []  # each (B, units): False where a max-pool "face" is structural
        self.relu_units = 0  # per input

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kernel = recurrent.kernel(func)
        if kernel in ("rnn_relu", "rnn_relu_cell"):  # torch's kernels hide their ReLUs: lrcert's explicit steps
            step = recurrent.Activation(self._relu)
            return recurrent.call_rnn(args, kwargs, step) if kernel == "rnn_relu" else recurrent.run_cell(*args, **kwargs, activation=step)
        error = recurrent.refusal(func, "roll_loss: the model's recurrence")
        if error is not None:
            raise error
        if func in RELU_FUNCTIONS:
            self._unit_faces((args[0].clone() if _in_place(func, args, kwargs) else args[0]).flatten(1))
        elif getattr(func, "__name__", "") in MAX_POOL_NAMES:
            margins, real = _max_pool_margins(*args, **kwargs)
            self.faces.append(margins)
            self.real.append(real)
        return func(*args, **kwargs)


    def _unit_faces(self, z: Tensor) -> None:
        self.faces.append(z)
        self.real.append(torch.ones_like(z, dtype=torch.bool))
        self.relu_units += z.shape[1]

    def _relu(self, z: Tensor) -> Tensor:
        """A recurrence's step: its pre-activations recorded, then ReLU."""
        self._unit_faces(z.flatten(1))
        return torch.relu(z)


def _in_place(func, args, kwargs) -> bool:
    return func in (F.relu_, torch.relu_, Tensor.relu_, F.leaky_relu_) or bool(
        kwargs.get("inplace", args[-1] if len(args) > 1 and isinstance(args[-1], bool) else False)
    )


def _max_pool_margins(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Each window's arg-max minus every element of the window, (B, C·k²·windows), and which of
    those are real faces (not the arg-max itself, not padding): same count for every input."""
    if ceil_mode:
        raise LrcertError("roll_loss: max-pool with ceil_mode=True", fix="use ceil_mode=False in the model")
    pair = torch.nn.modules.utils._pair
    kernel, stride, padding = pair(kernel_size), pair(stride or kernel_size), pair(padding)
    padded = F.pad(x, (padding[1], padding[1], padding[0], padding[0]), value=-math.inf)
    windows = F.unfold(padded, kernel, dilation=dilation, stride=stride)  # (B, C·k², L)
    windows = windows.unflatten(1, (x.shape[1], kernel[0] * kernel[1]))  # (B, C, k², L)
    winner = windows.max(dim=2, keepdim=True).values
    others = torch.ones_like(windows, dtype=torch.bool).scatter(2, windows.argmax(dim=2, keepdim=True), False)
    real = others & windows.isfinite()
    margins = torch.where(real, winner - windows, torch.zeros_like(windows))
    return margins.flatten(1), real.flatten(1)


def _faces(model: torch.nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """All face values z of the batch x, (B, faces), and which are real, in one forward pass."""
    with _RecordFaces() as record:
        model(x)
    if not record.faces:
        raise LrcertError("the model has no ReLU, LeakyReLU or max-pool: it is affine", fix="add nonlinearities")
    return torch.cat(record.faces, dim=1), torch.cat(record.real, dim=1)


def face_gradients(
    model: torch.nn.Module, x: Tensor, *, sample_dims: int | None = None, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Face values z, squared gradient norms ‖∇ₓz‖₂² (both (B, faces), differentiable) and which
    faces are real (a bool mask; structural max-pool entries are not).

    With ``sample_dims`` the norms are the unbiased estimate from that many random coordinates.
    """
    _check_model(model, x)
    with _statistics_frozen(model), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)  # torch's jvp set-up
        return _face_gradients(model, x, sample_dims, generator)


def _face_gradients(model, x, sample_dims, generator):
    z, real = _faces(model, x)
    dims = x[0].numel()
    chosen = torch.arange(dims, device=x.device)
    if sample_dims is not None:
        if not 1 <= sample_dims <= dims:
            raise LrcertError(
                f"sample_dims={sample_dims} is outside 1..{dims} (the input's size)", fix=f"pick 1 to {dims}"
            )
        where = generator.device if generator is not None else torch.device("cpu")
        chosen = torch.randperm(dims, generator=generator, device=where)[:sample_dims].to(x.device)

    def push(tangent: Tensor) -> Tensor:  # J·tangent for every face of every input
        return torch.func.jvp(lambda inputs: _faces(model, inputs)[0], (x,), (tangent,))[1]

    squared = torch.zeros_like(z)
    for start in range(0, len(chosen), TANGENTS_PER_PASS):
        coords = chosen[start : start + TANGENTS_PER_PASS]
        tangents = torch.zeros(len(coords), *x.shape, dtype=x.dtype, device=x.device)
        tangents.flatten(2)[torch.arange(len(coords), device=x.device), :, coords] = 1.0  # e_k for every input of the batch
        squared = squared + torch.func.vmap(push)(tangents).square().sum(0)
    return z, squared * (dims / len(chosen)), real


@contextmanager
def _statistics_frozen(model: torch.nn.Module):
    """Batch-norm layers in training mode normalise with batch statistics as usual, but do not
    update their running statistics (the task loss's own forward pass does that, once)."""
    tracking = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    for m in tracking:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in tracking:
            m.track_running_stats = True


def roll_loss(
    model: torch.nn.Module,
    x: Tensor,
    *,
    lam: float,
    C: float,
    gamma: float = 100.0,
    sample_dims: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """λ · mean over inputs and over Î(x, γ) of [‖∇ₓzⱼ‖₂² + C·max(0, 1 − |zⱼ|)] (see the module doc).

    Add it to the task loss. Every ReLU/LeakyReLU unit counts as a face, and each max-pool
    window contributes its arg-max's margin over every other element of the window.
    """
    if not 0 < gamma <= 100:
        raise LrcertError(f"gamma={gamma} is not a percentage in (0, 100]", fix="use 0 < gamma <= 100")
    if sample_dims is not None and gamma != 100:
        raise LrcertError(
            f"sample_dims={sample_dims} with gamma={gamma}: the sampled estimate is unbiased only over all faces",
            fix="use gamma=100 with sample_dims, or drop sample_dims",
        )
    if lam == 0:
        return x.new_zeros(())
    z, squared, real = face_gradients(model, x, sample_dims=sample_dims, generator=generator)
    terms = (squared + C * torch.relu(1 - z.abs())).masked_fill(~real, -math.inf)
    keep = max(1, math.ceil(gamma / 100 * int(real[0].sum())))  # real faces: the same count per input
    chosen = terms.topk(keep, dim=1).values if keep < z.shape[1] else terms
    per_input = chosen.masked_fill(chosen == -math.inf, 0.0).sum(1) / keep
    return lam * per_input.mean()


def _check_model(model: torch.nn.Module, x: Tensor) -> None:
    """Refuse, once per model, anything lrcert cannot certify (the layer list conversion decides),
    and any ReLU written in a form the face recorder does not see (e.g. ``clamp(min=0)``)."""
    shape = tuple(x.shape[1:])
    if _validated.get(model) == shape:
        return
    modes = {module: module.training for module in model.modules()}
    try:
        network = from_module(model, shape, source=type(model).__name__)
    finally:
        for module, training in modes.items():
            module.training = training
    others = sorted({network.layers[i].kind for i in network.nonlinear} - {"relu", "leaky_relu", "maxpool"})
    if others:
        raise LrcertError(
            f"roll_loss regularises ReLU, LeakyReLU and max-pool faces; the model also has {', '.join(others)}",
            fix="train with ReLU/LeakyReLU activations (lrcert certify handles the others)",
        )
    expected = sum(layer.size for layer in network.layers if layer.kind in ("relu", "leaky_relu"))
    with torch.no_grad(), _statistics_frozen(model), _RecordFaces() as record:
        model(x)
    if record.relu_units != expected:
        raise LrcertError(
            f"roll_loss sees {record.relu_units} ReLU/LeakyReLU units per input but the model has {expected}: some "
            "are written in a form it does not record (clamp, threshold)",
            fix="write them as nn.ReLU / F.relu / nn.LeakyReLU",
        )
    _validated[model] = shape
