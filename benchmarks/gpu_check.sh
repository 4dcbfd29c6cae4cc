#!/usr/bin/env bash
# Issue 17's GPU check, in one script for a fresh GPU machine, in the repo root, in under 8 minutes:
#   1. install the project with the bench extra (from .whl/ when it is there: benchmarks/gpu_wheels.sh);
#   2. python -m pytest -q tests/test_gpu.py;
#   3. vlmdpo against TRL at --scale large (~2B parameters), bfloat16, gradient checkpointing on for both
#      (TRL otherwise with its defaults), 1024 and 2304 image tokens on qwen2_vl, then on llava while time is
#      left: pairs/s, peak GPU memory and their ratios, with the FLOP ratio (bench_flops.py) beside them.
#
#     bash benchmarks/gpu_check.sh                 # logs into $OUT when set, else ./gpu_check_out
#     BUDGET=470 PAIRS=24 bash benchmarks/gpu_check.sh
#     INSTALL=0 bash benchmarks/gpu_check.sh       # the environment is already set up
#     INSTALL=0 DEVICE=cpu DTYPE=float32 SCALE=small PAIRS=12 RUNS="qwen2_vl:256:30 llava:256:30" \
#         bash benchmarks/gpu_check.sh              # a rehearsal on a CPU: every stage, small models
#
# Each stage runs under `timeout`, cut to what is left of BUDGET seconds; a stage that would get under its
# minimum is skipped. summary.txt collects the lines that matter from each stage's log.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-470}
PAIRS=${PAIRS:-24}
CACHE=${CACHE:-/tmp/vlmdpo-bench}
INSTALL=${INSTALL:-1}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bfloat16}
SCALE=${SCALE:-large}
RUNS=${RUNS:-qwen2_vl:1024:60 qwen2_vl:2304:60 llava:1024:100 llava:2304:110}  # model:image tokens:min seconds
export PY PAIRS CACHE DEVICE DTYPE SCALE
START=$(date +%s)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

note() { echo "== $(date -u +%H:%M:%S) +$(( $(date +%s) - START ))s $*" | tee -a "$SUMMARY"; }

# stage NAME CAP MIN COMMAND...: run COMMAND for at most min(CAP, time left), or skip it under MIN seconds left
stage() {
    local name=$1 cap=$2 min=$3 left limit rc
    shift 3
    left=$(( BUDGET - ($(date +%s) - START) ))
    if [ "$left" -lt "$min" ]; then
        note "$name: skipped ($left s left, needs $min)"
        return 0
    fi
    limit=$(( cap < left ? cap : left ))
    note "$name: start (limit ${limit}s)"
    timeout -k 5 "$limit" bash -c '"$@"' "$name" "$@" > "$OUT/$name.log" 2>&1  # bash -c: functions too
    rc=$?
    note "$name: exit $rc$([ $rc -eq 124 ] && echo ' (timed out)')"
    return $rc
}

install() {
    if ls .whl/*.whl > /dev/null 2>&1; then  # offline: the wheels carried beside the repo
        "$PY" -m pip install -q --no-index --find-links .whl --no-build-isolation -e ".[bench]" .whl/*.whl
    else
        "$PY" -m pip install -q -e ".[bench]"
    fi || return
    "$PY" -c "import torch, transformers, trl, peft; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name() if torch.cuda.is_available() else '', '| transformers', transformers.__version__,
'| trl', trl.__version__, '| peft', peft.__version__)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
}

bench() {  # MODEL TOKENS
    "$PY" benchmarks/bench_dpo.py --model "$1" --image-tokens "$2" --scale "$SCALE" --device "$DEVICE" --dtype "$DTYPE" \
        --gradient-checkpointing --runners vlmdpo,trl --pairs "$PAIRS" --threads 8 --flops --cache "$CACHE"
}

export -f install bench
[ "$INSTALL" = 1 ] && stage install 150 60 install
grep -sE "^torch|, [0-9]+ MiB" "$OUT/install.log" >> "$SUMMARY"
stage test_gpu 120 30 "$PY" -m pytest -q -p no:randomly -p no:cacheprovider tests/test_gpu.py
tail -n 3 "$OUT/test_gpu.log" >> "$SUMMARY"
for run in $RUNS; do
    IFS=: read -r model tokens min <<< "$run"
    stage "bench_${model}_${tokens}" 200 "$min" bench "$model" "$tokens"
    grep -E "^DPO step|^  (runner|vlmdpo |trl )|vlmdpo vs|first-step|TRL / vlmdpo|achieved|^runner|Error|error:" \
        "$OUT/bench_${model}_${tokens}.log" >> "$SUMMARY"
done
note "done"
cat "$SUMMARY"
