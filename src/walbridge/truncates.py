"""How a TRUNCATE travels through Kafka: one copy in every partition of the table's topic.

A truncate has no key. Written to one partition it would be applied out of order with the rows
of the other partitions (rows inserted before it survive, rows inserted after it are lost). So
capture writes the same truncate record to *every* partition of the topic (both capture modes),
with two headers: :data:`BARRIER_HEADER`, an identifier of this truncate (its LSN, or ``c`` and its
change-log id in trigger mode), and :data:`PARTITIONS_HEADER`, how many partitions received a
copy, and :data:`SENT_HEADER`, when this copy set was sent (ns): a capture that restarts sends a truncate
again, perhaps after some copies of the first set were lost, and the newer set supersedes it. In each
partition the copy sits exactly between the rows changed before the truncate and
those changed after it, so a sink that stops every partition at its copy and applies the truncate
once all ``partitions`` copies arrived (a barrier; see :mod:`walbridge.sinks.pg_barrier`) applies
the truncate in source order, whatever the number of partitions and sink processes.

A truncate without these headers (real Debezium writes one copy, to one partition) is applied where
it is read, as before: exact only with one partition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from walbridge.events import Source

__all__ = [
    "BARRIER_HEADER",
    "PARTITIONS_HEADER",
    "SENT_HEADER",
    "Barrier",
    "barrier_headers",
    "barrier_id",
    "barrier_of",
]

BARRIER_HEADER = "walbridge.truncate"
PARTITIONS_HEADER = "walbridge.truncate.partitions"
SENT_HEADER = "walbridge.truncate.sent"


@dataclass(frozen=True, slots=True)
class Barrier:
    """One truncate's identity within its topic, how many partitions carry a copy, and when sent."""

    id: str
    partitions: int
    sent: int = 0
    """When this set of copies was produced (ns since the epoch): a later set of the same truncate
    (capture sent it again after a restart) supersedes an earlier one."""

    @property
    def key(self) -> str:
        """This set of copies: ``<id>@<sent>``."""
        return f"{self.id}@{self.sent}"


def barrier_id(source: Source) -> str:
    """The truncate's identifier: its LSN (logical mode) or ``c<change-log id>`` (trigger mode).

    Stable across a capture restart, so a truncate sent twice (at-least-once) is recognised.
    """
    if source.lsn is not None:
        return str(source.lsn)
    if source.change_id is not None:
        return f"c{source.change_id}"
    return f"t{source.ts_ms}"


def barrier_headers(barrier: Barrier) -> list[tuple[str, bytes]]:
    return [
        (BARRIER_HEADER, barrier.id.encode()),
        (PARTITIONS_HEADER, str(barrier.partitions).encode()),
        (SENT_HEADER, str(barrier.sent).encode()),
    ]


def barrier_of(headers: Sequence[tuple[str, bytes | None]] | None) -> Barrier | None:
    """The barrier a record's headers describe, or None (not a walbridge truncate copy)."""
    if not headers:
        return None
    ident = count = None
    sent = 0
    for name, value in headers:
        if name == BARRIER_HEADER and value:
            ident = value.decode("utf-8", "replace")
        elif name in (PARTITIONS_HEADER, SENT_HEADER) and value:
            try:
                number = int(value)
            except ValueError:
                return None
            if name == SENT_HEADER:
                sent = number
            else:
                count = number
    if ident is None or count is None or count < 1:
        return None
    return Barrier(ident, count, sent)
