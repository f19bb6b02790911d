"""Signing secrets: however often a subscription is rotated, at most three secrets sign.

Every secret that signs adds a signature to ``webhook-signature``. Each rotation used to keep
every secret rotated out within the overlap signing, so 170 rotations in a day made the
header pass the 8 KB proxies accept, and every delivery failed. Now the current secret and
the two rotated out most recently sign (each until its own expiry); older ones stop at once.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from complaints_shared.clock import ManualClock
from tests.support.http import token
from tests.support.waits import eventually
from tests.support.webhooks import Isolation, receiver, serve_webhooks, subscribe
from webhooks import store
from webhooks.signing import new_secret

ROTATIONS = 5


def test_only_the_current_secret_and_the_two_latest_rotated_out_sign() -> None:
    now = datetime(2026, 12, 5, 12, tzinfo=UTC)
    rotated_out = [new_secret() for _ in range(10)]  # newest first, as rotations store them
    subscription = {
        "signing_secrets": [
            {"secret": "whsec_current", "created_at": now, "expires_at": None},
            {"secret": "whsec_expired", "created_at": now, "expires_at": now},
            *(
                {"secret": secret, "created_at": now, "expires_at": now + timedelta(hours=1)}
                for secret in rotated_out
            ),
        ]
    }
    assert store.live_secrets(subscription, now=now) == ["whsec_current", *rotated_out[:2]]


@pytest.mark.integration
async def test_rotations_within_the_overlap_leave_three_secrets_signing(
    alone: Isolation,
) -> None:
    clock = ManualClock()
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver())
        webhooks = await serve_webhooks(stack, alone, clock=clock, secret_rotation_overlap_s=3600)
        admin = token(webhooks.settings)
        subscription = await subscribe(webhooks, admin, url=hooks.url)
        path = f"/v1/webhooks/subscriptions/{subscription['id']}"
        secrets = [subscription["secret"]]
        for _ in range(ROTATIONS):
            clock.advance(timedelta(seconds=10))
            rotated = await webhooks.client.post(f"{path}/secret/rotate", headers=admin)
            assert rotated.status_code == 200, rotated.text
            secrets.append(rotated.json()["secret"])
        pinged = await webhooks.client.post(f"{path}/ping", headers=admin)
        assert pinged.status_code == 202, pinged.text
        await eventually(lambda: asyncio.sleep(0, len(hooks.requests) == 1), what="the ping")
        stored = await store.get_subscription(
            db=webhooks.app.state.runtime.db,
            scope={},
            subscription_id=subscription["id"],
            with_secrets=True,
        )
    [ping] = hooks.requests
    assert len(ping.headers["webhook-signature"].split(" ")) == 3
    for signing in secrets[-3:]:
        Webhook(signing).verify(ping.body, ping.headers)
    for pushed_out in secrets[:-3]:
        with pytest.raises(WebhookVerificationError):
            Webhook(pushed_out).verify(ping.body, ping.headers)
    assert stored is not None
    assert [entry["secret"] for entry in stored["signing_secrets"]] == secrets[::-1][:3], (
        "the secrets pushed out are not kept either"
    )
