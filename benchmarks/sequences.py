"""The paper's sequence experiment as a user runs it: ``lrcert certify`` of the Japanese Vowels test
utterances (370 sequences of 7 to 29 frames; three norms, the prediction radius on, the default
options), whole process, beside ``python -c "import torch"`` in the same run; and where the time
goes inside one process (reading the model, unrolling it to each length, certifying).

    python3 benchmarks/sequences.py                          # the ROLL model of models/japanese_vowels
    python3 benchmarks/sequences.py --model models/japanese_vowels/vanilla.onnx --json out.json

The model and data are what ``experiments/japanese_vowels.py`` writes (committed in models/).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from startup import seconds  # noqa: E402

FOLDER = ROOT / "models" / "japanese_vowels"


def phases(model: Path, data: Path) -> dict:
    """Inside one process: read and convert the model, unroll it to every length of the data
    (trace and engine), certify every row; seconds each."""
    import torch

    from lrcert.run import runner
    from lrcert.models.load import opener

    started = time.perf_counter()
    networks = opener(str(model))
    network, source = runner.prepare(str(data), networks)
    read = time.perf_counter()
    engine = runner.engine_for(network, source, networks)
    for length in np.unique(source.lengths):
        engine.at(int(length))
    unrolled = time.perf_counter()
    batches = [np.arange(len(source.rows))]
    results = [r for batch in runner.results_of(engine, source, batches, run_size=len(source.rows)) for r in batch]
    done = time.perf_counter()
    return {"read_and_first_lengths_s": read - started, "unroll_every_length_s": unrolled - read,
            "certify_s": done - unrolled, "inputs": len(results), "lengths": len(np.unique(source.lengths)),
            "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="default: the ROLL model table.json names")
    parser.add_argument("--data", type=Path, default=FOLDER / "test.npz")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.model is None:
        files = json.loads((FOLDER / "table.json").read_text())["files"]
        args.model = FOLDER / next(f for name, f in files.items() if name != "vanilla")
    command = [sys.executable, "-m", "lrcert.cli", "certify", str(args.model), str(args.data), "-f", "json", "-o", "/dev/null"]
    torch_s = seconds([sys.executable, "-c", "import torch"], args.repeats)
    whole_s = seconds(command, args.repeats)
    report = {"machine": platform.processor() or platform.machine(), "model": args.model.name, "data": args.data.name,
              "import_torch_s": torch_s, "certify_whole_command_s": whole_s, "ratio_to_import_torch": whole_s / torch_s,
              "inside_one_process": phases(args.model, args.data)}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
