"""HTTP routes of webhooks: subscriptions, their secrets, delivery logs and replays.

Every route is an admin's, branch-scoped: a subscription belongs to one organisation
and either one branch or (``branch: null``) all of them; a token limited to some
branches sees and manages only subscriptions of those branches, others are 404.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import Field

from complaints_shared import preconditions
from complaints_shared.access import Scope, allow
from complaints_shared.auth import Principal, Role
from complaints_shared.envelope import CloudEvent
from complaints_shared.idempotency import (
    HEADER,
    REPLAYED_HEADER,
    CommandKey,
    command_key_header,
    key_conflict,
    key_header,
    request_hash,
)
from complaints_shared.models import StrictModel
from complaints_shared.mongo import as_stored
from complaints_shared.pagination import Page
from complaints_shared.preconditions import IfMatchHeader, tag
from complaints_shared.problems import ProblemError, conflict, not_found
from complaints_shared.runtime import runtime_of
from complaints_shared.stored import from_stored
from webhooks import store
from webhooks.handlers import order_key
from webhooks.models import (
    PING_EVENT_TYPE,
    DeliveryFilters,
    DeliveryRead,
    RedeliverRange,
    RedeliveryAccepted,
    SecretRotated,
    SubscriptionCreate,
    SubscriptionCreated,
    SubscriptionRead,
    SubscriptionStatus,
    SubscriptionUpdate,
)
from webhooks.scheduler import Dispatcher
from webhooks.settings import WebhooksSettings
from webhooks.signing import new_secret, structured_body
from webhooks.targets import TargetRefused, parse_target

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
# How long a creation repeated under its Idempotency-Key answers the secret it made: a client
# retrying after a lost answer does so within minutes.
CREATION_REPLAY_WINDOW = timedelta(days=1)

SubscriptionId = Annotated[str, Path(max_length=64, description="Subscription id (whs_...)")]
DeliveryId = Annotated[str, Path(max_length=64, description="Delivery id = webhook-id (msg_...)")]
IdempotencyKey = Annotated[
    str | None,
    key_header(description="Retry-safe creation: the same key and body create it once."),
]
PingKey = Annotated[
    str | None,
    key_header(
        description="Retry-safe ping: the same key again answers the ping it sent, with "
        "`Idempotent-Replayed: true`, instead of sending another."
    ),
]
RedeliveryKey = command_key_header(what="redelivery")
RotationKey = Annotated[
    str | None,
    key_header(
        description="Retry-safe rotation: the same key again answers the secret that rotation "
        "made (while it still signs), with `Idempotent-Replayed: true`, instead of rotating again."
    ),
]


class ListQuery(StrictModel):
    limit: int = Field(50, ge=1, le=200)
    cursor: str | None = None


Admin = allow(Role.ADMIN, scope=Scope.BRANCH, action="managing webhook subscriptions")


def _settings(request: Request) -> WebhooksSettings:
    return request.app.state.settings


def _dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


def _invalid(field: str, message: str) -> ProblemError:
    return ProblemError(
        status=422,
        title="Invalid request",
        kind="validation-error",
        detail=f"invalid field(s): {field}",
        errors=[{"field": field, "message": message}],
    )


def _checked_url(url: str, settings: WebhooksSettings) -> str:
    try:
        parse_target(url, settings=settings)
    except TargetRefused as exc:
        raise _invalid("target_url", str(exc)) from None
    return url


async def _subscription(request: Request, principal: Principal, subscription_id: str) -> dict:
    found = await store.get_subscription(
        db=runtime_of(request).db, scope=principal.scope_filter(), subscription_id=subscription_id
    )
    if found is None:
        raise not_found(what="subscription", identifier=subscription_id)
    return found


# -------------------------------------------------------------- subscriptions --


@router.post(
    "/subscriptions",
    status_code=201,
    response_model=SubscriptionCreated,
    summary="Subscribe a target URL; the signing secret is in this response only",
)
async def create_subscription(
    body: SubscriptionCreate,
    request: Request,
    principal: Admin,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> SubscriptionCreated:
    runtime = runtime_of(request)
    _checked_url(body.target_url, _settings(request))
    if body.branch is None and not principal.all_branches:
        raise _invalid(
            "branch",
            f"a token for branches {principal.branches} must name one of them; "
            "all-branch subscriptions need a token for every branch",
        )
    if body.branch is not None:
        principal.require_branch(body.branch, field="branch")
    now = runtime.clock.now()
    secret = new_secret()
    fingerprint = request_hash(body.model_dump(mode="json"))
    document: dict[str, Any] = {
        "_id": store.new_subscription_id()
        if idempotency_key is None
        else store.keyed_subscription_id(
            org=principal.org, subject=principal.subject, idempotency_key=idempotency_key
        ),
        "org": principal.org,
        "branch": body.branch,
        "target_url": body.target_url,
        "event_types": body.event_types,
        "description": body.description,
        "status": body.status.value,
        "status_reason": None,
        "signing_secrets": [{"secret": secret, "created_at": now, "expires_at": None}],
        "failure_streak": 0,
        "created_by": principal.subject,
        "created_by_request": fingerprint,
        "created_at": now,
        "updated_at": now,
        "version": 1,
    }
    if await store.insert_subscription(db=runtime.db, document=document):
        tag(response, 1)
        # As a later read has it (times in milliseconds), not this request's copy.
        shown = store.public(as_stored(document))
        return from_stored(SubscriptionCreated, {**shown, "secret": secret})
    # Created already under this key (the same request repeated after a lost answer, say).
    first = await store.get_subscription(
        db=runtime.db, scope={}, subscription_id=document["_id"], with_secrets=True
    )
    if first is None:
        raise conflict(
            f"the subscription created under {HEADER} {idempotency_key!r} was deleted since",
            kind="idempotency-key-conflict",
        )
    if first.get("created_by_request") != fingerprint:
        raise key_conflict(str(idempotency_key))
    # The secret it created, while it still signs and the retry comes within a day: a
    # repeat of the creation answered the secret that signed *now*, one rotated in later by
    # anyone, for as long as the subscription lived.
    [signing] = [entry for entry in first["signing_secrets"] if not entry.get("expires_at")]
    if signing["created_at"] != first["created_at"]:
        raise conflict(
            f"the subscription created under {HEADER} {idempotency_key!r} has had its secret "
            "rotated since: the secret it was created with no longer signs",
            kind="idempotency-key-conflict",
        )
    if now - first["created_at"] > CREATION_REPLAY_WINDOW:
        raise conflict(
            f"the subscription was created under {HEADER} {idempotency_key!r} more than "
            f"{CREATION_REPLAY_WINDOW.days} day ago; its secret is not shown again (rotate it "
            "for a new one)",
            kind="idempotency-key-conflict",
        )
    response.headers[REPLAYED_HEADER] = "true"
    tag(response, first.get("version", 0))
    return from_stored(SubscriptionCreated, {**store.public(first), "secret": signing["secret"]})


@router.get(
    "/subscriptions",
    response_model=Page[SubscriptionRead],
    summary="Subscriptions the caller's branches cover, oldest first",
)
async def list_subscriptions(
    request: Request, principal: Admin, query: Annotated[ListQuery, Query()]
) -> Page[SubscriptionRead]:
    return await store.list_subscriptions(
        db=runtime_of(request).db, principal=principal, limit=query.limit, cursor=query.cursor
    )


@router.get(
    "/subscriptions/{subscription_id}",
    response_model=SubscriptionRead,
    summary="One subscription (never its secret)",
)
async def get_subscription(
    subscription_id: SubscriptionId, request: Request, response: Response, principal: Admin
) -> SubscriptionRead:
    found = await _subscription(request, principal, subscription_id)
    tag(response, found.get("version", 0))
    return from_stored(SubscriptionRead, store.public(found))


@router.patch(
    "/subscriptions/{subscription_id}",
    response_model=SubscriptionRead,
    summary="Change URL, event types, description or status; re-activating replays the backlog",
)
async def update_subscription(
    subscription_id: SubscriptionId,
    body: SubscriptionUpdate,
    request: Request,
    response: Response,
    principal: Admin,
    if_match: IfMatchHeader,
) -> SubscriptionRead:
    runtime = runtime_of(request)
    current = await _subscription(request, principal, subscription_id)
    now = runtime.clock.now()
    asked: dict[str, Any] = {}
    if body.target_url is not None:
        asked["target_url"] = _checked_url(body.target_url, _settings(request))
    if body.event_types is not None:
        asked["event_types"] = body.event_types
    if body.description is not None:
        asked["description"] = body.description
    if body.status is not None:
        asked["status"] = body.status.value
    updated: dict[str, Any] | None = current
    if preconditions.write_needed(
        if_match,
        current=current.get("version", 0),
        already_shown=preconditions.shows(current, asked),
        what=f"subscription {subscription_id!r}",
    ):
        changes: dict[str, Any] = {**asked, "updated_at": now}
        unset: dict[str, Any] = {}
        if asked.get("target_url", current["target_url"]) != current["target_url"]:
            # The failures counted were the old target's: the new one starts with none, and
            # is not paused for failures it did not have.
            changes["failure_streak"] = 0
            unset["failing_since"] = ""
        if body.status is not None and body.status.value != current["status"]:
            changes["status_reason"] = (
                None
                if body.status is SubscriptionStatus.ACTIVE
                else f"paused by {principal.subject}"
            )
            if body.status is SubscriptionStatus.ACTIVE:
                changes["failure_streak"] = 0
                changes["resumed_at"] = changes[store.RELEASE_OWED] = now
                unset["failing_since"] = ""
        updated = await store.update_subscription(
            db=runtime.db,
            scope=principal.scope_filter(),
            subscription_id=subscription_id,
            changes=changes,
            unset=unset,
            read=current,
        )
    if updated is None:
        now_stored = await _subscription(request, principal, subscription_id)  # else 404
        if preconditions.shows(now_stored, asked):
            # The same change, beside this one (a gateway's timeout, then the retry).
            updated = now_stored
    if updated is None:
        raise preconditions.lost_race(
            if_match,
            current=now_stored.get("version", 0),
            what=f"subscription {subscription_id!r}",
            otherwise=conflict(
                f"subscription {subscription_id!r} changed while this change was decided "
                f"(it is {now_stored['status']!r} now); retry"
            ),
        )
    if body.status is SubscriptionStatus.ACTIVE:
        # Also when it was active already: a retry completes a release that a failure or a
        # crash after the status was written cut short (so does the repair pass, without a
        # retry: the release is owed from the write of the status). Retries keep their
        # backoff, and those not tried since the last resume start their schedules afresh
        # (a client repeating the request keeps no refused delivery retrying for good).
        await store.release_held(
            db=runtime.db,
            subscription_id=subscription_id,
            now=now,
            resumed_at=updated.get("resumed_at"),
        )
        await store.release_settled(
            db=runtime.db, subscription_id=subscription_id, resumed_at=updated.get("resumed_at")
        )
        _dispatcher(request).deliveries_due(subscription_ids=[subscription_id], at=now)
    tag(response, updated.get("version", 0))
    return from_stored(SubscriptionRead, store.public(updated))


@router.delete(
    "/subscriptions/{subscription_id}",
    status_code=204,
    summary="Remove a subscription and its delivery log",
)
async def delete_subscription(
    subscription_id: SubscriptionId, request: Request, principal: Admin, if_match: IfMatchHeader
) -> Response:
    runtime = runtime_of(request)
    deleted = await store.delete_subscription(
        db=runtime.db,
        scope=principal.scope_filter(),
        subscription_id=subscription_id,
        if_match=if_match,
        now=runtime.clock.now(),
        record_kept_s=runtime.settings.deleted_subscription_record_kept_s,
    )
    if not deleted:
        raise not_found(what="subscription", identifier=subscription_id)
    return Response(status_code=204)


@router.post(
    "/subscriptions/{subscription_id}/secret/rotate",
    response_model=SecretRotated,
    summary="New signing secret (shown once); the previous one keeps signing for the overlap",
)
async def rotate_secret(
    subscription_id: SubscriptionId,
    request: Request,
    response: Response,
    principal: Admin,
    idempotency_key: RotationKey = None,
) -> SecretRotated:
    runtime = runtime_of(request)
    now = runtime.clock.now()
    overlap_until = now + timedelta(seconds=_settings(request).secret_rotation_overlap_s)
    rotated = await store.rotate_secrets(
        db=runtime.db,
        scope=principal.scope_filter(),
        subscription_id=subscription_id,
        secret=new_secret(),
        now=now,
        overlap_until=overlap_until,
        key=(
            store.rotation_key(subject=principal.subject, idempotency_key=idempotency_key)
            if idempotency_key is not None
            else None
        ),
    )
    if rotated is None:
        raise not_found(what="subscription", identifier=subscription_id)
    if rotated is False:
        raise conflict(f"subscription {subscription_id!r} kept being rotated meanwhile; retry")
    if rotated.replayed:
        response.headers[REPLAYED_HEADER] = "true"
    return SecretRotated(
        secret=rotated.secret, previous_secret_expires_at=rotated.previous_expires_at
    )


@router.post(
    "/subscriptions/{subscription_id}/ping",
    status_code=202,
    response_model=DeliveryRead,
    summary="Send a signed test event (also while paused); follow it in the delivery log",
)
async def ping(
    subscription_id: SubscriptionId,
    request: Request,
    response: Response,
    principal: Admin,
    idempotency_key: PingKey = None,
) -> DeliveryRead:
    runtime = runtime_of(request)
    subscription = await _subscription(request, principal, subscription_id)
    now = runtime.clock.now()
    # Under a key, every attempt of the request is the same ping: one delivery id.
    event_id = (
        uuid.uuid4()
        if idempotency_key is None
        else uuid.uuid5(
            uuid.NAMESPACE_URL, f"ping|{subscription_id}|{principal.subject}|{idempotency_key}"
        )
    )
    event = CloudEvent(
        id=str(event_id),
        source="/complaint-desk/webhooks",
        type=PING_EVENT_TYPE,
        subject=subscription_id,
        time=now,
        data={"subscription_id": subscription_id, "org": subscription["org"], "ping": True},
    )
    delivery = store.new_delivery(
        delivery_id=store.delivery_id(subscription_id=subscription_id, event_id=event.id),
        subscription=subscription,
        org=subscription["org"],
        branch=subscription.get("branch"),
        event_id=event.id,
        event_type=event.type,
        # Not an event of the catalogue: no place in a complaint's order, nothing to wait for.
        event_time=None,
        subject=None,
        complaint_id=None,
        body=structured_body(event),
        order_key=order_key(event, recorded_ns=0),
        now=now,
    )
    if not await store.insert_deliveries(db=runtime.db, deliveries=[delivery]):
        sent = await store.get_delivery(
            db=runtime.db, subscription_id=subscription_id, delivery_id=delivery["_id"]
        )
        if sent is not None:  # else it went with its subscription's deletion
            response.headers[REPLAYED_HEADER] = "true"
            return from_stored(DeliveryRead, store.public(sent))
    _dispatcher(request).deliveries_due(subscription_ids=[subscription_id], at=now)
    return from_stored(DeliveryRead, store.public(delivery))


# ----------------------------------------------------------------- deliveries --


@router.get(
    "/subscriptions/{subscription_id}/deliveries",
    response_model=Page[DeliveryRead],
    summary="The delivery log, newest first: status, attempts, response code, latency, next try",
)
async def list_deliveries(
    subscription_id: SubscriptionId,
    request: Request,
    principal: Admin,
    filters: Annotated[DeliveryFilters, Query()],
) -> Page[DeliveryRead]:
    await _subscription(request, principal, subscription_id)
    return await store.list_deliveries(
        db=runtime_of(request).db, subscription_id=subscription_id, filters=filters
    )


@router.get(
    "/subscriptions/{subscription_id}/deliveries/{delivery_id}",
    response_model=DeliveryRead,
    summary="One delivery with its attempt log",
)
async def get_delivery(
    subscription_id: SubscriptionId, delivery_id: DeliveryId, request: Request, principal: Admin
) -> DeliveryRead:
    await _subscription(request, principal, subscription_id)
    found = await store.get_delivery(
        db=runtime_of(request).db, subscription_id=subscription_id, delivery_id=delivery_id
    )
    if found is None:
        raise not_found(what="delivery", identifier=delivery_id)
    return from_stored(DeliveryRead, store.public(found))


@router.post(
    "/subscriptions/{subscription_id}/deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=RedeliveryAccepted,
    summary="Send one delivery again (same webhook-id), with a fresh retry schedule",
)
async def redeliver_one(
    subscription_id: SubscriptionId,
    delivery_id: DeliveryId,
    request: Request,
    response: Response,
    principal: Admin,
    idempotency_key: RedeliveryKey = None,
) -> RedeliveryAccepted:
    runtime = runtime_of(request)
    await _subscription(request, principal, subscription_id)
    key = CommandKey.of(
        idempotency_key,
        subject=principal.subject,
        asked={"redeliver": delivery_id, "subscription": subscription_id},
    )
    queued = await store.redeliver_one(
        db=runtime.db,
        subscription_id=subscription_id,
        delivery_id=delivery_id,
        key=key,
        now=runtime.clock.now(),
    )
    if not queued:
        raise not_found(what="delivery", identifier=delivery_id)
    if key is not None:
        key.tell(response)
    _dispatcher(request).deliveries_due(subscription_ids=[subscription_id], at=runtime.clock.now())
    return RedeliveryAccepted(queued=1)


@router.post(
    "/subscriptions/{subscription_id}/redeliver",
    status_code=202,
    response_model=RedeliveryAccepted,
    summary="Send again the deliveries recorded in a time range (default: the failed ones)",
)
async def redeliver_range(
    subscription_id: SubscriptionId,
    body: RedeliverRange,
    request: Request,
    response: Response,
    principal: Admin,
    idempotency_key: RedeliveryKey = None,
) -> RedeliveryAccepted:
    runtime = runtime_of(request)
    await _subscription(request, principal, subscription_id)
    key = CommandKey.of(
        idempotency_key,
        subject=principal.subject,
        asked={"redeliver_range": body.model_dump(mode="json")},
    )
    queued = await store.redeliver_range(
        db=runtime.db,
        subscription_id=subscription_id,
        created_from=body.created_from,
        created_to=body.created_to,
        statuses=body.statuses,
        key=key,
        now=runtime.clock.now(),
    )
    if key is not None:
        key.tell(response)
    _dispatcher(request).deliveries_due(subscription_ids=[subscription_id], at=runtime.clock.now())
    return RedeliveryAccepted(queued=queued)
