"""sObject Collections publishing and error mapping against httpx.MockTransport handlers."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from walbridge import metrics
from walbridge.errors import AuthExpired, ConfigError, RateLimited, ServerBusy
from walbridge.sinks.salesforce.chunks import ChunkPlanner
from walbridge.sinks.salesforce.mapping import EventRecord
from walbridge.sinks.salesforce.publisher import CallBudget, Publisher, SchemaRefused

BASE = "https://acme.my.salesforce.com"
OK = {
    "id": "e01xx0000000001AAA",
    "success": True,
    "errors": [{"statusCode": "OPERATION_ENQUEUED", "message": "u"}],
}


def _records(n: int, keys: int | None = None) -> list[EventRecord]:
    return [EventRecord("E__e", {"N__c": i, "K__c": i % (keys or n)}, i % (keys or n)) for i in range(n)]


class Collections:
    """Answers composite/sobjects like Salesforce; records with ``Bad__c`` fail; faults by call number."""

    def __init__(self, faults: dict[int, httpx.Response] | None = None, latency: float = 0.0) -> None:
        self.faults = faults or {}
        self.latency = latency
        self.calls: list[list[dict[str, Any]]] = []
        self.stored: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        with self.lock:
            number = len(self.calls)
            self.calls.append(body["records"])
        time.sleep(self.latency)
        headers = {"Sforce-Limit-Info": f"api-usage={number + 1}/15000"}
        if number in self.faults:
            fault = self.faults[number]
            return httpx.Response(
                fault.status_code, content=fault.content, headers={**fault.headers, **headers}
            )
        assert body["allOrNone"] is False and len(body["records"]) <= 200
        if any("Whole__c" in r for r in body["records"]):
            return httpx.Response(
                400, json=[{"errorCode": "JSON_PARSER_ERROR", "message": "bad"}], headers=headers
            )
        results = []
        with self.lock:
            for record in body["records"]:
                if "Bad__c" in record:
                    error = {
                        "statusCode": "STRING_TOO_LONG",
                        "message": "Bad: too long",
                        "fields": ["Bad__c"],
                    }
                    results.append({"success": False, "errors": [error]})
                else:
                    self.stored.append(record)
                    results.append(OK)
        return httpx.Response(200, json=results, headers=headers)


def _publisher(handler: Any, in_flight: int = 4, **kwargs: Any) -> Publisher:
    client = httpx.Client(transport=httpx.MockTransport(handler))
    return Publisher(client, BASE, "62.0", max_in_flight=in_flight, metrics=metrics.salesforce, **kwargs)


def test_chunks_of_200_and_limit_info_metric() -> None:
    org = Collections()
    publisher = _publisher(org)
    outcome = publisher.publish(_records(1000))
    assert sorted(outcome.accepted) == list(range(1000)) and outcome.transient is None
    assert [len(c) for c in org.calls] == [200] * 5
    assert org.calls[0][0]["attributes"] == {"type": "E__e"}
    assert publisher.stats.calls == 5 and publisher.stats.api_usage["api-usage"] == (5, 15000)
    assert metrics.salesforce.api_usage.labels(kind="api-usage.limit")._value.get() == 15000


def test_per_record_failures_are_rejections_with_salesforce_fields() -> None:
    records = _records(10)
    records[3] = EventRecord("E__e", {"Bad__c": "x"}, "bad")
    outcome = _publisher(Collections()).publish(records)
    assert len(outcome.accepted) == 9
    [(index, error)] = outcome.rejected
    assert index == 3 and error.status_code == "STRING_TOO_LONG" and error.fields == ["Bad__c"]
    assert str(error) == "STRING_TOO_LONG: Bad: too long ['Bad__c']"


def test_refused_request_is_bisected_to_the_culprit() -> None:
    records = _records(200)
    records[77] = EventRecord("E__e", {"Whole__c": {"x": 1}}, "w")
    org = Collections()
    outcome = _publisher(org).publish(records)
    assert len(outcome.accepted) == 199 and [i for i, _ in outcome.rejected] == [77]
    assert outcome.rejected[0][1].status_code == "JSON_PARSER_ERROR"
    assert len(org.calls) <= 2 * 8 + 1


def _error(status: int, code: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=[{"errorCode": code, "message": "m"}], headers=headers)


@pytest.mark.parametrize(
    ("response", "kind"),
    [
        (_error(503, "PLATFORM_EVENT_PUBLISHING_UNAVAILABLE"), ServerBusy),
        (httpx.Response(503, text="<html>down</html>"), ServerBusy),
        (_error(403, "REQUEST_LIMIT_EXCEEDED"), RateLimited),
        (_error(429, "TOO_MANY", **{"Retry-After": "7"}), RateLimited),
        (_error(400, "LIMIT_EXCEEDED"), RateLimited),
        (_error(401, "INVALID_SESSION_ID"), AuthExpired),
    ],
)
def test_transient_errors(response: httpx.Response, kind: type[Exception]) -> None:
    outcome = _publisher(Collections({0: response}), in_flight=1).publish(_records(400))
    assert isinstance(outcome.transient, kind)
    assert outcome.accepted == []  # first call failed; the second chunk was not started after it
    if response.status_code == 429:
        assert outcome.transient.retry_after == 7.0


def test_permission_errors_are_fatal() -> None:
    with pytest.raises(ConfigError, match="INSUFFICIENT_ACCESS"):
        _publisher(Collections({0: _error(403, "INSUFFICIENT_ACCESS")})).publish(_records(5))


def test_order_per_key_with_calls_in_flight() -> None:
    # 3 keys over 1000 records: every chunk shares keys with the one before, so they go one by one.
    org = Collections(latency=0.01)
    outcome = _publisher(org, in_flight=4).publish(_records(1000, keys=3))
    assert len(outcome.accepted) == 1000
    assert [r["N__c"] for r in org.stored] == list(range(1000))


def test_independent_chunks_go_in_parallel() -> None:
    org = Collections(latency=0.2)
    started = time.monotonic()
    _publisher(org, in_flight=4).publish(_records(800))
    assert time.monotonic() - started < 0.7  # one by one: 0.8 s


def test_failed_chunk_blocks_later_chunks_of_its_keys() -> None:
    # Chunk 0 fails; chunk 1 shares keys with it and must not be sent; a retry then keeps order.
    org = Collections({0: _error(503, "SERVER_UNAVAILABLE")})
    records = _records(400, keys=10)
    outcome = _publisher(org, in_flight=4).publish(records)
    assert outcome.accepted == [] and isinstance(outcome.transient, ServerBusy)
    assert len(org.calls) == 1


def test_call_budget_token_bucket() -> None:
    now = [0.0]
    budget = CallBudget(3600, clock=lambda: now[0])  # burst 60, refill 0.983/s
    assert all(budget.wait_time() == 0 for _ in range(60))
    assert budget.wait_time() > 0
    now[0] += 3600
    assert sum(1 for _ in range(5000) if budget.wait_time() == 0) == 60  # capped at the burst
    slow = CallBudget(120, clock=lambda: now[0])
    for _ in range(2):
        slow.take()
    with pytest.raises(RateLimited) as info:
        slow.take()
    assert info.value.retry_after > 5


class Unavailable(Collections):
    """Answers 200, failing the records at ``positions`` of call ``call`` with a transient per-record code."""

    def __init__(self, call: int, positions: set[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail_call, self.positions = call, positions
        self.in_flight: dict[Any, int] = {}
        self.overlaps: list[Any] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        keys = [r["K__c"] for r in body["records"]]
        assert len(keys) == len(set(keys)), f"two events of one row in one call: {keys}"
        assert len({r["attributes"]["type"] for r in body["records"]}) == 1
        with self.lock:
            number = len(self.calls)
            self.calls.append(body["records"])
            busy = [k for k in keys if self.in_flight.get(k)]
            self.overlaps += busy
            for k in keys:
                self.in_flight[k] = self.in_flight.get(k, 0) + 1
        time.sleep(self.latency)
        results = []
        with self.lock:
            for position, record in enumerate(body["records"]):
                if number == self.fail_call and position in self.positions:
                    error = {"statusCode": "PLATFORM_EVENT_PUBLISHING_UNAVAILABLE", "message": "retry"}
                    results.append({"success": False, "errors": [error]})
                else:
                    self.stored.append(record)
                    results.append(OK)
            for k in keys:
                self.in_flight[k] -= 1
        return httpx.Response(200, json=results)


def _keyed(n: int, keys: int, types: int = 1, run: int = 1) -> list[EventRecord]:
    """``n`` records over ``keys`` rows, each row's changes in runs of ``run`` consecutive records."""
    records = []
    for i in range(n):
        key = (i // run) % keys
        records.append(EventRecord(f"E{key % types}__e", {"N__c": i, "K__c": key}, key))
    return records


def _per_key(stored: list[dict[str, Any]]) -> dict[Any, list[int]]:
    order: dict[Any, list[int]] = {}
    for record in stored:
        order.setdefault(record["K__c"], []).append(record["N__c"])
    return order


@pytest.mark.parametrize("position", [0, 1, 57, 100, 198, 199])
def test_transient_record_failure_anywhere_in_a_chunk_never_reorders_a_row(position: int) -> None:
    """Six changes per row in one batch, two in a row each time; one record of the first call fails
    transiently. What Salesforce accepted, over the first attempt and the retry of the rest, is in
    order per row."""
    records = _keyed(1200, keys=200, run=2)
    org = Unavailable(call=0, positions={position}, latency=0.005)
    publisher = _publisher(org, in_flight=4)
    first = publisher.publish(_slowly(records))  # calls start while later records are still coming
    assert isinstance(first.transient, ServerBusy)
    done = set(first.accepted)
    rest = [i for i in range(len(records)) if i not in done]
    second = publisher.publish([records[i] for i in rest])
    assert second.transient is None and len(done) + len(second.accepted) == 1200
    for key, numbers in _per_key(org.stored).items():
        assert numbers == sorted(numbers), (key, numbers)
        assert len(numbers) == 6
    assert org.overlaps == []


def _slowly(records: list[EventRecord], pause_every: int = 100) -> Iterator[EventRecord]:
    """The records as a lazily mapped batch gives them: a pause now and then."""
    for number, record in enumerate(records):
        if number and number % pause_every == 0:
            time.sleep(0.01)
        yield record


def test_a_lazily_given_batch_has_calls_in_flight_before_its_last_record() -> None:
    taken = [0]
    seen_at_call: list[int] = []
    org = Collections(latency=0.02)

    def handler(request: httpx.Request) -> httpx.Response:
        seen_at_call.append(taken[0])
        return org(request)

    def lazily() -> Iterator[EventRecord]:
        for record in _slowly(_records(800)):
            taken[0] += 1
            yield record

    outcome = _publisher(handler, in_flight=4).publish(lazily())
    assert sorted(outcome.accepted) == list(range(800)) and outcome.transient is None
    assert seen_at_call[0] < 800  # the first call went out while the batch was still being taken
    assert [r["N__c"] for r in org.stored] == list(range(800))


def test_a_full_chunk_waits_for_the_chunk_it_follows_to_be_ready() -> None:
    planner = ChunkPlanner(2)
    a1, b1, b2, a2, c1 = (
        EventRecord(t, {}, k) for t, k in [("X", "a"), ("X", "b"), ("Y", "b"), ("X", "a"), ("Y", "c")]
    )
    assert planner.add(a1) == []
    ready = planner.add(b1)  # chunk 0 (X) is full and follows nothing
    assert [(c.number, c.indexes) for c in ready] == [(0, [0, 1])]
    assert planner.add(b2) == []  # chunk 1 (Y), after chunk 0
    assert planner.add(a2) == []  # chunk 2 (X), after chunk 0: not full
    ready = planner.add(c1)  # chunk 1 is full, and chunk 0 was released
    assert [(c.number, c.indexes, c.after) for c in ready] == [(1, [2, 4], {0})]
    assert [(c.number, c.indexes, c.after) for c in planner.finish()] == [(2, [3], {0})]


def test_a_full_chunk_after_a_chunk_still_filling_is_held_until_the_end() -> None:
    planner = ChunkPlanner(2)
    first = EventRecord("X", {}, "a")  # chunk 0 (X), never full
    later = [EventRecord("Y", {}, "a"), EventRecord("Y", {}, "b")]  # chunk 1 (Y), full, after chunk 0
    assert planner.add(first) == [] and all(planner.add(r) == [] for r in later)
    assert [(c.number, c.after) for c in planner.finish()] == [(0, set()), (1, {0})]


def test_a_row_is_never_in_two_calls_in_flight_and_calls_stay_full() -> None:
    org = Unavailable(call=-1, positions=set(), latency=0.01)
    outcome = _publisher(org, in_flight=4).publish(_keyed(2000, keys=400))
    assert len(outcome.accepted) == 2000 and org.overlaps == []
    assert [len(c) for c in org.calls] == [200] * 10
    assert all(numbers == sorted(numbers) for numbers in _per_key(org.stored).values())


def test_each_call_holds_one_event_type() -> None:
    org = Unavailable(call=-1, positions=set())
    outcome = _publisher(org, in_flight=2).publish(_keyed(600, keys=300, types=12))
    assert len(outcome.accepted) == 600
    assert all(len({r["attributes"]["type"] for r in call}) == 1 for call in org.calls)


def test_a_request_refused_for_its_schema_is_not_bisected() -> None:
    refused = httpx.Response(
        400, json=[{"errorCode": "INVALID_FIELD", "message": "No such column 'Gone__c' on sobject"}]
    )
    org = Collections({0: refused})
    with pytest.raises(SchemaRefused, match="INVALID_FIELD: No such column 'Gone__c'"):
        _publisher(org, in_flight=1).publish(_records(200))
    assert len(org.calls) == 1


def test_large_bodies_are_gzip_compressed() -> None:
    seen: list[tuple[str | None, int]] = []
    org = Collections()

    def handler(request: httpx.Request) -> httpx.Response:
        encoding = request.headers.get("Content-Encoding")
        seen.append((encoding, len(request.content)))
        if encoding == "gzip":
            request = httpx.Request(
                request.method, request.url, headers=request.headers, content=gzip.decompress(request.content)
            )
        return org(request)

    publisher = _publisher(handler, in_flight=1, gzip_min_bytes=10_000)
    big = [EventRecord("E__e", {"N__c": i, "K__c": i, "P__c": "x" * 500}, i) for i in range(200)]
    assert len(publisher.publish(big).accepted) == 200
    assert len(publisher.publish(_records(3)).accepted) == 3
    assert seen[0][0] == "gzip" and seen[0][1] < 10_000  # ~110 kB of JSON
    assert seen[1][0] is None
