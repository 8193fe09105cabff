"""The Salesforce Pub/Sub API (gRPC) contract shared by the sink's client and the emulator's server.

Contract: the generated messages and stubs (``pb2``, ``pb2_grpc``; made from ``pubsub_api.proto`` by
``./dev proto``), the facts both sides must agree on (auth metadata keys, the ``error-code`` trailer, the
size and flow-control limits, topic names, replay ids as bytes) and :mod:`walbridge.pubsub_api.avro`
(Salesforce field types ↔ Avro, the schema fingerprint). Importing it needs ``grpcio`` and ``protobuf``
(the ``pubsub`` extra); nothing here imports walbridge's sinks or emulator.
"""

from __future__ import annotations

from walbridge.pubsub_api import pubsub_api_pb2 as pb2
from walbridge.pubsub_api import pubsub_api_pb2_grpc as pb2_grpc

__all__ = [
    "AUTH_ERROR",
    "ERROR_CODE_KEY",
    "MAX_EVENT_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_NUM_REQUESTED",
    "MAX_REQUEST_BYTES",
    "METADATA_ACCESS_TOKEN",
    "METADATA_INSTANCE_URL",
    "METADATA_TENANT_ID",
    "REPLAY_ID_CORRUPTED",
    "event_name",
    "pb2",
    "pb2_grpc",
    "replay_bytes",
    "replay_number",
    "topic_name",
]

METADATA_ACCESS_TOKEN = "accesstoken"
METADATA_INSTANCE_URL = "instanceurl"
METADATA_TENANT_ID = "tenantid"
ERROR_CODE_KEY = "error-code"
"""Trailing metadata key carrying Salesforce's error code of a failed RPC."""
AUTH_ERROR = "sfdc.platform.eventbus.grpc.service.auth.error"
REPLAY_ID_CORRUPTED = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"
MAX_EVENT_BYTES = 1_048_576
"""One event's payload: a larger one fails alone (its PublishResult has an error)."""
MAX_REQUEST_BYTES = 3 * 1_048_576
"""What Salesforce recommends per PublishRequest; the client stays under it."""
MAX_MESSAGE_BYTES = 4 * 1_048_576
"""gRPC's message limit at Salesforce: a larger PublishRequest fails with UNAVAILABLE, nothing published."""
MAX_NUM_REQUESTED = 100
"""Subscribe flow control: at most this many events outstanding per stream."""
_TOPIC_PREFIX = "/event/"


def topic_name(event: str) -> str:
    """``PostgreSQL_Data__e`` → ``/event/PostgreSQL_Data__e``."""
    return _TOPIC_PREFIX + event


def event_name(topic: str) -> str | None:
    """The event API name of a platform-event topic, None for any other topic."""
    return topic[len(_TOPIC_PREFIX) :] if topic.startswith(_TOPIC_PREFIX) else None


def replay_bytes(number: int) -> bytes:
    """The emulator's replay ids: 8 bytes big-endian (Salesforce's are opaque bytes too)."""
    return number.to_bytes(8, "big")


def replay_number(raw: bytes) -> int | None:
    return int.from_bytes(raw, "big") if len(raw) == 8 else None
