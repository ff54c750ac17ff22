"""One self-contained HTML page about a stability run: the run, the summary (the paper's P25/P50/P75
columns), Δ's distribution over each input's samples, and for the inputs whose saliency moved most
the figure the paper draws for its image experiment: the input, the worst point found, the saliency
map at each, and their difference.

Inline SVG and PNG only (:func:`lrcert.results.html_report.png`), no script: open it anywhere.

>>> page = render({"model": {"path": "m.onnx"}, "options": {"eps": 0.03, "norm": "linf"}},
...     [{"index": 0, "target": {"class": 1}, "certified": {"radius": 0.001, "inside": False, "delta": 0.0},
...       "expected": {"mean": 0.5, "stderr": 0.01, "own_region": 0.0, "regions": 9, "samples": 10,
...                    "quantiles": {"min": 0.1, "p5": 0.1, "p25": 0.3, "p50": 0.5, "p75": 0.7, "p95": 0.9, "max": 1.0}},
...       "max_found": {"value": 1.5, "passes": 400}, "max_bound": {"value": 4.0, "vacuous": False,
...       "free_units": 3, "units": 10, "by": "intervals"}}], {})
>>> page.startswith("<!DOCTYPE html>") and "<script" not in page
True
"""

from __future__ import annotations

import html
from typing import Sequence

import numpy as np

from .html_report import STYLE, _img, _num, _pixels, image_shaped  # noqa: F401  (image_shaped: the callers' test)
from .stability import MEASURES, summary

#: How many inputs the page pictures: those with the largest distortion found.
PICTURED = 8


def render(run: dict, records: Sequence[dict], pictures: dict[int, dict[str, np.ndarray]]) -> str:
    """The page. ``run``: the JSON document's ``model``, ``options``, ``run`` (and ``notes``);
    ``pictures``: input index → {"input", "worst", "saliency", "worst_saliency"} arrays."""
    model, options = run.get("model") or {}, run.get("options") or {}
    title = f"lrcert stability — {html.escape(str(model.get('path', 'results')).rsplit('/', 1)[-1])}"
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{title}</title><style>{STYLE}</style></head><body>", f"<h1>{title}</h1>",
             '<p class="muted">Δ(x\') = ‖∇f(x\') − ∇f(x)‖: how far the saliency map moves when the input moves to x\' in '
             "the ball. It is exactly 0 within ε̂ (the input's linear region). E[Δ]: its mean over samples of the ball; "
             "max found: the largest a search found (a lower bound on the largest); max bound: a certified upper bound.</p>",
             _run_section(run, options, records), _summary_section(records), _worst_section(records, pictures),
             "</body></html>"]
    return "\n".join(parts) + "\n"


def _run_section(run: dict, options: dict, records: Sequence[dict]) -> str:
    model, facts = run.get("model") or {}, run.get("run") or {}
    norm = {"linf": "ℓ∞", "l2": "ℓ2"}.get(options.get("norm"), options.get("norm"))
    rows = [("model", model.get("path")), ("data", options.get("data")), ("inputs", len(records)),
            ("ball", f"{norm}, radius {options.get('eps_text') or options.get('eps')}" if options.get("eps") else None),
            ("box", f"[{options['box'][0]:g}, {options['box'][1]:g}]" if options.get("box") else None),
            ("target", options.get("target")), ("distortion norm", options.get("distortion_norm")),
            ("relative", "Δ / ‖∇f(x)‖" if options.get("relative") else None),
            ("samples / search budget", f"{options.get('samples')} / {options.get('budget')} passes" if options.get("samples") else None),
            ("dtype of samples and search", options.get("dtype")), ("seed", options.get("seed")),
            ("time", f"{facts['seconds']:.2f} s" if facts.get("seconds") is not None else None), ("date", facts.get("date"))]
    body = "".join(f'<tr><th class="text">{k}</th><td class="text">{html.escape(str(v))}</td></tr>' for k, v in rows if v is not None)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in run.get("notes") or [])
    return f"<h2>The run</h2><table>{body}</table>" + (f"<ul class='muted'>{notes}</ul>" if notes else "")


def _summary_section(records: Sequence[dict]) -> str:
    totals = summary(records)
    head = "<tr><th class='text'></th><th>P25</th><th>P50</th><th>P75</th></tr>"
    rows = "".join(f"<tr><td class='text'>{name}</td>" + "".join(f"<td>{_num(totals[name][q])}</td>" for q in ("p25", "p50", "p75"))
                   + "</tr>" for name, _ in MEASURES)
    counts = (f"<p>{totals['inside']} of {totals['inputs']} inputs have the whole ball inside their linear region "
              f"(Δ ≡ 0); the bound is vacuous for {totals['vacuous']}.</p>")
    return f"<h2>Summary</h2><table>{head}{rows}</table>{counts}"


