"""The REST data API of the emulator (``/services/data/vXX.X/...``) behind authentication.

Contract: each public method of ``DataApi`` takes already-routed, already-authenticated input and returns a
``Reply`` with Salesforce's status code and JSON body: single publish (201 SaveResult), sObject Collections
(200 with SaveResults in input order, at most 200 records, ``allOrNone`` semantics), describe, limits and the
versions list. Deserialization errors (malformed JSON, unknown field, wrong value type, missing
``attributes.type``) fail the whole request with 400; field validation errors and the hourly publishing
allocation are per record. Events that pass are appended to the ``EventStore``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import orjson

from walbridge.emulator.limits import RollingCounter
from walbridge.emulator.metadata import Access, EventDefinition
from walbridge.emulator.store import EventStore
from walbridge.emulator.validation import RecordError, RequestError, check_record

__all__ = ["MAX_COLLECTION", "DataApi", "Reply", "not_found", "parse_json", "versions"]

MAX_COLLECTION = 200
MIN_VERSION, MAX_VERSION = 31, 66
_SEASONS = ("Winter", "Spring", "Summer")
_ROLLED_BACK = RecordError(
    "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    "Record rolled back because not all records were valid and the request was using AllOrNone header",
)
_HOURLY_LIMIT = RecordError(
    "LIMIT_EXCEEDED", "You have exceeded the hourly publishing limit for platform events. Try again later."
)
_TOO_MANY_CHUNKS = RecordError(
    "EXCEEDED_MAX_TYPES_LIMIT",
    "Cannot have more than 10 chunks in a single operation. Please rearrange the data to reduce chunking.",
)
_MAX_TYPE_CHUNKS = 10
_UNAVAILABLE = RecordError(
    "PLATFORM_EVENT_PUBLISHING_UNAVAILABLE",
    "Publishing platform events is temporarily unavailable. Try again later.",
)


@dataclass
class Reply:
    """An HTTP answer: status, JSON-able body and extra headers."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


def error_reply(error: RequestError) -> Reply:
    return Reply(error.status, error.as_json())


def not_found() -> Reply:
    return Reply(404, [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}])


def parse_json(raw: bytes) -> Any:
    """The decoded body, or ``RequestError`` JSON_PARSER_ERROR worded like Salesforce's Jackson parser."""
    if not raw.strip():
        raise RequestError(
            400, "JSON_PARSER_ERROR", "No content to map due to end-of-input at [line:1, column:0]"
        )
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        char = raw.decode("utf-8", "replace")[exc.pos : exc.pos + 1] or "<EOF>"
        message = f"Unexpected character ('{char}' (code {ord(char[0])})): {exc.msg}"
        raise RequestError(
            400, "JSON_PARSER_ERROR", f"{message} at [line:{exc.lineno}, column:{exc.colno}]"
        ) from None


def versions() -> list[dict[str, str]]:
    """The ``GET /services/data/`` list, oldest first."""
    return [_version(number) for number in range(MIN_VERSION, MAX_VERSION + 1)]


def _version(number: int) -> dict[str, str]:
    # v62.0 is Winter '25; three releases a year.
    offset = number - 62
    label = f"{_SEASONS[offset % 3]} '{25 + offset // 3:02d}"
    return {"label": label, "url": f"/services/data/v{number}.0", "version": f"{number}.0"}


def supported_version(text: str) -> bool:
    try:
        number = float(text)
    except ValueError:
        return False
    return number.is_integer() and MIN_VERSION <= number <= MAX_VERSION


