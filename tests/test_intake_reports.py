"""Report figures computed in MongoDB, checked against a hand-computed fixture.

Only intake runs here: the test plays routing and follow-up by publishing their
events, so every due time and outcome is exactly the one written below.
"""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

import pytest

from complaints_shared.clock import ManualClock
from complaints_shared.envelope import CloudEvent
from complaints_shared.events import (
    ComplaintAssigned,
    EventData,
    EventType,
    FollowupCompleted,
    FollowupOutcome,
    Topic,
)
from complaints_shared.kafka import EventProducer
from intake import reports
from intake.main import create_app as create_intake_app
from intake.settings import IntakeSettings
from tests.support.http import complaint_body, token
from tests.support.system import serve, settings_for_test
from tests.support.waits import eventually

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 2, 1, 0, tzinfo=UTC)  # Monday 09:00 in Asia/Shanghai
H = timedelta(hours=1)


async def test_summary_report_matches_the_hand_computed_figures(infrastructure) -> None:
    clock = ManualClock(T0)
    settings = settings_for_test(IntakeSettings, infra=infrastructure, run_id=uuid.uuid4().hex[:10])
    async with AsyncExitStack() as stack:
        client = await serve(stack, create_intake_app(settings, clock=clock), "intake")
        admin = token(settings)
        producer = EventProducer(settings=settings)
        stack.push_async_callback(producer.stop)

        async def at(moment: datetime, method: str, path: str, body: dict | None = None) -> dict:
            clock.set(moment)
            response = await client.request(method, path, json=body, headers=admin)
            assert response.status_code in (200, 201), response.text
            return response.json()

        async def publish(event_type: EventType, topic: Topic, data: EventData) -> None:
            event = CloudEvent.new(event_type=event_type, source="report-test", data=data)
            await producer.publish(event, topic=settings.topic(topic))

        async def assign(cid: str, branch: str, received: datetime, ack: timedelta, fix: timedelta):
            await publish(
                EventType.COMPLAINT_ASSIGNED,
                Topic.ROUTING,
                ComplaintAssigned(
                    complaint_id=cid,
                    org="demo",
                    branch=branch,
                    department=f"{branch}:CS",
                    department_name="客服",
                    owner_id="o1",
                    owner_name="甲",
                    rule_id="r",
                    rule_version=1,
                    assigned_at=received,
                    acknowledge_due_at=received + ack,
                    resolve_due_at=received + fix,
                ),
            )

            async def applied() -> bool:
                body = (await client.get(f"/v1/complaints/{cid}", headers=admin)).json()
                return body["acknowledge_due_at"] is not None

            await eventually(applied, what=f"assignment of {cid}")

        def new(branch: str, phone: str, subject: str) -> dict:
            return complaint_body(
                branch=branch, subject=subject, customer={"name": "客户", "phone": phone}
            )

        # A: acknowledged and resolved on time, satisfied → closed.
        a = (await at(T0, "POST", "/v1/complaints", new("LZ", "13900000001", "A")))["id"]
        await assign(a, "LZ", T0, H, 24 * H)
        await at(T0 + 0.5 * H, "POST", f"/v1/complaints/{a}/acknowledge", {})
        await at(
            T0 + 10 * H,
            "POST",
            f"/v1/complaints/{a}/resolve",
            {
                "summary": "退费",
                "root_cause": "billing_error",
                "responsible_party": "company",
                "remedies": [{"type": "refund", "amount": "30.00"}, {"type": "apology"}],
            },
        )
        # B: acknowledged and resolved late, unsatisfied → reopened.
        b = (await at(T0 + H, "POST", "/v1/complaints", new("LZ", "13900000002", "B")))["id"]
        await assign(b, "LZ", T0 + H, H, 24 * H)
        await at(T0 + 3 * H, "POST", f"/v1/complaints/{b}/acknowledge", {})
        await at(
            T0 + 49 * H,
            "POST",
            f"/v1/complaints/{b}/resolve",
            {
                "summary": "补偿",
                "root_cause": "network_fault",
                "responsible_party": "third_party",
                "remedies": [{"type": "compensation", "amount": "100.00", "currency": "CNY"}],
            },
        )
        # C: never acknowledged, both due times passed, rejected.
        c = (await at(T0 + 2 * H, "POST", "/v1/complaints", new("LZ", "13900000003", "C")))["id"]
        await assign(c, "LZ", T0 + 2 * H, H, 24 * H)
        await at(
            T0 + 30 * H,
            "POST",
            f"/v1/complaints/{c}/reject",
            {"reason_code": "out_of_scope", "explanation": "非本公司业务"},
        )
        # D: another branch, withdrawn, never assigned.
        d = (await at(T0 + 2 * H, "POST", "/v1/complaints", new("HOSP", "13900000004", "D")))["id"]
        await at(T0 + 4 * H, "POST", f"/v1/complaints/{d}/withdraw", {})
        # E: A's customer again (repeat), acknowledged and resolved on time.
        e = (await at(T0 + 5 * H, "POST", "/v1/complaints", new("LZ", "13900000001", "E")))["id"]
        await assign(e, "LZ", T0 + 5 * H, 100 * H, 200 * H)
        await at(T0 + 6 * H, "POST", f"/v1/complaints/{e}/acknowledge", {})
        await at(
            T0 + 9 * H,
            "POST",
            f"/v1/complaints/{e}/resolve",
            {
                "summary": "退费",
                "root_cause": "billing_error",
                "responsible_party": "company",
                "remedies": [{"type": "refund", "amount": "12.50", "currency": "CNY"}],
            },
        )
        for cid, outcome, score in [
            (a, FollowupOutcome.SATISFIED, 5),
            (b, FollowupOutcome.UNSATISFIED, 2),
        ]:
            await publish(
                EventType.FOLLOWUP_COMPLETED,
                Topic.FOLLOWUP,
                FollowupCompleted(
                    complaint_id=cid,
                    org="demo",
                    branch="LZ",
                    followup_id=f"{cid}:r1:1",
                    resolution_number=1,
                    outcome=outcome,
                    score=score,
                    completed_at=T0 + 60 * H,
                ),
            )

        async def outcomes_applied() -> bool:
            statuses = [
                (await client.get(f"/v1/complaints/{cid}", headers=admin)).json()["status"]
                for cid in (a, b)
            ]
            return statuses == ["closed", "reopened"]

        await eventually(outcomes_applied, what="follow-up outcomes applied")
        clock.set(T0 + 72 * H)
        report = (
            await client.get(
                "/v1/reports/summary",
                params={
                    "from": T0.isoformat(),
                    "to": (T0 + 24 * H).isoformat(),
                    "group_by": "branch",
                },
                headers=admin,
            )
        ).json()

    groups = {group["group"]: group for group in report["groups"]}
    lz, hosp = groups["LZ"], groups["HOSP"]
    assert (lz["received"], lz["open"], lz["resolved"], lz["closed"]) == (4, 1, 3, 1)
    assert (lz["rejected"], lz["withdrawn"]) == (1, 0)
    assert lz["acknowledge_on_time_pct"] == 50.0  # A, E on time; B late; C missed
    assert lz["resolve_on_time_pct"] == 50.0  # A, E on time; B late; C missed
    assert lz["time_to_acknowledge"] == {"median_s": 3600.0, "p90_s": 7200.0}
    assert lz["time_to_resolve"] == {"median_s": 36000.0, "p90_s": 172800.0}
    assert lz["reopen_rate_pct"] == 33.33  # B of A, B, E
    assert lz["repeat_share_pct"] == 25.0  # E of four
    assert lz["satisfaction_average"] == 3.5
    assert lz["satisfaction_distribution"] == {"2": 1, "5": 1}
    assert lz["top_root_causes"] == [
        {"value": "billing_error", "count": 2},
        {"value": "network_fault", "count": 1},
    ]
    assert lz["top_responsible_parties"] == [
        {"value": "company", "count": 2},
        {"value": "third_party", "count": 1},
    ]
    remedies = {(r["type"], r["currency"]): (r["count"], r["total_amount"]) for r in lz["remedies"]}
    assert remedies == {
        ("refund", "CNY"): (2, "42.50"),
        ("compensation", "CNY"): (1, "100.00"),
        ("apology", None): (1, "0.00"),
    }
    assert (hosp["received"], hosp["withdrawn"], hosp["open"]) == (1, 1, 0)
    assert hosp["acknowledge_on_time_pct"] is None


