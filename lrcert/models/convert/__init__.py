"""Torch model → layer list, by running the model once and recording its aten operations.

The model (an ``nn.Module``, a TorchScript module, an exported program, or an ONNX model after
onnx2torch) is called on one example input under a ``TorchDispatchMode``. Every aten operation
that reads an input-dependent tensor is handed to its converter in :data:`.trace.CONVERTERS` (a plain
dict from aten op to function, joined from the families' modules); operations on constants simply run, which folds shape arithmetic,
weight preprocessing and the like into constants. Problems (a sigmoid, a product of two
input-dependent tensors, an op with no converter) are collected and reported all at once.

>>> import torch
>>> _ = torch.manual_seed(0)
>>> net = to_network(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU()), (3,))
>>> [layer.kind for layer in net.layers]
['input', 'dense', 'relu']

A converter family is found where its name says: :mod:`.linear` (products, convolutions,
batch-norm, sums), :mod:`.activations`, :mod:`.pooling` (and reductions), :mod:`.shapes` (moves,
copies, selections); :mod:`.call` is what a converter works with, :mod:`.trace` the dispatch mode
and the checks. Recurrences (``nn.RNN``, ONNX ``RNN``) run as lrcert's explicit steps while the
model is traced (:mod:`lrcert.models.recurrent`), so their steps arrive here as these ops.
"""

from .trace import CONVERTERS, to_network

__all__ = ["CONVERTERS", "to_network"]
