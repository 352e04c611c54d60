#!/usr/bin/env bash
# The GPU checks of one lent-GPU session, in one command (book: "Running at paper scale").
#   1. the three image notebooks with profile="paper" on tiny random models, on CUDA;
#   2. bench_gpu.py with paper-sized models (DiT-XL/2 + SD-VAE + ResNet-50) of random weights:
#      seconds per optimisation step and peak GPU memory for T = 10/25/50 (fp32 and bf16).
# Results go to $OUT (default ./gpu_out). Each part has its own time limit so one slow part
# cannot eat the others' time. Needs torch with CUDA, timm, diffusers on PYTHONPATH.
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, timm, diffusers; print('torch', torch.__version__, 'timm', timm.__version__, 'diffusers', diffusers.__version__)" | tee -a "$OUT/gpu.txt"
timeout 150 python3 benchmarks/paper_smoke.py --device cuda --out /tmp/paper_smoke > "$OUT/paper_smoke.log" 2>&1
echo "paper_smoke rc=$?"; grep -E "\[paper_smoke\]|Error" "$OUT/paper_smoke.log"
bench() {  # name, timeout, args...
  local name=$1 limit=$2; shift 2
  timeout "$limit" python3 benchmarks/bench_gpu.py --random-weights --json "$OUT/$name.json" "$@" > "$OUT/$name.log" 2>&1
  echo "$name rc=$?"; grep -vE "Warning|warn" "$OUT/$name.log" | tail -6
}
bench bench_fp32_b8 150 --batch-size 8 --opt-steps 3
bench bench_bf16_b8 120 --batch-size 8 --opt-steps 3 --bf16
bench bench_bf16_b32 120 --batch-size 32 --opt-steps 3 --bf16 --ddim-steps-list 10 25
