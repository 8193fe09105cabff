"""The Salesforce Platform Events sink: a :class:`~walbridge.sinks.base.Sink` for the shared runner.

Contract: ``SalesforceSink(settings).open()`` logs in (client credentials or JWT bearer) and
describes every event object the mapping uses; bad credentials, a wrong instance URL, an unknown
event object or a mapped field the event does not have raise one :class:`ConfigError` line that
names Salesforce's error (never a secret). :meth:`write_batch` maps the records
(:mod:`~walbridge.sinks.salesforce.mapping`), publishes them (:mod:`~walbridge.sinks.salesforce.publisher`)
and returns the records refused for good (validation or Salesforce per-record errors) as
``RecordFailure`` values; when some records could not be published for a transient reason it
raises that ``TransientError`` and the runner retries the batch.

At-least-once, without avoidable duplicates: the sink remembers which records of the uncommitted
batch Salesforce already accepted (``topic, partition, offset``) and does not send them again when
the runner retries the batch, after a transient error or a permanent refusal; :meth:`rollback`
keeps that memory (a published event cannot be taken back) and :meth:`commit` forgets what the
committed offsets cover. Only a crash between publishing and the Kafka commit re-sends events, at
most one runner batch (``batch_size`` records; two with the Pub/Sub transport, which publishes the next
batch while the one before waits for its answers: :mod:`~walbridge.sinks.salesforce.ahead`);
``Event_Key__c`` lets Salesforce drop them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from walbridge.config import SalesforceSinkSettings
from walbridge.errors import ConfigError, TransientError, WalbridgeError
from walbridge.sinks.base import RecordFailure, SinkRecord, TopicPartitionKey
from walbridge.sinks.salesforce.ahead import Handover, RecordKey, Sending, record_key
from walbridge.sinks.salesforce.allocation import Allocation
from walbridge.sinks.salesforce.auth import ClientCredentials, Grant, JwtBearer, SalesforceAuth
from walbridge.sinks.salesforce.mapping import EventRecord, EventSchema, Mapper, TableRule, parse_rules
from walbridge.sinks.salesforce.publisher import CallBudget, Publisher, SchemaRefused
from walbridge.sinks.salesforce.transport import http_errors, make_client, salesforce_error
from walbridge.truncates import barrier_of

__all__ = ["SalesforceSink", "build_grant"]

log = logging.getLogger(__name__)
_LOGIN_AUDIENCE = "https://login.salesforce.com"


def _private_key(settings: SalesforceSinkSettings) -> str:
    if settings.private_key:
        return settings.private_key.get_secret_value()
    if settings.private_key_file:
        try:
            return Path(settings.private_key_file).read_text()
        except OSError as exc:
            raise ConfigError(
                f"cannot read private_key_file {settings.private_key_file}: {exc.strerror}"
            ) from None
    raise ConfigError("auth jwt_bearer needs private_key (env) or private_key_file")


def build_grant(settings: SalesforceSinkSettings) -> Grant:
    """The OAuth grant the settings describe; ConfigError when something is missing."""
    if not settings.client_id:
        raise ConfigError("salesforce sink: client_id is not set")
    if settings.auth == "client_credentials":
        if not settings.client_secret:
            raise ConfigError("salesforce sink: client_secret is not set (give it through the environment)")
        return ClientCredentials(
            settings.login_url or settings.instance_url,
            settings.client_id,
            settings.client_secret.get_secret_value(),
            basic=settings.token_auth == "basic",
        )
    if not settings.username:
        raise ConfigError("salesforce sink: auth jwt_bearer needs username")
    audience = settings.audience or _LOGIN_AUDIENCE
    return JwtBearer(
        settings.login_url or settings.instance_url,
        settings.client_id,
        settings.username,
        _private_key(settings),
        audience,
    )


class SalesforceSink:
    """Publishes change events as Platform Events (see the module docstring)."""

    owns_offsets = False

    def __init__(
        self,
        settings: SalesforceSinkSettings,
        *,
        transport: httpx.BaseTransport | None = None,
        metrics: Any = None,
    ) -> None:
        self.settings = settings
        self.name = settings.sink_name
        self.metrics = metrics
        self._transport = transport
        self._client: httpx.Client | None = None
        self.auth: SalesforceAuth | None = None
        self.mapper: Mapper | None = None
        self._rules: list[TableRule] = []
        self.publisher: Publisher | None = None
        self._accepted: set[RecordKey] = set()
        self._prepared: dict[RecordKey, EventRecord | WalbridgeError | None] = {}
        """The next batch's mappings (:meth:`prepare`), taken by the next :meth:`write_batch`."""
        self._handover = Handover()
        self._ahead: Sending | None = None
        """The next batch's publish, started while the batch before waited for its answers (only
        :meth:`write_batch`, on the runner's worker thread, reads and sets it)."""
        self.skipped_resends = 0
        """Records not sent again on a retry because Salesforce had accepted them already."""
        self.batches_ahead = 0
        """Batches whose publishing started while the batch before waited for its answers."""

    @property
    def data_url(self) -> str:
        return f"{self.settings.instance_url.rstrip('/')}/services/data/v{self.settings.api_version}"

    # ------------------------------------------------------------------ Sink protocol

    def open(self) -> None:
        settings = self.settings
        default, rules = parse_rules(settings.event, settings.tables)
        self.auth = SalesforceAuth(build_grant(settings))
        self._client = make_client(
            self.auth, transport=self._transport, connections=settings.max_in_flight + 1
        )
        self._rules = [default, *rules.values()]
        schemas, missing = self._read_definitions()
        if missing:
            raise ConfigError(f"salesforce sink: {'; '.join(missing)} (see the mapping settings)")
        self.mapper = Mapper(default, rules, schemas, settings.event_key)
        budget = CallBudget(settings.max_calls_per_hour) if settings.max_calls_per_hour else None
        allocation = (
            Allocation(self._limits, settings.api_reserve, self.metrics) if settings.api_reserve > 0 else None
        )
        if settings.transport == "pubsub":
            publisher = self._pubsub_publisher(allocation)
            self.publisher = publisher
            try:
                for event in sorted(schemas):
                    publisher.topic(event)  # type: ignore[attr-defined]  # can_publish and the schema, up front
            except TransientError as exc:
                raise ConfigError(
                    f"salesforce sink: cannot use the Pub/Sub API at {settings.pubsub_url}: {exc}"
                ) from None
        else:
            self.publisher = Publisher(
                self._client,
                settings.instance_url,
                settings.api_version,
                max_in_flight=settings.max_in_flight,
                budget=budget,
                metrics=self.metrics,
                gzip_min_bytes=settings.gzip_min_bytes,
                allocation=allocation,
            )
        log.info(
            "%s: publishing %s to %s (%s, API v%s)",
            self.name,
            sorted(schemas),
            settings.instance_url,
            f"Pub/Sub API at {settings.pubsub_url}" if settings.transport == "pubsub" else "REST",
            settings.api_version,
        )

    def _pubsub_publisher(self, allocation: Allocation | None) -> Publisher:
        try:
            from walbridge.sinks.salesforce.pubsub import PubSubPublisher
        except ImportError as exc:
            raise ConfigError(
                "salesforce sink: transport pubsub needs the pubsub extra "
                f"(pip install 'walbridge[pubsub]'): {exc}"
            ) from None
        assert self._client is not None and self.auth is not None
        settings = self.settings
        return PubSubPublisher(
            self._client,
            self.auth,
            settings.pubsub_url,
            instance_url=settings.instance_url,
            api_version=settings.api_version,
            max_in_flight=settings.pubsub_in_flight,
            events_per_request=settings.pubsub_events_per_request,
            stream=settings.pubsub_stream,
            metrics=self.metrics,
            allocation=allocation,
        )

    def stored_offsets(self, partitions: list[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        return {}

    def write_batch(self, records: list[SinkRecord]) -> list[RecordFailure]:
        assert self.mapper is not None and self.publisher is not None, "open() first"
        if not records:
            return []
        self._handover.clear()  # a batch handed over to a write that ended first: this one maps it
        keys = frozenset(map(_key, records))
        sending = self._take_ahead(records, keys)
        if sending is None:
            prepared, self._prepared = self._prepared, {}
            sending = self._send(records, prepared)
        self._await(sending)
        try:
            outcome = sending.publishing.result()
        except SchemaRefused as refused:
            raise self._schema_drift(refused) from None
        sources = sending.sources
        self._accepted.update(_key(sources[i]) for i in outcome.accepted)
        failures = [f for f in sending.failures if _key(f.record) in keys]
        failures += [
            RecordFailure(sources[i], _with_context(error, sources[i]))
            for i, error in outcome.rejected
            if _key(sources[i]) in keys
        ]
        if outcome.transient is not None:
            raise outcome.transient
        return failures

    def prepare(self, records: list[SinkRecord]) -> None:
        """Work on the next batch while the current one waits for Salesforce's answers (the runner's
        prefetch). With a publisher that ``sends_ahead`` (Pub/Sub) and a :meth:`write_batch` waiting,
        the batch is handed over to it: it maps the batch and starts publishing it after the current
        one (:mod:`~walbridge.sinks.salesforce.ahead`). Otherwise (REST, or no write waiting) the batch
        is mapped here (and the Pub/Sub transport Avro-encodes it): :meth:`write_batch` takes each
        mapping from here instead of mapping again. A mapping does not depend on what happens to the
        batch before."""
        assert self.mapper is not None and self.publisher is not None, "open() first"
        if self.publisher.sends_ahead and self._handover.offer(records):
            return
        prepared: dict[RecordKey, EventRecord | WalbridgeError | None] = {}
        for record in records:
            try:
                prepared[_key(record)] = self.mapper.map(record)
            except WalbridgeError as exc:
                prepared[_key(record)] = exc
        self._prepared = prepared
        self.publisher.prepare([m for m in prepared.values() if isinstance(m, EventRecord)])

    def _send(
        self,
        records: list[SinkRecord],
        prepared: Mapping[RecordKey, EventRecord | WalbridgeError | None],
        after: Sending | None = None,
    ) -> Sending:
        """Start publishing ``records`` (after the batch ``after``, still under way)."""
        assert self.mapper is not None and self.publisher is not None
        mapper = self.mapper
        failures: list[RecordFailure] = []
        sources: list[SinkRecord] = []

        def outgoing() -> Iterator[EventRecord]:
            """Mapped as the publisher takes them: its first calls go out while the rest is mapped."""
            for record in records:
                if record.partition and barrier_of(record.headers) is not None:
                    continue  # a truncate is written to every partition: publish it once, from partition 0
                key = _key(record)
                if key in self._accepted:
                    self.skipped_resends += 1
                    continue
                try:
                    mapped = prepared[key] if key in prepared else mapper.map(record)
                    if isinstance(mapped, WalbridgeError):
                        raise mapped
                except WalbridgeError as exc:
                    failures.append(RecordFailure(record, _with_context(exc, record)))
                    continue
                if mapped is not None:
                    sources.append(record)
                    yield mapped

        publishing = self.publisher.start(outgoing(), after=None if after is None else after.publishing)
        return Sending(*Sending.positions(records), publishing, sources, failures)

    def _take_ahead(self, records: list[SinkRecord], keys: frozenset[RecordKey]) -> Sending | None:
        """The publish started ahead for these records, if any. One started for later records (this is
        a retry of the batch before it) stays ahead; one for records read again (a partition revoked
        and assigned again) is waited for, and what it published counts as accepted."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return None
        if keys <= ahead.keys:
            return ahead
        if ahead.follows(records):
            self._ahead = ahead
            return None
        try:
            outcome = ahead.publishing.result()
        except WalbridgeError:
            return None
        self._accepted.update(_key(ahead.sources[i]) for i in outcome.accepted)
        return None

    def _await(self, sending: Sending) -> None:
        """Wait for the publish of the batch being written; start the next batch's when it is handed
        over meanwhile (one ahead at most)."""
        for handed in self._handover.waiting(sending.publishing, lambda: self._ahead is None):
            try:
                self._ahead = self._send(handed, {}, after=sending)
                self.batches_ahead += 1
            except WalbridgeError as exc:
                log.debug("%s: publishing the next batch ahead: %s", self.name, exc)

    def commit(self, next_offsets: dict[TopicPartitionKey, int]) -> None:
        self._accepted = {k for k in self._accepted if k[2] >= next_offsets.get((k[0], k[1]), -1)}

    def rollback(self) -> None:
        """Nothing to undo: accepted events stay published (and are remembered, see the docstring)."""

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.close()
        if self._client is not None:
            self._client.close()
            self._client = None

    # ------------------------------------------------------------------ helpers

    def _limits(self) -> Mapping[str, Any]:
        """The org's ``/limits``; empty when it cannot be read (the allocation guard keeps what it knew)."""
        assert self._client is not None
        try:
            with http_errors("salesforce sink: reading /limits"):
                response = self._client.get(f"{self.data_url}/limits")
        except TransientError as exc:
            log.warning("%s: %s", self.name, exc)
            return {}
        if response.status_code != 200:
            code, message = salesforce_error(response)
            log.warning("%s: /limits answered HTTP %d %s: %s", self.name, response.status_code, code, message)
            return {}
        try:
            body = response.json()
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    def _read_definitions(self) -> tuple[dict[str, EventSchema], list[str]]:
        """Describe every event the mapping uses; the schemas and what the mapping lacks in them."""
        events = sorted({rule.event for rule in self._rules})
        schemas = {
            event: EventSchema.from_describe(
                self._describe(event),
                truncate_oversized=self.settings.truncate_oversized,
                never_truncate=frozenset(
                    name for rule in self._rules if rule.event == event for name in rule.key_fields()
                ),
            )
            for event in events
        }
        missing = []
        for rule in self._rules:
            unknown = schemas[rule.event].unknown(rule.target_fields())
            if unknown:
                missing.append(f"{rule.event} has no field(s) {unknown}")
        return schemas, missing

    def _schema_drift(self, refused: SchemaRefused) -> ConfigError:
        """The one line that stops the sink when Salesforce refuses whole calls: the event
        definitions are read again to say which mapped fields are gone. Nothing goes to the DLQ:
        every record would fail alike."""
        schemas, missing = self._read_definitions()
        cause = (
            "; ".join(missing) + " any more: update the event definition or the mapping"
            if missing
            else "every mapped field still exists: check the integration user's access to "
            + ", ".join(schemas)
        )
        return ConfigError(f"salesforce sink: Salesforce refused a whole call ({refused}); {cause}")

    def _describe(self, event: str) -> Mapping[str, Any]:
        assert self._client is not None
        url = f"{self.data_url}/sobjects/{event}/describe"
        try:
            with http_errors(f"salesforce sink: describing {event}"):
                response = self._client.get(url)
        except TransientError as exc:
            raise ConfigError(f"salesforce sink: cannot reach {self.settings.instance_url}: {exc}") from None
        if response.status_code == 200:
            try:
                body = response.json()
            except ValueError:
                body = None
            if isinstance(body, dict) and isinstance(body.get("fields"), list):
                return body
            raise ConfigError(f"salesforce sink: {url} did not answer a describe result; check instance_url")
        code, message = salesforce_error(response)
        if response.status_code == 404:
            raise ConfigError(
                f"salesforce sink: event object {event!r} not found at {self.settings.instance_url} "
                f"(API v{self.settings.api_version}): {code}: {message}"
            )
        raise ConfigError(
            f"salesforce sink: describing {event} failed: HTTP {response.status_code} {code}: {message}"
        )


_key = record_key


def _with_context(error: WalbridgeError, record: SinkRecord) -> WalbridgeError:
    error.context.update(topic=record.topic, partition=record.partition, offset=record.offset)
    return error
