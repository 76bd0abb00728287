#!/usr/bin/env bash
# ember against Infinity's ONNX (optimum) engine at one concurrency, alternated: each round runs
# every server once, a fresh process each (ember, then an older ember if A_REV is set, then
# Infinity), so the machine's drift and noise fall on all of them. One line per run; compare the
# medians of the rounds. Take the cpu lock around it on a shared machine.
#
#   N=5 bash benchmarks/cpu_vs_infinity.sh                       # this tree vs Infinity
#   A_REV=main N=5 bash benchmarks/cpu_vs_infinity.sh            # + main's code, same rounds
#   EXTRA="--quantize int8" SERVERS="ember" bash benchmarks/cpu_vs_infinity.sh
#
# Environment: N rounds [5]; CONC [32]; DURATION [10] measured seconds; WARMUP [3]; WORDS [40];
# EXTRA flags for every ember; A_REV a git revision run as "ember-<rev>" (its src/ extracted
# with `git archive`); SERVERS to leave one out [ember ember-rev infinity]; OUT [a temporary
# folder]. Needs .venv-infinity (benchmarks/peers/setup_infinity.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
N=${N:-5} CONC=${CONC:-32} DURATION=${DURATION:-10} WARMUP=${WARMUP:-3} WORDS=${WORDS:-40}
EXTRA=${EXTRA:-} SERVERS=${SERVERS:-ember ember-rev infinity}
OUT=${OUT:-$(mktemp -d /tmp/ember-vs-inf.XXXX)}
PY=$ROOT/.venv/bin/python
INF=${INFINITY_VENV:-$ROOT/.venv-infinity}
[ -x "$INF/bin/infinity_emb" ] || INF=/work/main/.venv-infinity
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1
export HUGGINGFACE_HUB_CACHE=$INF/hf-cache HF_HUB_CACHE=$INF/hf-cache
mkdir -p "$OUT"
REV_ENV=""
if [ -n "${A_REV:-}" ]; then
  mkdir -p "$OUT/rev-src"
  git archive "$A_REV" src | tar -x -C "$OUT/rev-src"
  REV_ENV="env PYTHONPATH=$OUT/rev-src/src "
fi
echo "== $(date -u +%FT%TZ) git $(git rev-parse --short HEAD) N=$N CONC=$CONC DURATION=$DURATION" \
  "EXTRA='$EXTRA' A_REV=${A_REV:-} load $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq 1 "$N"); do
  for name in $SERVERS; do
    case $name in
      ember) cmd="$PY -m ember serve --host 127.0.0.1 --port {port} $EXTRA"
        path=/v1/embeddings ready=/ready ;;
      ember-rev) [ -n "$REV_ENV" ] || continue
        cmd="${REV_ENV}$PY -m ember serve --host 127.0.0.1 --port {port} $EXTRA"
        path=/v1/embeddings ready=/ready ;;
      infinity) cmd="bash -c 'cd $INF/share/minilm-onnx && exec $INF/bin/infinity_emb v2"
        cmd+=" --model-id . --engine optimum --pooling-method mean --host 127.0.0.1 --port {port}'"
        path=/embeddings ready=/health ;;
      *) echo "unknown server $name" >&2; exit 2 ;;
    esac
    "$PY" -m ember bench load --concurrency "$CONC" --duration "$DURATION" --warmup "$WARMUP" \
      --words "$WORDS" --api openai --path "$path" --ready-path "$ready" --ready-timeout 300 \
      --no-plot --label "$name-$i" --cmd "$cmd" --out "$OUT" 2>&1 | grep "^c=" \
      | sed "s/^/$name $i /"
  done
done
"$PY" - "$OUT" <<'PY'
import json, statistics, sys
from collections import defaultdict
from pathlib import Path

runs = defaultdict(list)
for f in sorted(Path(sys.argv[1]).glob("load-*.json")):
    level = json.loads(f.read_text())["levels"][0]
    runs[f.stem[5:].rsplit("-", 1)[0]].append(level)
summary = {
    name: {
        "req_per_s_median": statistics.median(l["req_per_s"] for l in levels),
        "req_per_s": [l["req_per_s"] for l in levels],
        "p99_ms_median": statistics.median(l["latency_ms"]["p99"] for l in levels),
        "server_cpu_pct_median": statistics.median(l["server_cpu_pct"] or 0 for l in levels),
        "other_cpu_pct_median": statistics.median(l["other_cpu_pct"] or 0 for l in levels),
    }
    for name, levels in runs.items()
}
if "infinity" in summary:
    for name, s in summary.items():
        s["ratio_to_infinity"] = round(s["req_per_s_median"] / summary["infinity"]["req_per_s_median"], 3)
(Path(sys.argv[1]) / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
print(json.dumps(summary, indent=1))
PY
echo "JSON in $OUT"
