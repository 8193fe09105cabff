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
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from walbridge.errors import ConfigError
from walbridge.events import EncodingOptions

__all__ = [
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
    dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    tables: list[str] = Field(default_factory=list, description="schema.table names; wildcards allowed")
    exclude_tables: list[str] = Field(default_factory=list)
    exclude_columns: list[str] = Field(default_factory=list, description="schema.table.column names")
    slot: str = "walbridge"
    publication: str = "walbridge"
    snapshot: Literal["initial", "never", "when_needed", "initial_only"] = "initial"
    snapshot_fetch_rows: int = 10_000
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

    @field_validator("slot", "publication")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", value):
            raise ValueError(f"{value!r} must be a lower-case identifier of letters, digits and _")
        return value


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
    interval_handling_mode: Literal["numeric", "string"] = "numeric"

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
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)
    """Any librdkafka property (TLS, SASL, ...), passed through unchanged; secrets via env:NAME."""


class DlqSettings(_Model):
    topic_suffix: str = ".dlq"
    topic: str | None = None
    """One DLQ topic for everything; default: ``<original topic><topic_suffix>``."""
    max_attempts: int = 3
    backoff_initial_s: float = 2.0
    backoff_max_s: float = 60.0
    transient_to_dlq: bool = False
    """The seed's behaviour: send records whose transient failures exhausted max_attempts to the DLQ."""


class _SinkBase(_Model):
    name: str | None = None
    topics: list[str] = Field(default_factory=list)
    topic_pattern: str | None = None
    group_id: str | None = None
    batch_size: int = 1_000
    linger_ms: int = 100


class PostgresSinkSettings(_SinkBase):
    type: Literal["postgres"] = "postgres"
    batch_size: int = 5_000
    dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres"
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
    login_url: str | None = None
    auth: Literal["client_credentials", "jwt_bearer"] = "client_credentials"
    client_id: str = ""
    client_secret: str | None = None
    username: str | None = None
    private_key: str | None = None
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
    event_key: Literal["offset", "source"] = "offset"
    """Event_Key__c: ``topic-partition-offset``, or the source position (LSN / change id) + primary key."""


SinkSettings = Annotated[PostgresSinkSettings | SalesforceSinkSettings, Field(discriminator="type")]


class MetricsSettings(_Model):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9187


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
    return re.search(r"(^|\s)password\s*=", dsn) is not None


def resolve_env_refs(data: Any, where: str = "") -> Any:
    """Replace ``env:NAME`` values by the variable's value; refuse secrets written literally."""
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
            out[key] = resolve_env_refs(value, path)
        return out
    if isinstance(data, list):
        return [resolve_env_refs(item, f"{where}[{i}]") for i, item in enumerate(data)]
    if isinstance(data, str):
        match = _ENV_REF.match(data)
        if match:
            name = match.group(1)
            if name not in os.environ:
                raise ConfigError(f"{where}: environment variable {name} is not set")
            return os.environ[name]
    return data


def _describe(exc: ValidationError, origin: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"])
        lines.append(f"{origin}: {loc}: {err['msg']}")
    return "\n".join(lines)


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Read settings from ``path`` (YAML/TOML; optional) plus environment, then ``overrides``."""
    data: dict[str, Any] = {}
    origin = "settings"
    if path is not None:
        data = resolve_env_refs(_read_file(Path(path)))
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
