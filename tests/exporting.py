"""Saving a model the ways users do, for the tests: both ONNX exporters and torch.export. Only the
default ONNX exporter needs onnxscript (a test extra): :func:`export` skips the calling test where
it is missing, so tests that also check PyTorch modules alone still run without it."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
import torch.nn as nn

#: The ways that go through the default (dynamo) ONNX exporter, which needs onnxscript.
DEFAULT_EXPORTER = ("dynamo", "dynamic")


def export(model: nn.Module, example: torch.Tensor, path, how: str) -> str:
    """Save ``model`` the way a user would: ``dynamo`` (the default exporter, opset from
    ``how="dynamo:N"``), ``dynamic`` (default exporter, dynamic batch), ``legacy`` (TorchScript-based,
    opset 17), ``legacy-steps`` (the same, batch and second axis dynamic: a sequence's length),
    ``pt2`` (torch.export) or ``torchscript`` (``torch.jit.trace``, saved)."""
    if how.split(":")[0] in DEFAULT_EXPORTER:
        pytest.importorskip("onnxscript")  # (the default exporter needs it)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            if how == "pt2":
                torch.export.save(torch.export.export(model, (example,)), str(path))
            elif how == "legacy":
                torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=17)
            elif how == "legacy-steps":
                torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                                  dynamic_axes={"x": {0: "batch", 1: "steps"}})
            elif how == "torchscript":
                torch.jit.trace(model, example).save(str(path))
            elif how == "dynamic":
                torch.onnx.export(model, (example,), str(path), dynamic_shapes=({0: torch.export.Dim("batch")},))
            else:
                opset = int(how.split(":")[1]) if ":" in how else None
                torch.onnx.export(model, (example,), str(path), **({"opset_version": opset} if opset else {}))
        finally:
            logging.disable(logging.NOTSET)
    return str(path)
