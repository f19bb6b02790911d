"""Unit: the ``If-Match`` header's syntax and the decision whether a change is written."""

from __future__ import annotations

import pytest

from complaints_shared.preconditions import IfMatch, parse, shows, write_needed
from complaints_shared.problems import ProblemError


@pytest.mark.parametrize(
    ("lines", "tags"),
    [
        (["*"], None),
        ([" * "], None),
        (['"3"'], {"3"}),
        (['"3", "4"'], {"3", "4"}),
        (['"3",W/"4"'], {"3"}),  # weak tags never match
        (['"abc"'], {"abc"}),  # an entity tag, though no version of ours
        (['"0.3"'], {"0.3"}),
        (['""'], {""}),
        (['"a,b", "5"'], {"a,b", "5"}),  # a comma inside a tag is part of it
        (['"3"', '"4"'], {"3", "4"}),  # the header sent on two lines
    ],
)
def test_well_formed_headers(lines: list[str], tags: set[str] | None) -> None:
    expected = None if tags is None else frozenset(tags)
    assert parse(lines) == IfMatch(tags=expected)


@pytest.mark.parametrize("header", ["3", '"3', '"3" "4"', "", "  ", '"a b"', "W/3", '*, "3"'])
def test_malformed_headers_name_the_header(header: str) -> None:
    with pytest.raises(ProblemError) as raised:
        parse([header])
    assert (raised.value.status, raised.value.extensions["errors"][0]["field"]) == (422, "If-Match")


def test_a_change_already_shown_is_not_written_whatever_the_header() -> None:
    stale = IfMatch(tags=frozenset({"1"}))
    assert not write_needed(stale, current=5, already_shown=True, what="branch 'LZ'")
    assert not write_needed(None, current=None, already_shown=True, what="branch 'LZ'")


def test_a_change_is_held_to_the_tag_named() -> None:
    assert write_needed(None, current=5, already_shown=False, what="branch 'LZ'")
    assert write_needed(
        IfMatch(tags=frozenset({"4", "5"})), current=5, already_shown=False, what="x"
    )
    assert write_needed(IfMatch(tags=None), current=0, already_shown=False, what="x")
    assert write_needed(
        IfMatch(tags=frozenset({"0.3"})), current="0.3", already_shown=False, what="x"
    )
    with pytest.raises(ProblemError) as stale:
        write_needed(IfMatch(tags=frozenset({"4"})), current=5, already_shown=False, what="x")
    assert (stale.value.status, stale.value.headers["ETag"]) == (412, '"5"')
    assert stale.value.extensions["current_version"] == 5
    # Tags compare character by character: "05" is not version 5.
    with pytest.raises(ProblemError):
        write_needed(IfMatch(tags=frozenset({"05"})), current=5, already_shown=False, what="x")
    # No entry yet: not even ``*`` matches (RFC 9110 §13.1.1).
    with pytest.raises(ProblemError) as missing:
        write_needed(IfMatch(tags=None), current=None, already_shown=False, what="x")
    assert missing.value.status == 412


def test_shows_compares_the_changed_fields_only() -> None:
    current = {"name": "兰州", "capacity": 5, "skills": ["billing"]}
    assert shows(current, {"capacity": 5, "skills": ["billing"]})
    assert not shows(current, {"capacity": 6})
    assert shows(current, {"duty_officer_id": None})  # a field it lacks reads as null
    assert not shows(current, {"skills": ["billing", "network"]})
