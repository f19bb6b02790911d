"""The report from the rollup (``intake.rollup``) tells what the single aggregation tells.

Complaints over three days go through acknowledgement (on time and late), resolution with
remedies, a reopen cycle, rejection, withdrawal and due times passing unacknowledged. The
report from the rollup's tallies plus the corrections for complaints changed after the
watermark and the window's edges must equal ``reports.live_groups``, the one aggregation over
every complaint, for every grouping, window, branch filter and a branch-scoped caller: before
the first pass, after it, after a change the rollup has not seen yet, after the next pass,
while a pass broken off is pending and after it is applied again, after an event consumed
late (intake down while routing moved a complaint of a day long over), and after the audit of
a day over counts a change committed late. The tallies then equal a build from the complaints.
Two builds at once leave the later one's tallies, and a change whose write waited until a
pass had read past its stamp is stamped again and counted, whatever day it belongs to.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import AutoReconnect

from complaints_shared import aggregate
from complaints_shared.auth import Principal
from complaints_shared.clock import ManualClock
from complaints_shared.envelope import CloudEvent
from complaints_shared.events import ComplaintAssigned, ComplaintReassigned, EventType, Topic
from complaints_shared.kafka import EventProducer
from complaints_shared.mongo import service_database
from complaints_shared.timing import Pacer
from intake import reports, rollup
from intake import store as intake_store
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
# ADMIN asks with each; HOSP_ONLY with the two that name no other branch.
BRANCH_FILTERS = ([], ["LZ"], ["HOSP"], ["HOSP", "LZ"])
WINDOWS = [
    (T0 - 30 * H, T0 + 100 * H),  # whole days and both edges
    (T0 + 0.5 * H, T0 + 59 * H),  # edges inside the first and the last day
    # Edges whose shorter side is outside the window: the first day's tally less A and B,
    # the second's less its evening.
    (T0 + 2.5 * H, T0 + 36 * H),
    (datetime(2026, 11, 3, tzinfo=UTC), datetime(2026, 11, 4, tzinfo=UTC)),  # one whole day
    (T0, T0 + 5 * H),  # less than a day: the aggregation alone
    (datetime(2026, 11, 4, tzinfo=UTC), T0 + 100 * H),  # today, to beyond the present
    # Edges in the millisecond A and B were registered in, given with microseconds (which
    # the database drops): the tallies' window test and the server's read of the rows
    # disagreed about them until 5 December.
    (T0 + timedelta(microseconds=500), T0 + 59 * H),
    (T0 - 30 * H, T0 + 2 * H + timedelta(microseconds=500)),
]


@dataclass
class _Intake:
    """Intake on its own with a manual clock; its rollup job passed once and waits an hour,
    so only the test's passes (which take no lease) come after that one."""

    settings: IntakeSettings
    db: AsyncDatabase
    client: httpx.AsyncClient
    admin: dict
    clock: ManualClock

    async def at(self, moment: datetime, path: str, body: dict | None = None) -> dict:
        """POST ``body`` to ``path`` as an admin, the clock set to ``moment``."""
        self.clock.set(moment)
        response = await self.client.post(path, json=body or {}, headers=self.admin)
        assert response.status_code in (200, 201), response.text
        return response.json()


@asynccontextmanager
async def _intake_alone(infrastructure) -> AsyncIterator[_Intake]:
    clock = ManualClock(T0)
    settings = settings_for_test(
        IntakeSettings,
        infra=infrastructure,
        run_id=uuid.uuid4().hex[:10],
        report_rollup_interval_s=3600,  # the tests refresh when they want
    )
    mongo = AsyncMongoClient(settings.mongodb_uri, tz_aware=True)
    db = service_database(client=mongo, settings=settings)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(mongo.close)
        client = await serve(stack, create_intake_app(settings, clock=clock), "intake")
        await eventually(lambda: rollup.state(db=db), what="the service's first pass")
        yield _Intake(settings=settings, db=db, client=client, admin=token(settings), clock=clock)


