"""Field validation of one event record against its definition, in Salesforce's two stages.

Contract: ``check_record(definition, record)`` first does what Salesforce does while deserializing the
request (unknown field → ``INVALID_FIELD``, system field → ``INVALID_FIELD_FOR_INSERT_UPDATE``, value of the
wrong JSON type → ``JSON_PARSER_ERROR``) and raises ``RequestError`` for those: they fail the whole request,
also inside an sObject Collection. It then returns the record-level errors (``REQUIRED_FIELD_MISSING``,
``STRING_TOO_LONG``, ``NUMBER_OUTSIDE_VALID_RANGE``) as ``RecordError`` list, empty when the record is good,
plus the record normalized to the definition's field names.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

from walbridge.emulator.metadata import SYSTEM_FIELDS, EventDefinition, FieldDefinition

__all__ = ["RecordError", "RequestError", "check_record", "field_errors", "sf_length"]

_SYSTEM_LOWER = {name.lower() for name in SYSTEM_FIELDS}
_ECHO_LIMIT = 255


@dataclass(frozen=True)
class RecordError:
    """A per-record failure, shaped like a SaveResult error."""

    status_code: str
    message: str
    fields: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"statusCode": self.status_code, "message": self.message, "fields": list(self.fields)}


class RequestError(Exception):
    """A failure of the whole request: HTTP ``status`` with ``[{"message", "errorCode"[, "fields"]}]``."""

    def __init__(self, status: int, error_code: str, message: str, fields: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.fields = fields

    def as_json(self) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"message": self.message, "errorCode": self.error_code}
        if self.fields is not None:
            body["fields"] = list(self.fields)
        return [body]


def check_record(
    definition: EventDefinition, record: dict[str, Any]
) -> tuple[dict[str, Any], list[RecordError]]:
    """Deserialize-stage checks (raising ``RequestError``), then the record-level errors."""
    values: dict[str, Any] = {}
    for name, value in record.items():
        fdef = definition.lookup(name)
        if fdef is None:
            raise _unknown_field(definition, name)
        values[fdef.name] = _deserialize(fdef, value)
    return values, _record_errors(definition, values)


def sf_length(text: str) -> int:
    """Length as Salesforce counts it (UTF-16 code units, like Java's ``String.length()``)."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-16-le")) // 2


def _unknown_field(definition: EventDefinition, name: str) -> RequestError:
    if name.lower() in _SYSTEM_LOWER:
        return RequestError(
            400,
            "INVALID_FIELD_FOR_INSERT_UPDATE",
            f"Unable to create/update fields: {name}. Please check the security settings of this field and "
            "verify that it is read/write for your profile or permission set.",
            [name],
        )
    return RequestError(400, "INVALID_FIELD", f"No such column '{name}' on sobject of type {definition.name}")


def _deserialize(fdef: FieldDefinition, value: Any) -> Any:
    if value is None:
        return None
    if fdef.type in ("Text", "LongTextArea"):
        return _as_text(value)
    if fdef.type == "Number":
        return _as_number(value)
    if fdef.type == "Checkbox":
        return _as_boolean(value)
    if fdef.type == "DateTime":
        return _as_temporal(value, "datetime", _parse_datetime)
    return _as_temporal(value, "date", dt.date.fromisoformat)


def _parser_error(target: str, value: Any) -> RequestError:
    token, shown = _token(value)
    return RequestError(
        400,
        "JSON_PARSER_ERROR",
        f"Cannot deserialize instance of {target} from {token} value {shown} "
        "or request may be missing a required field",
    )


def _token(value: Any) -> tuple[str, str]:
    if isinstance(value, bool):
        return ("VALUE_TRUE" if value else "VALUE_FALSE"), str(value).lower()
    if isinstance(value, int):
        return "VALUE_NUMBER_INT", str(value)
    if isinstance(value, float):
        return "VALUE_NUMBER_FLOAT", repr(value)
    if isinstance(value, str):
        return "VALUE_STRING", value[:_ECHO_LIMIT]
    if isinstance(value, list):
        return "START_ARRAY", "["
    return "START_OBJECT", "{"


def _as_text(value: Any) -> str:
    # Jackson coerces JSON scalars into string fields; only arrays and objects are rejected.
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    raise _parser_error("string", value)


def _as_number(value: Any) -> float | int:
    if isinstance(value, bool | list | dict):
        raise _parser_error("double", value)
    if isinstance(value, int | float):
        return value
    try:
        number = float(value)
    except ValueError:
        raise _parser_error("double", value) from None
    if math.isnan(number) or math.isinf(number):
        raise _parser_error("double", value)
    return number


def _as_boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _parser_error("boolean", value)


def _as_temporal(value: Any, target: str, parse: Any) -> str:
    if not isinstance(value, str):
        raise _parser_error(target, value)
    try:
        parse(value)
    except ValueError:
        raise _parser_error(target, value) from None
    return value


def _parse_datetime(text: str) -> dt.datetime:
    # Salesforce accepts ISO 8601 with "Z", "+hh:mm" or "+hhmm" offsets and optional milliseconds.
    return dt.datetime.fromisoformat(text)


def _record_errors(definition: EventDefinition, values: dict[str, Any]) -> list[RecordError]:
    missing = [f.name for f in definition.required_fields if values.get(f.name) in (None, "")]
    if missing:
        return [
            RecordError(
                "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(missing)}]", missing
            )
        ]
    return field_errors(definition, values)


def field_errors(definition: EventDefinition, values: dict[str, Any]) -> list[RecordError]:
    """The per-value errors (length, number range) of deserialized ``values``; required fields aside
    (the Pub/Sub API does not enforce them)."""
    errors = []
    for name, value in values.items():
        error = _field_error(definition.lookup(name), value)  # type: ignore[arg-type]
        if error is not None:
            errors.append(error)
    return errors


def _too_long(value: str, length: int) -> bool:
    return len(value) > length or (not value.isascii() and sf_length(value) > length)


def _field_error(fdef: FieldDefinition, value: Any) -> RecordError | None:
    if value is None:
        return None
    if isinstance(value, str) and fdef.length is not None and _too_long(value, fdef.length):
        shown = value if len(value) <= _ECHO_LIMIT else value[:_ECHO_LIMIT] + "..."
        return RecordError(
            "STRING_TOO_LONG",
            f"{fdef.label}: data value too large: {shown} (max length={fdef.length})",
            [fdef.name],
        )
    if fdef.type == "Number" and fdef.precision is not None:
        integer_digits = fdef.precision - (fdef.scale or 0)
        if abs(value) >= 10**integer_digits:
            return RecordError(
                "NUMBER_OUTSIDE_VALID_RANGE",
                f"{fdef.label}: value outside of valid range on numeric field: {value}",
                [fdef.name],
            )
    return None
