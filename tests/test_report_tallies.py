"""Tally arithmetic of the report rollup (``intake.rollup``): what is counted can be taken out.

The job and the report move a tally on by taking a complaint's old row out and counting the
complaint as it is now, so taking out what was counted must leave exactly the tally of the
rest: counts, sums, the durations and due times (repeated values too), the ranked values and
the remedies.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import bson

from intake import reports, rollup

T0 = datetime(2026, 11, 2, 1, 0, tzinfo=UTC)


def _complaint(rng: random.Random, number: int) -> dict:
    created = T0 + timedelta(minutes=rng.randrange(0, 600))
    complaint: dict = {
        "org": "demo",
        "branch": rng.choice(["LZ", "HOSP"]),
        "created_at": created,
        "status": rng.choice(["received", "assigned", "resolved", "closed", "rejected"]),
        "category": rng.choice(["billing", "network", "服务态度"]),
        "severity": "normal",
        "channel": "phone",
        "acknowledge_due_at": created + timedelta(hours=1),
        "resolve_due_at": created + timedelta(hours=rng.choice([5, 24])),
        "resolution_count": rng.randrange(0, 3),
        "reopen_count": rng.randrange(0, 2),
        "repeat_count": rng.randrange(0, 2),
    }
    if number % 2:
        # Whole minutes, so that several complaints share a duration.
        complaint["acknowledged_at"] = created + timedelta(minutes=rng.randrange(1, 4))
    if number % 3 == 0:
        complaint["first_resolved_at"] = created + timedelta(hours=rng.randrange(1, 3))
        complaint["finished_at"] = complaint["first_resolved_at"]
        complaint["satisfaction"] = {"score": rng.randrange(1, 6)}
        complaint["resolution"] = {"root_cause": rng.choice(["计费错误", "network_fault"])}
        complaint["responsible_party"] = rng.choice(["company", "third_party"])
        complaint["resolutions"] = [
            {
                "on_time": rng.choice([True, False, None]),
                "remedies": [
                    {"type": "refund", "currency": "CNY", "amount_cents": rng.randrange(0, 5000)}
                ],
            }
        ]
    return complaint


def _normal(groups: dict) -> dict:
    """Groups with a tally in a form that compares whatever order lists were built in."""
    return {
        value: {
            **tally,
            **{name: sorted(tally[name]) for name in rollup.LISTS},
            "score_sum": round(tally["score_sum"], 6),
        }
        for value, tally in groups.items()
        if tally["received"] > 0
    }


def test_taking_counted_complaints_out_leaves_the_tally_of_the_rest() -> None:
    rng = random.Random(3)
    complaints = [_complaint(rng, number) for number in range(200)]
    taken, kept = complaints[::3], [c for i, c in enumerate(complaints) if i % 3]
    for dimension in rollup.DIMENSIONS:
        groups = rollup.tallies_by_group(complaints, dimension)
        for value, tally in rollup.tallies_by_group(taken, dimension).items():
            rollup.remove(groups[value], tally)
        assert _normal(groups) == _normal(rollup.tallies_by_group(kept, dimension)), dimension


def test_due_times_counted_once_passed_tell_the_same_and_can_be_taken_out() -> None:
    rng = random.Random(6)
    complaints = [_complaint(rng, number) for number in range(200)]
    taken, kept = complaints[::3], [c for i, c in enumerate(complaints) if i % 3]
    # Some acknowledge and resolve due times passed before it, some not.
    before = T0 + timedelta(hours=6)
    for dimension in rollup.DIMENSIONS:
        groups = rollup.tallies_by_group(complaints, dimension)
        for value, tally in groups.items():
            folded = {**tally, **{name: list(tally[name]) for name in rollup.LISTS}}
            rollup.fold(folded, before=before)
            for now in (before, before + timedelta(hours=20)):
                shown = reports._tally_summary(value, folded, now)
                assert shown == reports._tally_summary(value, tally, now), (dimension, value)
            groups[value] = folded
        for value, tally in rollup.tallies_by_group(taken, dimension).items():
            rollup.remove(groups[value], tally)
        rest = rollup.tallies_by_group(kept, dimension)
        for tally in rest.values():
            rollup.fold(tally, before=before)
        assert _normal(groups) == _normal(rest), dimension
    counted = rollup.tallies_by_group(kept, "branch")
    for tally in counted.values():
        rollup.fold(tally, before=before)
    assert all(
        tally["ack_pending_passed"] and tally["ack_pending_due"] for tally in counted.values()
    )
    assert any(tally["open_resolve_passed"] for tally in counted.values())
    assert any(tally["open_resolve_due"] for tally in counted.values())


def test_a_group_whose_complaints_all_left_counts_nothing() -> None:
    rng = random.Random(4)
    complaints = [_complaint(rng, number) for number in range(12)]
    tally = rollup.tallies_by_group(complaints, "branch")
    for value, counted in rollup.tallies_by_group(complaints, "branch").items():
        rollup.remove(tally[value], counted)
        assert tally[value] == {
            **rollup.empty_tally(),
            "score_sum": tally[value]["score_sum"],
        }
        assert abs(tally[value]["score_sum"]) < 1e-9


def test_a_stored_tally_loads_back_to_what_was_stored() -> None:
    rng = random.Random(5)
    complaints = [_complaint(rng, number) for number in range(30)]
    for value, tally in rollup.tallies_by_group(complaints, "department").items():
        assert _normal({value: rollup.load(rollup._stored(tally))}) == _normal({value: tally})


def test_a_reports_edges_read_the_shorter_side_of_their_day() -> None:
    day = datetime(2026, 11, 2, tzinfo=UTC)
    days = (day + rollup.DAY, day + 3 * rollup.DAY)
    H = timedelta(hours=1)

    def edges(created_from: datetime, created_to: datetime) -> list:
        return reports._edges(created_from=created_from, created_to=created_to, days=days)

    # Starting late in its day: the rows of its last hours; early: the day's tally less the
    # rows of the hours before.
    assert edges(day + 20 * H, days[1]) == [
        reports._Edge(day=day, rows=(day + 20 * H, days[0]), less=False)
    ]
    assert edges(day + 3 * H, days[1]) == [
        reports._Edge(day=day, rows=(day, day + 3 * H), less=True)
    ]
    # Ending early in its day: the rows of those hours; late: the day's tally less the rest.
    last = days[1]
    assert edges(days[0], last + 2 * H) == [
        reports._Edge(day=last, rows=(last, last + 2 * H), less=False)
    ]
    assert edges(days[0], last + 22 * H) == [
        reports._Edge(day=last, rows=(last + 22 * H, last + rollup.DAY), less=True)
    ]
    # Windows on midnights have no edges.
    assert edges(*days) == []


def test_remedy_totals_past_64_bits_are_stored_and_shown() -> None:
    """Ten thousand refunds of 999,999,999,999.99 sum past a BSON integer: storing the tally
    raised OverflowError, which stopped every pass of the rollup job, and the report's live
    aggregation (its sum a double past 64 bits) was a 500."""
    tally = rollup.empty_tally()
    cents = 99_999_999_999_999 * 100_000
    tally["remedies"]["refund\x00CNY"] = ["refund", "CNY", 100_000, cents]
    stored = bson.decode(bson.encode(rollup._stored(tally)))
    assert rollup.load(stored)["remedies"]["refund\x00CNY"][3] == cents
    assert reports._amount_text(cents) == "99999999999999000.00"
    # A double from the database: the amount it stands for, to its precision (no 500).
    assert reports._amount_text(float(cents)).startswith("999999999999989")