async def _compare(db, now: datetime) -> int:
    """Every grouping × window × branch filter × caller agrees; how many reports used tallies."""
    compared = 0
    for principal in (ADMIN, HOSP_ONLY):
        for group_by in reports.GroupBy:
            for created_from, created_to in WINDOWS:
                for branches in BRANCH_FILTERS:
                    if not all(principal.can_see(org="demo", branch=b) for b in branches):
                        continue  # naming another branch is a 404 (tests/test_access_control.py)
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
    # The job reads in windows of about two complaints here, so every pass takes many reads,
    # and writes its journal a change per document.
    monkeypatch.setattr(rollup, "READ_BATCH", 2)
    monkeypatch.setattr(rollup, "CHANGES_WINDOW", timedelta(seconds=1))
    monkeypatch.setattr(rollup, "JOURNAL_CHUNK", 1)
    async with _intake_alone(infrastructure) as intake, AsyncExitStack() as stack:
        clock, settings, db, client, admin = (
            intake.clock,
            intake.settings,
            intake.db,
            intake.client,
            intake.admin,
        )
        at = intake.at
        producer = EventProducer(settings=settings)
        stack.push_async_callback(producer.stop)

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
        # no rollup: the aggregation
        assert await _compare(db, now) == (4 + 2) * len(reports.GroupBy) * len(WINDOWS)
        # The build tallies every (branch, day) with complaints, today's too, and keeps a row
        # per complaint.
        paced = Pacer(share=0.5)
        assert await rollup.refresh(db=db, now=now, pacer=paced) == 6
        assert await rollup.watermark(db=db) == now - rollup.ROLLUP_LAG
        assert await db[rollup.TALLIES].count_documents({"dimension": "branch"}) == 5
        assert await db[rollup.ROWS].count_documents({}) == 6
        assert await rollup.floor(db=db, org="demo", field="created_at") == T0
        assert await rollup.floor(db=db, org="demo", field="acknowledge_due_at") == T0 + H
        assert await rollup.known_branches(db=db, org="demo") == ["HOSP", "LZ"]
        await _compare(db, now)
        # A window from a midnight to the present is counted from the tallies alone.
        today = datetime(2026, 11, 4, tzinfo=UTC)
        await _today_from_tallies(db, monkeypatch, today=today, now=now)

        # A change the rollup has not seen: the report takes its row out and counts it now.
        await at(now + H, f"/v1/complaints/{a}/reopen", {"reason": "又扣费了"})
        await _compare(db, now + 2 * H)
        # The next pass moves A's day on by that change alone.
        assert await rollup.refresh(db=db, now=now + 2 * H) == 1
        first_day = {
            "branch": "LZ",
            "dimension": "branch",
            "day": datetime(2026, 11, 2, tzinfo=UTC),
        }
        moved = await db[rollup.TALLIES].find_one(first_day)
        assert moved["groups"][0]["tally"]["open"] == 2  # A reopened, B never acknowledged
        seq = (await rollup.state(db=db))["seq"]
        assert moved["seq"] == seq
        await _compare(db, now + 2 * H)
        # A note changes nothing a report counts: no pass is applied for it.
        await at(now + 2 * H, f"/v1/complaints/{b}/notes", {"text": "客户来电催办"})
        assert await rollup.refresh(db=db, now=now + 3 * H) == 0
        assert (await rollup.state(db=db))["seq"] == seq

        # A pass broken off after some of its writes: reports read around it (from the
        # complaints), and the next pass applies it again from its journal, once.
        await at(now + 3 * H, f"/v1/complaints/{a}/resolve", resolution("billing_error", "company"))
        await at(now + 3 * H, f"/v1/complaints/{f}/acknowledge")
        written = rollup._write_tally

        async def breaks_off(**kwargs) -> None:
            if kwargs["dimension"] == "channel":
                raise ConnectionError("the database went away")
            await written(**kwargs)

        monkeypatch.setattr(rollup, "_write_tally", breaks_off)
        with pytest.raises(ConnectionError):
            await rollup.refresh(db=db, now=now + 4 * H)
        monkeypatch.setattr(rollup, "_write_tally", written)
        pending = (await rollup.state(db=db, whole=True))["pending"]
        assert pending["seq"] == seq + 1
        assert await db[rollup.JOURNAL].count_documents({"seq": seq + 1}) == 2
        monkeypatch.setattr(reports, "TALLY_WAIT_S", 0)
        await _compare(db, now + 4 * H)
        assert await rollup.refresh(db=db, now=now + 5 * H) == 0
        state = await rollup.state(db=db, whole=True)
        assert state["seq"] == seq + 1 and "pending" not in state
        assert state["until"] == pending["settled"]["until"] + H
        assert await db[rollup.JOURNAL].count_documents({}) == 0
        await _compare(db, now + 5 * H)
        # An event consumed late: routing moved B to another owner ten minutes before the
        # last pass, and intake, down or behind meanwhile, projects it only now. The record
        # changed now, so the reports and the next pass read it; B's day, audited long ago,
        # is not read again.
        present = now + 5 * H + timedelta(seconds=30)
        clock.set(present)
        moved_at = now + 5 * H - timedelta(minutes=10)
        reassigned = ComplaintReassigned(
            complaint_id=b,
            org="demo",
            branch="LZ",
            from_department="LZ:CS",
            from_owner_id="o2",
            department="LZ:CS",
            department_name="客服",
            owner_id="o3",
            owner_name="o3",
            reason="workload",
            reassigned_by="supervisor",
            reassigned_at=moved_at,
        )
        event = CloudEvent.new(
            event_type=EventType.COMPLAINT_REASSIGNED, source="rollup-test", data=reassigned
        ).model_copy(update={"time": moved_at})
        await producer.publish(event, topic=settings.topic(Topic.ROUTING))

        async def reassigned_applied() -> bool:
            body = (await client.get(f"/v1/complaints/{b}", headers=admin)).json()
            return body["assignment"]["owner_id"] == "o3"

        await eventually(reassigned_applied, what=f"reassignment of {b}")
        await _compare(db, present)
        assert await rollup.refresh(db=db, now=present + timedelta(seconds=30)) == 1
        await _compare(db, present + timedelta(seconds=30))
        # A change committed late: stamped before the watermark, written after the pass that
        # set it had read. No pass reads it; the audit of its day, once over, counts it.
        late = (await rollup.watermark(db=db)) - H
        await db["complaints"].update_one(
            {"_id": b},
            {
                "$set": {"status": "withdrawn", "finished_at": late, "updated_at": late},
                "$inc": {"version": 1},
            },
        )
        assert await rollup.refresh(db=db, now=now + 5 * H + timedelta(minutes=1)) == 0
        await db[rollup.STATE].update_one(
            {"_id": rollup.WATERMARK_ID}, {"$set": {"audited_until": T0 - timedelta(hours=1)}}
        )
        assert await rollup.refresh(db=db, now=now + 5 * H + timedelta(minutes=2)) == 1
        assert (await rollup.state(db=db))["audited_until"] == today
        await _compare(db, now + 5 * H)
        # Counted once: the tallies equal a build from the complaints.
        built = await _tallies(db)
        await db[rollup.STATE].update_one({"_id": rollup.WATERMARK_ID}, {"$set": {"version": 3}})
        assert await rollup.refresh(db=db, now=now + 5 * H) == 6
        assert await _tallies(db) == built

        # A complaint registered after the watermark, read by a pass since: its row is found
        # by registration time, taken out when it changes, and counted as it is now.
        g = await new(now + 5 * H + timedelta(minutes=1), "HOSP", "13900000007")
        assert await rollup.refresh(db=db, now=now + 5 * H + timedelta(minutes=1, seconds=10)) == 1
        assert (await rollup.watermark(db=db)) < now + 5 * H + timedelta(minutes=1)
        # Asked at a present before G's registration (G stamped by a clock running ahead):
        # today's tallies count G, a window ending at that present does not.
        await _today_from_tallies(db, monkeypatch, today=today, now=now + 5 * H)
        await at(now + 5 * H + timedelta(minutes=2), f"/v1/complaints/{g}/acknowledge")
        await _compare(db, now + 5 * H + timedelta(minutes=2))

        # A tally document of another version (a replica of the version before, building
        # anew during a rolling deploy, lists its due times as dates) is not read: the
        # aggregation answers.
        older = {"branch": "LZ", "dimension": "owner", "day": datetime(2026, 11, 2, tzinfo=UTC)}
        stored = await db[rollup.TALLIES].find_one(older)
        groups = [
            {**group, "tally": {**group["tally"], "open_resolve_due": [T0 + 5 * H]}}
            for group in stored["groups"]
        ]
        await db[rollup.TALLIES].replace_one(
            {"_id": stored["_id"]},
            {**stored, "groups": groups, "version": rollup.VERSION - 1},
        )
        await _compare(db, now + 5 * H + timedelta(minutes=2))
        await db[rollup.TALLIES].replace_one({"_id": stored["_id"]}, stored)

        # Tallies of an earlier version are not trusted: the aggregation answers until the
        # next pass has built everything again.
        await db[rollup.STATE].update_one({"_id": rollup.WATERMARK_ID}, {"$set": {"version": 1}})
        assert await rollup.watermark(db=db) is None
        assert await rollup.floor(db=db, org="demo", field="created_at") is None
        await _compare(db, now + 6 * H)
        assert await rollup.refresh(db=db, now=now + 6 * H) == 7
        await _compare(db, now + 6 * H)


