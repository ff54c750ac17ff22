"""Pictures of linear regions: a plane through the input space, every region in it coloured.

A plane is ``origin + a·u + b·v``. Its pixels are labelled by activation pattern
(``regions.evaluate``): one colour per region, black where neighbouring pixels differ. The
certified ℓp ball of a point c in the plane is drawn as its true cross-section: along the plane
direction w(θ) = cos θ·u + sin θ·v the ball reaches r(θ) = ε̂ₚ / ‖w(θ)‖ₚ. Needs matplotlib
(``pip install -e ".[plot]"`` in lrcert's clone, or matplotlib itself); draws headless (Agg).

>>> import torch
>>> from lrcert.models.load import from_module
>>> _ = torch.manual_seed(0)
>>> net = from_module(torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)), (2,))
>>> view = picture(net, make_plane(net, None, [], "random", 1.0), None, [], resolution=32)
>>> view.regions.shape, int(view.regions.max()) + 1 <= 2 ** 8
((32, 32), True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..engine import NORMS, certify
from ..errors import LrcertError
from ..network import ir
from ..runtime import devices
from .regions import evaluate

BALL_STYLE = {"l1": ("-", "tab:red"), "l2": ("-", "tab:purple"), "linf": ("--", "tab:orange")}
#: A view whose pixels are more than this share boundary ink shows no regions, only ink: the
#: command line then zooms to the point's own neighbourhood (unless --extent says otherwise).
TOO_FINE = 0.5
#: Text over pictures: on a white box, legible over any region colour and over boundary ink.
LABEL_BOX = {"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.85}
ORDER = {"l1": 1.0, "l2": 2.0, "linf": math.inf}


@dataclass
class Plane:
    """``origin + a·u + b·v`` for a, b in ``[-extent, extent]`` around ``centre`` (plane coordinates)."""

    origin: Tensor  # flat, input space
    u: Tensor
    v: Tensor
    centre: tuple[float, float]
    extent: float
    axes: tuple[str, str]
    marks: dict[int, tuple[float, float]] = field(default_factory=dict)  # inputs to mark (a toward: target)

    def points(self, coords: np.ndarray) -> Tensor:
        """Input-space points of plane coordinates ``coords`` (N, 2)."""
        c = torch.from_numpy(coords).to(self.u.dtype)
        return self.origin + c[:, :1] * self.u + c[:, 1:] * self.v

    def coordinates(self, x: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Plane coordinates of input-space points, and their distance from the plane."""
        basis = torch.stack([self.u, self.v], dim=1)  # (D, 2)
        offset = x.reshape(len(x), -1).to(basis.dtype) - self.origin
        coords = torch.linalg.lstsq(basis, offset.T).solution.T
        residual = (offset - coords @ basis.T).norm(dim=1)
        return coords.numpy(), residual.numpy()


@dataclass
class Picture:
    """Everything drawn, so that tests can check it: the pixel grid's region labels, the balls."""

    plane: Plane
    grid: np.ndarray  # (n, n, 2) plane coordinates of the pixel centres
    regions: np.ndarray  # (n, n) region label per pixel
    classes: np.ndarray  # (n, n) predicted class per pixel
    balls: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # point → norm → (K, 2) outline
    radii: dict[int, dict[str, float]] = field(default_factory=dict)
    colours: np.ndarray | None = None  # (regions, 3) RGB per region label
    known: dict[bytes, int] = field(default_factory=dict)  # activation pattern → region label (the zoom shares it)
    zoom: "Picture | None" = None  # the neighbourhood of the first point, where its balls are visible
    off_plane: dict[int, float] = field(default_factory=dict)  # chosen points not in the plane: their distance

    def boundary_share(self) -> float:
        """The share of pixels that are boundary ink (a neighbour in another region)."""
        return float(_edges(self.regions).mean())


def orthonormal(first: Tensor, second: Tensor) -> tuple[Tensor, Tensor]:
    """Gram–Schmidt: u along ``first``, v the part of ``second`` orthogonal to it, both unit."""
    u = first / first.norm()
    v = second - (second @ u) * u
    if first.norm() == 0 or v.norm() < 1e-12 * max(1.0, float(second.norm())):
        raise LrcertError("the two plane directions are zero or parallel", fix="give two independent directions")
    return u, v / v.norm()


