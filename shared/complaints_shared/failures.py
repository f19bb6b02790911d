"""What kind of failure an exception is: a dependency away for now, or a lasting refusal.

One classification for every caller: HTTP requests answer an unavailable dependency
with a 503 and ``Retry-After``; the consumer loop pauses a partition on a transient
failure and dead-letters only permanent ones; schedulers retry a document later.
"""

from __future__ import annotations

from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from pydantic import ValidationError
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    CursorNotFound,
    OperationFailure,
    PyMongoError,
    WriteConcernError,
)

# Server error codes that mean "this node cannot serve the write now" (step-down,
# shutdown, no primary, interrupted by a replica-set state change, write-concern timeout):
# the same operation succeeds once a primary is back. The list the drivers retry on.
_STEP_DOWN_CODES = frozenset(
    {
        6,  # HostUnreachable
        7,  # HostNotFound
        64,  # WriteConcernFailed (wtimeout)
        89,  # NetworkTimeout
        91,  # ShutdownInProgress
        189,  # PrimarySteppedDown
        262,  # ExceededTimeLimit
        9001,  # SocketException
        10107,  # NotWritablePrimary
        11600,  # InterruptedAtShutdown
        11602,  # InterruptedDueToReplStateChange
        13435,  # NotPrimaryNoSecondaryOk
        13436,  # NotPrimaryOrSecondary
    }
)
_RETRYABLE_LABELS = ("RetryableWriteError", "TransientTransactionError")


class TransientFailure(Exception):
    """A failure that retrying later resolves, e.g. an optimistic-concurrency conflict.

    Services subclass it for their own such conditions, so the consumer loop and the
    schedulers retry them instead of dead-lettering or giving up.
    """


class Rejected(Exception):
    """A handler's explicit domain refusal: the event is valid but will never apply as is.

    The consumer dead-letters the event at once with reason ``rejected``; an operator
    fixes the cause and replays it. The message is recorded in DLQ headers and logs, so
    it must name ids and rules, never personal data.
    """


def is_dependency_unavailable(exc: BaseException) -> bool:
    """The database or the broker cannot be reached or cannot serve the operation now.

    Follows explicit causes (``raise ... from exc``), so a wrapped outage still counts.
    """
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 5:
        if _unavailable(current):
            return True
        current, seen = current.__cause__, seen + 1
    return False


def _unavailable(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionFailure):
        # AutoReconnect, NetworkTimeout, ServerSelectionTimeoutError, ...
        return True
    if isinstance(exc, (WriteConcernError, OperationFailure)) and exc.code in _STEP_DOWN_CODES:
        return True
    if isinstance(exc, CursorNotFound):
        # The server no longer holds the cursor a read was paging through (it restarted
        # meanwhile): the same read, sent again, starts a new one.
        return True
    if isinstance(exc, BulkWriteError):
        return _bulk_refused_for_now(exc.details or {})
    if isinstance(exc, PyMongoError):
        return exc.timeout or any(exc.has_error_label(label) for label in _RETRYABLE_LABELS)
    if isinstance(exc, (KafkaConnectionError, KafkaTimeoutError)):
        return True
    if isinstance(exc, KafkaError):
        return bool(exc.retriable)
    return isinstance(exc, TimeoutError)


def _bulk_refused_for_now(details: dict) -> bool:
    """Whether every write a bulk had refused (or left without its write concern) was
    refused by a node that cannot serve writes now, as a single write's step-down is."""
    errors = [*(details.get("writeErrors") or []), *(details.get("writeConcernErrors") or [])]
    return bool(errors) and all(error.get("code") in _STEP_DOWN_CODES for error in errors)


def is_transient(exc: BaseException) -> bool:
    """Retrying the same work later can succeed without anyone changing anything."""
    return isinstance(exc, TransientFailure) or is_dependency_unavailable(exc)


def redacted_error(exc: BaseException, *, limit: int = 500) -> str:
    """A description of the failure safe for logs and DLQ headers: no field values.

    Messages of arbitrary exceptions may quote input (a duplicate key, a phone number in
    a ``ValueError``), so only our own refusal types keep their message; validation
    errors keep locations and error types; everything else is its type, its database
    error code and where it was raised.
    """
    if isinstance(exc, ValidationError):
        text = "ValidationError: " + "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(root)'}: {error['type']}"
            for error in exc.errors(include_input=False, include_url=False)
        )
    elif isinstance(exc, (Rejected, TransientFailure)):
        text = f"{type(exc).__name__}: {exc}"
    else:
        text = type(exc).__name__
        if isinstance(exc, OperationFailure):
            text += f" code={exc.code}"
            code_name = (exc.details or {}).get("codeName")
            if code_name:
                text += f" ({code_name})"
        frame = _raising_frame(exc)
        if frame:
            text += f" at {frame}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _raising_frame(exc: BaseException) -> str:
    tb = exc.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return f"{code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno} in {code.co_name}"
