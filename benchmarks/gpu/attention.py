"""The fused attention kernel (`flash_attention`) against the materialised one, and what finer
GPU length buckets cost to warm (issue 16). Needs CUDA and CuPy; no torch.

    python benchmarks/gpu/attention.py --out attention.json [--bert-base DIR] [--minilm DIR]

Sections, each failure-isolated (its error is recorded, the rest still run):
- `compile`: NVRTC time of the kernel module with and without the fused kernel (fresh cache).
- `parity`: attention alone, fused vs materialised, every bucket length of `GPU_SEQ` and
  `CUPY_SEQ`, head sizes 16/32/64, a full row, a partly padded row, a batcher padding row (one
  token) and an all-masked row; both against a numpy fp32 reference on a few shapes.
- `attention`: attention alone per (rows, length), fused vs materialised, CUDA events.
- `forward`: each model's backend (`--bert-base`, `--minilm`) with the fused attention from
  length 0 and never: `backend.run` end to end per shape (graph replay, median of 20).
- `warmup`: every shape of a bucket set, largest first, on a fresh backend (what warm-up runs
  in the backend): GPU_SEQ and CUPY_SEQ for every batch at 32768 tokens, and the backend's
  own default buckets; seconds, shapes, and per-shape first / capture / replay ms.
The JSON's `flash_from` is the shortest length from which the fused kernel was faster at every
longer length measured (forward, BERT-base-sized model, 32 rows and full batches).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ember.backends import cupy_encoder
from ember.backends.base import GPU_SEQ, Batch
from ember.backends.bert import EncoderConfig
from ember.backends.cuda_kernels import SOURCE, Kernels
from ember.engine.buckets import Buckets
from ember.models import inspect_model

FORWARD_LENGTHS = [16, 32, 64, 96, 128, 160, 208, 256, 384, 512]
"""Lengths whose whole forward is timed (capped at each model's max length)."""
NEVER = 1 << 30
"""FLASH_FROM for a backend that never fuses."""
TOKENS = 32768
"""The CuPy backend's default max batch tokens."""


def _cupy() -> Any:
    import cupy as cp

    return cp


def _config(heads: int, dim: int) -> EncoderConfig:
    return EncoderConfig(
        family="bert",
        hidden=heads * dim,
        heads=heads,
        intermediate=4 * heads * dim,
        layers=1,
        eps=1e-12,
        act="gelu",
        position_offset=0,
        head_act="tanh",
    )


class Device:
    """The kernels, one stream and one cuBLAS handle, shared by every harness."""

    def __init__(self) -> None:
        from ember.backends.cublas import WORKSPACE_BYTES, Cublas

        cp = _cupy()
        self.kernels = Kernels.compile()
        self.kernels.load_all()
        self.stream = cp.cuda.Stream(non_blocking=True)
        self._blas_ws = cp.empty(WORKSPACE_BYTES, dtype=cp.uint8)
        cp.cuda.device.get_cublas_handle()  # loads the libcublas that Cublas binds
        self.blas = Cublas(stream=self.stream.ptr, workspace=self._blas_ws.data.ptr)


class Harness:
    """Attention alone over one workspace: random QKV projection and bias; row r of the batch
    has (seq, seq // 2 + 3, 1, 0)[r % 4] unmasked keys (full, padded, a batcher padding row,
    all masked)."""

    def __init__(self, dev: Device, *, heads: int, dim: int, rows: int, seq: int) -> None:
        cp = _cupy()
        self.cp, self.dev, self.config = cp, dev, _config(heads, dim)
        self.rows, self.seq = rows, seq
        tokens, hidden = rows * seq, heads * dim
        self.ws = cupy_encoder.Workspace(
            cp, tokens=tokens, seq=seq, config=self.config, width=1, scored_seq=seq
        )
        rng = np.random.default_rng(seq * 1000 + dim)
        self.qkv = rng.standard_normal((tokens, 3 * hidden)).astype(np.float16)
        self.bias = cp.asarray(rng.standard_normal(3 * hidden).astype(np.float16) * 0.5)
        self.mask = np.zeros((rows, seq), dtype=np.int32)
        for r in range(rows):
            self.mask[r, : (seq, seq // 2 + 3, 1, 0)[r % 4]] = 1
        self.view = self.ws.view(rows, seq)
        self.ws.inputs[rows * seq : 2 * rows * seq].set(self.mask.reshape(-1))
        self._load()

    def _load(self) -> None:
        tokens, hidden = self.rows * self.seq, self.config.hidden
        self.ws.tmp[: tokens * 3 * hidden].set(self.qkv.reshape(-1), stream=self.dev.stream)

    def launch(self, fused: bool) -> None:
        cupy_encoder.attention(
            kernels=self.dev.kernels,
            blas=self.dev.blas,
            v=self.view,
            config=self.config,
            qkv_bias=int(self.bias.data.ptr),
            fused=fused,
        )

    def run(self, fused: bool) -> np.ndarray:
        """The merged context (tokens, hidden) as fp32 numpy."""
        tokens, hidden = self.rows * self.seq, self.config.hidden
        self._load()
        with self.dev.stream:
            self.launch(fused)
        self.dev.stream.synchronize()
        context = self.ws.x2 if fused else self.ws.tmp  # attention()'s first return value
        return np.asarray(context[: tokens * hidden].get(), dtype=np.float32).reshape(tokens, -1)

    def time_ms(self, fused: bool, repeats: int = 20) -> float:
        """Mean ms of one attention over `repeats` back-to-back launches (CUDA events). The
        unfused path overwrites its input with its output: the work does not depend on the
        values."""
        cp, stream = self.cp, self.dev.stream
        self._load()
        with stream:
            for _ in range(3):
                self.launch(fused)
            start, end = cp.cuda.Event(), cp.cuda.Event()
            start.record(stream)
            for _ in range(repeats):
                self.launch(fused)
            end.record(stream)
        end.synchronize()
        return float(cp.cuda.get_elapsed_time(start, end)) / repeats

    def reference(self) -> np.ndarray:
        """numpy fp32 attention of the same inputs (fp16-rounded biased q, k, v)."""
        c, rows, seq = self.config, self.rows, self.seq
        qkv = (self.qkv.astype(np.float32) + self.bias.get().astype(np.float32)).astype(np.float16)
        qkv = qkv.astype(np.float32).reshape(rows, seq, 3, c.heads, c.head_dim)
        q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(c.head_dim)
        keep = self.mask[:, None, None, :].astype(bool)
        scores = np.where(keep, scores, -np.inf)
        top = scores.max(axis=-1, keepdims=True)
        top = np.where(np.isfinite(top), top, 0.0)
        e = np.where(keep, np.exp(scores - top), 0.0)
        total = e.sum(axis=-1, keepdims=True)
        probs = np.divide(e, total, out=np.zeros_like(e), where=total > 0)
        out = (probs @ v).transpose(0, 2, 1, 3).reshape(rows * seq, c.hidden)
        return out.astype(np.float32)


def _cos_rows(a: np.ndarray, b: np.ndarray) -> float:
    """Min cosine over rows where either is non-zero."""
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    live = (na > 0) | (nb > 0)
    if not live.any():
        return 1.0
    cos = (a[live] * b[live]).sum(axis=1) / np.maximum(na[live] * nb[live], 1e-30)
    return float(cos.min())


def section_compile(dev: Device) -> dict[str, Any]:
    cp = _cupy()
    full = SOURCE.read_text("utf-8")
    without = full[: full.index("// --- fused attention")]
    out: dict[str, Any] = {}
    for label, code in (("without_flash", without), ("with_flash", full)):
        nonce = f"\n// {label} {time.time_ns()}\n"
        with tempfile.TemporaryDirectory() as cache:
            os.environ["CUPY_CACHE_DIR"] = cache
            t0 = time.perf_counter()
            module = cp.RawModule(code=code + nonce, options=("--std=c++14",))
            module.get_function("pool").attributes  # noqa: B018 - forces compile and load
            out[f"{label}_s"] = round(time.perf_counter() - t0, 3)
    os.environ.pop("CUPY_CACHE_DIR", None)
    fn = dev.kernels._functions["flash_attention"]
    out["flash_attributes"] = {k: v for k, v in fn.attributes.items() if isinstance(v, int)}
    return out


def section_parity(dev: Device, lengths: list[int]) -> dict[str, Any]:
    worst: dict[str, Any] = {"min_cos": 1.0, "max_abs": 0.0, "finite": True, "zero_rows": True}
    cases = []
    for heads, dim in ((12, 64), (12, 32), (2, 16)):
        for seq in lengths:
            h = Harness(dev, heads=heads, dim=dim, rows=4, seq=seq)
            fused, scored = h.run(True), h.run(False)
            cos = _cos_rows(fused, scored)
            diff = float(np.abs(fused - scored).max())
            finite = bool(np.isfinite(fused).all())
            zero = bool((fused[3 * seq :] == 0).all())  # the all-masked row
            case: dict[str, Any] = {
                "heads": heads,
                "dim": dim,
                "seq": seq,
                "cos": round(cos, 7),
                "max_abs": round(diff, 5),
                "finite": finite,
                "zero_row": zero,
            }
            if seq in (16, 208, 512) or seq == lengths[-1]:
                ref = h.reference()
                case["cos_fused_ref"] = round(_cos_rows(fused, ref), 7)
                case["cos_scored_ref"] = round(_cos_rows(scored, ref), 7)
            cases.append(case)
            worst["min_cos"] = min(worst["min_cos"], cos)
            worst["max_abs"] = max(worst["max_abs"], diff)
            worst["finite"] &= finite
            worst["zero_rows"] &= zero
    worst["ok"] = worst["min_cos"] >= 0.999 and worst["finite"] and worst["zero_rows"]
    return {"worst": worst, "cases": cases}


def section_attention(dev: Device, lengths: list[int]) -> list[dict[str, Any]]:
    out = []
    for heads, dim in ((12, 64), (12, 32)):
        for seq in lengths:
            for rows in sorted({32, _max_rows(seq)}):
                h = Harness(dev, heads=heads, dim=dim, rows=rows, seq=seq)
                scored, fused = h.time_ms(False), h.time_ms(True)
                out.append(
                    {
                        "heads": heads,
                        "dim": dim,
                        "rows": rows,
                        "seq": seq,
                        "scored_ms": round(scored, 4),
                        "fused_ms": round(fused, 4),
                        "speedup": round(scored / fused, 3),
                    }
                )
    return out


def _max_rows(seq: int) -> int:
    rows = 1
    while rows * 2 <= 256 and rows * 2 * seq <= TOKENS:
        rows *= 2
    return rows


def _batch(rows: int, seq: int, rng: np.random.Generator) -> Batch:
    ids = rng.integers(1000, 30000, size=(rows, seq), dtype=np.int64)
    ids[:, 0] = 101
    mask = np.ones((rows, seq), dtype=np.int64)
    return Batch(
        input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids), real_rows=rows
    )


def _backend(path: str, flash_from: int) -> Any:
    from ember.backends.cupy_backend import CupyBackend

    cupy_encoder.FLASH_FROM = flash_from
    return CupyBackend(spec=inspect_model(path))


def section_forward(path: str, lengths: list[int]) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    longest = inspect_model(path).max_length
    shapes = [(r, s) for s in lengths if s <= longest for r in sorted({32, _max_rows(s)})]
    shapes.sort(key=lambda rs: rs[0] * rs[1], reverse=True)
    timings: dict[str, dict[tuple[int, int], float]] = {}
    for label, flash_from in (("scored", NEVER), ("fused", 0)):
        backend = _backend(path, flash_from)
        times = {}
        for rows, seq in shapes:
            batch = _batch(rows, seq, rng)
            backend.run(batch)  # eager + capture
            runs = []
            for _ in range(20):
                t0 = time.perf_counter()
                backend.run(batch)
                runs.append(time.perf_counter() - t0)
            times[(rows, seq)] = statistics.median(runs) * 1000
        backend.close()
        timings[label] = times
    out = []
    for rows, seq in sorted(shapes, key=lambda rs: (rs[1], rs[0])):
        a, b = timings["scored"][(rows, seq)], timings["fused"][(rows, seq)]
        out.append(
            {
                "rows": rows,
                "seq": seq,
                "scored_ms": round(a, 3),
                "fused_ms": round(b, 3),
                "speedup": round(a / b, 3),
                "fused_emb_s": round(rows / b * 1000),
            }
        )
    return out


def section_warmup(path: str, sets: dict[str, tuple[int, ...]], flash_from: int) -> dict[str, Any]:
    """Each set of lengths at TOKENS per batch, then the backend's own default buckets."""
    from ember.settings import Settings

    spec = inspect_model(path)
    rng = np.random.default_rng(1)
    out = {}
    for label, seq_set in [*sets.items(), ("backend_default", ())]:
        if seq_set:
            buckets = Buckets.build(
                max_length=spec.max_length,
                seq_buckets=seq_set,
                row_buckets=[],
                max_tokens=TOKENS,
                max_rows=256,
                pads_rows=True,
            )
        else:
            probe = _backend(path, flash_from)
            caps = probe.capabilities
            probe.close()
            buckets = Buckets.for_backend(
                caps, Settings(), max_length=spec.max_length, min_length=1
            )
        backend = _backend(path, flash_from)
        shapes = buckets.shapes()
        t0 = time.perf_counter()
        for rows, seq in shapes:
            backend.run(_batch(rows, seq, rng))
        total = time.perf_counter() - t0
        report = backend.shape_report()
        out[label] = {
            "seq": list(buckets.seq),
            "small_batch_seq": list(buckets.small_batch_seq),
            "fine_rows": buckets.fine_rows,
            "max_tokens": buckets.max_tokens,
            "shapes": len(shapes),
            "seconds": round(total, 3),
            "first_ms_sum": round(sum(r["first_ms"] for r in report), 1),
            "capture_ms_sum": round(sum(r["capture_ms"] or 0 for r in report), 1),
            "replay_ms_sum": round(sum(r["graph_ms"] or 0 for r in report), 1),
            "per_shape": report,
        }
        backend.close()
    return out


def choose_flash_from(forward: list[dict[str, Any]]) -> int:
    """The shortest length from which fused is at least as fast at every longer length."""
    by_seq: dict[int, float] = {}
    for row in forward:
        by_seq[row["seq"]] = min(by_seq.get(row["seq"], 9.0), row["speedup"])
    best = NEVER
    for seq in sorted(by_seq, reverse=True):
        if by_seq[seq] < 1.0:
            break
        best = seq
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--bert-base", default=None, help="BERT-base-sized model folder")
    parser.add_argument("--minilm", default=None, help="all-MiniLM-L6-v2 folder")
    parser.add_argument("--sections", default="compile,parity,attention,forward,warmup")
    args = parser.parse_args()
    from ember.backends.base import CUPY_SEQ

    dev = Device()
    fine = list(CUPY_SEQ)
    results: dict[str, Any] = {"cupy_seq": fine, "gpu_seq": list(GPU_SEQ)}
    wanted = args.sections.split(",")
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("compile", lambda: section_compile(dev)),
        ("parity", lambda: section_parity(dev, sorted(set(fine) | set(GPU_SEQ)))),
        ("attention", lambda: section_attention(dev, [16, 32, 64, 128, 208, 256, 512])),
    ]
    if args.bert_base:
        steps.append(("forward", lambda: section_forward(args.bert_base, FORWARD_LENGTHS)))
    if args.minilm:
        steps.append(("forward_minilm", lambda: section_forward(args.minilm, FORWARD_LENGTHS)))
    for name, step in steps:
        if name.split("_")[0] not in wanted:
            continue
        t0 = time.perf_counter()
        try:
            results[name] = step()
        except Exception:
            results[name] = {"error": traceback.format_exc()}
        took = time.perf_counter() - t0
        print(f"== {name} {took:.1f} s: {json.dumps(results[name])[:1500]}", flush=True)
    parity_ok = bool(results.get("parity", {}).get("worst", {}).get("ok"))
    forward = results.get("forward")
    flash_from = choose_flash_from(forward) if parity_ok and isinstance(forward, list) else NEVER
    results["flash_from"] = flash_from
    if "warmup" in wanted:
        sets = {"gpu_seq": GPU_SEQ, "cupy_seq": CUPY_SEQ}
        for label, path in (("minilm", args.minilm), ("bert_base", args.bert_base)):
            if not path:
                continue
            t0 = time.perf_counter()
            try:
                results[f"warmup_{label}"] = section_warmup(path, sets, flash_from)
            except Exception:
                results[f"warmup_{label}"] = {"error": traceback.format_exc()}
            summary = {
                k: {kk: vv for kk, vv in v.items() if kk != "per_shape"}
                if isinstance(v, dict)
                else v
                for k, v in results[f"warmup_{label}"].items()
            }
            took = time.perf_counter() - t0
            print(f"== warmup {label} {took:.1f} s: {json.dumps(summary)}", flush=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"flash_from {flash_from}")


if __name__ == "__main__":
    main()
