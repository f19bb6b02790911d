"""Routing settings (environment variables of the same name, upper case)."""

from __future__ import annotations

from pydantic import Field

from complaints_shared.settings import ServiceSettings


class RoutingSettings(ServiceSettings):
    service_name: str = "routing"
    scheduler_poll_interval_s: float = Field(
        1.0,
        gt=0,
        description="How often the SLA timer scheduler looks for due timers when idle. "
        "Deadlines themselves are stored instants compared with the clock, never sleeps.",
    )
    scheduler_lease_s: float = Field(
        30.0, gt=0, description="How long one replica owns a complaint's timers while firing them."
    )
    scheduler_batch_size: int = Field(
        50, ge=1, description="Complaints with due timers handled per scheduler pass."
    )
    queue_sweep_interval_s: float = Field(
        10.0,
        gt=0,
        description="How often queued complaints are offered to departments again "
        "(freed capacity also drains a queue at once).",
    )
    queue_census_interval_s: float = Field(
        60.0,
        gt=0,
        description="How often the sweep looks up which departments have a queue (a read of "
        "every queued complaint); between looks it offers the departments it last found.",
    )
    routing_context_max_age_s: float = Field(
        60.0,
        gt=0,
        description="Longest a cached routing context (rules, policies, branch, departments, "
        "people) is reused; any change made through the API invalidates it (see "
        "routing_directory_check_s). Also the longest between two tries of an organisation's "
        "unroutable complaints by the queue sweep, whatever its directory version says.",
    )
    replica_clock_skew_s: float = Field(
        30.0,
        ge=0,
        description="The most the replicas' clocks may differ: a changed rule's work is looked "
        "over again routing_context_max_age_s and this long after the change, for what a "
        "replica placed meanwhile with its cached copy of the rule.",
    )
    routing_directory_check_s: float = Field(
        1.0,
        ge=0,
        description="How often routing reads an organisation's directory version to notice "
        "changes made through another replica (changes made through this one are seen at "
        "once); 0 reads it for every complaint.",
    )
    calendar_change_batch_size: int = Field(
        200,
        ge=1,
        description="Open assignments of a branch whose calendar changed re-laid per queue "
        "sweep and branch (a branch with more goes on at the next sweep, or on another "
        "replica).",
    )
    load_hint_reconcile_interval_s: float = Field(
        600.0,
        gt=0,
        description="How often owners' load hints are recounted from the open assignments "
        "(they only drift after a crash between two writes, and only order candidates); "
        "each recount reads every open assignment.",
    )
