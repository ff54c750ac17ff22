"""An independent float64 computation of linear-region radii, for checking lrcert.

It shares no code with lrcert: faces are captured with forward hooks on the torch modules
themselves (nn.ReLU, nn.LeakyReLU, nn.MaxPool2d), max-pool windows are enumerated with plain
slicing, and every face gradient comes from torch.autograd's full Jacobian.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

DUAL = {"l1": math.inf, "l2": 2.0, "linf": 1.0}


def _pool_faces(z: torch.Tensor, pool: nn.MaxPool2d) -> torch.Tensor:
    """``z_win − z_l`` for every window and every element l, by explicit slicing."""
    k, s, p, d = (_pair(v) for v in (pool.kernel_size, pool.stride or pool.kernel_size, pool.padding, pool.dilation))
    assert d == (1, 1) and not pool.ceil_mode, "the reference handles max-pools without dilation or ceil mode"
    z = F.pad(z, (p[1], p[1], p[0], p[0]), value=-1e300)
    oh = (z.shape[-2] - k[0]) // s[0] + 1
    ow = (z.shape[-1] - k[1]) // s[1] + 1
    elements = [
        z[..., i : i + s[0] * (oh - 1) + 1 : s[0], j : j + s[1] * (ow - 1) + 1 : s[1]]
        for i in range(k[0])
        for j in range(k[1])
    ]
    stacked = torch.stack(elements, dim=-1)  # (..., oh, ow, k*k)
    winner = stacked.argmax(dim=-1, keepdim=True).detach()
    best = torch.gather(stacked, -1, winner)
    return best - stacked  # padding elements give gaps near 1e300: never the nearest face


def _pair(value) -> tuple[int, int]:
    return tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),) * 2


def faces_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """All face values of ``model`` at ``x`` (one input, with its batch axis) as one vector."""
    captured: list[torch.Tensor] = []

    def relu_hook(module, args):
        captured.append(args[0].reshape(-1))

    def pool_hook(module, args):
        captured.append(_pool_faces(args[0], module).reshape(-1))

    hooks = []
    for module in model.modules():
        if isinstance(module, (nn.ReLU, nn.LeakyReLU)):
            hooks.append(module.register_forward_pre_hook(relu_hook))
        elif isinstance(module, nn.MaxPool2d):
            hooks.append(module.register_forward_pre_hook(pool_hook))
    try:
        model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return torch.cat(captured) if captured else torch.zeros(0, dtype=x.dtype)


def pattern_of(model: nn.Module, x: torch.Tensor) -> tuple:
    """The activation pattern at ``x``: ReLU signs and max-pool arg-maxes, from the modules' hooks."""
    pattern: list = []

    def relu_hook(module, args):
        pattern.append(tuple((args[0] > 0).reshape(-1).tolist()))

    def pool_hook(module, args):
        _, indices = F.max_pool2d(
            args[0], module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode,
            return_indices=True,
        )
        pattern.append(tuple(indices.reshape(-1).tolist()))

    hooks = []
    for module in model.modules():
        if isinstance(module, (nn.ReLU, nn.LeakyReLU)):
            hooks.append(module.register_forward_pre_hook(relu_hook))
        elif isinstance(module, nn.MaxPool2d):
            hooks.append(module.register_forward_pre_hook(pool_hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return tuple(pattern)


def reference_radii(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """ε̂ for p = 1, 2, ∞ at one input ``x`` (shape ``(1, ...)``), all in float64."""
    model = model.double().eval()
    x = x.double()
    z = faces_of(model, x).detach()
    transform = torch.func.jacfwd if x.numel() < len(z) else torch.func.jacrev
    try:
        jacobian = transform(lambda v: faces_of(model, v))(x)
    except RuntimeError:  # some onnx2torch modules resist torch.func: plain autograd, one face at a time
        jacobian = torch.autograd.functional.jacobian(lambda v: faces_of(model, v), x)
    jacobian = jacobian.detach().reshape(len(z), -1)
    out = {}
    for p, q in DUAL.items():
        norms = jacobian.norm(p=q, dim=1)
        ratio = torch.where(norms > 0, z.abs() / norms, torch.full_like(norms, math.inf))
        out[p] = float(ratio.min().detach()) if len(ratio) else math.inf
    return out


def relative_error(a: float, b: float) -> float:
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(b), 1e-300)
