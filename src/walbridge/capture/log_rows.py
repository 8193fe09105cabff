"""Trigger mode's hot path: a run of change-log rows of one table encoded as events in one call.

:func:`encode_change_rows` gives exactly the events the row-at-a-time path gives
(:meth:`RowCodec.row_from_fitting_mapping`, the key, :meth:`PreparedSource.source_for` and the spliced
envelope), or ``None`` for a row that path must take: an image whose columns are not the table's (ALTER
TABLE), a value that does not convert, an op without its images, or anything else unexpected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from walbridge import accel
from walbridge.capture.rows import TypedColumns, convert_typed_py
from walbridge.events import SplicedEvent, splice_envelope_py

__all__ = ["encode_change_rows", "encode_change_rows_py"]

Row = dict[str, Any]


class _Unfit(Exception):
    """The general path takes this row."""


def encode_change_rows_py(
    rows: Sequence[Sequence[Any]],
    names: tuple[str, ...],
    typed: TypedColumns,
    key_names: tuple[str, ...],
    source_pieces: tuple[bytes, ...],
    ts_ms: int,
    value_schema: bytes | None,
    key_schema: bytes | None,
) -> list[tuple[SplicedEvent, ...] | None]:
    """The events of each change-log row (``ChangeRow``: id, txid, schema, table, op, before, after,
    changed_us), ``ts_ms`` being the envelope's; ``None`` for a row the general path must take."""
    encoded: list[tuple[SplicedEvent, ...] | None] = []
    for row in rows:
        try:
            encoded.append(
                _encode(row, names, typed, key_names, source_pieces, ts_ms, value_schema, key_schema)
            )
        except Exception:
            encoded.append(None)
    return encoded


def _encode(
    row: Sequence[Any],
    names: tuple[str, ...],
    typed: TypedColumns,
    key_names: tuple[str, ...],
    pieces: tuple[bytes, ...],
    ts_ms: int,
    value_schema: bytes | None,
    key_schema: bytes | None,
) -> tuple[SplicedEvent, ...] | None:
    change_id, txid, _, _, op, before_image, after_image, changed_us = row
    before = _image(before_image, names, typed)
    after = _image(after_image, names, typed)
    changes: list[tuple[str, Row | None, Row | None, Row | None]]
    if op == "c" and after is not None:
        changes = [("c", _key(after, key_names), None, after)]
    elif op == "d" and before is not None:
        changes = [("d", _key(before, key_names), before, None)]
    elif op == "u" and before is not None and after is not None:
        old_key, new_key = _key(before, key_names), _key(after, key_names)
        if old_key != new_key:  # the primary key changed: as Debezium, a delete then a create
            changes = [("d", old_key, before, None), ("c", new_key, None, after)]
        else:
            changes = [("u", new_key, before, after)]
    else:
        return None
    values = (changed_us // 1000, changed_us, changed_us * 1000, txid, change_id)
    source = pieces[0] + b"".join(
        b"%d%b" % (value, piece) for value, piece in zip(values, pieces[1:], strict=True)
    )
    events = []
    for kind, key, old, new in changes:
        key_bytes, value = splice_envelope_py(
            (source,), 0, kind, key, old, new, ts_ms, value_schema, key_schema
        )
        events.append((kind, key_bytes, value))
    return tuple(events)


def _image(image: Any, names: tuple[str, ...], typed: TypedColumns) -> Row | None:
    """The image converted, its columns in the table's order; ``None`` when there is none."""
    if image is None:
        return None
    if not isinstance(image, dict) or len(image) != len(names):
        raise _Unfit
    row = {name: image[name] for name in names}
    if convert_typed_py(row, typed) is not None:
        raise _Unfit
    return row


def _key(row: Row, key_names: tuple[str, ...]) -> Row | None:
    return {name: row.get(name) for name in key_names} if key_names else None


encode_change_rows: Final = accel.pick(encode_change_rows_py)
"""Trigger mode's page encoder: :func:`encode_change_rows_py`, compiled where it was built."""
