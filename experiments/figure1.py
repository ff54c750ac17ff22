"""The paper's Figure 1: linear regions of the toy 2-D nets, vanilla and ROLL, side by side.

    python experiments/figure1.py        # writes docs/figure1.png (about 10 s)

The models are models/toy2d_vanilla.onnx and models/toy2d_roll.onnx (made by
models/make_models.py with lrcert.training.train); the points are models/toy2d.inputs.npy, coloured by
their labels; the certified l1/l2/linf balls of held-out point 0 are drawn in the zoomed insets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lrcert.models.load import load
from lrcert.results.plot import draw_on, make_plane, picture, pyplot, save
from lrcert.results.report import radii_text

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


def main() -> None:
    data = torch.from_numpy(np.load(MODELS / "toy2d.inputs.npy")).double()
    labels = np.load(MODELS / "toy2d.labels.npy")
    plt = pyplot()
    figure, panels = plt.subplots(1, 2, figsize=(14, 7))
    for axes, name in zip(panels, ("vanilla", "roll")):
        network = load(MODELS / f"toy2d_{name}.onnx")
        result = picture(network, make_plane(network, data, [0], "random", None), data, [0], resolution=500)
        title = (f"{'Vanilla' if name == 'vanilla' else 'ROLL (λ = 1, C = 1)'}: {int(result.regions.max()) + 1} regions; "
                 f"point 0: {radii_text(result.radii[0])}")
        draw_on(axes, result, data, labels, title)
    out = ROOT / "docs" / "figure1.png"
    save(figure, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
