"""Warm-up cannot fail on a real model: for every task, backend kind, tokenizer family and
bucket setting, every shape the batcher can emit is in the planned set, and every planned
shape is one that warm-up's own inputs make (issue 13: a BERT pair is at least 3 tokens and
an XLM-R pair 4, so a plan that warmed (1, 2) could never become ready)."""

from __future__ import annotations

import dataclasses
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ember.backends.base import CUPY_FINE_ROWS, CUPY_SEQ, GPU_SEQ, TORCH_CPU_SEQ, Capabilities
from ember.engine.batcher import Batcher
from ember.engine.buckets import Buckets, plan_batches
from ember.engine.loaded import shortest_input
from ember.engine.model import ModelEngine
from ember.engine.tokenizer import Encoded, Item, TextTokenizer
from ember.engine.warmup import choose_plan, plan_shapes, warm_input
from ember.models import ModelSpec, Task
from ember.settings import Settings
from tests.fakes import FakeFactory
from tests.tiny_tokenizers import CORPUS, FAMILIES, tokenizer_json

BACKENDS = {
    # ONNX Runtime on CPU: every length a shape, a cover warmed.
    "exact-cover": Capabilities(device="cpu", lengths="exact", warm="cover", output_width=0),
    # torch on CPU: ~1.5x length steps, power-of-two rows, every shape warmed.
    "coarse-cpu": Capabilities(
        device="cpu",
        lengths="coarse",
        seq_buckets=TORCH_CPU_SEQ,
        pads_rows=True,
        warm="all",
        output_width=0,
    ),
    # CUDA (torch, CuPy): coarse lengths, a large budget, every shape warmed.
    "coarse-gpu": Capabilities(
        device="cuda",
        lengths="coarse",
        seq_buckets=GPU_SEQ,
        pads_rows=True,
        warm="all",
        output_width=0,
        max_batch_tokens=32768,
        max_batch_rows=256,
    ),
    # CuPy: finer lengths from CUPY_FINE_ROWS rows, GPU_SEQ below.
    "fine-gpu": Capabilities(
        device="cuda",
        lengths="coarse",
        seq_buckets=CUPY_SEQ,
        small_batch_seq=GPU_SEQ,
        fine_rows=CUPY_FINE_ROWS,
        pads_rows=True,
        warm="all",
        output_width=0,
        max_batch_tokens=16384,
        max_batch_rows=256,
    ),
}
LABELS = ("a", "b", "c")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One model folder (just its tokenizer.json) per tokenizer family."""
    out = {}
    for family in FAMILIES:
        folder = tmp_path_factory.mktemp(family)
        (folder / "tokenizer.json").write_text(tokenizer_json(family), encoding="utf-8")
        out[family] = folder
    return out


@cache
def _tokenizer(folder: Path, max_length: int) -> TextTokenizer:
    return TextTokenizer(path=folder / "tokenizer.json", max_length=max_length)


def _spec(folder: Path, task: Task, max_length: int) -> ModelSpec:
    return ModelSpec(
        name=f"{folder.name}-{task.value}",
        source=str(folder),
        path=folder,
        task=task,
        max_length=max_length,
        hidden_size=8,
        labels=() if task is Task.EMBED else LABELS[: 1 if task is Task.RERANK else 3],
    )


@dataclasses.dataclass
class _Queued:
    """What `Batcher.pad` reads of a queued request: its encoded inputs."""

    encoded: list[Encoded]


def _padded(buckets: Buckets, lengths: list[int]) -> list[tuple[int, int]]:
    """The shapes the real batcher groups and pads inputs of these lengths to."""
    batcher = Batcher(buckets=buckets, run=lambda b: b.input_ids, pad_id=0, model_name="t")
    shapes = []
    for indices in plan_batches(lengths, buckets):
        group = [
            (_Queued([Encoded(ids=[5] * lengths[i], type_ids=[0] * lengths[i])]), 0)
            for i in indices
        ]
        shapes.append(batcher.pad(group).shape)  # type: ignore[arg-type]
    return shapes


words = st.sampled_from([*" ".join(CORPUS).split(), "", "🚀", "x" * 40])
texts = st.lists(words, max_size=30).map(" ".join)


def _items(task: Task, draw_texts: list[str], pairs: list[bool]) -> list[Item]:
    if task is Task.EMBED:
        return list(draw_texts)
    if task is Task.RERANK:
        return [("query text", t) for t in draw_texts]
    return [(t, t) if p else t for t, p in zip(draw_texts, pairs, strict=False)]


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    case=st.tuples(
        st.sampled_from(FAMILIES),
        st.sampled_from(list(Task)),
        st.sampled_from(sorted(BACKENDS)),
        st.sampled_from([8, 20, 64, 130, 512]),
    ),
    config=st.builds(
        Settings,
        seq_buckets=st.sampled_from([[], [2, 3, 16], [4, 8, 32], [16, 64]]),
        row_buckets=st.sampled_from([[], [1, 3, 8]]),
        max_batch_tokens=st.sampled_from([None, 64, 1024]),
        max_batch_requests=st.sampled_from([None, 1, 4, 32]),
    ),
    inputs=st.lists(texts, min_size=1, max_size=40),
    pairs=st.lists(st.booleans(), min_size=40, max_size=40),
)
def test_emitted_shapes_are_planned_and_planned_shapes_are_reachable(
    folders: dict[str, Path],
    case: tuple[str, Task, str, int],
    config: Settings,
    inputs: list[str],
    pairs: list[bool],
) -> None:
    """Over tokenizer families x tasks x backend kinds x max lengths x bucket settings."""
    family, task, backend, max_length = case
    tok = _tokenizer(folders[family], max_length)
    caps = BACKENDS[backend]
    shortest = min(shortest_input(tok, task), max_length)  # as `load_model` derives it
    buckets = Buckets.for_backend(caps, config, max_length=max_length, min_length=shortest)
    every = set(buckets.shapes())

    # Every shape real inputs of this task reach is in the shape set.
    encoded = tok.encode(_items(task, inputs, pairs), truncate=True)
    lengths = [e.length for e in encoded]
    assert min(lengths) >= shortest
    assert set(_padded(buckets, lengths)) <= every

    # Every planned shape is made by warm-up's inputs, exactly.
    planned = plan_shapes(buckets, choose_plan("auto", caps))
    full = plan_shapes(buckets, "full") if len(every) <= 200 else []
    for rows, seq in {*planned, *full}:
        item = warm_input(tok, task, seq)
        assert item.length == seq
        assert task is not Task.RERANK or item.length >= tok.shortest(pair=True)
        assert _padded(buckets, [seq] * rows) == [(rows, seq)]


@pytest.mark.anyio
@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("task", list(Task))
@pytest.mark.parametrize("family", FAMILIES)
async def test_the_engine_warms_and_becomes_ready_with_default_buckets(
    folders: dict[str, Path], family: str, task: Task, backend: str
) -> None:
    """The real load → warm-up path with default bucket settings: the coverage check passes."""
    spec = _spec(folders[family], task, max_length=64)
    model = ModelEngine(spec=spec, settings=Settings())
    model.load(FakeFactory(capabilities=BACKENDS[backend]))
    model.start()
    try:
        report = await model.warm_up()
        assert report.covered
        assert report.plan == ("cover" if backend == "exact-cover" else "full")
        shortest = shortest_input(model.loaded.tokenizer, task)
        first = model.loaded.buckets.seq[0]
        assert first == shortest if backend == "exact-cover" else first >= shortest
    finally:
        await model.stop()
