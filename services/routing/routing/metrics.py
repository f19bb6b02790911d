"""Routing's own Prometheus metrics, beside the shared plumbing ones."""

from __future__ import annotations

from prometheus_client import Counter

ASSIGNMENTS = Counter(
    "complaints_routing_assignments_total",
    "Owners given a complaint, by how (rule, duty_officer, queue, reopen, reassign).",
    ["how"],
)
UNROUTABLE = Counter(
    "complaints_routing_unroutable_total",
    "Complaints no rule could route on arrival (kept as unroutable until one can).",
)
QUEUED = Counter(
    "complaints_routing_queued_total",
    "Complaints that waited in a department queue because nobody had capacity.",
    # Department ids (BRANCH:CODE) are unique only within an organisation.
    ["org", "department"],
)
TIMERS_FIRED = Counter(
    "complaints_routing_timers_fired_total",
    "SLA timers fired, by clock and kind (warning, breach).",
    ["clock", "kind"],
)
ROUTING_CONTEXT_READS = Counter(
    "complaints_routing_context_reads_total",
    "Routing contexts (rules, policies, branch, departments, people) by source: cache or load.",
    ["source"],
)
LOAD_HINTS_CORRECTED = Counter(
    "complaints_routing_load_hints_corrected_total",
    "Owners' load hints found drifted from their counted open slots and corrected.",
)