class DataApi:
    """Publishing and describe logic over the loaded event definitions."""

    def __init__(
        self,
        definitions: dict[str, EventDefinition],
        store: EventStore,
        api_usage: RollingCounter,
        publish_allocation: RollingCounter,
        enqueued_info: bool = True,
    ) -> None:
        self._definitions = {name.lower(): d for name, d in definitions.items()}
        self.store = store
        self.api_usage = api_usage
        self.publish_allocation = publish_allocation
        self.enqueued_info = enqueued_info
        self.access: dict[str, Access] | None = None
        """Permission-set grants of the integration user (``load_access``); None: everything allowed."""
        self._record_faults: tuple[frozenset[int], int] = (frozenset(), 0)
        self._faults_lock = threading.Lock()

    def definition(self, name: str) -> EventDefinition | None:
        """The event the session can see: an object without Read access is invisible (404/INVALID_TYPE)."""
        if self.access is not None and not self.access.get(name.lower(), Access()).read:
            return None
        return self._definitions.get(name.lower())

    def may_create(self, definition: EventDefinition) -> bool:
        return self.access is None or self.access.get(definition.name.lower(), Access()).create

    def fail_records(self, positions: frozenset[int], calls: int) -> None:
        """The next ``calls`` collection calls fail the records at ``positions`` (0-based) with
        ``PLATFORM_EVENT_PUBLISHING_UNAVAILABLE``; the call's other records are published."""
        with self._faults_lock:
            self._record_faults = (positions, calls)

    def _draw_record_faults(self) -> frozenset[int]:
        with self._faults_lock:
            positions, calls = self._record_faults
            if calls <= 0:
                return frozenset()
            self._record_faults = (positions, calls - 1)
            return positions

    def replace_definitions(self, definitions: dict[str, EventDefinition]) -> None:
        """A metadata deploy: later calls see the new event definitions (fields added or deleted)."""
        self._definitions = {name.lower(): d for name, d in definitions.items()}

    def publish_one(self, definition: EventDefinition, raw: bytes, user_id: str) -> Reply:
        if not self.may_create(definition):
            return error_reply(_no_create(definition))
        try:
            body = parse_json(raw)
            if not isinstance(body, dict):
                raise _shape_error(definition.name, body)
            body.pop("attributes", None)
            values, errors = check_record(definition, body)
        except RequestError as exc:
            return error_reply(exc)
        if errors:
            return Reply(400, [_top_level(e) for e in errors])
        if not self.publish_allocation.try_take(1):
            return Reply(400, [_top_level(_HOURLY_LIMIT)])
        event = self.store.append_many([(definition.name, values)], user_id)[0]
        return Reply(201, self._saved(event))

    def publish_collection(self, raw: bytes, user_id: str) -> Reply:
        try:
            all_or_none, records = self._collection_request(raw)
            checked = [self._check_collection_record(record) for record in records]
        except RequestError as exc:
            return error_reply(exc)
        failures: list[list[RecordError]] = [errors for _, _, errors in checked]
        if _type_chunks(checked) > _MAX_TYPE_CHUNKS:
            return Reply(200, [_failed([_TOO_MANY_CHUNKS]) for _ in checked])
        for position in self._draw_record_faults():
            if position < len(failures) and not failures[position]:
                failures[position] = [_UNAVAILABLE]
        if all_or_none and any(failures):
            return Reply(200, [_failed(errors or [_ROLLED_BACK]) for errors in failures])
        failures = self._take_allocation(failures, all_or_none)
        good = [
            (d.name, values) for (d, values, _), errors in zip(checked, failures, strict=True) if not errors
        ]
        stored = iter(self.store.append_many(good, user_id)) if good else iter(())
        return Reply(200, [_failed(errors) if errors else self._saved(next(stored)) for errors in failures])

    def limits(self) -> dict[str, Any]:
        return {
            "DailyApiRequests": {"Max": self.api_usage.maximum, "Remaining": self.api_usage.remaining},
            "DailyDeliveredPlatformEvents": {"Max": 50000, "Remaining": 50000},
            "HourlyPublishedPlatformEvents": {
                "Max": self.publish_allocation.maximum,
                "Remaining": self.publish_allocation.remaining,
            },
        }

    def _collection_request(self, raw: bytes) -> tuple[bool, list[Any]]:
        body = parse_json(raw)
        records = body.get("records") if isinstance(body, dict) else None
        if not isinstance(records, list):
            raise RequestError(
                400, "JSON_PARSER_ERROR", "Request body must be an object with a 'records' array"
            )
        if len(records) > MAX_COLLECTION:
            raise RequestError(
                400,
                "EXCEEDED_ID_LIMIT",
                "record limit reached. cannot submit more than 200 records into this call",
            )
        all_or_none = body.get("allOrNone", False)
        if not isinstance(all_or_none, bool):
            raise _shape_error("boolean", all_or_none)
        return all_or_none, records

    def _check_collection_record(
        self, record: Any
    ) -> tuple[EventDefinition, dict[str, Any], list[RecordError]]:
        attributes = record.get("attributes") if isinstance(record, dict) else None
        type_name = attributes.get("type") if isinstance(attributes, dict) else None
        if not isinstance(type_name, str) or not type_name:
            raise RequestError(
                400,
                "JSON_PARSER_ERROR",
                "Can not deserialize SObject, no attributes.type provided",
            )
        definition = self.definition(type_name)
        if definition is None:
            raise RequestError(
                400,
                "INVALID_TYPE",
                f"sObject type '{type_name}' is not supported. If you are attempting to use a custom "
                "object, be sure to append the '__c' after the entity name. Please reference your WSDL or "
                "the describe call for the appropriate names.",
            )
        if not self.may_create(definition):
            raise _no_create(definition)
        fields = {k: v for k, v in record.items() if k != "attributes"}
        if any(k.lower() == "id" for k in fields):
            return definition, {}, [RecordError("INVALID_FIELD", "cannot specify Id in an insert call")]
        values, errors = check_record(definition, fields)
        return definition, values, errors

    def _take_allocation(
        self, failures: list[list[RecordError]], all_or_none: bool
    ) -> list[list[RecordError]]:
        wanted = sum(1 for errors in failures if not errors)
        if wanted == 0 or self.publish_allocation.try_take(wanted):
            return failures
        if all_or_none:
            return [[_HOURLY_LIMIT] for _ in failures]
        remaining = self.publish_allocation.remaining
        granted = remaining if remaining > 0 and self.publish_allocation.try_take(remaining) else 0
        result = []
        for errors in failures:
            if not errors and granted > 0:
                granted -= 1
                result.append(errors)
            else:
                result.append(errors or [_HOURLY_LIMIT])
        return result

    def _saved(self, event: dict[str, Any]) -> dict[str, Any]:
        errors = []
        if self.enqueued_info:
            errors.append({"statusCode": "OPERATION_ENQUEUED", "message": event["EventUuid"], "fields": []})
        return {"id": self.store.publish_id(), "success": True, "errors": errors}