async def test_every_resolution_cycle_counts_in_remedies_and_on_time_figures(
    infrastructure,
) -> None:
    """Resolved late with a compensation, reopened, resolved in time with more remedies:
    both compensations count, one cycle late and one on time; ``branch`` filters."""
    clock = ManualClock(T0)
    settings = settings_for_test(IntakeSettings, infra=infrastructure, run_id=uuid.uuid4().hex[:10])
    async with AsyncExitStack() as stack:
        client = await serve(stack, create_intake_app(settings, clock=clock), "intake")
        admin = token(settings)
        producer = EventProducer(settings=settings)
        stack.push_async_callback(producer.stop)

        async def at(moment: datetime, path: str, body: dict) -> dict:
            clock.set(moment)
            response = await client.post(path, json=body, headers=admin)
            assert response.status_code in (200, 201), response.text
            return response.json()

        async def announce(cid: str, branch: str, resolve_due_at: datetime) -> None:
            assigned = ComplaintAssigned(
                complaint_id=cid,
                org="demo",
                branch=branch,
                department=f"{branch}:CS",
                department_name="客服",
                owner_id="o1",
                owner_name="甲",
                rule_id="r",
                rule_version=1,
                assigned_at=T0,
                acknowledge_due_at=T0 + H,
                resolve_due_at=resolve_due_at,
            )
            event = CloudEvent.new(
                event_type=EventType.COMPLAINT_ASSIGNED, source="report-test", data=assigned
            )
            await producer.publish(event, topic=settings.topic(Topic.ROUTING))

            async def applied() -> bool:
                body = (await client.get(f"/v1/complaints/{cid}", headers=admin)).json()
                return body["resolve_due_at"] == resolve_due_at.isoformat().replace("+00:00", "Z")

            await eventually(applied, what=f"resolve due time {resolve_due_at} of {cid}")

        lz = (await at(T0, "/v1/complaints", complaint_body(subject="F")))["id"]
        await announce(lz, "LZ", T0 + 24 * H)
        compensation = {"type": "compensation", "amount": "50.00", "currency": "CNY"}
        first = await at(
            T0 + 30 * H,
            f"/v1/complaints/{lz}/resolve",
            {"summary": "赔偿", "remedies": [compensation]},
        )
        assert first["resolution"]["on_time"] is False
        reopened = await at(T0 + 31 * H, f"/v1/complaints/{lz}/reopen", {"reason": "仍有问题"})
        assert reopened["resolve_due_at"] is None  # the new cycle's is routing's to announce
        await announce(lz, "LZ", T0 + 55 * H)
        second = await at(
            T0 + 40 * H,
            f"/v1/complaints/{lz}/resolve",
            {
                "summary": "再赔偿并退费",
                "remedies": [
                    {"type": "compensation", "amount": "20.00", "currency": "CNY"},
                    {"type": "refund", "amount": "5.00", "currency": "CNY"},
                ],
            },
        )
        assert second["resolution"]["on_time"] is True
        assert [r["number"] for r in second["resolutions"]] == [1, 2]
        hosp = (await at(T0, "/v1/complaints", complaint_body(branch="HOSP", subject="G")))["id"]
        await at(
            T0 + H,
            f"/v1/complaints/{hosp}/resolve",
            {"summary": "退费", "remedies": [{"type": "refund", "amount": "7.00"}]},
        )
        window = {"from": T0.isoformat(), "to": (T0 + 24 * H).isoformat()}
        filtered = await client.get(
            "/v1/reports/summary", params={**window, "branch": "LZ"}, headers=admin
        )
        everything = await client.get("/v1/reports/summary", params=window, headers=admin)

    assert filtered.status_code == 200, filtered.text
    report = filtered.json()
    assert report["branches"] == ["LZ"]
    (group,) = report["groups"]
    assert (group["group"], group["resolved"], group["resolutions"]) == ("LZ", 1, 2)
    assert group["resolve_on_time_pct"] == 50.0  # cycle 1 late, cycle 2 on time
    remedies = {
        (r["type"], r["currency"]): (r["count"], r["total_amount"]) for r in group["remedies"]
    }
    assert remedies == {("compensation", "CNY"): (2, "70.00"), ("refund", "CNY"): (1, "5.00")}
    assert {g["group"] for g in everything.json()["groups"]} == {"LZ", "HOSP"}


