"""The model-only ceiling: transformers `BertModel` in fp16 with PyTorch SDPA, replayed as a CUDA
graph, at the shapes ember runs; no tokenizer, no HTTP, no copies (issue 16's reference).

    python benchmarks/gpu/ceiling.py --model DIR --shapes 32x208,128x208 [--out ceiling.json]

Each shape: random token ids, every token real (the mask all ones, as a batch of equal-length
texts), 3 eager warm-up forwards, one capture, then `--repeats` replays between CUDA events, 3
times; the best of the 3 means is kept (a ceiling). Prints ms per batch and embeddings per
second.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def measure(model: Any, rows: int, seq: int, repeats: int) -> dict[str, Any]:
    import torch

    ids = torch.randint(1000, 30000, (rows, seq), device="cuda")
    mask = torch.ones_like(ids)
    types = torch.zeros_like(ids)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode(), torch.cuda.stream(stream):
        for _ in range(3):
            model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    means = []
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        graph.replay()
        start.record()
        for _ in range(repeats):
            graph.replay()
        end.record()
        end.synchronize()
        means.append(start.elapsed_time(end) / repeats)
    ms = min(means)
    return {"rows": rows, "seq": seq, "ms": round(ms, 4), "emb_s": round(rows / ms * 1000, 1),
            "runs_ms": [round(m, 4) for m in means]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a BERT model folder (config + weights)")
    parser.add_argument("--shapes", default="32x208,64x208,128x208,32x256,1x208")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import torch
    import transformers
    from transformers import BertModel

    model = BertModel.from_pretrained(args.model, attn_implementation="sdpa", dtype=torch.float16)
    model = model.cuda().eval()
    results: dict[str, Any] = {
        "model": args.model,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gpu": torch.cuda.get_device_name(),
        "shapes": [],
    }
    for shape in args.shapes.split(","):
        rows, seq = (int(x) for x in shape.split("x"))
        row = measure(model, rows, seq, args.repeats)
        results["shapes"].append(row)
        print(f"ceiling {rows}x{seq}: {row['ms']:.3f} ms, {row['emb_s']:.0f} emb/s", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
