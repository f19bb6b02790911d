"""Who the customer is, across channels: normalised phone, e-mail and external id keys."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

_NOT_DIGITS = re.compile(r"[^0-9]")


def normalise_phone(phone: str) -> str:
    """Digits only, a Chinese number in its domestic form: without a leading ``+86`` /
    ``0086`` before a mobile (11 digits from 1), with the trunk 0 before a landline's area
    code in its place (``+86 10 6552 1234`` is ``01065521234``, as ``010-6552-1234``; the two
    were different customers). Full-width digits (``１３８…``, as a Chinese input method types
    them) count as digits."""
    digits = _NOT_DIGITS.sub("", unicodedata.normalize("NFKC", phone))
    for prefix in ("0086", "86"):
        if not digits.startswith(prefix):
            continue
        national = digits[len(prefix) :]
        if len(national) == 11 and national.startswith("1"):
            return national  # a mobile
        if _is_area_code_start(national):
            return "0" + national  # a landline: area code (10, 2x, 3xx-9xx) and number
        if national.startswith("0") and _is_area_code_start(national[1:]):
            return national  # the same with its trunk 0 kept: ``+86 (0)10 6552 1234``
    return digits


def _is_area_code_start(national: str) -> bool:
    """A landline's area code and number, without the trunk 0 (9 to 11 digits)."""
    return 9 <= len(national) <= 11 and (national[0] in "23456789" or national.startswith("10"))


def customer_keys(customer: dict[str, Any]) -> list[str]:
    """Every key that identifies this customer; two complaints sharing one are the same person.
    A value that normalises to nothing (a phone of separators, an id of spaces) is no key: as
    ``phone:`` it made strangers the same person."""
    values = {
        "phone": normalise_phone(customer.get("phone") or ""),
        # NFKC: a full-width address (``ｗａｎｇ@…``, as a Chinese input method types it) is
        # the same address; the validator folds only its domain.
        "email": unicodedata.normalize("NFKC", customer.get("email") or "").strip().casefold(),
        "ext": (customer.get("external_id") or "").strip(),
    }
    return [f"{kind}:{value}" for kind, value in values.items() if value]


@dataclass(frozen=True)
class Submission:
    """What a new complaint says of its request: ``fingerprint`` (``submission_fingerprint``)
    and the ``claims`` it holds for its window (``submission_claims``)."""

    fingerprint: str
    claims: list[str]


def submission(
    *, org: str, branch: str, customer: dict[str, Any], subject: str, description: str
) -> Submission:
    asked = {
        "org": org,
        "branch": branch,
        "customer": customer,
        "subject": subject,
        "description": description,
    }
    return Submission(
        fingerprint=submission_fingerprint(**asked), claims=submission_claims(**asked)
    )


def submission_fingerprint(
    *, org: str, branch: str, customer: dict[str, Any], subject: str, description: str
) -> str:
    """This request's submission: every key of the customer, the same words. A retry of the
    request (the same body) has it; it tells the complaint a retry stored from another's."""
    who = customer_keys(customer) or [f"name:{customer['name'].strip()}"]
    text = " ".join(f"{subject}\n{description}".split())
    raw = "\x1f".join([org, branch, *sorted(who), text])
    return hashlib.sha256(raw.encode()).hexdigest()


def submission_claims(
    *, org: str, branch: str, customer: dict[str, Any], subject: str, description: str
) -> list[str]:
    """What a submission claims for its window, one per key of the customer: an identical
    one of the same customer (a phone, e-mail or external id in common, docs/intake.md)
    collides on any. One hash of every key folded only a resubmission with all the same
    contact details, and one of the words joined by a space took "宽带 断网" + "三天" for
    "宽带" + "断网 三天"."""
    words = "\x1f".join(" ".join(part.split()) for part in (subject, description))
    return [
        hashlib.sha256("\x1f".join([org, branch, key, words]).encode()).hexdigest()
        for key in customer_keys(customer)
    ]
