"""Typed settings: a YAML or TOML file, overridden by ``WALBRIDGE_*`` environment variables.

Secrets come only from the environment. A setting may name its variable with
``env:NAME`` (``dsn: env:WALBRIDGE_SOURCE_DSN``); a secret written literally in the file
(a DSN with a password, a client secret, a private key) is refused with a clear message.
Nested keys are overridden with ``__``: ``WALBRIDGE_KAFKA__BOOTSTRAP_SERVERS=host:9092``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from walbridge.errors import ConfigError
from walbridge.events import EncodingOptions

__all__ = [
    "DEFAULT_METRICS_PORTS",
    "DlqSettings",
    "EventSettings",
    "KafkaSettings",
    "MetricsSettings",
    "PostgresSinkSettings",
    "SalesforceSinkSettings",
    "Settings",
    "SourceSettings",
    "load_settings",
    "resolve_env_refs",
]

_ENV_REF = re.compile(r"^env:([A-Za-z_][A-Za-z0-9_]*)$")
_SECRET_KEYS = {"client_secret", "private_key", "password", "sasl.password", "ssl.key.password"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SourceSettings(_Model):
    mode: Literal["logical", "trigger"] = "logical"
    dsn: str = Field(default="postgresql://postgres@127.0.0.1:5432/postgres", repr=False)
    """May hold a password (from the environment): left out of ``repr``; logs redact it."""
    tables: list[str] = Field(default_factory=list, description="schema.table names; wildcards allowed")
    exclude_tables: list[str] = Field(default_factory=list)
    exclude_columns: list[str] = Field(default_factory=list, description="schema.table.column names")
    slot: str = "walbridge"
    publication: str = ""
    """Default: the slot's name, so that captures with their own slots never share a publication."""
    snapshot: Literal["initial", "never", "when_needed", "initial_only", "incremental"] = "initial"
    signal_table: str | None = None
    """``schema.table`` of Debezium-style signals (``id, type, data``); needed by incremental snapshots."""
    incremental_chunk_size: int = Field(default=1024, ge=1)
    signal_topic: str | None = None
    """Kafka topic of Debezium-style signals (key: ``events.topic_prefix``); relayed into ``signal_table``."""
    replica_identity_full: bool = False
    heartbeat_ms: int = 10_000
    heartbeat_action_query: str | None = None
    status_interval_ms: int = 1_000
    max_in_flight: int = 100_000
    """Events handed to the producer but not yet acknowledged before capture pauses reading."""
    # trigger mode
    poll_interval_ms: int = 200
    poll_batch_size: int = 5_000
    retention_hours: float | None = 0.0
    """Delete published change-log rows older than this (0: as soon as published; None: keep)."""
    connect_wait_s: float = Field(default=60.0, ge=0)
    """``setup`` and ``capture`` retry their first connection to the source this long (a server starting)."""

    @field_validator("slot", "publication")
    @classmethod
    def _identifier(cls, value: str, info: ValidationInfo) -> str:
        if info.field_name == "publication" and value == "":
            return value
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", value):
            raise ValueError(f"{value!r} must be a lower-case identifier of letters, digits and _")
        return value

    @model_validator(mode="after")
    def _publication_per_slot(self) -> SourceSettings:
        if not self.publication:
            self.publication = self.slot
        return self

    def excluded_columns(self, schema: str, table: str) -> list[str]:
        """The columns of ``schema.table`` that ``exclude_columns`` (``schema.table.column``) names."""
        return [
            column
            for qualified, _, column in (name.rpartition(".") for name in self.exclude_columns)
            if qualified == f"{schema}.{table}"
        ]


