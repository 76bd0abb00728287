"""`ember prepare` of a random BERT over 2 GB: outcome, peak RSS against the weights (issue 13:
at most 2.5x) and peak disk against the artifact (issue 15: at most 2x).

    .venv/bin/python benchmarks/prepare_large.py [--work DIR] [--keep] [--quick]

The default shape is XLM-RoBERTa-large's as a BERT (24 layers, hidden 1024, vocabulary 250,002:
560 M parameters, 2.24 GB in float32), past the 2 GB protobuf limit. `--quick` runs a tiny model
to check the script itself (its peak RSS, ~0.55 GB, is the imports: torch, transformers, onnx).
Needs about 12 GB of memory and 8 GB of disk; takes minutes. Prints one JSON object and a
Markdown row for RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

LARGE = {"num_hidden_layers": 24, "hidden_size": 1024, "vocab_size": 250_002}
QUICK = {"num_hidden_layers": 2, "hidden_size": 64, "vocab_size": 30_522}


def build_model(path: Path, shape: dict[str, int]) -> int:
    """A random-weight BertModel saved as safetensors with the test tokenizer; returns the
    weights' size in bytes (float32). Built in a child process so that its memory is gone
    before the prepare is measured."""
    code = f"""
import torch
from pathlib import Path
from transformers import BertConfig, BertModel
from ember.bench import tiny_models

shape = {shape!r}
config = BertConfig(
    **shape,
    num_attention_heads=max(2, shape["hidden_size"] // 64),
    intermediate_size=4 * shape["hidden_size"],
    max_position_embeddings=514,
)
torch.manual_seed(0)
BertModel(config).save_pretrained(Path({str(path)!r}), max_shard_size="20GB")
tiny_models.copy_tokenizer(Path({str(path)!r}))
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


class DiskPeak:
    """The largest total size of the files under a folder, sampled every 0.2 s."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.peak, self._stop = folder, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _size(self) -> int:
        total = 0
        for root, _, files in os.walk(self.folder):
            for name in files:
                with contextlib.suppress(FileNotFoundError):  # a pass deleted it meanwhile
                    total += os.lstat(os.path.join(root, name)).st_size
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self._size())

    def __enter__(self) -> DiskPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def prepare(model: Path, out: Path, cache: Path) -> dict[str, Any]:
    """Run `ember prepare` as a child and read its own peak RSS from wait4's rusage."""
    command = [sys.executable, "-m", "ember", "prepare", str(model), "--out", str(out)]
    env = {**os.environ, "EMBER_CACHE_DIR": str(cache)}
    started = time.perf_counter()
    with DiskPeak(out.parent) as disk:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # wait4 gives this child's rusage (ru_maxrss in KiB on Linux), not the sum of children.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        assert proc.stdout is not None and proc.stderr is not None
        stdout, stderr = proc.stdout.read().decode(), proc.stderr.read().decode()
        proc.stdout.close()
        proc.stderr.close()
    return {
        "exit_code": proc.returncode,
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "peak_disk_bytes": disk.peak,
        "stdout": stdout.strip(),
        "stderr_tail": stderr.strip().splitlines()[-3:],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp)")
    parser.add_argument("--keep", action="store_true", help="keep the model and the artifact")
    parser.add_argument("--quick", action="store_true", help="a tiny model: check the script")
    parser.add_argument(
        "--shape", default=None, help="LAYERS,HIDDEN,VOCAB instead of 24,1024,250002"
    )
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="ember-prepare-large-"))
    work.mkdir(parents=True, exist_ok=True)
    shape = QUICK if args.quick else LARGE
    if args.shape:
        layers, hidden, vocab = (int(v) for v in args.shape.split(","))
        shape = {"num_hidden_layers": layers, "hidden_size": hidden, "vocab_size": vocab}
    try:
        model, out = work / "model", work / "artifacts" / "model-onnx"
        if not (model / "config.json").is_file():
            build_model(model, shape)
        weights = sum(f.stat().st_size for f in model.glob("*.safetensors"))
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(out, ignore_errors=True)
        run = prepare(model, out, work / "cache")
        manifest: dict[str, Any] = {}
        if (out / "ember-manifest.json").is_file():
            manifest = json.loads((out / "ember-manifest.json").read_text())
        artifact = sum(f.stat().st_size for f in out.glob("model.onnx*")) if out.is_dir() else 0
        result = {
            "shape": shape,
            "weights_bytes": weights,
            **run,
            "rss_over_weights": round(run["peak_rss_bytes"] / weights, 2),
            "artifact_bytes": artifact,
            "disk_over_artifact": round(run["peak_disk_bytes"] / artifact, 2) if artifact else None,
            "optimization": manifest.get("optimization"),
            "verify": manifest.get("verify"),
        }
        print(json.dumps(result, indent=2))
        fusion = (result["optimization"] or {}).get("fused")
        print(
            f"| {weights / 1e9:.2f} GB BERT | exit {run['exit_code']} | {run['seconds']} s | "
            f"peak RSS {run['peak_rss_bytes'] / 1e9:.2f} GB ({result['rss_over_weights']}x) | "
            f"peak disk {run['peak_disk_bytes'] / 1e9:.2f} GB ({result['disk_over_artifact']}x) | "
            f"fused {fusion} |"
        )
        return 0 if run["exit_code"] == 0 else 1
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