async def test_a_report_by_department_or_owner_counts_an_unassigned_complaint_in_the_null_group(
    infrastructure,
) -> None:
    """A complaint resolved before routing assigned it has no department or owner. Counted
    from the complaints (before the rollup's first pass, or a window without a whole day),
    its root cause's row came back without a group and the report answered 500."""
    clock = ManualClock(T0)
    settings = settings_for_test(IntakeSettings, infra=infrastructure, run_id=uuid.uuid4().hex[:10])
    async with AsyncExitStack() as stack:
        client = await serve(stack, create_intake_app(settings, clock=clock), "intake")
        admin = token(settings)
        created = await client.post("/v1/complaints", json=complaint_body(), headers=admin)
        assert created.status_code == 201, created.text
        clock.set(T0 + timedelta(minutes=5))
        resolved = await client.post(
            f"/v1/complaints/{created.json()['id']}/resolve",
            json={"summary": "已退费", "root_cause": "billing_bug", "responsible_party": "company"},
            headers=admin,
        )
        assert resolved.status_code == 200, resolved.text
        clock.set(T0 + timedelta(minutes=10))
        # Ending before now: counted from the complaints whether or not the rollup ran.
        window = {
            "from": (T0 - timedelta(hours=1)).isoformat(),
            "to": (T0 + timedelta(minutes=9)).isoformat(),
        }
        reports = {
            group_by: await client.get(
                "/v1/reports/summary", params={**window, "group_by": group_by}, headers=admin
            )
            for group_by in ("department", "owner")
        }
    for group_by, report in reports.items():
        assert report.status_code == 200, (group_by, report.text)
        [group] = report.json()["groups"]
        assert (group["group"], group["received"], group["resolved"]) == (None, 1, 1)
        assert group["top_root_causes"] == [{"value": "billing_bug", "count": 1}]
        assert group["top_responsible_parties"] == [{"value": "company", "count": 1}]


