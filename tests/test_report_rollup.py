"""The report from the rollup (``intake.rollup``) tells what the single aggregation tells.

Complaints over three days go through acknowledgement (on time and late), resolution with
remedies, a reopen cycle, rejection, withdrawal and due times passing unacknowledged. The
report from the rollup's tallies (whole days) plus the complaints themselves (the edges of
the window, days changed after the watermark) must equal ``reports.live_groups``, the one
aggregation over every complaint, for every grouping, window, branch filter and a
branch-scoped caller: before the first refresh, after it, after a change the rollup has not
seen yet, and after the next refresh.
"""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

import pytest
from pymongo import AsyncMongoClient

from complaints_shared.auth import Principal
from complaints_shared.clock import ManualClock
from complaints_shared.envelope import CloudEvent
from complaints_shared.events import ComplaintAssigned, EventType, Topic
from complaints_shared.kafka import EventProducer
from complaints_shared.mongo import service_database
from complaints_shared.timing import Pacer
from intake import reports, rollup
from intake.main import create_app as create_intake_app
from intake.settings import IntakeSettings
from tests.support.http import complaint_body, token
from tests.support.system import serve, settings_for_test
from tests.support.waits import eventually

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 2, 1, 0, tzinfo=UTC)
H = timedelta(hours=1)
ADMIN = Principal(subject="a", org="demo", branches="*", roles=("admin",))
HOSP_ONLY = Principal(subject="h", org="demo", branches=("HOSP",), roles=("supervisor",))
WINDOWS = [
    (T0 - 30 * H, T0 + 100 * H),  # whole days and both edges
    (T0 + 0.5 * H, T0 + 59 * H),  # edges inside the first and the last day
    (datetime(2026, 11, 3, tzinfo=UTC), datetime(2026, 11, 4, tzinfo=UTC)),  # one whole day
    (T0, T0 + 5 * H),  # less than a day: the aggregation alone
]


async def _compare(db, now: datetime) -> int:
    """Every grouping × window × branch filter × caller agrees; how many reports used tallies."""
    compared = 0
    for principal in (ADMIN, HOSP_ONLY):
        for group_by in reports.GroupBy:
            for created_from, created_to in WINDOWS:
                for branches in ([], ["LZ"], ["HOSP", "LZ"]):
                    asked = {
                        "db": db,
                        "principal": principal,
                        "created_from": created_from,
                        "created_to": created_to,
                        "group_by": group_by,
                        "branches": branches,
                        "now": now,
                    }
                    live = await reports.live_groups(**asked)
                    live.sort(key=lambda summary: (-summary.received, str(summary.group)))
                    report = await reports.summary(**asked)
                    assert [g.model_dump() for g in report.groups] == [
                        g.model_dump() for g in live
                    ], (principal.subject, group_by, created_from, branches)
                    compared += 1
    return compared


