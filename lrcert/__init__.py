"""lrcert: exact linear-region radii for piecewise-linear (ReLU) networks.

For an input x, a ReLU network is affine on the set of inputs that share x's activation pattern
(its linear region). lrcert computes, exactly, the radius of the largest l1, l2 and linf ball
around x inside that region, and names the face that binds (Lee, Alvarez-Melis & Jaakkola,
"Towards Robust, Locally Linear Deep Networks", ICLR 2019).

>>> import torch, lrcert
>>> _ = torch.manual_seed(0)
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
>>> results = lrcert.certify(model, torch.randn(5, 4))
>>> len(results), sorted(results[0].radius)
(5, ['l1', 'l2', 'linf'])
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
from typing import Sequence

__version__ = "0.1.0"

from .errors import LrcertError  # noqa: E402

#: The public names and the modules they live in, imported when first used: ``lrcert --version``
#: and ``--help`` (and any command that needs no model) never wait for torch, onnx or onnx2torch.
_LAZY = {"Engine": "engine", "InputResult": "engine", "Constraint": "engine", "NORMS": "engine",
         "Network": "network.ir", "from_module": "models.load", "roll_loss": "training.roll"}


#: The modules of lrcert's flat layout, before the stages became subpackages, and where they are
#: now: ``from lrcert import regions`` and ``import lrcert.load`` still reach them (tools, probes and
#: scripts written against that layout), as the very modules, imported when first asked.
_MOVED = {
    "devices": "runtime.devices", "threads": "runtime.threads", "ranks": "runtime.ranks", "ir": "network.ir",
    "data": "data.arrays", "sources": "data.sources", "load": "models.load", "convert": "models.convert",
    "onnx_ops": "models.onnx_ops", "recurrent": "models.recurrent", "fold": "models.fold", "runner": "run.runner",
    "box": "run.box", "report": "results.report", "html_report": "results.html_report", "runs": "results.runs",
    "compare": "results.compare", "regions": "results.regions", "plot": "results.plot", "checks": "ci.checks",
    "config": "ci.config", "junit": "ci.junit", "limits": "ci.limits", "roll": "training.roll", "train": "training.train",
}


def __getattr__(name: str):
    if name == "stability":  # the stage, a callable module: lrcert.stability(model, x, eps=…)
        return importlib.import_module(".stability", __name__)
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _MOVED and name != "data":  # (lrcert.data is a stage now: its package answers)
        return importlib.import_module(f".{_MOVED[name]}", __name__)
    raise AttributeError(f"module 'lrcert' has no attribute {name!r}")


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import lrcert.regions`` (a module of the flat layout): the module where it lives now,
    under its old name too."""

    def __init__(self):
        self.specs: dict[str, importlib.machinery.ModuleSpec] = {}

    def find_spec(self, name, path=None, target=None):
        package, _, old = name.rpartition(".")
        if package != __name__ or old not in _MOVED or old == "data":
            return None
        return importlib.util.spec_from_loader(name, self)

    def create_module(self, spec):
        module = importlib.import_module(f"{__name__}.{_MOVED[spec.name.rpartition('.')[2]]}")
        self.specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module) -> None:
        module.__spec__ = self.specs[module.__name__]  # (the import system gave it the old name's spec)


sys.meta_path.append(_MovedModules())


class _Package(types.ModuleType):
    """``lrcert`` itself: ``lrcert.load`` is the function :func:`lrcert.models.load.load`, and stays
    the function when the flat layout's ``lrcert.load`` module is imported (the import system then
    sets the attribute to the module: that is ignored; the module is in ``sys.modules``)."""

    @property
    def load(self):
        from .models.load import load

        return load

    @load.setter
    def load(self, module) -> None:
        pass


sys.modules[__name__].__class__ = _Package


def certify(model, x, *, norms: Sequence[str] = ("l1", "l2", "linf"), directions=None, device=None, dtype=None,
            batch_size=None, screen: bool = True, threads: int | None = None):
    """Certify the rows of ``x`` for ``model``: a :class:`Network`, an ``nn.Module`` or a model file path.

    Computes on ``device`` (default: where ``x`` is; ``"auto"``: a GPU when there is one), in
    ``dtype`` (default ``"auto"``: float64 radii at float32 speed; or torch.float32, torch.float64).
    Returns one :class:`InputResult` per row (radius per norm, binding constraint, prediction).
    ``screen=False`` takes every face's gradient instead of ruling out those that cannot bind
    first (the same radii; see :mod:`lrcert.engine.screen`). ``x`` may also be a list of
    sequences of different lengths, arrays (T_i, *features), for a recurrent model (an
    ``nn.Module`` or a file): each is certified with the model unrolled to its own length.
    ``threads``: CPU threads (default: auto, the CPUs not busy elsewhere; :mod:`lrcert.runtime.threads`).
    """
    import numpy as np
    import torch

    from . import engine
    from .models.load import from_module, load
    from .network.ir import Network
    from .runtime import devices

    if isinstance(x, (list, tuple)) and len({np.shape(r) for r in x}) > 1:
        return _certify_sequences(model, x, norms=norms, directions=directions, device=device, dtype=dtype,
                                  batch_size=batch_size, screen=screen, threads=threads)
    x = devices.as_tensor(x)
    if isinstance(model, torch.nn.Module):
        model = from_module(model, tuple(x.shape[1:]))
    elif not isinstance(model, Network):
        model = load(model, sample_shape=tuple(x.shape[1:]))
    return engine.certify(
        model, x, norms=norms, directions=directions, device=device, dtype=dtype or "auto", batch_size=batch_size,
        screen=screen, threads=threads,
    )


def _certify_sequences(model, rows, *, directions, device, dtype, **options):
    """:func:`certify` of sequences of different lengths (:class:`lrcert.engine.ByLength`)."""
    import torch

    from .engine import ByLength
    from .models.load import from_module, open_model
    from .network.ir import Network
    from .runtime import devices

    first = devices.as_tensor(rows[0])
    features = tuple(first.shape[1:])
    if isinstance(model, torch.nn.Module):
        networks = lambda steps: from_module(model, (steps, *features))  # noqa: E731
    elif isinstance(model, Network):
        networks = lambda steps: model  # noqa: E731  (one length: ByLength refuses the others)
    else:
        opened = open_model(model)
        networks = lambda steps: opened.network((steps, *features))  # noqa: E731
    engine = ByLength(networks, lengths=[len(r) for r in rows], device=devices.resolve(device, like=first),
                      dtype=dtype or "auto", **options)
    return engine.certify(rows, directions=directions)


__all__ = ["certify", "stability", "roll_loss", "load", "from_module", "Engine", "Network", "InputResult", "Constraint", "LrcertError", "NORMS"]
