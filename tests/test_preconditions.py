"""Unit: the ``If-Match`` header's syntax and the decision whether a change is written."""

from __future__ import annotations

import pytest

from complaints_shared.preconditions import IfMatch, parse, shows, write_needed
from complaints_shared.problems import ProblemError


@pytest.mark.parametrize(
    ("header", "versions"),
    [
        ("*", None),
        (" * ", None),
        ('"3"', {3}),
        ('"3", "4"', {3, 4}),
        ('"3",W/"4"', {3}),  # weak tags never match
        ('"abc"', set()),  # an entity tag, but no version of ours
        ('""', set()),
    ],
)
def test_well_formed_headers(header: str, versions: set[int] | None) -> None:
    expected = None if versions is None else frozenset(versions)
    assert parse(header) == IfMatch(versions=expected)


@pytest.mark.parametrize("header", ["3", '"3', '"3" "4"', "", '"a b"', "W/3"])
def test_malformed_headers_name_the_header(header: str) -> None:
    with pytest.raises(ProblemError) as raised:
        parse(header)
    assert (raised.value.status, raised.value.extensions["errors"][0]["field"]) == (422, "If-Match")


def test_a_change_already_shown_is_not_written_whatever_the_header() -> None:
    stale = IfMatch(versions=frozenset({1}))
    assert not write_needed(stale, version=5, already_shown=True, what="branch 'LZ'")
    assert not write_needed(None, version=None, already_shown=True, what="branch 'LZ'")


def test_a_change_is_held_to_the_version_named() -> None:
    assert write_needed(None, version=5, already_shown=False, what="branch 'LZ'")
    assert write_needed(
        IfMatch(versions=frozenset({4, 5})), version=5, already_shown=False, what="x"
    )
    assert write_needed(IfMatch(versions=None), version=0, already_shown=False, what="x")
    with pytest.raises(ProblemError) as stale:
        write_needed(IfMatch(versions=frozenset({4})), version=5, already_shown=False, what="x")
    assert (stale.value.status, stale.value.headers["ETag"]) == (412, '"5"')
    # No entry yet: not even ``*`` matches (RFC 9110 §13.1.1).
    with pytest.raises(ProblemError) as missing:
        write_needed(IfMatch(versions=None), version=None, already_shown=False, what="x")
    assert missing.value.status == 412


def test_shows_compares_the_changed_fields_only() -> None:
    current = {"name": "兰州", "capacity": 5, "skills": ["billing"]}
    assert shows(current, {"capacity": 5, "skills": ["billing"]})
    assert not shows(current, {"capacity": 6})
    assert shows(current, {"duty_officer_id": None})  # a field it lacks reads as null
    assert not shows(current, {"skills": ["billing", "network"]})
