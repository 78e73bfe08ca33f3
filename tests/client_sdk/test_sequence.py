"""Sequence numbers survive restarts without the clock, and resynchronise after the state is lost."""

from __future__ import annotations

import pytest

from lada_client.sequence import SequenceCounter


def test_numbers_keep_increasing_across_restarts_and_skip_the_unused_block(tmp_path):
    path = tmp_path / "seq"
    first = SequenceCounter(path, block=10)
    issued = [first.next() for _ in range(3)]
    assert issued == [1, 2, 3] and path.read_text() == "10"  # one write for the block 1..10
    again = SequenceCounter(path, block=10)  # after a crash: 4..10 might have been used, so skip them
    assert again.next() == 11 and path.read_text() == "20"
    issued += [again.next() for _ in range(12)]
    assert issued == sorted(set(issued)) and path.read_text() == "30"


def test_advance_past_what_the_coordinator_accepted(tmp_path):
    counter = SequenceCounter(tmp_path / "seq")
    counter.next()
    counter.advance_past(1_700_000_000_000_000)  # a device that used clock-derived numbers before
    assert counter.next() == 1_700_000_000_000_001
    counter.advance_past(5)  # never backwards
    assert counter.next() == 1_700_000_000_000_002
    assert SequenceCounter(tmp_path / "seq").next() > 1_700_000_000_000_002  # and persisted


def test_a_damaged_file_is_a_clear_error(tmp_path):
    (tmp_path / "seq").write_text("not a number")
    with pytest.raises(ValueError, match="damaged"):
        SequenceCounter(tmp_path / "seq")