class EventSettings(_Model):
    topic_prefix: str = "walbridge"
    tombstones_on_delete: bool = True
    schemas_enable: bool = False
    unwrap: bool = False
    unwrap_add_fields: list[str] = Field(default_factory=list)
    delete_tombstone_handling_mode: (
        Literal["tombstone", "drop", "rewrite", "rewrite-with-tombstone", "delete-to-tombstone"] | None
    ) = None
    """Debezium 3.x's ExtractNewRecordState spelling; implies ``unwrap`` when set."""
    emit_truncate: bool = True
    decimal_handling_mode: Literal["string", "precise", "double"] = "string"
    time_precision_mode: Literal["adaptive_time_microseconds", "adaptive", "connect"] = (
        "adaptive_time_microseconds"
    )
    binary_handling_mode: Literal["bytes", "base64", "hex"] = "bytes"
    interval_handling_mode: Literal["numeric", "string"] = "string"
    """walbridge's default is ``string`` (ISO 8601, Debezium's ``string`` mode; Debezium's default
    ``numeric`` counts a month as 30.4375 days, so months cannot be written back exactly)."""

    def encoding_options(self) -> EncodingOptions:
        unwrap = self.unwrap or self.delete_tombstone_handling_mode is not None
        tombstones = self.tombstones_on_delete
        if self.delete_tombstone_handling_mode in ("rewrite", "drop"):
            tombstones = False
        return EncodingOptions(
            topic_prefix=self.topic_prefix,
            tombstones_on_delete=tombstones,
            schemas_enable=self.schemas_enable,
            unwrap=unwrap,
            unwrap_add_fields=tuple(self.unwrap_add_fields),
            emit_truncate=self.emit_truncate,
        )


class KafkaSettings(_Model):
    bootstrap_servers: str = "127.0.0.1:9092"
    partitions: int = 3
    replication_factor: int = 1
    session_timeout_ms: int | None = None
    """librdkafka's default when unset; the embedded broker wants ~6000 (slow group join)."""
    max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, le=512 * 1024 * 1024)
    """Largest record (key + value) walbridge produces; topics, producers and consumers are sized for it."""
    options: dict[str, str | int | float | bool | SecretStr] = Field(default_factory=dict)
    """Any librdkafka property (TLS, SASL, ...), passed through unchanged; secrets via env:NAME (held as
    ``SecretStr``: see :meth:`client_options`)."""

    @field_validator("options")
    @classmethod
    def _hide_secrets(cls, value: dict[str, Any]) -> dict[str, Any]:
        return {
            key: SecretStr(str(v)) if key in _SECRET_KEYS and not isinstance(v, SecretStr) else v
            for key, v in value.items()
        }

    def client_options(self) -> dict[str, str | int | float | bool]:
        """``options`` as librdkafka takes them, secrets revealed."""
        return {k: v.get_secret_value() if isinstance(v, SecretStr) else v for k, v in self.options.items()}


class DlqSettings(_Model):
    topic_suffix: str = ".dlq"
    topic: str | None = None
    """One DLQ topic for everything; default: ``<original topic><topic_suffix>``."""
    max_attempts: int = 3
    backoff_initial_s: float = 2.0
    backoff_max_s: float = 60.0
    transient_to_dlq: bool = False
    """The seed's behaviour: send records whose transient failures exhausted max_attempts to the DLQ."""
    retention_ms: int = Field(default=-1, ge=-1)
    """``retention.ms`` of the DLQ topics walbridge creates (-1: kept until deleted; unreplayed dead
    letters are not dropped silently)."""


class _SinkBase(_Model):
    name: str | None = None
    topics: list[str] = Field(default_factory=list)
    topic_pattern: str | None = None
    group_id: str | None = None
    batch_size: int = 1_000
    linger_ms: int = 100

    @property
    def sink_name(self) -> str:
        """``name``, or the sink's type: in logs, metrics labels and the default group id."""
        return self.name or str(getattr(self, "type", "sink"))

    @property
    def consumer_group(self) -> str:
        """The Kafka consumer group: ``group_id``, or ``walbridge-<sink name>``."""
        return self.group_id or f"walbridge-{self.sink_name}"


class PostgresSinkSettings(_SinkBase):
    type: Literal["postgres"] = "postgres"
    batch_size: int = 5_000
    dsn: str = Field(default="postgresql://postgres@127.0.0.1:5432/postgres", repr=False)
    table_map: dict[str, str] = Field(default_factory=dict)
    """source ``schema.table`` → destination ``schema.table``; default: the same name."""
    auto_create: bool = False
    strict: bool = True
    """An event for a table that does not exist (and is not auto-created) stops the sink; False: skipped."""
    apply_method: Literal["copy", "executemany"] = "copy"
    """How a batch reaches a table: COPY into a stage table + one INSERT/DELETE, or executemany."""
    workers: int = Field(default=1, ge=1)
    """Sink processes started by one command, members of the same group (see sinks/workers.py)."""


