"""Who the customer is, across channels: normalised phone, e-mail and external id keys."""

from __future__ import annotations

import hashlib
import re
from typing import Any

_NON_DIGITS = re.compile(r"\D")


def normalise_phone(phone: str) -> str:
    """Digits only, without a leading international prefix for China (+86 / 0086)."""
    digits = _NON_DIGITS.sub("", phone)
    for prefix in ("0086", "86"):
        if digits.startswith(prefix) and len(digits) - len(prefix) == 11:
            return digits[len(prefix) :]
    return digits


def customer_keys(customer: dict[str, Any]) -> list[str]:
    """Every key that identifies this customer; two complaints sharing one are the same person."""
    keys = []
    if customer.get("phone"):
        keys.append(f"phone:{normalise_phone(customer['phone'])}")
    if customer.get("email"):
        keys.append(f"email:{customer['email'].strip().casefold()}")
    if customer.get("external_id"):
        keys.append(f"ext:{customer['external_id'].strip()}")
    return keys


def submission_fingerprint(
    *, org: str, branch: str, customer: dict[str, Any], subject: str, description: str
) -> str:
    """Same customer, same branch, same words: the same submission."""
    who = customer_keys(customer) or [f"name:{customer['name'].strip()}"]
    text = " ".join(f"{subject}\n{description}".split())
    raw = "\x1f".join([org, branch, *sorted(who), text])
    return hashlib.sha256(raw.encode()).hexdigest()
