"""The org-allocation guard: keep a reserve free, pause on exhaustion, resume when /limits shows room."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from walbridge import metrics
from walbridge.errors import RateLimited
from walbridge.sinks.salesforce.allocation import DAILY_API, HOURLY_PUBLISH, Allocation
from walbridge.sinks.salesforce.mapping import EventRecord
from walbridge.sinks.salesforce.publisher import Publisher


class Org:
    def __init__(self, daily: tuple[int, int], hourly: tuple[int, int]) -> None:
        self.daily, self.hourly = list(daily), list(hourly)
        self.reads = 0

    def limits(self) -> dict[str, Any]:
        self.reads += 1
        return {
            DAILY_API: {"Max": self.daily[1], "Remaining": self.daily[1] - self.daily[0]},
            HOURLY_PUBLISH: {"Max": self.hourly[1], "Remaining": self.hourly[1] - self.hourly[0]},
        }


def test_publishing_pauses_before_the_reserve_and_resumes_when_limits_show_room() -> None:
    org, now = Org(daily=(895, 1000), hourly=(0, 10_000)), [0.0]
    guard = Allocation(org.limits, 0.10, metrics.salesforce, clock=lambda: now[0])
    for _ in range(5):
        guard.before_call(200)
        guard.observe_api_usage(guard.usage[DAILY_API].used + 1, 1000)
    assert guard.usage[DAILY_API].used == 900
    with pytest.raises(RateLimited, match="keeps 10% of it free") as info:
        guard.before_call(200)  # the 901st call would leave less than 100 free
    assert info.value.retry_after == 300
    assert metrics.salesforce.paused.labels(allocation=DAILY_API)._value.get() == 1
    now[0] += 100
    with pytest.raises(RateLimited):
        guard.before_call(200)
    assert org.reads == 1  # no /limits call while the pause lasts
    org.daily[0] = 500  # the rolling window freed calls
    now[0] += 300
    guard.before_call(200)
    assert org.reads == 2 and metrics.salesforce.paused.labels(allocation=DAILY_API)._value.get() == 0


def test_hourly_publishing_counts_events_and_exhaustion_pauses() -> None:
    org, now = Org(daily=(0, 100_000), hourly=(8_500, 10_000)), [0.0]
    guard = Allocation(org.limits, 0.10, clock=lambda: now[0])
    guard.before_call(200)
    guard.published(200)
    guard.before_call(200)
    guard.published(200)
    with pytest.raises(RateLimited, match="HourlyPublishedPlatformEvents allocation is at 8,900 of 10,000"):
        guard.before_call(200)
    error = guard.exhausted(HOURLY_PUBLISH)
    assert error.retry_after == 120


def test_a_403_at_the_daily_limit_pauses_instead_of_retrying_every_few_seconds() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(
            403,
            json=[{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}],
            headers={"Sforce-Limit-Info": "api-usage=1000/1000"},
        )

    org = Org(daily=(10, 1000), hourly=(0, 10_000))
    guard = Allocation(org.limits, 0.10)
    client = httpx.Client(transport=httpx.MockTransport(handler))
    publisher = Publisher(client, "https://acme.my.salesforce.com", "62.0", max_in_flight=1, allocation=guard)
    records = [EventRecord("E__e", {"N__c": i}, i) for i in range(5)]
    outcome = publisher.publish(records)
    assert isinstance(outcome.transient, RateLimited) and outcome.transient.retry_after == 300
    assert "allocation is used up" in str(outcome.transient)
    again = publisher.publish(records)
    assert isinstance(again.transient, RateLimited) and len(calls) == 1  # nothing sent while paused
