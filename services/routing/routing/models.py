"""Value types every routing sub-domain's models share: slugs, kinds, names, reasons, ids."""

from __future__ import annotations

from typing import Annotated

from pydantic import StringConstraints

Slug = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]


Kind = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,47}$")]


Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


# What a rule may require of an owner: a skill or a language the owner lists. Compared as
# text is (``complaints_shared.text.folded``: case and full-width forms), white space dropped.
Skill = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
Language = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=16)]


Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]


DepartmentId = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Z0-9][A-Z0-9_-]{0,31}:[A-Z0-9][A-Z0-9_-]{0,31}$"),
]
