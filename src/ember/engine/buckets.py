"""Bucketing: the finite set of (rows, padded length) shapes a backend can ever receive.

The batcher pads every batch to a bucket and the warm-up plan is `Buckets.shapes()`: both read
the same object, so warm-up covers exactly what serving can execute.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ember.backends.base import Capabilities
from ember.settings import Settings


@dataclass(frozen=True, kw_only=True)
class Buckets:
    seq: tuple[int, ...]
    """Padded lengths, ascending; the last is the model's max length."""
    rows: tuple[int, ...]
    """Row counts, ascending; the last is the most rows in a batch."""
    max_tokens: int
    """Most padded tokens (rows x length) in a batch; one row of max length always fits."""
    small_batch_seq: tuple[int, ...] = ()
    """Padded lengths, a subset of `seq`, for batches of fewer than `fine_rows` padded rows
    (where the length fits the token budget); empty: `seq` for every batch."""
    fine_rows: int = 0
    """Padded rows from which a batch is padded to `seq` rather than `small_batch_seq`."""

    @classmethod
    def build(
        cls,
        *,
        max_length: int,
        seq_buckets: Sequence[int],
        row_buckets: Sequence[int],
        max_tokens: int,
        max_rows: int,
        pads_rows: bool = False,
        min_length: int = 1,
        small_batch_seq: Sequence[int] = (),
        fine_rows: int = 0,
    ) -> Buckets:
        """Buckets between `min_length` (the shortest input the tokenizer can produce for the
        task) and `max_length`. No `seq_buckets`: every length is its own bucket (a batch is
        padded to its longest input). Buckets below `min_length` are dropped: no input can
        reach them, so warm-up could never run them. `pads_rows`: power-of-two row counts
        unless `row_buckets` says; otherwise every count. `small_batch_seq`: the lengths of
        batches under `fine_rows` rows, kept where they are among the buckets."""
        min_length = max(1, min(min_length, max_length))
        if seq_buckets:
            seq = sorted({b for b in seq_buckets if min_length <= b < max_length} | {max_length})
        else:
            seq = list(range(min_length, max_length + 1))
        if row_buckets:
            rows = sorted({r for r in row_buckets if r < max_rows} | {max_rows})
        elif pads_rows:
            rows = sorted({1 << i for i in range(max_rows.bit_length()) if 1 << i < max_rows})
            rows.append(max_rows)
        else:
            rows = list(range(1, max_rows + 1))
        small: tuple[int, ...] = ()
        if small_batch_seq and fine_rows > 1:
            small = tuple(sorted({b for b in small_batch_seq if b in seq} | {seq[-1]}))
        return cls(
            seq=tuple(seq),
            rows=tuple(rows),
            max_tokens=max(max_tokens, max_length),
            small_batch_seq=small,
            fine_rows=fine_rows,
        )

    @classmethod
    def for_backend(
        cls, capabilities: Capabilities, settings: Settings, *, max_length: int, min_length: int
    ) -> Buckets:
        """The settings' buckets, with the backend's defaults where the settings say nothing."""
        default_seq = capabilities.seq_buckets if capabilities.lengths == "coarse" else ()
        by_backend = bool(default_seq) and not settings.seq_buckets
        return cls.build(
            max_length=max_length,
            min_length=min_length,
            seq_buckets=settings.seq_buckets or default_seq,
            row_buckets=settings.row_buckets,
            max_tokens=settings.max_batch_tokens or capabilities.max_batch_tokens,
            max_rows=settings.max_batch_requests or capabilities.max_batch_rows,
            pads_rows=capabilities.pads_rows,
            small_batch_seq=capabilities.small_batch_seq if by_backend else (),
            fine_rows=capabilities.fine_rows,
        )

    @property
    def max_length(self) -> int:
        return self.seq[-1]

    def seq_for(self, length: int, *, rows: int = 0) -> int:
        """The padded length for an input of `length` tokens (≤ max_length); given the batch's
        `rows`, the coarser small-batch length where it applies and fits the token budget."""
        i = bisect_left(self.seq, length)
        if i == len(self.seq):
            raise ValueError(f"length {length} is over the max length {self.max_length}")
        if not rows or not self.small_batch_seq:
            return self.seq[i]
        padded = self.rows_for(rows)
        small = self.small_batch_seq[bisect_left(self.small_batch_seq, length)]
        if padded < self.fine_rows and (padded == 1 or padded * small <= self.max_tokens):
            return small
        return self.seq[i]

    def rows_for(self, count: int) -> int:
        i = bisect_left(self.rows, count)
        if i == len(self.rows):
            raise ValueError(f"{count} rows are over the most rows {self.rows[-1]}")
        return self.rows[i]

    def fits(self, rows: int, seq: int) -> bool:
        """Whether `rows` real rows padded to `seq` make an allowed batch."""
        if rows > self.rows[-1]:
            return False
        return rows == 1 or self.rows_for(rows) * seq <= self.max_tokens

    def max_rows_at(self, seq: int) -> int:
        """Most real rows a batch padded to `seq` may hold."""
        best = 1
        for r in self.rows:
            if r * seq <= self.max_tokens:
                best = r
        return best

    def describe(self) -> dict[str, Any]:
        """The `/info` summary: lengths, rows, the token budget and how many shapes."""
        return {
            "seq": list(self.seq),
            "small_batch_seq": list(self.small_batch_seq),
            "fine_rows": self.fine_rows,
            "rows": list(self.rows),
            "max_batch_tokens": self.max_tokens,
            "max_batch_requests": self.rows[-1],
            "shapes": len(self.shapes()),
        }

    def shapes(self) -> list[tuple[int, int]]:
        """Every (rows, seq) shape a batch can have, largest first."""
        out = {
            (r, self.seq_for(s, rows=r))
            for s in self.seq
            for r in self.rows
            if r == 1 or r * s <= self.max_tokens
        }
        return sorted(out, key=lambda shape: (shape[0] * shape[1], shape[1]), reverse=True)


MERGE_WASTE = 1 / 8
"""How much of a batch's padded length a shorter input may leave as padding to join it."""


def plan_batches(lengths: Sequence[int], buckets: Buckets) -> list[list[int]]:
    """Group inputs (by token length) into batches; returns indices into `lengths`.

    Longest first, each batch as full as the token budget allows. An input joins the batch if it
    falls in the batch's length bucket, or if padding it to that length wastes at most
    `MERGE_WASTE` of it: on compute-bound hardware padding costs as much as real tokens, so
    inputs of very different lengths are never padded together, and with fine (CPU) buckets
    near lengths still share a batch instead of splitting it. With coarse buckets (steps of 1.5x
    or more) the rule is the bucket's alone.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    current_seq = 0
    for i in order:
        seq = buckets.seq_for(lengths[i])
        near = seq == current_seq or lengths[i] >= current_seq * (1 - MERGE_WASTE)
        if current and not (near and buckets.fits(len(current) + 1, current_seq)):
            batches.append(current)
            current = []
        if not current:
            current_seq = seq
        current.append(i)
    if current:
        batches.append(current)
    return batches
