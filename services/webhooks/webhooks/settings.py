"""Webhooks settings (environment variables of the same name, upper case).

The retry schedule, the auto-pause threshold and the secret rotation overlap are
documented in ``docs/webhooks.md``; change them there too.
"""

from __future__ import annotations

import ssl
from enum import StrEnum
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from complaints_shared.settings import ServiceSettings

# 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: eight attempts spread over about 27.6 hours.
DEFAULT_RETRY_SCHEDULE_S = [5.0, 300.0, 1_800.0, 7_200.0, 18_000.0, 36_000.0, 36_000.0]


class DeploymentEnvironment(StrEnum):
    PRODUCTION = "production"
    DEVELOPMENT = "development"


class WebhooksSettings(ServiceSettings):
    service_name: str = "webhooks"

    # -- where deliveries may go ---------------------------------------------------
    deployment_environment: DeploymentEnvironment = Field(
        DeploymentEnvironment.PRODUCTION,
        description="`development` accepts http:// targets (and loopback ones if allowed).",
    )
    allow_loopback_targets: bool = Field(
        False,
        description="Deliver to 127.0.0.0/8 and ::1; only valid with "
        "DEPLOYMENT_ENVIRONMENT=development (a local receiver).",
    )
    allow_private_targets: bool = Field(
        False,
        description="Deliver to private and shared address ranges (10/8, 172.16/12, "
        "192.168/16, 100.64/10, fc00::/7): on-premise receivers. Link-local and cloud "
        "metadata addresses stay refused.",
    )

    target_ca_file: Path | None = Field(
        None,
        description="A PEM file of CA certificates trusted beside the public ones (certifi's "
        "bundle), for receivers whose certificates an internal CA issued. Read at start: a "
        "missing or unreadable file stops the service. Empty: none.",
    )

    # -- how deliveries are made ---------------------------------------------------
    request_timeout_s: float = Field(
        10.0, gt=0, description="Whole-request timeout of one attempt (connect to last byte)."
    )
    max_concurrent_deliveries: int = Field(
        64, ge=1, description="Attempts in flight per replica, all subscriptions together."
    )
    max_concurrent_per_subscription: int = Field(
        4, ge=1, description="Attempts in flight per replica to one subscription's target."
    )
    failing_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of a replica's attempt slots that failing subscriptions (whose last "
        "attempt failed) may hold together; each of them has one attempt in flight at most. "
        "Also the share of the resolver threads that lookups of host names not proven (new, "
        "or whose last lookup failed or outlasted its attempt) may hold together.",
    )
    resolver_threads: int = Field(
        16,
        ge=1,
        description="Threads of the replica's own that look up target host names (one lookup "
        "of a name at a time); with all of them taken, an attempt fails at once instead of "
        "waiting, and is retried per the schedule.",
    )
    failed_lookup_kept_s: float = Field(
        30.0,
        ge=0,
        description="A host name whose lookup failed is not looked up again for this long: "
        "attempts to it fail at once with that failure, retried per the schedule.",
    )
    retry_schedule_s: list[float] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE_S),
        min_length=1,
        description="Delay before each retry (JSON list); after the last one a delivery fails.",
    )
    retry_jitter_ratio: float = Field(
        0.2, ge=0, le=0.5, description="Each retry delay is moved by up to ± this fraction."
    )
    auto_pause_after_failures: int = Field(
        10, ge=1, description="Failed attempts in a row (no success between) before auto-pause…"
    )
    auto_pause_after_s: float = Field(
        86_400.0, ge=0, description="…and failing for at least this long since the last success."
    )
    secret_rotation_overlap_s: float = Field(
        86_400.0, ge=0, description="How long the previous signing secret still signs."
    )
    response_excerpt_bytes: int = Field(
        256, ge=0, le=4096, description="Bytes of a receiver's response body kept per attempt."
    )
    deleted_subscription_record_kept_s: float = Field(
        30 * 86_400.0,
        gt=0,
        description="How long a deleted subscription's record of its deletion is kept: a "
        "DELETE repeated meanwhile is answered 204 again, and a creation repeated under its "
        "Idempotency-Key a 409 instead of the subscription created again.",
    )
    delivery_retention_days: float = Field(
        30.0,
        gt=0,
        description="How long a delivered or failed delivery (its body holds the event, "
        "customer contact included) is kept after it finished; a TTL index then removes it. "
        "Pending and held deliveries are kept whatever their age.",
    )
    attempts_kept: int = Field(
        10, ge=1, le=50, description="Attempts (newest) kept in each delivery's log."
    )

    # -- the dispatcher's own timing (not business deadlines) ---------------------
    dispatcher_poll_interval_s: float = Field(
        1.0, gt=0, description="Idle poll for due deliveries (new events wake it at once)."
    )
    due_discovery_interval_s: float = Field(
        5.0,
        gt=0,
        description="How often each replica asks the database when the subscriptions it is "
        "not about to claim from have a delivery due (one index probe per subscription): "
        "deliveries another replica recorded, made due or left when it stopped. What the "
        "replica itself records, makes due or is asked for it knows at once.",
    )
    lease_margin_s: float = Field(
        30.0, gt=0, description="A claimed delivery's lease is the request timeout plus this."
    )
    shutdown_release_s: float = Field(
        2.0,
        gt=0,
        description="At shutdown, attempts in flight may finish until this long before the "
        "service's shutdown grace (15 s) ends; the others are then cancelled, recording "
        "nothing, and their leases released, so any replica sends them again at once.",
    )
    # The order watermark (``webhooks.watermark``) releases a delivery once the group has
    # committed past its event, so this consumer commits after every poll, not once a second.
    consumer_commit_interval_s: float = Field(
        0.0,
        ge=0,
        description="As for every service, but 0 (after every poll): each commit releases "
        "the deliveries waiting for the order watermark.",
    )
    order_watermark_interval_s: float = Field(
        0.1,
        gt=0,
        description="How often the consumed-through moment that releases deliveries in event "
        "order is observed (webhooks.watermark); a new event waits about this long plus the "
        "consumer's commit.",
    )
    backlog_refresh_s: float = Field(
        15.0, gt=0, description="How often the per-subscription backlog gauge is recomputed."
    )
    stranded_repair_interval_s: float = Field(
        60.0,
        gt=0,
        description="How often each replica looks for pending deliveries without a timer "
        "under an active subscription (a crash or an error between two writes can leave one) "
        "and makes them due: one index probe per active subscription; it also completes "
        "subscription deletions a failure cut short.",
    )

    @field_validator("target_ca_file", mode="before")
    @classmethod
    def _empty_ca_file_is_none(cls, value: object) -> object:
        # Compose passes an unset variable as "" (no internal CA).
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("target_ca_file")
    @classmethod
    def _readable_ca_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                ssl.create_default_context().load_verify_locations(cafile=str(value))
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"no CA certificates could be read from {value}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _loopback_only_in_development(self) -> WebhooksSettings:
        if self.allow_loopback_targets and (
            self.deployment_environment is not DeploymentEnvironment.DEVELOPMENT
        ):
            raise ValueError("ALLOW_LOOPBACK_TARGETS=true needs DEPLOYMENT_ENVIRONMENT=development")
        return self

    @property
    def delivery_retention_s(self) -> int:
        """``delivery_retention_days`` as the TTL index counts it (whole seconds)."""
        return int(self.delivery_retention_days * 86_400)

    @property
    def development(self) -> bool:
        return self.deployment_environment is DeploymentEnvironment.DEVELOPMENT
