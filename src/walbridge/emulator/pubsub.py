"""The gRPC side of the emulator: Salesforce's Pub/Sub API over the same org as the REST API.

Contract: :func:`start_pubsub` serves ``eventbus.v1.PubSub`` on its own port from the emulator's process,
sharing its sessions, event definitions, permission sets, hourly publishing allocation, injected faults
(a drawn 503 → ``UNAVAILABLE``, 403 → ``RESOURCE_EXHAUSTED`` for a whole publish request; per-record
faults as on REST), latency and :class:`~walbridge.emulator.store.EventStore` (one stream, one
replay-id sequence for gRPC and REST events). RPCs: ``GetTopic`` (``/event/<Name__e>``; ``can_publish``
from the Create permission), ``GetSchema`` (the Avro schema generated from the SFDX metadata; every
schema id ever served stays readable),
``Publish``, ``PublishStream`` (requests processed concurrently, one response per request, results carry
``correlation_key`` = the event's id; a later request naming another topic → ``INVALID_ARGUMENT``; a stream
without a request for ``stream_idle_s`` is closed) and ``Subscribe`` (LATEST / EARLIEST / CUSTOM,
``num_requested`` capped at 100 outstanding, an empty ``FetchResponse`` with ``latest_replay_id`` after
``keepalive_s`` idle; an unknown CUSTOM replay id → ``INVALID_ARGUMENT`` + ``...replayid.corrupted``).

What it enforces, as Salesforce does: missing or expired ``accesstoken`` / ``instanceurl`` / ``tenantid``
metadata → ``UNAUTHENTICATED`` with trailer ``error-code: sfdc.platform.eventbus.grpc.service.auth.error``
(also mid-stream, per request); a request over 4 MB → ``UNAVAILABLE``, nothing stored; an event over 1 MB, a
payload that does not decode, an empty ``CreatedById`` or a field value Salesforce refuses → that event's
``PublishResult.error`` (code ``PUBLISH``), the others are published; an event whose ``schema_id`` is not the
topic's current one → ``INVALID_ARGUMENT`` for the request, nothing stored (an inference: see
docs/salesforce.md). Required custom fields are not enforced (Pub/Sub publishes them as null).
"""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import orjson

from walbridge.emulator.auth import ORG_ID, Authenticator, Session
from walbridge.emulator.limits import FaultPlan
from walbridge.emulator.metadata import EventDefinition
from walbridge.emulator.rest import DataApi
from walbridge.emulator.store import EventStore
from walbridge.emulator.validation import RequestError, check_record, field_errors
from walbridge.pubsub_api import (
    AUTH_ERROR,
    ERROR_CODE_KEY,
    MAX_EVENT_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_NUM_REQUESTED,
    METADATA_ACCESS_TOKEN,
    METADATA_INSTANCE_URL,
    METADATA_TENANT_ID,
    REPLAY_ID_CORRUPTED,
    event_name,
    pb2,
    pb2_grpc,
    replay_bytes,
    replay_number,
)
from walbridge.pubsub_api.avro import AvroCodec, event_schema

__all__ = ["PubSubEmulator", "start_pubsub"]

_SERVER_MESSAGE_LIMIT = 4 * MAX_MESSAGE_BYTES
"""gRPC's own limit is raised so that the emulator itself answers an oversized request as Salesforce does."""
_POLL_S = 0.05
_UNAVAILABLE = "PLATFORM_EVENT_PUBLISHING_UNAVAILABLE: publishing is temporarily unavailable"
_HOURLY_LIMIT = "LIMIT_EXCEEDED: You have exceeded the hourly publishing limit for platform events"


class _Abort(Exception):
    """End the RPC with ``code`` (and Salesforce's error code as trailer)."""

    def __init__(self, code: grpc.StatusCode, details: str, error_code: str | None = None) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.error_code = error_code

    def apply(self, context: grpc.ServicerContext) -> None:
        if self.error_code is not None:
            context.set_trailing_metadata(((ERROR_CODE_KEY, self.error_code),))
        context.abort(self.code, f"{self.details} rpcId: {uuid.uuid4()}")


