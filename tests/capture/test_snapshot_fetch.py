"""How many rows a snapshot fetches per round trip: bounded by their text, so wide rows do not fill memory."""

from __future__ import annotations

from walbridge.capture.snapshot import FETCH_BYTES, FETCH_ROWS, _next_fetch


def test_narrow_rows_are_fetched_in_full_batches() -> None:
    assert _next_fetch([("1", "pending", None)] * 64) == FETCH_ROWS


def test_wide_rows_are_fetched_a_few_at_a_time() -> None:
    megabyte = "x" * (1 << 20)
    size = _next_fetch([("1", megabyte)] * 64)
    assert size == FETCH_BYTES // ((1 << 20) + 2)
    assert _next_fetch([("1", megabyte * 20)]) == 1


def test_a_few_wide_rows_among_narrow_ones_count() -> None:
    batch = [("1", "a")] * 2047 + [("2", "x" * (64 << 20))]  # 32 KB a row on average
    assert _next_fetch(batch) == FETCH_BYTES // ((64 << 20) // 2048 + 4)
