"""Ops that move, repeat, drop or interpolate entries with constant parameters (torch.split,
F.interpolate nearest, (bi/tri)linear and bicubic, antialiased too, pixel (un)shuffle, repeat, flip, roll, gather, constant
advanced indexing and masks): certified exactly, from PyTorch modules and from both ONNX exporters,
against the independent float64 computation of tests/reference.py (hooks and autograd Jacobians)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import lrcert
from exporting import export
from reference import reference_radii, relative_error


class Around(nn.Module):
    """conv → ReLU → ``move`` → ReLU → linear: the moved entries carry faces and set the logits."""

    def __init__(self, move, channels: int = 4, size: int = 4, dims: int = 2):
        super().__init__()
        torch.manual_seed(0)
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
        self.conv, self.move, self.first, self.second = conv(1, channels, 3, padding=1), move, nn.ReLU(), nn.ReLU()
        with torch.no_grad():
            features = self.move(torch.zeros(1, channels, *[size] * dims)).numel()
        self.out = nn.Linear(features, 3)
        self.shape = (1, *[size] * dims)

    def forward(self, x):
        return self.out(self.second(self.move(self.first(self.conv(x)))).flatten(1))


class Move(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _split(x):
    a, b = torch.split(x, [1, 3], dim=1)
    return torch.cat([b, -a], dim=1)


INDEX = torch.tensor([[0, 2, 3], [1, 1, 0]])
MASK = torch.rand(4, 4, generator=torch.Generator().manual_seed(3)) > 0.4

MOVES = {
    "split": (_split, 2),
    "chunk_unbind": (lambda x: torch.cat([torch.cat(torch.chunk(x, 2, dim=2), dim=3),
                                          torch.stack(torch.unbind(x, dim=1)[::-1], dim=1).reshape(1, 4, 2, 8)], dim=1), 2),
    "nearest_scale": (lambda x: F.interpolate(x, scale_factor=2, mode="nearest"), 2),
    "nearest_size": (lambda x: F.interpolate(x, size=(7, 5), mode="nearest"), 2),
    "nearest_exact": (lambda x: F.interpolate(x, size=(6, 3), mode="nearest-exact"), 2),
    "bilinear": (lambda x: F.interpolate(x, scale_factor=2, mode="bilinear"), 2),
    "bilinear_align_corners": (lambda x: F.interpolate(x, size=(7, 6), mode="bilinear", align_corners=True), 2),
    "linear_1d": (lambda x: F.interpolate(x, scale_factor=1.5, mode="linear"), 1),
    "trilinear": (lambda x: F.interpolate(x, scale_factor=2, mode="trilinear"), 3),
    "bicubic": (lambda x: F.interpolate(x, scale_factor=(2.5, 1.5), mode="bicubic"), 2),
    "bilinear_antialias_down": (lambda x: F.interpolate(x, size=(3, 2), mode="bilinear", antialias=True), 2),
    "bicubic_antialias_down": (lambda x: F.interpolate(x, scale_factor=0.6, mode="bicubic", antialias=True), 2),
    "pixel_shuffle": (nn.PixelShuffle(2), 2),
    "pixel_unshuffle": (nn.PixelUnshuffle(2), 2),
    "repeat": (lambda x: x.repeat(1, 2, 1, 3), 2),
    "flip_roll": (lambda x: torch.roll(torch.flip(x, dims=(2,)), shifts=1, dims=3), 2),
    "gather": (lambda x: torch.gather(x, 3, torch.tensor([3, 0, 0, 2]).expand(1, 4, 4, 4)), 2),
    "index_pairs": (lambda x: x[:, INDEX[0], INDEX[1]], 2),
    "mask": (lambda x: x[:, :, MASK], 2),
}


@pytest.mark.parametrize("name", sorted(MOVES))
def test_moves_certify_like_the_reference(name):
    fn, dims = MOVES[name]
    model = Around(Move(fn) if not isinstance(fn, nn.Module) else fn, dims=dims).double().eval()
    network = lrcert.from_module(model, model.shape)
    x = torch.randn(3, *model.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    results = lrcert.certify(network, x, dtype=torch.float64)
    for k, result in enumerate(results):
        expected = reference_radii(model, x[k : k + 1])
        for p in ("l1", "l2", "linf"):
            assert relative_error(result.radius[p], expected[p]) < 1e-9, (name, k, p, result.radius[p], expected[p])


@pytest.mark.parametrize("how", ["legacy", "dynamo"])
@pytest.mark.parametrize("name", ["split", "nearest_scale", "bilinear", "pixel_shuffle"])
def test_exported_moves_certify_like_the_module(tmp_path, name, how):
    fn, dims = MOVES[name]
    model = Around(Move(fn) if not isinstance(fn, nn.Module) else fn, dims=dims).double().eval()
    path = export(model, torch.zeros(1, *model.shape, dtype=torch.float64), tmp_path / f"{name}.onnx", how)
    x = torch.randn(3, *model.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    results = lrcert.certify(lrcert.load(path), x, dtype=torch.float64)
    for k, result in enumerate(results):
        expected = reference_radii(model, x[k : k + 1])
        for p in ("l1", "l2", "linf"):
            assert relative_error(result.radius[p], expected[p]) < 1e-9, (name, how, k, p)


class TinyUNet(nn.Module):
    """Down (conv, ReLU, max-pool), up (conv, ReLU, resize), a Concat skip connection, a head."""

    def __init__(self, mode: str):
        super().__init__()
        torch.manual_seed(1)
        self.down, self.mid, self.up = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(7, 2, 3, padding=1)
        self.relu1, self.relu2, self.relu3, self.pool = nn.ReLU(), nn.ReLU(), nn.ReLU(), nn.MaxPool2d(2)
        self.mode = mode
        self.head = nn.Linear(2 * 6 * 6, 3)

    def forward(self, x):
        skip = self.relu1(self.down(x))
        deep = self.relu2(self.mid(self.pool(skip)))
        up = F.interpolate(deep, scale_factor=2, mode=self.mode)
        return self.head(self.relu3(self.up(torch.cat([skip, up], dim=1))).flatten(1))


@pytest.mark.parametrize("how", ["module", "dynamo"])
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_a_unet_with_resize_and_skip_connections_certifies(tmp_path, mode, how):
    model = TinyUNet(mode).double().eval()
    x = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    source = model if how == "module" else lrcert.load(export(model, torch.zeros(1, 1, 6, 6, dtype=torch.float64),
                                                                    tmp_path / "unet.onnx", how))
    results = lrcert.certify(source, x, dtype=torch.float64)
    for k, result in enumerate(results):
        expected = reference_radii(model, x[k : k + 1])
        for p in ("l1", "l2", "linf"):
            assert relative_error(result.radius[p], expected[p]) < 1e-9, (mode, how, k, p)
