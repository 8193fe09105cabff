"""Rows of one table: PostgreSQL text values → Debezium-encoded JSON rows and keys.

One :class:`RowCodec` per captured table, built from its catalog description; both capture
modes (pgoutput tuples, the snapshot's rows as text, trigger change-log rows) go through it,
which is what makes them emit identical ``before``/``after``/``key``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from walbridge import accel, metrics
from walbridge.capture.catalog import RelationInfo
from walbridge.capture.pgoutput import UNCHANGED_TOAST
from walbridge.capture.values import (
    TypeRegistry,
    ValueOptions,
    column_schema,
    converter_for,
    is_passthrough,
)
from walbridge.errors import DecodeError
from walbridge.events import SplicedEvent, TableSchema, splice_envelope_py
from walbridge.unavailable import placeholder_for

__all__ = ["RowCodec"]

log = logging.getLogger(__name__)


def _placeholder(registry: TypeRegistry, type_oid: int, options: ValueOptions) -> Any:
    """Debezium's unchanged-TOAST placeholder for a column of this type (domains resolved)."""
    pg_type, _ = registry.resolve(type_oid, -1)
    if pg_type is None:
        return placeholder_for("", False)
    return placeholder_for(pg_type.name, pg_type.is_array, options.binary_handling_mode)


