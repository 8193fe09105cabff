"""A commit refused because the member lost its partitions (found by the soak, issue 12).

After a broker outage longer than the session timeout, the Salesforce sink's group took its partitions
back; the sink's synchronous commit of a batch it had published then failed with UNKNOWN_MEMBER_ID and
stopped the sink (exit 2); so did "Local: Waiting for coordinator" right after a reconnect. The batch is
delivered; its records may be delivered again (at-least-once), so the runner warns and carries on; any
other commit failure still stops it.
"""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError

from walbridge.sinks.runner import commit_can_wait


@pytest.mark.parametrize(
    "code",
    [KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS,
     KafkaError._ASSIGNMENT_LOST, KafkaError._WAIT_COORD],
)  # fmt: skip
def test_a_lost_membership_is_not_a_failed_commit(code: int) -> None:
    assert commit_can_wait(KafkaError(code))


@pytest.mark.parametrize(
    "code", [KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED]
)
def test_other_commit_failures_still_stop_the_sink(code: int) -> None:
    assert not commit_can_wait(KafkaError(code))
    assert not commit_can_wait(None)
