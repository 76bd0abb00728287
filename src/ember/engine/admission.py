"""Admission: how much work a model holds at once, counted in tokens, refused at once past it.

A request reserves its work before it is tokenised, counting each input's characters (what
tokenising costs, and at least its token count for the common tokenizers); once tokenised,
the reservation shrinks to its real tokens (what inference costs). Counting inputs instead let
40 inputs of 2 MB each through as "40 of 512" (issue 15).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ember import metrics
from ember.errors import Overloaded, TooLarge

VALUES_PER_WORK = 16
"""A token whose vector is in the answer (TEI's `/embed_all`) answers `hidden` float32 values,
about 12 bytes each as JSON: it counts as hidden/16 tokens of work, so that the queue bound
(--max-queued-tokens, 2^20) holds at most 2^24 such values (64 MB as float32, ~200 MB of JSON)."""


def vector_weight(hidden: int) -> int:
    """Work per token of an answer that holds each token's vector of `hidden` values."""
    return -(-hidden // VALUES_PER_WORK)


@dataclass(slots=True)
class Reservation:
    """What one admitted request holds; `work` changes once its inputs are tokenised."""

    inputs: int
    work: int


class Admission:
    """Bounds on one model's queued and running work: inputs and tokens."""

    def __init__(self, *, max_inputs: int, max_work: int, model_name: str) -> None:
        self.max_inputs = max_inputs
        self.max_work = max_work
        self.inputs = 0
        self.work = 0
        self._gauge = metrics.QUEUE_INPUTS.labels(model=model_name)

    def reserve(self, *, inputs: int, work: int) -> Reservation:
        """Hold room for a request, or raise Overloaded (429 with Retry-After) at once. A
        request larger than a bound on its own is admitted when nothing else is held, so that
        no valid request is refused forever."""
        idle = self.inputs == 0
        over_inputs = self.inputs + inputs > self.max_inputs
        over_work = self.work + work > self.max_work
        if (over_inputs or over_work) and not idle:
            what = (
                f"{self.max_inputs} queued inputs"
                if over_inputs
                else f"{self.max_work} queued tokens of work"
            )
            raise Overloaded(f"the server is at its limit of {what}; retry shortly", retry_after=1)
        self.inputs += inputs
        self.work += work
        self._gauge.set(self.inputs)
        return Reservation(inputs=inputs, work=work)

    def vector_work(self, tokens: int, *, hidden: int, model: str) -> int:
        """Work of an answer holding `tokens` vectors of `hidden` values (TEI's `/embed_all`);
        TooLarge (413) when it alone is over the bound: waiting would not make it smaller."""
        weight = vector_weight(hidden)
        if tokens * weight > self.max_work:
            raise TooLarge(
                f"/embed_all would answer {tokens} token vectors; model {model!r} answers at most "
                f"{self.max_work // weight} per request (--max-queued-tokens {self.max_work} / "
                f"{weight}, for vectors of {hidden} values): send fewer or shorter inputs"
            )
        return tokens * weight

    def settle(self, reservation: Reservation, work: int) -> None:
        """The request's real work, once known (tokens after tokenising)."""
        self.work += work - reservation.work
        reservation.work = work

    def release(self, reservation: Reservation) -> None:
        self.inputs -= reservation.inputs
        self.work -= reservation.work
        reservation.inputs = reservation.work = 0
        self._gauge.set(self.inputs)

    @contextmanager
    def held(self, *, inputs: int, work: int) -> Iterator[Reservation]:
        """`reserve` for the duration of the block."""
        reservation = self.reserve(inputs=inputs, work=work)
        try:
            yield reservation
        finally:
            self.release(reservation)
