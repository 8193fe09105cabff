"""Prometheus metrics shared by every walbridge process (one registry, stable names)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["REGISTRY", "capture", "sink"]

REGISTRY = CollectorRegistry(auto_describe=True)


class _CaptureMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "walbridge_capture_events", "Change events captured", ["table", "op"], registry=registry
        )
        self.behind_source_ms = Gauge(
            "walbridge_capture_ms_behind_source",
            "Commit time to capture, of the last event",
            registry=registry,
        )
        self.received_lsn = Gauge(
            "walbridge_capture_received_lsn", "Last WAL position received (bytes)", registry=registry
        )
        self.confirmed_lsn = Gauge(
            "walbridge_capture_confirmed_lsn",
            "Last position confirmed to the source after Kafka acknowledged it",
            registry=registry,
        )
        self.slot_retained_wal_bytes = Gauge(
            "walbridge_capture_slot_retained_wal_bytes",
            "WAL retained by the replication slot",
            registry=registry,
        )
        self.producer_queue = Gauge(
            "walbridge_capture_producer_queue_depth",
            "Records waiting for a Kafka acknowledgement",
            registry=registry,
        )
        self.snapshot_rows = Counter(
            "walbridge_capture_snapshot_rows",
            "Rows read by the initial snapshot",
            ["table"],
            registry=registry,
        )
        self.incremental_chunks = Counter(
            "walbridge_capture_incremental_chunks", "Incremental snapshot chunks published", registry=registry
        )
        self.incremental_tables_remaining = Gauge(
            "walbridge_capture_incremental_tables_remaining",
            "Tables an incremental snapshot has still to read (the current one included)",
            registry=registry,
        )
        self.heartbeats = Counter("walbridge_capture_heartbeats", "Heartbeats sent", registry=registry)
        self.errors = Counter("walbridge_capture_errors", "Errors by class", ["error"], registry=registry)
        self.value_fallbacks = Counter(
            "walbridge_capture_value_fallbacks",
            "Values sent as their PostgreSQL text because their converter could not read them",
            ["table", "column"],
            registry=registry,
        )


class _SinkMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter(
            "walbridge_sink_records", "Records handled by a sink", ["sink", "outcome"], registry=registry
        )
        self.batches = Counter("walbridge_sink_batches", "Batches committed", ["sink"], registry=registry)
        self.batch_seconds = Histogram(
            "walbridge_sink_batch_seconds", "Time to apply and commit one batch", ["sink"], registry=registry
        )
        self.retries = Counter(
            "walbridge_sink_retries", "Retries by error class", ["sink", "error"], registry=registry
        )
        self.dlq = Counter(
            "walbridge_sink_dlq_records", "Records sent to the DLQ", ["sink"], registry=registry
        )
        self.lag = Gauge(
            "walbridge_sink_lag",
            "Records behind the end of the partition",
            ["sink", "topic", "partition"],
            registry=registry,
        )
        self.api_usage = Gauge(
            "walbridge_salesforce_api_usage", "Sforce-Limit-Info api-usage", ["kind"], registry=registry
        )
        self.paused = Gauge(
            "walbridge_salesforce_paused",
            "1 while publishing waits for an org allocation to free",
            ["allocation"],
            registry=registry,
        )


capture = _CaptureMetrics(REGISTRY)
sink = _SinkMetrics(REGISTRY)
