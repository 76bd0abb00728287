"""The shape set is finite and the batcher never leaves it (the warm-up coverage proof)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ember.engine.buckets import MERGE_WASTE, Buckets, plan_batches
from ember.engine.warmup import plan_shapes


def make(
    max_length: int = 256, max_tokens: int = 4096, max_rows: int = 32, pads_rows: bool = False
) -> Buckets:
    return Buckets.build(
        max_length=max_length,
        seq_buckets=[16, 32, 64, 128, 256, 512],
        row_buckets=[],
        max_tokens=max_tokens,
        max_rows=max_rows,
        pads_rows=pads_rows,
    )


def test_seq_buckets_are_capped_at_the_model_max() -> None:
    b = make(max_length=200)
    assert b.seq == (16, 32, 64, 128, 200)
    assert b.seq_for(1) == 16 and b.seq_for(17) == 32 and b.seq_for(200) == 200


def test_one_max_length_row_always_fits() -> None:
    b = make(max_length=512, max_tokens=100)
    assert b.max_tokens == 512
    assert (1, 512) in b.shapes()


def test_padded_rows_are_powers_of_two() -> None:
    assert make(max_rows=256, pads_rows=True).rows == (1, 2, 4, 8, 16, 32, 64, 128, 256)


def test_shapes_respect_the_token_budget_and_come_largest_first() -> None:
    b = make()
    shapes = b.shapes()
    assert all(r == 1 or r * s <= b.max_tokens for r, s in shapes)
    sizes = [r * s for r, s in shapes]
    assert sizes == sorted(sizes, reverse=True)
    assert plan_shapes(b) == shapes


lengths_strategy = st.lists(st.integers(min_value=1, max_value=256), min_size=1, max_size=300)
bucket_strategy = st.builds(
    make,
    max_length=st.sampled_from([64, 128, 256, 512]),
    max_tokens=st.sampled_from([256, 1024, 4096, 16384]),
    max_rows=st.sampled_from([1, 8, 32, 256]),
    pads_rows=st.booleans(),
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(lengths=lengths_strategy, buckets=bucket_strategy)
def test_every_emitted_shape_is_in_the_warmed_set(lengths: list[int], buckets: Buckets) -> None:
    lengths = [min(n, buckets.max_length) for n in lengths]
    warmed = set(plan_shapes(buckets))
    batches = plan_batches(lengths, buckets)
    seen: list[int] = []
    for batch in batches:
        seq = buckets.seq_for(max(lengths[i] for i in batch))
        rows = buckets.rows_for(len(batch))
        assert (rows, seq) in warmed
        assert len(batch) <= buckets.rows[-1]
        assert len(batch) == 1 or rows * seq <= buckets.max_tokens
        seen.extend(batch)
    assert sorted(seen) == list(range(len(lengths)))  # every input exactly once


@settings(max_examples=100, deadline=None, derandomize=True)
@given(lengths=lengths_strategy, fine=st.booleans())
def test_no_input_is_padded_far_past_its_length(lengths: list[int], fine: bool) -> None:
    """An input shares a batch with longer ones only within its bucket, or when padding it
    wastes at most MERGE_WASTE of the batch's length (coarse buckets: the bucket alone)."""
    b = fine_cpu() if fine else make()
    for batch in plan_batches(lengths, b):
        seq = b.seq_for(max(lengths[i] for i in batch))
        for i in batch:
            near = lengths[i] >= seq * (1 - MERGE_WASTE)
            assert b.seq_for(lengths[i]) == seq or (fine and near)


def fine_cpu() -> Buckets:
    return Buckets.build(
        max_length=256, seq_buckets=[], row_buckets=[], max_tokens=1024, max_rows=32
    )


def test_cpu_batches_are_padded_to_their_longest_input() -> None:
    b = fine_cpu()
    assert b.seq_for(42) == 42 and b.seq[-1] == 256
    lengths = [42] * 30 + [40] * 5 + [20] * 3
    batches = plan_batches(lengths, b)
    assert [len(x) for x in batches] == [24, 11, 3]  # 1024 // 42 = 24 rows
    # 40 pads to 42 (5 % waste) and shares a batch; 20 would waste half: its own batch.
    assert [b.seq_for(max(lengths[i] for i in x)) for x in batches] == [42, 42, 20]


def _two_level(max_tokens: int = 16384) -> Buckets:
    return Buckets.build(
        max_length=512,
        seq_buckets=[16, 32, 48, 64, 128, 192, 208, 224, 256, 512],
        row_buckets=[],
        max_tokens=max_tokens,
        max_rows=256,
        pads_rows=True,
        small_batch_seq=[16, 64, 256, 999],
        fine_rows=32,
    )


def test_small_batches_pad_to_the_coarse_lengths_large_ones_to_the_fine() -> None:
    b = _two_level()
    assert b.small_batch_seq == (16, 64, 256, 512)  # only lengths that are buckets, and the max
    assert b.seq_for(202) == 208 and b.seq_for(202, rows=32) == 208
    assert b.seq_for(202, rows=16) == 256 and b.seq_for(202, rows=1) == 256
    assert b.seq_for(202, rows=17) == 208  # padded to 32 rows
    assert b.seq_for(40, rows=64) == 48 and b.seq_for(40, rows=16) == 64
    shapes = set(b.shapes())
    assert (32, 208) in shapes and (64, 208) in shapes and (16, 208) not in shapes
    assert (16, 256) in shapes and (1, 512) in shapes


def test_a_small_batch_keeps_its_fine_length_where_the_coarse_one_would_not_fit() -> None:
    b = _two_level(max_tokens=3584)
    # 16 rows of 224 fit the budget (3584); 16 rows of 256 would not.
    assert b.fits(16, 224) and not b.fits(16, 256)
    assert b.seq_for(220, rows=16) == 224 and b.seq_for(220, rows=8) == 256
    assert (16, 224) in b.shapes()
    assert all(r == 1 or r * s <= b.max_tokens for r, s in b.shapes())


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    lengths=lengths_strategy,
    max_tokens=st.sampled_from([512, 4096, 16384]),
)
def test_two_level_batches_have_planned_shapes(lengths: list[int], max_tokens: int) -> None:
    b = _two_level(max_tokens)
    every = set(b.shapes())
    for batch in plan_batches(lengths, b):
        rows = b.rows_for(len(batch))
        seq = b.seq_for(max(lengths[i] for i in batch), rows=rows)
        assert (rows, seq) in every
