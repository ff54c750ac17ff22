"""An independent float64 computation of linear-region radii, for checking lrcert.

It shares no code with lrcert: faces are captured with forward hooks on the torch modules
themselves (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.Hardtanh/ReLU6 with a face at each bound,
nn.MaxPool2d, and test modules that state their faces), max-pool windows are enumerated with
plain slicing, and every face gradient comes from torch.autograd's full Jacobian.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DUAL = {"l1": math.inf, "l2": 2.0, "linf": 1.0}


def _pool_faces(z: torch.Tensor, pool: nn.MaxPool2d) -> torch.Tensor:
    """``z_win − z_l`` for every window and every element l, by explicit slicing."""
    k, s, p, d = (_pair(v) for v in (pool.kernel_size, pool.stride or pool.kernel_size, pool.padding, pool.dilation))
    reach = [d[axis] * (k[axis] - 1) + 1 for axis in (0, 1)]  # a window's extent, dilation included
    sizes = []
    for axis in (0, 1):
        span = z.shape[-2 + axis] + 2 * p[axis] - reach[axis]
        out = (-(-span // s[axis]) if pool.ceil_mode else span // s[axis]) + 1
        if pool.ceil_mode and (out - 1) * s[axis] >= z.shape[-2 + axis] + p[axis]:
            out -= 1  # the last window must start inside the input or its left padding
        sizes.append(out)
    oh, ow = sizes
    extra_h = max(0, (oh - 1) * s[0] + reach[0] - (z.shape[-2] + 2 * p[0]))
    extra_w = max(0, (ow - 1) * s[1] + reach[1] - (z.shape[-1] + 2 * p[1]))
    z = F.pad(z, (p[1], p[1] + extra_w, p[0], p[0] + extra_h), value=-1e300)
    elements = [
        z[..., i * d[0] : i * d[0] + s[0] * (oh - 1) + 1 : s[0], j * d[1] : j * d[1] + s[1] * (ow - 1) + 1 : s[1]]
        for i in range(k[0])
        for j in range(k[1])
    ]
    stacked = torch.stack(elements, dim=-1)  # (..., oh, ow, k*k)
    winner = stacked.argmax(dim=-1, keepdim=True).detach()
    best = torch.gather(stacked, -1, winner)
    return best - stacked  # padding elements give gaps near 1e300: never the nearest face


def _pair(value) -> tuple[int, int]:
    return tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),) * 2


def _unit_faces(module: nn.Module, args: tuple) -> list[torch.Tensor]:
    """The face values of an elementwise activation module, one tensor per kink (z − b), or of a
    test module that declares its own (``faces(*inputs)``, e.g. an elementwise max: a − b)."""
    z = args[0]
    if isinstance(module, nn.Hardtanh):  # ReLU6 too
        return [z - module.min_val, z - module.max_val]
    if isinstance(module, (nn.ReLU, nn.LeakyReLU, nn.PReLU)):
        return [z]
    return [module.faces(*args)]


def _is_unit_activation(module: nn.Module) -> bool:
    return isinstance(module, (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.Hardtanh)) or hasattr(module, "faces")


def run_with_hooks(model: nn.Module, x: torch.Tensor, on_relu, on_pool) -> None:
    """Run ``model`` on ``x``, calling ``on_relu(module, faces)`` with each elementwise activation's
    face values (a list, one tensor per kink) and ``on_pool(module, z)`` with each max-pool input,
    in execution order."""
    hooks = []
    for module in model.modules():
        if _is_unit_activation(module):
            hooks.append(module.register_forward_pre_hook(lambda m, args: on_relu(m, _unit_faces(m, args))))
        elif isinstance(module, nn.MaxPool2d):
            hooks.append(module.register_forward_pre_hook(lambda m, args: on_pool(m, args[0])))
    try:
        model(x)
    finally:
        for hook in hooks:
            hook.remove()


def module_input(model: nn.Module, x: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` made to require gradients, and the input of ``model``'s module ``name`` on it (by a
    forward hook), for autograd of any of its values with respect to ``x``."""
    module = dict(model.named_modules())[name]
    captured = []
    hook = module.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    x = x.clone().requires_grad_(True)
    try:
        model(x)
    finally:
        hook.remove()
    return x, captured[0]


