#!/usr/bin/env bash
# The `gpu` preset of kd_step.py: the six commands docs/benchmarks.md lists, one after another, each output
# kept in OUT_DIR (N.log, and the JSON lines together in results.jsonl).
#
#   benchmarks/gpu_suite.sh OUT_DIR          # all six
#   benchmarks/gpu_suite.sh OUT_DIR 1 2 5    # only these: split them when one call has a time limit
#   KD_STEP_ARGS='--batch-size 2 --repeats 1' benchmarks/gpu_suite.sh OUT_DIR   # extra kd_step.py flags
set -uo pipefail
out=${1:?usage: benchmarks/gpu_suite.sh OUT_DIR [N ...]}
shift
cd "$(dirname "$0")/.."
runs=('' '--fast' '--fast --compile' '--fast --students 4' '--ablation' '--fast --compile-mode reduce-overhead')
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python3 -c 'import timm, timm.task, torch; print("torch", torch.__version__, "timm", timm.__version__,
torch.cuda.get_device_name() if torch.cuda.is_available() else "NO CUDA: the gpu preset would run on the CPU")' \
  || { echo "needs torch and timm>=1.0.31 (timm.task): pip install timm==1.0.31"; exit 2; }
ids=("$@")
[ ${#ids[@]} -gt 0 ] || ids=(1 2 3 4 5 6)
status=0
for i in "${ids[@]}"; do
  cmd="python3 benchmarks/kd_step.py --preset gpu ${runs[i-1]} ${KD_STEP_ARGS:-}"
  echo "== $i: $cmd"
  $cmd 2>&1 | tee "$out/$i.log" || status=1
  tail -n 1 "$out/$i.log" | grep '^{' >> "$out/results.jsonl"
done
exit $status
