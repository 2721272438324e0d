#!/usr/bin/env bash
# Photon on a GPU, from scratch, offline, in one go (about 8 minutes on one H200):
#     bash scripts/gpu_check.sh            # OUT=DIR to choose where the JSON and the log go (default gpu-out/)
# 1. installs this checkout's dependencies from the wheels in .whl/ (scripts/fetch_gpu_wheels.sh; the
#    machine's own torch is used), into /tmp/photon-site;
# 2. checks keep-all parity and pruned-prefill/decode equality with the stock-only reference on CUDA in
#    bf16, for sdpa and (when a flash-attn wheel came along) flash_attention_2, on a ragged batch
#    (python -m photon.bench.gpu_check);
# 3. runs `photon bench --paper-table` at Qwen2.5-VL-3B shapes (random weights time like real ones) and
#    `photon bench --size 3b` at 4,096 visual tokens, keep 10%, with Photon and two baselines.
# Everything lands in $OUT: parity.json, paper_table.json, bench_3b.json and gpu_check.log.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/photon-site .whl/*.whl
  export PYTHONPATH="/tmp/photon-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "no wheels in .whl/: using what this machine has installed (run scripts/fetch_gpu_wheels.sh where there is network)"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 - <<'PY'
import torch, transformers
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, transformers {transformers.__version__}")
print(f"device: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "device: no CUDA")
PY
status=0
python3 -m photon.bench.gpu_check --out "$OUT" --device cuda --dtype bfloat16 --size small || status=$?
python3 -m photon bench --paper-table --size 3b --device cuda --repeats 3 --json "$OUT/paper_table.json" || status=$?
python3 -m photon bench --size 3b --device cuda --visual-tokens 4096 --pruners photon,fastv,visionzip --keep 0.1 --batch 1 \
  --repeats 3 --json "$OUT/bench_3b.json" || status=$?
echo "gpu_check: done (status $status); results in $OUT"
exit $status
