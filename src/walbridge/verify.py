"""Compare source and destination tables row by row, streaming, in bounded memory.

For each ``(source table, destination table)`` pair, both sides are read ordered by the
source's primary key through server-side cursors, ``chunk_rows`` rows at a time, as
``(key, md5 of the row's text form)``; a merge of the two ordered streams finds rows missing
from the destination, extra rows in it, and rows whose hash differs. Only the columns both
tables have are compared, each side rendered by PostgreSQL as text (so equal types compare
equal regardless of the client). Text keys are ordered with ``COLLATE "C"`` on both sides so the
merge order is the same whatever the databases' collations.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from psycopg import sql

from walbridge import pgcatalog
from walbridge.errors import ConfigError, WalbridgeError
from walbridge.pgerrors import map_pg_error
from walbridge.sinks.pg_types import TableInfo, read_table

__all__ = ["TableDiff", "compare_tables", "verify_tables"]

_TEXT_TYPES = {"text", "varchar", "bpchar", "name", "citext"}


@dataclass(slots=True)
class TableDiff:
    source: str
    destination: str
    source_rows: int = 0
    destination_rows: int = 0
    missing: list[tuple[Any, ...]] = field(default_factory=list)
    """Keys in the source, not in the destination."""
    extra: list[tuple[Any, ...]] = field(default_factory=list)
    different: list[tuple[Any, ...]] = field(default_factory=list)
    missing_count: int = 0
    extra_count: int = 0
    different_count: int = 0

    @property
    def clean(self) -> bool:
        return not (self.missing_count or self.extra_count or self.different_count)


def _split(name: str) -> tuple[str, str]:
    schema, _, table = name.rpartition(".")
    return schema or "public", table


def _stream(
    conn: psycopg.Connection[Any],
    table: tuple[str, str],
    key: tuple[str, ...],
    columns: list[str],
    text_keys: set[str],
    chunk_rows: int,
) -> Iterator[tuple[tuple[Any, ...], str]]:
    order = sql.SQL(", ").join(
        sql.SQL('{} COLLATE "C"').format(sql.Identifier(k)) if k in text_keys else sql.Identifier(k)
        for k in key
    )
    # Hashed as UTF-8 so that databases of different encodings hash equal text equally.
    row_text = sql.SQL("md5(convert_to(ROW({})::text, 'UTF8'))").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    )
    query = sql.SQL("SELECT {k}, {h} FROM {t} ORDER BY {o}").format(
        k=sql.SQL(", ").join(sql.Identifier(k) for k in key), h=row_text, t=sql.Identifier(*table), o=order
    )
    with conn.transaction(), conn.cursor(name="walbridge_verify") as cur:
        cur.itersize = chunk_rows
        cur.execute(query)
        for row in cur:
            yield tuple(row[:-1]), row[-1]


def _keyed_like_events(conn: psycopg.Connection[Any], table: str, info: TableInfo) -> TableInfo:
    """A table without a primary key, keyed as capture keys its events (the replica identity index)."""
    relation = pgcatalog.read_table(conn, *_split(table))
    if relation is None or not relation.key_columns:
        raise ConfigError(f"source table {table} has no primary key or replica identity index to compare by")
    return replace(info, key=relation.key_columns)


def compare_tables(
    source: psycopg.Connection[Any],
    destination: psycopg.Connection[Any],
    source_table: str,
    destination_table: str,
    *,
    chunk_rows: int = 10_000,
    keep: int = 100,
    progress: Callable[[int], None] | None = None,
) -> TableDiff:
    """Differences between one source and one destination table (at most ``keep`` keys listed per kind)."""
    diff = TableDiff(source_table, destination_table)
    src_info = read_table(source, *_split(source_table))
    dst_info = read_table(destination, *_split(destination_table))
    if src_info is None or dst_info is None:
        raise ConfigError(f"table {source_table if src_info is None else destination_table} does not exist")
    if not src_info.key:
        src_info = _keyed_like_events(source, source_table, src_info)
    columns = [c for c in src_info.columns if c in dst_info.columns]
    text_keys = {k for k in src_info.key if src_info.columns[k].type in _TEXT_TYPES}
    left = _stream(source, _split(source_table), src_info.key, columns, text_keys, chunk_rows)
    right = _stream(destination, _split(destination_table), src_info.key, columns, text_keys, chunk_rows)
    _merge(left, right, diff, keep, progress)
    return diff


def _merge(
    left: Iterator[tuple[tuple[Any, ...], str]],
    right: Iterator[tuple[tuple[Any, ...], str]],
    diff: TableDiff,
    keep: int,
    progress: Callable[[int], None] | None,
) -> None:
    a, b = next(left, None), next(right, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a[0] < b[0]):
            assert a is not None
            diff.missing_count += 1
            _note(diff.missing, a[0], keep)
            diff.source_rows += 1
            a = next(left, None)
        elif a is None or b[0] < a[0]:
            diff.extra_count += 1
            _note(diff.extra, b[0], keep)
            diff.destination_rows += 1
            b = next(right, None)
        else:
            if a[1] != b[1]:
                diff.different_count += 1
                _note(diff.different, a[0], keep)
            diff.source_rows += 1
            diff.destination_rows += 1
            a, b = next(left, None), next(right, None)
        if progress is not None and (diff.source_rows + diff.destination_rows) % 5000 == 0:
            progress(diff.source_rows)


def _note(keys: list[tuple[Any, ...]], key: tuple[Any, ...], keep: int) -> None:
    if len(keys) < keep:
        keys.append(key)


def verify_tables(
    source_dsn: str,
    destination_dsn: str,
    pairs: list[tuple[str, str]],
    *,
    chunk_rows: int = 10_000,
    progress: Callable[[str, int], None] | None = None,
) -> list[TableDiff]:
    """Compare every ``(source, destination)`` table pair."""
    try:
        with psycopg.connect(source_dsn) as src, psycopg.connect(destination_dsn) as dst:
            src.read_only = dst.read_only = True
            return [
                compare_tables(
                    src,
                    dst,
                    s,
                    d,
                    chunk_rows=chunk_rows,
                    progress=functools.partial(progress, s) if progress else None,
                )
                for s, d in pairs
            ]
    except psycopg.Error as exc:
        error: WalbridgeError = map_pg_error(exc, "verifying")
        raise error from exc
