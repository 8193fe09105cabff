"""The soak's end-state checks, run once the load stopped and the pipeline drained.

Contract: :func:`compare_tables` reads every table of both sides as ``key → md5 of the row's text`` (the
source's columns, each rendered by PostgreSQL under one session setting, so equal values compare equal)
and counts rows lost (in the source only, or different) and extra (in the destination only).
:func:`emulator_events` finds each logged change of the Salesforce table among the emulator's events by
``(operation, id, soak_rev)`` and counts the missing and the repeated; :func:`compare_accounts` checks the
emulated Accounts against the source rows as the handler maps them; :func:`dead_letters` sorts what the
DLQ topics hold into the soak's poison and anything else; :func:`latencies` reads commit → destination
latency from the rows themselves.
"""

from __future__ import annotations

import statistics
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import psycopg
from confluent_kafka import Consumer, TopicPartition
from psycopg import sql

from walbridge.soak.faults import POISON_PREFIX, PoisonSent
from walbridge.soak.load import CustomerChange
from walbridge.soak.schema import APPLIED_COLUMN, TABLES, TableSpec

__all__ = [
    "Check",
    "DlqFindings",
    "EmulatorFindings",
    "TableFindings",
    "compare_accounts",
    "compare_tables",
    "dead_letters",
    "emulator_events",
    "latencies",
]

_SESSION = (
    "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; "
    "SET extra_float_digits = 3; SET bytea_output = 'hex'"
)
_HEADER_SINK = "walbridge.errors.sink"


@dataclass
class Check:
    ok: bool
    detail: str


@dataclass
class TableFindings:
    rows: dict[str, tuple[int, int]] = field(default_factory=dict)
    """table → (source rows, destination rows)"""
    lost: dict[str, int] = field(default_factory=dict)
    extra: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    @property
    def lost_rows(self) -> int:
        return sum(self.lost.values())

    @property
    def extra_rows(self) -> int:
        return sum(self.extra.values())

    @property
    def equal(self) -> bool:
        return self.lost_rows == 0 and self.extra_rows == 0


def _columns(conn: psycopg.Connection[Any], table: str) -> list[str]:
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
        "ORDER BY attnum",
        (table,),
    ).fetchall()
    return [r[0] for r in rows if r[0] != APPLIED_COLUMN]


def _hashes(conn: psycopg.Connection[Any], spec: TableSpec, columns: list[str]) -> dict[tuple[str, ...], str]:
    schema, _, name = spec.name.rpartition(".")
    rendered = sql.SQL(" || ',' || ").join(
        sql.SQL("quote_nullable({}::text)").format(sql.Identifier(c)) for c in columns
    )
    keys = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(k)) for k in spec.key)
    query = sql.SQL("SELECT {}, md5({}) FROM {}").format(keys, rendered, sql.Identifier(schema, name))
    return {tuple(row[:-1]): row[-1] for row in conn.execute(query).fetchall()}


def compare_tables(source_dsn: str, dest_dsn: str) -> TableFindings:
    findings = TableFindings()
    with (
        psycopg.connect(source_dsn, autocommit=True) as src,
        psycopg.connect(dest_dsn, autocommit=True, connect_timeout=5) as dst,
    ):
        src.execute(_SESSION)
        dst.execute(_SESSION)
        for spec in TABLES:
            columns = _columns(src, spec.name)
            source = _hashes(src, spec, columns)
            try:
                dest = _hashes(dst, spec, columns)
            except psycopg.errors.UndefinedColumn as exc:
                findings.examples.append(f"{spec.name}: {exc}")
                dest = {}
            findings.rows[spec.name] = (len(source), len(dest))
            lost = [k for k, h in source.items() if dest.get(k) != h]
            extra = [k for k in dest if k not in source]
            findings.lost[spec.name], findings.extra[spec.name] = len(lost), len(extra)
            findings.examples += [f"{spec.name} key {k}: lost or different" for k in lost[:3]]
            findings.examples += [f"{spec.name} key {k}: only in the destination" for k in extra[:3]]
    return findings


# ---------------------------------------------------------------------------------------------- emulator


