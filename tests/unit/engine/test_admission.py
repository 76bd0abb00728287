"""Admission counts work: inputs and tokens (characters before tokenising), refused at once."""

from __future__ import annotations

import pytest

from ember.engine.admission import Admission, vector_weight
from ember.errors import Overloaded, TooLarge


def test_inputs_are_bounded_and_released() -> None:
    admission = Admission(max_inputs=5, max_work=10_000, model_name="t")
    held = admission.reserve(inputs=5, work=5)
    with pytest.raises(Overloaded, match="5 queued inputs") as info:
        admission.reserve(inputs=1, work=1)
    assert info.value.retry_after == 1
    admission.release(held)
    assert (admission.inputs, admission.work) == (0, 0)
    admission.reserve(inputs=5, work=5)


def test_work_is_bounded_whatever_the_input_count() -> None:
    """Two inputs of 2 MB each are not "2 of 512": the second waits (429) for the first."""
    admission = Admission(max_inputs=512, max_work=3_000_000, model_name="t")
    admission.reserve(inputs=1, work=2_000_000)
    with pytest.raises(Overloaded, match="3000000 queued tokens"):
        admission.reserve(inputs=1, work=2_000_000)
    admission.reserve(inputs=1, work=900_000)


def test_a_request_over_a_bound_is_admitted_alone_never_refused_forever() -> None:
    admission = Admission(max_inputs=4, max_work=100, model_name="t")
    big = admission.reserve(inputs=2048, work=1_000_000)
    with pytest.raises(Overloaded):
        admission.reserve(inputs=1, work=1)
    admission.release(big)
    admission.reserve(inputs=1, work=1)


def test_settling_replaces_the_estimate_with_the_real_work() -> None:
    """Characters are held while tokenising; the tokens (fewer) once tokenised."""
    admission = Admission(max_inputs=100, max_work=1000, model_name="t")
    with admission.held(inputs=1, work=900) as held:
        with pytest.raises(Overloaded):
            admission.reserve(inputs=1, work=200)
        admission.settle(held, 128)
        assert admission.work == 128
        admission.release(admission.reserve(inputs=1, work=200))
    assert (admission.inputs, admission.work) == (0, 0)


def test_per_token_answers_weigh_their_values_and_a_too_large_one_is_a_413() -> None:
    """An /embed_all token answers `hidden` floats: hidden/16 tokens of work; over the bound on
    its own, waiting would not help, so it is refused with the most tokens it may have."""
    assert (vector_weight(384), vector_weight(1024), vector_weight(10)) == (24, 64, 1)
    admission = Admission(max_inputs=512, max_work=1 << 20, model_name="t")
    assert admission.vector_work(1000, hidden=384, model="m") == 24_000
    assert admission.vector_work(43_690, hidden=384, model="m") <= 1 << 20
    with pytest.raises(TooLarge, match="at most 43690 per request"):
        admission.vector_work(43_691, hidden=384, model="m")
