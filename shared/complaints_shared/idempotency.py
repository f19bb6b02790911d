"""The ``Idempotency-Key`` header as every service takes it.

A key is bound to the caller and the request that first used it: the same request
again replays what it did, a different request (or another caller) with the key is a
422 ``idempotency-key-conflict`` naming the header. Where a service keeps the key and
its fingerprint is its own business (intake: a reservation per key; follow-up: on the
attempt the key recorded).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from fastapi import Header

from complaints_shared.problems import ProblemError

HEADER = "Idempotency-Key"
# On a response that repeats what a request under the same key did: nothing new was done.
REPLAYED_HEADER = "Idempotent-Replayed"
# Printable ASCII without spaces: a key is an opaque token, never text to read.
KEY_PATTERN = r"^[\x21-\x7e]+$"
KEY_MAX_LENGTH = 200


def key_header(*, description: str) -> Any:
    """The header's declaration for a route (1–200 printable ASCII characters)."""
    return Header(
        alias=HEADER,
        min_length=1,
        max_length=KEY_MAX_LENGTH,
        pattern=KEY_PATTERN,
        description=description,
    )


def request_hash(body: dict[str, Any]) -> str:
    """The fingerprint of a request body as validated (key order does not matter)."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def key_conflict(key: str, *, reason: str = "with a different request body") -> ProblemError:
    """The key was first used for another request: ``reason`` says how it differs."""
    return ProblemError(
        status=422,
        title="Idempotency-Key reused",
        kind="idempotency-key-conflict",
        detail=f"{HEADER} {key!r} was already used {reason}",
        errors=[{"field": HEADER, "message": f"already used {reason}"}],
    )
