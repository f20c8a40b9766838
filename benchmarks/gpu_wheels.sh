#!/usr/bin/env bash
# The wheels benchmarks/gpu_check.py needs on a GPU machine that has torch, torchvision, timm,
# regex, safetensors and huggingface_hub but not these: downloaded here into .whl/ (ignored by
# git; about 20 MB) for that machine's Python (3.12 by default: PYTHON_VERSION=3.11 for another),
# at the versions this machine runs. There:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
#     PYTHONPATH=/tmp/site:$PWD python3 benchmarks/gpu_check.py
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON_VERSION:-3.12}
version() { python -c "import importlib.metadata as m; print(m.version('$1'))"; }
mkdir -p .whl
python -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    "open_clip_torch==$(version open_clip_torch)" "ftfy==$(version ftfy)" "wcwidth==$(version wcwidth)" \
    "faiss-cpu==$(version faiss-cpu)"
du -sh .whl