class RowCodec:
    """Text values in table column order → ``{column: json value}``; plus the key and schemas."""

    __slots__ = (
        "_all_names",
        "_column_set",
        "_columns",
        "_convert",
        "_converters",
        "_excluded",
        "_fallbacks",
        "_key_columns",
        "_names",
        "_picked",
        "_placeholders",
        "_typed",
        "_width",
        "relation",
        "table_schema",
    )

    def __init__(
        self,
        relation: RelationInfo,
        registry: TypeRegistry,
        options: ValueOptions,
        exclude_columns: Iterable[str] = (),
    ) -> None:
        self.relation = relation
        excluded = set(exclude_columns)
        # (position in the incoming tuple, name, converter) for every column we keep
        self._columns: list[tuple[int, str, Callable[[str], Any]]] = []
        self._placeholders: dict[str, Any] = {}
        self._fallbacks: dict[str, int] = {}
        schemas = []
        for index, col in enumerate(relation.columns):
            # Generated columns are never sent: pgoutput leaves them out (before PostgreSQL 18, and
            # by default since), so the snapshot and trigger mode leave them out too.
            if col.generated or (col.name in excluded and col.name not in relation.key_columns):
                continue
            convert = converter_for(col.type_oid, col.typmod, registry, options)
            self._columns.append((index, col.name, convert))
            self._placeholders[col.name] = _placeholder(registry, col.type_oid, options)
            schemas.append(
                column_schema(col.name, col.type_oid, col.typmod, not col.not_null, registry, options)
            )
        self._converters = {name: convert for _, name, convert in self._columns}
        self._width = len(relation.columns)
        self._names = tuple(name for _, name, _ in self._columns)
        self._convert = tuple(convert for _, _, convert in self._columns)
        kept = tuple(index for index, _, _ in self._columns)
        self._picked = None if kept == tuple(range(self._width)) else kept
        self._all_names = tuple(col.name for col in relation.columns)
        self._column_set = frozenset(self._all_names)
        self._excluded = tuple(name for name in self._all_names if name not in self._names)
        # Columns whose text needs converting; the others are kept as they are (row_text).
        self._typed = tuple(
            (name, convert) for _, name, convert in self._columns if not is_passthrough(convert)
        )
        self._key_columns = tuple(relation.key_columns)
        self.table_schema = TableSchema(relation.schema, relation.table, tuple(schemas), self._key_columns)

    @property
    def key_columns(self) -> tuple[str, ...]:
        return self._key_columns

    def row(self, values: Sequence[Any]) -> dict[str, Any]:
        """Values in the relation's column order (text, bytes, None or UNCHANGED_TOAST)."""
        if len(values) < self._width:
            raise DecodeError(
                f"{self.relation.schema}.{self.relation.table}: a row has {len(values)} values "
                f"but the table has {self._width} columns"
            )
        if self._picked is not None:
            values = [values[index] for index in self._picked]
        out: dict[str, Any] = {}
        # The hot path of capture: class checks instead of isinstance, no per-value function call.
        try:
            for name, convert, value in zip(self._names, self._convert, values, strict=False):
                cls = value.__class__
                if cls is bytes:
                    out[name] = convert(value.decode())
                elif cls is str:
                    out[name] = convert(value)
                elif value is None:
                    out[name] = None
                elif value is UNCHANGED_TOAST:
                    out[name] = self._placeholders[name]
                else:
                    out[name] = convert(str(value))
        except Exception:  # a value no converter expected: never stop capture
            return self._row_with_fallbacks(values)
        return out

    def _row_with_fallbacks(self, values: Sequence[Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, convert, value in zip(self._names, self._convert, values, strict=False):
            if value is None:
                out[name] = None
            elif value is UNCHANGED_TOAST:
                out[name] = self._placeholders[name]
            else:
                # not valid UTF-8 (cannot happen with client_encoding=UTF8): escaped, not a stopped capture
                text = value.decode(errors="backslashreplace") if isinstance(value, bytes) else str(value)
                out[name] = self._convert_or_text(name, convert, text)
        return out

    def _convert_or_text(self, name: str, convert: Callable[[str], Any], text: str) -> Any:
        """A value that fails its converter goes out as its PostgreSQL text: a row never stops capture.

        Counted per column (:attr:`fallbacks`, metric ``walbridge_capture_value_fallbacks``); one warning
        per column and codec, never one per row.
        """
        try:
            return convert(text)
        except Exception as exc:
            count = self._fallbacks.get(name, 0)
            self._fallbacks[name] = count + 1
            metrics.capture.value_fallbacks.labels(self.relation.qualified_name, name).inc()
            if count == 0:
                log.warning(
                    "%s.%s.%s: cannot convert %.60r (%s); such values of this column are sent as "
                    "their PostgreSQL text",
                    self.relation.schema,
                    self.relation.table,
                    name,
                    text,
                    exc,
                )
            return text

    @property
    def fallbacks(self) -> Mapping[str, int]:
        """Per column: how many values went out as text because their converter failed."""
        return self._fallbacks

    @property
    def column_names(self) -> tuple[str, ...]:
        """Every column of the relation, in its order (excluded ones too)."""
        return self._all_names

    @property
    def column_set(self) -> frozenset[str]:
        """:attr:`column_names` as a set."""
        return self._column_set

    def row_text(self, values: Sequence[str | None]) -> dict[str, Any]:
        """Like :meth:`row` for values that are all ``str`` or ``None`` (snapshot rows)."""
        if len(values) != self._width:
            return self.row(values)
        return self.convert_text_row(dict(zip(self._all_names, values, strict=True)))

    def convert_text_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """``{column: text or None}`` for every column (in order) → the event row; converts in place."""
        for name in self._excluded:
            del row[name]
        return self._convert_typed(row)

    def row_from_fitting_mapping(self, mapping: Mapping[str, str | None]) -> dict[str, Any]:
        """:meth:`row_from_mapping` of a mapping whose keys are exactly :attr:`column_set`."""
        return self._convert_typed({name: mapping[name] for name in self._names})

    def _convert_typed(self, row: dict[str, Any]) -> dict[str, Any]:
        """Convert the text of the typed kept columns of ``row`` in place (the others stay text)."""
        failed = convert_typed(row, self._typed)
        if failed is not None:  # a value no converter expected: never stop capture
            self._finish_with_fallbacks(row, failed)
        return row

    def _finish_with_fallbacks(self, row: dict[str, Any], failed: str) -> None:
        """Convert the columns from ``failed`` on (those before it are converted already)."""
        typed = self._typed
        start = next(index for index, (name, _) in enumerate(typed) if name == failed)
        for name, convert in typed[start:]:
            value = row[name]
            if value is not None:
                row[name] = self._convert_or_text(name, convert, value)

    def row_from_mapping(self, mapping: Mapping[str, str | None]) -> dict[str, Any]:
        """Values by column name (trigger change log); unknown names are an error, missing ones null."""
        unknown = mapping.keys() - self._all_names
        if unknown:
            raise DecodeError(
                f"{self.relation.schema}.{self.relation.table}: change has columns the table no longer has: "
                f"{', '.join(sorted(unknown))}"
            )
        return self.row([mapping.get(col.name) for col in self.relation.columns])

    def text_rows_plan(self) -> tuple[tuple[str, ...], TypedColumns, tuple[str, ...]] | None:
        """(column names, typed columns, key columns) for :func:`encode_text_rows`, which then builds
        exactly :meth:`row_text` and :meth:`key`; None when rows need :meth:`row_text` (excluded columns)."""
        if self._excluded:
            return None
        return self._all_names, self._typed, self._key_columns

    def key(self, row: Mapping[str, Any]) -> dict[str, Any] | None:
        """The primary-key object of a row; ``None`` for a table without a primary key."""
        columns = self._key_columns
        if not columns:
            return None
        if len(columns) == 1:
            name = columns[0]
            return {name: row.get(name)}
        return {name: row.get(name) for name in columns}


TypedColumns = tuple[tuple[str, Callable[[str], Any]], ...]
"""(name, converter) of each column whose text is converted, in column order."""


def convert_typed_py(row: dict[str, Any], typed: TypedColumns) -> str | None:
    """Convert in place each non-null ``row[name]`` of ``typed``'s (name, converter) pairs, in order;
    stop at the first that raises and return its name (``None`` when all were converted)."""
    name = ""
    try:
        for name, convert in typed:
            value = row[name]
            if value is not None:
                row[name] = convert(value)
    except Exception:
        return name
    return None


convert_typed: Final = accel.pick(convert_typed_py)
"""Capture's row conversion: :func:`convert_typed_py`, compiled where it was built."""


def encode_text_rows_py(
    rows: Sequence[Sequence[str | None]],
    names: tuple[str, ...],
    typed: TypedColumns,
    key_names: tuple[str, ...],
    parts: Sequence[bytes],
    ts_ms: int,
    value_schema: bytes | None,
    key_schema: bytes | None,
) -> list[tuple[SplicedEvent] | None]:
    """The ``op: r`` event of each row of column texts, in one pass (the snapshot's hot path): the row as
    :meth:`RowCodec.row_text` builds it from ``names`` and ``typed``, its key from ``key_names``, spliced
    into ``parts`` as :func:`~walbridge.events.splice_envelope` does with LSN 0.

    ``None`` for a row the general path must take: its width is not the table's, a value did not
    convert, or the envelope could not be spliced (that path then names the error)."""
    records: list[tuple[SplicedEvent] | None] = []
    for values in rows:
        try:
            if len(values) != len(names):
                records.append(None)
                continue
            row: dict[str, Any] = dict(zip(names, values, strict=True))
            if convert_typed_py(row, typed) is not None:
                records.append(None)
                continue
            key = {name: row.get(name) for name in key_names} if key_names else None
            key_bytes, value = splice_envelope_py(
                parts, 0, "r", key, None, row, ts_ms, value_schema, key_schema
            )
            records.append((("r", key_bytes, value),))
        except Exception:
            records.append(None)
    return records


encode_text_rows: Final = accel.pick(encode_text_rows_py)
"""The snapshot's row encoder: :func:`encode_text_rows_py`, compiled where it was built."""
