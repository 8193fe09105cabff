"""TRUNCATE barriers of the PostgreSQL sink: a truncate is applied once every partition reached it.

Capture writes each truncate to every partition of its topic (:mod:`walbridge.truncates`). In each
partition the copy separates the rows changed before the truncate from those changed after it. The
guarantee: **the destination applies the truncate after every row change that preceded it in the
source and before every change that followed it, with any number of partitions and sink
processes**. How:

* The runner stops reading a partition at its copy (pauses it, and reads nothing after the copy in
  that batch), so a batch holds, per partition, only changes from before a pending truncate.
* :meth:`BarrierLog.arrive` (in the batch's transaction, before any table is touched) records that
  the partition reached the truncate in ``walbridge.truncate_barriers`` (one row per group, topic
  and truncate, locked by the upsert: arrivals of several processes serialise on it). The arrival
  commits with the partition's offsets (just past the copy), so a restart or a rebalance finds the
  partition still waiting.
* The arrival that completes the set (``partitions`` distinct partitions) marks the barrier applied
  and the sink executes the TRUNCATE in that same transaction, after the batch's rows (which all
  precede it). Other arrivals apply nothing.
* Waiting partitions stay paused; the runner asks :meth:`BarrierLog.applied` about twice a second
  and resumes them once their truncate is applied. A partition assigned to a member (restart,
  rebalance) is paused when :meth:`BarrierLog.waiting` says it arrived at a truncate not yet
  applied.

Capture is at-least-once: after a restart it may send a truncate again, with the row changes around
it, and some copies of the first set may be missing (lost with the producer's queue). Each set of
copies is its own barrier (``<truncate id>@<sent>``, :class:`walbridge.truncates.Barrier`): the newer
set is applied again (the rows sent again before it are removed again, those after it follow), and
an older set still incomplete when a newer one arrives is abandoned (its waiting partitions resume
and meet the newer set further on); a copy of an older set read after a newer one exists is passed
over. Arrivals lock barrier rows in (topic, id) order, before the tables, so two processes
cannot deadlock on them. A truncate of several tables in one statement is one barrier per table's
topic. A truncate without the headers (real Debezium: one copy in one partition) is not a barrier:
the sink applies it where it reads it, exact only with one partition.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import psycopg

from walbridge.pgerrors import map_pg_error
from walbridge.sinks.base import SinkRecord, TopicPartitionKey
from walbridge.truncates import Barrier, barrier_of

__all__ = ["BARRIERS_TABLE", "BarrierLog", "is_barrier"]

log = logging.getLogger(__name__)

BARRIERS_TABLE = "walbridge.truncate_barriers"

_DDL = """
CREATE SCHEMA IF NOT EXISTS walbridge;
CREATE TABLE IF NOT EXISTS walbridge.truncate_barriers (
    group_id text NOT NULL,
    topic text NOT NULL,
    barrier text NOT NULL,
    truncate_id text NOT NULL,
    sent bigint NOT NULL,
    partitions integer NOT NULL,
    arrived integer[] NOT NULL,
    applied_at timestamptz,
    superseded boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, barrier)
)
"""

_SUPERSEDE_SQL = """
UPDATE walbridge.truncate_barriers SET applied_at = now(), superseded = true
WHERE group_id = %s AND topic = %s AND truncate_id = %s AND sent < %s AND applied_at IS NULL
"""

_NEWER_SQL = """
SELECT EXISTS (
    SELECT 1 FROM walbridge.truncate_barriers
    WHERE group_id = %s AND topic = %s AND truncate_id = %s AND sent > %s
)
"""

_ARRIVE_SQL = """
INSERT INTO walbridge.truncate_barriers AS b
    (group_id, topic, barrier, truncate_id, sent, partitions, arrived)
