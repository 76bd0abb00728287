#!/usr/bin/env bash
# Interleaved A/B of two ember servers on this machine: A and B alternate (A B A B …), each run a
# fresh server, so the machine's drift and noise fall on both sides. One line per run; compare
# the pairs, not runs minutes apart (RESULTS.md's session-2 A/B figures come from this).
#
#   A="--seq-buckets 8,16,24,32,40,48,56,64,80,96,112,128,160,192,224,256" B="" \
#     EXTRA="--quantize int8" bash benchmarks/ab.sh       # two flag sets, same code
#   A_REV=HEAD~1 EXTRA="--quantize int8" bash benchmarks/ab.sh   # an older commit's code as A
#   KIND=startup A_REV=HEAD~1 bash benchmarks/ab.sh             # ready seconds and RSS instead
#
# Environment: KIND load|startup [load]; N pairs [3]; A, B flags of each side; A_REV a git
# revision whose src/ runs side A (extracted with `git archive`); EXTRA flags for both sides;
# CONC [32], DURATION [10] for load; OUT [a temporary folder].
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
KIND=${KIND:-load} N=${N:-3} A=${A:-} B=${B:-} EXTRA=${EXTRA:-}
CONC=${CONC:-32} DURATION=${DURATION:-10}
OUT=${OUT:-$(mktemp -d /tmp/ember-ab.XXXX)}
A_ENV=""
if [ -n "${A_REV:-}" ]; then
  mkdir -p "$OUT/a-src"
  git archive "$A_REV" src | tar -x -C "$OUT/a-src"
  A_ENV="env PYTHONPATH=$OUT/a-src/src "
fi
for i in $(seq 1 "$N"); do
  for side in a b; do
    if [ $side = a ]; then flags=$A; prefix=$A_ENV; else flags=$B; prefix=""; fi
    cmd="${prefix}$ROOT/.venv/bin/python -m ember serve --host 127.0.0.1 --port {port} $flags $EXTRA"
    if [ "$KIND" = startup ]; then
      .venv/bin/ember bench startup --runs 1 --repeats 5 --no-plot --label "$side-$i" --cmd "$cmd" \
        --out "$OUT" 2>&1 | grep "ready median" | sed "s/^/$side $i /"
    else
      .venv/bin/ember bench load --concurrency "$CONC" --duration "$DURATION" --warmup 2 \
        --api openai --path /v1/embeddings --ready-timeout 180 --no-plot --label "$side-$i" \
        --cmd "$cmd" --out "$OUT" 2>&1 | grep "^c=" | sed "s/^/$side $i /"
    fi
  done
done
echo "JSON in $OUT"
