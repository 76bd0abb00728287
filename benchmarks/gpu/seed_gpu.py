"""The seed-style peer (benchmarks/peers/seed_server.py) on the GPU, as a tutorial runs it there.

seed_server.py pins `device="cpu"` for the CPU comparison; a tutorial on a GPU machine leaves
the device to sentence-transformers, which picks CUDA (float32 weights, as saved). This wrapper
changes only that, then runs the seed server's own `main()` (same flags).

    python benchmarks/gpu/seed_gpu.py --port 8081 --model DIR
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "peers"))

import seed_server
from sentence_transformers import SentenceTransformer


class _AutoDevice(SentenceTransformer):  # type: ignore[misc]
    def __init__(self, *args: Any, device: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, device=None, **kwargs)


seed_server.SentenceTransformer = _AutoDevice

if __name__ == "__main__":
    seed_server.main()
