"""The soak's load: concurrent writers issuing a seeded random mix of changes at a set rate.

Contract: :class:`Load` runs ``writers`` threads, each with its own connection and ``random.Random(seed,
index)``, each owning a disjoint id range (so writers never wait on each other's rows), until ``stop()``.
A transaction is one change (most often) or several (multi-row transactions, across tables); changes are
inserts, updates, primary-key changes and deletes; writer 0 truncates ``public.employees`` or
``soak.typed`` about every ``truncate_every_s``. Every write sets ``soak_ts = clock_timestamp()`` and a
new ``soak_rev``.
Counts are of committed row changes. Each committed change of :data:`~walbridge.soak.schema.SALESFORCE_TABLE`
is logged as ``(operation, id, soak_rev)`` (a delete names the revision it deleted; a key change is a
delete of the old key and an insert of the new one, as capture emits it), so the end check can find each
in the emulator. A failed or ambiguous commit (the server restarted) is not logged, and the writer
re-reads its rows from the database before going on.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg

__all__ = ["CustomerChange", "Load"]

log = logging.getLogger(__name__)

_ID_LIMIT = 2_000_000_000
"""Ids stay below this: the seed's tables key by ``integer``."""
_TABLE_WEIGHTS = {
    "inventory.customers": 25,
    "inventory.orders": 25,
    "public.employees": 18,
    "soak.typed": 15,
    "soak.events_part": 12,
    "soak.documents": 5,
}
_TARGET_ROWS = 400
"""Rows per writer and table around which inserts and deletes balance."""
_REGIONS = ("eu", "us", "apac")


@dataclass(frozen=True, slots=True)
class CustomerChange:
    operation: str  # INSERT | UPDATE | DELETE, as the Salesforce event's Operation__c
    id: int
    rev: int


@dataclass
class _Owned:
    """What one writer believes it has in each table (ids; customers' revisions and orders' parents)."""

    ids: dict[str, list[Any]] = field(default_factory=lambda: {t: [] for t in _TABLE_WEIGHTS})
    customer_rev: dict[int, int] = field(default_factory=dict)
    order_parent: dict[int, int] = field(default_factory=dict)


