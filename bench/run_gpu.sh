#!/usr/bin/env bash
# The one GPU command (bench/README.md): installs the carried wheels (.whl/), then
# runs the SearchLoop benchmark and the verifier benchmark, JSON + logs to $OUT.
#   bash bench/run_gpu.sh [search cases, default sd15,sdxl,caps,n256,strategies,flux] [verifiers: all|none]
set -u
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then   # offline machines: wheels carried in .whl/, installed for this run only
  SITE=$(mktemp -d "${TMPDIR:-/tmp}/infscale-site.XXXXXX") || exit 1
  trap 'rm -rf "$SITE"' EXIT
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || exit 1
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >"$OUT/nvidia_smi.csv" 2>&1
CASES=${1:-sd15,sdxl,caps,n256,strategies,flux}
VERIFIERS=${2:-all}
export PACK_COMMIT=${PACK_COMMIT:-unknown}
# DEVICES: the sd15.devices case's many-device side (default 'all'; 'same-gpu-twice' on a one-GPU machine)
python3 bench/gpu_search.py --cases "$CASES" --budget-s "${SEARCH_BUDGET:-400}" --out "$OUT/gpu_search.json" \
  ${DEVICES:+--devices "$DEVICES"} \
  >"$OUT/gpu_search.log" 2>&1
echo "gpu_search exit $?"; grep -A50 '^case  ' "$OUT/gpu_search.log" || tail -40 "$OUT/gpu_search.log"
if [ "$VERIFIERS" != none ]; then
  python3 bench/gpu_verifiers.py --budget-s "${VERIFIER_BUDGET:-100}" --out "$OUT/gpu_verifiers.json" \
    >"$OUT/gpu_verifiers.log" 2>&1
  echo "gpu_verifiers exit $?"; grep -A12 '^verifier  ' "$OUT/gpu_verifiers.log" || tail -30 "$OUT/gpu_verifiers.log"
fi