async def _tallies(db) -> dict[str, list]:
    """Every tally document's groups, by id, without the pass that wrote it."""
    found = {}
    async for document in db[rollup.TALLIES].find({}):
        found[document["_id"]] = sorted(
            (
                str(group["value"]),
                {
                    k: sorted(map(str, v)) if isinstance(v, list) else v
                    for k, v in group["tally"].items()
                },
            )
            for group in document["groups"]
        )
    return found


async def _today_from_tallies(db, monkeypatch, *, today: datetime, now: datetime) -> None:
    """Windows from a midnight to the present are counted from tallies alone; one starting
    three hours into a day reads the rows of those three hours, the shorter side."""
    read_rows = []
    rows_registered = rollup.rows_registered

    async def spied(**kwargs):
        read_rows.append((kwargs["start"], kwargs["end"]))
        return await rows_registered(**kwargs)

    monkeypatch.setattr(rollup, "rows_registered", spied)
    two_days_before = today - timedelta(days=2)
    for created_from in (today, two_days_before, two_days_before + 3 * H):
        asked = {
            "db": db,
            "principal": ADMIN,
            "created_from": created_from,
            "created_to": now,
            "group_by": reports.GroupBy.BRANCH,
            "branches": [],
            "now": now,
        }
        report = await reports.summary(**asked)
        expected = await reports.live_groups(**asked)
        expected.sort(key=lambda summary: (-summary.received, str(summary.group)))
        assert [g.model_dump() for g in report.groups] == [g.model_dump() for g in expected]
    assert read_rows == [(two_days_before, two_days_before + 3 * H)]
    monkeypatch.setattr(rollup, "rows_registered", rows_registered)