class _Writer:
    def __init__(self, load: Load, index: int) -> None:
        self.load = load
        self.index = index
        self.rng = random.Random(f"{load.seed}:{index}")
        self.owned = _Owned()
        self.span = _ID_LIMIT // (load.writers + 1)
        self.next_id = (index + 1) * self.span
        self.next_rev = (index + 1) * self.span * 1000
        self.pending: list[CustomerChange] = []
        self.changes = 0
        self.conn: psycopg.Connection[Any] | None = None

    # ------------------------------------------------------------------ loop

    def run(self) -> None:
        per_second = self.load.rate / self.load.writers
        began = time.monotonic()
        done = 0
        while not self.load.stopping.is_set():
            if self.conn is None and not self._connect():
                continue
            done += self._transaction()
            due = began + done / per_second
            lag = due - time.monotonic()
            if lag > 0:
                self.load.stopping.wait(lag)
            elif lag < -1.0:  # behind by more than a second: do not burst to catch up
                began, done = time.monotonic(), 0
        if self.conn is not None:
            self.conn.close()

    def _connect(self) -> bool:
        try:
            self.conn = psycopg.connect(self.load.dsn, connect_timeout=5)
            self._refresh()
            return True
        except psycopg.Error:
            self.conn = None
            self.load.stopping.wait(0.5)
            return False

    def _transaction(self) -> int:
        assert self.conn is not None
        self.pending = []
        roll = self.rng.random()
        try:
            with self.conn.transaction():
                if self.index == 0 and time.monotonic() >= self.load.next_truncate:
                    count = self._truncate()
                elif roll < 0.12:
                    count = sum(self._one_change() for _ in range(self.rng.randint(2, 8)))
                else:
                    count = self._one_change()
        except psycopg.Error as exc:
            # A lost connection (the source restarts) or a rolled-back transaction: either way, start
            # again on a new connection, which re-reads this writer's rows.
            log.debug("writer %d: %s; reconnecting", self.index, exc)
            self.conn.close()
            self.conn = None
            self.load.count_failure(exc)
            return 0
        self.load.commit(self.pending, count)
        return count

    def _refresh(self) -> None:
        """Re-read this writer's rows: after a failure the in-memory view may be wrong."""
        assert self.conn is not None
        low, high = (self.index + 1) * self.span, (self.index + 2) * self.span
        owned = _Owned()
        with self.conn.transaction():
            for table in _TABLE_WEIGHTS:
                if table == "soak.events_part":
                    rows = self.conn.execute(
                        "SELECT id, region FROM soak.events_part WHERE id >= %s AND id < %s", (low, high)
                    ).fetchall()
                    owned.ids[table] = [tuple(r) for r in rows]
                    continue
                key = "emp_id" if table == "public.employees" else "id"
                extra = {"inventory.customers": ", soak_rev", "inventory.orders": ", customer_id"}.get(
                    table, ""
                )
                rows = self.conn.execute(
                    f"SELECT {key}{extra} FROM {table} WHERE {key} >= %s AND {key} < %s",
                    (low, high),
                ).fetchall()
                owned.ids[table] = [r[0] for r in rows]
                if table == "inventory.customers":
                    owned.customer_rev = {r[0]: r[1] for r in rows}
                elif table == "inventory.orders":
                    owned.order_parent = {r[0]: r[1] for r in rows}
        self.owned = owned

    # ------------------------------------------------------------------ one change

    def _one_change(self) -> int:
        table = self.rng.choices(list(_TABLE_WEIGHTS), weights=list(_TABLE_WEIGHTS.values()))[0]
        ids = self.owned.ids[table]
        fill = len(ids) / _TARGET_ROWS
        roll = self.rng.random()
        if not ids or roll < 0.5 - 0.3 * (fill - 1):
            return self._insert(table)
        if roll < 0.85:
            if self.rng.random() < 0.06:
                return self._change_key(table)
            return self._update(table)
        return self._delete(table)

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    def _rev(self) -> int:
        self.next_rev += 1
        return self.next_rev

    def _exec(self, query: str, params: tuple[Any, ...]) -> int:
        assert self.conn is not None
        return self.conn.execute(query, params).rowcount

    def _insert(self, table: str) -> int:
        new, rev = self._id(), self._rev()
        build: dict[str, Callable[[int, int], tuple[str, tuple[Any, ...]]]] = {
            "inventory.customers": self._customer_row,
            "inventory.orders": self._order_row,
            "public.employees": self._employee_row,
            "soak.typed": self._typed_row,
            "soak.events_part": self._event_row,
            "soak.documents": self._document_row,
        }
        if table == "inventory.orders" and not self.owned.ids["inventory.customers"]:
            table = "inventory.customers"
        query, params = build[table](new, rev)
        count = self._exec(query, params)
        if table == "soak.events_part":
            self.owned.ids[table].append((new, params[1]))
        else:
            self.owned.ids[table].append(new)
        if table == "inventory.customers":
            self.owned.customer_rev[new] = rev
            self.pending.append(CustomerChange("INSERT", new, rev))
        elif table == "inventory.orders":
            self.owned.order_parent[new] = params[2]
        return count

    def _customer_row(self, new: int, rev: int) -> tuple[str, tuple[Any, ...]]:
        city = self.rng.choice(["Paris", "Lyon", "Oslo", "Lima", "Kyiv", "Quito"])
        address = orjson.dumps({"street": f"{self.rng.randint(1, 999)} Soak St", "city": city}).decode()
        return (
            "INSERT INTO inventory.customers (id, customer_code, first_name, last_name, email, phone, "
            "address, soak_ts, soak_rev) VALUES (%s, %s, %s, %s, %s, %s, %s, clock_timestamp(), %s)",
            (new, f"C{new}", self._word(), self._word(), f"c{new}@soak.example", self._phone(), address, rev),
        )

    def _order_row(self, new: int, rev: int) -> tuple[str, tuple[Any, ...]]:
        parent = self.rng.choice(self.owned.ids["inventory.customers"])
        items = orjson.dumps([{"product": self._word(), "quantity": self.rng.randint(1, 9)}]).decode()
        return (
            "INSERT INTO inventory.orders (id, order_number, customer_id, total_amount, items, soak_ts, "
            "soak_rev) VALUES (%s, %s, %s, %s, %s, clock_timestamp(), %s)",
            (new, f"ORD-{new}", parent, round(self.rng.uniform(1, 9999), 2), items, rev),
        )

    def _employee_row(self, new: int, rev: int) -> tuple[str, tuple[Any, ...]]:
        return (
            "INSERT INTO public.employees (emp_id, first_name, last_name, dob, city, salary, soak_ts, "
            "soak_rev) VALUES (%s, %s, %s, make_date(%s, %s, %s), %s, %s, clock_timestamp(), %s)",
            (
                new,
                self._word(),
                self._word(),
                self.rng.randint(1950, 2004),
                self.rng.randint(1, 12),
                self.rng.randint(1, 28),
                self._word(),
                self.rng.randint(20_000, 200_000),
                rev,
            ),
        )

    def _typed_row(self, new: int, rev: int) -> tuple[str, tuple[Any, ...]]:
        ratio = self.rng.choice(["NaN", "0", "-1e-30", str(self.rng.random()), "123456789012345678901234.5"])
        doc = orjson.dumps({"k": self._word(), "n": [1, 2.5, None], "nested": {"\u00e9": "\u2603"}}).decode()
        return (
            "INSERT INTO soak.typed (id, tags, scores, flags, doc, amount, ratio, big, soak_ts, soak_rev) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s::numeric, %s, clock_timestamp(), %s)",
            (
                new,
                [self._word(), "with,comma", 'q"uote', None],
                [self.rng.randint(-9, 9), None],
                [True, None, False],
                doc,
                f"{self.rng.uniform(-1e6, 1e6):.6f}",
                ratio,
                f"{self.rng.randint(0, 10**27)}.{self.rng.randint(0, 10**10 - 1):010d}",
                rev,
            ),
        )

    def _event_row(self, new: int, rev: int) -> tuple[str, tuple[Any, ...]]:
        region = self.rng.choice(_REGIONS)
        payload = orjson.dumps({"kind": self._word(), "at": self.rng.random()}).decode()
        return (
            "INSERT INTO soak.events_part (id, region, payload, qty, soak_ts, soak_rev) "
            "VALUES (%s, %s, %s, %s, clock_timestamp(), %s)",
            (new, region, payload, self.rng.randint(0, 100), rev),
        )

    def _document_row(self, new: int, rev: int) -> tuple[str, tuple[Any, ...]]:
        body = self.rng.randbytes(self.rng.randint(4_000, 20_000)).hex()  # hex of random bytes: TOASTed
        return (
            "INSERT INTO soak.documents (id, title, body, soak_ts, soak_rev) "
            "VALUES (%s, %s, %s, clock_timestamp(), %s)",
            (new, self._word(), body, rev),
        )

    def _where(self, table: str) -> tuple[str, Any]:
        """A random owned row: (WHERE clause, its key value)."""
        picked = self.rng.choice(self.owned.ids[table])
        if table == "soak.events_part":
            return "id = %s AND region = %s", picked
        return ("emp_id = %s" if table == "public.employees" else "id = %s"), picked

    def _key_params(self, table: str, key: Any) -> tuple[Any, ...]:
        return tuple(key) if table == "soak.events_part" else (key,)

    def _update(self, table: str) -> int:
        where, key = self._where(table)
        rev = self._rev()
        sets = {
            "inventory.customers": ("phone = %s, first_name = %s", (self._phone(), self._word())),
            "inventory.orders": (
                "status = %s, total_amount = %s",
                (self.rng.choice(["paid", "shipped", "returned"]), round(self.rng.uniform(1, 9999), 2)),
            ),
            "public.employees": ("salary = salary + %s, city = %s", (self.rng.randint(1, 999), self._word())),
            "soak.typed": (
                "scores = array_append(scores, %s), doc = doc || jsonb_build_object('u', %s::int)",
                (self.rng.randint(0, 99), self.rng.randint(0, 99)),
            ),
            "soak.events_part": ("qty = qty + 1, payload = payload || '{\"u\": true}'", ()),
            # Most document updates leave the large body unchanged (the unchanged-TOAST path).
            "soak.documents": (
                ("version = version + 1, title = %s", (self._word(),))
                if self.rng.random() < 0.8
                else ("body = %s", (self.rng.randbytes(6_000).hex(),))
            ),
        }[table]
        count = self._exec(
            f"UPDATE {table} SET {sets[0]}, soak_ts = clock_timestamp(), soak_rev = %s WHERE {where}",
            (*sets[1], rev, *self._key_params(table, key)),
        )
        if count == 0:
            self._forget(table, key)
        elif table == "inventory.customers":
            self.owned.customer_rev[key] = rev
            self.pending.append(CustomerChange("UPDATE", key, rev))
        return count

    def _change_key(self, table: str) -> int:
        where, key = self._where(table)
        if table == "inventory.customers" and key in self.owned.order_parent.values():
            return self._update(table)  # orders refer to it (no ON UPDATE CASCADE)
        rev = self._rev()
        if table == "soak.events_part":  # moves the row to another partition
            new: Any = (key[0], self.rng.choice([r for r in _REGIONS if r != key[1]]))
            setter, params = "region = %s", (new[1],)
        else:
            new = self._id()
            column = "emp_id" if table == "public.employees" else "id"
            setter, params = f"{column} = %s", (new,)
        count = self._exec(
            f"UPDATE {table} SET {setter}, soak_ts = clock_timestamp(), soak_rev = %s WHERE {where}",
            (*params, rev, *self._key_params(table, key)),
        )
        old_rev = self.owned.customer_rev.get(key)
        parent = self.owned.order_parent.get(key)
        self._forget(table, key)
        if count:
            self.owned.ids[table].append(new)
            if table == "inventory.customers" and old_rev is not None:
                self.owned.customer_rev[new] = rev
                self.pending += [CustomerChange("DELETE", key, old_rev), CustomerChange("INSERT", new, rev)]
            elif table == "inventory.orders" and parent is not None:
                self.owned.order_parent[new] = parent
        return count

    def _delete(self, table: str) -> int:
        where, key = self._where(table)
        count = 0
        if table == "inventory.customers":
            children = [o for o, parent in self.owned.order_parent.items() if parent == key]
            count += self._exec("DELETE FROM inventory.orders WHERE customer_id = %s", (key,))
            for order in children:
                self._forget("inventory.orders", order)
        deleted = self._exec(f"DELETE FROM {table} WHERE {where}", self._key_params(table, key))
        if deleted and table == "inventory.customers":
            self.pending.append(CustomerChange("DELETE", key, self.owned.customer_rev[key]))
        self._forget(table, key)
        return count + deleted

    def _forget(self, table: str, key: Any) -> None:
        ids = self.owned.ids[table]
        if key in ids:
            ids.remove(key)
        if table == "inventory.customers":
            self.owned.customer_rev.pop(key, None)
        elif table == "inventory.orders":
            self.owned.order_parent.pop(key, None)

    def _truncate(self) -> int:
        table = self.rng.choice(["public.employees", "soak.typed"])
        assert self.conn is not None
        self.conn.execute(f"TRUNCATE {table}")
        self.owned.ids[table].clear()
        self.load.truncates += 1
        self.load.next_truncate = time.monotonic() + self.load.truncate_every_s * self.rng.uniform(0.5, 1.5)
        return 1  # one event; the rows it removed are not counted as changes

    # ------------------------------------------------------------------ values

    def _word(self) -> str:
        return "".join(
            self.rng.choice("abcdefghijklmnopqrstuvwxyzé'ü ") for _ in range(self.rng.randint(3, 12))
        )

    def _phone(self) -> str:
        return f"+1-555-{self.rng.randint(0, 9999):04d}"


class Load:
    """``writers`` threads writing ``rate`` changes per second in total into ``dsn`` until stopped."""

    def __init__(
        self, dsn: str, *, rate: float, seed: int, writers: int = 4, truncate_every_s: float = 120.0
    ):
        self.dsn = dsn
        self.rate = rate
        self.seed = seed
        self.writers = writers
        self.truncate_every_s = truncate_every_s
        self.next_truncate = time.monotonic() + truncate_every_s
        self.stopping = threading.Event()
        self.customer_log: list[CustomerChange] = []
        self.changes = 0
        self.transactions = 0
        self.failures = 0
        self.failure_kinds: Counter[str] = Counter()
        self.truncates = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def commit(self, changes: list[CustomerChange], count: int) -> None:
        with self._lock:
            self.customer_log += changes
            self.changes += count
            self.transactions += 1

    def count_failure(self, exc: Exception) -> None:
        with self._lock:
            self.failures += 1
            self.failure_kinds[type(exc).__name__] += 1

    def start(self) -> None:
        for index in range(self.writers):
            writer = _Writer(self, index)
            thread = threading.Thread(target=writer.run, name=f"soak-writer-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(30)
