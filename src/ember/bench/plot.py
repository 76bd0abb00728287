"""PNG plots of `ember bench` results (matplotlib, Agg backend: no display needed).

- one startup result: first vs steady latency per shape class per run (log scale), and
  port / health / ready seconds per run;
- load results, one or several (one line each): throughput and p50/p99 latency vs concurrency;
- several startup results: ready seconds and first/steady ratio per class, side by side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_log_axis(ax: Any, axis: str = "y") -> None:
    """Log scale with plain numbers (3, 10, 300) instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter

    formatter = FuncFormatter(lambda value, _pos: f"{value:g}")
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(formatter)
    target.set_minor_formatter(formatter)


def load_label(result: Mapping[str, Any]) -> str:
    """A load result's legend entry: its label, with the batch size when it is not 1."""
    label = str(result.get("label", "?"))
    batch = result.get("batch", 1)
    return label if batch == 1 or f"b{batch}" in label else f"{label} (batch {batch})"


def plot_startup(result: Mapping[str, Any], out: Path) -> None:
    """One startup result → PNG at `out`."""
    plt = _pyplot()
    runs = result["runs"]
    classes = list(result.get("shape_classes") or (runs[0]["classes"] if runs else {}))
    fig, (ax_lat, ax_ready) = plt.subplots(
        1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 1]}
    )
    n = max(len(runs), 1)
    width = 0.8 / (2 * n)
    for i, run in enumerate(runs):
        for j, kind in enumerate(("first_ms", "steady_median_ms")):
            xs = [c + (2 * i + j - n + 0.5) * width for c in range(len(classes))]
            ys = [run["classes"].get(name, {}).get(kind) or 0.0 for name in classes]
            ax_lat.bar(
                xs,
                ys,
                width,
                color=f"C{i}",
                alpha=1.0 if j == 0 else 0.45,
                hatch="" if j == 0 else "//",
                label=f"run {run['run']} {'first' if j == 0 else 'steady median'}",
            )
    ax_lat.set_xticks(range(len(classes)), classes)
    ax_lat.set_yscale("log")
    _plain_log_axis(ax_lat)
    ax_lat.set_ylabel("latency, ms (log)")
    ax_lat.set_title("first request vs steady median, per shape class")
    ax_lat.legend(fontsize=7, ncols=2)
    probes = ("port_seconds", "health_seconds", "ready_seconds")
    for k, probe in enumerate(probes):
        xs = [i + (k - 1) * 0.27 for i in range(len(runs))]
        ys = [run.get(probe) or 0.0 for run in runs]
        ax_ready.bar(xs, ys, 0.27, label=probe.removesuffix("_seconds"))
    ax_ready.set_xticks(range(len(runs)), [f"run {run['run']}" for run in runs])
    ax_ready.set_ylabel("seconds from spawn")
    ax_ready.set_title("time to port / health / ready")
    ax_ready.legend(fontsize=7)
    fig.suptitle(f"startup: {result['label']}")
    _save(fig, out)


def plot_load(results: Sequence[Mapping[str, Any]], out: Path) -> None:
    """One or several load results → one PNG: embeddings/s and p50/p99 vs concurrency."""
    plt = _pyplot()
    fig, (ax_tp, ax_lat) = plt.subplots(1, 2, figsize=(12, 4.8))
    for i, result in enumerate(results):
        levels = result["levels"]
        xs = [level["concurrency"] for level in levels]
        label = load_label(result)
        ax_tp.plot(xs, [level["emb_per_s"] for level in levels], "o-", color=f"C{i}", label=label)
        for key, style in (("p50", "o-"), ("p99", "s--")):
            ys = [level["latency_ms"][key] for level in levels]
            ax_lat.plot(xs, ys, style, color=f"C{i}", label=f"{label} {key}")
    levels_seen = sorted({level["concurrency"] for r in results for level in r["levels"]})
    for ax in (ax_tp, ax_lat):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels_seen, [str(c) for c in levels_seen])
        ax.minorticks_off()
        ax.set_xlabel("concurrency (closed-loop users)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax_tp.set_ylabel("embeddings / s")
    ax_tp.set_ylim(bottom=0)
    ax_tp.set_title("throughput")
    ax_lat.set_yscale("log")
    _plain_log_axis(ax_lat)
    ax_lat.set_ylabel("latency, ms (log)")
    ax_lat.set_title("p50 (solid) and p99 (dashed)")
    fig.suptitle("load: " + ", ".join(load_label(r) for r in results))
    _save(fig, out)


def plot_startup_comparison(results: Sequence[Mapping[str, Any]], out: Path) -> None:
    """Several startup results → one PNG: ready/health medians, median ratio per class."""
    import statistics

    plt = _pyplot()
    fig, (ax_ready, ax_ratio) = plt.subplots(1, 2, figsize=(12, 4.8))
    labels = [str(r["label"]) for r in results]
    probes = ("port", "health", "ready")
    for k, probe in enumerate(probes):
        xs = [i + (k - 1) * 0.27 for i in range(len(results))]
        ys = [r["summary"].get(f"{probe}_seconds_median") or 0.0 for r in results]
        ax_ready.bar(xs, ys, 0.27, label=probe)
    ax_ready.set_xticks(range(len(labels)), labels)
    ax_ready.set_ylabel("seconds from spawn (median of runs)")
    ax_ready.set_title("time to port open / health 200 / ready 200")
    ax_ready.legend(fontsize=7)
    classes: list[str] = []
    for r in results:
        classes += [c for c in r.get("shape_classes", {}) if c not in classes]
    width = 0.8 / max(len(results), 1)
    for i, r in enumerate(results):
        ratios = []
        for name in classes:
            values = [
                run["classes"][name]["ratio"]
                for run in r["runs"]
                if run["classes"].get(name, {}).get("ratio") is not None
            ]
            ratios.append(statistics.median(values) if values else 0.0)
        xs = [c + (i - (len(results) - 1) / 2) * width for c in range(len(classes))]
        ax_ratio.bar(xs, ratios, width, label=labels[i], color=f"C{i}")
    ax_ratio.axhline(1.0, color="black", linewidth=0.8)
    ax_ratio.set_xticks(range(len(classes)), classes)
    ax_ratio.set_yscale("log")
    _plain_log_axis(ax_ratio)
    ax_ratio.set_ylabel("first / steady median (log; 1 = warm)")
    ax_ratio.set_title("first request penalty per shape class")
    ax_ratio.legend(fontsize=7)
    _save(fig, out)


def plot_files(paths: Sequence[Path], out: Path) -> None:
    """Result JSON files → one PNG; all must be of one kind ('load' or 'startup')."""
    results = [orjson.loads(path.read_bytes()) for path in paths]
    kinds = {r.get("kind") for r in results}
    if kinds == {"load"}:
        plot_load(results, out)
    elif kinds == {"startup"}:
        if len(results) == 1:
            plot_startup(results[0], out)
        else:
            plot_startup_comparison(results, out)
    else:
        raise ValueError(f"cannot plot results of kinds {sorted(map(str, kinds))} together")


def _save(fig: Any, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    fig.clf()
    import matplotlib.pyplot as plt

    plt.close(fig)