async def test_a_holder_that_lost_the_lease_cannot_corrupt_the_tallies(
    infrastructure, monkeypatch
) -> None:
    """Two replicas pass at once when one's lease renewals fail and another takes the lease.
    A pass that began from a state another pass has since moved on writes nothing, and one
    applied by two holders writes each document once, never over a later pass's: the
    tallies stay what a build from the complaints says."""
    async with _intake_alone(infrastructure) as intake:
        db, at = intake.db, intake.at

        ids = [
            (await at(T0, "/v1/complaints", complaint_body(branch="LZ", customer=customer)))["id"]
            for customer in ({"name": "客户", "phone": f"1390000002{n}"} for n in range(3))
        ]
        a, b, c = (f"/v1/complaints/{cid}" for cid in ids)
        resolved = {"summary": "处理完毕", "root_cause": "billing_error"}
        assert await rollup.refresh(db=db, now=T0 + H) == 3

        async def built_alike(now: datetime) -> None:
            """The tallies equal a build from the complaints (which then stands)."""
            kept = await _tallies(db)
            await db[rollup.STATE].update_one(
                {"_id": rollup.WATERMARK_ID}, {"$set": {"version": 3}}
            )
            assert await rollup.refresh(db=db, now=now) == 3
            assert await _tallies(db) == kept

        # 1. A pass held up after reading (its holder lost the lease meanwhile) while the
        #    complaint changed again and another holder passed: it claims nothing.
        await at(T0 + 1.5 * H, f"{a}/acknowledge")
        reading, go_on = asyncio.Event(), asyncio.Event()
        rows_of = rollup.rows_of

        async def held_rows_of(**kwargs):
            if not reading.is_set():
                reading.set()
                await go_on.wait()
            return await rows_of(**kwargs)

        monkeypatch.setattr(rollup, "rows_of", held_rows_of)
        stale = asyncio.create_task(rollup.refresh(db=db, now=T0 + 2 * H))
        await asyncio.wait_for(reading.wait(), timeout=10)
        await at(T0 + 2.5 * H, f"{a}/resolve", resolved)
        assert await rollup.refresh(db=db, now=T0 + 3 * H) == 1
        passed = (await rollup.state(db=db, whole=True))["seq"]
        go_on.set()
        with pytest.raises(rollup.PassOvertaken):
            await stale
        state = await rollup.state(db=db, whole=True)
        assert state["seq"] == passed and state["until"] == T0 + 3 * H - rollup.ROLLUP_LAG
        monkeypatch.setattr(rollup, "rows_of", rows_of)
        assert await rollup.refresh(db=db, now=T0 + 4 * H) == 0
        await built_alike(T0 + 4 * H)

        # 2. A pass held up half-way through its writes; another holder applies it again from
        #    its journal and passes once more on the same day; the first then writes the rest.
        await at(T0 + 4.5 * H, f"{b}/acknowledge")
        passed = (await rollup.state(db=db, whole=True))["seq"]  # the build began anew
        writing, go_on = asyncio.Event(), asyncio.Event()
        write_tally = rollup._write_tally

        async def held_write_tally(**kwargs) -> None:
            if kwargs["dimension"] == "category" and not writing.is_set():
                writing.set()
                await go_on.wait()
            await write_tally(**kwargs)

        monkeypatch.setattr(rollup, "_write_tally", held_write_tally)
        slow = asyncio.create_task(rollup.refresh(db=db, now=T0 + 5 * H))
        await asyncio.wait_for(writing.wait(), timeout=10)
        assert (await rollup.state(db=db, whole=True))["pending"]["seq"] == passed + 1
        assert await rollup.refresh(db=db, now=T0 + 6 * H) == 0  # applies the pending pass
        await at(T0 + 6.5 * H, f"{c}/resolve", resolved)
        assert await rollup.refresh(db=db, now=T0 + 7 * H) == 1
        go_on.set()
        await slow
        state = await rollup.state(db=db, whole=True)
        assert state["seq"] == passed + 2 and "pending" not in state
        monkeypatch.setattr(rollup, "_write_tally", write_tally)
        await built_alike(T0 + 7 * H)


