"""Prometheus metrics of webhook deliveries (labelled by subscription id).

A subscription's series go once it is deleted (``remove_subscription_series``), so the
series stay as many as the subscriptions.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SUBSCRIPTION = "subscription"
ATTEMPT_LABELS = (SUBSCRIPTION, "outcome")
FINISHED_LABELS = (SUBSCRIPTION, "status")
BACKLOG_LABELS = (SUBSCRIPTION,)

DELIVERY_ATTEMPTS = Counter(
    "complaints_webhook_attempts_total",
    "Delivery attempts by outcome: delivered (2xx), failed (will retry or gave up), gone (410).",
    ATTEMPT_LABELS,
)
DELIVERIES_FINISHED = Counter(
    "complaints_webhook_deliveries_total",
    "Deliveries finished: delivered, or failed after the whole retry schedule.",
    FINISHED_LABELS,
)
DELIVERY_LATENCY = Histogram(
    "complaints_webhook_attempt_duration_seconds",
    "Duration of one attempt, request sent to response (or error).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
BACKLOG = Gauge(
    "complaints_webhook_backlog",
    "Pending deliveries per subscription (recomputed every BACKLOG_REFRESH_S).",
    BACKLOG_LABELS,
)
SUBSCRIPTIONS_PAUSED = Counter(
    "complaints_webhook_subscriptions_stopped_total",
    "Subscriptions stopped by the service: auto_paused (failure threshold) or disabled (410).",
    ["reason"],
)
STRANDED_REPAIRED = Counter(
    "complaints_webhook_stranded_repaired_total",
    "Pending deliveries the repair pass found without a timer under an active subscription "
    "and made due (left by a crash or an error between two writes; normally 0).",
)
ORDER_WATERMARK_LAG = Gauge(
    "complaints_webhook_order_watermark_lag_seconds",
    "How far behind now the consumed-through moment is: events newer than it wait, so "
    "an earlier event of their complaint from a lagging topic goes first.",
)

# Every metric labelled by subscription, with its label names in order (the subscription first).
_BY_SUBSCRIPTION: list[tuple[Counter | Gauge, tuple[str, ...]]] = [
    (DELIVERY_ATTEMPTS, ATTEMPT_LABELS),
    (DELIVERIES_FINISHED, FINISHED_LABELS),
    (BACKLOG, BACKLOG_LABELS),
]


def _series(metric: Counter | Gauge, names: tuple[str, ...]) -> set[tuple[str, ...]]:
    """The label values of every series ``metric`` has."""
    return {
        tuple(sample.labels[name] for name in names)
        for family in metric.collect()
        for sample in family.samples
    }


def subscriptions_with_series() -> set[str]:
    """The subscriptions this process has a series of."""
    return {values[0] for metric, names in _BY_SUBSCRIPTION for values in _series(metric, names)}


def remove_subscription_series(subscription_id: str) -> None:
    """Remove every series of a subscription that is gone (deleted)."""
    for metric, names in _BY_SUBSCRIPTION:
        for values in _series(metric, names):
            if values[0] == subscription_id:
                metric.remove(*values)
