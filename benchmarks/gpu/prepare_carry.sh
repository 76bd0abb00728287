#!/usr/bin/env bash
# Build what benchmarks/gpu/run_gpu.sh carries to the GPU machine (both folders are git-ignored;
# 56 MB together, under the device tool's 64 MiB limit):
#   .whl/                        ember's serving wheels the device image lacks (cp312, manylinux)
#   .device/minilm-fp16/         the built-in all-MiniLM-L6-v2 with fp16 weights (45 MB, not 90)
#   .device/infinity-site.tar.xz Infinity 0.0.78 and the versions it needs, for `--target`-style
#                                use on its own PYTHONPATH (xz: 6 MB instead of 17 MB of wheels)
#
#   bash benchmarks/gpu/prepare_carry.sh      # from the repository root, with .venv built
#   NO_INFINITY=1 bash benchmarks/gpu/prepare_carry.sh   # ember alone (tests, family matrix)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY=${PY:-.venv/bin/python}
PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64)

rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q --no-deps "${PLAT[@]}" -d .whl \
  fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 pydantic==2.14.3 pydantic_core==2.50.4 \
  pydantic-settings==2.16.3 orjson==3.13.0 platformdirs==4.14.7 httptools==0.9.0 \
  annotated-types==0.8.0 typing-inspection==0.4.5 python-dotenv==1.2.4 sniffio==1.3.1 \
  opentelemetry-api==1.45.2 typing_extensions==4.16.0 anyio==4.16.0 annotated-doc==0.0.7

rm -rf .device && mkdir -p .device
"$PY" - <<'PYEOF'
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from ember.models import builtin_path

src, dst = builtin_path(), Path(".device/minilm-fp16")
dst.mkdir(parents=True)
for name in ("config.json", "config_sentence_transformers.json", "modules.json",
             "sentence_bert_config.json", "special_tokens_map.json", "tokenizer.json",
             "tokenizer_config.json", "vocab.txt"):
    shutil.copy(src / name, dst / name)
shutil.copytree(src / "1_Pooling", dst / "1_Pooling")
weights = load_file(str(src / "model.safetensors"))
save_file({k: v.half().contiguous() if v.is_floating_point() else v for k, v in weights.items()},
          str(dst / "model.safetensors"), metadata={"format": "pt"})
PYEOF

if [ -n "${NO_INFINITY:-}" ]; then du -sh .whl .device; exit 0; fi
tmp=$(mktemp -d)
"$PY" -m pip download -q --no-deps "${PLAT[@]}" -d "$tmp/w" infinity-emb==0.0.78 \
  "transformers==4.57.6" "huggingface-hub==0.36.2" sentence-transformers==3.4.1 \
  "tokenizers==0.22.2" prometheus-fastapi-instrumentator==8.1.0 typer==0.12.5 click==8.1.8 \
  rich==13.9.4 uvicorn==0.32.1
"$PY" -m pip install -q --no-index --no-deps --no-compile --target "$tmp/site" "$tmp"/w/*.whl
tar cf - -C "$tmp/site" . | xz -9 -T0 > .device/infinity-site.tar.xz
rm -rf "$tmp"
du -sh .whl .device