async def test_the_database_answers_only_the_top_values_of_each_group(
    infrastructure, monkeypatch
) -> None:
    """Counted from the complaints, each ranked figure comes back from the database as the
    top five values of each group, ties by value, not as every distinct value: those all
    came back in one ``$facet`` document, which a long window of free-text root causes
    would take past 16 MB."""
    answered: list[dict] = []
    group_summary = reports._group_summary

    def recording(figures: dict, facets: dict):
        answered.append(facets)
        return group_summary(figures, facets)

    monkeypatch.setattr(reports, "_group_summary", recording)
    clock = ManualClock(T0)
    settings = settings_for_test(IntakeSettings, infra=infrastructure, run_id=uuid.uuid4().hex[:10])
    causes = ["网络故障", "网络故障", "网络故障", "billing_bug", "billing_bug", "d", "c", "b", "a"]
    async with AsyncExitStack() as stack:
        client = await serve(stack, create_intake_app(settings, clock=clock), "intake")
        admin = token(settings)
        for number, cause in enumerate(causes):
            clock.set(T0)
            body = complaint_body(subject=f"话费账单多扣费 {number}")
            created = await client.post("/v1/complaints", json=body, headers=admin)
            assert created.status_code == 201, created.text
            clock.set(T0 + timedelta(minutes=5))
            resolved = await client.post(
                f"/v1/complaints/{created.json()['id']}/resolve",
                json={"summary": "已处理", "root_cause": cause, "responsible_party": "company"},
                headers=admin,
            )
            assert resolved.status_code == 200, resolved.text
        clock.set(T0 + timedelta(minutes=10))
        # A window ending before now counts no whole day from the rollup's tallies: counted
        # from the complaints whether or not the rollup's first pass has run (when the
        # window reached now, the pass finishing first sent the report to its tallies).
        window = {"from": (T0 - H).isoformat(), "to": (T0 + timedelta(minutes=9)).isoformat()}
        report = await client.get(
            "/v1/reports/summary", params={**window, "group_by": "branch"}, headers=admin
        )
    assert report.status_code == 200, report.text
    [group] = report.json()["groups"]
    assert group["top_root_causes"] == [
        {"value": "网络故障", "count": 3},
        {"value": "billing_bug", "count": 2},
        {"value": "a", "count": 1},
        {"value": "b", "count": 1},
        {"value": "c", "count": 1},
    ]
    [facets] = answered
    [root_causes] = facets["root_causes"]
    assert len(root_causes["top"]) == reports.TOP_N
