"""The chunk plan of a batch of event records: which records go in one call, and after which calls.

Contract: :class:`ChunkPlanner` takes event records one at a time, in Kafka order, and places each in a
chunk of at most ``size`` records of one event type holding at most one event per row (``order_key``),
after the chunk holding the row's previous event (``after``: those chunks' numbers). ``add`` returns the
chunks that became *ready*: full (no record can join them any more) and after ready chunks only, so that a
caller sending ready chunks as they come never sends a chunk before one it must follow. ``finish`` returns
the rest, in chunk order. :func:`plan_chunks` is the whole plan of a list at once.

Why these rules, and what the caller does with ``after``: see :mod:`walbridge.sinks.salesforce.publisher`.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from walbridge.sinks.salesforce.mapping import EventRecord

__all__ = ["Chunk", "ChunkPlanner", "plan_chunks"]


@dataclass(slots=True)
class Chunk:
    number: int
    sobject: str
    indexes: list[int] = field(default_factory=list)
    after: set[int] = field(default_factory=set)
    """Chunks holding the previous event of one of this chunk's rows."""


class ChunkPlanner:
    """Places records into chunks as they come (see the module docstring)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.chunks: list[Chunk] = []
        self._count = 0
        self._open_from: dict[str, int] = {}
        """Per type: the chunks before this number are full or of another type."""
        self._row_chunk: dict[Hashable, int] = {}
        self._released: set[int] = set()
        self._waiting: list[Chunk] = []  # full, after a chunk not released yet

    def add(self, record: EventRecord) -> list[Chunk]:
        """Place the next record; the chunks that became ready."""
        index, self._count = self._count, self._count + 1
        chunks, size, sobject = self.chunks, self.size, record.sobject
        previous = self._row_chunk.get(record.order_key)
        first_open = self._open_from.get(sobject, 0)
        number = first_open if previous is None else max(first_open, previous + 1)
        while number < len(chunks) and (
            chunks[number].sobject != sobject or len(chunks[number].indexes) >= size
        ):
            number += 1
        if number == len(chunks):
            chunks.append(Chunk(number, sobject))
        chunk = chunks[number]
        chunk.indexes.append(index)
        if previous is not None:
            chunk.after.add(previous)
        self._row_chunk[record.order_key] = number
        while first_open < len(chunks) and (
            chunks[first_open].sobject != sobject or len(chunks[first_open].indexes) >= size
        ):
            first_open += 1
        self._open_from[sobject] = first_open
        if len(chunk.indexes) < size:
            return []
        self._waiting.append(chunk)
        return self._release()

    def chunk_of(self, row: Hashable) -> int | None:
        """The chunk holding the row's last event taken so far (None: none of its events)."""
        return self._row_chunk.get(row)

    def finish(self) -> list[Chunk]:
        """Every chunk not returned yet, in chunk order (all of them are ready now)."""
        rest = [chunk for chunk in self.chunks if chunk.number not in self._released]
        self._released.update(chunk.number for chunk in rest)
        self._waiting.clear()
        return rest

    def _release(self) -> list[Chunk]:
        ready: list[Chunk] = []
        progress = True
        while progress:
            progress = False
            for chunk in list(self._waiting):
                if chunk.after <= self._released:
                    self._waiting.remove(chunk)
                    self._released.add(chunk.number)
                    ready.append(chunk)
                    progress = True
        return ready


def plan_chunks(records: Sequence[EventRecord], size: int) -> list[Chunk]:
    """The whole plan of ``records`` (each chunk's ``indexes`` are positions in ``records``)."""
    planner = ChunkPlanner(size)
    for record in records:
        planner.add(record)
    return planner.chunks