def make_plane(
    network: ir.Network, data: Tensor | None, points: Sequence[int], dirs: str, extent: float | None, seed: int = 0
) -> Plane:
    """The plane to draw: the input plane itself for 2-D inputs, else through ``data[points[0]]``."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    D = network.input_size
    if D == 2 and dirs == "random":
        unit = torch.eye(2, dtype=torch.float64, device="cpu")
        if data is not None and len(data):
            flat = data.reshape(len(data), 2).double()
            low, high = flat.min(0).values, flat.max(0).values
            centre, half = (low + high) / 2, float((high - low).max()) / 2 * 1.15 + 1e-9
        else:
            centre, half = torch.zeros(2, dtype=torch.float64, device="cpu"), 1.0
        return Plane(torch.zeros(2, dtype=torch.float64, device="cpu"), unit[0], unit[1], tuple(centre.tolist()), extent or half, ("x₁", "x₂"))
    if data is None or not points:
        raise LrcertError(
            f"the model's input has {D} dimensions: the plane goes through an input",
            fix="give --data X.npy and --points i (the plane passes through input i)",
        )
    x = data[points[0]].reshape(-1).double()
    random = torch.randn(D, dtype=torch.float64, generator=generator, device="cpu")
    other = torch.randn(D, dtype=torch.float64, generator=generator, device="cpu")
    if dirs == "random":
        u, v = orthonormal(random, other)
        names = ("random direction 1", "random direction 2")
    elif dirs.startswith("toward:"):
        target = _index(dirs.split(":", 1)[1], len(data))
        distance = float((data[target].reshape(-1).double() - x).norm())
        u, v = orthonormal(data[target].reshape(-1).double() - x, random)
        names = (f"toward input {target}", "random direction")
        extent = extent or 1.3 * distance
        return Plane(x, u, v, (0.0, 0.0), extent, (f"along {names[0]}", f"along {names[1]}"), {target: (distance, 0.0)})
    elif dirs == "gradient":
        u, v = orthonormal(_logit_gradient(network, x), random)
        names = ("gradient of the predicted logit", "random direction")
    else:
        u, v = _directions_from_file(dirs, D)
        names = (f"{Path(dirs).name}[0]", f"{Path(dirs).name}[1] (orthogonalised)")
    if extent is None:
        extent = neighbourhood(network, x, u, v)
    return Plane(x, u, v, (0.0, 0.0), extent, (f"along {names[0]}", f"along {names[1]}"))


def neighbourhood(network: ir.Network, x: Tensor, u: Tensor, v: Tensor) -> float:
    """A view's half-width where x's own region and its neighbours show: 3× how far x's region
    reaches in the plane."""
    return 3 * _reach_in_plane(network, x, u, v)


def _reach_in_plane(network: ir.Network, x: Tensor, u: Tensor, v: Tensor, rays: int = 16) -> float:
    """How far x's region reaches within the plane: the median over ``rays`` in-plane directions
    of the exact directional radius (1 when the region is unbounded in the plane)."""
    angles = torch.linspace(0, 2 * math.pi, rays + 1, dtype=torch.float64, device=u.device)[:-1, None]
    directions = (angles.cos() * u + angles.sin() * v).reshape(rays, *network.sample_shape)
    starts = x.reshape(1, *network.sample_shape).expand(rays, *network.sample_shape)
    results = certify(network, starts, norms=("linf",), directions=directions, dtype=torch.float64, predictions=False)
    reach = [r.direction for r in results if r.direction is not None and 0 < r.direction < math.inf]
    return float(np.median(reach)) if reach else 1.0


def _index(text: str, count: int) -> int:
    try:
        index = int(text)
    except ValueError:
        index = -1
    if not 0 <= index < count:
        raise LrcertError(f"input index {text!r} is not in 0..{count - 1}", fix=f"pick an index below {count}")
    return index


def _logit_gradient(network: ir.Network, x: Tensor) -> Tensor:
    point = x.reshape(1, *network.sample_shape).to(network.device, network.dtype).requires_grad_(True)
    with devices.exact_float32():
        logits = network.run(point).reshape(-1)
        (gradient,) = torch.autograd.grad(logits[logits.argmax()], point)
    return gradient.reshape(-1).to(x.device, x.dtype)


def _directions_from_file(path: str, D: int) -> tuple[Tensor, Tensor]:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise LrcertError(f"cannot read --dirs {path} ({exc})", fix="give an .npy of shape (2, *input shape)") from None
    if array.dtype.kind not in "fiu" or len(array) != 2 or array[0].size != D or not np.isfinite(array).all():
        raise LrcertError(
            f"--dirs {path} holds {array.dtype} {array.shape}; two finite directions of {D} elements are needed",
            fix="give an .npy of shape (2, *input shape)",
        )
    flat = torch.from_numpy(array.reshape(2, D).astype(np.float64))
    return orthonormal(flat[0], flat[1])


def ball_outline(plane: Plane, centre: np.ndarray, radius: float, p: str, samples: int = 721) -> np.ndarray:
    """The ℓp ball's cross-section in the plane: r(θ) = ε̂ / ‖cos θ·u + sin θ·v‖ₚ, as (K, 2)."""
    theta = np.linspace(0, 2 * np.pi, samples)
    directions = torch.from_numpy(np.stack([np.cos(theta), np.sin(theta)], 1))
    reach = (directions[:, :1] * plane.u + directions[:, 1:] * plane.v).norm(p=ORDER[p], dim=1).numpy()
    return centre + (radius / reach)[:, None] * directions.numpy()


