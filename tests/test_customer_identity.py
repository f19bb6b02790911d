"""Unit: the keys that say two complaints are the same customer's (``intake.identity``)."""

from __future__ import annotations

import pytest

from intake.identity import customer_keys, normalise_phone
from intake.models import Customer


@pytest.mark.parametrize(
    ("written", "key"),
    [
        ("010-6552-1234", "01065521234"),
        ("+86 10 6552 1234", "01065521234"),
        # The trunk 0 kept after the country code, as many write it: until 5 December
        # ``8601065521234``, another customer than ``010-6552-1234``.
        ("+86 (0)10 6552 1234", "01065521234"),
        ("+86 0755 1234 5678", "075512345678"),
        ("0086 0755-12345678", "075512345678"),
        ("+86 138-0013-8000", "13800138000"),
        ("１３８００１３８０００", "13800138000"),
    ],
)
def test_a_phone_is_keyed_in_its_domestic_form(written: str, key: str) -> None:
    assert normalise_phone(written) == key


def test_a_full_width_email_is_the_same_address() -> None:
    """Typed with a Chinese input method the local part is full width; the validator folds
    only the domain, and the key was ``email:ｗａｎｇ@example.com``."""
    typed = Customer(name="王女士", email="ｗａｎｇ@example.com").model_dump(mode="json")
    plain = Customer(name="王女士", email="Wang@Example.com").model_dump(mode="json")
    assert customer_keys(typed) == customer_keys(plain) == ["email:wang@example.com"]
