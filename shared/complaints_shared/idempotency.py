"""The ``Idempotency-Key`` header as every service takes it.

A key is bound to the caller and the request that first used it: the same request
again replays what it did, a different request with the key is a 422
``idempotency-key-conflict`` naming the header. Where a key is kept with what it created
(a complaint, a subscription, a call), another caller's use of it is a 422 too; a
``CommandKey`` is kept per caller, so another caller's key of the same text is theirs.
Where a service keeps the key and its fingerprint is its own business (intake: a
reservation per key; follow-up: on the attempt the key recorded; a command on an
aggregate: ``CommandKey``, among the event ids the document has applied).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import Header, Response

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


def command_key_header(*, what: str) -> Any:
    """The optional ``Idempotency-Key`` of a route that runs a command on one ``what``."""
    return Annotated[
        str | None,
        key_header(
            description="Retry-safe command: the same key and body again changes nothing and "
            f"answers the {what} as it is now, with `{REPLAYED_HEADER}: true`."
        ),
    ]


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


@dataclass
class CommandKey:
    """An ``Idempotency-Key`` on a command that changes one aggregate (a note, a remedy,
    an escalation): the kernel (``aggregate.change``) remembers it among the event ids the
    document has applied, in the write that makes the change, so a retry after a lost or
    failed answer finds it there and changes nothing. ``replayed`` is set then; the answer
    is the document as it is now. Remembered as long as the document's applied event ids
    (the latest 200 or more changes): far longer than any client retries."""

    key: str
    subject: str
    # request_hash of what the command was asked: which command, on what, with which body.
    fingerprint: str
    replayed: bool = False

    @classmethod
    def of(cls, key: str | None, *, subject: str, asked: dict[str, Any]) -> CommandKey | None:
        """The key a request gave (None without the header) for the command ``asked``."""
        return (
            None if key is None else cls(key=key, subject=subject, fingerprint=request_hash(asked))
        )

    def tell(self, response: Response) -> None:
        """Say on ``response`` that nothing new was done, when so."""
        if self.replayed:
            response.headers[REPLAYED_HEADER] = "true"

    @property
    def _used(self) -> str:
        # Hashed: a key is up to 200 characters of the client's, and only its caller's.
        caller_key = hashlib.sha256(f"{self.subject}\0{self.key}".encode()).hexdigest()[:32]
        return f"request:{caller_key}:"

    @property
    def event_id(self) -> str:
        return self._used + self.fingerprint[:32]

    def check(self, applied: Iterable[str]) -> bool:
        """Whether ``applied`` (a document's applied event ids) holds this request already;
        422 when the caller used the key for another request on it."""
        used = [event_id for event_id in applied if event_id.startswith(self._used)]
        if self.event_id in used:
            return True
        if used:
            raise key_conflict(self.key, reason="for another request on this resource")
        return False