def faces_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """All face values of ``model`` at ``x`` (one input, with its batch axis) as one vector."""
    captured: list[torch.Tensor] = []
    run_with_hooks(
        model, x,
        on_relu=lambda m, faces: captured.extend(f.reshape(-1) for f in faces),
        on_pool=lambda m, z: captured.append(_pool_faces(z, m).reshape(-1)),
    )
    return torch.cat(captured) if captured else torch.zeros(0, dtype=x.dtype)


def pattern_of(model: nn.Module, x: torch.Tensor) -> tuple:
    """The activation pattern at ``x``: ReLU signs and max-pool arg-maxes, from the modules' hooks."""
    pattern: list = []

    def pool(m, z):
        _, indices = F.max_pool2d(z, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=True)
        pattern.append(tuple(indices.reshape(-1).tolist()))

    with torch.no_grad():
        run_with_hooks(
            model, x, on_relu=lambda m, faces: pattern.extend(tuple((f > 0).reshape(-1).tolist()) for f in faces), on_pool=pool
        )
    return tuple(pattern)


def reference_radii(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """ε̂ for p = 1, 2, ∞ at one input ``x`` (shape ``(1, ...)``), all in float64."""
    model = model.double().eval()
    x = x.double()
    z = faces_of(model, x).detach()
    if len(z) == 0:  # no face at all: unbounded
        return {p: math.inf for p in DUAL}
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


def mlp_from_onnx(path) -> nn.Sequential:
    """A float64 ``nn.Sequential`` of Linear and ReLU read from an ONNX graph of Flatten (of a batch of
    vectors: no change), Gemm (transB = 1) and Relu nodes, in order: no converter involved."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    tensors = {t.name: torch.from_numpy(numpy_helper.to_array(t).astype(np.float64)) for t in graph.initializer}
    layers: list[nn.Module] = []
    for node in graph.node:
        if node.op_type == "Gemm":
            assert {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}.get("transB") == 1
            weight, bias = tensors[node.input[1]], tensors[node.input[2]]
            layers.append(nn.Linear(weight.shape[1], weight.shape[0]).double())
            with torch.no_grad():
                layers[-1].weight.copy_(weight)
                layers[-1].bias.copy_(bias)
        elif node.op_type == "Relu":
            layers.append(nn.ReLU())
        else:
            assert node.op_type == "Flatten", node.op_type
    return nn.Sequential(*layers).eval()


def close(a: float, b: float, rel: float) -> bool:
    """``a`` equals ``b`` to relative ``rel``. Infinities (and NaN) are compared first: an infinite
    radius equals only the same infinity, where ``abs(a − b) <= rel·abs(b)`` alone would take any
    finite ``a`` for ``b = ∞``.

    >>> close(1.0, math.inf, 1e-9), close(math.inf, math.inf, 1e-9), close(1.0, 1.0 + 1e-12, 1e-9)
    (False, True, True)
    """
    if math.isinf(a) or math.isinf(b) or math.isnan(a) or math.isnan(b):
        return a == b
    return abs(a - b) <= rel * abs(b)


def one_layer_radii(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per row of ``x``, the radii of a network whose only faces are one ReLU layer's, a = x W + b:
    min_j |a_j| / ‖W_{:,j}‖_q per norm, in NumPy float64 (no torch, no lrcert)."""
    w = w.astype(np.float64)
    a = x @ w + (0 if b is None else b.astype(np.float64))
    return {p: (np.abs(a) / np.linalg.norm(w, ord=q, axis=0)).min(axis=1) for p, q in (("l1", np.inf), ("l2", 2), ("linf", 1))}


def relative_error(a: float, b: float) -> float:
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(b), 1e-300)


def point_on_unit_sphere(d: int, p: str, generator: torch.Generator) -> torch.Tensor:
    """A random point with ‖v‖_p = 1 (for l1 and linf, a vertex: the hardest place to stay inside)."""
    v = torch.randn(d, generator=generator, dtype=torch.float64)
    if p == "l2":
        return v / v.norm()
    if p == "linf":
        return torch.sign(v)
    sign = 1.0 if torch.rand(1, generator=generator) < 0.5 else -1.0
    return torch.zeros(d, dtype=torch.float64).index_fill_(0, torch.randint(d, (1,), generator=generator), sign)
