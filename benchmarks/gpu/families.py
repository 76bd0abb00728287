"""The model-family matrix on a GPU: tiny random-weight models of each family, each served by a
real `ember serve --device cuda` started twice (the first start also compiles the CuPy kernels
or fills the bytecode cache; the second has every cache warm), with spawn → first 200 from
`/ready`, the backend `/info` names, and the served output against transformers in fp32.

    PYTHONPATH=src:. python benchmarks/gpu/families.py --out results.json   # from the repo root

The BERT-shaped folders and their reference come from tests/unit/backends/families.py (the GPU
tests use the same); Qwen3, MPNet, ModernBERT and DeBERTa-v2 stand for the families torch serves
on CUDA (the last two from ember.bench.tiny_families, with their own tokenizers).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tests.unit.backends import families
from tests.unit.backends.common import PAIRS, batch_of, cosines

from ember.bench import tiny_families, tiny_models
from ember.models import Task, inspect_model

TEXTS = [
    "A man is eating food.",
    "The new movie is awesome, the best of the year.",
    "ember warms every shape before it says it is ready",
    "a much longer text that goes on " * 12,
]
MATRIX: list[tuple[str, Task, str]] = [
    ("bert", Task.EMBED, "mean"),
    ("roberta", Task.EMBED, "mean"),
    ("xlm-roberta", Task.EMBED, "cls"),
    ("distilbert", Task.EMBED, "mean"),
    ("bert", Task.RERANK, "mean"),
    ("xlm-roberta", Task.RERANK, "mean"),
    ("qwen3", Task.EMBED, "lasttoken"),
    ("mpnet", Task.EMBED, "mean"),
    ("modernbert", Task.EMBED, "mean"),
    ("deberta-v2", Task.EMBED, "mean"),
]
OTHER = ("modernbert", "deberta-v2")
"""Built by `ember.bench.tiny_families` (their own tokenizers), like the CPU family matrix."""


def build_other(root: Path, family: str, pooling: str) -> Path:
    """A tiny Qwen3 or MPNet embedding folder with the built-in tokenizer."""
    import torch
    import transformers

    path = root / f"{family}-embed-{pooling}"
    if (path / "config.json").is_file():
        return path
    torch.manual_seed(7)
    if family == "qwen3":
        config = transformers.Qwen3Config(
            vocab_size=tiny_models.VOCAB_SIZE, hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            max_position_embeddings=512, initializer_range=0.2, pad_token_id=0,
        )  # fmt: skip
        model = transformers.Qwen3Model(config)
    else:
        config = transformers.MPNetConfig(
            vocab_size=tiny_models.VOCAB_SIZE, hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4, initializer_range=0.2,
        )  # fmt: skip
        model = transformers.MPNetModel(config)
    path.mkdir(parents=True)
    model.eval().save_pretrained(path)
    tiny_models.copy_tokenizer(path)
    families.sentence_transformers_files(path, pooling, width=64)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def serve_once(path: Path, task: Task, *, log: Path, extra: list[str]) -> dict[str, Any]:
    """Start `ember serve` on `path`, time it to ready, ask it once, stop it."""
    port = free_port()
    cmd = [sys.executable, "-m", "ember", "serve", "--model", str(path),
           "--host", "127.0.0.1", "--port", str(port), "--exit-on-failure", *extra]  # fmt: skip
    started = time.perf_counter()
    with log.open("a") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    result: dict[str, Any] = {"ok": False}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            while time.perf_counter() - started < 120:
                if proc.poll() is not None:
                    result["error"] = f"exited with {proc.returncode} before ready"
                    return result
                try:
                    if client.get("/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.02)
            else:
                result["error"] = "not ready within 120 s"
                return result
            result["ready_s"] = round(time.perf_counter() - started, 3)
            info = client.get("/info").json()
            result["info"] = info
            if task is Task.EMBED:
                body = {"inputs": TEXTS, "normalize": False}
                result["output"] = client.post("/embed", json=body).json()
            else:
                query, docs = PAIRS[0][0], [d for _, d in PAIRS]
                body = {"query": query, "texts": docs, "raw_scores": True}
                ranked = client.post("/rerank", json=body).json()
                result["output"] = [s["score"] for s in sorted(ranked, key=lambda s: s["index"])]
            result["ok"] = True
            return result
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def backend_of(info: dict[str, Any]) -> str:
    """The backend and implementation `/info` reports, wherever its version nests them."""
    text = json.dumps(info)
    for name in ("cupy", "torch", "onnx"):
        if f'"backend": "{name}"' in text:
            impl = next(
                (m for m in ("native-", "transformers") if f'"implementation": "{m}' in text), ""
            )
            return f"{name} ({impl.rstrip('-') or '?'})" if impl else name
    return "?"


def compare(path: Path, family: str, task: Task, pooling: str, served: list[Any]) -> float:
    """cos (embed) or max |Δ| (rerank logits) of the served output vs transformers fp32."""
    spec = inspect_model(str(path))
    if task is Task.EMBED:
        batch = batch_of(spec, list(TEXTS))
        ref = families.reference(path, family, task, batch, pooling=pooling)[: len(TEXTS)]
        return float(cosines(np.asarray(served, dtype=np.float32), ref).min())
    pairs = [(PAIRS[0][0], d) for _, d in PAIRS]
    batch = batch_of(spec, list(pairs))
    ref = families.reference(path, family, task, batch, pooling=pooling)[: len(pairs), 0]
    return float(np.abs(np.asarray(served, dtype=np.float32) - ref).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/ember-families"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--starts", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated families (default: all)")
    parser.add_argument("--serve-args", default="--device cuda", help="added to `ember serve`")
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))
    args.root.mkdir(parents=True, exist_ok=True)
    rows = []
    for family, task, pooling in MATRIX:
        if only and family not in only:
            continue
        if family in families.FAMILIES:
            path = families.build(args.root, family, task, pooling=pooling)
        elif family in OTHER:
            path = args.root / f"{family}-embed-{pooling}"
            if not (path / "config.json").is_file():
                tiny_families.build_family(path, family)
        else:
            path = build_other(args.root, family, pooling)
        row: dict[str, Any] = {"family": family, "task": task.value, "pooling": pooling}
        log, extra = args.out.with_suffix(".log"), args.serve_args.split()
        starts = [serve_once(path, task, log=log, extra=extra) for _ in range(args.starts)]
        row["ready_s"] = [s.get("ready_s") for s in starts]
        row["errors"] = [s["error"] for s in starts if "error" in s]
        last = starts[-1]
        if last["ok"]:
            row["backend"] = backend_of(last["info"])
            metric = compare(path, family, task, pooling, last["output"])
            row["cos_min" if task is Task.EMBED else "max_abs_diff"] = round(metric, 6)
        rows.append(row)
        print(json.dumps(row), flush=True)
    try:
        query = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
        gpu = subprocess.run(query, capture_output=True, text=True, check=False).stdout.strip()
    except FileNotFoundError:
        gpu = "none"
    args.out.write_text(json.dumps({"gpu": gpu, "pid": os.getpid(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
