"""Gradient stability beyond the linear region: how far the saliency map moves within a ball.

Inside x's linear region every gradient is constant, so the saliency map g(x) = ∇ₓ(w·f)(x) (w:
the target, a class's logit or a margin) is certified unchanged within ε̂. For the ball B a user
fears (ℓ∞ 8/255 is the usual; ℓ2 too), lrcert reports per input, for the distortion
Δ(x') = ‖g(x') − g(x)‖ (ℓ1 by default, as the paper measured it):

- **certified**: ε̂ in the ball's norm, below which Δ is exactly 0, and whether ε is inside it;
- **expected**: E[Δ] over x' uniform in B, from seeded samples, with its standard error, the share
  of samples in x's own region and the number of regions they meet (:mod:`.expected`);
- **max_found**: the largest Δ a search finds within a budget of passes, and the point attaining
  it: a lower bound on max over B of Δ (:mod:`.search`);
- **max_bound**: a certified upper bound on that maximum, from interval bounds on which units can
  change and interval arithmetic on the Jacobian; 0 where no unit can, flagged where vacuous
  (:mod:`.bound`).

The stages: :mod:`.ball` (sampling and projecting), :mod:`.saliency` (batched gradients and
patterns), then the three measures, and :mod:`.analysis`, which runs a batch through all of them.
Lee, Alvarez-Melis & Jaakkola (ICLR 2019), section 6.3: the gradient distortion of their image
experiment, its expectation by sampling and its maximum by a genetic algorithm.

The package itself is callable: ``lrcert.stability(model, x, eps=8/255)`` (:func:`.api.analyse`).

May import: :mod:`lrcert.engine`, :mod:`lrcert.models`, :mod:`lrcert.network`, :mod:`lrcert.data`,
:mod:`lrcert.runtime`, :mod:`lrcert.errors`.
"""

import sys
import types

from .analysis import Stability
from .api import analyse
from .ball import Ball, parse_eps, parse_norm
from .result import StabilityResult

__all__ = ["Stability", "StabilityResult", "Ball", "analyse", "parse_eps", "parse_norm"]


class _Stage(types.ModuleType):
    """This package, callable: ``lrcert.stability(model, x, eps=…)`` is :func:`.api.analyse`."""

    def __call__(self, model, x, **options):
        return analyse(model, x, **options)


sys.modules[__name__].__class__ = _Stage
