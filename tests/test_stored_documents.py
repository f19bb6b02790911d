"""Integration: documents stored before the checks of 3 December are served and worked on.

Each test writes values the API accepted then and refuses now straight into a service's
database (as an earlier version stored them), then reads them over HTTP and lets the
consumers and timers work with them: an upgrade must not make stored data unreadable.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from complaints_shared import announced_branches
from complaints_shared.clock import ManualClock
from complaints_shared.events import EventType
from intake import reference_numbers
from routing import context_cache
from routing.sla.clocks import HORIZON
from tests.support.clock import at, utc
from tests.support.events import received, resolved
from tests.support.followup import checks_of
from tests.support.http import create_complaint, token
from tests.support.kafka import publish
from tests.support.routing import FAST_TIMERS, MONDAY_10_SHANGHAI, assignment_when, routing_db
from tests.support.system import System, SystemFactory

pytestmark = pytest.mark.integration

MINUTE = timedelta(minutes=1)
# A branch calendar as the directory API took it before the checks: the host's zone by its
# file name, opening times with an offset, a holiday country by the library's class name
# (``holidays.country_holidays`` took it), closed and working days of any year.
LZ_AS_STORED = {
    "time_zone": "localtime",
    "hours": {
        day: [{"start": "08:30:00+08:00", "end": "18:00:00+08:00"}]
        for day in ("mon", "tue", "wed", "thu", "fri")
    },
    "holidays": {
        "country": "China",
        "subdivision": None,
        "closed_days": ["2500-01-01", "0001-01-01"],
        "working_days": ["9999-12-31"],
    },
}


def _every_day(first: date, days: int) -> list[str]:
    return [(first + timedelta(days=offset)).isoformat() for offset in range(days)]


async def test_complaints_stored_with_dates_now_refused_are_served_as_stored(
    system: System,
) -> None:
    admin = token(system.intake_settings)
    complaints = system.mongo[system.intake_settings.database_name()].complaints
    year_1 = (await create_complaint(system, admin, subject="去年的账单"))["id"]
    year_2999 = (await create_complaint(system, admin, subject="下个月的账单"))["id"]
    await complaints.update_one(
        {"_id": year_1}, {"$set": {"occurred_at": datetime(1, 1, 1, tzinfo=UTC)}}
    )
    promised = {
        "acknowledged_by": "lz-chen",
        "acknowledged_at": datetime.now(UTC),
        "promised_response_at": datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
    }
    await complaints.update_one(
        {"_id": year_2999},
        {"$set": {"occurred_at": datetime(2999, 6, 1, tzinfo=UTC), "acknowledgement": promised}},
    )

    shown = await system.intake.get(f"/v1/complaints/{year_1}", headers=admin)
    assert shown.status_code == 200, shown.text
    assert shown.json()["occurred_at"] == "0001-01-01T00:00:00Z"
    shown = await system.intake.get(f"/v1/complaints/{year_2999}", headers=admin)
    assert shown.status_code == 200, shown.text
    assert shown.json()["occurred_at"] == "2999-06-01T00:00:00Z"
    assert shown.json()["acknowledgement"]["promised_response_at"].startswith("9999-12-31T23:59")

    first = await system.intake.get("/v1/complaints", params={"limit": 1}, headers=admin)
    assert first.status_code == 200, first.text
    second = await system.intake.get(
        "/v1/complaints", params={"limit": 1, "cursor": first.json()["next_cursor"]}, headers=admin
    )
    assert second.status_code == 200, second.text
    listed = {item["id"]: item["occurred_at"] for item in first.json()["items"]}
    listed |= {item["id"]: item["occurred_at"] for item in second.json()["items"]}
    assert listed == {year_1: "0001-01-01T00:00:00Z", year_2999: "2999-06-01T00:00:00Z"}


async def test_a_branch_stored_with_values_now_refused_is_timed_routed_to_and_served(
    system_factory: SystemFactory,
) -> None:
    clock = ManualClock(MONDAY_10_SHANGHAI)
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    db = routing_db(system)
    waiting = received(severity="high", received_at=clock.now())
    await publish(system, (EventType.COMPLAINT_RECEIVED, waiting))
    acknowledge = (await assignment_when(system, waiting.complaint_id))["clocks"]["acknowledge"]

    await db.branches.update_one({"_id": "demo:LZ"}, {"$set": LZ_AS_STORED})
    # CEM closed every day for longer than the calendar searches ahead (three years).
    closed = _every_day(date(2026, 11, 1), 1200)
    await db.branches.update_one({"_id": "demo:CEM"}, {"$set": {"holidays.closed_days": closed}})
    await context_cache.directory_changed(db=db, org="demo")

    # The timer of a complaint assigned before reads the branch's calendar to escalate.
    clock.set(acknowledge["due_at"] + MINUTE)
    breached = await assignment_when(
        system, waiting.complaint_id, lambda d: d["escalation_level"] == 1, what="breach"
    )
    assert breached["clocks"]["acknowledge"]["breach_count"] == 1

    arriving = received(severity="high", received_at=clock.now())
    quality = received(branch="CEM", category="product_quality", received_at=clock.now())
    await publish(
        system,
        (EventType.COMPLAINT_RECEIVED, arriving),
        (EventType.COMPLAINT_RECEIVED, quality),
    )
    routed = await assignment_when(system, arriving.complaint_id)
    assert routed["owner_id"] is not None
    # ``localtime`` is the host's zone; four business hours lie within a week of opening.
    due_at = routed["clocks"]["acknowledge"]["due_at"]
    assert clock.now() < due_at < clock.now() + timedelta(days=7)
    shut = await assignment_when(system, quality.complaint_id)
    assert shut["owner_id"] is not None
    due = {name: stored_clock["due_at"] for name, stored_clock in shut["clocks"].items()}
    assert due == {"acknowledge": clock.now() + HORIZON, "resolve": clock.now() + HORIZON}

    admin = token(system.routing_settings)
    shown = await system.routing.get("/v1/directory/branches/LZ", headers=admin)
    assert shown.status_code == 200, shown.text
    assert {key: shown.json()[key] for key in LZ_AS_STORED} == LZ_AS_STORED
    listed = await system.routing.get("/v1/directory/branches", headers=admin)
    assert listed.status_code == 200, listed.text
    # A change of the name keeps the calendar as stored; it is not checked again.
    renamed = await system.routing.patch(
        "/v1/directory/branches/LZ", json={"name": "兰州分公司"}, headers=admin
    )
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["holidays"] == LZ_AS_STORED["holidays"]


async def test_a_rule_stored_at_a_position_now_refused_is_served_and_new_rules_follow_it(
    system: System,
) -> None:
    admin = token(system.routing_settings)
    rules = routing_db(system).rules
    stored = await rules.find_one({"_id": "demo:product-quality"})
    last = {**stored, "_id": "demo:last", "position": 2**63 - 1, "is_default": False}
    await rules.insert_one(last)

    listed = await system.routing.get("/v1/routing/rules", headers=admin)
    assert listed.status_code == 200, listed.text
    assert {rule["id"]: rule["position"] for rule in listed.json()}["demo:last"] == 2**63 - 1
    rule = {"id": "after-last", "name": "最后", "action": {"department_kind": "billing"}}
    created = await system.routing.post("/v1/routing/rules", json=rule, headers=admin)
    assert created.status_code == 201, created.text
    assert created.json()["position"] == 2**63 - 1


async def test_contact_hours_stored_with_values_now_refused_are_served_and_scheduled(
    system_factory: SystemFactory,
) -> None:
    system = await system_factory(clock=ManualClock(utc(2026, 11, 20)))
    admin = token(system.intake_settings)
    contact_hours = system.mongo[system.followup_settings.database_name()].contact_hours
    stored_hours = {
        "time_zone": "localtime",
        "start": "09:00:00",
        "end": "20:00:00",
        "weekdays": ["mon", "tue", "wed", "thu", "fri"],
        "holiday_country": "CN",
        "holiday_subdivision": None,
        "closed_days": ["2500-01-01", "0001-01-01"],
        "working_days": ["9999-12-31"],
    }
    # Mondays only, every Monday closed for longer than the calendar searches ahead.
    mondays = [(date(2026, 11, 23) + timedelta(weeks=week)).isoformat() for week in range(160)]
    never = {**stored_hours, "time_zone": "Asia/Shanghai", "weekdays": ["mon"]}
    for branch, hours in (("LZ", stored_hours), ("HOSP", {**never, "closed_days": mondays})):
        await contact_hours.insert_one(
            {
                "_id": f"demo:{branch}:v1",
                "org": "demo",
                "branch": branch,
                "version": 1,
                "changed_by": "admin-zhao",
                "changed_at": utc(2026, 1, 5),
                "contact_hours": hours,
            }
        )

    # Friday 16:00 UTC (``localtime`` is the host's zone): 24 hours on is a Saturday.
    in_lz = resolved(resolved_at=utc(2026, 11, 20, 16))
    in_hosp = resolved(resolved_at=utc(2026, 11, 20, 16), branch="HOSP")
    await publish(
        system, (EventType.COMPLAINT_RESOLVED, in_lz), (EventType.COMPLAINT_RESOLVED, in_hosp)
    )
    (lz_check,) = await checks_of(system, in_lz.complaint_id, admin)
    assert at(lz_check["due_at"]) > utc(2026, 11, 21, 16)
    assert at(lz_check["due_at"]).weekday() == 0  # moved to Monday within contact hours
    # No Monday opens within three years: the check is due at its own time, not never.
    (hosp_check,) = await checks_of(system, in_hosp.complaint_id, admin)
    assert at(hosp_check["due_at"]) == utc(2026, 11, 21, 16)

    shown = await system.followup.get("/v1/followups/contact-hours/LZ", headers=admin)
    assert shown.status_code == 200, shown.text
    assert shown.json()["contact_hours"] == stored_hours
    history = await system.followup.get("/v1/followups/contact-hours/LZ/history", headers=admin)
    assert history.status_code == 200, history.text
    assert [item["version"] for item in history.json()["items"]] == [1]


async def test_a_branch_zone_intake_keeps_that_no_longer_loads_numbers_by_the_utc_day(
    system_factory: SystemFactory,
) -> None:
    """Intake numbers complaints by the branch's local day from the zone routing announced;
    a zone the host no longer loads counts days in UTC instead of failing every POST."""
    # 23:30 UTC: already the next day in Asia/Shanghai, still this one in UTC.
    system = await system_factory(clock=ManualClock(datetime(2026, 11, 23, 23, 30, tzinfo=UTC)))
    admin = token(system.intake_settings)
    intake_db = system.mongo[system.intake_settings.database_name()]
    await intake_db[announced_branches.BRANCHES].update_one(
        {"_id": announced_branches.branch_key("demo", "HOSP")},
        {"$set": {"org": "demo", "code": "HOSP", "time_zone": "Mars/Olympus_Mons", "version": 99}},
        upsert=True,
    )
    reference_numbers._branches.clear()

    created = await create_complaint(system, admin, branch="HOSP", subject="挂号系统又崩了")
    assert created["reference"] == "HOSP-20261123-0001"
