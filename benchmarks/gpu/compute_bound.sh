#!/usr/bin/env bash
# Issue 16's compute-bound GPU figures in one device call: the fused attention against the
# materialised one (benchmarks/gpu/attention.py), the model-only ceiling (ceiling.py), and ember
# through HTTP on a BERT-base-sized model (bert_base.py), 32 texts of 202 tokens a request, with
# this tree's code and, for comparison, another tree's (BASE, e.g. the main checkout).
#
#   BASE=/path/to/main STEPS="setup build attention ceiling http minilm" \
#     bash benchmarks/gpu/compute_bound.sh      # carry: .whl .device (run_gpu.sh's)
#
# Steps: setup (run_gpu.sh's: wheels, fp32 MiniLM at /tmp/minilm-fp32) | build (BERT-base-sized
# model at /tmp/bert-base) | attention | ceiling | http (BERT-base: this tree 1 and 2 workers,
# BASE 1 worker; 202- and 152-token texts) | minilm (c=32 single text, BASE and this tree
# alternated, twice). FLASH_FROM overrides cupy_encoder.FLASH_FROM in the served processes
# (`auto`: attention.py's choice). Results in $R and $OUT/results.tgz.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
R=${R:-/tmp/gpu-results}
OUT=${OUT:-/tmp/gpu-out}
BASE=${BASE:-}
STEPS=${STEPS:-setup build attention ceiling http minilm}
DURATION=${DURATION:-6}
WARMUP=${WARMUP:-2}
FLASH_FROM=${FLASH_FROM:-auto}
PY=${PY:-python3}
BERT=/tmp/bert-base
MINILM=/tmp/minilm-fp32
mkdir -p "$R" "$OUT" /tmp/ff
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=true
log() { echo "== $(date -u +%T) $*"; }
save() { tar czf "$OUT/results.tgz" -C "$R" . 2>/dev/null || true; }

# Sets FLASH_FROM in every served process (workers too) before ember reads it.
cat > /tmp/ff/sitecustomize.py <<'EOF'
import os

if os.environ.get("EMBER_TEST_FLASH_FROM"):
    import ember.backends.cupy_encoder as encoder

    encoder.FLASH_FROM = int(os.environ["EMBER_TEST_FLASH_FROM"])
EOF

flash_from() {
  if [ "$FLASH_FROM" = auto ]; then
    "$PY" -c "import json; print(json.load(open('$R/attention.json'))['flash_from'])" 2>/dev/null || echo ""
  else
    echo "$FLASH_FROM"
  fi
}

# served LABEL SRC MODEL "SERVE ARGS" "LOAD SPECS": LOAD SPECS is a list of batch:words:conc
served() {
  local label=$1 src=$2 model=$3 extra=$4 specs=$5 ff pid t0 ready
  ff=""; [ "$src" = "$ROOT/src" ] && ff=$(flash_from)
  t0=$("$PY" -c 'import time; print(time.time())')
  setsid env EMBER_TEST_FLASH_FROM="$ff" PYTHONPATH="/tmp/ff:/tmp/site:$src" "$PY" -m ember serve \
    --host 127.0.0.1 --port 8700 --model "$model" --exit-on-failure $extra > "$R/$label.server.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 900); do
    curl -sf -o /dev/null http://127.0.0.1:8700/ready && break
    sleep 0.05
  done
  ready=$("$PY" -c "import time; print(round(time.time() - $t0, 2))")
  log "$label ready after $ready s (flash_from=${ff:-default})"
  curl -s http://127.0.0.1:8700/info > "$R/$label.info.json"
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 100 > "$R/smi-$label.csv" 2>/dev/null &
  local smi=$!
  for spec in $specs; do
    IFS=: read -r batch words conc <<< "$spec"
    PYTHONPATH="/tmp/site:$ROOT/src" timeout 120 "$PY" -m ember bench load --url http://127.0.0.1:8700 \
      --server-pid "$pid" --api openai --batch "$batch" --words "$words" --concurrency "$conc" \
      --duration "$DURATION" --warmup "$WARMUP" --label "$label-b$batch-w$words" --out "$R" --no-plot \
      > "$R/$label-b$batch-w$words.load.log" 2>&1 || log "load $label $spec failed"
    "$PY" - "$R/load-$label-b$batch-w$words.json" <<'EOF2'
import json, sys
d = json.load(open(sys.argv[1]))
for lv in d["levels"]:
    print(f"  {d['label']} c={lv['concurrency']}: {lv['emb_per_s']:.0f} emb/s, {lv['req_per_s']:.0f} req/s, "
          f"p50 {lv['latency_ms']['p50']:.1f} ms, p99 {lv['latency_ms']['p99']:.1f} ms, errors {lv['errors']}, "
          f"server cpu {lv.get('server_cpu_pct')} %")
EOF2
  done
  kill "$smi" 2>/dev/null
  echo "$label GPU busy mean: $(awk '{s+=$1; n++} END {if (n) printf "%.1f %%", s/n}' "$R/smi-$label.csv")"
  kill -TERM -- -"$pid" 2>/dev/null; sleep 1; kill -KILL -- -"$pid" 2>/dev/null
  save
}

for step in $STEPS; do
  log "step $step"
  case $step in
    setup) STEPS=setup R=$R OUT=$OUT bash benchmarks/gpu/run_gpu.sh 2>&1 | tail -5 ;;
    build) "$PY" benchmarks/gpu/bert_base.py --tokenizer-from "$MINILM" --out "$BERT" 2>&1 | tail -2 ;;
    attention)
      PYTHONPATH="/tmp/site:$ROOT/src" timeout 240 "$PY" benchmarks/gpu/attention.py \
        --bert-base "$BERT" --minilm "$MINILM" --out "$R/attention.json" 2>&1 | cut -c1-1600
      save ;;
    ceiling)
      timeout 120 "$PY" benchmarks/gpu/ceiling.py --model "$BERT" --out "$R/ceiling.json" 2>&1 \
        | grep -v Warning
      save ;;
    http)
      # One process, two, and the default (`--workers auto`: up to 4 a GPU on a 16-core host).
      served ember-bert "$ROOT/src" "$BERT" "--workers 1" "32:200:8,16 32:150:8"
      served ember-bert-w2 "$ROOT/src" "$BERT" "--workers 2" "32:200:8,16"
      served ember-bert-default "$ROOT/src" "$BERT" "" "32:200:8,16"
      [ -n "$BASE" ] && served base-bert "$BASE/src" "$BERT" "" "32:200:8,16 32:150:8"
      ;;
    minilm)
      for i in 1 2; do
        [ -n "$BASE" ] && served "base-minilm-$i" "$BASE/src" "$MINILM" "--workers 1" "1:40:32"
        served "ember-minilm-$i" "$ROOT/src" "$MINILM" "--workers 1" "1:40:32"
      done ;;
    *) log "unknown step $step" ;;
  esac
done
save
log done
