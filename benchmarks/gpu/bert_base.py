"""A BERT-base-sized model (12 layers, hidden 768, 110M parameters) with random weights, built
from the all-MiniLM-L6-v2 folder (same tokenizer, pooling and names) with numpy alone, so that
building it imports no torch and the start measured after it is cold for torch.

    python benchmarks/gpu/bert_base.py SRC_MINILM_DIR DEST_DIR

Every matrix is N(0, 0.02) (BERT's initializer), LayerNorm weights 1 and biases 0; the random
weights do not matter for time to ready or throughput, only the shapes do.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

LAYERS, HIDDEN, HEADS, FFN = 12, 768, 12, 3072


def build(src: Path, dest: Path) -> Path:
    if (dest / "model.safetensors").is_file():
        return dest
    shutil.copytree(src, dest, dirs_exist_ok=True)
    config = json.loads((src / "config.json").read_text())
    old_hidden, old_ffn = config["hidden_size"], config["intermediate_size"]
    config.update(
        hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=FFN, _name_or_path="random-bert-base",
    )  # fmt: skip
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray] = {}
    for name, tensor in load_file(str(src / "model.safetensors")).items():
        match = re.search(r"layer\.(\d+)\.", name)
        if match and match.group(1) != "0":
            continue
        shape = tuple(
            HIDDEN if d == old_hidden else FFN if d == old_ffn else d for d in tensor.shape
        )
        for i in range(LAYERS) if match else [None]:
            key = name.replace("layer.0.", f"layer.{i}.") if i is not None else name
            if tensor.dtype.kind != "f":
                out[key] = tensor
            elif "LayerNorm.weight" in name:
                out[key] = np.ones(shape, np.float32)
            elif len(shape) == 1:
                out[key] = np.zeros(shape, np.float32)
            else:
                out[key] = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)
    save_file(out, str(dest / "model.safetensors"), metadata={"format": "pt"})
    params = sum(v.size for v in out.values())
    print(f"{dest}: {params / 1e6:.1f}M parameters")
    return dest


if __name__ == "__main__":
    build(Path(sys.argv[1]), Path(sys.argv[2]))
