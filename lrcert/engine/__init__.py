"""Exact linear-region radii: ε̂(x, p) = min over faces |z(x)| / ‖∇ₓz(x)‖_q, with 1/p + 1/q = 1.

For a batch of inputs the engine

1. evaluates the network once, recording every face value z: each ReLU/LeakyReLU unit's
   pre-activation, and for each max-pool window the gaps ``z_win − z_l`` to its arg-max
   (:mod:`.region`);
2. finds, per input, the faces that can bind: deterministic bounds on their gradient norms
   (:mod:`.screen`) or, where those are loose and D is large, random sketches with a computed
   failure probability δ (:mod:`.sketch`); those faces get exact gradients (reverse passes);
3. otherwise freezes the activation pattern and pushes tangents through the frozen, bias-free
   network (:mod:`.tangents`): starting from the identity over the input's D coordinates, each
   layer's tangent is that layer's Jacobian, and every face gradient g = ∇ₓz comes out of one
   batched pass per chunk; ‖g‖₂², ‖g‖₁ and ‖g‖∞ are accumulated per face (:mod:`.norms`) over
   chunks of directions cut to fit memory (:mod:`.plan`), and float32 rounding is bounded
   (:mod:`.precision`);
4. adds the prediction radius (:mod:`.prediction`) and assembles each batch's results as batched
   tensors on the device, moved to the host together, once per batch (:mod:`.results`): on a
   GPU there is no synchronisation per input. A binding face within rounding reach of 0 a priori
   is judged again by a bound on the rounding actually done (:mod:`.roundoff`) and, where that
   cannot clear it, by its exact value recomputed with a rigorous bound (:mod:`.compensated`)
   before it is flagged.

Rows of different lengths (sequences, for a recurrent network) are certified each with the
network unrolled to its own length, one engine per length (:mod:`.lengths`).

Rules (DESIGN.md): g = 0 is not a face (it never changes in the region); z = 0 with g ≠ 0 gives
ε̂ = 0 (the input sits on a boundary); no face at all gives ε̂ = +∞. Float32 is true float32
(:func:`lrcert.runtime.devices.exact_float32`: no TF32 while the engine computes).

May import: :mod:`lrcert.network`, :mod:`lrcert.data`, :mod:`lrcert.runtime`, :mod:`lrcert.errors`.

>>> import torch
>>> from lrcert.models.load import from_module
>>> net = from_module(torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.ReLU()), (2,))
>>> layer = net.layers[1]
>>> layer.weight.copy_(torch.tensor([[3.0, 4.0]])); layer.bias.fill_(-5.0)  # doctest: +ELLIPSIS
tensor(...)
>>> result = certify(net, torch.tensor([[0.0, 0.0]]))[0]
>>> {p: round(r, 6) for p, r in result.radius.items()}  # |−5| / ‖(3, 4)‖_q
{'l1': 1.25, 'l2': 1.0, 'linf': 0.714286}
"""

from .core import NORMS, Engine, certify
from .lengths import ByLength
from .results import Constraint, InputResult, pattern_bytes

__all__ = ["NORMS", "Engine", "ByLength", "certify", "Constraint", "InputResult", "pattern_bytes"]