def picture(
    network: ir.Network, plane: Plane, data: Tensor | None, points: Sequence[int], resolution: int = 400, zoom: bool = True,
    known: dict[bytes, int] | None = None,
) -> Picture:
    """Label every pixel of the plane and outline the balls of ``points`` that lie in it; with
    ``zoom``, also the neighbourhood of the first such point, 1.6× as wide as its widest ball,
    where a region keeps its label, so its colour (``known``: the labels of patterns seen)."""
    axis = np.linspace(-plane.extent, plane.extent, resolution)
    grid = np.stack(np.meshgrid(axis + plane.centre[0], axis + plane.centre[1]), axis=-1)  # (n, n, 2): [row=b, col=a]
    flat = plane.points(grid.reshape(-1, 2))
    known = {} if known is None else known
    labels, outputs = evaluate(network, flat, known)
    regions = labels.reshape(resolution, resolution)
    classes = (outputs.argmax(1) if outputs.shape[1] > 1 else (outputs[:, 0] > 0).long()).numpy().reshape(resolution, resolution)
    result = Picture(plane, grid, regions, classes, colours=_colours(len(known)), known=known)
    if data is None or not points:
        return result
    chosen = data[list(points)].double()
    coords, residual = plane.coordinates(chosen)
    results = certify(network, chosen, norms=NORMS, dtype=torch.float64, predictions=False)
    for k, index in enumerate(points):
        result.radii[index] = dict(results[k].radius)
        if residual[k] <= 1e-9 * max(1.0, float(chosen[k].norm())):  # only points in the plane have a ball in it
            result.balls[index] = {
                p: ball_outline(plane, coords[k], r, p) for p, r in results[k].radius.items() if math.isfinite(r)
            }
        else:
            result.off_plane[index] = float(residual[k])
    first = next(iter(result.balls), None)
    if zoom and first is not None and result.balls[first]:
        centre = coords[list(points).index(first)]
        reach = max(float(np.abs(outline - centre).max()) for outline in result.balls[first].values())
        close = replace(plane, centre=tuple(centre), extent=1.6 * reach if reach > 0 else 1e-6)
        result.zoom = picture(network, close, data, [first], resolution // 2, zoom=False, known=dict(known))
    return result


def _colours(count: int) -> np.ndarray:
    """A distinct, light colour per region (golden-ratio hues)."""
    import colorsys

    hues = (np.arange(count) * 0.618033988749895) % 1.0
    return np.array([colorsys.hsv_to_rgb(h, 0.35 + 0.25 * ((i * 7) % 3) / 2, 0.95) for i, h in enumerate(hues)])


def pyplot():
    """matplotlib's pyplot on the headless Agg backend, or a clear error when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        raise LrcertError("drawing needs matplotlib, which is not installed", fix="pip install matplotlib (in lrcert's clone: pip install -e '.[plot]')") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw(result: Picture, data: Tensor | None, labels: np.ndarray | None, title: str, out: Path) -> None:
    """Render ``result`` to ``out`` (.png or .svg)."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7.5, 7))
    draw_on(axes, result, data, labels, title)
    save(figure, out)


def save(figure, out: Path) -> None:
    """Write ``figure`` atomically, in the format ``out``'s suffix names."""
    from ..data.arrays import written_atomically

    figure.tight_layout()
    with written_atomically(out) as tmp:
        figure.savefig(tmp, dpi=110, format=out.suffix[1:])
    pyplot().close(figure)


def draw_on(axes, result: Picture, data: Tensor | None, labels: np.ndarray | None, title: str) -> None:
    """Regions, boundaries, decision boundary, data, balls (with a zoomed inset) and a legend."""
    from matplotlib.lines import Line2D

    plane, regions = result.plane, result.regions
    _regions_and_balls(axes, result)
    handles = [Line2D([], [], color="0.15", lw=1, label=f"region boundaries ({int(regions.max()) + 1} regions in view)")]
    if result.classes.max() > result.classes.min():
        axes.contour(result.grid[..., 0], result.grid[..., 1], result.classes,
                     levels=np.arange(result.classes.min(), result.classes.max()) + 0.5, colors="blue", linewidths=2)
        handles.append(Line2D([], [], color="blue", lw=2, label="decision boundary"))
    if data is not None and plane.u.numel() == 2:
        coords, _ = plane.coordinates(data.double())
        axes.scatter(coords[:, 0], coords[:, 1], c=labels if labels is not None else "k", cmap="coolwarm", s=9,
                     edgecolors="k", linewidths=0.3, zorder=3)
        handles.append(Line2D([], [], marker="o", ls="", color="0.4", label="data"))
    if result.zoom is not None:
        inset = axes.inset_axes([0.015, 0.015, 0.38, 0.38])
        _regions_and_balls(inset, result.zoom)
        inset.set_xticks([])
        inset.set_yticks([])
        inset.text(0.03, 0.97, f"zoom: input {next(iter(result.zoom.balls))}, ±{result.zoom.plane.extent:.2g}",
                   transform=inset.transAxes, va="top", fontsize=7, bbox=LABEL_BOX, zorder=6)
        axes.indicate_inset_zoom(inset, edgecolor="black")
    _marks(axes, result)
    for p, (style, colour) in BALL_STYLE.items():
        if any(p in outlines for outlines in result.balls.values()):
            handles.append(Line2D([], [], ls=style, color=colour, lw=1.6, label=f"certified ℓ{p[1:] if p != 'linf' else '∞'} ball"))
    axes.set_xlabel(plane.axes[0])
    axes.set_ylabel(plane.axes[1])
    axes.set_title(title, fontsize=9)
    axes.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.9)


