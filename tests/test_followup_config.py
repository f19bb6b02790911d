"""Integration: follow-up policy and contact hours (validated, audited, applied) and statistics."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pytest
from pydantic import ValidationError

from complaints_shared.clock import ManualClock
from complaints_shared.envelope import CloudEvent
from complaints_shared.events import BranchUpdated, ComplaintWithdrawn, EventType, Topic
from followup.settings import FollowupSettings
from tests.support.clock import at, utc
from tests.support.events import resolved
from tests.support.followup import FAST_SCHEDULER, checks_of, make_due, wait_status
from tests.support.http import agent, token
from tests.support.kafka import group_dead_letters, publish, republish
from tests.support.system import System, SystemFactory
from tests.support.waits import eventually

pytestmark = pytest.mark.integration

LONDON_OFFICE = {
    "time_zone": "Europe/London",
    "start": "10:00",
    "end": "16:00",
    "weekdays": ["mon", "tue", "wed", "thu", "fri"],
    "holiday_country": "GB",
    "closed_days": ["2026-11-25"],
}
BILLING_POLICY = {
    "checks": [{"after_hours": 48}],
    "overrides": [
        {"category": "billing", "checks": [{"after_hours": 2}, {"after_hours": 72}]},
        {"category": "billing", "severity": "critical", "checks": [{"after_hours": 1}]},
    ],
    "max_attempts": 2,
    "attempt_spacing_hours": 1,
    "satisfied_score_threshold": 5,
}


async def test_policy_and_contact_hours_are_validated_audited_and_applied(
    system_factory: SystemFactory,
) -> None:
    system = await system_factory(clock=ManualClock(utc(2026, 11, 20)))
    admin = token(system.intake_settings, subject="admin-zhao")
    supervisor = token(system.intake_settings, roles=("supervisor",))

    default = (await system.followup.get("/v1/followups/policy", headers=admin)).json()
    assert default["version"] == 0
    assert default["policy"]["checks"] == [{"after_hours": 24.0}]
    assert {o["severity"] for o in default["policy"]["overrides"]} == {"high", "critical"}

    invalid = await system.followup.put(
        "/v1/followups/policy",
        json={**BILLING_POLICY, "checks": [{"after_hours": 48}, {"after_hours": 12}]},
        headers=admin,
    )
    assert invalid.status_code == 422
    assert {error["field"] for error in invalid.json()["errors"]} == {"checks"}
    # The same policy twice (a retry after a lost answer) is one version.
    for _ in range(2):
        saved = await system.followup.put(
            "/v1/followups/policy", json=BILLING_POLICY, headers=admin
        )
        assert saved.status_code == 200, saved.text
        assert (saved.json()["version"], saved.headers["etag"]) == (1, '"1"')
    changed = await system.followup.put(
        "/v1/followups/policy", json={**BILLING_POLICY, "max_attempts": 3}, headers=admin
    )
    assert changed.json()["version"] == 2, changed.text
    saved = await system.followup.put("/v1/followups/policy", json=BILLING_POLICY, headers=admin)
    assert saved.json()["version"] == 3, saved.text
    history = (await system.followup.get("/v1/followups/policy/history", headers=supervisor)).json()
    assert [(v["version"], v["changed_by"]) for v in history["items"]] == [
        (3, "admin-zhao"),
        (2, "admin-zhao"),
        (1, "admin-zhao"),
    ]

    bad_hours = await system.followup.put(
        "/v1/followups/contact-hours/LZ",
        json={**LONDON_OFFICE, "time_zone": "Europe/Atlantis"},
        headers=admin,
    )
    assert bad_hours.status_code == 422
    assert bad_hours.json()["errors"][0]["field"] == "time_zone"
    stored = await system.followup.put(
        "/v1/followups/contact-hours/LZ", json=LONDON_OFFICE, headers=admin
    )
    assert stored.status_code == 200, stored.text
    assert stored.json()["version"] == 1
    hosp = (await system.followup.get("/v1/followups/contact-hours/HOSP", headers=admin)).json()
    assert (hosp["version"], hosp["contact_hours"]["time_zone"]) == (0, "Asia/Shanghai")

    monday_9_london = utc(2026, 11, 23, 9)
    billing = resolved(resolved_at=monday_9_london)
    critical = resolved(resolved_at=monday_9_london, severity="critical")
    tuesday_15_london = resolved(resolved_at=utc(2026, 11, 24, 15))
    network_hosp = resolved(resolved_at=utc(2026, 11, 23, 2), branch="HOSP", category="network")
    await publish(
        system,
        *(
            (EventType.COMPLAINT_RESOLVED, event)
            for event in (billing, critical, tuesday_15_london, network_hosp)
        ),
    )

    async def due_times(event, count: int = 1) -> list[datetime]:
        return [
            at(check["due_at"])
            for check in await checks_of(system, event.complaint_id, admin, count=count)
        ]

    # +2 h is 11:00 in London; +72 h is 09:00 on Thursday, before the branch opens at 10:00.
    assert await due_times(billing, 2) == [utc(2026, 11, 23, 11), utc(2026, 11, 26, 10)]
    assert await due_times(critical) == [utc(2026, 11, 23, 10)]
    # 17:00 is after hours and Wednesday the 25th is a closed day of the branch.
    assert await due_times(tuesday_15_london, 2) == [utc(2026, 11, 26, 10), utc(2026, 11, 27, 15)]
    # HOSP keeps the default (Shanghai, 09:00–20:00) and the policy's own 48 h.
    assert await due_times(network_hosp) == [utc(2026, 11, 25, 2)]
    (snapshot,) = await checks_of(system, critical.complaint_id, admin)
    assert snapshot["max_attempts"] == 2


NEW_YORK_BRANCH = {
    "code": "NY",
    "name": "纽约办事处",
    "time_zone": "America/New_York",
    "hours": {
        day: [{"start": "09:00", "end": "18:00"}] for day in ("mon", "tue", "wed", "thu", "fri")
    },
    "holidays": {"country": "US"},
}


async def _contact_hours(system: System, branch: str, headers: dict) -> dict:
    response = await system.followup.get(f"/v1/followups/contact-hours/{branch}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def test_default_contact_hours_count_in_the_time_zone_routing_announces_for_the_branch(
    system_factory: SystemFactory,
) -> None:
    """Until 5 December follow-up never heard of routing's branches: a New York branch without
    contact hours of its own was called 09:00-20:00 Shanghai time, a 24-hour check of a
    resolution at 10:00 fell due at 20:00 New York time and could be claimed all night. Now the
    default hours' clock times count in the zone routing announces (``branch.updated``), also
    for a check scheduled before the announcement when it comes due."""
    clock = ManualClock(utc(2026, 11, 23, 12))  # Monday 07:00 in New York
    system = await system_factory(clock=clock, followup=FAST_SCHEDULER)
    admin = token(system.routing_settings)
    caller = agent(system, "agent-ny", branches=("NY",))

    # Resolved Monday 10:00 New York time, before follow-up knows the branch: the service's
    # default zone, as before (+24 h is 23:00 in Shanghai, so 09:00 there).
    early = resolved(branch="NY", resolved_at=utc(2026, 11, 23, 15))
    await publish(system, (EventType.COMPLAINT_RESOLVED, early))
    (early_check,) = await checks_of(system, early.complaint_id, caller)
    assert at(early_check["due_at"]) == utc(2026, 11, 25, 1)  # Tuesday 20:00 in New York

    created = await system.routing.post(
        "/v1/directory/branches", json=NEW_YORK_BRANCH, headers=admin
    )
    assert created.status_code == 201, created.text

    async def in_new_york() -> dict | None:
        hours = await _contact_hours(system, "NY", admin)
        return hours if hours["contact_hours"]["time_zone"] == "America/New_York" else None

    hours = await eventually(in_new_york, what="follow-up's default hours of NY in New York time")
    assert hours["version"] == 0  # still the defaults, not contact hours of the branch's own
    assert (hours["contact_hours"]["start"], hours["contact_hours"]["end"]) == (
        "09:00:00",
        "20:00:00",
    )

    # Resolved Tuesday 10:00 New York time: due Wednesday 10:00 there, not 20:00.
    later = resolved(branch="NY", resolved_at=utc(2026, 11, 24, 15))
    await publish(system, (EventType.COMPLAINT_RESOLVED, later))
    (later_check,) = await checks_of(system, later.complaint_id, caller)
    assert at(later_check["due_at"]) == utc(2026, 11, 25, 15)

    # The check scheduled before comes due at 20:00 New York time: it waits for 09:00 there.
    url = f"/v1/followups/{early_check['id']}"
    clock.set(utc(2026, 11, 25, 1, 0, 1))

    async def waiting() -> dict | None:
        body = (await system.followup.get(url, headers=caller)).json()
        return body if body["history"][-1]["action"] == "wait_for_contact_hours" else None

    waited = await eventually(waiting, what="the early check left for the New York morning")
    assert (waited["status"], at(waited["due_at"])) == ("scheduled", utc(2026, 11, 25, 14))

    clock.set(utc(2026, 11, 25, 14, 0, 1))  # Wednesday 09:00 in New York
    await wait_status(system, early_check["id"], "due", caller)
    claimed = await system.followup.post(f"{url}/claim", headers=caller)
    assert claimed.status_code == 200, claimed.text
    assert (await system.followup.delete(f"{url}/claim", headers=caller)).status_code == 200

    clock.set(utc(2026, 11, 26, 1, 30))  # Wednesday 20:30 in New York, 09:30 in Shanghai
    late = await system.followup.post(f"{url}/claim", headers=caller)
    assert late.status_code == 409, late.text
    assert late.json()["type"].endswith("/outside-contact-hours")
    assert at(late.json()["next_contact_at"]) == utc(2026, 11, 26, 14)  # Thursday 09:00


async def test_a_branchs_newest_announced_time_zone_stands_and_its_own_contact_hours_win(
    system_factory: SystemFactory,
) -> None:
    """Routing's announcements are kept by version: a redelivery or an older version changes
    nothing, a record follow-up cannot read is dead-lettered by its consumer group, a zone
    this host does not know leaves the default zone, and contact hours a branch admin stored
    win over any announcement."""
    system = await system_factory(clock=ManualClock(utc(2026, 11, 20)))
    admin = token(system.intake_settings)
    db = system.mongo[system.followup_settings.database_name()]

    def announced(branch: str, version: int, time_zone: str) -> BranchUpdated:
        return BranchUpdated(
            org="demo",
            branch=branch,
            name=f"{branch} office",
            time_zone=time_zone,
            version=version,
            updated_at=utc(2026, 11, 20),
        )

    async def kept(branch: str, version: int) -> dict | None:
        document = await db.branches.find_one({"_id": f"demo:{branch}"})
        return document if document and document["version"] == version else None

    (seattle,) = await publish(
        system,
        (EventType.BRANCH_UPDATED, announced("SEA", 2, "America/Los_Angeles")),
        service="routing",
    )
    await republish(system, seattle, service="routing")
    await publish(
        system, (EventType.BRANCH_UPDATED, announced("SEA", 1, "Asia/Tokyo")), service="routing"
    )
    poison = CloudEvent.new(
        event_type=EventType.BRANCH_UPDATED,
        source="routing",
        data=announced("SEA", 3, "America/Denver"),
    )
    poison.data["version"] = "latest"
    await republish(system, poison, service="routing")

    async def dead_lettered() -> list:
        return await group_dead_letters(
            system.followup_settings, topic=system.topic(Topic.ROUTING), event_id=poison.id
        )

    # The branch's events share a partition: once the last is dead-lettered, all are handled.
    (letter,) = await eventually(dead_lettered, what="the unreadable branch.updated dead-lettered")
    assert letter.header("dlq_reason") == "invalid_data"
    assert (await kept("SEA", 2))["time_zone"] == "America/Los_Angeles"
    shown = await _contact_hours(system, "SEA", admin)
    assert (shown["version"], shown["contact_hours"]["time_zone"]) == (0, "America/Los_Angeles")

    own = await system.followup.put(
        "/v1/followups/contact-hours/SEA", json=LONDON_OFFICE, headers=admin
    )
    assert own.status_code == 200, own.text
    await publish(
        system, (EventType.BRANCH_UPDATED, announced("SEA", 4, "America/Denver")), service="routing"
    )
    await eventually(lambda: kept("SEA", 4), what="SEA's version 4 kept")
    shown = await _contact_hours(system, "SEA", admin)
    assert (shown["version"], shown["contact_hours"]["time_zone"]) == (1, "Europe/London")

    # A zone stored in routing before it checked zones (``localtime``) counts as none known.
    await publish(
        system, (EventType.BRANCH_UPDATED, announced("OLD", 1, "localtime")), service="routing"
    )
    await eventually(lambda: kept("OLD", 1), what="OLD's version 1 kept")
    shown = await _contact_hours(system, "OLD", admin)
    assert (shown["version"], shown["contact_hours"]["time_zone"]) == (0, "Asia/Shanghai")


@pytest.mark.parametrize(
    ("setting", "why"),
    [
        ({"second_check_after_hours": 2400}, "less than or equal to 2160"),  # past 90 days
        ({"first_check_after_hours": 3000}, "less than or equal to 2160"),
        ({"second_check_severities": ["high", "high"]}, "more than one override"),
    ],
)
def test_default_policy_settings_the_policy_refuses_stop_the_service_naming_them(
    setting: dict, why: str
) -> None:
    """They were accepted at start-up, then every resolution of an organisation without a
    policy of its own failed (dead-lettered: no call-backs) and its policy's GET was a 500."""
    with pytest.raises(ValidationError, match="SECOND_CHECK_AFTER_HOURS") as refused:
        FollowupSettings(**setting)
    assert why in str(refused.value)


