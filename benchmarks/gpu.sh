#!/usr/bin/env bash
# One command for a GPU check of lrcert, about 5 minutes on one H100:
#   (a) float64, auto and float32 certify on every model of $LRCERT_SHARED_MODELS against its reference,
#   (b) bench.py --device cuda: 8,192 paper_mlp inputs and 1,024 of the others, against jacrev/jacfwd
#       (per-neuron autograd is left out: it is never the fastest baseline and takes minutes),
#   (c) ResNet-18 on one 3×224×224 input, three norms, float32 (the deterministic dense engine);
#   (d) large.py: ResNet-18 and ResNet-50 on one 3×224×224 input with the default options (auto, the prediction
#       radius over 1,000 classes, sketched), beside the deterministic engine projected from 10 s;
#   (e) stability.py: lrcert stability of ResNet-18 on one 3×224×224 input, 1,000 samples and the default search;
# and writes the figures as JSON (and the bench table as text) into the folder given, default $OUT or gpu-results.
#
# Needs only this repository, a models folder and PyTorch with CUDA (plus numpy, onnx, typer, rich, torchvision).
# onnx2torch, when missing, is installed from the wheels in $LRCERT_WHEELS (default .whl), fetched beforehand with
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl onnx2torch==1.5.15
# On the device tool: copy ../shared/models into an ignored folder (e.g. .shared-models), carry it and .whl, and run
#   LRCERT_SHARED_MODELS=.shared-models bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
results="${1:-${OUT:-gpu-results}}"
mkdir -p "$results"
export PYTHONUNBUFFERED=1
if ! python3 -c "import onnx2torch" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/lrcert-site "${LRCERT_WHEELS:-.whl}"/*.whl
    export PYTHONPATH="/tmp/lrcert-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

python3 benchmarks/gpu_check.py --device cuda --json "$results/gpu-check.json"
python3 benchmarks/bench.py --device cuda --mlp-inputs 8192 --other-inputs 1024 --big-inputs 256 \
    --baselines jacrev jacfwd --repeats 3 --no-scaling --json "$results/bench-cuda.json" | tee "$results/bench-cuda.txt"
python3 benchmarks/large.py --device cuda --budget 10 --json "$results/large-cuda.json" | tee "$results/large-cuda.txt"
python3 benchmarks/stability.py --sections imagenet --device cuda --json "$results/stability-cuda.json" | tee "$results/stability-cuda.txt"