async def test_a_build_that_lost_its_claim_cannot_corrupt_the_tallies(
    infrastructure, monkeypatch
) -> None:
    """Two replicas build at once: the first pass of a new rollup version takes minutes over
    a large database, and a holder whose lease renewals failed meanwhile goes on while
    another takes the lease and builds too. The later claim stands: the earlier build, out
    of date, may still write, but never over the later one's documents, and cannot set the
    state; the report then agrees with the complaints."""
    async with _intake_alone(infrastructure) as intake:
        db, at = intake.db, intake.at
        ids = [
            (await at(moment, "/v1/complaints", complaint_body(branch=branch, customer=who)))["id"]
            for moment, branch, who in (
                (T0, "LZ", {"name": "客户甲", "phone": "13900000031"}),
                (T0 + H, "HOSP", {"name": "客户乙", "phone": "13900000032"}),
                (T0 + 25 * H, "LZ", {"name": "客户丙", "phone": "13900000033"}),
            )
        ]
        assert await rollup.refresh(db=db, now=T0 + 26 * H) == 3
        # A new version: its first pass builds everything again.
        await db[rollup.STATE].update_one({"_id": rollup.WATERMARK_ID}, {"$set": {"version": 3}})

        stale_at, later_at = T0 + 27 * H, T0 + 28 * H
        writing = {stale_at: asyncio.Event(), later_at: asyncio.Event()}
        go_on = {stale_at: asyncio.Event(), later_at: asyncio.Event()}
        write_tally = rollup._write_tally

        async def held_write_tally(**kwargs) -> None:
            # Each build stops before its first tally: it has claimed and emptied the tallies.
            now = kwargs["now"]
            if not writing[now].is_set():
                writing[now].set()
                await go_on[now].wait()
            await write_tally(**kwargs)

        monkeypatch.setattr(rollup, "_write_tally", held_write_tally)
        stale = asyncio.create_task(rollup.refresh(db=db, now=stale_at))
        await asyncio.wait_for(writing[stale_at].wait(), timeout=10)
        # A change the stale build did not read; the later one reads it.
        await at(stale_at + 0.5 * H, f"/v1/complaints/{ids[0]}/acknowledge")
        later = asyncio.create_task(rollup.refresh(db=db, now=later_at))
        await asyncio.wait_for(writing[later_at].wait(), timeout=10)
        claimed = await db[rollup.STATE].find_one({"_id": rollup.WATERMARK_ID})

        # The stale build writes everything it read first, then finds its claim gone.
        go_on[stale_at].set()
        with pytest.raises(rollup.PassOvertaken):
            await stale
        assert (await rollup.state(db=db)) is None  # nobody has built this version yet
        go_on[later_at].set()
        assert await later == 3
        monkeypatch.setattr(rollup, "_write_tally", write_tally)

        state = await rollup.state(db=db, whole=True)
        assert (
            state["seq"] == claimed["build_seq"] and state["until"] == later_at - rollup.ROLLUP_LAG
        )
        assert {d["seq"] async for d in db[rollup.TALLIES].find({})} == {state["seq"]}
        assert {d["seq"] async for d in db[rollup.ROWS].find({})} == {state["seq"]}
        assert await _compare(db, later_at) > 0
        kept = await _tallies(db)
        await db[rollup.STATE].update_one({"_id": rollup.WATERMARK_ID}, {"$set": {"version": 3}})
        assert await rollup.refresh(db=db, now=later_at + H) == 3
        assert await _tallies(db) == kept