@pytest.mark.parametrize("given", ["", "none", "None"])
def test_no_public_holidays_can_be_set_from_the_environment(
    given: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deployment outside China turns the default holidays off: the environment cannot
    give None, and until 6 December an empty value or ``none`` stopped follow-up at start."""
    monkeypatch.setenv("CONTACT_HOLIDAY_COUNTRY", given)
    assert FollowupSettings().contact_holiday_country is None
    monkeypatch.setenv("CONTACT_HOLIDAY_COUNTRY", "DE")
    assert FollowupSettings().contact_holiday_country == "DE"


async def test_contact_hours_that_would_break_scheduling_are_422s_naming_the_field(
    system_factory: SystemFactory,
) -> None:
    """Each was stored (or failed with a 500); Mondays only with three years of Mondays
    closed left an unreached call nothing to be retried at (a 500 on the attempt)."""
    system = await system_factory(clock=ManualClock(utc(2026, 11, 20)))
    branch_admin = token(system.intake_settings, branches=["LZ"])
    first_monday = date(2026, 11, 23)
    mondays = [(first_monday + timedelta(weeks=week)).isoformat() for week in range(157)]
    for change, field in [
        ({"time_zone": "Asia"}, "time_zone"),
        ({"time_zone": "Europe/" + "x" * 300}, "time_zone"),
        ({"start": "10:00+01:00"}, "start"),
        ({"holiday_country": "__init__"}, "holiday_country"),
        ({"closed_days": ["9999-12-31"]}, "closed_days.0"),
        ({"weekdays": ["mon"], "closed_days": mondays}, "closed_days"),
    ]:
        response = await system.followup.put(
            "/v1/followups/contact-hours/LZ", json={**LONDON_OFFICE, **change}, headers=branch_admin
        )
        assert response.status_code == 422, (change, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert [error["field"] for error in response.json()["errors"]] == [field], change
    stored = await system.followup.get("/v1/followups/contact-hours/LZ", headers=branch_admin)
    assert stored.json()["version"] == 0


async def test_stats_report_response_rate_satisfaction_and_time_to_first_contact(
    system_factory: SystemFactory,
) -> None:
    clock = ManualClock(utc(2026, 11, 25, 6))  # Wednesday 14:00 in Shanghai
    system = await system_factory(clock=clock, followup=FAST_SCHEDULER)
    admin = token(system.intake_settings)
    one_attempt = {**BILLING_POLICY, "overrides": [], "checks": [{"after_hours": 24}]}
    one_attempt |= {"max_attempts": 1, "satisfied_score_threshold": 4}
    assert (
        await system.followup.put("/v1/followups/policy", json=one_attempt, headers=admin)
    ).status_code == 200

    def hours_ago(hours: int, **fields) -> object:
        return resolved(resolved_at=clock.now() - timedelta(hours=hours), **fields)

    satisfied = hours_ago(30, owner_id="lz-chen")
    unsatisfied = hours_ago(26, owner_id="lz-liu")
    unreachable = hours_ago(30, owner_id="lz-chen", category="network")
    hospital = hours_ago(48, branch="HOSP", category="medical", owner_id="hosp-wang")
    pending = hours_ago(30, owner_id="lz-liu")
    withdrawn = hours_ago(30, owner_id="lz-liu")
    everything = (satisfied, unsatisfied, unreachable, hospital, pending, withdrawn)
    await publish(system, *((EventType.COMPLAINT_RESOLVED, event) for event in everything))
    checks = {
        event.complaint_id: (await checks_of(system, event.complaint_id, admin))[0]
        for event in everything
    }

    def url(event) -> str:
        return f"/v1/followups/{checks[event.complaint_id]['id']}"

    caller = agent(system, "agent-a", branches="*")
    for event, score in ((satisfied, 5), (hospital, 4)):
        body = {"satisfied": True, "score": score, "problem_solved": True}
        assert (
            await system.followup.post(f"{url(event)}/outcome", json=body, headers=caller)
        ).is_success
    for event, attempt in (
        (unsatisfied, {"reached": True, "score": 3, "problem_solved": True}),
        (unreachable, {"reached": False}),
    ):
        await make_due(system, clock, checks[event.complaint_id], caller)
        assert (await system.followup.post(f"{url(event)}/claim", headers=caller)).is_success
        done = await system.followup.post(f"{url(event)}/attempts", json=attempt, headers=caller)
        assert done.json()["status"] == "completed", done.text
    await publish(
        system,
        (
            EventType.COMPLAINT_WITHDRAWN,
            ComplaintWithdrawn(
                complaint_id=withdrawn.complaint_id,
                org="demo",
                branch="LZ",
                withdrawn_by="customer",
                withdrawn_at=clock.now(),
            ),
        ),
    )
    await wait_status(system, checks[withdrawn.complaint_id]["id"], "cancelled", admin)

    stats = (await system.followup.get("/v1/followups/stats", headers=admin)).json()
    overall = stats["overall"]
    assert (overall["checks"], overall["completed"], overall["reached"]) == (5, 4, 3)
    assert (overall["satisfied"], overall["unsatisfied"], overall["no_response"]) == (2, 1, 1)
    assert overall["response_rate"] == 0.75
    assert overall["satisfaction_average"] == 4.0
    assert overall["score_distribution"] == {"1": 0, "2": 0, "3": 1, "4": 1, "5": 1}
    by_branch = {group["key"]: group for group in stats["by_branch"]}
    assert (by_branch["HOSP"]["checks"], by_branch["LZ"]["checks"]) == (1, 4)
    assert by_branch["LZ"]["response_rate"] == round(2 / 3, 2)
    by_owner = {group["key"]: group for group in stats["by_owner"]}
    assert by_owner["lz-chen"]["satisfaction_average"] == 5.0
    assert by_owner["lz-liu"]["unsatisfied"] == 1
    by_category = {group["key"]: group["no_response"] for group in stats["by_category"]}
    assert by_category == {"billing": 0, "medical": 0, "network": 1}
    assert {g["key"] for g in stats["by_department"]} == {"LZ:BILLING", "HOSP:BILLING"}
    # First contacts: the satisfied one 30 h after resolution, the unsatisfied one once the
    # clock had moved to its due time, the hospital one 48 h after.
    first_contact = stats["resolution_to_first_contact"]
    assert first_contact["resolutions"] == 3
    assert first_contact["median_hours"] == 30.0

    lz_supervisor = token(system.intake_settings, branches=["LZ"], roles=("supervisor",))
    lz_only = (await system.followup.get("/v1/followups/stats", headers=lz_supervisor)).json()
    assert lz_only["overall"]["checks"] == 4
    assert [group["key"] for group in lz_only["by_branch"]] == ["LZ"]
    hosp_only = (
        await system.followup.get("/v1/followups/stats", params={"branch": "HOSP"}, headers=admin)
    ).json()
    assert hosp_only["overall"]["checks"] == 1
