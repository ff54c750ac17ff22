"""An image folder against the same images as one .npy: whole ``lrcert certify`` commands, side by
side in one run, with their peak memory (the folder streams: it never sits in memory at once).

    python3 benchmarks/image_folder.py                       # 1,000 and 4,000 PNG images, 3×32×32
    python3 benchmarks/image_folder.py --counts 500 --json image-folder.json

For each count the script writes that many random 32×32 RGB PNGs in an ImageFolder tree (10
classes) and the same pixels as a float32 .npy (what a user would otherwise make by hand), then
certifies both with a small CIFAR-shaped conv net (default options, JSON lines to a file) as
separate processes, one after the other: wall time, and each one's peak resident memory (from
``getrusage(RUSAGE_CHILDREN)`` in a fresh parent per command). Also the time to decode every
image once (Pillow: what the folder adds), and its share of the folder's run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]


class CifarNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.head(self.features(x))


def write_images(folder: Path, count: int) -> np.ndarray:
    from PIL import Image

    rng = np.random.default_rng(count)
    pixels = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    for k in range(count):
        where = folder / f"class{k % 10}"
        where.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[k]).save(where / f"{k:06d}.png")
    order = sorted(range(count), key=lambda k: (k % 10, f"{k:06d}"))  # ImageFolder's order
    return (pixels[order].astype(np.float32) / 255).transpose(0, 3, 1, 2).copy()


#: Runs a command and prints its peak resident memory (KB): a fresh parent per command, so that
#: RUSAGE_CHILDREN is that command's alone.
PEAK = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "sys.stderr.write(done.stderr); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
        "sys.exit(done.returncode)")


def run(command: list[str]) -> tuple[float, float]:
    """Wall seconds and the peak resident memory of the command (GB)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK, *command], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return seconds, int(done.stdout.split()[-1]) / 1e6  # (KB on Linux)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tmp / "cifar.onnx"
        torch.onnx.export(CifarNet().eval(), torch.zeros(1, 3, 32, 32), str(model), dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "N"}})
        for count in args.counts:
            folder = tmp / f"images{count}"
            array = write_images(folder, count)
            np.save(tmp / f"x{count}.npy", array)
            from lrcert.data import sources

            opened = sources.open_source(str(folder), (3, 32, 32))
            started = time.perf_counter()
            decoded = opened.rows[np.arange(count)]
            decode = time.perf_counter() - started
            assert np.array_equal(decoded, array)  # (the same pixels both ways)
            base = [sys.executable, "-m", "lrcert", "certify", str(model)]
            folder_s, folder_gb = run([*base, str(folder), "-f", "jsonl", "-o", str(tmp / "folder.jsonl")])
            array_s, array_gb = run([*base, str(tmp / f"x{count}.npy"), "-f", "jsonl", "-o", str(tmp / "array.jsonl")])
            same = [json.loads(a)["radius"] for a in open(tmp / "folder.jsonl")] == \
                   [json.loads(b)["radius"] for b in open(tmp / "array.jsonl")]
            row = {"images": count, "folder_s": folder_s, "npy_s": array_s, "ratio": folder_s / array_s,
                   "decode_s": decode, "decode_share": decode / folder_s, "peak_gb_folder": folder_gb,
                   "peak_gb_npy": array_gb, "same_radii": same}
            rows.append(row)
            print(f"{count} images: folder {folder_s:.1f} s, .npy {array_s:.1f} s (folder ÷ npy {folder_s / array_s:.2f}); "
                  f"decoding every image once {decode:.2f} s ({100 * decode / folder_s:.1f} % of the folder's run); "
                  f"peak memory {folder_gb:.2f} GB / {array_gb:.2f} GB; same radii: {same}")
    if args.json:
        args.json.write_text(json.dumps({"machine": "see RESULTS.md", "runs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