VALUES (%s, %s, %s, %s, %s, %s, %s::int[])
ON CONFLICT (group_id, topic, barrier) DO UPDATE
SET arrived = ARRAY(SELECT DISTINCT x FROM unnest(b.arrived || EXCLUDED.arrived) AS u(x) ORDER BY x)
RETURNING cardinality(arrived), partitions, applied_at IS NOT NULL
"""

_APPLY_SQL = """
UPDATE walbridge.truncate_barriers SET applied_at = now()
WHERE group_id = %s AND topic = %s AND barrier = %s
"""

_WAITING_SQL = """
SELECT topic, barrier, arrived FROM walbridge.truncate_barriers
WHERE group_id = %s AND applied_at IS NULL AND topic = ANY(%s)
"""

_APPLIED_SQL = """
SELECT x.t, x.b FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[]) AS x(t, b, tid, s)
WHERE EXISTS (
    SELECT 1 FROM walbridge.truncate_barriers r
    WHERE r.group_id = %s AND r.topic = x.t AND r.truncate_id = x.tid
      AND ((r.sent = x.s AND r.applied_at IS NOT NULL) OR r.sent > x.s)
)
"""
"""Applied, abandoned, or superseded by a newer set of copies of the same truncate."""


def _barrier(record: SinkRecord) -> Barrier | None:
    event = record.event
    return barrier_of(record.headers) if event is not None and event.op == "t" else None


def is_barrier(record: SinkRecord) -> str | None:
    """The barrier (``<truncate id>@<sent>``) when ``record`` is a copy of a truncate in every partition."""
    barrier = _barrier(record)
    return None if barrier is None else barrier.key


def ensure_table(conn: psycopg.Connection[Any]) -> None:
    """Create ``walbridge.truncate_barriers`` when missing (commits on a transactional connection)."""
    if conn.execute("SELECT to_regclass('walbridge.truncate_barriers')").fetchone() != (None,):
        return
    try:
        with conn.transaction():
            conn.execute(_DDL)
    except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateObject):
        pass  # another sink created it at the same moment


class BarrierLog:
    """The barrier state of one consumer group in the destination (see the module docstring)."""

    def __init__(self, dsn: str, group_id: str, application_name: str) -> None:
        self.dsn = dsn
        self.group_id = group_id
        self.application_name = application_name
        self._poll_conn: psycopg.Connection[Any] | None = None
        """Autocommit connection of the runner's thread (the batch's connection may be busy)."""

    def arrive(self, conn: psycopg.Connection[Any], records: list[SinkRecord]) -> list[SinkRecord]:
        """Record the batch's arrivals; the records to apply (a truncate only where it completes)."""
        arrivals: dict[tuple[str, str, int], tuple[Barrier, set[int], SinkRecord]] = {}
        rest: list[SinkRecord] = []
        for record in records:
            barrier = _barrier(record)
            if barrier is None:
                rest.append(record)
                continue
            ident = (record.topic, barrier.id, barrier.sent)
            partitions = arrivals[ident][1] if ident in arrivals else set()
            partitions.add(record.partition)
            arrivals[ident] = (barrier, partitions, record)
        if not arrivals:
            return records
        for (topic, _, _), (barrier, partitions, record) in sorted(arrivals.items(), key=lambda kv: kv[0]):
            if self._arrive(conn, topic, barrier, partitions):
                rest.append(record)  # after every row of the batch: they all precede the truncate
        return rest

    def _arrive(
        self, conn: psycopg.Connection[Any], topic: str, barrier: Barrier, partitions: set[int]
    ) -> bool:
        """Record one arrival; True when it completes the barrier (apply the truncate now)."""
        group, key = self.group_id, barrier.key
        conn.execute(_SUPERSEDE_SQL, (group, topic, barrier.id, barrier.sent))
        newer = conn.execute(_NEWER_SQL, (group, topic, barrier.id, barrier.sent)).fetchone()
        if newer and newer[0]:
            log.info("truncate %s of %s: a copy of an earlier send; passed over", key, topic)
            return False
        arrived, expected, applied = conn.execute(
            _ARRIVE_SQL, (group, topic, key, barrier.id, barrier.sent, barrier.partitions, sorted(partitions))
        ).fetchone() or (0, barrier.partitions, False)
        if applied:
            log.info("truncate %s of %s was applied already; this copy is a duplicate", key, topic)
            return False
        if arrived < expected:
            log.info(
                "truncate %s of %s: partition(s) %s arrived (%d of %d); waiting for the others",
                key,
                topic,
                sorted(partitions),
                arrived,
                expected,
            )
            return False
        conn.execute(_APPLY_SQL, (group, topic, key))
        log.info("truncate %s of %s: every partition arrived; applying it", key, topic)
        return True

    def waiting(self, partitions: Iterable[TopicPartitionKey]) -> dict[TopicPartitionKey, str]:
        """Partitions that arrived at a truncate not applied yet → that truncate's id."""
        keys = set(partitions)
        if not keys:
            return {}
        rows = self._query(_WAITING_SQL, (self.group_id, sorted({t for t, _ in keys})))
        found: dict[TopicPartitionKey, str] = {}
        for topic, ident, arrived in rows:
            for partition in arrived:
                if (topic, partition) in keys:
                    found[(topic, partition)] = ident
        return found

    def applied(self, barriers: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (topic, barrier) are applied, abandoned or superseded (their partitions resume)."""
        items = sorted(set(barriers))
        if not items:
            return set()
        parts = [key.rpartition("@") for _, key in items]
        rows = self._query(
            _APPLIED_SQL,
            (
                [t for t, _ in items],
                [b for _, b in items],
                [ident for ident, _, _ in parts],
                [int(sent or 0) for _, _, sent in parts],
                self.group_id,
            ),
        )
        return {(t, b) for t, b in rows}

    def close(self) -> None:
        if self._poll_conn is not None:
            self._poll_conn.close()
            self._poll_conn = None

    def _query(self, query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """Run on the polling connection; a connection that broke while idle is replaced once."""
        for attempt in (1, 2):
            conn = self._poll_conn
            reused = conn is not None and not conn.closed and not conn.broken
            try:
                if conn is None or not reused:
                    conn = self._poll_conn = psycopg.connect(
                        self.dsn, autocommit=True, connect_timeout=5, application_name=self.application_name
                    )
                    ensure_table(conn)
                return conn.execute(query, params).fetchall()
            except psycopg.Error as exc:
                self.close()
                if not (reused and attempt == 1 and isinstance(exc, psycopg.OperationalError)):
                    raise map_pg_error(exc, "reading truncate barriers") from exc
        raise AssertionError("unreachable")
