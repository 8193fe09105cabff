"""Prometheus metrics of walbridge's processes: stable names, one registry per role.

Each process serves only its own role's registry (:func:`registries_for`): a sink does not export
capture's gauges (as zeros), so a capture gauge disappears when capture is down.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["CAPTURE", "ROLES", "SALESFORCE", "SINK", "capture", "registries_for", "salesforce", "sink"]

CAPTURE = CollectorRegistry(auto_describe=True)
SINK = CollectorRegistry(auto_describe=True)
SALESFORCE = CollectorRegistry(auto_describe=True)
ROLES: dict[str, tuple[CollectorRegistry, ...]] = {
    "capture": (CAPTURE,),
    "sink-postgres": (SINK,),
    "sink-salesforce": (SINK, SALESFORCE),
}
"""The registries each role's ``/metrics`` serves."""


def registries_for(role: str) -> tuple[CollectorRegistry, ...]:
    """What ``role`` exports (nothing for a role without metrics of its own)."""
    return ROLES.get(role, ())


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
        self.last_progress_age = Gauge(
            "walbridge_capture_last_progress_age_seconds",
            "Seconds since capture last made progress (Kafka acknowledged events) or was idle with "
            "nothing to do; /healthz fails above metrics.stall_s",
            registry=registry,
        )
        self.slot_wal_status = Gauge(
            "walbridge_capture_slot_wal_status",
            "1 for the slot's wal_status (reserved, extended, unreserved, lost), 0 for the others",
            ["status"],
            registry=registry,
        )
        self.slot_safe_wal_size = Gauge(
            "walbridge_capture_slot_safe_wal_size_bytes",
            "WAL that can still be written before the slot is invalidated (NaN without "
            "max_slot_wal_keep_size)",
            registry=registry,
        )
        self.wal_dir_bytes = Gauge(
            "walbridge_capture_source_wal_dir_bytes",
            "Size of the source's WAL directory (pg_ls_waldir; NaN without pg_monitor)",
            registry=registry,
        )
        self.max_slot_wal_keep_size = Gauge(
            "walbridge_capture_max_slot_wal_keep_size_bytes",
            "The source's max_slot_wal_keep_size (-1: unlimited)",
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
        self.last_progress_age = Gauge(
            "walbridge_sink_last_progress_age_seconds",
            "Seconds since the sink last committed a batch or was idle with nothing to do; "
            "/healthz fails above metrics.stall_s",
            ["sink"],
            registry=registry,
        )


class _SalesforceMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.api_usage = Gauge(
            "walbridge_salesforce_api_usage", "Sforce-Limit-Info api-usage", ["kind"], registry=registry
        )
        self.paused = Gauge(
            "walbridge_salesforce_paused",
            "1 while publishing waits for an org allocation to free",
            ["allocation"],
            registry=registry,
        )


capture = _CaptureMetrics(CAPTURE)
sink = _SinkMetrics(SINK)
salesforce = _SalesforceMetrics(SALESFORCE)