def fetch_events(emulator_url: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    after = 0
    with httpx.Client(base_url=emulator_url, timeout=30) as client:
        while True:
            batch = client.get("/emulator/events", params={"after": after, "limit": 10_000}).json()["events"]
            if not batch:
                return events
            events += batch
            after = int(batch[-1]["ReplayId"])


@dataclass
class EmulatorFindings:
    logged: int = 0
    missing: int = 0
    duplicates: int = 0
    events: int = 0
    examples: list[str] = field(default_factory=list)


def emulator_events(
    events: list[dict[str, Any]], table: str, logged: list[CustomerChange]
) -> EmulatorFindings:
    seen: Counter[tuple[str, int, int]] = Counter()
    for event in events:
        fields = event.get("fields") or event
        if fields.get("Source_Table__c") != table or not fields.get("Payload__c"):
            continue
        payload = orjson.loads(fields["Payload__c"])
        if payload.get("soak_rev") is None:
            continue
        seen[(fields["Operation__c"], int(fields["Record_Id__c"]), int(payload["soak_rev"]))] += 1
    wanted = {(c.operation, c.id, c.rev) for c in logged}
    missing = [w for w in wanted if w not in seen]
    return EmulatorFindings(
        logged=len(wanted),
        missing=len(missing),
        duplicates=sum(n - 1 for n in seen.values() if n > 1),
        events=sum(seen.values()),
        examples=[f"{op} id={ident} rev={rev} never reached the emulator" for op, ident, rev in missing[:5]],
    )


def compare_accounts(emulator_url: str, source_dsn: str) -> Check:
    """Accounts by External_Id__c against ``inventory.customers`` as the handler maps them."""
    records = httpx.get(f"{emulator_url}/emulator/records", params={"sobject": "Account"}, timeout=30)
    accounts = {r["External_Id__c"]: r for r in records.json()["records"]}
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT id::text, customer_code, first_name, last_name, phone FROM inventory.customers"
        ).fetchall()
    problems = []
    for ident, code, first, last, phone in rows:
        account = accounts.pop(ident, None)
        if account is None:
            problems.append(f"customer {ident}: no Account")
            continue
        name = " ".join(p for p in (first, last) if p and p.strip())
        expected = {"AccountNumber": code, "Phone": phone, "Name": name}
        wrong = {k: (v, account.get(k)) for k, v in expected.items() if account.get(k) != v}
        if wrong:
            problems.append(f"customer {ident}: {wrong}")
    agree = len(rows) - len(problems)
    problems += [f"Account {ident} has no source row" for ident in accounts]
    detail = f"{len(rows)} customers, {agree} Accounts agree, {len(accounts)} Accounts without a source row"
    if problems:
        detail += f"; {len(problems)} problem(s): " + "; ".join(problems[:5])
    return Check(not problems, detail)


# ---------------------------------------------------------------------------------------------- DLQ


@dataclass
class DlqFindings:
    sent: int
    found: int
    expected_entries: int
    poison_entries: int
    unexpected: int
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.found == self.sent and self.unexpected == 0 and self.poison_entries >= self.expected_entries
        )


def dead_letters(
    bootstrap: str, options: dict[str, Any], dlq_topics: list[str], poison: list[PoisonSent]
) -> DlqFindings:
    """Read every DLQ topic to its end (it stays quiet for 3 s)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"soak-dlq-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "log_level": 0,
            **options,
        }
    )
    listed = consumer.list_topics(timeout=10).topics
    present = [t for t in dlq_topics if t in listed]
    consumer.assign([TopicPartition(t, p, 0) for t in present for p in listed[t].partitions])
    found: set[tuple[int, str]] = set()
    poison_entries = unexpected = 0
    examples: list[str] = []
    quiet = 0.0
    while present and quiet < 3.0:
        batch = consumer.consume(1000, timeout=0.5)
        quiet = quiet + 0.5 if not batch else 0.0
        for message in batch:
            if message.error() is not None:
                continue
            value = bytes(message.value() or b"")
            headers = _headers(message.headers())
            if value.startswith(POISON_PREFIX):
                number = int(value[len(POISON_PREFIX) :].split(b" ", 1)[0])
                found.add((number, headers.get(_HEADER_SINK, "?")))
                poison_entries += 1
            else:
                unexpected += 1
                error = headers.get("__connect.errors.exception.message", "?")
                examples.append(f"{message.topic()}@{message.offset()}: {error[:200]}")
    consumer.close()
    expected = {(p.number, sink) for p in poison for sink in p.sinks}
    return DlqFindings(
        sent=len(poison),
        found=len({n for n, _ in found if any(n == p.number for p in poison)}),
        expected_entries=len(expected),
        poison_entries=len(expected & found),
        unexpected=unexpected,
        examples=examples[:5]
        + [f"poison #{n} not dead-lettered by {s}" for n, s in sorted(expected - found)][:5],
    )


def _headers(raw: Any) -> dict[str, str]:
    pairs: list[tuple[str, Any]] = list(raw or [])
    return {
        name: value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")
        for name, value in pairs
    }


# ---------------------------------------------------------------------------------------------- latency


def latencies(dest_dsn: str, since_epoch: float) -> list[tuple[float, float]]:
    """``(applied at, epoch s; commit → destination, ms)`` of every destination row the load wrote."""
    found: list[tuple[float, float]] = []
    with psycopg.connect(dest_dsn, autocommit=True) as conn:
        for spec in TABLES:
            rows = conn.execute(
                sql.SQL(
                    "SELECT extract(epoch FROM {a})::float8, "
                    "(extract(epoch FROM {a} - soak_ts) * 1000)::float8 FROM {t} "
                    "WHERE soak_ts IS NOT NULL AND {a} IS NOT NULL AND extract(epoch FROM soak_ts) >= %s"
                ).format(a=sql.Identifier(APPLIED_COLUMN), t=sql.Identifier(*spec.name.split("."))),
                (since_epoch,),
            ).fetchall()
            found += [(float(a), float(ms)) for a, ms in rows]
    return found


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(values)
    if len(ordered) == 1:
        return {"p50": ordered[0], "p99": ordered[0], "max": ordered[0]}
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"p50": round(cuts[49], 1), "p99": round(cuts[98], 1), "max": round(ordered[-1], 1)}
