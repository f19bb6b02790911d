"""Cursor pagination: opaque cursors over a stable sort key (a field plus ``_id``).

A cursor is a position in one listing: the sort value and id of the last item, and a tag
of what was listed (the collection, the sort field and direction, and the query or what the
caller says it lists: ``listing_tag``). A cursor used with another sort,
other filters, another endpoint or another service is a 422 naming ``cursor``: until
6 December one from ``sort=created_at`` was taken by ``sort=-created_at`` (or by another
service's list) as a position in that order, and the client silently got another slice.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Generic, TypeVar

import orjson
from pydantic import BaseModel

from complaints_shared.datetimes import in_range
from complaints_shared.problems import invalid_fields

Item = TypeVar("Item")

# Hex digits of the listing's hash a cursor carries: enough to tell listings apart.
TAG_LENGTH = 16


class Page(BaseModel, Generic[Item]):
    items: list[Item]
    next_cursor: str | None = None


def _canonical(value: Any) -> Any:
    """``value`` in one form whatever the order it was built in: keys sorted, and lists
    (``$in`` of a token's branches, a set in the process that built it) in a fixed order."""
    if isinstance(value, Mapping):
        return {str(key): _canonical(item) for key, item in sorted(value.items(), key=str)}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_canonical(item) for item in value]
        return sorted(items, key=lambda item: orjson.dumps(item, option=orjson.OPT_SORT_KEYS))
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def listing_tag(*, collection: str, sort_field: str, descending: bool, listing: Any) -> str:
    """What a page lists (``listing``: its query, or what the caller says it lists), as the
    tag its cursors carry: the same in every replica."""
    listed = [collection, sort_field, descending, _canonical(listing)]
    digest = hashlib.sha256(orjson.dumps(listed, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return digest[:TAG_LENGTH]


def encode_cursor(*, sort_value: datetime, document_id: str, tag: str) -> str:
    raw = orjson.dumps([sort_value.isoformat(), document_id, tag])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _refused(message: str) -> Exception:
    return invalid_fields([{"field": "cursor", "message": message}])


def decode_cursor(cursor: str, *, tag: str) -> tuple[datetime, str]:
    """The (sort value in UTC, document id) a cursor holds; a 422 naming ``cursor`` when it
    is not one this listing gave out: another sort, other filters, another endpoint (a tag
    that differs), or no cursor of this API (a forged date outside ``datetimes.RANGE``
    included). A cursor given out before cursors carried their listing (two fields) is
    taken as it was then, so a walk across the upgrade goes on."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        fields = orjson.loads(base64.urlsafe_b64decode(padded))
        if not isinstance(fields, list) or len(fields) not in (2, 3):
            raise ValueError("not a position")
        sort_value, document_id, *given = fields
        position = in_range(datetime.fromisoformat(sort_value)), str(document_id)
    except (ValueError, TypeError) as exc:
        raise _refused(f"not a cursor from this API ({exc})") from None
    if given and given[0] != tag:
        raise _refused(
            "a cursor from another listing (another sort, other filters or another "
            "endpoint): start again without a cursor"
        )
    return position
