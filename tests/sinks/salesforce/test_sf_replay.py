"""``dlq replay`` of the Salesforce sink: the replay publishes through the sink's own code, skips a dead
letter whose row changed since, and publishes nothing twice."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import SfPipeline, change, customer, stored_events
from helpers import wait_until
from walbridge.errors import WalbridgeError
from walbridge.sinks.dlq import read_dlq
from walbridge.sinks.replay import replay


def _by_record(server: Any) -> dict[str, list[dict[str, Any]]]:
    events: dict[str, list[dict[str, Any]]] = {}
    for event in stored_events(server):
        events.setdefault(event["fields"]["Record_Id__c"], []).append(event["fields"])
    return events


def test_replay_publishes_what_is_not_superseded(
    kafka_bootstrap: str, topic_prefix: str, emulator: Any
) -> None:
    server = emulator()
    pipe = SfPipeline(kafka_bootstrap, topic_prefix, server)
    rows = [customer(i) for i in range(10)]
    rows[3]["notes"] = rows[6]["notes"] = "x" * 140_000  # refused: STRING_TOO_LONG
    pipe.send(*(change("c", row) for row in rows))
    pipe.start()
    dlq_topic = pipe.topic + ".dlq"
    try:
        wait_until(lambda: len(read_dlq(pipe.settings, [dlq_topic])) == 2, timeout_s=60)
        later = customer(3, version=1, email="later@example.com")
        pipe.send(change("u", later, before=rows[3]))
        wait_until(lambda: len(stored_events(server)) == 9, timeout_s=60)
        with pytest.raises(WalbridgeError, match="has running members: stop `walbridge sink salesforce`"):
            replay(pipe.settings, read_dlq(pipe.settings, [dlq_topic]))
    finally:
        pipe.stop_all()  # the Salesforce sink is stopped for a replay (no lock exists there)

    pipe.settings.sinks[0].truncate_oversized = True  # the fix
    report = replay(pipe.settings, read_dlq(pipe.settings, [dlq_topic]))
    assert [e.original_offset for e in report["superseded"]] and len(report["superseded"]) == 1
    assert len(report["applied"]) == 1 and not report["failed"], (report.summary(), report.errors)
    events = _by_record(server)
    assert sorted(events, key=int) == [str(i) for i in range(10)]
    assert [e["Operation__c"] for e in events["3"]] == ["UPDATE"]  # the old image never followed it
    assert "later@example.com" in events["3"][0]["Payload__c"]
    assert [e["Operation__c"] for e in events["6"]] == ["INSERT"]

    again = replay(pipe.settings, read_dlq(pipe.settings, [dlq_topic]))
    assert len(again["already"]) == 2 and not again["applied"], again.summary()
    assert len(stored_events(server)) == 10
