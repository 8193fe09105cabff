"""The Salesforce sink's Pub/Sub API (gRPC) transport: the REST publisher's machinery, another wire.

Contract: :class:`PubSubPublisher` is a :class:`~walbridge.sinks.salesforce.publisher.Publisher` whose
calls go to the Pub/Sub API instead of ``composite/sobjects``. Everything else is the REST path's:
the chunk plan of :mod:`~walbridge.sinks.salesforce.chunks` (at most one event per row per request, a row's
next request after its previous one went through, at most ``events_per_request`` events, default 200 as
Salesforce recommends), the calls in flight and the halt
after a transient failure, and the classification of per-event results into accepted / rejected (the DLQ)
/ transient (``Outcome``). So order per row, at-least-once and "offsets only for known outcomes" hold alike.

Per event type: ``GetTopic`` (``can_publish`` checked) and ``GetSchema`` (cached by schema id). Each event
is Avro-encoded with ``CreatedDate`` (now) and ``CreatedById`` (the token's user) and an id of its own,
which Salesforce echoes as ``correlation_key``. An event over 1 MB is rejected without being sent; a chunk
is split into requests under 3 MB. Requests go over one ``PublishStream`` (several in flight, each response
matched to its request by the correlation keys) or, with ``pubsub_stream: false`` or a server without it,
unary ``Publish``. Errors (:func:`rpc_errors`): the ``...auth.error`` trailer → log in again once, then
``AuthExpired``; ``UNAVAILABLE`` / ``INTERNAL`` / a broken stream → ``ServerBusy`` (the runner backs off
and retries); ``RESOURCE_EXHAUSTED`` → ``RateLimited``; a schema id that is no longer the topic's →
``GetTopic``/``GetSchema`` again and the request re-encoded once (a field the new schema lacks stops the
sink through ``SchemaRefused``, as on REST); ``NOT_FOUND`` / ``PERMISSION_DENIED`` → ``SchemaRefused``.
"""

from __future__ import annotations

import itertools
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import grpc
import httpx

from walbridge.errors import (
    AuthExpired,
    ConfigError,
    OperationTimeout,
    RateLimited,
    RecordRejected,
    ServerBusy,
    TransientError,
    WalbridgeError,
)
from walbridge.pubsub_api import (
    AUTH_ERROR,
    ERROR_CODE_KEY,
    MAX_EVENT_BYTES,
    MAX_REQUEST_BYTES,
    METADATA_ACCESS_TOKEN,
    METADATA_INSTANCE_URL,
    METADATA_TENANT_ID,
    pb2,
    pb2_grpc,
    topic_name,
)
from walbridge.pubsub_api.avro import AvroCodec
from walbridge.sinks.salesforce.auth import AccessToken, SalesforceAuth
from walbridge.sinks.salesforce.mapping import EventRecord
from walbridge.sinks.salesforce.publisher import (
    MAX_RECORDS_PER_CALL,
    Outcome,
    Publisher,
    Publishing,
    SchemaRefused,
    _rejection,
)
from walbridge.urls import insecure_url

__all__ = ["PubSubPublisher", "rpc_errors"]

T = TypeVar("T")
_CALL_TIMEOUT_S = 60.0
_EVENT_OVERHEAD = 64
"""Bytes a ProducerEvent adds to its payload in a request (id, schema id, framing), rounded up."""
_CODE = re.compile(r"^([A-Z][A-Z_]+): (.*)$", re.S)
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 16 * 1_048_576)]
"""No client keepalive pings: gRPC servers answer pings more often than every 5 minutes with GOAWAY
(``too_many_pings``); the stream's own traffic and the 70 s idle close keep it honest."""


class _AuthRefused(Exception):
    """The call carried a token Salesforce no longer accepts."""


class _StaleSchema(Exception):
    """The request's schema id is not the topic's current one."""


class _StreamClosed(Exception):
    """The PublishStream ended (idle timeout, server restart) before this request was answered."""