def _rpc(method: Callable[..., Any]) -> Callable[..., Any]:
    """Unary handlers: an ``_Abort`` raised inside becomes the RPC's status."""

    def wrapper(self: PubSubEmulator, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except _Abort as abort:
            abort.apply(context)

    return wrapper


class PubSubEmulator(pb2_grpc.PubSubServicer):
    """The servicer (see the module docstring)."""

    def __init__(
        self,
        auth: Authenticator,
        api: DataApi,
        store: EventStore,
        *,
        latency_ms: Callable[[], float] = lambda: 0.0,
        faults: FaultPlan | None = None,
        keepalive_s: float = 270.0,
        stream_idle_s: float = 70.0,
    ) -> None:
        self.auth = auth
        self.api = api
        self.store = store
        self.latency_ms = latency_ms
        self.faults = faults
        self.keepalive_s = keepalive_s
        self.stream_idle_s = stream_idle_s
        self.requests = 0
        """RPC messages answered (unary calls + PublishStream requests)."""
        self._codecs: dict[EventDefinition, AvroCodec] = {}
        self._schemas: dict[str, str] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ RPCs

    @_rpc
    def GetTopic(self, request: pb2.TopicRequest, context: grpc.ServicerContext) -> pb2.TopicInfo:
        self._begin(context)
        definition = self._definition(request.topic_name)
        return pb2.TopicInfo(
            topic_name=request.topic_name,
            tenant_guid=ORG_ID,
            can_publish=self.api.may_create(definition),
            can_subscribe=True,
            schema_id=self._codec(definition).id,
            rpc_id=str(uuid.uuid4()),
        )

    @_rpc
    def GetSchema(self, request: pb2.SchemaRequest, context: grpc.ServicerContext) -> pb2.SchemaInfo:
        self._begin(context)
        with self._lock:
            schema_json = self._schemas.get(request.schema_id)
        if schema_json is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"schema id {request.schema_id!r} not found")
        return pb2.SchemaInfo(schema_json=schema_json, schema_id=request.schema_id, rpc_id=str(uuid.uuid4()))

    @_rpc
    def Publish(self, request: pb2.PublishRequest, context: grpc.ServicerContext) -> pb2.PublishResponse:
        session = self._begin(context)
        return self._publish(request, session)

    def PublishStream(
        self, requests: Iterator[pb2.PublishRequest], context: grpc.ServicerContext
    ) -> Iterator[pb2.PublishResponse]:
        try:
            self._session(context)
        except _Abort as abort:
            abort.apply(context)
        answers: queue.SimpleQueue[tuple[float, pb2.PublishResponse | _Abort] | None] = queue.SimpleQueue()
        threading.Thread(target=self._read_publishes, args=(requests, context, answers), daemon=True).start()
        due: list[tuple[float, int, pb2.PublishResponse | _Abort]] = []
        order = itertools.count()
        last, closed = time.monotonic(), False
        while True:
            now = time.monotonic()
            while due and due[0][0] <= now:
                answer = heapq.heappop(due)[2]
                last = now
                if isinstance(answer, _Abort):
                    answer.apply(context)
                    return
                yield answer
            if closed and not due:
                return
            try:
                item = answers.get(
                    timeout=max(0.0, min(_POLL_S * 4, due[0][0] - now if due else _POLL_S * 4))
                )
            except queue.Empty:
                if not due and (not context.is_active() or time.monotonic() - last > self.stream_idle_s):
                    return  # cancelled, or idle: Salesforce closes a stream without a request for 70 s
                continue
            if item is None:
                closed = True
            else:
                last = time.monotonic()
                heapq.heappush(due, (item[0], next(order), item[1]))

    def Subscribe(
        self, requests: Iterator[pb2.FetchRequest], context: grpc.ServicerContext
    ) -> Iterator[pb2.FetchResponse]:
        try:
            self._session(context)
            first = next(requests, None)
            if first is None:
                return
            definition = self._definition(first.topic_name)
            position = self._start(first)
        except _Abort as abort:
            abort.apply(context)
            return
        flow = _Flow(min(first.num_requested, MAX_NUM_REQUESTED))
        threading.Thread(target=flow.read, args=(requests,), daemon=True).start()
        yield from self._deliver(definition, position, flow, context)

    # ------------------------------------------------------------------ publishing

    def _read_publishes(
        self,
        requests: Iterator[pb2.PublishRequest],
        context: grpc.ServicerContext,
        answers: queue.SimpleQueue[tuple[float, pb2.PublishResponse | _Abort] | None],
    ) -> None:
        """Publish each request and queue its answer with the time it is due (arrival + latency).
        The work is done here, one request after the other, rather than in a thread per request:
        threads contending for the GIL made each stream message wait. Arrival is stamped by a thread of
        its own (:func:`_stamp_arrivals`), so the emulator's work on the requests ahead counts within
        the simulated round trip, as a server's does, instead of being added to it."""
        topic: str | None = None
        inbox: queue.SimpleQueue[tuple[float, pb2.PublishRequest] | None] = queue.SimpleQueue()
        threading.Thread(target=_stamp_arrivals, args=(requests, inbox), daemon=True).start()
        try:
            for arrived, request in iter(inbox.get, None):
                if topic is None:
                    topic = request.topic_name
                elif request.topic_name and request.topic_name != topic:
                    message = f"topic {request.topic_name!r} differs from the stream's topic {topic!r}"
                    answers.put((arrived, _Abort(grpc.StatusCode.INVALID_ARGUMENT, message)))
                    return
                try:
                    session = self._admit(context)
                except _Abort as abort:
                    answers.put((arrived, abort))
                    continue
                latency = self.latency_ms() / 1000
                try:
                    answer: pb2.PublishResponse | _Abort = self._publish(request, session)
                except _Abort as abort:
                    answer = abort
                answers.put((arrived + latency, answer))
        finally:
            answers.put(None)

    def _publish(self, request: pb2.PublishRequest, session: Session) -> pb2.PublishResponse:
        if request.ByteSize() > MAX_MESSAGE_BYTES:
            raise _Abort(
                grpc.StatusCode.UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: overflow",
            )
        fault = self.faults.draw(publishing=True) if self.faults is not None else None
        if fault is not None:
            code = grpc.StatusCode.UNAVAILABLE if fault.status >= 500 else grpc.StatusCode.RESOURCE_EXHAUSTED
            raise _Abort(code, f"{fault.error_code}: {fault.message}")
        definition = self._definition(request.topic_name)
        if not self.api.may_create(definition):
            raise _Abort(grpc.StatusCode.PERMISSION_DENIED, f"no Create permission on {definition.name}")
        codec = self._codec(definition)
        stale = next((e.schema_id for e in request.events if e.schema_id != codec.id), None)
        if stale is not None:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"schema id {stale!r} is not the current schema {codec.id!r} of {request.topic_name}",
            )
        faults = self.api._draw_record_faults()
        checked = [self._check_event(definition, codec, event) for event in request.events]
        errors = [error for error, _ in checked]
        for position in faults:
            if position < len(errors) and errors[position] is None:
                errors[position] = _UNAVAILABLE
        good = [i for i, error in enumerate(errors) if error is None]
        if good and not self.api.publish_allocation.try_take(len(good)):
            for i in good:
                errors[i] = _HOURLY_LIMIT
            good = []
        items = [(definition.name, _custom_fields(checked[i][1])) for i in good]
        stored = iter(self.store.append_many(items, session.user_id)) if items else iter(())
        results = []
        for event, error in zip(request.events, errors, strict=True):
            if error is None:
                replay = replay_bytes(int(next(stored)["ReplayId"]))
                results.append(pb2.PublishResult(replay_id=replay, correlation_key=event.id))
            else:
                failure = pb2.Error(code=pb2.ErrorCode.PUBLISH, msg=error)
                results.append(pb2.PublishResult(error=failure, correlation_key=event.id))
        return pb2.PublishResponse(results=results, schema_id=codec.id, rpc_id=str(uuid.uuid4()))

    @staticmethod
    def _check_event(
        definition: EventDefinition, codec: AvroCodec, event: pb2.ProducerEvent
    ) -> tuple[str | None, dict[str, Any]]:
        """``(error, decoded record)``: the error is None when the event can be published."""
        if len(event.payload) > MAX_EVENT_BYTES:
            return f"event of {len(event.payload):,} bytes exceeds the maximum event size of 1 MB", {}
        try:
            record = codec.decode(event.payload)
        except (ValueError, TypeError, EOFError, IndexError, UnicodeDecodeError) as exc:
            return f"payload does not decode with schema {codec.id}: {type(exc).__name__}", {}
        if not record.get("CreatedById") or not record.get("CreatedDate"):
            return "required fields are missing: [CreatedDate, CreatedById]", record
        try:
            values, _ = check_record(definition, _custom_fields(record))
        except RequestError as exc:
            return f"{exc.error_code}: {exc.message}", record
        problems = field_errors(definition, values)
        return (f"{problems[0].status_code}: {problems[0].message}" if problems else None), record

    # ------------------------------------------------------------------ subscribing

    def _start(self, first: pb2.FetchRequest) -> int:
        latest = self.store.latest_replay_id()
        if first.replay_preset == pb2.ReplayPreset.EARLIEST:
            return 0
        if first.replay_preset != pb2.ReplayPreset.CUSTOM:
            return latest
        number = replay_number(first.replay_id)
        if number is None or not 0 < number <= latest:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "The Replay ID validation failed: the replay id is corrupted or outside the retention window",
                REPLAY_ID_CORRUPTED,
            )
        return number

    def _deliver(
        self, definition: EventDefinition, position: int, flow: _Flow, context: grpc.ServicerContext
    ) -> Iterator[pb2.FetchResponse]:
        last_sent = time.monotonic()
        while context.is_active():
            wanted = flow.outstanding()
            events = self.store.after(position, wanted, definition.name) if wanted else []
            if events:
                codec = self._codec(definition)
                consumer = [self._consumer_event(codec, event) for event in events]
                position = int(events[-1]["ReplayId"])
                left = flow.take(len(events))
                yield pb2.FetchResponse(
                    events=consumer,
                    latest_replay_id=replay_bytes(position),
                    rpc_id=str(uuid.uuid4()),
                    pending_num_requested=left,
                )
                last_sent = time.monotonic()
                continue
            if time.monotonic() - last_sent >= self.keepalive_s:
                yield pb2.FetchResponse(
                    latest_replay_id=replay_bytes(self.store.latest_replay_id()),
                    rpc_id=str(uuid.uuid4()),
                    pending_num_requested=wanted,
                )
                last_sent = time.monotonic()
            flow.wait(_POLL_S)

    @staticmethod
    def _consumer_event(codec: AvroCodec, event: dict[str, Any]) -> pb2.ConsumerEvent:
        values = {k: v for k, v in event["fields"].items() if codec.field_name(k) is not None}
        payload = codec.encode(values, _created_ms(event["CreatedDate"]), event["CreatedById"])
        producer = pb2.ProducerEvent(id=event["EventUuid"], schema_id=codec.id, payload=payload)
        return pb2.ConsumerEvent(event=producer, replay_id=replay_bytes(int(event["ReplayId"])))

    # ------------------------------------------------------------------ helpers

    def _begin(self, context: grpc.ServicerContext) -> Session:
        """Authenticate, count and delay one request."""
        session = self._admit(context)
        latency = self.latency_ms()
        if latency > 0:
            time.sleep(latency / 1000)
        return session

    def _admit(self, context: grpc.ServicerContext) -> Session:
        """Authenticate and count one request."""
        session = self._session(context)
        with self._lock:
            self.requests += 1
        return session

    def _session(self, context: grpc.ServicerContext) -> Session:
        metadata = dict(context.invocation_metadata())
        token = metadata.get(METADATA_ACCESS_TOKEN)
        session = self.auth.session(str(token) if token else None)
        if (
            session is None
            or not metadata.get(METADATA_INSTANCE_URL)
            or metadata.get(METADATA_TENANT_ID) not in (ORG_ID, ORG_ID[:15])
        ):
            raise _Abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "authentication failed: accesstoken, instanceurl and tenantid must name a live session",
                AUTH_ERROR,
            )
        return session

    def _definition(self, topic: str) -> EventDefinition:
        name = event_name(topic)
        definition = self.api.definition(name) if name else None
        if definition is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"topic {topic!r} not found")
        return definition

    def _codec(self, definition: EventDefinition) -> AvroCodec:
        with self._lock:
            codec = self._codecs.get(definition)
            if codec is None:
                schema = event_schema(definition.name, ((f.name, f.type) for f in definition.fields))
                text = orjson.dumps(schema).decode()
                codec = AvroCodec(text)
                self._codecs[definition] = codec
                self._schemas[codec.id] = text
            return codec


