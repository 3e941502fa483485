#!/usr/bin/env bash
# Every check this project owes on a real GPU, most important first, inside a time budget.
#
#   benchmarks/gpu_checks.sh OUTDIR [BUDGET_S]        # PYTHON=... picks the interpreter
#
# After `make test` the project's .venv is used. On a machine whose Python already has torch
# (and no network), install gpuslice's wheel and its dependencies' wheels into it first
# (`pip install --no-index --no-deps *.whl`) and pass PYTHON=python3.
#
# Steps (each with its own timeout, cut to what is left of the budget; a step that fails or
# times out does not stop the next one; each writes OUTDIR/<step>.log):
#   info        nvidia-smi, MIG profiles (read-only listings), torch, `gpuslice gpus`,
#               `gpuslice plan check` of the example plans against this GPU
#   gpu-tests   the pytest tests marked `gpu` (NVML and NVIDIA's MPS daemon on this GPU)
#   mps-limits  benchmarks/mps_limits.py: percentages, memory caps, MiB caps, context memory,
#               server-vs-client limits, a control daemon killed under a client
#   bench-llm, bench-surrogate
#               `gpuslice bench` on this GPU: one task per GPU, time-sharing, MPS without
#               limits, gpuslice slices, batching (the paper's comparison)
#   conformance tests/conformance against this machine's nvidia-cuda-mps-control with no
#               device visible (the replies NVIDIA gives without a server, this driver's version)
#   rightsize   benchmarks/rightsize_gpu.py on the LLM request (profile only)
#
# Nothing on the GPU is reconfigured: no MIG, compute-mode, clock or persistence change; the MPS
# daemons have private pipe directories and are stopped by the steps that start them.
# GPU_CHECKS_TAR=FILE re-packs OUTDIR into FILE after every step (so a run cut short keeps
# what it finished).
set -u
PY=${PYTHON:-.venv/bin/python}
GS=$(dirname "$(command -v "$PY")")/gpuslice
[ -x "$GS" ] || GS=$(command -v gpuslice || echo gpuslice)

pack() {
    if [ -n "${GPU_CHECKS_TAR:-}" ]; then
        tar -czf "$GPU_CHECKS_TAR.tmp" -C "$(dirname "$OUT")" "$(basename "$OUT")" \
            && mv "$GPU_CHECKS_TAR.tmp" "$GPU_CHECKS_TAR"
    fi
}

# step NAME SECONDS COMMAND...: run COMMAND with a timeout of SECONDS (or what is left).
step() {
    local name=$1 want=$2 left t s rc
    shift 2
    left=$((BUDGET - ($(date +%s) - T0)))
    t=$((want < left ? want : left))
    if [ "$t" -lt 15 ]; then
        echo "== $name: skipped, ${left}s of the budget left"
        return
    fi
    s=$(date +%s)
    echo "== $(date +%T) $name (timeout ${t}s)"
    timeout -k 10 "$t" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    echo "== $name: exit $rc after $(($(date +%s) - s))s"
    tail -n 15 "$OUT/$name.log"
    pack
}

info() {
    nvidia-smi
    nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,compute_mode,mig.mode.current,persistence_mode --format=csv
    echo "--- nvidia-smi mig -lgip"; nvidia-smi mig -lgip
    echo "--- nvidia-smi mig -lgipp"; nvidia-smi mig -lgipp
    echo "--- NVML GPU instance profiles (nvmlDeviceGetGpuInstanceProfileInfo, ids 0-14)"
    "$PY" - <<'PYEOF'
import pynvml as n
n.nvmlInit()
handle = n.nvmlDeviceGetHandleByIndex(0)
for profile in range(15):
    try:
        info = n.nvmlDeviceGetGpuInstanceProfileInfo(handle, profile)
    except n.NVMLError as err:
        print(profile, "error:", err)
        continue
    print(profile, {name: getattr(info, name) for name, _ in info._fields_})
PYEOF
    echo "--- MPS programs"; command -v nvidia-cuda-mps-control nvidia-cuda-mps-server
    "$PY" -c 'import torch, sys; print(sys.version); print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0).multi_processor_count, "SMs")'
    echo "--- gpuslice gpus"; "$GS" gpus
    for plan in src/gpuslice/examples/plan-*.yaml; do
        echo "--- gpuslice plan check $plan"; "$GS" plan check "$plan"
    done
    echo "--- gpuslice plan check (compact, 7 slices)"; "$GS" plan check 'small=7x mps:14%/16GiB'
}

conformance() {
    local real
    real=$(command -v nvidia-cuda-mps-control) || { echo "no nvidia-cuda-mps-control here"; return 1; }
    # The emulated program answers as this driver's version (535 or 550 behaviour).
    GPUSLICE_NVIDIA_MPS_VERSION=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n 1) \
    GPUSLICE_NVIDIA_MPS_CONTROL=$real GPUSLICE_REQUIRE_NVIDIA_MPS=1 CUDA_VISIBLE_DEVICES= \
        "$PY" -m pytest -p no:cacheprovider -q tests/conformance
}

case ${1:-} in  # the steps that are shell functions run as this script, under `timeout`
    --info) info; exit ;;
    --conformance) conformance; exit ;;
esac
OUT=${1:?usage: benchmarks/gpu_checks.sh OUTDIR [BUDGET_S]}
BUDGET=${2:-540}
TASKS=${GPU_CHECKS_TASKS:-112}  # tasks per bench arrangement
mkdir -p "$OUT"
T0=$(date +%s)

step info 60 "$0" --info
step gpu-tests 120 "$PY" -m pytest -p no:cacheprovider -m gpu -ra -v tests/hardware tests/mps
step mps-limits 150 "$PY" benchmarks/mps_limits.py --iterations 1000 --out "$OUT/mps_limits.json"
step bench-llm 170 "$GS" bench --workload llm --tasks "$TASKS" \
    --plans one-per-gpu,timeshare-7,mps-unlimited-7,gpuslice-7,batched-7 --out "$OUT"
step bench-surrogate 130 "$GS" bench --workload surrogate --tasks "$TASKS" \
    --plans one-per-gpu,timeshare-4,mps-unlimited-4,gpuslice-4,batched-4 --out "$OUT"
step conformance 90 "$0" --conformance
step rightsize 200 "$PY" benchmarks/rightsize_gpu.py --functions gpuslice.bench.mixtasks:llm_medium \
    --samples 12 --skip-bench --out "$OUT/rightsize"
echo "== done after $(($(date +%s) - T0))s"
pack
