"""ONNX Runtime fusions per model family on CPU: each family at MiniLM size, prepared twice
(`--optimize 0`, unfused, and the default, fused), timed on the same batches (issue 13).

    PYTHONPATH=src .venv/bin/python benchmarks/fusion_families.py \
        [--families bert,qwen3] [--shapes 32x48,1x48] [--runs 21] [--threads 2] [--out FILE]

Each model is random-weight, built with `ember.bench.tiny_families`' tokenizers and configs at
all-MiniLM-L6-v2's size (hidden 384, 6 layers, 12 heads, intermediate 1536; Qwen3: 6 heads of
64 with 2 KV heads), saved as a sentence-transformers folder and prepared by `artifact.prepare`.
Sessions are opened as serving opens them (`ort_session.create_session` at `serving_level`):
the unfused artifact is optimised by ORT at level 99 in the session (ORT's own online fusions
apply there), the fused one is served at level 0. Runs alternate fused/unfused (order swapped
each round), after warm-up runs; the median of `--runs` each is reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ember.backends.artifact import log_steps, prepare
from ember.backends.ort_session import create_session, serving_level
from ember.bench.tiny_families import FAMILIES, FAMILY_STD, family_config, family_tokenizer
from ember.manifest import DEFAULT_OPTIMIZE, MODEL_FILE, Fusion, Manifest, Options
from ember.models import inspect_model

FAMILY_ROWS = {
    "bert": "bert-mean",
    "roberta": "roberta-mean",
    "xlm-roberta": "xlm-roberta-cls",
    "distilbert": "distilbert",
    "mpnet": "mpnet",
    "modernbert": "modernbert",
    "deberta-v2": "deberta-v2",
    "qwen3": "qwen3",
}
"""Family → the `FAMILIES` row whose pooling, normalisation and prompts it takes."""
HIDDEN = 384
POSITIONS = 128
"""Enough for the timed 48 tokens with room; the graph's shapes are dynamic anyway."""
_MINILM = {
    "hidden_size": HIDDEN,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "max_position_embeddings": POSITIONS,
}
_CONTRIB = "com.microsoft"


def sizes(model_type: str, pad_token_id: int) -> dict[str, Any]:
    """Config overrides that make `family_config`'s tiny model MiniLM-sized."""
    if model_type == "distilbert":
        return {
            "dim": HIDDEN,
            "n_layers": 6,
            "n_heads": 12,
            "hidden_dim": 1536,
            "max_position_embeddings": POSITIONS,
        }
    out = dict(_MINILM)
    if model_type in ("roberta", "xlm-roberta", "mpnet"):
        # Their positions start after padding_idx, as in the real checkpoints (514 = 512 + 2).
        out["max_position_embeddings"] = POSITIONS + pad_token_id + 1
    if model_type == "modernbert":
        out.update(global_attn_every_n_layers=3, local_attention=128)  # ModernBERT-base's
    if model_type == "qwen3":
        out.update(num_attention_heads=6, num_key_value_heads=2, head_dim=64)
    return out


def build(path: Path, family: str) -> Path:
    """A seeded random-weight sentence-transformers folder of `family` at MiniLM size."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import AutoModel as _AutoModel

    row = FAMILIES[FAMILY_ROWS[family]]
    tokenizer = family_tokenizer(row.model_type)
    tokenizer.model_max_length = POSITIONS
    pad = int(tokenizer.pad_token_id)
    config = family_config(
        row.model_type, vocab_size=len(tokenizer), pad_token_id=pad, **sizes(row.model_type, pad)
    )
    auto: Any = _AutoModel  # untyped in transformers
    torch.manual_seed(row.seed)
    weights = path / "transformers"
    weights.mkdir(parents=True)
    auto.from_config(config).save_pretrained(weights)
    tokenizer.save_pretrained(weights)
    modules: list[Any] = [
        Transformer(str(weights), max_seq_length=POSITIONS),
        Pooling(HIDDEN, pooling_mode=row.pooling),
    ]
    if row.normalize:
        modules.append(Normalize())
    SentenceTransformer(modules=modules, device="cpu", prompts=dict(row.prompts)).save(str(path))
    return path


def contrib_ops(model: Path) -> dict[str, int]:
    """ORT contrib operators in a saved graph, by type."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    return dict(sorted(Counter(n.op_type for n in graph.node if n.domain == _CONTRIB).items()))


def served_ops(artifact: Path, threads: int) -> dict[str, int]:
    """Contrib operators in the graph a serving session runs for an `--optimize 0` artifact."""
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "served.onnx"
        create_session(
            artifact / MODEL_FILE, threads=threads, level=serving_level(0), save_to=saved
        )
        return contrib_ops(saved)


def feeds(
    session: ort.InferenceSession, rows: int, seq: int, vocab: int, rng: np.random.Generator
) -> dict[str, np.ndarray[Any, Any]]:
    """Random ids past the special tokens, full attention, token type 0; only inputs it takes."""
    ids = rng.integers(10, vocab, (rows, seq)).astype(np.int64)
    arrays = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "token_type_ids": np.zeros_like(ids),
    }
    return {i.name: arrays[i.name] for i in session.get_inputs()}


