"""`ember prepare` of a random BERT over 2 GB: outcome, peak RSS against the weights (issue 13:
at most 2.5x) and peak disk against the artifact (issue 15: at most 2x), with the peak RSS of
each stage, and the artifact compared with transformers.

    .venv/bin/python benchmarks/prepare_large.py [--work DIR] [--keep] [--quick]
        [--shape LAYERS,HIDDEN,VOCAB] [--torch] [--quantize int8] [--optimize N]

The default shape is XLM-RoBERTa-large's as a BERT (24 layers, hidden 1024, vocabulary 250,002:
560 M parameters, 2.24 GB in float32), past the 2 GB protobuf limit; session 17 measured
`--shape 1,256,2200000` (2.26 GB, nearly all of it the word-embedding table). A BERT goes
through the torch-free graph builder (`onnx_graph`); `--torch` sends it through the torch
export instead, as any family the builder lacks goes. `--quick` runs a tiny model to check the
script itself. Needs 5 GB of disk and, on the torch path, up to 3.2x the weights of memory
(RESULTS.md, session 18); a few minutes on 2 cores. Prints one JSON object and a Markdown row.
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


CHILD = """
import json, sys, time
from contextlib import contextmanager
from pathlib import Path
from ember.backends import artifact, onnx_graph
from ember.manifest import Options
from ember.models import inspect_model

model, out, torch_export, quantize, optimize = sys.argv[1:6]
if torch_export == "1":  # the torch export's path, as a family the graph builder lacks takes
    onnx_graph.covers = lambda spec: None
stages, peak = [], 0

def high_water() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0

@contextmanager
def step(label):
    global peak
    peak = max(peak, high_water())
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark restarts here
    started = time.perf_counter()
    yield
    stage_peak = high_water()
    peak = max(peak, stage_peak)
    stages.append({"stage": label, "peak_rss_bytes": stage_peak,
                   "seconds": round(time.perf_counter() - started, 1)})

spec = inspect_model(model)
options = Options(quantize=quantize, optimize=int(optimize))
manifest = artifact.prepare(spec, options, dest=Path(out), step=step)
summary = manifest.fusion.summary(spec.model_type) if manifest.fusion else None
print(json.dumps({"stages": stages, "peak_rss_bytes": max(peak, high_water()), "summary": summary}))
"""
"""`artifact.prepare` as `ember prepare` runs it, in a child that reports the peak RSS of each
stage (the kernel's high-water mark, reset per stage through /proc/self/clear_refs)."""

REFERENCE = """
import json, sys
from pathlib import Path
from ember.backends import export
from ember.manifest import MODEL_FILE, load_manifest
from ember.models import inspect_model

source, out = Path(sys.argv[1]), Path(sys.argv[2])
spec = inspect_model(str(source))
manifest = load_manifest(out)
module, names = export._load_wrapper(spec)
feeds = export._sample_feeds(spec, names)
expected = export._reference(module, feeds)
del module
figures, _ = export._verify(expected, feeds, out / MODEL_FILE, options=manifest.options,
                            embed=manifest.output == "embeddings")
print(json.dumps(figures))
"""
"""The artifact against transformers on prepare's verification batch, as the torch export's
path verifies (the graph builder's path checks only that the graph runs)."""


def prepare(model: Path, out: Path, cache: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run the prepare child and read its peak RSS (its own report; wait4's ru_maxrss would
    read the high-water mark the child resets)."""
    flags = ["1" if args.torch else "0", args.quantize, str(args.optimize)]
    command = [sys.executable, "-c", CHILD, str(model), str(out), *flags]
    env = {**os.environ, "EMBER_CACHE_DIR": str(cache)}
    started = time.perf_counter()
    with DiskPeak(out.parent) as disk:
        proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    report: dict[str, Any] = {}
    if proc.returncode == 0:
        report = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "exit_code": proc.returncode,
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_bytes": report.get("peak_rss_bytes", 0),
        "stages": report.get("stages", []),
        "summary": report.get("summary"),
        "peak_disk_bytes": disk.peak,
        "stderr_tail": proc.stderr.strip().splitlines()[-3:],
    }


def reference(model: Path, out: Path) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-c", REFERENCE, str(model), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:]}  # type: ignore[dict-item]
    figures: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp)")
    parser.add_argument("--keep", action="store_true", help="keep the model and the artifact")
    parser.add_argument("--quick", action="store_true", help="a tiny model: check the script")
    parser.add_argument(
        "--shape", default=None, help="LAYERS,HIDDEN,VOCAB instead of 24,1024,250002"
    )
    parser.add_argument(
        "--torch", action="store_true", help="the torch export, not the torch-free graph builder"
    )
    parser.add_argument("--quantize", default="none", choices=("none", "int8"))
    parser.add_argument("--optimize", type=int, default=2)
    parser.add_argument(
        "--no-reference", action="store_true", help="skip the comparison with transformers"
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
        run = prepare(model, out, work / "cache", args)
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
            "graph_builder": manifest.get("versions", {}).get("graph_builder"),
            "reference": None if args.no_reference or not manifest else reference(model, out),
            "machine": f"{os.cpu_count()} cores",
            "command": " ".join(sys.argv),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
        print(json.dumps(result, indent=2))
        fusion = (result["optimization"] or {}).get("fused")
        print(
            f"| {weights / 1e9:.2f} GB BERT | exit {run['exit_code']} | {run['seconds']} s | "
            f"peak RSS {run['peak_rss_bytes'] / 1e9:.2f} GB ({result['rss_over_weights']}x) | "
            f"peak disk {run['peak_disk_bytes'] / 1e9:.2f} GB ({result['disk_over_artifact']}x) | "
            f"fused {fusion} | reference {result['reference']} |"
        )
        return 0 if run["exit_code"] == 0 else 1
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
