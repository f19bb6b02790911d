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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Request, Response

from complaints_shared.problems import ProblemError, invalid_fields

HEADER = "If-Match"
# An entity tag, strong or weak (RFC 9110 §8.8.3), then the comma before the next one.
_TAG = re.compile(r'\s*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"\s*(?:,|$)')


@dataclass(frozen=True)
class IfMatch:
    """The entity tags an ``If-Match`` header accepts; ``None``: any (``*``)."""

    tags: frozenset[str] | None

    def allows(self, tag: str) -> bool:
        return self.tags is None or tag in self.tags


def parse(values: list[str]) -> IfMatch:
    """``*`` or a comma-separated list of entity tags, over every ``If-Match`` line sent;
    a 422 naming the header otherwise.

    Tags compare character by character (``"03"`` is not ``"3"``); weak tags never match
    (``If-Match`` compares strongly), nor do tags that are no version of ours: both are
    well-formed and simply fail the precondition.
    """
    joined = ",".join(values)
    if joined.strip() == "*":
        return IfMatch(tags=None)
    tags: set[str] = set()
    position = 0
    while position < len(joined) or not joined:
        # Every match takes a quoted tag, so each turn moves on (an empty header fails).
        found = _TAG.match(joined, position)
        if found is None:
            raise invalid_fields(
                [{"field": HEADER, "message": 'expected "*" or entity tags such as "3"'}]
            )
        weak, value = found.groups()
        if not weak:
            tags.add(value)
        position = found.end()
    return IfMatch(tags=frozenset(tags))


def _if_match(
    request: Request,
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
    return None if value is None else parse(request.headers.getlist(HEADER))


# A route's optional ``If-Match`` header, parsed.
IfMatchHeader = Annotated[IfMatch | None, Depends(_if_match)]


def etag(tag: str | int) -> str:
    return f'"{tag}"'


def tag(response: Response, current: str | int) -> None:
    """Give ``response`` the ``ETag`` of the entry as it is now (its version, mostly)."""
    response.headers["ETag"] = etag(current)


def shows(current: Mapping[str, Any], changes: Mapping[str, Any]) -> bool:
    """Whether the stored entry ``current`` already shows every field of ``changes``
    (a field it lacks counts as null)."""
    return all(current.get(field) == value for field, value in changes.items())


def write_needed(
    if_match: IfMatch | None, *, current: str | int | None, already_shown: bool, what: str
) -> bool:
    """Whether a change is to be written: not when the entry already shows it (whatever
    the header says); else only if ``if_match`` allows the entry's ``current`` tag (its
    version, mostly), a 412 otherwise. ``current`` None: there is no such entry yet,
    which no ``If-Match`` allows."""
    if already_shown:
        return False
    if if_match is not None and (current is None or not if_match.allows(str(current))):
        raise precondition_failed(what=what, current=current)
    return True


async def change_needed(
    if_match: IfMatch | None,
    *,
    current: Mapping[str, Any],
    changes: Mapping[str, Any],
    what: str,
    validate: Callable[[], Awaitable[None]] | None = None,
) -> bool:
    """``write_needed`` for ``changes`` to the stored entry ``current`` (tagged with its
    ``version``); one to be written is then ``validate``d. A change already shown is not
    checked again: what it refers to may have changed since it was made."""
    if not write_needed(
        if_match,
        current=current["version"],
        already_shown=shows(current, changes),
        what=what,
    ):
        return False
    if validate is not None:
        await validate()
    return True


def lost_race(
    if_match: IfMatch | None,
    *,
    current: str | int | None,
    what: str,
    otherwise: ProblemError,
) -> ProblemError:
    """The answer to a change whose versioned write found the entry moved on after it was
    checked (another change landed in between): with an ``If-Match`` the entry's ``current``
    tag (None: gone) no longer meets, the 412 the precondition promises, naming the tag;
    ``otherwise`` the 409 to retry (the change was decided on a read that is stale now).
    Until 5 December both were a 409, and a client that retried on it met the 412 then."""
    if if_match is not None and (current is None or not if_match.allows(str(current))):
        return precondition_failed(what=what, current=current)
    return otherwise


def precondition_failed(*, what: str, current: str | int | None) -> ProblemError:
    if current is None:
        return ProblemError(
            status=412,
            title="Precondition failed",
            kind="precondition-failed",
            detail=f"{what} does not exist, so no version {HEADER} names is current",
            errors=[{"field": HEADER, "message": "there is no current version"}],
        )
    version = {"current_version": current} if isinstance(current, int) else {}
    return ProblemError(
        status=412,
        title="Precondition failed",
        kind="precondition-failed",
        detail=f"{what} is at {etag(current)}, changed since the version {HEADER} names; "
        "read it again and decide the change on what it now says",
        headers={"ETag": etag(current)},
        current_etag=etag(current),
        errors=[{"field": HEADER, "message": f"the current entity tag is {etag(current)}"}],
        **version,
    )
