"""Sinks: the shared consume → apply → commit runner and the destinations it drives.

A sink implements :class:`~walbridge.sinks.base.Sink`; :class:`~walbridge.sinks.runner.SinkRunner`
runs any of them with the same batching, retry, DLQ and offset rules.
"""

from walbridge.sinks.base import OffsetConflict, RecordFailure, Sink, SinkRecord

__all__ = ["OffsetConflict", "RecordFailure", "Sink", "SinkRecord"]