@contextmanager
def rpc_errors(what: str) -> Iterator[None]:
    """The one translation of gRPC failures into walbridge's errors (see the module docstring)."""
    try:
        yield
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = (exc.details() if isinstance(exc, grpc.Call) else str(exc)) or ""
        trailer = dict(exc.trailing_metadata() or ()) if isinstance(exc, grpc.Call) else {}
        text = f"{what}: {code.name}: {details}"
        if trailer.get(ERROR_CODE_KEY) == AUTH_ERROR or code == grpc.StatusCode.UNAUTHENTICATED:
            raise _AuthRefused(text) from exc
        if code == grpc.StatusCode.INVALID_ARGUMENT and "schema" in details.lower():
            raise _StaleSchema(text) from exc
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise OperationTimeout(text) from exc
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise RateLimited(text, error_code=trailer.get(ERROR_CODE_KEY)) from exc
        if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED):
            raise SchemaRefused(text, error_code=code.name) from exc
        if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED):
            raise ConfigError(text, error_code=code.name) from exc
        raise ServerBusy(text, error_code=code.name) from exc


@dataclass(frozen=True, slots=True)
class _Topic:
    name: str
    codec: AvroCodec


@dataclass(frozen=True, slots=True)
class _Payload:
    """An event's Avro payload encoded ahead, and what it was encoded for."""

    record: EventRecord
    schema_id: str
    user_id: str
    payload: bytes

    def fits(self, record: EventRecord, schema_id: str, user_id: str) -> bool:
        return record is self.record and schema_id == self.schema_id and user_id == self.user_id


@dataclass(slots=True)
class _Encoded:
    """One chunk ready to publish: its requests (with the records' indexes), the records refused while
    encoding, and the answer to come of the first request when it was sent already."""

    event: str
    topic: _Topic
    requests: list[tuple[list[int], pb2.PublishRequest]] = field(default_factory=list)
    rejected: list[tuple[int, RecordRejected]] = field(default_factory=list)
    first: Future[pb2.PublishResponse] | None = None