def cosine(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    """The smallest per-row cosine between two output batches."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min())


def measure(
    family: str, root: Path, *, shapes: list[tuple[int, int]], runs: int, threads: int
) -> dict[str, Any]:
    """Build, prepare twice, and time one family; its result row."""
    started = time.perf_counter()
    folder = build(root / family, family)
    built_s = time.perf_counter() - started
    spec = inspect_model(str(folder), name=family)
    variants: dict[str, tuple[ort.InferenceSession, Manifest, Path, float]] = {}
    for label, optimize in (("unfused", 0), ("fused", DEFAULT_OPTIMIZE)):
        dest = root / "cache" / f"{family}-{optimize}"
        dest.parent.mkdir(exist_ok=True)
        t0 = time.perf_counter()
        manifest = prepare(spec, Options(optimize=optimize), dest=dest, step=log_steps)
        prepared_s = time.perf_counter() - t0
        session = create_session(dest / MODEL_FILE, threads=threads, level=serving_level(optimize))
        variants[label] = (session, manifest, dest, prepared_s)
    fused, unfused = variants["fused"][0], variants["unfused"][0]
    vocab = int(json.loads((folder / "config.json").read_text())["vocab_size"])
    rng = np.random.default_rng(0)
    timings: dict[str, Any] = {}
    worst_cos = 1.0
    for rows, seq in shapes:
        feed = feeds(unfused, rows, seq, vocab, rng)
        out_f, out_u = fused.run(None, feed)[0], unfused.run(None, feed)[0]
        worst_cos = min(worst_cos, cosine(out_f, out_u))
        for _ in range(2):
            fused.run(None, feed)
            unfused.run(None, feed)
        times: dict[str, list[float]] = {"fused": [], "unfused": []}
        for i in range(runs):
            order = ("fused", "unfused") if i % 2 == 0 else ("unfused", "fused")
            for label in order:
                session = variants[label][0]
                t0 = time.perf_counter()
                session.run(None, feed)
                times[label].append(time.perf_counter() - t0)
        f_ms = statistics.median(times["fused"]) * 1e3
        u_ms = statistics.median(times["unfused"]) * 1e3
        timings[f"{rows}x{seq}"] = {
            "fused_ms": round(f_ms, 2),
            "unfused_ms": round(u_ms, 2),
            "unfused_over_fused": round(u_ms / f_ms, 3),
        }
    manifest = variants["fused"][1]
    # None only in manifests written before the fusion record existed.
    record = manifest.fusion or Fusion(fused=manifest.fused)
    return {
        "family": family,
        "model_type": spec.model_type,
        "pooling": spec.pooling,
        "build_s": round(built_s, 1),
        "prepare_s": {k: round(v[3], 1) for k, v in variants.items()},
        "fusion": {
            "fused": record.fused,
            "ort_model_type": record.model_type,
            "ops": record.ops,
            "error": record.error,
        },
        # What each artifact's saved graph holds, and what ORT's level-99 session optimisation
        # makes of the unfused one: the graph that `--optimize 0` really serves.
        "contrib_ops": {k: contrib_ops(v[2] / MODEL_FILE) for k, v in variants.items()},
        "contrib_ops_unfused_as_served": served_ops(variants["unfused"][2], threads),
        "timings": timings,
        "min_cosine_fused_vs_unfused": round(worst_cos, 7),
    }


def table(rows: list[dict[str, Any]], shapes: list[str]) -> str:
    """The results as a markdown table."""
    head = ["family", "fusion record (fused artifact)"]
    for s in shapes:
        head += [f"{s} unfused ms", f"{s} fused ms", f"{s} ratio"]
    head.append("min cos")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        f = r["fusion"]
        ops = ", ".join(f"{k} {v}" for k, v in f["ops"].items()) or "none"
        record = f"{ops}" + (f" (error: {f['error']})" if f["error"] else "")
        cells = [r["family"], record]
        for s in shapes:
            t = r["timings"][s]
            cells += [str(t["unfused_ms"]), str(t["fused_ms"]), f"{t['unfused_over_fused']:.2f}"]
        cells.append(f"{r['min_cosine_fused_vs_unfused']:.6f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILY_ROWS))
    parser.add_argument("--shapes", default="32x48,1x48")
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    shapes = [(int(r), int(s)) for r, s in (x.split("x") for x in args.shapes.split(","))]
    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families.split(","):
            rows.append(
                measure(family, Path(tmp), shapes=shapes, runs=args.runs, threads=args.threads)
            )
            print(json.dumps(rows[-1]), flush=True)
    result = {
        "command": "benchmarks/fusion_families.py "
        + " ".join(f"--{k} {v}" for k, v in vars(args).items() if k != "out" and v is not None),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "onnxruntime": ort.__version__,
        "threads": args.threads,
        "runs": args.runs,
        "weight_std": FAMILY_STD,
        "total_s": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(table(rows, [f"{r}x{s}" for r, s in shapes]))
    print(f"total {result['total_s']} s")


if __name__ == "__main__":
    main()