def _no_create(definition: EventDefinition) -> RequestError:
    """A session whose permission sets grant Read but not Create on the event."""
    return RequestError(
        400,
        "INSUFFICIENT_ACCESS_OR_READONLY",
        f"insufficient access rights on object {definition.name}: the user lacks the Create permission",
    )


def _type_chunks(checked: list[tuple[EventDefinition, dict[str, Any], list[RecordError]]]) -> int:
    """Salesforce processes a collection in runs of one type: {a, a, b, a} is three chunks."""
    names = [definition.name for definition, _, _ in checked]
    return sum(1 for i, name in enumerate(names) if i == 0 or name != names[i - 1])


def _failed(errors: list[RecordError]) -> dict[str, Any]:
    return {"success": False, "errors": [e.as_json() for e in errors]}


def _top_level(error: RecordError) -> dict[str, Any]:
    return {"message": error.message, "errorCode": error.status_code, "fields": list(error.fields)}


def _shape_error(target: str, value: Any) -> RequestError:
    token = "START_ARRAY" if isinstance(value, list) else type(value).__name__.upper()
    return RequestError(
        400,
        "JSON_PARSER_ERROR",
        f"Cannot deserialize instance of {target} from {token} value "
        f"{'[' if isinstance(value, list) else value} or request may be missing a required field",
    )
