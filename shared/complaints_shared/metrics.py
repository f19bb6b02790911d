"""Prometheus metrics shared by the plumbing; services add their own beside these."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from complaints_shared.events import EventType

# The ``event_type`` label of a record whose type is none of the catalogue's.
OTHER_EVENT_TYPE = "other"
_KNOWN_EVENT_TYPES = frozenset(EventType)


def event_type_label(event_type: str | None) -> str:
    """``event_type`` as a label value: one of the catalogue's types, else ``other``. A
    record's type is whatever its producer wrote: labelled as written, 2,000 poison records
    of distinct types made 2,000 series per service, and every later scrape rendered them
    all on the event loop (5.9 MB, 0.9 s, every request of the process waiting)."""
    return event_type if event_type in _KNOWN_EVENT_TYPES else OTHER_EVENT_TYPE


EVENTS_CONSUMED = Counter(
    "complaints_events_consumed_total",
    "Events taken from Kafka, by outcome (handled, skipped, dead_lettered).",
    ["service", "event_type", "outcome"],
)
HANDLER_RETRIES = Counter(
    "complaints_event_handler_retries_total",
    "Handler attempts that failed and were retried, by failure (transient, error).",
    ["service", "event_type", "failure"],
)
PARTITION_STALLED = Gauge(
    "complaints_consumer_partition_stalled",
    "1 while a partition waits for a transient failure (database, broker) to pass.",
    ["service", "topic", "partition"],
)
DEAD_LETTERS = Counter(
    "complaints_dead_letters_total",
    "Records moved to <topic>.dlq, by reason (invalid_envelope, invalid_data, rejected, "
    "retries_exhausted).",
    ["service", "topic", "reason"],
)
EVENTS_PUBLISHED = Counter(
    "complaints_events_published_total",
    "Events the outbox relay published to Kafka.",
    ["service", "event_type"],
)
OUTBOX_PUBLISH_FAILURES = Counter(
    "complaints_outbox_publish_failures_total",
    "Outbox relay passes that could not publish (the events stay pending).",
    ["service"],
)
OUTBOX_DOCUMENTS_RELEASED = Counter(
    "complaints_outbox_documents_released_total",
    "Documents whose published events were removed from their outbox, by whom: with the "
    "document's next write (write) or by a release of the relay's own (relay, one more "
    "write of the document).",
    ["service", "by"],
)
HTTP_REQUESTS = Histogram(
    "complaints_http_request_duration_seconds",
    "HTTP request latency by route and status.",
    ["service", "method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
MONGO_RETRIES = Counter(
    "complaints_mongo_retries_total",
    "Idempotent database operations repeated after their connection dropped.",
)
BACKGROUND_LOOP_RESTARTS = Counter(
    "complaints_background_loop_restarts_total",
    "Background loops (consumer, outbox relay, schedulers) started again after they died.",
    ["service", "loop"],
)
DEPENDENCY_UP = Gauge(
    "complaints_dependency_up",
    "1 when the last readiness probe reached the dependency.",
    ["service", "dependency"],
)
TIMER_FAILURES = Counter(
    "complaints_timer_failures_total",
    "Timer documents (SLA assignments, follow-up checks) that failed to fire and were "
    "postponed with backoff; the pass went on with the others.",
    ["service", "timer"],
)
