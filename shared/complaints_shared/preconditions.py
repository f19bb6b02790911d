"""Conditional changes of versioned settings (RFC 9110 §13): ``ETag`` and ``If-Match``.

An administrator's entry (a branch, a rule, an SLA policy, a follow-up policy) counts its
changes in ``version``; its ``ETag`` is that version as a strong tag, e.g. ``"7"``. A
change sent with ``If-Match`` naming the version it was decided on is refused with a 412
when someone changed the entry since, instead of silently undoing their change.

Whatever the header, a change that the entry already shows writes nothing: no new
version, no audit record, no event. So a retry after a lost answer answers the entry as
it is (RFC 9110 §13.1.1 allows a 2xx for a change already applied), and only a change
that would still alter the entry is held to its precondition.

The tag names the stored version; figures computed when read (a person's open load) are
not part of it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Response

from complaints_shared.problems import ProblemError, invalid_fields

HEADER = "If-Match"
# One entity tag of the list: a strong or weak quoted tag (RFC 9110 §8.8.3).
_TAG = re.compile(r'\s*(W/)?"([\x21\x23-\x7e]*)"\s*')


@dataclass(frozen=True)
class IfMatch:
    """The versions an ``If-Match`` header accepts; ``None``: any (``*``)."""

    versions: frozenset[int] | None

    def allows(self, version: int) -> bool:
        return self.versions is None or version in self.versions


def parse(value: str) -> IfMatch:
    """``*`` or a comma-separated list of entity tags; a 422 naming the header otherwise.

    Weak tags never match (``If-Match`` compares strongly), nor do tags that are no
    version of ours: both are well-formed and simply fail the precondition.
    """
    if value.strip() == "*":
        return IfMatch(versions=None)
    versions: set[int] = set()
    for part in value.split(","):
        found = _TAG.fullmatch(part)
        if found is None:
            raise invalid_fields(
                [{"field": HEADER, "message": 'expected "*" or entity tags such as "3"'}]
            )
        weak, tag = found.groups()
        if not weak and tag.isdigit():
            versions.add(int(tag))
    return IfMatch(versions=frozenset(versions))


def _if_match(
    value: Annotated[
        str | None,
        Header(
            alias=HEADER,
            description='Change only the version named (its `ETag`, e.g. `"3"`); '
            "a 412 when the entry has changed since. A change the entry already shows "
            "answers 200 and writes nothing.",
        ),
    ] = None,
) -> IfMatch | None:
    return None if value is None else parse(value)


# A route's optional ``If-Match`` header, parsed.
IfMatchHeader = Annotated[IfMatch | None, Depends(_if_match)]


def etag(version: int) -> str:
    return f'"{version}"'


def tag(response: Response, version: int) -> None:
    """Give ``response`` the ``ETag`` of the entry at ``version``."""
    response.headers["ETag"] = etag(version)


def shows(current: Mapping[str, Any], changes: Mapping[str, Any]) -> bool:
    """Whether the stored entry ``current`` already shows every field of ``changes``
    (a field it lacks counts as null)."""
    return all(current.get(field) == value for field, value in changes.items())


def write_needed(
    if_match: IfMatch | None, *, version: int | None, already_shown: bool, what: str
) -> bool:
    """Whether a change is to be written: not when the entry already shows it (whatever
    the header says); else only if ``if_match`` allows the entry's ``version`` (a 412).
    ``version`` None: there is no such entry yet, which no ``If-Match`` allows."""
    if already_shown:
        return False
    if if_match is not None and (version is None or not if_match.allows(version)):
        raise precondition_failed(what=what, version=version)
    return True


def precondition_failed(*, what: str, version: int | None) -> ProblemError:
    if version is None:
        return ProblemError(
            status=412,
            title="Precondition failed",
            kind="precondition-failed",
            detail=f"{what} does not exist, so no version {HEADER} names is current",
            errors=[{"field": HEADER, "message": "there is no current version"}],
        )
    return ProblemError(
        status=412,
        title="Precondition failed",
        kind="precondition-failed",
        detail=f"{what} is at version {version}, changed since the version {HEADER} names; "
        "read it again and decide the change on what it now says",
        headers={"ETag": etag(version)},
        current_version=version,
        errors=[{"field": HEADER, "message": f"the current version is {version}"}],
    )
