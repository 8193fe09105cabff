"""Publishing event records with sObject Collections: chunks of 200, calls in flight, in order per row.

Contract: :meth:`Publisher.publish` takes :class:`~walbridge.sinks.salesforce.mapping.EventRecord`
values in Kafka order and returns a :class:`Outcome`: the indexes Salesforce accepted, the
per-record rejections (:class:`~walbridge.errors.RecordRejected` with ``status_code``,
``sf_message``, ``fields``) and, when some records could not be published for a transient reason,
that error (``RateLimited``, ``ServerBusy``, ``AuthExpired``, ``ConnectionLost``…). A record is
in exactly one of: accepted, rejected, or not done (transient) — the caller retries only the last.

Ordering (:mod:`~walbridge.sinks.salesforce.chunks`): Salesforce publishes the other records of a
call whatever happens to one of them, so a failed event could be overtaken by a later event of its row
in the same call, and no retry can undo that. Hence two events of one row (``order_key``) are never in
flight together: a chunk holds at most one event per row, and the chunk with a row's next event waits
for the chunk with its previous one, and is not sent at all if that one did not fully go through.
Events of different rows fill each call to 200. Each call holds one event type (Salesforce splits a
call into at most 10 type-chunks). A chunk is sent as soon as it is full and the chunks it follows
were sent, while later records are still being taken (:meth:`Publisher.publish`). Up to
``max_in_flight`` calls run at once; after the first transient failure no new call starts. (A
per-record ``LIMIT_EXCEEDED`` or ``PLATFORM_EVENT_PUBLISHING_UNAVAILABLE`` inside an accepted call is
a transient failure of that record.)

Errors: HTTP 200 → per-record SaveResults (``success: true`` is success even with an
``OPERATION_ENQUEUED`` entry); 429 and ``REQUEST_LIMIT_EXCEEDED``/``LIMIT_EXCEEDED`` → ``RateLimited``
(``retry_after`` from the header); 5xx and ``PLATFORM_EVENT_PUBLISHING_UNAVAILABLE`` →
``ServerBusy``; 401 after the auth flow's one re-login → ``AuthExpired``. A 400 that refuses the
whole request because of one record's value (``JSON_PARSER_ERROR`` and the per-value codes of
:data:`RECORD_CODES`) → the chunk is halved until the bad record is alone and rejected; any other
400 (``INVALID_FIELD``, ``INVALID_TYPE``, access errors: the org changed, every record would fail)
and 403/404/other 4xx → ``SchemaRefused``/``ConfigError``, which stop the sink with one line and
send nothing to the DLQ. ``Sforce-Limit-Info`` goes to the ``walbridge_salesforce_api_usage``
gauge and the optional :class:`~walbridge.sinks.salesforce.allocation.Allocation` guard; with a
:class:`CallBudget` every call takes a token first (see there).
"""

from __future__ import annotations

import gzip
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import orjson

from walbridge.errors import (
    AuthExpired,
    ConfigError,
    RateLimited,
    RecordRejected,
    ServerBusy,
    TransientError,
)
from walbridge.sinks.salesforce.allocation import DAILY_API, HOURLY_PUBLISH, Allocation
from walbridge.sinks.salesforce.chunks import Chunk, ChunkPlanner
from walbridge.sinks.salesforce.mapping import EventRecord
from walbridge.sinks.salesforce.transport import http_errors, parse_limit_info, salesforce_error

__all__ = [
    "MAX_RECORDS_PER_CALL",
    "RECORD_CODES",
    "CallBudget",
    "Outcome",
    "Publisher",
    "PublisherStats",
    "Publishing",
    "SchemaRefused",
]

MAX_RECORDS_PER_CALL = 200
RATE_LIMIT_CODES = frozenset({"REQUEST_LIMIT_EXCEEDED", "LIMIT_EXCEEDED"})
BUSY_CODES = frozenset({"PLATFORM_EVENT_PUBLISHING_UNAVAILABLE", "SERVER_UNAVAILABLE", "UNKNOWN_EXCEPTION"})
RECORD_CODES = frozenset(
    {
        "JSON_PARSER_ERROR",
        "INVALID_TYPE_ON_FIELD_IN_RECORD",
        "STRING_TOO_LONG",
        "REQUIRED_FIELD_MISSING",
        "NUMBER_OUTSIDE_VALID_RANGE",
        "FIELD_INTEGRITY_EXCEPTION",
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
    }
)
"""Codes of a whole-request 400 caused by one record's value: worth halving the call to find it."""
_BUDGET_MAX_SLEEP_S = 5.0


