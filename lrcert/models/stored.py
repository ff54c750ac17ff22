"""A layer list as data only, for the cache of converted networks (:mod:`.cache`): what is stored
can be read back without running any code.

:func:`entry` turns a :class:`~lrcert.network.ir.Network` into a dict of plain JSON text (the
layers and the network's own fields) and tensors (each stored once, however many layers share it:
an RNN's weights at every step), which ``torch.save`` writes and ``torch.load(weights_only=True)``
reads back. :func:`network` builds the layer list again, taking classes only from the layer list's
own (:data:`CLASSES`) and operations only from :data:`OPERATIONS`; anything else raises, which the
cache counts as a miss.

>>> import io, torch
>>> from lrcert.models.load import from_module
>>> _ = torch.manual_seed(0)
>>> net = from_module(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU()), (2,))
>>> file = io.BytesIO()
>>> torch.save(entry(net), file)
>>> again = network(torch.load(io.BytesIO(file.getvalue()), weights_only=True))
>>> x = torch.ones(1, 2, dtype=net.dtype)
>>> torch.equal(again.run(x), net.run(x)), [layer.kind for layer in again.layers]
(True, ['input', 'dense', 'relu'])
"""

from __future__ import annotations

import dataclasses
import json

import torch
from torch import Tensor

from ..network import ir

#: The classes an entry may name: every dataclass of the layer list.
CLASSES = {name: cls for name, cls in vars(ir).items() if isinstance(cls, type) and dataclasses.is_dataclass(cls)}
#: The operations an entry may name (an average pool's: the only callables a layer holds).
OPERATIONS = ("avg_pool1d", "avg_pool2d", "avg_pool3d", "_adaptive_avg_pool2d", "adaptive_avg_pool1d", "_adaptive_avg_pool3d")
#: The layout of the entries this code writes; others are misses.
FORMAT = 1


def entry(net: ir.Network) -> dict:
    """``{"format", "manifest": JSON text, "tensors": {key: tensor}}`` of ``net``."""
    tensors: dict[str, Tensor] = {}
    keys: dict[int, str] = {}

    def encode(value):
        if isinstance(value, Tensor):
            if id(value) not in keys:
                keys[id(value)] = key = f"t{len(keys)}"
                tensors[key] = value
            return {"tensor": keys[id(value)]}
        if isinstance(value, torch._ops.OpOverload):
            name = value.__name__.split(".")[0]
            if name not in OPERATIONS:
                raise ValueError(f"operation {value} is not one an entry may hold")
            return {"operation": name, "overload": value._overloadname}
        if dataclasses.is_dataclass(value):
            return {"class": type(value).__name__, "fields": {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}}
        if isinstance(value, (tuple, list)):
            return {"tuple" if isinstance(value, tuple) else "list": [encode(v) for v in value]}
        if isinstance(value, dict):
            return {"dict": {str(k): encode(v) for k, v in value.items()}}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise ValueError(f"a {type(value).__name__} is not data an entry may hold")

    manifest = json.dumps(encode(net))
    return {"format": FORMAT, "manifest": manifest, "tensors": tensors}


def network(kept: dict) -> ir.Network:
    """The layer list of an entry read back (see the module); ValueError for anything else."""
    if kept.get("format") != FORMAT:
        raise ValueError("an entry of another layout")
    tensors = kept["tensors"]

    def decode(value):
        if not isinstance(value, dict):
            return value
        if "tensor" in value:
            return tensors[value["tensor"]]
        if "operation" in value:
            if value["operation"] not in OPERATIONS:
                raise ValueError(f"operation {value['operation']!r} is not one an entry may hold")
            return getattr(getattr(torch.ops.aten, value["operation"]), value["overload"])
        if "class" in value:
            return _built(CLASSES[value["class"]], {k: decode(v) for k, v in value["fields"].items()})
        if "tuple" in value:
            return tuple(decode(v) for v in value["tuple"])
        if "list" in value:
            return [decode(v) for v in value["list"]]
        return {k: decode(v) for k, v in value["dict"].items()}

    built = decode(json.loads(kept["manifest"]))
    if not isinstance(built, ir.Network):
        raise ValueError("an entry that holds no network")
    return built


def _built(cls: type, fields: dict):
    """An instance of ``cls`` with ``fields`` set as they were stored: its checks ran when the
    network was first made (a Network's own would run the network again), as unpickling skips them."""
    made = object.__new__(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    if set(fields) != names:
        raise ValueError(f"an entry's {cls.__name__} with other fields")
    for name, value in fields.items():
        object.__setattr__(made, name, value)
    return made
