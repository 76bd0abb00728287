"""A BERT-base-sized embedding model with random weights (110M parameters: hidden 768, 12
layers, 12 heads, intermediate 3072, max length 512; mean pooling), built from transformers'
default `BertConfig` and the tokenizer of another sentence-transformers BERT folder (the built-in
all-MiniLM-L6-v2: the same uncased WordPiece vocabulary). What issue 16's compute-bound figures
run on the GPU; no download needed.

    python benchmarks/gpu/bert_base.py --tokenizer-from /tmp/minilm-fp32 --out /tmp/bert-base
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


def build(source: Path, out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig()  # bert-base-uncased's shape
    model = BertModel(config, add_pooling_layer=False).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, out / name)
    st = "sentence_transformers.models"
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": f"{st}.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": f"{st}.Pooling"},
    ]
    (out / "modules.json").write_text(json.dumps(modules))
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 512, "do_lower_case": False})
    )
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {"word_embedding_dimension": config.hidden_size, "pooling_mode_mean_tokens": True}
        )
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer-from", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    print(build(args.tokenizer_from, args.out))


if __name__ == "__main__":
    main()