class _RequestRefused(Exception):
    """A 400 that refused the whole collection because of (at least) one record."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class SchemaRefused(ConfigError):
    """A 400 that refused a whole call for a reason no record causes (a field deleted in the org,
    a type change, access): every record would fail alike. The sink re-reads the event definition."""


@dataclass(slots=True)
class Outcome:
    accepted: list[int] = field(default_factory=list)
    rejected: list[tuple[int, RecordRejected]] = field(default_factory=list)
    transient: TransientError | None = None
    """Set when some records were neither accepted nor rejected."""

    def merge(self, other: Outcome) -> None:
        self.accepted += other.accepted
        self.rejected += other.rejected
        self.transient = self.transient or other.transient


@dataclass(slots=True)
class PublisherStats:
    """Counters of one publisher (also for benchmarks and tests)."""

    calls: int = 0
    records_sent: int = 0
    accepted: int = 0
    rejected: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    api_usage: dict[str, tuple[int, int]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_call(self, status: int, records: int) -> None:
        with self._lock:
            self.calls += 1
            self.records_sent += records
            self.by_status[status] += 1

    def count_results(self, outcome: Outcome) -> None:
        with self._lock:
            self.accepted += len(outcome.accepted)
            self.rejected += len(outcome.rejected)


class CallBudget:
    """At most ``max_per_hour`` calls in any hour: a token bucket holding a minute's worth at most.

    Refill rate ``(max - burst) / 3600`` per second with ``burst = max // 60`` (at least 1): the
    bucket can never let more than ``max`` calls through in a rolling hour. ``take()`` sleeps for a
    short wait; a longer one raises ``RateLimited(retry_after=…)`` so the runner pauses the batch.
    """

    def __init__(self, max_per_hour: int, clock: Callable[[], float] = time.monotonic) -> None:
        if max_per_hour < 2:
            raise ConfigError("max_calls_per_hour must be at least 2")
        self.burst = max(1, max_per_hour // 60)
        self.rate = (max_per_hour - self.burst) / 3600
        self._clock = clock
        self._tokens = float(self.burst)
        self._stamp = clock()
        self._lock = threading.Lock()

    def wait_time(self) -> float:
        """Take a token and return 0, or return how long until one is available (nothing taken)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens >= 1:
                self._tokens -= 1
                return 0.0
            return (1 - self._tokens) / self.rate

    def take(self) -> None:
        while (wait := self.wait_time()) > 0:
            if wait > _BUDGET_MAX_SLEEP_S:
                raise RateLimited(
                    f"max_calls_per_hour budget used up; next call in {wait:.0f}s", retry_after=wait
                )
            time.sleep(wait)


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("Retry-After")
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def classify(response: httpx.Response, what: str) -> Exception:
    """The error of a non-200 collection answer (``_RequestRefused`` for a bisectable 400)."""
    status = response.status_code
    code, message = salesforce_error(response)
    text = f"{what}: HTTP {status} {code}: {message}"
    if status == 429 or code in RATE_LIMIT_CODES:
        return RateLimited(text, retry_after=_retry_after(response), status=status, error_code=code)
    if status >= 500 or code in BUSY_CODES:
        return ServerBusy(text, status=status, error_code=code, retry_after=_retry_after(response))
    if status == 401:
        return AuthExpired(text, status=status, error_code=code)
    if status == 400 and code in RECORD_CODES:
        return _RequestRefused(code, message)
    if status == 400:
        return SchemaRefused(text, status=status, error_code=code)
    return ConfigError(text, status=status, error_code=code)


def _record_error(result: dict[str, Any]) -> tuple[str, str, list[str]]:
    errors = result.get("errors") or [{}]
    first = errors[0] if isinstance(errors[0], dict) else {}
    return (
        str(first.get("statusCode", "UNKNOWN")),
        str(first.get("message", "")),
        list(first.get("fields") or []),
    )


def _rejection(code: str, message: str, fields: list[str]) -> RecordRejected:
    shown = f" {fields}" if fields else ""
    return RecordRejected(f"{code}: {message}{shown}", status_code=code, sf_message=message, fields=fields)


