"""Signing secrets and the signed request: Standard Webhooks over a structured CloudEvent.

The body is the CloudEvent in structured JSON mode (``application/cloudevents+json``),
rendered once when the delivery is recorded and sent byte for byte on every attempt.
The signature follows the Standard Webhooks specification through its reference
package: ``v1,<base64 HMAC-SHA256 of "<webhook-id>.<webhook-timestamp>.<body>">``;
during a secret rotation's overlap the header carries one signature per live
secret, separated by a space, so receivers holding either secret verify.
"""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime
from typing import Any

import orjson
from standardwebhooks import Webhook

from complaints_shared.envelope import SPEC_VERSION, CloudEvent

CLOUDEVENTS_JSON = "application/cloudevents+json"
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
USER_AGENT = "complaint-desk-webhooks/1"


def new_secret() -> str:
    """A fresh signing secret in the Standard Webhooks form ``whsec_<base64>``."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def structured_body(event: CloudEvent) -> str:
    """The CloudEvent as one JSON document (CloudEvents JSON format, structured mode)."""
    document: dict[str, Any] = {
        "specversion": SPEC_VERSION,
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "subject": event.subject,
        # Always with microseconds: one width, so the times of a receiver's events sort as text.
        "time": event.time.astimezone(UTC)
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": event.data,
    }
    return orjson.dumps(document).decode()


def signed_headers(
    *, webhook_id: str, body: str, live_secrets: list[str], at: datetime
) -> dict[str, str]:
    """Headers of one attempt; ``at`` becomes ``webhook-timestamp`` (whole seconds)."""
    moment = at.astimezone(UTC)
    signatures = [
        Webhook(secret).sign(msg_id=webhook_id, timestamp=moment, data=body)
        for secret in live_secrets
    ]
    return {
        "content-type": CLOUDEVENTS_JSON,
        "user-agent": USER_AGENT,
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": " ".join(signatures),
    }
