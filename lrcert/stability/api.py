"""``lrcert.stability(model, x, eps=…)``: the analysis as a library call, for a model file, an
``nn.Module`` or a layer list, rows or sequences of different lengths."""

from __future__ import annotations

import numpy as np
import torch

from ..models.load import from_module, load
from ..network.ir import Network
from ..runtime import devices


def analyse(model, x, *, eps, norm: str = "linf", box=None, samples: int = 1000, budget: int = 400,
               target="predicted", distortion: str = "1", relative: bool = False, labels=None, seed: int = 0,
               dtype="auto", device=None, guarantee=1e-12, threads: int | None = None):
    """How far each row's saliency map can move within the ball of radius ``eps`` (``norm`` "linf"
    or "l2", inside ``box`` (lo, hi) where given): one :class:`lrcert.stability.StabilityResult`
    per row, with ε̂ (Δ ≡ 0 within it), the expected distortion over ``samples`` draws, the largest a
    search of ``budget`` passes finds (and where), and a certified bound on the largest.

    ``model``: a :class:`Network`, an ``nn.Module`` or a model file; ``x``: rows (N, *row shape), or
    a list of sequences of different lengths for a recurrent model (each analysed at its own length).
    ``target``: "predicted", "label" (with ``labels``), "margin" or a class number; ``distortion``:
    the norm of Δ, "1", "2" or "inf"; ``relative``: Δ / ‖∇f(x)‖.

    >>> import torch, lrcert
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> results = lrcert.stability(model, torch.rand(2, 4), eps=0.5, samples=100, budget=50)
    >>> r = results[0]
    >>> r.max_found <= r.max_bound and (r.max_bound == 0) == (r.free == 0 or r.inside)
    True
    """
    from .analysis import Stability

    options = dict(eps=eps, norm=norm, box=box, samples=samples, budget=budget, target=target, distortion=distortion,
                   relative=relative, seed=seed, dtype=dtype, guarantee=guarantee, threads=threads)
    sequences = isinstance(x, (list, tuple)) and len({np.shape(r) for r in x}) > 1
    rows = [devices.as_tensor(r) for r in x] if sequences else [devices.as_tensor(x)]
    where = devices.resolve(device, like=rows[0])

    def network(shape):
        if isinstance(model, Network):
            return model
        return from_module(model, shape) if isinstance(model, torch.nn.Module) else load(model, sample_shape=shape)

    groups = {}
    for k, row in enumerate(rows if sequences else rows[0]):
        groups.setdefault(tuple(row.shape) if sequences else (), []).append(k)
    out = [None] * (len(rows) if sequences else len(rows[0]))
    for shape, members in groups.items():
        batch = torch.stack([rows[k] for k in members]) if sequences else rows[0][members]
        analysis = Stability(network(tuple(batch.shape[1:])), device=where, **options)
        analysis.run_size = len(out)
        given = None if labels is None else devices.as_tensor(np.asarray(labels))[members]
        for k, result in zip(members, analysis.run(batch, given, numbers=members)):
            result.length = len(rows[k]) if sequences else None
            out[k] = result
    return out