class _PublishStream:
    """One PublishStream: requests queued in, responses matched back by their events' correlation keys."""

    def __init__(self, stub: pb2_grpc.PubSubStub, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata
        self._requests: queue.SimpleQueue[pb2.PublishRequest | None] = queue.SimpleQueue()
        self._pending: dict[str, Future[pb2.PublishResponse]] = {}
        self._lock = threading.Lock()
        self.closed = False
        self._call = stub.PublishStream(iter(self._requests.get, None), metadata=metadata)
        threading.Thread(target=self._read, name="sf-pubsub-stream", daemon=True).start()

    def send(self, request: pb2.PublishRequest) -> Future[pb2.PublishResponse]:
        future: Future[pb2.PublishResponse] = Future()
        with self._lock:
            if self.closed:
                raise _StreamClosed("the PublishStream is closed")
            self._pending[request.events[0].id] = future
        self._requests.put(request)
        return future

    def _read(self) -> None:
        error: BaseException = _StreamClosed("the server ended the PublishStream")
        try:
            for response in self._call:
                key = response.results[0].correlation_key if response.results else ""
                with self._lock:
                    future = self._pending.pop(key, None)
                if future is not None:
                    future.set_result(response)
        except grpc.RpcError as exc:
            error = exc
        with self._lock:
            self.closed = True
            pending = list(self._pending.values())
            self._pending.clear()
        for future in pending:
            future.set_exception(error)

    def finish(self) -> None:
        """Send no more requests; the ones in flight are still answered (a cancel would leave their
        outcome unknown, and the runner would publish them again)."""
        self._requests.put(None)

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()


class PubSubPublisher(Publisher):
    """Publishes over the Pub/Sub API (see the module docstring)."""

    sends_ahead = True  # one stream: the next batch's requests follow the answers of the batch before

    def __init__(
        self,
        client: httpx.Client,
        auth: SalesforceAuth,
        url: str,
        *,
        instance_url: str,
        api_version: str,
        max_in_flight: int = 8,
        events_per_request: int = MAX_RECORDS_PER_CALL,
        stream: bool = True,
        metrics: Any = None,
        allocation: Any = None,
    ) -> None:
        super().__init__(
            client,
            instance_url,
            api_version,
            max_in_flight=max_in_flight,
            metrics=metrics,
            allocation=allocation,
        )
        self.chunk_size = max(1, events_per_request)  # not REST's 200: a request is bounded by its bytes
        self.auth = auth
        self.url = url
        parsed = httpx.URL(url)
        target = f"{parsed.host}:{parsed.port or 443}"
        if parsed.scheme == "https":
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(), _CHANNEL_OPTIONS)
        elif not insecure_url(url):
            self.channel = grpc.insecure_channel(target, _CHANNEL_OPTIONS)
        else:
            raise ConfigError(f"pubsub_url {url!r} must be https:// (plain http only to a loopback address)")
        self.stub = pb2_grpc.PubSubStub(self.channel)  # type: ignore[no-untyped-call]
        self.use_stream = stream
        self._stream: _PublishStream | None = None
        self._stream_lock = threading.Lock()
        self._topics: dict[str, _Topic] = {}
        self._codecs: dict[str, AvroCodec] = {}
        self._topic_lock = threading.Lock()
        self._payloads: dict[int, _Payload] = {}
        """Payloads encoded ahead (:meth:`prepare`) for the next :meth:`publish`, by record id."""
        self._ready: dict[int, _Payload] = {}
        """The ones of the records being published (a publish started ahead encodes its own)."""
        prefix, numbers = uuid.uuid4().hex[:16], itertools.count()
        self._next_id: Callable[[], str] = lambda: f"{prefix}-{next(numbers)}"
        """Event ids (correlation keys): unique per publisher, cheaper than a uuid each."""

    def close(self) -> None:
        super().close()
        with self._stream_lock:
            if self._stream is not None:
                self._stream.close()
                self._stream = None
        self.channel.close()

    # ------------------------------------------------------------------ topics and schemas

    def topic(self, event: str, *, refresh: bool = False) -> _Topic:
        """The event's topic and current schema codec (GetTopic, then GetSchema by id, cached)."""
        with self._topic_lock:
            known = self._topics.get(event)
            if known is not None and not refresh:
                return known
            info = self._rpc(
                lambda md: self.stub.GetTopic(
                    pb2.TopicRequest(topic_name=topic_name(event)), metadata=md, timeout=_CALL_TIMEOUT_S
                ),
                f"GetTopic {event}",
            )
            if not info.can_publish:
                raise SchemaRefused(f"Pub/Sub API: the integration user may not publish {info.topic_name}")
            codec = self._codecs.get(info.schema_id)
            if codec is None:
                schema = self._rpc(
                    lambda md: self.stub.GetSchema(
                        pb2.SchemaRequest(schema_id=info.schema_id), metadata=md, timeout=_CALL_TIMEOUT_S
                    ),
                    f"GetSchema {info.schema_id}",
                )
                codec = self._codecs[info.schema_id] = AvroCodec(schema.schema_json)
                codec.id = info.schema_id  # Salesforce's id is authoritative, whatever fingerprint it uses
            topic = self._topics[event] = _Topic(info.topic_name, codec)
            return topic

    # ------------------------------------------------------------------ encoding ahead

    def prepare(self, records: Sequence[EventRecord]) -> None:
        """Avro-encode records about to be published, while the batch before waits for its answers
        (their ``CreatedDate`` is this moment). A payload is used only for the record it was made for,
        with the schema and user of that moment; any other is encoded again when sent."""
        try:
            token = self.auth.current(self.client)
        except TransientError:
            return  # no token now: everything is encoded when sent
        now_ms = int(time.time() * 1000)
        payloads: dict[int, _Payload] = {}
        for record in records:
            topic = self._topics.get(record.sobject)
            if topic is None:
                continue
            try:
                payload = topic.codec.encode(record.values, now_ms, token.user_id)
            except (KeyError, ValueError, TypeError):
                continue  # encoded again when sent, which says what is wrong
            payloads[id(record)] = _Payload(record, topic.codec.id, token.user_id, payload)
        self._payloads = payloads

    def start(self, records: Iterable[EventRecord], *, after: Publishing | None = None) -> Publishing:
        ready, self._payloads = self._payloads, {}
        if not ready:
            return super().start(records, after=after)
        self._ready = ready
        run = super().start(records, after=after)
        run.on_done(lambda: self._forget(ready))
        return run

    def _forget(self, ready: dict[int, _Payload]) -> None:
        """The publish that took these payloads is over: they serve nothing else."""
        if self._ready is ready:
            self._ready = {}

    # ------------------------------------------------------------------ one chunk

    def _start(
        self,
        records: Sequence[EventRecord],
        chunk: list[int],
        wait_for: list[Future[Outcome]],
        halt: threading.Event,
        ahead: bool = False,
    ) -> Future[Outcome]:
        """On a stream, a chunk free to go (the chunks it follows went through, nothing failed) is encoded
        and its first request sent here, by the thread taking the records, so that it is in flight while
        the next records are mapped; a pool thread then only waits for the answer. A chunk of a batch
        ``ahead`` is encoded here and sent by a pool thread once one is free (the calls in flight stay
        at ``max_in_flight``: its requests follow the batch before's as they are answered). Any other
        chunk, or one this step fails for (the pool thread does it again and reports the error), goes the
        REST way."""
        if self.use_stream and not halt.is_set():
            try:
                if ahead:
                    encoded = self._encode(records, chunk, self.topic(records[chunk[0]].sobject))
                    send = partial(self._send, records, chunk, encoded)
                    return self._pool.submit(self._run_chunk, send, wait_for, halt)
                if all(_went_through(dep) for dep in wait_for):
                    early = self._send_first(records, chunk)
                    send = partial(self._send, records, chunk, early)
                    return self._pool.submit(self._run_chunk, send, [], halt, True)
            except (WalbridgeError, _StaleSchema, _StreamClosed):
                pass
        return super()._start(records, chunk, wait_for, halt)

    def _send_first(self, records: Sequence[EventRecord], chunk: list[int]) -> _Encoded:
        encoded = self._encode(records, chunk, self.topic(records[chunk[0]].sobject))
        if encoded.requests:
            if self.allocation is not None:
                self.allocation.before_call(len(encoded.requests[0][0]))
            encoded.first = self._stream_send(encoded.requests[0][1])
        return encoded

    def _send(
        self, records: Sequence[EventRecord], chunk: list[int], early: _Encoded | None = None
    ) -> Outcome:
        event = records[chunk[0]].sobject
        for attempt in range(2):
            try:
                if early is not None and not attempt:
                    return self._publish(early)
                return self._publish(self._encode(records, chunk, self.topic(event, refresh=attempt > 0)))
            except _StaleSchema:
                if attempt:
                    raise SchemaRefused(f"Pub/Sub API: {event}'s schema keeps changing") from None
        raise AssertionError("unreachable")

    def _encode(self, records: Sequence[EventRecord], chunk: list[int], topic: _Topic) -> _Encoded:
        """The chunk's events Avro-encoded into requests under 3 MB; the ones refused here in ``rejected``."""
        encoded = _Encoded(records[chunk[0]].sobject, topic)
        token = self.auth.current(self.client)
        now_ms = int(time.time() * 1000)
        batches: list[tuple[list[int], list[pb2.ProducerEvent]]] = [([], [])]
        size = 0
        ready = self._ready
        for index in chunk:
            record = records[index]
            ahead = ready.get(id(record))
            try:
                if ahead is not None and ahead.fits(record, topic.codec.id, token.user_id):
                    payload = ahead.payload
                else:
                    payload = topic.codec.encode(record.values, now_ms, token.user_id)
            except KeyError as missing:
                raise _StaleSchema(f"the schema of {topic.name} has no field {missing}") from None
            except (ValueError, TypeError) as exc:
                rejection = _rejection("INVALID_TYPE_ON_FIELD_IN_RECORD", f"not encodable as Avro: {exc}", [])
                encoded.rejected.append((index, rejection))
                continue
            if len(payload) > MAX_EVENT_BYTES:
                message = f"event of {len(payload):,} bytes exceeds the maximum event size of 1 MB"
                encoded.rejected.append((index, _rejection("EVENT_TOO_LARGE", message, [])))
                continue
            if batches[-1][0] and size + len(payload) + _EVENT_OVERHEAD > MAX_REQUEST_BYTES:
                batches.append(([], []))
                size = 0
            size += len(payload) + _EVENT_OVERHEAD
            batches[-1][0].append(index)
            batches[-1][1].append(
                pb2.ProducerEvent(id=self._next_id(), schema_id=topic.codec.id, payload=payload)
            )
        encoded.requests = [
            (indexes, pb2.PublishRequest(topic_name=topic.name, events=events))
            for indexes, events in batches
            if indexes
        ]
        return encoded

    def _publish(self, encoded: _Encoded) -> Outcome:
        """The encoded requests one after the other (the first maybe sent already), until one fails."""
        outcome = Outcome(rejected=list(encoded.rejected))
        for indexes, request in encoded.requests:
            sent, encoded.first = encoded.first, None
            try:
                if sent is None and self.allocation is not None:
                    self.allocation.before_call(len(indexes))
                response = self._publish_request(request, sent)
            except TransientError as exc:
                outcome.transient = exc  # what earlier requests of the chunk published stays accepted
                break
            self.stats.count_call(200, len(indexes))
            if response.schema_id and response.schema_id != encoded.topic.codec.id:
                self._topics.pop(encoded.event, None)  # the next chunk reads the topic again
            outcome.merge(self._outcome(indexes, _save_results(request, response)))
            if outcome.transient is not None:
                break
        return outcome

    def _publish_request(
        self, request: pb2.PublishRequest, sent: Future[pb2.PublishResponse] | None = None
    ) -> pb2.PublishResponse:
        """One request's response (``sent``: the request is on the stream already, this is its answer)."""

        def call(metadata: tuple[tuple[str, str], ...]) -> pb2.PublishResponse:
            nonlocal sent
            if not self.use_stream:
                response: pb2.PublishResponse = self.stub.Publish(
                    request, metadata=metadata, timeout=_CALL_TIMEOUT_S
                )
                return response
            future = sent if sent is not None else self._stream_send(request)
            sent = None  # a retry (after logging in again) sends the request again
            try:
                return future.result(timeout=_CALL_TIMEOUT_S)
            except _StreamClosed as closed:
                raise ServerBusy(f"Pub/Sub API: {closed}; the request's outcome is unknown") from None
            except TimeoutError:
                raise OperationTimeout("Pub/Sub API: no PublishResponse within 60 s") from None

        try:
            return self._rpc(call, "Publish")
        except ConfigError as refused:
            if self.use_stream and refused.context.get("error_code") == "UNIMPLEMENTED":
                self.use_stream = False  # a server without PublishStream: unary Publish from now on
                return self._rpc(call, "Publish")
            raise

    def _stream_send(self, request: pb2.PublishRequest) -> Future[pb2.PublishResponse]:
        try:
            return self._open_stream().send(request)
        except _StreamClosed:
            return self._open_stream(renew=True).send(request)

    def _open_stream(self, renew: bool = False) -> _PublishStream:
        """The open stream, or a new one (with the current token) when it closed, is being renewed, or
        carries a token that is no longer the current one."""
        metadata = _metadata(self.auth.current(self.client))
        with self._stream_lock:
            stream = self._stream
            if stream is None or stream.closed or renew or stream.metadata != metadata:
                if stream is not None:
                    stream.finish()
                stream = self._stream = _PublishStream(self.stub, metadata)
            return stream

    # ------------------------------------------------------------------ auth

    def _rpc(self, call: Callable[[tuple[tuple[str, str], ...]], T], what: str) -> T:
        """``call(metadata)`` with the token's metadata; on the auth error, log in once more and retry."""
        for attempt in range(2):
            token = self.auth.current(self.client)
            try:
                with rpc_errors(f"Pub/Sub API {what}"):
                    return call(_metadata(token))
            except _AuthRefused as refused:
                if attempt:
                    raise AuthExpired(f"{refused} (after logging in again)") from None
                self.auth.refuse(token)
        raise AssertionError("unreachable")


