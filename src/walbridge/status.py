"""One look at the whole pipeline, for ``walbridge status``: source, Kafka groups, DLQs, processes.

:func:`pipeline_status` asks each part itself, and a part that does not answer is reported as such
(never an exception): the source's slot (position, lag and WAL it retains) or trigger change log,
every configured sink's consumer-group lag per partition, the DLQ topics' sizes, and the ``/status``
of the capture and sink processes on their metrics ports (their last warning or error included).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from confluent_kafka import KafkaException, TopicPartition

from walbridge.config import Settings
from walbridge.errors import WalbridgeError

__all__ = ["PipelineStatus", "pipeline_status"]


@dataclass(slots=True)
class PipelineStatus:
    source: dict[str, Any] = field(default_factory=dict)
    sinks: list[dict[str, Any]] = field(default_factory=list)
    dlq: dict[str, int] = field(default_factory=dict)
    processes: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _source(settings: Settings, wal_warn_bytes: int, status: PipelineStatus) -> None:
    from walbridge.capture.connection import connect_source
    from walbridge.capture.slot import slot_info

    src = settings.source
    doc: dict[str, Any] = {"mode": src.mode}
    status.source = doc
    try:
        with connect_source(src.dsn) as conn:
            doc["database"] = conn.info.dbname
            if src.mode == "trigger":
                doc.update(_trigger_backlog(conn))
                return
            info = slot_info(conn, src.slot)
            if info is None:
                doc["slot"] = f"{src.slot} (missing: run walbridge setup)"
                status.warnings.append(f"replication slot {src.slot} does not exist")
                return
            row = conn.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)::bigint",
                (info.confirmed_flush_lsn,),
            ).fetchone()
            doc.update(
                slot=info.name,
                active=info.active,
                confirmed_lsn=info.confirmed_flush_lsn,
                lag_bytes=row[0] if row else None,
                retained_wal_bytes=info.retained_bytes,
                wal_status=info.wal_status,
            )
            if info.retained_bytes is not None and info.retained_bytes > wal_warn_bytes:
                status.warnings.append(
                    f"slot {info.name} retains {info.retained_bytes / 2**20:,.0f} MiB of WAL on the source "
                    f"(over {wal_warn_bytes / 2**20:,.0f} MiB): is capture running and keeping up?"
                )
    except WalbridgeError as exc:
        doc["error"] = exc.message


def _trigger_backlog(conn: Any) -> dict[str, Any]:
    from walbridge.capture.trigger_setup import CHANGE_LOG, SCHEMA

    row = conn.execute(f"SELECT count(*), max(id) FROM {SCHEMA}.{CHANGE_LOG}").fetchone()
    return {"change_log_rows": row[0], "newest_change_id": row[1]}


def _sinks(settings: Settings, status: PipelineStatus) -> None:
    from walbridge.admin import describe_group

    for sink in settings.sinks:
        doc: dict[str, Any] = {"sink": sink.sink_name, "type": sink.type, "group": sink.consumer_group}
        status.sinks.append(doc)
        if not sink.topics:
            doc["partitions"] = []
            doc["note"] = "topic_pattern sinks: see walbridge groups describe --topic"
            continue
        try:
            lags = describe_group(settings.kafka, sink.consumer_group, sink.topics)
        except WalbridgeError as exc:
            doc["error"] = exc.message
            continue
        doc["partitions"] = [
            {
                "topic": p.topic,
                "partition": p.partition,
                "committed": p.committed,
                "end": p.high_watermark,
                "lag": p.lag,
            }
            for p in lags
        ]
        doc["lag"] = sum(p.lag or 0 for p in lags)


def _dlq(settings: Settings, status: PipelineStatus) -> None:
    from walbridge.kafka import make_consumer
    from walbridge.sinks.dlq import dlq_topic_for

    wanted = sorted({dlq_topic_for(settings.dlq, topic) for sink in settings.sinks for topic in sink.topics})
    if not wanted:
        return
    try:
        consumer = make_consumer(settings.kafka, "walbridge-status")
        try:
            metadata = consumer.list_topics(timeout=10).topics
            for topic in wanted:
                total = 0
                for partition in metadata[topic].partitions if topic in metadata else ():
                    low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
                    total += max(0, high - low)
                status.dlq[topic] = total
        finally:
            consumer.close()
    except (WalbridgeError, KafkaException) as exc:
        status.warnings.append(f"DLQ sizes unavailable: {exc}")
    for topic, count in status.dlq.items():
        if count:
            status.warnings.append(f"{count:,} dead letter(s) in {topic}: walbridge dlq list --topic {topic}")


def _processes(settings: Settings, status: PipelineStatus) -> None:
    roles = [("capture", "capture")] + [(f"sink-{s.type}", s.sink_name) for s in settings.sinks]
    host = settings.metrics.host if settings.metrics.host not in ("0.0.0.0", "::") else "127.0.0.1"
    seen: set[int] = set()
    for role, name in roles:
        port = settings.metrics.port_for(role)
        if port in seen:
            continue
        seen.add(port)
        doc: dict[str, Any] = {"process": name, "url": f"http://{host}:{port}/status"}
        try:
            answer = httpx.get(doc["url"], timeout=3, headers={"Accept": "application/json"})
            doc["running"] = answer.status_code == 200
            body = answer.json() if answer.status_code == 200 else {}
            doc["last_error"] = body.get("last_error")
            doc["status"] = {k: v for k, v in body.items() if k != "last_error"}
        except (httpx.HTTPError, ValueError):
            doc["running"] = False
        status.processes.append(doc)


def pipeline_status(settings: Settings, wal_warn_bytes: int = 1 << 30) -> PipelineStatus:
    """Everything ``walbridge status`` shows (see the module docstring)."""
    status = PipelineStatus()
    _source(settings, wal_warn_bytes, status)
    _sinks(settings, status)
    _dlq(settings, status)
    _processes(settings, status)
    return status
