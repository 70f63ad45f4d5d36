#!/usr/bin/env bash
# One GPU-machine run: build the addon with CUDA, write the models and the transformers
# reference, run the CUDA tests, then the benchmark; prints the table last. From the repo root
# on the GPU machine, after `. .device/setup.sh` (see bench/CUDA_NOTES.md):
#   bash bench/native_cuda.sh [OUT_DIR]
# Optional, as the sessions' final calls ran them:
#   DTYPES="bfloat16 float16"   the benchmark once per dtype (default: the engine's default dtype);
#   GAP=1                       bench/native_cuda_gap.ts (largest logprob gaps, both dtypes);
#   PREFILL_AB="SWITCHYARD_CUDA_PDL=off SWITCHYARD_CUDA_PREFILL=wgmma"
#                               (4) alone (--prefill-only, float16) with each setting, for A/Bs;
#   REFERENCE=FILE              the transformers reference of an earlier run instead of a new one
#                               (the models are generated the same way each time; saves ~1 min).
set -uo pipefail
out=${1:-${OUT:-bench/out}}; mkdir -p "$out"
export PYTHONUNBUFFERED=1
root=$(pwd); cache=$root/.cache; mkdir -p "$cache"
model=$cache/qwen3-0.6b-random
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
# 1. build
( time node node_modules/cmake-js/bin/cmake-js compile -d native -O native/build -B Release -p "$(nproc)" ) > "$out/build.log" 2>&1
rc=$?; grep -E "switchyard native|error" "$out/build.log" | head -20
[ $rc -eq 0 ] || { tail -40 "$out/build.log"; exit 1; }
node -e "const a=require('./native/build/Release/switchyard_native.node'); console.log(JSON.stringify(a.cudaInfo()))"
# 2. models and the transformers reference
node --import tsx -e 'import("./test/native/models.ts").then(m => console.log(m.testQwen3Dir() + " " + m.testLlamaDir()))' > "$out/test_models.txt"
python3 bench/native_cuda_hf.py make-model "$model" 2>&1 | tail -2
if [ -n "${REFERENCE:-}" ]; then
  cp "$REFERENCE" "$cache/cuda-reference.json"
else
  python3 bench/native_cuda_hf.py reference $(cat "$out/test_models.txt") "$model" --out "$cache/cuda-reference.json" 2>&1 | grep -v Warning | tail -3
fi
# 3. tests
SWITCHYARD_CUDA_REFERENCE=$cache/cuda-reference.json SWITCHYARD_QWEN3_06B=$model \
  timeout 300 node node_modules/vitest/vitest.mjs run test/native/cuda.test.ts test/native/cuda_disaggregation.test.ts \
  > "$out/cuda_tests.log" 2>&1
echo "cuda tests rc=$?"; grep -E "✓|✗|×|FAIL|AssertionError|Error:|Tests  |expected" "$out/cuda_tests.log" | head -40
# 4. benchmark
python3 bench/native_cuda_hf.py ceilings --out "$out/ceilings.json" 2>&1 | tail -1
hf_json=$out/hf_generate.json
if [ "${SKIP_HF:-0}" != 1 ]; then
  timeout 150 python3 bench/native_cuda_hf.py generate "$model" --out "$hf_json" --requests 64 2>&1 | grep -v Warning | tail -2
else
  hf_json=bench/native_cuda_hf_baseline.json  # an earlier run's transformers baseline (it takes ~110 s)
fi
if [ "${GAP:-0}" = 1 ]; then
  GAP_SETTINGS="bfloat16;float16" timeout 200 node --import tsx bench/native_cuda_gap.ts "$cache/cuda-reference.json" "$model" \
    --out "$out/gap.md" > "$out/gap.log" 2>&1
  echo "gap rc=$?"; cat "$out/gap.md"
fi
for ab in ${PREFILL_AB:-}; do
  name=prefill_${ab//[^A-Za-z0-9_]/_}
  env "$ab" timeout 150 node --import tsx bench/native_cuda.ts "$model" "$out/ceilings.json" "$hf_json" --dtype float16 \
    --prefill-only --out "$out/$name.md" > "$out/$name.log" 2>&1
  echo "prefill-only $ab rc=$?"; grep -E "^\(4" "$out/$name.md"
done
for dt in ${DTYPES:-auto}; do
  timeout 240 node --import tsx bench/native_cuda.ts "$model" "$out/ceilings.json" "$hf_json" --dtype "$dt" --out "$out/table_$dt.md" \
    > "$out/bench_$dt.log" 2>&1
  echo "bench $dt rc=$?"; tail -30 "$out/bench_$dt.log"
done