def _worst_section(records: Sequence[dict], pictures: dict[int, dict[str, np.ndarray]]) -> str:
    """The inputs whose saliency moved most: their figures and Δ's spread over their samples."""
    chosen = sorted(records, key=lambda r: -r["max_found"]["value"])[:PICTURED]
    head = ("<tr><th>input</th><th>target</th><th>ε̂</th><th>E[Δ]</th><th>max found</th><th>max bound</th>"
            "<th class='text'>Δ over the samples</th></tr>")
    rows = []
    for r in chosen:
        bound = r["max_bound"]
        shown = "vacuous" if bound["vacuous"] else _num(bound["value"])
        figure = _figure(pictures[r["index"]]) if r["index"] in pictures else ""
        rows.append(f"<tr><td>{r['index']}</td><td>{r['target']['class']}</td><td>{_num(r['certified']['radius'])}</td>"
                    f"<td>{_num(r['expected']['mean'])}</td><td>{_num(r['max_found']['value'])}</td><td>{shown}</td>"
                    f"<td class='text'>{_spread(r)}</td></tr>")
        if figure:
            rows.append(f"<tr><td></td><td class='text' colspan='6'>{figure}<br><span class='muted'>input · worst x' · "
                        "saliency at x · saliency at x' · difference</span></td></tr>")
    return ("<h2>Where the saliency moved most</h2><p class='muted'>The box spans P25–P75 of Δ over the input's samples, "
            "the whiskers P5–P95, the dot the mean; the red bar is the largest Δ found, on the same scale. Saliency maps: "
            "|∇f| summed over channels (one grey scale for both); difference ∇f(x') − ∇f(x): blue negative, red positive."
            f"</p><table>{head}{''.join(rows)}</table>")


def _spread(record: dict, width: int = 220, height: int = 28) -> str:
    """A box plot of the input's Δ over its samples, with the largest found."""
    q, found = record["expected"].get("quantiles") or {}, record["max_found"]["value"]
    top = max(found, q.get("max", 0.0)) or 1.0
    x = lambda v: 4 + (width - 8) * v / top  # noqa: E731
    if not q:
        return ""
    shapes = [f'<line x1="{x(q["p5"]):.1f}" y1="14" x2="{x(q["p95"]):.1f}" y2="14" stroke="#555"/>',
              f'<rect x="{x(q["p25"]):.1f}" y="7" width="{max(1.0, x(q["p75"]) - x(q["p25"])):.1f}" height="14" fill="#4c78a8"/>',
              f'<circle cx="{x(record["expected"]["mean"]):.1f}" cy="14" r="3" fill="#222"/>',
              f'<rect x="{x(found) - 1:.1f}" y="3" width="2" height="22" fill="#d62728"><title>max found {found:.3g}</title></rect>']
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
            f'aria-label="distribution of the distortion">{"".join(shapes)}</svg>')


def _figure(arrays: dict[str, np.ndarray]) -> str:
    """The input and its worst point (one scale), the saliency at each (one scale), their difference."""
    x, worst = arrays["input"], arrays["worst"]
    low, high = float(min(x.min(), worst.min())), float(max(x.max(), worst.max()))
    before, after = (np.abs(arrays[k].reshape(x.shape)) for k in ("saliency", "worst_saliency"))
    if before.ndim == 3:
        before, after = before.sum(axis=0), after.sum(axis=0)
    scale = float(max(before.max(), after.max())) or 1.0
    change = (arrays["worst_saliency"] - arrays["saliency"]).reshape(x.shape)
    change = change.sum(axis=0) if change.ndim == 3 else change
    return " ".join([_img(_pixels(x, low, high)), _img(_pixels(worst, low, high)), _img(_pixels(before, 0, scale)),
                     _img(_pixels(after, 0, scale)), _img(_diverging(change))])


def _diverging(values: np.ndarray) -> np.ndarray:
    """Signed values as RGB: white at 0, red positive, blue negative, one scale."""
    reach = float(np.max(np.abs(values))) or 1.0
    t = np.clip(values / reach, -1, 1)
    red = np.where(t < 0, 1 + t, 1.0)
    blue = np.where(t > 0, 1 - t, 1.0)
    green = 1 - np.abs(t)
    return np.clip(np.round(255 * np.stack([red, green, blue], axis=-1)), 0, 255).astype(np.uint8)


def pictures(results: Sequence, sample_shape: Sequence[int], rows) -> dict[int, dict[str, np.ndarray]]:
    """What the page pictures of the inputs it lists (image-shaped inputs only): from results that
    kept their saliency maps, and ``rows[index]`` the inputs."""
    if not image_shaped(sample_shape):
        return {}
    chosen = sorted(results, key=lambda r: -r.max_found)[:PICTURED]
    return {r.index: {"input": np.asarray(rows[r.index], dtype=np.float64).reshape(sample_shape), "worst": r.worst,
                      "saliency": r.saliency, "worst_saliency": r.worst_saliency}
            for r in chosen if r.saliency is not None}
