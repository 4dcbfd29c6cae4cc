#!/usr/bin/env bash
# Wheels for benchmarks/gpu_check.sh on a GPU machine that reaches no package index: the packages its image
# lacks (or holds too old) for `pip install -e .[bench]`, at this environment's versions, for CPython 3.12 on
# x86-64 Linux. Run here, where PyPI is reachable, in the repo root:
#     bash benchmarks/gpu_wheels.sh            # into .whl/ (and .whl/ into .git/info/exclude)
# gpu_check.sh installs from .whl/ when it is there (carry it: run(carry=[".whl"])); about 25 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
NAMES="trl transformers datasets peft accelerate huggingface_hub tokenizers safetensors hf-xet kernels tomlkit
httpx2 httpcore2 click regex typer pydantic pydantic-core annotated-types typing-inspection fsspec dill
multiprocess omegaconf open_clip_torch ftfy wcwidth"
PINS=$(python - $NAMES <<'PY'
import sys, importlib.metadata as m
print(" ".join(f"{name}=={m.version(name)}" for name in sys.argv[1:]))
PY
)
mkdir -p "$DEST"
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$DEST" $PINS
if [ "$DEST" = .whl ] && [ -d .git ] && ! grep -qx '/.whl/' .git/info/exclude 2>/dev/null; then
    echo '/.whl/' >> .git/info/exclude
fi
du -sh "$DEST"