def _marks(axes, result: Picture) -> None:
    """Each chosen point's index beside its star, and the inputs the plane was built toward (a
    triangle; an arrow at the edge where it lies outside the view)."""
    for index, outlines in result.balls.items():
        if outlines:
            centre = outlines[next(iter(outlines))].mean(axis=0)
            axes.annotate(f"input {index}", centre, xytext=(6, 6), textcoords="offset points", fontsize=8,
                          bbox=LABEL_BOX, zorder=6)
    plane = result.plane
    (lo_a, lo_b), (hi_a, hi_b) = result.grid[0, 0], result.grid[-1, -1]
    for index, (a, b) in plane.marks.items():
        if lo_a <= a <= hi_a and lo_b <= b <= hi_b:
            axes.plot(a, b, "k^", ms=9, zorder=5)
            axes.annotate(f"input {index}", (a, b), xytext=(6, 6), textcoords="offset points", fontsize=8,
                          bbox=LABEL_BOX, zorder=6)
        else:  # outside the view: an arrow to the edge on its side
            edge = (min(max(a, lo_a), hi_a), min(max(b, lo_b), hi_b))
            axes.annotate(f"input {index}: {a:.3g} along this axis", edge, xytext=(-130, 24), textcoords="offset points",
                          fontsize=8, bbox=LABEL_BOX, zorder=6, arrowprops={"arrowstyle": "->", "color": "black"})


def _edges(regions: np.ndarray) -> np.ndarray:
    """Pixels with a neighbour (left or below) in another region."""
    edges = np.zeros(regions.shape, bool)
    edges[:, 1:] |= regions[:, 1:] != regions[:, :-1]
    edges[1:, :] |= regions[1:, :] != regions[:-1, :]
    return edges


def _regions_and_balls(axes, result: Picture) -> None:
    """The coloured regions with dark boundaries, and the balls with a star at each centre."""
    regions = result.regions
    image = result.colours[regions]
    image[_edges(regions)] = 0.15
    (lo_a, lo_b), (hi_a, hi_b) = result.grid[0, 0], result.grid[-1, -1]
    axes.imshow(image, origin="lower", extent=(lo_a, hi_a, lo_b, hi_b), interpolation="nearest")
    for outlines in result.balls.values():
        for p, outline in outlines.items():
            style, colour = BALL_STYLE[p]
            axes.plot(outline[:, 0], outline[:, 1], style, color=colour, lw=1.6, zorder=4)
        axes.plot(*outlines[next(iter(outlines))].mean(axis=0), "k*", ms=9, zorder=5)
    axes.set_xlim(lo_a, hi_a)
    axes.set_ylim(lo_b, hi_b)
