#!/usr/bin/env bash
# One GPU-machine profiling run (bench/CUDA_NOTES.md): builds the addon, then
#  1. batch 1/8/64 decode with SWITCHYARD_CUDA_PROFILE=1 (host timers + CUDA events per phase);
#  2. one batch-1 graph decode step under ncu, kernel by kernel, summed by kernel;
#  3. which 16-bit rounding of the engine moves the logprobs (bench/native_cuda_hf.py rounding);
#  4. (stage ncu_prefill, not by default) one 8192-token prefill step under ncu, kernel by kernel.
#   . .device/setup.sh && bash bench/native_cuda_profile.sh $OUT
# STAGES (default "profile ncu rounding") picks the stages.
set -uo pipefail
stages=" ${STAGES:-profile ncu rounding} "
out=${1:-${OUT:-bench/out}}; mkdir -p "$out"
export PYTHONUNBUFFERED=1
root=$(pwd); cache=$root/.cache; mkdir -p "$cache"
model=$cache/qwen3-0.6b-random
( time node node_modules/cmake-js/bin/cmake-js compile -d native -O native/build -B Release ) > "$out/build.log" 2>&1
rc=$?; grep -E "switchyard native|error|^real" "$out/build.log" | head -20
[ $rc -eq 0 ] || { tail -40 "$out/build.log"; exit 1; }
python3 bench/native_cuda_hf.py make-model "$model" 2>&1 | tail -1
# Per-kernel GPU time from an ncu --csv log: totals by kernel, then the first layer in order.
summarize() {
python3 - "$1" <<'PY'
import csv, re, sys, collections
rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if l.startswith('"'))]
head, rows = rows[0], rows[1:]
ix = {k: i for i, k in enumerate(head)}
tot = collections.OrderedDict(); cnt = collections.Counter(); seq = []
for r in rows:
    if r[ix["Metric Name"]] != "gpu__time_duration.sum": continue
    name = re.sub(r"^(void )?(sy::cuda::)?(\(anonymous namespace\)::)?", "", r[ix["Kernel Name"]])
    name = re.split(r"[<(]", name)[0]
    v = float(r[ix["Metric Value"]].replace(",", "")) / (1000.0 if r[ix["Metric Unit"]] in ("ns", "nsecond") else 1.0)
    tot[name] = tot.get(name, 0) + v; cnt[name] += 1; seq.append((name, r[ix["Grid Size"]], r[ix["Block Size"]], v))
print(f"{len(seq)} kernels, sum {sum(tot.values()):.1f} us")
for k, v in sorted(tot.items(), key=lambda kv: -kv[1]): print(f"{k:40s} n={cnt[k]:4d} total {v:8.1f} us  mean {v/cnt[k]:6.2f} us")
print("first layer in order:")
for s in seq[:18]: print(f"  {s[0]:36s} grid {s[1]:>16s} block {s[2]:>12s} {s[3]:7.2f} us")
for s in seq[-4:]: print(f"  {s[0]:36s} grid {s[1]:>16s} block {s[2]:>12s} {s[3]:7.2f} us")
PY
}
[[ $stages == *" profile "* ]] && SWITCHYARD_CUDA_PROFILE=1 timeout 120 node --import tsx bench/native_cuda_profile.ts "$model" 1 8 64 2>&1 | tee "$out/profile.log"
if [[ $stages == *" ncu "* ]]; then
SWITCHYARD_CUDA_PROFILE_STEP=300 timeout 200 ncu --profile-from-start off --graph-profiling node --cache-control none \
  --clock-control none --metrics gpu__time_duration.sum --csv --log-file "$out/ncu.csv" \
  node --import tsx bench/native_cuda_profile.ts "$model" 1 > "$out/ncu_run.log" 2>&1
echo "ncu rc=$?"; tail -3 "$out/ncu_run.log"
summarize "$out/ncu.csv" | tee "$out/ncu_summary.txt"
fi
if [[ $stages == *" ncu_prefill "* ]]; then
# one 8192-token prefill step (four 2048-token prompts), kernel by kernel
SWITCHYARD_CUDA_PROFILE_PREFILL_STEP=1 timeout 300 ncu --profile-from-start off --cache-control none \
  --clock-control none --metrics gpu__time_duration.sum --csv --log-file "$out/ncu_prefill.csv" \
  node --import tsx bench/native_cuda_profile.ts "$model" prefill > "$out/ncu_prefill_run.log" 2>&1
echo "ncu prefill rc=$?"; tail -3 "$out/ncu_prefill_run.log"
summarize "$out/ncu_prefill.csv" | tee "$out/ncu_prefill_summary.txt"
fi
[[ $stages == *" rounding "* ]] || exit 0
node --import tsx -e 'import("./test/native/models.ts").then(m => console.log(m.testQwen3Dir() + " " + m.testLlamaDir()))' > "$out/test_models.txt"
timeout 200 python3 bench/native_cuda_hf.py rounding $(cat "$out/test_models.txt") "$model" 2>&1 | grep -v Warning | tee "$out/rounding.log" | tail -5
