"""One self-contained HTML page about a certify run: what ran, how the radii are distributed,
per class, where the binding faces sit, and the inputs closest to losing their prediction.

Everything is inline: figures are SVG drawn here, thumbnails base64 PNG encoded here (zlib),
styles in one <style> block; no script, no font, no link leaves the file. Input: the records of
``report.result_record`` (a JSON document's ``results`` or JSON lines), the run's description,
and for image-shaped inputs the pixels of the inputs to picture (and their adversarial points).

>>> page = render({"model": {"path": "m.onnx"}}, [{"index": 0, "prediction": 1,
...     "radius": {"l2": 0.5}, "prediction_radius": {"l2": 0.25}, "certified_radius": {"l2": 0.25},
...     "exact_adversarial": {"l2": True},
...     "rival": {"l2": 0}, "binding": {"l2": {"layer": "relu1"}}, "dtype": "float64"}], {})
>>> page.startswith("<!DOCTYPE html>") and "<script" not in page
True
"""

from __future__ import annotations

import base64
import datetime
import heapq
import html
import math
import struct
import zlib
from collections import Counter, defaultdict
from typing import Callable, Sequence

import numpy as np

from .report import CERTIFIED_LABELS, NORM_LABELS, guarantee_text, label_summary, radii_of

#: How many of the inputs with the smallest radius the page lists (and pictures).
SMALLEST = 10
EPSILON_COLOUR, CERTIFIED_COLOUR = "#4c78a8", "#f58518"

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #222; line-height: 1.4; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5rem 0; font-size: .9rem; }
td, th { padding: .25rem .6rem; border-bottom: 1px solid #eee; text-align: right; vertical-align: middle; white-space: nowrap; }
th { background: #f6f6f6; } td.text, th.text { text-align: left; }
.muted { color: #777; font-size: .85rem; } .figures { display: flex; flex-wrap: wrap; gap: 1rem; }
img.thumb { image-rendering: pixelated; border: 1px solid #ccc; }
.bar { display: inline-block; height: .8rem; background: #4c78a8; vertical-align: middle; }
.key { display: inline-block; width: .8rem; height: .8rem; vertical-align: middle; margin: 0 .3rem 0 .8rem; }
"""


def render(run: dict, records: Sequence[dict], pictures: dict[int, tuple[np.ndarray, np.ndarray | None]]) -> str:
    """The page. ``run``: the JSON document's ``model`` and ``options`` (and ``seconds``, ``date``,
    ``notes`` where known); ``pictures``: input index → (input, adversarial point or None)."""
    norms = [p for p in ("l1", "l2", "linf") if records and p in records[0]["radius"]]
    shown = listed_norm(run, records)
    model = run.get("model") or {}
    title = f"lrcert report — {html.escape(str(model.get('path', 'results')).rsplit('/', 1)[-1])}"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{title}</title><style>{STYLE}</style></head><body>",
        f"<h1>{title}</h1>",
        '<p class="muted">ε̂: radius of the largest ball around the input inside its linear region. '
        "certified = min(ε̂, prediction radius): within it the prediction provably stays the same. "
        "Exact adversarial: the prediction radius is at most ε̂, so it is the exact distance to the "
        "nearest input with another prediction.</p>",
        _run_section(run, records, norms),
        _summary_section(records, norms),
        _histogram_section(records, norms),
        _label_section(records, norms, shown, (run.get("options") or {}).get("classes")),
        _class_section(records, norms),
        _binding_section(records, norms),
        _smallest_section(records, norms, shown, pictures),
        _adversarial_section(records, shown, pictures),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------ sections


def _run_section(run: dict, records: Sequence[dict], norms: Sequence[str]) -> str:
    model, options = run.get("model") or {}, run.get("options") or {}
    dtypes = Counter(r.get("dtype", "?") for r in records)
    rows = [
        ("model", model.get("path")),
        ("sha256", model.get("sha256")),
        ("layers / units", f"{model['layers']} / {model['units']}" if "layers" in model else None),
        ("input shape", "×".join(map(str, model["input_shape"])) if model.get("input_shape") else None),
        ("data", options.get("data")),
        ("inputs", len(records)),
        ("norms", ", ".join(norms)),
        ("dtype", options.get("dtype")),
        ("results exact to", ", ".join(f"{k}: {v}" for k, v in sorted(dtypes.items()))),
        ("guarantee", guarantee_text(len(records), [r["guarantee"] for r in records
                                                    if r.get("guarantee", "deterministic") != "deterministic"])),
        ("sketch", f"{options['sketch_directions']} random directions, seed {options.get('seed')}"
         if options.get("sketch_directions") else None),
        ("normalisation", "(x − mean) / std, mean {mean}, std {std}: radii in the data's units".format(**{
            k: ", ".join(f"{v:g}" for v in values) for k, values in options["normalize"].items()})
         if options.get("normalize") else None),
        ("box", f"prediction radii and adversarial points within [{options['box'][0]:g}, {options['box'][1]:g}] "
                "(where the prediction radius is at most ε̂)" if options.get("box") else None),
        ("accuracy", _accuracy([r for r in records if r.get("label") is not None])),
        ("device", options.get("device")),
        ("time", f"{run['seconds']:.2f} s" if run.get("seconds") is not None else None),
        ("date", run.get("date")),
    ]
    body = "".join(f'<tr><th class="text">{k}</th><td class="text">{_text(v)}</td></tr>' for k, v in rows if v is not None)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in run.get("notes") or [])
    return f"<h2>The run</h2><table>{body}</table>" + (f"<ul class='muted'>{notes}</ul>" if notes else "")


def _accuracy(labelled: Sequence[dict]) -> str | None:
    """How many labelled inputs are predicted as labelled (None: no labels)."""
    if not labelled:
        return None
    correct = sum(r["prediction"] == r["label"] for r in labelled)
    return f"{correct} of {len(labelled)} correct against the labels ({100 * correct / len(labelled):.1f} %)"


def _summary_section(records: Sequence[dict], norms: Sequence[str]) -> str:
    head = "<tr><th class='text'>norm</th><th>median ε̂</th><th>median certified</th><th>min certified</th>" \
           "<th>exact adversarial</th><th>ε̂ = 0</th><th>unbounded</th></tr>"
    rows = []
    for p in norms:
        eps = [radii_of(r, "radius")[p] for r in records]
        cert = _certified(records, p)
        exact = sum(1 for r in records if (r.get("exact_adversarial") or {}).get(p))
        rows.append(
            f"<tr><td class='text'>{NORM_LABELS[p]}</td><td>{_num(_median(eps))}</td><td>{_num(_median(cert))}</td>"
            f"<td>{_num(min(cert, default=math.nan))}</td><td>{exact}</td><td>{sum(e == 0 for e in eps)}</td>"
            f"<td>{sum(math.isinf(e) for e in eps)}</td></tr>"
        )
    return f"<h2>Summary</h2><table>{head}{''.join(rows)}</table>"


def _histogram_section(records: Sequence[dict], norms: Sequence[str]) -> str:
    figures = "".join(
        f"<figure>{_histogram(radii_of_all(records, p), _certified(records, p), NORM_LABELS[p])}</figure>" for p in norms
    )
    legend = (f"<span class='key' style='background:{EPSILON_COLOUR}'></span>ε̂"
              f"<span class='key' style='background:{CERTIFIED_COLOUR}'></span>certified radius")
    return f"<h2>Radii (log scale)</h2><p class='muted'>{legend}</p><div class='figures'>{figures}</div>"


def _label_section(records: Sequence[dict], norms: Sequence[str], p: str, classes: Sequence[str] | None) -> str:
    """Per labelled class: accuracy, and the median ε̂ of its correct and of its wrong predictions
    apart (a region around a misclassified input means something else); empty without labels."""
    labelled = [(r["label"], r.get("prediction"), radii_of(r, "radius")) for r in records if r.get("label") is not None]
    summary = label_summary(labelled, norms, classes)
    if summary is None:
        return ""
    head = (f"<tr><th class='text'>class (label)</th><th>inputs</th><th>correct</th><th>accuracy</th>"
            f"<th>median {NORM_LABELS[p]}, correct</th><th>median {NORM_LABELS[p]}, wrong</th></tr>")
    rows = []
    for entry in [{"class": "all", **summary}, *summary["per_class"]]:
        name = entry["class"] if "name" not in entry else f"{entry['class']} ({entry['name']})"
        medians = [(entry["radius"][which] or {}).get(p, {}) or {} for which in ("correct", "wrong")]
        cells = [entry["inputs"], entry["correct"], f"{100 * entry['accuracy']:.1f} %",
                 *(_num(m.get("p50")) if m else "-" for m in medians)]
        rows.append(f"<tr><td class='text'>{html.escape(str(name))}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<h2>Per class (against the labels)</h2><table>{head}{''.join(rows)}</table>"


def _class_section(records: Sequence[dict], norms: Sequence[str]) -> str:
    by_class: dict = defaultdict(list)
    for r in records:
        by_class[r.get("prediction")].append(r)
    head = "<tr><th class='text'>predicted class</th><th>inputs</th>" + "".join(
        f"<th>median {NORM_LABELS[p]}</th><th>median {CERTIFIED_LABELS[p]}</th>" for p in norms
    ) + "</tr>"
    rows = []
    for label in sorted(by_class, key=lambda c: (c is None, c)):
        group = by_class[label]
        cells = "".join(
            f"<td>{_num(_median(radii_of_all(group, p)))}</td><td>{_num(_median(_certified(group, p)))}</td>" for p in norms
        )
        rows.append(f"<tr><td class='text'>{_text(label if label is not None else '-')}</td><td>{len(group)}</td>{cells}</tr>")
    return f"<h2>Per predicted class</h2><table>{head}{''.join(rows)}</table>"


def _binding_section(records: Sequence[dict], norms: Sequence[str]) -> str:
    counts = {p: Counter((r["binding"].get(p) or {}).get("layer", "(none: unbounded)") for r in records) for p in norms}
    layers = sorted({layer for c in counts.values() for layer in c}, key=lambda layer: -sum(c[layer] for c in counts.values()))
    most = max((c[layer] for c in counts.values() for layer in c), default=1)
    head = "<tr><th class='text'>layer</th>" + "".join(f"<th class='text'>binding for {NORM_LABELS[p]}</th>" for p in norms) + "</tr>"
    rows = []
    for layer in layers:
        cells = "".join(
            f"<td class='text'><span class='bar' style='width:{120 * counts[p][layer] / most:.0f}px'></span> {counts[p][layer]}</td>"
            for p in norms
        )
        rows.append(f"<tr><td class='text'>{html.escape(str(layer))}</td>{cells}</tr>")
    return f"<h2>Where the binding faces sit</h2><table>{head}{''.join(rows)}</table>"


def _smallest_section(records: Sequence[dict], norms: Sequence[str], p: str,
                      pictures: dict[int, tuple[np.ndarray, np.ndarray | None]]) -> str:
    chosen = smallest(records, p)
    pictured = any(index in pictures for index in (r["index"] for r in chosen))
    sourced, labelled = any(r.get("source") for r in chosen), any(r.get("label") is not None for r in chosen)
    head = ("<tr><th>input</th>" + ("<th class='text'>source</th>" if sourced else "")
            + ("<th>label</th><th>correct</th>" if labelled else "") + f"<th>class</th><th>{NORM_LABELS[p]}</th><th>prediction radius</th>"
            f"<th>{CERTIFIED_LABELS[p]}</th><th>exact adversarial</th><th>rival class</th><th class='text'>binding face</th>"
            + ("<th class='text'>input · adversarial point · difference</th>" if pictured else "") + "</tr>")
    rows = []
    for r in chosen:
        predicted = (r.get("prediction_radius") or {}).get(p)
        exact = (r.get("exact_adversarial") or {}).get(p)
        face = r["binding"].get(p) or {}
        where = f"{face.get('layer', '-')} [{','.join(map(str, face.get('position', [])))}]" if face else "none"
        known = [*([_text(r.get("source"))] if sourced else []),
                 *([_text(r.get("label")), _text(r.get("correct"))] if labelled else [])]
        cells = [
            str(r["index"]), *known, _text(r.get("prediction")), _num(radii_of(r, "radius")[p]),
            _num(math.inf if predicted is None and r.get("prediction_radius") else predicted),
            _num(_certified([r], p)[0]), "yes" if exact else "no", _text((r.get("rival") or {}).get(p)),
        ]
        row = "".join(f"<td>{c}</td>" for c in cells) + f"<td class='text'>{html.escape(where)}</td>"
        if pictured:
            row += f"<td class='text'>{_thumbnails(*pictures[r['index']]) if r['index'] in pictures else ''}</td>"
        rows.append(f"<tr>{row}</tr>")
    what = (f"the {len(chosen)} inputs with the smallest certified {NORM_LABELS[p]} radius, min(ε̂, prediction "
            "radius): where ε̂ sets it, the region ends before any other class is reached")
    return f"<h2>Smallest certified radii</h2><p class='muted'>{what}</p><table>{head}{''.join(rows)}</table>"


def _adversarial_section(records: Sequence[dict], p: str, pictures: dict[int, tuple[np.ndarray, np.ndarray | None]]) -> str:
    """The inputs whose nearest input of another class is known exactly (prediction radius ≤ ε̂),
    nearest first, with their adversarial points where the run wrote them."""
    chosen = smallest(records, p, "adversarial")
    if not chosen:
        why = ("no input has one: the prediction radius is larger than ε̂ everywhere, so the region ends first "
               "(an --adversarial-out file of such a run holds only NaN)" if any(r.get("prediction_radius") for r in records)
               else "the run did not compute prediction radii")
        return f"<h2>Exact adversarial inputs</h2><p class='muted'>{why}</p>"
    pictured = any(r["index"] in pictures and pictures[r["index"]][1] is not None for r in chosen)
    head = (f"<tr><th>input</th><th>class</th><th>rival class</th><th>prediction radius</th><th>{NORM_LABELS[p]}</th>"
            + ("<th class='text'>input · adversarial point · difference</th>" if pictured else "") + "</tr>")
    rows = []
    for r in chosen:
        cells = [str(r["index"]), _text(r.get("prediction")), _text((r.get("rival") or {}).get(p)),
                 _num(radii_of(r, "prediction_radius")[p]), _num(radii_of(r, "radius")[p])]
        row = "".join(f"<td>{c}</td>" for c in cells)
        if pictured:
            row += f"<td class='text'>{_thumbnails(*pictures[r['index']]) if r['index'] in pictures else ''}</td>"
        rows.append(f"<tr>{row}</tr>")
    total = sum(bool((r.get("exact_adversarial") or {}).get(p)) for r in records)
    what = (f"{total} inputs have an exact adversarial point in {NORM_LABELS[p]} (the prediction radius is at most ε̂: "
            f"the nearest input of another class, exactly); the {len(chosen)} nearest")
    return f"<h2>Exact adversarial inputs</h2><p class='muted'>{what}</p><table>{head}{''.join(rows)}</table>"


def listed_norm(run: dict, records: Sequence[dict]) -> str:
    """The norm whose smallest radii the page lists: the adversarial points', else l2, else the first."""
    norms = [p for p in ("l1", "l2", "linf") if records and p in records[0]["radius"]]
    chosen = (run.get("options") or {}).get("adversarial_norm")
    return chosen if chosen in norms else "l2" if "l2" in norms or not norms else norms[0]


#: The lists of inputs the page shows, smallest first.
LISTS = ("certified", "adversarial")


def ranking(record: dict, p: str, which: str = "certified") -> tuple[float, int] | None:
    """A record's place in list ``which``: its certified radius in norm ``p`` (ε̂ without one), or
    (``adversarial``) its prediction radius where that is exact, None where it is not; then its index."""
    if which == "certified":
        return _certified([record], p)[0], record["index"]
    if not (record.get("exact_adversarial") or {}).get(p):
        return None
    return radii_of(record, "prediction_radius")[p], record["index"]


def smallest(records: Sequence[dict], p: str, which: str = "certified", count: int = SMALLEST) -> list[dict]:
    """The ``count`` records first in list ``which`` (:func:`ranking`), in order."""
    ranked = [r for r in records if ranking(r, p, which) is not None]
    return heapq.nsmallest(count, ranked, key=lambda r: ranking(r, p, which))


def pictures(records: Sequence[dict], p: str, row: Callable[[int], np.ndarray],
             point: Callable[[int], np.ndarray | None]) -> dict[int, tuple[np.ndarray, np.ndarray | None]]:
    """The pixels the page shows: each input one of its lists holds, by index, with its
    adversarial point where ``point`` has one."""
    listed = {r["index"] for which in LISTS for r in smallest(records, p, which)}
    return {i: (np.asarray(row(i)), point(i)) for i in sorted(listed)}


# ------------------------------------------------------------------------------------ figures


def _histogram(eps: Sequence[float], cert: Sequence[float], label: str, width: int = 340, height: int = 190) -> str:
    """ε̂ and certified radii side by side in log-spaced bins (zeros and unbounded radii counted apart)."""
    finite = [v for v in (*eps, *cert) if 0 < v < math.inf]
    caption = f"{label}: " + ", ".join(
        f"{name} = 0: {sum(v == 0 for v in values)}, unbounded: {sum(math.isinf(v) for v in values)}"
        for name, values in (("ε̂", eps), ("certified", cert)) if values
    )
    if not finite:
        return f"<figcaption class='muted'>{html.escape(caption)} (no finite positive radius)</figcaption>"
    low, high = math.floor(math.log10(min(finite))), math.ceil(math.log10(max(finite)))
    high = max(high, low + 1)
    bins = 4 * (high - low)
    left, plot_w, plot_h = 36, width - 46, height - 40

    def counts(values):
        out = [0] * bins
        for v in values:
            if 0 < v < math.inf:
                out[min(bins - 1, int((math.log10(v) - low) / (high - low) * bins))] += 1
        return out

    series = [(counts(eps), EPSILON_COLOUR, 0), (counts(cert), CERTIFIED_COLOUR, 1)] if cert else [(counts(eps), EPSILON_COLOUR, 0)]
    top = max(max(c) for c, _, _ in series) or 1
    slot = plot_w / bins
    bar = slot / len(series)
    shapes = []
    for values, colour, k in series:
        for b, n in enumerate(values):
            if n:
                h = plot_h * n / top
                shapes.append(f'<rect x="{left + b * slot + k * bar:.1f}" y="{10 + plot_h - h:.1f}" width="{bar:.1f}" '
                              f'height="{h:.1f}" fill="{colour}"><title>{n}</title></rect>')
    ticks = []
    for decade in range(low, high + 1):
        x = left + (decade - low) / (high - low) * plot_w
        ticks.append(f'<line x1="{x:.1f}" y1="{10 + plot_h}" x2="{x:.1f}" y2="{14 + plot_h}" stroke="#555"/>'
                     f'<text x="{x:.1f}" y="{height - 6}" font-size="10" text-anchor="middle">1e{decade}</text>')
    axes = (f'<line x1="{left}" y1="{10 + plot_h}" x2="{left + plot_w}" y2="{10 + plot_h}" stroke="#555"/>'
            f'<text x="{left - 4}" y="16" font-size="10" text-anchor="end">{top}</text>'
            f'<text x="{left - 4}" y="{10 + plot_h}" font-size="10" text-anchor="end">0</text>')
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
           f'aria-label="histogram of {html.escape(label)}">{axes}{"".join(ticks)}{"".join(shapes)}</svg>')
    return f"{svg}<figcaption class='muted'>{html.escape(caption)}</figcaption>"


def image_shaped(shape: Sequence[int]) -> bool:
    """(C, H, W) with 1 or 3 channels, or (H, W): inputs worth a thumbnail."""
    shape = tuple(shape)
    if len(shape) == 3 and shape[0] in (1, 3):
        shape = shape[1:]
    return len(shape) == 2 and min(shape) >= 4


def _thumbnails(x: np.ndarray, adversarial: np.ndarray | None) -> str:
    """The input, its adversarial point (same grey/colour scale) and their difference (own scale, grey = 0)."""
    images = [x] if adversarial is None or np.isnan(adversarial).any() else [x, adversarial]
    low, high = min(float(np.min(i)) for i in images), max(float(np.max(i)) for i in images)
    tags = [_img(_pixels(i, low, high)) for i in images]
    if len(images) == 2:
        reach = float(np.max(np.abs(adversarial - x))) or 1.0
        tags.append(_img(_pixels(adversarial - x, -reach, reach)))
    return " ".join(tags)


def _pixels(image: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = (np.asarray(image, dtype=np.float64) - low) / ((high - low) or 1.0)
    pixels = np.clip(np.round(255 * scaled), 0, 255).astype(np.uint8)
    if pixels.ndim == 3:
        pixels = pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1)
    return pixels


def _img(pixels: np.ndarray) -> str:
    h, w = pixels.shape[:2]
    scale = max(1, 96 // max(h, w))
    data = base64.b64encode(png(pixels)).decode("ascii")
    return f'<img class="thumb" width="{w * scale}" height="{h * scale}" alt="" src="data:image/png;base64,{data}">'


def png(pixels: np.ndarray) -> bytes:
    """A PNG file of 8-bit grey (H, W) or RGB (H, W, 3) pixels."""
    h, w = pixels.shape[:2]
    colour = 2 if pixels.ndim == 3 else 0
    raw = b"".join(b"\x00" + row.tobytes() for row in np.ascontiguousarray(pixels))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


# ------------------------------------------------------------------------------------ helpers


def radii_of_all(records: Sequence[dict], p: str) -> list[float]:
    return [radii_of(r, "radius")[p] for r in records]


def _certified(records: Sequence[dict], p: str) -> list[float]:
    """Certified radii (ε̂ for records without a prediction radius: one-output models)."""
    return [radii_of(r, "certified_radius")[p] if r.get("certified_radius") else radii_of(r, "radius")[p] for r in records]


def _median(values: Sequence[float]) -> float:
    return float(np.median(values)) if len(values) else math.nan


def _num(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return "∞" if math.isinf(value) else f"{value:.4g}"


def _text(value) -> str:
    return "-" if value is None else html.escape(str(value))


def today() -> str:
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
