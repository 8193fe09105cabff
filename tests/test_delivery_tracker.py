"""DeliveryTracker: a position is confirmed only when it and every earlier one are acknowledged."""

from __future__ import annotations

from confluent_kafka import KafkaError

from walbridge.kafka import DeliveryTracker


def test_confirms_in_order_despite_out_of_order_acks() -> None:
    tracker: DeliveryTracker[int] = DeliveryTracker()
    acks = []
    for position, records in ((100, 2), (200, 1), (300, 3)):
        acks.append([tracker.open() for _ in range(records)])
        tracker.seal(position)
    assert tracker.confirmed() is None
    for ack in acks[2]:
        ack(None, None)
    acks[1][0](None, None)
    assert tracker.confirmed() is None  # 100 still waits for a record
    acks[0][0](None, None)
    assert tracker.confirmed() is None
    acks[0][1](None, None)
    assert tracker.confirmed() == 300
    assert tracker.pending == 0


def test_unsealed_position_is_not_confirmed() -> None:
    tracker: DeliveryTracker[int] = DeliveryTracker()
    ack = tracker.open()
    ack(None, None)
    assert tracker.confirmed() is None
    tracker.seal(5)
    assert tracker.confirmed() == 5


def test_failed_delivery_blocks_confirmation() -> None:
    tracker: DeliveryTracker[int] = DeliveryTracker()
    ok = tracker.open()
    tracker.seal(1)
    bad = tracker.open()
    tracker.seal(2)
    ok(None, None)
    bad(KafkaError(KafkaError._MSG_TIMED_OUT), None)
    assert tracker.confirmed() == 1
    assert tracker.failure is not None
    assert tracker.confirmed() == 1
