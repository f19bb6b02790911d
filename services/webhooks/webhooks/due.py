"""Which subscriptions have deliveries one replica may claim, and from when (in memory).

The dispatcher claims one subscription's deliveries at a time, through the index on
(subscription, status, next attempt): a subscription with all the attempts in flight it
may have is not asked at all, so however many of its deliveries are due, no claim reads
them. It claimed the earliest due delivery of every subscription at once until
5 December, leaving the saturated ones out with ``$nin``: the index walk read every due
delivery of theirs on each claim, and a subscription re-activated with a day's backlog made
every claim of every organisation read it again.

What this replica knows it is told at once (deliveries it recorded, API requests it served,
attempts it made); what other replicas did, or left when they stopped, it learns from the
database every ``due_discovery_interval_s``. A claim that finds nothing settles, from the
subscription's pending timers, when to ask again: at a retry, when a lease runs out, or
once the order watermark passes an event that waits for it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from complaints_shared.mongo import bson_time


@dataclass
class _Due:
    # A claim is worth making from this moment (None: only once the watermark passes).
    at: datetime | None
    # ...or as soon as the order watermark is past this event time.
    after_event_time: datetime | None = None

    def ready_at(self, *, now: datetime, recorded_through: datetime) -> datetime | None:
        """When the subscription became worth a claim, if it is now (the claims' order)."""
        if self.at is not None and self.at <= now:
            return self.at
        # To the millisecond, as the claim's filter compares the stored event times.
        if self.after_event_time is not None and self.after_event_time < bson_time(
            recorded_through
        ):
            return self.after_event_time
        return None


class DueSubscriptions:
    """Subscriptions that have (or may have) deliveries to claim, each with its moment."""

    def __init__(self) -> None:
        self._due: dict[str, _Due] = {}

    def __len__(self) -> int:
        return len(self._due)

    def due_at(self, subscription_id: str, *, at: datetime) -> None:
        """A delivery of the subscription is due at ``at``: worth a claim then at the latest."""
        entry = self._due.get(subscription_id)
        if entry is None:
            self._due[subscription_id] = _Due(at=at)
        elif entry.at is None or at < entry.at:
            entry.at = at

    def after_watermark(self, subscription_id: str, *, event_time: datetime) -> None:
        """A delivery of the subscription waits for the order watermark to pass ``event_time``."""
        entry = self._due.setdefault(subscription_id, _Due(at=None))
        if entry.after_event_time is None or event_time < entry.after_event_time:
            entry.after_event_time = event_time

    def claimed(self, subscription_id: str, *, at: datetime) -> None:
        """A delivery of the subscription was claimed at ``at``: it may have more due, and
        goes behind the subscriptions waiting since before."""
        self._due[subscription_id] = _Due(at=at)

    def is_ready(self, subscription_id: str, *, now: datetime, recorded_through: datetime) -> bool:
        entry = self._due.get(subscription_id)
        return entry is not None and (
            entry.ready_at(now=now, recorded_through=recorded_through) is not None
        )

    def next_ready(
        self, *, now: datetime, recorded_through: datetime, skip: Collection[str]
    ) -> str | None:
        """The subscription to claim from next: of those worth a claim now and not in
        ``skip``, the one waiting the longest since its delivery became due or since its
        last claim. A long backlog's old timers do not put it ahead of every other
        subscription until it is at its limit (which takes long where claims are slow)."""
        chosen, chosen_at = None, None
        for subscription_id, entry in self._due.items():
            if subscription_id in skip:
                continue
            ready_at = entry.ready_at(now=now, recorded_through=recorded_through)
            if ready_at is not None and (chosen_at is None or ready_at < chosen_at):
                chosen, chosen_at = subscription_id, ready_at
        return chosen

    def settle(
        self,
        subscription_id: str,
        *,
        timers: Iterable[Mapping[str, Any]],
        now: datetime,
        recorded_through: datetime,
    ) -> None:
        """A claim of the subscription found nothing: when to ask again, from its pending
        deliveries with a timer (``next_attempt_at``, ``lease_until``, ``event_time``;
        earliest first). Without any, it is forgotten until it is told of again."""
        moments: list[datetime] = []
        event_times: list[datetime] = []
        for timer in timers:
            due_at = timer["next_attempt_at"]
            lease_until = timer.get("lease_until")
            event_time = timer.get("event_time")
            if due_at > now:
                moments.append(due_at)  # a retry, or a wait behind its chain
            elif isinstance(lease_until, datetime) and lease_until >= now:
                moments.append(lease_until)  # in flight here or elsewhere
            elif isinstance(event_time, datetime) and event_time >= bson_time(recorded_through):
                event_times.append(event_time)
            else:
                moments.append(now)  # another claim was quicker: look again at the next pass
        if not moments and not event_times:
            self._due.pop(subscription_id, None)
            return
        self._due[subscription_id] = _Due(
            at=min(moments, default=None), after_event_time=min(event_times, default=None)
        )
