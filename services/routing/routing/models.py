"""Value types every routing sub-domain's models share: slugs, kinds, names, reasons, ids."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from pydantic import StringConstraints

from complaints_shared import text
from complaints_shared.stored import request_only

Slug = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]


Kind = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,47}$")]


Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    request_only(text.visible),
]


def _word(most: int) -> Callable[[str], str]:
    def check(value: str) -> str:
        value = value.strip()
        if not value or len(value) > most:
            raise ValueError(f"1 to {most} characters other than white space")
        return value

    return check


# What a rule may require of an owner: a skill or a language the owner lists. Compared as
# text is (``complaints_shared.text.folded``: case, full-width forms, traditional characters),
# white space dropped.
# Checked in requests only: one stored before (an empty ``required_skill``, a skill of a
# space) is read back as stored, so no rule or staff list fails to load.
Skill = Annotated[str, request_only(_word(64))]
Language = Annotated[str, request_only(_word(16))]


Reason = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=2000),
    request_only(text.visible),
]


DepartmentId = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Z0-9][A-Z0-9_-]{0,31}:[A-Z0-9][A-Z0-9_-]{0,31}$"),
]