@pytest.mark.parametrize("answer_lost", [False, True], ids=["answered", "answer-lost"])
async def test_a_complaint_whose_insert_committed_late_is_counted(
    infrastructure, monkeypatch, answer_lost: bool
) -> None:
    """A registration whose insert waited (a database failing over, a slow request under
    an Idempotency-Key) until a pass had read past its stamp, the time the request began:
    no pass read it again, and the report counted it only once something else changed it
    or its day was audited, while the list showed it. An insert committed late is stamped
    again with its commit time, as a late change is. Scaled down as the test below."""
    monkeypatch.setattr(rollup, "ROLLUP_LAG", timedelta(seconds=0.05))
    monkeypatch.setattr(aggregate, "LATE_COMMIT_S", 0.1)
    async with _intake_alone(infrastructure) as intake:
        db, at, clock = intake.db, intake.at, intake.clock
        await at(T0, "/v1/complaints", complaint_body(branch="LZ"))
        assert await rollup.refresh(db=db, now=T0 + 25 * H) == 1

        writing, go_on = asyncio.Event(), asyncio.Event()
        insert_batched = intake_store.insert_batched

        async def held_insert(*args, **kwargs):
            if writing.is_set():
                return await insert_batched(*args, **kwargs)
            writing.set()
            await go_on.wait()
            answer = await insert_batched(*args, **kwargs)
            if answer_lost:  # committed; the retry's insert is refused on its own id
                raise AutoReconnect("connection closed after the insert (injected)")
            return answer

        monkeypatch.setattr(intake_store, "insert_batched", held_insert)
        stamped = T0 + 26 * H
        clock.set(stamped)
        registering = asyncio.create_task(
            intake.client.post(
                "/v1/complaints",
                json=complaint_body(branch="LZ", subject="营业厅排队两小时无人处理"),
                headers=intake.admin,
            )
        )
        await asyncio.wait_for(writing.wait(), timeout=10)
        assert await rollup.refresh(db=db, now=stamped + timedelta(seconds=0.1)) == 0
        await asyncio.sleep(0.3)
        go_on.set()
        answered = await registering
        assert answered.status_code == 201, answered.text
        monkeypatch.setattr(intake_store, "insert_batched", insert_batched)

        assert await rollup.refresh(db=db, now=stamped + timedelta(seconds=2)) == 1
        assert await _compare(db, stamped + timedelta(seconds=2)) > 0
        stored = await db["complaints"].find_one({"_id": answered.json()["id"]})
        assert stored["updated_at"] > stamped + timedelta(seconds=0.3)
        # Its search posting stands: a retry refused on its own submission claim was taken
        # for a resubmission of itself, which dropped it.
        found = await intake.client.get(
            "/v1/complaints", params={"q": "排队两小时"}, headers=intake.admin
        )
        assert [item["id"] for item in found.json()["items"]] == [stored["_id"]]