class Publishing:
    """One :meth:`Publisher.start`: the records taken, their chunk plan and each chunk's call."""

    def __init__(self, chunk_size: int, stats: PublisherStats, after: Publishing | None = None) -> None:
        self.taken: list[EventRecord] = []
        self.planner = ChunkPlanner(chunk_size)
        self.futures: dict[int, Future[Outcome]] = {}
        self.halt: threading.Event = after.halt if after is not None else threading.Event()
        """Set by the first transient failure: no chunk starts after it (shared with ``after``)."""
        self._stats = stats
        self._outcome: Outcome | None = None
        self._left = 0
        self._done = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def futures_of(self, rows: set[Any]) -> list[Future[Outcome]]:
        """The calls of the chunks holding the last event of these rows (``order_key``)."""
        numbers = {self.planner.chunk_of(row) for row in rows}
        return [self.futures[n] for n in sorted(n for n in numbers if n is not None)]

    def seal(self) -> None:
        """Every chunk is started: :meth:`done` from now on says whether every call is over."""
        with self._lock:
            self._left = len(self.futures)
        for future in self.futures.values():
            future.add_done_callback(self._one_done)
        if not self.futures:
            self._finish()

    def _one_done(self, _future: Future[Outcome]) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self._finish()

    def _finish(self) -> None:
        with self._lock:
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def done(self) -> bool:
        return self._done.is_set()

    def on_done(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once every call is over (now, when it is already)."""
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def result(self) -> Outcome:
        """The outcome of every record taken (waits for the calls)."""
        if self._outcome is None:
            outcome = Outcome()
            for number in sorted(self.futures):
                outcome.merge(self.futures[number].result())
            self._stats.count_results(outcome)
            self._outcome = outcome
        return self._outcome


class Publisher:
    """Sends event records to ``composite/sobjects`` (see the module docstring)."""

    sends_ahead = False
    """Whether the sink starts the next batch (:meth:`start` with ``after``) while one is under way."""

    def __init__(
        self,
        client: httpx.Client,
        instance_url: str,
        api_version: str,
        *,
        max_in_flight: int = 4,
        budget: CallBudget | None = None,
        metrics: Any = None,
        chunk_size: int = MAX_RECORDS_PER_CALL,
        gzip_min_bytes: int | None = 32_768,
        allocation: Allocation | None = None,
    ) -> None:
        self.client = client
        self.url = f"{instance_url.rstrip('/')}/services/data/v{api_version}/composite/sobjects"
        self.max_in_flight = max(1, max_in_flight)
        self.budget = budget
        self.metrics = metrics
        self.chunk_size = min(chunk_size, MAX_RECORDS_PER_CALL)
        self.gzip_min_bytes = gzip_min_bytes
        self.allocation = allocation
        self.stats = PublisherStats()
        self._usage_stamp = 0.0
        self._pool = ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="sf-publish")
        self._closing = threading.Event()

    def close(self) -> None:
        """Wait for the calls in flight; chunks not started yet are not sent any more."""
        self._closing.set()
        self._pool.shutdown(wait=True)

    def prepare(self, records: Sequence[EventRecord]) -> None:
        """Work on records about to be published that needs no call, done ahead (see
        :meth:`~walbridge.sinks.salesforce.sink.SalesforceSink.prepare`): none here, a JSON body is
        cheap to build per call."""

    def publish(self, records: Iterable[EventRecord]) -> Outcome:
        """Publish ``records`` (indexes in the outcome: positions in ``records``). Records are taken one
        at a time and each chunk is sent as soon as it is ready (:mod:`~walbridge.sinks.salesforce.chunks`),
        so a lazily mapped batch has its first calls in flight while the rest is still being mapped."""
        return self.start(records).result()

    def start(self, records: Iterable[EventRecord], *, after: Publishing | None = None) -> Publishing:
        """:meth:`publish` without waiting for the answers: every record is taken and every chunk
        started (or queued) when this returns. With ``after`` (the publish of the batch before, still
        under way) a chunk also waits for the chunks of ``after`` holding its rows' previous events and
        is not sent if one of them did not go through, and a transient failure of either stops both."""
        run = Publishing(self.chunk_size, self.stats, after)

        def send(chunks: list[Chunk]) -> None:
            for chunk in chunks:
                wait_for = [run.futures[number] for number in sorted(chunk.after)]
                if after is not None:
                    wait_for += after.futures_of({run.taken[i].order_key for i in chunk.indexes})
                run.futures[chunk.number] = self._start(
                    run.taken, chunk.indexes, wait_for, run.halt, ahead=after is not None
                )

        try:
            for record in records:
                run.taken.append(record)
                send(run.planner.add(record))
        except BaseException:
            run.halt.set()  # nothing more starts; what is in flight ends before the error goes up
            wait(run.futures.values())
            raise
        send(run.planner.finish())
        run.seal()
        return run

    def _start(
        self,
        records: Sequence[EventRecord],
        chunk: list[int],
        wait_for: list[Future[Outcome]],
        halt: threading.Event,
        ahead: bool = False,
    ) -> Future[Outcome]:
        """The call of one chunk, run by a pool thread once the chunks in ``wait_for`` went through
        (``ahead``: the batch of the chunk follows one still under way)."""
        return self._pool.submit(self._run_chunk, partial(self._send, records, chunk), wait_for, halt)

    def _run_chunk(
        self,
        send: Callable[[], Outcome],
        wait_for: list[Future[Outcome]],
        halt: threading.Event,
        started: bool = False,
    ) -> Outcome:
        """``send()`` after ``wait_for`` went through and unless ``halt`` is set (``started``: the call
        is already under way, it is only finished here)."""
        for dep in wait_for:
            failed = dep.result().transient
            if failed is not None:
                return Outcome(transient=failed)
        if (halt.is_set() or self._closing.is_set()) and not started:
            return Outcome(transient=ServerBusy("not sent: an earlier call of this batch failed"))
        try:
            outcome = send()
        except TransientError as exc:
            outcome = Outcome(transient=exc)
        if outcome.transient is not None:
            halt.set()
        return outcome

    def _send(self, records: Sequence[EventRecord], chunk: list[int]) -> Outcome:
        """One call for ``chunk``; halves it on a refused request until the culprit is alone."""
        try:
            results = self._call([records[i] for i in chunk])
        except _RequestRefused as refused:
            if len(chunk) == 1:
                return Outcome(rejected=[(chunk[0], _rejection(refused.code, refused.message, []))])
            half = len(chunk) // 2
            outcome = self._send(records, chunk[:half])
            if outcome.transient is None:
                outcome.merge(self._send(records, chunk[half:]))
            return outcome
        return self._outcome(chunk, results)

    def _outcome(self, chunk: list[int], results: list[dict[str, Any]]) -> Outcome:
        outcome = Outcome()
        for index, result in zip(chunk, results, strict=True):
            if result.get("success") is True:
                outcome.accepted.append(index)
                continue
            code, message, fields = _record_error(result)
            if code == "LIMIT_EXCEEDED" and self.allocation is not None:
                outcome.transient = outcome.transient or self.allocation.exhausted(HOURLY_PUBLISH)
            elif code in RATE_LIMIT_CODES:
                outcome.transient = outcome.transient or RateLimited(f"record refused: {code}: {message}")
            elif code in BUSY_CODES:
                outcome.transient = outcome.transient or ServerBusy(f"record refused: {code}: {message}")
            else:
                outcome.rejected.append((index, _rejection(code, message, fields)))
        if self.allocation is not None:
            self.allocation.published(len(outcome.accepted))
        return outcome

    def _call(self, chunk: list[EventRecord]) -> list[dict[str, Any]]:
        if self.allocation is not None:
            self.allocation.before_call(len(chunk))
        if self.budget is not None:
            self.budget.take()
        body = {
            "allOrNone": False,
            "records": [{"attributes": {"type": r.sobject}, **r.values} for r in chunk],
        }
        content = orjson.dumps(body)
        headers = {"Content-Type": "application/json"}
        if self.gzip_min_bytes is not None and len(content) >= self.gzip_min_bytes:
            content = gzip.compress(content, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        with http_errors("publishing to Salesforce"):
            response = self.client.post(self.url, content=content, headers=headers)
        self.stats.count_call(response.status_code, len(chunk))
        usage = self._observe_limits(response)
        if response.status_code != 200:
            error = classify(response, "composite/sobjects")
            daily = usage.get("api-usage")
            if (
                self.allocation is not None
                and isinstance(error, RateLimited)
                and daily is not None
                and daily[0] >= daily[1]
            ):
                raise self.allocation.exhausted(DAILY_API) from error
            raise error
        try:
            results = response.json()
        except ValueError as exc:
            raise ServerBusy("composite/sobjects answered 200 without JSON") from exc
        if not isinstance(results, list) or len(results) != len(chunk):
            raise ServerBusy(f"composite/sobjects answered {type(results).__name__} for {len(chunk)} records")
        return results

    def _observe_limits(self, response: httpx.Response) -> dict[str, tuple[int, int]]:
        usage = parse_limit_info(response.headers.get("Sforce-Limit-Info"))
        if not usage:
            return usage
        if self.allocation is not None and "api-usage" in usage:
            self.allocation.observe_api_usage(*usage["api-usage"])
        with self.stats._lock:
            now = time.monotonic()
            # Answers of concurrent calls arrive in any order: keep the highest count unless it is stale.
            fresh = {
                kind: value
                for kind, value in usage.items()
                if value[0] >= self.stats.api_usage.get(kind, (0, 0))[0] or now - self._usage_stamp > 60
            }
            self.stats.api_usage.update(fresh)
            self._usage_stamp = now
        if self.metrics is not None:
            for kind, (used, limit) in fresh.items():
                self.metrics.api_usage.labels(kind=f"{kind}.used").set(used)
                self.metrics.api_usage.labels(kind=f"{kind}.limit").set(limit)
        return usage