def _metadata(token: AccessToken) -> tuple[tuple[str, str], ...]:
    return (
        (METADATA_ACCESS_TOKEN, token.value),
        (METADATA_INSTANCE_URL, token.instance_url),
        (METADATA_TENANT_ID, token.org_id),
    )


def _save_results(request: pb2.PublishRequest, response: pb2.PublishResponse) -> list[dict[str, Any]]:
    """The PublishResults in the request's order (matched by correlation key), shaped as REST SaveResults
    so that the REST path's classification applies; a missing result is a transient failure."""
    by_key = {result.correlation_key: result for result in response.results}
    results = []
    for event in request.events:
        result = by_key.get(event.id)
        if result is None:
            results.append(_failed("SERVER_UNAVAILABLE", "no PublishResult for this event"))
        elif result.HasField("error"):
            match = _CODE.match(result.error.msg)
            fallback = (pb2.ErrorCode.Name(result.error.code), result.error.msg)
            code, message = match.groups() if match else fallback
            results.append(_failed(code, message))
        else:
            results.append({"success": True, "errors": []})
    return results


def _went_through(call: Future[Outcome]) -> bool:
    """The chunk's call is over and nothing of it is left to retry."""
    return call.done() and call.exception() is None and call.result().transient is None


def _failed(code: str, message: str) -> dict[str, Any]:
    return {"success": False, "errors": [{"statusCode": code, "message": message, "fields": []}]}