async def test_a_change_committed_late_on_an_audited_day_is_counted(
    infrastructure, monkeypatch
) -> None:
    """An acknowledgement of a complaint of a day already audited, whose write waited (a
    database failing over, say) until a pass had read past its stamp: no pass would read it
    and no audit would come again, so the report would never count it. The kernel stamps a
    change committed late again with its commit time, and the next pass counts it. The
    intervals are scaled down: the rollup's lag to 0.05 s, a late commit to 0.1 s."""
    monkeypatch.setattr(rollup, "ROLLUP_LAG", timedelta(seconds=0.05))
    monkeypatch.setattr(aggregate, "LATE_COMMIT_S", 0.1)
    async with _intake_alone(infrastructure) as intake:
        db, at, clock = intake.db, intake.at, intake.clock
        complaint = await at(T0, "/v1/complaints", complaint_body(branch="LZ"))
        assert await rollup.refresh(db=db, now=T0 + 25 * H) == 1
        assert (await rollup.state(db=db))["audited_until"] == T0 + 23 * H  # 3 November

        writing, go_on = asyncio.Event(), asyncio.Event()
        update_and_read = aggregate.update_and_read

        async def held_update_and_read(*args, **kwargs):
            if not writing.is_set():
                writing.set()
                await go_on.wait()
            return await update_and_read(*args, **kwargs)

        monkeypatch.setattr(aggregate, "update_and_read", held_update_and_read)
        stamped = T0 + 26 * H
        clock.set(stamped)
        acknowledged = asyncio.create_task(
            intake.client.post(
                f"/v1/complaints/{complaint['id']}/acknowledge", json={}, headers=intake.admin
            )
        )
        await asyncio.wait_for(writing.wait(), timeout=10)
        # A pass reads past the stamp while the write waits.
        assert await rollup.refresh(db=db, now=stamped + timedelta(seconds=0.1)) == 0
        await asyncio.sleep(0.3)
        go_on.set()
        answered = await acknowledged
        assert answered.status_code == 200, answered.text
        monkeypatch.setattr(aggregate, "update_and_read", update_and_read)

        assert await rollup.refresh(db=db, now=stamped + timedelta(seconds=2)) == 1
        assert await _compare(db, stamped + timedelta(seconds=2)) > 0
        stored = await db["complaints"].find_one({"_id": complaint["id"]})
        assert stored["updated_at"] > stamped + timedelta(seconds=0.3)
        # The answer is the record as stored.
        assert datetime.fromisoformat(answered.json()["updated_at"]) == stored["updated_at"]