class SalesforceSinkSettings(_SinkBase):
    type: Literal["salesforce"] = "salesforce"
    instance_url: str = "http://127.0.0.1:8300"
    """Where to log in when ``login_url`` is unset; data calls go to the ``instance_url`` the token
    response names (My Domain moves, sandbox refreshes)."""
    login_url: str | None = None
    audience: str | None = None
    """JWT bearer ``aud``: https://login.salesforce.com (default), https://test.salesforce.com for a
    sandbox, or an Experience Cloud site URL."""
    auth: Literal["client_credentials", "jwt_bearer"] = "client_credentials"
    client_id: str = ""
    client_secret: SecretStr | None = None
    username: str | None = None
    private_key: SecretStr | None = None
    private_key_file: str | None = None
    api_version: str = "62.0"
    event: str = "PostgreSQL_Data__e"
    tables: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per-table overrides (event, fields, renames, static values, ops)."""
    max_in_flight: int = 4
    max_calls_per_hour: int | None = None
    truncate_oversized: bool = False
    token_auth: Literal["body", "basic"] = "body"
    """Client credentials: client id/secret in the form body, or as HTTP Basic."""
    api_reserve: float = Field(default=0.10, ge=0.0, lt=1.0)
    """Share of the org's daily API and hourly publishing allocations left free for other
    integrations: publishing pauses (with a warning and a metric) before eating into it; 0 disables."""
    gzip_min_bytes: int | None = Field(default=32_768, ge=0)
    """Request bodies of at least this size are sent gzip-compressed (None: never)."""
    event_key: Literal["offset", "source"] = "source"
    transport: Literal["rest", "pubsub"] = "rest"
    """``rest``: sObject Collections (200 events per API call); ``pubsub``: the Pub/Sub API (gRPC,
    Avro, a long-lived PublishStream; needs the ``pubsub`` extra). See docs/salesforce.md."""
    pubsub_url: str = "https://api.pubsub.salesforce.com:7443"
    """The Pub/Sub API endpoint (plain http only to a loopback address, e.g. the emulator)."""
    pubsub_in_flight: int = Field(default=8, ge=1)
    """Publish requests in flight at once on the Pub/Sub transport."""
    pubsub_events_per_request: int = Field(default=200, ge=1, le=10_000)
    """Events per PublishRequest (Salesforce recommends at most 200; every request also stays under 3 MB).
    With ``transport: pubsub`` an unset ``batch_size`` is ``pubsub_in_flight`` times this: one batch fills the
    stream's pipeline (see docs/salesforce.md)."""
    pubsub_stream: bool = True
    """PublishStream (requests pipelined on one stream); false: one unary Publish call per request."""

    @model_validator(mode="after")
    def _pubsub_batch(self) -> SalesforceSinkSettings:
        if self.transport == "pubsub" and "batch_size" not in self.model_fields_set:
            self.batch_size = self.pubsub_in_flight * self.pubsub_events_per_request
        return self

    @field_validator("instance_url", "login_url", "pubsub_url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        from walbridge.urls import insecure_url

        if value is not None and insecure_url(value):
            raise ValueError(f"{value!r} must be an https:// URL (plain http only to a loopback address)")
        return value
    """Event_Key__c: the source position (LSN / change id) + primary key, stable across topic
    re-creation and re-capture; or ``offset``: ``topic-partition-offset``."""


SinkSettings = Annotated[PostgresSinkSettings | SalesforceSinkSettings, Field(discriminator="type")]


DEFAULT_METRICS_PORTS: dict[str, int] = {"capture": 9187, "sink-postgres": 9188, "sink-salesforce": 9189}
"""Each long-running role's own default, so a capture and its sinks on one host never collide."""


class MetricsSettings(_Model):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int | None = Field(default=None, ge=0, le=65535)
    """Default: the role's own port (:data:`DEFAULT_METRICS_PORTS`)."""
    refresh_s: float = Field(default=10.0, gt=0)
    """How often the slot's WAL figures (capture) and the lag from the broker (sinks) are read."""
    stall_s: float = Field(default=120.0, gt=0)
    """``/healthz`` fails once a process has had work and made no progress for this long."""

    def port_for(self, role: str) -> int:
        """The port this role serves ``/metrics``, ``/healthz`` and ``/status`` on."""
        return self.port if self.port is not None else DEFAULT_METRICS_PORTS[role]


class Settings(BaseSettings):
    """Everything walbridge reads. Build with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="WALBRIDGE_",
        env_nested_delimiter="__",
        extra="forbid",
        nested_model_default_partial_update=True,
    )

    source: SourceSettings = Field(default_factory=SourceSettings)
    events: EventSettings = Field(default_factory=EventSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    sinks: list[SinkSettings] = Field(default_factory=list)
    dlq: DlqSettings = Field(default_factory=DlqSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    state_dir: str = ".walbridge"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment wins over the file (which arrives as init kwargs).
        return env_settings, init_settings

    def sink(self, kind: str, name: str | None = None) -> PostgresSinkSettings | SalesforceSinkSettings:
        """The first configured sink of ``kind`` (and ``name`` when given)."""
        for sink in self.sinks:
            if sink.type == kind and (name is None or sink.name == name):
                return sink
        raise ConfigError(
            f"no sink of type {kind!r}{f' named {name!r}' if name else ''} in the configuration"
        )


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            f"configuration file {path} is not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}"
        ) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"configuration file {path} must hold a mapping at the top level")
    return data


def _has_literal_password(dsn: str) -> bool:
    if re.match(r"^postgres(ql)?://[^/@:]*:[^/@]+@", dsn):
        return True
    if re.search(r"[?&]password=", dsn):
        return True
    return re.search(r"(^|\s)password\s*=", dsn) is not None


def resolve_env_refs(data: Any, where: str = "", lenient: bool = False) -> Any:
    """Replace ``env:NAME`` values by the variable's value; refuse secrets written literally.

    A variable that is not set is a :class:`ConfigError`, unless ``lenient`` (a section the command
    does not use): then the reference stays as written.
    """
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            path = f"{where}.{key}" if where else str(key)
            if isinstance(value, str) and not _ENV_REF.match(value):
                if key in _SECRET_KEYS and value:
                    raise ConfigError(
                        f"{path}: secrets must come from the environment; write env:VARIABLE_NAME"
                    )
                if key == "dsn" and _has_literal_password(value):
                    raise ConfigError(
                        f"{path}: the DSN holds a password; keep it out of the file "
                        "(dsn: env:VARIABLE_NAME, or PGPASSWORD / ~/.pgpass)"
                    )
            out[key] = resolve_env_refs(value, path, lenient)
        return out
    if isinstance(data, list):
        return [resolve_env_refs(item, f"{where}[{i}]", lenient) for i, item in enumerate(data)]
    if isinstance(data, str):
        match = _ENV_REF.match(data)
        if match:
            name = match.group(1)
            if name in os.environ:
                return os.environ[name]
            if not lenient:
                raise ConfigError(f"{where}: environment variable {name} is not set")
    return data


def _section(key: str, value: Any) -> str:
    """The name a command uses for one top-level entry (a sink: ``sinks.<type>``)."""
    if key == "sinks" and isinstance(value, dict):
        return f"sinks.{value.get('type', '')}"
    return key


def _resolve_file(data: dict[str, Any], uses: Collection[str] | None) -> dict[str, Any]:
    """Resolve ``env:`` references; strictly only in the sections ``uses`` names (None: all)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == "sinks" and isinstance(value, list):
            out[key] = [
                resolve_env_refs(item, f"sinks[{i}]", uses is not None and _section(key, item) not in uses)
                for i, item in enumerate(value)
            ]
        else:
            out[key] = resolve_env_refs({key: value}, "", uses is not None and key not in uses)[key]
    return out


def _describe(exc: ValidationError, origin: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"])
        lines.append(f"{origin}: {loc}: {err['msg']}")
    return "\n".join(lines)


def load_settings(
    path: str | Path | None = None, uses: Collection[str] | None = None, **overrides: Any
) -> Settings:
    """Read settings from ``path`` (YAML/TOML; optional) plus environment, then ``overrides``.

    ``uses`` names the sections the command reads (``source``, ``kafka``, ``sinks.postgres``, ...):
    an ``env:`` variable of another section need not be set. None: every section is checked.
    """
    data: dict[str, Any] = {}
    origin = "settings"
    if path is not None:
        data = _resolve_file(_read_file(Path(path)), uses)
        origin = str(path)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin)) from None