async def test_the_rollup_report_equals_the_single_aggregation(infrastructure, monkeypatch) -> None:
    # The job reads in windows of about two complaints here, so every pass takes many reads.
    monkeypatch.setattr(rollup, "READ_BATCH", 2)
    monkeypatch.setattr(rollup, "CHANGES_WINDOW", timedelta(seconds=1))
    monkeypatch.setattr(rollup, "DAY_WINDOW", timedelta(minutes=20))
    clock = ManualClock(T0)
    settings = settings_for_test(
        IntakeSettings,
        infra=infrastructure,
        run_id=uuid.uuid4().hex[:10],
        report_rollup_interval_s=3600,  # this test refreshes when it wants
    )
    mongo = AsyncMongoClient(settings.mongodb_uri, tz_aware=True)
    db = service_database(client=mongo, settings=settings)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(mongo.close)
        client = await serve(stack, create_intake_app(settings, clock=clock), "intake")
        admin = token(settings)
        producer = EventProducer(settings=settings)
        stack.push_async_callback(producer.stop)

        async def at(moment: datetime, path: str, body: dict | None = None) -> dict:
            clock.set(moment)
            response = await client.post(path, json=body or {}, headers=admin)
            assert response.status_code in (200, 201), response.text
            return response.json()

        async def new(moment: datetime, branch: str, phone: str, **fields) -> str:
            body = complaint_body(
                branch=branch, customer={"name": "客户", "phone": phone}, **fields
            )
            return (await at(moment, "/v1/complaints", body))["id"]

        async def assign(cid: str, branch: str, at_: datetime, owner: str, fix: timedelta) -> None:
            assigned = ComplaintAssigned(
                complaint_id=cid,
                org="demo",
                branch=branch,
                department=f"{branch}:CS",
                department_name="客服",
                owner_id=owner,
                owner_name=owner,
                rule_id="r",
                rule_version=1,
                assigned_at=at_,
                acknowledge_due_at=at_ + H,
                resolve_due_at=at_ + fix,
            )
            event = CloudEvent.new(
                event_type=EventType.COMPLAINT_ASSIGNED, source="rollup-test", data=assigned
            )
            await producer.publish(event, topic=settings.topic(Topic.ROUTING))

            async def applied() -> bool:
                body = (await client.get(f"/v1/complaints/{cid}", headers=admin)).json()
                return body["acknowledge_due_at"] is not None

            await eventually(applied, what=f"assignment of {cid}")

        def resolution(cause: str, party: str, *remedies: dict) -> dict:
            return {
                "summary": "处理完毕",
                "root_cause": cause,
                "responsible_party": party,
                "remedies": list(remedies),
            }

        refund = {"type": "refund", "amount": "30.00", "currency": "CNY"}
        # Day one (2 November): on time; never acknowledged; withdrawn at another branch.
        a = await new(T0, "LZ", "13900000001", category="billing")
        await assign(a, "LZ", T0, "o1", 24 * H)
        await at(T0 + 0.5 * H, f"/v1/complaints/{a}/acknowledge")
        await at(
            T0 + 6 * H,
            f"/v1/complaints/{a}/resolve",
            resolution("billing_error", "company", refund),
        )
        b = await new(T0 + 2 * H, "LZ", "13900000002", category="network")
        await assign(b, "LZ", T0 + 2 * H, "o2", 24 * H)
        c = await new(T0 + 3 * H, "HOSP", "13900000003")
        await at(T0 + 4 * H, f"/v1/complaints/{c}/withdraw")
        # Day two: late, reopened and resolved again; rejected after its due time.
        d = await new(T0 + 24 * H, "LZ", "13900000004", category="network")
        await assign(d, "LZ", T0 + 24 * H, "o1", 10 * H)
        await at(T0 + 27 * H, f"/v1/complaints/{d}/acknowledge")
        compensation = {"type": "compensation", "amount": "100.00", "currency": "CNY"}
        await at(
            T0 + 40 * H,
            f"/v1/complaints/{d}/resolve",
            resolution("network_fault", "third_party", compensation),
        )
        await at(T0 + 41 * H, f"/v1/complaints/{d}/reopen", {"reason": "仍然断网"})
        e = await new(T0 + 30 * H, "HOSP", "13900000005")
        await assign(e, "HOSP", T0 + 30 * H, "h1", 5 * H)
        await at(
            T0 + 37 * H,
            f"/v1/complaints/{e}/reject",
            {"reason_code": "out_of_scope", "explanation": "非本院业务"},
        )
        await at(
            T0 + 45 * H,
            f"/v1/complaints/{d}/resolve",
            resolution("network_fault", "company", {"type": "apology"}),
        )
        # Day three: A's customer again; still open past its due times.
        f = await new(T0 + 50 * H, "LZ", "13900000001", category="billing")
        await assign(f, "LZ", T0 + 50 * H, "o2", 5 * H)

        now = T0 + 60 * H
        clock.set(now)
        assert await _compare(db, now) == 2 * 6 * 4 * 3  # no rollup yet: the aggregation
        # The (branch, day)s with complaints, but today's: still receiving complaints, it
        # is counted from them until it is over.
        paced = Pacer(share=0.5)
        assert await rollup.refresh(db=db, now=now, pacer=paced) == 4
        assert await rollup.watermark(db=db) == now - rollup.ROLLUP_LAG
        assert await db[rollup.TALLIES].count_documents({"dimension": "branch"}) == 4
        today = datetime(2026, 11, 4, tzinfo=UTC)
        assert await rollup.changed_days(db=db, org="demo") == {("LZ", today)}
        assert await rollup.floor(db=db, org="demo", field="created_at") == T0
        assert await rollup.floor(db=db, org="demo", field="acknowledge_due_at") == T0 + H
        assert await rollup.known_branches(db=db, org="demo") == ["HOSP", "LZ"]
        await _compare(db, now)

        # A change the rollup has not seen: its day is counted from the complaints.
        await at(now + H, f"/v1/complaints/{a}/reopen", {"reason": "又扣费了"})
        await _compare(db, now + 2 * H)
        # A's branch and day, and those of complaints whose assignment intake's projection
        # stamped with the wall clock, far after this test's clock.
        assert await rollup.refresh(db=db, now=now + 2 * H) >= 1
        first_day = {
            "branch": "LZ",
            "dimension": "branch",
            "day": datetime(2026, 11, 2, tzinfo=UTC),
        }
        retallied = await db[rollup.TALLIES].find_one(first_day)
        assert retallied["groups"][0]["tally"]["open"] == 2  # A reopened, B never acknowledged
        await _compare(db, now + 2 * H)

        # Changed again soon after its re-tally: the day is noted, not read whole again until
        # RETALLY_AFTER has passed, and the report counts it from its complaints meanwhile.
        # Intake's projection stamped the assignments with the wall clock, weeks after this
        # test's: brought back before the watermark, so that only the change below is after it.
        await db["complaints"].update_many(
            {"updated_at": {"$gt": now + 3 * H}}, {"$set": {"updated_at": now + H}}
        )
        soon = now + 2 * H + timedelta(minutes=1)
        clock.set(soon)
        await at(
            soon,
            f"/v1/complaints/{a}/resolve",
            resolution("billing_error", "company", {"type": "apology"}),
        )
        assert await rollup.refresh(db=db, now=soon + rollup.ROLLUP_LAG) == 0
        assert ("LZ", first_day["day"]) in await rollup.changed_days(db=db, org="demo")
        assert await db[rollup.TALLIES].find_one(first_day) == retallied
        await _compare(db, soon + rollup.ROLLUP_LAG)
        cooled = now + 2 * H + rollup.RETALLY_AFTER
        assert await rollup.refresh(db=db, now=cooled) >= 1
        assert ("LZ", first_day["day"]) not in await rollup.changed_days(db=db, org="demo")
        assert (await db[rollup.TALLIES].find_one(first_day))["tallied_at"] == cooled
        await _compare(db, cooled)
        # A day re-tallied long ago and unchanged since is forgotten.
        forgotten = {"_id": "demo|LZ|2026-10-01", "org": "demo", "branch": "LZ"}
        await db[rollup.DAYS_CHANGED].insert_one(
            {
                **forgotten,
                "day": datetime(2026, 10, 1, tzinfo=UTC),
                "changed": False,
                "tallied_at": cooled - rollup.RETALLY_AFTER,
            }
        )
        await rollup.refresh(db=db, now=cooled + timedelta(seconds=1))
        assert await db[rollup.DAYS_CHANGED].find_one({"_id": forgotten["_id"]}) is None

        # Today is re-tallied at the first pass after it ends.
        assert ("LZ", today) in await rollup.changed_days(db=db, org="demo")
        over = today + timedelta(days=1, minutes=1)
        assert await rollup.refresh(db=db, now=over) >= 1
        assert ("LZ", today) not in await rollup.changed_days(db=db, org="demo")
        assert (await db[rollup.TALLIES].find_one({"branch": "LZ", "day": today}))[
            "tallied_at"
        ] == over
        await _compare(db, over)

        # Tallies of an earlier version are not trusted: the aggregation answers until the
        # next pass has built everything again.
        await db[rollup.STATE].update_one({"_id": rollup.WATERMARK_ID}, {"$set": {"version": 1}})
        assert await rollup.watermark(db=db) is None
        assert await rollup.floor(db=db, org="demo", field="created_at") is None
        await _compare(db, now + 3 * H)
        assert await rollup.refresh(db=db, now=now + 3 * H) == 5
        await _compare(db, now + 3 * H)