class _HeldAfterFirstDay:
    """A build's pacer that holds it once the first day's tallies are rebuilt."""

    def __init__(self, db: AsyncDatabase, version: int) -> None:
        self.db, self.version = db, version
        self.held, self.go_on = asyncio.Event(), asyncio.Event()

    async def pause(self) -> None:
        if await self.db[rollup.TALLIES].count_documents({"version": self.version}):
            self.held.set()
            await self.go_on.wait()


async def test_while_a_new_rollup_version_builds_a_replica_of_the_one_before_counts_from_complaints(
    infrastructure, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rolling deploy raises ``rollup.VERSION``; the new replica's build drops the tallies
    and writes them day by day. A replica still on the version before trusted its state
    and read each day not rebuilt yet as a day without complaints: 3 November received 0,
    of 3 on record. While a build is under way (or broken off) no replica reads the
    tallies: each answers from the complaints."""
    async with _intake_alone(infrastructure) as intake:
        for day in range(2):
            for n in range(3):
                customer = {"name": f"客{day}{n}", "phone": f"+86 139-0000-{3000 + 10 * day + n}"}
                await intake.at(
                    T0 + day * 24 * H + n * H,
                    "/v1/complaints",
                    complaint_body(customer=customer, subject=f"断网{day}{n}", description="三天"),
                )
        now = T0 + 50 * H
        intake.clock.set(now)
        await rollup.refresh(db=intake.db, now=now)
        before = rollup.VERSION
        asked = {
            "db": intake.db,
            "principal": ADMIN,
            "group_by": reports.GroupBy.BRANCH,
            "branches": [],
            "now": now,
        }
        days = [
            (datetime(2026, 11, 2, tzinfo=UTC), datetime(2026, 11, 3, tzinfo=UTC)),
            (datetime(2026, 11, 3, tzinfo=UTC), datetime(2026, 11, 4, tzinfo=UTC)),
        ]

        monkeypatch.setattr(rollup, "VERSION", before + 1)  # the new replica builds
        pacer = _HeldAfterFirstDay(intake.db, version=before + 1)
        build = asyncio.create_task(rollup.refresh(db=intake.db, now=now, pacer=pacer))
        try:
            await asyncio.wait_for(pacer.held.wait(), 20)
            monkeypatch.setattr(rollup, "VERSION", before)  # a replica of the version before
            assert await rollup.state(db=intake.db) is None
            for created_from, created_to in days:
                report = await asyncio.wait_for(
                    reports.summary(created_from=created_from, created_to=created_to, **asked), 5
                )
                assert [(g.group, g.received) for g in report.groups] == [("LZ", 3)]
        finally:
            pacer.go_on.set()
            monkeypatch.setattr(rollup, "VERSION", before + 1)
            await build
        assert (await rollup.state(db=intake.db))["version"] == before + 1  # built, trusted
