"""Event builders: one per event the tests put on a topic themselves.

Each builds a valid event of the demo organisation with plain defaults; a test names
only what it is about (``received(category="network")``). Events of one complaint
share its identity (``base``), so a lifecycle reads as a sequence of builders.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from complaints_shared.events import (
    ComplaintNoteAdded,
    ComplaintReceived,
    ComplaintReopened,
    ComplaintResolved,
    CustomerContact,
)

# What makes a complaint one the demo organisation's rules send to LZ:NETWORK.
NETWORK_DROPOUTS: dict[str, Any] = {
    "channel": "web",
    "category": "network",
    "subject": "宽带经常断网",
    "description": "晚上八点以后网速很慢并经常断网",
}


def received(**overrides: Any) -> ComplaintReceived:
    """A ``complaint.received`` for the demo organisation (LZ billing, normal) unless overridden."""
    complaint_id = overrides.pop("complaint_id", None) or str(uuid.uuid4())
    values: dict[str, Any] = {
        "complaint_id": complaint_id,
        "org": "demo",
        "branch": "LZ",
        "reference": f"T-{complaint_id[:8]}",
        "channel": "phone",
        "category": "billing",
        "severity": "normal",
        "subject": "话费账单有误",
        "description": "本月账单多扣了两百元",
        "customer": CustomerContact(name="马先生", phone="13809310000"),
        "received_at": datetime.now(UTC),
        **overrides,
    }
    return ComplaintReceived(**values)


def base(complaint: ComplaintReceived | ComplaintResolved) -> dict[str, str]:
    """The identity every event of ``complaint`` carries."""
    return {
        "complaint_id": complaint.complaint_id,
        "org": complaint.org,
        "branch": complaint.branch,
    }


def resolved(complaint: ComplaintReceived | None = None, **overrides: Any) -> ComplaintResolved:
    """The first ``complaint.resolved`` of ``complaint``, by lz-chen of its branch's billing desk.

    Without a complaint it resolves one of its own: a new id in ``branch`` (LZ unless
    overridden) whose customer, 李女士, prefers a phone call back.
    """
    if complaint is not None:
        identity: dict[str, Any] = {
            **base(complaint),
            "reference": complaint.reference,
            "category": complaint.category,
            "severity": complaint.severity,
            "customer": complaint.customer,
            "subject": complaint.subject,  # as intake's resolution carries it
        }
    else:
        complaint_id = overrides.pop("complaint_id", None) or str(uuid.uuid4())
        branch = overrides.get("branch", "LZ")
        identity = {
            "complaint_id": complaint_id,
            "org": "demo",
            "branch": branch,
            "reference": f"{branch}-20261123-{complaint_id[:4]}",
            "category": "billing",
            "severity": "normal",
            "customer": CustomerContact(
                name="李女士", phone="13900000000", preferred_channel="phone"
            ),
        }
    values: dict[str, Any] = {
        **identity,
        "resolution_number": 1,
        "summary": "已退还多收的月租费并致歉",
        "department": f"{identity['branch']}:BILLING",
        "owner_id": "lz-chen",
        "resolved_by": "agent-1",
        "resolved_at": datetime.now(UTC),
        **overrides,
    }
    return ComplaintResolved(**values)


def note_added(**overrides: Any) -> ComplaintNoteAdded:
    """A ``complaint.note_added``: an internal note of agent-1 on a demo complaint in LZ, now."""
    values: dict[str, Any] = {
        "complaint_id": str(uuid.uuid4()),
        "org": "demo",
        "branch": "LZ",
        "note_id": uuid.uuid4().hex,
        "author": "agent-1",
        "visibility": "internal",
        "text": "已联系客户",
        "added_at": datetime.now(UTC),
        **overrides,
    }
    return ComplaintNoteAdded(**values)


def reopened(
    complaint: ComplaintReceived | ComplaintResolved, *, reopened_at: datetime, **overrides: Any
) -> ComplaintReopened:
    """The first ``complaint.reopened`` of ``complaint``: the customer not satisfied, by
    follow-up, at ``reopened_at``."""
    values: dict[str, Any] = {
        **base(complaint),
        "reason": "客户不满意",
        "reopened_by": "followup",
        "reopened_at": reopened_at,
        "reopen_count": 1,
        **overrides,
    }
    return ComplaintReopened(**values)
