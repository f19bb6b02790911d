"""Cursor pagination: opaque cursors over a stable sort key (a field plus ``_id``)."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Generic, TypeVar

import orjson
from pydantic import BaseModel

from complaints_shared.datetimes import in_range
from complaints_shared.problems import invalid_fields

Item = TypeVar("Item")


class Page(BaseModel, Generic[Item]):
    items: list[Item]
    next_cursor: str | None = None


def encode_cursor(*, sort_value: datetime, document_id: str) -> str:
    raw = orjson.dumps([sort_value.isoformat(), document_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (sort value in UTC, document id) a cursor holds; a 422 naming ``cursor`` when it
    is not one this API gave out (a forged date outside ``datetimes.RANGE`` included)."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        sort_value, document_id = orjson.loads(base64.urlsafe_b64decode(padded))
        return in_range(datetime.fromisoformat(sort_value)), str(document_id)
    except (ValueError, TypeError) as exc:
        message = f"not a cursor from this API ({exc})"
        raise invalid_fields([{"field": "cursor", "message": message}]) from None