class _Flow:
    """Subscribe flow control: events the client asked for and has not received, at most 100."""

    def __init__(self, requested: int) -> None:
        self._outstanding = max(0, requested)
        self._changed = threading.Condition()

    def read(self, requests: Iterator[pb2.FetchRequest]) -> None:
        """Add each later request's ``num_requested``; a client that half-closes still gets events."""
        try:
            for request in requests:
                with self._changed:
                    more = self._outstanding + max(0, request.num_requested)
                    self._outstanding = min(MAX_NUM_REQUESTED, more)
                    self._changed.notify_all()
        except grpc.RpcError:
            pass

    def outstanding(self) -> int:
        with self._changed:
            return self._outstanding

    def take(self, count: int) -> int:
        with self._changed:
            self._outstanding -= count
            return self._outstanding

    def wait(self, timeout: float) -> None:
        with self._changed:
            self._changed.wait(timeout)


def _stamp_arrivals(
    requests: Iterator[pb2.PublishRequest], inbox: queue.SimpleQueue[tuple[float, pb2.PublishRequest] | None]
) -> None:
    """Each request of a stream with the moment it arrived; None when the client ends or leaves."""
    try:
        for request in requests:
            inbox.put((time.monotonic(), request))
    except grpc.RpcError:
        pass  # the client went away
    finally:
        inbox.put(None)


def _custom_fields(record: dict[str, Any]) -> dict[str, Any]:
    """The custom fields that have a value (as the REST API stores an event)."""
    return {k: v for k, v in record.items() if v is not None and k not in ("CreatedDate", "CreatedById")}


def _created_ms(text: str) -> int:
    moment = dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z")
    return int(moment.timestamp() * 1000)


def start_pubsub(servicer: PubSubEmulator, host: str, port: int) -> tuple[grpc.Server, int]:
    """Serve ``servicer`` on ``host:port`` (0: a free port); the server and the bound port."""
    server = grpc.server(
        ThreadPoolExecutor(64, thread_name_prefix="sf-emulator-grpc"),
        options=[
            ("grpc.max_receive_message_length", _SERVER_MESSAGE_LIMIT),
            ("grpc.max_send_message_length", _SERVER_MESSAGE_LIMIT),
            ("grpc.so_reuseport", 0),  # a second emulator on the same port fails instead of sharing it
        ],
    )
    pb2_grpc.add_PubSubServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server, bound
