"""The analysis half of rerank_bench.py: parity (a fixed query, documents and classifier texts,
each route's scores, every pair of sources compared) and the summary over rounds."""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ember.bench.client import Endpoint, HttpConnection, make_text

Scores = dict[int, float]


def parity_set(seed: int = 7) -> dict[str, Any]:
    """A fixed query and 32 documents of 3 to 150 words plus one past 512 tokens (truncated
    longest-first by both servers), and 8 classifier texts of varied lengths."""
    rng = random.Random(seed)
    lengths = [3 + (i * 149) // 30 for i in range(31)] + [600]
    return {
        "query": make_text(rng, 10),
        "docs": [make_text(rng, n) for n in lengths],
        "texts": [make_text(rng, n) for n in (1, 5, 12, 30, 60, 120, 250, 600)],
    }


async def fetch_scores(
    endpoint: Endpoint,
    path: str,
    body: Callable[[bool], bytes],
    parse: Callable[[bytes], Any],
) -> dict[str, Any]:
    """The parity set's answers from one route, without and with raw scores."""
    conn = HttpConnection(endpoint.host, endpoint.port, timeout=120)
    out: dict[str, Any] = {}
    try:
        for kind, raw in (("sigmoid", False), ("raw", True)):
            response = await conn.request("POST", path, body(raw))
            if response.status != 200:
                raise RuntimeError(f"{path}: {response.status} {response.body[:200]!r}")
            out[kind] = parse(response.body)
    finally:
        await conn.close()
    return out


def parity_report(
    ps: Mapping[str, Any],
    reranker: Path,
    classifier: Path,
    rerank_scores: Mapping[str, Mapping[str, Scores]],
    predictions: Mapping[str, list[dict[str, float]]] | None,
) -> dict[str, Any]:
    """Max abs differences, rank correlation and top-5 overlap between every pair of sources."""
    import numpy as np

    from ember.bench.tiny_models import CLASSIFY_LABELS, reference_logits, sigmoid, softmax

    docs = ps["docs"]
    logits = reference_logits(reranker, [ps["query"]] * len(docs), docs, max_length=512)[:, 0]
    ref = {
        "raw": {i: float(v) for i, v in enumerate(logits)},
        "sigmoid": {i: float(v) for i, v in enumerate(sigmoid(logits))},
    }
    sources: dict[str, Mapping[str, Scores]] = {"transformers": ref, **rerank_scores}

    def ranks(s: Scores) -> Any:
        return np.array([s[k] for k in sorted(s)]).argsort().argsort()

    def top5(s: Scores) -> set[int]:
        return set(sorted(s, key=lambda i: -s[i])[:5])

    names = list(sources)
    pairs: dict[str, dict[str, float]] = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            sa, sb = sources[a], sources[b]
            pairs[f"{a} vs {b}"] = {
                **{k: max(abs(sa[k][j] - sb[k][j]) for j in sa[k]) for k in ("sigmoid", "raw")},
                "spearman": round(float(np.corrcoef(ranks(sa["raw"]), ranks(sb["raw"]))[0, 1]), 4),
                "top5_overlap": len(top5(sa["raw"]) & top5(sb["raw"])),
            }
    sig = ref["sigmoid"]
    report: dict[str, Any] = {
        "query": ps["query"],
        "doc_words": [len(d.split()) for d in docs],
        "rerank": {
            "score_range_sigmoid": [min(sig.values()), max(sig.values())],
            "logit_range": [float(logits.min()), float(logits.max())],
            "max_abs_diff": pairs,
            "scores": sources,
        },
    }
    if predictions is not None:
        logits = reference_logits(classifier, ps["texts"], max_length=512)
        labels = [CLASSIFY_LABELS[j] for j in range(len(CLASSIFY_LABELS))]

        def matrix(rows: list[dict[str, float]]) -> Any:
            return np.array([[row[label] for label in labels] for row in rows], dtype=np.float64)

        report["classify"] = {
            "text_words": [len(t.split()) for t in ps["texts"]],
            "max_abs_diff": {
                "ember /predict vs transformers": {
                    "softmax": float(
                        np.abs(matrix(predictions["softmax"]) - softmax(logits)).max()
                    ),
                    "raw": float(np.abs(matrix(predictions["raw"]) - logits).max()),
                }
            },
        }
    return report


def summarize(
    load: Mapping[str, Any] | None,
    first: Mapping[str, Any] | None,
    parity: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Medians over rounds per (route, concurrency), ember/Infinity ratios, worst first ratios."""
    out: dict[str, Any] = {}
    if load:
        table: dict[str, dict[int, dict[str, Any]]] = {}
        for doc in load["docs"].values():
            for level in doc["levels"]:
                table.setdefault(level["route"], {}).setdefault(
                    level["concurrency"], {}
                ).setdefault("levels", []).append(level)
        rows: dict[str, dict[str, Any]] = {}
        for route, by_c in table.items():
            for c, cell in sorted(by_c.items()):
                levels = cell["levels"]
                rows.setdefault(route, {})[str(c)] = {
                    "req_per_s": statistics.median(lv["req_per_s"] for lv in levels),
                    "docs_per_s": statistics.median(lv["docs_per_s"] for lv in levels),
                    "p50_ms": statistics.median(lv["latency_ms"]["p50"] or 0 for lv in levels),
                    "p99_ms": statistics.median(lv["latency_ms"]["p99"] or 0 for lv in levels),
                    "errors": sum(sum(lv["errors"].values()) for lv in levels),
                    "rounds": len(levels),
                }
        out["load"] = rows
        base = rows.get("infinity /rerank")
        if base:
            out["ratio_vs_infinity"] = {
                route: {
                    c: round(cell["req_per_s"] / base[c]["req_per_s"], 2)
                    for c, cell in cells.items()
                    if c in base and base[c]["req_per_s"]
                }
                for route, cells in rows.items()
                if route != "infinity /rerank"
            }
        out["ready_s"] = {
            label: [s["ready_s"] for s in doc["starts"]] for label, doc in load["docs"].items()
        }
        out["rss_mb_at_ready"] = {
            label: [s["rss_mb_at_ready"] for s in doc["starts"]]
            for label, doc in load["docs"].items()
        }
    if first:
        out["first"] = first["doc"]["summary"]
    if parity:
        out["parity_max_abs_diff"] = {
            "rerank": parity["rerank"]["max_abs_diff"],
            **({"classify": parity["classify"]["max_abs_diff"]} if "classify" in parity else {}),
        }
    return out


def print_markdown(summary: Mapping[str, Any]) -> None:
    if "load" in summary:
        print("\n| route | c | req/s | docs/s | p50 ms | p99 ms | errors |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for route, cells in summary["load"].items():
            for c, cell in cells.items():
                print(
                    f"| {route} | {c} | {cell['req_per_s']:.2f} | {cell['docs_per_s']:.0f} | "
                    f"{cell['p50_ms']:.0f} | {cell['p99_ms']:.0f} | {cell['errors']} |"
                )
        for route, ratios in summary.get("ratio_vs_infinity", {}).items():
            print(f"{route} / infinity: " + ", ".join(f"c={c} {r}x" for c, r in ratios.items()))
    if "first" in summary:
        for name, worst in summary["first"].items():
            ratio, idle = worst["worst_ratio"], worst["worst_ratio_idle"]
            print(f"first {name}: worst ×{ratio} (idle-matched ×{idle})")
    if "parity_max_abs_diff" in summary:
        print(json.dumps(summary["parity_max_abs_diff"], indent=2))
